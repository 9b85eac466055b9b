//! One simulated chat user: logs in, connects both namespaces, joins its room, then sends and
//! receives as the run's control says.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

use crate::protocol::{self, Packet, Stamp, COM, INFRA};
use crate::run::shared::{Control, Shared};
use crate::stats::SeenMessages;
use crate::transport::{Connection, Endpoint, Text};
use crate::BenchError;

/// How long a client leaving at the end of a run waits for the server to acknowledge it.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Pause after a failed churn cycle.
const CHURN_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Where client `index` connects: the target, from the next source address in turn.
fn endpoint(shared: &Shared, index: u32) -> Endpoint<'_> {
    let sources = &shared.config.sources;
    Endpoint {
        target: &shared.config.target,
        source: (!sources.is_empty()).then(|| sources[index as usize % sources.len()]),
    }
}

/// Why a joined client's loop ended.
enum Ended {
    /// The run told it to stop; the connection is still open.
    Stopped(Connection),
    /// The connection broke or the server closed it.
    Lost(BenchError),
}

/// One client of the run.
pub(crate) struct ChatUser {
    shared: Arc<Shared>,
    index: u32,
    nickname: String,
    /// Its room's name and slot in `Shared::room_members`.
    room: String,
    room_slot: usize,
    polling: bool,
    /// The login, kept across the reconnections of `churn`.
    cookie: Option<HeaderValue>,
    /// What connecting waits for now: named in a timeout.
    stage: &'static str,
    /// Bytes of packets received, added to the run's total when the client is done (one shared
    /// counter touched per packet would cost the load generator at millions a second).
    received: u64,
}

/// Adds what `received` brought to `total`.
fn tally(
    total: &mut u64,
    received: Result<Option<Text>, BenchError>,
) -> Result<Option<Text>, BenchError> {
    if let Ok(Some(text)) = &received {
        *total += text.as_str().len() as u64;
    }
    received
}

impl Drop for ChatUser {
    /// The client is done, whichever way: what it received counts.
    fn drop(&mut self) {
        self.shared.received(self.received);
    }
}

impl ChatUser {
    pub(crate) fn new(shared: Arc<Shared>, index: u32) -> Self {
        let room_slot = (index / shared.room_size) as usize;
        ChatUser {
            // Unique across the chat-bench processes of one load (run.sh splits large runs).
            nickname: format!("b{}-{}", std::process::id(), index),
            room: format!("{}{}", shared.room_prefix, room_slot),
            room_slot,
            polling: shared.config.transport.polling_for(index),
            cookie: None,
            stage: "",
            received: 0,
            index,
            shared,
        }
    }

    /// Connects, joins and then follows the run's control until told to stop (idle, chat,
    /// fanout).
    pub(crate) async fn run_member(mut self) {
        let started = Instant::now();
        let connection = match self.connect_and_join_in_time().await {
            Ok(connection) => connection,
            Err(error) => {
                self.shared.connect_failed(&error);
                return;
            }
        };
        self.shared
            .joined(self.index, self.room_slot, started.elapsed());
        let ended = self.follow_control(connection).await;
        self.shared.room_members[self.room_slot].fetch_sub(1, Ordering::Relaxed);
        match ended {
            // Say goodbye rather than drop the sockets: a long-polling session would otherwise
            // linger on the server until its heartbeat times out, into the next run.
            Ended::Stopped(connection) => {
                let _ = tokio::time::timeout(CLOSE_GRACE, connection.close()).await;
            }
            Ended::Lost(error) => self
                .shared
                .error(&format!("client {} disconnected", self.index), &error),
        }
    }

    /// Connect → join → disconnect until told to stop (churn).
    pub(crate) async fn run_churn(mut self) {
        let control = self.shared.control.subscribe();
        let timeout = self.shared.config.connect_timeout;
        let mut first = true;
        while *control.borrow() != Control::Stop {
            let started = Instant::now();
            match self.connect_and_join_in_time().await {
                Ok(connection) => {
                    let connect_latency = started.elapsed();
                    let _ = tokio::time::timeout(timeout, connection.close()).await;
                    self.shared.cycle_completed(
                        connect_latency,
                        started.elapsed(),
                        first,
                        self.index,
                    );
                    first = false;
                }
                Err(error) => {
                    self.shared.cycle_failed(&error);
                    // A server that refuses at once must not turn this loop into a busy spin.
                    tokio::time::sleep(CHURN_RETRY_PAUSE).await;
                }
            }
        }
    }

    async fn connect_and_join_in_time(&mut self) -> Result<Connection, BenchError> {
        let after = self.shared.config.connect_timeout;
        match tokio::time::timeout(after, self.connect_and_join()).await {
            Ok(joined) => joined,
            Err(_) => Err(BenchError::Timeout {
                after,
                waiting_for: self.stage,
            }),
        }
    }

    async fn connect_and_join(&mut self) -> Result<Connection, BenchError> {
        self.stage = "the login and the Engine.IO handshake";
        // A clone, so that the endpoint's borrow does not hold `self` while the cookie is set.
        let shared = self.shared.clone();
        let endpoint = endpoint(&shared, self.index);
        let mut connection =
            Connection::open(endpoint, self.polling, &self.nickname, &mut self.cookie).await?;
        // The server speaks first: its handshake.
        self.stage = "the open packet";
        let text = tally(&mut self.received, connection.recv().await)?.ok_or(BenchError::Closed)?;
        if !matches!(Packet::decode(text.as_str()), Packet::Open(_)) {
            return Err(BenchError::Protocol(format!(
                "expected the open packet, got {:?}",
                text.as_str()
            )));
        }
        connection
            .send_all(vec![
                protocol::connect_namespace(INFRA),
                protocol::connect_namespace(COM),
            ])
            .await?;
        self.stage = "both namespaces to accept";
        let mut waiting_for = 2;
        while waiting_for > 0 {
            let text =
                tally(&mut self.received, connection.recv().await)?.ok_or(BenchError::Closed)?;
            match Packet::decode(text.as_str()) {
                Packet::Connected { namespace } if namespace == INFRA || namespace == COM => {
                    waiting_for -= 1
                }
                Packet::ConnectError { namespace, data } => {
                    return Err(BenchError::ConnectRefused {
                        namespace: namespace.to_owned(),
                        reason: data.to_owned(),
                    })
                }
                packet => Self::answer_in_setup(&mut connection, packet).await?,
            }
        }
        self.stage = "name_set after join_room";
        connection.send(protocol::join_room(&self.room)).await?;
        loop {
            let text =
                tally(&mut self.received, connection.recv().await)?.ok_or(BenchError::Closed)?;
            match Packet::decode(text.as_str()) {
                // Sent to this socket only, after the server recorded the membership.
                Packet::Event {
                    namespace: INFRA,
                    name: "name_set",
                    ..
                } => break,
                packet => Self::answer_in_setup(&mut connection, packet).await?,
            }
        }
        Ok(connection)
    }

    /// Heartbeats and errors while connecting.
    async fn answer_in_setup(
        connection: &mut Connection,
        packet: Packet<'_>,
    ) -> Result<(), BenchError> {
        match packet {
            Packet::Ping => connection.send("3".into()).await,
            Packet::Close | Packet::Disconnected { .. } => Err(BenchError::Closed),
            Packet::Event {
                name: "error",
                data,
                ..
            } => Err(BenchError::ErrorEvent(data.to_owned())),
            _ => Ok(()),
        }
    }

    /// Receives, answers heartbeats and sends on schedule until the run says stop.
    async fn follow_control(&mut self, mut connection: Connection) -> Ended {
        let shared = self.shared.clone();
        let mut control = shared.control.subscribe();
        let mut seen = SeenMessages::default();
        let mut seq: u32 = 0;
        // (phase, interval) while this client sends; no interval: one message, then stop.
        let mut sending: Option<(u16, Option<Duration>)> = None;
        let next_send = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(next_send);
        let index = self.index;
        let first_of_room = index.is_multiple_of(shared.room_size);
        let apply = |control: Control,
                     sending: &mut Option<(u16, Option<Duration>)>,
                     next_send: std::pin::Pin<&mut tokio::time::Sleep>| {
            match control {
                Control::Send {
                    phase,
                    rate,
                    sender,
                } if rate > 0.0 && sender.is_none_or(|s| s == index) => {
                    let interval = Duration::from_secs_f64(1.0 / rate);
                    if sending.map(|(_, i)| i) != Some(Some(interval)) {
                        // Spread the clients' sends over the interval instead of all at once.
                        let offset = (f64::from(index) * 0.618_033_988_75).fract();
                        next_send.reset(Instant::now() + interval.mul_f64(offset));
                    }
                    *sending = Some((phase, Some(interval)));
                    true
                }
                Control::Probe { phase } if first_of_room => {
                    next_send.reset(Instant::now());
                    *sending = Some((phase, None));
                    true
                }
                Control::Stop => false,
                Control::Send { .. } | Control::Probe { .. } | Control::Hold => {
                    *sending = None;
                    true
                }
            }
        };
        if !apply(
            *control.borrow_and_update(),
            &mut sending,
            next_send.as_mut(),
        ) {
            return Ended::Stopped(connection);
        }
        loop {
            tokio::select! {
                changed = control.changed() => {
                    if changed.is_err() || !apply(*control.borrow_and_update(), &mut sending, next_send.as_mut()) {
                        return Ended::Stopped(connection);
                    }
                }
                received = connection.recv() => {
                    let text = match tally(&mut self.received, received) {
                        Ok(Some(text)) => text,
                        Ok(None) => return Ended::Lost(BenchError::Closed),
                        Err(error) => return Ended::Lost(error),
                    };
                    match Packet::decode(text.as_str()) {
                        Packet::Event { namespace: COM, name: "message", data } => {
                            if let Some(stamp) = Stamp::find(data) {
                                if stamp.sender != self.index {
                                    let duplicate = !seen.first_time(stamp.sender, stamp.seq);
                                    let latency = shared.now_us().saturating_sub(stamp.sent_us);
                                    shared.deliveries.record(stamp.phase, latency, duplicate);
                                }
                            }
                        }
                        Packet::Ping => {
                            if let Err(error) = connection.send("3".into()).await {
                                return Ended::Lost(error);
                            }
                        }
                        Packet::Event { name: "error", data, .. } => {
                            shared.error(&format!("client {}", self.index), &BenchError::ErrorEvent(data.to_owned()));
                        }
                        Packet::Close | Packet::Disconnected { .. } => return Ended::Lost(BenchError::Closed),
                        _ => {}
                    }
                }
                () = &mut next_send, if sending.is_some() => {
                    let Some((phase, interval)) = sending else { continue };
                    // A new control first: no message may leave after the run said hold.
                    if control.has_changed().unwrap_or(true) {
                        continue;
                    }
                    let stamp = Stamp { sender: self.index, seq, phase, sent_us: shared.now_us() };
                    seq = seq.wrapping_add(1);
                    let members = shared.room_members[self.room_slot].load(Ordering::Relaxed);
                    shared.message_sent(phase, u64::from(members.saturating_sub(1)));
                    let mut packet = String::with_capacity(shared.config.message_bytes + 96);
                    stamp.write_message(&mut packet, shared.config.message_bytes);
                    if let Err(error) = connection.send(packet).await {
                        return Ended::Lost(error);
                    }
                    let Some(interval) = interval else {
                        sending = None;
                        continue;
                    };
                    // Keep the schedule (late sends catch up), but after a stall of more than a
                    // second start afresh rather than burst.
                    let now = Instant::now();
                    let mut next = next_send.deadline() + interval;
                    if next + Duration::from_secs(1) < now {
                        next = now;
                    }
                    next_send.as_mut().reset(next);
                }
            }
        }
    }
}
