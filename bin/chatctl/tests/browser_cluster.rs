//! The main job as a user meets it: `chatctl start -i 2` (the master and two chat workers, sharing
//! state through the master), and real Chromium users driven by npm `playwright-core` through
//! the same scenario as crates/chat's browser test (crates/chat/tests/js/browser_e2e.mjs): login,
//! two users chatting in one room, a third room kept apart, `/rooms` counts, markup as text.
//! Then every worker is reloaded under the two users: each old worker hands their connections to
//! its replacement, and their pages never see a reconnect, miss or repeat nothing, and nobody
//! leaves.

mod support;

use std::io::{BufRead, BufReader, Write};

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use support::{all_online, App};

/// The scenario takes seconds; this bounds a hung browser on a busy machine.
const BROWSER_DEADLINE: Duration = Duration::from_secs(300);

#[test]
fn chromium_users_chat_through_a_two_worker_app() {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let chromium = testkit::browser::chromium();

    let app = App::new("browser");
    app.start_ok(&["-i", "2"], &[]);
    app.wait_listed("two online workers", |a| all_online(a, 2));
    let screenshots = app.home.join("screenshots");

    let mut child = Command::new("node")
        .arg(workspace.join("crates/chat/tests/js/browser_e2e.mjs"))
        .arg(app.url())
        .arg(&screenshots)
        .env("CHATCTL_CHROMIUM", &chromium)
        .env("CHATCTL_E2E_FAULT", "reload")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start node ({e}): run ops/test-deps.sh"));
    let pid = child.id();
    // The script says when to strike: then every worker is reloaded, and it is told.
    let mut stdin = child.stdin.take().expect("node's stdin");
    let stdout = child.stdout.take().expect("node's stdout");
    let (lines_tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    let (done_tx, done) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(child.wait_with_output());
    });
    let mut printed = Vec::new();
    let started = std::time::Instant::now();
    while let Ok(line) = lines.recv_timeout(BROWSER_DEADLINE.saturating_sub(started.elapsed())) {
        let fault = line == "fault: now";
        printed.push(line);
        if fault {
            support::succeeded(&app.run(&["reload", &app.name]));
            writeln!(stdin, "reloaded").expect("telling the script");
        }
    }
    let left = BROWSER_DEADLINE.saturating_sub(started.elapsed());
    let output = match done.recv_timeout(left.max(Duration::from_secs(5))) {
        Ok(output) => output.expect("waiting for node"),
        Err(_) => {
            // SIGTERM lets Playwright close the browser it started.
            support::signal(pid, libc::SIGTERM);
            panic!("the browser scenario did not finish within {BROWSER_DEADLINE:?}");
        }
    };
    assert!(
        output.status.success(),
        "browser scenario failed ({}):\n{}\n{}\nlog:\n{}",
        output.status,
        printed.join("\n"),
        String::from_utf8_lossy(&output.stderr),
        app.log_text()
    );
    assert!(
        printed
            .iter()
            .any(|line| line.contains("the pages are as before the fault")),
        "the scenario skipped the fault: {printed:?}"
    );
}
