//! How many logins each client address may make: a token bucket per address, forgotten once
//! it is full again, so the table holds only the addresses that logged in lately.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::expiry::Expiries;
use crate::rate_limit::{Rate, TokenBucket};

/// Buckets forgotten per login: more than one, so the table shrinks faster than it grows.
const FORGET_PER_LOGIN: usize = 16;

/// The login budgets of the addresses seen lately.
#[derive(Debug)]
pub(crate) struct LoginBudgets {
    rate: Rate,
    /// Addresses tracked at once: bounds the table against a client with many addresses.
    max_addresses: usize,
    state: Mutex<Tracked>,
}

#[derive(Debug, Default)]
struct Tracked {
    buckets: HashMap<IpAddr, TokenBucket>,
    /// When each bucket is full again: then it is the same as no bucket, and is forgotten.
    full_again: Expiries<IpAddr>,
}

impl LoginBudgets {
    pub(crate) fn new(rate: Rate, max_addresses: usize) -> Self {
        LoginBudgets {
            rate,
            max_addresses,
            state: Mutex::default(),
        }
    }

    /// Spends one login of `address`; `Err(wait)` when it has none left, with how long until
    /// it has one.
    pub(crate) fn spend(&self, address: IpAddr, now: Instant) -> Result<(), Duration> {
        let key = budget_key(address);
        let Ok(mut tracked) = self.state.lock() else {
            return Ok(());
        };
        let tracked = &mut *tracked;
        for full in tracked.full_again.take_due(now, FORGET_PER_LOGIN) {
            tracked.buckets.remove(&full);
        }
        if !tracked.buckets.contains_key(&key) && tracked.buckets.len() >= self.max_addresses {
            // Every slot holds a budget still being spent: the soonest one to fill frees one.
            let wait = tracked
                .full_again
                .earliest()
                .map_or(self.rate.window, |at| at.saturating_duration_since(now));
            return Err(wait);
        }
        let bucket = tracked
            .buckets
            .entry(key)
            .or_insert_with(|| TokenBucket::full(self.rate, now));
        let allowed = bucket.take(self.rate, 1, now);
        let wait = bucket.next_token_in(self.rate);
        let full_at = bucket.full_at(self.rate);
        tracked.full_again.set(key, full_at);
        if allowed {
            Ok(())
        } else {
            Err(wait)
        }
    }
}

/// One budget per IPv4 address, and per /64 for IPv6, where one client commonly holds a whole
/// /64 and could otherwise log in from as many addresses as it likes.
fn budget_key(address: IpAddr) -> IpAddr {
    match address.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !(u128::MAX >> 64);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_address_has_its_budget_and_the_table_is_bounded() {
        let rate = Rate {
            burst: 2,
            window: Duration::from_secs(60),
        };
        let budgets = LoginBudgets::new(rate, 2);
        let start = Instant::now();
        let one: IpAddr = "127.0.0.1".parse().unwrap();
        let two: IpAddr = "2001:db8::1".parse().unwrap();
        let two_neighbour: IpAddr = "2001:db8::ffff".parse().unwrap();
        assert!(budgets.spend(one, start).is_ok());
        assert!(budgets.spend(one, start).is_ok());
        assert_eq!(budgets.spend(one, start), Err(Duration::from_secs(30)));
        // Another address has its own; one /64 is one address.
        assert!(budgets.spend(two, start).is_ok());
        assert!(budgets.spend(two_neighbour, start).is_ok());
        assert!(budgets.spend(two, start).is_err());
        // The table is full: a third address waits for the first budget to fill up.
        let third: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(budgets.spend(third, start), Err(Duration::from_secs(60)));
        let later = start + Duration::from_secs(61);
        assert!(budgets.spend(third, later).is_ok());
        assert!(budgets.spend(one, later).is_ok());
    }
}
