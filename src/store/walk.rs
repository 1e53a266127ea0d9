//! The walk of the shared folders: every file under each root with its
//! size, mtime and root (shared by all its files, not copied), and the
//! empty folders. Reads only metadata; never hashes, never touches the
//! index.

use std::collections::{BTreeSet, HashMap};
use std::fs::Metadata;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::index::{ShareRoot, relative_name};

/// A file found by a walk. Its root is shared by every file under it.
#[derive(Clone, Debug)]
pub struct FoundFile {
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: u64,
    pub root: Arc<ShareRoot>,
}

pub fn mtime_ns(meta: &Metadata) -> u64 {
    super::system_time_ns(meta.modified()) as u64
}

/// Files under lanshare's own control that are never shared.
fn is_internal(name: &std::ffi::OsStr) -> bool {
    let n = name.as_encoded_bytes();
    n.starts_with(b".lanshare")
}

/// What a walk found: the files, and the inventory names of the empty
/// folders (those holding no file and no folder).
#[derive(Debug, Default)]
pub struct Walk {
    pub files: Vec<FoundFile>,
    pub empty_dirs: BTreeSet<String>,
}

/// Walks every root. A file reached from several roots keeps the most
/// specific root (the longest path), so `share shared/x --comment` wins over
/// shared/ itself. Directory symlinks are not followed (no loops). A
/// symlink to a file is followed when its target lies inside the same root
/// (after resolving every link), or anywhere with `follow_symlinks`: an
/// unpacked archive can hold links to `~/.ssh/id_ed25519` and the like.
pub fn walk(roots: &[ShareRoot], follow_symlinks: bool) -> Walk {
    let mut found = Found::default();
    for root in roots {
        let root = &Arc::new(root.clone());
        // The root itself is followed even when it is a symlink.
        let Ok(meta) = std::fs::metadata(&root.path) else {
            continue;
        };
        if meta.is_file() {
            found.consider(root.path.clone(), &meta, root);
            continue;
        }
        if !meta.is_dir() {
            continue;
        }
        // Where the root really is, to tell links that stay inside it.
        let real_root = if follow_symlinks {
            None
        } else {
            match std::fs::canonicalize(&root.path) {
                Ok(p) => Some(p),
                Err(_) => continue,
            }
        };
        walk_dir(root, real_root.as_deref(), &mut found);
    }
    Walk {
        files: found
            .files
            .into_iter()
            .map(|(path, (size, mtime_ns, root))| FoundFile {
                path,
                size,
                mtime_ns,
                root,
            })
            .collect(),
        empty_dirs: found.empty_dirs,
    }
}

/// The files a walk found so far, by path (size, mtime and root: the path
/// is kept once), and the empty folders' names.
#[derive(Default)]
struct Found {
    files: HashMap<PathBuf, (u64, u64, Arc<ShareRoot>)>,
    empty_dirs: BTreeSet<String>,
}

impl Found {
    /// Keeps `path` under `root`, unless a more specific root (a longer
    /// path) already has it.
    fn consider(&mut self, path: PathBuf, meta: &std::fs::Metadata, root: &Arc<ShareRoot>) {
        let keep_old = self
            .files
            .get(&path)
            .is_some_and(|(_, _, old)| old.path.as_os_str().len() >= root.path.as_os_str().len());
        if !keep_old {
            let file = (meta.len(), mtime_ns(meta), root.clone());
            self.files.insert(path, file);
        }
    }
}

/// Walks the folder `root` (at most 64 levels deep). With `real_root`,
/// file symlinks are followed only when they lead inside it.
fn walk_dir(root: &Arc<ShareRoot>, real_root: Option<&Path>, found: &mut Found) {
    let mut stack = vec![(root.path.clone(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut empty = true;
        for entry in entries.flatten() {
            if is_internal(&entry.file_name()) {
                continue;
            }
            let Ok(ft) = entry.file_type() else {
                continue;
            };
            if ft.is_dir() {
                empty = false;
                if depth < 64 {
                    stack.push((entry.path(), depth + 1));
                }
                continue;
            }
            if let Some(meta) = file_meta(&entry, ft, real_root) {
                empty = false;
                found.consider(entry.path(), &meta, root);
            }
        }
        if empty && let Some(name) = relative_name(&dir, root) {
            found.empty_dirs.insert(name);
        }
    }
}

/// The metadata of a file entry: a symlink is followed to a file, never
/// to a folder (no loops), and with `real_root` only when it leads inside
/// it; a regular file is stat'ed relative to its folder. `None` for
/// anything else.
fn file_meta(
    entry: &std::fs::DirEntry,
    ft: std::fs::FileType,
    real_root: Option<&Path>,
) -> Option<std::fs::Metadata> {
    let meta = if ft.is_symlink() {
        if let Some(real_root) = real_root {
            let inside = std::fs::canonicalize(entry.path())
                .is_ok_and(|target| target.starts_with(real_root));
            if !inside {
                tracing::debug!(path = %entry.path().display(), "not following a symlink out of the shared folder (see up --follow-symlinks)");
                return None;
            }
        }
        std::fs::metadata(entry.path())
    } else if ft.is_file() {
        entry.metadata()
    } else {
        return None;
    };
    meta.ok().filter(|m| m.is_file())
}
