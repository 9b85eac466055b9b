//! What a client may send: token buckets, per connection (events and namespace connects, per
//! second) and per address (logins, per minute).

use std::time::{Duration, Instant};

/// How fast a bucket fills: `burst` tokens per `window`, `burst` at most.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    pub(crate) burst: u32,
    pub(crate) window: Duration,
}

impl Rate {
    pub(crate) fn per_second(burst: u32) -> Self {
        Rate {
            burst,
            window: Duration::from_secs(1),
        }
    }

    fn tokens_per_second(self) -> f64 {
        f64::from(self.burst) / self.window.as_secs_f64().max(f64::MIN_POSITIVE)
    }
}

/// Tokens spent by a client and refilled at a [`Rate`].
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn full(rate: Rate, now: Instant) -> Self {
        TokenBucket {
            tokens: f64::from(rate.burst),
            last: now,
        }
    }

    fn refill(&mut self, rate: Rate, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate.tokens_per_second()).min(f64::from(rate.burst));
        self.last = now;
    }

    /// Takes `cost` tokens if there are that many.
    pub(crate) fn take(&mut self, rate: Rate, cost: u32, now: Instant) -> bool {
        self.refill(rate, now);
        let cost = f64::from(cost);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// How long until one token is there again.
    pub(crate) fn next_token_in(&self, rate: Rate) -> Duration {
        let missing = (1.0 - self.tokens).max(0.0);
        Duration::from_secs_f64(missing / rate.tokens_per_second())
    }

    /// When the bucket is full again, so that forgetting it then loses nothing.
    pub(crate) fn full_at(&self, rate: Rate) -> Instant {
        let missing = (f64::from(rate.burst) - self.tokens).max(0.0);
        self.last + Duration::from_secs_f64(missing / rate.tokens_per_second())
    }
}

/// What one client connection spends, whatever namespace it sends in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Cost {
    /// A chat line (`message`, `private_message`): the messages budget.
    Message,
    /// Any other event: the requests budget.
    Request,
    /// A namespace connect: two requests, for itself and for the disconnect that ends it
    /// (each costs store work: a session lookup, leaving rooms).
    Connect,
}

/// The budgets of one client connection, kept in its connection extensions, so that its
/// sockets in every namespace share them and a namespace reconnect does not refill them.
#[derive(Debug)]
pub(crate) struct ConnectionBudget {
    messages: TokenBucket,
    requests: TokenBucket,
}

impl ConnectionBudget {
    pub(crate) fn new(limits: &crate::ChatConfig, now: Instant) -> Self {
        ConnectionBudget {
            messages: TokenBucket::full(Rate::per_second(limits.messages_per_second), now),
            requests: TokenBucket::full(Rate::per_second(limits.events_per_second), now),
        }
    }

    /// Spends `cost`, if the budget allows it.
    pub(crate) fn spend(&mut self, cost: Cost, limits: &crate::ChatConfig, now: Instant) -> bool {
        let messages = Rate::per_second(limits.messages_per_second);
        let requests = Rate::per_second(limits.events_per_second);
        match cost {
            Cost::Message => self.messages.take(messages, 1, now),
            Cost::Request => self.requests.take(requests, 1, now),
            Cost::Connect => self.requests.take(requests, 2, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_a_burst_then_its_rate() {
        let start = Instant::now();
        let rate = Rate::per_second(2);
        let mut bucket = TokenBucket::full(rate, start);
        assert!(bucket.take(rate, 1, start) && bucket.take(rate, 1, start));
        assert!(!bucket.take(rate, 1, start));
        assert_eq!(bucket.next_token_in(rate), Duration::from_millis(500));
        assert!(bucket.take(rate, 1, start + Duration::from_millis(500)));
        assert_eq!(bucket.full_at(rate), start + Duration::from_millis(1500));
        // Costs above the burst are never allowed; a full bucket stays full.
        let later = start + Duration::from_secs(60);
        assert!(!bucket.take(rate, 3, later));
        assert!(bucket.take(rate, 2, later));
    }
}
