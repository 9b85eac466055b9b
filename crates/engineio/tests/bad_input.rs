//! Bad input gets a clear error and costs nothing else: it ends at most the session that sent
//! it, never another session or the server.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{
    config, expect_ws_closed, next_text, send_text, start, within, TestServer, MAX_PAYLOAD,
    UNKNOWN_SID_BODY,
};
use engineio::{DisconnectReason, EngineConfig, Transport};
use http::{Method, Request, StatusCode};
use http_body_util::Full;

/// Proves a session still works end to end: a message goes out and its echo comes back.
async fn assert_polling_echo(server: &TestServer, sid: &str) {
    assert_eq!(
        server.post(sid, "4still alive").await.status,
        StatusCode::OK
    );
    let polled = server.poll(sid).await;
    assert_eq!(
        (polled.status, polled.body.as_str()),
        (StatusCode::OK, "4still alive")
    );
}

#[tokio::test]
async fn malformed_polling_body_closes_only_that_session() {
    let server = start(config()).await;
    let bystander = server.polling_handshake().await.sid;
    let malformed: [&[u8]; 6] = [
        b"",             // no packet at all
        b"xyz",          // unknown packet type
        b"b!!!",         // binary that is not base64
        b"4a\x1e\x1e4b", // an empty record between two good ones
        b"4ok\x1e9",     // a good packet, then an unknown type
        b"4\xff\xfe",    // not UTF-8
    ];
    for body in malformed {
        let sid = server.polling_handshake().await.sid;
        let reply = server.post(&sid, Bytes::from_static(body)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "body {body:?}");
        assert_eq!(
            server.disconnect_reason(&sid).await,
            DisconnectReason::PacketParsing,
            "body {body:?}"
        );
        let after = server.poll(&sid).await;
        assert_eq!(
            (after.status, after.body.as_str()),
            (StatusCode::BAD_REQUEST, UNKNOWN_SID_BODY)
        );
    }
    assert!(!server.has_ended(&bystander));
    assert_polling_echo(&server, &bystander).await;
}

#[tokio::test]
async fn malformed_websocket_packet_closes_only_that_session() {
    let server = start(config()).await;
    let (mut bystander, _) = server.websocket_session().await;
    for text in ["", "x", "b!!!", "9"] {
        let (mut ws, open) = server.websocket_session().await;
        send_text(&mut ws, text).await;
        assert_eq!(
            server.disconnect_reason(&open.sid).await,
            DisconnectReason::PacketParsing,
            "frame {text:?}"
        );
        expect_ws_closed(&mut ws).await;
    }
    send_text(&mut bystander, "4still alive").await;
    assert_eq!(next_text(&mut bystander).await, "4still alive");
}

#[tokio::test]
async fn polling_body_of_exactly_max_payload_is_accepted() {
    let server = start(config()).await;
    let sid = server.polling_handshake().await.sid;
    let message = format!("4{}", "x".repeat(MAX_PAYLOAD - 1));
    assert_eq!(
        server.post(&sid, message.clone()).await.status,
        StatusCode::OK
    );
    assert_eq!(server.poll(&sid).await.body, message);
}

#[tokio::test]
async fn oversized_polling_body_gets_413_and_closes_the_session() {
    let server = start(config()).await;
    let bystander = server.polling_handshake().await.sid;
    let sid = server.polling_handshake().await.sid;

    let reply = server
        .post(&sid, format!("4{}", "x".repeat(MAX_PAYLOAD)))
        .await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        server.disconnect_reason(&sid).await,
        DisconnectReason::PayloadTooLarge
    );
    assert_eq!(server.poll(&sid).await.status, StatusCode::BAD_REQUEST);
    assert_polling_echo(&server, &bystander).await;
}

#[tokio::test]
async fn oversized_websocket_message_closes_the_session() {
    let server = start(config()).await;
    let (mut bystander, _) = server.websocket_session().await;
    let (mut ws, open) = server.websocket_session().await;

    // The client may see the connection end while it is still writing: only the outcome counts.
    let _ = within("oversized send", async {
        use futures_util::SinkExt;
        ws.send(format!("4{}", "x".repeat(MAX_PAYLOAD)).into())
            .await
    })
    .await;
    assert_eq!(
        server.disconnect_reason(&open.sid).await,
        DisconnectReason::PayloadTooLarge
    );
    expect_ws_closed(&mut ws).await;

    send_text(&mut bystander, "4still alive").await;
    assert_eq!(next_text(&mut bystander).await, "4still alive");
}

#[tokio::test]
async fn second_concurrent_get_closes_the_session() {
    let server = start(config()).await;
    let bystander = server.polling_handshake().await.sid;
    let sid = server.polling_handshake().await.sid;

    // Nothing is queued, so whichever GET reaches the server first waits; the other one is the
    // second concurrent GET. The scheduler decides which is which, so the test checks the pair.
    let (a, b) = within("both GETs", async {
        tokio::join!(server.poll(&sid), server.poll(&sid))
    })
    .await;
    let (pending, refused) = if a.status == StatusCode::OK {
        (a, b)
    } else {
        (b, a)
    };
    assert_eq!(
        (pending.status, pending.body.as_str()),
        (StatusCode::OK, "1"),
        "the waiting GET"
    );
    assert_eq!(
        (refused.status, refused.body.as_str()),
        (
            StatusCode::BAD_REQUEST,
            r#"{"code":3,"message":"Bad request"}"#
        ),
        "the second GET"
    );
    assert_eq!(
        server.disconnect_reason(&sid).await,
        DisconnectReason::MultipleRequests
    );
    assert_polling_echo(&server, &bystander).await;
}

#[tokio::test]
async fn unknown_sid_gets_400_with_the_body_clients_expect() {
    let server = start(config()).await;
    let get = server.poll("AAAAAAAAAAAAAAAAAAAAAA").await;
    assert_eq!(
        (get.status, get.body.as_str()),
        (StatusCode::BAD_REQUEST, UNKNOWN_SID_BODY)
    );
    assert_eq!(get.headers[http::header::CONTENT_TYPE], "application/json");
    let post = server.post("AAAAAAAAAAAAAAAAAAAAAA", "4hello").await;
    assert_eq!(
        (post.status, post.body.as_str()),
        (StatusCode::BAD_REQUEST, UNKNOWN_SID_BODY)
    );
}

#[tokio::test]
async fn bad_protocol_version_transport_or_method_gets_400() {
    let server = start(config()).await;
    let sid = server.polling_handshake().await.sid;
    let cases = [
        (
            Method::GET,
            "EIO=3&transport=polling".to_owned(),
            5,
            "Unsupported protocol version",
        ),
        (
            Method::GET,
            "transport=polling".to_owned(),
            5,
            "Unsupported protocol version",
        ),
        (
            Method::GET,
            "EIO=4&transport=carrier-pigeon".to_owned(),
            0,
            "Transport unknown",
        ),
        (Method::GET, "EIO=4".to_owned(), 0, "Transport unknown"),
        (
            Method::POST,
            "EIO=4&transport=polling".to_owned(),
            2,
            "Bad handshake method",
        ),
        (
            Method::PUT,
            "EIO=4&transport=polling".to_owned(),
            2,
            "Bad handshake method",
        ),
        (
            Method::PUT,
            format!("EIO=4&transport=polling&sid={sid}"),
            2,
            "Bad handshake method",
        ),
        (
            Method::DELETE,
            format!("EIO=4&transport=polling&sid={sid}"),
            2,
            "Bad handshake method",
        ),
        // A plain GET that asks for a websocket but is no websocket handshake.
        (
            Method::GET,
            "EIO=4&transport=websocket".to_owned(),
            3,
            "Bad request",
        ),
    ];
    for (method, query, code, message) in cases {
        let request = Request::builder()
            .method(method.clone())
            .uri(server.url(&query))
            .body(Full::default())
            .expect("request");
        let reply = server.request(request).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{method} {query}");
        let expected = serde_json::json!({ "code": code, "message": message }).to_string();
        assert_eq!(reply.body, expected, "{method} {query}");
    }
    assert_eq!(
        server.engine.session_count(),
        1,
        "no bad request opened a session"
    );
    assert_polling_echo(&server, &sid).await;
}

#[tokio::test]
async fn upgrade_without_upgrade_packet_is_dropped_and_session_stays_on_polling() {
    let server = start(EngineConfig {
        upgrade_timeout: Duration::from_millis(200),
        ..config()
    })
    .await;
    let sid = server.polling_handshake().await.sid;

    let pending_get = tokio::spawn({
        let server = server.clone();
        let sid = sid.clone();
        async move { server.poll(&sid).await }
    });
    let mut ws = server.ws_connect(server.ws_request(Some(&sid))).await;
    send_text(&mut ws, "2probe").await;
    assert_eq!(next_text(&mut ws).await, "3probe");
    assert_eq!(
        within("the pending GET", pending_get)
            .await
            .expect("GET task")
            .body,
        "6"
    );

    // No `5`: after upgrade_timeout the server gives up on this websocket.
    expect_ws_closed(&mut ws).await;
    let socket = server.engine.session(&sid).expect("the session survives");
    assert_eq!(socket.transport(), Transport::Polling);
    assert!(!server.has_ended(&sid));
    assert_polling_echo(&server, &sid).await;
}

#[tokio::test]
async fn handshakes_beyond_max_sessions_get_503() {
    let server = start(EngineConfig {
        max_sessions: 2,
        ..config()
    })
    .await;
    let polling = server.polling_handshake().await.sid;
    let (_ws, _) = server.websocket_session().await;

    let refused = server.get_url(&server.url("EIO=4&transport=polling")).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    let request = server.ws_request(None);
    match within(
        "websocket handshake",
        tokio_tungstenite::connect_async(request),
    )
    .await
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE)
        }
        other => panic!("expected an HTTP 503, got {other:?}"),
    }
    assert_eq!(server.engine.session_count(), 2);

    // The open sessions are unharmed, and a closed one frees its place.
    assert_polling_echo(&server, &polling).await;
    assert_eq!(server.post(&polling, "1").await.status, StatusCode::OK);
    server.disconnect_reason(&polling).await;
    server.polling_handshake().await;
}

#[tokio::test]
async fn client_that_lets_its_queue_fill_is_closed_as_slow() {
    let server = start(EngineConfig {
        max_buffered_packets: 4,
        ..config()
    })
    .await;
    let bystander = server.polling_handshake().await.sid;
    let sid = server.polling_handshake().await.sid;

    // Five echoes for a queue of four, and no GET to drain it.
    let reply = server.post(&sid, "4a\x1e4b\x1e4c\x1e4d\x1e4e").await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        server.disconnect_reason(&sid).await,
        DisconnectReason::SlowClient
    );
    assert_polling_echo(&server, &bystander).await;
}

#[tokio::test]
async fn polling_with_the_sid_of_a_websocket_session_gets_400_and_harms_nothing() {
    let server = start(config()).await;
    let (mut ws, open) = server.websocket_session().await;

    let get = server.poll(&open.sid).await;
    assert_eq!(get.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        server.post(&open.sid, "1").await.status,
        StatusCode::BAD_REQUEST
    );

    send_text(&mut ws, "4still alive").await;
    assert_eq!(next_text(&mut ws).await, "4still alive");
    assert!(!server.has_ended(&open.sid));
}

/// A slow POST: the head arrives at once, the body one byte now and then nothing. The header
/// read timeout does not cover it; the whole-body deadline answers 408, ends the session and
/// the connection, and nobody else notices.
#[tokio::test]
async fn a_polling_post_whose_body_trickles_gets_408_and_ends_its_session() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = start(EngineConfig {
        body_read_timeout: Duration::from_millis(300),
        ..config()
    })
    .await;
    let bystander = server.polling_handshake().await.sid;
    let sid = server.polling_handshake().await.sid;

    let mut stream = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\n\
         Content-Type: text/plain\r\nContent-Length: 1000\r\n\r\n4"
    );
    stream
        .write_all(head.as_bytes())
        .await
        .expect("send the head");
    let mut answer = Vec::new();
    within(
        "the server to answer and close the slow POST",
        stream.read_to_end(&mut answer),
    )
    .await
    .expect("read until the server closes");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(
        server.disconnect_reason(&sid).await,
        DisconnectReason::SlowClient
    );
    assert_polling_echo(&server, &bystander).await;
}
