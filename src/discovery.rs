//! Multicast discovery over IPv4 and IPv6: announces this node's inventory
//! digest, answers newcomers' queries, says goodbye, and listens to
//! everyone else. Writes only to the dictionary; inventories are pulled by
//! [`crate::reach`].
//!
//! Sockets: per family, one receiving socket bound to the group port
//! (SO_REUSEADDR and SO_REUSEPORT, so several nodes on one host all hear
//! the group) that joins the group on every link, and one sending socket
//! per link (IP_MULTICAST_IF / IPV6_MULTICAST_IF, TTL / hop limit 1, so
//! announcements stay on the LAN). Links follow the interfaces: the
//! [`crate::netif`] watcher publishes the set, and [`Discovery::links`]
//! joins new ones (announcing on them at once) and leaves vanished ones.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::api::FoundVia;
use crate::dict::Dict;
use crate::id::NodeId;
use crate::netif::Link;
use crate::store::{Inventory, Store};
use crate::wire::datagram::{Announce, Datagram, MAX_DATAGRAM};

/// Announcements triggered by a change are at least this far apart.
const MIN_GAP: Duration = Duration::from_millis(250);
/// A query is answered after a random delay below this, and queries
/// arriving meanwhile share the answer: 30 nodes starting together send
/// a few announcements each, not one per newcomer.
const ANSWER_SPREAD: Duration = Duration::from_millis(300);

/// The IPv6 group: link-local scope (never routed), "lans" in hex.
pub const DEFAULT_GROUP6: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0x6c61, 0x6e73);

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(
        "cannot set up multicast discovery on {what}; check --interface (an address or name from `ip addr`), or pass --no-multicast"
    )]
    Socket {
        what: String,
        source: std::io::Error,
    },
}

fn sock_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DiscoveryError {
    let what = what.into();
    move |source| DiscoveryError::Socket { what, source }
}

/// The receiving socket of one family, bound to the group port; it joins
/// the group per link later.
pub fn recv_socket(v6: bool, port: u16) -> Result<UdpSocket, DiscoveryError> {
    let (domain, any) = if v6 {
        (Domain::IPV6, IpAddr::V6(Ipv6Addr::UNSPECIFIED))
    } else {
        (Domain::IPV4, IpAddr::V4(Ipv4Addr::UNSPECIFIED))
    };
    let s =
        Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).map_err(sock_err("a new socket"))?;
    if v6 {
        s.set_only_v6(true).map_err(sock_err("IPV6_V6ONLY"))?;
    }
    s.set_reuse_address(true)
        .map_err(sock_err("SO_REUSEADDR"))?;
    crate::platform::reuse_port(&s).map_err(sock_err("SO_REUSEPORT"))?;
    s.set_nonblocking(true)
        .map_err(sock_err("non-blocking mode"))?;
    s.bind(&SocketAddr::new(any, port).into())
        .map_err(sock_err(format!("UDP port {port}")))?;
    crate::platform::only_joined_groups(&s, v6);
    UdpSocket::from_std(s.into()).map_err(sock_err("the runtime"))
}

/// A sending socket whose datagrams leave through `link` only.
pub fn send_socket(link: &Link) -> Result<UdpSocket, DiscoveryError> {
    let s = match link {
        Link::V4 { addr, .. } => {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
                .map_err(sock_err("a new socket"))?;
            s.set_multicast_if_v4(addr)
                .map_err(sock_err(format!("IP_MULTICAST_IF {addr}")))?;
            s.set_multicast_loop_v4(true)
                .map_err(sock_err("IP_MULTICAST_LOOP"))?;
            s.set_multicast_ttl_v4(1)
                .map_err(sock_err("IP_MULTICAST_TTL"))?;
            s.bind(&SocketAddr::from((*addr, 0)).into())
                .map_err(sock_err(format!("address {addr}")))?;
            s
        }
        Link::V6 { name, index } => {
            let s = Socket::new(Domain::IPV6, Type::DGRAM, Some(Protocol::UDP))
                .map_err(sock_err("a new socket"))?;
            s.set_only_v6(true).map_err(sock_err("IPV6_V6ONLY"))?;
            s.set_multicast_if_v6(*index)
                .map_err(sock_err(format!("IPV6_MULTICAST_IF {name}")))?;
            s.set_multicast_loop_v6(true)
                .map_err(sock_err("IPV6_MULTICAST_LOOP"))?;
            s.set_multicast_hops_v6(1)
                .map_err(sock_err("IPV6_MULTICAST_HOPS"))?;
            s
        }
    };
    s.set_nonblocking(true)
        .map_err(sock_err("non-blocking mode"))?;
    UdpSocket::from_std(s.into()).map_err(sock_err("the runtime"))
}

pub struct Discovery {
    pub dict: Arc<Dict>,
    pub store: Arc<Store>,
    pub node: NodeId,
    pub name: String,
    pub tcp_port: u16,
    pub group4: SocketAddrV4,
    pub group6: SocketAddrV6,
    pub interval: Duration,
    recv4: Option<Arc<UdpSocket>>,
    recv6: Option<Arc<UdpSocket>>,
    /// One sending socket per link.
    senders: Mutex<BTreeMap<Link, Arc<UdpSocket>>>,
    /// Poked to announce now (a query was answered, a link appeared).
    announce_now: Notify,
    answer_pending: AtomicBool,
}

impl Discovery {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        dict: Arc<Dict>,
        store: Arc<Store>,
        node: NodeId,
        name: String,
        tcp_port: u16,
        group4: SocketAddrV4,
        group6: SocketAddrV6,
        interval: Duration,
        recv4: Option<UdpSocket>,
        recv6: Option<UdpSocket>,
    ) -> Arc<Self> {
        Arc::new(Discovery {
            dict,
            store,
            node,
            name,
            tcp_port,
            group4,
            group6,
            interval,
            recv4: recv4.map(Arc::new),
            recv6: recv6.map(Arc::new),
            senders: Mutex::new(BTreeMap::new()),
            announce_now: Notify::new(),
            answer_pending: AtomicBool::new(false),
        })
    }

    /// Joins the group on `links` not yet joined and leaves the others.
    /// Returns the links that failed, with why.
    pub fn set_links(&self, links: &BTreeSet<Link>) -> Vec<(Link, DiscoveryError)> {
        let mut failed = Vec::new();
        let mut senders = self.senders.lock().expect("senders lock");
        let gone: Vec<Link> = senders
            .keys()
            .filter(|l| !links.contains(l))
            .cloned()
            .collect();
        for l in gone {
            senders.remove(&l);
            let _ = match &l {
                Link::V4 { addr, .. } => self
                    .recv4
                    .as_ref()
                    .map(|s| s.leave_multicast_v4(*self.group4.ip(), *addr)),
                Link::V6 { index, .. } => self
                    .recv6
                    .as_ref()
                    .map(|s| s.leave_multicast_v6(self.group6.ip(), *index)),
            };
            tracing::info!(link = %l, "multicast discovery left an interface");
        }
        let mut added = false;
        let new: Vec<&Link> = links.iter().filter(|l| !senders.contains_key(l)).collect();
        for l in new {
            let joined = match l {
                Link::V4 { addr, .. } => match &self.recv4 {
                    Some(s) => s
                        .join_multicast_v4(*self.group4.ip(), *addr)
                        .map_err(sock_err(format!("group {} on {l}", self.group4.ip()))),
                    None => continue,
                },
                Link::V6 { index, .. } => match &self.recv6 {
                    Some(s) => s
                        .join_multicast_v6(self.group6.ip(), *index)
                        .map_err(sock_err(format!("group {} on {l}", self.group6.ip()))),
                    None => continue,
                },
            };
            match joined.and_then(|()| send_socket(l)) {
                Ok(s) => {
                    tracing::info!(link = %l, "multicast discovery on an interface");
                    senders.insert(l.clone(), Arc::new(s));
                    added = true;
                }
                Err(e) => failed.push((l.clone(), e)),
            }
        }
        drop(senders);
        if added {
            self.announce_now.notify_one();
        }
        failed
    }

    /// Follows the interface watcher's link set until cancelled. A new
    /// link gets a query and an announcement at once.
    pub async fn links(
        self: Arc<Self>,
        mut rx: watch::Receiver<BTreeSet<Link>>,
        cancel: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
            let links = rx.borrow_and_update().clone();
            for (l, e) in self.set_links(&links) {
                tracing::warn!(link = %l, error = %e, "cannot use this interface for discovery");
            }
            self.send_all(&Datagram::Query { node: self.node }).await;
        }
    }

    fn announce(&self, inv: &Inventory) -> Datagram {
        Datagram::Announce(Announce {
            node: self.node,
            name: self.name.clone(),
            tcp_port: self.tcp_port,
            interval_ms: self.interval.as_millis().min(u32::MAX as u128) as u32,
            inventory_digest: inv.digest,
            contents: inv.entries.len() as u32,
        })
    }

    async fn send_all(&self, d: &Datagram) {
        let bytes = d.encode();
        let senders: Vec<(Link, Arc<UdpSocket>)> = self
            .senders
            .lock()
            .expect("senders lock")
            .iter()
            .map(|(l, s)| (l.clone(), s.clone()))
            .collect();
        for (link, s) in senders {
            let to: SocketAddr = match link {
                Link::V4 { .. } => self.group4.into(),
                Link::V6 { index, .. } => {
                    SocketAddrV6::new(*self.group6.ip(), self.group6.port(), 0, index).into()
                }
            };
            match s.send_to(&bytes, to).await {
                Ok(n) => {
                    self.dict
                        .discovery_bytes_sent
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) => tracing::debug!(%link, error = %e, "cannot send datagram"),
            }
        }
    }

    /// Announces at start (with a query), periodically with jitter, soon
    /// after every inventory change or query, and says goodbye on cancel.
    pub async fn announcer(self: Arc<Self>, cancel: CancellationToken) {
        let mut inv_rx = self.store.subscribe();
        self.send_all(&Datagram::Query { node: self.node }).await;
        let mut last_sent = Instant::now() - MIN_GAP;
        loop {
            // Triggered announces keep MIN_GAP between them.
            let wait = MIN_GAP.saturating_sub(last_sent.elapsed());
            if !wait.is_zero() {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            let inv = inv_rx.borrow_and_update().clone();
            self.answer_pending.store(false, Ordering::Relaxed);
            self.send_all(&self.announce(&inv)).await;
            last_sent = Instant::now();
            let period = self.interval.mul_f64(rand::random_range(0.8..1.2));
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(period) => {}
                r = inv_rx.changed() => if r.is_err() { break },
                _ = self.announce_now.notified() => {}
            }
        }
        self.send_all(&Datagram::Goodbye { node: self.node }).await;
    }

    /// Receives datagrams on one family's socket until cancelled.
    pub async fn listener(self: Arc<Self>, v6: bool, cancel: CancellationToken) {
        let Some(socket) = (if v6 { &self.recv6 } else { &self.recv4 }).clone() else {
            return;
        };
        let mut buf = vec![0u8; MAX_DATAGRAM + 1];
        loop {
            let (len, src) = tokio::select! {
                _ = cancel.cancelled() => return,
                r = socket.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!(error = %e, "multicast receive failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let d = match Datagram::decode(&buf[..len]) {
                Ok(d) => d,
                Err(e) => {
                    self.dict
                        .malformed_datagrams
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(from = %src, error = %e, "dropped malformed datagram");
                    continue;
                }
            };
            if d.node() == self.node {
                continue;
            }
            self.handle(d, src);
        }
    }

    fn handle(self: &Arc<Self>, d: Datagram, src: SocketAddr) {
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
                let first = self.dict.peer(&a.node).is_none_or(|p| !p.online);
                if first {
                    tracing::info!(peer = %a.name, %addr, "peer found by multicast");
                }
                self.dict.observe(
                    a.node,
                    &a.name,
                    addr,
                    FoundVia::Multicast,
                    interval,
                    a.inventory_digest,
                    a.contents,
                );
            }
            Datagram::Query { .. } => {
                if !self.answer_pending.swap(true, Ordering::Relaxed) {
                    let this = self.clone();
                    let delay = ANSWER_SPREAD.mul_f64(rand::random_range(0.0..1.0));
                    tokio::spawn(async move {
                        tokio::time::sleep(delay).await;
                        this.announce_now.notify_one();
                    });
                }
            }
            Datagram::Goodbye { node } => {
                // Only from where the peer is known to be: anyone can send
                // a goodbye naming any id.
                if self.dict.depart(node, src.ip()) {
                    tracing::info!(peer = %node.short(), "peer said goodbye");
                }
            }
        }
    }
}
