//! How a verified chunk's bytes reach the `.part` file: written in pieces
//! of [`WRITE_PIECE`], then the disk is told to start writing them at once
//! (`sync_file_range(SYNC_FILE_RANGE_WRITE)` on Linux), so the file goes to
//! disk while the next chunks arrive rather than in one burst at the next
//! state save or at the end of the download.
//!
//! Owns only the writing; never makes anything durable (that is the
//! `fdatasync` of [`super::Partial::save_state`] and `finish`, which this
//! only makes shorter) and never decides what is verified.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Bytes of one `pwrite` into the `.part` file. A larger write makes the
/// kernel allocate its page cache as large folios (a 1 MiB write: 1 MiB
/// folios), taken from the high-order free blocks that a VM with free page
/// reporting has handed back to the host: every first touch of those pages
/// then faults in the host. Pieces of 64 KiB get small folios from the
/// pages the guest already backs: measured with `dd` into a new file after
/// 1 GiB of page cache was freed, 0.55 s of system time per GiB with 64 KiB
/// writes against 1.6-3.2 s with 1 MiB writes (docs/performance.md).
pub(super) const WRITE_PIECE: usize = 64 << 10;

/// Writes `data` at `offset` of `file` in [`WRITE_PIECE`]s, then starts
/// its writeback ([`start_writeback`]).
pub(super) fn write_chunk_at(file: &File, data: &[u8], offset: u64) -> std::io::Result<()> {
    let mut at = offset;
    for piece in data.chunks(WRITE_PIECE) {
        file.write_all_at(piece, at)?;
        at += piece.len() as u64;
    }
    start_writeback(file, offset, data.len());
    Ok(())
}

/// Asks the kernel to start writing `len` bytes at `offset` of `file` to
/// disk, without waiting for them (and without any durability promise:
/// no metadata, no disk cache flush). Without it, the dirty pages of a
/// fast download wait for the once-a-second `fdatasync` (the kernel's own
/// writeback starts only at a tenth of the memory): about half a GiB then
/// goes to disk at once, and the last part of the file only after the
/// last chunk arrived, while the download waits. Measured writing 1 GiB
/// in 1 MiB chunks and syncing at the end: 0.44 s of writes + 0.66-0.69 s
/// of final `fdatasync`, against 0.58-0.62 s + 0.01 s with this after
/// each chunk, for the same CPU. A failure changes nothing: the sync that
/// makes the chunk durable reports any I/O error.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: usize) {
    use std::os::fd::AsRawFd;
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open for the duration of the call (`file`
    // is borrowed); the call reads no memory of ours.
    let _ = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: usize) {}
