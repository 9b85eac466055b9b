//! `/metrics`: a snapshot in the Prometheus exposition format, written by `prometheus-client`
//! (OpenMetrics text, which Prometheus asks for first; the same text, less its `# EOF`, is
//! served as the classic text format to clients that ask for that).

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};

use super::events::{Labels, Observer};
use super::snapshot::Snapshot;
use crate::control::Status;
use crate::worker_stats::Timings;

/// The content types of the two formats.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
pub const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Whether a scraper asked for OpenMetrics (Prometheus does, first).
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    accept.is_some_and(|accept| accept.contains("application/openmetrics-text"))
}

/// A histogram a worker reported (see [`Timings`]), shown as it came.
#[derive(Debug, Default)]
struct Reported(std::sync::Mutex<Timings>);

impl Reported {
    fn set(&self, timings: Timings) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = timings;
    }
}

impl TypedMetric for Reported {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for Reported {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let timings = self.0.lock().unwrap_or_else(|p| p.into_inner());
        // Upper bounds with the counts of their own bucket; the encoder adds them up. The
        // last bucket is +Inf, which the encoder writes for f64::MAX.
        let buckets: Vec<(f64, u64)> = timings
            .bounds
            .iter()
            .copied()
            .chain([f64::MAX])
            .zip(timings.counts.iter().copied())
            .collect();
        let count = timings.counts.iter().sum();
        encoder.encode_histogram::<NoLabelSet>(timings.sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

type Gauges = Family<Labels, Gauge<f64, AtomicU64>>;
type IntGauges = Family<Labels, Gauge>;
type Counters = Family<Labels, Counter>;
type FloatCounters = Family<Labels, Counter<f64, AtomicU64>>;

/// The metrics of `snapshot`, in OpenMetrics text (`openmetrics`) or the classic text format.
pub fn exposition(snapshot: &Snapshot, observer: &Observer, openmetrics: bool) -> String {
    let mut registry = Registry::with_prefix("chatctl");
    let up = IntGauges::default();
    let status = IntGauges::default();
    let uptime = Gauges::default();
    let cpu = FloatCounters::default();
    let memory = IntGauges::default();
    let connections = IntGauges::default();
    let sessions = IntGauges::default();
    let sockets = IntGauges::default();
    let rooms = IntGauges::default();
    let packets_in = Counters::default();
    let packets_out = Counters::default();
    let refused = Counters::default();
    let closed = Counters::default();
    let dropped = Counters::default();
    let recovery = Counters::default();
    let broadcasts = Counters::default();
    let deliveries = Counters::default();
    let redis_connected = IntGauges::default();
    let redis_errors = Counters::default();
    let redis_round_trip = Family::<Labels, Reported>::default();
    let master_uptime = Gauges::default();
    let app = label_value(&snapshot.status.name);
    master_uptime
        .get_or_create(&vec![("app".into(), app.clone())])
        .set(snapshot.status.uptime_ms as f64 / 1000.0);
    for (worker, details) in snapshot.status.workers.iter().zip(&snapshot.details) {
        let labels = observer.worker_labels(worker.id);
        let with = |name: &str, value: &str| {
            let mut labels = labels.clone();
            labels.push((name.into(), label_value(value)));
            labels
        };
        up.get_or_create(&labels)
            .set(i64::from(worker.status == Status::Online));
        status
            .get_or_create(&with("status", worker.status.as_str()))
            .set(1);
        uptime
            .get_or_create(&labels)
            .set(worker.uptime_ms as f64 / 1000.0);
        cpu.get_or_create(&labels).inc_by(details.cpu_seconds);
        memory
            .get_or_create(&labels)
            .set(i64::try_from(worker.memory_bytes).unwrap_or(i64::MAX));
        connections
            .get_or_create(&labels)
            .set(i64::try_from(worker.connections).unwrap_or(i64::MAX));
        let stats = &details.stats;
        packets_in.get_or_create(&labels).inc_by(stats.packets_in);
        packets_out.get_or_create(&labels).inc_by(stats.packets_out);
        for transport in ["polling", "websocket"] {
            let count = stats.sessions.get(transport).copied().unwrap_or(0);
            sessions
                .get_or_create(&with("transport", transport))
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
        for (namespace, count) in &stats.sockets {
            sockets
                .get_or_create(&with("namespace", namespace))
                .set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
        for (namespace, count) in &stats.rooms {
            rooms
                .get_or_create(&with("namespace", namespace))
                .set(i64::try_from(*count).unwrap_or(i64::MAX));
        }
        for (reason, count) in &stats.sessions_closed {
            closed.get_or_create(&with("reason", reason)).inc_by(*count);
        }
        for (reason, count) in &stats.handshakes_refused {
            refused
                .get_or_create(&with("reason", reason))
                .inc_by(*count);
        }
        broadcasts.get_or_create(&labels).inc_by(stats.broadcasts);
        deliveries.get_or_create(&labels).inc_by(stats.deliveries);
        if let Some(connected) = stats.redis_connected {
            redis_connected
                .get_or_create(&labels)
                .set(i64::from(connected));
            redis_errors
                .get_or_create(&labels)
                .inc_by(stats.redis_errors);
        }
        if let Some(timings) = &stats.redis_round_trip {
            redis_round_trip.get_or_create(&labels).set(timings.clone());
        }
        for (cause, count) in &worker.dropped {
            dropped.get_or_create(&with("cause", cause)).inc_by(*count);
        }
        for (what, count) in &stats.recovery {
            recovery.get_or_create(&with("what", what)).inc_by(*count);
        }
        // Every cause from the start, so `increase()` sees the first restart of each.
        for cause in details.restarts_by_cause.keys() {
            let _ = observer.restarts.get_or_create(&with("cause", cause));
        }
    }
    registry.register("up", "1 while the worker is online", up);
    registry.register(
        "status",
        "1 for the worker's status as chatctl list shows it (launching, online, stopping, stopped, waiting-restart, errored)",
        status,
    );
    registry.register(
        "restarts",
        "Replacements of a worker's process, by cause: crash, health (missed probes), memory (above --max-memory), reload, restart (chatctl restart)",
        observer.restarts.clone(),
    );
    registry.register_with_unit(
        "uptime",
        "Time since the worker's current process started",
        Unit::Seconds,
        uptime,
    );
    registry.register_with_unit(
        "cpu",
        "CPU time (user and system) of the worker's current process",
        Unit::Seconds,
        cpu,
    );
    registry.register_with_unit(
        "resident_memory",
        "Resident memory of the worker's current process",
        Unit::Bytes,
        memory,
    );
    registry.register(
        "connections",
        "Open client sessions of the worker",
        connections,
    );
    registry.register(
        "engineio_sessions",
        "Open Engine.IO sessions of the worker, by transport",
        sessions,
    );
    registry.register(
        "socketio_sockets",
        "Connected Socket.IO sockets of the worker, by namespace",
        sockets,
    );
    registry.register(
        "socketio_rooms",
        "Rooms with sockets of the worker, by namespace (the sockets' own rooms apart)",
        rooms,
    );
    registry.register(
        "packets_received",
        "Engine.IO packets received from clients by the worker's current process",
        packets_in,
    );
    registry.register(
        "packets_sent",
        "Engine.IO packets queued for clients by the worker's current process",
        packets_out,
    );
    registry.register(
        "engineio_sessions_closed",
        "Engine.IO sessions the worker's current process closed or saw end, by reason (slow_client: the client did not read its queue in time)",
        closed,
    );
    registry.register(
        "handshakes_refused",
        "Engine.IO handshakes the worker's current process refused, by reason",
        refused,
    );
    registry.register(
        "broadcasts",
        "Socket.IO broadcasts emitted by the worker's current process",
        broadcasts,
    );
    registry.register(
        "deliveries",
        "Sockets of the worker's current process that a broadcast (its own or another worker's) reached",
        deliveries,
    );
    registry.register(
        "redis_connected",
        "1 while the worker's Redis connection works (workers with --redis only)",
        redis_connected,
    );
    registry.register(
        "redis_errors",
        "Redis commands of the worker's current process that failed for an outage",
        redis_errors,
    );
    registry.register_with_unit(
        "redis_round_trip",
        "How long the worker's runs of Redis commands took, answered or not (workers with --redis only)",
        Unit::Seconds,
        redis_round_trip,
    );
    registry.register(
        "dropped_messages",
        "Messages lost by or for the worker's current process, by cause",
        dropped,
    );
    registry.register(
        "recovery",
        "Connection-state recovery in the worker's current process: attempts (clients back with a private id), recovered (given their sockets back), replayed (events replayed to them), gaps (numbered events it never got)",
        recovery,
    );
    registry.register_with_unit(
        "reload_duration",
        "Time to replace one worker in a rolling reload (new process ready, old one draining)",
        Unit::Seconds,
        observer.reload_seconds.clone(),
    );
    registry.register_with_unit(
        "restart_duration",
        "Time from a worker's exit (or chatctl restart) to its replacement being ready, by cause",
        Unit::Seconds,
        observer.restart_seconds.clone(),
    );
    registry.register_with_unit(
        "master_uptime",
        "Time since the master started",
        Unit::Seconds,
        master_uptime,
    );
    let handoffs = Counters::default();
    let outcome = |name: &str| vec![("app".into(), app.clone()), ("outcome".into(), name.into())];
    handoffs
        .get_or_create(&outcome("handed"))
        .inc_by(observer.handed_off.get());
    handoffs
        .get_or_create(&outcome("refused"))
        .inc_by(observer.refused.get());
    registry.register(
        "handoffs",
        "Connections the master accepted and handed to a worker, or refused with 503 (sticky scheduling)",
        handoffs,
    );
    registry
        .sub_registry_with_label(("app".into(), app.clone().into()))
        .register_with_unit(
            "dispatch_duration",
            "From the master accepting a connection to handing it to a worker, the client's time to send its request line included (sticky scheduling)",
            Unit::Seconds,
            observer.dispatch_seconds.clone(),
        );
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut text, &registry);
    if openmetrics {
        text
    } else {
        classic_text(&text)
    }
}

/// `value` escaped for a label: `prometheus-client` 0.24 writes label values as given, and a
/// namespace's name (or a cause a worker reports) may hold a quote, a backslash or a newline.
pub fn label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The classic text format (0.0.4) of an OpenMetrics text, which `prometheus-client` alone
/// writes. The samples are the same; the metadata differs: a counter's HELP and TYPE name its
/// samples (`x_total`, where OpenMetrics names the family `x`), and there are no UNIT or EOF
/// lines.
pub fn classic_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE "))
        .filter_map(|rest| rest.strip_suffix(" counter"))
        .collect();
    let mut text = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let metadata = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|kind| Some((kind, line.strip_prefix(kind)?)));
        match metadata {
            Some((kind, rest)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                let suffix = if counters.contains(name) {
                    "_total"
                } else {
                    ""
                };
                text.push_str(&format!("{kind}{name}{suffix} {tail}"));
            }
            None => text.push_str(line),
        }
        text.push('\n');
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::{AppStatus, WorkerStatus};
    use crate::master::admin::events::tests::observer;
    use crate::master::admin::snapshot::WorkerDetails;
    use crate::worker_stats::WorkerStats;

    fn snapshot() -> Snapshot {
        let worker = |id: usize, status: Status| WorkerStatus {
            id,
            pid: Some(100 + id as u32),
            status,
            uptime_ms: 1500,
            restarts: 0,
            cpu_percent: 1.0,
            memory_bytes: 20 << 20,
            connections: 7,
            sid_tag: None,
            last_error: None,
            dropped: [("relay_queue_full".to_owned(), 3)].into(),
            recovery: Default::default(),
        };
        let details = |id: usize| WorkerDetails {
            id,
            cpu_seconds: 0.25,
            stats: WorkerStats {
                packets_in: 11,
                packets_out: 22,
                sessions: [("websocket".to_owned(), 5)].into(),
                sockets: [("/chat \"com\"\\\n".to_owned(), 4)].into(),
                rooms: [("/chat_com".to_owned(), 2)].into(),
                sessions_closed: [("slow_client".to_owned(), 4)].into(),
                handshakes_refused: [("max_sessions".to_owned(), 1)].into(),
                broadcasts: 3,
                deliveries: 9,
                redis_connected: (id == 1).then_some(false),
                redis_errors: 2,
                redis_round_trip: (id == 1).then(|| Timings {
                    bounds: vec![0.001, 0.01],
                    counts: vec![5, 2, 1],
                    sum: 0.5,
                }),
                recovery: [("recovered".to_owned(), 6)].into(),
            },
            restarts_by_cause: [("crash", 0), ("reload", 0)].into(),
        };
        Snapshot {
            status: AppStatus {
                name: "chat".into(),
                master_pid: 1,
                version: "0.1.0".into(),
                listen: "127.0.0.1:3000".into(),
                scheduling: "sticky".into(),
                uptime_ms: 2000,
                workers: vec![worker(0, Status::Online), worker(1, Status::WaitingRestart)],
                spares: Vec::new(),
                recovery: None,
                bridge_dropped: Default::default(),
            },
            time_ms: 0,
            details: vec![details(0), details(1)],
        }
    }

    #[test]
    fn every_worker_has_its_series_labelled_by_app_and_worker() {
        let text = exposition(&snapshot(), &observer(), true);
        for line in [
            r#"chatctl_up{app="chat",worker="0"} 1"#,
            r#"chatctl_up{app="chat",worker="1"} 0"#,
            r#"chatctl_status{app="chat",worker="1",status="waiting-restart"} 1"#,
            r#"chatctl_packets_received_total{app="chat",worker="1"} 11"#,
            r#"chatctl_packets_sent_total{app="chat",worker="0"} 22"#,
            r#"chatctl_connections{app="chat",worker="0"} 7"#,
            r#"chatctl_resident_memory_bytes{app="chat",worker="0"} 20971520"#,
            r#"chatctl_cpu_seconds_total{app="chat",worker="0"} 0.25"#,
            r#"chatctl_engineio_sessions{app="chat",worker="0",transport="websocket"} 5"#,
            r#"chatctl_engineio_sessions{app="chat",worker="0",transport="polling"} 0"#,
            r#"chatctl_dropped_messages_total{app="chat",worker="0",cause="relay_queue_full"} 3"#,
            r#"chatctl_handshakes_refused_total{app="chat",worker="0",reason="max_sessions"} 1"#,
            r#"chatctl_restarts_total{app="chat",worker="1",cause="crash"} 0"#,
            r#"chatctl_broadcasts_total{app="chat",worker="0"} 3"#,
            r#"chatctl_engineio_sessions_closed_total{app="chat",worker="0",reason="slow_client"} 4"#,
            r#"chatctl_socketio_rooms{app="chat",worker="1",namespace="/chat_com"} 2"#,
            r#"chatctl_deliveries_total{app="chat",worker="1"} 9"#,
            r#"chatctl_redis_connected{app="chat",worker="1"} 0"#,
            r#"chatctl_redis_errors_total{app="chat",worker="1"} 2"#,
            r#"chatctl_redis_round_trip_seconds_bucket{le="0.001",app="chat",worker="1"} 5"#,
            r#"chatctl_redis_round_trip_seconds_bucket{le="0.01",app="chat",worker="1"} 7"#,
            r#"chatctl_redis_round_trip_seconds_bucket{le="+Inf",app="chat",worker="1"} 8"#,
            r#"chatctl_redis_round_trip_seconds_count{app="chat",worker="1"} 8"#,
            r#"chatctl_redis_round_trip_seconds_sum{app="chat",worker="1"} 0.5"#,
            "# TYPE chatctl_restarts counter",
            "# UNIT chatctl_uptime_seconds seconds",
        ] {
            assert!(text.contains(line), "missing {line} in:\n{text}");
        }
        // A namespace's name is a label value, escaped as the format says.
        assert!(
            text.contains(r#"namespace="/chat \"com\"\\\n"} 4"#),
            "{text}"
        );
        // A worker without Redis has no Redis series.
        assert!(!text.contains(r#"chatctl_redis_connected{app="chat",worker="0"}"#));
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn the_classic_text_names_counters_by_their_samples_and_has_no_openmetrics_lines() {
        let text = exposition(&snapshot(), &observer(), false);
        assert!(text.contains("# TYPE chatctl_restarts_total counter\n"));
        assert!(text.contains("# HELP chatctl_packets_sent_total Engine.IO"));
        assert!(text.contains("# TYPE chatctl_up gauge\n"));
        assert!(!text.contains("# UNIT"));
        assert!(!text.contains("# EOF"));
        // Every sample line survives unchanged (in a family, series come in any order).
        let samples = |t: &str| -> Vec<String> {
            let mut lines: Vec<String> = t
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(str::to_owned)
                .collect();
            lines.sort();
            lines
        };
        assert_eq!(
            samples(&text),
            samples(&exposition(&snapshot(), &observer(), true))
        );
    }

    #[test]
    fn prometheus_gets_openmetrics_and_others_the_classic_format() {
        let prometheus = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(!wants_openmetrics(Some("text/plain")));
        assert!(!wants_openmetrics(None));
    }
}
