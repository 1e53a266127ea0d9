//! Test harness: a LAN made of Linux network namespaces.
//!
//! A [`Lan`] is one "switch" namespace holding a bridge, plus N host
//! namespaces, each joined to the bridge by a veth pair and given one
//! address `10.A.B.i/24`. Nothing is connected to the root namespace, so no
//! node can reach eth0 or anything beyond the hosts the test made. Every
//! `lanshare up` runs inside its host's namespace (`ip netns exec`), bound to
//! its own address, with `--no-mdns` and a group port unique to the test.
//! Client commands (`ls`, `fetch`, `status`) talk to a node through the Unix
//! socket in its home, so they run from the test process as they are.
//!
//! Cleanup never depends on the test passing: [`NetNode`] and [`FetchRun`]
//! kill their own process when dropped, and [`Lan`] kills whatever is still
//! inside its namespaces (only processes this test started can be there),
//! then deletes the links, the bridge and the namespaces.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_lanshare");
/// TCP port of every node (each has its own address, so they never clash).
pub const PORT: u16 = 7000;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Runs a command to completion; Err carries its stderr.
fn run(program: &str, args: &[&str]) -> Result<(), String> {
    match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run `{program}`: {e}")),
    }
}

/// Runs `ip` with whitespace-separated `args` (no name here has spaces);
/// a failure fails the test.
fn ip(args: &str) {
    if let Err(e) = run("ip", &args.split_whitespace().collect::<Vec<_>>()) {
        panic!("{e}");
    }
}

fn skip() -> Option<Lan> {
    eprintln!("skipping: needs root and iproute2 (ip, tc)");
    None
}

/// Makes the child die with SIGKILL if the test thread that started it ends
/// without cleaning up (a last resort; Drop guards do the real work).
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

pub struct Host {
    /// Network namespace name.
    pub ns: String,
    /// The host's end of its veth pair (inside `ns`).
    pub veth: String,
    /// The switch's end (inside the switch namespace).
    pub port: String,
    pub addr: Ipv4Addr,
}

/// A bridge in a switch namespace and N hosts on it.
pub struct Lan {
    /// Homes and node logs; kept after the test when LANSHARE_TEST_KEEP is set.
    pub dir: Option<tempfile::TempDir>,
    pub group: String,
    pub switch_ns: String,
    pub bridge: String,
    pub hosts: Vec<Host>,
    /// Namespaces created so far (all deleted on drop).
    namespaces: Vec<String>,
}

impl Lan {
    /// Builds a LAN of `n` hosts, or returns None (after printing why)
    /// when this machine cannot: not root, or no `ip netns` / `tc`.
    pub fn new(n: usize) -> Option<Lan> {
        assert!((1..=200).contains(&n));
        if unsafe { libc::geteuid() } != 0 {
            return skip();
        }
        if run("tc", &["-V"]).is_err() {
            return skip();
        }
        let pid = std::process::id();
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        // Fixed width, so (pid, count) -> tag is one-to-one: pids are < 2^22.
        let tag = format!("{:06x}{:02x}", pid & 0xff_ffff, count & 0xff);
        let switch_ns = format!("lanshare-{tag}-sw");
        let dir = tempfile::tempdir().expect("temp dir");
        if run("ip", &["netns", "add", &switch_ns]).is_err() {
            return skip();
        }
        let a = 100 + (pid % 150) as u8;
        let b = (count % 250) as u8 + 1;
        let group_port = 20_000 + (pid % 2_000) * 10 + count % 10;
        let mut lan = Lan {
            dir: Some(dir),
            group: format!("239.255.{}.{}:{group_port}", 1 + pid % 200, 1 + count % 250),
            switch_ns: switch_ns.clone(),
            bridge: format!("lb{tag}"),
            hosts: Vec::new(),
            namespaces: vec![switch_ns.clone()],
        };
        let (sw, br) = (lan.switch_ns.clone(), lan.bridge.clone());
        ip(&format!("-n {sw} link set lo up"));
        // No IGMP snooping: the bridge floods multicast to every port, so
        // senders that never joined (the garbage host) reach everyone.
        ip(&format!(
            "-n {sw} link add {br} type bridge mcast_snooping 0"
        ));
        ip(&format!("-n {sw} link set {br} multicast on up"));
        for i in 0..n {
            let ns = format!("lanshare-{tag}-h{i}");
            ip(&format!("netns add {ns}"));
            lan.namespaces.push(ns.clone());
            let veth = format!("lh{tag}{i}");
            let port = format!("lp{tag}{i}");
            assert!(veth.len() <= 15 && port.len() <= 15);
            let addr = Ipv4Addr::new(10, a, b, i as u8 + 1);
            // Both ends are created straight inside their namespaces: no
            // link ever exists in the root namespace.
            ip(&format!(
                "-n {sw} link add {port} type veth peer name {veth} netns {ns}"
            ));
            ip(&format!(
                "-n {sw} link set {port} master {br} multicast on up"
            ));
            ip(&format!("-n {ns} link set lo up"));
            ip(&format!("-n {ns} addr add {addr}/24 dev {veth}"));
            ip(&format!("-n {ns} link set {veth} multicast on up"));
            // The default group is reachable through the LAN.
            ip(&format!("-n {ns} route add 224.0.0.0/4 dev {veth}"));
            lan.hosts.push(Host {
                ns,
                veth,
                port,
                addr,
            });
        }
        Some(lan)
    }

    /// Shapes host `i`'s uplink (egress of its veth, inside its namespace).
    pub fn shape(&self, i: usize, rate: &str) {
        let h = &self.hosts[i];
        ip(&format!(
            "netns exec {} tc qdisc add dev {} root tbf rate {rate} burst 32kb latency 400ms",
            h.ns, h.veth
        ));
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("temp dir").path()
    }

    pub fn home(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// Writes `files` into NAME's shared/ and starts its node on host `i`.
    pub fn node(&self, i: usize, name: &str, files: &[(&str, &[u8])]) -> NetNode {
        let home = self.home(name);
        std::fs::create_dir_all(home.join("shared")).unwrap();
        for (file, data) in files {
            std::fs::write(home.join("shared").join(file), data).unwrap();
        }
        self.start(i, name)
    }

    /// Starts (or restarts) node NAME on host `i` with home `self.home(name)`;
    /// returns once its banner says it listens.
    pub fn start(&self, i: usize, name: &str) -> NetNode {
        let h = &self.hosts[i];
        let home = self.home(name);
        std::fs::create_dir_all(&home).unwrap();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let stderr_path = self.dir().join(format!("{name}.{n}.stderr"));
        let stderr = std::fs::File::create(&stderr_path).unwrap();
        let listen = format!("{}:{PORT}", h.addr);
        let iface = h.addr.to_string();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &h.ns, BIN, "up", "--home"])
            .arg(&home)
            .args([
                "--name",
                name,
                "--listen",
                &listen,
                "--interface",
                &iface,
                "--group",
                &self.group,
                "--announce-interval",
                "0.5",
                "--scan-interval",
                "0.2",
                "--no-mdns",
            ])
            .env("RUST_LOG", "lanshare=debug")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr);
        die_with_parent(&mut cmd);
        // `ip netns exec` execs the command: the child's PID is lanshare's.
        let mut child = cmd.spawn().expect("start ip netns exec lanshare up");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(first)) = lines.next() {
                let _ = tx.send(first);
            }
            // Keep draining so the node never blocks on a full pipe.
            for _ in lines {}
        });
        let node = NetNode {
            name: name.into(),
            home,
            addr: h.addr,
            listen: SocketAddr::new(h.addr.into(), PORT),
            child: Some(child),
            stderr_path,
        };
        let banner = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => panic!("node {name} did not start: {}", node.log_tail()),
        };
        let addr = banner
            .split("listening on ")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .unwrap_or_else(|| panic!("no listen address in banner {banner:?}"));
        assert_eq!(
            addr.parse::<SocketAddr>().expect("socket address"),
            node.listen,
            "banner: {banner}"
        );
        node
    }

    /// Namespace of host `i`.
    pub fn ns(&self, i: usize) -> &str {
        &self.hosts[i].ns
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let me = std::process::id().to_string();
        for ns in &self.namespaces {
            // Only processes this test started live in its namespaces.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if pid != me
                        && let Ok(pid) = pid.parse::<i32>()
                        && pid > 1
                    {
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
        }
        for h in &self.hosts {
            let _ = run("ip", &["-n", &self.switch_ns, "link", "del", &h.port]);
        }
        let _ = run("ip", &["-n", &self.switch_ns, "link", "del", &self.bridge]);
        for ns in self.namespaces.iter().rev() {
            if let Err(e) = run("ip", &["netns", "del", ns]) {
                eprintln!("cleanup: {e}");
            }
        }
        if std::env::var_os("LANSHARE_TEST_KEEP").is_some()
            && let Some(dir) = self.dir.take()
        {
            eprintln!("kept {}", dir.keep().display());
        }
    }
}

/// One `lanshare up` inside a host namespace.
pub struct NetNode {
    pub name: String,
    pub home: PathBuf,
    pub addr: Ipv4Addr,
    pub listen: SocketAddr,
    child: Option<Child>,
    pub stderr_path: PathBuf,
}

impl NetNode {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn shared(&self) -> PathBuf {
        self.home.join("shared")
    }
    pub fn downloads(&self) -> PathBuf {
        self.home.join("downloads")
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Runs a client command against this node's home (from the root
    /// namespace: it only uses the node's Unix control socket).
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .arg("--home")
            .arg(&self.home)
            .stdin(Stdio::null())
            .output()
            .expect("run lanshare")
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "`lanshare {}` on {} failed: {}\n{}",
            args.join(" "),
            self.name,
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        serde_json::from_slice(&out.stdout).expect("--json output is JSON")
    }

    pub fn ls(&self) -> Vec<serde_json::Value> {
        match self.json(&["ls", "--json"]) {
            serde_json::Value::Array(v) => v,
            other => panic!("ls --json is not a list: {other}"),
        }
    }

    pub fn status(&self) -> serde_json::Value {
        self.json(&["status", "--json"])
    }

    /// How many peers hold `name` completely, as this node sees it.
    pub fn complete_holders(&self, name: &str) -> u64 {
        self.ls()
            .iter()
            .find(|v| v["name"] == name)
            .and_then(|v| v["complete"].as_u64())
            .unwrap_or(0)
    }

    /// Starts `lanshare fetch NAME` as a child process.
    pub fn spawn_fetch(&self, name: &str) -> FetchRun {
        let mut cmd = Command::new(BIN);
        cmd.args(["fetch", name, "--home"])
            .arg(&self.home)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().expect("start lanshare fetch");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().unwrap();
        let l = lines.clone();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                l.lock().unwrap().push(line);
            }
        });
        let mut stderr = child.stderr.take().unwrap();
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        FetchRun {
            child: Some(child),
            lines,
            reader: Some(reader),
            err: Some(err),
            stderr: String::new(),
        }
    }

    /// Stops the node with SIGTERM (a clean stop) and waits for it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
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

    /// Kills the node with SIGKILL (a crash) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// The last lines of the node's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        let from = lines.len().saturating_sub(40);
        format!(
            "--- last log lines of {} ({}) ---\n{}",
            self.name,
            self.stderr_path.display(),
            lines[from..].join("\n")
        )
    }

    pub fn download_log(&self) -> Vec<String> {
        read_lines(&self.home.join("download_log.txt"))
    }

    pub fn upload_log(&self) -> Vec<String> {
        read_lines(&self.home.join("upload_log.txt"))
    }
}

impl Drop for NetNode {
    fn drop(&mut self) {
        self.kill();
    }
}

fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// Sum of the bytes field (field 3) over upload log lines.
pub fn uploaded_bytes(lines: &[String]) -> u64 {
    lines
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            assert!(f.len() >= 9, "malformed upload log line {l:?}");
            assert_eq!(f[1], "upload", "{l:?}");
            f[3].parse::<u64>()
                .unwrap_or_else(|_| panic!("bytes field in {l:?}"))
        })
        .sum()
}

/// A running `lanshare fetch` client; killed on drop.
pub struct FetchRun {
    child: Option<Child>,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
    err: Option<std::thread::JoinHandle<String>>,
    pub stderr: String,
}

impl FetchRun {
    /// Stdout lines printed so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn stdout(&self) -> String {
        self.lines().join("\n")
    }

    /// The last progress percentage printed ("  12.5%  3.0MiB of ..."), if any.
    pub fn progress(&self) -> Option<f64> {
        self.lines().iter().rev().find_map(|l| {
            l.trim_start()
                .split_once('%')
                .and_then(|(p, _)| p.parse().ok())
        })
    }

    /// True once the process has exited.
    pub fn exited(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => !matches!(c.try_wait(), Ok(None)),
            None => true,
        }
    }

    /// Waits for the client to exit; None if it is still running at the deadline.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let c = self.child.as_mut()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                self.child = None;
                self.collect();
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the client with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.collect();
    }

    fn collect(&mut self) {
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        if let Some(e) = self.err.take() {
            self.stderr = e.join().unwrap_or_default();
        }
    }
}

impl Drop for FetchRun {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

// Shared with the loopback harness.
pub use crate::util::{data, sha256_hex, wait_until};

/// Runs `f` on a fresh thread that first enters network namespace `ns`
/// (setns affects only the calling thread). If entering fails, `f` never
/// runs, so nothing is ever sent from the root namespace.
pub fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("cannot open {path}: {e}"));
        // SAFETY: setns on a namespace fd we opened; it changes only this
        // thread's network namespace, which ends with the thread.
        let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(
            r,
            0,
            "cannot enter {path}: {}",
            std::io::Error::last_os_error()
        );
        f()
    })
}
