//! The API's handlers, one per route: each validates its request, calls
//! the database and shapes the answer (docs/tracker.md lists them). The
//! admission limits and the router are `super`'s.

use std::sync::atomic::Ordering;

use axum::Json;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::extract::{SigOnly, Signature, SignedJson};
use super::{ApiError, ApiQuery, AppState, Bearer, NodePath, RemoteAddr};
use crate::id::NodeId;
use crate::manifest::Category;
use crate::tracker::db::{Caller, now_ms};
use crate::tracker::proto::{
    AnnounceResponse, DEFAULT_PEERS_LIMIT, DEFAULT_SEARCH_LIMIT, FullAnnounce, HeartbeatRequest,
    HeartbeatResponse, MAX_PEERS_LIMIT, MAX_QUERY, MAX_SEARCH_LIMIT, MAX_WATCH_SECS, PatchAnnounce,
    PeersQuery, RegisterRequest, RegisterResponse, SearchQuery, SearchResponse, Stats, check_addrs,
};
use crate::tracker::{proto, read};

pub(super) async fn register(
    State(s): State<AppState>,
    ConnectInfo(remote): ConnectInfo<RemoteAddr>,
    SignedJson(req, sig): SignedJson<RegisterRequest>,
) -> Result<Response, ApiError> {
    req.check_name().map_err(ApiError::invalid)?;
    check_addrs(&req.addrs).map_err(ApiError::invalid)?;
    if req.port == 0 {
        return Err(ApiError::invalid(
            "port 0 is not a port a peer can connect to",
        ));
    }
    if req.key.node_id() != req.id {
        return Err(ApiError::unauthorized(format!(
            "id {} is not the id of the key sent (a node id derives from its public key: {})",
            req.id,
            req.key.node_id()
        )));
    }
    let proof = sig.verify(&req.key)?;
    let source = remote.ip();
    let now = now_ms();
    let (id, name) = (req.id, req.name.clone());
    let r =
        s.db.write(move |w| w.register(&req, proof.seq, source, now))
            .await?;
    tracing::info!(node = %id.short(), %name, %source, new = r.created, "node registered");
    let body = RegisterResponse {
        token: r.token,
        heartbeat_secs: s.cfg.heartbeat.as_secs_f64(),
        offline_after_secs: s.db.limits().offline_after.as_secs_f64(),
        observed_addr: source,
        epoch: s.db.epoch().to_string(),
        max_files: s.db.limits().max_files_per_node.min(u32::MAX as u64) as u32,
        stored_digest: r.stored_digest,
        watch_secs: Some(MAX_WATCH_SECS),
    };
    let status = if r.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(body)).into_response())
}

pub(super) async fn heartbeat(
    State(s): State<AppState>,
    ConnectInfo(remote): ConnectInfo<RemoteAddr>,
    NodePath(id): NodePath,
    Bearer(token): Bearer,
    SignedJson(req, sig): SignedJson<HeartbeatRequest>,
) -> Result<Json<HeartbeatResponse>, ApiError> {
    if let Some(addrs) = &req.addrs {
        check_addrs(addrs).map_err(ApiError::invalid)?;
    }
    let caller = prove(&s, id, token, &sig).await?;
    let source = remote.ip();
    let now = now_ms();
    let send =
        s.db.write(move |w| w.heartbeat(&caller, req.digest, req.addrs.as_deref(), source, now))
            .await?;
    Ok(Json(HeartbeatResponse {
        send_inventory: send,
        heartbeat_secs: s.cfg.heartbeat.as_secs_f64(),
        observed_addr: source,
    }))
}

/// Verifies a node's signed request with the key stored for it: 404 when
/// the tracker does not know the node, 401 when the signature is missing
/// or wrong (the sequence number is checked by the writer, atomically).
async fn prove(
    s: &AppState,
    id: NodeId,
    token: String,
    sig: &Signature,
) -> Result<Caller, ApiError> {
    let key = s.db.read(move |c| read::node_key(c, id)).await?;
    let key = match key {
        None => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!(
                    "node {id} is not registered with this tracker; register it again (POST /v1/nodes)"
                ),
            ));
        }
        Some(None) => {
            return Err(ApiError::unauthorized(format!(
                "node {id} was registered before requests were signed; register again (POST /v1/nodes, signed)"
            )));
        }
        Some(Some(k)) => k,
    };
    let proof = sig.verify(&key)?;
    Ok(Caller { id, token, proof })
}

/// Checks entries and that no content id appears twice.
fn check_entries<'a>(
    entries: impl IntoIterator<Item = &'a proto::Entry>,
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

pub(super) async fn announce_full(
    State(s): State<AppState>,
    ConnectInfo(remote): ConnectInfo<RemoteAddr>,
    NodePath(id): NodePath,
    Bearer(token): Bearer,
    SignedJson(req, sig): SignedJson<FullAnnounce>,
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
    let caller = prove(&s, id, token, &sig).await?;
    let source = remote.ip();
    let now = now_ms();
    let n = req.entries.len();
    let (digest, files) =
        s.db.write(move |w| w.announce_full(&caller, &req, source, now))
            .await?;
    tracing::debug!(node = %id.short(), entries = n, "full inventory announced");
    Ok(Json(AnnounceResponse { digest, files }))
}

pub(super) async fn announce_patch(
    State(s): State<AppState>,
    ConnectInfo(remote): ConnectInfo<RemoteAddr>,
    NodePath(id): NodePath,
    Bearer(token): Bearer,
    SignedJson(req, sig): SignedJson<PatchAnnounce>,
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
    let caller = prove(&s, id, token, &sig).await?;
    let source = remote.ip();
    let now = now_ms();
    let (digest, files) =
        s.db.write(move |w| w.announce_patch(&caller, &req, source, now))
            .await?;
    Ok(Json(AnnounceResponse { digest, files }))
}

pub(super) async fn deregister(
    State(s): State<AppState>,
    NodePath(id): NodePath,
    Bearer(token): Bearer,
    SigOnly(sig): SigOnly,
) -> Result<StatusCode, ApiError> {
    let caller = prove(&s, id, token, &sig).await?;
    s.db.write(move |w| w.deregister(&caller)).await?;
    tracing::info!(node = %id.short(), "node deregistered");
    Ok(StatusCode::NO_CONTENT)
}

pub(super) async fn peers(
    State(s): State<AppState>,
    ApiQuery(q): ApiQuery<PeersQuery>,
) -> Result<Json<proto::PeersResponse>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_PEERS_LIMIT);
    if !(1..=MAX_PEERS_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(format!(
            "limit must be between 1 and {MAX_PEERS_LIMIT}"
        )));
    }
    if q.epoch.as_ref().is_some_and(|e| e.len() > 64) {
        return Err(ApiError::bad_request("epoch is too long"));
    }
    let swarm = q.swarm_tag().map_err(ApiError::bad_request)?;
    let epoch = s.db.epoch().to_string();
    let resp =
        s.db.read(move |c| read::peers(c, &epoch, q.since, q.epoch.as_deref(), limit, swarm))
            .await?;
    Ok(Json(resp))
}

pub(super) async fn search(
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

pub(super) async fn stats(State(s): State<AppState>) -> Result<Json<Stats>, ApiError> {
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
        watchers: s.watchers.waiting() as u64,
        max_watchers: s.watchers.max_total() as u64,
    }))
}

pub(super) async fn health(State(s): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    s.db.read(|c| Ok(c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?))
        .await?;
    Ok(Json(
        serde_json::json!({ "ok": true, "epoch": s.db.epoch() }),
    ))
}
