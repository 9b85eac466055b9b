//! The chat's per-connection budgets against a raw Socket.IO client (kept here, beside the raw
//! client of this crate's test kit): every event is limited, not only chat messages; namespace
//! connects are too, and reconnecting a namespace does not refill the budget; a private
//! message's recipient is a nickname. One `ChatServer` with the store of one process.

mod common;

use std::sync::Arc;

use serde_json::json;

use common::{chat_config, login, memory_worker, within, Client, Received};

/// Small budgets: a client sending a handful of packets at once exceeds them even on a slow
/// machine. Two namespace connects and a join take 5 requests.
fn tight() -> chat::ChatConfig {
    chat::ChatConfig {
        messages_per_second: 1,
        events_per_second: 8,
        ..chat_config()
    }
}

async fn connected(nickname: &str) -> Client {
    let addr = memory_worker(tight(), Arc::new(chat::MemoryStore::default())).await;
    Client::connect(addr, &login(addr, nickname), nickname).await
}

/// The next event on `ns` named one of `names`.
async fn next_of(client: &mut Client, ns: &str, names: &[&str]) -> Received {
    within(&format!("one of {names:?} on {ns}"), async {
        loop {
            let event = client.events.recv().await.expect("client connection open");
            if event.ns == ns && names.contains(&event.name.as_str()) {
                return event;
            }
        }
    })
    .await
}

fn says(event: &Received, words: &str) -> bool {
    event.data["message"]
        .as_str()
        .is_some_and(|message| message.contains(words))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_any_event_gets_errors_instead_of_answers() {
    // The two namespace connects took 4 of the 8 requests.
    let mut ann = connected("ann").await;
    let sent = 20;
    for _ in 0..sent {
        ann.emit("/chat_infra", "get_rooms", json!(null));
    }
    let mut refused = 0;
    for _ in 0..sent {
        let answer = next_of(&mut ann, "/chat_infra", &["rooms_list", "error"]).await;
        if answer.name == "error" {
            assert!(says(&answer, "too many requests"), "{answer:?}");
            refused += 1;
        }
    }
    assert!(refused >= sent / 2, "only {refused} of {sent} refused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespace_reconnects_are_limited_and_keep_the_message_budget() {
    let mut ann = connected("ann").await;
    ann.join("lobby").await;
    // The one message of this second.
    ann.say("first");
    let echo = next_of(&mut ann, "/chat_com", &["message", "error"]).await;
    assert_eq!(echo.name, "message", "{echo:?}");
    // A fresh /chat_com socket is not a fresh budget.
    ann.send("41/chat_com,");
    ann.send("40/chat_com,");
    let reconnected = next_of(&mut ann, "/chat_com", &["connect", "connect_error"]).await;
    assert_eq!(reconnected.name, "connect", "{reconnected:?}");
    ann.say("second");
    let refused = next_of(&mut ann, "/chat_com", &["message", "error"]).await;
    assert!(says(&refused, "too many messages"), "{refused:?}");
    // Reconnecting over and over runs out of requests.
    for _ in 0..5 {
        ann.send("41/chat_infra,");
        ann.send("40/chat_infra,");
    }
    let refusal = within("a refused namespace connect", async {
        loop {
            let event = next_of(&mut ann, "/chat_infra", &["connect", "connect_error"]).await;
            if event.name == "connect_error" {
                return event.data;
            }
        }
    })
    .await;
    assert!(
        refusal["message"]
            .as_str()
            .is_some_and(|m| m.contains("too many requests")),
        "{refusal}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_message_goes_to_a_nickname() {
    let mut ann = connected("ann").await;
    ann.emit(
        "/chat_infra",
        "private_message",
        json!({"to": "x".repeat(10_000), "message": "hi"}),
    );
    let error = next_of(&mut ann, "/chat_infra", &["error"]).await;
    assert_eq!(
        error.data,
        json!({"message": "nickname must be at most 32 characters"})
    );
}
