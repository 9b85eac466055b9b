//! The HTTP health probe, one rule for every prober: the master probing its chat workers on
//! their private sockets and other programs on their own ports (`--health-url`,
//! `--health-tcp`), and the proxy probing its backends. A `GET` answered with any 2xx status
//! is healthy; anything else, or no answer, is not. Callers bound a probe with their timeout.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Whether the server at `address` (`host:port`, also sent as `Host`) answers: `GET path` with
/// a 2xx status, or, without a path, accepts a connection.
pub async fn check(address: &str, path: Option<&str>) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect(address).await?;
    match path {
        Some(path) => get_succeeds(&mut stream, address, path).await,
        None => Ok(true),
    }
}

/// Whether `GET path` sent on `stream` is answered with a 2xx status.
pub async fn get_succeeds<S>(stream: &mut S, host: &str, path: &str) -> std::io::Result<bool>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    // `HTTP/1.x NNN`: twelve bytes say it; the rest is the server's business.
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
        assert!(status_is_success(b"HTTP/1.1 200"));
        assert!(status_is_success(b"HTTP/1.1 204"));
        assert!(status_is_success(b"HTTP/1.0 200"));
        assert!(!status_is_success(b"HTTP/1.1 503"));
        assert!(!status_is_success(b"HTTP/1.1 302"));
        assert!(!status_is_success(b"HTTP/2.0 200"));
        assert!(!status_is_success(b"SSH-2.0-Open"));
    }

    #[tokio::test]
    async fn a_probe_sends_its_get_and_reads_the_status_line() {
        let (mut prober, mut server) = tokio::io::duplex(1024);
        let answer = tokio::spawn(async move {
            let mut request = vec![0u8; 256];
            let read = server.read(&mut request).await.unwrap_or(0);
            request.truncate(read);
            server
                .write_all(b"HTTP/1.1 204 No Content\r\n\r\n")
                .await
                .ok();
            request
        });
        let healthy = get_succeeds(&mut prober, "worker", "/healthz").await;
        assert!(matches!(healthy, Ok(true)), "{healthy:?}");
        let request = answer.await.unwrap_or_default();
        assert_eq!(
            request,
            b"GET /healthz HTTP/1.1\r\nHost: worker\r\nConnection: close\r\n\r\n"
        );
    }
}
