//! The swarm of one download run to its end through disk trouble: the
//! partial's state saved about once a second while chunks arrive (the data
//! synced in that one batch, off the workers' threads), and a pause when a
//! chunk write finds the disk full: every verified chunk is kept (state
//! saved), the user is told which file needs how much space where, free
//! space is looked at every second, and the swarm starts again from the
//! chunks held once the file fits.
//!
//! Never schedules chunks or talks to a peer (the swarm does); never
//! writes a file except through `store::Partial`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::ctx::SPACE_RESERVE;
use super::swarm::Shared;
use super::{FetchCtx, FetchError};
use crate::api::FetchEvent;
use crate::logs::human_bytes;
use crate::store::{Partial, STATE_SAVE_INTERVAL};
use crate::task::Tasks;

/// How often a paused download looks at the free space.
const SPACE_POLL: Duration = Duration::from_secs(1);

/// How a pause ended.
enum Pause {
    /// The file fits again: go on.
    SpaceFreed,
    Cancelled,
}

impl FetchCtx {
    /// Runs the swarm until the file is complete and checked, or the
    /// download fails or is cancelled; pauses while the disk is full.
    /// Returns the result and the last swarm's state.
    pub(super) async fn swarm_until_done(
        &self,
        partial: &Arc<Partial>,
        received: &Arc<AtomicU64>,
        events: &mpsc::Sender<FetchEvent>,
        cancel: &CancellationToken,
        tasks: &Tasks,
        peers_used: &mut BTreeSet<String>,
    ) -> (Result<[u8; 32], FetchError>, Arc<Shared>) {
        loop {
            partial.clear_disk_full();
            let shared = Arc::new(Shared::new(partial.id, partial.clone(), received.clone()));
            let already = shared.bytes_done();
            let run = cancel.child_token();
            let result = {
                let swarm = self.run_swarm(&shared, events, &run, tasks, peers_used, already);
                tokio::pin!(swarm);
                tokio::select! {
                    r = &mut swarm => r,
                    () = partial.disk_filled() => {
                        run.cancel();
                        swarm.await
                    }
                    () = save_while_running(partial) => unreachable!("the saver never ends"),
                }
            };
            let Some(full) = partial
                .disk_full()
                .filter(|_| result.is_err() && !cancel.is_cancelled())
            else {
                return (result, shared);
            };
            save_now(partial).await;
            let reason = self.pause_reason(partial, &full.error);
            tracing::warn!(id = %partial.id.short(), file = %partial.name, %reason, "download paused: the disk is full");
            let _ = events.send(FetchEvent::Paused { reason }).await;
            match self.wait_for_space(partial, events, cancel).await {
                Pause::SpaceFreed => {
                    tracing::info!(id = %partial.id.short(), file = %partial.name, "space freed; the download goes on");
                }
                Pause::Cancelled => return (Err(FetchError::Cancelled), shared),
            }
        }
    }

    /// What a paused download tells the user.
    fn pause_reason(&self, partial: &Partial, error: &str) -> String {
        let dir = self.store.home().downloads();
        let needed = partial.bytes_to_allocate();
        let free = crate::platform::free_space(&dir)
            .map_or_else(|| "unknown".to_string(), |f| human_bytes(f as f64));
        format!(
            "the disk is full ({error}): {} needs {} more in {} ({free} free, {} kept free besides); it goes on by itself once space is freed",
            partial.name,
            human_bytes(needed as f64),
            dir.display(),
            human_bytes(SPACE_RESERVE as f64),
        )
    }

    /// Looks at the free space every [`SPACE_POLL`] until the rest of the
    /// file fits (with [`SPACE_RESERVE`] left), telling the user again when
    /// the figures change. Without a free-space call, waits one poll.
    async fn wait_for_space(
        &self,
        partial: &Partial,
        events: &mpsc::Sender<FetchEvent>,
        cancel: &CancellationToken,
    ) -> Pause {
        let dir = self.store.home().downloads();
        let mut last_free = crate::platform::free_space(&dir);
        loop {
            if cancel
                .run_until_cancelled(tokio::time::sleep(SPACE_POLL))
                .await
                .is_none()
            {
                return Pause::Cancelled;
            }
            let needed = partial.bytes_to_allocate();
            let Some(free) = crate::platform::free_space(&dir) else {
                return Pause::SpaceFreed;
            };
            if needed.saturating_add(SPACE_RESERVE) <= free {
                return Pause::SpaceFreed;
            }
            // Tell again when the free space moved by a chunk or more.
            if last_free.is_none_or(|l| l.abs_diff(free) >= u64::from(partial.manifest.chunk_size))
            {
                last_free = Some(free);
                let reason = self.pause_reason(partial, "no space left on device");
                let _ = events.send(FetchEvent::Paused { reason }).await;
            }
        }
    }
}

/// Saves the partial's state once a second while chunks arrive, on a
/// blocking thread (it syncs the data first). Never returns.
async fn save_while_running(partial: &Arc<Partial>) {
    loop {
        tokio::time::sleep(STATE_SAVE_INTERVAL).await;
        if partial.save_due() {
            save_now(partial).await;
        }
    }
}

/// Saves the partial's state now, on a blocking thread.
async fn save_now(partial: &Arc<Partial>) {
    let p = partial.clone();
    match tokio::task::spawn_blocking(move || p.save_state()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot save the download's state"),
        Err(e) => tracing::warn!(error = %e, "saving the download's state failed"),
    }
}
