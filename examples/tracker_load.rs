//! Load generator for `lanshare tracker` (run by `scripts/bench-tracker.sh`).
//!
//! Registers NODES synthetic nodes holding FILES files in total, then
//! measures, each phase on its own, with CONCURRENCY requests in flight:
//! registrations, the initial full announces, full re-announces with a few
//! entries changed, incremental announces, heartbeats (over kept-alive
//! connections, and with a connection per request as nodes send them),
//! searches by name
//! (a common word, and a rare string) and by category, and peer lists.
//! Prints one line per phase: requests, seconds, requests per second and
//! latency percentiles. Everything it prints was measured in this run.
//! Every node has its own Ed25519 key and signs each change as a real node
//! does (`X-Lanshare-Sig`), so the rates include the tracker's signature
//! checks (and the generator's signing, on the same machine).
//!
//! ```text
//! cargo run --release --example tracker_load -- --url http://127.0.0.1:PORT \
//!     [--nodes 3000] [--files 1000000] [--concurrency 16] [--secs 10] [--seed 1]
//! ```
//!
//! The tracker should run with a long `--offline-after` (the script uses
//! 3600 s) so that no node goes offline between phases.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use lanshare::id::ContentId;
use lanshare::identity::Identity;
use lanshare::tracker::client::Api;
use lanshare::tracker::proto::{
    Entry, FullAnnounce, HeartbeatRequest, PatchAnnounce, PeersQuery, RegisterRequest, SearchQuery,
};
use tokio::sync::Mutex;

const WORDS: &[&str] = &[
    "holiday",
    "report",
    "budget",
    "concert",
    "lecture",
    "family",
    "project",
    "backup",
    "summer",
    "winter",
    "invoice",
    "meeting",
    "draft",
    "final",
    "scan",
    "camera",
    "mountain",
    "beach",
    "garden",
    "kitchen",
    "office",
    "server",
    "archive",
    "album",
    "track",
    "episode",
    "season",
    "chapter",
    "notes",
    "slides",
    "thesis",
    "paper",
    "manual",
    "guide",
    "recipe",
    "travel",
    "birthday",
    "wedding",
    "party",
    "trip",
    "sunset",
    "river",
    "forest",
    "city",
    "night",
    "morning",
    "audit",
    "design",
    "sketch",
    "photo",
    "video",
    "music",
    "podcast",
    "movie",
    "document",
    "release",
    "build",
    "debian",
    "ubuntu",
    "firmware",
    "driver",
    "installer",
    "dataset",
    "model",
    "survey",
    "letter",
    "contract",
    "poster",
    "banner",
    "logo",
    "icon",
    "theme",
    "font",
    "score",
    "lyrics",
    "demo",
    "remix",
    "live",
    "studio",
    "session",
    "rehearsal",
    "interview",
];
const EXTS: &[&str] = &[
    "mp3", "flac", "mp4", "mkv", "jpg", "png", "txt", "md", "pdf", "docx", "zip", "iso", "bin",
];
/// Contents shared by several nodes (the rest are unique to one node).
const POPULAR: u64 = 20_000;

/// splitmix64: a small deterministic generator, so runs are comparable.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn pick<'a>(&mut self, v: &'a [&'a str]) -> &'a str {
        v[self.below(v.len() as u64) as usize]
    }
}

fn content_id(seed: u64) -> ContentId {
    let mut r = Rng(seed);
    let mut id = [0u8; 32];
    for c in id.chunks_mut(8) {
        c.copy_from_slice(&r.next().to_le_bytes());
    }
    ContentId(id)
}

/// One file of one node: popular contents keep their name everywhere.
fn make_entry(rng: &mut Rng, node: usize, k: u64) -> Entry {
    let (id_seed, name_seed) = if rng.below(10) == 0 {
        let p = rng.below(POPULAR);
        (1 << 40 | p, p)
    } else {
        let s = (node as u64) << 24 | k;
        (2 << 40 | s, s)
    };
    let mut nr = Rng(name_seed ^ 0x5eed);
    let name = format!(
        "{}-{}-{:06}.{}",
        nr.pick(WORDS),
        nr.pick(WORDS),
        name_seed % 1_000_000,
        nr.pick(EXTS)
    );
    let size = 1 + Rng(id_seed).below(4 << 30);
    let total = size.div_ceil(1 << 20) as u32;
    let have = if rng.below(20) == 0 {
        rng.below(total as u64) as u32
    } else {
        total
    };
    Entry {
        id: content_id(id_seed),
        name,
        size,
        category: None,
        comment: if rng.below(4) == 0 {
            "shared for the benchmark".into()
        } else {
            String::new()
        },
        have: Some(have),
        total: Some(total),
    }
}

fn digest_of(entries: &[Entry]) -> [u8; 16] {
    let bytes = serde_json::to_vec(entries).expect("entries serialize");
    let mut d = [0u8; 16];
    d.copy_from_slice(&blake3::hash(&bytes).as_bytes()[..16]);
    d
}

struct Node {
    /// Every request of the node is signed by its key (`X-Lanshare-Sig`).
    key: Arc<Identity>,
    token: String,
    entries: Vec<Entry>,
    digest: [u8; 16],
    next_k: u64,
}

struct Args {
    url: String,
    nodes: usize,
    files: usize,
    concurrency: usize,
    secs: f64,
    seed: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        url: String::new(),
        nodes: 3000,
        files: 1_000_000,
        concurrency: 16,
        secs: 10.0,
        seed: 1,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--url" => a.url = val()?,
            "--nodes" => a.nodes = val()?.parse().map_err(|e| format!("--nodes: {e}"))?,
            "--files" => a.files = val()?.parse().map_err(|e| format!("--files: {e}"))?,
            "--concurrency" => {
                a.concurrency = val()?.parse().map_err(|e| format!("--concurrency: {e}"))?
            }
            "--secs" => a.secs = val()?.parse().map_err(|e| format!("--secs: {e}"))?,
            "--seed" => a.seed = val()?.parse().map_err(|e| format!("--seed: {e}"))?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if a.url.is_empty() {
        return Err("--url http://HOST:PORT is required".into());
    }
    if a.nodes == 0 || a.concurrency == 0 {
        return Err("--nodes and --concurrency must be at least 1".into());
    }
    Ok(a)
}

/// Latencies of one phase.
struct Phase {
    name: String,
    requests: usize,
    failed: usize,
    secs: f64,
    lat: Vec<Duration>,
    /// Extra figure (entries per second, hits per search...).
    note: String,
}

impl Phase {
    fn print(&self) {
        let mut lat = self.lat.clone();
        lat.sort();
        let pct = |p: f64| -> f64 {
            if lat.is_empty() {
                return 0.0;
            }
            let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
            lat[i].as_secs_f64() * 1000.0
        };
        println!(
            "{:<40} {:>8} req {:>8.2} s {:>9.0} req/s   p50 {:>7.2} ms  p99 {:>7.2} ms{}{}",
            self.name,
            self.requests,
            self.secs,
            self.requests as f64 / self.secs,
            pct(0.5),
            pct(0.99),
            if self.failed > 0 {
                format!("  FAILED {}", self.failed)
            } else {
                String::new()
            },
            if self.note.is_empty() {
                String::new()
            } else {
                format!("  ({})", self.note)
            }
        );
    }
}

/// Runs `work(i)` for i in 0..count (or, with `count == None`, for `secs`
/// seconds) with `conc` requests in flight; `work` returns success.
async fn run<F, Fut>(name: &str, conc: usize, count: Option<usize>, secs: f64, work: F) -> Phase
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send,
{
    let work = Arc::new(work);
    let next = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let lat = Arc::new(Mutex::new(Vec::new()));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for _ in 0..conc {
        let (work, next, failed, lat) = (work.clone(), next.clone(), failed.clone(), lat.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                match count {
                    Some(n) if i >= n => break,
                    None if Instant::now() >= deadline => break,
                    _ => {}
                }
                let t = Instant::now();
                if !work(i).await {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
                mine.push(t.elapsed());
            }
            lat.lock().await.extend(mine);
        }));
    }
    for t in tasks {
        t.await.expect("a load task panicked");
    }
    let secs = start.elapsed().as_secs_f64();
    let lat = std::mem::take(&mut *lat.lock().await);
    Phase {
        name: name.to_string(),
        requests: lat.len(),
        failed: failed.load(Ordering::Relaxed),
        secs,
        lat,
        note: String::new(),
    }
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tracker_load: {e}");
            std::process::exit(2);
        }
    };
    let api = Api::new(&args.url);
    let conc = args.concurrency;
    println!(
        "tracker_load: {} nodes, {} files, {} requests in flight, timed phases {} s, seed {}",
        args.nodes, args.files, conc, args.secs, args.seed
    );

    // Build every node's inventory up front (not timed).
    let mut rng = Rng(args.seed);
    let per = args.files / args.nodes;
    let extra = args.files % args.nodes;
    let mut nodes = Vec::with_capacity(args.nodes);
    for n in 0..args.nodes {
        let count = per + usize::from(n < extra);
        let mut seed = [0u8; 32];
        seed[..8].copy_from_slice(&rng.next().to_le_bytes());
        seed[8..16].copy_from_slice(&(n as u64).to_le_bytes());
        let mut entries: Vec<Entry> = (0..count as u64)
            .map(|k| make_entry(&mut rng, n, k))
            .collect();
        entries.sort_by_key(|e| e.id);
        entries.dedup_by_key(|e| e.id);
        let digest = digest_of(&entries);
        nodes.push(Node {
            key: Arc::new(Identity::from_seed(seed)),
            token: String::new(),
            entries,
            digest,
            next_k: count as u64,
        });
    }
    let total_entries: usize = nodes.iter().map(|n| n.entries.len()).sum();
    let nodes: Arc<Vec<Mutex<Node>>> = Arc::new(nodes.into_iter().map(Mutex::new).collect());
    let n_nodes = args.nodes;

    // 1. Registrations.
    let (a, ns) = (api.clone(), nodes.clone());
    let p = run("register", conc, Some(n_nodes), 0.0, move |i| {
        let (a, ns) = (a.clone(), ns.clone());
        async move {
            let mut node = ns[i].lock().await;
            let req = RegisterRequest {
                id: node.key.node_id(),
                key: node.key.public_key(),
                swarm: None,
                name: format!("bench-{i}"),
                port: 7373,
                addrs: vec![std::net::IpAddr::from([
                    10,
                    (i >> 16) as u8,
                    (i >> 8) as u8,
                    i as u8,
                ])],
            };
            match a.register(&node.key, &req).await {
                Ok(r) => {
                    node.token = r.token;
                    true
                }
                Err(e) => {
                    eprintln!("register: {e}");
                    false
                }
            }
        }
    })
    .await;
    p.print();

    // 2. Initial full announces: the whole inventory of every node.
    let (a, ns) = (api.clone(), nodes.clone());
    let mut p = run(
        "announce full (initial load)",
        conc,
        Some(n_nodes),
        0.0,
        move |i| {
            let (a, ns) = (a.clone(), ns.clone());
            async move {
                let node = ns[i].lock().await;
                let req = FullAnnounce {
                    digest: Some(node.digest),
                    entries: node.entries.clone(),
                    more: false,
                };
                a.announce_full(&node.key, &node.token, &req)
                    .await
                    .map_err(|e| eprintln!("announce: {e}"))
                    .is_ok()
            }
        },
    )
    .await;
    p.note = format!("{:.0} entries/s", total_entries as f64 / p.secs);
    p.print();

    // 3. Full re-announces with 3% of the entries replaced (the tracker
    //    rewrites only what changed).
    let (a, ns) = (api.clone(), nodes.clone());
    let seed = args.seed;
    let mut p = run(
        "announce full (3% changed)",
        conc,
        Some(n_nodes),
        0.0,
        move |i| {
            let (a, ns) = (a.clone(), ns.clone());
            async move {
                let mut node = ns[i].lock().await;
                let mut r = Rng(seed ^ (i as u64) << 20 ^ 3);
                let change = (node.entries.len() * 3).div_ceil(100);
                for _ in 0..change {
                    let at = r.below(node.entries.len() as u64) as usize;
                    let k = node.next_k;
                    node.next_k += 1;
                    node.entries[at] = make_entry(&mut r, i, k);
                }
                node.entries.sort_by_key(|e| e.id);
                node.entries.dedup_by_key(|e| e.id);
                node.digest = digest_of(&node.entries);
                let req = FullAnnounce {
                    digest: Some(node.digest),
                    entries: node.entries.clone(),
                    more: false,
                };
                a.announce_full(&node.key, &node.token, &req)
                    .await
                    .map_err(|e| eprintln!("re-announce: {e}"))
                    .is_ok()
            }
        },
    )
    .await;
    p.note = format!("{:.0} entries/s sent", total_entries as f64 / p.secs);
    p.print();

    // 4. Incremental announces: 2 new entries and 1 removal against the
    //    stored digest, for SECS seconds.
    let (a, ns) = (api.clone(), nodes.clone());
    let p = run(
        "announce incremental (+2 -1)",
        conc,
        None,
        args.secs,
        move |i| {
            let (a, ns) = (a.clone(), ns.clone());
            async move {
                let mut node = ns[i % n_nodes].lock().await;
                let mut r = Rng(seed ^ (i as u64) << 8 ^ 4);
                let base = node.digest;
                let (k1, k2) = (node.next_k, node.next_k + 1);
                node.next_k += 2;
                let mut up = vec![
                    make_entry(&mut r, i % n_nodes, k1),
                    make_entry(&mut r, i % n_nodes, k2),
                ];
                up.dedup_by_key(|e| e.id);
                let mut remove = vec![node.entries[r.below(node.entries.len() as u64) as usize].id];
                remove.retain(|g| !up.iter().any(|u| u.id == *g));
                node.entries
                    .retain(|e| !remove.contains(&e.id) && !up.iter().any(|u| u.id == e.id));
                node.entries.extend(up.iter().cloned());
                node.entries.sort_by_key(|e| e.id);
                node.digest = digest_of(&node.entries);
                let req = PatchAnnounce {
                    base: Some(base),
                    digest: Some(node.digest),
                    upsert: up,
                    remove,
                    more: false,
                };
                a.announce_patch(&node.key, &node.token, &req)
                    .await
                    .map_err(|e| eprintln!("patch: {e}"))
                    .is_ok()
            }
        },
    )
    .await;
    p.print();

    // 5. Heartbeats: over kept-alive connections, then with a new
    //    connection per request, as nodes send them (Api::per_request).
    for (name, per_request) in [
        ("heartbeat (kept-alive connections)", false),
        ("heartbeat (a connection per request)", true),
    ] {
        let a = if per_request {
            Api::per_request(&args.url)
        } else {
            api.clone()
        };
        let ns = nodes.clone();
        let p = run(name, conc, None, args.secs, move |i| {
            let (a, ns) = (a.clone(), ns.clone());
            async move {
                let (id, token, digest) = {
                    let node = ns[i % n_nodes].lock().await;
                    (node.key.clone(), node.token.clone(), node.digest)
                };
                let req = HeartbeatRequest {
                    digest,
                    addrs: None,
                };
                match a.heartbeat(&id, &token, &req).await {
                    Ok(r) if !r.send_inventory => true,
                    Ok(_) => {
                        eprintln!("heartbeat: the tracker asked for an inventory it should have");
                        false
                    }
                    Err(e) => {
                        eprintln!("heartbeat: {e}");
                        false
                    }
                }
            }
        })
        .await;
        p.print();
    }

    // 6. Searches.
    let hits = Arc::new(AtomicUsize::new(0));
    for (name, kind) in [
        ("search by name (common word, limit 100)", 0),
        ("search by name (rare string)", 1),
        ("search by category (limit 100)", 2),
    ] {
        let (a, h) = (api.clone(), hits.clone());
        h.store(0, Ordering::Relaxed);
        let mut p = run(name, conc, None, args.secs, move |i| {
            let (a, h) = (a.clone(), h.clone());
            async move {
                let mut r = Rng(seed ^ (i as u64) << 4 ^ kind);
                let q = match kind {
                    0 => SearchQuery {
                        q: Some(r.pick(WORDS).to_string()),
                        ..Default::default()
                    },
                    1 => SearchQuery {
                        q: Some(format!("-{:06}.", r.below(1_000_000))),
                        ..Default::default()
                    },
                    _ => SearchQuery {
                        category: Some(
                            [
                                "audio", "video", "image", "text", "document", "archive", "other",
                            ][r.below(7) as usize]
                                .to_string(),
                        ),
                        ..Default::default()
                    },
                };
                match a.search(&q).await {
                    Ok(resp) => {
                        h.fetch_add(resp.contents.len(), Ordering::Relaxed);
                        true
                    }
                    Err(e) => {
                        eprintln!("search: {e}");
                        false
                    }
                }
            }
        })
        .await;
        p.note = format!(
            "{:.1} contents per answer",
            hits.load(Ordering::Relaxed) as f64 / p.requests.max(1) as f64
        );
        p.print();
    }

    // 7. Peer lists: the full list (paged) and an incremental poll.
    let a = api.clone();
    let p = run(
        "peers full list (all pages)",
        conc.min(4),
        None,
        args.secs / 2.0,
        move |_| {
            let a = a.clone();
            async move {
                let mut q = PeersQuery::default();
                loop {
                    match a.peers(&q).await {
                        Ok(r) if r.more => {
                            q.since = r.seq;
                            q.epoch = Some(r.epoch);
                        }
                        Ok(_) => return true,
                        Err(e) => {
                            eprintln!("peers: {e}");
                            return false;
                        }
                    }
                }
            }
        },
    )
    .await;
    p.print();
    let first = api.peers(&PeersQuery::default()).await;
    if let Ok(mut cur) = first {
        while cur.more {
            match api
                .peers(&PeersQuery {
                    since: cur.seq,
                    epoch: Some(cur.epoch.clone()),
                    limit: None,
                    swarm: None,
                })
                .await
            {
                Ok(r) => cur = r,
                Err(_) => break,
            }
        }
        let (a, since, epoch) = (api.clone(), cur.seq, cur.epoch.clone());
        let p = run(
            "peers incremental poll (no change)",
            conc,
            None,
            args.secs / 2.0,
            move |_| {
                let (a, epoch) = (a.clone(), epoch.clone());
                async move {
                    a.peers(&PeersQuery {
                        since,
                        epoch: Some(epoch),
                        limit: None,
                        swarm: None,
                    })
                    .await
                    .is_ok()
                }
            },
        )
        .await;
        p.print();
    }

    match api.stats().await {
        Ok(s) => println!(
            "tracker stats: {} nodes online, {} files stored, database {:.1} MiB, {} requests refused as busy",
            s.nodes_online,
            s.files,
            s.db_bytes as f64 / (1 << 20) as f64,
            s.refused
        ),
        Err(e) => println!("tracker stats: unavailable ({e})"),
    }
}
