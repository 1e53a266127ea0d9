//! The inventory: the list of contents a node offers, its digest, and the
//! rules for comparing and updating it (the change log, the plan and delta
//! a peer is sent, the rebuild and check of what a pull received). A
//! protocol concept, pure: no I/O, no store, no dictionary.
//!
//! The store builds and publishes this node's inventory through a
//! [`Publisher`]; everyone else reads it through the publisher's
//! `watch::Receiver` (announcer, mDNS, tracker client) or its [`Plan`]s
//! (peer server). Peers' inventories arrive as a [`Received`] and become an
//! [`Inventory`] only through [`Received::rebuild`], which checks the
//! digest.

mod changes;
mod merge;
mod publisher;

use std::sync::Arc;

pub use changes::{ChangeLog, Delta, MAX_CHANGED_IDS, MAX_CHANGES, Plan};
pub use merge::{apply, diff, diff_sorted};
pub use publisher::Publisher;

use crate::id::ContentId;
use crate::wire::InventoryEntry;

/// An inventory's digest: the first 16 bytes of the BLAKE3 hash of its
/// encoded entries (see `docs/protocol.md`, §6.5).
pub type Digest = [u8; 16];

/// What a node offers, as announced: entries sorted by id, plus a digest
/// that changes whenever any entry does.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    pub entries: Arc<Vec<InventoryEntry>>,
    pub digest: Digest,
}

impl Inventory {
    pub fn new(mut entries: Vec<InventoryEntry>) -> Self {
        // Most come sorted (a publish, a pull): then no sort's scratch.
        if !entries.is_sorted_by_key(|e| e.id) {
            entries.sort_by_key(|e| e.id);
        }
        // Hashed as it is encoded, 64 KiB at a time: the encoding is
        // never held whole.
        let mut hasher = blake3::Hasher::new();
        let mut w = std::io::BufWriter::with_capacity(1 << 16, &mut hasher);
        postcard::to_io(&entries, &mut w).expect("encoding into a hasher cannot fail");
        std::io::Write::flush(&mut w).expect("a hasher takes every byte");
        drop(w);
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&hasher.finalize().as_bytes()[..16]);
        Inventory {
            entries: Arc::new(entries),
            digest,
        }
    }

    /// How many contents it lists, as announced (`contents` fields).
    pub fn count(&self) -> u32 {
        self.entries.len() as u32
    }

    /// The entry for `id`, if listed.
    pub fn get(&self, id: &ContentId) -> Option<&InventoryEntry> {
        let i = self.entries.binary_search_by(|e| e.id.cmp(id)).ok()?;
        Some(&self.entries[i])
    }
}

/// Why what a pull received is not an inventory we can use.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum InventoryError {
    #[error("a delta without its base")]
    MissingBase,
    #[error("inventory does not match its digest")]
    DigestMismatch,
}

/// An inventory as a pull received it: complete (`base: None`) or a delta
/// against the version of digest `base`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received {
    pub digest: Digest,
    pub base: Option<Digest>,
    /// All entries, or (a delta) the new and changed ones; ascending by id.
    pub entries: Vec<InventoryEntry>,
    /// Ids no longer offered (a delta only), in any order.
    pub removed: Vec<ContentId>,
}

impl Received {
    /// The whole inventory this describes, given the entries of its base
    /// for a delta; checked against the digest the peer sent.
    pub fn rebuild(self, held: Option<&[InventoryEntry]>) -> Result<Inventory, InventoryError> {
        let entries = match (self.base, held) {
            (None, _) => self.entries,
            (Some(_), Some(base)) => {
                let mut removed = self.removed;
                removed.sort();
                apply(base, &self.entries, &removed)
            }
            (Some(_), None) => return Err(InventoryError::MissingBase),
        };
        let inv = Inventory::new(entries);
        if inv.digest != self.digest {
            return Err(InventoryError::DigestMismatch);
        }
        Ok(inv)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunkset::ChunkSet;
    use crate::manifest::Category;

    /// A one-byte-named entry of size 1, for the inventory tests.
    pub(super) fn entry(id: u8, name: &str) -> InventoryEntry {
        InventoryEntry {
            id: ContentId([id; 32]),
            name: name.into(),
            more_paths: Default::default(),
            size: 1,
            category: Category::Other,
            comment: String::new(),
            chunks: ChunkSet::Full,
        }
    }

    #[test]
    fn a_received_delta_is_rebuilt_on_its_base_and_checked() {
        let v1 = Inventory::new(vec![entry(1, "a"), entry(2, "b")]);
        let v2 = Inventory::new(vec![entry(2, "b2"), entry(3, "c")]);
        let delta = Received {
            digest: v2.digest,
            base: Some(v1.digest),
            entries: vec![entry(2, "b2"), entry(3, "c")],
            removed: vec![ContentId([1; 32])],
        };
        let got = delta.clone().rebuild(Some(&v1.entries)).unwrap();
        assert_eq!(got.digest, v2.digest);
        assert_eq!(got.get(&ContentId([3; 32])).unwrap().name, "c");
        assert_eq!(
            delta.clone().rebuild(None).unwrap_err(),
            InventoryError::MissingBase
        );
        let lie = Received {
            digest: [7; 16],
            ..delta
        };
        assert_eq!(
            lie.rebuild(Some(&v1.entries)).unwrap_err(),
            InventoryError::DigestMismatch
        );
        let full = Received {
            digest: v1.digest,
            base: None,
            entries: vec![entry(2, "b"), entry(1, "a")],
            removed: Vec::new(),
        };
        assert_eq!(full.rebuild(None).unwrap().digest, v1.digest);
    }
}
