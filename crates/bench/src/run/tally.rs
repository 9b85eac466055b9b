//! Adding up what a run measured into a [`Report`]: the totals, the latencies, each fanout step
//! and the watched processes' figures.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::shared::Shared;
use crate::config::Scenario;
use crate::process_usage::{self, ProcessWatch};
use crate::report::{FanoutStep, Latency, Report};
use crate::stats::new_histogram;

pub(super) fn fanout_step(
    shared: &Shared,
    phase: usize,
    rate: f64,
    sending: Duration,
) -> FanoutStep {
    let (sent, expected) = shared.sent(phase..phase + 1);
    let deliveries = shared.deliveries.phase(phase as u16);
    let latency = Latency::from_us(&deliveries.latency_us);
    FanoutStep {
        rate,
        sent,
        delivered: deliveries.delivered,
        lost: expected.saturating_sub(deliveries.delivered),
        delivered_per_sec: per_second(deliveries.delivered, sending),
        p50_ms: latency.p50,
        p99_ms: latency.p99,
        max_ms: latency.max,
    }
}

fn per_second(count: u64, over: Duration) -> f64 {
    if over.is_zero() {
        0.0
    } else {
        count as f64 / over.as_secs_f64()
    }
}

pub(super) fn build_report(
    shared: &Shared,
    watch: &ProcessWatch,
    measured: Duration,
    measured_phases: std::ops::Range<usize>,
    steps: Vec<FanoutStep>,
    first_attempt_us: u64,
) -> Report {
    let config = &shared.config;
    let (sent, expected) = shared.sent(measured_phases.clone());
    let mut delivered = 0;
    let mut duplicates = 0;
    let mut latency_us = new_histogram();
    for phase in measured_phases {
        let deliveries = shared.deliveries.phase(phase as u16);
        delivered += deliveries.delivered;
        duplicates += deliveries.duplicates;
        let _ = latency_us.add(&deliveries.latency_us);
    }
    if config.scenario == Scenario::Churn {
        if let Ok(cycles) = shared.cycle_latency_us.lock() {
            latency_us = cycles.clone();
        }
    }
    let connect = shared
        .connect_latency_us
        .lock()
        .map(|h| Latency::from_us(&h))
        .unwrap_or_default();
    let back_after_ms = shared
        .back_after_us
        .lock()
        .map(|h| Latency::from_us(&h))
        .unwrap_or_default();
    let fault = shared.fault.lock().ok().and_then(|f| f.clone());
    let connected = shared.connected.load(Ordering::Relaxed);
    let last_joined = shared.last_joined_us.load(Ordering::Relaxed);
    let processes = watch.processes.clone();
    let rss_before_kib = process_usage::sum(&processes, |p| p.rss_before_kib);
    let rss_connected_kib = process_usage::sum(&processes, |p| p.rss_connected_kib);
    let rss_per_connection_bytes = match (rss_before_kib, rss_connected_kib) {
        (Some(before), Some(after)) if connected > 0 => {
            Some((after as f64 - before as f64) * 1024.0 / connected as f64)
        }
        _ => None,
    };
    let best_rate_under_limit = (config.scenario == Scenario::Fanout)
        .then(|| {
            steps
                .iter()
                .filter(|s| s.p99_ms <= config.p99_limit.as_secs_f64() * 1000.0 && s.delivered > 0)
                .map(|s| s.delivered_per_sec)
                .fold(None, |best: Option<f64>, rate| {
                    Some(best.map_or(rate, |b| b.max(rate)))
                })
        })
        .flatten();
    Report {
        scenario: config.scenario.name(),
        transport: config.transport.name(),
        clients: config.clients,
        connected,
        connect_failed: shared.connect_failed.load(Ordering::Relaxed),
        connect_time_ms: if connected > 0 {
            last_joined.saturating_sub(first_attempt_us) as f64 / 1000.0
        } else {
            0.0
        },
        connect_p50_ms: connect.p50,
        connect_p99_ms: connect.p99,
        connect_max_ms: connect.max,
        sent,
        expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        duplicates,
        errors: shared.errors.load(Ordering::Relaxed),
        delivered_per_sec: per_second(delivered, measured),
        latency_ms: Latency::from_us(&latency_us),
        cpu_percent: process_usage::sum(&processes, |p| p.cpu_percent),
        rss_before_kib,
        rss_connected_kib,
        rss_peak_kib: process_usage::sum(&processes, |p| p.rss_peak_kib),
        rss_per_connection_bytes,
        processes,
        steps,
        best_rate_under_limit,
        cycles: (config.scenario == Scenario::Churn).then(|| shared.cycles.load(Ordering::Relaxed)),
        received_bytes: shared.received_bytes.load(Ordering::Relaxed),
        duration_s: measured.as_secs_f64(),
        interrupted: shared.interrupted.load(Ordering::Relaxed),
        reconnects: shared.reconnects.load(Ordering::Relaxed),
        reconnects_failed: shared.reconnects_failed.load(Ordering::Relaxed),
        sockets_recovered: shared.sockets_recovered.load(Ordering::Relaxed),
        sockets_not_recovered: shared.sockets_not_recovered.load(Ordering::Relaxed),
        back_after_ms,
        never_arrived: shared.never_arrived.load(Ordering::Relaxed),
        fault,
    }
}
