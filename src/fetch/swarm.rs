//! The scheduler of one download: starts a worker for every usable holder
//! (in [`HolderMemory`](super::peers::HolderMemory) order, up to
//! `max_peers`), records how each ended in the [`PeerBook`], reports
//! progress and slow peers, and gives up when no usable peer remains or
//! no progress is made ([`Progress`]). [`Shared`] is the state its
//! workers and the follower share.
//!
//! Never reads or writes chunk data, never talks to a peer itself.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::FetchError;
use super::check::WriterSlot;
use super::ctx::FetchCtx;
use super::endgame::SlotWatch;
use super::follow::{FEED_AHEAD_BYTES, Feed, follow};
use super::judge::{NoProgress, Progress};
use super::peers::{PeerBook, WorkerEnd};
use super::state::{ChunkMap, ChunkState, Slot};
use super::worker::worker;
use crate::api::{FetchEvent, PeerBytes};
use crate::chunkset::{Bitmap, ChunkSet};
use crate::dict::Holder;
use crate::id::{ContentId, NodeId};
use crate::logs::peer_name;
use crate::manifest::Manifest;
use crate::store::Partial;
use crate::task::{TaskSet, Tasks};

/// State shared by the workers, the follower and the scheduler of one download.
pub(super) struct Shared {
    pub id: ContentId,
    pub manifest: Arc<Manifest>,
    pub partial: Arc<Partial>,
    /// Std mutex: every critical section is a few bit operations.
    pub map: Mutex<ChunkMap>,
    /// Chunks hashed in memory by this process before they were written.
    pub verified_here: Mutex<Bitmap>,
    /// Verified chunk buffers on their way to the follower's SHA-256.
    pub feed: Feed,
    /// Bumped on every chunk state change.
    pub changed: watch::Sender<u64>,
    /// Bytes of chunks this run fetched and kept (duplicates excluded).
    pub received: Arc<AtomicU64>,
    /// Silent and trusted worker slots. Never nested with `map`.
    watch: Mutex<SlotWatch>,
    /// Bytes kept from each worker, with its peer's label.
    pub given: Mutex<HashMap<Slot, PeerBytes>>,
    /// The download's writing thread ([`super::check`]).
    pub writer: WriterSlot,
}

impl Shared {
    /// A download of `id` into `partial`, its saved chunks done.
    pub fn new(id: ContentId, partial: Arc<Partial>, received: Arc<AtomicU64>) -> Shared {
        let manifest = partial.manifest.clone();
        let total = manifest.chunk_count();
        Shared {
            id,
            map: Mutex::new(ChunkMap::new(total, &partial.have())),
            verified_here: Mutex::new(Bitmap::new(total)),
            feed: Feed::new(FEED_AHEAD_BYTES),
            manifest,
            partial,
            changed: watch::channel(0).0,
            received,
            watch: Mutex::new(SlotWatch::default()),
            given: Mutex::default(),
            writer: WriterSlot::default(),
        }
    }

    /// Bytes of the chunks done (at the start: those already on disk).
    pub fn bytes_done(&self) -> u64 {
        let map = self.map.lock().expect("map lock");
        (0..self.manifest.chunk_count())
            .filter(|i| map.state(*i) == Some(ChunkState::Done))
            .map(|i| self.manifest.chunk_len(i) as u64)
            .sum()
    }

    pub fn bump(&self) {
        self.changed.send_modify(|g| *g += 1);
    }

    pub fn watch(&self) -> MutexGuard<'_, SlotWatch> {
        self.watch.lock().expect("watch lock")
    }
}

/// The scheduler's state during one swarm.
struct Swarm<'a> {
    ctx: &'a FetchCtx,
    shared: &'a Arc<Shared>,
    events: &'a mpsc::Sender<FetchEvent>,
    /// Stops every worker when the swarm ends.
    cancel: CancellationToken,
    /// One task per worker, `worker/<peer>`.
    workers: TaskSet<(Slot, NodeId, WorkerEnd)>,
    active: HashMap<NodeId, Slot>,
    book: PeerBook,
    progress: Progress,
    already: u64,
    labels: HashMap<Slot, String>,
    told_slow: Vec<String>,
    next_slot: Slot,
    started: Instant,
    seed: RandomState,
}

impl FetchCtx {
    /// Runs workers and the follower until the file is complete and
    /// checked; they are the tasks `worker/<peer>` and `follower` of `tasks`.
    pub(super) async fn run_swarm(
        &self,
        shared: &Arc<Shared>,
        events: &mpsc::Sender<FetchEvent>,
        cancel: &CancellationToken,
        tasks: &Tasks,
        peers_used: &mut BTreeSet<String>,
        already: u64,
    ) -> Result<[u8; 32], FetchError> {
        let swarm_cancel = cancel.child_token();
        let _stop_all = swarm_cancel.clone().drop_guard();
        // A set of one: its result (the file's SHA-256, or why it failed)
        // is this function's.
        let mut follower = tasks.set("follower");
        follower.spawn("sha256", follow(shared.clone(), swarm_cancel.clone()));
        let workers = tasks.set("worker");
        let mut swarm = Swarm::new(
            self,
            shared,
            events,
            swarm_cancel,
            workers,
            already,
            Instant::now(),
        );
        let mut tick = tokio::time::interval(Duration::from_millis(200));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            swarm.start_workers(Instant::now(), peers_used)?;
            swarm.check_progress(Instant::now())?;
            let changed = self.dict.contents.changed.notified();
            tokio::select! {
                _ = cancel.cancelled() => return Err(FetchError::Cancelled),
                Some(r) = follower.join_next() => {
                    return r.unwrap_or_else(|e| Err(FetchError::NoManifest(format!("verifier crashed: {e}"))));
                }
                Some(joined) = swarm.workers.join_next() => {
                    let Ok((slot, nid, end)) = joined else { continue };
                    swarm.worker_ended(slot, nid, end, Instant::now());
                }
                _ = changed => {}
                _ = tick.tick() => swarm.tick(Instant::now()),
            }
        }
    }
}

impl<'a> Swarm<'a> {
    fn new(
        ctx: &'a FetchCtx,
        shared: &'a Arc<Shared>,
        events: &'a mpsc::Sender<FetchEvent>,
        cancel: CancellationToken,
        workers: TaskSet<(Slot, NodeId, WorkerEnd)>,
        already: u64,
        now: Instant,
    ) -> Swarm<'a> {
        let limits = &ctx.limits;
        let done = shared.map.lock().expect("map lock").done_count();
        let to_fetch = shared.manifest.size.saturating_sub(already);
        Swarm {
            ctx,
            shared,
            events,
            cancel,
            workers,
            active: HashMap::new(),
            book: PeerBook::new(limits.wait_for_holders),
            progress: Progress::new(now, limits.give_up_after, limits.min_rate, to_fetch, done),
            already,
            labels: HashMap::new(),
            told_slow: Vec::new(),
            next_slot: 0,
            started: now,
            seed: RandomState::new(),
        }
    }

    /// Holders that answered before (the manifest's sender) first, so that
    /// silent ones cannot take every worker slot; ties at random.
    fn sorted_holders(&self) -> Vec<Holder> {
        let mut holders = self.ctx.dict.holders(&self.shared.id);
        holders.sort_by_cached_key(|h| {
            (
                self.ctx.memory.rank(&h.id),
                !matches!(h.chunks, ChunkSet::Full),
                self.seed.hash_one(h.id),
            )
        });
        holders
    }

    /// Starts a worker at `now` for every usable holder not yet working;
    /// gives up when every online holder was given up on.
    fn start_workers(
        &mut self,
        now: Instant,
        peers_used: &mut BTreeSet<String>,
    ) -> Result<(), FetchError> {
        let limits = &self.ctx.limits;
        let holders = self.sorted_holders();
        let ids: Vec<NodeId> = holders.iter().map(|h| h.id).collect();
        if let Some(reasons) = self.book.give_up(&ids, !self.active.is_empty(), now) {
            let missing = self.shared.map.lock().expect("map lock").total() - self.progress.done();
            return Err(FetchError::Stalled { missing, reasons });
        }
        // A worker silent for `endgame_patience` does not count against
        // `max_peers` (up to as many again): stalling peers cannot keep
        // the holders that would answer out.
        let stalled = self
            .shared
            .watch()
            .stalled(now, limits.endgame_patience)
            .len();
        let max_peers = limits.max_peers + stalled.min(limits.max_peers);
        for h in holders {
            if self.active.len() >= max_peers {
                break;
            }
            // Holders that failed this node before (a manifest request
            // they left unanswered, a download they were given up on)
            // start a little later, so that they cannot grab every chunk
            // and endgame slot before the ones that answer.
            let late = self.ctx.memory.rank(&h.id) == 2
                && now.saturating_duration_since(self.started) < limits.endgame_patience;
            if late || self.active.contains_key(&h.id) || !self.book.usable(&h.id, now) {
                continue;
            }
            self.spawn_worker(h, peers_used);
        }
        Ok(())
    }

    fn spawn_worker(&mut self, h: Holder, peers_used: &mut BTreeSet<String>) {
        let slot = self.next_slot;
        self.next_slot += 1;
        self.active.insert(h.id, slot);
        let trusted = self.ctx.memory.rank(&h.id) == 0;
        self.shared.watch().set_trusted(slot, trusted);
        let label = format!("{}@{}", peer_name(&h.name), h.addr);
        self.labels.insert(slot, label.clone());
        peers_used.insert(label.clone());
        let given = PeerBytes {
            peer: label.clone(),
            bytes: 0,
        };
        self.shared
            .given
            .lock()
            .expect("given lock")
            .insert(slot, given);
        let (dialer, dict) = (self.ctx.dialer(), self.ctx.dict.clone());
        let (shared, cancel, limits) = (
            self.shared.clone(),
            self.cancel.clone(),
            self.ctx.limits.clone(),
        );
        self.workers.spawn(&label, async move {
            let nid = h.id;
            let end = worker(&shared, &dialer, &dict, h, slot, &limits, &cancel).await;
            shared.map.lock().expect("map lock").release_peer(slot);
            shared.watch().set_quiet(slot, None);
            shared.bump();
            (slot, nid, end)
        });
    }

    /// Records at `now` how the worker of `nid` in `slot` ended, and tells
    /// the user why a peer was dropped.
    fn worker_ended(&mut self, slot: Slot, nid: NodeId, end: WorkerEnd, now: Instant) {
        self.active.remove(&nid);
        self.labels.remove(&slot);
        let mut label = String::new();
        if let WorkerEnd::Dropped(reason) = &end {
            label = self
                .ctx
                .dict
                .peers
                .peer(&nid)
                .map(|p| format!("{}@{}", p.name, p.addr()))
                .unwrap_or_else(|| nid.short());
            if reason.is_useless() {
                tracing::info!(peer = %label, %reason, "giving up on this peer for this download");
                self.ctx.memory.note(nid, false, now);
            } else {
                let ban = reason.bans();
                tracing::info!(peer = %label, %reason, ban, "peer dropped from download");
            }
            let _ = self.events.try_send(FetchEvent::PeerDropped {
                peer: label.clone(),
                reason: reason.to_string(),
            });
        }
        self.book.ended(nid, &label, &end, now);
    }

    /// Gives up when no chunk completed for `give_up_after` (every holder
    /// is gone, idle or stalled), or when the useful throughput of the
    /// whole download over that long is under `min_rate`: a trickle of
    /// valid chunks (one every 20 s) must not keep it going for ever.
    fn check_progress(&mut self, now: Instant) -> Result<(), FetchError> {
        let done = self.shared.map.lock().expect("map lock").done_count();
        let received = self.shared.received.load(Ordering::Relaxed);
        let Some(verdict) = self.progress.check(now, done, received) else {
            return Ok(());
        };
        let missing = self.shared.map.lock().expect("map lock").total() - done;
        let mut r = self.book.reasons();
        if let NoProgress::Trickle(t) = verdict {
            r.insert(0, t);
        }
        if r.is_empty() {
            r.push("no holder is online".into());
        }
        Err(FetchError::Stalled {
            missing,
            reasons: r.join("; "),
        })
    }

    /// Every 200 ms: a throughput sample, the peers that keep chunks
    /// waiting (once each), and the progress event.
    fn tick(&mut self, now: Instant) {
        let received = self.shared.received.load(Ordering::Relaxed);
        self.progress.sample(now, received);
        let mut grew = false;
        let stalled = self
            .shared
            .watch()
            .stalled(now, self.ctx.limits.endgame_patience);
        for slot in stalled {
            if let Some(l) = self.labels.get(&slot)
                && !self.told_slow.contains(l)
            {
                self.told_slow.push(l.clone());
                grew = true;
            }
        }
        if grew {
            let _ = self.events.try_send(FetchEvent::Slow {
                phase: "chunks".into(),
                peers: self.told_slow.clone(),
            });
        }
        let peers = self
            .shared
            .given
            .lock()
            .expect("given lock")
            .values()
            .cloned()
            .collect();
        let _ = self.events.try_send(FetchEvent::PeerBytes { peers });
        let size = self.shared.manifest.size;
        let _ = self.events.try_send(FetchEvent::Progress {
            done: (self.already + received).min(size),
            size,
            peers: self.active.len() as u32,
        });
    }
}
