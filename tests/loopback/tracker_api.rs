//! The tracker's HTTP API and the node's tracker client, against real
//! `lanshare tracker` processes on 127.0.0.1 (port 0 unless a test restarts
//! one on the same port). Every process is killed by PID when its guard
//! drops, even when the test fails.

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use lanshare::api::FoundVia;
use lanshare::chunkset::{Bitmap, ChunkSet};
use lanshare::dict::Dict;
use lanshare::id::{ContentId, NodeId};
use lanshare::identity::Identity;
use lanshare::inventory::Inventory;
use lanshare::manifest::Category;
use lanshare::peer::dial::Dialer;
use lanshare::swarm::Mode;
use lanshare::tracker::client::{Api, ClientError};
use lanshare::tracker::proto::{
    Entry, FullAnnounce, HeartbeatRequest, PatchAnnounce, PeersQuery, RegisterRequest,
    RegisterResponse, SearchQuery,
};
use lanshare::tracker::sign;
use lanshare::tracker::{NodeInfo, follow};
use lanshare::wire::InventoryEntry;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const BIN: &str = env!("CARGO_BIN_EXE_lanshare");
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A `lanshare tracker` process, killed when dropped.
struct Tracker {
    child: Option<Child>,
    addr: SocketAddr,
    db: PathBuf,
    stderr: PathBuf,
    extra: Vec<String>,
}

impl Tracker {
    /// Starts a tracker on 127.0.0.1:0 with the database `db`.
    fn start(db: &Path, extra: &[&str]) -> Tracker {
        Self::start_on(
            db,
            "127.0.0.1:0",
            extra.iter().map(|s| s.to_string()).collect(),
        )
    }

    fn start_on(db: &Path, listen: &str, extra: Vec<String>) -> Tracker {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let stderr = db.with_extension(format!("{n}.stderr"));
        let mut child = Command::new(BIN)
            .args(["tracker", "--listen", listen, "--db"])
            .arg(db)
            .args(&extra)
            .env("RUST_LOG", "lanshare=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&stderr).expect("create stderr file"))
            .spawn()
            .expect("start lanshare tracker");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut guard = Tracker {
            child: Some(child),
            addr: "127.0.0.1:1".parse().unwrap(),
            db: db.to_path_buf(),
            stderr,
            extra,
        };
        let line = rx.recv_timeout(Duration::from_secs(20)).unwrap_or_default();
        let url = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("http://"))
            .unwrap_or_else(|| {
                panic!(
                    "the tracker printed no address (stdout {line:?}); stderr:\n{}",
                    guard.log()
                )
            });
        guard.addr = url.parse().expect("a socket address");
        guard
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn api(&self) -> Api {
        Api::new(&self.url())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL: a crash.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, and waits for a clean exit.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(st)) = c.try_wait() {
                return st;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        panic!("the tracker did not stop within 10 s of SIGTERM");
    }

    /// Starts a tracker again on the same address and database.
    fn restart(&self) -> Tracker {
        Self::start_on(&self.db, &self.addr.to_string(), self.extra.clone())
    }
}

impl Drop for Tracker {
    fn drop(&mut self) {
        self.kill();
    }
}

fn temp() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// Node `n`'s key: every node of these tests signs with its own.
fn key(n: u8) -> Identity {
    Identity::from_seed([n; 32])
}

fn node_id(n: u8) -> NodeId {
    key(n).node_id()
}

/// The key of a node id made by [`node_id`].
fn signer(id: NodeId) -> Identity {
    static IDS: std::sync::OnceLock<std::collections::HashMap<NodeId, u8>> =
        std::sync::OnceLock::new();
    let ids = IDS.get_or_init(|| (0..=255u8).map(|n| (node_id(n), n)).collect());
    key(*ids.get(&id).expect("an id made by node_id()"))
}

/// A registration of `id` (made by [`node_id`]), with its key.
fn register_req(id: NodeId, name: &str, port: u16, addrs: Vec<IpAddr>) -> RegisterRequest {
    RegisterRequest {
        id,
        name: name.into(),
        port,
        addrs,
        key: signer(id).public_key(),
        swarm: None,
    }
}

fn cid(n: u8) -> ContentId {
    ContentId([n; 32])
}

fn entry(id: u8, name: &str, size: u64) -> Entry {
    Entry {
        id: cid(id),
        name: name.into(),
        size,
        category: None,
        comment: String::new(),
        have: None,
        total: None,
    }
}

async fn register(api: &Api, id: NodeId, name: &str, port: u16) -> RegisterResponse {
    api.register(
        &signer(id),
        &register_req(id, name, port, vec!["10.9.0.1".parse().unwrap()]),
    )
    .await
    .expect("register")
}

async fn announce(api: &Api, id: NodeId, token: &str, digest: u8, entries: Vec<Entry>) {
    api.announce_full(
        &signer(id),
        token,
        &FullAnnounce {
            digest: Some([digest; 16]),
            entries,
            more: false,
        },
    )
    .await
    .expect("announce");
}

async fn search(api: &Api, q: Option<&str>, category: Option<&str>) -> Vec<(ContentId, u32)> {
    let r = api
        .search(&SearchQuery {
            q: q.map(Into::into),
            category: category.map(Into::into),
            limit: None,
        })
        .await
        .expect("search");
    r.contents.iter().map(|c| (c.id, c.holders_total)).collect()
}

/// A raw request: (status, JSON body or Null).
async fn raw(
    method: &str,
    url: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Option<Vec<u8>>,
) -> (u16, Value) {
    raw_with(method, url, token, content_type, body, None).await
}

/// [`raw`] with an `X-Lanshare-Sig` header value.
async fn raw_with(
    method: &str,
    url: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Option<Vec<u8>>,
    sig: Option<&str>,
) -> (u16, Value) {
    let client = reqwest::Client::new();
    let mut rb = client.request(method.parse().unwrap(), url);
    if let Some(sig) = sig {
        rb = rb.header(sign::SIG_HEADER, sig);
    }
    if let Some(t) = token {
        rb = rb.header("authorization", format!("Bearer {t}"));
    }
    if let Some(ct) = content_type {
        rb = rb.header("content-type", ct);
    }
    if let Some(b) = body {
        rb = rb.body(b);
    }
    let resp = rb.send().await.expect("the tracker answers");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.unwrap_or_default();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn json_req(method: &str, url: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    raw(
        method,
        url,
        token,
        Some("application/json"),
        Some(serde_json::to_vec(body).unwrap()),
    )
    .await
}

/// A request signed by `who` as a node signs it; `seq` overrides the
/// sequence number (None: the next of this process). The path signed is
/// the URL's.
async fn signed_req(
    who: &Identity,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&Value>,
    seq: Option<u64>,
) -> (u16, Value) {
    let path = reqwest::Url::parse(url).unwrap().path().to_string();
    let bytes = body.map(|b| serde_json::to_vec(b).unwrap());
    let signed = bytes.as_deref().unwrap_or_default();
    let seq = seq.unwrap_or_else(|| sign::next_seq(sign::now_us()));
    let header = sign::sign(who, method, &path, seq, signed).to_value();
    raw_with(
        method,
        url,
        token,
        bytes.as_ref().map(|_| "application/json"),
        bytes.clone(),
        Some(&header),
    )
    .await
}

async fn wait_for<F: FnMut() -> bool>(what: &str, limit: Duration, mut f: F) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out after {limit:?} waiting for {what}");
}

#[tokio::test]
async fn register_announce_search_and_list_peers() {
    let dir = temp();
    let t = Tracker::start(&dir.path().join("t.db"), &[]);
    let api = t.api();
    let (a, b) = (node_id(1), node_id(2));
    let ra = register(&api, a, "alice", 7001).await;
    assert_eq!(ra.observed_addr, "127.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(ra.stored_digest, None);
    let rb = register(&api, b, "bob", 7002).await;
    let mut song = entry(2, "Song.mp3", 5 << 20);
    song.have = Some(2);
    song.comment = "live\nrecording".into();
    announce(
        &api,
        a,
        &ra.token,
        0xa1,
        vec![entry(1, "Holiday Photo.JPG", 3 << 20), song],
    )
    .await;
    announce(
        &api,
        b,
        &rb.token,
        0xb1,
        vec![
            entry(1, "holiday-photo.jpg", 3 << 20),
            entry(3, "report.pdf", 100),
        ],
    )
    .await;

    // By name: case-insensitive substring, one content with both holders.
    let hits = api
        .search(&SearchQuery {
            q: Some("PHOTO".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(hits.contents.len(), 1, "{hits:?}");
    let c = &hits.contents[0];
    assert_eq!(
        (c.id, c.holders_total, c.complete, c.partial),
        (cid(1), 2, 2, 0)
    );
    assert_eq!(c.category, Category::Image);
    assert_eq!(c.names.len(), 2);
    let alice = c
        .holders
        .iter()
        .find(|h| h.id == a)
        .expect("alice holds it");
    assert_eq!((alice.port, alice.have, alice.total), (7001, 3, 3));
    assert_eq!(alice.addrs[0], "127.0.0.1".parse::<IpAddr>().unwrap());
    assert!(alice.addrs.contains(&"10.9.0.1".parse().unwrap()));

    // By category, with partial holders and comments.
    let hits = api
        .search(&SearchQuery {
            category: Some("audio".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(hits.contents.len(), 1);
    let s = &hits.contents[0];
    assert_eq!((s.id, s.complete, s.partial), (cid(2), 0, 1));
    assert_eq!(s.comment, "live\nrecording");
    assert_eq!((s.holders[0].have, s.holders[0].total), (2, 5));
    assert_eq!(
        search(&api, Some("report"), Some("document")).await,
        vec![(cid(3), 1)]
    );
    assert!(search(&api, Some("report"), Some("audio")).await.is_empty());
    assert!(search(&api, Some("zzz-nothing"), None).await.is_empty());
    // Short queries (under the trigram index's 3 characters) work too.
    assert_eq!(search(&api, Some("mp"), None).await, vec![(cid(2), 1)]);
    assert_eq!(search(&api, None, None).await.len(), 3);

    // Peers: a full list, then nothing new.
    let p = api.peers(&PeersQuery::default()).await.unwrap();
    assert!(p.full && !p.more);
    let mut ids: Vec<NodeId> = p.peers.iter().map(|p| p.id).collect();
    ids.sort();
    assert_eq!(ids, vec![a, b]);
    let pa = p.peers.iter().find(|x| x.id == a).unwrap();
    assert_eq!((pa.name.as_str(), pa.port, pa.files), ("alice", 7001, 2));
    assert_eq!(pa.digest, Some([0xa1; 16]));
    let again = api
        .peers(&PeersQuery {
            since: p.seq,
            epoch: Some(p.epoch.clone()),
            swarm: None,
            limit: None,
        })
        .await
        .unwrap();
    assert!(!again.full && again.peers.is_empty() && again.gone.is_empty());
    // Paged: one peer per page.
    let page = api
        .peers(&PeersQuery {
            since: 0,
            epoch: None,
            swarm: None,
            limit: Some(1),
        })
        .await
        .unwrap();
    assert_eq!(page.peers.len(), 1);
    assert!(page.more);
    let next = api
        .peers(&PeersQuery {
            since: page.seq,
            epoch: Some(page.epoch.clone()),
            swarm: None,
            limit: Some(1),
        })
        .await
        .unwrap();
    assert_eq!(next.peers.len(), 1);
    assert_ne!(next.peers[0].id, page.peers[0].id);
    // Another epoch (a replaced database) gets a full list.
    let other = api
        .peers(&PeersQuery {
            since: p.seq,
            epoch: Some("0000".into()),
            swarm: None,
            limit: None,
        })
        .await
        .unwrap();
    assert!(other.full && other.peers.len() == 2);

    let stats = api.stats().await.unwrap();
    assert_eq!(
        (stats.nodes_online, stats.files, stats.files_online),
        (2, 4, 4)
    );
    assert!(stats.db_bytes > 0);
}

#[tokio::test]
async fn heartbeat_and_incremental_announce() {
    let dir = temp();
    let t = Tracker::start(&dir.path().join("t.db"), &[]);
    let api = t.api();
    let a = node_id(1);
    let r = register(&api, a, "alice", 7001).await;
    let hb = |d: u8| HeartbeatRequest {
        digest: [d; 16],
        addrs: None,
    };
    // Nothing announced yet: the tracker asks for the inventory.
    assert!(
        api.heartbeat(&signer(a), &r.token, &hb(1))
            .await
            .unwrap()
            .send_inventory
    );
    announce(
        &api,
        a,
        &r.token,
        1,
        vec![entry(1, "a.txt", 1), entry(2, "b.txt", 1)],
    )
    .await;
    let resp = api.heartbeat(&signer(a), &r.token, &hb(1)).await.unwrap();
    assert!(!resp.send_inventory);
    assert_eq!(resp.observed_addr, "127.0.0.1".parse::<IpAddr>().unwrap());
    assert!(
        api.heartbeat(&signer(a), &r.token, &hb(2))
            .await
            .unwrap()
            .send_inventory
    );

    let before = api.peers(&PeersQuery::default()).await.unwrap();
    // A change against another base is refused with the stored digest.
    let err = api
        .announce_patch(
            &signer(a),
            &r.token,
            &PatchAnnounce {
                base: Some([9; 16]),
                digest: Some([2; 16]),
                upsert: vec![],
                remove: vec![cid(1)],
                more: false,
            },
        )
        .await
        .unwrap_err();
    match &err {
        ClientError::Status {
            status,
            stored_digest,
            ..
        } => {
            assert_eq!(*status, 409);
            assert_eq!(
                stored_digest.as_deref(),
                Some("01010101010101010101010101010101")
            );
        }
        e => panic!("expected 409, got {e}"),
    }
    let ok = api
        .announce_patch(
            &signer(a),
            &r.token,
            &PatchAnnounce {
                base: Some([1; 16]),
                digest: Some([2; 16]),
                upsert: vec![entry(3, "c.txt", 1), entry(2, "b-renamed.txt", 1)],
                remove: vec![cid(1)],
                more: false,
            },
        )
        .await
        .unwrap();
    assert_eq!((ok.digest, ok.files), (Some([2; 16]), 2));
    assert!(search(&api, Some("a.txt"), None).await.is_empty());
    assert_eq!(search(&api, Some("renamed"), None).await, vec![(cid(2), 1)]);
    assert_eq!(search(&api, Some("c.txt"), None).await, vec![(cid(3), 1)]);
    assert!(
        !api.heartbeat(&signer(a), &r.token, &hb(2))
            .await
            .unwrap()
            .send_inventory
    );

    // The incremental peer list carries just the changed node.
    let delta = api
        .peers(&PeersQuery {
            since: before.seq,
            epoch: Some(before.epoch.clone()),
            swarm: None,
            limit: None,
        })
        .await
        .unwrap();
    assert!(!delta.full);
    assert_eq!(delta.peers.len(), 1);
    assert_eq!(
        (delta.peers[0].digest, delta.peers[0].files),
        (Some([2; 16]), 2)
    );

    // An upload in parts: no digest is listed until the last part.
    api.announce_full(
        &signer(a),
        &r.token,
        &FullAnnounce {
            digest: None,
            entries: vec![entry(4, "part1.bin", 1)],
            more: true,
        },
    )
    .await
    .unwrap();
    let mid = api.peers(&PeersQuery::default()).await.unwrap();
    assert_eq!(mid.peers[0].digest, None);
    let done = api
        .announce_patch(
            &signer(a),
            &r.token,
            &PatchAnnounce {
                base: None,
                digest: Some([5; 16]),
                upsert: vec![entry(5, "part2.bin", 1)],
                remove: vec![],
                more: false,
            },
        )
        .await
        .unwrap();
    assert_eq!((done.digest, done.files), (Some([5; 16]), 2));
    assert_eq!(search(&api, Some("part"), None).await.len(), 2);
    assert!(search(&api, Some("c.txt"), None).await.is_empty());

    // Changed addresses are listed.
    api.heartbeat(
        &signer(a),
        &r.token,
        &HeartbeatRequest {
            digest: [5; 16],
            addrs: Some(vec!["10.7.7.7".parse().unwrap()]),
        },
    )
    .await
    .unwrap();
    let p = api.peers(&PeersQuery::default()).await.unwrap();
    assert!(p.peers[0].addrs.contains(&"10.7.7.7".parse().unwrap()));
    assert!(!p.peers[0].addrs.contains(&"10.9.0.1".parse().unwrap()));
}

#[tokio::test]
async fn deregister_removes_the_node_and_its_content() {
    let dir = temp();
    let t = Tracker::start(&dir.path().join("t.db"), &[]);
    let api = t.api();
    let a = node_id(1);
    let r = register(&api, a, "alice", 7001).await;
    announce(&api, a, &r.token, 1, vec![entry(1, "movie.mkv", 10)]).await;
    let before = api.peers(&PeersQuery::default()).await.unwrap();
    assert_eq!(search(&api, Some("movie"), None).await.len(), 1);

    let (status, _) = signed_req(
        &key(1),
        "DELETE",
        &format!("{}/v1/nodes/{a}", t.url()),
        Some(&r.token),
        None,
        None,
    )
    .await;
    assert_eq!(status, 204);
    assert!(search(&api, Some("movie"), None).await.is_empty());
    assert!(search(&api, None, Some("video")).await.is_empty());
    let after = api
        .peers(&PeersQuery {
            since: before.seq,
            epoch: Some(before.epoch.clone()),
            swarm: None,
            limit: None,
        })
        .await
        .unwrap();
    assert_eq!(after.gone, vec![a]);
    assert!(
        api.peers(&PeersQuery::default())
            .await
            .unwrap()
            .peers
            .is_empty()
    );
    // The token no longer works; registering again does.
    let err = api
        .heartbeat(
            &signer(a),
            &r.token,
            &HeartbeatRequest {
                digest: [1; 16],
                addrs: None,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(404), "{err}");
    let again = register(&api, a, "alice", 7001).await;
    assert_eq!(
        again.stored_digest, None,
        "the inventory went with the node"
    );
    assert_eq!(api.stats().await.unwrap().nodes_online, 1);
}

#[tokio::test]
async fn a_silent_node_goes_offline_and_is_no_longer_offered() {
    let dir = temp();
    let t = Tracker::start(
        &dir.path().join("t.db"),
        &["--heartbeat", "0.2", "--offline-after", "1"],
    );
    let api = t.api();
    let (a, b) = (node_id(1), node_id(2));
    let ra = register(&api, a, "alice", 7001).await;
    assert_eq!(ra.heartbeat_secs, 0.2);
    assert_eq!(ra.offline_after_secs, 1.0);
    let rb = register(&api, b, "bob", 7002).await;
    announce(&api, a, &ra.token, 1, vec![entry(1, "shared.iso", 10)]).await;
    announce(&api, b, &rb.token, 2, vec![entry(1, "shared.iso", 10)]).await;
    assert_eq!(search(&api, Some("shared"), None).await, vec![(cid(1), 2)]);
    let start = api.peers(&PeersQuery::default()).await.unwrap();

    // Bob keeps heartbeating; Alice stops.
    let deadline = Instant::now() + Duration::from_millis(1800);
    while Instant::now() < deadline {
        api.heartbeat(
            &signer(b),
            &rb.token,
            &HeartbeatRequest {
                digest: [2; 16],
                addrs: None,
            },
        )
        .await
        .unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(search(&api, Some("shared"), None).await, vec![(cid(1), 1)]);
    let p = api.peers(&PeersQuery::default()).await.unwrap();
    assert_eq!(p.peers.iter().map(|p| p.id).collect::<Vec<_>>(), vec![b]);
    let delta = api
        .peers(&PeersQuery {
            since: start.seq,
            epoch: Some(start.epoch.clone()),
            swarm: None,
            limit: None,
        })
        .await
        .unwrap();
    assert_eq!(delta.gone, vec![a]);
    let stats = api.stats().await.unwrap();
    assert_eq!((stats.nodes_online, stats.nodes_offline), (1, 1));

    // A heartbeat brings Alice back, with her inventory still stored.
    let hb = api
        .heartbeat(
            &signer(a),
            &ra.token,
            &HeartbeatRequest {
                digest: [1; 16],
                addrs: None,
            },
        )
        .await
        .unwrap();
    assert!(!hb.send_inventory);
    assert_eq!(search(&api, Some("shared"), None).await, vec![(cid(1), 2)]);
}

#[tokio::test]
async fn a_restarted_tracker_keeps_its_registrations() {
    let dir = temp();
    let db = dir.path().join("t.db");
    let mut t = Tracker::start(&db, &[]);
    let api = t.api();
    let a = node_id(1);
    let r = register(&api, a, "alice", 7001).await;
    announce(&api, a, &r.token, 7, vec![entry(1, "notes.txt", 10)]).await;
    let epoch = r.epoch.clone();
    let old_pid = t.pid();
    t.kill(); // a crash: no clean shutdown

    let t2 = t.restart();
    assert_ne!(old_pid, t2.pid());
    assert_eq!(t2.addr, t.addr);
    let api = t2.api();
    // The old token still works and the inventory is still there.
    let hb = api
        .heartbeat(
            &signer(a),
            &r.token,
            &HeartbeatRequest {
                digest: [7; 16],
                addrs: None,
            },
        )
        .await
        .expect("the restarted tracker knows the node");
    assert!(!hb.send_inventory);
    assert_eq!(search(&api, Some("notes"), None).await, vec![(cid(1), 1)]);
    let again = register(&api, a, "alice", 7001).await;
    assert_eq!(again.epoch, epoch);
    assert_eq!(again.stored_digest, Some([7; 16]));

    // A clean stop (SIGTERM) exits 0.
    let mut t2 = t2;
    assert!(t2.stop().success(), "log:\n{}", t2.log());
}

#[tokio::test]
async fn malformed_requests_get_a_4xx_and_the_tracker_stays_up() {
    let dir = temp();
    let t = Tracker::start(
        &dir.path().join("t.db"),
        &["--max-files-per-node", "3", "--max-body", "1"],
    );
    let base = t.url();
    let api = t.api();
    let a = node_id(1);
    let r = register(&api, a, "alice", 7001).await;
    let tok = r.token.as_str();
    let nodes = format!("{base}/v1/nodes");
    let inv = format!("{base}/v1/nodes/{a}/inventory");
    let hb = format!("{base}/v1/nodes/{a}/heartbeat");
    let digest = "01".repeat(16);
    let good_entry = json!({"id": "ab".repeat(32), "name": "a.txt", "size": 1});

    // (what, status, response)
    let mut cases: Vec<(&str, u16, Value)> = Vec::new();
    let (s, v) = raw(
        "POST",
        &nodes,
        None,
        Some("application/json"),
        Some(b"{\"id\":".to_vec()),
    )
    .await;
    cases.push(("truncated JSON", 400, v.clone()));
    assert_eq!(s, 400, "{v}");
    let (s, v) = raw(
        "POST",
        &nodes,
        None,
        Some("application/json"),
        Some(b"\xff\xfe".to_vec()),
    )
    .await;
    assert_eq!(s, 400, "not UTF-8: {v}");
    cases.push(("not UTF-8", s, v));
    let (s, v) = raw("POST", &nodes, None, None, Some(b"{}".to_vec())).await;
    assert_eq!(s, 415, "no content type: {v}");
    cases.push(("no content type", s, v));
    let (s, v) = json_req(
        "POST",
        &nodes,
        None,
        &json!({"id": "1".repeat(32), "key": "1".repeat(64), "name": "x", "port": "80"}),
    )
    .await;
    assert_eq!(s, 422, "port as a string: {v}");
    assert!(v["error"].as_str().unwrap().contains("port"), "{v}");
    cases.push(("wrong type", s, v));
    let (s, v) = json_req(
        "POST",
        &nodes,
        None,
        &json!({"id": "1".repeat(32), "key": "1".repeat(64), "name": "x", "port": 70000}),
    )
    .await;
    assert_eq!(s, 422, "port out of range: {v}");
    cases.push(("port out of range", s, v));
    let (s, v) = json_req(
        "POST",
        &nodes,
        None,
        &json!({"id": "xyz", "name": "x", "port": 80}),
    )
    .await;
    assert_eq!(s, 422, "bad id: {v}");
    assert!(
        v["error"].as_str().unwrap().contains("not a node id"),
        "{v}"
    );
    cases.push(("bad id in body", s, v));
    let (s, v) = json_req(
        "POST",
        &nodes,
        None,
        &json!({"id": "1".repeat(32), "key": "1".repeat(64), "name": "evil\u{1b}[2J", "port": 80}),
    )
    .await;
    assert_eq!(s, 422, "control characters: {v}");
    assert!(v["error"].as_str().unwrap().contains("control"), "{v}");
    cases.push(("control characters in the name", s, v));
    let (s, v) = json_req(
        "POST",
        &nodes,
        None,
        &json!({"id": "1".repeat(32), "key": "1".repeat(64), "name": "x".repeat(65), "port": 80}),
    )
    .await;
    assert_eq!(s, 422, "name too long: {v}");
    cases.push(("name too long", s, v));
    let (s, v) = json_req(
        "POST",
        &nodes,
        None,
        &json!({"id": "1".repeat(32), "key": "1".repeat(64), "name": "x", "port": 80, "addrs": ["224.0.0.1"]}),
    )
    .await;
    assert_eq!(s, 422, "multicast address: {v}");
    cases.push(("multicast address", s, v));
    let (s, v) = json_req(
        "POST",
        &nodes,
        None,
        &json!({"id": "1".repeat(32), "key": "1".repeat(64), "name": "x", "port": 80, "addrs": ["not-an-ip"]}),
    )
    .await;
    assert_eq!(s, 422, "not an address: {v}");
    cases.push(("not an address", s, v));
    let big = json!({"id": "1".repeat(32), "key": "1".repeat(64), "name": "x", "port": 80, "pad": "p".repeat(70 * 1024)});
    let (s, v) = json_req("POST", &nodes, None, &big).await;
    assert_eq!(s, 413, "register body over 64 KiB: {v}");
    cases.push(("oversized register body", s, v));
    let huge = json!({"digest": digest, "entries": [], "pad": "p".repeat(1100 * 1024)});
    let (s, v) = json_req("PUT", &inv, Some(tok), &huge).await;
    assert_eq!(s, 413, "inventory body over --max-body: {v}");
    cases.push(("oversized inventory body", s, v));

    let (s, v) = json_req(
        "POST",
        &format!("{base}/v1/nodes/xyz/heartbeat"),
        Some(tok),
        &json!({"digest": digest}),
    )
    .await;
    assert_eq!(s, 400, "bad id in the path: {v}");
    cases.push(("bad id in the path", s, v));
    let stranger = format!("{base}/v1/nodes/{}/heartbeat", "f".repeat(32));
    let (s, v) = json_req("POST", &stranger, Some(tok), &json!({"digest": digest})).await;
    assert_eq!(s, 404, "unknown node: {v}");
    assert!(v["error"].as_str().unwrap().contains("register"), "{v}");
    cases.push(("unknown node", s, v));
    let (s, v) = json_req(
        "POST",
        &hb,
        Some("0".repeat(64).as_str()),
        &json!({"digest": digest}),
    )
    .await;
    assert_eq!(s, 401, "bad token: {v}");
    cases.push(("bad token", s, v));
    let (s, v) = json_req("POST", &hb, None, &json!({"digest": digest})).await;
    assert_eq!(s, 401, "no token: {v}");
    cases.push(("no token", s, v));
    let (s, v) = json_req("POST", &hb, Some(tok), &json!({"digest": "12"})).await;
    assert_eq!(s, 422, "short digest: {v}");
    cases.push(("short digest", s, v));
    let (s, v) = json_req("PUT", &inv, Some(tok), &json!({"entries": [good_entry]})).await;
    assert_eq!(s, 422, "no digest: {v}");
    cases.push(("missing digest", s, v));

    let entries: Vec<Value> = (1..=4u8)
        .map(|i| json!({"id": format!("{i:02x}").repeat(32), "name": format!("f{i}"), "size": 1}))
        .collect();
    let (s, v) = json_req(
        "PUT",
        &inv,
        Some(tok),
        &json!({"digest": digest, "entries": entries}),
    )
    .await;
    assert_eq!(s, 413, "too many entries: {v}");
    cases.push(("too many entries", s, v));
    let three = entries[..3].to_vec();
    let (s, _) = signed_req(
        &key(1),
        "PUT",
        &inv,
        Some(tok),
        Some(&json!({"digest": digest, "entries": three})),
        None,
    )
    .await;
    assert_eq!(s, 200, "three entries fit");
    let patch = json!({"base": digest, "digest": "02".repeat(16), "upsert": [entries[3]]});
    let (s, v) = signed_req(&key(1), "PATCH", &inv, Some(tok), Some(&patch), None).await;
    assert_eq!(s, 413, "a change past the cap: {v}");
    cases.push(("too many entries after a change", s, v));
    let (s, v) = json_req(
        "PUT",
        &inv,
        Some(tok),
        &json!({"digest": digest, "entries": [good_entry, good_entry]}),
    )
    .await;
    assert_eq!(s, 422, "duplicate entries: {v}");
    cases.push(("duplicate entries", s, v));
    let bad_entries = [
        json!({"id": "ab".repeat(32), "name": "", "size": 1}),
        json!({"id": "ab".repeat(32), "name": "a\u{7}b", "size": 1}),
        json!({"id": "ab".repeat(32), "name": "n".repeat(256), "size": 1}),
        json!({"id": "ab".repeat(32), "name": "a", "size": 1, "comment": "tab\there"}),
        json!({"id": "ab".repeat(32), "name": "a", "size": 1, "have": 5, "total": 2}),
        json!({"id": "ab".repeat(32), "name": "a", "size": -1}),
        json!({"id": "ab".repeat(32), "name": "a", "size": 1, "category": "movies"}),
        json!({"id": "ab".repeat(31), "name": "a", "size": 1}),
    ];
    for e in bad_entries {
        let (s, v) = json_req(
            "PUT",
            &inv,
            Some(tok),
            &json!({"digest": digest, "entries": [e]}),
        )
        .await;
        assert_eq!(s, 422, "bad entry {e}: {v}");
        cases.push(("bad entry", s, v));
    }
    let (s, v) = json_req("PATCH", &inv, Some(tok), &json!({"base": digest, "digest": digest, "upsert": [good_entry], "remove": ["ab".repeat(32)]})).await;
    assert_eq!(s, 422, "upsert and remove the same id: {v}");
    cases.push(("upsert and remove one id", s, v));

    for (q, what) in [
        ("limit=0", "limit 0"),
        ("limit=abc", "limit not a number"),
        ("category=movies", "unknown category"),
        ("q=a%07b", "control character in the query"),
    ] {
        let (s, v) = raw("GET", &format!("{base}/v1/search?{q}"), None, None, None).await;
        assert_eq!(s, 400, "{what}: {v}");
        cases.push(("bad search query", s, v));
    }
    let (s, v) = raw(
        "GET",
        &format!("{base}/v1/peers?since=-1"),
        None,
        None,
        None,
    )
    .await;
    assert_eq!(s, 400, "negative since: {v}");
    cases.push(("bad peers query", s, v));
    let (s, v) = raw("GET", &format!("{base}/v2/peers"), None, None, None).await;
    assert_eq!(s, 404, "unknown route: {v}");
    cases.push(("unknown route", s, v));
    let (s, v) = raw("DELETE", &format!("{base}/v1/search"), None, None, None).await;
    assert_eq!(s, 405, "wrong method: {v}");
    cases.push(("wrong method", s, v));

    for (what, status, v) in &cases {
        assert!(
            v["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{what} ({status}): no JSON error message in {v}"
        );
    }
    // Still up, still consistent, never a 5xx.
    let (s, v) = raw("GET", &format!("{base}/v1/health"), None, None, None).await;
    assert_eq!((s, v["ok"].as_bool()), (200, Some(true)));
    let stats = api.stats().await.unwrap();
    assert_eq!((stats.nodes_online, stats.files), (1, 3));
    assert!(!t.log().contains("panicked"), "log:\n{}", t.log());
}

#[tokio::test]
async fn caps_bound_nodes_and_files() {
    let dir = temp();
    let t = Tracker::start(
        &dir.path().join("t.db"),
        &[
            "--max-nodes",
            "3",
            "--max-files",
            "4",
            "--heartbeat",
            "0.2",
            "--offline-after",
            "0.6",
        ],
    );
    let api = t.api();
    let mut tokens = Vec::new();
    for i in 1..=3 {
        let token = register(&api, node_id(i), "n", 7000).await.token;
        // A heartbeat shows the node is real (a node that never sent one
        // nor announced would make room for a newcomer).
        api.heartbeat(
            &signer(node_id(i)),
            &token,
            &HeartbeatRequest {
                digest: [0; 16],
                addrs: None,
            },
        )
        .await
        .expect("heartbeat");
        tokens.push(token);
    }
    // Every node is online and active: a fourth is refused.
    let req = register_req(node_id(4), "n4", 7000, vec![]);
    let err = api.register(&key(4), &req).await.unwrap_err();
    assert_eq!(err.status(), Some(503), "{err}");
    // Files: node 1 fills the table; node 2 cannot add more.
    announce(
        &api,
        node_id(1),
        &tokens[0],
        1,
        (1..=4).map(|i| entry(i, &format!("f{i}"), 1)).collect(),
    )
    .await;
    let err = api
        .announce_full(
            &signer(node_id(2)),
            &tokens[1],
            &FullAnnounce {
                digest: Some([2; 16]),
                entries: vec![entry(9, "g", 1)],
                more: false,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(503), "{err}");

    // Once the nodes fall silent, a newcomer evicts the one offline the
    // longest, and its files make room.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let r4 = api
        .register(&key(4), &req)
        .await
        .expect("room after eviction");
    announce(&api, node_id(4), &r4.token, 4, vec![entry(9, "g", 1)]).await;
    let stats = api.stats().await.unwrap();
    assert_eq!(stats.nodes_online + stats.nodes_offline, 3);
    assert!(stats.files <= 4, "{stats:?}");
    assert_eq!(search(&api, Some("g"), None).await, vec![(cid(9), 1)]);
}

fn inv_entry(id: u8, name: &str, chunks: ChunkSet) -> InventoryEntry {
    InventoryEntry {
        id: cid(id),
        name: name.into(),
        more_paths: Default::default(),
        size: 3 << 20,
        category: Category::from_name(name),
        comment: "from a test".into(),
        chunks,
    }
}

/// A node following the tracker, run in this process.
struct Follower {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    inventory: watch::Sender<Inventory>,
    dict: Arc<Dict>,
    id: NodeId,
}

fn start_follow(url: String, id: NodeId, port: u16, inv: Inventory) -> Follower {
    let (inv_tx, inv_rx) = watch::channel(inv);
    let (_addr_tx, addr_rx) = watch::channel(Vec::<IpAddr>::new());
    let dict = Arc::new(Dict::new());
    let cancel = CancellationToken::new();
    let key = Arc::new(signer(id));
    let task = tokio::spawn(follow(
        url,
        NodeInfo::new(
            key.clone(),
            "follower".into(),
            port,
            &Mode::Open,
            Dialer::new(key, Mode::Open, "follower", dict.clone()),
        ),
        addr_rx,
        inv_rx,
        dict.clone(),
        cancel.clone(),
    ));
    Follower {
        cancel,
        task,
        inventory: inv_tx,
        dict,
        id,
    }
}

/// Whether the tracker lists `id` with `digest`.
async fn listed(api: &Api, id: NodeId, digest: [u8; 16]) -> bool {
    match api.peers(&PeersQuery::default()).await {
        Ok(p) => p
            .peers
            .iter()
            .any(|p| p.id == id && p.digest == Some(digest)),
        Err(_) => false,
    }
}

async fn wait_listed(api: &Api, id: NodeId, digest: [u8; 16], limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if listed(api, id, digest).await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the tracker never listed node {id} with its inventory");
}

#[tokio::test]
async fn follow_registers_announces_and_fills_the_dictionary() {
    let dir = temp();
    let t = Tracker::start(
        &dir.path().join("t.db"),
        &["--heartbeat", "0.3", "--offline-after", "1"],
    );
    let api = t.api();
    // A peer that registers by hand.
    let p = node_id(0x70);
    let rp = register(&api, p, "hand-made", 7100).await;
    announce(&api, p, &rp.token, 0x77, vec![entry(50, "remote.bin", 10)]).await;

    let mut bm = Bitmap::new(3);
    bm.set(0);
    let inv = Inventory::new(vec![
        inv_entry(1, "photo.png", ChunkSet::Full),
        inv_entry(2, "half.mkv", ChunkSet::Partial(bm)),
    ]);
    let digest = inv.digest;
    let me = node_id(0x42);
    let f = start_follow(t.url(), me, 7200, inv);

    // The follower registered and announced its inventory...
    wait_listed(&api, me, digest, Duration::from_secs(10)).await;
    let hits = api
        .search(&SearchQuery {
            q: Some("half".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(hits.contents.len(), 1);
    let h = &hits.contents[0].holders[0];
    assert_eq!((h.id, h.port, h.have, h.total), (me, 7200, 1, 3));
    assert_eq!(hits.contents[0].comment, "from a test");

    // ...and put the tracker's other peer into its dictionary.
    let dict = f.dict.clone();
    wait_for(
        "the hand-made peer in the dictionary",
        Duration::from_secs(10),
        || dict.peers.peer(&p).is_some(),
    )
    .await;
    let peer = f.dict.peers.peer(&p).unwrap();
    assert!(peer.found_via.contains(&FoundVia::Tracker));
    assert_eq!(peer.addr(), "127.0.0.1:7100".parse::<SocketAddr>().unwrap());
    assert_eq!(peer.announced_digest, [0x77; 16]);
    assert_eq!(peer.contents, 1);
    assert!(peer.online);
    assert!(
        f.dict.peers.peer(&me).is_none(),
        "a node never lists itself"
    );

    // A change in the inventory reaches the tracker.
    let changed = Inventory::new(vec![
        inv_entry(1, "photo.png", ChunkSet::Full),
        inv_entry(3, "new-song.mp3", ChunkSet::Full),
    ]);
    let new_digest = changed.digest;
    f.inventory.send(changed).unwrap();
    wait_listed(&api, me, new_digest, Duration::from_secs(10)).await;
    assert_eq!(
        search(&api, Some("new-song"), None).await,
        vec![(cid(3), 1)]
    );
    assert!(search(&api, Some("half"), None).await.is_empty());

    // The hand-made peer stops heartbeating: the tracker drops it, and so
    // does the dictionary after three poll intervals.
    let dict = f.dict.clone();
    wait_for("the silent peer to expire", Duration::from_secs(10), || {
        dict.expire(std::time::Instant::now());
        dict.peers.peer(&p).is_some_and(|p| !p.online)
    })
    .await;

    // Cancelling deregisters at once (no waiting for the offline timeout).
    f.cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), f.task)
        .await
        .expect("follow returns soon after cancel")
        .unwrap();
    let p = api.peers(&PeersQuery::default()).await.unwrap();
    assert!(p.peers.iter().all(|x| x.id != f.id), "still listed: {p:?}");
    assert!(search(&api, Some("photo"), None).await.is_empty());
}

#[tokio::test]
async fn follow_backs_off_while_the_tracker_is_down_and_registers_again() {
    let dir = temp();
    let mut t = Tracker::start(
        &dir.path().join("first.db"),
        &["--heartbeat", "0.2", "--offline-after", "1"],
    );
    let addr = t.addr;
    let inv = Inventory::new(vec![inv_entry(1, "survivor.txt", ChunkSet::Full)]);
    let digest = inv.digest;
    let me = node_id(0x43);
    let f = start_follow(t.url(), me, 7300, inv);
    wait_listed(&t.api(), me, digest, Duration::from_secs(10)).await;

    // The tracker dies; something that accepts and drops connections takes
    // its port and counts the follower's attempts.
    t.kill();
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .expect("take over the tracker's port");
    let attempts = Arc::new(AtomicU32::new(0));
    let counter = attempts.clone();
    let sink = tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::Relaxed);
                drop(s);
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(4)).await;
    sink.abort();
    let _ = sink.await;
    let n = attempts.load(Ordering::Relaxed);
    eprintln!("{n} connection attempts while the tracker was down");
    // With the heartbeat of 0.2 s and no backoff there would be ~20 or more
    // attempts; backing off from 1 s gives about 3.
    assert!((1..=6).contains(&n), "{n} connection attempts in 4 s");
    assert!(
        !f.task.is_finished(),
        "follow keeps going while the tracker is down"
    );

    // A new tracker on the same port with an empty database: the node
    // registers again and announces its inventory, without a restart.
    let t2 = Tracker::start_on(
        &dir.path().join("second.db"),
        &addr.to_string(),
        ["--heartbeat", "0.2", "--offline-after", "1"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    );
    wait_listed(&t2.api(), me, digest, Duration::from_secs(30)).await;
    assert_eq!(
        search(&t2.api(), Some("survivor"), None).await,
        vec![(cid(1), 1)]
    );
    f.cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), f.task).await;
}

#[tokio::test]
async fn follow_announces_as_soon_as_the_first_inventory_is_published() {
    let dir = temp();
    // A long heartbeat: only the inventory change itself can explain a
    // prompt announce.
    let t = Tracker::start(
        &dir.path().join("t.db"),
        &["--heartbeat", "8", "--offline-after", "30"],
    );
    let api = t.api();
    let me = node_id(0x44);
    // Before the first scan the node's inventory is the empty default.
    let f = start_follow(t.url(), me, 7400, Inventory::default());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let p = api.peers(&PeersQuery::default()).await.unwrap();
        if let Some(x) = p.peers.iter().find(|x| x.id == me) {
            assert_eq!(x.digest, None, "nothing announced before a publish");
            break;
        }
        assert!(Instant::now() < deadline, "the follower never registered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let inv = Inventory::new(vec![inv_entry(1, "first.txt", ChunkSet::Full)]);
    let digest = inv.digest;
    let published = Instant::now();
    f.inventory.send(inv).unwrap();
    wait_listed(&api, me, digest, Duration::from_secs(10)).await;
    assert!(
        published.elapsed() < Duration::from_secs(3),
        "announced {:?} after the publish",
        published.elapsed()
    );
    f.cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), f.task).await;
}

#[tokio::test]
async fn follow_sends_a_big_inventory_in_parts_a_small_body_limit_accepts() {
    let dir = temp();
    let t = Tracker::start(
        &dir.path().join("t.db"),
        &[
            "--max-body",
            "1",
            "--heartbeat",
            "0.5",
            "--offline-after",
            "5",
        ],
    );
    let api = t.api();
    // About 1.8 MB of JSON: over the 1 MiB limit in one request.
    let entries: Vec<InventoryEntry> = (0..5000u32)
        .map(|i| {
            let mut id = [0u8; 32];
            id[..4].copy_from_slice(&i.to_le_bytes());
            InventoryEntry {
                id: ContentId(id),
                name: format!("file-{i:05}.dat"),
                more_paths: Default::default(),
                size: 1 << 20,
                category: Category::Other,
                comment: "c".repeat(200),
                chunks: ChunkSet::Full,
            }
        })
        .collect();
    let inv = Inventory::new(entries);
    let as_json: Vec<Entry> = inv.iter().map(|e| Entry::from_inventory(&e)).collect();
    let body = serde_json::to_vec(&as_json).unwrap().len();
    assert!(
        body > 1 << 20,
        "the test needs more than 1 MiB, has {body} bytes"
    );
    let digest = inv.digest;
    let me = node_id(0x45);
    let f = start_follow(t.url(), me, 7500, inv);
    wait_listed(&api, me, digest, Duration::from_secs(20)).await;
    let stats = api.stats().await.unwrap();
    assert_eq!(stats.files, 5000);
    assert_eq!(search(&api, Some("file-04999"), None).await.len(), 1);
    assert!(!t.log().contains("panicked"), "log:\n{}", t.log());
    f.cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), f.task).await;
}

/// Registers `per_source` new nodes from each of `sources` (their requests
/// leave from that loopback address), 8 at a time in all; returns how many
/// got each status.
async fn registration_flood(
    url: &str,
    sources: &[IpAddr],
    per_source: u32,
    tag: u8,
) -> std::collections::BTreeMap<u16, u32> {
    let mut tasks = tokio::task::JoinSet::new();
    for (s, &source) in sources.iter().enumerate() {
        let client = reqwest::Client::builder()
            .local_address(source)
            .timeout(Duration::from_secs(15))
            .build()
            .expect("an HTTP client");
        let lanes = (8 / sources.len() as u32).max(1);
        for lane in 0..lanes {
            let (client, url) = (client.clone(), format!("{url}/v1/nodes"));
            tasks.spawn(async move {
                let mut got = Vec::new();
                for i in (lane..per_source).step_by(lanes as usize) {
                    let mut seed = [tag; 32];
                    seed[8..12].copy_from_slice(&(s as u32).to_be_bytes());
                    seed[12..16].copy_from_slice(&i.to_be_bytes());
                    let me = Identity::from_seed(seed);
                    let req = RegisterRequest {
                        id: me.node_id(),
                        name: format!("fake-{s}-{i}"),
                        port: 7000,
                        addrs: vec![],
                        key: me.public_key(),
                        swarm: None,
                    };
                    let body = serde_json::to_vec(&req).unwrap();
                    let sig = sign::sign_now(&me, "POST", "/v1/nodes", &body).to_value();
                    let sent = client
                        .post(&url)
                        .header(sign::SIG_HEADER, sig)
                        .header("content-type", "application/json")
                        .body(body)
                        .send()
                        .await;
                    let status = match sent {
                        Ok(r) => r.status().as_u16(),
                        Err(_) => 0,
                    };
                    got.push(status);
                }
                got
            });
        }
    }
    let mut counts = std::collections::BTreeMap::new();
    while let Some(r) = tasks.join_next().await {
        for status in r.expect("a flood task") {
            *counts.entry(status).or_insert(0) += 1;
        }
    }
    counts
}

/// A real node registers from 127.0.0.1 and heartbeats, as a follower does.
async fn real_node(api: &Api, id: NodeId, name: &str) -> Result<String, ClientError> {
    let r = api
        .register(&signer(id), &register_req(id, name, 7373, vec![]))
        .await?;
    api.heartbeat(
        &signer(id),
        &r.token,
        &HeartbeatRequest {
            digest: [7; 16],
            addrs: None,
        },
    )
    .await?;
    Ok(r.token)
}

async fn online_ids(api: &Api) -> Vec<NodeId> {
    let mut ids = Vec::new();
    let mut q = PeersQuery {
        limit: Some(5000),
        ..PeersQuery::default()
    };
    loop {
        let p = api.peers(&q).await.expect("peers");
        ids.extend(p.peers.iter().map(|p| p.id));
        if !p.more {
            return ids;
        }
        q.since = p.seq;
        q.epoch = Some(p.epoch);
    }
}

/// Issue 8, item 11: thousands of registrations from one address filled
/// the tracker and real nodes got 503. One address now holds at most its
/// quota (`--max-nodes-per-address`, 64 by default) and the rest get 429.
#[tokio::test]
async fn a_registration_flood_from_one_address_is_held_to_its_quota() {
    let dir = temp();
    let t = Tracker::start(&dir.path().join("t.db"), &["--max-nodes", "100"]);
    let api = t.api();
    let early = node_id(0xe1);
    real_node(&api, early, "early")
        .await
        .expect("register before the flood");

    let rogue: IpAddr = "127.0.0.2".parse().unwrap();
    let started = Instant::now();
    let counts = registration_flood(&t.url(), &[rogue], 2000, 0xf1).await;
    let took = started.elapsed();
    eprintln!("flood from {rogue}: {counts:?} (status: registrations) in {took:.1?}");

    // A real node that comes after the flood gets in, and the one that
    // was there before is still listed.
    let late = node_id(0xe2);
    real_node(&api, late, "late")
        .await
        .unwrap_or_else(|e| panic!("a real node after the flood ({counts:?}, {took:?}): {e}"));
    assert_eq!(
        counts.get(&201).copied().unwrap_or(0),
        64,
        "one address gets its quota of nodes, no more: {counts:?}"
    );
    assert_eq!(
        counts.get(&429).copied().unwrap_or(0),
        2000 - 64,
        "the rest are refused with 429: {counts:?}"
    );
    let online = online_ids(&api).await;
    assert!(online.contains(&early) && online.contains(&late));
    assert_eq!(online.len(), 64 + 2, "{counts:?}");
    let stats = api.stats().await.unwrap();
    assert_eq!(stats.max_nodes_per_address, 64);
    assert!(!t.log().contains("panicked"), "log:\n{}", t.log());
}

/// Issue 8, item 11: a flood spread over many addresses (each under its
/// quota) fills `--max-nodes`; newcomers then take the place of nodes that
/// never heartbeated nor announced, instead of getting 503, and nodes that
/// did are kept.
#[tokio::test]
async fn a_full_tracker_forgets_nodes_that_never_proved_themselves() {
    let dir = temp();
    let t = Tracker::start(&dir.path().join("t.db"), &["--max-nodes", "50"]);
    let api = t.api();
    let early = node_id(0xe1);
    let early_token = real_node(&api, early, "early")
        .await
        .expect("register before the flood");

    let rogues: Vec<IpAddr> = (2..=41)
        .map(|i| format!("127.0.0.{i}").parse().unwrap())
        .collect();
    let started = Instant::now();
    let counts = registration_flood(&t.url(), &rogues, 50, 0xf2).await;
    eprintln!(
        "flood from 40 addresses: {counts:?} (status: registrations) in {:.1?}",
        started.elapsed()
    );
    let late = node_id(0xe2);
    real_node(&api, late, "late")
        .await
        .unwrap_or_else(|e| panic!("a real node after the flood ({counts:?}): {e}"));
    assert_eq!(
        counts.get(&201).copied().unwrap_or(0),
        2000,
        "every fake evicts an older fake that never proved itself: {counts:?}"
    );
    // The node that was active before the flood kept its place and token.
    api.heartbeat(
        &signer(early),
        &early_token,
        &HeartbeatRequest {
            digest: [7; 16],
            addrs: None,
        },
    )
    .await
    .expect("the early node is still registered");
    let online = online_ids(&api).await;
    assert!(online.contains(&early) && online.contains(&late));
    let stats = api.stats().await.unwrap();
    assert_eq!(stats.nodes_online + stats.nodes_offline, 50, "{stats:?}");
    assert!(!t.log().contains("panicked"), "log:\n{}", t.log());
}

/// What the tracker shows of node `id`: name, addresses, port, digest,
/// file count (None when not listed), and the names of every file it offers.
async fn shown(
    api: &Api,
    id: NodeId,
) -> (
    Option<(String, Vec<IpAddr>, u16, Option<[u8; 16]>, u32)>,
    Vec<String>,
) {
    let peers = api.peers(&PeersQuery::default()).await.expect("peers");
    let row = peers
        .peers
        .into_iter()
        .find(|p| p.id == id)
        .map(|p| (p.name, p.addrs, p.port, p.digest, p.files));
    let hits = api
        .search(&SearchQuery {
            q: None,
            category: None,
            limit: Some(1000),
        })
        .await
        .expect("search");
    let mut names: Vec<String> = hits.contents.into_iter().map(|c| c.name).collect();
    names.sort();
    (row, names)
}

/// Issue 10: a node's registration changes only when signed by its key.
/// Every change (register, heartbeat, full and incremental announce,
/// deregister) sent unsigned, signed by another key, or replayed (the same
/// sequence number again) gets 401 with an error saying so, and the node's
/// row, inventory and token stay as they were. So does a register of a
/// known id with another key.
#[tokio::test]
async fn unsigned_wrongly_signed_and_replayed_changes_get_401_and_change_nothing() {
    let dir = temp();
    let t = Tracker::start(&dir.path().join("t.db"), &[]);
    let (api, base) = (t.api(), t.url());
    let a = node_id(1);
    let r = register(&api, a, "alice", 7001).await;
    announce(&api, a, &r.token, 1, vec![entry(1, "movie.mkv", 10)]).await;
    let before = shown(&api, a).await;
    assert!(before.0.is_some(), "alice is listed");
    let tok = r.token.as_str();
    let node = format!("{base}/v1/nodes/{a}");
    let hb = format!("{node}/heartbeat");
    let inv = format!("{node}/inventory");
    let nodes = format!("{base}/v1/nodes");
    let evil_entry = json!({"id": "ee".repeat(32), "name": "evil.exe", "size": 1});
    // (method, url, body) of one change of each kind, each visible if applied.
    let changes: Vec<(&str, &str, Option<Value>)> = vec![
        (
            "POST",
            &nodes,
            Some(
                json!({"id": a.to_hex(), "key": lanshare::id::to_hex(&key(1).public_key().0),
                        "name": "mallory", "port": 6666, "addrs": ["10.66.0.1"]}),
            ),
        ),
        (
            "POST",
            &hb,
            Some(json!({"digest": "01".repeat(16), "addrs": ["10.66.0.1"]})),
        ),
        (
            "PUT",
            &inv,
            Some(json!({"digest": "ee".repeat(16), "entries": [evil_entry]})),
        ),
        (
            "PATCH",
            &inv,
            Some(
                json!({"base": "01".repeat(16), "digest": "ee".repeat(16), "upsert": [evil_entry]}),
            ),
        ),
        ("DELETE", &node, None),
    ];
    let mallory = key(2);
    for (method, url, body) in &changes {
        let what = format!("{method} {url}");
        let token = (*url != nodes).then_some(tok);
        // Unsigned.
        let bytes = body.as_ref().map(|b| serde_json::to_vec(b).unwrap());
        let ct = bytes.as_ref().map(|_| "application/json");
        let (s, v) = raw(method, url, token, ct, bytes).await;
        assert_eq!(s, 401, "unsigned {what}: {v}");
        assert!(
            v["error"].as_str().unwrap().contains("X-Lanshare-Sig"),
            "{what}: {v}"
        );
        assert_eq!(
            shown(&api, a).await,
            before,
            "unsigned {what} changed the node"
        );
        // Signed by another key.
        let (s, v) = signed_req(&mallory, method, url, token, body.as_ref(), None).await;
        assert_eq!(s, 401, "{what} signed by another key: {v}");
        assert!(
            v["error"].as_str().unwrap().contains("does not verify"),
            "{what}: {v}"
        );
        assert_eq!(
            shown(&api, a).await,
            before,
            "{what} signed by another key changed the node"
        );
    }
    // A register of alice's id with another key (signed by that key).
    let (s, v) = signed_req(
        &mallory,
        "POST",
        &nodes,
        None,
        Some(
            &json!({"id": a.to_hex(), "key": lanshare::id::to_hex(&mallory.public_key().0),
                     "name": "mallory", "port": 6666}),
        ),
        None,
    )
    .await;
    assert_eq!(s, 401, "a known id with another key: {v}");
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("not the id of the key"),
        "{v}"
    );
    assert_eq!(
        shown(&api, a).await,
        before,
        "the takeover changed the node"
    );
    // Alice's token still works: nobody replaced it.
    let ok = json!({"digest": "01".repeat(16)});
    let (s, v) = signed_req(&key(1), "POST", &hb, Some(tok), Some(&ok), None).await;
    assert_eq!(s, 200, "alice's own heartbeat: {v}");

    // Replays: a heartbeat accepted once is refused the second time, and
    // so is any request with a sequence number not above the last one.
    let seq = sign::next_seq(sign::now_us());
    let moved = json!({"digest": "01".repeat(16), "addrs": ["10.77.0.1"]});
    let (s, v) = signed_req(&key(1), "POST", &hb, Some(tok), Some(&moved), Some(seq)).await;
    assert_eq!(s, 200, "{v}");
    let after_hb = shown(&api, a).await;
    let (s, v) = signed_req(&key(1), "POST", &hb, Some(tok), Some(&moved), Some(seq)).await;
    assert_eq!(s, 401, "a replayed heartbeat: {v}");
    assert!(v["error"].as_str().unwrap().contains("replayed"), "{v}");
    for (method, url, body) in &changes {
        let token = (*url != nodes).then_some(tok);
        // Alice's own key, but an old sequence number (signed afresh, so
        // only the sequence number is wrong).
        let body = match *method {
            "POST" if *url == nodes => Some(json!({"id": a.to_hex(),
                "key": lanshare::id::to_hex(&key(1).public_key().0), "name": "alice2", "port": 7002})),
            _ => body.clone(),
        };
        let (s, v) = signed_req(&key(1), method, url, token, body.as_ref(), Some(seq)).await;
        assert_eq!(s, 401, "{method} {url} replayed: {v}");
        assert!(v["error"].as_str().unwrap().contains("replayed"), "{v}");
        assert_eq!(
            shown(&api, a).await,
            after_hb,
            "a replayed {method} {url} changed the node"
        );
    }
    // The deregistration, replayed after it was accepted, is refused too.
    let seq = sign::next_seq(sign::now_us());
    let (s, v) = signed_req(&key(1), "DELETE", &node, Some(tok), None, Some(seq)).await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = signed_req(&key(1), "DELETE", &node, Some(tok), None, Some(seq)).await;
    assert_eq!(s, 401, "a replayed deregistration: {v}");
}

/// Issue 10: a private swarm shows the tracker addresses and a tag only,
/// and each swarm sees only its own nodes.
#[tokio::test]
async fn private_swarms_are_listed_by_tag_only_and_never_announce() {
    let dir = temp();
    let t = Tracker::start(&dir.path().join("t.db"), &[]);
    let (api, base) = (t.api(), t.url());
    let (t1, t2) = ([0x11u8; 16], [0x22u8; 16]);
    let private = |n: u8, tag: [u8; 16]| {
        let mut req = register_req(node_id(n), "", 7000 + n as u16, vec![]);
        req.swarm = Some(tag);
        req
    };
    let open = register(&api, node_id(1), "olive", 7001).await;
    announce(
        &api,
        node_id(1),
        &open.token,
        1,
        vec![entry(1, "open.txt", 1)],
    )
    .await;
    let p2 = api.register(&key(2), &private(2, t1)).await.expect("p2");
    api.register(&key(3), &private(3, t1)).await.expect("p3");
    api.register(&key(4), &private(4, t2)).await.expect("p4");
    let ids = |q: PeersQuery| {
        let api = api.clone();
        async move {
            let p = api.peers(&q).await.expect("peers");
            let mut ids: Vec<(NodeId, String)> =
                p.peers.into_iter().map(|p| (p.id, p.name)).collect();
            ids.sort();
            ids
        }
    };
    let tag = |t: [u8; 16]| PeersQuery {
        swarm: Some(lanshare::id::to_hex(&t)),
        ..PeersQuery::default()
    };
    assert_eq!(
        ids(PeersQuery::default()).await,
        vec![(node_id(1), "olive".into())]
    );
    let mut want = vec![(node_id(2), String::new()), (node_id(3), String::new())];
    want.sort();
    assert_eq!(ids(tag(t1)).await, want);
    assert_eq!(ids(tag(t2)).await, vec![(node_id(4), String::new())]);
    assert!(ids(tag([0x33; 16])).await.is_empty());
    // A private node has no name and announces nothing.
    let mut named = private(5, t1);
    named.name = "bob".into();
    let err = api.register(&key(5), &named).await.unwrap_err();
    assert_eq!(err.status(), Some(422), "{err}");
    let err = api
        .announce_full(
            &key(2),
            &p2.token,
            &FullAnnounce {
                digest: Some([2; 16]),
                entries: vec![entry(2, "secret.txt", 1)],
                more: false,
            },
        )
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(422), "{err}");
    assert_eq!(search(&api, Some("secret"), None).await, vec![]);
    let (s, v) = raw(
        "GET",
        &format!("{base}/v1/peers?swarm=xyz"),
        None,
        None,
        None,
    )
    .await;
    assert_eq!(s, 400, "a bad tag: {v}");
}

/// Issue 10: a database from before signed requests (schema 1) opens and
/// is migrated; its rows stay listed, but a node's changes get 401 until it
/// registers again, signed, which replaces the old row.
#[tokio::test]
async fn a_schema_1_database_is_migrated_and_old_rows_must_register_again() {
    let dir = temp();
    let db = dir.path().join("t.db");
    let mut t = Tracker::start(&db, &[]);
    let api = t.api();
    let a = node_id(1);
    let r = register(&api, a, "alice", 7001).await;
    announce(&api, a, &r.token, 1, vec![entry(1, "old.txt", 1)]).await;
    assert!(t.stop().success());
    {
        // Back to schema 1: no key, no sequence number, no swarm.
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.execute_batch(
            "ALTER TABLE nodes DROP COLUMN key;
             ALTER TABLE nodes DROP COLUMN sig_seq;
             ALTER TABLE nodes DROP COLUMN swarm;
             UPDATE meta SET value = '1' WHERE key = 'schema';",
        )
        .unwrap();
    }
    let t = t.restart();
    let api = t.api();
    assert!(t.log().contains("upgraded to schema 2"), "{}", t.log());
    assert!(
        shown(&api, a).await.0.is_some(),
        "the old row is still listed"
    );
    let hb = HeartbeatRequest {
        digest: [1; 16],
        addrs: None,
    };
    let err = api.heartbeat(&key(1), &r.token, &hb).await.unwrap_err();
    assert_eq!(err.status(), Some(401), "{err}");
    assert!(
        err.to_string().contains("before requests were signed"),
        "{err}"
    );
    let again = api
        .register(&key(1), &register_req(a, "alice", 7001, vec![]))
        .await
        .expect("a signed register replaces the old row");
    assert_eq!(
        again.stored_digest, None,
        "the old row's inventory went with it"
    );
    api.heartbeat(&key(1), &again.token, &hb)
        .await
        .expect("signed heartbeat");
}
