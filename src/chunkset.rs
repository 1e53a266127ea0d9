//! A set of chunk indices: which chunks of a content a node holds.
//! `Full` costs nothing on the wire; `Partial` is a bitmap. Pure.

use serde::{Deserialize, Serialize};

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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Bitmap {
    bits: Vec<u8>,
}

impl Bitmap {
    pub fn new(len: u32) -> Self {
        Bitmap {
            bits: vec![0; (len as usize).div_ceil(8)],
        }
    }

    pub fn from_bytes(bits: Vec<u8>) -> Self {
        Bitmap { bits }
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
        if let Some(b) = self.bits.get_mut(i as usize / 8) {
            *b |= 1 << (i % 8);
        }
    }

    pub fn clear(&mut self, i: u32) {
        if let Some(b) = self.bits.get_mut(i as usize / 8) {
            *b &= !(1 << (i % 8));
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
}
