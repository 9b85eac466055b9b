//! A set that is a plain list while it is small: what rooms keep of their members and sockets
//! of their rooms.
//!
//! Most of these sets are tiny (a user's own room has one member, a socket is in two or three
//! rooms) and there is one or more per connection. A `HashSet` of one element costs a table of
//! four buckets plus control bytes (about 90 bytes with the allocator's overhead) and 48 bytes
//! where it is kept; a list of one costs 16 and 24. Past [`LIST_MAX`] elements the set becomes
//! a `HashSet`, so that a room of thousands keeps constant-time joins and leaves.

use std::borrow::Borrow;
use std::collections::HashSet;
use std::hash::Hash;

/// Elements a set keeps as a list; one more and it is hashed.
const LIST_MAX: usize = 32;

/// The hashed form is boxed: the set is then as small as the list (24 bytes), and the tables
/// that hold a set per room and per socket have buckets that much smaller.
#[derive(Debug, Clone)]
pub(crate) enum SmallSet<T> {
    List(Vec<T>),
    #[allow(clippy::box_collection)]
    Hashed(Box<HashSet<T>>),
}

impl<T> Default for SmallSet<T> {
    fn default() -> Self {
        SmallSet::List(Vec::new())
    }
}

impl<T: Eq + Hash> SmallSet<T> {
    /// Adds `value`; whether it was new.
    pub(crate) fn insert(&mut self, value: T) -> bool {
        match self {
            SmallSet::List(list) => {
                if list.contains(&value) {
                    return false;
                }
                if list.len() == LIST_MAX {
                    let mut hashed: HashSet<T> = std::mem::take(list).into_iter().collect();
                    hashed.insert(value);
                    *self = SmallSet::Hashed(Box::new(hashed));
                    return true;
                }
                if list.len() == list.capacity() {
                    // Grows by half, from one: `push` alone would start at four.
                    list.reserve_exact((list.len() / 2).max(1));
                }
                list.push(value);
                true
            }
            SmallSet::Hashed(set) => set.insert(value),
        }
    }

    /// Removes `value`; whether it was there.
    pub(crate) fn remove<Q>(&mut self, value: &Q) -> bool
    where
        T: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            SmallSet::List(list) => match list.iter().position(|item| item.borrow() == value) {
                Some(at) => {
                    list.swap_remove(at);
                    true
                }
                None => false,
            },
            SmallSet::Hashed(set) => set.remove(value),
        }
    }

    pub(crate) fn contains<Q>(&self, value: &Q) -> bool
    where
        T: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self {
            SmallSet::List(list) => list.iter().any(|item| item.borrow() == value),
            SmallSet::Hashed(set) => set.contains(value),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            SmallSet::List(list) => list.len(),
            SmallSet::Hashed(set) => set.len(),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        let (list, hashed) = match self {
            SmallSet::List(list) => (Some(list.iter()), None),
            SmallSet::Hashed(set) => (None, Some(set.iter())),
        };
        list.into_iter()
            .flatten()
            .chain(hashed.into_iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn behaves_as_a_set_below_and_above_the_list_size() {
        let mut set = SmallSet::default();
        for n in 0..100 {
            assert!(set.insert(n), "{n} is new");
            assert!(set.contains(&n));
            assert_eq!(set.len(), n + 1);
            if n == LIST_MAX {
                assert!(
                    matches!(set, SmallSet::Hashed(_)),
                    "hashed past the list size"
                );
            }
        }
        for n in 0..100 {
            assert!(!set.insert(n), "{n} is there already");
        }
        assert_eq!(set.iter().count(), 100);
        for n in (0..100).rev() {
            assert!(set.remove(&n));
            assert!(!set.remove(&n));
            assert!(!set.contains(&n));
        }
        assert!(set.is_empty());
    }

    #[test]
    fn a_set_is_as_small_as_a_list() {
        assert_eq!(
            std::mem::size_of::<SmallSet<std::sync::Arc<str>>>(),
            std::mem::size_of::<Vec<std::sync::Arc<str>>>()
        );
    }

    #[test]
    fn a_set_of_one_holds_room_for_one() {
        let mut set = SmallSet::default();
        set.insert(std::sync::Arc::<str>::from("room"));
        let SmallSet::List(list) = &set else {
            panic!("one element is hashed");
        };
        assert_eq!(list.capacity(), 1);
        assert!(set.contains("room"), "looked up by &str");
        assert_eq!(set.iter().count(), 1);
    }
}
