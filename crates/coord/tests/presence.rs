//! Presence follows the socket: a user who joins rooms, renames itself with `set_name` and
//! disconnects leaves every room under the nickname it joined with, with the store of one
//! process (the one the master keeps for its workers) and with Redis (also after a Redis
//! restart, when the worker puts its members back). The histories of the rooms it left empty
//! expire (a TTL after their last message). Raw Socket.IO clients over websockets; a real `redis-server`.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chat::Store;
use coord::{RedisConfig, RedisLink, RedisStore};
use serde_json::{json, Value};

use common::{
    chat_config, login, memory_worker, within, worker_with, Client, RedisServer, DEADLINE,
};

/// Rooms the renamed user is in.
const ROOMS: usize = 10;

/// Short enough that the test sees histories expire.
const HISTORY_TTL: Duration = Duration::from_millis(300);

fn room(i: usize) -> String {
    format!("room{i}")
}

/// Ann watches `room0`; Old joins every room, speaks, renames itself to New and disconnects.
/// Ann hears Old (the name she saw enter) leave, and the rooms count Ann alone.
async fn renamed_user_disconnects(addr: std::net::SocketAddr) -> Client {
    let mut ann = Client::connect(addr, &login(addr, "ann"), "ann").await;
    ann.join(&room(0)).await;
    let mut old = Client::connect(addr, &login(addr, "old"), "old").await;
    for i in 0..ROOMS {
        old.join(&room(i)).await;
    }
    assert_eq!(
        ann.expect("/chat_infra", "user_entered").await,
        json!({"name": "old"})
    );
    old.say("remember me");
    old.expect("/chat_com", "message").await;
    old.emit("/chat_infra", "set_name", json!({"name": "new"}));
    assert_eq!(
        old.expect("/chat_infra", "name_set").await,
        json!({"name": "new"})
    );
    drop(old);
    assert_eq!(
        ann.expect("/chat_infra", "user_left").await,
        json!({"name": "old"})
    );
    wait_for_rooms(&mut ann, json!({ room(0): 1 })).await;
    ann
}

/// Asks for the room list until it is `expected` (while Redis restarts, the answer may be an
/// error).
async fn wait_for_rooms(client: &mut Client, expected: Value) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        client.emit("/chat_infra", "get_rooms", json!(null));
        let rooms = within("an answer to get_rooms", async {
            loop {
                let event = client.events.recv().await.expect("client connection open");
                if event.ns == "/chat_infra"
                    && ["rooms_list", "error"].contains(&event.name.as_str())
                {
                    return event.data;
                }
            }
        })
        .await;
        if rooms == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "rooms stay {rooms}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the rooms Old left empty have no history: it expires a TTL after the last
/// message.
async fn wait_for_empty_histories(store: &dyn Store) {
    let deadline = Instant::now() + DEADLINE;
    for i in 1..ROOMS {
        while !store.history(&room(i)).await.expect("history").is_empty() {
            assert!(
                Instant::now() < deadline,
                "the history of the empty {} never expired",
                room(i)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn short_history() -> chat::ChatConfig {
    chat::ChatConfig {
        history_ttl: HISTORY_TTL,
        ..chat_config()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_user_leaves_no_ghost_with_the_memory_store() {
    let store = Arc::new(chat::MemoryStore::default());
    let addr = memory_worker(short_history(), store.clone()).await;
    let _ann = renamed_user_disconnects(addr).await;
    wait_for_empty_histories(store.as_ref()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renamed_user_leaves_no_ghost_with_redis() {
    let mut redis = RedisServer::start();
    let config = RedisConfig {
        // Short, so the worker soon notices the restart below and puts its members back.
        worker_ttl: Duration::from_millis(600),
        ..RedisConfig::new(redis.url())
    };
    let worker = worker_with(config.clone(), short_history()).await;
    let mut ann = renamed_user_disconnects(worker.addr).await;
    let reader = RedisStore::new(RedisLink::new(config).expect("valid Redis URL"));
    wait_for_empty_histories(&reader).await;

    // An empty Redis: the worker puts back the members it has, Ann alone, not Old.
    redis.restart();
    wait_for_rooms(&mut ann, json!({ room(0): 1 })).await;
}
