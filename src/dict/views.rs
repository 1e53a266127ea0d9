//! What the dictionary answers, joining the peer table and the content
//! index: the holders a download asks ([`Holder`]), name resolution (paths
//! and folders included), what each holder lists under a folder
//! ([`FolderListing`]), and the views `ls` and `peers` show (a row per
//! content, and one per top-level folder). Read-only.

use std::collections::{BTreeSet, HashMap};

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use super::Dict;
use crate::api::{ContentKind, ContentView, HolderView, PeerView};
use crate::chunkset::ChunkSet;
use crate::id::{ContentId, NodeId};
use crate::manifest::{CHUNK_SIZE, Category, Manifest};
use crate::resolve::{self, Resolution};
use crate::wire::EntryPath;

/// One file a holder lists under a folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// The path inside the folder.
    pub path: String,
    pub id: ContentId,
    pub size: u64,
    pub holder: NodeId,
}

/// What the online peers list under one folder ([`Dict::folder_listing`]).
#[derive(Clone, Debug, Default)]
pub struct FolderListing {
    pub files: Vec<Listed>,
    /// Empty folders, by their path inside the folder.
    pub empty_dirs: BTreeSet<String>,
    /// Whether any holder lists the folder (a file in it, or the folder
    /// itself, empty).
    pub found: bool,
}

/// One row of `ls` ([`Dict::ls_rows`]): a content, whose view is built
/// only when it is sent, or a top-level folder (a few per network), whole.
#[derive(Debug)]
pub enum LsRow {
    /// A content, shown by its first name.
    Content(ContentId),
    /// A content at another of its paths (one row per path).
    Path(ContentId, Box<str>),
    Folder(Box<ContentView>),
}

/// A file inside a top-level folder ([`Dict::folder_views`]).
struct FolderFile {
    /// Its folder, an index into [`FolderFiles::tops`].
    top: u32,
    /// Its path, in [`FolderFiles::paths`].
    path: std::ops::Range<usize>,
    id: ContentId,
    size: u64,
}

/// Every file inside a top-level folder, with the folders' names.
struct FolderFiles {
    tops: Vec<String>,
    paths: String,
    files: Vec<FolderFile>,
}

/// Most names one content's view lists (`ls --json` "names"): a content
/// at many paths is listed in full by its rows, one per path.
const VIEW_NAMES: usize = 16;

/// A content and where its sort key lies in [`SortedContents::keys`].
#[derive(Debug)]
struct Keyed {
    key: std::ops::Range<usize>,
    id: ContentId,
    /// The path shown when it is not the content's first name.
    alt: Option<Box<str>>,
}

/// Contents in `ls` order, with their sort keys.
struct SortedContents {
    /// Every row's key (its path, lower case), one after another.
    keys: String,
    order: Vec<Keyed>,
}

/// The rows of `ls`, in order ([`Dict::ls_rows`]): the contents' order,
/// held compactly (an id and a key's place per content), merged with the
/// folder rows as they are taken.
pub struct LsRows {
    keys: String,
    contents: std::vec::IntoIter<Keyed>,
    folders: std::iter::Peekable<std::vec::IntoIter<(String, ContentView)>>,
}

impl Iterator for LsRows {
    type Item = LsRow;

    fn next(&mut self) -> Option<LsRow> {
        let Some(next) = self.contents.as_slice().first() else {
            return self.folders.next().map(|(_, v)| LsRow::Folder(Box::new(v)));
        };
        // A folder just before the contents that sort after it.
        let key = &self.keys[next.key.clone()];
        if let Some((_, v)) = self.folders.next_if(|(fkey, _)| fkey.as_str() <= key) {
            return Some(LsRow::Folder(Box::new(v)));
        }
        self.contents.next().map(|k| match k.alt {
            None => LsRow::Content(k.id),
            Some(path) => LsRow::Path(k.id, path),
        })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let n = self.contents.len() + self.folders.len();
        (n, Some(n))
    }
}

impl ExactSizeIterator for LsRows {}

/// A peer that holds (part of) a content, as the fetcher needs it.
#[derive(Clone, Debug)]
pub struct Holder {
    pub id: NodeId,
    pub name: String,
    /// The address shown in logs.
    pub addr: SocketAddr,
    /// Every known address, best first.
    pub addrs: Vec<SocketAddr>,
    pub chunks: ChunkSet,
}

impl Dict {
    /// Online holders of `id`.
    pub fn holders(&self, id: &ContentId) -> Vec<Holder> {
        let Some(holders) = self.contents.with(id, |c| {
            c.holders
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect::<Vec<(NodeId, ChunkSet)>>()
        }) else {
            return Vec::new();
        };
        holders
            .into_iter()
            .filter_map(|(nid, chunks)| {
                self.peers
                    .with(&nid, |p| {
                        p.online.then(|| Holder {
                            id: nid,
                            name: p.name.clone(),
                            addr: p.addr(),
                            addrs: p.addrs(),
                            chunks,
                        })
                    })
                    .flatten()
            })
            .collect()
    }

    /// Resolves a user's query against what the network offers plus `extra`
    /// (this node's own contents).
    pub fn resolve(&self, query: &str, extra: &[(ContentId, String)]) -> Resolution {
        let mut all: Vec<(ContentId, Vec<String>)> = self
            .contents
            .map_all(|id, c| Some((*id, c.names.iter().map(String::from).collect())));
        for (id, name) in extra {
            match all.iter_mut().find(|(i, _)| i == id) {
                Some((_, names)) => names.push(name.clone()),
                None => all.push((*id, vec![name.clone()])),
            }
        }
        resolve::resolve(
            query,
            all.iter()
                .map(|(id, names)| (*id, names.iter().map(String::as_str))),
        )
    }

    /// The view `ls` shows of one content.
    pub fn view(&self, id: &ContentId, local: bool) -> Option<ContentView> {
        let c = self.contents.content(id)?;
        let total = Manifest::chunk_count_for(c.size, CHUNK_SIZE) as u32;
        let mut holders: Vec<HolderView> = self
            .holders(id)
            .into_iter()
            .map(|h| HolderView {
                name: h.name,
                addr: h.addr.to_string(),
                chunks: h.chunks.count(total),
                total,
            })
            .collect();
        holders.sort_by(|a, b| a.name.cmp(&b.name).then(a.addr.cmp(&b.addr)));
        let complete = holders.iter().filter(|h| h.chunks >= h.total).count() as u32;
        Some(ContentView {
            kind: ContentKind::File,
            files: 0,
            id: id.to_hex(),
            name: c.names.first().unwrap_or_default().to_string(),
            // Every path has a row of its own; a view lists a few names.
            names: c.names.iter().take(VIEW_NAMES).map(String::from).collect(),
            size: c.size,
            category: c.category,
            comment: c.comment.into(),
            complete,
            partial: holders.len() as u32 - complete,
            holders,
            local,
        })
    }

    /// Every content with at least one online holder, filtered, sorted by
    /// name (a content at several paths comes once, at its first row).
    pub fn list(&self, query: Option<&str>, category: Option<Category>) -> Vec<ContentId> {
        let mut seen = std::collections::HashSet::new();
        self.sorted_contents(query, category)
            .order
            .iter()
            .filter_map(|k| seen.insert(k.id).then_some(k.id))
            .collect()
    }

    /// One row per path of every content with an online holder (a
    /// content at several paths is listed at each), filtered by the row's
    /// path or the content's id, with its sort key (the path, lower case),
    /// compactly: the keys one after another in one string, each row with
    /// its key's place in it. Sorted in place: no copy of the list is made
    /// while sorting.
    fn sorted_contents(&self, query: Option<&str>, category: Option<Category>) -> SortedContents {
        let mut keys = String::new();
        let mut order: Vec<Keyed> = Vec::new();
        self.contents.map_all(|id, c| {
            if category.is_some_and(|cat| c.category != cat) {
                return None::<()>;
            }
            let by_id = query.is_some_and(|q| resolve::matches_filter(q, id, std::iter::empty()));
            let first = c.names.first();
            // Empty-folder entries show in their folder's row only.
            for n in c.names.iter().filter(|n| !n.ends_with('/')) {
                if query.is_none_or(|q| by_id || resolve::matches_filter(q, id, std::iter::once(n)))
                {
                    let start = keys.len();
                    keys.push_str(&n.to_lowercase());
                    order.push(Keyed {
                        key: start..keys.len(),
                        id: *id,
                        alt: (Some(n) != first).then(|| Box::from(n)),
                    });
                }
            }
            None
        });
        keys.shrink_to_fit();
        order.sort_unstable_by(|a, b| {
            keys[a.key.clone()]
                .cmp(&keys[b.key.clone()])
                .then(a.id.cmp(&b.id))
        });
        let mut held: HashMap<ContentId, bool> = HashMap::new();
        order.retain(|k| {
            *held
                .entry(k.id)
                .or_insert_with(|| !self.holders(&k.id).is_empty())
        });
        order.shrink_to_fit();
        SortedContents { keys, order }
    }

    /// The rows of `ls`, in order, without building the contents' views:
    /// every content [`Dict::list`] gives and, without a category, one row
    /// per top-level folder ([`Dict::folder_views`]), sorted by name (lower
    /// case), a folder just before its files. [`Dict::ls_views`] builds
    /// the views of a few rows at a time.
    pub fn ls_rows(&self, query: Option<&str>, category: Option<Category>) -> LsRows {
        // The folders first: their transient map is gone before the
        // contents' keys are made.
        let mut folders: Vec<(String, ContentView)> = match category {
            Some(_) => Vec::new(),
            None => self
                .folder_views(query)
                .into_iter()
                .map(|v| (v.name.to_lowercase(), v))
                .collect(),
        };
        // Stable: folders of the same key keep their order.
        folders.sort_by(|a, b| a.0.cmp(&b.0));
        let SortedContents { keys, order } = self.sorted_contents(query, category);
        LsRows {
            keys,
            contents: order.into_iter(),
            folders: folders.into_iter().peekable(),
        }
    }

    /// The views of `rows` (a page of [`Dict::ls_rows`]); `local` says
    /// whether this node holds a content complete. A content gone since
    /// is left out.
    pub fn ls_views(
        &self,
        rows: impl IntoIterator<Item = LsRow>,
        local: impl Fn(&ContentId) -> bool,
    ) -> Vec<ContentView> {
        rows.into_iter()
            .filter_map(|row| match row {
                LsRow::Content(id) => self.view(&id, local(&id)),
                // Its own path only: a content at many paths would
                // otherwise repeat all of them in every one of its rows.
                LsRow::Path(id, path) => self.view(&id, local(&id)).map(|mut v| {
                    v.names = vec![path.to_string()];
                    v.name = path.into();
                    v
                }),
                LsRow::Folder(v) => Some(*v),
            })
            .collect()
    }

    /// One row per top-level folder (the first component of a path with
    /// several) with at least one online holder: its file count, total
    /// size, and each holder's share of it. `query` filters by folder name
    /// (a case-insensitive substring). A path listed for several contents
    /// counts once, for the smallest content id.
    pub fn folder_views(&self, query: Option<&str>) -> Vec<ContentView> {
        let FolderFiles {
            tops,
            paths,
            mut files,
        } = self.folder_files(query);
        // By folder name, then path, then id: each path's first is kept.
        files.sort_unstable_by(|a, b| {
            tops[a.top as usize]
                .cmp(&tops[b.top as usize])
                .then_with(|| paths[a.path.clone()].cmp(&paths[b.path.clone()]))
                .then(a.id.cmp(&b.id))
        });
        files.dedup_by(|b, a| a.top == b.top && paths[a.path.clone()] == paths[b.path.clone()]);
        drop(paths);
        files
            .chunk_by(|a, b| a.top == b.top)
            .filter_map(|run| self.folder_view(tops[run[0].top as usize].clone(), run))
            .collect()
    }

    /// Every file path inside a top-level folder (whose name matches
    /// `query`), compactly: the paths one after another in one string.
    fn folder_files(&self, query: Option<&str>) -> FolderFiles {
        let q = query.map(str::to_lowercase);
        let mut tops: Vec<String> = Vec::new();
        let mut top_index: HashMap<String, u32> = HashMap::new();
        let mut paths = String::new();
        let mut files: Vec<FolderFile> = Vec::new();
        // One pass, copying only the paths inside folders.
        self.contents.map_all(|id, c| {
            for n in c.names.iter().filter(|n| !n.ends_with('/')) {
                let Some(top) = resolve::folders_of(n).next() else {
                    continue;
                };
                let top = match top_index.get(top) {
                    Some(i) => *i,
                    None => {
                        if q.as_ref().is_some_and(|q| !top.to_lowercase().contains(q)) {
                            continue;
                        }
                        let i = tops.len() as u32;
                        tops.push(top.to_string());
                        top_index.insert(top.to_string(), i);
                        i
                    }
                };
                let start = paths.len();
                paths.push_str(n);
                files.push(FolderFile {
                    top,
                    path: start..paths.len(),
                    id: *id,
                    size: c.size,
                });
            }
            None::<()>
        });
        FolderFiles { tops, paths, files }
    }

    /// The row of `folder`, whose files are `files` (a content per path).
    fn folder_view(&self, folder: String, files: &[FolderFile]) -> Option<ContentView> {
        let mut ids: Vec<(ContentId, u64)> = files.iter().map(|f| (f.id, f.size)).collect();
        ids.sort_unstable();
        ids.dedup_by_key(|(id, _)| *id);
        let total: u32 = ids
            .iter()
            .map(|(_, size)| Manifest::chunk_count_for(*size, CHUNK_SIZE) as u32)
            .sum();
        // holder -> (view, contents held complete)
        let mut by_holder: HashMap<NodeId, (HolderView, usize)> = HashMap::new();
        for (id, size) in &ids {
            let n = Manifest::chunk_count_for(*size, CHUNK_SIZE) as u32;
            for h in self.holders(id) {
                let held = h.chunks.count(n);
                let (v, full) = by_holder.entry(h.id).or_insert_with(|| {
                    let view = HolderView {
                        name: h.name.clone(),
                        addr: h.addr.to_string(),
                        chunks: 0,
                        total,
                    };
                    (view, 0)
                });
                v.chunks += held;
                *full += usize::from(held >= n);
            }
        }
        if by_holder.is_empty() {
            return None;
        }
        let complete = by_holder
            .values()
            .filter(|(_, full)| *full == ids.len())
            .count() as u32;
        let mut holders: Vec<HolderView> = by_holder.into_values().map(|(v, _)| v).collect();
        holders.sort_by(|a, b| a.name.cmp(&b.name).then(a.addr.cmp(&b.addr)));
        Some(ContentView {
            kind: ContentKind::Folder,
            id: String::new(),
            names: vec![folder.clone()],
            name: folder,
            size: files.iter().map(|f| f.size).sum(),
            category: Category::Other,
            comment: String::new(),
            complete,
            partial: holders.len() as u32 - complete,
            holders,
            local: false,
            files: files.len() as u32,
        })
    }

    /// What every online peer lists under `folder` (a folder's path as the
    /// network spells it): each file with its content and holder, and the
    /// empty folders, all by their path inside `folder`.
    pub fn folder_listing(&self, folder: &str) -> FolderListing {
        let prefix = format!("{folder}/");
        let mut out = FolderListing::default();
        for peer in self.peers.online() {
            let Some(inv) = self.contents.inventory(&peer.id) else {
                continue;
            };
            // Every path of every entry (a content at several paths is
            // listed at each), but only those that pass as paths
            // (wire::check_path), so every path here is relative and
            // bounded.
            for e in inv.iter() {
                for path in e.paths() {
                    match path {
                        EntryPath::Folder(path) => {
                            if let Some(dir) = path.strip_prefix(&prefix) {
                                out.empty_dirs.insert(dir.to_string());
                                out.found = true;
                            }
                            // The folder itself, shared empty.
                            out.found |= path == folder;
                        }
                        EntryPath::File(path) => {
                            if let Some(rel) = path.strip_prefix(&prefix) {
                                out.found = true;
                                out.files.push(Listed {
                                    path: rel.to_string(),
                                    id: e.id,
                                    size: e.size,
                                    holder: peer.id,
                                });
                            }
                        }
                    }
                }
            }
        }
        out
    }

    /// The view `peers` shows, at `now` (`wall`: the same moment on the
    /// wall clock, for the last-seen time).
    pub fn peer_views(&self, now: Instant, wall: SystemTime) -> Vec<PeerView> {
        let mut v: Vec<PeerView> = self
            .peers
            .filtered(|_| true)
            .into_iter()
            .map(|p| {
                let ago = now.saturating_duration_since(p.last_seen);
                let seen = wall.checked_sub(ago).unwrap_or(wall);
                PeerView {
                    id: p.id.to_hex(),
                    name: p.name.clone(),
                    addr: p.addr().to_string(),
                    addrs: p.addrs().iter().map(|a| a.to_string()).collect(),
                    online: p.online,
                    last_seen: humantime::format_rfc3339_millis(seen).to_string(),
                    last_seen_secs: ago.as_secs_f64(),
                    found_via: p.found_via.iter().copied().collect(),
                    contents: if p.online { p.contents } else { 0 },
                    verified: p.verified,
                }
            })
            .collect();
        v.sort_by(|a, b| b.online.cmp(&a.online).then(a.name.cmp(&b.name)));
        v
    }
}
