//! Broadcasts between workers over Redis pub/sub: the [`RedisAdapter`] of each namespace
//! publishes what it broadcasts (and its disconnect orders), and the [`RedisBus`] subscriber of
//! every other worker delivers it to that worker's sockets. The same subscriber answers the
//! other workers' questions about this worker's sockets (see `query.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use engineio::Frame;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use redis::{PushInfo, PushKind, Value};
use serde::{Deserialize, Serialize};
use socketio::{
    Adapter, BroadcastOptions, EmitError, LocalAdapter, Namespace, Room, Sid, SocketInfo, SocketIo,
};
use tokio::sync::{mpsc, oneshot};

use super::query::{Answer, PendingQuestions, Question};
use super::{store, Connection, Health, RedisLink};
use crate::wire::WireBroadcast;

/// Broadcasts waiting for the publisher; beyond this (Redis slow or down) new ones reach this
/// worker's sockets only.
const PUBLISH_QUEUE: usize = 16_384;

/// Broadcasts sent to Redis in one pipeline.
const PUBLISH_BATCH: usize = 512;

/// Subscriber reconnection delays: the first, and the longest.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

/// What goes on a channel: the broadcast and the worker that sent it.
#[derive(Serialize, Deserialize)]
struct Envelope {
    /// The sender's [`RedisLink`] uid: a worker gets its own broadcasts back and skips them.
    from: String,
    broadcast: WireBroadcast,
}

/// An encoded broadcast for the publisher task.
struct Publication {
    channel: String,
    payload: Vec<u8>,
}

enum SubscriberCommand {
    Subscribe(String),
    Unsubscribe(String),
    /// Answered once every earlier command took effect on a working connection.
    Settled(oneshot::Sender<()>),
}

/// A worker's side of the broadcast bus: makes the adapters of its namespaces, and runs the
/// publisher and the subscriber once the Socket.IO server exists ([`RedisBus::start`]).
pub struct RedisBus {
    link: Arc<RedisLink>,
    publications: mpsc::Sender<Publication>,
    subscriptions: mpsc::UnboundedSender<SubscriberCommand>,
    /// `P:req`, where every worker hears the others' questions.
    question_channel: String,
    /// `P:res:UID`, where the other workers answer this one's questions.
    answer_channel: String,
    /// This worker's questions waiting for answers.
    questions: PendingQuestions,
    /// The tasks' ends of the channels, until [`RedisBus::start`] takes them.
    pending: Mutex<
        Option<(
            mpsc::Receiver<Publication>,
            mpsc::UnboundedReceiver<SubscriberCommand>,
        )>,
    >,
}

impl RedisBus {
    pub fn new(link: Arc<RedisLink>) -> Arc<Self> {
        let (publications, publication_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (subscriptions, subscription_rx) = mpsc::unbounded_channel();
        let question_channel = link.key(&["req"]);
        let answer_channel = answer_channel(&link, &link.uid);
        let bus = Arc::new(RedisBus {
            link,
            publications,
            subscriptions,
            question_channel,
            answer_channel,
            questions: PendingQuestions::default(),
            pending: Mutex::new(Some((publication_rx, subscription_rx))),
        });
        bus.subscribe(bus.question_channel.clone());
        bus.subscribe(bus.answer_channel.clone());
        bus
    }

    /// The adapter of namespace `ns` (for [`socketio::SocketIoConfig::adapter`]).
    pub fn adapter(self: &Arc<Self>, ns: &str) -> Arc<dyn Adapter> {
        let ns_channel = self.channel(ns, None);
        self.subscribe(ns_channel.clone());
        Arc::new(RedisAdapter {
            local: LocalAdapter::default(),
            bus: self.clone(),
            ns: ns.to_owned(),
            ns_channel,
            rooms: Mutex::new(HashMap::new()),
        })
    }

    /// Starts publishing and delivering what other workers publish to `io`'s sockets. Call once,
    /// inside the runtime; later calls do nothing.
    pub fn start(self: &Arc<Self>, io: SocketIo) {
        let Some((publications, subscriptions)) = self
            .pending
            .lock()
            .ok()
            .and_then(|mut pending| pending.take())
        else {
            return;
        };
        tokio::spawn(run_publisher(self.link.clone(), publications));
        tokio::spawn(run_subscriber(self.clone(), io, subscriptions));
    }

    /// Completes once every subscription asked for so far is in place on a working connection:
    /// from then on, broadcasts to the rooms this worker has members in reach it.
    pub async fn subscriptions_settled(&self) {
        let (done, settled) = oneshot::channel();
        if self
            .subscriptions
            .send(SubscriberCommand::Settled(done))
            .is_ok()
        {
            let _ = settled.await;
        }
    }

    /// `P:bc:NS` for a namespace, `P:bc:NS:ROOM` for one of its rooms.
    fn channel(&self, ns: &str, room: Option<&str>) -> String {
        match room {
            Some(room) => self.link.key(&["bc", ns, room]),
            None => self.link.key(&["bc", ns]),
        }
    }

    fn subscribe(&self, channel: String) {
        let _ = self
            .subscriptions
            .send(SubscriberCommand::Subscribe(channel));
    }

    fn unsubscribe(&self, channel: String) {
        let _ = self
            .subscriptions
            .send(SubscriberCommand::Unsubscribe(channel));
    }

    /// The sockets of the other live workers that match `query` (a broadcast without frames):
    /// as many answers as there are such workers, or those that came within
    /// [`super::RedisConfig::query_timeout`]. Empty when Redis is down.
    async fn ask_other_workers(&self, query: WireBroadcast) -> Vec<SocketInfo> {
        let timeout = self.link.config.query_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let (question, mut answers) = self.questions.open();
        let payload = match serde_json::to_vec(&Question {
            from: self.link.uid.clone(),
            id: question.id,
            query,
        }) {
            Ok(payload) => payload,
            Err(error) => {
                tracing::warn!(%error, "cannot encode a question for the other workers");
                return Vec::new();
            }
        };
        let asked = tokio::time::timeout_at(deadline, async {
            let expected = store::other_live_workers(&self.link).await?;
            if expected > 0 {
                // The answers come on this worker's answer channel, subscribed at start: wait
                // until that took effect, or an early question would miss its answers.
                self.subscriptions_settled().await;
                self.publish_now(self.question_channel.clone(), payload)
                    .await?;
            }
            Ok::<_, chat::StoreError>(expected)
        })
        .await;
        let expected = match asked {
            Ok(Ok(expected)) => expected,
            Ok(Err(error)) => {
                tracing::warn!(
                    %error,
                    "cannot ask the other workers for their sockets: answering with this \
                     worker's only"
                );
                return Vec::new();
            }
            Err(_) => {
                tracing::warn!(
                    ?timeout,
                    "Redis did not take a question for the other workers in time: answering with \
                     this worker's sockets only"
                );
                return Vec::new();
            }
        };
        let mut sockets = Vec::new();
        let mut answered = 0;
        while answered < expected {
            match tokio::time::timeout_at(deadline, answers.recv()).await {
                Ok(Some(found)) => {
                    sockets.extend(found);
                    answered += 1;
                }
                _ => {
                    tracing::warn!(
                        answered,
                        expected,
                        ?timeout,
                        "not every worker said which sockets it has in time (one may have died \
                         without being noticed yet): answering with what came"
                    );
                    break;
                }
            }
        }
        sockets
    }

    /// Publishes at once rather than through the publisher's queue, so a failure is known.
    async fn publish_now(&self, channel: String, payload: Vec<u8>) -> Result<(), chat::StoreError> {
        let command = if self.link.config.sharded {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        self.link
            .run(|mut c| async move {
                redis::cmd(command)
                    .arg(channel)
                    .arg(payload)
                    .exec_async(&mut c)
                    .await
            })
            .await
    }

    /// Queues a publication for the publisher. Fails when the queue is full (the publication
    /// is dropped and counted) or when Redis is known to be down (queued all the same, in case
    /// it is back, but most likely lost: the publisher counts it then).
    fn publish(&self, channel: String, payload: Vec<u8>) -> Result<(), EmitError> {
        if self
            .publications
            .try_send(Publication { channel, payload })
            .is_err()
        {
            self.link.drops.count(
                "redis_publish_queue_full",
                1,
                format_args!(
                    "{PUBLISH_QUEUE} broadcasts are waiting for Redis (slow or down): new ones \
                     reach this worker's users only"
                ),
            );
            return Err(EmitError::NotRelayed(
                "too many broadcasts are waiting for Redis".into(),
            ));
        }
        if self.link.health.is_down() {
            return Err(EmitError::NotRelayed("Redis is unavailable".into()));
        }
        Ok(())
    }
}

/// `P:res:UID`, where worker UID hears the answers to its questions.
fn answer_channel(link: &RedisLink, uid: &str) -> String {
    link.key(&["res", uid])
}

/// Rooms of this worker's sockets, plus publication of every broadcast on Redis, from where the
/// other workers deliver it to their own members of the same rooms.
pub struct RedisAdapter {
    local: LocalAdapter,
    bus: Arc<RedisBus>,
    ns: String,
    ns_channel: String,
    /// Room -> how many local sockets are in it. Changed under this lock so the first join and
    /// the last leave of a room, which (un)subscribe its channel, are each seen once.
    rooms: Mutex<HashMap<Room, usize>>,
}

impl RedisAdapter {
    /// Publishes a broadcast, or a disconnect order, on the channel of the workers it concerns.
    fn publish(&self, opts: &BroadcastOptions, broadcast: WireBroadcast) -> Result<(), EmitError> {
        // One room: its own channel, which only the workers with members in it hear. Several
        // rooms or the whole namespace: the namespace channel, so a worker with members in two
        // of the rooms gets the broadcast once.
        let channel = match opts.rooms.as_slice() {
            [room] => self.bus.channel(&self.ns, Some(room)),
            _ => self.ns_channel.clone(),
        };
        let envelope = Envelope {
            from: self.bus.link.uid.clone(),
            broadcast,
        };
        match serde_json::to_vec(&envelope) {
            Ok(payload) => self.bus.publish(channel, payload),
            Err(error) => {
                tracing::warn!(%error, "cannot encode a broadcast for the other workers");
                Err(EmitError::NotRelayed(format!("cannot encode it: {error}")))
            }
        }
    }

    fn room_left(&self, rooms: &mut HashMap<Room, usize>, room: &str) {
        if let Some(count) = rooms.get_mut(room) {
            *count -= 1;
            if *count == 0 {
                rooms.remove(room);
                self.bus.unsubscribe(self.bus.channel(&self.ns, Some(room)));
            }
        }
    }
}

impl Adapter for RedisAdapter {
    fn join(&self, sid: &Sid, rooms: &[Room]) {
        let Ok(mut counts) = self.rooms.lock() else {
            return;
        };
        let current = self.local.rooms_of(sid);
        for room in rooms {
            if current.contains(room) {
                continue;
            }
            let count = counts.entry(room.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                self.bus.subscribe(self.bus.channel(&self.ns, Some(room)));
            }
        }
        self.local.join(sid, rooms);
    }

    fn leave(&self, sid: &Sid, room: &str) {
        let Ok(mut counts) = self.rooms.lock() else {
            return;
        };
        if self.local.rooms_of(sid).iter().any(|r| &**r == room) {
            self.room_left(&mut counts, room);
        }
        self.local.leave(sid, room);
    }

    fn leave_all(&self, sid: &Sid) {
        let Ok(mut counts) = self.rooms.lock() else {
            return;
        };
        for room in self.local.rooms_of(sid) {
            self.room_left(&mut counts, &room);
        }
        self.local.leave_all(sid);
    }

    fn rooms_of(&self, sid: &str) -> Vec<Room> {
        self.local.rooms_of(sid)
    }

    fn sockets(&self, opts: &BroadcastOptions) -> Vec<Sid> {
        self.local.sockets(opts)
    }

    fn rooms(&self) -> Vec<(Room, usize)> {
        self.local.rooms()
    }

    fn broadcast(
        &self,
        ns: &Namespace,
        frames: &[Frame],
        opts: &BroadcastOptions,
    ) -> Result<(), EmitError> {
        // The other workers first: their share of a big room then goes out while this worker
        // writes its own, instead of after it (the way to them is a task that would otherwise
        // wait behind every local writer this delivery wakes).
        let relayed = if opts.local {
            Ok(())
        } else {
            self.publish(opts, WireBroadcast::new(ns.path(), frames, opts))
        };
        ns.deliver(&self.local.sockets(opts), frames, opts.volatile);
        relayed
    }

    /// The order travels like a broadcast to the same sockets: the workers with members in its
    /// room hear it on the room's channel, every worker on the namespace channel.
    fn disconnect_sockets(&self, ns: &Namespace, opts: &BroadcastOptions) {
        ns.disconnect_local(&self.local.sockets(opts));
        if !opts.local {
            // A failure is counted and logged by the bus; nobody waits for the order.
            let _ = self.publish(opts, WireBroadcast::disconnect(ns.path(), opts));
        }
    }

    fn fetch_sockets(
        &self,
        ns: &Namespace,
        opts: &BroadcastOptions,
    ) -> BoxFuture<'static, Vec<SocketInfo>> {
        let mut sockets = ns.socket_infos(&self.local.sockets(opts));
        if opts.local {
            return std::future::ready(sockets).boxed();
        }
        let bus = self.bus.clone();
        let query = WireBroadcast::new(ns.path(), &[], opts);
        async move {
            sockets.extend(bus.ask_other_workers(query).await);
            sockets
        }
        .boxed()
    }
}

/// Sends queued broadcasts to Redis, pipelined: whatever queued up while one batch was on its
/// way goes in the next.
async fn run_publisher(link: Arc<RedisLink>, mut publications: mpsc::Receiver<Publication>) {
    let command = if link.config.sharded {
        "SPUBLISH"
    } else {
        "PUBLISH"
    };
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while publications.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let count = batch.len() as u64;
        let pipes = publication_pipelines(command, link.is_cluster(), batch.drain(..));
        // These broadcasts are lost for the other workers (Socket.IO broadcasts are
        // at-most-once): counted, and logged now and then.
        let sent = link
            .run(|c| async move {
                let sent = pipes.iter().map(|pipe| {
                    let mut c = c.clone();
                    async move { pipe.query_async::<()>(&mut c).await }
                });
                futures_util::future::try_join_all(sent).await.map(drop)
            })
            .await;
        if let Err(error) = sent {
            link.drops.count(
                "redis_publish_failed",
                count,
                format_args!("broadcasts not published for the other workers: {error}"),
            );
        }
    }
}

/// The pipelines that send `publications` in order: one on a single server; on a cluster one
/// per channel, since a pipeline goes to one node and each channel's slot has its own owner
/// (and the order that matters, that of one room's messages, is within a channel).
fn publication_pipelines(
    command: &str,
    cluster: bool,
    publications: impl Iterator<Item = Publication>,
) -> Vec<redis::Pipeline> {
    let mut pipes: Vec<redis::Pipeline> = Vec::new();
    let mut by_channel: HashMap<String, usize> = HashMap::new();
    for publication in publications {
        let index = if cluster {
            let next = by_channel.len();
            *by_channel
                .entry(publication.channel.clone())
                .or_insert(next)
        } else {
            0
        };
        if index == pipes.len() {
            pipes.push(redis::pipe());
        }
        pipes[index]
            .cmd(command)
            .arg(publication.channel)
            .arg(publication.payload)
            .ignore();
    }
    pipes
}

/// The subscriber: keeps one RESP3 connection subscribed to the channels this worker's adapters
/// ask for, delivers what arrives, and reconnects and resubscribes after Redis went away.
async fn run_subscriber(
    bus: Arc<RedisBus>,
    io: SocketIo,
    mut commands: mpsc::UnboundedReceiver<SubscriberCommand>,
) {
    let link = bus.link.clone();
    let (subscribe, unsubscribe) = if link.config.sharded {
        ("SSUBSCRIBE", "SUNSUBSCRIBE")
    } else {
        ("SUBSCRIBE", "UNSUBSCRIBE")
    };
    let health = Health::new("subscriber");
    // Channel -> adapters wanting it (two names can map to one channel; see `RedisBus::channel`).
    let mut wanted: HashMap<String, usize> = HashMap::new();
    let mut settled: Vec<oneshot::Sender<()>> = Vec::new();
    let mut delay = RECONNECT_FIRST;
    loop {
        let (pushes, mut push_rx) = mpsc::unbounded_channel();
        let connected = match link.subscriber(pushes).await {
            Ok(connection) => {
                let all: Vec<(String, bool)> = wanted.keys().map(|c| (c.clone(), true)).collect();
                apply(&connection, subscribe, unsubscribe, all)
                    .await
                    .map(|()| connection)
            }
            Err(error) => Err(error),
        };
        let connection = match connected {
            Ok(connection) => connection,
            Err(error) => {
                health.down(&error);
                // Keep track of what the adapters want while waiting to retry.
                let retry = tokio::time::sleep(delay);
                tokio::pin!(retry);
                loop {
                    tokio::select! {
                        _ = &mut retry => break,
                        command = commands.recv() => match command {
                            Some(command) => {
                                record(&mut wanted, &mut settled, command);
                            }
                            None => return,
                        },
                    }
                }
                delay = (delay * 2).min(RECONNECT_MAX);
                continue;
            }
        };
        health.up();
        delay = RECONNECT_FIRST;
        for done in settled.drain(..) {
            let _ = done.send(());
        }
        loop {
            tokio::select! {
                push = push_rx.recv() => match push {
                    Some(PushInfo { kind: PushKind::Message | PushKind::SMessage, data }) => {
                        on_message(&bus, &io, data);
                    }
                    Some(PushInfo { kind: PushKind::Disconnection, .. }) | None => {
                        health.down(&"the subscriber connection closed");
                        break;
                    }
                    Some(_) => {}
                },
                command = commands.recv() => {
                    let Some(command) = command else { return };
                    let mut changes = HashMap::new();
                    if let Some(change) = record(&mut wanted, &mut settled, command) {
                        changes.insert(change.0, change.1);
                    }
                    while let Ok(command) = commands.try_recv() {
                        if let Some(change) = record(&mut wanted, &mut settled, command) {
                            changes.insert(change.0, change.1);
                        }
                    }
                    if let Err(error) =
                        apply(&connection, subscribe, unsubscribe, changes.into_iter().collect()).await
                    {
                        health.down(&error);
                        break;
                    }
                    for done in settled.drain(..) {
                        let _ = done.send(());
                    }
                }
            }
        }
    }
}

/// Updates the wanted channels; returns the channel whose subscription must change, and whether
/// it is now wanted.
fn record(
    wanted: &mut HashMap<String, usize>,
    settled: &mut Vec<oneshot::Sender<()>>,
    command: SubscriberCommand,
) -> Option<(String, bool)> {
    match command {
        SubscriberCommand::Subscribe(channel) => {
            let count = wanted.entry(channel.clone()).or_insert(0);
            *count += 1;
            (*count == 1).then_some((channel, true))
        }
        SubscriberCommand::Unsubscribe(channel) => {
            let count = wanted.get_mut(&channel)?;
            *count -= 1;
            if *count > 0 {
                return None;
            }
            wanted.remove(&channel);
            Some((channel, false))
        }
        SubscriberCommand::Settled(done) => {
            settled.push(done);
            None
        }
    }
}

/// (Un)subscribes channels, all in flight at once on the multiplexed connection. One channel
/// per command: the connection matches each (un)subscribe confirmation to one command.
async fn apply(
    connection: &Connection,
    subscribe: &str,
    unsubscribe: &str,
    changes: Vec<(String, bool)>,
) -> redis::RedisResult<()> {
    let requests = changes.into_iter().map(|(channel, on)| {
        let mut connection = connection.clone();
        let command = if on { subscribe } else { unsubscribe };
        async move {
            redis::cmd(command)
                .arg(channel)
                .exec_async(&mut connection)
                .await
        }
    });
    futures_util::future::try_join_all(requests)
        .await
        .map(|_| ())
}

/// What the subscriber does with a message: hand an answer to the question waiting for it,
/// answer another worker's question, or deliver a broadcast to this worker's sockets.
fn on_message(bus: &RedisBus, io: &SocketIo, data: Vec<Value>) {
    // A message push is [channel, payload].
    let mut data = data.into_iter();
    let (Some(Value::BulkString(channel)), Some(Value::BulkString(payload))) =
        (data.next(), data.next())
    else {
        return;
    };
    if channel == bus.answer_channel.as_bytes() {
        match serde_json::from_slice::<Answer>(&payload) {
            Ok(answer) => bus.questions.deliver(answer),
            Err(error) => tracing::warn!(%error, "skipping a malformed answer from Redis"),
        }
    } else if channel == bus.question_channel.as_bytes() {
        answer_question(bus, io, &payload);
    } else {
        deliver(io, &bus.link.uid, &payload);
    }
}

/// Tells the worker that asked which of this worker's sockets match its question.
fn answer_question(bus: &RedisBus, io: &SocketIo, payload: &[u8]) {
    let question = match serde_json::from_slice::<Question>(payload) {
        Ok(question) if question.from == bus.link.uid => return,
        Ok(question) => question,
        Err(error) => {
            tracing::warn!(%error, "skipping a malformed question from Redis");
            return;
        }
    };
    let channel = answer_channel(&bus.link, &question.from);
    match serde_json::to_vec(&question.answer(io)) {
        // A lost answer is counted by the bus; the asker answers with what came in time.
        Ok(answer) => {
            let _ = bus.publish(channel, answer);
        }
        Err(error) => tracing::warn!(%error, "cannot encode an answer for another worker"),
    }
}

/// Delivers a broadcast another worker published to this worker's sockets.
fn deliver(io: &SocketIo, own_uid: &str, payload: &[u8]) {
    let envelope = match serde_json::from_slice::<Envelope>(payload) {
        Ok(envelope) if envelope.from == own_uid => return,
        Ok(envelope) => envelope,
        Err(error) => {
            tracing::warn!(%error, "skipping a malformed broadcast from Redis");
            return;
        }
    };
    if !envelope.broadcast.apply(io) {
        tracing::warn!("skipping a malformed broadcast from Redis");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::redis::{RedisConfig, RedisLink};

    #[test]
    fn channels_are_per_namespace_and_per_room_under_the_prefix() {
        let link = RedisLink::new(RedisConfig {
            prefix: "app".into(),
            ..RedisConfig::new("redis://127.0.0.1:1")
        })
        .unwrap();
        let bus = RedisBus::new(link);
        assert_eq!(bus.channel("/chat_com", None), "app:bc:/chat_com");
        assert_eq!(
            bus.channel("/chat_com", Some("room:lobby")),
            "app:bc:/chat_com:room:lobby"
        );
        assert_eq!(bus.question_channel, "app:req");
        assert_eq!(bus.answer_channel, format!("app:res:{}", bus.link.uid));
    }

    #[test]
    fn on_a_cluster_publications_go_in_one_pipeline_per_channel_in_order() {
        let publication = |channel: &str, payload: &str| Publication {
            channel: channel.into(),
            payload: payload.as_bytes().to_vec(),
        };
        let batch = || {
            vec![
                publication("x", "1"),
                publication("y", "2"),
                publication("x", "3"),
            ]
            .into_iter()
        };
        let packed = |pipe: &redis::Pipeline| {
            pipe.cmd_iter()
                .map(|cmd| String::from_utf8_lossy(&cmd.get_packed_command()).into_owned())
                .collect::<Vec<_>>()
        };
        let cluster = publication_pipelines("SPUBLISH", true, batch());
        assert_eq!(cluster.len(), 2);
        let x = packed(&cluster[0]);
        assert_eq!(x.len(), 2);
        assert!(x[0].ends_with("$1\r\nx\r\n$1\r\n1\r\n") && x[1].ends_with("$1\r\n3\r\n"));
        assert!(packed(&cluster[1])[0].contains("\r\ny\r\n"));
        let single = publication_pipelines("SPUBLISH", false, batch());
        assert_eq!(single.len(), 1);
        assert_eq!(packed(&single[0]).len(), 3);
    }

    #[test]
    fn a_channel_is_subscribed_while_anyone_wants_it() {
        let mut wanted = HashMap::new();
        let mut settled = Vec::new();
        let mut apply = |command| record(&mut wanted, &mut settled, command);
        assert_eq!(
            apply(SubscriberCommand::Subscribe("c".into())),
            Some(("c".to_owned(), true))
        );
        assert_eq!(apply(SubscriberCommand::Subscribe("c".into())), None);
        assert_eq!(apply(SubscriberCommand::Unsubscribe("c".into())), None);
        assert_eq!(
            apply(SubscriberCommand::Unsubscribe("c".into())),
            Some(("c".to_owned(), false))
        );
        // Unbalanced: nothing to undo.
        assert_eq!(apply(SubscriberCommand::Unsubscribe("c".into())), None);
        let (done, _) = oneshot::channel();
        assert_eq!(apply(SubscriberCommand::Settled(done)), None);
        assert_eq!(settled.len(), 1);
    }
}
