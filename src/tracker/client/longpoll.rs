//! The node's long poll (`GET /v1/watch`): one request waits at the
//! tracker until the peer list changes after what this node last read, so
//! a new peer is merged (open swarm) or dialed (private swarm) at once
//! instead of at the next heartbeat. The heartbeat's own poll stays: a
//! tracker without watches, a refused watch (the tracker's caps) or a lost
//! one costs at most a heartbeat interval, as before.
//!
//! The tracker's word on a peer the node already heard from directly is
//! only a claim: its digest may lag behind the peer's own, so the
//! dictionary keeps the peer's for an interval. When a watch brings a
//! digest the dictionary did not take, the node says hello to the peer
//! ([`Follower::confirm_changes`]): its answer is what counts, and a new
//! inventory is pulled at once.
//!
//! Paced: a watch starts at most once per [`MIN_WATCH_GAP`], so a tracker
//! whose lists change all the time gets at most one poll a second from
//! each node. Never registers, announces or heartbeats.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::time::Duration;

use tokio::time::Instant;

use super::{Api, ClientError, Follower};
use crate::id::NodeId;
use crate::tracker::proto::{MAX_WATCH_SECS, WatchQuery, WatchResponse};

/// Watches start at most this often.
pub(super) const MIN_WATCH_GAP: Duration = Duration::from_secs(1);
/// A tracker's claim that a peer's digest changed, already checked by a
/// hello the peer did not confirm, is checked again after this long.
pub(super) const RECONFIRM_AFTER: Duration = Duration::from_secs(60);
/// Connect limit of the hello that checks a change the tracker reported.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);

type Answer = Pin<Box<dyn Future<Output = Result<WatchResponse, ClientError>> + Send>>;

/// What a pending watch asked: a new `since` or epoch makes it stale.
#[derive(Clone, PartialEq, Eq)]
struct Asked {
    since: u64,
    epoch: String,
}

/// The watch in progress, if any, and when to try again after a failure.
#[derive(Default)]
pub(super) struct Watch {
    pending: Option<(Asked, Answer)>,
    /// When the last watch was started (or is due to start).
    last_start: Option<Instant>,
    /// No watch before this (a refusal or failure: the heartbeat polls).
    off_until: Option<Instant>,
}

impl Watch {
    /// The pending watch's answer; the watch is then done.
    pub(super) async fn answer(&mut self) -> Result<WatchResponse, ClientError> {
        let result = match &mut self.pending {
            Some((_, fut)) => fut.await,
            None => std::future::pending().await,
        };
        self.pending = None;
        result
    }

    /// No watch until `until` (the next heartbeat).
    pub(super) fn pause(&mut self, until: Instant) {
        self.pending = None;
        self.off_until = Some(until);
    }

    /// Forgets the pending watch (the session ended).
    pub(super) fn reset(&mut self) {
        self.pending = None;
    }
}

impl Follower {
    /// Starts a watch for what this node last read, unless one for the
    /// same `since` is pending, the tracker has none, or watching is
    /// paused. True when a watch is pending after it.
    pub(super) fn arm_watch(&self, watch: &mut Watch, now: Instant) -> bool {
        let (Some(session), Some(epoch)) = (&self.session, &self.epoch) else {
            watch.reset();
            return false;
        };
        let Some(wait) = session.watch else {
            watch.reset();
            return false;
        };
        if watch.off_until.is_some_and(|t| now < t) {
            return false;
        }
        let asked = Asked {
            since: self.since,
            epoch: epoch.clone(),
        };
        if watch.pending.as_ref().is_some_and(|(a, _)| *a == asked) {
            return true;
        }
        let start = watch
            .last_start
            .map_or(now, |t| (t + MIN_WATCH_GAP).max(now));
        watch.last_start = Some(start);
        let q = WatchQuery {
            since: asked.since,
            epoch: Some(asked.epoch.clone()),
            swarm: self.me.tag(),
            wait: Some(wait.as_secs_f64()),
        };
        let api: Api = self.api.clone();
        let fut: Answer = Box::pin(async move {
            tokio::time::sleep_until(start).await;
            api.watch(&q).await
        });
        watch.pending = Some((asked, fut));
        true
    }

    /// Takes a watch's answer: on a change, reads it and merges or dials
    /// the new peers at once. A failure pauses watching until `next_tick`,
    /// when the heartbeat polls anyway.
    pub(super) async fn on_watch(
        &mut self,
        answer: Result<WatchResponse, ClientError>,
        watch: &mut Watch,
        my_addrs: &[IpAddr],
        next_tick: Instant,
    ) {
        let changed = match answer {
            Ok(a) => a.changed,
            Err(e) => {
                tracing::debug!(tracker = %self.api.base(), error = %e, "watch failed; polling per heartbeat until the next one");
                if e.status() == Some(404) {
                    // A tracker (or a proxy) without the route.
                    if let Some(s) = self.session.as_mut() {
                        s.watch = None;
                    }
                }
                watch.pause(next_tick);
                return;
            }
        };
        if !changed {
            return;
        }
        let Some(interval) = self.session.as_ref().map(|s| s.heartbeat) else {
            return;
        };
        match self.poll_peers().await {
            Ok(fresh) => {
                if self.me.private.is_some() {
                    self.dial_hints(my_addrs, interval);
                } else {
                    self.merge(my_addrs, interval, Some(&fresh));
                    self.confirm_changes(&fresh, Instant::now());
                }
            }
            Err(e) => {
                tracing::debug!(tracker = %self.api.base(), error = %e, "reading the peers a watch announced failed");
                watch.pause(next_tick);
            }
        }
    }
}

impl Follower {
    /// Says hello to each peer in `fresh` whose digest at the tracker is
    /// not the one the dictionary holds (it kept the one the peer gave
    /// directly): at most [`super::MAX_HINT_DIALS`] at once, each peer at
    /// most once per [`MIN_WATCH_GAP`], and a digest claim already checked
    /// only again after [`RECONFIRM_AFTER`] (a tracker repeating a claim
    /// the peer does not confirm cannot make the node dial it every
    /// second). The dialer reports the answer to the dictionary, whose
    /// puller then pulls what changed.
    pub(super) fn confirm_changes(&mut self, fresh: &[NodeId], now: Instant) {
        let Some(dialer) = &self.me.confirmer else {
            return;
        };
        while self.hints.try_join_next().is_some() {}
        self.dialed
            .retain(|_, t| now.saturating_duration_since(*t) < MIN_WATCH_GAP);
        let peers = &self.peers;
        self.confirmed.prune(now, |id| peers.contains_key(id));
        for id in fresh {
            if self.hints.len() >= super::MAX_HINT_DIALS {
                break;
            }
            let Some(digest) = self.peers.get(id).and_then(|p| p.digest) else {
                continue;
            };
            let addrs = self.dict.peers.with(id, |p| {
                (p.online && p.announced_digest != digest).then(|| p.addrs())
            });
            let Some(Some(addrs)) = addrs else {
                continue;
            };
            if self.dialed.contains_key(id) || !self.confirmed.claim(*id, digest, now) {
                continue;
            }
            self.dialed.insert(*id, now);
            let (dialer, id) = (dialer.clone(), *id);
            self.hints.spawn(async move {
                if let Err(e) = dialer.dial(id, &addrs, CONFIRM_TIMEOUT).await {
                    tracing::debug!(peer = %id.short(), error = %e, "a peer the tracker says changed did not answer");
                }
            });
        }
    }
}

/// The digest claims of the tracker a hello already checked: the digest
/// it claimed for each peer, and when the hello was said.
#[derive(Default)]
pub(super) struct ClaimChecks(HashMap<NodeId, ([u8; 16], Instant)>);

impl ClaimChecks {
    /// Forgets checks older than [`RECONFIRM_AFTER`] and those of peers
    /// `keep` no longer lists (the map never outgrows the tracker's list).
    fn prune(&mut self, now: Instant, keep: impl Fn(&NodeId) -> bool) {
        self.0
            .retain(|id, (_, t)| keep(id) && now.saturating_duration_since(*t) < RECONFIRM_AFTER);
    }

    /// Whether the tracker's claim that `peer` has `digest` is worth a
    /// hello now (a claim not checked recently); if so, records the check.
    fn claim(&mut self, peer: NodeId, digest: [u8; 16], now: Instant) -> bool {
        let checked = self.0.get(&peer).is_some_and(|(d, t)| {
            *d == digest && now.saturating_duration_since(*t) < RECONFIRM_AFTER
        });
        if !checked {
            self.0.insert(peer, (digest, now));
        }
        !checked
    }
}

/// The wait a node asks for: the tracker's longest, within 1 s and
/// [`MAX_WATCH_SECS`]; `None` when the tracker has no watches.
pub(super) fn watch_wait(watch_secs: Option<f64>) -> Option<Duration> {
    let secs = watch_secs.filter(|s| s.is_finite() && *s >= 1.0)?;
    Some(Duration::from_secs_f64(secs.min(MAX_WATCH_SECS)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_digest_claim_is_checked_once_a_minute() {
        let mut checks = ClaimChecks::default();
        let (a, b) = (NodeId([1; 16]), NodeId([2; 16]));
        let t0 = Instant::now();
        assert!(checks.claim(a, [7; 16], t0), "a new claim is checked");
        for s in 1..60 {
            let t = t0 + Duration::from_secs(s);
            assert!(
                !checks.claim(a, [7; 16], t),
                "the same claim again at {s} s"
            );
        }
        assert!(
            checks.claim(b, [7; 16], t0),
            "another peer's claim is its own"
        );
        let t = t0 + Duration::from_secs(5);
        assert!(
            checks.claim(a, [8; 16], t),
            "a new digest is checked at once"
        );
        assert!(
            checks.claim(a, [8; 16], t + RECONFIRM_AFTER),
            "and again after a minute"
        );
        checks.prune(t + RECONFIRM_AFTER, |id| *id != b);
        assert_eq!(
            checks.0.len(),
            1,
            "peers the tracker no longer lists are forgotten"
        );
    }

    #[test]
    fn the_wait_follows_the_tracker_within_bounds() {
        assert_eq!(watch_wait(None), None);
        assert_eq!(watch_wait(Some(0.5)), None);
        assert_eq!(watch_wait(Some(f64::NAN)), None);
        assert_eq!(watch_wait(Some(20.0)), Some(Duration::from_secs(20)));
        assert_eq!(
            watch_wait(Some(1e9)),
            Some(Duration::from_secs_f64(MAX_WATCH_SECS))
        );
    }
}
