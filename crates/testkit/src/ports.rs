//! Loopback ports for tests that cannot bind their own listener (a port passed to another
//! process: `chatctl start --listen`, `redis-server --port`).
//!
//! "Bind port 0, read the number, close it" is a race: between the close and the server's bind,
//! another test, or the kernel picking the local port of an outgoing connection, takes it. A
//! port from here cannot be taken that way:
//! - it lies outside the kernel's ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`),
//!   so no outgoing connection is ever given it;
//! - it is locked (`flock`) in a file under `$TMPDIR/chatctl-test-ports/` for as long as this
//!   test process lives, so no other test process of any crate, nor a script using
//!   `ops/lib/ports.sh` (same files, same locks), takes it;
//! - it was free to bind on every address when it was handed out (a leftover server from an
//!   earlier run keeps its port).
//!
//! Ports are never given back before the process exits: a test may restart a server on the
//! same port.

use std::fs::{File, OpenOptions};
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::Mutex;

use nix::fcntl::{Flock, FlockArg};

/// Where ports are taken from when the ephemeral range leaves room below it.
const LOWEST: u16 = 10_000;
/// How many ports a range must hold to be used.
const ENOUGH: u16 = 1_000;

/// The locks of the ports this process holds, and the next place to look.
struct Reserved {
    held: Vec<Flock<File>>,
    next: Option<u16>,
}

static RESERVED: Mutex<Reserved> = Mutex::new(Reserved {
    held: Vec::new(),
    next: None,
});

/// A loopback port reserved for this test process until it exits.
///
/// Panics (the test cannot go on) when no port of the range is free, naming the lock folder.
pub fn port() -> u16 {
    let (low, high) = usable_range();
    let span = u32::from(high - low) + 1;
    let mut reserved = RESERVED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    // Each process starts at a place of its own, so concurrent test processes rarely contend
    // for the same locks.
    let start = reserved
        .next
        .unwrap_or_else(|| low + (std::process::id() % span) as u16);
    let dir = lock_dir();
    for step in 0..span {
        let candidate = low + ((u32::from(start - low) + step) % span) as u16;
        let Some(lock) = try_lock(&dir, candidate) else {
            continue;
        };
        if !bindable(candidate) {
            continue; // dropping the lock lets it go again
        }
        reserved.held.push(lock);
        reserved.next = Some(if candidate == high {
            low
        } else {
            candidate + 1
        });
        return candidate;
    }
    panic!(
        "no free loopback port in {low}-{high}: every one is locked under {} or in use",
        dir.display()
    );
}

/// The ports outside the ephemeral range: below it when that leaves at least [`ENOUGH`] ports
/// above [`LOWEST`], else above it.
fn usable_range() -> (u16, u16) {
    let (ephemeral_low, ephemeral_high) =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|text| {
                let mut numbers = text.split_whitespace().map(|n| n.parse::<u16>().ok());
                Some((numbers.next()??, numbers.next()??))
            })
            // Linux's default.
            .unwrap_or((32_768, 60_999));
    if ephemeral_low >= LOWEST.saturating_add(ENOUGH) {
        (LOWEST, ephemeral_low - 1)
    } else if ephemeral_high <= u16::MAX - ENOUGH {
        (ephemeral_high + 1, u16::MAX)
    } else {
        // The ephemeral range covers nearly everything: take what lies below it.
        (1_024, ephemeral_low.saturating_sub(1).max(1_025))
    }
}

/// The folder of lock files, shared by every user's tests: world-writable with the sticky bit,
/// like /tmp itself.
fn lock_dir() -> PathBuf {
    let dir = std::env::temp_dir().join("chatctl-test-ports");
    if std::fs::DirBuilder::new().mode(0o1777).create(&dir).is_ok() {
        // The umask took bits away from the mode.
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777));
    }
    dir
}

/// The lock of `port`, if no other process holds it.
fn try_lock(dir: &std::path::Path, port: u16) -> Option<Flock<File>> {
    let path = dir.join(format!("{port}.lock"));
    // A lock file another user created may not be writable by us; flock needs no write access.
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o666)
        .open(&path)
        .or_else(|_| File::open(&path))
        .ok()?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).ok()
}

/// Whether no socket of this host uses `port`: binding the wildcard address *without*
/// SO_REUSEADDR fails when any socket holds the port — a listener on any address, one bound
/// but not listening yet, a connection, even one in TIME_WAIT — so a port someone is about to
/// listen on, or was just using, is passed over.
fn bindable(port: u16) -> bool {
    use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    let Ok(probe) = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return false;
    };
    let address = SockaddrIn::from(std::net::SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port));
    bind(std::os::fd::AsRawFd::as_raw_fd(&probe), &address).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;
    use std::time::{Duration, Instant};

    // One test: ports are handed out in order, so a second test thread would change which
    // port comes next.
    #[test]
    fn ports_are_distinct_bindable_outside_the_ephemeral_range_and_skip_locked_ones() {
        let (low, high) = usable_range();
        let ports: Vec<u16> = (0..20).map(|_| port()).collect();
        let mut unique = ports.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(
            unique.len(),
            ports.len(),
            "a port was handed out twice: {ports:?}"
        );
        for &port in &ports {
            assert!(
                (low..=high).contains(&port),
                "{port} is outside {low}-{high}"
            );
            TcpListener::bind(("127.0.0.1", port)).expect("a reserved port binds");
        }

        // Another process (flock(1), as ops/lib/ports.sh uses it) holds the next candidate.
        let candidate = RESERVED
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .next
            .expect("a next candidate after 20 ports");
        let dir = lock_dir();
        let mut holder = std::process::Command::new("flock")
            .arg(dir.join(format!("{candidate}.lock")))
            .args(["-c", "read line"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("flock(1) from util-linux");
        let deadline = Instant::now() + Duration::from_secs(20);
        while try_lock(&dir, candidate).is_some() {
            assert!(Instant::now() < deadline, "flock(1) never took the lock");
            std::thread::sleep(Duration::from_millis(10));
        }
        let taken = port();
        drop(holder.stdin.take());
        let _ = holder.wait();
        assert_ne!(
            taken, candidate,
            "a port locked by another process was handed out"
        );
    }
}
