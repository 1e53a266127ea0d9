//! Walking two id-sorted lists together: what differs between two
//! inventories ([`diff`], [`diff_sorted`]) and the inventory a delta makes
//! of its base ([`apply`]). Pure functions; held entries are compared and
//! copied encoded, never decoded.

use super::encoded::Builder;
use super::{Inventory, InventoryBuilder};
use crate::id::ContentId;
use crate::wire::InventoryEntry;

/// Ids whose entries differ between two inventories (their encodings
/// compared: nothing decoded).
pub fn diff(old: &Inventory, new: &Inventory) -> Vec<ContentId> {
    let (old, new) = (&old.entries, &new.entries);
    let mut out = Vec::new();
    let (mut i, mut j) = (0, 0);
    while i < old.len() || j < new.len() {
        let (a, b) = (
            (i < old.len()).then(|| old.id(i)),
            (j < new.len()).then(|| new.id(j)),
        );
        match (a, b) {
            (Some(a), Some(b)) if a == b => {
                if old.raw(i) != new.raw(j) {
                    out.push(a);
                }
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b => {
                out.push(a);
                i += 1;
            }
            (Some(a), None) => {
                out.push(a);
                i += 1;
            }
            (_, Some(b)) => {
                out.push(b);
                j += 1;
            }
            (None, None) => break,
        }
    }
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

/// Applies a delta to the inventory it was made against: `upserts`
/// ascending by id, `removed` sorted. The caller checks the digest.
pub fn apply(base: &Inventory, upserts: &[InventoryEntry], removed: &[ContentId]) -> Inventory {
    let base = &base.entries;
    let mut out = InventoryBuilder(Builder::with_capacity(base.len() + upserts.len()));
    let (mut i, mut j) = (0, 0);
    let gone = |id: &ContentId| removed.binary_search(id).is_ok();
    while i < base.len() || j < upserts.len() {
        let a = (i < base.len()).then(|| base.id(i));
        match (a, upserts.get(j)) {
            (Some(a), Some(b)) if a == b.id => {
                out.push(b);
                i += 1;
                j += 1;
            }
            (Some(a), Some(b)) if a < b.id => {
                if !gone(&a) {
                    out.0.push_raw(base.raw(i));
                }
                i += 1;
            }
            (Some(a), None) => {
                if !gone(&a) {
                    out.0.push_raw(base.raw(i));
                }
                i += 1;
            }
            (_, Some(b)) => {
                out.push(b);
                j += 1;
            }
            (None, None) => break,
        }
    }
    out.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
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
            let ids = diff(&va, &vb);
            let upserts: Vec<_> = vb.iter().filter(|e| ids.contains(&e.id)).collect();
            let removed: Vec<_> = ids.iter().copied().filter(|id| !vb.contains(id)).collect();
            let rebuilt = apply(&va, &upserts, &removed);
            prop_assert_eq!(rebuilt.digest, vb.digest);
        }
    }
}
