//! Walking two id-sorted lists together: what differs between two
//! inventories ([`diff`], [`diff_sorted`]) and the inventory a delta makes
//! of its base ([`apply`]). Pure functions over slices.

use crate::id::ContentId;
use crate::wire::InventoryEntry;

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
    use crate::inventory::Inventory;
    use crate::inventory::tests::entry;
    use proptest::prelude::*;

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
