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
    /// holders wins, ties going to the lowest content id. Entries and
    /// folders come sorted by path.
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
        let entries = versions
            .into_iter()
            .filter_map(|(path, v)| {
                // Most holders first, then the lowest id (BTreeMap order).
                let ((id, size), _) = v
                    .into_iter()
                    .rev()
                    .max_by_key(|(_, holders)| holders.len())?;
                Some(FolderEntry {
                    path: path.to_string(),
                    id,
                    size,
                })
            })
            .collect();
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
