//! A download in progress: the `.part` file in downloads/ (hidden, never
//! indexed), and its state file in `.lanshare/partial/` recording the
//! manifest and which chunks are written, so a stopped fetch resumes.
//!
//! Trust: a chunk is served to peers (and announced in the inventory) only
//! once this process has checked it against the manifest, either in memory
//! before writing it ([`Partial::write_chunk`]) or by reading it back from
//! disk after a restart ([`Partial::verify_resumed`]). The resume state is
//! only a hint of what to re-check: it may be stale, edited, or name data
//! that never reached the disk.
//!
//! Durability order ([`Partial::save_state`]): the `.part` data is synced
//! first, then the state naming those chunks is written atomically (a
//! synced temporary file renamed over the old state, the folder synced).
//! A crash, a SIGKILL or a power cut alone never leaves a state naming
//! data that is not on disk; a failed sync makes the chunks written since
//! the last good save count as missing again. Writes are not synced one
//! by one: the download saves the state about once a second, off the
//! writers' threads. A chunk write that finds the disk full is remembered
//! ([`Partial::disk_full`]) so the download can pause.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Home, StoreError, io_err, safe_file_name};

mod quiet;
mod write;
use crate::chunkset::Bitmap;
use crate::id::ContentId;
use crate::manifest::Manifest;

/// How often a download saves its state while chunks arrive (the data
/// is synced then, in one batch).
pub const STATE_SAVE_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Serialize, Deserialize)]
struct StateFile {
    name: String,
    manifest: Manifest,
    have: Bitmap,
}

struct HaveState {
    /// Chunks on disk: verified by this process, or named by the resume
    /// state and not (yet) found bad. What the downloader skips.
    have: Bitmap,
    /// Chunks checked against the manifest by this process: the only ones
    /// served and announced. Always a subset of `have`.
    verified: Bitmap,
    /// What the state file on disk names (synced data only).
    saved: Bitmap,
    last_save: Instant,
    dirty: bool,
}

/// A chunk write found the file system full.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskFull {
    /// The chunk that could not be written.
    pub chunk: u32,
    pub error: String,
}

/// Most attempts at a free name in downloads/ before giving up.
pub(super) const MAX_NAME_ATTEMPTS: u32 = 10_000;

/// Opens a lanshare-owned file without following a symlink at `path`.
fn open_nofollow(opts: &mut OpenOptions, path: &Path) -> std::io::Result<File> {
    crate::platform::open_nofollow(opts, path)
}

/// The .part path must be a plain file of ours: a symlink, a hard link or
/// a folder planted there (e.g. to a file outside the home) is removed,
/// never written through. Returns whether a plain file of ours was there.
fn clear_foreign(part_path: &Path) -> Result<bool, StoreError> {
    match std::fs::symlink_metadata(part_path) {
        Ok(m) if m.file_type().is_file() && m.nlink() == 1 => Ok(true),
        Ok(m) => {
            tracing::warn!(path = %part_path.display(), "partial file is not a plain file of ours (a symlink or link?); replacing it");
            if m.is_dir() {
                std::fs::remove_dir(part_path)
            } else {
                std::fs::remove_file(part_path)
            }
            .map_err(io_err("cannot replace", part_path))?;
            Ok(false)
        }
        Err(_) => Ok(false),
    }
}

/// Opens (or creates, mode 0600) the .part file without following a
/// symlink; a link swapped in after [`clear_foreign`] is refused.
fn open_part(part_path: &Path) -> Result<File, StoreError> {
    let file = open_nofollow(
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600),
        part_path,
    )
    .map_err(io_err("cannot create partial file", part_path))?;
    let meta = file
        .metadata()
        .map_err(io_err("cannot stat partial file", part_path))?;
    if !meta.is_file() || meta.nlink() != 1 {
        return Err(StoreError::Io {
            what: "refusing to write a partial file that is linked elsewhere:",
            path: part_path.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        });
    }
    Ok(file)
}

/// The chunks a resume state for `manifest` names, if it is readable and
/// for this manifest: only a hint of what to re-check.
fn resume_state(state_path: &Path, manifest: &Manifest) -> Option<Bitmap> {
    let bytes = read_nofollow(state_path).ok()?;
    let state = postcard::from_bytes::<StateFile>(&bytes).ok()?;
    let empty = Bitmap::new(manifest.chunk_count());
    if state.manifest != *manifest || state.have.as_bytes().len() != empty.as_bytes().len() {
        return None;
    }
    let mut have = state.have;
    // Bits past the last chunk mean nothing.
    for i in manifest.chunk_count()..have.capacity() {
        have.clear(i);
    }
    tracing::info!(id = %manifest.content_id().short(), chunks = have.count_ones(), "resuming partial download; re-checking its chunks before serving them");
    Some(have)
}

/// The chunks a resume state file names (what a restart would re-check),
/// or `None` when the file is missing or unreadable. For diagnostics and
/// tests: nothing here is trusted for serving.
pub fn saved_chunks(state_path: &Path) -> Option<Vec<u32>> {
    let bytes = read_nofollow(state_path).ok()?;
    let state = postcard::from_bytes::<StateFile>(&bytes).ok()?;
    let n = state.manifest.chunk_count();
    Some((0..n).filter(|&i| state.have.get(i)).collect())
}

pub struct Partial {
    pub id: ContentId,
    pub manifest: Arc<Manifest>,
    /// Name the file gets in downloads/ (already made safe).
    pub name: String,
    /// The path it is offered at while it downloads, when not `name`: a
    /// file of a folder download, at its path in the folder.
    offered: Mutex<Option<String>>,
    part_path: PathBuf,
    state_path: PathBuf,
    file: Arc<File>,
    writer: write::ChunkWriter,
    /// Verified chunks. Std mutex: held only for bit operations.
    state: Mutex<HaveState>,
    /// Set when a chunk write finds the disk full; the download pauses.
    full: Mutex<Option<DiskFull>>,
    /// Wakes the download when `full` is set.
    full_notify: tokio::sync::Notify,
    /// One save at a time (the periodic saver and the end of a download).
    saving: Mutex<()>,
}

impl Partial {
    pub(super) fn open(
        home: &Home,
        manifest: Arc<Manifest>,
        name: &str,
    ) -> Result<Partial, StoreError> {
        let id = manifest.content_id();
        let name = safe_file_name(name);
        let (part_path, state_path) = paths(home, &id);
        let part_existed = clear_foreign(&part_path)?;
        let file = open_part(&part_path)?;
        // Its writes reported to the private folder, not to downloads/.
        let stem = &id.to_hex()[..24];
        let file = quiet::reopen(&file, &part_path, &home.partial_dir(), stem).unwrap_or(file);
        file.set_len(manifest.size)
            .map_err(io_err("cannot size partial file", &part_path))?;
        let have = if part_existed {
            resume_state(&state_path, &manifest)
        } else {
            None
        };
        let have = have.unwrap_or_else(|| Bitmap::new(manifest.chunk_count()));
        let verified = Bitmap::new(manifest.chunk_count());
        let manifest_chunks = manifest.chunk_count();
        let p = Partial {
            id,
            manifest,
            name,
            offered: Mutex::new(None),
            part_path,
            state_path,
            writer: write::ChunkWriter::new(&file),
            file: Arc::new(file),
            state: Mutex::new(HaveState {
                have,
                verified,
                saved: Bitmap::new(manifest_chunks),
                last_save: Instant::now(),
                dirty: true,
            }),
            full: Mutex::new(None),
            full_notify: tokio::sync::Notify::new(),
            saving: Mutex::new(()),
        };
        p.save_state()?;
        Ok(p)
    }

    /// Offers the download at `path` (an inventory name) rather than its
    /// file name.
    pub fn offer_at(&self, path: String) {
        *self.offered.lock().expect("offered lock") = Some(path);
    }

    /// The name the download is offered under in the inventory.
    pub fn offered_name(&self) -> String {
        let offered = self.offered.lock().expect("offered lock");
        offered.clone().unwrap_or_else(|| self.name.clone())
    }

    /// Whether chunk `index` was checked against the manifest by this
    /// process: the only chunks that may be served.
    pub fn has(&self, index: u32) -> bool {
        self.state.lock().expect("partial lock").verified.get(index)
    }

    /// Chunks on disk, including ones named by the resume state that are
    /// not re-checked yet (the downloader re-checks those itself before
    /// using them). Never serve from this; see [`Partial::servable`].
    pub fn have(&self) -> Bitmap {
        self.state.lock().expect("partial lock").have.clone()
    }

    /// Chunks checked by this process: what the inventory announces.
    pub fn servable(&self) -> Bitmap {
        self.state.lock().expect("partial lock").verified.clone()
    }

    pub fn verified_count(&self) -> u32 {
        self.state
            .lock()
            .expect("partial lock")
            .verified
            .count_ones()
    }

    /// Chunks named by the resume state and not re-checked yet.
    pub fn unverified(&self) -> Vec<u32> {
        let s = self.state.lock().expect("partial lock");
        (0..self.manifest.chunk_count())
            .filter(|&i| s.have.get(i) && !s.verified.get(i))
            .collect()
    }

    /// Writes a chunk that has already been verified against the manifest.
    /// The data is synced with the next [`Partial::save_state`]. A write
    /// that finds the disk full is remembered ([`Partial::disk_full`]).
    pub fn write_chunk(&self, index: u32, data: &[u8]) -> Result<(), StoreError> {
        if let Err(e) = self
            .writer
            .write_at(&self.file, data, self.manifest.chunk_offset(index))
        {
            if super::durable::is_disk_full(&e) {
                let mut full = self.full.lock().expect("full lock");
                if full.is_none() {
                    *full = Some(DiskFull {
                        chunk: index,
                        error: e.to_string(),
                    });
                    self.full_notify.notify_waiters();
                }
            }
            return Err(io_err("cannot write", &self.part_path)(e));
        }
        let mut s = self.state.lock().expect("partial lock");
        s.have.set(index);
        s.verified.set(index);
        s.dirty = true;
        Ok(())
    }

    /// Whether the last save is older than [`STATE_SAVE_INTERVAL`] and
    /// chunks arrived since.
    pub fn save_due(&self) -> bool {
        let s = self.state.lock().expect("partial lock");
        s.dirty && s.last_save.elapsed() >= STATE_SAVE_INTERVAL
    }

    /// The disk-full report of a chunk write, if one found the disk full
    /// since [`Partial::clear_disk_full`].
    pub fn disk_full(&self) -> Option<DiskFull> {
        self.full.lock().expect("full lock").clone()
    }

    /// Forgets the disk-full report (the download resumes).
    pub fn clear_disk_full(&self) {
        *self.full.lock().expect("full lock") = None;
    }

    /// Waits until a chunk write finds the disk full.
    pub async fn disk_filled(&self) {
        loop {
            let notified = self.full_notify.notified();
            if self.disk_full().is_some() {
                return;
            }
            notified.await;
        }
    }

    /// Bytes the file still needs on disk: its size less what is
    /// allocated to the `.part` file already.
    pub fn bytes_to_allocate(&self) -> u64 {
        let on_disk = self
            .file
            .metadata()
            .map_or(0, |m| crate::platform::allocated_bytes(&m));
        self.manifest.size.saturating_sub(on_disk)
    }

    /// Forgets a chunk (it failed the final check).
    pub fn mark_missing(&self, index: u32) {
        let mut s = self.state.lock().expect("partial lock");
        s.have.clear(index);
        s.verified.clear(index);
        s.dirty = true;
    }

    /// Reads back chunk `index` (named by the resume state) and checks it
    /// against the manifest: a match makes it servable, a mismatch marks it
    /// missing so it is fetched again. Blocking (one chunk read and hash).
    /// Returns whether the chunk is good.
    pub fn verify_resumed_chunk(&self, index: u32, buf: &mut Vec<u8>) -> bool {
        if index >= self.manifest.chunk_count() {
            return false;
        }
        {
            let s = self.state.lock().expect("partial lock");
            if s.verified.get(index) || !s.have.get(index) {
                return s.verified.get(index);
            }
        }
        buf.resize(self.manifest.chunk_len(index) as usize, 0);
        let ok = self
            .file
            .read_exact_at(buf, self.manifest.chunk_offset(index))
            .is_ok()
            && self.manifest.chunk_matches(index, buf);
        let mut s = self.state.lock().expect("partial lock");
        if s.verified.get(index) {
            // Written (verified) meanwhile: that copy is the good one.
            return true;
        }
        if ok {
            s.verified.set(index);
        } else if s.have.get(index) {
            tracing::warn!(id = %self.id.short(), chunk = index, "resumed chunk fails its hash on disk; fetching it again");
            s.have.clear(index);
            s.dirty = true;
        }
        ok
    }

    /// Re-checks every chunk the resume state named (blocking: run it on a
    /// blocking thread). Stops early when the partial is dropped.
    pub fn verify_resumed(this: Weak<Partial>) {
        let Some(p) = this.upgrade() else { return };
        let todo = p.unverified();
        drop(p);
        if todo.is_empty() {
            return;
        }
        let started = Instant::now();
        let (mut good, mut bad) = (0u32, 0u32);
        let mut buf = Vec::new();
        for index in todo {
            let Some(p) = this.upgrade() else { return };
            if p.verify_resumed_chunk(index, &mut buf) {
                good += 1;
            } else {
                bad += 1;
            }
        }
        if let Some(p) = this.upgrade() {
            tracing::info!(id = %p.id.short(), good, bad, elapsed = ?started.elapsed(), "re-checked resumed chunks");
            if bad > 0
                && let Err(e) = p.save_state()
            {
                tracing::warn!(error = %e, "cannot record the re-checked chunks");
            }
        }
    }

    /// The partial file, for serving verified chunks without a copy.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(io_err("cannot read", &self.part_path))
    }

    /// Writes the state file if anything changed since the last write.
    /// The chunks it names are synced to disk first, so a crash never
    /// leaves a state naming data that was not written. When the sync
    /// fails, the chunks written since the last good save count as
    /// missing again (the kernel may have dropped them).
    pub fn save_state(&self) -> Result<(), StoreError> {
        let _one = self.saving.lock().expect("saving lock");
        let (have, bytes) = {
            let mut s = self.state.lock().expect("partial lock");
            if !s.dirty {
                return Ok(());
            }
            s.dirty = false;
            s.last_save = Instant::now();
            let bytes = postcard::to_allocvec(&StateFile {
                name: self.name.clone(),
                manifest: (*self.manifest).clone(),
                have: s.have.clone(),
            })
            .expect("serializable");
            (s.have.clone(), bytes)
        };
        // Every chunk in `have` was written before its bit was set, so
        // this makes all of them durable before the state names them.
        if let Err(e) = self.file.sync_data() {
            self.forget_unsynced(&have);
            return Err(io_err("cannot flush", &self.part_path)(e));
        }
        if let Err(e) = super::durable::write_atomic(&self.state_path, &bytes) {
            // The old state stays; it names only synced chunks.
            self.state.lock().expect("partial lock").dirty = true;
            return Err(io_err("cannot write", &self.state_path)(e));
        }
        self.state.lock().expect("partial lock").saved = have;
        Ok(())
    }

    /// After a failed sync: the chunks in `attempted` that the last good
    /// save did not name may be lost; fetch them again.
    fn forget_unsynced(&self, attempted: &Bitmap) {
        let mut s = self.state.lock().expect("partial lock");
        let mut lost = 0u32;
        for i in 0..self.manifest.chunk_count() {
            if attempted.get(i) && !s.saved.get(i) {
                s.have.clear(i);
                s.verified.clear(i);
                lost += 1;
            }
        }
        s.dirty = true;
        tracing::warn!(id = %self.id.short(), chunks = lost, "the partial file could not be synced; fetching its newest chunks again");
    }

    /// Deletes the partial file and state of `id` when no download has
    /// them open (a download the user cancelled while it was stopped).
    pub(super) fn discard_files(home: &Home, id: &ContentId) {
        let (part, state) = paths(home, id);
        let _ = std::fs::remove_file(part);
        let _ = std::fs::remove_file(state);
    }

    /// Deletes the partial file and its state (its content can never
    /// verify, or the user cancelled the download).
    pub fn discard(&self) {
        let _ = std::fs::remove_file(&self.part_path);
        let _ = std::fs::remove_file(&self.state_path);
    }

    /// Flushes the data and links it into `dir` under the first free name
    /// (`name`, `name (1)`, ... see [`candidate_names`]); an existing file
    /// is never replaced. Ends after at most [`MAX_NAME_ATTEMPTS`] tries.
    pub(super) fn finish(&self, dir: &Path) -> Result<PathBuf, StoreError> {
        self.file
            .sync_all()
            .map_err(io_err("cannot flush", &self.part_path))?;
        for candidate in candidate_names(&self.name) {
            let target = dir.join(candidate);
            match std::fs::hard_link(&self.part_path, &target) {
                Ok(()) => {
                    let _ = std::fs::remove_file(&self.part_path);
                    let _ = std::fs::remove_file(&self.state_path);
                    return Ok(target);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(StoreError::Io {
                        what: "cannot move download into place at",
                        path: target,
                        source: e,
                    });
                }
            }
        }
        Err(StoreError::Io {
            what: "no free file name in",
            path: dir.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        })
    }
}

/// Where the partial file of `id` and its state file are.
fn paths(home: &Home, id: &ContentId) -> (PathBuf, PathBuf) {
    let hex = id.to_hex();
    (
        home.downloads()
            .join(format!(".lanshare-{}.part", &hex[..24])),
        home.partial_dir().join(format!("{hex}.state")),
    )
}

fn read_nofollow(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut f = open_nofollow(OpenOptions::new().read(true), path)?;
    let mut out = Vec::new();
    std::io::Read::read_to_end(&mut f, &mut out)?;
    Ok(out)
}

/// The longest prefix of `s` of at most `max` bytes, cut at a character
/// boundary.
fn prefix(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The names tried, in order, when saving a download called `name` (a name
/// already made safe by `safe_file_name`): `name`, then `stem (1).ext`,
/// `stem (2).ext`, ... up to [`MAX_NAME_ATTEMPTS`] names in all. Each is at
/// most `MAX_FILE_NAME` bytes, cut at character boundaries: the stem is
/// shortened to make room for the counter; an "extension" so long that no
/// stem would fit beside it is treated as part of the stem and shortened
/// with it. Every name starts with `name`'s first character; the counter
/// makes the names after the first distinct from each other.
pub(super) fn candidate_names(name: &str) -> impl Iterator<Item = String> + '_ {
    const MAX: usize = crate::wire::MAX_FILE_NAME;
    let name = prefix(name, MAX);
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, _)) if !s.is_empty() => (s, &name[s.len()..]),
        _ => (name, ""),
    };
    (0..MAX_NAME_ATTEMPTS).map(move |n| {
        if n == 0 {
            return name.to_string();
        }
        let counter = format!(" ({n})");
        // At most 13 bytes (" (4294967295)"), so room is always left.
        let room = MAX - counter.len();
        let first = stem.chars().next().map_or(1, char::len_utf8);
        if first + ext.len() <= room {
            let stem = prefix(stem, room - ext.len());
            format!("{stem}{counter}{ext}")
        } else {
            // The "extension" leaves no room for a stem: shorten the whole.
            format!("{}{counter}", prefix(name, room))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::manifest_of;
    use crate::wire::MAX_FILE_NAME;
    use proptest::prelude::*;

    fn valid_component(s: &str) -> bool {
        let p = Path::new(s);
        !s.is_empty()
            && s.len() <= MAX_FILE_NAME
            && !s.contains('/')
            && !s.contains('\0')
            && p.components().count() == 1
            && matches!(p.components().next(), Some(std::path::Component::Normal(_)))
    }

    /// Names as `Partial::open` keeps them: made safe, so at most 255 bytes.
    fn any_name() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,300}",
            // A long "extension" that leaves no room for a counter.
            ("\\PC{0,8}", "\\PC{200,300}").prop_map(|(a, b)| format!("{a}.{b}")),
            // Multi-byte characters right where names get cut.
            ("[a-zé😀]{1,4}", "[é😀b]{60,130}").prop_map(|(a, b)| format!("{a}.{b}")),
            (1usize..255).prop_map(|n| format!("a.{}", "b".repeat(n))),
        ]
        .prop_map(|n| super::super::safe_file_name(&n))
    }

    #[test]
    fn the_reported_name_gets_a_shorter_free_name() {
        let name = format!("a.{}", "b".repeat(253));
        let c: Vec<String> = candidate_names(&name).take(3).collect();
        assert_eq!(c[0], name);
        for n in &c[1..] {
            assert!(n.len() <= MAX_FILE_NAME && n.starts_with("a.b"), "{n}");
        }
        assert!(c[1].ends_with(" (1)") && c[2].ends_with(" (2)"));
        // An ordinary name keeps its extension.
        let c: Vec<String> = candidate_names("photo.png").take(2).collect();
        assert_eq!(c, ["photo.png", "photo (1).png"]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Every candidate is a valid name of at most 255 bytes, there are
        /// finitely many, and they differ (so each try can succeed; only the
        /// first may come back, e.g. for a 255-byte `x (1).png`).
        #[test]
        fn candidates_are_valid_distinct_and_bounded(name in any_name()) {
            let mut seen = std::collections::HashSet::new();
            let mut count = 0;
            for c in candidate_names(&name) {
                prop_assert!(valid_component(&c), "{:?} from {:?}", c, name);
                seen.insert(c);
                count += 1;
            }
            prop_assert_eq!(count, MAX_NAME_ATTEMPTS as usize);
            prop_assert!(seen.len() >= MAX_NAME_ATTEMPTS as usize - 1);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Whatever the name and however many of its candidates already
        /// exist in downloads/, `finish` ends, never replaces a file, and
        /// lands under a name of at most 255 bytes.
        #[test]
        fn finish_always_ends_under_a_free_name(name in any_name(), taken in 0usize..40) {
            let dir = tempfile::tempdir().unwrap();
            let home = Home::new(dir.path());
            home.create_dirs().unwrap();
            let data = b"downloaded bytes";
            let manifest = Arc::new(manifest_of(data, 1 << 20));
            let mut existing = Vec::new();
            for c in candidate_names(&name).take(taken) {
                let path = home.downloads().join(&c);
                std::fs::write(&path, b"already here").unwrap();
                existing.push(path);
            }
            let p = Partial::open(&home, manifest, &name).unwrap();
            p.write_chunk(0, data).unwrap();
            let target = p.finish(&home.downloads()).unwrap();
            let file_name = target.file_name().unwrap().to_str().unwrap();
            prop_assert!(valid_component(file_name));
            prop_assert!(!existing.contains(&target));
            prop_assert_eq!(std::fs::read(&target).unwrap(), data);
            for e in &existing {
                prop_assert_eq!(std::fs::read(e).unwrap(), b"already here");
            }
        }
    }

    fn open_with(home: &Home, data: &[u8]) -> (Arc<Manifest>, Partial) {
        let manifest = Arc::new(manifest_of(data, 1024));
        let p = Partial::open(home, manifest.clone(), "f.bin").unwrap();
        (manifest, p)
    }

    /// Resumed chunks are served only after they are read back and match;
    /// a corrupted one is marked missing, and a state claiming chunks never
    /// written claims nothing.
    #[test]
    fn resumed_chunks_are_served_only_once_rechecked() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        home.create_dirs().unwrap();
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
        let (manifest, p) = open_with(&home, &data);
        for i in 0..3 {
            let r = manifest.chunk_offset(i) as usize..(manifest.chunk_offset(i) + 1024) as usize;
            p.write_chunk(i, &data[r]).unwrap();
        }
        assert!(p.has(0) && p.has(2) && !p.has(3));
        p.save_state().unwrap();
        drop(p);
        // Corrupt chunk 1 on disk, and claim chunk 3 in the state.
        let part = std::fs::read_dir(home.downloads())
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".part"))
            .unwrap()
            .path();
        let f = OpenOptions::new().write(true).open(&part).unwrap();
        f.write_all_at(&[0u8; 100], 1024 + 10).unwrap();
        let state_path = home
            .partial_dir()
            .join(format!("{}.state", manifest.content_id().to_hex()));
        let mut st: StateFile = postcard::from_bytes(&std::fs::read(&state_path).unwrap()).unwrap();
        st.have.set(3);
        std::fs::write(&state_path, postcard::to_allocvec(&st).unwrap()).unwrap();

        let (_, p) = open_with(&home, &data);
        assert_eq!(p.unverified(), [0, 1, 2, 3]);
        assert_eq!(
            p.servable().count_ones(),
            0,
            "nothing served before the re-check"
        );
        assert!((0..4).all(|i| !p.has(i)));
        let p = Arc::new(p);
        Partial::verify_resumed(Arc::downgrade(&p));
        assert!(p.has(0) && p.has(2));
        assert!(!p.has(1) && !p.has(3), "bad chunks are never servable");
        assert!(
            !p.have().get(1) && !p.have().get(3),
            "bad chunks are fetched again"
        );
        let st: StateFile = postcard::from_bytes(&std::fs::read(&state_path).unwrap()).unwrap();
        assert!(
            !st.have.get(1) && !st.have.get(3),
            "the state forgets them too"
        );
    }

    /// A symlink planted at the .part path (or the state's temporary
    /// path) is replaced, never written through.
    #[test]
    fn planted_symlinks_are_never_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("home"));
        home.create_dirs().unwrap();
        let outside = dir.path().join("victim");
        std::fs::write(&outside, b"precious").unwrap();
        let data = vec![9u8; 3000];
        let manifest = Arc::new(manifest_of(&data, 1024));
        let hex = manifest.content_id().to_hex();
        let part = home
            .downloads()
            .join(format!(".lanshare-{}.part", &hex[..24]));
        std::os::unix::fs::symlink(&outside, &part).unwrap();
        let tmp = home.partial_dir().join(format!("{hex}.state.tmp"));
        std::os::unix::fs::symlink(&outside, &tmp).unwrap();
        let state = home.partial_dir().join(format!("{hex}.state"));
        std::os::unix::fs::symlink(&outside, &state).unwrap();
        let p = Partial::open(&home, manifest.clone(), "x.bin").unwrap();
        p.write_chunk(0, &data[..1024]).unwrap();
        p.save_state().unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
        assert!(
            !std::fs::symlink_metadata(&part)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(
            !std::fs::symlink_metadata(&state)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        drop(p);
        // A hard link to an outside file is replaced too.
        std::fs::remove_file(&part).unwrap();
        std::fs::hard_link(&outside, &part).unwrap();
        let p = Partial::open(&home, manifest, "x.bin").unwrap();
        p.write_chunk(1, &data[1024..2048]).unwrap();
        assert_eq!(std::fs::read(&outside).unwrap(), b"precious");
        assert_eq!(p.have().count_ones(), 1, "no resume from a replaced file");
    }
}
