//! The flush pass: one task that writes what a broadcast to many clients queued for them.
//!
//! A frame sent to one client goes straight to its connection when its writer is idle (see
//! `Queue::push_now`). A broadcast to a large room does not: its frames are queued without
//! waking anyone ([`Socket::send_deferred`]), and this pass then writes, for each of those
//! clients whose writer is still idle, everything queued for it in one write. One task woken
//! per broadcast instead of one per recipient; and when broadcasts come faster than a pass
//! takes, the next pass finds several frames per client and writes them together, which is
//! what keeps a busy process's writes, the most of its cost, in check.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::socket::Socket;

/// The clients with frames waiting for the next pass, and the task that makes it.
pub struct FlushPass<D> {
    shared: Arc<Shared<D>>,
}

struct Shared<D> {
    due: Mutex<Due<D>>,
    /// Woken by every schedule (a permit is kept while the task is busy: none is missed).
    wake: Notify,
    /// Set when the pass is dropped: its task ends.
    closed: AtomicBool,
}

struct Due<D> {
    sockets: Vec<Arc<Socket<D>>>,
    /// Whether the pass's task runs: started with the first broadcast (a runtime is there),
    /// ended when the pass is dropped.
    started: bool,
}

impl<D: Send + Sync + 'static> FlushPass<D> {
    pub fn new() -> Self {
        FlushPass {
            shared: Arc::new(Shared {
                due: Mutex::new(Due {
                    sockets: Vec::new(),
                    started: false,
                }),
                wake: Notify::new(),
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// Makes a pass over `sockets` soon: those [`Socket::send_deferred`] said are due.
    pub fn schedule(&self, sockets: impl IntoIterator<Item = Arc<Socket<D>>>) {
        let start = {
            let mut due = self
                .shared
                .due
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            due.sockets.extend(sockets);
            if due.sockets.is_empty() {
                return;
            }
            !std::mem::replace(&mut due.started, true)
        };
        if start {
            tokio::spawn(run(self.shared.clone()));
        }
        self.shared.wake.notify_one();
    }
}

impl<D> Drop for FlushPass<D> {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

impl<D: Send + Sync + 'static> Default for FlushPass<D> {
    fn default() -> Self {
        Self::new()
    }
}

/// The pass's task: waits for sockets, writes to them, until the pass is dropped.
async fn run<D: Send + Sync + 'static>(shared: Arc<Shared<D>>) {
    let mut sockets = Vec::new();
    let mut scratch = Vec::new();
    loop {
        {
            let mut due = shared
                .due
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            std::mem::swap(&mut sockets, &mut due.sockets);
        }
        if sockets.is_empty() {
            if shared.closed.load(Ordering::Acquire) {
                return;
            }
            shared.wake.notified().await;
            continue;
        }
        for socket in sockets.drain(..) {
            socket.flush(&mut scratch);
        }
        // What a burst needed, not kept for good.
        sockets.shrink_to(SOCKETS_KEPT);
        scratch.shrink_to(crate::transport::ws::BATCH_BYTES);
        // Lets the broadcasts that came meanwhile queue more before the next pass.
        tokio::task::yield_now().await;
    }
}

/// Room for this many sockets is kept between passes.
const SOCKETS_KEPT: usize = 4096;
