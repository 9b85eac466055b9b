//! HTTP requests against an app until told to stop, on keep-alive connections or on a new
//! connection each, counting what was answered and what failed (`reload.rs`, `upgrade.rs`).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// HTTP requests against the app until told to stop, counting what was answered.
#[derive(Default)]
pub struct HttpLoad {
    pub keep_alive_ok: AtomicU64,
    pub fresh_ok: AtomicU64,
    /// Requests resent on a new connection because the server closed an idle keep-alive
    /// connection just as the request went out. Every HTTP/1.1 client does this for idempotent
    /// requests (RFC 9112 §9.3.1); no response was lost.
    pub resent: AtomicU64,
    pub failures: Mutex<Vec<String>>,
}

/// How a request went wrong.
enum RequestError {
    /// Nothing at all came back on a connection that already served requests: it was closed
    /// as idle, and the request can be sent again.
    ClosedWhileIdle(String),
    Failed(String),
}

impl HttpLoad {
    pub fn total_ok(&self) -> u64 {
        self.keep_alive_ok.load(Ordering::Relaxed) + self.fresh_ok.load(Ordering::Relaxed)
    }

    /// One loop: `GET /healthz` on one keep-alive connection after another, or each on a new
    /// connection.
    pub fn run(&self, port: u16, keep_alive: bool, stop: &AtomicBool) {
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

/// Both loops, on keep-alive connections and on a new connection per request, running
/// against one port on threads of their own.
pub struct LoadLoops {
    pub load: Arc<HttpLoad>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl LoadLoops {
    /// Starts both loops against `port` and waits until each had 20 answers.
    pub fn start(port: u16) -> LoadLoops {
        let load = Arc::new(HttpLoad::default());
        let stop = Arc::new(AtomicBool::new(false));
        let threads = [true, false]
            .into_iter()
            .map(|keep_alive| {
                let (load, stop) = (load.clone(), stop.clone());
                std::thread::spawn(move || load.run(port, keep_alive, &stop))
            })
            .collect();
        let loops = LoadLoops {
            load,
            stop,
            threads,
        };
        super::wait_until("HTTP requests flowing on both loops", || {
            loops.load.keep_alive_ok.load(Ordering::Relaxed) >= 20
                && loops.load.fresh_ok.load(Ordering::Relaxed) >= 20
        });
        loops
    }

    /// Waits for 20 more answers (whoever serves now serves both kinds), stops the loops and
    /// fails the test if any request failed during `what` (a reload, an upgrade).
    pub fn finish_without_failures(self, what: &str) {
        let served = self.load.total_ok();
        super::wait_until("requests served after the change", || {
            self.load.total_ok() >= served + 20
        });
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads {
            thread.join().expect("an HTTP loop panicked");
        }
        let load = &self.load;
        eprintln!(
            "{what} under load: {} keep-alive and {} new-connection requests answered, {} \
             keep-alive requests resent after the server closed an idle connection",
            load.keep_alive_ok.load(Ordering::Relaxed),
            load.fresh_ok.load(Ordering::Relaxed),
            load.resent.load(Ordering::Relaxed),
        );
        let failures = load.failures.lock().map(|f| f.clone()).unwrap_or_default();
        assert!(
            failures.is_empty(),
            "{} HTTP requests failed or were refused during the {what}, e.g. {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
    }
}
