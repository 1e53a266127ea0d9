//! One worker: downloads chunks from one peer over one connection, a few
//! requests in flight, until nothing is left for it. It verifies each
//! chunk before it is written (on a checking thread of its own, then the
//! download's writing thread, [`super::check`], while it reads the next
//! answers), gives back chunks the peer refuses (asking
//! again later with backoff), helps with held-up chunks in the endgame,
//! and ends with a typed [`DropReason`] when the peer errs, stalls, lies or
//! is too slow.
//!
//! Changes chunk states only through [`super::state::ChunkMap`]'s named
//! methods; never starts other workers or decides the download's end.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::FetchLimits;
use super::check::{Checker, Landed, Landing};
use super::judge::PeerRate;
use super::peers::{DropReason, WorkerEnd};
use super::state::Slot;
use super::swarm::Shared;
use crate::chunkset::ChunkSet;
use crate::dict::{Dict, Holder};
use crate::id::NodeId;
use crate::peer::CONNECT_TIMEOUT;
use crate::peer::client::PeerConn;
use crate::peer::dial::{DialError, Dialer};
use crate::retry::{Retry, RetryPolicy};
use crate::store::ChunkBuf;
use crate::wire::frame::{ErrorCode, Response};

/// Chunks a peer refused are asked again after 1 s, doubling up to 30 s
/// while it sends nothing useful in between.
const REFUSAL_RETRY: RetryPolicy =
    RetryPolicy::new(Duration::from_secs(1), Duration::from_secs(30));

/// Bytes of chunk buffers one worker uses to overlap receiving with
/// checking and writing: with 1 MiB chunks, the one being read into and
/// three held by its [`Checker`] (receiving waits for the checker only when
/// it holds three). With chunks over 1 MiB the worker still keeps two
/// buffers, one being read into and one checked: at most
/// `max(4 MiB, 2 × chunk)`.
const WORKER_BUFFER_BYTES: usize = 4 << 20;

/// Chunks one worker's checker may hold (see [`WORKER_BUFFER_BYTES`]).
fn checks_in_flight(chunk_size: usize) -> usize {
    (WORKER_BUFFER_BYTES / chunk_size.max(1))
        .saturating_sub(1)
        .max(1)
}

/// A worker's step ends it with this.
type Step = Result<(), WorkerEnd>;

fn dropped(reason: impl Into<DropReason>) -> WorkerEnd {
    WorkerEnd::Dropped(reason.into())
}

/// Downloads chunks from one peer until nothing is left for it.
pub(super) async fn worker(
    shared: &Arc<Shared>,
    dialer: &Dialer,
    dict: &Dict,
    holder: Holder,
    slot: Slot,
    limits: &FetchLimits,
    cancel: &CancellationToken,
) -> WorkerEnd {
    let holder_id = holder.id;
    let dial = dialer.dial(holder.id, &holder.addrs, CONNECT_TIMEOUT);
    let conn = match cancel.run_until_cancelled(dial).await {
        None => return WorkerEnd::Finished,
        Some(Ok(c)) => c,
        Some(Err(DialError::Peer(e))) => return dropped(e),
        Some(Err(DialError::WrongNode | DialError::Myself)) => {
            return dropped(DropReason::WrongNode);
        }
    };
    let addr = conn.addr;
    tracing::debug!(peer = %addr, slot, "download worker connected");
    let mut w = Worker::new(conn, shared, dict, holder, slot, limits, Instant::now());
    let mut end = loop {
        if let Err(end) = w.step(cancel).await {
            break end;
        }
    };
    // The last chunk received may still be checked and written: count it.
    if let Err(late) = w.settle_pending().await
        && matches!(end, WorkerEnd::Finished)
    {
        end = late;
    }
    if matches!(&end, WorkerEnd::Dropped(r) if !r.bans() && !r.is_useless()) {
        // Next time, try the peer's other addresses first.
        dict.peers.unreachable(holder_id, addr);
    }
    end
}

/// One worker's state.
struct Worker<'a> {
    conn: PeerConn,
    shared: &'a Arc<Shared>,
    dict: &'a Dict,
    holder: NodeId,
    /// What the peer holds, as last listed.
    chunks: ChunkSet,
    slot: Slot,
    limits: &'a FetchLimits,
    /// Chunks it refused since they were last asked again.
    refused: HashSet<u32>,
    refusal_retry: Retry,
    /// (request id, chunk index), oldest first.
    inflight: VecDeque<(u32, u32)>,
    /// The buffer the next answer is read into.
    buf: ChunkBuf,
    /// Checks the chunks before it, in order, on a thread of its own while
    /// the next answers arrive, and has the download's writing thread
    /// write them (started with the first chunk).
    checker: Option<Checker>,
    /// How many chunks the checker may hold ([`checks_in_flight`]).
    checks: usize,
    /// Buffers given back by checks while `buf` was already there.
    spare: Vec<ChunkBuf>,
    changes: watch::Receiver<u64>,
    rate: PeerRate,
    /// Whether it waits for an answer (its quiet time is counting).
    waiting: bool,
}

impl<'a> Worker<'a> {
    fn new(
        conn: PeerConn,
        shared: &'a Arc<Shared>,
        dict: &'a Dict,
        holder: Holder,
        slot: Slot,
        limits: &'a FetchLimits,
        now: Instant,
    ) -> Worker<'a> {
        let mut refusal_retry = Retry::new(REFUSAL_RETRY);
        refusal_retry.rest(now);
        Worker {
            conn,
            shared,
            dict,
            holder: holder.id,
            chunks: holder.chunks,
            slot,
            limits,
            refused: HashSet::new(),
            refusal_retry,
            inflight: VecDeque::new(),
            buf: ChunkBuf::with_capacity(shared.manifest.chunk_size as usize),
            checker: None,
            checks: checks_in_flight(shared.manifest.chunk_size as usize),
            spare: Vec::new(),
            changes: shared.changed.subscribe(),
            rate: PeerRate::new(now, limits.stall_timeout, limits.min_rate),
            waiting: false,
        }
    }

    /// Fills the pipeline (or helps in the endgame), then waits for one
    /// answer, or for something to do.
    async fn step(&mut self, cancel: &CancellationToken) -> Step {
        self.fill().await?;
        if self.inflight.is_empty() {
            // Nothing more to read from this peer for now: the chunk being
            // written must count before the worker helps or waits.
            self.settle_pending().await?;
            self.help_endgame().await?;
        }
        if self.inflight.is_empty() {
            return self.idle(cancel).await;
        }
        self.conn.flush().await.map_err(dropped)?;
        tracing::trace!(slot = self.slot, inflight = ?self.inflight, "waiting for an answer");
        let resp = self.read_answer(cancel).await?;
        self.handle(resp).await?;
        // An answer: quiet from now on only if requests remain.
        let since = (!self.inflight.is_empty()).then(Instant::now);
        self.waiting = since.is_some();
        self.shared.watch().set_quiet(self.slot, since);
        Ok(())
    }

    async fn request(&mut self, index: u32) -> Step {
        let req = self
            .conn
            .request_chunk(self.shared.id, index)
            .await
            .map_err(dropped)?;
        self.inflight.push_back((req, index));
        Ok(())
    }

    /// Acquires chunks the peer holds until `pipeline` are in flight.
    async fn fill(&mut self) -> Step {
        while self.inflight.len() < self.limits.pipeline {
            let (chunks, refused) = (&self.chunks, &self.refused);
            let next = self
                .shared
                .map
                .lock()
                .expect("map lock")
                .acquire(self.slot, |i| chunks.has(i) && !refused.contains(&i));
            let Some(index) = next else { break };
            self.request(index).await?;
        }
        Ok(())
    }

    /// Endgame: every chunk is requested; help with one a slower peer is
    /// still sending (the first verified copy wins).
    async fn help_endgame(&mut self) -> Step {
        let game =
            self.shared
                .watch()
                .endgame(self.slot, Instant::now(), self.limits.endgame_patience);
        let (chunks, refused) = (&self.chunks, &self.refused);
        let stolen = game.steal(
            &mut self.shared.map.lock().expect("map lock"),
            self.slot,
            |i| chunks.has(i) && !refused.contains(&i),
        );
        match stolen {
            Some(index) => self.request(index).await,
            None => Ok(()),
        }
    }

    /// Nothing for this peer now; waits for chunks to be given back or for
    /// the peer to get more (a partial holder), then looks again.
    async fn idle(&mut self, cancel: &CancellationToken) -> Step {
        if self.shared.map.lock().expect("map lock").is_complete() {
            return Err(WorkerEnd::Finished);
        }
        self.changes.mark_unchanged();
        tokio::select! {
            _ = cancel.cancelled() => return Err(WorkerEnd::Finished),
            _ = self.changes.changed() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let listed = self
            .dict
            .holders(&self.shared.id)
            .into_iter()
            .find(|h| h.id == self.holder);
        let Some(h) = listed else {
            return Err(WorkerEnd::Finished);
        };
        if h.chunks != self.chunks {
            // It holds more now: look at every chunk again.
            self.shared.map.lock().expect("map lock").rewind(self.slot);
        }
        self.chunks = h.chunks;
        // A partial holder may have verified refused chunks since; ask
        // again, less often each time it refuses them all again.
        let now = Instant::now();
        if !self.refused.is_empty() && self.refusal_retry.ready(now) {
            self.refused.clear();
            self.shared.map.lock().expect("map lock").rewind(self.slot);
            self.refusal_retry.failed(now);
        }
        Ok(())
    }

    /// Reads one answer within `stall_timeout`, then judges the peer's
    /// useful throughput over the last window.
    async fn read_answer(&mut self, cancel: &CancellationToken) -> Result<Response, WorkerEnd> {
        if !self.waiting {
            self.shared
                .watch()
                .set_quiet(self.slot, Some(Instant::now()));
            self.waiting = true;
        }
        let asked_at = Instant::now();
        let stall = self.limits.stall_timeout;
        let read = tokio::time::timeout(stall, self.conn.read_response(&mut self.buf));
        let Some(resp) = cancel.run_until_cancelled(read).await else {
            return Err(WorkerEnd::Finished);
        };
        self.rate.waited(asked_at.elapsed());
        let resp = match resp {
            Err(_) => return Err(dropped(DropReason::Stalled(stall))),
            Ok(r) => r.map_err(dropped)?,
        };
        match self.rate.judge(Instant::now()) {
            Some(useless) => Err(dropped(useless)),
            None => Ok(resp),
        }
    }

    async fn handle(&mut self, resp: Response) -> Step {
        match resp {
            Response::Chunk { req, len } => self.chunk(req, len).await,
            Response::Error {
                req,
                code: ErrorCode::NoChunk,
                ..
            } => {
                self.refusal(req);
                Ok(())
            }
            Response::Error { code, message, .. } => {
                Err(dropped(DropReason::Refused { code, message }))
            }
            _ => Err(dropped(DropReason::UnexpectedResponse)),
        }
    }

    /// A chunk arrived in `buf`: it goes to the checker, which verifies
    /// and writes it while the next answers are read. The chunks already
    /// checked are settled; the oldest one is waited for only when the
    /// checker holds more than `checks`, else the next answer goes into a
    /// spare (or new) buffer.
    async fn chunk(&mut self, req: u32, len: usize) -> Step {
        let Some(pos) = self.inflight.iter().position(|(r, _)| *r == req) else {
            return Err(dropped(DropReason::UnaskedChunk(req)));
        };
        let (_, index) = self.inflight.remove(pos).expect("position is valid");
        let data = std::mem::take(&mut self.buf);
        let shared = self.shared;
        let checker = self.checker.get_or_insert_with(|| Checker::start(shared));
        checker.hand(Landing { index, len, data });
        while let Some(done) = self.checker.as_mut().and_then(Checker::try_landed) {
            self.settle(done)?;
        }
        if self
            .checker
            .as_ref()
            .is_some_and(|c| c.running > self.checks)
        {
            self.settle_oldest().await?;
        }
        if self.buf.capacity() == 0 {
            let capacity = self.shared.manifest.chunk_size as usize;
            self.buf = self
                .spare
                .pop()
                .unwrap_or_else(|| ChunkBuf::with_capacity(capacity));
        }
        Ok(())
    }

    /// Waits for the chunks being checked and written, if any, and counts
    /// them.
    async fn settle_pending(&mut self) -> Step {
        while self.checker.as_ref().is_some_and(|c| c.running > 0) {
            self.settle_oldest().await?;
        }
        Ok(())
    }

    /// Waits for the oldest chunk the checker holds, and settles it.
    async fn settle_oldest(&mut self) -> Step {
        let Some(checker) = self.checker.as_mut() else {
            return Ok(());
        };
        let done = checker.landed().await;
        self.settle(done)
    }

    /// Takes a checked chunk's verdict: drops the peer for a bad one, else
    /// marks it done.
    fn settle(&mut self, done: Landed) -> Step {
        let Landed {
            index,
            len,
            verdict,
            data,
        } = done;
        if self.buf.capacity() == 0 {
            self.buf = data;
        } else if self.spare.len() < self.checks {
            self.spare.push(data);
        }
        match verdict {
            Ok(true) => {}
            Ok(false) => return Err(dropped(DropReason::WrongHash(index))),
            Err(e) => return Err(dropped(DropReason::LocalWrite(e))),
        }
        self.rate.useful(len as u64);
        self.refusal_retry.shorten();
        self.shared.verified_here.lock().expect("lock").set(index);
        self.shared.watch().set_trusted(self.slot, true);
        if self
            .shared
            .map
            .lock()
            .expect("map lock")
            .complete(index, self.slot)
        {
            self.shared
                .received
                .fetch_add(len as u64, Ordering::Relaxed);
            if let Some(g) = self
                .shared
                .given
                .lock()
                .expect("given lock")
                .get_mut(&self.slot)
            {
                g.bytes += len as u64;
            }
            self.shared.bump();
        }
        Ok(())
    }

    /// The peer answered "no such chunk" to `req`: give the chunk back and
    /// do not ask this peer for it until the refusal backoff is over.
    fn refusal(&mut self, req: u32) {
        if let Some(pos) = self.inflight.iter().position(|(r, _)| *r == req) {
            let (_, index) = self.inflight.remove(pos).expect("position is valid");
            self.shared
                .map
                .lock()
                .expect("map lock")
                .release(index, self.slot);
            self.refused.insert(index);
            self.rate.refused();
            self.shared.bump();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_buffers_of_a_worker_stay_within_four_mib_or_two_chunks() {
        const MIB: usize = 1 << 20;
        assert_eq!(checks_in_flight(MIB), 3, "1 MiB chunks: 3 checked + 1 read");
        assert_eq!(checks_in_flight(256 << 10), 15);
        assert_eq!(checks_in_flight(2 * MIB), 1);
        assert_eq!(
            checks_in_flight(4 * MIB),
            1,
            "at least one check beside the read"
        );
        for c in [64 << 10, MIB, 3 * MIB, 4 * MIB] {
            let buffers = checks_in_flight(c) + 1;
            assert!(buffers * c <= WORKER_BUFFER_BYTES.max(2 * c), "{c}");
        }
    }
}
