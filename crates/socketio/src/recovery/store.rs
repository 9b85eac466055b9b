//! Where a namespace's numbered events and kept sockets live.

use std::sync::{Arc, Mutex};

use engineio::Frame;
use futures_util::future::BoxFuture;

use super::{Digest, Own, RecoveryConfig, RecoveryLog, RestoreRequest, Restored, SessionRecord};
use crate::adapter::BroadcastOptions;
use crate::error::EmitError;
use crate::namespace::Namespace;

/// Builds the store of a namespace (its path) with recovery on.
pub type StoreFactory = Arc<dyn Fn(&str, &RecoveryConfig) -> Arc<dyn SessionStore> + Send + Sync>;

/// Numbers a namespace's events, keeps them and the sockets that may come back, and gives
/// them back. An implementation shared by several processes (a master, Redis) must hand every
/// process every event in number order, through [`Namespace::deliver_sequenced`], this
/// process included: the sender's own sockets get the event that way too, unless the store
/// lets processes deliver their own events first ([`SessionStore::own_first`]).
pub trait SessionStore: Send + Sync + 'static {
    /// Numbers an event and has every process deliver it. The frames carry no offset yet.
    /// `own`: its sender's mark, from a process whose store lets it deliver its own events
    /// first; the store keeps it with the event and hands it on with it.
    fn append(
        &self,
        ns: &Namespace,
        frames: &[Frame],
        opts: &BroadcastOptions,
        own: Option<Own>,
    ) -> Result<(), EmitError>;

    /// Whether a process delivers its own events to its own sockets itself, before the store
    /// numbers them, which saves them the wait for the numbered copy. The store then hands
    /// such an event to the other processes only, keeps its [`crate::Mark`], and restores a
    /// client by its offset's marks too (see [`RestoreRequest::had_own`]).
    fn own_first(&self) -> bool {
        false
    }

    /// A socket of this process connected, or its rooms changed. A store in this process
    /// needs nothing: it outlives the socket only as long as the process does.
    fn attached(&self, _record: &SessionRecord) {}

    /// Whether other processes share it (a master, Redis). Such a store outlives this
    /// process's sockets, so it keeps them from their CONNECT on ([`SessionStore::attached`])
    /// and they recover if the process dies; and it delivers through its feed, so an event it
    /// could not take still goes to this process's sockets (see `Recovery::append`).
    fn is_shared(&self) -> bool {
        false
    }

    /// A socket's connection broke: keep it for the window, as it is now.
    fn detached(&self, record: SessionRecord);

    /// A socket left on purpose: nothing to keep.
    fn forgotten(&self, _pid_hash: &Digest) {}

    /// Takes back a kept socket and the events it missed (see [`RecoveryLog::restore`]);
    /// `None` for a fresh socket.
    fn restore(&self, request: RestoreRequest) -> BoxFuture<'static, Option<Restored>>;
}

/// The store of a single process: its log in memory, events delivered as they are numbered.
/// With an adapter that spans several processes, they get the events too (through
/// [`crate::Adapter::relay`]), without this process's offsets: only a store they share (see
/// [`RecoveryConfig::store`]) recovers a client on another process than its own.
pub struct LocalStore {
    log: Mutex<RecoveryLog>,
}

impl LocalStore {
    pub fn new(config: RecoveryConfig) -> LocalStore {
        LocalStore {
            log: Mutex::new(RecoveryLog::new(config)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RecoveryLog> {
        // A panic while holding the lock leaves a log that is still consistent enough.
        self.log
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl SessionStore for LocalStore {
    fn append(
        &self,
        ns: &Namespace,
        frames: &[Frame],
        opts: &BroadcastOptions,
        _own: Option<Own>,
    ) -> Result<(), EmitError> {
        // Delivered under the log's lock: every socket gets the events in number order.
        let mut log = self.lock();
        let seq = log.append(frames, opts);
        ns.deliver_sequenced(log.epoch(), seq, None, frames, opts);
        drop(log);
        ns.adapter().relay(ns, frames, opts)
    }

    fn detached(&self, record: SessionRecord) {
        self.lock().keep(record, 0, true);
    }

    fn restore(&self, request: RestoreRequest) -> BoxFuture<'static, Option<Restored>> {
        Box::pin(std::future::ready(self.lock().restore(&request)))
    }
}
