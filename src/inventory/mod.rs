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
//! digest. Every inventory, ours or a peer's, holds its entries encoded
//! (`encoded`) and decodes one when it is read.

mod changes;
mod encoded;
mod merge;
mod publisher;

use std::sync::Arc;

pub use changes::{ChangeLog, Delta, MAX_CHANGED_IDS, MAX_CHANGES, Plan};
pub use merge::{apply, diff, diff_sorted};
pub use publisher::Publisher;

use crate::id::ContentId;
use crate::wire::InventoryEntry;
use encoded::{Builder, Encoded};

/// An inventory's digest: the first 16 bytes of the BLAKE3 hash of its
/// encoded entries (see `docs/protocol.md`, §6.5).
pub type Digest = [u8; 16];

/// What a node offers, as announced: entries sorted by id, plus a digest
/// that changes whenever any entry does. The entries are held encoded
/// ([`encoded`]: about half the memory of decoded ones) and decoded one
/// at a time when read; a clone shares them.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    entries: Arc<Encoded>,
    pub digest: Digest,
}

impl Inventory {
    pub fn new(mut entries: Vec<InventoryEntry>) -> Self {
        // Most come sorted (a publish, a pull): then no sort's scratch.
        if !entries.is_sorted_by_key(|e| e.id) {
            entries.sort_by_key(|e| e.id);
        }
        let mut b = Builder::with_capacity(entries.len());
        for e in entries {
            b.push(&e);
        }
        Self::from_encoded(b.finish())
    }

    /// The inventory of these entries, ascending by id; the digest is that
    /// of their encoding as a list (`docs/protocol.md`, §6.5).
    fn from_encoded(entries: Encoded) -> Self {
        let mut hasher = blake3::Hasher::new();
        let count = postcard::to_allocvec(&(entries.len() as u64)).expect("a varint encodes");
        hasher.update(&count);
        hasher.update(entries.bytes());
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

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.len() == 0
    }

    /// The entry for `id`, if listed (decoded).
    pub fn get(&self, id: &ContentId) -> Option<InventoryEntry> {
        let i = self.entries.find(id).ok()?;
        Some(self.entries.decode(i))
    }

    /// Whether `id` is listed.
    pub fn contains(&self, id: &ContentId) -> bool {
        self.entries.find(id).is_ok()
    }

    /// Every entry, ascending by id, each decoded as it is reached.
    pub fn iter(&self) -> impl Iterator<Item = InventoryEntry> + '_ {
        self.iter_after(None)
    }

    /// The entries after `id` (all of them for `None`), ascending by id.
    pub fn iter_after(&self, id: Option<ContentId>) -> impl Iterator<Item = InventoryEntry> + '_ {
        let start = id.map_or(0, |id| match self.entries.find(&id) {
            Ok(i) => i + 1,
            Err(i) => i,
        });
        (start..self.entries.len()).map(|i| self.entries.decode(i))
    }

    /// The bytes of all the contents listed together (each entry's size
    /// read without decoding its names).
    pub fn total_size(&self) -> u64 {
        (0..self.entries.len()).map(|i| self.entries.size(i)).sum()
    }

    /// Every entry, decoded into one list (for a reader that needs them
    /// all at once: a test, a small inventory).
    pub fn to_vec(&self) -> Vec<InventoryEntry> {
        self.iter().collect()
    }

    /// Every id listed, ascending (nothing decoded).
    pub fn ids(&self) -> impl Iterator<Item = ContentId> + '_ {
        (0..self.entries.len()).map(|i| self.entries.id(i))
    }
}

/// Builds an [`Inventory`] entry by entry in ascending order of id,
/// without a list of decoded entries.
#[derive(Default)]
pub struct InventoryBuilder(Builder);

impl InventoryBuilder {
    /// Room for about `entries` entries.
    pub fn with_capacity(entries: usize) -> Self {
        InventoryBuilder(Builder::with_capacity(entries))
    }

    /// Appends `e`, whose id is greater than every one before.
    pub fn push(&mut self, e: &InventoryEntry) {
        self.0.push(e);
    }

    pub fn finish(self) -> Inventory {
        Inventory::from_encoded(self.0.finish())
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
    pub fn rebuild(self, held: Option<&Inventory>) -> Result<Inventory, InventoryError> {
        let inv = match (self.base, held) {
            (None, _) => Inventory::new(self.entries),
            (Some(_), Some(base)) => {
                let (mut upserts, mut removed) = (self.entries, self.removed);
                if !upserts.is_sorted_by_key(|e| e.id) {
                    upserts.sort_by_key(|e| e.id);
                }
                removed.sort();
                apply(base, &upserts, &removed)
            }
            (Some(_), None) => return Err(InventoryError::MissingBase),
        };
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

    /// The digest of the entries held encoded is the one of their list
    /// encoded whole (what every node computes, `docs/protocol.md` §6.5),
    /// and every entry decodes back as it was.
    #[test]
    fn held_encoded_the_digest_and_entries_are_unchanged() {
        let mut entries: Vec<InventoryEntry> = (0..200u8)
            .map(|i| entry(i, &"n".repeat(i as usize)))
            .collect();
        entries[7].comment = "a comment\nover lines".into();
        entries[9].chunks = ChunkSet::Partial(crate::chunkset::Bitmap::from_bytes(vec![5]));
        entries[11].more_paths = crate::wire::MorePaths::new(vec!["z/1".into(), "z/2".into()]);
        entries[13].size = 1 << 40;
        let whole = postcard::to_allocvec(&entries).unwrap();
        let inv = Inventory::new(entries.clone());
        assert_eq!(inv.digest[..], blake3::hash(&whole).as_bytes()[..16]);
        assert_eq!(inv.to_vec(), entries);
        assert_eq!(
            inv.total_size(),
            entries.iter().map(|e| e.size).sum::<u64>()
        );
        for e in &entries {
            assert_eq!(inv.get(&e.id).as_ref(), Some(e));
        }
        assert!(inv.get(&ContentId([200; 32])).is_none());
        let after: Vec<_> = inv.iter_after(Some(ContentId([150; 32]))).collect();
        assert_eq!(after, entries[151..]);
        assert_eq!(
            Inventory::new(Vec::new()).digest[..],
            blake3::hash(&[0]).as_bytes()[..16]
        );
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
        let got = delta.clone().rebuild(Some(&v1)).unwrap();
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
            lie.rebuild(Some(&v1)).unwrap_err(),
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
