//! The optional tracker: a central registry for networks that multicast
//! cannot cross (`lanshare tracker`), and the node's client for it
//! (`lanshare up --tracker URL`).

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Args;

/// Default address of `lanshare tracker`.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:7374";

#[derive(Debug, Args)]
pub struct TrackerArgs {
    /// TCP address to serve the HTTP API on.
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,
    /// SQLite database file (created when missing).
    #[arg(long, value_name = "FILE", default_value = "lanshare-tracker.db")]
    pub db: PathBuf,
}

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

/// Runs the tracker until Ctrl-C / SIGTERM.
pub async fn run(args: TrackerArgs) -> anyhow::Result<()> {
    anyhow::bail!(
        "the tracker at {} ({}) is not built yet",
        args.listen,
        args.db.display()
    )
}
