//! The `.part` file's handle, opened through a private hard link so that
//! its writes do not wake the node's own file watcher. The node watches
//! downloads/ (it shares what it downloaded), and inotify reports every
//! `pwrite` into a file there as a modify event, to the watch of the folder
//! the file was opened through. Opened through a link in the private
//! `.lanshare/partial/` folder (not watched), removed at once, the same
//! file's writes are reported there instead: the watcher's thread is not
//! woken 16 times per chunk.
//!
//! Owns only that reopening; never decides where the `.part` lives (it
//! stays in downloads/, where it is sized, resumed and linked into place)
//! and never keeps a second link to it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// The `.part` at `part` (already open, checked, as `file`) opened again
/// through a hard link `stem.part-open` in `private_dir`, which is removed
/// before this returns. `None` when that cannot be done (another file
/// system, a link already there, a file swapped in meanwhile): the caller
/// keeps `file`, whose writes are merely noisier.
pub(super) fn reopen(file: &File, part: &Path, private_dir: &Path, stem: &str) -> Option<File> {
    let link = private_dir.join(format!("{stem}.part-open"));
    // A link left by a crash between the two calls below.
    let _ = std::fs::remove_file(&link);
    std::fs::hard_link(part, &link).ok()?;
    let opened = super::open_nofollow(OpenOptions::new().read(true).write(true), &link);
    let _ = std::fs::remove_file(&link);
    let quiet = opened.ok()?;
    let (was, now) = (file.metadata().ok()?, quiet.metadata().ok()?);
    (was.dev() == now.dev() && was.ino() == now.ino()).then_some(quiet)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use notify::{EventKind, RecursiveMode, Watcher};

    /// Modify events for `path` seen by a watcher of its folder while
    /// `write` runs.
    fn modify_events(dir: &Path, path: &Path, write: impl FnOnce()) -> usize {
        let seen = Arc::new(Mutex::new(0));
        let (s, p) = (seen.clone(), path.to_path_buf());
        let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
            if let Ok(ev) = ev
                && matches!(ev.kind, EventKind::Modify(_))
                && ev.paths.contains(&p)
            {
                *s.lock().unwrap() += 1;
            }
        })
        .unwrap();
        w.watch(dir, RecursiveMode::Recursive).unwrap();
        write();
        std::thread::sleep(Duration::from_millis(300));
        drop(w);
        *seen.lock().unwrap()
    }

    #[test]
    fn writes_through_the_reopened_file_do_not_reach_the_watched_folder() {
        let home = tempfile::tempdir().unwrap();
        let (watched, private) = (home.path().join("downloads"), home.path().join("partial"));
        std::fs::create_dir(&watched).unwrap();
        std::fs::create_dir(&private).unwrap();
        let part = watched.join(".lanshare-00.part");
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part)
            .unwrap();
        // The watcher does see writes through the file opened in place.
        let loud = modify_events(&watched, &part, || file.write_all_at(b"loud", 0).unwrap());
        assert!(
            loud > 0,
            "no modify event for a plain write: nothing to test"
        );
        let quiet = reopen(&file, &part, &private, "00").expect("same file system");
        let n = modify_events(&watched, &part, || {
            for i in 0..16 {
                quiet.write_all_at(&[7; 4096], i * 4096).unwrap();
            }
        });
        assert_eq!(n, 0, "writes through the private link reached the watcher");
        // The same file, and no link is left behind.
        let mut back = [0u8; 4];
        file.read_exact_at(&mut back, 0).unwrap();
        assert_eq!(back, [7; 4]);
        assert_eq!(std::fs::metadata(&part).unwrap().nlink(), 1);
        assert_eq!(std::fs::read_dir(&private).unwrap().count(), 0);
    }

    #[test]
    fn a_file_swapped_in_is_not_reopened() {
        let home = tempfile::tempdir().unwrap();
        let part = home.path().join("a.part");
        let file = File::create(&part).unwrap();
        // The path now names another file than the one opened.
        std::fs::remove_file(&part).unwrap();
        std::fs::write(&part, b"other").unwrap();
        assert!(reopen(&file, &part, home.path(), "a").is_none());
        assert!(!home.path().join("a.part-open").exists());
    }
}
