//! systemd socket activation of the master (issue 16): `chatctl run` started by the real
//! `systemd-socket-activate` (Debian's systemd), which binds the socket, waits for a first
//! connection and execs the master with `LISTEN_FDS=1` and the socket as fd 3, as systemd does
//! for a `.socket` unit. The master serves on that socket and never binds its own: `--listen`
//! names an address the test holds, which the master could not bind.

mod support;

use std::process::{Command, Stdio};

use support::{alive, all_online, chatctl_exe, http_get, succeeded, wait_until, App};

/// `systemd-socket-activate` must be here (ops/test-deps.sh installs it): a test that skips
/// itself when a tool is missing would pass on a machine that checks nothing.
fn need_socket_activate() {
    let found = Command::new("systemd-socket-activate")
        .arg("--version")
        .output()
        .is_ok();
    assert!(
        found,
        "no systemd-socket-activate (Debian package systemd): run ops/test-deps.sh"
    );
}

/// `systemd-socket-activate` holding `app`'s port, to run `chatctl COMMAND` (`run` or `start`)
/// for it on the first connection. `--listen` names `held`, an address the master cannot bind.
fn activate(app: &App, command: &str, held: &std::net::TcpListener) -> std::process::Child {
    let held_address = held.local_addr().expect("the held address").to_string();
    Command::new("systemd-socket-activate")
        .arg("--listen")
        .arg(app.listen())
        .arg("--setenv")
        .arg(format!("CHATCTL_HOME={}", app.home.display()))
        .arg(chatctl_exe())
        .args([command, "--name", &app.name, "--listen", &held_address])
        .args(["-i", "2"])
        .current_dir(&app.home)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot run systemd-socket-activate")
}

/// The first connection starts the master: it waits in the socket's queue while the workers
/// start, and is answered.
fn first_request_is_answered(app: &App) {
    let mut first = None;
    wait_until("systemd-socket-activate listening", || {
        first = http_get(app.port, "/healthz").ok();
        first.is_some()
    });
    assert_eq!(first.map(|(status, _)| status), Some(200));
}

#[test]
fn a_socket_activated_master_serves_on_the_socket_it_was_given() {
    need_socket_activate();
    let app = App::new("activated");
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("cannot bind a port to hold");
    let mut activator = activate(&app, "run", &held);
    let activator_pid = activator.id();
    first_request_is_answered(&app);

    let listed = app.wait_listed("two online workers", |a| all_online(a, 2));
    // systemd-socket-activate execs the master in its own process.
    assert_eq!(listed["master_pid"], activator_pid, "{listed}");
    assert_eq!(listed["listen"], app.listen().as_str(), "{listed}");
    let (status, _) = http_get(app.port, "/healthz").expect("the app answers");
    assert_eq!(status, 200);

    // An upgrade keeps the socket systemd gave: the new master inherits it in turn.
    succeeded(&app.run(&["upgrade", &app.name]));
    let upgraded = app.wait_listed("the new master's workers online", |a| {
        all_online(a, 2) && a["master_pid"] != activator_pid
    });
    assert_eq!(upgraded["listen"], app.listen().as_str(), "{upgraded}");
    let (status, _) = http_get(app.port, "/healthz").expect("the app answers");
    assert_eq!(status, 200);
    wait_until("the activated master to exit", || {
        activator.try_wait().ok().flatten().is_some() || !alive(activator_pid)
    });
    drop(held);
}

/// `chatctl start` given the socket: the daemonized master it starts serves on it.
#[test]
fn start_hands_a_socket_it_was_given_to_the_master() {
    need_socket_activate();
    let app = App::new("activated-start");
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("cannot bind a port to hold");
    let mut activator = activate(&app, "start", &held);
    first_request_is_answered(&app);
    let status = activator.wait().expect("cannot wait for chatctl start");
    assert!(status.success(), "chatctl start failed: {status}");
    let listed = app.wait_listed("two online workers", |a| all_online(a, 2));
    assert_eq!(listed["listen"], app.listen().as_str(), "{listed}");
    let (status, _) = http_get(app.port, "/healthz").expect("the app answers");
    assert_eq!(status, 200);
    drop(held);
}

/// The `.socket` unit and its service in ops/systemd are units systemd accepts.
#[test]
fn the_socket_unit_and_its_service_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped: no systemd-analyze (Debian package systemd)");
        return;
    }
    let app = App::new("units");
    let systemd = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops/systemd");
    // An instance of each template, side by side (the socket names its service).
    for (template, instance) in [
        ("chatctl@.socket", "chatctl@chat.socket"),
        ("chatctl@.service", "chatctl@chat.service"),
    ] {
        let text = std::fs::read_to_string(systemd.join(template))
            .unwrap_or_else(|e| panic!("cannot read ops/systemd/{template}: {e}"));
        // The service's binary need not be installed here: point it at the one under test.
        let text = text.replace("/usr/local/bin/chatctl", chatctl_exe());
        std::fs::write(app.home.join(instance), text).expect("cannot write the unit");
    }
    // systemd-analyze verify accepts both units.
    succeeded(
        &Command::new("systemd-analyze")
            .arg("verify")
            .arg(app.home.join("chatctl@chat.socket"))
            .arg(app.home.join("chatctl@chat.service"))
            .output()
            .expect("cannot run systemd-analyze"),
    );
}
