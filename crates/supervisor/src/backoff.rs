//! The restart policy as a small state machine: what to do after a worker exits.

use std::time::Duration;

use crate::config::RestartPolicy;

/// What follows an unexpected exit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RestartDecision {
    /// Do not restart: the exit code says the program is done.
    Stop,
    /// Restart after the delay.
    Restart { delay: Duration, errored: bool },
}

/// The restart history of one worker slot.
#[derive(Debug, Clone, Default)]
pub struct Backoff {
    last_delay: Option<Duration>,
    /// The first crash of the reset window was restarted at once: the next one starts the
    /// backoff at the initial delay.
    restarted_at_once: bool,
    fast_exits: u32,
}

impl Backoff {
    /// Decides after an exit with `code` (None: killed by a signal) after `uptime`.
    pub fn on_exit(
        &mut self,
        policy: &RestartPolicy,
        code: Option<i32>,
        uptime: Duration,
    ) -> RestartDecision {
        if code.is_some_and(|code| policy.stop_exit_codes.contains(&code)) {
            return RestartDecision::Stop;
        }
        if uptime >= policy.reset_after {
            self.last_delay = None;
            self.restarted_at_once = false;
        }
        if uptime < policy.min_uptime {
            self.fast_exits += 1;
        } else {
            self.fast_exits = 0;
        }
        let delay = match self.last_delay {
            // One crash is an accident: its replacement starts at once, so the worker's
            // capacity is back before its siblings run hot; only a repeat within the reset
            // window is a pattern worth slowing down for.
            None if policy.first_restart_at_once && !self.restarted_at_once => {
                self.restarted_at_once = true;
                Duration::ZERO
            }
            None => {
                self.last_delay = Some(policy.initial_delay);
                policy.initial_delay
            }
            // Saturates at the cap: a factor that overflows a Duration never panics here.
            Some(last) => {
                let next = Duration::try_from_secs_f64(last.as_secs_f64() * policy.factor)
                    .map_or(policy.max_delay, |next| next.min(policy.max_delay));
                self.last_delay = Some(next);
                next
            }
        };
        let errored = self.fast_exits >= policy.max_fast_exits;
        // A crash loop retries at the slowest pace, never gives up.
        let delay = if errored { policy.max_delay } else { delay };
        RestartDecision::Restart { delay, errored }
    }

    /// Whether the worker is in a crash loop.
    pub fn errored(&self, policy: &RestartPolicy) -> bool {
        self.fast_exits >= policy.max_fast_exits
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delays(
        backoff: &mut Backoff,
        policy: &RestartPolicy,
        n: usize,
        uptime: Duration,
    ) -> Vec<(u128, bool)> {
        (0..n)
            .map(|_| match backoff.on_exit(policy, Some(1), uptime) {
                RestartDecision::Restart { delay, errored } => (delay.as_millis(), errored),
                RestartDecision::Stop => panic!("stopped"),
            })
            .collect()
    }

    /// The delays from the second crash of a window on: the first one is restarted at once.
    fn backoff_from_the_first_crash() -> RestartPolicy {
        RestartPolicy {
            first_restart_at_once: false,
            ..RestartPolicy::default()
        }
    }

    #[test]
    fn the_first_crash_is_restarted_at_once_and_the_second_backs_off() {
        let policy = RestartPolicy::default();
        let mut backoff = Backoff::default();
        let got = delays(&mut backoff, &policy, 4, Duration::from_secs(2));
        assert_eq!(got, [(0, false), (100, false), (150, false), (225, false)]);
        // After a long uptime the next crash is an accident again.
        let got = delays(&mut backoff, &policy, 2, Duration::from_secs(31));
        assert_eq!(got[0], (0, false));
    }

    #[test]
    fn grows_by_the_factor_up_to_the_cap() {
        let policy = backoff_from_the_first_crash();
        let mut backoff = Backoff::default();
        let got = delays(&mut backoff, &policy, 12, Duration::from_secs(2));
        let ms: Vec<u128> = got.iter().map(|(d, _)| *d).collect();
        assert_eq!(&ms[..4], &[100, 150, 225, 337]);
        assert!(ms.iter().all(|d| *d <= 15_000));
        assert_eq!(*ms.last().unwrap(), 8_649);
        assert!(got.iter().all(|(_, errored)| !errored));
    }

    #[test]
    fn resets_after_a_long_uptime() {
        let policy = backoff_from_the_first_crash();
        let mut backoff = Backoff::default();
        delays(&mut backoff, &policy, 5, Duration::from_secs(2));
        assert_eq!(
            delays(&mut backoff, &policy, 1, Duration::from_secs(31)),
            vec![(100, false)]
        );
    }

    #[test]
    fn a_crash_loop_is_errored_but_keeps_retrying_at_the_cap() {
        let policy = RestartPolicy::default();
        let mut backoff = Backoff::default();
        let got = delays(&mut backoff, &policy, 20, Duration::from_millis(10));
        assert!(!got[14].1);
        assert_eq!(got[15], (15_000, true));
        assert_eq!(got[19], (15_000, true));
        assert!(backoff.errored(&policy));
        // A worker that then stays up is no longer errored.
        delays(&mut backoff, &policy, 1, Duration::from_secs(5));
        assert!(!backoff.errored(&policy));
    }

    #[test]
    fn a_huge_factor_saturates_at_the_cap() {
        let policy = RestartPolicy {
            factor: 1e300,
            ..backoff_from_the_first_crash()
        };
        let mut backoff = Backoff::default();
        let got = delays(&mut backoff, &policy, 3, Duration::from_secs(2));
        assert_eq!(got, [(100, false), (15_000, false), (15_000, false)]);
    }

    #[test]
    fn stop_exit_codes_are_not_restarted() {
        let policy = RestartPolicy {
            stop_exit_codes: vec![0],
            ..RestartPolicy::default()
        };
        let mut backoff = Backoff::default();
        assert_eq!(
            backoff.on_exit(&policy, Some(0), Duration::from_secs(1)),
            RestartDecision::Stop
        );
        assert!(matches!(
            backoff.on_exit(&policy, None, Duration::from_secs(1)),
            RestartDecision::Restart { .. }
        ));
    }
}
