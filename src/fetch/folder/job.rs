//! The description of a folder download: what `fetch` resolved to
//! ([`FolderWant`]), and [`FolderJob`], the plain, serializable job made
//! from what the holders list by the versions rule, recorded in the job
//! list and run again after a restart. Does no I/O but choosing its folder
//! through the store ([`FolderJob::prepare`]).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::dict::FolderListing;
use crate::fetch::FetchError;
use crate::id::{ContentId, NodeId};
use crate::resolve::file_name;
use crate::store::{FolderJobRecord, Store};

/// The copies of a folder (a content's second and later paths) may add
/// this many bytes, or as many as its distinct contents hold if more.
pub const COPY_ALLOWANCE: u64 = 64 << 20;

/// What a copy costs against the allowance at least (an empty file
/// still takes an inode and a block): at most 16,384 copies of empty or
/// tiny files within [`COPY_ALLOWANCE`].
const COPY_MIN_COST: u64 = 4 << 10;

/// The copies rule: each content keeps its first path (the one most
/// holders list, then the first in order); its other paths are copies,
/// admitted most-listed first, then in path order, while the bytes of
/// the copies admitted stay within [`COPY_ALLOWANCE`] or the bytes of
/// the distinct contents, whichever is more. So a holder that lists one
/// real content at a thousand paths cannot make the folder a thousand
/// times its size, nor make it a million empty files; a copy listed at a
/// size other than its first path's is left out (one content has one
/// size). Returns the entries kept, sorted by path.
fn bound_copies(chosen: Vec<(FolderEntry, usize)>, folder: &str) -> Vec<FolderEntry> {
    let mut by_id: BTreeMap<ContentId, Vec<(FolderEntry, usize)>> = BTreeMap::new();
    for c in chosen {
        by_id.entry(c.0.id).or_default().push(c);
    }
    let distinct: u64 = by_id.values().map(|v| v[0].0.size).sum();
    let allowance = distinct.max(COPY_ALLOWANCE);
    let mut kept = Vec::new();
    let mut copies = Vec::new();
    let mut left_out = 0usize;
    for mut paths in by_id.into_values() {
        paths.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.path.cmp(&b.0.path)));
        let mut paths = paths.into_iter();
        let Some((first, _)) = paths.next() else {
            continue;
        };
        // One size per content, its first path's: a copy listed at another
        // size is a claim that cannot be true of the same bytes.
        for (e, n) in paths {
            if e.size == first.size {
                copies.push((e, n));
            } else {
                left_out += 1;
            }
        }
        kept.push(first);
    }
    copies.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.path.cmp(&b.0.path)));
    let mut used = 0u64;
    for (e, _) in copies {
        // A file costs at least a block of the disk, even an empty one.
        let cost = e.size.max(COPY_MIN_COST);
        if used.saturating_add(cost) <= allowance {
            used += cost;
            kept.push(e);
        } else {
            left_out += 1;
        }
    }
    if left_out > 0 {
        tracing::warn!(
            folder,
            left_out,
            "leaving out copies of contents listed at many paths of the folder (more bytes of copies than the folder's own)"
        );
    }
    kept.sort_by(|a, b| a.path.cmp(&b.path));
    kept
}

/// What `fetch` resolved to when the name is a folder's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FolderWant {
    /// The folder's path as the network spells it (`holiday`,
    /// `holiday/day1`).
    pub path: String,
}

/// One file of a folder download.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderEntry {
    /// Its path inside the folder (`day1/beach.jpg`), checked by
    /// [`check_path`] before anything is made from it.
    pub path: String,
    pub id: ContentId,
    pub size: u64,
}

/// A folder download, as a plain description that can be saved and run
/// again later (it resumes into `dest`, keeping the files in place).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderJob {
    /// The folder's path on the network (`holiday`); its last component
    /// names the folder made in downloads/.
    pub folder: String,
    pub entries: Vec<FolderEntry>,
    /// Empty folders, by their path inside the folder.
    pub empty_dirs: Vec<String>,
    /// The folder in downloads/ it lands in, once chosen
    /// ([`FolderJob::prepare`]).
    pub dest: Option<PathBuf>,
}

impl FolderJob {
    /// The job for `folder` from what the holders list. The versions rule:
    /// every path any holder lists is fetched; where holders list
    /// different contents for one path, the content listed by the most
    /// holders wins, ties going to the lowest content id; then the copies
    /// rule ([`bound_copies`]) bounds the bytes of a content's other paths.
    /// Entries and folders come sorted by path.
    pub fn from_listing(folder: &str, listing: &FolderListing) -> FolderJob {
        // path -> (content, size) -> holders
        let mut versions: BTreeMap<&str, BTreeMap<(ContentId, u64), BTreeSet<NodeId>>> =
            BTreeMap::new();
        for f in &listing.files {
            versions
                .entry(&f.path)
                .or_default()
                .entry((f.id, f.size))
                .or_default()
                .insert(f.holder);
        }
        let chosen: Vec<(FolderEntry, usize)> = versions
            .into_iter()
            .filter_map(|(path, v)| {
                // Most holders first, then the lowest id (BTreeMap order).
                let ((id, size), holders) = v
                    .into_iter()
                    .rev()
                    .max_by_key(|(_, holders)| holders.len())?;
                let entry = FolderEntry {
                    path: path.to_string(),
                    id,
                    size,
                };
                Some((entry, holders.len()))
            })
            .collect();
        let entries = bound_copies(chosen, folder);
        FolderJob {
            folder: folder.to_string(),
            entries,
            empty_dirs: listing.empty_dirs.iter().cloned().collect(),
            dest: None,
        }
    }

    /// The job as the job list records it (once `dest` is chosen).
    pub fn record(&self, query: &str, dest: &std::path::Path) -> FolderJobRecord {
        FolderJobRecord {
            query: query.to_string(),
            folder: self.folder.clone(),
            dest: dest.to_path_buf(),
            files: (self.entries.iter())
                .map(|e| (e.path.clone(), e.id.to_hex(), e.size))
                .collect(),
            empty_dirs: self.empty_dirs.clone(),
            started: crate::store::jobs::now_secs(),
        }
    }

    /// The job a recorded folder download describes (entries whose id does
    /// not parse are left out: the list file was edited by hand).
    pub fn from_record(r: &FolderJobRecord) -> FolderJob {
        FolderJob {
            folder: r.folder.clone(),
            entries: (r.files.iter())
                .filter_map(|(path, id, size)| {
                    Some(FolderEntry {
                        path: path.clone(),
                        id: ContentId(crate::id::from_hex::<32>(id)?),
                        size: *size,
                    })
                })
                .collect(),
            empty_dirs: r.empty_dirs.clone(),
            dest: Some(r.dest.clone()),
        }
    }

    /// The name of the folder made in downloads/.
    pub fn name(&self) -> &str {
        file_name(&self.folder)
    }

    /// The bytes of every file.
    pub fn total_bytes(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    /// Chooses (and creates) the folder the job lands in, unless it has
    /// one already, which must then be a folder of downloads/ (a resumed
    /// job). Call it before saving the job to resume it later.
    pub fn prepare(&mut self, store: &Store) -> Result<PathBuf, FetchError> {
        let dest = match &self.dest {
            Some(d) => {
                store.check_download_folder(d)?;
                d.clone()
            }
            None => store.create_download_folder(self.name())?,
        };
        self.dest = Some(dest.clone());
        Ok(dest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_of_one_content_cannot_inflate_the_folder() {
        let entry = |path: &str, b: u8, size: u64| FolderEntry {
            path: path.to_string(),
            id: ContentId([b; 32]),
            size,
        };
        let big = 40 << 20;
        let mut chosen = vec![(entry("own.txt", 2, 5), 2)];
        // A real 40 MiB content listed at 10 paths by one holder, and at
        // one more path by two.
        for i in 0..10 {
            chosen.push((entry(&format!("x/{i}.bin"), 1, big), 1));
        }
        chosen.push((entry("z/shared.bin", 1, big), 2));
        // Many empty files (one content): copies of 0 bytes cost nothing.
        for i in 0..100 {
            chosen.push((entry(&format!("e/{i:03}"), 0, 0), 1));
        }
        let kept = bound_copies(chosen, "holiday");
        let paths: Vec<&str> = kept.iter().map(|e| e.path.as_str()).collect();
        // The path two holders list is the content's first; the 64 MiB
        // allowance (more than the folder's own 40 MiB) admits one copy.
        assert!(paths.contains(&"z/shared.bin") && paths.contains(&"x/0.bin"));
        assert!(!paths.contains(&"x/1.bin"), "{paths:?}");
        assert_eq!(kept.len(), 1 + 2 + 100);
        assert!(paths.windows(2).all(|w| w[0] < w[1]), "sorted by path");
    }

    #[test]
    fn copies_at_another_size_or_by_the_million_are_left_out() {
        let entry = |path: String, size: u64| FolderEntry {
            path,
            id: ContentId([1; 32]),
            size,
        };
        // The content's first path (two holders list it) says 1 MiB; a
        // hostile holder lists it at 0 bytes under 100,000 more paths,
        // and at 1 MiB under 100,000 others.
        let mut chosen = vec![(entry("a".into(), 1 << 20), 2)];
        for i in 0..100_000 {
            chosen.push((entry(format!("b/{i:06}"), 0), 1));
            chosen.push((entry(format!("c/{i:06}"), 1 << 20), 1));
        }
        let kept = bound_copies(chosen, "holiday");
        assert!(
            kept.iter().all(|e| e.size == 1 << 20),
            "a copy at a lied size was kept"
        );
        // 64 MiB of copies at 1 MiB each.
        assert_eq!(kept.len(), 1 + 64);
        // Empty copies are charged a block each: at most 16,384 of them.
        let empty = |path: String| {
            (
                FolderEntry {
                    path,
                    id: ContentId([2; 32]),
                    size: 0,
                },
                1,
            )
        };
        let kept = bound_copies(
            (0..100_000).map(|i| empty(format!("e/{i:06}"))).collect(),
            "x",
        );
        assert_eq!(kept.len(), 1 + 16_384);
    }
}
