//! TCP connections from a chosen local address, and the file-descriptor budget.

use std::net::{IpAddr, SocketAddr};

use tokio::net::{TcpSocket, TcpStream};

use crate::BenchError;

/// Opens a TCP connection to `addr`, from `source` when given. The local port is chosen by
/// `connect`, not `bind` (`IP_BIND_ADDRESS_NO_PORT`), so each source address has the whole
/// ephemeral range per destination instead of sharing one range across all of them.
pub async fn connect(addr: SocketAddr, source: Option<IpAddr>) -> Result<TcpStream, BenchError> {
    let fail = |source| BenchError::Connect { addr, source };
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(fail)?;
    if let Some(ip) = source {
        bind_address_no_port(&socket);
        socket.bind(SocketAddr::new(ip, 0)).map_err(fail)?;
    }
    let stream = socket.connect(addr).await.map_err(fail)?;
    // Chat packets are small and latency is what we measure: no Nagle delay.
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

#[cfg(target_os = "linux")]
fn bind_address_no_port(socket: &TcpSocket) {
    // Without it, binding still works: the source address only shares one port range.
    let _ = nix::sys::socket::setsockopt(
        socket,
        nix::sys::socket::sockopt::IpBindAddressNoPort,
        &true,
    );
}

#[cfg(not(target_os = "linux"))]
fn bind_address_no_port(_: &TcpSocket) {}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the limit now in force.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return hard;
    }
    soft
}

/// Parses `--sources`: addresses and inclusive IPv4 ranges, comma-separated
/// (`127.0.0.1-127.0.0.16,10.0.0.5`).
pub fn parse_sources(text: &str) -> Result<Vec<IpAddr>, String> {
    let mut sources = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((first, last)) => {
                let parse = |s: &str| {
                    s.trim()
                        .parse::<std::net::Ipv4Addr>()
                        .map_err(|_| format!("`{s}` is not an IPv4 address"))
                };
                let (first, last) = (u32::from(parse(first)?), u32::from(parse(last)?));
                if last < first || last - first >= 65_536 {
                    return Err(format!(
                        "`{part}` is not a range of at most 65536 addresses"
                    ));
                }
                sources.extend((first..=last).map(|ip| IpAddr::from(std::net::Ipv4Addr::from(ip))));
            }
            None => sources.push(
                part.parse()
                    .map_err(|_| format!("`{part}` is not an IP address"))?,
            ),
        }
    }
    if sources.is_empty() {
        return Err("no source address given".into());
    }
    Ok(sources)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_expand_ranges_and_lists() {
        let sources = parse_sources("127.0.0.1-127.0.0.3,::1").unwrap();
        assert_eq!(sources.len(), 4);
        assert_eq!(sources[2].to_string(), "127.0.0.3");
        assert!(parse_sources("127.0.0.3-127.0.0.1").is_err());
        assert!(parse_sources("nope").is_err());
    }
}
