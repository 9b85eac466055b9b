//! The book's own protocol in the cluster: a user of the npm Socket.IO 0.9 client
//! (`socket.io-client@0.9.16`), a user of today's npm client and a python-socketio user
//! (`CHATCTL_PYTHON`) share a chat room across the two workers of one app, every message
//! exactly once every way; a 0.9 handshake without the login
//! cookie is refused; and when the 0.9 user's worker is killed, its client reconnects by itself
//! and chats again. Once over websocket, once over xhr-polling.

mod support;

use support::ClientScript;
use support::{all_online, http_get, node_program, python_program, signal, workers, App};

fn room_shared_with_a_0_9_user(transport: &str) {
    let app = App::new(&format!("legacy-{transport}"));
    app.start_ok(
        &[
            "-i",
            "2",
            "--health-interval",
            "200ms",
            "--health-timeout",
            "2s",
        ],
        &[],
    );
    let listed = app.wait_listed("two online workers", |a| all_online(a, 2));
    let node = node_program();
    let python = python_program();
    let python = python.to_str().expect("a UTF-8 path to python");
    let mut users = ClientScript::start(&node, "legacy_room.mjs", &[&app.url(), transport, python]);
    let ready = users.next_report();
    assert_eq!(
        ready["event"],
        "ready",
        "users: {ready}\nlog:\n{}",
        app.log_text()
    );
    assert_eq!(ready["connects"], 1, "the 0.9 session was lost: {ready}");
    let legacy_sid = ready["legacy_sid"].as_str().expect("the 0.9 sid");
    let owner = workers(&listed)
        .iter()
        .find(|w| legacy_sid.starts_with(w["sid_tag"].as_str().unwrap_or("-")))
        .unwrap_or_else(|| panic!("no worker's tag starts the 0.9 sid {legacy_sid}: {listed}"));
    signal(owner["pid"].as_u64().expect("pid") as u32, libc::SIGKILL);
    users.tell("killed");
    let done = users.next_report();
    assert_eq!(
        done["event"],
        "done",
        "users: {done}\nlog:\n{}",
        app.log_text()
    );
    users.wait_success();
}

#[test]
fn a_0_9_user_shares_a_room_with_v4_and_python_users_over_websocket() {
    room_shared_with_a_0_9_user("websocket");
}

#[test]
fn a_0_9_user_shares_a_room_with_v4_and_python_users_over_xhr_polling() {
    room_shared_with_a_0_9_user("xhr-polling");
}

/// `--legacy-protocol off` takes `/socket.io/1/` away; by default it answers (here: a refused
/// handshake, since the request has no login cookie).
#[test]
fn the_legacy_protocol_can_be_switched_off() {
    for (setting, status, body) in [("on", 401, "handshake unauthorized"), ("off", 404, "")] {
        let app = App::new(&format!("legacy-{setting}"));
        app.start_ok(&["-i", "1"], &["serve", "--legacy-protocol", setting]);
        app.wait_listed("an online worker", |a| all_online(a, 1));
        let port: u16 = app
            .listen()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port");
        let (got_status, got_body) = http_get(port, "/socket.io/1/?t=1").expect("no answer");
        assert_eq!(
            got_status, status,
            "--legacy-protocol {setting}: {got_body}"
        );
        assert!(
            got_body.contains(body),
            "--legacy-protocol {setting}: {got_body}"
        );
    }
}
