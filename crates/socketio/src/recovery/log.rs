//! The events a namespace sent, numbered, and the sockets kept for clients that come back:
//! the state of connection-state recovery, wherever it lives (in the process of the sockets,
//! or in a master or store every worker reaches). Plain data, no locks and no I/O: its owner
//! serialises access.

mod snapshot;

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, RandomState};
use std::time::Instant;

use engineio::Frame;

use super::kept::{Detached, Kept, KeptSockets};
use super::{Digest, Mark, RecoveryConfig, RestoreRequest, Restored, Sequenced, SessionRecord};
use crate::adapter::BroadcastOptions;
use crate::Room;

pub use snapshot::{Audience, EventSnapshot, KeptSnapshot, LogBounds, LogSnapshot, SnapshotError};

/// Who owns a kept socket: the process that serves it (a worker's id for its master), or
/// none once its connection broke.
pub type Owner = u64;

/// A namespace's numbered events and kept sockets.
pub struct RecoveryLog {
    config: RecoveryConfig,
    /// Tells this log's offsets from those of another process or an earlier run, which a
    /// client may bring back after the server restarted.
    epoch: String,
    next: u64,
    /// The events still kept, oldest first, with whom they were for.
    events: VecDeque<Logged>,
    /// What was evicted, by whom it was for: a client behind one of its floors missed events
    /// no longer kept; one whose rooms saw no eviction past its offset recovers, however far
    /// behind the log it is (a quiet socket in a busy namespace).
    floors: Floors,
    /// Bytes of the events kept.
    bytes: usize,
    /// By the hash of their private ids.
    sessions: KeptSockets,
    /// What the times sockets were detached count from.
    clock: Instant,
    /// Events evicted while a kept socket may still have needed them, and recoveries refused.
    evicted: u64,
}

struct Logged {
    seq: u64,
    at: Instant,
    bytes: usize,
    opts: BroadcastOptions,
    frames: Vec<Frame>,
    /// Its sender's, when its sender delivered it first (see [`crate::SessionStore::own_first`]).
    mark: Option<Mark>,
}

/// What a log holds, for status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LogStats {
    pub packets: u64,
    pub bytes: u64,
    pub sessions_connected: u64,
    pub sessions_kept: u64,
    pub evicted_packets: u64,
}

impl RecoveryLog {
    pub fn new(config: RecoveryConfig) -> RecoveryLog {
        let epoch: String = engineio::generate_sid("").chars().take(8).collect();
        RecoveryLog {
            config,
            epoch,
            next: 0,
            events: VecDeque::new(),
            floors: Floors::default(),
            bytes: 0,
            sessions: KeptSockets::default(),
            clock: Instant::now(),
            evicted: 0,
        }
    }

    /// The offsets of this log start with it.
    pub fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Numbers an event and keeps it for replay; a volatile one is numbered only (never
    /// replayed). Returns its number.
    pub fn append(&mut self, frames: &[Frame], opts: &BroadcastOptions) -> u64 {
        self.append_marked(frames, opts, None)
    }

    /// [`RecoveryLog::append`] of an event with its sender's mark: a client whose offset
    /// says it had that event is not given it again.
    pub fn append_marked(
        &mut self,
        frames: &[Frame],
        opts: &BroadcastOptions,
        mark: Option<Mark>,
    ) -> u64 {
        self.next += 1;
        let seq = self.next;
        if opts.volatile {
            return seq;
        }
        let now = Instant::now();
        self.expire(now);
        let bytes = frames.iter().map(frame_len).sum();
        while !self.events.is_empty()
            && (self.events.len() >= self.config.max_packets
                || self.bytes + bytes > self.config.max_bytes)
        {
            self.evict_oldest();
        }
        self.bytes += bytes;
        self.events.push_back(Logged {
            seq,
            at: now,
            bytes,
            opts: opts.clone(),
            frames: frames.to_vec(),
            mark,
        });
        seq
    }

    /// A socket `owner` serves, or whose connection broke (`detached`), as it is now. A
    /// detach from a process that no longer owns the socket (it came back elsewhere first)
    /// changes nothing.
    pub fn keep(&mut self, record: SessionRecord, owner: Owner, detached: bool) {
        let now = Instant::now();
        self.expire(now);
        if let Some(kept) = self.sessions.get(&record.pid_hash) {
            if detached && kept.detached.is_none() && kept.owner != owner {
                return;
            }
        } else if self.sessions.len() >= self.config.max_sessions && !self.make_room() {
            return;
        }
        self.sessions.insert(Kept::new(
            record.pid_hash,
            &record.sid,
            &record.rooms,
            record.binding,
            owner,
            detached.then(|| Detached::at(self.clock, now)),
        ));
    }

    /// A socket `owner` served left on purpose: nothing to keep.
    pub fn forget(&mut self, pid_hash: &Digest, owner: Owner) {
        if self
            .sessions
            .get(pid_hash)
            .is_some_and(|kept| kept.owner == owner)
        {
            if let Some(kept) = self.sessions.remove(pid_hash) {
                self.floors.forget(kept.sid());
            }
        }
    }

    /// The process `owner` is gone: the sockets it served may come back elsewhere from now.
    pub fn owner_gone(&mut self, owner: Owner) {
        let now = Detached::at(self.clock, Instant::now());
        self.sessions.owner_gone(owner, now);
    }

    /// Takes back a kept socket with the events after the request's offset that were for it,
    /// but those its offset says it had from its process ([`RestoreRequest::had_own`]).
    /// `None`, and nothing taken, when the socket is unknown or expired, the client is not the
    /// one it was bound to, the offset is not one of this log's, or events it missed are no
    /// longer kept.
    pub fn restore(&mut self, request: &RestoreRequest) -> Option<Restored> {
        self.expire(Instant::now());
        if request.epoch != self.epoch || request.after > self.next {
            return None;
        }
        let kept = self.sessions.get(&request.pid_hash)?;
        if !kept.is_bound_to(request.binding.as_ref()) {
            return None;
        }
        let (sid, rooms) = kept.unpack();
        if self
            .floors
            .passed(&sid, &rooms, request.after, request.had_own)
        {
            return None;
        }
        self.sessions.remove(&request.pid_hash)?;
        // From here on its client's offsets are past anything evicted for it.
        self.floors.forget(&sid);
        let had = |mark: Option<Mark>| {
            mark.zip(request.had_own)
                .is_some_and(|(mark, had)| mark.process == had.process && mark.index <= had.index)
        };
        let missed = self
            .events
            .iter()
            .filter(|event| event.seq > request.after && !had(event.mark))
            .filter(|event| event.opts.is_for(&sid, &rooms))
            .map(|event| Sequenced {
                seq: event.seq,
                frames: event.frames.clone(),
                opts: event.opts.clone(),
            })
            .collect();
        // The asker holds its own events from before it asked; those numbered by now are in
        // the replay if they were for the socket.
        let own_upto = self
            .events
            .iter()
            .filter_map(|event| event.mark)
            .filter(|mark| Some(mark.process) == request.asker)
            .map(|mark| mark.index)
            .max()
            .unwrap_or(0);
        Some(Restored {
            sid,
            rooms,
            missed,
            upto: self.next,
            own_upto,
        })
    }

    pub fn stats(&self) -> LogStats {
        let kept = self
            .sessions
            .iter()
            .filter(|kept| kept.detached.is_some())
            .count() as u64;
        LogStats {
            packets: self.events.len() as u64,
            bytes: self.bytes as u64,
            sessions_connected: self.sessions.len() as u64 - kept,
            sessions_kept: kept,
            evicted_packets: self.evicted,
        }
    }

    /// Forgets the oldest disconnected socket to keep another. False when every kept socket
    /// is connected: the new one is then not kept (it will not recover).
    fn make_room(&mut self) -> bool {
        self.sessions.remove_oldest_detached()
    }

    fn evict_oldest(&mut self) {
        if let Some(event) = self.events.pop_front() {
            self.floors
                .raise(&event.opts, event.seq, event.mark, self.config.max_sessions);
            self.bytes -= event.bytes;
            self.evicted += 1;
        }
    }

    /// Forgets the sockets disconnected for the window and the events as old as it.
    fn expire(&mut self, now: Instant) {
        let window = self.config.window;
        let old = |at: Instant| now.saturating_duration_since(at) >= window;
        while self.events.front().is_some_and(|event| old(event.at)) {
            self.evict_oldest();
        }
        let clock = self.clock;
        while let Some(kept) = self
            .sessions
            .pop_detached(|at| at.is_older(clock, now, window))
        {
            self.floors.forget(kept.sid());
        }
    }
}

/// The last evicted event for each room (a socket's own room included) and for everyone.
#[derive(Default)]
struct Floors {
    /// Events for every socket of the namespace, and those of rooms beyond the bound.
    everyone: Floor,
    /// By a 64-bit keyed hash of the room's name, not the name: most are sockets' own rooms,
    /// one per socket that was sent an event, and a name would be an allocation each. Two
    /// rooms with the same hash (about one chance in 2^64 per pair) share the higher floor, so
    /// a socket may start afresh that could have recovered, never recover with a gap.
    rooms: HashMap<u64, Floor>,
    hasher: RandomState,
}

/// The evicted events for a room: the number of the last, and when the last ones came from
/// one process that delivered them first (see [`crate::SessionStore::own_first`]), its mark
/// and the number of the last evicted event before them. A client of that process had those
/// without its offset's number reaching them: its offset's mark says so.
#[derive(Clone, Copy, Default)]
struct Floor {
    last: u64,
    run: Option<(Mark, u64)>,
}

impl Floor {
    /// An event numbered `seq`, with `mark`, was evicted after those already counted.
    fn raise(&mut self, seq: u64, mark: Option<Mark>) {
        self.run = match (mark, self.run) {
            (Some(mark), Some((run, before))) if run.process == mark.process => {
                Some((mark, before))
            }
            (Some(mark), _) => Some((mark, self.last)),
            (None, _) => None,
        };
        self.last = seq;
    }

    /// Whether a client with an offset at `after` and own events `had_own` missed an event
    /// counted here.
    fn passed(&self, after: u64, had_own: Option<Mark>) -> bool {
        match (self.run, had_own) {
            (Some((run, before)), Some(had)) if run.process == had.process => {
                before > after || run.index > had.index
            }
            _ => self.last > after,
        }
    }
}

impl Floors {
    /// Sets the floor of `room`.
    fn set(&mut self, room: &str, seq: u64) {
        let key = self.key(room);
        self.rooms.insert(
            key,
            Floor {
                last: seq,
                run: None,
            },
        );
    }

    fn get(&self, room: &str) -> Option<&Floor> {
        self.rooms.get(&self.key(room))
    }

    fn get_mut(&mut self, room: &str) -> Option<&mut Floor> {
        let key = self.key(room);
        self.rooms.get_mut(&key)
    }

    /// A socket taken back or gone: its own room needs no floor.
    fn forget(&mut self, sid: &str) {
        let key = self.key(sid);
        self.rooms.remove(&key);
    }

    fn key(&self, room: &str) -> u64 {
        self.hasher.hash_one(room)
    }

    /// An event for the sockets `opts` selects, numbered `seq`, with `mark`, was evicted. At
    /// most `bound` rooms are tracked; beyond it every socket counts as having missed it.
    fn raise(&mut self, opts: &BroadcastOptions, seq: u64, mark: Option<Mark>, bound: usize) {
        if opts.rooms.is_empty() {
            self.everyone.raise(seq, mark);
            return;
        }
        for room in &opts.rooms {
            let key = self.key(room);
            if let Some(floor) = self.rooms.get_mut(&key) {
                floor.raise(seq, mark);
            } else if self.rooms.len() < bound {
                let mut floor = Floor::default();
                floor.raise(seq, mark);
                self.rooms.insert(key, floor);
            } else {
                // Too many to tell apart: the old floors are folded into everyone's.
                self.everyone = Floor {
                    last: seq,
                    run: None,
                };
                self.rooms.clear();
                return;
            }
        }
    }

    /// Whether an event evicted may have been for socket `sid` in `rooms`, and missed by a
    /// client with an offset at `after` that had `had_own`.
    fn passed(&self, sid: &str, rooms: &[Room], after: u64, had_own: Option<Mark>) -> bool {
        std::iter::once(sid)
            .chain(rooms.iter().map(|room| &**room))
            .filter_map(|room| self.rooms.get(&self.key(room)))
            .chain(std::iter::once(&self.everyone))
            .any(|floor| floor.passed(after, had_own))
    }
}

fn frame_len(frame: &Frame) -> usize {
    match frame {
        Frame::Text(text) => text.len(),
        Frame::Binary(bytes) => bytes.len(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::recovery::Pid;
    use crate::Sid;

    fn room(name: &str) -> Room {
        Room::from(name)
    }

    fn to(rooms: &[&str]) -> BroadcastOptions {
        BroadcastOptions {
            rooms: rooms.iter().map(|r| room(r)).collect(),
            ..BroadcastOptions::default()
        }
    }

    /// Sends `text` with `opts`, and returns its number.
    fn send(log: &mut RecoveryLog, text: &str, opts: &BroadcastOptions) -> u64 {
        log.append(&[Frame::Text(text.into())], opts)
    }

    fn record(pid: &Pid, sid: &str, rooms: &[&str], binding: Option<Digest>) -> SessionRecord {
        SessionRecord {
            sid: Sid::from(sid),
            pid_hash: pid.digest(),
            rooms: rooms.iter().map(|r| room(r)).collect(),
            binding,
        }
    }

    fn ask(log: &RecoveryLog, pid: &Pid, after: u64, binding: Option<Digest>) -> RestoreRequest {
        RestoreRequest {
            pid_hash: pid.digest(),
            epoch: log.epoch().to_owned(),
            after,
            had_own: None,
            asker: None,
            binding,
        }
    }

    fn replayed(restored: &Restored) -> Vec<String> {
        restored
            .missed
            .iter()
            .flat_map(|event| &event.frames)
            .map(|frame| match frame {
                Frame::Text(text) => text.to_string(),
                Frame::Binary(_) => "binary".into(),
            })
            .collect()
    }

    #[test]
    fn a_socket_gets_back_its_rooms_and_only_the_events_it_missed_that_were_for_it() {
        let mut log = RecoveryLog::new(RecoveryConfig::default());
        let pid = Pid::new();
        let seen = send(&mut log, "before", &to(&["r"]));
        log.keep(record(&pid, "s1", &["s1", "r"], None), 1, true);
        send(&mut log, "in r", &to(&["r"]));
        send(&mut log, "elsewhere", &to(&["other"]));
        send(&mut log, "to all", &BroadcastOptions::default());
        send(&mut log, "to it", &to(&["s1"]));
        let mut except_it = BroadcastOptions::default();
        except_it.except_sids.push(Sid::from("s1"));
        send(&mut log, "not to it", &except_it);
        let volatile = BroadcastOptions {
            volatile: true,
            ..BroadcastOptions::default()
        };
        let last = send(&mut log, "volatile", &volatile);
        let restored = log
            .restore(&ask(&log, &pid, seen, None))
            .expect("recovered");
        assert_eq!(&*restored.sid, "s1");
        assert_eq!(restored.rooms, vec![room("r")]);
        assert_eq!(restored.upto, last);
        assert_eq!(replayed(&restored), vec!["in r", "to all", "to it"]);
        // Once: the socket is taken.
        assert!(log.restore(&ask(&log, &pid, seen, None)).is_none());
    }

    #[test]
    fn an_unknown_pid_a_foreign_offset_an_expired_window_or_evicted_events_recover_nothing() {
        let mut log = RecoveryLog::new(RecoveryConfig {
            max_packets: 2,
            ..RecoveryConfig::default()
        });
        let pid = Pid::new();
        let seen = send(&mut log, "seen", &BroadcastOptions::default());
        log.keep(record(&pid, "s1", &[], None), 1, true);
        assert!(log.restore(&ask(&log, &Pid::new(), seen, None)).is_none());
        let mut foreign = ask(&log, &pid, seen, None);
        foreign.epoch = "other".into();
        assert!(log.restore(&foreign).is_none());
        // Three more events: the first the client missed is no longer kept.
        for text in ["a", "b", "c"] {
            send(&mut log, text, &BroadcastOptions::default());
        }
        assert!(log.restore(&ask(&log, &pid, seen, None)).is_none());
        assert_eq!(log.stats().evicted_packets, 2);

        let mut expiring = RecoveryLog::new(RecoveryConfig {
            window: Duration::ZERO,
            ..RecoveryConfig::default()
        });
        let seen = send(&mut expiring, "seen", &BroadcastOptions::default());
        expiring.keep(record(&pid, "s1", &[], None), 1, true);
        assert!(expiring
            .restore(&ask(&expiring, &pid, seen, None))
            .is_none());
    }

    #[test]
    fn the_window_ends_sockets_that_stayed_away_not_those_that_came_back() {
        let mut log = RecoveryLog::new(RecoveryConfig {
            window: Duration::ZERO,
            ..RecoveryConfig::default()
        });
        let (back, away) = (Pid::new(), Pid::new());
        log.keep(record(&back, "b", &["r"], None), 1, true);
        log.keep(record(&back, "b", &["r"], None), 2, false);
        log.keep(record(&away, "a", &["r"], None), 1, true);
        // Every socket's connection broke at least once; only the one still away is forgotten.
        send(&mut log, "later", &to(&["r"]));
        let stats = log.stats();
        assert_eq!((stats.sessions_connected, stats.sessions_kept), (1, 0));
        log.owner_gone(2);
        send(&mut log, "later still", &to(&["r"]));
        assert_eq!(
            log.stats().sessions_connected + log.stats().sessions_kept,
            0
        );
    }

    #[test]
    fn a_quiet_socket_recovers_though_the_log_evicted_what_was_for_others() {
        let mut log = RecoveryLog::new(RecoveryConfig {
            max_packets: 2,
            ..RecoveryConfig::default()
        });
        let (quiet, busy) = (Pid::new(), Pid::new());
        let seen = send(&mut log, "seen", &to(&["r"]));
        log.keep(record(&quiet, "q", &["r"], None), 1, true);
        log.keep(record(&busy, "b", &["s"], None), 1, true);
        // Three events for room s and one for the busy socket alone: all evicted but two.
        for text in ["s1", "s2", "s3"] {
            send(&mut log, text, &to(&["s"]));
        }
        send(&mut log, "to b", &to(&["b"]));
        let restored = log
            .restore(&ask(&log, &quiet, seen, None))
            .expect("recovered");
        assert_eq!(replayed(&restored), Vec::<String>::new());
        // The busy one missed events no longer kept.
        assert!(log.restore(&ask(&log, &busy, seen, None)).is_none());
        // An event for everyone, evicted, is missed by every socket.
        let mut log = RecoveryLog::new(RecoveryConfig {
            max_packets: 1,
            ..RecoveryConfig::default()
        });
        let seen = send(&mut log, "seen", &to(&["r"]));
        log.keep(record(&quiet, "q", &["r"], None), 1, true);
        send(&mut log, "all", &BroadcastOptions::default());
        send(&mut log, "s", &to(&["s"]));
        assert!(log.restore(&ask(&log, &quiet, seen, None)).is_none());
    }

    #[test]
    fn a_socket_bound_to_a_login_is_given_back_to_that_login_only() {
        let mut log = RecoveryLog::new(RecoveryConfig::default());
        let pid = Pid::new();
        let seen = send(&mut log, "seen", &BroadcastOptions::default());
        let owner = Some(Digest::of("login=alice"));
        log.keep(record(&pid, "s1", &[], owner), 1, true);
        let thief = Some(Digest::of("login=mallory"));
        assert!(log.restore(&ask(&log, &pid, seen, thief)).is_none());
        assert!(log.restore(&ask(&log, &pid, seen, None)).is_none());
        // Still there for its owner.
        assert!(log.restore(&ask(&log, &pid, seen, owner)).is_some());
    }

    #[test]
    fn the_log_keeps_at_most_max_bytes_of_events() {
        let mut log = RecoveryLog::new(RecoveryConfig {
            max_bytes: 10,
            ..RecoveryConfig::default()
        });
        let pid = Pid::new();
        let seen = send(&mut log, "0123", &BroadcastOptions::default());
        log.keep(record(&pid, "s1", &[], None), 1, true);
        send(&mut log, "4567", &BroadcastOptions::default());
        // Four bytes each, ten at most: the first event the client missed is pushed out.
        send(&mut log, "89ab", &BroadcastOptions::default());
        send(&mut log, "cdef", &BroadcastOptions::default());
        assert!(log.restore(&ask(&log, &pid, seen, None)).is_none());
    }

    #[test]
    fn a_connected_socket_is_recoverable_once_its_process_is_gone_and_only_its_owner_detaches_it() {
        let mut log = RecoveryLog::new(RecoveryConfig::default());
        let pid = Pid::new();
        let seen = send(&mut log, "seen", &BroadcastOptions::default());
        // Worker 1 serves it, in room r.
        log.keep(record(&pid, "s1", &["s1", "r"], None), 1, false);
        assert_eq!(log.stats().sessions_connected, 1);
        // Worker 2 may not detach it, nor forget it.
        log.keep(record(&pid, "s1", &[], None), 2, true);
        log.forget(&pid.digest(), 2);
        assert_eq!(log.stats().sessions_connected, 1);
        // Worker 1 dies (kill -9): its socket is kept, with its rooms.
        log.owner_gone(1);
        assert_eq!(log.stats().sessions_kept, 1);
        send(&mut log, "in r", &to(&["r"]));
        let restored = log
            .restore(&ask(&log, &pid, seen, None))
            .expect("recovered");
        assert_eq!(restored.rooms, vec![room("r")]);
        assert_eq!(replayed(&restored), vec!["in r"]);
        // A socket that left on purpose is not kept.
        log.keep(record(&pid, "s1", &[], None), 2, false);
        log.forget(&pid.digest(), 2);
        assert!(log.restore(&ask(&log, &pid, seen, None)).is_none());
    }

    #[test]
    fn beyond_max_sessions_the_oldest_disconnected_socket_makes_room() {
        let mut log = RecoveryLog::new(RecoveryConfig {
            max_sessions: 2,
            ..RecoveryConfig::default()
        });
        let (a, b, c, d) = (Pid::new(), Pid::new(), Pid::new(), Pid::new());
        log.keep(record(&a, "a", &[], None), 1, true);
        log.keep(record(&b, "b", &[], None), 1, false);
        log.keep(record(&c, "c", &[], None), 1, false);
        assert!(
            log.restore(&ask(&log, &a, 0, None)).is_none(),
            "a made room"
        );
        // Every kept socket connected: a new one is not kept.
        log.keep(record(&d, "d", &[], None), 1, false);
        assert_eq!(log.stats().sessions_connected, 2);
    }

    /// Sends `text` to room `r` from process `process`'s `index`th own event.
    fn send_own(log: &mut RecoveryLog, text: &str, process: u64, index: u64) -> u64 {
        let mark = Mark { process, index };
        log.append_marked(&[Frame::Text(text.into())], &to(&["r"]), Some(mark))
    }

    #[test]
    fn a_client_that_had_its_processs_own_events_first_gets_the_others_and_no_copy() {
        let (w, other) = (7, 9);
        let mut log = RecoveryLog::new(RecoveryConfig::default());
        let pid = Pid::new();
        // The client's worker w delivered "w1" and "w2" at once; the feed then brought
        // "o1", numbered before "w2". Its offset: the feed at "o1", w's own up to 2.
        send_own(&mut log, "w1", w, 1);
        let o1 = send_own(&mut log, "o1", other, 1);
        send_own(&mut log, "w2", w, 2);
        // It lost its connection then; "o2" and "w3" came after.
        log.keep(record(&pid, "s1", &["r"], None), 1, true);
        send_own(&mut log, "o2", other, 2);
        send_own(&mut log, "w3", w, 3);
        let had = RestoreRequest {
            had_own: Some(Mark {
                process: w,
                index: 2,
            }),
            asker: Some(other),
            ..ask(&log, &pid, o1, None)
        };
        let restored = log.restore(&had).expect("recovered");
        assert_eq!(replayed(&restored), vec!["o2", "w3"]);
        // The asking process's own events numbered by then: they are in the replay, not held.
        assert_eq!(restored.own_upto, 2);
    }

    #[test]
    fn evicted_own_events_a_client_had_do_not_stop_its_recovery_but_others_do() {
        let w = 7;
        let config = RecoveryConfig {
            max_packets: 2,
            ..RecoveryConfig::default()
        };
        let had = |log: &RecoveryLog, pid: &Pid, after: u64, index: u64| RestoreRequest {
            had_own: Some(Mark { process: w, index }),
            ..ask(log, pid, after, None)
        };
        // Its worker's own events, all evicted: it had them.
        let mut log = RecoveryLog::new(config.clone());
        let pid = Pid::new();
        let seen = send(&mut log, "feed", &to(&["r"]));
        for index in 1..=4 {
            send_own(&mut log, "own", w, index);
        }
        log.keep(record(&pid, "s1", &["r"], None), 1, true);
        let restored = log.restore(&had(&log, &pid, seen, 4)).expect("recovered");
        assert!(restored.missed.is_empty());
        // Five, the first three evicted: one that had two missed the third; one that had
        // three gets the fourth and the fifth.
        let mut log = RecoveryLog::new(config.clone());
        let seen = send(&mut log, "feed", &to(&["r"]));
        for index in 1..=5 {
            send_own(&mut log, &format!("own{index}"), w, index);
        }
        log.keep(record(&pid, "s1", &["r"], None), 1, true);
        assert!(log.restore(&had(&log, &pid, seen, 2)).is_none());
        let restored = log.restore(&had(&log, &pid, seen, 3)).expect("recovered");
        assert_eq!(replayed(&restored), vec!["own4", "own5"]);
        // Another process's event evicted between them: it missed that one.
        let mut log = RecoveryLog::new(config);
        let seen = send(&mut log, "feed", &to(&["r"]));
        send_own(&mut log, "own", w, 1);
        send_own(&mut log, "theirs", 8, 1);
        for index in 2..=4 {
            send_own(&mut log, "own", w, index);
        }
        log.keep(record(&pid, "s1", &["r"], None), 1, true);
        assert!(log.restore(&had(&log, &pid, seen, 4)).is_none());
    }
}
