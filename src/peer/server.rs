//! The uploader: a TCP server that serves manifests, chunks and the
//! inventory of what this node holds, looked up by content id only.
//! Connections are limited in number, per address and per address range
//! ([`Slots`]); a connection must finish its handshake and send its first
//! request promptly, and when every slot is taken the idlest connection is
//! closed to admit a newcomer, so idle connections cannot hold the uploader
//! hostage. Chunk bytes go from the page cache to the socket with
//! sendfile(2): no buffer per connection, so memory does not grow with the
//! number of connections. Every transfer served is logged when its
//! connection ends.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::PeerError;
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
    /// Open connections at most. When every slot is taken, a newcomer
    /// closes the idlest connection (see [`evict_after`](Self::evict_after))
    /// or waits in the kernel's accept queue.
    pub max_connections: usize,
    /// Open connections from one address at most, so one host (or a flood
    /// of idle connections from it) cannot take every slot.
    pub max_per_address: usize,
    /// Open connections from one address range (IPv4 /24, IPv6 /64) at
    /// most, so a host with many addresses cannot take every slot either.
    pub max_per_range: usize,
    /// The preamble and hello must arrive within this long.
    pub handshake_timeout: Duration,
    /// A connection that sends no request this long after its hello is closed.
    pub first_request_timeout: Duration,
    /// A connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// When every slot is taken, a connection with no request read and no
    /// byte sent for this long is closed to admit a newcomer.
    pub evict_after: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_connections: 64,
            max_per_address: 16,
            max_per_range: 48,
            handshake_timeout: Duration::from_secs(3),
            first_request_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            evict_after: Duration::from_secs(1),
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
        let tracker = tokio_util::task::TaskTracker::new();
        let slots = Slots::new(self.limits.clone());
        loop {
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
            // Every slot busy: wait for one to free or for a connection to
            // fall idle, while the newcomer's handshake could still succeed;
            // later connections wait in the kernel's accept queue meanwhile.
            let waited = Instant::now();
            let slot = loop {
                match slots.admit(addr.ip()) {
                    Admit::Admitted(slot) => break Some(slot),
                    Admit::Refused(why) => {
                        tracing::debug!(peer = %addr, "{why}; refusing one");
                        break None;
                    }
                    Admit::Full if waited.elapsed() >= self.limits.handshake_timeout => {
                        tracing::debug!(peer = %addr, "every connection slot stayed busy; refusing one");
                        break None;
                    }
                    Admit::Full => {
                        tokio::select! {
                            _ = cancel.cancelled() => break None,
                            _ = slots.freed.notified() => {}
                            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                        }
                    }
                }
            };
            let Some(slot) = slot else { continue };
            let this = self.clone();
            let cancel = cancel.clone();
            tracker.spawn(async move {
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = this.serve(stream, addr, &slot) => {}
                }
                drop(slot);
            });
        }
        tracker.close();
        tracker.wait().await;
    }

    async fn serve(&self, stream: TcpStream, addr: SocketAddr, slot: &Slot) {
        let _ = stream.set_nodelay(true);
        let mut conn = Conn {
            stats: HashMap::new(),
            peer_label: addr.to_string(),
        };
        let result = tokio::select! {
            r = self.serve_inner(stream, addr, &mut conn, &slot.activity) => r,
            _ = slot.evicted.cancelled() => {
                tracing::debug!(peer = %addr, "closing an idle connection to admit a newcomer");
                Err(PeerError::Timeout("idle while every connection slot was wanted"))
            }
        };
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
        activity: &Activity,
    ) -> Result<(), PeerError> {
        let (r, w) = stream.into_split();
        let mut reader = BufReader::with_capacity(16 * 1024, r);
        let mut writer = BufWriter::with_capacity(256 * 1024, w);
        let mut body = Vec::with_capacity(256);

        // Handshake: preamble and hello, under one deadline.
        let hello = tokio::time::timeout(self.limits.handshake_timeout, async {
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
        // A peer that says hello must then ask for something soon: a
        // connection that only holds a slot is closed early.
        let mut first = true;
        loop {
            // Flush only when no further request is already buffered, so
            // pipelined requests are answered in one burst.
            if reader.buffer().is_empty() {
                writer.flush().await?;
                activity.touch();
            }
            let (limit, what) = if first {
                (
                    self.limits.first_request_timeout,
                    "waiting for a first request",
                )
            } else {
                (self.limits.idle_timeout, "idle")
            };
            let req = match tokio::time::timeout(limit, read_request(&mut reader, &mut body)).await
            {
                Err(_) => return Err(PeerError::Timeout(what)),
                Ok(r) => r?,
            };
            first = false;
            activity.touch();
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
                            send_range(writer.get_ref().as_ref(), &chunk, activity).await?;
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

/// Sends a chunk's bytes straight from the file to the socket (sendfile
/// on Linux, see [`crate::platform`]); each step forward counts as
/// activity (a connection streaming a chunk is not idle).
async fn send_range(
    stream: &TcpStream,
    chunk: &ChunkRef,
    activity: &Activity,
) -> std::io::Result<()> {
    crate::platform::send_file_range(stream, &chunk.file, chunk.offset, chunk.len, || {
        activity.touch()
    })
    .await
}

/// The address range a connection counts against: the /24 of an IPv4
/// address, the /64 of an IPv6 one (one host can hold a whole /64).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Range {
    V4([u8; 3]),
    V6([u8; 8]),
}

fn range_of(ip: IpAddr) -> Range {
    match ip.to_canonical() {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            Range::V4([o[0], o[1], o[2]])
        }
        IpAddr::V6(v6) => {
            let mut r = [0u8; 8];
            r.copy_from_slice(&v6.octets()[..8]);
            Range::V6(r)
        }
    }
}

/// When a connection last did something: read a request or sent bytes.
struct Activity {
    epoch: Instant,
    /// Milliseconds since `epoch`.
    last_ms: AtomicU64,
}

impl Activity {
    fn new(epoch: Instant) -> Activity {
        let a = Activity {
            epoch,
            last_ms: AtomicU64::new(0),
        };
        a.touch();
        a
    }

    fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long the connection has done nothing, as of `now_ms`.
    fn idle_ms(&self, now_ms: u64) -> u64 {
        now_ms.saturating_sub(self.last_ms.load(Ordering::Relaxed))
    }
}

/// The connection slots: how many are open, from which address and range,
/// and how idle each is, so a newcomer can take the place of the idlest.
struct Slots {
    limits: ServerLimits,
    epoch: Instant,
    inner: std::sync::Mutex<SlotsInner>,
    /// Poked when a connection ends.
    freed: Notify,
}

#[derive(Default)]
struct SlotsInner {
    next: u64,
    open: HashMap<u64, Open>,
    per_address: HashMap<IpAddr, usize>,
    per_range: HashMap<Range, usize>,
}

struct Open {
    ip: IpAddr,
    range: Range,
    activity: Arc<Activity>,
    evict: CancellationToken,
}

/// One open connection's place; released on drop.
struct Slot {
    slots: Arc<Slots>,
    id: u64,
    activity: Arc<Activity>,
    /// Fires when the connection must close to admit a newcomer.
    evicted: CancellationToken,
}

enum Admit {
    Admitted(Slot),
    /// Refused at once, for this reason.
    Refused(&'static str),
    /// Every slot is taken by a connection too busy to close: retry later.
    Full,
}

impl Slots {
    fn new(limits: ServerLimits) -> Arc<Slots> {
        Arc::new(Slots {
            limits,
            epoch: Instant::now(),
            inner: Default::default(),
            freed: Notify::new(),
        })
    }

    /// Finds a place for a connection from `ip`, closing an idle (or an
    /// over-represented) connection when its range or the whole server is full.
    fn admit(self: &Arc<Self>, ip: IpAddr) -> Admit {
        let ip = ip.to_canonical();
        let range = range_of(ip);
        let now = self.epoch.elapsed().as_millis() as u64;
        let mut g = self.inner.lock().expect("slots lock");
        let from_ip = g.per_address.get(&ip).copied().unwrap_or(0);
        if from_ip >= self.limits.max_per_address {
            return Admit::Refused("too many connections from this address");
        }
        if g.per_range.get(&range).copied().unwrap_or(0) >= self.limits.max_per_range {
            match self.victim(&g, now, from_ip, |o| o.range == range) {
                Some(v) => g.evict(v),
                None => return Admit::Refused("too many busy connections from this address range"),
            }
        }
        if g.open.len() >= self.limits.max_connections {
            match self.victim(&g, now, from_ip, |_| true) {
                Some(v) => g.evict(v),
                None => return Admit::Full,
            }
        }
        g.next += 1;
        let id = g.next;
        let activity = Arc::new(Activity::new(self.epoch));
        let evicted = CancellationToken::new();
        g.open.insert(
            id,
            Open {
                ip,
                range,
                activity: activity.clone(),
                evict: evicted.clone(),
            },
        );
        *g.per_address.entry(ip).or_insert(0) += 1;
        *g.per_range.entry(range).or_insert(0) += 1;
        Admit::Admitted(Slot {
            slots: self.clone(),
            id,
            activity,
            evicted,
        })
    }

    /// The connection to close among those `eligible`, for a newcomer from
    /// an address that holds `from_ip` connections: the idlest, if it has
    /// been idle for `evict_after`; otherwise the idlest of the address
    /// holding the most connections, if that is more than the newcomer's
    /// address would hold (so a host with many busy connections yields to
    /// one with few, and an honest peer's only connection is never taken).
    fn victim(
        &self,
        g: &SlotsInner,
        now: u64,
        from_ip: usize,
        eligible: impl Fn(&Open) -> bool,
    ) -> Option<u64> {
        let idle_enough = self.limits.evict_after.as_millis() as u64;
        let idlest = g
            .open
            .iter()
            .filter(|(_, o)| eligible(o))
            .max_by_key(|(_, o)| o.activity.idle_ms(now))?;
        if idlest.1.activity.idle_ms(now) >= idle_enough {
            return Some(*idlest.0);
        }
        let (hog, held) = g
            .open
            .values()
            .filter(|o| eligible(o))
            .map(|o| (o.ip, g.per_address.get(&o.ip).copied().unwrap_or(0)))
            .max_by_key(|(_, n)| *n)?;
        if held <= from_ip + 1 {
            return None;
        }
        g.open
            .iter()
            .filter(|(_, o)| o.ip == hog)
            .max_by_key(|(_, o)| o.activity.idle_ms(now))
            .map(|(id, _)| *id)
    }

    /// Open connections (for tests and logs).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.inner.lock().expect("slots lock").open.len()
    }
}

impl SlotsInner {
    /// Forgets connection `id` (its place is free at once) and returns it.
    fn remove(&mut self, id: u64) -> Option<Open> {
        let o = self.open.remove(&id)?;
        decrement(&mut self.per_address, o.ip);
        decrement(&mut self.per_range, o.range);
        Some(o)
    }

    /// Closes connection `id` to make room: its place is free at once.
    fn evict(&mut self, id: u64) {
        if let Some(o) = self.remove(id) {
            o.evict.cancel();
        }
    }
}

fn decrement<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K) {
    if let Some(n) = map.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            map.remove(&key);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let removed = self
            .slots
            .inner
            .lock()
            .expect("slots lock")
            .remove(self.id)
            .is_some();
        if removed {
            self.slots.freed.notify_one();
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

    /// Slots whose clock started 100 s ago, so a connection can be made
    /// idle by setting its last activity to 0.
    fn slots(max: usize, per_address: usize, per_range: usize) -> Arc<Slots> {
        Arc::new(Slots {
            limits: ServerLimits {
                max_connections: max,
                max_per_address: per_address,
                max_per_range: per_range,
                ..ServerLimits::default()
            },
            epoch: Instant::now() - Duration::from_secs(100),
            inner: Default::default(),
            freed: Notify::new(),
        })
    }

    fn take(slots: &Arc<Slots>, ip: &str) -> Slot {
        match slots.admit(ip.parse().unwrap()) {
            Admit::Admitted(s) => s,
            Admit::Refused(why) => panic!("{ip} refused: {why}"),
            Admit::Full => panic!("{ip}: full"),
        }
    }

    fn idle(slot: &Slot) {
        slot.activity.last_ms.store(0, Ordering::Relaxed);
    }

    #[test]
    fn per_address_slots_are_capped_and_released() {
        let slots = slots(64, 2, 64);
        let a = take(&slots, "10.0.0.1");
        let _b = take(&slots, "10.0.0.1");
        assert!(matches!(
            slots.admit("10.0.0.1".parse().unwrap()),
            Admit::Refused(_)
        ));
        // An IPv4-mapped address is the same address.
        assert!(matches!(
            slots.admit("::ffff:10.0.0.1".parse().unwrap()),
            Admit::Refused(_)
        ));
        let _c = take(&slots, "10.0.0.2");
        drop(a);
        let _d = take(&slots, "10.0.0.1");
        assert_eq!(slots.len(), 3);
    }

    #[test]
    fn a_full_server_closes_the_idlest_connection_for_a_newcomer() {
        let slots = slots(4, 4, 64);
        let held: Vec<Slot> = (2..=5)
            .map(|i| take(&slots, &format!("10.0.{i}.1")))
            .collect();
        // All busy and one each: the newcomer waits.
        assert!(matches!(
            slots.admit("10.0.9.1".parse().unwrap()),
            Admit::Full
        ));
        idle(&held[1]);
        idle(&held[2]);
        held[2].activity.last_ms.store(10, Ordering::Relaxed);
        let _new = take(&slots, "10.0.9.1");
        assert!(held[1].evicted.is_cancelled(), "the idlest is closed");
        assert!(!held[2].evicted.is_cancelled() && !held[0].evicted.is_cancelled());
        assert_eq!(slots.len(), 4);
        // The evicted connection's slot is already free: dropping it later
        // does not free a second place.
        drop(held);
        assert_eq!(slots.len(), 1);
    }

    #[test]
    fn a_host_with_many_busy_connections_yields_to_one_with_few() {
        let slots = slots(4, 4, 64);
        let hog: Vec<Slot> = (0..3).map(|_| take(&slots, "10.0.1.1")).collect();
        let honest = take(&slots, "10.0.2.1");
        // Nothing idle, but 10.0.1.1 holds 3: a newcomer takes one of those.
        let _new = take(&slots, "10.0.3.1");
        assert_eq!(hog.iter().filter(|s| s.evicted.is_cancelled()).count(), 1);
        assert!(!honest.evicted.is_cancelled());
        // Now 2, 1, 1: the hog holds 2, a newcomer would hold 1; still one more.
        let _new2 = take(&slots, "10.0.4.1");
        assert!(!honest.evicted.is_cancelled());
        // 1 each: nobody busy is taken for a newcomer.
        assert!(matches!(
            slots.admit("10.0.5.1".parse().unwrap()),
            Admit::Full
        ));
        assert!(!honest.evicted.is_cancelled());
    }

    #[test]
    fn one_address_range_is_capped_and_makes_room_from_its_own_idle_connections() {
        let slots = slots(64, 16, 3);
        let a = take(&slots, "192.168.1.10");
        let b = take(&slots, "192.168.1.11");
        let c = take(&slots, "192.168.1.12");
        // The range is full and every connection busy: refused.
        assert!(matches!(
            slots.admit("192.168.1.13".parse().unwrap()),
            Admit::Refused(_)
        ));
        // Another range is not affected.
        let other = take(&slots, "192.168.2.10");
        idle(&other);
        // An idle connection in the range makes room; the other range's
        // idler one is left alone.
        idle(&b);
        b.activity.last_ms.store(50, Ordering::Relaxed);
        let _d = take(&slots, "192.168.1.13");
        assert!(b.evicted.is_cancelled());
        assert!(!a.evicted.is_cancelled() && !c.evicted.is_cancelled());
        assert!(!other.evicted.is_cancelled());
        // IPv6: a /64 is one range.
        let v6: Vec<Slot> = (1..=3)
            .map(|i| take(&slots, &format!("2001:db8::{i}")))
            .collect();
        assert!(matches!(
            slots.admit("2001:db8::ffff".parse().unwrap()),
            Admit::Refused(_)
        ));
        let _e = take(&slots, "2001:db8:0:1::1");
        drop(v6);
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
