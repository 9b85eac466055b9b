//! The admin address as an operator's monitoring sees it: a real Prometheus (Debian's
//! `prometheus`) scrapes `chatctl start -i 2 --admin ...` while real users (npm
//! socket.io-client) chat; its HTTP API shows every worker's connections and packet counters,
//! growing; `promtool check metrics` accepts the exposition; a `kill -9` of a worker shows as
//! a restart with cause `crash`. And the address is the owner's: no token, no action.

mod support;

use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::admin::ChattingApp;
use support::{all_online, succeeded, worker_pids, App};
use testkit::prometheus::{Prometheus, Sample};

/// Prometheus scrapes this often; the workers report as often (`--health-interval`).
const SCRAPE: Duration = Duration::from_millis(500);

/// Each worker's value of a query, by its `worker` label.
fn by_worker(samples: &[Sample]) -> BTreeMap<String, f64> {
    samples
        .iter()
        .map(|s| (s.label("worker").to_owned(), s.value))
        .collect()
}

/// Waits until Prometheus answers `promql` with a value for each of `workers` that satisfies
/// `good`; returns them.
fn wait_for_workers(
    prometheus: &Prometheus,
    promql: &str,
    workers: &[&str],
    good: impl Fn(&str, f64) -> bool,
) -> BTreeMap<String, f64> {
    let found = support::wait_for_value(promql, || {
        let values = by_worker(&prometheus.query(promql));
        workers
            .iter()
            .all(|w| values.get(*w).is_some_and(|v| good(w, *v)))
            .then_some(values)
    });
    found.unwrap_or_else(|| {
        panic!(
            "prometheus never had {promql} for workers {workers:?} as expected; it has {:?}; targets {:?}",
            prometheus.query(promql),
            prometheus.targets()
        )
    })
}

#[test]
fn prometheus_scrapes_every_workers_connections_packets_and_crashes() {
    let chatting = ChattingApp::start("metrics", 8);
    let (app, admin) = (&chatting.app, &chatting.admin);

    // The exposition itself passes Prometheus's own linter.
    let (status, exposition) =
        support::http_get(chatting.admin_port, "/metrics").expect("GET /metrics");
    assert_eq!(status, 200, "{exposition}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus): run ops/test-deps.sh");
    std::io::Write::write_all(promtool.stdin.as_mut().unwrap(), exposition.as_bytes()).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics failed:\n{}{}\non:\n{exposition}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );

    let prometheus = Prometheus::start(std::slice::from_ref(admin), SCRAPE);
    let workers = ["0", "1"];
    // Every worker has users (handshakes go to the least loaded one) and counts their packets.
    wait_for_workers(&prometheus, "chatctl_connections", &workers, |_, v| v > 0.0);
    let received = wait_for_workers(
        &prometheus,
        "chatctl_packets_received_total",
        &workers,
        |_, v| v > 0.0,
    );
    let sent = wait_for_workers(
        &prometheus,
        "chatctl_packets_sent_total",
        &workers,
        |_, v| v > 0.0,
    );
    // ... and the counters grow while the users chat.
    wait_for_workers(
        &prometheus,
        "chatctl_packets_received_total",
        &workers,
        |w, v| v > received[w],
    );
    wait_for_workers(
        &prometheus,
        "chatctl_packets_sent_total",
        &workers,
        |w, v| v > sent[w],
    );
    wait_for_workers(&prometheus, "chatctl_up", &workers, |_, v| v == 1.0);
    // The users' lines are broadcasts to their room, delivered to sockets on the workers; the
    // master handed every connection over.
    let app_wide = [""];
    let total = |metric: &str| format!("sum({metric})");
    let broadcasts = wait_for_workers(
        &prometheus,
        &total("chatctl_broadcasts_total"),
        &app_wide,
        |_, v| v > 0.0,
    );
    wait_for_workers(
        &prometheus,
        &total("chatctl_broadcasts_total"),
        &app_wide,
        |w, v| v > broadcasts[w],
    );
    wait_for_workers(
        &prometheus,
        &total("chatctl_deliveries_total"),
        &app_wide,
        |_, v| v > 0.0,
    );
    wait_for_workers(
        &prometheus,
        "chatctl_handoffs_total{outcome=\"handed\"}",
        &app_wide,
        |_, v| v >= 8.0,
    );
    wait_for_workers(
        &prometheus,
        "chatctl_dispatch_duration_seconds_count",
        &app_wide,
        |_, v| v >= 8.0,
    );
    let sockets = prometheus.query("chatctl_socketio_sockets{namespace=\"/chat_com\"}");
    assert!(
        sockets.iter().map(|s| s.value).sum::<f64>() > 0.0,
        "{sockets:?}"
    );
    // Every user is in the room "metrics": the workers holding their /chat_infra sockets
    // have that room.
    wait_for_workers(
        &prometheus,
        "sum(chatctl_socketio_rooms{namespace=\"/chat_infra\"})",
        &app_wide,
        |_, v| v >= 1.0,
    );

    // A kill -9 is a crash restart of that worker, and of no other.
    let crashes = "chatctl_restarts_total{cause=\"crash\"}";
    wait_for_workers(&prometheus, crashes, &workers, |_, v| v == 0.0);
    let status = app.status().expect("status");
    let victim = worker_pids(&status)[0];
    support::signal(victim, libc::SIGKILL);
    let after = wait_for_workers(&prometheus, crashes, &workers, |w, v| {
        if w == "0" {
            v == 1.0
        } else {
            v == 0.0
        }
    });
    assert_eq!(after["1"], 0.0);
    wait_for_workers(
        &prometheus,
        "chatctl_restart_duration_seconds_count{cause=\"crash\"}",
        &app_wide,
        |_, v| v >= 1.0,
    );
    app.wait_listed("the killed worker back", |a| all_online(a, 2));

    // Every query of ops/grafana's dashboard is PromQL this Prometheus runs, over these
    // metrics (Grafana's variables given the values it would give).
    let workspace = testkit::clients::workspace_root();
    let dashboard = std::fs::read_to_string(workspace.join("ops/grafana/chatctl.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let panels = dashboard["panels"].as_array().expect("panels");
    for target in panels.iter().flat_map(|p| p["targets"].as_array().unwrap()) {
        let expr = target["expr"].as_str().expect("an expr");
        let promql = expr.replace("$app", ".+").replace("$__rate_interval", "1m");
        if let Err(error) = prometheus.try_query(&promql) {
            panic!("the Grafana query {expr} fails: {error}");
        }
    }
    let connections = "sum by (app) (chatctl_connections{app=~\".+\"})";
    assert!(!prometheus.query(connections).is_empty());
    // ... and ops/prometheus's configuration and alerts are ones Prometheus accepts.
    let config = workspace.join("ops/prometheus/prometheus.yml");
    succeeded(
        &Command::new("promtool")
            .args(["check", "config"])
            .arg(&config)
            .output()
            .expect("promtool"),
    );
    let rules =
        std::fs::read_to_string(workspace.join("ops/prometheus/chatctl.rules.yml")).unwrap();
    for expr in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr: "))
    {
        if let Err(error) = prometheus.try_query(expr) {
            panic!("the alert expression {expr} fails: {error}");
        }
    }

    chatting.stop_chatting();
}

#[test]
fn the_admin_address_refuses_actions_without_the_token_and_reads_elsewhere() {
    let app = App::new("admin-access");
    let admin = format!("127.0.0.1:{}", testkit::port());
    app.start_ok(&["-i", "1", "--admin", &admin], &[]);
    let port: u16 = admin.rsplit(':').next().unwrap().parse().unwrap();
    let token_file = app.app_dir().join("admin-token");
    let token = std::fs::read_to_string(&token_file).expect("the admin token file is made");
    let token = token.trim();
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&token_file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the token file is the owner's alone");
    }
    // The token is nowhere on the master's command line or in its environment.
    let master = app.master_pid().expect("a master pid");
    let cmdline = std::fs::read(format!("/proc/{master}/cmdline")).unwrap();
    let environ = std::fs::read(format!("/proc/{master}/environ")).unwrap();
    for bytes in [&cmdline, &environ] {
        assert!(
            !String::from_utf8_lossy(bytes).contains(token),
            "the token leaked into /proc/{master}"
        );
    }

    let post = |path: &str, headers: &str| -> (u16, String) {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        write!(
            stream,
            "POST {path} HTTP/1.1\r\nHost: {admin}\r\n{headers}Content-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).unwrap();
        let status = response.split_whitespace().nth(1).unwrap().parse().unwrap();
        (status, response)
    };
    let (status, _) = post("/api/scale?instances=2", "");
    assert_eq!(status, 401);
    let wrong = "Authorization: Bearer not-the-token-at-all\r\n";
    assert_eq!(post("/api/scale?instances=2", wrong).0, 401);
    let auth = format!("Authorization: Bearer {token}\r\n");
    let foreign = format!("{auth}Origin: http://attacker.example\r\n");
    assert_eq!(post("/api/scale?instances=2", &foreign).0, 403);
    assert_eq!(
        support::workers(&app.status().unwrap()).len(),
        1,
        "no refused action changed the app"
    );
    let own = format!("{auth}Origin: http://{admin}\r\n");
    let (status, body) = post("/api/scale?instances=2", &own);
    assert_eq!(status, 200, "{body}");
    app.wait_listed("two online workers", |a| all_online(a, 2));
    // Reads are free on loopback; GET does not act.
    let (status, body) = support::http_get(port, "/api/status").unwrap();
    assert_eq!(status, 200);
    assert!(body.contains("\"workers\""), "{body}");
    assert_eq!(
        support::http_get(port, "/api/scale?instances=1").unwrap().0,
        405
    );
    let (status, page) = support::http_get(port, "/").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("/dashboard.js"), "{page}");
}

#[test]
fn an_admin_address_off_loopback_needs_the_token_to_read() {
    let app = App::new("admin-public");
    // Any address of this host that is not loopback: the wildcard is one.
    let port = testkit::port();
    let admin = format!("0.0.0.0:{port}");
    let token_file = app.home.join("token");
    std::fs::write(&token_file, "a-token-of-twenty-chars\n").unwrap();
    support::set_mode(&token_file, 0o644);
    let file = token_file.to_str().unwrap();
    let flags = ["-i", "1", "--admin", &admin, "--admin-token-file", file];
    let refused = app.start(&flags, &[]);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("chmod 600"), "{said}");

    support::set_mode(&token_file, 0o600);
    app.start_ok(&flags, &[]);
    let (status, body) = support::http_get(port, "/metrics").unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("Authorization: Bearer"), "{body}");
}

#[test]
fn a_workers_redis_connection_and_its_failures_are_exported() {
    let mut redis = testkit::redis::RedisServer::start();
    let app = App::new("admin-redis");
    let admin_port = testkit::port();
    let admin = format!("127.0.0.1:{admin_port}");
    let url = redis.url();
    let flags = [
        "-i",
        "1",
        "--admin",
        &admin,
        "--redis",
        &url,
        "--health-interval",
        "300ms",
    ];
    app.start_ok(&flags, &[]);
    let metric = |text: &str, name: &str| -> Option<f64> {
        let prefix = format!("{name}{{app=\"admin-redis\",worker=\"0\"}} ");
        text.lines()
            .find_map(|line| line.strip_prefix(&prefix))
            .and_then(|value| value.parse().ok())
    };
    let scrape = || {
        support::http_get(admin_port, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    };
    support::wait_until("redis_connected 1", || {
        metric(&scrape(), "chatctl_redis_connected") == Some(1.0)
    });
    assert_eq!(metric(&scrape(), "chatctl_redis_errors_total"), Some(0.0));
    // Its commands are timed (the worker's own refresh of its presence is one every 2 s).
    support::wait_until("timed Redis round trips", || {
        metric(&scrape(), "chatctl_redis_round_trip_seconds_count").is_some_and(|n| n >= 1.0)
    });
    redis.kill();
    support::wait_until("redis_connected 0 with errors counted", || {
        let text = scrape();
        metric(&text, "chatctl_redis_connected") == Some(0.0)
            && metric(&text, "chatctl_redis_errors_total").is_some_and(|n| n >= 1.0)
    });
}

#[test]
fn admin_flags_that_cannot_work_are_refused_in_one_line() {
    let app = App::new("admin-flags");
    let public = app.listen();
    let cases: [(&[&str], &str); 4] = [
        (&["--admin", "127.0.0.1:0"], "give the admin address a port"),
        (&["--admin", &public], "is the public address"),
        (&["--admin-token-file", "/tmp/token"], "needs --admin ADDR"),
        (&["--admin", "nonsense"], "invalid value 'nonsense'"),
    ];
    for (flags, said) in cases {
        let output = app.start(flags, &[]);
        assert_eq!(output.status.code(), Some(2), "{flags:?}");
        let lines = support::stderr_lines(&output);
        assert_eq!(lines.len(), 1, "{flags:?}: {lines:?}");
        assert!(lines[0].contains(said), "{flags:?}: {lines:?}");
    }
}
