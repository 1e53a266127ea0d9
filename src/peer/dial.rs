//! The one way to open a connection to a peer: try its addresses in
//! order, best first, say hello, and check the node id it answers with.
//! Every address that fails or answers as another node is marked
//! unreachable in the dictionary, the one that answers as the peer is
//! marked reached, so the next dial starts with it.
//!
//! Owns the order and time limits of connection attempts and the id
//! check; never reads or sends anything after the hello (that is
//! [`super::client::PeerConn`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::PeerError;
use super::client::{FALLBACK_CONNECT_TIMEOUT, PeerConn};
use crate::dict::Dict;
use crate::id::NodeId;

/// Why a dial found no connection.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The last address tried answered the hello as another node (an
    /// address reused, or a forged listing).
    #[error("answered as a different node")]
    WrongNode,
    /// The only node that answered is this one.
    #[error("answered as this node itself")]
    Myself,
    #[error(transparent)]
    Peer(#[from] PeerError),
}

/// Connects to peers as this node (its id and name go in every hello).
#[derive(Clone)]
pub struct Dialer {
    me: NodeId,
    name: Arc<str>,
    dict: Arc<Dict>,
}

impl Dialer {
    pub fn new(me: NodeId, name: &str, dict: Arc<Dict>) -> Dialer {
        Dialer {
            me,
            name: name.into(),
            dict,
        }
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.me
    }

    /// Connects to `id` at the first of `addrs` that answers as `id`,
    /// waiting at most `last_limit` on the last address and
    /// [`FALLBACK_CONNECT_TIMEOUT`] (or `last_limit` if shorter) on the
    /// others. Each address that fails or answers as another node is
    /// marked unreachable; the one that answers is marked reached.
    pub async fn dial(
        &self,
        id: NodeId,
        addrs: &[SocketAddr],
        last_limit: Duration,
    ) -> Result<PeerConn, DialError> {
        let mut last = DialError::Peer(PeerError::Closed);
        for (i, addr) in addrs.iter().enumerate() {
            let limit = if i + 1 < addrs.len() {
                FALLBACK_CONNECT_TIMEOUT.min(last_limit)
            } else {
                last_limit
            };
            match PeerConn::connect_within(*addr, self.me, &self.name, limit).await {
                Ok(conn) if conn.remote_node == id => {
                    self.dict.peers.reached(
                        id,
                        *addr,
                        conn.remote_digest,
                        conn.remote_contents,
                        Instant::now(),
                    );
                    return Ok(conn);
                }
                Ok(_) => {
                    self.dict.peers.unreachable(id, *addr);
                    last = DialError::WrongNode;
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "cannot reach peer at this address");
                    self.dict.peers.unreachable(id, *addr);
                    last = DialError::Peer(e);
                }
            }
        }
        Err(last)
    }

    /// Connects to whichever node answers first at `addrs`, in order (a
    /// peer known by its address only), with the limits of
    /// [`Dialer::dial`] and [`super::CONNECT_TIMEOUT`] on the last one.
    /// Refuses this node itself; touches no dictionary entry.
    pub async fn dial_unknown(&self, addrs: &[SocketAddr]) -> Result<PeerConn, DialError> {
        let mut last = DialError::Peer(PeerError::Connect(std::io::Error::new(
            std::io::ErrorKind::AddrNotAvailable,
            "no known address",
        )));
        for (i, addr) in addrs.iter().enumerate() {
            let limit = if i + 1 < addrs.len() {
                FALLBACK_CONNECT_TIMEOUT
            } else {
                super::CONNECT_TIMEOUT
            };
            match PeerConn::connect_within(*addr, self.me, &self.name, limit).await {
                Ok(conn) if conn.remote_node == self.me => return Err(DialError::Myself),
                Ok(conn) => return Ok(conn),
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "cannot reach peer at this address; trying the next");
                    last = DialError::Peer(e);
                }
            }
        }
        Err(last)
    }
}
