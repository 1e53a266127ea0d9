//! One connection to a peer's server: handshake, then requests and
//! responses. Several requests may be in flight; responses are read one at
//! a time, a chunk's bytes straight into the caller's buffer.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::{CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT, PeerError};

/// Connecting to one of several addresses of a peer gives up sooner.
pub const FALLBACK_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The `OutOfBounds` field of a pull stopped by its memory budget.
pub const OVER_BUDGET: &str = "inventory bytes";
use crate::id::{ContentId, NodeId};
use crate::manifest::Manifest;
use crate::wire::frame::{
    self, HEADER_LEN, MAX_INVENTORY_ENTRIES, MAX_RESPONSE_FRAME, PREAMBLE, Request, Response,
};
use crate::wire::{InventoryEntry, WireError};

pub struct PeerConn {
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
    next_req: u32,
    pub remote_node: NodeId,
    pub remote_name: String,
    /// The peer's inventory digest and size when it answered the hello.
    pub remote_digest: [u8; 16],
    pub remote_contents: u32,
    pub addr: SocketAddr,
    /// Reused for non-chunk response bodies.
    scratch: Vec<u8>,
}

impl PeerConn {
    /// Connects to the first of `addrs` that answers, in order.
    pub async fn connect_any(
        addrs: &[SocketAddr],
        me: NodeId,
        my_name: &str,
    ) -> Result<PeerConn, PeerError> {
        let mut last = PeerError::Connect(std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            "no known address",
        ));
        for (i, addr) in addrs.iter().enumerate() {
            // Don't wait long on one address when others remain.
            let limit = if i + 1 < addrs.len() {
                FALLBACK_CONNECT_TIMEOUT
            } else {
                CONNECT_TIMEOUT
            };
            match PeerConn::connect_within(*addr, me, my_name, limit).await {
                Ok(c) => return Ok(c),
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "cannot reach peer at this address; trying the next");
                    last = e;
                }
            }
        }
        Err(last)
    }

    pub async fn connect(
        addr: SocketAddr,
        me: NodeId,
        my_name: &str,
    ) -> Result<PeerConn, PeerError> {
        Self::connect_within(addr, me, my_name, CONNECT_TIMEOUT).await
    }

    /// Connects to `addr`, giving up after `limit`.
    pub async fn connect_within(
        addr: SocketAddr,
        me: NodeId,
        my_name: &str,
        limit: Duration,
    ) -> Result<PeerConn, PeerError> {
        let stream = tokio::time::timeout(limit, TcpStream::connect(addr))
            .await
            .map_err(|_| PeerError::Timeout("connecting"))?
            .map_err(PeerError::Connect)?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        let mut conn = PeerConn {
            reader: BufReader::with_capacity(256 * 1024, r),
            writer: BufWriter::with_capacity(64 * 1024, w),
            next_req: 1,
            remote_node: NodeId([0; 16]),
            remote_name: String::new(),
            remote_digest: [0; 16],
            remote_contents: 0,
            addr,
            scratch: Vec::new(),
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, conn.handshake(me, my_name))
            .await
            .map_err(|_| PeerError::Timeout("handshaking"))??;
        Ok(conn)
    }

    async fn handshake(&mut self, me: NodeId, my_name: &str) -> Result<(), PeerError> {
        self.writer.write_all(&PREAMBLE).await?;
        self.writer
            .write_all(
                &Request::Hello {
                    node: me,
                    name: my_name.to_string(),
                }
                .encode(),
            )
            .await?;
        self.writer.flush().await?;
        let mut pre = [0u8; 5];
        self.reader.read_exact(&mut pre).await?;
        frame::check_preamble(&pre).map_err(PeerError::Handshake)?;
        let mut none = Vec::new();
        match self.read_response(&mut none).await? {
            Response::Hello {
                node,
                name,
                digest,
                contents,
            } => {
                self.remote_node = node;
                self.remote_name = name;
                self.remote_digest = digest;
                self.remote_contents = contents;
                Ok(())
            }
            _ => Err(PeerError::Unexpected(0)),
        }
    }

    fn next_id(&mut self) -> u32 {
        let id = self.next_req;
        self.next_req = self.next_req.wrapping_add(1);
        id
    }

    /// Queues a chunk request (call [`flush`](Self::flush) to send); returns its id.
    pub async fn request_chunk(&mut self, id: ContentId, index: u32) -> Result<u32, PeerError> {
        let req = self.next_id();
        self.writer
            .write_all(&Request::GetChunk { req, id, index }.encode())
            .await?;
        Ok(req)
    }

    pub async fn flush(&mut self) -> Result<(), PeerError> {
        Ok(self.writer.flush().await?)
    }

    /// Reads the next response. A chunk's bytes are read into `chunk_buf`.
    pub async fn read_response(&mut self, chunk_buf: &mut Vec<u8>) -> Result<Response, PeerError> {
        let mut header = [0u8; HEADER_LEN];
        match self.reader.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(PeerError::Closed);
            }
            Err(e) => return Err(e.into()),
        }
        let (kind, len) = frame::parse_header(&header, MAX_RESPONSE_FRAME)?;
        frame::check_response_len(kind, len)?;
        if kind == frame::K_R_CHUNK {
            let mut req = [0u8; 4];
            self.reader.read_exact(&mut req).await?;
            let resp = Response::decode(kind, &req, len)?;
            if let Response::Chunk { len, .. } = resp {
                chunk_buf.resize(len, 0);
                self.reader.read_exact(chunk_buf).await?;
            }
            return Ok(resp);
        }
        let mut body = std::mem::take(&mut self.scratch);
        body.resize(len, 0);
        let res = self.reader.read_exact(&mut body).await;
        let resp = res
            .map_err(PeerError::from)
            .and_then(|_| Ok(Response::decode(kind, &body, len)?));
        body.clear();
        if body.capacity() <= 1 << 20 {
            self.scratch = body;
        }
        resp
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
        self.writer
            .write_all(&Request::GetManifest { req, id }.encode())
            .await?;
        self.flush().await?;
        let mut header = [0u8; HEADER_LEN];
        match tokio::time::timeout(patience, self.reader.read_exact(&mut header)).await {
            Err(_) => return Err(PeerError::Timeout("waiting for a manifest")),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(PeerError::Closed);
            }
            Ok(Err(e)) => return Err(e.into()),
            Ok(Ok(_)) => {}
        }
        let (kind, len) = frame::parse_header(&header, max_frame.min(MAX_RESPONSE_FRAME))?;
        if kind == frame::K_R_CHUNK {
            return Err(PeerError::Unexpected(req));
        }
        let mut body = vec![0u8; len];
        tokio::time::timeout(timeout, self.reader.read_exact(&mut body))
            .await
            .map_err(|_| PeerError::Timeout("receiving a manifest"))??;
        match Response::decode(kind, &body, len)? {
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

    /// Tells the peer this node is stopping, and closes the connection.
    pub async fn goodbye(mut self) -> Result<(), PeerError> {
        self.writer.write_all(&Request::Goodbye.encode()).await?;
        self.writer.flush().await?;
        Ok(())
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
            self.writer
                .write_all(&Request::GetInventory { req, since, after }.encode())
                .await?;
            self.flush().await?;
            let resp = tokio::time::timeout(timeout, self.read_response(&mut Vec::new()))
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
        base: Option<&[InventoryEntry]>,
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
