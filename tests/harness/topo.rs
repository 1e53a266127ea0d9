//! [`Topo`]: any number of bridges, hosts with several links (added,
//! unplugged or deleted while nodes run), IPv6-only links, router hosts,
//! nftables rules per host; its nodes run with lanshare's defaults (every
//! interface, mDNS on) plus a group port unique to the test.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::netns::{have, ip, keep_dir, output, run, run_with_input, sysctl, teardown};
use super::node::{Launch, Node, unique};
use super::{die_with_parent, skipping, wait_until, write_shared};

/// One interface of a host: a veth pair from the host to a bridge.
#[derive(Clone, Debug)]
pub struct TLink {
    pub host: usize,
    pub bridge: usize,
    /// The host's end (inside the host's namespace).
    pub dev: String,
    /// The switch's end (inside the switch namespace, a bridge port).
    pub port: String,
    /// Its IPv4 address (a /24 per bridge); None on an IPv6-only link.
    pub v4: Option<Ipv4Addr>,
    /// False once deleted with [`Topo::remove_link`].
    pub present: bool,
}

/// A network of namespaces: one switch namespace holding any number of
/// bridges, and hosts each with any number of links to them. Bridge `b`
/// is the subnet `10.200.b.0/24`, host `h`'s address on it is
/// `10.200.b.(h+1)` (IPv6 link-local addresses come from the kernel; DAD
/// is off in every host, so they are usable at once). Nodes run with
/// their defaults (every interface, both families, mDNS on, `[::]:7373`)
/// plus a group port unique to the test and whatever the test adds.
///
/// Like [`Lan`], everything is torn down on drop, whether the test passed
/// or not.
pub struct Topo {
    pub dir: Option<tempfile::TempDir>,
    tag: String,
    /// `--group` of every node: an IPv4 group and port unique to the test.
    pub group: String,
    pub group_ip: Ipv4Addr,
    pub group_port: u16,
    /// `--announce-interval` of every node (seconds).
    pub interval: String,
    pub switch_ns: String,
    pub bridges: Vec<String>,
    /// Host namespaces.
    pub hosts: Vec<String>,
    pub links: Vec<TLink>,
    namespaces: Vec<String>,
}

impl Topo {
    /// An empty topology (a switch namespace without bridges), or None
    /// (after printing why) when this machine cannot build one: not root,
    /// no `ip netns`, or one of `tools` (such as "nft", "tc") is missing.
    pub fn new(tools: &[&str]) -> Option<Topo> {
        if unsafe { libc::geteuid() } != 0 {
            skipping("needs root (network namespaces)");
            return None;
        }
        for t in std::iter::once(&"ip").chain(tools) {
            if !have(t) {
                skipping(&format!("needs `{t}`, which is not installed"));
                return None;
            }
        }
        let pid = std::process::id();
        let count = unique();
        let tag = format!("{:06x}{:02x}", pid & 0xff_ffff, count & 0xff);
        let switch_ns = format!("lanshare-{tag}-sw");
        if let Err(e) = run("ip", &["netns", "add", &switch_ns]) {
            skipping(&format!("cannot create a network namespace: {e}"));
            return None;
        }
        let group_ip = Ipv4Addr::new(239, 255, 1 + (pid % 200) as u8, 1 + (count % 250) as u8);
        let group_port = (20_000 + (pid % 2_000) * 10 + count % 10) as u16;
        let topo = Topo {
            dir: Some(tempfile::tempdir().expect("temp dir")),
            tag,
            group: format!("{group_ip}:{group_port}"),
            group_ip,
            group_port,
            interval: "1".into(),
            switch_ns: switch_ns.clone(),
            bridges: Vec::new(),
            hosts: Vec::new(),
            links: Vec::new(),
            namespaces: vec![switch_ns.clone()],
        };
        ip(&format!("-n {switch_ns} link set lo up"));
        // The switch takes no part in IPv6: its ports stay silent.
        sysctl(&switch_ns, "net.ipv6.conf.all.disable_ipv6", "1");
        sysctl(&switch_ns, "net.ipv6.conf.default.disable_ipv6", "1");
        Some(topo)
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("temp dir").path()
    }

    pub fn home(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// Namespace of host `h`.
    pub fn ns(&self, h: usize) -> &str {
        &self.hosts[h]
    }

    /// Adds a bridge (a LAN segment); returns its index.
    pub fn add_bridge(&mut self) -> usize {
        let b = self.bridges.len();
        let br = format!("lb{}{b:x}", self.tag);
        // No IGMP/MLD snooping: the bridge floods multicast to every port.
        ip(&format!(
            "-n {} link add {br} type bridge mcast_snooping 0",
            self.switch_ns
        ));
        ip(&format!(
            "-n {} link set {br} multicast on up",
            self.switch_ns
        ));
        self.bridges.push(br);
        b
    }

    /// Adds a host namespace with only `lo` in it; returns its index.
    pub fn add_host(&mut self) -> usize {
        let h = self.hosts.len();
        let ns = format!("lanshare-{}-h{h}", self.tag);
        ip(&format!("netns add {ns}"));
        self.namespaces.push(ns.clone());
        ip(&format!("-n {ns} link set lo up"));
        // Link-local addresses usable as soon as a link is up.
        sysctl(&ns, "net.ipv6.conf.all.accept_dad", "0");
        sysctl(&ns, "net.ipv6.conf.default.accept_dad", "0");
        self.hosts.push(ns);
        h
    }

    /// The IPv4 address host `h` gets on bridge `b`.
    pub fn addr(b: usize, h: usize) -> Ipv4Addr {
        assert!(b < 250 && h < 250);
        Ipv4Addr::new(10, 200, b as u8, h as u8 + 1)
    }

    /// Connects host `h` to bridge `b` with its IPv4 address (and IPv6
    /// link-local); returns the link's index.
    pub fn connect(&mut self, h: usize, b: usize) -> usize {
        self.connect_with(h, b, Some(Topo::addr(b, h)))
    }

    /// Connects host `h` to bridge `b` with no IPv4 address at all.
    pub fn connect_v6_only(&mut self, h: usize, b: usize) -> usize {
        self.connect_with(h, b, None)
    }

    /// Connects host `h` to bridge `b`, with `v4` (a /24) if given.
    pub fn connect_with(&mut self, h: usize, b: usize, v4: Option<Ipv4Addr>) -> usize {
        let l = self.links.len();
        assert!(l < 256);
        // Not "veth*": that prefix is excluded from discovery by default.
        let dev = format!("lh{}{l:02x}", self.tag);
        let port = format!("lp{}{l:02x}", self.tag);
        let (sw, ns, br) = (&self.switch_ns, &self.hosts[h], &self.bridges[b]);
        // Both ends are created straight inside their namespaces: no link
        // ever exists in the root namespace.
        ip(&format!(
            "-n {sw} link add {port} type veth peer name {dev} netns {ns}"
        ));
        ip(&format!(
            "-n {sw} link set {port} master {br} multicast on up"
        ));
        if let Some(a) = v4 {
            ip(&format!("-n {ns} addr add {a}/24 dev {dev}"));
        }
        ip(&format!("-n {ns} link set {dev} multicast on up"));
        self.links.push(TLink {
            host: h,
            bridge: b,
            dev,
            port,
            v4,
            present: true,
        });
        l
    }

    /// Plugs link `l`'s cable in or pulls it out at the switch (its switch
    /// port goes up or down; the host keeps its interface and addresses,
    /// with no carrier).
    pub fn set_cable(&self, l: usize, plugged: bool) {
        let state = if plugged { "up" } else { "down" };
        ip(&format!(
            "-n {} link set {} {state}",
            self.switch_ns, self.links[l].port
        ));
    }

    /// Deletes link `l` (both ends vanish from their namespaces).
    pub fn remove_link(&mut self, l: usize) {
        let link = &mut self.links[l];
        ip(&format!("-n {} link del {}", self.switch_ns, link.port));
        link.present = false;
    }

    /// The kernel's IPv6 link-local address of link `l` (on the host's
    /// end), once it is usable (not tentative); panics after 10 s.
    pub fn link_local(&self, l: usize) -> std::net::Ipv6Addr {
        let link = &self.links[l];
        let ns = &self.hosts[link.host];
        let mut found = None;
        let ok = wait_until(Duration::from_secs(10), || {
            let out = output(
                "ip",
                &["-n", ns, "-j", "-6", "addr", "show", "dev", &link.dev],
            );
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            found = v
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|i| i["addr_info"].as_array().cloned().unwrap_or_default())
                .find(|a| {
                    a["scope"] == "link"
                        && a["tentative"] != true
                        && a["dadfailed"] != true
                        && a["local"].as_str().is_some()
                })
                .and_then(|a| a["local"].as_str().and_then(|s| s.parse().ok()));
            found.is_some()
        });
        assert!(ok, "no usable link-local address on {} in {ns}", link.dev);
        found.unwrap()
    }

    /// IPv4 addresses configured on link `l` (empty on an IPv6-only one).
    pub fn v4_addrs(&self, l: usize) -> Vec<Ipv4Addr> {
        let link = &self.links[l];
        let out = output(
            "ip",
            &[
                "-n",
                &self.hosts[link.host],
                "-j",
                "-4",
                "addr",
                "show",
                "dev",
                &link.dev,
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v.as_array()
            .into_iter()
            .flatten()
            .flat_map(|i| i["addr_info"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a["local"].as_str().and_then(|s| s.parse().ok()))
            .collect()
    }

    /// Makes host `h` an IPv4 router between its links.
    pub fn forward(&self, h: usize) {
        sysctl(&self.hosts[h], "net.ipv4.ip_forward", "1");
    }

    /// Adds a route on host `h`: `to` (CIDR) via gateway `via`.
    pub fn route(&self, h: usize, to: &str, via: Ipv4Addr) {
        ip(&format!("-n {} route add {to} via {via}", self.hosts[h]));
    }

    /// Shapes link `l`'s egress from its host.
    pub fn shape(&self, l: usize, rate: &str) {
        let link = &self.links[l];
        ip(&format!(
            "netns exec {} tc qdisc add dev {} root tbf rate {rate} burst 32kb latency 400ms",
            self.hosts[link.host], link.dev
        ));
    }

    /// Loads an nftables script (`nft -f -`) into host `h`'s namespace.
    pub fn nft(&self, h: usize, script: &str) {
        if let Err(e) = run_with_input(
            "ip",
            &["netns", "exec", &self.hosts[h], "nft", "-f", "-"],
            script,
        ) {
            panic!("{e}");
        }
    }

    /// Packets counted so far by the nftables rules of table `inet TABLE`
    /// in host `h` whose comment is `comment`.
    pub fn nft_packets(&self, h: usize, table: &str, comment: &str) -> u64 {
        let out = output(
            "ip",
            &[
                "netns",
                "exec",
                &self.hosts[h],
                "nft",
                "list",
                "table",
                "inet",
                table,
            ],
        );
        let tag = format!("comment \"{comment}\"");
        out.lines()
            .filter(|l| l.contains(&tag))
            .map(|l| {
                let n = l
                    .split("packets ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|n| n.parse::<u64>().ok());
                n.unwrap_or_else(|| panic!("no packet counter in nft rule {l:?}"))
            })
            .sum()
    }

    /// A firewall in host `h` that drops the test's discovery datagrams
    /// (UDP to the group port: to the IPv4 group, the IPv6 group
    /// ff02::6c61:6e73, and the broadcasts beside them, to x.x.x.255 of the
    /// /24 bridges or 255.255.255.255), both ways.
    /// [`Topo::dropped_group_packets`] counts the drops.
    pub fn drop_group(&self, h: usize) {
        let (g4, port) = (self.group_ip, self.group_port);
        let g6 = "ff02::6c61:6e73";
        let rules = |hook: &str| {
            format!(
                "chain {hook} {{ type filter hook {hook} priority 0; policy accept;
                    ip daddr {g4} udp dport {port} counter drop comment \"group\"
                    ip6 daddr {g6} udp dport {port} counter drop comment \"group\"
                    ip daddr & 0.0.0.255 == 0.0.0.255 udp dport {port} counter drop comment \"group\"
                }}"
            )
        };
        self.nft(
            h,
            &format!(
                "table inet lanshare_drop {{\n{}\n{}\n}}\n",
                rules("input"),
                rules("output")
            ),
        );
    }

    /// Packets the [`Topo::drop_group`] firewall of host `h` dropped.
    pub fn dropped_group_packets(&self, h: usize) -> u64 {
        self.nft_packets(h, "lanshare_drop", "group")
    }

    /// Counts (and lets through) mDNS packets (UDP port 5353) in and out
    /// of host `h`; see [`Topo::mdns_packets`].
    pub fn count_mdns(&self, h: usize) {
        self.nft(
            h,
            "table inet lanshare_count {
                chain input { type filter hook input priority 0; policy accept;
                    udp dport 5353 counter comment \"mdns\"
                    udp sport 5353 counter comment \"mdns\"
                }
                chain output { type filter hook output priority 0; policy accept;
                    udp dport 5353 counter comment \"mdns\"
                    udp sport 5353 counter comment \"mdns\"
                }
            }\n",
        );
    }

    pub fn mdns_packets(&self, h: usize) -> u64 {
        self.nft_packets(h, "lanshare_count", "mdns")
    }

    /// Writes `files` into NAME's shared/ and starts its node on host `h`
    /// with the defaults plus `extra`.
    pub fn node(&self, h: usize, name: &str, files: &[(&str, &[u8])], extra: &[&str]) -> Node {
        write_shared(&self.home(name), files);
        self.start(h, name, extra)
    }

    /// Starts (or restarts) node NAME on host `h`: `lanshare up` with its
    /// defaults except a group unique to the test, the test's announce
    /// interval, a 0.2 s scan interval, and `extra`.
    pub fn start(&self, h: usize, name: &str, extra: &[&str]) -> Node {
        let mut args: Vec<String> = vec![
            "--group".into(),
            self.group.clone(),
            "--announce-interval".into(),
            self.interval.clone(),
            "--scan-interval".into(),
            "0.2".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let v4 = self
            .links
            .iter()
            .filter(|l| l.host == h && l.present)
            .find_map(|l| l.v4);
        let home = self.home(name);
        Launch {
            ns: Some(&self.hosts[h]),
            home: &home,
            name,
            args,
            addr: v4,
        }
        .start()
    }

    /// Starts a command inside host `h`'s namespace (killed with the test).
    pub fn spawn(&self, h: usize, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.hosts[h], program])
            .args(args);
        die_with_parent(&mut cmd);
        cmd
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        let ports: Vec<&str> = self
            .links
            .iter()
            .filter(|l| l.present)
            .map(|l| l.port.as_str())
            .collect();
        let bridges: Vec<&str> = self.bridges.iter().map(String::as_str).collect();
        teardown(&self.switch_ns, &ports, &bridges, &self.namespaces);
        keep_dir(&mut self.dir);
    }
}
