//! The index of shared files (the walk itself is [`super::walk`]): each
//! file's manifest keyed by (path, size, mtime) so unchanged files are never
//! hashed twice, and the on-disk cache of that in `.lanshare/index.bin`.
//! Also the name each file is offered under: its path relative to its
//! share root ([`RootNaming`], [`inventory_name`]), and the empty folders
//! a walk finds. Never takes a path from the network.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{StoreError, io_err};
use crate::id::ContentId;
use crate::manifest::{Category, Manifest};
use crate::wire::{
    InventoryEntry, MAX_MORE_PATHS, MAX_MORE_PATHS_BYTES, MorePaths, check_path, folder_entry,
};

pub use super::walk::{FoundFile, Walk, mtime_ns, walk};

/// Where the inventory names of the files under a root start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RootNaming {
    /// With the root's own name: `share holiday` offers
    /// `holiday/day1/beach.jpg` (a file shared alone: its name).
    #[default]
    WithRootName,
    /// Inside the root: shared/ and downloads/ offer `holiday/day1/beach.jpg`
    /// for `shared/holiday/day1/beach.jpg`.
    InsideRoot,
}

/// A file or folder this node shares, with the metadata given to it.
#[derive(Clone, Debug, Eq, Serialize, Deserialize)]
pub struct ShareRoot {
    pub path: PathBuf,
    #[serde(default)]
    pub comment: String,
    /// Overrides the category guessed from each file's extension.
    #[serde(default)]
    pub category: Option<Category>,
    /// How its files are named (not recorded: shares.json holds only
    /// roots named with their own name).
    #[serde(skip)]
    pub naming: RootNaming,
}

impl PartialEq for ShareRoot {
    /// Byte-wise on the path: compared once per file on every scan, where
    /// `Path`'s component-wise equality is measurably slow.
    fn eq(&self, other: &Self) -> bool {
        self.path.as_os_str() == other.path.as_os_str()
            && self.comment == other.comment
            && self.category == other.category
            && self.naming == other.naming
    }
}

impl ShareRoot {
    pub fn plain(path: PathBuf) -> Self {
        ShareRoot {
            path,
            comment: String::new(),
            category: None,
            naming: RootNaming::WithRootName,
        }
    }

    /// A folder of the home (shared/, downloads/): its files are named
    /// from inside it.
    pub fn home_folder(path: PathBuf) -> Self {
        ShareRoot {
            naming: RootNaming::InsideRoot,
            ..ShareRoot::plain(path)
        }
    }
}

/// One component of a local path made safe to send: lossy UTF-8, control
/// characters and backslashes as `_`.
fn clean_component(c: &std::ffi::OsStr) -> String {
    c.to_string_lossy()
        .chars()
        .map(|ch| {
            if ch.is_control() || ch == '\\' {
                '_'
            } else {
                ch
            }
        })
        .collect()
}

/// The name `path` (a file or folder under `root`) is offered under: its
/// path relative to the root ([`RootNaming`]), components joined by `/`.
/// `None` when that is no valid inventory name ([`check_path`]: too long or
/// too deep) or names the root of a home folder itself.
pub fn relative_name(path: &Path, root: &ShareRoot) -> Option<String> {
    let base = match root.naming {
        RootNaming::InsideRoot => root.path.as_path(),
        RootNaming::WithRootName => root.path.parent()?,
    };
    let rel = path.strip_prefix(base).ok()?;
    let parts: Vec<String> = rel
        .components()
        .map(|c| match c {
            std::path::Component::Normal(n) => Some(clean_component(n)),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let name = parts.join("/");
    check_path(&name).is_ok().then_some(name)
}

/// The name a file is offered under: [`relative_name`], or, for a path too
/// long or too deep for the wire, its file name alone.
pub fn inventory_name(path: &Path, root: &ShareRoot) -> String {
    relative_name(path, root).unwrap_or_else(|| {
        let name = path.file_name().map(clean_component).unwrap_or_default();
        crate::wire::clean_text(&name, crate::wire::MAX_FILE_NAME)
    })
}

/// `.lanshare/shares.json`: what `lanshare share` added.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SharesFile {
    pub entries: Vec<ShareRoot>,
}

impl SharesFile {
    pub fn load(path: &Path) -> SharesFile {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "cannot parse shares file; ignoring it");
                SharesFile::default()
            }),
            Err(_) => SharesFile::default(),
        }
    }

    /// Adds or replaces the entry for `root.path` and writes the file atomically.
    pub fn add(path: &Path, root: ShareRoot) -> std::io::Result<()> {
        let mut file = SharesFile::load(path);
        file.entries.retain(|e| e.path != root.path);
        file.entries.push(root);
        file.save(path)
    }

    /// Removes the entry for `root`; false when there was none.
    pub fn remove(path: &Path, root: &Path) -> std::io::Result<bool> {
        let mut file = SharesFile::load(path);
        let before = file.entries.len();
        file.entries.retain(|e| e.path != root);
        if file.entries.len() == before {
            return Ok(false);
        }
        file.save(path).map(|()| true)
    }

    fn save(&self, path: &Path) -> std::io::Result<()> {
        let file = self;
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(&file).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("cannot record the share ({e}); use a path that is valid UTF-8"),
            )
        })?;
        std::fs::write(&tmp, json)?;
        std::fs::rename(&tmp, path)
    }
}

/// A complete file this node shares. Compact, as there is one per shared
/// file: one allocation with its manifest (a one-chunk manifest holds its
/// hash inline), the offered name the path's tail where it is one (the
/// common case: no second copy of it), the comment the share root's.
#[derive(Debug)]
pub struct LocalContent {
    pub id: ContentId,
    /// What was hashed; its size is the file's as indexed.
    pub manifest: Manifest,
    pub path: Box<Path>,
    /// The offered name when it is not the tail of `path` (a name
    /// cleaned for the wire, or a path too long to be offered whole).
    own_name: Option<Box<str>>,
    root: Arc<ShareRoot>,
    mtime_ns: u64,
    /// Where the offered name starts in `path`'s bytes (without
    /// `own_name`).
    name_at: u32,
    pub category: Category,
}

impl LocalContent {
    /// The name it is offered under ([`inventory_name`]).
    pub fn name(&self) -> &str {
        if let Some(own) = &self.own_name {
            return own;
        }
        let tail = &self.path.as_os_str().as_bytes()[self.name_at as usize..];
        std::str::from_utf8(tail).expect("a name kept in the path is its UTF-8 tail")
    }

    /// The comment of the share it is part of.
    pub fn comment(&self) -> &str {
        &self.root.comment
    }

    /// Opens the file, refusing if it no longer matches what was hashed.
    pub fn open(&self) -> Result<std::fs::File, StoreError> {
        let file = std::fs::File::open(&self.path).map_err(io_err("cannot open", &self.path))?;
        self.check(&file)?;
        Ok(file)
    }

    /// Refuses a file whose size or mtime differ from what was hashed (it
    /// changed on disk; the next scan re-indexes it).
    pub fn check(&self, file: &std::fs::File) -> Result<(), StoreError> {
        let meta = file.metadata().map_err(io_err("cannot stat", &self.path))?;
        if meta.len() != self.manifest.size || mtime_ns(&meta) != self.mtime_ns {
            return Err(StoreError::Changed {
                path: self.path.to_path_buf(),
            });
        }
        Ok(())
    }

    /// Reads `buf.len()` bytes at `offset` from a checked file.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        self.open()?
            .read_exact_at(buf, offset)
            .map_err(io_err("cannot read", &self.path))
    }
}

#[derive(Serialize, Deserialize)]
struct CacheRecord {
    /// The path's raw bytes: file names need not be UTF-8.
    path: Vec<u8>,
    size: u64,
    mtime_ns: u64,
    manifest: Manifest,
}

#[derive(Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    records: Vec<CacheRecord>,
}

const CACHE_VERSION: u32 = 1;

/// `CacheFile` as written: the same bytes, borrowed from the index.
#[derive(Serialize)]
struct CacheFileRef<'a> {
    version: u32,
    records: CacheRecords<'a>,
}

/// Every indexed file as a `CacheRecord`, encoded one at a time.
struct CacheRecords<'a>(&'a HashSet<ByPath>);

#[derive(Serialize)]
struct CacheRecordRef<'a> {
    #[serde(with = "serde_bytes_ref")]
    path: &'a [u8],
    size: u64,
    mtime_ns: u64,
    manifest: &'a Manifest,
}

impl Serialize for CacheRecords<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|ByPath(c)| CacheRecordRef {
            path: c.path.as_os_str().as_bytes(),
            size: c.manifest.size,
            mtime_ns: c.mtime_ns,
            manifest: &c.manifest,
        }))
    }
}

/// A byte slice encoded like the `Vec<u8>` it is read back as (a sequence
/// of bytes, as serde's default for `Vec<u8>`).
mod serde_bytes_ref {
    pub fn serialize<S: serde::Serializer>(bytes: &&[u8], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(bytes.iter())
    }
}

/// A content wrapped to be a set's element keyed by one of its fields:
/// the key is kept once, in the content (one pointer per slot rather
/// than a key beside it), and the set is searched by that key.
macro_rules! keyed_by {
    ($(#[$doc:meta])* $name:ident, $field:ident: $key:ty) => {
        $(#[$doc])*
        struct $name(Arc<LocalContent>);

        impl std::hash::Hash for $name {
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.0.$field.hash(state)
            }
        }

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                self.0.$field == other.0.$field
            }
        }

        impl Eq for $name {}

        impl std::borrow::Borrow<$key> for $name {
            fn borrow(&self) -> &$key {
                &self.0.$field
            }
        }
    };
}

keyed_by!(
    /// An indexed file in the set of files, found by its path.
    ByPath, path: Path
);
keyed_by!(
    /// A content in the id map, found by its id.
    ById, id: ContentId
);

/// Index state: every indexed file by path, and contents by id.
#[derive(Default)]
pub struct IndexState {
    files: HashSet<ByPath>,
    /// Each content's file of the smallest path: the one served.
    by_id: HashSet<ById>,
    /// The other files of the contents found at several paths, ascending
    /// by path (a content at one path, the common case, has no entry).
    more: HashMap<ContentId, Vec<Arc<LocalContent>>>,
    /// Manifests loaded from the cache, not yet matched to a walked file.
    cached: HashMap<PathBuf, CacheRecord>,
    /// Names of the empty folders the last walk found.
    empty_dirs: BTreeSet<String>,
}

/// The content of `file`, which gives it its path (and its name, where
/// the name is the path's tail).
fn content_for(file: FoundFile, manifest: Manifest) -> Arc<LocalContent> {
    let name = inventory_name(&file.path, &file.root);
    let file_name = name.rsplit('/').next().unwrap_or_default();
    let category = (file.root.category).unwrap_or_else(|| Category::from_name(file_name));
    let path = file.path.into_boxed_path();
    let bytes = path.as_os_str().as_bytes();
    let name_at = bytes.len() - name.len().min(bytes.len());
    let (own_name, name_at) = match u32::try_from(name_at) {
        Ok(at) if bytes.ends_with(name.as_bytes()) => (None, at),
        _ => (Some(name.into_boxed_str()), 0),
    };
    Arc::new(LocalContent {
        id: manifest.content_id(),
        manifest,
        path,
        own_name,
        root: file.root,
        mtime_ns: file.mtime_ns,
        name_at,
        category,
    })
}

impl IndexState {
    pub fn load(path: &Path) -> IndexState {
        let cached = std::fs::read(path)
            .ok()
            .and_then(|b| postcard::from_bytes::<CacheFile>(&b).ok())
            .filter(|c| c.version == CACHE_VERSION)
            .map(|c| {
                c.records
                    .into_iter()
                    .map(|mut r| {
                        let path = std::mem::take(&mut r.path);
                        (PathBuf::from(std::ffi::OsString::from_vec(path)), r)
                    })
                    .collect()
            })
            .unwrap_or_default();
        IndexState {
            cached,
            ..Default::default()
        }
    }

    /// Writes the cache: streamed record by record (a huge share never
    /// needs a second copy of its manifests in memory) through
    /// `durable::write_atomic_with`, so a failed write (a full disk) leaves
    /// the previous cache whole.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        super::durable::write_atomic_with(path, |w| {
            let file = CacheFileRef {
                version: CACHE_VERSION,
                records: CacheRecords(&self.files),
            };
            postcard::to_io(&file, w)
                .map(drop)
                .map_err(|e| std::io::Error::other(format!("cannot encode the index cache: {e}")))
        })
    }

    /// Applies a walk: drops files that vanished, refreshes metadata, takes
    /// manifests from the cache where size and mtime match. Returns whether
    /// anything changed and the files that must be hashed.
    pub fn apply_walk(&mut self, walk: Walk) -> (bool, Vec<FoundFile>) {
        let mut changed = walk.empty_dirs != self.empty_dirs;
        self.empty_dirs = walk.empty_dirs;
        let before = self.files.len();
        // The walk's files are sorted by path: no set of them is built.
        self.files.retain(|ByPath(c)| {
            walk.files
                .binary_search_by(|f| f.path.as_path().cmp(&c.path))
                .is_ok()
        });
        changed |= self.files.len() != before;
        let mut to_hash = Vec::new();
        for f in walk.files {
            match self.files.get(f.path.as_path()) {
                Some(ByPath(c)) if c.manifest.size == f.size && c.mtime_ns == f.mtime_ns => {
                    if c.root != f.root {
                        let manifest = c.manifest.clone();
                        self.file_away(f, manifest);
                        changed = true;
                    }
                }
                _ => {
                    if let Some(c) = self.cached.remove(&f.path)
                        && c.size == f.size
                        && c.mtime_ns == f.mtime_ns
                        && c.manifest.check_shape().is_ok()
                    {
                        self.file_away(f, c.manifest);
                        changed = true;
                        continue;
                    }
                    if self.files.remove(f.path.as_path()) {
                        changed = true;
                    }
                    to_hash.push(f);
                }
            }
        }
        if changed {
            self.rebuild_by_id();
        }
        (changed, to_hash)
    }

    /// Files `file` with its manifest (the id map is left to the caller):
    /// its content, and the record it replaces, if any.
    fn file_away(
        &mut self,
        file: FoundFile,
        manifest: Manifest,
    ) -> (Arc<LocalContent>, Option<Arc<LocalContent>>) {
        let content = content_for(file, manifest);
        let old = self.files.replace(ByPath(content.clone()));
        (content, old.map(|ByPath(c)| c))
    }

    /// Adds (or replaces) one file. Cheap: the id map is updated in place
    /// unless the path held other content before.
    pub fn insert(&mut self, file: FoundFile, manifest: Manifest) {
        let (content, old) = self.file_away(file, manifest);
        if old.is_some_and(|o| o.id != content.id) {
            self.rebuild_by_id();
            return;
        }
        self.place(content);
    }

    /// Files `content` under its id: the file of the smallest path is
    /// served, the others are kept in `more` (a file at a path already
    /// filed replaces it).
    fn place(&mut self, content: Arc<LocalContent>) {
        let id = content.id;
        let other = match self.by_id.get(&id) {
            Some(ById(first)) if first.path < content.path => content,
            Some(ById(first)) if first.path > content.path => {
                let ById(first) = self.by_id.replace(ById(content)).expect("a file was filed");
                first
            }
            // None, or the same path: (re)filed as the one served.
            _ => {
                self.by_id.replace(ById(content));
                return;
            }
        };
        let more = self.more.entry(id).or_default();
        match more.binary_search_by(|m| m.path.cmp(&other.path)) {
            Ok(i) => more[i] = other,
            Err(i) => more.insert(i, other),
        }
    }

    fn rebuild_by_id(&mut self) {
        self.by_id.clear();
        self.more.clear();
        let mut records: Vec<&Arc<LocalContent>> = self.files.iter().map(|r| &r.0).collect();
        // Deterministic: the smallest path first, then the others in order.
        records.sort_by(|a, b| a.path.cmp(&b.path));
        for c in records {
            // The first filed stays: the smallest path.
            if !self.by_id.contains(&c.id) {
                self.by_id.insert(ById(c.clone()));
            } else {
                self.more.entry(c.id).or_default().push(c.clone());
            }
        }
    }

    /// The names the content of `c` (a content [`IndexState::contents`]
    /// gives) is offered under: the smallest of its files' names, and the
    /// others, ascending and without repeats, as many as the wire takes
    /// ([`MAX_MORE_PATHS`], [`MAX_MORE_PATHS_BYTES`]; files beyond that
    /// are not offered at their own paths).
    pub fn names_of(&self, c: &LocalContent) -> (String, MorePaths) {
        let Some(more) = self.more.get(&c.id) else {
            return (c.name().to_string(), MorePaths::default());
        };
        let mut names: Vec<&str> = std::iter::once(c.name())
            .chain(more.iter().map(|m| m.name()))
            .collect();
        names.sort_unstable();
        names.dedup();
        let mut bytes = 0;
        let rest: Vec<String> = names[1..]
            .iter()
            .filter(|n| check_path(n).is_ok())
            .take_while(|n| {
                bytes += n.len();
                bytes <= MAX_MORE_PATHS_BYTES
            })
            .take(MAX_MORE_PATHS)
            .map(|n| n.to_string())
            .collect();
        if rest.len() + 1 < names.len() {
            tracing::debug!(id = %c.id.short(), paths = names.len(), offered = rest.len() + 1, "a content at more paths than an inventory entry carries");
        }
        (names[0].to_string(), MorePaths::new(rest))
    }

    /// Manifests loaded from the cache and not yet matched to a file.
    #[cfg(test)]
    pub fn cached_len(&self) -> usize {
        self.cached.len()
    }

    /// Forgets the file at `path` (gone or changed on disk); whether it
    /// was indexed.
    pub fn forget(&mut self, path: &Path) -> bool {
        let gone = self.files.remove(path);
        if gone {
            self.rebuild_by_id();
        }
        gone
    }

    /// The file indexed at `path`, if any.
    pub fn at_path(&self, path: &Path) -> Option<Arc<LocalContent>> {
        self.files.get(path).map(|f| f.0.clone())
    }

    pub fn get(&self, id: &ContentId) -> Option<Arc<LocalContent>> {
        self.by_id.get(id).map(|ById(c)| c.clone())
    }

    pub fn contents(&self) -> impl ExactSizeIterator<Item = &Arc<LocalContent>> {
        self.by_id.iter().map(|ById(c)| c)
    }

    /// The inventory entries of the empty folders shared.
    pub fn folder_entries(&self) -> impl Iterator<Item = InventoryEntry> + '_ {
        self.empty_dirs.iter().map(|d| folder_entry(d))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(walk: &Walk) -> Vec<String> {
        let mut n: Vec<String> = walk
            .files
            .iter()
            .map(|f| inventory_name(&f.path, &f.root))
            .collect();
        n.sort();
        n
    }

    /// Files are offered by their path from their share root: inside the
    /// home's folders, with the folder's own name for `share FOLDER`, and
    /// by name for a file shared alone; empty folders are found too.
    #[test]
    fn files_are_named_by_their_path_from_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        let day1 = shared.join("holiday/day1");
        std::fs::create_dir_all(&day1).unwrap();
        std::fs::create_dir_all(shared.join("holiday/empty")).unwrap();
        std::fs::create_dir_all(shared.join("holiday/only-empty/inner")).unwrap();
        std::fs::write(day1.join("beach.jpg"), b"b").unwrap();
        std::fs::write(shared.join("top.txt"), b"t").unwrap();
        std::fs::write(shared.join("holiday/back\\slash\u{7}.txt"), b"x").unwrap();
        let other = dir.path().join("elsewhere/Photos");
        std::fs::create_dir_all(other.join("2024")).unwrap();
        std::fs::write(other.join("2024/x.png"), b"x").unwrap();
        std::fs::write(dir.path().join("alone.pdf"), b"a").unwrap();
        let roots = [
            ShareRoot::home_folder(shared.clone()),
            ShareRoot::plain(other.clone()),
            ShareRoot::plain(dir.path().join("alone.pdf")),
        ];
        let walk = walk(&roots, false);
        assert_eq!(
            names(&walk),
            [
                "Photos/2024/x.png",
                "alone.pdf",
                "holiday/back_slash_.txt",
                "holiday/day1/beach.jpg",
                "top.txt"
            ]
        );
        let empty: Vec<&str> = walk.empty_dirs.iter().map(String::as_str).collect();
        assert_eq!(empty, ["holiday/empty", "holiday/only-empty/inner"]);
        // A more specific root (share shared/holiday) names files the same.
        let walk2 = super::walk(
            &[
                ShareRoot::home_folder(shared.clone()),
                ShareRoot::plain(shared.join("holiday")),
            ],
            false,
        );
        assert_eq!(names(&walk2), names(&super::walk(&roots[..1], false)));
        // An empty home folder is not offered itself; an empty shared
        // folder is.
        let empty_root = dir.path().join("nothing");
        std::fs::create_dir(&empty_root).unwrap();
        let w = super::walk(&[ShareRoot::home_folder(empty_root.clone())], false);
        assert!(w.empty_dirs.is_empty());
        let w = super::walk(&[ShareRoot::plain(empty_root)], false);
        assert_eq!(w.empty_dirs.iter().collect::<Vec<_>>(), ["nothing"]);
    }

    /// One content at several paths is one entry offered at each path,
    /// served from the file of the smallest path; a path gone goes.
    #[test]
    fn a_content_at_several_paths_is_offered_at_each() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        for (path, bytes) in [
            ("holiday/day1/a.jpg", b"same".as_slice()),
            ("backup/a.jpg", b"same"),
            ("backup/copy/a.jpg", b"same"),
            ("b.txt", b"other"),
        ] {
            let p = shared.join(path);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, bytes).unwrap();
        }
        let mut idx = IndexState::default();
        for f in walk(&[ShareRoot::home_folder(shared.clone())], false).files {
            let m = crate::manifest::hash_file(&f.path, |_| {}).unwrap();
            idx.insert(f, m);
        }
        let offered = |idx: &IndexState| {
            let mut v: Vec<(String, Vec<String>)> = idx
                .contents()
                .map(|c| {
                    let (name, more) = idx.names_of(c);
                    (name, more.as_slice().to_vec())
                })
                .collect();
            v.sort();
            v
        };
        let all = [
            "backup/copy/a.jpg".to_string(),
            "holiday/day1/a.jpg".to_string(),
        ];
        assert_eq!(
            offered(&idx),
            [
                ("b.txt".to_string(), vec![]),
                ("backup/a.jpg".to_string(), all.to_vec())
            ]
        );
        let id = idx.contents().find(|c| c.name() != "b.txt").unwrap().id;
        assert_eq!(*idx.get(&id).unwrap().path, shared.join("backup/a.jpg"));
        // The same from a rebuild of the id map.
        assert!(idx.forget(&shared.join("backup/a.jpg")));
        assert_eq!(
            *idx.get(&id).unwrap().path,
            shared.join("backup/copy/a.jpg")
        );
        assert_eq!(
            offered(&idx)[1],
            ("backup/copy/a.jpg".to_string(), vec![all[1].clone()])
        );
        assert!(idx.forget(&shared.join("backup/copy/a.jpg")));
        assert_eq!(offered(&idx)[1], (all[1].clone(), vec![]));
        assert!(idx.more.is_empty(), "one path: nothing kept beside it");
    }

    /// A file's name is kept as its path's tail where it is one, and on
    /// its own where cleaning for the wire changed it; the record stays
    /// small (one per shared file).
    #[test]
    fn a_content_keeps_its_name_once() {
        let root = Arc::new(ShareRoot::home_folder(PathBuf::from("/s")));
        let m = crate::manifest::manifest_of(b"x", crate::manifest::CHUNK_SIZE);
        let file = |p: &str| FoundFile {
            path: PathBuf::from(p),
            size: 1,
            mtime_ns: 0,
            root: root.clone(),
        };
        let plain = content_for(file("/s/a/b.txt"), m.clone());
        assert_eq!((plain.name(), plain.own_name.is_none()), ("a/b.txt", true));
        let cleaned = content_for(file("/s/a/c\\d\u{7}.txt"), m.clone());
        assert_eq!(cleaned.name(), "a/c_d_.txt");
        assert!(cleaned.own_name.is_some());
        let long = format!("/s/{}/g.txt", "x".repeat(250));
        assert_eq!(content_for(file(&long), m).name(), "g.txt");
        assert!(
            size_of::<LocalContent>() <= 176,
            "{}",
            size_of::<LocalContent>()
        );
    }

    #[test]
    fn a_path_too_long_for_the_wire_is_offered_by_its_file_name() {
        let root = ShareRoot::home_folder(PathBuf::from("/s"));
        let deep: PathBuf = std::iter::once("/s".to_string())
            .chain((0..40).map(|i| format!("d{i}")))
            .chain(std::iter::once("f.txt".to_string()))
            .collect();
        assert_eq!(inventory_name(&deep, &root), "f.txt");
        let long = PathBuf::from(format!("/s/{}/g.txt", "x".repeat(250)));
        assert_eq!(inventory_name(&long, &root), "g.txt");
        assert_eq!(inventory_name(Path::new("/s/a/b.txt"), &root), "a/b.txt");
    }

    proptest::proptest! {
        /// Whatever the local file names, the name sent passes the checks
        /// every receiver makes.
        #[test]
        fn every_local_name_passes_the_wire_check(parts in proptest::collection::vec("[^/\\x00]{1,40}", 1..40)) {
            let root = ShareRoot::home_folder(PathBuf::from("/s"));
            let mut path = PathBuf::from("/s");
            for p in &parts {
                if p == "." || p == ".." {
                    return Ok(());
                }
                path.push(p);
            }
            let name = inventory_name(&path, &root);
            proptest::prop_assert!(check_path(&name).is_ok(), "{:?} -> {:?}", path, name);
        }
    }
}
