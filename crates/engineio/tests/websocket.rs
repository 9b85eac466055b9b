//! Websocket sessions against a real server: sessions that start on a websocket, the upgrade of
//! a polling session (`2probe` / `3probe` / `5`), and the heartbeat.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{
    config, expect_ws_closed, fast_heartbeat, next_message, next_text, send_text, start, within,
    UNKNOWN_SID_BODY,
};
use engineio::{DisconnectReason, Frame, Transport};
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use tokio_tungstenite::tungstenite::Message as WsMessage;

#[tokio::test]
async fn websocket_handshake_sends_open_packet_without_upgrades() {
    let server = start(config()).await;
    let (_ws, open) = server.websocket_session().await;

    assert_eq!(open.json["upgrades"], serde_json::json!([]));
    assert_eq!(open.json["pingInterval"], 60_000);
    assert_eq!(open.json["pingTimeout"], 60_000);
    assert_eq!(open.json["maxPayload"], common::MAX_PAYLOAD);
    let socket = server
        .engine
        .session(&open.sid)
        .expect("registered session");
    assert_eq!(socket.transport(), Transport::Websocket);
}

#[tokio::test]
async fn websocket_echoes_text_frames_and_binary_frames() {
    let server = start(config()).await;
    let (mut ws, _) = server.websocket_session().await;

    send_text(&mut ws, "4hello €").await;
    assert_eq!(next_text(&mut ws).await, "4hello €");

    let data = Bytes::from_static(&[0, 1, 2, 255]);
    within("binary send", ws.send(WsMessage::Binary(data.clone())))
        .await
        .expect("send");
    assert_eq!(next_message(&mut ws).await, Some(WsMessage::Binary(data)));
}

/// The websocket frames a client may send besides whole messages, through the session's loop:
/// its pings are answered with their payload, a message in fragments (with a ping between them)
/// arrives whole, and its close is answered with the same code before the session ends.
#[tokio::test]
async fn websocket_answers_pings_reassembles_fragments_and_answers_a_close() {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{CloseCode, Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame as WsFrame;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    let server = start(config()).await;
    let (mut ws, open) = server.websocket_session().await;
    // `next_message` passes over pongs: these are read as they come.
    async fn next_frame(ws: &mut common::Ws) -> Option<WsMessage> {
        within("a websocket frame", ws.next())
            .await
            .map(|message| message.expect("a valid frame"))
    }

    let payload = Bytes::from_static(b"are you there");
    within("ping", ws.send(WsMessage::Ping(payload.clone())))
        .await
        .expect("send");
    assert_eq!(next_frame(&mut ws).await, Some(WsMessage::Pong(payload)));

    let first = WsFrame::message("4hel", OpCode::Data(Data::Text), false);
    let last = WsFrame::message("lo €", OpCode::Data(Data::Continue), true);
    for frame in [
        WsMessage::Frame(first),
        WsMessage::Ping(Bytes::from_static(b"between")),
        WsMessage::Frame(last),
    ] {
        within("fragment", ws.send(frame)).await.expect("send");
    }
    assert_eq!(
        next_frame(&mut ws).await,
        Some(WsMessage::Pong(Bytes::from_static(b"between")))
    );
    assert_eq!(next_text(&mut ws).await, "4hello €");

    let close = CloseFrame {
        code: CloseCode::Away,
        reason: "bye".into(),
    };
    within("close", ws.send(WsMessage::Close(Some(close.clone()))))
        .await
        .expect("send");
    assert_eq!(
        next_frame(&mut ws).await,
        Some(WsMessage::Close(Some(close)))
    );
    assert_eq!(
        server.disconnect_reason(&open.sid).await,
        DisconnectReason::TransportClose
    );
}

#[tokio::test]
async fn websocket_close_packet_ends_the_session() {
    let server = start(config()).await;
    let (mut ws, open) = server.websocket_session().await;

    send_text(&mut ws, "1").await;
    assert_eq!(
        server.disconnect_reason(&open.sid).await,
        DisconnectReason::ClientClose
    );
    expect_ws_closed(&mut ws).await;
}

#[tokio::test]
async fn websocket_client_that_answers_pings_outlives_several_ping_timeouts() {
    // Slack for a late pong on a loaded machine; see the polling twin of this test.
    let config = engineio::EngineConfig {
        ping_timeout: Duration::from_millis(400),
        ..fast_heartbeat()
    };
    let survive = 3 * (config.ping_interval + config.ping_timeout);
    let server = start(config).await;
    let (mut ws, open) = server.websocket_session().await;

    let started = tokio::time::Instant::now();
    let mut pings = 0;
    while started.elapsed() < survive {
        assert_eq!(next_text(&mut ws).await, "2");
        pings += 1;
        send_text(&mut ws, "3").await;
    }
    assert!(pings >= 3);
    assert!(!server.has_ended(&open.sid));
    send_text(&mut ws, "4alive").await;
    loop {
        match next_text(&mut ws).await.as_str() {
            "2" => send_text(&mut ws, "3").await,
            other => break assert_eq!(other, "4alive"),
        }
    }
}

#[tokio::test]
async fn websocket_session_ends_when_the_client_stops_answering_pings() {
    let server = start(fast_heartbeat()).await;
    let (mut ws, open) = server.websocket_session().await;

    assert_eq!(next_text(&mut ws).await, "2");
    // No pong.
    assert_eq!(
        server.disconnect_reason(&open.sid).await,
        DisconnectReason::PingTimeout
    );
    expect_ws_closed(&mut ws).await;
}

#[tokio::test]
async fn polling_session_upgrades_to_websocket_with_probe() {
    let server = start(config()).await;
    let sid = server.polling_handshake().await.sid;

    // The client keeps a GET pending while it probes, as real clients do.
    let pending_get = tokio::spawn({
        let server = server.clone();
        let sid = sid.clone();
        async move { server.poll(&sid).await }
    });
    let mut ws = server.ws_connect(server.ws_request(Some(&sid))).await;
    send_text(&mut ws, "2probe").await;
    assert_eq!(next_text(&mut ws).await, "3probe");

    // The probe ends the pending GET with a noop so the client can pause polling.
    let polled = within("the pending GET", pending_get)
        .await
        .expect("GET task");
    assert_eq!((polled.status, polled.body.as_str()), (StatusCode::OK, "6"));

    send_text(&mut ws, "5").await;
    send_text(&mut ws, "4over websocket").await;
    assert_eq!(next_text(&mut ws).await, "4over websocket");
    let socket = server.engine.session(&sid).expect("session still open");
    assert_eq!(socket.transport(), Transport::Websocket);

    // Polling with an upgraded sid is refused, without harming the session.
    let get = server.poll(&sid).await;
    assert_eq!(get.status, StatusCode::BAD_REQUEST);
    assert_eq!(get.body, r#"{"code":3,"message":"Bad request"}"#);
    assert_eq!(
        server.post(&sid, "4x").await.status,
        StatusCode::BAD_REQUEST
    );
    send_text(&mut ws, "4still here").await;
    assert_eq!(next_text(&mut ws).await, "4still here");
    assert!(!server.has_ended(&sid));
}

#[tokio::test]
async fn a_poll_that_comes_in_during_the_upgrade_waits_for_it_and_is_refused_once_it_is_done() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // Held as long as it takes `5` to arrive, however loaded the machine.
    let server = start(engineio::EngineConfig {
        upgrade_poll_wait: Duration::from_secs(60),
        ..config()
    })
    .await;
    let sid = server.polling_handshake().await.sid;
    let mut ws = server.ws_connect(server.ws_request(Some(&sid))).await;
    send_text(&mut ws, "2probe").await;
    assert_eq!(next_text(&mut ws).await, "3probe");

    // The official suite's client sends `5` and a GET at once; the server may read the GET
    // first. Here it does: the GET waits for the upgrade to end instead of being answered as a
    // poll. (A bounded look for an early answer; a slow machine can only hide a failure.)
    let mut get = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let request = format!(
        "GET /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.addr
    );
    get.write_all(request.as_bytes()).await.expect("send GET");
    let mut early = [0u8; 1];
    let answered = tokio::time::timeout(Duration::from_millis(300), get.peek(&mut early)).await;
    assert!(
        answered.is_err(),
        "the GET was answered while the upgrade was under way"
    );
    send_text(&mut ws, "5").await;
    let mut answer = String::new();
    within("the GET's answer", get.read_to_string(&mut answer))
        .await
        .expect("read the answer");
    assert!(
        answer.starts_with("HTTP/1.1 400"),
        "a poll after the upgrade got: {answer}"
    );
    send_text(&mut ws, "4over websocket").await;
    assert_eq!(next_text(&mut ws).await, "4over websocket");
}

#[tokio::test]
async fn second_websocket_on_an_upgraded_session_is_closed_at_once() {
    let server = start(config()).await;
    let sid = server.polling_handshake().await.sid;
    let mut ws = server.ws_connect(server.ws_request(Some(&sid))).await;
    send_text(&mut ws, "2probe").await;
    assert_eq!(next_text(&mut ws).await, "3probe");
    send_text(&mut ws, "5").await;
    // The echo proves the upgrade has completed before the second websocket arrives.
    send_text(&mut ws, "4first").await;
    assert_eq!(next_text(&mut ws).await, "4first");

    let mut second = server.ws_connect(server.ws_request(Some(&sid))).await;
    expect_ws_closed(&mut second).await;

    send_text(&mut ws, "4unharmed").await;
    assert_eq!(next_text(&mut ws).await, "4unharmed");
}

#[tokio::test]
async fn second_websocket_while_one_is_probing_is_closed_at_once() {
    let server = start(config()).await;
    let sid = server.polling_handshake().await.sid;
    let mut first = server.ws_connect(server.ws_request(Some(&sid))).await;
    send_text(&mut first, "2probe").await;
    assert_eq!(next_text(&mut first).await, "3probe");

    let mut second = server.ws_connect(server.ws_request(Some(&sid))).await;
    expect_ws_closed(&mut second).await;

    send_text(&mut first, "5").await;
    send_text(&mut first, "4first wins").await;
    assert_eq!(next_text(&mut first).await, "4first wins");
}

#[tokio::test]
async fn messages_queued_during_the_upgrade_arrive_on_the_websocket() {
    let server = start(config()).await;
    let sid = server.polling_handshake().await.sid;
    let mut ws = server.ws_connect(server.ws_request(Some(&sid))).await;
    send_text(&mut ws, "2probe").await;
    assert_eq!(next_text(&mut ws).await, "3probe");

    // Still on polling until `5`: this POST is accepted and its echo waits in the queue.
    assert_eq!(server.post(&sid, "4during").await.status, StatusCode::OK);
    send_text(&mut ws, "5").await;
    assert_eq!(next_text(&mut ws).await, "4during");
}

#[tokio::test]
async fn websocket_with_unknown_sid_is_refused_with_400() {
    let server = start(config()).await;
    let request = server.ws_request(Some("no-such-session"));
    let refused = within(
        "websocket handshake",
        tokio_tungstenite::connect_async(request),
    )
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::BAD_REQUEST);
            let body = response.body().as_deref().unwrap_or_default();
            assert_eq!(String::from_utf8_lossy(body), UNKNOWN_SID_BODY);
        }
        other => panic!("expected an HTTP 400, got {other:?}"),
    }
}

#[tokio::test]
async fn websocket_that_disconnects_ends_its_session_with_transport_close() {
    let server = start(config()).await;
    let (ws, open) = server.websocket_session().await;
    drop(ws);
    assert_eq!(
        server.disconnect_reason(&open.sid).await,
        DisconnectReason::TransportClose
    );
    assert!(server.engine.session(&open.sid).is_none());
}

#[tokio::test]
async fn upgraded_session_that_loses_its_websocket_ends() {
    let server = start(config()).await;
    let sid = server.polling_handshake().await.sid;
    let mut ws = server.ws_connect(server.ws_request(Some(&sid))).await;
    send_text(&mut ws, "2probe").await;
    assert_eq!(next_text(&mut ws).await, "3probe");
    send_text(&mut ws, "5").await;
    send_text(&mut ws, "4upgraded").await;
    assert_eq!(next_text(&mut ws).await, "4upgraded");

    drop(ws);
    // No fallback to polling once upgraded: the session is over and its sid unknown.
    assert_eq!(
        server.disconnect_reason(&sid).await,
        DisconnectReason::TransportClose
    );
    let get = server.poll(&sid).await;
    assert_eq!(
        (get.status, get.body.as_str()),
        (StatusCode::BAD_REQUEST, UNKNOWN_SID_BODY)
    );
}

/// The state of the server's side of a loopback TCP connection, from the kernel's table
/// (`/proc/net/tcp`): "01" while a process holds it open, another state (or none) once the
/// server closed its descriptor.
fn server_side_tcp_state(server_port: u16, client_port: u16) -> Option<String> {
    let table = std::fs::read_to_string("/proc/net/tcp").expect("/proc/net/tcp is readable");
    let local = format!("0100007F:{server_port:04X}");
    let remote = format!("0100007F:{client_port:04X}");
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(1) == Some(&local.as_str()) && fields.get(2) == Some(&remote.as_str()))
            .then(|| fields.get(3).map(|state| state.to_string()))
            .flatten()
    })
}

/// A client that opens a websocket and then never reads: the server's writes wait on a full
/// TCP window. Its session ends within ping timeout + write deadline, and the server lets go
/// of the connection (its writer does not wait forever holding the descriptor).
#[tokio::test]
async fn a_client_that_never_reads_loses_its_session_and_its_descriptor() {
    const ESTABLISHED: &str = "01";
    let config = engineio::EngineConfig {
        ping_interval: Duration::from_millis(200),
        ping_timeout: Duration::from_millis(300),
        ws_write_timeout: Duration::from_millis(500),
        ..config()
    };
    let server = start(config).await;
    let socket = tokio::net::TcpSocket::new_v4().expect("a TCP socket");
    // A small window, so the server's writes block soon.
    socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = within("connect", socket.connect(server.addr))
        .await
        .expect("connect");
    let client_port = stream.local_addr().expect("local address").port();
    let (mut ws, _) = within(
        "websocket handshake",
        tokio_tungstenite::client_async(server.ws_request(None), stream),
    )
    .await
    .expect("websocket handshake accepted");
    let open = match within("the open packet", ws.next()).await {
        Some(Ok(WsMessage::Text(text))) => common::Handshake::parse(&text),
        other => panic!("expected the open packet, got {other:?}"),
    };
    let session = server.engine.session(&open.sid).expect("the session");
    let chunk = Bytes::from(vec![0u8; 64 * 1024]);
    for _ in 0..400 {
        if session.send(Frame::binary(chunk.clone())).is_err() {
            break;
        }
    }
    // From here on the client reads nothing.
    server.disconnect_reason(&open.sid).await;
    let until = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let state = server_side_tcp_state(server.addr.port(), client_port);
        if state.as_deref() != Some(ESTABLISHED) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < until,
            "the server still holds the connection of a session that ended"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(ws);
}
