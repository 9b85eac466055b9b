//! [`chat::Store`] in Redis: sessions as keys with a TTL, room members as hashes changed by Lua
//! scripts, history as capped lists.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat::{Session, Store, StoreError};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use redis::{AsyncCommands, Script};

use super::RedisLink;

/// Adds a socket to a room unless it is there already; answers 1 when its nickname is new in
/// the room. KEYS: users hash, sockets hash, rooms set. ARGV: room, nickname, socket.
const JOIN: &str = r"
if redis.call('HSETNX', KEYS[2], ARGV[3], ARGV[2]) == 0 then return 0 end
redis.call('SADD', KEYS[3], ARGV[1])
if redis.call('HINCRBY', KEYS[1], ARGV[2], 1) == 1 then return 1 end
return 0
";

/// Removes a socket from a room; answers 1 when that was its nickname's last socket there.
/// Same KEYS and ARGV as [`JOIN`]; the nickname recorded at join time is the one counted down.
const LEAVE: &str = r"
local nickname = redis.call('HGET', KEYS[2], ARGV[3])
if not nickname then return 0 end
redis.call('HDEL', KEYS[2], ARGV[3])
local gone = 0
if redis.call('HINCRBY', KEYS[1], nickname, -1) <= 0 then
  redis.call('HDEL', KEYS[1], nickname)
  gone = 1
end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[3], ARGV[1]) end
return gone
";

/// A member this worker put in a room: (room, nickname, socket id).
type Membership = (String, String, String);

/// The chat store of a worker, in Redis. Every worker of the app (on any machine) sees the same
/// sessions, rooms and history.
pub struct RedisStore {
    link: Arc<RedisLink>,
    join: Script,
    leave: Script,
    /// The members this worker added and has not removed: a restarted Redis has lost them, and
    /// this worker puts them back.
    members: Mutex<HashSet<Membership>>,
    /// The [`RedisLink`] epoch whose Redis has this worker's members.
    asserted_epoch: AtomicU64,
}

impl RedisStore {
    pub fn new(link: Arc<RedisLink>) -> Self {
        RedisStore {
            link,
            join: Script::new(JOIN),
            leave: Script::new(LEAVE),
            members: Mutex::new(HashSet::new()),
            asserted_epoch: AtomicU64::new(0),
        }
    }

    fn room_keys(&self, room: &str) -> [String; 3] {
        [
            self.link.key(&["room", room, "users"]),
            self.link.key(&["room", room, "sockets"]),
            self.link.key(&["rooms"]),
        ]
    }

    /// After Redis came back (or on the first command), puts this worker's members back in
    /// their rooms. Joins are idempotent, so members that Redis kept are left as they are.
    async fn reassert_members(&self) {
        let epoch = self.link.epoch.load(Ordering::Acquire);
        if self.asserted_epoch.load(Ordering::Acquire) == epoch {
            return;
        }
        let members: Vec<Membership> = self
            .members
            .lock()
            .map(|members| members.iter().cloned().collect())
            .unwrap_or_default();
        if !members.is_empty() {
            let mut pipe = redis::pipe();
            for (room, nickname, socket) in &members {
                // EVAL, not EVALSHA: a restarted Redis has an empty script cache.
                pipe.cmd("EVAL")
                    .arg(JOIN)
                    .arg(3)
                    .arg(&self.room_keys(room))
                    .arg(room)
                    .arg(nickname)
                    .arg(socket)
                    .ignore();
            }
            let restored = self
                .link
                .run(|mut c| async move { pipe.query_async::<()>(&mut c).await })
                .await;
            if restored.is_err() {
                return;
            }
            tracing::info!(members = members.len(), "re-asserted room members in Redis");
        }
        self.asserted_epoch.store(epoch, Ordering::Release);
    }

    async fn change_membership(
        &self,
        script: &Script,
        room: &str,
        nickname: &str,
        socket: &str,
    ) -> Result<bool, StoreError> {
        let [users, sockets, rooms] = self.room_keys(room);
        let mut invocation = script.key(users);
        invocation
            .key(sockets)
            .key(rooms)
            .arg(room)
            .arg(nickname)
            .arg(socket);
        let changed: i64 = self
            .link
            .run(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        self.reassert_members().await;
        Ok(changed == 1)
    }
}

impl Store for RedisStore {
    fn create_session(
        &self,
        nickname: &str,
        ttl: Duration,
    ) -> BoxFuture<'_, Result<Session, StoreError>> {
        let session = Session {
            id: engineio::generate_sid(""),
            nickname: nickname.to_owned(),
        };
        async move {
            let millis = ttl.as_millis().min(u64::MAX as u128) as u64;
            // A session that expires at once is not stored (PX 0 is an error in Redis).
            if millis > 0 {
                let key = self.link.key(&["session", &session.id]);
                let nickname = session.nickname.clone();
                self.link
                    .run(|mut c| async move {
                        redis::cmd("SET")
                            .arg(key)
                            .arg(nickname)
                            .arg("PX")
                            .arg(millis)
                            .query_async::<()>(&mut c)
                            .await
                    })
                    .await?;
            }
            Ok(session)
        }
        .boxed()
    }

    fn session<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Session>, StoreError>> {
        async move {
            let key = self.link.key(&["session", id]);
            let nickname: Option<String> = self
                .link
                .run(|mut c| async move { c.get(key).await })
                .await?;
            Ok(nickname.map(|nickname| Session {
                id: id.to_owned(),
                nickname,
            }))
        }
        .boxed()
    }

    fn delete_session<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let key = self.link.key(&["session", id]);
            self.link
                .run(|mut c| async move { c.del::<_, ()>(key).await })
                .await
        }
        .boxed()
    }

    fn join_room<'a>(
        &'a self,
        room: &'a str,
        nickname: &'a str,
        socket: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            // Recorded first: should Redis fail now, the member is put back when it returns.
            if let Ok(mut members) = self.members.lock() {
                members.insert((room.to_owned(), nickname.to_owned(), socket.to_owned()));
            }
            self.change_membership(&self.join, room, nickname, socket)
                .await
        }
        .boxed()
    }

    fn leave_room<'a>(
        &'a self,
        room: &'a str,
        nickname: &'a str,
        socket: &'a str,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        async move {
            if let Ok(mut members) = self.members.lock() {
                members.remove(&(room.to_owned(), nickname.to_owned(), socket.to_owned()));
            }
            self.change_membership(&self.leave, room, nickname, socket)
                .await
        }
        .boxed()
    }

    fn room_counts(&self) -> BoxFuture<'_, Result<Vec<(String, usize)>, StoreError>> {
        async move {
            self.reassert_members().await;
            let rooms_key = self.link.key(&["rooms"]);
            let mut rooms: Vec<String> = self
                .link
                .run(|mut c| async move { c.smembers(rooms_key).await })
                .await?;
            rooms.sort();
            let mut pipe = redis::pipe();
            for room in &rooms {
                pipe.hlen(self.link.key(&["room", room, "users"]));
            }
            let counts: Vec<usize> = self
                .link
                .run(|mut c| async move { pipe.query_async(&mut c).await })
                .await?;
            Ok(rooms
                .into_iter()
                .zip(counts)
                .filter(|(_, count)| *count > 0)
                .collect())
        }
        .boxed()
    }

    fn room_users<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        async move {
            self.reassert_members().await;
            let key = self.link.key(&["room", room, "users"]);
            let mut users: Vec<String> = self
                .link
                .run(|mut c| async move { c.hkeys(key).await })
                .await?;
            users.sort();
            Ok(users)
        }
        .boxed()
    }

    fn push_history<'a>(
        &'a self,
        room: &'a str,
        entry: String,
        keep: usize,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        async move {
            let key = self.link.key(&["history", room]);
            let mut pipe = redis::pipe();
            if keep == 0 {
                pipe.del(&key).ignore();
            } else {
                let first = -(keep.min(isize::MAX as usize) as isize);
                pipe.atomic()
                    .rpush(&key, entry)
                    .ignore()
                    .ltrim(&key, first, -1)
                    .ignore();
            }
            self.link
                .run(|mut c| async move { pipe.query_async::<()>(&mut c).await })
                .await
        }
        .boxed()
    }

    fn history<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        async move {
            let key = self.link.key(&["history", room]);
            self.link
                .run(|mut c| async move { c.lrange(key, 0, -1).await })
                .await
        }
        .boxed()
    }
}
