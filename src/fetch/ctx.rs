//! [`FetchCtx`]: one download from start to end, stage by stage: already
//! here, wait for holders, manifest, saved name and free space, the
//! partial file, the swarm, and the end (keep or discard the partial, the
//! download log line).
//!
//! Never schedules chunks or talks to a peer itself (see [`super::swarm`]
//! and [`super::manifest`]).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::peers::HolderMemory;
use super::{FetchError, FetchLimits, Want};
use crate::api::{FetchDone, FetchEvent};
use crate::dict::{Dict, Holder};
use crate::id::{ContentId, NodeId, to_hex};
use crate::logs::{Transfer, TransferLog};
use crate::manifest::Manifest;
use crate::peer::dial::Dialer;
use crate::resolve::{NameChoice, choose_name};
use crate::store::jobs::Recorded;
use crate::store::{Job, Partial, Store};
use crate::task::Tasks;

/// Free space a download leaves on the downloads file system, so the
/// node's own small files (state, logs) can still be written.
pub const SPACE_RESERVE: u64 = 1 << 20;

/// Bytes of the chunks `partial` holds (verified, or named by its resume
/// state and re-checked before use).
pub(super) fn bytes_held(partial: &Partial) -> u64 {
    let have = partial.have();
    (0..partial.manifest.chunk_count())
        .filter(|&i| have.get(i))
        .map(|i| u64::from(partial.manifest.chunk_len(i)))
        .sum()
}

/// Everything a download needs from the node.
pub struct FetchCtx {
    pub store: Arc<Store>,
    pub dict: Arc<Dict>,
    /// Connects as this node; a holder's address that refuses keeps its
    /// standing ([`Dialer::keeping_failed`]).
    pub dialer: Dialer,
    pub download_log: TransferLog,
    pub limits: FetchLimits,
    pub memory: HolderMemory,
    /// Where a download's tasks are spawned: those of the download of `id`
    /// are named `fetch <id>/...` in this scope.
    pub tasks: Tasks,
}

impl FetchCtx {
    /// Downloads what `want` names and returns where it landed. Logs the outcome.
    pub async fn fetch(
        &self,
        want: Want,
        events: &mpsc::Sender<FetchEvent>,
        cancel: CancellationToken,
    ) -> Result<FetchDone, FetchError> {
        let started = Instant::now();
        let id = want.id;
        let mut peers_used = BTreeSet::new();
        let mut name = match self.store.jobs().get(&id) {
            Some(job) => job.name().to_string(),
            None => self.save_name(&want, None),
        };
        let received = Arc::new(AtomicU64::new(0));
        let result = self
            .fetch_inner(
                &want,
                events,
                &cancel,
                &mut peers_used,
                &mut name,
                &received,
            )
            .await;
        self.settle_job(&id, &result);
        if !matches!(
            result,
            Ok(FetchDone {
                already_local: true,
                ..
            })
        ) {
            let peers: Vec<String> = peers_used.into_iter().collect();
            self.download_log.append(&Transfer {
                event: "download",
                file: &name,
                // What this run transferred: a resumed download counts
                // only the chunks it fetched.
                bytes: received.load(Ordering::Relaxed),
                id: &id,
                peers: &peers,
                duration: started.elapsed(),
                result: result.as_ref().map(|_| ()).map_err(|e| e.to_string()),
                sha256: result.as_ref().ok().map(|d| d.sha256.as_str()),
            });
        }
        result
    }

    async fn fetch_inner(
        &self,
        want: &Want,
        events: &mpsc::Sender<FetchEvent>,
        cancel: &CancellationToken,
        peers_used: &mut BTreeSet<String>,
        name_out: &mut String,
        received: &Arc<AtomicU64>,
    ) -> Result<FetchDone, FetchError> {
        let started = Instant::now();
        let id = want.id;
        if let Some(done) = self.already_here(&id) {
            return Ok(done);
        }
        let holders = self.wait_for_holders(&id, cancel).await?;
        let tasks = self.tasks.child(&format!("fetch {}", id.short()));
        let (manifest, sender) = self
            .get_manifest(want, &holders, events, cancel, &tasks)
            .await?;
        // A resumed download keeps the name it was started under.
        let name = match self.store.jobs().get(&id) {
            Some(job) => job.name().to_string(),
            None => self.save_name(want, Some(&sender)),
        };
        *name_out = name.clone();
        self.check_space(&manifest)?;
        let manifest = Arc::new(manifest);
        let partial =
            (self.store).begin_partial_in(manifest.clone(), &name, want.place.as_ref())?;
        if !self.record_job(want, &partial, cancel) {
            self.store.release_partial(&id);
            return Err(FetchError::Cancelled);
        }
        let already = bytes_held(&partial);
        let _ = events
            .send(FetchEvent::Started {
                id: id.to_hex(),
                name: name.clone(),
                size: manifest.size,
                holders: holders.len() as u32,
                already,
            })
            .await;
        let (result, shared) = self
            .swarm_until_done(&partial, received, events, cancel, &tasks, peers_used)
            .await;
        // The bytes each peer gave, to the end (ticks report them meanwhile).
        let peers = shared
            .given
            .lock()
            .expect("given lock")
            .values()
            .cloned()
            .collect();
        let _ = events.send(FetchEvent::PeerBytes { peers }).await;
        let sha = self.end_partial(&id, &partial, result)?;
        let path = self
            .store
            .finish_partial_in(&partial, want.place.as_ref())?;
        Ok(FetchDone {
            id: id.to_hex(),
            path: path.display().to_string(),
            size: manifest.size,
            sha256: to_hex(&sha),
            secs: started.elapsed().as_secs_f64(),
            transferred: received.load(Ordering::Relaxed),
            peers: peers_used.iter().cloned().collect(),
            already_local: false,
        })
    }

    /// The answer when this node holds `id` complete already, checked to
    /// be still there and unchanged on disk (a copy deleted a moment ago
    /// is forgotten, and the download goes to the network).
    fn already_here(&self, id: &ContentId) -> Option<FetchDone> {
        let local = self.store.complete_checked(id)?;
        Some(FetchDone {
            id: id.to_hex(),
            path: local.path.display().to_string(),
            size: local.manifest.size,
            sha256: to_hex(&local.manifest.sha256),
            secs: 0.0,
            transferred: 0,
            peers: Vec::new(),
            already_local: true,
        })
    }

    /// Records the download in the job list, so it goes on after a
    /// restart. False when it was cancelled meanwhile (then it is not
    /// recorded). A list that cannot be written only costs the resume.
    fn record_job(&self, want: &Want, partial: &Partial, cancel: &CancellationToken) -> bool {
        if want.place.is_some() {
            // A file of a folder download: the folder's job covers it.
            return !cancel.is_cancelled();
        }
        let job = Job::file(want.id, &want.query, &partial.name, partial.manifest.size);
        match self.store.jobs().record(job, cancel) {
            Ok(Recorded::Yes) => true,
            Ok(Recorded::Cancelled) => false,
            Err(e) => {
                tracing::warn!(id = %want.id.short(), error = %e, "cannot record the download");
                true
            }
        }
    }

    /// After a download of `id` ended with `result`: a finished download,
    /// or one that can never finish, leaves the job list; one the user
    /// cancelled loses its partial file too. Any other end (stopped with
    /// the node, by its `fetch` client, stalled, disk trouble) keeps the
    /// job, to go on later.
    fn settle_job(&self, id: &ContentId, result: &Result<FetchDone, FetchError>) {
        let jobs = self.store.jobs();
        let cancelled = jobs.take_cancelled(id);
        let over = match result {
            Ok(_) => true,
            Err(FetchError::Sha256Mismatch | FetchError::SizeMismatch { .. }) => true,
            Err(_) if cancelled => {
                self.store.discard_partial(id);
                true
            }
            Err(_) => false,
        };
        if over && let Err(e) = jobs.remove(id) {
            tracing::warn!(id = %id.short(), error = %e, "cannot update the download list");
        }
    }

    /// Saves the partial's state whatever the swarm's `result`; on failure
    /// unregisters the partial (kept on disk for a resume, unless the
    /// whole file can never match its manifest).
    fn end_partial(
        &self,
        id: &ContentId,
        partial: &Arc<Partial>,
        result: Result<[u8; 32], FetchError>,
    ) -> Result<[u8; 32], FetchError> {
        let _ = partial.save_state();
        result.inspect_err(|e| {
            if matches!(e, FetchError::Sha256Mismatch) {
                // Every chunk verified, yet the whole file does not
                // match what the manifest claims: this content can
                // never complete. Do not keep it for a resume.
                partial.discard();
            }
            self.store.release_partial(id);
            self.store.publish();
        })
    }

    /// Connects as this node. A holder's address that refuses a
    /// download's connection keeps its standing (reach's prober judges
    /// addresses); one that answers as another node is marked.
    pub(super) fn dialer(&self) -> Dialer {
        self.dialer.clone()
    }

    /// The holders of `id`, waiting up to `wait_for_holders` for the network
    /// to name one (through the one wait, [`Dict::wait_for`]).
    async fn wait_for_holders(
        &self,
        id: &ContentId,
        cancel: &CancellationToken,
    ) -> Result<Vec<Holder>, FetchError> {
        let holders = |d: &Dict| Some(d.holders(id)).filter(|h| !h.is_empty());
        match self
            .dict
            .wait_for(self.limits.wait_for_holders, cancel, holders)
            .await
        {
            Some(holders) => Ok(holders),
            None if cancel.is_cancelled() => Err(FetchError::Cancelled),
            None => Err(FetchError::NoHolders(*id)),
        }
    }

    /// The size `holder` itself lists for `id` in the inventory held for it.
    pub(super) fn listed_size(&self, holder: &NodeId, id: &ContentId) -> Option<u64> {
        let inv = self.dict.contents.inventory(holder)?;
        Some(inv.get(id)?.size)
    }

    /// The name the download is saved under: the content's name that
    /// matches what the user typed, else a name from `proven` (the holder
    /// that sent the manifest), else the first in sort order. Never the
    /// first name any holder listed when a name matches the query.
    fn save_name(&self, want: &Want, proven: Option<&Holder>) -> String {
        let listed = self.dict.contents.content(&want.id).map(|c| c.names);
        let own = proven.and_then(|h| {
            let inv = self.dict.contents.inventory(&h.id)?;
            Some(inv.get(&want.id)?.name)
        });
        let mut names: Vec<NameChoice<'_>> = listed
            .iter()
            .flatten()
            .map(|n| NameChoice {
                name: n,
                proven: own.as_deref() == Some(n),
            })
            .collect();
        if let Some(n) = own.as_deref()
            && !names.iter().any(|c| c.name == n)
        {
            names.push(NameChoice {
                name: n,
                proven: true,
            });
        }
        choose_name(&want.query, &names).unwrap_or_else(|| want.id.short())
    }

    /// Refuses to start a download the file system cannot hold: the space
    /// still to be written (the manifest's size less what a `.part` from an
    /// earlier run already has on disk) must be free in downloads/.
    /// [`SPACE_RESERVE`] is kept free besides, for the node's own files.
    fn check_space(&self, manifest: &Manifest) -> Result<(), FetchError> {
        self.check_free(self.space_needed(&manifest.content_id(), manifest.size))
    }

    /// Bytes a download of content `id` (`size` bytes) still needs on disk:
    /// its size less what a `.part` from an earlier run already holds.
    pub(super) fn space_needed(&self, id: &ContentId, size: u64) -> u64 {
        // The partial file's name, as `store::Partial::open` makes it.
        let part =
            (self.store.home().downloads()).join(format!(".lanshare-{}.part", &id.to_hex()[..24]));
        let on_disk = std::fs::metadata(&part).map_or(0, |m| crate::platform::allocated_bytes(&m));
        size.saturating_sub(on_disk)
    }

    /// Refuses ([`FetchError::NoSpace`]) when `needed` bytes and
    /// [`SPACE_RESERVE`] are not free in downloads/.
    pub(super) fn check_free(&self, needed: u64) -> Result<(), FetchError> {
        let dir = self.store.home().downloads();
        let Some(free) = crate::platform::free_space(&dir) else {
            return Ok(()); // cannot tell: let the writes report it
        };
        if needed > 0 && needed.saturating_add(SPACE_RESERVE) > free {
            return Err(FetchError::NoSpace {
                needed,
                free,
                dir: dir.display().to_string(),
            });
        }
        Ok(())
    }
}
