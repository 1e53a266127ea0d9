//! The database file: its schema, its version check and the pragmas of
//! the writer's and the readers' connections. Runs once, when the tracker
//! opens its database; never touches a row after that.

use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, OptionalExtension, params};

use super::{Mem, READERS};
use crate::id;

/// Schema version stored in `meta`; a database from another version is
/// refused, except version 1, which [`migrate_v1`] brings up to date.
pub(super) const SCHEMA_VERSION: &str = "2";

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
    seq           INTEGER NOT NULL,
    -- Ed25519 public key the node's id derives from (NULL: registered
    -- before requests were signed; replaced by its first signed register).
    key           BLOB,
    -- Highest X-Lanshare-Sig sequence number accepted from this node.
    sig_seq       INTEGER NOT NULL DEFAULT 0,
    -- Tracker tag of a private swarm (NULL: the open swarm).
    swarm         BLOB
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

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(())
}

/// The writer's connection, set up and checked, with the database's epoch
/// and the counters the writer keeps in memory.
pub(super) fn open_writer(path: &Path) -> Result<(Connection, String, Mem), OpenError> {
    let conn = Connection::open(path).map_err(|source| OpenError::Open {
        path: path.to_path_buf(),
        source,
    })?;
    let setup_err = |source| OpenError::Setup {
        path: path.to_path_buf(),
        source,
    };
    set_up_writer(&conn, path).map_err(setup_err)?;
    check_version(&conn, path)?;
    let (epoch, mem) = read_state(&conn).map_err(setup_err)?;
    Ok((conn, epoch, mem))
}

/// WAL mode, pragmas and the schema (created when missing).
fn set_up_writer(conn: &Connection, path: &Path) -> rusqlite::Result<()> {
    // The first write shows whether the file is writable.
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        tracing::warn!(path = %path.display(), %mode, "the database could not switch to WAL mode");
    }
    configure(conn)?;
    conn.pragma_update(None, "cache_size", -32_768)?; // 32 MiB
    conn.pragma_update(None, "journal_size_limit", 64 << 20)?;
    conn.execute_batch(SCHEMA)
}

/// Refuses a database of another schema version; stamps a new one with
/// this version and a fresh epoch.
fn check_version(conn: &Connection, path: &Path) -> Result<(), OpenError> {
    let setup_err = |source| OpenError::Setup {
        path: path.to_path_buf(),
        source,
    };
    let version: Option<String> = conn
        .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
            r.get(0)
        })
        .optional()
        .map_err(setup_err)?;
    match version {
        Some(v) if v == "1" => migrate_v1(conn).map_err(setup_err),
        Some(v) if v != SCHEMA_VERSION => Err(OpenError::Version {
            path: path.to_path_buf(),
            found: v,
        }),
        Some(_) => Ok(()),
        None => {
            let epoch = id::to_hex(&rand::random::<[u8; 8]>());
            conn.execute(
                "INSERT INTO meta(key, value) VALUES ('schema', ?1), ('epoch', ?2), ('pruned_seq', '0')",
                params![SCHEMA_VERSION, epoch],
            )
            .map_err(setup_err)?;
            Ok(())
        }
    }
}

/// Version 1 had no keys: adds the key, the last signed sequence number
/// and the swarm tag to every node. Old rows keep working for reads; their
/// node's next (signed) register fills in its key.
fn migrate_v1(conn: &Connection) -> rusqlite::Result<()> {
    conn.execute_batch(
        "BEGIN IMMEDIATE;
         ALTER TABLE nodes ADD COLUMN key BLOB;
         ALTER TABLE nodes ADD COLUMN sig_seq INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE nodes ADD COLUMN swarm BLOB;
         UPDATE meta SET value = '2' WHERE key = 'schema';
         COMMIT;",
    )?;
    tracing::info!("tracker database upgraded to schema 2 (signed requests)");
    Ok(())
}

/// The epoch and the in-memory counters, from `meta` and `nodes`.
fn read_state(conn: &Connection) -> rusqlite::Result<(String, Mem)> {
    let meta = |key: &str| -> rusqlite::Result<String> {
        conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
    };
    let epoch = meta("epoch")?;
    let pruned_seq: u64 = meta("pruned_seq")?.parse().unwrap_or(0);
    let (max_seq, nodes, files): (i64, i64, i64) = conn.query_row(
        "SELECT coalesce(max(seq), 0), count(*), coalesce(sum(files), 0) FROM nodes",
        [],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let mem = Mem {
        seq: (max_seq as u64).max(pruned_seq),
        files: files as u64,
        nodes: nodes as u64,
        pruned_seq,
    };
    Ok((epoch, mem))
}

/// The readers' read-only connections.
pub(super) fn open_readers(path: &Path) -> Result<Vec<Connection>, OpenError> {
    let mut readers = Vec::with_capacity(READERS);
    for _ in 0..READERS {
        let r = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|source| OpenError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let set_up = configure(&r).and_then(|_| r.pragma_update(None, "cache_size", -8_192));
        set_up.map_err(|source| OpenError::Setup {
            path: path.to_path_buf(),
            source,
        })?;
        readers.push(r);
    }
    Ok(readers)
}
