//! What reloads an app besides `chatctl reload`, and what a reload may change: `--watch` (a
//! file changes: a rolling reload, no request fails), `--cron-restart`, `--spare` (warm
//! workers take a crashed worker's place and a reload's), and `reload` with new flags or
//! `--update-env`. Real processes: a python3 HTTP server this test writes, and the chat.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use serde_json::Value;
use support::{all_online, http_get, succeeded, wait_until, worker_pids, workers, App};

/// An HTTP server on the socket the master passes (fd 3) that answers every GET with
/// `PID GREETING SHELL_ONLY` (two variables of its environment). It finishes the request in
/// hand when asked to stop (SIGTERM), so a rolling reload fails no request.
const GREETER: &str = r#"
import http.server, os, signal, socket

stopping = False
def on_term(number, frame):
    global stopping
    stopping = True
signal.signal(signal.SIGTERM, on_term)

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = ("%d %s %s" % (os.getpid(), os.environ.get("GREETING", "-"),
                              os.environ.get("SHELL_ONLY", "-"))).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

class Server(http.server.HTTPServer):
    def get_request(self):
        connection, address = self.socket.accept()
        connection.setblocking(True)
        return connection, address

server = Server(("127.0.0.1", 0), Handler, bind_and_activate=False)
server.socket = socket.socket(fileno=3)
# The workers share the socket: one wins each connection, the others must not block in
# accept() (they would not see the stop).
server.socket.setblocking(False)
server.timeout = 0.05
while not stopping:
    server.handle_request()
"#;

/// Writes [`GREETER`] into `dir`; the command line that runs it.
fn greeter(dir: &std::path::Path) -> Vec<String> {
    let path = dir.join("greeter.py");
    std::fs::write(&path, GREETER).expect("cannot write the test program");
    vec!["python3".into(), path.to_string_lossy().into_owned()]
}

/// `GET /` on the app: the answering pid and the rest of its answer.
fn greeting(app: &App) -> Option<(u32, String)> {
    let (status, body) = http_get(app.port, "/").ok()?;
    let (pid, rest) = body.split_once(' ')?;
    (status == 200).then_some(())?;
    Some((pid.parse().ok()?, rest.to_owned()))
}

/// Requests on new connections, one after another, until stopped.
#[derive(Default)]
struct Load {
    ok: AtomicU64,
    failures: Mutex<Vec<String>>,
}

impl Load {
    fn run(&self, port: u16, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            match http_get(port, "/") {
                Ok((200, _)) => {
                    self.ok.fetch_add(1, Ordering::Relaxed);
                }
                Ok((status, body)) => self.fail(format!("status {status}: {body}")),
                Err(error) => self.fail(error.to_string()),
            }
        }
    }

    fn fail(&self, failure: String) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.push(failure);
        }
    }
}

/// Sets the flag when dropped.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn strs(strings: &[String]) -> Vec<&str> {
    strings.iter().map(String::as_str).collect()
}

#[test]
fn a_changed_file_reloads_every_worker_and_no_request_fails() {
    let app = App::new("watched");
    let source = app.home.join("src");
    std::fs::create_dir_all(&source).unwrap();
    support::set_mode(&source, 0o755);
    let program = greeter(&source);
    let watch = format!("--watch={}", source.display());
    let started = app.start_ok(
        &["-i", "2", &watch, "--watch-delay", "200ms"],
        &strs(&program),
    );
    let before = worker_pids(&started);
    assert_eq!(before.len(), 2, "{started}");

    let load = Load::default();
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        // The load stops however the test leaves the scope, a failed wait included.
        let _stop = StopOnDrop(&stop);
        for _ in 0..2 {
            scope.spawn(|| load.run(app.port, &stop));
        }
        wait_until("requests answered before the change", || {
            load.ok.load(Ordering::Relaxed) > 20
        });
        std::fs::write(source.join("config.js"), "changed").unwrap();
        wait_until("every worker replaced after the change", || {
            app.status().is_some_and(|status| {
                all_online(&status, 2)
                    && worker_pids(&status).iter().all(|pid| !before.contains(pid))
            })
        });
        let after = load.ok.load(Ordering::Relaxed);
        wait_until("requests answered by the new workers", || {
            load.ok.load(Ordering::Relaxed) > after + 20
        });
    });
    let failures = load.failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed during the reload: {:?}",
        failures.len(),
        failures.len() as u64 + load.ok.load(Ordering::Relaxed),
        &failures[..failures.len().min(5)]
    );
    assert!(app.log_text().contains("watched files changed: reloading"));
}

#[test]
fn a_cron_expression_reloads_on_its_schedule() {
    let app = App::new("cron");
    let program = greeter(&app.home);
    let started = app.start_ok(
        &["-i", "1", "--cron-restart", "* * * * * *"],
        &strs(&program),
    );
    let mut seen = worker_pids(&started);
    // Every second a reload: two new workers in turn.
    wait_until("two scheduled reloads", || {
        if let Some(pid) = app
            .status()
            .as_ref()
            .and_then(|s| worker_pids(s).first().copied())
        {
            if !seen.contains(&pid) {
                seen.push(pid);
            }
        }
        seen.len() >= 3
    });
    assert!(app.log_text().contains("scheduled reload (--cron-restart)"));

    let bad = app.run(&[
        "start",
        "--name",
        "bad",
        "--cron-restart",
        "every night",
        "--",
        "true",
    ]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("is not a cron expression"), "{stderr}");
}

#[test]
fn reload_applies_new_flags_and_the_callers_environment() {
    let app = App::new("greeter");
    let program = greeter(&app.home);
    app.start_ok(&["-i", "1", "--env", "GREETING=hello"], &strs(&program));
    let (_, answer) = greeting(&app).expect("no answer");
    assert_eq!(answer, "hello -");

    // New flags: the replacements run with them, and they are saved.
    succeeded(&app.run(&["reload", &app.name, "--env", "GREETING=bonjour"]));
    let (_, answer) = greeting(&app).expect("no answer after the reload");
    assert_eq!(answer, "bonjour -");
    let saved = std::fs::read_to_string(app.app_dir().join("config.json")).unwrap();
    assert!(saved.contains("bonjour"), "{saved}");

    // --update-env: the environment of the `chatctl reload` that asks.
    let reload = app
        .command(&["reload", &app.name, "--update-env"])
        .env("SHELL_ONLY", "from-the-shell")
        .output()
        .unwrap();
    succeeded(&reload);
    let (_, answer) = greeting(&app).expect("no answer after the reload");
    assert_eq!(answer, "bonjour from-the-shell");

    // An upgrade keeps it: the new master's workers start from the same environment (handed
    // over on the upgrade's channel, as it was never written to disk).
    let (before, _) = greeting(&app).unwrap();
    succeeded(&app.run(&["upgrade", &app.name]));
    wait_until("a worker of the new master to answer", || {
        greeting(&app).is_some_and(|(pid, _)| pid != before)
    });
    let (_, answer) = greeting(&app).expect("no answer after the upgrade");
    assert_eq!(answer, "bonjour from-the-shell");

    // What the master itself holds cannot change under it: one line, and it serves on.
    let (pid, _) = greeting(&app).unwrap();
    let refused = app.run(&["reload", &app.name, "--listen", "127.0.0.1:1"]);
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("--listen cannot change while the app runs"),
        "{stderr}"
    );
    assert_eq!(greeting(&app).map(|(pid, _)| pid), Some(pid));

    // `start --reload-if-running` is the same reload, for deploy scripts.
    let listen = app.listen();
    let mut args = vec!["start", "--name", &app.name, "--listen", &listen];
    args.extend([
        "--reload-if-running",
        "-i",
        "2",
        "--env",
        "GREETING=hallo",
        "--",
    ]);
    args.extend(strs(&program));
    succeeded(&app.run(&args));
    let status = app.status().unwrap();
    assert_eq!(workers(&status).len(), 2, "{status}");
    wait_until("both workers greet with the new value", || {
        greeting(&app).is_some_and(|(_, answer)| answer.starts_with("hallo"))
    });
}

fn spares(status: &Value) -> Vec<(u32, bool)> {
    status["spares"]
        .as_array()
        .map(|spares| {
            spares
                .iter()
                .filter_map(|s| Some((s["pid"].as_u64()? as u32, s["ready"].as_bool()?)))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_spare_takes_a_crashed_workers_place_and_a_new_spare_starts() {
    let app = App::new("spare");
    app.start_ok(&["-i", "2", "--spare", "1"], &[]);
    let ready_spare = |status: &Value| spares(status).into_iter().find(|(_, ready)| *ready);
    let mut spare = None;
    wait_until("a ready spare", || {
        spare = app.status().as_ref().and_then(ready_spare);
        spare.is_some()
    });
    let (spare_pid, _) = spare.unwrap();
    let status = app.status().unwrap();
    let victim = worker_pids(&status)[0];
    support::signal(victim, libc::SIGKILL);
    wait_until(
        "the spare in the killed worker's place, and a new spare",
        || {
            app.status().is_some_and(|status| {
                all_online(&status, 2)
                    && worker_pids(&status).contains(&spare_pid)
                    && ready_spare(&status).is_some_and(|(pid, _)| pid != spare_pid)
            })
        },
    );
    let (status, body) = http_get(app.port, "/healthz").expect("the chat does not answer");
    assert_eq!((status, body.trim()), (200, "ok"));

    // A reload swaps every worker for a spare of the new epoch; no old process is left.
    let before = worker_pids(&app.status().unwrap());
    succeeded(&app.run(&["reload", &app.name]));
    let after = app.status().unwrap();
    assert!(all_online(&after, 2), "{after}");
    assert!(
        worker_pids(&after).iter().all(|pid| !before.contains(pid)),
        "{after}"
    );

    let refused = app.run(&[
        "start", "--name", "other", "--spare", "1", "--", "python3", "-c", "pass",
    ]);
    assert_eq!(refused.status.code(), Some(2), "{refused:?}");
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--spare needs connections"));
}
