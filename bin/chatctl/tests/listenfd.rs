//! Any program that takes its socket from `LISTEN_FDS` runs clustered under chatctl: the
//! standard-library server of `examples/listenfd.rs`, two workers on one port.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::{all_online, http_get, set_mode, wait_for_value, worker_pids, App};

#[test]
fn an_ordinary_program_is_clustered_through_listen_fds() {
    let app = App::new("listenfd");
    let program = build_example(&app.home);
    let program = program.to_str().expect("a UTF-8 temp path");
    app.start_ok(&["-i", "2", "--min-uptime", "200ms"], &[program]);
    let listed = app.wait_listed("two online workers", |a| all_online(a, 2));
    let pids: BTreeSet<u32> = worker_pids(&listed).into_iter().collect();

    // The kernel hands each new connection to one of the processes blocked in accept(); both
    // get some well within this many. At least ten, for the log below.
    let mut answered_by = BTreeSet::new();
    for request in 1..=200 {
        let (status, body) = http_get(app.port, "/").expect("GET / failed");
        assert_eq!(status, 200, "{body}");
        let pid: u32 = body.trim().parse().expect("GET / answers a pid");
        assert!(
            pids.contains(&pid),
            "answered by pid {pid}, not a worker {pids:?}"
        );
        answered_by.insert(pid);
        if answered_by == pids && request >= 10 {
            break;
        }
    }
    assert_eq!(answered_by, pids, "not every worker got connections");

    // The requests are logged by the workers; the app log says which worker wrote each line.
    let tail = wait_for_value("five request lines at the end of the log", || {
        let output = app.run(&["logs", &app.name, "-n", "5", "--nostream"]);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        let from_workers = lines
            .iter()
            .all(|l| (l.starts_with("w0 | ") || l.starts_with("w1 | ")) && l.contains("GET /"));
        (output.status.success() && lines.len() == 5 && from_workers).then_some(lines)
    });
    assert!(
        tail.is_some(),
        "`chatctl logs {} -n 5` did not print five worker lines; log:\n{}",
        app.name,
        app.log_text()
    );
}

/// Compiles `examples/listenfd.rs` (standard library only) with a bare `rustc` into `dir`, where
/// a worker running as `nobody` may execute it. Far quicker than a nested `cargo build`, which
/// would also wait for the build lock the running `cargo test` holds.
fn build_example(dir: &Path) -> PathBuf {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/listenfd.rs");
    let output = dir.join("listenfd");
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let compiled = Command::new(&rustc)
        .args(["--edition", "2021", "-o"])
        .arg(&output)
        .arg(&source)
        // The workspace's toolchain (a rust-toolchain file is honoured by rustup's proxy).
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {rustc:?}: {e}"));
    assert!(
        compiled.status.success(),
        "cannot compile {}:\n{}",
        source.display(),
        String::from_utf8_lossy(&compiled.stderr)
    );
    set_mode(&output, 0o755);
    output
}
