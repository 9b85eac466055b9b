//! Live hand-off on reload (issue 16): chat users on the real npm socket.io-client 4.x, on
//! websocket, long-polling and polling upgraded to websocket, in rooms on `chatctl start -i 2`,
//! one sender per room saying a numbered message every 100 ms and asking for an ack each time,
//! and `chatctl reload` three times under them. Each worker hands its sessions to its
//! replacement: no client sees a `disconnect`, every receiver gets every number exactly once,
//! every ack comes back (those in flight across a hand-off included), and `chatctl reload`
//! says how many connections each worker handed off. A scale down to one worker ends it: the
//! retired worker's users move to the other one just as unnoticed.
//!
//! `CHATCTL_HANDOFF_USERS` sets the number of users (default 200).

mod support;

use support::{all_online, node_program, worker_pids, App, ClientScript};

const ROOMS: &str = "4";
const RELOADS: usize = 3;

fn users() -> usize {
    std::env::var("CHATCTL_HANDOFF_USERS")
        .ok()
        .and_then(|users| users.parse().ok())
        .unwrap_or(200)
}

/// The counts of `worker N: H connections handed off, D drained, F failed` lines.
fn hand_off_lines(output: &str) -> Vec<(u64, u64, u64)> {
    output
        .lines()
        .filter_map(|line| {
            let (_, counts) = line.split_once(": ")?;
            let numbers: Vec<u64> = counts
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse().ok())
                .collect();
            counts
                .contains("handed off")
                .then(|| (numbers[0], numbers[1], numbers[2]))
        })
        .collect()
}

#[test]
fn three_reloads_under_a_chat_disconnect_nobody_and_lose_nothing() {
    reloads_under_a_chat("handoff", users(), RELOADS, None);
}

#[test]
fn a_reload_through_redis_disconnects_nobody_and_loses_nothing() {
    let redis = support::RedisServer::start();
    reloads_under_a_chat("handoff-redis", 40, 1, Some(&redis.url()));
}

/// The scenario: `users` in rooms, `reloads` reloads, then a scale down to one worker; the
/// store through the master, or through Redis at `redis`.
fn reloads_under_a_chat(name: &str, users: usize, reloads: usize, redis: Option<&str>) {
    let node = node_program();
    let app = App::new(name);
    let mut flags = vec!["-i", "2", "--drain-timeout", "20s"];
    if let Some(url) = redis {
        flags.extend(["--redis", url]);
    }
    app.start_ok(&flags, &["serve", "--logins-per-address", "100000"]);
    app.wait_listed("two online workers", |a| all_online(a, 2));
    let mut room = ClientScript::start(
        &node,
        "handoff_room.mjs",
        &[&app.url(), &users.to_string(), ROOMS],
    );
    let ready = room.next_report();
    assert_eq!(ready["event"], "ready", "{ready}\nlog:\n{}", app.log_text());
    room.tell("go");
    let sending = room.next_report();
    assert_eq!(sending["event"], "sending", "{sending}");
    // Users and senders, each on a connection of its own.
    let connections = users as u64 + 4;
    let mut outputs = Vec::new();
    for reload in 1..=reloads {
        let before = app.listed().expect("the app is listed");
        room.tell("reloading");
        let began = std::time::Instant::now();
        let output = support::succeeded(&app.run(&["reload", &app.name]));
        let took = began.elapsed();
        let after = app.wait_listed("two online workers again", |a| all_online(a, 2));
        assert!(
            worker_pids(&after)
                .iter()
                .all(|pid| !worker_pids(&before).contains(pid)),
            "reload {reload} replaced no worker: {output}"
        );
        eprintln!("reload {reload} took {took:?}: {output}");
        outputs.push(output);
        // The stream goes on between reloads too.
        room.tell("more");
        let sending = room.next_report();
        assert_eq!(sending["event"], "sending", "{sending}");
    }
    // Scaled down to one worker: the retired one hands its sessions to the one that stays.
    room.tell("reloading");
    support::succeeded(&app.run(&["scale", &app.name, "1"]));
    app.wait_listed("one online worker", |a| all_online(a, 1));
    room.tell("more");
    let sending = room.next_report();
    assert_eq!(sending["event"], "sending", "{sending}");
    room.tell("stop");
    let done = room.next_report();
    room.wait_success();
    eprintln!("after {reloads} reloads: {done}");
    assert_eq!(done["event"], "done", "{done}\nlog:\n{}", app.log_text());
    for (reload, output) in outputs.iter().enumerate() {
        let counts = hand_off_lines(output);
        assert_eq!(counts.len(), 2, "a line per worker: {output}");
        let handed_off: u64 = counts.iter().map(|c| c.0).sum();
        let failed: u64 = counts.iter().map(|c| c.2).sum();
        assert_eq!(failed, 0, "reload {}: {output}\n{done}", reload + 1);
        assert_eq!(
            handed_off,
            connections,
            "reload {}: every connection handed off: {output}\n{done}\nlog:\n{}",
            reload + 1,
            app.log_text()
        );
    }
    assert_eq!(
        done["disconnects"],
        0,
        "clients saw a disconnect: {done}\nlog:\n{}",
        app.log_text()
    );
    assert_eq!(done["reconnects"], 0, "{done}");
    assert_eq!(
        done["lost"],
        0,
        "messages lost: {done}\nlog:\n{}",
        app.log_text()
    );
    assert_eq!(done["repeated"], 0, "messages repeated: {done}");
    assert_eq!(done["ack_failures"], 0, "acks not answered: {done}");
    assert_eq!(done["acked"], done["sent"], "{done}");
    // Acks asked while a reload moved the senders: every one answered.
    assert!(done["asked_during_reloads"].as_u64() > Some(0), "{done}");
    assert_eq!(
        done["acked_during_reloads"], done["asked_during_reloads"],
        "{done}"
    );
    assert!(
        done["sent"].as_u64() >= Some(4 * 20 * (reloads as u64 + 2)),
        "the senders went on through the reloads: {done}"
    );
    assert_eq!(done["user_left"], serde_json::json!([]), "{done}");
}
