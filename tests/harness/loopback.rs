//! [`Net`]: nodes on one host, discovery pinned to loopback
//! (`--interface 127.0.0.1 --no-mdns`), each test with its own multicast
//! group and port; and [`Sniffer`], which counts the datagrams sent to it.

use std::net::{Ipv4Addr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::inproc::InProcess;
use super::node::{Launch, Node, unique};
use super::write_shared;

/// A fresh multicast group and port no other test uses: the port comes from
/// the OS (a free UDP port), the group from the PID and a counter.
pub fn unique_group() -> String {
    let n = unique();
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind a UDP port");
    let port = sock.local_addr().unwrap().port();
    let pid = std::process::id();
    format!("239.255.{}.{}:{port}", 1 + (pid % 200), 1 + (n % 250))
}

/// A set of nodes sharing one multicast group on loopback.
pub struct Net {
    pub dir: tempfile::TempDir,
    pub group: String,
    pub interval: String,
}

/// A node to start with [`Net::start_together`]: its name and the files
/// (name, bytes) it shares.
pub type NodeSpec = (String, Vec<(String, Vec<u8>)>);

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

    /// The flags of every node of this net: pinned to 127.0.0.1 without
    /// mDNS, this net's group and interval, then `scan` (the scan interval
    /// flag, if any) and `extra`.
    pub fn args(&self, scan: Option<&str>, extra: &[&str]) -> Vec<String> {
        let mut args: Vec<String> = [
            "--listen",
            "127.0.0.1:0",
            "--interface",
            "127.0.0.1",
            "--no-mdns",
            "--group",
            &self.group,
            "--announce-interval",
            &self.interval,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(scan) = scan {
            args.extend(["--scan-interval".to_string(), scan.to_string()]);
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    }

    /// Writes `files` into NAME's shared/ and starts it as a process;
    /// waits until it is up.
    pub fn node(&self, name: &str, files: &[(&str, &[u8])]) -> Node {
        self.node_with(name, files, &[])
    }

    pub fn node_with(&self, name: &str, files: &[(&str, &[u8])], extra: &[&str]) -> Node {
        let home = self.home(name);
        write_shared(&home, files);
        self.launch(&home, name, Some("0.2"), extra).start()
    }

    /// Writes `files` into NAME's shared/ and starts it inside this test
    /// process; returns once its sockets are bound.
    pub fn in_process(&self, name: &str, files: &[(&str, &[u8])]) -> Node {
        self.in_process_with(name, files, &[])
    }

    /// Like [`Net::node_with`], in this test process: the same flags,
    /// parsed by the same `cli` types into the node's configuration.
    pub fn in_process_with(&self, name: &str, files: &[(&str, &[u8])], extra: &[&str]) -> Node {
        let home = self.home(name);
        write_shared(&home, files);
        let run = InProcess::start(&home, name, &self.args(Some("0.2"), extra));
        Node::in_process(run, Some(Ipv4Addr::LOCALHOST))
    }

    /// Restarts a stopped node with the same home.
    pub fn restart(&self, node: &Node, extra: &[&str]) -> Node {
        self.launch(&node.home, &node.name, Some("0.2"), extra)
            .start()
    }

    fn launch<'a>(
        &self,
        home: &'a std::path::Path,
        name: &'a str,
        scan: Option<&str>,
        extra: &[&str],
    ) -> Launch<'a> {
        Launch {
            ns: None,
            home,
            name,
            args: self.args(scan, extra),
            addr: Some(Ipv4Addr::LOCALHOST),
        }
    }

    /// Starts one node per entry of `nodes` (name, files to share) all at
    /// once: every process is spawned before any is awaited. Each is
    /// pinned to 127.0.0.1 with `--no-mdns` and this net's group and
    /// interval, with the default scan interval, plus `extra`.
    pub fn start_together(&self, nodes: &[NodeSpec], extra: &[&str]) -> Vec<Node> {
        let mut started = Vec::new();
        for (name, files) in nodes {
            let home = self.home(name);
            let files: Vec<(&str, &[u8])> = files
                .iter()
                .map(|(f, d)| (f.as_str(), d.as_slice()))
                .collect();
            write_shared(&home, &files);
            started.push(self.launch(&home, name, None, extra).spawn());
        }
        for node in &mut started {
            node.wait_started();
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
