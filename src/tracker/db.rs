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

use std::collections::HashMap;
use std::net::IpAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::proto::{Entry, FullAnnounce, PatchAnnounce, RegisterRequest, hex16_string};
use crate::id::{self, NodeId};
use crate::manifest::Category;

/// Schema version stored in `meta`; a database from another version is refused.
const SCHEMA_VERSION: &str = "1";
/// Jobs waiting for the writer; senders wait when it is full.
const WRITE_QUEUE: usize = 1024;
/// Most jobs committed in one transaction.
const MAX_BATCH: usize = 128;
/// Reader connections (and blocking threads running reads).
const READERS: usize = 3;

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS nodes (
    nid           INTEGER PRIMARY KEY,
    id            BLOB NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    port          INTEGER NOT NULL,
    addrs         TEXT NOT NULL,
    source        TEXT NOT NULL,
    token_hash    BLOB,
    digest        BLOB,
    files         INTEGER NOT NULL DEFAULT 0,
    registered_ms INTEGER NOT NULL,
    last_seen_ms  INTEGER NOT NULL,
    online        INTEGER NOT NULL,
    seq           INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS nodes_seq ON nodes(seq);
CREATE INDEX IF NOT EXISTS nodes_online_seen ON nodes(online, last_seen_ms);
CREATE INDEX IF NOT EXISTS nodes_source ON nodes(source);
-- Nodes that never heartbeated nor announced since they registered: any
-- authenticated request moves last_seen_ms past registered_ms.
CREATE INDEX IF NOT EXISTS nodes_unproven ON nodes(registered_ms)
    WHERE digest IS NULL AND last_seen_ms <= registered_ms;

CREATE TABLE IF NOT EXISTS files (
    fid       INTEGER PRIMARY KEY,
    nid       INTEGER NOT NULL REFERENCES nodes(nid) ON DELETE CASCADE,
    content   BLOB NOT NULL,
    name      TEXT NOT NULL,
    name_fold TEXT NOT NULL,
    size      INTEGER NOT NULL,
    category  INTEGER NOT NULL,
    comment   TEXT NOT NULL,
    have      INTEGER NOT NULL,
    total     INTEGER NOT NULL,
    UNIQUE (nid, content)
);
CREATE INDEX IF NOT EXISTS files_content ON files(content);
CREATE INDEX IF NOT EXISTS files_category ON files(category);

CREATE VIRTUAL TABLE IF NOT EXISTS files_fts USING fts5(
    name_fold, content = 'files', content_rowid = 'fid',
    tokenize = 'trigram', detail = 'none', columnsize = 0
);
CREATE TRIGGER IF NOT EXISTS files_ai AFTER INSERT ON files BEGIN
    INSERT INTO files_fts(rowid, name_fold) VALUES (new.fid, new.name_fold);
END;
CREATE TRIGGER IF NOT EXISTS files_ad AFTER DELETE ON files BEGIN
    INSERT INTO files_fts(files_fts, rowid, name_fold) VALUES ('delete', old.fid, old.name_fold);
END;
CREATE TRIGGER IF NOT EXISTS files_au AFTER UPDATE OF name_fold ON files BEGIN
    INSERT INTO files_fts(files_fts, rowid, name_fold) VALUES ('delete', old.fid, old.name_fold);
    INSERT INTO files_fts(rowid, name_fold) VALUES (new.fid, new.name_fold);
END;
"#;

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

/// Errors opening the database, with what to do about them.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(
        "cannot open the database {path}: {source} (is its directory there and writable? choose another file with --db)"
    )]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "cannot set up the database {path}: {source} (is it a lanshare tracker database? is the disk full?)"
    )]
    Setup {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error(
        "{path} holds schema version {found}, this tracker uses {SCHEMA_VERSION}; use another --db file"
    )]
    Version { path: PathBuf, found: String },
    #[error("cannot start the database thread: {0}")]
    Thread(std::io::Error),
}

pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn hash_token(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
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
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A node chosen to be forgotten.
struct Victim {
    nid: i64,
    seq: u64,
    files: u64,
    id: Vec<u8>,
}

fn victim_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Victim> {
    Ok(Victim {
        nid: r.get(0)?,
        seq: r.get::<_, i64>(1)? as u64,
        files: r.get::<_, i64>(2)? as u64,
        id: r.get(3)?,
    })
}

/// A node as a writer job sees it after checking its token.
struct NodeRow {
    nid: i64,
    online: bool,
    digest: Option<[u8; 16]>,
    files: u64,
    source: String,
}

/// What `register` hands back to the handler.
pub struct Registered {
    pub token: String,
    pub stored_digest: Option<[u8; 16]>,
    pub created: bool,
}

/// The stored form of an entry, to compare with an announced one.
#[derive(PartialEq)]
struct Stored {
    name: String,
    size: i64,
    category: i64,
    comment: String,
    have: i64,
    total: i64,
}

impl Stored {
    fn of(e: &Entry) -> Stored {
        Stored {
            name: e.name.clone(),
            size: e.size as i64,
            category: category_index(e.category()),
            comment: e.comment.clone(),
            have: e.have() as i64,
            total: e.total() as i64,
        }
    }
}

pub(super) fn category_index(c: Category) -> i64 {
    Category::ALL.iter().position(|x| *x == c).unwrap_or(6) as i64
}

pub(super) fn category_of(i: i64) -> Category {
    Category::ALL
        .get(i as usize)
        .copied()
        .unwrap_or(Category::Other)
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

impl Db {
    /// Opens (creating when missing) the database at `path` and starts the
    /// writer thread. Blocking: call it before serving, or on a blocking thread.
    pub fn open(path: &Path, limits: Limits) -> Result<Db, OpenError> {
        let open_err = |source| OpenError::Open {
            path: path.to_path_buf(),
            source,
        };
        let setup_err = |source| OpenError::Setup {
            path: path.to_path_buf(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        // The first write shows whether the file is writable.
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(setup_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            tracing::warn!(path = %path.display(), %mode, "the database could not switch to WAL mode");
        }
        configure(&conn).map_err(setup_err)?;
        conn.pragma_update(None, "cache_size", -32_768) // 32 MiB
            .map_err(setup_err)?;
        conn.pragma_update(None, "journal_size_limit", 64 << 20)
            .map_err(setup_err)?;
        conn.execute_batch(SCHEMA).map_err(setup_err)?;
        let version: Option<String> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .optional()
            .map_err(setup_err)?;
        match version {
            Some(v) if v != SCHEMA_VERSION => {
                return Err(OpenError::Version {
                    path: path.to_path_buf(),
                    found: v,
                });
            }
            Some(_) => {}
            None => {
                let epoch = id::to_hex(&rand::random::<[u8; 8]>());
                conn.execute(
                    "INSERT INTO meta(key, value) VALUES ('schema', ?1), ('epoch', ?2), ('pruned_seq', '0')",
                    params![SCHEMA_VERSION, epoch],
                )
                .map_err(setup_err)?;
            }
        }
        let meta = |key: &str| -> rusqlite::Result<String> {
            conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        };
        let epoch = meta("epoch").map_err(setup_err)?;
        let pruned_seq: u64 = meta("pruned_seq").map_err(setup_err)?.parse().unwrap_or(0);
        let (max_seq, nodes, files): (i64, i64, i64) = conn
            .query_row(
                "SELECT coalesce(max(seq), 0), count(*), coalesce(sum(files), 0) FROM nodes",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .map_err(setup_err)?;
        let mem = Mem {
            seq: (max_seq as u64).max(pruned_seq),
            files: files as u64,
            nodes: nodes as u64,
            pruned_seq,
        };
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(open_err)?;
            configure(&r).map_err(setup_err)?;
            r.pragma_update(None, "cache_size", -8_192)
                .map_err(setup_err)?;
            readers.push(r);
        }
        let (tx, rx) = mpsc::channel(WRITE_QUEUE);
        let writer = Writer {
            conn,
            limits: limits.clone(),
            mem,
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

    /// Registers (or re-registers) a node; a fresh token replaces any old one.
    pub fn register(
        &mut self,
        req: &RegisterRequest,
        source: IpAddr,
        now: i64,
    ) -> Result<Registered, DbError> {
        let existing: Option<(i64, Option<Vec<u8>>)> = self
            .conn
            .prepare_cached("SELECT nid, digest FROM nodes WHERE id = ?1")?
            .query_row([&req.id.0[..]], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        let token = id::to_hex(&rand::random::<[u8; 32]>());
        let hash = hash_token(&token);
        let addrs = serde_json::to_string(&req.addrs).expect("addresses serialize");
        let seq = self.next_seq();
        match existing {
            Some((nid, digest)) => {
                self.conn
                    .prepare_cached(
                        "UPDATE nodes SET name = ?2, port = ?3, addrs = ?4, source = ?5, token_hash = ?6,
                         last_seen_ms = ?7, online = 1, seq = ?8 WHERE nid = ?1",
                    )?
                    .execute(params![
                        nid,
                        req.name,
                        req.port,
                        addrs,
                        source.to_string(),
                        &hash[..],
                        now,
                        seq as i64
                    ])?;
                Ok(Registered {
                    token,
                    stored_digest: digest.and_then(|d| d.try_into().ok()),
                    created: false,
                })
            }
            None => {
                self.check_quota(source)?;
                if self.mem.nodes >= self.limits.max_nodes {
                    self.make_room()?;
                }
                self.conn
                    .prepare_cached(
                        "INSERT INTO nodes(id, name, port, addrs, source, token_hash, digest, files,
                         registered_ms, last_seen_ms, online, seq)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, 0, ?7, ?7, 1, ?8)",
                    )?
                    .execute(params![
                        &req.id.0[..],
                        req.name,
                        req.port,
                        addrs,
                        source.to_string(),
                        &hash[..],
                        now,
                        seq as i64
                    ])?;
                self.mem.nodes += 1;
                Ok(Registered {
                    token,
                    stored_digest: None,
                    created: true,
                })
            }
        }
    }

    /// Lets `source` register one more node: at its quota, the node from
    /// there offline the longest is forgotten; if all of them are online,
    /// the registration is refused.
    fn check_quota(&mut self, source: IpAddr) -> Result<(), DbError> {
        let src = source.to_string();
        let held: i64 = self
            .conn
            .prepare_cached("SELECT count(*) FROM nodes WHERE source = ?1")?
            .query_row([&src], |r| r.get(0))?;
        if (held as u64) < self.limits.max_nodes_per_address {
            return Ok(());
        }
        let victim = self
            .conn
            .prepare_cached(
                "SELECT nid, seq, files, id FROM nodes WHERE source = ?1 AND online = 0 ORDER BY last_seen_ms LIMIT 1",
            )?
            .query_row([&src], victim_row)
            .optional()?;
        match victim {
            Some(v) => {
                tracing::info!(node = %id::to_hex(&v.id), %source, "address at its node quota; forgetting its node offline the longest");
                self.delete_node(v.nid, v.seq, v.files)
            }
            None => Err(DbError::Quota(format!(
                "{held} nodes registered from {source} are online, the most this tracker accepts from one address; stop some, or start the tracker with a larger --max-nodes-per-address"
            ))),
        }
    }

    /// Makes room for one node: forgets the oldest node that never
    /// heartbeated nor announced since it registered, else the one offline
    /// the longest; refuses only when every node is online and has done so.
    fn make_room(&mut self) -> Result<(), DbError> {
        let unproven = self
            .conn
            .prepare_cached(
                "SELECT nid, seq, files, id FROM nodes WHERE digest IS NULL AND last_seen_ms <= registered_ms ORDER BY registered_ms LIMIT 1",
            )?
            .query_row([], victim_row)
            .optional()?;
        if let Some(v) = unproven {
            tracing::info!(node = %id::to_hex(&v.id), "node table full; forgetting a node that never heartbeated nor announced");
            return self.delete_node(v.nid, v.seq, v.files);
        }
        let offline = self
            .conn
            .prepare_cached(
                "SELECT nid, seq, files, id FROM nodes WHERE online = 0 ORDER BY last_seen_ms LIMIT 1",
            )?
            .query_row([], victim_row)
            .optional()?;
        match offline {
            Some(v) => {
                tracing::info!(node = %id::to_hex(&v.id), "node table full; forgetting the node offline the longest");
                self.delete_node(v.nid, v.seq, v.files)
            }
            None => Err(DbError::Full(format!(
                "the tracker holds its cap of {} nodes and every one is online and active; try again later, or start the tracker with a larger --max-nodes",
                self.limits.max_nodes
            ))),
        }
    }

    /// Checks a node's token; every write of a node starts here.
    fn auth(&mut self, id: NodeId, token: &str) -> Result<NodeRow, DbError> {
        /// A `nodes` row with its token hash.
        struct Found {
            row: NodeRow,
            hash: Option<Vec<u8>>,
        }
        let found: Option<Found> = self
            .conn
            .prepare_cached(
                "SELECT nid, token_hash, online, digest, files, source FROM nodes WHERE id = ?1",
            )?
            .query_row([&id.0[..]], |r| {
                Ok(Found {
                    row: NodeRow {
                        nid: r.get(0)?,
                        online: r.get(2)?,
                        digest: r
                            .get::<_, Option<Vec<u8>>>(3)?
                            .and_then(|d| d.try_into().ok()),
                        files: r.get::<_, i64>(4)? as u64,
                        source: r.get(5)?,
                    },
                    hash: r.get(1)?,
                })
            })
            .optional()?;
        let Some(Found { row, hash }) = found else {
            return Err(DbError::UnknownNode(format!(
                "node {id} is not registered with this tracker; register it again (POST /v1/nodes)"
            )));
        };
        let Some(hash) = hash else {
            return Err(DbError::UnknownNode(format!(
                "node {id} has deregistered; register it again (POST /v1/nodes)"
            )));
        };
        if hash[..] != hash_token(token)[..] {
            return Err(DbError::Unauthorized(format!(
                "the token does not match node {id}'s registration (a newer registration replaced it?); register again"
            )));
        }
        Ok(row)
    }

    /// Records that the node was heard from: online, last seen now (and
    /// always after its registration, which marks it as active).
    fn touch(&mut self, row: &mut NodeRow, source: IpAddr, now: i64) -> Result<(), DbError> {
        let source = source.to_string();
        if !row.online || row.source != source {
            let seq = self.next_seq();
            self.conn
                .prepare_cached(
                    "UPDATE nodes SET last_seen_ms = max(?2, registered_ms + 1), source = ?3, online = 1, seq = ?4 WHERE nid = ?1",
                )?
                .execute(params![row.nid, now, source, seq as i64])?;
            row.online = true;
            row.source = source;
        } else {
            self.conn
                .prepare_cached(
                    "UPDATE nodes SET last_seen_ms = max(?2, registered_ms + 1) WHERE nid = ?1",
                )?
                .execute(params![row.nid, now])?;
        }
        Ok(())
    }

    /// A heartbeat: returns whether the node must send its inventory.
    pub fn heartbeat(
        &mut self,
        id: NodeId,
        token: &str,
        digest: [u8; 16],
        addrs: Option<&[IpAddr]>,
        source: IpAddr,
        now: i64,
    ) -> Result<bool, DbError> {
        let mut row = self.auth(id, token)?;
        self.touch(&mut row, source, now)?;
        if let Some(addrs) = addrs {
            let json = serde_json::to_string(addrs).expect("addresses serialize");
            let changed = self
                .conn
                .prepare_cached("SELECT addrs != ?2 FROM nodes WHERE nid = ?1")?
                .query_row(params![row.nid, json], |r| r.get::<_, bool>(0))?;
            if changed {
                let seq = self.next_seq();
                self.conn
                    .prepare_cached("UPDATE nodes SET addrs = ?2, seq = ?3 WHERE nid = ?1")?
                    .execute(params![row.nid, json, seq as i64])?;
            }
        }
        Ok(row.digest != Some(digest))
    }

    /// Deregisters: the node goes offline at once, its inventory is
    /// dropped and its token stops working.
    pub fn deregister(&mut self, id: NodeId, token: &str) -> Result<(), DbError> {
        let row = self.auth(id, token)?;
        self.conn
            .prepare_cached("DELETE FROM files WHERE nid = ?1")?
            .execute([row.nid])?;
        let seq = self.next_seq();
        self.conn
            .prepare_cached(
                "UPDATE nodes SET online = 0, token_hash = NULL, digest = NULL, files = 0, seq = ?2 WHERE nid = ?1",
            )?
            .execute(params![row.nid, seq as i64])?;
        self.mem.files = self.mem.files.saturating_sub(row.files);
        Ok(())
    }

    /// Replaces the node's inventory. Unchanged entries are not rewritten.
    pub fn announce_full(
        &mut self,
        id: NodeId,
        token: &str,
        req: &FullAnnounce,
        source: IpAddr,
        now: i64,
    ) -> Result<(Option<[u8; 16]>, u32), DbError> {
        let mut row = self.auth(id, token)?;
        self.touch(&mut row, source, now)?;
        let mut existing: HashMap<[u8; 32], (i64, Stored)> = HashMap::new();
        {
            let mut stmt = self.conn.prepare_cached(
                "SELECT fid, content, name, size, category, comment, have, total FROM files WHERE nid = ?1",
            )?;
            let rows = stmt.query_map([row.nid], |r| {
                Ok((
                    r.get::<_, [u8; 32]>(1)?,
                    (
                        r.get::<_, i64>(0)?,
                        Stored {
                            name: r.get(2)?,
                            size: r.get(3)?,
                            category: r.get(4)?,
                            comment: r.get(5)?,
                            have: r.get(6)?,
                            total: r.get(7)?,
                        },
                    ),
                ))
            })?;
            for r in rows {
                let (k, v) = r?;
                existing.insert(k, v);
            }
        }
        for e in &req.entries {
            match existing.remove(&e.id.0) {
                Some((fid, old)) => self.update_entry(fid, &old, e)?,
                None => self.insert_entry(row.nid, e)?,
            }
        }
        {
            let mut del = self
                .conn
                .prepare_cached("DELETE FROM files WHERE fid = ?1")?;
            for (fid, _) in existing.values() {
                del.execute([fid])?;
            }
        }
        let count = req.entries.len() as u64;
        let digest = if req.more { None } else { req.digest };
        self.finish_announce(&row, count, digest)?;
        Ok((digest, count as u32))
    }

    /// Applies an incremental announce against the stored digest.
    pub fn announce_patch(
        &mut self,
        id: NodeId,
        token: &str,
        req: &PatchAnnounce,
        source: IpAddr,
        now: i64,
    ) -> Result<(Option<[u8; 16]>, u32), DbError> {
        let mut row = self.auth(id, token)?;
        self.touch(&mut row, source, now)?;
        if row.digest != req.base {
            return Err(DbError::Conflict {
                msg: format!(
                    "the change is against inventory {} but the tracker holds {}; send the full inventory (PUT)",
                    req.base
                        .map(|d| hex16_string(&d))
                        .as_deref()
                        .unwrap_or("null"),
                    row.digest
                        .map(|d| hex16_string(&d))
                        .as_deref()
                        .unwrap_or("null"),
                ),
                stored: row.digest,
            });
        }
        let mut count = row.files as i64;
        {
            let mut del = self
                .conn
                .prepare_cached("DELETE FROM files WHERE nid = ?1 AND content = ?2")?;
            for c in &req.remove {
                count -= del.execute(params![row.nid, &c.0[..]])? as i64;
            }
        }
        for e in &req.upsert {
            let old: Option<(i64, Stored)> = self
                .conn
                .prepare_cached(
                    "SELECT fid, name, size, category, comment, have, total FROM files WHERE nid = ?1 AND content = ?2",
                )?
                .query_row(params![row.nid, &e.id.0[..]], |r| {
                    Ok((
                        r.get(0)?,
                        Stored {
                            name: r.get(1)?,
                            size: r.get(2)?,
                            category: r.get(3)?,
                            comment: r.get(4)?,
                            have: r.get(5)?,
                            total: r.get(6)?,
                        },
                    ))
                })
                .optional()?;
            match old {
                Some((fid, old)) => self.update_entry(fid, &old, e)?,
                None => {
                    self.insert_entry(row.nid, e)?;
                    count += 1;
                }
            }
        }
        let digest = if req.more { None } else { req.digest };
        self.finish_announce(&row, count.max(0) as u64, digest)?;
        Ok((digest, count.max(0) as u32))
    }

    fn insert_entry(&mut self, nid: i64, e: &Entry) -> Result<(), DbError> {
        let s = Stored::of(e);
        self.conn
            .prepare_cached(
                "INSERT INTO files(nid, content, name, name_fold, size, category, comment, have, total)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )?
            .execute(params![
                nid,
                &e.id.0[..],
                s.name,
                s.name.to_lowercase(),
                s.size,
                s.category,
                s.comment,
                s.have,
                s.total
            ])?;
        Ok(())
    }

    fn update_entry(&mut self, fid: i64, old: &Stored, e: &Entry) -> Result<(), DbError> {
        let s = Stored::of(e);
        if s == *old {
            return Ok(());
        }
        if s.name != old.name {
            self.conn
                .prepare_cached(
                    "UPDATE files SET name = ?2, name_fold = ?3, size = ?4, category = ?5, comment = ?6,
                     have = ?7, total = ?8 WHERE fid = ?1",
                )?
                .execute(params![
                    fid,
                    s.name,
                    s.name.to_lowercase(),
                    s.size,
                    s.category,
                    s.comment,
                    s.have,
                    s.total
                ])?;
        } else {
            // Leaves name_fold alone, so the search index is not touched.
            self.conn
                .prepare_cached(
                    "UPDATE files SET size = ?2, category = ?3, comment = ?4, have = ?5, total = ?6 WHERE fid = ?1",
                )?
                .execute(params![fid, s.size, s.category, s.comment, s.have, s.total])?;
        }
        Ok(())
    }

    /// Checks the caps on the new count, then stores the digest and count.
    fn finish_announce(
        &mut self,
        row: &NodeRow,
        count: u64,
        digest: Option<[u8; 16]>,
    ) -> Result<(), DbError> {
        if count > self.limits.max_files_per_node {
            return Err(DbError::TooLarge(format!(
                "this inventory would hold {count} entries; the tracker stores at most {} per node",
                self.limits.max_files_per_node
            )));
        }
        self.mem.files = self.mem.files.saturating_sub(row.files) + count;
        if self.mem.files > self.limits.max_files {
            let need = self.mem.files - self.limits.max_files;
            self.free_offline_files(need, row.nid)?;
            if self.mem.files > self.limits.max_files {
                return Err(DbError::Full(format!(
                    "the tracker holds its cap of {} files and no offline node's files are left to drop; try again later, or start the tracker with a larger --max-files",
                    self.limits.max_files
                )));
            }
        }
        if row.digest != digest || row.files != count {
            let seq = self.next_seq();
            self.conn
                .prepare_cached(
                    "UPDATE nodes SET digest = ?2, files = ?3, seq = ?4 WHERE nid = ?1",
                )?
                .execute(params![
                    row.nid,
                    digest.as_ref().map(|d| &d[..]),
                    count as i64,
                    seq as i64
                ])?;
        }
        Ok(())
    }

    /// Drops the inventories of offline nodes, longest offline first, until
    /// `need` files are freed (or none is left).
    fn free_offline_files(&mut self, need: u64, except: i64) -> Result<(), DbError> {
        let victims: Vec<(i64, i64)> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT nid, files FROM nodes WHERE online = 0 AND files > 0 AND nid != ?1 ORDER BY last_seen_ms",
            )?;
            stmt.query_map([except], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?
        };
        let mut freed = 0u64;
        for (nid, files) in victims {
            if freed >= need {
                break;
            }
            self.conn
                .prepare_cached("DELETE FROM files WHERE nid = ?1")?
                .execute([nid])?;
            self.conn
                .prepare_cached("UPDATE nodes SET files = 0, digest = NULL WHERE nid = ?1")?
                .execute([nid])?;
            freed += files as u64;
            self.mem.files = self.mem.files.saturating_sub(files as u64);
        }
        if freed > 0 {
            tracing::info!(
                freed,
                "file table full; dropped the inventories of nodes offline the longest"
            );
        }
        Ok(())
    }

    /// Marks silent nodes offline and prunes those offline for too long.
    /// Returns (marked offline, pruned).
    pub fn sweep(&mut self, now: i64) -> Result<(usize, usize), DbError> {
        let offline_before = now - self.limits.offline_after.as_millis() as i64;
        let silent: Vec<i64> = {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT nid FROM nodes WHERE online = 1 AND last_seen_ms < ?1")?;
            stmt.query_map([offline_before], |r| r.get(0))?
                .collect::<Result<_, _>>()?
        };
        for nid in &silent {
            let seq = self.next_seq();
            self.conn
                .prepare_cached("UPDATE nodes SET online = 0, seq = ?2 WHERE nid = ?1")?
                .execute(params![nid, seq as i64])?;
        }
        let prune_before = now - self.limits.prune_after.as_millis() as i64;
        let stale: Vec<(i64, i64, i64)> = {
            let mut stmt = self.conn.prepare_cached(
                "SELECT nid, seq, files FROM nodes WHERE online = 0 AND last_seen_ms < ?1 LIMIT 1000",
            )?;
            stmt.query_map([prune_before], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                .collect::<Result<_, _>>()?
        };
        for (nid, seq, files) in &stale {
            self.delete_node(*nid, *seq as u64, *files as u64)?;
        }
        Ok((silent.len(), stale.len()))
    }
}
