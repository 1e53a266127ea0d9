//! The tracker's HTTP JSON API: request and response bodies, shared by the
//! server, the node's client and the load generator, and the rules every
//! field from the network must pass. Plain data and checks; no I/O.
//! `docs/tracker.md` documents every shape here.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::chunkset::ChunkSet;
use crate::id::{self, ContentId, NodeId};
use crate::identity::PublicKey;
use crate::manifest::{CHUNK_SIZE, Category, MAX_CHUNKS, Manifest};
use crate::wire::{InventoryEntry, MAX_COMMENT, MAX_FILE_NAME, MAX_NODE_NAME, check_text};

/// Most addresses a node may report.
pub const MAX_ADDRS: usize = 16;
/// Longest search query, in bytes.
pub const MAX_QUERY: usize = 255;
/// Most contents one search returns.
pub const MAX_SEARCH_LIMIT: u32 = 1000;
/// Contents a search returns when `limit` is not given.
pub const DEFAULT_SEARCH_LIMIT: u32 = 100;
/// Most holders listed per content in a search result (`holders_total`
/// still counts them all).
pub const MAX_HOLDERS_SHOWN: usize = 64;
/// Most peers one `GET /v1/peers` page returns.
pub const MAX_PEERS_LIMIT: u32 = 5000;
/// Peers per page when `limit` is not given.
pub const DEFAULT_PEERS_LIMIT: u32 = 1000;
/// Longest a `GET /v1/watch` waits for a change, in seconds.
pub const MAX_WATCH_SECS: f64 = 30.0;

/// `POST /v1/nodes`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The node's id: 32 hex digits.
    #[serde(with = "hex_node")]
    pub id: NodeId,
    pub name: String,
    /// TCP port of the node's peer server.
    pub port: u16,
    /// The node's own interface addresses (the tracker adds the address
    /// the request came from).
    #[serde(default)]
    pub addrs: Vec<IpAddr>,
    /// The node's Ed25519 public key (64 hex digits): `id` must be the id
    /// it derives, and it checks every signed request of this node.
    #[serde(with = "hex_key")]
    pub key: PublicKey,
    /// A private swarm's tracker tag (32 hex digits). A node with a tag
    /// has an empty name, announces no inventory and is listed only to
    /// peers asking with the same tag.
    #[serde(default, with = "opt_hex16", skip_serializing_if = "Option::is_none")]
    pub swarm: Option<[u8; 16]>,
}

impl RegisterRequest {
    /// Checks the name against the mode: a private-swarm node has none.
    pub fn check_name(&self) -> Result<(), String> {
        match self.swarm {
            Some(_) if !self.name.is_empty() => {
                Err("a node with a swarm tag registers with an empty name".into())
            }
            Some(_) => Ok(()),
            None => check_node_name(&self.name),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// Secret for every later write of this node: `Authorization: Bearer TOKEN`.
    pub token: String,
    /// How often the node should heartbeat (and poll peers).
    pub heartbeat_secs: f64,
    /// A node silent for this long is offline.
    pub offline_after_secs: f64,
    /// The address the tracker saw this request come from.
    pub observed_addr: IpAddr,
    /// Identity of the tracker's database; changes when it starts afresh.
    pub epoch: String,
    /// Most inventory entries the tracker stores for one node.
    pub max_files: u32,
    /// Digest of the inventory the tracker still holds for this node, if a
    /// complete one (the node need not announce again when it matches).
    #[serde(with = "opt_hex16")]
    pub stored_digest: Option<[u8; 16]>,
    /// Longest wait of `GET /v1/watch`, in seconds; absent from trackers
    /// without that route (the node then learns of peers per heartbeat).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watch_secs: Option<f64>,
}

/// One content in an announced inventory.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Content id: 64 hex digits.
    #[serde(with = "hex_content")]
    pub id: ContentId,
    pub name: String,
    pub size: u64,
    /// Default: from the name's extension.
    #[serde(default)]
    pub category: Option<Category>,
    #[serde(default)]
    pub comment: String,
    /// Chunks held. Default: `total` (complete).
    #[serde(default)]
    pub have: Option<u32>,
    /// Chunks in the content. Default: size / 1 MiB, rounded up.
    #[serde(default)]
    pub total: Option<u32>,
}

impl Entry {
    /// The entry a node announces for one of its inventory entries.
    pub fn from_inventory(e: &InventoryEntry) -> Entry {
        let total = Manifest::chunk_count_for(e.size, CHUNK_SIZE).min(u32::MAX as u64) as u32;
        let have = match &e.chunks {
            ChunkSet::Full => total,
            ChunkSet::Partial(_) => e.chunks.count(total),
        };
        Entry {
            id: e.id,
            name: e.name.clone(),
            size: e.size,
            category: Some(e.category),
            comment: e.comment.clone(),
            have: Some(have),
            total: Some(total),
        }
    }

    pub fn category(&self) -> Category {
        self.category
            .unwrap_or_else(|| Category::from_name(&self.name))
    }

    pub fn total(&self) -> u32 {
        self.total.unwrap_or_else(|| {
            Manifest::chunk_count_for(self.size, CHUNK_SIZE).min(u32::MAX as u64) as u32
        })
    }

    pub fn have(&self) -> u32 {
        self.have.unwrap_or_else(|| self.total())
    }

    /// Checks every bound; the error names the field.
    pub fn check(&self) -> Result<(), String> {
        if self.name.is_empty() {
            return Err("name is empty".into());
        }
        check_text(&self.name, MAX_FILE_NAME, "name").map_err(|_| {
            format!(
                "name {:?} is longer than {MAX_FILE_NAME} bytes or has control characters",
                shorten(&self.name)
            )
        })?;
        if self.comment.len() > MAX_COMMENT
            || self.comment.chars().any(|c| c.is_control() && c != '\n')
        {
            return Err(format!(
                "comment is longer than {MAX_COMMENT} bytes or has control characters other than newlines"
            ));
        }
        if self.size > i64::MAX as u64 {
            return Err(format!("size {} is too large", self.size));
        }
        let (have, total) = (self.have(), self.total());
        if total as usize > MAX_CHUNKS {
            return Err(format!("total {total} exceeds {MAX_CHUNKS} chunks"));
        }
        if have > total {
            return Err(format!("have {have} exceeds total {total}"));
        }
        Ok(())
    }
}

/// `PUT /v1/nodes/{id}/inventory`: replaces the node's inventory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FullAnnounce {
    /// The inventory's digest (32 hex digits), as the node computes it.
    /// Required unless `more` is true.
    #[serde(default, with = "opt_hex16")]
    pub digest: Option<[u8; 16]>,
    pub entries: Vec<Entry>,
    /// More entries follow in `PATCH` requests with `base: null`; until the
    /// last one, the tracker holds no digest for this node.
    #[serde(default)]
    pub more: bool,
}

/// `PATCH /v1/nodes/{id}/inventory`: changes the stored inventory.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PatchAnnounce {
    /// Digest the change applies to; must equal the stored one (null when
    /// continuing an upload sent with `more`), else 409.
    #[serde(with = "opt_hex16")]
    pub base: Option<[u8; 16]>,
    /// Digest after the change. Required unless `more` is true.
    #[serde(default, with = "opt_hex16")]
    pub digest: Option<[u8; 16]>,
    #[serde(default)]
    pub upsert: Vec<Entry>,
    #[serde(default, with = "vec_hex_content")]
    pub remove: Vec<ContentId>,
    #[serde(default)]
    pub more: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AnnounceResponse {
    /// The digest now stored (null while an upload with `more` goes on).
    #[serde(with = "opt_hex16")]
    pub digest: Option<[u8; 16]>,
    /// Entries stored for the node.
    pub files: u32,
}

/// `POST /v1/nodes/{id}/heartbeat`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeartbeatRequest {
    /// Digest of the node's current inventory.
    #[serde(with = "hex16")]
    pub digest: [u8; 16],
    /// The node's addresses, when they changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addrs: Option<Vec<IpAddr>>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// The stored inventory is not the one the node has: send it (`PUT`).
    pub send_inventory: bool,
    pub heartbeat_secs: f64,
    pub observed_addr: IpAddr,
}

/// Query of `GET /v1/peers`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PeersQuery {
    /// Return what changed after this sequence number (0: everything).
    #[serde(default)]
    pub since: u64,
    /// The epoch `since` belongs to; another epoch gets a full list.
    #[serde(default)]
    pub epoch: Option<String>,
    #[serde(default)]
    pub limit: Option<u32>,
    /// A private swarm's tracker tag (32 hex digits): list only the nodes
    /// registered with it. Without it, only open-swarm nodes are listed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swarm: Option<String>,
}

impl PeersQuery {
    /// The swarm tag asked for, checked.
    pub fn swarm_tag(&self) -> Result<Option<[u8; 16]>, String> {
        match self.swarm.as_deref() {
            None | Some("") => Ok(None),
            Some(s) => id::from_hex::<16>(s)
                .map(Some)
                .ok_or_else(|| "swarm is not a swarm tag (32 hex digits)".to_string()),
        }
    }
}

/// Query of `GET /v1/watch`: `since`, `epoch` and `swarm` as for
/// `/v1/peers`, and how long to wait for a change.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WatchQuery {
    #[serde(default)]
    pub since: u64,
    #[serde(default)]
    pub epoch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swarm: Option<String>,
    /// Seconds to wait, above 0 and at most [`MAX_WATCH_SECS`] (default).
    #[serde(default)]
    pub wait: Option<f64>,
}

impl WatchQuery {
    /// The swarm tag asked for, checked as for `/v1/peers`.
    pub fn swarm_tag(&self) -> Result<Option<[u8; 16]>, String> {
        PeersQuery {
            swarm: self.swarm.clone(),
            ..PeersQuery::default()
        }
        .swarm_tag()
    }
}

/// `GET /v1/watch`: whether `/v1/peers?since=...` has something new.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchResponse {
    /// True when the peer list changed (read it with `/v1/peers`); false
    /// when the wait ended without a change.
    pub changed: bool,
    /// The tracker's current sequence number.
    pub seq: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeersResponse {
    pub epoch: String,
    /// Pass this as `since` next time.
    pub seq: u64,
    /// This is a full list: forget earlier ones before applying it.
    pub full: bool,
    /// More changes wait: ask again at once with `since = seq`.
    pub more: bool,
    /// Online peers that are new or changed.
    pub peers: Vec<PeerInfo>,
    /// Ids of peers that went offline or left.
    #[serde(with = "vec_hex_node")]
    pub gone: Vec<NodeId>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    #[serde(with = "hex_node")]
    pub id: NodeId,
    pub name: String,
    /// The address its requests come from first, then the ones it reported.
    pub addrs: Vec<IpAddr>,
    /// The address its requests come from.
    pub source: IpAddr,
    pub port: u16,
    /// Digest of its inventory; null until a complete one was announced.
    #[serde(with = "opt_hex16")]
    pub digest: Option<[u8; 16]>,
    pub files: u32,
    /// RFC 3339 UTC.
    pub last_seen: String,
    pub last_seen_secs: f64,
}

/// Query of `GET /v1/search`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SearchQuery {
    /// Case-insensitive substring of the file name.
    #[serde(default)]
    pub q: Option<String>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub limit: Option<u32>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SearchResponse {
    pub contents: Vec<ContentHit>,
    /// More contents matched than `limit`.
    pub truncated: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContentHit {
    #[serde(with = "hex_content")]
    pub id: ContentId,
    pub name: String,
    /// Every name its holders use (at most 16).
    pub names: Vec<String>,
    pub size: u64,
    pub category: Category,
    pub comment: String,
    /// Online holders with every chunk.
    pub complete: u32,
    /// Online holders with some chunks.
    pub partial: u32,
    /// Online holders (only the first 64 are listed).
    pub holders_total: u32,
    pub holders: Vec<Holder>,
}

impl ContentHit {
    /// The same content as `ls` shows one ([`crate::api::ContentView`]):
    /// a search hit is a content view whose holders the tracker lists, each
    /// at the address the tracker sees its requests come from. The tracker's
    /// JSON keeps its own form (holder ids, every address, `holders_total`);
    /// this is the one conversion between the two.
    pub fn to_view(&self) -> crate::api::ContentView {
        let holders = self
            .holders
            .iter()
            .map(|h| crate::api::HolderView {
                name: h.name.clone(),
                addr: h.addrs.first().map_or_else(String::new, |ip| {
                    std::net::SocketAddr::new(*ip, h.port).to_string()
                }),
                chunks: h.have,
                total: h.total,
            })
            .collect();
        crate::api::ContentView {
            kind: crate::api::ContentKind::File,
            files: 0,
            id: self.id.to_hex(),
            name: self.name.clone(),
            names: self.names.clone(),
            size: self.size,
            category: self.category,
            comment: self.comment.clone(),
            complete: self.complete,
            partial: self.partial,
            holders,
            local: false,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    #[serde(with = "hex_node")]
    pub id: NodeId,
    pub name: String,
    pub addrs: Vec<IpAddr>,
    pub port: u16,
    pub have: u32,
    pub total: u32,
}

/// `GET /v1/stats`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Stats {
    pub version: String,
    pub epoch: String,
    pub uptime_secs: f64,
    pub nodes_online: u64,
    pub nodes_offline: u64,
    pub files: u64,
    pub files_online: u64,
    pub db_bytes: u64,
    pub heartbeat_secs: f64,
    pub offline_after_secs: f64,
    pub prune_after_secs: f64,
    pub max_nodes: u64,
    /// Absent from trackers older than the quota.
    #[serde(default)]
    pub max_nodes_per_address: u64,
    pub max_files: u64,
    pub max_files_per_node: u64,
    /// Requests refused because the tracker was busy or full (503).
    pub refused: u64,
    /// `GET /v1/watch` requests waiting now, and the most that may wait.
    /// Absent from trackers without watches.
    #[serde(default)]
    pub watchers: u64,
    #[serde(default)]
    pub max_watchers: u64,
}

/// Every error body: `{"error": "..."}` (409 adds `stored_digest`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stored_digest: Option<String>,
}

/// Checks a node name.
pub fn check_node_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("name is empty".into());
    }
    check_text(name, MAX_NODE_NAME, "name").map_err(|_| {
        format!(
            "name {:?} is longer than {MAX_NODE_NAME} bytes or has control characters",
            shorten(name)
        )
    })
}

/// Checks reported addresses: at most [`MAX_ADDRS`], unicast, no duplicates.
pub fn check_addrs(addrs: &[IpAddr]) -> Result<(), String> {
    if addrs.len() > MAX_ADDRS {
        return Err(format!(
            "{} addrs given; at most {MAX_ADDRS} are accepted",
            addrs.len()
        ));
    }
    for (i, a) in addrs.iter().enumerate() {
        if a.is_unspecified() || a.is_multicast() || *a == IpAddr::from([255, 255, 255, 255]) {
            return Err(format!("addrs[{i}] {a} is not a unicast address"));
        }
        if addrs[..i].contains(a) {
            return Err(format!("addrs[{i}] {a} is listed twice"));
        }
    }
    Ok(())
}

/// The first 40 characters of `s`, for error messages.
fn shorten(s: &str) -> String {
    let mut out: String = s.chars().take(40).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

pub fn hex16_string(d: &[u8; 16]) -> String {
    id::to_hex(d)
}

macro_rules! hex_serde {
    ($module:ident, $t:ty, $n:expr, $wrap:expr, $unwrap:expr, $what:literal) => {
        pub mod $module {
            use super::*;
            pub fn serialize<S: serde::Serializer>(v: &$t, s: S) -> Result<S::Ok, S::Error> {
                #[allow(clippy::redundant_closure_call)]
                s.serialize_str(&id::to_hex(&($unwrap)(v)))
            }
            pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<$t, D::Error> {
                let s = std::borrow::Cow::<str>::deserialize(d)?;
                #[allow(clippy::redundant_closure_call)]
                id::from_hex::<$n>(&s).map($wrap).ok_or_else(|| {
                    serde::de::Error::custom(format!(
                        concat!("{:?} is not ", $what, " ({} hex digits)"),
                        shorten(&s),
                        $n * 2
                    ))
                })
            }
        }
    };
}

hex_serde!(hex_node, NodeId, 16, NodeId, |v: &NodeId| v.0, "a node id");
hex_serde!(
    hex_content,
    ContentId,
    32,
    ContentId,
    |v: &ContentId| v.0,
    "a content id"
);
hex_serde!(hex16, [u8; 16], 16, |b| b, |v: &[u8; 16]| *v, "a digest");
hex_serde!(
    hex_key,
    PublicKey,
    32,
    PublicKey,
    |v: &PublicKey| v.0,
    "a public key"
);

/// An optional 16-byte digest as 32 hex digits or null.
pub mod opt_hex16 {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &Option<[u8; 16]>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(d) => s.serialize_str(&id::to_hex(d)),
            None => s.serialize_none(),
        }
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<[u8; 16]>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "hex16")] [u8; 16]);
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}

/// A list of node ids as hex strings.
pub mod vec_hex_node {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &[NodeId], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|n| n.to_hex()))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<NodeId>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "hex_node")] NodeId);
        Ok(Vec::<W>::deserialize(d)?.into_iter().map(|w| w.0).collect())
    }
}

/// A list of content ids as hex strings.
pub mod vec_hex_content {
    use super::*;
    pub fn serialize<S: serde::Serializer>(v: &[ContentId], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|n| n.to_hex()))
    }
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<ContentId>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "hex_content")] ContentId);
        Ok(Vec::<W>::deserialize(d)?.into_iter().map(|w| w.0).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_hit_reads_as_a_content_view() {
        let hit = ContentHit {
            id: ContentId([0xab; 32]),
            name: "song.mp3".into(),
            names: vec!["Song.MP3".into(), "song.mp3".into()],
            size: 3,
            category: Category::Audio,
            comment: "live".into(),
            complete: 1,
            partial: 2,
            holders_total: 3,
            holders: vec![Holder {
                id: NodeId([1; 16]),
                name: "alice".into(),
                addrs: vec!["10.0.0.7".parse().unwrap(), "192.168.1.7".parse().unwrap()],
                port: 7373,
                have: 1,
                total: 1,
            }],
        };
        let v = hit.to_view();
        assert_eq!(v.id, "ab".repeat(32));
        assert_eq!((v.name.as_str(), v.names.len()), ("song.mp3", 2));
        assert_eq!(
            (v.size, v.category, v.comment.as_str()),
            (3, Category::Audio, "live")
        );
        assert_eq!((v.complete, v.partial, v.local), (1, 2, false));
        assert_eq!(v.holders.len(), 1);
        assert_eq!(v.holders[0].addr, "10.0.0.7:7373");
        assert_eq!((v.holders[0].chunks, v.holders[0].total), (1, 1));
    }

    #[test]
    fn entries_round_trip_and_default() {
        let json = format!(
            r#"{{"id":"{}","name":"Song.MP3","size":3145729}}"#,
            "ab".repeat(32)
        );
        let e: Entry = serde_json::from_str(&json).unwrap();
        assert_eq!(e.category(), Category::Audio);
        assert_eq!((e.have(), e.total()), (4, 4));
        e.check().unwrap();
        let back: Entry = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn bad_fields_are_named() {
        let bad_id = r#"{"id":"xyz","name":"a","size":1}"#;
        let err = serde_json::from_str::<Entry>(bad_id)
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a content id"), "{err}");
        let mut e = Entry {
            id: ContentId([1; 32]),
            name: "a\u{1b}[31m".into(),
            size: 1,
            category: None,
            comment: String::new(),
            have: None,
            total: None,
        };
        assert!(e.check().unwrap_err().contains("control"));
        e.name = "ok".into();
        e.comment = "two\nlines".into();
        e.check().unwrap();
        e.have = Some(2);
        assert!(e.check().unwrap_err().contains("exceeds total"));
        assert!(check_addrs(&["0.0.0.0".parse().unwrap()]).is_err());
        assert!(check_addrs(&["10.0.0.1".parse().unwrap(), "10.0.0.1".parse().unwrap()]).is_err());
        check_addrs(&["10.0.0.1".parse().unwrap(), "::1".parse().unwrap()]).unwrap();
        assert!(check_node_name("").is_err());
        assert!(check_node_name(&"x".repeat(65)).is_err());
    }

    #[test]
    fn partial_entries_count_chunks() {
        let mut bm = crate::chunkset::Bitmap::new(3);
        bm.set(1);
        let inv = InventoryEntry {
            id: ContentId([2; 32]),
            name: "a.bin".into(),
            more_paths: Default::default(),
            size: (2 << 20) + 1,
            category: Category::Other,
            comment: String::new(),
            chunks: ChunkSet::Partial(bm),
        };
        let e = Entry::from_inventory(&inv);
        assert_eq!((e.have(), e.total()), (1, 3));
    }
}
