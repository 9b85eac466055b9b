//! The subscriber of a worker's [`RedisBus`]: one RESP3 connection subscribed to the channels
//! its adapters ask for, which delivers the other workers' broadcasts, answers their questions
//! and hands this worker the answers to its own; it reconnects and resubscribes after Redis
//! went away.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::{PushInfo, PushKind, Value};
use socketio::SocketIo;
use tokio::sync::{mpsc, oneshot};

use super::bus::{answer_channel, Envelope, RedisBus};
use super::link::{Connection, Health};
use super::query::{Answer, Question};
use crate::remote;

/// Subscriber reconnection delays: the first, and the longest.
const RECONNECT_FIRST: Duration = Duration::from_millis(100);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

pub(super) enum SubscriberCommand {
    Subscribe(String),
    Unsubscribe(String),
    /// Answered once every earlier command took effect on a working connection.
    Settled(oneshot::Sender<()>),
}

/// The subscriber: keeps one RESP3 connection subscribed to the channels this worker's adapters
/// ask for, delivers what arrives, and reconnects and resubscribes after Redis went away.
pub(super) async fn run_subscriber(
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
    remote::deliver(io, envelope.broadcast, "Redis");
}

#[cfg(test)]
mod tests {
    use super::*;

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
