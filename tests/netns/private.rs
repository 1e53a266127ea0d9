//! Private swarms end to end, on a bridge LAN of network namespaces whose
//! traffic is captured (`tcpdump -w` on the bridge, started before any
//! node): members holding the swarm key find each other and fetch; a node
//! with no key (even given a member as `--peer`) and a node with another
//! key see no peer and no file and cannot fetch by id; the capture holds no
//! file name, no file bytes, no member's id or name; forged datagrams
//! claiming a member, and captured datagrams replayed later, change nothing
//! (replays are counted), in a private swarm and in open mode.
//!
//! The pcap reader and the raw UDP sender are plain python
//! (`tests/netns/private_tool.py`: struct and socket, nothing to install).
//! Needs root, iproute2, tcpdump and python3; without them a test prints
//! why it skips and passes (and fails under LANSHARE_REQUIRE_NETNS).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::harness::{BIN, FetchRun, Node, Topo, data, die_with_parent, wait_until};
use lanshare::id::{NodeId, to_hex};
use lanshare::identity::Identity;
use lanshare::wire::datagram::{Announce, Datagram, Refused, Signed};

const MIB: usize = 1 << 20;
/// Deadline for members to find each other and each other's content.
const FIND: Duration = Duration::from_secs(30);
/// Deadline for a fetch.
const TRANSFER: Duration = Duration::from_secs(120);
/// The announce interval of every node (`Topo::interval`, 1 s).
const INTERVAL: Duration = Duration::from_secs(1);
/// The announce interval in the forgery and replay tests: a goodbye wrongly
/// taken leaves A offline at B until its next announce, for 1.5 s on
/// average, which polling every 100 ms sees.
const SLOW_INTERVAL: Duration = Duration::from_secs(3);
const TOOL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/netns/private_tool.py");

// Distinctive names: none can turn up by chance in a few MiB of ciphertext.
const A_NAME: &str = "member-alpha";
const B_NAME: &str = "member-beta";
const C_NAME: &str = "outsider-without-key";
const D_NAME: &str = "outsider-other-key";
const SECRET_FILE: &str = "quarterly-secret-plans.bin";
const B_FILE: &str = "beta-meeting-notes.txt";
const D_FILE: &str = "other-swarm-holiday.txt";

/// `tcpdump -w` on the topology's first bridge, inside the switch
/// namespace; killed on drop.
struct Capture {
    child: Option<Child>,
    path: PathBuf,
    stderr: PathBuf,
}

impl Capture {
    /// Starts capturing (`filter`: a tcpdump expression, or nothing for
    /// every packet) and returns once tcpdump listens.
    fn start(t: &Topo, filter: &[&str]) -> Capture {
        let path = t.dir().join("bridge.pcap");
        let stderr = t.dir().join("tcpdump.stderr");
        let mut cmd = Command::new("ip");
        // -U --immediate-mode: every packet reaches the file as it is
        // seen (without it, the last ring block is lost on exit). -B: a
        // 128 MiB ring, as the veths pass 64 KiB (GSO) packets and the
        // default 2 MiB overflows under load. -Z root: tcpdump keeps the
        // rights to write in the test's directory.
        cmd.args(["netns", "exec", &t.switch_ns, "tcpdump", "-i"])
            .arg(&t.bridges[0])
            .args([
                "-n",
                "-U",
                "--immediate-mode",
                "-B",
                "131072",
                "-Z",
                "root",
                "-w",
            ])
            .arg(&path)
            .args(filter)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap());
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("start tcpdump");
        let c = Capture {
            child: Some(child),
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

    /// Stops the capture with SIGINT (tcpdump closes its file cleanly).
    fn stop(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        // Packets still crossing the bridge reach the file.
        std::thread::sleep(Duration::from_millis(300));
        unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
        let stopped = wait_until(Duration::from_secs(10), || {
            matches!(c.try_wait(), Ok(Some(_)))
        });
        if !stopped {
            let _ = c.kill();
            let _ = c.wait();
        }
        assert!(stopped, "tcpdump did not stop on SIGINT: {}", self.log());
        // A capture with holes proves nothing about what it missed.
        let log = self.log();
        assert!(
            log.lines()
                .any(|l| l.trim() == "0 packets dropped by kernel"),
            "tcpdump lost packets: {log}"
        );
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

/// Runs `private_tool.py ARGS` here (it only reads files) and parses the
/// JSON it prints.
fn tool(args: &[&str]) -> Value {
    let out = Command::new("python3")
        .arg(TOOL)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "private_tool.py {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("private_tool.py prints JSON")
}

/// Sends each payload as one UDP datagram from host `h` (address `src`)
/// to `to`; with `spoof`, from that address and port instead (a raw
/// socket: the rogue host pretends to be another).
fn send_udp(
    t: &Topo,
    h: usize,
    src: Ipv4Addr,
    to: SocketAddrV4,
    spoof: Option<SocketAddrV4>,
    payloads: &[Vec<u8>],
) {
    let mut args = vec![
        TOOL.to_string(),
        "send".into(),
        src.to_string(),
        to.ip().to_string(),
        to.port().to_string(),
    ];
    if let Some(s) = spoof {
        args.extend(["--spoof".into(), s.ip().to_string(), s.port().to_string()]);
    }
    args.extend(payloads.iter().map(|p| to_hex(p)));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = t
        .spawn(h, "python3", &args)
        .stdin(Stdio::null())
        .output()
        .expect("run the python sender");
    assert!(
        out.status.success(),
        "the python sender failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("the sender prints JSON");
    assert_eq!(v["sent"].as_u64(), Some(payloads.len() as u64), "{v}");
}

/// A new swarm key from `lanshare key new`, in a file of the test's
/// directory; returns the file's path.
fn key_file(t: &Topo, file: &str) -> String {
    let out = Command::new(BIN)
        .args(["key", "new"])
        .stdin(Stdio::null())
        .output()
        .expect("run lanshare key new");
    assert!(out.status.success(), "lanshare key new failed: {out:?}");
    let key = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(
        !key.is_empty() && !key.contains('\n'),
        "key new printed {key:?}"
    );
    let path = t.dir().join(file);
    std::fs::write(&path, format!("{key}\n")).unwrap();
    path.to_str().expect("a UTF-8 path").to_string()
}

/// Waits until `node` lists `file` from `holder`, which it has verified.
fn wait_lists_verified(node: &Node, file: &str, holder: &str) {
    assert!(
        wait_until(FIND, || node.lists(file, holder)
            && node.peer(holder).is_some_and(|p| p["verified"] == true)),
        "{} does not list {file} from a verified {holder}\nls: {:?}\npeers: {:?}\n{}",
        node.name,
        node.ls(),
        node.peers(),
        node.log_tail()
    );
}

/// The datagram counters that a replay or a forgery could move.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Counters {
    replayed: u64,
    foreign: u64,
    malformed: u64,
    bad_signature: u64,
    throttled: u64,
}

fn counters(node: &Node) -> Counters {
    Counters {
        replayed: node.counter("replayed_datagrams"),
        foreign: node.counter("foreign_datagrams"),
        malformed: node.counter("malformed_datagrams"),
        bad_signature: node.counter("bad_signature_datagrams"),
        throttled: node.counter("throttled_datagrams"),
    }
}

/// Warnings `node` logged about a peer of another swarm.
fn another_swarm_warnings(node: &Node) -> Vec<String> {
    node.log_text()
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("another swarm"))
        .map(String::from)
        .collect()
}

/// Two members with key K, a node with no key that is given member A as
/// `--peer`, a node with another key K', all on one bridge whose traffic
/// is captured from before they start (mDNS on, IPv4 and IPv6).
#[test]
fn private_swarm_keeps_outsiders_out_and_the_capture_clean() {
    let Some(mut t) = Topo::new(&["tcpdump", "python3"]) else {
        return;
    };
    let br = t.add_bridge();
    for _ in 0..4 {
        let h = t.add_host();
        t.connect(h, br);
    }
    let mut cap = Capture::start(&t, &[]);
    let (k, other_k) = (key_file(&t, "swarm.key"), key_file(&t, "other.key"));
    let secret = data(3 * MIB + 12_345, 0x5ec7e7);
    let a = t.node(
        0,
        A_NAME,
        &[(SECRET_FILE, &secret)],
        &["--swarm-key-file", &k],
    );
    let b = t.node(
        1,
        B_NAME,
        &[(B_FILE, b"beta's notes")],
        &["--swarm-key-file", &k],
    );
    let a_addr = format!("{}:7373", Topo::addr(br, 0));
    let c = t.node(2, C_NAME, &[], &["--peer", &a_addr]);
    let d = t.node(
        3,
        D_NAME,
        &[(D_FILE, b"not yours")],
        &["--swarm-key-file", &other_k],
    );
    let started = Instant::now();

    members_swarm_and_fetch(&a, &b, &secret);
    let content_id = b
        .ls()
        .into_iter()
        .find(|v| v["name"] == SECRET_FILE)
        .and_then(|v| v["id"].as_str().map(String::from))
        .expect("the secret file's content id");
    // The outsiders have heard the members for several intervals.
    let seen_for = INTERVAL * 6;
    std::thread::sleep(seen_for.saturating_sub(started.elapsed()));
    outsiders_see_nothing(&a, &b, &c, &d, &content_id);
    warned_once_per_outsider(&a, &b);

    cap.stop();
    let members = [&a, &b];
    let report = capture_is_clean(&cap, &members, &c, &d, &secret, &content_id);
    let [a4, c4] = [0, 2].map(|h| Topo::addr(br, h));
    member_answers_no_outsider(&report, a4, c4);
}

/// A and B list each other's files, each verified by the other; B
/// fetches A's file and gets its bytes.
fn members_swarm_and_fetch(a: &Node, b: &Node, secret: &[u8]) {
    wait_lists_verified(b, SECRET_FILE, A_NAME);
    wait_lists_verified(a, B_FILE, B_NAME);
    let stdout = b.fetch_ok(SECRET_FILE, TRANSFER);
    let got = std::fs::read(b.downloads().join(SECRET_FILE))
        .unwrap_or_else(|e| panic!("{SECRET_FILE} not in B's downloads: {e}\n{stdout}"));
    assert!(got == secret, "the file B fetched differs from A's");
}

/// C (no key) and D (another key) list no peer and no file of the
/// members, and fetching the members' content by id fails for them; the
/// members list neither outsider nor D's file, and count the outsiders'
/// datagrams as foreign.
fn outsiders_see_nothing(a: &Node, b: &Node, c: &Node, d: &Node, content_id: &str) {
    for n in [c, d] {
        assert!(
            n.peers().is_empty(),
            "{} lists peers: {:?}\n{}",
            n.name,
            n.peers(),
            n.log_tail()
        );
        let foreign: Vec<Value> = n.ls().into_iter().filter(|v| v["local"] != true).collect();
        assert!(
            foreign.is_empty(),
            "{} lists others' files: {foreign:?}",
            n.name
        );
        let mut run = FetchRun::start(&n.home, content_id);
        let status = run.wait(Duration::from_secs(60));
        assert!(
            status.is_some_and(|s| !s.success()),
            "`fetch {content_id}` on {} did not fail ({status:?}): {}\n{}",
            n.name,
            run.stdout(),
            n.log_tail()
        );
        assert!(!n.downloads().join(SECRET_FILE).exists());
    }
    for n in [a, b] {
        let names: BTreeSet<String> = n
            .peers()
            .iter()
            .map(|p| p["name"].as_str().unwrap_or_default().to_string())
            .collect();
        let members = BTreeSet::from([A_NAME.to_string(), B_NAME.to_string()]);
        assert!(names.is_subset(&members), "{} lists {names:?}", n.name);
        assert!(
            !n.ls().iter().any(|v| v["name"] == D_FILE),
            "{} lists D's file",
            n.name
        );
        assert!(
            n.counter("foreign_datagrams") > 0,
            "{} counted no foreign datagram though C and D announce: {}",
            n.name,
            n.status()
        );
    }
}

/// A and B warned about the other swarm (C, D), and say nothing more
/// while C and D keep announcing for five more intervals.
fn warned_once_per_outsider(a: &Node, b: &Node) {
    let first: Vec<Vec<String>> = [a, b].iter().map(|n| another_swarm_warnings(n)).collect();
    for (n, lines) in [a, b].iter().zip(&first) {
        assert!(
            !lines.is_empty(),
            "{} logged no 'another swarm' warning about C or D\n{}",
            n.name,
            n.log_tail()
        );
        // Per outsider: its IPv4 and IPv6 address, datagrams and TCP.
        assert!(
            lines.len() <= 8,
            "{} warned {} times:\n{}",
            n.name,
            lines.len(),
            lines.join("\n")
        );
    }
    std::thread::sleep(INTERVAL * 5);
    for (n, lines) in [a, b].iter().zip(&first) {
        let now = another_swarm_warnings(n);
        assert_eq!(
            &now, lines,
            "{} keeps warning about the other swarm (once per datagram?)",
            n.name
        );
    }
}

/// What must not be in the capture (label -> bytes), and what must (C's
/// name: it announces in clear, which proves the capture and the reader).
fn needles(
    members: &[&Node; 2],
    d: &Node,
    secret: &[u8],
    content_id: &str,
) -> BTreeMap<String, Vec<u8>> {
    let mut n: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (label, text) in [
        ("file name", SECRET_FILE),
        ("B's file name", B_FILE),
        ("D's file name", D_FILE),
        ("D's name", d.name.as_str()),
        ("content id (hex)", content_id),
        ("C's name (must be found)", C_NAME),
    ] {
        n.insert(label.into(), text.as_bytes().to_vec());
    }
    let raw_id = lanshare::id::from_hex::<32>(content_id).expect("a 64-hex content id");
    n.insert("content id (raw)".into(), raw_id.to_vec());
    let sha = crate::harness::sha256_hex(secret);
    n.insert("file sha256 (hex)".into(), sha.as_bytes().to_vec());
    n.insert(
        "file sha256 (raw)".into(),
        lanshare::id::from_hex::<32>(&sha).unwrap().to_vec(),
    );
    for m in members {
        let id = m.id();
        n.insert(format!("{}'s name", m.name), m.name.as_bytes().to_vec());
        n.insert(format!("{}'s id (hex)", m.name), id.as_bytes().to_vec());
        n.insert(
            format!("{}'s id (HEX)", m.name),
            id.to_uppercase().into_bytes(),
        );
        n.insert(format!("{}'s id8", m.name), id.as_bytes()[..8].to_vec());
        let raw = lanshare::id::from_hex::<16>(&id).expect("a 32-hex node id");
        n.insert(format!("{}'s id (raw)", m.name), raw.to_vec());
    }
    // 64-byte samples of the file, chunk boundaries (1 MiB) included.
    let len = secret.len();
    for off in [
        0,
        4096,
        MIB - 32,
        MIB + MIB / 2,
        2 * MIB - 1,
        3 * MIB - 40,
        len - 64,
    ] {
        n.insert(
            format!("file bytes at {off}"),
            secret[off..off + 64].to_vec(),
        );
    }
    n
}

/// Scans the capture: only C's name is found, and the capture holds at
/// least the file's size of TCP payload (it saw the transfer).
fn capture_is_clean(
    cap: &Capture,
    members: &[&Node; 2],
    c: &Node,
    d: &Node,
    secret: &[u8],
    content_id: &str,
) -> Value {
    let needles = needles(members, d, secret, content_id);
    let json: BTreeMap<&String, String> = needles.iter().map(|(k, v)| (k, to_hex(v))).collect();
    let needles_path = cap.path.with_extension("needles.json");
    std::fs::write(&needles_path, serde_json::to_vec(&json).unwrap()).unwrap();
    let report = tool(&[
        "scan",
        cap.path.to_str().unwrap(),
        needles_path.to_str().unwrap(),
    ]);
    eprintln!(
        "capture: {} packets, {} UDP datagrams, TCP flows {}",
        report["packets"], report["udp_datagrams"], report["tcp_flows"]
    );
    let hits = report["hits"].as_object().expect("hits");
    assert!(
        hits.contains_key("C's name (must be found)"),
        "C's name, announced in clear, is not in the capture: is the capture or its reader broken? {report}\n{}",
        c.log_tail()
    );
    let leaks: Vec<String> = hits
        .iter()
        .filter(|(k, _)| k.as_str() != "C's name (must be found)")
        .map(|(k, v)| format!("{k}: {v}"))
        .collect();
    assert!(leaks.is_empty(), "the capture leaks:\n{}", leaks.join("\n"));
    let tcp: u64 = report["tcp_flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["bytes"].as_u64().unwrap())
        .sum();
    assert!(
        tcp >= secret.len() as u64,
        "only {tcp} B of TCP payload captured for a {} B transfer",
        secret.len()
    );
    report
}

/// C dialed A (its `--peer`) and sent its handshake, and A sent not one
/// byte back on any of those connections: not even a hello.
fn member_answers_no_outsider(report: &Value, a: Ipv4Addr, c: Ipv4Addr) {
    let flows = report["tcp_flows"].as_array().expect("tcp_flows");
    let bytes =
        |from: Ipv4Addr, sport: Option<u16>, to: Ipv4Addr, dport: Option<u16>| -> Vec<u64> {
            let from = match sport {
                Some(p) => format!("tcp {from}:{p} > "),
                None => format!("tcp {from}:"),
            };
            let to = match dport {
                Some(p) => format!(" > {to}:{p}"),
                None => format!(" > {to}:"),
            };
            flows
                .iter()
                .filter(|f| {
                    let name = f["flow"].as_str().unwrap();
                    name.starts_with(&from) && name.contains(&to)
                })
                .map(|f| f["bytes"].as_u64().unwrap())
                .collect()
        };
    let asked = bytes(c, None, a, Some(7373));
    assert!(
        asked.iter().any(|&n| n > 0),
        "no connection from C to A carried C's handshake: {flows:?}"
    );
    let answered = bytes(a, Some(7373), c, None);
    assert!(
        answered.iter().all(|&n| n == 0),
        "A answered C's connections with {answered:?} bytes"
    );
}

/// A member's datagrams as the capture holds them.
struct Captured {
    /// A's datagrams of its first run (its goodbye last), oldest first.
    first_run: Vec<Vec<u8>>,
    /// The address and port A sends them from.
    source: SocketAddrV4,
}

/// Reads A's datagrams to the group sent before `restarted` from the
/// capture.
fn captured_from(cap: &Capture, a: Ipv4Addr, group_port: u16, restarted: SystemTime) -> Captured {
    let v = tool(&["udp", cap.path.to_str().unwrap(), &group_port.to_string()]);
    let cutoff = restarted.duration_since(UNIX_EPOCH).unwrap().as_secs_f64();
    let mine: Vec<&Value> = v["datagrams"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["src"] == a.to_string() && d["ts"].as_f64().unwrap() < cutoff)
        .collect();
    assert!(
        mine.len() >= 3,
        "the capture holds {} datagrams of A's first run: {v}",
        mine.len()
    );
    let port = mine[0]["sport"].as_u64().unwrap() as u16;
    Captured {
        first_run: mine
            .iter()
            .map(|d| unhex(d["hex"].as_str().unwrap()))
            .collect(),
        source: SocketAddrV4::new(a, port),
    }
}

#[test]
fn private_forged_and_replayed_datagrams_change_nothing() {
    forged_and_replayed(true);
}

#[test]
fn open_forged_and_replayed_datagrams_change_nothing() {
    forged_and_replayed(false);
}

/// Members A and B (with a key when `private`), pinned to their IPv4
/// address without mDNS (one copy of each datagram: a replay is never a
/// multi-homing duplicate), and a rogue host R running no node. A stops
/// (its goodbye is captured) and starts again; R replays A's first run,
/// goodbye included, then sends forgeries claiming A's id. A stays listed
/// at B throughout; B counts the replays.
fn forged_and_replayed(private: bool) {
    let Some(mut t) = Topo::new(&["tcpdump", "python3"]) else {
        return;
    };
    t.interval = SLOW_INTERVAL.as_secs().to_string();
    let br = t.add_bridge();
    let (ha, hb, hr) = (t.add_host(), t.add_host(), t.add_host());
    for h in [ha, hb, hr] {
        t.connect(h, br);
    }
    let key = private.then(|| key_file(&t, "swarm.key"));
    let extra = |h: usize| -> Vec<String> {
        let mut v = vec![
            "--interface".into(),
            Topo::addr(br, h).to_string(),
            "--no-mdns".into(),
        ];
        if let Some(k) = &key {
            v.extend(["--swarm-key-file".into(), k.clone()]);
        }
        v
    };
    let (ea, eb) = (extra(ha), extra(hb));
    let ea: Vec<&str> = ea.iter().map(String::as_str).collect();
    let eb: Vec<&str> = eb.iter().map(String::as_str).collect();
    let port = t.group_port.to_string();
    let mut cap = Capture::start(&t, &["udp", "port", &port]);
    let mut a = t.node(ha, A_NAME, &[(SECRET_FILE, &data(64 * 1024 + 3, 7))], &ea);
    let b = t.node(hb, B_NAME, &[], &eb);
    wait_lists_verified(&b, SECRET_FILE, A_NAME);
    std::thread::sleep(SLOW_INTERVAL);

    // A's first run ends with a goodbye: B drops it.
    a.stop();
    assert!(
        wait_until(FIND, || !b.sees_online(A_NAME)),
        "B did not take A's goodbye: {:?}\n{}",
        b.peers(),
        b.log_tail()
    );
    let restarted = SystemTime::now();
    let a = t.start(ha, A_NAME, &ea);
    wait_lists_verified(&b, SECRET_FILE, A_NAME);
    assert!(
        wait_until(FIND, || b.sees_online(A_NAME)),
        "A is not back at B"
    );
    cap.stop();
    let captured = captured_from(&cap, Topo::addr(br, ha), t.group_port, restarted);
    let group = SocketAddrV4::new(t.group_ip, t.group_port);
    let rogue = (hr, Topo::addr(br, hr), group);

    replay_is_dropped_and_counted(&t, &b, rogue, &captured, private);
    let a_key = (!private).then(|| a_public_key(&captured));
    let a_id = NodeId(lanshare::id::from_hex::<16>(&a.id()).unwrap());
    forgeries_change_nothing(&t, &b, rogue, (a_id, a_key), captured.source, private);
}

/// A's public key, from a signed datagram of its first run (open mode).
fn a_public_key(captured: &Captured) -> [u8; 32] {
    let d = Signed::decode(&captured.first_run[0]).expect("A's datagram is a signed one");
    d.key.0
}

/// Goodbye datagrams B took, as its log says ("peer said goodbye ✓"): a second
/// witness besides polling, which can miss A's short absence.
fn goodbyes_taken(b: &Node) -> usize {
    b.log_text()
        .lines()
        .filter(|l| l.contains("said goodbye ✓"))
        .count()
}

/// Watches B for `within`: A stays online under its name, with its file.
fn a_stays_at_b(b: &Node, within: Duration, after: &str) {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let p = b.peer(A_NAME);
        assert!(
            p.as_ref().is_some_and(|p| p["online"] == true) && b.lists(SECRET_FILE, A_NAME),
            "after {after}, B no longer lists A online with its file: {p:?}\npeers: {:?}\n{}",
            b.peers(),
            b.log_tail()
        );
        assert!(
            !b.peers().iter().any(|p| p["name"] == "mallory"),
            "after {after}, B lists A under the forger's name: {:?}",
            b.peers()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// R sends A's first run (announces, then its goodbye) again: B drops
/// every one, counts them as replays, and nothing else changes.
fn replay_is_dropped_and_counted(
    t: &Topo,
    b: &Node,
    (hr, r_addr, group): (usize, Ipv4Addr, SocketAddrV4),
    captured: &Captured,
    private: bool,
) {
    std::thread::sleep(SLOW_INTERVAL);
    let before = counters(b);
    std::thread::sleep(SLOW_INTERVAL * 2);
    let idle = counters(b);
    assert_eq!(
        before, idle,
        "B's counters move with nobody replaying or forging: the test could not tell a replay"
    );
    let peers_before = b.peers().len();
    let goodbyes = goodbyes_taken(b);
    send_udp(t, hr, r_addr, group, None, &captured.first_run);
    a_stays_at_b(
        b,
        SLOW_INTERVAL * 2,
        "the replay of A's first run and goodbye",
    );
    assert_eq!(goodbyes_taken(b), goodbyes, "B took a replayed goodbye");
    let after = counters(b);
    assert!(
        after.replayed > idle.replayed,
        "B did not count the {} replayed datagrams of A ({} mode): {idle:?} -> {after:?}\n{}",
        captured.first_run.len(),
        if private { "private" } else { "open" },
        b.log_tail()
    );
    eprintln!(
        "replayed {} datagrams: {idle:?} -> {after:?}",
        captured.first_run.len()
    );
    assert_eq!(
        Counters {
            replayed: idle.replayed,
            ..after
        },
        idle,
        "a replay counted as something else than a replay"
    );
    assert_eq!(b.peers().len(), peers_before, "{:?}", b.peers());
}

/// Microseconds since the Unix epoch (the unit of datagram sequence
/// numbers).
fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64
}

/// Datagrams claiming A's id that no one but A could have made: the
/// format of today (version 1, unsigned), unsigned version 2, signed by
/// another key (the id is not that key's), and, when A's key is known,
/// A's key with another key's signature.
fn forgeries(a_id: NodeId, a_key: Option<[u8; 32]>) -> Vec<Vec<u8>> {
    let rogue = Identity::generate();
    let goodbye = Datagram::Goodbye { node: a_id };
    let announce = Datagram::Announce(Announce {
        node: a_id,
        name: "mallory".into(),
        tcp_port: 9,
        interval_ms: 1000,
        inventory_digest: [0x66; 16],
        contents: 1,
    });
    // A minute ahead: newer than anything A sends before the forgeries
    // arrive, so a broken signature check cannot hide behind the replay
    // window.
    let seq = now_us() + 60_000_000;
    let mut out = vec![
        announce.encode(),
        [b"LNSH\x01\x03".as_slice(), &a_id.0].concat(),
        goodbye.encode(),
    ];
    // Goodbyes last: one wrongly taken is not undone by a later forgery.
    for (i, d) in [&announce, &goodbye].into_iter().enumerate() {
        let signed = d.sign(&rogue, seq + i as u64);
        let decoded = Signed::decode(&signed).expect("a well-formed signed datagram");
        assert_eq!(decoded.verify(), Err(Refused::IdMismatch));
        out.push(signed.clone());
        if let Some(pk) = a_key {
            let mut with_a_key = d.sign(&rogue, seq + 10 + i as u64);
            let at = find(&with_a_key, &rogue.public_key().0).expect("the key in the datagram");
            with_a_key[at..at + 32].copy_from_slice(&pk);
            let decoded = Signed::decode(&with_a_key).expect("a well-formed signed datagram");
            assert_eq!(decoded.verify(), Err(Refused::BadSignature));
            out.push(with_a_key);
        }
    }
    out
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex from the pcap reader"))
        .collect()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// R sends the forgeries twice: from its own address, then spoofing A's
/// address and port. B keeps A online under its name, and counts what it
/// received (foreign in a private swarm: R cannot seal; malformed or
/// badly signed in open mode).
fn forgeries_change_nothing(
    t: &Topo,
    b: &Node,
    (hr, r_addr, group): (usize, Ipv4Addr, SocketAddrV4),
    (a_id, a_key): (NodeId, Option<[u8; 32]>),
    a_source: SocketAddrV4,
    private: bool,
) {
    let mut forged = forgeries(a_id, a_key);
    if private {
        // Looks sealed, opens under no key.
        let junk = data(24 + 256 + 16, now_us());
        forged.push([b"LNSH\x02\x10".as_slice(), &junk].concat());
    }
    let before = counters(b);
    let goodbyes = goodbyes_taken(b);
    send_udp(t, hr, r_addr, group, None, &forged);
    send_udp(t, hr, r_addr, group, Some(a_source), &forged);
    a_stays_at_b(
        b,
        SLOW_INTERVAL * 2,
        "forged goodbyes and announces claiming A",
    );
    assert_eq!(goodbyes_taken(b), goodbyes, "B took a forged goodbye");
    let after = counters(b);
    eprintln!(
        "sent 2 x {} forgeries: {before:?} -> {after:?}",
        forged.len()
    );
    assert_eq!(
        after.replayed, before.replayed,
        "a forgery counted as a replay"
    );
    if private {
        assert!(
            after.foreign >= before.foreign + 2 * forged.len() as u64,
            "B did not count every forgery as foreign: {before:?} -> {after:?}"
        );
    } else {
        let refused =
            after.malformed + after.bad_signature - before.malformed - before.bad_signature;
        assert!(
            refused >= 2 * forged.len() as u64 && after.bad_signature > before.bad_signature,
            "B did not count every forgery as malformed or badly signed: {before:?} -> {after:?}"
        );
    }
}
