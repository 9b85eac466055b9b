//! Which build a master runs, for `chatctl list` after an upgrade: the crate version and a
//! fingerprint of the executable file the process runs (two builds of one version differ in
//! their bytes, so the fingerprint tells them apart without a build step that records it).

use std::io::Read;

use sha2::{Digest, Sha256};

/// `VERSION+FINGERPRINT` of the running executable, e.g. `0.1.0+3f9a1c0e52b7`: the first 12
/// hex digits of the SHA-256 of `/proc/self/exe` (the file this process was started from,
/// even if another has replaced it on disk since). Without it, the crate version alone.
pub fn of_this_process() -> String {
    match fingerprint(std::path::Path::new("/proc/self/exe")) {
        Ok(fingerprint) => format!("{}+{fingerprint}", env!("CARGO_PKG_VERSION")),
        Err(error) => {
            tracing::warn!(%error, "cannot read this executable to tell its build");
            env!("CARGO_PKG_VERSION").to_owned()
        }
    }
}

/// The first 12 hex digits of the SHA-256 of the file at `path`.
pub fn fingerprint(path: &std::path::Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    let digest = hasher.finalize();
    Ok(digest[..6].iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_that_differ_have_different_fingerprints() {
        let dir = std::env::temp_dir().join(format!("chatctl-version-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (a, b) = (dir.join("a"), dir.join("b"));
        std::fs::write(&a, b"one build").unwrap();
        std::fs::write(&b, b"one build\0").unwrap();
        let (fa, fb) = (fingerprint(&a).unwrap(), fingerprint(&b).unwrap());
        assert_eq!(fa.len(), 12);
        assert_ne!(fa, fb);
        assert_eq!(fa, fingerprint(&a).unwrap());
        assert!(of_this_process().starts_with(env!("CARGO_PKG_VERSION")));
        let _ = std::fs::remove_dir_all(dir);
    }
}
