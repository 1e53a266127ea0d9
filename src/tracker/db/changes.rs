//! What changed in the peer lists, in memory, for long-polling watchers
//! (`GET /v1/watch`): per swarm (the open swarm and each private tag), the
//! sequence number of its last listed change, and a wake-up signal sent
//! after every commit that changed a listing. The writer updates it after
//! each commit; watchers read it without touching SQLite.
//!
//! Bounded: an entry exists only for a swarm whose last change is above
//! the highest sequence number pruned so far, i.e. the current `seq` of a
//! row still in `nodes`, so there are never more entries than rows.
//! Never decides who may watch (the server's admission does that).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rusqlite::{Connection, params};
use tokio::sync::watch;

use super::DbError;

/// A swarm as the listings split them: `None` the open swarm, `Some` a
/// private swarm's tracker tag.
pub type SwarmKey = Option<[u8; 16]>;

/// Whether a poll of `/v1/peers?since=...` would find something.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Something to read: an incremental list that is not empty, or a
    /// full list (another epoch, `since` 0, too old or from the future).
    Changed,
    /// Nothing new for this swarm since `since`.
    Unchanged,
}

#[derive(Debug, Default)]
struct Log {
    /// Last sequence number handed out and committed.
    current: u64,
    /// Highest sequence number of a deleted node.
    pruned: u64,
    /// Per swarm, the sequence number of its last committed change, when
    /// above `pruned`.
    last: HashMap<SwarmKey, u64>,
}

/// Cheap to clone; the writer publishes, watchers read and wait.
#[derive(Clone)]
pub struct Changes {
    log: Arc<Mutex<Log>>,
    tick: Arc<watch::Sender<u64>>,
}

impl Changes {
    /// The state of a database just opened, read with `conn`.
    pub(super) fn load(conn: &Connection, current: u64, pruned: u64) -> rusqlite::Result<Changes> {
        let mut last = HashMap::new();
        let mut stmt = conn.prepare("SELECT swarm, max(seq) FROM nodes GROUP BY swarm")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let swarm: SwarmKey = r.get(0)?;
            let seq = r.get::<_, i64>(1)? as u64;
            if seq > pruned {
                last.insert(swarm, seq);
            }
        }
        Ok(Changes {
            log: Arc::new(Mutex::new(Log {
                current,
                pruned,
                last,
            })),
            tick: Arc::new(watch::Sender::new(current)),
        })
    }

    /// After a commit that moved the sequence from `before` to `current`:
    /// records which swarms changed (read with the writer's `conn`, after
    /// the commit) and wakes the watchers.
    pub(super) fn committed(
        &self,
        conn: &Connection,
        before: u64,
        current: u64,
        pruned: u64,
    ) -> Result<(), DbError> {
        let mut changed: Vec<(SwarmKey, u64)> = Vec::new();
        {
            let mut stmt = conn.prepare_cached(
                "SELECT swarm, max(seq) FROM nodes WHERE seq > ?1 GROUP BY swarm",
            )?;
            let mut rows = stmt.query(params![before as i64])?;
            while let Some(r) = rows.next()? {
                changed.push((r.get(0)?, r.get::<_, i64>(1)? as u64));
            }
        }
        {
            // Never held across an await: watchers only copy a number out.
            let mut log = self.log.lock().expect("change log lock");
            log.current = log.current.max(current);
            if pruned > log.pruned {
                log.pruned = pruned;
                log.last.retain(|_, seq| *seq > pruned);
            }
            for (swarm, seq) in changed {
                if seq > log.pruned {
                    let e = log.last.entry(swarm).or_insert(seq);
                    *e = (*e).max(seq);
                }
            }
        }
        self.tick.send_replace(current);
        Ok(())
    }

    /// Whether a listing of `swarm` changed after `since` (of epoch
    /// `their_epoch`, ours being `epoch`), by the rules of `/v1/peers`.
    pub fn verdict(
        &self,
        epoch: &str,
        since: u64,
        their_epoch: Option<&str>,
        swarm: SwarmKey,
    ) -> (Verdict, u64) {
        let log = self.log.lock().expect("change log lock");
        let current = log.current.max(log.pruned);
        let full =
            since == 0 || their_epoch != Some(epoch) || since < log.pruned || since > current;
        let newer = log.last.get(&swarm).is_some_and(|seq| *seq > since);
        let v = if full || newer {
            Verdict::Changed
        } else {
            Verdict::Unchanged
        };
        (v, current)
    }

    /// A receiver woken after every commit that changed a listing.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tick.subscribe()
    }

    /// Swarms with a change above the pruned mark (for tests and stats).
    pub fn tracked(&self) -> usize {
        self.log.lock().expect("change log lock").last.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "CREATE TABLE nodes (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, swarm BLOB);",
        )
        .unwrap();
        c
    }

    #[test]
    fn each_swarm_sees_only_its_own_changes() {
        let c = db();
        c.execute("INSERT INTO nodes(seq, swarm) VALUES (3, NULL)", [])
            .unwrap();
        let ch = Changes::load(&c, 3, 0).unwrap();
        let tag = Some([7u8; 16]);
        assert_eq!(ch.verdict("e", 3, Some("e"), None).0, Verdict::Unchanged);
        assert_eq!(ch.verdict("e", 2, Some("e"), None).0, Verdict::Changed);
        assert_eq!(ch.verdict("e", 3, Some("e"), tag).0, Verdict::Unchanged);
        // A private swarm's change wakes its own watchers only.
        c.execute(
            "INSERT INTO nodes(seq, swarm) VALUES (4, ?1)",
            [&[7u8; 16][..]],
        )
        .unwrap();
        let mut rx = ch.subscribe();
        ch.committed(&c, 3, 4, 0).unwrap();
        assert!(rx.has_changed().unwrap());
        assert_eq!(rx.borrow_and_update().to_owned(), 4);
        assert_eq!(ch.verdict("e", 3, Some("e"), None).0, Verdict::Unchanged);
        assert_eq!(ch.verdict("e", 3, Some("e"), tag).0, Verdict::Changed);
        assert_eq!(ch.verdict("e", 4, Some("e"), tag).0, Verdict::Unchanged);
        // Another epoch, 0, a future or a pruned `since`: a full list.
        assert_eq!(ch.verdict("e", 4, Some("x"), None).0, Verdict::Changed);
        assert_eq!(ch.verdict("e", 0, Some("e"), None).0, Verdict::Changed);
        assert_eq!(ch.verdict("e", 9, Some("e"), None).0, Verdict::Changed);
        // Pruning drops entries at or below the mark: the map stays bounded.
        c.execute("DELETE FROM nodes WHERE seq = 4", []).unwrap();
        ch.committed(&c, 4, 4, 4).unwrap();
        assert_eq!(ch.tracked(), 0);
        assert_eq!(ch.verdict("e", 4, Some("e"), tag).0, Verdict::Unchanged);
        assert_eq!(ch.verdict("e", 3, Some("e"), tag).0, Verdict::Changed);
    }
}
