//! A [`RecoveryLog`] as plain data, for another process to carry on with (a new master
//! taking over from an old one, `chatctl upgrade`): the same epoch and numbering, the events
//! still kept, the kept sockets and the floors, so a client that comes back to the new
//! process is recovered as it would have been by the old one.
//!
//! Compact: events and sockets are tuples, frames are strings (`t` + text, `b` + base64),
//! times are ages in milliseconds. A snapshot is checked as it is read (numbering, sizes,
//! encodings) and trimmed to the bounds of the log it becomes: a malformed one is refused
//! with its reason, never half taken.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use base64::Engine as _;
use engineio::{Frame, Str};
use serde::{Deserialize, Serialize};

use super::{Floors, Logged, RecoveryLog};
use crate::adapter::BroadcastOptions;
use crate::recovery::kept::{Detached, Kept, KeptSockets};
use crate::recovery::{Mark, RecoveryConfig};
use crate::Room;

/// The longest epoch a snapshot may carry (a log's own are 8 characters).
const MAX_EPOCH: usize = 64;

/// What a [`RecoveryLog`] holds, as data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogSnapshot {
    pub epoch: String,
    /// The number of the last event numbered.
    pub next: u64,
    /// The bounds it was kept under (see [`RecoveryConfig`]), for a process that has no log
    /// of its own for the namespace yet.
    pub bounds: LogBounds,
    /// Oldest first.
    pub events: Vec<EventSnapshot>,
    pub sessions: Vec<KeptSnapshot>,
    /// The last evicted event for everyone, then for each room a kept socket is in.
    pub floors: (u64, Vec<(String, u64)>),
    /// Those of the floors above (`None`: everyone's) whose last events came from one process
    /// that delivered them first: its last mark, and the last evicted event before them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub floor_runs: Vec<(Option<String>, Mark, u64)>,
    pub evicted: u64,
}

/// A log's bounds (the binding and the store of a [`RecoveryConfig`] are not data).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogBounds {
    pub window_ms: u64,
    pub max_packets: usize,
    pub max_bytes: usize,
    pub max_sessions: usize,
}

/// An event: its number, its age in milliseconds, whom it was for, its frames.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventSnapshot(pub u64, pub u64, pub Audience, pub Vec<String>);

/// The recipients of an event ([`BroadcastOptions`] without what a kept event never has), and
/// its sender's mark when it has one.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Audience {
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "r")]
    pub rooms: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "x")]
    pub except: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty", rename = "s")]
    pub except_sids: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "m")]
    pub mark: Option<Mark>,
}

/// A kept socket: the half of its private id's hash that a log keeps (32 hex digits), its id,
/// rooms, the half of its binding's hash, its owner, and for how many milliseconds its
/// connection has been broken (`None`: connected).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeptSnapshot(
    pub String,
    pub String,
    pub Vec<String>,
    pub Option<String>,
    pub u64,
    pub Option<u64>,
);

/// Why a snapshot was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("its epoch is empty or longer than {MAX_EPOCH} bytes")]
    Epoch,
    #[error("event {seq} is out of order or beyond the last number ({next})")]
    Numbering { seq: u64, next: u64 },
    #[error("event {seq} has a frame that is neither `t` text nor `b` base64")]
    Frame { seq: u64 },
    #[error("its bounds keep nothing (max_packets, max_bytes and max_sessions must be above 0)")]
    LogBounds,
    #[error("a kept socket's key is not 32 hex digits")]
    Key,
}

fn age(now: Instant, at: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(at).as_millis()).unwrap_or(u64::MAX)
}

/// The instant `age_ms` before `now` (now, when the clock does not go back that far).
fn aged(now: Instant, age_ms: u64) -> Instant {
    now.checked_sub(Duration::from_millis(age_ms))
        .unwrap_or(now)
}

fn encode_frame(frame: &Frame) -> String {
    match frame {
        Frame::Text(text) => format!("t{}", text.as_str()),
        Frame::Binary(data) => format!(
            "b{}",
            base64::engine::general_purpose::STANDARD.encode(data)
        ),
    }
}

fn decode_frame(frame: &str) -> Option<Frame> {
    match frame.split_at_checked(1)? {
        ("t", text) => Some(Frame::Text(Str::from(text))),
        ("b", data) => base64::engine::general_purpose::STANDARD
            .decode(data)
            .ok()
            .map(|bytes| Frame::binary(bytes.into())),
        _ => None,
    }
}

fn names(rooms: &[Room]) -> Vec<String> {
    rooms.iter().map(|room| room.to_string()).collect()
}

fn rooms(names: Vec<String>) -> Vec<Room> {
    names.into_iter().map(Room::from).collect()
}

impl LogBounds {
    pub fn of(config: &RecoveryConfig) -> LogBounds {
        LogBounds {
            window_ms: u64::try_from(config.window.as_millis()).unwrap_or(u64::MAX),
            max_packets: config.max_packets,
            max_bytes: config.max_bytes,
            max_sessions: config.max_sessions,
        }
    }

    /// A configuration with these bounds (and no binding or store: those are the process's).
    pub fn config(&self) -> RecoveryConfig {
        RecoveryConfig {
            window: Duration::from_millis(self.window_ms),
            max_packets: self.max_packets,
            max_bytes: self.max_bytes,
            max_sessions: self.max_sessions,
            ..RecoveryConfig::default()
        }
    }
}

impl RecoveryLog {
    /// The bounds this log keeps to.
    pub fn bounds(&self) -> LogBounds {
        LogBounds::of(&self.config)
    }

    /// What this log holds, as data (see [`RecoveryLog::from_snapshot`]).
    pub fn snapshot(&self) -> LogSnapshot {
        let now = Instant::now();
        let events = self
            .events
            .iter()
            .map(|event| {
                EventSnapshot(
                    event.seq,
                    age(now, event.at),
                    Audience {
                        rooms: names(&event.opts.rooms),
                        except: names(&event.opts.except),
                        except_sids: names(&event.opts.except_sids),
                        mark: event.mark,
                    },
                    event.frames.iter().map(encode_frame).collect(),
                )
            })
            .collect();
        let sessions = self
            .sessions
            .iter()
            .map(|kept| {
                let (pid_hash, binding) = kept.keys_hex();
                let (sid, rooms) = kept.unpack();
                KeptSnapshot(
                    pid_hash,
                    sid.to_string(),
                    names(&rooms),
                    binding,
                    kept.owner,
                    kept.detached.map(|at| age(now, at.instant(self.clock))),
                )
            })
            .collect();
        // Floors are kept by a hash of each room keyed for this process, which another cannot
        // match: they go by name, for the rooms of the kept sockets (no other socket can be
        // restored).
        let mut floors = Vec::new();
        let mut floor_runs = Vec::new();
        if let Some((mark, before)) = self.floors.everyone.run {
            floor_runs.push((None, mark, before));
        }
        let mut named = std::collections::HashSet::new();
        for kept in self.sessions.iter() {
            let (sid, rooms) = kept.unpack();
            for room in std::iter::once(&sid).chain(&rooms) {
                let Some(floor) = self.floors.get(room) else {
                    continue;
                };
                if named.insert(room.to_string()) {
                    floors.push((room.to_string(), floor.last));
                    if let Some((mark, before)) = floor.run {
                        floor_runs.push((Some(room.to_string()), mark, before));
                    }
                }
            }
        }
        LogSnapshot {
            epoch: self.epoch.clone(),
            next: self.next,
            bounds: self.bounds(),
            events,
            sessions,
            floors: (self.floors.everyone.last, floors),
            floor_runs,
            evicted: self.evicted,
        }
    }

    /// The log `snapshot` describes, under `config`'s bounds: events beyond them are evicted
    /// (oldest first, raising the floors as eviction does), sockets beyond them are not kept
    /// (those whose connection broke longest ago first), expired ones are dropped.
    pub fn from_snapshot(
        snapshot: LogSnapshot,
        config: RecoveryConfig,
    ) -> Result<RecoveryLog, SnapshotError> {
        if snapshot.epoch.is_empty() || snapshot.epoch.len() > MAX_EPOCH {
            return Err(SnapshotError::Epoch);
        }
        if config.max_packets == 0 || config.max_bytes == 0 || config.max_sessions == 0 {
            return Err(SnapshotError::LogBounds);
        }
        let now = Instant::now();
        let next = snapshot.next;
        let mut events = VecDeque::with_capacity(snapshot.events.len().min(config.max_packets));
        let mut last = 0;
        for EventSnapshot(seq, age_ms, audience, frames) in snapshot.events {
            if seq <= last || seq > next {
                return Err(SnapshotError::Numbering { seq, next });
            }
            last = seq;
            let frames = frames
                .iter()
                .map(|frame| decode_frame(frame))
                .collect::<Option<Vec<Frame>>>()
                .ok_or(SnapshotError::Frame { seq })?;
            events.push_back(Logged {
                seq,
                at: aged(now, age_ms),
                bytes: frames.iter().map(super::frame_len).sum(),
                opts: BroadcastOptions {
                    rooms: rooms(audience.rooms),
                    except: rooms(audience.except),
                    except_sids: rooms(audience.except_sids),
                    ..BroadcastOptions::default()
                },
                frames,
                mark: audience.mark,
            });
        }
        let (everyone, floor_rooms) = snapshot.floors;
        let mut floors = Floors::default();
        floors.everyone.last = everyone.min(next);
        for (room, seq) in floor_rooms.into_iter().take(config.max_sessions) {
            floors.set(&room, seq.min(next));
        }
        for (room, mark, before) in snapshot.floor_runs {
            let floor = match room {
                Some(room) => floors.get_mut(&room),
                None => Some(&mut floors.everyone),
            };
            if let Some(floor) = floor {
                floor.run = Some((mark, before.min(floor.last)));
            }
        }
        // Connected sockets first, then those that broke most recently.
        let mut sessions = snapshot.sessions;
        sessions.sort_by_key(|KeptSnapshot(.., detached)| detached.map_or((0, 0), |age| (1, age)));
        sessions.truncate(config.max_sessions);
        // Times of detachment count from the oldest; kept in the order they broke.
        let oldest = sessions.iter().filter_map(|kept| kept.5).max().unwrap_or(0);
        let clock = aged(now, oldest);
        let mut kept = KeptSockets::default();
        for KeptSnapshot(pid_hash, sid, rooms_of, binding, owner, detached) in
            sessions.into_iter().rev()
        {
            let detached = detached.map(|age_ms| Detached::at(clock, aged(now, age_ms)));
            let socket = Kept::from_parts(
                &pid_hash,
                binding.as_deref(),
                &sid,
                &rooms(rooms_of),
                owner,
                detached,
            )
            .ok_or(SnapshotError::Key)?;
            kept.insert(socket);
        }
        let mut log = RecoveryLog {
            config,
            epoch: snapshot.epoch,
            next,
            bytes: events.iter().map(|event| event.bytes).sum(),
            events,
            floors,
            sessions: kept,
            clock,
            evicted: snapshot.evicted,
        };
        while log.events.len() > log.config.max_packets || log.bytes > log.config.max_bytes {
            log.evict_oldest();
        }
        log.expire(now);
        Ok(log)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::recovery::{Pid, RestoreRequest, SessionRecord};
    use crate::Sid;

    fn to(rooms: &[&str]) -> BroadcastOptions {
        BroadcastOptions {
            rooms: rooms.iter().map(|r| Room::from(*r)).collect(),
            ..BroadcastOptions::default()
        }
    }

    fn record(pid: &Pid, sid: &str, rooms: &[&str]) -> SessionRecord {
        SessionRecord {
            sid: Sid::from(sid),
            pid_hash: pid.digest(),
            rooms: rooms.iter().map(|r| Room::from(*r)).collect(),
            binding: None,
        }
    }

    fn ask(epoch: &str, pid: &Pid, after: u64) -> RestoreRequest {
        RestoreRequest {
            pid_hash: pid.digest(),
            epoch: epoch.to_owned(),
            after,
            had_own: None,
            asker: None,
            binding: None,
        }
    }

    #[test]
    fn a_log_carried_over_keeps_its_numbering_and_recovers_its_sockets() {
        let mut old = RecoveryLog::new(RecoveryConfig {
            max_packets: 3,
            ..RecoveryConfig::default()
        });
        let (gone, connected) = (Pid::new(), Pid::new());
        let seen = old.append(&[Frame::Text("before".into())], &to(&["r"]));
        old.keep(record(&gone, "g", &["g", "r"]), 7, true);
        old.keep(record(&connected, "c", &["s"]), 7, false);
        old.append(&[Frame::Text("in r".into())], &to(&["r"]));
        old.append(&[Frame::binary(vec![1, 2, 3].into())], &to(&["r"]));
        // Evicted for room s: the floors travel, as everyone's (the highest; room hashes are keyed
        // per process), so a socket behind one starts afresh.
        for text in ["s1", "s2", "s3"] {
            old.append(&[Frame::Text(text.into())], &to(&["s"]));
        }
        let snapshot = old.snapshot();
        let json = serde_json::to_string(&snapshot).unwrap();
        let back: LogSnapshot = serde_json::from_str(&json).unwrap();
        assert_eq!(back, snapshot);
        let mut new = RecoveryLog::from_snapshot(back, snapshot.bounds.config()).unwrap();
        assert_eq!(new.epoch(), old.epoch());
        assert_eq!(new.stats(), old.stats());
        // Numbering goes on where the old log stopped.
        let next = new.append(&[Frame::Text("after".into())], &to(&["r"]));
        assert_eq!(next, 7);
        // The socket in r missed events evicted for r: not recovered, as with the old log.
        assert!(new.restore(&ask(old.epoch(), &gone, seen)).is_none());
        // One that saw everything of s recovers, with what came after.
        new.owner_gone(7);
        let restored = new.restore(&ask(old.epoch(), &connected, 6)).unwrap();
        assert_eq!(&*restored.sid, "c");
        assert_eq!(restored.upto, 7);
        assert!(restored.missed.is_empty());
    }

    #[test]
    fn a_snapshot_is_trimmed_to_the_bounds_of_the_log_it_becomes() {
        let mut old = RecoveryLog::new(RecoveryConfig::default());
        let pids: Vec<Pid> = (0..3).map(|_| Pid::new()).collect();
        for (i, pid) in pids.iter().enumerate() {
            old.keep(record(pid, &format!("s{i}"), &[]), 1, i > 0);
        }
        for i in 0..5 {
            old.append(&[Frame::Text(format!("e{i}").into())], &to(&[]));
        }
        let smaller = RecoveryConfig {
            max_packets: 2,
            max_sessions: 2,
            ..RecoveryConfig::default()
        };
        let new = RecoveryLog::from_snapshot(old.snapshot(), smaller).unwrap();
        let stats = new.stats();
        assert_eq!(stats.packets, 2);
        assert_eq!(stats.sessions_connected + stats.sessions_kept, 2);
        assert_eq!(
            stats.sessions_connected, 1,
            "the connected socket is kept first"
        );
    }

    #[test]
    fn a_malformed_snapshot_is_refused_with_its_reason() {
        let mut log = RecoveryLog::new(RecoveryConfig::default());
        log.append(&[Frame::Text("a".into())], &to(&[]));
        log.append(&[Frame::Text("b".into())], &to(&[]));
        let good = log.snapshot();
        let refused = |edit: &dyn Fn(&mut LogSnapshot)| {
            let mut bad = good.clone();
            edit(&mut bad);
            RecoveryLog::from_snapshot(bad, RecoveryConfig::default())
                .err()
                .expect("refused")
        };
        assert_eq!(refused(&|s| s.epoch.clear()), SnapshotError::Epoch);
        assert_eq!(
            refused(&|s| s.next = 1),
            SnapshotError::Numbering { seq: 2, next: 1 }
        );
        assert_eq!(
            refused(&|s| s.events.swap(0, 1)),
            SnapshotError::Numbering { seq: 1, next: 2 }
        );
        assert_eq!(
            refused(&|s| s.events[0].3 = vec!["b!!".into()]),
            SnapshotError::Frame { seq: 1 }
        );
        assert_eq!(
            refused(&|s| s.events[1].3 = vec![String::new()]),
            SnapshotError::Frame { seq: 2 }
        );
        let nothing = RecoveryConfig {
            max_packets: 0,
            ..RecoveryConfig::default()
        };
        assert_eq!(
            RecoveryLog::from_snapshot(good.clone(), nothing).err(),
            Some(SnapshotError::LogBounds)
        );
        // Garbage JSON is a serde error, not a panic.
        assert!(serde_json::from_str::<LogSnapshot>(r#"{"epoch":1}"#).is_err());
    }

    #[test]
    fn floors_of_own_events_a_client_had_are_carried_over() {
        let mut old = RecoveryLog::new(RecoveryConfig {
            max_packets: 1,
            ..RecoveryConfig::default()
        });
        let pid = Pid::new();
        let seen = old.append(&[Frame::Text("feed".into())], &to(&["r"]));
        let mark = |index| Some(crate::recovery::Mark { process: 7, index });
        for index in 1..=3 {
            old.append_marked(&[Frame::Text("own".into())], &to(&["r"]), mark(index));
        }
        old.keep(record(&pid, "s1", &["r"]), 1, true);
        let snapshot = old.snapshot();
        let json = serde_json::to_string(&snapshot).unwrap();
        let mut new = RecoveryLog::from_snapshot(
            serde_json::from_str(&json).unwrap(),
            RecoveryConfig::default(),
        )
        .unwrap();
        let epoch = new.epoch().to_owned();
        let had = |index| RestoreRequest {
            had_own: mark(index),
            ..ask(&epoch, &pid, seen)
        };
        // The second and third were evicted; having had only the first is not enough.
        assert!(new.restore(&had(1)).is_none());
        let restored = new.restore(&had(3)).expect("recovered");
        assert!(restored.missed.is_empty());
    }
}
