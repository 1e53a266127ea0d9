//! One served connection, after its slot is granted: the handshake (which
//! proves the client's id), then
//! each request answered in turn (inventory pages, manifests, chunks, a
//! goodbye, a peer-exchange question) under the first-request and idle
//! deadlines. It reads the store and the proven peers, hands an asker's
//! offered port to peer exchange as a hint, and tells the dictionary only
//! of a goodbye (and the node's stats of
//! inventory bytes served); it never decides who is admitted (that is [`super::slots`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use tokio::net::TcpStream;

use super::PeerError;
use super::conn::FramedConn;
use super::sendfile::send_range;
use super::server::Server;
use super::slots::Activity;
use crate::id::{ContentId, NodeId};
use crate::inventory::Plan;
use crate::store::{Source, StoreError};
use crate::wire::frame::{self, ErrorCode, InventoryPage, MAX_PAGE_ENTRIES, Request, Response};
use crate::wire::{InventoryEntry, MAX_PAGE_MORE_PATHS};

/// A client as its handshake proved it.
#[derive(Clone, Copy)]
struct Remote {
    node: NodeId,
}

/// Bytes served of one content on one connection, for the upload log.
pub(super) struct Stat {
    pub name: String,
    pub bytes: u64,
    pub first: Instant,
    pub last: Instant,
}

/// What to do after answering a request.
enum Flow {
    Continue,
    /// The peer said goodbye: close the connection.
    Close,
}

/// Which deadline the next request is read under.
#[derive(Clone, Copy, Debug)]
enum Waiting {
    /// Just after the hello: `first_request_timeout`.
    FirstRequest,
    /// After a request: `idle_timeout`.
    Idle,
}

/// The state of one served connection.
pub(super) struct Session<'a> {
    server: &'a Server,
    addr: SocketAddr,
    activity: &'a Activity,
    /// `name@address` once the peer's handshake is done, its address before.
    pub peer_label: String,
    /// What was served, by content, for the upload log.
    pub stats: HashMap<ContentId, Stat>,
    /// The source of the last content asked for (chunks come in runs).
    cached: Option<(ContentId, Source)>,
    /// The open file of the last content served.
    file_cache: Option<(ContentId, Arc<std::fs::File>)>,
    /// The inventory being pulled on this connection, fixed at its
    /// first page so every page comes from one version.
    pull: Option<Plan>,
}

impl<'a> Session<'a> {
    pub(super) fn new(server: &'a Server, addr: SocketAddr, activity: &'a Activity) -> Self {
        Session {
            server,
            addr,
            activity,
            peer_label: addr.to_string(),
            stats: HashMap::new(),
            cached: None,
            file_cache: None,
            pull: None,
        }
    }

    /// Serves the connection until the peer leaves, errs or stays silent.
    pub(super) async fn run(&mut self, stream: TcpStream) -> Result<(), PeerError> {
        let (mut framed, remote) = self.handshake(stream).await?;
        // A peer that says hello must then ask for something soon: a
        // connection that only holds a slot is closed early.
        let mut waiting = Waiting::FirstRequest;
        loop {
            let req = self.next_request(&mut framed, waiting).await?;
            waiting = Waiting::Idle;
            if let Flow::Close = self.dispatch(&mut framed, remote, req).await? {
                return Ok(());
            }
        }
    }

    /// Runs the server's side of the handshake under its deadline; returns
    /// the connection and the id the client proved.
    async fn handshake(&mut self, stream: TcpStream) -> Result<(FramedConn, Remote), PeerError> {
        let me = &self.server.me;
        let inv = self.server.store.inventory();
        let hello = super::noise::server_hello(&me.identity, &me.name, inv.digest, inv.count());
        let limit = self.server.limits.handshake_timeout;
        let (framed, client) =
            FramedConn::accept(stream, &me.identity, &me.mode, &hello, limit).await?;
        self.peer_label = format!(
            "{}@{}",
            crate::logs::peer_name(&client.hello.name),
            self.addr
        );
        tracing::debug!(
            peer = %super::verified_label(&client.hello.name, self.addr, &client.node),
            "handshake done"
        );
        Ok((framed, Remote { node: client.node }))
    }

    /// Flushes what is queued unless more requests are already buffered
    /// (pipelined requests are answered in one burst), then reads the next
    /// request under the first-request or the idle deadline.
    async fn next_request(
        &self,
        framed: &mut FramedConn,
        waiting: Waiting,
    ) -> Result<Request, PeerError> {
        if !framed.input_buffered() {
            framed.flush().await?;
            self.activity.touch();
        }
        let limits = &self.server.limits;
        let (limit, what) = match waiting {
            Waiting::FirstRequest => (limits.first_request_timeout, "waiting for a first request"),
            Waiting::Idle => (limits.idle_timeout, "idle"),
        };
        let req = tokio::time::timeout(limit, framed.read_request())
            .await
            .map_err(|_| PeerError::Timeout(what))??;
        self.activity.touch();
        Ok(req)
    }

    async fn dispatch(
        &mut self,
        framed: &mut FramedConn,
        remote: Remote,
        req: Request,
    ) -> Result<Flow, PeerError> {
        match req {
            Request::Goodbye => {
                self.goodbye(remote);
                return Ok(Flow::Close);
            }
            Request::GetInventory { req, since, after } => {
                self.serve_inventory(framed, req, since, after).await?
            }
            Request::GetManifest { req, id } => self.serve_manifest(framed, req, id).await?,
            Request::GetChunk { req, id, index } => {
                self.serve_chunk(framed, req, id, index).await?
            }
            Request::GetPeers { req, port } => self.serve_peers(framed, remote, req, port).await?,
        }
        Ok(Flow::Continue)
    }

    /// The handshake proved the id: the peer goes, from any address.
    fn goodbye(&self, remote: Remote) {
        if self.server.dict.depart_verified(remote.node) {
            tracing::info!(peer = %self.peer_label, id = %remote.node.short(), verified = true, "peer said goodbye");
        }
    }

    async fn serve_inventory(
        &mut self,
        framed: &mut FramedConn,
        req: u32,
        since: Option<[u8; 16]>,
        after: Option<ContentId>,
    ) -> Result<(), PeerError> {
        if after.is_none() || self.pull.is_none() {
            self.pull = Some(self.server.store.inventory_plan(since));
        }
        let plan = self.pull.as_ref().expect("set above");
        let bytes = Response::Inventory(inventory_page(req, plan, after)).encode();
        self.server.stats.add(
            crate::stats::Counter::InventoryBytesServed,
            bytes.len() as u64,
        );
        framed.send(&bytes).await
    }

    /// Peer exchange: the proven peers this node knows (never itself, never
    /// the asker); the asker's own port, if given, becomes a hint.
    async fn serve_peers(
        &self,
        framed: &mut FramedConn,
        remote: Remote,
        req: u32,
        port: u16,
    ) -> Result<(), PeerError> {
        let now = Instant::now();
        let me = self.server.me.identity.node_id();
        let entries = crate::exchange::answer(&self.server.dict, me, remote.node, self.addr, now);
        if let Some(exchange) = &self.server.exchange {
            exchange.offered(remote.node, self.addr, port, now);
        }
        framed
            .send(&Response::Peers { req, entries }.encode())
            .await
    }

    async fn serve_manifest(
        &mut self,
        framed: &mut FramedConn,
        req: u32,
        id: ContentId,
    ) -> Result<(), PeerError> {
        match self.server.store.source(&id) {
            Some(src) => {
                let manifest = src.manifest().clone();
                framed
                    .send(&Response::Manifest { req, manifest }.encode())
                    .await
            }
            None => write_error(framed, req, ErrorCode::NotFound, "content not held here").await,
        }
    }

    /// The source of `id`, from the one-entry cache when it is the last asked.
    fn source(&mut self, id: ContentId) -> Option<Source> {
        if let Some((cid, src)) = &self.cached
            && *cid == id
        {
            return Some(src.clone());
        }
        let src = self.server.store.source(&id)?;
        self.cached = Some((id, src.clone()));
        Some(src)
    }

    async fn serve_chunk(
        &mut self,
        framed: &mut FramedConn,
        req: u32,
        id: ContentId,
        index: u32,
    ) -> Result<(), PeerError> {
        let Some(source) = self.source(id) else {
            return write_error(framed, req, ErrorCode::NotFound, "content not held here").await;
        };
        let asked = Instant::now();
        let store = &self.server.store;
        let chunk = match store.chunk_ref(&source, index, &mut self.file_cache) {
            Ok(chunk) => chunk,
            Err(e) => {
                let code = self.chunk_error_code(&e);
                tracing::debug!(peer = %self.addr, error = %e, "cannot serve chunk");
                return write_error(framed, req, code, &e.to_string()).await;
            }
        };
        framed.send(&frame::chunk_header(req, chunk.len)).await?;
        if framed.is_secure() {
            let activity = self.activity;
            framed
                .send_range_sealed(&chunk.file, chunk.offset, chunk.len, || activity.touch())
                .await?;
        } else {
            framed.flush().await?;
            send_range(framed.socket(), &chunk, self.activity).await?;
        }
        let now = Instant::now();
        let s = self.stats.entry(id).or_insert_with(|| Stat {
            name: source.name().to_string(),
            bytes: 0,
            first: asked,
            last: now,
        });
        s.bytes += chunk.len as u64;
        s.last = now;
        let transfers = &self.server.stats.transfers;
        transfers.chunk_served(self.addr, &self.peer_label, &source, chunk.len as u64, now);
        Ok(())
    }

    /// The error code for a chunk the store could not give; a file changed
    /// on disk drops the caches and asks for a rescan.
    fn chunk_error_code(&mut self, e: &StoreError) -> ErrorCode {
        match e {
            StoreError::NoChunk { .. } => ErrorCode::NoChunk,
            StoreError::BadIndex { .. } => ErrorCode::BadRequest,
            StoreError::Changed { .. } => {
                self.cached = None;
                self.file_cache = None;
                self.server.rescan.notify_one();
                ErrorCode::NotFound
            }
            _ => ErrorCode::Internal,
        }
    }
}

async fn write_error(
    framed: &mut FramedConn,
    req: u32,
    code: ErrorCode,
    msg: &str,
) -> Result<(), PeerError> {
    let message = crate::wire::clean_text(msg, crate::wire::MAX_ERROR_MESSAGE);
    framed
        .send(&Response::Error { req, code, message }.encode())
        .await
}

/// Bytes of entries in one inventory page (roughly; a single entry may exceed it).
const PAGE_BYTES: usize = 1 << 20;

/// The page of `plan` after the entry `after` (the first page when `None`).
/// Only the entries of the page are decoded.
fn inventory_page(req: u32, plan: &Plan, after: Option<ContentId>) -> InventoryPage {
    let (base, removed): (_, &[ContentId]) = match &plan.delta {
        Some(d) => (Some(d.base), &d.removed),
        None => (None, &[]),
    };
    let rest: Box<dyn Iterator<Item = InventoryEntry> + '_> = match &plan.delta {
        Some(d) => {
            let start = after.map_or(0, |a| d.upserts.partition_point(|e| e.id <= a));
            Box::new(d.upserts[start..].iter().cloned())
        }
        None => Box::new(plan.inventory.iter_after(after)),
    };
    let mut rest = rest.peekable();
    let mut entries = Vec::new();
    let (mut bytes, mut paths) = (0, 0);
    while entries.len() < MAX_PAGE_ENTRIES
        && let Some(next) = rest.peek()
        && ((bytes < PAGE_BYTES && paths + next.more_paths.len() <= MAX_PAGE_MORE_PATHS)
            || entries.is_empty())
    {
        let e = rest.next().expect("peeked");
        bytes += e.approx_size();
        paths += e.more_paths.len();
        entries.push(e);
    }
    InventoryPage {
        req,
        digest: plan.inventory.digest,
        base,
        entries,
        removed: if after.is_none() {
            removed.to_vec()
        } else {
            Vec::new()
        },
        more: rest.peek().is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(n: u32) -> Vec<InventoryEntry> {
        (0..n)
            .map(|i| {
                let mut id = [0u8; 32];
                id[..4].copy_from_slice(&i.to_be_bytes());
                InventoryEntry {
                    id: ContentId(id),
                    name: format!("file-{i}.txt"),
                    more_paths: Default::default(),
                    size: 1,
                    category: crate::manifest::Category::Text,
                    comment: String::new(),
                    chunks: crate::chunkset::ChunkSet::Full,
                }
            })
            .collect()
    }

    /// Entries at many paths: each page stays within what a receiver
    /// decodes ([`MAX_PAGE_MORE_PATHS`]), and together they cover all.
    #[test]
    fn pages_bound_the_other_paths_they_carry() {
        let mut many = entries(100);
        for e in &mut many {
            e.more_paths =
                crate::wire::MorePaths::new((0..1000).map(|p| format!("q/{p:04}")).collect());
        }
        let inv = crate::inventory::Inventory::new(many);
        let plan = Plan {
            inventory: inv.clone(),
            delta: None,
        };
        let (mut got, mut after) = (Vec::new(), None);
        loop {
            let p = inventory_page(1, &plan, after);
            let paths: usize = p.entries.iter().map(|e| e.more_paths.len()).sum();
            assert!(paths <= MAX_PAGE_MORE_PATHS, "{paths}");
            let f = Response::Inventory(p.clone()).encode();
            assert!(Response::decode(f[4], &f[5..], f.len() - 5).is_ok());
            got.extend(p.entries.iter().cloned());
            after = got.last().map(|e: &InventoryEntry| e.id);
            if !p.more {
                break;
            }
        }
        assert_eq!(got, inv.to_vec());
    }

    #[test]
    fn pages_cover_the_inventory_in_order() {
        let inv = crate::inventory::Inventory::new(entries(10_000));
        let plan = Plan {
            inventory: inv.clone(),
            delta: None,
        };
        let mut got = Vec::new();
        let mut after = None;
        let mut pages = 0;
        loop {
            let p = inventory_page(1, &plan, after);
            pages += 1;
            assert!(p.entries.len() <= MAX_PAGE_ENTRIES);
            assert_eq!(p.digest, inv.digest);
            // Each page fits a response frame with room to spare.
            assert!(Response::Inventory(p.clone()).encode().len() < (2 << 20));
            got.extend(p.entries.iter().cloned());
            after = got.last().map(|e| e.id);
            if !p.more {
                break;
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(got, inv.to_vec());
    }

    #[test]
    fn a_delta_sends_removals_on_the_first_page_only() {
        let inv = crate::inventory::Inventory::new(entries(5000));
        let plan = Plan {
            inventory: inv.clone(),
            delta: Some(crate::inventory::Delta {
                base: [1; 16],
                upserts: entries(5000),
                removed: vec![ContentId([0xff; 32])],
            }),
        };
        let first = inventory_page(1, &plan, None);
        assert_eq!(first.base, Some([1; 16]));
        assert_eq!(first.removed.len(), 1);
        assert!(first.more);
        let second = inventory_page(2, &plan, first.entries.last().map(|e| e.id));
        assert!(second.removed.is_empty() && !second.more);
        assert_eq!(first.entries.len() + second.entries.len(), 5000);
    }
}
