//! Hostile-peer regression tests: store (issue 8, bug 1, item 10 and the
//! symlink / permission items). Each runs against real `lanshare` nodes on
//! loopback; the rogue peers below speak the protocol through the library's
//! own `lanshare::wire` types.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lanshare::chunkset::{Bitmap, ChunkSet};
use lanshare::id::ContentId;
use lanshare::identity::Identity;
use lanshare::manifest::{CHUNK_SIZE, Category, Manifest, manifest_of};
use lanshare::peer::noise;
use lanshare::swarm::Mode;
use lanshare::wire::InventoryEntry;
use lanshare::wire::frame::{
    self, ErrorCode, HEADER_LEN, InventoryPage, K_R_CHUNK, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME,
    Request, Response,
};

use crate::harness::{BIN, Net, Node, data, sha256_hex, wait_until};

const MIB: usize = 1 << 20;

/// Runs `lanshare ARGS --home HOME` in the background.
fn spawn_cli(node: &Node, args: &[&str]) -> Child {
    Command::new(BIN)
        .args(args)
        .arg("--home")
        .arg(&node.home)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run lanshare")
}

/// Waits for a child at most `limit`; kills it (by its PID) when it takes
/// longer. `None` when it had to be killed.
fn wait_for(mut child: Child, limit: Duration) -> Option<Output> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return child.wait_with_output().ok();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// `status --json` within `limit`, or `None` when the node does not answer.
fn status_within(node: &Node, limit: Duration) -> Option<serde_json::Value> {
    let out = wait_for(spawn_cli(node, &["status", "--json"]), limit)?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).expect("status --json is JSON"))?
}

fn id_of(content: &[u8]) -> ContentId {
    manifest_of(content, CHUNK_SIZE).content_id()
}

fn listed(node: &Node, id: &ContentId) -> bool {
    let hex = id.to_hex();
    node.ls()
        .iter()
        .any(|v| v["id"].as_str() == Some(hex.as_str()))
}

/// Bug 1: a content whose name is `a.` + 253 x `b` (255 bytes), saved into
/// a downloads/ that already holds that name, made `Partial::finish` spin
/// forever on a runtime thread. Now the download lands under a shorter
/// free name, and the node answers throughout.
#[test]
fn saving_a_download_whose_name_is_taken_ends_and_the_node_answers() {
    let net = Net::new();
    let long = format!("a.{}", "b".repeat(253));
    assert_eq!(long.len(), 255);
    let content = data(300_000, 81);
    let _alpha = net.node("alpha", &[(long.as_str(), &content)]);
    // beta already holds a different file under that very name.
    let beta_home = net.home("beta");
    std::fs::create_dir_all(beta_home.join("downloads")).unwrap();
    std::fs::write(beta_home.join("downloads").join(&long), b"mine, keep it").unwrap();
    let beta = net.node("beta", &[]);
    let id = id_of(&content);
    assert!(
        wait_until(Duration::from_secs(10), || listed(&beta, &id)),
        "beta never saw alpha's file: {:?}",
        beta.ls()
    );

    let hex = id.to_hex();
    let fetch = spawn_cli(&beta, &["fetch", &hex[..16]]);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        status_within(&beta, Duration::from_secs(5)).is_some(),
        "beta stopped answering `status` while saving the download"
    );
    let out = wait_for(fetch, Duration::from_secs(20)).unwrap_or_else(|| {
        panic!(
            "the fetch never ended (the name loop spins); beta answers status: {}",
            status_within(&beta, Duration::from_secs(3)).is_some()
        )
    });
    assert!(
        out.status.success(),
        "fetch failed: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let status = status_within(&beta, Duration::from_secs(5)).expect("beta answers after");
    assert!(status["id"].is_string());

    assert_eq!(
        std::fs::read(beta.downloads().join(&long)).unwrap(),
        b"mine, keep it",
        "the existing file is never replaced"
    );
    let saved: Vec<_> = std::fs::read_dir(beta.downloads())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().into_string().unwrap())
        .filter(|n| *n != long && !n.starts_with(".lanshare"))
        .collect();
    assert_eq!(saved.len(), 1, "one new file in downloads/: {saved:?}");
    let name = &saved[0];
    assert!(
        name.len() <= 255 && name.starts_with("a.bbb"),
        "saved as {name:?}"
    );
    assert_eq!(
        sha256_hex(&std::fs::read(beta.downloads().join(name)).unwrap()),
        sha256_hex(&content)
    );
}

// ---------------------------------------------------------------------------
// A rogue holder: serves one content's manifest, and only the chunks below
// `allow` (it answers "no chunk" to the others), like a holder that stopped
// mid-way. Reached with `up --peer`, so no multicast is involved.

struct RogueHolder {
    addr: SocketAddr,
    allow: Arc<AtomicU32>,
    served: Arc<Mutex<Vec<u32>>>,
    stop: Arc<AtomicBool>,
}

impl Drop for RogueHolder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
    }
}

fn read_request(s: &mut TcpStream) -> Option<Request> {
    let mut h = [0u8; HEADER_LEN];
    s.read_exact(&mut h).ok()?;
    let (kind, len) = frame::parse_header(&h, MAX_REQUEST_FRAME).ok()?;
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Request::decode(kind, &body).ok()
}

impl RogueHolder {
    fn start(name: &str, content: Vec<u8>, allow: u32) -> RogueHolder {
        let manifest = manifest_of(&content, CHUNK_SIZE);
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let allow = Arc::new(AtomicU32::new(allow));
        let served = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let entry = InventoryEntry {
            id: manifest.content_id(),
            name: name.into(),
            more_paths: Default::default(),
            size: manifest.size,
            category: Category::Other,
            comment: String::new(),
            chunks: ChunkSet::Full,
        };
        // The digest peers check the inventory against.
        let digest = lanshare::inventory::Inventory::new(vec![entry.clone()]).digest;
        let shared = Arc::new((content, manifest, entry));
        let (a, sv, st) = (allow.clone(), served.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut s) = conn else { continue };
                let (shared, a, sv, digest) = (shared.clone(), a.clone(), sv.clone(), digest);
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                    let me = Identity::from_seed([0x52; 32]);
                    let hello = noise::server_hello(&me, "rogue", digest, 1);
                    if noise::respond_blocking(&mut s, &me, &Mode::Open, &hello).is_err() {
                        return;
                    }
                    let (content, manifest, entry) = &*shared;
                    while let Some(req) = read_request(&mut s) {
                        let out = match req {
                            Request::GetInventory { req, after, .. } => {
                                Response::Inventory(InventoryPage {
                                    req,
                                    digest,
                                    base: None,
                                    entries: if after.is_none() {
                                        vec![entry.clone()]
                                    } else {
                                        Vec::new()
                                    },
                                    removed: Vec::new(),
                                    more: false,
                                })
                                .encode()
                            }
                            Request::GetManifest { req, .. } => Response::Manifest {
                                req,
                                manifest: manifest.clone(),
                            }
                            .encode(),
                            Request::GetChunk { req, index, .. } => {
                                if index < a.load(Ordering::Relaxed)
                                    && index < manifest.chunk_count()
                                {
                                    let off = manifest.chunk_offset(index) as usize;
                                    let len = manifest.chunk_len(index) as usize;
                                    let mut out = frame::chunk_header(req, len).to_vec();
                                    out.extend_from_slice(&content[off..off + len]);
                                    sv.lock().unwrap().push(index);
                                    out
                                } else {
                                    Response::Error {
                                        req,
                                        code: ErrorCode::NoChunk,
                                        message: "not yet".into(),
                                    }
                                    .encode()
                                }
                            }
                            Request::Goodbye => return,
                            Request::GetPeers { req, .. } => Response::Peers {
                                req,
                                entries: Vec::new(),
                            }
                            .encode(),
                        };
                        if s.write_all(&out).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        RogueHolder {
            addr,
            allow,
            served,
            stop,
        }
    }
}

/// A rogue client: hello, then one request at a time.
struct Probe {
    s: TcpStream,
    next: u32,
}

enum Answer {
    Chunk(Vec<u8>),
    Other(Response),
}

impl Probe {
    fn connect(addr: SocketAddr) -> Probe {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let me = Identity::from_seed([0x99; 32]);
        noise::initiate_blocking(&mut s, &me, &Mode::Open, "probe").unwrap();
        Probe { s, next: 1 }
    }

    fn read(&mut self) -> Answer {
        let mut h = [0u8; HEADER_LEN];
        self.s.read_exact(&mut h).expect("an answer");
        let (kind, len) = frame::parse_header(&h, MAX_RESPONSE_FRAME).unwrap();
        let mut body = vec![0u8; len];
        self.s.read_exact(&mut body).unwrap();
        if kind == K_R_CHUNK {
            return Answer::Chunk(body[4..].to_vec());
        }
        Answer::Other(Response::decode(kind, &body, len).unwrap())
    }

    fn ask(&mut self, r: impl FnOnce(u32) -> Request) -> Answer {
        let req = self.next;
        self.next += 1;
        self.s.write_all(&r(req).encode()).unwrap();
        self.read()
    }
}

/// The resume state as written by the store (`.lanshare/partial/ID.state`).
#[derive(serde::Serialize, serde::Deserialize)]
struct StateFile {
    name: String,
    manifest: Manifest,
    have: Bitmap,
}

fn state_path(home: &Path, id: &ContentId) -> std::path::PathBuf {
    home.join(".lanshare/partial")
        .join(format!("{}.state", id.to_hex()))
}

fn read_state(home: &Path, id: &ContentId) -> Option<StateFile> {
    postcard::from_bytes(&std::fs::read(state_path(home, id)).ok()?).ok()
}

/// Item 10: after the resume state is edited and the `.part` corrupted and
/// truncated while the node is down, the resumed node serves (and
/// announces) only chunks it checked again, never the zeros or garbage the
/// state claims; bad chunks are fetched again and the file completes with
/// the right SHA-256.
#[test]
fn resumed_chunks_are_rechecked_before_they_are_served() {
    let net = Net::new();
    let content = data(8 * MIB, 1010);
    let manifest = manifest_of(&content, CHUNK_SIZE);
    let id = manifest.content_id();
    let rogue = RogueHolder::start("movie.bin", content.clone(), 4);
    let peer = rogue.addr.to_string();
    let mut beta = net.node_with("beta", &[], &["--peer", &peer]);
    assert!(
        wait_until(Duration::from_secs(10), || listed(&beta, &id)),
        "beta never listed the rogue's content: {:?} {}",
        beta.ls(),
        beta.log_text()
    );

    // A first run gets chunks 0..4, then the holder has nothing more; the
    // user gives up (the client goes away, the node records the state).
    let hex = id.to_hex();
    let fetch = spawn_cli(&beta, &["fetch", &hex]);
    assert!(
        wait_until(Duration::from_secs(15), || {
            let s = rogue.served.lock().unwrap();
            (0..4).all(|i| s.contains(&i))
        }),
        "the rogue never served chunks 0..4"
    );
    std::thread::sleep(Duration::from_millis(500));
    drop(wait_for(fetch, Duration::ZERO));
    assert!(
        wait_until(Duration::from_secs(10), || read_state(&beta.home, &id)
            .is_some_and(|s| s.have.count_ones() == 4)),
        "the state never recorded 4 chunks"
    );
    beta.stop();

    // With the node down: zero chunk 1, truncate the file inside chunk 2,
    // and make the state claim every chunk.
    let part = beta
        .downloads()
        .join(format!(".lanshare-{}.part", &hex[..24]));
    let f = std::fs::OpenOptions::new().write(true).open(&part).unwrap();
    f.write_all_at(&vec![0u8; MIB], MIB as u64).unwrap();
    f.set_len((2 * MIB + MIB / 2) as u64).unwrap();
    drop(f);
    let mut state = read_state(&beta.home, &id).unwrap();
    for i in 0..8 {
        state.have.set(i);
    }
    std::fs::write(
        state_path(&beta.home, &id),
        postcard::to_allocvec(&state).unwrap(),
    )
    .unwrap();

    let beta = net.restart(&beta, &["--peer", &peer]);
    assert!(wait_until(Duration::from_secs(10), || listed(&beta, &id)));
    let fetch = spawn_cli(&beta, &["fetch", &hex]);

    // Meanwhile a third party asks beta for every chunk, and for its
    // inventory, again and again.
    let mut probe = Probe::connect(beta.listen);
    let (mut answered, mut served) = (0, 0);
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        for index in 0..manifest.chunk_count() {
            match probe.ask(|req| Request::GetChunk { req, id, index }) {
                Answer::Chunk(bytes) => {
                    assert!(
                        manifest.chunk_matches(index, &bytes),
                        "beta served chunk {index} that it never re-checked ({} bytes, {} zero)",
                        bytes.len(),
                        bytes.iter().filter(|b| **b == 0).count()
                    );
                    served += 1;
                    answered += 1;
                }
                Answer::Other(Response::Error {
                    code: ErrorCode::NoChunk,
                    ..
                }) => answered += 1,
                Answer::Other(_) => {}
            }
        }
        if let Answer::Other(Response::Inventory(page)) = probe.ask(|req| Request::GetInventory {
            req,
            since: None,
            after: None,
        }) && let Some(e) = page.entries.iter().find(|e| e.id == id)
            && let ChunkSet::Partial(bits) = &e.chunks
        {
            for i in 4..manifest.chunk_count() {
                assert!(
                    !bits.get(i),
                    "beta announces chunk {i}, which it does not hold: {:?}",
                    bits
                );
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        answered > 0,
        "the probe never reached beta's partial download (no chunk answers)"
    );
    eprintln!("probe: {answered} chunk answers, {served} chunks served, all verified");

    // Now the holder has everything: the download completes, right.
    rogue.allow.store(8, Ordering::Relaxed);
    let mut out = wait_for(fetch, Duration::from_secs(25));
    if !out.as_ref().is_some_and(|o| o.status.success()) {
        // The first attempt may have given up on the holder meanwhile.
        out = wait_for(spawn_cli(&beta, &["fetch", &hex]), Duration::from_secs(25));
    }
    let out = out.expect("the fetch ends");
    assert!(
        out.status.success(),
        "fetch failed: {} {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let got = std::fs::read(beta.downloads().join("movie.bin")).unwrap();
    assert_eq!(sha256_hex(&got), sha256_hex(&content));
}

/// A symlink planted at the `.part` path a download will use (pointing
/// outside the home) is replaced, never written through.
#[test]
fn a_symlink_at_the_partial_path_is_not_written_through() {
    let net = Net::new();
    let content = data(3 * MIB + 5, 33);
    let _alpha = net.node("alpha", &[("doc.txt", &content)]);
    let beta = net.node("beta", &[]);
    let id = id_of(&content);
    assert!(wait_until(Duration::from_secs(10), || listed(&beta, &id)));
    let victim = net.dir.path().join("victim.txt");
    std::fs::write(&victim, b"precious").unwrap();
    let hex = id.to_hex();
    let part = beta
        .downloads()
        .join(format!(".lanshare-{}.part", &hex[..24]));
    std::os::unix::fs::symlink(&victim, &part).unwrap();
    let out = wait_for(
        spawn_cli(&beta, &["fetch", &hex[..16]]),
        Duration::from_secs(20),
    )
    .expect("fetch ends");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let victim_now = std::fs::read(&victim).unwrap();
    assert!(
        victim_now == b"precious",
        "the download was written through the planted symlink: the file outside the home now holds {} bytes",
        victim_now.len()
    );
    assert_eq!(
        sha256_hex(&std::fs::read(beta.downloads().join("doc.txt")).unwrap()),
        sha256_hex(&content)
    );
}

/// HOME/.lanshare/ (which lists the full paths of shared files) is made
/// private (0700), even when it existed with a looser mode.
#[test]
fn the_state_folder_is_private() {
    let net = Net::new();
    let home = net.home("alpha");
    std::fs::create_dir_all(home.join(".lanshare/partial")).unwrap();
    for d in [".lanshare", ".lanshare/partial"] {
        std::fs::set_permissions(home.join(d), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let alpha = net.node("alpha", &[]);
    assert!(alpha.status()["id"].is_string());
    for d in [".lanshare", ".lanshare/partial"] {
        let mode = std::fs::metadata(home.join(d))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o700,
            "HOME/{d} is not private: {:o}",
            mode & 0o777
        );
    }
    let fresh = net.node("beta", &[]);
    let mode = std::fs::metadata(fresh.home.join(".lanshare"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o700, "a new HOME/.lanshare is not private");
}

/// A symlink in shared/ to a file outside it (an unpacked archive can hold
/// one to ~/.ssh/id_ed25519) is not offered; with `--follow-symlinks` it is.
/// A link staying inside shared/ is still followed.
#[test]
fn symlinks_out_of_shared_are_offered_only_with_the_flag() {
    let net = Net::new();
    let secret = net.dir.path().join("id_ed25519");
    std::fs::write(&secret, b"-----BEGIN OPENSSH PRIVATE KEY-----").unwrap();
    let home = net.home("alpha");
    std::fs::create_dir_all(home.join("shared/sub")).unwrap();
    std::fs::write(home.join("shared/sub/inside.txt"), b"inside").unwrap();
    std::os::unix::fs::symlink(&secret, home.join("shared/key.txt")).unwrap();
    std::os::unix::fs::symlink("sub/inside.txt", home.join("shared/inside-link.txt")).unwrap();
    let mut alpha = net.node("alpha", &[("notes.txt", b"hello")]);
    let beta = net.node("beta", &[]);
    let notes = id_of(b"hello");
    let inside = id_of(b"inside");
    let key = id_of(b"-----BEGIN OPENSSH PRIVATE KEY-----");
    assert!(wait_until(Duration::from_secs(10), || listed(
        &beta, &notes
    ) && listed(
        &beta, &inside
    )));
    // Several scans later, still not offered.
    std::thread::sleep(Duration::from_millis(1500));
    assert!(!listed(&beta, &key), "the link out of shared/ was followed");
    assert_eq!(alpha.status()["shared_contents"], 2);

    alpha.stop();
    let _alpha = net.restart(&alpha, &["--follow-symlinks"]);
    assert!(
        wait_until(Duration::from_secs(10), || listed(&beta, &key)),
        "with --follow-symlinks the link is shared"
    );
}
