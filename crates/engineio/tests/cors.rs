//! The origin policy on both transports: browsers apply CORS to polling but not to websocket
//! handshakes, so the engine checks `Origin` itself on both.

mod common;

use bytes::Bytes;
use common::{config, next_text, send_text, start, within, TestServer};
use engineio::{CorsPolicy, EngineConfig};
use http::header::{ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_ORIGIN, ORIGIN};
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::Full;

const FOREIGN: &str = "http://evil.example";
const FORBIDDEN_BODY: &str = r#"{"code":4,"message":"Forbidden"}"#;

async fn polling_handshake_from(server: &TestServer, origin: &str) -> common::Reply {
    let request = Request::get(server.url("EIO=4&transport=polling"))
        .header(ORIGIN, origin)
        .body(Full::<Bytes>::default())
        .expect("request");
    server.request(request).await
}

fn ws_request_from(server: &TestServer, origin: &str) -> Request<()> {
    let mut request = server.ws_request(None);
    request
        .headers_mut()
        .insert(ORIGIN, HeaderValue::from_str(origin).expect("origin"));
    request
}

/// Connects a websocket from `origin` and returns the HTTP status of a refused handshake, or
/// `None` if the websocket opened (and then proves it carries messages).
async fn websocket_from(server: &TestServer, origin: &str) -> Option<StatusCode> {
    let request = ws_request_from(server, origin);
    match within(
        "websocket handshake",
        tokio_tungstenite::connect_async(request),
    )
    .await
    {
        Ok((mut ws, _)) => {
            assert!(
                next_text(&mut ws).await.starts_with('0'),
                "open packet first"
            );
            send_text(&mut ws, "4hi").await;
            assert_eq!(next_text(&mut ws).await, "4hi");
            None
        }
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Some(response.status()),
        Err(other) => panic!("websocket handshake failed without an HTTP answer: {other}"),
    }
}

#[tokio::test]
async fn same_origin_is_allowed_on_polling_and_websocket_by_default() {
    let server = start(config()).await;
    let origin = server.own_origin();

    let reply = polling_handshake_from(&server, &origin).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[ACCESS_CONTROL_ALLOW_ORIGIN], origin.as_str());
    assert_eq!(reply.headers[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
    assert_eq!(websocket_from(&server, &origin).await, None);
}

#[tokio::test]
async fn foreign_origin_is_refused_with_403_on_polling_and_websocket_by_default() {
    let server = start(config()).await;

    let reply = polling_handshake_from(&server, FOREIGN).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (StatusCode::FORBIDDEN, FORBIDDEN_BODY)
    );
    assert!(reply.headers.get(ACCESS_CONTROL_ALLOW_ORIGIN).is_none());
    assert_eq!(
        websocket_from(&server, FOREIGN).await,
        Some(StatusCode::FORBIDDEN)
    );
    assert_eq!(
        server.engine.session_count(),
        0,
        "no refused request opened a session"
    );
}

#[tokio::test]
async fn foreign_origin_cannot_use_an_existing_session() {
    let server = start(config()).await;
    let sid = server.polling_handshake().await.sid;

    let request = Request::builder()
        .method(Method::POST)
        .uri(server.polling_url(&sid))
        .header(ORIGIN, FOREIGN)
        .body(Full::new(Bytes::from_static(b"4stolen")))
        .expect("request");
    assert_eq!(server.request(request).await.status, StatusCode::FORBIDDEN);
    let mut upgrade = server.ws_request(Some(&sid));
    upgrade
        .headers_mut()
        .insert(ORIGIN, HeaderValue::from_static(FOREIGN));
    match within(
        "websocket handshake",
        tokio_tungstenite::connect_async(upgrade),
    )
    .await
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), StatusCode::FORBIDDEN)
        }
        other => panic!("expected an HTTP 403, got {other:?}"),
    }
    // The session's own client is unaffected and received nothing from the foreign page.
    assert_eq!(server.post(&sid, "4mine").await.status, StatusCode::OK);
    assert_eq!(server.poll(&sid).await.body, "4mine");
}

#[tokio::test]
async fn listed_origin_is_allowed_on_polling_and_websocket() {
    let listed = "http://chat.example";
    let cors = CorsPolicy::List(vec![listed.to_owned()]);
    let server = start(EngineConfig { cors, ..config() }).await;

    let reply = polling_handshake_from(&server, listed).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers[ACCESS_CONTROL_ALLOW_ORIGIN], listed);
    assert_eq!(websocket_from(&server, listed).await, None);

    // The list adds origins; it neither removes the same origin nor lets others in.
    assert_eq!(
        polling_handshake_from(&server, &server.own_origin())
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        polling_handshake_from(&server, FOREIGN).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        websocket_from(&server, FOREIGN).await,
        Some(StatusCode::FORBIDDEN)
    );
}

#[tokio::test]
async fn preflight_from_an_allowed_origin_gets_204_with_allowed_methods() {
    let listed = "http://chat.example";
    let cors = CorsPolicy::List(vec![listed.to_owned()]);
    let server = start(EngineConfig { cors, ..config() }).await;

    let preflight = |origin: &str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri(server.url("EIO=4&transport=polling"))
            .header(ORIGIN, origin)
            .header("access-control-request-method", "POST")
            .body(Full::<Bytes>::default())
            .expect("request")
    };
    let allowed = server.request(preflight(listed)).await;
    assert_eq!(allowed.status, StatusCode::NO_CONTENT);
    assert_eq!(allowed.headers[ACCESS_CONTROL_ALLOW_ORIGIN], listed);
    assert!(allowed.headers["access-control-allow-methods"]
        .to_str()
        .unwrap_or("")
        .contains("POST"));
    assert_eq!(
        server.request(preflight(FOREIGN)).await.status,
        StatusCode::FORBIDDEN
    );
}
