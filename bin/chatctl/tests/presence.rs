//! Presence through the master's store (the embedded mode, no Redis): a user of the npm
//! Socket.IO client who joins ten rooms, renames itself with `set_name` and disconnects leaves
//! every room, under the name the others saw it enter; no ghost stays in the room counts. The
//! two users may land on different workers: the departure crosses the master too.

mod support;

use serde_json::json;
use support::{all_online, node_program, App, ClientScript};

#[test]
fn a_renamed_user_leaves_no_ghost_in_the_masters_store() {
    let node = node_program();
    let app = App::new("ghost");
    app.start_ok(&["-i", "2"], &[]);
    app.wait_listed("two online workers", |a| all_online(a, 2));
    let mut users = ClientScript::start(&node, "ghost.mjs", &[&app.url(), "10"]);
    let done = users.next_report();
    assert_eq!(
        done,
        json!({"event": "done", "left": "old", "rooms": {"room0": 1}}),
        "log:\n{}",
        app.log_text()
    );
    users.wait_success();
}
