//! The buffer a chunk is received into, checked in and written from:
//! its bytes start on a [`ChunkBuf::ALIGN`] boundary, so a chunk at an
//! aligned offset of the `.part` can be written with direct I/O straight
//! from it (`store::partial::write`), without a copy into the page cache.
//!
//! Owns only the memory; what fills it and what it is written to are the
//! callers'. Allocation and alignment are the `aligned-vec` crate's.

use aligned_vec::{AVec, ConstAlign};

/// Bytes of a chunk, in memory aligned to [`ChunkBuf::ALIGN`].
#[derive(PartialEq, Eq)]
pub struct ChunkBuf(AVec<u8, ConstAlign<{ ChunkBuf::ALIGN }>>);

impl ChunkBuf {
    /// Alignment of the memory: the largest logical block size of the
    /// disks direct I/O is used on (4 KiB sectors).
    pub const ALIGN: usize = 4096;

    /// An empty buffer; allocates nothing.
    pub fn new() -> ChunkBuf {
        ChunkBuf(AVec::new(Self::ALIGN))
    }

    /// An empty buffer with room for `capacity` bytes.
    pub fn with_capacity(capacity: usize) -> ChunkBuf {
        ChunkBuf(AVec::with_capacity(Self::ALIGN, capacity))
    }

    /// Makes it `len` bytes long: bytes added are zeros, the memory is
    /// reused when it has room. (Zeros are copied from a block: the crate's
    /// own `resize` writes one byte at a time.)
    pub fn resize(&mut self, len: usize) {
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        if len <= self.0.len() {
            self.0.truncate(len);
            return;
        }
        self.0.reserve(len - self.0.len());
        while self.0.len() < len {
            let n = (len - self.0.len()).min(ZEROS.len());
            self.0.extend_from_slice(&ZEROS[..n]);
        }
    }

    pub fn capacity(&self) -> usize {
        self.0.capacity()
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }
}

impl Default for ChunkBuf {
    fn default() -> ChunkBuf {
        ChunkBuf::new()
    }
}

impl From<&[u8]> for ChunkBuf {
    fn from(bytes: &[u8]) -> ChunkBuf {
        ChunkBuf(AVec::from_slice(Self::ALIGN, bytes))
    }
}

impl std::ops::Deref for ChunkBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl std::ops::DerefMut for ChunkBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl AsRef<[u8]> for ChunkBuf {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::fmt::Debug for ChunkBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ChunkBuf({} bytes)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_starts_on_the_alignment_and_is_reused() {
        let mut b = ChunkBuf::with_capacity(1 << 20);
        b.resize(1 << 20);
        assert_eq!(b.as_ptr() as usize % ChunkBuf::ALIGN, 0);
        assert!(b.iter().all(|&x| x == 0));
        b[7] = 1;
        let at = b.as_ptr();
        b.resize(1000);
        b.resize(1 << 20);
        assert_eq!(b.as_ptr(), at, "no new allocation within the capacity");
        assert_eq!(
            (b[7], b[1000]),
            (1, 0),
            "kept bytes stay, added ones are zeros"
        );
        let small = ChunkBuf::from(&b"abc"[..]);
        assert_eq!(
            (&*small, small.as_ptr() as usize % ChunkBuf::ALIGN),
            (&b"abc"[..], 0)
        );
    }
}
