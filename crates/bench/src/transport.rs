//! The client side of Engine.IO v4: logging in over HTTP, then one session over a websocket or
//! over long-polling, carrying text packets.

use std::collections::VecDeque;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{HeaderValue, CONNECTION, CONTENT_TYPE, COOKIE, HOST, SET_COOKIE};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{ClientRequestBuilder, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::config::Target;
use crate::protocol::RECORD_SEPARATOR;
use crate::{net, BenchError};

/// The session cookie the chat sets at login.
const SESSION_COOKIE: &str = "chat_session";

/// Where a client connects, from which local address, as whom.
#[derive(Clone)]
pub struct Endpoint<'a> {
    pub target: &'a Target,
    pub source: Option<IpAddr>,
}

/// One text packet from the server.
pub enum Text {
    /// A websocket frame, already checked to be UTF-8.
    Frame(Utf8Bytes),
    /// A slice of a long-polling payload.
    Polled(Bytes),
}

impl Text {
    pub fn as_str(&self) -> &str {
        match self {
            Text::Frame(text) => text.as_str(),
            Text::Polled(bytes) => std::str::from_utf8(bytes).unwrap_or(""),
        }
    }
}

/// An open Engine.IO session.
pub enum Connection {
    WebSocket(Box<WebSocketStream<TcpStream>>),
    Polling(Box<Polling>),
}

/// Memory per idle connection is what limits how many clients one process holds: tungstenite's
/// default 128 KiB read buffer would cost 1.3 GB for 10,000 clients. Chat frames are small; a
/// larger one grows the buffer as needed.
fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

impl Connection {
    /// Opens a session, logging in first as `nickname` when there is no `cookie` yet (the
    /// cookie is then filled in). A websocket session reuses the login's TCP connection.
    pub async fn open(
        endpoint: Endpoint<'_>,
        polling: bool,
        nickname: &str,
        cookie: &mut Option<HeaderValue>,
    ) -> Result<Connection, BenchError> {
        let target = endpoint.target;
        let stream = net::connect(target.addr, endpoint.source).await?;
        if polling {
            let mut http = Http::handshake(stream).await?;
            let cookie = match cookie {
                Some(cookie) => cookie.clone(),
                None => {
                    let (value, keeps_open) = http.login(target, nickname).await?;
                    if !keeps_open {
                        let stream = net::connect(target.addr, endpoint.source).await?;
                        http = Http::handshake(stream).await?;
                    }
                    cookie.insert(value).clone()
                }
            };
            return Polling::open(endpoint, http, cookie)
                .await
                .map(|p| Connection::Polling(Box::new(p)));
        }
        let (stream, cookie) = match cookie {
            Some(cookie) => (stream, cookie.clone()),
            None => {
                let (value, kept) = login_keeping_stream(stream, target, nickname).await?;
                let stream = match kept {
                    Some(stream) => stream,
                    None => net::connect(target.addr, endpoint.source).await?,
                };
                (stream, cookie.insert(value).clone())
            }
        };
        let uri: http::Uri = format!(
            "ws://{}/socket.io/?EIO=4&transport=websocket",
            target.authority
        )
        .parse()
        .map_err(|error| BenchError::Setup(format!("bad server address: {error}")))?;
        let cookie = cookie.to_str().unwrap_or_default().to_owned();
        let request = ClientRequestBuilder::new(uri).with_header("Cookie", cookie);
        let (ws, _) =
            tokio_tungstenite::client_async_with_config(request, stream, Some(websocket_config()))
                .await?;
        Ok(Connection::WebSocket(Box::new(ws)))
    }

    /// The next text packet; `None` once the server closed the session. Cancel-safe: a packet
    /// is never lost by dropping this future.
    pub async fn recv(&mut self) -> Result<Option<Text>, BenchError> {
        match self {
            Connection::WebSocket(ws) => loop {
                match ws.next().await {
                    None | Some(Ok(Message::Close(_))) => return Ok(None),
                    Some(Ok(Message::Text(text))) => return Ok(Some(Text::Frame(text))),
                    Some(Ok(_)) => continue,
                    Some(Err(error)) => return Err(error.into()),
                }
            },
            Connection::Polling(polling) => polling.recv().await,
        }
    }

    /// Sends one packet.
    pub async fn send(&mut self, packet: String) -> Result<(), BenchError> {
        match self {
            Connection::WebSocket(ws) => Ok(ws.send(Message::text(packet)).await?),
            Connection::Polling(polling) => polling.post(Bytes::from(packet)).await,
        }
    }

    /// Sends several packets, in one request over long-polling.
    pub async fn send_all(&mut self, packets: Vec<String>) -> Result<(), BenchError> {
        match self {
            Connection::WebSocket(ws) => {
                for packet in packets {
                    ws.feed(Message::text(packet)).await?;
                }
                Ok(ws.flush().await?)
            }
            Connection::Polling(polling) => {
                let joined = packets.join("\u{1e}");
                polling.post(Bytes::from(joined)).await
            }
        }
    }

    /// Ends the session the way a browser leaving the page does, and waits until the server
    /// has seen it (the websocket close handshake; the close packet's answer).
    pub async fn close(self) {
        match self {
            Connection::WebSocket(mut ws) => {
                if WebSocketStream::close(&mut ws, None).await.is_ok() {
                    while let Some(Ok(_)) = ws.next().await {}
                }
            }
            Connection::Polling(mut polling) => {
                let _ = polling.post(Bytes::from_static(b"1")).await;
            }
        }
    }
}

/// Logs in over `stream` and hands the stream back for the websocket, unless the server
/// closes it after the response.
async fn login_keeping_stream(
    stream: TcpStream,
    target: &Target,
    nickname: &str,
) -> Result<(HeaderValue, Option<TcpStream>), BenchError> {
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream)).await?;
    let connection = tokio::spawn(connection.without_shutdown());
    let response = sender.send_request(login_request(target, nickname)).await?;
    let keeps_open = keeps_connection_open(&response);
    let cookie = session_cookie(&response);
    let status = response.status();
    let _ = response.into_body().collect().await?;
    drop(sender);
    let cookie = cookie.ok_or(BenchError::Login {
        status: status.as_u16(),
    })?;
    let stream = match connection.await {
        Ok(Ok(parts)) if keeps_open && parts.read_buf.is_empty() => Some(parts.io.into_inner()),
        _ => None,
    };
    Ok((cookie, stream))
}

fn login_request(target: &Target, nickname: &str) -> Request<Full<Bytes>> {
    let body: String = form_body(nickname);
    Request::builder()
        .method(Method::POST)
        .uri("/login")
        .header(HOST, target.authority.as_str())
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_default()
}

/// `nickname=...`, percent-encoded (our nicknames are plain, but the rule costs nothing).
fn form_body(nickname: &str) -> String {
    let mut body = String::from("nickname=");
    for byte in nickname.bytes() {
        if byte.is_ascii_alphanumeric() || b"-_.*".contains(&byte) {
            body.push(char::from(byte));
        } else {
            body.push_str(&format!("%{byte:02X}"));
        }
    }
    body
}

/// Whether the server will take another request on this connection (some close it after the
/// login: Node's sticky-session primary does).
fn keeps_connection_open<B>(response: &http::Response<B>) -> bool {
    !response
        .headers()
        .get(CONNECTION)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
}

/// `chat_session=...` from the response's `Set-Cookie`, ready to send back as `Cookie`.
fn session_cookie<B>(response: &http::Response<B>) -> Option<HeaderValue> {
    response
        .headers()
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .map(|value| value.split(';').next().unwrap_or("").trim())
        .find(|pair| {
            pair.split_once('=')
                .is_some_and(|(name, _)| name.trim() == SESSION_COOKIE)
        })
        .and_then(|pair| HeaderValue::from_str(pair).ok())
}

/// One HTTP/1.1 connection that sends requests one after another.
struct Http {
    sender: SendRequest<Full<Bytes>>,
}

impl Http {
    async fn handshake(stream: TcpStream) -> Result<Http, BenchError> {
        let (sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        // The connection's I/O runs beside the client; it ends when the client drops `sender`.
        tokio::spawn(connection);
        Ok(Http { sender })
    }

    /// The session cookie, and whether this connection stays open.
    async fn login(
        &mut self,
        target: &Target,
        nickname: &str,
    ) -> Result<(HeaderValue, bool), BenchError> {
        let response = self
            .sender
            .send_request(login_request(target, nickname))
            .await?;
        let keeps_open = keeps_connection_open(&response);
        let cookie = session_cookie(&response);
        let status = response.status();
        let _ = response.into_body().collect().await?;
        let cookie = cookie.ok_or(BenchError::Login {
            status: status.as_u16(),
        })?;
        Ok((cookie, keeps_open))
    }
}

/// Sends `request` and reads the whole answer.
async fn exchange(
    sender: &mut SendRequest<Full<Bytes>>,
    request: Request<Full<Bytes>>,
) -> Result<(StatusCode, Bytes), BenchError> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

type LongPoll =
    Pin<Box<dyn Future<Output = (SendRequest<Full<Bytes>>, Result<Bytes, BenchError>)> + Send>>;

/// An Engine.IO session over long-polling: one connection always holds a GET open for the
/// server's packets, a second one POSTs ours (HTTP/1.1 answers in order, so one connection
/// could not send while the GET waits).
pub struct Polling {
    /// `/socket.io/?EIO=4&transport=polling&sid=...`
    uri: http::Uri,
    host: HeaderValue,
    cookie: HeaderValue,
    posts: SendRequest<Full<Bytes>>,
    /// The GET in flight; kept across `recv` calls so that cancelling one loses nothing.
    long_poll: LongPoll,
    /// Packets of the last payload not handed out yet.
    queue: VecDeque<Bytes>,
}

impl Polling {
    async fn open(
        endpoint: Endpoint<'_>,
        mut http: Http,
        cookie: HeaderValue,
    ) -> Result<Polling, BenchError> {
        let target = endpoint.target;
        let host = HeaderValue::from_str(&target.authority)
            .map_err(|_| BenchError::Setup(format!("bad host `{}`", target.authority)))?;
        let request = |uri: &str| {
            Request::builder()
                .uri(uri)
                .header(HOST, host.clone())
                .header(COOKIE, cookie.clone())
        };
        let handshake = request("/socket.io/?EIO=4&transport=polling")
            .body(Full::default())
            .map_err(|error| BenchError::Setup(error.to_string()))?;
        let (status, body) = exchange(&mut http.sender, handshake).await?;
        if status != StatusCode::OK {
            return Err(BenchError::Handshake {
                status: status.as_u16(),
            });
        }
        let mut queue = VecDeque::new();
        split_payload(&body, &mut queue);
        let open = queue
            .front()
            .and_then(|first| std::str::from_utf8(first).ok())
            .and_then(|first| first.strip_prefix('0'))
            .ok_or_else(|| BenchError::Protocol("no open packet in the handshake".into()))?;
        #[derive(serde::Deserialize)]
        struct Open {
            sid: String,
        }
        let open: Open = serde_json::from_str(open)
            .map_err(|_| BenchError::Protocol(format!("bad open packet {open}")))?;
        let uri: http::Uri = format!("/socket.io/?EIO=4&transport=polling&sid={}", open.sid)
            .parse()
            .map_err(|_| BenchError::Protocol(format!("bad session id {}", open.sid)))?;
        let posts = Http::handshake(net::connect(target.addr, endpoint.source).await?).await?;
        let mut polling = Polling {
            uri,
            host,
            cookie,
            posts: posts.sender,
            long_poll: Box::pin(std::future::pending()),
            queue,
        };
        polling.long_poll = polling.start_long_poll(http.sender);
        Ok(polling)
    }

    fn request(&self, method: Method, body: Bytes) -> Request<Full<Bytes>> {
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = method;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(HOST, self.host.clone());
        headers.insert(COOKIE, self.cookie.clone());
        if request.method() == Method::POST {
            request.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain;charset=UTF-8"),
            );
        }
        request
    }

    fn start_long_poll(&self, mut sender: SendRequest<Full<Bytes>>) -> LongPoll {
        let request = self.request(Method::GET, Bytes::new());
        Box::pin(async move {
            let result = match exchange(&mut sender, request).await {
                Ok((StatusCode::OK, body)) => Ok(body),
                Ok((status, _)) => Err(BenchError::Protocol(format!(
                    "long-poll answered HTTP {status}"
                ))),
                Err(error) => Err(error),
            };
            (sender, result)
        })
    }

    async fn recv(&mut self) -> Result<Option<Text>, BenchError> {
        loop {
            if let Some(packet) = self.queue.pop_front() {
                return Ok(Some(Text::Polled(packet)));
            }
            let (sender, body) = (&mut self.long_poll).await;
            self.long_poll = match body {
                Ok(_) => self.start_long_poll(sender),
                Err(_) => Box::pin(std::future::pending()),
            };
            split_payload(&body?, &mut self.queue);
        }
    }

    async fn post(&mut self, payload: Bytes) -> Result<(), BenchError> {
        let request = self.request(Method::POST, payload);
        match exchange(&mut self.posts, request).await? {
            (StatusCode::OK, _) => Ok(()),
            (status, _) => Err(BenchError::Protocol(format!("POST answered HTTP {status}"))),
        }
    }
}

fn split_payload(body: &Bytes, queue: &mut VecDeque<Bytes>) {
    let mut start = 0;
    for (at, byte) in body.iter().enumerate() {
        if *byte == RECORD_SEPARATOR {
            queue.push_back(body.slice(start..at));
            start = at + 1;
        }
    }
    if start < body.len() {
        queue.push_back(body.slice(start..));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_splits_on_record_separators() {
        let mut queue = VecDeque::new();
        split_payload(
            &Bytes::from_static(b"2\x1e42/chat_com,[\"x\"]\x1e6"),
            &mut queue,
        );
        let packets: Vec<_> = queue.iter().map(|b| b.as_ref()).collect();
        assert_eq!(packets, [&b"2"[..], b"42/chat_com,[\"x\"]", b"6"]);
    }

    #[test]
    fn session_cookie_is_name_and_value_only() {
        let response = http::Response::builder()
            .header(SET_COOKIE, "other=1; Path=/")
            .header(
                SET_COOKIE,
                "chat_session=abc.def; Path=/; HttpOnly; SameSite=Lax",
            )
            .body(())
            .unwrap();
        assert_eq!(session_cookie(&response).unwrap(), "chat_session=abc.def");
    }

    #[test]
    fn form_body_is_percent_encoded() {
        assert_eq!(form_body("b 1&x"), "nickname=b%201%26x");
    }
}
