//! The chat in a real browser (DESIGN §7): a `ChatServer` runs in this process and
//! `tests/js/browser_e2e.mjs` drives Debian's chromium against it with npm `playwright-core` —
//! login through the landing page, two users chatting in one room, a third user's room kept
//! apart, the live user counts of `/rooms`, and markup in a message shown as text (see that
//! script for the steps). Screenshots of every page land in `target/test-output/browser/`.
//!
//! Needs `node`, the npm packages of `ops/js` and `/usr/bin/chromium` (or `$CHATCTL_CHROMIUM`):
//! `ops/test-deps.sh` installs all three.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{run_bounded, ChildRun};

use chat::ChatConfig;

/// The run takes a few seconds when idle; this bounds a hung browser on a busy machine.
const BROWSER_RUN_DEADLINE: Duration = Duration::from_secs(300);
/// After SIGTERM, how long Playwright may take to close the browser before SIGKILL.
const TERMINATE_GRACE: Duration = Duration::from_secs(10);

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn test_config() -> ChatConfig {
    ChatConfig {
        secret: b"browser test secret".to_vec(),
        ..ChatConfig::default()
    }
}

/// Runs the script against `base_url` to completion, or stops it at the deadline.
fn run_browser(base_url: &str, chromium: &Path, screenshots: &Path) -> ChildRun {
    let mut command = Command::new("node");
    command
        .arg(crate_dir().join("tests/js/browser_e2e.mjs"))
        .arg(base_url)
        .arg(screenshots)
        .env("CHATCTL_CHROMIUM", chromium);
    run_bounded(command, BROWSER_RUN_DEADLINE, TERMINATE_GRACE)
}

#[test]
fn chromium_users_log_in_chat_in_rooms_and_see_markup_as_text() {
    let chromium = testkit::browser::chromium();
    let screenshots = testkit::browser::output_dir(env!("CARGO_TARGET_TMPDIR"), "browser");
    let server = common::chat_server(test_config());
    let run = run_browser(&server.url, &chromium, &screenshots);
    server.stop();

    let report = run.report();
    match run.status {
        None => panic!(
            "browser_e2e.mjs did not finish within {BROWSER_RUN_DEADLINE:?} and was killed \
             (screenshots, if any, in {})\n{report}",
            screenshots.display()
        ),
        Some(status) => assert!(
            status.success(),
            "browser_e2e.mjs failed ({status}) after {:?}; screenshots in {}\n{report}",
            run.elapsed,
            screenshots.display()
        ),
    }
    println!("browser_e2e.mjs passed in {:?}\n{report}", run.elapsed);
}
