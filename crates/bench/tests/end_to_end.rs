//! `chat-bench` against our chat server on a loopback port: every scenario's figures add up,
//! a bad flag is a usage error, and a server that is not there is a failed run.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use testkit::clients::{run_bounded, ChildRun};
use testkit::BackgroundServer;

/// Each run takes a few seconds; this only bounds a hung run.
const RUN_DEADLINE: Duration = Duration::from_secs(60);

/// Our chat server with the store of one process; stopped once the runs are over.
fn server() -> BackgroundServer {
    let config = chat::ChatConfig {
        secret: b"chat-bench end-to-end secret".to_vec(),
        // The benchmark sends faster than a person; the default limit would drop messages.
        messages_per_second: 1_000_000,
        ..chat::ChatConfig::default()
    };
    let server = chat::ChatServer::new(config, Arc::new(chat::MemoryStore::default()));
    BackgroundServer::start(|listener, stopped| async move {
        let drain = async {
            let _ = stopped.await;
            Duration::from_secs(1)
        };
        server.serve(listener, drain).await
    })
}

fn bench(args: &[&str]) -> ChildRun {
    let mut command = Command::new(env!("CARGO_BIN_EXE_chat-bench"));
    command.args(args);
    run_bounded(command, RUN_DEADLINE, Duration::from_secs(2))
}

/// Runs `chat-bench --json --quiet ARGS` against `server`; the report, checked to be a
/// successful run.
fn bench_json(server: &BackgroundServer, args: &[&str]) -> Value {
    let mut all = vec!["--url", &server.url, "--json", "--quiet"];
    all.extend_from_slice(args);
    let run = bench(&all);
    assert_eq!(
        run.status.and_then(|s| s.code()),
        Some(0),
        "chat-bench {args:?} failed\n{}",
        run.report()
    );
    let report: Value = serde_json::from_str(run.stdout.trim())
        .unwrap_or_else(|error| panic!("no JSON report ({error})\n{}", run.report()));
    let clients = report["clients"].as_u64().unwrap();
    assert_eq!(report["connected"], clients, "{report}");
    assert_eq!(report["connect_failed"], 0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
    let latency = &report["latency_ms"];
    let (p50, p99, max) = (
        latency["p50"].as_f64().unwrap(),
        latency["p99"].as_f64().unwrap(),
        latency["max"].as_f64().unwrap(),
    );
    assert!(p50 <= p99 && p99 <= max, "latency out of order: {report}");
    let connect_p50 = report["connect_p50_ms"].as_f64().unwrap();
    let connect_max = report["connect_max_ms"].as_f64().unwrap();
    assert!(connect_p50 <= connect_max, "{report}");
    report
}

/// Rooms of 10: every message is owed to the 9 others, and each of them got it.
fn assert_every_message_reached_its_room(report: &Value) {
    let sent = report["sent"].as_u64().unwrap();
    assert!(sent > 0, "{report}");
    assert_eq!(report["expected"], sent * 9, "{report}");
    assert_eq!(report["delivered"], sent * 9, "{report}");
    assert!(
        report["delivered_per_sec"].as_f64().unwrap() > 0.0,
        "{report}"
    );
    assert!(
        report["latency_ms"]["max"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}

const CHAT: &[&str] = &[
    "--scenario",
    "chat",
    "--clients",
    "50",
    "--room-size",
    "10",
    "--rate",
    "2",
    "--duration",
    "2s",
];

/// The chat scenario over `transport`: everything sent reached the 9 others of its room.
fn chat_delivers_every_message_to_the_room(transport: &str) {
    let server = server();
    let report = bench_json(&server, &[CHAT, &["--transport", transport]].concat());
    server.stop();
    assert_eq!(report["transport"], transport);
    assert_every_message_reached_its_room(&report);
}

#[test]
fn chat_over_websocket_delivers_every_message_to_the_room() {
    chat_delivers_every_message_to_the_room("websocket");
}

#[test]
fn chat_over_polling_delivers_every_message_to_the_room() {
    chat_delivers_every_message_to_the_room("polling");
}

#[test]
fn fanout_reports_each_step() {
    let server = server();
    let report = bench_json(
        &server,
        &[
            "--scenario",
            "fanout",
            "--clients",
            "30",
            "--rates",
            "5,10",
            "--step-duration",
            "1s",
            // Both steps run even on a loaded machine.
            "--p99-limit",
            "60s",
        ],
    );
    server.stop();
    let steps = report["steps"].as_array().unwrap();
    assert_eq!(steps.len(), 2, "{report}");
    let mut sent = 0;
    for (step, rate) in steps.iter().zip([5.0, 10.0]) {
        assert_eq!(step["rate"], rate, "{report}");
        let step_sent = step["sent"].as_u64().unwrap();
        assert!(step_sent > 0, "{report}");
        // One sender, 29 others in its room.
        assert_eq!(step["delivered"], step_sent * 29, "{report}");
        assert_eq!(step["lost"], 0, "{report}");
        assert!(
            step["p50_ms"].as_f64() <= step["p99_ms"].as_f64(),
            "{report}"
        );
        sent += step_sent;
    }
    assert_eq!(report["sent"], sent, "{report}");
    assert_eq!(report["delivered"], sent * 29, "{report}");
    assert!(
        report["best_rate_under_limit"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}

#[test]
fn churn_counts_cycles() {
    let server = server();
    let report = bench_json(
        &server,
        &["--scenario", "churn", "--clients", "10", "--duration", "2s"],
    );
    server.stop();
    assert!(report["cycles"].as_u64().unwrap() >= 10, "{report}");
}

#[test]
fn idle_samples_the_watched_process() {
    let server = server();
    let pid = std::process::id().to_string();
    let report = bench_json(
        &server,
        &[
            "--scenario",
            "idle",
            "--clients",
            "20",
            "--duration",
            "1s",
            "--pid",
            &pid,
        ],
    );
    server.stop();
    for figure in ["rss_before_kib", "rss_connected_kib", "rss_peak_kib"] {
        assert!(report[figure].as_u64().unwrap() > 0, "{figure}: {report}");
    }
    assert!(report["cpu_percent"].as_f64().unwrap() >= 0.0, "{report}");
    assert!(report["rss_per_connection_bytes"].is_number(), "{report}");
    assert_eq!(
        report["processes"][0]["pid"],
        std::process::id(),
        "{report}"
    );
}

#[test]
fn idle_with_probe_sends_one_message_in_every_room_and_counts_its_deliveries() {
    let server = server();
    // Rooms of 10, 10 and 5: one message each, owed to 9, 9 and 4 members.
    let report = bench_json(
        &server,
        &[
            "--scenario",
            "idle",
            "--clients",
            "25",
            "--duration",
            "200ms",
            "--probe",
        ],
    );
    server.stop();
    assert_eq!(report["sent"], 3, "{report}");
    assert_eq!(report["expected"], 22, "{report}");
    assert_eq!(report["delivered"], 22, "{report}");
}

#[test]
fn a_bad_flag_is_one_line_and_exit_2() {
    let run = bench(&["--scenario", "chat", "--clients", "many"]);
    assert_eq!(
        run.status.and_then(|s| s.code()),
        Some(2),
        "{}",
        run.report()
    );
    assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.report());
    assert!(run.stderr.contains("--clients"), "{}", run.report());
}

#[test]
fn nobody_listening_is_a_failed_run() {
    // A port reserved for this test that nothing listens on.
    let port = testkit::port();
    let url = format!("http://127.0.0.1:{port}");
    let run = bench(&[
        "--url",
        &url,
        "--scenario",
        "chat",
        "--clients",
        "5",
        "--duration",
        "1s",
        "--connect-timeout",
        "2s",
    ]);
    assert_eq!(
        run.status.and_then(|s| s.code()),
        Some(1),
        "{}",
        run.report()
    );
    let last = run.stdout.trim().lines().last().unwrap_or("");
    assert_eq!(
        last,
        "FAILED: 0 lost, 0 errors, 5 connect failures",
        "{}",
        run.report()
    );
    assert!(
        run.stdout.contains("(0 connected, 5 failed)"),
        "{}",
        run.report()
    );
    // A refused connection fails at once: no waiting for the connect timeout or a drain.
    assert!(
        run.elapsed < Duration::from_secs(10),
        "took {:?}",
        run.elapsed
    );
}

#[test]
fn a_fault_command_runs_once_mid_run_and_is_reported() {
    let server = server();
    let marker = std::env::temp_dir().join(format!("chat-bench-fault-{}", std::process::id()));
    let _ = std::fs::remove_file(&marker);
    let command = format!("echo struck >> '{}'", marker.display());
    let report = bench_json(
        &server,
        &[
            CHAT,
            &["--fault-after", "500ms", "--fault-command", &command],
        ]
        .concat(),
    );
    server.stop();
    let struck = std::fs::read_to_string(&marker).unwrap_or_default();
    let _ = std::fs::remove_file(&marker);
    assert_eq!(struck, "struck\n", "the command ran once: {report}");
    let fault = &report["fault"];
    assert_eq!(fault["command"], command.as_str(), "{report}");
    assert_eq!(fault["exit"], "exit 0", "{report}");
    let at = fault["at_s"].as_f64().unwrap();
    // Not before its time; late only by what a loaded machine adds.
    assert!((0.5..5.0).contains(&at), "{report}");
    // Nothing broke: no client had to come back.
    assert_eq!(report["reconnects"], 0, "{report}");
    assert_eq!(report["sockets_recovered"], 0, "{report}");
    assert_every_message_reached_its_room(&report);
}

#[test]
fn a_failing_fault_command_fails_the_run() {
    let server = server();
    let mut args = vec!["--url", &server.url, "--json", "--quiet"];
    args.extend_from_slice(CHAT);
    args.extend_from_slice(&["--fault-after", "200ms", "--fault-command", "exit 3"]);
    let run = bench(&args);
    server.stop();
    assert_eq!(
        run.status.and_then(|s| s.code()),
        Some(1),
        "{}",
        run.report()
    );
    let report: Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(report["fault"]["exit"], "exit 3", "{report}");
    assert_eq!(report["errors"], 1, "{report}");
}

#[test]
fn fault_flags_are_checked() {
    for (args, says) in [
        (&["--fault-after", "1s"][..], "--fault-command"),
        (&["--fault-command", "true"][..], "--fault-after"),
        (
            &["--fault-after", "10s", "--fault-command", "true"][..],
            "--duration",
        ),
        (
            &["--fault-after", "soon", "--fault-command", "true"][..],
            "soon",
        ),
        (
            &["--fault-after", "1s", "--fault-command", " "][..],
            "empty",
        ),
    ] {
        let mut all = vec!["--scenario", "chat", "--duration", "2s"];
        all.extend_from_slice(args);
        let run = bench(&all);
        assert_eq!(
            run.status.and_then(|s| s.code()),
            Some(2),
            "{args:?}\n{}",
            run.report()
        );
        assert_eq!(run.stderr.trim().lines().count(), 1, "{}", run.report());
        assert!(run.stderr.contains(says), "{args:?}: {}", run.report());
    }
    let run = bench(&[
        "--scenario",
        "idle",
        "--fault-after",
        "1s",
        "--fault-command",
        "true",
    ]);
    assert_eq!(
        run.status.and_then(|s| s.code()),
        Some(2),
        "{}",
        run.report()
    );
    assert!(run.stderr.contains("chat only"), "{}", run.report());
}
