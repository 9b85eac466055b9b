//! Active health checks: `GET /healthz` on every backend each interval.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::backends::{Backend, Backends};

/// Probes every backend forever (the task is aborted when the proxy stops).
pub async fn check_forever(
    backends: Arc<Backends>,
    interval: Duration,
    timeout: Duration,
    misses: u32,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let probes = backends.all().iter().cloned().map(|backend| {
            let backends = backends.clone();
            tokio::spawn(async move {
                let passed = tokio::time::timeout(timeout, probe(&backend))
                    .await
                    .unwrap_or(false);
                backends.record_probe(&backend, passed, misses);
            })
        });
        for probe in probes.collect::<Vec<_>>() {
            let _ = probe.await;
        }
    }
}

/// Whether the backend answers `/healthz` with a 2xx status.
async fn probe(backend: &Backend) -> bool {
    let Ok(mut stream) = TcpStream::connect(&backend.spec.address).await else {
        return false;
    };
    let request = format!(
        "GET /healthz HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        backend.spec.address
    );
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    // The status line is all we need: "HTTP/1.1 200 ...".
    let mut head = [0u8; 12];
    if stream.read_exact(&mut head).await.is_err() {
        return false;
    }
    head.starts_with(b"HTTP/1.") && head[9] == b'2'
}
