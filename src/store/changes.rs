//! The recent history of this node's inventory, so a peer that holds an
//! older version can be sent only what changed (an incremental update)
//! instead of everything. Bounded: it remembers at most [`MAX_CHANGES`]
//! versions and [`MAX_CHANGED_IDS`] changed ids in all; a peer further
//! behind gets the inventory in full.

use std::collections::{BTreeSet, VecDeque};

use super::Inventory;
use crate::id::ContentId;
use crate::wire::InventoryEntry;

/// Versions remembered.
pub const MAX_CHANGES: usize = 64;
/// Changed ids remembered over all versions.
pub const MAX_CHANGED_IDS: usize = crate::wire::frame::MAX_REMOVED;

/// One published change: the ids added, changed or removed between two
/// inventory versions.
#[derive(Debug)]
struct Change {
    from: [u8; 16],
    ids: Vec<ContentId>,
}

#[derive(Debug, Default)]
pub struct ChangeLog {
    changes: VecDeque<Change>,
    ids: usize,
}

/// What to send a peer asking for the inventory: everything, or a delta.
#[derive(Clone, Debug)]
pub struct Plan {
    pub inventory: Inventory,
    pub delta: Option<Delta>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    pub base: [u8; 16],
    /// New or changed entries, ascending by id.
    pub upserts: Vec<InventoryEntry>,
    /// Ids no longer offered, ascending.
    pub removed: Vec<ContentId>,
}

impl ChangeLog {
    /// Records the change from `old` to `new` (both sorted by id).
    pub fn record(&mut self, old: &Inventory, new: &Inventory) {
        let ids = diff(&old.entries, &new.entries);
        self.ids += ids.len();
        self.changes.push_back(Change {
            from: old.digest,
            ids,
        });
        while self.changes.len() > MAX_CHANGES || self.ids > MAX_CHANGED_IDS {
            match self.changes.pop_front() {
                Some(c) => self.ids -= c.ids.len(),
                None => break,
            }
        }
    }

    /// What a peer holding the inventory of digest `since` needs to reach
    /// `current`: a delta when the log reaches back that far and the delta
    /// is smaller than the whole, else the whole inventory.
    pub fn plan(&self, current: &Inventory, since: Option<[u8; 16]>) -> Plan {
        let full = Plan {
            inventory: current.clone(),
            delta: None,
        };
        let Some(since) = since else {
            return full;
        };
        let start = if since == current.digest {
            self.changes.len()
        } else {
            match self.changes.iter().rposition(|c| c.from == since) {
                Some(i) => i,
                None => return full,
            }
        };
        let changed: BTreeSet<ContentId> = self
            .changes
            .iter()
            .skip(start)
            .flat_map(|c| c.ids.iter().copied())
            .collect();
        if changed.len() > MAX_CHANGED_IDS || changed.len() > current.entries.len().max(64) / 2 {
            return full;
        }
        let mut upserts = Vec::new();
        let mut removed = Vec::new();
        for id in changed {
            match current.entries.binary_search_by(|e| e.id.cmp(&id)) {
                Ok(i) => upserts.push(current.entries[i].clone()),
                Err(_) => removed.push(id),
            }
        }
        Plan {
            inventory: current.clone(),
            delta: Some(Delta {
                base: since,
                upserts,
                removed,
            }),
        }
    }
}

/// Ids whose entries differ between two id-sorted inventories.
pub fn diff(old: &[InventoryEntry], new: &[InventoryEntry]) -> Vec<ContentId> {
    let mut out = Vec::new();
    diff_sorted(
        old,
        new,
        |e| e.id,
        |o, n| out.push(o.or(n).map(|e| e.id).expect("one side")),
    );
    out
}

/// Walks two lists sorted by `id` together and calls `changed(old, new)`
/// for every id whose items differ: both present but unequal, or only one
/// present (the other `None`).
pub fn diff_sorted<'a, T: PartialEq>(
    old: &'a [T],
    new: &'a [T],
    id: impl Fn(&T) -> ContentId,
    mut changed: impl FnMut(Option<&'a T>, Option<&'a T>),
) {
    let (mut i, mut j) = (0, 0);
    loop {
        match (old.get(i), new.get(j)) {
            (Some(a), Some(b)) if id(a) == id(b) => {
                if a != b {
                    changed(Some(a), Some(b));
                }
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if id(a) < id(b) => {
                changed(Some(a), None);
                i += 1;
            }
            (Some(_), Some(b)) => {
                changed(None, Some(b));
                j += 1;
            }
            (Some(a), None) => {
                changed(Some(a), None);
                i += 1;
            }
            (None, Some(b)) => {
                changed(None, Some(b));
                j += 1;
            }
            (None, None) => break,
        }
    }
}

/// Applies a delta to the inventory it was made against (sorted by id);
/// the result is sorted by id. The caller checks its digest.
pub fn apply(
    base: &[InventoryEntry],
    upserts: &[InventoryEntry],
    removed: &[ContentId],
) -> Vec<InventoryEntry> {
    let mut out = Vec::with_capacity(base.len() + upserts.len());
    let (mut i, mut j) = (0, 0);
    let gone = |id: &ContentId| removed.binary_search(id).is_ok();
    while i < base.len() || j < upserts.len() {
        match (base.get(i), upserts.get(j)) {
            (Some(a), Some(b)) if a.id == b.id => {
                out.push(b.clone());
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a.id < b.id => {
                if !gone(&a.id) {
                    out.push(a.clone());
                }
                i += 1;
            }
            (Some(_), Some(b)) => {
                out.push(b.clone());
                j += 1;
            }
            (Some(a), None) => {
                if !gone(&a.id) {
                    out.push(a.clone());
                }
                i += 1;
            }
            (None, Some(b)) => {
                out.push(b.clone());
                j += 1;
            }
            (None, None) => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunkset::ChunkSet;
    use crate::manifest::Category;
    use proptest::prelude::*;

    fn entry(id: u8, name: &str) -> InventoryEntry {
        InventoryEntry {
            id: ContentId([id; 32]),
            name: name.into(),
            size: 1,
            category: Category::Other,
            comment: String::new(),
            chunks: ChunkSet::Full,
        }
    }

    #[test]
    fn a_delta_brings_an_old_version_up_to_date() {
        let v1 = Inventory::new((0..200).map(|i| entry(i, "a")).collect());
        let mut e2: Vec<_> = (1..200).map(|i| entry(i, "a")).collect();
        e2[10].name = "renamed".into();
        e2.push(entry(250, "new"));
        let v2 = Inventory::new(e2);
        let v3 = Inventory::new(
            v2.entries
                .iter()
                .filter(|e| e.id.0[0] != 5)
                .cloned()
                .collect(),
        );
        let mut log = ChangeLog::default();
        log.record(&v1, &v2);
        log.record(&v2, &v3);

        let plan = log.plan(&v3, Some(v1.digest));
        let d = plan.delta.expect("a delta");
        assert_eq!(d.base, v1.digest);
        assert_eq!(d.upserts.len(), 2);
        assert_eq!(d.removed, vec![ContentId([0; 32]), ContentId([5; 32])]);
        let rebuilt = Inventory::new(apply(&v1.entries, &d.upserts, &d.removed));
        assert_eq!(rebuilt.digest, v3.digest);

        // Up to date: an empty delta.
        let d = log.plan(&v3, Some(v3.digest)).delta.unwrap();
        assert!(d.upserts.is_empty() && d.removed.is_empty());
        // Unknown or absent base: in full.
        assert!(log.plan(&v3, Some([9; 16])).delta.is_none());
        assert!(log.plan(&v3, None).delta.is_none());
    }

    #[test]
    fn the_log_is_bounded() {
        let mut log = ChangeLog::default();
        let mut prev = Inventory::new(Vec::new());
        let first = prev.digest;
        for i in 0..(MAX_CHANGES as u8 + 10) {
            let next = Inventory::new(vec![entry(i, "x")]);
            log.record(&prev, &next);
            prev = next;
        }
        assert!(log.changes.len() <= MAX_CHANGES);
        assert!(
            log.plan(&prev, Some(first)).delta.is_none(),
            "too old: in full"
        );
    }

    #[test]
    fn a_large_change_is_sent_in_full() {
        let v1 = Inventory::new((0..200).map(|i| entry(i, "a")).collect());
        let v2 = Inventory::new((0..200).map(|i| entry(i, "b")).collect());
        let mut log = ChangeLog::default();
        log.record(&v1, &v2);
        assert!(log.plan(&v2, Some(v1.digest)).delta.is_none());
    }

    proptest! {
        #[test]
        fn diff_then_apply_round_trips(
            a in proptest::collection::btree_map(any::<u8>(), any::<bool>(), 0..60),
            b in proptest::collection::btree_map(any::<u8>(), any::<bool>(), 0..60),
        ) {
            let mk = |m: &std::collections::BTreeMap<u8, bool>| Inventory::new(
                m.iter().map(|(k, v)| entry(*k, if *v { "x" } else { "y" })).collect());
            let (va, vb) = (mk(&a), mk(&b));
            let ids = diff(&va.entries, &vb.entries);
            let upserts: Vec<_> = vb.entries.iter().filter(|e| ids.contains(&e.id)).cloned().collect();
            let removed: Vec<_> = ids.iter().copied().filter(|id| vb.entries.iter().all(|e| e.id != *id)).collect();
            let rebuilt = Inventory::new(apply(&va.entries, &upserts, &removed));
            prop_assert_eq!(rebuilt.digest, vb.digest);
        }
    }
}
