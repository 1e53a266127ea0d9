//! Hostile-peer regression tests: a folder's small files (the batch).
//!
//! The rogue holder of `fetch.rs` holds real small files and lies about
//! them on the batch's connection: it answers every request in advance
//! and stops reading, or answers with one huge frame. The honest holder
//! is a real node.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use lanshare::id::ContentId;
use lanshare::manifest::{CHUNK_SIZE, Manifest, manifest_of};

use lanshare::wire::frame;

use super::fetch::{
    Behaviour, ChunkAnswer, FileAnswers, K_R_ERROR, K_R_MANIFEST, Rogue, Seen, SlowFiles, entry,
    fetch_within, text, wait_listed,
};
use crate::harness::{BIN, Net, Node, wait_until};

/// `count` small files under `folder/`, none alike, of `size` bytes and
/// up to 300 more.
fn small_files(folder: &str, count: usize, size: usize, seed: u8) -> Vec<(String, Vec<u8>)> {
    (0..count)
        .map(|i| {
            let mut data = format!("{folder} {i} ").into_bytes();
            data.resize(size + i % 300, seed.wrapping_add(i as u8));
            (format!("{folder}/d{}/f{i:05}.txt", i % 7), data)
        })
        .collect()
}

fn held(files: &[(String, Vec<u8>)]) -> HashMap<ContentId, (Manifest, Vec<u8>)> {
    files
        .iter()
        .map(|(_, d)| {
            let m = manifest_of(d, CHUNK_SIZE);
            (m.content_id(), (m, d.clone()))
        })
        .collect()
}

/// A rogue holding `files` (all of `folders`) that answers as `answers`,
/// each manifest after `delay`.
fn rogue(
    net: &Net,
    name: &str,
    files: &[(String, Vec<u8>)],
    answers: FileAnswers,
    delay: Duration,
) -> (Rogue, Arc<SlowFiles>) {
    let slow = Arc::new(SlowFiles {
        by_id: held(files),
        delay,
        answers,
        seen: Seen::default(),
    });
    let entries = files
        .iter()
        .map(|(path, d)| {
            entry(
                manifest_of(d, CHUNK_SIZE).content_id(),
                path,
                d.len() as u64,
            )
        })
        .collect();
    let rogue = Rogue::start(
        name,
        &net.group,
        entries,
        Behaviour {
            files: Some(slow.clone()),
            manifest: None,
            chunk: Arc::new(|_| ChunkAnswer::Stall),
        },
    );
    (rogue, slow)
}

fn last_id(files: &[(String, Vec<u8>)]) -> ContentId {
    manifest_of(&files[files.len() - 1].1, CHUNK_SIZE).content_id()
}

fn assert_fetched(victim: &Node, dest: &str, files: &[(String, Vec<u8>)]) {
    for (path, data) in files {
        let (_, inner) = path.split_once('/').unwrap();
        let got = std::fs::read(victim.downloads().join(dest).join(inner));
        assert!(
            got.as_ref().is_ok_and(|g| g == data),
            "{dest}/{inner} is not the file: {:?}",
            got.map(|g| g.len())
        );
    }
}

/// Review fix "the send/flush bound": a holder that answers `Error` to
/// every request in advance and then stops reading fills the lane's
/// socket; sending blocked for ever (no timeout, no cancel), so the
/// folder download and the content locks of its files in flight were
/// held for good. Now `cancel` ends it at once, and a later fetch of the
/// folder (the same files, their locks) completes from an honest holder
/// once the deaf one is dropped after the stall timeout.
#[test]
fn a_holder_that_stops_reading_hangs_neither_the_folder_nor_cancel() {
    let net = Net::new();
    // Enough files that the requests of those the rogue refuses fill its
    // small socket buffers (some 100 KB of requests, under 100 bytes each).
    let files = small_files("deaf", 3000, 100, 1);
    let (_rogue, slow) = rogue(
        &net,
        "deafear",
        &files,
        FileAnswers::ErrorsUnread,
        Duration::ZERO,
    );
    let victim = net.node("victim", &[]);
    wait_listed(&victim, &last_id(&files), 1, Duration::from_secs(30));

    let mut child = std::process::Command::new(BIN)
        .args(["fetch", "deaf", "--home"])
        .arg(&victim.home)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("run lanshare fetch");
    assert!(
        wait_until(Duration::from_secs(20), || slow
            .seen
            .deaf
            .load(Ordering::SeqCst)),
        "the fetch never asked the rogue for a file\n{}",
        victim.log_tail()
    );
    // The lane refuses files, asks for more, and blocks on the full socket.
    std::thread::sleep(Duration::from_secs(2));
    let out = victim.cli(&["cancel", "deaf"]);
    assert!(out.status.success(), "cancel failed: {out:?}");
    let cancelled = Instant::now();
    // Well under the 10 s stall timeout: the cancel itself ends it.
    let ended = wait_until(Duration::from_secs(7), || {
        child.try_wait().ok().flatten().is_some()
    });
    let took = cancelled.elapsed();
    if !ended {
        let _ = child.kill();
    }
    let _ = child.wait();
    assert!(
        ended,
        "the folder download still ran {took:?} after its cancel (sending to a holder that stopped reading)\n{}",
        victim.log_tail()
    );
    eprintln!("figure: cancel of a folder blocked on a deaf holder ended it in {took:?}");

    // Again, with an honest holder: the files the deaf lane refuses or
    // holds go to the honest one (the deaf lane is dropped after the stall
    // timeout if it is still blocked), the files of the cancelled run are
    // not locked any more, and the fetch ends.
    slow.seen.deaf.store(false, Ordering::SeqCst);
    let shared: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), &d[..])).collect();
    let _honest = net.node("honest", &shared);
    wait_listed(&victim, &last_id(&files), 2, Duration::from_secs(30));
    let (out, took) = fetch_within(&victim, "deaf", Duration::from_secs(90));
    let out = out.unwrap_or_else(|| {
        panic!(
            "the folder fetch did not finish within {took:?}: a lane blocked sending\n{}",
            victim.log_tail()
        )
    });
    let t = text(&out);
    eprintln!("figure: 3,000 small files, a deaf holder and an honest one, took {took:?}");
    assert!(out.status.success(), "fetch failed after {took:?}: {t}");
    assert!(
        slow.seen.deaf.load(Ordering::SeqCst),
        "the rogue was not asked again"
    );
    // Whether the deaf lane was dropped before the end depends on how fast
    // the honest lane takes the files it refuses (all 3,000 in about a
    // second on a quiet machine): the bound under test is that the fetch
    // ends, with every file, not that the drop is reported.
    eprintln!(
        "figure: the output names the dropped holder: {}",
        t.contains("deafear")
    );
    assert_fetched(&victim, "deaf (1)", &files);
}

/// Review fix "the frame bound": an answer to a small file's manifest or
/// chunk was read whole up to the 32 MiB any response may be (a manifest
/// or error frame of 32 MiB, a chunk of 4 MiB), for a file of one chunk.
/// Now a frame longer than what a one-chunk file of its size needs is
/// refused from its header: the rogue gets to write about its socket
/// buffers' worth, and the folder completes from the honest holder (that
/// appears once the rogue lied, so that its lane is the one asked).
#[test]
fn a_huge_answer_to_a_small_file_is_refused_from_its_header() {
    let mut lies = Vec::new();
    for kind in [K_R_MANIFEST, K_R_ERROR, frame::K_R_CHUNK] {
        let net = Net::new();
        let name = format!("huge{kind:x}");
        let files = small_files(&name, 30, 500, kind);
        let (_rogue, slow) = rogue(
            &net,
            "bigmouth",
            &files,
            FileAnswers::HugeFrame(kind),
            Duration::ZERO,
        );
        let victim = net.node("victim", &[]);
        wait_listed(&victim, &last_id(&files), 1, Duration::from_secs(30));
        let (tx, rx) = std::sync::mpsc::channel();
        let shared: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), &d[..])).collect();
        std::thread::scope(|s| {
            let fetch = s.spawn(|| {
                tx.send(()).unwrap();
                fetch_within(&victim, &name, Duration::from_secs(60))
            });
            rx.recv().unwrap();
            let lied = wait_until(Duration::from_secs(20), || {
                !slow.seen.huge.lock().unwrap().is_empty()
            });
            let _honest = net.node("honest", &shared);
            let (out, took) = fetch.join().unwrap();
            assert!(
                lied,
                "the rogue was never asked for a file\n{}",
                victim.log_tail()
            );
            let out = out.unwrap_or_else(|| {
                panic!(
                    "fetch {name} did not finish within {took:?}\n{}",
                    victim.log_tail()
                )
            });
            let t = text(&out);
            assert!(out.status.success(), "fetch {name} failed: {t}");
            assert_fetched(&victim, &name, &files);
        });
        lies.extend(slow.seen.huge.lock().unwrap().iter().copied());
    }
    eprintln!("figure: huge frames (kind, bytes the rogue wrote): {lies:?}");
    assert_eq!(lies.len(), 3, "one lie per kind: {lies:?}");
    for (kind, sent) in lies {
        assert!(
            sent < 1 << 20,
            "the victim read {sent} bytes of a frame of kind {kind:#x} answering a file of under 1 KB"
        );
    }
}

/// A holder that answers a folder's small files validly but slowly (one
/// every 2 s, under the 10 s stall timeout) must not keep them: the batch
/// judges each holder's useful rate like the single-file worker, drops it
/// after one window, and the files go to the real holder. Before, the
/// slow holder kept every file it had taken until it sent it (80 s here).
#[test]
fn a_slow_but_valid_folder_holder_is_dropped() {
    let net = Net::new();
    let files: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| {
            (
                format!("album/f{i:02}.txt"),
                vec![b'a' + (i % 26) as u8; 2048 + i],
            )
        })
        .collect();
    let (_rogue, slow) = rogue(
        &net,
        "slowpoke",
        &files,
        FileAnswers::Valid,
        Duration::from_secs(2),
    );
    let victim = net.node("victim", &[]);
    let last = manifest_of(&files[39].1, CHUNK_SIZE).content_id();
    wait_listed(&victim, &last, 1, Duration::from_secs(20));

    // The real holder appears once the folder's plan gave every file to
    // the slow one (it was asked for its first file).
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::scope(|s| {
        let fetch = s.spawn(|| {
            tx.send(()).unwrap();
            fetch_within(&victim, "album", Duration::from_secs(45))
        });
        rx.recv().unwrap();
        assert!(
            wait_until(Duration::from_secs(20), || slow
                .seen
                .asked
                .load(Ordering::SeqCst)),
            "the fetch never asked the slow holder for a file\n{}",
            victim.log_tail()
        );
        let shared: Vec<(&str, &[u8])> = files.iter().map(|(n, d)| (n.as_str(), &d[..])).collect();
        let real = net.node("real", &shared);
        let (out, took) = fetch.join().unwrap();
        let out = out.unwrap_or_else(|| {
            panic!(
                "the folder fetch did not finish within 45 s: the slow holder kept its files\n{}",
                victim.log_tail()
            )
        });
        let t = text(&out);
        eprintln!("figure: 40 small files, a slow holder first, took {took:?}");
        assert!(out.status.success(), "fetch failed after {took:?}: {t}");
        assert!(
            t.contains("slowpoke") && t.contains("verified data"),
            "the output does not say the slow holder was dropped: {t}"
        );
        for (name, data) in &files {
            assert_eq!(&std::fs::read(victim.downloads().join(name)).unwrap(), data);
        }
        drop(real);
    });
}
