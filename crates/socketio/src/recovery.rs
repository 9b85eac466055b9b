//! Connection-state recovery, in one process (Socket.IO 4.6+; off unless
//! [`crate::SocketIoConfig::recovery`] is set). A socket gets a private id (`pid`) with its
//! CONNECT reply, and every event sent to clients carries an offset as its last argument. A
//! socket whose connection broke is kept for a window: a client that reconnects with
//! `{pid, offset}` in its auth gets the same socket id and rooms back, and the events it
//! missed, before its CONNECT reply; anything short of that is a fresh socket
//! (`recovered` false), never a partial replay. See docs/design/recovery.md for the protocol
//! and for what the cross-worker version adds.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::HeaderMap;

use engineio::Frame;

use crate::adapter::BroadcastOptions;
use crate::{Room, Sid};

/// Who a client is, from its handshake's headers (an application's login cookie): a socket is
/// given back only to a client that is the same one. `None`: anyone with the pid.
pub type Binding = Arc<dyn Fn(&HeaderMap) -> Option<String> + Send + Sync>;

/// How long and how much is kept for sockets that may come back.
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
    /// Disconnected sockets kept per namespace; beyond it the oldest is forgotten.
    pub max_sessions: usize,
    /// Binds a socket to its client: a returning client whose binding differs (another
    /// user's login with a stolen pid) gets a fresh socket, and the kept one stays for its
    /// owner.
    pub binding: Option<Binding>,
}

impl Default for RecoveryConfig {
    fn default() -> Self {
        RecoveryConfig {
            window: Duration::from_secs(120),
            max_packets: 1000,
            max_bytes: 1 << 20,
            max_sessions: 10_000,
            binding: None,
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
            .finish()
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
}

impl std::fmt::Debug for Pid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pid(..)")
    }
}

/// What a namespace keeps for recovery: the events it sent, numbered, and its disconnected
/// sockets.
pub(crate) struct Recovery {
    config: RecoveryConfig,
    /// Tells this log's offsets from those of another process or an earlier run, which a
    /// client may bring back after the server restarted.
    epoch: String,
    /// Keyed at random per process: what is kept of a binding is its hash, not the cookie.
    hasher: std::collections::hash_map::RandomState,
    log: Mutex<Log>,
}

#[derive(Default)]
struct Log {
    next: u64,
    /// The events still kept, oldest first, with whom they were for.
    events: VecDeque<Logged>,
    /// Offsets at or below it were evicted: a client behind it missed events no longer kept.
    floor: u64,
    /// Bytes of the events kept.
    bytes: usize,
    sessions: HashMap<Pid, Saved>,
}

struct Logged {
    seq: u64,
    at: Instant,
    bytes: usize,
    opts: BroadcastOptions,
    frames: Vec<Frame>,
}

/// A socket that lost its connection, as it was.
struct Saved {
    sid: Sid,
    rooms: Vec<Room>,
    at: Instant,
    binding: Option<u64>,
}

/// What a recovered socket gets back.
pub(crate) struct Restored {
    pub(crate) sid: Sid,
    pub(crate) rooms: Vec<Room>,
    /// The frames of the events it missed, in the order they were sent.
    pub(crate) missed: Vec<Frame>,
    /// The last offset those cover (see [`Recovery::catch_up`]).
    pub(crate) upto: u64,
}

impl Recovery {
    pub(crate) fn new(config: RecoveryConfig) -> Recovery {
        let epoch: String = engineio::generate_sid("").chars().take(8).collect();
        Recovery {
            config,
            epoch,
            hasher: std::collections::hash_map::RandomState::new(),
            log: Mutex::new(Log::default()),
        }
    }

    /// Numbers an event, keeps it for replay, and hands `deliver` its frames, all under the
    /// log's lock: every recipient, live or recovering, sees the events in offset order.
    /// `encode` gets the event's JSON with the offset appended.
    pub(crate) fn send<T>(
        &self,
        json: &str,
        opts: &BroadcastOptions,
        encode: impl FnOnce(&str) -> Vec<Frame>,
        deliver: impl FnOnce(&[Frame]) -> T,
    ) -> T {
        let mut log = self.lock();
        log.next += 1;
        let seq = log.next;
        let json = with_offset(json, &self.offset(seq));
        let frames = encode(&json);
        let now = Instant::now();
        log.expire(now, self.config.window);
        let bytes = frames.iter().map(frame_len).sum();
        while !log.events.is_empty()
            && (log.events.len() >= self.config.max_packets
                || log.bytes + bytes > self.config.max_bytes)
        {
            log.evict_oldest();
        }
        log.bytes += bytes;
        log.events.push_back(Logged {
            seq,
            at: now,
            bytes,
            opts: opts.clone(),
            frames: frames.clone(),
        });
        deliver(&frames)
    }

    /// What is kept of the binding of a client with these headers.
    pub(crate) fn binding(&self, headers: &HeaderMap) -> Option<u64> {
        let bind = self.config.binding.as_ref()?;
        bind(headers).map(|who| self.hasher.hash_one(who))
    }

    /// Keeps a socket whose connection broke, for its client to come back to.
    pub(crate) fn save(&self, pid: &Pid, sid: &Sid, rooms: Vec<Room>, binding: Option<u64>) {
        let mut log = self.lock();
        log.expire(Instant::now(), self.config.window);
        if log.sessions.len() >= self.config.max_sessions {
            let oldest = log
                .sessions
                .iter()
                .min_by_key(|(_, saved)| saved.at)
                .map(|(pid, _)| pid.clone());
            if let Some(pid) = oldest {
                log.sessions.remove(&pid);
            }
        }
        let rooms = rooms.into_iter().filter(|room| room != sid).collect();
        log.sessions.insert(
            pid.clone(),
            Saved {
                sid: sid.clone(),
                rooms,
                at: Instant::now(),
                binding,
            },
        );
    }

    /// Takes back the socket of `pid` with the events after `offset` that were for it. `None`,
    /// and nothing taken, when the socket is unknown or expired, the client is not the one it
    /// was bound to, the offset is not one of this log's, or events it missed are no longer
    /// kept.
    pub(crate) fn restore(
        &self,
        pid: &str,
        offset: &str,
        binding: Option<u64>,
    ) -> Option<Restored> {
        let mut log = self.lock();
        log.expire(Instant::now(), self.config.window);
        let after = self.parse_offset(offset)?;
        if after < log.floor || after > log.next {
            return None;
        }
        let pid = Pid(pid.into());
        if log.sessions.get(&pid)?.binding != binding {
            return None;
        }
        let saved = log.sessions.remove(&pid)?;
        let missed = log.frames_for(after, &saved.sid, &saved.rooms);
        Some(Restored {
            sid: saved.sid,
            rooms: saved.rooms,
            missed,
            upto: log.next,
        })
    }

    /// Runs `adopt` with the frames of the events for `sid` in `rooms` sent after `upto`, under
    /// the log's lock: a recovered socket that joins its rooms in `adopt` misses no event
    /// between its replay and its first live one.
    pub(crate) fn catch_up<T>(
        &self,
        upto: u64,
        sid: &Sid,
        rooms: &[Room],
        adopt: impl FnOnce(Vec<Frame>) -> T,
    ) -> T {
        let log = self.lock();
        adopt(log.frames_for(upto, sid, rooms))
    }

    fn offset(&self, seq: u64) -> String {
        format!("{}-{seq}", self.epoch)
    }

    fn parse_offset(&self, offset: &str) -> Option<u64> {
        let (epoch, seq) = offset.rsplit_once('-')?;
        (epoch == self.epoch).then_some(())?;
        seq.parse().ok()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Log> {
        // A panic while holding the lock leaves a log that is still consistent enough.
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Log {
    /// The frames of the events after `after` that were for socket `sid` in `rooms`.
    fn frames_for(&self, after: u64, sid: &Sid, rooms: &[Room]) -> Vec<Frame> {
        self.events
            .iter()
            .filter(|event| event.seq > after && is_for(&event.opts, sid, rooms))
            .flat_map(|event| event.frames.iter().cloned())
            .collect()
    }

    fn evict_oldest(&mut self) {
        if let Some(event) = self.events.pop_front() {
            self.floor = event.seq;
            self.bytes -= event.bytes;
        }
    }

    /// Forgets the sockets and events as old as the window or older.
    fn expire(&mut self, now: Instant, window: Duration) {
        let old = |at: Instant| now.saturating_duration_since(at) >= window;
        while self.events.front().is_some_and(|event| old(event.at)) {
            self.evict_oldest();
        }
        self.sessions.retain(|_, saved| !old(saved.at));
    }
}

fn frame_len(frame: &Frame) -> usize {
    match frame {
        Frame::Text(text) => text.len(),
        Frame::Binary(bytes) => bytes.len(),
    }
}

/// Whether an event sent with `opts` was for socket `sid` in `rooms`.
fn is_for(opts: &BroadcastOptions, sid: &Sid, rooms: &[Room]) -> bool {
    let member = |room: &Room| room == sid || rooms.contains(room);
    let chosen = opts.rooms.is_empty() || opts.rooms.iter().any(member);
    chosen && !opts.except.iter().any(member) && !opts.except_sids.contains(sid)
}

/// `["event", ...args]` with `offset` appended as its last argument, where clients look for
/// it.
pub(crate) fn with_offset(json: &str, offset: &str) -> String {
    let Some(open) = json.strip_suffix(']') else {
        return json.to_owned();
    };
    let mut out = String::with_capacity(json.len() + offset.len() + 3);
    out.push_str(open);
    out.push_str(",\"");
    out.push_str(offset);
    out.push_str("\"]");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(name: &str) -> Room {
        Room::from(name)
    }

    fn frames(text: &str) -> Vec<Frame> {
        vec![Frame::Text(text.into())]
    }

    fn to(rooms: &[&str]) -> BroadcastOptions {
        BroadcastOptions {
            rooms: rooms.iter().map(|r| room(r)).collect(),
            ..BroadcastOptions::default()
        }
    }

    /// Sends `text` with `opts`, and returns its offset.
    fn send(recovery: &Recovery, text: &str, opts: &BroadcastOptions) -> String {
        let mut offset = String::new();
        recovery.send(
            &format!("[\"{text}\"]"),
            opts,
            |json| {
                let args: Vec<String> = serde_json::from_str(json).expect("an array of strings");
                offset = args.last().cloned().unwrap_or_default();
                frames(text)
            },
            |_| (),
        );
        offset
    }

    fn replayed(frames: &[Frame]) -> Vec<String> {
        frames
            .iter()
            .map(|frame| match frame {
                Frame::Text(text) => text.to_string(),
                Frame::Binary(_) => "binary".into(),
            })
            .collect()
    }

    #[test]
    fn the_offset_is_the_events_last_argument() {
        assert_eq!(
            with_offset(r#"["chat",{"a":1}]"#, "e-1"),
            r#"["chat",{"a":1},"e-1"]"#
        );
        assert_eq!(with_offset(r#"["ping"]"#, "e-2"), r#"["ping","e-2"]"#);
        assert_eq!(format!("{:?}", Pid::new()), "Pid(..)");
    }

    #[test]
    fn a_socket_gets_back_its_rooms_and_only_the_events_it_missed_that_were_for_it() {
        let recovery = Recovery::new(RecoveryConfig::default());
        let sid = Sid::from("s1");
        let pid = Pid::new();
        let seen = send(&recovery, "before", &to(&["r"]));
        recovery.save(&pid, &sid, vec![sid.clone(), room("r")], None);
        send(&recovery, "in r", &to(&["r"]));
        send(&recovery, "elsewhere", &to(&["other"]));
        send(&recovery, "to all", &BroadcastOptions::default());
        send(&recovery, "to it", &to(&["s1"]));
        let mut except_it = BroadcastOptions::default();
        except_it.except_sids.push(sid.clone());
        send(&recovery, "not to it", &except_it);
        let restored = recovery
            .restore(pid.as_str(), &seen, None)
            .expect("recovered");
        assert_eq!(restored.sid, sid);
        assert_eq!(restored.rooms, vec![room("r")]);
        let (sid, rooms, upto) = (restored.sid.clone(), restored.rooms.clone(), restored.upto);
        assert_eq!(replayed(&restored.missed), vec!["in r", "to all", "to it"]);
        // Once: the socket is taken.
        assert!(recovery.restore(pid.as_str(), &seen, None).is_none());
        // What is sent between the replay and the socket's return is caught up.
        send(&recovery, "meanwhile", &to(&["r"]));
        let later = recovery.catch_up(upto, &sid, &rooms, |frames| frames);
        assert_eq!(replayed(&later), vec!["meanwhile"]);
    }

    #[test]
    fn an_unknown_pid_a_foreign_offset_an_expired_window_or_evicted_events_recover_nothing() {
        let recovery = Recovery::new(RecoveryConfig {
            max_packets: 2,
            ..RecoveryConfig::default()
        });
        let (pid, sid) = (Pid::new(), Sid::from("s1"));
        let seen = send(&recovery, "seen", &BroadcastOptions::default());
        recovery.save(&pid, &sid, vec![], None);
        assert!(recovery.restore("forged", &seen, None).is_none());
        assert!(recovery.restore(pid.as_str(), "other-1", None).is_none());
        // Three more events: the first the client missed is no longer kept.
        for text in ["a", "b", "c"] {
            send(&recovery, text, &BroadcastOptions::default());
        }
        assert!(recovery.restore(pid.as_str(), &seen, None).is_none());

        let expiring = Recovery::new(RecoveryConfig {
            window: Duration::ZERO,
            ..RecoveryConfig::default()
        });
        let seen = send(&expiring, "seen", &BroadcastOptions::default());
        expiring.save(&pid, &sid, vec![], None);
        assert!(expiring.restore(pid.as_str(), &seen, None).is_none());
    }

    #[test]
    fn a_socket_bound_to_a_login_is_given_back_to_that_login_only() {
        let recovery = Recovery::new(RecoveryConfig {
            binding: Some(Arc::new(|headers: &HeaderMap| {
                Some(headers.get("cookie")?.to_str().ok()?.to_owned())
            })),
            ..RecoveryConfig::default()
        });
        let headers = |cookie: &str| {
            let mut headers = HeaderMap::new();
            headers.insert("cookie", cookie.parse().expect("a header value"));
            headers
        };
        let (pid, sid) = (Pid::new(), Sid::from("s1"));
        let seen = send(&recovery, "seen", &BroadcastOptions::default());
        let owner = recovery.binding(&headers("login=alice"));
        recovery.save(&pid, &sid, vec![], owner);
        let thief = recovery.binding(&headers("login=mallory"));
        assert!(recovery.restore(pid.as_str(), &seen, thief).is_none());
        assert!(recovery.restore(pid.as_str(), &seen, None).is_none());
        // Still there for its owner.
        assert!(recovery.restore(pid.as_str(), &seen, owner).is_some());
    }

    #[test]
    fn the_log_keeps_at_most_max_bytes_of_events() {
        let recovery = Recovery::new(RecoveryConfig {
            max_bytes: 10,
            ..RecoveryConfig::default()
        });
        let (pid, sid) = (Pid::new(), Sid::from("s1"));
        let seen = send(&recovery, "0123", &BroadcastOptions::default());
        recovery.save(&pid, &sid, vec![], None);
        send(&recovery, "4567", &BroadcastOptions::default());
        // Four bytes each, ten at most: the first event the client missed is pushed out.
        send(&recovery, "89ab", &BroadcastOptions::default());
        send(&recovery, "cdef", &BroadcastOptions::default());
        assert!(recovery.restore(pid.as_str(), &seen, None).is_none());
    }
}
