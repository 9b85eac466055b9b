//! Handshakes that never join a namespace cannot lock users out: they have caps of their own,
//! in total and per client address, apart from `max_sessions`, and they end after
//! `connect_timeout`. Real loopback connections from two source addresses (127.0.0.1 floods,
//! 127.0.0.2 is the user).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::SinkExt;
use socketio::{SocketIo, SocketIoConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

const DEADLINE: Duration = Duration::from_secs(20);
const FLOODER: &str = "127.0.0.1";
const USER: &str = "127.0.0.2";

type Ws = tokio_tungstenite::WebSocketStream<TcpStream>;

async fn server(config: SocketIoConfig) -> (SocketIo, SocketAddr) {
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
    let serving = io.clone();
    tokio::spawn(async move { serving.serve(listener).await });
    (io, address)
}

/// A TCP connection to `server` from the loopback address `from`.
async fn connect_from(from: &str, server: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    let from: IpAddr = from.parse().unwrap();
    socket.bind(SocketAddr::new(from, 0)).unwrap();
    tokio::time::timeout(DEADLINE, socket.connect(server))
        .await
        .expect("connect within the deadline")
        .unwrap()
}

/// Polling handshakes, one after the other on one keep-alive connection; the status of each.
async fn polling_handshakes(from: &str, server: SocketAddr, count: usize) -> Vec<u16> {
    let stream = connect_from(from, server).await;
    let mut stream = BufReader::new(stream);
    let mut statuses = Vec::with_capacity(count);
    let request =
        format!("GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: {server}\r\n\r\n");
    for _ in 0..count {
        stream
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .unwrap();
        let mut status_line = String::new();
        stream.read_line(&mut status_line).await.unwrap();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP status line: {status_line:?}"));
        let mut length = 0;
        loop {
            let mut line = String::new();
            stream.read_line(&mut line).await.unwrap();
            if line == "\r\n" {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap();
                }
            }
        }
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.unwrap();
        statuses.push(status);
    }
    statuses
}

/// Next text frame that is not a ping (pings are answered).
async fn next_text(ws: &mut Ws) -> Option<String> {
    testkit::engineio::next_text_answering_pings(ws, DEADLINE).await
}

/// A user from `from`: a websocket session that joins `/` and gets an echo back. Panics with
/// what went wrong.
async fn user_connects_and_chats(from: &str, server: SocketAddr) {
    let stream = connect_from(from, server).await;
    let url = format!("ws://{server}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::client_async(url, stream))
        .await
        .expect("websocket handshake within the deadline")
        .unwrap_or_else(|error| panic!("the user from {from} was refused: {error}"));
    assert!(next_text(&mut ws).await.unwrap().starts_with('0'));
    ws.send(Message::text("40")).await.unwrap();
    assert!(next_text(&mut ws).await.unwrap().starts_with("40{\"sid\""));
    ws.send(Message::text("421[\"echo\",\"hello\"]"))
        .await
        .unwrap();
    assert_eq!(next_text(&mut ws).await.as_deref(), Some("431[\"hello\"]"));
}

/// The lock-out: 12 000 polling handshakes from one address, with `max_sessions` at
/// the 10 000 of `chatctl serve`'s default --max-connections; a user from another address
/// still connects and chats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_from_one_address_does_not_lock_out_another() {
    let mut config = SocketIoConfig {
        connect_timeout: Duration::from_secs(30),
        ..SocketIoConfig::default()
    };
    config.engine.max_sessions = 10_000;
    let per_address = config.engine.max_pending_sessions_per_address;
    let (io, server) = server(config).await;

    let floods: Vec<_> = (0..4)
        .map(|_| tokio::spawn(polling_handshakes(FLOODER, server, 3_000)))
        .collect();
    let mut statuses = Vec::new();
    for flood in floods {
        statuses.extend(flood.await.unwrap());
    }
    user_connects_and_chats(USER, server).await;

    let accepted = statuses.iter().filter(|status| **status == 200).count();
    let refused = statuses.iter().filter(|status| **status == 503).count();
    assert_eq!(
        accepted + refused,
        12_000,
        "unexpected answers: {statuses:?}"
    );
    assert_eq!(
        accepted, per_address,
        "one address got more pending sessions than max_pending_sessions_per_address"
    );
    assert!(io.engine().session_count() <= per_address + 1);
}

/// A session that joins a namespace gives its pending place back; one that joins none is
/// closed after `connect_timeout` and gives it back too.
#[tokio::test]
async fn pending_places_come_back_on_join_and_on_connect_timeout() {
    let mut config = SocketIoConfig {
        connect_timeout: Duration::from_millis(500),
        ..SocketIoConfig::default()
    };
    config.engine.max_pending_sessions_per_address = 1;
    let (io, server) = server(config).await;

    // A user who joins: their address can open the next handshake at once.
    user_connects_and_chats(FLOODER, server).await;
    user_connects_and_chats(FLOODER, server).await;

    // A handshake that goes no further holds the address's only place until connect_timeout.
    assert_eq!(polling_handshakes(USER, server, 2).await, vec![200, 503]);
    let until = tokio::time::Instant::now() + DEADLINE;
    while io.engine().session_count() > 0 {
        assert!(
            tokio::time::Instant::now() < until,
            "the pending session outlived connect_timeout"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(polling_handshakes(USER, server, 1).await, vec![200]);
}
