//! The master's dashboard as an operator sees it: real Chromium (npm playwright-core) opens
//! `http://ADMIN/` of `chatctl start -i 2 --admin ...` while real users (npm
//! socket.io-client) chat; the charts move, a `kill -9` of a worker shows in the events list
//! with its log lines, and the page's own Scale button (token, same origin) adds a worker.
//! Screenshots land in `target/test-output/admin-dashboard/`.

mod support;

use support::admin::ChattingApp;
use support::{all_online, worker_pids, ClientScript};

#[test]
fn the_dashboard_shows_chat_traffic_and_a_crash_live_and_scales_the_app() {
    let chatting = ChattingApp::start("dashboard", 6);
    let (app, admin) = (&chatting.app, &chatting.admin);
    let token = std::fs::read_to_string(app.app_dir().join("admin-token"))
        .expect("the admin token file is made");
    let node = support::node_program();

    let chromium = testkit::browser::chromium();
    let shots = testkit::browser::output_dir(env!("CARGO_TARGET_TMPDIR"), "admin-dashboard");
    let url = format!("http://{admin}/#token={}", token.trim());
    let args = [
        url.as_str(),
        shots.to_str().unwrap(),
        chromium.to_str().unwrap(),
    ];
    let mut browser = ClientScript::start(&node, "dashboard.mjs", &args);
    let report = browser.next_report();
    assert_eq!(
        report["event"],
        "watching",
        "{report}\nlog:\n{}",
        app.log_text()
    );

    let victim = worker_pids(&app.status().expect("status"))[0];
    support::signal(victim, libc::SIGKILL);
    browser.tell(&format!("killed {victim}"));
    let report = browser.next_report();
    assert_eq!(
        report["event"],
        "crash",
        "{report}\nlog:\n{}",
        app.log_text()
    );

    let report = browser.next_report();
    assert_eq!(
        report["event"],
        "scaled",
        "{report}\nlog:\n{}",
        app.log_text()
    );
    browser.wait_success();
    app.wait_listed("three online workers", |a| all_online(a, 3));
    assert!(shots.join("2-crash.png").exists());
    chatting.stop_chatting();
}
