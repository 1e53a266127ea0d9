//! Following the link set: the interface watcher ([`crate::netif`])
//! publishes it in a `watch` channel, and every discovery path that binds
//! to interfaces (multicast, mDNS) follows it through [`follow_links`].
//! Also datagram discovery's own part: joining the group and opening a
//! sending socket on new links, leaving vanished ones
//! ([`Discovery::set_links`]).

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::sockets::{Broadcasts, send_socket, sock_err};
use super::{Discovery, DiscoveryError};
use crate::netif::Link;

/// Calls `apply` with every new link set until cancelled or the watcher
/// is gone. The set current when it starts is not applied again: the
/// caller applied it when binding.
pub async fn follow_links<F: Future<Output = ()>>(
    mut rx: watch::Receiver<BTreeSet<Link>>,
    cancel: CancellationToken,
    mut apply: impl FnMut(BTreeSet<Link>) -> F,
) {
    while let Some(Ok(())) = cancel.run_until_cancelled(rx.changed()).await {
        let links = rx.borrow_and_update().clone();
        apply(links).await;
    }
}

impl Discovery {
    /// Joins the group (multicast) and opens a sending socket on `links`
    /// not yet used, and leaves the others. Returns the links that failed,
    /// with why.
    pub fn set_links(&self, links: &BTreeSet<Link>) -> Vec<(Link, DiscoveryError)> {
        let mut senders = self.senders.lock().expect("senders lock");
        let gone: Vec<Link> = senders
            .keys()
            .filter(|l| !links.contains(l))
            .cloned()
            .collect();
        for l in gone {
            senders.remove(&l);
            self.leave(&l);
            tracing::info!(link = %l, "discovery left an interface");
        }
        let mut failed = Vec::new();
        let mut added = false;
        let new: Vec<&Link> = links.iter().filter(|l| !senders.contains_key(l)).collect();
        for l in new {
            match self.join(l) {
                Some(Ok(s)) => {
                    let paths = self.link_paths(l);
                    tracing::info!(link = %l, paths, "discovery on an interface");
                    senders.insert(l.clone(), Arc::new(s));
                    added = true;
                }
                Some(Err(e)) => failed.push((l.clone(), e)),
                None => {}
            }
        }
        drop(senders);
        if added {
            self.announce_now.notify_one();
        }
        failed
    }

    /// The paths discovery takes on `l`, for the log.
    fn link_paths(&self, l: &Link) -> &'static str {
        let broadcast = self.paths.broadcast
            && matches!(
                l,
                Link::V4 {
                    broadcast: Some(_),
                    ..
                }
            );
        match (self.paths.multicast, broadcast) {
            (true, true) => "multicast, broadcast",
            (true, false) => "multicast",
            (false, true) => "broadcast",
            (false, false) => "none",
        }
    }

    /// Joins the group on `l` (multicast on) and opens its sending socket
    /// (with SO_BROADCAST where it broadcasts); `None` when there is no
    /// receiving socket of its family or no path to take on it.
    fn join(&self, l: &Link) -> Option<Result<tokio::net::UdpSocket, DiscoveryError>> {
        let broadcasts = match l {
            Link::V4 { broadcast, .. } if self.paths.broadcast && broadcast.is_some() => {
                Broadcasts::Yes
            }
            _ => Broadcasts::No,
        };
        if !self.paths.multicast && broadcasts == Broadcasts::No {
            return None;
        }
        let joined = match l {
            Link::V4 { .. } if !self.paths.multicast => {
                self.recv4.as_ref()?;
                Ok(())
            }
            Link::V4 { addr, .. } => self
                .recv4
                .as_ref()?
                .join_multicast_v4(*self.group4.ip(), *addr)
                .map_err(sock_err(format!("group {} on {l}", self.group4.ip()))),
            Link::V6 { index, .. } => self
                .recv6
                .as_ref()?
                .join_multicast_v6(self.group6.ip(), *index)
                .map_err(sock_err(format!("group {} on {l}", self.group6.ip()))),
        };
        Some(joined.and_then(|()| send_socket(l, broadcasts)))
    }

    /// Leaves the group on `l` (best effort: the link may be gone).
    fn leave(&self, l: &Link) {
        if !self.paths.multicast {
            return;
        }
        let _ = match l {
            Link::V4 { addr, .. } => self
                .recv4
                .as_ref()
                .map(|s| s.leave_multicast_v4(*self.group4.ip(), *addr)),
            Link::V6 { index, .. } => self
                .recv6
                .as_ref()
                .map(|s| s.leave_multicast_v6(self.group6.ip(), *index)),
        };
    }

    /// Follows the interface watcher's link set until cancelled. A new
    /// link gets a query and an announcement at once.
    pub async fn links(
        self: Arc<Self>,
        rx: watch::Receiver<BTreeSet<Link>>,
        cancel: CancellationToken,
    ) {
        let query = crate::wire::datagram::Datagram::Query {
            node: self.ctx.node,
        };
        follow_links(rx, cancel, |links| {
            for (l, e) in self.set_links(&links) {
                tracing::warn!(link = %l, error = %e, "cannot use this interface for discovery");
            }
            self.send_all(&query)
        })
        .await
    }
}
