//! The TCP peer protocol in action: [`server`] serves manifests, chunks and
//! inventories of what this node holds; [`client`] is one connection to a
//! peer's server; both speak through [`conn::FramedConn`] (frames, in
//! clear or inside [`record`]s) after the [`noise`] handshake that proves
//! both ends' ids. [`dial`] opens one to a peer by id over its addresses.
//! [`slots`] admits connections, [`session`] serves one, [`sendfile`]
//! sends chunk bytes. Frame encoding is in `wire::frame`.

pub mod client;
pub mod conn;
pub mod dial;
pub mod noise;
pub mod record;
mod sendfile;
pub mod server;
mod session;
mod slots;

use std::time::Duration;

/// Connecting to a peer gives up after this long.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The preamble and the handshake must be done within this long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// `name@addr id8 ✓`: a peer in the logs once a handshake proved its id.
pub fn verified_label(name: &str, addr: std::net::SocketAddr, id: &crate::id::NodeId) -> String {
    format!(
        "{}@{addr} {} \u{2713}",
        crate::logs::peer_name(name),
        id.short()
    )
}

#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("cannot connect: {0}")]
    Connect(std::io::Error),
    #[error("connection timed out while {0}")]
    Timeout(&'static str),
    #[error("handshake failed: {0}")]
    Handshake(crate::wire::WireError),
    #[error("connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol error: {0}")]
    Protocol(#[from] crate::wire::WireError),
    #[error("peer answered {code:?}: {message}")]
    Remote {
        code: crate::wire::frame::ErrorCode,
        message: String,
    },
    #[error("unexpected response to request {0}")]
    Unexpected(u32),
    #[error("peer closed the connection")]
    Closed,
    /// The other side's preamble names another mode, or (private mode) its
    /// first handshake message is not under this swarm's key.
    #[error("peer is in another swarm (or has no key)")]
    OtherSwarm,
    /// A hello's key did not sign the static key the handshake proved.
    #[error("peer did not prove its node id")]
    Unproven,
}
