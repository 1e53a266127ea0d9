//! A folder download (`lanshare fetch holiday`): the whole tree of a folder
//! the network offers, empty folders included, into a new folder of
//! downloads/ (`holiday`, or `holiday (1)`... when that exists).
//!
//! [`FolderJob`] is the plain, serializable description of one (what to
//! fetch and where), made from what the holders list by the versions and
//! copies rules ([`FolderJob::from_listing`], docs/fetch-states.md).
//! Running it ([`FetchCtx::fetch_folder`]) fetches its small files
//! together ([`batch`]: one pipelined connection per holder, landed in
//! synced groups) and the others a few at a time, each through the
//! verified single-file download ([`FetchCtx::fetch`]) from every holder
//! of that file, sharing the node's dialer, and reports files and bytes as
//! one download. A content at several paths is fetched once and placed at
//! each; a content already here is copied.
//!
//! This module never schedules chunks or talks to a peer itself (the
//! swarm and the batch do); never touches a file except through the store.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{FetchCtx, FetchError, Want};
use crate::api::{FetchDone, FetchEvent, PeerBytes};
use crate::id::{ContentId, NodeId};
use crate::resolve::file_name;
use crate::store::{InPlace, Placement, Recorded, Store, StoreError, local_component};
use crate::wire::check_path;

mod batch;
mod job;
mod pool;
use batch::{BatchJob, BatchNote};
pub use job::{FolderEntry, FolderJob, FolderWant};

/// One fetch per content at a time: a second waits for the first (shared
/// by single downloads and folder downloads).
#[derive(Default)]
pub struct FetchLocks(dashmap::DashMap<ContentId, Arc<tokio::sync::Mutex<()>>>);

impl FetchLocks {
    /// Whether no download of `id` holds its lock now.
    pub fn is_idle(&self, id: &ContentId) -> bool {
        self.0.get(id).is_none_or(|m| m.try_lock().is_ok())
    }

    /// The lock of `id` if no download holds it now.
    pub fn try_lock(&self, id: ContentId) -> Option<tokio::sync::OwnedMutexGuard<()>> {
        let m = self.0.entry(id).or_default().clone();
        m.try_lock_owned().ok()
    }

    pub async fn lock(&self, id: ContentId) -> tokio::sync::OwnedMutexGuard<()> {
        let m = self.0.entry(id).or_default().clone();
        m.lock_owned().await
    }
}

/// A content of the job and every place it goes.
struct FileTask {
    id: ContentId,
    size: u64,
    /// (path inside the folder, where it lands).
    places: Vec<(String, Placement)>,
}

/// How one content of the job ended.
struct FileOutcome {
    paths: Vec<String>,
    result: Result<(), String>,
    transferred: u64,
}

/// What the running file downloads report, summed into the folder's.
#[derive(Default)]
struct Tally {
    /// Verified bytes of each content in flight.
    in_flight: HashMap<ContentId, u64>,
    /// Bytes each peer gave, per content.
    peers: HashMap<(ContentId, String), u64>,
}

impl Tally {
    fn peer_bytes(&self) -> Vec<PeerBytes> {
        let mut sum: BTreeMap<&str, u64> = BTreeMap::new();
        for ((_, peer), bytes) in &self.peers {
            *sum.entry(peer).or_default() += bytes;
        }
        sum.into_iter()
            .map(|(peer, bytes)| PeerBytes {
                peer: peer.to_string(),
                bytes,
            })
            .collect()
    }
}

/// The files of a job: where each lands (its folder made), those already
/// in place from an earlier run, and those whose folder cannot be made.
struct Layout {
    tasks: Vec<FileTask>,
    in_place: Vec<FolderEntry>,
    refused: Vec<(String, String)>,
}

/// Makes the job's folders under `dest` and groups its files by content;
/// a file already at its path counts as in place only once checked
/// ([`Store::holds_at`]); removes the dead landings' temporary files
/// from the job's folders. Blocking: may hash files in place.
fn lay_out(store: &Store, job: &FolderJob, dest: &std::path::Path) -> Layout {
    let mut layout = Layout {
        tasks: Vec::new(),
        in_place: Vec::new(),
        refused: Vec::new(),
    };
    for dir in &job.empty_dirs {
        if let Err(e) = store.create_folder_path(dest, dir) {
            layout.refused.push((format!("{dir}/"), e.to_string()));
        }
    }
    let mut by_id: BTreeMap<ContentId, FileTask> = BTreeMap::new();
    let mut dirs: BTreeSet<PathBuf> = BTreeSet::from([dest.to_path_buf()]);
    let mut hashed = Vec::new();
    for e in &job.entries {
        let place = match place_of(store, dest, &e.path) {
            Ok(p) => p,
            Err(err) => {
                layout.refused.push((e.path.clone(), err));
                continue;
            }
        };
        let there = place.dir.join(&place.name);
        dirs.insert(place.dir.clone());
        // A file of the listed size is in place only when it holds the
        // content (indexed there unchanged, or hashed now); another at
        // its path stays, and the content lands beside it.
        if std::fs::symlink_metadata(&there).is_ok_and(|m| m.is_file() && m.len() == e.size) {
            match store.holds_at(&there, &e.id) {
                InPlace::Indexed => {
                    layout.in_place.push(e.clone());
                    continue;
                }
                InPlace::Hashed(manifest) => {
                    hashed.push((there, manifest));
                    layout.in_place.push(e.clone());
                    continue;
                }
                InPlace::Other => {}
            }
        }
        by_id
            .entry(e.id)
            .or_insert_with(|| FileTask {
                id: e.id,
                size: e.size,
                places: Vec::new(),
            })
            .places
            .push((e.path.clone(), place));
    }
    store.index_in_place(hashed);
    // What a crash cut short in an earlier run of the job (or of another
    // process gone since): its temporary files, hidden beside the places.
    store.remove_dead_landings(dirs.iter().map(PathBuf::as_path));
    layout.tasks = by_id.into_values().collect();
    layout
}

/// Where the file at `path` (inside the folder) lands, its folder made.
fn place_of(store: &Store, dest: &std::path::Path, path: &str) -> Result<Placement, String> {
    check_path(path).map_err(|_| format!("refusing the path {path:?}"))?;
    let dir = match path.rsplit_once('/') {
        Some((parent, _)) => store
            .create_folder_path(dest, parent)
            .map_err(|e| e.to_string())?,
        None => dest.to_path_buf(),
    };
    Ok(Placement {
        dir,
        name: local_component(file_name(path)),
    })
}

impl FetchCtx {
    /// Runs the folder download `job` (choosing its folder first when it
    /// has none, see [`FolderJob::prepare`]): its empty folders made, its
    /// files fetched at most `limits.folder_files` at a time, each
    /// verified, into their paths. Sends `Started`, `Files`, `Progress` and
    /// `PeerBytes` events for the folder as one download; returns where it
    /// landed, or the files that failed (those in place are kept).
    pub async fn fetch_folder(
        self: &Arc<Self>,
        mut job: FolderJob,
        query: &str,
        locks: Arc<FetchLocks>,
        events: &mpsc::Sender<FetchEvent>,
        cancel: CancellationToken,
    ) -> Result<FetchDone, FetchError> {
        let started = Instant::now();
        if job.dest.is_none() {
            // Refused before any folder is made or any job recorded.
            let needed = (job.entries.iter()).map(|e| self.space_needed(&e.id, e.size));
            self.check_free(needed.sum())?;
        }
        let dest = job.prepare(&self.store)?;
        self.record_folder(&job, query, &dest, &cancel)?;
        let layout = {
            let (store, job, dest) = (self.store.clone(), job.clone(), dest.clone());
            tokio::task::spawn_blocking(move || lay_out(&store, &job, &dest))
                .await
                .map_err(|e| {
                    FetchError::Store(StoreError::Io {
                        what: "laying out the folder ended abnormally:",
                        path: PathBuf::new(),
                        source: std::io::Error::other(e.to_string()),
                    })
                })?
        };
        self.check_folder_fits(&layout.tasks)?;
        let total_files = job.entries.len() as u32;
        let total = job.total_bytes();
        let already: u64 = layout.in_place.iter().map(|e| e.size).sum();
        let holders: BTreeSet<NodeId> = layout
            .tasks
            .iter()
            .flat_map(|t| self.dict.holders(&t.id))
            .map(|h| h.id)
            .collect();
        let _ = events
            .send(FetchEvent::Started {
                id: String::new(),
                name: job.folder.clone(),
                size: total,
                holders: holders.len() as u32,
                already,
            })
            .await;
        let mut run = FolderRun {
            done: layout.in_place.len() as u32,
            failed: Vec::new(),
            total_files,
            bytes_done: already,
            total,
            transferred: 0,
            tally: Arc::new(Mutex::new(Tally::default())),
        };
        run.files(events, String::new(), None).await;
        for (path, error) in layout.refused {
            run.end(events, path, Err(error)).await;
        }
        self.run_files(&job.folder, layout.tasks, &locks, &mut run, events, &cancel)
            .await;
        let peers = run.tally.lock().expect("tally lock").peer_bytes();
        let _ = events
            .send(FetchEvent::PeerBytes {
                peers: peers.clone(),
            })
            .await;
        if cancel.is_cancelled() {
            return Err(FetchError::Cancelled);
        }
        if let Some(e) = run.incomplete(&dest) {
            // The job stays recorded: the next start (or `fetch` of the
            // folder again) goes on with the files still missing.
            return Err(e);
        }
        if let Err(e) = self.store.jobs().remove_folder(&dest) {
            tracing::warn!(folder = %job.folder, error = %e, "cannot update the download list");
        }
        Ok(FetchDone {
            id: String::new(),
            path: dest.display().to_string(),
            size: total,
            sha256: String::new(),
            secs: started.elapsed().as_secs_f64(),
            transferred: run.transferred,
            peers: peers.into_iter().map(|p| p.peer).collect(),
            already_local: false,
        })
    }

    /// Records the job so it goes on after a restart (its files are not
    /// recorded one by one); a cancel that came first ends it here.
    fn record_folder(
        &self,
        job: &FolderJob,
        query: &str,
        dest: &std::path::Path,
        cancel: &CancellationToken,
    ) -> Result<(), FetchError> {
        match self
            .store
            .jobs()
            .record_folder(job.record(query, dest), cancel)
        {
            Ok(Recorded::Cancelled) => return Err(FetchError::Cancelled),
            Ok(Recorded::Yes) => {}
            Err(e) => {
                tracing::warn!(folder = %job.folder, error = %e, "cannot record the folder download")
            }
        }
        Ok(())
    }

    /// The whole tree must fit before any of it is fetched (a content at
    /// several paths lands once per path).
    fn check_folder_fits(&self, tasks: &[FileTask]) -> Result<(), FetchError> {
        let needed: u64 = (tasks.iter())
            .map(|t| {
                let copies = t.places.len().saturating_sub(1) as u64;
                self.space_needed(&t.id, t.size) + t.size * copies
            })
            .sum();
        self.check_free(needed)
    }

    /// Fetches `tasks`: the small ones together ([`batch`]), the others
    /// (and those the batch hands back) through the single-file download,
    /// at most `limits.folder_files` at once; reports each end and the
    /// bytes so far (every 250 ms).
    async fn run_files(
        self: &Arc<Self>,
        folder: &str,
        tasks: Vec<FileTask>,
        locks: &Arc<FetchLocks>,
        run: &mut FolderRun,
        events: &mpsc::Sender<FetchEvent>,
        cancel: &CancellationToken,
    ) {
        let (small, large): (Vec<FileTask>, Vec<FileTask>) = tasks
            .into_iter()
            .partition(|t| t.size <= batch::SMALL_MAX && self.store.complete(&t.id).is_none());
        let mut todo: std::collections::VecDeque<FileTask> = large.into();
        let (notes_tx, mut notes) = mpsc::channel::<BatchNote>(256);
        let job = BatchJob {
            folder: folder.to_string(),
            locks: locks.clone(),
            tally: run.tally.clone(),
            events: events.clone(),
            notes: notes_tx,
            cancel: cancel.clone(),
        };
        let batch = batch::run(self.clone(), job, small);
        tokio::pin!(batch);
        let (mut batching, mut noting) = (true, true);
        let mut set = self.tasks.set::<FileOutcome>(&format!("folder {folder}"));
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let width = self.limits.folder_files.max(1);
        loop {
            while set.len() < width && !cancel.is_cancelled() {
                let Some(task) = todo.pop_front() else { break };
                let name = format!("file {}", task.id.short());
                let job = self.clone().fetch_file(
                    folder.to_string(),
                    task,
                    locks.clone(),
                    run.tally.clone(),
                    events.clone(),
                    cancel.clone(),
                );
                set.spawn(&name, job);
            }
            if set.is_empty() && !batching && !noting {
                break;
            }
            tokio::select! {
                () = &mut batch, if batching => batching = false,
                note = notes.recv(), if noting => match note {
                    Some(BatchNote::Done(outcome)) => run.ended(events, outcome).await,
                    Some(BatchNote::Handback(task)) => todo.push_back(task),
                    None => noting = false,
                },
                joined = set.join_next(), if !set.is_empty() => match joined {
                    Some(Ok(outcome)) => run.ended(events, outcome).await,
                    Some(Err(e)) => tracing::warn!(error = %e, "a file of a folder download ended abnormally"),
                    None => {}
                },
                _ = tick.tick() => run.progress(events, set.len() as u32).await,
            }
        }
        run.progress(events, 0).await;
    }

    /// Fetches one content of a folder into its first place (through the
    /// single-file download, under the content's fetch lock), then copies
    /// it to its other places. A content already here is copied.
    async fn fetch_file(
        self: Arc<Self>,
        folder: String,
        task: FileTask,
        locks: Arc<FetchLocks>,
        tally: Arc<Mutex<Tally>>,
        events: mpsc::Sender<FetchEvent>,
        cancel: CancellationToken,
    ) -> FileOutcome {
        let paths: Vec<String> = task.places.iter().map(|(p, _)| p.clone()).collect();
        let _guard = locks.lock(task.id).await;
        let (first_path, first) = task.places[0].clone();
        let want = Want {
            id: task.id,
            query: format!("{folder}/{first_path}"),
            size: Some(task.size),
            place: Some(first),
        };
        let (tx, rx) = mpsc::channel::<FetchEvent>(64);
        let fetch = async {
            let r = self.fetch(want, &tx, cancel).await;
            drop(tx);
            r
        };
        let (result, ()) = tokio::join!(fetch, follow(task.id, rx, &tally, &events));
        tally.lock().expect("tally lock").in_flight.remove(&task.id);
        let transferred = result.as_ref().map_or(0, |d| d.transferred);
        let result = match result {
            Ok(done) => {
                let copies = if done.already_local {
                    &task.places[..]
                } else {
                    &task.places[1..]
                };
                self.copy_places(task.id, copies).await
            }
            Err(e) => Err(e.to_string()),
        };
        FileOutcome {
            paths,
            result,
            transferred,
        }
    }

    /// Copies the local copy of `id` to each of `places` (off the runtime:
    /// each copy is read and hashed).
    async fn copy_places(
        &self,
        id: ContentId,
        places: &[(String, Placement)],
    ) -> Result<(), String> {
        for (_, place) in places {
            let store = self.store.clone();
            let place = place.clone();
            let copied = tokio::task::spawn_blocking(move || store.copy_into(&id, &place)).await;
            match copied {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.to_string()),
                Err(e) => {
                    return Err(StoreError::Io {
                        what: "copy ended abnormally:",
                        path: PathBuf::new(),
                        source: std::io::Error::other(e.to_string()),
                    }
                    .to_string());
                }
            }
        }
        Ok(())
    }
}

/// Reads one file download's events: its verified bytes and each peer's
/// into the tally; a dropped or slow peer passed on to the folder's events.
async fn follow(
    id: ContentId,
    mut rx: mpsc::Receiver<FetchEvent>,
    tally: &Mutex<Tally>,
    events: &mpsc::Sender<FetchEvent>,
) {
    while let Some(ev) = rx.recv().await {
        match ev {
            FetchEvent::Started { already: done, .. } | FetchEvent::Progress { done, .. } => {
                tally.lock().expect("tally lock").in_flight.insert(id, done);
            }
            FetchEvent::PeerBytes { peers } => {
                let mut t = tally.lock().expect("tally lock");
                for p in peers {
                    t.peers.insert((id, p.peer), p.bytes);
                }
            }
            ev @ (FetchEvent::PeerDropped { .. } | FetchEvent::Slow { .. }) => {
                let _ = events.send(ev).await;
            }
            _ => {}
        }
    }
}

/// A folder download's counts while it runs.
struct FolderRun {
    done: u32,
    /// (path, why) of each file that failed.
    failed: Vec<(String, String)>,
    total_files: u32,
    /// Bytes of the files in place.
    bytes_done: u64,
    total: u64,
    transferred: u64,
    tally: Arc<Mutex<Tally>>,
}

impl FolderRun {
    /// Why the folder is not complete: a file failed, or one did not
    /// report how it ended (a lost task); `None` when every file is in
    /// place.
    fn incomplete(&self, dest: &std::path::Path) -> Option<FetchError> {
        let total = self.total_files as usize;
        let ended = self.done as usize + self.failed.len();
        let (failed, first) = match self.failed.first() {
            Some((first, why)) => (self.failed.len(), format!("{first}: {why}")),
            None if ended < total => (
                total - ended,
                "a file of the folder ended without a result".to_string(),
            ),
            None => return None,
        };
        Some(FetchError::FolderIncomplete {
            failed,
            total,
            first,
            dest: dest.display().to_string(),
        })
    }

    async fn files(&self, events: &mpsc::Sender<FetchEvent>, path: String, error: Option<String>) {
        let _ = events
            .send(FetchEvent::Files {
                done: self.done,
                failed: self.failed.len() as u32,
                total: self.total_files,
                path,
                error,
            })
            .await;
    }

    /// Records the end of the file at `path`.
    async fn end(
        &mut self,
        events: &mpsc::Sender<FetchEvent>,
        path: String,
        result: Result<(), String>,
    ) {
        let error = match result {
            Ok(()) => {
                self.done += 1;
                None
            }
            Err(e) => {
                self.failed.push((path.clone(), e.clone()));
                Some(e)
            }
        };
        self.files(events, path, error).await;
    }

    /// Records how the content of `outcome` ended, at each of its paths.
    async fn ended(&mut self, events: &mpsc::Sender<FetchEvent>, outcome: FileOutcome) {
        self.transferred += outcome.transferred;
        for path in outcome.paths {
            self.end(events, path, outcome.result.clone()).await;
        }
    }

    async fn progress(&mut self, events: &mpsc::Sender<FetchEvent>, active: u32) {
        let in_flight: u64 = self
            .tally
            .lock()
            .expect("tally lock")
            .in_flight
            .values()
            .sum();
        let done = (self.bytes_done + self.transferred + in_flight).min(self.total);
        let _ = events
            .send(FetchEvent::Progress {
                done,
                size: self.total,
                peers: active,
            })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dict::{FolderListing, Listed};

    fn node(b: u8) -> NodeId {
        NodeId([b; 16])
    }

    #[test]
    fn the_version_most_holders_list_wins_and_every_path_counts() {
        let id = |b: u8| ContentId([b; 32]);
        let listed = |path: &str, c: u8, holder: u8| Listed {
            path: path.to_string(),
            id: id(c),
            size: u64::from(c),
            holder: node(holder),
        };
        let listing = FolderListing {
            files: vec![
                listed("a.txt", 1, 1),
                listed("a.txt", 2, 2),
                listed("a.txt", 2, 3),
                // A tie: the lowest id.
                listed("day1/b.jpg", 9, 1),
                listed("day1/b.jpg", 4, 2),
                // Listed by one holder only: still fetched.
                listed("only/c.bin", 5, 3),
            ],
            empty_dirs: ["empty".to_string()].into(),
            found: true,
        };
        let job = FolderJob::from_listing("holiday", &listing);
        let got: Vec<(&str, ContentId)> = job
            .entries
            .iter()
            .map(|e| (e.path.as_str(), e.id))
            .collect();
        assert_eq!(
            got,
            [
                ("a.txt", id(2)),
                ("day1/b.jpg", id(4)),
                ("only/c.bin", id(5))
            ]
        );
        assert_eq!(job.empty_dirs, ["empty"]);
        assert_eq!(job.total_bytes(), 2 + 4 + 5);
        assert_eq!(job.name(), "holiday");
        assert_eq!(FolderJob::from_listing("a/day1", &listing).name(), "day1");
        // The job is plain data: it survives a round trip.
        let json = serde_json::to_string(&job).unwrap();
        assert_eq!(serde_json::from_str::<FolderJob>(&json).unwrap(), job);
    }
}
