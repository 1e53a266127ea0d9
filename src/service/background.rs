//! Downloads nobody watches: those resumed from the job list when the node
//! starts ([`Service::resume_jobs`]) and those started from the dashboard
//! ([`Service::start_fetch`]). Each is one named task that feeds the
//! transfers registry, waits (listed as waiting) while no holder is online,
//! and tries again after a failure for as long as its job is recorded:
//! until it finishes, fails for good, or the user cancels it.
//!
//! Same rules as the rest of [`Service`]: no sockets, no text for people
//! beyond the registry's details.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::Service;
use crate::api::FetchEvent;
use crate::fetch::Want;
use crate::retry::{Retry, RetryPolicy};
use crate::store::Job;
use crate::transfers::DownloadId;

/// Delay before a background download tries again after a failure:
/// 5 s, doubling up to 5 minutes.
const AGAIN: RetryPolicy = RetryPolicy {
    first: Duration::from_secs(5),
    max: Duration::from_secs(300),
};

/// How long one wait for a holder lasts before it is simply started again
/// (the wait has no end of its own; this only bounds one timer).
const HOLDER_WAIT: Duration = Duration::from_secs(3600);

impl Service {
    /// Starts every recorded download again in the background (at boot).
    /// A job with no holder online waits, listed in the transfers.
    pub fn resume_jobs(self: &Arc<Self>) {
        let jobs = self.store.jobs().list();
        if !jobs.is_empty() {
            tracing::info!(count = jobs.len(), "resuming the downloads left unfinished");
        }
        for job in jobs {
            if let Job::Folder(record) = &job {
                self.resume_folder(record);
                continue;
            }
            let Some(id) = job.content_id() else { continue };
            let want = Want {
                id,
                query: job.query().to_string(),
                size: Some(job.size()),
                place: None,
            };
            let d = self.background(want, Some(&job));
            tracing::debug!(transfer = d.0, name = job.name(), "resumed download");
        }
    }

    /// Goes on with a recorded folder download in the background, into the
    /// folder it started in (listed in the transfers as one download). Its
    /// files wait for their holders like any download; one that fails
    /// leaves the job recorded for the next start or `fetch`.
    fn resume_folder(self: &Arc<Self>, record: &crate::store::FolderJobRecord) {
        let cancel = self.tasks.token().child_token();
        let reg = &self.stats.transfers;
        let d = reg.start_download(&record.query, cancel.clone(), Instant::now());
        let (tx, rx) = mpsc::channel::<FetchEvent>(64);
        let (sink, _) = mpsc::channel::<FetchEvent>(1);
        let job = crate::fetch::FolderJob::from_record(record);
        let query = record.query.clone();
        let this = self.clone();
        self.tasks.spawn(
            &format!("background fetch folder {}", record.folder),
            async move {
                let run = async {
                    let (fetch, locks) = (this.fetch.clone(), this.fetch_locks.clone());
                    let last = match fetch.fetch_folder(job, &query, locks, &tx, cancel).await {
                        Ok(done) => FetchEvent::Done(done),
                        Err(e) => FetchEvent::Failed {
                            reason: e.to_string(),
                        },
                    };
                    let _ = tx.send(last).await;
                    drop(tx);
                };
                tokio::join!(run, this.track(d, rx, sink));
            },
        );
        tracing::debug!(transfer = d.0, folder = %record.folder, "resumed folder download");
    }

    /// Runs the download of `want` in the background, listed in the
    /// transfers; `job` when it resumes a recorded one. Its number.
    pub(super) fn background(self: &Arc<Self>, want: Want, job: Option<&Job>) -> DownloadId {
        let cancel = self.tasks.token().child_token();
        let reg = &self.stats.transfers;
        let d = reg.start_download(&want.query, cancel.clone(), Instant::now());
        if let Some(job) = job {
            reg.identify(d, &want.id.to_hex(), job.name(), job.size());
        }
        self.background.insert(want.id, (d, cancel.clone()));
        let this = self.clone();
        self.tasks.spawn(
            &format!("background fetch {}", want.id.short()),
            async move {
                let id = want.id;
                this.run_background(d, want, cancel).await;
                this.background.remove_if(&id, |_, (mine, _)| *mine == d);
            },
        );
        d
    }

    /// A `fetch` of `id` takes over its background download, if one runs:
    /// the background one stops (its job stays recorded) and leaves the
    /// transfers, and the `fetch` goes on from the chunks it verified,
    /// showing its progress.
    pub(super) fn take_over(&self, id: &crate::id::ContentId) {
        if let Some((_, (d, token))) = self.background.remove(id) {
            tracing::info!(id = %id.short(), "fetch takes over the background download");
            self.stats.transfers.forget(d);
            token.cancel();
        }
    }

    /// The life of one background download: wait for a holder, download,
    /// and again after a failure while its job is still recorded.
    async fn run_background(&self, d: DownloadId, want: Want, cancel: CancellationToken) {
        let reg = &self.stats.transfers;
        let mut again = Retry::new(AGAIN);
        loop {
            if !self.wait_for_holder(d, &want, &cancel).await {
                break;
            }
            let (tx, rx) = mpsc::channel::<FetchEvent>(64);
            let ((), last) = tokio::join!(
                self.download(want.clone(), tx, cancel.clone()),
                self.follow_background(d, rx)
            );
            let retry = match &last {
                Some(FetchEvent::Failed { .. }) => {
                    !cancel.is_cancelled() && self.store.jobs().get(&want.id).is_some()
                }
                _ => false,
            };
            if !retry {
                if let Some(ev) = last {
                    reg.download_event(d, &ev, Instant::now());
                }
                break;
            }
            let delay = again.failed(Instant::now());
            if let Some(FetchEvent::Failed { reason }) = last {
                reg.waiting(
                    d,
                    format!(
                        "{reason}; trying again in {}",
                        humantime::format_duration(Duration::from_secs(delay.as_secs().max(1)))
                    ),
                );
            }
            if cancel
                .run_until_cancelled(tokio::time::sleep(delay))
                .await
                .is_none()
            {
                break;
            }
        }
        reg.end_download(d, Instant::now());
    }

    /// Waits, listed as waiting, until some online peer holds `want`.
    /// False when cancelled first.
    async fn wait_for_holder(
        &self,
        d: DownloadId,
        want: &Want,
        cancel: &CancellationToken,
    ) -> bool {
        let online = |dict: &crate::dict::Dict| (!dict.holders(&want.id).is_empty()).then_some(());
        if online(&self.dict).is_some() {
            return true;
        }
        self.stats
            .transfers
            .waiting(d, "waiting for a holder to come online".into());
        loop {
            if cancel.is_cancelled() {
                return false;
            }
            if self
                .dict
                .wait_for(HOLDER_WAIT, cancel, online)
                .await
                .is_some()
            {
                return true;
            }
        }
    }

    /// Feeds the registry with the events of one attempt, all but the
    /// final one, which it returns (the caller decides what it means).
    async fn follow_background(
        &self,
        d: DownloadId,
        mut rx: mpsc::Receiver<FetchEvent>,
    ) -> Option<FetchEvent> {
        let reg = &self.stats.transfers;
        let mut last = None;
        while let Some(ev) = rx.recv().await {
            match ev {
                FetchEvent::Done(_)
                | FetchEvent::Failed { .. }
                | FetchEvent::NotFound { .. }
                | FetchEvent::Ambiguous { .. } => last = Some(ev),
                ev => reg.download_event(d, &ev, Instant::now()),
            }
        }
        last
    }
}
