//! Rooms and broadcast delivery. Every room operation and broadcast of a namespace goes
//! through its [`Adapter`], so a cluster can swap the in-process one for one that also reaches
//! the other workers (through the master or Redis) without touching the rest of the crate.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use engineio::Frame;
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use crate::error::EmitError;
use crate::namespace::Namespace;
use crate::small_set::SmallSet;
use crate::{Room, Sid};

/// Which sockets a broadcast or a query targets.
#[derive(Debug, Clone, Default)]
pub struct BroadcastOptions {
    /// Sockets in any of these rooms; empty means every socket of the namespace.
    pub rooms: Vec<Room>,
    /// Sockets in any of these rooms are left out.
    pub except: Vec<Room>,
    /// These sockets are left out (the sender, for `socket.to(room)`).
    pub except_sids: Vec<Sid>,
    /// Dropped for a client that cannot take it right now, instead of queued.
    pub volatile: bool,
    /// Only this process's sockets, even when the adapter spans several.
    pub local: bool,
}

impl BroadcastOptions {
    /// Whether a broadcast with these options reaches socket `sid`, in `rooms`.
    pub fn is_for(&self, sid: &Sid, rooms: &[Room]) -> bool {
        let member = |room: &Room| room == sid || rooms.contains(room);
        let chosen = self.rooms.is_empty() || self.rooms.iter().any(member);
        chosen && !self.except.iter().any(member) && !self.except_sids.contains(sid)
    }
}

/// A socket of any process of the app, as cross-process queries return it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SocketInfo {
    pub id: String,
    pub rooms: Vec<String>,
}

/// Room membership and broadcast delivery for one namespace.
pub trait Adapter: Send + Sync + 'static {
    /// Adds a socket to rooms.
    fn join(&self, sid: &Sid, rooms: &[Room]);
    /// Removes a socket from one room.
    fn leave(&self, sid: &Sid, room: &str);
    /// Removes a socket from every room (it disconnected).
    fn leave_all(&self, sid: &Sid);
    /// The rooms a local socket is in.
    fn rooms_of(&self, sid: &str) -> Vec<Room>;
    /// The local sockets a broadcast with these options reaches.
    fn sockets(&self, opts: &BroadcastOptions) -> Vec<Sid>;
    /// Every room with local members and how many there are.
    fn rooms(&self) -> Vec<(Room, usize)>;
    /// How many rooms have local members, not counting the sockets' own rooms.
    fn room_count(&self) -> usize;

    /// Delivers an encoded packet. The frames were encoded once; every recipient gets clones of
    /// the same bytes. The default delivers to local sockets only. An adapter that spans
    /// several processes answers [`EmitError::NotRelayed`] when it knows the others will miss
    /// the packet (its queue to them is full, the way to them is down), so the sender can be
    /// told.
    fn broadcast(
        &self,
        ns: &Namespace,
        frames: &[Frame],
        opts: &BroadcastOptions,
    ) -> Result<(), EmitError> {
        ns.deliver(&self.sockets(opts), frames, opts.volatile);
        Ok(())
    }

    /// Hands a broadcast to the other processes only, for them to deliver to their sockets
    /// (a recovery store of this process delivers to its own). The default has no others.
    fn relay(
        &self,
        _ns: &Namespace,
        _frames: &[Frame],
        _opts: &BroadcastOptions,
    ) -> Result<(), EmitError> {
        Ok(())
    }

    /// The matching sockets of every process of the app. The default knows this process's.
    fn fetch_sockets(
        &self,
        ns: &Namespace,
        opts: &BroadcastOptions,
    ) -> BoxFuture<'static, Vec<SocketInfo>> {
        let local = ns.socket_infos(&self.sockets(opts));
        Box::pin(std::future::ready(local))
    }

    /// Disconnects the matching sockets wherever they are. The default reaches this process's.
    fn disconnect_sockets(&self, ns: &Namespace, opts: &BroadcastOptions) {
        ns.disconnect_local(&self.sockets(opts));
    }
}

/// The in-process adapter: rooms live in this process's memory.
#[derive(Debug, Default)]
pub struct LocalAdapter {
    state: RwLock<Rooms>,
}

/// Rooms and their members. Each socket's own room (named by its id) is implied rather than
/// kept: a socket known here is in it, which saves an entry and a set per socket.
#[derive(Debug, Default)]
struct Rooms {
    /// Room -> its members, every room but the sockets' own.
    members: HashMap<Room, SmallSet<Sid>>,
    /// Every socket known here -> its rooms, its own apart.
    rooms_of: HashMap<Sid, SmallSet<Room>>,
}

impl Rooms {
    /// Whether `sid` is in `room`.
    fn is_in(&self, sid: &Sid, room: &Room) -> bool {
        room == sid && self.rooms_of.contains_key(sid)
            || self
                .members
                .get(room)
                .is_some_and(|members| members.contains(sid))
    }

    /// The members of `room`: the socket itself, when it is a socket's own room.
    fn members_of<'a>(&'a self, room: &'a Room) -> impl Iterator<Item = &'a Sid> {
        let own = self.rooms_of.get_key_value(room).map(|(sid, _)| sid);
        own.into_iter()
            .chain(self.members.get(room).into_iter().flat_map(SmallSet::iter))
    }
}

impl Adapter for LocalAdapter {
    fn join(&self, sid: &Sid, rooms: &[Room]) {
        let Ok(mut state) = self.state.write() else {
            return;
        };
        let state = &mut *state;
        let own = state.rooms_of.entry(sid.clone()).or_default();
        for room in rooms {
            if room == sid {
                continue;
            }
            own.insert(room.clone());
            state
                .members
                .entry(room.clone())
                .or_default()
                .insert(sid.clone());
        }
    }

    fn leave(&self, sid: &Sid, room: &str) {
        let Ok(mut state) = self.state.write() else {
            return;
        };
        if let Some(members) = state.members.get_mut(room) {
            members.remove(sid);
            if members.is_empty() {
                state.members.remove(room);
            }
        }
        if let Some(rooms) = state.rooms_of.get_mut(sid) {
            rooms.remove(room);
        }
    }

    fn leave_all(&self, sid: &Sid) {
        let Ok(mut state) = self.state.write() else {
            return;
        };
        let Some(rooms) = state.rooms_of.remove(sid) else {
            return;
        };
        for room in rooms.iter() {
            if let Some(members) = state.members.get_mut(room) {
                members.remove(sid);
                if members.is_empty() {
                    state.members.remove(room);
                }
            }
        }
    }

    fn rooms_of(&self, sid: &str) -> Vec<Room> {
        let Ok(state) = self.state.read() else {
            return Vec::new();
        };
        let Some((own, rooms)) = state.rooms_of.get_key_value(sid) else {
            return Vec::new();
        };
        std::iter::once(own.clone())
            .chain(rooms.iter().cloned())
            .collect()
    }

    fn sockets(&self, opts: &BroadcastOptions) -> Vec<Sid> {
        let Ok(state) = self.state.read() else {
            return Vec::new();
        };
        let excluded = |sid: &Sid| {
            opts.except_sids.contains(sid) || opts.except.iter().any(|room| state.is_in(sid, room))
        };
        if opts.rooms.is_empty() {
            return state
                .rooms_of
                .keys()
                .filter(|sid| !excluded(sid))
                .cloned()
                .collect();
        }
        if let [room] = opts.rooms.as_slice() {
            // One room: its members are distinct already.
            return state
                .members_of(room)
                .filter(|sid| !excluded(sid))
                .cloned()
                .collect();
        }
        let mut seen = HashSet::new();
        let mut sids = Vec::new();
        for room in &opts.rooms {
            for sid in state.members_of(room) {
                if !excluded(sid) && seen.insert(sid) {
                    sids.push(sid.clone());
                }
            }
        }
        sids
    }

    fn room_count(&self) -> usize {
        self.state.read().map_or(0, |state| state.members.len())
    }

    fn rooms(&self) -> Vec<(Room, usize)> {
        let Ok(state) = self.state.read() else {
            return Vec::new();
        };
        let own = state.rooms_of.keys().map(|sid| (sid.clone(), 1));
        state
            .members
            .iter()
            .map(|(room, members)| (room.clone(), members.len()))
            .chain(own)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sid(s: &str) -> Sid {
        Sid::from(s)
    }

    fn sorted(mut v: Vec<Sid>) -> Vec<Sid> {
        v.sort();
        v
    }

    #[test]
    fn counts_rooms_without_the_sockets_own() {
        let adapter = LocalAdapter::default();
        adapter.join(&sid("a"), &[sid("a"), sid("r1")]);
        adapter.join(&sid("b"), &[sid("b"), sid("r1"), sid("r2")]);
        adapter.join(&sid("c"), &[sid("c")]);
        assert_eq!(adapter.room_count(), 2);
        adapter.leave_all(&sid("b"));
        assert_eq!(adapter.room_count(), 1, "r2 went with its last member");
    }

    #[test]
    fn selects_rooms_minus_except_sets() {
        let adapter = LocalAdapter::default();
        adapter.join(&sid("a"), &[sid("a"), sid("r1")]);
        adapter.join(&sid("b"), &[sid("b"), sid("r1"), sid("r2")]);
        adapter.join(&sid("c"), &[sid("c"), sid("r2")]);

        let all = BroadcastOptions::default();
        assert_eq!(
            sorted(adapter.sockets(&all)),
            vec![sid("a"), sid("b"), sid("c")]
        );

        let r1 = BroadcastOptions {
            rooms: vec![sid("r1")],
            ..Default::default()
        };
        assert_eq!(sorted(adapter.sockets(&r1)), vec![sid("a"), sid("b")]);

        let both = BroadcastOptions {
            rooms: vec![sid("r1"), sid("r2")],
            ..Default::default()
        };
        assert_eq!(
            sorted(adapter.sockets(&both)),
            vec![sid("a"), sid("b"), sid("c")]
        );

        let except = BroadcastOptions {
            rooms: vec![sid("r1"), sid("r2")],
            except: vec![sid("r2")],
            ..Default::default()
        };
        assert_eq!(adapter.sockets(&except), vec![sid("a")]);

        let not_sender = BroadcastOptions {
            rooms: vec![sid("r2")],
            except_sids: vec![sid("b")],
            ..Default::default()
        };
        assert_eq!(adapter.sockets(&not_sender), vec![sid("c")]);
    }

    #[test]
    fn leaving_removes_empty_rooms() {
        let adapter = LocalAdapter::default();
        adapter.join(&sid("a"), &[sid("a"), sid("r1")]);
        adapter.join(&sid("b"), &[sid("b"), sid("r1")]);
        adapter.leave(&sid("a"), "r1");
        assert_eq!(adapter.rooms_of("a"), vec![sid("a")]);
        adapter.leave_all(&sid("b"));
        let mut rooms = adapter.rooms();
        rooms.sort();
        assert_eq!(rooms, vec![(sid("a"), 1)]);
        assert!(adapter.rooms_of("b").is_empty());
    }

    #[test]
    fn a_sockets_own_room_is_implied_for_as_long_as_the_socket_is_known() {
        let adapter = LocalAdapter::default();
        adapter.join(&sid("a"), &[sid("a")]);
        adapter.join(&sid("b"), &[sid("b"), sid("r1")]);
        let own = BroadcastOptions {
            rooms: vec![sid("a")],
            ..Default::default()
        };
        assert_eq!(adapter.sockets(&own), vec![sid("a")]);
        let all_but_a = BroadcastOptions {
            except: vec![sid("a")],
            ..Default::default()
        };
        assert_eq!(adapter.sockets(&all_but_a), vec![sid("b")]);
        assert_eq!(adapter.rooms_of("a"), vec![sid("a")]);
        assert_eq!(
            adapter.state.read().unwrap().members.len(),
            1,
            "only r1 is kept"
        );
        adapter.leave_all(&sid("a"));
        assert!(adapter.sockets(&own).is_empty());
        assert!(adapter.rooms_of("a").is_empty());
    }
}
