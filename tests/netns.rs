//! Real `lanshare` nodes on a LAN of network namespaces (a bridge and one
//! address per node), seeders' uplinks shaped with `tc` so transfers take
//! seconds: failures happen mid-transfer, not before or after it.
//!
//! Needs root and iproute2 (`ip`, `tc`); elsewhere every test prints why it
//! skips and passes. No traffic leaves the namespaces the tests create.

mod harness;

#[path = "netns/broadcast.rs"]
mod broadcast;
#[path = "netns/discovery.rs"]
mod discovery;
#[path = "netns/durable.rs"]
mod durable;
#[path = "netns/exchange.rs"]
mod exchange;
#[path = "netns/folders.rs"]
mod folders;
#[path = "netns/private.rs"]
mod private;
#[path = "netns/tracker.rs"]
mod tracker;
#[path = "netns/ui.rs"]
mod ui;

use std::fs::OpenOptions;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use harness::{Lan, Node, data, sha256_hex, uploaded_bytes, wait_until};

const MIB: usize = 1 << 20;
/// Deadline for a shaped transfer to finish (each takes a few seconds).
const TRANSFER: Duration = Duration::from_secs(120);
/// Deadline for nodes to see each other's content.
const DISCOVERY: Duration = Duration::from_secs(60);

/// Waits until `node` lists `file` with `n` complete holders.
fn wait_holders(node: &Node, file: &str, n: u64) {
    assert!(
        wait_until(DISCOVERY, || node.complete_holders(file) == n),
        "{} never saw {n} complete holders of {file}: {:?}\n{}",
        node.name,
        node.ls(),
        node.log_tail()
    );
}

/// Waits until `run` is at least `min_pct` done, and checks it is not
/// nearly over, so the test can still interrupt it (`what`).
fn wait_midway(
    run: &mut harness::FetchRun,
    fetcher: &Node,
    min_pct: f64,
    what: &str,
) -> Option<f64> {
    assert!(
        wait_until(TRANSFER, || run.exited()
            || run.progress().is_some_and(|p| p >= min_pct)),
        "no progress: {}\n{}",
        run.stdout(),
        fetcher.log_tail()
    );
    let at = run.progress();
    assert!(
        !run.exited() && at.is_some_and(|p| p < 90.0),
        "the transfer was (nearly) over before {what} (at {at:?}%); is tc shaping working?\n{}",
        run.stdout()
    );
    at
}

/// Checks the fetched file against the original and the last download log line.
fn check_download(fetcher: &Node, file: &str, content: &[u8], stdout: &str) {
    let got = std::fs::read(fetcher.downloads().join(file))
        .unwrap_or_else(|e| panic!("{file} not in downloads/: {e}\nfetch said:\n{stdout}"));
    let sha = sha256_hex(content);
    assert_eq!(got.len(), content.len(), "downloaded size differs");
    assert_eq!(sha256_hex(&got), sha, "downloaded bytes differ");
    assert!(
        stdout.contains(&format!("sha256 {sha}")),
        "fetch does not show the SHA-256: {stdout}"
    );
    let log = fetcher.download_log();
    let last = log.last().expect("a download log line");
    let f: Vec<&str> = last.split('\t').collect();
    assert_eq!(f[1], "download", "{last}");
    assert_eq!(f[2], file, "{last}");
    // The bytes field is what this run fetched: all of it, or what was
    // missing when it resumed.
    let bytes: u64 = f[3].parse().expect("bytes field");
    match resumed_at(stdout) {
        None => assert_eq!(bytes, content.len() as u64, "{last}"),
        Some(already) => assert!(
            bytes < content.len() as u64
                && (bytes + already).abs_diff(content.len() as u64) < 64 * 1024,
            "resumed at {already}, logged {bytes} of {}: {last}",
            content.len()
        ),
    }
    assert_eq!(f[8], "ok", "{last}");
    assert_eq!(f.get(9).copied(), Some(format!("sha256={sha}").as_str()));
}

/// Parses the size in "..., resuming at 10.0MiB" into bytes.
fn resumed_at(stdout: &str) -> Option<u64> {
    let s = stdout.split("resuming at ").nth(1)?.lines().next()?.trim();
    let split = s.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let mul = match unit {
        "B" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some((n * mul) as u64)
}

/// Three seeders, each uplink shaped; one is SIGKILLed while the fetch
/// pulls from all three. The fetch still completes, byte-identical.
#[test]
fn seeder_killed_mid_transfer_download_completes() {
    let Some(lan) = Lan::new(4) else { return };
    let content = data(40 * MIB, 11);
    for i in 0..3 {
        lan.shape(i, "24mbit");
    }
    let mut seeders: Vec<Node> = (0..3)
        .map(|i| lan.node(i, &format!("seed{i}"), &[("movie.mkv", &content)]))
        .collect();
    let fetcher = lan.node(3, "fetcher", &[]);
    wait_holders(&fetcher, "movie.mkv", 3);

    let mut run = fetcher.spawn_fetch("movie");
    let at = wait_midway(&mut run, &fetcher, 10.0, "a seeder could be killed");
    let victim = format!("seed0@{}", seeders[0].listen);
    seeders[0].kill();
    eprintln!("killed {victim} at {at:?}%");

    let stdout = run.finish_ok(TRANSFER, "fetch did not succeed", &[&fetcher]);
    check_download(&fetcher, "movie.mkv", &content, &stdout);
    // The killed seeder was in use and was dropped, not silently idle.
    assert!(
        stdout.contains(&format!("dropped peer {victim}")),
        "the killed seeder was never dropped from the download: {stdout}"
    );
    let last = fetcher.download_log().pop().unwrap();
    for s in &seeders {
        assert!(
            last.contains(&format!("{}@{}", s.name, s.listen)),
            "{} not among the peers used: {last}",
            s.name
        );
    }
    // The survivors served the rest.
    for s in &seeders[1..] {
        assert!(
            wait_until(Duration::from_secs(30), || !s.upload_log().is_empty()),
            "{} logged no upload",
            s.name
        );
    }
}

/// A holder whose file was overwritten in place after indexing (same size,
/// same mtime, so it keeps offering the old content id) serves wrong bytes:
/// the fetcher detects them, drops that peer, and the file arrives correct.
#[test]
fn corrupted_holder_is_detected_and_file_still_correct() {
    let Some(lan) = Lan::new(3) else { return };
    let chunks = 24;
    let content = data(chunks * MIB, 22);
    lan.shape(0, "32mbit");
    lan.shape(1, "32mbit");
    let good = lan.node(0, "good", &[("disk.img", &content)]);
    let bad = lan.node(1, "bad", &[("disk.img", &content)]);
    let fetcher = lan.node(2, "fetcher", &[]);
    // Both indexed the same content.
    wait_holders(&fetcher, "disk.img", 2);

    // Corrupt two chunks in every four (both parities, so whichever chunks
    // the scheduler hands to "bad", it soon gets a corrupted one), in place.
    let path = bad.shared().join("disk.img");
    let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
    {
        let f = OpenOptions::new().write(true).open(&path).unwrap();
        for i in (0..chunks).filter(|i| i % 4 == 1 || i % 4 == 2) {
            let at = i * MIB + MIB / 2;
            let flipped: Vec<u8> = content[at..at + 4096].iter().map(|b| !b).collect();
            f.write_all_at(&flipped, at as u64).unwrap();
        }
        f.set_modified(mtime).unwrap();
    }
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.modified().unwrap(), mtime);
    assert_eq!(meta.len(), content.len() as u64);
    assert_ne!(
        sha256_hex(&std::fs::read(&path).unwrap()),
        sha256_hex(&content)
    );
    assert_eq!(
        fetcher.complete_holders("disk.img"),
        2,
        "bad re-indexed its file: the test needs it to keep offering the old content"
    );

    let mut run = fetcher.spawn_fetch("disk");
    let stdout = run.finish_ok(TRANSFER, "fetch did not succeed", &[&fetcher]);
    check_download(&fetcher, "disk.img", &content, &stdout);
    let dropped = format!("dropped peer bad@{}: sent chunk", bad.listen);
    let line = stdout
        .lines()
        .find(|l| l.starts_with(&dropped))
        .unwrap_or_else(|| panic!("the corrupted holder was never dropped: {stdout}"));
    assert!(line.ends_with("with a wrong hash"), "{line}");
    let n: usize = line[dropped.len()..]
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no chunk index in {line:?}"));
    assert!(
        n % 4 == 1 || n % 4 == 2,
        "chunk {n} was not corrupted, yet called wrong"
    );
    assert!(
        !stdout.contains(&format!("dropped peer good@{}", good.listen)),
        "the honest holder was dropped: {stdout}"
    );
    assert!(
        wait_until(Duration::from_secs(30), || !good.upload_log().is_empty()),
        "good logged no upload"
    );
}

/// The fetcher node is SIGKILLed a third of the way through; started again
/// with the same home, `fetch` resumes from the verified chunks, and the
/// seeder sends (about) only what was still missing.
#[test]
fn fetcher_stopped_midway_resumes() {
    let Some(lan) = Lan::new(2) else { return };
    let size = 30 * MIB;
    let content = data(size, 33);
    lan.shape(0, "30mbit");
    let seed = lan.node(0, "seed", &[("backup.tar", &content)]);
    let mut fetcher = lan.node(1, "fetcher", &[]);
    wait_holders(&fetcher, "backup.tar", 1);

    let mut run = fetcher.spawn_fetch("backup.tar");
    let at = wait_midway(&mut run, &fetcher, 30.0, "the fetcher could be stopped");
    fetcher.kill();
    run.kill();
    eprintln!("killed the fetcher node at {at:?}%");
    assert!(!fetcher.downloads().join("backup.tar").exists());
    let parts: Vec<String> = std::fs::read_dir(fetcher.downloads())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        parts
            .iter()
            .any(|n| n.starts_with(".lanshare-") && n.ends_with(".part")),
        "no partial file in downloads/: {parts:?}"
    );

    // The seeder logs the cut connection once it notices.
    assert!(
        wait_until(Duration::from_secs(60), || !seed.upload_log().is_empty()),
        "seeder never logged the interrupted upload\n{}",
        seed.log_tail()
    );
    let first = seed.upload_log();
    let first_bytes = uploaded_bytes(&first);

    let fetcher = lan.start(1, "fetcher");
    wait_holders(&fetcher, "backup.tar", 1);
    let mut run = fetcher.spawn_fetch("backup.tar");
    let stdout = run.finish_ok(TRANSFER, "resumed fetch did not succeed", &[&fetcher]);
    let resumed =
        resumed_at(&stdout).unwrap_or_else(|| panic!("the second fetch did not resume: {stdout}"));
    assert!(resumed >= MIB as u64, "resumed at only {resumed} bytes");
    check_download(&fetcher, "backup.tar", &content, &stdout);

    assert!(
        wait_until(Duration::from_secs(30), || seed.upload_log().len()
            > first.len()),
        "seeder logged nothing for the second run"
    );
    let all = seed.upload_log();
    let second_bytes = uploaded_bytes(&all[first.len()..]);
    let size = size as u64;
    eprintln!(
        "first run served {first_bytes} B, resumed at {resumed} B, second run served {second_bytes} B of {size} B"
    );
    // The second run asked only for what was missing ("resuming at" is
    // rounded to 0.1 MiB: allow one chunk). The restarted node resumed the
    // download by itself until `fetch` took it over: allow its requests in
    // flight then (4 per peer) and the chunks not yet in its saved state.
    assert!(
        second_bytes + resumed <= size + 6 * MIB as u64,
        "second run served {second_bytes} B after resuming at {resumed} B of {size} B"
    );
    assert!(
        first_bytes + second_bytes < 2 * size - size / 4,
        "seeder served {} B in all for a {size} B file: the download started over",
        first_bytes + second_bytes
    );
}

/// Garbage from a third host while a download runs: random and oversized
/// datagrams to the group, and TCP connections carrying junk, a huge length
/// header, or nothing at all.
fn send_garbage(
    stop: Arc<AtomicBool>,
    from: Ipv4Addr,
    group: SocketAddrV4,
    target: SocketAddr,
) -> (u64, u64) {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    use std::io::Write;

    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let bytes = |rnd: &mut dyn FnMut() -> u64, n: usize| -> Vec<u8> {
        (0..n).map(|_| rnd() as u8).collect()
    };
    // Bound to this host's own address: in any other namespace (the root
    // one included) the bind fails and nothing is sent.
    let udp = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    udp.bind(&SockAddr::from(SocketAddrV4::new(from, 0)))
        .expect("bind the garbage host's address");
    udp.set_multicast_if_v4(&from).unwrap();
    udp.set_multicast_ttl_v4(1).unwrap();
    let to = SockAddr::from(group);
    let tcp = || -> Option<std::net::TcpStream> {
        let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP)).ok()?;
        s.bind(&SockAddr::from(SocketAddrV4::new(from, 0))).ok()?;
        s.connect_timeout(&SockAddr::from(target), Duration::from_secs(2))
            .ok()?;
        let s: std::net::TcpStream = s.into();
        s.set_write_timeout(Some(Duration::from_secs(1))).ok()?;
        Some(s)
    };
    let mut idle: std::collections::VecDeque<std::net::TcpStream> = Default::default();
    let (mut datagrams, mut conns) = (0u64, 0u64);
    let started = std::time::Instant::now();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed)
        && started.elapsed() < Duration::from_secs(90)
        && datagrams < 100_000
    {
        i += 1;
        let msg = match i % 5 {
            0 => {
                let n = 1 + (rnd() % 1400) as usize;
                bytes(&mut rnd, n)
            }
            1 => {
                let n = (rnd() % 1200) as usize;
                [b"LNSH\x01".as_slice(), &bytes(&mut rnd, n)].concat()
            }
            2 => {
                // Valid header, known kind, junk body.
                let n = (rnd() % 64) as usize;
                let kind = 1 + (rnd() % 3) as u8;
                [b"LNSH\x01".as_slice(), &[kind], &bytes(&mut rnd, n)].concat()
            }
            3 => {
                // Oversized (fragmented on the wire).
                let n = 1500 + (rnd() % 7000) as usize;
                [b"LNSH\x01\x01".as_slice(), &bytes(&mut rnd, n)].concat()
            }
            _ => [b"LNSH".as_slice(), &[rnd() as u8]].concat(),
        };
        if udp.send_to(&msg, &to).is_ok() {
            datagrams += 1;
        }
        if i.is_multiple_of(20) {
            let kind = (i / 20) % 5;
            if let Some(mut s) = tcp() {
                conns += 1;
                let _ = match kind {
                    0 => s.write_all(&bytes(&mut rnd, 64)),
                    // A valid preamble, then a handshake message of 64 KiB.
                    1 => s.write_all(b"LNSH\x02\x00\xff\xff"),
                    // A valid preamble, then a first handshake message of junk.
                    2 => {
                        let body = bytes(&mut rnd, 40);
                        let mut m = b"LNSH\x02\x00".to_vec();
                        m.extend_from_slice(&(body.len() as u16).to_be_bytes());
                        m.extend_from_slice(&body);
                        s.write_all(&m)
                    }
                    // A lot of junk.
                    3 => s.write_all(&bytes(&mut rnd, 256 * 1024)),
                    // Nothing at all: left open, idle.
                    _ => {
                        idle.push_back(s);
                        if idle.len() > 8 {
                            idle.pop_front();
                        }
                        Ok(())
                    }
                };
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    (datagrams, conns)
}

/// A node keeps serving while another host sends it garbage datagrams and
/// garbage TCP connections; it counts them and stays up.
#[test]
fn node_keeps_serving_under_garbage() {
    let Some(lan) = Lan::new(3) else { return };
    let content = data(10 * MIB, 44);
    lan.shape(0, "40mbit");
    let mut seed = lan.node(0, "seed", &[("notes.pdf", &content)]);
    let mut fetcher = lan.node(1, "fetcher", &[]);
    wait_holders(&fetcher, "notes.pdf", 1);

    let stop = Arc::new(AtomicBool::new(false));
    let group: SocketAddrV4 = lan.group.parse().unwrap();
    let (from, target) = (lan.hosts[2].addr, seed.listen);
    let s = stop.clone();
    let noise = harness::in_netns(lan.ns(2), move || send_garbage(s, from, group, target));
    // Make sure the thread stops even if an assertion below fails.
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_guard = StopOnDrop(stop.clone());

    let counters = |n: &Node| {
        let st = n.status();
        (
            st["malformed_datagrams"].as_u64().unwrap(),
            st["malformed_connections"].as_u64().unwrap(),
        )
    };
    assert!(
        wait_until(Duration::from_secs(60), || {
            let (d, c) = counters(&seed);
            d > 0 && c > 0
        }),
        "the seeder never counted garbage: {}\n{}",
        seed.status(),
        seed.log_tail()
    );
    let before = counters(&seed);

    let mut run = fetcher.spawn_fetch("notes");
    let status = run.wait(TRANSFER);
    let stdout = run.stdout();
    assert!(
        !noise.is_finished(),
        "the garbage stopped before the download ended"
    );
    stop.store(true, Ordering::Relaxed);
    let (datagrams, conns) = noise.join().expect("garbage thread");
    assert!(
        status.is_some_and(|s| s.success()),
        "fetch under garbage did not succeed ({status:?}): {stdout}\n{}\n{}",
        run.stderr,
        seed.log_tail()
    );
    check_download(&fetcher, "notes.pdf", &content, &stdout);

    let after = counters(&seed);
    eprintln!(
        "sent {datagrams} garbage datagrams and {conns} garbage connections; seeder counted {after:?}"
    );
    assert!(
        after.0 > before.0,
        "no garbage datagram counted during the download"
    );
    assert!(after.1 > 0);
    assert!(seed.alive(), "the seeder died\n{}", seed.log_tail());
    assert!(fetcher.alive(), "the fetcher died\n{}", fetcher.log_tail());
    assert!(!seed.log_text().contains("panicked"), "{}", seed.log_tail());
    // It still answers and still serves after the storm.
    assert_eq!(seed.status()["shared_contents"], 1);
    assert!(
        wait_until(Duration::from_secs(30), || !seed.upload_log().is_empty()),
        "seeder logged no upload"
    );
}
