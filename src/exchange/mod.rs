//! Peer exchange: peers tell verified peers which other peers they know,
//! so one `--peer` or one tracker brings the whole network where neither
//! multicast nor broadcast passes.
//!
//! - Answering ([`answer`], called by the peer server's session on a
//!   `GetPeers`): online peers that proved their id over TCP at an
//!   address (never the node itself, never the asker), at most
//!   [`MAX_PEER_ENTRIES`] with [`MAX_PEER_ADDRS`] addresses each.
//! - Asking ([`Exchange::ask_if_due`]): after an inventory pull (the
//!   puller, [`crate::reach`]), after a hint proved itself, and by this
//!   module's loop, each peer at most once per [`ASK_EVERY`] announce
//!   intervals. The question carries this node's TCP port, so the asked
//!   peer can dial back and learn the asker the same way ([`Exchange::offered`]).
//! - What is heard is only a hint: it goes to the bounded [`Hints`] table
//!   (capacity, a quota per source address, expiry), never to the
//!   dictionary. [`Exchange::run`] dials hints at a bounded rate with
//!   [`Dialer::dial`] expecting the hinted id; only a handshake that proves
//!   it puts the peer in the dictionary, found via [`FoundVia::Exchange`].
//!   A hint answered by another id is dropped and counted.
//!
//! Owns the hint table, when peers are asked and when hints are dialed;
//! never decides who stays in the peer table (its room-for-newcomers
//! rules, [`crate::dict::Peers`], do) and never reads the wire itself
//! ([`crate::peer::client::PeerConn::get_peers`] does).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::api::FoundVia;
use crate::dict::Dict;
use crate::id::NodeId;
use crate::peer::PeerError;
use crate::peer::client::{FALLBACK_CONNECT_TIMEOUT, PeerConn};
use crate::peer::dial::{DialError, Dialer};
use crate::retry::{RetryBook, RetryPolicy};
use crate::stats::{Counter, Stats};
use crate::task::Tasks;
use crate::wire::frame::{MAX_PEER_ADDRS, MAX_PEER_ENTRIES, PeerEntry};

mod hints;

pub use hints::{HINT_TTL, Hint, HintKey, Hints, MAX_HINTS, SOURCE_QUOTA, Taken, usable};

/// A hint about a peer its source last heard longer ago is not kept.
pub const MAX_HINT_AGE: Duration = Duration::from_secs(600);
/// A peer is asked for its peers at most once per this many of this
/// node's announce intervals.
pub const ASK_EVERY: u32 = 12;
/// Hints dialed at once.
const MAX_DIALS: usize = 4;
/// The loop starts at most one ask of its own per this long (the puller's
/// asks come on top, one per inventory pull at most).
const ASK_SPACING: Duration = Duration::from_secs(1);
/// How long a peer's offer of itself (an asker's own port) waits before it
/// is dialed: on a LAN where datagrams pass, the peer is listed by them
/// within this time (found by multicast or broadcast, as `peers` should
/// say), and the offer then adds nothing.
const OFFER_GRACE: Duration = Duration::from_secs(1);
/// An answer must arrive within this long.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// A hint whose address did not answer is dialed again after 5 s,
/// doubling up to a minute, until it expires.
const DIAL_RETRY: RetryPolicy = RetryPolicy::new(Duration::from_secs(5), Duration::from_secs(60));

/// The answer to a `GetPeers` from `asker` at `asker_addr`, by this node
/// `me`: proven peers, most recently heard first, with the addresses worth
/// telling the asker.
pub fn answer(
    dict: &Dict,
    me: NodeId,
    asker: NodeId,
    asker_addr: SocketAddr,
    now: Instant,
) -> Vec<PeerEntry> {
    let keep = |a: &SocketAddr| usable(*a, asker_addr).is_some();
    dict.peers
        .proven_peers(&[me, asker], MAX_PEER_ENTRIES, MAX_PEER_ADDRS, keep)
        .into_iter()
        .map(|p| PeerEntry {
            id: p.id,
            addrs: p.addrs,
            age_ms: u32::try_from(now.saturating_duration_since(p.last_seen).as_millis())
                .unwrap_or(u32::MAX),
        })
        .collect()
}

/// How a dialed hint ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    /// The hinted id answered: it is in the dictionary now.
    Verified,
    /// Another node answered at the hinted address.
    WrongId,
    /// Nothing answered (or not in time).
    Unreachable,
}

/// Peer exchange for one node: the hint table, when each peer was last
/// asked, and the dialer that checks hints.
pub struct Exchange {
    dict: Arc<Dict>,
    /// Dials as this node; [`Dialer::me`] is never hinted or told.
    dialer: Dialer,
    stats: Arc<Stats>,
    /// This node's TCP server port, told to the peers it asks (0: none).
    port: u16,
    /// This node's announce interval: what peers found here are given, and
    /// the unit of [`ASK_EVERY`].
    interval: Duration,
    hints: Mutex<Hints>,
    /// When each peer was last asked.
    asked: Mutex<HashMap<NodeId, Instant>>,
    /// Woken when hints arrive.
    wake: Notify,
}

impl Exchange {
    pub fn new(
        dict: Arc<Dict>,
        dialer: Dialer,
        stats: Arc<Stats>,
        port: u16,
        interval: Duration,
    ) -> Exchange {
        Exchange {
            dict,
            dialer,
            stats,
            port,
            interval,
            hints: Mutex::new(Hints::default()),
            asked: Mutex::new(HashMap::new()),
            wake: Notify::new(),
        }
    }

    fn hints(&self) -> std::sync::MutexGuard<'_, Hints> {
        self.hints.lock().expect("hint table lock")
    }

    /// How long a peer waits between two asks.
    fn ask_period(&self) -> Duration {
        self.interval * ASK_EVERY
    }

    /// True (and noted as asked at `now`) when `id` was not asked for
    /// [`ASK_EVERY`] intervals.
    fn claim_ask(&self, id: NodeId, now: Instant) -> bool {
        let mut asked = self.asked.lock().expect("asked lock");
        let due = asked
            .get(&id)
            .is_none_or(|at| now.saturating_duration_since(*at) >= self.ask_period());
        if due {
            asked.insert(id, now);
        }
        due
    }

    /// Asks the peer on `conn` for the peers it knows, unless it was asked
    /// within [`ASK_EVERY`] intervals; what it says goes to the hint table.
    pub async fn ask_if_due(&self, conn: &mut PeerConn) -> Result<(), PeerError> {
        if !self.claim_ask(conn.remote_node, Instant::now()) {
            return Ok(());
        }
        let entries = conn.get_peers(self.port, ANSWER_TIMEOUT).await?;
        tracing::debug!(peer = %conn.label(), peers = entries.len(), "peer exchange answered");
        self.hear(conn.remote_node, conn.addr, &entries, Instant::now());
        Ok(())
    }

    /// Takes what `from` (proven on a connection to `at`) said at `now`:
    /// each usable entry becomes a hint; peers already proven and online
    /// are skipped.
    pub fn hear(&self, from: NodeId, at: SocketAddr, entries: &[PeerEntry], now: Instant) {
        let mut added = false;
        for e in entries.iter().take(MAX_PEER_ENTRIES) {
            self.stats.count(Counter::HintsReceived);
            if self.dict.peers.with(&e.id, |p| p.online && p.proven) == Some(true) {
                continue;
            }
            let addrs: Vec<SocketAddr> = e
                .addrs
                .iter()
                .take(MAX_PEER_ADDRS)
                .filter_map(|a| usable(*a, at))
                .collect();
            let stale = Duration::from_millis(u64::from(e.age_ms)) > MAX_HINT_AGE;
            if e.id == self.dialer.me() || e.id == from || addrs.is_empty() || stale {
                self.stats.count(Counter::HintsRejected);
                continue;
            }
            added |= self.take(
                HintKey {
                    source: at.ip().to_canonical(),
                    id: e.id,
                },
                addrs,
                from,
                now,
            );
        }
        if added {
            self.wake.notify_one();
        }
    }

    /// A client proven as `from`, connected from `at`, says its own server
    /// listens on `port` there: a hint like any other (checked by a dial).
    pub fn offered(&self, from: NodeId, at: SocketAddr, port: u16, now: Instant) {
        if port == 0 || from == self.dialer.me() {
            return;
        }
        // Its own word: the source is itself, so `from` is not excluded.
        self.stats.count(Counter::HintsReceived);
        if self.dict.peers.with(&from, |p| p.online && p.proven) == Some(true) {
            return;
        }
        let Some(addr) = usable(SocketAddr::new(at.ip(), port), at) else {
            self.stats.count(Counter::HintsRejected);
            return;
        };
        let key = HintKey {
            source: at.ip().to_canonical(),
            id: from,
        };
        if self.take(key, vec![addr], from, now) {
            self.wake.notify_one();
        }
    }

    /// Puts one hint in the table; false (and counted) when refused.
    fn take(&self, key: HintKey, addrs: Vec<SocketAddr>, from: NodeId, now: Instant) -> bool {
        let hint = Hint {
            addrs,
            from,
            heard: now,
        };
        if self.hints().insert(key, hint) == Taken::Refused {
            self.stats.count(Counter::HintsRejected);
            return false;
        }
        true
    }

    /// Dials hints and asks peers until `scope` is cancelled: at most
    /// [`MAX_DIALS`] dials at once (each the task `hint/<id>`), each hint at
    /// most once per its backoff; at most one ask of its own at a time,
    /// started at most every [`ASK_SPACING`] (the task `ask/<id>`).
    pub async fn run(self: Arc<Self>, scope: Tasks) {
        let cancel = scope.token();
        let mut dials = scope.set::<(HintKey, Outcome)>("hint");
        let mut asks = scope.set::<()>("ask");
        let mut dialing: HashSet<NodeId> = HashSet::new();
        let mut retry: RetryBook<HintKey> = RetryBook::new(DIAL_RETRY);
        let mut last_ask: Option<Instant> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tick.tick() => {}
                _ = self.wake.notified() => {}
                Some(done) = dials.join_next() => {
                    if let Ok((key, outcome)) = done {
                        dialing.remove(&key.id);
                        self.settle(key, outcome, &mut retry);
                    }
                }
                Some(_) = asks.join_next() => {}
            }
            let now = Instant::now();
            self.tidy(&mut retry, now);
            for (key, hint) in self.due(&dialing, &retry, now) {
                if dials.len() >= MAX_DIALS {
                    break;
                }
                dialing.insert(key.id);
                let this = self.clone();
                dials.spawn(&key.id.short(), async move {
                    (key, this.try_hint(key, hint).await)
                });
            }
            let spaced = last_ask.is_none_or(|t| now.duration_since(t) >= ASK_SPACING);
            if asks.is_empty()
                && spaced
                && let Some(peer) = self.next_to_ask(now)
            {
                last_ask = Some(now);
                let this = self.clone();
                asks.spawn(&peer.id.short(), async move { this.ask_peer(peer).await });
            }
        }
        dials.abort_all();
        asks.abort_all();
    }

    /// Forgets expired hints, hints about peers now proven and online, and
    /// backoffs of hints gone; and when peers offline were last asked.
    fn tidy(&self, retry: &mut RetryBook<HintKey>, now: Instant) {
        let mut hints = self.hints();
        hints.expire(now);
        let peers = &self.dict.peers;
        hints.retain(|k| peers.with(&k.id, |p| p.online && p.proven) != Some(true));
        retry.retain(|k| hints.get(k).is_some());
        drop(hints);
        let mut asked = self.asked.lock().expect("asked lock");
        if asked.len() > crate::dict::MAX_PEERS {
            asked.retain(|id, _| peers.is_online(id));
        }
    }

    /// Hints to dial now, newest first: not backing off, an offer only
    /// once [`OFFER_GRACE`] has passed, and no other hint naming the same
    /// id being dialed.
    fn due(
        &self,
        dialing: &HashSet<NodeId>,
        retry: &RetryBook<HintKey>,
        now: Instant,
    ) -> Vec<(HintKey, Hint)> {
        let mut seen = dialing.clone();
        self.hints()
            .newest_first()
            .into_iter()
            // An offer (a peer naming itself) waits out `OFFER_GRACE`.
            .filter(|(k, h)| h.from != k.id || now.duration_since(h.heard) >= OFFER_GRACE)
            .filter(|(k, _)| retry.ready(k, now) && seen.insert(k.id))
            .take(MAX_DIALS)
            .collect()
    }

    /// Dials one hint expecting its id; a handshake that proves it lists
    /// the peer (found via exchange) and asks it in turn.
    async fn try_hint(&self, key: HintKey, hint: Hint) -> Outcome {
        self.stats.count(Counter::HintsDialed);
        match self
            .dialer
            .dial(key.id, &hint.addrs, FALLBACK_CONNECT_TIMEOUT)
            .await
        {
            Ok(mut conn) => {
                self.admit(&conn);
                if let Err(e) = self.ask_if_due(&mut conn).await {
                    tracing::debug!(peer = %conn.label(), error = %e, "peer exchange with a new peer failed");
                }
                Outcome::Verified
            }
            Err(DialError::WrongNode | DialError::Myself) => {
                tracing::debug!(peer = %key.id.short(), from = %hint.from.short(), "a peer exchange hint was answered by another node; dropping it");
                Outcome::WrongId
            }
            Err(DialError::Peer(e)) => {
                tracing::debug!(peer = %key.id.short(), error = %e, "a peer exchange hint did not answer");
                Outcome::Unreachable
            }
        }
    }

    /// A hint proved itself on `conn`: the peer goes in the dictionary,
    /// its address proven. A peer another path listed meanwhile is left
    /// as it is (the dial's contact report proved the address already).
    fn admit(&self, conn: &PeerConn) {
        if self.dict.peers.is_online(&conn.remote_node) {
            return;
        }
        let now = Instant::now();
        let seen = crate::dict::Sighting {
            id: conn.remote_node,
            name: &conn.remote_name,
            addr: conn.addr,
            via: FoundVia::Exchange,
            interval: self.interval,
            digest: conn.remote_digest,
            contents: conn.remote_contents,
        };
        self.dict.observe(seen, now);
        self.dict.peers.reached(conn.hello(), conn.addr, now);
        tracing::info!(peer = %conn.label(), "peer found by peer exchange");
    }

    /// Counts a dial's outcome and updates the table and backoffs.
    fn settle(&self, key: HintKey, outcome: Outcome, retry: &mut RetryBook<HintKey>) {
        match outcome {
            Outcome::Verified => {
                self.stats.count(Counter::HintsVerified);
                self.hints().remove_id(key.id);
                retry.retain(|k| k.id != key.id);
            }
            Outcome::WrongId => {
                self.stats.count(Counter::HintsRejected);
                self.hints().remove(&key);
                retry.succeeded(&key);
            }
            Outcome::Unreachable => {
                retry.failed(key, Instant::now());
            }
        }
    }

    /// The online proven peer asked longest ago (never first), if one is due.
    fn next_to_ask(&self, now: Instant) -> Option<crate::dict::Peer> {
        let asked = self.asked.lock().expect("asked lock");
        let period = self.ask_period();
        self.dict
            .peers
            .filtered(|p| p.online && p.proven)
            .into_iter()
            .map(|p| (asked.get(&p.id).copied(), p))
            .filter(|(at, _)| at.is_none_or(|t| now.saturating_duration_since(t) >= period))
            .min_by_key(|(at, p)| (*at, p.id))
            .map(|(_, p)| p)
    }

    /// Connects to `peer` and asks it, if still due.
    async fn ask_peer(&self, peer: crate::dict::Peer) {
        let r = match self
            .dialer
            .dial(peer.id, &peer.addrs(), crate::peer::CONNECT_TIMEOUT)
            .await
        {
            Ok(mut conn) => self.ask_if_due(&mut conn).await,
            Err(e) => {
                // Counted as asked: tried again a period later, after the
                // others.
                self.asked
                    .lock()
                    .expect("asked lock")
                    .insert(peer.id, Instant::now());
                tracing::debug!(peer = %peer.name, error = %e, "cannot reach a peer to ask for its peers");
                return;
            }
        };
        if let Err(e) = r {
            tracing::debug!(peer = %peer.name, error = %e, "peer exchange failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dict::{Hello, Sighting};
    use crate::identity::Identity;
    use crate::swarm::Mode;

    fn sighting(id: NodeId, addr: SocketAddr) -> Sighting<'static> {
        Sighting {
            id,
            name: "p",
            addr,
            via: FoundVia::Manual,
            interval: Duration::from_secs(1),
            digest: [0; 16],
            contents: 0,
        }
    }

    /// `id` known at `addr`, proven there by a hello when `proven`.
    fn know(dict: &Dict, id: NodeId, addr: &str, proven: bool) {
        let addr: SocketAddr = addr.parse().unwrap();
        let now = Instant::now();
        dict.observe(sighting(id, addr), now);
        if proven {
            let hello = Hello {
                id,
                name: "p",
                digest: [0; 16],
                contents: 0,
            };
            dict.peers.reached(hello, addr, now);
        }
    }

    #[test]
    fn only_proven_online_peers_are_told_never_self_nor_the_asker() {
        let dict = Dict::new();
        let id = |n: u8| NodeId([n; 16]);
        let (me, asker) = (id(1), id(2));
        know(&dict, me, "10.0.0.1:7373", true);
        know(&dict, asker, "10.0.0.2:7373", true);
        know(&dict, id(3), "10.0.0.3:7373", true);
        know(&dict, id(4), "10.0.0.4:7373", false);
        know(&dict, id(5), "10.0.0.5:7373", true);
        dict.set_offline(id(5));
        know(&dict, id(6), "127.0.0.1:7000", true);
        let lan: SocketAddr = "10.0.0.2:40000".parse().unwrap();
        let told = answer(&dict, me, asker, lan, Instant::now());
        let ids: Vec<NodeId> = told.iter().map(|e| e.id).collect();
        assert_eq!(ids, vec![id(3)], "{told:?}");
        assert_eq!(told[0].addrs, vec!["10.0.0.3:7373".parse().unwrap()]);
        // A loopback asker hears of the loopback peer too.
        let lo: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        let told = answer(&dict, me, asker, lo, Instant::now());
        assert!(told.iter().any(|e| e.id == id(6)), "{told:?}");
    }

    /// A loopback server whose handshakes prove `id`; serves until dropped.
    async fn server_as(id: Arc<Identity>) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let hello = crate::peer::noise::server_hello(&id, "real", [0; 16], 0);
                let _ = crate::peer::noise::respond(&mut s, &id, &Mode::Open, &hello).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn only_a_hint_that_proves_its_id_is_listed() {
        let real = Arc::new(Identity::generate());
        let addr = server_as(real.clone()).await;
        let nothing = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let dict = Arc::new(Dict::new());
        let stats = Arc::new(Stats::default());
        let me = Arc::new(Identity::generate());
        let dialer = Dialer::new(me.clone(), Mode::Open, "me", dict.clone());
        let x = Arc::new(Exchange::new(
            dict.clone(),
            dialer,
            stats.clone(),
            0,
            Duration::from_secs(1),
        ));
        let (source, fake) = (NodeId([9; 16]), NodeId([8; 16]));
        let entry = |id: NodeId, at: SocketAddr| PeerEntry {
            id,
            addrs: vec![at],
            age_ms: 0,
        };
        let at: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let told = [
            entry(real.node_id(), addr),
            entry(fake, addr),
            entry(NodeId([7; 16]), nothing),
            entry(me.node_id(), addr),
        ];
        x.hear(source, at, &told, Instant::now());
        assert_eq!(x.hints().len(), 3, "this node itself is no hint");
        let tasks = Tasks::new("test");
        tokio::spawn(x.clone().run(tasks.child("exchange")));
        let settled =
            || stats.get(Counter::HintsVerified) == 1 && stats.get(Counter::HintsRejected) >= 2;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !settled() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tasks.cancel();
        assert!(
            settled(),
            "verified {} rejected {}",
            stats.get(Counter::HintsVerified),
            stats.get(Counter::HintsRejected)
        );
        let p = dict
            .peers
            .peer(&real.node_id())
            .expect("the real peer is listed");
        assert!(
            p.proven && p.found_via.contains(&FoundVia::Exchange),
            "{p:?}"
        );
        assert!(
            dict.peers.peer(&fake).is_none(),
            "the wrong id is never listed"
        );
        assert!(dict.peers.peer(&NodeId([7; 16])).is_none());
        // The unreachable hint stays, backing off, until it expires.
        assert_eq!(x.hints().len(), 1);
    }
}
