//! Which peers one download may still ask, and why it stopped asking the
//! others: the typed reason a worker dropped its peer ([`DropReason`]),
//! per-download bans and backoff, and the give-up rule when every holder
//! was given up on ([`PeerBook`]); plus what this node remembers about
//! holders across downloads ([`HolderMemory`]). Pure: time is passed in.
//!
//! Never touches a connection, a chunk or the dictionary.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::id::NodeId;
use crate::logs::human_bytes;
use crate::peer::PeerError;
use crate::retry::{RetryBook, RetryPolicy};
use crate::store::StoreError;
use crate::wire::frame::ErrorCode;

/// A peer whose worker ended without being banned waits 500 ms before a
/// new worker is started for it, doubling on each failure up to 8 s.
pub const PEER_RETRY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(500), Duration::from_secs(8));
/// Holders remembered across downloads (good or bad answers).
const HOLDER_MEMORY: usize = 4096;

/// Why a worker stopped asking its peer. The text is what `FetchEvent::
/// PeerDropped` and the logs say.
#[derive(Debug, thiserror::Error)]
pub enum DropReason {
    /// The hello came from another node than the holder listed.
    #[error("answered as a different node")]
    WrongNode,
    /// Connecting, sending or reading failed.
    #[error("{0}")]
    Peer(#[from] PeerError),
    /// Nothing arrived for `stall_timeout` with requests in flight.
    #[error("stalled for {0:?}")]
    Stalled(Duration),
    /// Kept busy, it sent less than the minimum useful rate.
    #[error(
        "gave up on it: only {} of verified data in {:.0}s ({refusals} chunks refused, {:.0}s waiting for answers); at least {}/s is needed",
        human_bytes(*useful as f64),
        elapsed.as_secs_f64(),
        busy.as_secs_f64(),
        human_bytes(*min_rate as f64)
    )]
    Useless {
        useful: u64,
        elapsed: Duration,
        refusals: u32,
        busy: Duration,
        min_rate: u64,
    },
    /// A chunk answer to a request this worker never sent.
    #[error("sent a chunk nobody asked for (request {0})")]
    UnaskedChunk(u32),
    /// A chunk that failed its BLAKE3 check.
    #[error("sent chunk {0} with a wrong hash")]
    WrongHash(u32),
    /// Writing a verified chunk here failed (not the peer's fault).
    #[error("local write failed: {0}")]
    LocalWrite(StoreError),
    /// An error answer other than "no such chunk".
    #[error("answered {code:?}: {message}")]
    Refused { code: ErrorCode, message: String },
    /// A response that is not a chunk or an error.
    #[error("sent an unexpected response")]
    UnexpectedResponse,
}

impl DropReason {
    /// Sent bad data: never asked again in this download.
    pub fn bans(&self) -> bool {
        matches!(
            self,
            DropReason::UnaskedChunk(_) | DropReason::WrongHash(_) | DropReason::UnexpectedResponse
        )
    }

    /// Too slow to be worth asking: never asked again in this download,
    /// and asked last by the next ones.
    pub fn is_useless(&self) -> bool {
        matches!(self, DropReason::Useless { .. })
    }
}

/// How a worker ended.
#[derive(Debug)]
pub enum WorkerEnd {
    /// Nothing left this peer could send.
    Finished,
    /// It stopped asking the peer.
    Dropped(DropReason),
}

/// One download's verdicts on peers: banned ones are never asked again,
/// others wait their backoff before a new worker starts; and the rule for
/// giving up when every holder was given up on.
pub struct PeerBook {
    banned: HashSet<NodeId>,
    backoff: RetryBook<NodeId>,
    /// The last reason each peer was dropped, with its label.
    reasons: HashMap<NodeId, String>,
    /// Since when every online holder is banned with no worker running.
    all_banned_since: Option<Instant>,
    /// How long to wait then for a new holder to appear.
    wait_for_new: Duration,
}

impl PeerBook {
    pub fn new(wait_for_new: Duration) -> PeerBook {
        PeerBook {
            banned: HashSet::new(),
            backoff: RetryBook::new(PEER_RETRY),
            reasons: HashMap::new(),
            all_banned_since: None,
            wait_for_new,
        }
    }

    /// Whether a worker may be started for `id` at `now`.
    pub fn usable(&self, id: &NodeId, now: Instant) -> bool {
        !self.banned.contains(id) && self.backoff.ready(id, now)
    }

    pub fn is_banned(&self, id: &NodeId) -> bool {
        self.banned.contains(id)
    }

    /// Records how the worker for `id` (shown as `label`) ended at `now`:
    /// a finished one is looked at again after the first backoff delay; a
    /// dropped one is banned ([`DropReason::bans`], useless) or backs off.
    pub fn ended(&mut self, id: NodeId, label: &str, end: &WorkerEnd, now: Instant) {
        match end {
            WorkerEnd::Finished => self.backoff.rest(id, now),
            WorkerEnd::Dropped(reason) => {
                self.reasons.insert(id, format!("{label}: {reason}"));
                if reason.bans() || reason.is_useless() {
                    self.banned.insert(id);
                } else {
                    self.backoff.failed(id, now);
                }
            }
        }
    }

    /// The give-up rule: when no worker runs and every online holder in
    /// `holders` is banned, a new holder may still appear, so wait as long
    /// as for the first; then give up with every reason (sorted). Never
    /// gives up while no holder is online (the no-progress rule does).
    pub fn give_up(
        &mut self,
        holders: &[NodeId],
        any_active: bool,
        now: Instant,
    ) -> Option<String> {
        if any_active || !holders.iter().all(|h| self.banned.contains(h)) {
            self.all_banned_since = None;
            return None;
        }
        let since = *self.all_banned_since.get_or_insert(now);
        (!holders.is_empty() && now.saturating_duration_since(since) > self.wait_for_new).then(
            || {
                format!(
                    "every holder was given up on: {}",
                    self.reasons().join("; ")
                )
            },
        )
    }

    /// Every peer's last drop reason, sorted.
    pub fn reasons(&self) -> Vec<String> {
        let mut r: Vec<String> = self.reasons.values().cloned().collect();
        r.sort();
        r
    }
}

/// What this node learnt about holders across downloads: those that sent a
/// manifest or chunks are asked first next time, those that failed last.
#[derive(Default)]
pub struct HolderMemory {
    inner: Mutex<HashMap<NodeId, (bool, Instant)>>,
}

impl HolderMemory {
    /// 0: answered before; 1: unknown; 2: failed last time.
    pub(super) fn rank(&self, id: &NodeId) -> u8 {
        match self.inner.lock().expect("memory lock").get(id) {
            Some((true, _)) => 0,
            None => 1,
            Some((false, _)) => 2,
        }
    }

    /// Remembers at `now` whether `id` answered; the oldest entry goes
    /// when the memory is full.
    pub(super) fn note(&self, id: NodeId, good: bool, now: Instant) {
        let mut m = self.inner.lock().expect("memory lock");
        if m.len() >= HOLDER_MEMORY
            && !m.contains_key(&id)
            && let Some(oldest) = m.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| *k)
        {
            m.remove(&oldest);
        }
        m.insert(id, (good, now));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn id(n: u8) -> NodeId {
        NodeId([n; 16])
    }

    fn failed() -> WorkerEnd {
        WorkerEnd::Dropped(DropReason::Stalled(Duration::from_secs(10)))
    }

    #[test]
    fn texts_are_unchanged() {
        let useless = DropReason::Useless {
            useful: 1024,
            elapsed: Duration::from_secs(10),
            refusals: 3,
            busy: Duration::from_secs(9),
            min_rate: 32 << 10,
        };
        assert_eq!(
            useless.to_string(),
            "gave up on it: only 1.0KiB of verified data in 10s (3 chunks refused, 9s waiting for answers); at least 32.0KiB/s is needed"
        );
        assert_eq!(
            DropReason::Stalled(Duration::from_secs(10)).to_string(),
            "stalled for 10s"
        );
        assert_eq!(
            DropReason::WrongHash(7).to_string(),
            "sent chunk 7 with a wrong hash"
        );
        assert_eq!(
            DropReason::UnaskedChunk(3).to_string(),
            "sent a chunk nobody asked for (request 3)"
        );
        assert!(DropReason::WrongHash(1).bans() && !DropReason::WrongNode.bans());
    }

    #[test]
    fn finished_peer_is_looked_at_again_soon() {
        let mut b = PeerBook::new(Duration::from_secs(3));
        let t0 = Instant::now();
        b.ended(id(1), "a", &WorkerEnd::Finished, t0);
        assert!(!b.usable(&id(1), t0 + Duration::from_millis(499)));
        assert!(b.usable(&id(1), t0 + Duration::from_millis(500)));
        // A failure after that waits twice as long.
        b.ended(id(1), "a", &failed(), t0);
        assert!(!b.usable(&id(1), t0 + Duration::from_millis(999)));
        assert!(b.usable(&id(1), t0 + Duration::from_millis(1000)));
    }

    #[derive(Clone, Debug)]
    enum Op {
        /// A worker for peer n ended: 0 finished, 1 failed, 2 banned, 3 useless.
        End(u8, u8),
        /// Time passes (ms).
        Wait(u64),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..4, 0u8..4).prop_map(|(p, k)| Op::End(p, k)),
            (0u64..12_000).prop_map(Op::Wait),
        ]
    }

    proptest! {
        /// A peer that failed N times in a row is never asked again within
        /// its backoff (500 ms doubling to 8 s), is asked again once it is
        /// over, and a banned peer is never asked again.
        #[test]
        fn failed_peer_waits_its_backoff(ops in proptest::collection::vec(op(), 1..80)) {
            let mut b = PeerBook::new(Duration::from_secs(3));
            let mut now = Instant::now();
            // Model: per peer, consecutive failures, last end, banned.
            let mut model: HashMap<u8, (u32, Instant, bool)> = HashMap::new();
            for op in ops {
                match op {
                    Op::Wait(ms) => now += Duration::from_millis(ms),
                    Op::End(p, kind) => {
                        let end = match kind {
                            0 => WorkerEnd::Finished,
                            1 => failed(),
                            2 => WorkerEnd::Dropped(DropReason::WrongHash(0)),
                            _ => WorkerEnd::Dropped(DropReason::Useless { useful: 0, elapsed: Duration::from_secs(10), refusals: 0, busy: Duration::from_secs(10), min_rate: 1 }),
                        };
                        let e = model.entry(p).or_insert((0, now, false));
                        // A finished worker counts as one failure: the next waits 1 s.
                        e.0 = if kind == 0 { 1 } else { e.0 + 1 };
                        e.1 = now;
                        e.2 |= kind >= 2;
                        b.ended(id(p), "p", &end, now);
                    }
                }
                for (p, (n, at, banned)) in &model {
                    let wait = Duration::from_millis(500 * (1u64 << (n - 1).min(4)));
                    let expect = !banned && now >= *at + wait;
                    prop_assert_eq!(b.usable(&id(*p), now), expect, "peer {} after {} failures", p, n);
                    if !banned && now < *at + wait {
                        prop_assert!(!b.usable(&id(*p), *at + wait - Duration::from_millis(1)));
                    }
                }
            }
        }

        /// The download gives up exactly when no worker runs, every online
        /// holder is banned, at least one is online, and the wait for a
        /// new holder is over.
        #[test]
        fn gives_up_exactly_when_no_usable_peer_remains(
            steps in proptest::collection::vec((0u8..4, any::<bool>(), 0u64..2000, any::<bool>()), 1..60),
        ) {
            let wait = Duration::from_secs(3);
            let mut b = PeerBook::new(wait);
            let mut now = Instant::now();
            let mut since: Option<Instant> = None;
            let online = [id(0), id(1), id(2)];
            for (ban, active, advance, some_online) in steps {
                now += Duration::from_millis(advance);
                if ban < 3 {
                    b.ended(online[ban as usize], "p", &WorkerEnd::Dropped(DropReason::WrongHash(0)), now);
                }
                let holders: &[NodeId] = if some_online { &online } else { &[] };
                let all_banned = holders.iter().all(|h| b.is_banned(h));
                let expect = if active || !all_banned {
                    since = None;
                    false
                } else {
                    let s = *since.get_or_insert(now);
                    some_online && now - s > wait
                };
                let got = b.give_up(holders, active, now);
                prop_assert_eq!(got.is_some(), expect);
                if let Some(text) = got {
                    prop_assert!(text.starts_with("every holder was given up on: p: sent chunk 0 with a wrong hash"));
                }
            }
        }
    }
}
