//! The hint table of peer exchange: what peers said about other peers,
//! bounded in count (in all and per source address) and in time, and
//! which addresses are worth dialing at all. Pure: no I/O, time passed in.
//! Never decides when a hint is dialed (that is [`super::Exchange`]).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use crate::id::NodeId;
use crate::wire::frame::MAX_PEER_ENTRIES;

/// Most hints held at once.
pub const MAX_HINTS: usize = 512;
/// Most hints held from one source address: one full answer. Many ids on
/// one host share it, so a rogue fills at most its share of the table.
pub const SOURCE_QUOTA: usize = MAX_PEER_ENTRIES;
/// A hint not heard again for this long is forgotten.
pub const HINT_TTL: Duration = Duration::from_secs(300);

/// One hint: a source (by address) says a peer is there.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HintKey {
    /// The address of the peer that told (the quota counts per address).
    pub source: IpAddr,
    /// The id it named.
    pub id: NodeId,
}

/// What a hint holds besides its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hint {
    /// Where to dial, best first; 1 to [`MAX_PEER_ADDRS`].
    pub addrs: Vec<SocketAddr>,
    /// Who told (its id, proven by the connection the hint came on).
    pub from: NodeId,
    /// When it was last heard.
    pub heard: Instant,
}

/// What [`Hints::insert`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Taken {
    /// A new hint.
    Added,
    /// The same source said it again: its addresses and time replace the old.
    Refreshed,
    /// Added, and an older hint went to make room.
    Replaced(HintKey),
    /// No room: the table is full of sources holding no more than this one.
    Refused,
}

/// The bounded table of hints: at most `capacity` in all and `quota` per
/// source address; each forgotten `ttl` after it was last heard. When the
/// table is full, a newcomer takes the oldest hint of the source holding
/// the most, if that is more than its own source holds: a source always
/// keeps its fair share, whatever the others send. Pure: time is passed in.
#[derive(Debug)]
pub struct Hints {
    entries: HashMap<HintKey, Hint>,
    capacity: usize,
    quota: usize,
    ttl: Duration,
}

impl Default for Hints {
    fn default() -> Self {
        Hints::new(MAX_HINTS, SOURCE_QUOTA, HINT_TTL)
    }
}

impl Hints {
    pub fn new(capacity: usize, quota: usize, ttl: Duration) -> Hints {
        Hints {
            entries: HashMap::new(),
            capacity,
            quota,
            ttl,
        }
    }

    /// Records that `key.source` named `key.id` at `hint.addrs` at `hint.heard`.
    pub fn insert(&mut self, key: HintKey, hint: Hint) -> Taken {
        if let Some(old) = self.entries.get_mut(&key) {
            *old = hint;
            return Taken::Refreshed;
        }
        let own = self.count(key.source);
        let victim = if own >= self.quota {
            self.oldest_of(key.source)
        } else if self.entries.len() >= self.capacity {
            match self.largest_source() {
                Some((source, n)) if n > own => self.oldest_of(source),
                _ => None,
            }
        } else {
            None
        };
        if (own >= self.quota || self.entries.len() >= self.capacity) && victim.is_none() {
            return Taken::Refused;
        }
        if let Some(v) = victim {
            self.entries.remove(&v);
        }
        self.entries.insert(key, hint);
        victim.map_or(Taken::Added, Taken::Replaced)
    }

    /// Hints held from `source`.
    pub fn count(&self, source: IpAddr) -> usize {
        self.entries.keys().filter(|k| k.source == source).count()
    }

    /// The source holding the most hints (ties: the greatest address).
    fn largest_source(&self) -> Option<(IpAddr, usize)> {
        let mut counts: HashMap<IpAddr, usize> = HashMap::new();
        for k in self.entries.keys() {
            *counts.entry(k.source).or_default() += 1;
        }
        counts.into_iter().max_by_key(|(ip, n)| (*n, *ip))
    }

    /// The least recently heard hint of `source` (ties: the smallest id).
    fn oldest_of(&self, source: IpAddr) -> Option<HintKey> {
        self.entries
            .iter()
            .filter(|(k, _)| k.source == source)
            .min_by_key(|(k, h)| (h.heard, k.id))
            .map(|(k, _)| *k)
    }

    /// Forgets hints last heard `ttl` or more before `now`; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.entries.len();
        let ttl = self.ttl;
        self.entries
            .retain(|_, h| now.saturating_duration_since(h.heard) < ttl);
        before - self.entries.len()
    }

    /// Forgets one hint.
    pub fn remove(&mut self, key: &HintKey) {
        self.entries.remove(key);
    }

    /// Forgets every hint naming `id`.
    pub fn remove_id(&mut self, id: NodeId) {
        self.entries.retain(|k, _| k.id != id);
    }

    /// Keeps only the hints `keep` accepts.
    pub fn retain(&mut self, mut keep: impl FnMut(&HintKey) -> bool) {
        self.entries.retain(|k, _| keep(k));
    }

    pub fn get(&self, key: &HintKey) -> Option<&Hint> {
        self.entries.get(key)
    }

    /// Every hint, most recently heard first.
    pub fn newest_first(&self) -> Vec<(HintKey, Hint)> {
        let mut v: Vec<_> = self.entries.iter().map(|(k, h)| (*k, h.clone())).collect();
        v.sort_by_key(|(k, h)| (std::cmp::Reverse(h.heard), *k));
        v
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Whether `addr` (a peer's address) is worth telling `to` (the asker's
/// address), or dialing when `to` told it: never an unspecified,
/// multicast or broadcast address or port 0, and a loopback address only
/// between loopback addresses. A link-local IPv6 address takes the scope
/// of the connection it came on (`None` when that has none).
pub fn usable(addr: SocketAddr, to: SocketAddr) -> Option<SocketAddr> {
    let ip = addr.ip().to_canonical();
    let bad = match ip {
        IpAddr::V4(v4) => v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast(),
        IpAddr::V6(v6) => v6.is_unspecified() || v6.is_multicast(),
    };
    if bad || addr.port() == 0 || (ip.is_loopback() && !to.ip().to_canonical().is_loopback()) {
        return None;
    }
    match (ip, to) {
        (IpAddr::V6(v6), _) if v6.is_unicast_link_local() => match to {
            SocketAddr::V6(t) if t.ip().is_unicast_link_local() && t.scope_id() != 0 => {
                Some(std::net::SocketAddrV6::new(v6, addr.port(), 0, t.scope_id()).into())
            }
            _ => None,
        },
        _ => Some(SocketAddr::new(ip, addr.port())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    fn key(source: u8, id: u8) -> HintKey {
        HintKey {
            source: ip(source),
            id: NodeId([id; 16]),
        }
    }

    fn hint(heard: Instant) -> Hint {
        Hint {
            addrs: vec![SocketAddr::from(([10, 0, 0, 99], 7373))],
            from: NodeId([0; 16]),
            heard,
        }
    }

    #[test]
    fn a_source_over_its_quota_replaces_its_own_oldest() {
        let t0 = Instant::now();
        let mut h = Hints::new(100, 3, HINT_TTL);
        for i in 0..3 {
            let at = t0 + Duration::from_secs(u64::from(i));
            assert_eq!(h.insert(key(1, i), hint(at)), Taken::Added);
        }
        assert_eq!(h.insert(key(2, 9), hint(t0)), Taken::Added);
        let late = t0 + Duration::from_secs(10);
        assert_eq!(h.insert(key(1, 7), hint(late)), Taken::Replaced(key(1, 0)));
        assert_eq!(h.count(ip(1)), 3);
        assert!(h.get(&key(2, 9)).is_some(), "another source's hint stays");
        // Said again: refreshed, nothing goes.
        assert_eq!(h.insert(key(1, 7), hint(late)), Taken::Refreshed);
    }

    #[test]
    fn a_full_table_keeps_each_source_its_share() {
        let t0 = Instant::now();
        let mut h = Hints::new(4, 4, HINT_TTL);
        for i in 0..4 {
            h.insert(key(1, i), hint(t0));
        }
        // The flooding source gives way to a newcomer...
        assert_eq!(h.insert(key(2, 50), hint(t0)), Taken::Replaced(key(1, 0)));
        assert_eq!(h.insert(key(2, 51), hint(t0)), Taken::Replaced(key(1, 1)));
        // ...until they hold as many; then the newcomer's source is refused.
        assert_eq!(h.insert(key(2, 52), hint(t0)), Taken::Refused);
        assert_eq!((h.count(ip(1)), h.count(ip(2))), (2, 2));
        // The flooder cannot take the newcomer's back.
        assert_eq!(h.insert(key(1, 9), hint(t0)), Taken::Refused);
    }

    #[test]
    fn hints_expire() {
        let t0 = Instant::now();
        let mut h = Hints::new(10, 10, Duration::from_secs(60));
        h.insert(key(1, 1), hint(t0));
        h.insert(key(1, 2), hint(t0 + Duration::from_secs(30)));
        assert_eq!(h.expire(t0 + Duration::from_secs(59)), 0);
        assert_eq!(h.expire(t0 + Duration::from_secs(60)), 1);
        assert!(h.get(&key(1, 2)).is_some());
        h.remove_id(NodeId([2; 16]));
        assert!(h.is_empty());
    }

    #[test]
    fn usable_addresses() {
        let lan: SocketAddr = "10.0.0.1:7373".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:7373".parse().unwrap();
        let ll: SocketAddr = "[fe80::1%3]:7373".parse().unwrap();
        let ok = |a: &str, to| usable(a.parse().unwrap(), to);
        assert_eq!(ok("10.0.0.2:1", lan), Some("10.0.0.2:1".parse().unwrap()));
        assert_eq!(ok("10.0.0.2:0", lan), None);
        assert_eq!(ok("0.0.0.0:1", lan), None);
        assert_eq!(ok("224.0.0.1:1", lan), None);
        assert_eq!(ok("255.255.255.255:1", lan), None);
        assert_eq!(ok("[ff02::1]:1", lan), None);
        assert_eq!(ok("127.0.0.1:1", lan), None, "loopback to a LAN asker");
        assert_eq!(ok("127.0.0.1:1", lo), Some("127.0.0.1:1".parse().unwrap()));
        assert_eq!(
            ok("[::ffff:10.0.0.2]:1", lan),
            Some("10.0.0.2:1".parse().unwrap())
        );
        // Link-local: the scope of the connection it came on, or nothing.
        assert_eq!(
            ok("[fe80::2]:1", ll),
            Some("[fe80::2%3]:1".parse().unwrap())
        );
        assert_eq!(ok("[fe80::2]:1", lan), None);
    }

    /// The rules stated plainly, to check the table against.
    #[derive(Default)]
    struct Model(Vec<(HintKey, Instant)>);

    impl Model {
        fn count(&self, s: IpAddr) -> usize {
            self.0.iter().filter(|(k, _)| k.source == s).count()
        }
        fn oldest_of(&self, s: IpAddr) -> Option<HintKey> {
            let mut v: Vec<_> = self.0.iter().filter(|(k, _)| k.source == s).collect();
            v.sort_by_key(|(k, at)| (*at, k.id));
            v.first().map(|(k, _)| *k)
        }
        fn insert(&mut self, k: HintKey, at: Instant, cap: usize, quota: usize) {
            if let Some(e) = self.0.iter_mut().find(|(x, _)| *x == k) {
                e.1 = at;
                return;
            }
            let own = self.count(k.source);
            let victim = if own >= quota {
                self.oldest_of(k.source)
            } else if self.0.len() >= cap {
                let mut sources: Vec<IpAddr> = self.0.iter().map(|(k, _)| k.source).collect();
                sources.sort();
                sources.dedup();
                let big = sources.into_iter().max_by_key(|s| (self.count(*s), *s));
                match big {
                    Some(b) if self.count(b) > own => self.oldest_of(b),
                    _ => return,
                }
            } else {
                None
            };
            self.0.retain(|(x, _)| Some(*x) != victim);
            self.0.push((k, at));
        }
    }

    proptest! {
        /// The table matches the model, and never holds more than its
        /// capacity, more than the quota from one source, or an expired hint.
        #[test]
        fn the_table_follows_the_model(
            ops in proptest::collection::vec((0u8..5, 0u8..12, 0u64..40, any::<bool>()), 1..300),
            cap in 1usize..20,
            quota in 1usize..8,
        ) {
            let ttl = Duration::from_secs(60);
            let t0 = Instant::now();
            let mut h = Hints::new(cap, quota, ttl);
            let mut m = Model::default();
            let mut now = t0;
            for (source, id, advance, expire) in ops {
                now += Duration::from_secs(advance);
                if expire {
                    h.expire(now);
                    m.0.retain(|(_, at)| now.saturating_duration_since(*at) < ttl);
                    prop_assert!(h.newest_first().iter().all(|(_, x)| now.duration_since(x.heard) < ttl));
                } else {
                    h.insert(key(source, id), hint(now));
                    m.insert(key(source, id), now, cap, quota);
                }
                prop_assert!(h.len() <= cap);
                for s in 0..5 {
                    prop_assert!(h.count(ip(s)) <= quota);
                }
                let mut got: Vec<HintKey> = h.newest_first().into_iter().map(|(k, _)| k).collect();
                let mut want: Vec<HintKey> = m.0.iter().map(|(k, _)| *k).collect();
                got.sort();
                want.sort();
                prop_assert_eq!(got, want);
            }
        }

        /// Whatever rogue sources send, an honest source that sent no more
        /// than its share of the table keeps every hint.
        #[test]
        fn a_flood_never_pushes_out_a_fair_share(
            flood in proptest::collection::vec((2u8..6, any::<u8>()), 0..2000),
        ) {
            let t0 = Instant::now();
            let mut h = Hints::new(60, 20, HINT_TTL);
            // 5 sources in all: 60 / 5 = 12 each.
            for i in 0..12 {
                h.insert(key(1, i), hint(t0));
            }
            for (n, (source, id)) in flood.into_iter().enumerate() {
                h.insert(key(source, id), hint(t0 + Duration::from_millis(n as u64 + 1)));
            }
            prop_assert_eq!(h.count(ip(1)), 12);
        }
    }
}
