//! The scanner loop (`node/scanner`): when and how the store rescans the
//! share roots. Never decides what changed (the store's walk does).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use crate::store::Store;

/// Rescans the shared folders when the file system reports a change
/// ([`crate::fswatch`]), when poked (`lanshare share`, a file changed under
/// an upload), and periodically as a safety net. A scan that takes long (a
/// huge tree) stretches the period, so periodic scans stay under about a
/// twentieth of one core; notifications still bring changes within about
/// a second. It sees only the store, its period and its poke.
pub(super) struct Scanner {
    pub(super) store: Arc<Store>,
    /// The configured period between scans (`--scan-interval`).
    pub(super) period: Duration,
    /// Poked for a scan now.
    pub(super) rescan: Arc<Notify>,
}

impl Scanner {
    pub(super) async fn run(self) {
        let fs_changed = Arc::new(Notify::new());
        let mut watch = crate::fswatch::FsWatch::new(fs_changed.clone());
        loop {
            watch = self.scan(watch).await;
            let scanned = std::time::Instant::now();
            let walk = self.store.last_walk();
            let mut period = self.period.max(walk * 20);
            if self.store.has_unsettled() {
                period = period.min(crate::store::SETTLE * 2);
            }
            tokio::select! {
                _ = tokio::time::sleep(period) => {}
                _ = self.rescan.notified() => {}
                _ = fs_changed.notified() => {
                    // Let a burst of changes (a copy in progress) settle, and
                    // keep at least two walks' time between scans so a stream
                    // of changes in a huge tree costs at most a third of a core.
                    let settle = Duration::from_millis(100)
                        .max((walk * 2).saturating_sub(scanned.elapsed()));
                    tokio::time::sleep(settle).await;
                }
            }
        }
    }

    /// One scan on a blocking thread; returns the watcher, re-aimed at the
    /// current roots (`None` once it failed).
    async fn scan(
        &self,
        mut watch: Option<crate::fswatch::FsWatch>,
    ) -> Option<crate::fswatch::FsWatch> {
        let store = self.store.clone();
        let scan = tokio::task::spawn_blocking(move || {
            // A scan that changed anything has published its result.
            let changed = store.rescan_blocking();
            // Partial downloads change without a file changing: republish
            // their progress (a no-op when nothing changed).
            if !changed && store.has_partials() {
                store.publish();
            }
            if let Some(w) = &mut watch {
                w.set_roots(&store.root_paths());
            }
            watch
        });
        match scan.await {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "scan failed");
                None
            }
        }
    }
}
