//! The signed session cookie: `<session id>.<expiry>.<HMAC-SHA256 of both>`. The signature
//! makes a forged or edited cookie worthless; the expiry bounds a stolen one.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The name of the session cookie.
pub const COOKIE_NAME: &str = "chat_session";

/// Why a cookie is not accepted.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CookieError {
    #[error("malformed session cookie")]
    Malformed,
    #[error("session cookie signature does not match")]
    BadSignature,
    #[error("session cookie expired")]
    Expired,
}

/// Signs and verifies session cookies with one secret key.
#[derive(Clone)]
pub struct CookieSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for CookieSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieSigner(..)")
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl CookieSigner {
    pub fn new(key: &[u8]) -> Self {
        CookieSigner { key: key.to_vec() }
    }

    fn mac(&self, payload: &str) -> HmacSha256 {
        // HMAC takes keys of any length, so this cannot fail.
        let mut mac = HmacSha256::new_from_slice(&self.key).unwrap_or_else(|_| unreachable!());
        mac.update(payload.as_bytes());
        mac
    }

    /// The cookie value for a session that stays valid for `ttl`.
    pub fn sign(&self, session_id: &str, ttl: Duration) -> String {
        let payload = format!("{session_id}.{}", now_secs() + ttl.as_secs());
        let signature = self.mac(&payload).finalize().into_bytes();
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(signature);
        format!("{payload}.{signature}")
    }

    /// The session id of a valid cookie value. The comparison is constant-time.
    pub fn verify<'a>(&self, value: &'a str) -> Result<&'a str, CookieError> {
        let (payload, signature) = value.rsplit_once('.').ok_or(CookieError::Malformed)?;
        let (session_id, expiry) = payload.split_once('.').ok_or(CookieError::Malformed)?;
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(signature)
            .map_err(|_| CookieError::Malformed)?;
        self.mac(payload)
            .verify_slice(&signature)
            .map_err(|_| CookieError::BadSignature)?;
        let expiry: u64 = expiry.parse().map_err(|_| CookieError::Malformed)?;
        if expiry <= now_secs() {
            return Err(CookieError::Expired);
        }
        Ok(session_id)
    }

    /// The `Set-Cookie` header value that stores a session in the browser.
    pub fn set_cookie_header(&self, session_id: &str, ttl: Duration, secure: bool) -> String {
        let secure = if secure { "; Secure" } else { "" };
        format!(
            "{COOKIE_NAME}={}; Path=/; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
            self.sign(session_id, ttl),
            ttl.as_secs()
        )
    }
}

/// The `Set-Cookie` header value that removes the session cookie.
pub fn clear_cookie_header() -> String {
    format!("{COOKIE_NAME}=; Path=/; Max-Age=0; HttpOnly; SameSite=Lax")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_its_own_cookies() {
        let signer = CookieSigner::new(b"secret");
        let value = signer.sign("abc", Duration::from_secs(60));
        assert_eq!(signer.verify(&value), Ok("abc"));
    }

    #[test]
    fn refuses_forged_edited_and_expired_cookies() {
        let signer = CookieSigner::new(b"secret");
        let other = CookieSigner::new(b"other secret");
        let value = other.sign("abc", Duration::from_secs(60));
        assert_eq!(signer.verify(&value), Err(CookieError::BadSignature));

        let value = signer.sign("abc", Duration::from_secs(60));
        let edited = value.replacen("abc", "abd", 1);
        assert_eq!(signer.verify(&edited), Err(CookieError::BadSignature));

        assert_eq!(signer.verify("abc"), Err(CookieError::Malformed));
        assert_eq!(signer.verify("abc.123"), Err(CookieError::Malformed));
        assert_eq!(signer.verify("abc.123.!!"), Err(CookieError::Malformed));

        let expired = signer.sign("abc", Duration::ZERO);
        assert_eq!(signer.verify(&expired), Err(CookieError::Expired));
    }

    #[test]
    fn cookie_header_is_http_only_and_same_site() {
        let header = CookieSigner::new(b"k").set_cookie_header("s", Duration::from_secs(10), false);
        assert!(header.starts_with("chat_session=s."));
        assert!(header.contains("HttpOnly") && header.contains("SameSite=Lax"));
        assert!(header.contains("Max-Age=10"));
    }
}
