//! An inventory's entries as they are held: encoded, the postcard bytes
//! of each entry one after the other (what GetInventory sends and the
//! digest covers), with where each one starts. About 62 bytes per entry
//! with short names, where a decoded `InventoryEntry` takes 112 bytes and
//! an allocation for its name. An entry is decoded only when a reader
//! asks for it. Pure: no I/O; owns the layout and nothing else.

use crate::id::ContentId;
use crate::wire::InventoryEntry;

/// Bytes of an entry's id at the start of its encoding (postcard writes
/// the 32 bytes of a `ContentId` as they are, first).
const ID_BYTES: usize = 32;

/// Entries ascending by id, encoded.
#[derive(Default)]
pub(super) struct Encoded {
    bytes: Box<[u8]>,
    /// Where each entry's encoding starts in `bytes`; it ends where the
    /// next one starts.
    starts: Box<[usize]>,
}

impl std::fmt::Debug for Encoded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoded")
            .field("entries", &self.starts.len())
            .field("bytes", &self.bytes.len())
            .finish()
    }
}

impl Encoded {
    pub(super) fn len(&self) -> usize {
        self.starts.len()
    }

    /// All the entries' encodings, one after the other.
    pub(super) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The encoding of entry `i`.
    pub(super) fn raw(&self, i: usize) -> &[u8] {
        let end = self.starts.get(i + 1).copied().unwrap_or(self.bytes.len());
        &self.bytes[self.starts[i]..end]
    }

    /// The id of entry `i`.
    pub(super) fn id(&self, i: usize) -> ContentId {
        let at = self.starts[i];
        let mut id = [0u8; ID_BYTES];
        id.copy_from_slice(&self.bytes[at..at + ID_BYTES]);
        ContentId(id)
    }

    /// Entry `i`, decoded.
    pub(super) fn decode(&self, i: usize) -> InventoryEntry {
        // Encoded here from an entry that decoded or was made by this
        // node: it decodes again (a failure would be a bug of ours).
        postcard::from_bytes(self.raw(i)).expect("a held inventory entry decodes")
    }

    /// The size entry `i` lists, read without decoding what follows it
    /// (its name is borrowed, not copied; its other paths, rare, are).
    pub(super) fn size(&self, i: usize) -> u64 {
        /// The fields of an entry up to its size, in the order sent.
        #[derive(serde::Deserialize)]
        struct Head<'a> {
            _id: ContentId,
            #[serde(borrow)]
            _name: &'a str,
            _more_paths: crate::wire::MorePaths,
            size: u64,
        }
        let (head, _): (Head<'_>, _) =
            postcard::take_from_bytes(self.raw(i)).expect("a held inventory entry decodes");
        head.size
    }

    /// Where `id` is (`Ok`), or where it would go (`Err`).
    pub(super) fn find(&self, id: &ContentId) -> Result<usize, usize> {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            match self.id(mid).cmp(id) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => return Ok(mid),
            }
        }
        Err(lo)
    }
}

/// Builds an [`Encoded`] entry by entry, in ascending order of id.
#[derive(Default)]
pub(super) struct Builder {
    bytes: Vec<u8>,
    starts: Vec<usize>,
}

impl Builder {
    /// Room for `entries` entries (and a guess at their bytes).
    pub(super) fn with_capacity(entries: usize) -> Self {
        Builder {
            bytes: Vec::with_capacity(entries * 64),
            starts: Vec::with_capacity(entries),
        }
    }

    pub(super) fn push(&mut self, e: &InventoryEntry) {
        self.starts.push(self.bytes.len());
        postcard::to_io(e, &mut self.bytes).expect("encoding into memory cannot fail");
        self.check_order();
    }

    /// Appends an entry already encoded (from another [`Encoded`]).
    pub(super) fn push_raw(&mut self, raw: &[u8]) {
        self.starts.push(self.bytes.len());
        self.bytes.extend_from_slice(raw);
        self.check_order();
    }

    fn check_order(&self) {
        if cfg!(debug_assertions) && self.starts.len() >= 2 {
            let n = self.starts.len();
            let at = |i: usize| &self.bytes[self.starts[i]..self.starts[i] + ID_BYTES];
            debug_assert!(at(n - 2) <= at(n - 1), "entries pushed in order of id");
        }
    }

    /// The entries, sized to what they take.
    pub(super) fn finish(self) -> Encoded {
        Encoded {
            bytes: self.bytes.into_boxed_slice(),
            starts: self.starts.into_boxed_slice(),
        }
    }
}
