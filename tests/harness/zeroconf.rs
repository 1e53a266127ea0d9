//! python zeroconf inside a host namespace: [`Browser`], a DNS-SD
//! browser, and [`Forger`], a responder that registers whatever record a
//! test wants.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::node::{log_path, unique};
use super::skipping;
use super::topo::Topo;

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
    let stderr_path = topo.dir().join(format!("{what}.{}.stderr", unique()));
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
