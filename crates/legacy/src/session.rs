//! One 0.9 session: the Engine.IO session it rides on, the endpoint's own messages for the
//! client, and the 0.9 timers (heartbeats, heartbeat timeout, close timeout).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use engineio::{DisconnectReason, Engine, Frame, Message as EngineMessage};
use socketio::Dispatcher;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::LegacyConfig;
use crate::error::CodecError;
use crate::message::{Body, ErrorReason, Message};
use crate::translate::{self, Inbound};

/// The Engine.IO session under a 0.9 session.
pub(crate) type EngineSocket = Arc<engineio::Socket<<Dispatcher as engineio::Handler>::Data>>;

/// What a transport gets when it asks for the client's next messages.
pub(crate) enum Outgoing {
    /// Encoded 0.9 messages, at least one.
    Messages(Vec<String>),
    /// The session is over; `reconnect` says whether the client should open a new one (the
    /// server ended it) rather than stop (the client asked to leave).
    Closed { reconnect: bool },
}

/// When the client was last heard, and whether a transport is attached.
struct Liveness {
    last_seen: Instant,
    /// Transports carrying the session right now (a pending GET, a websocket).
    attached: usize,
    /// Since when no transport is attached (the close timeout counts from here).
    detached_since: Instant,
    next_heartbeat: Instant,
}

/// A 0.9 session, shared by its transports and its timer task.
pub(crate) struct Session {
    pub(crate) socket: EngineSocket,
    config: LegacyConfig,
    /// 0.9 messages of the endpoint's own, not translated from the v4 server: heartbeats and
    /// bare acks. Bounded by `max_control_messages`.
    control: Mutex<VecDeque<String>>,
    /// Woken when `control` gets a message.
    control_added: Notify,
    /// A message that did not fit in the last polling answer; it goes first in the next one.
    carry: Mutex<Option<String>>,
    liveness: Mutex<Liveness>,
    /// Woken when the timers must be recomputed (a transport came or went).
    liveness_changed: Notify,
    /// Serialises the client's messages: POST bodies and websocket frames are handled in order,
    /// one at a time, as the v4 transports do.
    pub(crate) inbound: tokio::sync::Mutex<()>,
    /// Whether the transport already sent `1::` (the default namespace's connect), which 0.9
    /// sends once, on the first transport.
    connect_sent: AtomicBool,
}

/// A transport attached to a session; dropping it detaches it and starts the close timeout.
pub(crate) struct Attached(Arc<Session>);

impl Drop for Attached {
    fn drop(&mut self) {
        if let Ok(mut liveness) = self.0.liveness.lock() {
            liveness.attached = liveness.attached.saturating_sub(1);
            if liveness.attached == 0 {
                liveness.detached_since = Instant::now();
            }
        }
        self.0.liveness_changed.notify_one();
    }
}

impl Session {
    pub(crate) fn new(socket: EngineSocket, config: LegacyConfig) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Session {
            socket,
            liveness: Mutex::new(Liveness {
                last_seen: now,
                attached: 0,
                detached_since: now,
                next_heartbeat: now + config.heartbeat_interval,
            }),
            config,
            control: Mutex::new(VecDeque::new()),
            control_added: Notify::new(),
            carry: Mutex::new(None),
            liveness_changed: Notify::new(),
            inbound: tokio::sync::Mutex::new(()),
            connect_sent: AtomicBool::new(false),
        })
    }

    pub(crate) fn id(&self) -> &str {
        self.socket.id()
    }

    /// Marks a transport as carrying the session until the guard is dropped.
    pub(crate) fn attach(self: &Arc<Self>) -> Attached {
        self.touch();
        if let Ok(mut liveness) = self.liveness.lock() {
            liveness.attached += 1;
        }
        self.liveness_changed.notify_one();
        Attached(self.clone())
    }

    /// The client was heard from.
    pub(crate) fn touch(&self) {
        if let Ok(mut liveness) = self.liveness.lock() {
            liveness.last_seen = Instant::now();
        }
    }

    /// `1::` the first time a transport asks, `None` after.
    pub(crate) fn take_connect(&self) -> Option<String> {
        (!self.connect_sent.swap(true, Ordering::AcqRel))
            .then(|| Message::new(Body::Connect).encode())
    }

    /// Queues a message of the endpoint's own; a client that lets too many pile up is closed.
    fn push_control(&self, message: Message) {
        let Ok(mut control) = self.control.lock() else {
            return;
        };
        if control.len() >= self.config.max_control_messages {
            drop(control);
            self.socket.close(DisconnectReason::SlowClient);
            return;
        }
        control.push_back(message.encode());
        drop(control);
        self.control_added.notify_one();
    }

    /// Handles one message text from the client. An error means the client broke the
    /// protocol; the caller closes the session.
    pub(crate) async fn receive(
        &self,
        engine: &Arc<Engine<Dispatcher>>,
        text: &str,
    ) -> Result<(), CodecError> {
        self.touch();
        let message = Message::decode(text)?;
        match translate::inbound(message)? {
            Inbound::Nothing => {}
            Inbound::CloseSession => self.socket.close(DisconnectReason::ClientClose),
            Inbound::Packet { text, receipt } => {
                if let Some(receipt) = receipt {
                    self.push_control(receipt);
                }
                engine
                    .receive_external(&self.socket, EngineMessage::Text(text.into()))
                    .await;
            }
        }
        Ok(())
    }

    /// Handles a whole polling body or websocket frame; a protocol error closes the session
    /// (and only it).
    pub(crate) async fn receive_payload(&self, engine: &Arc<Engine<Dispatcher>>, body: &str) {
        let _in_order = self.inbound.lock().await;
        let result = match crate::framing::decode_payload(body) {
            Ok(messages) => {
                let mut result = Ok(());
                for message in messages {
                    result = self.receive(engine, message).await;
                    if result.is_err() || self.socket.is_closed() {
                        break;
                    }
                }
                result
            }
            Err(error) => Err(error),
        };
        if let Err(error) = result {
            tracing::debug!(sid = self.id(), %error, "malformed 0.9 message; closing the session");
            self.socket.close(DisconnectReason::PacketParsing);
        }
    }

    /// Waits until there is something for the client, then takes what is ready, up to about
    /// `limit` bytes (at least one message, however large).
    pub(crate) async fn next_messages(&self, limit: usize) -> Outgoing {
        loop {
            let ready = self.take_ready(limit);
            if !ready.is_empty() {
                return Outgoing::Messages(ready);
            }
            if self.socket.is_closed() {
                return self.closed();
            }
            let added = self.control_added.notified();
            tokio::select! {
                biased;
                frame = self.socket.next_external_frame() => match frame {
                    Some(frame) => {
                        if let Some(message) = translate_frame(&frame) {
                            self.put_carry(message);
                        }
                    }
                    None => return self.closed(),
                },
                _ = added => {}
            }
        }
    }

    fn closed(&self) -> Outgoing {
        Outgoing::Closed {
            reconnect: self.socket.close_reason() != Some(DisconnectReason::ClientClose),
        }
    }

    fn put_carry(&self, message: String) {
        if let Ok(mut carry) = self.carry.lock() {
            // Only `next_messages` fills the carry, after `take_ready` emptied it.
            debug_assert!(carry.is_none());
            *carry = Some(message);
        }
    }

    /// What is ready now: the carried message, the endpoint's own, then the v4 server's.
    fn take_ready(&self, limit: usize) -> Vec<String> {
        let mut ready = Vec::new();
        let mut size = 0;
        let mut fits = |message: &str, ready: &Vec<String>| {
            let framed = crate::framing::framed_len(message);
            let fits = ready.is_empty() || size + framed <= limit;
            if fits {
                size += framed;
            }
            fits
        };
        if let Some(message) = self.carry.lock().ok().and_then(|mut c| c.take()) {
            fits(&message, &ready);
            ready.push(message);
        }
        if let Ok(mut control) = self.control.lock() {
            while let Some(message) = control.front() {
                if !fits(message, &ready) {
                    return ready;
                }
                ready.extend(control.pop_front());
            }
        }
        while let Some(frame) = self.socket.try_next_external_frame() {
            let Some(message) = translate_frame(&frame) else {
                continue;
            };
            if !fits(&message, &ready) {
                self.put_carry(message);
                break;
            }
            ready.push(message);
        }
        ready
    }

    /// The 0.9 timers, until the session ends: heartbeats to the client, the heartbeat timeout
    /// (the client went quiet) and the close timeout (no transport came back).
    pub(crate) async fn run_timers(self: Arc<Self>) {
        loop {
            let (deadline, attached) = {
                let Ok(liveness) = self.liveness.lock() else {
                    return;
                };
                let mut deadline = (liveness.last_seen + self.config.heartbeat_timeout)
                    .min(liveness.next_heartbeat);
                if liveness.attached == 0 {
                    deadline = deadline.min(liveness.detached_since + self.config.close_timeout);
                }
                (deadline, liveness.attached)
            };
            let changed = self.liveness_changed.notified();
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => {}
                _ = changed => continue,
                _ = self.socket.closed() => return,
            }
            let now = Instant::now();
            let (silent, abandoned, heartbeat_due) = {
                let Ok(mut liveness) = self.liveness.lock() else {
                    return;
                };
                let heartbeat_due = now >= liveness.next_heartbeat;
                if heartbeat_due {
                    liveness.next_heartbeat = now + self.config.heartbeat_interval;
                }
                (
                    now >= liveness.last_seen + self.config.heartbeat_timeout,
                    attached == 0
                        && liveness.attached == 0
                        && now >= liveness.detached_since + self.config.close_timeout,
                    heartbeat_due,
                )
            };
            if silent {
                tracing::debug!(sid = self.id(), "0.9 heartbeat timeout");
                self.socket.close(DisconnectReason::PingTimeout);
                return;
            }
            if abandoned {
                tracing::debug!(sid = self.id(), "0.9 close timeout: no transport came back");
                self.socket.close(DisconnectReason::TransportClose);
                return;
            }
            if heartbeat_due {
                self.push_control(Message::new(Body::Heartbeat));
            }
        }
    }
}

/// The 0.9 message for a frame of the v4 server, if it has one.
fn translate_frame(frame: &Frame) -> Option<String> {
    match frame {
        Frame::Text(text) => {
            let packet = text.strip_prefix('4')?;
            translate::outbound(packet).map(|message| message.encode())
        }
        Frame::Binary(_) => None,
    }
}

/// What a client is told when the server ended its session: reconnect (a new handshake).
pub(crate) fn reconnect_advice() -> String {
    Message::new(Body::Error {
        reason: Some(ErrorReason::ClientNotHandshaken),
        reconnect: true,
    })
    .encode()
}
