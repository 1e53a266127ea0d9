//! The one way to open a connection to a peer: try its addresses in
//! order, best first, run the handshake, and check the node id it proves
//! (its key signed the handshake's static key: an id cannot be claimed).
//! An address that answers as another node is marked unreachable in the
//! dictionary, and so is one that fails to connect unless the dialer was
//! made with [`Dialer::keeping_failed`] (a download's: a refused connect
//! there must not cost a holder its preferred address); the one that
//! answers as the peer is marked reached, so the next dial starts with it.
//!
//! Owns the order and time limits of connection attempts and the id
//! check; never reads or sends anything after the handshake (that is
//! [`super::client::PeerConn`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::PeerError;
use super::client::{FALLBACK_CONNECT_TIMEOUT, PeerConn};
use crate::dict::Dict;
use crate::id::NodeId;
use crate::identity::Identity;
use crate::swarm::Mode;

/// Why a dial found no connection.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The last address tried proved another node's id (an address
    /// reused, or a forged listing).
    #[error("answered as a different node")]
    WrongNode,
    /// The only node that answered is this one.
    #[error("answered as this node itself")]
    Myself,
    #[error(transparent)]
    Peer(#[from] PeerError),
}

/// Connects to peers as this node: its key proves its id in every
/// handshake, in its swarm's mode; its name goes in every hello.
#[derive(Clone)]
pub struct Dialer {
    identity: Arc<Identity>,
    mode: Mode,
    name: Arc<str>,
    dict: Arc<Dict>,
    /// Whether an address that fails to connect is marked unreachable.
    mark_failed: bool,
}

impl Dialer {
    pub fn new(identity: Arc<Identity>, mode: Mode, name: &str, dict: Arc<Dict>) -> Dialer {
        Dialer {
            identity,
            mode,
            name: name.into(),
            dict,
            mark_failed: true,
        }
    }

    /// The same dialer, but an address that fails to connect stays as it
    /// is in the dictionary (only a wrong node's answer is marked).
    pub fn keeping_failed(mut self) -> Dialer {
        self.mark_failed = false;
        self
    }

    /// This node's id.
    pub fn me(&self) -> NodeId {
        self.identity.node_id()
    }

    async fn connect(&self, addr: SocketAddr, limit: Duration) -> Result<PeerConn, PeerError> {
        PeerConn::connect_within(addr, &self.identity, &self.mode, &self.name, limit).await
    }

    /// Connects to `id` at the first of `addrs` that answers as `id`,
    /// waiting at most `last_limit` on the last address and
    /// [`FALLBACK_CONNECT_TIMEOUT`] (or `last_limit` if shorter) on the
    /// others. Each address that answers as another node (or fails, see
    /// [`Dialer::keeping_failed`]) is marked unreachable; the one that
    /// answers is marked reached.
    pub async fn dial(
        &self,
        id: NodeId,
        addrs: &[SocketAddr],
        last_limit: Duration,
    ) -> Result<PeerConn, DialError> {
        let mut last = no_address();
        for (i, addr) in addrs.iter().enumerate() {
            let limit = if i + 1 < addrs.len() {
                FALLBACK_CONNECT_TIMEOUT.min(last_limit)
            } else {
                last_limit
            };
            match self.connect(*addr, limit).await {
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
                Ok(conn) => {
                    tracing::debug!(peer = %conn.label(), expected = %id.short(), "address proved another node");
                    self.dict.peers.unreachable(id, *addr);
                    last = DialError::WrongNode;
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "cannot reach peer at this address");
                    if self.mark_failed {
                        self.dict.peers.unreachable(id, *addr);
                    }
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
        let mut last = no_address();
        for (i, addr) in addrs.iter().enumerate() {
            let limit = if i + 1 < addrs.len() {
                FALLBACK_CONNECT_TIMEOUT
            } else {
                super::CONNECT_TIMEOUT
            };
            match self.connect(*addr, limit).await {
                Ok(conn) if conn.remote_node == self.me() => return Err(DialError::Myself),
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

/// The error of a dial with no address to try.
fn no_address() -> DialError {
    DialError::Peer(PeerError::Connect(std::io::Error::new(
        std::io::ErrorKind::AddrNotAvailable,
        "no known address",
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::FoundVia;
    use crate::dict::{DEFAULT_MAX_REMOTE_BYTES, DEFAULT_MAX_REMOTE_CONTENTS, Sighting};

    /// A loopback address where nothing listens (connect is refused).
    fn refused() -> SocketAddr {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    }

    /// A dictionary where `id` is known, with `addr` its preferred address.
    fn dict_with(id: NodeId, addr: SocketAddr) -> Arc<Dict> {
        let dict = Arc::new(Dict::with_limits(
            DEFAULT_MAX_REMOTE_CONTENTS,
            DEFAULT_MAX_REMOTE_BYTES,
        ));
        let seen = Sighting {
            id,
            name: "holder",
            addr,
            via: FoundVia::Multicast,
            interval: Duration::from_secs(1),
            digest: [0; 16],
            contents: 0,
        };
        let now = Instant::now();
        dict.observe(seen, now);
        dict.peers.reached(id, addr, [0; 16], 0, now);
        dict
    }

    fn dialer(me: Arc<Identity>, dict: Arc<Dict>) -> Dialer {
        Dialer::new(me, Mode::Open, "me", dict)
    }

    fn preferred(dict: &Dict, id: &NodeId) -> Option<SocketAddr> {
        dict.peers.peer(id).and_then(|p| p.preferred)
    }

    #[tokio::test]
    async fn a_refused_connect_costs_the_preferred_address_unless_kept() {
        let (me, id, addr) = (Arc::new(Identity::generate()), NodeId::random(), refused());
        let dict = dict_with(id, addr);
        assert_eq!(preferred(&dict, &id), Some(addr));
        let fetching = dialer(me.clone(), dict.clone()).keeping_failed();
        let e = fetching.dial(id, &[addr], Duration::from_secs(2)).await;
        assert!(matches!(e, Err(DialError::Peer(_))));
        assert_eq!(
            preferred(&dict, &id),
            Some(addr),
            "a download's dial kept it"
        );
        let probing = dialer(me, dict.clone());
        let e = probing.dial(id, &[addr], Duration::from_secs(2)).await;
        assert!(matches!(e, Err(DialError::Peer(_))));
        assert_eq!(preferred(&dict, &id), None, "reach's dial marks it");
    }

    /// A server at a loopback address whose handshakes prove `id`'s key,
    /// in open mode; serves until dropped.
    async fn server_as(id: Arc<Identity>) -> SocketAddr {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let hello = crate::peer::noise::server_hello(&id, "other", [0; 16], 0);
                let _ = crate::peer::noise::respond(&mut s, &id, &Mode::Open, &hello).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        addr
    }

    #[tokio::test]
    async fn an_address_that_proves_another_id_is_the_wrong_node() {
        let (expected, other) = (NodeId::random(), Arc::new(Identity::generate()));
        let addr = server_as(other.clone()).await;
        let dict = dict_with(expected, addr);
        let d = dialer(Arc::new(Identity::generate()), dict.clone());
        let e = d.dial(expected, &[addr], Duration::from_secs(2)).await;
        assert!(matches!(e, Err(DialError::WrongNode)), "{:?}", e.err());
        assert_eq!(preferred(&dict, &expected), None, "the address is marked");
        // The id it proves is reached, and one cannot dial one's own key.
        let conn = d
            .dial(other.node_id(), &[addr], Duration::from_secs(2))
            .await;
        assert_eq!(conn.unwrap().remote_node, other.node_id());
        let myself = dialer(other, dict).dial_unknown(&[addr]).await;
        assert!(
            matches!(myself, Err(DialError::Myself)),
            "{:?}",
            myself.err()
        );
    }

    #[tokio::test]
    async fn a_holder_without_an_address_says_so() {
        let dict = dict_with(NodeId::random(), refused());
        let dialer = dialer(Arc::new(Identity::generate()), dict);
        let e = dialer
            .dial(NodeId::random(), &[], Duration::from_secs(1))
            .await;
        let text = e.err().expect("no address, no connection").to_string();
        assert!(text.contains("no known address"), "{text}");
    }
}
