//! The walk of the shared folders: every file under each root with its
//! size, mtime and root (shared by all its files, not copied), and the
//! empty folders. Reads only metadata; never hashes, never touches the
//! index.

use std::collections::BTreeSet;
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

/// What a walk found: the files, sorted by path (each once), and the
/// inventory names of the empty folders (those holding no file and no
/// folder).
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
    let mut files = found.files;
    // By path, the most specific root (the longest) first, then one of
    // each path: sorted in place, no map of every path.
    let root_len = |f: &FoundFile| f.root.path.as_os_str().len();
    files.sort_unstable_by(|a, b| {
        a.path
            .cmp(&b.path)
            .then_with(|| root_len(b).cmp(&root_len(a)))
    });
    files.dedup_by(|later, kept| later.path == kept.path);
    files.shrink_to_fit();
    Walk {
        files,
        empty_dirs: found.empty_dirs,
    }
}

/// The files a walk found so far (a path reached from several roots
/// comes once per root), and the empty folders' names.
#[derive(Default)]
struct Found {
    files: Vec<FoundFile>,
    empty_dirs: BTreeSet<String>,
}

impl Found {
    fn consider(&mut self, path: PathBuf, meta: &std::fs::Metadata, root: &Arc<ShareRoot>) {
        self.files.push(FoundFile {
            path,
            size: meta.len(),
            mtime_ns: mtime_ns(meta),
            root: root.clone(),
        });
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A file under several roots comes once, with the most specific root
    /// (`share shared/a --comment` wins over shared/), and the files come
    /// sorted by path, as the index looks them up.
    #[test]
    fn a_file_under_several_roots_comes_once_with_the_most_specific_root() {
        let dir = tempfile::tempdir().unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir_all(shared.join("a")).unwrap();
        std::fs::write(shared.join("a/x.txt"), b"x").unwrap();
        std::fs::write(shared.join("b.txt"), b"b").unwrap();
        std::fs::write(shared.join("a/c.txt"), b"c").unwrap();
        let inner = ShareRoot {
            comment: "inner".into(),
            ..ShareRoot::plain(shared.join("a"))
        };
        for roots in [
            [ShareRoot::home_folder(shared.clone()), inner.clone()],
            [inner.clone(), ShareRoot::home_folder(shared.clone())],
        ] {
            let w = walk(&roots, false);
            let got: Vec<(&Path, &str)> = w
                .files
                .iter()
                .map(|f| {
                    (
                        f.path.strip_prefix(&shared).unwrap(),
                        f.root.comment.as_str(),
                    )
                })
                .collect();
            assert_eq!(
                got,
                [
                    (Path::new("a/c.txt"), "inner"),
                    (Path::new("a/x.txt"), "inner"),
                    (Path::new("b.txt"), ""),
                ]
            );
        }
    }
}
