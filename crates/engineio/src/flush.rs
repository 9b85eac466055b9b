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
    /// Whether the pass's task runs: started by a broadcast in a runtime, ended when the pass
    /// is dropped (or its runtime drops it).
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
    /// Outside a tokio runtime (no task can run) the pass is made in place. A broadcast that
    /// owes no pass costs nothing here.
    pub fn schedule(&self, sockets: Vec<Arc<Socket<D>>>) {
        if sockets.is_empty() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            flush_in_place(sockets);
            return;
        };
        let start = {
            let mut due = self.shared.due();
            due.sockets.extend(sockets);
            !std::mem::replace(&mut due.started, true)
        };
        if start {
            runtime.spawn(run(Stopped(self.shared.clone())));
        }
        self.shared.wake.notify_one();
    }
}

impl<D> Shared<D> {
    fn due(&self) -> std::sync::MutexGuard<'_, Due<D>> {
        self.due
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A pass made by the caller, where no task can make it.
fn flush_in_place<D>(sockets: Vec<Arc<Socket<D>>>) {
    let mut scratch = Vec::new();
    for socket in sockets {
        socket.flush(&mut scratch);
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
/// `stopped` is an argument, not a local: a task dropped before it first ran drops it too.
async fn run<D: Send + Sync + 'static>(stopped: Stopped<D>) {
    let shared = &stopped.0;
    let mut sockets = Vec::new();
    let mut scratch = Vec::new();
    loop {
        std::mem::swap(&mut sockets, &mut shared.due().sockets);
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

/// Ends the pass's task, however it ends: when its runtime drops it before the pass is
/// dropped (a runtime shutting down), what is due is written in place, and the next broadcast
/// starts another task.
struct Stopped<D>(Arc<Shared<D>>);

impl<D> Drop for Stopped<D> {
    fn drop(&mut self) {
        let sockets = {
            let mut due = self.0.due();
            due.started = false;
            std::mem::take(&mut due.sockets)
        };
        flush_in_place(sockets);
    }
}

/// Room for this many sockets is kept between passes.
const SOCKETS_KEPT: usize = 4096;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::socket::{SessionRequest, Transport};
    use crate::Frame;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    /// A websocket session whose writer waits, idle, on one end of a socket pair; the other
    /// end, where the client reads.
    fn idle_session() -> (Arc<Socket<()>>, UnixStream, UnixStream) {
        let (server, client) = UnixStream::pair().unwrap();
        server.set_nonblocking(true).unwrap();
        let request = SessionRequest {
            headers: Default::default(),
            uri: "/".parse().unwrap(),
        };
        let socket = Arc::new(Socket::new(
            "sid".into(),
            Transport::Websocket,
            16,
            None,
            request,
            (),
        ));
        socket.queue.carried_on(Some(server.as_raw_fd()));
        assert!(socket.queue.writer_parks().is_none());
        (socket, server, client)
    }

    fn broadcast(pass: &FlushPass<()>, socket: &Arc<Socket<()>>, text: &str) {
        if socket.send_deferred(Frame::message(text), false).unwrap() {
            pass.schedule(vec![socket.clone()]);
        }
    }

    /// The next `n` bytes the client reads, waiting for them at most 30 s.
    fn read(client: &mut UnixStream, n: usize) -> Vec<u8> {
        client
            .set_read_timeout(Some(std::time::Duration::from_secs(30)))
            .unwrap();
        let mut read = vec![0; n];
        client.read_exact(&mut read).expect("nothing written");
        read
    }

    #[test]
    fn outside_a_runtime_the_pass_is_made_in_place() {
        let (socket, _server, mut client) = idle_session();
        let pass = FlushPass::new();
        broadcast(&pass, &socket, "a");
        assert_eq!(read(&mut client, 4), [0x81, 2, b'4', b'a']);
    }

    // The test's body blocks on its reads: the pass's task runs on the runtime's worker.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_pass_writes_what_broadcasts_queued_in_one_write() {
        let (socket, _server, mut client) = idle_session();
        let pass = FlushPass::new();
        // Two broadcasts before the pass's task runs: one write for both.
        broadcast(&pass, &socket, "a");
        broadcast(&pass, &socket, "b");
        assert_eq!(
            read(&mut client, 8),
            [0x81, 2, b'4', b'a', 0x81, 2, b'4', b'b']
        );
    }

    #[test]
    fn what_a_task_dropped_by_its_runtime_owed_is_written_and_the_next_broadcast_starts_another() {
        let (socket, _server, mut client) = idle_session();
        let pass = FlushPass::new();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // The task is spawned, never run: the runtime goes away first.
        runtime.block_on(async { broadcast(&pass, &socket, "a") });
        drop(runtime);
        assert_eq!(read(&mut client, 4), [0x81, 2, b'4', b'a']);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .unwrap();
        runtime.block_on(async { broadcast(&pass, &socket, "b") });
        assert_eq!(read(&mut client, 4), [0x81, 2, b'4', b'b']);
    }
}
