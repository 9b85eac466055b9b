//! Bad input from one client costs that client its connection and nothing else: malformed
//! packets, stray attachments, too many attachments, packets only servers send, silence after
//! the handshake. Raw frames over a real loopback websocket, so nothing a client library would
//! refuse to send is off limits.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use socketio::{SocketIo, SocketIoConfig};
use tokio_tungstenite::tungstenite::Message;

use testkit::engineio::Ws;

const DEADLINE: Duration = Duration::from_secs(10);

async fn server(connect_timeout: Duration) -> std::net::SocketAddr {
    server_with(SocketIoConfig {
        connect_timeout,
        ..SocketIoConfig::default()
    })
    .await
}

async fn server_with(config: SocketIoConfig) -> std::net::SocketAddr {
    let io = SocketIo::new(config);
    io.ns("/", |socket| async move {
        socket.on("echo", |_socket, mut event| async move {
            if let Some(ack) = event.ack.take() {
                let _ = ack.send_raw(&event.raw_args(), &event.binary);
            }
        });
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { io.serve(listener).await });
    address
}

/// Next text frame that is not a ping (pings are answered).
async fn next_text(ws: &mut Ws) -> Option<String> {
    testkit::engineio::next_text_answering_pings(ws, DEADLINE).await
}

/// An Engine.IO session on a websocket, joined to the main namespace.
async fn connected(address: std::net::SocketAddr) -> Ws {
    let url = format!("ws://{address}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert!(next_text(&mut ws).await.unwrap().starts_with('0'));
    ws.send(Message::text("40")).await.unwrap();
    assert!(next_text(&mut ws).await.unwrap().starts_with("40{\"sid\""));
    ws
}

/// Whether the server closed this connection (the stream ends within the deadline).
async fn closed_by_server(ws: &mut Ws) -> bool {
    tokio::time::timeout(DEADLINE, async {
        while let Some(Ok(message)) = ws.next().await {
            if let Message::Close(_) = message {
                return;
            }
        }
    })
    .await
    .is_ok()
}

async fn echo_works(ws: &mut Ws) -> bool {
    ws.send(Message::text("427[\"echo\",\"still here\"]"))
        .await
        .is_ok()
        && next_text(ws).await.as_deref() == Some("437[\"still here\"]")
}

#[tokio::test]
async fn malformed_packets_close_only_the_sending_connection() {
    let address = server(Duration::from_secs(30)).await;
    let mut bystander = connected(address).await;
    for garbage in [
        "4abc",                           // unknown packet type
        "42{}",                           // event payload not an array
        "42[]",                           // event without a name
        "42abc[\"echo\"]",                // invalid ack id
        "42[\"disconnect\"]",             // reserved event name
        "451-",                           // binary header without a payload
        "4599999-[\"echo\"]",             // absurd attachment count
        "44{\"message\":\"x\"}",          // CONNECT_ERROR is for servers to send
        "42[\"echo\",{\"unterminated\":", // truncated JSON
    ] {
        let mut attacker = connected(address).await;
        attacker.send(Message::text(garbage)).await.unwrap();
        assert!(
            closed_by_server(&mut attacker).await,
            "{garbage:?} did not close the connection"
        );
        assert!(
            echo_works(&mut bystander).await,
            "{garbage:?} affected another connection"
        );
    }
}

#[tokio::test]
async fn stray_binary_attachments_close_the_connection() {
    let address = server(Duration::from_secs(30)).await;
    let mut bystander = connected(address).await;

    let mut attacker = connected(address).await;
    attacker
        .send(Message::binary(vec![1u8, 2, 3]))
        .await
        .unwrap();
    assert!(
        closed_by_server(&mut attacker).await,
        "attachment without a packet"
    );

    let mut attacker = connected(address).await;
    attacker
        .send(Message::text(
            "451-[\"echo\",{\"_placeholder\":true,\"num\":0}]",
        ))
        .await
        .unwrap();
    attacker.send(Message::text("42[\"echo\"]")).await.unwrap();
    assert!(
        closed_by_server(&mut attacker).await,
        "text while an attachment was due"
    );

    assert!(echo_works(&mut bystander).await);
}

#[tokio::test]
async fn binary_attachments_are_reassembled_in_order() {
    let address = server(Duration::from_secs(30)).await;
    let mut ws = connected(address).await;
    let header =
        "452-9[\"echo\",{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]";
    ws.send(Message::text(header)).await.unwrap();
    ws.send(Message::binary(vec![1u8])).await.unwrap();
    ws.send(Message::binary(vec![2u8, 2])).await.unwrap();
    assert_eq!(
        next_text(&mut ws).await.as_deref(),
        Some("462-9[{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]")
    );
    let mut attachments = Vec::new();
    while attachments.len() < 2 {
        match tokio::time::timeout(DEADLINE, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Binary(data) => attachments.push(data.to_vec()),
            Message::Text(text) if text.as_str() == "2" => {
                ws.send(Message::text("3")).await.unwrap()
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(attachments, vec![vec![1u8], vec![2u8, 2]]);
}

#[tokio::test]
async fn unknown_namespaces_and_foreign_packets_do_not_cost_the_connection() {
    let address = server(Duration::from_secs(30)).await;
    let mut ws = connected(address).await;
    ws.send(Message::text("40/nowhere,")).await.unwrap();
    assert_eq!(
        next_text(&mut ws).await.as_deref(),
        Some("44/nowhere,{\"message\":\"Invalid namespace\"}")
    );
    // An event for a namespace this client never joined is ignored, as the reference does.
    ws.send(Message::text("42/nowhere,[\"echo\"]"))
        .await
        .unwrap();
    // An ack nobody waits for is ignored too.
    ws.send(Message::text("43999[1]")).await.unwrap();
    assert!(echo_works(&mut ws).await);
}

#[tokio::test]
async fn a_connection_that_joins_no_namespace_is_closed_after_the_connect_timeout() {
    let address = server(Duration::from_millis(300)).await;
    let url = format!("ws://{address}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert!(next_text(&mut ws).await.unwrap().starts_with('0'));
    assert!(closed_by_server(&mut ws).await);
}

/// The attachment bomb: a header announcing many attachments, then large binary frames. Each
/// frame is within `max_payload`, so only a bound on the whole packet (and on the count, and on
/// where it may be buffered) keeps the server from holding them.
#[tokio::test]
async fn an_attachment_bomb_is_closed_within_max_payload_bytes() {
    const MAX_PAYLOAD: usize = 100_000;
    let mut config = SocketIoConfig {
        connect_timeout: Duration::from_secs(30),
        ..SocketIoConfig::default()
    };
    config.engine.max_payload = MAX_PAYLOAD;
    let address = server_with(config).await;
    let mut bystander = connected(address).await;
    let attachment = vec![7u8; MAX_PAYLOAD * 6 / 10];

    // More attachments than allowed: refused at the header.
    let mut attacker = connected(address).await;
    attacker
        .send(Message::text(
            "451000-[\"echo\",{\"_placeholder\":true,\"num\":0}]",
        ))
        .await
        .unwrap();
    assert!(
        closed_by_server(&mut attacker).await,
        "a packet announcing 1000 attachments was accepted"
    );

    // Few attachments, but together above max_payload: closed at the one that crosses it.
    let mut attacker = connected(address).await;
    attacker
        .send(Message::text(
            "453-[\"echo\",{\"_placeholder\":true,\"num\":0}]",
        ))
        .await
        .unwrap();
    for _ in 0..2 {
        attacker
            .send(Message::binary(attachment.clone()))
            .await
            .unwrap();
    }
    assert!(
        closed_by_server(&mut attacker).await,
        "attachments adding up to more than max_payload were buffered"
    );

    // A binary packet for a namespace the client has not joined is not buffered at all: the
    // issue's attacker never joined one (no cookie).
    let url = format!("ws://{address}/socket.io/?EIO=4&transport=websocket");
    let (mut attacker, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    assert!(next_text(&mut attacker).await.unwrap().starts_with('0'));
    attacker
        .send(Message::text(
            "452-[\"echo\",{\"_placeholder\":true,\"num\":0}]",
        ))
        .await
        .unwrap();
    attacker.send(Message::binary(vec![1u8; 10])).await.unwrap();
    assert!(
        closed_by_server(&mut attacker).await,
        "attachments for an unjoined namespace were buffered"
    );

    assert!(echo_works(&mut bystander).await);
}

#[tokio::test]
async fn a_binary_packet_within_the_limits_still_arrives() {
    let mut config = SocketIoConfig::default();
    config.engine.max_payload = 100_000;
    config.max_attachments = 2;
    let address = server_with(config).await;
    let mut ws = connected(address).await;
    ws.send(Message::text(
        "452-1[\"echo\",{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]",
    ))
    .await
    .unwrap();
    for _ in 0..2 {
        ws.send(Message::binary(vec![1u8; 40_000])).await.unwrap();
    }
    assert_eq!(
        next_text(&mut ws).await.as_deref(),
        Some("462-1[{\"_placeholder\":true,\"num\":0},{\"_placeholder\":true,\"num\":1}]")
    );
}
