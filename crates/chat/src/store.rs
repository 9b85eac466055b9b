//! The state workers share: sessions, room membership and presence, recent history. This is the
//! interface; [`MemoryStore`] keeps it in this process, and the cluster supplies others (through
//! the master, or Redis).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

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
    /// Adds a socket of `nickname` to a room; returns whether the nickname is new in the room.
    fn join_room<'a>(
        &'a self,
        room: &'a str,
        nickname: &'a str,
        socket: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Removes a socket from a room; returns whether its nickname has left the room entirely.
    fn leave_room<'a>(
        &'a self,
        room: &'a str,
        nickname: &'a str,
        socket: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    /// Every room with users, and how many users.
    fn room_counts(&self) -> BoxFuture<'_, Result<Vec<(String, usize)>, StoreError>>;
    /// The nicknames in a room, sorted.
    fn room_users<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;
    /// Appends a message (a JSON string) to a room's history, keeping the last `keep`.
    fn push_history<'a>(
        &'a self,
        room: &'a str,
        entry: String,
        keep: usize,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Like [`Store::push_history`], without waiting: the entry is queued before this
    /// returns, so entries recorded one after the other stay in that order, and a chat line
    /// is delivered without waiting for its history write. Failures are the store's to log.
    fn record_history(&self, room: &str, entry: String, keep: usize);
    /// A room's recent history, oldest first.
    fn history<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>>;
}

/// The store of a single process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    state: Mutex<MemoryState>,
}

#[derive(Debug, Default)]
struct MemoryState {
    sessions: HashMap<String, (Session, Instant)>,
    /// room -> nickname -> sockets of that nickname in the room
    rooms: BTreeMap<String, BTreeMap<String, Vec<String>>>,
    history: HashMap<String, VecDeque<String>>,
}

impl MemoryStore {
    fn with<T>(&self, f: impl FnOnce(&mut MemoryState) -> T) -> Result<T, StoreError> {
        let mut state = self
            .state
            .lock()
            .map_err(|_| StoreError::Unavailable("lock poisoned".into()))?;
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
        ready(self.with(|state| {
            let now = Instant::now();
            state.sessions.retain(|_, (_, expires)| *expires > now);
            state
                .sessions
                .insert(session.id.clone(), (session.clone(), now + ttl));
            session
        }))
    }

    fn session<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Session>, StoreError>> {
        ready(self.with(|state| {
            state
                .sessions
                .get(id)
                .filter(|(_, expires)| *expires > Instant::now())
                .map(|(session, _)| session.clone())
        }))
    }

    fn delete_session<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        ready(self.with(|state| {
            state.sessions.remove(id);
        }))
    }

    fn join_room<'a>(
        &'a self,
        room: &'a str,
        nickname: &'a str,
        socket: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        ready(self.with(|state| {
            let users = state.rooms.entry(room.to_owned()).or_default();
            let sockets = users.entry(nickname.to_owned()).or_default();
            let new_user = sockets.is_empty();
            if !sockets.iter().any(|s| s == socket) {
                sockets.push(socket.to_owned());
            }
            new_user
        }))
    }

    fn leave_room<'a>(
        &'a self,
        room: &'a str,
        nickname: &'a str,
        socket: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        ready(self.with(|state| {
            let Some(users) = state.rooms.get_mut(room) else {
                return false;
            };
            let Some(sockets) = users.get_mut(nickname) else {
                return false;
            };
            sockets.retain(|s| s != socket);
            let gone = sockets.is_empty();
            if gone {
                users.remove(nickname);
            }
            if users.is_empty() {
                state.rooms.remove(room);
            }
            gone
        }))
    }

    fn room_counts(&self) -> BoxFuture<'_, Result<Vec<(String, usize)>, StoreError>> {
        ready(self.with(|state| {
            state
                .rooms
                .iter()
                .map(|(room, users)| (room.clone(), users.len()))
                .collect()
        }))
    }

    fn room_users<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        ready(self.with(|state| {
            state
                .rooms
                .get(room)
                .map(|users| users.keys().cloned().collect())
                .unwrap_or_default()
        }))
    }

    fn push_history<'a>(
        &'a self,
        room: &'a str,
        entry: String,
        keep: usize,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        ready(self.with(|state| {
            let history = state.history.entry(room.to_owned()).or_default();
            history.push_back(entry);
            while history.len() > keep {
                history.pop_front();
            }
        }))
    }

    fn record_history(&self, room: &str, entry: String, keep: usize) {
        let _ = self.push_history(room, entry, keep).now_or_never();
    }

    fn history<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        ready(self.with(|state| {
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
        assert!(!store.leave_room("r", "ann", "s1").await.unwrap());
        assert!(store.leave_room("r", "ann", "s2").await.unwrap());
        assert!(store.leave_room("r", "bob", "s3").await.unwrap());
        assert!(store.room_counts().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn keeps_the_last_messages() {
        let store = MemoryStore::default();
        for i in 0..5 {
            store.push_history("r", i.to_string(), 3).await.unwrap();
        }
        assert_eq!(store.history("r").await.unwrap(), vec!["2", "3", "4"]);
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
