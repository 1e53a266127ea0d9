//! When to try something again after it failed: one doubling-backoff rule
//! for everything that retries (download peers, inventory pulls and
//! probes, manual peers, the tracker client). Pure: no clock, no I/O; the
//! caller passes `now` to every decision, so tests control time.
//!
//! Owns the delays and when each key may be tried again; never decides
//! what a failure is, never sleeps.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// How long to wait after failures: `first` after the first one, then
/// twice the previous wait, at most `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub first: Duration,
    pub max: Duration,
}

impl RetryPolicy {
    pub const fn new(first: Duration, max: Duration) -> RetryPolicy {
        RetryPolicy { first, max }
    }

    /// The wait after a failure that follows a wait of `prev` (`None`: no
    /// failure since the last success).
    pub fn next(&self, prev: Option<Duration>) -> Duration {
        prev.map_or(self.first, |d| d.saturating_mul(2).min(self.max))
    }
}

/// One key's state: since when it waits, and how long.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub at: Instant,
    pub delay: Duration,
}

impl Backoff {
    /// When it may be tried again.
    pub fn until(&self) -> Instant {
        self.at + self.delay
    }
}

/// The retry state of one thing (a manual peer, the tracker, a worker's
/// refused chunks).
#[derive(Clone, Debug)]
pub struct Retry {
    pub policy: RetryPolicy,
    state: Option<Backoff>,
}

impl Retry {
    /// Nothing failed yet: ready at once.
    pub fn new(policy: RetryPolicy) -> Retry {
        Retry {
            policy,
            state: None,
        }
    }

    /// Records a failure at `now` and returns the wait it earns.
    pub fn failed(&mut self, now: Instant) -> Duration {
        let delay = self.policy.next(self.state.map(|b| b.delay));
        self.state = Some(Backoff { at: now, delay });
        delay
    }

    /// Waits the first delay from `now`, as after a first failure.
    pub fn rest(&mut self, now: Instant) {
        self.state = Some(Backoff {
            at: now,
            delay: self.policy.first,
        });
    }

    /// Brings the wait back to the first delay, still counted from the
    /// last failure (or rest).
    pub fn shorten(&mut self) {
        if let Some(b) = &mut self.state {
            b.delay = self.policy.first;
        }
    }

    /// Forgets every failure: ready at once, the next failure waits `first`.
    pub fn succeeded(&mut self) {
        self.state = None;
    }

    /// Whether it may be tried at `now`.
    pub fn ready(&self, now: Instant) -> bool {
        self.state.is_none_or(|b| now >= b.until())
    }

    /// The current wait, if any failure is remembered.
    pub fn delay(&self) -> Option<Duration> {
        self.state.map(|b| b.delay)
    }
}

/// Retry states of many keys under one policy.
#[derive(Clone, Debug)]
pub struct RetryBook<K> {
    policy: RetryPolicy,
    entries: HashMap<K, Backoff>,
}

impl<K: Eq + Hash + Copy> RetryBook<K> {
    pub fn new(policy: RetryPolicy) -> RetryBook<K> {
        RetryBook {
            policy,
            entries: HashMap::new(),
        }
    }

    /// Records a failure of `key` at `now` and returns the wait it earns:
    /// `first`, or twice its previous wait, at most `max`.
    pub fn failed(&mut self, key: K, now: Instant) -> Duration {
        let delay = self.policy.next(self.entries.get(&key).map(|b| b.delay));
        self.entries.insert(key, Backoff { at: now, delay });
        delay
    }

    /// Makes `key` wait the first delay from `now`, as after a first
    /// failure (it had nothing to give; look again soon).
    pub fn rest(&mut self, key: K, now: Instant) {
        self.entries.insert(
            key,
            Backoff {
                at: now,
                delay: self.policy.first,
            },
        );
    }

    /// Notes that `key` was tried at `now` without making it wait; see
    /// [`RetryBook::since`].
    pub fn tried(&mut self, key: K, now: Instant) {
        self.entries.insert(
            key,
            Backoff {
                at: now,
                delay: Duration::ZERO,
            },
        );
    }

    /// Forgets `key`'s failures.
    pub fn succeeded(&mut self, key: &K) {
        self.entries.remove(key);
    }

    /// Whether `key` may be tried at `now`.
    pub fn ready(&self, key: &K, now: Instant) -> bool {
        self.entries.get(key).is_none_or(|b| now >= b.until())
    }

    /// `key`'s current wait (`None`: no failure remembered); sorts the
    /// keys that failed least first.
    pub fn delay(&self, key: &K) -> Option<Duration> {
        self.entries.get(key).map(|b| b.delay)
    }

    /// How long ago `key` last failed, rested or was tried.
    pub fn since(&self, key: &K, now: Instant) -> Option<Duration> {
        self.entries
            .get(key)
            .map(|b| now.saturating_duration_since(b.at))
    }

    /// Keeps only the keys `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&K) -> bool) {
        self.entries.retain(|k, _| keep(k));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MS: Duration = Duration::from_millis(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_up_to_max_and_resets() {
        let p = RetryPolicy::new(ms(500), ms(8000));
        let mut b = RetryBook::new(p);
        let t0 = Instant::now();
        let waits: Vec<u64> = (0..7)
            .map(|_| b.failed(1u8, t0).as_millis() as u64)
            .collect();
        assert_eq!(waits, [500, 1000, 2000, 4000, 8000, 8000, 8000]);
        b.succeeded(&1);
        assert_eq!(b.failed(1, t0), ms(500));
        b.rest(2, t0);
        assert_eq!(b.delay(&2), Some(ms(500)));
        assert_eq!(b.failed(2, t0), ms(1000));
    }

    #[test]
    fn shorten_keeps_the_start() {
        let mut r = Retry::new(RetryPolicy::new(ms(1000), ms(30_000)));
        let t0 = Instant::now();
        r.rest(t0);
        r.failed(t0);
        assert_eq!(r.delay(), Some(ms(2000)));
        r.shorten();
        assert!(!r.ready(t0 + ms(999)));
        assert!(r.ready(t0 + ms(1000)));
    }

    proptest! {
        /// A key that failed is never ready within its wait, always ready
        /// once it is over, and waits are monotone up to `max`.
        #[test]
        fn never_ready_within_the_wait(
            first in 1u64..2000,
            extra in 0u64..40_000,
            steps in proptest::collection::vec((0u64..20_000, any::<bool>()), 1..40),
        ) {
            let p = RetryPolicy::new(ms(first), ms(first + extra));
            let mut book = RetryBook::new(p);
            let mut now = Instant::now();
            let mut prev: Option<Duration> = None;
            for (advance, fail) in steps {
                now += ms(advance);
                if fail {
                    let d = book.failed(7u8, now);
                    prop_assert!(d >= p.first.min(p.max) && d <= p.max.max(p.first));
                    if let Some(prev) = prev {
                        prop_assert!(d >= prev.min(p.max));
                    }
                    prev = Some(d);
                    prop_assert!(!book.ready(&7, now + d - MS));
                    prop_assert!(book.ready(&7, now + d));
                } else {
                    book.succeeded(&7);
                    prev = None;
                    prop_assert!(book.ready(&7, now));
                }
            }
        }
    }
}
