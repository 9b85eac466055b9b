//! Where a request names its session: the one rule every router uses (the master's dispatch,
//! the proxy, a worker passing a request to its owner), so they never disagree on which
//! process a request belongs to.
//!
//! The sid is taken as sent, never percent-decoded: the engine looks sessions up by the raw
//! query value, and the ids it issues are base64url, which needs no escaping. A decoded sid
//! could name an owner whose engine then does not know the id as spelled.

/// The Socket.IO 0.9 protocol revision, the path segment before the transport.
const LEGACY_PROTOCOL: &str = "1";

/// The session id of a request: its `sid` query parameter (Engine.IO v4), or else the last
/// segment of a Socket.IO 0.9 transport path.
pub fn of_request<'a>(path: &'a str, query: Option<&'a str>) -> Option<&'a str> {
    query.and_then(in_query).or_else(|| in_legacy_path(path))
}

/// The value of the first `sid` parameter of a query string, as sent.
pub fn in_query(query: &str) -> Option<&str> {
    query_value(query, "sid")
}

/// The session id in a Socket.IO 0.9 transport path: 0.9 clients carry it as the last segment
/// of `/socket.io/1/xhr-polling/SID` or `/socket.io/1/websocket/SID`, not in the query (the
/// `legacy` crate serves these paths).
pub fn in_legacy_path(path: &str) -> Option<&str> {
    let mut segments = path.trim_end_matches('/').rsplit('/');
    let sid = segments.next()?;
    let transport = segments.next()?;
    let protocol = segments.next()?;
    (protocol == LEGACY_PROTOCOL
        && matches!(transport, "xhr-polling" | "websocket")
        && !sid.is_empty())
    .then_some(sid)
}

/// The value of the first parameter `name` of a query string, as sent (a parameter whose
/// name only ends in `name` is another one).
pub(crate) fn query_value<'a>(query: &'a str, name: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| {
        pair.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix('='))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_sid_parameter_names_the_session_as_sent() {
        assert_eq!(in_query("EIO=4&transport=polling&sid=AAABx"), Some("AAABx"));
        assert_eq!(in_query("sid=AAABx&EIO=4"), Some("AAABx"));
        assert_eq!(in_query("sid=first&sid=second"), Some("first"));
        assert_eq!(in_query("sid=AA%41Bx"), Some("AA%41Bx"));
        assert_eq!(in_query("sid=%%"), Some("%%"));
        assert_eq!(in_query("sid="), Some(""));
        assert_eq!(in_query("nosid=AAABx&sidx=1"), None);
        assert_eq!(in_query("EIO=4"), None);
        assert_eq!(in_query(""), None);
    }

    #[test]
    fn legacy_transport_paths_name_their_sid() {
        assert_eq!(
            in_legacy_path("/socket.io/1/xhr-polling/AAABx"),
            Some("AAABx")
        );
        assert_eq!(
            in_legacy_path("/socket.io/1/websocket/AAABx/"),
            Some("AAABx")
        );
        assert_eq!(in_legacy_path("/socket.io/1/"), None);
        assert_eq!(in_legacy_path("/socket.io/1/jsonp-polling/AAABx"), None);
        assert_eq!(in_legacy_path("/socket.io/"), None);
        assert_eq!(in_legacy_path("/x/2/websocket/abc"), None);
        assert_eq!(in_legacy_path("/rooms"), None);
    }

    #[test]
    fn the_query_wins_over_the_path() {
        assert_eq!(
            of_request("/socket.io/1/websocket/AAABx", Some("sid=BBBBy")),
            Some("BBBBy")
        );
        assert_eq!(
            of_request("/socket.io/1/websocket/AAABx", Some("t=1")),
            Some("AAABx")
        );
        assert_eq!(of_request("/socket.io/", None), None);
    }
}
