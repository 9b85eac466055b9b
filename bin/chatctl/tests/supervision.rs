//! The master keeps an app's workers running: crashed and hung workers are replaced, a crash
//! loop is marked but never given up on, and `stop` leaves nothing behind. Real processes:
//! `chatctl start` daemonizes a master, which runs `chatctl serve` workers or a given program.

mod support;

use support::{
    alive, all_online, group_members, node_program, pid_of, signal, wait_until, worker_pids,
    workers, App, ClientScript, QUICK_HEALTH,
};

#[test]
fn killed_and_hung_workers_are_replaced() {
    let app = App::new("replace");
    let flags = [&["-i", "2"], QUICK_HEALTH].concat();
    app.start_ok(&flags, &[]);
    let listed = app.wait_listed("two online workers", |a| all_online(a, 2));
    let (crashed, hung) = (pid_of(&listed, 0), pid_of(&listed, 1));

    signal(crashed, libc::SIGKILL);
    let listed = app.wait_listed("worker 0 replaced after kill -9", |a| {
        all_online(a, 2) && pid_of(a, 0) != crashed
    });
    assert_eq!(workers(&listed)[0]["restarts"], 1, "{listed}");
    assert_eq!(workers(&listed)[1]["restarts"], 0, "{listed}");
    assert!(
        workers(&listed)[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("signal 9")),
        "{listed}"
    );

    // A stopped process is alive but answers nothing: only the health probes can tell.
    let _resume = Resume(hung);
    signal(hung, libc::SIGSTOP);
    let listed = app.wait_listed("hung worker 1 replaced", |a| {
        all_online(a, 2) && pid_of(a, 1) != hung
    });
    assert_eq!(workers(&listed)[1]["restarts"], 1, "{listed}");
    wait_until("the hung worker to be gone", || !alive(hung));
    assert!(
        app.log_text().contains("missed 2 health probes"),
        "the log does not say why worker 1 was replaced:\n{}",
        app.log_text()
    );
}

#[test]
fn a_crash_loop_is_errored_but_retried_for_ever() {
    let app = App::new("crashloop");
    let flags = [
        "-i",
        "1",
        "--crash-loop-exits",
        "3",
        "--restart-delay",
        "50ms",
        "--restart-max-delay",
        "200ms",
    ];
    let output = app.start(&flags, &["/bin/sh", "-c", "exit 3"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "start succeeded: {stderr}");
    assert!(
        stderr.contains("exited with code 3"),
        "start does not say why: {stderr}"
    );

    let errored = app.wait_listed("worker 0 errored", |a| workers(a)[0]["status"] == "errored");
    let master = errored["master_pid"].as_u64().expect("master pid") as u32;
    let restarts = workers(&errored)[0]["restarts"].as_u64().unwrap_or(0);
    assert!(
        restarts >= 3,
        "errored after {restarts} restarts: {errored}"
    );
    // Still retrying, at the slowest pace, and still errored.
    let later = app.wait_listed("more restarts of the errored worker", |a| {
        workers(a)[0]["restarts"].as_u64().unwrap_or(0) >= restarts + 3
    });
    assert_eq!(workers(&later)[0]["status"], "errored", "{later}");
    assert!(alive(master), "the master gave up");

    let status = app.status().expect("status of a crash-looping app");
    assert!(
        workers(&status)[0]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("exited with code 3")),
        "{status}"
    );
    let text = app.run(&["status", &app.name]);
    assert!(
        String::from_utf8_lossy(&text.stdout).contains("last failure: exited with code 3"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );
}

#[test]
fn stop_leaves_no_process_of_the_app_alive() {
    let app = App::new("stopall");
    let status = app.start_ok(&["-i", "2"], &[]);
    let master = status["master_pid"].as_u64().expect("master pid") as u32;
    let pids = worker_pids(&status);
    assert_eq!(pids.len(), 2, "{status}");
    let group = group_members(master);
    assert!(
        pids.iter().chain([&master]).all(|pid| group.contains(pid)),
        "the workers {pids:?} are not in the master's process group {master}: {group:?}"
    );

    stop_and_check_nothing_is_left(&app, master, &pids);
}

#[test]
fn stop_also_ends_what_the_workers_started() {
    let app = App::new("stopgroup");
    // A worker that leaves a child behind; PR_SET_PDEATHSIG does not pass to the child.
    let status = app.start_ok(
        &["-i", "2", "--min-uptime", "100ms"],
        &["/bin/sh", "-c", "sleep 600 & exec sleep 601"],
    );
    let master = status["master_pid"].as_u64().expect("master pid") as u32;
    let pids = worker_pids(&status);
    let master_workers_and_children = 1 + 2 * pids.len();
    wait_until("the workers' children to start", || {
        group_members(master).len() >= master_workers_and_children
    });

    stop_and_check_nothing_is_left(&app, master, &pids);
}

/// `chatctl stop`, then: no worker, no master, nothing in the master's process group, no
/// runtime files.
/// Its websocket users are handed to the replacement, as on a reload: none of them notices.
#[test]
fn a_worker_above_max_memory_is_replaced_like_a_reload() {
    let app = App::new("memory");
    // Any chat worker needs more than 1 MiB: it is replaced at every health check.
    app.start_ok(
        &[
            "-i",
            "1",
            "--max-memory",
            "1M",
            "--health-interval",
            "500ms",
        ],
        &[],
    );
    let first = app.wait_listed("one online worker", |a| all_online(a, 1));
    let first_pid = pid_of(&first, 0);
    let mut crowd = ClientScript::start(&node_program(), "crowd.mjs", &[&app.url(), "10"]);
    let connected = crowd.next_report();
    assert_eq!(connected["event"], "connected", "crowd: {connected}");
    let replaced = app.wait_listed("a new worker in place of the big one", |a| {
        all_online(a, 1) && pid_of(a, 0) != first_pid
    });
    // A replacement is a reload, not a crash: nothing counts as a restart.
    assert_eq!(workers(&replaced)[0]["restarts"], 0, "{replaced}");
    assert!(
        app.log_text().contains("above --max-memory"),
        "the log does not say why:\n{}",
        app.log_text()
    );
    wait_until("the big worker gone", || !alive(first_pid));
    let done = crowd.tell_and_wait_done("replaced", || app.log_text());
    assert_eq!(done["connected"], 10, "crowd: {done}");
    assert_eq!(
        done["disconnects"],
        0,
        "crowd: {done}\nlog:\n{}",
        app.log_text()
    );
}

fn stop_and_check_nothing_is_left(app: &App, master: u32, pids: &[u32]) {
    let output = app.run(&["stop", &app.name]);
    assert!(
        output.status.success(),
        "stop failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // `stop` returns once everything is gone: no waiting here.
    for pid in pids.iter().chain([&master]) {
        assert!(!alive(*pid), "pid {pid} is still running after stop");
    }
    let left = group_members(master);
    assert!(left.is_empty(), "left in the app's process group: {left:?}");
    assert!(
        !app.app_dir().join("control.sock").exists() && !app.app_dir().join("master.pid").exists(),
        "stop left runtime files behind"
    );
    let listed = app.listed();
    assert!(
        listed
            .as_ref()
            .is_some_and(|a| a["state"] == "stopped" && workers(a).is_empty()),
        "a stopped app is not listed as stopped (with its definition kept): {listed:?}"
    );
}

/// Lets a stopped worker go on (to die) if the test ends before the master replaced it.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        if alive(self.0) {
            signal(self.0, libc::SIGCONT);
            signal(self.0, libc::SIGKILL);
        }
    }
}
