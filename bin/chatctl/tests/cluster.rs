//! Workers of one app share the chat through the master (the embedded bus and store, no
//! Redis): a room of real python-socketio users spread over two workers gets every message
//! exactly once, the same room counts from any worker, one login for all workers, private
//! messages cross workers, and when a worker is killed its users leave the room for everyone
//! else. Once with the embedded bus and store, once through a real `redis-server`.

mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use serde_json::Value;
use sticky::route_tag;
use support::{all_online, python_program, signal, wait_for_value, workers, App, DEADLINE};

/// Users in the room.
const USERS: u64 = 40;

#[test]
fn a_room_spread_over_two_workers_behaves_as_one() {
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
    room_over_two_workers(&app, None);
}

/// The same through Redis, which is restarted mid-test: delivery across workers comes back
/// and no worker restarts; a killed worker's users leave within the liveness bound.
#[test]
fn a_room_spread_over_two_workers_behaves_as_one_through_redis() {
    let mut redis = support::RedisServer::start();
    let app = App::new("cluster-redis");
    let url = redis.url();
    app.start_ok(
        &[
            "-i",
            "2",
            "--health-interval",
            "200ms",
            "--health-timeout",
            "2s",
            "--redis",
            &url,
            "--env",
            // Short, so the test does not wait long for the dead worker's users to go; not so
            // short that a worker starved of CPU on a loaded machine looks dead.
            "CHATCTL_REDIS_WORKER_TTL=3s",
        ],
        &[],
    );
    room_over_two_workers(&app, Some(&mut redis));
}

/// The scenarios run one at a time: 40 python clients each are already a crowd for 2 cores, and a
/// worker starved of CPU long enough looks dead to the others.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn room_over_two_workers(app: &App, redis: Option<&mut support::RedisServer>) {
    let _alone = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let python = python_program();
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
    assert_eq!(
        ready["event"],
        "ready",
        "users: {ready}\nlog:\n{}",
        app.log_text()
    );

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
        let tag = worker["sid_tag"].as_str().expect("the worker's sid tag");
        assert_eq!(route_tag::decode(tag).map(|owner| owner.node), Some(0));
        let tagged = sids
            .iter()
            .filter(|sid| sid.as_str().unwrap_or("").starts_with(tag))
            .count() as u64;
        assert_eq!(
            tagged,
            worker["connections"].as_u64().unwrap_or(0),
            "worker {tag}: {listed}"
        );
    }

    if let Some(redis) = redis {
        redis.restart();
        writeln!(child.stdin.as_mut().expect("stdin"), "probe").expect("cannot tell the users");
        let probed = next_report(&reports, &mut child);
        assert_eq!(
            probed["event"],
            "probed",
            "users: {probed}\nlog:\n{}",
            app.log_text()
        );
        let after = app
            .listed()
            .expect("the app answers after the Redis restart");
        for worker in workers(&after) {
            assert_eq!(
                worker["restarts"], 0,
                "a worker restarted during the Redis outage: {after}"
            );
        }
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
    writeln!(child.stdin.as_mut().expect("stdin"), "{on_victim}").expect("cannot tell the users");
    let armed = next_report(&reports, &mut child);
    assert_eq!(armed["event"], "armed", "users: {armed}");
    signal(victim, libc::SIGKILL);
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
