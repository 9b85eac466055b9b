//! Logging in and out over raw HTTP against a real `ChatServer`: each client address has a
//! login budget (429 with Retry-After beyond it) that does not lock out other addresses;
//! logout is a POST; login and logout forms sent from another site's page are refused.

mod common;

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::Duration;

use common::BackgroundServer;

/// Bounds every read: a hung server fails the test instead of stalling it.
const DEADLINE: Duration = Duration::from_secs(20);

/// An HTTP response: status, headers (lowercase names), body.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }

    /// The session cookie it sets, as `name=value`.
    fn cookie(&self) -> String {
        let set = self
            .header("set-cookie")
            .unwrap_or_else(|| panic!("no cookie set: {} {}", self.status, self.body));
        set.split(';').next().unwrap_or("").to_owned()
    }
}

/// Connects to `server` from `source` (any loopback address: Linux routes 127.0.0.0/8 to lo).
fn connect(server: SocketAddr, source: IpAddr) -> TcpStream {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("a runtime to connect with");
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind(SocketAddr::new(source, 0))
            .unwrap_or_else(|error| panic!("cannot bind {source}: {error}"));
        socket.connect(server).await.expect("connect").into_std()
    });
    let stream = stream.expect("a std stream");
    stream.set_nonblocking(false).expect("blocking mode");
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    stream
}

fn request(
    server: SocketAddr,
    source: IpAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Answer {
    let mut stream = connect(server, source);
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {server}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    write!(stream, "{head}\r\n{body}").expect("send request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split(' ').nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_owned(),
    }
}

const FORM: (&str, &str) = ("Content-Type", "application/x-www-form-urlencoded");

fn login(server: SocketAddr, source: IpAddr, nickname: &str) -> Answer {
    request(
        server,
        source,
        "POST",
        "/login",
        &[FORM],
        &format!("nickname={nickname}"),
    )
}

fn address(server: &BackgroundServer) -> SocketAddr {
    server
        .url
        .trim_start_matches("http://")
        .parse()
        .expect("the server's address")
}

fn config() -> chat::ChatConfig {
    chat::ChatConfig {
        secret: b"login test secret, 16+ bytes".to_vec(),
        logins_per_address: 3,
        login_window: Duration::from_secs(600),
        ..chat::ChatConfig::default()
    }
}

#[test]
fn logins_beyond_an_address_budget_get_429_and_other_addresses_still_log_in() {
    let server = common::chat_server(config());
    let addr = address(&server);
    let attacker: IpAddr = "127.0.0.1".parse().unwrap();
    for i in 0..3 {
        let answer = login(addr, attacker, &format!("bot{i}"));
        assert_eq!(answer.status, 303, "login {i}: {}", answer.body);
    }
    let refused = login(addr, attacker, "bot3");
    assert_eq!(refused.status, 429, "{}", refused.body);
    let retry_after: u64 = refused
        .header("retry-after")
        .and_then(|value| value.parse().ok())
        .expect("a Retry-After in seconds");
    assert!(
        (1..=600).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    assert!(refused.body.contains("Too many logins"), "{}", refused.body);
    // Someone else is not locked out.
    let user = login(addr, "127.0.0.2".parse().unwrap(), "ann");
    assert_eq!(user.status, 303, "{}", user.body);
    server.stop();
}

#[test]
fn logout_is_a_post_from_our_own_pages() {
    let server = common::chat_server(config());
    let addr = address(&server);
    let here: IpAddr = "127.0.0.1".parse().unwrap();
    let same_origin = format!("http://{addr}");
    let cookie = login(addr, here, "ann").cookie();
    let rooms = |cookie: &str| request(addr, here, "GET", "/rooms", &[("Cookie", cookie)], "");
    assert_eq!(rooms(&cookie).status, 200);

    // A link (or an image) on any page cannot log anyone out.
    let by_get = request(addr, here, "GET", "/logout", &[("Cookie", &cookie)], "");
    assert_eq!(by_get.status, 405);
    // Nor a form on another site, nor log anyone in.
    let evil = ("Origin", "http://evil.example");
    let foreign = request(
        addr,
        here,
        "POST",
        "/logout",
        &[("Cookie", &cookie), evil],
        "",
    );
    assert_eq!(foreign.status, 403, "{}", foreign.body);
    let foreign_login = request(addr, here, "POST", "/login", &[FORM, evil], "nickname=eve");
    assert_eq!(foreign_login.status, 403, "{}", foreign_login.body);
    let cross_site = request(
        addr,
        here,
        "POST",
        "/login",
        &[FORM, ("Sec-Fetch-Site", "cross-site")],
        "nickname=eve",
    );
    assert_eq!(cross_site.status, 403, "{}", cross_site.body);
    assert_eq!(rooms(&cookie).status, 200, "the session survived");

    // Our own page's form logs out.
    let logout = request(
        addr,
        here,
        "POST",
        "/logout",
        &[("Cookie", &cookie), ("Origin", &same_origin)],
        "",
    );
    assert_eq!(logout.status, 303, "{}", logout.body);
    assert_eq!(rooms(&cookie).status, 303, "the session ended");
    // The rooms page offers logout as a form.
    let page = rooms(&login(addr, here, "bob").cookie()).body;
    assert!(
        page.contains("<form method=\"post\" action=\"/logout\""),
        "{page}"
    );
    server.stop();
}
