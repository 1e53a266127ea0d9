//! The tracker's HTTP server: routes, extractors that turn every bad
//! request into a 4xx with a JSON `{"error": ...}`, the admission limits
//! (connections, requests in flight, inventory uploads, body sizes) and the
//! sweeper that marks silent nodes offline. All state lives in [`Db`];
//! handlers only validate, call it and shape the answer.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::connect_info::Connected;
use axum::extract::rejection::JsonRejection;
use axum::extract::{
    ConnectInfo, DefaultBodyLimit, FromRequest, FromRequestParts, Path, Query, Request, State,
};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::TrackerConfig;
use super::db::{Db, DbError, now_ms};
use super::proto::{
    AnnounceResponse, DEFAULT_PEERS_LIMIT, DEFAULT_SEARCH_LIMIT, ErrorBody, FullAnnounce,
    HeartbeatRequest, HeartbeatResponse, MAX_PEERS_LIMIT, MAX_QUERY, MAX_SEARCH_LIMIT,
    PatchAnnounce, PeersQuery, RegisterRequest, RegisterResponse, SearchQuery, SearchResponse,
    Stats, check_addrs, check_node_name, hex16_string,
};
use super::read;
use crate::id::NodeId;
use crate::manifest::Category;

/// Body limit of every route but the inventory uploads.
pub const SMALL_BODY: usize = 64 * 1024;
/// Requests handled at once; more wait up to [`ADMISSION_WAIT`], then get 503.
pub const MAX_IN_FLIGHT: usize = 256;
/// Inventory bodies read and applied at once (each up to `--max-body`).
pub const MAX_UPLOADS: usize = 4;
/// How long a request waits for a free slot before it gets 503.
pub const ADMISSION_WAIT: Duration = Duration::from_secs(5);
/// A request that takes longer (including reading its body) gets 408.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// A connection with no byte read or written for this long is closed. It
/// is longer than any request may take (admission wait + [`REQUEST_TIMEOUT`]),
/// so only idle connections are cut.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(75);

/// An error answer: a status and `{"error": message}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub stored_digest: Option<[u8; 16]>,
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
            stored_digest: None,
        }
    }
    fn bad_request(m: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, m)
    }
    fn invalid(m: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, m)
    }
}

impl From<DbError> for ApiError {
    fn from(e: DbError) -> Self {
        let status = match &e {
            DbError::Invalid(_) => StatusCode::UNPROCESSABLE_ENTITY,
            DbError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            DbError::UnknownNode(_) => StatusCode::NOT_FOUND,
            DbError::Conflict { .. } => StatusCode::CONFLICT,
            DbError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            DbError::Full(_) => StatusCode::SERVICE_UNAVAILABLE,
            DbError::Quota(_) => StatusCode::TOO_MANY_REQUESTS,
            DbError::Sql(_) | DbError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() && status != StatusCode::SERVICE_UNAVAILABLE {
            tracing::error!(error = %e, "request failed inside the tracker");
        }
        let stored_digest = match &e {
            DbError::Conflict { stored, .. } => *stored,
            _ => None,
        };
        ApiError {
            status,
            message: e.to_string(),
            stored_digest,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.message,
            stored_digest: self.stored_digest.map(|d| hex16_string(&d)),
        };
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
        }
        resp
    }
}

/// `Json<T>` whose rejections are JSON errors that say what is wrong.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(rej) => {
                let status = rej.status();
                let message = match &rej {
                    JsonRejection::BytesRejection(_) if status == StatusCode::PAYLOAD_TOO_LARGE => {
                        "the request body is larger than this route accepts (see docs/tracker.md: 64 KiB, or --max-body for inventories; send a big inventory in parts)".to_string()
                    }
                    JsonRejection::MissingJsonContentType(_) => {
                        "send the body as JSON with the header Content-Type: application/json".into()
                    }
                    _ => rej.body_text(),
                };
                Err(ApiError::new(status, message))
            }
        }
    }
}

/// `Query<T>` whose rejection is a JSON 400.
pub struct ApiQuery<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(v)| ApiQuery(v))
            .map_err(|rej| ApiError::bad_request(rej.body_text()))
    }
}

/// The `{id}` of a node route, parsed.
pub struct NodePath(pub NodeId);

impl<S: Send + Sync> FromRequestParts<S> for NodePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|rej| ApiError::bad_request(rej.body_text()))?;
        raw.parse().map(NodePath).map_err(|_| {
            ApiError::bad_request(format!(
                "{:?} in the path is not a node id (32 hex digits)",
                raw.chars().take(80).collect::<String>()
            ))
        })
    }
}

/// The token of `Authorization: Bearer TOKEN`.
pub struct Bearer(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Bearer {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, m);
        let value = parts.headers.get(header::AUTHORIZATION).ok_or_else(|| {
            unauthorized(
                "missing the header Authorization: Bearer TOKEN (the token POST /v1/nodes returned)",
            )
        })?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty() && t.len() <= 128)
            .ok_or_else(|| unauthorized("the Authorization header is not \"Bearer TOKEN\""))?;
        Ok(Bearer(token.to_string()))
    }
}

/// The client's address, from the connection.
#[derive(Clone, Copy, Debug)]
pub struct RemoteAddr(pub SocketAddr);

impl Connected<axum::serve::IncomingStream<'_, LimitedListener>> for RemoteAddr {
    fn connect_info(stream: axum::serve::IncomingStream<'_, LimitedListener>) -> Self {
        RemoteAddr(*stream.remote_addr())
    }
}

impl RemoteAddr {
    fn ip(&self) -> IpAddr {
        self.0.ip().to_canonical()
    }
}

/// A TCP listener that holds at most `max` connections open: accepting
/// waits for a free slot, and a slot frees when its connection closes.
pub struct LimitedListener {
    inner: TcpListener,
    slots: Arc<Semaphore>,
    idle: Duration,
}

impl LimitedListener {
    /// At most `max` connections; each closed after `idle` without traffic.
    pub fn new(inner: TcpListener, max: usize, idle: Duration) -> Self {
        LimitedListener {
            inner,
            slots: Arc::new(Semaphore::new(max.max(1))),
            idle,
        }
    }
}

impl axum::serve::Listener for LimitedListener {
    type Io = LimitedStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the connection semaphore is never closed");
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    return (
                        LimitedStream {
                            inner: stream,
                            _slot: permit,
                            idle: Box::pin(tokio::time::sleep(self.idle)),
                            idle_timeout: self.idle,
                        },
                        addr,
                    );
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
                    ) => {}
                Err(e) => {
                    // Out of file descriptors, most likely: wait for some to close.
                    tracing::warn!(error = %e, "accept failed; retrying in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// A connection that frees its listener slot when dropped, and fails with
/// `TimedOut` (which makes hyper close it) after [`IDLE_TIMEOUT`] without
/// a byte in either direction, so idle keep-alive connections cannot hold
/// the slots forever.
pub struct LimitedStream {
    inner: TcpStream,
    _slot: OwnedSemaphorePermit,
    idle: Pin<Box<tokio::time::Sleep>>,
    idle_timeout: Duration,
}

impl LimitedStream {
    fn active(&mut self) {
        self.idle
            .as_mut()
            .reset(tokio::time::Instant::now() + self.idle_timeout);
    }

    /// Called when the socket is not ready: an error once idle too long.
    fn check_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        match self.idle.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "connection idle too long",
            )),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncRead for LimitedStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.check_idle(cx).map(Err),
        }
    }
}

impl AsyncWrite for LimitedStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(r) => {
                self.active();
                Poll::Ready(r)
            }
            Poll::Pending => self.check_idle(cx).map(Err),
        }
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(r) => {
                self.active();
                Poll::Ready(r)
            }
            Poll::Pending => self.check_idle(cx).map(Err),
        }
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// What every handler shares.
#[derive(Clone)]
struct AppState {
    db: Db,
    cfg: Arc<TrackerConfig>,
    started: Instant,
    refused: Arc<AtomicU64>,
    in_flight: Arc<Semaphore>,
    uploads: Arc<Semaphore>,
}

impl AppState {
    fn busy(&self, what: &str) -> ApiError {
        self.refused.fetch_add(1, Ordering::Relaxed);
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("the tracker is busy ({what}); retry in a few seconds"),
        )
    }
}

/// Admission: a bounded number of requests run at once, each within
/// [`REQUEST_TIMEOUT`].
async fn admit(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let permit =
        match tokio::time::timeout(ADMISSION_WAIT, s.in_flight.clone().acquire_owned()).await {
            Ok(Ok(p)) => p,
            _ => {
                return s
                    .busy(&format!("{MAX_IN_FLIGHT} requests in progress"))
                    .into_response();
            }
        };
    let resp = match tokio::time::timeout(REQUEST_TIMEOUT, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            format!(
                "the request took longer than {} s (a body sent too slowly?)",
                REQUEST_TIMEOUT.as_secs()
            ),
        )
        .into_response(),
    };
    drop(permit);
    resp
}

/// Inventory uploads are big: only [`MAX_UPLOADS`] bodies are read at once.
async fn upload_gate(State(s): State<AppState>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(ADMISSION_WAIT * 2, s.uploads.clone().acquire_owned()).await {
        Ok(Ok(permit)) => {
            let resp = next.run(req).await;
            drop(permit);
            resp
        }
        _ => s
            .busy(&format!("{MAX_UPLOADS} inventory uploads in progress"))
            .into_response(),
    }
}

/// Builds the router. `serve` runs it; tests may too.
fn router(state: AppState) -> Router {
    let max_body = state.cfg.max_body;
    let inventory = axum::routing::put(announce_full)
        .patch(announce_patch)
        .layer(DefaultBodyLimit::max(max_body))
        .layer(middleware::from_fn_with_state(state.clone(), upload_gate));
    Router::new()
        .route("/v1/nodes", post(register))
        .route("/v1/nodes/{id}", axum::routing::delete(deregister))
        .route("/v1/nodes/{id}/heartbeat", post(heartbeat))
        .route("/v1/nodes/{id}/inventory", inventory)
        .route("/v1/peers", get(peers))
        .route("/v1/search", get(search))
        .route("/v1/stats", get(stats))
        .route("/v1/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(SMALL_BODY))
        .layer(middleware::from_fn_with_state(state.clone(), admit))
        .with_state(state)
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        format!(
            "no route {} {}; the API is under /v1 (see docs/tracker.md)",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "{} is not allowed on {} (see docs/tracker.md)",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn register(
    State(s): State<AppState>,
    ConnectInfo(remote): ConnectInfo<RemoteAddr>,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<Response, ApiError> {
    check_node_name(&req.name).map_err(ApiError::invalid)?;
    check_addrs(&req.addrs).map_err(ApiError::invalid)?;
    if req.port == 0 {
        return Err(ApiError::invalid(
            "port 0 is not a port a peer can connect to",
        ));
    }
    let source = remote.ip();
    let now = now_ms();
    let (id, name) = (req.id, req.name.clone());
    let r = s.db.write(move |w| w.register(&req, source, now)).await?;
    tracing::info!(node = %id.short(), %name, %source, new = r.created, "node registered");
    let body = RegisterResponse {
        token: r.token,
        heartbeat_secs: s.cfg.heartbeat.as_secs_f64(),
        offline_after_secs: s.db.limits().offline_after.as_secs_f64(),
        observed_addr: source,
        epoch: s.db.epoch().to_string(),
        max_files: s.db.limits().max_files_per_node.min(u32::MAX as u64) as u32,
        stored_digest: r.stored_digest,
    };
    let status = if r.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(body)).into_response())
}

async fn heartbeat(
    State(s): State<AppState>,
    ConnectInfo(remote): ConnectInfo<RemoteAddr>,
    NodePath(id): NodePath,
    Bearer(token): Bearer,
    ApiJson(req): ApiJson<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    if let Some(addrs) = &req.addrs {
        check_addrs(addrs).map_err(ApiError::invalid)?;
    }
    let source = remote.ip();
    let now = now_ms();
    let send =
        s.db.write(move |w| w.heartbeat(id, &token, req.digest, req.addrs.as_deref(), source, now))
            .await?;
    Ok(Json(HeartbeatResponse {
        send_inventory: send,
        heartbeat_secs: s.cfg.heartbeat.as_secs_f64(),
        observed_addr: source,
    }))
}

/// Checks entries and that no content id appears twice.
fn check_entries<'a>(
    entries: impl IntoIterator<Item = &'a super::proto::Entry>,
    field: &str,
) -> Result<(), ApiError> {
    let mut seen = std::collections::HashSet::new();
    for (i, e) in entries.into_iter().enumerate() {
        e.check()
            .map_err(|m| ApiError::invalid(format!("{field}[{i}]: {m}")))?;
        if !seen.insert(e.id) {
            return Err(ApiError::invalid(format!(
                "{field}[{i}]: content {} is listed twice",
                e.id
            )));
        }
    }
    Ok(())
}

async fn announce_full(
    State(s): State<AppState>,
    ConnectInfo(remote): ConnectInfo<RemoteAddr>,
    NodePath(id): NodePath,
    Bearer(token): Bearer,
    ApiJson(req): ApiJson<FullAnnounce>,
) -> Result<Json<AnnounceResponse>, ApiError> {
    let cap = s.db.limits().max_files_per_node;
    if req.entries.len() as u64 > cap {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} entries sent; the tracker stores at most {cap} per node",
                req.entries.len()
            ),
        ));
    }
    if !req.more && req.digest.is_none() {
        return Err(ApiError::invalid(
            "digest is required (null only with \"more\": true)",
        ));
    }
    check_entries(&req.entries, "entries")?;
    let source = remote.ip();
    let now = now_ms();
    let n = req.entries.len();
    let (digest, files) =
        s.db.write(move |w| w.announce_full(id, &token, &req, source, now))
            .await?;
    tracing::debug!(node = %id.short(), entries = n, "full inventory announced");
    Ok(Json(AnnounceResponse { digest, files }))
}

async fn announce_patch(
    State(s): State<AppState>,
    ConnectInfo(remote): ConnectInfo<RemoteAddr>,
    NodePath(id): NodePath,
    Bearer(token): Bearer,
    ApiJson(req): ApiJson<PatchAnnounce>,
) -> Result<Json<AnnounceResponse>, ApiError> {
    let cap = s.db.limits().max_files_per_node;
    if (req.upsert.len() + req.remove.len()) as u64 > cap * 2 {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "{} upserts and {} removals sent; the tracker stores at most {cap} entries per node",
                req.upsert.len(),
                req.remove.len()
            ),
        ));
    }
    if !req.more && req.digest.is_none() {
        return Err(ApiError::invalid(
            "digest is required (null only with \"more\": true)",
        ));
    }
    check_entries(&req.upsert, "upsert")?;
    let removed: std::collections::HashSet<_> = req.remove.iter().collect();
    if let Some(i) = req.upsert.iter().position(|e| removed.contains(&e.id)) {
        return Err(ApiError::invalid(format!(
            "upsert[{i}]: content {} is also in remove",
            req.upsert[i].id
        )));
    }
    let source = remote.ip();
    let now = now_ms();
    let (digest, files) =
        s.db.write(move |w| w.announce_patch(id, &token, &req, source, now))
            .await?;
    Ok(Json(AnnounceResponse { digest, files }))
}

async fn deregister(
    State(s): State<AppState>,
    NodePath(id): NodePath,
    Bearer(token): Bearer,
) -> Result<StatusCode, ApiError> {
    s.db.write(move |w| w.deregister(id, &token)).await?;
    tracing::info!(node = %id.short(), "node deregistered");
    Ok(StatusCode::NO_CONTENT)
}

async fn peers(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<PeersQuery>,
) -> Result<Json<super::proto::PeersResponse>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_PEERS_LIMIT);
    if !(1..=MAX_PEERS_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_PEERS_LIMIT}"
        )));
    }
    if q.epoch.as_ref().is_some_and(|e| e.len() > 64) {
        return Err(ApiError::bad_request("epoch is too long"));
    }
    let epoch = s.db.epoch().to_string();
    let resp =
        s.db.read(move |c| read::peers(c, &epoch, q.since, q.epoch.as_deref(), limit))
            .await?;
    Ok(Json(resp))
}

async fn search(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<SearchQuery>,
) -> Result<Json<SearchResponse>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_SEARCH_LIMIT);
    if !(1..=MAX_SEARCH_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_SEARCH_LIMIT}"
        )));
    }
    if let Some(text) = &q.q
        && (text.len() > MAX_QUERY || text.chars().any(char::is_control))
    {
        return Err(ApiError::bad_request(format!(
            "q must be at most {MAX_QUERY} bytes without control characters"
        )));
    }
    let category = match q.category.as_deref() {
        None | Some("") => None,
        Some(c) => Some(c.parse::<Category>().map_err(ApiError::bad_request)?),
    };
    let text = q.q;
    let (contents, truncated) =
        s.db.read(move |c| read::search(c, text.as_deref(), category, limit))
            .await?;
    Ok(Json(SearchResponse {
        contents,
        truncated,
    }))
}

async fn stats(State(s): State<AppState>) -> Result<Json<Stats>, ApiError> {
    let (nodes_online, nodes_offline, files, files_online) = s.db.read(read::counts).await?;
    let l = s.db.limits();
    Ok(Json(Stats {
        version: env!("CARGO_PKG_VERSION").to_string(),
        epoch: s.db.epoch().to_string(),
        uptime_secs: s.started.elapsed().as_secs_f64(),
        nodes_online,
        nodes_offline,
        files,
        files_online,
        db_bytes: s.db.disk_bytes(),
        heartbeat_secs: s.cfg.heartbeat.as_secs_f64(),
        offline_after_secs: l.offline_after.as_secs_f64(),
        prune_after_secs: l.prune_after.as_secs_f64(),
        max_nodes: l.max_nodes,
        max_nodes_per_address: l.max_nodes_per_address,
        max_files: l.max_files,
        max_files_per_node: l.max_files_per_node,
        refused: s.refused.load(Ordering::Relaxed),
    }))
}

async fn health(State(s): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    s.db.read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
        .await?;
    Ok(Json(
        serde_json::json!({ "ok": true, "epoch": s.db.epoch() }),
    ))
}

/// Every `period`, marks silent nodes offline and prunes old ones.
async fn sweeper(db: Db, period: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = now_ms();
        match db.write(move |w| w.sweep(now)).await {
            Ok((0, 0)) => {}
            Ok((offline, pruned)) => {
                tracing::info!(offline, pruned, "nodes went offline or were pruned")
            }
            Err(e) => tracing::warn!(error = %e, "sweeping silent nodes failed"),
        }
    }
}

/// Serves the API on `listener` until `shutdown` fires, then stops taking
/// connections and lets requests in progress finish (at most 5 s).
pub async fn serve(
    listener: TcpListener,
    db: Db,
    cfg: TrackerConfig,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let period =
        (db.limits().offline_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    let cfg = Arc::new(cfg);
    let state = AppState {
        db: db.clone(),
        cfg: cfg.clone(),
        started: Instant::now(),
        refused: Arc::new(AtomicU64::new(0)),
        in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        uploads: Arc::new(Semaphore::new(MAX_UPLOADS)),
    };
    let stop_sweeper = shutdown.child_token();
    let sweep = tokio::spawn(sweeper(db, period, stop_sweeper.clone()));
    let app = router(state).into_make_service_with_connect_info::<RemoteAddr>();
    let listener = LimitedListener::new(listener, cfg.max_connections, IDLE_TIMEOUT);
    let signal = shutdown.clone();
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        signal.cancelled().await;
    });
    let mut server = std::pin::pin!(server.into_future());
    let result = tokio::select! {
        r = &mut server => r,
        _ = async {
            shutdown.cancelled().await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        } => {
            tracing::warn!("requests still running 5 s after the stop signal; stopping anyway");
            Ok(())
        }
    };
    stop_sweeper.cancel();
    let _ = sweep.await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::serve::Listener;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn idle_connections_are_cut_and_slots_are_bounded() {
        let idle = Duration::from_millis(300);
        let inner = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut l = LimitedListener::new(inner, 1, idle);
        let addr = l.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).await.unwrap();
        let (mut conn, _) = l.accept().await;

        // Traffic keeps a connection alive; silence ends it.
        let start = Instant::now();
        let writer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            client.write_all(b"x").await.unwrap();
            client
        });
        let mut buf = [0u8; 4];
        assert_eq!(conn.read(&mut buf).await.unwrap(), 1);
        let err = conn.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(480), "cut after {took:?}");
        let _client = writer.await.unwrap();

        // The only slot is still taken: a second connection is not accepted.
        let _second = TcpStream::connect(addr).await.unwrap();
        let waited = tokio::time::timeout(Duration::from_millis(200), l.accept()).await;
        assert!(waited.is_err(), "accepted past the cap");

        // Closing the connection frees its slot.
        drop(conn);
        let accepted = tokio::time::timeout(Duration::from_secs(5), l.accept()).await;
        assert!(
            accepted.is_ok(),
            "the freed slot takes the waiting connection"
        );
    }
}
