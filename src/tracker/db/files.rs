//! The writer's inventory jobs: full and incremental announces, the
//! per-node and total file caps, and freeing the files of offline nodes
//! when the tracker is full. Node rows are [`super::nodes`]'s.

use std::collections::HashMap;
use std::net::IpAddr;

use rusqlite::{OptionalExtension, params};

use super::{Caller, DbError, NodeRow, Writer};
use crate::manifest::Category;
use crate::tracker::proto::{Entry, FullAnnounce, PatchAnnounce, hex16_string};

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

pub(in crate::tracker) fn category_index(c: Category) -> i64 {
    Category::ALL.iter().position(|x| *x == c).unwrap_or(6) as i64
}

pub(in crate::tracker) fn category_of(i: i64) -> Category {
    Category::ALL
        .get(i as usize)
        .copied()
        .unwrap_or(Category::Other)
}

impl Writer {
    /// The caller's row, authenticated and touched, for an announce: a
    /// private-swarm node announces no inventory (the tracker must not
    /// learn it).
    fn announcer(&mut self, caller: &Caller, source: IpAddr, now: i64) -> Result<NodeRow, DbError> {
        let mut row = self.auth(caller)?;
        if row.private {
            return Err(DbError::Invalid(format!(
                "node {} is registered with a swarm tag: a private swarm's inventory goes peer to peer, never to the tracker",
                caller.id
            )));
        }
        self.touch(&mut row, source, now)?;
        Ok(row)
    }

    /// Replaces the node's inventory. Unchanged entries are not rewritten.
    pub fn announce_full(
        &mut self,
        caller: &Caller,
        req: &FullAnnounce,
        source: IpAddr,
        now: i64,
    ) -> Result<(Option<[u8; 16]>, u32), DbError> {
        let row = self.announcer(caller, source, now)?;
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
        caller: &Caller,
        req: &PatchAnnounce,
        source: IpAddr,
        now: i64,
    ) -> Result<(Option<[u8; 16]>, u32), DbError> {
        let row = self.announcer(caller, source, now)?;
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
}
