//! The downloader: gets a verified manifest, then pulls chunks from every
//! holder at once (one worker per peer, a few requests in flight each, so a
//! faster peer simply gets more), verifies each chunk before writing it,
//! drops peers that err, stall or lie, retries chunks nobody can serve right
//! now with backoff, and finally checks the whole file (SHA-256, computed
//! from disk in order while the download runs) before moving it into place.
//! Chunk bookkeeping is [`state::ChunkMap`]; docs/fetch-states.md explains it.

pub mod state;

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::Digest;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::api::{FetchDone, FetchEvent};
use crate::chunkset::Bitmap;
use crate::dict::{Dict, Holder};
use crate::id::{ContentId, NodeId, to_hex};
use crate::logs::{Transfer, TransferLog, peer_name};
use crate::manifest::Manifest;
use crate::peer::PeerError;
use crate::peer::client::PeerConn;
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
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits {
            max_peers: 16,
            pipeline: 4,
            stall_timeout: Duration::from_secs(10),
            give_up_after: Duration::from_secs(30),
            wait_for_holders: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no online peer holds {0}; run `lanshare ls` to see what the network offers")]
    NoHolders(ContentId),
    #[error("no holder could send a valid manifest ({0})")]
    NoManifest(String),
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
}

impl Shared {
    fn bump(&self) {
        self.changed.send_modify(|g| *g += 1);
    }
}

enum WorkerEnd {
    /// Nothing left this peer could send.
    Finished,
    /// Dropped; `ban` when it sent bad data (never asked again this download).
    Failed { reason: String, ban: bool },
}

impl FetchCtx {
    /// Downloads `id` and returns where it landed. Logs the outcome.
    pub async fn fetch(
        &self,
        id: ContentId,
        events: &mpsc::Sender<FetchEvent>,
        cancel: CancellationToken,
    ) -> Result<FetchDone, FetchError> {
        let started = Instant::now();
        let mut peers_used = BTreeSet::new();
        let mut name = self
            .dict
            .content(&id)
            .and_then(|c| c.names.into_iter().next())
            .unwrap_or_else(|| id.short());
        let received = Arc::new(AtomicU64::new(0));
        let result = self
            .fetch_inner(id, events, &cancel, &mut peers_used, &mut name, &received)
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
        id: ContentId,
        events: &mpsc::Sender<FetchEvent>,
        cancel: &CancellationToken,
        peers_used: &mut BTreeSet<String>,
        name_out: &mut String,
        received: &Arc<AtomicU64>,
    ) -> Result<FetchDone, FetchError> {
        let started = Instant::now();
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
        let (manifest, name) = self.get_manifest(&id, &holders, cancel).await?;
        *name_out = name.clone();
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

    /// Asks holders in turn (complete ones first) for a manifest that hashes to `id`.
    async fn get_manifest(
        &self,
        id: &ContentId,
        holders: &[Holder],
        cancel: &CancellationToken,
    ) -> Result<(Manifest, String), FetchError> {
        let mut holders = holders.to_vec();
        holders.sort_by_key(|h| !matches!(h.chunks, crate::chunkset::ChunkSet::Full));
        let mut reasons = Vec::new();
        for h in holders {
            let attempt = async {
                let mut conn = PeerConn::connect_any(&h.addrs, self.node, &self.name).await?;
                conn.get_manifest(*id, self.limits.stall_timeout).await
            };
            let r = tokio::select! {
                _ = cancel.cancelled() => return Err(FetchError::Cancelled),
                r = attempt => r,
            };
            match r {
                Ok(m) => {
                    let name = self
                        .dict
                        .content(id)
                        .and_then(|c| c.names.into_iter().next())
                        .unwrap_or_else(|| id.short());
                    return Ok((m, name));
                }
                Err(e) => {
                    tracing::info!(peer = %h.addr, error = %e, "cannot get manifest");
                    reasons.push(format!("{}@{}: {e}", h.name, h.addr));
                }
            }
        }
        Err(FetchError::NoManifest(reasons.join("; ")))
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

        loop {
            // Start a worker for every usable holder not yet working.
            let now = Instant::now();
            for h in self.dict.holders(&shared.id) {
                if active.len() >= self.limits.max_peers {
                    break;
                }
                if active.contains_key(&h.id)
                    || banned.contains(&h.id)
                    || backoff.get(&h.id).is_some_and(|(until, _)| now < *until)
                {
                    continue;
                }
                let slot = next_slot;
                next_slot += 1;
                active.insert(h.id, slot);
                peers_used.insert(format!("{}@{}", peer_name(&h.name), h.addr));
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
            if last_progress.elapsed() > self.limits.give_up_after {
                let missing = shared.map.lock().expect("map lock").total() - done;
                let mut r: Vec<String> = reasons.values().cloned().collect();
                r.sort();
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
                    let Ok((_slot, nid, end)) = joined else { continue };
                    active.remove(&nid);
                    match end {
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
    let mut inflight: VecDeque<(u32, u32)> = VecDeque::new();
    let mut buf: Vec<u8> = Vec::with_capacity(shared.manifest.chunk_size as usize);
    let mut changes = shared.changed.subscribe();
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
            let stolen = shared
                .map
                .lock()
                .expect("map lock")
                .steal(slot, |i| chunks.has(i) && !refused.contains(&i));
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
                Some(h) => chunks = h.chunks,
                None => return WorkerEnd::Finished,
            }
            // A partial holder may have verified refused chunks since; ask
            // again at most once a second.
            if last_refusal_reset.elapsed() >= Duration::from_secs(1) {
                refused.clear();
                last_refusal_reset = Instant::now();
            }
            continue;
        }
        if let Err(e) = conn.flush().await {
            return failed(e);
        }
        let resp = tokio::select! {
            _ = cancel.cancelled() => return WorkerEnd::Finished,
            r = tokio::time::timeout(limits.stall_timeout, conn.read_response(&mut buf)) => r,
        };
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
                        shared.verified_here.lock().expect("lock").set(index);
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
