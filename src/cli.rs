//! Command-line definitions (clap) and their translation into a
//! [`NodeConfig`] or a client command. No sockets, no files.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, NodeConfig};
use crate::manifest::Category;
use crate::netif::IfaceSpec;
use crate::swarm::{Mode, SwarmKey};

#[derive(Debug, Parser)]
#[command(
    name = "lanshare",
    version,
    about = "Zero-configuration peer-to-peer file sharing for your LAN"
)]
#[command(
    after_help = "Exit codes: 0 success; 1 error; 2 bad usage; 3 a name matched nothing, or several contents."
)]
pub struct Cli {
    /// More log output on stderr (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args, Clone)]
pub struct HomeArg {
    /// The node's home directory: shared/, downloads/, logs and state.
    #[arg(long, env = "LANSHARE_HOME", default_value = ".")]
    pub home: PathBuf,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node in the foreground until Ctrl-C: index, announce, discover, serve, download.
    Up(Box<UpArgs>),
    /// List what the network offers: name, size, category, holders, comment.
    Ls {
        /// Show only contents whose name contains this (or whose id starts with it).
        query: Option<String>,
        /// Show only this category: audio, video, image, text, document, archive, other.
        #[arg(long)]
        category: Option<Category>,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        home: HomeArg,
    },
    /// List peers seen: name, address, online or offline, last seen, how found.
    Peers {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        home: HomeArg,
    },
    /// Download files or folders by name: a path (holiday/day1/beach.jpg), a file name (with or without extension), a folder name (the whole tree), or a content id prefix. Several names are fetched one after the other.
    Fetch {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        /// Print one JSON object per event instead of a progress bar.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        home: HomeArg,
    },
    /// Share a file or folder (besides HOME/shared), with a comment and category.
    Share {
        path: PathBuf,
        #[arg(long, default_value = "")]
        comment: String,
        /// Category for every file under PATH (default: from each file's extension).
        #[arg(long)]
        category: Option<Category>,
        #[command(flatten)]
        home: HomeArg,
    },
    /// Run the optional central registry (HTTP JSON API) for networks multicast cannot cross.
    Tracker(crate::tracker::TrackerArgs),
    /// Swarm keys for private swarms.
    #[command(subcommand)]
    Key(KeyCommand),
    /// List downloads and uploads in progress: progress, rate, ETA, peers.
    Transfers {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        home: HomeArg,
    },
    /// Stop a download (by its number in `transfers`, its name or content id prefix); it resumes when fetched again.
    Cancel {
        target: String,
        #[command(flatten)]
        home: HomeArg,
    },
    /// Show the running node's identity, address and counters.
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        home: HomeArg,
    },
}

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print a new random swarm key, one line to give to every member (`up --swarm-key`).
    New,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    #[command(flatten)]
    pub home: HomeArg,
    /// Also share this file or folder (repeatable).
    #[arg(long = "share", value_name = "PATH")]
    pub shares: Vec<PathBuf>,
    /// Name shown to peers [default: the host name].
    #[arg(long)]
    pub name: Option<String>,
    /// TCP address for the peer server; port 0 picks a free one [default: 0.0.0.0:7373, or a free port if taken].
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<SocketAddr>,
    /// Interface to discover on, by address or name (repeatable) [default: every up, multicast-capable, non-loopback interface, IPv4 and IPv6, but container and VM bridges].
    #[arg(long = "interface", value_name = "ADDR|IFACE")]
    pub interfaces: Vec<IfaceSpec>,
    /// Leave out interfaces whose name matches (repeatable; `*` matches any part), besides docker*, br-*, veth*, virbr*, vboxnet*, vmnet*, cni*, flannel*.
    #[arg(long = "exclude-interface", value_name = "PATTERN")]
    pub exclude_interfaces: Vec<String>,
    /// Multicast group and port for announcements (IPv4).
    #[arg(long, value_name = "IP:PORT", default_value_t = config::DEFAULT_GROUP, value_parser = parse_group)]
    pub group: SocketAddrV4,
    /// IPv6 multicast group for announcements (same port as --group).
    #[arg(long, value_name = "IPV6", default_value_t = crate::discovery::DEFAULT_GROUP6, value_parser = parse_group6)]
    pub group6: Ipv6Addr,
    /// Seconds between announcements (fractions allowed, 0.1 to 60: peers take no longer interval from anyone).
    #[arg(long, value_name = "SECS", default_value = "5", value_parser = parse_announce_interval)]
    pub announce_interval: Duration,
    /// Seconds between rescans of the shared folders.
    #[arg(long, value_name = "SECS", default_value = "2", value_parser = config::secs_up_to(MAX_SECS))]
    pub scan_interval: Duration,
    /// A peer that no discovery reaches, as HOST:PORT of its TCP server (repeatable).
    #[arg(long = "peer", value_name = "HOST:PORT", value_parser = crate::manual::parse_target)]
    pub peers: Vec<String>,
    /// Tracker to register with, as an http:// URL (repeatable; comma-separated in LANSHARE_TRACKER).
    #[arg(long = "tracker", value_name = "URL", env = "LANSHARE_TRACKER", value_delimiter = ',', value_parser = crate::tracker::parse_url)]
    pub trackers: Vec<String>,
    /// Most contents remembered from all peers together (about 1 KiB of memory each); a peer whose inventory would pass it is listed without its contents.
    #[arg(long, value_name = "N", default_value_t = crate::dict::DEFAULT_MAX_REMOTE_CONTENTS)]
    pub max_remote_contents: usize,
    /// Most memory spent on contents remembered from all peers together, in bytes (suffixes K, M, G: KiB, MiB, GiB); a peer whose inventory would pass it is listed without its contents.
    #[arg(long, value_name = "BYTES", default_value = "128M", value_parser = parse_bytes)]
    pub max_remote_bytes: usize,
    /// Do not announce or listen on UDP multicast (IPv4 and IPv6); broadcast stays on unless --no-broadcast.
    #[arg(long)]
    pub no_multicast: bool,
    /// Do not announce or listen on IPv4 broadcast (the same announcements, sent to each interface's broadcast address on the --group port, for networks that drop multicast); multicast stays on unless --no-multicast.
    #[arg(long)]
    pub no_broadcast: bool,
    /// Do not register or browse mDNS (DNS-SD) services.
    #[arg(long)]
    pub no_mdns: bool,
    /// Also share files that symlinks in a shared folder point to outside that folder (by default only links staying inside it are followed).
    #[arg(long)]
    pub follow_symlinks: bool,
    /// Join the private swarm of this key (from `lanshare key new`): only nodes with the same key can see or fetch anything. Prefer --swarm-key-file or LANSHARE_SWARM_KEY: a flag shows in `ps`.
    #[arg(
        long,
        value_name = "KEY",
        env = "LANSHARE_SWARM_KEY",
        hide_env_values = true,
        conflicts_with = "swarm_key_file"
    )]
    pub swarm_key: Option<SwarmKey>,
    /// Read the swarm key from this file (its first line).
    #[arg(long, value_name = "FILE")]
    pub swarm_key_file: Option<PathBuf>,
    /// Serve the web dashboard here; port 0 picks one [default: 127.0.0.1:7380, or a free port if taken]. A non-loopback address needs --ui-password.
    #[arg(long, value_name = "ADDR:PORT", conflicts_with = "no_ui")]
    pub ui: Option<SocketAddr>,
    /// Do not serve the web dashboard.
    #[arg(long)]
    pub no_ui: bool,
    /// Password the dashboard asks for (HTTP basic auth, any user name); required to serve it on a non-loopback address.
    #[arg(
        long,
        value_name = "PASSWORD",
        env = "LANSHARE_UI_PASSWORD",
        hide_env_values = true
    )]
    pub ui_password: Option<String>,
}

fn parse_group(s: &str) -> Result<SocketAddrV4, String> {
    let addr: SocketAddrV4 = s.parse().map_err(|_| format!("{s:?} is not IP:PORT"))?;
    if !addr.ip().is_multicast() {
        return Err(format!(
            "{} is not a multicast address (use 224.0.0.0/4, e.g. 239.255.73.73)",
            addr.ip()
        ));
    }
    if addr.port() == 0 {
        return Err("the group port must not be 0".into());
    }
    Ok(addr)
}

fn parse_group6(s: &str) -> Result<Ipv6Addr, String> {
    let addr: Ipv6Addr = s
        .parse()
        .map_err(|_| format!("{s:?} is not an IPv6 address"))?;
    if !addr.is_multicast() {
        return Err(format!(
            "{addr} is not an IPv6 multicast address (ff00::/8, e.g. ff02::6c61:6e73)"
        ));
    }
    Ok(addr)
}

/// The longest period a node flag takes: a day.
const MAX_SECS: f64 = 86_400.0;

fn parse_announce_interval(s: &str) -> Result<Duration, String> {
    let d = config::parse_secs(s, MAX_SECS)?;
    if d < crate::dict::MIN_INTERVAL || d > crate::dict::MAX_INTERVAL {
        return Err(format!(
            "must be between {} and {} seconds (peers clamp what they are told to that range)",
            crate::dict::MIN_INTERVAL.as_secs_f64(),
            crate::dict::MAX_INTERVAL.as_secs_f64()
        ));
    }
    Ok(d)
}

/// A byte count: a number, optionally followed by K, M or G (powers of 1024).
fn parse_bytes(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.eq_ignore_ascii_case(&'k') => (&t[..i], 1usize << 10),
        Some((i, c)) if c.eq_ignore_ascii_case(&'m') => (&t[..i], 1 << 20),
        Some((i, c)) if c.eq_ignore_ascii_case(&'g') => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    let n: usize = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a byte count (e.g. 64M)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Reads a swarm key from the first line of `file`.
fn read_swarm_key(file: &std::path::Path) -> std::io::Result<SwarmKey> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot read the swarm key file {}: {e}", file.display()),
        )
    })?;
    text.lines().next().unwrap_or("").parse().map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {e}", file.display()),
        )
    })
}

/// Makes `home` absolute without requiring it to exist yet.
pub fn absolute(home: &std::path::Path) -> std::io::Result<PathBuf> {
    if home.is_absolute() {
        Ok(home.to_path_buf())
    } else {
        Ok(std::env::current_dir()?.join(home))
    }
}

impl UpArgs {
    pub fn into_config(self) -> std::io::Result<NodeConfig> {
        let home = absolute(&self.home.home)?;
        let mut cfg = NodeConfig::new(home);
        cfg.shares = self
            .shares
            .iter()
            .map(|p| absolute(p))
            .collect::<Result<_, _>>()?;
        if let Some(mut name) = self.name {
            config::truncate(&mut name, crate::wire::MAX_NODE_NAME);
            cfg.name = name;
        }
        cfg.listen = self.listen;
        cfg.interfaces = self.interfaces;
        cfg.exclude_interfaces = self.exclude_interfaces;
        cfg.group = self.group;
        cfg.group6 = self.group6;
        cfg.announce_interval = self.announce_interval;
        cfg.scan_interval = self.scan_interval;
        cfg.multicast = !self.no_multicast;
        cfg.broadcast = !self.no_broadcast;
        cfg.mdns = !self.no_mdns;
        cfg.peers = self.peers;
        cfg.trackers = self.trackers;
        cfg.max_remote_contents = self.max_remote_contents;
        cfg.max_remote_bytes = self.max_remote_bytes;
        cfg.follow_symlinks = self.follow_symlinks;
        cfg.ui = match (self.no_ui, self.ui) {
            (true, _) => config::UiListen::Off,
            (false, Some(addr)) => config::UiListen::At(addr),
            (false, None) => config::UiListen::Default,
        };
        cfg.ui_password = self.ui_password.filter(|p| !p.is_empty());
        cfg.swarm = match (self.swarm_key, self.swarm_key_file) {
            (Some(key), _) => Mode::private(&key),
            (None, Some(file)) => Mode::private(&read_swarm_key(&file)?),
            (None, None) => Mode::Open,
        };
        Ok(cfg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("lanshare").chain(args.iter().copied()))
    }

    #[test]
    fn up_flags() {
        let cli = parse(&[
            "up",
            "--home",
            "/h",
            "--share",
            "a",
            "--share",
            "b",
            "--name",
            "n",
            "--listen",
            "127.0.0.1:0",
            "--interface",
            "127.0.0.1",
            "--group",
            "239.255.1.2:5000",
            "--announce-interval",
            "0.5",
            "--no-mdns",
            "--follow-symlinks",
        ])
        .unwrap();
        let Command::Up(up) = cli.command else {
            panic!("not up")
        };
        let cfg = up.into_config().unwrap();
        assert_eq!(cfg.home, PathBuf::from("/h"));
        assert_eq!(cfg.shares.len(), 2);
        assert_eq!(cfg.name, "n");
        assert_eq!(cfg.listen, Some("127.0.0.1:0".parse().unwrap()));
        assert_eq!(
            cfg.interfaces,
            vec![IfaceSpec::Addr(std::net::Ipv4Addr::LOCALHOST.into())]
        );
        assert_eq!(cfg.group, "239.255.1.2:5000".parse().unwrap());
        assert_eq!(cfg.announce_interval, Duration::from_millis(500));
        assert!(cfg.multicast && !cfg.mdns);
        assert_eq!(cfg.max_remote_bytes, crate::dict::DEFAULT_MAX_REMOTE_BYTES);
        assert_eq!(parse_bytes("64M"), Ok(64 << 20));
        assert_eq!(parse_bytes("2g"), Ok(2 << 30));
        assert_eq!(parse_bytes("1000"), Ok(1000));
        assert!(cfg.follow_symlinks);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&["up", "--group", "10.0.0.1:5000"]).is_err());
        assert!(parse(&["up", "--announce-interval", "0"]).is_err());
        assert!(parse(&["up", "--announce-interval", "300"]).is_err());
        assert!(parse(&["up", "--max-remote-bytes", "lots"]).is_err());
        assert!(parse(&["up", "--listen", "nope"]).is_err());
        assert!(parse(&["ls", "--category", "films"]).is_err());
        assert!(parse(&["fetch"]).is_err());
    }

    #[test]
    fn fetch_takes_several_names() {
        let Command::Fetch { names, .. } =
            parse(&["fetch", "a", "holiday/day1", "c"]).unwrap().command
        else {
            panic!()
        };
        assert_eq!(names, ["a", "holiday/day1", "c"]);
    }

    #[test]
    fn defaults() {
        let Command::Up(up) = parse(&["up"]).unwrap().command else {
            panic!()
        };
        let cfg = up.into_config().unwrap();
        assert_eq!(cfg.group, config::DEFAULT_GROUP);
        assert_eq!(cfg.announce_interval, Duration::from_secs(5));
        assert!(cfg.multicast && cfg.mdns && cfg.listen.is_none());
        assert!(
            !cfg.follow_symlinks,
            "links out of a shared folder are not followed by default"
        );
    }
}
