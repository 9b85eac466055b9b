//! A server under test in a tokio runtime of its own, on a loopback port, for a client program
//! (a child process) to talk to while the test thread waits for that program.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// A server serving in the background. [`BackgroundServer::stop`] ends it and fails the test if
/// it stopped with an error.
pub struct BackgroundServer {
    runtime: tokio::runtime::Runtime,
    stop: oneshot::Sender<()>,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl BackgroundServer {
    /// Binds an ephemeral loopback port and runs `serve(listener, stopped)` on it; `stopped`
    /// resolves when the test calls [`BackgroundServer::stop`].
    pub fn start<F, S>(serve: S) -> BackgroundServer
    where
        S: FnOnce(TcpListener, oneshot::Receiver<()>) -> F,
        F: Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
        let listener = runtime
            .block_on(TcpListener::bind("127.0.0.1:0"))
            .expect("bind 127.0.0.1:0");
        let address = listener.local_addr().expect("the bound address");
        let (stop, stopped) = oneshot::channel();
        let serving = runtime.spawn(serve(listener, stopped));
        BackgroundServer {
            runtime,
            stop,
            serving,
            url: format!("http://{address}"),
        }
    }

    pub fn stop(self) {
        let _ = self.stop.send(());
        let served = self.runtime.block_on(self.serving);
        self.runtime.shutdown_timeout(Duration::from_secs(5));
        match served {
            Ok(Ok(())) => {}
            Ok(Err(error)) => panic!("the server stopped with an error: {error}"),
            Err(error) => panic!("the server task failed: {error}"),
        }
    }
}
