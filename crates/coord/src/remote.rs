//! The adapter of a namespace whose sockets are spread over several workers: rooms of this
//! worker's sockets, plus every broadcast, disconnect order and question also handed to the
//! other workers through a [`Driver`] (the master's relay, or Redis pub/sub). What the
//! workers do with what they receive is here too, so both drivers deliver and answer alike.

use std::collections::HashMap;
use std::sync::Mutex;

use engineio::Frame;
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use socketio::{
    Adapter, BroadcastOptions, EmitError, LocalAdapter, Namespace, Room, Sid, SocketInfo, SocketIo,
};

use crate::wire::WireBroadcast;

/// How one namespace's adapter reaches the other workers.
pub trait Driver: Send + Sync + 'static {
    /// Whether the other workers hear a room's broadcasts only while this one subscribes to
    /// the room (Redis: a channel per room): then the adapter reports the first local join of
    /// a room and its last local leave.
    const ROOM_SUBSCRIPTIONS: bool;

    /// Hands a broadcast, or a disconnect order, to the other workers without waiting for
    /// them. [`EmitError::NotRelayed`] when they will most likely miss it.
    fn publish(&self, message: WireBroadcast) -> Result<(), EmitError>;

    /// This worker now has sockets in `room` (with [`Driver::ROOM_SUBSCRIPTIONS`]).
    fn subscribe(&self, _room: &str) {}

    /// This worker no longer has sockets in `room` (with [`Driver::ROOM_SUBSCRIPTIONS`]).
    fn unsubscribe(&self, _room: &str) {}

    /// The other workers' sockets that match `query` (a broadcast without frames), as many as
    /// answered in time.
    fn ask_others(&self, query: WireBroadcast) -> BoxFuture<'static, Vec<SocketInfo>>;
}

/// Rooms of this worker's sockets, plus publication of every broadcast to the other workers,
/// which deliver it to their own members of the same rooms.
pub struct RemoteAdapter<D> {
    local: LocalAdapter,
    driver: D,
    /// Room -> how many local sockets are in it, kept only for drivers with room
    /// subscriptions. Changed under this lock so the first join and the last leave of a room,
    /// which (un)subscribe it, are each seen once.
    rooms: Mutex<HashMap<Room, usize>>,
}

impl<D: Driver> RemoteAdapter<D> {
    pub fn new(driver: impl Into<D>) -> Self {
        RemoteAdapter {
            local: LocalAdapter::default(),
            driver: driver.into(),
            rooms: Mutex::new(HashMap::new()),
        }
    }

    fn room_left(&self, rooms: &mut HashMap<Room, usize>, room: &str) {
        if let Some(count) = rooms.get_mut(room) {
            *count -= 1;
            if *count == 0 {
                rooms.remove(room);
                self.driver.unsubscribe(room);
            }
        }
    }
}

impl<D: Driver> Adapter for RemoteAdapter<D> {
    fn join(&self, sid: &Sid, rooms: &[Room]) {
        if !D::ROOM_SUBSCRIPTIONS {
            return self.local.join(sid, rooms);
        }
        let Ok(mut counts) = self.rooms.lock() else {
            return;
        };
        let current = self.local.rooms_of(sid);
        for room in rooms {
            if current.contains(room) {
                continue;
            }
            let count = counts.entry(room.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                self.driver.subscribe(room);
            }
        }
        self.local.join(sid, rooms);
    }

    fn leave(&self, sid: &Sid, room: &str) {
        if !D::ROOM_SUBSCRIPTIONS {
            return self.local.leave(sid, room);
        }
        let Ok(mut counts) = self.rooms.lock() else {
            return;
        };
        if self.local.rooms_of(sid).iter().any(|r| &**r == room) {
            self.room_left(&mut counts, room);
        }
        self.local.leave(sid, room);
    }

    fn leave_all(&self, sid: &Sid) {
        if !D::ROOM_SUBSCRIPTIONS {
            return self.local.leave_all(sid);
        }
        let Ok(mut counts) = self.rooms.lock() else {
            return;
        };
        for room in self.local.rooms_of(sid) {
            self.room_left(&mut counts, &room);
        }
        self.local.leave_all(sid);
    }

    fn rooms_of(&self, sid: &str) -> Vec<Room> {
        self.local.rooms_of(sid)
    }

    fn sockets(&self, opts: &BroadcastOptions) -> Vec<Sid> {
        self.local.sockets(opts)
    }

    fn rooms(&self) -> Vec<(Room, usize)> {
        self.local.rooms()
    }

    fn room_count(&self) -> usize {
        self.local.room_count()
    }

    fn broadcast(
        &self,
        ns: &Namespace,
        frames: &[Frame],
        opts: &BroadcastOptions,
    ) -> Result<(), EmitError> {
        // The other workers first: their share of a big room then goes out while this worker
        // writes its own, instead of after it (the way to them is a task that would otherwise
        // wait behind every local writer this delivery wakes).
        let relayed = if opts.local {
            Ok(())
        } else {
            self.driver
                .publish(WireBroadcast::new(ns.path(), frames, opts))
        };
        ns.deliver(&self.local.sockets(opts), frames, opts.volatile);
        relayed
    }

    fn relay(
        &self,
        ns: &Namespace,
        frames: &[Frame],
        opts: &BroadcastOptions,
    ) -> Result<(), EmitError> {
        if opts.local {
            return Ok(());
        }
        self.driver
            .publish(WireBroadcast::new(ns.path(), frames, opts))
    }

    /// The order travels like a broadcast to the same sockets.
    fn disconnect_sockets(&self, ns: &Namespace, opts: &BroadcastOptions) {
        ns.disconnect_local(&self.local.sockets(opts));
        if !opts.local {
            // Nobody waits for the order; a driver logs or counts what it could not send.
            let _ = self
                .driver
                .publish(WireBroadcast::disconnect(ns.path(), opts));
        }
    }

    fn fetch_sockets(
        &self,
        ns: &Namespace,
        opts: &BroadcastOptions,
    ) -> BoxFuture<'static, Vec<SocketInfo>> {
        let mut sockets = ns.socket_infos(&self.local.sockets(opts));
        if opts.local {
            return std::future::ready(sockets).boxed();
        }
        let others = self
            .driver
            .ask_others(WireBroadcast::new(ns.path(), &[], opts));
        async move {
            sockets.extend(others.await);
            sockets
        }
        .boxed()
    }
}

/// What a worker does with a broadcast or disconnect order from another: applies it to its
/// own matching sockets.
pub(crate) fn deliver(io: &SocketIo, message: WireBroadcast, from: &str) {
    if !message.apply(io) {
        tracing::warn!("skipping a malformed broadcast from {from}");
    }
}

/// This worker's sockets that match another worker's question (none for a namespace it does
/// not serve, or a malformed question).
pub(crate) fn matching_sockets(io: &SocketIo, query: WireBroadcast) -> Vec<SocketInfo> {
    query
        .decode()
        .and_then(|(ns, _, opts)| {
            let ns = io.of(&ns)?;
            Some(ns.socket_infos(&ns.adapter().sockets(&opts)))
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records the room subscriptions an adapter asks for.
    #[derive(Default)]
    struct Recorder {
        changes: Mutex<Vec<(String, bool)>>,
    }

    impl Driver for Recorder {
        const ROOM_SUBSCRIPTIONS: bool = true;

        fn publish(&self, _: WireBroadcast) -> Result<(), EmitError> {
            Ok(())
        }

        fn subscribe(&self, room: &str) {
            self.changes.lock().unwrap().push((room.to_owned(), true));
        }

        fn unsubscribe(&self, room: &str) {
            self.changes.lock().unwrap().push((room.to_owned(), false));
        }

        fn ask_others(&self, _: WireBroadcast) -> BoxFuture<'static, Vec<SocketInfo>> {
            std::future::ready(Vec::new()).boxed()
        }
    }

    #[test]
    fn a_room_is_subscribed_from_its_first_local_member_to_its_last() {
        let adapter = RemoteAdapter::<Recorder>::new(Recorder::default());
        let (a, b): (Sid, Sid) = ("a".into(), "b".into());
        let room: Room = "r".into();
        adapter.join(&a, std::slice::from_ref(&room));
        // Joining twice, or a second member, changes nothing.
        adapter.join(&a, std::slice::from_ref(&room));
        adapter.join(&b, std::slice::from_ref(&room));
        adapter.leave(&a, "r");
        adapter.leave(&a, "r");
        assert_eq!(
            *adapter.driver.changes.lock().unwrap(),
            vec![("r".to_owned(), true)]
        );
        adapter.leave_all(&b);
        assert_eq!(
            *adapter.driver.changes.lock().unwrap(),
            vec![("r".to_owned(), true), ("r".to_owned(), false)]
        );
        assert!(adapter.rooms.lock().unwrap().is_empty());
    }
}
