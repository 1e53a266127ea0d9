//! One connection to a peer's server: handshake, then requests and
//! responses. Several requests may be in flight; responses are read one at
//! a time, a chunk's bytes straight into the caller's buffer.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::{CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT, PeerError};
use crate::id::{ContentId, NodeId};
use crate::manifest::Manifest;
use crate::wire::InventoryEntry;
use crate::wire::frame::{self, HEADER_LEN, MAX_RESPONSE_FRAME, PREAMBLE, Request, Response};

pub struct PeerConn {
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
    next_req: u32,
    pub remote_node: NodeId,
    pub remote_name: String,
    pub addr: SocketAddr,
    /// Reused for non-chunk response bodies.
    scratch: Vec<u8>,
}

impl PeerConn {
    pub async fn connect(
        addr: SocketAddr,
        me: NodeId,
        my_name: &str,
    ) -> Result<PeerConn, PeerError> {
        let stream = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
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
            Response::Hello { node, name } => {
                self.remote_node = node;
                self.remote_name = name;
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

    /// Asks for a manifest and checks it against `id`.
    pub async fn get_manifest(
        &mut self,
        id: ContentId,
        timeout: Duration,
    ) -> Result<Manifest, PeerError> {
        let req = self.next_id();
        self.writer
            .write_all(&Request::GetManifest { req, id }.encode())
            .await?;
        self.flush().await?;
        let resp = tokio::time::timeout(timeout, self.read_response(&mut Vec::new()))
            .await
            .map_err(|_| PeerError::Timeout("waiting for a manifest"))??;
        match resp {
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

    pub async fn get_inventory(
        &mut self,
        timeout: Duration,
    ) -> Result<Vec<InventoryEntry>, PeerError> {
        let req = self.next_id();
        self.writer
            .write_all(&Request::GetInventory { req }.encode())
            .await?;
        self.flush().await?;
        let resp = tokio::time::timeout(timeout, self.read_response(&mut Vec::new()))
            .await
            .map_err(|_| PeerError::Timeout("waiting for an inventory"))??;
        match resp {
            Response::Inventory { req: r, entries } if r == req => Ok(entries),
            Response::Error { code, message, .. } => Err(PeerError::Remote { code, message }),
            _ => Err(PeerError::Unexpected(req)),
        }
    }
}
