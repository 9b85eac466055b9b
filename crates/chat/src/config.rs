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
    /// Messages one socket may send per second (a burst of as many is allowed); the excess is
    /// dropped with an `error` event to that socket.
    pub messages_per_second: u32,
    /// Rooms one socket may be in at once.
    pub max_rooms_per_socket: usize,
    /// Open TCP connections at once; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Messages of a room kept and sent to a joiner.
    pub history_len: usize,
    /// How long a client may take to send a request's headers (slowloris guard).
    pub header_read_timeout: Duration,
    /// Adds `Secure` to the cookie: set when clients reach the app over HTTPS.
    pub secure_cookies: bool,
    /// How long a draining worker keeps a quiet keep-alive connection open, so that a request
    /// the client is sending right now gets its answer (with `Connection: close`) instead of a
    /// reset. Busy connections close sooner: right after their next response.
    pub drain_idle_grace: Duration,
    /// How long a room's `users_list` waits after a join or leave, so that the changes of that
    /// time share one list (zero: one list per change, sent at once).
    pub users_list_delay: Duration,
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
            max_rooms_per_socket: 10,
            max_connections: 10_000,
            history_len: 50,
            header_read_timeout: Duration::from_secs(10),
            secure_cookies: false,
            drain_idle_grace: Duration::from_secs(1),
            users_list_delay: Duration::from_millis(100),
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

/// Reads the cookie key from `path`, or creates it there (32 random bytes, hex, mode 0600) so
/// that restarts and the other workers keep accepting existing cookies.
pub fn load_or_create_secret(path: &Path) -> std::io::Result<Vec<u8>> {
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().as_bytes().to_vec()),
        Ok(_) => {}
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let hex = new_secret();
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path);
    match file {
        Ok(mut file) => {
            file.write_all(&hex)?;
            Ok(hex)
        }
        // Another worker created it first: use theirs.
        Err(error) if error.kind() == std::io::ErrorKind::AlreadyExists => {
            Ok(std::fs::read_to_string(path)?.trim().as_bytes().to_vec())
        }
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
}
