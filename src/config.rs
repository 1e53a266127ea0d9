//! The node's configuration, with documented defaults. Built by the CLI
//! from flags and `LANSHARE_*` variables; read by `node`.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use crate::fetch::FetchLimits;
use crate::netif::IfaceSpec;
use crate::peer::server::ServerLimits;

/// Default multicast group: in 239.255.0.0/16, the IPv4 organization-local
/// scope (RFC 2365), so routers at the site edge never forward it.
pub const DEFAULT_GROUP: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(239, 255, 73, 73), 7373);
/// Default TCP port; when it is taken and `--listen` was not given, the node
/// falls back to a port the system picks.
pub const DEFAULT_TCP_PORT: u16 = 7373;
/// Default port of the web dashboard (on 127.0.0.1); when it is taken and
/// `--ui` was not given, the node falls back to a port the system picks.
pub const DEFAULT_UI_PORT: u16 = 7380;
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
    /// TCP address of the peer server; `None` means [::]:7373 (both
    /// families), or any free port.
    pub listen: Option<SocketAddr>,
    /// Interfaces discovery uses (addresses or names); empty means every
    /// up, multicast-capable, non-loopback interface not excluded.
    pub interfaces: Vec<IfaceSpec>,
    /// Interface name patterns left out besides the default ones.
    pub exclude_interfaces: Vec<String>,
    pub group: SocketAddrV4,
    /// The IPv6 group; its port is `group`'s.
    pub group6: Ipv6Addr,
    pub announce_interval: Duration,
    pub multicast: bool,
    /// IPv4 broadcast beside multicast (`--no-broadcast` turns it off;
    /// independent of `--no-multicast`).
    pub broadcast: bool,
    pub mdns: bool,
    /// `HOST:PORT` of peers no discovery reaches.
    pub peers: Vec<String>,
    /// Base URLs (`http://host:port`) of trackers to register with.
    pub trackers: Vec<String>,
    /// Most inventory entries held for all peers together.
    pub max_remote_contents: usize,
    /// Most bytes (`dict::entry_cost`) of inventory held for all peers together.
    pub max_remote_bytes: usize,
    /// How often shared folders are rescanned for changes.
    pub scan_interval: Duration,
    /// Follow symlinks in a shared folder that point outside it (off by
    /// default; links staying inside are always followed).
    pub follow_symlinks: bool,
    pub server: ServerLimits,
    pub fetch: FetchLimits,
    /// Open swarm, or the private swarm of a key.
    pub swarm: crate::swarm::Mode,
    /// Where the web dashboard listens.
    pub ui: UiListen,
    /// The password a non-loopback dashboard asks for (`--ui-password`).
    pub ui_password: Option<String>,
}

/// Where the web dashboard listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UiListen {
    /// 127.0.0.1:7380, or a free port when that is taken.
    Default,
    /// `--ui ADDR:PORT` (port 0 picks one).
    At(SocketAddr),
    /// `--no-ui`.
    Off,
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
            exclude_interfaces: Vec::new(),
            group: DEFAULT_GROUP,
            group6: crate::discovery::DEFAULT_GROUP6,
            announce_interval: DEFAULT_ANNOUNCE_INTERVAL,
            multicast: true,
            broadcast: true,
            mdns: true,
            peers: Vec::new(),
            trackers: Vec::new(),
            max_remote_contents: crate::dict::DEFAULT_MAX_REMOTE_CONTENTS,
            max_remote_bytes: crate::dict::DEFAULT_MAX_REMOTE_BYTES,
            scan_interval: DEFAULT_SCAN_INTERVAL,
            follow_symlinks: false,
            server: ServerLimits::default(),
            fetch: FetchLimits::default(),
            swarm: crate::swarm::Mode::Open,
            ui: UiListen::Default,
            ui_password: None,
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

/// Seconds (fractions allowed) between 0.05 and `max`, as a flag gives them.
pub fn parse_secs(s: &str, max: f64) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(0.05..=max).contains(&v) {
        return Err(format!("must be between 0.05 and {max} seconds"));
    }
    Ok(Duration::from_secs_f64(v))
}

/// [`parse_secs`] up to `max`, as a clap value parser
/// (`value_parser = config::secs_up_to(86_400.0)`).
pub fn secs_up_to(max: f64) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync {
    move |s| parse_secs(s, max)
}

impl NodeConfig {
    /// The interfaces discovery uses, as configured.
    pub fn selection(&self) -> crate::netif::Selection {
        crate::netif::Selection {
            only: self.interfaces.clone(),
            exclude: self.exclude_interfaces.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secs_within_bounds() {
        assert_eq!(parse_secs("0.5", 60.0), Ok(Duration::from_millis(500)));
        assert_eq!(
            parse_secs("86401", 86_400.0),
            Err("must be between 0.05 and 86400 seconds".into())
        );
        assert_eq!(
            secs_up_to(31_536_000.0)("0"),
            Err("must be between 0.05 and 31536000 seconds".into())
        );
        assert_eq!(
            parse_secs("soon", 1.0),
            Err("\"soon\" is not a number of seconds".into())
        );
    }
}
