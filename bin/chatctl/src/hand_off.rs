//! A worker's side of live hand-off on reload: the departing worker sends its sessions to its
//! replacement (engineio quiesces them, `supervisor::adoption` carries them), and the new
//! worker adopts those that come to its private socket.

use std::os::fd::OwnedFd;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use engineio::SessionRecord;
use supervisor::adoption::{Adopter, Courier, HandOffCounts};

/// The process this worker handed its sessions to, once it did: requests for them that still
/// come here are passed on there.
pub(crate) type Successor = Arc<OnceLock<Adopter>>;

/// Longest a hand-off may take before the sessions not moved yet drain.
const MOST_HAND_OFF: Duration = Duration::from_secs(10);

/// Sends every live session to `adopter`, within `within` (capped), and counts what came of
/// them. Whatever did not move is left for the drain to close.
pub(crate) async fn hand_off(
    io: &socketio::SocketIo,
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
    }
    counts.drained += asked - outcomes;
    tracing::info!(
        handed_off = counts.handed_off,
        drained = counts.drained,
        failed = counts.failed,
        "live sessions handed to the new worker"
    );
    counts
}

/// Adopts the sessions a departing worker sends down `stream` (a trusted peer on the private
/// socket), until it ends.
pub(crate) async fn adopt_from(stream: tokio::net::UnixStream, io: socketio::SocketIo) {
    let engine = io.engine().clone();
    let adopt = move |record: Vec<u8>, stream: Option<OwnedFd>| {
        let engine = engine.clone();
        async move {
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
    if let Err(error) = supervisor::adoption::receive(stream, adopt).await {
        tracing::warn!(%error, "a hand-off stream ended early");
    }
}
