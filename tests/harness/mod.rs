//! The one test harness of every integration test.
//!
//! A [`Node`] is a lanshare node however it runs: in this test process
//! over the library's `node` API ([`Net::in_process`]), as a `lanshare up`
//! process pinned to loopback ([`Net::node`]), or as a process inside a
//! host namespace of a test LAN ([`Lan`], [`Topo`]). Whatever the kind, it
//! is driven the same way: `ls`, `peers`, `status`, `fetch`, `share` go
//! through the `lanshare` client over the node's control socket, and its
//! id and listen address come from `status --json` (or, in process, from
//! what `bind` hands back), never from its banner.
//!
//! Cleanup never depends on the test passing: a node, a fetch client, a
//! browser stop their own process (by PID) or task when dropped; a LAN
//! kills what is left in its namespaces and deletes them.
#![allow(dead_code, unused_imports)]

mod fetch_run;
mod inproc;
mod loopback;
mod netns;
mod node;
mod topo;
mod zeroconf;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub use fetch_run::FetchRun;
pub use loopback::{Net, NodeSpec, SniffCounts, Sniffer};
pub use netns::{Host, Lan, PORT, in_netns};
pub use node::Node;
pub use topo::{TLink, Topo};
pub use zeroconf::{Browser, Forger, python_with_zeroconf};

pub const BIN: &str = env!("CARGO_BIN_EXE_lanshare");

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

/// Writes `files` (path, bytes) into `home`/shared, creating it and the
/// folders of the paths.
pub fn write_shared(home: &Path, files: &[(&str, &[u8])]) {
    let shared = home.join("shared");
    std::fs::create_dir_all(&shared).unwrap();
    for (file, data) in files {
        let path = shared.join(file);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).unwrap();
        }
        std::fs::write(path, data).unwrap();
    }
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

/// The lines of a text file (none if it cannot be read).
pub fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// Makes the child die with SIGKILL if the test thread that started it ends
/// without cleaning up (a last resort; Drop guards do the real work).
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
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

/// A `lanshare` client command run against `home`, stdin closed.
pub fn client(home: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).arg("--home").arg(home).stdin(Stdio::null());
    cmd
}
