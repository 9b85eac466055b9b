//! Event handlers registered once on a namespace serve every socket of it; a socket's own
//! handler for the same event wins for that socket.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use socketio::{SocketIo, SocketIoConfig};
use tokio_tungstenite::tungstenite::Message;

const DEADLINE: Duration = Duration::from_secs(10);

/// Sends `packet` on a new connection to the main namespace (with `query` in its URL) and
/// returns the server's answer to it.
async fn answer(address: std::net::SocketAddr, query: &str, packet: &str) -> String {
    let url = format!("ws://{address}/socket.io/?EIO=4&transport=websocket&{query}");
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut texts = Vec::new();
    let mut sent = false;
    tokio::time::timeout(DEADLINE, async {
        while let Some(Ok(message)) = ws.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            match text.as_str() {
                "2" => ws.send(Message::text("3")).await.unwrap(),
                open if open.starts_with('0') => ws.send(Message::text("40")).await.unwrap(),
                joined if joined.starts_with("40") && !sent => {
                    ws.send(Message::text(packet)).await.unwrap();
                    sent = true;
                }
                other => {
                    texts.push(other.to_owned());
                    return;
                }
            }
        }
    })
    .await
    .expect("an answer within the deadline");
    texts.pop().expect("an answer")
}

#[tokio::test]
async fn a_namespace_handler_serves_every_socket_and_a_socket_handler_wins_for_its_socket() {
    let io = SocketIo::new(SocketIoConfig::default());
    let main = io.ns("/", |socket| async move {
        if socket.handshake().query("own") == Some("yes") {
            socket.on("who", |socket, _event| async move {
                let _ = socket.emit("me", "its own handler");
            });
        }
    });
    main.on("who", |socket, _event| async move {
        let _ = socket.emit("me", "the namespace's handler");
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { io.serve(listener).await });

    let shared = answer(address, "own=no", r#"42["who"]"#).await;
    assert_eq!(shared, r#"42["me","the namespace's handler"]"#);
    let own = answer(address, "own=yes", r#"42["who"]"#).await;
    assert_eq!(own, r#"42["me","its own handler"]"#);
    let shared = answer(address, "own=no", r#"42["who"]"#).await;
    assert_eq!(shared, r#"42["me","the namespace's handler"]"#);
}
