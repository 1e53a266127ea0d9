//! [`Lan`]: a LAN made of Linux network namespaces.
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
//! [`super::Topo`] is the general form, for the discovery tests.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::node::{Launch, Node, unique};
use super::{skipping, write_shared};

/// TCP port of every node (each has its own address, so they never clash).
pub const PORT: u16 = 7000;

/// Runs a command to completion; Err carries its stderr.
pub(super) fn run(program: &str, args: &[&str]) -> Result<(), String> {
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
pub(super) fn ip(args: &str) {
    if let Err(e) = run("ip", &args.split_whitespace().collect::<Vec<_>>()) {
        panic!("{e}");
    }
}

fn skip() -> Option<Lan> {
    skipping("needs root and iproute2 (ip, tc)");
    None
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
        let count = unique();
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

    /// Changes the rate of host `i`'s shaped uplink ([`Lan::shape`] first).
    pub fn shape_change(&self, i: usize, rate: &str) {
        let h = &self.hosts[i];
        ip(&format!(
            "netns exec {} tc qdisc change dev {} root tbf rate {rate} burst 32kb latency 400ms",
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
    pub fn node(&self, i: usize, name: &str, files: &[(&str, &[u8])]) -> Node {
        write_shared(&self.home(name), files);
        self.start(i, name)
    }

    /// Starts (or restarts) node NAME on host `i` with home `self.home(name)`;
    /// returns once it answers `status`.
    pub fn start(&self, i: usize, name: &str) -> Node {
        self.start_wrapped(i, name, &[])
    }

    /// Starts node NAME on host `i` with its downloads/ on a tmpfs of
    /// `size` (`mount -o size=`, e.g. "12m") mounted in the node's own
    /// mount namespace (`unshare -m`): no other process sees it, and it
    /// goes when the node exits. The test reaches it through
    /// `/proc/PID/root` ([`Node::pid`]). None when `unshare` is missing.
    pub fn start_small_disk(&self, i: usize, name: &str, size: &str) -> Option<Node> {
        if !have("unshare") {
            super::skipping("needs unshare (util-linux) for a small file system");
            return None;
        }
        let downloads = self.home(name).join("downloads");
        std::fs::create_dir_all(&downloads).unwrap();
        let wrapper: Vec<String> = [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            &format!("mount -t tmpfs -o size={size},mode=0755 lanshare-test \"$0\" && exec \"$@\""),
            downloads.to_str().expect("UTF-8 temp path"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Some(self.start_wrapped(i, name, &wrapper))
    }

    fn start_wrapped(&self, i: usize, name: &str, wrapper: &[String]) -> Node {
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
        let home = self.home(name);
        let node = Launch {
            ns: Some(&h.ns),
            home: &home,
            name,
            args,
            addr: Some(h.addr),
        };
        let mut node = node.spawn_wrapped(wrapper);
        node.wait_started();
        assert_eq!(node.listen, listen, "listen address in status");
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
pub(super) fn teardown(switch_ns: &str, ports: &[&str], bridges: &[&str], namespaces: &[String]) {
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
pub(super) fn keep_dir(dir: &mut Option<tempfile::TempDir>) {
    if std::env::var_os("LANSHARE_TEST_KEEP").is_some()
        && let Some(dir) = dir.take()
    {
        eprintln!("kept {}", dir.keep().display());
    }
}

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

/// Runs `program args` with `input` on its stdin; Err carries its stderr.
pub(super) fn run_with_input(program: &str, args: &[&str], input: &str) -> Result<(), String> {
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
pub(super) fn output(program: &str, args: &[&str]) -> String {
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
pub(super) fn sysctl(ns: &str, key: &str, value: &str) {
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
pub(super) fn have(program: &str) -> bool {
    let flag = if program == "ip" || program == "tc" {
        "-V"
    } else {
        "--version"
    };
    run(program, &[flag]).is_ok()
}
