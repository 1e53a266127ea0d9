//! Hostile-peer regression tests: server.
//!
//! Issue 8, item 6 (upload slots held hostage): a rogue peer opens every
//! connection slot of a node's uploader from several addresses, says hello
//! and then sits on them (or keeps them barely busy), re-opening any the
//! node closes. A real peer must still fetch from that node promptly.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use lanshare::id::ContentId;
use lanshare::identity::Identity;
use lanshare::peer::noise;
use lanshare::swarm::Mode;
use lanshare::wire::frame::{self, HEADER_LEN, MAX_RESPONSE_FRAME, Request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::harness::{Net, Node, data, sha256_hex, wait_until};

/// The uploader's default slots (`ServerLimits`): 64 in all, 16 per address.
const SLOTS: usize = 64;
const PER_ADDRESS: usize = 16;

/// Reads one response frame (not a chunk) and returns its kind.
async fn read_frame(s: &mut TcpStream) -> std::io::Result<u8> {
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h).await?;
    let (kind, len) = frame::parse_header(&h, MAX_RESPONSE_FRAME)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).await?;
    Ok(kind)
}

/// Connects from `src` to `victim` and completes the handshake exactly as
/// a real peer would, under a fresh key (so a fresh node id).
async fn handshake(src: IpAddr, victim: SocketAddr, n: u64) -> std::io::Result<TcpStream> {
    let sock = TcpSocket::new_v4()?;
    sock.bind(SocketAddr::new(src, 0))?;
    let mut s = sock.connect(victim).await?;
    let mut seed = [0x66u8; 32];
    seed[24..].copy_from_slice(&n.to_be_bytes());
    let me = Identity::from_seed(seed);
    noise::initiate(&mut s, &me, &Mode::Open, "rogue")
        .await
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
    Ok(s)
}

/// What the rogue managed.
#[derive(Default)]
struct RogueStats {
    /// Handshakes completed.
    handshakes: AtomicU64,
    /// Connections the victim closed under the rogue.
    closed: AtomicU64,
    /// Connections open right now.
    open: AtomicU64,
}

/// Holds one connection slot from `src` for as long as `stop` allows:
/// handshakes, then either idles (`every: None`) or asks for a manifest
/// nobody holds every `every` (a connection kept barely busy), and opens
/// a new connection whenever the victim closes it.
async fn hold_slot(
    src: IpAddr,
    victim: SocketAddr,
    n: u64,
    every: Option<Duration>,
    stats: Arc<RogueStats>,
    stop: CancellationToken,
) {
    let mut attempt = 0u64;
    while !stop.is_cancelled() {
        attempt += 1;
        let conn = tokio::select! {
            _ = stop.cancelled() => return,
            c = tokio::time::timeout(Duration::from_secs(3), handshake(src, victim, n << 20 | attempt)) => c,
        };
        let Ok(Ok(mut s)) = conn else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        stats.handshakes.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let held = async {
            let mut req = 0u32;
            loop {
                match every {
                    None => {
                        // Idle: the next read ends only when the victim closes.
                        let _ = read_frame(&mut s).await;
                        return;
                    }
                    Some(period) => {
                        tokio::time::sleep(period).await;
                        req += 1;
                        let ask = Request::GetManifest {
                            req,
                            id: ContentId([0x99; 32]),
                        }
                        .encode();
                        if s.write_all(&ask).await.is_err() || read_frame(&mut s).await.is_err() {
                            return;
                        }
                    }
                }
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = held => {}
        }
        stats.open.fetch_sub(1, Ordering::Relaxed);
        stats.closed.fetch_add(1, Ordering::Relaxed);
    }
}

/// Runs the attack against a sharing node while a real peer fetches from
/// it; returns (fetch output, seconds the fetch took, rogue stats).
fn fetch_under_siege(sources: &[&str], every: Option<Duration>) {
    let net = Net::new();
    let content = data(3 << 20, 61);
    let victim = net.node("victim", &[("data.bin", &content)]);
    let real = net.node("real", &[]);
    assert!(
        wait_until(Duration::from_secs(10), || real
            .ls()
            .iter()
            .any(|v| v["name"] == "data.bin")),
        "the real node never saw the victim's file"
    );
    let target: SocketAddr = format!("127.0.0.1:{}", victim.listen.port())
        .parse()
        .unwrap();

    let rt = tokio::runtime::Runtime::new().expect("a runtime for the rogue");
    let stop = CancellationToken::new();
    let stats = Arc::new(RogueStats::default());
    let mut n = 0u64;
    for src in sources {
        let src: IpAddr = src.parse().unwrap();
        for _ in 0..PER_ADDRESS {
            n += 1;
            rt.spawn(hold_slot(
                src,
                target,
                n,
                every,
                stats.clone(),
                stop.clone(),
            ));
        }
    }
    // The rogue holds (nearly) every slot before the real peer asks.
    let filled = wait_until(Duration::from_secs(10), || {
        stats.open.load(Ordering::Relaxed) as usize >= SLOTS * 3 / 4
    });
    let open_before = stats.open.load(Ordering::Relaxed);
    assert!(
        filled,
        "the rogue could not even open its connections ({open_before} open)"
    );

    let started = Instant::now();
    let out = real.fetch("data.bin");
    let took = started.elapsed();
    stop.cancel();
    rt.shutdown_timeout(Duration::from_secs(2));
    let (handshakes, closed) = (
        stats.handshakes.load(Ordering::Relaxed),
        stats.closed.load(Ordering::Relaxed),
    );
    eprintln!(
        "rogue from {sources:?} ({}): {open_before} connections open before the fetch, {handshakes} handshakes, {closed} closed by the victim; the fetch took {took:.1?}",
        match every {
            None => "idle".to_string(),
            Some(p) => format!("a request every {p:?}"),
        }
    );
    assert!(
        out.status.success(),
        "the real peer's fetch failed while a rogue held the upload slots ({took:.1?}):\nstdout: {}\nstderr: {}\nvictim log tail:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        victim
            .log_text()
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let got = std::fs::read(real.downloads().join("data.bin")).expect("downloaded file");
    assert_eq!(sha256_hex(&got), sha256_hex(&content));
    assert!(
        took < Duration::from_secs(30),
        "the fetch completed, but only after {took:?}"
    );
}

/// 64 handshaken idle connections from 4 addresses (each in its own /24,
/// so only the global cap binds) took every upload slot and every fetch
/// from the node failed. Now idle connections are closed a few seconds
/// after their hello, and a newcomer takes the place of the idlest one at
/// once, even while the rogue re-opens every connection closed under it.
#[test]
fn idle_connections_from_several_addresses_cannot_hold_the_upload_slots() {
    fetch_under_siege(&["127.0.1.2", "127.0.2.2", "127.0.3.2", "127.0.4.2"], None);
}

/// The same from 127.0.0.2-5, in the real peer's own /24, with every
/// connection kept barely busy (a request every 300 ms, so none is ever
/// idle for a second): a host holding many connections yields one to a
/// peer holding few, so the real peer still gets a slot.
#[test]
fn busy_connections_from_the_same_range_cannot_hold_the_upload_slots() {
    fetch_under_siege(
        &["127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5"],
        Some(Duration::from_millis(300)),
    );
}

/// Issue 10: members of a private swarm fetch from each other (every
/// connection under the swarm key, chunks sealed); a node without the key
/// cannot fetch from them (its connections are closed unanswered), and a
/// member says "another swarm" about it once, not per connection.
#[test]
fn a_private_swarm_serves_its_members_only() {
    let net = Net::new();
    let key = lanshare::swarm::SwarmKey::generate().to_text();
    let content = data(9 << 20, 10);
    let private = ["--swarm-key", key.as_str()];
    let a = net.node_with("a", &[("secret.bin", &content)], &private);
    let b = net.node_with("b", &[], &private);
    let out = b.fetch_ok("secret.bin", Duration::from_secs(60));
    let got = std::fs::read(b.downloads().join("secret.bin")).expect("fetched file");
    assert_eq!(sha256_hex(&got), sha256_hex(&content), "{out}");

    let a_addr = format!("127.0.0.1:{}", a.listen.port());
    let outsider = net.node_with("outsider", &[], &["--peer", &a_addr]);
    let r = outsider.cli(&["fetch", "secret.bin"]);
    assert!(!r.status.success(), "a node without the key fetched");
    let wrong = lanshare::swarm::SwarmKey::generate().to_text();
    let other = net.node_with("other", &[], &["--swarm-key", &wrong, "--peer", &a_addr]);
    let r = other.cli(&["fetch", "secret.bin"]);
    assert!(!r.status.success(), "a node with another key fetched");
    // The name may appear only as the outsider's own query, echoed by its
    // node (`query=secret.bin`), never as something the network told it.
    let learnt = |n: &Node| {
        n.log_text()
            .lines()
            .any(|l| l.contains("secret.bin") && !l.contains("query=secret.bin"))
    };
    assert!(
        !learnt(&outsider) && !learnt(&other),
        "an outsider learnt the file name:\n{}\n{}",
        outsider.log_text(),
        other.log_text()
    );
    assert!(
        outsider.ls().is_empty() && other.ls().is_empty(),
        "an outsider lists the members' files"
    );
    let said = a.log_text().matches("in another swarm").count();
    assert_eq!(
        said,
        1,
        "a says 'another swarm' once per address:\n{}",
        a.log_tail()
    );
}

/// A connection that says hello and then asks for nothing is closed within
/// seconds (it was held for the 60 s idle timeout).
#[test]
fn a_connection_that_asks_for_nothing_is_closed_soon_after_its_hello() {
    let net = Net::new();
    let victim = net.node("victim", &[("a.txt", b"hello")]);
    let target: SocketAddr = format!("127.0.0.1:{}", victim.listen.port())
        .parse()
        .unwrap();
    let rt = tokio::runtime::Runtime::new().expect("a runtime");
    let closed_after = rt.block_on(async {
        let mut s = handshake("127.0.0.2".parse().unwrap(), target, 1)
            .await
            .expect("handshake");
        let started = Instant::now();
        let r = tokio::time::timeout(Duration::from_secs(15), read_frame(&mut s)).await;
        assert!(
            matches!(r, Ok(Err(_))),
            "the idle connection is still open after 15 s"
        );
        started.elapsed()
    });
    eprintln!("closed {closed_after:.1?} after the hello");
}
