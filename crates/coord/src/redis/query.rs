//! Questions to every worker of the app over Redis pub/sub: which of its sockets match some
//! broadcast options (`fetch_sockets`, `count`). The asking worker publishes a [`Question`] on
//! `P:req`, which every worker subscribes to; each other worker publishes its [`Answer`] on the
//! asker's own `P:res:UID`. The asker waits for as many answers as there are other live workers
//! in `M:workers` (see the [`super`] module doc), or for [`RedisConfig::query_timeout`].
//!
//! [`RedisConfig::query_timeout`]: super::RedisConfig::query_timeout

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use socketio::{SocketInfo, SocketIo};
use tokio::sync::mpsc;

use crate::wire::WireBroadcast;

/// What goes on `P:req`: which sockets the asker wants, and where to answer.
#[derive(Serialize, Deserialize)]
pub(super) struct Question {
    /// The asker's [`super::RedisLink`] uid: names its answer channel, and lets it skip its own
    /// question when that comes back.
    pub from: String,
    /// Tells the asker's concurrent questions apart.
    pub id: u64,
    /// The options, as a broadcast without frames.
    pub query: WireBroadcast,
}

/// What goes on `P:res:UID`: a worker's matching sockets.
#[derive(Serialize, Deserialize)]
pub(super) struct Answer {
    pub id: u64,
    pub sockets: Vec<SocketInfo>,
}

impl Question {
    /// This worker's sockets that match the question (none for a namespace it does not have).
    pub fn answer(self, io: &SocketIo) -> Answer {
        let sockets = crate::remote::matching_sockets(io, self.query);
        Answer {
            id: self.id,
            sockets,
        }
    }
}

/// This worker's questions still waiting for answers.
#[derive(Default)]
pub(super) struct PendingQuestions {
    next_id: AtomicU64,
    /// Question id -> where its answers go; removed when the asker stops waiting.
    waiting: Mutex<HashMap<u64, mpsc::UnboundedSender<Vec<SocketInfo>>>>,
}

impl PendingQuestions {
    /// A new question id and the receiver of its answers, until the returned guard is dropped.
    pub fn open(&self) -> (Waiting<'_>, mpsc::UnboundedReceiver<Vec<SocketInfo>>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (answers, receiver) = mpsc::unbounded_channel();
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.insert(id, answers);
        }
        (Waiting { pending: self, id }, receiver)
    }

    /// Hands an answer to the question waiting for it; late answers are dropped.
    pub fn deliver(&self, answer: Answer) {
        let waiting = self.waiting.lock().ok();
        if let Some(answers) = waiting.as_ref().and_then(|w| w.get(&answer.id)) {
            let _ = answers.send(answer.sockets);
        }
    }
}

/// A question being waited for; dropping it stops the wait (answers after that are dropped).
pub(super) struct Waiting<'a> {
    pending: &'a PendingQuestions,
    pub id: u64,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Ok(mut waiting) = self.pending.waiting.lock() {
            waiting.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_reach_the_open_question_only_while_it_waits() {
        let pending = PendingQuestions::default();
        let (first, mut first_rx) = pending.open();
        let (second, _second_rx) = pending.open();
        assert_ne!(first.id, second.id);
        let info = SocketInfo {
            id: "s".into(),
            rooms: vec!["r".into()],
        };
        pending.deliver(Answer {
            id: first.id,
            sockets: vec![info.clone()],
        });
        assert_eq!(first_rx.try_recv().ok(), Some(vec![info.clone()]));
        let id = first.id;
        drop(first);
        pending.deliver(Answer {
            id,
            sockets: vec![info],
        });
        assert!(first_rx.try_recv().is_err());
        assert!(pending.waiting.lock().unwrap().len() == 1);
    }
}
