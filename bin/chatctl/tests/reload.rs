//! `chatctl reload` under load: HTTP requests on keep-alive and on new connections, and a crowd
//! of real Socket.IO clients (npm socket.io-client), while every worker is replaced.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use support::{all_online, node_program, wait_until, worker_pids, App, ClientScript};

/// Socket.IO users connected across the reload.
const CROWD: usize = 50;

#[test]
fn reload_fails_no_request_and_disconnects_no_socketio_client() {
    let node = node_program();
    let app = App::new("reload");
    app.start_ok(&["-i", "2", "--drain-timeout", "5s"], &[]);
    let before = app.wait_listed("two online workers", |a| all_online(a, 2));
    let old_pids = worker_pids(&before);

    let load = Arc::new(HttpLoad::default());
    let stop_load = Arc::new(AtomicBool::new(false));
    let loops: Vec<_> = [true, false]
        .into_iter()
        .map(|keep_alive| {
            let (load, stop, port) = (load.clone(), stop_load.clone(), app.port);
            std::thread::spawn(move || load.run(port, keep_alive, &stop))
        })
        .collect();

    let crowd_size = CROWD.to_string();
    let mut crowd = ClientScript::start(&node, "crowd.mjs", &[&app.url(), &crowd_size]);
    let connected = crowd.next_report();
    assert_eq!(connected["event"], "connected", "crowd: {connected}");
    wait_until("HTTP requests flowing on both loops", || {
        load.keep_alive_ok.load(Ordering::Relaxed) >= 20
            && load.fresh_ok.load(Ordering::Relaxed) >= 20
    });

    let reload = app.run(&["reload", &app.name]);
    let reload_output = String::from_utf8_lossy(&reload.stdout).into_owned();
    assert!(
        reload.status.success(),
        "reload failed: {reload_output}{}",
        String::from_utf8_lossy(&reload.stderr)
    );
    assert!(
        reload_output.contains("reloaded 2 workers"),
        "{reload_output}"
    );
    crowd.tell("reloaded");
    let done = crowd.next_report();
    assert_eq!(
        done["event"],
        "done",
        "crowd: {done}\nlog:\n{}",
        app.log_text()
    );
    crowd.wait_success();

    // Some requests after the reload too: the new workers serve both kinds.
    let served = load.total_ok();
    wait_until("requests served by the new workers", || {
        load.total_ok() >= served + 20
    });
    stop_load.store(true, Ordering::Relaxed);
    for handle in loops {
        handle.join().expect("an HTTP loop panicked");
    }

    let after = app.wait_listed("two online workers after the reload", |a| all_online(a, 2));
    let new_pids = worker_pids(&after);
    assert!(
        new_pids.iter().all(|pid| !old_pids.contains(pid)),
        "not every worker was replaced: {old_pids:?} -> {new_pids:?}"
    );
    let failures = load.failures.lock().map(|f| f.clone()).unwrap_or_default();
    eprintln!(
        "reload under load: {} keep-alive and {} new-connection requests answered, {} keep-alive \
         requests resent after the server closed an idle connection, crowd {done}",
        load.keep_alive_ok.load(Ordering::Relaxed),
        load.fresh_ok.load(Ordering::Relaxed),
        load.resent.load(Ordering::Relaxed),
    );
    assert!(
        failures.is_empty(),
        "{} HTTP requests failed during the reload, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert_eq!(done["connected"], CROWD, "crowd: {done}");
    // Every user was handed to a new worker without noticing (live hand-off).
    assert_eq!(done["disconnects"], 0, "users disconnected: {done}");
    assert_eq!(done["connects"], CROWD, "users connected again: {done}");
}

/// HTTP requests against the app until told to stop, counting what was answered.
#[derive(Default)]
struct HttpLoad {
    keep_alive_ok: AtomicU64,
    fresh_ok: AtomicU64,
    /// Requests resent on a new connection because the server closed an idle keep-alive
    /// connection just as the request went out. Every HTTP/1.1 client does this for idempotent
    /// requests (RFC 9112 §9.3.1); no response was lost.
    resent: AtomicU64,
    failures: Mutex<Vec<String>>,
}

/// How a request went wrong.
enum RequestError {
    /// Nothing at all came back on a connection that already served requests: it was closed
    /// as idle, and the request can be sent again.
    ClosedWhileIdle(String),
    Failed(String),
}

impl HttpLoad {
    fn total_ok(&self) -> u64 {
        self.keep_alive_ok.load(Ordering::Relaxed) + self.fresh_ok.load(Ordering::Relaxed)
    }

    /// One loop: `GET /healthz` on one keep-alive connection after another, or each on a new
    /// connection.
    fn run(&self, port: u16, keep_alive: bool, stop: &AtomicBool) {
        let mut connection: Option<(BufReader<TcpStream>, TcpStream)> = None;
        let mut served_on_connection = 0u32;
        while !stop.load(Ordering::Relaxed) {
            let mut attempt = 0;
            let outcome = loop {
                attempt += 1;
                if connection.is_none() {
                    match connect(port) {
                        Ok(pair) => connection = Some(pair),
                        Err(error) => break Err(format!("connect: {error}")),
                    }
                    served_on_connection = 0;
                }
                let Some((reader, writer)) = connection.as_mut() else {
                    unreachable!("connected above");
                };
                match get_healthz(reader, writer, keep_alive, served_on_connection > 0) {
                    Ok(close) => {
                        served_on_connection += 1;
                        if close || !keep_alive {
                            connection = None;
                        }
                        break Ok(());
                    }
                    Err(RequestError::ClosedWhileIdle(_)) if attempt == 1 => {
                        self.resent.fetch_add(1, Ordering::Relaxed);
                        connection = None;
                    }
                    Err(RequestError::ClosedWhileIdle(error) | RequestError::Failed(error)) => {
                        connection = None;
                        break Err(error);
                    }
                }
            };
            match outcome {
                Ok(()) if keep_alive => self.keep_alive_ok.fetch_add(1, Ordering::Relaxed),
                Ok(()) => self.fresh_ok.fetch_add(1, Ordering::Relaxed),
                Err(error) => {
                    let kind = if keep_alive {
                        "keep-alive"
                    } else {
                        "new connection"
                    };
                    if let Ok(mut failures) = self.failures.lock() {
                        failures.push(format!("{kind}: {error}"));
                    }
                    0
                }
            };
        }
    }
}

fn connect(port: u16) -> std::io::Result<(BufReader<TcpStream>, TcpStream)> {
    let stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.set_nodelay(true)?;
    Ok((BufReader::new(stream.try_clone()?), stream))
}

/// Sends `GET /healthz` and reads the answer, which must be `200 ok`. Returns whether the server
/// closes the connection after it.
fn get_healthz(
    reader: &mut BufReader<TcpStream>,
    writer: &mut TcpStream,
    keep_alive: bool,
    reused: bool,
) -> Result<bool, RequestError> {
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let request =
        format!("GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: {connection}\r\n\r\n");
    let idle_close = |what: String| {
        if reused {
            RequestError::ClosedWhileIdle(what)
        } else {
            RequestError::Failed(what)
        }
    };
    writer
        .write_all(request.as_bytes())
        .map_err(|e| idle_close(format!("send: {e}")))?;
    let mut status_line = String::new();
    match reader.read_line(&mut status_line) {
        Ok(0) => return Err(idle_close("closed before any response".into())),
        Ok(_) => {}
        Err(error) => return Err(idle_close(format!("receive: {error}"))),
    }
    let failed = |what: String| RequestError::Failed(what);
    if !status_line.starts_with("HTTP/1.1 200 ") {
        return Err(failed(format!("status {:?}", status_line.trim_end())));
    }
    let mut length = None;
    let mut close = false;
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return Err(failed("response cut short in the headers".into())),
            Ok(_) => {}
            Err(error) => return Err(failed(format!("receive headers: {error}"))),
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim();
            if name.eq_ignore_ascii_case("content-length") {
                length = value.parse::<usize>().ok();
            } else if name.eq_ignore_ascii_case("connection") {
                close = value.eq_ignore_ascii_case("close");
            }
        }
    }
    let length = length.ok_or_else(|| failed("no Content-Length".into()))?;
    let mut body = vec![0; length];
    reader
        .read_exact(&mut body)
        .map_err(|e| failed(format!("receive body: {e}")))?;
    if body != b"ok" {
        return Err(failed(format!("body {:?}", String::from_utf8_lossy(&body))));
    }
    Ok(close)
}
