//! The only code that touches content files: the home layout, the index of
//! shared files (with its cache), chunk reads for the uploader, partial
//! downloads and their final rename. Network input reaches the filesystem
//! only through [`safe_file_name`] and content ids, never as a path.

mod chunk_buf;
pub mod durable;
mod folder;
mod home;
mod index;
pub mod jobs;
mod partial;
mod walk;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

pub use chunk_buf::ChunkBuf;
pub use folder::{InPlace, Landing, Placement, local_component};
pub use home::{Home, safe_file_name};
pub use index::{LocalContent, RootNaming, ShareRoot, SharesFile};
pub use jobs::{FolderJobRecord, Job, Jobs, Recorded};
pub use partial::{DiskFull, Partial, STATE_SAVE_INTERVAL, saved_chunks};

use crate::chunkset::ChunkSet;
use crate::id::ContentId;
use crate::inventory::{Digest, Inventory, InventoryBuilder, Plan, Publisher};
use crate::manifest::{Category, Manifest};
use crate::wire::{InventoryEntry, MAX_COMMENT, MAX_FILE_NAME, clean_text};

/// Comments keep their line breaks; other control characters go.
fn clean_comment(s: &str) -> String {
    let lines: Vec<String> = s.split('\n').map(|l| clean_text(l, MAX_COMMENT)).collect();
    let mut out = lines.join("\n");
    while out.len() > MAX_COMMENT {
        out.pop();
    }
    out
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("content {0} is not held by this node")]
    NotFound(ContentId),
    #[error("chunk {index} of {id} is not held (yet)")]
    NoChunk { id: ContentId, index: u32 },
    #[error("chunk {index} is out of range for {id}")]
    BadIndex { id: ContentId, index: u32 },
    #[error("{path} changed on disk since it was indexed; it will be re-indexed")]
    Changed { path: PathBuf },
}

pub(crate) fn io_err<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |source| StoreError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Where a held chunk comes from.
#[derive(Clone)]
pub enum Source {
    Complete(Arc<LocalContent>),
    Partial(Arc<Partial>),
}

impl Source {
    pub fn manifest(&self) -> &Manifest {
        match self {
            Source::Complete(c) => &c.manifest,
            Source::Partial(p) => &p.manifest,
        }
    }
    pub fn id(&self) -> ContentId {
        match self {
            Source::Complete(c) => c.id,
            Source::Partial(p) => p.id,
        }
    }
    pub fn name(&self) -> &str {
        match self {
            Source::Complete(c) => c.name(),
            Source::Partial(p) => &p.name,
        }
    }
}

/// A servable chunk: a byte range of an open file.
pub struct ChunkRef {
    pub file: Arc<std::fs::File>,
    pub offset: u64,
    pub len: usize,
}

/// The node's content store. Cheap to share behind an `Arc`.
pub struct Store {
    home: Home,
    /// Extra roots given with `up --share` (not persisted).
    cli_roots: Vec<PathBuf>,
    /// Index state; a std mutex because it is never held across an await:
    /// scans compute off-lock and swap results in.
    index: Mutex<index::IndexState>,
    partials: Mutex<HashMap<ContentId, Arc<Partial>>>,
    /// The published inventory and its change log.
    published: Publisher,
    /// How long the last walk of the shared folders took (ns).
    walk_nanos: std::sync::atomic::AtomicU64,
    /// The last scan left files still being written for later.
    unsettled: std::sync::atomic::AtomicBool,
    /// Follow symlinks in a shared folder that lead out of it (`up
    /// --follow-symlinks`); by default only those staying inside are.
    follow_symlinks: std::sync::atomic::AtomicBool,
    /// The file being hashed now, for the web UI's "my shares".
    hashing: Mutex<Option<Hashing>>,
    /// Downloads to go on with after a restart (`.lanshare/downloads.json`).
    jobs: Jobs,
}

/// A file being hashed (indexed) before it is shared.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Hashing {
    pub path: String,
    pub size: u64,
    pub done: u64,
    /// Files waiting to be hashed after this one.
    pub queued: usize,
}

/// A large file must be unmodified this long before it is hashed.
pub const SETTLE: Duration = Duration::from_millis(300);
/// Files from this size on wait to settle before they are hashed.
pub const SETTLE_MIN_SIZE: u64 = 8 << 20;

impl Store {
    /// Opens the store, loading the index cache (a missing or unreadable
    /// cache just means files are hashed again).
    pub fn open(home: Home, cli_roots: Vec<PathBuf>) -> Result<Arc<Store>, StoreError> {
        home.create_dirs()
            .map_err(io_err("cannot create", &home.root))?;
        let index = index::IndexState::load(&home.index_cache());
        let jobs = Jobs::load(&home.state_dir().join("downloads.json"));
        let store = Arc::new(Store {
            home,
            cli_roots,
            index: Mutex::new(index),
            partials: Mutex::new(HashMap::new()),
            published: Publisher::default(),
            walk_nanos: Default::default(),
            unsettled: Default::default(),
            follow_symlinks: Default::default(),
            hashing: Default::default(),
            jobs,
        });
        Ok(store)
    }

    /// Whether symlinks in a shared folder that lead out of it are followed
    /// (off by default: an unpacked archive can hold links to anywhere).
    /// Takes effect at the next scan.
    pub fn set_follow_symlinks(&self, follow: bool) {
        self.follow_symlinks
            .store(follow, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn home(&self) -> &Home {
        &self.home
    }

    /// Notified whenever the inventory changes.
    pub fn subscribe(&self) -> watch::Receiver<Inventory> {
        self.published.subscribe()
    }

    pub fn inventory(&self) -> Inventory {
        self.published.current()
    }

    /// The folders and files scanned (for file-system watches).
    pub fn root_paths(&self) -> Vec<PathBuf> {
        self.roots().into_iter().map(|r| r.path).collect()
    }

    /// The roots scanned: shared/, downloads/, `--share` paths and the
    /// paths added with `lanshare share`.
    fn roots(&self) -> Vec<ShareRoot> {
        let mut roots = vec![
            ShareRoot::home_folder(self.home.shared()),
            ShareRoot::home_folder(self.home.downloads()),
        ];
        roots.extend(self.cli_roots.iter().cloned().map(ShareRoot::plain));
        roots.extend(SharesFile::load(&self.home.shares_file()).entries);
        roots
    }

    /// Walks every root, hashes new or changed files (blocking; run it on a
    /// blocking thread), drops removed ones, and republishes the inventory
    /// when anything changed. Returns whether it did.
    pub fn rescan_blocking(&self) -> bool {
        let roots = self.roots();
        let walk_started = std::time::Instant::now();
        let found = index::walk(
            &roots,
            self.follow_symlinks
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        let (mut changed, to_hash) = self.index.lock().expect("index lock").apply_walk(found);
        self.walk_nanos.store(
            walk_started.elapsed().as_nanos().min(u64::MAX as u128) as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        // Offer what is already known at once; new files follow as they are
        // hashed, at most once a second.
        if changed {
            self.publish();
        }
        // A large file modified in the last moments is probably still
        // being written (a copy in progress): hash it once it has settled,
        // rather than again and again. Small ones cost nothing to redo.
        let (to_hash, unsettled) = split_settled(to_hash, SystemTime::now());
        self.unsettled
            .store(!unsettled.is_empty(), std::sync::atomic::Ordering::Relaxed);
        changed |= self.hash_and_file(to_hash);
        *self.hashing.lock().expect("hashing lock") = None;
        if changed {
            // Offer the result before writing the cache, which takes a
            // while for a huge share.
            self.publish();
            let idx = self.index.lock().expect("index lock");
            if let Err(e) = idx.save(&self.home.index_cache()) {
                tracing::warn!(error = %e, "cannot write the index cache; files will be hashed again next start");
            }
        }
        changed
    }

    /// Hashes `to_hash` in order and files each into the index,
    /// publishing at most once a second; whether any was filed. The list
    /// is taken from its end and shrunk before each publish, so the files
    /// already filed are not held twice.
    fn hash_and_file(&self, mut to_hash: Vec<index::FoundFile>) -> bool {
        let mut changed = false;
        let mut last_publish = std::time::Instant::now();
        to_hash.reverse();
        while let Some(file) = to_hash.pop() {
            let started = std::time::Instant::now();
            let (path, size) = (file.path.display().to_string(), file.size);
            let left = to_hash.len();
            let hashing = |done| {
                Some(Hashing {
                    path: path.clone(),
                    size,
                    done,
                    queued: left,
                })
            };
            *self.hashing.lock().expect("hashing lock") = hashing(0);
            if file.size >= 256 << 20 {
                tracing::info!(path = %file.path.display(), bytes = file.size, "indexing a large file");
            }
            let progress = |done| *self.hashing.lock().expect("hashing lock") = hashing(done);
            match crate::manifest::hash_file(&file.path, progress) {
                Ok(manifest) => {
                    tracing::debug!(path = %file.path.display(), bytes = manifest.size, elapsed = ?started.elapsed(), "indexed");
                    // The file may have changed while we read it; then the
                    // next scan sees a new mtime and hashes it again.
                    self.index
                        .lock()
                        .expect("index lock")
                        .insert(file, manifest);
                    changed = true;
                    if last_publish.elapsed() >= Duration::from_secs(1) {
                        to_hash.shrink_to_fit();
                        self.publish();
                        last_publish = std::time::Instant::now();
                    }
                }
                Err(e) => {
                    tracing::warn!(path = %file.path.display(), error = %e, "cannot index file; skipping it")
                }
            }
        }
        changed
    }

    /// Rebuilds the published inventory from the index and partial downloads.
    /// Encoded entry by entry in order of id (no list of entries is
    /// made: the contents are sorted as pointers); where an id comes
    /// twice, the first wins (a complete file, then an empty folder, then
    /// a partial download).
    pub fn publish(&self) {
        // The few entries that are not complete files, ranked.
        let mut extra: Vec<(u8, InventoryEntry)> = Vec::new();
        for p in self.partials.lock().expect("partials lock").values() {
            // Only chunks this process checked: never ones a resume state
            // merely claims.
            let have = p.servable();
            if have.count_ones() == 0 {
                continue;
            }
            let name = p.offered_name();
            let e = InventoryEntry {
                id: p.id,
                category: Category::from_name(crate::resolve::file_name(&name)),
                name,
                more_paths: Default::default(),
                size: p.manifest.size,
                comment: String::new(),
                chunks: ChunkSet::Partial(have),
            };
            extra.push((2, e));
        }
        let index = self.index.lock().expect("index lock");
        extra.extend(index.folder_entries().map(|e| (1, e)));
        extra.sort_unstable_by(|(ra, a), (rb, b)| a.id.cmp(&b.id).then(ra.cmp(rb)));
        extra.dedup_by_key(|(_, e)| e.id);
        let mut contents: Vec<&Arc<LocalContent>> = index.contents().collect();
        contents.sort_unstable_by_key(|c| c.id);
        let mut inv = InventoryBuilder::with_capacity(contents.len() + extra.len());
        let mut extra = extra.into_iter().map(|(_, e)| e).peekable();
        for c in contents {
            while let Some(e) = extra.next_if(|e| e.id < c.id) {
                inv.push(&e);
            }
            // A complete file wins over anything else of its id.
            extra.next_if(|e| e.id == c.id);
            let (name, more_paths) = index.names_of(c);
            inv.push(&InventoryEntry {
                id: c.id,
                name: clean_text(&name, MAX_FILE_NAME),
                more_paths,
                size: c.manifest.size,
                category: c.category,
                comment: clean_comment(c.comment()),
                chunks: ChunkSet::Full,
            });
        }
        drop(index);
        for e in extra {
            inv.push(&e);
        }
        self.published.publish(inv.finish());
    }

    /// What to send a peer that holds our inventory of digest `since`
    /// (`None`: nothing yet): the current inventory, with a delta when the
    /// change log reaches back to `since`.
    pub fn inventory_plan(&self, since: Option<Digest>) -> Plan {
        self.published.plan(since)
    }

    /// How long the last walk of the shared folders took (without hashing).
    pub fn last_walk(&self) -> Duration {
        Duration::from_nanos(self.walk_nanos.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Whether the last scan left files still being written for later
    /// (then the next scan should come soon).
    /// The file being hashed now, if any.
    pub fn hashing(&self) -> Option<Hashing> {
        self.hashing.lock().expect("hashing lock").clone()
    }

    pub fn has_unsettled(&self) -> bool {
        self.unsettled.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether a download is in progress (its progress is republished).
    pub fn has_partials(&self) -> bool {
        !self.partials.lock().expect("partials lock").is_empty()
    }

    /// The complete local copy of `id`, if this node has one.
    pub fn complete(&self, id: &ContentId) -> Option<Arc<LocalContent>> {
        self.index.lock().expect("index lock").get(id)
    }

    /// The complete local copy of `id`, checked to be still there and
    /// unchanged (size and mtime as indexed). A copy deleted or changed
    /// since the last scan is forgotten at once (the inventory is
    /// published again; the next scan indexes whatever is there now), and
    /// another file of the same content, if any, answers instead.
    /// Blocking: a stat per file tried.
    pub fn complete_checked(&self, id: &ContentId) -> Option<Arc<LocalContent>> {
        let mut forgot = false;
        let found = loop {
            let Some(c) = self.complete(id) else {
                break None;
            };
            match c.open() {
                Ok(_) => break Some(c),
                Err(e) => {
                    tracing::info!(path = %c.path.display(), error = %e, "a shared file is gone or changed; forgetting it");
                    if !self.index.lock().expect("index lock").forget(&c.path) {
                        break None;
                    }
                    forgot = true;
                }
            }
        };
        if forgot {
            self.publish();
        }
        found
    }

    /// The downloads to go on with after a restart.
    pub fn jobs(&self) -> &Jobs {
        &self.jobs
    }

    /// Deletes the partial file and state of `id`, whose download is not
    /// running (the user cancelled it while it was stopped).
    pub fn discard_partial(&self, id: &ContentId) {
        if self
            .partials
            .lock()
            .expect("partials lock")
            .contains_key(id)
        {
            return; // running: it discards its own files when it ends
        }
        Partial::discard_files(&self.home, id);
    }

    /// Where chunks of `id` can be read from, complete copies first.
    pub fn source(&self, id: &ContentId) -> Option<Source> {
        if let Some(c) = self.complete(id) {
            return Some(Source::Complete(c));
        }
        self.partials
            .lock()
            .expect("partials lock")
            .get(id)
            .cloned()
            .map(Source::Partial)
    }

    /// Opens (or resumes) the partial download of `id` under `name`.
    pub fn begin_partial(
        &self,
        manifest: Arc<Manifest>,
        name: &str,
    ) -> Result<Arc<Partial>, StoreError> {
        let id = manifest.content_id();
        if let Some(p) = self.partials.lock().expect("partials lock").get(&id) {
            return Ok(p.clone());
        }
        let p = Arc::new(Partial::open(&self.home, manifest, name)?);
        self.partials
            .lock()
            .expect("partials lock")
            .insert(id, p.clone());
        // Chunks from an earlier run are served only once read back and
        // checked, which happens off the runtime, in the background.
        if !p.unverified().is_empty() {
            let weak = Arc::downgrade(&p);
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn_blocking(move || Partial::verify_resumed(weak));
                }
                Err(_) => {
                    std::thread::spawn(move || Partial::verify_resumed(weak));
                }
            }
        }
        Ok(p)
    }

    /// Forgets a partial download (it stays on disk for a later resume).
    pub fn release_partial(&self, id: &ContentId) {
        self.partials.lock().expect("partials lock").remove(id);
    }

    /// Moves a verified partial download into downloads/ under a name that
    /// does not exist yet, and shares it without hashing it again.
    pub fn finish_partial(&self, p: &Partial) -> Result<PathBuf, StoreError> {
        let target = p.finish(&self.home.downloads())?;
        let meta = std::fs::metadata(&target).map_err(io_err("cannot stat", &target))?;
        let file = index::FoundFile {
            path: target.clone(),
            size: meta.len(),
            mtime_ns: index::mtime_ns(&meta),
            root: Arc::new(ShareRoot::home_folder(self.home.downloads())),
        };
        {
            let mut idx = self.index.lock().expect("index lock");
            idx.insert(file, (*p.manifest).clone());
            if let Err(e) = idx.save(&self.home.index_cache()) {
                tracing::warn!(error = %e, "cannot write the index cache");
            }
        }
        self.release_partial(&p.id);
        self.publish();
        Ok(target)
    }

    /// Where chunk `index` of `source` lies on disk, checked to be servable:
    /// the file still matches its index entry, or the partial chunk is
    /// verified. `cache` keeps the last opened file for the next call.
    pub fn chunk_ref(
        &self,
        source: &Source,
        index: u32,
        cache: &mut Option<(ContentId, Arc<std::fs::File>)>,
    ) -> Result<ChunkRef, StoreError> {
        let manifest = source.manifest();
        let id = source.id();
        if index >= manifest.chunk_count() {
            return Err(StoreError::BadIndex { id, index });
        }
        let file = match source {
            Source::Complete(c) => match cache {
                Some((cid, f)) if *cid == id => {
                    c.check(f)?;
                    f.clone()
                }
                _ => {
                    let f = Arc::new(c.open()?);
                    *cache = Some((id, f.clone()));
                    f
                }
            },
            Source::Partial(p) => {
                // Verified by this process only (see partial.rs).
                if !p.has(index) {
                    return Err(StoreError::NoChunk { id, index });
                }
                p.file().clone()
            }
        };
        Ok(ChunkRef {
            file,
            offset: manifest.chunk_offset(index),
            len: manifest.chunk_len(index) as usize,
        })
    }
}

/// Splits files to hash into those settled at `now` (small, or large and
/// unmodified for [`SETTLE`]) and those probably still being written.
fn split_settled(
    files: Vec<index::FoundFile>,
    now: SystemTime,
) -> (Vec<index::FoundFile>, Vec<index::FoundFile>) {
    let now_ns = system_time_ns(Ok(now));
    let mut files = files;
    // In place: the settled keep the walk's list, not a copy of it.
    let unsettled = files
        .extract_if(.., |f| {
            f.size >= SETTLE_MIN_SIZE
                && now_ns.saturating_sub(f.mtime_ns as u128) < SETTLE.as_nanos()
        })
        .collect();
    (files, unsettled)
}

/// Modification time as nanoseconds since the epoch (0 when unknown).
pub fn system_time_ns(t: std::io::Result<SystemTime>) -> u128 {
    t.ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .unwrap_or(Duration::ZERO)
        .as_nanos()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_tracks_files_duplicates_and_cache() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let store = Store::open(home.clone(), Vec::new()).unwrap();
        std::fs::write(home.shared().join("b.txt"), b"same").unwrap();
        std::fs::write(home.shared().join("a.txt"), b"same").unwrap();
        std::fs::create_dir(home.shared().join("sub")).unwrap();
        std::fs::write(home.shared().join("sub/c.bin"), b"other").unwrap();
        std::fs::write(home.downloads().join(".lanshare-x.part"), b"partial").unwrap();
        assert!(store.rescan_blocking());
        assert!(!store.has_unsettled(), "small files are hashed at once");
        store.publish();
        let inv = store.inventory();
        let mut names: Vec<String> = inv.iter().map(|e| e.name).collect();
        names.sort();
        assert_eq!(
            names,
            ["a.txt", "sub/c.bin"],
            "duplicates share one entry; partial files are never shared"
        );
        assert!(!store.rescan_blocking(), "nothing changed");

        std::fs::remove_file(home.shared().join("a.txt")).unwrap();
        assert!(store.rescan_blocking());
        store.publish();
        let mut names: Vec<String> = store.inventory().iter().map(|e| e.name.clone()).collect();
        names.sort();
        assert_eq!(names, ["b.txt", "sub/c.bin"]);
        assert_ne!(store.inventory().digest, inv.digest);

        // A new store over the same home takes every manifest from the cache.
        let again = Store::open(home, Vec::new()).unwrap();
        let idx = again.index.lock().unwrap();
        assert_eq!(idx.cached_len(), 2);
    }

    /// Regression (issue 12's churn test): a file deleted a moment ago was
    /// still "already here". The checked lookup forgets it at once, and
    /// answers with another copy of the same content if there is one.
    #[test]
    fn a_file_deleted_since_the_scan_is_not_held() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let store = Store::open(home.clone(), Vec::new()).unwrap();
        std::fs::write(home.shared().join("a.txt"), b"same bytes").unwrap();
        std::fs::write(home.downloads().join("b.txt"), b"same bytes").unwrap();
        std::fs::write(home.shared().join("c.txt"), b"other bytes").unwrap();
        store.rescan_blocking();
        store.publish();
        let id = |name: &str| {
            store
                .inventory()
                .iter()
                .find(|e| e.name == name)
                .map(|e| e.id)
        };
        let (same, other) = (id("b.txt").or(id("a.txt")).unwrap(), id("c.txt").unwrap());
        let first = store.complete_checked(&same).unwrap().path.clone();
        std::fs::remove_file(&first).unwrap();
        let second = store.complete_checked(&same).expect("the other copy");
        assert_ne!(second.path, first);
        std::fs::remove_file(&second.path).unwrap();
        assert!(store.complete_checked(&same).is_none(), "no copy left");
        assert!(
            store.complete(&same).is_none(),
            "forgotten, not only hidden"
        );
        assert!(
            !store.inventory().iter().any(|e| e.id == same),
            "no longer offered"
        );
        // A file changed in place (another size) is not held either.
        std::fs::write(home.shared().join("c.txt"), b"changed!").unwrap();
        assert!(store.complete_checked(&other).is_none());
    }

    #[test]
    fn a_large_file_still_being_written_waits_until_it_settles() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let store = Store::open(home.clone(), Vec::new()).unwrap();
        let big = vec![7u8; SETTLE_MIN_SIZE as usize];
        std::fs::write(home.shared().join("big.iso"), &big).unwrap();
        assert!(!store.rescan_blocking(), "just written: not hashed yet");
        assert!(store.has_unsettled());
        std::thread::sleep(SETTLE);
        assert!(store.rescan_blocking());
        assert!(!store.has_unsettled());
        store.publish();
        assert_eq!(store.inventory().to_vec()[0].name, "big.iso");
    }

    #[test]
    fn large_files_settle_after_the_settle_time_of_passed_in_time() {
        let file = |size: u64, mtime_ns: u64| index::FoundFile {
            path: PathBuf::from(format!("/f{size}-{mtime_ns}")),
            size,
            mtime_ns,
            root: Arc::new(ShareRoot::plain(PathBuf::from("/"))),
        };
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let modified = Duration::from_secs(1000).as_nanos() as u64;
        let settle = SETTLE.as_nanos() as u64;
        let files = vec![
            file(SETTLE_MIN_SIZE - 1, modified),
            file(SETTLE_MIN_SIZE, modified),
            file(SETTLE_MIN_SIZE, modified - settle),
            file(SETTLE_MIN_SIZE, modified - settle + 1),
        ];
        let (ready, waiting) = split_settled(files, t);
        let sizes_ages = |v: &[index::FoundFile]| {
            v.iter()
                .map(|f| (f.size, modified - f.mtime_ns))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            sizes_ages(&ready),
            [(SETTLE_MIN_SIZE - 1, 0), (SETTLE_MIN_SIZE, settle)]
        );
        assert_eq!(
            sizes_ages(&waiting),
            [(SETTLE_MIN_SIZE, 0), (SETTLE_MIN_SIZE, settle - 1)]
        );
    }

    /// Regression: a file name that is not UTF-8 made saving the index
    /// cache panic with the index lock held, poisoning it for every task.
    #[test]
    fn non_utf8_file_names_are_indexed_and_cached() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let store = Store::open(home.clone(), Vec::new()).unwrap();
        let name = std::ffi::OsStr::from_bytes(b"caf\xe9.txt");
        std::fs::write(home.shared().join(name), b"bytes").unwrap();
        assert!(store.rescan_blocking());
        store.publish();
        assert_eq!(store.inventory().to_vec()[0].name, "caf\u{fffd}.txt");
        let again = Store::open(home, Vec::new()).unwrap();
        assert_eq!(again.index.lock().unwrap().cached_len(), 1);
    }

    #[test]
    fn symlinks_out_of_a_shared_folder_are_followed_only_when_asked() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path().join("home"));
        let store = Store::open(home.clone(), Vec::new()).unwrap();
        std::fs::write(dir.path().join("secret.key"), b"outside the share").unwrap();
        std::fs::create_dir(home.shared().join("sub")).unwrap();
        std::fs::write(home.shared().join("sub/real.txt"), b"inside").unwrap();
        symlink(dir.path().join("secret.key"), home.shared().join("key.txt")).unwrap();
        symlink("../../secret.key", home.shared().join("sub/rel.txt")).unwrap();
        // Inside, even through a link to a folder of the share.
        symlink("sub/real.txt", home.shared().join("a-link.txt")).unwrap();
        symlink(dir.path(), home.shared().join("dirlink")).unwrap();
        store.rescan_blocking();
        store.publish();
        let names = |s: &Store| {
            let mut n: Vec<String> = s.inventory().iter().map(|e| e.name.clone()).collect();
            n.sort();
            n
        };
        // The link staying inside shares real.txt's content (one entry,
        // named by the smallest path).
        assert_eq!(names(&store), ["a-link.txt"]);
        let walked = index::walk(&[ShareRoot::plain(home.shared())], false);
        assert_eq!(walked.files.len(), 2, "{walked:?}");

        let store = Store::open(home.clone(), Vec::new()).unwrap();
        store.set_follow_symlinks(true);
        store.rescan_blocking();
        store.publish();
        assert_eq!(names(&store), ["a-link.txt", "key.txt"]);
    }
}
