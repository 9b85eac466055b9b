//! What a run found: one struct, printed as a table or as one JSON object with the same figures.

use std::fmt::Write;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::process_usage::ProcessUsage;

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Latency {
    /// From a histogram in microseconds; zeros when it is empty.
    pub fn from_us(histogram: &Histogram<u64>) -> Latency {
        if histogram.is_empty() {
            return Latency::default();
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            max: ms(histogram.max()),
        }
    }
}

/// One rate of a fanout run.
#[derive(Debug, Clone, Serialize)]
pub struct FanoutStep {
    pub rate: f64,
    pub sent: u64,
    pub delivered: u64,
    pub lost: u64,
    pub delivered_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// What `--fault-command` did.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FaultOutcome {
    pub command: String,
    /// When it started, in seconds into the measured phase.
    pub at_s: f64,
    /// Its exit: `exit 0`, `signal 9`, or why it could not run.
    pub exit: String,
}

/// The figures of a run. The JSON keys are part of the command's contract (ops/bench reads
/// them): do not rename.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub transport: &'static str,
    pub clients: u32,
    pub connected: u64,
    pub connect_failed: u64,
    /// From the first attempt until the last client was connected and joined.
    pub connect_time_ms: f64,
    pub connect_p50_ms: f64,
    pub connect_p99_ms: f64,
    pub connect_max_ms: f64,
    pub sent: u64,
    /// Deliveries owed: for every message, the others in the sender's room when it was sent.
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    /// Error events, transport errors and unexpected disconnects.
    pub errors: u64,
    pub delivered_per_sec: f64,
    /// Delivery latency (churn: a whole connect → join → disconnect cycle).
    pub latency_ms: Latency,
    pub cpu_percent: Option<f64>,
    pub rss_before_kib: Option<u64>,
    pub rss_connected_kib: Option<u64>,
    pub rss_peak_kib: Option<u64>,
    pub rss_per_connection_bytes: Option<f64>,
    /// Each `--pid` on its own.
    pub processes: Vec<ProcessUsage>,
    pub steps: Vec<FanoutStep>,
    pub best_rate_under_limit: Option<f64>,
    pub cycles: Option<u64>,
    /// Bytes of the packets every client received over the whole run (framing not counted).
    pub received_bytes: u64,
    /// Length of the measured phase.
    pub duration_s: f64,
    /// Ctrl-C or SIGTERM ended the run early.
    pub interrupted: bool,
    /// Lost connections the clients reconnected (connection-state recovery asked for).
    pub reconnects: u64,
    /// Lost connections not back within the connect timeout (each also an error).
    pub reconnects_failed: u64,
    /// Sockets (two a client) the server restored on a reconnection: same pid, rooms kept,
    /// missed events replayed.
    pub sockets_recovered: u64,
    /// Sockets that came back new: the client joined its room again, what it missed is lost.
    pub sockets_not_recovered: u64,
    /// From a lost connection until the client was back, over the reconnections.
    pub back_after_ms: Latency,
    /// Messages sent on a connection lost before the server took them (not echoed, not
    /// replayed): not counted as owed, so not as lost.
    pub never_arrived: u64,
    pub fault: Option<FaultOutcome>,
}

impl Report {
    /// No message lost or duplicated, no error, every client connected, the run complete.
    pub fn passed(&self) -> bool {
        self.lost == 0
            && self.duplicates == 0
            && self.errors == 0
            && self.connect_failed == 0
            && !self.interrupted
    }

    /// The table's last line.
    pub fn verdict(&self) -> String {
        if self.passed() {
            return "OK: no losses, no errors".into();
        }
        let mut line = format!(
            "FAILED: {} lost, {} errors, {} connect failures",
            self.lost, self.errors, self.connect_failed
        );
        if self.duplicates > 0 {
            let _ = write!(line, ", {} duplicates", self.duplicates);
        }
        if self.interrupted {
            line.push_str(" (interrupted)");
        }
        line
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let mut row = |name: &str, value: String| {
            let _ = writeln!(out, "{name:<26}{value}");
        };
        row("scenario", self.scenario.into());
        row("transport", self.transport.into());
        row(
            "clients",
            format!(
                "{} ({} connected, {} failed)",
                self.clients, self.connected, self.connect_failed
            ),
        );
        row(
            "connect",
            format!(
                "{:.0} ms for all; each p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                self.connect_time_ms, self.connect_p50_ms, self.connect_p99_ms, self.connect_max_ms
            ),
        );
        if let Some(cycles) = self.cycles {
            row("cycles", cycles.to_string());
        }
        row("duration", format!("{:.2} s", self.duration_s));
        // Idle sends only with --probe.
        if self.scenario != "churn" && (self.scenario != "idle" || self.sent > 0) {
            row("sent", self.sent.to_string());
            row("expected", self.expected.to_string());
            row(
                "delivered",
                format!("{} ({:.0}/s)", self.delivered, self.delivered_per_sec),
            );
            row("lost", self.lost.to_string());
            row("duplicates", self.duplicates.to_string());
        }
        row("errors", self.errors.to_string());
        if let Some(fault) = &self.fault {
            row(
                "fault",
                format!("`{}` at {:.2} s: {}", fault.command, fault.at_s, fault.exit),
            );
        }
        if self.fault.is_some() || self.reconnects + self.reconnects_failed > 0 {
            row(
                "reconnects",
                format!(
                    "{} ({} failed); sockets recovered {}, not recovered {}",
                    self.reconnects,
                    self.reconnects_failed,
                    self.sockets_recovered,
                    self.sockets_not_recovered
                ),
            );
            let back = &self.back_after_ms;
            row(
                "back after a loss",
                format!(
                    "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    back.p50, back.p99, back.max
                ),
            );
            row("never arrived", self.never_arrived.to_string());
        }
        row(
            "received",
            format!("{} bytes of packets", self.received_bytes),
        );
        let latency = &self.latency_ms;
        let what = if self.scenario == "churn" {
            "cycle latency"
        } else {
            "latency"
        };
        row(
            what,
            format!(
                "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                latency.p50, latency.p90, latency.p99, latency.max
            ),
        );
        for step in &self.steps {
            row(
                &format!("step {} msg/s", step.rate),
                format!(
                    "sent {}, delivered {} ({:.0}/s), lost {}, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
                    step.sent,
                    step.delivered,
                    step.delivered_per_sec,
                    step.lost,
                    step.p50_ms,
                    step.p99_ms,
                    step.max_ms
                ),
            );
        }
        if self.scenario == "fanout" {
            row(
                "best under p99 limit",
                self.best_rate_under_limit
                    .map_or("none".into(), |rate| format!("{rate:.0} deliveries/s")),
            );
        }
        let kib = |v: Option<u64>| v.map_or("-".into(), |v| format!("{v} KiB"));
        if !self.processes.is_empty() {
            row(
                "server cpu",
                self.cpu_percent
                    .map_or("-".into(), |c| format!("{c:.1} % of one core")),
            );
            row(
                "server rss",
                format!(
                    "before {}, connected {}, peak {}",
                    kib(self.rss_before_kib),
                    kib(self.rss_connected_kib),
                    kib(self.rss_peak_kib)
                ),
            );
            if let Some(bytes) = self.rss_per_connection_bytes {
                row("server rss/connection", format!("{bytes:.0} bytes"));
            }
            if self.processes.len() > 1 {
                for process in &self.processes {
                    row(
                        &format!("  pid {}", process.pid),
                        format!(
                            "cpu {}, rss before {}, connected {}, peak {}",
                            process
                                .cpu_percent
                                .map_or("-".into(), |c| format!("{c:.1} %")),
                            kib(process.rss_before_kib),
                            kib(process.rss_connected_kib),
                            kib(process.rss_peak_kib)
                        ),
                    );
                }
            }
        }
        out.push_str(&self.verdict());
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean_run() -> Report {
        Report {
            scenario: "chat",
            transport: "websocket",
            clients: 10,
            connected: 10,
            connect_failed: 0,
            connect_time_ms: 5.0,
            connect_p50_ms: 1.0,
            connect_p99_ms: 2.0,
            connect_max_ms: 2.0,
            sent: 10,
            expected: 90,
            delivered: 90,
            lost: 0,
            duplicates: 0,
            errors: 0,
            delivered_per_sec: 45.0,
            latency_ms: Latency::default(),
            cpu_percent: None,
            rss_before_kib: None,
            rss_connected_kib: None,
            rss_peak_kib: None,
            rss_per_connection_bytes: None,
            processes: Vec::new(),
            steps: Vec::new(),
            best_rate_under_limit: None,
            cycles: None,
            received_bytes: 0,
            duration_s: 2.0,
            interrupted: false,
            reconnects: 0,
            reconnects_failed: 0,
            sockets_recovered: 0,
            sockets_not_recovered: 0,
            back_after_ms: Latency::default(),
            never_arrived: 0,
            fault: None,
        }
    }

    #[test]
    fn the_last_line_says_what_failed() {
        let report = clean_run();
        assert!(report.passed());
        assert!(report.table().ends_with("OK: no losses, no errors\n"));
        let failed = Report {
            lost: 3,
            errors: 2,
            connect_failed: 1,
            ..clean_run()
        };
        assert!(!failed.passed());
        assert!(failed
            .table()
            .ends_with("FAILED: 3 lost, 2 errors, 1 connect failures\n"));
        let duplicated = Report {
            duplicates: 4,
            ..clean_run()
        };
        assert_eq!(
            duplicated.verdict(),
            "FAILED: 0 lost, 0 errors, 0 connect failures, 4 duplicates"
        );
    }

    #[test]
    fn a_fault_shows_how_the_clients_came_back() {
        let report = Report {
            fault: Some(FaultOutcome {
                command: "kill -9 42".into(),
                at_s: 1.0,
                exit: "exit 0".into(),
            }),
            reconnects: 5,
            sockets_recovered: 9,
            sockets_not_recovered: 1,
            back_after_ms: Latency {
                p50: 120.0,
                p90: 200.0,
                p99: 250.0,
                max: 300.0,
            },
            ..clean_run()
        };
        let table = report.table();
        assert!(table.contains("`kill -9 42` at 1.00 s: exit 0"), "{table}");
        assert!(
            table.contains("5 (0 failed); sockets recovered 9, not recovered 1"),
            "{table}"
        );
        assert!(table.contains("p50 120.0 ms, p99 250.0 ms"), "{table}");
        // Without a fault or a reconnection, no such rows.
        assert!(!clean_run().table().contains("reconnects"));
    }

    #[test]
    fn json_keys_are_the_contract() {
        let json = serde_json::to_value(clean_run()).unwrap();
        let keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        for key in [
            "scenario",
            "transport",
            "clients",
            "connected",
            "connect_failed",
            "connect_time_ms",
            "connect_p50_ms",
            "connect_p99_ms",
            "connect_max_ms",
            "sent",
            "expected",
            "delivered",
            "lost",
            "duplicates",
            "errors",
            "delivered_per_sec",
            "latency_ms",
            "cpu_percent",
            "rss_before_kib",
            "rss_connected_kib",
            "rss_peak_kib",
            "rss_per_connection_bytes",
            "steps",
            "best_rate_under_limit",
            "cycles",
            "duration_s",
            "reconnects",
            "reconnects_failed",
            "sockets_recovered",
            "sockets_not_recovered",
            "back_after_ms",
            "never_arrived",
            "fault",
        ] {
            assert!(keys.contains(&key), "missing {key}");
        }
        let latency = json["latency_ms"].as_object().unwrap();
        assert_eq!(latency.len(), 4);
        for key in ["p50", "p90", "p99", "max"] {
            assert!(latency.contains_key(key));
        }
    }
}
