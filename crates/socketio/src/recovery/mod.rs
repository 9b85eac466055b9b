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
//! ([`Namespace::deliver_sequenced`]), so one offset says what a client has had. A store may
//! let a process deliver its own events before they are numbered ([`SessionStore::own_first`]):
//! its offsets then also say how many of that process's own events a client had ([`Mark`]).
//! See docs/design/recovery.md.

mod kept;
mod log;
mod store;

use std::collections::HashMap;
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
    /// The number of the last event it had through the ordered feed.
    pub after: u64,
    /// The own events of its process it had too, delivered before they were numbered (see
    /// [`SessionStore::own_first`]): it had those of `mark.process` up to `mark.index`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub had_own: Option<Mark>,
    /// The process asking, for [`Restored::own_upto`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asker: Option<u64>,
    pub binding: Option<Digest>,
}

/// An event's place among those the process that sent it sent: the process (a number it drew
/// when its namespace opened) and how many it had sent, this one included. A store that lets
/// processes deliver their own events first keeps it with each event (see
/// [`SessionStore::own_first`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Mark {
    #[serde(rename = "p")]
    pub process: u64,
    #[serde(rename = "i")]
    pub index: u64,
}

/// The sender of an event handed to a store: its [`Mark`], and whether its process delivered
/// it to its own sockets already (the store then feeds it to the other processes only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Own {
    pub mark: Mark,
    pub delivered: bool,
    /// As the store feeds it: how many of its sender's events it has handed on, this one
    /// included, when it counts them (a process tells by it that it missed one).
    pub handed: Option<u64>,
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
    /// The index of the asking process's last own event numbered by then (see
    /// [`RestoreRequest::asker`]): its later ones reach the socket live.
    pub own_upto: u64,
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
    /// The epoch and number of the last event delivered here through the ordered feed.
    epoch: String,
    delivered: u64,
    /// This process's [`Mark::process`], when its store lets it deliver its own events first.
    process: u64,
    /// Its own events: how many it sent, and the index of the last one delivered here.
    sent: u64,
    own_had: u64,
    /// One of its own events went to be numbered before being delivered here, and has not
    /// come back: later ones wait their turn the same way, or they would overtake it.
    echoing: bool,
    /// The index of the last event delivered here from each other process, to tell a gap.
    last_from: HashMap<u64, u64>,
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
    events: Vec<Held>,
    /// More events came than a replay may hold (`max_packets`): the restore fails rather
    /// than replay part of them.
    overflowed: bool,
    /// A returning client's, counted in [`RecoveryStats`]; a socket handed over by another
    /// process (live hand-off) is not a recovery.
    counted: bool,
}

/// An event delivered here while a socket was being restored: where the feed stood when it
/// was, which event it is, and its frames without an offset.
struct Held {
    at: Position,
    event: Place,
    frames: Vec<Frame>,
    opts: BroadcastOptions,
}

/// Which event: a numbered one, or one of this process's own delivered before its number.
#[derive(Clone, Copy)]
enum Place {
    Numbered(u64),
    Own(u64),
}

/// Where the events delivered here stand: the last numbered one through the feed and, with
/// a store that lets this process deliver its own first, the last of those.
#[derive(Clone, Copy)]
struct Position {
    seq: u64,
    own: Option<Mark>,
}

/// How many processes' last events a feed remembers to tell gaps; beyond, it starts over.
const MAX_SENDERS: usize = 1024;

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
        let feed = Feed {
            process: rand::random(),
            ..Feed::default()
        };
        Recovery {
            config,
            store,
            feed: Mutex::new(feed),
            counters: Counters::default(),
        }
    }

    pub(crate) fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    /// This process's [`Mark::process`].
    pub(crate) fn process(&self) -> u64 {
        self.lock().process
    }

    /// Has the store number an event for every process. With a store that lets this process
    /// deliver its own events first, its sockets get it at once, offset with where this
    /// process stands, and the store hands it to the others. When the store cannot take it
    /// (a shared store out of reach), this process's sockets still get it, and the error says
    /// the others will not.
    pub(crate) fn append(
        &self,
        ns: &Namespace,
        frames: &[Frame],
        opts: &BroadcastOptions,
    ) -> Result<(), EmitError> {
        if !self.store.own_first() {
            let appended = self.store.append(ns, frames, opts, None);
            return self.unless_relayed(appended, ns, frames, opts, None);
        }
        let mut feed = self.lock();
        feed.sent += 1;
        let mark = Mark {
            process: feed.process,
            index: feed.sent,
        };
        // Before the first numbered event the epoch of the offsets is not known here, and
        // while one of its own events is on its way back, another delivered first would
        // overtake it: the store numbers it and hands it back.
        let delivered = !feed.epoch.is_empty() && !feed.echoing;
        if delivered {
            feed.own_had = mark.index;
            let at = feed.position();
            let offset = feed.offset(at);
            ns.deliver(
                &ns.adapter().sockets(opts),
                &with_offset(frames, &offset),
                opts.volatile,
            );
            let max = self.config.max_packets;
            feed.hold_event(at, Place::Own(mark.index), frames, opts, max);
        } else {
            feed.echoing = true;
        }
        // Handed to the store under the feed's lock: its own events reach it in their order,
        // and a restore that starts holding events after this one asks the store after it,
        // so the store has it numbered by then.
        let own = Own {
            mark,
            delivered,
            handed: None,
        };
        let appended = self.store.append(ns, frames, opts, Some(own));
        drop(feed);
        if delivered {
            appended
        } else {
            self.unless_relayed(appended, ns, frames, opts, Some(mark))
        }
    }

    /// A shared store that could not take an event its feed was to deliver here: this
    /// process's sockets get it anyway, with the offset of the last event delivered here, and
    /// it will not come back. (A store of this process delivered it already: only its relay
    /// failed.) `own`: the event's mark, when it was one of this process's own sent to be
    /// numbered first.
    fn unless_relayed(
        &self,
        appended: Result<(), EmitError>,
        ns: &Namespace,
        frames: &[Frame],
        opts: &BroadcastOptions,
        own: Option<Mark>,
    ) -> Result<(), EmitError> {
        if let (Err(EmitError::NotRelayed(_)), true) = (&appended, self.store.is_shared()) {
            let frames = match self.watermark() {
                Some(offset) => with_offset(frames, &offset),
                None => frames.to_vec(),
            };
            ns.deliver(&ns.adapter().sockets(opts), &frames, opts.volatile);
            let mut feed = self.lock();
            feed.echoing = false;
            // Had here in its turn (its own events before it came back), so not missed; one
            // still on its way back keeps the offsets where they are.
            if own.is_some_and(|own| own.index == feed.own_had + 1) {
                feed.own_had += 1;
            }
        }
        appended
    }

    /// What is kept of the binding of a client with these headers.
    pub(crate) fn binding(&self, headers: &HeaderMap) -> Option<Digest> {
        let bind = self.config.binding.as_ref()?;
        bind(headers).map(|who| Digest::of(&who))
    }

    /// Delivers a numbered event to the local sockets it is for, with its offset, and to the
    /// sockets being restored. Called in number order by the store. An event of this process
    /// delivered here before it was numbered is not delivered again.
    pub(crate) fn deliver_sequenced(
        &self,
        ns: &Namespace,
        epoch: &str,
        seq: u64,
        own: Option<Own>,
        frames: &[Frame],
        opts: &BroadcastOptions,
    ) {
        let mut feed = self.lock();
        if feed.epoch != epoch {
            // The first event here, or a store that started again: numbers start afresh.
            feed.epoch = epoch.to_owned();
        } else {
            self.count_gap(&mut feed, seq, own);
        }
        feed.delivered = seq;
        if let Some(own) = own.filter(|own| own.mark.process == feed.process) {
            if own.delivered {
                return;
            }
            // Its own events sent to be numbered first come back in their order: one that did
            // not (the store's queue to this process overflowed) is lost for its sockets.
            let missed = own.mark.index.saturating_sub(feed.own_had + 1);
            self.counters.gaps.fetch_add(missed, Ordering::Relaxed);
            feed.own_had = feed.own_had.max(own.mark.index);
            if own.mark.index == feed.sent {
                feed.echoing = false;
            }
        }
        let at = feed.position();
        let frames_out = with_offset(frames, &feed.offset(at));
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
        ns.deliver(&recipients, &frames_out, opts.volatile);
        feed.hold_event(
            at,
            Place::Numbered(seq),
            frames,
            opts,
            self.config.max_packets,
        );
    }

    /// Counts the events this process's feed missed before `seq` (a relay queue overflowed):
    /// its clients may miss them for good. With a store that lets processes deliver their own
    /// events first, not every number comes here: by the store's count of each sender's
    /// events handed on, where it gives one.
    fn count_gap(&self, feed: &mut Feed, seq: u64, own: Option<Own>) {
        let missed = match own.map(|own| (own.mark.process, own.handed)) {
            _ if !self.store.own_first() => seq.saturating_sub(feed.delivered + 1),
            Some((process, Some(handed))) if process != feed.process => {
                if feed.last_from.len() >= MAX_SENDERS && !feed.last_from.contains_key(&process) {
                    feed.last_from.clear();
                }
                let last = feed.last_from.insert(process, handed);
                last.map_or(0, |last| handed.saturating_sub(last + 1))
            }
            _ => 0,
        };
        self.counters.gaps.fetch_add(missed, Ordering::Relaxed);
    }

    /// The offset of the last event delivered here, for events that are not numbered (sent
    /// with `local()`): a client that gets one has had everything up to it.
    pub(crate) fn watermark(&self) -> Option<String> {
        let feed = self.lock();
        (!feed.epoch.is_empty()).then(|| feed.offset(feed.position()))
    }

    /// Runs `frozen` while no event is delivered here, and gives the offset of the last one
    /// delivered (`None` before the first): a socket closed by `frozen` had every event up to
    /// it that was meant for it, and none after.
    pub(crate) fn while_frozen<T>(&self, frozen: impl FnOnce() -> T) -> (Option<String>, T) {
        let feed = self.lock();
        let done = frozen();
        let offset = (!feed.epoch.is_empty()).then(|| feed.offset(feed.position()));
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
        if feed.epoch != epoch || feed.delivered < restored.upto {
            feed.replayed_ahead
                .push((restored.sid.clone(), restored.upto));
        }
        let mut frames: Vec<Frame> = restored
            .missed
            .iter()
            .flat_map(|event| with_offset(&event.frames, &offset(epoch, event.seq, None)))
            .collect();
        let rooms = &restored.rooms;
        let missed = |event: &Place| match *event {
            Place::Numbered(seq) => seq > restored.upto,
            Place::Own(index) => index > restored.own_upto,
        };
        for event in held.events {
            if missed(&event.event)
                && !event.opts.volatile
                && event.opts.is_for(&restored.sid, rooms)
            {
                // The socket had everything up to the replay's end too.
                let seq = event.at.seq.max(restored.upto);
                let offset = offset(epoch, seq, event.at.own);
                frames.extend(with_offset(&event.frames, &offset));
            }
        }
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

impl Feed {
    fn position(&self) -> Position {
        let own = (self.own_had > 0).then_some(Mark {
            process: self.process,
            index: self.own_had,
        });
        Position {
            seq: self.delivered,
            own,
        }
    }

    fn offset(&self, at: Position) -> String {
        offset(&self.epoch, at.seq, at.own)
    }

    /// Keeps an event delivered here for the sockets being restored.
    fn hold_event(
        &mut self,
        at: Position,
        event: Place,
        frames: &[Frame],
        opts: &BroadcastOptions,
        max: usize,
    ) {
        for hold in &mut self.holds {
            if hold.events.len() >= max {
                hold.overflowed = true;
                hold.events = Vec::new();
            }
            if !hold.overflowed {
                hold.events.push(Held {
                    at,
                    event,
                    frames: frames.to_vec(),
                    opts: opts.clone(),
                });
            }
        }
    }
}

/// An offset as clients see it: `EPOCH-SEQ`, and `.PROCESS.INDEX` (the process in hex) when
/// the client had own events of a process delivered before they were numbered.
pub(crate) fn offset(epoch: &str, seq: u64, own: Option<Mark>) -> String {
    match own {
        Some(mark) => format!("{epoch}-{seq}.{:x}.{}", mark.process, mark.index),
        None => format!("{epoch}-{seq}"),
    }
}

/// An offset a client brought back, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Offset {
    pub(crate) epoch: String,
    pub(crate) seq: u64,
    pub(crate) own: Option<Mark>,
}

/// The parts of an offset a client brought back; `None` for anything else.
pub(crate) fn parse_offset(offset: &str) -> Option<Offset> {
    let (epoch, rest) = offset.rsplit_once('-')?;
    let mut parts = rest.split('.');
    let seq = parts.next()?.parse().ok()?;
    let own = match (parts.next(), parts.next(), parts.next()) {
        (None, _, _) => None,
        (Some(process), Some(index), None) => Some(Mark {
            process: u64::from_str_radix(process, 16).ok()?,
            index: index.parse().ok()?,
        }),
        _ => return None,
    };
    Some(Offset {
        epoch: epoch.to_owned(),
        seq,
        own,
    })
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
        let plain = Offset {
            epoch: "ab-cd".into(),
            seq: 12,
            own: None,
        };
        assert_eq!(parse_offset("ab-cd-12"), Some(plain.clone()));
        let own = Some(Mark {
            process: 0xfe,
            index: 3,
        });
        assert_eq!(offset("ab-cd", 12, own), "ab-cd-12.fe.3");
        assert_eq!(parse_offset("ab-cd-12.fe.3"), Some(Offset { own, ..plain }));
        for bad in [
            "ab",
            "ab-",
            "ab-1.fe",
            "ab-1.fe.3.4",
            "ab-1.zz.3",
            "ab-1.fe.x",
        ] {
            assert_eq!(parse_offset(bad), None, "{bad}");
        }
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
