//! The node's service facade: every request a user makes of a running node
//! (status, ls, peers, resolve, fetch, share, rescan) is answered here, in
//! typed methods returning [`crate::api`] views. The control socket
//! ([`crate::control`]) only decodes a request, calls a method and encodes
//! the answer; a web API would do the same. This module reads the store and
//! the dictionary and starts downloads; it never touches sockets, never
//! formats text for people, and never writes to the dictionary.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::api::{ContentView, FetchEvent, NodeStatus, PeerView};
use crate::config::NodeConfig;
use crate::dict::{Dict, LsRow, LsRows};
use crate::fetch::{FetchCtx, FetchLocks, FolderJob, FolderWant, Want};
use crate::id::{ContentId, NodeId};
use crate::logs::TransferLog;
use crate::manifest::Category;
use crate::resolve::{Match, Resolution};
use crate::stats::{Counter, Stats};
use crate::store::{Home, ShareRoot, SharesFile, Store};
use crate::task::Tasks;
use crate::transfers::DownloadId;

mod background;
mod manage;
pub use manage::{DiscoveryPath, FetchRefused, FetchStarted, Overview, ShareView, SharesView};

/// What a query names, once the network has had a chance to answer.
#[derive(Debug)]
pub enum Resolved {
    /// One content: what to download, with the size the user chose from.
    One(Want),
    /// A folder: its whole tree.
    Folder(FolderWant),
    /// Several contents match; each as `ls` would show it.
    Ambiguous(Vec<ContentView>),
    NotFound,
}

/// Answers the requests of one node.
pub struct Service {
    id: NodeId,
    name: String,
    listen: SocketAddr,
    home: PathBuf,
    store: Arc<Store>,
    dict: Arc<Dict>,
    /// The node's counters (`status`).
    stats: Arc<Stats>,
    fetch: Arc<FetchCtx>,
    /// Wakes the scanner (after `lanshare share`).
    rescan: Arc<Notify>,
    /// How long a query waits for the network to know a content.
    wait_for_network: Duration,
    /// One fetch per content at a time; a second waits for the first
    /// (folder downloads take the same locks for each of their files).
    fetch_locks: Arc<FetchLocks>,
    /// Background downloads running, by content (`fetch` takes them over).
    background: dashmap::DashMap<ContentId, (DownloadId, CancellationToken)>,
    /// Where downloads are spawned (one named task each).
    tasks: Tasks,
    /// `open` or `private` (`status`).
    swarm: &'static str,
    /// Where the web UI listens, if it runs.
    ui: Option<SocketAddr>,
    /// What discovery was configured to use, and extra shared roots.
    cfg: NodeConfig,
    /// The links discovery runs on (the overview's addresses).
    links: Option<tokio::sync::watch::Receiver<std::collections::BTreeSet<crate::netif::Link>>>,
}

/// Where a node listens, as the service reports it.
pub struct Identity {
    pub id: NodeId,
    pub listen: SocketAddr,
    /// The key `id` derives from (downloads prove it to holders).
    pub key: Arc<crate::identity::Identity>,
    /// The web UI's address, if it runs.
    pub ui: Option<SocketAddr>,
}

impl Service {
    pub fn new(
        cfg: &NodeConfig,
        me: Identity,
        store: Arc<Store>,
        dict: Arc<Dict>,
        stats: Arc<Stats>,
        rescan: Arc<Notify>,
        tasks: Tasks,
    ) -> Service {
        let fetch = Arc::new(FetchCtx {
            store: store.clone(),
            dict: dict.clone(),
            dialer: crate::peer::dial::Dialer::new(
                me.key.clone(),
                cfg.swarm.clone(),
                &cfg.name,
                dict.clone(),
            )
            .keeping_failed(),
            download_log: TransferLog::new(&Home::new(&cfg.home).download_log()),
            limits: cfg.fetch.clone(),
            memory: Default::default(),
            tasks: tasks.clone(),
        });
        Service {
            id: me.id,
            name: cfg.name.clone(),
            listen: me.listen,
            home: cfg.home.clone(),
            store,
            dict,
            stats,
            fetch,
            rescan,
            wait_for_network: cfg.fetch.wait_for_holders,
            fetch_locks: Default::default(),
            background: Default::default(),
            tasks,
            swarm: cfg.swarm.label(),
            ui: me.ui,
            cfg: cfg.clone(),
            links: None,
        }
    }

    /// Follows the links discovery runs on (the overview's addresses).
    pub fn set_links(
        &mut self,
        links: tokio::sync::watch::Receiver<std::collections::BTreeSet<crate::netif::Link>>,
    ) {
        self.links = Some(links);
    }

    /// The node's identity, address and counters.
    pub fn status(&self) -> NodeStatus {
        NodeStatus {
            id: self.id.to_hex(),
            name: self.name.clone(),
            listen: self.listen.to_string(),
            home: self.home.display().to_string(),
            shared_contents: self.store.inventory().count(),
            malformed_datagrams: self.stats.get(Counter::MalformedDatagrams),
            malformed_connections: self.stats.get(Counter::MalformedConnections),
            discovery_bytes_sent: self.stats.get(Counter::DiscoveryBytesSent),
            inventory_bytes_served: self.stats.get(Counter::InventoryBytesServed),
            swarm: self.swarm.to_string(),
            replayed_datagrams: self.stats.get(Counter::ReplayedDatagrams),
            foreign_datagrams: self.stats.get(Counter::ForeignDatagrams),
            bad_signature_datagrams: self.stats.get(Counter::BadSignatureDatagrams),
            throttled_datagrams: self.stats.get(Counter::ThrottledDatagrams),
            datagrams_sent: self.stats.get(Counter::DatagramsSent),
            datagrams_received: self.stats.by_path(),
            path_duplicate_datagrams: self.stats.get(Counter::PathDuplicates),
            hints_received: self.stats.get(Counter::HintsReceived),
            hints_dialed: self.stats.get(Counter::HintsDialed),
            hints_verified: self.stats.get(Counter::HintsVerified),
            hints_rejected: self.stats.get(Counter::HintsRejected),
            ui: self.ui.map(|a| format!("http://{a}/")),
        }
    }

    /// What the network offers, optionally narrowed by a query and a
    /// category: a row per content (named by its path), and, without a
    /// category, a row per top-level folder, sorted by name (a folder just
    /// before its files). The views are built by [`Service::ls_views`], a
    /// page at a time.
    pub fn ls_rows(&self, query: Option<&str>, category: Option<Category>) -> LsRows {
        self.dict.ls_rows(query, category)
    }

    /// The views of a page of [`Service::ls_rows`].
    pub fn ls_views(&self, rows: impl IntoIterator<Item = LsRow>) -> Vec<ContentView> {
        let inv = self.store.inventory();
        self.dict.ls_views(rows, |id| inv.contains(id))
    }

    /// Every peer seen.
    pub fn peers(&self) -> Vec<PeerView> {
        self.dict
            .peer_views(std::time::Instant::now(), std::time::SystemTime::now())
    }

    /// Rescans the shared folders now.
    pub fn rescan(&self) {
        self.rescan.notify_one();
    }

    /// Adds `path` to the shares and rescans.
    pub fn share(
        &self,
        path: &Path,
        comment: String,
        category: Option<Category>,
    ) -> anyhow::Result<PathBuf> {
        let abs = add_share(&self.home, path, comment, category)?;
        self.rescan();
        Ok(abs)
    }

    fn local_ids(&self) -> Vec<ContentId> {
        self.store.inventory().ids().collect()
    }

    /// What `query` names. What the network offers comes first: a local
    /// file of the same name must not make a fetch ambiguous. A node that
    /// just started may not have heard everyone yet, so an unknown query
    /// waits a little for the network; only when nothing on the network
    /// matches do this node's own contents count (-> "already here").
    pub async fn resolve(&self, query: &str, cancel: &CancellationToken) -> Resolved {
        let found = self
            .dict
            .wait_for(self.wait_for_network, cancel, |d| {
                match d.resolve(query, &[]) {
                    Resolution::None => None,
                    r => Some(r),
                }
            })
            .await;
        let resolution = found.unwrap_or_else(|| self.dict.resolve(query, &self.local_names()));
        match resolution {
            Resolution::None => Resolved::NotFound,
            Resolution::Ambiguous(matches) => {
                let local = self.local_ids();
                Resolved::Ambiguous(
                    matches
                        .iter()
                        .filter_map(|m| match m {
                            Match::Content(id) => self.view_any(id, &local),
                            Match::Folder(path) => Some(self.folder_candidate(path)),
                        })
                        .collect(),
                )
            }
            Resolution::Folder(path) => Resolved::Folder(FolderWant { path }),
            // What the user chose from: the size `ls` shows for that content.
            // A manifest of another size is refused before any file is made.
            Resolution::One(id) => Resolved::One(Want {
                id,
                query: query.to_string(),
                size: self.dict.contents.with(&id, |c| c.size),
                place: None,
            }),
        }
    }

    fn local_names(&self) -> Vec<(ContentId, String)> {
        let inv = self.store.inventory();
        (inv.iter())
            .flat_map(|e| e.names().map(|n| (e.id, n.to_string())).collect::<Vec<_>>())
            .collect()
    }

    /// A folder as a candidate of an ambiguous name: its files, size and
    /// holders as the network lists them.
    fn folder_candidate(&self, path: &str) -> ContentView {
        let listing = self.dict.folder_listing(path);
        let job = FolderJob::from_listing(path, &listing);
        let holders: std::collections::BTreeSet<NodeId> =
            listing.files.iter().map(|f| f.holder).collect();
        let holders: Vec<crate::api::HolderView> = holders
            .iter()
            .filter_map(|id| {
                self.dict.peers.with(id, |p| crate::api::HolderView {
                    name: p.name.clone(),
                    addr: p.addr().to_string(),
                    chunks: 0,
                    total: 0,
                })
            })
            .collect();
        ContentView {
            kind: crate::api::ContentKind::Folder,
            id: String::new(),
            name: path.to_string(),
            names: vec![path.to_string()],
            size: job.total_bytes(),
            category: Category::Other,
            comment: String::new(),
            complete: 0,
            partial: 0,
            holders,
            local: false,
            files: job.entries.len() as u32,
        }
    }

    /// A content as `ls` shows it, or from this node's own store.
    fn view_any(&self, id: &ContentId, local: &[ContentId]) -> Option<ContentView> {
        if let Some(v) = self.dict.view(id, local.contains(id)) {
            return Some(v);
        }
        let c = self.store.complete(id)?;
        Some(ContentView {
            kind: crate::api::ContentKind::File,
            files: 0,
            id: id.to_hex(),
            name: c.name().to_string(),
            names: vec![c.name().to_string()],
            size: c.manifest.size,
            category: c.category,
            comment: c.comment().to_string(),
            complete: 0,
            partial: 0,
            holders: Vec::new(),
            local: true,
        })
    }

    /// Resolves `query` and downloads it, sending every event to `events`;
    /// the last one sent is final (`Done`, `Failed`, `NotFound` or
    /// `Ambiguous`). `cancel` stops the download (it resumes next time).
    /// The download is listed in the transfers while it runs.
    pub async fn fetch(
        &self,
        query: &str,
        events: mpsc::Sender<FetchEvent>,
        cancel: CancellationToken,
    ) {
        let reg = &self.stats.transfers;
        let d = reg.start_download(query, cancel.clone(), std::time::Instant::now());
        let (tx, rx) = mpsc::channel::<FetchEvent>(64);
        let run = async {
            match self.resolve(query, &cancel).await {
                Resolved::One(want) => {
                    self.take_over(&want.id);
                    self.download(want, tx, cancel).await
                }
                Resolved::Folder(folder) => self.download_folder(folder, tx, cancel).await,
                Resolved::NotFound => {
                    let query = query.to_string();
                    let _ = tx.send(FetchEvent::NotFound { query }).await;
                }
                Resolved::Ambiguous(candidates) => {
                    let _ = tx.send(FetchEvent::Ambiguous { candidates }).await;
                }
            }
        };
        tokio::join!(run, self.track(d, rx, events));
    }

    /// Feeds the transfers registry with the events of download `d`, and
    /// passes them on to `events` (all but the per-peer byte counts).
    async fn track(
        &self,
        d: DownloadId,
        mut rx: mpsc::Receiver<FetchEvent>,
        events: mpsc::Sender<FetchEvent>,
    ) {
        let reg = &self.stats.transfers;
        while let Some(ev) = rx.recv().await {
            reg.download_event(d, &ev, std::time::Instant::now());
            if !matches!(ev, FetchEvent::PeerBytes { .. }) {
                let _ = events.send(ev).await;
            }
        }
        reg.end_download(d, std::time::Instant::now());
    }

    /// Downloads `want`, one download per content at a time.
    async fn download(
        &self,
        want: Want,
        events: mpsc::Sender<FetchEvent>,
        cancel: CancellationToken,
    ) {
        let _guard = self.fetch_locks.lock(want.id).await;
        let fetch = self.fetch.clone();
        let name = format!("fetch {}", want.id.short());
        let job = self.tasks.spawn(&name, async move {
            let last = match fetch.fetch(want, &events, cancel).await {
                Ok(done) => FetchEvent::Done(done),
                Err(e) => FetchEvent::Failed {
                    reason: e.to_string(),
                },
            };
            let _ = events.send(last).await;
        });
        // A download that panicked ends the stream without a final event.
        let _ = job.await;
    }

    /// Downloads the whole tree of `folder` as the online holders list it
    /// now ([`FolderJob::from_listing`]) into a new folder of downloads/.
    async fn download_folder(
        &self,
        folder: FolderWant,
        events: mpsc::Sender<FetchEvent>,
        cancel: CancellationToken,
    ) {
        let listing = self.dict.folder_listing(&folder.path);
        let mut job = FolderJob::from_listing(&folder.path, &listing);
        // A download of this folder left unfinished goes on where it was.
        if let Some(left) = self.store.jobs().folder(&folder.path) {
            job.dest = Some(left.dest);
        }
        if !listing.found {
            let reason = format!(
                "no online peer lists anything in the folder {:?}; run `lanshare ls` to see what the network offers",
                folder.path
            );
            let _ = events.send(FetchEvent::Failed { reason }).await;
            return;
        }
        let (fetch, locks) = (self.fetch.clone(), self.fetch_locks.clone());
        let name = format!("fetch folder {}", job.name());
        let query = folder.path.clone();
        let job = self.tasks.spawn(&name, async move {
            let last = match fetch
                .fetch_folder(job, &query, locks, &events, cancel)
                .await
            {
                Ok(done) => FetchEvent::Done(done),
                Err(e) => FetchEvent::Failed {
                    reason: e.to_string(),
                },
            };
            let _ = events.send(last).await;
        });
        let _ = job.await;
    }
}

/// Checks that `path` exists before it is added to the shares.
pub fn check_share_path(path: &Path) -> anyhow::Result<PathBuf> {
    let abs =
        std::fs::canonicalize(path).with_context(|| format!("cannot share {}", path.display()))?;
    if !abs.is_file() && !abs.is_dir() {
        bail!(
            "cannot share {}: not a regular file or folder",
            path.display()
        );
    }
    Ok(abs)
}

/// Adds `path` to the shares file of the node in `home` (absolute), which
/// picks it up at its next scan. Returns the absolute path shared.
pub fn add_share(
    home: &Path,
    path: &Path,
    comment: String,
    category: Option<Category>,
) -> anyhow::Result<PathBuf> {
    let abs = check_share_path(path)?;
    let h = Home::new(home);
    h.create_dirs()
        .with_context(|| format!("cannot create {}", home.display()))?;
    save_share(&h, &abs, comment, category)?;
    Ok(abs)
}

/// Records `path` (absolute) with its comment and category in the shares
/// file of `home`, replacing what was there for it.
pub fn save_share(
    home: &Home,
    path: &Path,
    comment: String,
    category: Option<Category>,
) -> anyhow::Result<()> {
    if comment.len() > crate::wire::MAX_COMMENT {
        bail!(
            "the comment is {} bytes; the limit is {}",
            comment.len(),
            crate::wire::MAX_COMMENT
        );
    }
    let root = ShareRoot {
        path: path.to_path_buf(),
        comment,
        category,
        naming: crate::store::RootNaming::WithRootName,
    };
    SharesFile::add(&home.shares_file(), root)
        .with_context(|| format!("cannot write {}", home.shares_file().display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn dict() -> Dict {
        Dict::with_limits(
            crate::dict::DEFAULT_MAX_REMOTE_CONTENTS,
            crate::dict::DEFAULT_MAX_REMOTE_BYTES,
        )
    }

    #[tokio::test]
    async fn the_wait_ends_when_the_dictionary_learns_it() {
        let (d, cancel) = (dict(), CancellationToken::new());
        let seen = AtomicU32::new(0);
        let wait = d.wait_for(Duration::from_secs(30), &cancel, |_| {
            (seen.fetch_add(1, Ordering::Relaxed) >= 1).then_some("known")
        });
        let change = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            d.contents.changed.notify_waiters();
        };
        let (found, ()) = tokio::join!(wait, change);
        assert_eq!(found, Some("known"));
        assert_eq!(
            seen.load(Ordering::Relaxed),
            2,
            "checked again on the change"
        );
    }

    #[tokio::test]
    async fn the_wait_gives_up_at_its_limit_or_on_cancel() {
        let (d, cancel) = (dict(), CancellationToken::new());
        let never = |_: &Dict| None::<()>;
        let limit = Duration::from_millis(30);
        assert_eq!(d.wait_for(limit, &cancel, never).await, None);
        cancel.cancel();
        let forever = Duration::from_secs(3600);
        assert_eq!(d.wait_for(forever, &cancel, never).await, None);
        let now = |_: &Dict| Some(1);
        assert_eq!(d.wait_for(forever, &cancel, now).await, Some(1));
    }
}
