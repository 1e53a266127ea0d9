//! The node's counters, shown by `lanshare status`: what was dropped as
//! malformed, forged, replayed or foreign, what discovery cost, and the
//! datagrams heard from peers by each path (multicast, broadcast). Written by the tasks that see the
//! events (listeners, mDNS browser, announcer, peer server), read by the
//! status view, and the registry of transfers in progress. Only
//! bookkeeping: never a decision depends on them.

use std::sync::atomic::{AtomicU64, Ordering};

/// One counter of [`Stats`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// Datagrams and mDNS records dropped as malformed.
    MalformedDatagrams,
    /// TCP connections closed for a protocol violation.
    MalformedConnections,
    /// Bytes of discovery datagrams this node sent.
    DiscoveryBytesSent,
    /// Bytes of inventory pages this node served to peers.
    InventoryBytesServed,
    /// Signed datagrams (and mDNS blobs) seen before, or older than the
    /// replay window: a replay (a copy heard again by another path or
    /// link soon after is a [`Counter::PathDuplicates`] instead).
    ReplayedDatagrams,
    /// Datagrams and mDNS records from another swarm: sealed under another
    /// key, sealed at an open node, or plain at a private one.
    ForeignDatagrams,
    /// Datagrams unsigned, badly signed, or naming an id that is not the
    /// signing key's: never acted on.
    BadSignatureDatagrams,
    /// Datagrams dropped unchecked: their source spent its budget of
    /// signature checks.
    ThrottledDatagrams,
    /// Discovery datagrams this node sent (one per path and link).
    DatagramsSent,
    /// Signed datagrams from peers received by IPv4 multicast (path
    /// duplicates included, as below).
    ReceivedMulticast4,
    /// ... by IPv6 multicast.
    ReceivedMulticast6,
    /// ... by IPv4 broadcast.
    ReceivedBroadcast,
    /// ... sent to this node's own address.
    ReceivedUnicast,
    /// ... by IPv4 where the system does not say the destination (the
    /// portable build): multicast or broadcast.
    ReceivedIpv4Unclassified,
    /// Copies of a datagram already taken, heard soon after by another
    /// path or link (multicast and broadcast, two interfaces, IPv4 and
    /// IPv6): expected, dropped without a signature check.
    PathDuplicates,
    /// Peers named by peer exchange (each entry of each answer, and each
    /// asker offering itself).
    HintsReceived,
    /// Hints dialed to check them.
    HintsDialed,
    /// Hints a handshake proved: the peer is listed.
    HintsVerified,
    /// Hints dropped: answered by another id, unusable (no address worth
    /// dialing, stale, this node itself) or refused by the full table.
    HintsRejected,
}

const COUNTERS: usize = 19;

/// The node's counters; cheap to share behind an `Arc`.
#[derive(Debug, Default)]
pub struct Stats {
    counters: [AtomicU64; COUNTERS],
    /// The transfers in progress (`lanshare transfers`, the web UI).
    pub transfers: crate::transfers::Transfers,
    /// Whether each tracker answered its last round (the overview's
    /// warnings).
    pub trackers: TrackerHealth,
}

/// The last round with each tracker: `None` when it went through, else
/// what failed. Written by each tracker's client, read by the service.
#[derive(Debug, Default)]
pub struct TrackerHealth(std::sync::Mutex<std::collections::BTreeMap<String, Option<String>>>);

impl TrackerHealth {
    /// Records how the last round with `url` ended.
    pub fn report(&self, url: &str, error: Option<String>) {
        let mut map = self.0.lock().expect("tracker health lock");
        map.insert(url.to_string(), error);
    }

    /// The trackers whose last round failed, with what failed.
    pub fn unreachable(&self) -> Vec<(String, String)> {
        let map = self.0.lock().expect("tracker health lock");
        map.iter()
            .filter_map(|(url, e)| e.clone().map(|e| (url.clone(), e)))
            .collect()
    }
}

impl Stats {
    /// Adds `n` to `counter`.
    pub fn add(&self, counter: Counter, n: u64) {
        self.counters[counter as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// Adds one to `counter`.
    pub fn count(&self, counter: Counter) {
        self.add(counter, 1);
    }

    pub fn get(&self, counter: Counter) -> u64 {
        self.counters[counter as usize].load(Ordering::Relaxed)
    }

    /// The datagrams received from peers, by path.
    pub fn by_path(&self) -> crate::api::DatagramsByPath {
        crate::api::DatagramsByPath {
            multicast4: self.get(Counter::ReceivedMulticast4),
            multicast6: self.get(Counter::ReceivedMulticast6),
            broadcast: self.get(Counter::ReceivedBroadcast),
            unicast: self.get(Counter::ReceivedUnicast),
            ipv4_unclassified: self.get(Counter::ReceivedIpv4Unclassified),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_independent() {
        let s = Stats::default();
        s.count(Counter::MalformedDatagrams);
        s.add(Counter::DiscoveryBytesSent, 120);
        s.add(Counter::DiscoveryBytesSent, 80);
        assert_eq!(s.get(Counter::MalformedDatagrams), 1);
        assert_eq!(s.get(Counter::MalformedConnections), 0);
        assert_eq!(s.get(Counter::DiscoveryBytesSent), 200);
        assert_eq!(s.get(Counter::InventoryBytesServed), 0);
    }
}
