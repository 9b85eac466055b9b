//! A worker's side of live hand-off on reload: the departing worker sends its sessions to its
//! replacement (engineio quiesces them, `supervisor::adoption` carries them), and the new
//! worker adopts those that come to its private socket.

use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use engineio::SessionRecord;
use supervisor::adoption::{Adopter, Courier, HandOffCounts, Handed};

/// The process this worker handed its sessions to, once it did: requests for them that still
/// come here are passed on there.
pub(crate) type Successor = Arc<OnceLock<Adopter>>;

/// The private sockets this worker accepts on: its own, and those of the workers whose
/// sessions it adopted. They go to its successor with its sessions, so that a request another
/// worker passes on by the id in a moved session's sid still finds it.
#[derive(Clone, Default, Debug)]
pub(crate) struct PrivateSockets(Arc<Mutex<Vec<Listening>>>);

/// One private socket accepted on: its abstract name, and a copy of its listener to pass on.
#[derive(Debug)]
struct Listening {
    name: Vec<u8>,
    listener: OwnedFd,
}

impl PrivateSockets {
    pub(crate) fn add(&self, listener: &std::os::unix::net::UnixListener) {
        use std::os::linux::net::SocketAddrExt;
        let name = listener
            .local_addr()
            .ok()
            .and_then(|address| address.as_abstract_name().map(<[u8]>::to_vec))
            .unwrap_or_default();
        let copy = listener.try_clone().map(OwnedFd::from);
        if let (Ok(copy), Ok(mut all)) = (copy, self.0.lock()) {
            all.push(Listening {
                name,
                listener: copy,
            });
        }
    }

    /// Whether this process accepts on the private socket at `address`: a request for a
    /// session whose sid names it is this process's to answer, never to pass on (it would
    /// come back here).
    pub(crate) fn serves(&self, address: &std::os::unix::net::SocketAddr) -> bool {
        use std::os::linux::net::SocketAddrExt;
        let Some(name) = address.as_abstract_name() else {
            return false;
        };
        self.0
            .lock()
            .is_ok_and(|all| all.iter().any(|known| known.name == name))
    }

    fn copies(&self) -> Vec<OwnedFd> {
        self.0
            .lock()
            .map(|all| {
                all.iter()
                    .filter_map(|known| known.listener.try_clone().ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// Longest a hand-off may take before the sessions not moved yet drain.
const MOST_HAND_OFF: Duration = Duration::from_secs(10);

/// Sends every live session to `adopter`, within `within` (capped), and counts what came of
/// them. Whatever did not move is left for the drain to close.
pub(crate) async fn hand_off(
    io: &socketio::SocketIo,
    privates: &PrivateSockets,
    adopter: &Adopter,
    within: Duration,
) -> HandOffCounts {
    let engine = io.engine();
    let mut counts = HandOffCounts::default();
    let mut courier = match Courier::connect(adopter).await {
        Ok(courier) => Some(courier),
        Err(error) => {
            tracing::warn!(%error, "cannot reach the new worker: every session drains instead");
            counts.drained = engine.session_count() as u64;
            return counts;
        }
    };
    let (departures, mut departing) = tokio::sync::mpsc::unbounded_channel();
    let open = engine.session_count() as u64;
    let asked = engine.hand_off_all(departures, adopter.polling) as u64;
    // Those not asked to move (long-polling ones, when they cannot) drain.
    counts.drained += open.saturating_sub(asked);
    let deadline = tokio::time::Instant::now() + within.min(MOST_HAND_OFF);
    let mut outcomes = 0;
    while outcomes < asked {
        let Ok(Some(outcome)) = tokio::time::timeout_at(deadline, departing.recv()).await else {
            break;
        };
        outcomes += 1;
        match outcome {
            Ok(departure) => {
                let sid = departure.record.sid.clone();
                let adopted = match courier.as_mut() {
                    Some(to) => {
                        let record = departure.record.encode();
                        let sent = tokio::time::timeout_at(
                            deadline,
                            to.send(&record, departure.stream.as_ref()),
                        )
                        .await;
                        match sent {
                            Ok(Ok(adopted)) => adopted,
                            failed => {
                                tracing::warn!(
                                    ?failed,
                                    "the hand-off channel to the new worker broke: the \
                                     remaining sessions drain"
                                );
                                courier = None;
                                false
                            }
                        }
                    }
                    None => false,
                };
                if adopted {
                    counts.handed_off += 1;
                } else {
                    counts.failed += 1;
                }
                // Ours no more either way; a session the adopter refused has lost its
                // connection (dropped with `departure`), and its client reconnects.
                engine.departed(&sid);
            }
            Err(error) if error.frozen().is_some() => {
                tracing::debug!(%error, "a session could not be handed off");
                counts.failed += 1;
                engine.departed(error.frozen().unwrap_or_default());
            }
            Err(error) => {
                tracing::debug!(%error, "a session drains instead of moving");
                counts.drained += 1;
            }
        }
        // This one is dealt with: one more session may freeze.
        engine.ask_next_to_leave();
    }
    counts.drained += asked - outcomes;
    // A worker of this master takes over this one's private sockets too, so that requests
    // other workers pass on by this worker's id still arrive. A worker of another master (an
    // upgrade) does not: that master's workers reach this one's sessions by their own route
    // (the masters' bridge), and would pass such requests back to themselves.
    let same_master = adopter.master_pid == std::os::unix::process::parent_id();
    if let Some(courier) = courier.as_mut().filter(|_| same_master) {
        for listener in privates.copies() {
            let passed = tokio::time::timeout_at(deadline, courier.send_listener(&listener)).await;
            if !matches!(passed, Ok(Ok(true))) {
                tracing::warn!(
                    "the new worker did not take a private socket: requests other workers pass \
                     on for moved sessions by that worker id will fail once this one exits"
                );
            }
        }
    }
    tracing::info!(
        handed_off = counts.handed_off,
        drained = counts.drained,
        failed = counts.failed,
        "live sessions handed to the new worker"
    );
    counts
}

/// Adopts the sessions and private sockets a departing worker sends down `stream` (a trusted
/// peer on the private socket), until it ends.
pub(crate) async fn adopt_from(
    stream: tokio::net::UnixStream,
    server: chat::ChatServer,
    privates: PrivateSockets,
) {
    let engine = server.io().engine().clone();
    let take = move |handed: Handed| {
        let engine = engine.clone();
        let (server, privates) = (server.clone(), privates.clone());
        async move {
            let (record, stream) = match handed {
                Handed::Session { record, connection } => (record, connection),
                Handed::Listener(listener) => {
                    let served = crate::serve::serve_private_socket(&server, listener, &privates);
                    if let Err(error) = &served {
                        tracing::warn!(%error, "cannot serve a private socket handed over");
                    }
                    return served.is_ok();
                }
            };
            let config = engine.config();
            let record = match SessionRecord::decode(
                &record,
                config.max_payload,
                config.max_buffered_packets,
            ) {
                Ok(record) => record,
                Err(error) => {
                    tracing::warn!(%error, "refused a handed-off session");
                    return false;
                }
            };
            let sid = record.sid.clone();
            match engine.adopt(record, stream).await {
                Ok(()) => true,
                Err(error) => {
                    tracing::warn!(sid, %error, "refused a handed-off session");
                    false
                }
            }
        }
    };
    if let Err(error) = supervisor::adoption::receive(stream, take).await {
        tracing::warn!(%error, "a hand-off stream ended early");
    }
}
