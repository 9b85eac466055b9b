//! What `chatctl start` runs the workers as, and how command-line flags combine with a config
//! file: as root the workers get an unprivileged account without being asked (never root), and
//! a flag given next to `-c FILE` applies to every app of the file or is refused, never dropped.

mod support;

use serde_json::Value;
use support::{all_online, http_get, running_as_root, stderr_lines, worker_pids, App};

/// The real user id of a process, from /proc.
fn uid_of(pid: u32) -> u32 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("cannot read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))
        .and_then(|ids| ids.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no Uid line in /proc/{pid}/status"))
}

#[test]
fn as_root_without_user_the_workers_serve_the_chat_unprivileged() {
    if !running_as_root() {
        println!("skipped: the tests do not run as root, so workers run as the test's own user");
        return;
    }
    let app = App::new("rootstart");
    let output = app.start(&["-i", "2"], &[]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "chatctl start as root failed: {stdout}\n{}\nlog:\n{}",
        String::from_utf8_lossy(&output.stderr),
        app.log_text()
    );
    assert_eq!(
        stdout
            .lines()
            .filter(|line| line.contains("run as 'nobody'"))
            .count(),
        1,
        "start did not say once which account the workers run as:\n{stdout}"
    );
    let listed = app.wait_listed("two workers online", |a| all_online(a, 2));
    for pid in worker_pids(&listed) {
        assert_ne!(uid_of(pid), 0, "worker {pid} runs as root");
    }
    // They serve the chat: the landing page and a Socket.IO handshake.
    let (status, body) = http_get(app.port, "/").expect("no answer on /");
    assert_eq!(status, 200, "{body}");
    let (status, body) =
        http_get(app.port, "/socket.io/?EIO=4&transport=polling").expect("no handshake answer");
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("0{") && body.contains("\"sid\""), "{body}");
}

#[test]
fn workers_as_root_are_refused_with_one_line() {
    let app = App::new("asroot");
    let output = app.start(&["-i", "1", "--user", "root"], &[]);
    let lines = stderr_lines(&output);
    assert!(!output.status.success(), "--user root was accepted");
    assert_eq!(lines.len(), 1, "{lines:?}");
    let expected = if running_as_root() {
        "must not run as root"
    } else {
        "needs the master to run as root"
    };
    assert!(lines[0].contains(expected), "{lines:?}");
    assert!(app.list().is_empty(), "a refused start left an app behind");
}

/// A config file with one app: this test's name and port, one worker.
fn config_file(app: &App) -> std::path::PathBuf {
    let path = app.home.join("apps.toml");
    std::fs::write(
        &path,
        format!(
            "[[app]]\nname = \"{}\"\nlisten = \"{}\"\ninstances = 1\nenv = [[\"FROM_FILE\", \"1\"]]\n",
            app.name,
            app.listen()
        ),
    )
    .expect("cannot write the config file");
    path
}

#[test]
fn flags_next_to_a_config_file_apply_to_its_apps() {
    let app = App::new("fileflags");
    let file = config_file(&app);
    let file = file.to_str().expect("a UTF-8 path");
    let output = app.run(&[
        "start",
        "-c",
        file,
        "--health-interval",
        "700ms",
        "--env",
        "FROM_FLAG=2",
        "--max-memory",
        "900M",
    ]);
    assert!(
        output.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    app.wait_listed("the file's app online", |a| all_online(a, 1));
    let saved: Value = serde_json::from_slice(
        &std::fs::read(app.app_dir().join("config.json")).expect("no config.json"),
    )
    .expect("config.json is not JSON");
    assert_eq!(saved["health"]["interval"], 700, "{saved}");
    assert_eq!(saved["max_memory"], 900u64 << 20, "{saved}");
    let env = saved["env"].to_string();
    assert!(
        env.contains("FROM_FILE") && env.contains("FROM_FLAG"),
        "{saved}"
    );
}

#[test]
fn a_user_next_to_a_config_file_is_never_dropped() {
    let app = App::new("fileuser");
    let file = config_file(&app);
    let output = app.run(&[
        "start",
        "-c",
        file.to_str().expect("a UTF-8 path"),
        "--user",
        "root",
    ]);
    let lines = stderr_lines(&output);
    assert!(
        !output.status.success(),
        "--user root next to -c FILE was ignored"
    );
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].contains("root"), "{lines:?}");
    assert!(app.list().is_empty(), "a refused start left an app behind");
}

#[test]
fn a_redis_that_cannot_be_reached_at_start_is_one_line() {
    let app = App::new("noredis");
    // A reserved port nothing listens on.
    let redis = format!("redis://127.0.0.1:{}", testkit::port());
    let output = app.start(&["-i", "1", "--redis", &redis], &[]);
    let lines = stderr_lines(&output);
    assert!(
        !output.status.success(),
        "start without its Redis succeeded"
    );
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("cookie key") && lines[0].contains("CHAT_SECRET"),
        "the line names neither the cause nor the fix: {lines:?}"
    );
    assert!(app.list().is_empty(), "a failed start left an app behind");
}
