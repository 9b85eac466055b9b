//! [`chat::Store`] in Redis: sessions as keys with a TTL, room members as hashes changed by Lua
//! scripts, history as capped lists.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use chat::{Departure, HistoryLimits, Session, Store, StoreError};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use redis::{AsyncCommands, Script};
use socketio::SocketIo;

use super::{RedisError, RedisLink};
use crate::millis;

/// Adds a socket to a room unless it is there already; answers 1 when its nickname is new in
/// the room. Also records the socket as this worker's and renews the worker's liveness key, so
/// that if the worker dies, another one removes its members ([`REAP`]).
/// A socket that joins again within the grace of a broken connection keeps its place (see
/// [`DEPART`]).
/// KEYS: users hash, sockets hash, rooms set, this worker's members set, workers set, this
/// worker's liveness key, departures. ARGV: room, nickname, socket, worker uid, liveness TTL
/// in ms.
const JOIN: &str = r"
redis.call('ZREM', KEYS[7], ARGV[3] .. ' ' .. ARGV[1])
redis.call('SADD', KEYS[4], ARGV[3] .. ' ' .. ARGV[1])
redis.call('SADD', KEYS[5], ARGV[4])
redis.call('SET', KEYS[6], '1', 'PX', ARGV[5])
if redis.call('HSETNX', KEYS[2], ARGV[3], ARGV[2]) == 0 then return 0 end
redis.call('SADD', KEYS[3], ARGV[1])
if redis.call('HINCRBY', KEYS[1], ARGV[2], 1) == 1 then return 1 end
return 0
";

/// Removes a socket from a room, under the nickname recorded when it joined (whatever the
/// socket is called now). Answers that nickname when it was its last socket in the room, else
/// ''. KEYS: the first four of [`JOIN`]. ARGV: room, socket.
const LEAVE: &str = r"
redis.call('SREM', KEYS[4], ARGV[2] .. ' ' .. ARGV[1])
local nickname = redis.call('HGET', KEYS[2], ARGV[2])
if not nickname then return '' end
redis.call('HDEL', KEYS[2], ARGV[2])
local gone = ''
if redis.call('HINCRBY', KEYS[1], nickname, -1) <= 0 then
  redis.call('HDEL', KEYS[1], nickname)
  gone = nickname
end
if redis.call('HLEN', KEYS[1]) == 0 then redis.call('SREM', KEYS[3], ARGV[1]) end
return gone
";

/// A Lua function for the scripts below: removes membership `entry` (`socket room`), under
/// the prefix of the room keys and with the rooms set, adding room and nickname to `gone` when
/// the nickname left the room entirely.
const LEAVE_ENTRY: &str = r"
local function leave_entry(prefix, rooms, entry, gone)
  local space = string.find(entry, ' ', 1, true)
  if not space then return end
  local socket = string.sub(entry, 1, space - 1)
  local room = string.sub(entry, space + 1)
  local users = prefix .. ':room:' .. room .. ':users'
  local sockets = prefix .. ':room:' .. room .. ':sockets'
  local nickname = redis.call('HGET', sockets, socket)
  if not nickname then return end
  redis.call('HDEL', sockets, socket)
  if redis.call('HINCRBY', users, nickname, -1) <= 0 then
    redis.call('HDEL', users, nickname)
    table.insert(gone, room)
    table.insert(gone, nickname)
  end
  if redis.call('HLEN', users) == 0 then redis.call('SREM', rooms, room) end
end
";

/// Removes every member of a worker whose liveness key has expired; answers the users who left
/// a room entirely, as a flat list room, nickname, room, nickname... With a deadline, the
/// members depart then instead ([`DEPART`]), for their users to come back on another worker.
/// Atomic, so of several workers reaping the same dead one, one does the work and announces
/// the departures.
/// KEYS: the dead worker's members set, workers set, rooms set, its liveness key, departures.
/// ARGV: prefix of the room keys (in the same slot as KEYS on a cluster), the dead worker's
/// uid, the deadline in ms since the epoch (0: now).
const REAP: &str = r"
if redis.call('EXISTS', KEYS[4]) == 1 then return {} end
local gone = {}
for _, entry in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if ARGV[3] ~= '0' then
    redis.call('ZADD', KEYS[5], ARGV[3], entry)
  else
    leave_entry(ARGV[1], KEYS[3], entry, gone)
  end
end
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[2])
return gone
";

/// The memberships of a broken connection depart at a deadline, unless the socket joins
/// again before ([`JOIN`]); they are no longer this worker's.
/// KEYS: this worker's members set, departures. ARGV: deadline in ms since the epoch, socket,
/// rooms...
const DEPART: &str = r"
for i = 3, #ARGV do
  local entry = ARGV[2] .. ' ' .. ARGV[i]
  redis.call('SREM', KEYS[1], entry)
  redis.call('ZADD', KEYS[2], ARGV[1], entry)
end
return 1
";

/// Removes the memberships whose departure is due, at most ARGV[3]; answers room, nickname
/// pairs as [`REAP`]. Atomic: each departure is announced by one worker.
/// KEYS: departures, rooms set. ARGV: prefix of the room keys, now in ms since the epoch, the
/// most to take.
const SWEEP: &str = r"
local gone = {}
for _, entry in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[2], 'LIMIT', 0, ARGV[3])) do
  redis.call('ZREM', KEYS[1], entry)
  leave_entry(ARGV[1], KEYS[2], entry, gone)
end
return gone
";

/// Departures taken per sweep.
const SWEEP_BATCH: usize = 1000;

/// A socket this worker put in a room: (room, socket id), with the nickname it joined under.
type Membership = (String, String);

/// The chat store of a worker, in Redis. Every worker of the app (on any machine) sees the same
/// sessions, rooms and history.
pub struct RedisStore {
    link: Arc<RedisLink>,
    join: Script,
    leave: Script,
    reap: Script,
    depart: Script,
    sweep: Script,
    /// How long a broken connection's memberships (or a dead worker's) are kept for their
    /// users to come back (connection-state recovery); zero: they leave at once.
    presence_grace: Duration,
    /// The members this worker added and has not removed, with the nickname each joined under:
    /// a restarted Redis has lost them, and this worker puts them back.
    members: Mutex<HashMap<Membership, String>>,
    /// The [`RedisLink`] epoch whose Redis has this worker's members.
    asserted_epoch: AtomicU64,
    /// History entries on their way to Redis, in order (started with the first one).
    history_queue: OnceLock<tokio::sync::mpsc::Sender<HistoryEntry>>,
}

/// A store operation that Redis did not carry out: the store is unavailable.
impl From<RedisError> for StoreError {
    fn from(error: RedisError) -> Self {
        StoreError::Unavailable(error.to_string())
    }
}

/// Appends `entries` to a room's history within `limits` (its last `keep`, for `ttl` from
/// now), in one round trip.
async fn append_history(
    link: &RedisLink,
    room: &str,
    entries: Vec<String>,
    limits: HistoryLimits,
) -> Result<(), StoreError> {
    let key = link.key(&["history", room]);
    let mut pipe = redis::pipe();
    let ttl_ms = millis(limits.ttl);
    if limits.keep == 0 || ttl_ms == 0 {
        pipe.del(&key).ignore();
    } else {
        let first = -(limits.keep.min(isize::MAX as usize) as isize);
        pipe.atomic()
            .rpush(&key, entries)
            .ignore()
            .ltrim(&key, first, -1)
            .ignore()
            .pexpire(&key, ttl_ms.min(i64::MAX as u64) as i64)
            .ignore();
    }
    link.run(|mut c| async move { pipe.query_async::<()>(&mut c).await })
        .await
        .map_err(StoreError::from)
}

/// Entries recorded but not yet written, per worker; beyond this (Redis slow or down) new ones
/// are dropped, and the log says so.
const HISTORY_QUEUE: usize = 10_000;

/// One `record_history`: room, entry, what to keep.
type HistoryEntry = (String, String, HistoryLimits);

/// Writes recorded history entries in the order they were recorded, each batch of queued
/// entries in one round trip per room (a room's history is one key, so one cluster slot).
async fn write_history(link: Arc<RedisLink>, mut queue: tokio::sync::mpsc::Receiver<HistoryEntry>) {
    let mut batch = Vec::new();
    while queue.recv_many(&mut batch, 256).await > 0 {
        let mut rooms: Vec<(String, Vec<String>, HistoryLimits)> = Vec::new();
        for (room, entry, limits) in batch.drain(..) {
            match rooms.iter_mut().find(|(r, _, _)| *r == room) {
                Some((_, entries, kept)) => {
                    entries.push(entry);
                    *kept = limits;
                }
                None => rooms.push((room, vec![entry], limits)),
            }
        }
        for (room, entries, limits) in rooms {
            let count = entries.len() as u64;
            if let Err(error) = append_history(&link, &room, entries, limits).await {
                link.drops.count(
                    "history_write_failed",
                    count,
                    format_args!("history entries not recorded in Redis: {error}"),
                );
            }
        }
    }
}

impl RedisStore {
    pub fn new(link: Arc<RedisLink>) -> Self {
        RedisStore {
            link,
            join: Script::new(JOIN),
            leave: Script::new(LEAVE),
            reap: Script::new(&format!("{LEAVE_ENTRY}{REAP}")),
            depart: Script::new(DEPART),
            sweep: Script::new(&format!("{LEAVE_ENTRY}{SWEEP}")),
            presence_grace: Duration::ZERO,
            members: Mutex::new(HashMap::new()),
            asserted_epoch: AtomicU64::new(0),
            history_queue: OnceLock::new(),
        }
    }

    /// Keeps a broken connection's memberships, and a dead worker's, for `grace` (see
    /// [`Store::depart_later`]).
    pub fn with_presence_grace(mut self, grace: Duration) -> Self {
        self.presence_grace = grace;
        self
    }

    /// The KEYS of [`JOIN`] and [`LEAVE`].
    fn member_keys(&self, room: &str) -> [String; 7] {
        let uid = self.link.uid.as_str();
        [
            self.link.member_key(&["room", room, "users"]),
            self.link.member_key(&["room", room, "sockets"]),
            self.link.member_key(&["rooms"]),
            self.link.member_key(&["worker", uid, "members"]),
            self.link.member_key(&["workers"]),
            self.link.member_key(&["worker", uid, "alive"]),
            self.link.member_key(&["departures"]),
        ]
    }

    fn liveness_ttl_ms(&self) -> u64 {
        self.link.config.worker_ttl.as_millis().max(1) as u64
    }

    /// Keeps this worker alive in Redis and removes the members of workers that died without
    /// leaving their rooms (DESIGN §6: no ghost members), telling the users who remain in those
    /// rooms through `io`, as if the dead worker's sockets had disconnected. Runs until the
    /// runtime stops.
    pub fn start_heartbeat(self: &Arc<Self>, io: SocketIo) -> tokio::task::JoinHandle<()> {
        let store = self.clone();
        tokio::spawn(async move {
            let period = (store.link.config.worker_ttl / 3).max(Duration::from_millis(1));
            let mut beat = tokio::time::interval(period);
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                beat.tick().await;
                store.heartbeat(&io).await;
            }
        })
    }

    async fn heartbeat(&self, io: &SocketIo) {
        let uid = self.link.uid.clone();
        let alive = self.link.member_key(&["worker", &uid, "alive"]);
        let workers = self.link.member_key(&["workers"]);
        let ttl = self.liveness_ttl_ms();
        let renewed = self
            .link
            .run(|mut c| async move {
                // SET .. GET (Redis 6.2) tells whether the key had lapsed in the meantime.
                redis::pipe()
                    .cmd("SET")
                    .arg(alive)
                    .arg("1")
                    .arg("PX")
                    .arg(ttl)
                    .arg("GET")
                    .sadd(&workers, &uid)
                    .ignore()
                    .smembers(&workers)
                    .query_async::<(Option<String>, Vec<String>)>(&mut c)
                    .await
            })
            .await;
        let Ok((previous, others)) = renewed else {
            return;
        };
        if previous.is_none() {
            // Redis restarted, or this worker stalled so long that another removed its
            // members: whatever the epoch says, put them back.
            self.asserted_epoch.store(u64::MAX, Ordering::Release);
        }
        self.reassert_members().await;
        for other in others.iter().filter(|other| **other != self.link.uid) {
            self.reap(io, other).await;
        }
    }

    /// Removes the members of worker `uid` if it is dead, and announces who left.
    async fn reap(&self, io: &SocketIo, uid: &str) {
        let mut invocation = self.reap.prepare_invoke();
        invocation
            .key(self.link.member_key(&["worker", uid, "members"]))
            .key(self.link.member_key(&["workers"]))
            .key(self.link.member_key(&["rooms"]))
            .key(self.link.member_key(&["worker", uid, "alive"]))
            .key(self.link.member_key(&["departures"]))
            .arg(&self.link.member_prefix)
            .arg(uid)
            .arg(deadline_ms(self.presence_grace));
        let Ok(gone) = self
            .link
            .run(|mut c| async move { invocation.invoke_async::<Vec<String>>(&mut c).await })
            .await
        else {
            return;
        };
        if gone.is_empty() {
            return;
        }
        tracing::info!(
            worker = uid,
            users = gone.len() / 2,
            "removed the room members of a worker that stopped answering"
        );
        // The others in those rooms hear who left, as if each had disconnected normally.
        for pair in gone.chunks_exact(2) {
            let _ = Departure {
                room: &pair[0],
                nickname: &pair[1],
            }
            .announce(io);
        }
    }

    /// After Redis came back (or on the first command), puts this worker's members back in
    /// their rooms. Joins are idempotent, so members that Redis kept are left as they are.
    async fn reassert_members(&self) {
        let epoch = self.link.epoch.load(Ordering::Acquire);
        if self.asserted_epoch.load(Ordering::Acquire) == epoch {
            return;
        }
        let members: Vec<(Membership, String)> = self
            .members
            .lock()
            .map(|members| {
                members
                    .iter()
                    .map(|(member, nickname)| (member.clone(), nickname.clone()))
                    .collect()
            })
            .unwrap_or_default();
        if !members.is_empty() {
            let mut pipe = redis::pipe();
            for ((room, socket), nickname) in &members {
                // EVAL, not EVALSHA: a restarted Redis has an empty script cache.
                pipe.cmd("EVAL")
                    .arg(JOIN)
                    .arg(7)
                    .arg(&self.member_keys(room))
                    .arg(room)
                    .arg(nickname)
                    .arg(socket)
                    .arg(&self.link.uid)
                    .arg(self.liveness_ttl_ms())
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

    /// Runs [`JOIN`].
    async fn add_member(
        &self,
        room: &str,
        nickname: &str,
        socket: &str,
    ) -> Result<bool, StoreError> {
        let mut invocation = self.join.prepare_invoke();
        for key in self.member_keys(room) {
            invocation.key(key);
        }
        invocation
            .arg(room)
            .arg(nickname)
            .arg(socket)
            .arg(&self.link.uid)
            .arg(self.liveness_ttl_ms());
        let new_user: i64 = self
            .link
            .run(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        self.reassert_members().await;
        Ok(new_user == 1)
    }

    /// Runs [`LEAVE`]; answers the nickname that left the room entirely, if one did.
    async fn remove_member(&self, room: &str, socket: &str) -> Result<Option<String>, StoreError> {
        let mut invocation = self.leave.prepare_invoke();
        for key in &self.member_keys(room)[..4] {
            invocation.key(key);
        }
        invocation.arg(room).arg(socket);
        let gone: String = self
            .link
            .run(|mut c| async move { invocation.invoke_async(&mut c).await })
            .await?;
        self.reassert_members().await;
        Ok((!gone.is_empty()).then_some(gone))
    }
}

/// `grace` from now in milliseconds since the epoch, for deadlines every host reads alike; 0
/// for no grace.
fn deadline_ms(grace: Duration) -> u64 {
    if grace.is_zero() {
        return 0;
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    millis(now + grace)
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
            let millis = millis(ttl);
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
                .map_err(StoreError::from)
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
            // Recorded first: should Redis fail now, the member is put back when it returns. A
            // socket in the room already keeps the nickname it joined under, as in Redis.
            if let Ok(mut members) = self.members.lock() {
                members
                    .entry((room.to_owned(), socket.to_owned()))
                    .or_insert_with(|| nickname.to_owned());
            }
            self.add_member(room, nickname, socket).await
        }
        .boxed()
    }

    fn leave_room<'a>(
        &'a self,
        room: &'a str,
        socket: &'a str,
    ) -> BoxFuture<'a, Result<Option<String>, StoreError>> {
        async move {
            if let Ok(mut members) = self.members.lock() {
                members.remove(&(room.to_owned(), socket.to_owned()));
            }
            self.remove_member(room, socket).await
        }
        .boxed()
    }

    fn depart_later<'a>(
        &'a self,
        socket: &'a str,
        rooms: Vec<String>,
        grace: Duration,
    ) -> BoxFuture<'a, Result<Vec<(String, String)>, StoreError>> {
        async move {
            let deadline = deadline_ms(grace);
            if deadline == 0 || rooms.is_empty() {
                let mut left = Vec::new();
                for room in rooms {
                    if let Some(nickname) = self.leave_room(&room, socket).await? {
                        left.push((room, nickname));
                    }
                }
                return Ok(left);
            }
            if let Ok(mut members) = self.members.lock() {
                for room in &rooms {
                    members.remove(&(room.clone(), socket.to_owned()));
                }
            }
            let mut invocation = self.depart.prepare_invoke();
            invocation
                .key(self.link.member_key(&["worker", &self.link.uid, "members"]))
                .key(self.link.member_key(&["departures"]))
                .arg(deadline)
                .arg(socket)
                .arg(&rooms);
            self.link
                .run(|mut c| async move { invocation.invoke_async::<()>(&mut c).await })
                .await?;
            Ok(Vec::new())
        }
        .boxed()
    }

    fn expired_departures(&self) -> BoxFuture<'_, Result<Vec<(String, String)>, StoreError>> {
        async move {
            let mut invocation = self.sweep.prepare_invoke();
            invocation
                .key(self.link.member_key(&["departures"]))
                .key(self.link.member_key(&["rooms"]))
                .arg(&self.link.member_prefix)
                .arg(deadline_ms(Duration::from_millis(1)))
                .arg(SWEEP_BATCH);
            let gone: Vec<String> = self
                .link
                .run(|mut c| async move { invocation.invoke_async(&mut c).await })
                .await?;
            Ok(gone
                .chunks_exact(2)
                .map(|pair| (pair[0].clone(), pair[1].clone()))
                .collect())
        }
        .boxed()
    }

    fn room_counts(&self) -> BoxFuture<'_, Result<Vec<(String, usize)>, StoreError>> {
        async move {
            self.reassert_members().await;
            let rooms_key = self.link.member_key(&["rooms"]);
            let mut rooms: Vec<String> = self
                .link
                .run(|mut c| async move { c.smembers(rooms_key).await })
                .await?;
            rooms.sort();
            let mut pipe = redis::pipe();
            for room in &rooms {
                pipe.hlen(self.link.member_key(&["room", room, "users"]));
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
            let key = self.link.member_key(&["room", room, "users"]);
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
        limits: HistoryLimits,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        append_history(&self.link, room, vec![entry], limits).boxed()
    }

    fn record_history(&self, room: &str, entry: String, limits: HistoryLimits) {
        let queue = self.history_queue.get_or_init(|| {
            let (sender, receiver) = tokio::sync::mpsc::channel(HISTORY_QUEUE);
            tokio::spawn(write_history(self.link.clone(), receiver));
            sender
        });
        if queue.try_send((room.to_owned(), entry, limits)).is_err() {
            self.link.drops.count(
                "history_queue_full",
                1,
                format_args!(
                    "history writes to Redis are {HISTORY_QUEUE} behind (Redis slow or down): \
                     new history entries are dropped until it catches up; messages are still \
                     delivered"
                ),
            );
        }
    }

    fn history<'a>(&'a self, room: &'a str) -> BoxFuture<'a, Result<Vec<String>, StoreError>> {
        async move {
            let key = self.link.key(&["history", room]);
            self.link
                .run(|mut c| async move { c.lrange(key, 0, -1).await })
                .await
                .map_err(StoreError::from)
        }
        .boxed()
    }
}
