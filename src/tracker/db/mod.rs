//! The tracker's state in SQLite: the schema, the one writer thread that
//! runs every change, and the pool of readers that answer queries. The
//! async side only ever waits on a channel; SQLite work runs on these
//! threads, never on the runtime's workers.
//!
//! Writes queue up as jobs for the writer thread, which runs each one in a
//! savepoint and commits a batch of them at once (group commit): a failing
//! job rolls back alone, and a job's result is sent only once its commit
//! succeeded. Readers see a consistent snapshot (WAL mode) while the writer
//! works.
//!
//! This file owns the threads and the batching; [`schema`] opens the file,
//! [`nodes`] and [`files`] are the writer's jobs, [`changes`] what the
//! writer tells long-polling watchers after each commit. Queries are
//! `super::read`'s.

mod changes;
mod files;
mod nodes;
mod schema;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::Connection;
use tokio::sync::{Semaphore, mpsc, oneshot};

pub use changes::{Changes, SwarmKey, Verdict};
pub(super) use files::{category_index, category_of};
pub use nodes::{Registered, Swept};

pub use schema::OpenError;

/// Jobs waiting for the writer; senders wait when it is full.
const WRITE_QUEUE: usize = 1024;
/// Most jobs committed in one transaction.
const MAX_BATCH: usize = 128;
/// Reader connections (and blocking threads running reads).
const READERS: usize = 3;

/// Caps and timeouts the database enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_nodes: u64,
    /// Most nodes whose requests come from one address.
    pub max_nodes_per_address: u64,
    pub max_files: u64,
    pub max_files_per_node: u64,
    pub offline_after: Duration,
    pub prune_after: Duration,
}

/// Why a request failed; the server maps each kind to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A value passed the JSON types but breaks a rule (422).
    #[error("{0}")]
    Invalid(String),
    /// Missing or wrong token (401).
    #[error("{0}")]
    Unauthorized(String),
    /// The node is not registered (404): register again.
    #[error("{0}")]
    UnknownNode(String),
    /// An incremental announce against another base (409).
    #[error("{msg}")]
    Conflict {
        msg: String,
        stored: Option<[u8; 16]>,
    },
    /// Over the per-node inventory cap (413).
    #[error("{0}")]
    TooLarge(String),
    /// The tracker is full (503).
    #[error("{0}")]
    Full(String),
    /// The source address holds its quota of nodes (429).
    #[error("{0}")]
    Quota(String),
    #[error("database error: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("{0}")]
    Internal(String),
}

/// Milliseconds since the Unix epoch, the clock of every stored time.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Counters the writer keeps in memory (restored when a job rolls back).
#[derive(Clone, Copy, Debug)]
struct Mem {
    /// Last sequence number handed out.
    seq: u64,
    /// Rows in `files`.
    files: u64,
    /// Rows in `nodes`.
    nodes: u64,
    /// Highest sequence number of a node deleted from `nodes`.
    pruned_seq: u64,
}

/// The writer thread's connection and state. Only that thread touches it.
pub struct Writer {
    conn: Connection,
    limits: Limits,
    mem: Mem,
    /// Told after each commit that changed a listing.
    changes: Changes,
}

type Finish = Box<dyn FnOnce(Result<(), String>) + Send>;
type Job = Box<dyn FnOnce(&mut Writer) -> (bool, Finish) + Send>;

/// Cheap to clone; every clone talks to the same writer thread and readers.
#[derive(Clone)]
pub struct Db {
    inner: Arc<Inner>,
}

struct Inner {
    jobs: mpsc::Sender<Job>,
    readers: Mutex<Vec<Connection>>,
    read_permits: Semaphore,
    path: PathBuf,
    epoch: String,
    limits: Limits,
    changes: Changes,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A node as a writer job sees it after checking its token.
struct NodeRow {
    nid: i64,
    online: bool,
    digest: Option<[u8; 16]>,
    files: u64,
    source: String,
    /// Registered in a private swarm (no inventory).
    private: bool,
}

/// What proves a signed request: the key its signature verified with and
/// its sequence number. The handler verifies; the writer checks the key is
/// the node's and the sequence number is new.
#[derive(Clone, Copy, Debug)]
pub struct Proof {
    pub key: crate::identity::PublicKey,
    pub seq: u64,
}

/// Who a node's write comes from: its id, its token and the proof of its
/// signature.
#[derive(Clone, Debug)]
pub struct Caller {
    pub id: crate::id::NodeId,
    pub token: String,
    pub proof: Proof,
}

impl Db {
    /// Opens (creating when missing) the database at `path` and starts the
    /// writer thread. Blocking: call it before serving, or on a blocking thread.
    pub fn open(path: &Path, limits: Limits) -> Result<Db, OpenError> {
        let (conn, epoch, mem) = schema::open_writer(path)?;
        let readers = schema::open_readers(path)?;
        let (nodes, files) = (mem.nodes, mem.files);
        let changes =
            Changes::load(&conn, mem.seq, mem.pruned_seq).map_err(|source| OpenError::Setup {
                path: path.to_path_buf(),
                source,
            })?;
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let writer = Writer {
            conn,
            limits: limits.clone(),
            mem,
            changes: changes.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("tracker-db-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(OpenError::Thread)?;
        tracing::info!(path = %path.display(), %epoch, nodes, files, "tracker database open");
        Ok(Db {
            inner: Arc::new(Inner {
                jobs: tx,
                readers: Mutex::new(readers),
                read_permits: Semaphore::new(READERS),
                path: path.to_path_buf(),
                epoch,
                limits,
                changes,
                writer: Mutex::new(Some(handle)),
            }),
        })
    }

    pub fn epoch(&self) -> &str {
        &self.inner.epoch
    }

    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// What changed in the listings, for watchers.
    pub fn changes(&self) -> &Changes {
        &self.inner.changes
    }

    /// Runs `f` on the writer thread in its own savepoint; its changes are
    /// committed (with others queued at the same time) before this returns.
    pub async fn write<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Writer) -> Result<T, DbError> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |w: &mut Writer| {
            let result = f(w);
            let ok = result.is_ok();
            let finish: Finish = Box::new(move |commit: Result<(), String>| {
                let out = match (result, commit) {
                    (Ok(_), Err(e)) => Err(DbError::Internal(format!(
                        "the database could not commit: {e}"
                    ))),
                    (r, _) => r,
                };
                let _ = tx.send(out);
            });
            (ok, finish)
        });
        self.inner
            .jobs
            .send(job)
            .await
            .map_err(|_| DbError::Internal("the database writer has stopped".into()))?;
        rx.await.map_err(|_| {
            DbError::Internal(
                "the database writer dropped the request (see the tracker log)".into(),
            )
        })?
    }

    /// Runs `f` with a read-only connection on a blocking thread.
    pub async fn read<T, F>(&self, f: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, DbError> + Send + 'static,
    {
        let _permit = self
            .inner
            .read_permits
            .acquire()
            .await
            .map_err(|_| DbError::Internal("the database is closed".into()))?;
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner
                .readers
                .lock()
                .expect("reader pool lock")
                .pop()
                .ok_or_else(|| DbError::Internal("no reader connection free".into()))?;
            let out = catch_unwind(AssertUnwindSafe(|| f(&mut conn)));
            inner.readers.lock().expect("reader pool lock").push(conn);
            out.unwrap_or_else(|_| Err(DbError::Internal("a database read panicked".into())))
        })
        .await
        .map_err(|e| DbError::Internal(format!("database read task failed: {e}")))?
    }

    /// Bytes the database uses on disk (main file and write-ahead log).
    pub fn disk_bytes(&self) -> u64 {
        let mut total = 0;
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.inner.path.clone().into_os_string();
            p.push(suffix);
            total += std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
        }
        total
    }

    /// Stops the writer after the jobs already queued, checkpoints the log
    /// and waits for the thread. Call once every other clone is dropped or idle.
    pub fn close(self, wait: Duration) {
        let handle = self.inner.writer.lock().expect("writer handle lock").take();
        drop(self);
        let Some(h) = handle else { return };
        // The thread ends once every clone (every sender) is gone.
        let deadline = std::time::Instant::now() + wait;
        while !h.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if h.is_finished() {
            let _ = h.join();
        } else {
            tracing::warn!("the database writer is still busy; stopping without waiting for it");
        }
    }
}

impl Writer {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(j) => batch.push(j),
                    Err(_) => break,
                }
            }
            self.run_batch(batch);
        }
        // Every sender is gone: the tracker is stopping.
        if let Err(e) = self
            .conn
            .execute_batch("PRAGMA optimize; PRAGMA wal_checkpoint(TRUNCATE);")
        {
            tracing::warn!(error = %e, "could not checkpoint the database on close");
        }
        tracing::debug!("database writer stopped");
    }

    fn run_batch(&mut self, batch: Vec<Job>) {
        let before_batch = self.mem;
        if let Err(e) = self.conn.execute_batch("BEGIN IMMEDIATE") {
            // Dropping the jobs unblocks their requests with an error.
            tracing::error!(error = %e, jobs = batch.len(), "cannot begin a database transaction; requests fail");
            return;
        }
        let mut finishes = Vec::with_capacity(batch.len());
        for job in batch {
            let before = self.mem;
            if let Err(e) = self.conn.execute_batch("SAVEPOINT job") {
                tracing::error!(error = %e, "cannot open a savepoint; a request fails");
                continue;
            }
            match catch_unwind(AssertUnwindSafe(|| job(self))) {
                Ok((true, finish)) => {
                    let _ = self.conn.execute_batch("RELEASE job");
                    finishes.push(finish);
                }
                Ok((false, finish)) => {
                    let _ = self.conn.execute_batch("ROLLBACK TO job; RELEASE job");
                    self.mem = before;
                    finishes.push(finish);
                }
                Err(_) => {
                    tracing::error!("a database job panicked; its changes are rolled back");
                    let _ = self.conn.execute_batch("ROLLBACK TO job; RELEASE job");
                    self.mem = before;
                }
            }
        }
        let commit = self.conn.execute_batch("COMMIT").map_err(|e| e.to_string());
        if let Err(e) = &commit {
            tracing::error!(error = %e, "database commit failed; the batch is rolled back");
            let _ = self.conn.execute_batch("ROLLBACK");
            self.mem = before_batch;
        }
        let moved =
            self.mem.seq != before_batch.seq || self.mem.pruned_seq != before_batch.pruned_seq;
        if commit.is_ok() && moved {
            let (m, conn) = (self.mem, &self.conn);
            if let Err(e) = self
                .changes
                .committed(conn, before_batch.seq, m.seq, m.pruned_seq)
            {
                tracing::warn!(error = %e, "cannot tell watchers what changed; they learn it at their next poll");
            }
        }
        for f in finishes {
            f(commit.clone());
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.mem.seq += 1;
        self.mem.seq
    }

    fn set_pruned_seq(&mut self, seq: u64) -> Result<(), DbError> {
        if seq > self.mem.pruned_seq {
            self.mem.pruned_seq = seq;
            self.conn.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'pruned_seq'",
                [seq.to_string()],
            )?;
        }
        Ok(())
    }

    /// Deletes one node and everything it announced.
    fn delete_node(&mut self, nid: i64, seq: u64, files: u64) -> Result<(), DbError> {
        self.conn
            .prepare_cached("DELETE FROM files WHERE nid = ?1")?
            .execute([nid])?;
        self.conn
            .prepare_cached("DELETE FROM nodes WHERE nid = ?1")?
            .execute([nid])?;
        self.mem.files = self.mem.files.saturating_sub(files);
        self.mem.nodes = self.mem.nodes.saturating_sub(1);
        self.set_pruned_seq(seq)
    }
}
