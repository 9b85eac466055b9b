//! Sessions nobody has admitted yet. A handshake costs the client one request and the server a
//! session, so a flood of handshakes that never go further (never join a Socket.IO namespace)
//! could fill `max_sessions` and lock every real user out. Such pending sessions get caps of
//! their own, in total and per client address, apart from the sessions of admitted users.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// The address of the client that sent a request, as a request extension: whoever accepts the
/// connection inserts it, so the engine can bound what one address may hold. Absent (a request
/// relayed over a unix socket), only the total cap applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub IpAddr);

/// Why a handshake was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PendingRefusal {
    #[error(
        "{max} sessions from {address} have not joined a namespace yet \
         (raise max_pending_sessions_per_address if many users share that address)"
    )]
    AddressFull { address: IpAddr, max: usize },
    #[error("{max} sessions have not joined a namespace yet (raise max_pending_sessions)")]
    AllFull { max: usize },
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// Counts pending sessions against their caps.
#[derive(Debug)]
pub(crate) struct PendingSessions {
    max_total: usize,
    max_per_address: usize,
    counts: Mutex<Counts>,
}

impl PendingSessions {
    pub(crate) fn new(max_total: usize, max_per_address: usize) -> Arc<Self> {
        Arc::new(PendingSessions {
            max_total,
            max_per_address,
            counts: Mutex::new(Counts::default()),
        })
    }

    /// A place for one more pending session from `address`, held until the slot is dropped.
    pub(crate) fn reserve(
        self: &Arc<Self>,
        address: Option<IpAddr>,
    ) -> Result<PendingSlot, PendingRefusal> {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if counts.total >= self.max_total {
            return Err(PendingRefusal::AllFull {
                max: self.max_total,
            });
        }
        if let Some(address) = address {
            let from_address = counts.per_address.entry(address).or_insert(0);
            if *from_address >= self.max_per_address {
                return Err(PendingRefusal::AddressFull {
                    address,
                    max: self.max_per_address,
                });
            }
            *from_address += 1;
        }
        counts.total += 1;
        Ok(PendingSlot {
            sessions: self.clone(),
            address,
        })
    }

    fn release(&self, address: Option<IpAddr>) {
        let mut counts = self
            .counts
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        counts.total = counts.total.saturating_sub(1);
        if let Some(address) = address {
            if let Some(from_address) = counts.per_address.get_mut(&address) {
                *from_address = from_address.saturating_sub(1);
                if *from_address == 0 {
                    // An address that holds nothing costs no memory.
                    counts.per_address.remove(&address);
                }
            }
        }
    }

    #[cfg(test)]
    fn addresses(&self) -> usize {
        self.counts.lock().map(|c| c.per_address.len()).unwrap_or(0)
    }
}

/// One pending session's place; given back when dropped (the session was admitted or ended).
#[derive(Debug)]
pub(crate) struct PendingSlot {
    sessions: Arc<PendingSessions>,
    address: Option<IpAddr>,
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        self.sessions.release(self.address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Option<IpAddr> {
        Some(text.parse().unwrap())
    }

    #[test]
    fn one_address_cannot_take_every_place() {
        let pending = PendingSessions::new(3, 2);
        let a1 = pending.reserve(ip("127.0.0.1")).unwrap();
        let _a2 = pending.reserve(ip("127.0.0.1")).unwrap();
        assert!(matches!(
            pending.reserve(ip("127.0.0.1")),
            Err(PendingRefusal::AddressFull { max: 2, .. })
        ));
        let _b = pending.reserve(ip("127.0.0.2")).unwrap();
        assert_eq!(
            pending.reserve(None).unwrap_err(),
            PendingRefusal::AllFull { max: 3 }
        );
        drop(a1);
        let _a3 = pending.reserve(ip("127.0.0.1")).unwrap();
    }

    #[test]
    fn released_addresses_are_forgotten() {
        let pending = PendingSessions::new(10, 10);
        let slots: Vec<_> = (1..=5)
            .map(|i| pending.reserve(ip(&format!("10.0.0.{i}"))).unwrap())
            .collect();
        assert_eq!(pending.addresses(), 5);
        drop(slots);
        assert_eq!(pending.addresses(), 0);
    }
}
