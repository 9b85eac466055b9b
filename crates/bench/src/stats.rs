//! Counting deliveries and recording latencies without making the clients contend: every
//! runtime thread records into a shard of its own (an uncontended lock), and readers add the
//! shards up.

use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hdrhistogram::Histogram;

/// Longest latency recorded as itself, in µs; longer ones count as this.
const MAX_LATENCY_US: u64 = 600_000_000;

/// A latency histogram in microseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_max(MAX_LATENCY_US, 3).expect("constant histogram bounds are valid")
}

/// Deliveries of one phase (warmup, the measured phase, one fanout step).
#[derive(Clone)]
pub struct PhaseDeliveries {
    pub delivered: u64,
    pub duplicates: u64,
    pub latency_us: Histogram<u64>,
}

impl PhaseDeliveries {
    fn new() -> Self {
        PhaseDeliveries {
            delivered: 0,
            duplicates: 0,
            latency_us: new_histogram(),
        }
    }

    fn add(&mut self, other: &PhaseDeliveries) {
        self.delivered += other.delivered;
        self.duplicates += other.duplicates;
        let _ = self.latency_us.add(&other.latency_us);
    }
}

type Shard = Arc<Mutex<Vec<PhaseDeliveries>>>;

/// Where the receivers of one run record deliveries.
pub struct DeliveryRecorder {
    /// Tells shards of different recorders apart in the thread-locals.
    id: u64,
    phases: usize,
    shards: Mutex<Vec<Shard>>,
}

static NEXT_RECORDER: AtomicU64 = AtomicU64::new(1);

thread_local! {
    static THREAD_SHARD: RefCell<Option<(u64, Shard)>> = const { RefCell::new(None) };
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl DeliveryRecorder {
    /// A recorder for phases `0..phases`.
    pub fn new(phases: usize) -> Self {
        DeliveryRecorder {
            id: NEXT_RECORDER.fetch_add(1, Ordering::Relaxed),
            phases,
            shards: Mutex::new(Vec::new()),
        }
    }

    fn with_shard<R>(&self, record: impl FnOnce(&mut Vec<PhaseDeliveries>) -> R) -> R {
        THREAD_SHARD.with(|cell| {
            let mut cell = cell.borrow_mut();
            let shard = match &*cell {
                Some((id, shard)) if *id == self.id => shard.clone(),
                _ => {
                    let shard: Shard = Arc::new(Mutex::new(Vec::new()));
                    lock(&self.shards).push(shard.clone());
                    *cell = Some((self.id, shard.clone()));
                    shard
                }
            };
            let mut phases = lock(&shard);
            record(&mut phases)
        })
    }

    /// One message arrived `latency_us` after it was sent; `duplicate` when this receiver had
    /// it already.
    pub fn record(&self, phase: u16, latency_us: u64, duplicate: bool) {
        let phase = usize::from(phase);
        if phase >= self.phases {
            return;
        }
        self.with_shard(|phases| {
            if phases.len() <= phase {
                phases.resize_with(phase + 1, PhaseDeliveries::new);
            }
            let deliveries = &mut phases[phase];
            if duplicate {
                deliveries.duplicates += 1;
            } else {
                deliveries.delivered += 1;
                deliveries.latency_us.saturating_record(latency_us.max(1));
            }
        })
    }

    /// Deliveries of `phase` so far, over all threads.
    pub fn phase(&self, phase: u16) -> PhaseDeliveries {
        let mut total = PhaseDeliveries::new();
        for shard in lock(&self.shards).iter() {
            if let Some(deliveries) = lock(shard).get(usize::from(phase)) {
                total.add(deliveries);
            }
        }
        total
    }

    /// Messages delivered in all phases from `first` on, without merging histograms (for the
    /// progress line and the drain wait).
    pub fn delivered_since(&self, first: u16) -> u64 {
        lock(&self.shards)
            .iter()
            .map(|shard| {
                lock(shard)
                    .iter()
                    .skip(usize::from(first))
                    .map(|d| d.delivered)
                    .sum::<u64>()
            })
            .sum()
    }
}

/// Which messages one receiver has had from each sender of its room: a duplicate is a message
/// it gets twice.
#[derive(Default)]
pub struct SeenMessages {
    /// (sender, bit per sequence number); rooms are small and senders few, so a short list.
    senders: Vec<(u32, Vec<u64>)>,
}

impl SeenMessages {
    /// Marks `seq` of `sender` as seen; false when it was already.
    pub fn first_time(&mut self, sender: u32, seq: u32) -> bool {
        let at = match self.senders.iter().position(|(s, _)| *s == sender) {
            Some(at) => at,
            None => {
                self.senders.push((sender, Vec::new()));
                self.senders.len() - 1
            }
        };
        let bits = &mut self.senders[at].1;
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if bits.len() <= word {
            bits.resize(word + 1, 0);
        }
        let mask = 1u64 << bit;
        let first = bits[word] & mask == 0;
        bits[word] |= mask;
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_of_all_threads_add_up() {
        let recorder = Arc::new(DeliveryRecorder::new(2));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let recorder = recorder.clone();
                std::thread::spawn(move || {
                    for latency in 1..=100 {
                        recorder.record(1, latency * 1000, false);
                    }
                    recorder.record(1, 5, true);
                    recorder.record(0, 5, false);
                    recorder.record(9, 5, false);
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let measured = recorder.phase(1);
        assert_eq!(measured.delivered, 400);
        assert_eq!(measured.duplicates, 4);
        assert_eq!(
            measured.latency_us.max(),
            recorder.phase(1).latency_us.max()
        );
        assert!(measured.latency_us.max() >= 99_900);
        assert_eq!(recorder.delivered_since(0), 404);
        assert_eq!(recorder.delivered_since(1), 400);
    }

    #[test]
    fn a_message_seen_twice_is_a_duplicate() {
        let mut seen = SeenMessages::default();
        assert!(seen.first_time(3, 0));
        assert!(seen.first_time(3, 200));
        assert!(seen.first_time(4, 0));
        assert!(!seen.first_time(3, 200));
        assert!(!seen.first_time(4, 0));
    }
}
