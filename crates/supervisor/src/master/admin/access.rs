//! Who may use the admin address. Reads (metrics, the dashboard, its live feed) are open on
//! loopback, as the control socket is to its owner's processes, and need the bearer token
//! anywhere else; actions (reload, restart, scale) always need the token, by POST, from the
//! page's own origin: a cross-site form cannot set an `Authorization` header, and a request
//! that says it comes from another origin is refused before the token is even looked at.

use std::net::SocketAddr;
use std::path::Path;

use http::{HeaderMap, Method};
use sha2::{Digest, Sha256};

/// The shortest token accepted from a file: a shorter one is guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// The admin address's rules, with its token.
pub struct Access {
    token: String,
    /// Bound to a loopback address: reads need no token.
    loopback: bool,
}

/// Why a request was refused; each maps to an HTTP status and a message naming the fix.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` header (401).
    NoToken,
    /// A token that is not this app's (401).
    WrongToken,
    /// An action from another origin (403).
    CrossOrigin,
    /// An action by another method than POST (405).
    NotPost,
    /// On loopback, a `Host` that is not a loopback name (403): a page of another site
    /// that rebound its own name to 127.0.0.1 (DNS rebinding) gets nothing.
    ForeignHost,
}

impl Refusal {
    pub fn status(&self) -> http::StatusCode {
        match self {
            Refusal::NoToken | Refusal::WrongToken => http::StatusCode::UNAUTHORIZED,
            Refusal::CrossOrigin | Refusal::ForeignHost => http::StatusCode::FORBIDDEN,
            Refusal::NotPost => http::StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    pub fn message(&self) -> &'static str {
        match self {
            Refusal::NoToken => "this needs the admin token: send `Authorization: Bearer TOKEN` (the token is in the app's admin-token file, or the one --admin-token-file names)",
            Refusal::WrongToken => "wrong admin token: use the one in the app's admin-token file (or the one --admin-token-file names)",
            Refusal::CrossOrigin => "actions are accepted from the dashboard's own origin only",
            Refusal::NotPost => "actions take POST",
            Refusal::ForeignHost => "on loopback the admin address answers requests for 127.0.0.1, [::1] or localhost only",
        }
    }
}

impl Access {
    pub fn new(token: String, bound: SocketAddr) -> Access {
        Access {
            token,
            loopback: bound.ip().is_loopback(),
        }
    }

    /// A read (`GET /metrics`, the page, its feed): free on loopback, else the token.
    pub fn check_read(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        if self.loopback {
            return self.check_host(headers);
        }
        self.check_token(headers)
    }

    /// On loopback, the request must be for a loopback name: a browser sends the name of the
    /// page's site, and a site whose name now resolves to 127.0.0.1 is not this address.
    fn check_host(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        if !self.loopback {
            return Ok(());
        }
        let Some(host) = headers.get(http::header::HOST) else {
            // Not a browser's request: HTTP/1.1 browsers always send one.
            return Ok(());
        };
        let host = host.to_str().map_err(|_| Refusal::ForeignHost)?;
        // `name:port`, `[v6]:port`, or either without a port.
        let name = match host.strip_prefix('[') {
            Some(rest) => rest.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host, |(name, _)| name),
        };
        let loopback = name.eq_ignore_ascii_case("localhost")
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback {
            Ok(())
        } else {
            Err(Refusal::ForeignHost)
        }
    }

    /// An action: POST, from the page's own origin, with the token.
    pub fn check_action(&self, method: &Method, headers: &HeaderMap) -> Result<(), Refusal> {
        if method != Method::POST {
            return Err(Refusal::NotPost);
        }
        if !same_origin(headers) {
            return Err(Refusal::CrossOrigin);
        }
        self.check_host(headers)?;
        self.check_token(headers)
    }

    fn check_token(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        let given = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or(Refusal::NoToken)?;
        if same_secret(given.trim(), &self.token) {
            Ok(())
        } else {
            Err(Refusal::WrongToken)
        }
    }
}

/// Compares digests, so the time taken does not tell how much of a guess was right.
fn same_secret(given: &str, token: &str) -> bool {
    let (a, b) = (Sha256::digest(given), Sha256::digest(token));
    a.iter()
        .zip(b.iter())
        .fold(0u8, |diff, (x, y)| diff | (x ^ y))
        == 0
}

/// Whether a request comes from the page it was served with: its `Origin` (sent by browsers
/// with every POST) names the host it was sent to, and `Sec-Fetch-Site`, when present, agrees.
/// A request with neither (curl, a script) is not a browser's, and the token alone decides.
fn same_origin(headers: &HeaderMap) -> bool {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(site) = header("sec-fetch-site") {
        if site != "same-origin" && site != "none" {
            return false;
        }
    }
    match (header("origin"), header("host")) {
        (None, _) => true,
        (Some(origin), Some(host)) => origin == format!("http://{host}"),
        (Some(_), None) => false,
    }
}

/// The admin token: the first line of `given` (which must be the owner's alone), or of
/// `default`, made with a new random token on first use. Never from argv or the environment,
/// where other users' processes could read it.
pub fn load_token(given: Option<&Path>, default: &Path) -> Result<String, String> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let path = given.unwrap_or(default);
    if given.is_none() && !default.exists() {
        let token = crate::handoff::new_token().map_err(|e| format!("cannot make a token: {e}"))?;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(default)
            .map_err(|e| format!("cannot create {}: {e}", default.display()))?;
        std::io::Write::write_all(&mut file, format!("{token}\n").as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", default.display()))?;
    }
    let shown = path.display();
    let metadata = std::fs::metadata(path)
        .map_err(|e| format!("cannot read the admin token file {shown}: {e}"))?;
    if metadata.mode() & 0o077 != 0 {
        return Err(format!(
            "the admin token file {shown} is readable by other users: `chmod 600 {shown}`"
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the admin token file {shown}: {e}"))?;
    let token = text.lines().next().unwrap_or("").trim().to_owned();
    if token.len() < MIN_TOKEN_LEN || !token.is_ascii() {
        return Err(format!(
            "the admin token in {shown} must be at least {MIN_TOKEN_LEN} ASCII characters on its first line"
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "0123456789abcdef0123";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        map
    }

    fn bound(ip: &str) -> Access {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        Access::new(TOKEN.into(), SocketAddr::new(ip, 9300))
    }

    #[test]
    fn reads_are_free_on_loopback_and_need_the_token_elsewhere() {
        assert_eq!(bound("127.0.0.1").check_read(&headers(&[])), Ok(()));
        assert_eq!(bound("::1").check_read(&headers(&[])), Ok(()));
        let public = bound("0.0.0.0");
        assert_eq!(public.check_read(&headers(&[])), Err(Refusal::NoToken));
        let wrong = headers(&[("authorization", "Bearer 0123456789abcdef0124")]);
        assert_eq!(public.check_read(&wrong), Err(Refusal::WrongToken));
        let basic = headers(&[("authorization", "Basic 0123456789abcdef0123")]);
        assert_eq!(public.check_read(&basic), Err(Refusal::NoToken));
        let right = headers(&[("authorization", &format!("Bearer {TOKEN}"))]);
        assert_eq!(public.check_read(&right), Ok(()));
    }

    #[test]
    fn on_loopback_a_request_for_another_name_is_refused() {
        let access = bound("127.0.0.1");
        for host in [
            "127.0.0.1:9300",
            "localhost:9300",
            "[::1]:9300",
            "127.0.0.2",
            "LOCALHOST",
        ] {
            assert_eq!(
                access.check_read(&headers(&[("host", host)])),
                Ok(()),
                "{host}"
            );
        }
        for host in [
            "evil.example:9300",
            "evil.example",
            "10.0.0.1:9300",
            "[2001:db8::1]:9300",
        ] {
            assert_eq!(
                access.check_read(&headers(&[("host", host)])),
                Err(Refusal::ForeignHost),
                "{host}"
            );
        }
        // A rebound name cannot act either, even with the token.
        let rebound = headers(&[
            ("authorization", &format!("Bearer {TOKEN}")),
            ("host", "evil.example:9300"),
            ("origin", "http://evil.example:9300"),
        ]);
        assert_eq!(
            access.check_action(&Method::POST, &rebound),
            Err(Refusal::ForeignHost)
        );
        // Off loopback the name is the operator's business (a proxy, a DNS name).
        let public = bound("0.0.0.0");
        let named = headers(&[
            ("authorization", &format!("Bearer {TOKEN}")),
            ("host", "admin.example:9300"),
        ]);
        assert_eq!(public.check_read(&named), Ok(()));
    }

    #[test]
    fn actions_need_post_the_token_and_the_same_origin_even_on_loopback() {
        let access = bound("127.0.0.1");
        let auth = format!("Bearer {TOKEN}");
        let own = headers(&[
            ("authorization", &auth),
            ("host", "127.0.0.1:9300"),
            ("origin", "http://127.0.0.1:9300"),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert_eq!(access.check_action(&Method::POST, &own), Ok(()));
        assert_eq!(
            access.check_action(&Method::GET, &own),
            Err(Refusal::NotPost)
        );
        let no_token = headers(&[("host", "127.0.0.1:9300")]);
        assert_eq!(
            access.check_action(&Method::POST, &no_token),
            Err(Refusal::NoToken)
        );
        // A page elsewhere cannot act, even when it guessed or stole the token.
        let foreign = headers(&[
            ("authorization", &auth),
            ("host", "127.0.0.1:9300"),
            ("origin", "http://evil.example"),
        ]);
        assert_eq!(
            access.check_action(&Method::POST, &foreign),
            Err(Refusal::CrossOrigin)
        );
        let cross_site = headers(&[
            ("authorization", &auth),
            ("host", "127.0.0.1:9300"),
            ("sec-fetch-site", "cross-site"),
        ]);
        assert_eq!(
            access.check_action(&Method::POST, &cross_site),
            Err(Refusal::CrossOrigin)
        );
        // curl: no Origin, the token decides.
        let script = headers(&[("authorization", &auth)]);
        assert_eq!(access.check_action(&Method::POST, &script), Ok(()));
    }

    #[test]
    fn a_token_file_must_be_private_and_long_enough() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("admin-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let default = dir.join("admin-token");
        let made = load_token(None, &default).unwrap();
        assert!(made.len() >= MIN_TOKEN_LEN);
        assert_eq!(
            load_token(None, &default).unwrap(),
            made,
            "made once, then kept"
        );
        let mode = std::fs::metadata(&default).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);

        let given = dir.join("given");
        std::fs::write(&given, "short\n").unwrap();
        std::fs::set_permissions(&given, std::fs::Permissions::from_mode(0o600)).unwrap();
        let error = load_token(Some(&given), &default).unwrap_err();
        assert!(error.contains("at least 16"), "{error}");
        std::fs::write(&given, format!("{TOKEN}\nignored\n")).unwrap();
        assert_eq!(load_token(Some(&given), &default).unwrap(), TOKEN);
        std::fs::set_permissions(&given, std::fs::Permissions::from_mode(0o644)).unwrap();
        let error = load_token(Some(&given), &default).unwrap_err();
        assert!(error.contains("chmod 600"), "{error}");
        let error = load_token(Some(&dir.join("missing")), &default).unwrap_err();
        assert!(error.contains("cannot read"), "{error}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
