//! No message lost when a worker dies (issue 15): chat users on the real npm socket.io-client
//! 4.x in one room on `chatctl start -i 2`, a sender saying a numbered message every 70 ms, and
//! `kill -9` of a worker (or `chatctl reload`) mid-stream. After a kill the clients come back
//! through connection-state recovery, to the other worker: every receiver gets every number
//! exactly once, every socket that reconnected is `recovered`, and nobody is announced as
//! having left. A reload hands every socket to the new worker instead: nobody even reconnects.

mod support;

use serde_json::Value;
use support::{
    all_online, assert_nothing_lost, node_program, signal, wait_for_value, worker_pids, workers,
    App, ClientScript,
};

const RECEIVERS: &str = "40";
const MESSAGES: &str = "80";

/// What strikes the app once the sender is under way.
enum Fault {
    /// `kill -9` of the busier worker.
    KillWorker,
    /// `chatctl reload`: every worker replaced.
    Reload,
    /// `chatctl upgrade`: a new master and new workers; the old workers drain while both
    /// masters run, one app over the bridge between them.
    Upgrade,
}

/// Runs the scenario over `transport` with `fault` mid-stream, with the embedded store or
/// through Redis at `redis`; returns the clients' final report.
fn fault_mid_stream(name: &str, transport: &str, fault: Fault, redis: Option<&str>) -> Value {
    let node = node_program();
    let app = App::new(name);
    let mut flags = vec!["-i", "2"];
    if let Some(url) = redis {
        flags.extend(["--redis", url]);
    }
    // A log shorter than the run (40 joins and 80 lines): a socket recovers past events
    // evicted for others, as long as none was for it.
    app.start_ok(&flags, &["serve", "--recovery-max-packets", "50"]);
    app.wait_listed("two online workers", |a| all_online(a, 2));
    let mut room = ClientScript::start(
        &node,
        "recovering_room.mjs",
        &[&app.url(), RECEIVERS, transport, MESSAGES],
    );
    let ready = room.next_report();
    assert_eq!(ready["event"], "ready", "{ready}");
    room.tell("go");
    let sending = room.next_report();
    assert_eq!(sending["event"], "sending", "{sending}");
    let listed = app.listed().expect("the app is listed");
    let replaced = match fault {
        Fault::KillWorker => {
            let victim = workers(&listed)
                .iter()
                .max_by_key(|w| w["connections"].as_u64().unwrap_or(0))
                .and_then(|w| w["pid"].as_u64())
                .expect("a worker with a pid") as u32;
            signal(victim, libc::SIGKILL);
            vec![victim]
        }
        Fault::Reload => {
            support::succeeded(&app.run(&["reload", &app.name]));
            worker_pids(&listed)
        }
        Fault::Upgrade => {
            support::succeeded(&app.run(&["upgrade", &app.name]));
            let old_master = listed["master_pid"].as_u64();
            app.wait_listed("the new master", |a| a["master_pid"].as_u64() != old_master);
            worker_pids(&listed)
        }
    };
    let done = room.next_report();
    room.wait_success();
    let after = app.wait_listed("two online workers again", |a| all_online(a, 2));
    assert!(
        worker_pids(&after)
            .iter()
            .all(|pid| !replaced.contains(pid)),
        "the workers struck were not replaced: {replaced:?} -> {after}"
    );
    assert_eq!(done["event"], "done", "{done}\nlog:\n{}", app.log_text());
    // `chatctl status` counts the recoveries (the receivers' and the sender's), on the
    // workers that made them.
    let expected =
        done["recovered"].as_u64().unwrap_or(0) + done["sender_recovered"].as_u64().unwrap_or(0);
    let counted = wait_for_value("the recoveries counted in status", || {
        let status = app.status()?;
        let recovered: u64 = workers(&status)
            .iter()
            .map(|w| w["recovery"]["recovered"].as_u64().unwrap_or(0))
            .sum();
        (recovered == expected).then_some(status)
    });
    let status = counted.unwrap_or_else(|| panic!("status: {:?}\n{done}", app.status()));
    if redis.is_none() {
        // The master keeps every user's /chat_infra socket (the sender's too): the clients
        // have gone, and may come back.
        let kept = &status["recovery"]["/chat_infra"];
        let sockets = kept["sessions_connected"].as_u64().unwrap_or(0)
            + kept["sessions_kept"].as_u64().unwrap_or(0);
        assert_eq!(sockets, 41, "{status}");
        assert!(kept["packets"].as_u64() > Some(0), "{status}");
    }
    done
}

#[test]
fn kill_9_of_a_worker_loses_no_message_over_websocket() {
    let done = fault_mid_stream("recovery-ws", "websocket", Fault::KillWorker, None);
    eprintln!("kill -9 over websocket: {done}");
    assert_nothing_lost(&done);
}

#[test]
fn kill_9_of_a_worker_loses_no_message_over_long_polling() {
    let done = fault_mid_stream("recovery-polling", "polling", Fault::KillWorker, None);
    eprintln!("kill -9 over long-polling: {done}");
    assert_nothing_lost(&done);
}

#[test]
fn a_reload_loses_no_message_and_nobody_leaves() {
    let done = fault_mid_stream("recovery-reload", "websocket", Fault::Reload, None);
    eprintln!("reload: {done}");
    support::assert_moved_live(&done);
}

/// Users of the old workers, moved by `chatctl upgrade` to the new master's: their websockets
/// are handed to the new master's workers, and the recovery logs move with the app (see
/// upgrade.rs for users on both masters' workers at once).
#[test]
fn an_upgrade_loses_no_message_and_nobody_leaves() {
    let done = fault_mid_stream("recovery-upgrade", "websocket", Fault::Upgrade, None);
    eprintln!("upgrade: {done}");
    support::assert_moved_live(&done);
}

/// Long-polling sessions are not handed across masters: they drain, reconnect to the new
/// master's workers, and recover there, nothing lost.
#[test]
fn an_upgrade_loses_no_message_over_long_polling() {
    let done = fault_mid_stream("recovery-upgrade-polling", "polling", Fault::Upgrade, None);
    eprintln!("upgrade over long-polling: {done}");
    assert_nothing_lost(&done);
    assert!(
        done["disconnects"].as_u64() >= Some(80),
        "every receiver's two sockets were moved: {done}"
    );
}

#[test]
fn kill_9_of_a_worker_loses_no_message_through_redis() {
    let redis = support::RedisServer::start();
    let done = fault_mid_stream(
        "recovery-redis",
        "websocket",
        Fault::KillWorker,
        Some(&redis.url()),
    );
    eprintln!("kill -9 through Redis: {done}");
    assert_nothing_lost(&done);
}
