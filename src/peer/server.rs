//! The uploader: a TCP server that serves manifests, chunks and the
//! inventory of what this node holds, looked up by content id only.
//! Connections are limited in number and time out when idle. Chunk bytes go
//! from the page cache to the socket with sendfile(2): no buffer per
//! connection, so memory does not grow with the number of connections. Every transfer served is logged when its
//! connection ends.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::{HANDSHAKE_TIMEOUT, PeerError};
use crate::dict::Dict;
use crate::id::{ContentId, NodeId};
use crate::logs::{Transfer, TransferLog};
use crate::store::changes::Plan;
use crate::store::{ChunkRef, Source, Store, StoreError};
use crate::wire::InventoryEntry;
use crate::wire::frame::{
    self, ErrorCode, HEADER_LEN, InventoryPage, MAX_PAGE_ENTRIES, MAX_REQUEST_FRAME, PREAMBLE,
    Request, Response,
};

/// Limits of the uploader, from the node's configuration.
#[derive(Clone, Debug)]
pub struct ServerLimits {
    /// Open connections at most; more wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Open connections from one address at most, so one host (or a flood
    /// of idle connections from it) cannot take every slot.
    pub max_per_address: usize,
    /// A connection with no request for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 64,
            max_per_address: 16,
            idle_timeout: Duration::from_secs(60),
        }
    }
}

pub struct Server {
    pub store: Arc<Store>,
    pub dict: Arc<Dict>,
    pub node: NodeId,
    pub name: String,
    pub upload_log: TransferLog,
    pub limits: ServerLimits,
    /// Poked when a served file turns out to have changed on disk.
    pub rescan: Arc<tokio::sync::Notify>,
}

impl Server {
    pub fn new(
        store: Arc<Store>,
        dict: Arc<Dict>,
        node: NodeId,
        name: String,
        limits: ServerLimits,
        rescan: Arc<tokio::sync::Notify>,
    ) -> Self {
        let upload_log = TransferLog::new(&store.home().upload_log());
        Server {
            store,
            dict,
            node,
            name,
            upload_log,
            limits,
            rescan,
        }
    }

    /// Accepts connections until `cancel` fires.
    pub async fn run(self: Arc<Self>, listener: TcpListener, cancel: CancellationToken) {
        let conns = Arc::new(Semaphore::new(self.limits.max_connections));
        let tracker = tokio_util::task::TaskTracker::new();
        let per_address: PerAddress = Default::default();
        loop {
            let permit = tokio::select! {
                _ = cancel.cancelled() => break,
                p = conns.clone().acquire_owned() => p.expect("semaphore never closed"),
            };
            let (stream, addr) = tokio::select! {
                _ = cancel.cancelled() => break,
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed; backing off");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            // A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d.
            let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
            let Some(slot) =
                AddressSlot::take(&per_address, addr.ip(), self.limits.max_per_address)
            else {
                tracing::debug!(peer = %addr, "too many connections from this address; refusing one");
                continue;
            };
            let this = self.clone();
            let cancel = cancel.clone();
            tracker.spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = this.serve(stream, addr) => {}
                }
                drop(slot);
                drop(permit);
            });
        }
        tracker.close();
        tracker.wait().await;
    }

    async fn serve(&self, stream: TcpStream, addr: SocketAddr) {
        let _ = stream.set_nodelay(true);
        let mut conn = Conn {
            stats: HashMap::new(),
            peer_label: addr.to_string(),
        };
        let result = self.serve_inner(stream, addr, &mut conn).await;
        let status = match &result {
            Ok(()) | Err(PeerError::Closed) => Ok(()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = &result {
            match e {
                PeerError::Closed => {}
                PeerError::Handshake(_) | PeerError::Protocol(_) => {
                    self.dict
                        .malformed_connections
                        .fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(peer = %addr, error = %e, "dropped malformed connection");
                }
                _ => tracing::debug!(peer = %addr, error = %e, "connection ended"),
            }
        }
        for (id, s) in conn.stats {
            self.upload_log.append(&Transfer {
                event: "upload",
                file: &s.name,
                bytes: s.bytes,
                id: &id,
                peers: std::slice::from_ref(&conn.peer_label),
                duration: s.last.duration_since(s.first),
                result: status.clone(),
                sha256: None,
            });
        }
    }

    async fn serve_inner(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        conn: &mut Conn,
    ) -> Result<(), PeerError> {
        let (r, w) = stream.into_split();
        let mut reader = BufReader::with_capacity(16 * 1024, r);
        let mut writer = BufWriter::with_capacity(256 * 1024, w);
        let mut body = Vec::with_capacity(256);

        // Handshake: preamble and hello, under one deadline.
        let hello = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
            let mut pre = [0u8; 5];
            reader.read_exact(&mut pre).await?;
            frame::check_preamble(&pre).map_err(PeerError::Handshake)?;
            read_request(&mut reader, &mut body).await
        })
        .await
        .map_err(|_| PeerError::Timeout("handshaking"))??;
        let Request::Hello {
            node: remote_node,
            name,
        } = hello
        else {
            return Err(PeerError::Handshake(crate::wire::WireError::Malformed(
                "first frame must be a hello".into(),
            )));
        };
        conn.peer_label = format!("{}@{}", crate::logs::peer_name(&name), addr);
        writer.write_all(&PREAMBLE).await?;
        writer
            .write_all(
                &{
                    let inv = self.store.inventory();
                    Response::Hello {
                        node: self.node,
                        name: self.name.clone(),
                        digest: inv.digest,
                        contents: inv.entries.len() as u32,
                    }
                }
                .encode(),
            )
            .await?;
        writer.flush().await?;

        let mut cached: Option<(ContentId, Source)> = None;
        let mut file_cache = None;
        // The inventory being pulled on this connection, fixed at its
        // first page so every page comes from one version.
        let mut pull: Option<Plan> = None;
        loop {
            // Flush only when no further request is already buffered, so
            // pipelined requests are answered in one burst.
            if reader.buffer().is_empty() {
                writer.flush().await?;
            }
            let req = match tokio::time::timeout(
                self.limits.idle_timeout,
                read_request(&mut reader, &mut body),
            )
            .await
            {
                Err(_) => return Err(PeerError::Timeout("idle")),
                Ok(r) => r?,
            };
            match req {
                Request::Hello { .. } => {
                    return Err(PeerError::Protocol(crate::wire::WireError::Malformed(
                        "second hello".into(),
                    )));
                }
                Request::Goodbye => {
                    // The hello's id is only a claim: the peer goes only if
                    // it is known at this connection's address.
                    if self.dict.depart(remote_node, addr.ip()) {
                        tracing::info!(peer = %conn.peer_label, "peer said goodbye");
                    }
                    return Ok(());
                }
                Request::GetInventory { req, since, after } => {
                    if after.is_none() || pull.is_none() {
                        pull = Some(self.store.inventory_plan(since));
                    }
                    let plan = pull.as_ref().expect("set above");
                    let page = inventory_page(req, plan, after);
                    let bytes = Response::Inventory(page).encode();
                    self.dict
                        .inventory_bytes_served
                        .fetch_add(bytes.len() as u64, Ordering::Relaxed);
                    writer.write_all(&bytes).await?;
                }
                Request::GetManifest { req, id } => match self.store.source(&id) {
                    Some(src) => {
                        let manifest = (**src.manifest()).clone();
                        writer
                            .write_all(&Response::Manifest { req, manifest }.encode())
                            .await?;
                    }
                    None => {
                        write_error(
                            &mut writer,
                            req,
                            ErrorCode::NotFound,
                            "content not held here",
                        )
                        .await?
                    }
                },
                Request::GetChunk { req, id, index } => {
                    let source = match &cached {
                        Some((cid, src)) if *cid == id => Some(src.clone()),
                        _ => {
                            let src = self.store.source(&id);
                            if let Some(s) = &src {
                                cached = Some((id, s.clone()));
                            }
                            src
                        }
                    };
                    let Some(source) = source else {
                        write_error(
                            &mut writer,
                            req,
                            ErrorCode::NotFound,
                            "content not held here",
                        )
                        .await?;
                        continue;
                    };
                    let asked = Instant::now();
                    match self.store.chunk_ref(&source, index, &mut file_cache) {
                        Ok(chunk) => {
                            writer
                                .write_all(&frame::chunk_header(req, chunk.len))
                                .await?;
                            writer.flush().await?;
                            send_range(writer.get_ref().as_ref(), &chunk).await?;
                            let now = Instant::now();
                            let s = conn.stats.entry(id).or_insert_with(|| Stat {
                                name: source.name().to_string(),
                                bytes: 0,
                                first: asked,
                                last: now,
                            });
                            s.bytes += chunk.len as u64;
                            s.last = now;
                        }
                        Err(e) => {
                            let code = match &e {
                                StoreError::NoChunk { .. } => ErrorCode::NoChunk,
                                StoreError::BadIndex { .. } => ErrorCode::BadRequest,
                                StoreError::Changed { .. } => {
                                    cached = None;
                                    file_cache = None;
                                    self.rescan.notify_one();
                                    ErrorCode::NotFound
                                }
                                _ => ErrorCode::Internal,
                            };
                            tracing::debug!(peer = %addr, error = %e, "cannot serve chunk");
                            write_error(&mut writer, req, code, &e.to_string()).await?;
                        }
                    }
                }
            }
        }
    }
}

/// Sends a chunk's bytes straight from the file to the socket.
#[cfg(target_os = "linux")]
async fn send_range(stream: &TcpStream, chunk: &ChunkRef) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (out_fd, in_fd) = (stream.as_raw_fd(), chunk.file.as_raw_fd());
    let mut offset = chunk.offset as libc::off_t;
    let mut left = chunk.len;
    while left > 0 {
        stream.writable().await?;
        let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
            // SAFETY: both descriptors are open for the duration of the call
            // (the stream and the Arc'd file are borrowed), and `offset` is a
            // valid pointer to an off_t that sendfile advances.
            let n = unsafe { libc::sendfile(out_fd, in_fd, &mut offset, left) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match sent {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "file ended before the chunk did",
                ));
            }
            Ok(n) => left -= n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Portable fallback: read the chunk, then write it.
#[cfg(not(target_os = "linux"))]
async fn send_range(stream: &TcpStream, chunk: &ChunkRef) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; chunk.len];
    chunk.file.read_exact_at(&mut buf, chunk.offset)?;
    let mut sent = 0;
    while sent < buf.len() {
        stream.writable().await?;
        match stream.try_write(&buf[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

type PerAddress = Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>>;

/// One open connection counted against its address; released on drop.
struct AddressSlot {
    map: PerAddress,
    ip: std::net::IpAddr,
}

impl AddressSlot {
    fn take(map: &PerAddress, ip: std::net::IpAddr, max: usize) -> Option<AddressSlot> {
        let mut m = map.lock().expect("per-address lock");
        let n = m.entry(ip).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(AddressSlot {
            map: map.clone(),
            ip,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut m = self.map.lock().expect("per-address lock");
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

struct Stat {
    name: String,
    bytes: u64,
    first: Instant,
    last: Instant,
}

struct Conn {
    stats: HashMap<ContentId, Stat>,
    peer_label: String,
}

async fn read_request<R: AsyncRead + Unpin>(
    r: &mut R,
    body: &mut Vec<u8>,
) -> Result<Request, PeerError> {
    let mut header = [0u8; HEADER_LEN];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Err(PeerError::Closed),
        Err(e) => return Err(e.into()),
    }
    let (kind, len) = frame::parse_header(&header, MAX_REQUEST_FRAME)?;
    body.resize(len, 0);
    r.read_exact(body).await?;
    Ok(Request::decode(kind, body)?)
}

async fn write_error<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    req: u32,
    code: ErrorCode,
    msg: &str,
) -> Result<(), PeerError> {
    let message = crate::wire::clean_text(msg, crate::wire::MAX_ERROR_MESSAGE);
    w.write_all(&Response::Error { req, code, message }.encode())
        .await?;
    Ok(())
}

/// Bytes of entries in one inventory page (roughly; a single entry may exceed it).
const PAGE_BYTES: usize = 1 << 20;

/// The page of `plan` after the entry `after` (the first page when `None`).
fn inventory_page(req: u32, plan: &Plan, after: Option<ContentId>) -> InventoryPage {
    let (entries, base, removed): (&[InventoryEntry], _, &[ContentId]) = match &plan.delta {
        Some(d) => (&d.upserts, Some(d.base), &d.removed),
        None => (&plan.inventory.entries, None, &[]),
    };
    let start = after.map_or(0, |a| entries.partition_point(|e| e.id <= a));
    let mut end = start;
    let mut bytes = 0;
    while end < entries.len()
        && end - start < MAX_PAGE_ENTRIES
        && (bytes < PAGE_BYTES || end == start)
    {
        bytes += entries[end].approx_size();
        end += 1;
    }
    InventoryPage {
        req,
        digest: plan.inventory.digest,
        base,
        entries: entries[start..end].to_vec(),
        removed: if after.is_none() {
            removed.to_vec()
        } else {
            Vec::new()
        },
        more: end < entries.len(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_address_slots_are_capped_and_released() {
        let map: PerAddress = Default::default();
        let ip: std::net::IpAddr = "10.0.0.1".parse().unwrap();
        let other: std::net::IpAddr = "10.0.0.2".parse().unwrap();
        let a = AddressSlot::take(&map, ip, 2).unwrap();
        let _b = AddressSlot::take(&map, ip, 2).unwrap();
        assert!(AddressSlot::take(&map, ip, 2).is_none());
        assert!(AddressSlot::take(&map, other, 2).is_some());
        drop(a);
        assert!(AddressSlot::take(&map, ip, 2).is_some());
    }

    fn entries(n: u32) -> Vec<InventoryEntry> {
        (0..n)
            .map(|i| {
                let mut id = [0u8; 32];
                id[..4].copy_from_slice(&i.to_be_bytes());
                InventoryEntry {
                    id: ContentId(id),
                    name: format!("file-{i}.txt"),
                    size: 1,
                    category: crate::manifest::Category::Text,
                    comment: String::new(),
                    chunks: crate::chunkset::ChunkSet::Full,
                }
            })
            .collect()
    }

    #[test]
    fn pages_cover_the_inventory_in_order() {
        let inv = crate::store::Inventory::new(entries(10_000));
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
        assert_eq!(got, *inv.entries);
    }

    #[test]
    fn a_delta_sends_removals_on_the_first_page_only() {
        let inv = crate::store::Inventory::new(entries(5000));
        let plan = Plan {
            inventory: inv.clone(),
            delta: Some(crate::store::changes::Delta {
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
