//! What a PM2 user types works: `ls`, `jlist`, `show`/`describe`, `status` without a name,
//! `reload all` / `restart all`, `logs` that follows unless `--nostream`, plain numbers as
//! milliseconds, PM2's flag names, and an app named after its program with one worker.

mod support;

use std::io::{BufRead, BufReader};
use std::process::Stdio;

use serde_json::Value;
use support::{all_online, succeeded, wait_until, workers, App};

/// The settings the app's master runs with.
fn saved_config(app: &App) -> Value {
    let text = std::fs::read(app.app_dir().join("config.json")).expect("no config.json");
    serde_json::from_slice(&text).expect("config.json is not JSON")
}

#[test]
fn list_aliases_and_status_without_a_name_show_the_app() {
    let app = App::new("aliases");
    app.start_ok(&["-i", "1"], &[]);
    app.wait_listed("one online worker", |a| all_online(a, 1));

    for command in [
        &["ls"][..],
        &["status"],
        &["show", &app.name],
        &["describe", &app.name],
    ] {
        let text = succeeded(&app.run(command));
        assert!(text.contains(&app.name), "chatctl {command:?}: {text}");
    }
    let jlist: Value =
        serde_json::from_str(&succeeded(&app.run(&["jlist"]))).expect("jlist printed no JSON");
    assert_eq!(jlist[0]["name"], app.name.as_str(), "{jlist}");
}

#[test]
fn reload_and_restart_all_reach_every_app() {
    let one = App::new("all-one");
    one.start_ok(&["-i", "1"], &[]);
    // A second app in the same state directory: `all` means every app of it.
    let other_listen = format!("127.0.0.1:{}", testkit::port());
    succeeded(&one.run(&[
        "start",
        "--name",
        "all-two",
        "--listen",
        &other_listen,
        "-i",
        "1",
    ]));
    let pids_before: Vec<Value> = one
        .list()
        .iter()
        .map(|a| workers(a)[0]["pid"].clone())
        .collect();
    assert_eq!(pids_before.len(), 2);

    for command in ["reload", "restart"] {
        let text = succeeded(&one.run(&[command, "all"]));
        for name in [one.name.as_str(), "all-two"] {
            assert!(
                text.lines()
                    .any(|line| line.starts_with(&format!("{name}: "))),
                "chatctl {command} all did not answer for {name}: {text}"
            );
        }
    }
    wait_until("both apps online with new workers", || {
        let apps = one.list();
        apps.len() == 2
            && apps.iter().all(|a| all_online(a, 1))
            && apps
                .iter()
                .all(|a| !pids_before.contains(&workers(a)[0]["pid"]))
    });
    let _ = one.run(&["stop", "all-two"]);
}

#[test]
fn logs_follow_by_default_and_print_once_with_nostream() {
    let app = App::new("follow");
    app.start_ok(&["-i", "1"], &[]);
    app.wait_listed("one online worker", |a| all_online(a, 1));

    let printed = succeeded(&app.run(&["logs", &app.name, "--lines", "3", "--nostream"]));
    assert!(printed.lines().count() <= 3, "{printed}");

    let mut follower = app
        .command(&["logs", &app.name, "--lines", "0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("cannot run chatctl logs");
    let mut lines = BufReader::new(follower.stdout.take().expect("piped stdout")).lines();
    // A reload makes the master and the new worker write lines after `logs` started: a
    // follower prints them (a line read here could come from nowhere else).
    succeeded(&app.run(&["reload", &app.name]));
    let first = lines.next();
    let still_following = follower.try_wait().expect("try_wait").is_none();
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(
        matches!(first, Some(Ok(_))),
        "chatctl logs printed nothing after the reload: {first:?}"
    );
    assert!(still_following, "chatctl logs exited instead of following");
}

#[test]
fn plain_numbers_are_milliseconds_and_pm2_flag_names_work() {
    let app = App::new("pm2flags");
    app.start_ok(
        &[
            "-i",
            "1",
            "--health-interval",
            "700",
            "--kill-timeout",
            "2500",
            "--listen-timeout",
            "20000",
            "--max-memory-restart",
            "900M",
        ],
        &[],
    );
    let saved = saved_config(&app);
    assert_eq!(saved["health"]["interval"], 700, "{saved}");
    assert_eq!(saved["stop_timeout"], 2500, "{saved}");
    assert_eq!(saved["ready_timeout"], 20000, "{saved}");
    assert_eq!(saved["max_memory"], 900u64 << 20, "{saved}");
}

#[test]
fn a_program_is_named_after_itself_and_runs_one_worker() {
    let app = App::new("named");
    let listen = app.listen();
    let output = app.run(&[
        "start",
        "--listen",
        &listen,
        "--min-uptime",
        "100ms",
        "--",
        "/bin/sh",
        "-c",
        "exec sleep 600",
    ]);
    succeeded(&output);
    let apps = app.list();
    let listed = apps.iter().find(|a| a["name"] == "sh");
    let listed = listed.unwrap_or_else(|| panic!("no app named sh: {apps:?}"));
    assert_eq!(workers(listed).len(), 1, "{listed}");
    let _ = app.run(&["stop", "sh"]);
}

/// A PM2 user's ecosystem file, read by node as PM2 reads it, becomes a config file that
/// `chatctl start -c` runs: the Node.js app serves on the port its env named, with the
/// instances it asked for; the fields chatctl does not take are named on stderr.
#[test]
fn a_pm2_ecosystem_file_is_imported_and_runs() {
    let node = support::node_program();
    let app = App::new("pm2import");
    let dir = &app.home;
    // A Node.js server written for a supervisor that passes the socket (LISTEN_FDS, fd 3).
    std::fs::write(
        dir.join("server.js"),
        "require('http').createServer((q, s) => s.end('ok from ' + process.env.NODE_ENV))\n  .listen({ fd: 3 });\n",
    )
    .expect("cannot write server.js");
    std::fs::write(
        dir.join("ecosystem.config.js"),
        format!(
            "module.exports = {{\n  apps: [{{\n    name: 'web',\n    script: './server.js',\n    cwd: '{}',\n    instances: 2,\n    exec_mode: 'cluster',\n    max_memory_restart: '200M',\n    kill_timeout: 3000,\n    watch: true,\n    env: {{ NODE_ENV: 'production', PORT: {} }},\n    env_staging: {{ NODE_ENV: 'staging' }},\n  }}],\n}};\n",
            dir.display(),
            app.port
        ),
    )
    .expect("cannot write the ecosystem file");
    let ecosystem = dir.join("ecosystem.config.js");
    let output = app.run(&["import-pm2", ecosystem.to_str().expect("UTF-8 path")]);
    let toml = succeeded(&output);
    let notes = String::from_utf8_lossy(&output.stderr);
    assert!(
        notes.contains("`env_staging`"),
        "no note for env_staging: {notes}"
    );
    // `watch: true` watches the app's cwd (where this test's CHATCTL_HOME lies too: the
    // master's own files never cause a reload).
    assert!(!notes.contains("`watch`"), "{notes}");
    assert!(toml.contains("[app.watch]"), "{toml}");
    let file = dir.join("apps.toml");
    std::fs::write(&file, &toml).expect("cannot write apps.toml");
    succeeded(&app.run(&["start", "-c", file.to_str().expect("UTF-8 path")]));
    let apps = app.list();
    let web = apps.iter().find(|a| a["name"] == "web");
    let web = web.unwrap_or_else(|| panic!("no app web: {apps:?}\n{toml}"));
    assert_eq!(workers(web).len(), 2, "{web}");
    let (status, body) =
        support::http_get(app.port, "/").expect("the imported app does not answer");
    assert_eq!((status, body.as_str()), (200, "ok from production"));
    let _ = app.run(&["stop", "web"]);
    drop(node);
}
