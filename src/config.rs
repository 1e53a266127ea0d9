//! The node's configuration, with documented defaults. Built by the CLI
//! from flags and `LANSHARE_*` variables; read by `node`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use crate::fetch::FetchLimits;
use crate::peer::server::ServerLimits;

/// Default multicast group: in 239.255.0.0/16, the IPv4 organization-local
/// scope (RFC 2365), so routers at the site edge never forward it.
pub const DEFAULT_GROUP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 73, 73), 7373);
/// Default TCP port; when it is taken and `--listen` was not given, the node
/// falls back to a port the system picks.
pub const DEFAULT_TCP_PORT: u16 = 7373;
pub const DEFAULT_ANNOUNCE_INTERVAL: Duration = Duration::from_secs(5);
pub const DEFAULT_SCAN_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Home directory (absolute).
    pub home: PathBuf,
    /// Extra files or folders to share besides HOME/shared.
    pub shares: Vec<PathBuf>,
    /// Name shown to peers (default: the host name).
    pub name: String,
    /// TCP address of the peer server; `None` means 0.0.0.0:7373 or any free port.
    pub listen: Option<SocketAddr>,
    /// IPv4 addresses whose interfaces discovery uses; empty means every
    /// up, multicast-capable, non-loopback interface.
    pub interfaces: Vec<Ipv4Addr>,
    pub group: SocketAddrV4,
    pub announce_interval: Duration,
    pub multicast: bool,
    pub mdns: bool,
    /// `HOST:PORT` of peers no discovery reaches.
    pub peers: Vec<String>,
    /// Base URLs (`http://host:port`) of trackers to register with.
    pub trackers: Vec<String>,
    /// How often shared folders are rescanned for changes.
    pub scan_interval: Duration,
    pub server: ServerLimits,
    pub fetch: FetchLimits,
}

impl NodeConfig {
    /// A configuration with every default, for `home`.
    pub fn new(home: PathBuf) -> Self {
        NodeConfig {
            home,
            shares: Vec::new(),
            name: default_name(),
            listen: None,
            interfaces: Vec::new(),
            group: DEFAULT_GROUP,
            announce_interval: DEFAULT_ANNOUNCE_INTERVAL,
            multicast: true,
            mdns: true,
            peers: Vec::new(),
            trackers: Vec::new(),
            scan_interval: DEFAULT_SCAN_INTERVAL,
            server: ServerLimits::default(),
            fetch: FetchLimits::default(),
        }
    }
}

/// The host name, cut to the protocol's limit; "lanshare" if unknown.
pub fn default_name() -> String {
    let mut name = gethostname::gethostname().to_string_lossy().into_owned();
    if name.is_empty() {
        name = "lanshare".into();
    }
    truncate(&mut name, crate::wire::MAX_NODE_NAME);
    name
}

/// Cuts a node name to the protocol's limit and replaces control characters.
pub fn truncate(s: &mut String, max: usize) {
    *s = crate::wire::clean_text(s, max);
}
