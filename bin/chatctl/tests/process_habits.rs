//! What a PM2 / Forever / Monit user expects of the supervisor with any program: a lone crash
//! is replaced at once, signals are chosen and sent by name. Real processes: `chatctl start`
//! daemonizes a master, which runs a small python3 program this test writes.

mod support;

use std::path::PathBuf;
use std::time::Instant;

use support::{all_online, http_get, wait_for_value, workers, App};

/// An HTTP server on the socket the master passes (fd 3, LISTEN_FDS) that answers every GET
/// with its pid, and writes each signal it gets to stdout (`got SIGNAME`) before it exits.
const PID_SERVER: &str = r#"
import http.server, os, signal, socket, sys

def on_signal(number, frame):
    print("got " + signal.Signals(number).name, flush=True)
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
