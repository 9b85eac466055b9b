//! `chatctl reload` under load: HTTP requests on keep-alive and on new connections, and a crowd
//! of real Socket.IO clients (npm socket.io-client), while every worker is replaced.

mod support;

use support::http_load::LoadLoops;
use support::{all_online, node_program, worker_pids, App, ClientScript};

/// Socket.IO users connected across the reload.
const CROWD: usize = 50;

#[test]
fn reload_fails_no_request_and_disconnects_no_socketio_client() {
    let node = node_program();
    let app = App::new("reload");
    app.start_ok(&["-i", "2", "--drain-timeout", "5s"], &[]);
    let before = app.wait_listed("two online workers", |a| all_online(a, 2));
    let old_pids = worker_pids(&before);

    let crowd_size = CROWD.to_string();
    let mut crowd = ClientScript::start(&node, "crowd.mjs", &[&app.url(), &crowd_size]);
    let connected = crowd.next_report();
    assert_eq!(connected["event"], "connected", "crowd: {connected}");
    let loops = LoadLoops::start(app.port);

    let reload = app.run(&["reload", &app.name]);
    let reload_output = String::from_utf8_lossy(&reload.stdout).into_owned();
    assert!(
        reload.status.success(),
        "reload failed: {reload_output}{}",
        String::from_utf8_lossy(&reload.stderr)
    );
    assert!(
        reload_output.contains("reloaded 2 workers"),
        "{reload_output}"
    );
    let done = crowd.tell_and_wait_done("reloaded", || app.log_text());

    // Some requests after the reload too: the new workers serve both kinds.
    loops.finish_without_failures("reload");

    let after = app.wait_listed("two online workers after the reload", |a| all_online(a, 2));
    let new_pids = worker_pids(&after);
    assert!(
        new_pids.iter().all(|pid| !old_pids.contains(pid)),
        "not every worker was replaced: {old_pids:?} -> {new_pids:?}"
    );
    eprintln!("crowd across the reload: {done}");
    assert_eq!(done["connected"], CROWD, "crowd: {done}");
    // Every user was handed to a new worker without noticing (live hand-off).
    assert_eq!(done["disconnects"], 0, "users disconnected: {done}");
    assert_eq!(done["connects"], CROWD, "users connected again: {done}");
}
