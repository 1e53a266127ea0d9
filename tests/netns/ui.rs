//! The dashboard in a real headless browser (Chromium driven by selenium,
//! tests/ui/dashboard.py) on a LAN of namespaces: the fetching node's page
//! shows the other node, its files and comments, narrows the list by
//! search and category, shows a new file without a reload, fetches with
//! a progress bar (identical bytes land in downloads/), cancels; the
//! holder's page shows the upload while it runs (its uplink is shaped so
//! the transfer takes seconds). `lanshare transfers` shows the same.
//! Screenshots go to target/ui-shots/. Skips (SKIPPED line) where
//! chromium or selenium cannot run, unless LANSHARE_REQUIRE_NETNS is set.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::harness::{Lan, Node, data, sha256_hex, skipping, wait_until};
use super::{DISCOVERY, MIB, wait_holders};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ui/dashboard.py");

/// Why the browser cannot run here, if it cannot.
fn browser_missing() -> Option<String> {
    for bin in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        if !std::path::Path::new(bin).exists() {
            return Some(format!(
                "{bin} is missing (apt-get install chromium chromium-driver)"
            ));
        }
    }
    let selenium = Command::new("python3")
        .args(["-c", "import selenium"])
        .output();
    match selenium {
        Ok(o) if o.status.success() => None,
        _ => Some("python3 with selenium is missing (pip install selenium)".into()),
    }
}

/// One browser script, killed (by PID) if the test ends first.
struct Script {
    child: Option<Child>,
    what: &'static str,
}

impl Script {
    fn start(lan: &Lan, host: usize, what: &'static str, args: &[String]) -> Script {
        let child = Command::new("ip")
            .args(["netns", "exec", lan.ns(host), "python3", SCRIPT])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3");
        Script {
            child: Some(child),
            what,
        }
    }

    /// Waits for the script; its RESULT, or the test fails with its output.
    fn result(&mut self) -> Option<serde_json::Value> {
        let out = self.child.take().unwrap().wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if out.status.code() == Some(77) {
            skipping(&format!("the browser cannot run: {}", stdout.trim()));
            return None;
        }
        assert!(
            out.status.success(),
            "the {} page failed: {stdout}\n{stderr}",
            self.what
        );
        let line = stdout
            .lines()
            .find_map(|l| l.strip_prefix("RESULT "))
            .expect("a RESULT line");
        Some(serde_json::from_str(line).unwrap())
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn ui_url(node: &Node) -> String {
    node.status()["ui"]
        .as_str()
        .expect("the dashboard runs")
        .to_string()
}

/// `lanshare transfers --json` of `node`.
fn transfers(node: &Node) -> serde_json::Value {
    let out = node.cli(&["transfers", "--json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

#[test]
fn the_dashboard_in_a_real_browser() {
    if let Some(why) = browser_missing() {
        return skipping(&why);
    }
    let Some(lan) = Lan::new(2) else { return };
    let concert = data(24 * MIB, 21);
    let big = data(24 * MIB, 22);
    let a = lan.node(
        0,
        "alpha",
        &[
            ("concert.mkv", &concert),
            ("notes.txt", b"setlist"),
            ("big.bin", &big),
        ],
    );
    let extra = lan.dir().join("recordings");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(extra.join("live-set.ogg"), data(MIB, 23)).unwrap();
    let out = a.share(
        &extra,
        &["--comment", "recorded live", "--category", "audio"],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // 24 MiB at 16 Mbit/s: about 12 s, long enough to watch.
    lan.shape(0, "16mbit");
    let b = lan.node(1, "beta", &[]);
    wait_holders(&b, "concert.mkv", 1);
    wait_holders(&b, "recordings/live-set.ogg", 1);

    let shots = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/ui-shots");
    let common = |url: String| {
        vec![
            "--url".to_string(),
            url,
            "--shots".into(),
            shots.display().to_string(),
        ]
    };
    let mut holder = Script::start(
        &lan,
        0,
        "holder's",
        &[vec!["holder".into()], common(ui_url(&a))].concat(),
    );
    let fresh = a.shared().join("fresh.txt");
    let fetch_args = [
        vec!["fetcher".to_string()],
        common(ui_url(&b)),
        vec!["--add-file".into(), fresh.display().to_string()],
    ]
    .concat();
    let started = Instant::now();
    let mut fetcher = Script::start(&lan, 1, "fetcher's", &fetch_args);

    // The CLI shows the same transfers while the page downloads.
    let mut cli_saw = (false, false);
    while started.elapsed() < DISCOVERY * 2 && !(cli_saw.0 && cli_saw.1) {
        let (down, up) = (transfers(&b), transfers(&a));
        cli_saw.0 |= down["downloads"].as_array().is_some_and(|d| {
            d.iter()
                .any(|d| d["name"] == "concert.mkv" && d["done"].as_u64() > Some(0))
        });
        cli_saw.1 |= up["uploads"].as_array().is_some_and(|u| {
            u.iter()
                .any(|u| u["name"] == "concert.mkv" && u["sent"].as_u64() > Some(0))
        });
        if fetcher
            .child
            .as_mut()
            .unwrap()
            .try_wait()
            .unwrap()
            .is_some()
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let Some(got) = fetcher.result() else { return };
    let Some(held) = holder.result() else { return };
    eprintln!("browser figures: fetcher {got} holder {held}");
    assert!(
        cli_saw.0 && cli_saw.1,
        "`lanshare transfers` never showed the download and the upload: {cli_saw:?}"
    );
    let file = std::fs::read(b.downloads().join("concert.mkv")).unwrap();
    assert_eq!(
        sha256_hex(&file),
        sha256_hex(&concert),
        "downloaded bytes differ"
    );
    assert!(
        wait_until(Duration::from_secs(5), || !b
            .downloads()
            .join("big.bin")
            .exists()),
        "the cancelled download finished anyway"
    );
    let seen = got["new_file_seen_ms"].as_u64().unwrap();
    assert!(
        seen < 10_000,
        "a new file took {seen} ms to appear in the page"
    );
}
