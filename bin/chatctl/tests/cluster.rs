//! Workers of one app share the chat through the master (the embedded bus and store, no
//! Redis): a room of real python-socketio users spread over two workers gets every message
//! exactly once, the same room counts from any worker, one login for all workers, private
//! messages cross workers, and when a worker is killed its users leave the room for everyone
//! else.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use serde_json::Value;
use supervisor::route_tag;
use support::{all_online, signal, wait_for_value, workers, App, DEADLINE};

/// Users in the room.
const USERS: u64 = 40;

#[test]
fn a_room_spread_over_two_workers_behaves_as_one() {
    let python = python_program();
    let app = App::new("cluster");
    app.start_ok(
        &[
            "-i",
            "2",
            "--health-interval",
            "200ms",
            "--health-timeout",
            "2s",
        ],
        &[],
    );
    app.wait_listed("two online workers", |a| all_online(a, 2));

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/cluster_chat.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .arg(app.url())
        .arg(USERS.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let reports = spawn_reader(&mut child);
    let ready = next_report(&reports, &mut child);
    assert_eq!(ready["event"], "ready", "users: {ready}");

    // Every user holds one Engine.IO session; workers report theirs with each health pong.
    let listed = wait_for_value("every session counted by the workers", || {
        let app = app.listed()?;
        let counts: Vec<u64> = workers(&app)
            .iter()
            .map(|w| w["connections"].as_u64().unwrap_or(0))
            .collect();
        (counts.iter().sum::<u64>() == USERS).then_some(app)
    })
    .expect("sessions not counted");
    // Session ids name their worker: the tags agree with what each worker counts.
    let sids = ready["sids"].as_array().expect("sids");
    for worker in workers(&listed) {
        let slot = worker["id"].as_u64().expect("worker id") as u16;
        let tagged = sids
            .iter()
            .filter(|sid| {
                let owner = route_tag::decode(sid.as_str().unwrap_or(""));
                owner == Some(route_tag::Owner { node: 0, slot })
            })
            .count() as u64;
        assert_eq!(
            tagged,
            worker["connections"].as_u64().unwrap_or(0),
            "worker {slot}: {listed}"
        );
    }
    let (victim, on_victim) = workers(&listed)
        .iter()
        .map(|w| {
            (
                w["pid"].as_u64().unwrap_or(0) as u32,
                w["connections"].as_u64().unwrap_or(0),
            )
        })
        .max_by_key(|(_, connections)| *connections)
        .expect("no worker");
    assert!(
        on_victim < USERS,
        "all {USERS} users landed on one worker, so nothing crossed workers: {listed}"
    );

    signal(victim, libc::SIGKILL);
    let stdin = child.stdin.as_mut().expect("stdin");
    writeln!(stdin, "{on_victim}").expect("cannot tell the users");
    let done = next_report(&reports, &mut child);
    assert_eq!(
        done["event"],
        "done",
        "users: {done}\nlog:\n{}",
        app.log_text()
    );
    assert_eq!(done["survivors"], USERS - on_victim);
    assert!(child.wait().expect("wait").success());
}

fn spawn_reader(child: &mut Child) -> mpsc::Receiver<Value> {
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Ok(value) = serde_json::from_str::<Value>(&line) {
                if tx.send(value).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

/// The users' next report; kills them if they say nothing in time.
fn next_report(reports: &mpsc::Receiver<Value>, child: &mut Child) -> Value {
    match reports.recv_timeout(DEADLINE * 3) {
        Ok(report) => report,
        Err(error) => {
            let _ = child.kill();
            panic!("no report from the users ({error})");
        }
    }
}

/// The python with python-socketio installed (ops/test-deps.sh makes ops/python/.venv).
fn python_program() -> PathBuf {
    let python = std::env::var_os("CHATCTL_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../ops/python/.venv/bin/python")
        });
    let check = Command::new(&python)
        .args(["-c", "import socketio, requests"])
        .output();
    match check {
        Ok(output) if output.status.success() => python,
        _ => panic!(
            "{} cannot import python-socketio and requests: run ops/test-deps.sh",
            python.display()
        ),
    }
}
