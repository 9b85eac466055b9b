//! Deadlines of many keys, swept a few at a time: a store that expires entries (sessions, the
//! history of a room nobody speaks in, a login budget) never scans everything it holds at once, so the
//! cost of one operation does not grow with what a crowd (or an attacker) has put there.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;
use std::time::Instant;

/// Keys with a deadline each, ordered by deadline.
#[derive(Debug)]
pub(crate) struct Expiries<K> {
    deadlines: HashMap<K, Instant>,
    /// The same deadlines in time order, so the due ones are found without a scan.
    by_deadline: BTreeSet<(Instant, K)>,
}

impl<K> Default for Expiries<K> {
    fn default() -> Self {
        Expiries {
            deadlines: HashMap::new(),
            by_deadline: BTreeSet::new(),
        }
    }
}

impl<K: Clone + Ord + Hash> Expiries<K> {
    /// Sets (or moves) the deadline of `key`.
    pub(crate) fn set(&mut self, key: K, deadline: Instant) {
        if let Some(previous) = self.deadlines.insert(key.clone(), deadline) {
            self.by_deadline.remove(&(previous, key.clone()));
        }
        self.by_deadline.insert((deadline, key));
    }

    /// When `key` expires, if it has a deadline.
    pub(crate) fn deadline_of<Q>(&self, key: &Q) -> Option<Instant>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.deadlines.get(key).copied()
    }

    /// Forgets the deadline of `key`.
    pub(crate) fn cancel(&mut self, key: &K) {
        if let Some(deadline) = self.deadlines.remove(key) {
            self.by_deadline.remove(&(deadline, key.clone()));
        }
    }

    /// Whether `key` has a deadline that has passed at `now`.
    pub(crate) fn is_due(&self, key: &K, now: Instant) -> bool {
        self.deadlines
            .get(key)
            .is_some_and(|deadline| *deadline <= now)
    }

    /// Removes and returns up to `max` keys whose deadline has passed, earliest first.
    pub(crate) fn take_due(&mut self, now: Instant, max: usize) -> Vec<K> {
        let mut due = Vec::new();
        while due.len() < max {
            let Some((deadline, _)) = self.by_deadline.first() else {
                break;
            };
            if *deadline > now {
                break;
            }
            let Some((_, key)) = self.by_deadline.pop_first() else {
                break;
            };
            self.deadlines.remove(&key);
            due.push(key);
        }
        due
    }

    /// Every key with its deadline, in no order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&K, Instant)> {
        self.deadlines
            .iter()
            .map(|(key, deadline)| (key, *deadline))
    }

    /// The earliest deadline, if any key has one.
    pub(crate) fn earliest(&self) -> Option<Instant> {
        self.by_deadline.first().map(|(deadline, _)| *deadline)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn due_keys_come_out_earliest_first_and_a_few_at_a_time() {
        let start = Instant::now();
        let mut expiries = Expiries::default();
        for (key, seconds) in [("c", 3), ("a", 1), ("b", 2), ("later", 60)] {
            expiries.set(key, start + Duration::from_secs(seconds));
        }
        // Moving a deadline replaces the old one.
        expiries.set("later", start + Duration::from_secs(90));
        expiries.set("gone", start);
        expiries.cancel(&"gone");
        let now = start + Duration::from_secs(10);
        assert!(expiries.is_due(&"a", now) && !expiries.is_due(&"later", now));
        assert_eq!(expiries.earliest(), Some(start + Duration::from_secs(1)));
        assert_eq!(expiries.take_due(now, 1), vec!["a"]);
        assert_eq!(expiries.take_due(now, 10), vec!["b", "c"]);
        assert!(expiries.take_due(now, 10).is_empty());
        assert!(expiries
            .take_due(start + Duration::from_secs(60), 10)
            .is_empty());
        assert_eq!(
            expiries.take_due(start + Duration::from_secs(90), 10),
            vec!["later"]
        );
    }
}
