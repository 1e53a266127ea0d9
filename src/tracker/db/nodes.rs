//! The writer's node jobs: register (with the per-address quota and room
//! made when full), authenticate, heartbeat, deregister and the sweep that
//! marks silent nodes offline and prunes old ones. Inventories are
//! [`super::files`]'s.

use std::net::IpAddr;

use rusqlite::{OptionalExtension, params};

use super::{Caller, DbError, NodeRow, Writer};
use crate::id::{self, NodeId};
use crate::identity::PublicKey;
use crate::tracker::proto::RegisterRequest;

fn hash_token(token: &str) -> [u8; 32] {
    *blake3::hash(token.as_bytes()).as_bytes()
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

/// What one sweep did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Swept {
    /// Nodes marked offline (silent for `offline_after`).
    pub offline: usize,
    /// Nodes forgotten (offline for `prune_after`).
    pub pruned: usize,
}

/// A registered node as `register` finds it.
struct Existing {
    nid: i64,
    digest: Option<[u8; 16]>,
    key: Option<PublicKey>,
    sig_seq: u64,
    swarm: Option<[u8; 16]>,
    seq: u64,
    files: u64,
}

/// Checks that a request signed by `key` with `seq` may change the row of
/// `id`, stored with `stored` and last signed sequence number `last`.
pub(super) fn check_proof(
    id: NodeId,
    stored: Option<&PublicKey>,
    last: u64,
    key: &PublicKey,
    seq: u64,
) -> Result<(), DbError> {
    let Some(stored) = stored else {
        return Err(DbError::Unauthorized(format!(
            "node {id} was registered before requests were signed; register again (POST /v1/nodes, signed)"
        )));
    };
    if stored != key {
        return Err(DbError::Unauthorized(format!(
            "node {id} is registered with another key; only that key may change its registration"
        )));
    }
    if seq <= last {
        return Err(DbError::Unauthorized(format!(
            "replayed request: X-Lanshare-Sig sequence number {seq} is not above {last}, the last one accepted for node {id}"
        )));
    }
    Ok(())
}

/// What `register` hands back to the handler.
pub struct Registered {
    pub token: String,
    pub stored_digest: Option<[u8; 16]>,
    pub created: bool,
}

impl Writer {
    /// Registers (or re-registers) a node; a fresh token replaces any old one.
    /// The caller checked the signature with `req.key` (and that `req.id`
    /// derives from it); a known id must come with the key stored for it and
    /// a sequence number above the last one accepted. A row stored without
    /// a key (before requests were signed) or in another swarm is replaced.
    pub fn register(
        &mut self,
        req: &RegisterRequest,
        seq_signed: u64,
        source: IpAddr,
        now: i64,
    ) -> Result<Registered, DbError> {
        let mut existing = self.registered(req.id)?;
        if let Some(e) = &existing
            && e.key.is_some()
        {
            check_proof(req.id, e.key.as_ref(), e.sig_seq, &req.key, seq_signed)?;
        }
        if let Some(e) = existing.take_if(|e| e.key.is_none() || e.swarm != req.swarm) {
            self.delete_node(e.nid, e.seq, e.files)?;
        }
        let token = id::to_hex(&rand::random::<[u8; 32]>());
        let hash = hash_token(&token);
        let addrs = serde_json::to_string(&req.addrs).expect("addresses serialize");
        let seq = self.next_seq();
        let name = if req.swarm.is_some() { "" } else { &req.name };
        let Some(e) = existing else {
            self.check_quota(source)?;
            if self.mem.nodes >= self.limits.max_nodes {
                self.make_room()?;
            }
            self.conn
                .prepare_cached(
                    "INSERT INTO nodes(id, name, port, addrs, source, token_hash, digest, files,
                     registered_ms, last_seen_ms, online, seq, key, sig_seq, swarm)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL, 0, ?7, ?7, 1, ?8, ?9, ?10, ?11)",
                )?
                .execute(params![
                    &req.id.0[..],
                    name,
                    req.port,
                    addrs,
                    source.to_string(),
                    &hash[..],
                    now,
                    seq as i64,
                    &req.key.0[..],
                    seq_signed as i64,
                    req.swarm.as_ref().map(|t| &t[..]),
                ])?;
            self.mem.nodes += 1;
            return Ok(Registered {
                token,
                stored_digest: None,
                created: true,
            });
        };
        self.conn
            .prepare_cached(
                "UPDATE nodes SET name = ?2, port = ?3, addrs = ?4, source = ?5, token_hash = ?6,
                 last_seen_ms = ?7, online = 1, seq = ?8, sig_seq = ?9 WHERE nid = ?1",
            )?
            .execute(params![
                e.nid,
                name,
                req.port,
                addrs,
                source.to_string(),
                &hash[..],
                now,
                seq as i64,
                seq_signed as i64
            ])?;
        Ok(Registered {
            token,
            stored_digest: e.digest,
            created: false,
        })
    }

    /// The stored row of `id`, as `register` needs it.
    fn registered(&mut self, id: NodeId) -> Result<Option<Existing>, DbError> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT nid, digest, key, sig_seq, swarm, seq, files FROM nodes WHERE id = ?1",
            )?
            .query_row([&id.0[..]], |r| {
                Ok(Existing {
                    nid: r.get(0)?,
                    digest: r
                        .get::<_, Option<Vec<u8>>>(1)?
                        .and_then(|d| d.try_into().ok()),
                    key: r.get::<_, Option<[u8; 32]>>(2)?.map(PublicKey),
                    sig_seq: r.get::<_, i64>(3)? as u64,
                    swarm: r
                        .get::<_, Option<Vec<u8>>>(4)?
                        .and_then(|d| d.try_into().ok()),
                    seq: r.get::<_, i64>(5)? as u64,
                    files: r.get::<_, i64>(6)? as u64,
                })
            })
            .optional()?)
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

    /// Checks a node's token and the proof of its signed request (the key
    /// that verified it, its sequence number), and records the sequence
    /// number; every write of a node starts here.
    pub(super) fn auth(&mut self, caller: &Caller) -> Result<NodeRow, DbError> {
        let Caller { id, token, proof } = caller;
        let id = *id;
        /// A `nodes` row with its token hash and key.
        struct Found {
            row: NodeRow,
            hash: Option<Vec<u8>>,
            key: Option<PublicKey>,
            sig_seq: u64,
        }
        let found: Option<Found> = self
            .conn
            .prepare_cached(
                "SELECT nid, token_hash, online, digest, files, source, key, sig_seq, swarm IS NOT NULL
                 FROM nodes WHERE id = ?1",
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
                        private: r.get(8)?,
                    },
                    hash: r.get(1)?,
                    key: r.get::<_, Option<[u8; 32]>>(6)?.map(PublicKey),
                    sig_seq: r.get::<_, i64>(7)? as u64,
                })
            })
            .optional()?;
        let Some(Found {
            row,
            hash,
            key,
            sig_seq,
        }) = found
        else {
            return Err(DbError::UnknownNode(format!(
                "node {id} is not registered with this tracker; register it again (POST /v1/nodes)"
            )));
        };
        check_proof(id, key.as_ref(), sig_seq, &proof.key, proof.seq)?;
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
        self.conn
            .prepare_cached("UPDATE nodes SET sig_seq = ?2 WHERE nid = ?1")?
            .execute(params![row.nid, proof.seq as i64])?;
        Ok(row)
    }

    /// Records that the node was heard from: online, last seen now (and
    /// always after its registration, which marks it as active).
    pub(super) fn touch(
        &mut self,
        row: &mut NodeRow,
        source: IpAddr,
        now: i64,
    ) -> Result<(), DbError> {
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
        caller: &Caller,
        digest: [u8; 16],
        addrs: Option<&[IpAddr]>,
        source: IpAddr,
        now: i64,
    ) -> Result<bool, DbError> {
        let mut row = self.auth(caller)?;
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
    pub fn deregister(&mut self, caller: &Caller) -> Result<(), DbError> {
        let row = self.auth(caller)?;
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

    /// Marks silent nodes offline and prunes those offline for too long.
    pub fn sweep(&mut self, now: i64) -> Result<Swept, DbError> {
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
        Ok(Swept {
            offline: silent.len(),
            pruned: stale.len(),
        })
    }
}
