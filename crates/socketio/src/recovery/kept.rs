//! The sockets a recovery log keeps, laid out for their bytes: a log in a master keeps every
//! socket of every worker from its CONNECT on (two per chat connection, one per namespace), so
//! what one costs is part of what an idle connection costs (docs/BENCHMARKS.md, "Where the
//! bytes go"). A kept socket is two allocations, its record and its names, and a pointer in
//! the table; a map from digest to a record with a `Sid` and a `Vec<Room>` took a slot of
//! 136 bytes (a table has up to twice the slots of its entries) and an allocation per name.

use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};
use std::num::NonZeroU64;
use std::time::{Duration, Instant};

use hashbrown::HashTable;

use super::{Digest, Owner};
use crate::{Room, Sid};

/// A socket as it was last told, and whether its connection is still up.
pub(super) struct Kept {
    /// The hash of its private id: the key it is found by.
    pid_hash: HalfDigest,
    binding: Option<HalfDigest>,
    pub(super) owner: Owner,
    pub(super) detached: Option<Detached>,
    names: Names,
}

impl Kept {
    pub(super) fn new(
        pid_hash: Digest,
        sid: &str,
        rooms: &[Room],
        binding: Option<Digest>,
        owner: Owner,
        detached: Option<Detached>,
    ) -> Box<Kept> {
        // Its own room is implied by its id.
        let rooms = rooms.iter().map(|room| &**room).filter(|room| *room != sid);
        Box::new(Kept {
            pid_hash: HalfDigest::of(&pid_hash),
            binding: binding.as_ref().map(HalfDigest::of),
            owner,
            detached,
            names: Names::pack(std::iter::once(sid).chain(rooms)),
        })
    }

    /// Whether a client with this binding is the one it is kept for.
    pub(super) fn is_bound_to(&self, binding: Option<&Digest>) -> bool {
        self.binding == binding.map(HalfDigest::of)
    }

    pub(super) fn sid(&self) -> &str {
        self.names.iter().next().unwrap_or_default()
    }

    /// The halves of its digests kept, in hex: its key and its binding (see [`Kept::from_parts`]).
    pub(super) fn keys_hex(&self) -> (String, Option<String>) {
        (self.pid_hash.to_hex(), self.binding.map(HalfDigest::to_hex))
    }

    /// A socket as [`Kept::keys_hex`] and [`Kept::unpack`] gave it out (another process's
    /// log, carried over). `None` when a key is not 32 hex digits.
    pub(super) fn from_parts(
        pid_hash: &str,
        binding: Option<&str>,
        sid: &str,
        rooms: &[Room],
        owner: Owner,
        detached: Option<Detached>,
    ) -> Option<Box<Kept>> {
        let pid_hash = HalfDigest::from_hex(pid_hash)?;
        let binding = match binding {
            Some(hex) => Some(HalfDigest::from_hex(hex)?),
            None => None,
        };
        let rooms = rooms.iter().map(|room| &**room).filter(|room| *room != sid);
        Some(Box::new(Kept {
            pid_hash,
            binding,
            owner,
            detached,
            names: Names::pack(std::iter::once(sid).chain(rooms)),
        }))
    }

    /// Its id and rooms as a restored socket gets them.
    pub(super) fn unpack(&self) -> (Sid, Vec<Room>) {
        let mut names = self.names.iter();
        let sid = Sid::from(names.next().unwrap_or_default());
        (sid, names.map(Room::from).collect())
    }
}

/// The first half of a SHA-256 digest: what a kept socket keeps of its private id's and its
/// binding's. A private id has 128 random bits, and finding another id (or another login)
/// whose digest starts with the same 128 bits is no easier than guessing the id itself; 32
/// bytes a socket less, in a master that keeps every socket of every worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct HalfDigest([u8; 16]);

impl HalfDigest {
    fn of(digest: &Digest) -> HalfDigest {
        let mut half = [0; 16];
        half.copy_from_slice(&digest.0[..16]);
        HalfDigest(half)
    }

    fn to_hex(self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn from_hex(hex: &str) -> Option<HalfDigest> {
        if hex.len() != 32 || !hex.is_ascii() {
            return None;
        }
        let mut half = [0; 16];
        for (byte, pair) in half.iter_mut().zip(hex.as_bytes().chunks(2)) {
            *byte = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some(HalfDigest(half))
    }
}

/// When a socket's connection broke: milliseconds since its log's clock started, plus one.
/// Eight bytes where an `Option<Instant>` takes sixteen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Detached(NonZeroU64);

impl Detached {
    pub(super) fn at(clock: Instant, now: Instant) -> Detached {
        let millis = now.saturating_duration_since(clock).as_millis();
        Detached(NonZeroU64::MIN.saturating_add(u64::try_from(millis).unwrap_or(u64::MAX - 1)))
    }

    /// When it broke.
    pub(super) fn instant(self, clock: Instant) -> Instant {
        clock + Duration::from_millis(self.0.get() - 1)
    }

    /// Whether it broke `window` or longer before `now`.
    pub(super) fn is_older(self, clock: Instant, now: Instant, window: Duration) -> bool {
        let since = Duration::from_millis(self.0.get() - 1);
        now.saturating_duration_since(clock).saturating_sub(since) >= window
    }
}

/// A socket's id, then its rooms, in one allocation: each name after its length in bytes, in
/// 7-bit groups, low first, the high bit set on all but the last (LEB128: one byte below 128).
struct Names(Box<[u8]>);

impl Names {
    fn pack<'a>(names: impl Iterator<Item = &'a str> + Clone) -> Names {
        // Sized exactly: a boxed slice of a larger vector is a reallocation.
        let len = names
            .clone()
            .map(|name| name.len() + length_bytes(name.len()))
            .sum();
        let mut packed = Vec::with_capacity(len);
        for name in names {
            let mut len = name.len();
            while len >= 0x80 {
                packed.push((len & 0x7f) as u8 | 0x80);
                len >>= 7;
            }
            packed.push(len as u8);
            packed.extend_from_slice(name.as_bytes());
        }
        Names(packed.into_boxed_slice())
    }

    fn iter(&self) -> impl Iterator<Item = &str> {
        let mut rest: &[u8] = &self.0;
        std::iter::from_fn(move || {
            let mut len = 0usize;
            let mut shift = 0;
            loop {
                let (&byte, tail) = rest.split_first()?;
                rest = tail;
                len |= usize::from(byte & 0x7f).checked_shl(shift)?;
                shift += 7;
                if byte < 0x80 {
                    break;
                }
            }
            let name = rest.get(..len)?;
            rest = rest.get(len..)?;
            // Whole names, cut where they were joined: valid UTF-8 as they were.
            std::str::from_utf8(name).ok()
        })
    }
}

/// The bytes of `len` in LEB128.
fn length_bytes(len: usize) -> usize {
    ((usize::BITS - len.leading_zeros()).max(1)).div_ceil(7) as usize
}

/// The kept sockets of a log, by the hash of their private ids. A slot is a pointer to the
/// record, which carries its key.
pub(super) struct KeptSockets {
    table: HashTable<Box<Kept>>,
    /// When sockets' connections broke, oldest first: what expiry and making room look at,
    /// so neither walks every socket. An entry whose socket came back, or broke again later,
    /// no longer matches it and is skipped.
    detachments: VecDeque<(Detached, HalfDigest)>,
    /// The table's hash of a digest. A digest of a pid the server made cannot be chosen, but
    /// one a client brings back can, so it is hashed with a random key like any map's.
    hasher: RandomState,
}

impl Default for KeptSockets {
    fn default() -> Self {
        KeptSockets {
            table: HashTable::new(),
            detachments: VecDeque::new(),
            hasher: RandomState::new(),
        }
    }
}

impl KeptSockets {
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    pub(super) fn get(&self, pid_hash: &Digest) -> Option<&Kept> {
        self.get_key(HalfDigest::of(pid_hash))
    }

    /// Keeps `kept`, in place of the socket with the same private id if there is one.
    pub(super) fn insert(&mut self, kept: Box<Kept>) {
        if let Some(at) = kept.detached {
            self.detached(at, kept.pid_hash);
        }
        let hash = self.hasher.hash_one(kept.pid_hash);
        let hasher = &self.hasher;
        match self.table.entry(
            hash,
            |other| other.pid_hash == kept.pid_hash,
            |other| hasher.hash_one(other.pid_hash),
        ) {
            hashbrown::hash_table::Entry::Occupied(mut slot) => *slot.get_mut() = kept,
            hashbrown::hash_table::Entry::Vacant(slot) => {
                slot.insert(kept);
            }
        }
    }

    pub(super) fn remove(&mut self, pid_hash: &Digest) -> Option<Box<Kept>> {
        self.remove_key(HalfDigest::of(pid_hash))
    }

    /// Forgets the socket disconnected longest; false when none is.
    pub(super) fn remove_oldest_detached(&mut self) -> bool {
        self.pop_detached(|_| true).is_some()
    }

    /// Marks every connected socket of `owner` as broken `at`.
    pub(super) fn owner_gone(&mut self, owner: Owner, at: Detached) {
        let mut gone = Vec::new();
        for kept in self.table.iter_mut() {
            if kept.owner == owner && kept.detached.is_none() {
                kept.detached = Some(at);
                gone.push(kept.pid_hash);
            }
        }
        for key in gone {
            self.detached(at, key);
        }
    }

    /// Takes out the socket whose connection broke longest ago, if `due` says its time has
    /// come.
    pub(super) fn pop_detached(&mut self, due: impl Fn(Detached) -> bool) -> Option<Box<Kept>> {
        while let Some(&(at, key)) = self.detachments.front() {
            if !due(at) {
                return None;
            }
            self.detachments.pop_front();
            if self
                .get_key(key)
                .is_some_and(|kept| kept.detached == Some(at))
            {
                return self.remove_key(key);
            }
        }
        None
    }

    /// Notes that socket `key` broke `at`. Entries that no longer match their socket are
    /// dropped once they outnumber the sockets kept, so the queue stays bounded however often
    /// clients come and go.
    fn detached(&mut self, at: Detached, key: HalfDigest) {
        self.detachments.push_back((at, key));
        if self.detachments.len() > 2 * self.table.len() + 1024 {
            let mut detachments = std::mem::take(&mut self.detachments);
            detachments.retain(|&(at, key)| {
                self.get_key(key)
                    .is_some_and(|kept| kept.detached == Some(at))
            });
            self.detachments = detachments;
        }
    }

    fn get_key(&self, key: HalfDigest) -> Option<&Kept> {
        self.table
            .find(self.hasher.hash_one(key), |kept| kept.pid_hash == key)
            .map(|kept| &**kept)
    }

    fn remove_key(&mut self, key: HalfDigest) -> Option<Box<Kept>> {
        let hash = self.hasher.hash_one(key);
        match self.table.find_entry(hash, |kept| kept.pid_hash == key) {
            Ok(slot) => Some(slot.remove().0),
            Err(_) => None,
        }
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Kept> {
        self.table.iter().map(|kept| &**kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_kept_socket_gives_back_its_id_and_rooms_but_its_own() {
        let long = "x".repeat(300);
        let rooms: Vec<Room> = ["s1", "room:news", "", "12:34:x", "é", &long]
            .into_iter()
            .map(Room::from)
            .collect();
        let kept = Kept::new(Digest::of("pid"), "s1", &rooms, None, 1, None);
        assert_eq!(kept.sid(), "s1");
        let (sid, rooms) = kept.unpack();
        assert_eq!(&*sid, "s1");
        let rooms: Vec<&str> = rooms.iter().map(|room| &**room).collect();
        assert_eq!(rooms, ["room:news", "", "12:34:x", "é", &long]);
        // A byte of length each, two for the long one.
        assert_eq!(kept.names.0.len(), 2 + 9 + 7 + 2 + 300 + 7);
        assert_eq!(
            (length_bytes(0), length_bytes(127), length_bytes(128)),
            (1, 1, 2)
        );
    }

    #[test]
    fn a_kept_socket_stays_small() {
        // The record in an allocation of 80 bytes (glibc: 72 and its header), a slot of a
        // pointer and a control byte.
        assert!(std::mem::size_of::<Kept>() <= 72);
        assert_eq!(std::mem::size_of::<Box<Kept>>(), 8);
    }

    #[test]
    fn the_table_finds_replaces_and_removes_by_digest() {
        let mut sockets = KeptSockets::default();
        let (a, b) = (Digest::of("a"), Digest::of("b"));
        sockets.insert(Kept::new(a, "sa", &[], None, 1, None));
        sockets.insert(Kept::new(b, "sb", &[], None, 1, None));
        sockets.insert(Kept::new(a, "sa2", &[], None, 2, None));
        assert_eq!(sockets.len(), 2);
        assert_eq!(
            sockets.get(&a).map(|kept| (kept.sid(), kept.owner)),
            Some(("sa2", 2))
        );
        assert_eq!(
            sockets.remove(&b).map(|kept| kept.sid().to_owned()),
            Some("sb".into())
        );
        assert!(sockets.get(&b).is_none() && sockets.remove(&b).is_none());
        assert!(sockets.remove(&a).is_some());
        assert_eq!(sockets.len(), 0);
    }

    #[test]
    fn the_oldest_detachment_that_still_holds_goes_first() {
        let clock = Instant::now();
        let at = |secs| Some(Detached::at(clock, clock + Duration::from_secs(secs)));
        let mut sockets = KeptSockets::default();
        let (a, b, c) = (Digest::of("a"), Digest::of("b"), Digest::of("c"));
        sockets.insert(Kept::new(a, "sa", &[], None, 1, at(1)));
        sockets.insert(Kept::new(b, "sb", &[], None, 1, at(2)));
        sockets.insert(Kept::new(c, "sc", &[], None, 1, None));
        // a came back: its detachment no longer holds.
        sockets.insert(Kept::new(a, "sa", &[], None, 2, None));
        assert!(sockets
            .pop_detached(|at| at < Detached::at(clock, clock))
            .is_none());
        assert_eq!(
            sockets
                .pop_detached(|_| true)
                .map(|kept| kept.sid().to_owned()),
            Some("sb".into())
        );
        assert!(!sockets.remove_oldest_detached());
        sockets.owner_gone(2, at(3).unwrap());
        assert!(sockets.remove_oldest_detached());
        assert_eq!(sockets.get(&c).map(Kept::sid), Some("sc"));
        assert_eq!(sockets.len(), 1);
    }

    #[test]
    fn a_detachment_ages_with_the_clock() {
        let clock = Instant::now();
        let later = clock + Duration::from_secs(5);
        let detached = Detached::at(clock, later);
        assert!(!detached.is_older(clock, later, Duration::from_secs(1)));
        assert!(detached.is_older(clock, later, Duration::ZERO));
        let after = later + Duration::from_secs(1);
        assert!(detached.is_older(clock, after, Duration::from_secs(1)));
        assert!(!detached.is_older(clock, after, Duration::from_secs(2)));
        assert!(Detached::at(clock, clock) < detached);
    }
}
