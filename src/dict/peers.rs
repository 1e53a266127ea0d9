//! The peer table: every peer heard of, proven or not, with its addresses;
//! room for newcomers (the bounds of [`super::MAX_PEERS`],
//! [`super::MAX_UNPROVEN`], [`super::MAX_PEERS_PER_IP`]); who needs a pull
//! or a probe. Never touches contents: when a peer goes offline or is
//! forgotten, [`super::Dict`] withdraws its holdings.
//!
//! Writers that change who is in the table or proven take the table's
//! write lock (through [`PeersWrite`]); single-field updates of one entry
//! (a failed address, a claimed departure) use the map alone. Time is
//! always passed in.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, MutexGuard};
use std::time::Instant;

use dashmap::DashMap;
use tokio::sync::Notify;

use super::peer::Peer;

/// What a verified handshake told about a peer (the server's hello):
/// [`Peers::reached`] records it.
#[derive(Clone, Copy, Debug)]
pub struct Hello<'a> {
    pub id: NodeId,
    /// The name it gave; empty when unknown.
    pub name: &'a str,
    pub digest: Digest,
    pub contents: u32,
}
use super::{
    Claim, MAX_INTERVAL, MAX_PEERS, MAX_PEERS_PER_IP, MAX_UNPROVEN, MIN_INTERVAL, Observed,
    Sighting,
};
use crate::api::FoundVia;
use crate::id::NodeId;
use crate::inventory::Digest;

/// A peer as peer exchange tells it: its id, where it proved that id over
/// TCP, and when it was last heard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProvenPeer {
    pub id: NodeId,
    /// Proven addresses, most recently heard first.
    pub addrs: Vec<SocketAddr>,
    pub last_seen: Instant,
}

#[derive(Default)]
pub struct Peers {
    table: DashMap<NodeId, Peer>,
    /// Serializes writers that add, remove or prove peers, so the bounds
    /// hold; readers use the map without it. Never held across an await.
    /// Taken before the contents' lock when both are (see `Dict`).
    write: Mutex<()>,
    /// Woken when a peer's inventory should be pulled.
    pub pull_wanted: Notify,
    /// Woken when a peer should be probed now: a departure was claimed for
    /// it by a source that cannot prove it (see [`Peers::claim_departure`]).
    pub probe_wanted: Notify,
}

/// What [`PeersWrite::observe`] did.
pub(super) struct Seen {
    pub observed: Observed,
    /// A peer forgotten to make room for the newcomer.
    pub forgotten: Option<NodeId>,
}

/// The peer table under its write lock.
pub(super) struct PeersWrite<'a> {
    peers: &'a Peers,
    _lock: MutexGuard<'a, ()>,
}

impl Peers {
    pub(super) fn write(&self) -> PeersWrite<'_> {
        PeersWrite {
            peers: self,
            _lock: self.write.lock().expect("peer table lock"),
        }
    }

    pub fn peer(&self, id: &NodeId) -> Option<Peer> {
        self.table.get(id).map(|p| p.clone())
    }

    /// `f` of the peer `id`, without copying it.
    pub fn with<R>(&self, id: &NodeId, f: impl FnOnce(&Peer) -> R) -> Option<R> {
        self.table.get(id).map(|p| f(&p))
    }

    /// Whether `id` is known and online.
    pub fn is_online(&self, id: &NodeId) -> bool {
        self.with(id, |p| p.online).unwrap_or(false)
    }

    /// Peers for which `keep` holds.
    pub fn filtered(&self, keep: impl Fn(&Peer) -> bool) -> Vec<Peer> {
        self.table
            .iter()
            .filter(|p| keep(p))
            .map(|p| p.clone())
            .collect()
    }

    /// Every online peer.
    pub fn online(&self) -> Vec<Peer> {
        self.filtered(|p| p.online)
    }

    /// Online peers with an address where they proved their id over TCP,
    /// but those in `except`, most recently heard first: at most `max` of them, each
    /// with at most `max_addrs` proven addresses that `keep` accepts (peer
    /// exchange tells only these).
    pub fn proven_peers(
        &self,
        except: &[NodeId],
        max: usize,
        max_addrs: usize,
        keep: impl Fn(&SocketAddr) -> bool,
    ) -> Vec<ProvenPeer> {
        let mut out: Vec<ProvenPeer> = self
            .table
            .iter()
            .filter(|p| p.online && p.proven && !except.contains(&p.id))
            .filter_map(|p| {
                let mut proven: Vec<_> = p
                    .addrs
                    .iter()
                    .filter(|a| a.proven && keep(&a.addr))
                    .collect();
                proven.sort_by_key(|a| std::cmp::Reverse(a.seen));
                let addrs: Vec<SocketAddr> =
                    proven.iter().take(max_addrs).map(|a| a.addr).collect();
                (!addrs.is_empty()).then(|| ProvenPeer {
                    id: p.id,
                    addrs,
                    last_seen: p.last_seen,
                })
            })
            .collect();
        out.sort_by_key(|p| std::cmp::Reverse(p.last_seen));
        out.truncate(max);
        out
    }

    /// Online peers whose inventory we should (re)pull.
    pub fn needing_pull(&self) -> Vec<Peer> {
        self.filtered(Peer::needs_pull)
    }

    /// Online peers not heard directly for one and a half intervals at
    /// `now` (found by mDNS or a tracker only, or whose multicast no longer
    /// arrives), and those whose departure was claimed.
    pub fn to_probe(&self, now: Instant) -> Vec<Peer> {
        self.filtered(|p| p.needs_probe(now))
    }

    /// Online peers silent for [`super::MISSED_ANNOUNCES`] intervals at `now`.
    pub fn silent(&self, now: Instant) -> Vec<NodeId> {
        self.filtered(|p| p.online && p.is_silent(now))
            .into_iter()
            .map(|p| p.id)
            .collect()
    }

    /// Contact report: `id` answered a TCP hello at `addr` at `now` with
    /// its current inventory digest: it is alive, and this address works.
    /// Any code that dials a peer reports here (the puller and prober, the
    /// manual peers, the download workers): the only writes to the table
    /// besides discovery's.
    pub fn reached(&self, hello: Hello<'_>, addr: SocketAddr, now: Instant) -> Observed {
        self.write().reached(hello, addr, now)
    }

    /// Contact report: a connection to `addr` failed (or another node
    /// answered there): prefer another address next time.
    pub fn unreachable(&self, id: NodeId, addr: SocketAddr) {
        if let Some(mut p) = self.table.get_mut(&id)
            && p.preferred == Some(addr)
        {
            p.preferred = None;
        }
    }

    /// A source that cannot speak for `id` (an mDNS record's removal, a
    /// tracker's list of departed nodes) says it left. Anyone can remove an
    /// mDNS record naming any id, so this changes nothing by itself: the
    /// prober says hello at once and takes the peer offline only if no
    /// address answers as `id` ([`super::Dict::probe_failed`]).
    pub fn claim_departure(&self, id: NodeId) {
        if let Some(mut p) = self.table.get_mut(&id)
            && p.online
        {
            p.departure_claimed = true;
            drop(p);
            self.probe_wanted.notify_one();
        }
    }

    /// True when `ip` holds fewer than [`MAX_PEERS_PER_IP`] peers besides
    /// `id`. Must not be called while holding an entry of the map.
    fn room_at(&self, id: NodeId, ip: IpAddr) -> bool {
        self.table
            .iter()
            .filter(|p| p.id != id && p.ip == ip)
            .count()
            < MAX_PEERS_PER_IP
    }

    /// Wakes the puller when `pull`; says what it means for the caller.
    fn pull_if(&self, pull: bool) -> Observed {
        if pull {
            self.pull_wanted.notify_one();
            Observed::Pull
        } else {
            Observed::Known
        }
    }
}

/// Eviction candidates while counting the table; the smallest key goes
/// first.
#[derive(Default)]
struct Census {
    total: usize,
    unproven: usize,
    same_ip: usize,
    worst_same: Option<((bool, Instant), NodeId)>,
    worst_unproven: Option<((bool, Instant), NodeId)>,
    worst_offline: Option<((bool, Instant), NodeId)>,
}

fn keep_min(slot: &mut Option<((bool, Instant), NodeId)>, key: (bool, Instant), id: NodeId) {
    if slot.as_ref().is_none_or(|(k, _)| key < *k) {
        *slot = Some((key, id));
    }
}

impl Census {
    fn count(peers: &Peers, ip: IpAddr) -> Census {
        let mut c = Census::default();
        for p in peers.table.iter() {
            c.total += 1;
            if !p.proven {
                c.unproven += 1;
                keep_min(&mut c.worst_unproven, (p.online, p.last_seen), p.id);
            }
            if !p.online {
                keep_min(&mut c.worst_offline, (p.proven, p.last_seen), p.id);
            }
            if p.ip == ip {
                c.same_ip += 1;
                if !p.online || !p.proven {
                    keep_min(&mut c.worst_same, (p.online, p.last_seen), p.id);
                }
            }
        }
        c
    }

    /// `Ok(None)`: room enough; `Ok(Some(id))`: forget `id` first;
    /// `Err(())`: no room, the newcomer is ignored.
    fn victim(self) -> Result<Option<NodeId>, ()> {
        let victim = if self.same_ip >= MAX_PEERS_PER_IP {
            self.worst_same
        } else if self.unproven >= MAX_UNPROVEN {
            self.worst_unproven
        } else if self.total >= MAX_PEERS {
            self.worst_offline.or(self.worst_unproven)
        } else {
            return Ok(None);
        };
        victim.map(|(_, id)| Some(id)).ok_or(())
    }
}

impl PeersWrite<'_> {
    /// Records that a peer was heard of at `now` (see [`Sighting`]).
    pub(super) fn observe(&mut self, s: &Sighting, claim: Claim, now: Instant) -> Seen {
        let interval = s.interval.clamp(MIN_INTERVAL, MAX_INTERVAL);
        let ip = s.addr.ip().to_canonical();
        let mut forgotten = None;
        if !self.peers.table.contains_key(&s.id) {
            match self.make_room(ip) {
                Ok(gone) => forgotten = gone,
                Err(()) => {
                    tracing::debug!(peer = %s.id.short(), addr = %s.addr, "peer table has no room for a new peer from this address; ignoring it");
                    return Seen {
                        observed: Observed::Known,
                        forgotten: None,
                    };
                }
            }
        }
        let mut peer = self
            .peers
            .table
            .entry(s.id)
            .or_insert_with(|| Peer::new(s, ip, interval, now));
        let pull = update(&mut peer, s, claim, interval, now);
        drop(peer);
        Seen {
            observed: self.peers.pull_if(pull),
            forgotten,
        }
    }

    /// Makes room for one more (unproven) peer first heard from `ip`,
    /// forgetting one if a bound is reached (returned, for its holdings to
    /// be withdrawn); `Err` when the newcomer must be ignored.
    ///
    /// - `ip` already has [`MAX_PEERS_PER_IP`] entries: its oldest offline
    ///   or unproven one goes (none: ignored).
    /// - [`MAX_UNPROVEN`] unproven peers: the oldest unproven one goes
    ///   (offline ones first, then the least recently heard).
    /// - [`MAX_PEERS`] peers: the longest-offline one goes, else the
    ///   oldest unproven one (none: ignored). A proven online peer is
    ///   never forgotten for a newcomer.
    fn make_room(&mut self, ip: IpAddr) -> Result<Option<NodeId>, ()> {
        let victim = Census::count(self.peers, ip).victim()?;
        if let Some(id) = victim {
            self.peers.table.remove(&id);
        }
        Ok(victim)
    }

    /// See [`Peers::reached`].
    fn reached(&mut self, hello: Hello<'_>, addr: SocketAddr, now: Instant) -> Observed {
        let Hello {
            id,
            name,
            digest,
            contents,
        } = hello;
        let ip = addr.ip().to_canonical();
        // A peer proves itself here unless its address is full already
        // (counted before taking the entry: iterating while holding it
        // would deadlock).
        let room = match self.peers.with(&id, |p| p.proven) {
            Some(false) => self.peers.room_at(id, ip),
            _ => true,
        };
        let Some(mut peer) = self.peers.table.get_mut(&id) else {
            return Observed::Known;
        };
        if !peer.online {
            return Observed::Known;
        }
        let via = peer
            .addrs
            .iter()
            .find(|a| a.addr == addr)
            .map_or(FoundVia::Manual, |a| a.via);
        peer.note_addr(addr, via, now);
        peer.departure_claimed = false;
        // Reached means a handshake proved the id (the answer is checked
        // against the id dialed), so the name in its hello is the peer's
        // own word: it replaces a label such as a private mDNS record's.
        peer.verified = true;
        if !name.is_empty() {
            peer.name = name.to_string();
        }
        if room {
            if !peer.proven {
                peer.proven = true;
                peer.ip = ip;
            }
            peer.prove_addr(addr);
        }
        peer.preferred = Some(addr);
        peer.last_seen = now;
        peer.last_direct = now;
        peer.announced_digest = digest;
        peer.contents = contents;
        let pull = peer.pulled_digest != Some(digest);
        drop(peer);
        self.peers.pull_if(pull)
    }

    /// The peer said goodbye, or stopped answering.
    pub(super) fn set_offline(&mut self, id: NodeId) {
        if let Some(mut p) = self.peers.table.get_mut(&id) {
            p.online = false;
            p.pulled_digest = None;
            p.departure_claimed = false;
        }
    }

    /// An inventory of `digest` listing `contents` was pulled from `id`:
    /// serving it under its id proves the peer too, if its address has
    /// room. `None` when the peer is not online (the inventory is
    /// dropped), else whether it is proven.
    pub(super) fn pulled(&mut self, id: NodeId, digest: Digest, contents: u32) -> Option<bool> {
        let room = match self.peers.with(&id, |p| (p.online, p.proven, p.ip))? {
            (false, _, _) => return None,
            (true, true, _) => true,
            (true, false, ip) => self.peers.room_at(id, ip),
        };
        let mut p = self.peers.table.get_mut(&id)?;
        if !p.online {
            return None;
        }
        p.pulled_digest = Some(digest);
        p.contents = contents;
        p.proven |= room;
        Some(p.proven)
    }

    /// `id`'s inventory of `digest` is not held: listed without contents,
    /// and not pulled again until its digest changes. False when the peer
    /// is not online.
    pub(super) fn refused(&mut self, id: NodeId, digest: Option<Digest>) -> bool {
        match self.peers.table.get_mut(&id) {
            Some(mut p) if p.online => {
                if let Some(d) = digest {
                    p.pulled_digest = Some(d);
                }
                p.contents = 0;
                true
            }
            _ => false,
        }
    }
}

/// Updates `peer` for a sighting at `now`; true when its inventory should
/// be pulled.
fn update(
    peer: &mut Peer,
    s: &Sighting,
    claim: Claim,
    interval: std::time::Duration,
    now: Instant,
) -> bool {
    let came_back = !peer.online;
    if claim == Claim::Signed {
        peer.verified = true;
    }
    // An online peer that proved itself is spoken for only from where it
    // did: a claim from another address (someone announcing its id) is
    // remembered as an unproven address and changes neither its name,
    // nor its interval or digest, nor how long it stays online. If the
    // real peer moved, the prober's hello proves the new address (and
    // brings its digest) within an interval and a half. A signed
    // announcement speaks for the peer from anywhere (its address is
    // still only noted, unproven).
    if claim == Claim::Unsigned
        && peer.online
        && peer.addrs.iter().any(|a| a.proven)
        && !peer.is_at(s.addr.ip())
    {
        peer.note_addr(s.addr, s.via, now);
        return false;
    }
    peer.name = s.name.to_string();
    peer.note_addr(s.addr, s.via, now);
    peer.found_via.insert(s.via);
    peer.last_seen = now;
    if s.via == FoundVia::Multicast {
        peer.last_direct = now;
    }
    // Only a multicast announcement carries the peer's own interval;
    // other sources give theirs when they first find it.
    if s.via == FoundVia::Multicast || came_back {
        peer.interval = interval;
    }
    peer.online = true;
    // A tracker's digest may lag behind what the peer itself said
    // (a hello or a pull) since the tracker's last heartbeat.
    let stale = s.via == FoundVia::Tracker
        && !came_back
        && now.saturating_duration_since(peer.last_direct) < peer.interval;
    if !stale {
        peer.announced_digest = s.digest;
        peer.contents = s.contents;
    }
    came_back || peer.pulled_digest != Some(peer.announced_digest)
}
