//! A login form sent a byte at a time (a slow POST) gets 408 and its connection closes after
//! the whole-body deadline, the same as a slow polling POST.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(20);

#[tokio::test]
async fn a_login_form_that_trickles_gets_408_and_the_connection_closes() {
    let mut config = chat::ChatConfig {
        secret: b"0123456789abcdef0123456789abcdef".to_vec(),
        ..chat::ChatConfig::default()
    };
    config.io.engine.body_read_timeout = Duration::from_millis(300);
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

    let mut slow = TcpStream::connect(address).await.expect("connect");
    slow.write_all(
        b"POST /login HTTP/1.1\r\nHost: chat\r\n\
          Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\nnick",
    )
    .await
    .expect("send the head and a little of the body");
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, slow.read_to_end(&mut answer))
        .await
        .expect("the server answers and closes within the deadline")
        .expect("read until the server closes");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
}
