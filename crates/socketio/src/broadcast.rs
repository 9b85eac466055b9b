//! Broadcast operators: `to`, `except`, `volatile`, `local`, then `emit`. The packet is encoded
//! once, and the same frames are queued to every recipient.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::value::RawValue;

use crate::adapter::BroadcastOptions;
use crate::error::EmitError;
use crate::namespace::Namespace;
use crate::packet::{encode, event_array, PacketType};
use crate::recovery::with_offset;
use crate::socket::{event_json, Socket};
use crate::{Room, Sid};

/// Selects recipients in a namespace, then emits to all of them.
#[derive(Debug, Clone)]
pub struct BroadcastOperator {
    ns: Arc<Namespace>,
    opts: BroadcastOptions,
}

impl BroadcastOperator {
    pub(crate) fn new(ns: Arc<Namespace>) -> Self {
        BroadcastOperator {
            ns,
            opts: BroadcastOptions::default(),
        }
    }

    /// Adds a room to the recipients (several `to` calls make a union).
    pub fn to(mut self, room: impl Into<Room>) -> Self {
        self.opts.rooms.push(room.into());
        self
    }

    /// Leaves out the members of a room.
    pub fn except(mut self, room: impl Into<Room>) -> Self {
        self.opts.except.push(room.into());
        self
    }

    pub(crate) fn except_sid(mut self, sid: Sid) -> Self {
        self.opts.except_sids.push(sid);
        self
    }

    /// Drops the packet for clients that cannot take it right now (typing indicators, cursors).
    pub fn volatile(mut self) -> Self {
        self.opts.volatile = true;
        self
    }

    /// Only this process's sockets, even in a cluster.
    pub fn local(mut self) -> Self {
        self.opts.local = true;
        self
    }

    pub fn options(&self) -> &BroadcastOptions {
        &self.opts
    }

    /// Emits an event with one argument. [`EmitError::NotRelayed`] says the local recipients
    /// got it but those of the other processes did not.
    pub fn emit<T: Serialize + ?Sized>(&self, event: &str, data: &T) -> Result<(), EmitError> {
        let json = event_json(event, data)?;
        self.send(&json, &[])
    }

    /// Emits already-encoded arguments and binary attachments.
    pub fn emit_raw(
        &self,
        event: &str,
        args: &[&RawValue],
        binary: &[Bytes],
    ) -> Result<(), EmitError> {
        self.send(&event_array(event, args), binary)
    }

    fn send(&self, json: &str, binary: &[Bytes]) -> Result<(), EmitError> {
        crate::counters::broadcast();
        let encode =
            |json: &str| encode(PacketType::Event, self.ns.path(), None, Some(json), binary);
        let broadcast = |frames: &[_]| self.ns.adapter().broadcast(&self.ns, frames, &self.opts);
        match self.ns.recovery() {
            // Numbered by the store, which hands it to every process in order (a volatile
            // one is numbered but not kept for replay).
            Some(recovery) if !self.opts.local => {
                recovery.append(&self.ns, &encode(json), &self.opts)
            }
            // Not numbered: it carries the offset of the last event delivered here, which
            // keeps the client's offset one of ours.
            Some(recovery) => match recovery.watermark() {
                Some(offset) => broadcast(&with_offset(&encode(json), &offset)),
                None => broadcast(&encode(json)),
            },
            None => broadcast(&encode(json)),
        }
    }

    /// The matching sockets of every process of the app (only this one's with `local()`).
    pub async fn fetch_sockets(&self) -> Vec<crate::SocketInfo> {
        if self.opts.local {
            return self.ns.socket_infos(&self.ns.adapter().sockets(&self.opts));
        }
        self.ns.adapter().fetch_sockets(&self.ns, &self.opts).await
    }

    /// How many sockets match, in every process of the app (only this one with `local()`).
    pub async fn count(&self) -> usize {
        self.fetch_sockets().await.len()
    }

    /// The matching sockets of this process.
    pub fn sockets(&self) -> Vec<Arc<Socket>> {
        self.ns
            .adapter()
            .sockets(&self.opts)
            .iter()
            .filter_map(|sid| self.ns.socket(sid))
            .collect()
    }

    /// Makes the matching sockets join a room.
    pub fn join(&self, room: impl Into<Room>) {
        let room = room.into();
        for socket in self.sockets() {
            socket.join(room.clone());
        }
    }

    /// Makes the matching sockets leave a room.
    pub fn leave(&self, room: &str) {
        for socket in self.sockets() {
            socket.leave(room);
        }
    }

    /// Disconnects the matching sockets from the namespace, wherever they are (only this
    /// process's with `local()`).
    pub fn disconnect(&self) {
        if self.opts.local {
            self.ns
                .disconnect_local(&self.ns.adapter().sockets(&self.opts));
        } else {
            self.ns.adapter().disconnect_sockets(&self.ns, &self.opts);
        }
    }
}
