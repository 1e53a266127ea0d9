//! Nodes on one host, discovery pinned to loopback: in this test process
//! where a test only drives them through the client, as `lanshare up`
//! processes where it kills one, restarts one or reads its own log.

mod harness;

#[path = "loopback/discovery.rs"]
mod discovery;
#[path = "hostile/mod.rs"]
mod hostile;
#[path = "loopback/tracker_api.rs"]
mod tracker_api;
#[path = "loopback/ui_api.rs"]
mod ui_api;

use std::time::{Duration, Instant};

use harness::{Net, check_log_line, data, sha256_hex, wait_until};

fn names(ls: &[serde_json::Value]) -> Vec<String> {
    ls.iter()
        .map(|v| v["name"].as_str().unwrap().to_string())
        .collect()
}

/// A node that starts sees the others' content at once (query + answer),
/// not after their next periodic announcement (30 s here).
#[test]
fn discovery_within_a_second_without_waiting_for_a_period() {
    let mut net = Net::new();
    net.interval = "30".into();
    let a = net.in_process("alpha", &[("photo.png", b"pixels")]);
    // Let alpha finish its first announcement before beta exists.
    assert!(wait_until(
        Duration::from_secs(5),
        || a.status()["shared_contents"] == 1
    ));
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    let b = net.in_process("beta", &[]);
    assert!(
        wait_until(Duration::from_secs(3), || names(&b.ls()) == ["photo.png"]),
        "beta did not see alpha's file within 3 s (periodic announce is 30 s)"
    );
    eprintln!("discovered in {:?}", started.elapsed());
    let peers = b.peers();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0]["name"], "alpha");
    assert_eq!(peers[0]["online"], true);
    assert_eq!(peers[0]["addr"], a.listen.to_string());
    // Found by multicast (alpha's answer to the query, jittered by up to
    // 0.3 s), perhaps after peer exchange: alpha asks beta for its peers as
    // soon as it pulled beta, offering its own port.
    let by_multicast = || {
        b.peers()[0]["found_via"]
            .as_array()
            .is_some_and(|v| v.iter().any(|x| x == "multicast"))
    };
    assert!(
        wait_until(Duration::from_secs(3), by_multicast),
        "{:?}",
        b.peers()
    );
}

/// `fetch photo` finds photo.png, pulls it from both holders, and the
/// result is byte-identical; all three logs are well formed.
#[test]
fn fetch_by_name_without_extension_from_two_holders() {
    let net = Net::new();
    let content = data(24 << 20, 1);
    let a = net.in_process("alpha", &[("photo.png", &content)]);
    let b = net.in_process("beta", &[("photo.png", &content)]);
    let c = net.in_process("gamma", &[]);
    assert!(
        wait_until(Duration::from_secs(10), || c
            .ls()
            .first()
            .is_some_and(|v| v["complete"] == 2)),
        "gamma never saw two holders"
    );

    let out = c.fetch("photo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fetch failed: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = std::fs::read(c.downloads().join("photo.png")).unwrap();
    assert!(got == content, "downloaded bytes differ");
    let sha = sha256_hex(&content);
    assert!(
        stdout.contains(&sha),
        "fetch output shows the SHA-256: {stdout}"
    );

    let id = c.ls()[0]["id"].as_str().unwrap().to_string();
    let dl = std::fs::read_to_string(c.home.join("download_log.txt")).unwrap();
    let lines: Vec<&str> = dl.lines().collect();
    assert_eq!(lines.len(), 1);
    let f = check_log_line(lines[0], "download");
    assert_eq!(f[2], "photo.png");
    assert_eq!(f[3], content.len().to_string());
    assert_eq!(f[4], id);
    assert!(
        f[5].contains(&format!("alpha@{}", a.listen))
            && f[5].contains(&format!("beta@{}", b.listen)),
        "peers field {:?}",
        f[5]
    );
    assert_eq!(f[8], "ok");
    assert_eq!(f[9], format!("sha256={sha}"));

    let mut served = 0;
    for holder in [&a, &b] {
        let ul = std::fs::read_to_string(holder.home.join("upload_log.txt")).unwrap_or_default();
        for line in ul.lines() {
            let f = check_log_line(line, "upload");
            assert_eq!(f[2], "photo.png");
            assert_eq!(f[4], id);
            assert!(
                f[5].starts_with("gamma@127.0.0.1:"),
                "peer field {:?}",
                f[5]
            );
            assert_eq!(f[8], "ok");
            served += f[3].parse::<u64>().unwrap();
        }
        assert!(
            !ul.is_empty(),
            "{} served nothing: the fetch did not use both holders",
            holder.name
        );
    }
    // Every byte once, plus at most the endgame's duplicate requests: one
    // per chunk in flight when the last chunk was handed out (2 peers x 4).
    let len = content.len() as u64;
    assert!(
        served >= len && served <= len + (8 << 20),
        "holders served {served} bytes for a {len}-byte file"
    );

    // The fetched file is now shared by gamma too.
    assert!(wait_until(Duration::from_secs(5), || a.ls().iter().any(
        |v| v["complete"] == 2
            && v["holders"]
                .as_array()
                .unwrap()
                .iter()
                .any(|h| h["name"] == "gamma")
    )));
}

/// A name that matches two different contents downloads nothing, exits
/// non-zero and lists both candidates with their ids.
#[test]
fn ambiguous_name_is_refused_with_candidates() {
    let net = Net::new();
    let _a = net.in_process("alpha", &[("photo.png", b"png bytes")]);
    let _b = net.in_process("beta", &[("photo.jpg", b"jpg bytes")]);
    let c = net.in_process("gamma", &[]);
    assert!(wait_until(Duration::from_secs(10), || c.ls().len() == 2));
    let out = c.fetch("photo");
    assert_eq!(out.status.code(), Some(3));
    let err = String::from_utf8_lossy(&out.stderr);
    for v in c.ls() {
        assert!(
            err.contains(v["id"].as_str().unwrap()),
            "candidate {} missing from: {err}",
            v["name"]
        );
    }
    assert!(err.contains("photo.png") && err.contains("photo.jpg"));
    assert_eq!(
        std::fs::read_dir(c.downloads()).unwrap().count(),
        0,
        "nothing downloaded"
    );

    // The exact name, or an id prefix, picks one.
    let out = c.fetch("PHOTO.JPG");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(c.downloads().join("photo.jpg")).unwrap(),
        b"jpg bytes"
    );
    let png_id = c
        .ls()
        .into_iter()
        .find(|v| v["name"] == "photo.png")
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let out = c.fetch(&png_id[..10]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(c.downloads().join("photo.png")).unwrap(),
        b"png bytes"
    );

    // Unknown names exit 3 too.
    assert_eq!(c.fetch("nothing-like-this").status.code(), Some(3));
}

/// A clean stop removes the node from its peers at once; files added while
/// running are announced within a few seconds.
#[test]
fn goodbye_and_live_inventory_changes() {
    let mut net = Net::new();
    net.interval = "30".into();
    let mut a = net.in_process("alpha", &[("one.txt", b"1")]);
    let b = net.in_process("beta", &[]);
    assert!(wait_until(Duration::from_secs(5), || names(&b.ls()) == ["one.txt"]));

    std::fs::write(a.shared().join("two.txt"), b"2").unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || names(&b.ls())
            == ["one.txt", "two.txt"]),
        "new file not announced"
    );
    std::fs::remove_file(a.shared().join("one.txt")).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || names(&b.ls()) == ["two.txt"]),
        "removed file still offered"
    );

    a.stop();
    assert!(
        wait_until(Duration::from_secs(2), || b.ls().is_empty()
            && b.peers()[0]["online"] == false),
        "goodbye not honoured"
    );
}

/// A node that crashes disappears after a few missed announcements.
#[test]
fn killed_node_expires_after_missed_announcements() {
    let net = Net::new(); // 0.5 s interval: expiry after 3 x 0.5 s + 0.5 s
    let mut a = net.node("alpha", &[("one.txt", b"1")]);
    let b = net.node("beta", &[]);
    assert!(wait_until(Duration::from_secs(5), || b.ls().len() == 1));
    a.kill();
    let killed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(10), || b.ls().is_empty()),
        "killed node never expired"
    );
    let took = killed.elapsed();
    assert!(
        took >= Duration::from_millis(1000),
        "expired after {took:?}: too early, before 3 missed announcements"
    );
    assert_eq!(b.peers()[0]["online"], false);
}

/// Restarting a node reuses the index cache instead of hashing again.
#[test]
fn restart_reuses_index_cache_and_identity() {
    let net = Net::new();
    let content = data(3 << 20, 7);
    let mut a = net.node("alpha", &[("big.bin", &content)]);
    assert!(wait_until(
        Duration::from_secs(10),
        || a.status()["shared_contents"] == 1
    ));
    let id1 = a.status()["id"].clone();
    assert_eq!(a.log_text().matches("indexed").count(), 1);
    a.stop();
    let a2 = net.restart(&a, &[]);
    assert!(wait_until(
        Duration::from_secs(10),
        || a2.status()["shared_contents"] == 1
    ));
    assert_eq!(a2.status()["id"], id1, "identity is kept across restarts");
    assert_eq!(
        a2.log_text().matches("indexed").count(),
        0,
        "file was hashed again: {}",
        a2.log_text()
    );
}

/// Fetching what this node already holds reports it and transfers nothing;
/// a second download of other content with the same name never overwrites.
#[test]
fn never_overwrites_and_knows_what_it_has() {
    let net = Net::new();
    let _a = net.in_process("alpha", &[("report.pdf", b"version two")]);
    let b = net.in_process("beta", &[]);
    std::fs::write(b.downloads().join("report.pdf"), b"version one, unrelated").unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || names(&b.ls()) == ["report.pdf"]),
        "{:?}",
        b.ls()
    );
    let out = b.fetch("report");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(b.downloads().join("report.pdf")).unwrap(),
        b"version one, unrelated"
    );
    assert_eq!(
        std::fs::read(b.downloads().join("report (1).pdf")).unwrap(),
        b"version two"
    );
    // b now holds report.pdf's content; fetching it again is a no-op.
    assert!(wait_until(
        Duration::from_secs(5),
        || b.status()["shared_contents"] == 2
    ));
    let listed = b.ls();
    let id = listed[0]["id"].as_str().unwrap();
    assert_eq!(listed.len(), 1, "alpha offers one content: {listed:?}");
    let again = b.fetch(&id[..16]);
    assert!(again.status.success());
    assert!(String::from_utf8_lossy(&again.stdout).contains("already here"));
}

/// Commands explain what to do when no node runs in the home.
#[test]
fn clear_error_without_a_running_node() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(harness::BIN)
        .args(["ls", "--home"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no lanshare node is running") && err.contains("lanshare up"),
        "{err}"
    );
    assert!(!err.contains("panicked"));
}

/// `share` adds a folder with a comment and category, picked up live.
#[test]
fn share_with_comment_and_category() {
    let net = Net::new();
    let a = net.in_process("alpha", &[]);
    let b = net.in_process("beta", &[]);
    let extra = net.dir.path().join("music");
    std::fs::create_dir_all(&extra).unwrap();
    std::fs::write(extra.join("song.bin"), b"la la la").unwrap();
    let out = a.cli(&[
        "share",
        extra.to_str().unwrap(),
        "--comment",
        "live set",
        "--category",
        "audio",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // A shared folder's files are named by their path from its name, and
    // the folder is listed too.
    assert!(wait_until(Duration::from_secs(5), || names(&b.ls())
        == ["music", "music/song.bin"]));
    let v = &b.ls()[1];
    assert_eq!(v["comment"], "live set");
    assert_eq!(v["category"], "audio");
    let out = b.cli(&["ls", "--json", "--category", "video"]);
    assert_eq!(
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout)
            .unwrap()
            .len(),
        0
    );
}

/// `--peer HOST:PORT` reaches a node with multicast off entirely: its
/// content is listed and fetched, and it expires when it dies.
#[test]
fn manual_peer_without_multicast() {
    let net = Net::new();
    let content = data(3 << 20, 9);
    let mut a = net.node_with("alpha", &[("clip.mp4", &content)], &["--no-multicast"]);
    let target = a.listen.to_string();
    let b = net.node_with("beta", &[], &["--no-multicast", "--peer", &target]);
    assert!(
        wait_until(Duration::from_secs(10), || names(&b.ls()) == ["clip.mp4"]),
        "manual peer's content never listed"
    );
    let peers = b.peers();
    assert_eq!(peers[0]["name"], "alpha");
    assert_eq!(peers[0]["found_via"], serde_json::json!(["manual"]));
    let out = b.fetch("clip");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(std::fs::read(b.downloads().join("clip.mp4")).unwrap() == content);
    a.kill();
    assert!(
        wait_until(Duration::from_secs(10), || b.ls().is_empty()),
        "dead manual peer still offered"
    );
    assert_eq!(b.peers()[0]["online"], false);
}

/// Regression: `lanshare peers | head -0` panicked on the broken pipe.
#[test]
fn closed_stdout_is_not_a_panic() {
    let net = Net::new();
    let a = net.in_process("alpha", &[]);
    let mut child = std::process::Command::new(harness::BIN)
        .args(["peers", "--json", "--home"])
        .arg(&a.home)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take()); // the reader goes away before any output
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    use std::os::unix::process::ExitStatusExt;
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?}",
        out.status
    );
}
