//! What the browser tests share: Debian's chromium with the npm `playwright-core` that drives
//! it, and a folder for their screenshots.

use std::path::{Path, PathBuf};

/// The browser binary (`$CHATCTL_CHROMIUM`, else `/usr/bin/chromium`), once it and
/// `playwright-core` are known to be installed. A missing browser fails the test: an
/// end-to-end test that skips proves nothing.
pub fn chromium() -> PathBuf {
    let chromium = std::env::var_os("CHATCTL_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    assert!(
        chromium.exists(),
        "{} is missing: run ops/test-deps.sh as root (Debian: apt-get install chromium), or set \
         CHATCTL_CHROMIUM",
        chromium.display()
    );
    crate::clients::node_with("playwright-core");
    chromium
}

/// `test-output/NAME/` of the target directory whose `tmp` folder is `target_tmpdir` (a test's
/// `env!("CARGO_TARGET_TMPDIR")`), emptied so that only this run's screenshots are there.
pub fn output_dir(target_tmpdir: &str, name: &str) -> PathBuf {
    let target = Path::new(target_tmpdir)
        .parent()
        .expect("CARGO_TARGET_TMPDIR is inside the target directory");
    let dir = target.join("test-output").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|error| panic!("cannot create {}: {error}", dir.display()));
    dir
}
