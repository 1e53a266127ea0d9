//! File-system notifications (the system's own, inotify on Linux, through
//! the notify crate and [`crate::platform::fs_watcher`]) on the shared folders, so a file added, changed or removed is noticed
//! at once rather than at the next periodic scan. The periodic scan stays
//! as the safety net (a watch limit reached, a network file system without
//! notifications); with a huge tree it runs rarely, and this is what keeps
//! changes quick.
//!
//! Events only poke the scanner; the scan itself decides what changed.
//! lanshare's own files (`.lanshare` state, `.lanshare-*.part` downloads in
//! progress) and plain reads are ignored, so downloading or serving a file
//! does not cause rescans.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use notify::event::{AccessKind, AccessMode};
use notify::{EventKind, RecursiveMode};
use tokio::sync::Notify;

/// Watches a set of roots and pokes `changed` on any change under them.
pub struct FsWatch {
    watcher: Box<dyn notify::Watcher + Send>,
    watched: BTreeSet<PathBuf>,
}

impl FsWatch {
    /// Starts watching nothing yet; `None` when the system offers no
    /// notifications (the periodic scan then does all the work).
    pub fn new(changed: Arc<Notify>) -> Option<FsWatch> {
        let handler = move |res: notify::Result<notify::Event>| match res {
            Ok(ev) if relevant(&ev) => changed.notify_one(),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "file-system notification error"),
        };
        match crate::platform::fs_watcher(handler) {
            Ok(watcher) => Some(FsWatch {
                watcher,
                watched: BTreeSet::new(),
            }),
            Err(e) => {
                tracing::info!(error = %e, "no file-system notifications; changes are found by periodic scans");
                None
            }
        }
    }

    /// Watches exactly `roots` (recursively), adding and removing watches
    /// as the set changes. A root that cannot be watched (missing, or the
    /// system's watch limit reached) is left to the periodic scan.
    pub fn set_roots(&mut self, roots: &[PathBuf]) {
        let want: BTreeSet<PathBuf> = roots.iter().cloned().collect();
        for gone in self.watched.difference(&want).cloned().collect::<Vec<_>>() {
            let _ = self.watcher.unwatch(&gone);
            self.watched.remove(&gone);
        }
        for root in want.difference(&self.watched.clone()) {
            if !root.exists() {
                continue;
            }
            match self.watcher.watch(root, RecursiveMode::Recursive) {
                Ok(()) => {
                    self.watched.insert(root.clone());
                }
                Err(e) => tracing::info!(
                    root = %root.display(),
                    error = %e,
                    "cannot watch this folder for changes; it is rescanned periodically ({})",
                    crate::platform::WATCH_LIMIT_HINT
                ),
            }
        }
    }
}

/// Whether an event may change what this node shares.
fn relevant(ev: &notify::Event) -> bool {
    let kind = match ev.kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any => true,
        EventKind::Other => false,
    };
    kind && !ev.paths.is_empty() && ev.paths.iter().any(|p| !internal(p))
}

/// lanshare's own files: the state folder and downloads in progress.
fn internal(p: &Path) -> bool {
    p.components()
        .any(|c| c.as_os_str().as_encoded_bytes().starts_with(b".lanshare"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{CreateKind, ModifyKind};

    fn ev(kind: EventKind, path: &str) -> notify::Event {
        notify::Event::new(kind).add_path(PathBuf::from(path))
    }

    #[test]
    fn own_files_and_reads_are_ignored() {
        let create = EventKind::Create(CreateKind::File);
        assert!(relevant(&ev(create, "/h/shared/photo.png")));
        assert!(relevant(&ev(
            EventKind::Modify(ModifyKind::Any),
            "/h/shared/a"
        )));
        assert!(!relevant(&ev(create, "/h/downloads/.lanshare-0123.part")));
        assert!(!relevant(&ev(create, "/h/.lanshare/index.bin")));
        assert!(!relevant(&ev(
            EventKind::Access(AccessKind::Read),
            "/h/shared/a"
        )));
        assert!(relevant(&ev(
            EventKind::Access(AccessKind::Close(AccessMode::Write)),
            "/h/shared/a"
        )));
    }

    #[tokio::test]
    async fn a_new_file_pokes_the_scanner() {
        let dir = tempfile::tempdir().unwrap();
        let changed = Arc::new(Notify::new());
        let Some(mut w) = FsWatch::new(changed.clone()) else {
            eprintln!("skipping: no file-system notifications here");
            return;
        };
        w.set_roots(&[dir.path().to_path_buf()]);
        let wait = changed.notified();
        std::fs::write(dir.path().join("new.txt"), b"x").unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), wait)
            .await
            .expect("a notification within 5 s");
        // Let the rest of that write's events arrive, and drop them.
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let _ =
            tokio::time::timeout(std::time::Duration::from_millis(50), changed.notified()).await;
        // lanshare's own partial files do not poke it.
        let wait = changed.notified();
        std::fs::write(dir.path().join(".lanshare-00.part"), b"x").unwrap();
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(300), wait)
                .await
                .is_err()
        );
    }
}
