//! The cookie key: where it comes from, and the key file every worker and restart shares.

use std::future::Future;
use std::path::Path;

/// Why no cookie key could be had; each names the fix.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("the cookie key given (--secret, CHAT_SECRET) is shorter than {MIN_SECRET_LEN} bytes: give a longer key (e.g. `openssl rand -hex 32`)")]
    GivenTooShort,
    #[error("{0}")]
    Shared(String),
    #[error("the cookie key the hosts share (in Redis, under PREFIX:cookie-key) is shorter than {MIN_SECRET_LEN} bytes: delete it there (a new one is made), or set a longer one")]
    SharedTooShort,
    #[error("cannot read or create the cookie key at {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
}

/// The cookie key, looked for in this order: the one `given` (a flag or the environment);
/// else the one `shared` by every host of a cluster (Redis), if there is such a store; else
/// the key file at `file`, created once. The master and a lone `chatctl serve` both get
/// theirs here, so they agree on the order and on what is too short.
pub async fn cookie_key<S>(
    given: Option<&str>,
    shared: Option<S>,
    file: &Path,
) -> Result<Vec<u8>, SecretError>
where
    S: Future<Output = Result<Vec<u8>, String>>,
{
    if let Some(key) = given {
        if key.len() < MIN_SECRET_LEN {
            return Err(SecretError::GivenTooShort);
        }
        return Ok(key.as_bytes().to_vec());
    }
    if let Some(shared) = shared {
        let key = shared.await.map_err(SecretError::Shared)?;
        if key.len() < MIN_SECRET_LEN {
            return Err(SecretError::SharedTooShort);
        }
        return Ok(key);
    }
    load_or_create_secret(file).map_err(|source| SecretError::File {
        path: file.display().to_string(),
        source,
    })
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

    type Shared = std::future::Ready<Result<Vec<u8>, String>>;

    fn shared(key: &str) -> Option<Shared> {
        Some(std::future::ready(Ok(key.as_bytes().to_vec())))
    }

    #[tokio::test]
    async fn a_given_key_wins_then_the_shared_one_then_the_file() {
        let dir = std::env::temp_dir().join(format!("chat-key-order-{}", std::process::id()));
        let file = dir.join("secret");
        let given = "g".repeat(MIN_SECRET_LEN);
        let stored = "s".repeat(MIN_SECRET_LEN);
        let key = cookie_key(Some(&given), shared(&stored), &file)
            .await
            .unwrap();
        assert_eq!(key, given.as_bytes());
        let key = cookie_key(None, shared(&stored), &file).await.unwrap();
        assert_eq!(key, stored.as_bytes());
        assert!(
            !file.exists(),
            "no key file is made while another source has a key"
        );
        let key = cookie_key(None, None::<Shared>, &file).await.unwrap();
        assert_eq!(key, load_or_create_secret(&file).unwrap());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn short_keys_are_refused_wherever_they_come_from() {
        let file = std::env::temp_dir().join("never-made");
        let short = cookie_key(Some("short"), None::<Shared>, &file).await;
        assert!(matches!(short, Err(SecretError::GivenTooShort)));
        let short = cookie_key(None, shared("short"), &file).await;
        assert!(matches!(short, Err(SecretError::SharedTooShort)));
        let failed = cookie_key(None, Some(std::future::ready(Err("down".into()))), &file).await;
        assert!(matches!(failed, Err(SecretError::Shared(why)) if why == "down"));
    }
}
