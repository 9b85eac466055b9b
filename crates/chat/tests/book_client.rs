//! The book's own client code in a real browser (issue 19): the chat room page of the book's
//! chapter 4 (`tests/js/book/`) runs in chromium once on the npm Socket.IO 0.9 bundle (the
//! book's client, speaking 0.9 to `/socket.io/1/`) and once on the client we serve at
//! `/socket.io/socket.io.js`, in one room with a user of our own chat room page; see
//! `tests/js/book_chapter4.mjs` for the steps.
//!
//! Needs `node`, the npm packages of `ops/js` (with `socket.io-client-0.9`) and
//! `/usr/bin/chromium` (or `$CHATCTL_CHROMIUM`): `ops/test-deps.sh` installs all three.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::run_bounded;

/// A few seconds when idle; this bounds a hung browser on a busy machine.
const BROWSER_RUN_DEADLINE: Duration = Duration::from_secs(300);
/// After SIGTERM, how long Playwright may take to close the browser before SIGKILL.
const TERMINATE_GRACE: Duration = Duration::from_secs(10);

#[test]
fn the_books_chapter_4_page_chats_on_the_0_9_client_and_on_ours() {
    let chromium =
        std::env::var_os("CHATCTL_CHROMIUM").unwrap_or_else(|| "/usr/bin/chromium".into());
    assert!(
        Path::new(&chromium).exists(),
        "{chromium:?} is missing: run ops/test-deps.sh as root, or set CHATCTL_CHROMIUM"
    );
    let server = common::chat_server(chat::ChatConfig {
        secret: b"book client test secret".to_vec(),
        ..chat::ChatConfig::default()
    });
    let mut command = Command::new("node");
    command
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js/book_chapter4.mjs"))
        .arg(&server.url)
        .env("CHATCTL_CHROMIUM", &chromium);
    let run = run_bounded(command, BROWSER_RUN_DEADLINE, TERMINATE_GRACE);
    server.stop();
    let report = run.report();
    let status = run
        .status
        .unwrap_or_else(|| panic!("book_chapter4.mjs overran {BROWSER_RUN_DEADLINE:?}\n{report}"));
    assert!(
        status.success(),
        "book_chapter4.mjs failed ({status})\n{report}"
    );
    println!("book_chapter4.mjs passed in {:?}\n{report}", run.elapsed);
}
