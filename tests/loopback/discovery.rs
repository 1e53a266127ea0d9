//! Discovery at scale on loopback: a swarm of real `lanshare` processes
//! pinned to 127.0.0.1 (`--no-mdns`, a multicast group unique to each
//! test), and the datagrams they send counted from the group itself.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::harness::{Net, Node, NodeSpec, Sniffer, wait_until};

/// Names of the files `node` lists as held by someone else.
fn remote_names(node: &Node) -> BTreeSet<String> {
    node.ls()
        .iter()
        .filter(|v| v["local"] != true)
        .filter_map(|v| v["name"].as_str().map(String::from))
        .collect()
}

/// 30 nodes started together all see each other's content, and the
/// queries and answers of 30 newcomers do not turn into a storm (each
/// node answering each query would be 30 x 30 announcements).
#[test]
fn thirty_nodes_see_each_other_without_a_storm() {
    const N: usize = 30;
    let mut net = Net::new();
    // No periodic announcement during the test: only start-up traffic.
    net.interval = "30".into();
    let sniffer = Sniffer::start(&net.group);
    let specs: Vec<NodeSpec> = (0..N)
        .map(|i| {
            (
                format!("n{i:02}"),
                vec![(
                    format!("n{i:02}.txt"),
                    format!("content of node {i}").into_bytes(),
                )],
            )
        })
        .collect();
    let t0 = Instant::now();
    let nodes = net.start_together(&specs, &[]);
    eprintln!("{N} nodes up after {:?}", t0.elapsed());
    for (i, node) in nodes.iter().enumerate() {
        let want: BTreeSet<String> = (0..N)
            .filter(|j| *j != i)
            .map(|j| format!("n{j:02}.txt"))
            .collect();
        let mut have = BTreeSet::new();
        assert!(
            wait_until(Duration::from_secs(60), || {
                have = remote_names(node);
                have.is_superset(&want)
            }),
            "{} lists {} of the {} other nodes' files after {:?}; missing {:?}\n{}",
            node.name,
            have.intersection(&want).count(),
            N - 1,
            t0.elapsed(),
            want.difference(&have).collect::<Vec<_>>(),
            node.log_text()
        );
    }
    let all_seen = t0.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let c = sniffer.counts();
    let sent: u64 = nodes
        .iter()
        .map(|n| n.status()["discovery_bytes_sent"].as_u64().unwrap())
        .sum();
    eprintln!(
        "every node saw every other after {all_seen:?}; datagrams on the group: {c:?}; \
         sum of discovery_bytes_sent {sent} B"
    );
    assert!(
        c.announces >= N as u64,
        "fewer announcements than nodes: {c:?}"
    );
    assert!(c.queries >= N as u64, "fewer queries than nodes: {c:?}");
    assert!(
        c.announces <= 6 * N as u64,
        "{} announcements from {N} nodes starting together: a storm (bound {})",
        c.announces,
        6 * N
    );
    assert!(
        c.queries <= 2 * N as u64,
        "{} queries from {N} nodes",
        c.queries
    );
    assert_eq!(c.other + c.goodbyes, 0, "{c:?}");
    // The nodes' own byte counters tell the same story: what went out is
    // what the group carried (nothing more is sent while they idle).
    assert!(
        sent <= c.bytes + 2 * 64 * N as u64 && sent * 10 >= c.bytes * 9,
        "the nodes counted {sent} B of discovery datagrams, the group carried {} B",
        c.bytes
    );
}

/// While inventories do not change, announcement traffic is the same for
/// a node sharing 3,000 files as for one sharing a single file, and no
/// inventory is pulled again.
#[test]
fn idle_announcement_traffic_does_not_grow_with_the_inventory() {
    const FILES: usize = 3_000;
    let net = Net::new(); // 0.5 s interval
    let shared = net.home("big").join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    for i in 0..FILES {
        std::fs::write(shared.join(format!("f{i:04}.txt")), format!("file {i}")).unwrap();
    }
    let big = net.node("big", &[]);
    let one = net.node("one", &[("single.txt", b"just one")]);
    let watcher = net.node("eye", &[]);
    assert!(
        wait_until(Duration::from_secs(120), || big.status()["shared_contents"]
            == FILES as u64),
        "big did not index its files: {}",
        big.status()
    );
    assert!(
        wait_until(Duration::from_secs(60), || watcher.ls().len() == FILES + 1),
        "the watcher lists {} contents, expected {}",
        watcher.ls().len(),
        FILES + 1
    );
    let counters = |n: &Node| {
        let s = n.status();
        (
            s["discovery_bytes_sent"].as_u64().unwrap(),
            s["inventory_bytes_served"].as_u64().unwrap(),
        )
    };
    // Let the pulls finish, then watch both for 10 s.
    std::thread::sleep(Duration::from_secs(2));
    let (b0, one0) = (counters(&big), counters(&one));
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_secs(10));
    let (b1, one1) = (counters(&big), counters(&one));
    let secs = t0.elapsed().as_secs_f64();
    let big_rate = (b1.0 - b0.0) as f64 / secs;
    let one_rate = (one1.0 - one0.0) as f64 / secs;
    eprintln!(
        "idle announcement traffic: {FILES} files {big_rate:.1} B/s, 1 file {one_rate:.1} B/s; \
         inventory bytes served meanwhile: {} and {}",
        b1.1 - b0.1,
        one1.1 - one0.1
    );
    assert!(one_rate > 0.0 && big_rate > 0.0, "no announcements at all");
    assert!(
        big_rate <= one_rate * 1.3 + 16.0,
        "a node sharing {FILES} files announces {big_rate:.1} B/s, one sharing 1 file {one_rate:.1} B/s"
    );
    // 0.5 s interval, datagrams well under 200 bytes.
    assert!(big_rate < 500.0, "{big_rate:.1} B/s of announcements");
    assert_eq!(
        b1.1, b0.1,
        "big served its unchanged inventory again while idle"
    );
}

/// Names of the peers `node` lists online.
fn online_peers(node: &Node) -> BTreeSet<String> {
    node.peers()
        .iter()
        .filter(|p| p["online"] == true)
        .filter_map(|p| p["name"].as_str().map(String::from))
        .collect()
}

/// Issue 10: two members of a private swarm (one key) find each other and
/// list each other's files; a node without a key and a node with another
/// key see neither them nor each other. Each member says once, not per
/// datagram, that datagrams from 127.0.0.1 are from another swarm.
#[test]
fn private_swarms_see_their_own_members_only() {
    let net = Net::new(); // 0.5 s interval
    let key = lanshare::swarm::SwarmKey::generate().to_text();
    let other_key = lanshare::swarm::SwarmKey::generate().to_text();
    let a = net.node_with("a", &[("a.txt", b"a's file")], &["--swarm-key", &key]);
    let b = net.node_with("b", &[("b.txt", b"b's file")], &["--swarm-key", &key]);
    let c = net.node("c", &[("c.txt", b"c's file")]);
    let d = net.node_with("d", &[("d.txt", b"d's file")], &["--swarm-key", &other_key]);
    assert!(
        wait_until(Duration::from_secs(15), || remote_names(&a)
            .contains("b.txt")
            && remote_names(&b).contains("a.txt")),
        "the members did not list each other's files: a {:?}, b {:?}\n{}",
        remote_names(&a),
        remote_names(&b),
        a.log_text()
    );
    // Eight intervals: every node heard the others' datagrams many times.
    std::thread::sleep(Duration::from_secs(4));
    let names = |xs: &[&str]| xs.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(online_peers(&a), names(&["b"]), "a's peers");
    assert_eq!(online_peers(&b), names(&["a"]), "b's peers");
    assert_eq!(remote_names(&a), names(&["b.txt"]), "a lists");
    for stranger in [&c, &d] {
        assert!(
            stranger.peers().is_empty() && remote_names(stranger).is_empty(),
            "{} (another swarm) sees peers {:?} and files {:?}",
            stranger.name,
            stranger.peers(),
            remote_names(stranger)
        );
    }
    let status = a.status();
    assert_eq!(status["swarm"], "private", "{status}");
    assert_eq!(c.status()["swarm"], "open");
    let foreign = status["foreign_datagrams"].as_u64().unwrap();
    assert!(
        foreign >= 8,
        "a counted {foreign} foreign datagrams: {status}"
    );
    assert!(c.status()["foreign_datagrams"].as_u64().unwrap() >= 4);
    for member in [&a, &b] {
        let said = member
            .log_text()
            .matches("datagrams from 127.0.0.1 are from another swarm")
            .count();
        assert_eq!(
            said, 1,
            "{} warned {said} times about another swarm for {foreign} foreign datagrams",
            member.name
        );
    }
    // The members' datagrams are signed, and verified.
    assert!(
        a.peers().iter().all(|p| p["verified"] == true),
        "{:?}",
        a.peers()
    );
}
