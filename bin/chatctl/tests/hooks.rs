//! Event hooks (`--on-event`): a real `chatctl start` master runs the hook through `sh -c` on a
//! worker's crash, with what happened in its environment and none of the master's secrets;
//! hooks beyond the rate are skipped, and a hook that hangs is killed with everything it
//! started while the master goes on supervising.

mod support;

use std::collections::BTreeMap;
use std::path::Path;

use support::{alive, all_online, pid_of, signal, wait_for_value, wait_until, workers, App};

/// The `NAME=value` lines of an `env` dump (a multi-line value's later lines are left out).
fn variables(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(name, _)| name.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect()
}

/// The files of `dir` whose names start with `prefix`.
fn files_starting(dir: &Path, prefix: &str) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with(prefix))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_crash_runs_the_hook_with_its_fields_and_the_rate_skips_the_rest() {
    let app = App::new("hooked");
    let out = app.home.join("hook-out");
    std::fs::create_dir_all(&out).unwrap();
    // Written whole, then renamed: the test never reads half a file. Its descriptors first.
    let hook = format!(
        "ls -l /proc/$$/fd > {dir}/fds && env > {dir}/.partial.$$ && mv {dir}/.partial.$$ {dir}/$CHATCTL_EVENT.$$.env",
        dir = out.display()
    );
    let output = app
        .start_command(
            &["-i", "2", "--on-event", &hook, "--on-event-rate", "1"],
            &[],
        )
        // A secret of the operator's shell, which the master has but a hook must not get.
        .env("CHATCTL_TEST_SECRET", "hunter2")
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let listed = app.wait_listed("two online workers", |a| all_online(a, 2));
    let crashed = pid_of(&listed, 0);

    signal(crashed, libc::SIGKILL);
    let dump = wait_for_value("the crash hook's file", || {
        files_starting(&out, "crash.").into_iter().next()
    })
    .unwrap_or_else(|| panic!("no hook ran on a crash; log:\n{}", app.log_text()));
    let env = variables(&std::fs::read_to_string(&dump).unwrap());
    assert_eq!(
        env.get("CHATCTL_EVENT").map(String::as_str),
        Some("crash"),
        "{env:?}"
    );
    assert_eq!(env.get("CHATCTL_APP"), Some(&app.name), "{env:?}");
    assert_eq!(
        env.get("CHATCTL_WORKER").map(String::as_str),
        Some("0"),
        "{env:?}"
    );
    assert_eq!(
        env.get("CHATCTL_PID"),
        Some(&crashed.to_string()),
        "{env:?}"
    );
    assert_eq!(
        env.get("CHATCTL_EXIT_SIGNAL").map(String::as_str),
        Some("9"),
        "{env:?}"
    );
    assert!(
        env.get("CHATCTL_MESSAGE")
            .is_some_and(|m| m.contains("signal 9")),
        "{env:?}"
    );
    // The chat worker's start-up line at least: its own lines, none of worker 1's.
    assert!(
        env.get("CHATCTL_LOG_LINES")
            .is_some_and(|lines| lines.starts_with("w0 ")),
        "{env:?}"
    );
    assert!(env.contains_key("PATH"), "{env:?}");
    assert!(
        !env.contains_key("CHATCTL_TEST_SECRET"),
        "the master's environment reached the hook: {env:?}"
    );
    // None of the master's sockets (its port, its control socket, the workers' channels).
    let descriptors = std::fs::read_to_string(out.join("fds")).unwrap();
    assert!(!descriptors.contains("socket:"), "{descriptors}");

    // The rate (1 a minute) is spent: the next crash is restarted as ever, its hook skipped.
    let listed = app.wait_listed("worker 0 replaced", |a| {
        all_online(a, 2) && pid_of(a, 0) != crashed
    });
    signal(pid_of(&listed, 0), libc::SIGKILL);
    wait_until("the skipped hook to be logged", || {
        app.log_text().contains("event hook skipped")
    });
    app.wait_listed("worker 0 replaced again", |a| {
        all_online(a, 2) && workers(a)[0]["restarts"] == 2
    });
    assert_eq!(
        files_starting(&out, "crash.").len(),
        1,
        "a hook ran past the rate"
    );
}

#[test]
fn a_hung_worker_is_reported_as_a_health_failure_and_not_as_a_crash() {
    let app = App::new("hunghook");
    let out = app.home.join("hook-out");
    std::fs::create_dir_all(&out).unwrap();
    let hook = format!(
        "env > {dir}/.partial.$$ && mv {dir}/.partial.$$ {dir}/$CHATCTL_EVENT.$$.env",
        dir = out.display()
    );
    let flags = [&["-i", "1", "--on-event", &hook], support::QUICK_HEALTH].concat();
    app.start_ok(&flags, &[]);
    let listed = app.wait_listed("one online worker", |a| all_online(a, 1));
    let hung = pid_of(&listed, 0);
    signal(hung, libc::SIGSTOP);
    app.wait_listed("the hung worker replaced", |a| {
        all_online(a, 1) && pid_of(a, 0) != hung
    });
    let dump = wait_for_value("the health hook's file", || {
        files_starting(&out, "health_failure.").into_iter().next()
    })
    .unwrap_or_else(|| panic!("no health hook; log:\n{}", app.log_text()));
    let env = variables(&std::fs::read_to_string(dump).unwrap());
    assert_eq!(env.get("CHATCTL_PID"), Some(&hung.to_string()), "{env:?}");
    assert!(
        env.get("CHATCTL_MESSAGE")
            .is_some_and(|m| m.contains("missed 2 health probes")),
        "{env:?}"
    );
    // Its end (SIGKILL) is the health failure's doing: no crash hook is about it. A crash of
    // the replacement, later, is one, and by the time its hook wrote its file, one about the
    // hung worker would have too.
    let listed = app.wait_listed("the replacement online", |a| all_online(a, 1));
    let replacement = pid_of(&listed, 0);
    signal(replacement, libc::SIGKILL);
    let crashes = wait_for_value("the replacement's crash hook", || {
        let crashes: Vec<BTreeMap<String, String>> = files_starting(&out, "crash.")
            .iter()
            .map(|f| variables(&std::fs::read_to_string(f).unwrap_or_default()))
            .collect();
        crashes
            .iter()
            .any(|env| env.get("CHATCTL_PID") == Some(&replacement.to_string()))
            .then_some(crashes)
    })
    .unwrap_or_else(|| panic!("no crash hook; log:\n{}", app.log_text()));
    assert_eq!(
        crashes.len(),
        1,
        "a crash hook ran for the hung worker: {crashes:?}"
    );
    assert_eq!(files_starting(&out, "health_failure.").len(), 1);
}

/// A hook that hangs, with a child of its own in the background; each run leaves a file
/// `child.HOOK_PID` in `out` holding its child's pid.
fn hanging_hook(out: &Path) -> String {
    format!(
        "sleep 600 & echo $! > {dir}/.child.$$; mv {dir}/.child.$$ {dir}/child.$$; wait",
        dir = out.display()
    )
}

/// Waits until `count` hanging hooks run; their pids and their children's.
fn hanging_hooks(out: &Path, count: usize, app: &App) -> Vec<u32> {
    let files = wait_for_value("the hooks running", || {
        let files = files_starting(out, "child.");
        (files.len() == count).then_some(files)
    })
    .unwrap_or_else(|| panic!("not {count} hooks running; log:\n{}", app.log_text()));
    let mut pids = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_str().unwrap();
        pids.push(name.trim_start_matches("child.").parse().unwrap());
        pids.push(
            std::fs::read_to_string(&file)
                .unwrap()
                .trim()
                .parse()
                .unwrap(),
        );
    }
    pids
}

#[test]
fn a_hanging_hook_is_killed_with_its_children_and_the_master_goes_on() {
    let app = App::new("hanging");
    let out = app.home.join("hook-out");
    std::fs::create_dir_all(&out).unwrap();
    let hook = hanging_hook(&out);
    app.start_ok(
        &["-i", "2", "--on-event", &hook, "--on-event-timeout", "10s"],
        &[],
    );
    let listed = app.wait_listed("two online workers", |a| all_online(a, 2));
    let first = pid_of(&listed, 0);
    signal(first, libc::SIGKILL);
    let listed = app.wait_listed("worker 0 replaced while its hook hangs", |a| {
        all_online(a, 2) && pid_of(a, 0) != first
    });
    // A second crash while the first hook hangs: supervised and hooked as ever.
    let second = pid_of(&listed, 0);
    signal(second, libc::SIGKILL);
    app.wait_listed("worker 0 replaced again", |a| {
        all_online(a, 2) && pid_of(a, 0) != second
    });
    let pids = hanging_hooks(&out, 2, &app);

    // Past the deadline, each hook and the child it started are gone.
    for pid in &pids {
        wait_until("a hanging hook's process to be killed", || !alive(*pid));
    }
    // The master says so once it reaped each (the log is written a moment later).
    wait_until("both kills logged", || {
        app.log_text()
            .matches("event hook still running after 10s: killed it")
            .count()
            == 2
    });
    // The master answers and supervises as before.
    app.wait_listed("two online workers after the hooks", |a| all_online(a, 2));
}

/// A webhook receiver on a loopback port the kernel picks: every request's body, in order.
fn webhook_receiver() -> (u16, std::sync::mpsc::Receiver<String>) {
    use std::io::{BufRead, BufReader, Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("cannot bind a loopback port");
    let port = listener.local_addr().unwrap().port();
    let (tx, bodies) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut length = 0;
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 0) && line != "\r\n" {
                let lower = line.to_ascii_lowercase();
                if let Some(value) = lower.strip_prefix("content-length:") {
                    length = value.trim().parse().unwrap_or(0);
                }
                line.clear();
            }
            let mut body = vec![0; length];
            let _ = reader.read_exact(&mut body);
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
            if tx
                .send(String::from_utf8_lossy(&body).into_owned())
                .is_err()
            {
                return;
            }
        }
    });
    (port, bodies)
}

/// Waits for a webhook post whose text contains `what`; returns that text.
fn posted(bodies: &std::sync::mpsc::Receiver<String>, what: &str, app: &App) -> String {
    let deadline = std::time::Instant::now() + support::DEADLINE;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        let Ok(body) = bodies.recv_timeout(left) else {
            break;
        };
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("the webhook got no JSON ({e}): {body}"));
        let text = json["text"].as_str().unwrap_or_default().to_owned();
        if text.contains(what) {
            return text;
        }
    }
    panic!("no webhook post with {what:?}; log:\n{}", app.log_text());
}

#[test]
fn the_webhook_script_posts_reloads_and_a_memory_restart() {
    let app = App::new("webhook");
    let (port, bodies) = webhook_receiver();
    // The URL in a curl config file, as ops/hooks/webhook.sh wants it.
    let config = app.home.join("webhook.curl");
    std::fs::write(&config, format!("url = \"http://127.0.0.1:{port}/hook\"\n")).unwrap();
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops/hooks/webhook.sh");
    let hook = format!("{} {}", script.display(), config.display());
    app.start_ok(
        &["-i", "1", "--on-event", &hook, "--health-interval", "300ms"],
        &[],
    );
    app.wait_listed("one online worker", |a| all_online(a, 1));

    support::succeeded(&app.run(&["reload", &app.name]));
    let text = posted(&bodies, ": reload_done: ", &app);
    assert!(
        text.starts_with(&format!("{}: reload_done: reloaded 1 workers", app.name)),
        "{text}"
    );

    // New workers that cannot be ready in a millisecond: the reload fails, the old one serves.
    let failed = app.run(&["reload", &app.name, "--ready-timeout", "1ms"]);
    assert!(!failed.status.success(), "{failed:?}");
    let text = posted(&bodies, ": reload_failed: ", &app);
    assert!(text.contains("did not become ready"), "{text}");

    // A chat worker holds more than a megabyte: once the limit applies, it is replaced.
    support::succeeded(&app.run(&["reload", &app.name, "--max-memory", "1M"]));
    let text = posted(&bodies, ": memory_restart: ", &app);
    assert!(text.contains("above --max-memory"), "{text}");
    assert!(
        text.contains("```\nw0 "),
        "the worker's lines are missing: {text}"
    );
}

#[test]
fn a_stopping_master_kills_the_hooks_still_running() {
    let app = App::new("hookstop");
    let out = app.home.join("hook-out");
    std::fs::create_dir_all(&out).unwrap();
    let hook = hanging_hook(&out);
    app.start_ok(
        &["-i", "1", "--on-event", &hook, "--on-event-timeout", "10m"],
        &[],
    );
    let listed = app.wait_listed("one online worker", |a| all_online(a, 1));
    signal(pid_of(&listed, 0), libc::SIGKILL);
    let pids = hanging_hooks(&out, 1, &app);
    assert!(pids.iter().all(|pid| alive(*pid)), "{pids:?}");

    support::succeeded(&app.run(&["stop", &app.name]));
    wait_until("the hook and its child killed with the master", || {
        pids.iter().all(|pid| !alive(*pid))
    });
}
