//! One connection to a peer's server: the Noise handshake (which proves
//! the server's node id), then requests and responses. Several requests may be in flight; responses are read one at
//! a time, a chunk's bytes straight into the caller's buffer.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpStream;

use super::conn::FramedConn;
use super::{HANDSHAKE_TIMEOUT, PeerError};

/// Connecting to one of several addresses of a peer gives up sooner.
pub const FALLBACK_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The `OutOfBounds` field of a pull stopped by its memory budget.
pub const OVER_BUDGET: &str = "inventory bytes";
use crate::id::{ContentId, NodeId};
use crate::identity::Identity;
use crate::manifest::Manifest;
use crate::store::ChunkBuf;
use crate::swarm::Mode;
use crate::wire::frame::{self, MAX_INVENTORY_ENTRIES, MAX_RESPONSE_FRAME, Request, Response};
use crate::wire::{InventoryEntry, WireError};

pub struct PeerConn {
    framed: FramedConn,
    next_req: u32,
    /// Proven by the handshake: the server holds the key this id derives from.
    pub remote_node: NodeId,
    pub remote_name: String,
    /// The peer's inventory digest and size when it answered the hello.
    pub remote_digest: [u8; 16],
    pub remote_contents: u32,
    pub addr: SocketAddr,
}

impl PeerConn {
    /// Connects to `addr` as `identity` (named `my_name`) in `mode`,
    /// giving up after `limit`; the handshake then has
    /// [`HANDSHAKE_TIMEOUT`].
    pub async fn connect_within(
        addr: SocketAddr,
        identity: &Identity,
        mode: &Mode,
        my_name: &str,
        limit: Duration,
    ) -> Result<PeerConn, PeerError> {
        let stream = tokio::time::timeout(limit, TcpStream::connect(addr))
            .await
            .map_err(|_| PeerError::Timeout("connecting"))?
            .map_err(PeerError::Connect)?;
        stream.set_nodelay(true)?;
        let (framed, server) =
            FramedConn::connect(stream, identity, mode, my_name, HANDSHAKE_TIMEOUT).await?;
        Ok(PeerConn {
            framed,
            next_req: 1,
            remote_node: server.node,
            remote_name: server.hello.name,
            remote_digest: server.hello.digest,
            remote_contents: server.hello.contents,
            addr,
        })
    }

    /// What the server's verified hello said, for [`crate::dict::Peers::reached`].
    pub fn hello(&self) -> crate::dict::Hello<'_> {
        crate::dict::Hello {
            id: self.remote_node,
            name: &self.remote_name,
            digest: self.remote_digest,
            contents: self.remote_contents,
        }
    }

    /// `name@addr id8 ✓`: the peer as logs name it once its id is proven.
    pub fn label(&self) -> String {
        crate::peer::verified_label(&self.remote_name, self.addr, &self.remote_node)
    }

    fn next_id(&mut self) -> u32 {
        let id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        id
    }

    /// Queues a chunk request (call [`flush`](Self::flush) to send); returns its id.
    pub async fn request_chunk(&mut self, id: ContentId, index: u32) -> Result<u32, PeerError> {
        let req = self.next_id();
        self.framed
            .send(&Request::GetChunk { req, id, index }.encode())
            .await?;
        Ok(req)
    }

    /// Queues a manifest request (call [`flush`](Self::flush) to send);
    /// returns its id. The answer comes through [`read_response`](Self::read_response).
    pub async fn request_manifest(&mut self, id: ContentId) -> Result<u32, PeerError> {
        let req = self.next_id();
        self.framed
            .send(&Request::GetManifest { req, id }.encode())
            .await?;
        Ok(req)
    }

    pub async fn flush(&mut self) -> Result<(), PeerError> {
        self.framed.flush().await
    }

    /// Reads the next response. A chunk's bytes are read into `chunk_buf`.
    pub async fn read_response(&mut self, chunk_buf: &mut ChunkBuf) -> Result<Response, PeerError> {
        self.framed.read_response(chunk_buf).await
    }

    /// Reads the next response, refusing a frame longer than `max` bytes
    /// before its body is read.
    pub async fn read_response_within(
        &mut self,
        chunk_buf: &mut ChunkBuf,
        max: u32,
    ) -> Result<Response, PeerError> {
        self.framed.read_response_within(chunk_buf, max).await
    }

    /// Asks for a manifest and checks it against `id`. The answer must
    /// start within `patience` and be complete within `timeout`; a frame
    /// longer than `max_frame` is refused before anything is allocated
    /// (the caller bounds it by the size it expects).
    pub async fn get_manifest(
        &mut self,
        id: ContentId,
        patience: Duration,
        timeout: Duration,
        max_frame: u32,
    ) -> Result<Manifest, PeerError> {
        let req = self.next_id();
        self.framed
            .send(&Request::GetManifest { req, id }.encode())
            .await?;
        self.flush().await?;
        let max = max_frame.min(MAX_RESPONSE_FRAME);
        let h = tokio::time::timeout(patience, self.framed.read_header(max))
            .await
            .map_err(|_| PeerError::Timeout("waiting for a manifest"))??;
        if h.kind == frame::K_R_CHUNK {
            return Err(PeerError::Unexpected(req));
        }
        let body = tokio::time::timeout(timeout, self.framed.read_body(h.len))
            .await
            .map_err(|_| PeerError::Timeout("receiving a manifest"))??;
        match Response::decode(h.kind, &body, h.len)? {
            Response::Manifest { req: r, manifest } if r == req => {
                manifest.verify(&id).map_err(|e| {
                    PeerError::Protocol(crate::wire::WireError::Malformed(e.to_string()))
                })?;
                Ok(manifest)
            }
            Response::Error { code, message, .. } => Err(PeerError::Remote { code, message }),
            _ => Err(PeerError::Unexpected(req)),
        }
    }

    /// Asks the peer which peers it knows (peer exchange), telling it this
    /// node's TCP server `port` (0: none). The answer must arrive within
    /// `timeout`; it is bounded by the frame and entry limits of
    /// [`frame::MAX_PEERS_FRAME`].
    pub async fn get_peers(
        &mut self,
        port: u16,
        timeout: Duration,
    ) -> Result<Vec<frame::PeerEntry>, PeerError> {
        let req = self.next_id();
        self.framed
            .send(&Request::GetPeers { req, port }.encode())
            .await?;
        self.flush().await?;
        let resp = tokio::time::timeout(timeout, self.read_response(&mut ChunkBuf::new()))
            .await
            .map_err(|_| PeerError::Timeout("waiting for a peer list"))??;
        match resp {
            Response::Peers { req: r, entries } if r == req => Ok(entries),
            Response::Error { code, message, .. } => Err(PeerError::Remote { code, message }),
            _ => Err(PeerError::Unexpected(req)),
        }
    }

    /// Tells the peer this node is stopping, and closes the connection.
    pub async fn goodbye(mut self) -> Result<(), PeerError> {
        self.framed.send(&Request::Goodbye.encode()).await?;
        self.framed.flush().await
    }

    /// Pulls the peer's inventory, page by page: in full, or with `since`
    /// (the digest of the inventory we hold) possibly as a delta. Each page
    /// must arrive within `timeout`; the pages must agree and stay in order;
    /// each must be admitted by `admit` (a memory budget) before it is
    /// kept, else the pull stops with `OutOfBounds { field: OVER_BUDGET }`.
    pub async fn pull_inventory(
        &mut self,
        since: Option<[u8; 16]>,
        timeout: Duration,
        admit: &mut (dyn FnMut(&[InventoryEntry]) -> bool + Send),
    ) -> Result<Pulled, PeerError> {
        let bad = |what: &str| PeerError::Protocol(WireError::Malformed(what.to_string()));
        let mut out: Option<Pulled> = None;
        let mut after: Option<ContentId> = None;
        loop {
            let req = self.next_id();
            self.framed
                .send(&Request::GetInventory { req, since, after }.encode())
                .await?;
            self.flush().await?;
            let resp = tokio::time::timeout(timeout, self.read_response(&mut ChunkBuf::new()))
                .await
                .map_err(|_| PeerError::Timeout("waiting for an inventory"))??;
            let page = match resp {
                Response::Inventory(p) if p.req == req => p,
                Response::Error { code, message, .. } => {
                    return Err(PeerError::Remote { code, message });
                }
                _ => return Err(PeerError::Unexpected(req)),
            };
            if page.base.is_some() && page.base != since {
                return Err(bad("inventory delta against a version we do not hold"));
            }
            let pulled = out.get_or_insert_with(|| Pulled {
                digest: page.digest,
                base: page.base,
                entries: Vec::new(),
                removed: page.removed.clone(),
            });
            if pulled.digest != page.digest || pulled.base != page.base {
                return Err(bad("inventory pages of different versions"));
            }
            if let (Some(last), Some(first)) = (pulled.entries.last(), page.entries.first())
                && first.id <= last.id
            {
                return Err(bad("inventory pages out of order"));
            }
            if pulled.entries.len() + page.entries.len() > MAX_INVENTORY_ENTRIES {
                return Err(PeerError::Protocol(WireError::OutOfBounds {
                    field: "entries",
                }));
            }
            if !admit(&page.entries) {
                return Err(PeerError::Protocol(WireError::OutOfBounds {
                    field: OVER_BUDGET,
                }));
            }
            pulled.entries.extend(page.entries);
            if !page.more {
                // Held for as long as the peer is: no spare room from the
                // list's growth (a large list is remapped, not copied).
                pulled.entries.shrink_to_fit();
                return Ok(out.expect("set above"));
            }
            match pulled.entries.last() {
                Some(e) => after = Some(e.id),
                None => return Err(bad("an empty inventory page announced more")),
            }
        }
    }
}

/// An inventory as pulled: complete (`base: None`) or a delta.
#[derive(Debug)]
pub struct Pulled {
    pub digest: [u8; 16],
    pub base: Option<[u8; 16]>,
    /// All entries, or (a delta) the new and changed ones; ascending by id.
    pub entries: Vec<InventoryEntry>,
    pub removed: Vec<ContentId>,
}

impl Pulled {
    /// The whole inventory this pull describes, given the entries of its
    /// base for a delta; checked against the digest the peer sent.
    pub fn into_inventory(
        self,
        base: Option<&crate::inventory::Inventory>,
    ) -> Result<crate::inventory::Inventory, PeerError> {
        let received = crate::inventory::Received {
            digest: self.digest,
            base: self.base,
            entries: self.entries,
            removed: self.removed,
        };
        received
            .rebuild(base)
            .map_err(|e| PeerError::Protocol(WireError::Malformed(e.to_string())))
    }
}
