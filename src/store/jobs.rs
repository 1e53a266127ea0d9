//! The job list: every download this node started and has not finished,
//! in `.lanshare/downloads.json`, so a download goes on by itself after a
//! clean stop, a crash or a reboot, and one the user cancelled never comes
//! back.
//!
//! A job is recorded when its download really starts (the manifest is in
//! hand, the space checked, the partial file open) and removed when it
//! ends for good: finished, failed in a way no retry can mend, or
//! cancelled by the user. Each change rewrites the whole list atomically
//! ([`super::durable::write_atomic`]); a list that cannot be read (cut
//! short, edited, too large) is set aside as `downloads.json.bad` with a
//! warning, and the node starts with an empty list.
//!
//! Owns the list and the in-memory "cancelled for good" marks; never
//! starts, stops or schedules a download (the service does) and never
//! touches a partial file (the store does).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::id::ContentId;

/// Most jobs the list holds; a download started beyond it still runs but
/// is not recorded (it would not resume after a restart).
pub const MAX_JOBS: usize = 4096;
/// Largest list file read back (about 600 bytes a job at most).
pub const MAX_LIST_BYTES: u64 = 4 << 20;
/// Longest query or name kept in a job (longer ones are cut).
const MAX_TEXT: usize = 1024;
/// The list file's format version.
const VERSION: u32 = 1;

/// One download to go on with after a restart: a file, or a folder's
/// tree (whose files are not recorded one by one: the folder job covers
/// them, and resumes each into its place).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Job {
    File(FileJob),
    Folder(FolderJobRecord),
}

/// A folder download as recorded: what `fetch::FolderJob` holds, in plain
/// fields (the store knows nothing of fetching), and where it lands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FolderJobRecord {
    /// What the user typed (`fetch holiday`), kept for `cancel holiday`.
    pub query: String,
    /// The folder's path on the network (`holiday`).
    pub folder: String,
    /// The folder of downloads/ it lands in (chosen when it started).
    pub dest: std::path::PathBuf,
    /// Each file: its path inside the folder, content id (hex) and size.
    pub files: Vec<(String, String, u64)>,
    /// Empty folders, by their path inside the folder.
    pub empty_dirs: Vec<String>,
    /// When it started, seconds since the epoch.
    pub started: u64,
}

/// A download of one file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileJob {
    /// The content id, hex.
    pub id: String,
    /// What the user typed (`fetch photo`), kept for `cancel photo`.
    pub query: String,
    /// The name it is saved under in downloads/, as chosen when it
    /// started, so a resumed download keeps it.
    pub name: String,
    pub size: u64,
    /// When it started, seconds since the epoch (the list's order).
    pub started: u64,
}

impl Job {
    /// A download of one file, started now.
    pub fn file(id: ContentId, query: &str, name: &str, size: u64) -> Job {
        Job::File(FileJob {
            id: id.to_hex(),
            query: cut(query),
            name: cut(name),
            size,
            started: now_secs(),
        })
    }

    /// The content this job downloads (none for a folder).
    pub fn content_id(&self) -> Option<ContentId> {
        match self {
            Job::File(f) => crate::id::from_hex::<32>(&f.id).map(ContentId),
            Job::Folder(_) => None,
        }
    }

    /// Every content this job downloads: a file's, or each of a folder's
    /// files' (once each, ascending; ids that do not parse are left out).
    pub fn content_ids(&self) -> Vec<ContentId> {
        match self {
            Job::File(_) => self.content_id().into_iter().collect(),
            Job::Folder(f) => {
                let ids: std::collections::BTreeSet<ContentId> = (f.files.iter())
                    .filter_map(|(_, id, _)| crate::id::from_hex::<32>(id).map(ContentId))
                    .collect();
                ids.into_iter().collect()
            }
        }
    }

    /// The name it is saved under (a folder: its path on the network).
    pub fn name(&self) -> &str {
        match self {
            Job::File(f) => &f.name,
            Job::Folder(f) => &f.folder,
        }
    }

    pub fn query(&self) -> &str {
        match self {
            Job::File(f) => &f.query,
            Job::Folder(f) => &f.query,
        }
    }

    pub fn size(&self) -> u64 {
        match self {
            Job::File(f) => f.size,
            Job::Folder(f) => f.files.iter().map(|(_, _, size)| size).sum(),
        }
    }

    /// Whether `target` (as `lanshare cancel` takes it) names this job:
    /// a content id prefix of 4 hex digits or more, the saved name with or
    /// without its extension, or the query it was started with; letter
    /// case does not matter.
    pub fn matches(&self, target: &str) -> bool {
        let t = target.trim().to_lowercase();
        if t.is_empty() {
            return false;
        }
        let f = match self {
            Job::File(f) => f,
            Job::Folder(f) => {
                let dest = f
                    .dest
                    .file_name()
                    .map(|n| n.to_string_lossy().to_lowercase());
                return f.folder.to_lowercase() == t
                    || f.query.to_lowercase() == t
                    || dest.is_some_and(|d| d == t);
            }
        };
        let name = f.name.to_lowercase();
        let stem = name.rsplit_once('.').map_or(name.as_str(), |(s, _)| s);
        let hex = t.len() >= 4 && t.chars().all(|c| c.is_ascii_hexdigit());
        (hex && f.id.starts_with(&t)) || name == t || stem == t || f.query.to_lowercase() == t
    }
}

/// Seconds since the epoch (a job's start, the list's order).
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn cut(s: &str) -> String {
    let mut end = s.len().min(MAX_TEXT);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[derive(Serialize, Deserialize)]
struct ListFile {
    version: u32,
    jobs: Vec<Job>,
}

#[derive(Debug, thiserror::Error)]
pub enum JobsError {
    #[error(
        "cannot record the download in {path}: {source}; it will not resume by itself after a restart"
    )]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{MAX_JOBS} downloads are recorded already; this one will not resume by itself after a restart"
    )]
    Full,
}

/// Whether [`Jobs::record`] recorded the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recorded {
    Yes,
    /// The download was cancelled before it could be recorded.
    Cancelled,
}

#[derive(Default)]
struct Inner {
    jobs: Vec<Job>,
    /// Contents the user cancelled while their download ran: the download
    /// discards its partial file when it ends ([`Jobs::take_cancelled`]).
    cancelled: HashSet<ContentId>,
}

/// The job list of one node. Cheap to share behind the store's `Arc`.
pub struct Jobs {
    path: PathBuf,
    /// Std mutex: held for a list change and its write (a small file).
    inner: Mutex<Inner>,
}

impl Jobs {
    /// Loads the list at `path`. A missing list is empty; one that cannot
    /// be read is set aside (`.bad`) with a warning and counts as empty.
    pub fn load(path: &Path) -> Jobs {
        let jobs = match read_list(path) {
            Ok(jobs) => jobs,
            Err(why) => {
                let mut bad = path.as_os_str().to_owned();
                bad.push(".bad");
                let _ = std::fs::rename(path, &bad);
                tracing::warn!(path = %path.display(), %why, "ignoring the download list (kept as downloads.json.bad); unfinished downloads will not resume by themselves");
                Vec::new()
            }
        };
        Jobs {
            path: path.to_path_buf(),
            inner: Mutex::new(Inner {
                jobs,
                cancelled: HashSet::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("jobs lock")
    }

    /// Every job, oldest first.
    pub fn list(&self) -> Vec<Job> {
        self.lock().jobs.clone()
    }

    /// The job downloading `id`.
    pub fn get(&self, id: &ContentId) -> Option<Job> {
        let hex = id.to_hex();
        self.lock()
            .jobs
            .iter()
            .find(|j| matches!(j, Job::File(f) if f.id == hex))
            .cloned()
    }

    /// Records `job` (replacing the job of the same content), unless
    /// `cancel` fired: checked under the list's lock, so a cancel that
    /// fires the token and then removes matching jobs never misses it.
    pub fn record(&self, job: Job, cancel: &CancellationToken) -> Result<Recorded, JobsError> {
        let id = job.content_id();
        self.put_where(job, |j| j.content_id() == id, cancel)
    }

    /// Records `job` in place of the one `same` names (else at the end,
    /// room permitting), unless `cancel` fired.
    fn put_where(
        &self,
        job: Job,
        same: impl Fn(&Job) -> bool,
        cancel: &CancellationToken,
    ) -> Result<Recorded, JobsError> {
        let mut inner = self.lock();
        if cancel.is_cancelled() {
            return Ok(Recorded::Cancelled);
        }
        let mut jobs = inner.jobs.clone();
        match jobs.iter().position(same) {
            Some(i) => jobs[i] = job,
            None if jobs.len() >= MAX_JOBS => return Err(JobsError::Full),
            None => jobs.push(job),
        }
        self.write(&jobs)?;
        inner.jobs = jobs;
        Ok(Recorded::Yes)
    }

    /// The folder job of the network folder `folder`, if one is recorded
    /// (a `fetch` of it again resumes into the same place).
    pub fn folder(&self, folder: &str) -> Option<FolderJobRecord> {
        self.lock().jobs.iter().find_map(|j| match j {
            Job::Folder(f) if f.folder == folder => Some(f.clone()),
            _ => None,
        })
    }

    /// Records a folder job (replacing the one landing in the same place),
    /// unless `cancel` fired.
    pub fn record_folder(
        &self,
        job: FolderJobRecord,
        cancel: &CancellationToken,
    ) -> Result<Recorded, JobsError> {
        let dest = job.dest.clone();
        let same = |j: &Job| matches!(j, Job::Folder(f) if f.dest == dest);
        self.put_where(Job::Folder(job), same, cancel)
    }

    /// Removes the folder job landing in `dest` (it finished).
    pub fn remove_folder(&self, dest: &Path) -> Result<bool, JobsError> {
        self.remove_where(|j| matches!(j, Job::Folder(f) if f.dest == dest))
    }

    /// Removes the job of `id` (its download ended for good). Returns
    /// whether there was one.
    pub fn remove(&self, id: &ContentId) -> Result<bool, JobsError> {
        self.remove_where(|j| j.content_id().as_ref() == Some(id))
    }

    /// Removes the jobs `gone` names; whether there was one.
    fn remove_where(&self, gone: impl Fn(&Job) -> bool) -> Result<bool, JobsError> {
        let mut inner = self.lock();
        let before = inner.jobs.len();
        let jobs: Vec<Job> = inner.jobs.iter().filter(|j| !gone(j)).cloned().collect();
        if jobs.len() == before {
            return Ok(false);
        }
        self.write(&jobs)?;
        inner.jobs = jobs;
        Ok(true)
    }

    /// Removes every job `hit` names, for good, and marks their
    /// contents cancelled (a folder's: each of its files'), but for those
    /// a job still recorded downloads too. Returns the jobs removed.
    pub fn cancel_where(&self, hit: impl Fn(&Job) -> bool) -> Result<Vec<Job>, JobsError> {
        let mut inner = self.lock();
        let (gone, kept): (Vec<Job>, Vec<Job>) = inner.jobs.iter().cloned().partition(|j| hit(j));
        if gone.is_empty() {
            return Ok(gone);
        }
        self.write(&kept)?;
        let needed: HashSet<ContentId> = kept.iter().flat_map(Job::content_ids).collect();
        inner.jobs = kept;
        let cancelled = gone.iter().flat_map(Job::content_ids);
        (inner.cancelled).extend(cancelled.filter(|id| !needed.contains(id)));
        Ok(gone)
    }

    /// Whether the user cancelled the download of `id` (then its partial
    /// file goes); clears the mark.
    pub fn take_cancelled(&self, id: &ContentId) -> bool {
        self.lock().cancelled.remove(id)
    }

    fn write(&self, jobs: &[Job]) -> Result<(), JobsError> {
        let list = ListFile {
            version: VERSION,
            jobs: jobs.to_vec(),
        };
        let bytes = serde_json::to_vec_pretty(&list).expect("serializable");
        let written = if jobs.is_empty() {
            match std::fs::remove_file(&self.path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => self.path.parent().map_or(Ok(()), super::durable::sync_dir),
            }
        } else {
            super::durable::write_atomic(&self.path, &bytes)
        };
        written.map_err(|source| JobsError::Write {
            path: self.path.clone(),
            source,
        })
    }
}

/// The jobs in the list at `path` (none when it does not exist), or why
/// it cannot be used.
fn read_list(path: &Path) -> Result<Vec<Job>, String> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.to_string()),
    };
    if meta.len() > MAX_LIST_BYTES {
        return Err(format!(
            "{} bytes, more than the {MAX_LIST_BYTES} a list may have",
            meta.len()
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| e.to_string())?;
    let list: ListFile = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if list.version != VERSION {
        return Err(format!("unknown version {}", list.version));
    }
    let (mut seen, mut dests) = (HashSet::new(), HashSet::new());
    let jobs: Vec<Job> = list
        .jobs
        .into_iter()
        .filter(|j| match j {
            Job::File(_) => j.content_id().is_some_and(|id| seen.insert(id)),
            // Where it lands is checked again before anything is written
            // (`FolderJob::prepare`: a folder of downloads/).
            Job::Folder(f) => dests.insert(f.dest.clone()),
        })
        .take(MAX_JOBS)
        .collect();
    Ok(jobs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_job_is_kept_across_a_reload_and_removed_by_its_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("downloads.json");
        let jobs = Jobs::load(&path);
        let record = FolderJobRecord {
            query: "holiday".into(),
            folder: "holiday".into(),
            dest: dir.path().join("downloads/holiday"),
            files: vec![("b.bin".into(), ContentId([7; 32]).to_hex(), 12)],
            empty_dirs: vec!["empty".into()],
            started: 0,
        };
        let never = CancellationToken::new();
        jobs.record_folder(record.clone(), &never).unwrap();
        jobs.record(job(1, "a.txt"), &never).unwrap();
        let again = Jobs::load(&path);
        assert_eq!(again.list().len(), 2);
        assert_eq!(again.folder("holiday"), Some(record.clone()));
        assert!(again.list()[0].matches("HOLIDAY"));
        assert!(again.remove_folder(&record.dest).unwrap());
        assert_eq!(Jobs::load(&path).list(), vec![job(1, "a.txt")]);
    }

    fn job(n: u8, name: &str) -> Job {
        Job::File(FileJob {
            id: ContentId([n; 32]).to_hex(),
            query: name.into(),
            name: name.into(),
            size: 1000 + u64::from(n),
            started: 0,
        })
    }

    #[test]
    fn jobs_survive_a_reload_and_go_when_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("downloads.json");
        let jobs = Jobs::load(&path);
        let token = CancellationToken::new();
        assert_eq!(jobs.record(job(1, "a.bin"), &token).unwrap(), Recorded::Yes);
        jobs.record(job(2, "b.bin"), &token).unwrap();
        jobs.record(job(1, "a.bin"), &token).unwrap();
        let again = Jobs::load(&path);
        assert_eq!(again.list(), [job(1, "a.bin"), job(2, "b.bin")]);
        assert!(again.remove(&ContentId([1; 32])).unwrap());
        assert!(!again.remove(&ContentId([1; 32])).unwrap());
        assert_eq!(Jobs::load(&path).list(), [job(2, "b.bin")]);
        again.remove(&ContentId([2; 32])).unwrap();
        assert!(!path.exists(), "an empty list is no file");
        assert!(Jobs::load(&path).list().is_empty());
    }

    /// A list cut short (a crash of an older build, a full disk, an edit)
    /// is set aside with a warning; the node starts with none.
    #[test]
    fn a_corrupt_or_truncated_list_is_ignored_and_kept_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("downloads.json");
        let jobs = Jobs::load(&path);
        let token = CancellationToken::new();
        jobs.record(job(1, "a.bin"), &token).unwrap();
        jobs.record(job(2, "b.bin"), &token).unwrap();
        let full = std::fs::read(&path).unwrap();
        for cut in [0, 1, full.len() / 2, full.len() - 2] {
            std::fs::write(&path, &full[..cut]).unwrap();
            assert!(Jobs::load(&path).list().is_empty(), "cut at {cut}");
            let bad = dir.path().join("downloads.json.bad");
            assert_eq!(std::fs::read(&bad).unwrap(), &full[..cut]);
        }
        // Bad ids and duplicates are dropped, the rest kept.
        let text = String::from_utf8(full).unwrap();
        let edited = text
            .replacen(&"01".repeat(32), "zz", 1)
            .replace(&"02".repeat(32), &"03".repeat(32));
        std::fs::write(&path, edited).unwrap();
        let list = Jobs::load(&path).list();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].content_id(), Some(ContentId([3; 32])));
    }

    #[test]
    fn the_list_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("downloads.json");
        // Too large a file is not read at all.
        std::fs::write(&path, vec![b' '; MAX_LIST_BYTES as usize + 1]).unwrap();
        assert!(Jobs::load(&path).list().is_empty());
        // A list of MAX_JOBS takes no more.
        let many: Vec<Job> = (0..MAX_JOBS as u32)
            .map(|n| {
                let mut id = [0u8; 32];
                id[..4].copy_from_slice(&n.to_le_bytes());
                Job::file(ContentId(id), "q", "n", 1)
            })
            .collect();
        let list = ListFile {
            version: VERSION,
            jobs: many,
        };
        std::fs::write(&path, serde_json::to_vec(&list).unwrap()).unwrap();
        let jobs = Jobs::load(&path);
        assert_eq!(jobs.list().len(), MAX_JOBS);
        let token = CancellationToken::new();
        assert!(matches!(
            jobs.record(job(0xee, "x"), &token),
            Err(JobsError::Full)
        ));
        // A long name is cut to a bounded length.
        let long = "é".repeat(MAX_TEXT);
        let j = Job::file(ContentId([9; 32]), &long, &long, 1);
        assert!(j.name().len() <= MAX_TEXT && j.query().len() <= MAX_TEXT);
    }

    /// Cancelling a folder marks each of its files' contents cancelled
    /// (their partial files go), but not one another job still downloads.
    #[test]
    fn a_cancelled_folder_marks_each_of_its_files() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::load(&dir.path().join("downloads.json"));
        let token = CancellationToken::new();
        let file = |p: &str, n: u8| (p.to_string(), ContentId([n; 32]).to_hex(), 1);
        let record = FolderJobRecord {
            query: "holiday".into(),
            folder: "holiday".into(),
            dest: dir.path().join("downloads/holiday"),
            files: vec![file("a", 1), file("b/a", 1), file("c", 2), file("d", 3)],
            empty_dirs: Vec::new(),
            started: 0,
        };
        jobs.record_folder(record, &token).unwrap();
        jobs.record(job(3, "d"), &token).unwrap();
        assert_eq!(
            jobs.list()[0].content_ids(),
            [ContentId([1; 32]), ContentId([2; 32]), ContentId([3; 32])]
        );
        let gone = jobs.cancel_where(|j| j.matches("holiday")).unwrap();
        assert_eq!(gone.len(), 1);
        assert!(jobs.take_cancelled(&ContentId([1; 32])));
        assert!(jobs.take_cancelled(&ContentId([2; 32])));
        assert!(
            !jobs.take_cancelled(&ContentId([3; 32])),
            "still downloaded by another job"
        );
        assert_eq!(jobs.list(), [job(3, "d")]);
    }

    #[test]
    fn a_cancelled_download_is_not_recorded_and_cancel_marks_its_content() {
        let dir = tempfile::tempdir().unwrap();
        let jobs = Jobs::load(&dir.path().join("downloads.json"));
        let token = CancellationToken::new();
        jobs.record(job(1, "Movie.mkv"), &token).unwrap();
        jobs.record(job(2, "song.ogg"), &token).unwrap();
        let gone = jobs.cancel_where(|j| j.matches("movie")).unwrap();
        assert_eq!(gone, [job(1, "Movie.mkv")]);
        assert!(jobs.take_cancelled(&ContentId([1; 32])));
        assert!(!jobs.take_cancelled(&ContentId([1; 32])), "taken once");
        assert!(job(2, "song.ogg").matches(&"02".repeat(3)));
        assert!(!job(2, "song.ogg").matches("020"), "too short an id prefix");
        token.cancel();
        assert_eq!(
            jobs.record(job(3, "c"), &token).unwrap(),
            Recorded::Cancelled
        );
        assert_eq!(jobs.list(), [job(2, "song.ogg")]);
    }
}
