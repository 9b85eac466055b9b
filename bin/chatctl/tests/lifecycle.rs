//! An app's definition outlives its processes, as in PM2: `stop` keeps it (listed `stopped`),
//! `start NAME` runs it again with the same settings, `delete` removes it, `save` and
//! `resurrect` carry the running apps over a master's death, `list` shows a dead master, and
//! `start --reload-if-running` serves deploy scripts.

mod support;

use serde_json::Value;
use support::{alive, all_online, signal, succeeded, wait_until, worker_pids, workers, App};

fn health_interval(app: &App) -> Value {
    let text = std::fs::read(app.app_dir().join("config.json")).expect("no definition");
    let config: Value = serde_json::from_slice(&text).expect("the definition is not JSON");
    config["health"]["interval"].clone()
}

#[test]
fn a_stopped_app_is_listed_and_starts_again_with_its_settings() {
    let app = App::new("resume");
    let first = app.start_ok(&["-i", "1", "--health-interval", "700ms"], &[]);
    succeeded(&app.run(&["stop", &app.name]));
    let listed = app.listed().expect("a stopped app is not listed");
    assert_eq!(listed["state"], "stopped", "{listed}");
    // Stopping it again is no error.
    succeeded(&app.run(&["stop", &app.name]));

    succeeded(&app.run(&["start", &app.name]));
    let again = app.wait_listed("the app online again", |a| all_online(a, 1));
    assert_ne!(again["master_pid"], first["master_pid"]);
    assert_eq!(health_interval(&app), 700, "the settings were not kept");
}

#[test]
fn start_of_a_running_app_fails_unless_reload_if_running() {
    let app = App::new("deploy");
    let status = app.start_ok(&["-i", "1"], &[]);
    let before = worker_pids(&status);

    let refused = app.run(&["start", &app.name]);
    assert!(!refused.status.success(), "a second start succeeded");

    succeeded(&app.run(&["start", &app.name, "--reload-if-running"]));
    let after = app.wait_listed("a reloaded worker online", |a| {
        all_online(a, 1) && worker_pids(a) != before
    });
    assert_eq!(
        after["master_pid"], status["master_pid"],
        "reloaded, not restarted"
    );
}

#[test]
fn delete_removes_the_app_and_its_definition() {
    let app = App::new("gone");
    app.start_ok(&["-i", "1"], &[]);
    succeeded(&app.run(&["delete", &app.name]));
    assert!(app.listed().is_none(), "a deleted app is still listed");
    assert!(!app.app_dir().exists(), "the deleted app's files are left");
    let again = app.run(&["start", &app.name]);
    assert!(
        !again.status.success(),
        "a deleted app started from its name"
    );
}

#[test]
fn saved_apps_are_resurrected_after_their_master_dies() {
    let app = App::new("phoenix");
    let status = app.start_ok(&["-i", "1", "--health-interval", "900ms"], &[]);
    succeeded(&app.run(&["save"]));
    let master = status["master_pid"].as_u64().expect("master pid") as u32;
    let pids = worker_pids(&status);

    signal(master, libc::SIGKILL);
    wait_until("the master and its worker to die", || {
        pids.iter().chain([&master]).all(|pid| !alive(*pid))
    });
    let dead = app
        .listed()
        .expect("an app whose master died is not listed");
    assert_eq!(dead["state"], "dead", "{dead}");
    assert!(workers(&dead).is_empty(), "{dead}");
    let listing = succeeded(&app.run(&["list"]));
    assert!(listing.contains("master dead"), "{listing}");

    succeeded(&app.run(&["resurrect"]));
    let back = app.wait_listed("the app back online", |a| all_online(a, 1));
    assert_ne!(back["master_pid"], status["master_pid"]);
    assert_eq!(health_interval(&app), 900);
}

#[test]
fn startup_prints_a_unit_that_systemd_accepts() {
    let app = App::new("boot");
    app.start_ok(&["-i", "1"], &[]);
    succeeded(&app.run(&["save"]));
    let printed = succeeded(&app.run(&["startup"]));
    assert!(
        printed.contains("systemctl enable chatctl@boot"),
        "{printed}"
    );
    if std::process::Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("skipped the verification: no systemd-analyze (Debian package systemd)");
        return;
    }
    // systemd-analyze verifies an instance of the template: same text, instance name.
    let unit = app.home.join("chatctl@boot.service");
    std::fs::write(&unit, &printed).expect("cannot write the unit");
    let verified = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("cannot run systemd-analyze");
    assert!(
        verified.status.success(),
        "systemd-analyze verify refused the unit:\n{}{}\n{printed}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
}

/// `chatctl run NAME` under systemd's notify protocol (a datagram socket of the test's own in
/// place of systemd's): ready once the worker is online, a watchdog ping with the workers'
/// status while it runs, `RELOADING=1` then `READY=1` around a reload.
#[test]
fn a_master_under_systemd_feeds_its_watchdog_and_says_when_it_reloads() {
    use std::os::unix::net::UnixDatagram;
    use std::time::{Duration, Instant};

    let app = App::new("notify");
    // A definition to run: started once, then stopped.
    app.start_ok(&["-i", "1"], &[]);
    succeeded(&app.run(&["stop", &app.name]));

    let socket_path = app.home.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).expect("cannot bind the notify socket");
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .expect("set_read_timeout");
    let mut master = app
        .command(&["run", &app.name])
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("cannot run chatctl run");
    let mut heard = Vec::<String>::new();
    let mut listen_until = |what: &str, condition: &dyn Fn(&[String]) -> bool| {
        let deadline = Instant::now() + support::DEADLINE;
        let mut buffer = [0u8; 512];
        while !condition(&heard) {
            assert!(Instant::now() < deadline, "never heard {what}: {heard:?}");
            if let Ok(n) = socket.recv(&mut buffer) {
                heard.push(String::from_utf8_lossy(&buffer[..n]).into_owned());
            }
        }
    };
    listen_until("READY=1", &|heard| heard.iter().any(|m| m == "READY=1"));
    listen_until("a watchdog ping with the status", &|heard| {
        heard
            .iter()
            .any(|m| m.contains("WATCHDOG=1") && m.contains("STATUS=1/1 workers online"))
    });
    succeeded(&app.run(&["reload", &app.name]));
    listen_until("RELOADING=1 then READY=1", &|heard| {
        let reloading = heard.iter().position(|m| m.starts_with("RELOADING=1"));
        reloading.is_some_and(|at| heard[at..].iter().any(|m| m == "READY=1"))
    });
    let _ = master.kill();
    let _ = master.wait();
}
