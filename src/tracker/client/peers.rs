//! The tracker's peers: reading what changed in its peer list, and
//! telling the dictionary about each online one at the addresses this
//! node may reach, best last; in a private swarm, dialing each (a hint: an
//! address, a pseudonym) to learn over TCP who answers. Also which of this
//! node's own addresses are worth reporting. Never announces.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{ClientError, Follower, MAX_HINT_DIALS, MAX_PAGES, MAX_PEERS};
use crate::api::FoundVia;
use crate::dict::Dict;
use crate::id::NodeId;
use crate::peer::dial::{DialError, Dialer};
use crate::tracker::proto::{MAX_ADDRS, PeerInfo, PeersQuery, check_node_name};

impl Follower {
    /// Reads what changed in the tracker's peer list since the last poll;
    /// returns the ids of the peers listed as new or changed.
    pub(super) async fn poll_peers(&mut self) -> Result<Vec<NodeId>, ClientError> {
        let mut fresh = Vec::new();
        for _ in 0..MAX_PAGES {
            let resp = self
                .api
                .peers(&PeersQuery {
                    since: self.since,
                    epoch: self.epoch.clone(),
                    limit: None,
                    swarm: self.me.tag(),
                })
                .await?;
            if resp.full {
                self.peers.clear();
            }
            for g in &resp.gone {
                self.peers.remove(g);
                // Deregistered or timed out at the tracker: a peer known
                // only from it is gone now, not after three intervals.
                if self.dict.peers.peer(g).is_some_and(|p| {
                    p.online && p.found_via.iter().all(|v| *v == FoundVia::Tracker)
                }) {
                    // The tracker's word is checked over TCP first.
                    tracing::info!(peer = %g.short(), "peer left the tracker; checking that it left");
                    self.dict.peers.claim_departure(*g);
                }
            }
            let private = self.me.private.is_some();
            for p in resp.peers {
                let named = private || check_node_name(&p.name).is_ok();
                if p.id == self.me.id || !named || p.port == 0 {
                    continue;
                }
                if self.peers.len() < MAX_PEERS || self.peers.contains_key(&p.id) {
                    if fresh.len() < MAX_PEERS {
                        fresh.push(p.id);
                    }
                    self.peers.insert(p.id, p);
                }
            }
            self.since = resp.seq;
            self.epoch = Some(resp.epoch);
            if !resp.more {
                break;
            }
        }
        Ok(fresh)
    }

    /// Tells the dictionary about every online peer with a complete
    /// inventory at the tracker (only those in `only`, when given), once
    /// per address, best address last.
    pub(super) fn merge(&self, my_addrs: &[IpAddr], interval: Duration, only: Option<&[NodeId]>) {
        let Some(session) = &self.session else {
            return;
        };
        let listed: Box<dyn Iterator<Item = &PeerInfo>> = match only {
            None => Box::new(self.peers.values()),
            Some(ids) => Box::new(ids.iter().filter_map(|id| self.peers.get(id))),
        };
        for p in listed {
            let Some(digest) = p.digest else {
                continue;
            };
            for ip in candidates(p, session.observed, my_addrs) {
                let seen = crate::dict::Sighting {
                    id: p.id,
                    name: &p.name,
                    addr: SocketAddr::new(ip, p.port),
                    via: FoundVia::Tracker,
                    interval,
                    digest,
                    contents: p.files,
                };
                self.dict.observe(seen, std::time::Instant::now());
            }
        }
    }
}

impl Follower {
    /// A private swarm's peers are hints: dials the ones least recently
    /// tried (at most [`MAX_HINT_DIALS`] at once); whoever answers is
    /// observed as the handshake proves it.
    pub(super) fn dial_hints(&mut self, my_addrs: &[IpAddr], interval: Duration) {
        let (Some(session), Some((_, dialer))) = (&self.session, &self.me.private) else {
            return;
        };
        while self.hints.try_join_next().is_some() {}
        self.dialed.retain(|id, _| self.peers.contains_key(id));
        let mut due: Vec<(Option<Instant>, NodeId)> = self
            .peers
            .keys()
            .map(|id| (self.dialed.get(id).copied(), *id))
            .collect();
        due.sort();
        let now = Instant::now();
        for (last, id) in due {
            if self.hints.len() >= MAX_HINT_DIALS || last.is_some_and(|t| now - t < interval) {
                break;
            }
            let p = &self.peers[&id];
            let mut addrs: Vec<SocketAddr> = candidates(p, session.observed, my_addrs)
                .into_iter()
                .map(|ip| SocketAddr::new(ip, p.port))
                .collect();
            addrs.reverse();
            self.dialed.insert(id, now);
            let hint = reach_hint(dialer.clone(), self.dict.clone(), addrs, interval);
            self.hints.spawn(hint);
        }
    }
}

/// Dials one hint's addresses, best first, and tells the dictionary who
/// answered (as `--peer` targets are followed).
async fn reach_hint(dialer: Dialer, dict: Arc<Dict>, addrs: Vec<SocketAddr>, interval: Duration) {
    let conn = match dialer.dial_unknown(&addrs).await {
        Ok(conn) => conn,
        Err(DialError::Myself) => return,
        Err(e) => {
            tracing::debug!(?addrs, error = %e, "cannot reach a peer the tracker listed for this swarm");
            return;
        }
    };
    let (id, addr) = (conn.remote_node, conn.addr);
    if !dict.peers.is_online(&id) {
        tracing::info!(peer = %conn.remote_name, %addr, "swarm peer reached through the tracker");
    }
    let seen = crate::dict::Sighting {
        id,
        name: &conn.remote_name,
        addr,
        via: FoundVia::Tracker,
        interval,
        digest: conn.remote_digest,
        contents: conn.remote_contents,
    };
    let now = std::time::Instant::now();
    dict.observe(seen, now);
    dict.peers.reached(conn.hello(), addr, now);
}

/// This node's addresses worth telling others: unicast, not loopback, not
/// IPv6 link-local (useless without a scope), at most 16.
pub(super) fn reportable(addrs: &[IpAddr]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for a in addrs {
        let a = a.to_canonical();
        if a.is_loopback() || a.is_unspecified() || a.is_multicast() || is_link_local_v6(&a) {
            continue;
        }
        if a == IpAddr::from([255, 255, 255, 255]) || out.contains(&a) {
            continue;
        }
        out.push(a);
        if out.len() == MAX_ADDRS {
            break;
        }
    }
    out
}

fn is_link_local_v6(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

fn same_subnet(a: &IpAddr, b: &IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a.octets()[..3] == b.octets()[..3],
        (IpAddr::V6(a), IpAddr::V6(b)) => a.segments()[..4] == b.segments()[..4],
        _ => false,
    }
}

/// The addresses of `p` this node may reach, worst first:
/// - loopback only when both this node and `p` reach the tracker over
///   loopback (all three on one host), and then it is the best;
/// - next best, an address on one of this node's subnets;
/// - then the address the tracker sees `p`'s requests come from;
/// - then any other address `p` reported.
fn candidates(p: &PeerInfo, observed: IpAddr, mine: &[IpAddr]) -> Vec<IpAddr> {
    let same_host = observed.is_loopback() && p.source.is_loopback();
    let mut scored: Vec<(u8, IpAddr)> = Vec::new();
    for a in &p.addrs {
        let a = a.to_canonical();
        if scored.iter().any(|(_, x)| *x == a)
            || a.is_unspecified()
            || a.is_multicast()
            || is_link_local_v6(&a)
        {
            continue;
        }
        let score = if a.is_loopback() {
            if !same_host {
                continue;
            }
            4
        } else if mine.iter().any(|m| same_subnet(m, &a)) {
            3
        } else if a == p.source {
            2
        } else {
            1
        };
        scored.push((score, a));
    }
    scored.sort_by_key(|(s, _)| *s);
    scored.into_iter().map(|(_, a)| a).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(source: &str, addrs: &[&str]) -> PeerInfo {
        PeerInfo {
            id: NodeId([9; 16]),
            name: "p".into(),
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            source: source.parse().unwrap(),
            port: 7373,
            digest: Some([1; 16]),
            files: 1,
            last_seen: String::new(),
            last_seen_secs: 0.0,
        }
    }

    #[test]
    fn best_address_comes_last() {
        let lan: IpAddr = "10.1.0.5".parse().unwrap();
        let p = peer(
            "10.2.0.7",
            &[
                "10.2.0.7",
                "10.1.0.9",
                "192.168.5.5",
                "fe80::1",
                "127.0.0.1",
            ],
        );
        let got = candidates(&p, lan, &[lan]);
        let want: Vec<IpAddr> = ["192.168.5.5", "10.2.0.7", "10.1.0.9"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(got, want);
        // All on the tracker's host: loopback works and wins.
        let p = peer("127.0.0.1", &["127.0.0.1", "10.2.0.7"]);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(candidates(&p, lo, &[]).last(), Some(&lo));
        // A peer on the tracker's host seen from elsewhere: no loopback.
        assert_eq!(
            candidates(&p, lan, &[lan]),
            vec!["10.2.0.7".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn reportable_addresses() {
        let addrs: Vec<IpAddr> = [
            "127.0.0.1",
            "10.0.0.2",
            "fe80::2",
            "10.0.0.2",
            "2001:db8::1",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let want: Vec<IpAddr> = ["10.0.0.2", "2001:db8::1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(reportable(&addrs), want);
    }
}
