//! The requests a dashboard makes besides those of the CLI: the overview,
//! transfers and cancel, library pages, shares (list, edit, stop sharing),
//! history, and a fetch started in the background. Same rules as the
//! rest of [`Service`]: typed answers, no sockets, no text for people.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::{Resolved, Service};
use crate::api::{ContentView, FetchEvent, NodeStatus};
use crate::history::{HistoryQuery, HistoryRow};
use crate::library::{LibraryPage, LibraryQuery};
use crate::manifest::Category;
use crate::store::{Hashing, Home, SharesFile};
use crate::transfers::TransfersView;
use tokio::sync::mpsc;

/// The node at a glance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    #[serde(flatten)]
    pub status: NodeStatus,
    /// This node's addresses on the links discovery runs on.
    pub addresses: Vec<String>,
    pub shared_bytes: u64,
    /// Discovery paths and whether each is on.
    pub discovery: Vec<DiscoveryPath>,
    /// Peers online now.
    pub peers_online: u32,
    /// Problems a user can act on, each a sentence saying what to do.
    pub warnings: Vec<String>,
}

/// One way this node finds peers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DiscoveryPath {
    /// multicast, broadcast, mdns, tracker or manual.
    pub kind: String,
    pub active: bool,
    pub detail: String,
}

/// One shared root.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShareView {
    pub path: String,
    pub comment: String,
    pub category: Option<Category>,
    /// Added with `share` or the dashboard: can be edited and removed.
    pub editable: bool,
    /// Why it is shared, when it is not editable.
    pub origin: String,
}

/// What this node shares, and what it is hashing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SharesView {
    pub roots: Vec<ShareView>,
    pub files: u32,
    pub bytes: u64,
    pub hashing: Option<Hashing>,
}

/// A download started in the background.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FetchStarted {
    /// Its number in the transfers.
    pub transfer: u64,
    pub id: String,
    pub name: String,
}

/// Why a background fetch did not start.
#[derive(Debug, thiserror::Error)]
pub enum FetchRefused {
    #[error("nothing on the network is called {0:?}")]
    NotFound(String),
    #[error("{} contents match {query:?}; give one's id", candidates.len())]
    Ambiguous {
        query: String,
        candidates: Vec<ContentView>,
    },
}

impl Service {
    /// The node at a glance.
    pub fn overview(&self) -> Overview {
        let status = self.status();
        let inv = self.store.inventory();
        let shared_bytes = inv.total_size();
        let links = self
            .links
            .as_ref()
            .map(|l| l.borrow().clone())
            .unwrap_or_default();
        let addresses = crate::netif::addresses(&links)
            .iter()
            .map(|a| a.to_string())
            .collect();
        let peers = self.peers();
        let peers_online = peers.iter().filter(|p| p.online).count() as u32;
        let discovery = self.discovery_paths(&links);
        let warnings = self.warnings(links.is_empty(), peers_online);
        Overview {
            status,
            addresses,
            shared_bytes,
            discovery,
            peers_online,
            warnings,
        }
    }

    fn discovery_paths(
        &self,
        links: &std::collections::BTreeSet<crate::netif::Link>,
    ) -> Vec<DiscoveryPath> {
        let cfg = &self.cfg;
        let names: Vec<String> = links.iter().map(|l| l.to_string()).collect();
        let broadcasts: Vec<String> = links
            .iter()
            .filter_map(|l| match l {
                crate::netif::Link::V4 {
                    name,
                    broadcast: Some(b),
                    ..
                } => Some(format!("{b} on {name}")),
                _ => None,
            })
            .collect();
        let path = |kind: &str, active: bool, detail: String| DiscoveryPath {
            kind: kind.into(),
            active,
            detail,
        };
        vec![
            path(
                "multicast",
                cfg.multicast,
                if cfg.multicast {
                    format!("{} on {}", cfg.group, names.join(", "))
                } else {
                    "off (--no-multicast)".into()
                },
            ),
            path(
                "broadcast",
                cfg.broadcast && !broadcasts.is_empty(),
                match (cfg.broadcast, broadcasts.is_empty()) {
                    (false, _) => "off (--no-broadcast)".into(),
                    (true, true) => "no broadcast-capable interface".into(),
                    (true, false) => {
                        format!("port {} to {}", cfg.group.port(), broadcasts.join(", "))
                    }
                },
            ),
            path(
                "mdns",
                cfg.mdns,
                if cfg.mdns {
                    "_lanshare._tcp".into()
                } else {
                    "off (--no-mdns)".into()
                },
            ),
            path("tracker", !cfg.trackers.is_empty(), cfg.trackers.join(", ")),
            path("manual", !cfg.peers.is_empty(), cfg.peers.join(", ")),
        ]
    }

    fn warnings(&self, no_links: bool, peers_online: u32) -> Vec<String> {
        let cfg = &self.cfg;
        let mut w = Vec::new();
        if cfg.multicast && no_links {
            w.push("No usable network interface for multicast discovery: connect to a network, or name one with --interface.".into());
        }
        if cfg.listen.is_none() && self.listen.port() != crate::config::DEFAULT_TCP_PORT {
            w.push(format!("Port {} was taken (another program or lanshare node?), so peers connect on port {}: nodes that add this one with --peer must use that port.", crate::config::DEFAULT_TCP_PORT, self.listen.port()));
        }
        if let Some(ui) = self.ui
            && cfg.ui == crate::config::UiListen::Default
            && ui.port() != crate::config::DEFAULT_UI_PORT
        {
            w.push(format!(
                "Port {} was taken, so this dashboard is at http://{ui}/ instead.",
                crate::config::DEFAULT_UI_PORT
            ));
        }
        for (url, error) in self.stats.trackers.unreachable() {
            w.push(format!("Tracker {url} is unreachable ({error}); retrying. Check the URL and that the tracker runs; the node keeps working on its LAN."));
        }
        if peers_online == 0 && (cfg.multicast || cfg.broadcast || cfg.mdns) && !no_links {
            w.push(format!("No other node seen yet. If there are some on this network, check that the firewall lets UDP port {} and TCP port {} through, or add a node with --peer HOST:PORT.", cfg.group.port(), self.listen.port()));
        }
        w
    }

    /// The transfers in progress.
    pub fn transfers(&self) -> TransfersView {
        self.stats.transfers.view(Instant::now())
    }

    /// Cancels for good the downloads `target` names (number, id prefix,
    /// name or query), running or recorded: their jobs leave the list
    /// first (so none comes back after a restart), then the running ones
    /// stop and discard their partial files as they end; a recorded one
    /// that was not running has its partial file discarded now. The
    /// numbers cancelled (a stopped job gets one, listed as cancelled).
    pub fn cancel(&self, target: &str) -> Vec<u64> {
        let reg = &self.stats.transfers;
        let running = reg.named(target);
        let hit = |j: &crate::store::Job| {
            j.matches(target)
                || running.iter().any(|(id, query)| {
                    j.content_id().is_some_and(|c| c.to_hex() == *id) || j.query() == query
                })
        };
        let mut gone = self.cancel_jobs(&hit);
        let mut numbers = reg.cancel(target);
        // A download that recorded its job while the tokens fired: its
        // record checked the token under the list's lock, so it is either
        // not recorded or found here.
        gone.extend(self.cancel_jobs(&hit));
        for job in gone {
            // A download in progress discards its own files as it ends.
            for id in job.content_ids() {
                if self.fetch_locks.is_idle(&id) && self.store.jobs().take_cancelled(&id) {
                    self.store.discard_partial(&id);
                }
            }
            let Some(id) = job.content_id() else { continue };
            let listed = running
                .iter()
                .any(|(rid, query)| *rid == id.to_hex() || query == job.query());
            if !listed {
                numbers.push(reg.cancelled_job(
                    job.query(),
                    &id.to_hex(),
                    job.name(),
                    Instant::now(),
                ));
            }
        }
        numbers
    }

    fn cancel_jobs(&self, hit: &impl Fn(&crate::store::Job) -> bool) -> Vec<crate::store::Job> {
        self.store.jobs().cancel_where(hit).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot update the download list");
            Vec::new()
        })
    }

    /// One page of what the network offers.
    pub fn contents(&self, q: &LibraryQuery) -> LibraryPage {
        let local: HashSet<_> = self.local_ids().into_iter().collect();
        crate::library::page(&self.dict, q, &local)
    }

    /// Resolves `query` and starts its download in the background (listed
    /// in the transfers, and tried again while its job is recorded; see
    /// `service::background`); fails when it names nothing or several
    /// contents.
    pub async fn start_fetch(self: &Arc<Self>, query: &str) -> Result<FetchStarted, FetchRefused> {
        let cancel = self.tasks.token().child_token();
        let want = match self.resolve(query, &cancel).await {
            Resolved::One(want) => want,
            Resolved::Folder(folder) => return Ok(self.start_folder_fetch(query, folder, cancel)),
            Resolved::NotFound => return Err(FetchRefused::NotFound(query.into())),
            Resolved::Ambiguous(candidates) => {
                let query = query.into();
                return Err(FetchRefused::Ambiguous { query, candidates });
            }
        };
        let id = want.id.to_hex();
        let name = self
            .dict
            .view(&want.id, false)
            .map(|v| v.name)
            .unwrap_or_else(|| query.to_string());
        let d = self.background(want, None);
        Ok(FetchStarted {
            transfer: d.0,
            id,
            name,
        })
    }

    /// Starts the download of `folder` in the background (listed in the
    /// transfers as one download).
    fn start_folder_fetch(
        self: &Arc<Self>,
        query: &str,
        folder: crate::fetch::FolderWant,
        cancel: tokio_util::sync::CancellationToken,
    ) -> FetchStarted {
        let reg = &self.stats.transfers;
        let d = reg.start_download(query, cancel.clone(), Instant::now());
        let (tx, rx) = mpsc::channel::<FetchEvent>(64);
        let (sink, _) = mpsc::channel::<FetchEvent>(1);
        let name = folder.path.clone();
        let this = self.clone();
        self.tasks
            .spawn(&format!("background fetch folder {name}"), async move {
                tokio::join!(
                    this.download_folder(folder, tx, cancel),
                    this.track(d, rx, sink)
                );
            });
        FetchStarted {
            transfer: d.0,
            id: String::new(),
            name,
        }
    }

    /// What this node shares.
    pub fn shares(&self) -> SharesView {
        let home = Home::new(&self.home);
        let fixed = |p: PathBuf, origin: &str| ShareView {
            path: p.display().to_string(),
            comment: String::new(),
            category: None,
            editable: false,
            origin: origin.into(),
        };
        let mut roots = vec![
            fixed(home.shared(), "the home's shared folder"),
            fixed(home.downloads(), "downloads are shared"),
        ];
        roots.extend(
            self.cfg
                .shares
                .iter()
                .map(|p| fixed(p.clone(), "up --share")),
        );
        roots.extend(
            SharesFile::load(&home.shares_file())
                .entries
                .into_iter()
                .map(|r| ShareView {
                    path: r.path.display().to_string(),
                    comment: r.comment,
                    category: r.category,
                    editable: true,
                    origin: "added".into(),
                }),
        );
        let inv = self.store.inventory();
        SharesView {
            roots,
            files: inv.count(),
            bytes: inv.total_size(),
            hashing: self.store.hashing(),
        }
    }

    /// Changes the comment and category of a shared root added before.
    pub fn edit_share(
        &self,
        path: &Path,
        comment: String,
        category: Option<Category>,
    ) -> anyhow::Result<()> {
        let home = Home::new(&self.home);
        let file = SharesFile::load(&home.shares_file());
        if !file.entries.iter().any(|e| e.path == path) {
            bail!(
                "{} is not a share added with `share`; add it first",
                path.display()
            );
        }
        super::save_share(&home, path, comment, category)?;
        self.rescan();
        Ok(())
    }

    /// Stops sharing a root added before; false when it was not shared.
    pub fn unshare(&self, path: &Path) -> anyhow::Result<bool> {
        let home = Home::new(&self.home);
        let removed = SharesFile::remove(&home.shares_file(), path)
            .with_context(|| format!("cannot write {}", home.shares_file().display()))?;
        self.rescan();
        Ok(removed)
    }

    /// The download and upload logs, newest first.
    pub fn history(&self, q: &HistoryQuery) -> Vec<HistoryRow> {
        let home = Home::new(&self.home);
        let (d, u) = (home.download_log(), home.upload_log());
        crate::history::read(&[&d, &u], q)
    }

    /// The paths of the transfer logs (the event stream follows them).
    pub fn log_paths(&self) -> [PathBuf; 2] {
        let home = Home::new(&self.home);
        [home.download_log(), home.upload_log()]
    }

    /// The dictionary's change notification (the event stream waits on it).
    pub fn contents_changed(&self) -> &tokio::sync::Notify {
        &self.dict.contents.changed
    }

    /// The store's inventory, to follow (the event stream waits on it).
    pub fn inventory_changes(&self) -> tokio::sync::watch::Receiver<crate::inventory::Inventory> {
        self.store.subscribe()
    }

    /// The transfers registry's change counter.
    pub fn transfers_generation(&self) -> u64 {
        self.stats.transfers.generation()
    }
}
