//! The dictionary: what the network offers and who holds it, the only
//! shared state of discovery. Three owners, each with its own locks:
//! - [`Peers`] (`peers.rs`, one entry is a [`Peer`]): the peer table,
//!   proven or not, their addresses, who needs a pull or a probe;
//! - [`Contents`] (`contents.rs`): each online peer's inventory as held,
//!   the content index and its holders, the memory budget for them;
//! - views (`views.rs`): the holders a download asks, resolution, and what
//!   `ls` and `peers` show.
//!
//! [`Dict`] holds both parts and keeps them in step: a peer that goes
//! offline or is forgotten has its holdings withdrawn, and an inventory is
//! held only for an online peer. Operations touching both take the peer
//! table's write lock first, then the contents' lock.
//!
//! Who writes: discovery (multicast, mDNS, tracker client, `--peer`)
//! through [`Dict::observe`] (a signed datagram: [`Dict::observe_signed`]),
//! [`Dict::depart`], [`Dict::depart_verified`] and
//! [`Peers::claim_departure`]; the puller ([`Dict::set_inventory`],
//! [`Dict::refuse_inventory`]); the prober ([`Dict::probe_failed`]); the
//! expiry task ([`Dict::expire`]); the peer server relays a `Goodbye`
//! ([`Dict::depart`]); any code that dials a peer reports the outcome
//! ([`Peers::reached`], [`Peers::unreachable`]). Never talks to the
//! network, never reads the clock: time is passed in.

mod contents;
mod peer;
mod peers;
mod views;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

pub use contents::{Content, Contents, Held, PullBudget, Refusal, entry_cost};
pub use peer::{Peer, PeerAddr};
pub use peers::{Hello, Peers, ProvenPeer};
pub use views::{FolderListing, Holder, Listed, LsRow, LsRows};

use tokio_util::sync::CancellationToken;

use crate::api::FoundVia;
use crate::id::NodeId;
use crate::inventory::{Digest, Inventory};

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
/// A peer is offline after this many announce intervals without a word...
pub const MISSED_ANNOUNCES: u32 = 3;
/// ...and this much more.
pub const EXPIRY_GRACE: Duration = Duration::from_millis(500);
/// Most addresses remembered per peer.
pub const MAX_ADDRS: usize = 8;
/// Default bound on inventory entries held for all peers together
/// (`up --max-remote-contents`).
pub const DEFAULT_MAX_REMOTE_CONTENTS: usize = 1_000_000;
/// Default bound on the memory held for all peers' inventories together
/// (`up --max-remote-bytes`), as counted by [`entry_cost`]: about 300,000
/// contents with short names.
pub const DEFAULT_MAX_REMOTE_BYTES: usize = 128 << 20;
/// Memory one inventory entry costs besides its text and bitmap: the
/// entry (232 bytes with the content's record and one holder's slot),
/// plus the maps' spare room and the allocator's headers (measured:
/// docs/performance.md, "Memory budget per file and per peer entry").
pub const ENTRY_OVERHEAD: usize = 384;

/// A peer heard of: an announcement, an mDNS record, a tracker's list, a
/// `--peer` hello.
#[derive(Clone, Copy, Debug)]
pub struct Sighting<'a> {
    pub id: NodeId,
    pub name: &'a str,
    /// Where its TCP server is.
    pub addr: SocketAddr,
    pub via: FoundVia,
    /// The announce interval it claims (clamped to [`MIN_INTERVAL`],
    /// [`MAX_INTERVAL`]).
    pub interval: Duration,
    /// Its inventory's digest and size, as the source says.
    pub digest: Digest,
    pub contents: u32,
}

/// Who vouches for a sighting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// Anyone could have said it (an open-mode mDNS record, a tracker's
    /// list, a `--peer`): checked by a TCP handshake before it counts.
    Unsigned,
    /// Signed by the peer's own key (a verified datagram or a sealed mDNS
    /// blob): its name and digest count, its address is still only
    /// noted until a handshake there.
    Signed,
}

/// What an announcement means for the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Observed {
    /// Nothing new.
    Known,
    /// The peer's inventory is new or changed: pull it.
    Pull,
}

/// The peer table and the content index, kept in step.
#[derive(Default)]
pub struct Dict {
    pub peers: Peers,
    pub contents: Contents,
}

impl Dict {
    /// Waits until `known` finds what it looks for in the dictionary, checking
    /// again whenever the dictionary changes, for at most `limit`. `None` when
    /// the time is up or `cancel` fires first. The one place that waits for the
    /// network to learn about a content.
    pub async fn wait_for<T>(
        &self,
        limit: Duration,
        cancel: &CancellationToken,
        mut known: impl FnMut(&Dict) -> Option<T>,
    ) -> Option<T> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            // Listen before looking, so a change in between is not missed.
            let changed = self.contents.changed.notified();
            if let Some(found) = known(self) {
                return Some(found);
            }
            let woken =
                tokio::time::timeout_at(deadline, cancel.run_until_cancelled(changed)).await;
            if woken != Ok(Some(())) {
                return None;
            }
        }
    }

    pub fn new() -> Self {
        Self::default()
    }

    /// A dictionary holding at most `max_entries` inventory entries in all.
    pub fn with_limit(max_entries: usize) -> Self {
        Self::with_limits(max_entries, DEFAULT_MAX_REMOTE_BYTES)
    }

    /// A dictionary holding at most `max_entries` inventory entries and
    /// `max_bytes` of them ([`entry_cost`]) in all; a peer whose inventory
    /// would pass a bound is listed without its contents.
    pub fn with_limits(max_entries: usize, max_bytes: usize) -> Self {
        Dict {
            peers: Peers::default(),
            contents: Contents::new(max_entries, max_bytes),
        }
    }

    /// Records that a peer was heard of at `now`. A newcomer may make
    /// room by forgetting another peer, whose holdings go with it.
    pub fn observe(&self, s: Sighting<'_>, now: Instant) -> Observed {
        self.observe_as(s, Claim::Unsigned, now)
    }

    /// [`Dict::observe`] of a sighting signed by the peer's key: the peer
    /// is verified, and its name and digest count from any address.
    pub fn observe_signed(&self, s: Sighting<'_>, now: Instant) -> Observed {
        self.observe_as(s, Claim::Signed, now)
    }

    fn observe_as(&self, s: Sighting<'_>, claim: Claim, now: Instant) -> Observed {
        let mut peers = self.peers.write();
        let seen = peers.observe(&s, claim, now);
        if let Some(gone) = seen.forgotten {
            self.contents.withdraw(gone);
        }
        seen.observed
    }

    /// A peer said goodbye, or stopped answering: offline, its holdings
    /// withdrawn.
    pub fn set_offline(&self, id: NodeId) {
        let mut peers = self.peers.write();
        peers.set_offline(id);
        self.contents.withdraw(id);
    }

    /// A goodbye for `id` arrived from `from` (a datagram's source, or a
    /// TCP connection's remote address): the peer goes offline at once if it
    /// is known at that address ([`Peer::is_at`]); from anywhere else it is
    /// only a claim, checked by a hello ([`Peers::claim_departure`]). True
    /// when it went at once.
    pub fn depart(&self, id: NodeId, from: IpAddr) -> bool {
        match self.peers.with(&id, |p| p.online.then(|| p.is_at(from))) {
            Some(Some(true)) => {
                self.set_offline(id);
                true
            }
            Some(Some(false)) => {
                // Maybe forged, maybe the peer leaving from an address
                // it never answered at: a hello tells which, at once.
                tracing::debug!(peer = %id.short(), %from, "a goodbye from an address where this peer is not known; checking that it left");
                self.peers.claim_departure(id);
                false
            }
            _ => false,
        }
    }

    /// `id` itself said goodbye, proven by its key (a signed datagram or
    /// its own TCP session): offline at once, from whatever address. True
    /// when it was online.
    pub fn depart_verified(&self, id: NodeId) -> bool {
        let online = self.peers.with(&id, |p| p.online) == Some(true);
        if online {
            self.set_offline(id);
        }
        online
    }

    /// A probe found no address answering as `id`: if its departure was
    /// claimed, it is gone now, not after missed announcements.
    pub fn probe_failed(&self, id: NodeId) {
        let claimed = self.peers.with(&id, |p| p.online && p.departure_claimed);
        if claimed == Some(true) {
            tracing::info!(peer = %id.short(), "peer said to have left did not answer; marking it offline");
            self.set_offline(id);
        }
    }

    /// Marks offline every peer silent at `now` for [`MISSED_ANNOUNCES`]
    /// intervals and [`EXPIRY_GRACE`]; returns them.
    pub fn expire(&self, now: Instant) -> Vec<NodeId> {
        let stale = self.peers.silent(now);
        for id in &stale {
            tracing::info!(peer = %id.short(), "peer went silent; marking it offline");
            self.set_offline(*id);
        }
        stale
    }

    /// Replaces a peer's inventory (pulled over TCP, its digest checked),
    /// if the peer is online: held, or refused over a bound (then listed
    /// without contents, not pulled again until its digest changes).
    pub fn set_inventory(&self, id: NodeId, inv: Inventory) {
        let mut peers = self.peers.write();
        let Some(proven) = peers.pulled(id, inv.digest, inv.count()) else {
            return;
        };
        let held = if proven {
            self.contents.set(id, inv)
        } else {
            contents::warn_refused(id, &inv, Refusal::AddressFull);
            self.contents.withdraw(id);
            Err(Refusal::AddressFull)
        };
        if held.is_err() {
            peers.refused(id, None);
        }
    }

    /// A peer's inventory of `digest` could not be held (`why`): it is
    /// listed without contents and not pulled again until its digest
    /// changes.
    pub fn refuse_inventory(&self, id: NodeId, digest: Digest, why: Refusal) {
        let mut peers = self.peers.write();
        if !peers.refused(id, Some(digest)) {
            return;
        }
        tracing::warn!(peer = %id.short(), "{why}; this peer's contents are not listed");
        self.contents.withdraw(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunkset::{Bitmap, ChunkSet};
    use crate::id::ContentId;
    use crate::manifest::Category;
    use crate::wire::InventoryEntry;
    use std::time::SystemTime;

    /// Records a sighting now.
    #[allow(clippy::too_many_arguments)]
    fn observe(
        d: &Dict,
        id: NodeId,
        name: &str,
        addr: SocketAddr,
        via: FoundVia,
        interval: Duration,
        digest: Digest,
        contents: u32,
    ) -> Observed {
        d.observe(
            Sighting {
                id,
                name,
                addr,
                via,
                interval,
                digest,
                contents,
            },
            Instant::now(),
        )
    }

    fn reached(d: &Dict, id: NodeId, addr: SocketAddr, digest: Digest, contents: u32) -> Observed {
        let hello = Hello {
            id,
            name: "",
            digest,
            contents,
        };
        d.peers.reached(hello, addr, Instant::now())
    }

    fn peer_views(d: &Dict) -> Vec<crate::api::PeerView> {
        d.peer_views(Instant::now(), SystemTime::now())
    }

    fn entry(id: u8, name: &str, chunks: ChunkSet) -> InventoryEntry {
        InventoryEntry {
            id: ContentId([id; 32]),
            name: name.into(),
            more_paths: Default::default(),
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

    /// Two holders of a folder, one complete and one missing a file:
    /// `ls` lists the folder once with its files, size and holders;
    /// resolution finds it and the files by path; the listing gives each
    /// holder's files and the empty folders.
    #[test]
    fn folders_are_listed_resolved_and_listed_per_holder() {
        let d = Dict::new();
        let secs = Duration::from_secs(5);
        let (a, b) = (NodeId([1; 16]), NodeId([2; 16]));
        observe(
            &d,
            a,
            "alpha",
            addr(1),
            FoundVia::Multicast,
            secs,
            [1; 16],
            3,
        );
        observe(
            &d,
            b,
            "beta",
            addr(2),
            FoundVia::Multicast,
            secs,
            [2; 16],
            2,
        );
        let full = ChunkSet::Full;
        let files = vec![
            entry(1, "holiday/day1/beach.jpg", full.clone()),
            entry(2, "holiday/notes.txt", full.clone()),
            crate::wire::folder_entry("holiday/empty"),
            entry(3, "work/notes.txt", full.clone()),
        ];
        d.set_inventory(a, inv(files.clone()));
        d.set_inventory(b, inv(files[..3].to_vec()));
        let folders = d.folder_views(None);
        let names: Vec<(&str, u32, u32)> = folders
            .iter()
            .map(|v| (v.name.as_str(), v.files, v.complete))
            .collect();
        assert_eq!(names, [("holiday", 2, 2), ("work", 1, 1)]);
        assert_eq!(folders[0].size, 6 << 20);
        assert_eq!(folders[0].kind, crate::api::ContentKind::Folder);
        assert_eq!(d.folder_views(Some("WOR")).len(), 1);
        // The empty-folder entry is no content of its own.
        let listed = d.list(None, None);
        assert_eq!(listed.len(), 3, "{listed:?}");
        use crate::resolve::Resolution;
        assert_eq!(
            d.resolve("holiday", &[]),
            Resolution::Folder("holiday".into())
        );
        assert_eq!(
            d.resolve("work/notes.txt", &[]),
            Resolution::One(ContentId([3; 32]))
        );
        assert!(matches!(d.resolve("notes", &[]), Resolution::Ambiguous(m) if m.len() == 2));
        let listing = d.folder_listing("holiday");
        assert_eq!(listing.files.len(), 4, "two files at each of two holders");
        assert_eq!(listing.empty_dirs.iter().collect::<Vec<_>>(), ["empty"]);
        assert!(
            d.folder_listing("holi").files.is_empty(),
            "a folder is a whole component"
        );
    }

    /// `ls` rows come sorted by lower-case name, then id, each folder row
    /// just before the files that sort after it; an offline peer's
    /// contents and empty-folder entries make no row; the count is known
    /// before the rows are taken.
    #[test]
    fn ls_rows_are_in_name_order_with_folders_before_their_files() {
        let d = Dict::new();
        let secs = Duration::from_secs(5);
        let (a, b) = (NodeId([1; 16]), NodeId([2; 16]));
        observe(&d, a, "a", addr(1), FoundVia::Multicast, secs, [1; 16], 7);
        observe(&d, b, "b", addr(2), FoundVia::Multicast, secs, [2; 16], 1);
        let full = ChunkSet::Full;
        d.set_inventory(
            a,
            inv(vec![
                entry(1, "b.txt", full.clone()),
                entry(2, "Music/song.ogg", full.clone()),
                entry(7, "Music/song.ogg", full.clone()),
                entry(3, "A.txt", full.clone()),
                entry(4, "a.txt", full.clone()),
                entry(5, "ÄLTER.txt", full.clone()),
                crate::wire::folder_entry("music/empty"),
            ]),
        );
        d.set_inventory(b, inv(vec![entry(6, "zzz.txt", full.clone())]));
        d.set_offline(b);
        let rows = d.ls_rows(None, None);
        assert_eq!(rows.len(), 7);
        let got: Vec<String> = rows
            .map(|r| match r {
                LsRow::Content(id) => format!("{}", id.0[0]),
                LsRow::Path(id, path) => format!("{} at {path}", id.0[0]),
                LsRow::Folder(v) => format!("{}/ {} {}", v.name, v.files, v.size >> 20),
            })
            .collect();
        // "a.txt" twice (ids 3 and 4, by id), then "b.txt", the folder
        // "Music" before its files (one path, counted once), then
        // "älter.txt" (after ASCII).
        assert_eq!(got, ["3", "4", "1", "Music/ 1 3", "2", "7", "5"]);
        let ids: Vec<u8> = d.list(None, None).iter().map(|id| id.0[0]).collect();
        assert_eq!(ids, [3, 4, 1, 2, 7, 5]);
        // With a category: no folder rows.
        assert_eq!(d.ls_rows(None, Some(Category::Audio)).len(), 2);
    }

    /// A private swarm's mDNS record carries a random label, not the
    /// name: the name the verified handshake gave replaces it.
    #[test]
    fn a_verified_hello_names_the_peer() {
        let d = Dict::new();
        let id = NodeId([7; 16]);
        let addr: SocketAddr = "10.0.0.7:7373".parse().unwrap();
        let secs = Duration::from_secs(5);
        observe(
            &d,
            id,
            "ls-0123456789abcdef",
            addr,
            FoundVia::Mdns,
            secs,
            [1; 16],
            0,
        );
        let hello = Hello {
            id,
            name: "alpha",
            digest: [1; 16],
            contents: 3,
        };
        d.peers.reached(hello, addr, Instant::now());
        assert_eq!(d.peers.peer(&id).unwrap().name, "alpha");
        // An empty name (unknown) keeps the one held.
        reached(&d, id, addr, [1; 16], 3);
        assert_eq!(d.peers.peer(&id).unwrap().name, "alpha");
    }

    #[test]
    fn holdings_follow_inventories() {
        let d = Dict::new();
        let (a, b) = (NodeId([1; 16]), NodeId([2; 16]));
        let iv = Duration::from_secs(1);
        let a1 = inv(vec![entry(9, "photo.png", ChunkSet::Full)]);
        assert_eq!(
            observe(&d, a, "a", addr(1), FoundVia::Multicast, iv, a1.digest, 1),
            Observed::Pull
        );
        d.set_inventory(a, a1.clone());
        assert_eq!(
            observe(&d, a, "a", addr(1), FoundVia::Multicast, iv, a1.digest, 1),
            Observed::Known
        );
        observe(&d, b, "b", addr(2), FoundVia::Multicast, iv, [2; 16], 1);
        let mut bm = Bitmap::new(3);
        bm.set(0);
        d.set_inventory(b, inv(vec![entry(9, "photo.png", ChunkSet::Partial(bm))]));
        let v = d.view(&ContentId([9; 32]), false).unwrap();
        assert_eq!((v.complete, v.partial), (1, 1));
        assert_eq!(d.holders(&ContentId([9; 32])).len(), 2);

        // A changed inventory replaces the old holdings.
        assert_eq!(
            observe(&d, a, "a", addr(1), FoundVia::Multicast, iv, [3; 16], 1),
            Observed::Pull
        );
        d.set_inventory(a, inv(vec![entry(8, "song.mp3", ChunkSet::Full)]));
        assert_eq!(d.holders(&ContentId([9; 32])).len(), 1);

        d.set_offline(b);
        assert!(
            d.contents.content(&ContentId([9; 32])).is_none(),
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
        assert!(d.contents.content(&ContentId([7; 32])).is_none());
    }

    #[test]
    fn a_peer_keeps_every_address_and_prefers_the_one_that_answered() {
        let d = Dict::new();
        let a = NodeId([1; 16]);
        let iv = Duration::from_secs(1);
        let v6: SocketAddr = "[fe80::1%2]:7000".parse().unwrap();
        observe(&d, a, "a", addr(1), FoundVia::Multicast, iv, [1; 16], 0);
        observe(&d, a, "a", v6, FoundVia::Mdns, iv, [1; 16], 0);
        let p = d.peers.peer(&a).unwrap();
        assert_eq!(p.addrs(), vec![v6, addr(1)], "most recently seen first");
        reached(&d, a, addr(1), [1; 16], 0);
        assert_eq!(d.peers.peer(&a).unwrap().addrs(), vec![addr(1), v6]);
        d.peers.unreachable(a, addr(1));
        assert_eq!(d.peers.peer(&a).unwrap().preferred, None);
        for port in 10..30 {
            observe(&d, a, "a", addr(port), FoundVia::Tracker, iv, [1; 16], 0);
        }
        assert_eq!(d.peers.peer(&a).unwrap().addrs.len(), MAX_ADDRS);
    }

    #[test]
    fn an_inventory_change_touches_only_what_changed() {
        let d = Dict::new();
        let a = NodeId([1; 16]);
        observe(
            &d,
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
        assert!(d.contents.content(&ContentId([1; 32])).is_none());
        assert_eq!(d.holders(&ContentId([2; 32])).len(), 1);
        assert_eq!(d.holders(&ContentId([3; 32])).len(), 1);
        assert_eq!(d.peers.peer(&a).unwrap().contents, 2);
    }

    #[test]
    fn a_lagging_tracker_digest_does_not_undo_a_fresher_hello() {
        let d = Dict::new();
        let a = NodeId([1; 16]);
        let iv = Duration::from_secs(10);
        let new = inv(vec![entry(2, "two", ChunkSet::Full)]);
        observe(&d, a, "a", addr(1), FoundVia::Tracker, iv, [1; 16], 1);
        // The peer itself says it changed, and we pull that version.
        reached(&d, a, addr(1), new.digest, 1);
        d.set_inventory(a, new.clone());
        // The tracker still lists the old digest: no flip-flop, no re-pull.
        assert_eq!(
            observe(&d, a, "a", addr(1), FoundVia::Tracker, iv, [1; 16], 1),
            Observed::Known
        );
        assert_eq!(d.peers.peer(&a).unwrap().announced_digest, new.digest);
        // A multicast announcement always counts.
        observe(&d, a, "a", addr(1), FoundVia::Multicast, iv, [3; 16], 1);
        assert_eq!(d.peers.peer(&a).unwrap().announced_digest, [3; 16]);
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
        observe(
            &d,
            a,
            "a",
            addr(1),
            FoundVia::Multicast,
            iv,
            small.digest,
            2,
        );
        observe(&d, b, "b", addr(2), FoundVia::Multicast, iv, big.digest, 2);
        d.set_inventory(a, small);
        d.set_inventory(b, big.clone());
        assert_eq!(
            d.holders(&ContentId([10; 32])).len(),
            0,
            "4 > 3: b not held"
        );
        assert!(d.peers.needing_pull().is_empty(), "and not pulled again");
        // Room made by a peer leaving lets it in.
        d.set_offline(a);
        d.set_inventory(b, big);
        assert_eq!(d.holders(&ContentId([10; 32])).len(), 1);
        assert_eq!(d.contents.held().entries, 2);
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
            observe(d, nid(i), "p", a, FoundVia::Multicast, iv, [0; 16], 0);
            reached(d, nid(i), a, [0; 16], 0);
        }
    }

    #[test]
    fn peer_table_is_bounded() {
        let d = Dict::new();
        proven_peers(&d, MAX_PEERS as u32 + 10);
        assert_eq!(peer_views(&d).len(), MAX_PEERS);
        // An offline peer makes room for a new one.
        d.set_offline(nid(0));
        assert_eq!(
            observe(
                &d,
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
        assert_eq!(peer_views(&d).len(), MAX_PEERS);
        assert!(d.peers.peer(&nid(0)).is_none());
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
            observe(&d, nid(10_000 + i), "fake", a, via, iv, [9; 16], 0);
        }
        let views = peer_views(&d);
        assert_eq!(views.len(), 100 + MAX_UNPROVEN);
        for i in 0..100 {
            assert!(
                d.peers.peer(&nid(i)).is_some_and(|p| p.online),
                "proven peer {i} kept"
            );
        }
        assert_eq!(
            d.peers.peer(&nid(10_000 + 1099)).unwrap().interval,
            MAX_INTERVAL,
            "the claimed interval is clamped"
        );
        // A real newcomer still gets in (the oldest fake makes room), and
        // stays once it proves itself.
        let real = NodeId([0x77; 16]);
        let at = ip_addr(99, 9, 7373);
        assert_eq!(
            observe(
                &d,
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
        reached(&d, real, at, [1; 16], 0);
        for i in 0..1100u32 {
            let a = ip_addr(200 + (i % 40) as u8, 2, 7000);
            observe(&d, nid(20_000 + i), "fake", a, via, iv, [9; 16], 0);
        }
        assert!(d.peers.peer(&real).unwrap().proven);
        assert_eq!(peer_views(&d).len(), 101 + MAX_UNPROVEN);
    }

    #[test]
    fn one_address_holds_a_bounded_number_of_peers() {
        let d = Dict::new();
        let iv = Duration::from_secs(60);
        let real = NodeId([0x77; 16]);
        observe(
            &d,
            real,
            "real",
            addr(7373),
            FoundVia::Multicast,
            iv,
            [1; 16],
            0,
        );
        reached(&d, real, addr(7373), [1; 16], 0);
        for i in 0..500u32 {
            observe(
                &d,
                nid(i),
                "fake",
                addr(9),
                FoundVia::Multicast,
                iv,
                [9; 16],
                0,
            );
        }
        assert_eq!(peer_views(&d).len(), MAX_PEERS_PER_IP);
        assert!(d.peers.peer(&real).is_some(), "the proven peer stays");
        // The newest fakes are the ones kept.
        assert!(d.peers.peer(&nid(499)).is_some() && d.peers.peer(&nid(0)).is_none());
        // Another address is not affected.
        let other = SocketAddr::from(([127, 0, 0, 2], 1));
        assert_eq!(
            observe(
                &d,
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
        observe(&d, a, "a", home, FoundVia::Multicast, iv, [1; 16], 0);
        // Not proven yet: any address it was heard at counts.
        assert!(!d.depart(a, forger));
        assert!(d.peers.peer(&a).unwrap().online);
        reached(&d, a, home, [1; 16], 0);
        // The forger announces the victim's id from its own address first.
        observe(
            &d,
            a,
            "a",
            SocketAddr::new(forger, 7373),
            FoundVia::Multicast,
            iv,
            [1; 16],
            0,
        );
        assert!(!d.depart(a, forger), "an unproven address does not count");
        assert!(d.peers.peer(&a).unwrap().online);
        // It is only a claim: the peer is probed, and stays if it answers.
        assert!(d.peers.peer(&a).unwrap().departure_claimed);
        reached(&d, a, home, [1; 16], 0);
        assert!(!d.peers.peer(&a).unwrap().departure_claimed);
        assert!(d.depart(a, "10.0.0.1".parse().unwrap()));
        assert!(!d.peers.peer(&a).unwrap().online);
        // IPv4-mapped IPv6 addresses are the same address.
        observe(&d, a, "a", home, FoundVia::Multicast, iv, [1; 16], 0);
        reached(&d, a, home, [1; 16], 0);
        assert!(d.depart(a, "::ffff:10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn a_claimed_departure_takes_effect_only_when_the_peer_does_not_answer() {
        let d = Dict::new();
        let iv = Duration::from_secs(1);
        let a = NodeId([1; 16]);
        let home = SocketAddr::from(([10, 0, 0, 1], 7373));
        observe(&d, a, "a", home, FoundVia::Mdns, iv, [1; 16], 0);
        reached(&d, a, home, [1; 16], 0);
        let now = Instant::now();
        assert!(d.peers.to_probe(now).is_empty(), "just heard from");
        // A removed mDNS record (anyone can remove one naming any id).
        d.peers.claim_departure(a);
        assert!(
            d.peers.peer(&a).unwrap().online,
            "a claim alone changes nothing"
        );
        assert_eq!(d.peers.to_probe(now).len(), 1, "it is probed at once");
        // The peer answers: the claim is void.
        reached(&d, a, home, [1; 16], 0);
        assert!(d.peers.to_probe(now).is_empty());
        d.probe_failed(a);
        assert!(
            d.peers.peer(&a).unwrap().online,
            "an unclaimed failure is for expiry"
        );
        // Claimed again, and this time nobody answers as `a`: gone at once.
        d.peers.claim_departure(a);
        d.probe_failed(a);
        assert!(!d.peers.peer(&a).unwrap().online);
    }

    #[test]
    fn a_claim_from_elsewhere_neither_renames_nor_keeps_alive_a_proven_peer() {
        let d = Dict::new();
        let iv = Duration::from_secs(1);
        let a = NodeId([1; 16]);
        let home = SocketAddr::from(([10, 0, 0, 1], 7373));
        let forger = SocketAddr::from(([10, 0, 0, 66], 7373));
        observe(&d, a, "alice", home, FoundVia::Multicast, iv, [1; 16], 0);
        reached(&d, a, home, [1; 16], 0);
        let seen = d.peers.peer(&a).unwrap().last_seen;
        let long = Duration::from_secs(60);
        let claim = Sighting {
            id: a,
            name: "mallory",
            addr: forger,
            via: FoundVia::Multicast,
            interval: long,
            digest: [9; 16],
            contents: 0,
        };
        // Later than the peer was last heard: a forger must not renew it.
        let later = seen + Duration::from_millis(5);
        assert_eq!(d.observe(claim, later), Observed::Known);
        let p = d.peers.peer(&a).unwrap();
        assert_eq!(p.name, "alice");
        assert_eq!(p.interval, iv);
        assert_eq!(p.last_seen, seen, "no extra life from a forger");
        assert_eq!(p.announced_digest, [1; 16]);
        assert!(p.addrs.iter().any(|x| x.addr == forger && !x.proven));
        // The same claim from where the peer proved itself counts in full.
        observe(&d, a, "alice2", home, FoundVia::Multicast, iv, [2; 16], 0);
        assert_eq!(d.peers.peer(&a).unwrap().name, "alice2");
    }

    #[test]
    fn announcing_an_id_from_elsewhere_never_pushes_out_its_proven_address() {
        let d = Dict::new();
        let iv = Duration::from_secs(1);
        let a = NodeId([1; 16]);
        let home = SocketAddr::from(([10, 0, 0, 1], 7373));
        observe(&d, a, "a", home, FoundVia::Multicast, iv, [1; 16], 0);
        reached(&d, a, home, [1; 16], 0);
        d.peers.unreachable(a, home);
        for i in 0..40 {
            let x = SocketAddr::from(([10, 0, 1, i], 7373));
            observe(&d, a, "a", x, FoundVia::Multicast, iv, [1; 16], 0);
        }
        let p = d.peers.peer(&a).unwrap();
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
        assert_eq!(cost, ENTRY_OVERHEAD + 6 + 2 * 4096);
        let d = Dict::with_limits(1000, cost * 3);
        let (a, b) = (NodeId([1; 16]), NodeId([2; 16]));
        for (p, port) in [(a, 1), (b, 2)] {
            observe(&d, p, "p", addr(port), FoundVia::Multicast, iv, [0; 16], 0);
            reached(&d, p, addr(port), [0; 16], 0);
        }
        d.set_inventory(a, inv(vec![big(1), big(2)]));
        d.set_inventory(b, inv(vec![big(3), big(4)]));
        assert_eq!(d.holders(&ContentId([1; 32])).len(), 1);
        assert!(
            d.holders(&ContentId([3; 32])).is_empty(),
            "4 x cost > 3 x cost"
        );
        assert_eq!(d.contents.held().bytes, 2 * cost);
        // The holder's chunks are the inventory's bitmap.
        let held = d.contents.inventory(&a).unwrap();
        let (ChunkSet::Partial(x), ChunkSet::Partial(y)) = (
            &held.to_vec()[0].chunks,
            &d.contents.content(&ContentId([1; 32])).unwrap().holders[&a],
        ) else {
            panic!("partial")
        };
        assert_eq!(x.as_bytes(), y.as_bytes());
        // A pull is admitted page by page against what is left, counting
        // other pulls in progress; what the pulled peer holds is replaced.
        let mut pa = d.contents.pull_budget(a);
        assert!(pa.admit(&[big(5), big(6)]));
        assert!(pa.admit(&[big(7)]));
        assert!(!pa.admit(&[big(9)]));
        let mut pb = d.contents.pull_budget(b);
        assert!(!pb.admit(&[big(8)]), "a's pull reserved the rest");
        drop(pa);
        assert!(pb.admit(&[big(8)]));
        drop(pb);
        assert_eq!(
            d.contents.held().reserved,
            0,
            "reservations end with the pull"
        );
        d.refuse_inventory(a, [0; 16], Refusal::OverBytes);
        assert_eq!(d.contents.held(), Held::default());
        assert!(d.peers.needing_pull().iter().all(|p| p.id != a));
    }

    #[test]
    fn bytes_held_follow_each_new_version_of_an_inventory() {
        let iv = Duration::from_secs(1);
        let d = Dict::new();
        let a = NodeId([1; 16]);
        observe(&d, a, "a", addr(1), FoundVia::Multicast, iv, [0; 16], 0);
        reached(&d, a, addr(1), [0; 16], 0);
        let cost = |v: &[InventoryEntry]| v.iter().map(entry_cost).sum::<usize>();
        let v1 = vec![
            entry(1, "one", ChunkSet::Full),
            entry(2, "two", ChunkSet::Full),
            entry(3, "three", ChunkSet::Full),
        ];
        // 1 unchanged, 2 renamed longer and partial, 3 gone, 4 new.
        let v2 = vec![
            entry(1, "one", ChunkSet::Full),
            entry(
                2,
                "a much longer name",
                ChunkSet::Partial(Bitmap::from_bytes(vec![1; 64])),
            ),
            entry(4, "four", ChunkSet::Full),
        ];
        d.set_inventory(a, inv(v1.clone()));
        assert_eq!(d.contents.held().bytes, cost(&v1));
        d.set_inventory(a, inv(v2.clone()));
        assert_eq!(d.contents.held().bytes, cost(&v2));
        d.set_inventory(a, inv(v1[..1].to_vec()));
        assert_eq!(d.contents.held().bytes, cost(&v1[..1]));
    }

    #[test]
    fn silent_peers_expire() {
        let d = Dict::new();
        let a = NodeId([1; 16]);
        observe(
            &d,
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
        let views = peer_views(&d);
        assert_eq!(views.len(), 1);
        assert!(!views[0].online);
    }

    fn sighting(id: NodeId, addr: SocketAddr, interval: Duration) -> Sighting<'static> {
        Sighting {
            id,
            name: "p",
            addr,
            via: FoundVia::Multicast,
            interval,
            digest: [1; 16],
            contents: 0,
        }
    }

    /// Time is passed in: a peer expires exactly when more than
    /// [`MISSED_ANNOUNCES`] intervals and [`EXPIRY_GRACE`] passed since it was
    /// last heard, whatever the wall clock does meanwhile.
    #[test]
    fn a_peer_expires_exactly_after_three_intervals_and_a_half_second() {
        let d = Dict::new();
        let a = NodeId([1; 16]);
        let t0 = Instant::now();
        let iv = Duration::from_secs(2);
        d.observe(sighting(a, addr(1), iv), t0);
        let limit = iv * MISSED_ANNOUNCES + EXPIRY_GRACE;
        assert_eq!(limit, Duration::from_millis(6500));
        assert!(d.expire(t0 + limit).is_empty(), "not before the limit");
        assert!(d.peers.is_online(&a));
        // Heard again later: the clock restarts from then.
        let t1 = t0 + Duration::from_secs(5);
        d.observe(sighting(a, addr(1), iv), t1);
        assert!(d.expire(t0 + limit + Duration::from_millis(1)).is_empty());
        assert!(d.expire(t1 + limit).is_empty());
        assert_eq!(d.expire(t1 + limit + Duration::from_millis(1)), vec![a]);
        assert!(!d.peers.is_online(&a));
        // The view counts from the passed-in time too.
        let v = d.peer_views(
            t1 + Duration::from_secs(10),
            SystemTime::UNIX_EPOCH + Duration::from_secs(100),
        );
        assert_eq!(v[0].last_seen_secs, 10.0);
        assert_eq!(v[0].last_seen, "1970-01-01T00:01:30.000Z");
    }

    /// When the unproven class is full, the unproven peer heard least
    /// recently makes room for a newcomer, one at a time.
    #[test]
    fn the_unproven_class_evicts_its_oldest_first() {
        let d = Dict::new();
        let t0 = Instant::now();
        let iv = Duration::from_secs(60);
        // Each from its own address, heard one millisecond apart, in an order
        // unrelated to their ids.
        let order: Vec<u32> = (0..MAX_UNPROVEN as u32).map(|i| (i * 37) % 256).collect();
        for (k, i) in order.iter().enumerate() {
            let at = ip_addr(1, *i as u8, 7000);
            let now = t0 + Duration::from_millis(k as u64);
            assert_eq!(d.observe(sighting(nid(*i), at, iv), now), Observed::Pull);
        }
        // The first one heard is heard again: now the second is the oldest.
        let later = t0 + Duration::from_secs(1);
        d.observe(
            sighting(nid(order[0]), ip_addr(1, order[0] as u8, 7000), iv),
            later,
        );
        for (k, newcomer) in (1000..1003u32).enumerate() {
            let now = later + Duration::from_millis(k as u64 + 1);
            let at = ip_addr(2, k as u8, 7000);
            assert_eq!(
                d.observe(sighting(nid(newcomer), at, iv), now),
                Observed::Pull
            );
            assert!(d.peers.peer(&nid(newcomer)).is_some());
            let gone = order[k + 1];
            assert!(
                d.peers.peer(&nid(gone)).is_none(),
                "the oldest ({gone}) went"
            );
            assert!(d.peers.peer(&nid(order[k + 2])).is_some(), "only it");
        }
        assert!(d.peers.peer(&nid(order[0])).is_some(), "heard again: kept");
        assert_eq!(d.peers.filtered(|_| true).len(), MAX_UNPROVEN);
    }
}
