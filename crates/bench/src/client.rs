//! One simulated chat user: logs in, connects both namespaces, joins its room, then sends and
//! receives as the run's control says. A connection lost during the run is reconnected the way
//! the official client does it, with connection-state recovery ([`crate::recovery`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderValue;
use tokio::time::Instant;

use crate::protocol::{self, Packet, Stamp, COM, INFRA};
use crate::recovery::{Recovery, Unconfirmed, UnconfirmedSends};
use crate::run::shared::{Control, Shared, SocketsBack};
use crate::stats::SeenMessages;
use crate::transport::{Connection, Endpoint, Text};
use crate::BenchError;

/// How long a client leaving at the end of a run waits for the server to acknowledge it.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Pause after a failed churn cycle.
const CHURN_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// Pause after the first failed reconnection attempt, doubled after each one up to
/// [`RECONNECT_LONGEST_PAUSE`]; the attempts end after the connect timeout.
const RECONNECT_FIRST_PAUSE: Duration = Duration::from_millis(100);
const RECONNECT_LONGEST_PAUSE: Duration = Duration::from_secs(1);

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
    /// The connection broke or the server closed it: the client reconnects.
    Lost(BenchError),
    /// The server disconnected a namespace (`41`): not reconnected, as by the official client.
    Dropped(BenchError),
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
    /// Set once it joined its room: messages count as deliveries from then on, across
    /// reconnections (it stays counted as a member while it reconnects).
    joined: bool,
    /// The pids and offsets its sockets need to be recovered after a lost connection.
    recovery: Recovery,
    /// What it received, by sender: a recovery's replay must not count a message twice.
    seen: SeenMessages,
    /// Its next message's number, kept across reconnections so receivers tell messages apart.
    seq: u32,
    /// Its messages not echoed back yet: those a lost connection swallowed.
    unconfirmed: UnconfirmedSends,
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
            joined: false,
            recovery: Recovery::default(),
            seen: SeenMessages::default(),
            seq: 0,
            unconfirmed: UnconfirmedSends::default(),
            index,
            shared,
        }
    }

    /// Connects, joins and then follows the run's control until told to stop (idle, chat,
    /// fanout).
    pub(crate) async fn run_member(mut self) {
        let started = Instant::now();
        let mut connection = match self.connect_and_join_in_time().await {
            Ok((connection, _)) => connection,
            Err(error) => {
                self.shared.connect_failed(&error);
                return;
            }
        };
        self.joined = true;
        self.shared
            .joined(self.index, self.room_slot, started.elapsed());
        loop {
            match self.follow_control(connection).await {
                // Say goodbye rather than drop the sockets: a long-polling session would
                // otherwise linger on the server until its heartbeat times out, into the next run.
                Ended::Stopped(connection) => {
                    let _ = tokio::time::timeout(CLOSE_GRACE, connection.close()).await;
                    break;
                }
                Ended::Lost(cause) => match self.come_back(cause).await {
                    Some(back) => connection = back,
                    None => break,
                },
                Ended::Dropped(error) => {
                    self.shared
                        .error(&format!("client {} disconnected", self.index), &error);
                    break;
                }
            }
        }
        self.shared.room_members[self.room_slot].fetch_sub(1, Ordering::Relaxed);
    }

    /// After the connection was lost (`cause`): reconnects with recovery, with a growing pause
    /// between attempts, until the connect timeout. The new connection, or `None` when the run
    /// stops first or every attempt failed (an error of the run).
    async fn come_back(&mut self, cause: BenchError) -> Option<Connection> {
        let lost_at = Instant::now();
        let timeout = self.shared.config.connect_timeout;
        let deadline = lost_at + timeout;
        let mut control = self.shared.control.subscribe();
        let mut pause = RECONNECT_FIRST_PAUSE;
        let last_error = loop {
            if *control.borrow_and_update() == Control::Stop {
                return None;
            }
            let attempt = tokio::select! {
                attempt = tokio::time::timeout_at(deadline, self.connect_and_join()) => attempt,
                () = stopped(&mut control) => return None,
            };
            match attempt {
                Ok(Ok((connection, back))) => {
                    // The recovery replayed the echoes of what the server had accepted.
                    for send in self.unconfirmed.take_lost() {
                        self.shared.never_arrived(send);
                    }
                    self.shared.came_back(back, lost_at.elapsed());
                    return Some(connection);
                }
                Ok(Err(error)) => {
                    let wake = Instant::now() + pause;
                    if wake >= deadline {
                        break error;
                    }
                    tokio::select! {
                        () = tokio::time::sleep_until(wake) => {}
                        () = stopped(&mut control) => return None,
                    }
                    pause = (pause * 2).min(RECONNECT_LONGEST_PAUSE);
                }
                Err(_) => {
                    break BenchError::Timeout {
                        after: timeout,
                        waiting_for: self.stage,
                    }
                }
            }
        };
        self.shared
            .reconnect_failed(self.index, &cause, &last_error);
        None
    }

    /// Connect → join → disconnect until told to stop (churn).
    pub(crate) async fn run_churn(mut self) {
        let control = self.shared.control.subscribe();
        let timeout = self.shared.config.connect_timeout;
        let mut first = true;
        while *control.borrow() != Control::Stop {
            let started = Instant::now();
            // Each cycle is a new session: its sockets were closed, not lost.
            self.recovery.forget();
            match self.connect_and_join_in_time().await {
                Ok((connection, _)) => {
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

    async fn connect_and_join_in_time(&mut self) -> Result<(Connection, SocketsBack), BenchError> {
        let after = self.shared.config.connect_timeout;
        match tokio::time::timeout(after, self.connect_and_join()).await {
            Ok(joined) => joined,
            Err(_) => Err(BenchError::Timeout {
                after,
                waiting_for: self.stage,
            }),
        }
    }

    /// Opens a session and connects both namespaces, asking for the recovery of sockets it had;
    /// joins the room unless both were recovered (the server restored their rooms). Says how
    /// many sockets came back recovered and how many fresh.
    async fn connect_and_join(&mut self) -> Result<(Connection, SocketsBack), BenchError> {
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
        connection.send_all(self.recovery.connect_packets()).await?;
        self.stage = "both namespaces to accept";
        let mut back = SocketsBack::default();
        let mut waiting_for = 2;
        while waiting_for > 0 {
            let text =
                tally(&mut self.received, connection.recv().await)?.ok_or(BenchError::Closed)?;
            match Packet::decode(text.as_str()) {
                Packet::Connected { namespace, data } if namespace == INFRA || namespace == COM => {
                    waiting_for -= 1;
                    if self.recovery.connected(namespace, data) {
                        back.recovered += 1;
                    } else {
                        back.fresh += 1;
                    }
                }
                Packet::ConnectError { namespace, data } => {
                    return Err(BenchError::ConnectRefused {
                        namespace: namespace.to_owned(),
                        reason: data.to_owned(),
                    })
                }
                packet => self.answer_in_setup(&mut connection, packet).await?,
            }
        }
        if back.fresh == 0 {
            return Ok((connection, back));
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
                    data,
                } => {
                    self.recovery.event(INFRA, data);
                    break;
                }
                packet => self.answer_in_setup(&mut connection, packet).await?,
            }
        }
        Ok((connection, back))
    }

    /// Heartbeats, errors and events while connecting (a recovery replays what the client
    /// missed before the CONNECT reply).
    async fn answer_in_setup(
        &mut self,
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
            Packet::Event {
                namespace,
                name,
                data,
            } => {
                self.event(namespace, name, data);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// An event from the server: its offset noted, and a chat message counted as a delivery
    /// (another's) or as the echo of one of its own.
    fn event(&mut self, namespace: &str, name: &str, data: &str) {
        self.recovery.event(namespace, data);
        if namespace != COM || name != "message" {
            return;
        }
        let Some(stamp) = Stamp::find(data) else {
            return;
        };
        if stamp.sender == self.index {
            self.unconfirmed.echoed(stamp.seq);
        } else if self.joined {
            let duplicate = !self.seen.first_time(stamp.sender, stamp.seq);
            let latency = self.shared.now_us().saturating_sub(stamp.sent_us);
            self.shared
                .deliveries
                .record(stamp.phase, latency, duplicate);
        }
    }

    /// Receives, answers heartbeats and sends on schedule until the run says stop.
    async fn follow_control(&mut self, mut connection: Connection) -> Ended {
        let shared = self.shared.clone();
        let mut control = shared.control.subscribe();
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
                        Packet::Ping => {
                            if let Err(error) = connection.send("3".into()).await {
                                return Ended::Lost(error);
                            }
                        }
                        Packet::Event { namespace, name: "error", data } => {
                            self.recovery.event(namespace, data);
                            shared.error(&format!("client {}", self.index), &BenchError::ErrorEvent(data.to_owned()));
                        }
                        Packet::Event { namespace, name, data } => self.event(namespace, name, data),
                        Packet::Close => return Ended::Lost(BenchError::Closed),
                        Packet::Disconnected { .. } => return Ended::Dropped(BenchError::Closed),
                        _ => {}
                    }
                }
                () = &mut next_send, if sending.is_some() => {
                    let Some((phase, interval)) = sending else { continue };
                    // A new control first: no message may leave after the run said hold.
                    if control.has_changed().unwrap_or(true) {
                        continue;
                    }
                    let stamp = Stamp { sender: self.index, seq: self.seq, phase, sent_us: shared.now_us() };
                    self.seq = self.seq.wrapping_add(1);
                    let members = shared.room_members[self.room_slot].load(Ordering::Relaxed);
                    let recipients = u64::from(members.saturating_sub(1));
                    shared.message_sent(phase, recipients);
                    self.unconfirmed.sent(Unconfirmed { seq: stamp.seq, phase, recipients });
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

/// Returns once the run says stop (or is gone).
async fn stopped(control: &mut tokio::sync::watch::Receiver<Control>) {
    while *control.borrow_and_update() != Control::Stop {
        if control.changed().await.is_err() {
            return;
        }
    }
}
