//! What a PM2 / Forever / Monit user expects of the supervisor with any program: a lone crash
//! is replaced at once, signals are chosen and sent by name. Real processes: `chatctl start`
//! daemonizes a master, which runs a small python3 program this test writes.

mod support;

use std::path::PathBuf;
use std::time::Instant;

use support::{
    all_online, http_get, http_get_on, wait_for_value, wait_until, worker_pids, workers, App,
};

/// An HTTP server on the socket the master passes (fd 3, LISTEN_FDS) that answers every GET
/// with its pid, says `pid PID serving` on stdout and `pid PID warming` on stderr as it starts,
/// and writes each signal it gets to stdout (`pid PID got SIGNAME`); SIGTERM and SIGINT end it.
const PID_SERVER: &str = r#"
import http.server, os, signal, socket, sys

def on_signal(number, frame):
    print("pid %d got %s" % (os.getpid(), signal.Signals(number).name), flush=True)
    if number != signal.SIGUSR2:
        os._exit(0)

for name in ("SIGTERM", "SIGINT", "SIGUSR2"):
    signal.signal(getattr(signal, name), on_signal)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = str(os.getpid()).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

print("pid %d warming" % os.getpid(), file=sys.stderr, flush=True)
print("pid %d serving" % os.getpid(), flush=True)
server = http.server.HTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
server.socket = socket.socket(fileno=3)
server.serve_forever()
"#;

/// Writes [`PID_SERVER`] into the app's home; the command line that runs it.
fn pid_server(app: &App) -> Vec<String> {
    let path: PathBuf = app.home.join("pid_server.py");
    std::fs::write(&path, PID_SERVER).expect("cannot write the test program");
    vec!["python3".into(), path.to_string_lossy().into_owned()]
}

/// The pid that answers `GET /` on the app's port, if one does.
fn serving_pid(app: &App) -> Option<u32> {
    http_get(app.port, "/")
        .ok()
        .filter(|(status, _)| *status == 200)
        .and_then(|(_, body)| body.trim().parse().ok())
}

/// With a restart delay far beyond the test's deadline, only an immediate first restart
/// brings the killed worker back in time; the second crash waits for the delay.
#[test]
fn a_first_crash_is_replaced_at_once() {
    let app = App::new("at-once");
    let program = pid_server(&app);
    let program: Vec<&str> = program.iter().map(String::as_str).collect();
    let flags = [
        "-i",
        "1",
        "--min-uptime",
        "100ms",
        "--restart-delay",
        "10m",
        "--restart-max-delay",
        "10m",
    ];
    app.start_ok(&flags, &program);
    let first = wait_for_value("the program to serve", || serving_pid(&app))
        .expect("the program never served");

    let killed_at = Instant::now();
    support::signal(first, libc::SIGKILL);
    let second = wait_for_value("the replacement to serve", || {
        serving_pid(&app).filter(|pid| *pid != first)
    })
    .unwrap_or_else(|| panic!("the killed worker was not replaced:\n{}", app.log_text()));
    eprintln!(
        "the replacement served {} ms after the kill",
        killed_at.elapsed().as_millis()
    );

    // A second crash within the reset window is a pattern: it waits for the restart delay.
    support::signal(second, libc::SIGKILL);
    let listed = app.wait_listed("the second crash to wait for its delay", |a| {
        workers(a)[0]["status"] == "waiting-restart"
    });
    assert_eq!(workers(&listed)[0]["restarts"], 2, "{listed}");
    assert!(!all_online(&listed, 1), "{listed}");
}

/// `--kill-signal SIGINT` is what stop sends first; `chatctl signal` reaches every worker, or
/// the one named, and refuses a worker that does not exist.
#[test]
fn stop_sends_the_kill_signal_and_signal_reaches_the_workers_named() {
    let app = App::new("signals");
    let program = pid_server(&app);
    let program: Vec<&str> = program.iter().map(String::as_str).collect();
    let flags = [
        "-i",
        "2",
        "--min-uptime",
        "100ms",
        "--kill-signal",
        "SIGINT",
    ];
    app.start_ok(&flags, &program);
    let listed = app.wait_listed("two online workers", |a| all_online(a, 2));
    let pids = worker_pids(&listed);
    let got = |pid: u32, name: &str| app.log_text().contains(&format!("pid {pid} got {name}"));
    // Online after --min-uptime is not the same as ready for signals: wait for its handlers.
    for pid in &pids {
        let serving = format!("pid {pid} serving");
        wait_until("the worker's signal handlers", || {
            app.log_text().contains(&serving)
        });
    }

    let one = app.run(&["signal", "USR2", &app.name, "1"]);
    assert!(
        one.status.success(),
        "{}",
        String::from_utf8_lossy(&one.stderr)
    );
    wait_until("worker 1 to get SIGUSR2", || got(pids[1], "SIGUSR2"));
    assert!(
        !got(pids[0], "SIGUSR2"),
        "worker 0 got the signal meant for worker 1"
    );

    let all = app.run(&["signal", "SIGUSR2", &app.name]);
    assert!(
        all.status.success(),
        "{}",
        String::from_utf8_lossy(&all.stderr)
    );
    wait_until("worker 0 to get SIGUSR2", || got(pids[0], "SIGUSR2"));

    let missing = app.run(&["signal", "USR2", &app.name, "7"]);
    assert!(
        !missing.status.success(),
        "a signal to worker 7 of 2 succeeded"
    );
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("no worker 7"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );
    let bogus = app.run(&["signal", "SIGNOPE", &app.name]);
    assert_eq!(
        bogus.status.code(),
        Some(2),
        "an unknown signal is not a usage error"
    );

    let stop = app.run(&["stop", &app.name]);
    assert!(
        stop.status.success(),
        "{}",
        String::from_utf8_lossy(&stop.stderr)
    );
    for pid in pids {
        wait_until("the stopped worker to log SIGINT", || got(pid, "SIGINT"));
    }
    assert!(
        !app.log_text().contains("got SIGTERM"),
        "{}",
        app.log_text()
    );
}

fn read_log(app: &App, file: &str) -> String {
    std::fs::read_to_string(app.app_dir().join("logs").join(file)).unwrap_or_default()
}

/// Whether `text` starts with an ISO 8601 UTC time with milliseconds and a space
/// (`2026-12-02T20:01:07.123Z `).
fn starts_with_iso_time(text: &str) -> bool {
    let shape = "dddd-dd-ddTdd:dd:dd.dddZ ";
    text.len() >= shape.len()
        && shape
            .chars()
            .zip(text.chars())
            .all(|(want, got)| match want {
                'd' => got.is_ascii_digit(),
                other => other == got,
            })
}

/// `--log-split`: stdout in out.log, stderr in err.log, each line stamped with the time;
/// `chatctl flush` empties them and the master goes on writing.
#[test]
fn worker_lines_are_stamped_split_by_stream_and_flushed() {
    let app = App::new("split");
    let program = pid_server(&app);
    let program: Vec<&str> = program.iter().map(String::as_str).collect();
    app.start_ok(
        &["-i", "1", "--min-uptime", "100ms", "--log-split"],
        &program,
    );
    wait_until("the program's first lines in out.log and err.log", || {
        read_log(&app, "out.log").contains(" serving")
            && read_log(&app, "err.log").contains(" warming")
    });
    let out = read_log(&app, "out.log");
    let serving = out
        .lines()
        .find(|l| l.contains(" serving"))
        .unwrap_or_default();
    let stamped = serving
        .strip_prefix("w0 | ")
        .is_some_and(starts_with_iso_time);
    assert!(stamped, "not `w0 | TIME text`: {serving:?}");
    let err = read_log(&app, "err.log");
    let warming = err
        .lines()
        .find(|l| l.contains(" warming"))
        .unwrap_or_default();
    let stamped = warming
        .strip_prefix("w0 err | ")
        .is_some_and(starts_with_iso_time);
    assert!(stamped, "not `w0 err | TIME text`: {warming:?}");
    let app_log = app.log_text();
    assert!(
        !app_log.contains(" serving") && !app_log.contains(" warming"),
        "{app_log}"
    );
    assert!(app_log.contains("master | "), "{app_log}");

    let flush = app.run(&["flush", &app.name]);
    assert!(
        flush.status.success(),
        "{}",
        String::from_utf8_lossy(&flush.stderr)
    );
    assert!(
        !read_log(&app, "out.log").contains(" serving"),
        "out.log kept its lines"
    );
    assert!(
        read_log(&app, "err.log").is_empty(),
        "err.log kept its lines"
    );
    let signal = app.run(&["signal", "USR2", &app.name]);
    assert!(
        signal.status.success(),
        "{}",
        String::from_utf8_lossy(&signal.stderr)
    );
    wait_until("a line written after the flush", || {
        read_log(&app, "out.log").contains("got SIGUSR2")
    });
    assert!(
        !read_log(&app, "out.log").contains('\0'),
        "the file has a hole where the flushed lines were"
    );
}

/// `--log-json`: every line of the app log is one JSON object; a worker's have time, app,
/// worker, stream and message.
#[test]
fn json_log_lines_name_the_app_worker_and_stream() {
    let app = App::new("jsonlog");
    let program = pid_server(&app);
    let program: Vec<&str> = program.iter().map(String::as_str).collect();
    app.start_ok(
        &["-i", "1", "--min-uptime", "100ms", "--log-json"],
        &program,
    );
    wait_until("the program's stderr line in the log", || {
        app.log_text().contains(" warming")
    });
    let log = app.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}")))
        .collect();
    let warming = lines
        .iter()
        .find(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.ends_with(" warming"))
        })
        .expect("the stderr line");
    assert_eq!(warming["app"], app.name.as_str(), "{warming}");
    assert_eq!(warming["worker"], 0, "{warming}");
    assert_eq!(warming["stream"], "err", "{warming}");
    let time = format!("{} ", warming["time"].as_str().unwrap_or_default());
    assert!(starts_with_iso_time(&time), "{warming}");
    assert!(lines.iter().any(|l| l["stream"] == "master"), "{log}");
}

/// `no_listen`: a queue worker. The master binds nothing (the address in the file is held by
/// this test, so a bind would fail) and the program gets no socket and no LISTEN_FDS.
#[test]
fn a_program_without_a_port_gets_no_socket() {
    let app = App::new("queue");
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("cannot bind loopback");
    let address = held.local_addr().expect("no local address");
    let script = "echo \"LISTEN_FDS=${LISTEN_FDS:-unset}\"; \
                  if [ -e /proc/self/fd/3 ]; then echo fd3=open; else echo fd3=closed; fi; \
                  exec sleep 600";
    let file = app.home.join("queue.toml");
    let toml = format!(
        "[[app]]\nname = \"{}\"\nlisten = \"{address}\"\nno_listen = true\ninstances = 1\n\
         command = [\"/bin/sh\", \"-c\", {script:?}]\n[app.restart]\nmin_uptime = 100\n",
        app.name
    );
    std::fs::write(&file, toml).expect("cannot write the config file");
    let start = app.run(&["start", "-c", &file.to_string_lossy()]);
    assert!(
        start.status.success(),
        "{}{}\n{}",
        String::from_utf8_lossy(&start.stdout),
        String::from_utf8_lossy(&start.stderr),
        app.log_text()
    );
    wait_until("the program's report", || app.log_text().contains("fd3="));
    let log = app.log_text();
    assert!(log.contains("LISTEN_FDS=unset"), "{log}");
    assert!(log.contains("fd3=closed"), "{log}");
    let status = app.status().expect("status of the queue worker");
    assert_eq!(status["listen"], "none", "{status}");

    // The chat serves HTTP: it cannot go without a port.
    let chat = app.run(&["start", "--name", "nochat", "--no-listen"]);
    let refusal = String::from_utf8_lossy(&chat.stderr);
    assert!(
        !chat.status.success() && refusal.contains("--no-listen"),
        "{refusal}"
    );
    drop(held);
}

/// A server on the port of its own that the master gives it (`{port}` in its arguments, and
/// `PORT`): `GET /health` answers 200 with its pid, or 503 once it got SIGUSR2 (sick).
const HEALTH_SERVER: &str = r#"
import http.server, os, signal, sys

port = int(sys.argv[1])
sick = False

def on_usr2(number, frame):
    global sick
    sick = True

signal.signal(signal.SIGUSR2, on_usr2)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = str(os.getpid()).encode()
        self.send_response(503 if sick else 200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = http.server.HTTPServer(("127.0.0.1", port), Handler)
print("pid %d health on %d PORT=%s" % (os.getpid(), port, os.environ.get("PORT")), flush=True)
server.serve_forever()
"#;

/// Two loopback ports in a row, reserved for this test process (worker 0's and worker 1's).
fn consecutive_ports() -> u16 {
    let mut previous = testkit::port();
    for _ in 0..100 {
        let next = testkit::port();
        if next == previous + 1 {
            return previous;
        }
        previous = next;
    }
    panic!("no two consecutive free loopback ports");
}

/// `--health-url` with `--worker-port-base`: a worker whose health URL stops answering 2xx is
/// replaced (on the same port); its sibling keeps its process and keeps answering.
#[test]
fn a_program_that_fails_its_health_url_is_replaced_and_its_sibling_serves_on() {
    let app = App::new("healthurl");
    let path = app.home.join("health_server.py");
    std::fs::write(&path, HEALTH_SERVER).expect("cannot write the test program");
    let base = consecutive_ports();
    let base_text = base.to_string();
    let flags = [
        "-i",
        "2",
        "--min-uptime",
        "100ms",
        "--worker-port-base",
        &base_text,
        "--health-url",
        "/health",
        "--health-interval",
        "200ms",
        // Generous: the sick worker answers 503 at once, a slow healthy one must not miss.
        "--health-timeout",
        "3s",
        "--health-misses",
        "2",
    ];
    app.start_ok(&flags, &["python3", &path.to_string_lossy(), "{port}"]);
    let listed = app.wait_listed("two online workers", |a| all_online(a, 2));
    let pids = worker_pids(&listed);
    for (worker, pid) in pids.iter().enumerate() {
        let port = base + worker as u16;
        let line = format!("pid {pid} health on {port} PORT={port}");
        wait_until("the worker's health server", || {
            app.log_text().contains(&line)
        });
    }
    let healthy = |port: u16| http_get(port, "/health").is_ok_and(|(status, _)| status == 200);
    assert!(healthy(base) && healthy(base + 1), "{}", app.log_text());

    let sick = app.run(&["signal", "USR2", &app.name, "1"]);
    assert!(
        sick.status.success(),
        "{}",
        String::from_utf8_lossy(&sick.stderr)
    );
    let listed = app.wait_listed("the sick worker 1 replaced", |a| {
        all_online(a, 2) && worker_pids(a).get(1) != Some(&pids[1])
    });
    assert_eq!(
        worker_pids(&listed)[0],
        pids[0],
        "the sibling was replaced: {listed}"
    );
    assert_eq!(workers(&listed)[0]["restarts"], 0, "{listed}");
    assert!(
        healthy(base),
        "the sibling stopped answering:\n{}",
        app.log_text()
    );
    wait_until("the replacement to answer on worker 1's port", || {
        http_get(base + 1, "/health")
            .is_ok_and(|(status, body)| status == 200 && body.trim() != pids[1].to_string())
    });
    assert!(
        app.log_text().contains("missed 2 health probes"),
        "the log does not say why worker 1 was replaced:\n{}",
        app.log_text()
    );
}

/// A program that needs a while before it can serve: it says so, waits for the file named by
/// its argument (the test's go-ahead), then sends READY=1 to its NOTIFY_SOCKET.
const LATE_READY: &str = r#"
import os, signal, socket, sys, time

address = os.environ.get("NOTIFY_SOCKET", "")
print("pid %d warming up, NOTIFY_SOCKET=%s" % (os.getpid(), address or "unset"), flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.02)
if address.startswith("@"):
    address = "\0" + address[1:]
notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
notify.sendto(b"STATUS=warm\nREADY=1\n", address)
print("pid %d sent READY=1" % os.getpid(), flush=True)
signal.pause()
"#;

/// `--wait-ready`: well past --min-uptime the worker is still not online; READY=1 on its
/// NOTIFY_SOCKET makes it online, and `chatctl start` (waiting for that) succeeds.
#[test]
fn a_program_is_online_only_after_it_sends_ready() {
    let app = App::new("waitready");
    let path = app.home.join("late_ready.py");
    std::fs::write(&path, LATE_READY).expect("cannot write the test program");
    let go = app.home.join("go");
    let listen = app.listen();
    let mut start = app
        .command(&[
            "start",
            "--name",
            &app.name,
            "--listen",
            &listen,
            "-i",
            "1",
            "--min-uptime",
            "100ms",
            "--wait-ready",
            "--",
            "python3",
            &path.to_string_lossy(),
            &go.to_string_lossy(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("cannot run chatctl start");

    wait_until("the program to warm up", || {
        app.log_text().contains("warming up, NOTIFY_SOCKET=@")
    });
    // Without --wait-ready a program is online after --min-uptime (100 ms): wait for 5 times that.
    let waiting = app.wait_listed("the worker to run past --min-uptime", |a| {
        workers(a)[0]["uptime_ms"]
            .as_u64()
            .is_some_and(|up| up >= 500)
    });
    assert_ne!(
        workers(&waiting)[0]["status"],
        "online",
        "online before READY=1: {waiting}"
    );
    assert!(
        !app.log_text().contains("sent READY=1"),
        "{}",
        app.log_text()
    );

    std::fs::write(&go, b"").expect("cannot write the go-ahead file");
    app.wait_listed("the worker online after READY=1", |a| all_online(a, 1));
    let output = wait_for_value("chatctl start to return", || {
        start.try_wait().ok().flatten()
    })
    .map(|_| {
        start
            .wait_with_output()
            .expect("no output of chatctl start")
    })
    .expect("chatctl start did not return once the worker was online");
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// examples/ipc_worker.py, the documented example of a program on the worker channel
/// (docs/IPC.md): ready over IPC, the bus between workers, drain on stop.
#[test]
fn the_ipc_example_program_reports_ready_hears_its_siblings_and_drains() {
    let app = App::new("ipc-example");
    let example =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/ipc_worker.py");
    let example = example
        .canonicalize()
        .expect("examples/ipc_worker.py is missing");
    let example = example.to_string_lossy();
    // A long --min-uptime: only the program's own `ready` can make it online in time.
    let started = app.start_ok(
        &[
            "-i",
            "2",
            "--min-uptime",
            "1h",
            "--health-interval",
            "200ms",
        ],
        &["python3", &example],
    );
    assert!(all_online(&started, 2), "{started}");
    // Which worker wins a connection on the shared socket is the kernel's choice, and a busy
    // machine may keep choosing the same one. So one worker is kept busy: it accepts the first
    // connection and waits for its request, while the second connection's request is served
    // by its sibling. Then the first asks whether it heard of that request.
    let heard = wait_for_value("a worker that heard of its sibling's requests", || {
        let held = std::net::TcpStream::connect(("127.0.0.1", app.port)).ok()?;
        let (status, body) = http_get(app.port, "/").ok()?;
        assert_eq!(status, 200, "{body}");
        let (status, body) = http_get_on(held, "/").ok()?;
        assert_eq!(status, 200, "{body}");
        let answer: serde_json::Value = serde_json::from_str(&body).expect("not JSON");
        (answer["heard"].as_u64()? > 0).then_some(answer)
    });
    assert!(heard.is_some(), "no worker heard of the other's requests");
    let pids = worker_pids(&app.status().unwrap());
    support::succeeded(&app.run(&["stop", &app.name]));
    let log = app.log_text();
    for pid in pids {
        assert!(
            log.contains(&format!("worker {pid} drained after")),
            "{log}"
        );
    }
}
