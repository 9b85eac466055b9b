//! Sticky scheduling: the master accepts every connection, peeks at its request line and hands
//! it to the worker owning its session, or to the least loaded one.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use super::{Inner, MAX_PEEKING};
use crate::control::Status;
use crate::handoff;
use sticky::dispatch::{self, Peeked, Target};

impl Inner {
    /// Sticky scheduling: accepts every connection and hands it to a worker.
    pub(super) async fn dispatch_loop(self: Arc<Self>) {
        let Some(listener) = &self.listener else {
            return;
        };
        let listener = match listener.try_clone().and_then(|listener| {
            listener.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(listener)
        }) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%error, "cannot accept connections: stopping");
                self.stop().await;
                self.finish();
                return;
            }
        };
        // Until a worker is online there is nobody to hand a connection to: connections wait
        // in the socket's queue, rather than get a 503 from a master started by socket
        // activation, or from a new master taking its share of the queue during an upgrade.
        let some_online = |state: &super::state::State| {
            state.phase != super::state::Phase::Running
                || state
                    .slots
                    .iter()
                    .any(|s| s.status == Status::Online && s.current.is_some())
        };
        self.wait_until(std::time::Duration::from_secs(24 * 3600), some_online)
            .await;
        // A new master accepts once it took the app over (`chatctl upgrade`): until then the
        // old master accepts them all, so no user lands on a new worker before the new
        // master's store and recovery logs are the app's.
        let mut accepting = self.accepting.subscribe();
        if accepting.wait_for(|accepting| *accepting).await.is_err() {
            return;
        }
        self.dispatching.reopen();
        let serve = sticky::listen::accept_bounded(&listener, MAX_PEEKING, |stream| {
            let inner = self.clone();
            let dispatching = self.dispatching.token();
            async move {
                inner.dispatch(stream).await;
                drop(dispatching);
            }
        });
        // Handed to a new master (`chatctl upgrade`): the connections queued on the shared
        // socket are its to accept from now on; those accepted here are still dispatched.
        tokio::select! {
            () = serve => {}
            _ = accepting.wait_for(|accepting| !*accepting) => {}
        }
    }

    /// Reads the request line of one connection without consuming it and hands the
    /// connection to the worker owning its session, or to the least-loaded one.
    pub(super) async fn dispatch(&self, stream: tokio::net::TcpStream) {
        let accepted = std::time::Instant::now();
        let timeout = self.lock().config.peek_timeout;
        let target = match dispatch::peek(&stream, timeout).await {
            Peeked::Request(target) => target,
            Peeked::Invalid => return dispatch::refuse(stream, dispatch::BAD_REQUEST).await,
            Peeked::Gone => return,
        };
        // A worker that just died fails the hand-off, and one that does not take its
        // connections (stopped, hung) has a full socket: the next pick is another one.
        let mut skipped = Vec::new();
        let mut full = Vec::new();
        while let Some((worker_id, worker)) = self.route(target, &skipped) {
            match worker.try_send(stream.as_raw_fd()) {
                Ok(()) => return self.observer.dispatched(accepted),
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => full.push(worker),
                Err(_) => {}
            }
            skipped.push(worker_id);
        }
        // Every worker is full: the first to make room takes it (a stopped one never does),
        // within the hand-off timeout, never for ever. One send completes at most: the
        // others are dropped before they are polled again, and each send is atomic.
        if !full.is_empty() {
            let timeout = self.lock().config.handoff_timeout;
            let fd = stream.as_raw_fd();
            let sends = full.iter().map(|worker| Box::pin(worker.send(fd)));
            let sent = tokio::time::timeout(timeout, futures_util::future::select_ok(sends)).await;
            if matches!(sent, Ok(Ok(_))) {
                return self.observer.dispatched(accepted);
            }
        }
        self.observer.refused.inc();
        dispatch::refuse(stream, dispatch::UNAVAILABLE).await;
    }

    /// The online worker owning `target`'s session, or else the online worker with the
    /// fewest sessions (as last reported, plus the handshakes handed to it since).
    /// Workers in `skipped` are left out.
    ///
    /// Only handshakes count towards a worker's load: the workers report sessions, and a
    /// request that opens none (a login, a page) counted as one would tip every next
    /// handshake to the other worker.
    pub(super) fn route(
        &self,
        target: Target,
        skipped: &[u16],
    ) -> Option<(u16, Arc<handoff::Sender>)> {
        let mut state = self.lock();
        let node = state.config.node_id;
        let wanted = match target {
            Target::Session(owner) if owner.node == node => Some(owner.slot),
            _ => None,
        };
        // A process still handing its sessions over takes the connections for them: those
        // that moved already it passes on to its replacement.
        let handing_off = wanted.and_then(|wanted| {
            state
                .slots
                .iter()
                .flat_map(|slot| slot.current.iter().chain(slot.draining.iter()))
                .filter(|proc| proc.handing_off && !skipped.contains(&proc.worker_id))
                .find(|proc| proc.worker_id == wanted || proc.adopted_ids.contains(&wanted))
                .and_then(|proc| Some((proc.worker_id, proc.handoff.clone()?)))
        });
        if handing_off.is_some() {
            return handing_off;
        }
        // The owner first (`false` sorts before `true`): the worker with that id, or the one
        // that adopted its sessions on reload; then the least loaded.
        let chosen = state
            .slots
            .iter_mut()
            .filter(|slot| slot.status == Status::Online)
            .filter_map(|slot| slot.current.as_mut())
            .filter(|proc| proc.ready && proc.handoff.is_some())
            .filter(|proc| !skipped.contains(&proc.worker_id))
            .min_by_key(|proc| {
                (
                    Some(proc.worker_id) != wanted,
                    !wanted.is_some_and(|id| proc.adopted_ids.contains(&id)),
                    proc.connections.saturating_add(proc.handed),
                )
            })?;
        if target == Target::Handshake {
            chosen.handed += 1;
        }
        Some((chosen.worker_id, chosen.handoff.clone()?))
    }
}
