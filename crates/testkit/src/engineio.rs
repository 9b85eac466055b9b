//! A raw Engine.IO v4 client over a websocket: the URL of a session, the open packet parsed,
//! and reading frames the way a client does (control frames skipped, server pings answered),
//! each read bounded by the caller's deadline. For tests that write the protocol by hand,
//! below any client library.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A websocket of a client that connected with `connect_async`.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The body the engine sends with a 400 for an unknown session, as clients expect it.
pub const UNKNOWN_SID_BODY: &str = r#"{"code":1,"message":"Session ID unknown"}"#;

/// `ws://ADDR/socket.io/?EIO=4&transport=websocket`, with `&sid=SID` to upgrade a session.
pub fn websocket_url(addr: SocketAddr, sid: Option<&str>) -> String {
    match sid {
        Some(sid) => format!("ws://{addr}/socket.io/?EIO=4&transport=websocket&sid={sid}"),
        None => format!("ws://{addr}/socket.io/?EIO=4&transport=websocket"),
    }
}

/// The fields of an open packet (`0{...}`).
#[derive(Debug)]
pub struct Handshake {
    pub sid: String,
    pub json: serde_json::Value,
}

impl Handshake {
    /// Parses an open packet; panics (the test cannot go on) on anything else.
    pub fn parse(packet: &str) -> Self {
        let json = packet
            .strip_prefix('0')
            .unwrap_or_else(|| panic!("not an open packet: {packet}"));
        let json: serde_json::Value = serde_json::from_str(json).expect("open packet JSON");
        let sid = json["sid"].as_str().expect("sid is a string").to_owned();
        Handshake { sid, json }
    }
}

/// The next websocket message that is not a websocket ping or pong (`None` when the
/// connection ended); fails the test after `deadline`.
pub async fn next_message<S>(ws: &mut WebSocketStream<S>, deadline: Duration) -> Option<Message>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    crate::within(deadline, "a websocket message", async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(message)) => return Some(message),
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
}

/// The next Engine.IO text packet that is not a ping, answering pings with a pong as a client
/// does. `None` when the connection closes, fails, or nothing comes within `deadline` (for
/// tests that prove a connection was closed).
pub async fn next_text_answering_pings<S>(
    ws: &mut WebSocketStream<S>,
    deadline: Duration,
) -> Option<String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let message = tokio::time::timeout(deadline, ws.next())
            .await
            .ok()??
            .ok()?;
        match message {
            Message::Text(text) if text.as_str() == "2" => {
                ws.send(Message::text("3")).await.ok()?
            }
            Message::Text(text) => return Some(text.to_string()),
            Message::Close(_) => return None,
            _ => {}
        }
    }
}
