//! Active health checks: `GET /healthz` on every backend each interval.

use std::sync::Arc;
use std::time::Duration;

use crate::backends::Backends;
use crate::probe;

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
                let probe = probe::check(&backend.spec.address, Some("/healthz"));
                let passed = matches!(tokio::time::timeout(timeout, probe).await, Ok(Ok(true)));
                backends.record_probe(&backend, passed, misses);
            })
        });
        for probe in probes.collect::<Vec<_>>() {
            let _ = probe.await;
        }
    }
}
