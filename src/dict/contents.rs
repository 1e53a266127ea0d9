//! The content index: what the network offers and who holds it. Owns each
//! online peer's inventory as held, the holder map of every content (built
//! from those inventories by difference), and the memory budget for all of
//! them together ([`entry_cost`], pulls in progress included). Never
//! decides whether a peer is online: [`super::Dict`] withdraws a peer's
//! holdings when the peer table says it left.

use std::sync::Mutex;

use dashmap::DashMap;
use tokio::sync::Notify;

use super::{DEFAULT_MAX_REMOTE_BYTES, DEFAULT_MAX_REMOTE_CONTENTS, ENTRY_OVERHEAD};
use crate::chunkset::ChunkSet;
use crate::id::{ContentId, NodeId};
use crate::inventory::Inventory;
use crate::manifest::Category;
use crate::wire::{InventoryEntry, MAX_MORE_PATHS};

/// Most names remembered per content: every path of one holder's entry,
/// and as many again from other holders.
const MAX_NAMES: usize = 2 * (1 + MAX_MORE_PATHS);

/// Memory each of an entry's other paths costs besides its text: its
/// `String` in the inventory (24 bytes), its `Box<str>` in the content's
/// names (16), and their two allocations (at least 32 bytes each, however
/// short the path).
const PATH_OVERHEAD: usize = 104;

/// About how much memory the dictionary spends on one peer's entry: the
/// names, comment and bitmap are kept twice (in the inventory, encoded,
/// and in the content's record).
pub fn entry_cost(e: &InventoryEntry) -> usize {
    let bitmap = match &e.chunks {
        ChunkSet::Full => 0,
        ChunkSet::Partial(b) => b.as_bytes().len(),
    };
    let more = 2 * e.more_paths.text_bytes() + PATH_OVERHEAD * e.more_paths.len();
    ENTRY_OVERHEAD + 2 * (e.name.len() + e.comment.len() + bitmap) + more
}

/// Why a peer's inventory is not held: it is listed without contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The peer did not prove itself: its address holds too many peers.
    AddressFull,
    /// Over `--max-remote-contents` for all peers together.
    OverContents,
    /// Over `--max-remote-bytes` for all peers together.
    OverBytes,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::AddressFull => "this peer's address holds too many peers already",
            Refusal::OverContents => {
                "this peer's inventory would pass the limit on contents held for all peers (raise --max-remote-contents)"
            }
            Refusal::OverBytes => {
                "this peer's inventory would pass the limit on memory held for all peers' contents (raise --max-remote-bytes)"
            }
        })
    }
}

/// One content as the network offers it. Compact, as there is one per
/// remote content (64 bytes beside its id in the map): a holder or two,
/// one name and no comment are the common case.
#[derive(Clone, Debug)]
pub struct Content {
    pub names: Names,
    pub size: u64,
    pub category: Category,
    pub comment: Comment,
    /// Each holder's chunks: a bitmap here is a copy of the one encoded in
    /// the holder's held inventory (both counted by [`entry_cost`]).
    pub holders: Holders,
}

/// A content's comment: one pointer, no allocation while empty (most
/// contents have none).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
// One thin pointer per content; the rare comment behind it is boxed twice
// on purpose.
#[allow(clippy::redundant_allocation)]
pub struct Comment(Option<Box<Box<str>>>);

impl Comment {
    pub fn new(text: &str) -> Self {
        Comment((!text.is_empty()).then(|| Box::new(Box::from(text))))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_deref().map_or("", |c| c)
    }
}

impl std::ops::Deref for Comment {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl From<Comment> for String {
    fn from(c: Comment) -> String {
        c.as_str().to_string()
    }
}

/// The names peers list a content under, sorted, without repeats (at most
/// [`MAX_NAMES`]): the first inline, the rare others behind one pointer
/// that takes no memory while there are none.
#[derive(Clone, Debug, Default)]
// One thin pointer per content (a `Vec` would take three words in every
// one of them); the rare list behind it is boxed on purpose.
#[allow(clippy::box_collection)]
pub struct Names {
    first: Option<Box<str>>,
    more: Option<Box<Vec<Box<str>>>>,
}

/// The names of a content, in order ([`Names::iter`]).
pub type NamesIter<'a> = std::iter::Map<
    std::iter::Chain<std::option::Iter<'a, Box<str>>, std::slice::Iter<'a, Box<str>>>,
    fn(&Box<str>) -> &str,
>;

impl Names {
    /// The names in `names` (any order, repeats allowed), at most
    /// [`MAX_NAMES`] of them: the first ones in sort order.
    fn collect<'a>(names: impl Iterator<Item = &'a str>) -> Names {
        let mut all: Vec<&str> = names.collect();
        all.sort_unstable();
        all.dedup();
        all.truncate(MAX_NAMES);
        let mut it = all.into_iter();
        let first = it.next().map(Box::from);
        let more: Vec<Box<str>> = it.map(Box::from).collect();
        Names {
            first,
            more: (!more.is_empty()).then(|| Box::new(more)),
        }
    }

    /// The names after the first, in order.
    fn more(&self) -> &[Box<str>] {
        self.more.as_deref().map_or(&[], Vec::as_slice)
    }

    /// Adds `name` unless it is there already.
    fn insert(&mut self, name: &str) {
        let Some(first) = &mut self.first else {
            self.first = Some(name.into());
            return;
        };
        if **first == *name {
            return;
        }
        let (at, name) = if name < &**first {
            (0, std::mem::replace(first, name.into()))
        } else {
            match self.more().binary_search_by(|n| (**n).cmp(name)) {
                Ok(_) => return,
                Err(at) => (at, name.into()),
            }
        };
        let more = self.more.get_or_insert_with(Box::default);
        more.reserve_exact(1);
        more.insert(at, name);
    }

    pub fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.more().len()
    }

    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }

    /// The first name in sort order.
    pub fn first(&self) -> Option<&str> {
        self.first.as_deref()
    }

    /// Every name, in sort order.
    pub fn iter(&self) -> NamesIter<'_> {
        self.first.iter().chain(self.more().iter()).map(|n| &**n)
    }
}

impl<'a> IntoIterator for &'a Names {
    type Item = &'a str;
    type IntoIter = NamesIter<'a>;
    fn into_iter(self) -> NamesIter<'a> {
        self.iter()
    }
}

/// Each holder of a content with its chunks, sorted by holder: a short
/// list sized to its holders (two words, no spare room), as most contents
/// have one holder or a few.
#[derive(Clone, Debug, Default)]
pub struct Holders(Box<[(NodeId, ChunkSet)]>);

impl Holders {
    /// Sets `peer`'s chunks.
    fn insert(&mut self, peer: NodeId, chunks: ChunkSet) {
        match self.0.binary_search_by(|(p, _)| p.cmp(&peer)) {
            Ok(i) => self.0[i].1 = chunks,
            Err(i) => {
                // Room for this one only: most contents have one holder.
                let mut v = std::mem::take(&mut self.0).into_vec();
                v.reserve_exact(1);
                v.insert(i, (peer, chunks));
                self.0 = v.into_boxed_slice();
            }
        }
    }

    fn remove(&mut self, peer: &NodeId) {
        if let Ok(i) = self.0.binary_search_by(|(p, _)| p.cmp(peer)) {
            let mut v = std::mem::take(&mut self.0).into_vec();
            v.remove(i);
            self.0 = v.into_boxed_slice();
        }
    }

    pub fn get(&self, peer: &NodeId) -> Option<&ChunkSet> {
        let i = self.0.binary_search_by(|(p, _)| p.cmp(peer)).ok()?;
        Some(&self.0[i].1)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The holders, in order.
    pub fn keys(&self) -> impl Iterator<Item = &NodeId> {
        self.0.iter().map(|(p, _)| p)
    }

    /// Each holder with its chunks, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&NodeId, &ChunkSet)> {
        self.0.iter().map(|(p, c)| (p, c))
    }
}

impl std::ops::Index<&NodeId> for Holders {
    type Output = ChunkSet;
    fn index(&self, peer: &NodeId) -> &ChunkSet {
        self.get(peer).expect("no such holder")
    }
}

/// What is held for all peers together.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub entries: usize,
    /// Sum of [`entry_cost`] over every entry held.
    pub bytes: usize,
    /// Bytes of inventory pages being pulled right now ([`PullBudget`]).
    pub reserved: usize,
}

/// One peer's inventory as held, with its cost.
#[derive(Clone)]
struct HeldInventory {
    inv: Inventory,
    bytes: usize,
}

pub struct Contents {
    index: DashMap<ContentId, Content>,
    /// Each peer's current inventory (sorted by id), so its holdings can
    /// be updated by difference and a delta applied to it.
    inventories: DashMap<NodeId, HeldInventory>,
    /// Serializes writers so holdings never go out of step with
    /// inventories; readers use the maps without it. Never held across an
    /// await. Holds what is held in all.
    held: Mutex<Held>,
    /// Most inventory entries held for all peers together.
    max_entries: usize,
    /// Most bytes ([`entry_cost`]) held for all peers together, pulls in
    /// progress included.
    max_bytes: usize,
    /// Woken whenever holdings change (a fetch waiting for holders listens).
    pub changed: Notify,
}

impl Default for Contents {
    fn default() -> Self {
        Contents::new(DEFAULT_MAX_REMOTE_CONTENTS, DEFAULT_MAX_REMOTE_BYTES)
    }
}

impl Contents {
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Contents {
            index: DashMap::new(),
            inventories: DashMap::new(),
            held: Mutex::new(Held::default()),
            max_entries,
            max_bytes,
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held.lock().expect("contents lock")
    }

    pub fn content(&self, id: &ContentId) -> Option<Content> {
        self.index.get(id).map(|c| c.clone())
    }

    /// `f` of the content `id`, without copying it.
    pub fn with<R>(&self, id: &ContentId, f: impl FnOnce(&Content) -> R) -> Option<R> {
        self.index.get(id).map(|c| f(&c))
    }

    /// `f` of every content (in no order).
    pub fn map_all<R>(&self, mut f: impl FnMut(&ContentId, &Content) -> Option<R>) -> Vec<R> {
        self.index.iter().filter_map(|c| f(c.key(), &c)).collect()
    }

    /// The inventory held for a peer (to apply a delta to).
    pub fn inventory(&self, peer: &NodeId) -> Option<Inventory> {
        self.inventories.get(peer).map(|i| i.inv.clone())
    }

    /// Entries and bytes held for all peers, and bytes reserved by pulls.
    pub fn held(&self) -> Held {
        *self.lock()
    }

    /// Budget for pulling `peer`'s inventory: every page must be admitted
    /// before it is kept (see [`PullBudget::admit`]).
    pub fn pull_budget(&self, peer: NodeId) -> PullBudget<'_> {
        PullBudget {
            contents: self,
            peer,
            reserved: 0,
        }
    }

    /// Replaces `peer`'s inventory, touching only the contents that
    /// changed. Over a bound, its holdings are withdrawn instead, with a
    /// warning, and the reason returned.
    pub fn set(&self, peer: NodeId, inv: Inventory) -> Result<(), Refusal> {
        let mut held = self.lock();
        let old = self
            .inventories
            .get(&peer)
            .map(|i| (i.inv.clone(), i.bytes));
        let old_bytes = old.as_ref().map_or(0, |(_, b)| *b);
        let old: Inventory = old.map(|(v, _)| v).unwrap_or_default();
        // Only the entries that changed are decoded to count their cost:
        // a one-entry delta of a large inventory costs one decode, not one
        // per entry (`diff` compares encodings without decoding).
        let changed = crate::inventory::diff(&old, &inv);
        let mut bytes = old_bytes;
        for id in &changed {
            if let Some(e) = old.get(id) {
                bytes -= entry_cost(&e);
            }
            if let Some(e) = inv.get(id) {
                bytes += entry_cost(&e);
            }
        }
        let refusal = if held.entries - old.len() + inv.len() > self.max_entries {
            Some(Refusal::OverContents)
        } else if held.bytes - old_bytes + bytes > self.max_bytes {
            Some(Refusal::OverBytes)
        } else {
            None
        };
        if let Some(why) = refusal {
            warn_refused(peer, &inv, why);
            self.withdraw_locked(peer, &mut held);
            self.changed.notify_waiters();
            return Err(why);
        }
        for changed in changed {
            match inv.get(&changed) {
                Some(e) => self.hold(peer, &e),
                None => self.release(peer, &changed),
            }
        }
        held.entries = held.entries - old.len() + inv.len();
        held.bytes = held.bytes - old_bytes + bytes;
        self.inventories.insert(peer, HeldInventory { inv, bytes });
        self.changed.notify_waiters();
        Ok(())
    }

    /// Removes `peer`'s holdings, waking fetches that wait for holders.
    pub fn withdraw(&self, peer: NodeId) {
        let mut held = self.lock();
        self.withdraw_locked(peer, &mut held);
        self.changed.notify_waiters();
    }

    /// Removes `peer`'s holdings, with the lock held.
    fn withdraw_locked(&self, peer: NodeId, held: &mut Held) {
        if let Some((_, old)) = self.inventories.remove(&peer) {
            for id in old.inv.ids() {
                self.release(peer, &id);
            }
            held.entries -= old.inv.len();
            held.bytes -= old.bytes;
        }
    }

    /// Records that `peer` holds `e`; caller holds the lock. The
    /// content's names become those its holders list now (`e`'s and the
    /// other holders'), so a path a holder stopped listing goes.
    fn hold(&self, peer: NodeId, e: &InventoryEntry) {
        let mut c = self.index.entry(e.id).or_insert_with(|| Content {
            names: Names::default(),
            size: e.size,
            category: e.category,
            comment: Comment::default(),
            holders: Holders::default(),
        });
        if c.holders.is_empty() && !e.more_paths.is_empty() {
            c.names = Names::collect(e.names());
        } else if c.holders.is_empty() {
            c.names.insert(&e.name);
        } else {
            c.names = self.names_listed(&e.id, &c.holders, Some((peer, e)));
        }
        if c.comment.is_empty() && !e.comment.is_empty() {
            c.comment = Comment::new(&e.comment);
        }
        c.holders.insert(peer, e.chunks.clone());
    }

    /// Every name the holders of `id` list it under, `peer`'s from `own`
    /// (its new entry) rather than from the inventory held for it. A
    /// holder's inventory is never a `DashMap` held elsewhere here.
    fn names_listed(
        &self,
        id: &ContentId,
        holders: &Holders,
        own: Option<(NodeId, &InventoryEntry)>,
    ) -> Names {
        let held: Vec<Inventory> = holders
            .keys()
            .filter(|h| own.is_none_or(|(p, _)| p != **h))
            .filter_map(|h| self.inventories.get(h).map(|i| i.inv.clone()))
            .collect();
        // Bounded work under the lock whatever the holders list: entries
        // are decoded (the new one's names first) only until there are
        // enough names.
        let mut entries = Vec::new();
        let mut names = own.map_or(0, |(_, e)| e.names().count());
        for inv in &held {
            if names >= MAX_NAMES {
                break;
            }
            if let Some(e) = inv.get(id) {
                names += e.names().count();
                entries.push(e);
            }
        }
        let entries = own.map(|(_, e)| e).into_iter().chain(entries.iter());
        Names::collect(entries.flat_map(InventoryEntry::names).take(MAX_NAMES))
    }

    /// Records that `peer` no longer holds `id`; caller holds the lock.
    /// The names only it listed go.
    fn release(&self, peer: NodeId, id: &ContentId) {
        let empty = match self.index.get_mut(id) {
            Some(mut c) => {
                c.holders.remove(&peer);
                if !c.holders.is_empty() {
                    let names = self.names_listed(id, &c.holders, None);
                    if !names.is_empty() {
                        c.names = names;
                    }
                }
                c.holders.is_empty()
            }
            None => false,
        };
        if empty {
            self.index.remove_if(id, |_, c| c.holders.is_empty());
        }
    }
}

/// Logs why `peer`'s inventory `inv` is not held.
pub(super) fn warn_refused(peer: NodeId, inv: &Inventory, why: Refusal) {
    let bytes: usize = inv.iter().map(|e| entry_cost(&e)).sum();
    tracing::warn!(
        peer = %peer.short(),
        contents = inv.len(),
        bytes,
        "{why}; its contents are not listed"
    );
}

/// Memory an inventory pull may take before it is held: pages are
/// admitted against [`Contents`]' byte limit, counting what every other
/// pull in progress reserved, so concurrent pulls of huge inventories
/// cannot together pass it. The reservation ends when this is dropped
/// (after [`super::Dict::set_inventory`]).
pub struct PullBudget<'a> {
    contents: &'a Contents,
    peer: NodeId,
    reserved: usize,
}

impl PullBudget<'_> {
    /// Reserves room for `entries` (one page); false when they would pass
    /// the limit: stop pulling. What the peer holds now does not count, as
    /// the pull replaces it.
    pub fn admit(&mut self, entries: &[InventoryEntry]) -> bool {
        let n: usize = entries.iter().map(entry_cost).sum();
        let own = self
            .contents
            .inventories
            .get(&self.peer)
            .map_or(0, |i| i.bytes);
        let mut held = self.contents.lock();
        if (held.bytes - own.min(held.bytes)) + held.reserved + n > self.contents.max_bytes {
            return false;
        }
        held.reserved += n;
        self.reserved += n;
        true
    }
}

impl Drop for PullBudget<'_> {
    fn drop(&mut self) {
        if let Ok(mut held) = self.contents.held.lock() {
            held.reserved -= self.reserved;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The budget's fixed part covers what one entry really takes besides
    /// its text: the held inventory entry, the content's record with its
    /// id, and one holder's slot.
    #[test]
    fn entry_overhead_covers_the_records() {
        let fixed = size_of::<InventoryEntry>()
            + size_of::<ContentId>()
            + size_of::<Content>()
            + size_of::<(NodeId, ChunkSet)>();
        println!("fixed cost per entry: {fixed} bytes");
        assert!(ENTRY_OVERHEAD >= fixed, "{ENTRY_OVERHEAD} < {fixed}");
    }

    /// A content's record stays compact: one per remote content, beside
    /// its id in the map's table (which grows by doubling).
    #[test]
    fn a_content_record_takes_64_bytes() {
        assert!(size_of::<Content>() <= 64, "{}", size_of::<Content>());
    }

    #[test]
    fn names_stay_sorted_without_repeats() {
        let mut n = Names::default();
        for name in ["b", "a", "c", "a", "b"] {
            n.insert(name);
        }
        assert_eq!(n.iter().collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!((n.first(), n.len()), (Some("a"), 3));
    }

    /// A content's names are the paths its holders list now: every path
    /// of each entry, and a path no holder lists any more goes.
    #[test]
    fn names_follow_what_the_holders_list() {
        let entry = |name: &str, more: &[&str]| InventoryEntry {
            id: ContentId([1; 32]),
            name: name.into(),
            more_paths: crate::wire::MorePaths::new(more.iter().map(|m| m.to_string()).collect()),
            size: 1,
            category: Category::Other,
            comment: String::new(),
            chunks: ChunkSet::Full,
        };
        let names = |c: &Contents| {
            c.content(&ContentId([1; 32]))
                .map(|x| x.names.iter().map(String::from).collect::<Vec<_>>())
                .unwrap_or_default()
        };
        let c = Contents::default();
        let (a, b) = (NodeId([1; 16]), NodeId([2; 16]));
        c.set(a, Inventory::new(vec![entry("a/x", &["b/x"])]))
            .unwrap();
        c.set(b, Inventory::new(vec![entry("c/x", &[])])).unwrap();
        assert_eq!(names(&c), ["a/x", "b/x", "c/x"]);
        c.set(a, Inventory::new(vec![entry("a/x", &[])])).unwrap();
        assert_eq!(names(&c), ["a/x", "c/x"]);
        c.withdraw(b);
        assert_eq!(names(&c), ["a/x"]);
        let cost = entry_cost(&entry("a/x", &["b/x"])) - entry_cost(&entry("a/x", &[]));
        assert_eq!(
            cost,
            2 * 3 + PATH_OVERHEAD,
            "each path costs its text twice"
        );
    }

    #[test]
    fn holders_are_set_and_removed_by_peer() {
        let mut h = Holders::default();
        let (a, b) = (NodeId([1; 16]), NodeId([2; 16]));
        h.insert(b, ChunkSet::Full);
        h.insert(a, ChunkSet::Full);
        h.insert(b, ChunkSet::Full);
        assert_eq!(h.keys().copied().collect::<Vec<_>>(), [a, b]);
        h.remove(&a);
        assert_eq!((h.len(), h.get(&a).is_none()), (1, true));
    }
}
