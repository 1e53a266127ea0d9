//! The content dictionary and the peer table: what the network offers and
//! who holds it. The only shared mutable state of discovery; written by the
//! discovery tasks, read by `ls`, `peers` and the fetch scheduler.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
use tokio::sync::Notify;

use crate::api::{ContentView, FoundVia, HolderView, PeerView};
use crate::chunkset::ChunkSet;
use crate::id::{ContentId, NodeId};
use crate::manifest::{Category, Manifest};
use crate::resolve::{self, Resolution};
use crate::store::Inventory;
use crate::wire::InventoryEntry;

/// Most peers remembered; the longest-offline are forgotten first.
pub const MAX_PEERS: usize = 1024;
/// A peer is offline after this many announce intervals without a word.
pub const MISSED_ANNOUNCES: u32 = 3;
/// Most addresses remembered per peer.
pub const MAX_ADDRS: usize = 8;
/// Default bound on inventory entries held for all peers together
/// (`up --max-remote-contents`): about 1 KiB of memory each.
pub const DEFAULT_MAX_REMOTE_CONTENTS: usize = 1_000_000;

/// One address at which a peer's TCP server was announced or reached.
#[derive(Clone, Debug)]
pub struct PeerAddr {
    pub addr: SocketAddr,
    pub via: FoundVia,
    pub seen: Instant,
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
}

impl Peer {
    /// Addresses to try, best first: the one that last answered, then the
    /// most recently announced.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        let mut v: Vec<&PeerAddr> = self.addrs.iter().collect();
        v.sort_by_key(|a| (Some(a.addr) != self.preferred, std::cmp::Reverse(a.seen)));
        v.into_iter().map(|a| a.addr).collect()
    }

    /// The address shown to users.
    pub fn addr(&self) -> SocketAddr {
        self.preferred
            .or_else(|| self.addrs.iter().max_by_key(|a| a.seen).map(|a| a.addr))
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    fn note_addr(&mut self, addr: SocketAddr, via: FoundVia, now: Instant) {
        match self.addrs.iter_mut().find(|a| a.addr == addr) {
            Some(a) => {
                a.seen = now;
                a.via = via;
            }
            None => {
                if self.addrs.len() >= MAX_ADDRS
                    && let Some(i) = (0..self.addrs.len())
                        .filter(|i| Some(self.addrs[*i].addr) != self.preferred)
                        .min_by_key(|i| self.addrs[*i].seen)
                {
                    self.addrs.swap_remove(i);
                }
                self.addrs.push(PeerAddr {
                    addr,
                    via,
                    seen: now,
                });
            }
        }
    }
}

/// One content as the network offers it.
#[derive(Clone, Debug)]
pub struct Content {
    pub names: BTreeSet<String>,
    pub size: u64,
    pub category: Category,
    pub comment: String,
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

#[derive(Default)]
pub struct Dict {
    peers: DashMap<NodeId, Peer>,
    contents: DashMap<ContentId, Content>,
    /// Each peer's current inventory (sorted by id), so its holdings can
    /// be updated by difference and a delta applied to it.
    inventories: DashMap<NodeId, Inventory>,
    /// Serializes writers so holdings never go out of step with
    /// inventories; readers use the dashmaps without it. Never held across
    /// an await. Holds the number of inventory entries held in all.
    write: Mutex<usize>,
    /// Most inventory entries held for all peers together; a peer whose
    /// inventory would pass it is listed without its contents.
    max_entries: usize,
    /// Woken whenever holdings change (a fetch waiting for holders listens).
    pub changed: Notify,
    /// Woken when a peer's inventory should be pulled.
    pub pull_wanted: Notify,
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
        Dict {
            max_entries,
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
        let _w = self.write.lock().expect("dict write lock");
        if !self.peers.contains_key(&id) && !self.make_room() {
            tracing::debug!(peer = %id.short(), "peer table full of online peers; ignoring a new one");
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
        });
        let came_back = !peer.online;
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

    /// Makes room for one more peer by forgetting the longest-offline one;
    /// false when every known peer is online (the newcomer is ignored).
    fn make_room(&self) -> bool {
        if self.peers.len() < MAX_PEERS {
            return true;
        }
        let oldest = self
            .peers
            .iter()
            .filter(|p| !p.online)
            .min_by_key(|p| p.last_seen)
            .map(|p| p.id);
        match oldest {
            Some(id) => {
                self.peers.remove(&id);
                true
            }
            None => false,
        }
    }

    /// The inventory held for a peer (to apply a delta to).
    pub fn inventory(&self, id: &NodeId) -> Option<Inventory> {
        self.inventories.get(id).map(|i| i.clone())
    }

    /// Replaces a peer's inventory (pulled over TCP), touching only the
    /// contents that changed.
    pub fn set_inventory(&self, id: NodeId, inv: Inventory) {
        let mut held = self.write.lock().expect("dict write lock");
        match self.peers.get_mut(&id) {
            Some(mut p) if p.online => {
                p.pulled_digest = Some(inv.digest);
                p.contents = inv.entries.len() as u32;
            }
            _ => return,
        }
        let old = self.inventories.get(&id).map(|i| i.entries.clone());
        let old: &[InventoryEntry] = old.as_deref().map_or(&[], |v| v.as_slice());
        if *held - old.len() + inv.entries.len() > self.max_entries {
            tracing::warn!(
                peer = %id.short(),
                contents = inv.entries.len(),
                limit = self.max_entries,
                "this peer's inventory would pass the limit on contents held for all peers; its contents are not listed (raise --max-remote-contents)"
            );
            *held -= self.withdraw(id);
            self.changed.notify_waiters();
            return;
        }
        for changed in crate::store::changes::diff(old, &inv.entries) {
            match inv.entries.binary_search_by(|e| e.id.cmp(&changed)) {
                Ok(i) => self.hold(id, &inv.entries[i]),
                Err(_) => self.release(id, &changed),
            }
        }
        *held = *held - old.len() + inv.entries.len();
        self.inventories.insert(id, inv);
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
    /// many entries it held.
    fn withdraw(&self, id: NodeId) -> usize {
        match self.inventories.remove(&id) {
            Some((_, old)) => {
                for e in old.entries.iter() {
                    self.release(id, &e.id);
                }
                old.entries.len()
            }
            None => 0,
        }
    }

    /// A peer said goodbye, or stopped answering.
    pub fn set_offline(&self, id: NodeId) {
        let mut held = self.write.lock().expect("dict write lock");
        if let Some(mut p) = self.peers.get_mut(&id) {
            p.online = false;
            p.pulled_digest = None;
        }
        *held -= self.withdraw(id);
        self.changed.notify_waiters();
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
                p.online && now.saturating_duration_since(p.last_direct) > p.interval.mul_f32(1.5)
            })
            .map(|p| p.clone())
            .collect()
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
        assert_eq!(*d.write.lock().unwrap(), 2);
    }

    #[test]
    fn peer_table_is_bounded() {
        let d = Dict::new();
        let iv = Duration::from_secs(60);
        for i in 0..MAX_PEERS as u32 + 10 {
            let mut id = [0u8; 16];
            id[..4].copy_from_slice(&i.to_le_bytes());
            d.observe(
                NodeId(id),
                "p",
                addr(1),
                FoundVia::Multicast,
                iv,
                [0; 16],
                0,
            );
        }
        assert_eq!(d.peer_views().len(), MAX_PEERS);
        // An offline peer makes room for a new one.
        d.set_offline(NodeId([0; 16]));
        assert_eq!(
            d.observe(
                NodeId([0xff; 16]),
                "new",
                addr(2),
                FoundVia::Multicast,
                iv,
                [1; 16],
                0
            ),
            Observed::Pull
        );
        assert_eq!(d.peer_views().len(), MAX_PEERS);
        assert!(d.peer(&NodeId([0; 16])).is_none());
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
