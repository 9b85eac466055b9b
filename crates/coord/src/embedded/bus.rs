//! Broadcasts and questions between workers through the master: a worker publishes on its IPC
//! channel, the master relays to every other worker, which delivers to its own sockets.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use socketio::{EmitError, SocketInfo, SocketIo};
use supervisor::ipc::WorkerLink;

use crate::remote::{self, Driver, RemoteAdapter};
use crate::wire::WireBroadcast;

/// The adapter of a namespace of a worker under a chatctl master without Redis.
pub type EmbeddedAdapter = RemoteAdapter<MasterBus>;

/// The [`Driver`] through the master: every worker hears every broadcast (the master relays
/// them all), so there are no room subscriptions.
pub struct MasterBus {
    link: Arc<WorkerLink>,
}

impl From<Arc<WorkerLink>> for MasterBus {
    fn from(link: Arc<WorkerLink>) -> Self {
        MasterBus { link }
    }
}

impl Driver for MasterBus {
    const ROOM_SUBSCRIPTIONS: bool = false;

    fn publish(&self, message: WireBroadcast) -> Result<(), EmitError> {
        let body = serde_json::value::to_raw_value(&message).map_err(|error| {
            tracing::warn!(%error, "cannot encode a broadcast for the other workers");
            EmitError::NotRelayed(format!("cannot encode it: {error}"))
        })?;
        // Fails only when the master is gone, and this worker with it.
        self.link
            .publish(body)
            .map_err(|error| EmitError::NotRelayed(error.to_string()))
    }

    fn ask_others(&self, query: WireBroadcast) -> BoxFuture<'static, Vec<SocketInfo>> {
        let question = serde_json::to_value(query);
        let link = self.link.clone();
        async move {
            let Ok(question) = question else {
                return Vec::new();
            };
            let mut sockets = Vec::new();
            match link.gather(question).await {
                Ok(answers) => {
                    for answer in answers {
                        sockets.extend(
                            serde_json::from_value::<Vec<SocketInfo>>(answer).unwrap_or_default(),
                        );
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot ask the other workers for their sockets")
                }
            }
            sockets
        }
        .boxed()
    }
}

/// Delivers the broadcasts other workers publish to this worker's sockets, and answers their
/// questions about this worker's sockets, until the master goes away.
pub async fn deliver_remote_broadcasts(
    io: SocketIo,
    link: Arc<WorkerLink>,
    mut messages: tokio::sync::mpsc::UnboundedReceiver<Box<RawValue>>,
) {
    let answering = io.clone();
    link.on_query(move |body| answer_query(&answering, body));
    while let Some(body) = messages.recv().await {
        match serde_json::from_str::<WireBroadcast>(body.get()) {
            Ok(message) => remote::deliver(&io, message, "another worker"),
            Err(_) => tracing::warn!("skipping a malformed broadcast from another worker"),
        }
    }
}

/// This worker's sockets that match a question another worker asked through the master.
fn answer_query(io: &SocketIo, body: Value) -> Value {
    match serde_json::from_value::<WireBroadcast>(body) {
        Ok(query) => json!(remote::matching_sockets(io, query)),
        Err(_) => json!([]),
    }
}
