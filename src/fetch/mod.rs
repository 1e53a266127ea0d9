//! The downloader: gets a verified manifest, then pulls chunks from every
//! holder at once (one worker per peer, a few requests in flight each, so a
//! faster peer simply gets more), verifies each chunk before writing it,
//! drops peers that err, stall or lie, retries chunks nobody can serve right
//! now with backoff, and finally checks the whole file (SHA-256, computed
//! from disk in order while the download runs) before moving it into place.
//! Chunk bookkeeping is [`state::ChunkMap`]; docs/fetch-states.md explains it.

pub mod state;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::Digest;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{FetchDone, FetchEvent};
use crate::chunkset::Bitmap;
use crate::chunkset::ChunkSet;
use crate::dict::{Dict, Holder};
use crate::id::{ContentId, NodeId, to_hex};
use crate::logs::{Transfer, TransferLog, human_bytes, peer_name};
use crate::manifest::Manifest;
use crate::peer::PeerError;
use crate::peer::client::PeerConn;
use crate::resolve::{NameChoice, choose_name};
use crate::store::{Partial, Store, StoreError};
use crate::wire::frame::{ErrorCode, Response};
use state::{ChunkMap, ChunkState, Slot};

/// Tunables of a download.
#[derive(Clone, Debug)]
pub struct FetchLimits {
    /// Peers downloaded from at once (each costs one chunk buffer).
    pub max_peers: usize,
    /// Chunk requests in flight per peer.
    pub pipeline: usize,
    /// A peer that sends nothing for this long is dropped.
    pub stall_timeout: Duration,
    /// Give up after this long without any holder able to make progress.
    pub give_up_after: Duration,
    /// How long to wait for a first holder to appear.
    pub wait_for_holders: Duration,
    /// Holders asked for the manifest at once.
    pub manifest_fanout: usize,
    /// A holder that has not answered the manifest request for this long is
    /// reported slow and another holder is asked as well; it is dropped
    /// after three times this long.
    pub manifest_patience: Duration,
    /// In the endgame, a peer silent for this long with a chunk requested
    /// gives up its duplicate slot to another peer.
    pub endgame_patience: Duration,
    /// Least useful throughput (bytes of verified chunks per second) of a
    /// peer kept busy, and of the whole download; measured over
    /// `stall_timeout` for a peer and `give_up_after` for the download.
    pub min_rate: u64,
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits {
            max_peers: 16,
            pipeline: 4,
            stall_timeout: Duration::from_secs(10),
            give_up_after: Duration::from_secs(30),
            wait_for_holders: Duration::from_secs(3),
            manifest_fanout: 4,
            manifest_patience: Duration::from_secs(1),
            endgame_patience: Duration::from_secs(2),
            min_rate: 32 << 10,
        }
    }
}

/// A peer that refuses more chunks than this in one throughput window,
/// while sending less than the minimum rate, is given up on.
const MAX_REFUSALS_PER_WINDOW: u32 = 256;
/// Longest pause before a peer is asked again for chunks it refused.
const MAX_REFUSAL_BACKOFF: Duration = Duration::from_secs(30);
/// Holders remembered across downloads (good or bad answers).
const HOLDER_MEMORY: usize = 4096;

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct Want {
    pub id: ContentId,
    /// What the user typed: a name, a name without its extension, or an id
    /// prefix. The download is saved under the content's name that matches it.
    pub query: String,
    /// The size the user chose from (the dictionary entry the query
    /// resolved to). A manifest of another size is refused.
    pub size: Option<u64>,
}

impl Want {
    /// A download of `id` by id, with no expectation on the size.
    pub fn id(id: ContentId) -> Want {
        Want {
            id,
            query: id.to_hex(),
            size: None,
        }
    }
}

/// What this node learnt about holders across downloads: those that sent a
/// manifest or chunks are asked first next time, those that failed last.
#[derive(Default)]
pub struct HolderMemory {
    inner: Mutex<HashMap<NodeId, (bool, Instant)>>,
}

impl HolderMemory {
    /// 0: answered before; 1: unknown; 2: failed last time.
    fn rank(&self, id: &NodeId) -> u8 {
        match self.inner.lock().expect("memory lock").get(id) {
            Some((true, _)) => 0,
            None => 1,
            Some((false, _)) => 2,
        }
    }

    fn note(&self, id: NodeId, good: bool) {
        let mut m = self.inner.lock().expect("memory lock");
        if m.len() >= HOLDER_MEMORY
            && !m.contains_key(&id)
            && let Some(oldest) = m.iter().min_by_key(|(_, (_, at))| *at).map(|(k, _)| *k)
        {
            m.remove(&oldest);
        }
        m.insert(id, (good, Instant::now()));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no online peer holds {0}; run `lanshare ls` to see what the network offers")]
    NoHolders(ContentId),
    #[error("no holder could send a valid manifest ({0})")]
    NoManifest(String),
    #[error(
        "refusing the download: {holder} sent a manifest of {} ({manifest} bytes) but the content was listed as {} ({listed} bytes); that listing is wrong or forged",
        human_bytes(*manifest as f64),
        human_bytes(*listed as f64)
    )]
    SizeMismatch {
        holder: String,
        listed: u64,
        manifest: u64,
    },
    #[error(
        "not enough free space in {dir}: the download needs {} more, {} is free; free some space and fetch again",
        human_bytes(*needed as f64),
        human_bytes(*free as f64)
    )]
    NoSpace { needed: u64, free: u64, dir: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("download stalled: {missing} chunks missing and no peer can send them ({reasons})")]
    Stalled { missing: u32, reasons: String },
    #[error(
        "the finished file's SHA-256 differs from the one its publisher listed; the publisher's index is wrong or forged"
    )]
    Sha256Mismatch,
    #[error("cancelled")]
    Cancelled,
}

/// Everything a download needs from the node.
pub struct FetchCtx {
    pub store: Arc<Store>,
    pub dict: Arc<Dict>,
    pub node: NodeId,
    pub name: String,
    pub download_log: TransferLog,
    pub limits: FetchLimits,
    pub memory: HolderMemory,
}

/// State shared by the workers, the follower and the scheduler of one download.
struct Shared {
    id: ContentId,
    manifest: Arc<Manifest>,
    partial: Arc<Partial>,
    /// Std mutex: every critical section is a few bit operations.
    map: Mutex<ChunkMap>,
    /// Chunks hashed in memory by this process before they were written.
    verified_here: Mutex<Bitmap>,
    /// Bumped on every chunk state change.
    changed: watch::Sender<u64>,
    /// Bytes of chunks this run fetched and kept (duplicates excluded).
    received: Arc<AtomicU64>,
    /// Per worker slot: since when it waits for an answer with requests
    /// in flight (reset by every answer). Never nested with `map`.
    quiet_since: Mutex<HashMap<Slot, Instant>>,
    /// Slots trusted to take a stalled peer's endgame slot at once: their
    /// peer answered this node before (the manifest's sender among them)
    /// or sent a verified chunk in this download, and has not stalled
    /// since. Others wait twice as long, so
    /// a crowd of idle stalling peers cannot pass the slot round among
    /// themselves while a peer that answers waits its turn.
    trusted: Mutex<HashSet<Slot>>,
}

impl Shared {
    fn bump(&self) {
        self.changed.send_modify(|g| *g += 1);
    }

    /// Slots silent for longer than `patience` with requests in flight;
    /// they lose their trust.
    fn stalled_slots(&self, patience: Duration) -> HashSet<Slot> {
        let stalled: HashSet<Slot> = self
            .quiet_since
            .lock()
            .expect("quiet lock")
            .iter()
            .filter(|(_, since)| since.elapsed() > patience)
            .map(|(s, _)| *s)
            .collect();
        let mut trusted = self.trusted.lock().expect("trusted lock");
        trusted.retain(|s| !stalled.contains(s));
        stalled
    }

    fn set_trusted(&self, slot: Slot, yes: bool) {
        let mut t = self.trusted.lock().expect("trusted lock");
        if yes {
            t.insert(slot);
        } else {
            t.remove(&slot);
        }
    }

    fn is_trusted(&self, slot: Slot) -> bool {
        self.trusted.lock().expect("trusted lock").contains(&slot)
    }

    fn set_quiet(&self, slot: Slot, since: Option<Instant>) {
        let mut q = self.quiet_since.lock().expect("quiet lock");
        match since {
            Some(t) => q.insert(slot, t),
            None => q.remove(&slot),
        };
    }
}

enum WorkerEnd {
    /// Nothing left this peer could send.
    Finished,
    /// Gave back nothing useful: its useful throughput was under the
    /// minimum. Never asked again this download.
    Useless { reason: String },
    /// Dropped; `ban` when it sent bad data (never asked again this download).
    Failed { reason: String, ban: bool },
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
        let mut name = self.save_name(&want, None);
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
        if let Some(local) = self.store.complete(&id) {
            return Ok(FetchDone {
                id: id.to_hex(),
                path: local.path.display().to_string(),
                size: local.manifest.size,
                sha256: to_hex(&local.manifest.sha256),
                secs: 0.0,
                transferred: 0,
                peers: Vec::new(),
                already_local: true,
            });
        }
        let holders = self.wait_for_holders(&id, cancel).await?;
        let (manifest, sender) = self.get_manifest(want, &holders, events, cancel).await?;
        let name = self.save_name(want, Some(&sender));
        *name_out = name.clone();
        self.check_space(&manifest)?;
        let manifest = Arc::new(manifest);
        let partial = self.store.begin_partial(manifest.clone(), &name)?;
        let have = partial.have();
        let shared = Arc::new(Shared {
            id,
            map: Mutex::new(ChunkMap::new(manifest.chunk_count(), &have)),
            verified_here: Mutex::new(Bitmap::new(manifest.chunk_count())),
            manifest: manifest.clone(),
            partial: partial.clone(),
            changed: watch::channel(0).0,
            received: received.clone(),
            quiet_since: Mutex::new(HashMap::new()),
            trusted: Mutex::new(HashSet::new()),
        });
        let already = (0..manifest.chunk_count())
            .filter(|i| have.get(*i))
            .map(|i| manifest.chunk_len(i) as u64)
            .sum();
        let _ = events
            .send(FetchEvent::Started {
                id: id.to_hex(),
                name: name.clone(),
                size: manifest.size,
                holders: holders.len() as u32,
                already,
            })
            .await;

        let result = self
            .run_swarm(&shared, events, cancel, peers_used, already)
            .await;
        let _ = partial.save_state();
        let sha = match result {
            Ok(sha) => sha,
            Err(e) => {
                if matches!(e, FetchError::Sha256Mismatch) {
                    // Every chunk verified, yet the whole file does not
                    // match what the manifest claims: this content can
                    // never complete. Do not keep it for a resume.
                    partial.discard();
                }
                self.store.release_partial(&id);
                self.store.publish();
                return Err(e);
            }
        };
        let path = self.store.finish_partial(&partial)?;
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

    async fn wait_for_holders(
        &self,
        id: &ContentId,
        cancel: &CancellationToken,
    ) -> Result<Vec<Holder>, FetchError> {
        let deadline = tokio::time::Instant::now() + self.limits.wait_for_holders;
        loop {
            let notified = self.dict.changed.notified();
            let holders = self.dict.holders(id);
            if !holders.is_empty() {
                return Ok(holders);
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(FetchError::Cancelled),
                _ = tokio::time::sleep_until(deadline) => return Err(FetchError::NoHolders(*id)),
                _ = notified => {}
            }
        }
    }

    /// The name the download is saved under: the content's name that
    /// matches what the user typed, else a name from `proven` (the holder
    /// that sent the manifest), else the first in sort order. Never the
    /// first name any holder listed when a name matches the query.
    /// The size `holder` itself lists for `id` in the inventory held for it.
    fn listed_size(&self, holder: &NodeId, id: &ContentId) -> Option<u64> {
        let inv = self.dict.inventory(holder)?;
        let i = inv.entries.binary_search_by(|e| e.id.cmp(id)).ok()?;
        Some(inv.entries[i].size)
    }

    fn save_name(&self, want: &Want, proven: Option<&Holder>) -> String {
        let listed = self.dict.content(&want.id).map(|c| c.names);
        let own = proven.and_then(|h| {
            let inv = self.dict.inventory(&h.id)?;
            let i = inv.entries.binary_search_by(|e| e.id.cmp(&want.id)).ok()?;
            Some(inv.entries[i].name.clone())
        });
        let mut names: Vec<NameChoice<'_>> = listed
            .iter()
            .flatten()
            .map(|n| NameChoice {
                name: n,
                proven: own.as_deref() == Some(n.as_str()),
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
    fn check_space(&self, manifest: &Manifest) -> Result<(), FetchError> {
        let dir = self.store.home().downloads();
        // The partial file's name, as `store::Partial::open` makes it.
        let part = dir.join(format!(
            ".lanshare-{}.part",
            &manifest.content_id().to_hex()[..24]
        ));
        let on_disk = std::fs::metadata(&part).map_or(0, |m| crate::platform::allocated_bytes(&m));
        let needed = manifest.size.saturating_sub(on_disk);
        let Some(free) = crate::platform::free_space(&dir) else {
            return Ok(()); // cannot tell: let the writes report it
        };
        if needed > free {
            return Err(FetchError::NoSpace {
                needed,
                free,
                dir: dir.display().to_string(),
            });
        }
        Ok(())
    }

    /// Asks holders for a manifest that hashes to `id`, `manifest_fanout`
    /// at a time: answered-before and complete holders first. A holder
    /// silent for `manifest_patience` is reported slow and one more is
    /// asked; everything ends at `give_up_after`. Returns the first valid
    /// manifest and the holder that sent it.
    async fn get_manifest(
        &self,
        want: &Want,
        holders: &[Holder],
        events: &mpsc::Sender<FetchEvent>,
        cancel: &CancellationToken,
    ) -> Result<(Manifest, Holder), FetchError> {
        let id = want.id;
        let limits = &self.limits;
        let seed = std::collections::hash_map::RandomState::new();
        let mut queue: Vec<Holder> = holders.to_vec();
        // Ties are broken at random, so node ids chosen to sort first buy
        // nothing.
        queue.sort_by_cached_key(|h| {
            let answered = self.dict.peer(&h.id).is_some_and(|p| p.preferred.is_some());
            (
                self.memory.rank(&h.id),
                !matches!(h.chunks, ChunkSet::Full),
                !answered,
                seed.hash_one(h.id),
            )
        });
        let mut known: HashSet<NodeId> = queue.iter().map(|h| h.id).collect();
        let mut queue: VecDeque<Holder> = queue.into();
        // Each holder is held to the size it listed itself (else the size
        // the user chose from): a manifest frame longer than that size
        // allows is refused unread (1 MiB at least, so that a smaller lie is
        // read and named), and a manifest of another size is refused. So no
        // holder can make this node write more than it advertised, and one
        // that lists a real content under a wrong size (first, so that `ls`
        // shows its size) cannot make the honest holders' manifests refused.
        let listed_by = |h: &Holder| self.listed_size(&h.id, &want.id).or(want.size);
        let max_frame = |size: Option<u64>| {
            size.map_or(crate::wire::frame::MAX_RESPONSE_FRAME, |s| {
                Manifest::max_frame_len(s).max(1 << 20)
            })
        };
        let fanout = limits.manifest_fanout.max(1);
        let patience = limits.manifest_patience;
        let deadline = tokio::time::Instant::now() + limits.give_up_after;
        let label = |h: &Holder| format!("{}@{}", peer_name(&h.name), h.addr);

        struct Attempt {
            holder: Holder,
            started: tokio::time::Instant,
            slow: bool,
            running: bool,
        }
        let mut attempts: Vec<Attempt> = Vec::new();
        let mut running: JoinSet<(usize, Result<Manifest, PeerError>)> = JoinSet::new();
        let mut fast = 0usize;
        let mut reasons: Vec<String> = Vec::new();
        let mut told: Vec<String> = Vec::new();
        loop {
            // Holders that appeared since (their inventory was just pulled).
            for h in self.dict.holders(&id) {
                if known.insert(h.id) {
                    queue.push_back(h);
                }
            }
            // Keep `fanout` holders that are not (yet) slow busy; slow ones
            // may still answer until their own limits, up to 4 x fanout open.
            while fast < fanout && running.len() < 4 * fanout {
                let Some(h) = queue.pop_front() else { break };
                let idx = attempts.len();
                let (me, my_name, dict) = (self.node, self.name.clone(), self.dict.clone());
                let (hh, body_limit) = (h.clone(), limits.stall_timeout);
                let max_frame = max_frame(listed_by(&h));
                running.spawn(async move {
                    let r = ask_manifest(
                        &dict,
                        &hh,
                        id,
                        me,
                        &my_name,
                        patience * 3,
                        body_limit,
                        max_frame,
                    )
                    .await;
                    (idx, r)
                });
                attempts.push(Attempt {
                    holder: h,
                    started: tokio::time::Instant::now(),
                    slow: false,
                    running: true,
                });
                fast += 1;
            }
            if running.is_empty() {
                if reasons.is_empty() {
                    reasons.push("no holder is online".into());
                }
                return Err(FetchError::NoManifest(reasons.join("; ")));
            }
            let next_slow = attempts
                .iter()
                .filter(|a| a.running && !a.slow)
                .map(|a| a.started + patience)
                .min()
                .unwrap_or(deadline);
            let changed = self.dict.changed.notified();
            tokio::select! {
                _ = changed => {}
                _ = cancel.cancelled() => return Err(FetchError::Cancelled),
                _ = tokio::time::sleep_until(deadline) => {
                    let waiting: Vec<String> = attempts.iter().filter(|a| a.running).map(|a| label(&a.holder)).collect();
                    reasons.push(format!(
                        "no manifest within {:?}; no answer from {}",
                        limits.give_up_after,
                        waiting.join(", ")
                    ));
                    return Err(FetchError::NoManifest(reasons.join("; ")));
                }
                _ = tokio::time::sleep_until(next_slow) => {
                    let now = tokio::time::Instant::now();
                    let mut grew = false;
                    for a in attempts.iter_mut().filter(|a| a.running && !a.slow && now >= a.started + patience) {
                        a.slow = true;
                        fast -= 1;
                        let l = label(&a.holder);
                        tracing::info!(peer = %l, "holder slow to send the manifest; asking another");
                        if !told.contains(&l) {
                            told.push(l);
                            grew = true;
                        }
                    }
                    if grew {
                        let _ = events.try_send(FetchEvent::Slow { phase: "manifest".into(), peers: told.clone() });
                    }
                }
                Some(joined) = running.join_next() => {
                    let Ok((idx, r)) = joined else { continue };
                    let a = &mut attempts[idx];
                    a.running = false;
                    if !a.slow {
                        fast -= 1;
                    }
                    match r {
                        Ok(m) => {
                            let h = a.holder.clone();
                            self.memory.note(h.id, true);
                            if let Some(listed) = listed_by(&h)
                                && m.size != listed
                            {
                                // The manifest hashes to the id, so every
                                // holder's is the same: the sender's own
                                // listing lied.
                                return Err(FetchError::SizeMismatch {
                                    holder: label(&h),
                                    listed,
                                    manifest: m.size,
                                });
                            }
                            return Ok((m, h));
                        }
                        Err(e) => {
                            self.memory.note(a.holder.id, false);
                            tracing::info!(peer = %a.holder.addr, error = %e, "cannot get manifest");
                            reasons.push(format!("{}: {e}", label(&a.holder)));
                        }
                    }
                }
            }
        }
    }

    /// Runs workers and the follower until the file is complete and checked.
    async fn run_swarm(
        &self,
        shared: &Arc<Shared>,
        events: &mpsc::Sender<FetchEvent>,
        cancel: &CancellationToken,
        peers_used: &mut BTreeSet<String>,
        already: u64,
    ) -> Result<[u8; 32], FetchError> {
        let swarm_cancel = cancel.child_token();
        let _stop_all = swarm_cancel.clone().drop_guard();
        let mut follower = tokio::spawn(follow(shared.clone(), swarm_cancel.clone()));
        let mut workers: JoinSet<(Slot, NodeId, WorkerEnd)> = JoinSet::new();
        let mut active: HashMap<NodeId, Slot> = HashMap::new();
        let mut banned: HashSet<NodeId> = HashSet::new();
        let mut backoff: HashMap<NodeId, (Instant, Duration)> = HashMap::new();
        let mut reasons: HashMap<NodeId, String> = HashMap::new();
        let mut next_slot: Slot = 0;
        let mut last_progress = Instant::now();
        let mut last_done = shared.map.lock().expect("map lock").done_count();
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let swarm_started = Instant::now();
        // (when, bytes received): the useful throughput of the last window.
        let mut samples: VecDeque<(Instant, u64)> = VecDeque::new();
        let mut labels: HashMap<Slot, String> = HashMap::new();
        let mut told_slow: Vec<String> = Vec::new();
        // Since when every online holder is banned with no worker running.
        let mut all_banned_since: Option<Instant> = None;
        let seed = std::collections::hash_map::RandomState::new();

        loop {
            // Start a worker for every usable holder not yet working.
            let now = Instant::now();
            let mut holders = self.dict.holders(&shared.id);
            // Holders that answered before (the manifest's sender) first, so
            // that silent ones cannot take every worker slot; ties at random.
            holders.sort_by_cached_key(|h| {
                (
                    self.memory.rank(&h.id),
                    !matches!(h.chunks, ChunkSet::Full),
                    seed.hash_one(h.id),
                )
            });
            // A worker silent for `endgame_patience` does not count against
            // `max_peers` (up to as many again): stalling peers cannot keep
            // the holders that would answer out.
            let stalled = shared.stalled_slots(self.limits.endgame_patience).len();
            let max_peers = self.limits.max_peers + stalled.min(self.limits.max_peers);
            if active.is_empty() && holders.iter().all(|h| banned.contains(&h.id)) {
                let since = *all_banned_since.get_or_insert(now);
                // A new holder may still appear; wait as long as for the first.
                if !holders.is_empty() && since.elapsed() > self.limits.wait_for_holders {
                    let missing = shared.map.lock().expect("map lock").total() - last_done;
                    let mut r: Vec<String> = reasons.values().cloned().collect();
                    r.sort();
                    return Err(FetchError::Stalled {
                        missing,
                        reasons: format!("every holder was given up on: {}", r.join("; ")),
                    });
                }
            } else {
                all_banned_since = None;
            }
            for h in holders {
                if active.len() >= max_peers {
                    break;
                }
                // Holders that failed this node before (a manifest request
                // they left unanswered, a download they were given up on)
                // start a little later, so that they cannot grab every chunk
                // and endgame slot before the ones that answer.
                let late = self.memory.rank(&h.id) == 2
                    && swarm_started.elapsed() < self.limits.endgame_patience;
                if late
                    || active.contains_key(&h.id)
                    || banned.contains(&h.id)
                    || backoff.get(&h.id).is_some_and(|(until, _)| now < *until)
                {
                    continue;
                }
                let slot = next_slot;
                next_slot += 1;
                active.insert(h.id, slot);
                shared.set_trusted(slot, self.memory.rank(&h.id) == 0);
                let label = format!("{}@{}", peer_name(&h.name), h.addr);
                labels.insert(slot, label.clone());
                peers_used.insert(label);
                let (ctx_node, ctx_name) = (self.node, self.name.clone());
                let (shared, cancel, limits, dict) = (
                    shared.clone(),
                    swarm_cancel.clone(),
                    self.limits.clone(),
                    self.dict.clone(),
                );
                workers.spawn(async move {
                    let nid = h.id;
                    let end = worker(
                        &shared, &dict, h, slot, ctx_node, &ctx_name, &limits, &cancel,
                    )
                    .await;
                    shared.map.lock().expect("map lock").release_peer(slot);
                    shared.set_quiet(slot, None);
                    shared.bump();
                    (slot, nid, end)
                });
            }

            let done = shared.map.lock().expect("map lock").done_count();
            if done != last_done {
                last_done = done;
                last_progress = Instant::now();
            }
            // No chunk completed for this long: every holder is gone, idle
            // (partial holders lacking what is missing) or stalled.
            // Useful throughput of the whole download over the last
            // `give_up_after`: a trickle of valid chunks (one every 20 s)
            // must not keep it going for ever.
            let received = shared.received.load(Ordering::Relaxed);
            let window = self.limits.give_up_after;
            while samples.len() > 1 && samples[1].0.elapsed() >= window {
                samples.pop_front();
            }
            let trickle = match samples.front() {
                Some((at, then)) if at.elapsed() >= window && swarm_started.elapsed() >= window => {
                    let remaining = shared.manifest.size.saturating_sub(already + then);
                    let floor = (self.limits.min_rate as f64 * window.as_secs_f64()) as u64;
                    (received - then < floor.min(remaining)).then(|| {
                        format!(
                            "{} in the last {window:?}, less than {}/s",
                            human_bytes((received - then) as f64),
                            human_bytes(self.limits.min_rate as f64)
                        )
                    })
                }
                _ => None,
            };
            if last_progress.elapsed() > self.limits.give_up_after || trickle.is_some() {
                let missing = shared.map.lock().expect("map lock").total() - done;
                let mut r: Vec<String> = reasons.values().cloned().collect();
                r.sort();
                if let Some(t) = trickle {
                    r.insert(0, t);
                }
                if r.is_empty() {
                    r.push("no holder is online".into());
                }
                return Err(FetchError::Stalled {
                    missing,
                    reasons: r.join("; "),
                });
            }

            let changed = self.dict.changed.notified();
            tokio::select! {
                _ = cancel.cancelled() => return Err(FetchError::Cancelled),
                r = &mut follower => {
                    return r.unwrap_or_else(|e| Err(FetchError::NoManifest(format!("verifier crashed: {e}"))));
                }
                Some(joined) = workers.join_next() => {
                    let Ok((slot, nid, end)) = joined else { continue };
                    active.remove(&nid);
                    labels.remove(&slot);
                    match end {
                        WorkerEnd::Useless { reason } => {
                            let label = self.dict.peer(&nid).map(|p| format!("{}@{}", p.name, p.addr())).unwrap_or_else(|| nid.short());
                            tracing::info!(peer = %label, %reason, "giving up on this peer for this download");
                            let _ = events.try_send(FetchEvent::PeerDropped { peer: label.clone(), reason: reason.clone() });
                            reasons.insert(nid, format!("{label}: {reason}"));
                            banned.insert(nid);
                            self.memory.note(nid, false);
                        }
                        WorkerEnd::Finished => {
                            backoff.insert(nid, (Instant::now() + Duration::from_millis(500), Duration::from_millis(500)));
                        }
                        WorkerEnd::Failed { reason, ban } => {
                            let label = self.dict.peer(&nid).map(|p| format!("{}@{}", p.name, p.addr())).unwrap_or_else(|| nid.short());
                            tracing::info!(peer = %label, %reason, ban, "peer dropped from download");
                            let _ = events.try_send(FetchEvent::PeerDropped { peer: label.clone(), reason: reason.clone() });
                            reasons.insert(nid, format!("{label}: {reason}"));
                            if ban {
                                banned.insert(nid);
                            } else {
                                let delay = backoff.get(&nid).map(|(_, d)| (*d * 2).min(Duration::from_secs(8))).unwrap_or(Duration::from_millis(500));
                                backoff.insert(nid, (Instant::now() + delay, delay));
                            }
                        }
                    }
                }
                _ = changed => {}
                _ = tick.tick() => {
                    let received = shared.received.load(Ordering::Relaxed);
                    samples.push_back((Instant::now(), received));
                    // Tell the user which peers keep chunks waiting.
                    let mut grew = false;
                    for slot in shared.stalled_slots(self.limits.endgame_patience) {
                        if let Some(l) = labels.get(&slot)
                            && !told_slow.contains(l)
                        {
                            told_slow.push(l.clone());
                            grew = true;
                        }
                    }
                    if grew {
                        let _ = events.try_send(FetchEvent::Slow { phase: "chunks".into(), peers: told_slow.clone() });
                    }
                    let _ = events.try_send(FetchEvent::Progress {
                        done: (already + received).min(shared.manifest.size),
                        size: shared.manifest.size,
                        peers: active.len() as u32,
                    });
                }
            }
        }
    }
}

/// One manifest request to one holder: connect and handshake within
/// `limit`, the answer's first byte within `limit` too, the rest within
/// `body_limit`.
#[allow(clippy::too_many_arguments)]
async fn ask_manifest(
    dict: &Dict,
    h: &Holder,
    id: ContentId,
    me: NodeId,
    my_name: &str,
    limit: Duration,
    body_limit: Duration,
    max_frame: u32,
) -> Result<Manifest, PeerError> {
    let mut conn = tokio::time::timeout(limit, PeerConn::connect_any(&h.addrs, me, my_name))
        .await
        .map_err(|_| PeerError::Timeout("connecting and handshaking"))??;
    if conn.remote_node != h.id {
        dict.unreachable(h.id, conn.addr);
        return Err(PeerError::Protocol(crate::wire::WireError::Malformed(
            "answered as a different node".into(),
        )));
    }
    dict.reached(h.id, conn.addr, conn.remote_digest, conn.remote_contents);
    match conn.get_manifest(id, limit, body_limit, max_frame).await {
        Err(PeerError::Protocol(crate::wire::WireError::TooLarge { len, max })) => Err(
            PeerError::Protocol(crate::wire::WireError::Malformed(format!(
                "sent a manifest of {len} bytes where the listed size allows at most {max}"
            ))),
        ),
        r => r,
    }
}

/// Downloads chunks from one peer until nothing is left for it.
#[allow(clippy::too_many_arguments)]
async fn worker(
    shared: &Arc<Shared>,
    dict: &Dict,
    holder: Holder,
    slot: Slot,
    me: NodeId,
    my_name: &str,
    limits: &FetchLimits,
    cancel: &CancellationToken,
) -> WorkerEnd {
    let failed = |e: PeerError| WorkerEnd::Failed {
        reason: e.to_string(),
        ban: false,
    };
    let holder_id = holder.id;
    let conn = tokio::select! {
        _ = cancel.cancelled() => return WorkerEnd::Finished,
        c = PeerConn::connect_any(&holder.addrs, me, my_name) => match c {
            Ok(c) => c,
            Err(e) => return failed(e),
        },
    };
    if conn.remote_node != holder.id {
        dict.unreachable(holder.id, conn.addr);
        return WorkerEnd::Failed {
            reason: "answered as a different node".into(),
            ban: false,
        };
    }
    let addr = conn.addr;
    dict.reached(holder.id, addr, conn.remote_digest, conn.remote_contents);
    tracing::debug!(peer = %addr, slot, "download worker connected");
    let end = work_with(conn, shared, dict, holder, slot, limits, cancel).await;
    if matches!(end, WorkerEnd::Failed { ban: false, .. }) {
        // Next time, try the peer's other addresses first.
        dict.unreachable(holder_id, addr);
    }
    end
}

/// Downloads chunks over an open connection until nothing is left for the peer.
async fn work_with(
    mut conn: PeerConn,
    shared: &Arc<Shared>,
    dict: &Dict,
    holder: Holder,
    slot: Slot,
    limits: &FetchLimits,
    cancel: &CancellationToken,
) -> WorkerEnd {
    let failed = |e: PeerError| WorkerEnd::Failed {
        reason: e.to_string(),
        ban: false,
    };
    let mut chunks = holder.chunks;
    let mut refused: HashSet<u32> = HashSet::new();
    let mut last_refusal_reset = Instant::now();
    // Refused chunks are asked again after this long; it doubles while the
    // peer sends nothing useful in between.
    let mut refusal_backoff = Duration::from_secs(1);
    let mut inflight: VecDeque<(u32, u32)> = VecDeque::new();
    let mut buf: Vec<u8> = Vec::with_capacity(shared.manifest.chunk_size as usize);
    let mut changes = shared.changed.subscribe();
    // Useful throughput over windows of `stall_timeout`: time spent waiting
    // for this peer with requests in flight, verified bytes it sent, and
    // chunks it refused.
    let window = limits.stall_timeout;
    let mut window_start = Instant::now();
    let (mut busy, mut useful, mut refusals) = (Duration::ZERO, 0u64, 0u32);
    let mut waiting = false;
    loop {
        while inflight.len() < limits.pipeline {
            let next = shared
                .map
                .lock()
                .expect("map lock")
                .acquire(slot, |i| chunks.has(i) && !refused.contains(&i));
            let Some(index) = next else { break };
            match conn.request_chunk(shared.id, index).await {
                Ok(req) => inflight.push_back((req, index)),
                Err(e) => return failed(e),
            }
        }
        if inflight.is_empty() {
            // Endgame: every chunk is requested; help with one a slower
            // peer is still sending (the first verified copy wins).
            let stalled = shared.stalled_slots(limits.endgame_patience);
            let trusted = shared.is_trusted(slot);
            let long_stalled = if trusted {
                HashSet::new()
            } else {
                shared.stalled_slots(limits.endgame_patience * 2)
            };
            let stolen = shared.map.lock().expect("map lock").steal(
                slot,
                |i| chunks.has(i) && !refused.contains(&i),
                |s| stalled.contains(&s),
                |s| trusted || long_stalled.contains(&s),
            );
            if let Some(index) = stolen {
                match conn.request_chunk(shared.id, index).await {
                    Ok(req) => inflight.push_back((req, index)),
                    Err(e) => return failed(e),
                }
            }
        }
        if inflight.is_empty() {
            if shared.map.lock().expect("map lock").is_complete() {
                return WorkerEnd::Finished;
            }
            // Nothing for this peer now; wait for chunks to be given back or
            // for the peer to get more (a partial holder), then look again.
            changes.mark_unchanged();
            tokio::select! {
                _ = cancel.cancelled() => return WorkerEnd::Finished,
                _ = changes.changed() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            match dict
                .holders(&shared.id)
                .into_iter()
                .find(|h| h.id == holder.id)
            {
                Some(h) => {
                    if h.chunks != chunks {
                        // It holds more now: look at every chunk again.
                        shared.map.lock().expect("map lock").rewind(slot);
                    }
                    chunks = h.chunks;
                }
                None => return WorkerEnd::Finished,
            }
            // A partial holder may have verified refused chunks since; ask
            // again, less often each time it refuses them all again.
            if !refused.is_empty() && last_refusal_reset.elapsed() >= refusal_backoff {
                refused.clear();
                shared.map.lock().expect("map lock").rewind(slot);
                last_refusal_reset = Instant::now();
                refusal_backoff = (refusal_backoff * 2).min(MAX_REFUSAL_BACKOFF);
            }
            continue;
        }
        if let Err(e) = conn.flush().await {
            return failed(e);
        }
        tracing::trace!(slot, inflight = ?inflight, "waiting for an answer");
        if !waiting {
            shared.set_quiet(slot, Some(Instant::now()));
            waiting = true;
        }
        let asked_at = Instant::now();
        let resp = tokio::select! {
            _ = cancel.cancelled() => return WorkerEnd::Finished,
            r = tokio::time::timeout(limits.stall_timeout, conn.read_response(&mut buf)) => r,
        };
        busy += asked_at.elapsed();
        let resp = match resp {
            Err(_) => {
                return WorkerEnd::Failed {
                    reason: format!("stalled for {:?}", limits.stall_timeout),
                    ban: false,
                };
            }
            Ok(Err(e)) => return failed(e),
            Ok(Ok(r)) => r,
        };
        // Judge the last window: a peer kept busy must send verified data at
        // `min_rate` at least; a refusal is an answer but not progress.
        let elapsed = window_start.elapsed();
        if elapsed >= window {
            // Judged only when the peer was kept busy half the window, or
            // refused a lot: an idle partial holder is not slow.
            let engaged = busy >= window / 2 || refusals > MAX_REFUSALS_PER_WINDOW;
            let floor = (limits.min_rate as f64 * elapsed.as_secs_f64()) as u64;
            if engaged && useful < floor {
                return WorkerEnd::Useless {
                    reason: format!(
                        "gave up on it: only {} of verified data in {:.0}s ({refusals} chunks refused, {:.0}s waiting for answers); at least {}/s is needed",
                        human_bytes(useful as f64),
                        elapsed.as_secs_f64(),
                        busy.as_secs_f64(),
                        human_bytes(limits.min_rate as f64)
                    ),
                };
            }
            window_start = Instant::now();
            (busy, useful, refusals) = (Duration::ZERO, 0, 0);
        }
        match resp {
            Response::Chunk { req, len } => {
                let Some(pos) = inflight.iter().position(|(r, _)| *r == req) else {
                    return WorkerEnd::Failed {
                        reason: format!("sent a chunk nobody asked for (request {req})"),
                        ban: true,
                    };
                };
                let (_, index) = inflight.remove(pos).expect("position is valid");
                let (s, data) = (shared.clone(), std::mem::take(&mut buf));
                let (verdict, data) = tokio::task::spawn_blocking(move || {
                    if !s.manifest.chunk_matches(index, &data) {
                        return (Ok(false), data);
                    }
                    if s.map.lock().expect("map lock").state(index) == Some(ChunkState::Done) {
                        return (Ok(true), data); // the other endgame copy won
                    }
                    let r = s.partial.write_chunk(index, &data).map(|()| true);
                    (r, data)
                })
                .await
                .expect("chunk check does not panic");
                buf = data;
                match verdict {
                    Ok(true) => {
                        useful += len as u64;
                        refusal_backoff = Duration::from_secs(1);
                        shared.verified_here.lock().expect("lock").set(index);
                        shared.set_trusted(slot, true);
                        if shared.map.lock().expect("map lock").complete(index, slot) {
                            shared.received.fetch_add(len as u64, Ordering::Relaxed);
                            shared.bump();
                        }
                    }
                    Ok(false) => {
                        return WorkerEnd::Failed {
                            reason: format!("sent chunk {index} with a wrong hash"),
                            ban: true,
                        };
                    }
                    Err(e) => {
                        return WorkerEnd::Failed {
                            reason: format!("local write failed: {e}"),
                            ban: false,
                        };
                    }
                }
            }
            Response::Error {
                req,
                code: ErrorCode::NoChunk,
                ..
            } => {
                if let Some(pos) = inflight.iter().position(|(r, _)| *r == req) {
                    let (_, index) = inflight.remove(pos).expect("position is valid");
                    shared.map.lock().expect("map lock").release(index, slot);
                    refused.insert(index);
                    refusals += 1;
                    shared.bump();
                }
            }
            Response::Error { code, message, .. } => {
                return WorkerEnd::Failed {
                    reason: format!("answered {code:?}: {message}"),
                    ban: false,
                };
            }
            _ => {
                return WorkerEnd::Failed {
                    reason: "sent an unexpected response".into(),
                    ban: true,
                };
            }
        }
        // An answer: quiet from now on only if requests remain.
        if inflight.is_empty() {
            shared.set_quiet(slot, None);
            waiting = false;
        } else {
            shared.set_quiet(slot, Some(Instant::now()));
        }
    }
}

/// Reads the partial file in order as chunks complete, hashing it with
/// SHA-256 (and re-checking with BLAKE3 any chunk this process did not hash
/// itself, i.e. one from an earlier run). Returns the SHA-256 once the whole
/// file is read and matches the manifest.
async fn follow(shared: Arc<Shared>, cancel: CancellationToken) -> Result<[u8; 32], FetchError> {
    let mut changes = shared.changed.subscribe();
    let mut sha = sha2::Sha256::new();
    let mut buf = Vec::with_capacity(shared.manifest.chunk_size as usize);
    let total = shared.manifest.chunk_count();
    let mut index = 0;
    while index < total {
        changes.mark_unchanged();
        if shared.map.lock().expect("map lock").state(index) != Some(ChunkState::Done) {
            tokio::select! {
                _ = cancel.cancelled() => return Err(FetchError::Cancelled),
                _ = changes.changed() => {}
            }
            continue;
        }
        let trusted = shared.verified_here.lock().expect("lock").get(index);
        let s = shared.clone();
        let (ok, sha_back, buf_back) = tokio::task::spawn_blocking(move || {
            let m = &s.manifest;
            buf.resize(m.chunk_len(index) as usize, 0);
            if s.partial.read_at(m.chunk_offset(index), &mut buf).is_err() {
                return (false, sha, buf);
            }
            if !trusted && !m.chunk_matches(index, &buf) {
                return (false, sha, buf);
            }
            sha.update(&buf);
            (true, sha, buf)
        })
        .await
        .expect("verifier does not panic");
        sha = sha_back;
        buf = buf_back;
        if !ok {
            tracing::warn!(
                chunk = index,
                "chunk failed the check on disk; fetching it again"
            );
            shared.partial.mark_missing(index);
            shared.map.lock().expect("map lock").mark_bad(index);
            shared.bump();
            continue;
        }
        index += 1;
    }
    let digest: [u8; 32] = sha.finalize().into();
    if digest != shared.manifest.sha256 {
        return Err(FetchError::Sha256Mismatch);
    }
    Ok(digest)
}
