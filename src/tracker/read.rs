//! The tracker's read queries (peer lists, search, counts), run on one of
//! the reader connections of [`super::db::Db::read`]. Each runs in its own
//! read transaction, so it sees one consistent snapshot while the writer
//! goes on.

use std::net::IpAddr;
use std::time::{Duration, UNIX_EPOCH};

use rusqlite::{Connection, OptionalExtension, params};

use super::db::{DbError, category_index, category_of, now_ms};
use super::proto::{ContentHit, Holder, MAX_HOLDERS_SHOWN, PeerInfo, PeersResponse};
use crate::id::{ContentId, NodeId};
use crate::identity::PublicKey;
use crate::manifest::Category;

fn parse_addrs(json: &str) -> Vec<IpAddr> {
    serde_json::from_str(json).unwrap_or_default()
}

/// The source address first, then the reported ones.
fn merged_addrs(source: &str, reported: &str) -> (IpAddr, Vec<IpAddr>) {
    let source: IpAddr = source.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let mut addrs = vec![source];
    for a in parse_addrs(reported) {
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    (source, addrs)
}

fn rfc3339(ms: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The key stored for node `id`: `None` if the tracker does not know it,
/// `Some(None)` if its row predates signed requests.
pub fn node_key(conn: &mut Connection, id: NodeId) -> Result<Option<Option<PublicKey>>, DbError> {
    Ok(conn
        .prepare_cached("SELECT key FROM nodes WHERE id = ?1")?
        .query_row([&id.0[..]], |r| {
            Ok(r.get::<_, Option<[u8; 32]>>(0)?.map(PublicKey))
        })
        .optional()?)
}

/// Online peers of swarm `swarm` (`None`: the open swarm) changed after
/// `since`, and the ids of those that left.
pub fn peers(
    conn: &mut Connection,
    epoch: &str,
    since: u64,
    their_epoch: Option<&str>,
    limit: u32,
    swarm: Option<[u8; 16]>,
) -> Result<PeersResponse, DbError> {
    let tx = conn.transaction()?;
    let pruned: u64 = tx
        .query_row("SELECT value FROM meta WHERE key = 'pruned_seq'", [], |r| {
            r.get::<_, String>(0)
        })?
        .parse()
        .unwrap_or(0);
    let max_seq: i64 = tx.query_row("SELECT coalesce(max(seq), 0) FROM nodes", [], |r| r.get(0))?;
    let current = (max_seq as u64).max(pruned);
    let full = since == 0 || their_epoch != Some(epoch) || since < pruned || since > current;
    let from = if full { 0 } else { since };
    let now = now_ms();
    let mut peers = Vec::new();
    let mut gone = Vec::new();
    let mut last = from;
    let mut rows_seen = 0u32;
    let mut more = false;
    {
        let mut stmt = tx.prepare_cached(
            "SELECT id, name, port, addrs, source, digest, files, last_seen_ms, online, seq
             FROM nodes WHERE seq > ?1 AND (online = 1 OR ?2) AND swarm IS ?4 ORDER BY seq LIMIT ?3",
        )?;
        let swarm = swarm.as_ref().map(|t| &t[..]);
        let mut rows = stmt.query(params![from as i64, !full, limit as i64 + 1, swarm])?;
        while let Some(r) = rows.next()? {
            if rows_seen == limit {
                more = true;
                break;
            }
            rows_seen += 1;
            let id_bytes: [u8; 16] = r.get(0)?;
            let seq: i64 = r.get(9)?;
            last = seq as u64;
            if !r.get::<_, bool>(8)? {
                gone.push(NodeId(id_bytes));
                continue;
            }
            let (source, addrs) = merged_addrs(&r.get::<_, String>(4)?, &r.get::<_, String>(3)?);
            let last_seen: i64 = r.get(7)?;
            let digest: Option<[u8; 16]> = r.get(5)?;
            peers.push(PeerInfo {
                id: NodeId(id_bytes),
                name: r.get(1)?,
                addrs,
                source,
                port: r.get(2)?,
                digest,
                files: r.get::<_, i64>(6)? as u32,
                last_seen: rfc3339(last_seen),
                last_seen_secs: (now - last_seen).max(0) as f64 / 1000.0,
            });
        }
    }
    Ok(PeersResponse {
        epoch: epoch.to_string(),
        seq: if more { last } else { current },
        full,
        more,
        peers,
        gone,
    })
}

/// Escapes nothing: `%` and `_` in the query widen the index lookup,
/// and the exact `instr` test that follows narrows it again.
fn like_pattern(q: &str) -> String {
    format!("%{q}%")
}

/// Contents whose name contains `q` (case-insensitive) and/or of
/// `category`, held by an online node, with their online holders.
pub fn search(
    conn: &mut Connection,
    q: Option<&str>,
    category: Option<Category>,
    limit: u32,
) -> Result<(Vec<ContentHit>, bool), DbError> {
    let tx = conn.transaction()?;
    let q = q.map(str::to_lowercase).filter(|q| !q.is_empty());
    let cat = category.map(category_index);
    let mut ids: Vec<[u8; 32]> = Vec::new();
    {
        let lim = limit as i64 + 1;
        let mut stmt;
        let mut rows = match &q {
            // Long enough for the trigram index.
            Some(q) if q.chars().count() >= 3 => {
                stmt = tx.prepare_cached(
                    "SELECT DISTINCT f.content FROM files_fts
                     JOIN files f ON f.fid = files_fts.rowid
                     JOIN nodes n ON n.nid = f.nid
                     WHERE files_fts.name_fold LIKE ?1 AND instr(f.name_fold, ?2) > 0
                       AND n.online = 1 AND (?3 IS NULL OR f.category = ?3)
                     LIMIT ?4",
                )?;
                stmt.query(params![like_pattern(q), q, cat, lim])?
            }
            Some(q) => {
                stmt = tx.prepare_cached(
                    "SELECT DISTINCT f.content FROM files f JOIN nodes n ON n.nid = f.nid
                     WHERE instr(f.name_fold, ?1) > 0 AND n.online = 1
                       AND (?2 IS NULL OR f.category = ?2)
                     LIMIT ?3",
                )?;
                stmt.query(params![q, cat, lim])?
            }
            None => match cat {
                Some(cat) => {
                    stmt = tx.prepare_cached(
                        "SELECT DISTINCT f.content FROM files f INDEXED BY files_category
                         JOIN nodes n ON n.nid = f.nid
                         WHERE f.category = ?1 AND n.online = 1 LIMIT ?2",
                    )?;
                    stmt.query(params![cat, lim])?
                }
                None => {
                    stmt = tx.prepare_cached(
                        "SELECT DISTINCT f.content FROM files f JOIN nodes n ON n.nid = f.nid
                         WHERE n.online = 1 LIMIT ?1",
                    )?;
                    stmt.query(params![lim])?
                }
            },
        };
        while let Some(r) = rows.next()? {
            ids.push(r.get(0)?);
        }
    }
    let truncated = ids.len() > limit as usize;
    ids.truncate(limit as usize);
    let mut hits = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(hit) = content_hit(&tx, id, q.as_deref())? {
            hits.push(hit);
        }
    }
    hits.sort_by(|a, b| {
        a.name
            .to_lowercase()
            .cmp(&b.name.to_lowercase())
            .then(a.id.cmp(&b.id))
    });
    Ok((hits, truncated))
}

fn content_hit(
    tx: &rusqlite::Transaction<'_>,
    id: [u8; 32],
    q: Option<&str>,
) -> Result<Option<ContentHit>, DbError> {
    let mut stmt = tx.prepare_cached(
        "SELECT f.name, f.size, f.category, f.comment, f.have, f.total,
                n.id, n.name, n.addrs, n.source, n.port
         FROM files f JOIN nodes n ON n.nid = f.nid
         WHERE f.content = ?1 AND n.online = 1 LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![&id[..], MAX_HOLDERS_SHOWN as i64 + 1])?;
    let mut names: Vec<String> = Vec::new();
    let mut holders = Vec::new();
    let (mut size, mut category, mut comment) = (0u64, Category::Other, String::new());
    while let Some(r) = rows.next()? {
        let name: String = r.get(0)?;
        if holders.is_empty() {
            size = r.get::<_, i64>(1)? as u64;
            category = category_of(r.get(2)?);
        }
        let c: String = r.get(3)?;
        if comment.is_empty() && !c.is_empty() {
            comment = c;
        }
        if names.len() < 16 && !names.contains(&name) {
            names.push(name);
        }
        if holders.len() < MAX_HOLDERS_SHOWN {
            let (_, addrs) = merged_addrs(&r.get::<_, String>(9)?, &r.get::<_, String>(8)?);
            holders.push(Holder {
                id: NodeId(r.get(6)?),
                name: r.get(7)?,
                addrs,
                port: r.get(10)?,
                have: r.get::<_, i64>(4)? as u32,
                total: r.get::<_, i64>(5)? as u32,
            });
        } else {
            break;
        }
    }
    if holders.is_empty() {
        return Ok(None);
    }
    let (total, complete) = if holders.len() < MAX_HOLDERS_SHOWN {
        let complete = holders.iter().filter(|h| h.have >= h.total).count() as u32;
        (holders.len() as u32, complete)
    } else {
        tx.prepare_cached(
            "SELECT count(*), coalesce(sum(f.have >= f.total), 0) FROM files f JOIN nodes n ON n.nid = f.nid
             WHERE f.content = ?1 AND n.online = 1",
        )?
        .query_row([&id[..]], |r| {
            Ok((r.get::<_, i64>(0)? as u32, r.get::<_, i64>(1)? as u32))
        })?
    };
    holders.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
    names.sort();
    let name = q
        .and_then(|q| names.iter().find(|n| n.to_lowercase().contains(q)))
        .unwrap_or(&names[0])
        .clone();
    Ok(Some(ContentHit {
        id: ContentId(id),
        name,
        names,
        size,
        category,
        comment,
        complete,
        partial: total - complete,
        holders_total: total,
        holders,
    }))
}

/// (nodes online, nodes offline, files, files of online nodes).
pub fn counts(conn: &mut Connection) -> Result<(u64, u64, u64, u64), DbError> {
    Ok(conn.query_row(
        "SELECT coalesce(sum(online), 0), coalesce(sum(1 - online), 0), coalesce(sum(files), 0),
                coalesce(sum(CASE WHEN online = 1 THEN files ELSE 0 END), 0)
         FROM nodes",
        [],
        |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u64,
                r.get::<_, i64>(2)? as u64,
                r.get::<_, i64>(3)? as u64,
            ))
        },
    )?)
}
