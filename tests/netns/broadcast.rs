//! IPv4 broadcast beside multicast, on LANs of network namespaces whose
//! firewalls (nftables rules made by each test) drop what the test says:
//! nodes find each other by broadcast alone where multicast is dropped;
//! with nothing dropped, broadcast adds no peer, no pull and no replay,
//! only one datagram per tick and link; `--no-broadcast` sends none (as a
//! capture of the bridge shows) and `--no-multicast` keeps broadcast.
//!
//! Nodes run with their defaults (every interface, IPv4 and IPv6, mDNS on)
//! plus the test's group port; the namespaces hold nothing but `lo` and
//! the veths the test made. Needs root, `ip`, `nft` and `tcpdump`; without
//! them a test prints why it skips and passes.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Node, Topo, die_with_parent, wait_until};

/// Generous deadline for a listing that takes well under a second.
const FIND: Duration = Duration::from_secs(10);
/// Deadline for the nodes of a quiet LAN to settle (everyone pulled).
const SETTLE: Duration = Duration::from_secs(30);

/// A firewall in host `h` dropping discovery multicast both ways: IPv4
/// 224.0.0.0/4 (the group, mDNS), IPv6 mDNS and the test's IPv6 group;
/// neighbour discovery passes. Drops are counted under "multicast".
fn drop_multicast(t: &Topo, h: usize) {
    let rules = |hook: &str| {
        format!(
            "chain {hook} {{ type filter hook {hook} priority 0; policy accept;
                ip daddr 224.0.0.0/4 counter drop comment \"multicast\"
                ip6 daddr {{ ff02::fb, ff02::6c61:6e73 }} counter drop comment \"multicast\"
            }}"
        )
    };
    t.nft(
        h,
        &format!(
            "table inet lanshare_nomcast {{\n{}\n{}\n}}\n",
            rules("input"),
            rules("output")
        ),
    );
}

/// Counts the UDP datagrams host `h` sends (all of them: the group, its
/// broadcasts, mDNS); see [`udp_sent`].
fn count_udp_out(t: &Topo, h: usize) {
    t.nft(
        h,
        "table inet lanshare_udp {
            chain output { type filter hook output priority 0; policy accept;
                meta l4proto udp counter comment \"udp\"
            }
        }\n",
    );
}

fn udp_sent(t: &Topo, h: usize) -> u64 {
    t.nft_packets(h, "lanshare_udp", "udp")
}

/// Hosts `0..n` on one bridge.
fn lan(tools: &[&str], n: usize) -> Option<Topo> {
    let mut t = Topo::new(tools)?;
    let br = t.add_bridge();
    for _ in 0..n {
        let h = t.add_host();
        t.connect(h, br);
    }
    Some(t)
}

/// Multicast is dropped in every host (IPv4 and IPv6, mDNS included): a
/// node started next to another lists its file, and the other lists the
/// newcomer's, by broadcast alone. Three newcomers in turn, each timed.
#[test]
fn broadcast_alone_where_multicast_is_dropped() {
    let Some(t) = lan(&["nft"], 4) else {
        return;
    };
    for h in 0..4 {
        drop_multicast(&t, h);
    }
    let a = t.node(0, "alpha", &[("atlas.pdf", b"alpha's atlas")], &[]);
    let mut times = Vec::new();
    for (h, name) in [(1, "beta"), (2, "gamma"), (3, "delta")] {
        let file = format!("{name}.txt");
        let started = Instant::now();
        let b = t.node(h, name, &[(&file, name.as_bytes())], &[]);
        assert!(
            wait_until(FIND, || b.lists("atlas.pdf", "alpha")),
            "{name} does not list alpha's file with multicast dropped\nls: {:?}\npeers: {:?}\n{}\n{}",
            b.ls(),
            b.peers(),
            b.log_tail(),
            a.log_tail()
        );
        let listed = started.elapsed();
        assert!(
            wait_until(FIND, || a.lists(&file, name)),
            "alpha does not list {name}'s file: {:?}\n{}",
            a.peers(),
            a.log_tail()
        );
        let both = started.elapsed();
        eprintln!(
            "{name} (started next to alpha) lists alpha's file after {listed:?}; alpha lists {name}'s after {both:?}"
        );
        times.push(listed);
        assert_eq!(
            b.found_via("alpha"),
            BTreeSet::from(["broadcast".to_string()]),
            "{:?}",
            b.peers()
        );
        assert!(a.found_via(name).contains("broadcast"), "{:?}", a.peers());
        assert!(b.counter("datagrams_received/broadcast") > 0);
        assert_eq!(b.counter("datagrams_received/multicast4"), 0);
        assert_eq!(b.counter("datagrams_received/multicast6"), 0);
        assert_eq!(b.counter("replayed_datagrams"), 0);
    }
    // The firewalls did drop the nodes' multicast.
    assert!(t.nft_packets(0, "lanshare_nomcast", "multicast") > 0);
    eprintln!("broadcast alone: a new node lists its neighbour's file after {times:?}");
}

/// What one quiet LAN run shows, per node.
#[derive(Debug)]
struct Quiet {
    /// Peers listed by each node (names, with repeats if any).
    peers: Vec<Vec<String>>,
    /// Pulls of node0's inventory by each other node after node0 shared
    /// one more file (one each is right), and the inventory bytes node0
    /// served for them.
    pulls_after_change: Vec<usize>,
    served_after_change: u64,
    /// UDP datagrams each node sent per second while idle.
    rate: Vec<f64>,
    replayed: u64,
    path_duplicates: u64,
    broadcast_heard: u64,
    multicast_heard: u64,
}

/// Starts `n` nodes with `extra` on a fresh LAN, waits until each lists
/// every other's file, then measures `idle` of quiet.
fn quiet_lan(n: usize, extra: &[&str], idle: Duration) -> Option<Quiet> {
    let t = lan(&["nft"], n)?;
    for h in 0..n {
        count_udp_out(&t, h);
    }
    let names: Vec<String> = (0..n).map(|h| format!("node{h}")).collect();
    let nodes: Vec<Node> = (0..n)
        .map(|h| {
            // Distinct contents of one size: inventories of one size.
            let (file, body) = (format!("{}.txt", names[h]), format!("{h:09}"));
            t.node(h, &names[h], &[(&file, body.as_bytes())], extra)
        })
        .collect();
    for node in &nodes {
        for other in names.iter().filter(|o| **o != node.name) {
            assert!(
                wait_until(SETTLE, || node.lists(&format!("{other}.txt"), other)),
                "{} does not list {other}'s file: {:?}\n{}",
                node.name,
                node.peers(),
                node.log_tail()
            );
        }
    }
    // Settled: every pull done, the start's burst over.
    std::thread::sleep(Duration::from_secs(2));
    let before: Vec<u64> = (0..n).map(|h| udp_sent(&t, h)).collect();
    let t0 = Instant::now();
    std::thread::sleep(idle);
    let secs = t0.elapsed().as_secs_f64();
    let rate = (0..n)
        .map(|h| (udp_sent(&t, h) - before[h]) as f64 / secs)
        .collect();
    let (pulls_after_change, served_after_change) = change_node0(&nodes);
    let sum = |path: &str| nodes.iter().map(|n| n.counter(path)).sum::<u64>();
    Some(Quiet {
        peers: nodes
            .iter()
            .map(|n| {
                n.peers()
                    .iter()
                    .filter_map(|p| p["name"].as_str().map(String::from))
                    .collect()
            })
            .collect(),
        pulls_after_change,
        served_after_change,
        rate,
        replayed: sum("replayed_datagrams"),
        path_duplicates: sum("path_duplicate_datagrams"),
        broadcast_heard: sum("datagrams_received/broadcast"),
        multicast_heard: sum("datagrams_received/multicast4"),
    })
}

/// Pulls of node0's inventory `node` logged.
fn pulls_of_node0(node: &Node) -> usize {
    node.log_text()
        .lines()
        .filter(|l| l.contains("pulled inventory peer=node0 "))
        .count()
}

/// node0 shares one more file; once every other node lists it (and a
/// second later, for any late pull), the pulls of node0's inventory each
/// made meanwhile, and the inventory bytes node0 served.
fn change_node0(nodes: &[Node]) -> (Vec<usize>, u64) {
    let before: Vec<usize> = nodes[1..].iter().map(pulls_of_node0).collect();
    let served = nodes[0].counter("inventory_bytes_served");
    std::fs::write(nodes[0].shared().join("later.txt"), b"shared later").unwrap();
    for node in &nodes[1..] {
        assert!(
            wait_until(FIND, || node.lists("later.txt", "node0")),
            "{} does not list node0's new file: {}",
            node.name,
            node.log_tail()
        );
    }
    std::thread::sleep(Duration::from_secs(1));
    let pulls = nodes[1..]
        .iter()
        .zip(before)
        .map(|(n, b)| pulls_of_node0(n) - b)
        .collect();
    (pulls, nodes[0].counter("inventory_bytes_served") - served)
}

/// Nothing blocked: with broadcast on (the default) each node lists each
/// other once, pulls a changed inventory once as with `--no-broadcast`,
/// counts the broadcast copies as path duplicates and never as replays,
/// and sends one more datagram per tick (the broadcast beside the IPv4
/// and IPv6 multicast ones).
#[test]
fn broadcast_beside_multicast_adds_no_peer_no_pull_no_replay() {
    let n = 3;
    let idle = Duration::from_secs(6);
    let Some(off) = quiet_lan(n, &["--no-broadcast"], idle) else {
        return;
    };
    let on = quiet_lan(n, &[], idle).expect("a second LAN");
    eprintln!("--no-broadcast: {off:?}\ndefault: {on:?}");
    for (i, peers) in on.peers.iter().enumerate() {
        let unique: BTreeSet<&String> = peers.iter().collect();
        assert_eq!(
            (peers.len(), unique.len()),
            (n - 1, n - 1),
            "node{i} lists {peers:?}"
        );
    }
    assert_eq!(on.replayed, 0, "broadcast copies counted as replays");
    assert!(on.path_duplicates > 0, "no broadcast copy was ever heard");
    assert!(on.broadcast_heard > 0 && on.multicast_heard > 0);
    assert_eq!(off.broadcast_heard, 0, "--no-broadcast heard broadcasts");
    assert_eq!(
        on.pulls_after_change,
        vec![1; n - 1],
        "pulls of node0 after its change, with broadcast"
    );
    assert_eq!(off.pulls_after_change, vec![1; n - 1]);
    assert_eq!(
        on.served_after_change, off.served_after_change,
        "node0 served more inventory bytes for its change with broadcast than without"
    );
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (r_off, r_on) = (mean(&off.rate), mean(&on.rate));
    eprintln!(
        "idle UDP datagrams per second per node ({n} nodes, 1 s interval, mDNS on): {r_off:.2} with --no-broadcast, {r_on:.2} with broadcast"
    );
    // One tick sends IPv4 and IPv6 multicast, and now a broadcast: at most
    // half as many again (plus the rounding of a short window).
    assert!(
        r_on <= r_off * 1.5 + 1.0,
        "broadcast more than adds one datagram per tick: {r_off:.2}/s -> {r_on:.2}/s"
    );
}

/// A tcpdump of the test's bridge (UDP to the group port), stopped with
/// SIGINT.
struct Capture {
    child: Option<Child>,
    path: PathBuf,
    stderr: PathBuf,
}

impl Capture {
    fn start(t: &Topo, name: &str) -> Capture {
        let path = t.dir().join(format!("{name}.pcap"));
        let stderr = t.dir().join(format!("{name}.tcpdump.stderr"));
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &t.switch_ns, "tcpdump", "-i"])
            .arg(&t.bridges[0])
            .args(["-n", "-U", "--immediate-mode", "-Z", "root", "-w"])
            .arg(&path)
            .args(["udp", "port", &t.group_port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        die_with_parent(&mut cmd);
        let c = Capture {
            child: Some(cmd.spawn().expect("start tcpdump")),
            path,
            stderr,
        };
        assert!(
            wait_until(Duration::from_secs(20), || c.log().contains("listening on")),
            "tcpdump did not start: {}",
            c.log()
        );
        c
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        std::thread::sleep(Duration::from_millis(300));
        unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        if !wait_until(Duration::from_secs(10), || {
            matches!(c.try_wait(), Ok(Some(_)))
        }) {
            let _ = c.kill();
            let _ = c.wait();
            panic!("tcpdump did not stop on SIGINT: {}", self.log());
        }
    }

    /// The captured datagrams matching a tcpdump `filter`, one line each.
    fn matching(&self, filter: &str) -> Vec<String> {
        let out = Command::new("tcpdump")
            .args(["-n", "-r"])
            .arg(&self.path)
            .args(filter.split_whitespace())
            .output()
            .expect("tcpdump -r");
        assert!(
            out.status.success(),
            "tcpdump -r {filter}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect()
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// To a broadcast address: the bridge's subnet 10.200.0.255, or
/// 255.255.255.255 (the last byte of the destination is 255).
const TO_BROADCAST: &str = "ip[19] = 255";

/// `--no-broadcast`: two nodes find each other by multicast and the
/// bridge carries not one datagram to a broadcast address. Then two nodes
/// with `--no-multicast --no-mdns` find each other by broadcast, with not
/// one datagram to the group (each flag turns off its path only).
#[test]
fn no_broadcast_sends_none_and_no_multicast_keeps_it() {
    let Some(t) = lan(&["tcpdump"], 4) else {
        return;
    };
    let group = format!("dst host {}", t.group_ip);
    let mut cap = Capture::start(&t, "no-broadcast");
    {
        let a = t.node(0, "alpha", &[("a.txt", b"a")], &["--no-broadcast"]);
        let b = t.node(1, "beta", &[("b.txt", b"b")], &["--no-broadcast"]);
        assert!(
            wait_until(FIND, || b.lists("a.txt", "alpha")
                && a.lists("b.txt", "beta")),
            "no listing with --no-broadcast: {:?}\n{}",
            b.peers(),
            b.log_tail()
        );
        assert!(!b.found_via("alpha").contains("broadcast"));
        std::thread::sleep(Duration::from_secs(3));
    }
    cap.stop();
    let to_group = cap.matching(&group);
    let broadcasts = cap.matching(TO_BROADCAST);
    eprintln!(
        "--no-broadcast: {} datagrams to the group, {} to a broadcast address",
        to_group.len(),
        broadcasts.len()
    );
    assert!(
        to_group.len() >= 4,
        "the capture missed the group: {to_group:?}"
    );
    assert!(broadcasts.is_empty(), "--no-broadcast sent {broadcasts:#?}");

    let mut cap = Capture::start(&t, "no-multicast");
    let off = ["--no-multicast", "--no-mdns"];
    let c = t.node(2, "gamma", &[("c.txt", b"c")], &off);
    let d = t.node(3, "delta", &[("d.txt", b"d")], &off);
    assert!(
        wait_until(FIND, || d.lists("c.txt", "gamma")
            && c.lists("d.txt", "delta")),
        "no listing by broadcast with --no-multicast: {:?}\n{}",
        d.peers(),
        d.log_tail()
    );
    assert_eq!(
        d.found_via("gamma"),
        BTreeSet::from(["broadcast".to_string()])
    );
    cap.stop();
    let (to_group, broadcasts) = (cap.matching(&group), cap.matching(TO_BROADCAST));
    assert!(!broadcasts.is_empty(), "no broadcast captured");
    assert!(to_group.is_empty(), "--no-multicast sent {to_group:#?}");
}

/// Figures for the closing note, not a check: the idle UDP datagrams per
/// second per node with every path on (multicast, broadcast, mDNS), with
/// LANSHARE_NODES nodes on one bridge (default 10; bounded to 2..=40).
/// `sudo cargo test --release --test netns -- broadcast::idle_rate_figures --ignored --nocapture`
#[test]
#[ignore]
fn idle_rate_figures() {
    let n: usize = std::env::var("LANSHARE_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
        .clamp(2, 40);
    let Some(on) = quiet_lan(n, &[], Duration::from_secs(10)) else {
        return;
    };
    let mean = on.rate.iter().sum::<f64>() / n as f64;
    let max = on.rate.iter().cloned().fold(0.0, f64::max);
    eprintln!(
        "{n} nodes, 1 s interval, all paths on: {mean:.2} UDP datagrams/s per node idle (max {max:.2}); replayed {}, path duplicates {}",
        on.replayed, on.path_duplicates
    );
    assert_eq!(on.replayed, 0);
}
