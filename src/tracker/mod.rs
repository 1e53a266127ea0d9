//! The optional tracker: a central registry for networks that multicast
//! cannot cross (`lanshare tracker`), and the node's client for it
//! (`lanshare up --tracker URL`).
//!
//! - [`proto`]: the HTTP JSON bodies and the rules each field must pass;
//! - [`db`]: the state in SQLite (one writer thread, a pool of readers);
//! - [`read`]: the queries the readers run (peer lists, search, counts);
//! - [`server`]: the axum routes, admission limits and the offline sweeper;
//! - [`sign`]: the `X-Lanshare-Sig` header every change of a node carries;
//! - [`client`]: what a node runs to register, announce and learn peers.
//!
//! `docs/tracker.md` is the user's and implementer's reference.

pub mod client;
pub mod db;
pub mod proto;
pub mod read;
pub mod server;
pub mod sign;

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::task::Tasks;

pub use client::{NodeInfo, follow};
pub use db::{Db, Limits};

/// Default address of `lanshare tracker`.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7374";
/// Default of `--max-nodes-per-address`: room for a NAT or a lab host
/// running a few dozen nodes, far below `--max-nodes`.
pub const DEFAULT_MAX_NODES_PER_ADDRESS: u64 = 64;
/// Default of `--max-watchers`: waiting long polls in all.
pub const DEFAULT_MAX_WATCHERS: usize = 512;
/// Default of `--max-watchers-per-address`: one waiting long poll for each
/// node an address may register.
pub const DEFAULT_MAX_WATCHERS_PER_ADDRESS: usize = DEFAULT_MAX_NODES_PER_ADDRESS as usize;

#[derive(Debug, Args)]
pub struct TrackerArgs {
    /// TCP address to serve the HTTP API on (port 0 picks a free one).
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// SQLite database file (created when missing).
    #[arg(long, value_name = "FILE", default_value = "lanshare-tracker.db")]
    pub db: PathBuf,
    /// Seconds between a node's heartbeats (told to each node when it registers).
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = crate::config::secs_up_to(MAX_SECS))]
    pub heartbeat: Duration,
    /// A node silent for this many seconds is offline: its content is no longer offered.
    #[arg(long, value_name = "SECS", default_value = "35", value_parser = crate::config::secs_up_to(MAX_SECS))]
    pub offline_after: Duration,
    /// An offline node is forgotten after this many seconds (default: 7 days).
    #[arg(long, value_name = "SECS", default_value = "604800", value_parser = crate::config::secs_up_to(MAX_SECS))]
    pub prune_after: Duration,
    /// Most nodes remembered; when full, a node that never heartbeated nor announced, else the node offline the longest, is forgotten.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub max_nodes: u64,
    /// Most nodes registered from one source address; at the quota, its node offline the longest is forgotten, else the registration gets 429.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_NODES_PER_ADDRESS)]
    pub max_nodes_per_address: u64,
    /// Most inventory entries stored in total (all nodes).
    #[arg(long, value_name = "N", default_value_t = 2_000_000)]
    pub max_files: u64,
    /// Most inventory entries stored for one node.
    #[arg(long, value_name = "N", default_value_t = crate::wire::frame::MAX_INVENTORY_ENTRIES as u64)]
    pub max_files_per_node: u64,
    /// Largest inventory request body, in MiB (other requests: 64 KiB).
    #[arg(long, value_name = "MIB", default_value_t = 16)]
    pub max_body: usize,
    /// Most client connections open at once; more wait to be accepted.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub max_connections: usize,
    /// Most long polls (GET /v1/watch) waiting at once, at most half of --max-connections; more get 503 and poll per heartbeat.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_WATCHERS)]
    pub max_watchers: usize,
    /// Most long polls waiting at once from one source address; more get 429.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_WATCHERS_PER_ADDRESS)]
    pub max_watchers_per_address: usize,
}

/// The tracker's settings, checked.
#[derive(Clone, Debug)]
pub struct TrackerConfig {
    pub listen: SocketAddr,
    pub db: PathBuf,
    pub heartbeat: Duration,
    pub limits: Limits,
    /// Largest inventory body, in bytes.
    pub max_body: usize,
    pub max_connections: usize,
    /// Long polls waiting at once, in all and per source address.
    pub max_watchers: usize,
    pub max_watchers_per_address: usize,
}

impl TrackerConfig {
    pub fn from_args(a: &TrackerArgs) -> anyhow::Result<TrackerConfig> {
        if a.offline_after <= a.heartbeat {
            anyhow::bail!(
                "--offline-after ({:?}) must be longer than --heartbeat ({:?}), or every node would flap offline; use about 3 heartbeats",
                a.offline_after,
                a.heartbeat
            );
        }
        if a.prune_after < a.offline_after {
            anyhow::bail!("--prune-after must be at least --offline-after");
        }
        if a.max_nodes == 0
            || a.max_nodes_per_address == 0
            || a.max_files == 0
            || a.max_connections == 0
            || a.max_watchers == 0
            || a.max_watchers_per_address == 0
        {
            anyhow::bail!(
                "--max-nodes, --max-nodes-per-address, --max-files, --max-connections, --max-watchers and --max-watchers-per-address must be at least 1"
            );
        }
        if !(1..=1024).contains(&a.max_body) {
            anyhow::bail!("--max-body must be between 1 and 1024 MiB");
        }
        Ok(TrackerConfig {
            listen: a.listen,
            db: a.db.clone(),
            heartbeat: a.heartbeat,
            limits: Limits {
                max_nodes: a.max_nodes,
                max_nodes_per_address: a.max_nodes_per_address,
                max_files: a.max_files,
                max_files_per_node: a.max_files_per_node.min(a.max_files),
                offline_after: a.offline_after,
                prune_after: a.prune_after,
            },
            max_body: a.max_body << 20,
            max_connections: a.max_connections,
            max_watchers: a.max_watchers,
            max_watchers_per_address: a.max_watchers_per_address,
        })
    }
}

/// The longest span a tracker duration flag takes: a year.
const MAX_SECS: f64 = 31_536_000.0;
/// How long a stopping tracker waits for its tasks before naming the late ones.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Checks a `--tracker` URL: `http://HOST[:PORT][/PATH]`.
pub fn parse_url(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("http://")
        .ok_or_else(|| format!("{s:?}: a tracker URL starts with http://"))?;
    if rest.is_empty() || rest.starts_with('/') {
        return Err(format!("{s:?} has no host"));
    }
    Ok(s.trim_end_matches('/').to_string())
}

/// Binds `addr`, with a message that says what to do when it fails.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        let hint = match e.kind() {
            std::io::ErrorKind::AddrInUse => {
                "the port is taken (another tracker running?); choose another with --listen ADDR:PORT"
            }
            std::io::ErrorKind::PermissionDenied => {
                "ports below 1024 need privileges; choose another with --listen ADDR:PORT"
            }
            std::io::ErrorKind::AddrNotAvailable => {
                "that address is not one of this machine's; use 0.0.0.0 or one of its addresses"
            }
            _ => "check --listen",
        };
        anyhow::anyhow!("cannot listen on {addr}: {e}; {hint}")
    })
}

/// Runs the tracker until Ctrl-C / SIGTERM.
pub async fn run(args: TrackerArgs) -> anyhow::Result<()> {
    let mut cfg = TrackerConfig::from_args(&args)?;
    cfg.max_connections = raise_fd_limit(cfg.max_connections);
    let listener = bind(cfg.listen).await?;
    let (path, limits) = (cfg.db.clone(), cfg.limits.clone());
    let db = tokio::task::spawn_blocking(move || Db::open(&path, limits))
        .await
        .context("the database thread failed")??;
    let addr = listener
        .local_addr()
        .context("cannot read the bound address")?;
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(
            out,
            "lanshare tracker listening on http://{addr} (database {})",
            cfg.db.display()
        );
        if addr.ip().is_unspecified() {
            let _ = writeln!(
                out,
                "nodes join with: lanshare up --tracker http://<this machine's address>:{}",
                addr.port()
            );
        }
        let _ = out.flush();
    }
    let tasks = Tasks::new("tracker");
    tasks.spawn_until_cancelled("signal", stop_on_signal(tasks.token()));
    let served = server::serve(listener, db.clone(), cfg, &tasks).await;
    let _ = tasks.shutdown(STOP_GRACE).await;
    tokio::task::spawn_blocking(move || db.close(Duration::from_secs(5)))
        .await
        .ok();
    served.context("the tracker's HTTP server failed")?;
    eprintln!("lanshare tracker stopped");
    Ok(())
}

/// Raises the soft limit on open files so `want` connections fit (plus
/// the database and a margin); returns how many connections fit.
fn raise_fd_limit(want: usize) -> usize {
    const MARGIN: usize = 64;
    if let Some(limit) = crate::platform::raise_open_files((want + MARGIN) as u64) {
        let fits = (limit as usize).saturating_sub(MARGIN).max(16);
        if fits < want {
            tracing::warn!(
                wanted = want,
                fits,
                "the open-file limit (ulimit -n) is too low for --max-connections; serving at most {fits} connections at once"
            );
            return fits;
        }
    }
    want
}

/// Cancels `token` on Ctrl-C or SIGTERM.
pub async fn stop_on_signal(token: CancellationToken) {
    crate::platform::stop_requested().await;
    token.cancel();
}
