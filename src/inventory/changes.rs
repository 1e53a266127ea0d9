//! The recent history of this node's inventory, so a peer that holds an
//! older version can be sent only what changed (an incremental update)
//! instead of everything. Pure: the store's [`super::Publisher`] records
//! into it, the peer server asks it for a [`Plan`]. Bounded: it remembers at most [`MAX_CHANGES`]
//! versions and [`MAX_CHANGED_IDS`] changed ids in all; a peer further
//! behind gets the inventory in full.

use std::collections::{BTreeSet, VecDeque};

use super::{Digest, Inventory, diff};
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
    from: Digest,
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
    pub base: Digest,
    /// New or changed entries, ascending by id.
    pub upserts: Vec<InventoryEntry>,
    /// Ids no longer offered, ascending.
    pub removed: Vec<ContentId>,
}

impl ChangeLog {
    /// Records the change from `old` to `new` (both sorted by id).
    pub fn record(&mut self, old: &Inventory, new: &Inventory) {
        let ids = diff(old, new);
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
    pub fn plan(&self, current: &Inventory, since: Option<Digest>) -> Plan {
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
        if changed.len() > MAX_CHANGED_IDS || changed.len() > current.len().max(64) / 2 {
            return full;
        }
        let mut upserts = Vec::new();
        let mut removed = Vec::new();
        for id in changed {
            match current.get(&id) {
                Some(e) => upserts.push(e),
                None => removed.push(id),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::tests::entry;

    #[test]
    fn a_delta_brings_an_old_version_up_to_date() {
        let v1 = Inventory::new((0..200).map(|i| entry(i, "a")).collect());
        let mut e2: Vec<_> = (1..200).map(|i| entry(i, "a")).collect();
        e2[10].name = "renamed".into();
        e2.push(entry(250, "new"));
        let v2 = Inventory::new(e2);
        let v3 = Inventory::new(v2.iter().filter(|e| e.id.0[0] != 5).collect());
        let mut log = ChangeLog::default();
        log.record(&v1, &v2);
        log.record(&v2, &v3);

        let plan = log.plan(&v3, Some(v1.digest));
        let d = plan.delta.expect("a delta");
        assert_eq!(d.base, v1.digest);
        assert_eq!(d.upserts.len(), 2);
        assert_eq!(d.removed, vec![ContentId([0; 32]), ContentId([5; 32])]);
        let rebuilt = crate::inventory::apply(&v1, &d.upserts, &d.removed);
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
}
