//! What the dictionary answers, joining the peer table and the content
//! index: the holders a download asks ([`Holder`]), name resolution, and
//! the views `ls` and `peers` show. Read-only.

use std::net::SocketAddr;
use std::time::{Instant, SystemTime};

use super::Dict;
use crate::api::{ContentView, HolderView, PeerView};
use crate::chunkset::ChunkSet;
use crate::id::{ContentId, NodeId};
use crate::manifest::{CHUNK_SIZE, Category, Manifest};
use crate::resolve::{self, Resolution};

/// A peer that holds (part of) a content, as the fetcher needs it.
#[derive(Clone, Debug)]
pub struct Holder {
    pub id: NodeId,
    pub name: String,
    /// The address shown in logs.
    pub addr: SocketAddr,
    /// Every known address, best first.
    pub addrs: Vec<SocketAddr>,
    pub chunks: ChunkSet,
}

impl Dict {
    /// Online holders of `id`.
    pub fn holders(&self, id: &ContentId) -> Vec<Holder> {
        let Some(holders) = self.contents.with(id, |c| {
            c.holders
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect::<Vec<(NodeId, ChunkSet)>>()
        }) else {
            return Vec::new();
        };
        holders
            .into_iter()
            .filter_map(|(nid, chunks)| {
                self.peers
                    .with(&nid, |p| {
                        p.online.then(|| Holder {
                            id: nid,
                            name: p.name.clone(),
                            addr: p.addr(),
                            addrs: p.addrs(),
                            chunks,
                        })
                    })
                    .flatten()
            })
            .collect()
    }

    /// Resolves a user's query against what the network offers plus `extra`
    /// (this node's own contents).
    pub fn resolve(&self, query: &str, extra: &[(ContentId, String)]) -> Resolution {
        let mut all: Vec<(ContentId, Vec<String>)> = self
            .contents
            .map_all(|id, c| Some((*id, c.names.iter().cloned().collect())));
        for (id, name) in extra {
            match all.iter_mut().find(|(i, _)| i == id) {
                Some((_, names)) => names.push(name.clone()),
                None => all.push((*id, vec![name.clone()])),
            }
        }
        resolve::resolve(
            query,
            all.iter()
                .map(|(id, names)| (*id, names.iter().map(String::as_str))),
        )
    }

    /// The view `ls` shows of one content.
    pub fn view(&self, id: &ContentId, local: bool) -> Option<ContentView> {
        let c = self.contents.content(id)?;
        let total = Manifest::chunk_count_for(c.size, CHUNK_SIZE) as u32;
        let mut holders: Vec<HolderView> = self
            .holders(id)
            .into_iter()
            .map(|h| HolderView {
                name: h.name,
                addr: h.addr.to_string(),
                chunks: h.chunks.count(total),
                total,
            })
            .collect();
        holders.sort_by(|a, b| a.name.cmp(&b.name).then(a.addr.cmp(&b.addr)));
        let complete = holders.iter().filter(|h| h.chunks >= h.total).count() as u32;
        Some(ContentView {
            id: id.to_hex(),
            name: c.names.iter().next().cloned().unwrap_or_default(),
            names: c.names.iter().cloned().collect(),
            size: c.size,
            category: c.category,
            comment: c.comment,
            complete,
            partial: holders.len() as u32 - complete,
            holders,
            local,
        })
    }

    /// Every content with at least one online holder, filtered, sorted by
    /// name.
    pub fn list(&self, query: Option<&str>, category: Option<Category>) -> Vec<ContentId> {
        let mut ids: Vec<(String, ContentId)> = self.contents.map_all(|id, c| {
            let wanted = category.is_none_or(|cat| c.category == cat)
                && query.is_none_or(|q| {
                    resolve::matches_filter(q, id, c.names.iter().map(String::as_str))
                });
            let name = c.names.iter().next().cloned().unwrap_or_default();
            wanted.then(|| (name.to_lowercase(), *id))
        });
        ids.sort();
        ids.into_iter()
            .map(|(_, id)| id)
            .filter(|id| !self.holders(id).is_empty())
            .collect()
    }

    /// The view `peers` shows, at `now` (`wall`: the same moment on the
    /// wall clock, for the last-seen time).
    pub fn peer_views(&self, now: Instant, wall: SystemTime) -> Vec<PeerView> {
        let mut v: Vec<PeerView> = self
            .peers
            .filtered(|_| true)
            .into_iter()
            .map(|p| {
                let ago = now.saturating_duration_since(p.last_seen);
                let seen = wall.checked_sub(ago).unwrap_or(wall);
                PeerView {
                    id: p.id.to_hex(),
                    name: p.name.clone(),
                    addr: p.addr().to_string(),
                    addrs: p.addrs().iter().map(|a| a.to_string()).collect(),
                    online: p.online,
                    last_seen: humantime::format_rfc3339_millis(seen).to_string(),
                    last_seen_secs: ago.as_secs_f64(),
                    found_via: p.found_via.iter().copied().collect(),
                    contents: if p.online { p.contents } else { 0 },
                    verified: p.verified,
                }
            })
            .collect();
        v.sort_by(|a, b| b.online.cmp(&a.online).then(a.name.cmp(&b.name)));
        v
    }
}
