//! An ordinary HTTP server that chatctl can cluster: it takes its listening socket from the
//! systemd convention (`LISTEN_FDS=1`, `LISTEN_PID` = this process, the socket as fd 3) and
//! only binds one itself when started on its own. Every worker of
//!
//!     chatctl start -i 2 -- target/debug/examples/listenfd
//!
//! accepts on the same socket; `GET /` answers with the pid of the worker that served it.
//! Standard library only, so it is easy to copy (and to compile with a bare `rustc`).
//!
//!     cargo run -p examples --example listenfd -- 127.0.0.1:8080    # on its own

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::FromRawFd;

/// systemd's `SD_LISTEN_FDS_START`: the first inherited socket.
const LISTEN_FDS_START: i32 = 3;

/// A request head larger than this is refused: nothing this server answers needs more.
const MAX_HEAD_BYTES: u64 = 16 * 1024;

fn main() {
    let listener = match listener() {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("listenfd: {error}");
            std::process::exit(1);
        }
    };
    let pid = std::process::id();
    match listener.local_addr() {
        Ok(address) => println!("pid {pid} listening on http://{address}"),
        Err(_) => println!("pid {pid} listening"),
    }
    // A supervisor stops this program with SIGTERM; its default action (exit) is what we want.
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                std::thread::spawn(move || serve(stream, pid));
            }
            // EMFILE and friends pass; keep accepting.
            Err(error) => eprintln!("accept failed: {error}"),
        }
    }
}

/// The inherited socket when a supervisor passed one to this very process, else a socket of
/// our own on the address given as the first argument.
fn listener() -> Result<TcpListener, String> {
    let for_us = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok())
        == Some(std::process::id());
    match std::env::var("LISTEN_FDS") {
        Ok(count) if for_us && count == "1" => {
            // SAFETY: by the LISTEN_FDS protocol fd 3 is a listening socket handed to this
            // process, and nothing else in it has taken ownership of it.
            Ok(unsafe { TcpListener::from_raw_fd(LISTEN_FDS_START) })
        }
        Ok(count) if for_us => Err(format!(
            "LISTEN_FDS={count}: expected exactly one inherited socket"
        )),
        _ => {
            let address = std::env::args()
                .nth(1)
                .unwrap_or_else(|| "127.0.0.1:8080".into());
            TcpListener::bind(&address).map_err(|e| format!("cannot listen on {address}: {e}"))
        }
    }
}

/// Serves the requests of one keep-alive connection.
fn serve(stream: TcpStream, pid: u32) {
    let Ok(writer) = stream.try_clone() else {
        return;
    };
    let mut writer = writer;
    let mut reader = BufReader::new(stream);
    loop {
        let request = match read_head(&mut reader) {
            Ok(Some(request)) => request,
            Ok(None) => return,
            Err(reason) => {
                let _ = respond(&mut writer, "400 Bad Request", &format!("{reason}\n"), true);
                return;
            }
        };
        // Bodies are not used, but must be read to find the next request.
        if request.body_length > 0
            && std::io::copy(
                &mut (&mut reader).take(request.body_length),
                &mut std::io::sink(),
            )
            .is_err()
        {
            return;
        }
        println!("{} {} -> pid {pid}", request.method, request.path);
        let (status, body) = match (request.method.as_str(), request.path.as_str()) {
            ("GET", "/") => ("200 OK", format!("{pid}\n")),
            ("GET", _) => ("404 Not Found", "not found\n".to_owned()),
            _ => ("405 Method Not Allowed", "method not allowed\n".to_owned()),
        };
        if respond(&mut writer, status, &body, request.close).is_err() || request.close {
            return;
        }
    }
}

struct RequestHead {
    method: String,
    path: String,
    body_length: u64,
    /// The client asked to close the connection after this request (or speaks HTTP/1.0).
    close: bool,
}

/// Reads a request line and headers. `Ok(None)`: the client closed the connection.
fn read_head(reader: &mut impl BufRead) -> Result<Option<RequestHead>, String> {
    let mut limited = reader.take(MAX_HEAD_BYTES);
    let mut line = String::new();
    match limited.read_line(&mut line) {
        Ok(0) | Err(_) => return Ok(None),
        Ok(_) => {}
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed request line".into());
    };
    let mut head = RequestHead {
        method: method.to_owned(),
        path: path.to_owned(),
        body_length: 0,
        close: version == "HTTP/1.0",
    };
    loop {
        line.clear();
        match limited.read_line(&mut line) {
            Ok(0) => return Err("request head too large or cut short".into()),
            Ok(_) => {}
            Err(_) => return Ok(None),
        }
        let header = line.trim_end();
        if header.is_empty() {
            return Ok(Some(head));
        }
        let Some((name, value)) = header.split_once(':') else {
            return Err("malformed header".into());
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            head.body_length = value.parse().map_err(|_| "bad Content-Length")?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err("chunked request bodies are not supported".into());
        } else if name.eq_ignore_ascii_case("connection") {
            head.close = value.eq_ignore_ascii_case("close");
        }
    }
}

fn respond(out: &mut impl Write, status: &str, body: &str, close: bool) -> std::io::Result<()> {
    let connection = if close { "close" } else { "keep-alive" };
    write!(
        out,
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n{body}",
        body.len()
    )?;
    out.flush()
}
