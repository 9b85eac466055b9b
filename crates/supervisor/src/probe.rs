//! Health probes of programs other than the chat, on each worker's port of its own
//! (`--worker-port-base`): an HTTP GET of `--health-url` (2xx: healthy) or a TCP connect
//! (`--health-tcp`). The caller bounds them with `--health-timeout`.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether the program behind `127.0.0.1:port` answers: `GET path` with a 2xx status, or,
/// without a path, accepts a connection.
pub async fn program_healthy(port: u16, path: Option<&str>) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let Some(path) = path else {
        return Ok(true);
    };
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    // `HTTP/1.x NNN`: twelve bytes say it; the rest is the program's business.
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).await?;
    Ok(status_is_success(&head))
}

fn status_is_success(head: &[u8; 12]) -> bool {
    (head.starts_with(b"HTTP/1.1 ") || head.starts_with(b"HTTP/1.0 ")) && head[9] == b'2'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_2xx_is_healthy() {
        assert!(status_is_success(b"HTTP/1.1 204"));
        assert!(status_is_success(b"HTTP/1.0 200"));
        assert!(!status_is_success(b"HTTP/1.1 503"));
        assert!(!status_is_success(b"HTTP/1.1 302"));
        assert!(!status_is_success(b"SSH-2.0-Open"));
    }
}
