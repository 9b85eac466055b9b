//! The Redis bus and store against a real `redis-server` (Debian package `redis-server`,
//! installed by ops/test-deps.sh), started on a free loopback port for each test and killed by
//! pid at its end. Two `ChatServer`s in this process, each with its own `RedisLink`, play two
//! workers; raw Socket.IO clients over websockets talk to them.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chat::{Store, StoreError};
use coord::{RedisConfig, RedisLink, RedisStore};
use serde_json::json;

use common::{
    collect_lines, keep, login, user_message, worker, Client, RedisServer, Worker, DEADLINE,
};
// ---- tests -----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_share_rooms_sessions_and_broadcasts_and_survive_a_redis_restart() {
    let mut redis = RedisServer::start();
    let a = worker(RedisConfig::new(redis.url())).await;
    let b = worker(RedisConfig::new(redis.url())).await;

    // Ten users, all logged in through worker A; the odd ones then connect to worker B, whose
    // store must accept A's sessions.
    let mut clients = Vec::new();
    for i in 0..10 {
        let nickname = format!("user{i}");
        let cookie = login(a.addr, &nickname);
        let addr = if i % 2 == 0 { a.addr } else { b.addr };
        let mut client = Client::connect(addr, &cookie, &nickname).await;
        client.join("lobby").await;
        clients.push(client);
    }
    a.bus.subscriptions_settled().await;
    b.bus.subscriptions_settled().await;

    // Everyone says two lines; everyone else gets each of them exactly once.
    for client in &clients {
        for k in 0..2 {
            client.say(&format!("{}-{k}", client.nickname));
        }
    }
    let mut received: Vec<Vec<(String, String)>> = vec![Vec::new(); clients.len()];
    for (client, lines) in clients.iter_mut().zip(&mut received) {
        collect_lines(client, lines, |lines| lines.len() >= 18).await;
    }
    // A marker from each worker, sent after every line above went through Redis: a late
    // duplicate of an earlier line would come before it on the same channel.
    clients[0].say("marker-a");
    clients[1].say("marker-b");
    for (i, (client, lines)) in clients.iter_mut().zip(&mut received).enumerate() {
        let markers = match i {
            0 => ["marker-b"].as_slice(),
            1 => ["marker-a"].as_slice(),
            _ => ["marker-a", "marker-b"].as_slice(),
        };
        collect_lines(client, lines, |lines| {
            markers
                .iter()
                .all(|marker| lines.iter().any(|(_, message)| message == marker))
        })
        .await;
        let mut counts: HashMap<&str, usize> = HashMap::new();
        for (_, message) in lines.iter() {
            *counts.entry(message.as_str()).or_default() += 1;
        }
        for j in (0..10).filter(|&j| j != i) {
            for k in 0..2 {
                let line = format!("user{j}-{k}");
                assert_eq!(
                    counts.get(line.as_str()),
                    Some(&1),
                    "user{i} got {line} {:?} times: {lines:?}",
                    counts.get(line.as_str())
                );
            }
        }
        assert!(
            !counts.contains_key(format!("user{i}-0").as_str()),
            "user{i} got its own line back as a userMessage"
        );
        assert_eq!(lines.len(), 18 + markers.len(), "user{i}: {lines:?}");
    }

    // Both workers count the same users in the same rooms.
    let rooms_a = clients[0].rooms().await;
    let rooms_b = clients[1].rooms().await;
    assert_eq!(rooms_a, json!({"lobby": 10}));
    assert_eq!(rooms_a, rooms_b);

    // A private message from a user on A reaches a user on B.
    clients[0].emit(
        "/chat_infra",
        "private_message",
        json!({"to": "user1", "message": "psst"}),
    );
    let private = clients[1].expect("/chat_infra", "private_message").await;
    assert_eq!(
        private,
        json!({"from": "user0", "to": "user1", "message": "psst"})
    );

    // Redis goes away: the store says so, and local traffic goes on.
    redis.kill();
    clients[0].emit("/chat_infra", "get_rooms", json!(null));
    let error = clients[0].expect("/chat_infra", "error").await;
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("unavailable")),
        "{error}"
    );
    clients[0].say("while-down");
    let mut lines = Vec::new();
    collect_lines(&mut clients[2], &mut lines, |lines| {
        lines.iter().any(|(_, m)| m == "while-down")
    })
    .await;

    // An empty Redis comes back on the same port: cross-worker delivery resumes within seconds,
    // both ways, and the workers put their room members back.
    redis.restart();
    for (from, to) in [(0, 1), (1, 0)] {
        let deadline = Instant::now() + DEADLINE;
        let mut attempt = 0;
        'resumed: loop {
            assert!(
                Instant::now() < deadline,
                "user{from} -> user{to} did not resume after the Redis restart"
            );
            attempt += 1;
            clients[from].say(&format!("after-restart-{attempt}"));
            // Each attempt waits a bounded time for the line, then sends another.
            let wait_until = Instant::now() + Duration::from_millis(500);
            while let Some(event) = clients[to]
                .next_within(wait_until.saturating_duration_since(Instant::now()))
                .await
            {
                if user_message(&event).is_some_and(|(_, m)| m.starts_with("after-restart-")) {
                    break 'resumed;
                }
            }
        }
    }
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (counts_a, counts_b) = (clients[0].rooms().await, clients[1].rooms().await);
        if counts_a == json!({"lobby": 10}) && counts_b == counts_a {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "room members not re-asserted after the Redis restart: {counts_a} / {counts_b}"
        );
    }
    assert!(!a.serving.is_finished() && !b.serving.is_finished());
}

/// The `/chat_infra` namespace of a worker, where the chat puts its users in `room:NAME`.
fn infra(worker: &Worker) -> std::sync::Arc<socketio::Namespace> {
    worker.io.of(chat::INFRA).expect("the chat has /chat_infra")
}

/// The ids `fetch_sockets` returns for a chat room, sorted.
async fn ids_in_room(worker: &Worker, room: &str, local: bool) -> Vec<String> {
    let mut operator = infra(worker).to(chat::room_key(room));
    if local {
        operator = operator.local();
    }
    let mut ids: Vec<String> = operator
        .fetch_sockets()
        .await
        .into_iter()
        .map(|socket| {
            assert!(
                socket.rooms.contains(&chat::room_key(room)),
                "{socket:?} is not in {room}"
            );
            socket.id
        })
        .collect();
    ids.sort();
    ids
}

/// How many sockets `/chat_infra` has on every worker.
async fn everyone(worker: &Worker) -> usize {
    let ns = infra(worker);
    let all = socketio::BroadcastOptions::default();
    ns.adapter().fetch_sockets(&ns, &all).await.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fetch_sockets_count_and_disconnect_reach_every_worker() {
    let mut redis = RedisServer::start();
    let a = worker(RedisConfig::new(redis.url())).await;
    let b = worker(RedisConfig::new(redis.url())).await;
    // Ann on A, Bob and Cid on B; Dan on A stays out of the room. Joining registers each worker
    // as live in Redis, so each expects the other's answer.
    let mut ann = Client::connect(a.addr, &login(a.addr, "ann"), "ann").await;
    let mut bob = Client::connect(b.addr, &login(a.addr, "bob"), "bob").await;
    let mut cid = Client::connect(b.addr, &login(a.addr, "cid"), "cid").await;
    let _dan = Client::connect(a.addr, &login(a.addr, "dan"), "dan").await;
    for client in [&mut ann, &mut bob, &mut cid] {
        client.join("r").await;
    }
    a.bus.subscriptions_settled().await;
    b.bus.subscriptions_settled().await;

    for side in [&a, &b] {
        assert_eq!(infra(side).to(chat::room_key("r")).count().await, 3);
        assert_eq!(infra(side).to(chat::room_key("nobody")).count().await, 0);
        // The whole namespace: Dan too.
        assert_eq!(everyone(side).await, 4);
    }
    let (on_a, on_b) = (
        ids_in_room(&a, "r", true).await,
        ids_in_room(&b, "r", true).await,
    );
    assert_eq!((on_a.len(), on_b.len()), (1, 2));
    let mut everywhere = [on_a, on_b].concat();
    everywhere.sort();
    assert_eq!(ids_in_room(&a, "r", false).await, everywhere);
    assert_eq!(ids_in_room(&b, "r", false).await, everywhere);

    // A disconnects the room: its own member and B's are told (`41/chat_infra,`).
    infra(&a).to(chat::room_key("r")).disconnect();
    for client in [&mut ann, &mut bob, &mut cid] {
        client.expect("/chat_infra", "disconnect").await;
    }
    let deadline = Instant::now() + DEADLINE;
    while infra(&b).to(chat::room_key("r")).count().await != 0 {
        assert!(Instant::now() < deadline, "the room did not empty");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Redis down: this worker's sockets, after at most the query timeout.
    redis.kill();
    let asked = Instant::now();
    assert_eq!(everyone(&a).await, 1);
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );
}

fn store(url: &str, prefix: &str) -> RedisStore {
    RedisStore::new(
        RedisLink::new(RedisConfig {
            prefix: prefix.to_owned(),
            ..RedisConfig::new(url)
        })
        .expect("valid Redis URL"),
    )
}

#[tokio::test]
async fn store_counts_users_not_sockets_across_workers() {
    let redis = RedisServer::start();
    let (one, two) = (store(&redis.url(), "t"), store(&redis.url(), "t"));
    assert!(one.join_room("r", "ann", "s1").await.unwrap());
    assert!(!two.join_room("r", "ann", "s2").await.unwrap());
    assert!(!two.join_room("r", "ann", "s2").await.unwrap());
    assert!(two.join_room("r", "bob", "s3").await.unwrap());
    assert_eq!(one.room_counts().await.unwrap(), vec![("r".to_owned(), 2)]);
    assert_eq!(two.room_users("r").await.unwrap(), vec!["ann", "bob"]);
    assert!(one.leave_room("r", "s1").await.unwrap().is_none());
    assert!(two.leave_room("r", "s2").await.unwrap().is_some());
    assert!(two.leave_room("r", "s2").await.unwrap().is_none());
    assert!(one.leave_room("r", "s3").await.unwrap().is_some());
    assert!(two.room_counts().await.unwrap().is_empty());
    // Another prefix is another app.
    let other = store(&redis.url(), "other");
    other.join_room("r", "cid", "s4").await.unwrap();
    assert!(one.room_counts().await.unwrap().is_empty());
}

#[tokio::test]
async fn store_keeps_history_and_expires_sessions() {
    let redis = RedisServer::start();
    let one = store(&redis.url(), "t");
    let two = store(&redis.url(), "t");
    for i in 0..5 {
        one.push_history("r", i.to_string(), keep(3)).await.unwrap();
    }
    assert_eq!(two.history("r").await.unwrap(), vec!["2", "3", "4"]);
    // Recorded without waiting: written in order, batched per room, soon.
    for i in 0..300 {
        one.record_history("fast", i.to_string(), keep(50));
        one.record_history("other", format!("o{i}"), keep(2));
    }
    let expected: Vec<String> = (250..300).map(|i| i.to_string()).collect();
    let deadline = Instant::now() + DEADLINE;
    while two.history("fast").await.unwrap() != expected
        || two.history("other").await.unwrap() != ["o298", "o299"]
    {
        assert!(Instant::now() < deadline, "history never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let session = one
        .create_session("ann", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        two.session(&session.id).await.unwrap(),
        Some(session.clone())
    );
    let expired = one.create_session("bob", Duration::ZERO).await.unwrap();
    assert_eq!(two.session(&expired.id).await.unwrap(), None);
    let brief = one
        .create_session("cid", Duration::from_millis(1))
        .await
        .unwrap();
    // Redis expires the key itself; wait for that, bounded.
    let deadline = Instant::now() + DEADLINE;
    while two.session(&brief.id).await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "a 1 ms session never expired");
        tokio::task::yield_now().await;
    }
    two.delete_session(&session.id).await.unwrap();
    assert_eq!(one.session(&session.id).await.unwrap(), None);
}

#[tokio::test]
async fn store_reports_redis_down_and_recovers() {
    let mut redis = RedisServer::start();
    let one = store(&redis.url(), "t");
    one.join_room("r", "ann", "s1").await.unwrap();
    redis.kill();
    let down = one.room_counts().await;
    assert!(matches!(&down, Err(StoreError::Unavailable(_))), "{down:?}");
    assert!(one.session("x").await.is_err());
    redis.restart();
    // The restarted Redis is empty; the store puts its member back on its first answer.
    let deadline = Instant::now() + DEADLINE;
    loop {
        match one.room_counts().await {
            Ok(counts) if counts == vec![("r".to_owned(), 1)] => break,
            other => assert!(
                Instant::now() < deadline,
                "the store did not recover: {other:?}"
            ),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_pub_sub_carries_broadcasts() {
    let redis = RedisServer::start();
    let sharded = RedisConfig {
        sharded: true,
        ..RedisConfig::new(redis.url())
    };
    let a = worker(sharded.clone()).await;
    let b = worker(sharded).await;
    let mut ann = Client::connect(a.addr, &login(a.addr, "ann"), "ann").await;
    let mut bob = Client::connect(b.addr, &login(a.addr, "bob"), "bob").await;
    ann.join("r").await;
    bob.join("r").await;
    a.bus.subscriptions_settled().await;
    b.bus.subscriptions_settled().await;
    ann.say("over a shard channel");
    let mut lines = Vec::new();
    collect_lines(&mut bob, &mut lines, |lines| !lines.is_empty()).await;
    assert_eq!(
        lines,
        vec![("ann".to_owned(), "over a shard channel".to_owned())]
    );
    // Questions, answers and disconnect orders go over shard channels too.
    assert_eq!(infra(&a).to(chat::room_key("r")).count().await, 2);
    infra(&b).to(chat::room_key("r")).disconnect();
    ann.expect("/chat_infra", "disconnect").await;
    bob.expect("/chat_infra", "disconnect").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_workers_members_are_removed_and_announced() {
    let redis = RedisServer::start();
    let short = RedisConfig {
        worker_ttl: Duration::from_millis(300),
        ..RedisConfig::new(redis.url())
    };
    let a = worker(short.clone()).await;
    let b = worker(short.clone()).await;
    let mut ann = Client::connect(a.addr, &login(a.addr, "ann"), "ann").await;
    let mut bob = Client::connect(b.addr, &login(a.addr, "bob"), "bob").await;
    ann.join("lobby").await;
    bob.join("lobby").await;
    // A worker that puts a member in the room and dies: nothing renews its liveness. The live
    // workers renew theirs, so the first departure announced is the ghost's.
    let ghost = RedisStore::new(RedisLink::new(short).expect("valid Redis URL"));
    ghost.join_room("lobby", "ghost", "g1").await.unwrap();
    let left = ann.expect("/chat_infra", "user_left").await;
    assert_eq!(left, json!({"name": "ghost"}));
    // Announced through the bus to the other worker's members too.
    assert_eq!(
        bob.expect("/chat_infra", "user_left").await,
        json!({"name": "ghost"})
    );
    assert_eq!(bob.rooms().await, json!({"lobby": 2}));
}

/// With Redis gone, a chat line reaches only the sender's own worker: the sender is told with
/// an `error` event (after its `myMessage`), and the lost broadcasts and history entries are
/// counted by cause.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_that_cannot_reach_the_other_workers_earns_an_error_and_is_counted() {
    let mut redis = RedisServer::start();
    let a = worker(RedisConfig::new(redis.url())).await;
    let cookie = login(a.addr, "ann");
    let mut ann = Client::connect(a.addr, &cookie, "ann").await;
    ann.join("lobby").await;
    a.bus.subscriptions_settled().await;
    ann.say("before");
    ann.expect("/chat_com", "message").await;

    redis.kill();
    // The first lines may go out before the worker notices Redis is gone; one line every
    // 200 ms (well below the rate limit) until the sender is told.
    let deadline = Instant::now() + DEADLINE;
    let told = 'told: loop {
        assert!(
            Instant::now() < deadline,
            "no error for lines sent while Redis is down"
        );
        ann.say("while-down");
        let wait_until = Instant::now() + Duration::from_millis(200);
        while let Some(event) = ann
            .next_within(wait_until.saturating_duration_since(Instant::now()))
            .await
        {
            if event.ns == "/chat_com" && event.name == "error" {
                break 'told event.data;
            }
        }
    };
    let message = told["message"].as_str().unwrap_or_default();
    assert!(message.contains("other servers"), "{told}");

    let deadline = Instant::now() + DEADLINE;
    loop {
        let dropped = a.link.drops().snapshot();
        let publish = dropped.get("redis_publish_failed").copied().unwrap_or(0);
        let history = dropped.get("history_write_failed").copied().unwrap_or(0);
        if publish > 0 && history > 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lost broadcasts and history entries not counted: {dropped:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
