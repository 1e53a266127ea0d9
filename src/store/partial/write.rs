//! How a verified chunk's bytes reach the `.part` file.
//!
//! Where the file system takes direct I/O (ext4, XFS) and the chunk's
//! buffer, offset and length are aligned (a [`ChunkBuf`](crate::store::ChunkBuf)
//! at a chunk boundary, whole 4 KiB blocks), the chunk goes from the buffer
//! to the disk through a second descriptor opened with `O_DIRECT`: no copy
//! into the page cache, and a large download does not push the machine's
//! other cached files out (reading such a chunk back, or serving it to
//! another peer, then reads the disk). Otherwise (a file's last chunk when
//! it is not whole 4 KiB blocks, tmpfs, network file systems, other
//! systems) it is written through the
//! page cache in pieces of [`WRITE_PIECE`], then the disk is told to start
//! writing them at once (`sync_file_range(SYNC_FILE_RANGE_WRITE)` on
//! Linux), so the file goes to disk while the next chunks arrive rather
//! than in one burst at the next state save or at the end of the download.
//!
//! Owns only the writing; never makes anything durable (that is the
//! `fdatasync` of [`super::Partial::save_state`] and `finish`: a direct
//! write may still sit in the disk's cache, and the extents it filled are
//! committed by that sync) and never decides what is verified.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::platform;

/// Bytes of one `pwrite` into the `.part` file. A larger write makes the
/// kernel allocate its page cache as large folios (a 1 MiB write: 1 MiB
/// folios), taken from the high-order free blocks that a VM with free page
/// reporting has handed back to the host: every first touch of those pages
/// then faults in the host. Pieces of 64 KiB get small folios from the
/// pages the guest already backs: measured with `dd` into a new file after
/// 1 GiB of page cache was freed, 0.55 s of system time per GiB with 64 KiB
/// writes against 1.6-3.2 s with 1 MiB writes (docs/performance.md).
pub(super) const WRITE_PIECE: usize = 64 << 10;

/// Alignment of a direct write's memory, offset and length.
const ALIGN: usize = crate::store::ChunkBuf::ALIGN;

/// Writes the chunks of one `.part` file.
pub(super) struct ChunkWriter {
    /// The `.part` opened again with `O_DIRECT`, where the file system
    /// takes it ([`platform::open_direct`]).
    direct: Option<File>,
    /// Cleared when a direct write is refused as invalid (a device with
    /// larger blocks, a file system that takes the flag but not the
    /// write): the file's next chunks go through the page cache.
    direct_works: AtomicBool,
}

impl ChunkWriter {
    pub(super) fn new(file: &File) -> ChunkWriter {
        ChunkWriter {
            direct: platform::open_direct(file),
            direct_works: AtomicBool::new(true),
        }
    }

    /// Writes `data` at `offset` of `file`: directly when it can
    /// ([`ChunkWriter::direct_for`]), else through the page cache.
    pub(super) fn write_at(&self, file: &File, data: &[u8], offset: u64) -> std::io::Result<()> {
        if let Some(direct) = self.direct_for(data, offset) {
            match direct.write_all_at(data, offset) {
                Err(e) if refused_as_invalid(&e) => {
                    if self.direct_works.swap(false, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "a direct write of a download was refused; its chunks go through the page cache from now on");
                    }
                }
                done => return done,
            }
        }
        write_chunk_at(file, data, offset)
    }

    /// The direct descriptor, when there is one that works and `data` at
    /// `offset` is whole aligned blocks from aligned memory.
    fn direct_for(&self, data: &[u8], offset: u64) -> Option<&File> {
        let aligned = offset.is_multiple_of(ALIGN as u64)
            && data.len().is_multiple_of(ALIGN)
            && (data.as_ptr() as usize).is_multiple_of(ALIGN)
            && !data.is_empty();
        let direct = self.direct.as_ref()?;
        (aligned && self.direct_works.load(Ordering::Relaxed)).then_some(direct)
    }

    /// Whether chunks can be written directly (for tests and the log).
    #[cfg(test)]
    pub(super) fn is_direct(&self) -> bool {
        self.direct.is_some() && self.direct_works.load(Ordering::Relaxed)
    }
}

/// Whether a direct write failed only because this file, device or memory
/// does not take it (`EINVAL`): the chunk is then written through the page
/// cache. Any other error (a full disk, an I/O error) is the write's.
fn refused_as_invalid(e: &std::io::Error) -> bool {
    e.kind() == std::io::ErrorKind::InvalidInput
}

/// Writes `data` at `offset` of `file` in [`WRITE_PIECE`]s, then starts
/// its writeback ([`platform::start_writeback`]). Without that, the dirty
/// pages of a fast download wait for the once-a-second `fdatasync` (the
/// kernel's own writeback starts only at a tenth of the memory): about
/// half a GiB then goes to disk at once, and the last part of the file
/// only after the last chunk arrived, while the download waits. Measured
/// writing 1 GiB in 1 MiB chunks and syncing at the end: 0.44 s of writes
/// and 0.66-0.69 s of final `fdatasync`, against 0.58-0.62 s and 0.01 s
/// with it after each chunk, for the same CPU.
fn write_chunk_at(file: &File, data: &[u8], offset: u64) -> std::io::Result<()> {
    let mut at = offset;
    for piece in data.chunks(WRITE_PIECE) {
        file.write_all_at(piece, at)?;
        at += piece.len() as u64;
    }
    platform::start_writeback(file, offset, data.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ChunkBuf;

    const MIB: usize = 1 << 20;

    /// Which of the `len` bytes' pages from `offset` of `file` are in the
    /// page cache (`mincore` over a read-only mapping).
    #[cfg(all(target_os = "linux", not(feature = "portable")))]
    fn cached_pages(file: &File, offset: usize, len: usize) -> Vec<bool> {
        use std::os::fd::AsRawFd;
        let page = 4096;
        let pages = len.div_ceil(page);
        let mut vec = vec![0u8; pages];
        // SAFETY: a fresh read-only shared mapping of a file this test owns
        // (nobody truncates it), unmapped before returning; mincore writes
        // one byte per page into `vec`, which has one per page.
        unsafe {
            let at = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                offset as libc::off_t,
            );
            assert_ne!(at, libc::MAP_FAILED, "mmap");
            assert_eq!(libc::mincore(at, len, vec.as_mut_ptr()), 0, "mincore");
            libc::munmap(at, len);
        }
        vec.iter().map(|b| b & 1 == 1).collect()
    }

    fn part_in(dir: &std::path::Path, len: u64) -> File {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.join("x.part"))
            .unwrap();
        file.set_len(len).unwrap();
        file
    }

    /// On ext4 or XFS (the temporary folder here and in CI), an aligned
    /// chunk goes to disk without entering the page cache; memory that is
    /// not aligned, and the short last chunk, go through it. Every byte
    /// reads back as written either way.
    #[cfg(all(target_os = "linux", not(feature = "portable")))]
    #[test]
    fn aligned_chunks_bypass_the_page_cache_and_the_rest_go_through_it() {
        let dir = tempfile::tempdir().unwrap();
        let tail = 5000;
        let file = part_in(dir.path(), (3 * MIB + tail) as u64);
        let w = ChunkWriter::new(&file);
        if !w.is_direct() {
            let why = "the temporary folder's file system takes no direct writes";
            assert!(
                std::env::var_os("LANSHARE_REQUIRE_NETNS").is_none(),
                "{why}"
            );
            eprintln!("SKIPPED aligned_chunks_bypass_the_page_cache: {why}");
            return;
        }
        let bytes: Vec<u8> = (0..3 * MIB + tail).map(|i| (i * 31 % 251) as u8).collect();
        let aligned = ChunkBuf::from(&bytes[..MIB]);
        // The same kind of chunk from memory one byte off the alignment.
        let mut shifted = vec![0u8; MIB + 1];
        shifted[1..].copy_from_slice(&bytes[MIB..2 * MIB]);
        let unaligned = &shifted[1..];
        w.write_at(&file, &aligned, 0).unwrap();
        w.write_at(&file, unaligned, MIB as u64).unwrap();
        w.write_at(&file, &ChunkBuf::from(&bytes[2 * MIB..]), 2 * MIB as u64)
            .unwrap();

        let direct = cached_pages(&file, 0, MIB);
        let through = cached_pages(&file, MIB, MIB);
        let last = cached_pages(&file, 2 * MIB, MIB + tail);
        assert!(
            direct.iter().all(|c| !c),
            "the aligned chunk went through the page cache"
        );
        assert!(
            through.iter().all(|c| *c),
            "the unaligned chunk was not written through the cache"
        );
        assert!(
            last.iter().all(|c| *c),
            "the short last chunk was not written through the cache"
        );
        assert!(
            w.is_direct(),
            "a chunk that cannot be written directly turned direct writes off"
        );
        let mut back = vec![0u8; bytes.len()];
        file.read_exact_at(&mut back, 0).unwrap();
        assert!(
            back == bytes,
            "the file reads back other bytes than written"
        );
    }

    #[test]
    fn only_an_invalid_direct_write_falls_back_to_the_page_cache() {
        use std::io::{Error, ErrorKind};
        assert!(refused_as_invalid(&Error::from(ErrorKind::InvalidInput)));
        #[cfg(target_os = "linux")]
        assert!(refused_as_invalid(&Error::from_raw_os_error(libc::EINVAL)));
        for not in [
            ErrorKind::StorageFull,
            ErrorKind::QuotaExceeded,
            ErrorKind::Other,
        ] {
            assert!(!refused_as_invalid(&Error::from(not)), "{not:?}");
        }
        #[cfg(target_os = "linux")]
        for errno in [libc::ENOSPC, libc::EIO, libc::EDQUOT] {
            assert!(
                !refused_as_invalid(&Error::from_raw_os_error(errno)),
                "{errno}"
            );
        }
    }

    /// Where direct writes are not known to work (tmpfs), every chunk goes
    /// through the page cache, and reads back as written.
    #[cfg(target_os = "linux")]
    #[test]
    fn tmpfs_takes_every_chunk_through_the_page_cache() {
        let shm = std::path::Path::new("/dev/shm");
        if !shm.is_dir() {
            eprintln!("SKIPPED tmpfs_takes_every_chunk_through_the_page_cache: no /dev/shm");
            return;
        }
        let dir = tempfile::tempdir_in(shm).unwrap();
        let file = part_in(dir.path(), 2 * MIB as u64);
        let w = ChunkWriter::new(&file);
        assert!(!w.is_direct(), "direct writes on tmpfs");
        let chunk = ChunkBuf::from(&[9u8; MIB][..]);
        w.write_at(&file, &chunk, MIB as u64).unwrap();
        let mut back = vec![0u8; MIB];
        file.read_exact_at(&mut back, MIB as u64).unwrap();
        assert!(back == *chunk);
    }
}
