//! Where a folder download lands: its own new folder in downloads/ (under a
//! free name: `holiday`, `holiday (1)`, ...), the folders inside it, and
//! each verified file moved or copied into place, then shared.
//!
//! Never overwrites or deletes anything a user has in downloads/: folders
//! are made with `mkdir` (which fails on anything already there), files are
//! hard-linked under a free name. Takes only paths that pass
//! [`check_path`], and never writes through a symlink: a folder on the way
//! that turns out to be a link (or not a folder) is refused.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::index::{FoundFile, mtime_ns};
use super::{Partial, ShareRoot, Store, StoreError, io_err, safe_file_name};
use crate::id::ContentId;
use crate::wire::{MAX_FILE_NAME, check_path};

/// Most attempts at a free folder or file name.
const MAX_ATTEMPTS: u32 = 10_000;

/// Where a download of one file of a folder lands: a folder made by
/// [`Store::create_folder_path`], and the file's own name there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Placement {
    pub dir: PathBuf,
    /// One checked path component (made local by [`local_component`]).
    pub name: String,
}

/// A component of a checked path as it is written locally: as sent, except
/// that a name lanshare keeps for itself (`.lanshare...`, never shared) gets
/// a `_` in front.
pub fn local_component(c: &str) -> String {
    if c.starts_with(".lanshare") {
        format!("_{c}")
    } else {
        c.to_string()
    }
}

/// The longest prefix of `s` of at most `max` bytes, at a char boundary.
fn prefix(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// The names tried for a folder or file called `name`: `name`, then
/// `name (1)`, `name (2)`, ... (a file keeps its extension last), each at
/// most [`MAX_FILE_NAME`] bytes.
fn free_names(name: &str, is_file: bool) -> impl Iterator<Item = String> + '_ {
    let (stem, ext) = match name.rsplit_once('.') {
        Some((s, _)) if is_file && !s.is_empty() && name.len() - s.len() < 32 => {
            (s, &name[s.len()..])
        }
        _ => (name, ""),
    };
    (0..MAX_ATTEMPTS).map(move |n| {
        if n == 0 {
            return prefix(name, MAX_FILE_NAME).to_string();
        }
        let counter = format!(" ({n})");
        let room = MAX_FILE_NAME - counter.len() - ext.len();
        format!("{}{counter}{ext}", prefix(stem, room))
    })
}

/// Makes the folder `path` unless a real folder is there already; anything
/// else there (a file, a symlink) is refused.
fn make_real_dir(path: &Path) -> Result<(), StoreError> {
    match std::fs::create_dir(path) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io_err("cannot create folder", path)(e)),
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_dir() => Ok(()),
        _ => Err(StoreError::Io {
            what: "refusing to download into something that is not a plain folder:",
            path: path.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        }),
    }
}

impl Store {
    /// Creates the folder a folder download called `name` lands in: a new
    /// folder in downloads/ named `name` made safe, or the first of
    /// `name (1)`, `name (2)`, ... that does not exist.
    pub fn create_download_folder(&self, name: &str) -> Result<PathBuf, StoreError> {
        let downloads = self.home.downloads();
        let name = safe_file_name(name);
        for candidate in free_names(&name, false) {
            let path = downloads.join(local_component(&candidate));
            match std::fs::create_dir(&path) {
                Ok(()) => return Ok(path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io_err("cannot create folder", &path)(e)),
            }
        }
        Err(StoreError::Io {
            what: "no free folder name in",
            path: downloads,
            source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        })
    }

    /// Checks that `dir` can take a folder download that resumes: a plain
    /// folder (not a symlink) directly inside downloads/.
    pub fn check_download_folder(&self, dir: &Path) -> Result<(), StoreError> {
        let refused = || StoreError::Io {
            what: "a folder download must resume in its own folder inside downloads/, not",
            path: dir.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        };
        if dir.parent() != Some(self.home.downloads().as_path()) {
            return Err(refused());
        }
        let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if check_path(name).is_err() || name.contains('/') {
            return Err(refused());
        }
        make_real_dir(dir)
    }

    /// Creates the folder `rel` (a path that passes [`check_path`]) inside
    /// `root` (a folder download's own folder), and every folder on the
    /// way; each must end up a plain folder. Returns its path.
    pub fn create_folder_path(&self, root: &Path, rel: &str) -> Result<PathBuf, StoreError> {
        check_path(rel).map_err(|_| StoreError::Io {
            what: "refusing a folder path from the network:",
            path: PathBuf::from(rel),
            source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
        })?;
        let mut dir = root.to_path_buf();
        for c in rel.split('/') {
            dir.push(local_component(c));
            make_real_dir(&dir)?;
        }
        Ok(dir)
    }

    /// Opens (or resumes) the partial download of `manifest`'s content
    /// under `name` ([`Store::begin_partial`]); a file of a folder download
    /// (`place`) is offered meanwhile at the path it will have once in
    /// place (`holiday/day1/beach.jpg`), as holders of the folder list it.
    pub fn begin_partial_in(
        &self,
        manifest: std::sync::Arc<crate::manifest::Manifest>,
        name: &str,
        place: Option<&Placement>,
    ) -> Result<std::sync::Arc<Partial>, StoreError> {
        let p = self.begin_partial(manifest, name)?;
        if let Some(place) = place {
            let root = ShareRoot::home_folder(self.home.downloads());
            let path = place.dir.join(&place.name);
            if let Some(offered) = super::index::relative_name(&path, &root) {
                p.offer_at(offered);
            }
        }
        Ok(p)
    }

    /// Like [`Store::finish_partial`], but into `place` when given: the
    /// verified file is linked into its folder under its own name (or the
    /// first free variant of it), and shared from there.
    pub fn finish_partial_in(
        &self,
        p: &Partial,
        place: Option<&Placement>,
    ) -> Result<PathBuf, StoreError> {
        let Some(place) = place else {
            return self.finish_partial(p);
        };
        let landed = p.finish(&place.dir)?;
        // Landed under its name, or (that being taken) the first free
        // variant of it: in place. Linking it again under a free variant
        // would skip the one it took (`a (2).txt` beside nothing).
        let target = if p.name == place.name
            || landed.file_name() == Some(std::ffi::OsStr::new(&place.name))
        {
            landed
        } else {
            let target = link_free(&landed, &place.dir, &place.name)?;
            let _ = std::fs::remove_file(&landed);
            target
        };
        self.index_download(&target, (*p.manifest).clone())?;
        self.release_partial(&p.id);
        self.publish();
        Ok(target)
    }

    /// Copies this node's complete copy of `id` to `place` (a second path
    /// of one content in a folder, or a content already here), checks the
    /// copy against the manifest, and shares it. Blocking: reads and
    /// hashes the whole file.
    pub fn copy_into(&self, id: &ContentId, place: &Placement) -> Result<PathBuf, StoreError> {
        let local = self.complete(id).ok_or(StoreError::NotFound(*id))?;
        let mut src = local.open()?;
        // Named as a landing's: never over anything, and removed by
        // `remove_dead_landings` if this process dies before the link.
        let (mut out, tmp) =
            new_temp(&place.dir, &id.to_hex()).map_err(io_err("cannot create in", &place.dir))?;
        let copied = std::io::copy(&mut src, &mut out)
            .and_then(|_| out.flush())
            .and_then(|()| out.sync_all());
        drop(out);
        let checked = copied
            .map_err(io_err("cannot copy to", &tmp))
            .and_then(|()| {
                crate::manifest::hash_file(&tmp, |_| {}).map_err(io_err("cannot read", &tmp))
            })
            .and_then(|m| {
                if m.content_id() == *id {
                    Ok(m)
                } else {
                    Err(StoreError::Changed {
                        path: local.path.to_path_buf(),
                    })
                }
            });
        let result = checked.and_then(|m| Ok((link_free(&tmp, &place.dir, &place.name)?, m)));
        let _ = std::fs::remove_file(&tmp);
        let (target, manifest) = result?;
        self.index_download(&target, manifest)?;
        self.publish();
        Ok(target)
    }

    /// Whether the file at `path` holds the content `id`, as far as can
    /// be told without trusting its size: [`InPlace::Indexed`] when the
    /// index has it there as `id` and it is unchanged since it was hashed
    /// (size and mtime), else [`InPlace::Hashed`] when hashing it now
    /// gives `id` (index it with [`Store::index_in_place`]); a file of
    /// other bytes (or one that cannot be read) is [`InPlace::Other`].
    /// Blocking: may read the whole file.
    pub fn holds_at(&self, path: &Path, id: &ContentId) -> InPlace {
        let indexed = self.index.lock().expect("index lock").at_path(path);
        if let Some(c) = indexed {
            let unchanged = std::fs::File::open(path).is_ok_and(|f| c.check(&f).is_ok());
            if unchanged {
                return if c.id == *id {
                    InPlace::Indexed
                } else {
                    InPlace::Other
                };
            }
        }
        match crate::manifest::hash_file(path, |_| {}) {
            Ok(m) if m.content_id() == *id => InPlace::Hashed(m),
            _ => InPlace::Other,
        }
    }

    /// Indexes files found in place by [`Store::holds_at`] (one save of the
    /// index cache) and publishes them.
    pub fn index_in_place(&self, files: Vec<(PathBuf, crate::manifest::Manifest)>) {
        if files.is_empty() {
            return;
        }
        let indexed = self.index_downloads(files);
        if let Some(Err(e)) = indexed.into_iter().find(Result::is_err) {
            tracing::warn!(error = %e, "a file in place could not be indexed");
        }
        self.publish();
    }

    /// Removes from `dirs` (folders of a folder download, in downloads/)
    /// the temporary files of landings a crash cut short: only plain files
    /// named exactly as [`write_temps`] names them whose process is gone
    /// (never this one's, never a live one's, never anything else: a
    /// user's file is left alone). Returns how many were removed.
    pub fn remove_dead_landings<'a>(&self, dirs: impl IntoIterator<Item = &'a Path>) -> usize {
        let downloads = self.home.downloads();
        let mut removed = 0;
        for dir in dirs {
            if !dir.starts_with(&downloads) {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name();
                let Some(pid) = name.to_str().and_then(landing_pid) else {
                    continue;
                };
                let plain = entry.file_type().is_ok_and(|t| t.is_file());
                if plain && pid != std::process::id() as i32 && !process_alive(pid) {
                    let path = entry.path();
                    match std::fs::remove_file(&path) {
                        Ok(()) => removed += 1,
                        Err(e) => {
                            tracing::debug!(path = %path.display(), error = %e, "cannot remove a dead landing's file")
                        }
                    }
                }
            }
        }
        if removed > 0 {
            tracing::info!(
                removed,
                "removed temporary files of a folder download cut short"
            );
        }
        removed
    }

    /// Adds a finished download at `path` (under downloads/) to the index.
    fn index_download(
        &self,
        path: &Path,
        manifest: crate::manifest::Manifest,
    ) -> Result<(), StoreError> {
        self.index_downloads(vec![(path.to_path_buf(), manifest)])
            .pop()
            .unwrap_or(Ok(()))
    }

    /// Adds finished downloads (paths under downloads/) to the index under
    /// one lock, with one save of the index cache. Returns each one's
    /// outcome (a file that cannot be read is not indexed).
    fn index_downloads(
        &self,
        files: Vec<(PathBuf, crate::manifest::Manifest)>,
    ) -> Vec<Result<(), StoreError>> {
        let root = std::sync::Arc::new(ShareRoot::home_folder(self.home.downloads()));
        let mut out = Vec::with_capacity(files.len());
        let mut idx = self.index.lock().expect("index lock");
        for (path, manifest) in files {
            match std::fs::metadata(&path) {
                Ok(meta) => {
                    let file = FoundFile {
                        path,
                        size: meta.len(),
                        mtime_ns: mtime_ns(&meta),
                        root: root.clone(),
                    };
                    idx.insert(file, manifest);
                    out.push(Ok(()));
                }
                Err(e) => out.push(Err(io_err("cannot stat", &path)(e))),
            }
        }
        if let Err(e) = idx.save(&self.home.index_cache()) {
            tracing::warn!(error = %e, "cannot write the index cache");
        }
        out
    }

    /// Lands verified small files of a folder download together: each is
    /// written under a temporary name beside each of its places, all are
    /// synced at once ([`sync_together`]), then each is hard-linked into
    /// place under its name or the first free variant (never over
    /// anything), the links synced at once too, and all are indexed with
    /// one save and shared. A file is in place only complete, verified
    /// (by the caller) and durable. Returns, for each landing, where it
    /// landed or why it did not; a landing that fails leaves nothing.
    pub fn land_verified(&self, batch: &[Landing]) -> Vec<Result<Vec<PathBuf>, StoreError>> {
        let mut written: Vec<Result<Vec<PathBuf>, StoreError>> = Vec::with_capacity(batch.len());
        for l in batch {
            written.push(write_temps(l));
        }
        let dirs: BTreeSet<&Path> = (batch.iter())
            .flat_map(|l| l.places.iter().map(|p| p.dir.as_path()))
            .collect();
        if let Err(e) = sync_together(&dirs) {
            let dir = dirs.first().map(|d| d.to_path_buf()).unwrap_or_default();
            return (written.into_iter())
                .map(|w| {
                    w.and_then(|temps| {
                        temps.iter().for_each(|t| drop(std::fs::remove_file(t)));
                        Err(io_err("cannot sync", &dir)(clone_err(&e)))
                    })
                })
                .collect();
        }
        let mut landed: Vec<Result<Vec<PathBuf>, StoreError>> = Vec::with_capacity(batch.len());
        let mut to_index = Vec::new();
        for (l, w) in batch.iter().zip(written) {
            landed.push(w.and_then(|temps| link_all(l, &temps)));
            if let Some(Ok(paths)) = landed.last() {
                to_index.extend(paths.iter().map(|p| (p.clone(), l.manifest.clone())));
            }
        }
        if let Err(e) = sync_together(&dirs) {
            tracing::warn!(error = %e, "cannot sync the folders of a folder download");
        }
        let indexed = self.index_downloads(to_index);
        if let Some(Err(e)) = indexed.into_iter().find(Result::is_err) {
            tracing::warn!(error = %e, "a landed file could not be indexed");
        }
        self.publish();
        landed
    }
}

/// What [`Store::holds_at`] found at a path.
pub enum InPlace {
    /// Indexed there as the content, unchanged since.
    Indexed,
    /// Hashed now: the content, not indexed yet.
    Hashed(crate::manifest::Manifest),
    /// Another content, or unreadable.
    Other,
}

/// The start of the name of a landing's temporary file ([`write_temps`]).
const LANDING_PREFIX: &str = ".lanshare-land-";

/// The pid in the name of a landing's temporary file, exactly as
/// [`write_temps`] makes it (`.lanshare-land-ID-PID-N.tmp`: ID the
/// content id, 64 lowercase hex digits; PID and N decimal), or `None`
/// for any other name.
fn landing_pid(name: &str) -> Option<i32> {
    let rest = name.strip_prefix(LANDING_PREFIX)?.strip_suffix(".tmp")?;
    let (id, rest) = rest.split_at_checked(64)?;
    let (pid, seq) = rest.strip_prefix('-')?.split_once('-')?;
    let decimal = |s: &str| (1..=20).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit());
    let hex = id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    if !hex || !decimal(pid) || !decimal(seq) {
        return None;
    }
    pid.parse::<i32>().ok().filter(|p| *p > 0)
}

/// Whether process `pid` exists (a process we may not signal does).
fn process_alive(pid: i32) -> bool {
    // SAFETY: signal 0 sends nothing; it only checks that `pid` exists.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

/// A verified file of a folder download, ready to land
/// ([`Store::land_verified`]): its manifest, its bytes, its places.
pub struct Landing {
    pub manifest: crate::manifest::Manifest,
    pub data: super::ChunkBuf,
    pub places: Vec<Placement>,
}

fn clone_err(e: &std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), e.to_string())
}

/// A number no other temporary file of this process has taken.
static TEMP_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Creates a new temporary file in `dir` for the content of hex id
/// `id_hex`, named `.lanshare-land-ID-PID-SEQ.tmp` (what
/// [`Store::remove_dead_landings`] recognises once this process is gone),
/// with `O_EXCL` and without following a link: a name taken is skipped,
/// never opened or removed.
fn new_temp(dir: &Path, id_hex: &str) -> std::io::Result<(File, PathBuf)> {
    let mut last = std::io::Error::from(std::io::ErrorKind::AlreadyExists);
    for _ in 0..8 {
        let seq = TEMP_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = dir.join(format!(
            "{LANDING_PREFIX}{id_hex}-{}-{seq}.tmp",
            std::process::id()
        ));
        match crate::platform::open_nofollow(
            OpenOptions::new().write(true).create_new(true).mode(0o644),
            &tmp,
        ) {
            Ok(f) => return Ok((f, tmp)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = e,
            Err(e) => return Err(e),
        }
    }
    Err(last)
}

/// Writes `l`'s bytes under a new temporary name beside each of its
/// places (never over an existing file: a name taken is skipped) and
/// closes it (elsewhere than Linux, synced first: [`sync_together`] syncs
/// only folders there); on an error removes what it made. No file stays
/// open, however many places a content has.
fn write_temps(l: &Landing) -> Result<Vec<PathBuf>, StoreError> {
    let id = l.manifest.content_id().to_hex();
    let mut temps = Vec::with_capacity(l.places.len());
    for place in &l.places {
        let made = new_temp(&place.dir, &id);
        let tmp = match &made {
            Ok((_, tmp)) => tmp.clone(),
            Err(_) => place.dir.clone(),
        };
        let written = made.and_then(|(mut f, _)| {
            let wrote = f.write_all(&l.data);
            #[cfg(not(target_os = "linux"))]
            let wrote = wrote.and_then(|()| f.sync_all());
            if wrote.is_err() {
                // Ours (made with create_new): nothing else is removed.
                let _ = std::fs::remove_file(&tmp);
            }
            wrote
        });
        match written {
            Ok(()) => temps.push(tmp),
            Err(e) => {
                temps.iter().for_each(|t| drop(std::fs::remove_file(t)));
                return Err(io_err("cannot write", &tmp)(e));
            }
        }
    }
    Ok(temps)
}

/// Links each of `temps` to its place of `l` (then removes it); on an
/// error removes every temporary file and link it made.
fn link_all(l: &Landing, temps: &[PathBuf]) -> Result<Vec<PathBuf>, StoreError> {
    let mut targets = Vec::with_capacity(temps.len());
    let mut failed = None;
    for (tmp, place) in temps.iter().zip(&l.places) {
        if failed.is_none() {
            match link_free(tmp, &place.dir, &place.name) {
                Ok(t) => targets.push(t),
                Err(e) => failed = Some(e),
            }
        }
        let _ = std::fs::remove_file(tmp);
    }
    match failed {
        None => Ok(targets),
        Some(e) => {
            targets.iter().for_each(|t| drop(std::fs::remove_file(t)));
            Err(e)
        }
    }
}

/// Makes the files written in `dirs` and their entries durable together:
/// on Linux one `syncfs` of the file system they are on (every folder of
/// a folder download is on the one of downloads/), elsewhere each folder
/// synced in turn (its files were synced as they were written).
fn sync_together(dirs: &BTreeSet<&Path>) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        let mut synced = BTreeSet::new();
        for dir in dirs {
            let d = std::fs::File::open(dir)?;
            let dev = d
                .metadata()
                .map(|m| std::os::unix::fs::MetadataExt::dev(&m))?;
            if synced.insert(dev) {
                // SAFETY: `d` is an open file for the whole call.
                if unsafe { libc::syncfs(d.as_raw_fd()) } != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
    #[cfg(not(target_os = "linux"))]
    {
        for dir in dirs {
            super::durable::sync_dir(dir)?;
        }
        Ok(())
    }
}

/// Hard-links `from` into `dir` under `name` or the first free variant.
fn link_free(from: &Path, dir: &Path, name: &str) -> Result<PathBuf, StoreError> {
    for candidate in free_names(name, true) {
        let target = dir.join(candidate);
        match std::fs::hard_link(from, &target) {
            Ok(()) => return Ok(target),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io_err("cannot move download into place at", &target)(e)),
        }
    }
    Err(StoreError::Io {
        what: "no free file name in",
        path: dir.to_path_buf(),
        source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Home;

    #[test]
    fn a_folder_download_never_lands_on_anything_there() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let store = Store::open(home.clone(), Vec::new()).unwrap();
        std::fs::create_dir(home.downloads().join("holiday")).unwrap();
        std::fs::write(home.downloads().join("holiday (1)"), b"a file").unwrap();
        let made = store.create_download_folder("holiday").unwrap();
        assert_eq!(made, home.downloads().join("holiday (2)"));
        assert_eq!(
            std::fs::read(home.downloads().join("holiday (1)")).unwrap(),
            b"a file"
        );
        let inner = store.create_folder_path(&made, "day1/empty").unwrap();
        assert!(inner.is_dir());
        // A symlink on the way is never followed.
        let outside = dir.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, made.join("link")).unwrap();
        assert!(store.create_folder_path(&made, "link/x").is_err());
        assert!(!outside.join("x").exists());
        for bad in ["../x", "/etc", "a/../../b", ""] {
            assert!(store.create_folder_path(&made, bad).is_err(), "{bad}");
        }
        assert!(store.check_download_folder(&made).is_ok());
        assert!(store.check_download_folder(&outside).is_err());
        assert!(store.check_download_folder(&made.join("day1")).is_err());
    }

    /// Regression: a file of a folder download was offered under its bare
    /// file name while it downloaded, a new name beside the holders' path.
    #[test]
    fn a_file_of_a_folder_download_is_offered_at_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let store = Store::open(home.clone(), Vec::new()).unwrap();
        let src = dir.path().join("src.jpg");
        std::fs::write(&src, b"abc").unwrap();
        let manifest = std::sync::Arc::new(crate::manifest::hash_file(&src, |_| {}).unwrap());
        let dest = store.create_download_folder("holiday").unwrap();
        let place = Placement {
            dir: store.create_folder_path(&dest, "day1").unwrap(),
            name: "beach.jpg".into(),
        };
        let p = (store.begin_partial_in(manifest, "beach.jpg", Some(&place))).unwrap();
        p.write_chunk(0, b"abc").unwrap();
        store.publish();
        let inv = store.inventory();
        assert_eq!(inv.len(), 1);
        assert_eq!(inv.to_vec()[0].name, "holiday/day1/beach.jpg");
        assert!(matches!(
            inv.to_vec()[0].chunks,
            crate::chunkset::ChunkSet::Partial(_)
        ));
        assert_eq!(inv.to_vec()[0].category, crate::manifest::Category::Image);
        // Once in place, it is offered at the same path, complete.
        store.finish_partial_in(&p, Some(&place)).unwrap();
        let inv = store.inventory();
        assert_eq!(inv.to_vec()[0].name, "holiday/day1/beach.jpg");
        assert_eq!(inv.to_vec()[0].chunks, crate::chunkset::ChunkSet::Full);
    }

    /// A second path of a content is a copy made under a landing's
    /// temporary name (so a crash's leftover is cleaned like a landing's):
    /// nothing already in the folder is removed or written over, not even
    /// a file with the name copies once used.
    #[test]
    fn a_copy_touches_nothing_there_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let store = Store::open(home.clone(), Vec::new()).unwrap();
        let src = dir.path().join("src.txt");
        std::fs::write(&src, b"same bytes").unwrap();
        let manifest = std::sync::Arc::new(crate::manifest::hash_file(&src, |_| {}).unwrap());
        let id = manifest.content_id();
        let dest = store.create_download_folder("docs").unwrap();
        let first = Placement {
            dir: dest.clone(),
            name: "a.txt".into(),
        };
        let p = store
            .begin_partial_in(manifest, "a.txt", Some(&first))
            .unwrap();
        p.write_chunk(0, b"same bytes").unwrap();
        store.finish_partial_in(&p, Some(&first)).unwrap();
        let sub = store.create_folder_path(&dest, "copies").unwrap();
        let old_name = sub.join(format!(".lanshare-copy-{}.tmp", &id.to_hex()[..24]));
        std::fs::write(&old_name, b"not ours to remove").unwrap();
        std::fs::write(sub.join("b.txt"), b"a user's file").unwrap();
        let second = Placement {
            dir: sub.clone(),
            name: "b.txt".into(),
        };
        let made = store.copy_into(&id, &second).unwrap();
        assert_eq!(made, sub.join("b (1).txt"));
        assert_eq!(std::fs::read(&made).unwrap(), b"same bytes");
        assert_eq!(std::fs::read(sub.join("b.txt")).unwrap(), b"a user's file");
        assert_eq!(std::fs::read(&old_name).unwrap(), b"not ours to remove");
        let mut left: Vec<String> = std::fs::read_dir(&sub)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        let old = old_name.file_name().unwrap().to_string_lossy().into_owned();
        assert_eq!(left, [old, "b (1).txt".to_string(), "b.txt".to_string()]);
    }

    /// Leftovers of a landing cut short by a crash: only our exact name
    /// with a pid that is gone is removed; a live pid's, a look-alike
    /// name, a symlink and a folder stay.
    #[test]
    fn only_dead_landings_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let store = Store::open(home.clone(), Vec::new()).unwrap();
        let dest = store.create_download_folder("holiday").unwrap();
        let sub = store.create_folder_path(&dest, "day1").unwrap();
        let id = "ab".repeat(32);
        // Above any pid_max: never a live process.
        let dead = format!(".lanshare-land-{id}-2147483000-7.tmp");
        let live = format!(".lanshare-land-{id}-1-7.tmp");
        let mine = format!(".lanshare-land-{id}-{}-7.tmp", std::process::id());
        let keep = [
            live.clone(),
            mine,
            ".lanshare-land-notes.tmp".to_string(),
            format!(".lanshare-land-{}-2147483000-7.tmp", "AB".repeat(32)),
            format!(".lanshare-land-{id}-2147483000-7.tmp.bak"),
            format!("lanshare-land-{id}-2147483000-7.tmp"),
        ];
        for name in [&dead].into_iter().chain(&keep) {
            std::fs::write(sub.join(name), b"x").unwrap();
        }
        std::fs::write(dest.join(&dead), b"x").unwrap();
        // A symlink and a folder under a dead landing's name stay too.
        let link = format!(".lanshare-land-{id}-2147483000-8.tmp");
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), sub.join(&link)).unwrap();
        let folder = format!(".lanshare-land-{id}-2147483000-9.tmp");
        std::fs::create_dir(sub.join(&folder)).unwrap();
        // Outside downloads/: never looked at.
        std::fs::write(dir.path().join(&dead), b"x").unwrap();

        let removed = store.remove_dead_landings([dest.as_path(), sub.as_path(), dir.path()]);
        assert_eq!(removed, 2);
        assert!(!sub.join(&dead).exists() && !dest.join(&dead).exists());
        for name in keep.iter().chain([&link, &folder]) {
            assert!(
                std::fs::symlink_metadata(sub.join(name)).is_ok(),
                "{name} was removed"
            );
        }
        assert!(dir.path().join(&dead).exists());
        assert_eq!(landing_pid(&live), Some(1));
        assert_eq!(landing_pid(&format!(".lanshare-land-{id}-0-1.tmp")), None);
    }

    /// A file of the right size but other bytes is not the content; one
    /// indexed there and unchanged is, without reading it; one not
    /// indexed is hashed.
    #[test]
    fn a_file_in_place_is_checked_not_trusted_by_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let store = Store::open(home.clone(), Vec::new()).unwrap();
        let dest = store.create_download_folder("holiday").unwrap();
        let src = dir.path().join("src.txt");
        std::fs::write(&src, b"right bytes").unwrap();
        let manifest = crate::manifest::hash_file(&src, |_| {}).unwrap();
        let id = manifest.content_id();
        let wrong = dest.join("wrong.txt");
        std::fs::write(&wrong, b"wrong bytes").unwrap();
        assert!(matches!(store.holds_at(&wrong, &id), InPlace::Other));
        let right = dest.join("right.txt");
        std::fs::write(&right, b"right bytes").unwrap();
        let InPlace::Hashed(m) = store.holds_at(&right, &id) else {
            panic!("the right bytes were not recognised");
        };
        store.index_in_place(vec![(right.clone(), m)]);
        assert!(matches!(store.holds_at(&right, &id), InPlace::Indexed));
        // Changed since it was indexed (same size): hashed again, refused.
        std::fs::write(&right, b"RIGHT BYTES").unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        std::fs::File::options()
            .write(true)
            .open(&right)
            .unwrap()
            .set_modified(later)
            .unwrap();
        assert!(matches!(store.holds_at(&right, &id), InPlace::Other));
        assert!(matches!(
            store.holds_at(&dest.join("none"), &id),
            InPlace::Other
        ));
    }

    /// Regression: a file of a folder whose name is taken (a file of
    /// other bytes there) landed as `name (2)`, the `(1)` it took first
    /// removed again.
    #[test]
    fn a_taken_name_gives_the_first_free_variant() {
        let dir = tempfile::tempdir().unwrap();
        let home = Home::new(dir.path());
        let store = Store::open(home.clone(), Vec::new()).unwrap();
        let manifest = std::sync::Arc::new(crate::manifest::manifest_of(b"abc", 1 << 20));
        let dest = store.create_download_folder("holiday").unwrap();
        std::fs::write(dest.join("beach.jpg"), b"xyz").unwrap();
        let place = Placement {
            dir: dest.clone(),
            name: "beach.jpg".into(),
        };
        let p = (store.begin_partial_in(manifest, "beach.jpg", Some(&place))).unwrap();
        p.write_chunk(0, b"abc").unwrap();
        let landed = store.finish_partial_in(&p, Some(&place)).unwrap();
        assert_eq!(landed, dest.join("beach (1).jpg"));
        assert_eq!(std::fs::read(&landed).unwrap(), b"abc");
        assert_eq!(std::fs::read(dest.join("beach.jpg")).unwrap(), b"xyz");
    }

    #[test]
    fn free_names_keep_extensions_of_files_only() {
        let f: Vec<String> = free_names("a.b.txt", true).take(2).collect();
        assert_eq!(f, ["a.b.txt", "a.b (1).txt"]);
        let d: Vec<String> = free_names("my.photos", false).take(2).collect();
        assert_eq!(d, ["my.photos", "my.photos (1)"]);
        let long = "é".repeat(200);
        assert!(
            free_names(&long, false)
                .take(3)
                .all(|n| n.len() <= MAX_FILE_NAME)
        );
        assert_eq!(local_component(".lanshare-x"), "_.lanshare-x");
    }
}
