//! The content dictionary and the peer table: what the network offers and
//! who holds it. The only shared mutable state of discovery; written by the
//! discovery tasks, read by `ls`, `peers` and the fetch scheduler.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
use tokio::sync::Notify;

use crate::api::{ContentView, FoundVia, HolderView, PeerView};
use crate::chunkset::ChunkSet;
use crate::id::{ContentId, NodeId};
use crate::inventory::Inventory;
use crate::manifest::{Category, Manifest};
use crate::resolve::{self, Resolution};
use crate::wire::InventoryEntry;

/// Most peers remembered; the longest-offline are forgotten first.
pub const MAX_PEERS: usize = 1024;
/// Most peers remembered that never proved themselves over TCP (a TCP
/// hello at one of their addresses answered with their id). Only they are
/// evicted for a newcomer, oldest first, besides offline peers: anyone can
/// announce a made-up id, and such ids must not push out real peers.
pub const MAX_UNPROVEN: usize = 256;
/// Most peers remembered per IP address (proven or not, online or not).
/// One host runs one node, or a few in tests (30 on loopback): a flood of
/// made-up ids from one address takes this many entries at most.
pub const MAX_PEERS_PER_IP: usize = 64;
/// Announce intervals a peer may claim: it stays online for
/// [`MISSED_ANNOUNCES`] of them after its last word, so a forged announce
/// keeps a ghost at most 3 minutes (`up --announce-interval` is bounded
/// the same way).
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// A peer is offline after this many announce intervals without a word.
pub const MISSED_ANNOUNCES: u32 = 3;
/// Most addresses remembered per peer.
pub const MAX_ADDRS: usize = 8;
/// Default bound on inventory entries held for all peers together
/// (`up --max-remote-contents`).
pub const DEFAULT_MAX_REMOTE_CONTENTS: usize = 1_000_000;
/// Default bound on the memory held for all peers' inventories together
/// (`up --max-remote-bytes`), as counted by [`entry_cost`]: about 200,000
/// contents with short names.
pub const DEFAULT_MAX_REMOTE_BYTES: usize = 128 << 20;
/// Memory one inventory entry costs besides its text and bitmap: the
/// entry, its share of the content's record and of the holder map.
pub const ENTRY_OVERHEAD: usize = 512;

/// About how much memory the dictionary spends on one peer's entry: the
/// name and comment are kept twice (the inventory and the content's
/// record), the bitmap once (shared).
pub fn entry_cost(e: &InventoryEntry) -> usize {
    let bitmap = match &e.chunks {
        ChunkSet::Full => 0,
        ChunkSet::Partial(b) => b.as_bytes().len(),
    };
    ENTRY_OVERHEAD + 2 * (e.name.len() + e.comment.len()) + bitmap
}

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
    pub last_seen_wall: SystemTime,
    pub interval: Duration,
    pub online: bool,
    /// Digest the peer last announced.
    pub announced_digest: [u8; 16],
    /// Digest of the inventory we hold for it.
    pub pulled_digest: Option<[u8; 16]>,
    pub contents: u32,
    /// Someone who cannot speak for the peer (an mDNS removal, a tracker)
    /// said it left: the prober checks at once, and only a failed hello
    /// takes it offline.
    pub departure_claimed: bool,
    /// The peer answered a TCP hello with its id (see [`Dict::reached`]).
    /// Until then it is one of at most [`MAX_UNPROVEN`] and evicted first.
    pub proven: bool,
    /// The address the entry counts against ([`MAX_PEERS_PER_IP`]): where
    /// it was first heard, then where it proved itself.
    pub ip: IpAddr,
}

impl Peer {
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

    /// Remembers `addr`. When full, the oldest address not proven and not
    /// preferred makes room; announcing a peer's id from elsewhere never
    /// pushes out an address where it answered.
    fn note_addr(&mut self, addr: SocketAddr, via: FoundVia, now: Instant) {
        match self.addrs.iter_mut().find(|a| a.addr == addr) {
            Some(a) => {
                a.seen = now;
                a.via = via;
            }
            None => {
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
        }
    }

    /// True when a departure heard from `ip` may be this peer's own: `ip`
    /// is one of its addresses, one it proved itself at once it has.
    pub fn is_at(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.addrs
            .iter()
            .any(|a| (a.proven || !self.proven) && a.addr.ip().to_canonical() == ip)
    }
}

/// One content as the network offers it.
#[derive(Clone, Debug)]
pub struct Content {
    pub names: BTreeSet<String>,
    pub size: u64,
    pub category: Category,
    pub comment: String,
    /// Each holder's chunks; the bitmap bytes are shared with the holder's
    /// inventory entry, not copied.
    pub holders: HashMap<NodeId, ChunkSet>,
}

/// A peer that holds (part of) a content, as the fetcher needs it.
#[derive(Clone, Debug)]
pub struct Holder {
    pub id: NodeId,
    pub name: String,
    /// The address shown in logs.
    pub addr: SocketAddr,
    /// Every known address, best first.
    pub addrs: Vec<SocketAddr>,
    pub chunks: ChunkSet,
}

/// What the dictionary holds for all peers together.
#[derive(Default, Debug)]
struct Held {
    entries: usize,
    /// Sum of [`entry_cost`] over every entry held.
    bytes: usize,
    /// Bytes of inventory pages being pulled right now ([`PullBudget`]).
    reserved: usize,
}

/// One peer's inventory as held, with its cost.
#[derive(Clone)]
struct HeldInventory {
    inv: Inventory,
    bytes: usize,
}

#[derive(Default)]
pub struct Dict {
    peers: DashMap<NodeId, Peer>,
    contents: DashMap<ContentId, Content>,
    /// Each peer's current inventory (sorted by id), so its holdings can
    /// be updated by difference and a delta applied to it.
    inventories: DashMap<NodeId, HeldInventory>,
    /// Serializes writers so holdings never go out of step with
    /// inventories; readers use the dashmaps without it. Never held across
    /// an await. Holds what is held in all.
    write: Mutex<Held>,
    /// Most inventory entries held for all peers together; a peer whose
    /// inventory would pass it is listed without its contents.
    max_entries: usize,
    /// Most bytes ([`entry_cost`]) held for all peers together, pulls in
    /// progress included; same rule.
    max_bytes: usize,
    /// Woken whenever holdings change (a fetch waiting for holders listens).
    pub changed: Notify,
    /// Woken when a peer's inventory should be pulled.
    pub pull_wanted: Notify,
    /// Woken when a peer should be probed now: a departure was claimed for
    /// it by a source that cannot prove it (see [`Dict::claim_departure`]).
    pub probe_wanted: Notify,
    pub malformed_datagrams: AtomicU64,
    pub malformed_connections: AtomicU64,
    /// Bytes of discovery datagrams this node sent.
    pub discovery_bytes_sent: AtomicU64,
    /// Bytes of inventory pages this node served to peers.
    pub inventory_bytes_served: AtomicU64,
}

/// What an announcement means for the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Observed {
    /// Nothing new.
    Known,
    /// The peer's inventory is new or changed: pull it.
    Pull,
}

impl Dict {
    pub fn new() -> Self {
        Self::with_limit(DEFAULT_MAX_REMOTE_CONTENTS)
    }

    /// A dictionary holding at most `max_entries` inventory entries in all.
    pub fn with_limit(max_entries: usize) -> Self {
        Self::with_limits(max_entries, DEFAULT_MAX_REMOTE_BYTES)
    }

    /// A dictionary holding at most `max_entries` inventory entries and
    /// `max_bytes` of them ([`entry_cost`]) in all.
    pub fn with_limits(max_entries: usize, max_bytes: usize) -> Self {
        Dict {
            max_entries,
            max_bytes,
            ..Default::default()
        }
    }

    /// Records that `id` was heard from at `addr`.
    #[allow(clippy::too_many_arguments)]
    pub fn observe(
        &self,
        id: NodeId,
        name: &str,
        addr: SocketAddr,
        via: FoundVia,
        interval: Duration,
        digest: [u8; 16],
        contents: u32,
    ) -> Observed {
        let interval = interval.clamp(MIN_INTERVAL, MAX_INTERVAL);
        let ip = addr.ip().to_canonical();
        let mut held = self.write.lock().expect("dict write lock");
        if !self.peers.contains_key(&id) && !self.make_room(ip, &mut held) {
            tracing::debug!(peer = %id.short(), %addr, "peer table has no room for a new peer from this address; ignoring it");
            return Observed::Known;
        }
        let now = Instant::now();
        let mut peer = self.peers.entry(id).or_insert_with(|| Peer {
            id,
            name: name.to_string(),
            addrs: Vec::new(),
            preferred: None,
            found_via: BTreeSet::new(),
            last_seen: now,
            last_direct: now,
            last_seen_wall: SystemTime::now(),
            interval,
            online: true,
            announced_digest: digest,
            pulled_digest: None,
            contents,
            departure_claimed: false,
            proven: false,
            ip,
        });
        let came_back = !peer.online;
        // An online peer that proved itself is spoken for only from where it
        // did: a claim from another address (someone announcing its id) is
        // remembered as an unproven address and changes neither its name,
        // nor its interval or digest, nor how long it stays online. If the
        // real peer moved, the prober's hello proves the new address (and
        // brings its digest) within an interval and a half.
        if peer.online && peer.addrs.iter().any(|a| a.proven) && !peer.is_at(ip) {
            peer.note_addr(addr, via, now);
            return Observed::Known;
        }
        peer.name = name.to_string();
        peer.note_addr(addr, via, now);
        peer.found_via.insert(via);
        peer.last_seen = now;
        if via == FoundVia::Multicast {
            peer.last_direct = now;
        }
        peer.last_seen_wall = SystemTime::now();
        // Only a multicast announcement carries the peer's own interval;
        // other sources give theirs when they first find it.
        if via == FoundVia::Multicast || came_back {
            peer.interval = interval;
        }
        peer.online = true;
        // A tracker's digest may lag behind what the peer itself said
        // (a hello or a pull) since the tracker's last heartbeat.
        let stale = via == FoundVia::Tracker
            && !came_back
            && now.saturating_duration_since(peer.last_direct) < peer.interval;
        if !stale {
            peer.announced_digest = digest;
            peer.contents = contents;
        }
        let pull = came_back || peer.pulled_digest != Some(peer.announced_digest);
        drop(peer);
        if pull {
            self.pull_wanted.notify_one();
            Observed::Pull
        } else {
            Observed::Known
        }
    }

    /// Records that `id` answered a TCP hello at `addr` with its current
    /// inventory digest: it is alive, and this address works.
    pub fn reached(
        &self,
        id: NodeId,
        addr: SocketAddr,
        digest: [u8; 16],
        contents: u32,
    ) -> Observed {
        let _w = self.write.lock().expect("dict write lock");
        let ip = addr.ip().to_canonical();
        // A peer proves itself here unless its address is full already
        // (counted before taking the entry: iterating while holding it
        // would deadlock).
        let room = match self.peers.get(&id) {
            Some(p) if !p.proven => {
                drop(p);
                self.room_at(id, ip)
            }
            _ => true,
        };
        let Some(mut peer) = self.peers.get_mut(&id) else {
            return Observed::Known;
        };
        if !peer.online {
            return Observed::Known;
        }
        let now = Instant::now();
        let via = peer
            .addrs
            .iter()
            .find(|a| a.addr == addr)
            .map_or(FoundVia::Manual, |a| a.via);
        peer.note_addr(addr, via, now);
        peer.departure_claimed = false;
        if room {
            if !peer.proven {
                peer.proven = true;
                peer.ip = ip;
            }
            if let Some(a) = peer.addrs.iter_mut().find(|a| a.addr == addr) {
                a.proven = true;
            }
        }
        peer.preferred = Some(addr);
        peer.last_seen = now;
        peer.last_direct = now;
        peer.last_seen_wall = SystemTime::now();
        peer.announced_digest = digest;
        peer.contents = contents;
        let pull = peer.pulled_digest != Some(digest);
        drop(peer);
        if pull {
            self.pull_wanted.notify_one();
            Observed::Pull
        } else {
            Observed::Known
        }
    }

    /// A connection to `addr` failed: prefer another address next time.
    pub fn unreachable(&self, id: NodeId, addr: SocketAddr) {
        if let Some(mut p) = self.peers.get_mut(&id)
            && p.preferred == Some(addr)
        {
            p.preferred = None;
        }
    }

    /// Makes room for one more (unproven) peer first heard from `ip`,
    /// forgetting one if a bound is reached; false when the newcomer must
    /// be ignored. Caller holds the write lock.
    ///
    /// - `ip` already has [`MAX_PEERS_PER_IP`] entries: its oldest offline
    ///   or unproven one goes (none: ignored).
    /// - [`MAX_UNPROVEN`] unproven peers: the oldest unproven one goes
    ///   (offline ones first, then the least recently heard).
    /// - [`MAX_PEERS`] peers: the longest-offline one goes, else the
    ///   oldest unproven one (none: ignored). A proven online peer is
    ///   never forgotten for a newcomer.
    fn make_room(&self, ip: IpAddr, held: &mut Held) -> bool {
        let (mut total, mut unproven, mut same_ip) = (0, 0, 0);
        // Eviction candidates; the smallest key goes first.
        let mut worst_same: Option<((bool, Instant), NodeId)> = None;
        let mut worst_unproven: Option<((bool, Instant), NodeId)> = None;
        let mut worst_offline: Option<((bool, Instant), NodeId)> = None;
        let keep_min = |slot: &mut Option<((bool, Instant), NodeId)>, key, id| {
            if slot.as_ref().is_none_or(|(k, _)| key < *k) {
                *slot = Some((key, id));
            }
        };
        for p in self.peers.iter() {
            total += 1;
            let evictable = !p.online || !p.proven;
            if !p.proven {
                unproven += 1;
                keep_min(&mut worst_unproven, (p.online, p.last_seen), p.id);
            }
            if !p.online {
                keep_min(&mut worst_offline, (p.proven, p.last_seen), p.id);
            }
            if p.ip == ip {
                same_ip += 1;
                if evictable {
                    keep_min(&mut worst_same, (p.online, p.last_seen), p.id);
                }
            }
        }
        let victim = if same_ip >= MAX_PEERS_PER_IP {
            worst_same
        } else if unproven >= MAX_UNPROVEN {
            worst_unproven
        } else if total >= MAX_PEERS {
            worst_offline.or(worst_unproven)
        } else {
            return true;
        };
        match victim {
            Some((_, id)) => {
                self.forget(id, held);
                true
            }
            None => false,
        }
    }

    /// True when `ip` holds fewer than [`MAX_PEERS_PER_IP`] peers besides
    /// `id`. Must not be called while holding an entry of `peers`.
    fn room_at(&self, id: NodeId, ip: IpAddr) -> bool {
        self.peers
            .iter()
            .filter(|p| p.id != id && p.ip == ip)
            .count()
            < MAX_PEERS_PER_IP
    }

    /// Forgets a peer entirely; caller holds the write lock.
    fn forget(&self, id: NodeId, held: &mut Held) {
        self.peers.remove(&id);
        let (entries, bytes) = self.withdraw(id);
        held.entries -= entries;
        held.bytes -= bytes;
        if entries > 0 {
            self.changed.notify_waiters();
        }
    }

    /// The inventory held for a peer (to apply a delta to).
    pub fn inventory(&self, id: &NodeId) -> Option<Inventory> {
        self.inventories.get(id).map(|i| i.inv.clone())
    }

    /// Budget for pulling `id`'s inventory: every page must be admitted
    /// before it is kept (see [`PullBudget::admit`]).
    pub fn pull_budget(&self, id: NodeId) -> PullBudget<'_> {
        PullBudget {
            dict: self,
            peer: id,
            reserved: 0,
        }
    }

    /// A peer's inventory could not be held (over a limit, or the peer
    /// has no room): it is listed without contents and not pulled again
    /// until its digest changes.
    pub fn refuse_inventory(&self, id: NodeId, digest: [u8; 16], why: &str) {
        let mut held = self.write.lock().expect("dict write lock");
        match self.peers.get_mut(&id) {
            Some(mut p) if p.online => {
                p.pulled_digest = Some(digest);
                p.contents = 0;
            }
            _ => return,
        }
        tracing::warn!(peer = %id.short(), "{why}; this peer's contents are not listed");
        let (entries, bytes) = self.withdraw(id);
        held.entries -= entries;
        held.bytes -= bytes;
        self.changed.notify_waiters();
    }

    /// Replaces a peer's inventory (pulled over TCP), touching only the
    /// contents that changed.
    pub fn set_inventory(&self, id: NodeId, inv: Inventory) {
        let mut held = self.write.lock().expect("dict write lock");
        // Serving its inventory under its id proves a peer too, if its
        // address has room (a hello answered usually proved it already).
        let room = match self.peers.get(&id) {
            Some(p) if p.online && !p.proven => {
                let ip = p.ip;
                drop(p);
                self.room_at(id, ip)
            }
            Some(p) if p.online => true,
            _ => return,
        };
        let proven = match self.peers.get_mut(&id) {
            Some(mut p) if p.online => {
                p.pulled_digest = Some(inv.digest);
                p.contents = inv.entries.len() as u32;
                p.proven |= room;
                p.proven
            }
            _ => return,
        };
        let old = self
            .inventories
            .get(&id)
            .map(|i| (i.inv.entries.clone(), i.bytes));
        let old_bytes = old.as_ref().map_or(0, |(_, b)| *b);
        let old: &[InventoryEntry] = old.as_ref().map_or(&[], |(v, _)| v.as_slice());
        let bytes: usize = inv.entries.iter().map(entry_cost).sum();
        let refuse = if !proven {
            Some("this peer's address holds too many peers already")
        } else if held.entries - old.len() + inv.entries.len() > self.max_entries {
            Some(
                "this peer's inventory would pass the limit on contents held for all peers (raise --max-remote-contents)",
            )
        } else if held.bytes - old_bytes + bytes > self.max_bytes {
            Some(
                "this peer's inventory would pass the limit on memory held for all peers' contents (raise --max-remote-bytes)",
            )
        } else {
            None
        };
        if let Some(why) = refuse {
            tracing::warn!(
                peer = %id.short(),
                contents = inv.entries.len(),
                bytes,
                "{why}; its contents are not listed"
            );
            if let Some(mut p) = self.peers.get_mut(&id) {
                p.contents = 0;
            }
            let (entries, bytes) = self.withdraw(id);
            held.entries -= entries;
            held.bytes -= bytes;
            self.changed.notify_waiters();
            return;
        }
        for changed in crate::inventory::diff(old, &inv.entries) {
            match inv.entries.binary_search_by(|e| e.id.cmp(&changed)) {
                Ok(i) => self.hold(id, &inv.entries[i]),
                Err(_) => self.release(id, &changed),
            }
        }
        held.entries = held.entries - old.len() + inv.entries.len();
        held.bytes = held.bytes - old_bytes + bytes;
        self.inventories.insert(id, HeldInventory { inv, bytes });
        self.changed.notify_waiters();
    }

    /// Records that `peer` holds `e`; caller holds the write lock.
    fn hold(&self, peer: NodeId, e: &InventoryEntry) {
        let mut c = self.contents.entry(e.id).or_insert_with(|| Content {
            names: BTreeSet::new(),
            size: e.size,
            category: e.category,
            comment: String::new(),
            holders: HashMap::new(),
        });
        if c.names.len() < 16 {
            c.names.insert(e.name.clone());
        }
        if c.comment.is_empty() {
            c.comment = e.comment.clone();
        }
        c.holders.insert(peer, e.chunks.clone());
    }

    /// Records that `peer` no longer holds `id`; caller holds the write lock.
    fn release(&self, peer: NodeId, id: &ContentId) {
        let empty = match self.contents.get_mut(id) {
            Some(mut c) => {
                c.holders.remove(&peer);
                c.holders.is_empty()
            }
            None => false,
        };
        if empty {
            self.contents.remove_if(id, |_, c| c.holders.is_empty());
        }
    }

    /// Removes a peer's holdings; caller holds the write lock. Returns how
    /// many entries, and bytes, it held.
    fn withdraw(&self, id: NodeId) -> (usize, usize) {
        match self.inventories.remove(&id) {
            Some((_, old)) => {
                for e in old.inv.entries.iter() {
                    self.release(id, &e.id);
                }
                (old.inv.entries.len(), old.bytes)
            }
            None => (0, 0),
        }
    }

    /// A peer said goodbye, or stopped answering.
    pub fn set_offline(&self, id: NodeId) {
        let mut held = self.write.lock().expect("dict write lock");
        if let Some(mut p) = self.peers.get_mut(&id) {
            p.online = false;
            p.pulled_digest = None;
            p.departure_claimed = false;
        }
        let (entries, bytes) = self.withdraw(id);
        held.entries -= entries;
        held.bytes -= bytes;
        self.changed.notify_waiters();
    }

    /// A goodbye for `id` arrived from `from` (a datagram's source, or a
    /// TCP connection's remote address): the peer goes offline at once if it
    /// is known at that address ([`Peer::is_at`]); from anywhere else it is
    /// only a claim, checked by a hello ([`Dict::claim_departure`]). True
    /// when it went at once.
    pub fn depart(&self, id: NodeId, from: IpAddr) -> bool {
        match self.peers.get(&id) {
            Some(p) if p.online => {
                if !p.is_at(from) {
                    drop(p);
                    // Maybe forged, maybe the peer leaving from an address
                    // it never answered at: a hello tells which, at once.
                    tracing::debug!(peer = %id.short(), %from, "a goodbye from an address where this peer is not known; checking that it left");
                    self.claim_departure(id);
                    return false;
                }
            }
            _ => return false,
        }
        self.set_offline(id);
        true
    }

    /// A source that cannot speak for `id` (an mDNS record's removal, a
    /// tracker's list of departed nodes) says it left. Anyone can remove an
    /// mDNS record naming any id, so this changes nothing by itself: the
    /// prober says hello at once and takes the peer offline only if no
    /// address answers as `id` ([`Dict::probe_failed`]).
    pub fn claim_departure(&self, id: NodeId) {
        if let Some(mut p) = self.peers.get_mut(&id)
            && p.online
        {
            p.departure_claimed = true;
            drop(p);
            self.probe_wanted.notify_one();
        }
    }

    /// A probe found no address answering as `id`: if its departure was
    /// claimed, it is gone now, not after missed announcements.
    pub fn probe_failed(&self, id: NodeId) {
        let claimed = self
            .peers
            .get(&id)
            .is_some_and(|p| p.online && p.departure_claimed);
        if claimed {
            tracing::info!(peer = %id.short(), "peer said to have left did not answer; marking it offline");
            self.set_offline(id);
        }
    }

    /// Marks offline every peer silent for [`MISSED_ANNOUNCES`] intervals.
    pub fn expire(&self, now: Instant) -> Vec<NodeId> {
        let stale: Vec<NodeId> = self
            .peers
            .iter()
            .filter(|p| p.online)
            .filter(|p| {
                now.saturating_duration_since(p.last_seen)
                    > p.interval * MISSED_ANNOUNCES + Duration::from_millis(500)
            })
            .map(|p| p.id)
            .collect();
        for id in &stale {
            tracing::info!(peer = %id.short(), "peer went silent; marking it offline");
            self.set_offline(*id);
        }
        stale
    }

    pub fn peer(&self, id: &NodeId) -> Option<Peer> {
        self.peers.get(id).map(|p| p.clone())
    }

    /// Every online peer.
    pub fn online_peers(&self) -> Vec<Peer> {
        self.peers
            .iter()
            .filter(|p| p.online)
            .map(|p| p.clone())
            .collect()
    }

    /// Online peers whose inventory we should (re)pull.
    pub fn peers_needing_pull(&self) -> Vec<Peer> {
        self.peers
            .iter()
            .filter(|p| p.online && p.pulled_digest != Some(p.announced_digest))
            .map(|p| p.clone())
            .collect()
    }

    /// Online peers not heard directly for one and a half intervals: found
    /// by mDNS or a tracker only, or whose multicast no longer arrives.
    pub fn peers_to_probe(&self, now: Instant) -> Vec<Peer> {
        self.peers
            .iter()
            .filter(|p| {
                p.online
                    && (p.departure_claimed
                        || now.saturating_duration_since(p.last_direct) > p.interval.mul_f32(1.5))
            })
            .map(|p| p.clone())
            .collect()
    }

    /// Bytes and entries held for all peers, and bytes reserved by pulls.
    pub fn held(&self) -> (usize, usize, usize) {
        let h = self.write.lock().expect("dict write lock");
        (h.entries, h.bytes, h.reserved)
    }

    /// Online holders of `id`.
    pub fn holders(&self, id: &ContentId) -> Vec<Holder> {
        let Some(c) = self.contents.get(id) else {
            return Vec::new();
        };
        let holders: Vec<(NodeId, ChunkSet)> =
            c.holders.iter().map(|(k, v)| (*k, v.clone())).collect();
        drop(c);
        holders
            .into_iter()
            .filter_map(|(nid, chunks)| {
                let p = self.peers.get(&nid)?;
                p.online.then(|| Holder {
                    id: nid,
                    name: p.name.clone(),
                    addr: p.addr(),
                    addrs: p.addrs(),
                    chunks,
                })
            })
            .collect()
    }

    pub fn content(&self, id: &ContentId) -> Option<Content> {
        self.contents.get(id).map(|c| c.clone())
    }

    /// Resolves a user's query against what the network offers plus `extra`
    /// (this node's own contents).
    pub fn resolve(&self, query: &str, extra: &[(ContentId, String)]) -> Resolution {
        let mut all: Vec<(ContentId, Vec<String>)> = self
            .contents
            .iter()
            .map(|c| (*c.key(), c.names.iter().cloned().collect()))
            .collect();
        for (id, name) in extra {
            match all.iter_mut().find(|(i, _)| i == id) {
                Some((_, names)) => names.push(name.clone()),
                None => all.push((*id, vec![name.clone()])),
            }
        }
        resolve::resolve(
            query,
            all.iter()
                .map(|(id, names)| (*id, names.iter().map(String::as_str))),
        )
    }

    /// The view `ls` shows of one content.
    pub fn view(&self, id: &ContentId, local: bool) -> Option<ContentView> {
        let c = self.content(id)?;
        let total = Manifest::chunk_count_for(c.size, crate::manifest::CHUNK_SIZE) as u32;
        let mut holders: Vec<HolderView> = self
            .holders(id)
            .into_iter()
            .map(|h| HolderView {
                name: h.name,
                addr: h.addr.to_string(),
                chunks: h.chunks.count(total),
                total,
            })
            .collect();
        holders.sort_by(|a, b| a.name.cmp(&b.name).then(a.addr.cmp(&b.addr)));
        let complete = holders.iter().filter(|h| h.chunks >= h.total).count() as u32;
        Some(ContentView {
            id: id.to_hex(),
            name: c.names.iter().next().cloned().unwrap_or_default(),
            names: c.names.iter().cloned().collect(),
            size: c.size,
            category: c.category,
            comment: c.comment,
            complete,
            partial: holders.len() as u32 - complete,
            holders,
            local,
        })
    }

    /// Every content with at least one online holder, filtered.
    pub fn list(&self, query: Option<&str>, category: Option<Category>) -> Vec<ContentId> {
        let mut ids: Vec<(String, ContentId)> = self
            .contents
            .iter()
            .filter(|c| category.is_none_or(|cat| c.category == cat))
            .filter(|c| {
                query.is_none_or(|q| {
                    resolve::matches_filter(q, c.key(), c.names.iter().map(String::as_str))
                })
            })
            .map(|c| {
                (
                    c.names
                        .iter()
                        .next()
                        .cloned()
                        .unwrap_or_default()
                        .to_lowercase(),
                    *c.key(),
                )
            })
            .collect();
        ids.sort();
        ids.into_iter()
            .map(|(_, id)| id)
            .filter(|id| !self.holders(id).is_empty())
            .collect()
    }

    pub fn peer_views(&self) -> Vec<PeerView> {
        let now = Instant::now();
        let mut v: Vec<PeerView> = self
            .peers
            .iter()
            .map(|p| PeerView {
                id: p.id.to_hex(),
                name: p.name.clone(),
                addr: p.addr().to_string(),
                addrs: p.addrs().iter().map(|a| a.to_string()).collect(),
                online: p.online,
                last_seen: humantime::format_rfc3339_millis(p.last_seen_wall).to_string(),
                last_seen_secs: now.saturating_duration_since(p.last_seen).as_secs_f64(),
                found_via: p.found_via.iter().copied().collect(),
                contents: if p.online { p.contents } else { 0 },
            })
            .collect();
        v.sort_by(|a, b| b.online.cmp(&a.online).then(a.name.cmp(&b.name)));
        v
    }
}

/// Memory an inventory pull may take before it is held: pages are
/// admitted against [`Dict`]'s byte limit, counting what every other pull
/// in progress reserved, so concurrent pulls of huge inventories cannot
/// together pass it. The reservation ends when this is dropped (after
/// [`Dict::set_inventory`]).
pub struct PullBudget<'a> {
    dict: &'a Dict,
    peer: NodeId,
    reserved: usize,
}

impl PullBudget<'_> {
    /// Reserves room for `entries` (one page); false when they would pass
    /// the limit: stop pulling. What the peer holds now does not count, as
    /// the pull replaces it.
    pub fn admit(&mut self, entries: &[InventoryEntry]) -> bool {
        let n: usize = entries.iter().map(entry_cost).sum();
        let own = self.dict.inventories.get(&self.peer).map_or(0, |i| i.bytes);
        let mut held = self.dict.write.lock().expect("dict write lock");
        if (held.bytes - own.min(held.bytes)) + held.reserved + n > self.dict.max_bytes {
            return false;
        }
        held.reserved += n;
        self.reserved += n;
        true
    }
}

impl Drop for PullBudget<'_> {
    fn drop(&mut self) {
        if let Ok(mut held) = self.dict.write.lock() {
            held.reserved -= self.reserved;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunkset::Bitmap;

    fn entry(id: u8, name: &str, chunks: ChunkSet) -> InventoryEntry {
        InventoryEntry {
            id: ContentId([id; 32]),
            name: name.into(),
            size: 3 << 20,
            category: Category::from_name(name),
            comment: String::new(),
            chunks,
        }
    }

    fn inv(entries: Vec<InventoryEntry>) -> Inventory {
        Inventory::new(entries)
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn holdings_follow_inventories() {
        let d = Dict::new();
        let (a, b) = (NodeId([1; 16]), NodeId([2; 16]));
        let iv = Duration::from_secs(1);
        let a1 = inv(vec![entry(9, "photo.png", ChunkSet::Full)]);
        assert_eq!(
            d.observe(a, "a", addr(1), FoundVia::Multicast, iv, a1.digest, 1),
            Observed::Pull
        );
        d.set_inventory(a, a1.clone());
        assert_eq!(
            d.observe(a, "a", addr(1), FoundVia::Multicast, iv, a1.digest, 1),
            Observed::Known
        );
        d.observe(b, "b", addr(2), FoundVia::Multicast, iv, [2; 16], 1);
        let mut bm = Bitmap::new(3);
        bm.set(0);
        d.set_inventory(b, inv(vec![entry(9, "photo.png", ChunkSet::Partial(bm))]));
        let v = d.view(&ContentId([9; 32]), false).unwrap();
        assert_eq!((v.complete, v.partial), (1, 1));
        assert_eq!(d.holders(&ContentId([9; 32])).len(), 2);

        // A changed inventory replaces the old holdings.
        assert_eq!(
            d.observe(a, "a", addr(1), FoundVia::Multicast, iv, [3; 16], 1),
            Observed::Pull
        );
        d.set_inventory(a, inv(vec![entry(8, "song.mp3", ChunkSet::Full)]));
        assert_eq!(d.holders(&ContentId([9; 32])).len(), 1);

        d.set_offline(b);
        assert!(
            d.content(&ContentId([9; 32])).is_none(),
            "no holder left: gone"
        );
        assert_eq!(d.list(None, None), vec![ContentId([8; 32])]);
        assert_eq!(
            d.list(Some("SONG"), Some(Category::Audio)),
            vec![ContentId([8; 32])]
        );
        assert!(d.list(None, Some(Category::Image)).is_empty());
        // An inventory arriving for an offline peer is ignored.
        d.set_inventory(b, inv(vec![entry(7, "x", ChunkSet::Full)]));
        assert!(d.content(&ContentId([7; 32])).is_none());
    }

    #[test]
    fn a_peer_keeps_every_address_and_prefers_the_one_that_answered() {
        let d = Dict::new();
        let a = NodeId([1; 16]);
        let iv = Duration::from_secs(1);
        let v6: SocketAddr = "[fe80::1%2]:7000".parse().unwrap();
        d.observe(a, "a", addr(1), FoundVia::Multicast, iv, [1; 16], 0);
        d.observe(a, "a", v6, FoundVia::Mdns, iv, [1; 16], 0);
        let p = d.peer(&a).unwrap();
        assert_eq!(p.addrs(), vec![v6, addr(1)], "most recently seen first");
        d.reached(a, addr(1), [1; 16], 0);
        assert_eq!(d.peer(&a).unwrap().addrs(), vec![addr(1), v6]);
        d.unreachable(a, addr(1));
        assert_eq!(d.peer(&a).unwrap().preferred, None);
        for port in 10..30 {
            d.observe(a, "a", addr(port), FoundVia::Tracker, iv, [1; 16], 0);
        }
        assert_eq!(d.peer(&a).unwrap().addrs.len(), MAX_ADDRS);
    }

    #[test]
    fn an_inventory_change_touches_only_what_changed() {
        let d = Dict::new();
        let a = NodeId([1; 16]);
        d.observe(
            a,
            "a",
            addr(1),
            FoundVia::Multicast,
            Duration::from_secs(1),
            [0; 16],
            2,
        );
        d.set_inventory(
            a,
            inv(vec![
                entry(1, "one", ChunkSet::Full),
                entry(2, "two", ChunkSet::Full),
            ]),
        );
        d.set_inventory(
            a,
            inv(vec![
                entry(2, "two", ChunkSet::Full),
                entry(3, "three", ChunkSet::Full),
            ]),
        );
        assert!(d.content(&ContentId([1; 32])).is_none());
        assert_eq!(d.holders(&ContentId([2; 32])).len(), 1);
        assert_eq!(d.holders(&ContentId([3; 32])).len(), 1);
        assert_eq!(d.peer(&a).unwrap().contents, 2);
    }

    #[test]
    fn a_lagging_tracker_digest_does_not_undo_a_fresher_hello() {
        let d = Dict::new();
        let a = NodeId([1; 16]);
        let iv = Duration::from_secs(10);
        let new = inv(vec![entry(2, "two", ChunkSet::Full)]);
        d.observe(a, "a", addr(1), FoundVia::Tracker, iv, [1; 16], 1);
        // The peer itself says it changed, and we pull that version.
        d.reached(a, addr(1), new.digest, 1);
        d.set_inventory(a, new.clone());
        // The tracker still lists the old digest: no flip-flop, no re-pull.
        assert_eq!(
            d.observe(a, "a", addr(1), FoundVia::Tracker, iv, [1; 16], 1),
            Observed::Known
        );
        assert_eq!(d.peer(&a).unwrap().announced_digest, new.digest);
        // A multicast announcement always counts.
        d.observe(a, "a", addr(1), FoundVia::Multicast, iv, [3; 16], 1);
        assert_eq!(d.peer(&a).unwrap().announced_digest, [3; 16]);
    }

    #[test]
    fn contents_held_for_all_peers_are_bounded() {
        let d = Dict::with_limit(3);
        let (a, b) = (NodeId([1; 16]), NodeId([2; 16]));
        let iv = Duration::from_secs(1);
        let two = |x: u8| {
            inv(vec![
                entry(x, "x", ChunkSet::Full),
                entry(x + 1, "y", ChunkSet::Full),
            ])
        };
        let (small, big) = (two(1), two(10));
        d.observe(a, "a", addr(1), FoundVia::Multicast, iv, small.digest, 2);
        d.observe(b, "b", addr(2), FoundVia::Multicast, iv, big.digest, 2);
        d.set_inventory(a, small);
        d.set_inventory(b, big.clone());
        assert_eq!(
            d.holders(&ContentId([10; 32])).len(),
            0,
            "4 > 3: b not held"
        );
        assert!(d.peers_needing_pull().is_empty(), "and not pulled again");
        // Room made by a peer leaving lets it in.
        d.set_offline(a);
        d.set_inventory(b, big);
        assert_eq!(d.holders(&ContentId([10; 32])).len(), 1);
        assert_eq!(d.write.lock().unwrap().entries, 2);
    }

    fn nid(i: u32) -> NodeId {
        let mut id = [0u8; 16];
        id[..4].copy_from_slice(&i.to_le_bytes());
        id[15] = 0xaa;
        NodeId(id)
    }

    fn ip_addr(a: u8, b: u8, port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, a, b], port))
    }

    /// Announces `n` peers, each from its own address `10.0.x.y`, and
    /// proves them (a hello answered).
    fn proven_peers(d: &Dict, n: u32) {
        let iv = Duration::from_secs(60);
        for i in 0..n {
            let a = ip_addr((i / 250) as u8, (i % 250) as u8 + 1, 7000);
            d.observe(nid(i), "p", a, FoundVia::Multicast, iv, [0; 16], 0);
            d.reached(nid(i), a, [0; 16], 0);
        }
    }

    #[test]
    fn peer_table_is_bounded() {
        let d = Dict::new();
        proven_peers(&d, MAX_PEERS as u32 + 10);
        assert_eq!(d.peer_views().len(), MAX_PEERS);
        // An offline peer makes room for a new one.
        d.set_offline(nid(0));
        assert_eq!(
            d.observe(
                NodeId([0xff; 16]),
                "new",
                addr(2),
                FoundVia::Multicast,
                Duration::from_secs(1),
                [1; 16],
                0
            ),
            Observed::Pull
        );
        assert_eq!(d.peer_views().len(), MAX_PEERS);
        assert!(d.peer(&nid(0)).is_none());
    }

    #[test]
    fn unproven_peers_never_push_out_proven_ones() {
        // The same whether the fakes come by multicast or from a tracker.
        for via in [FoundVia::Multicast, FoundVia::Tracker] {
            unproven_flood(via);
        }
    }

    fn unproven_flood(via: FoundVia) {
        let d = Dict::new();
        let iv = Duration::from_secs(300);
        proven_peers(&d, 100);
        // A flood of made-up ids from many addresses, claiming 300 s.
        for i in 0..1100u32 {
            let a = ip_addr(200 + (i % 40) as u8, 1, 7000);
            d.observe(nid(10_000 + i), "fake", a, via, iv, [9; 16], 0);
        }
        let views = d.peer_views();
        assert_eq!(views.len(), 100 + MAX_UNPROVEN);
        for i in 0..100 {
            assert!(
                d.peer(&nid(i)).is_some_and(|p| p.online),
                "proven peer {i} kept"
            );
        }
        assert_eq!(
            d.peer(&nid(10_000 + 1099)).unwrap().interval,
            MAX_INTERVAL,
            "the claimed interval is clamped"
        );
        // A real newcomer still gets in (the oldest fake makes room), and
        // stays once it proves itself.
        let real = NodeId([0x77; 16]);
        let at = ip_addr(99, 9, 7373);
        assert_eq!(
            d.observe(
                real,
                "real",
                at,
                FoundVia::Multicast,
                Duration::from_secs(1),
                [1; 16],
                0
            ),
            Observed::Pull
        );
        d.reached(real, at, [1; 16], 0);
        for i in 0..1100u32 {
            let a = ip_addr(200 + (i % 40) as u8, 2, 7000);
            d.observe(nid(20_000 + i), "fake", a, via, iv, [9; 16], 0);
        }
        assert!(d.peer(&real).unwrap().proven);
        assert_eq!(d.peer_views().len(), 101 + MAX_UNPROVEN);
    }

    #[test]
    fn one_address_holds_a_bounded_number_of_peers() {
        let d = Dict::new();
        let iv = Duration::from_secs(60);
        let real = NodeId([0x77; 16]);
        d.observe(
            real,
            "real",
            addr(7373),
            FoundVia::Multicast,
            iv,
            [1; 16],
            0,
        );
        d.reached(real, addr(7373), [1; 16], 0);
        for i in 0..500u32 {
            d.observe(nid(i), "fake", addr(9), FoundVia::Multicast, iv, [9; 16], 0);
        }
        assert_eq!(d.peer_views().len(), MAX_PEERS_PER_IP);
        assert!(d.peer(&real).is_some(), "the proven peer stays");
        // The newest fakes are the ones kept.
        assert!(d.peer(&nid(499)).is_some() && d.peer(&nid(0)).is_none());
        // Another address is not affected.
        let other = SocketAddr::from(([127, 0, 0, 2], 1));
        assert_eq!(
            d.observe(
                NodeId([0x78; 16]),
                "b",
                other,
                FoundVia::Multicast,
                iv,
                [1; 16],
                0
            ),
            Observed::Pull
        );
    }

    #[test]
    fn goodbye_counts_only_from_where_the_peer_is() {
        let d = Dict::new();
        let iv = Duration::from_secs(1);
        let a = NodeId([1; 16]);
        let home = SocketAddr::from(([10, 0, 0, 1], 7373));
        let forger: IpAddr = [10, 0, 0, 66].into();
        d.observe(a, "a", home, FoundVia::Multicast, iv, [1; 16], 0);
        // Not proven yet: any address it was heard at counts.
        assert!(!d.depart(a, forger));
        assert!(d.peer(&a).unwrap().online);
        d.reached(a, home, [1; 16], 0);
        // The forger announces the victim's id from its own address first.
        d.observe(
            a,
            "a",
            SocketAddr::new(forger, 7373),
            FoundVia::Multicast,
            iv,
            [1; 16],
            0,
        );
        assert!(!d.depart(a, forger), "an unproven address does not count");
        assert!(d.peer(&a).unwrap().online);
        // It is only a claim: the peer is probed, and stays if it answers.
        assert!(d.peer(&a).unwrap().departure_claimed);
        d.reached(a, home, [1; 16], 0);
        assert!(!d.peer(&a).unwrap().departure_claimed);
        assert!(d.depart(a, "10.0.0.1".parse().unwrap()));
        assert!(!d.peer(&a).unwrap().online);
        // IPv4-mapped IPv6 addresses are the same address.
        d.observe(a, "a", home, FoundVia::Multicast, iv, [1; 16], 0);
        d.reached(a, home, [1; 16], 0);
        assert!(d.depart(a, "::ffff:10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn a_claimed_departure_takes_effect_only_when_the_peer_does_not_answer() {
        let d = Dict::new();
        let iv = Duration::from_secs(1);
        let a = NodeId([1; 16]);
        let home = SocketAddr::from(([10, 0, 0, 1], 7373));
        d.observe(a, "a", home, FoundVia::Mdns, iv, [1; 16], 0);
        d.reached(a, home, [1; 16], 0);
        let now = Instant::now();
        assert!(d.peers_to_probe(now).is_empty(), "just heard from");
        // A removed mDNS record (anyone can remove one naming any id).
        d.claim_departure(a);
        assert!(d.peer(&a).unwrap().online, "a claim alone changes nothing");
        assert_eq!(d.peers_to_probe(now).len(), 1, "it is probed at once");
        // The peer answers: the claim is void.
        d.reached(a, home, [1; 16], 0);
        assert!(d.peers_to_probe(now).is_empty());
        d.probe_failed(a);
        assert!(
            d.peer(&a).unwrap().online,
            "an unclaimed failure is for expiry"
        );
        // Claimed again, and this time nobody answers as `a`: gone at once.
        d.claim_departure(a);
        d.probe_failed(a);
        assert!(!d.peer(&a).unwrap().online);
    }

    #[test]
    fn a_claim_from_elsewhere_neither_renames_nor_keeps_alive_a_proven_peer() {
        let d = Dict::new();
        let iv = Duration::from_secs(1);
        let a = NodeId([1; 16]);
        let home = SocketAddr::from(([10, 0, 0, 1], 7373));
        let forger = SocketAddr::from(([10, 0, 0, 66], 7373));
        d.observe(a, "alice", home, FoundVia::Multicast, iv, [1; 16], 0);
        d.reached(a, home, [1; 16], 0);
        let seen = d.peer(&a).unwrap().last_seen;
        std::thread::sleep(Duration::from_millis(5));
        let long = Duration::from_secs(60);
        assert_eq!(
            d.observe(a, "mallory", forger, FoundVia::Multicast, long, [9; 16], 0),
            Observed::Known
        );
        let p = d.peer(&a).unwrap();
        assert_eq!(p.name, "alice");
        assert_eq!(p.interval, iv);
        assert_eq!(p.last_seen, seen, "no extra life from a forger");
        assert_eq!(p.announced_digest, [1; 16]);
        assert!(p.addrs.iter().any(|x| x.addr == forger && !x.proven));
        // The same claim from where the peer proved itself counts in full.
        d.observe(a, "alice2", home, FoundVia::Multicast, iv, [2; 16], 0);
        assert_eq!(d.peer(&a).unwrap().name, "alice2");
    }

    #[test]
    fn announcing_an_id_from_elsewhere_never_pushes_out_its_proven_address() {
        let d = Dict::new();
        let iv = Duration::from_secs(1);
        let a = NodeId([1; 16]);
        let home = SocketAddr::from(([10, 0, 0, 1], 7373));
        d.observe(a, "a", home, FoundVia::Multicast, iv, [1; 16], 0);
        d.reached(a, home, [1; 16], 0);
        d.unreachable(a, home);
        for i in 0..40 {
            let x = SocketAddr::from(([10, 0, 1, i], 7373));
            d.observe(a, "a", x, FoundVia::Multicast, iv, [1; 16], 0);
        }
        let p = d.peer(&a).unwrap();
        assert_eq!(p.addrs.len(), MAX_ADDRS);
        assert!(p.addrs.iter().any(|x| x.addr == home && x.proven));
    }

    #[test]
    fn bytes_held_for_all_peers_are_bounded() {
        let iv = Duration::from_secs(1);
        let big = |x: u8| {
            let mut e = entry(
                x,
                "big",
                ChunkSet::Partial(Bitmap::from_bytes(vec![0; 4096])),
            );
            e.size = 1 << 40;
            e
        };
        let cost = entry_cost(&big(1));
        assert_eq!(cost, ENTRY_OVERHEAD + 6 + 4096);
        let d = Dict::with_limits(1000, cost * 3);
        let (a, b) = (NodeId([1; 16]), NodeId([2; 16]));
        for (p, port) in [(a, 1), (b, 2)] {
            d.observe(p, "p", addr(port), FoundVia::Multicast, iv, [0; 16], 0);
            d.reached(p, addr(port), [0; 16], 0);
        }
        d.set_inventory(a, inv(vec![big(1), big(2)]));
        d.set_inventory(b, inv(vec![big(3), big(4)]));
        assert_eq!(d.holders(&ContentId([1; 32])).len(), 1);
        assert!(
            d.holders(&ContentId([3; 32])).is_empty(),
            "4 x cost > 3 x cost"
        );
        assert_eq!(d.held().1, 2 * cost);
        // The holder's chunks share the inventory's bitmap.
        let held = d.inventory(&a).unwrap();
        let (ChunkSet::Partial(x), ChunkSet::Partial(y)) = (
            &held.entries[0].chunks,
            &d.content(&ContentId([1; 32])).unwrap().holders[&a],
        ) else {
            panic!("partial")
        };
        assert!(std::ptr::eq(x.as_bytes(), y.as_bytes()));
        // A pull is admitted page by page against what is left, counting
        // other pulls in progress; what the pulled peer holds is replaced.
        let mut pa = d.pull_budget(a);
        assert!(pa.admit(&[big(5), big(6)]));
        assert!(pa.admit(&[big(7)]));
        assert!(!pa.admit(&[big(9)]));
        let mut pb = d.pull_budget(b);
        assert!(!pb.admit(&[big(8)]), "a's pull reserved the rest");
        drop(pa);
        assert!(pb.admit(&[big(8)]));
        drop(pb);
        assert_eq!(d.held().2, 0, "reservations end with the pull");
        d.refuse_inventory(a, [0; 16], "test");
        assert_eq!(d.held(), (0, 0, 0));
        assert!(d.peers_needing_pull().iter().all(|p| p.id != a));
    }

    #[test]
    fn silent_peers_expire() {
        let d = Dict::new();
        let a = NodeId([1; 16]);
        d.observe(
            a,
            "a",
            addr(1),
            FoundVia::Multicast,
            Duration::from_millis(100),
            [1; 16],
            1,
        );
        d.set_inventory(a, inv(vec![entry(9, "photo.png", ChunkSet::Full)]));
        assert!(d.expire(Instant::now()).is_empty());
        let later = Instant::now() + Duration::from_secs(2);
        assert_eq!(d.expire(later), vec![a]);
        assert!(d.holders(&ContentId([9; 32])).is_empty());
        let views = d.peer_views();
        assert_eq!(views.len(), 1);
        assert!(!views[0].online);
    }
}
