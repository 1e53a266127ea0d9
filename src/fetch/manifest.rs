//! Getting the manifest of a download: which holders are asked, in what
//! order and how many at once, when one is slow, and checking the answer
//! (it hashes to the content id, and its size is the one its sender
//! lists).
//!
//! Never touches the partial file or the chunk states.

use std::collections::{HashSet, VecDeque};
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::time::Instant as TokioInstant;
use tokio_util::sync::CancellationToken;

use super::ctx::FetchCtx;
use super::{FetchError, Want};
use crate::api::FetchEvent;
use crate::chunkset::ChunkSet;
use crate::dict::Holder;
use crate::id::{ContentId, NodeId};
use crate::logs::peer_name;
use crate::manifest::Manifest;
use crate::peer::dial::{DialError, Dialer};
use crate::peer::{CONNECT_TIMEOUT, PeerError};
use crate::task::{TaskSet, Tasks};
use crate::wire::WireError;

/// One manifest request in this round.
struct Attempt {
    holder: Holder,
    started: TokioInstant,
    slow: bool,
    running: bool,
}

/// One round of asking holders for the manifest of `want`.
struct Round<'a> {
    ctx: &'a FetchCtx,
    want: &'a Want,
    known: HashSet<NodeId>,
    queue: VecDeque<Holder>,
    attempts: Vec<Attempt>,
    running: TaskSet<(usize, Result<Manifest, PeerError>)>,
    /// Attempts running and not (yet) slow.
    fast: usize,
    reasons: Vec<String>,
    /// Slow holders already named in a `Slow` event.
    told: Vec<String>,
}

/// How a holder is named in reasons and events.
fn label(h: &Holder) -> String {
    format!("{}@{}", peer_name(&h.name), h.addr)
}

impl FetchCtx {
    /// Asks holders for a manifest that hashes to `id`, `manifest_fanout`
    /// at a time: answered-before and complete holders first. A holder
    /// silent for `manifest_patience` is reported slow and one more is
    /// asked; everything ends at `give_up_after`. Returns the first valid
    /// manifest and the holder that sent it.
    pub(super) async fn get_manifest(
        &self,
        want: &Want,
        holders: &[Holder],
        events: &mpsc::Sender<FetchEvent>,
        cancel: &CancellationToken,
        tasks: &Tasks,
    ) -> Result<(Manifest, Holder), FetchError> {
        let mut round = Round::new(self, want, holders, tasks);
        let deadline = TokioInstant::now() + self.limits.give_up_after;
        loop {
            round.add_new_holders();
            round.ask_more();
            if round.running.is_empty() {
                if round.reasons.is_empty() {
                    round.reasons.push("no holder is online".into());
                }
                return Err(FetchError::NoManifest(round.reasons.join("; ")));
            }
            let next_slow = round.next_slow().unwrap_or(deadline);
            let changed = self.dict.contents.changed.notified();
            tokio::select! {
                _ = changed => {}
                _ = cancel.cancelled() => return Err(FetchError::Cancelled),
                _ = tokio::time::sleep_until(deadline) => return Err(round.timed_out()),
                _ = tokio::time::sleep_until(next_slow) => round.mark_slow(TokioInstant::now(), events),
                Some(joined) = round.running.join_next() => {
                    let Ok((idx, r)) = joined else { continue };
                    if let Some(done) = round.answered(idx, r) {
                        return done;
                    }
                }
            }
        }
    }
}

impl<'a> Round<'a> {
    /// A round whose requests are the tasks `manifest/<holder>` of `tasks`.
    fn new(ctx: &'a FetchCtx, want: &'a Want, holders: &[Holder], tasks: &Tasks) -> Round<'a> {
        let seed = std::collections::hash_map::RandomState::new();
        let mut queue: Vec<Holder> = holders.to_vec();
        // Ties are broken at random, so node ids chosen to sort first buy
        // nothing.
        queue.sort_by_cached_key(|h| {
            let answered = ctx
                .dict
                .peers
                .peer(&h.id)
                .is_some_and(|p| p.preferred.is_some());
            (
                ctx.memory.rank(&h.id),
                !matches!(h.chunks, ChunkSet::Full),
                !answered,
                seed.hash_one(h.id),
            )
        });
        Round {
            ctx,
            want,
            known: queue.iter().map(|h| h.id).collect(),
            queue: queue.into(),
            attempts: Vec::new(),
            running: tasks.set("manifest"),
            fast: 0,
            reasons: Vec::new(),
            told: Vec::new(),
        }
    }

    /// Queues holders that appeared since (their inventory was just pulled).
    fn add_new_holders(&mut self) {
        for h in self.ctx.dict.holders(&self.want.id) {
            if self.known.insert(h.id) {
                self.queue.push_back(h);
            }
        }
    }

    /// Each holder is held to the size it listed itself (else the size the
    /// user chose from): a manifest frame longer than that size allows is
    /// refused unread (1 MiB at least, so that a smaller lie is read and
    /// named), and a manifest of another size is refused. So no holder can
    /// make this node write more than it advertised, and one that lists a
    /// real content under a wrong size (first, so that `ls` shows its
    /// size) cannot make the honest holders' manifests refused.
    fn listed_by(&self, h: &Holder) -> Option<u64> {
        self.ctx
            .listed_size(&h.id, &self.want.id)
            .or(self.want.size)
    }

    /// Keeps `fanout` holders that are not (yet) slow busy; slow ones may
    /// still answer until their own limits, up to 4 x fanout open.
    fn ask_more(&mut self) {
        let limits = &self.ctx.limits;
        let fanout = limits.manifest_fanout.max(1);
        while self.fast < fanout && self.running.len() < 4 * fanout {
            let Some(h) = self.queue.pop_front() else {
                break;
            };
            let idx = self.attempts.len();
            let max_frame = self
                .listed_by(&h)
                .map_or(crate::wire::frame::MAX_RESPONSE_FRAME, |s| {
                    Manifest::max_frame_len(s).max(1 << 20)
                });
            let (dialer, hh, id) = (self.ctx.dialer(), h.clone(), self.want.id);
            let (limit, body_limit) = (limits.manifest_patience * 3, limits.stall_timeout);
            self.running.spawn(&label(&h), async move {
                let r = ask_manifest(&dialer, &hh, id, limit, body_limit, max_frame).await;
                (idx, r)
            });
            self.attempts.push(Attempt {
                holder: h,
                started: TokioInstant::now(),
                slow: false,
                running: true,
            });
            self.fast += 1;
        }
    }

    /// When the next running attempt becomes slow, if any.
    fn next_slow(&self) -> Option<TokioInstant> {
        let patience = self.ctx.limits.manifest_patience;
        self.attempts
            .iter()
            .filter(|a| a.running && !a.slow)
            .map(|a| a.started + patience)
            .min()
    }

    /// Marks attempts silent for `manifest_patience` at `now` slow (so one
    /// more holder is asked) and names every slow holder so far in a
    /// `Slow` event when the list grew.
    fn mark_slow(&mut self, now: TokioInstant, events: &mpsc::Sender<FetchEvent>) {
        let patience = self.ctx.limits.manifest_patience;
        let mut grew = false;
        for a in self
            .attempts
            .iter_mut()
            .filter(|a| a.running && !a.slow && now >= a.started + patience)
        {
            a.slow = true;
            self.fast -= 1;
            let l = label(&a.holder);
            tracing::info!(peer = %l, "holder slow to send the manifest; asking another");
            if !self.told.contains(&l) {
                self.told.push(l);
                grew = true;
            }
        }
        if grew {
            let _ = events.try_send(FetchEvent::Slow {
                phase: "manifest".into(),
                peers: self.told.clone(),
            });
        }
    }

    /// The error when nothing came within `give_up_after`.
    fn timed_out(&mut self) -> FetchError {
        let waiting: Vec<String> = self
            .attempts
            .iter()
            .filter(|a| a.running)
            .map(|a| label(&a.holder))
            .collect();
        self.reasons.push(format!(
            "no manifest within {:?}; no answer from {}",
            self.ctx.limits.give_up_after,
            waiting.join(", ")
        ));
        FetchError::NoManifest(self.reasons.join("; "))
    }

    /// Attempt `idx` ended with `r`: the round's result if it sent a
    /// manifest (refused if its size is not the one its sender lists).
    fn answered(
        &mut self,
        idx: usize,
        r: Result<Manifest, PeerError>,
    ) -> Option<Result<(Manifest, Holder), FetchError>> {
        let a = &mut self.attempts[idx];
        a.running = false;
        if !a.slow {
            self.fast -= 1;
        }
        let h = a.holder.clone();
        match r {
            Ok(m) => {
                self.ctx.memory.note(h.id, true, Instant::now());
                if let Some(listed) = self.listed_by(&h)
                    && m.size != listed
                {
                    // The manifest hashes to the id, so every holder's is
                    // the same: the sender's own listing lied.
                    return Some(Err(FetchError::SizeMismatch {
                        holder: label(&h),
                        listed,
                        manifest: m.size,
                    }));
                }
                Some(Ok((m, h)))
            }
            Err(e) => {
                self.ctx.memory.note(h.id, false, Instant::now());
                tracing::info!(peer = %h.addr, error = %e, "cannot get manifest");
                self.reasons.push(format!("{}: {e}", label(&h)));
                None
            }
        }
    }
}

/// One manifest request to one holder: connect and handshake within
/// `limit`, the answer's first byte within `limit` too, the rest within
/// `body_limit`.
async fn ask_manifest(
    dialer: &Dialer,
    h: &Holder,
    id: ContentId,
    limit: Duration,
    body_limit: Duration,
    max_frame: u32,
) -> Result<Manifest, PeerError> {
    let dial = dialer.dial(h.id, &h.addrs, CONNECT_TIMEOUT);
    let mut conn = match tokio::time::timeout(limit, dial).await {
        Err(_) => return Err(PeerError::Timeout("connecting and handshaking")),
        Ok(Err(DialError::Peer(e))) => return Err(e),
        Ok(Err(DialError::WrongNode | DialError::Myself)) => {
            return Err(PeerError::Protocol(WireError::Malformed(
                "answered as a different node".into(),
            )));
        }
        Ok(Ok(conn)) => conn,
    };
    match conn.get_manifest(id, limit, body_limit, max_frame).await {
        Err(PeerError::Protocol(WireError::TooLarge { len, max })) => {
            Err(PeerError::Protocol(WireError::Malformed(format!(
                "sent a manifest of {len} bytes where the listed size allows at most {max}"
            ))))
        }
        r => r,
    }
}
