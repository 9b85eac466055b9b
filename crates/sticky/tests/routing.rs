//! The proxy in front of two real Socket.IO backends on loopback: sessions stick to the node
//! that opened them, websockets are tunnelled, health checks steer handshakes, garbage gets 400.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use socketio::{SocketIo, SocketIoConfig};
use sticky::route_tag::{self, Owner};
use sticky::{BackendSpec, Policy, Proxy, ProxyConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

/// Every wait of these tests ends in failure after this, instead of hanging.
const BOUND: Duration = Duration::from_secs(10);

/// A Socket.IO server whose sids carry `node`, plus `/healthz` and `/forwarded` (which echoes
/// the forwarding headers it received).
struct Backend {
    address: SocketAddr,
    node: u16,
    accept: JoinHandle<()>,
}

impl Backend {
    async fn start(node: u16, listener: TcpListener) -> Backend {
        let mut config = SocketIoConfig::default();
        config.engine.sid_tag = route_tag::encode(Owner { node, slot: 0 });
        let io = SocketIo::new(config);
        io.ns("/", |_socket| async {});
        let address = listener
            .local_addr()
            .expect("bound listener has an address");
        let accept = tokio::spawn(async move {
            // Owned by the accept task, so stopping the backend closes its connections too, as
            // a host that goes away does (the proxy keeps idle connections to it).
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                while connections.try_join_next().is_some() {}
                let io = io.clone();
                let service =
                    hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                        let io = io.clone();
                        async move {
                            let response = match request.uri().path() {
                                "/healthz" => Response::new(Full::new(Bytes::from_static(b"ok"))),
                                "/forwarded" => {
                                    let header = |name: &str| {
                                        request
                                            .headers()
                                            .get(name)
                                            .and_then(|v| v.to_str().ok())
                                            .unwrap_or("")
                                            .to_owned()
                                    };
                                    let text = format!(
                                        "{}|{}",
                                        header("x-forwarded-for"),
                                        header("x-forwarded-proto")
                                    );
                                    Response::new(Full::new(Bytes::from(text)))
                                }
                                _ => io.handle(request).await,
                            };
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                connections.spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .with_upgrades(),
                );
            }
        });
        Backend {
            address,
            node,
            accept,
        }
    }

    /// A backend on a port of the test kit: a test may stop it and bind the same port again
    /// (no outgoing connection or other test takes it meanwhile).
    async fn bind(node: u16) -> Backend {
        let listener = TcpListener::bind(("127.0.0.1", testkit::port()))
            .await
            .expect("bind a backend");
        Backend::start(node, listener).await
    }

    /// Stops accepting and closes every connection: the listener is closed once the accept task
    /// has ended.
    async fn stop(self) -> SocketAddr {
        self.accept.abort();
        let _ = self.accept.await;
        self.address
    }

    fn spec(&self) -> BackendSpec {
        BackendSpec {
            address: self.address.to_string(),
            node: self.node,
        }
    }
}

async fn start_proxy(
    config: ProxyConfig,
) -> (
    SocketAddr,
    tokio::sync::watch::Receiver<sticky::HealthSnapshot>,
) {
    let proxy = Proxy::bind(config).await.expect("bind the proxy");
    let address = proxy.local_addr().expect("proxy address");
    let health = proxy.health();
    tokio::spawn(proxy.serve());
    (address, health)
}

fn config(backends: &[&Backend], policy: Policy) -> ProxyConfig {
    let mut config = ProxyConfig::new(
        "127.0.0.1:0".parse().expect("loopback address"),
        backends.iter().map(|b| b.spec()).collect(),
    );
    config.policy = policy;
    config.health_interval = Duration::from_millis(100);
    config.health_timeout = Duration::from_millis(200);
    config.header_read_timeout = Duration::from_millis(300);
    config
}

/// One keep-alive client connection to the proxy.
async fn client(proxy: SocketAddr) -> SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(proxy)
        .await
        .expect("connect to the proxy");
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("HTTP/1 handshake");
    tokio::spawn(connection);
    sender
}

async fn call(
    client: &mut SendRequest<Full<Bytes>>,
    method: &str,
    target: &str,
    body: &str,
) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(target)
        .header("host", "chat.test")
        .header("x-forwarded-for", "203.0.113.9")
        .body(Full::new(Bytes::from(body.to_owned())))
        .expect("valid request");
    let exchange = async {
        client.ready().await.expect("client connection still open");
        let response = client.send_request(request).await.expect("proxy answers");
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .expect("whole body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    };
    tokio::time::timeout(BOUND, exchange)
        .await
        .expect("answer within the bound")
}

/// Opens a polling session; returns its sid.
async fn handshake(client: &mut SendRequest<Full<Bytes>>) -> String {
    let (status, body) = call(client, "GET", "/socket.io/?EIO=4&transport=polling", "").await;
    assert_eq!(status, StatusCode::OK, "handshake failed: {body}");
    let open = body.strip_prefix('0').expect("an Engine.IO open packet");
    let open: serde_json::Value = serde_json::from_str(open).expect("open packet is JSON");
    open["sid"].as_str().expect("a sid").to_owned()
}

fn node_of(sid: &str) -> u16 {
    route_tag::decode(sid).expect("a tagged sid").node
}

async fn wait_for_health(
    health: &mut tokio::sync::watch::Receiver<sticky::HealthSnapshot>,
    node: u16,
    healthy: bool,
) {
    tokio::time::timeout(
        BOUND,
        health.wait_for(|snapshot| snapshot.contains(&(node, healthy))),
    )
    .await
    .expect("health changes within the bound")
    .expect("proxy still running");
}

#[tokio::test]
async fn polling_sessions_of_two_backends_stick_over_one_keep_alive_connection() {
    let (one, two) = (Backend::bind(1).await, Backend::bind(2).await);
    let (proxy, _) = start_proxy(config(&[&one, &two], Policy::RoundRobin)).await;
    let mut client = client(proxy).await;

    let mut sids = Vec::new();
    for _ in 0..2 {
        sids.push(handshake(&mut client).await);
    }
    let mut nodes: Vec<u16> = sids.iter().map(|sid| node_of(sid)).collect();
    nodes.sort_unstable();
    assert_eq!(nodes, [1, 2], "round-robin spreads the handshakes");

    // Requests of both sessions interleave on the same client connection; each reaches the
    // backend that knows its sid (any other answers 400 "Session ID unknown").
    for sid in &sids {
        let (status, body) = call(
            &mut client,
            "POST",
            &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
            "40",
        )
        .await;
        assert_eq!((status, body.as_str()), (StatusCode::OK, "ok"));
    }
    for sid in &sids {
        let (status, body) = call(
            &mut client,
            "GET",
            &format!("/socket.io/?EIO=4&transport=polling&sid={sid}"),
            "",
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.starts_with("40{\"sid\":"),
            "namespace connect answered: {body}"
        );
    }

    // A sid naming no node of ours is answered by some backend, not by a crash.
    let stranger = format!(
        "{}AAAAAAAAAAAAAAAAAAAAAA",
        route_tag::encode(Owner { node: 77, slot: 0 })
    );
    let (status, _) = call(
        &mut client,
        "GET",
        &format!("/socket.io/?EIO=4&transport=polling&sid={stranger}"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, forwarded) = call(&mut client, "GET", "/forwarded", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(forwarded, "203.0.113.9, 127.0.0.1|http");
}

#[tokio::test]
async fn a_websocket_with_a_sid_is_tunnelled_to_its_owner() {
    let (one, two) = (Backend::bind(1).await, Backend::bind(2).await);
    let (proxy, _) = start_proxy(config(&[&one, &two], Policy::RoundRobin)).await;
    let mut client = client(proxy).await;
    let mut sids = vec![handshake(&mut client).await, handshake(&mut client).await];
    sids.sort_by_key(|sid| node_of(sid));

    for sid in &sids {
        let url = format!("ws://{proxy}/socket.io/?EIO=4&transport=websocket&sid={sid}");
        let stream = TcpStream::connect(proxy)
            .await
            .expect("connect to the proxy");
        let exchange = async {
            let (mut ws, response) = tokio_tungstenite::client_async(url, stream)
                .await
                .expect("websocket handshake through the proxy");
            assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
            ws.send(Message::text("2probe")).await.expect("send probe");
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(text))) => break text.to_string(),
                    Some(Ok(_)) => continue,
                    other => panic!("tunnel closed before the probe answer: {other:?}"),
                }
            }
        };
        let answer = tokio::time::timeout(BOUND, exchange)
            .await
            .expect("probe answered within the bound");
        assert_eq!(answer, "3probe", "the owner of {sid} answered the probe");
    }
}

#[tokio::test]
async fn a_backend_that_stops_gets_no_handshakes_until_it_is_back() {
    let (one, two) = (Backend::bind(1).await, Backend::bind(2).await);
    let (proxy, mut health) = start_proxy(config(&[&one, &two], Policy::LeastConn)).await;
    let mut client = client(proxy).await;
    let owned_by_one = loop {
        let sid = handshake(&mut client).await;
        if node_of(&sid) == 1 {
            break sid;
        }
    };

    let address = one.stop().await;
    wait_for_health(&mut health, 1, false).await;
    for _ in 0..6 {
        assert_eq!(node_of(&handshake(&mut client).await), 2);
    }
    // The owner of this sid is gone, and the session with it.
    let (status, body) = call(
        &mut client,
        "GET",
        &format!("/socket.io/?EIO=4&transport=polling&sid={owned_by_one}"),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body.contains("Session ID unknown"), "{body}");

    let listener = TcpListener::bind(address)
        .await
        .expect("rebind the same port");
    let _one = Backend::start(1, listener).await;
    wait_for_health(&mut health, 1, true).await;
    // Least-conn with nothing open prefers the first backend again.
    assert_eq!(node_of(&handshake(&mut client).await), 1);
}

#[tokio::test]
async fn a_handshake_refused_by_a_stopped_backend_goes_to_another_at_once() {
    let (one, two) = (Backend::bind(1).await, Backend::bind(2).await);
    let mut config = config(&[&one, &two], Policy::RoundRobin);
    // The checks never run again: only the refused connection tells the proxy.
    config.health_interval = Duration::from_secs(3600);
    let (proxy, _) = start_proxy(config).await;
    let mut client = client(proxy).await;
    let _ = one.stop().await;
    for _ in 0..4 {
        assert_eq!(node_of(&handshake(&mut client).await), 2);
    }
    let _ = two.stop().await;
    let (status, body) = call(
        &mut client,
        "GET",
        "/socket.io/?EIO=4&transport=polling",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(body.contains("refused"), "{body}");
}

#[tokio::test]
async fn garbage_gets_400_and_a_stalled_request_head_is_dropped() {
    let one = Backend::bind(1).await;
    let (proxy, _) = start_proxy(config(&[&one], Policy::LeastConn)).await;

    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    stream
        .write_all(b"\x16\x03\x01 not http at all\r\n\r\n")
        .await
        .expect("send garbage");
    let answer = closed_by_proxy(&mut stream).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("send half a head");
    let answer = closed_by_proxy(&mut stream).await;
    assert!(!answer.starts_with(b"HTTP/1.1 200"));
}

#[tokio::test]
async fn no_healthy_backend_is_a_clear_502() {
    let one = Backend::bind(1).await;
    let (proxy, mut health) = start_proxy(config(&[&one], Policy::LeastConn)).await;
    one.stop().await;
    wait_for_health(&mut health, 1, false).await;
    let mut client = client(proxy).await;
    let (status, body) = call(
        &mut client,
        "GET",
        "/socket.io/?EIO=4&transport=polling",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(body, "no healthy backend\n");
}

/// Reads until the proxy closes the connection; fails if it stays open past the bound.
async fn closed_by_proxy(stream: &mut TcpStream) -> Vec<u8> {
    let mut answer = Vec::new();
    tokio::time::timeout(BOUND, stream.read_to_end(&mut answer))
        .await
        .expect("the proxy closes within the bound")
        .expect("read until close");
    answer
}

#[tokio::test]
async fn idle_keep_alive_connections_and_tunnels_are_closed() {
    let one = Backend::bind(1).await;
    let mut config = config(&[&one], Policy::LeastConn);
    config.idle_timeout = Duration::from_millis(200);
    config.tunnel_idle_timeout = Duration::from_millis(200);
    let (proxy, _) = start_proxy(config).await;

    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send a request");
    let answer = closed_by_proxy(&mut stream).await;
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "answered before closing"
    );

    // The default ping interval (25 s) sends nothing within the tunnel's idle timeout.
    let mut client = client(proxy).await;
    let sid = handshake(&mut client).await;
    let url = format!("ws://{proxy}/socket.io/?EIO=4&transport=websocket&sid={sid}");
    let stream = TcpStream::connect(proxy).await.expect("connect");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("websocket handshake through the proxy");
    let end = tokio::time::timeout(BOUND, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => continue,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "an idle tunnel is closed");
}

#[tokio::test]
async fn clients_beyond_max_connections_wait_for_a_free_place() {
    let one = Backend::bind(1).await;
    let mut config = config(&[&one], Policy::LeastConn);
    config.max_connections = 1;
    let (proxy, _) = start_proxy(config).await;

    let mut first = client(proxy).await;
    assert_eq!(
        call(&mut first, "GET", "/healthz", "").await.0,
        StatusCode::OK
    );
    // The second connection is accepted by the kernel but not served while the first is open.
    let mut waiting = TcpStream::connect(proxy).await.expect("connect");
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("send a request");
    let mut byte = [0u8; 1];
    let served_early =
        tokio::time::timeout(Duration::from_millis(200), waiting.read(&mut byte)).await;
    assert!(
        served_early.is_err(),
        "no answer while the only place is taken"
    );
    drop(first);
    let answer = closed_by_proxy(&mut waiting).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"));
}

/// A host that accepts connections but never answers (it vanished without closing them): the
/// request gets a 504 after the response timeout instead of hanging.
#[tokio::test]
async fn a_host_that_never_answers_gets_a_504_after_the_response_timeout() {
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = silent.local_addr().expect("address");
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let mut config = ProxyConfig::new(
        "127.0.0.1:0".parse().expect("loopback address"),
        vec![BackendSpec {
            address: address.to_string(),
            node: 1,
        }],
    );
    config.response_timeout = Duration::from_millis(300);
    let (proxy, _health) = start_proxy(config).await;
    let mut client = client(proxy).await;
    let sid = format!(
        "{}{}",
        route_tag::encode(Owner { node: 1, slot: 0 }),
        "x".repeat(22)
    );
    let target = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let (status, body) = call(&mut client, "POST", &target, "3").await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert!(body.contains("did not answer"), "{body}");
    held.abort();
}

/// A request of a session whose host is gone gets Engine.IO's "Session ID unknown", on which
/// clients reconnect at once (through the proxy, to a live host).
#[tokio::test]
async fn a_session_of_a_stopped_host_is_unknown() {
    let one = Backend::bind(1).await;
    let two = Backend::bind(2).await;
    let (proxy, _health) = start_proxy(config(&[&one, &two], Policy::LeastConn)).await;
    one.stop().await;
    let mut client = client(proxy).await;
    let sid = format!(
        "{}{}",
        route_tag::encode(Owner { node: 1, slot: 0 }),
        "x".repeat(22)
    );
    let target = format!("/socket.io/?EIO=4&transport=polling&sid={sid}");
    let (status, body) = call(&mut client, "GET", &target, "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body, r#"{"code":1,"message":"Session ID unknown"}"#);
}

/// A slow POST through the proxy: the head at once, then a few bytes of the body. The head
/// was complete and a request is in flight, so neither the header read timeout nor the idle
/// timeout ends it; the whole-body deadline does: 408, the connection closed, and other
/// clients served meanwhile. The host behind it never answers, as a worker waiting for that
/// body would not.
#[tokio::test]
async fn a_request_body_that_trickles_gets_408_and_the_connection_closes() {
    let silent = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = silent.local_addr().expect("address");
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let one = Backend::bind(1).await;
    let mut config = config(&[&one], Policy::LeastConn);
    config.backends.push(BackendSpec {
        address: address.to_string(),
        node: 2,
    });
    config.body_read_timeout = Duration::from_millis(300);
    let (proxy, _) = start_proxy(config).await;

    let mut slow = TcpStream::connect(proxy).await.expect("connect");
    let sid = format!(
        "{}{}",
        route_tag::encode(Owner { node: 2, slot: 0 }),
        "x".repeat(22)
    );
    let head = format!(
        "POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: x\r\n\
         Content-Length: 1000\r\n\r\n4"
    );
    slow.write_all(head.as_bytes())
        .await
        .expect("send the head");
    let trickle = async {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if slow.write_all(b"x").await.is_err() {
                return;
            }
        }
    };
    let mut bystander = client(proxy).await;
    let (answered, ()) = tokio::join!(
        async { call(&mut bystander, "GET", "/healthz", "").await.0 },
        async {
            // The bystander's answer does not wait for the slow client's deadline.
            let _ = tokio::time::timeout(Duration::from_millis(200), trickle).await;
        }
    );
    assert_eq!(answered, StatusCode::OK);
    let answer = closed_by_proxy(&mut slow).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    held.abort();
}
