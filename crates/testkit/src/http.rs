//! One plain HTTP/1.1 GET on loopback, for tests that look at a server's answer as a client
//! without a client library would.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// `GET path` on a fresh connection to `127.0.0.1:port`; the status code and body.
pub fn get(port: u16, path: &str) -> std::io::Result<(u16, String)> {
    get_on(TcpStream::connect(("127.0.0.1", port))?, path)
}

/// [`get`] on a connection opened before.
pub fn get_on(mut stream: TcpStream, path: &str) -> std::io::Result<(u16, String)> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {response:?}")))?;
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, body)| body)
        .to_owned();
    Ok((status, body))
}
