//! The tracker's HTTP server: routes, extractors that turn every bad
//! request into a 4xx with a JSON `{"error": ...}`, the admission limits
//! (connections, requests in flight, inventory uploads, body sizes) and the
//! sweeper that marks silent nodes offline. All state lives in [`Db`];
//! handlers only validate, call it and shape the answer.
//!
//! This file holds the admission limits, the router, the sweeper and
//! `serve`; [`extract`] the extractors and errors, [`listener`] the
//! connection limits, [`routes`] the handlers, [`watch`] the long poll
//! and its own bound on waiting requests.

mod extract;
mod listener;
mod routes;
mod watch;

pub use extract::{ApiError, ApiJson, ApiQuery, Bearer, NodePath};
pub use listener::{LimitedListener, LimitedStream, RemoteAddr};
use routes::*;
pub use watch::{Refused, WatchSlot, Watchers};

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::TrackerConfig;
use super::db::{Db, Swept, now_ms};
use crate::task::Tasks;

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

/// What every handler shares.
#[derive(Clone)]
struct AppState {
    db: Db,
    cfg: Arc<TrackerConfig>,
    started: Instant,
    refused: Arc<AtomicU64>,
    in_flight: Arc<Semaphore>,
    uploads: Arc<Semaphore>,
    /// Long polls waiting (`GET /v1/watch`), bounded apart from `in_flight`.
    watchers: Arc<Watchers>,
    /// Fires when the tracker stops: waiting watches answer at once.
    shutdown: CancellationToken,
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
        // After the admission layer: a waiting watch holds no request
        // slot; `Watchers` bounds them, and each wait is bounded in time.
        .route("/v1/watch", get(watch::watch))
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

/// Every `period`, marks silent nodes offline and prunes old ones.
async fn sweeper(db: Db, period: Duration, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while cancel.run_until_cancelled(tick.tick()).await.is_some() {
        let now = now_ms();
        match db.write(move |w| w.sweep(now)).await {
            Ok(Swept {
                offline: 0,
                pruned: 0,
            }) => {}
            Ok(Swept { offline, pruned }) => {
                tracing::info!(offline, pruned, "nodes went offline or were pruned")
            }
            Err(e) => tracing::warn!(error = %e, "sweeping silent nodes failed"),
        }
    }
}

/// Serves the API on `listener` until `tasks` is cancelled, then stops
/// taking connections and lets requests in progress finish (at most 5 s).
/// The sweeper is the task `sweeper` of `tasks`.
pub async fn serve(
    listener: TcpListener,
    db: Db,
    cfg: TrackerConfig,
    tasks: &Tasks,
) -> io::Result<()> {
    let shutdown = tasks.token();
    let period =
        (db.limits().offline_after / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    // Watches never take more than half of the connections.
    let max_watchers = cfg.max_watchers.min(cfg.max_connections / 2).max(1);
    let watchers = Watchers::new(max_watchers, cfg.max_watchers_per_address);
    let cfg = Arc::new(cfg);
    let state = AppState {
        db: db.clone(),
        cfg: cfg.clone(),
        started: Instant::now(),
        refused: Arc::new(AtomicU64::new(0)),
        in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
        uploads: Arc::new(Semaphore::new(MAX_UPLOADS)),
        watchers,
        shutdown: shutdown.clone(),
    };
    let stop_sweeper = shutdown.child_token();
    let sweep = tasks.spawn("sweeper", sweeper(db, period, stop_sweeper.clone()));
    let app = router(state).into_make_service_with_connect_info::<RemoteAddr>();
    let listener = LimitedListener::new(listener, cfg.max_connections, IDLE_TIMEOUT);
    let server =
        axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
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
