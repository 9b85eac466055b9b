//! `chatctl upgrade` (issue 16): the app's master replaced by one started from the executable
//! now on disk, its port open throughout; and an upgrade that cannot happen leaves the old
//! master serving.
//!
//! "A new build" without building: the app runs from a copy of the chatctl under test, which
//! the test then replaces (write aside, rename over, as a deploy does: the running file is
//! never written) with the same ELF plus bytes appended. The kernel loads an ELF by its
//! program headers and ignores what follows the last segment, so the new file runs the same
//! code; its bytes, hence its SHA-256 and the version `chatctl list` shows, differ. What the
//! test proves is that the master running after the upgrade was started from the new file:
//! its pid is new and its version is the new file's fingerprint.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde_json::Value;
use support::http_load::LoadLoops;
use support::{
    alive, all_online, chatctl_exe, group_members, http_get, node_program, stderr_lines, succeeded,
    wait_until, worker_pids, App, ClientScript,
};

/// Socket.IO users connected across the upgrade.
const CROWD: usize = 50;

/// A copy of the chatctl under test in the app's home, to start the app from and replace.
fn installed_copy(app: &App) -> PathBuf {
    let dir = app.home.join("bin");
    std::fs::create_dir_all(&dir).expect("cannot create the install directory");
    let exe = dir.join("chatctl");
    let contents = std::fs::read(chatctl_exe()).expect("cannot read chatctl");
    replace_file(&exe, &contents, 0o755);
    exe
}

/// Replaces the file at `exe` the way a deploy does: the new file written beside it, then
/// renamed over it (a running executable's file cannot be written in place). Written by a
/// `cat` of its own: a file this multi-threaded test process held open for writing could be
/// inherited, for a moment, by a process another test forks, and exec'ing it then fails with
/// ETXTBSY.
fn replace_file(exe: &Path, contents: &[u8], mode: u32) {
    use std::io::Write;
    let partial = exe.with_extension("partial");
    let mut cat = std::process::Command::new("sh")
        .arg("-c")
        .arg("cat > \"$1\"")
        .arg("sh")
        .arg(&partial)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("cannot run cat");
    cat.stdin
        .take()
        .expect("cat's stdin")
        .write_all(contents)
        .expect("cannot write the new file");
    assert!(cat.wait().expect("cat").success(), "cat failed");
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(mode))
        .expect("cannot set the new file's mode");
    std::fs::rename(&partial, exe).expect("cannot put the new file in place");
}

/// `chatctl start` of `app` from the executable at `exe`.
fn start_from(app: &App, exe: &Path, flags: &[&str]) -> Value {
    let listen = app.listen();
    let mut args = vec!["start", "--name", &app.name, "--listen", &listen];
    args.extend_from_slice(flags);
    succeeded(
        &app.command_of(exe, &args)
            .output()
            .expect("cannot run chatctl start"),
    );
    app.wait_listed("two online workers", |a| all_online(a, 2))
}

fn master_of(listed: &Value) -> (u32, String) {
    let pid = listed["master_pid"].as_u64().expect("a master pid") as u32;
    let version = listed["version"].as_str().expect("a version").to_owned();
    (pid, version)
}

#[test]
fn an_upgrade_under_load_fails_no_connection_and_runs_the_new_binary() {
    let node = node_program();
    let app = App::new("upgrade");
    let exe = installed_copy(&app);
    let before = start_from(&app, &exe, &["-i", "2", "--drain-timeout", "5s"]);
    let (old_master, old_version) = master_of(&before);
    assert!(
        old_version.starts_with(concat!(env!("CARGO_PKG_VERSION"), "+")),
        "the version names the crate's and the build's: {old_version}"
    );

    let crowd_size = CROWD.to_string();
    let mut crowd = ClientScript::start(&node, "crowd.mjs", &[&app.url(), &crowd_size]);
    let connected = crowd.next_report();
    assert_eq!(connected["event"], "connected", "crowd: {connected}");
    let loops = LoadLoops::start(app.port);

    let mut new_build = std::fs::read(chatctl_exe()).expect("cannot read chatctl");
    new_build.extend_from_slice(b"\nchatctl upgrade test: another build\n");
    replace_file(&exe, &new_build, 0o755);
    let began = std::time::Instant::now();
    let upgrade = app.run(&["upgrade", &app.name]);
    eprintln!("chatctl upgrade took {:?}", began.elapsed());
    let printed = String::from_utf8_lossy(&upgrade.stdout).into_owned();
    assert!(
        upgrade.status.success(),
        "upgrade failed: {printed}{}\nlog:\n{}",
        String::from_utf8_lossy(&upgrade.stderr),
        app.log_text()
    );
    assert!(printed.contains("upgraded: master"), "{printed}");

    // The users were on the old workers, which hand their websockets to the new master's
    // workers as the old master stops (live hand-off): once it is gone, every user is still
    // connected and none saw a disconnect.
    wait_until("the old master to exit", || !alive(old_master));
    let done = crowd.tell_and_wait_done("upgraded", || app.log_text());
    assert_eq!(done["connected"], CROWD, "crowd: {done}");
    assert_eq!(
        done["disconnects"],
        0,
        "crowd: {done}\nlog:\n{}",
        app.log_text()
    );

    eprintln!("crowd across the upgrade: {done}");
    loops.finish_without_failures("upgrade");

    // The new master, started from the new file, owns the app and its files; the old one is
    // gone.
    let after = app.wait_listed("two online workers of the new master", |a| {
        all_online(a, 2) && a["master_pid"].as_u64() != Some(u64::from(old_master))
    });
    let (new_master, new_version) = master_of(&after);
    assert_ne!(
        new_version, old_version,
        "the version tells the builds apart"
    );
    assert_eq!(app.master_pid(), Some(new_master), "master.pid names it");
    let status = app
        .status()
        .expect("the new master answers on control.sock");
    assert_eq!(status["master_pid"], new_master);
    assert_eq!(status["version"], new_version.as_str());
    assert!(!app.app_dir().join("control.sock.next").exists());
    wait_until("the old master to exit", || !alive(old_master));
    // The new master and its workers run the new file (workers exec their master's binary).
    let installed = std::fs::metadata(&exe).expect("the installed file").ino();
    for pid in std::iter::once(new_master).chain(worker_pids(&after)) {
        let running = std::fs::metadata(format!("/proc/{pid}/exe"))
            .unwrap_or_else(|e| panic!("cannot look at process {pid}'s executable: {e}"));
        assert_eq!(running.ino(), installed, "process {pid} runs another file");
    }
}

#[test]
fn a_failed_upgrade_leaves_the_old_master_serving() {
    let app = App::new("upfail");
    let exe = installed_copy(&app);
    let before = start_from(&app, &exe, &["-i", "2"]);
    let (master, version) = master_of(&before);
    let still_serving = |what: &str| {
        let listed = app.wait_listed("the old master's workers online", |a| all_online(a, 2));
        assert_eq!(
            master_of(&listed),
            (master, version.clone()),
            "after {what}"
        );
        assert_eq!(app.master_pid(), Some(master), "after {what}");
        assert!(!app.app_dir().join("control.sock.next").exists());
        let (status, _) = http_get(app.port, "/healthz").expect("the app answers");
        assert_eq!(status, 200, "after {what}");
    };
    // Fails with one line on stderr; returns the pid of the new master it started, if any.
    let fails = |args: &[&str], expected: &str| -> Option<u32> {
        let mut command = vec!["upgrade", app.name.as_str()];
        command.extend_from_slice(args);
        let output = app.run(&command);
        assert_eq!(output.status.code(), Some(1), "upgrade {args:?} must fail");
        let lines = stderr_lines(&output);
        assert_eq!(lines.len(), 1, "one error line: {lines:?}");
        assert!(
            lines[0].contains("upgrade failed") && lines[0].contains(expected),
            "{lines:?}"
        );
        assert!(
            lines[0].contains(&format!("keeps running on master {master}")),
            "{lines:?}"
        );
        String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .skip_while(|word| *word != "master")
            .nth(1)
            .and_then(|pid| pid.parse().ok())
    };

    // The binary replaced by a file that is not a program.
    replace_file(&exe, b"not a program\n", 0o644);
    assert_eq!(fails(&[], "not executable"), None, "nothing was started");
    still_serving("a non-executable binary");

    // A new master that crashes at once.
    let crash = app.home.join("bin").join("crash");
    replace_file(
        &crash,
        b"#!/bin/sh\necho 'cannot start: broken build' >&2\nexit 3\n",
        0o755,
    );
    let crashed = fails(
        &["--binary", crash.to_str().expect("a UTF-8 path")],
        "exited with code 3 before its workers were online: cannot start: broken build",
    );
    still_serving("a crashing binary");

    // A new master whose workers are not online in time: it is stopped, workers and all.
    let slow = fails(
        &["--binary", chatctl_exe(), "--timeout", "1ms"],
        "not all online within 1ms",
    )
    .expect("the new master's pid in the progress lines");
    wait_until("the new master that was too slow to be gone", || {
        !alive(slow)
    });
    still_serving("a new master too slow to be ready");
    if let Some(pid) = crashed {
        assert!(!alive(pid));
    }
}

/// Upgrades follow one another (the new master owns the app as the first one did), each new
/// master serves the admin address on the socket it inherited, and `chatctl stop` then leaves
/// no process of any master and no state file behind.
#[test]
fn an_upgraded_master_upgrades_again_and_stops_cleanly() {
    let app = App::new("uptwice");
    let exe = installed_copy(&app);
    let admin_port = testkit::port();
    let admin = format!("127.0.0.1:{admin_port}");
    let (first, _) = master_of(&start_from(&app, &exe, &["-i", "2", "--admin", &admin]));
    let mut masters = vec![first];
    for _ in 0..2 {
        succeeded(&app.run(&["upgrade", &app.name]));
        let previous = *masters.last().expect("a master");
        let listed = app.wait_listed("the next master's workers online", |a| {
            all_online(a, 2) && a["master_pid"].as_u64() != Some(u64::from(previous))
        });
        let (next, _) = master_of(&listed);
        assert!(!masters.contains(&next), "{masters:?} then {next}");
        masters.push(next);
        let (status, _) = http_get(app.port, "/healthz").expect("the app answers");
        assert_eq!(status, 200);
        let (status, metrics) = http_get(admin_port, "/metrics").expect("the admin answers");
        assert_eq!(status, 200);
        assert!(metrics.contains("chatctl_"), "{metrics}");
    }
    succeeded(&app.run(&["stop", &app.name]));
    for master in &masters {
        wait_until("every master and its workers gone", || {
            !alive(*master) && group_members(*master).is_empty()
        });
    }
    for file in ["control.sock", "control.sock.next", "master.pid"] {
        assert!(!app.app_dir().join(file).exists(), "{file} left behind");
    }
}

/// Connections waiting in the accept queue of the listening socket on `port` (the `rx_queue`
/// of its LISTEN line in /proc/net/tcp).
fn accept_queue(port: u16) -> Option<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    let local = format!(":{port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let listening = fields.get(3) == Some(&"0A");
        if !listening || !fields.get(1)?.ends_with(&local) {
            return None;
        }
        let (_, rx) = fields.get(4)?.split_once(':')?;
        u64::from_str_radix(rx, 16).ok()
    })
}

/// A connection the app's master accepted, whose request has not come yet (a slow client).
fn slow_connection(app: &App) -> std::net::TcpStream {
    let slow = std::net::TcpStream::connect(("127.0.0.1", app.port)).expect("cannot connect");
    wait_until("the master to accept the slow connection", || {
        accept_queue(app.port) == Some(0)
    });
    slow
}

/// Sends the slow connection's request at last: it is answered.
fn slow_request_is_answered(mut slow: std::net::TcpStream) {
    use std::io::{BufRead, BufReader, Write};
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .expect("cannot send the slow request");
    slow.set_read_timeout(Some(support::DEADLINE))
        .expect("set_read_timeout");
    let mut status_line = String::new();
    BufReader::new(&slow)
        .read_line(&mut status_line)
        .expect("no answer to the slow request");
    assert!(status_line.starts_with("HTTP/1.1 200 "), "{status_line:?}");
}

/// A client whose connection the old master accepted, but whose request comes only after the
/// upgrade is done (a slow client), is answered: the old master routes what it accepted to its
/// workers before they drain.
#[test]
fn a_request_accepted_before_the_hand_over_is_answered() {
    let app = App::new("upslow");
    let exe = installed_copy(&app);
    start_from(&app, &exe, &["-i", "2"]);
    let slow = slow_connection(&app);
    succeeded(&app.run(&["upgrade", &app.name]));
    slow_request_is_answered(slow);
}

/// While both masters run, their workers are one app (the bridge between the masters): users
/// still on the old workers (the old master holds off draining them while a connection it
/// accepted has not sent its request) and users who came after the hand-over, on the new
/// master's workers, in one room, a sender on each side. Every message reaches every member
/// exactly once: across the masters while both run, and then, as the old master stops, through
/// the live hand-off of the old workers' websockets to the new master's workers (nobody
/// disconnects), or over long-polling through the recovery logs the new master took over.
#[test]
fn users_of_both_masters_are_one_room_during_an_upgrade() {
    both_masters_one_room("upbridge", "websocket");
}

/// The same over long-polling, whose requests may reach a worker of the other master on a
/// keep-alive connection that master accepted: that worker passes them to the session's.
#[test]
fn users_of_both_masters_are_one_room_during_an_upgrade_over_long_polling() {
    both_masters_one_room("upbridge-polling", "polling");
}

fn both_masters_one_room(name: &str, transport: &str) {
    let node = node_program();
    let app = App::new(name);
    app.start_ok(&["-i", "2", "--peek-timeout", "120s"], &[]);
    let before = app.wait_listed("two online workers", |a| all_online(a, 2));
    let (old_master, _) = master_of(&before);
    let mut room = ClientScript::start(
        &node,
        "recovering_room.mjs",
        &[&app.url(), "20", transport, "60", "20"],
    );
    let ready = room.next_report();
    assert_eq!(ready["event"], "ready", "{ready}");

    let slow = slow_connection(&app);
    succeeded(&app.run(&["upgrade", &app.name]));
    room.tell("late");
    let late = room.next_report();
    assert_eq!(
        late["event"],
        "late_ready",
        "{late}\nlog:\n{}",
        app.log_text()
    );
    room.tell("go");
    let sending = room.next_report();
    assert_eq!(sending["event"], "sending", "{sending}");
    // Twenty messages from each side so far, with the old workers still serving their users.
    assert!(alive(old_master), "the old master drained too early");
    let old_workers = worker_pids(&before);
    assert!(old_workers.iter().all(|pid| alive(*pid)), "{before}");

    // The slow request lets the old master go: its workers drain, their users move.
    slow_request_is_answered(slow);

    let done = room.next_report();
    room.wait_success();
    eprintln!("users of both masters across an upgrade ({transport}): {done}");
    assert_eq!(done["event"], "done", "{done}\nlog:\n{}", app.log_text());
    assert_eq!(done["receivers"], 40, "{done}");
    if transport == "websocket" {
        // The old workers' websockets were handed to the new master's workers: nobody noticed.
        support::assert_moved_live(&done);
    } else {
        // Long-polling sessions drain: the old workers' users (20 receivers, two sockets each)
        // reconnect, recovered; the late ones, on the new workers, stay.
        support::assert_nothing_lost(&done);
        assert_eq!(done["disconnects"], 40, "{done}");
    }
    wait_until("the old master to exit", || !alive(old_master));
    // Nothing was dropped on the way between the masters.
    let status = app.status().expect("the new master answers");
    assert!(status["bridge_dropped"].is_null(), "{status}");
}
