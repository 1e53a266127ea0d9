//! One peer as the peer table holds it: its addresses (proven or not, the
//! one that last answered), how it was found, when it was last heard, the
//! digest it announced and the one held for it. Plain data and the rules
//! on one entry; the table itself is [`super::Peers`].

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::{MAX_ADDRS, Sighting};
use crate::api::FoundVia;
use crate::id::NodeId;
use crate::inventory::Digest;

/// One address at which a peer's TCP server was announced or reached.
#[derive(Clone, Debug)]
pub struct PeerAddr {
    pub addr: SocketAddr,
    pub via: FoundVia,
    pub seen: Instant,
    /// A TCP hello at this address answered with the peer's id.
    pub proven: bool,
}

#[derive(Clone, Debug)]
pub struct Peer {
    pub id: NodeId,
    pub name: String,
    /// Addresses of the peer's TCP server (see [`Peer::addrs`] for the order).
    pub addrs: Vec<PeerAddr>,
    /// The address that last answered.
    pub preferred: Option<SocketAddr>,
    pub found_via: BTreeSet<FoundVia>,
    pub last_seen: Instant,
    /// Last time the peer was heard directly: a multicast announcement, or
    /// a TCP hello it answered.
    pub last_direct: Instant,
    pub interval: Duration,
    pub online: bool,
    /// Digest the peer last announced.
    pub announced_digest: Digest,
    /// Digest of the inventory we hold for it.
    pub pulled_digest: Option<Digest>,
    pub contents: u32,
    /// Someone who cannot speak for the peer (an mDNS removal, a tracker)
    /// said it left: the prober checks at once, and only a failed hello
    /// takes it offline.
    pub departure_claimed: bool,
    /// The peer answered a TCP hello with its id (see
    /// [`super::Peers::reached`]). Until then it is one of at most
    /// [`super::MAX_UNPROVEN`] and evicted first.
    pub proven: bool,
    /// The peer's id was proven by its key: a TCP handshake (a hello it
    /// answered) or a signed datagram. Until then the id is only claimed.
    pub verified: bool,
    /// The address the entry counts against ([`super::MAX_PEERS_PER_IP`]):
    /// where it was first heard, then where it proved itself.
    pub ip: IpAddr,
}

impl Peer {
    /// A peer first heard now, as `s` describes it: online and unproven,
    /// counted against `ip`, with `s`'s interval clamped to `interval`.
    pub(super) fn new(s: &Sighting, ip: IpAddr, interval: Duration, now: Instant) -> Self {
        Peer {
            id: s.id,
            name: s.name.to_string(),
            addrs: Vec::new(),
            preferred: None,
            found_via: BTreeSet::new(),
            last_seen: now,
            last_direct: now,
            interval,
            online: true,
            announced_digest: s.digest,
            pulled_digest: None,
            contents: s.contents,
            departure_claimed: false,
            proven: false,
            verified: false,
            ip,
        }
    }

    /// Addresses to try, best first: the one that last answered, then
    /// those where the peer proved itself, then the most recently heard (so
    /// an address someone announced the peer's id from is tried last).
    pub fn addrs(&self) -> Vec<SocketAddr> {
        let mut v: Vec<&PeerAddr> = self.addrs.iter().collect();
        v.sort_by_key(|a| {
            (
                Some(a.addr) != self.preferred,
                !a.proven,
                std::cmp::Reverse(a.seen),
            )
        });
        v.into_iter().map(|a| a.addr).collect()
    }

    /// The address shown to users.
    pub fn addr(&self) -> SocketAddr {
        self.preferred
            .or_else(|| self.addrs.iter().max_by_key(|a| a.seen).map(|a| a.addr))
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// True when a departure heard from `ip` may be this peer's own: `ip`
    /// is one of its addresses, one it proved itself at once it has.
    pub fn is_at(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.addrs
            .iter()
            .any(|a| (a.proven || !self.proven) && a.addr.ip().to_canonical() == ip)
    }

    /// Whether the peer has been silent for [`super::MISSED_ANNOUNCES`]
    /// intervals and half a second more at `now`.
    pub fn is_silent(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.last_seen)
            > self.interval * super::MISSED_ANNOUNCES + super::EXPIRY_GRACE
    }

    /// Whether the prober should say hello at `now`: a departure was
    /// claimed, or the peer was not heard directly for 1.5 intervals.
    pub fn needs_probe(&self, now: Instant) -> bool {
        self.online
            && (self.departure_claimed
                || now.saturating_duration_since(self.last_direct) > self.interval.mul_f32(1.5))
    }

    /// Whether its inventory should be (re)pulled.
    pub fn needs_pull(&self) -> bool {
        self.online && self.pulled_digest != Some(self.announced_digest)
    }

    /// Remembers `addr`. When full, the oldest address not proven and not
    /// preferred makes room; announcing a peer's id from elsewhere never
    /// pushes out an address where it answered.
    pub(super) fn note_addr(&mut self, addr: SocketAddr, via: FoundVia, now: Instant) {
        if let Some(a) = self.addrs.iter_mut().find(|a| a.addr == addr) {
            a.seen = now;
            a.via = via;
            return;
        }
        if self.addrs.len() >= MAX_ADDRS {
            let victim = (0..self.addrs.len())
                .filter(|i| Some(self.addrs[*i].addr) != self.preferred)
                .min_by_key(|i| (self.addrs[*i].proven, self.addrs[*i].seen));
            match victim {
                Some(i) if !self.addrs[i].proven => {
                    self.addrs.swap_remove(i);
                }
                _ => return,
            }
        }
        self.addrs.push(PeerAddr {
            addr,
            via,
            seen: now,
            proven: false,
        });
    }

    /// Marks `addr` as one where the peer answered as itself.
    pub(super) fn prove_addr(&mut self, addr: SocketAddr) {
        if let Some(a) = self.addrs.iter_mut().find(|a| a.addr == addr) {
            a.proven = true;
        }
    }
}
