//! Test harness: real `lanshare` processes pinned to loopback, each test
//! with its own multicast group and port, every process ended (by PID) when
//! the harness drops, even when the test fails.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_lanshare");

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh multicast group and port no other test uses: the port comes from
/// the OS (a free UDP port), the group from the PID and a counter.
pub fn unique_group() -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
    let port = sock.local_addr().unwrap().port();
    let pid = std::process::id();
    format!("239.255.{}.{}:{port}", 1 + (pid % 200), 1 + (n % 250))
}

pub struct Node {
    pub name: String,
    pub home: PathBuf,
    pub listen: SocketAddr,
    child: Option<Child>,
    pub stderr_path: PathBuf,
}

impl Node {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn shared(&self) -> PathBuf {
        self.home.join("shared")
    }
    pub fn downloads(&self) -> PathBuf {
        self.home.join("downloads")
    }

    /// Runs a client command against this node's home.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .arg("--home")
            .arg(&self.home)
            .output()
            .expect("run lanshare")
    }

    pub fn ls(&self) -> Vec<serde_json::Value> {
        let out = self.cli(&["ls", "--json"]);
        assert!(
            out.status.success(),
            "ls failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("ls --json is JSON")
    }

    pub fn peers(&self) -> Vec<serde_json::Value> {
        let out = self.cli(&["peers", "--json"]);
        assert!(
            out.status.success(),
            "peers failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("peers --json is JSON")
    }

    pub fn status(&self) -> serde_json::Value {
        let out = self.cli(&["status", "--json"]);
        assert!(
            out.status.success(),
            "status failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    }

    pub fn fetch(&self, name: &str) -> Output {
        self.cli(&["fetch", name])
    }

    /// Stops the node with SIGTERM (a clean stop) and waits for it.
    pub fn stop(&mut self) {
        stop_child(&mut self.child);
    }

    /// Kills the node with SIGKILL (a crash).
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A set of nodes sharing one multicast group on loopback.
pub struct Net {
    pub dir: tempfile::TempDir,
    pub group: String,
    pub interval: String,
}

impl Net {
    pub fn new() -> Net {
        Net {
            dir: tempfile::tempdir().expect("temp dir"),
            group: unique_group(),
            interval: "0.5".into(),
        }
    }

    pub fn home(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `files` into NAME's shared/ and starts it; waits until it is up.
    pub fn node(&self, name: &str, files: &[(&str, &[u8])]) -> Node {
        self.node_with(name, files, &[])
    }

    pub fn node_with(&self, name: &str, files: &[(&str, &[u8])], extra: &[&str]) -> Node {
        let home = self.home(name);
        std::fs::create_dir_all(home.join("shared")).unwrap();
        for (file, data) in files {
            std::fs::write(home.join("shared").join(file), data).unwrap();
        }
        start(&home, name, &self.group, &self.interval, extra)
    }

    /// Restarts a stopped node with the same home.
    pub fn restart(&self, node: &Node, extra: &[&str]) -> Node {
        start(&node.home, &node.name, &self.group, &self.interval, extra)
    }
}

fn start(home: &Path, name: &str, group: &str, interval: &str, extra: &[&str]) -> Node {
    let stderr_path = home.with_extension(format!(
        "{}.stderr",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let mut child = Command::new(BIN)
        .args([
            "up",
            "--name",
            name,
            "--listen",
            "127.0.0.1:0",
            "--interface",
            "127.0.0.1",
            "--no-mdns",
        ])
        .args([
            "--group",
            group,
            "--announce-interval",
            interval,
            "--scan-interval",
            "0.2",
        ])
        .args(extra)
        .arg("--home")
        .arg(home)
        .env("RUST_LOG", "lanshare=debug")
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start lanshare up");
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    let n = reader.read_line(&mut line).unwrap_or(0);
    let mut node = Node {
        name: name.into(),
        home: home.into(),
        listen: "0.0.0.0:0".parse().unwrap(),
        child: Some(child),
        stderr_path,
    };
    assert!(n > 0, "node {name} did not start: {}", node.log_text());
    let addr = line
        .split("listening on ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .expect("listen address in banner");
    node.listen = addr.parse().expect("socket address");
    // Keep draining stdout so the node never blocks on a full pipe.
    std::thread::spawn(move || for _ in reader.lines() {});
    node
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate.
pub fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    lanshare::id::to_hex(&sha2::Sha256::digest(data))
}

/// Checks one transfer log line: RFC 3339 ms UTC time, then tab-separated fields.
pub fn check_log_line(line: &str, event: &str) -> Vec<String> {
    let f: Vec<String> = line.split('\t').map(String::from).collect();
    assert!(f.len() >= 9, "too few fields in {line:?}");
    let ts = &f[0];
    assert!(
        ts.len() == 24
            && ts.ends_with('Z')
            && ts.as_bytes()[10] == b'T'
            && ts.as_bytes()[19] == b'.',
        "timestamp {ts:?}"
    );
    humantime::parse_rfc3339(ts).expect("RFC 3339 time");
    assert_eq!(f[1], event);
    f[3].parse::<u64>().expect("bytes field is a number");
    assert_eq!(f[4].len(), 64, "content id field");
    assert!(f[6].ends_with('s'), "duration field {:?}", f[6]);
    assert!(f[7].ends_with("/s"), "throughput field {:?}", f[7]);
    f
}

/// A node to start with [`Net::start_together`]: its name and the files
/// (name, bytes) it shares.
pub type NodeSpec = (String, Vec<(String, Vec<u8>)>);

impl Net {
    /// Starts one node per entry of `nodes` (name, files to share) all at
    /// once: every process is spawned before any banner is awaited. Each is
    /// pinned to 127.0.0.1 with `--no-mdns` and this net's group and
    /// interval, with the default scan interval, plus `extra`.
    pub fn start_together(&self, nodes: &[NodeSpec], extra: &[&str]) -> Vec<Node> {
        let mut started = Vec::new();
        for (name, files) in nodes {
            let home = self.home(name);
            std::fs::create_dir_all(home.join("shared")).unwrap();
            for (file, data) in files {
                std::fs::write(home.join("shared").join(file), data).unwrap();
            }
            let stderr_path = home.with_extension(format!(
                "{}.stderr",
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            let stderr = std::fs::File::create(&stderr_path).unwrap();
            let child = Command::new(BIN)
                .args(["up", "--name", name, "--listen", "127.0.0.1:0"])
                .args(["--interface", "127.0.0.1", "--no-mdns"])
                .args([
                    "--group",
                    &self.group,
                    "--announce-interval",
                    &self.interval,
                ])
                .args(extra)
                .arg("--home")
                .arg(&home)
                .env("RUST_LOG", "lanshare=debug")
                .stdout(Stdio::piped())
                .stderr(stderr)
                .spawn()
                .expect("start lanshare up");
            started.push(Node {
                name: name.clone(),
                home,
                listen: "0.0.0.0:0".parse().unwrap(),
                child: Some(child),
                stderr_path,
            });
        }
        for node in &mut started {
            let stdout = node.child.as_mut().unwrap().stdout.take().unwrap();
            let mut reader = BufReader::new(stdout);
            let mut line = String::new();
            let n = reader.read_line(&mut line).unwrap_or(0);
            assert!(
                n > 0,
                "node {} did not start: {}",
                node.name,
                node.log_text()
            );
            let addr = line
                .split("listening on ")
                .nth(1)
                .and_then(|s| s.split(',').next())
                .expect("listen address in banner");
            node.listen = addr.parse().expect("socket address");
            std::thread::spawn(move || for _ in reader.lines() {});
        }
        started
    }
}

/// Counts the discovery datagrams sent to a multicast group on loopback,
/// by kind (announce, query, goodbye, other), from a socket of its own
/// bound to the group port (every socket bound to it gets a copy).
pub struct Sniffer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    counts: std::sync::Arc<std::sync::Mutex<SniffCounts>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone, Copy, Debug, Default)]
pub struct SniffCounts {
    pub announces: u64,
    pub queries: u64,
    pub goodbyes: u64,
    pub other: u64,
    pub bytes: u64,
}

impl SniffCounts {
    pub fn datagrams(&self) -> u64 {
        self.announces + self.queries + self.goodbyes + self.other
    }
}

impl Sniffer {
    /// Joins `group` ("IP:PORT") on 127.0.0.1 and counts until dropped.
    pub fn start(group: &str) -> Sniffer {
        use socket2::{Domain, Protocol, SockAddr, Socket, Type};
        let group: std::net::SocketAddrV4 = group.parse().expect("group IP:PORT");
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_reuse_address(true).unwrap();
        s.set_reuse_port(true).unwrap();
        let _ = s.set_recv_buffer_size(4 << 20);
        s.bind(&SockAddr::from(std::net::SocketAddrV4::new(
            std::net::Ipv4Addr::UNSPECIFIED,
            group.port(),
        )))
        .expect("bind the group port");
        s.join_multicast_v4(group.ip(), &std::net::Ipv4Addr::LOCALHOST)
            .expect("join the group on loopback");
        // Only this group's datagrams (Linux otherwise delivers every
        // group joined by anyone on this port).
        let off: libc::c_int = 0;
        // SAFETY: setsockopt on a socket we own, with a c_int option value.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&s),
                libc::IPPROTO_IP,
                libc::IP_MULTICAST_ALL,
                &off as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let sock: UdpSocket = s.into();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let counts = std::sync::Arc::new(std::sync::Mutex::new(SniffCounts::default()));
        let (st, c) = (stop.clone(), counts.clone());
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                let Ok((n, _)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let mut c = c.lock().unwrap();
                c.bytes += n as u64;
                match (n >= 6 && &buf[..4] == b"LNSH").then_some(buf[5]) {
                    Some(1) => c.announces += 1,
                    Some(2) => c.queries += 1,
                    Some(3) => c.goodbyes += 1,
                    _ => c.other += 1,
                }
            }
        });
        Sniffer {
            stop,
            counts,
            thread: Some(thread),
        }
    }

    pub fn counts(&self) -> SniffCounts {
        *self.counts.lock().unwrap()
    }
}

impl Drop for Sniffer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Stops a child with SIGTERM (a clean stop) and reaps it; SIGKILL after 10 s.
pub fn stop_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// Kills a child with SIGKILL (a crash) and reaps it.
pub fn kill_child(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}
