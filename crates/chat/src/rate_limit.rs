//! What a client may send per second: token buckets, per connection (events and namespace
//! connects) and per address (logins).

use std::time::Instant;

/// `per_second` tokens a second, as many at most (the burst).
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn full(per_second: u32, now: Instant) -> Self {
        TokenBucket {
            tokens: f64::from(per_second),
            last: now,
        }
    }

    fn refill(&mut self, per_second: u32, now: Instant) {
        let rate = f64::from(per_second);
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.last = now;
    }

    /// Takes `cost` tokens if there are that many.
    pub(crate) fn take(&mut self, per_second: u32, cost: u32, now: Instant) -> bool {
        self.refill(per_second, now);
        let cost = f64::from(cost);
        if self.tokens >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
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
            messages: TokenBucket::full(limits.messages_per_second, now),
            requests: TokenBucket::full(limits.events_per_second, now),
        }
    }

    /// Spends `cost`, if the budget allows it.
    pub(crate) fn spend(&mut self, cost: Cost, limits: &crate::ChatConfig, now: Instant) -> bool {
        match cost {
            Cost::Message => self.messages.take(limits.messages_per_second, 1, now),
            Cost::Request => self.requests.take(limits.events_per_second, 1, now),
            Cost::Connect => self.requests.take(limits.events_per_second, 2, now),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_a_burst_then_its_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::full(2, start);
        assert!(bucket.take(2, 1, start) && bucket.take(2, 1, start));
        assert!(!bucket.take(2, 1, start));
        assert!(bucket.take(2, 1, start + Duration::from_millis(500)));
        // Costs above the burst are never allowed; a full bucket stays full.
        let later = start + Duration::from_secs(60);
        assert!(!bucket.take(2, 3, later));
        assert!(bucket.take(2, 2, later));
    }
}
