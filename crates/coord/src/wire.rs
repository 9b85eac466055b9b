//! How broadcasts travel between workers, through the master or Redis: JSON, with binary
//! frames in base64. A broadcast is encoded once by its sender and decoded once per receiving
//! worker.

use base64::Engine as _;
use engineio::{Frame, Str};
use serde::{Deserialize, Serialize};
use socketio::{BroadcastOptions, Mark, Own, Room};

/// A broadcast for the other workers: the encoded packet and who it is for.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireBroadcast {
    pub ns: String,
    pub rooms: Vec<String>,
    pub except: Vec<String>,
    pub volatile: bool,
    /// Text frames as they go on the wire, binary frames in base64 behind a `b`.
    pub frames: Vec<String>,
    /// Not a packet: the matching sockets are to be disconnected (`io.to(room).disconnect()`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disconnect: bool,
    /// Sockets left out (the sender of `socket.to(room)`): a numbered event reaches the
    /// sender's worker through its store too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except_sids: Vec<String>,
    /// Its number and the epoch of its recovery log, once a store numbered it (see
    /// [`socketio::SessionStore`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<String>,
    /// Its sender's mark, from a worker that delivers its own events first (see
    /// [`socketio::SessionStore::own_first`]), and whether it did with this one: the master
    /// then hands it to the other workers only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark: Option<Mark>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub first: bool,
    /// For its sender's sockets alone (a socket's own emit): numbered and kept, but handed to
    /// no other worker.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub local: bool,
    /// How many of its sender's events the master has handed on, this one included, for a
    /// worker to tell one it missed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handed: Option<u64>,
}

impl WireBroadcast {
    pub fn new(ns: &str, frames: &[Frame], opts: &BroadcastOptions) -> Self {
        WireBroadcast {
            ns: ns.to_owned(),
            rooms: opts.rooms.iter().map(|r| r.to_string()).collect(),
            except: opts.except.iter().map(|r| r.to_string()).collect(),
            volatile: opts.volatile,
            frames: frames
                .iter()
                .map(|frame| match frame {
                    Frame::Text(text) => format!("t{}", text.as_str()),
                    Frame::Binary(data) => format!(
                        "b{}",
                        base64::engine::general_purpose::STANDARD.encode(data)
                    ),
                })
                .collect(),
            disconnect: false,
            except_sids: opts.except_sids.iter().map(|s| s.to_string()).collect(),
            seq: None,
            epoch: None,
            mark: None,
            first: false,
            local: false,
            handed: None,
        }
    }

    /// The sender's side of it, as a store hands it on.
    pub fn own(&self) -> Option<Own> {
        self.mark.map(|mark| Own {
            mark,
            delivered: self.first,
            handed: self.handed,
        })
    }

    /// An order to disconnect the matching sockets, for the other workers.
    pub fn disconnect(ns: &str, opts: &BroadcastOptions) -> Self {
        WireBroadcast {
            disconnect: true,
            ..WireBroadcast::new(ns, &[], opts)
        }
    }

    /// What a worker does with a broadcast from another: deliver its frames to the matching
    /// local sockets, or disconnect them. False for a malformed one.
    pub fn apply(self, io: &socketio::SocketIo) -> bool {
        let disconnect = self.disconnect;
        let numbered = self.seq.zip(self.epoch.clone());
        let own = self.own();
        let Some((ns, frames, opts)) = self.decode() else {
            return false;
        };
        if let Some(ns) = io.of(&ns) {
            if let Some((seq, epoch)) = numbered {
                ns.deliver_sequenced(&epoch, seq, own, &frames, &opts);
                return true;
            }
            let sids = ns.adapter().sockets(&opts);
            if disconnect {
                ns.disconnect_local(&sids);
            } else {
                ns.deliver(&sids, &frames, opts.volatile);
            }
        }
        true
    }

    /// The frames and the options to select local recipients with. `None` for a malformed one.
    pub fn decode(self) -> Option<(String, Vec<Frame>, BroadcastOptions)> {
        let mut frames = Vec::with_capacity(self.frames.len());
        for frame in self.frames {
            let frame = match frame.split_at_checked(1)? {
                ("t", text) => Frame::Text(Str::from(text)),
                ("b", data) => Frame::binary(
                    base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .ok()?
                        .into(),
                ),
                _ => return None,
            };
            frames.push(frame);
        }
        let opts = BroadcastOptions {
            rooms: self.rooms.into_iter().map(Room::from).collect(),
            except: self.except.into_iter().map(Room::from).collect(),
            except_sids: self
                .except_sids
                .into_iter()
                .map(socketio::Sid::from)
                .collect(),
            volatile: self.volatile,
            local: true,
        };
        Some((self.ns, frames, opts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasts_round_trip() {
        let frames = vec![
            Frame::message("2[\"a\"]"),
            Frame::binary(vec![1u8, 2, 3].into()),
        ];
        let opts = BroadcastOptions {
            rooms: vec![Room::from("r")],
            except: vec![Room::from("x")],
            volatile: true,
            ..Default::default()
        };
        let wire = WireBroadcast::new("/chat", &frames, &opts);
        let json = serde_json::to_string(&wire).unwrap();
        let (ns, decoded, decoded_opts) = serde_json::from_str::<WireBroadcast>(&json)
            .unwrap()
            .decode()
            .unwrap();
        assert_eq!(ns, "/chat");
        assert_eq!(decoded, frames);
        assert_eq!(decoded_opts.rooms, opts.rooms);
        assert_eq!(decoded_opts.except, opts.except);
        assert!(decoded_opts.volatile && decoded_opts.local);
    }

    #[test]
    fn malformed_broadcasts_are_refused() {
        let wire = WireBroadcast {
            frames: vec!["x".into()],
            ..WireBroadcast::new("/", &[], &BroadcastOptions::default())
        };
        assert!(wire.decode().is_none());
        let wire = WireBroadcast {
            frames: vec!["b!!".into()],
            ..WireBroadcast::new("/", &[], &BroadcastOptions::default())
        };
        assert!(wire.decode().is_none());
    }
}
