//! A connection's namespace sockets on their way to another process (live hand-off, see
//! engineio's `handoff.rs`): what a socket is made of (its id, private id, rooms, ack counter,
//! the auth of its CONNECT) leaves as a [`ConnRecord`], and the adopter makes the same sockets
//! again.
//!
//! Events meant for a socket while it moves are not lost: the old process freezes the socket
//! under its namespace's feed lock and notes the offset of the last event delivered there
//! ([`Recovery::while_frozen`]); the adopter restores the socket from the recovery store with
//! that offset, as a returning client would be, and gets every later event in order, without
//! the client being told anything (no CONNECT packet: the client is connected all along).
//! Without recovery the socket keeps its rooms but misses what was sent while it moved.
//!
//! The application's own state of a socket is not carried: the adopter runs the namespace's
//! middlewares and connect handler again, as for a recovered socket (`Socket::recovered` is
//! true), so an application derives it from the handshake as it does after a reconnect.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::connection::{Conn, ConnState};
use crate::recovery::{parse_offset, Digest, Recovery};
use crate::server::{lookup_kept_socket, Dispatcher};
use crate::socket::{DisconnectReason, Socket};

/// The Socket.IO state of one connection, as it crosses to the adopter.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct ConnRecord {
    pub(crate) sockets: Vec<SocketRecord>,
}

/// One namespace socket.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SocketRecord {
    pub(crate) nsp: String,
    pub(crate) sid: String,
    /// The hash of its private id, with recovery on: what its store knows it by (the client
    /// keeps using the id).
    pub(crate) pid_hash: Option<Digest>,
    /// The last event delivered in the old process when the socket froze (`epoch-seq`).
    pub(crate) offset: Option<String>,
    pub(crate) auth: Option<Box<RawValue>>,
    /// The id of the next ack the server asks for.
    pub(crate) next_ack: u64,
    pub(crate) rooms: Vec<String>,
}

/// Bounds on a record from another process.
const MAX_SOCKETS: usize = 64;
const MAX_ROOMS: usize = 10_000;
const MAX_NAME: usize = 1024;

impl ConnRecord {
    pub(crate) fn parse(state: &RawValue) -> Result<ConnRecord, String> {
        let record: ConnRecord =
            serde_json::from_str(state.get()).map_err(|e| format!("malformed record: {e}"))?;
        if record.sockets.len() > MAX_SOCKETS {
            return Err("too many namespaces".into());
        }
        for socket in &record.sockets {
            let names = [&socket.nsp, &socket.sid]
                .into_iter()
                .chain(socket.offset.as_ref());
            if socket.rooms.len() > MAX_ROOMS
                || names.chain(&socket.rooms).any(|name| name.len() > MAX_NAME)
                || socket.sid.is_empty()
                || !socket.nsp.starts_with('/')
            {
                return Err(format!("socket {:?} out of bounds", socket.sid));
            }
            if socket
                .offset
                .as_deref()
                .is_some_and(|o| parse_offset(o).is_none())
            {
                return Err("malformed offset".into());
            }
        }
        Ok(record)
    }
}

/// Freezes `sockets` (sorted by namespace, the order every freeze locks in): each
/// namespace's feed is locked, then `close` runs, so no event is delivered to any of them
/// between the offsets returned (in the same order) and the close.
fn freeze(sockets: &[Arc<Socket>], close: &dyn Fn()) -> Vec<Option<String>> {
    let Some((first, rest)) = sockets.split_first() else {
        close();
        return Vec::new();
    };
    let (offset, mut later) = match first.ns().recovery() {
        Some(recovery) => recovery.while_frozen(|| freeze(rest, close)),
        None => (None, freeze(rest, close)),
    };
    later.insert(0, offset);
    later
}

impl Dispatcher {
    /// See [`engineio::Handler::export`].
    pub(crate) fn export_conn(
        &self,
        socket: &Arc<engineio::Socket<ConnState>>,
        close: &dyn Fn(),
    ) -> Option<Box<RawValue>> {
        let conn = Conn(socket.clone());
        // Attachments half received live only here.
        if conn.data.partial.lock().map_or(true, |p| p.is_waiting()) {
            return None;
        }
        let mut sockets = conn.sockets();
        sockets.sort_by(|a, b| a.ns().path.cmp(&b.ns().path));
        let offsets = freeze(&sockets, close);
        let record = ConnRecord {
            sockets: sockets
                .iter()
                .zip(offsets)
                .map(|(socket, offset)| SocketRecord {
                    nsp: socket.ns().path.clone(),
                    sid: socket.id().to_string(),
                    pid_hash: socket.pid_hash(),
                    offset,
                    auth: socket.handshake().auth.clone(),
                    next_ack: socket.next_ack(),
                    rooms: socket.rooms().iter().map(|room| room.to_string()).collect(),
                })
                .collect(),
        };
        serde_json::value::to_raw_value(&record).ok()
    }

    /// See [`engineio::Handler::import`].
    pub(crate) async fn import_conn(
        &self,
        socket: &Arc<engineio::Socket<ConnState>>,
        state: &RawValue,
    ) -> Result<(), String> {
        let record = ConnRecord::parse(state)?;
        let conn = Conn(socket.clone());
        for socket in record.sockets {
            if let Err(refusal) = self.adopt_socket(&conn, socket).await {
                // The sockets adopted already leave this process quietly: the session is
                // refused whole, and its client, which reconnects, finds them in the store.
                let quietly = DisconnectReason::Transport(engineio::DisconnectReason::HandOff);
                for adopted in conn.forget_all() {
                    adopted.leave_namespace(quietly).await;
                }
                return Err(refusal);
            }
        }
        conn.admit();
        Ok(())
    }

    async fn adopt_socket(&self, conn: &Conn, record: SocketRecord) -> Result<(), String> {
        let ns = self
            .namespace(&record.nsp)
            .ok_or_else(|| format!("no namespace {} here", record.nsp))?;
        let recovery = ns.recovery();
        let attempt = match (recovery, record.pid_hash, &record.offset) {
            (Some(recovery), Some(pid_hash), Some(offset)) => {
                lookup_kept_socket(recovery, conn, pid_hash, offset, false).await
            }
            _ => None,
        };
        let release = |recovery: Option<&Recovery>| {
            if let (Some(attempt), Some(recovery)) = (&attempt, recovery) {
                recovery.release(attempt.hold);
            }
        };
        if attempt
            .as_ref()
            .is_some_and(|a| *a.restored.sid != *record.sid)
        {
            release(recovery);
            return Err("the recovery store keeps another socket for this pid".into());
        }
        let socket = Arc::new(Socket::adopted(
            ns.clone(),
            conn.clone(),
            record.auth,
            record.sid.as_str().into(),
            record.pid_hash,
        ));
        socket.set_next_ack(record.next_ack);
        let handlers = ns.handlers();
        for middleware in &handlers.middlewares {
            if let Err(error) = middleware(socket.clone()).await {
                release(recovery);
                return Err(format!("refused by the namespace's middleware: {error}"));
            }
        }
        socket.set_connected();
        conn.insert(socket.clone());
        match (&attempt, recovery) {
            (Some(attempt), Some(recovery)) => {
                let restored = &attempt.restored;
                let adopted = recovery.adopt(attempt.hold, &attempt.epoch, restored, |frames| {
                    ns.insert(&socket);
                    ns.adapter().join(socket.id(), &restored.rooms);
                    socket.queue(frames)
                });
                match adopted {
                    Some(Ok(())) => {}
                    Some(Err(_)) => return Err("the session closed while adopted".into()),
                    None => return Err("too many events while it moved to replay them".into()),
                }
            }
            _ => {
                if recovery.is_some() && record.pid_hash.is_some() && record.offset.is_some() {
                    // Its store no longer keeps what was sent while it moved (beyond the log's
                    // bounds): what it missed meanwhile is lost, and said.
                    tracing::warn!(
                        sid = %record.sid,
                        "a socket handed over could not be given the events sent while it moved \
                         (its recovery store no longer keeps them: raise --recovery-max-packets)"
                    );
                }
                // Not in the store (recovery off, or no event yet): its rooms as they were.
                ns.insert(&socket);
                let rooms: Vec<crate::Room> = record
                    .rooms
                    .iter()
                    .map(|room| room.as_str().into())
                    .collect();
                ns.adapter().join(socket.id(), &rooms);
            }
        }
        socket.write_through();
        if let Some(on_connect) = handlers.on_connect {
            on_connect(socket).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<ConnRecord, String> {
        ConnRecord::parse(&RawValue::from_string(json.into()).unwrap())
    }

    #[test]
    fn a_record_round_trips_and_bad_ones_are_refused() {
        let record = ConnRecord {
            sockets: vec![SocketRecord {
                nsp: "/chat".into(),
                sid: "abc".into(),
                pid_hash: Some(Digest::of("p")),
                offset: Some("epoch-12".into()),
                auth: Some(RawValue::from_string(r#"{"token":"1"}"#.into()).unwrap()),
                next_ack: 7,
                rooms: vec!["abc".into(), "room:lobby".into()],
            }],
        };
        let json = serde_json::to_string(&record).unwrap();
        let back = parse(&json).unwrap();
        let socket = &back.sockets[0];
        assert_eq!(socket.nsp, "/chat");
        assert_eq!(socket.next_ack, 7);
        assert_eq!(socket.offset.as_deref(), Some("epoch-12"));
        assert_eq!(socket.pid_hash, Some(Digest::of("p")));
        assert_eq!(socket.auth.as_ref().unwrap().get(), r#"{"token":"1"}"#);
        assert_eq!(socket.rooms, ["abc", "room:lobby"]);

        let with_pid = |nsp: &str, sid: &str, offset: &str, pid_hash: &str| {
            format!(
                r#"{{"sockets":[{{"nsp":"{nsp}","sid":"{sid}","pid_hash":{pid_hash},"offset":{offset},"auth":null,"next_ack":0,"rooms":[]}}]}}"#
            )
        };
        let socket = |nsp: &str, sid: &str, offset: &str| with_pid(nsp, sid, offset, "null");
        assert!(parse(&socket("/", "s", "null")).is_ok());
        assert!(parse(&with_pid("/", "s", "null", r#""not hex""#)).is_err());
        assert!(
            parse(&socket("chat", "s", "null")).is_err(),
            "a namespace without /"
        );
        assert!(parse(&socket("/", "", "null")).is_err(), "an empty sid");
        assert!(parse(&socket("/", &"s".repeat(2000), "null")).is_err());
        assert!(parse(&socket("/", "s", r#""no-number""#)).is_err());
        assert!(parse(r#"{"sockets":[{"nsp":1}]}"#).is_err());
        assert!(parse(r#"{"sockets":7}"#).is_err());
        let one = || SocketRecord {
            nsp: "/".into(),
            sid: "s".into(),
            pid_hash: None,
            offset: None,
            auth: None,
            next_ack: 0,
            rooms: Vec::new(),
        };
        let many = ConnRecord {
            sockets: (0..=MAX_SOCKETS).map(|_| one()).collect(),
        };
        let many = serde_json::to_string(&many).unwrap();
        assert!(parse(&many).is_err(), "more namespaces than the bound");
    }
}
