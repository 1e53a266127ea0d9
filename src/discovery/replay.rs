//! Freshness and cost bounds of signed datagrams: the sequence numbers this
//! node signs ([`next_seq`]), the per-sender replay window
//! ([`ReplayGuard`], RFC 6479 style, as WireGuard does) in a bounded table
//! ([`ReplayTable`]), the datagrams taken lately whose copies by another
//! path are expected ([`PathCopies`]), and the per-source budget of
//! signature checks ([`VerifyBudget`]).
//!
//! Owns: those decisions. Never touches the network, the dictionary or the
//! clock: time is passed in.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::id::NodeId;

/// Sequence numbers behind the highest one seen that are still accepted
/// once (a datagram overtaken by a later one).
pub const WINDOW: u64 = 64;
/// A sender's window is kept this long after it was last heard.
pub const KEEP: Duration = Duration::from_secs(3600);
/// Most senders whose window is kept.
pub const MAX_SENDERS: usize = crate::dict::MAX_PEERS;
/// Signature checks allowed per source address and second (about 2% of a
/// core each); a burst of as many is allowed.
pub const VERIFY_PER_SEC: f64 = 200.0;
/// Most source addresses whose budget is tracked.
pub const MAX_SOURCES: usize = 1024;

/// A datagram taken is expected again by another route (multicast and
/// broadcast, another link or family) within this long: such a copy is a
/// path duplicate, not a replay. The copies are sent back to back.
pub const COPY_WINDOW: Duration = Duration::from_secs(2);
/// Most datagrams remembered for spotting their copies.
pub const MAX_COPIES: usize = 1024;
/// Most routes remembered per datagram (two paths on four links).
pub const MAX_ROUTES: usize = 8;

pub use crate::identity::next_seq;

/// Whether a sequence number is new for its sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Freshness {
    Fresh,
    /// The first number heard from a sender with no window (never heard,
    /// silent for [`KEEP`], or pushed out of a full table): new to this
    /// node, but a replay of something older cannot be ruled out.
    First,
    /// Seen already, or older than the window: a replay (or the same
    /// datagram heard again on another link).
    Replayed,
}

/// One sender's replay window: the highest sequence number seen, and which
/// of the [`WINDOW`] numbers up to it were (bit `i`: `highest - i`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplayGuard {
    highest: u64,
    seen: u64,
}

impl ReplayGuard {
    /// A window whose first number is `seq`.
    pub fn new(seq: u64) -> Self {
        ReplayGuard {
            highest: seq,
            seen: 1,
        }
    }

    /// Checks `seq` and, when fresh, records it.
    pub fn check(&mut self, seq: u64) -> Freshness {
        if seq > self.highest {
            let shift = seq - self.highest;
            self.seen = if shift >= WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.highest = seq;
            return Freshness::Fresh;
        }
        let back = self.highest - seq;
        if back >= WINDOW || self.seen & (1 << back) != 0 {
            return Freshness::Replayed;
        }
        self.seen |= 1 << back;
        Freshness::Fresh
    }
}

/// The replay windows of every sender heard within [`KEEP`], at most
/// [`MAX_SENDERS`] of them (the least recently heard goes first).
pub struct ReplayTable {
    max: usize,
    senders: Mutex<HashMap<NodeId, (ReplayGuard, Instant)>>,
}

impl Default for ReplayTable {
    fn default() -> Self {
        ReplayTable::with_limit(MAX_SENDERS)
    }
}

impl ReplayTable {
    pub fn with_limit(max: usize) -> Self {
        ReplayTable {
            max,
            senders: Mutex::new(HashMap::new()),
        }
    }

    /// Checks `seq` from `node` (whose signature was verified) at `now`.
    pub fn check(&self, node: NodeId, seq: u64, now: Instant) -> Freshness {
        let mut senders = self.senders.lock().expect("replay table lock");
        if let Some((guard, heard)) = senders.get_mut(&node)
            && now.saturating_duration_since(*heard) < KEEP
        {
            let fresh = guard.check(seq);
            if fresh == Freshness::Fresh {
                *heard = now;
            }
            return fresh;
        }
        make_room(&mut senders, self.max, now, KEEP, |(_, heard)| *heard);
        senders.insert(node, (ReplayGuard::new(seq), now));
        Freshness::First
    }

    pub fn len(&self) -> usize {
        self.senders.lock().expect("replay table lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a datagram is a copy of one taken lately.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Copy {
    /// The same bytes as a datagram taken within [`COPY_WINDOW`], by a
    /// route not heard for it yet (or an unknown one): expected.
    ByAnotherRoute,
    /// Not such a copy: check it as any datagram.
    No,
}

/// The datagrams taken within [`COPY_WINDOW`] (by a digest of their
/// bytes) and the routes `R` each was heard by; at most [`MAX_COPIES`].
/// Only datagrams that passed every check are remembered, so their copies
/// are dropped without spending a signature check.
pub struct PathCopies<R> {
    taken: Mutex<HashMap<[u8; 32], Taken<R>>>,
}

/// When a datagram was taken, and the routes it was heard by.
type Taken<R> = (Instant, Vec<R>);

impl<R> Default for PathCopies<R> {
    fn default() -> Self {
        PathCopies {
            taken: Mutex::new(HashMap::new()),
        }
    }
}

impl<R: PartialEq + std::marker::Copy> PathCopies<R> {
    /// Runs the replay `check` of a verified datagram heard by `route`
    /// (None: unknown) at `now`, and remembers it when fresh, atomically
    /// with [`PathCopies::check`]: of two copies verified at once by two
    /// listeners (IPv4 and IPv6), one is taken and the other is a copy,
    /// never a replay. None: a copy by another route.
    pub fn settle(
        &self,
        digest: [u8; 32],
        route: Option<R>,
        now: Instant,
        check: impl FnOnce() -> Freshness,
    ) -> Option<Freshness> {
        let mut taken = self.taken.lock().expect("path copies lock");
        match check() {
            Freshness::Replayed => match copy_of(&mut taken, digest, route, now) {
                Copy::ByAnotherRoute => None,
                Copy::No => Some(Freshness::Replayed),
            },
            fresh => {
                if !taken.contains_key(&digest) {
                    make_room(&mut taken, MAX_COPIES, now, COPY_WINDOW, |(t, _)| *t);
                }
                taken.insert(digest, (now, route.into_iter().collect()));
                Some(fresh)
            }
        }
    }

    /// Whether `digest` heard by `route` at `now` is a copy by another
    /// route of a datagram taken lately; if so, that route is remembered.
    /// A copy by a route it was heard by already is no path duplicate.
    pub fn check(&self, digest: [u8; 32], route: Option<R>, now: Instant) -> Copy {
        copy_of(
            &mut self.taken.lock().expect("path copies lock"),
            digest,
            route,
            now,
        )
    }
}

/// [`PathCopies::check`] on the locked map.
fn copy_of<R: PartialEq + std::marker::Copy>(
    taken: &mut HashMap<[u8; 32], Taken<R>>,
    digest: [u8; 32],
    route: Option<R>,
    now: Instant,
) -> Copy {
    let Some((when, routes)) = taken.get_mut(&digest) else {
        return Copy::No;
    };
    if now.saturating_duration_since(*when) >= COPY_WINDOW {
        return Copy::No;
    }
    match route {
        None => Copy::ByAnotherRoute,
        Some(r) if routes.contains(&r) => Copy::No,
        Some(_) if routes.len() >= MAX_ROUTES => Copy::No,
        Some(r) => {
            routes.push(r);
            Copy::ByAnotherRoute
        }
    }
}

/// Before inserting a new key in `map` (bounded to `max`): drops entries
/// older than `keep` at `now`, then the oldest if still full.
fn make_room<K: Eq + Hash + std::marker::Copy, V>(
    map: &mut HashMap<K, V>,
    max: usize,
    now: Instant,
    keep: Duration,
    when: impl Fn(&V) -> Instant,
) {
    if map.len() < max {
        return;
    }
    map.retain(|_, v| now.saturating_duration_since(when(v)) < keep);
    if map.len() >= max
        && let Some(oldest) = map.iter().min_by_key(|(_, v)| when(v)).map(|(k, _)| *k)
    {
        map.remove(&oldest);
    }
}

/// Whether a signature check may be spent on a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Budget {
    Allowed,
    /// Over [`VERIFY_PER_SEC`] for its source: dropped unchecked.
    Exhausted,
}

/// A token bucket of signature checks per source address.
pub struct VerifyBudget {
    per_sec: f64,
    sources: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl Default for VerifyBudget {
    fn default() -> Self {
        VerifyBudget::new(VERIFY_PER_SEC)
    }
}

impl VerifyBudget {
    pub fn new(per_sec: f64) -> Self {
        VerifyBudget {
            per_sec,
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// Spends one check for a datagram from `ip` at `now`, if any is left.
    pub fn spend(&self, ip: IpAddr, now: Instant) -> Budget {
        let mut sources = self.sources.lock().expect("verify budget lock");
        if !sources.contains_key(&ip) {
            make_room(&mut sources, MAX_SOURCES, now, KEEP, |(_, t)| *t);
        }
        let (tokens, last) = sources.entry(ip).or_insert((self.per_sec, now));
        let refill = now.saturating_duration_since(*last).as_secs_f64() * self.per_sec;
        *tokens = (*tokens + refill).min(self.per_sec);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Budget::Allowed
        } else {
            Budget::Exhausted
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn in_order_reordered_old_and_duplicate() {
        let mut g = ReplayGuard::new(1000);
        assert_eq!(g.check(1000), Freshness::Replayed, "duplicate of the first");
        assert_eq!(g.check(1010), Freshness::Fresh);
        assert_eq!(
            g.check(1005),
            Freshness::Fresh,
            "reordered within the window"
        );
        assert_eq!(g.check(1005), Freshness::Replayed);
        assert_eq!(g.check(1010 - WINDOW + 1), Freshness::Fresh);
        assert_eq!(
            g.check(1010 - WINDOW),
            Freshness::Replayed,
            "older than the window"
        );
        assert_eq!(g.check(5000), Freshness::Fresh, "a jump clears the window");
        assert_eq!(g.check(1010), Freshness::Replayed);
        assert_eq!(g.check(4999), Freshness::Fresh);
    }

    #[test]
    fn seqs_strictly_increase_even_when_the_clock_stands_still_or_goes_back() {
        let t = std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(2_000_000_000);
        let a = next_seq(t);
        let b = next_seq(t);
        let c = next_seq(t - Duration::from_secs(60));
        assert!(a < b && b < c);
        assert!(next_seq(t + Duration::from_secs(1)) >= a + 1_000_000);
    }

    #[test]
    fn the_table_is_bounded_and_forgets_after_an_hour() {
        let t = ReplayTable::with_limit(4);
        let t0 = Instant::now();
        let id = |i: u8| NodeId([i; 16]);
        assert_eq!(t.check(id(1), 10, t0), Freshness::First);
        assert_eq!(t.check(id(1), 10, t0), Freshness::Replayed);
        assert_eq!(t.check(id(1), 11, t0), Freshness::Fresh);
        for i in 2..10 {
            t.check(id(i), 10, t0 + Duration::from_secs(i as u64));
        }
        assert!(t.len() <= 4);
        let later = t0 + KEEP + Duration::from_secs(60);
        assert_eq!(
            t.check(id(9), 10, later),
            Freshness::First,
            "forgotten after KEEP"
        );
    }

    #[test]
    fn a_copy_by_another_route_soon_after_is_a_path_duplicate() {
        let c: PathCopies<u8> = PathCopies::default();
        let t0 = Instant::now();
        let (d, other) = ([1; 32], [2; 32]);
        let fresh = || Freshness::Fresh;
        assert_eq!(c.settle(d, Some(1), t0, fresh), Some(Freshness::Fresh));
        assert_eq!(c.check(other, Some(2), t0), Copy::No, "never taken");
        assert_eq!(c.check(d, Some(1), t0), Copy::No, "the same route again");
        let soon = t0 + Duration::from_millis(5);
        assert_eq!(c.check(d, Some(2), soon), Copy::ByAnotherRoute);
        assert_eq!(c.check(d, Some(2), soon), Copy::No, "that route again");
        assert_eq!(c.check(d, None, soon), Copy::ByAnotherRoute, "unknown");
        assert_eq!(c.check(d, Some(3), t0 + COPY_WINDOW), Copy::No, "too late");
        // A replay window that says "seen" (the other listener took it
        // first): a copy by another route, a replay by a known one.
        let seen = || Freshness::Replayed;
        assert_eq!(c.settle(d, Some(4), soon, seen), None);
        assert_eq!(c.settle(d, Some(4), soon, seen), Some(Freshness::Replayed));
        // Bounded: the oldest make room.
        for i in 0..(MAX_COPIES as u32 + 10) {
            let mut k = [0u8; 32];
            k[..4].copy_from_slice(&i.to_le_bytes());
            c.settle(k, Some(1), t0 + Duration::from_micros(i as u64), fresh);
        }
        assert!(c.taken.lock().unwrap().len() <= MAX_COPIES);
    }

    #[test]
    fn the_budget_caps_checks_per_source() {
        let b = VerifyBudget::new(10.0);
        let t0 = Instant::now();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        let allowed = (0..50)
            .filter(|_| b.spend(ip, t0) == Budget::Allowed)
            .count();
        assert_eq!(allowed, 10);
        assert_eq!(b.spend(other, t0), Budget::Allowed, "per source");
        assert_eq!(
            b.spend(ip, t0 + Duration::from_millis(150)),
            Budget::Allowed
        );
        assert_eq!(
            b.spend(ip, t0 + Duration::from_millis(150)),
            Budget::Exhausted
        );
    }

    proptest! {
        /// Against a model (the set of accepted numbers): a number is
        /// accepted iff never accepted before and within WINDOW of the
        /// highest accepted so far.
        #[test]
        fn matches_the_model(start in 0u64..1_000_000, steps in proptest::collection::vec(-80i64..200, 1..200)) {
            let mut g = ReplayGuard::new(start);
            let mut accepted = std::collections::BTreeSet::from([start]);
            let mut cur = start as i64;
            for s in steps {
                cur = (cur + s).max(0);
                let seq = cur as u64;
                let highest = *accepted.iter().next_back().unwrap();
                let expect = if accepted.contains(&seq) || seq + WINDOW <= highest {
                    Freshness::Replayed
                } else {
                    Freshness::Fresh
                };
                prop_assert_eq!(g.check(seq), expect, "seq {}", seq);
                if expect == Freshness::Fresh {
                    accepted.insert(seq);
                }
            }
        }

        #[test]
        fn a_replay_is_never_fresh(seqs in proptest::collection::vec(any::<u64>(), 1..100)) {
            let mut g = ReplayGuard::new(seqs[0]);
            for s in &seqs {
                g.check(*s);
                prop_assert_eq!(g.check(*s), Freshness::Replayed);
            }
        }
    }
}
