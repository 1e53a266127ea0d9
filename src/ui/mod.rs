//! The web dashboard and its HTTP JSON API (`/api/v1/`, docs/api.md),
//! served by `lanshare up`: [`bind`] takes the address (127.0.0.1:7380 by
//! default, a free port when that is taken, `--ui`, or none with
//! `--no-ui`) and the API token; [`BoundUi::serve`] answers until the node
//! stops. Every answer comes from the [`Service`], as the control socket's
//! do. This module owns the HTTP side only: the router, the guards of
//! [`auth`], the routes of [`routes`], the event stream of [`events`] and
//! the page's files of [`assets`]; it never reads the store or the
//! dictionary itself.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::{Context, bail};
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;
use tokio::net::TcpListener;

use crate::config::{DEFAULT_UI_PORT, NodeConfig, UiListen};
use crate::service::Service;
use crate::store::Home;
use crate::task::Tasks;

mod assets;
pub mod auth;
mod events;
mod routes;

pub use auth::{Auth, load_or_create_token};

/// Largest request body the API reads.
pub const MAX_BODY: usize = 64 * 1024;

/// The dashboard's socket, bound, and what guards it.
pub struct BoundUi {
    listener: TcpListener,
    pub addr: SocketAddr,
    auth: Arc<Auth>,
}

/// Binds the dashboard as `cfg.ui` says, or returns `None` (`--no-ui`).
/// Refuses a non-loopback address without `--ui-password`. Creates the
/// API token (`HOME/.lanshare/api-token`, mode 0600) at first start.
pub async fn bind(cfg: &NodeConfig) -> anyhow::Result<Option<BoundUi>> {
    let listener = match &cfg.ui {
        UiListen::Off => return Ok(None),
        UiListen::At(addr) => {
            if !addr.ip().is_loopback() && cfg.ui_password.is_none() {
                bail!(
                    "refusing to serve the dashboard on {addr} without a password: anyone on the network could use it. Set --ui-password (or LANSHARE_UI_PASSWORD), or use a loopback address such as 127.0.0.1:{DEFAULT_UI_PORT}"
                );
            }
            TcpListener::bind(addr).await.with_context(|| {
                format!("cannot serve the dashboard on {addr}; is another program using that port? Pick another with --ui ADDR:PORT (port 0 picks a free one), or --no-ui")
            })?
        }
        UiListen::Default => {
            let default = SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_UI_PORT));
            match TcpListener::bind(default).await {
                Ok(l) => l,
                Err(e) => {
                    let l = TcpListener::bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
                        .await
                        .context("cannot serve the dashboard on any port of 127.0.0.1")?;
                    tracing::warn!(
                        "dashboard port {DEFAULT_UI_PORT} is taken ({e}); serving it on {} instead",
                        l.local_addr()?
                    );
                    l
                }
            }
        }
    };
    let addr = listener.local_addr()?;
    let home = Home::new(&cfg.home);
    let token = load_or_create_token(&home.state_dir().join("api-token"))?;
    let auth = Arc::new(Auth::new(&token, addr, cfg.ui_password.clone()));
    Ok(Some(BoundUi {
        listener,
        addr,
        auth,
    }))
}

/// What every handler shares.
#[derive(Clone)]
struct AppState {
    service: Arc<Service>,
    auth: Arc<Auth>,
    hub: Arc<events::Hub>,
    /// Where event streams run (`stream`), stopped with the node.
    tasks: Tasks,
}

impl BoundUi {
    /// Answers requests until `tasks` is cancelled; the event hub is the
    /// task `events` of `tasks`.
    pub async fn serve(self, service: Arc<Service>, tasks: Tasks) {
        let hub = Arc::new(events::Hub::new());
        tasks.spawn_until_cancelled("events", hub.clone().run(service.clone()));
        let state = AppState {
            service,
            auth: self.auth.clone(),
            hub,
            tasks: tasks.clone(),
        };
        let api = routes::api()
            .layer(middleware::from_fn_with_state(
                state.clone(),
                auth::api_guard,
            ))
            .with_state(state.clone());
        let app = Router::new()
            .nest("/api/v1", api)
            .merge(assets::pages().with_state(state.clone()))
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .layer(middleware::from_fn_with_state(state, auth::host_guard));
        let cancel = tasks.token();
        let served = axum::serve(self.listener, app)
            .with_graceful_shutdown(async move { cancel.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!(error = %e, "the dashboard stopped");
        }
    }
}
