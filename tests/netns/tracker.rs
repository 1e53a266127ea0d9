//! The tracker across a router, in network namespaces: two subnets joined
//! by a router namespace that forwards unicast but not multicast (TTL 1,
//! link-local mDNS), the tracker on the router, nodes on both sides.
//! Skipped with a message when not root or without iproute2.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::harness::{BIN, Node, Topo, in_netns, kill_child, uploaded_bytes};
use crate::harness::{data, wait_until};

const MIB: usize = 1 << 20;
const TRACKER_PORT: u16 = 7374;

/// A `lanshare tracker` process in a namespace, killed (by PID) on drop.
struct Tracker {
    child: Option<Child>,
}

impl Tracker {
    /// A tracker with a 1 s heartbeat (nodes go offline after 4 s).
    fn start(t: &Topo, h: usize, db: &std::path::Path) -> Tracker {
        Self::start_with(t, h, db, &["--heartbeat", "1", "--offline-after", "4"])
    }

    /// A tracker on host `h` with `flags` added (its heartbeat among them).
    fn start_with(t: &Topo, h: usize, db: &std::path::Path, flags: &[&str]) -> Tracker {
        let listen = format!("0.0.0.0:{TRACKER_PORT}");
        let db = db.to_str().unwrap();
        let mut args = vec!["tracker", "--listen", &listen, "--db", db];
        args.extend_from_slice(flags);
        let mut cmd = t.spawn(h, BIN, &args);
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = cmd.spawn().expect("start lanshare tracker");
        // Wait for the banner: the tracker listens once it is printed.
        let mut out = child.stdout.take().unwrap();
        let mut banner = Vec::new();
        let mut byte = [0u8; 1];
        while out.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
            banner.push(byte[0]);
        }
        assert!(
            String::from_utf8_lossy(&banner).contains("listening on"),
            "tracker did not start: {:?}",
            String::from_utf8_lossy(&banner)
        );
        std::thread::spawn(move || std::io::copy(&mut out, &mut std::io::sink()));
        Tracker { child: Some(child) }
    }

    fn kill(&mut self) {
        kill_child(&mut self.child);
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Sends one raw HTTP request from inside namespace `ns`; returns the
/// status code and body.
fn http(ns: &str, addr: SocketAddr, request: String) -> (u16, String) {
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut resp = String::new();
        let _ = s.read_to_string(&mut resp);
        status_and_body(&resp)
    })
    .join()
    .expect("http thread")
}

fn get(ns: &str, addr: SocketAddr, path: &str) -> (u16, String) {
    http(
        ns,
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: tracker\r\nConnection: close\r\n\r\n"),
    )
}

fn post(ns: &str, addr: SocketAddr, path: &str, body: &str) -> (u16, String) {
    http(
        ns,
        addr,
        format!(
            "POST {path} HTTP/1.1\r\nHost: tracker\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
}

/// Names of the peers the tracker lists as online.
fn tracker_peers(ns: &str, addr: SocketAddr) -> Vec<String> {
    let (code, body) = get(ns, addr, "/v1/peers");
    if code != 200 {
        return Vec::new();
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let mut names: Vec<String> = v["peers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str().map(String::from))
        .collect();
    names.sort();
    names
}

fn found_via(node: &Node, name: &str) -> Vec<String> {
    node.peers()
        .into_iter()
        .find(|p| p["name"] == name && p["online"] == true)
        .map(|p| {
            p["found_via"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| v.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn lists(node: &Node, file: &str, holders: u64) -> bool {
    node.ls().iter().any(|c| {
        c["name"] == file
            && c["complete"].as_u64().unwrap_or(0) + c["partial"].as_u64().unwrap_or(0) >= holders
    })
}

/// Two subnets, 10.200.0.0/24 and 10.200.1.0/24, joined by host `router`
/// (.254 on both) that forwards IPv4; returns (topo, [a1, a2, b1], router).
fn routed() -> Option<(Topo, [usize; 3], usize)> {
    let mut t = Topo::new(&["tc"])?;
    let (b0, b1) = (t.add_bridge(), t.add_bridge());
    let (a1, a2, bh, router) = (t.add_host(), t.add_host(), t.add_host(), t.add_host());
    t.connect(a1, b0);
    t.connect(a2, b0);
    t.connect(bh, b1);
    let gw0 = Ipv4Addr::new(10, 200, b0 as u8, 254);
    let gw1 = Ipv4Addr::new(10, 200, b1 as u8, 254);
    t.connect_with(router, b0, Some(gw0));
    t.connect_with(router, b1, Some(gw1));
    t.forward(router);
    for h in [a1, a2] {
        t.route(h, &format!("10.200.{b1}.0/24"), gw0);
    }
    t.route(bh, &format!("10.200.{b0}.0/24"), gw1);
    Some((t, [a1, a2, bh], router))
}

/// Holders on both sides of a router, found through the tracker; a fetch
/// takes chunks from both. Then the tracker is killed: restarted on its
/// database, and again on an empty one, the nodes (never restarted)
/// register again and what they share keeps flowing across the router.
#[test]
fn fetch_across_a_router_swarms_and_nodes_survive_tracker_restarts() {
    let Some((t, [a1, a2, bh], router)) = routed() else {
        return;
    };
    let db = t.dir().join("tracker.db");
    let mut tracker = Tracker::start(&t, router, &db);
    let url0 = format!("http://10.200.0.254:{TRACKER_PORT}");
    let url1 = format!("http://10.200.1.254:{TRACKER_PORT}");
    let api: SocketAddr = format!("10.200.0.254:{TRACKER_PORT}").parse().unwrap();

    let content = data(24 * MIB + 5, 31);
    let near = t.node(
        a1,
        "near",
        &[("movie.mkv", &content)],
        &["--tracker", &url0, "--no-mdns"],
    );
    let far = t.node(
        bh,
        "far",
        &[("movie.mkv", &content)],
        &["--tracker", &url1, "--no-mdns"],
    );
    let fetcher = t.node(a2, "fetcher", &[], &["--tracker", &url0, "--no-mdns"]);
    // Both holders are slow, so a fetch needs both to go fast: each one's
    // uploads must be a real share of the file.
    t.shape(0, "60mbit");
    t.shape(2, "60mbit");

    assert!(
        wait_until(Duration::from_secs(30), || lists(&fetcher, "movie.mkv", 2)),
        "fetcher does not see both holders: {:?}\n{}",
        fetcher.ls(),
        fetcher.log_tail()
    );
    // The far holder came through the tracker (and maybe peer exchange
    // through near), never multicast (it stops at the router); the near
    // one at least by multicast.
    let via = found_via(&fetcher, "far");
    assert!(
        via.contains(&"tracker".to_string()) && !via.contains(&"multicast".to_string()),
        "{:?}",
        fetcher.peers()
    );
    assert!(found_via(&fetcher, "near").contains(&"multicast".to_string()));
    assert!(
        wait_until(Duration::from_secs(10), || tracker_peers(t.ns(a2), api)
            == vec!["far", "fetcher", "near"]),
        "the tracker does not list all three: {:?}",
        tracker_peers(t.ns(a2), api)
    );

    let out = fetcher.fetch_ok("movie", Duration::from_secs(120));
    assert!(out.contains("verified"), "{out}");
    let got = std::fs::read(fetcher.downloads().join("movie.mkv")).unwrap();
    assert!(got == content, "downloaded file differs");
    let (from_near, from_far) = (
        uploaded_bytes(&near.upload_log()),
        uploaded_bytes(&far.upload_log()),
    );
    eprintln!("near sent {from_near} bytes, far sent {from_far}");
    assert!(
        from_near >= 2 * MIB as u64 && from_far >= 2 * MIB as u64,
        "not a swarm across the router: near sent {from_near}, far sent {from_far}"
    );

    // Killed and restarted on the same database: registrations survive,
    // heartbeats go on.
    tracker.kill();
    std::thread::sleep(Duration::from_secs(2));
    let mut tracker = Tracker::start(&t, router, &db);
    assert!(
        wait_until(Duration::from_secs(20), || tracker_peers(t.ns(a2), api)
            == vec!["far", "fetcher", "near"]),
        "after a restart: {:?}",
        tracker_peers(t.ns(a2), api)
    );

    // Killed and restarted with nothing: the nodes register again by
    // themselves, and a file shared after that crosses the router.
    tracker.kill();
    std::fs::remove_file(&db).unwrap();
    let _ = std::fs::remove_file(db.with_extension("db-wal"));
    let _ = std::fs::remove_file(db.with_extension("db-shm"));
    let _tracker = Tracker::start(&t, router, &db);
    assert!(
        wait_until(Duration::from_secs(30), || tracker_peers(t.ns(a2), api)
            == vec!["far", "fetcher", "near"]),
        "nodes did not register again with a fresh tracker: {:?}\n{}",
        tracker_peers(t.ns(a2), api),
        far.log_tail()
    );
    std::fs::write(far.shared().join("after.txt"), b"shared after the restart").unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || lists(&fetcher, "after.txt", 1)),
        "a file shared after the restart did not cross the router: {:?}",
        fetcher.ls()
    );
    // The tracker hears of it at the node's next announce (at most one a
    // second), which may come after the fetcher's own probe of far.
    let mut last = (0, String::new());
    assert!(
        wait_until(Duration::from_secs(10), || {
            last = get(t.ns(a2), api, "/v1/search?q=after");
            last.0 == 200 && last.1.contains("after.txt")
        }),
        "the tracker's search does not offer the new file: {last:?}"
    );
}

/// A node stopped cleanly deregisters: the tracker no longer offers its
/// content, and a node across the router sees it go at its next poll, not
/// after three intervals.
#[test]
fn clean_stop_deregisters_and_the_other_side_drops_the_peer() {
    let Some((t, [a1, _a2, bh], router)) = routed() else {
        return;
    };
    let db = t.dir().join("tracker.db");
    let _tracker = Tracker::start(&t, router, &db);
    let url0 = format!("http://10.200.0.254:{TRACKER_PORT}");
    let url1 = format!("http://10.200.1.254:{TRACKER_PORT}");
    let api: SocketAddr = format!("10.200.1.254:{TRACKER_PORT}").parse().unwrap();
    let mut leaving = t.node(
        a1,
        "leaving",
        &[("notes.txt", b"n")],
        &["--tracker", &url0, "--no-mdns"],
    );
    let watcher = t.node(bh, "watcher", &[], &["--tracker", &url1, "--no-mdns"]);
    assert!(
        wait_until(Duration::from_secs(30), || lists(&watcher, "notes.txt", 1)),
        "{:?}",
        watcher.ls()
    );
    leaving.stop();
    assert!(
        // The tracker's heartbeat is 1 s: gone at the next poll, well
        // before three missed intervals (3.5 s) would expire it.
        wait_until(Duration::from_millis(2500), || !lists(
            &watcher,
            "notes.txt",
            1
        )),
        "still offered after a clean stop: {:?}",
        watcher.peers()
    );
    let (code, body) = get(t.ns(bh), api, "/v1/search?q=notes");
    assert_eq!(code, 200);
    assert!(!body.contains("notes.txt"), "{body}");
}

/// Malformed requests sent from across the router get a 4xx with a
/// message, and the tracker keeps serving.
#[test]
fn malformed_requests_across_the_router() {
    let Some((t, [a1, _a2, bh], router)) = routed() else {
        return;
    };
    let db = t.dir().join("tracker.db");
    let _tracker = Tracker::start(&t, router, &db);
    let api: SocketAddr = format!("10.200.1.254:{TRACKER_PORT}").parse().unwrap();
    let ns = t.ns(bh).to_string();
    for (path, body) in [
        ("/v1/nodes", "{not json"),
        ("/v1/nodes", r#"{"id": 5}"#),
        ("/v1/nodes", r#"{"id":"zz","name":"x","port":1,"addrs":[]}"#),
        (
            "/v1/nodes",
            "{\"id\":\"00112233445566778899aabbccddeeff\",\"name\":\"bad\\u001b[2J\",\"port\":7373,\"addrs\":[]}",
        ),
        ("/v1/nodes/00112233445566778899aabbccddeeff/heartbeat", "{}"),
    ] {
        let (code, resp) = post(&ns, api, path, body);
        assert!(
            (400..500).contains(&code),
            "{path} {body:?} -> {code} {resp}"
        );
        assert!(resp.contains("error"), "{path} {body:?} -> {resp}");
    }
    let (code, _) = get(&ns, api, "/v1/search?category=films");
    assert!((400..500).contains(&code), "bad category -> {code}");
    // Still serving, from either side.
    assert_eq!(get(&ns, api, "/v1/health").0, 200);
    let api0: SocketAddr = format!("10.200.0.254:{TRACKER_PORT}").parse().unwrap();
    assert_eq!(get(t.ns(a1), api0, "/v1/health").0, 200);
}

/// Issue 10: two members of a private swarm on two subnets, multicast and
/// mDNS off, find each other only through the tracker and fetch from each
/// other; the tracker's answers and its database hold no node name, no
/// file name and no real node id (raw or hex): only addresses, pseudonyms
/// and the swarm's tag. Open-swarm queries do not list them.
#[test]
fn a_private_swarm_meets_through_a_tracker_that_learns_only_addresses_and_a_tag() {
    let Some((t, [a1, _a2, bh], router)) = routed() else {
        return;
    };
    let db = t.dir().join("tracker.db");
    let mut tracker = Tracker::start(&t, router, &db);
    let url0 = format!("http://10.200.0.254:{TRACKER_PORT}");
    let url1 = format!("http://10.200.1.254:{TRACKER_PORT}");
    let api: SocketAddr = format!("10.200.0.254:{TRACKER_PORT}").parse().unwrap();
    let key = lanshare::swarm::SwarmKey::generate();
    let tag = lanshare::id::to_hex(&key.derive().tracker_tag);
    let key = key.to_text();
    let private = |url: &str| -> Vec<String> {
        [
            "--tracker",
            url,
            "--no-mdns",
            "--no-multicast",
            "--swarm-key",
            &key,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let args0 = private(&url0);
    let args1 = private(&url1);
    let plans = data(3 * MIB + 7, 41);
    let alpha = t.node(
        a1,
        "alphasecretname",
        &[("privateplans.bin", &plans)],
        &args0.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let beta = t.node(
        bh,
        "betasecretname",
        &[("betanotes.txt", b"beta's notes")],
        &args1.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert!(
        wait_until(Duration::from_secs(60), || lists(
            &alpha,
            "betanotes.txt",
            1
        ) && lists(
            &beta,
            "privateplans.bin",
            1
        )),
        "the members did not find each other through the tracker:\nalpha {:?}\n{}\nbeta {:?}\n{}",
        alpha.peers(),
        alpha.log_tail(),
        beta.peers(),
        beta.log_tail()
    );
    assert_eq!(found_via(&beta, "alphasecretname"), vec!["tracker"]);
    let out = beta.fetch_ok("privateplans", Duration::from_secs(60));
    assert!(out.contains("verified"), "{out}");
    assert!(std::fs::read(beta.downloads().join("privateplans.bin")).unwrap() == plans);

    // What the tracker shows: nothing to open-swarm queries, two nameless
    // pseudonyms under the tag, no content.
    let ns = t.ns(a1).to_string();
    assert_eq!(tracker_peers(&ns, api), Vec::<String>::new());
    let (code, tagged) = get(&ns, api, &format!("/v1/peers?swarm={tag}"));
    assert_eq!(code, 200, "{tagged}");
    let v: serde_json::Value = serde_json::from_str(&tagged).unwrap();
    let listed = v["peers"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "{tagged}");
    assert!(listed.iter().all(|p| p["name"] == ""), "{tagged}");
    let (_, search) = get(&ns, api, "/v1/search?limit=1000");
    let (_, open) = get(&ns, api, "/v1/peers");
    let (_, stats) = get(&ns, api, "/v1/stats");
    tracker.kill();
    let mut stored = Vec::new();
    for suffix in ["", "-wal"] {
        let mut p = db.clone().into_os_string();
        p.push(suffix);
        stored.extend(std::fs::read(&p).unwrap_or_default());
    }
    let answers = format!("{tagged}\n{search}\n{open}\n{stats}");
    let mut secrets: Vec<Vec<u8>> = [
        "alphasecretname",
        "betasecretname",
        "privateplans",
        "betanotes",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    for node in [&alpha, &beta] {
        let hex = std::fs::read_to_string(node.home.join(".lanshare/node_id")).unwrap();
        let hex = hex.trim().to_string();
        let raw = lanshare::id::from_hex::<16>(&hex).expect("a node id");
        secrets.push(hex.into_bytes());
        secrets.push(raw.to_vec());
    }
    let contains = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).any(|w| w == needle);
    for s in &secrets {
        let shown = String::from_utf8_lossy(s);
        assert!(
            !contains(answers.as_bytes(), s),
            "the tracker's answers hold {shown:?}:\n{answers}"
        );
        assert!(
            !contains(&stored, s),
            "the tracker's database holds {shown:?}"
        );
    }
    assert!(
        contains(&stored, &lanshare::id::from_hex::<16>(&tag).unwrap()),
        "the tag is stored"
    );
}

/// Issue 14: with a 30 s heartbeat, a holder that starts on one side is
/// listed on the other side through the tracker within 5 s: the other
/// node's long poll (`GET /v1/watch`) answers when the holder announces,
/// not at its next heartbeat. (Peer exchange may also bring the holder;
/// the tracker must be among the ways it was found by then.) Then a file
/// the holder starts sharing is listed within 5 s too: the tracker's word
/// that the holder changed makes the node ask the holder at once.
#[test]
fn a_new_holder_across_the_router_is_listed_long_before_the_next_heartbeat() {
    let Some((t, [a1, _a2, bh], router)) = routed() else {
        return;
    };
    let db = t.dir().join("tracker.db");
    let heartbeat = ["--heartbeat", "30", "--offline-after", "90"];
    let _tracker = Tracker::start_with(&t, router, &db, &heartbeat);
    let url0 = format!("http://10.200.0.254:{TRACKER_PORT}");
    let url1 = format!("http://10.200.1.254:{TRACKER_PORT}");
    let api: SocketAddr = format!("10.200.1.254:{TRACKER_PORT}").parse().unwrap();
    let watcher = t.node(bh, "watcher", &[], &["--tracker", &url1, "--no-mdns"]);
    assert!(
        wait_until(Duration::from_secs(20), || tracker_peers(t.ns(bh), api)
            == vec!["watcher"]),
        "the watcher did not register: {:?}",
        tracker_peers(t.ns(bh), api)
    );
    // Its first heartbeat and poll came with the registration: the next
    // one is 30 s away.
    let holder = t.node(
        a1,
        "holder",
        &[("fresh.txt", b"new on the other side")],
        &["--tracker", &url0, "--no-mdns"],
    );
    let started = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || lists(&watcher, "fresh.txt", 1)
            && found_via(&watcher, "holder").contains(&"tracker".to_string())),
        "not listed through the tracker within 5 s (heartbeat 30 s): ls {:?}\npeers {:?}\n{}",
        watcher.ls(),
        watcher.peers(),
        watcher.log_tail()
    );
    eprintln!(
        "listed across the router {:.2} s after the holder started",
        started.elapsed().as_secs_f64()
    );
    std::fs::write(holder.shared().join("second.txt"), b"and one more").unwrap();
    let started = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || lists(&watcher, "second.txt", 1)),
        "a new file of a known holder not listed within 5 s (heartbeat 30 s): ls {:?}\n{}",
        watcher.ls(),
        watcher.log_tail()
    );
    eprintln!(
        "its new file listed across the router {:.2} s after it was written",
        started.elapsed().as_secs_f64()
    );
}

/// A watch sent from inside namespace `ns`, left waiting: the stream
/// to read its answer from later (or to drop, which ends it).
fn open_watch(ns: &str, addr: SocketAddr, query: &str) -> TcpStream {
    let request =
        format!("GET /v1/watch?{query} HTTP/1.1\r\nHost: tracker\r\nConnection: close\r\n\r\n");
    in_netns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
        s.write_all(request.as_bytes()).unwrap();
        s
    })
    .join()
    .expect("watch thread")
}

/// Status and body of a watch's answer, waiting at most `limit` for it
/// (status 0 when none came).
fn watch_answer(mut s: TcpStream, limit: Duration) -> (u16, String) {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    status_and_body(&resp)
}

/// The status code (0 when there is none) and the body of an HTTP answer.
fn status_and_body(resp: &str) -> (u16, String) {
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

fn stats_watchers(ns: &str, api: SocketAddr) -> u64 {
    let (_, body) = get(ns, api, "/v1/stats");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    v["watchers"].as_u64().unwrap_or(u64::MAX)
}

/// A flood of long polls from one address is held to its quota (429 at
/// once beyond it), the tracker's total is held too (503), others are
/// still served meanwhile, a client that goes away frees its place at
/// once, and a change answers the watches still waiting.
#[test]
fn a_flood_of_watches_is_capped_and_others_are_still_served() {
    let Some((t, [a1, a2, bh], router)) = routed() else {
        return;
    };
    let db = t.dir().join("tracker.db");
    let flags = [
        "--heartbeat",
        "1",
        "--offline-after",
        "4",
        "--max-watchers",
        "6",
        "--max-watchers-per-address",
        "4",
    ];
    let _tracker = Tracker::start_with(&t, router, &db, &flags);
    let url0 = format!("http://10.200.0.254:{TRACKER_PORT}");
    let api0: SocketAddr = format!("10.200.0.254:{TRACKER_PORT}").parse().unwrap();
    let api1: SocketAddr = format!("10.200.1.254:{TRACKER_PORT}").parse().unwrap();
    // One node comes and goes, so the list has a sequence number to
    // watch from and no node of its own watching.
    let mut passing = t.node(a2, "passing", &[], &["--tracker", &url0, "--no-mdns"]);
    assert!(wait_until(Duration::from_secs(20), || tracker_peers(
        t.ns(a1),
        api0
    ) == vec!["passing"]));
    passing.stop();
    assert!(wait_until(Duration::from_secs(10), || tracker_peers(
        t.ns(a1),
        api0
    )
    .is_empty()));
    let (code, body) = get(t.ns(a1), api0, "/v1/peers");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let query = format!(
        "since={}&epoch={}&wait=20",
        v["seq"].as_u64().unwrap(),
        v["epoch"].as_str().unwrap()
    );
    assert_eq!(stats_watchers(t.ns(bh), api1), 0);

    // The flood: four wait, the fifth from the same address gets 429 at once.
    let flood: Vec<TcpStream> = (0..4).map(|_| open_watch(t.ns(a1), api0, &query)).collect();
    assert!(
        wait_until(Duration::from_secs(5), || stats_watchers(t.ns(bh), api1)
            == 4),
        "watchers: {}",
        stats_watchers(t.ns(bh), api1)
    );
    let (code, body) = watch_answer(open_watch(t.ns(a1), api0, &query), Duration::from_secs(5));
    assert_eq!(code, 429, "a fifth watch from one address: {body}");
    // Another address is served meanwhile: a short watch ends unchanged,
    // and the other routes answer.
    let (code, body) = watch_answer(
        open_watch(t.ns(bh), api1, &query.replace("wait=20", "wait=0.5")),
        Duration::from_secs(5),
    );
    assert!(
        code == 200 && body.contains("\"changed\":false"),
        "{code} {body}"
    );
    assert_eq!(get(t.ns(bh), api1, "/v1/health").0, 200);
    // The total: two more wait, the seventh gets 503.
    let others = vec![
        open_watch(t.ns(bh), api1, &query),
        open_watch(t.ns(a2), api0, &query),
    ];
    assert!(wait_until(Duration::from_secs(5), || stats_watchers(
        t.ns(bh),
        api1
    ) == 6));
    let (code, body) = watch_answer(open_watch(t.ns(a2), api0, &query), Duration::from_secs(5));
    assert_eq!(code, 503, "a watch past the total: {body}");

    // The flooder goes away: its places are free at once, not after 20 s.
    drop(flood);
    assert!(
        wait_until(Duration::from_secs(3), || stats_watchers(t.ns(bh), api1)
            == 2),
        "watchers after the flood closed: {}",
        stats_watchers(t.ns(bh), api1)
    );
    // A change answers those still waiting.
    let _late = t.node(a1, "late", &[], &["--tracker", &url0, "--no-mdns"]);
    for s in others {
        let (code, body) = watch_answer(s, Duration::from_secs(10));
        assert!(
            code == 200 && body.contains("\"changed\":true"),
            "{code} {body}"
        );
    }
}
