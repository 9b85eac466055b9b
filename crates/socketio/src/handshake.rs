//! What a socket knows of the request that opened its connection.

use std::sync::Arc;
use std::time::SystemTime;

use http::{HeaderMap, Uri};
use serde_json::value::RawValue;

/// The handshake of a namespace connection: the HTTP request of the Engine.IO session and the
/// `auth` payload of the CONNECT packet.
#[derive(Debug)]
pub struct Handshake {
    /// The request's headers and target, shared with the Engine.IO session and the
    /// connection's other namespaces.
    pub(crate) request: Arc<engineio::SessionRequest>,
    pub(crate) auth: Option<Box<RawValue>>,
    pub(crate) issued: SystemTime,
}

impl Handshake {
    pub fn headers(&self) -> &HeaderMap {
        &self.request.headers
    }

    pub fn uri(&self) -> &Uri {
        &self.request.uri
    }

    /// The raw JSON `auth` object the client sent with CONNECT (`{}` when it sent none).
    pub fn auth_raw(&self) -> &str {
        self.auth.as_deref().map_or("{}", RawValue::get)
    }

    /// The `auth` payload, typed.
    pub fn auth<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.auth_raw())
    }

    /// When the namespace connection was made.
    pub fn issued(&self) -> SystemTime {
        self.issued
    }

    /// A query parameter of the handshake request (not percent-decoded).
    pub fn query(&self, key: &str) -> Option<&str> {
        self.uri().query()?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == key).then_some(v)
        })
    }

    /// A cookie sent with the handshake request.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        cookie(self.headers(), name)
    }
}

/// The value of cookie `name` in request headers, if the client sent one.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .find_map(|pair| {
            let (k, v) = pair.trim().split_once('=')?;
            (k == name).then_some(v)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_cookies_and_query() {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::COOKIE,
            "a=1; session=abc.def; b=2".parse().unwrap(),
        );
        let handshake = Handshake {
            request: Arc::new(engineio::SessionRequest {
                headers,
                uri: "/socket.io/?EIO=4&transport=polling&room=x"
                    .parse()
                    .unwrap(),
            }),
            auth: None,
            issued: SystemTime::now(),
        };
        assert_eq!(handshake.cookie("session"), Some("abc.def"));
        assert_eq!(handshake.cookie("missing"), None);
        assert_eq!(handshake.query("room"), Some("x"));
        assert_eq!(handshake.auth_raw(), "{}");
    }
}
