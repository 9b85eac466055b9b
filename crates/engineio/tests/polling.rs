//! HTTP long-polling against a real server: the handshake, messages both ways, closing, and the
//! heartbeat.

mod common;

use std::time::Duration;

use common::{config, fast_heartbeat, start, within, UNKNOWN_SID_BODY};
use engineio::DisconnectReason;
use http::StatusCode;

#[tokio::test]
async fn polling_handshake_announces_sid_upgrades_timers_and_payload_limit() {
    let server = start(config()).await;
    let reply = server.get_url(&server.url("EIO=4&transport=polling")).await;

    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(
        reply.headers[http::header::CONTENT_TYPE],
        "text/plain; charset=UTF-8"
    );
    let open = common::Handshake::parse(&reply.body);
    assert_eq!(open.sid.len(), 22, "128 random bits in base64url");
    assert_eq!(open.json["upgrades"], serde_json::json!(["websocket"]));
    assert_eq!(open.json["pingInterval"], 60_000);
    assert_eq!(open.json["pingTimeout"], 60_000);
    assert_eq!(open.json["maxPayload"], common::MAX_PAYLOAD);
    assert_eq!(
        open.json.as_object().map(|o| o.len()),
        Some(5),
        "no other fields: {}",
        reply.body
    );
    assert!(server.engine.session(&open.sid).is_some());
}

#[tokio::test]
async fn polling_handshake_carries_the_sid_tag() {
    let server = start(engineio::EngineConfig {
        sid_tag: "w7".to_owned(),
        ..config()
    })
    .await;
    let open = server.polling_handshake().await;
    assert!(open.sid.starts_with("w7"), "{}", open.sid);
}

#[tokio::test]
async fn polling_echoes_text_and_binary_in_one_payload() {
    let server = start(config()).await;
    let sid = server.polling_handshake().await.sid;

    let posted = server.post(&sid, "4hello\x1ebAQIDBA==\x1e4€ 😀").await;
    assert_eq!(
        (posted.status, posted.body.as_str()),
        (StatusCode::OK, "ok")
    );

    let polled = server.poll(&sid).await;
    assert_eq!(polled.status, StatusCode::OK);
    assert_eq!(polled.body, "4hello\x1ebAQIDBA==\x1e4€ 😀");
}

#[tokio::test]
async fn get_and_post_in_flight_together_deliver_the_echo() {
    let server = start(config()).await;
    let sid = server.polling_handshake().await.sid;

    let get = tokio::spawn({
        let server = server.clone();
        let sid = sid.clone();
        async move { server.poll(&sid).await }
    });
    // Whichever reaches the server first, the echo ends up in the GET's body: a GET that
    // waits is answered by the message, a later one finds it queued.
    assert_eq!(server.post(&sid, "4late").await.status, StatusCode::OK);
    let polled = within("the pending GET", get).await.expect("GET task");
    assert_eq!(
        (polled.status, polled.body.as_str()),
        (StatusCode::OK, "4late")
    );
}

#[tokio::test]
async fn client_close_packet_ends_the_session() {
    let server = start(config()).await;
    let sid = server.polling_handshake().await.sid;

    assert_eq!(server.post(&sid, "1").await.status, StatusCode::OK);
    assert_eq!(
        server.disconnect_reason(&sid).await,
        DisconnectReason::ClientClose
    );

    let after = server.poll(&sid).await;
    assert_eq!(
        (after.status, after.body.as_str()),
        (StatusCode::BAD_REQUEST, UNKNOWN_SID_BODY)
    );
}

#[tokio::test]
async fn a_poll_sent_along_with_the_close_ends_with_a_noop_even_when_the_close_is_read_first() {
    // The close waits for the GET as long as it takes to arrive, however loaded the machine.
    let server = start(engineio::EngineConfig {
        close_poll_wait: Duration::from_secs(60),
        ..config()
    })
    .await;
    let sid = server.polling_handshake().await.sid;

    let mut close = tokio::spawn({
        let server = server.clone();
        let sid = sid.clone();
        async move { server.post(&sid, "1").await }
    });
    // The close is read first here: it waits for the GET instead of ending the session at once.
    // (A bounded look for an early answer; a slow machine can only hide a failure.)
    let early = tokio::time::timeout(Duration::from_millis(300), &mut close).await;
    assert!(early.is_err(), "the close was answered before its GET came");
    let poll = server.poll(&sid).await;
    assert_eq!((poll.status, poll.body.as_str()), (StatusCode::OK, "6"));
    let closed = within("the close's answer", close)
        .await
        .expect("POST task");
    assert_eq!(closed.status, StatusCode::OK);
    assert_eq!(
        server.disconnect_reason(&sid).await,
        DisconnectReason::ClientClose
    );
    let after = server.poll(&sid).await;
    assert_eq!(after.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn polling_client_that_answers_pings_outlives_several_ping_timeouts() {
    // A pong may be late under a loaded test machine: give it slack, the point is that
    // answered pings keep the session past any number of timeouts.
    let config = engineio::EngineConfig {
        ping_timeout: Duration::from_millis(400),
        ..fast_heartbeat()
    };
    let survive = 3 * (config.ping_interval + config.ping_timeout);
    let server = start(config).await;
    let sid = server.polling_handshake().await.sid;

    let started = tokio::time::Instant::now();
    let mut pings = 0;
    while started.elapsed() < survive {
        let polled = server.poll(&sid).await;
        assert_eq!((polled.status, polled.body.as_str()), (StatusCode::OK, "2"));
        pings += 1;
        assert_eq!(server.post(&sid, "3").await.status, StatusCode::OK);
    }
    assert!(pings >= 3);
    assert!(!server.has_ended(&sid));
    // Still a working session, not just an unreaped one.
    assert_eq!(server.post(&sid, "4alive").await.status, StatusCode::OK);
    let polled = server.poll(&sid).await;
    assert!(polled.body.contains("4alive"), "{}", polled.body);
}

#[tokio::test]
async fn polling_session_ends_when_the_client_stops_answering_pings() {
    let server = start(fast_heartbeat()).await;
    let sid = server.polling_handshake().await.sid;

    let polled = server.poll(&sid).await;
    assert_eq!(polled.body, "2");
    // No pong.
    assert_eq!(
        server.disconnect_reason(&sid).await,
        DisconnectReason::PingTimeout
    );
    assert!(server.engine.session(&sid).is_none());
    let after = server.poll(&sid).await;
    assert_eq!(
        (after.status, after.body.as_str()),
        (StatusCode::BAD_REQUEST, UNKNOWN_SID_BODY)
    );
}

#[tokio::test]
async fn polling_response_is_split_at_max_payload() {
    let server = start(config()).await;
    let sid = server.polling_handshake().await.sid;

    // Three messages of 4 000 bytes fit two to a response of at most 10 000 bytes.
    let message = format!("4{}", "x".repeat(3_999));
    for _ in 0..3 {
        assert_eq!(
            server.post(&sid, message.clone()).await.status,
            StatusCode::OK
        );
    }
    let first = server.poll(&sid).await;
    assert_eq!(first.body, format!("{message}\x1e{message}"));
    let second = server.poll(&sid).await;
    assert_eq!(second.body, message);
}

#[tokio::test]
async fn requests_outside_the_engine_path_get_404() {
    let server = start(config()).await;
    let reply = server
        .get_url(&format!(
            "http://{}/other?EIO=4&transport=polling",
            server.addr
        ))
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

/// The pending-session caps are for handlers with a step after the handshake (Socket.IO's
/// namespace join); a plain Engine.IO application admits every session with its handshake, so
/// many sessions from one address stay open.
#[tokio::test]
async fn sessions_of_a_handler_without_an_admission_step_are_not_capped_as_pending() {
    let server = start(engineio::EngineConfig {
        max_pending_sessions: 1,
        max_pending_sessions_per_address: 1,
        ..config()
    })
    .await;
    for _ in 0..3 {
        server.polling_handshake().await;
    }
    assert_eq!(server.engine.session_count(), 3);
}
