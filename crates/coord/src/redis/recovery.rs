//! Connection-state recovery in Redis, for several machines: each namespace's events are
//! numbered and logged by a Lua script, which also publishes them, numbered, on the
//! namespace's feed channel that every worker of every host subscribes to; kept sockets are
//! hashes every worker can claim. A client whose worker or host died is recovered by whichever
//! worker it reaches next.
//!
//! Keys, `R` being `{P:rec:NS}` (one hash tag per namespace, so a script's keys and its feed
//! channel share a slot on a cluster):
//! - `R:seq` (the last number), `R:epoch` (set by the first worker, gone with a flushed Redis,
//!   so offsets of an earlier life are refused);
//! - `R:log`, a stream of the events kept for replay, with ids `SEQ-0`, capped at
//!   `max_packets` (`MAXLEN`); `R:floors`, for each room (a socket's own included, `*` for
//!   everyone) the number of the last evicted event for it;
//! - `R:s:HASH`, a kept socket (sid, rooms, binding, owner, attached or not) by the SHA-256 of
//!   its private id, expiring `window` after its connection broke; a connected one is renewed
//!   by its worker, so a worker that dies leaves its sockets recoverable for about a window;
//! - `R:w:UID`, the sockets worker UID serves;
//! - `R:feed`, the channel of numbered events.

use std::sync::Arc;
use std::time::Duration;

use engineio::Frame;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use socketio::{
    BroadcastOptions, Digest, EmitError, Namespace, Own, RecoveryConfig, RestoreRequest, Restored,
    Sequenced, SessionRecord, SessionStore, StoreFactory,
};

use super::bus::RedisBus;
use crate::millis;
use crate::wire::WireBroadcast;

/// Numbers an event, logs it unless it is volatile, and publishes it numbered on the feed. The
/// event the cap evicts raises the floors of the rooms it was for (`*`: everyone), at most
/// ARGV[7] of them; beyond, they fold into `*`.
/// KEYS: seq, epoch, log, floors. ARGV: a new epoch (kept if none is set), the event's JSON,
/// '1' to log it, the log's cap, the publish command, the feed channel, the most floors kept,
/// the event's rooms (a JSON array, kept beside it for the eviction to read cheaply).
const APPEND: &str = r#"
local seq = redis.call('INCR', KEYS[1])
local epoch = redis.call('GET', KEYS[2])
if not epoch then
  epoch = ARGV[1]
  redis.call('SET', KEYS[2], epoch)
end
if ARGV[3] == '1' then
  if redis.call('XLEN', KEYS[3]) >= tonumber(ARGV[4]) then
    local oldest = redis.call('XRANGE', KEYS[3], '-', '+', 'COUNT', 1)[1]
    if oldest then
      local evicted = string.match(oldest[1], '^(%d+)')
      local ok, rooms = pcall(cjson.decode, oldest[2][4] or '[]')
      if not ok or type(rooms) ~= 'table' then rooms = {} end
      if #rooms == 0 then
        redis.call('HSET', KEYS[4], '*', evicted)
      elseif redis.call('HLEN', KEYS[4]) + #rooms > tonumber(ARGV[7]) then
        redis.call('DEL', KEYS[4])
        redis.call('HSET', KEYS[4], '*', evicted)
      else
        for _, room in ipairs(rooms) do redis.call('HSET', KEYS[4], room, evicted) end
      end
    end
  end
  redis.call('XADD', KEYS[3], 'MAXLEN', ARGV[4], seq .. '-0', 'e', ARGV[2], 'r', ARGV[8])
end
redis.call(ARGV[5], ARGV[6], '{"from":"","broadcast":{"seq":' .. seq .. ',"epoch":"' .. epoch
  .. '",' .. string.sub(ARGV[2], 2) .. '}')
return seq
"#;

/// Keeps a socket as it is now. A detach from a worker that no longer owns it (the client came
/// back elsewhere first) changes nothing. KEYS: the socket's hash, its worker's set.
/// ARGV: sid, rooms (JSON), binding ('' for none), worker uid, '1' if detached, window in ms,
/// the socket's hash key's digest (the set's member).
const KEEP: &str = r"
if ARGV[5] == '1' and redis.call('HGET', KEYS[1], 'attached') == '1'
   and redis.call('HGET', KEYS[1], 'owner') ~= ARGV[4] then
  return 0
end
redis.call('HSET', KEYS[1], 'sid', ARGV[1], 'rooms', ARGV[2], 'binding', ARGV[3],
  'owner', ARGV[4], 'attached', ARGV[5] == '1' and '0' or '1')
redis.call('PEXPIRE', KEYS[1], ARGV[6])
if ARGV[5] == '1' then
  redis.call('SREM', KEYS[2], ARGV[7])
else
  redis.call('SADD', KEYS[2], ARGV[7])
end
return 1
";

/// Forgets a socket that left on purpose, if this worker owns it. KEYS: the socket's hash, its
/// worker's set. ARGV: worker uid, digest.
const FORGET: &str = r"
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
redis.call('SREM', KEYS[2], ARGV[2])
return 1
";

/// Renews the sockets a worker serves, so they outlive it by about a window.
/// KEYS: its set. ARGV: the prefix of the socket keys, window in ms.
const RENEW: &str = r"
for _, digest in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('PEXPIRE', ARGV[1] .. digest, ARGV[2]) == 0 then
    redis.call('SREM', KEYS[1], digest)
  end
end
return 1
";

/// Takes back a kept socket and the events after the client's offset: nil when the socket is
/// unknown or expired, bound to another client, the offset is of another epoch or ahead, or
/// an event that may have been for it (its own room, one of its rooms, everyone) was evicted
/// after it. Answers sid, rooms, the last number, then id, event pairs.
/// KEYS: the socket's hash, seq, epoch, log, floors. ARGV: binding ('' for none), epoch,
/// offset number, the log's cap, the prefix of the workers' sets, digest.
const CLAIM: &str = r"
local found = redis.call('HMGET', KEYS[1], 'sid', 'rooms', 'binding', 'owner')
if not found[1] then return false end
if found[3] ~= ARGV[1] then return false end
if redis.call('GET', KEYS[3]) ~= ARGV[2] then return false end
local head = tonumber(redis.call('GET', KEYS[2]) or '0')
local after = tonumber(ARGV[3])
if after > head then return false end
local floor = tonumber(redis.call('HGET', KEYS[5], '*') or '0')
local member = {[found[1]] = true}
local function raise(name)
  member[name] = true
  local room = tonumber(redis.call('HGET', KEYS[5], name) or '0')
  if room > floor then floor = room end
end
raise(found[1])
local ok, rooms = pcall(cjson.decode, found[2])
if ok and type(rooms) == 'table' then
  for _, room in ipairs(rooms) do raise(room) end
end
if after < floor then return false end
redis.call('HDEL', KEYS[5], found[1])
redis.call('DEL', KEYS[1])
redis.call('SREM', ARGV[5] .. found[4], ARGV[6])
local out = {found[1], found[2], tostring(head)}
-- Only the events for its rooms, its own or everyone's: the rest of a busy log stays here.
for _, entry in ipairs(redis.call('XRANGE', KEYS[4], (after + 1) .. '-0', '+')) do
  local ok, to = pcall(cjson.decode, entry[2][4] or '[]')
  local wanted = not ok or type(to) ~= 'table' or #to == 0
  if not wanted then
    for _, room in ipairs(to) do
      if member[room] then wanted = true break end
    end
  end
  if wanted then
    table.insert(out, entry[1])
    table.insert(out, entry[2][2])
  end
end
return out
";

/// A namespace's recovery store in Redis (see the module doc).
pub struct RedisSessionStore {
    bus: Arc<RedisBus>,
    config: RecoveryConfig,
    /// `{P:rec:NS}`
    base: String,
    feed: String,
    /// A new epoch, for the first worker to number an event of this namespace.
    candidate_epoch: String,
}

impl RedisBus {
    /// The recovery stores of this worker's namespaces (for
    /// [`socketio::RecoveryConfig::store`]): each subscribes to its namespace's feed and keeps
    /// this worker's connected sockets renewed.
    pub fn recovery_stores(self: &Arc<Self>) -> StoreFactory {
        let bus = self.clone();
        Arc::new(move |ns: &str, config: &RecoveryConfig| {
            let base = format!("{{{}}}", bus.link.key(&["rec", ns]));
            let feed = format!("{base}:feed");
            bus.subscribe(feed.clone());
            let store = Arc::new(RedisSessionStore {
                bus: bus.clone(),
                config: config.clone(),
                feed,
                base,
                candidate_epoch: engineio::generate_sid("").chars().take(8).collect(),
            });
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(renew(Arc::downgrade(&store)));
            }
            store as Arc<dyn SessionStore>
        })
    }
}

/// Renews a worker's connected sockets every third of the window, while the store lives.
async fn renew(store: std::sync::Weak<RedisSessionStore>) {
    let period = match store.upgrade() {
        Some(store) => (store.config.window / 3).max(Duration::from_millis(10)),
        None => return,
    };
    let mut every = tokio::time::interval(period);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let Some(store) = store.upgrade() else { return };
        let mut command = eval(RENEW, &[store.worker_set(&store.bus.link.uid)]);
        command
            .arg(format!("{}:s:", store.base))
            .arg(millis(store.config.window));
        let renewed = store
            .bus
            .link
            .run(|mut c| async move { command.exec_async(&mut c).await })
            .await;
        if let Err(error) = renewed {
            tracing::debug!(%error, "cannot renew the kept sockets of this worker");
        }
    }
}

impl RedisSessionStore {
    fn session_key(&self, digest: &Digest) -> String {
        format!("{}:s:{}", self.base, digest.to_hex())
    }

    fn worker_set(&self, uid: &str) -> String {
        format!("{}:w:{uid}", self.base)
    }

    fn keep(&self, record: &SessionRecord, detached: bool) {
        let rooms: Vec<&str> = record
            .rooms
            .iter()
            .filter(|room| **room != record.sid)
            .map(|room| &**room)
            .collect();
        let mut command = eval(
            KEEP,
            &[
                self.session_key(&record.pid_hash),
                self.worker_set(&self.bus.link.uid),
            ],
        );
        command
            .arg(&*record.sid)
            .arg(serde_json::to_string(&rooms).unwrap_or_else(|_| "[]".into()))
            .arg(record.binding.map(Digest::to_hex).unwrap_or_default())
            .arg(&self.bus.link.uid)
            .arg(if detached { "1" } else { "0" })
            .arg(millis(self.config.window))
            .arg(record.pid_hash.to_hex());
        // In order with this worker's other writes: a socket's later rooms must not be
        // overwritten by its earlier ones.
        let _ = self.bus.sequence(command);
    }
}

impl SessionStore for RedisSessionStore {
    fn append(
        &self,
        ns: &Namespace,
        frames: &[Frame],
        opts: &BroadcastOptions,
        _own: Option<Own>,
    ) -> Result<(), EmitError> {
        let event = WireBroadcast::new(ns.path(), frames, opts);
        let json = serde_json::to_string(&event)
            .map_err(|error| EmitError::NotRelayed(format!("cannot encode it: {error}")))?;
        let publish = if self.bus.link.config.sharded {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let mut command = eval(
            APPEND,
            &[
                format!("{}:seq", self.base),
                format!("{}:epoch", self.base),
                format!("{}:log", self.base),
                format!("{}:floors", self.base),
            ],
        );
        command
            .arg(&self.candidate_epoch)
            .arg(json)
            .arg(if opts.volatile { "0" } else { "1" })
            .arg(self.config.max_packets)
            .arg(publish)
            .arg(&self.feed)
            .arg(self.config.max_sessions)
            .arg(serde_json::to_string(&event.rooms).unwrap_or_else(|_| "[]".into()));
        if self.bus.link.health.is_down() {
            self.bus.link.drops.count(
                "redis_publish_failed",
                1,
                "broadcasts not published for the other workers: Redis is unavailable",
            );
            return Err(EmitError::NotRelayed("Redis is unavailable".into()));
        }
        self.bus.sequence(command)
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn attached(&self, record: &SessionRecord) {
        self.keep(record, false);
    }

    fn detached(&self, record: SessionRecord) {
        self.keep(&record, true);
    }

    fn forgotten(&self, pid_hash: &Digest) {
        let mut command = eval(
            FORGET,
            &[
                self.session_key(pid_hash),
                self.worker_set(&self.bus.link.uid),
            ],
        );
        command.arg(&self.bus.link.uid).arg(pid_hash.to_hex());
        let _ = self.bus.sequence(command);
    }

    fn restore(&self, request: RestoreRequest) -> BoxFuture<'static, Option<Restored>> {
        let mut command = eval(
            CLAIM,
            &[
                self.session_key(&request.pid_hash),
                format!("{}:seq", self.base),
                format!("{}:epoch", self.base),
                format!("{}:log", self.base),
                format!("{}:floors", self.base),
            ],
        );
        command
            .arg(request.binding.map(Digest::to_hex).unwrap_or_default())
            .arg(&request.epoch)
            .arg(request.after)
            .arg(self.config.max_packets)
            .arg(format!("{}:w:", self.base))
            .arg(request.pid_hash.to_hex());
        let link = self.bus.link.clone();
        let max_bytes = self.config.max_bytes;
        async move {
            let claimed = link
                .run(|mut c| async move { command.query_async::<Option<Vec<String>>>(&mut c).await })
                .await;
            let found = match claimed {
                Ok(found) => found?,
                Err(error) => {
                    tracing::warn!(%error, "cannot look up a returning client's socket in Redis: it starts afresh");
                    return None;
                }
            };
            claimed_socket(found, max_bytes)
        }
        .boxed()
    }
}

/// `EVAL script` with its keys, for the arguments to follow. With the script's text rather
/// than its digest, a command needs no script cache (which a restarted Redis has lost), and
/// Redis compiles each text once.
fn eval(script: &str, keys: &[String]) -> redis::Cmd {
    let mut command = redis::cmd("EVAL");
    command.arg(script).arg(keys.len()).arg(keys);
    command
}

/// The socket and events CLAIM answered, the events filtered for it; `None` when they are
/// malformed or more than `max_bytes`.
fn claimed_socket(found: Vec<String>, max_bytes: usize) -> Option<Restored> {
    let mut fields = found.into_iter();
    let sid: socketio::Sid = fields.next()?.into();
    let rooms: Vec<String> = serde_json::from_str(&fields.next()?).ok()?;
    let rooms: Vec<socketio::Room> = rooms.into_iter().map(Into::into).collect();
    let upto = fields.next()?.parse().ok()?;
    let mut missed = Vec::new();
    let mut bytes = 0;
    while let (Some(id), Some(event)) = (fields.next(), fields.next()) {
        let seq = id.split('-').next()?.parse().ok()?;
        let (_, frames, opts) = serde_json::from_str::<WireBroadcast>(&event)
            .ok()?
            .decode()?;
        if !opts.is_for(&sid, &rooms) {
            continue;
        }
        bytes += frames
            .iter()
            .map(|frame| match frame {
                Frame::Text(text) => text.len(),
                Frame::Binary(data) => data.len(),
            })
            .sum::<usize>();
        if bytes > max_bytes {
            return None;
        }
        missed.push(Sequenced { seq, frames, opts });
    }
    // Every worker delivers its own events through the feed here (no `own_first`).
    Some(Restored {
        sid,
        rooms,
        missed,
        upto,
        own_upto: 0,
    })
}
