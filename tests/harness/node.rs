//! [`Node`]: one lanshare node, in this process or as a `lanshare up`
//! process (on loopback or inside a namespace), driven the same way.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::fetch_run::FetchRun;
use super::inproc::InProcess;
use super::{BIN, client, die_with_parent, kill_child, read_lines, stop_child};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// How long a node may take to answer `status` after it is started.
const START: Duration = Duration::from_secs(60);

/// A number unique in this test process, for file and namespace names.
pub fn unique() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// How the node runs.
enum Run {
    /// A `lanshare up` process (None once stopped or killed).
    Process(Option<Child>),
    /// A node inside this test process (None once stopped).
    InProcess(Option<Box<InProcess>>),
}

/// One lanshare node, stopped (killed for a process) when dropped.
pub struct Node {
    pub name: String,
    pub home: PathBuf,
    /// The host's (first) IPv4 address; None on an IPv6-only host.
    pub addr: Option<Ipv4Addr>,
    /// Where its peer server listens (from `status`, or from `bind`).
    pub listen: SocketAddr,
    /// Its log (RUST_LOG=lanshare=debug).
    pub stderr_path: PathBuf,
    /// Its node id (32 hex digits).
    node_id: String,
    run: Run,
}

/// How to start one `lanshare up` process.
pub struct Launch<'a> {
    /// Network namespace to run in (`ip netns exec`), or None for this one.
    pub ns: Option<&'a str>,
    pub home: &'a Path,
    pub name: &'a str,
    /// Every flag of `up` but `--home` and `--name`.
    pub args: Vec<String>,
    pub addr: Option<Ipv4Addr>,
}

/// `DIR/NAME.N.EXT` beside `home` (DIR/NAME): a fresh log file name.
pub fn log_path(home: &Path, name: &str, ext: &str) -> PathBuf {
    let dir = home.parent().unwrap_or(Path::new("."));
    dir.join(format!("{name}.{}.{ext}", unique()))
}

impl Launch<'_> {
    /// Spawns the process; [`Node::wait_started`] waits until it answers.
    pub fn spawn(&self) -> Node {
        self.spawn_wrapped(&[])
    }

    /// Spawns the process through `wrapper` (a command that ends by
    /// exec'ing its arguments, so the PID stays lanshare's), inside the
    /// namespace if there is one.
    pub fn spawn_wrapped(&self, wrapper: &[String]) -> Node {
        std::fs::create_dir_all(self.home).unwrap();
        let stderr_path = log_path(self.home, self.name, "stderr");
        let stdout_path = stderr_path.with_extension("stdout");
        let mut cmd = match self.ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).args(wrapper).arg(BIN);
                c
            }
            None if wrapper.is_empty() => Command::new(BIN),
            None => {
                let mut c = Command::new(&wrapper[0]);
                c.args(&wrapper[1..]).arg(BIN);
                c
            }
        };
        cmd.args(["up", "--home"])
            .arg(self.home)
            .args(["--name", self.name])
            .args(&self.args)
            .env("RUST_LOG", "lanshare=debug")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).unwrap())
            .stderr(std::fs::File::create(&stderr_path).unwrap());
        die_with_parent(&mut cmd);
        // `ip netns exec` execs the command: the child's PID is lanshare's.
        let child = cmd.spawn().expect("start lanshare up");
        Node {
            name: self.name.into(),
            home: self.home.into(),
            addr: self.addr,
            listen: SocketAddr::from(([0, 0, 0, 0], 0)),
            stderr_path,
            node_id: String::new(),
            run: Run::Process(Some(child)),
        }
    }

    /// Spawns the process and waits until it answers `status`.
    pub fn start(&self) -> Node {
        let mut node = self.spawn();
        node.wait_started();
        node
    }
}

impl Node {
    /// A node running in this process, as [`InProcess::start`] bound it.
    pub(super) fn in_process(run: InProcess, addr: Option<Ipv4Addr>) -> Node {
        Node {
            name: run.name.clone(),
            home: run.home.clone(),
            addr,
            listen: run.listen,
            stderr_path: run.log_path.clone(),
            node_id: run.id.clone(),
            run: Run::InProcess(Some(Box::new(run))),
        }
    }

    /// Waits until the process answers `status --json` over its control
    /// socket (every socket is bound by then), and takes its id and listen
    /// address from the answer; panics with its log if it exits first.
    pub fn wait_started(&mut self) {
        let deadline = Instant::now() + START;
        loop {
            if !self.alive() {
                panic!("node {} did not start: {}", self.name, self.log_tail());
            }
            let out = self.cli(&["status", "--json"]);
            if out.status.success() {
                let v: serde_json::Value =
                    serde_json::from_slice(&out.stdout).expect("status --json is JSON");
                self.node_id = v["id"].as_str().expect("status has an id").to_string();
                self.listen = v["listen"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("no listen address in status {v}"));
                return;
            }
            if Instant::now() >= deadline {
                panic!("node {} did not start: {}", self.name, self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The process id; None in process or once stopped.
    pub fn pid(&self) -> Option<u32> {
        match &self.run {
            Run::Process(c) => c.as_ref().map(|c| c.id()),
            Run::InProcess(_) => None,
        }
    }

    pub fn is_in_process(&self) -> bool {
        matches!(self.run, Run::InProcess(_))
    }

    pub fn shared(&self) -> PathBuf {
        self.home.join("shared")
    }
    pub fn downloads(&self) -> PathBuf {
        self.home.join("downloads")
    }

    /// True while the node runs.
    pub fn alive(&mut self) -> bool {
        match &mut self.run {
            Run::Process(Some(c)) => matches!(c.try_wait(), Ok(None)),
            Run::Process(None) => false,
            Run::InProcess(r) => r.as_ref().is_some_and(|r| r.running()),
        }
    }

    /// Runs a client command against this node's home (from this test's
    /// namespace: it only uses the node's Unix control socket).
    pub fn cli(&self, args: &[&str]) -> Output {
        client(&self.home, args).output().expect("run lanshare")
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

    fn json_list(&self, args: &[&str]) -> Vec<serde_json::Value> {
        match self.json(args) {
            serde_json::Value::Array(v) => v,
            other => panic!("`lanshare {}` is not a list: {other}", args.join(" ")),
        }
    }

    pub fn ls(&self) -> Vec<serde_json::Value> {
        self.json_list(&["ls", "--json"])
    }

    pub fn peers(&self) -> Vec<serde_json::Value> {
        self.json_list(&["peers", "--json"])
    }

    pub fn status(&self) -> serde_json::Value {
        self.json(&["status", "--json"])
    }

    /// Runs `lanshare fetch NAME` to the end.
    pub fn fetch(&self, name: &str) -> Output {
        self.cli(&["fetch", name])
    }

    /// Runs `lanshare share PATH ARGS...`.
    pub fn share(&self, path: &Path, args: &[&str]) -> Output {
        let path = path.to_str().expect("a UTF-8 path");
        let mut all = vec!["share", path];
        all.extend_from_slice(args);
        self.cli(&all)
    }

    /// The peer called `name` in this node's `peers --json`.
    pub fn peer(&self, name: &str) -> Option<serde_json::Value> {
        self.peers().into_iter().find(|p| p["name"] == name)
    }

    /// Whether this node lists the peer called `name` as online.
    pub fn sees_online(&self, name: &str) -> bool {
        self.peer(name).is_some_and(|p| p["online"] == true)
    }

    /// How this node found the peer called `name` (empty when unknown).
    pub fn found_via(&self, name: &str) -> std::collections::BTreeSet<String> {
        self.peer(name)
            .and_then(|p| p["found_via"].as_array().cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|v| v.as_str().map(String::from))
            .collect()
    }

    /// Whether this node's `ls` lists `file` with `holder` among its holders.
    pub fn lists(&self, file: &str, holder: &str) -> bool {
        self.ls().iter().any(|v| {
            v["name"] == file
                && v["holders"]
                    .as_array()
                    .is_some_and(|hs| hs.iter().any(|h| h["name"] == holder))
        })
    }

    /// A counter of `status --json`, by a path like
    /// `datagrams_received/broadcast`; panics when the status lacks it.
    pub fn counter(&self, path: &str) -> u64 {
        let st = self.status();
        st.pointer(&format!("/{path}"))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or_else(|| panic!("no {path} in {} status: {st}", self.name))
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
        FetchRun::start(&self.home, name)
    }

    /// Runs `lanshare fetch NAME` to the end (at most `timeout`); panics
    /// with the fetch's output and the node's log when it fails. Returns
    /// the fetch's stdout.
    pub fn fetch_ok(&self, name: &str, timeout: Duration) -> String {
        let what = format!("`lanshare fetch {name}` on {} did not succeed", self.name);
        self.spawn_fetch(name).finish_ok(timeout, &what, &[self])
    }

    /// Stops the node cleanly (SIGTERM for a process) and waits for it.
    pub fn stop(&mut self) {
        match &mut self.run {
            Run::Process(c) => stop_child(c),
            Run::InProcess(r) => {
                if let Some(r) = r.take() {
                    r.stop();
                }
            }
        }
    }

    /// Ends the node at once: SIGKILL for a process (a crash); in process,
    /// its tasks are dropped where they stand, without a goodbye.
    pub fn kill(&mut self) {
        match &mut self.run {
            Run::Process(c) => kill_child(c),
            Run::InProcess(r) => {
                if let Some(r) = r.take() {
                    r.abort();
                }
            }
        }
    }

    /// Sends SIGTERM (a clean stop) without waiting; [`Node::stop`] or
    /// drop reaps the process. In process, the same as [`Node::stop`].
    pub fn terminate(&mut self) {
        match &self.run {
            Run::Process(Some(c)) => unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
            },
            Run::Process(None) => {}
            Run::InProcess(_) => self.stop(),
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

    /// This node's id (32 hex digits), as `status` gives it.
    pub fn id(&self) -> String {
        self.node_id.clone()
    }

    /// The TCP port the node listens on.
    pub fn port(&self) -> u16 {
        self.listen.port()
    }

    pub fn download_log(&self) -> Vec<String> {
        read_lines(&self.home.join("download_log.txt"))
    }

    pub fn upload_log(&self) -> Vec<String> {
        read_lines(&self.home.join("upload_log.txt"))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}
