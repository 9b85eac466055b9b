//! `max_connections` counts every open client connection, websockets included: hyper hands an
//! upgraded connection over to the websocket, and its place under the cap goes with it.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(20);

/// Reads until the end of a response head; the head.
async fn response_head(stream: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let read = tokio::time::timeout(DEADLINE, stream.read(&mut byte))
            .await
            .expect("a response within the deadline")
            .expect("read");
        assert!(read > 0, "the connection closed before a response");
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[tokio::test]
async fn an_upgraded_websocket_keeps_its_place_under_max_connections() {
    let config = chat::ChatConfig {
        secret: b"0123456789abcdef0123456789abcdef".to_vec(),
        max_connections: 1,
        ..chat::ChatConfig::default()
    };
    let server = chat::ChatServer::new(config, Arc::new(chat::MemoryStore::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move {
        server
            .serve(listener, std::future::pending::<Duration>())
            .await
    });

    let mut websocket = TcpStream::connect(address).await.expect("connect");
    websocket
        .write_all(
            b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: chat\r\n\
              Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .expect("send the websocket handshake");
    let head = response_head(&mut websocket).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");

    // The only place is the websocket's: a second client waits in the backlog.
    let mut waiting = TcpStream::connect(address).await.expect("connect");
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: chat\r\nConnection: close\r\n\r\n")
        .await
        .expect("send a request");
    let mut byte = [0u8; 1];
    let served_early =
        tokio::time::timeout(Duration::from_millis(300), waiting.read(&mut byte)).await;
    assert!(
        served_early.is_err(),
        "a second client was served while an upgraded websocket held the only place"
    );

    drop(websocket);
    let head = response_head(&mut waiting).await;
    assert!(head.contains("200 OK"), "{head}");
}
