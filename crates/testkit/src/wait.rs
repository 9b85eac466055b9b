//! Waiting with deadlines: a test waits for a condition, never for a fixed time, and a
//! condition that never comes fails the test with what it waited for instead of hanging it.

use std::future::Future;
use std::time::{Duration, Instant};

/// How often [`wait_until`] checks its condition: only keeps the loop from spinning.
const CHECK_EVERY: Duration = Duration::from_millis(5);

/// Awaits `future`; fails the test, naming `what`, if it takes longer than `deadline`.
pub async fn within<F: Future>(deadline: Duration, what: &str, future: F) -> F::Output {
    match tokio::time::timeout(deadline, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {deadline:?} waiting for {what}"),
    }
}

/// Checks `condition` until it holds; fails the test, naming `what`, after `deadline`.
pub fn wait_until(what: &str, deadline: Duration, mut condition: impl FnMut() -> bool) {
    if poll_until(deadline, CHECK_EVERY, || condition().then_some(())).is_none() {
        panic!("timed out after {deadline:?} waiting for {what}");
    }
}

/// Calls `probe` every `every` until it returns a value, for at most `deadline`; `None` when
/// it never did. For conditions that cost a process or a request to check, where the caller
/// picks a slower pace and its own failure message.
pub fn poll_until<T>(
    deadline: Duration,
    every: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let until = Instant::now() + deadline;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        if Instant::now() > until {
            return None;
        }
        std::thread::sleep(every);
    }
}
