//! An app's definition outlives its processes, as in PM2: `stop` keeps it (listed `stopped`),
//! `start NAME` runs it again with the same settings, `delete` removes it, `save` and
//! `resurrect` carry the running apps over a master's death, `list` shows a dead master, and
//! `start --reload-if-running` serves deploy scripts.

mod support;

use serde_json::Value;
use support::{alive, all_online, signal, wait_until, worker_pids, workers, App};

fn succeeded(output: &std::process::Output) -> String {
    assert!(
        output.status.success(),
        "failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

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
