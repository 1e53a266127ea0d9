//! Datagram discovery: IPv4 and IPv6 multicast, and IPv4 broadcast beside
//! it for networks that drop multicast. Announces this node's inventory
//! digest, answers newcomers' queries, says goodbye, and listens to
//! everyone else. Reads the published inventory through a `watch`
//! receiver (never the store); writes only to the dictionary and the
//! node's counters ([`crate::stats`]); inventories are pulled by
//! [`crate::reach`]. The link-following loop ([`follow_links`]) is shared
//! with [`crate::mdns`].
//!
//! Sockets: per family, one receiving socket bound to the group port
//! (SO_REUSEADDR and SO_REUSEPORT, so several nodes on one host all hear
//! the group) that joins the group on every link, and one sending socket
//! per link (IP_MULTICAST_IF / IPV6_MULTICAST_IF, TTL / hop limit 1, so
//! announcements stay on the LAN). Links follow the interfaces: the
//! [`crate::netif`] watcher publishes the set, and [`Discovery::links`]
//! joins new ones (announcing on them at once) and leaves vanished ones.
//!
//! Broadcast ([`Paths`]): every datagram sent to the group on an IPv4 link
//! is also sent, the same bytes in the same tick, to the link's broadcast
//! address (its [`Link::V4`] `broadcast`; never on loopback) and the group
//! port, from the link's sending socket (SO_BROADCAST). The IPv4 receiving
//! socket hears broadcasts to the port; each datagram's path comes from
//! its packet info ([`path::Route`]), and a broadcast is heard only on a
//! link that broadcasts. The copy heard second is a path duplicate
//! ([`receive::Gate`]), so a peer on both paths is one peer, pulled once.
//!
//! Every datagram is signed by this node's key, and sealed with the swarm
//! key in a private swarm ([`receive::wrap`]); what arrives is acted on only
//! when signed by the node it names and fresh ([`receive::Gate`]).

mod links;
pub mod path;
pub mod receive;
pub mod replay;
mod sockets;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::task::Tasks;

pub use links::follow_links;
pub use sockets::{DiscoveryError, recv_socket, send_socket};

use crate::dict::{Dict, Sighting};
use crate::id::NodeId;
use crate::inventory::Inventory;
use crate::netif::Link;
use crate::stats::{Counter, Stats};
use crate::wire::datagram::{Announce, Datagram, MAX_DATAGRAM};
use path::{Path, Route};
use receive::{Admitted, Gate};

/// Announcements triggered by a change are at least this far apart.
const MIN_GAP: Duration = Duration::from_millis(250);
/// A query is answered after a random delay below this, and queries
/// arriving meanwhile share the answer: 30 nodes starting together send
/// a few announcements each, not one per newcomer.
const ANSWER_SPREAD: Duration = Duration::from_millis(300);

/// The IPv6 group: link-local scope (never routed), "lans" in hex.
pub const DEFAULT_GROUP6: std::net::Ipv6Addr =
    std::net::Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0x6c61, 0x6e73);

/// What a discovery path (multicast, mDNS) needs from the node: who it
/// is, what it offers (the published inventory, read only), and where
/// what it hears goes (the dictionary, the counters).
#[derive(Clone)]
pub struct Context {
    pub node: NodeId,
    /// This node's key: signs every datagram.
    pub identity: Arc<crate::identity::Identity>,
    /// Open, or the private swarm whose keys seal datagrams.
    pub mode: crate::swarm::Mode,
    pub name: String,
    /// The port of this node's TCP server.
    pub tcp_port: u16,
    /// The announce interval.
    pub interval: Duration,
    /// The published inventory (its digest and size are announced).
    pub inventory: watch::Receiver<Inventory>,
    pub dict: Arc<Dict>,
    pub stats: Arc<Stats>,
}

/// Which datagram paths discovery takes (`--no-multicast`,
/// `--no-broadcast`); each is on or off by itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paths {
    /// IPv4 and IPv6 multicast to the groups.
    pub multicast: bool,
    /// IPv4 broadcast to the group port.
    pub broadcast: bool,
}

pub struct Discovery {
    ctx: Context,
    paths: Paths,
    group4: SocketAddrV4,
    group6: SocketAddrV6,
    recv4: Option<Arc<UdpSocket>>,
    recv6: Option<Arc<UdpSocket>>,
    /// One sending socket per link discovery sends on.
    senders: Mutex<BTreeMap<Link, Arc<UdpSocket>>>,
    /// Poked to announce now (a query was answered, a link appeared).
    announce_now: Notify,
    answer_pending: AtomicBool,
    /// Receive checks: signatures, replay windows, foreign swarms.
    gate: Gate,
}

impl Discovery {
    /// Discovery by `paths` on `group4` and `group6` (its scope id is set
    /// per link; broadcasts go to `group4`'s port), receiving on the
    /// sockets of [`recv_socket`] (without an IPv6 one, over IPv4 only).
    /// It joins no link until [`Discovery::set_links`].
    pub fn new(
        ctx: Context,
        paths: Paths,
        group4: SocketAddrV4,
        group6: SocketAddrV6,
        recv4: Option<UdpSocket>,
        recv6: Option<UdpSocket>,
    ) -> Arc<Self> {
        Arc::new(Discovery {
            ctx,
            paths,
            group4,
            group6,
            recv4: recv4.map(Arc::new),
            recv6: recv6.map(Arc::new),
            senders: Mutex::new(BTreeMap::new()),
            announce_now: Notify::new(),
            answer_pending: AtomicBool::new(false),
            gate: Gate::default(),
        })
    }

    fn announce(&self, inv: &Inventory) -> Datagram {
        let me = &self.ctx;
        Datagram::Announce(Announce {
            node: me.node,
            name: me.name.clone(),
            tcp_port: me.tcp_port,
            interval_ms: me.interval.as_millis().min(u32::MAX as u128) as u32,
            inventory_digest: inv.digest,
            contents: inv.count(),
        })
    }

    /// Where a datagram goes on `link`: the group, then the broadcast
    /// address, as the paths are on.
    fn targets(&self, link: &Link) -> Vec<SocketAddr> {
        let mut to = Vec::with_capacity(2);
        match link {
            Link::V4 { broadcast, .. } => {
                if self.paths.multicast {
                    to.push(self.group4.into());
                }
                if self.paths.broadcast
                    && let Some(b) = broadcast
                {
                    to.push(SocketAddrV4::new(*b, self.group4.port()).into());
                }
            }
            Link::V6 { index, .. } if self.paths.multicast => {
                let g = SocketAddrV6::new(*self.group6.ip(), self.group6.port(), 0, *index);
                to.push(g.into());
            }
            Link::V6 { .. } => {}
        }
        to
    }

    async fn send_all(&self, d: &Datagram) {
        // One encoding for every link and path: a peer hears the same
        // bytes (the same sequence number) on each, and keeps the first.
        let bytes = receive::wrap(d, &self.ctx, std::time::SystemTime::now());
        let senders: Vec<(Link, Arc<UdpSocket>)> = self
            .senders
            .lock()
            .expect("senders lock")
            .iter()
            .map(|(l, s)| (l.clone(), s.clone()))
            .collect();
        for (link, s) in senders {
            for to in self.targets(&link) {
                match s.send_to(&bytes, to).await {
                    Ok(n) => {
                        self.ctx.stats.add(Counter::DiscoveryBytesSent, n as u64);
                        self.ctx.stats.count(Counter::DatagramsSent);
                    }
                    Err(e) => tracing::debug!(%link, %to, error = %e, "cannot send datagram"),
                }
            }
        }
    }

    /// Whether broadcasts arriving on interface `ifindex` are heard: only
    /// on a link this node broadcasts on.
    fn hears_broadcast_on(&self, ifindex: u32) -> bool {
        self.paths.broadcast
            && self.senders.lock().expect("senders lock").keys().any(
                |l| matches!(l, Link::V4 { index, broadcast: Some(_), .. } if *index == ifindex),
            )
    }

    /// Announces at start (with a query), periodically with jitter, soon
    /// after every inventory change or query, and says goodbye on cancel.
    pub async fn announcer(self: Arc<Self>, cancel: CancellationToken) {
        let mut inv_rx = self.ctx.inventory.clone();
        self.send_all(&Datagram::Query {
            node: self.ctx.node,
        })
        .await;
        let mut last_sent = Instant::now() - MIN_GAP;
        loop {
            // Triggered announces keep MIN_GAP between them.
            let wait = MIN_GAP.saturating_sub(last_sent.elapsed());
            if !wait.is_zero()
                && cancel
                    .run_until_cancelled(tokio::time::sleep(wait))
                    .await
                    .is_none()
            {
                break;
            }
            let inv = inv_rx.borrow_and_update().clone();
            self.answer_pending.store(false, Ordering::Relaxed);
            self.send_all(&self.announce(&inv)).await;
            last_sent = Instant::now();
            let period = self.ctx.interval.mul_f64(rand::random_range(0.8..1.2));
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(period) => {}
                r = inv_rx.changed() => if r.is_err() { break },
                _ = self.announce_now.notified() => {}
            }
        }
        self.send_all(&Datagram::Goodbye {
            node: self.ctx.node,
        })
        .await;
    }

    /// Receives datagrams on one family's socket until `tasks` is
    /// cancelled; a query's delayed answer is the task `answer` of `tasks`.
    pub async fn listener(self: Arc<Self>, v6: bool, tasks: Tasks) {
        let Some(socket) = (if v6 { &self.recv6 } else { &self.recv4 }).clone() else {
            return;
        };
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        while let Some(received) = tasks
            .until_cancelled(crate::platform::recv_datagram(&socket, &mut buf))
            .await
        {
            let r = match received {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(error = %e, "discovery receive failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let route = Route::of(v6, r.info);
            if route.path == Path::Broadcast && !self.hears_broadcast_on(route.ifindex) {
                continue;
            }
            let (bytes, src) = (&buf[..r.len], r.src);
            let admitted = self
                .gate
                .admit(&self.ctx, bytes, src.ip(), route, Instant::now());
            if matches!(
                admitted,
                Admitted::Verified(_) | Admitted::FirstWord(_) | Admitted::PathCopy
            ) {
                self.ctx.stats.count(route.path.counter());
            }
            match admitted {
                Admitted::Verified(d) => self.handle(d, src, route.path, &tasks),
                // A goodbye with no replay window may be an old one
                // replayed: the prober checks with a handshake instead.
                Admitted::FirstWord(Datagram::Goodbye { node }) => {
                    self.ctx.dict.peers.claim_departure(node);
                }
                Admitted::FirstWord(d) => self.handle(d, src, route.path, &tasks),
                Admitted::Own | Admitted::PathCopy | Admitted::Dropped => {}
            }
        }
    }

    /// Acts on a verified datagram (see [`Gate::admit`]).
    fn handle(self: &Arc<Self>, d: Datagram, src: SocketAddr, path: Path, tasks: &Tasks) {
        match d {
            Datagram::Announce(a) => {
                // The TCP server is at the datagram's source address (with
                // its scope id for an IPv6 link-local one).
                let addr = match src {
                    SocketAddr::V4(s) => SocketAddr::new(IpAddr::V4(*s.ip()), a.tcp_port),
                    SocketAddr::V6(s) => {
                        SocketAddrV6::new(*s.ip(), a.tcp_port, 0, s.scope_id()).into()
                    }
                };
                // Clamped again by the dictionary to [100 ms, 60 s]: a
                // claimed interval decides how long a silent peer stays.
                let interval = Duration::from_millis(a.interval_ms as u64)
                    .clamp(crate::dict::MIN_INTERVAL, crate::dict::MAX_INTERVAL);
                let dict = &self.ctx.dict;
                let via = path.found_via();
                if !dict.peers.is_online(&a.node) {
                    tracing::info!(peer = %format!("{}@{addr}", a.name), id = %a.node.short(), "peer found by {via} ✓");
                }
                let seen = Sighting {
                    id: a.node,
                    name: &a.name,
                    addr,
                    via,
                    interval,
                    digest: a.inventory_digest,
                    contents: a.contents,
                };
                dict.observe_signed(seen, Instant::now());
            }
            Datagram::Query { .. } => {
                if !self.answer_pending.swap(true, Ordering::Relaxed) {
                    let this = self.clone();
                    let delay = ANSWER_SPREAD.mul_f64(rand::random_range(0.0..1.0));
                    tasks.spawn("answer", async move {
                        tokio::time::sleep(delay).await;
                        this.announce_now.notify_one();
                    });
                }
            }
            Datagram::Goodbye { node } => {
                // Signed by the node itself (checked by the gate): from
                // whatever address.
                if self.ctx.dict.depart_verified(node) {
                    tracing::info!(peer = %node.short(), from = %src, "peer said goodbye ✓");
                }
            }
        }
    }
}
