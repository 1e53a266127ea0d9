//! The uploader: a TCP server that serves manifests, chunks and the
//! inventory of what this node holds, looked up by content id only.
//! Connections are limited in number, per address and per address range
//! ([`super::slots`]); a connection must finish its handshake and send its
//! first request promptly, and when every slot is taken the idlest
//! connection is closed to admit a newcomer, so idle connections cannot
//! hold the uploader hostage. Chunk bytes go from the page cache to the
//! socket with sendfile(2) ([`super::sendfile`]): no buffer per connection,
//! so memory does not grow with the number of connections. Every transfer
//! served is logged when its connection ends.
//!
//! This file accepts, admits and logs; each connection is served by a
//! [`Session`] over a [`super::conn::FramedConn`]. It never reads a frame
//! itself.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::PeerError;
use super::session::Session;
use super::slots::{Admit, Slot, Slots};
use crate::dict::Dict;
use crate::identity::Identity;
use crate::logs::{Transfer, TransferLog};
use crate::store::Store;
use crate::swarm::Mode;
use crate::task::Tasks;
use crate::warn_once::WarnOnce;

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
    /// The preamble and the handshake must be done within this long.
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

/// Who a server is: the key its handshakes prove, its swarm, its name.
#[derive(Clone)]
pub struct Local {
    pub identity: Arc<Identity>,
    pub mode: Mode,
    pub name: String,
}

pub struct Server {
    pub store: Arc<Store>,
    pub dict: Arc<Dict>,
    /// The node's counters: malformed connections, inventory bytes served.
    pub stats: Arc<crate::stats::Stats>,
    pub me: Local,
    pub upload_log: TransferLog,
    pub limits: ServerLimits,
    /// Poked when a served file turns out to have changed on disk.
    pub rescan: Arc<tokio::sync::Notify>,
    /// "Another swarm" is said once per address per period.
    other_swarm: WarnOnce<std::net::IpAddr>,
    /// Where a client asking for peers, offering its own port, goes as a hint.
    pub exchange: Option<Arc<crate::exchange::Exchange>>,
}

impl Server {
    pub fn new(
        store: Arc<Store>,
        dict: Arc<Dict>,
        stats: Arc<crate::stats::Stats>,
        me: Local,
        limits: ServerLimits,
        rescan: Arc<tokio::sync::Notify>,
    ) -> Self {
        let upload_log = TransferLog::new(&store.home().upload_log());
        Server {
            store,
            dict,
            stats,
            me,
            upload_log,
            limits,
            rescan,
            other_swarm: WarnOnce::default(),
            exchange: None,
        }
    }

    /// Accepts connections until `tasks` is cancelled; each connection is
    /// the task `conn` of `tasks`, stopped when `tasks` is cancelled.
    pub async fn run(self: Arc<Self>, listener: TcpListener, tasks: Tasks) {
        let cancel = tasks.token();
        let slots = Slots::new(self.limits.clone());
        while let Some(accepted) = cancel.run_until_cancelled(listener.accept()).await {
            let (stream, addr) = match accepted {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // A dual-stack listener sees IPv4 peers as ::ffff:a.b.c.d.
            let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
            let slot = self.wait_for_slot(&slots, addr, &cancel).await;
            let Some(slot) = slot else { continue };
            let this = self.clone();
            tasks.spawn_until_cancelled("conn", async move {
                this.serve(stream, addr, &slot).await;
                drop(slot);
            });
        }
    }

    /// A slot for a connection from `addr`. When every slot is busy, waits
    /// for one to free or for a connection to fall idle, while the
    /// newcomer's handshake could still succeed; later connections wait in
    /// the kernel's accept queue meanwhile. `None`: refused.
    async fn wait_for_slot(
        &self,
        slots: &Arc<Slots>,
        addr: SocketAddr,
        cancel: &CancellationToken,
    ) -> Option<Slot> {
        let waited = Instant::now();
        loop {
            match slots.admit(addr.ip(), Instant::now()) {
                Admit::Admitted(slot) => return Some(slot),
                Admit::Refused(why) => {
                    tracing::debug!(peer = %addr, "{why}; refusing one");
                    return None;
                }
                Admit::Full if waited.elapsed() >= self.limits.handshake_timeout => {
                    tracing::debug!(peer = %addr, "every connection slot stayed busy; refusing one");
                    return None;
                }
                Admit::Full => {
                    tokio::select! {
                        _ = cancel.cancelled() => return None,
                        _ = slots.freed.notified() => {}
                        _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    }
                }
            }
        }
    }

    async fn serve(&self, stream: TcpStream, addr: SocketAddr, slot: &Slot) {
        let _ = stream.set_nodelay(true);
        let mut session = Session::new(self, addr, &slot.activity);
        let result = tokio::select! {
            r = session.run(stream) => r,
            _ = slot.evicted.cancelled() => {
                tracing::debug!(peer = %addr, "closing an idle connection to admit a newcomer");
                Err(PeerError::Timeout("idle while every connection slot was wanted"))
            }
        };
        self.note_end(addr, &result);
        let status = match &result {
            Ok(()) | Err(PeerError::Closed) => Ok(()),
            Err(e) => Err(e.to_string()),
        };
        for (id, s) in session.stats {
            self.upload_log.append(&Transfer {
                event: "upload",
                file: &s.name,
                bytes: s.bytes,
                id: &id,
                peers: std::slice::from_ref(&session.peer_label),
                duration: s.last.duration_since(s.first),
                result: status.clone(),
                sha256: None,
            });
        }
    }

    /// Logs why a connection ended; counts malformed ones.
    fn note_end(&self, addr: SocketAddr, result: &Result<(), PeerError>) {
        match result {
            Ok(()) | Err(PeerError::Closed) => {}
            Err(PeerError::OtherSwarm) => {
                if self.other_swarm.should_warn(addr.ip(), Instant::now()) {
                    tracing::warn!("peer {} is in another swarm (or has no key)", addr.ip());
                }
            }
            Err(e @ (PeerError::Handshake(_) | PeerError::Protocol(_) | PeerError::Unproven)) => {
                self.stats
                    .count(crate::stats::Counter::MalformedConnections);
                tracing::debug!(peer = %addr, error = %e, "dropped malformed connection");
            }
            Err(e) => tracing::debug!(peer = %addr, error = %e, "connection ended"),
        }
    }
}
