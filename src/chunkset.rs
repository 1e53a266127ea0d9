//! A set of chunk indices: which chunks of a content a node holds.
//! `Full` costs nothing on the wire; `Partial` is a bitmap. Pure.
//!
//! A bitmap's bytes are shared (`Arc`): cloning a `ChunkSet` copies a
//! pointer, so the dictionary can keep a peer's inventory and the holdings
//! derived from it without a second copy of every bitmap. Writes copy on
//! write only when the bytes are shared.

use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Which chunks of one content a holder has.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChunkSet {
    /// Every chunk.
    Full,
    /// A bitmap, chunk `i` at bit `i % 8` of byte `i / 8`.
    Partial(Bitmap),
}

impl ChunkSet {
    pub fn has(&self, index: u32) -> bool {
        match self {
            ChunkSet::Full => true,
            ChunkSet::Partial(b) => b.get(index),
        }
    }

    /// Number of chunks held out of `total`.
    pub fn count(&self, total: u32) -> u32 {
        match self {
            ChunkSet::Full => total,
            ChunkSet::Partial(b) => b.count_ones().min(total),
        }
    }

    pub fn is_complete(&self, total: u32) -> bool {
        self.count(total) == total
    }
}

/// A fixed-length bitmap of chunk indices.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Bitmap {
    bits: Arc<Vec<u8>>,
}

/// The serialized form of a [`Bitmap`], exactly as when it was a plain
/// `struct Bitmap { bits: Vec<u8> }` (the wire format does not change).
#[derive(Serialize)]
#[serde(rename = "Bitmap")]
struct BitmapRef<'a> {
    bits: &'a [u8],
}

#[derive(Deserialize)]
#[serde(rename = "Bitmap")]
struct BitmapOwned {
    bits: Vec<u8>,
}

impl Serialize for Bitmap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        BitmapRef { bits: &self.bits }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Bitmap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BitmapOwned::deserialize(d).map(|b| Bitmap::from_bytes(b.bits))
    }
}

/// Longest partial bitmap, in bytes, that a content of `size` bytes can
/// need: one bit per chunk of [`crate::manifest::CHUNK_SIZE`], the chunk
/// size of every content lanshare creates (and never more than
/// [`crate::manifest::MAX_CHUNKS`] bits). A longer bitmap from a peer
/// carries nothing but memory.
pub fn max_bitmap_bytes(size: u64) -> usize {
    let chunks = crate::manifest::Manifest::chunk_count_for(size, crate::manifest::CHUNK_SIZE)
        .min(crate::manifest::MAX_CHUNKS as u64);
    (chunks as usize).div_ceil(8)
}

impl Bitmap {
    pub fn new(len: u32) -> Self {
        Bitmap {
            bits: Arc::new(vec![0; (len as usize).div_ceil(8)]),
        }
    }

    pub fn from_bytes(bits: Vec<u8>) -> Self {
        Bitmap {
            bits: Arc::new(bits),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// Bits this bitmap can address (a multiple of 8).
    pub fn capacity(&self) -> u32 {
        (self.bits.len() * 8) as u32
    }

    pub fn get(&self, i: u32) -> bool {
        self.bits
            .get(i as usize / 8)
            .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    /// Sets bit `i`; out-of-range indices are ignored.
    pub fn set(&mut self, i: u32) {
        if (i as usize / 8) < self.bits.len() {
            Arc::make_mut(&mut self.bits)[i as usize / 8] |= 1 << (i % 8);
        }
    }

    pub fn clear(&mut self, i: u32) {
        if (i as usize / 8) < self.bits.len() {
            Arc::make_mut(&mut self.bits)[i as usize / 8] &= !(1 << (i % 8));
        }
    }

    pub fn count_ones(&self) -> u32 {
        self.bits.iter().map(|b| b.count_ones()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_basics() {
        let mut b = Bitmap::new(10);
        assert_eq!(b.capacity(), 16);
        b.set(0);
        b.set(9);
        b.set(100); // ignored
        assert!(b.get(0) && b.get(9) && !b.get(1) && !b.get(100));
        assert_eq!(b.count_ones(), 2);
        b.clear(9);
        assert_eq!(b.count_ones(), 1);
        let set = ChunkSet::Partial(b);
        assert!(set.has(0) && !set.has(9));
        assert_eq!(set.count(10), 1);
        assert!(!set.is_complete(10));
        assert!(ChunkSet::Full.is_complete(10));
    }

    #[test]
    fn clones_share_bytes_and_copy_on_write() {
        let mut a = Bitmap::new(16);
        a.set(1);
        let b = a.clone();
        assert!(Arc::ptr_eq(&a.bits, &b.bits), "a clone shares the bytes");
        a.set(2);
        assert!(
            a.get(2) && !b.get(2),
            "a write does not show through a clone"
        );
        assert!(!Arc::ptr_eq(&a.bits, &b.bits));
    }

    #[test]
    fn serialized_form_is_unchanged() {
        #[derive(Serialize)]
        struct Old {
            bits: Vec<u8>,
        }
        let mut b = Bitmap::new(20);
        b.set(3);
        b.set(17);
        let old = Old {
            bits: b.as_bytes().to_vec(),
        };
        let bytes = postcard::to_allocvec(&b).unwrap();
        assert_eq!(bytes, postcard::to_allocvec(&old).unwrap());
        assert_eq!(
            serde_json::to_string(&b).unwrap(),
            serde_json::to_string(&old).unwrap()
        );
        assert_eq!(postcard::from_bytes::<Bitmap>(&bytes).unwrap(), b);
    }

    #[test]
    fn bitmap_bound_follows_the_size() {
        assert_eq!(max_bitmap_bytes(0), 0);
        assert_eq!(max_bitmap_bytes(10), 1);
        assert_eq!(max_bitmap_bytes(8 << 20), 1);
        assert_eq!(max_bitmap_bytes((8 << 20) + 1), 2);
        assert_eq!(max_bitmap_bytes(u64::MAX), crate::manifest::MAX_CHUNKS / 8);
    }
}
