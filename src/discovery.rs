//! Multicast discovery: announces this node's inventory digest, answers
//! newcomers' queries, says goodbye, listens to everyone else, and pulls a
//! peer's full inventory over TCP whenever its digest changes. Writes only
//! to the dictionary.
//!
//! Sockets: one receiving socket bound to the group port (SO_REUSEADDR and
//! SO_REUSEPORT, so several nodes on one host all hear the group) that joins
//! the group on every chosen interface, and one sending socket per interface
//! with IP_MULTICAST_IF set to it and TTL 1, so announcements stay on the LAN.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::api::FoundVia;
use crate::dict::Dict;
use crate::id::NodeId;
use crate::store::{Inventory, Store};
use crate::wire::datagram::{Announce, Datagram, MAX_DATAGRAM};

/// Announcements triggered by a change or a query are at least this far apart.
const MIN_GAP: Duration = Duration::from_millis(250);
/// Inventory pulls running at once.
const MAX_PULLS: usize = 4;
const PULL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    #[error(
        "cannot set up multicast discovery on {what}; check that --interface is the IPv4 address of an up interface (see `ip addr`), or pass --no-multicast"
    )]
    Socket {
        what: String,
        source: std::io::Error,
    },
}

/// The IPv4 addresses of every up, multicast-capable, non-loopback interface.
pub fn default_interfaces() -> Vec<Ipv4Addr> {
    let Ok(ifaces) = if_addrs::get_if_addrs() else {
        return Vec::new();
    };
    ifaces
        .into_iter()
        .filter(|i| !i.is_loopback() && i.is_oper_up() && is_multicast_capable(&i.name))
        .filter_map(|i| match i.ip() {
            IpAddr::V4(v4) => Some(v4),
            IpAddr::V6(_) => None,
        })
        .collect()
}

fn is_multicast_capable(name: &str) -> bool {
    const IFF_MULTICAST: u32 = 0x1000;
    match std::fs::read_to_string(format!("/sys/class/net/{name}/flags")) {
        Ok(s) => u32::from_str_radix(s.trim().trim_start_matches("0x"), 16)
            .is_ok_and(|f| f & IFF_MULTICAST != 0),
        Err(_) => true,
    }
}

fn sock_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DiscoveryError {
    let what = what.into();
    move |source| DiscoveryError::Socket { what, source }
}

/// The receiving socket: bound to the group port, member of the group on each interface.
pub fn recv_socket(
    group: SocketAddrV4,
    interfaces: &[Ipv4Addr],
) -> Result<UdpSocket, DiscoveryError> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(sock_err("a new socket"))?;
    s.set_reuse_address(true)
        .map_err(sock_err("SO_REUSEADDR"))?;
    s.set_reuse_port(true).map_err(sock_err("SO_REUSEPORT"))?;
    s.set_nonblocking(true)
        .map_err(sock_err("non-blocking mode"))?;
    s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, group.port())).into())
        .map_err(sock_err(format!("UDP port {}", group.port())))?;
    // Only datagrams for groups this socket joined (Linux otherwise delivers
    // every group's traffic on the port).
    #[cfg(target_os = "linux")]
    unsafe {
        let off: libc::c_int = 0;
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_ALL,
            &off as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    for iface in interfaces {
        s.join_multicast_v4(group.ip(), iface)
            .map_err(sock_err(format!("group {} on {iface}", group.ip())))?;
    }
    UdpSocket::from_std(s.into()).map_err(sock_err("the runtime"))
}

/// A sending socket whose datagrams leave through `iface` only.
pub fn send_socket(iface: Ipv4Addr) -> Result<UdpSocket, DiscoveryError> {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))
        .map_err(sock_err("a new socket"))?;
    s.set_nonblocking(true)
        .map_err(sock_err("non-blocking mode"))?;
    s.set_multicast_if_v4(&iface)
        .map_err(sock_err(format!("IP_MULTICAST_IF {iface}")))?;
    s.set_multicast_loop_v4(true)
        .map_err(sock_err("IP_MULTICAST_LOOP"))?;
    s.set_multicast_ttl_v4(1)
        .map_err(sock_err("IP_MULTICAST_TTL"))?;
    s.bind(&SocketAddr::from((iface, 0)).into())
        .map_err(sock_err(format!("address {iface}")))?;
    UdpSocket::from_std(s.into()).map_err(sock_err("the runtime"))
}

pub struct Discovery {
    pub dict: Arc<Dict>,
    pub store: Arc<Store>,
    pub node: NodeId,
    pub name: String,
    pub tcp_port: u16,
    pub group: SocketAddrV4,
    pub interval: Duration,
    /// Poked to announce now (a query arrived).
    answer: Notify,
}

impl Discovery {
    pub fn new(
        dict: Arc<Dict>,
        store: Arc<Store>,
        node: NodeId,
        name: String,
        tcp_port: u16,
        group: SocketAddrV4,
        interval: Duration,
    ) -> Arc<Self> {
        Arc::new(Discovery {
            dict,
            store,
            node,
            name,
            tcp_port,
            group,
            interval,
            answer: Notify::new(),
        })
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

    async fn send_all(&self, senders: &[UdpSocket], d: &Datagram) {
        let bytes = d.encode();
        for s in senders {
            if let Err(e) = s.send_to(&bytes, self.group).await {
                tracing::debug!(error = %e, "cannot send datagram");
            }
        }
    }

    /// Announces at start (with a query), periodically with jitter, soon
    /// after every inventory change or query, and says goodbye on cancel.
    pub async fn announcer(self: Arc<Self>, senders: Vec<UdpSocket>, cancel: CancellationToken) {
        let mut inv_rx = self.store.subscribe();
        self.send_all(&senders, &Datagram::Query { node: self.node })
            .await;
        let mut last_sent = Instant::now() - MIN_GAP;
        loop {
            // Triggered announces (change, query) keep MIN_GAP between them.
            let wait = MIN_GAP.saturating_sub(last_sent.elapsed());
            if !wait.is_zero() {
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
            let inv = inv_rx.borrow_and_update().clone();
            self.send_all(&senders, &self.announce(&inv)).await;
            last_sent = Instant::now();
            let period = self.interval.mul_f64(rand::random_range(0.8..1.2));
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(period) => {}
                r = inv_rx.changed() => if r.is_err() { break },
                _ = self.answer.notified() => {}
            }
        }
        self.send_all(&senders, &Datagram::Goodbye { node: self.node })
            .await;
    }

    /// Receives datagrams until cancelled.
    pub async fn listener(self: Arc<Self>, socket: UdpSocket, cancel: CancellationToken) {
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

    fn handle(&self, d: Datagram, src: SocketAddr) {
        match d {
            Datagram::Announce(a) => {
                let addr = SocketAddr::new(src.ip(), a.tcp_port);
                let interval = Duration::from_millis(a.interval_ms.clamp(100, 300_000) as u64);
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
            Datagram::Query { .. } => self.answer.notify_one(),
            Datagram::Goodbye { node } => {
                if self.dict.peer(&node).is_some_and(|p| p.online) {
                    tracing::info!(peer = %node.short(), "peer said goodbye");
                    self.dict.set_offline(node);
                }
            }
        }
    }
}
