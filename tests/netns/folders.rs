//! Folders across hosts: two holders of one tree (nested folders, empty
//! folders, files of 0 bytes, 1 byte, exactly one chunk and several chunks,
//! names with spaces and non-ASCII), a third node that fetches it by the
//! folder's name, then again (it lands beside the first, never on it), and
//! `fetch a b` of two files of one name in different folders; one content
//! at several paths, placed at each; a folder cancelled midway.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use super::harness::{Lan, Node, data, uploaded_bytes, wait_until};
use super::{MIB, TRANSFER, wait_holders, wait_midway};

const CHUNK: usize = lanshare::manifest::CHUNK_SIZE as usize;
const DEADLINE: Duration = Duration::from_secs(120);

/// The tree both holders share in `shared/holiday`, and an extra file.
fn files() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        ("holiday/empty.bin", Vec::new()),
        ("holiday/one byte.txt", b"x".to_vec()),
        ("holiday/day1/beach photo.jpg", data(CHUNK, 1)),
        ("holiday/day2/sunset é.jpg", data(6 * CHUNK + 17, 2)),
        ("holiday/day2/nested/deep/café ☕.txt", b"deep".to_vec()),
        ("holiday/notes.txt", b"holiday notes".to_vec()),
        ("work/notes.txt", b"work notes".to_vec()),
    ]
}

const EMPTY_DIRS: [&str; 2] = ["holiday/empty folder", "holiday/day3/nothing here"];

fn write_tree(home: &Path) {
    let shared = home.join("shared");
    for (path, bytes) in files() {
        let p = shared.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    for d in EMPTY_DIRS {
        std::fs::create_dir_all(shared.join(d)).unwrap();
    }
}

/// Every file (with its bytes) and folder (`None`) under `dir`, by path.
fn tree(dir: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let rel = e
                .path()
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let meta = std::fs::symlink_metadata(e.path()).unwrap();
            if meta.is_dir() {
                out.insert(rel, None);
                stack.push(e.path());
            } else {
                out.insert(rel, Some(std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out
}

fn assert_same_tree(got: &Path, want: &Path) {
    let (g, w) = (tree(got), tree(want));
    let names = |t: &BTreeMap<String, Option<Vec<u8>>>| t.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&g),
        names(&w),
        "{} differs from {}",
        got.display(),
        want.display()
    );
    assert!(
        g == w,
        "file contents differ between {} and {}",
        got.display(),
        want.display()
    );
}

/// The `ls --json` row of the folder `name`, if listed.
fn folder_row(node: &Node, name: &str) -> Option<serde_json::Value> {
    node.ls()
        .into_iter()
        .find(|v| v["kind"] == "folder" && v["name"] == name)
}

fn run(node: &Node, args: &[&str]) -> (bool, String, String) {
    let out = node.cli(args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Two holders, a fetcher: the folder arrives whole and identical, from
/// both holders; a second fetch lands in `holiday (1)`; files in downloads/
/// are never touched; several names are fetched in one command.
#[test]
fn a_folder_is_fetched_whole_from_two_holders() {
    let Some(lan) = Lan::new(3) else { return };
    for i in 0..2 {
        lan.shape(i, "40mbit");
        write_tree(&lan.home(&format!("holder{i}")));
    }
    let holders: Vec<Node> = (0..2)
        .map(|i| lan.start(i, &format!("holder{i}")))
        .collect();
    let fetcher = lan.node(2, "fetcher", &[]);
    // A file of the user's already in downloads/, named like one of the
    // folder's files.
    let mine = fetcher.downloads().join("one byte.txt");
    std::fs::write(&mine, b"precious, not from the network").unwrap();

    assert!(
        wait_until(DEADLINE, || folder_row(&fetcher, "holiday")
            .is_some_and(|v| v["complete"] == 2 && v["files"] == 6)),
        "the fetcher never listed the folder with 2 complete holders: {:?}\n{}",
        fetcher.ls(),
        fetcher.log_tail()
    );
    let ls = fetcher.ls();
    let listed = |name: &str| ls.iter().any(|v| v["name"] == name && v["kind"] == "file");
    assert!(
        listed("holiday/day2/sunset é.jpg") && listed("work/notes.txt"),
        "{ls:?}"
    );
    let (_, text, _) = run(&fetcher, &["ls", "holiday/day2"]);
    assert!(
        text.contains("holiday/day2/sunset é.jpg"),
        "ls QUERY matches paths: {text}"
    );

    // One file by its path: lands beside the user's file of that name.
    fetcher.fetch_ok("holiday/one byte.txt", DEADLINE);
    assert_eq!(
        std::fs::read(&mine).unwrap(),
        b"precious, not from the network"
    );
    assert_eq!(
        std::fs::read(fetcher.downloads().join("one byte (1).txt")).unwrap(),
        b"x"
    );

    // Two notes.txt told apart by their paths, fetched in one command;
    // a name that matches nothing fails alone and is named.
    let (ok, _, err) = run(
        &fetcher,
        &[
            "fetch",
            "work/notes.txt",
            "nosuch-name",
            "holiday/notes.txt",
        ],
    );
    assert!(!ok, "a failed name must fail the command");
    assert!(err.contains("nosuch-name"), "{err}");
    assert_eq!(
        std::fs::read(fetcher.downloads().join("notes.txt")).unwrap(),
        b"work notes"
    );
    assert_eq!(
        std::fs::read(fetcher.downloads().join("notes (1).txt")).unwrap(),
        b"holiday notes"
    );

    // The folder by its name (two of its files are here already: copied).
    let out = fetcher.fetch_ok("holiday", DEADLINE);
    assert!(out.contains("6 files"), "{out}");
    let original = lan.home("holder0").join("shared/holiday");
    assert_same_tree(&fetcher.downloads().join("holiday"), &original);
    for h in &holders {
        assert!(
            wait_until(Duration::from_secs(30), || !h.upload_log().is_empty()),
            "{} served nothing of the folder",
            h.name
        );
    }
    // The download is shared in turn, with its path.
    assert!(
        wait_until(DEADLINE, || holders[0].ls().iter().any(|v| v["name"]
            == "holiday/day2/sunset é.jpg"
            && v["complete"] == 2)),
        "the fetched folder is not offered under its paths: {:?}",
        holders[0].ls()
    );

    // Again: it lands beside the first copy, which stays as it was.
    let out = fetcher.fetch_ok("holiday", DEADLINE);
    assert!(out.contains("holiday (1)"), "{out}");
    assert_same_tree(&fetcher.downloads().join("holiday (1)"), &original);
    assert_same_tree(&fetcher.downloads().join("holiday"), &original);
    assert_eq!(
        std::fs::read(&mine).unwrap(),
        b"precious, not from the network"
    );
}

/// The partial files (`.part`) in `dir` and resume states of `node`.
fn partial_files(node: &Node) -> Vec<std::path::PathBuf> {
    let list = |dir: &Path, ext: &str| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.flatten()
                    .map(|e| e.path())
                    .filter(|p| p.to_string_lossy().ends_with(ext))
                    .collect()
            })
            .unwrap_or_default()
    };
    let mut v = list(&node.downloads(), ".part");
    v.extend(list(&node.home.join(".lanshare/partial"), ".state"));
    v
}

/// One content at several paths: listed at each path (`ls QUERY` finds
/// each), a folder fetch places every copy with the bytes fetched once,
/// a path fetches on its own, and the fetched copies are offered at
/// their paths in turn.
#[test]
fn one_content_at_several_paths_is_offered_and_placed_at_each() {
    let Some(lan) = Lan::new(2) else { return };
    let photo = data(2 * CHUNK + 5, 7);
    let shared = lan.home("holder").join("shared");
    for (path, bytes) in [
        ("holiday/day1/a.jpg", photo.as_slice()),
        ("holiday/twin one.txt", b"same".as_slice()),
        ("holiday/twin two.txt", b"same"),
        ("backup/a.jpg", &photo),
        ("backup/b.txt", b"b"),
    ] {
        let p = shared.join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let holder = lan.start(0, "holder");
    let fetcher = lan.node(1, "fetcher", &[]);
    let paths = [
        "holiday/day1/a.jpg",
        "backup/a.jpg",
        "holiday/twin one.txt",
        "holiday/twin two.txt",
    ];
    assert!(
        wait_until(DEADLINE, || paths
            .iter()
            .all(|p| fetcher.complete_holders(p) == 1)),
        "the fetcher does not list every path of the shared contents: {:?}\n{}",
        fetcher.ls(),
        fetcher.log_tail()
    );
    let (ok, text, _) = run(&fetcher, &["ls", "backup"]);
    assert!(
        ok && text.contains("backup/a.jpg") && text.contains("backup/b.txt"),
        "{text}"
    );
    assert!(
        !text.contains("holiday/"),
        "ls backup lists other paths: {text}"
    );

    fetcher.fetch_ok("backup", DEADLINE);
    assert_same_tree(&fetcher.downloads().join("backup"), &shared.join("backup"));
    let out = fetcher.fetch_ok("holiday", DEADLINE);
    assert!(out.contains("3 files"), "{out}");
    assert_same_tree(
        &fetcher.downloads().join("holiday"),
        &shared.join("holiday"),
    );
    // Each content crossed the network once: the photo for backup, the
    // twins once for both paths; holiday's photo was copied.
    let served = uploaded_bytes(&holder.upload_log());
    assert!(
        served < (photo.len() + photo.len() / 2) as u64,
        "the holder served {served} bytes for a {}-byte photo",
        photo.len()
    );
    fetcher.fetch_ok("holiday/day1/a.jpg", DEADLINE);
    // The copies are offered at their paths in turn.
    assert!(
        wait_until(DEADLINE, || [
            "backup/a.jpg",
            "holiday/day1/a.jpg",
            "holiday/twin two.txt"
        ]
        .iter()
        .all(|p| holder.complete_holders(p) == 1)),
        "the fetched copies are not offered at each path: {:?}",
        holder.ls()
    );
}

/// `cancel FOLDER` midway: the partial files and resume states of its
/// files go, a file already in place stays, and it does not come back
/// after a restart. Meanwhile a third node lists the file being
/// downloaded at its path in the folder (one row), not a new name.
#[test]
fn a_cancelled_folder_leaves_no_partial_file_behind() {
    let Some(lan) = Lan::new(3) else { return };
    let shared = lan.home("seeder").join("shared");
    std::fs::create_dir_all(shared.join("holiday/big")).unwrap();
    std::fs::write(shared.join("holiday/small.txt"), b"small").unwrap();
    std::fs::write(shared.join("holiday/big/a.bin"), data(24 * MIB, 51)).unwrap();
    std::fs::write(shared.join("holiday/big/b.bin"), data(24 * MIB, 52)).unwrap();
    lan.shape(0, "16mbit");
    let _seeder = lan.start(0, "seeder");
    let mut fetcher = lan.node(1, "fetcher", &[]);
    let observer = lan.node(2, "observer", &[]);
    wait_holders(&fetcher, "holiday/big/a.bin", 1);
    wait_holders(&fetcher, "holiday/big/b.bin", 1);

    let mut fetch = fetcher.spawn_fetch("holiday");
    wait_midway(&mut fetch, &fetcher, 5.0, "the folder could be cancelled");
    let small = fetcher.downloads().join("holiday/small.txt");
    assert!(
        wait_until(TRANSFER, || std::fs::read(&small)
            .is_ok_and(|b| b == b"small")),
        "small.txt never landed"
    );
    let partial_row = |v: &serde_json::Value| v["name"] == "holiday/big/a.bin" && v["partial"] == 1;
    assert!(
        wait_until(TRANSFER, || observer.ls().iter().any(partial_row)),
        "the observer never listed the fetcher's partial file at its path: {:?}",
        observer.ls()
    );
    assert!(
        !observer
            .ls()
            .iter()
            .any(|v| v["name"] == "a.bin" || v["name"] == "b.bin"),
        "a partial file is offered under a new name: {:?}",
        observer.ls()
    );
    assert!(
        !partial_files(&fetcher).is_empty(),
        "no partial file to cancel"
    );

    let out = fetcher.cli(&["cancel", "holiday"]);
    assert!(out.status.success(), "cancel failed: {out:?}");
    fetch.kill();
    assert!(
        wait_until(Duration::from_secs(10), || partial_files(&fetcher)
            .is_empty()),
        "the cancelled folder's partial files are still there: {:?}",
        partial_files(&fetcher)
    );
    assert_eq!(
        std::fs::read(&small).unwrap(),
        b"small",
        "a finished file was touched"
    );

    fetcher.stop();
    let fetcher = lan.start(1, "fetcher");
    wait_holders(&fetcher, "holiday/big/a.bin", 1);
    // Time for a resumed job to show up and start.
    std::thread::sleep(Duration::from_secs(4));
    let out = fetcher.cli(&["transfers", "--json"]);
    let t: serde_json::Value = serde_json::from_slice(&out.stdout).expect("transfers --json");
    assert!(
        t["downloads"].as_array().is_none_or(|d| d.is_empty()),
        "a cancelled folder came back: {t}"
    );
    assert!(partial_files(&fetcher).is_empty());
    assert_eq!(std::fs::read(&small).unwrap(), b"small");
}

/// The connections a holder's upload log names (a line per content per
/// connection, the fetcher's address with its port).
fn connections(holder: &Node) -> std::collections::BTreeSet<String> {
    (holder.upload_log().iter())
        .filter_map(|l| l.split('\t').nth(5).map(str::to_string))
        .collect()
}

/// A folder of a few hundred small files from two holders: identical, both
/// holders served part of it, every file logged, and it costs a few
/// connections per holder, not one (or two) per file.
#[test]
fn many_small_files_travel_together_over_few_connections() {
    let Some(lan) = Lan::new(3) else { return };
    const FILES: usize = 300;
    for i in 0..2 {
        let shared = lan.home(&format!("holder{i}")).join("shared");
        for f in 0..FILES {
            let p = shared.join(format!("many/d{}/e{}/f{f:03}.dat", f % 7, f % 3));
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, data(f * 37 % (16 << 10), f as u64)).unwrap();
        }
        std::fs::create_dir_all(shared.join("many/empty")).unwrap();
        std::fs::write(shared.join("many/big.bin"), data(3 * CHUNK + 1, 99)).unwrap();
    }
    let holders: Vec<Node> = (0..2)
        .map(|i| lan.start(i, &format!("holder{i}")))
        .collect();
    let fetcher = lan.node(2, "fetcher", &[]);
    assert!(
        wait_until(DEADLINE, || folder_row(&fetcher, "many")
            .is_some_and(|v| v["complete"] == 2 && v["files"] == FILES + 1)),
        "the fetcher never listed the folder with 2 complete holders: {:?}",
        folder_row(&fetcher, "many")
    );
    let out = fetcher.fetch_ok("many", DEADLINE);
    assert!(out.contains(&format!("{} files", FILES + 1)), "{out}");
    assert_same_tree(
        &fetcher.downloads().join("many"),
        &lan.home("holder0").join("shared/many"),
    );
    // Each file logged once (the empty ones share one content id, placed
    // at each path: logged at the first).
    let logged = fetcher.download_log();
    assert!(
        logged.len() > FILES * 9 / 10 && logged.iter().all(|l| l.split('\t').nth(8) == Some("ok")),
        "{} download lines: {:?}",
        logged.len(),
        logged.iter().take(5).collect::<Vec<_>>()
    );
    // Connections end (and are logged) once the job is done.
    assert!(
        wait_until(Duration::from_secs(30), || holders
            .iter()
            .map(|h| h.upload_log().len())
            .sum::<usize>()
            >= logged.len()),
        "the holders' upload logs miss files"
    );
    let per_holder: Vec<usize> = holders.iter().map(|h| connections(h).len()).collect();
    eprintln!("connections per holder: {per_holder:?}");
    for (h, n) in holders.iter().zip(&per_holder) {
        assert!(*n >= 1, "{} served nothing of the folder", h.name);
        assert!(
            *n <= 4,
            "{} served the folder over {n} connections; the small files must share one",
            h.name
        );
    }
}

/// Like [`tree`], while a node may still write there: its hidden files
/// (`.lanshare...`) left out, an entry that vanished meanwhile skipped.
fn visible_tree(dir: &Path) -> BTreeMap<String, Option<Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = e.path();
            let rel = path
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            if e.file_name().to_string_lossy().starts_with(".lanshare") {
                continue;
            }
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => {
                    out.insert(rel, None);
                    stack.push(path);
                }
                Ok(_) => {
                    if let Ok(b) = std::fs::read(&path) {
                        out.insert(rel, Some(b));
                    }
                }
                Err(_) => {}
            }
        }
    }
    out
}

/// A folder of many small files killed (SIGKILL) midway: what is in place
/// is whole, and after a restart, with no fetch command, the job goes on
/// into the same folder until the tree is identical; a file of the right
/// size but other bytes at a path is not taken for the file (regression:
/// resume trusted sizes), and a dead landing's temporary file is removed.
#[test]
fn many_small_files_killed_midway_finish_after_a_restart() {
    let Some(lan) = Lan::new(2) else { return };
    const FILES: usize = 400;
    let original = lan.home("seeder").join("shared/many");
    for f in 0..FILES {
        let p = original.join(format!("d{}/f{f:03}.dat", f % 9));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data(f * 97 % (16 << 10) + 1024, 1000 + f as u64)).unwrap();
    }
    lan.shape(0, "4mbit");
    let _seeder = lan.start(0, "seeder");
    let mut fetcher = lan.node(1, "fetcher", &[]);
    assert!(
        wait_until(DEADLINE, || folder_row(&fetcher, "many")
            .is_some_and(|v| v["files"] == FILES)),
        "the fetcher never listed the folder: {:?}",
        folder_row(&fetcher, "many")
    );
    let mut run = fetcher.spawn_fetch("many");
    let at = wait_midway(&mut run, &fetcher, 20.0, "the fetcher could be killed");
    fetcher.kill();
    run.kill();
    let root = fetcher.downloads().join("many");
    let landed = visible_tree(&root);
    let landed: Vec<(&String, &Vec<u8>)> = (landed.iter())
        .filter_map(|(p, b)| Some((p, b.as_ref()?)))
        .collect();
    eprintln!("killed at {at:?}%, {} files in place", landed.len());
    assert!(
        landed.len() < FILES,
        "the folder was complete before the kill"
    );
    for (path, bytes) in &landed {
        let want = std::fs::read(original.join(path)).unwrap();
        assert!(
            want == **bytes,
            "{path} is in place but not whole: {} bytes of {}",
            bytes.len(),
            want.len()
        );
    }

    // Meanwhile a file of the listed size but other bytes appears at the
    // path of one not yet in place: it must not count as done (nor be
    // written over; the file lands beside it). And the hidden temporary
    // file of a landing a crash cut short (a dead pid), beside one of a
    // live pid and a user's look-alike, neither ever removed.
    let (lied, lied_bytes) = (0..FILES)
        .map(|f| format!("d{}/f{f:03}.dat", f % 9))
        .find(|p| !landed.iter().any(|(l, _)| *l == p))
        .map(|p| {
            let len = std::fs::metadata(original.join(&p)).unwrap().len() as usize;
            (p, vec![b'?'; len])
        })
        .expect("a file not in place");
    std::fs::write(root.join(&lied), &lied_bytes).unwrap();
    let id = "0123456789abcdef".repeat(4);
    let dead = root.join(format!("d0/.lanshare-land-{id}-2147483000-3.tmp"));
    let kept = [
        root.join(format!("d0/.lanshare-land-{id}-1-3.tmp")),
        root.join("d0/.lanshare-land-notes.tmp"),
    ];
    for p in kept.iter().chain([&dead]) {
        std::fs::write(p, b"half a file").unwrap();
    }

    let fetcher = lan.start(1, "fetcher");
    let mut want = visible_tree(&original);
    let right = want.insert(lied.clone(), Some(lied_bytes));
    let beside = lied.replace(".dat", " (1).dat");
    want.insert(beside, right.flatten());
    let done = wait_until(DEADLINE, || visible_tree(&root) == want);
    let got = visible_tree(&root);
    let differ: Vec<(&String, Option<usize>, Option<usize>)> = (want.keys())
        .chain(got.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .filter(|k| want.get(*k) != got.get(*k))
        .map(|k| {
            let len = |t: &BTreeMap<String, Option<Vec<u8>>>| {
                t.get(k).map(|b| b.as_ref().map_or(0, Vec::len))
            };
            (k, len(&want), len(&got))
        })
        .collect();
    assert!(
        done,
        "the resumed folder never completed ({lied} of the right size but other bytes in place); (path, wanted, got): {differ:?}\n{}",
        fetcher.log_tail()
    );
    assert!(!fetcher.downloads().join("many (1)").exists());
    assert!(!dead.exists(), "a dead landing's temporary file was left");
    for p in &kept {
        assert!(p.exists(), "{} was removed", p.display());
    }
}
