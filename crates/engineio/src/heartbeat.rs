//! A session's heartbeat as plain data: when the next ping goes out, when the client's answer
//! is due, and when the layer above's deadline comes. Whoever keeps the session's time (the
//! websocket's own task, or a task of its own for the other transports) sleeps until
//! [`Heartbeat::wake_at`] and does what [`Heartbeat::due`] says.

use std::time::Duration;

use tokio::time::Instant;

/// What a session's heartbeat asks for when its time comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Due {
    /// Send the client a ping.
    Ping,
    /// The layer above's deadline ([`crate::Handler::deadline`]) has come.
    Deadline,
    /// The client did not answer the last ping in time: the session is over.
    Timeout,
}

/// How often sessions are pinged and how long an answer may take: the engine's
/// `ping_interval` and `ping_timeout`, kept once by the engine rather than in every session.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rhythm {
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
}

/// The heartbeat of one session.
///
/// Times are instants counted from the handshake, not sleeps chained one after the other: a
/// client that never answers is gone at pingInterval + pingTimeout after the handshake, as the
/// protocol says, not a little later each time a timer rounds up.
#[derive(Debug)]
pub(crate) struct Heartbeat {
    /// When the next ping goes out; while one waits for its answer, when that answer is due.
    next: Instant,
    /// A ping waits for its answer.
    awaiting_pong: bool,
    /// The client was heard from since the last ping was answered. Any packet proves it alive,
    /// as in the reference server: a pong stuck behind a large upload must not cost the
    /// session. One heard before a ping answers that ping.
    heard: bool,
    /// The layer above's deadline, until it has come.
    deadline: Option<Instant>,
}

impl Heartbeat {
    /// The heartbeat of a session whose handshake was at `opened`.
    pub(crate) fn new(opened: Instant, rhythm: Rhythm, deadline: Option<Duration>) -> Self {
        Heartbeat {
            next: opened + rhythm.interval,
            awaiting_pong: false,
            heard: false,
            deadline: deadline.map(|after| opened + after),
        }
    }

    /// When [`Heartbeat::due`] has something to say next.
    pub(crate) fn wake_at(&self) -> Instant {
        self.deadline.map_or(self.next, |at| at.min(self.next))
    }

    /// The client was heard from (a pong or any other packet) at `now`.
    pub(crate) fn heard(&mut self, now: Instant, rhythm: Rhythm) {
        if std::mem::take(&mut self.awaiting_pong) {
            self.next = now + rhythm.interval;
        } else {
            self.heard = true;
        }
    }

    /// What is due at `now`, if anything; the caller does it, then sleeps until
    /// [`Heartbeat::wake_at`] again.
    pub(crate) fn due(&mut self, now: Instant, rhythm: Rhythm) -> Option<Due> {
        // Before a ping that falls at the same instant; after a pong deadline that does.
        let first = |at: Instant| {
            if self.awaiting_pong {
                at < self.next
            } else {
                at <= self.next
            }
        };
        if self.deadline.is_some_and(|at| first(at) && at <= now) {
            self.deadline = None;
            return Some(Due::Deadline);
        }
        if self.next > now {
            return None;
        }
        if self.awaiting_pong {
            return Some(Due::Timeout);
        }
        if std::mem::take(&mut self.heard) {
            // Answered before it was sent.
            self.next = now + rhythm.interval;
        } else {
            // Counted from when the ping was due, not from a late wake-up.
            self.next += rhythm.timeout;
            self.awaiting_pong = true;
        }
        Some(Due::Ping)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_millis(300);
    const RHYTHM: Rhythm = Rhythm {
        interval: INTERVAL,
        timeout: Duration::from_millis(200),
    };

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_silent_client_times_out_at_interval_plus_timeout_after_the_handshake() {
        let opened = Instant::now();
        let mut heartbeat = Heartbeat::new(opened, RHYTHM, None);
        assert_eq!(heartbeat.wake_at(), opened + INTERVAL);
        assert_eq!(heartbeat.due(opened + ms(299), RHYTHM), None);
        // A late wake-up does not move the pong's deadline.
        assert_eq!(heartbeat.due(opened + ms(310), RHYTHM), Some(Due::Ping));
        assert_eq!(heartbeat.wake_at(), opened + ms(500));
        assert_eq!(heartbeat.due(opened + ms(499), RHYTHM), None);
        assert_eq!(heartbeat.due(opened + ms(500), RHYTHM), Some(Due::Timeout));
    }

    #[test]
    fn the_next_ping_is_an_interval_after_the_answer() {
        let opened = Instant::now();
        let mut heartbeat = Heartbeat::new(opened, RHYTHM, None);
        assert_eq!(heartbeat.due(opened + INTERVAL, RHYTHM), Some(Due::Ping));
        heartbeat.heard(opened + ms(350), RHYTHM);
        assert_eq!(heartbeat.wake_at(), opened + ms(650));
        assert_eq!(heartbeat.due(opened + ms(500), RHYTHM), None);
        assert_eq!(heartbeat.due(opened + ms(650), RHYTHM), Some(Due::Ping));
    }

    #[test]
    fn a_packet_before_the_ping_answers_it() {
        let opened = Instant::now();
        let mut heartbeat = Heartbeat::new(opened, RHYTHM, None);
        heartbeat.heard(opened + ms(100), RHYTHM);
        assert_eq!(heartbeat.due(opened + INTERVAL, RHYTHM), Some(Due::Ping));
        assert_eq!(heartbeat.wake_at(), opened + ms(600), "no pong is awaited");
        // It answers that ping only: the next one needs an answer of its own.
        assert_eq!(heartbeat.due(opened + ms(600), RHYTHM), Some(Due::Ping));
        assert_eq!(heartbeat.due(opened + ms(800), RHYTHM), Some(Due::Timeout));
    }

    #[test]
    fn the_deadline_comes_once_before_or_between_pings() {
        let opened = Instant::now();
        let mut heartbeat = Heartbeat::new(opened, RHYTHM, Some(ms(100)));
        assert_eq!(heartbeat.wake_at(), opened + ms(100));
        assert_eq!(heartbeat.due(opened + ms(100), RHYTHM), Some(Due::Deadline));
        assert_eq!(heartbeat.wake_at(), opened + INTERVAL);
        assert_eq!(heartbeat.due(opened + INTERVAL, RHYTHM), Some(Due::Ping));

        // A deadline while a ping waits for its answer.
        let mut heartbeat = Heartbeat::new(opened, RHYTHM, Some(ms(400)));
        assert_eq!(heartbeat.due(opened + INTERVAL, RHYTHM), Some(Due::Ping));
        assert_eq!(heartbeat.wake_at(), opened + ms(400));
        assert_eq!(heartbeat.due(opened + ms(400), RHYTHM), Some(Due::Deadline));
        assert_eq!(heartbeat.wake_at(), opened + ms(500));
        assert_eq!(heartbeat.due(opened + ms(500), RHYTHM), Some(Due::Timeout));
    }
}
