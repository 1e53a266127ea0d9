//! What the dictionary answers, joining the peer table and the content
//! index: the holders a download asks ([`Holder`]), name resolution (paths
//! and folders included), what each holder lists under a folder
//! ([`FolderListing`]), and the views `ls` and `peers` show (a row per
//! content, and one per top-level folder). Read-only.

use std::collections::{BTreeMap, BTreeSet, HashMap};

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

/// A content row of `ls` with its sort key (the name shown, lower case)
/// and the name shown when it is not the content's first.
type KeyedRow = (String, ContentId, Option<Box<str>>);

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
            names: c.names.iter().map(String::from).collect(),
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
    /// name.
    pub fn list(&self, query: Option<&str>, category: Option<Category>) -> Vec<ContentId> {
        let mut seen = std::collections::HashSet::new();
        self.list_keyed(query, category)
            .into_iter()
            .filter_map(|(_, id, _)| seen.insert(id).then_some(id))
            .collect()
    }

    /// One row per path of every content with an online holder (a
    /// content at several paths is listed at each), filtered (by the
    /// row's path, or the content's id), with its sort key.
    fn list_keyed(&self, query: Option<&str>, category: Option<Category>) -> Vec<KeyedRow> {
        let mut rows: Vec<KeyedRow> = Vec::new();
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
                    let alt = (Some(n) != first).then(|| Box::from(n));
                    rows.push((n.to_lowercase(), *id, alt));
                }
            }
            None
        });
        rows.sort();
        let mut held: HashMap<ContentId, bool> = HashMap::new();
        rows.retain(|(_, id, _)| {
            *held
                .entry(*id)
                .or_insert_with(|| !self.holders(id).is_empty())
        });
        rows
    }

    /// The rows of `ls`, in order, without building the contents' views:
    /// every content [`Dict::list`] gives and, without a category, one row
    /// per top-level folder ([`Dict::folder_views`]), sorted by name (lower
    /// case), a folder just before its files. [`Dict::ls_views`] builds
    /// the views of a few rows at a time.
    pub fn ls_rows(&self, query: Option<&str>, category: Option<Category>) -> Vec<LsRow> {
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
        let contents = self.list_keyed(query, category);
        let mut rows = Vec::with_capacity(contents.len() + folders.len());
        let mut folders = folders.into_iter().peekable();
        for (key, id, alt) in contents {
            while let Some((_, v)) = folders.next_if(|(fkey, _)| *fkey <= key) {
                rows.push(LsRow::Folder(Box::new(v)));
            }
            rows.push(match alt {
                None => LsRow::Content(id),
                Some(path) => LsRow::Path(id, path),
            });
        }
        rows.extend(folders.map(|(_, v)| LsRow::Folder(Box::new(v))));
        rows
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
                LsRow::Path(id, path) => self.view(&id, local(&id)).map(|mut v| {
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
    /// (a case-insensitive substring).
    pub fn folder_views(&self, query: Option<&str>) -> Vec<ContentView> {
        // folder -> file path -> (content id, size)
        let mut folders: BTreeMap<String, BTreeMap<String, (ContentId, u64)>> = BTreeMap::new();
        // One pass, copying only the paths inside folders.
        self.contents.map_all(|id, c| {
            for n in c.names.iter() {
                let Some(top) = resolve::folders_of(n).next() else {
                    continue;
                };
                if !folders.contains_key(top) {
                    folders.insert(top.to_string(), BTreeMap::new());
                }
                let files = folders.get_mut(top).expect("inserted above");
                if !n.ends_with('/') && !files.contains_key(n) {
                    files.insert(n.to_string(), (*id, c.size));
                }
            }
            None::<()>
        });
        let q = query.map(str::to_lowercase);
        folders
            .into_iter()
            .filter(|(f, _)| q.as_ref().is_none_or(|q| f.to_lowercase().contains(q)))
            .filter_map(|(folder, files)| self.folder_view(folder, &files))
            .collect()
    }

    /// The row of `folder`, whose files are `files` (path -> content).
    fn folder_view(
        &self,
        folder: String,
        files: &BTreeMap<String, (ContentId, u64)>,
    ) -> Option<ContentView> {
        let ids: BTreeMap<ContentId, u64> = files.values().copied().collect();
        let total: u32 = ids
            .values()
            .map(|size| Manifest::chunk_count_for(*size, CHUNK_SIZE) as u32)
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
            size: files.values().map(|(_, size)| size).sum(),
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
            for (e, path) in inv
                .entries
                .iter()
                .flat_map(|e| e.paths().map(move |p| (e, p)))
            {
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
