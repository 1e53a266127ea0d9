//! Peer exchange in network namespaces where no discovery datagram
//! passes: every host's firewall (made by the test) drops IPv4 multicast
//! (224.0.0.0/4), broadcast (the subnet's and 255.255.255.255), and IPv6
//! `ff02::fb` and the test's group, and nodes run with `--no-mdns`. Only
//! unicast TCP is left: one `--peer` must bring the rest of the network,
//! and what a rogue peer tells must never be listed unchecked.
//!
//! Needs root, iproute2 and `nft`; without them each test prints why it
//! skips and passes.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lanshare::id::NodeId;
use lanshare::identity::Identity;
use lanshare::inventory::Inventory;
use lanshare::peer::noise;
use lanshare::swarm::Mode;
use lanshare::wire::frame::{self, InventoryPage, PeerEntry, Request, Response};
use serde_json::Value;

use crate::harness::{Topo, in_netns, wait_until};

/// Deadline for nodes to find each other's content.
const FIND: Duration = Duration::from_secs(60);
/// Every node's TCP port (the default).
const PORT: u16 = 7373;

/// Drops every discovery datagram in and out of host `h`: IPv4
/// multicast and broadcast, IPv6 mDNS and the test's group. Unicast,
/// ARP and IPv6 neighbour discovery pass. Counted by [`dropped`].
fn drop_discovery(t: &Topo, h: usize, subnet_broadcast: Ipv4Addr) {
    let g6 = "ff02::6c61:6e73";
    let rules = |hook: &str| {
        format!(
            "chain {hook} {{ type filter hook {hook} priority 0; policy accept;
                ip daddr 224.0.0.0/4 counter drop comment \"multicast\"
                ip daddr {{ 255.255.255.255, {subnet_broadcast} }} counter drop comment \"broadcast\"
                meta pkttype broadcast counter drop comment \"broadcast\"
                ip6 daddr {{ ff02::fb, {g6} }} counter drop comment \"multicast\"
            }}"
        )
    };
    t.nft(
        h,
        &format!(
            "table inet lanshare_nodisc {{\n{}\n{}\n}}\n",
            rules("input"),
            rules("output")
        ),
    );
}

/// Discovery datagrams host `h`'s firewall dropped so far.
fn dropped(t: &Topo, h: usize) -> u64 {
    t.nft_packets(h, "lanshare_nodisc", "multicast")
        + t.nft_packets(h, "lanshare_nodisc", "broadcast")
}

/// A LAN of `n` hosts on one bridge, none letting discovery through.
fn blocked_lan(n: usize) -> Option<(Topo, Vec<usize>, usize)> {
    let mut t = Topo::new(&["nft"])?;
    let br = t.add_bridge();
    let hosts: Vec<usize> = (0..n).map(|_| t.add_host()).collect();
    let broadcast = Ipv4Addr::new(10, 200, br as u8, 255);
    for &h in &hosts {
        t.connect(h, br);
        drop_discovery(&t, h, broadcast);
    }
    Some((t, hosts, br))
}

/// B and C each started with only `--peer A`, where no discovery
/// datagram passes: they list each other's files through peer exchange,
/// and `peers` says each was found by exchange.
#[test]
fn two_nodes_given_only_a_third_find_each_other_by_exchange() {
    let Some((t, h, br)) = blocked_lan(3) else {
        return;
    };
    let a_addr = format!("{}:{PORT}", Topo::addr(br, h[0]));
    let only_a = ["--no-mdns", "--peer", a_addr.as_str()];
    let a = t.node(h[0], "alpha", &[("a.txt", b"alpha's file")], &["--no-mdns"]);
    let b = t.node(h[1], "beta", &[("b.txt", b"beta's file")], &only_a);
    let started = Instant::now();
    let c = t.node(h[2], "gamma", &[("c.txt", b"gamma's file")], &only_a);

    let both = || b.lists("c.txt", "gamma") && c.lists("b.txt", "beta");
    assert!(
        wait_until(FIND, both),
        "beta and gamma did not list each other's files\nbeta ls {:?}\nbeta peers {:?}\ngamma ls {:?}\ngamma peers {:?}\n{}\n{}\n{}",
        b.ls(),
        b.peers(),
        c.ls(),
        c.peers(),
        a.log_tail(),
        b.log_tail(),
        c.log_tail()
    );
    eprintln!(
        "beta and gamma list each other's files {:?} after gamma started (peer exchange alone)",
        started.elapsed()
    );
    for (node, other) in [(&b, "gamma"), (&c, "beta")] {
        let via = node.found_via(other);
        assert!(
            via.contains("exchange") && !via.contains("multicast"),
            "{} found {other} via {via:?}; expected exchange and no multicast",
            node.name
        );
        assert!(node.counter("hints_verified") >= 1, "{:?}", node.status());
    }
    // `peers` in plain text says it too.
    let text = String::from_utf8_lossy(&b.cli(&["peers"]).stdout).to_string();
    assert!(text.contains("exchange"), "{text}");
    // The firewalls did drop the nodes' discovery datagrams.
    for &x in &h {
        assert!(
            dropped(&t, x) > 0,
            "host {x}'s firewall dropped no discovery datagram: are the rules wrong?"
        );
    }
    assert!(b.lists("a.txt", "alpha") && c.lists("a.txt", "alpha"));
}

/// A rogue peer speaking the protocol, listening on `ip:PORT` inside host
/// namespace `ns` as `id`: it serves an empty inventory and answers every
/// `GetPeers` with `fakes`. Counts the answers it gave; stops on drop.
struct Rogue {
    answers: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Rogue {
    fn start(ns: &str, ip: Ipv4Addr, id: Identity, fakes: Vec<PeerEntry>) -> Rogue {
        let answers = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (n, s) = (answers.clone(), stop.clone());
        let listening = in_netns(ns, move || {
            let listener = TcpListener::bind((ip, PORT)).expect("rogue listens");
            listener.set_nonblocking(true).unwrap();
            let id = Arc::new(id);
            let fakes = Arc::new(fakes);
            std::thread::spawn(move || {
                while !s.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            let (id, fakes, n) = (id.clone(), fakes.clone(), n.clone());
                            std::thread::spawn(move || {
                                let _ = serve(conn, &id, &fakes, &n);
                            });
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(10)),
                    }
                }
            });
        });
        listening.join().expect("rogue thread");
        Rogue { answers, stop }
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn read_request(conn: &mut TcpStream) -> std::io::Result<Request> {
    let mut h = [0u8; frame::HEADER_LEN];
    conn.read_exact(&mut h)?;
    let (kind, len) = frame::parse_header(&h, frame::MAX_REQUEST_FRAME)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let mut body = vec![0; len];
    conn.read_exact(&mut body)?;
    Request::decode(kind, &body).map_err(|e| std::io::Error::other(e.to_string()))
}

fn serve(
    mut conn: TcpStream,
    id: &Identity,
    fakes: &[PeerEntry],
    answers: &AtomicUsize,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(20)))?;
    let inv = Inventory::new(Vec::new());
    let hello = noise::server_hello(id, "rogue", inv.digest, 0);
    noise::respond_blocking(&mut conn, id, &Mode::Open, &hello)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    loop {
        let answer = match read_request(&mut conn)? {
            Request::GetInventory { req, .. } => Response::Inventory(InventoryPage {
                req,
                digest: inv.digest,
                base: None,
                entries: Vec::new(),
                removed: Vec::new(),
                more: false,
            }),
            Request::GetPeers { req, .. } => {
                answers.fetch_add(1, Ordering::Relaxed);
                Response::Peers {
                    req,
                    entries: fakes.to_vec(),
                }
            }
            _ => return Ok(()),
        };
        conn.write_all(&answer.encode())?;
    }
}

/// A rogue peer exchanges fake peers: ids with no node behind them at
/// addresses where nothing listens, one at a real node's address, one at
/// the rogue's own. None is ever listed in `peers` or `ls`; the real node
/// beside it is, and the victim counts the lie it caught.
#[test]
fn fake_peers_from_a_rogue_are_never_listed() {
    let Some((t, h, br)) = blocked_lan(3) else {
        return;
    };
    let (real_ip, rogue_ip) = (Topo::addr(br, h[0]), Topo::addr(br, h[2]));
    let fake = |i: u8| {
        NodeId([
            0xf0 | (i & 0x0f),
            i,
            0xde,
            0xad,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            0,
            i,
        ])
    };
    let mut fakes: Vec<PeerEntry> = (0..40u8)
        .map(|i| PeerEntry {
            id: fake(i),
            // Addresses of nothing on the LAN.
            addrs: vec![SocketAddr::from(([10, 200, br as u8, 100 + i], PORT))],
            age_ms: 10,
        })
        .collect();
    // A real address under a wrong id, and the rogue's own.
    for (i, ip) in [(50u8, real_ip), (51, rogue_ip)] {
        fakes.push(PeerEntry {
            id: fake(i),
            addrs: vec![SocketAddr::from((ip, PORT))],
            age_ms: 0,
        });
    }
    let fake_ids: Vec<String> = fakes.iter().map(|f| f.id.to_hex()).collect();
    let rogue = Rogue::start(t.ns(h[2]), rogue_ip, Identity::from_seed([0x5e; 32]), fakes);

    let real = t.node(h[0], "real", &[("real.txt", b"real data")], &["--no-mdns"]);
    let (real_addr, rogue_addr) = (format!("{real_ip}:{PORT}"), format!("{rogue_ip}:{PORT}"));
    let victim = t.node(
        h[1],
        "victim",
        &[],
        &["--no-mdns", "--peer", &rogue_addr, "--peer", &real_addr],
    );
    // The victim asked the rogue, dialed its hints and caught the wrong id.
    let checked = || {
        rogue.answers.load(Ordering::Relaxed) >= 1
            && victim.counter("hints_rejected") >= 1
            && victim.counter("hints_dialed") >= 10
    };
    assert!(
        wait_until(FIND, checked),
        "the victim did not check the rogue's hints: rogue answered {} times; status {:?}\n{}",
        rogue.answers.load(Ordering::Relaxed),
        victim.status(),
        victim.log_tail()
    );
    assert!(
        wait_until(FIND, || victim.lists("real.txt", "real")),
        "the victim does not list the real node's file: {:?}\n{}\n{}",
        victim.ls(),
        victim.log_tail(),
        real.log_tail()
    );
    // Several intervals more: no fake ever shows up.
    let until = Instant::now() + Duration::from_secs(8);
    while Instant::now() < until {
        let peers = victim.peers();
        let ids: Vec<&str> = peers.iter().filter_map(|p| p["id"].as_str()).collect();
        for f in &fake_ids {
            assert!(
                !ids.contains(&f.as_str()),
                "a fake peer {f} is listed: {peers:?}"
            );
        }
        assert!(
            peers
                .iter()
                .all(|p| p["name"] == "real" || p["name"] == "rogue"),
            "{peers:?}"
        );
        let holders: Vec<Value> = victim
            .ls()
            .iter()
            .flat_map(|v| v["holders"].as_array().cloned().unwrap_or_default())
            .collect();
        assert!(holders.iter().all(|h| h["name"] == "real"), "{holders:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    let status = victim.status();
    eprintln!(
        "victim's peer exchange: {} heard of, {} dialed, {} verified, {} rejected",
        status["hints_received"],
        status["hints_dialed"],
        status["hints_verified"],
        status["hints_rejected"]
    );
    assert_eq!(victim.counter("hints_verified"), 0, "{status:?}");
}
