//! Every setting of the chat application, with its default, in one place.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use socketio::SocketIoConfig;

/// Configuration of a [`crate::ChatServer`].
#[derive(Debug, Clone)]
pub struct ChatConfig {
    /// The Socket.IO and Engine.IO layers.
    pub io: SocketIoConfig,
    /// The book's own protocol (Socket.IO 0.9) at `/socket.io/1/`, next to v4.
    pub legacy: legacy::LegacyConfig,
    /// Key that signs session cookies; every worker of an app must share it.
    pub secret: Vec<u8>,
    /// How long a login lasts.
    pub session_ttl: Duration,
    /// Longest chat message, in characters.
    pub max_message_chars: usize,
    /// Chat messages (`message`, `private_message`) one connection may send per second, in
    /// all its namespaces together (a burst of as many is allowed); the excess is dropped with
    /// an `error` event to that socket.
    pub messages_per_second: u32,
    /// Every other event, and namespace connects (each counted twice: for itself and for its
    /// disconnect), one connection may send per second: each costs store work (a session
    /// lookup, a room change), so a client must not send them at line rate. A burst of as many
    /// is allowed; the excess gets an `error` event (a connect, CONNECT_ERROR).
    pub events_per_second: u32,
    /// Rooms one socket may be in at once.
    pub max_rooms_per_socket: usize,
    /// Logins one client address (an IPv6 /64) may make per `login_window` (a burst of as
    /// many); beyond it, 429 with Retry-After. Bounds how fast one client fills the session
    /// store, without a lock-out of anyone else; generous enough for an office behind one
    /// NAT address.
    pub logins_per_address: u32,
    /// The window of `logins_per_address`.
    pub login_window: Duration,
    /// Addresses whose login budget is tracked at once (each is forgotten once its budget is
    /// full again): bounds that table against a client with very many addresses.
    pub max_login_addresses: usize,
    /// Sessions the store of one process keeps at once (standalone `chatctl serve`; the
    /// master's store has the same default): a login beyond it is refused with 503.
    pub max_stored_sessions: usize,
    /// Proxies (e.g. `chatctl proxy`) whose `X-Forwarded-For` names the client address; from
    /// anyone else that header could be forged, so the peer address counts.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// Open TCP connections at once, upgraded websockets included; further clients wait in the
    /// listen backlog.
    pub max_connections: usize,
    /// Messages of a room kept and sent to a joiner.
    pub history_len: usize,
    /// How long a room's history stays after its last message. Rooms are created by whoever
    /// names one, so the histories of rooms nobody speaks in any more (empty rooms) cannot be
    /// kept for good (memory in the master, keys in Redis); long enough that a room emptied by
    /// an outage or a page reload comes back with its history.
    pub history_ttl: Duration,
    /// How long a client may take to send a request's headers (slowloris guard).
    pub header_read_timeout: Duration,
    /// Adds `Secure` to the cookie: set when clients reach the app over HTTPS.
    pub secure_cookies: bool,
    /// TCP_NODELAY for the whole of every client connection. Off: once a websocket session is
    /// open, the kernel coalesces small writes to its client while an earlier one is
    /// unacknowledged (Nagle), which lets a busy room reach thousands of clients without a
    /// packet per message per client; requests, answers and handshakes still go out at once.
    pub tcp_nodelay: bool,
    /// How long a draining worker keeps a quiet keep-alive connection open, so that a request
    /// the client is sending right now gets its answer (with `Connection: close`) instead of a
    /// reset. Busy connections close sooner: right after their next response.
    pub drain_idle_grace: Duration,
    /// The other processes of this app on this host, to which requests for their sessions
    /// are forwarded (under chatctl's master); `None` when this process is alone.
    pub peers: Option<Arc<dyn crate::Peers>>,
}

impl Default for ChatConfig {
    fn default() -> Self {
        ChatConfig {
            io: SocketIoConfig::default(),
            legacy: legacy::LegacyConfig::default(),
            secret: Vec::new(),
            session_ttl: Duration::from_secs(7 * 24 * 3600),
            max_message_chars: 2000,
            messages_per_second: 20,
            events_per_second: 20,
            max_rooms_per_socket: 10,
            logins_per_address: 60,
            login_window: Duration::from_secs(60),
            max_login_addresses: 100_000,
            max_stored_sessions: crate::store::DEFAULT_MAX_SESSIONS,
            trusted_proxies: Vec::new(),
            max_connections: 10_000,
            history_len: 50,
            history_ttl: Duration::from_secs(3600),
            header_read_timeout: Duration::from_secs(10),
            secure_cookies: false,
            tcp_nodelay: false,
            drain_idle_grace: Duration::from_secs(1),
            peers: None,
        }
    }
}

/// A new cookie key: 32 random bytes, as 64 hex digits (printable, so it fits a file, an
/// environment variable or a Redis string alike).
pub fn new_secret() -> Vec<u8> {
    let mut bytes = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut bytes);
    bytes
        .iter()
        .flat_map(|b| format!("{b:02x}").into_bytes())
        .collect()
}

/// The shortest cookie key accepted: a shorter one is guessable.
pub const MIN_SECRET_LEN: usize = 16;

/// Reads the cookie key from `path`, or creates it there (32 random bytes, hex, mode 0600) so
/// that restarts and the other workers keep accepting existing cookies. The file appears whole
/// or not at all (written aside, then linked into place), so a worker starting at the same
/// time never reads half a key; a key shorter than [`MIN_SECRET_LEN`] is refused.
pub fn load_or_create_secret(path: &Path) -> std::io::Result<Vec<u8>> {
    let read = |path: &Path| -> std::io::Result<Vec<u8>> {
        let key = std::fs::read_to_string(path)?.trim().as_bytes().to_vec();
        if key.len() < MIN_SECRET_LEN {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "the cookie key in {} is shorter than {MIN_SECRET_LEN} bytes: delete the file (a new key is made) or write a longer key",
                    path.display()
                ),
            ));
        }
        Ok(key)
    };
    match read(path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        other => return other,
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let hex = new_secret();
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // A name of its own for every attempt, so that concurrent creators never share one.
    let aside = dir.join(format!(
        ".{}.{}.new",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("secret"),
        String::from_utf8_lossy(&new_secret()[..16])
    ));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&aside)
        .and_then(|mut file| {
            file.write_all(&hex)?;
            file.sync_all()
        })
        // A link never replaces an existing file: the first creator's key stays.
        .and_then(|()| std::fs::hard_link(&aside, path));
    let _ = std::fs::remove_file(&aside);
    match written {
        Ok(()) => Ok(hex),
        // Another worker created it first: use theirs.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => read(path),
        Err(error) => Err(error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_is_created_once_and_private() {
        let dir = std::env::temp_dir().join(format!("chat-secret-{}", std::process::id()));
        let path = dir.join("secret");
        let _ = std::fs::remove_dir_all(&dir);
        let first = load_or_create_secret(&path).unwrap();
        let second = load_or_create_secret(&path).unwrap();
        assert_eq!(first, second);
        assert_eq!(first.len(), 64);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn concurrent_creators_all_get_the_same_whole_key() {
        let dir = std::env::temp_dir().join(format!("chat-secret-race-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for round in 0..20 {
            let path = dir.join(format!("secret-{round}"));
            let keys: Vec<Vec<u8>> = std::thread::scope(|scope| {
                let creators: Vec<_> = (0..4)
                    .map(|_| scope.spawn(|| load_or_create_secret(&path).unwrap()))
                    .collect();
                creators.into_iter().map(|c| c.join().unwrap()).collect()
            });
            assert!(
                keys.iter().all(|key| key.len() == 64 && *key == keys[0]),
                "round {round}"
            );
        }
        let leftovers: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.ends_with(".new"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_short_key_is_refused() {
        let dir = std::env::temp_dir().join(format!("chat-secret-short-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, "tooshort\n").unwrap();
        let error = load_or_create_secret(&path).unwrap_err();
        assert!(
            error.to_string().contains("shorter than 16 bytes"),
            "{error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
