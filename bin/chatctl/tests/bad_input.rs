//! Bad input costs one clear line and nothing else: invalid flags, a second start of a running
//! app, a taken address, and the stale files of a master that was killed.

mod support;

use std::os::unix::process::CommandExt;

use support::{alive, all_online, signal, stderr_lines, wait_until, worker_pids, App};

#[test]
fn an_invalid_flag_prints_one_line_and_exits_2() {
    let app = App::new("flags");
    for args in [
        &["start", "--no-such-flag"][..],
        &["start", "--health-interval", "3x"],
        &["start", "-i", "0"],
        &["start", "--listen", "localhost"],
        &["scale", "chat", "many"],
        &["frobnicate"],
    ] {
        let output = app.run(args);
        let lines = stderr_lines(&output);
        assert_eq!(output.status.code(), Some(2), "chatctl {args:?}: {lines:?}");
        assert_eq!(lines.len(), 1, "chatctl {args:?} printed {lines:?}");
        assert!(lines[0].starts_with("chatctl: "), "{lines:?}");
        assert!(
            output.stdout.is_empty(),
            "chatctl {args:?} printed to stdout"
        );
    }
    assert!(app.list().is_empty(), "a refused command started something");
}

#[test]
fn a_second_start_of_a_running_app_fails_with_one_line() {
    let app = App::new("twice");
    let first = app.start_ok(&["-i", "1"], &[]);

    let output = app.start(&["-i", "1"], &[]);
    let lines = stderr_lines(&output);
    assert!(!output.status.success(), "second start succeeded");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("already running"), "{lines:?}");

    let still = app.wait_listed("the first master still serving", |a| all_online(a, 1));
    assert_eq!(still["master_pid"], first["master_pid"]);
}

#[test]
fn an_address_in_use_fails_with_one_line() {
    let app = App::new("inuse");
    // The test holds the address first (any free port, kept), then asks chatctl for it.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("cannot bind loopback");
    let address = taken.local_addr().expect("no local address").to_string();

    let output = app.run(&[
        "start", "--name", &app.name, "--listen", &address, "-i", "1",
    ]);
    let lines = stderr_lines(&output);
    assert!(
        !output.status.success(),
        "start on a taken address succeeded"
    );
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("cannot bind") && lines[0].contains(&address),
        "{lines:?}"
    );
    assert!(app.list().is_empty(), "a failed start left an app behind");
    assert!(!app.app_dir().join("control.sock").exists());
}

#[test]
fn the_stale_files_of_a_killed_master_are_cleaned_up() {
    let app = App::new("stale");
    let status = app.start_ok(&["-i", "2"], &[]);
    let master = status["master_pid"].as_u64().expect("master pid") as u32;
    let pids = worker_pids(&status);

    signal(master, libc::SIGKILL);
    // The workers follow their master (PR_SET_PDEATHSIG).
    wait_until("the master and its workers to die", || {
        pids.iter().chain([&master]).all(|pid| !alive(*pid))
    });
    assert!(
        app.app_dir().join("control.sock").exists() && app.app_dir().join("master.pid").exists(),
        "the killed master left no stale files: nothing to test"
    );

    let output = app.run(&["status", &app.name]);
    let lines = stderr_lines(&output);
    assert!(!output.status.success(), "status of a dead app succeeded");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("not running"), "{lines:?}");

    let restarted = app.start_ok(&["-i", "2"], &[]);
    assert_ne!(restarted["master_pid"], status["master_pid"]);
    app.wait_listed("the new master's workers online", |a| all_online(a, 2));
    assert_eq!(app.list().len(), 1);
}

#[test]
fn stop_of_an_app_whose_master_was_killed_touches_nothing_else() {
    let app = App::new("stalestop");
    let status = app.start_ok(&["-i", "1"], &[]);
    let master = status["master_pid"].as_u64().expect("master pid") as u32;
    let pids = worker_pids(&status);
    signal(master, libc::SIGKILL);
    wait_until("the master and its worker to die", || {
        pids.iter().chain([&master]).all(|pid| !alive(*pid))
    });
    // Pids get reused: make the pid file name another program, a group leader like the
    // master was. `stop` must neither wait for it nor signal its group.
    let bystander = std::process::Command::new("sleep")
        .arg("30")
        .process_group(0)
        .spawn()
        .expect("cannot start a bystander process");
    let bystander = Bystander(bystander);
    std::fs::write(
        app.app_dir().join("master.pid"),
        bystander.0.id().to_string(),
    )
    .expect("cannot rewrite the pid file");

    let started = std::time::Instant::now();
    let output = app.run(&["stop", &app.name]);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "stop waited {:?} for a process that is not the master",
        started.elapsed()
    );
    assert!(
        alive(bystander.0.id()),
        "stop killed an unrelated process: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!app.app_dir().join("control.sock").exists());
    assert!(!app.app_dir().join("master.pid").exists());
}

/// A process of the test's own, killed at the end.
struct Bystander(std::process::Child);

impl Drop for Bystander {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
