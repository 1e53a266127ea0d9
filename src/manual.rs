//! Peers given with `up --peer HOST:PORT`, for machines no discovery
//! reaches (another subnet, a network that drops multicast). Each is
//! contacted once per announce interval over TCP: the hello says who it
//! is and its inventory digest, and the puller ([`crate::reach`]) fetches
//! its inventory like any other peer's. One that cannot be reached is retried with backoff and
//! expires from the dictionary like a silent multicast peer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use crate::api::FoundVia;
use crate::dict::Dict;
use crate::peer::dial::{DialError, Dialer};
use crate::retry::{Retry, RetryPolicy};

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// An unreachable manual peer is tried again after twice the interval,
/// doubling up to `max(30 s, interval)`; one that answers, after the
/// interval.
fn retry_policy(interval: Duration) -> RetryPolicy {
    let max = MAX_BACKOFF.max(interval);
    RetryPolicy::new((interval * 2).min(max), max)
}

/// Checks a `HOST:PORT` argument (the host is resolved later, on every try).
pub fn parse_target(s: &str) -> Result<String, String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{s:?} has no valid port"))?;
    if host.is_empty() || port == 0 {
        return Err(format!("{s:?} is not HOST:PORT"));
    }
    Ok(s.to_string())
}

/// Keeps one manual peer fresh until cancelled.
pub async fn follow(
    dict: Arc<Dict>,
    dialer: Dialer,
    target: String,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut retry = Retry::new(retry_policy(interval));
    let mut warned = false;
    loop {
        let delay = match refresh(&dict, &dialer, &target, interval).await {
            Ok(()) => {
                if warned {
                    tracing::info!(peer = %target, "manual peer is reachable again");
                }
                warned = false;
                retry.succeeded();
                interval
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(peer = %target, error = %e, "cannot reach manual peer; retrying with backoff");
                    warned = true;
                } else {
                    tracing::debug!(peer = %target, error = %e, "manual peer still unreachable");
                }
                retry.failed(Instant::now())
            }
        };
        if cancel
            .run_until_cancelled(tokio::time::sleep(delay))
            .await
            .is_none()
        {
            return;
        }
    }
}

async fn refresh(
    dict: &Dict,
    dialer: &Dialer,
    target: &str,
    interval: Duration,
) -> anyhow::Result<()> {
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(target).await?.collect();
    if addrs.is_empty() {
        anyhow::bail!("{target} resolves to no address");
    }
    let conn = match dialer.dial_unknown(&addrs).await {
        Ok(conn) => conn,
        Err(DialError::Myself) => anyhow::bail!("{target} is this node itself"),
        Err(e) => return Err(e.into()),
    };
    let (id, name, addr) = (conn.remote_node, conn.remote_name.clone(), conn.addr);
    if !dict.peers.is_online(&id) {
        tracing::info!(peer = %conn.label(), "manual peer reached");
    }
    // The puller fetches its inventory when the digest is new.
    let seen = crate::dict::Sighting {
        id,
        name: &name,
        addr,
        via: FoundVia::Manual,
        interval,
        digest: conn.remote_digest,
        contents: conn.remote_contents,
    };
    let now = std::time::Instant::now();
    dict.observe(seen, now);
    dict.peers
        .reached(id, addr, conn.remote_digest, conn.remote_contents, now);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_unchanged() {
        // Today's rule: the wait starts at the interval, doubles on every
        // failure up to max(30 s, interval), and is the interval again
        // after a success.
        for secs in [1u64, 5, 10, 20, 30, 60] {
            let interval = Duration::from_secs(secs);
            let mut retry = Retry::new(retry_policy(interval));
            let mut old = interval;
            let now = Instant::now();
            for _ in 0..8 {
                old = (old * 2).min(MAX_BACKOFF.max(interval));
                assert_eq!(retry.failed(now), old, "interval {secs}s");
            }
        }
    }

    #[test]
    fn targets() {
        assert!(parse_target("10.0.0.2:7373").is_ok());
        assert!(parse_target("host.lan:7373").is_ok());
        assert!(parse_target("[::1]:7373").is_ok());
        assert!(parse_target("host").is_err());
        assert!(parse_target("host:0").is_err());
        assert!(parse_target(":7373").is_err());
        assert!(parse_target("host:99999").is_err());
    }
}
