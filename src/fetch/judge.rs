//! Rules on throughput, with time passed in: when one peer is too slow to
//! keep ([`PeerRate`], judged by its worker) and when the whole download
//! gives up for lack of progress ([`Progress`], judged by the scheduler).
//!
//! Pure: never reads the clock, never touches a connection or a chunk.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::peers::DropReason;
use crate::logs::human_bytes;

/// A peer that refuses more chunks than this in one throughput window,
/// while sending less than the minimum rate, is given up on.
const MAX_REFUSALS_PER_WINDOW: u32 = 256;

/// One peer's useful throughput over windows of `window` (the stall
/// timeout): time spent waiting for it with requests in flight, verified
/// bytes it sent, and chunks it refused.
pub struct PeerRate {
    window: Duration,
    min_rate: u64,
    start: Instant,
    busy: Duration,
    useful: u64,
    refusals: u32,
}

impl PeerRate {
    pub fn new(now: Instant, window: Duration, min_rate: u64) -> PeerRate {
        PeerRate {
            window,
            min_rate,
            start: now,
            busy: Duration::ZERO,
            useful: 0,
            refusals: 0,
        }
    }

    /// Time spent waiting for an answer with requests in flight.
    pub fn waited(&mut self, d: Duration) {
        self.busy += d;
    }

    /// A verified chunk of `bytes`.
    pub fn useful(&mut self, bytes: u64) {
        self.useful += bytes;
    }

    /// A chunk refused: an answer, but not progress.
    pub fn refused(&mut self) {
        self.refusals += 1;
    }

    /// Once the window is over at `now`: a peer kept busy half of it (or
    /// refusing a lot) must have sent verified data at `min_rate`, else it
    /// is [`DropReason::Useless`]; an idle partial holder is not slow.
    /// Otherwise a new window starts.
    pub fn judge(&mut self, now: Instant) -> Option<DropReason> {
        let elapsed = now.saturating_duration_since(self.start);
        if elapsed < self.window {
            return None;
        }
        let engaged = self.busy >= self.window / 2 || self.refusals > MAX_REFUSALS_PER_WINDOW;
        let floor = (self.min_rate as f64 * elapsed.as_secs_f64()) as u64;
        if engaged && self.useful < floor {
            return Some(DropReason::Useless {
                useful: self.useful,
                elapsed,
                refusals: self.refusals,
                busy: self.busy,
                min_rate: self.min_rate,
            });
        }
        *self = PeerRate::new(now, self.window, self.min_rate);
        None
    }
}

/// Why the download as a whole gives up.
#[derive(Debug, PartialEq, Eq)]
pub enum NoProgress {
    /// No chunk completed for `give_up_after`.
    Stuck,
    /// Chunks arrive, but slower than `min_rate` over `give_up_after`:
    /// the text says how much came.
    Trickle(String),
}

/// The download's progress: when a chunk last completed, and samples of
/// bytes received for its useful throughput over the last `window`.
pub struct Progress {
    window: Duration,
    min_rate: u64,
    /// Bytes of the content still to fetch when the swarm started.
    to_fetch: u64,
    started: Instant,
    last_progress: Instant,
    last_done: u32,
    /// (when, bytes received): the oldest is at least `window` old once
    /// the download is that old.
    samples: VecDeque<(Instant, u64)>,
}

impl Progress {
    /// `window` is `give_up_after`; `to_fetch` the content's size less what
    /// was already on disk; `done` the chunks done at `now`.
    pub fn new(
        now: Instant,
        window: Duration,
        min_rate: u64,
        to_fetch: u64,
        done: u32,
    ) -> Progress {
        Progress {
            window,
            min_rate,
            to_fetch,
            started: now,
            last_progress: now,
            last_done: done,
            samples: VecDeque::new(),
        }
    }

    /// Chunks done so far at `now`.
    pub fn done(&self) -> u32 {
        self.last_done
    }

    /// A throughput sample (taken on every scheduler tick).
    pub fn sample(&mut self, now: Instant, received: u64) {
        self.samples.push_back((now, received));
    }

    /// Judges at `now`, with `done` chunks complete and `received` bytes
    /// fetched: gives up when no chunk completed for the window, or when
    /// less than `min_rate` (or what remained) came over the last window.
    pub fn check(&mut self, now: Instant, done: u32, received: u64) -> Option<NoProgress> {
        if done != self.last_done {
            self.last_done = done;
            self.last_progress = now;
        }
        let old = |at: Instant| now.saturating_duration_since(at) >= self.window;
        while self.samples.len() > 1 && old(self.samples[1].0) {
            self.samples.pop_front();
        }
        let trickle = match self.samples.front() {
            Some((at, then)) if old(*at) && old(self.started) => {
                let remaining = self.to_fetch.saturating_sub(*then);
                let floor = (self.min_rate as f64 * self.window.as_secs_f64()) as u64;
                (received - then < floor.min(remaining)).then(|| {
                    format!(
                        "{} in the last {:?}, less than {}/s",
                        human_bytes((received - then) as f64),
                        self.window,
                        human_bytes(self.min_rate as f64)
                    )
                })
            }
            _ => None,
        };
        if let Some(t) = trickle {
            return Some(NoProgress::Trickle(t));
        }
        (now.saturating_duration_since(self.last_progress) > self.window)
            .then_some(NoProgress::Stuck)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn busy_slow_peer_is_useless_idle_one_is_not() {
        let t0 = Instant::now();
        let mut r = PeerRate::new(t0, 10 * S, 1000);
        r.waited(6 * S);
        r.useful(5000);
        assert!(r.judge(t0 + 9 * S).is_none(), "window not over");
        assert!(r.judge(t0 + 10 * S).unwrap().is_useless());
        let mut idle = PeerRate::new(t0, 10 * S, 1000);
        idle.waited(4 * S);
        assert!(idle.judge(t0 + 10 * S).is_none());
        // A new window started.
        idle.waited(6 * S);
        assert!(idle.judge(t0 + 19 * S).is_none());
        assert!(idle.judge(t0 + 20 * S).is_some());
    }

    #[test]
    fn stuck_after_the_window_without_a_chunk() {
        let t0 = Instant::now();
        let mut p = Progress::new(t0, 30 * S, 1000, 1 << 30, 0);
        assert_eq!(p.check(t0 + 30 * S, 0, 0), None);
        assert_eq!(p.check(t0 + 31 * S, 0, 0), Some(NoProgress::Stuck));
        let mut p = Progress::new(t0, 30 * S, 1000, 1 << 30, 0);
        assert_eq!(p.check(t0 + 20 * S, 1, 10), None);
        assert_eq!(p.check(t0 + 50 * S, 1, 10), None);
        assert_eq!(p.check(t0 + 51 * S, 1, 10), Some(NoProgress::Stuck));
    }

    proptest! {
        /// A trickle is given up on only once the download and its oldest
        /// sample are a window old, and only when less than the floor (or
        /// what remained) came since that sample.
        #[test]
        fn trickle_rule(rates in proptest::collection::vec(0u64..2100, 1..200)) {
            let t0 = Instant::now();
            let window = 30 * S;
            let (min_rate, size) = (1000u64, 1u64 << 40);
            let mut p = Progress::new(t0, window, min_rate, size, 0);
            p.sample(t0, 0);
            let mut received = 0u64;
            let mut history = vec![(t0, 0u64)];
            for (tick, bytes) in rates.iter().enumerate() {
                let now = t0 + S * (tick as u32 + 1);
                received += bytes;
                // A chunk completes every tick: never stuck.
                let verdict = p.check(now, tick as u32 + 1, received);
                let base = history.iter().rev().find(|(at, _)| now - *at >= window).copied();
                match (&verdict, base) {
                    (Some(NoProgress::Trickle(_)), Some((_, then))) => {
                        prop_assert!(received - then < min_rate * 30);
                    }
                    (Some(_), _) => prop_assert!(false, "gave up at {:?}: {:?}", tick, verdict),
                    (None, Some((_, then))) if now - t0 >= window => {
                        prop_assert!(received - then >= min_rate * 30);
                    }
                    (None, _) => {}
                }
                if verdict.is_some() {
                    break;
                }
                p.sample(now, received);
                history.push((now, received));
            }
        }
    }
}
