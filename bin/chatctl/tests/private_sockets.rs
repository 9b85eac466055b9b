//! The workers' private sockets (abstract unix sockets, which any local account may bind by
//! name) against a process that takes their names: a worker never forwards a request to a
//! socket its master did not make, and names taken in advance never stop a worker from
//! starting. The test process plays the other account; it learns the master's token from a
//! worker's environment, which a real other account cannot read.

mod support;

use std::io::Read;
use std::sync::mpsc;

use sticky::route_tag::{self, Owner};
use supervisor::handoff;
use support::{all_online, http_get, signal, worker_pids, workers, App, DEADLINE};

/// The master's token for its workers' private socket names, from worker `pid`'s environment.
fn peers_token(pid: u32) -> String {
    let environ = std::fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_else(|e| panic!("cannot read the environment of worker {pid}: {e}"));
    let prefix = format!("{}=", supervisor::inherited::PEERS_ENV);
    environ
        .split(|byte| *byte == 0)
        .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))
        .map(|token| String::from_utf8_lossy(token).into_owned())
        .unwrap_or_else(|| panic!("worker {pid} has no {}", supervisor::inherited::PEERS_ENV))
}

/// The worker id a `status` / `list` worker entry's session ids carry.
fn worker_id(worker: &serde_json::Value) -> u16 {
    let tag = worker["sid_tag"].as_str().expect("a sid tag");
    route_tag::decode(tag).expect("a valid sid tag").slot
}

#[test]
fn a_worker_forwards_nothing_to_a_private_socket_its_master_did_not_make() {
    let app = App::new("impostor");
    let listed = app.start_ok(
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
    let listed = if all_online(&listed, 2) {
        listed
    } else {
        app.wait_listed("two online workers", |a| all_online(a, 2))
    };
    let token = peers_token(worker_pids(&listed)[0]);
    let victim = &workers(&listed)[1];
    let victim_pid = victim["pid"].as_u64().expect("a pid") as u32;
    let victim_id = worker_id(victim);
    signal(victim_pid, libc::SIGKILL);
    app.wait_listed("the killed worker replaced", |a| {
        all_online(a, 2) && !worker_pids(a).contains(&victim_pid)
    });

    // The dead worker's name is free again: an impostor takes it and reports what it is sent.
    let impostor = handoff::bind_private(&token, victim_id).expect("the dead worker's name");
    let (sent_tx, sent) = mpsc::channel();
    std::thread::spawn(move || {
        for stream in impostor.incoming() {
            let Ok(mut stream) = stream else { return };
            let _ = stream.set_read_timeout(Some(DEADLINE));
            let mut received = vec![0u8; 4096];
            let read = stream.read(&mut received).unwrap_or(0);
            received.truncate(read);
            if sent_tx.send(received).is_err() {
                return;
            }
        }
    });

    // A polling request for a session of the dead worker reaches a live one, which would
    // forward it to the dead worker's socket.
    let sid = format!(
        "{}AAAAAAAAAAAAAAAAAAAA",
        route_tag::encode(Owner {
            node: 0,
            slot: victim_id
        })
    );
    let (status, body) = http_get(
        app.port,
        &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
    )
    .expect("an answer for the dead worker's session");
    assert_eq!(status, 400, "{body}");
    let received = sent
        .recv_timeout(DEADLINE)
        .expect("the worker did not even try the dead worker's socket");
    assert!(
        received.is_empty(),
        "a worker forwarded a request to a socket its master did not make: {:?}",
        String::from_utf8_lossy(&received)
    );
    // The worker's log lines reach the app log through the master, a little later.
    support::wait_until("the refusal in the app log", || {
        app.log_text().contains("not by this app's master")
    });
}

#[test]
fn names_taken_by_another_process_do_not_stop_workers_from_starting() {
    let app = App::new("squatted");
    app.start_ok(
        &[
            "-i",
            "1",
            "--health-interval",
            "200ms",
            "--health-timeout",
            "2s",
        ],
        &[],
    );
    let listed = app.wait_listed("one online worker", |a| all_online(a, 1));
    let worker = &workers(&listed)[0];
    let pid = worker["pid"].as_u64().expect("a pid") as u32;
    let id = worker_id(worker);
    let token = peers_token(pid);
    // The names of the next 64 worker ids the master would give out, all taken.
    let ids = u32::from(route_tag::MAX_ID) + 1;
    let squatted: Vec<u16> = (1..=64)
        .map(|k| ((u32::from(id) + k) % ids) as u16)
        .collect();
    let _squatters: Vec<_> = squatted
        .iter()
        .map(|id| handoff::bind_private(&token, *id).expect("a free name"))
        .collect();

    signal(pid, libc::SIGKILL);
    let replaced = app.wait_listed("a replacement online despite the taken names", |a| {
        all_online(a, 1) && !worker_pids(a).contains(&pid)
    });
    let replacement = &workers(&replaced)[0];
    assert_eq!(
        replacement["restarts"], 1,
        "starting the replacement failed on the taken names: {replaced}"
    );
    assert!(
        !squatted.contains(&worker_id(replacement)),
        "the replacement got a taken id: {replaced}"
    );
}
