//! mDNS / DNS-SD discovery beside the custom multicast group, through the
//! mdns-sd crate: for networks whose access points drop unknown multicast
//! but pass mDNS, and so that standard tools (`avahi-browse -rt
//! _lanshare._tcp`, python zeroconf) see lanshare nodes.
//!
//! Open mode: each node registers `<node name>._lanshare._tcp.local.` with
//! its TCP port and a TXT record holding `id` (node id, hex), `v` (`2`),
//! `port` and `digest` (inventory digest, hex), but never the inventory
//! itself: a claim, confirmed by a TCP handshake. Private mode: the instance
//! and host are `ls-<16 random hex>`, new at each start, and the TXT record
//! holds only `v=2`, `m=p`, `port` and `x` (see [`blob`]: the signed
//! `{pk, digest, seq}` sealed with the swarm's mDNS key); a member opens it
//! and takes it as a signed announce, anyone else learns only that some
//! lanshare node is there. The record is updated when the digest changes
//! (at most once a second). It browses for the same service type: every
//! resolved instance of its own swarm and each of its addresses goes into
//! the dictionary as found by mDNS, and its inventory is pulled over TCP
//! like any peer's. A clean stop unregisters the service, which peers see
//! as a removal at once.
//!
//! The daemon is told to use exactly the interfaces discovery uses (the
//! [`crate::netif`] links), through a predicate that reads the current link
//! set, so it follows interfaces that come and go
//! ([`crate::discovery::follow_links`]).
//!
//! Like multicast discovery it reads the published inventory through a
//! `watch` receiver (never the store), and writes only to the dictionary
//! and the node's counters.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr, SocketAddrV6};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use mdns_sd::{
    IfKind, IfPredicate, ResolvedService, ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo,
};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub mod blob;

use crate::api::FoundVia;
use crate::dict::Sighting;
use crate::discovery::{Context, follow_links};
use crate::id::NodeId;
use crate::netif::Link;
use crate::stats::Counter;
use crate::swarm::Mode;
use crate::wire::MAX_NODE_NAME;
use crate::wire::datagram::{DATAGRAM_VERSION, NONCE};

pub const SERVICE_TYPE: &str = "_lanshare._tcp.local.";
/// TXT updates are at least this far apart.
const MIN_UPDATE_GAP: Duration = Duration::from_secs(1);
/// How often the daemon looks for interface and address changes.
const IP_CHECK_SECS: u32 = 2;

#[derive(Debug, thiserror::Error)]
pub enum MdnsError {
    #[error("cannot start mDNS (pass --no-mdns to run without it): {0}")]
    Daemon(#[from] mdns_sd::Error),
}

pub struct Mdns {
    daemon: ServiceDaemon,
    ctx: Context,
    /// The instance label: the node name (open), or `ls-<16 random hex>`
    /// (private).
    instance: String,
    host: String,
    /// The links the daemon may use, read by its interface predicate.
    links: Arc<RwLock<BTreeSet<Link>>>,
}

impl Drop for Mdns {
    /// Stops the daemon thread: dropping a `ServiceDaemon` handle leaves it
    /// running, so a node bound and dropped without running would leak it.
    /// After the publisher's clean stop the daemon is gone already and this
    /// does nothing.
    fn drop(&mut self) {
        let _ = self.daemon.shutdown();
    }
}

impl Mdns {
    /// Starts the daemon, restricted to `links`.
    pub fn start(ctx: Context, links: BTreeSet<Link>) -> Result<Arc<Mdns>, MdnsError> {
        let daemon = ServiceDaemon::new()?;
        let links = Arc::new(RwLock::new(links));
        let allowed = links.clone();
        daemon.disable_interface(IfKind::All)?;
        daemon.enable_interface(IfKind::Predicate(IfPredicate::new(move |intf| {
            let links = allowed.read().expect("links lock");
            links.iter().any(|l| match (l, intf.ip()) {
                (Link::V4 { addr, .. }, IpAddr::V4(ip)) => *addr == ip,
                (Link::V6 { name, .. }, IpAddr::V6(_)) => *name == intf.name,
                _ => false,
            })
        })))?;
        daemon.set_ip_check_interval(IP_CHECK_SECS)?;
        let (instance, host) = if ctx.mode.is_private() {
            let label = format!(
                "ls-{}",
                crate::id::to_hex(&crate::identity::random_bytes()[..8])
            );
            (label.clone(), format!("{label}.local."))
        } else {
            let host = format!(
                "{}-{}.local.",
                host_label(&ctx.name),
                &ctx.node.to_hex()[..8]
            );
            (ctx.name.clone(), host)
        };
        Ok(Arc::new(Mdns {
            daemon,
            ctx,
            instance,
            host,
            links,
        }))
    }

    fn fullname(&self) -> String {
        format!("{}.{SERVICE_TYPE}", escape(&self.instance))
    }

    /// The TXT record announcing `digest`.
    fn properties(&self, digest: &[u8; 16]) -> Vec<(&'static str, String)> {
        let me = &self.ctx;
        match &me.mode {
            Mode::Open => vec![
                ("id", me.node.to_hex()),
                ("v", DATAGRAM_VERSION.to_string()),
                ("port", me.tcp_port.to_string()),
                ("digest", crate::id::to_hex(digest)),
            ],
            Mode::Private(keys) => {
                let seq = crate::discovery::replay::next_seq(std::time::SystemTime::now());
                let nonce: [u8; NONCE] = crate::identity::random_bytes()[..NONCE]
                    .try_into()
                    .expect("24 of 32 bytes");
                let x = blob::seal(&me.identity, digest, seq, &keys.mdns, &nonce);
                vec![
                    ("v", DATAGRAM_VERSION.to_string()),
                    ("m", "p".to_string()),
                    ("port", me.tcp_port.to_string()),
                    ("x", x),
                ]
            }
        }
    }

    fn register(&self, digest: &[u8; 16]) -> Result<(), MdnsError> {
        let me = &self.ctx;
        let props = self.properties(digest);
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            &self.instance,
            &self.host,
            (),
            me.tcp_port,
            &props[..],
        )?
        .enable_addr_auto();
        self.daemon.register(info)?;
        Ok(())
    }

    /// Keeps the registration's digest current; unregisters on cancel.
    pub async fn publisher(self: Arc<Self>, cancel: CancellationToken) {
        let mut inv = self.ctx.inventory.clone();
        loop {
            let digest = inv.borrow_and_update().digest;
            if let Err(e) = self.register(&digest) {
                tracing::warn!(error = %e, "cannot register the mDNS service");
            }
            let Some(Ok(())) = cancel.run_until_cancelled(inv.changed()).await else {
                break;
            };
            let gap = tokio::time::sleep(MIN_UPDATE_GAP);
            if cancel.run_until_cancelled(gap).await.is_none() {
                break;
            }
        }
        match self.daemon.unregister(&self.fullname()) {
            Ok(rx) => {
                let _ = tokio::time::timeout(Duration::from_secs(1), rx.recv_async()).await;
            }
            Err(e) => tracing::debug!(error = %e, "cannot unregister the mDNS service"),
        }
        if let Ok(rx) = self.daemon.shutdown() {
            let _ = tokio::time::timeout(Duration::from_secs(1), rx.recv_async()).await;
        }
    }

    /// Follows the link set (the daemon rechecks interfaces on its own).
    pub async fn links(
        self: Arc<Self>,
        rx: watch::Receiver<BTreeSet<Link>>,
        cancel: CancellationToken,
    ) {
        follow_links(rx, cancel, |links| {
            *self.links.write().expect("links lock") = links;
            std::future::ready(())
        })
        .await
    }

    /// Browses for other nodes until cancelled.
    pub async fn browser(self: Arc<Self>, cancel: CancellationToken) {
        let events = match self.daemon.browse(SERVICE_TYPE) {
            Ok(rx) => rx,
            Err(e) => {
                tracing::warn!(error = %e, "cannot browse mDNS; peers are found by multicast only");
                return;
            }
        };
        // Instance full name -> node id, to handle removals.
        let mut known: HashMap<String, NodeId> = HashMap::new();
        while let Some(Ok(ev)) = cancel.run_until_cancelled(events.recv_async()).await {
            match ev {
                ServiceEvent::ServiceResolved(rs) => match parse(&rs, &self.ctx.mode) {
                    Parsed::Found(found) if found.node != self.ctx.node => {
                        if known.len() < crate::dict::MAX_PEERS || known.contains_key(&rs.fullname)
                        {
                            known.insert(rs.fullname.clone(), found.node);
                        }
                        self.found(found);
                    }
                    Parsed::Found(_) => {}
                    Parsed::Foreign => {
                        self.ctx.stats.count(Counter::ForeignDatagrams);
                        tracing::debug!(instance = %rs.fullname, "ignored an mDNS record of another swarm");
                    }
                    Parsed::Malformed => {
                        self.ctx.stats.count(Counter::MalformedDatagrams);
                        tracing::debug!(instance = %rs.fullname, "ignored a malformed lanshare mDNS record");
                    }
                },
                ServiceEvent::ServiceRemoved(_, fullname) => {
                    if let Some(id) = known.remove(&fullname)
                        && self.ctx.dict.peers.is_online(&id)
                    {
                        // Anyone can remove a record naming any id: the
                        // peer is checked over TCP before it is dropped.
                        tracing::info!(peer = %id.short(), "peer unregistered from mDNS; checking that it left");
                        self.ctx.dict.peers.claim_departure(id);
                    }
                }
                _ => {}
            }
        }
        let _ = self.daemon.stop_browse(SERVICE_TYPE);
    }

    fn found(&self, f: Found) {
        let dict = &self.ctx.dict;
        // The record has no size: the one held stands until a pull. A
        // private record has no name either: the one known stands.
        let (contents, known_name) = dict
            .peers
            .with(&f.node, |p| (p.contents, p.name.clone()))
            .unzip();
        let name = match (f.signed, known_name) {
            (Signature::Signed, Some(known)) => known,
            _ => f.name,
        };
        let contents = contents.unwrap_or(0);
        if !dict.peers.is_online(&f.node) {
            tracing::info!(peer = %name, addrs = ?f.addrs, "peer found by mDNS");
        }
        for addr in f.addrs {
            let seen = Sighting {
                id: f.node,
                name: &name,
                addr,
                via: FoundVia::Mdns,
                interval: self.ctx.interval,
                digest: f.digest,
                contents,
            };
            match f.signed {
                Signature::Signed => dict.observe_signed(seen, Instant::now()),
                Signature::Unsigned => dict.observe(seen, Instant::now()),
            };
        }
    }
}

/// Whether a record's claims are signed by the node's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Signature {
    /// An open record: a claim, confirmed by a TCP handshake.
    Unsigned,
    /// A private record's blob, opened and verified.
    Signed,
}

/// What a resolved record is to this node.
#[derive(Debug, PartialEq)]
enum Parsed {
    Found(Found),
    /// Of another swarm (another key, or the other mode): ignored.
    Foreign,
    /// Not a valid lanshare record.
    Malformed,
}

/// A lanshare node as its mDNS record describes it.
#[derive(Debug, PartialEq)]
struct Found {
    node: NodeId,
    name: String,
    digest: [u8; 16],
    addrs: Vec<SocketAddr>,
    signed: Signature,
}

/// Reads a resolved record as a node in `mode` sees it. Everything in it
/// came from the network.
fn parse(rs: &ResolvedService, mode: &Mode) -> Parsed {
    let txt = |k: &str| rs.get_property_val_str(k);
    if txt("v") != Some(&DATAGRAM_VERSION.to_string()) {
        return Parsed::Malformed;
    }
    let private = txt("m") == Some("p");
    let found = match (mode, private) {
        (Mode::Open, false) => parse_open(rs),
        (Mode::Private(keys), true) => parse_private(rs, &keys.mdns),
        _ => return Parsed::Foreign,
    };
    match found {
        Ok(f) => Parsed::Found(f),
        Err(p) => p,
    }
}

/// An open record: `id`, `digest` and the instance name, all claims.
fn parse_open(rs: &ResolvedService) -> Result<Found, Parsed> {
    let txt = |k: &str| rs.get_property_val_str(k);
    let node: NodeId = txt("id")
        .and_then(|t| t.parse().ok())
        .ok_or(Parsed::Malformed)?;
    let digest = txt("digest")
        .and_then(parse_digest)
        .ok_or(Parsed::Malformed)?;
    let name = instance_name(rs).ok_or(Parsed::Malformed)?;
    let addrs = addresses(rs).ok_or(Parsed::Malformed)?;
    Ok(Found {
        node,
        name,
        digest,
        addrs,
        signed: Signature::Unsigned,
    })
}

/// A private record: its `x` blob, opened with `key` and verified, gives
/// the node (missing or failing: another swarm).
fn parse_private(rs: &ResolvedService, key: &[u8; 32]) -> Result<Found, Parsed> {
    let claim = rs
        .get_property_val_str("x")
        .and_then(|x| blob::open(x, key))
        .ok_or(Parsed::Foreign)?;
    let name = instance_name(rs).ok_or(Parsed::Malformed)?;
    let addrs = addresses(rs).ok_or(Parsed::Malformed)?;
    Ok(Found {
        node: claim.node,
        name,
        digest: claim.digest,
        addrs,
        signed: Signature::Signed,
    })
}

/// The instance label, unescaped and checked.
fn instance_name(rs: &ResolvedService) -> Option<String> {
    let instance = rs
        .fullname
        .strip_suffix(SERVICE_TYPE)?
        .strip_suffix('.')?
        .replace("\\.", ".")
        .replace("\\\\", "\\");
    if crate::wire::check_text(&instance, MAX_NODE_NAME, "name").is_err() || instance.is_empty() {
        return None;
    }
    Some(instance)
}

/// The record's addresses with its port, at most MAX_ADDRS; `None` when
/// there is none or the port is 0.
fn addresses(rs: &ResolvedService) -> Option<Vec<SocketAddr>> {
    let port = rs.port;
    if port == 0 {
        return None;
    }
    let mut addrs: Vec<SocketAddr> = rs
        .addresses
        .iter()
        .filter_map(|a| socket_addr(a, port))
        .collect();
    addrs.sort();
    addrs.truncate(crate::dict::MAX_ADDRS);
    (!addrs.is_empty()).then_some(addrs)
}

fn socket_addr(a: &ScopedIp, port: u16) -> Option<SocketAddr> {
    let ip = a.to_ip_addr();
    if ip.is_unspecified() || ip.is_multicast() {
        return None;
    }
    Some(match a {
        ScopedIp::V6(v6) => {
            let scope = if v6.addr().segments()[0] & 0xffc0 == 0xfe80 {
                v6.scope_id().index
            } else {
                0
            };
            SocketAddrV6::new(*v6.addr(), port, 0, scope).into()
        }
        _ => SocketAddr::new(ip, port),
    })
}

fn parse_digest(s: &str) -> Option<[u8; 16]> {
    if s.len() != 32 {
        return None;
    }
    let mut out = [0u8; 16];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A DNS host label from a node name: letters, digits and hyphens.
fn host_label(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    s = s.trim_matches('-').to_string();
    if s.is_empty() { "lanshare".into() } else { s }
}

/// The instance label as mdns-sd writes it in full names.
fn escape(name: &str) -> String {
    name.replace('\\', "\\\\").replace('.', "\\.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_and_digests() {
        assert_eq!(host_label("Alice's Laptop"), "alice-s-laptop");
        assert_eq!(host_label("..."), "lanshare");
        assert_eq!(parse_digest(&"ab".repeat(16)), Some([0xab; 16]));
        assert_eq!(parse_digest("abc"), None);
        assert_eq!(parse_digest(&"zz".repeat(16)), None);
        assert_eq!(parse_digest(&"é".repeat(16)), None);
        assert_eq!(escape("a.b"), "a\\.b");
    }

    /// The daemon threads (`mDNS_daemon`) in this thread's network namespace.
    #[cfg(target_os = "linux")]
    fn daemon_threads_here() -> usize {
        let here = std::fs::read_link("/proc/thread-self/ns/net").unwrap();
        std::fs::read_dir("/proc/self/task")
            .unwrap()
            .flatten()
            .filter(|t| {
                let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
                comm.trim() == "mDNS_daemon"
                    && std::fs::read_link(t.path().join("ns/net")).ok().as_ref() == Some(&here)
            })
            .count()
    }

    /// Waits up to 5 s for `n` daemon threads here; returns how many there are.
    #[cfg(target_os = "linux")]
    fn wait_for_daemons(n: usize) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        while daemon_threads_here() != n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        daemon_threads_here()
    }

    /// A `Mdns` dropped without running (a `node::Bound` never run) stops
    /// its daemon thread. The daemon joins the mDNS group on every
    /// interface it sees as it starts, so the test runs it in a fresh
    /// network namespace (only a loopback, down) on a thread of its own;
    /// without the privilege to make one it is skipped.
    #[cfg(target_os = "linux")]
    #[test]
    fn dropping_mdns_stops_its_daemon() {
        let run = std::thread::spawn(|| {
            // SAFETY: unshare only changes this thread's network namespace.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                eprintln!("skipped: cannot make a network namespace (needs root)");
                return;
            }
            assert_eq!(daemon_threads_here(), 0);
            let (_tx, inventory) = watch::channel(crate::inventory::Inventory::new(Vec::new()));
            let identity = Arc::new(crate::identity::Identity::generate());
            let ctx = Context {
                node: identity.node_id(),
                identity,
                mode: crate::swarm::Mode::Open,
                name: "drop-test".into(),
                tcp_port: 1,
                interval: Duration::from_secs(1),
                inventory,
                dict: Arc::new(crate::dict::Dict::new()),
                stats: Default::default(),
            };
            let mdns = Mdns::start(ctx, BTreeSet::new()).unwrap();
            // The thread names itself once it runs.
            assert_eq!(wait_for_daemons(1), 1);
            drop(mdns);
            assert_eq!(wait_for_daemons(0), 0, "the mDNS daemon outlived its Mdns");
        });
        run.join().unwrap();
    }
}
