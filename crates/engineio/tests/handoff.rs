//! Live hand-off between two engines (two processes in production, two engines here): a
//! websocket session's connection and a polling session's queue move from one to the other,
//! and the client goes on with the same sid without noticing. Real loopback sockets, a real
//! websocket client.

mod common;

use std::os::fd::OwnedFd;
use std::sync::Arc;

use bytes::Bytes;
use engineio::{
    DetachStream, DisconnectReason, Engine, EngineConfig, Frame, Handler, Message, RecordError,
    SessionRecord, Socket,
};
use http::StatusCode;
use serde_json::value::RawValue;

use common::{config, next_text, send_text, within, Handshake};

/// Echoes every message with the engine's name in front, and moves its (empty) state.
struct Portable {
    name: &'static str,
}

impl Handler for Portable {
    type Data = ();

    fn on_connect(&self, _socket: &Arc<Socket<()>>) {}

    async fn on_message(&self, socket: &Arc<Socket<()>>, message: Message) {
        if let Message::Text(text) = message {
            let _ = socket.send(Frame::message(&format!("{}:{text}", self.name)));
        }
    }

    async fn on_disconnect(&self, _socket: Arc<Socket<()>>, _reason: DisconnectReason) {}

    fn export(&self, _socket: &Arc<Socket<()>>, close: &dyn Fn()) -> Option<Box<RawValue>> {
        close();
        RawValue::from_string("{}".into()).ok()
    }

    async fn import(&self, _socket: &Arc<Socket<()>>, state: &RawValue) -> Result<(), String> {
        (state.get() == "{}")
            .then_some(())
            .ok_or_else(|| "unknown state".to_owned())
    }
}

/// The connections `Engine::serve` makes, as a server detaches them.
fn detach() -> DetachStream {
    DetachStream(Arc::new(|upgraded| {
        type Accepted = hyper_util::rt::TokioIo<tokio::net::TcpStream>;
        let parts = upgraded.downcast::<Accepted>().ok()?;
        let stream = parts.io.into_inner().into_std().ok()?;
        Some((OwnedFd::from(stream), parts.read_buf))
    }))
}

/// An engine named `name` on a loopback port; its address.
async fn serve(name: &'static str) -> (Arc<Engine<Portable>>, std::net::SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let engine = Engine::new(
        EngineConfig {
            detach_stream: Some(detach()),
            ..config()
        },
        Portable { name },
    );
    tokio::spawn(engine.clone().serve(listener));
    (engine, address)
}

/// A session opened on a websocket to the engine at `address`, and its open packet.
async fn websocket_session(address: std::net::SocketAddr) -> (common::Ws, Handshake) {
    let url = testkit::engineio::websocket_url(address, None);
    let (mut ws, _) = within("connect", tokio_tungstenite::connect_async(url))
        .await
        .unwrap();
    let open = Handshake::parse(&next_text(&mut ws).await);
    (ws, open)
}

/// Hands every session of `from` to `to` as the supervisor does (the record through its
/// encoding); how many moved.
async fn move_all(from: &Arc<Engine<Portable>>, to: &Arc<Engine<Portable>>) -> usize {
    let (departures, mut departing) = tokio::sync::mpsc::unbounded_channel();
    let asked = from.hand_off_all(departures, true);
    let mut moved = 0;
    for _ in 0..asked {
        let departure = within("a departure", departing.recv())
            .await
            .unwrap()
            .expect("the session leaves");
        let config = to.config();
        let record = SessionRecord::decode(
            &departure.record.encode(),
            config.max_payload,
            config.max_buffered_packets,
        )
        .expect("a valid record");
        let sid = record.sid.clone();
        to.adopt(record, departure.stream).await.expect("adopted");
        from.departed(&sid);
        moved += 1;
    }
    moved
}

#[tokio::test]
async fn a_websocket_session_moves_with_its_connection_and_keeps_its_sid() {
    let (old, address) = serve("old").await;
    let (new, _) = serve("new").await;
    let (mut ws, open) = websocket_session(address).await;
    send_text(&mut ws, "4a").await;
    assert_eq!(next_text(&mut ws).await, "4old:a");
    assert_eq!(move_all(&old, &new).await, 1);
    assert!(old.session(&open.sid).is_none());
    assert!(new.session(&open.sid).is_some());
    // The new engine pings at once: the client's timer ran since the old one's last ping.
    assert_eq!(next_text(&mut ws).await, "2");
    send_text(&mut ws, "3").await;
    send_text(&mut ws, "4b").await;
    assert_eq!(next_text(&mut ws).await, "4new:b");
}

/// A text frame as a client sends it (masked).
fn client_text(text: &str) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut frame = vec![0x81, 0x80 | text.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(text.bytes().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    frame
}

/// The payload of the next text frame the server sends (unmasked, short).
async fn server_text(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 2];
    within("a frame", stream.read_exact(&mut head))
        .await
        .unwrap();
    assert_eq!(head[0], 0x81, "a text frame");
    let mut payload = vec![0u8; usize::from(head[1] & 0x7f)];
    within("a frame", stream.read_exact(&mut payload))
        .await
        .unwrap();
    String::from_utf8(payload).unwrap()
}

#[tokio::test]
async fn bytes_of_a_frame_read_before_the_move_are_decoded_after_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (old, address) = serve("old").await;
    let (new, _) = serve("new").await;
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(
            b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: localhost\r\n\
              Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut response = Vec::new();
    while !response.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        within("the 101", stream.read_exact(&mut byte))
            .await
            .unwrap();
        response.push(byte[0]);
    }
    assert!(response.starts_with(b"HTTP/1.1 101"));
    let open = server_text(&mut stream).await;
    assert!(open.starts_with("0{"), "{open}");
    // A whole frame and the start of the next in one write: once the first is answered, the
    // old engine holds the start of the second.
    let split = client_text("4split");
    let mut bytes = client_text("4a");
    bytes.extend_from_slice(&split[..5]);
    stream.write_all(&bytes).await.unwrap();
    assert_eq!(server_text(&mut stream).await, "4old:a");
    assert_eq!(move_all(&old, &new).await, 1);
    assert_eq!(server_text(&mut stream).await, "2");
    stream.write_all(&split[5..]).await.unwrap();
    assert_eq!(server_text(&mut stream).await, "4new:split");
}

#[tokio::test]
async fn a_polling_session_moves_with_its_queue() {
    let (old, address) = serve("old").await;
    let (new, new_address) = serve("new").await;
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let get = |address: std::net::SocketAddr, query: String| {
        let http = http.clone();
        async move {
            let uri = format!("http://{address}/socket.io/?EIO=4&transport=polling{query}");
            let response = within("a GET", http.get(uri.parse().unwrap()))
                .await
                .unwrap();
            let status = response.status();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            (status, String::from_utf8(body.to_vec()).unwrap())
        }
    };
    let (_, open) = get(address, String::new()).await;
    let sid = Handshake::parse(&open).sid;
    let socket = old.session(&sid).unwrap();
    socket.send(Frame::message("queued")).unwrap();
    assert_eq!(move_all(&old, &new).await, 1);
    // The queue came along, ahead of the new engine's first ping (in the same answer or the
    // next).
    let (status, mut body) = get(new_address, format!("&sid={sid}")).await;
    assert_eq!(status, StatusCode::OK);
    if body == "4queued" {
        body.push('\u{1e}');
        body.push_str(&get(new_address, format!("&sid={sid}")).await.1);
    }
    assert_eq!(body, "4queued\u{1e}2");
}

#[tokio::test]
async fn a_websocket_the_adopter_refuses_is_closed_and_gone_from_both() {
    let (old, address) = serve("old").await;
    let (new, _) = serve("new").await;
    let (mut ws, open) = websocket_session(address).await;
    let (departures, mut departing) = tokio::sync::mpsc::unbounded_channel();
    assert_eq!(old.hand_off_all(departures, true), 1);
    let mut departure = within("a departure", departing.recv())
        .await
        .unwrap()
        .expect("the session leaves");
    departure.record.upper = RawValue::from_string("\"not ours\"".into()).unwrap();
    let refused = new.adopt(departure.record, departure.stream).await;
    assert!(
        matches!(refused, Err(RecordError::Refused(_))),
        "{refused:?}"
    );
    old.departed(&open.sid);
    assert!(old.session(&open.sid).is_none() && new.session(&open.sid).is_none());
    // Its connection went with the refused record: the client sees it end, and reconnects.
    common::expect_ws_closed(&mut ws).await;
}

#[tokio::test]
async fn an_adopter_refuses_what_it_cannot_serve() {
    let (new, _) = serve("new").await;
    let record = |sid: &str, websocket: bool, upper: &str| SessionRecord {
        sid: sid.into(),
        websocket,
        headers: Vec::new(),
        uri: "/socket.io/?EIO=4&transport=polling".into(),
        queued: Vec::new(),
        unread: Default::default(),
        upper: RawValue::from_string(upper.into()).unwrap(),
    };
    new.adopt(record("s1", false, "{}"), None).await.unwrap();
    assert_eq!(
        new.adopt(record("s1", false, "{}"), None).await,
        Err(RecordError::Duplicate("s1".into()))
    );
    assert_eq!(
        new.adopt(record("s2", true, "{}"), None).await,
        Err(RecordError::StreamMismatch)
    );
    assert!(matches!(
        new.adopt(record("s3", false, "[1]"), None).await,
        Err(RecordError::Refused(_))
    ));
    assert!(new.session("s3").is_none(), "a refused session was kept");
}
