//! Hostile-peer regression tests: dict (the peer table, departures and the
//! memory held for peers' inventories; issue 8, items 2, 3 and 4).
//!
//! The rogue speaks from other loopback addresses (127.0.0.2 and up; the
//! real nodes are on 127.0.0.1), on the test's own multicast group.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lanshare::chunkset::{Bitmap, ChunkSet};
use lanshare::id::{ContentId, NodeId};
use lanshare::identity::Identity;
use lanshare::inventory::Inventory;
use lanshare::manifest::Category;
use lanshare::peer::noise;
use lanshare::swarm::Mode;
use lanshare::wire::InventoryEntry;
use lanshare::wire::datagram::{Announce, Datagram};
use lanshare::wire::frame::{self, InventoryPage, Request, Response};
use socket2::{Domain, Protocol, Socket, Type};

use crate::harness::{Net, Node, wait_until};

fn group(net: &Net) -> SocketAddrV4 {
    net.group.parse().expect("group IP:PORT")
}

/// A UDP socket sending from `src` (port chosen by the OS) into the
/// loopback interface's multicast groups.
fn rogue_udp(src: Ipv4Addr) -> UdpSocket {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    s.set_multicast_if_v4(&Ipv4Addr::LOCALHOST).unwrap();
    s.set_multicast_loop_v4(true).unwrap();
    s.set_multicast_ttl_v4(1).unwrap();
    s.bind(&SocketAddr::from((src, 0)).into())
        .expect("bind a 127.0.0.0/8 address");
    s.into()
}

fn node_id(hex: &str) -> NodeId {
    NodeId(lanshare::id::from_hex(hex).expect("node id hex"))
}

/// The victim's view of the peer called `name`: (id, online).
fn peer_of(victim: &Node, name: &str) -> Option<(NodeId, bool)> {
    victim
        .peers()
        .into_iter()
        .find(|p| p["name"] == name)
        .map(|p| (node_id(p["id"].as_str().unwrap()), p["online"] == true))
}

fn lists(victim: &Node, file: &str) -> bool {
    victim.ls().iter().any(|c| c["name"] == file)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

fn fake_id(i: u32) -> NodeId {
    let mut id = [0xf0u8; 16];
    id[..4].copy_from_slice(&i.to_le_bytes());
    NodeId(id)
}

/// Bug 2: 1,100 announces of made-up ids, each claiming a 300 s interval,
/// from 22 addresses (50 each), fill the peer table before a real node
/// starts. The real node must still be listed, with its files.
#[test]
fn a_flood_of_made_up_peers_does_not_hide_a_real_one() {
    let net = Net::new();
    let victim = net.node("victim", &[]);
    let to = group(&net);
    let rogues: Vec<UdpSocket> = (2..24u8)
        .map(|i| rogue_udp(Ipv4Addr::new(127, 0, 0, i)))
        .collect();
    for i in 0..1100u32 {
        let d = Datagram::Announce(Announce {
            node: fake_id(i),
            name: format!("ghost-{i}"),
            tcp_port: 9,
            interval_ms: 300_000,
            inventory_digest: [0x66; 16],
            contents: 1,
        });
        rogues[i as usize % rogues.len()]
            .send_to(&d.encode(), to)
            .unwrap();
        if i % 20 == 19 {
            // Paced so the victim's socket buffer takes them all.
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert!(
        wait_until(Duration::from_secs(10), || victim.peers().len() >= 256),
        "the flood did not reach the victim"
    );
    std::thread::sleep(Duration::from_millis(500));
    let flooded = victim.peers().len();

    let _real = net.node("real", &[("real-file.txt", b"real data")]);
    let listed = wait_until(Duration::from_secs(15), || {
        peer_of(&victim, "real").is_some_and(|(_, online)| online)
            && lists(&victim, "real-file.txt")
    });
    assert!(
        listed,
        "the victim never listed the real node after a flood of made-up peers \
         ({flooded} peers in its table); peers named real: {:?}",
        peer_of(&victim, "real")
    );
    assert!(
        victim.peers().len() < 1024,
        "the made-up peers still fill the table"
    );
}

/// Weakness 3: a goodbye naming a real peer, sent from another address
/// (unicast and multicast datagrams, and a TCP hello claiming the peer's
/// id followed by `Goodbye`), after announcing the peer's id from there.
/// The victim keeps the peer and its files; the peer's own clean stop
/// still removes it at once.
#[test]
fn a_forged_goodbye_does_not_drop_a_peer() {
    let mut net = Net::new();
    // Long enough that only a goodbye, not expiry, can drop a peer here.
    net.interval = "5".into();
    let victim = net.node("victim", &[]);
    let mut alice = net.node("alice", &[("alice-file.txt", b"hello from alice")]);
    assert!(
        wait_until(Duration::from_secs(15), || lists(&victim, "alice-file.txt")),
        "the victim did not list alice's file"
    );
    let (alice_id, _) = peer_of(&victim, "alice").unwrap();
    let to = group(&net);
    let forger = Ipv4Addr::new(127, 0, 0, 2);

    // Announce alice's id from the forger's address first, so that
    // address becomes one of hers, then say goodbye in her name.
    let announce = Datagram::Announce(Announce {
        node: alice_id,
        name: "alice".into(),
        tcp_port: 9,
        interval_ms: 5000,
        inventory_digest: [0; 16],
        contents: 1,
    })
    .encode();
    let goodbye = Datagram::Goodbye { node: alice_id }.encode();
    let unicast = SocketAddr::from((Ipv4Addr::LOCALHOST, to.port()));
    for _ in 0..3 {
        rogue_udp(forger).send_to(&announce, to).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    // Several nodes share the group port (SO_REUSEPORT): unicast from
    // many source ports reaches each of them.
    for _ in 0..32 {
        let s = rogue_udp(forger);
        s.send_to(&goodbye, unicast).unwrap();
        s.send_to(&goodbye, to).unwrap();
    }
    // The same over TCP: a handshake (which can only prove the forger's
    // own id, whatever name it gives), then goodbye.
    let tcp = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).unwrap();
    tcp.bind(&SocketAddr::from((forger, 0)).into()).unwrap();
    tcp.connect_timeout(&victim.listen.into(), Duration::from_secs(5))
        .unwrap();
    let mut tcp: TcpStream = tcp.into();
    noise::initiate_blocking(&mut tcp, &Identity::generate(), &Mode::Open, "alice").unwrap();
    tcp.write_all(&Request::Goodbye.encode()).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut sink = Vec::new();
    let _ = tcp.read_to_end(&mut sink);

    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        peer_of(&victim, "alice").map(|(_, online)| online),
        Some(true),
        "a forged goodbye made the victim drop alice"
    );
    assert!(
        lists(&victim, "alice-file.txt"),
        "a forged goodbye made the victim drop alice's files"
    );

    // Her own clean stop still counts, at once (well before the 15 s expiry).
    alice.stop();
    assert!(
        wait_until(Duration::from_secs(4), || {
            peer_of(&victim, "alice").is_some_and(|(_, online)| !online)
                && !lists(&victim, "alice-file.txt")
        }),
        "alice's own goodbye did not remove her"
    );
}

/// A rogue TCP server answering hellos as `id` and serving `inv` in pages
/// of about 1 MiB. Counts the pages served.
struct RogueServer {
    addr: SocketAddr,
    pages: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl RogueServer {
    fn start(ip: Ipv4Addr, id: Arc<Identity>, inv: Inventory) -> RogueServer {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let pages = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (pages.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let (inv, p, id) = (inv.clone(), p.clone(), id.clone());
                        std::thread::spawn(move || {
                            let _ = serve(conn, &id, &inv, &p);
                        });
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        RogueServer { addr, pages, stop }
    }
}

impl Drop for RogueServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn read_frame(conn: &mut TcpStream) -> std::io::Result<Request> {
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
    inv: &Inventory,
    pages: &AtomicUsize,
) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(20)))?;
    let hello = noise::server_hello(id, "rogue", inv.digest, inv.entries.len() as u32);
    noise::respond_blocking(&mut conn, id, &Mode::Open, &hello)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    loop {
        let Request::GetInventory { req, after, .. } = read_frame(&mut conn)? else {
            return Ok(());
        };
        let start = after.map_or(0, |a| inv.entries.partition_point(|e| e.id <= a));
        let end = (start + 15).min(inv.entries.len());
        let page = Response::Inventory(InventoryPage {
            req,
            digest: inv.digest,
            base: None,
            entries: inv.entries[start..end].to_vec(),
            removed: Vec::new(),
            more: end < inv.entries.len(),
        });
        conn.write_all(&page.encode())?;
        pages.fetch_add(1, Ordering::Relaxed);
    }
}

/// Weakness 4: a rogue offers 4,000 entries, each with a 64 KiB partial
/// bitmap (the most any entry may carry: it claims a 1 TiB content), about
/// 256 MiB in all. The victim's memory stays bounded (the default budget
/// is 128 MiB) and it still lists a real peer's files.
#[test]
fn a_rogue_inventory_of_huge_bitmaps_does_not_bloat_a_node() {
    const ENTRIES: usize = 4000;
    let rogue = Arc::new(Identity::from_seed([0xee; 32]));
    let rogue_id = rogue.node_id();
    // Growth of the victim's resident memory allowed, in KiB.
    const MAX_GROWTH_KIB: u64 = 200 * 1024;

    let net = Net::new();
    let victim = net.node("victim", &[]);
    let _real = net.node("real", &[("real-file.txt", b"real data")]);
    assert!(
        wait_until(Duration::from_secs(15), || lists(&victim, "real-file.txt")),
        "the victim did not list the real peer's file"
    );
    let pid = victim.pid().unwrap();
    let before = rss_kib(pid);

    let bitmap = Bitmap::from_bytes(vec![0xff; lanshare::manifest::MAX_CHUNKS / 8]);
    let entries: Vec<InventoryEntry> = (0..ENTRIES)
        .map(|i| {
            let mut id = [0x5au8; 32];
            id[..8].copy_from_slice(&(i as u64).to_be_bytes());
            InventoryEntry {
                id: ContentId(id),
                name: format!("bloat-{i}.bin"),
                size: 1 << 40,
                category: Category::Other,
                comment: String::new(),
                chunks: ChunkSet::Partial(bitmap.clone()),
            }
        })
        .collect();
    let inv = Inventory::new(entries);
    let rogue_ip = Ipv4Addr::new(127, 0, 0, 2);
    let server = RogueServer::start(rogue_ip, rogue, inv.clone());
    let announce = Datagram::Announce(Announce {
        node: rogue_id,
        name: "rogue".into(),
        tcp_port: server.addr.port(),
        interval_ms: 60_000,
        inventory_digest: inv.digest,
        contents: ENTRIES as u32,
    })
    .encode();
    rogue_udp(rogue_ip).send_to(&announce, group(&net)).unwrap();

    // Wait for the victims (the real node hears the rogue too) to be done
    // with the rogue: they pulled everything, or stopped asking for pages.
    let total_pages = 2 * ENTRIES.div_ceil(15);
    let mut last = (0, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(40);
    while Instant::now() < deadline {
        let n = server.pages.load(Ordering::Relaxed);
        if n >= total_pages {
            break;
        }
        if n != last.0 {
            last = (n, Instant::now());
        } else if n > 0 && last.1.elapsed() > Duration::from_secs(3) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let served = server.pages.load(Ordering::Relaxed);
    assert!(served > 0, "the victim never pulled the rogue's inventory");
    std::thread::sleep(Duration::from_millis(500));
    let after = rss_kib(pid);
    eprintln!(
        "victim RSS before {} KiB, after {} KiB ({} of {} pages pulled by both nodes)",
        before, after, served, total_pages
    );
    assert!(
        after < before + MAX_GROWTH_KIB,
        "the victim's memory grew from {before} KiB to {after} KiB on a rogue inventory"
    );
    assert!(victim.status().is_object(), "the victim must still answer");
    assert!(
        lists(&victim, "real-file.txt"),
        "the victim no longer lists the real peer's file"
    );
}
