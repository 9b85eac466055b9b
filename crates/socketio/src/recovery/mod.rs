//! Connection-state recovery (Socket.IO 4.6+; off unless [`crate::SocketIoConfig::recovery`]
//! is set). A socket gets a private id (`pid`) with its CONNECT reply, and every event sent to
//! clients carries an offset as its last argument. A socket whose connection broke is kept for
//! a window: a client that reconnects with `{pid, offset}` in its auth gets the same socket id
//! and rooms back, and the events it missed, before its CONNECT reply; anything short of that
//! is a fresh socket (`recovered` false), never a partial replay.
//!
//! Where the numbered events and the kept sockets live is a [`SessionStore`]: this process by
//! default ([`LocalStore`]), or somewhere every worker reaches (a master, Redis), so that a
//! client whose worker died is recovered by the next one. Every event of a namespace is
//! numbered by its store and reaches every process's sockets in that order
//! ([`Namespace::deliver_sequenced`]), so one offset says what a client has had. See
//! docs/design/recovery.md.

mod kept;
mod log;
mod store;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engineio::{Frame, Str};
use http::HeaderMap;
use sha2::{Digest as _, Sha256};

use crate::adapter::BroadcastOptions;
use crate::error::EmitError;
use crate::namespace::Namespace;
use crate::{Room, Sid};

pub use log::{
    Audience, EventSnapshot, KeptSnapshot, LogBounds, LogSnapshot, LogStats, Owner, RecoveryLog,
    SnapshotError,
};
pub use store::{LocalStore, SessionStore, StoreFactory};

/// Who a client is, from its handshake's headers (an application's login cookie): a socket is
/// given back only to a client that is the same one. `None`: anyone with the pid.
pub type Binding = Arc<dyn Fn(&HeaderMap) -> Option<String> + Send + Sync>;

/// How long and how much is kept for sockets that may come back, and where.
#[derive(Clone)]
pub struct RecoveryConfig {
    /// How long a disconnected socket, and the events it may miss, are kept (Node's
    /// `maxDisconnectionDuration`).
    pub window: Duration,
    /// Events kept per namespace for replay. A client that missed more than this gets a
    /// fresh socket.
    pub max_packets: usize,
    /// Bytes of those events kept per namespace, with the same effect.
    pub max_bytes: usize,
    /// Sockets kept per namespace, connected or not; beyond it the one disconnected longest
    /// is forgotten.
    pub max_sessions: usize,
    /// Binds a socket to its client: a returning client whose binding differs (another
    /// user's login with a stolen pid) gets a fresh socket, and the kept one stays for its
    /// owner.
    pub binding: Option<Binding>,
    /// Where each namespace's events and kept sockets live; `None`: in this process.
    pub store: Option<StoreFactory>,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            window: Duration::from_secs(120),
            max_packets: 1000,
            max_bytes: 1 << 20,
            max_sessions: 100_000,
            binding: None,
            store: None,
        }
    }
}

impl std::fmt::Debug for RecoveryConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryConfig")
            .field("window", &self.window)
            .field("max_packets", &self.max_packets)
            .field("max_bytes", &self.max_bytes)
            .field("max_sessions", &self.max_sessions)
            .field("binding", &self.binding.is_some())
            .field("store", &self.store.is_some())
            .finish()
    }
}

/// A SHA-256 digest: what is kept of a private id or a binding, so that a store's contents
/// (a master's memory, Redis) give neither away. Hex on the wire.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Digest(pub [u8; 32]);

impl Digest {
    pub fn of(text: &str) -> Digest {
        Digest(Sha256::digest(text.as_bytes()).into())
    }

    pub fn to_hex(self) -> String {
        self.0.iter().map(|byte| format!("{byte:02x}")).collect()
    }

    pub fn from_hex(hex: &str) -> Option<Digest> {
        if hex.len() != 64 || !hex.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (byte, pair) in bytes.iter_mut().zip(hex.as_bytes().chunks(2)) {
            *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(Digest(bytes))
    }
}

impl std::fmt::Debug for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Digest({})", &self.to_hex()[..8])
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let hex = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Digest::from_hex(&hex).ok_or_else(|| serde::de::Error::custom("not a SHA-256 in hex"))
    }
}

/// A socket's private id: 128 random bits, told to its client alone. Never logged.
#[derive(Clone, PartialEq, Eq, Hash)]
pub(crate) struct Pid(Box<str>);

impl From<&str> for Pid {
    fn from(pid: &str) -> Pid {
        Pid(pid.into())
    }
}

impl Pid {
    pub(crate) fn new() -> Pid {
        Pid(engineio::generate_sid("").into())
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn digest(&self) -> Digest {
        Digest::of(&self.0)
    }
}

impl std::fmt::Debug for Pid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pid(..)")
    }
}

/// A socket as a store keeps it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct SessionRecord {
    pub sid: Sid,
    pub pid_hash: Digest,
    /// Its rooms, its own apart or not.
    pub rooms: Vec<Room>,
    pub binding: Option<Digest>,
}

/// A client that came back: its private id's hash, the offset it brought, who it is.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RestoreRequest {
    pub pid_hash: Digest,
    pub epoch: String,
    /// The number of the last event it had.
    pub after: u64,
    pub binding: Option<Digest>,
}

/// A numbered event: its frames (without the offset) and who it is for.
#[derive(Debug, Clone)]
pub struct Sequenced {
    pub seq: u64,
    pub frames: Vec<Frame>,
    pub opts: BroadcastOptions,
}

/// What a recovered socket gets back.
#[derive(Debug)]
pub struct Restored {
    pub sid: Sid,
    pub rooms: Vec<Room>,
    /// The events it missed, in order.
    pub missed: Vec<Sequenced>,
    /// The number of the last event of the log when it was read: later ones reach the
    /// socket live.
    pub upto: u64,
}

/// A namespace's side of recovery in this process: its store, the position of the ordered
/// feed of events here, and the events held for sockets being restored.
pub(crate) struct Recovery {
    config: RecoveryConfig,
    store: Arc<dyn SessionStore>,
    feed: Mutex<Feed>,
    counters: Counters,
}

#[derive(Default)]
struct Feed {
    /// The epoch and number of the last event delivered here.
    epoch: String,
    delivered: u64,
    /// Events delivered while a returning client's socket was being looked up, for it to
    /// catch up with.
    holds: Vec<Hold>,
    next_hold: u64,
    /// Restored sockets and the number their replay went up to, while this process has not
    /// delivered that far: the events up to it, which they had in the replay, are not
    /// delivered to them again when they come (the store's answer can overtake its feed).
    replayed_ahead: Vec<(Sid, u64)>,
}

struct Hold {
    id: u64,
    events: Vec<(u64, Vec<Frame>, BroadcastOptions)>,
    /// More events came than a replay may hold (`max_packets`): the restore fails rather
    /// than replay part of them.
    overflowed: bool,
    /// A returning client's, counted in [`RecoveryStats`]; a socket handed over by another
    /// process (live hand-off) is not a recovery.
    counted: bool,
}

/// What recovery did in this process, for status.
#[derive(Default)]
struct Counters {
    attempts: AtomicU64,
    recovered: AtomicU64,
    replayed: AtomicU64,
    gaps: AtomicU64,
}

/// Counts of [`Recovery`] for status: recovery attempts, successes, events replayed, and
/// events missed by this process's feed (each can be an event lost for a client).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecoveryStats {
    pub attempts: u64,
    pub recovered: u64,
    pub replayed: u64,
    pub gaps: u64,
}

impl RecoveryStats {
    pub fn add(&mut self, other: RecoveryStats) {
        self.attempts += other.attempts;
        self.recovered += other.recovered;
        self.replayed += other.replayed;
        self.gaps += other.gaps;
    }
}

impl Recovery {
    pub(crate) fn new(path: &str, config: RecoveryConfig) -> Recovery {
        let store = match &config.store {
            Some(factory) => factory(path, &config),
            None => Arc::new(LocalStore::new(config.clone())),
        };
        Recovery {
            config,
            store,
            feed: Mutex::new(Feed::default()),
            counters: Counters::default(),
        }
    }

    pub(crate) fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// Has the store number an event for every process. When it cannot (a shared store out of
    /// reach), this process's sockets still get it, with the offset of the last event
    /// delivered here, and the error says the others will not.
    pub(crate) fn append(
        &self,
        ns: &Namespace,
        frames: &[Frame],
        opts: &BroadcastOptions,
    ) -> Result<(), EmitError> {
        let appended = self.store.append(ns, frames, opts);
        // A store of this process delivered here already: only its relay failed.
        if let (Err(EmitError::NotRelayed(_)), true) = (&appended, self.store.is_shared()) {
            let frames = match self.watermark() {
                Some(offset) => with_offset(frames, &offset),
                None => frames.to_vec(),
            };
            ns.deliver(&ns.adapter().sockets(opts), &frames, opts.volatile);
        }
        appended
    }

    /// What is kept of the binding of a client with these headers.
    pub(crate) fn binding(&self, headers: &HeaderMap) -> Option<Digest> {
        let bind = self.config.binding.as_ref()?;
        bind(headers).map(|who| Digest::of(&who))
    }

    /// Delivers a numbered event to the local sockets it is for, with its offset, and to the
    /// sockets being restored. Called in number order by the store.
    pub(crate) fn deliver_sequenced(
        &self,
        ns: &Namespace,
        epoch: &str,
        seq: u64,
        frames: &[Frame],
        opts: &BroadcastOptions,
    ) {
        let mut feed = self.lock();
        if feed.epoch != epoch {
            // The first event here, or a store that started again: numbers start afresh.
            feed.epoch = epoch.to_owned();
        } else if seq != feed.delivered + 1 {
            // This process missed events (a relay queue overflowed): its clients may miss them
            // for good.
            self.counters
                .gaps
                .fetch_add(seq.saturating_sub(feed.delivered + 1), Ordering::Relaxed);
        }
        let frames = with_offset(frames, &offset(epoch, seq));
        let mut recipients = ns.adapter().sockets(opts);
        if !feed.replayed_ahead.is_empty() {
            recipients.retain(|sid| {
                !feed
                    .replayed_ahead
                    .iter()
                    .any(|(s, upto)| s == sid && seq <= *upto)
            });
            feed.replayed_ahead.retain(|(_, upto)| seq < *upto);
        }
        ns.deliver(&recipients, &frames, opts.volatile);
        let max = self.config.max_packets;
        for hold in &mut feed.holds {
            if hold.events.len() >= max {
                hold.overflowed = true;
                hold.events = Vec::new();
            }
            if !hold.overflowed {
                hold.events.push((seq, frames.clone(), opts.clone()));
            }
        }
        feed.delivered = seq;
    }

    /// The offset of the last event delivered here, for events that are not numbered (sent
    /// with `local()`): a client that gets one has had everything up to it.
    pub(crate) fn watermark(&self) -> Option<String> {
        let feed = self.lock();
        (!feed.epoch.is_empty()).then(|| offset(&feed.epoch, feed.delivered))
    }

    /// Runs `frozen` while no event is delivered here, and gives the offset of the last one
    /// delivered (`None` before the first): a socket closed by `frozen` had every event up to
    /// it that was meant for it, and none after.
    pub(crate) fn while_frozen<T>(&self, frozen: impl FnOnce() -> T) -> (Option<String>, T) {
        let feed = self.lock();
        let done = frozen();
        let offset = (!feed.epoch.is_empty()).then(|| offset(&feed.epoch, feed.delivered));
        (offset, done)
    }

    /// Starts holding the events delivered here for a socket about to be restored; `counted`:
    /// a returning client's (see [`Hold::counted`]).
    pub(crate) fn hold(&self, counted: bool) -> u64 {
        let mut feed = self.lock();
        feed.next_hold += 1;
        let id = feed.next_hold;
        feed.holds.push(Hold {
            id,
            events: Vec::new(),
            overflowed: false,
            counted,
        });
        if counted {
            self.counters.attempts.fetch_add(1, Ordering::Relaxed);
        }
        id
    }

    /// Stops holding events for a restore that did not happen.
    pub(crate) fn release(&self, hold: u64) {
        self.lock().holds.retain(|h| h.id != hold);
    }

    /// Ends a restore: runs `adopt` with the frames the socket is to get (the events it
    /// missed, then those delivered here since they were read), under the feed's lock, so no
    /// event falls between them and its first live one. `None` when more events came
    /// meanwhile than a replay may hold.
    pub(crate) fn adopt<T>(
        &self,
        hold: u64,
        epoch: &str,
        restored: &Restored,
        adopt: impl FnOnce(Vec<Frame>) -> T,
    ) -> Option<T> {
        let mut feed = self.lock();
        let at = feed.holds.iter().position(|h| h.id == hold)?;
        let held = feed.holds.swap_remove(at);
        if held.overflowed {
            return None;
        }
        let counted = held.counted;
        let held = held.events;
        if feed.epoch != epoch || feed.delivered < restored.upto {
            feed.replayed_ahead
                .push((restored.sid.clone(), restored.upto));
        }
        let mut frames: Vec<Frame> = restored
            .missed
            .iter()
            .flat_map(|event| with_offset(&event.frames, &offset(epoch, event.seq)))
            .collect();
        let rooms = &restored.rooms;
        frames.extend(
            held.into_iter()
                .filter(|(seq, _, opts)| *seq > restored.upto && !opts.volatile)
                .filter(|(_, _, opts)| opts.is_for(&restored.sid, rooms))
                .flat_map(|(_, frames, _)| frames),
        );
        if counted {
            self.counters.recovered.fetch_add(1, Ordering::Relaxed);
            self.counters
                .replayed
                .fetch_add(restored.missed.len() as u64, Ordering::Relaxed);
        }
        Some(adopt(frames))
    }

    pub(crate) fn stats(&self) -> RecoveryStats {
        let c = &self.counters;
        RecoveryStats {
            attempts: c.attempts.load(Ordering::Relaxed),
            recovered: c.recovered.load(Ordering::Relaxed),
            replayed: c.replayed.load(Ordering::Relaxed),
            gaps: c.gaps.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Feed> {
        // A panic while holding the lock leaves a feed that is still consistent enough.
        self.feed
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// An offset as clients see it.
pub(crate) fn offset(epoch: &str, seq: u64) -> String {
    format!("{epoch}-{seq}")
}

/// The epoch and number of an offset a client brought back.
pub(crate) fn parse_offset(offset: &str) -> Option<(String, u64)> {
    let (epoch, seq) = offset.rsplit_once('-')?;
    Some((epoch.to_owned(), seq.parse().ok()?))
}

/// An event's frames with `offset` appended as its last argument, where clients look for it:
/// the first frame is the packet's text, `…["event", ...args]`.
pub(crate) fn with_offset(frames: &[Frame], offset: &str) -> Vec<Frame> {
    let mut frames = frames.to_vec();
    if let Some(Frame::Text(text)) = frames.first_mut() {
        if let Some(open) = text.as_str().strip_suffix(']') {
            let mut out = String::with_capacity(text.len() + offset.len() + 3);
            out.push_str(open);
            out.push_str(",\"");
            out.push_str(offset);
            out.push_str("\"]");
            *text = Str::from(out.as_str());
        }
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offset_is_the_events_last_argument() {
        let frames = with_offset(&[Frame::Text(r#"2["chat",{"a":1}]"#.into())], "e-1");
        assert_eq!(
            frames,
            vec![Frame::Text(r#"2["chat",{"a":1},"e-1"]"#.into())]
        );
        let binary = [
            Frame::Text(r#"51-/x,["up",{"_placeholder":true,"num":0}]"#.into()),
            Frame::binary(vec![1u8].into()),
        ];
        let frames = with_offset(&binary, "e-2");
        assert_eq!(
            frames[0],
            Frame::Text(r#"51-/x,["up",{"_placeholder":true,"num":0},"e-2"]"#.into())
        );
        assert_eq!(frames[1], binary[1]);
        assert_eq!(parse_offset("ab-cd-12"), Some(("ab-cd".into(), 12)));
        assert_eq!(parse_offset("ab"), None);
        assert_eq!(format!("{:?}", Pid::new()), "Pid(..)");
    }

    #[test]
    fn digests_round_trip_in_hex() {
        let digest = Digest::of("pid");
        assert_eq!(Digest::from_hex(&digest.to_hex()), Some(digest));
        assert_eq!(Digest::from_hex("zz"), None);
        assert_eq!(Digest::from_hex(&"g".repeat(64)), None);
    }
}
