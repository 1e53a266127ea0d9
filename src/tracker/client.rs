//! The node's side of a tracker: [`follow`] registers, keeps the tracker's
//! copy of this node's inventory current, heartbeats, and merges the
//! tracker's online peers into the dictionary (the node's puller then pulls
//! their inventories over TCP, as for any other peer). [`Api`] is the plain
//! HTTP client under it, also used by tests and the load generator.
//!
//! Every change is signed (`X-Lanshare-Sig`, see [`super::sign`]). In a
//! private swarm the node registers under a pseudonymous key derived from
//! its identity and the swarm's tracker tag, with no name and no
//! inventory: the tracker's peers are address hints, dialed over TCP where
//! the handshake proves who answers.
//!
//! This file runs the rounds (register, heartbeat, wait); [`announce`]
//! sends the inventory, [`peers`] reads and merges the tracker's peers,
//! [`longpoll`] long-polls for a change of them between heartbeats,
//! [`health`] decides how to take a failure (backoff through
//! `crate::retry`), [`api`] is the HTTP client.

mod announce;
mod api;
mod health;
mod longpoll;
mod peers;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::proto::{Entry, HeartbeatRequest, PeerInfo, RegisterRequest};
use crate::dict::Dict;
use crate::id::NodeId;
use crate::identity::Identity;
use crate::inventory::Inventory;
use crate::peer::dial::Dialer;
use crate::swarm::Mode;
pub use api::{Api, ClientError};
use health::{Health, Next, jittered};
use longpoll::{Watch, watch_wait};
use peers::reportable;

/// Who this node is, as the tracker lists it.
#[derive(Clone)]
pub struct NodeInfo {
    /// The node's key: it signs every change (open swarm), or its
    /// pseudonym at the tracker derives from it (private swarm).
    pub identity: Arc<Identity>,
    pub name: String,
    /// TCP port of the node's peer server.
    pub tcp_port: u16,
    pub mode: TrackerMode,
    /// Where the outcome of each round is reported (`TrackerHealth`).
    pub stats: Arc<crate::stats::Stats>,
}

/// How a node uses a tracker.
#[derive(Clone)]
pub enum TrackerMode {
    /// Registered by its node id and name, with its inventory; the
    /// tracker's peers go into the dictionary as any sighting, and a known
    /// peer the tracker says changed is asked with `dialer` (its hello
    /// is what counts).
    Open { dialer: Dialer },
    /// Registered under a pseudonym with the swarm's tag only; the
    /// tracker's peers (same tag) are dialed with `dialer` to learn who
    /// they are.
    Private { tag: [u8; 16], dialer: Dialer },
}

impl NodeInfo {
    /// `dialer` dials the tracker's address hints (private swarm) or
    /// checks a change the tracker reports (open swarm).
    pub fn new(
        identity: Arc<Identity>,
        name: String,
        tcp_port: u16,
        swarm: &Mode,
        dialer: Dialer,
    ) -> NodeInfo {
        let mode = match swarm.keys() {
            None => TrackerMode::Open { dialer },
            Some(k) => TrackerMode::Private {
                tag: k.tracker_tag,
                dialer,
            },
        };
        NodeInfo {
            identity,
            name,
            tcp_port,
            mode,
            stats: Arc::default(),
        }
    }
}

/// This node as one tracker knows it: its real identity and name in the
/// open swarm, a pseudonym with no name in a private one.
struct Persona {
    identity: Arc<Identity>,
    id: NodeId,
    name: String,
    tcp_port: u16,
    /// The private swarm's tag and the dialer of its hints.
    private: Option<([u8; 16], Dialer)>,
    /// Open swarm: checks the changes the tracker reports, by a hello.
    confirmer: Option<Dialer>,
}

impl Persona {
    fn of(me: NodeInfo) -> Persona {
        match me.mode {
            TrackerMode::Open { dialer } => Persona {
                id: me.identity.node_id(),
                identity: me.identity,
                name: me.name,
                tcp_port: me.tcp_port,
                private: None,
                confirmer: Some(dialer),
            },
            TrackerMode::Private { tag, dialer } => {
                let pseudonym = Arc::new(super::sign::pseudonym(&me.identity, &tag));
                Persona {
                    id: pseudonym.node_id(),
                    identity: pseudonym,
                    name: String::new(),
                    tcp_port: me.tcp_port,
                    private: Some((tag, dialer)),
                    confirmer: None,
                }
            }
        }
    }

    fn tag(&self) -> Option<String> {
        self.private.as_ref().map(|(t, _)| crate::id::to_hex(t))
    }
}

/// Time limit of one request to the tracker.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Time limit of the goodbye when the node stops.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(2);
/// Inventory changes are sent at most this often (a download in progress
/// changes the inventory every second or so).
const MIN_ANNOUNCE_GAP: Duration = Duration::from_secs(1);
/// Entries plus removals per request; at the longest names and comments a
/// request stays under the tracker's default 16 MiB body limit.
pub const BATCH: usize = 5000;
/// Smallest batch when a tracker refuses requests as too large (413).
const MIN_BATCH: usize = 100;
/// Most tracker peers remembered (bounded whatever the tracker sends).
const MAX_PEERS: usize = 20_000;
/// Most peer-list pages read per poll.
const MAX_PAGES: usize = 50;
/// Most address hints of a private swarm dialed at once.
const MAX_HINT_DIALS: usize = 16;

/// Registers with the tracker at `url`, announces the inventory at start, on
/// every change and with each heartbeat (its digest; the whole inventory
/// when the tracker asks), merges the tracker's online peers into `dict`,
/// retries with backoff (warning once, then debug) while the tracker is
/// unreachable, re-registers when the tracker forgot the node (restarted
/// with a fresh db, or pruned it), and deregisters when `cancel` fires
/// (bounded by a short timeout).
pub async fn follow(
    url: String,
    me: NodeInfo,
    addrs: watch::Receiver<Vec<IpAddr>>,
    inventory: watch::Receiver<Inventory>,
    dict: Arc<Dict>,
    cancel: CancellationToken,
) {
    let stats = me.stats.clone();
    let mut f = Follower {
        stats,
        api: Api::per_request(&url),
        me: Persona::of(me),
        dict,
        hints: tokio::task::JoinSet::new(),
        dialed: HashMap::new(),
        confirmed: longpoll::ClaimChecks::default(),
        session: None,
        acked: None,
        sent_addrs: Vec::new(),
        peers: HashMap::new(),
        since: 0,
        epoch: None,
        warned_entries: false,
        max_files: crate::wire::frame::MAX_INVENTORY_ENTRIES as u32,
        batch: BATCH,
    };
    f.run(addrs, inventory, &cancel).await;
    f.leave().await;
}

/// A live registration.
struct Session {
    token: String,
    heartbeat: Duration,
    observed: IpAddr,
    /// How long a watch may wait; `None`: the tracker has no watches.
    watch: Option<Duration>,
}

/// The inventory the tracker holds for this node.
struct Acked {
    digest: [u8; 16],
    /// Sorted by id.
    entries: Vec<Entry>,
}

/// Why a round with the tracker failed.
enum Failure {
    /// The tracker does not know this node (404) or its token (401).
    Forgotten(ClientError),
    Other(ClientError),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e.status() {
            Some(401) | Some(404) => Failure::Forgotten(e),
            _ => Failure::Other(e),
        }
    }
}

/// Which of the watches `run` follows are still open.
struct Open {
    addrs: bool,
    inventory: bool,
}

/// Why [`Follower::wait_for_work`] returned.
#[derive(PartialEq, Eq)]
enum Woke {
    /// This node's addresses changed: heartbeat now.
    Addrs,
    Other,
}

/// What ended a wait between rounds.
enum Event {
    Woke(Woke),
    /// The tracker answered a watch.
    Watched(Result<super::proto::WatchResponse, ClientError>),
}

struct Follower {
    /// Where each round's outcome is reported.
    stats: Arc<crate::stats::Stats>,
    api: Api,
    me: Persona,
    dict: Arc<Dict>,
    /// Dials of a private swarm's hints, or of the open swarm's peers
    /// whose change the tracker reported, in progress (aborted when dropped).
    hints: tokio::task::JoinSet<()>,
    /// When each hint (by its pseudonym), or each changed peer, was last
    /// dialed.
    dialed: HashMap<NodeId, Instant>,
    /// The digest the tracker claimed for each peer a hello was last said
    /// to, and when: the same claim is checked again only after
    /// [`longpoll::RECONFIRM_AFTER`], so a tracker that keeps reporting a
    /// digest the peer does not confirm costs one hello a minute per peer.
    confirmed: longpoll::ClaimChecks,
    session: Option<Session>,
    acked: Option<Acked>,
    sent_addrs: Vec<IpAddr>,
    /// The tracker's online peers, by id (not this node).
    peers: HashMap<NodeId, PeerInfo>,
    since: u64,
    epoch: Option<String>,
    warned_entries: bool,
    /// The tracker's cap on entries per node.
    max_files: u32,
    /// Entries plus removals per request ([`BATCH`], less after a 413).
    batch: usize,
}

impl Follower {
    async fn run(
        &mut self,
        mut addrs: watch::Receiver<Vec<IpAddr>>,
        mut inventory: watch::Receiver<Inventory>,
        cancel: &CancellationToken,
    ) {
        let mut next_tick = Instant::now();
        let mut last_announce: Option<Instant> = None;
        let mut health = Health::new();
        let mut open = Open {
            addrs: true,
            inventory: true,
        };
        let mut watch = Watch::default();
        loop {
            if cancel.is_cancelled() {
                return;
            }
            let round = self
                .round(&addrs, &inventory, &mut next_tick, &mut last_announce)
                .await;
            let heartbeat = self.session.as_ref().map(|s| s.heartbeat);
            let now = std::time::Instant::now();
            // A tracker that forgot this node still answered.
            let error = match &round {
                Err(Failure::Other(e)) => Some(e.to_string()),
                _ => None,
            };
            self.stats.trackers.report(self.api.base(), error);
            match health.after_round(round, heartbeat, self.api.base(), now) {
                Next::Carry => {}
                Next::Register => {
                    self.forget_session();
                    continue;
                }
                Next::Wait { delay, forgotten } => {
                    if forgotten {
                        self.forget_session();
                    }
                    let pause = jittered(delay, rand::random_range(0.8..1.2));
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    continue;
                }
            }
            if self.session.is_none() {
                watch.reset();
                continue;
            }
            let watching = self.arm_watch(&mut watch, Instant::now());
            let wait = self.wait_for_work(
                &mut addrs,
                &mut inventory,
                &mut open,
                next_tick,
                last_announce,
            );
            let event = tokio::select! {
                _ = cancel.cancelled() => return,
                woke = wait => Event::Woke(woke),
                answer = watch.answer(), if watching => Event::Watched(answer),
            };
            match event {
                Event::Woke(Woke::Addrs) => next_tick = Instant::now(),
                Event::Woke(Woke::Other) => {}
                Event::Watched(answer) => {
                    let my_addrs = reportable(&addrs.borrow());
                    self.on_watch(answer, &mut watch, &my_addrs, next_tick)
                        .await;
                }
            }
        }
    }

    /// The tracker forgot this node: register again, announce everything.
    fn forget_session(&mut self) {
        self.session = None;
        self.acked = None;
    }

    /// Waits for the next heartbeat, an inventory change (sent at most
    /// once per [`MIN_ANNOUNCE_GAP`]) or new addresses.
    async fn wait_for_work(
        &self,
        addrs: &mut watch::Receiver<Vec<IpAddr>>,
        inventory: &mut watch::Receiver<Inventory>,
        open: &mut Open,
        next_tick: Instant,
        last_announce: Option<Instant>,
    ) -> Woke {
        let pending = {
            let inv = inventory.borrow();
            published(&inv) && self.acked.as_ref().is_none_or(|a| a.digest != inv.digest)
        };
        let mut wake = next_tick;
        if pending {
            let at = last_announce.map_or(Instant::now(), |t| t + MIN_ANNOUNCE_GAP);
            wake = wake.min(at);
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => {}
            r = inventory.changed(), if open.inventory && !pending => {
                if r.is_err() { open.inventory = false; }
            }
            r = addrs.changed(), if open.addrs => {
                if r.is_err() { open.addrs = false; } else { return Woke::Addrs; }
            }
        }
        Woke::Other
    }

    /// One round: register if needed, send the inventory if it changed, and
    /// when due, heartbeat and refresh peers.
    async fn round(
        &mut self,
        addrs: &watch::Receiver<Vec<IpAddr>>,
        inventory: &watch::Receiver<Inventory>,
        next_tick: &mut Instant,
        last_announce: &mut Option<Instant>,
    ) -> Result<(), Failure> {
        let my_addrs = reportable(&addrs.borrow());
        if self.session.is_none() {
            let inv = inventory.borrow().clone();
            self.register(my_addrs.clone(), &inv).await?;
            *next_tick = Instant::now();
        }
        let inv = inventory.borrow().clone();
        let private = self.me.private.is_some();
        let due = last_announce.is_none_or(|t| t.elapsed() >= MIN_ANNOUNCE_GAP);
        let changed = self.acked.as_ref().is_none_or(|a| a.digest != inv.digest);
        if !private && published(&inv) && changed && due {
            *last_announce = Some(Instant::now());
            self.announce(&inv).await?;
        }
        if Instant::now() >= *next_tick {
            let session = self.session.as_ref().expect("registered above");
            let (token, interval) = (session.token.clone(), session.heartbeat);
            let req = HeartbeatRequest {
                // A private node tells the tracker nothing of its inventory.
                digest: if private { [0; 16] } else { inv.digest },
                addrs: (my_addrs != self.sent_addrs).then(|| my_addrs.clone()),
            };
            let hb = self.api.heartbeat(&self.me.identity, &token, &req).await?;
            if req.addrs.is_some() {
                self.sent_addrs = my_addrs.clone();
            }
            if let Some(s) = self.session.as_mut() {
                s.observed = hb.observed_addr;
                if hb.heartbeat_secs.is_finite() && hb.heartbeat_secs >= 0.05 {
                    s.heartbeat = Duration::from_secs_f64(hb.heartbeat_secs.min(3600.0));
                }
            }
            if hb.send_inventory && published(&inv) && !private {
                self.acked = None;
                *last_announce = Some(Instant::now());
                self.announce(&inv).await?;
            }
            self.poll_peers().await?;
            if private {
                self.dial_hints(&my_addrs, interval);
            } else {
                self.merge(&my_addrs, interval, None);
            }
            *next_tick = Instant::now() + interval;
        }
        Ok(())
    }

    async fn register(&mut self, my_addrs: Vec<IpAddr>, inv: &Inventory) -> Result<(), Failure> {
        let req = RegisterRequest {
            id: self.me.id,
            name: self.me.name.clone(),
            port: self.me.tcp_port,
            addrs: my_addrs.clone(),
            key: self.me.identity.public_key(),
            swarm: self.me.private.as_ref().map(|(t, _)| *t),
        };
        let r = self
            .api
            .register(&self.me.identity, &req)
            .await
            .map_err(Failure::Other)?;
        tracing::info!(tracker = %self.api.base(), observed = %r.observed_addr, "registered with the tracker");
        let heartbeat = if r.heartbeat_secs.is_finite() && r.heartbeat_secs >= 0.05 {
            Duration::from_secs_f64(r.heartbeat_secs.min(3600.0))
        } else {
            Duration::from_secs(10)
        };
        self.session = Some(Session {
            token: r.token,
            heartbeat,
            observed: r.observed_addr,
            watch: watch_wait(r.watch_secs),
        });
        self.sent_addrs = my_addrs;
        // The tracker may still hold what this node announced before.
        self.acked = match r.stored_digest {
            Some(d) if d == inv.digest => Some(Acked {
                digest: d,
                entries: self.entries(inv, r.max_files),
            }),
            _ => None,
        };
        if self.epoch.as_deref() != Some(r.epoch.as_str()) {
            self.since = 0;
        }
        self.max_files = r.max_files;
        Ok(())
    }

    /// Deregisters, bounded by [`DEREGISTER_TIMEOUT`].
    async fn leave(&mut self) {
        let Some(s) = self.session.take() else {
            return;
        };
        match tokio::time::timeout(
            DEREGISTER_TIMEOUT,
            self.api.deregister(&self.me.identity, &s.token),
        )
        .await
        {
            Ok(Ok(())) => {
                tracing::info!(tracker = %self.api.base(), "deregistered from the tracker")
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "could not deregister from the tracker"),
            Err(_) => {
                tracing::debug!(tracker = %self.api.base(), "the tracker did not answer the deregistration in time")
            }
        }
    }
}

/// True once the store has published an inventory (the watch starts with a
/// zero digest before the first scan).
fn published(inv: &Inventory) -> bool {
    inv.digest != [0; 16]
}
