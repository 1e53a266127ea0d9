//! The machine's network interfaces and which of them discovery uses.
//!
//! A [`Link`] is one interface in one IP family: IPv4 links are named by an
//! address of the interface (IP_MULTICAST_IF and group membership take
//! one), IPv6 links by the interface index (a scope id). By default every
//! up, multicast-capable, non-loopback interface gives a link in each family
//! it has an address of, except virtual bridges matching
//! [`DEFAULT_EXCLUDES`] or `--exclude-interface`; `--interface` (an address
//! or an interface name, repeatable) restricts it. Interfaces are listed
//! again every few seconds, so links follow interfaces that come and go.
//!
//! An IPv4 link also says where discovery broadcasts on it
//! ([`Link::V4`]'s `broadcast`): the interface's broadcast address, or the
//! limited broadcast 255.255.255.255 when a broadcast-capable interface has
//! none; never anything on a loopback or point-to-point interface.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Interfaces left out by default: container and VM bridges, whose peers
/// are this machine's own guests. Shell-style, `*` matches any suffix.
pub const DEFAULT_EXCLUDES: &[&str] = &[
    "docker*", "br-*", "veth*", "virbr*", "vboxnet*", "vmnet*", "cni*", "flannel*",
];

/// One interface as the system lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    pub index: u32,
    pub v4: Vec<V4Addr>,
    /// IPv6 addresses, link-local ones included.
    pub v6: Vec<Ipv6Addr>,
    pub loopback: bool,
    pub up: bool,
    pub multicast: bool,
    /// Broadcast-capable (IFF_BROADCAST): not loopback, not point-to-point.
    pub broadcast: bool,
}

/// One IPv4 address of an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct V4Addr {
    pub addr: Ipv4Addr,
    /// The subnet's broadcast address, when the system has one for it.
    pub broadcast: Option<Ipv4Addr>,
}

impl V4Addr {
    pub fn new(addr: Ipv4Addr) -> Self {
        V4Addr {
            addr,
            broadcast: None,
        }
    }
}

/// One interface in one family, as discovery uses it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Link {
    V4 {
        name: String,
        addr: Ipv4Addr,
        /// The interface index (what a received datagram's packet info
        /// names).
        index: u32,
        /// Where discovery broadcasts on this link; None on a loopback or
        /// point-to-point interface, where it never does.
        broadcast: Option<Ipv4Addr>,
    },
    V6 {
        name: String,
        index: u32,
    },
}

impl Link {
    pub fn name(&self) -> &str {
        match self {
            Link::V4 { name, .. } | Link::V6 { name, .. } => name,
        }
    }

    /// The interface index.
    pub fn index(&self) -> u32 {
        match self {
            Link::V4 { index, .. } | Link::V6 { index, .. } => *index,
        }
    }
}

/// Where discovery broadcasts on interface `i` from its address `a`: the
/// subnet's broadcast address, or 255.255.255.255 when the system gives
/// none (a broadcast-capable interface whose address was set without
/// one); never on loopback or a point-to-point interface.
pub fn broadcast_of(i: &Iface, a: &V4Addr) -> Option<Ipv4Addr> {
    if i.loopback || !i.broadcast || a.addr.is_loopback() {
        return None;
    }
    let directed = a
        .broadcast
        .filter(|b| !b.is_unspecified() && *b != a.addr && !b.is_multicast());
    Some(directed.unwrap_or(Ipv4Addr::BROADCAST))
}

impl std::fmt::Display for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Link::V4 { name, addr, .. } => write!(f, "{name} ({addr})"),
            Link::V6 { name, .. } => write!(f, "{name} (IPv6)"),
        }
    }
}

/// An `--interface` value: an address or an interface name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IfaceSpec {
    Addr(IpAddr),
    Name(String),
}

impl std::str::FromStr for IfaceSpec {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(IfaceSpec::Addr(ip));
        }
        let ok = !s.is_empty()
            && s.len() <= 15
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@:".contains(c));
        if ok {
            Ok(IfaceSpec::Name(s.to_string()))
        } else {
            Err(format!(
                "{s:?} is neither an IP address nor an interface name (see `ip addr`)"
            ))
        }
    }
}

impl std::fmt::Display for IfaceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IfaceSpec::Addr(a) => write!(f, "{a}"),
            IfaceSpec::Name(n) => f.write_str(n),
        }
    }
}

/// Which interfaces discovery uses.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Only these (empty: every suitable interface).
    pub only: Vec<IfaceSpec>,
    /// Name patterns left out, besides [`DEFAULT_EXCLUDES`]; an interface
    /// named in `only` is used even if it matches.
    pub exclude: Vec<String>,
}

impl Selection {
    /// The links to use among `ifaces`.
    pub fn links(&self, ifaces: &[Iface]) -> BTreeSet<Link> {
        let mut out = BTreeSet::new();
        for i in ifaces.iter().filter(|i| i.up) {
            let v4 = |a: &V4Addr| Link::V4 {
                name: i.name.clone(),
                addr: a.addr,
                index: i.index,
                broadcast: broadcast_of(i, a),
            };
            let v6 = || Link::V6 {
                name: i.name.clone(),
                index: i.index,
            };
            if self.only.is_empty() {
                if i.loopback || !i.multicast || self.excluded(&i.name) {
                    continue;
                }
                if let Some(a) = i.v4.first() {
                    out.insert(v4(a));
                }
                if !i.v6.is_empty() {
                    out.insert(v6());
                }
                continue;
            }
            for spec in &self.only {
                match spec {
                    IfaceSpec::Name(n) if *n == i.name => {
                        if let Some(a) = i.v4.first() {
                            out.insert(v4(a));
                        }
                        if !i.v6.is_empty() && i.multicast {
                            out.insert(v6());
                        }
                    }
                    IfaceSpec::Addr(IpAddr::V4(a)) => {
                        if let Some(a) = i.v4.iter().find(|v| v.addr == *a) {
                            out.insert(v4(a));
                        }
                    }
                    IfaceSpec::Addr(IpAddr::V6(a)) if i.v6.contains(a) => {
                        out.insert(v6());
                    }
                    _ => {}
                }
            }
        }
        out
    }

    fn excluded(&self, name: &str) -> bool {
        DEFAULT_EXCLUDES
            .iter()
            .copied()
            .chain(self.exclude.iter().map(String::as_str))
            .any(|p| glob(p, name))
    }

    /// `--interface` values that match no interface (to warn about).
    pub fn unmatched(&self, ifaces: &[Iface]) -> Vec<&IfaceSpec> {
        self.only
            .iter()
            .filter(|spec| {
                !ifaces.iter().any(|i| match spec {
                    IfaceSpec::Name(n) => *n == i.name,
                    IfaceSpec::Addr(IpAddr::V4(a)) => i.v4.iter().any(|v| v.addr == *a),
                    IfaceSpec::Addr(IpAddr::V6(a)) => i.v6.contains(a),
                })
            })
            .collect()
    }
}

/// Shell-style match with `*` only.
fn glob(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match p.split_first() {
            None => n.is_empty(),
            Some((b'*', rest)) => (0..=n.len()).any(|k| go(rest, &n[k..])),
            Some((c, rest)) => n.first() == Some(c) && go(rest, &n[1..]),
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

/// Lists the machine's interfaces (empty if the system will not say).
pub fn list() -> Vec<Iface> {
    let Ok(addrs) = if_addrs::get_if_addrs() else {
        return Vec::new();
    };
    let mut out: Vec<Iface> = Vec::new();
    for a in addrs {
        let idx = match out.iter().position(|i| i.name == a.name) {
            Some(i) => i,
            None => {
                let f = flags(&a, a.is_oper_up());
                out.push(Iface {
                    index: a.index.unwrap_or(0),
                    name: a.name.clone(),
                    v4: Vec::new(),
                    v6: Vec::new(),
                    loopback: a.is_loopback(),
                    up: f.up,
                    multicast: f.multicast,
                    broadcast: f.broadcast,
                });
                out.len() - 1
            }
        };
        match &a.addr {
            if_addrs::IfAddr::V4(v4) => out[idx].v4.push(V4Addr {
                addr: v4.ip,
                broadcast: v4.broadcast,
            }),
            if_addrs::IfAddr::V6(v6) => out[idx].v6.push(v6.ip),
        }
    }
    out
}

/// Lists the interfaces every `period` and publishes the links of
/// `selection` whenever they change, until cancelled.
pub async fn watch_links(
    selection: Selection,
    tx: tokio::sync::watch::Sender<BTreeSet<Link>>,
    period: std::time::Duration,
    cancel: tokio_util::sync::CancellationToken,
) {
    while cancel
        .run_until_cancelled(tokio::time::sleep(period))
        .await
        .is_some()
    {
        let links = selection.links(&list());
        tx.send_if_modified(|old| {
            if *old == links {
                return false;
            }
            let added: Vec<String> = links.difference(old).map(|l| l.to_string()).collect();
            let gone: Vec<String> = old.difference(&links).map(|l| l.to_string()).collect();
            tracing::info!(?added, ?gone, "network interfaces changed");
            *old = links;
            true
        });
    }
}

/// This machine's addresses on `links` (what peers elsewhere may reach).
pub fn addresses(links: &BTreeSet<Link>) -> Vec<IpAddr> {
    let ifaces = list();
    let mut out = Vec::new();
    for l in links {
        match l {
            Link::V4 { addr, .. } => out.push(IpAddr::V4(*addr)),
            Link::V6 { name, .. } => {
                if let Some(i) = ifaces.iter().find(|i| i.name == *name) {
                    out.extend(i.v6.iter().map(|a| IpAddr::V6(*a)));
                }
            }
        }
    }
    out
}

/// The system's flags where it says them ([`crate::platform::link_flags`]),
/// else the operational state, multicast assumed, and broadcast unless the
/// interface is loopback or point-to-point.
fn flags(a: &if_addrs::Interface, oper_up: bool) -> crate::platform::LinkFlags {
    match crate::platform::link_flags(&a.name) {
        Some(f) => crate::platform::LinkFlags {
            up: f.up && oper_up,
            ..f
        },
        None => crate::platform::LinkFlags {
            up: oper_up,
            multicast: true,
            broadcast: !a.is_loopback() && !a.is_p2p,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn iface(name: &str, index: u32, v4: &[&str], v6: bool) -> Iface {
        Iface {
            name: name.into(),
            index,
            v4: v4
                .iter()
                .map(|a| {
                    let addr: Ipv4Addr = a.parse().unwrap();
                    let [x, y, z, _] = addr.octets();
                    // eth0's address has a broadcast address; the others none.
                    let broadcast = (name == "eth0").then(|| Ipv4Addr::new(x, y, z, 255));
                    V4Addr { addr, broadcast }
                })
                .collect(),
            v6: if v6 {
                vec![format!("fe80::{index}").parse().unwrap()]
            } else {
                Vec::new()
            },
            loopback: name == "lo",
            up: true,
            multicast: name != "lo",
            broadcast: name != "lo" && name != "tun0",
        }
    }

    fn machine() -> Vec<Iface> {
        vec![
            iface("lo", 1, &["127.0.0.1"], true),
            iface("eth0", 2, &["10.0.0.2"], true),
            iface("wlan0", 3, &[], true),
            iface("docker0", 4, &["172.17.0.1"], true),
            iface("tun0", 5, &["10.8.0.3"], false),
        ]
    }

    #[test]
    fn by_default_every_real_interface_in_both_families() {
        let links = Selection::default().links(&machine());
        let names: Vec<String> = links.iter().map(|l| l.to_string()).collect();
        assert_eq!(
            names,
            [
                "eth0 (10.0.0.2)",
                "tun0 (10.8.0.3)",
                "eth0 (IPv6)",
                "wlan0 (IPv6)"
            ]
        );
    }

    #[test]
    fn exclusions_and_explicit_choices() {
        let sel = Selection {
            only: vec![],
            exclude: vec!["tun*".into(), "wlan0".into()],
        };
        let links = sel.links(&machine());
        assert!(links.iter().all(|l| l.name() == "eth0"), "{links:?}");

        // Named explicitly, an excluded or loopback interface is used.
        let sel = Selection {
            only: vec!["docker0".parse().unwrap(), "127.0.0.1".parse().unwrap()],
            exclude: vec![],
        };
        let links: Vec<Link> = sel.links(&machine()).into_iter().collect();
        assert_eq!(
            links,
            vec![
                Link::V4 {
                    name: "docker0".into(),
                    addr: "172.17.0.1".parse().unwrap(),
                    index: 4,
                    broadcast: Some(Ipv4Addr::BROADCAST),
                },
                Link::V4 {
                    name: "lo".into(),
                    addr: Ipv4Addr::LOCALHOST,
                    index: 1,
                    broadcast: None,
                },
                Link::V6 {
                    name: "docker0".into(),
                    index: 4
                },
            ]
        );
        assert_eq!(
            sel.unmatched(&machine()).len(),
            0,
            "both match an interface"
        );
        let sel = Selection {
            only: vec!["eth9".parse().unwrap()],
            exclude: vec![],
        };
        assert!(sel.links(&machine()).is_empty());
        assert_eq!(sel.unmatched(&machine()).len(), 1);
    }

    /// The subnet's broadcast address where the system gives one, the
    /// limited one where it does not, and nothing on loopback (even when
    /// named with --interface) or a point-to-point link.
    #[test]
    fn where_each_link_broadcasts() {
        let sel = Selection {
            only: vec![
                "lo".parse().unwrap(),
                "eth0".parse().unwrap(),
                "docker0".parse().unwrap(),
                "tun0".parse().unwrap(),
            ],
            exclude: vec![],
        };
        let by_name: Vec<(String, Option<Ipv4Addr>)> = sel
            .links(&machine())
            .into_iter()
            .filter_map(|l| match l {
                Link::V4 {
                    name, broadcast, ..
                } => Some((name, broadcast)),
                Link::V6 { .. } => None,
            })
            .collect();
        assert_eq!(
            by_name,
            [
                ("docker0".to_string(), Some(Ipv4Addr::BROADCAST)),
                ("eth0".to_string(), Some(Ipv4Addr::new(10, 0, 0, 255))),
                ("lo".to_string(), None),
                ("tun0".to_string(), None),
            ]
        );
        // A loopback address on a broadcast-capable interface: still none.
        let odd = Iface {
            v4: vec![V4Addr::new(Ipv4Addr::LOCALHOST)],
            ..iface("eth1", 9, &[], false)
        };
        assert_eq!(broadcast_of(&odd, &odd.v4[0]), None);
    }

    #[test]
    fn specs_and_globs() {
        assert_eq!(
            "10.0.0.1".parse::<IfaceSpec>(),
            Ok(IfaceSpec::Addr("10.0.0.1".parse().unwrap()))
        );
        assert_eq!(
            "eth0".parse::<IfaceSpec>(),
            Ok(IfaceSpec::Name("eth0".into()))
        );
        assert!("a b".parse::<IfaceSpec>().is_err());
        assert!("".parse::<IfaceSpec>().is_err());
        assert!(glob("docker*", "docker0"));
        assert!(glob("br-*", "br-1a2b"));
        assert!(!glob("br-*", "bridge"));
        assert!(glob("*0", "eth0"));
        assert!(glob("e*h*", "eth0"));
        assert!(!glob("eth0", "eth01"));
        assert!(glob("*", "anything"));
    }
}
