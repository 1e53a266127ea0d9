//! A folder's small files (at most [`SMALL_MAX`] bytes, one chunk) fetched
//! together: one connection per holder (a lane), its requests pipelined
//! (`GetManifest` and `GetChunk 0` of each file in one flight, up to
//! [`LANE_FILES`] files and [`LANE_BYTES`] bytes in flight), each answer
//! checked before anything lands: the manifest against the content id,
//! the chunk against the manifest (BLAKE3), the whole file's SHA-256
//! against the manifest's. Verified files land in groups through
//! [`Store::land_verified`] (written, synced together, then linked into
//! place and indexed with one save), each logged in download_log.txt.
//!
//! Each file goes to a holder that lists it; a holder that refuses a file
//! loses that file to its other holders, one that errs, lies, stalls or
//! sends below the minimum useful rate loses all of them (as the
//! single-file swarm drops a worker). A file no
//! usable holder is left for, one whose manifest says it is not one chunk
//! of its listed size, and one whose landing fails are handed back to the
//! folder job, which fetches it through the single-file download (that
//! waits, pauses on a full disk, and reports). A file is fetched by one
//! lane at a time, under its content's fetch lock.
//!
//! Never writes a file itself (the store does) and never touches another
//! download's state.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::Digest;
use tokio::sync::{OwnedMutexGuard, OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use super::pool::{Next, Pool};
use super::{FetchLocks, FileOutcome, FileTask, Tally};
use crate::api::FetchEvent;
use crate::dict::Holder;
use crate::fetch::FetchCtx;
use crate::fetch::judge::PeerRate;
use crate::fetch::peers::DropReason;
use crate::id::{ContentId, NodeId, to_hex};
use crate::logs::{Transfer, peer_name};
use crate::manifest::{CHUNK_SIZE, Manifest};
use crate::peer::CONNECT_TIMEOUT;
use crate::peer::PeerError;
use crate::peer::client::PeerConn;
use crate::peer::dial::DialError;
use crate::store::ChunkBuf;
use crate::store::Landing;
use crate::wire::frame::Response;
use crate::wire::{MAX_ERROR_MESSAGE, WireError};

/// Bytes of a response frame around its payload (kind, request id,
/// lengths, an error's code), with room to spare.
const FRAME_SLACK: u32 = 64;
/// A verified file counts at least this many bytes toward a lane's
/// throughput (`PeerRate`): a holder sending many empty files quickly is
/// useful, one sending one every few seconds is not.
const FILE_CREDIT: u64 = 4 << 10;
/// Files of at most this many bytes are fetched together.
pub const SMALL_MAX: u64 = CHUNK_SIZE as u64;
/// Files in flight on one lane at most.
pub const LANE_FILES: usize = 64;
/// Bytes of files in flight on one lane at most (one file more when none is).
pub const LANE_BYTES: u64 = 4 << 20;
/// Files landed together at most.
const LANDING_FILES: usize = 256;
/// Bytes of verified files waiting to land at most, in KiB (a file
/// counts its size rounded up, plus one).
const WAITING_KIB: u32 = 16 << 10;

/// What the batch tells its folder job.
pub(super) enum BatchNote {
    /// A file ended (landed at every place, or failed).
    Done(FileOutcome),
    /// A file for the single-file download.
    Handback(FileTask),
}

/// A verified file on its way to land.
struct Verified {
    task: FileTask,
    manifest: Manifest,
    data: ChunkBuf,
    peer: String,
    asked: Instant,
    _lock: OwnedMutexGuard<()>,
    _room: OwnedSemaphorePermit,
}

/// What the lanes and the lander share.
struct Shared {
    ctx: Arc<FetchCtx>,
    folder: String,
    locks: Arc<FetchLocks>,
    tally: Arc<Mutex<Tally>>,
    events: mpsc::Sender<FetchEvent>,
    notes: mpsc::Sender<BatchNote>,
    cancel: CancellationToken,
    pool: Mutex<Pool>,
    /// Bytes (KiB) of verified files waiting to land.
    room: Arc<Semaphore>,
}

impl Shared {
    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().expect("pool lock")
    }

    async fn hand_back(&self, tasks: impl IntoIterator<Item = FileTask>) {
        for t in tasks {
            let _ = self.notes.send(BatchNote::Handback(t)).await;
        }
    }
}

/// The folder job's side of a batch.
pub(super) struct BatchJob {
    pub folder: String,
    pub locks: Arc<FetchLocks>,
    pub tally: Arc<Mutex<Tally>>,
    pub events: mpsc::Sender<FetchEvent>,
    pub notes: mpsc::Sender<BatchNote>,
    pub cancel: CancellationToken,
}

/// Fetches `tasks` (small files) together from their holders, telling
/// the job through `job.notes` how each ended or which it hands back.
pub(super) async fn run(ctx: Arc<FetchCtx>, job: BatchJob, tasks: Vec<FileTask>) {
    let (pool, lanes, orphans) = plan(&ctx, tasks);
    let shared = Arc::new(Shared {
        ctx: ctx.clone(),
        folder: job.folder,
        locks: job.locks,
        tally: job.tally,
        events: job.events,
        notes: job.notes,
        cancel: job.cancel,
        pool: Mutex::new(pool),
        room: Arc::new(Semaphore::new(WAITING_KIB as usize)),
    });
    shared.hand_back(orphans).await;
    let (to_land, landing) = mpsc::channel::<Verified>(LANDING_FILES);
    let mut set = ctx
        .tasks
        .set::<()>(&format!("folder {} batch", shared.folder));
    set.spawn("lander", lander(shared.clone(), landing));
    for holder in lanes {
        let name = format!("lane {}", peer_name(&holder.name));
        set.spawn(&name, lane(shared.clone(), holder, to_land.clone()));
    }
    drop(to_land);
    while set.join_next().await.is_some() {}
}

/// The pool of `tasks`, the holders a lane is started for (those listing
/// the most files, at most `max_peers`), and the files none of them lists.
fn plan(ctx: &FetchCtx, tasks: Vec<FileTask>) -> (Pool, Vec<Holder>, Vec<FileTask>) {
    let mut known: HashMap<NodeId, (Holder, usize)> = HashMap::new();
    let mut listed: Vec<(FileTask, Vec<NodeId>)> = Vec::with_capacity(tasks.len());
    for t in tasks {
        let holders: Vec<NodeId> = (ctx.dict.holders(&t.id).into_iter())
            .filter(|h| t.size == 0 || h.chunks.has(0))
            .map(|h| {
                let id = h.id;
                known.entry(id).or_insert((h, 0)).1 += 1;
                id
            })
            .collect();
        listed.push((t, holders));
    }
    let mut lanes: Vec<(Holder, usize)> = known.into_values().collect();
    lanes.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.id.cmp(&b.0.id)));
    lanes.truncate(ctx.limits.max_peers.max(1));
    let alive: HashSet<NodeId> = lanes.iter().map(|(h, _)| h.id).collect();
    let (pool, orphans) = Pool::new(listed, alive);
    (pool, lanes.into_iter().map(|(h, _)| h).collect(), orphans)
}

/// A file requested on a lane.
struct InFlight {
    idx: usize,
    id: ContentId,
    size: u64,
    manifest_req: u32,
    /// `None` for an empty file (no chunk to ask).
    chunk_req: Option<u32>,
    lock: OwnedMutexGuard<()>,
    asked: Instant,
}

/// How one file's answers ended.
enum Answer {
    Verified(Manifest, ChunkBuf),
    /// The holder does not serve it: its other holders may.
    Refused,
    /// Not a one-chunk file of its listed size, or its chunks do not make
    /// its SHA-256: for the single-file download, which tells why.
    NotSmall,
}

/// One holder's lane: connects, then keeps its pipeline full of the files
/// it lists until none is left, or it is dropped.
async fn lane(shared: Arc<Shared>, holder: Holder, to_land: mpsc::Sender<Verified>) {
    let me = holder.id;
    let label = format!("{}@{}", peer_name(&holder.name), holder.addr);
    let dialer = shared.ctx.dialer();
    let dial = dialer.dial(holder.id, &holder.addrs, CONNECT_TIMEOUT);
    let mut inflight: VecDeque<InFlight> = VecDeque::new();
    let end = match shared.cancel.run_until_cancelled(dial).await {
        None => Ok(()),
        Some(Err(DialError::Peer(e))) => Err(DropReason::Peer(e)),
        Some(Err(DialError::WrongNode | DialError::Myself)) => Err(DropReason::WrongNode),
        Some(Ok(mut conn)) => {
            let mut lane = Lane {
                shared: &shared,
                me,
                label: &label,
                conn: &mut conn,
                inflight: &mut inflight,
                to_land: &to_land,
            };
            lane.run().await
        }
    };
    let mut back = Vec::new();
    {
        let mut pool = shared.pool();
        for f in inflight.drain(..) {
            back.extend(pool.give_back(f.idx, me, end.is_err()));
        }
        if end.is_err() || shared.cancel.is_cancelled() {
            back.extend(pool.drop_lane(me));
        }
    }
    if let Err(reason) = end {
        tracing::info!(peer = %label, %reason, "dropped from a folder's small files");
        let _ = shared.events.try_send(FetchEvent::PeerDropped {
            peer: label.clone(),
            reason: reason.to_string(),
        });
    }
    if !shared.cancel.is_cancelled() {
        shared.hand_back(back).await;
    }
}

struct Lane<'a> {
    shared: &'a Shared,
    me: NodeId,
    label: &'a str,
    conn: &'a mut PeerConn,
    inflight: &'a mut VecDeque<InFlight>,
    to_land: &'a mpsc::Sender<Verified>,
}

impl Lane<'_> {
    async fn run(&mut self) -> Result<(), DropReason> {
        let mut buf = ChunkBuf::new();
        let limits = &self.shared.ctx.limits;
        let stall = limits.stall_timeout;
        let mut rate = PeerRate::new(Instant::now(), stall, limits.min_rate);
        loop {
            if !self.fill().await? {
                return Ok(());
            }
            // A peer that stops reading fills the socket: sending waits
            // for it no longer than for an answer, and a cancel ends it.
            let shared = self.shared;
            let flushed = shared
                .cancel
                .run_until_cancelled(tokio::time::timeout(stall, self.conn.flush()));
            match flushed.await {
                None => return Ok(()),
                Some(Err(_)) => return Err(DropReason::Stalled(stall)),
                Some(Ok(sent)) => sent?,
            }
            let front = self.inflight.front().expect("a file in flight");
            let waiting = Instant::now();
            let answer = self.shared.cancel.run_until_cancelled(async {
                tokio::time::timeout(stall, answer(self.conn, front, &mut buf))
                    .await
                    .map_err(|_| DropReason::Stalled(stall))?
            });
            let Some(answer) = answer.await else {
                return Ok(());
            };
            let answer = answer?;
            rate.waited(waiting.elapsed());
            match &answer {
                Answer::Verified(_, data) => rate.useful((data.len() as u64).max(FILE_CREDIT)),
                Answer::Refused => rate.refused(),
                Answer::NotSmall => {}
            }
            let f = self.inflight.pop_front().expect("a file in flight");
            self.settle(f, answer, &mut buf).await;
            // Valid answers, but too slow to keep: its files go to the
            // others (as the single-file worker drops a peer).
            if let Some(slow) = rate.judge(Instant::now()) {
                return Err(slow);
            }
        }
    }

    /// Requests files until the pipeline is full; false when nothing is
    /// left for this lane (nor in flight) or the job is cancelled.
    async fn fill(&mut self) -> Result<bool, DropReason> {
        while self.inflight.len() < LANE_FILES && !self.shared.cancel.is_cancelled() {
            let busy: u64 = self.inflight.iter().map(|f| f.size).sum();
            let idle = self.inflight.is_empty();
            let next = self
                .shared
                .pool()
                .next(self.me, LANE_BYTES.saturating_sub(busy), idle);
            let (idx, id, size) = match next {
                Next::File { idx, id, size } => (idx, id, size),
                Next::Full => break,
                Next::Retired => return Ok(false),
            };
            let Some(lock) = self.shared.locks.try_lock(id) else {
                // Another download of this content runs: the single-file
                // download waits for it.
                let task = self.shared.pool().take(idx);
                self.shared.hand_back([task]).await;
                continue;
            };
            let (manifest_req, chunk_req) = match self.ask(id, size).await {
                Ok(reqs) => reqs,
                Err(end) => {
                    // Not in flight yet: given back here (to its other
                    // holders when this one failed).
                    let back = self.shared.pool().give_back(idx, self.me, end.is_some());
                    self.shared.hand_back(back).await;
                    return end.map_or(Ok(false), Err);
                }
            };
            self.inflight.push_back(InFlight {
                idx,
                id,
                size,
                manifest_req,
                chunk_req,
                lock,
                asked: Instant::now(),
            });
        }
        Ok(!self.inflight.is_empty() && !self.shared.cancel.is_cancelled())
    }

    /// Queues the requests of one file (its manifest, and its chunk
    /// unless it is empty): within the stall timeout, like an answer.
    /// `Err(None)`: the job was cancelled meanwhile.
    async fn ask(
        &mut self,
        id: ContentId,
        size: u64,
    ) -> Result<(u32, Option<u32>), Option<DropReason>> {
        let stall = self.shared.ctx.limits.stall_timeout;
        let conn = &mut *self.conn;
        let send = async {
            let manifest_req = conn.request_manifest(id).await?;
            let chunk_req = match size {
                0 => None,
                _ => Some(conn.request_chunk(id, 0).await?),
            };
            Ok::<_, PeerError>((manifest_req, chunk_req))
        };
        match (self.shared.cancel)
            .run_until_cancelled(tokio::time::timeout(stall, send))
            .await
        {
            None => Err(None),
            Some(Err(_)) => Err(Some(DropReason::Stalled(stall))),
            Some(Ok(Err(e))) => Err(Some(DropReason::Peer(e))),
            Some(Ok(Ok(reqs))) => Ok(reqs),
        }
    }

    /// Passes a verified file on to land, or gives it back.
    async fn settle(&mut self, f: InFlight, answer: Answer, buf: &mut ChunkBuf) {
        let shared = self.shared;
        match answer {
            Answer::Verified(manifest, data) => {
                let kib = u32::try_from(f.size.div_ceil(1024) + 1).unwrap_or(u32::MAX);
                let Ok(room) = shared.room.clone().acquire_many_owned(kib).await else {
                    return;
                };
                let task = shared.pool().take(f.idx);
                let v = Verified {
                    task,
                    manifest,
                    data,
                    peer: self.label.to_string(),
                    asked: f.asked,
                    _lock: f.lock,
                    _room: room,
                };
                let _ = self.to_land.send(v).await;
            }
            Answer::Refused => {
                let back = shared.pool().give_back(f.idx, self.me, true);
                shared.hand_back(back).await;
            }
            Answer::NotSmall => {
                let task = shared.pool().take(f.idx);
                shared.hand_back([task]).await;
            }
        }
        buf.clear();
    }
}

fn malformed(what: &str) -> DropReason {
    DropReason::Peer(PeerError::Protocol(WireError::Malformed(what.to_string())))
}

/// Reads and checks the answers to `f`'s requests (its manifest, then its
/// chunk); an error drops the holder.
async fn answer(
    conn: &mut PeerConn,
    f: &InFlight,
    buf: &mut ChunkBuf,
) -> Result<Answer, DropReason> {
    // No answer to a file of at most one chunk is longer than its
    // manifest's frame, its chunk's or an error's: a longer frame is
    // refused before its body is read.
    let max = Manifest::max_frame_len(f.size)
        .max(FRAME_SLACK + f.size as u32)
        .max(FRAME_SLACK + MAX_ERROR_MESSAGE as u32);
    let manifest = match conn.read_response_within(buf, max).await? {
        Response::Manifest { req, manifest } if req == f.manifest_req => Some(manifest),
        Response::Error { req, .. } if req == f.manifest_req => None,
        Response::Chunk { req, .. } => return Err(DropReason::UnaskedChunk(req)),
        _ => return Err(DropReason::UnexpectedResponse),
    };
    let chunk = match f.chunk_req {
        None => true,
        Some(want) => match conn.read_response_within(buf, max).await? {
            Response::Chunk { req, .. } if req == want => true,
            Response::Error { req, .. } if req == want => false,
            Response::Chunk { req, .. } => return Err(DropReason::UnaskedChunk(req)),
            _ => return Err(DropReason::UnexpectedResponse),
        },
    };
    let Some(manifest) = manifest else {
        return Ok(Answer::Refused);
    };
    if manifest.verify(&f.id).is_err() {
        return Err(malformed(
            "sent a manifest that does not match the content id",
        ));
    }
    if manifest.size != f.size || manifest.chunk_count() > 1 {
        return Ok(Answer::NotSmall);
    }
    if !chunk {
        return Ok(Answer::Refused);
    }
    let data = if f.size == 0 {
        ChunkBuf::new()
    } else {
        if buf.len() != manifest.chunk_len(0) as usize || !manifest.chunk_matches(0, buf) {
            return Err(DropReason::WrongHash(0));
        }
        std::mem::take(buf)
    };
    let sha: [u8; 32] = sha2::Sha256::digest(&data).into();
    if sha != manifest.sha256 {
        return Ok(Answer::NotSmall);
    }
    Ok(Answer::Verified(manifest, data))
}

/// Lands verified files in groups (whatever waits when one group is
/// done, up to [`LANDING_FILES`]), then tells the job and logs each.
async fn lander(shared: Arc<Shared>, mut landing: mpsc::Receiver<Verified>) {
    while let Some(first) = landing.recv().await {
        let mut group = vec![first];
        while group.len() < LANDING_FILES {
            match landing.try_recv() {
                Ok(v) => group.push(v),
                Err(_) => break,
            }
        }
        land(&shared, group).await;
    }
}

async fn land(shared: &Shared, mut group: Vec<Verified>) {
    let batch: Vec<Landing> = (group.iter_mut())
        .map(|v| Landing {
            manifest: v.manifest.clone(),
            data: std::mem::take(&mut v.data),
            places: v.task.places.iter().map(|(_, p)| p.clone()).collect(),
        })
        .collect();
    let store = shared.ctx.store.clone();
    let results = match tokio::task::spawn_blocking(move || store.land_verified(&batch)).await {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "landing small files ended abnormally");
            shared.hand_back(group.into_iter().map(|v| v.task)).await;
            return;
        }
    };
    for (v, landed) in group.into_iter().zip(results) {
        let Verified {
            task,
            peer,
            asked,
            manifest,
            ..
        } = v;
        if let Err(e) = landed {
            // The single-file download fetches it again, and pauses on a
            // full disk or reports.
            tracing::info!(id = %task.id.short(), error = %e, "cannot land a small file; fetching it alone");
            shared.hand_back([task]).await;
            continue;
        }
        let name = format!("{}/{}", shared.folder, task.places[0].0);
        let sha = to_hex(&manifest.sha256);
        let peers = [peer];
        shared.ctx.download_log.append(&Transfer {
            event: "download",
            file: &name,
            bytes: task.size,
            id: &task.id,
            peers: &peers,
            duration: asked.elapsed(),
            result: Ok(()),
            sha256: Some(&sha),
        });
        let [peer] = peers;
        (shared.tally.lock().expect("tally lock").peers).insert((task.id, peer), task.size);
        let outcome = FileOutcome {
            paths: task.places.into_iter().map(|(p, _)| p).collect(),
            result: Ok(()),
            transferred: task.size,
        };
        let _ = shared.notes.send(BatchNote::Done(outcome)).await;
    }
}
