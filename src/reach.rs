//! Keeping in touch with peers over TCP, whichever way they were found
//! (multicast, mDNS, a tracker, `--peer`):
//! - the puller fetches a peer's inventory whenever the digest it announced
//!   differs from the one held, as a delta when possible, a few peers at a
//!   time, retrying failed pulls with backoff;
//! - the prober says hello to every online peer not heard directly (by a
//!   multicast announcement or a hello) for an announce interval, so peers
//!   found without multicast stay alive, and their changes are noticed,
//!   only while they answer;
//! - after a pull, the puller asks the peer for the peers it knows (peer
//!   exchange, [`crate::exchange`]), at most once per
//!   [`crate::exchange::ASK_EVERY`] intervals per peer.
//!
//! Every connection tries the peer's addresses in order, best first, and
//! remembers the one that answered.
//!
//! Anyone can announce made-up ids, so peers that never proved themselves
//! (see [`crate::dict::Peer::proven`]) never take every pull slot, wait
//! behind peers not yet tried, and get a shorter connect timeout: a flood
//! of fake announcements cannot starve a real peer's pull or probe.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dict::Dict;
use crate::id::NodeId;
use crate::peer::PeerError;
use crate::peer::client::PeerConn;
use crate::peer::dial::{DialError, Dialer};
use crate::retry::{RetryBook, RetryPolicy};
use crate::task::Tasks;

/// Inventory pulls running at once.
const MAX_PULLS: usize = 4;
/// Of which at most this many for peers not proven yet.
const MAX_UNPROVEN_PULLS: usize = 2;
/// Hello probes running at once.
const MAX_PROBES: usize = 8;
/// Each page of an inventory must arrive within this long.
const PAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// A failed pull is retried after 500 ms, doubling up to 8 s.
const PULL_RETRY: RetryPolicy =
    RetryPolicy::new(Duration::from_millis(500), Duration::from_secs(8));

pub struct Reach {
    pub dict: Arc<Dict>,
    /// Connects as this node (its key, swarm and name).
    pub dialer: Dialer,
    /// Peer exchange, asked after each pull (`None`: off).
    pub exchange: Option<Arc<crate::exchange::Exchange>>,
}

impl Reach {
    /// Pulls inventories of peers whose digest changed until `tasks` is
    /// cancelled; each pull is the task `pull/<peer id>` of `tasks`.
    pub async fn puller(self: Arc<Self>, scope: Tasks) {
        let cancel = scope.token();
        let mut tasks = scope.set::<(NodeId, bool)>("pull");
        // Running pulls, each with whether its peer was unproven.
        let mut running: HashMap<NodeId, bool> = HashMap::new();
        // Per peer: when to try again after a failure.
        let mut retry: RetryBook<NodeId> = RetryBook::new(PULL_RETRY);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.dict.peers.pull_wanted.notified() => {}
                _ = tick.tick() => {}
                Some(done) = tasks.join_next() => {
                    if let Ok((id, ok)) = done {
                        running.remove(&id);
                        if ok {
                            retry.succeeded(&id);
                        } else {
                            retry.failed(id, Instant::now());
                        }
                    }
                }
            }
            let now = Instant::now();
            let mut wanted = self.dict.peers.needing_pull();
            // Proven peers first, then those failed least (never tried first).
            wanted.sort_by_key(|p| (!p.proven, retry.delay(&p.id)));
            for peer in wanted {
                if running.len() >= MAX_PULLS {
                    break;
                }
                if running.contains_key(&peer.id)
                    || !retry.ready(&peer.id, now)
                    || (!peer.proven
                        && running.values().filter(|u| **u).count() >= MAX_UNPROVEN_PULLS)
                {
                    continue;
                }
                running.insert(peer.id, !peer.proven);
                let this = self.clone();
                tasks.spawn(&peer.id.short(), async move {
                    let r = this.pull(peer.id).await;
                    if let Err(e) = &r {
                        tracing::debug!(peer = %peer.name, error = %e, "inventory pull failed; will retry");
                    }
                    (peer.id, r.is_ok())
                });
            }
            retry.retain(|id| self.dict.peers.peer(id).is_some_and(|p| p.online));
        }
        tasks.abort_all();
    }

    async fn pull(&self, id: NodeId) -> Result<(), PeerError> {
        let Some(peer) = self.dict.peers.peer(&id) else {
            return Ok(());
        };
        let mut conn = self.connect_peer(&peer).await.map_err(dial_failed)?;
        let held = self.dict.contents.inventory(&id);
        let since = held.as_ref().map(|i| i.digest);
        let mut budget = self.dict.contents.pull_budget(id);
        let pulled = match conn
            .pull_inventory(since, PAGE_TIMEOUT, &mut |page| budget.admit(page))
            .await
        {
            Err(PeerError::Protocol(crate::wire::WireError::OutOfBounds { field }))
                if field == crate::peer::client::OVER_BUDGET =>
            {
                self.dict
                    .refuse_inventory(id, conn.remote_digest, crate::dict::Refusal::OverBytes);
                return Ok(());
            }
            r => r?,
        };
        let delta = pulled.base.is_some();
        let inv = pulled.into_inventory(held.as_ref())?;
        tracing::debug!(peer = %peer.name, contents = inv.len(), delta, "pulled inventory");
        self.dict.set_inventory(id, inv);
        drop(budget);
        if let Some(exchange) = &self.exchange
            && let Err(e) = exchange.ask_if_due(&mut conn).await
        {
            tracing::debug!(peer = %peer.name, error = %e, "peer exchange after a pull failed");
        }
        Ok(())
    }

    fn dialer(&self) -> Dialer {
        self.dialer.clone()
    }

    /// Connects to `peer`; one not proven yet gets the shorter timeout on
    /// every address (a made-up peer's address often answers nothing).
    async fn connect_peer(&self, peer: &crate::dict::Peer) -> Result<PeerConn, DialError> {
        let limit = if peer.proven {
            crate::peer::CONNECT_TIMEOUT
        } else {
            crate::peer::client::FALLBACK_CONNECT_TIMEOUT
        };
        self.dialer().dial(peer.id, &peer.addrs(), limit).await
    }

    /// Says hello to online peers not heard directly for an interval, until
    /// `scope` is cancelled; each probe is the task `probe/<peer id>`.
    pub async fn prober(self: Arc<Self>, scope: Tasks) {
        let cancel = scope.token();
        let mut tasks = scope.set::<NodeId>("probe");
        let mut running: HashMap<NodeId, ()> = HashMap::new();
        // Each peer is probed at most once per its interval: only `tried`
        // and `since` are used, so the policy plays no part.
        let mut attempted: RetryBook<NodeId> = RetryBook::new(PULL_RETRY);
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
                _ = self.dict.peers.probe_wanted.notified() => {}
                Some(done) = tasks.join_next() => {
                    if let Ok(id) = done { running.remove(&id); }
                    continue;
                }
            }
            attempted.retain(|id| self.dict.peers.peer(id).is_some_and(|p| p.online));
            let now = Instant::now();
            let mut due = self.dict.peers.to_probe(now);
            // Proven peers first: made-up ones never crowd them out.
            due.sort_by_key(|p| !p.proven);
            for peer in due {
                if running.len() >= MAX_PROBES {
                    break;
                }
                if running.contains_key(&peer.id)
                    || (!peer.departure_claimed
                        && attempted
                            .since(&peer.id, now)
                            .is_some_and(|ago| ago < peer.interval))
                {
                    continue;
                }
                running.insert(peer.id, ());
                attempted.tried(peer.id, now);
                let this = self.clone();
                tasks.spawn(&peer.id.short(), async move {
                    if let Err(e) = this.connect_peer(&peer).await {
                        tracing::debug!(peer = %peer.name, error = %e, "peer did not answer a probe");
                        this.dict.probe_failed(peer.id);
                    }
                    peer.id
                });
            }
        }
        tasks.abort_all();
    }

    /// Says goodbye over TCP to online peers that no multicast reaches
    /// (found by mDNS, a tracker or `--peer` only), so they drop this node
    /// at once instead of after missed probes or an mDNS cache timeout.
    /// Bounded by `within`; each goodbye is the task `farewell/<peer id>`
    /// of `scope`.
    pub async fn farewell(&self, scope: &Tasks, within: Duration) {
        let peers: Vec<_> = self
            .dict
            .peers
            .online()
            .into_iter()
            // Those a datagram reaches hear the goodbye datagram.
            .filter(|p| {
                use crate::api::FoundVia::{Broadcast, Multicast};
                !p.found_via
                    .iter()
                    .any(|v| matches!(v, Multicast | Broadcast))
            })
            .take(crate::dict::MAX_PEERS)
            .collect();
        if peers.is_empty() {
            return;
        }
        let mut tasks = scope.set::<()>("farewell");
        for p in peers {
            let dialer = self.dialer();
            tasks.spawn(&p.id.short(), async move {
                if let Ok(conn) = dialer.dial(p.id, &p.addrs(), within).await {
                    let _ = conn.goodbye().await;
                }
            });
        }
        let _ = tokio::time::timeout(within, async { while tasks.join_next().await.is_some() {} })
            .await;
        tasks.abort_all();
    }
}

/// A dial's failure as a pull's error.
fn dial_failed(e: DialError) -> PeerError {
    match e {
        DialError::Peer(e) => e,
        // Another node now answers there (an address reused).
        DialError::WrongNode | DialError::Myself => PeerError::Unexpected(0),
    }
}
