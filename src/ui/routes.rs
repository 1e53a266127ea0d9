//! The routes of `/api/v1/` (docs/api.md): each decodes and checks its
//! input, calls one [`crate::service::Service`] method and encodes the
//! answer as JSON; a bad input is a 4xx with `{"error": "..."}` saying
//! what is wrong. No behaviour of its own.

use std::path::PathBuf;
use std::time::Instant;

use axum::Json;
use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::{Deserialize, Serialize};

use super::AppState;
use crate::api::PeerView;
use crate::history::HistoryQuery;
use crate::library::{LibraryQuery, Order, SortKey};
use crate::manifest::Category;
use crate::service::FetchRefused;
use crate::transfers::TransfersView;

/// A refused request: its status and a sentence saying what is wrong.
#[derive(Debug)]
pub struct ApiError {
    code: StatusCode,
    message: String,
    /// Extra fields of the body (the candidates of an ambiguous fetch).
    extra: Option<serde_json::Value>,
}

impl ApiError {
    pub fn new(code: StatusCode, message: String) -> ApiError {
        ApiError {
            code,
            message,
            extra: None,
        }
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = serde_json::json!({ "error": self.message });
        if let (Some(extra), Some(map)) = (self.extra, body.as_object_mut())
            && let Some(e) = extra.as_object()
        {
            map.extend(e.clone());
        }
        (self.code, Json(body)).into_response()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> ApiError {
        ApiError::new(r.status(), format!("bad JSON body: {}", r.body_text()))
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> ApiError {
        ApiError::bad(format!("bad query string: {}", r.body_text()))
    }
}

type ApiResult<T> = Result<T, ApiError>;

/// The routes under `/api/v1/`.
pub fn api() -> Router<AppState> {
    Router::new()
        .route("/status", get(status))
        .route("/peers", get(peers))
        .route("/contents", get(contents))
        .route("/transfers", get(transfers))
        .route("/transfers/{n}", delete(cancel_one))
        .route("/cancel", post(cancel))
        .route("/fetch", post(fetch))
        .route(
            "/shares",
            get(shares)
                .post(add_share)
                .patch(edit_share)
                .delete(unshare),
        )
        .route("/history", get(history))
        .route("/events", get(super::events::stream))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "no such API route; see docs/api.md".into(),
            )
        })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "this route does not take that method; see docs/api.md".into(),
            )
        })
}

async fn status(State(s): State<AppState>) -> Json<crate::service::Overview> {
    Json(s.service.overview())
}

/// A peer with the current rates of transfers with it.
#[derive(Serialize)]
pub struct PeerRow {
    #[serde(flatten)]
    pub peer: PeerView,
    /// Bytes per second this node sends to the peer now.
    pub up_rate: f64,
    /// Bytes per second this node receives from the peer now.
    pub down_rate: f64,
}

/// The peers, with the rates of the transfers in `t` joined by name.
pub fn peer_rows(peers: Vec<PeerView>, t: &TransfersView) -> Vec<PeerRow> {
    let name_of = |label: &str| label.rsplit_once('@').map_or(label, |(n, _)| n).to_string();
    peers
        .into_iter()
        .map(|peer| {
            let up_rate = t
                .uploads
                .iter()
                .filter(|u| name_of(&u.peer) == peer.name)
                .fold(0.0, |sum, u| sum + u.rate);
            let down_rate = t
                .downloads
                .iter()
                .filter(|d| d.peers.iter().any(|p| name_of(&p.peer) == peer.name))
                .fold(0.0, |sum, d| sum + d.rate / d.peers.len().max(1) as f64);
            PeerRow {
                peer,
                up_rate,
                down_rate,
            }
        })
        .collect()
}

async fn peers(State(s): State<AppState>) -> Json<Vec<PeerRow>> {
    Json(peer_rows(s.service.peers(), &s.service.transfers()))
}

#[derive(Deserialize)]
struct ContentsParams {
    q: Option<String>,
    category: Option<String>,
    sort: Option<String>,
    order: Option<String>,
    offset: Option<usize>,
    limit: Option<usize>,
}

/// A value of a closed set, by its lowercase name.
fn parse_word<T: for<'de> Deserialize<'de>>(
    what: &str,
    v: &Option<String>,
    allowed: &str,
) -> ApiResult<Option<T>> {
    match v.as_deref().filter(|s| !s.is_empty()) {
        None => Ok(None),
        Some(word) => serde_json::from_value(serde_json::Value::String(word.to_lowercase()))
            .map(Some)
            .map_err(|_| ApiError::bad(format!("unknown {what} {word:?}; use one of {allowed}"))),
    }
}

async fn contents(
    State(s): State<AppState>,
    q: Result<Query<ContentsParams>, QueryRejection>,
) -> ApiResult<Json<crate::library::LibraryPage>> {
    let Query(p) = q?;
    let category: Option<Category> = parse_word(
        "category",
        &p.category,
        "audio, video, image, text, document, archive, other",
    )?;
    let sort: Option<SortKey> = parse_word("sort", &p.sort, "name, size, holders, category")?;
    let order: Option<Order> = parse_word("order", &p.order, "asc, desc")?;
    let limit = p.limit.unwrap_or(100);
    if limit == 0 || limit > crate::library::MAX_LIMIT {
        return Err(ApiError::bad(format!(
            "limit must be 1 to {}",
            crate::library::MAX_LIMIT
        )));
    }
    let query = LibraryQuery {
        query: p.q,
        category,
        sort: sort.unwrap_or_default(),
        order: order.unwrap_or_default(),
        offset: p.offset.unwrap_or(0),
        limit,
    };
    Ok(Json(s.service.contents(&query)))
}

async fn transfers(State(s): State<AppState>) -> Json<TransfersView> {
    Json(s.service.transfers())
}

#[derive(Serialize)]
struct Cancelled {
    cancelled: Vec<u64>,
}

fn cancelled(target: &str, hit: Vec<u64>) -> ApiResult<Json<Cancelled>> {
    if hit.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no running download is {target:?}; GET /api/v1/transfers lists them"),
        ));
    }
    Ok(Json(Cancelled { cancelled: hit }))
}

async fn cancel_one(
    State(s): State<AppState>,
    Path(n): Path<String>,
) -> ApiResult<Json<Cancelled>> {
    if n.parse::<u64>().is_err() {
        return Err(ApiError::bad(format!("{n:?} is not a transfer number")));
    }
    cancelled(&n, s.service.cancel(&n))
}

#[derive(Deserialize)]
struct CancelBody {
    target: String,
}

async fn cancel(
    State(s): State<AppState>,
    body: Result<Json<CancelBody>, JsonRejection>,
) -> ApiResult<Json<Cancelled>> {
    let Json(b) = body?;
    if b.target.trim().is_empty() {
        return Err(ApiError::bad(
            "target is empty: give a transfer number, a name or a content id",
        ));
    }
    cancelled(&b.target, s.service.cancel(&b.target))
}

#[derive(Deserialize)]
struct FetchBody {
    query: String,
}

async fn fetch(
    State(s): State<AppState>,
    body: Result<Json<FetchBody>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(b) = body?;
    let query = b.query.trim();
    if query.is_empty() || query.len() > 1024 {
        return Err(ApiError::bad(
            "query must be 1 to 1024 bytes: a name or a content id prefix",
        ));
    }
    match s.service.start_fetch(query).await {
        Ok(started) => Ok((StatusCode::ACCEPTED, Json(started)).into_response()),
        Err(e @ FetchRefused::NotFound(_)) => {
            Err(ApiError::new(StatusCode::NOT_FOUND, e.to_string()))
        }
        Err(e @ FetchRefused::Ambiguous { .. }) => {
            let message = e.to_string();
            let FetchRefused::Ambiguous { candidates, .. } = e else {
                unreachable!("matched above")
            };
            Err(ApiError {
                code: StatusCode::CONFLICT,
                message,
                extra: Some(serde_json::json!({ "candidates": candidates })),
            })
        }
    }
}

async fn shares(State(s): State<AppState>) -> Json<crate::service::SharesView> {
    Json(s.service.shares())
}

#[derive(Deserialize)]
struct ShareBody {
    path: PathBuf,
    #[serde(default)]
    comment: String,
    #[serde(default)]
    category: Option<Category>,
}

#[derive(Serialize)]
struct Shared {
    path: String,
}

async fn add_share(
    State(s): State<AppState>,
    body: Result<Json<ShareBody>, JsonRejection>,
) -> ApiResult<Response> {
    let Json(b) = body?;
    if !b.path.is_absolute() {
        return Err(ApiError::bad(format!(
            "{} is not an absolute path",
            b.path.display()
        )));
    }
    let abs = s
        .service
        .share(&b.path, b.comment, b.category)
        .map_err(|e| ApiError::bad(format!("{e:#}")))?;
    let path = abs.display().to_string();
    Ok((StatusCode::CREATED, Json(Shared { path })).into_response())
}

async fn edit_share(
    State(s): State<AppState>,
    body: Result<Json<ShareBody>, JsonRejection>,
) -> ApiResult<Json<Shared>> {
    let Json(b) = body?;
    s.service
        .edit_share(&b.path, b.comment, b.category)
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, format!("{e:#}")))?;
    Ok(Json(Shared {
        path: b.path.display().to_string(),
    }))
}

#[derive(Deserialize)]
struct PathParam {
    path: PathBuf,
}

async fn unshare(
    State(s): State<AppState>,
    q: Result<Query<PathParam>, QueryRejection>,
) -> ApiResult<Json<Shared>> {
    let Query(p) = q?;
    match s.service.unshare(&p.path) {
        Ok(true) => Ok(Json(Shared {
            path: p.path.display().to_string(),
        })),
        Ok(false) => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!(
                "{} is not a share added with `share` (GET /api/v1/shares lists them)",
                p.path.display()
            ),
        )),
        Err(e) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{e:#}"),
        )),
    }
}

#[derive(Deserialize)]
struct HistoryParams {
    event: Option<String>,
    q: Option<String>,
    limit: Option<usize>,
}

async fn history(
    State(s): State<AppState>,
    q: Result<Query<HistoryParams>, QueryRejection>,
) -> ApiResult<Json<Vec<crate::history::HistoryRow>>> {
    let Query(p) = q?;
    let event = p.event.filter(|e| !e.is_empty());
    if event
        .as_deref()
        .is_some_and(|e| e != "download" && e != "upload")
    {
        return Err(ApiError::bad("event must be download or upload"));
    }
    let started = Instant::now();
    let rows = s.service.history(&HistoryQuery {
        event,
        query: p.q,
        limit: p.limit.unwrap_or(200),
    });
    tracing::debug!(rows = rows.len(), elapsed = ?started.elapsed(), "history");
    Ok(Json(rows))
}
