//! The Redis bus and store against a 3-node Redis Cluster that each test starts itself: three
//! `redis-server --cluster-enabled yes` on free loopback ports, joined by
//! `redis-cli --cluster create`, killed by pid at the end. Two `ChatServer`s in this process
//! play two workers, with the cluster connection (`RedisConfig::cluster`) and sharded pub/sub
//! (SPUBLISH/SSUBSCRIBE) on.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chat::Store;
use coord::{RedisConfig, RedisLink, RedisStore};
use serde_json::json;

use common::{collect_lines, keep, login, worker, Client};
use testkit::redis::RedisCluster;

/// The cluster client with sharded pub/sub, seeded with two of the three nodes.
fn cluster_config(cluster: &RedisCluster) -> RedisConfig {
    RedisConfig {
        cluster: true,
        sharded: true,
        ..RedisConfig::new(cluster.url())
    }
}

/// A room for each node: rooms whose broadcast channels (`P:bc:/chat_com:room:NAME`) live in
/// slots of three different nodes, so every node carries part of the traffic.
fn one_room_per_node(cluster: &RedisCluster) -> Vec<String> {
    let mut rooms: HashMap<u16, String> = HashMap::new();
    for i in 0.. {
        if rooms.len() == cluster.nodes.len() {
            break;
        }
        assert!(i < 1000, "no room names spread over the nodes: {rooms:?}");
        let room = format!("room{i}");
        let channel = format!("chatctl:bc:/chat_com:{}", chat::room_key(&room));
        rooms.entry(cluster.owner(&channel)).or_insert(room);
    }
    let mut rooms: Vec<String> = rooms.into_values().collect();
    rooms.sort();
    rooms
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_share_rooms_and_broadcasts_over_a_cluster_with_sharded_pub_sub() {
    let cluster = RedisCluster::start();
    let rooms = one_room_per_node(&cluster);
    let config = RedisConfig {
        worker_ttl: Duration::from_secs(2),
        ..cluster_config(&cluster)
    };
    let a = worker(config.clone()).await;
    let b = worker(config.clone()).await;

    // Twelve users, all logged in through worker A, half of them then on worker B (whose store
    // must accept A's sessions); room i % 3, so each room has two users on each worker.
    let mut clients = Vec::new();
    for i in 0..12 {
        let nickname = format!("user{i}");
        let cookie = login(a.addr, &nickname);
        let addr = if i % 2 == 0 { a.addr } else { b.addr };
        let mut client = Client::connect(addr, &cookie, &nickname).await;
        client.join(&rooms[i % 3]).await;
        clients.push(client);
    }
    a.bus.subscriptions_settled().await;
    b.bus.subscriptions_settled().await;

    // Everyone says two lines; the three others in the room get each exactly once.
    for client in &clients {
        for k in 0..2 {
            client.say(&format!("{}-{k}", client.nickname));
        }
    }
    let mut received: Vec<Vec<(String, String)>> = vec![Vec::new(); clients.len()];
    for (client, lines) in clients.iter_mut().zip(&mut received) {
        collect_lines(client, lines, |lines| lines.len() >= 6).await;
    }
    // In each room, a marker from a user on each worker, sent after every line above went
    // through Redis: a late duplicate of an earlier line would come before it on its channel.
    for room in 0..3 {
        clients[room].say(&format!("marker-{room}-a-or-b"));
        clients[room + 3].say(&format!("marker-{room}-b-or-a"));
    }
    for (i, (client, lines)) in clients.iter_mut().zip(&mut received).enumerate() {
        let room = i % 3;
        let markers: Vec<String> = [(room, "a-or-b"), (room + 3, "b-or-a")]
            .into_iter()
            .filter(|(sender, _)| *sender != i)
            .map(|(_, which)| format!("marker-{room}-{which}"))
            .collect();
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
        for j in (0..12).filter(|&j| j != i && j % 3 == room) {
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
        assert_eq!(lines.len(), 6 + markers.len(), "user{i}: {lines:?}");
    }

    // Both workers count the same users in the same rooms.
    let expected: serde_json::Map<String, serde_json::Value> =
        rooms.iter().map(|room| (room.clone(), json!(4))).collect();
    let rooms_a = clients[0].rooms().await;
    let rooms_b = clients[1].rooms().await;
    assert_eq!(rooms_a, serde_json::Value::Object(expected));
    assert_eq!(rooms_a, rooms_b);

    // A private message (on the namespace channel) from a user on A reaches a user on B.
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

    // Questions and answers over shard channels: each worker counts a room's four users, two
    // of them its own.
    for side in [&a, &b] {
        let infra = side.io.of(chat::INFRA).expect("the chat has /chat_infra");
        let room = chat::room_key(&rooms[0]);
        assert_eq!(infra.to(room.clone()).count().await, 4);
        assert_eq!(infra.to(room).local().count().await, 2);
    }

    // A worker that puts a member in a room and dies: the live workers remove it (one Lua
    // script over the hash-tagged keys) and announce it on both workers.
    let ghost = RedisStore::new(RedisLink::new(config).expect("valid Redis URLs"));
    ghost
        .join_room(&rooms[0], "ghost", "g1")
        .await
        .expect("join over the cluster");
    assert_eq!(
        clients[0].expect("/chat_infra", "user_left").await,
        json!({"name": "ghost"})
    );
    assert_eq!(
        clients[3].expect("/chat_infra", "user_left").await,
        json!({"name": "ghost"})
    );
    assert!(!a.serving.is_finished() && !b.serving.is_finished());
}

#[tokio::test]
async fn store_keeps_rooms_sessions_and_history_on_a_cluster() {
    let cluster = RedisCluster::start();
    let store = || RedisStore::new(RedisLink::new(cluster_config(&cluster)).expect("valid URLs"));
    let (one, two) = (store(), store());
    // Rooms whose keys would hash to different nodes without the hash tag.
    for room in ["r", "s", "t"] {
        assert!(one.join_room(room, "ann", "s1").await.unwrap());
        assert!(!two.join_room(room, "ann", "s2").await.unwrap());
        assert!(two.join_room(room, "bob", "s3").await.unwrap());
    }
    let counts = vec![
        ("r".to_owned(), 2),
        ("s".to_owned(), 2),
        ("t".to_owned(), 2),
    ];
    assert_eq!(one.room_counts().await.unwrap(), counts);
    assert_eq!(two.room_users("s").await.unwrap(), vec!["ann", "bob"]);
    assert!(one.leave_room("r", "s1").await.unwrap().is_none());
    assert!(two.leave_room("r", "s2").await.unwrap().is_some());
    assert!(one.leave_room("r", "s3").await.unwrap().is_some());
    assert_eq!(two.room_counts().await.unwrap(), counts[1..].to_vec());

    // Sessions and histories spread over the nodes.
    let mut sessions = Vec::new();
    for i in 0..10 {
        let session = one
            .create_session(&format!("user{i}"), Duration::from_secs(60))
            .await
            .unwrap();
        one.push_history(&format!("room{i}"), format!("line{i}"), keep(3))
            .await
            .unwrap();
        sessions.push(session);
    }
    for (i, session) in sessions.iter().enumerate() {
        assert_eq!(
            two.session(&session.id).await.unwrap().as_ref(),
            Some(session)
        );
        assert_eq!(
            two.history(&format!("room{i}")).await.unwrap(),
            vec![format!("line{i}")]
        );
    }
    two.delete_session(&sessions[0].id).await.unwrap();
    assert_eq!(one.session(&sessions[0].id).await.unwrap(), None);
}
