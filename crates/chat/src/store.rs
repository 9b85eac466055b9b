//! The state workers share: sessions, room membership and presence, recent history. This is the
//! interface; [`MemoryStore`] keeps it in this process, and the cluster supplies others (through
//! the master, or Redis).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::expiry::Expiries;

/// A logged-in user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub nickname: String,
}

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// A bound of the store is reached (e.g. its number of sessions); nothing is lost, the
    /// new entry is refused.
    #[error("store full: {0}")]
    Full(String),
}

/// How much of a room's history a store keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// The last messages kept.
    pub keep: usize,
    /// How long the history stays after its last message: rooms are created by whoever names
    /// one, so the history of a room nobody speaks in any more (an empty room) must go.
    pub ttl: Duration,
}

/// Shared chat state. Members are counted by nickname: one user with two tabs is one user.
pub trait Store: Send + Sync + 'static {
    fn create_session(
        &self,
        nickname: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Session, StoreError>>;
    fn session<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Session>, StoreError>>;
    fn delete_session<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Adds a socket to a room under `nickname`; returns whether the nickname is new in the
    /// room. The store records the nickname with the socket: the socket leaves the room under
    /// that nickname, whatever it is called by then (presence follows the socket).
    fn join_room<'a>(
        &'a self,
        room: &'a str,
        nickname: &'a str,
        socket: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Removes a socket from a room; returns the nickname it joined under when that nickname
    /// has now left the room entirely.
    fn leave_room<'a>(
        &'a self,
        room: &'a str,
        socket: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>>;
    /// A socket whose connection broke may come back (connection-state recovery): its
    /// memberships of `rooms` end `grace` from now, unless it joins them again with the same
    /// id before ([`Store::join_room`]), and [`Store::expired_departures`] then says who
    /// left. Returns the departures that happen now: a store without grace leaves at once.
    fn depart_later<'a>(
        &'a self,
        socket: &'a str,
        rooms: Vec<String>,
        _grace: Duration,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, StoreError>> {
        Box::pin(async move {
            let mut left = Vec::new();
            for room in rooms {
                if let Some(nickname) = self.leave_room(&room, socket).await? {
                    left.push((room, nickname));
                }
            }
            Ok(left)
        })
    }
    /// The memberships whose grace ended, left now: (room, nickname) for each nickname that
    /// left a room. Each is returned once, to one caller.
    fn expired_departures(&self) -> BoxFuture<'_, Result<Vec<(String, String)>, StoreError>> {
        ready(Ok(Vec::new()))
    }
    /// Every room with users, and how many users.
    fn room_counts(&self) -> BoxFuture<'_, Result<Vec<(String, usize)>, StoreError>>;
    /// The nicknames in a room, sorted.
    fn room_users<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;
    /// Appends a message (a JSON string) to a room's history, within `limits`.
    fn push_history<'a>(
        &'a self,
        room: &'a str,
        entry: String,
        limits: HistoryLimits,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Like [`Store::push_history`], without waiting: the entry is queued before this
    /// returns, so entries recorded one after the other stay in that order, and a chat line
    /// is delivered without waiting for its history write. Failures are the store's to log.
    fn record_history(&self, room: &str, entry: String, limits: HistoryLimits);
    /// A room's recent history, oldest first.
    fn history<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;
}

/// The store of a single process.
#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<MemoryState>,
    /// Sessions kept at once: logins cost memory here, so there is a bound; a login beyond it
    /// is refused (existing users stay logged in) until sessions expire or log out.
    max_sessions: usize,
}

/// Sessions a [`MemoryStore`] keeps by default: about 20 MB of them.
pub const DEFAULT_MAX_SESSIONS: usize = 100_000;

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new(DEFAULT_MAX_SESSIONS)
    }
}

#[derive(Debug, Default)]
struct MemoryState {
    /// Session id -> nickname: a session is one per user, so its bytes count per connection
    /// (a `Session` value would keep the id twice).
    sessions: HashMap<Box<str>, Box<str>>,
    /// When each session expires; swept a few per operation, never all at once.
    session_expiries: Expiries<String>,
    rooms: BTreeMap<String, RoomMembers>,
    history: HashMap<String, VecDeque<String>>,
    /// When each history expires: its last message plus its TTL ([`HistoryLimits::ttl`]).
    history_expiries: Expiries<String>,
    /// Memberships (room, socket) of broken connections, until their grace ends.
    departures: Expiries<(String, String)>,
}

/// Who is in one room.
#[derive(Debug, Default)]
struct RoomMembers {
    /// nickname -> how many of its sockets are in the room
    users: BTreeMap<String, usize>,
    /// socket -> the nickname it joined under, which is the one it leaves under
    sockets: HashMap<String, String>,
}

/// Expired entries removed per store operation: enough to keep up with any rate at which
/// they can be created, few enough that no operation waits for a long sweep.
const SWEEP_PER_OPERATION: usize = 64;

impl MemoryState {
    fn sweep(&mut self, now: Instant) {
        for room in self.history_expiries.take_due(now, SWEEP_PER_OPERATION) {
            self.history.remove(&room);
        }
        for id in self.session_expiries.take_due(now, SWEEP_PER_OPERATION) {
            self.sessions.remove(id.as_str());
        }
    }

    /// Puts a socket in a room under `nickname`: `None` when it was there already, else
    /// whether its nickname is new in the room.
    fn join(&mut self, room: &str, nickname: &str, socket: &str) -> Option<bool> {
        let members = self.rooms.entry(room.to_owned()).or_default();
        if members.sockets.contains_key(socket) {
            return None;
        }
        members
            .sockets
            .insert(socket.to_owned(), nickname.to_owned());
        let sockets_of_nickname = members.users.entry(nickname.to_owned()).or_default();
        *sockets_of_nickname += 1;
        Some(*sockets_of_nickname == 1)
    }

    /// Removes a socket from a room; the nickname it joined under when that nickname has now
    /// left the room entirely.
    fn leave(&mut self, room: &str, socket: &str) -> Option<String> {
        let members = self.rooms.get_mut(room)?;
        let nickname = members.sockets.remove(socket)?;
        let remaining = members.users.get_mut(&nickname).map(|count| {
            *count = count.saturating_sub(1);
            *count
        });
        let gone = remaining.unwrap_or(0) == 0;
        if gone {
            members.users.remove(&nickname);
        }
        if members.users.is_empty() {
            self.rooms.remove(room);
        }
        gone.then_some(nickname)
    }
}

/// A room as one store hands it to another (a master upgrade): who is in it, its recent
/// history and the time that has left, and the members whose connection broke with the grace
/// they have left (they leave when it ends, unless they come back).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoomRecord {
    pub room: String,
    /// (socket, the nickname it joined under)
    #[serde(default)]
    pub members: Vec<(String, String)>,
    #[serde(default)]
    pub history: Vec<String>,
    #[serde(default)]
    pub history_ttl_ms: u64,
    /// (socket, milliseconds of grace left)
    #[serde(default)]
    pub departing: Vec<(String, u64)>,
}

/// Milliseconds from `now` to `deadline` (0 once it passed).
fn left_ms(now: Instant, deadline: Instant) -> u64 {
    u64::try_from(deadline.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
}

/// A session and the time it has left, as one store hands it to another (a master upgrade).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionRecord {
    pub id: String,
    pub nickname: String,
    pub ttl_ms: u64,
}

impl MemoryStore {
    /// Every live session with the time it has left, for [`MemoryStore::restore_sessions`] in
    /// another store.
    pub fn session_records(&self) -> Vec<SessionRecord> {
        let now = Instant::now();
        self.with(|state| {
            state
                .sessions
                .iter()
                .filter_map(|(id, nickname)| {
                    let expires = state.session_expiries.deadline_of(&**id)?;
                    let left = expires.checked_duration_since(now)?;
                    Some(SessionRecord {
                        id: id.to_string(),
                        nickname: nickname.to_string(),
                        ttl_ms: left.as_millis().min(u128::from(u64::MAX)) as u64,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
    }

    /// Every room with its members, history and departures, for
    /// [`MemoryStore::restore_rooms`] in another store.
    pub fn room_records(&self) -> Vec<RoomRecord> {
        let now = Instant::now();
        self.with(|state| {
            let mut records: BTreeMap<String, RoomRecord> = BTreeMap::new();
            for (room, members) in &state.rooms {
                let entry = records.entry(room.clone()).or_default();
                entry.members = members
                    .sockets
                    .iter()
                    .map(|(socket, nickname)| (socket.clone(), nickname.clone()))
                    .collect();
            }
            for (room, history) in &state.history {
                let Some(expires) = state.history_expiries.deadline_of(room) else {
                    continue;
                };
                let entry = records.entry(room.clone()).or_default();
                entry.history = history.iter().cloned().collect();
                entry.history_ttl_ms = left_ms(now, expires);
            }
            for ((room, socket), deadline) in state.departures.iter() {
                let entry = records.entry(room.clone()).or_default();
                entry
                    .departing
                    .push((socket.clone(), left_ms(now, deadline)));
            }
            records
                .into_iter()
                .map(|(room, record)| RoomRecord { room, ..record })
                .collect()
        })
        .unwrap_or_default()
    }

    /// Takes the rooms another store had: members join (as [`Store::join_room`] would), a
    /// history this store lacks is kept for the time it had left, departures keep their
    /// grace. Returns how many memberships were taken.
    pub fn restore_rooms(&self, records: Vec<RoomRecord>) -> usize {
        let now = Instant::now();
        self.with(|state| {
            let mut taken = 0;
            for record in records {
                for (socket, nickname) in record.members {
                    if state.join(&record.room, &nickname, &socket).is_some() {
                        taken += 1;
                    }
                }
                if !record.history.is_empty() && !state.history.contains_key(&record.room) {
                    let expires = now + Duration::from_millis(record.history_ttl_ms);
                    state.history_expiries.set(record.room.clone(), expires);
                    state
                        .history
                        .insert(record.room.clone(), record.history.into());
                }
                for (socket, left) in record.departing {
                    let deadline = now + Duration::from_millis(left);
                    state
                        .departures
                        .set((record.room.clone(), socket), deadline);
                }
            }
            taken
        })
        .unwrap_or(0)
    }

    /// Keeps the sessions another store had (within this store's bound; a session this one
    /// has already stays as it is). Returns how many were taken.
    pub fn restore_sessions(&self, records: Vec<SessionRecord>) -> usize {
        let now = Instant::now();
        let max_sessions = self.max_sessions;
        self.with(|state| {
            let mut taken = 0;
            for record in records {
                if state.sessions.len() >= max_sessions {
                    break;
                }
                if state.sessions.contains_key(record.id.as_str()) {
                    continue;
                }
                let expires = now + Duration::from_millis(record.ttl_ms);
                state.session_expiries.set(record.id.clone(), expires);
                state
                    .sessions
                    .insert(record.id.into(), record.nickname.into());
                taken += 1;
            }
            taken
        })
        .unwrap_or(0)
    }

    pub fn new(max_sessions: usize) -> Self {
        MemoryStore {
            state: Mutex::default(),
            max_sessions,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut MemoryState) -> T) -> Result<T, StoreError> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| StoreError::Unavailable("lock poisoned".into()))?;
        state.sweep(Instant::now());
        Ok(f(&mut state))
    }
}

fn ready<'a, T: Send + 'a>(value: T) -> BoxFuture<'a, T> {
    Box::pin(std::future::ready(value))
}

impl Store for MemoryStore {
    fn create_session(
        &self,
        nickname: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Session, StoreError>> {
        let session = Session {
            id: engineio::generate_sid(""),
            nickname: nickname.to_owned(),
        };
        let max_sessions = self.max_sessions;
        ready(
            self.with(|state| {
                if state.sessions.len() >= max_sessions {
                    return Err(StoreError::Full(format!(
                        "{max_sessions} sessions are open; try again when some have expired"
                    )));
                }
                let expires = Instant::now() + ttl;
                state.session_expiries.set(session.id.clone(), expires);
                state
                    .sessions
                    .insert(session.id.as_str().into(), session.nickname.as_str().into());
                Ok(session)
            })
            .and_then(|created| created),
        )
    }

    fn session<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Session>, StoreError>> {
        ready(self.with(|state| {
            if state
                .session_expiries
                .is_due(&id.to_owned(), Instant::now())
            {
                return None;
            }
            state.sessions.get(id).map(|nickname| Session {
                id: id.to_owned(),
                nickname: nickname.to_string(),
            })
        }))
    }

    fn delete_session<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        ready(self.with(|state| {
            state.sessions.remove(id);
            state.session_expiries.cancel(&id.to_owned());
        }))
    }

    fn join_room<'a>(
        &'a self,
        room: &'a str,
        nickname: &'a str,
        socket: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        ready(self.with(|state| {
            // A socket that came back within its grace keeps its place.
            state
                .departures
                .cancel(&(room.to_owned(), socket.to_owned()));
            state.join(room, nickname, socket).unwrap_or(false)
        }))
    }

    fn leave_room<'a>(
        &'a self,
        room: &'a str,
        socket: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        ready(self.with(|state| state.leave(room, socket)))
    }

    fn depart_later<'a>(
        &'a self,
        socket: &'a str,
        rooms: Vec<String>,
        grace: Duration,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, StoreError>> {
        let deadline = Instant::now() + grace;
        ready(self.with(|state| {
            for room in rooms {
                state.departures.set((room, socket.to_owned()), deadline);
            }
            Vec::new()
        }))
    }

    fn expired_departures(&self) -> BoxFuture<'_, Result<Vec<(String, String)>, StoreError>> {
        ready(self.with(|state| {
            let due = state.departures.take_due(Instant::now(), usize::MAX);
            due.into_iter()
                .filter_map(|(room, socket)| {
                    let nickname = state.leave(&room, &socket)?;
                    Some((room, nickname))
                })
                .collect()
        }))
    }

    fn room_counts(&self) -> BoxFuture<'_, Result<Vec<(String, usize)>, StoreError>> {
        ready(self.with(|state| {
            state
                .rooms
                .iter()
                .map(|(room, members)| (room.clone(), members.users.len()))
                .collect()
        }))
    }

    fn room_users<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        ready(self.with(|state| {
            state
                .rooms
                .get(room)
                .map(|members| members.users.keys().cloned().collect())
                .unwrap_or_default()
        }))
    }

    fn push_history<'a>(
        &'a self,
        room: &'a str,
        entry: String,
        limits: HistoryLimits,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        ready(self.with(|state| {
            let history = state.history.entry(room.to_owned()).or_default();
            history.push_back(entry);
            while history.len() > limits.keep {
                history.pop_front();
            }
            state
                .history_expiries
                .set(room.to_owned(), Instant::now() + limits.ttl);
        }))
    }

    fn record_history(&self, room: &str, entry: String, limits: HistoryLimits) {
        let _ = self.push_history(room, entry, limits).now_or_never();
    }

    fn history<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        ready(self.with(|state| {
            // Due but not swept yet (the sweep takes a few at a time): gone all the same.
            if state
                .history_expiries
                .is_due(&room.to_owned(), Instant::now())
            {
                return Vec::new();
            }
            state
                .history
                .get(room)
                .map(|h| h.iter().cloned().collect())
                .unwrap_or_default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_users_not_sockets() {
        let store = MemoryStore::default();
        assert!(store.join_room("r", "ann", "s1").await.unwrap());
        assert!(!store.join_room("r", "ann", "s2").await.unwrap());
        assert!(store.join_room("r", "bob", "s3").await.unwrap());
        assert_eq!(
            store.room_counts().await.unwrap(),
            vec![("r".to_owned(), 2)]
        );
        assert_eq!(store.room_users("r").await.unwrap(), vec!["ann", "bob"]);
        assert_eq!(store.leave_room("r", "s1").await.unwrap(), None);
        assert_eq!(
            store.leave_room("r", "s2").await.unwrap().as_deref(),
            Some("ann")
        );
        assert_eq!(
            store.leave_room("r", "s3").await.unwrap().as_deref(),
            Some("bob")
        );
        assert!(store.room_counts().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_socket_leaves_under_the_nickname_it_joined_with() {
        let store = MemoryStore::default();
        store.join_room("r", "ann", "s1").await.unwrap();
        // Joining again under another name (after `set_name`) changes nothing.
        assert!(!store.join_room("r", "anna", "s1").await.unwrap());
        assert_eq!(store.room_users("r").await.unwrap(), vec!["ann"]);
        let left = store.leave_room("r", "s1").await.unwrap();
        assert_eq!(left.as_deref(), Some("ann"));
        assert!(store.room_counts().await.unwrap().is_empty());
        assert!(store.state.lock().unwrap().rooms.is_empty());
    }

    #[tokio::test]
    async fn a_history_expires_after_its_last_message() {
        let store = MemoryStore::default();
        let brief = HistoryLimits {
            keep: 10,
            ttl: Duration::ZERO,
        };
        store
            .push_history("quiet", "hello".into(), brief)
            .await
            .unwrap();
        assert!(store.history("quiet").await.unwrap().is_empty());
        assert!(store.state.lock().unwrap().history.is_empty());
        let long = HistoryLimits {
            keep: 10,
            ttl: Duration::from_secs(3600),
        };
        store.push_history("kept", "hi".into(), long).await.unwrap();
        assert_eq!(store.history("kept").await.unwrap(), vec!["hi"]);
    }

    #[tokio::test]
    async fn keeps_the_last_messages() {
        let store = MemoryStore::default();
        let limits = HistoryLimits {
            keep: 3,
            ttl: Duration::from_secs(3600),
        };
        for i in 0..5 {
            store
                .push_history("r", i.to_string(), limits)
                .await
                .unwrap();
        }
        assert_eq!(store.history("r").await.unwrap(), vec!["2", "3", "4"]);
    }

    #[tokio::test]
    async fn sessions_move_to_another_store_with_the_time_they_have_left() {
        let old = MemoryStore::new(10);
        let ann = old
            .create_session("ann", Duration::from_secs(60))
            .await
            .unwrap();
        old.create_session("gone", Duration::ZERO).await.unwrap();
        let records = old.session_records();
        assert_eq!(
            records.len(),
            1,
            "an expired session does not move: {records:?}"
        );
        assert!(records[0].ttl_ms > 50_000 && records[0].ttl_ms <= 60_000);

        // The new store keeps its own sessions and its bound.
        let new = MemoryStore::new(2);
        let bob = new
            .create_session("bob", Duration::from_secs(60))
            .await
            .unwrap();
        let mut more = records.clone();
        more.push(SessionRecord {
            id: "beyond-the-bound".into(),
            nickname: "cid".into(),
            ttl_ms: 60_000,
        });
        assert_eq!(new.restore_sessions(more), 1);
        assert_eq!(new.session(&ann.id).await.unwrap(), Some(ann));
        assert_eq!(new.session(&bob.id).await.unwrap(), Some(bob));
        assert_eq!(new.session("beyond-the-bound").await.unwrap(), None);
        // A session already there stays as it is.
        assert_eq!(new.restore_sessions(records), 0);
    }

    #[tokio::test]
    async fn rooms_move_to_another_store_with_their_members_history_and_departures() {
        let old = MemoryStore::default();
        let limits = HistoryLimits {
            keep: 10,
            ttl: Duration::from_secs(60),
        };
        assert!(old.join_room("r", "ann", "s1").await.unwrap());
        assert!(!old.join_room("r", "ann", "s2").await.unwrap());
        assert!(old.join_room("r", "bob", "s3").await.unwrap());
        old.push_history("r", "hello".into(), limits).await.unwrap();
        old.depart_later("s3", vec!["r".into()], Duration::ZERO)
            .await
            .unwrap();
        let records = old.room_records();

        let new = MemoryStore::default();
        assert_eq!(new.restore_rooms(records), 3);
        // The members are there: coming back is no news, and their count is right.
        assert!(!new.join_room("r", "ann", "s1").await.unwrap());
        assert_eq!(new.room_counts().await.unwrap(), vec![("r".to_owned(), 2)]);
        assert_eq!(new.history("r").await.unwrap(), vec!["hello"]);
        // Bob's grace ended: he leaves, from the new store.
        assert_eq!(
            new.expired_departures().await.unwrap(),
            vec![("r".to_owned(), "bob".to_owned())]
        );
        assert_eq!(new.room_users("r").await.unwrap(), vec!["ann"]);
    }

    #[tokio::test]
    async fn sessions_are_bounded_and_expired_ones_make_room() {
        let store = MemoryStore::new(2);
        let brief = store.create_session("ann", Duration::ZERO).await.unwrap();
        let kept = store
            .create_session("bob", Duration::from_secs(60))
            .await
            .unwrap();
        // Ann's expired session was swept by this call: room for Cid.
        store
            .create_session("cid", Duration::from_secs(60))
            .await
            .unwrap();
        let refused = store.create_session("dan", Duration::from_secs(60)).await;
        assert!(matches!(refused, Err(StoreError::Full(_))), "{refused:?}");
        assert_eq!(store.session(&brief.id).await.unwrap(), None);
        store.delete_session(&kept.id).await.unwrap();
        store
            .create_session("dan", Duration::from_secs(60))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn sessions_expire() {
        let store = MemoryStore::default();
        let session = store
            .create_session("ann", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            store.session(&session.id).await.unwrap(),
            Some(session.clone())
        );
        let expired = store.create_session("bob", Duration::ZERO).await.unwrap();
        assert_eq!(store.session(&expired.id).await.unwrap(), None);
        store.delete_session(&session.id).await.unwrap();
        assert_eq!(store.session(&session.id).await.unwrap(), None);
    }
}
