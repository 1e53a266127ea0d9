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
//! A [`Topo`] is the general form, for the discovery tests: any number of
//! bridges, hosts with several links (added, unplugged or deleted while
//! nodes run), IPv6-only links, router hosts, nftables rules per host; its
//! nodes run with lanshare's defaults (every interface, mDNS on) plus a
//! group port unique to the test. [`Browser`] runs python zeroconf's
//! DNS-SD browser inside a host.
//!
//! Cleanup never depends on the test passing: [`NetNode`], [`FetchRun`] and
//! [`Browser`] kill their own process when dropped, and [`Lan`] and
//! [`Topo`] kill whatever is still inside their namespaces (only processes
//! this test started can be there), then delete the links, the bridges and
//! the namespaces.
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
    skipping("needs root and iproute2 (ip, tc)");
    None
}

/// Reports a test that cannot run on this machine. The line goes straight
/// to stderr, past the test harness's capture, so `cargo test` output shows
/// it even though the test counts as passed; with `LANSHARE_REQUIRE_NETNS`
/// set (CI sets it) a test that cannot run fails instead.
pub fn skipping(why: &str) {
    use std::io::Write;
    let test = std::thread::current()
        .name()
        .unwrap_or("a namespace test")
        .to_string();
    if std::env::var_os("LANSHARE_REQUIRE_NETNS").is_some() {
        panic!("{test} cannot run: {why} (LANSHARE_REQUIRE_NETNS is set, so this is a failure)");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why}");
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
        let listen = SocketAddr::new(h.addr.into(), PORT);
        let args: Vec<String> = [
            "--listen",
            &listen.to_string(),
            "--interface",
            &h.addr.to_string(),
            "--group",
            &self.group,
            "--announce-interval",
            "0.5",
            "--scan-interval",
            "0.2",
            "--no-mdns",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let node = spawn_up(&h.ns, self.dir(), name, &args, Some(h.addr));
        assert_eq!(node.listen, listen, "listen address in the banner");
        node
    }

    /// Namespace of host `i`.
    pub fn ns(&self, i: usize) -> &str {
        &self.hosts[i].ns
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        let ports: Vec<&str> = self.hosts.iter().map(|h| h.port.as_str()).collect();
        teardown(
            &self.switch_ns,
            &ports,
            &[self.bridge.as_str()],
            &self.namespaces,
        );
        keep_dir(&mut self.dir);
    }
}

/// Kills whatever still runs inside `namespaces` (only processes the test
/// started can be there), then deletes the switch ports, the bridges and
/// the namespaces.
fn teardown(switch_ns: &str, ports: &[&str], bridges: &[&str], namespaces: &[String]) {
    let me = std::process::id().to_string();
    for ns in namespaces {
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
    for port in ports {
        let _ = run("ip", &["-n", switch_ns, "link", "del", port]);
    }
    for br in bridges {
        let _ = run("ip", &["-n", switch_ns, "link", "del", br]);
    }
    for ns in namespaces.iter().rev() {
        if let Err(e) = run("ip", &["netns", "del", ns]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Keeps the homes and logs when LANSHARE_TEST_KEEP is set.
fn keep_dir(dir: &mut Option<tempfile::TempDir>) {
    if std::env::var_os("LANSHARE_TEST_KEEP").is_some()
        && let Some(dir) = dir.take()
    {
        eprintln!("kept {}", dir.keep().display());
    }
}

/// Starts `lanshare up --home DIR/NAME --name NAME ARGS...` inside
/// namespace `ns`; returns once its banner says where it listens.
fn spawn_up(ns: &str, dir: &Path, name: &str, args: &[String], addr: Option<Ipv4Addr>) -> NetNode {
    let home = dir.join(name);
    std::fs::create_dir_all(&home).unwrap();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let stderr_path = dir.join(format!("{name}.{n}.stderr"));
    let stderr = std::fs::File::create(&stderr_path).unwrap();
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, BIN, "up", "--home"])
        .arg(&home)
        .args(["--name", name])
        .args(args)
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
    let mut node = NetNode {
        name: name.into(),
        home,
        addr,
        listen: SocketAddr::from(([0, 0, 0, 0], 0)),
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
    node.listen = addr
        .parse()
        .unwrap_or_else(|_| panic!("listen address in banner {banner:?}"));
    node
}

/// One `lanshare up` inside a host namespace.
pub struct NetNode {
    pub name: String,
    pub home: PathBuf,
    /// The host's (first) IPv4 address; None on an IPv6-only host.
    pub addr: Option<Ipv4Addr>,
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
        stop_child(&mut self.child);
    }

    /// Kills the node with SIGKILL (a crash) and reaps it.
    pub fn kill(&mut self) {
        kill_child(&mut self.child);
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

    pub fn peers(&self) -> Vec<serde_json::Value> {
        match self.json(&["peers", "--json"]) {
            serde_json::Value::Array(v) => v,
            other => panic!("peers --json is not a list: {other}"),
        }
    }

    /// This node's id (32 hex digits), from `status`.
    pub fn id(&self) -> String {
        self.status()["id"]
            .as_str()
            .expect("status has an id")
            .to_string()
    }

    /// The TCP port the node listens on.
    pub fn port(&self) -> u16 {
        self.listen.port()
    }

    /// Sends SIGTERM (a clean stop) without waiting; [`NetNode::stop`] or
    /// drop reaps the process.
    pub fn terminate(&mut self) {
        if let Some(c) = self.child.as_ref() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
    }

    /// Runs `lanshare fetch NAME` to the end (at most `timeout`); panics
    /// with the fetch's output and the node's log when it fails. Returns
    /// the fetch's stdout.
    pub fn fetch_ok(&self, name: &str, timeout: Duration) -> String {
        let what = format!("`lanshare fetch {name}` on {} did not succeed", self.name);
        self.spawn_fetch(name).finish_ok(timeout, &what, &[self])
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

    /// Waits (at most `timeout`) for the fetch to exit; panics unless it
    /// succeeded, with `what` went wrong, its output and the tails of the
    /// `logs` nodes' logs. Returns its stdout.
    pub fn finish_ok(&mut self, timeout: Duration, what: &str, logs: &[&NetNode]) -> String {
        let status = self.wait(timeout);
        let stdout = self.stdout();
        if status.is_none() {
            self.kill();
        }
        let tails: Vec<String> = logs.iter().map(|n| n.log_tail()).collect();
        assert!(
            status.is_some_and(|s| s.success()),
            "{what} ({status:?}): {stdout}\n{}\n{}",
            self.stderr,
            tails.join("\n")
        );
        stdout
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
#[allow(unused_imports)]
pub use crate::util::{data, kill_child, sha256_hex, stop_child, wait_until};

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

// ---------------------------------------------------------------------------
// Topologies: several bridges, hosts with several interfaces (added or cut
// while nodes run), routers, IPv6-only segments, firewall rules.

/// Runs `program args` with `input` on its stdin; Err carries its stderr.
fn run_with_input(program: &str, args: &[&str], input: &str) -> Result<(), String> {
    use std::io::Write;
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .map_err(|e| format!("writing to `{program}`: {e}"))?;
    let o = child
        .wait_with_output()
        .map_err(|e| format!("waiting for `{program}`: {e}"))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}\ninput:\n{input}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ))
    }
}

/// Runs `program args` and returns its stdout; a failure fails the test.
fn output(program: &str, args: &[&str]) -> String {
    match Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => panic!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("cannot run `{program}`: {e}"),
    }
}

/// Sets a sysctl inside namespace `ns`.
fn sysctl(ns: &str, key: &str, value: &str) {
    if let Err(e) = run(
        "ip",
        &[
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            &format!("{key}={value}"),
        ],
    ) {
        panic!("{e}");
    }
}

/// True when `program` runs here (checked with `--version`/`-V`).
fn have(program: &str) -> bool {
    let flag = if program == "ip" || program == "tc" {
        "-V"
    } else {
        "--version"
    };
    run(program, &[flag]).is_ok()
}

/// One interface of a host: a veth pair from the host to a bridge.
#[derive(Clone, Debug)]
pub struct TLink {
    pub host: usize,
    pub bridge: usize,
    /// The host's end (inside the host's namespace).
    pub dev: String,
    /// The switch's end (inside the switch namespace, a bridge port).
    pub port: String,
    /// Its IPv4 address (a /24 per bridge); None on an IPv6-only link.
    pub v4: Option<Ipv4Addr>,
    /// False once deleted with [`Topo::remove_link`].
    pub present: bool,
}

/// A network of namespaces: one switch namespace holding any number of
/// bridges, and hosts each with any number of links to them. Bridge `b`
/// is the subnet `10.200.b.0/24`, host `h`'s address on it is
/// `10.200.b.(h+1)` (IPv6 link-local addresses come from the kernel; DAD
/// is off in every host, so they are usable at once). Nodes run with
/// their defaults (every interface, both families, mDNS on, `[::]:7373`)
/// plus a group port unique to the test and whatever the test adds.
///
/// Like [`Lan`], everything is torn down on drop, whether the test passed
/// or not.
pub struct Topo {
    pub dir: Option<tempfile::TempDir>,
    tag: String,
    /// `--group` of every node: an IPv4 group and port unique to the test.
    pub group: String,
    pub group_ip: Ipv4Addr,
    pub group_port: u16,
    /// `--announce-interval` of every node (seconds).
    pub interval: String,
    pub switch_ns: String,
    pub bridges: Vec<String>,
    /// Host namespaces.
    pub hosts: Vec<String>,
    pub links: Vec<TLink>,
    namespaces: Vec<String>,
}

impl Topo {
    /// An empty topology (a switch namespace without bridges), or None
    /// (after printing why) when this machine cannot build one: not root,
    /// no `ip netns`, or one of `tools` (such as "nft", "tc") is missing.
    pub fn new(tools: &[&str]) -> Option<Topo> {
        if unsafe { libc::geteuid() } != 0 {
            skipping("needs root (network namespaces)");
            return None;
        }
        for t in std::iter::once(&"ip").chain(tools) {
            if !have(t) {
                skipping(&format!("needs `{t}`, which is not installed"));
                return None;
            }
        }
        let pid = std::process::id();
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tag = format!("{:06x}{:02x}", pid & 0xff_ffff, count & 0xff);
        let switch_ns = format!("lanshare-{tag}-sw");
        if let Err(e) = run("ip", &["netns", "add", &switch_ns]) {
            skipping(&format!("cannot create a network namespace: {e}"));
            return None;
        }
        let group_ip = Ipv4Addr::new(239, 255, 1 + (pid % 200) as u8, 1 + (count % 250) as u8);
        let group_port = (20_000 + (pid % 2_000) * 10 + count % 10) as u16;
        let topo = Topo {
            dir: Some(tempfile::tempdir().expect("temp dir")),
            tag,
            group: format!("{group_ip}:{group_port}"),
            group_ip,
            group_port,
            interval: "1".into(),
            switch_ns: switch_ns.clone(),
            bridges: Vec::new(),
            hosts: Vec::new(),
            links: Vec::new(),
            namespaces: vec![switch_ns.clone()],
        };
        ip(&format!("-n {switch_ns} link set lo up"));
        // The switch takes no part in IPv6: its ports stay silent.
        sysctl(&switch_ns, "net.ipv6.conf.all.disable_ipv6", "1");
        sysctl(&switch_ns, "net.ipv6.conf.default.disable_ipv6", "1");
        Some(topo)
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("temp dir").path()
    }

    pub fn home(&self, name: &str) -> PathBuf {
        self.dir().join(name)
    }

    /// Namespace of host `h`.
    pub fn ns(&self, h: usize) -> &str {
        &self.hosts[h]
    }

    /// Adds a bridge (a LAN segment); returns its index.
    pub fn add_bridge(&mut self) -> usize {
        let b = self.bridges.len();
        let br = format!("lb{}{b:x}", self.tag);
        // No IGMP/MLD snooping: the bridge floods multicast to every port.
        ip(&format!(
            "-n {} link add {br} type bridge mcast_snooping 0",
            self.switch_ns
        ));
        ip(&format!(
            "-n {} link set {br} multicast on up",
            self.switch_ns
        ));
        self.bridges.push(br);
        b
    }

    /// Adds a host namespace with only `lo` in it; returns its index.
    pub fn add_host(&mut self) -> usize {
        let h = self.hosts.len();
        let ns = format!("lanshare-{}-h{h}", self.tag);
        ip(&format!("netns add {ns}"));
        self.namespaces.push(ns.clone());
        ip(&format!("-n {ns} link set lo up"));
        // Link-local addresses usable as soon as a link is up.
        sysctl(&ns, "net.ipv6.conf.all.accept_dad", "0");
        sysctl(&ns, "net.ipv6.conf.default.accept_dad", "0");
        self.hosts.push(ns);
        h
    }

    /// The IPv4 address host `h` gets on bridge `b`.
    pub fn addr(b: usize, h: usize) -> Ipv4Addr {
        assert!(b < 250 && h < 250);
        Ipv4Addr::new(10, 200, b as u8, h as u8 + 1)
    }

    /// Connects host `h` to bridge `b` with its IPv4 address (and IPv6
    /// link-local); returns the link's index.
    pub fn connect(&mut self, h: usize, b: usize) -> usize {
        self.connect_with(h, b, Some(Topo::addr(b, h)))
    }

    /// Connects host `h` to bridge `b` with no IPv4 address at all.
    pub fn connect_v6_only(&mut self, h: usize, b: usize) -> usize {
        self.connect_with(h, b, None)
    }

    /// Connects host `h` to bridge `b`, with `v4` (a /24) if given.
    pub fn connect_with(&mut self, h: usize, b: usize, v4: Option<Ipv4Addr>) -> usize {
        let l = self.links.len();
        assert!(l < 256);
        // Not "veth*": that prefix is excluded from discovery by default.
        let dev = format!("lh{}{l:02x}", self.tag);
        let port = format!("lp{}{l:02x}", self.tag);
        let (sw, ns, br) = (&self.switch_ns, &self.hosts[h], &self.bridges[b]);
        // Both ends are created straight inside their namespaces: no link
        // ever exists in the root namespace.
        ip(&format!(
            "-n {sw} link add {port} type veth peer name {dev} netns {ns}"
        ));
        ip(&format!(
            "-n {sw} link set {port} master {br} multicast on up"
        ));
        if let Some(a) = v4 {
            ip(&format!("-n {ns} addr add {a}/24 dev {dev}"));
        }
        ip(&format!("-n {ns} link set {dev} multicast on up"));
        self.links.push(TLink {
            host: h,
            bridge: b,
            dev,
            port,
            v4,
            present: true,
        });
        l
    }

    /// Plugs link `l`'s cable in or pulls it out at the switch (its switch
    /// port goes up or down; the host keeps its interface and addresses,
    /// with no carrier).
    pub fn set_cable(&self, l: usize, plugged: bool) {
        let state = if plugged { "up" } else { "down" };
        ip(&format!(
            "-n {} link set {} {state}",
            self.switch_ns, self.links[l].port
        ));
    }

    /// Deletes link `l` (both ends vanish from their namespaces).
    pub fn remove_link(&mut self, l: usize) {
        let link = &mut self.links[l];
        ip(&format!("-n {} link del {}", self.switch_ns, link.port));
        link.present = false;
    }

    /// The kernel's IPv6 link-local address of link `l` (on the host's
    /// end), once it is usable (not tentative); panics after 10 s.
    pub fn link_local(&self, l: usize) -> std::net::Ipv6Addr {
        let link = &self.links[l];
        let ns = &self.hosts[link.host];
        let mut found = None;
        let ok = wait_until(Duration::from_secs(10), || {
            let out = output(
                "ip",
                &["-n", ns, "-j", "-6", "addr", "show", "dev", &link.dev],
            );
            let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
            found = v
                .as_array()
                .into_iter()
                .flatten()
                .flat_map(|i| i["addr_info"].as_array().cloned().unwrap_or_default())
                .find(|a| {
                    a["scope"] == "link"
                        && a["tentative"] != true
                        && a["dadfailed"] != true
                        && a["local"].as_str().is_some()
                })
                .and_then(|a| a["local"].as_str().and_then(|s| s.parse().ok()));
            found.is_some()
        });
        assert!(ok, "no usable link-local address on {} in {ns}", link.dev);
        found.unwrap()
    }

    /// IPv4 addresses configured on link `l` (empty on an IPv6-only one).
    pub fn v4_addrs(&self, l: usize) -> Vec<Ipv4Addr> {
        let link = &self.links[l];
        let out = output(
            "ip",
            &[
                "-n",
                &self.hosts[link.host],
                "-j",
                "-4",
                "addr",
                "show",
                "dev",
                &link.dev,
            ],
        );
        let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        v.as_array()
            .into_iter()
            .flatten()
            .flat_map(|i| i["addr_info"].as_array().cloned().unwrap_or_default())
            .filter_map(|a| a["local"].as_str().and_then(|s| s.parse().ok()))
            .collect()
    }

    /// Makes host `h` an IPv4 router between its links.
    pub fn forward(&self, h: usize) {
        sysctl(&self.hosts[h], "net.ipv4.ip_forward", "1");
    }

    /// Adds a route on host `h`: `to` (CIDR) via gateway `via`.
    pub fn route(&self, h: usize, to: &str, via: Ipv4Addr) {
        ip(&format!("-n {} route add {to} via {via}", self.hosts[h]));
    }

    /// Shapes link `l`'s egress from its host.
    pub fn shape(&self, l: usize, rate: &str) {
        let link = &self.links[l];
        ip(&format!(
            "netns exec {} tc qdisc add dev {} root tbf rate {rate} burst 32kb latency 400ms",
            self.hosts[link.host], link.dev
        ));
    }

    /// Loads an nftables script (`nft -f -`) into host `h`'s namespace.
    pub fn nft(&self, h: usize, script: &str) {
        if let Err(e) = run_with_input(
            "ip",
            &["netns", "exec", &self.hosts[h], "nft", "-f", "-"],
            script,
        ) {
            panic!("{e}");
        }
    }

    /// Packets counted so far by the nftables rules of table `inet TABLE`
    /// in host `h` whose comment is `comment`.
    pub fn nft_packets(&self, h: usize, table: &str, comment: &str) -> u64 {
        let out = output(
            "ip",
            &[
                "netns",
                "exec",
                &self.hosts[h],
                "nft",
                "list",
                "table",
                "inet",
                table,
            ],
        );
        let tag = format!("comment \"{comment}\"");
        out.lines()
            .filter(|l| l.contains(&tag))
            .map(|l| {
                let n = l
                    .split("packets ")
                    .nth(1)
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|n| n.parse::<u64>().ok());
                n.unwrap_or_else(|| panic!("no packet counter in nft rule {l:?}"))
            })
            .sum()
    }

    /// A firewall in host `h` that drops the test's discovery group (the
    /// IPv4 group and the IPv6 group ff02::6c61:6e73, UDP to the group
    /// port), both ways. [`Topo::dropped_group_packets`] counts the drops.
    pub fn drop_group(&self, h: usize) {
        let (g4, port) = (self.group_ip, self.group_port);
        let g6 = "ff02::6c61:6e73";
        let rules = |hook: &str| {
            format!(
                "chain {hook} {{ type filter hook {hook} priority 0; policy accept;
                    ip daddr {g4} udp dport {port} counter drop comment \"group\"
                    ip6 daddr {g6} udp dport {port} counter drop comment \"group\"
                }}"
            )
        };
        self.nft(
            h,
            &format!(
                "table inet lanshare_drop {{\n{}\n{}\n}}\n",
                rules("input"),
                rules("output")
            ),
        );
    }

    /// Packets the [`Topo::drop_group`] firewall of host `h` dropped.
    pub fn dropped_group_packets(&self, h: usize) -> u64 {
        self.nft_packets(h, "lanshare_drop", "group")
    }

    /// Counts (and lets through) mDNS packets (UDP port 5353) in and out
    /// of host `h`; see [`Topo::mdns_packets`].
    pub fn count_mdns(&self, h: usize) {
        self.nft(
            h,
            "table inet lanshare_count {
                chain input { type filter hook input priority 0; policy accept;
                    udp dport 5353 counter comment \"mdns\"
                    udp sport 5353 counter comment \"mdns\"
                }
                chain output { type filter hook output priority 0; policy accept;
                    udp dport 5353 counter comment \"mdns\"
                    udp sport 5353 counter comment \"mdns\"
                }
            }\n",
        );
    }

    pub fn mdns_packets(&self, h: usize) -> u64 {
        self.nft_packets(h, "lanshare_count", "mdns")
    }

    /// Writes `files` into NAME's shared/ and starts its node on host `h`
    /// with the defaults plus `extra`.
    pub fn node(&self, h: usize, name: &str, files: &[(&str, &[u8])], extra: &[&str]) -> NetNode {
        let shared = self.home(name).join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        for (file, data) in files {
            std::fs::write(shared.join(file), data).unwrap();
        }
        self.start(h, name, extra)
    }

    /// Starts (or restarts) node NAME on host `h`: `lanshare up` with its
    /// defaults except a group unique to the test, the test's announce
    /// interval, a 0.2 s scan interval, and `extra`.
    pub fn start(&self, h: usize, name: &str, extra: &[&str]) -> NetNode {
        let mut args: Vec<String> = vec![
            "--group".into(),
            self.group.clone(),
            "--announce-interval".into(),
            self.interval.clone(),
            "--scan-interval".into(),
            "0.2".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let v4 = self
            .links
            .iter()
            .filter(|l| l.host == h && l.present)
            .find_map(|l| l.v4);
        spawn_up(&self.hosts[h], self.dir(), name, &args, v4)
    }

    /// Starts a command inside host `h`'s namespace (killed with the test).
    pub fn spawn(&self, h: usize, program: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.hosts[h], program])
            .args(args);
        die_with_parent(&mut cmd);
        cmd
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        let ports: Vec<&str> = self
            .links
            .iter()
            .filter(|l| l.present)
            .map(|l| l.port.as_str())
            .collect();
        let bridges: Vec<&str> = self.bridges.iter().map(String::as_str).collect();
        teardown(&self.switch_ns, &ports, &bridges, &self.namespaces);
        keep_dir(&mut self.dir);
    }
}

/// The python3 interpreter itself (not a pyenv-style shim), when it can
/// import `zeroconf`.
pub fn python_with_zeroconf() -> Option<String> {
    let out = Command::new("python3")
        .args(["-c", "import sys, zeroconf; print(sys.executable)"])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Browses `_lanshare._tcp.local.` with python zeroconf's ServiceBrowser
/// and prints one JSON line per event: {"event": "added" | "updated" |
/// "removed", "name", "port", "addresses", "txt": {key: value}}.
const BROWSER: &str = r#"
import json, sys
from zeroconf import Zeroconf, ServiceBrowser, ServiceStateChange

TYPE = "_lanshare._tcp.local."

def out(**kw):
    print(json.dumps(kw), flush=True)

def on_change(zeroconf, service_type, name, state_change):
    event = state_change.name.lower()
    if state_change is ServiceStateChange.Removed:
        out(event=event, name=name)
        return
    info = zeroconf.get_service_info(service_type, name, timeout=3000)
    if info is None:
        out(event=event, name=name, resolved=False)
        return
    txt = {k.decode("utf-8", "replace"): (None if v is None else v.decode("utf-8", "replace"))
           for k, v in info.properties.items()}
    out(event=event, name=name, resolved=True, port=info.port,
        addresses=info.parsed_addresses(), server=info.server, txt=txt)

zc = Zeroconf()
browser = ServiceBrowser(zc, TYPE, handlers=[on_change])
out(event="browsing")
try:
    sys.stdin.read()  # until the test closes stdin (or dies)
finally:
    browser.cancel()
    zc.close()
"#;

/// A python zeroconf service browser running inside a host namespace;
/// killed on drop.
/// Starts `python -u -c SCRIPT ARGS...` inside host `h`, with stdin piped
/// (the script runs until it closes) and each JSON line it prints sent to
/// the returned receiver; stderr goes to a file named after `what`.
fn python_json_lines(
    topo: &Topo,
    h: usize,
    python: &str,
    what: &str,
    script_and_args: &[&str],
) -> (Child, mpsc::Receiver<serde_json::Value>, PathBuf) {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let stderr_path = topo.dir().join(format!("{what}.{n}.stderr"));
    let mut args = vec!["-u", "-c"];
    args.extend_from_slice(script_and_args);
    let mut cmd = topo.spawn(h, python, &args);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("start the python {what}: {e}"));
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                let _ = tx.send(v);
            }
        }
    });
    (child, rx, stderr_path)
}

pub struct Browser {
    child: Option<Child>,
    lines: mpsc::Receiver<serde_json::Value>,
    pub seen: Vec<serde_json::Value>,
    stderr_path: PathBuf,
}

impl Browser {
    /// Starts the browser on host `h`; None (after printing why) when
    /// python3 cannot import zeroconf.
    pub fn start(topo: &Topo, h: usize) -> Option<Browser> {
        let Some(python) = python_with_zeroconf() else {
            skipping("needs python3 with the zeroconf package (pip install zeroconf)");
            return None;
        };
        let (child, rx, stderr_path) = python_json_lines(topo, h, &python, "zeroconf", &[BROWSER]);
        let mut b = Browser {
            child: Some(child),
            lines: rx,
            seen: Vec::new(),
            stderr_path,
        };
        let started = b.wait_for(Duration::from_secs(30), |v| v["event"] == "browsing");
        assert!(
            started.is_some(),
            "zeroconf browser did not start: {}",
            b.stderr()
        );
        Some(b)
    }

    /// Waits up to `timeout` for an event matching `pred` (events already
    /// received count); every event is kept in `seen`.
    pub fn wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        if let Some(v) = self.seen.iter().find(|v| pred(v)) {
            return Some(v.clone());
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return Some(v);
                    }
                }
                Err(_) => return None,
            }
        }
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Registers one `_lanshare._tcp.local.` service with python zeroconf,
/// exactly as described by the JSON in argv[1] ({"instance", "port",
/// "addresses", "txt": {key: value}}), prints {"event": "registered"};
/// on the stdin line "unregister" unregisters it (goodbye packets with TTL
/// 0) and prints {"event": "unregistered"}; then waits for stdin to close.
const FORGER: &str = r#"
import ipaddress, json, socket, sys
from zeroconf import Zeroconf, ServiceInfo

TYPE = "_lanshare._tcp.local."

def out(**kw):
    print(json.dumps(kw), flush=True)

cfg = json.loads(sys.argv[1])
addrs = [ipaddress.ip_address(a).packed for a in cfg["addresses"]]
info = ServiceInfo(TYPE, cfg["instance"] + "." + TYPE, addresses=addrs,
                   port=cfg["port"], properties=cfg["txt"],
                   server=cfg["instance"] + "-host.local.")
zc = Zeroconf()
try:
    zc.register_service(info)
    out(event="registered")
    for line in sys.stdin:
        if line.strip() == "unregister":
            zc.unregister_service(info)
            out(event="unregistered")
            break
    sys.stdin.read()  # until the test closes stdin (or dies)
finally:
    zc.close()
"#;

/// A python zeroconf responder inside a host namespace that registers a
/// `_lanshare._tcp.local.` record saying whatever the test wants (any
/// instance name, port, addresses and TXT, such as another node's id),
/// then unregisters it cleanly when told; killed on drop.
pub struct Forger {
    child: Option<Child>,
    lines: mpsc::Receiver<serde_json::Value>,
    stderr_path: PathBuf,
}

impl Forger {
    /// Registers instance `instance` on host `h` with SRV port `port`, A/AAAA
    /// `addresses` and TXT `txt`; returns once zeroconf says it is
    /// registered. None (after printing why) when python3 cannot import
    /// zeroconf.
    pub fn start(
        topo: &Topo,
        h: usize,
        instance: &str,
        port: u16,
        addresses: &[std::net::IpAddr],
        txt: &[(&str, &str)],
    ) -> Option<Forger> {
        let Some(python) = python_with_zeroconf() else {
            skipping("needs python3 with the zeroconf package (pip install zeroconf)");
            return None;
        };
        let cfg = serde_json::json!({
            "instance": instance,
            "port": port,
            "addresses": addresses.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
            "txt": txt.iter().map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
                .collect::<serde_json::Map<_, _>>(),
        })
        .to_string();
        let (child, rx, stderr_path) =
            python_json_lines(topo, h, &python, "forger", &[FORGER, &cfg]);
        let f = Forger {
            child: Some(child),
            lines: rx,
            stderr_path,
        };
        f.expect("registered", Duration::from_secs(30));
        Some(f)
    }

    /// Waits for the event `event`; panics with zeroconf's stderr after
    /// `timeout`.
    fn expect(&self, event: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if v["event"] == event => return,
                Ok(_) => {}
                Err(_) => panic!(
                    "the zeroconf forger did not report {event:?} within {timeout:?}: {}",
                    self.stderr()
                ),
            }
        }
    }

    /// Unregisters the record (zeroconf sends its goodbye packets) and
    /// returns once that is done.
    pub fn unregister(&mut self) {
        use std::io::Write;
        let stdin = self
            .child
            .as_mut()
            .and_then(|c| c.stdin.as_mut())
            .expect("forger's stdin");
        stdin
            .write_all(b"unregister\n")
            .and_then(|_| stdin.flush())
            .expect("tell the forger to unregister");
        self.expect("unregistered", Duration::from_secs(30));
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for Forger {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
