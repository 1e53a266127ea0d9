//! Downloads that survive (issue 12): a node killed with SIGKILL
//! mid-download goes on by itself when started again, fetching little
//! twice; a cancelled download never comes back; a chunk corrupted on disk
//! while the node was down is found, fetched again and never served; a
//! file deleted a moment ago is not "already here"; a small disk refuses a
//! download that cannot fit, and one that fills up mid-download pauses and
//! goes on once space is freed, leaving logs, index and state intact.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::harness::{Lan, Node, data, read_lines, sha256_hex, uploaded_bytes, wait_until};
use super::{MIB, TRANSFER, wait_holders, wait_midway};

/// The job list of a node.
fn jobs_file(node: &Node) -> PathBuf {
    node.home.join(".lanshare/downloads.json")
}

/// The chunks named by `node`'s saved resume states (all downloads).
fn saved_chunks(node: &Node) -> Vec<u32> {
    std::fs::read_dir(node.home.join(".lanshare/partial"))
        .map(|d| {
            d.flatten()
                .filter(|e| e.path().extension().is_some_and(|x| x == "state"))
                .filter_map(|e| lanshare::store::saved_chunks(&e.path()))
                .flatten()
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until `node`'s saved resume state names some chunk: the state is
/// saved about once a second, after a sync that a loaded disk can slow
/// down, and a kill before it leaves nothing to resume from.
fn wait_saved(node: &Node) {
    assert!(
        wait_until(Duration::from_secs(30), || !saved_chunks(node).is_empty()),
        "no resume state named a chunk\n{}",
        node.log_tail()
    );
}

/// The partial files in `dir`.
fn part_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(".part"))
                .collect()
        })
        .unwrap_or_default()
}

/// `lanshare transfers --json` of `node`.
fn transfers(node: &Node) -> serde_json::Value {
    let out = node.cli(&["transfers", "--json"]);
    assert!(out.status.success(), "transfers failed: {out:?}");
    serde_json::from_slice(&out.stdout).expect("transfers --json is JSON")
}

/// Waits until `path` holds exactly `content`.
fn wait_file(path: &Path, content: &[u8], node: &Node, what: &str) {
    let sha = sha256_hex(content);
    assert!(
        wait_until(TRANSFER, || std::fs::read(path)
            .is_ok_and(|b| b.len() == content.len() && sha256_hex(&b) == sha)),
        "{what}: {} never held the right bytes; transfers: {}\n{}",
        path.display(),
        transfers(node),
        node.log_tail()
    );
}

/// The fetcher is SIGKILLed midway through a download and started again,
/// with no fetch command: the download finishes by itself, from the chunks
/// it had, so the holder serves well under 1.5x the file in all.
#[test]
fn a_download_killed_midway_finishes_by_itself_after_a_restart() {
    let Some(lan) = Lan::new(2) else { return };
    let content = data(32 * MIB, 41);
    lan.shape(0, "32mbit");
    let seeder = lan.node(0, "seeder", &[("movie.mkv", &content)]);
    let mut fetcher = lan.node(1, "fetcher", &[]);
    wait_holders(&fetcher, "movie.mkv", 1);

    let mut run = fetcher.spawn_fetch("movie");
    let at = wait_midway(&mut run, &fetcher, 40.0, "the fetcher could be killed");
    wait_saved(&fetcher);
    fetcher.kill();
    run.kill();
    eprintln!("killed the fetcher at {at:?}%");
    assert!(
        jobs_file(&fetcher).exists(),
        "no job recorded for the download"
    );

    let fetcher = lan.start(1, "fetcher");
    let target = fetcher.downloads().join("movie.mkv");
    wait_file(&target, &content, &fetcher, "the resumed download");
    let last = fetcher.download_log().pop().expect("a download log line");
    let f: Vec<&str> = last.split('\t').collect();
    assert_eq!(
        (f[1], f[2], f[8]),
        ("download", "movie.mkv", "ok"),
        "{last}"
    );
    let fetched: u64 = f[3].parse().unwrap();
    assert!(
        fetched < content.len() as u64,
        "the restart fetched the whole file again ({fetched} bytes): {last}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || !jobs_file(&fetcher).exists()),
        "the finished job is still listed"
    );
    // Every upload is logged once its connection ends.
    let limit = content.len() as u64 * 3 / 2;
    let mut served = 0;
    wait_until(Duration::from_secs(15), || {
        served = uploaded_bytes(&seeder.upload_log());
        served >= content.len() as u64
    });
    assert!(
        served >= content.len() as u64 && served < limit,
        "the holder served {served} bytes for a {} byte file (limit {limit})",
        content.len()
    );
    assert!(part_files(&fetcher.downloads()).is_empty());
}

/// A download stopped with the node goes on when it starts again (listed
/// in `transfers`); cancelled then, it is gone for good: its partial file
/// is deleted and it does not come back after another restart.
#[test]
fn a_cancelled_download_does_not_come_back_after_a_restart() {
    let Some(lan) = Lan::new(2) else { return };
    let content = data(24 * MIB, 42);
    lan.shape(0, "16mbit");
    let _seeder = lan.node(0, "seeder", &[("album.zip", &content)]);
    let mut fetcher = lan.node(1, "fetcher", &[]);
    wait_holders(&fetcher, "album.zip", 1);

    let mut run = fetcher.spawn_fetch("album");
    wait_midway(&mut run, &fetcher, 10.0, "the node could be stopped");
    fetcher.stop();
    run.kill();
    let mut fetcher = lan.start(1, "fetcher");
    let resumed = |t: &serde_json::Value| {
        t["downloads"].as_array().is_some_and(|d| {
            d.iter().any(|d| {
                d["name"] == "album.zip" && (d["state"] == "downloading" || d["state"] == "waiting")
            })
        })
    };
    assert!(
        wait_until(Duration::from_secs(30), || resumed(&transfers(&fetcher))),
        "the download did not resume by itself: {}\n{}",
        transfers(&fetcher),
        fetcher.log_tail()
    );
    let out = fetcher.cli(&["cancel", "album"]);
    assert!(out.status.success(), "cancel failed: {out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("for good"),
        "{out:?}"
    );
    assert!(
        wait_until(Duration::from_secs(10), || part_files(&fetcher.downloads())
            .is_empty()),
        "the cancelled download's partial file is still there"
    );
    assert!(!jobs_file(&fetcher).exists(), "the job is still recorded");

    fetcher.stop();
    let fetcher = lan.start(1, "fetcher");
    wait_holders(&fetcher, "album.zip", 1);
    // Time for a resumed job to show up and start.
    std::thread::sleep(Duration::from_secs(4));
    let t = transfers(&fetcher);
    assert!(
        t["downloads"].as_array().is_none_or(|d| d.is_empty()),
        "a cancelled download came back: {t}"
    );
    assert!(part_files(&fetcher.downloads()).is_empty());
    assert!(!fetcher.downloads().join("album.zip").exists());
}

/// A chunk the resume state names but that was overwritten on disk while
/// the node was down is found when the node starts again (re-checked
/// before it is served or kept), fetched again, and never served: a third
/// node downloading from the restarted one meanwhile never gets a bad
/// chunk from it.
#[test]
fn a_chunk_corrupted_while_the_node_was_down_is_fetched_again_and_never_served() {
    let Some(lan) = Lan::new(3) else { return };
    let content = data(24 * MIB, 43);
    lan.shape(0, "24mbit");
    let seeder = lan.node(0, "seeder", &[("disk.img", &content)]);
    let mut fetcher = lan.node(1, "fetcher", &[]);
    wait_holders(&fetcher, "disk.img", 1);

    let mut run = fetcher.spawn_fetch("disk");
    wait_midway(&mut run, &fetcher, 35.0, "the fetcher could be killed");
    // Kill only once the resume state names chunk 0 (the state is saved
    // about once a second, after a sync that a loaded disk can slow down).
    assert!(
        wait_until(Duration::from_secs(30), || saved_chunks(&fetcher)
            .contains(&0)),
        "the resume state never named chunk 0: {:?}\n{}",
        saved_chunks(&fetcher),
        fetcher.log_tail()
    );
    fetcher.kill();
    run.kill();
    // Chunk 0 is named by the saved state: overwrite part of it.
    let parts = part_files(&fetcher.downloads());
    assert_eq!(parts.len(), 1, "{parts:?}");
    let f = OpenOptions::new().write(true).open(&parts[0]).unwrap();
    f.write_all_at(&vec![0x5a; 4096], 1000).unwrap();
    drop(f);

    // The seeder slows down, so the restarted node holds chunk 0 late.
    lan.shape_change(0, "4mbit");
    let fetcher = lan.start(1, "fetcher");
    let other = lan.node(2, "other", &[]);
    wait_holders(&other, "disk.img", 1);
    let mut third = other.spawn_fetch("disk");
    wait_file(
        &fetcher.downloads().join("disk.img"),
        &content,
        &fetcher,
        "the restarted fetcher",
    );
    let stdout = third.finish_ok(
        TRANSFER,
        "the third node's fetch failed",
        &[&other, &fetcher],
    );
    // Two checks race at restart, both correct: the re-check of the
    // chunks the state names, and the follower reading chunk 0 back for
    // the SHA-256; the first to read the corrupted chunk says so.
    let found = fetcher.log_text().lines().any(|l| {
        l.contains("chunk=0")
            && (l.contains("resumed chunk fails its hash on disk")
                || l.contains("chunk failed the check on disk"))
    });
    assert!(
        found,
        "the corrupted chunk was not found at restart:\n{}",
        fetcher.log_tail()
    );
    let bad_from_fetcher = stdout
        .lines()
        .any(|l| l.contains("dropped peer fetcher@") && l.contains("hash"));
    assert!(
        !bad_from_fetcher,
        "the restarted node served a corrupted chunk: {stdout}"
    );
    assert_eq!(
        sha256_hex(&std::fs::read(other.downloads().join("disk.img")).unwrap()),
        sha256_hex(&content)
    );
    drop(seeder);
}

/// Issue 12's churn case: a file deleted a moment ago was reported as
/// "already here" (exit 0). Deleted and fetched at once, it is fetched
/// from the network again.
#[test]
fn a_file_deleted_a_moment_ago_is_fetched_again_not_already_here() {
    let Some(lan) = Lan::new(2) else { return };
    let content = data(3 * MIB, 44);
    let _seeder = lan.node(0, "seeder", &[("notes.pdf", &content)]);
    let fetcher = lan.node(1, "fetcher", &[]);
    wait_holders(&fetcher, "notes.pdf", 1);
    fetcher.fetch_ok("notes.pdf", TRANSFER);
    let target = fetcher.downloads().join("notes.pdf");
    for round in 0..3 {
        std::fs::remove_file(&target).unwrap();
        let out = fetcher.fetch("notes.pdf");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && !stdout.contains("already here"),
            "round {round}: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(
            sha256_hex(&std::fs::read(&target).unwrap()),
            sha256_hex(&content)
        );
    }
    // Still held: now it is already here.
    let out = fetcher.fetch("notes.pdf");
    assert!(String::from_utf8_lossy(&out.stdout).contains("already here"));
}

/// Fills the file system holding `dir` with `dir/filler.bin`; its size.
fn fill(dir: &Path) -> u64 {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler.bin")).unwrap();
    let block = vec![0xffu8; 64 << 10];
    let mut n = 0u64;
    while f.write_all(&block).is_ok() {
        n += block.len() as u64;
    }
    let _ = f.sync_all();
    n
}

/// On a small file system (a tmpfs of 12 MiB as the fetcher's
/// downloads/): a file that cannot fit is refused up front, saying how much
/// is needed, how much is free and where; a disk filled by another file
/// mid-download pauses the download (shown by `fetch` and `transfers`),
/// which goes on and completes once the filler is deleted, with the logs,
/// the index and the job list intact.
#[test]
fn a_small_disk_refuses_up_front_and_pauses_when_it_fills() {
    let Some(lan) = Lan::new(2) else { return };
    let big = data(16 * MIB, 45);
    let mid = data(6 * MIB, 46);
    lan.shape(0, "8mbit");
    // A folder whose files each fit, but not all of them together.
    let trip = lan.home("seeder").join("shared/trip");
    std::fs::create_dir_all(&trip).unwrap();
    std::fs::write(trip.join("one.bin"), data(7 * MIB, 47)).unwrap();
    std::fs::write(trip.join("two.bin"), data(7 * MIB, 48)).unwrap();
    let _seeder = lan.node(0, "seeder", &[("big.iso", &big), ("mid.bin", &mid)]);
    let Some(fetcher) = lan.start_small_disk(1, "fetcher", "12m") else {
        return;
    };
    // The fetcher's downloads/ as the fetcher sees it.
    let pid = fetcher.pid().expect("a process");
    let downloads = PathBuf::from(format!("/proc/{pid}/root")).join(
        fetcher
            .downloads()
            .strip_prefix("/")
            .expect("an absolute home"),
    );
    wait_holders(&fetcher, "big.iso", 1);
    wait_holders(&fetcher, "mid.bin", 1);

    // Bounded: a build without the check would pause on the full disk.
    let mut refused = fetcher.spawn_fetch("big.iso");
    let status = refused.wait(Duration::from_secs(60));
    refused.kill();
    let said = format!("{}{}", refused.stdout(), refused.stderr);
    assert!(
        status.is_some_and(|s| !s.success()),
        "a 16 MiB file was not refused on a 12 MiB disk ({status:?}): {said}"
    );
    assert!(
        said.contains("not enough free space in")
            && said.contains("downloads")
            && said.contains("16.0MiB more")
            && said.contains("is free"),
        "unclear refusal: {said}"
    );
    assert!(
        part_files(&downloads).is_empty(),
        "a refused download left a file"
    );

    wait_holders(&fetcher, "trip/two.bin", 1);
    let mut refused = fetcher.spawn_fetch("trip");
    let status = refused.wait(Duration::from_secs(60));
    refused.kill();
    let said = format!("{}{}", refused.stdout(), refused.stderr);
    assert!(
        status.is_some_and(|s| !s.success())
            && said.contains("not enough free space in")
            && said.contains("14.0MiB more"),
        "a 14 MiB folder was not refused on a 12 MiB disk ({status:?}): {said}"
    );
    assert!(
        !downloads.join("trip").exists() && !jobs_file(&fetcher).exists(),
        "a refused folder left a folder or a job"
    );

    let mut run = fetcher.spawn_fetch("mid.bin");
    wait_midway(&mut run, &fetcher, 10.0, "the disk could be filled");
    let filled = fill(&downloads);
    eprintln!("filled the disk with {filled} bytes");
    let paused = |t: &serde_json::Value| {
        t["downloads"].as_array().is_some_and(|d| {
            d.iter().any(|d| {
                d["state"] == "paused"
                    && d["detail"]
                        .as_str()
                        .is_some_and(|s| s.contains("mid.bin needs"))
            })
        })
    };
    assert!(
        wait_until(Duration::from_secs(30), || paused(&transfers(&fetcher))),
        "the download did not pause: {}\n{}",
        transfers(&fetcher),
        fetcher.log_tail()
    );
    assert!(
        wait_until(Duration::from_secs(5), || run
            .stdout()
            .contains("paused: the disk is full")),
        "fetch does not say it paused: {}",
        run.stdout()
    );
    assert!(fetcher.log_text().contains("download paused"));
    assert!(!run.exited(), "the fetch gave up instead of pausing");

    std::fs::remove_file(downloads.join("filler.bin")).unwrap();
    let stdout = run.finish_ok(TRANSFER, "the paused fetch did not finish", &[&fetcher]);
    assert!(
        stdout.contains(&format!("sha256 {}", sha256_hex(&mid))),
        "{stdout}"
    );
    let got = std::fs::read(downloads.join("mid.bin")).unwrap();
    assert_eq!(sha256_hex(&got), sha256_hex(&mid));
    // Logs, index and state intact.
    for line in read_lines(&fetcher.home.join("download_log.txt")) {
        assert!(line.split('\t').count() >= 9, "broken log line {line:?}");
    }
    let last = fetcher.download_log().pop().unwrap();
    assert!(
        last.contains("\tmid.bin\t") && last.contains("\tok"),
        "{last}"
    );
    assert!(part_files(&downloads).is_empty());
    assert!(
        !jobs_file(&fetcher).exists(),
        "the finished job is still listed"
    );
    let index = fetcher.home.join(".lanshare/index.bin");
    assert!(
        wait_until(Duration::from_secs(10), || index.exists()),
        "no index cache"
    );
    let ls = fetcher.ls();
    assert!(
        ls.iter()
            .any(|c| c["name"] == "mid.bin" && c["local"] == true),
        "the finished file is not held: {ls:?}"
    );
}

/// A folder download killed midway goes on by itself after a restart, into
/// the folder it started in (never `holiday (1)`), and its job leaves the
/// list once the whole tree is in place.
#[test]
fn a_folder_download_killed_midway_finishes_in_its_folder_after_a_restart() {
    let Some(lan) = Lan::new(2) else { return };
    let (a, b) = (data(12 * MIB, 43), data(12 * MIB, 44));
    let shared = lan.home("seeder").join("shared");
    std::fs::create_dir_all(shared.join("holiday/day1")).unwrap();
    std::fs::create_dir_all(shared.join("holiday/empty")).unwrap();
    std::fs::write(shared.join("holiday/day1/a.bin"), &a).unwrap();
    std::fs::write(shared.join("holiday/b.bin"), &b).unwrap();
    lan.shape(0, "32mbit");
    let _seeder = lan.start(0, "seeder");
    let mut fetcher = lan.node(1, "fetcher", &[]);
    wait_holders(&fetcher, "holiday/b.bin", 1);
    wait_holders(&fetcher, "holiday/day1/a.bin", 1);

    let mut run = fetcher.spawn_fetch("holiday");
    let at = wait_midway(&mut run, &fetcher, 30.0, "the fetcher could be killed");
    wait_saved(&fetcher);
    fetcher.kill();
    run.kill();
    eprintln!("killed the fetcher at {at:?}% of the folder");
    let jobs = std::fs::read_to_string(jobs_file(&fetcher)).expect("a job list");
    assert!(
        jobs.contains("\"folder\"") && !jobs.contains("\"kind\": \"file\""),
        "the folder is recorded as one job, its files not one by one: {jobs}"
    );

    let fetcher = lan.start(1, "fetcher");
    let root = fetcher.downloads().join("holiday");
    wait_file(&root.join("day1/a.bin"), &a, &fetcher, "the resumed folder");
    wait_file(&root.join("b.bin"), &b, &fetcher, "the resumed folder");
    assert!(root.join("empty").is_dir(), "the empty folder is missing");
    assert!(
        !fetcher.downloads().join("holiday (1)").exists(),
        "the resume started a second folder"
    );
    assert!(
        wait_until(Duration::from_secs(10), || !jobs_file(&fetcher).exists()),
        "the finished folder job is still listed: {:?}",
        std::fs::read_to_string(jobs_file(&fetcher))
    );
}
