//! Serializable views and requests shared by the node, its control endpoint
//! and the CLI. Plain data; no behaviour.

use serde::{Deserialize, Serialize};

use crate::manifest::Category;

/// How a peer was found.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FoundVia {
    Multicast,
    Mdns,
    Tracker,
    Manual,
    Broadcast,
    /// A peer named it (peer exchange), and a handshake proved it.
    Exchange,
}

impl std::fmt::Display for FoundVia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FoundVia::Multicast => "multicast",
            FoundVia::Mdns => "mdns",
            FoundVia::Tracker => "tracker",
            FoundVia::Manual => "manual",
            FoundVia::Broadcast => "broadcast",
            FoundVia::Exchange => "exchange",
        })
    }
}

/// What a row of `ls` is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentKind {
    /// One content (a file); `name` is its path.
    #[default]
    File,
    /// A shared folder: every content whose path starts with `name/`.
    /// `id` is empty, `size` the total of its files.
    Folder,
}

/// One content (or folder) as `ls` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContentView {
    #[serde(default)]
    pub kind: ContentKind,
    pub id: String,
    pub name: String,
    /// Every name peers use for this content.
    pub names: Vec<String>,
    pub size: u64,
    pub category: Category,
    pub comment: String,
    pub complete: u32,
    pub partial: u32,
    pub holders: Vec<HolderView>,
    /// This node holds a complete copy.
    pub local: bool,
    /// A folder's number of files (0 for a file).
    #[serde(default)]
    pub files: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HolderView {
    pub name: String,
    pub addr: String,
    pub chunks: u32,
    pub total: u32,
}

/// One peer as `peers` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerView {
    pub id: String,
    pub name: String,
    pub addr: String,
    /// Every known address of the peer's server, best first.
    pub addrs: Vec<String>,
    pub online: bool,
    /// RFC 3339 UTC.
    pub last_seen: String,
    pub last_seen_secs: f64,
    pub found_via: Vec<FoundVia>,
    pub contents: u32,
    /// The id was proven by the peer's key (a TCP handshake or a signed
    /// datagram), not only claimed.
    #[serde(default)]
    pub verified: bool,
}

/// Status of the node itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: String,
    pub name: String,
    pub listen: String,
    pub home: String,
    pub shared_contents: u32,
    pub malformed_datagrams: u64,
    pub malformed_connections: u64,
    /// Bytes of discovery datagrams sent since start (announcements,
    /// queries, goodbyes, on every interface).
    pub discovery_bytes_sent: u64,
    /// Bytes of inventory pages served to peers since start.
    pub inventory_bytes_served: u64,
    /// `open` or `private` (never the key).
    #[serde(default)]
    pub swarm: String,
    /// Signed datagrams dropped as replays (or heard again on another link).
    #[serde(default)]
    pub replayed_datagrams: u64,
    /// Datagrams and mDNS records from another swarm.
    #[serde(default)]
    pub foreign_datagrams: u64,
    /// Datagrams unsigned, badly signed or naming another key's id.
    #[serde(default)]
    pub bad_signature_datagrams: u64,
    /// Datagrams dropped unchecked over a source's signature-check budget.
    #[serde(default)]
    pub throttled_datagrams: u64,
    /// Discovery datagrams sent since start (one per path and link).
    #[serde(default)]
    pub datagrams_sent: u64,
    /// Signed datagrams from peers received since start, by path.
    #[serde(default)]
    pub datagrams_received: DatagramsByPath,
    /// Copies of a datagram heard again by another path or link (multicast
    /// and broadcast, two interfaces), dropped as expected.
    #[serde(default)]
    pub path_duplicate_datagrams: u64,
    /// Peer exchange: peers named to this node, hints dialed, proven
    /// (listed), and dropped (wrong id, unusable, or no room).
    #[serde(default)]
    pub hints_received: u64,
    #[serde(default)]
    pub hints_dialed: u64,
    #[serde(default)]
    pub hints_verified: u64,
    #[serde(default)]
    pub hints_rejected: u64,
    /// The web dashboard's URL, when it runs.
    pub ui: Option<String>,
}

/// Signed datagrams from peers, by the path they came by.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DatagramsByPath {
    pub multicast4: u64,
    pub multicast6: u64,
    pub broadcast: u64,
    /// Sent to this node's own address.
    pub unicast: u64,
    /// IPv4 where the system does not say the destination (builds without
    /// packet info): multicast or broadcast.
    pub ipv4_unclassified: u64,
}

/// What a fetch reports while it runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum FetchEvent {
    /// The name resolved; the download starts.
    Started {
        id: String,
        name: String,
        size: u64,
        holders: u32,
        already: u64,
    },
    Progress {
        done: u64,
        size: u64,
        peers: u32,
    },
    /// Bytes each peer gave so far (every peer this download pulled from).
    PeerBytes {
        peers: Vec<PeerBytes>,
    },
    /// A peer was dropped from this download, and why.
    PeerDropped {
        peer: String,
        reason: String,
    },
    Done(FetchDone),
    Failed {
        reason: String,
    },
    /// Several contents match the name; nothing was downloaded.
    Ambiguous {
        candidates: Vec<ContentView>,
    },
    NotFound {
        query: String,
    },
    /// Holders that have not answered for a while (`phase` is what this
    /// node waits for: "manifest" or "chunks"); the download asks others.
    Slow {
        phase: String,
        peers: Vec<String>,
    },
    /// A folder download's files: how many are in place, how many failed,
    /// of how many (sent at its start and as each file ends).
    Files {
        done: u32,
        failed: u32,
        total: u32,
        /// The file that just ended (empty at the start).
        path: String,
        /// Why it failed, when it did.
        error: Option<String>,
    },
    /// The disk is full: the download waits for space (`reason` names the
    /// file, the space needed and where) and goes on once it is freed; a
    /// `Progress` follows when it does.
    Paused {
        reason: String,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FetchDone {
    pub id: String,
    pub path: String,
    pub size: u64,
    pub sha256: String,
    pub secs: f64,
    /// Bytes fetched by this run (less than `size` when it resumed).
    pub transferred: u64,
    pub peers: Vec<String>,
    /// The node already held it complete; nothing was transferred.
    pub already_local: bool,
}

/// Bytes one peer gave to a download.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerBytes {
    /// `name@address`.
    pub peer: String,
    pub bytes: u64,
}
