//! `chatctl proxy` in front of two hosts (two masters on loopback, `--node-id 1` and `2`, sharing
//! the chat through a real `redis-server`): long-polling users of the npm Socket.IO client land
//! on both hosts, every request of a session reaches the host named by its sid, and a room spread
//! over both behaves as one. When one host stops, its users reconnect through the proxy to the
//! other and keep chatting, while the other host's users are not disturbed.

mod support;

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use sticky::route_tag::{self, Owner};
use support::{all_online, chatctl_exe, http_get, wait_for_value, wait_until, workers};
use support::{node_program, App, ClientScript};

/// Users in the room.
const USERS: usize = 20;

#[test]
fn polling_users_stick_to_their_host_through_the_proxy_and_move_when_it_stops() {
    let node = node_program();
    let redis = support::RedisServer::start();
    let (hosts, proxy) = two_hosts_behind_a_proxy(&redis);

    let mut room = ClientScript::polling_room(&node, &proxy.url(), USERS, "polling");
    let ready = room.next_report();
    assert_eq!(ready["event"], "ready", "users: {ready}\n{}", proxy.log());
    let sids = sid_nodes(&ready);
    for (node_id, host) in &hosts {
        let on_host = sids.iter().filter(|node| *node == node_id).count() as u64;
        assert!(
            on_host > 0,
            "no user landed on node {node_id}, so nothing crossed hosts: {ready}"
        );
        // The tags agree with what the host itself counts.
        let counted = wait_for_value("the host to count every session of its node", || {
            sessions_counted(host).filter(|counted| *counted == on_host)
        });
        assert_eq!(
            counted,
            Some(on_host),
            "node {node_id}: {:?}",
            host.listed()
        );
    }

    let (stopped_node, stopped) = &hosts[0];
    let stop = stopped.run(&["stop", &stopped.name]);
    assert!(
        stop.status.success(),
        "chatctl stop failed: {}",
        String::from_utf8_lossy(&stop.stderr)
    );
    let tag = route_tag::encode(Owner {
        node: *stopped_node,
        slot: 0,
    });
    room.tell(&tag[..2]);
    let done = room.next_report();
    assert_eq!(done["event"], "done", "users: {done}\n{}", proxy.log());
    let on_stopped = sids.iter().filter(|node| *node == stopped_node).count();
    assert_eq!(done["moved"], on_stopped as u64, "{done}");
    let after = sid_nodes(&done);
    assert!(
        after.iter().all(|node| *node == hosts[1].0),
        "a session still names the stopped host: {done}"
    );
    room.wait_success();
}

/// Connection-state recovery across hosts (issue 15): npm users of both hosts in one room
/// behind the proxy, a sender saying a numbered message every 70 ms, and one host stopped
/// mid-stream. Its users come back through the proxy to the other host with their sockets,
/// rooms and missed messages (kept in Redis): nothing lost or repeated, nobody announced as
/// having left.
#[test]
fn users_of_a_stopped_host_recover_on_the_other_through_the_proxy() {
    let node = node_program();
    let redis = support::RedisServer::start();
    let (hosts, proxy) = two_hosts_behind_a_proxy(&redis);
    let mut room = ClientScript::start(
        &node,
        "recovering_room.mjs",
        &[&proxy.url(), "20", "websocket", "60"],
    );
    let ready = room.next_report();
    assert_eq!(ready["event"], "ready", "users: {ready}\n{}", proxy.log());
    room.tell("go");
    let sending = room.next_report();
    assert_eq!(sending["event"], "sending", "{sending}");
    let (_, stopped) = &hosts[0];
    support::succeeded(&stopped.run(&["stop", &stopped.name]));
    let done = room.next_report();
    room.wait_success();
    eprintln!("a host stopped behind the proxy: {done}");
    assert_eq!(done["event"], "done", "{done}\n{}", proxy.log());
    assert_eq!(done["lost"], 0, "messages lost: {done}");
    assert_eq!(done["repeated"], 0, "messages repeated: {done}");
    assert!(done["never_arrived"].as_u64() <= Some(2), "{done}");
    assert!(
        done["disconnects"].as_u64() > Some(0),
        "the stop disconnected nobody: {done}"
    );
    assert_eq!(done["not_recovered"], 0, "{done}");
    assert_eq!(done["recovered"], done["disconnects"], "{done}");
    assert_eq!(done["user_left"], serde_json::json!([]), "{done}");
}

/// A user of the book's 0.9 client on xhr-polling, whose sid travels in the path
/// (`/socket.io/1/xhr-polling/SID`), keeps its one session through the proxy while chatting
/// with a v4 user: every request reaches the host its sid names.
#[test]
fn a_0_9_polling_user_sticks_to_its_host_through_the_proxy() {
    let node = node_program();
    let redis = support::RedisServer::start();
    // The hosts serve until the end of the test.
    let (_hosts, proxy) = two_hosts_behind_a_proxy(&redis);
    let python = support::python_program();
    let python = python.to_str().expect("a UTF-8 path to python");
    let mut users = ClientScript::start(
        &node,
        "legacy_room.mjs",
        &[&proxy.url(), "xhr-polling", python],
    );
    let ready = users.next_report();
    assert_eq!(ready["event"], "ready", "users: {ready}\n{}", proxy.log());
    assert_eq!(
        ready["connects"],
        1,
        "the 0.9 session was lost on the way: {ready}\n{}",
        proxy.log()
    );
    users.tell("end");
    let done = users.next_report();
    assert_eq!(done["event"], "done", "users: {done}");
    users.wait_success();
}

/// `chatctl start -- chatctl proxy ...`: the proxy serves on the socket its master bound and
/// passed down (`LISTEN_FDS`), so a master supervises it like any worker. Had it bound
/// `--listen` itself, the master's socket on that address would have made it fail.
#[test]
fn the_proxy_runs_under_a_master_on_the_socket_it_inherits() {
    let host = App::new("proxied-host");
    host.start_ok(&["-i", "1", "--node-id", "7"], &[]);
    host.wait_listed("the host's worker online", |a| all_online(a, 1));
    let proxy = App::new("proxy");
    let backend = format!("{}=7", host.listen());
    let listen = proxy.listen();
    let program = [
        chatctl_exe(),
        "proxy",
        "--listen",
        &listen,
        "--backend",
        &backend,
    ];
    proxy.start_ok(&["-i", "1", "--min-uptime", "200ms"], &program);
    proxy.wait_listed("the proxy online", |a| all_online(a, 1));

    let (status, body) = http_get(proxy.port, "/socket.io/?EIO=4&transport=polling")
        .expect("no handshake through the proxy");
    assert_eq!(status, 200, "{body}\nlog:\n{}", proxy.log_text());
    let open: Value = serde_json::from_str(body.trim_start_matches('0'))
        .unwrap_or_else(|e| panic!("handshake answered {body:?}: {e}"));
    let sid = open["sid"].as_str().unwrap_or("");
    assert_eq!(
        route_tag::decode(sid).map(|owner| owner.node),
        Some(7),
        "{body}"
    );
}

/// Hosts 1 and 2 sharing `redis`, and the proxy in front of them.
fn two_hosts_behind_a_proxy(redis: &support::RedisServer) -> (Vec<(u16, App)>, ProxyProcess) {
    let hosts: Vec<(u16, App)> = [1, 2]
        .into_iter()
        .map(|node_id| (node_id, start_host(node_id, &redis.url())))
        .collect();
    let proxy = ProxyProcess::start(&hosts);
    (hosts, proxy)
}

/// One host: a master of one chat worker with its own state directory and port, sessions tagged
/// with `node_id`, and the chat shared with the other host through Redis. A user logs in on one
/// host and may chat on the other: with no `CHAT_SECRET` given, the hosts sign cookies with the
/// key the first of them stored in their Redis.
fn start_host(node_id: u16, redis_url: &str) -> App {
    let app = App::new(&format!("host{node_id}"));
    let node_flag = node_id.to_string();
    app.start_ok(
        &[
            "-i",
            "1",
            "--node-id",
            &node_flag,
            "--redis",
            redis_url,
            "--env",
            // Short, so that the users of the stopped host leave the room soon in any case; not
            // so short that a worker starved of CPU on a loaded machine looks dead.
            "CHATCTL_REDIS_WORKER_TTL=3s",
            "--health-interval",
            "200ms",
            "--stop-timeout",
            "5s",
        ],
        &[],
    );
    app.wait_listed("one online worker", |a| all_online(a, 1));
    app
}

/// The Engine.IO sessions a host's workers report (with each health pong).
fn sessions_counted(host: &App) -> Option<u64> {
    let listed = host.listed()?;
    Some(
        workers(&listed)
            .iter()
            .map(|w| w["connections"].as_u64().unwrap_or(0))
            .sum(),
    )
}

/// The node id in each sid a report lists.
fn sid_nodes(report: &Value) -> Vec<u16> {
    report["sids"]
        .as_array()
        .unwrap_or_else(|| panic!("no sids in {report}"))
        .iter()
        .map(|sid| {
            route_tag::decode(sid.as_str().unwrap_or(""))
                .unwrap_or_else(|| panic!("sid {sid} names no owner: {report}"))
                .node
        })
        .collect()
}

/// `chatctl proxy` in front of the hosts, with health timers short enough that a stopped host
/// gets no new sessions within a fraction of a second. Killed by pid when dropped.
struct ProxyProcess {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl ProxyProcess {
    fn start(hosts: &[(u16, App)]) -> ProxyProcess {
        let port = testkit::port();
        let log =
            std::env::temp_dir().join(format!("chatctl-test-proxy-{}.log", std::process::id()));
        let mut args = vec![
            "proxy".to_owned(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            // Round-robin, so that the users surely land on both hosts.
            "--policy".into(),
            "round-robin".into(),
            "--health-interval".into(),
            "200ms".into(),
            // A stopped host refuses connections at once; a slow probe on a busy machine must
            // not mark a live host down.
            "--health-timeout".into(),
            "2s".into(),
            "--health-misses".into(),
            "1".into(),
        ];
        for (node_id, host) in hosts {
            args.push("--backend".into());
            args.push(format!("{}={node_id}", host.listen()));
        }
        let child = Command::new(chatctl_exe())
            .args(&args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&log).expect("cannot create the proxy's log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run chatctl proxy: {e}"));
        let proxy = ProxyProcess { child, port, log };
        wait_until("the proxy passes /healthz on to a host", || {
            matches!(http_get(port, "/healthz"), Ok((200, _)))
        });
        proxy
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The proxy's log, for failure messages.
    fn log(&self) -> String {
        format!(
            "proxy log:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        )
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
