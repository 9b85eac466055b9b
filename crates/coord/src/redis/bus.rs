//! Broadcasts between workers over Redis pub/sub: the adapter of each namespace publishes
//! what it broadcasts (and its disconnect orders) through the [`RedisBus`], whose subscriber
//! (`subscriber.rs`) in every other worker delivers it to that worker's sockets. The same
//! subscriber answers the other workers' questions about this worker's sockets (see
//! `query.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde::{Deserialize, Serialize};
use socketio::{Adapter, EmitError, SocketInfo, SocketIo};
use tokio::sync::{mpsc, oneshot};

use super::query::{PendingQuestions, Question};
use super::subscriber::{run_subscriber, SubscriberCommand};
use super::{RedisError, RedisLink};
use crate::remote::{Driver, RemoteAdapter};
use crate::wire::WireBroadcast;

/// Broadcasts waiting for the publisher; beyond this (Redis slow or down) new ones reach this
/// worker's sockets only.
const PUBLISH_QUEUE: usize = 16_384;

/// Broadcasts sent to Redis in one pipeline.
const PUBLISH_BATCH: usize = 512;

/// Events waiting to be numbered by Redis (connection-state recovery); beyond this (Redis slow
/// or down) new ones are refused, counted and said.
const SEQUENCE_QUEUE: usize = 16_384;

/// What goes on a channel: the broadcast and the worker that sent it.
#[derive(Serialize, Deserialize)]
pub(super) struct Envelope {
    /// The sender's [`RedisLink`] uid: a worker gets its own broadcasts back and skips them.
    pub(super) from: String,
    pub(super) broadcast: WireBroadcast,
}

/// An encoded broadcast for the publisher task.
struct Publication {
    channel: String,
    payload: Vec<u8>,
}

/// A worker's side of the broadcast bus: makes the adapters of its namespaces, and runs the
/// publisher and the subscriber once the Socket.IO server exists ([`RedisBus::start`]).
pub struct RedisBus {
    pub(super) link: Arc<RedisLink>,
    publications: mpsc::Sender<Publication>,
    /// Events for Redis to number, in the order this worker sent them (see `recovery.rs`).
    sequenced: mpsc::Sender<redis::Cmd>,
    subscriptions: mpsc::UnboundedSender<SubscriberCommand>,
    /// `P:req`, where every worker hears the others' questions.
    pub(super) question_channel: String,
    /// `P:res:UID`, where the other workers answer this one's questions.
    pub(super) answer_channel: String,
    /// This worker's questions waiting for answers.
    pub(super) questions: PendingQuestions,
    /// The tasks' ends of the channels, until [`RedisBus::start`] takes them.
    pending: Mutex<Option<TaskEnds>>,
}

/// What [`RedisBus::start`] hands its tasks: publications, numbering scripts, subscriptions.
type TaskEnds = (
    mpsc::Receiver<Publication>,
    mpsc::Receiver<redis::Cmd>,
    mpsc::UnboundedReceiver<SubscriberCommand>,
);

impl RedisBus {
    pub fn new(link: Arc<RedisLink>) -> Arc<Self> {
        let (publications, publication_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (sequenced, sequenced_rx) = mpsc::channel(SEQUENCE_QUEUE);
        let (subscriptions, subscription_rx) = mpsc::unbounded_channel();
        let question_channel = link.key(&["req"]);
        let answer_channel = answer_channel(&link, &link.uid);
        let bus = Arc::new(RedisBus {
            link,
            publications,
            sequenced,
            subscriptions,
            question_channel,
            answer_channel,
            questions: PendingQuestions::default(),
            pending: Mutex::new(Some((publication_rx, sequenced_rx, subscription_rx))),
        });
        bus.subscribe(bus.question_channel.clone());
        bus.subscribe(bus.answer_channel.clone());
        bus
    }

    /// The adapter of namespace `ns` (for [`socketio::SocketIoConfig::adapter`]).
    pub fn adapter(self: &Arc<Self>, ns: &str) -> Arc<dyn Adapter> {
        let ns_channel = self.channel(ns, None);
        self.subscribe(ns_channel.clone());
        Arc::new(RedisAdapter::new(RoomChannels {
            bus: self.clone(),
            ns: ns.to_owned(),
            ns_channel,
        }))
    }

    /// Starts publishing and delivering what other workers publish to `io`'s sockets. Call once,
    /// inside the runtime; later calls do nothing.
    pub fn start(self: &Arc<Self>, io: SocketIo) {
        let Some((publications, sequenced, subscriptions)) = self
            .pending
            .lock()
            .ok()
            .and_then(|mut pending| pending.take())
        else {
            return;
        };
        tokio::spawn(run_publisher(self.link.clone(), publications));
        tokio::spawn(run_sequencer(self.link.clone(), sequenced));
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

    pub(super) fn subscribe(&self, channel: String) {
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
            let expected = self.link.other_live_workers().await?;
            if expected > 0 {
                // The answers come on this worker's answer channel, subscribed at start: wait
                // until that took effect, or an early question would miss its answers.
                self.subscriptions_settled().await;
                self.publish_now(self.question_channel.clone(), payload)
                    .await?;
            }
            Ok::<_, RedisError>(expected)
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
    async fn publish_now(&self, channel: String, payload: Vec<u8>) -> Result<(), RedisError> {
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
    /// Queues an event's numbering script (see `recovery.rs`): the scripts run in the order
    /// they were queued, so this worker's events are numbered in the order it sent them.
    pub(super) fn sequence(&self, command: redis::Cmd) -> Result<(), EmitError> {
        if self.sequenced.try_send(command).is_err() {
            self.link.drops.count(
                "redis_sequence_queue_full",
                1,
                format_args!(
                    "{SEQUENCE_QUEUE} events are waiting for Redis to number them (slow or \
                     down): new ones are dropped"
                ),
            );
            return Err(EmitError::NotRelayed(
                "too many events are waiting for Redis".into(),
            ));
        }
        Ok(())
    }

    pub(super) fn publish(&self, channel: String, payload: Vec<u8>) -> Result<(), EmitError> {
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
pub(super) fn answer_channel(link: &RedisLink, uid: &str) -> String {
    link.key(&["res", uid])
}

/// The adapter of a namespace of a worker that shares its rooms through Redis.
pub type RedisAdapter = RemoteAdapter<RoomChannels>;

/// The [`Driver`] over Redis for one namespace: a broadcast to one room goes on that room's
/// channel, which only the workers with members in the room hear; one to several rooms or the
/// whole namespace on the namespace's channel, so a worker with members in two of the rooms
/// gets it once.
pub struct RoomChannels {
    bus: Arc<RedisBus>,
    ns: String,
    /// `P:bc:NS`, made once rather than for each broadcast.
    ns_channel: String,
}

impl Driver for RoomChannels {
    const ROOM_SUBSCRIPTIONS: bool = true;

    fn publish(&self, broadcast: WireBroadcast) -> Result<(), EmitError> {
        let channel = match broadcast.rooms.as_slice() {
            [room] => self.bus.channel(&self.ns, Some(room)),
            _ => self.ns_channel.clone(),
        };
        let envelope = Envelope {
            from: self.bus.link.uid.clone(),
            broadcast,
        };
        match serde_json::to_vec(&envelope) {
            // A failure is counted and logged by the bus.
            Ok(payload) => self.bus.publish(channel, payload),
            Err(error) => {
                tracing::warn!(%error, "cannot encode a broadcast for the other workers");
                Err(EmitError::NotRelayed(format!("cannot encode it: {error}")))
            }
        }
    }

    fn subscribe(&self, room: &str) {
        self.bus.subscribe(self.bus.channel(&self.ns, Some(room)));
    }

    fn unsubscribe(&self, room: &str) {
        self.bus.unsubscribe(self.bus.channel(&self.ns, Some(room)));
    }

    fn ask_others(&self, query: WireBroadcast) -> BoxFuture<'static, Vec<SocketInfo>> {
        let bus = self.bus.clone();
        async move { bus.ask_other_workers(query).await }.boxed()
    }
}

/// Sends queued broadcasts to Redis, pipelined: whatever queued up while one batch was on its
/// way goes in the next.
/// Runs the numbering scripts in the order they were queued, in pipelines.
async fn run_sequencer(link: Arc<RedisLink>, mut commands: mpsc::Receiver<redis::Cmd>) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while commands.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let count = batch.len() as u64;
        let mut pipe = redis::pipe();
        for command in batch.drain(..) {
            pipe.add_command(command).ignore();
        }
        let sent = link
            .run(|mut c| async move { pipe.query_async::<()>(&mut c).await })
            .await;
        if let Err(error) = sent {
            link.drops.count(
                "redis_sequence_failed",
                count,
                format_args!(
                    "events Redis did not number (lost for their recipients) or recovery \
                     writes it did not make: {error}"
                ),
            );
        }
    }
}

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
}
