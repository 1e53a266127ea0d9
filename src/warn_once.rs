//! Rate-limited warnings keyed by source: "peer 10.0.0.7 is in another
//! swarm" is said once per address per period, not for every datagram or
//! connection it sends. The table is bounded; when full, the oldest entry
//! goes.
//!
//! Owns: the decision to speak. Never logs by itself and never reads the
//! clock (`now` is passed in).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a source stays quiet after a warning about it.
pub const DEFAULT_PERIOD: Duration = Duration::from_secs(600);
/// Most sources remembered.
pub const MAX_KEYS: usize = 1024;

pub struct WarnOnce<K> {
    period: Duration,
    last: Mutex<HashMap<K, Instant>>,
}

impl<K: Eq + Hash + Copy> WarnOnce<K> {
    pub fn new(period: Duration) -> Self {
        WarnOnce {
            period,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// True when a warning about `key` should be logged at `now` (and
    /// remembers that it was).
    pub fn should_warn(&self, key: K, now: Instant) -> bool {
        let mut last = self.last.lock().expect("warn table lock");
        if let Some(t) = last.get(&key)
            && now.saturating_duration_since(*t) < self.period
        {
            return false;
        }
        if last.len() >= MAX_KEYS && !last.contains_key(&key) {
            last.retain(|_, t| now.saturating_duration_since(*t) < self.period);
            if last.len() >= MAX_KEYS
                && let Some(oldest) = last.iter().min_by_key(|(_, t)| **t).map(|(k, _)| *k)
            {
                last.remove(&oldest);
            }
        }
        last.insert(key, now);
        true
    }
}

impl<K: Eq + Hash + Copy> Default for WarnOnce<K> {
    fn default() -> Self {
        WarnOnce::new(DEFAULT_PERIOD)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn once_per_key_per_period_and_bounded() {
        let w = WarnOnce::new(Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(w.should_warn(1u32, t0));
        assert!(!w.should_warn(1, t0 + Duration::from_secs(9)));
        assert!(w.should_warn(2, t0 + Duration::from_secs(9)));
        assert!(w.should_warn(1, t0 + Duration::from_secs(10)));
        for k in 0..(MAX_KEYS as u32 * 2) {
            w.should_warn(k + 100, t0 + Duration::from_secs(11));
        }
        assert!(w.last.lock().unwrap().len() <= MAX_KEYS);
    }
}
