//! A client's side of connection-state recovery (Socket.IO 4.6+), as the official client does
//! it: per namespace, the private id (`pid`) from the CONNECT reply and the offset of the last
//! event; after a lost connection both go back in the CONNECT packet, and the pid of the reply
//! says whether the server restored the socket. Also the sends a lost connection leaves
//! unconfirmed, since a message written to a connection as its server died never arrived.

use std::collections::VecDeque;

use crate::protocol::{self, COM, INFRA};

/// What one namespace's socket needs to be recovered.
#[derive(Default)]
struct SocketRecovery {
    /// From the last CONNECT reply; `None` while the server offers no recovery.
    pid: Option<String>,
    /// The last event's offset; empty until one arrived on this socket. Reused, so that
    /// noting an offset per delivered message allocates nothing.
    offset: String,
}

/// The recovery state of a client's two sockets.
#[derive(Default)]
pub(crate) struct Recovery {
    infra: SocketRecovery,
    com: SocketRecovery,
}

impl Recovery {
    fn socket(&mut self, namespace: &str) -> Option<&mut SocketRecovery> {
        match namespace {
            INFRA => Some(&mut self.infra),
            COM => Some(&mut self.com),
            _ => None,
        }
    }

    /// An event arrived: its last string argument becomes the socket's offset, once the socket
    /// has a pid (the official client's rule).
    pub(crate) fn event(&mut self, namespace: &str, data: &str) {
        let Some(socket) = self.socket(namespace) else {
            return;
        };
        if socket.pid.is_none() {
            return;
        }
        if let Some(offset) = protocol::last_string_argument(data) {
            socket.offset.clear();
            socket.offset.push_str(offset);
        }
    }

    /// The CONNECT packets for both namespaces: asking for recovery where pid and offset are
    /// known.
    pub(crate) fn connect_packets(&self) -> Vec<String> {
        [(INFRA, &self.infra), (COM, &self.com)]
            .into_iter()
            .map(|(namespace, socket)| {
                let offset = (!socket.offset.is_empty()).then_some(socket.offset.as_str());
                protocol::reconnect_namespace(namespace, socket.pid.as_deref(), offset)
            })
            .collect()
    }

    /// The server accepted `namespace` with the CONNECT reply `data`: true when it restored the
    /// socket (the pid sent is the pid returned). A fresh socket starts over: its old offset
    /// means nothing to its new pid.
    pub(crate) fn connected(&mut self, namespace: &str, data: &str) -> bool {
        let Some(socket) = self.socket(namespace) else {
            return false;
        };
        let pid = protocol::connect_pid(data);
        let recovered = pid.is_some() && pid == socket.pid && !socket.offset.is_empty();
        if !recovered {
            socket.offset.clear();
        }
        socket.pid = pid;
        recovered
    }

    /// Forgets both sockets: the next connection is a new session (churn closes its own).
    pub(crate) fn forget(&mut self) {
        *self = Recovery::default();
    }
}

/// Unconfirmed sends kept at most: beyond it the oldest count as confirmed (a server that never
/// echoes must not grow a client's memory).
const UNCONFIRMED_KEPT: usize = 1024;

/// A sent message the server has not echoed back to its sender yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Unconfirmed {
    pub(crate) seq: u32,
    pub(crate) phase: u16,
    /// The other members of the room when it was sent: the deliveries it was counted as owing.
    pub(crate) recipients: u64,
}

/// A sender's messages between its send and the server's echo (the chat answers each message
/// with `myMessage` to its sender, after relaying it to the room). Those still unconfirmed
/// when a connection is lost and not replayed by a recovery never reached the server.
#[derive(Default)]
pub(crate) struct UnconfirmedSends {
    pending: VecDeque<Unconfirmed>,
}

impl UnconfirmedSends {
    pub(crate) fn sent(&mut self, send: Unconfirmed) {
        if self.pending.len() >= UNCONFIRMED_KEPT {
            self.pending.pop_front();
        }
        self.pending.push_back(send);
    }

    /// The echo of message `seq`: it and every earlier one arrived (a socket's events keep
    /// their order).
    pub(crate) fn echoed(&mut self, seq: u32) {
        while self.pending.front().is_some_and(|send| send.seq <= seq) {
            self.pending.pop_front();
        }
    }

    /// After a reconnection (and its replay): the sends still unconfirmed never arrived.
    pub(crate) fn take_lost(&mut self) -> impl Iterator<Item = Unconfirmed> + '_ {
        self.pending.drain(..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONNECTED: &str = "{\"sid\":\"s1\",\"pid\":\"p1\"}";

    #[test]
    fn the_offset_is_the_last_event_string_once_a_pid_is_known() {
        let mut recovery = Recovery::default();
        // No pid yet: the last string is user data, not an offset.
        recovery.event(COM, "[\"message\",\"hi\",\"1-1\"]");
        assert_eq!(
            recovery.connect_packets(),
            ["40/chat_infra,", "40/chat_com,"]
        );
        assert!(!recovery.connected(COM, CONNECTED));
        recovery.event(COM, "[\"message\",\"hi\",\"1-2\"]");
        // An event whose last argument is no string leaves the offset alone.
        recovery.event(COM, "[\"users_list\",[\"a\"]]");
        let packets = recovery.connect_packets();
        assert_eq!(packets[0], "40/chat_infra,");
        assert_eq!(
            packets[1],
            "40/chat_com,{\"pid\":\"p1\",\"offset\":\"1-2\"}"
        );
    }

    #[test]
    fn the_same_pid_back_is_a_recovery_and_another_is_a_fresh_socket() {
        let mut recovery = Recovery::default();
        recovery.connected(INFRA, CONNECTED);
        recovery.event(INFRA, "[\"name_set\",{\"name\":\"b1\"},\"7-3\"]");
        assert!(recovery.connected(INFRA, CONNECTED));
        assert!(recovery.connect_packets()[0].contains("\"offset\":\"7-3\""));
        assert!(!recovery.connected(INFRA, "{\"sid\":\"s2\",\"pid\":\"p2\"}"));
        // Fresh: the new pid, and no offset until the new socket gets an event.
        assert_eq!(recovery.connect_packets()[0], "40/chat_infra,");
        recovery.event(INFRA, "[\"name_set\",{\"name\":\"b1\"},\"8-1\"]");
        assert_eq!(
            recovery.connect_packets()[0],
            "40/chat_infra,{\"pid\":\"p2\",\"offset\":\"8-1\"}"
        );
        // A server without recovery: no pid, never recovered, plain CONNECT.
        assert!(!recovery.connected(INFRA, "{\"sid\":\"s3\"}"));
        assert_eq!(recovery.connect_packets()[0], "40/chat_infra,");
        recovery.forget();
        assert_eq!(recovery.connect_packets()[1], "40/chat_com,");
    }

    #[test]
    fn unconfirmed_sends_are_those_not_echoed() {
        let mut sends = UnconfirmedSends::default();
        for seq in 0..5 {
            sends.sent(Unconfirmed {
                seq,
                phase: 1,
                recipients: 9,
            });
        }
        sends.echoed(2);
        let lost: Vec<u32> = sends.take_lost().map(|send| send.seq).collect();
        assert_eq!(lost, [3, 4]);
        assert_eq!(sends.take_lost().count(), 0);
        for seq in 0..(UNCONFIRMED_KEPT as u32 + 10) {
            sends.sent(Unconfirmed {
                seq,
                phase: 1,
                recipients: 1,
            });
        }
        assert_eq!(sends.take_lost().count(), UNCONFIRMED_KEPT);
    }
}
