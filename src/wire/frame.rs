//! TCP peer protocol frames.
//!
//! A connection opens with the client's 6-byte preamble, `"LNSH" version
//! mode`, and a Noise handshake (`crate::peer::noise`) whose messages 2 and 3
//! carry the hellos defined here ([`ServerHello`], [`ClientHello`]). Then it
//! carries frames (in private mode inside Noise records, a layer below):
//!
//! ```text
//! length u32 LE (bytes after this field) | kind u8 | body
//! ```
//! Bodies are postcard, except a chunk, whose body is `request id u32 LE`
//! followed by the raw chunk bytes. Requests carry an id chosen by the
//! client so several can be in flight on one connection; the server answers
//! each with exactly one response frame carrying the same id.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{InventoryEntry, MAX_ERROR_MESSAGE, MAX_NODE_NAME, WireError, decode_exact};
use crate::id::{ContentId, NodeId};
use crate::identity::{PublicKey, Signature};
use crate::manifest::{MAX_CHUNK_SIZE, Manifest};

/// Bytes of the length and kind fields.
pub const HEADER_LEN: usize = 5;
/// Largest request frame a server reads. Requests are tiny.
pub const MAX_REQUEST_FRAME: u32 = 4 * 1024;
/// Largest response frame a client reads: the largest of a chunk, a manifest
/// of [`crate::manifest::MAX_CHUNKS`] hashes, and an inventory.
pub const MAX_RESPONSE_FRAME: u32 = 32 << 20;
/// Largest inventory page frame a client reads. Servers cut pages at about
/// 1 MiB (plus one entry of at most ~67 KiB); a bigger page is only a way
/// to make the client allocate.
pub const MAX_INVENTORY_FRAME: u32 = 4 << 20;
/// Most entries in one inventory.
pub const MAX_INVENTORY_ENTRIES: usize = 200_000;
/// Most entries in one inventory page.
pub const MAX_PAGE_ENTRIES: usize = 4096;
/// Most removed ids in one inventory delta.
pub const MAX_REMOVED: usize = 16_384;
/// Most peers in one peer-exchange answer.
pub const MAX_PEER_ENTRIES: usize = 64;
/// Most addresses of one peer in a peer-exchange answer.
pub const MAX_PEER_ADDRS: usize = 4;
/// Largest peer-exchange answer frame a client reads: 64 entries of 4
/// IPv6 addresses take about 6.5 KiB.
pub const MAX_PEERS_FRAME: u32 = 8 * 1024;

/// Bytes of the preamble: magic, version, mode.
pub const PREAMBLE_LEN: usize = 6;
/// Largest Noise handshake message read (after its u16 length). The
/// hellos are a few hundred bytes at most.
pub const MAX_HANDSHAKE_MESSAGE: usize = 1024;
/// The hello bytes before its postcard part: Ed25519 key and binding signature.
const HELLO_KEYS_LEN: usize = 32 + 64;

/// The preamble a client sends in clear, also the Noise prologue: `"LNSH"`,
/// the protocol version, the mode byte (0 open, 1 private).
pub fn preamble(mode: u8) -> [u8; PREAMBLE_LEN] {
    [b'L', b'N', b'S', b'H', super::VERSION, mode]
}

const K_GET_MANIFEST: u8 = 0x02;
const K_GET_CHUNK: u8 = 0x03;
const K_GET_INVENTORY: u8 = 0x04;
const K_GOODBYE: u8 = 0x05;
const K_GET_PEERS: u8 = 0x06;
const K_R_MANIFEST: u8 = 0x82;
pub const K_R_CHUNK: u8 = 0x83;
const K_R_INVENTORY: u8 = 0x84;
const K_R_PEERS: u8 = 0x85;
const K_R_ERROR: u8 = 0x8f;

/// Checks a peer's preamble; returns its mode byte (not checked here).
pub fn check_preamble(p: &[u8; PREAMBLE_LEN]) -> Result<u8, WireError> {
    if p[..4] != super::MAGIC {
        return Err(WireError::BadMagic);
    }
    if p[4] != super::VERSION {
        return Err(WireError::Version(p[4]));
    }
    Ok(p[5])
}

/// Rejects a response body longer than its kind allows (checked before the
/// body is read): inventory pages and peer-exchange answers are bounded
/// tighter than chunks and manifests.
pub fn check_response_len(kind: u8, body_len: usize) -> Result<(), WireError> {
    let max = match kind {
        K_R_INVENTORY => MAX_INVENTORY_FRAME,
        K_R_PEERS => MAX_PEERS_FRAME,
        _ => return Ok(()),
    };
    if body_len + 1 > max as usize {
        return Err(WireError::TooLarge {
            len: body_len + 1,
            max: max as usize,
        });
    }
    Ok(())
}

/// Parses a frame header into `(kind, body length)`, rejecting frames over `max`.
pub fn parse_header(h: &[u8; HEADER_LEN], max: u32) -> Result<(u8, usize), WireError> {
    let len = u32::from_le_bytes([h[0], h[1], h[2], h[3]]);
    if len == 0 {
        return Err(WireError::Truncated);
    }
    if len > max {
        return Err(WireError::TooLarge {
            len: len as usize,
            max: max as usize,
        });
    }
    Ok((h[4], len as usize - 1))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    GetManifest {
        req: u32,
        id: ContentId,
    },
    GetChunk {
        req: u32,
        id: ContentId,
        index: u32,
    },
    /// Starts (`after: None`) or continues an inventory pull. With `since`,
    /// the client holds the inventory of that digest and wants only what
    /// changed; the server answers with a delta when it can, else in full.
    GetInventory {
        req: u32,
        since: Option<[u8; 16]>,
        after: Option<ContentId>,
    },
    /// The client is stopping: forget it now. No response; the server
    /// closes the connection. Sent to peers multicast does not reach.
    Goodbye,
    /// Which peers does the server know (peer exchange)? `port` is the
    /// client's own TCP server port (0: none), so the server may dial it
    /// back at the connection's source address and learn the client too.
    GetPeers {
        req: u32,
        port: u16,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    /// This node does not hold the content.
    NotFound,
    /// This node holds the content but not that chunk (yet).
    NoChunk,
    /// The node is at its upload limit; try another peer or later.
    Busy,
    /// The request made no sense (index out of range...).
    BadRequest,
    /// Reading the file failed on the serving node.
    Internal,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    Manifest {
        req: u32,
        manifest: Manifest,
    },
    /// Header of a chunk; `len` raw bytes follow in the same frame.
    Chunk {
        req: u32,
        len: usize,
    },
    Inventory(InventoryPage),
    /// The answer to [`Request::GetPeers`]: peers the server reached over
    /// TCP, as hints (the client checks each by a handshake).
    Peers {
        req: u32,
        entries: Vec<PeerEntry>,
    },
    Error {
        req: u32,
        code: ErrorCode,
        message: String,
    },
}

/// One page of an inventory, full or a delta, in content id order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryPage {
    pub req: u32,
    /// Digest of the inventory being sent (the same on every page of a pull).
    pub digest: [u8; 16],
    /// `Some(d)`: a delta against the inventory of digest `d`; `None`: in full.
    pub base: Option<[u8; 16]>,
    /// Entries (a delta: new or changed ones), ascending by id.
    pub entries: Vec<InventoryEntry>,
    /// Ids no longer offered (deltas only; first page only).
    pub removed: Vec<ContentId>,
    /// More pages follow: ask again with `after` = the last entry's id.
    pub more: bool,
}

/// One peer in a peer-exchange answer: an id, where it proved that id
/// over TCP, and how long ago it was last heard.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerEntry {
    pub id: NodeId,
    /// 1 to [`MAX_PEER_ADDRS`] TCP server addresses.
    pub addrs: Vec<SocketAddr>,
    /// Milliseconds since the server last heard from the peer.
    pub age_ms: u32,
}

#[derive(Serialize)]
struct PeersBody<'a> {
    req: u32,
    entries: &'a [PeerEntry],
}

/// Takes one postcard value off the front of `bytes`.
fn take<'a, T: Deserialize<'a>>(bytes: &mut &'a [u8]) -> Result<T, WireError> {
    let (v, rest) = postcard::take_from_bytes(bytes)?;
    *bytes = rest;
    Ok(v)
}

/// Takes a sequence length (a varint) and checks it is within `min..=max`
/// before anything is allocated for it.
fn take_len(
    bytes: &mut &[u8],
    min: usize,
    max: usize,
    field: &'static str,
) -> Result<usize, WireError> {
    let n: u32 = take(bytes)?;
    let n = n as usize;
    if n < min || n > max {
        return Err(WireError::OutOfBounds { field });
    }
    Ok(n)
}

/// Decodes a peer-exchange answer, field by field: each count is checked
/// against its limit before the vector it sizes is made.
fn decode_peers(mut body: &[u8]) -> Result<Response, WireError> {
    let b = &mut body;
    let req: u32 = take(b)?;
    let n = take_len(b, 0, MAX_PEER_ENTRIES, "entries")?;
    let mut entries = Vec::with_capacity(n);
    for _ in 0..n {
        let id: NodeId = take(b)?;
        let k = take_len(b, 1, MAX_PEER_ADDRS, "addrs")?;
        let mut addrs = Vec::with_capacity(k);
        for _ in 0..k {
            addrs.push(take::<SocketAddr>(b)?);
        }
        let age_ms: u32 = take(b)?;
        entries.push(PeerEntry { id, addrs, age_ms });
    }
    if !b.is_empty() {
        return Err(WireError::Malformed(format!("{} trailing bytes", b.len())));
    }
    Ok(Response::Peers { req, entries })
}

#[derive(Serialize, Deserialize)]
struct ManifestBody {
    req: u32,
    manifest: Manifest,
}
#[derive(Serialize, Deserialize)]
struct ErrorBody {
    req: u32,
    code: ErrorCode,
    message: String,
}

fn frame<T: Serialize>(kind: u8, body: &T) -> Vec<u8> {
    let mut out = vec![0, 0, 0, 0, kind];
    let mut out = postcard::to_extend(body, std::mem::take(&mut out))
        .expect("encoding into a Vec cannot fail");
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_le_bytes());
    out
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Request::GetManifest { req, id } => frame(K_GET_MANIFEST, &(req, id)),
            Request::GetChunk { req, id, index } => frame(K_GET_CHUNK, &(req, id, index)),
            Request::GetInventory { req, since, after } => {
                frame(K_GET_INVENTORY, &(req, since, after))
            }
            Request::Goodbye => frame(K_GOODBYE, &()),
            Request::GetPeers { req, port } => frame(K_GET_PEERS, &(req, port)),
        }
    }

    pub fn decode(kind: u8, body: &[u8]) -> Result<Request, WireError> {
        Ok(match kind {
            K_GET_MANIFEST => {
                let (req, id) = decode_exact(body)?;
                Request::GetManifest { req, id }
            }
            K_GET_CHUNK => {
                let (req, id, index) = decode_exact(body)?;
                Request::GetChunk { req, id, index }
            }
            K_GET_INVENTORY => {
                let (req, since, after) = decode_exact(body)?;
                Request::GetInventory { req, since, after }
            }
            K_GOODBYE => {
                decode_exact::<()>(body)?;
                Request::Goodbye
            }
            K_GET_PEERS => {
                let (req, port) = decode_exact(body)?;
                Request::GetPeers { req, port }
            }
            k => return Err(WireError::UnknownKind(k)),
        })
    }
}

impl Response {
    /// Encodes any response but a chunk (see [`chunk_header`]).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Response::Manifest { req, manifest } => frame(
                K_R_MANIFEST,
                &ManifestBody {
                    req: *req,
                    manifest: manifest.clone(),
                },
            ),
            Response::Chunk { req, len } => chunk_header(*req, *len).to_vec(),
            Response::Inventory(page) => frame(K_R_INVENTORY, page),
            Response::Peers { req, entries } => frame(K_R_PEERS, &PeersBody { req: *req, entries }),
            Response::Error { req, code, message } => frame(
                K_R_ERROR,
                &ErrorBody {
                    req: *req,
                    code: *code,
                    message: message.clone(),
                },
            ),
        }
    }

    /// Decodes a response body. For a chunk, `body` holds only the 4-byte
    /// request id and `body_len` is the whole body length as framed.
    pub fn decode(kind: u8, body: &[u8], body_len: usize) -> Result<Response, WireError> {
        Ok(match kind {
            K_R_MANIFEST => {
                let m: ManifestBody = decode_exact(body)?;
                Response::Manifest {
                    req: m.req,
                    manifest: m.manifest,
                }
            }
            K_R_CHUNK => {
                let req: [u8; 4] = body
                    .get(..4)
                    .and_then(|b| b.try_into().ok())
                    .ok_or(WireError::Truncated)?;
                let len = body_len.checked_sub(4).ok_or(WireError::Truncated)?;
                if len > MAX_CHUNK_SIZE as usize {
                    return Err(WireError::TooLarge {
                        len,
                        max: MAX_CHUNK_SIZE as usize,
                    });
                }
                Response::Chunk {
                    req: u32::from_le_bytes(req),
                    len,
                }
            }
            K_R_INVENTORY => {
                let page: InventoryPage = {
                    let _paths = super::PagePathBudget::new(super::MAX_PAGE_MORE_PATHS);
                    decode_exact(body)?
                };
                if page.entries.len() > MAX_PAGE_ENTRIES {
                    return Err(WireError::OutOfBounds { field: "entries" });
                }
                if page.removed.len() > MAX_REMOVED
                    || (page.base.is_none() && !page.removed.is_empty())
                {
                    return Err(WireError::OutOfBounds { field: "removed" });
                }
                if !page.entries.windows(2).all(|w| w[0].id < w[1].id) {
                    return Err(WireError::OutOfBounds { field: "order" });
                }
                for e in &page.entries {
                    e.check()?;
                }
                Response::Inventory(page)
            }
            K_R_PEERS => decode_peers(body)?,
            K_R_ERROR => {
                let e: ErrorBody = decode_exact(body)?;
                super::check_text(&e.message, MAX_ERROR_MESSAGE, "message")?;
                Response::Error {
                    req: e.req,
                    code: e.code,
                    message: e.message,
                }
            }
            k => return Err(WireError::UnknownKind(k)),
        })
    }
}

/// The client's hello, the payload of Noise message 3:
/// `ed25519 key [32] | static_sig [64] | postcard { name }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientHello {
    /// The client's Ed25519 key: its node id is derived from it.
    pub key: PublicKey,
    /// The key's signature over the client's Noise static key.
    pub static_sig: Signature,
    pub name: String,
}

/// The server's hello, the payload of Noise message 2:
/// `ed25519 key [32] | static_sig [64] | postcard { name, digest, contents }`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerHello {
    pub key: PublicKey,
    pub static_sig: Signature,
    pub name: String,
    /// Digest and size of the server's current inventory, so a hello
    /// doubles as a liveness and change probe.
    pub digest: [u8; 16],
    pub contents: u32,
}

#[derive(Serialize, Deserialize)]
struct ServerHelloBody {
    name: String,
    digest: [u8; 16],
    contents: u32,
}

fn hello_bytes<T: Serialize>(key: &PublicKey, sig: &Signature, rest: &T) -> Vec<u8> {
    let mut out = Vec::with_capacity(HELLO_KEYS_LEN + 96);
    out.extend_from_slice(&key.0);
    out.extend_from_slice(sig);
    postcard::to_extend(rest, out).expect("encoding into a Vec cannot fail")
}

/// Splits a hello into its key, its signature and the postcard rest.
fn split_hello(bytes: &[u8]) -> Result<(PublicKey, Signature, &[u8]), WireError> {
    if bytes.len() > MAX_HANDSHAKE_MESSAGE {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            max: MAX_HANDSHAKE_MESSAGE,
        });
    }
    let (keys, rest) = bytes
        .split_at_checked(HELLO_KEYS_LEN)
        .ok_or(WireError::Truncated)?;
    let key: [u8; 32] = keys[..32].try_into().expect("32 bytes");
    let sig: Signature = keys[32..].try_into().expect("64 bytes");
    Ok((PublicKey(key), sig, rest))
}

impl ClientHello {
    pub fn encode(&self) -> Vec<u8> {
        hello_bytes(&self.key, &self.static_sig, &self.name)
    }

    /// Decodes a client hello; the key is not checked here (the handshake
    /// checks the signature).
    pub fn decode(bytes: &[u8]) -> Result<ClientHello, WireError> {
        let (key, static_sig, rest) = split_hello(bytes)?;
        let name: String = decode_exact(rest)?;
        super::check_text(&name, MAX_NODE_NAME, "name")?;
        Ok(ClientHello {
            key,
            static_sig,
            name,
        })
    }
}

impl ServerHello {
    pub fn encode(&self) -> Vec<u8> {
        let body = ServerHelloBody {
            name: self.name.clone(),
            digest: self.digest,
            contents: self.contents,
        };
        hello_bytes(&self.key, &self.static_sig, &body)
    }

    pub fn decode(bytes: &[u8]) -> Result<ServerHello, WireError> {
        let (key, static_sig, rest) = split_hello(bytes)?;
        let body: ServerHelloBody = decode_exact(rest)?;
        super::check_text(&body.name, MAX_NODE_NAME, "name")?;
        Ok(ServerHello {
            key,
            static_sig,
            name: body.name,
            digest: body.digest,
            contents: body.contents,
        })
    }
}

/// The 9 bytes that precede a chunk's raw bytes.
pub fn chunk_header(req: u32, len: usize) -> [u8; 9] {
    let mut h = [0u8; 9];
    h[..4].copy_from_slice(&((len + 5) as u32).to_le_bytes());
    h[4] = K_R_CHUNK;
    h[5..].copy_from_slice(&req.to_le_bytes());
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunkset::{Bitmap, ChunkSet};
    use crate::manifest::{Category, manifest_of};
    use proptest::prelude::*;

    fn split(frame: &[u8]) -> (u8, &[u8]) {
        let (kind, len) = parse_header(frame[..5].try_into().unwrap(), MAX_RESPONSE_FRAME).unwrap();
        assert_eq!(len, frame.len() - 5);
        (kind, &frame[5..])
    }

    #[test]
    fn golden_get_chunk() {
        let f = Request::GetChunk {
            req: 7,
            id: ContentId([0xcc; 32]),
            index: 300,
        }
        .encode();
        assert_eq!(
            crate::id::to_hex(&f),
            concat!(
                "24000000",
                "03", // length 36, kind GetChunk
                "07", // request id 7 (varint)
                "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc", // content id
                "ac02", // chunk index 300 (varint)
            )
        );
    }

    /// The inventory-pull examples of docs/protocol.md §6.5.
    #[test]
    fn golden_inventory_pull() {
        use crate::id::{from_hex, to_hex};
        let abc = InventoryEntry {
            id: ContentId(
                from_hex("f265d24bc81638ad912442db4ae29b6187c843e43f9b482f73be426bb4edd919")
                    .unwrap(),
            ),
            name: "abc.txt".into(),
            more_paths: Default::default(),
            size: 3,
            category: Category::Text,
            comment: String::new(),
            chunks: ChunkSet::Full,
        };
        let full = crate::inventory::Inventory::new(vec![abc.clone()]);
        let empty = crate::inventory::Inventory::new(Vec::new());
        assert_eq!(to_hex(&full.digest), "2da66368da6dc35b0e58867b4185d72e");
        assert_eq!(to_hex(&empty.digest), "2d3adedff11b61f14c886e35afa03673");

        let first = Request::GetInventory {
            req: 1,
            since: None,
            after: None,
        };
        assert_eq!(to_hex(&first.encode()), "0400000004010000");
        let page = Response::Inventory(InventoryPage {
            req: 1,
            digest: full.digest,
            base: None,
            entries: vec![abc.clone()],
            removed: Vec::new(),
            more: false,
        });
        assert_eq!(
            to_hex(&page.encode()),
            "4300000084012da66368da6dc35b0e58867b4185d72e0001f265d24bc81638ad912442db4ae29b6187c843e43f9b482f73be426bb4edd919076162632e74787400030300000000"
        );
        let since = Request::GetInventory {
            req: 1,
            since: Some(full.digest),
            after: None,
        };
        assert_eq!(
            to_hex(&since.encode()),
            "140000000401012da66368da6dc35b0e58867b4185d72e00"
        );
        let delta = Response::Inventory(InventoryPage {
            req: 1,
            digest: empty.digest,
            base: Some(full.digest),
            entries: Vec::new(),
            removed: vec![abc.id],
            more: false,
        });
        assert_eq!(
            to_hex(&delta.encode()),
            "4600000084012d3adedff11b61f14c886e35afa03673012da66368da6dc35b0e58867b4185d72e0001f265d24bc81638ad912442db4ae29b6187c843e43f9b482f73be426bb4edd91900"
        );
        let hello = ServerHello {
            key: PublicKey([0x11; 32]),
            static_sig: [0x33; 64],
            name: "beta".into(),
            digest: full.digest,
            contents: 1,
        };
        assert_eq!(
            to_hex(&hello.encode()),
            concat!(
                "1111111111111111111111111111111111111111111111111111111111111111",
                "33333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333333",
                "0462657461",
                "2da66368da6dc35b0e58867b4185d72e",
                "01"
            )
        );
        assert_eq!(ServerHello::decode(&hello.encode()).unwrap(), hello);
    }

    #[test]
    fn golden_chunk_header() {
        assert_eq!(crate::id::to_hex(&chunk_header(7, 3)), "080000008307000000");
    }

    #[test]
    fn requests_round_trip() {
        let id = ContentId([1; 32]);
        for r in [
            Request::GetManifest { req: 1, id },
            Request::GetChunk {
                req: u32::MAX,
                id,
                index: 5,
            },
            Request::GetInventory {
                req: 0,
                since: None,
                after: None,
            },
            Request::GetInventory {
                req: 1,
                since: Some([7; 16]),
                after: Some(id),
            },
            Request::Goodbye,
            Request::GetPeers { req: 9, port: 0 },
            Request::GetPeers {
                req: u32::MAX,
                port: u16::MAX,
            },
        ] {
            let f = r.encode();
            let (kind, body) = split(&f);
            assert_eq!(Request::decode(kind, body).unwrap(), r);
        }
    }

    #[test]
    fn responses_round_trip() {
        let entry = InventoryEntry {
            id: ContentId([3; 32]),
            name: "photo.png".into(),
            more_paths: Default::default(),
            size: 10,
            category: Category::Image,
            comment: "hi".into(),
            chunks: ChunkSet::Partial(Bitmap::new(3)),
        };
        for r in [
            Response::Manifest {
                req: 4,
                manifest: manifest_of(b"abcdefg", 3),
            },
            Response::Inventory(InventoryPage {
                req: 5,
                digest: [1; 16],
                base: Some([2; 16]),
                entries: vec![entry],
                removed: vec![ContentId([4; 32])],
                more: true,
            }),
            Response::Error {
                req: 6,
                code: ErrorCode::NoChunk,
                message: "later".into(),
            },
            Response::Peers {
                req: 7,
                entries: vec![peer_entry(1, 1), peer_entry(2, MAX_PEER_ADDRS)],
            },
            Response::Peers {
                req: 8,
                entries: Vec::new(),
            },
        ] {
            let f = r.encode();
            let (kind, body) = split(&f);
            assert_eq!(Response::decode(kind, body, body.len()).unwrap(), r);
        }
        let h = chunk_header(9, 100);
        let (kind, len) = parse_header(h[..5].try_into().unwrap(), MAX_RESPONSE_FRAME).unwrap();
        assert_eq!(
            Response::decode(kind, &h[5..], len).unwrap(),
            Response::Chunk { req: 9, len: 100 }
        );
    }

    #[test]
    fn inventory_names_with_control_characters_are_refused() {
        let entry = InventoryEntry {
            id: ContentId([3; 32]),
            name: "photo\u{1b}]0;pwned\u{7}.png".into(),
            more_paths: Default::default(),
            size: 1,
            category: Category::Image,
            comment: String::new(),
            chunks: ChunkSet::Full,
        };
        let f = Response::Inventory(InventoryPage {
            req: 1,
            digest: [0; 16],
            base: None,
            entries: vec![entry],
            removed: Vec::new(),
            more: false,
        })
        .encode();
        assert_eq!(
            Response::decode(f[4], &f[5..], f.len() - 5),
            Err(WireError::OutOfBounds { field: "name" })
        );
    }

    #[test]
    fn bitmaps_longer_than_the_size_needs_are_refused() {
        let entry = |size: u64, bytes: usize| InventoryEntry {
            id: ContentId([3; 32]),
            name: "x.bin".into(),
            more_paths: Default::default(),
            size,
            category: Category::Other,
            comment: String::new(),
            chunks: ChunkSet::Partial(Bitmap::from_bytes(vec![0xff; bytes])),
        };
        let page = |e: InventoryEntry| {
            Response::Inventory(InventoryPage {
                req: 1,
                digest: [0; 16],
                base: None,
                entries: vec![e],
                removed: Vec::new(),
                more: false,
            })
            .encode()
        };
        // 10 bytes: one chunk, one byte of bitmap.
        let f = page(entry(10, 1));
        assert!(Response::decode(f[4], &f[5..], f.len() - 5).is_ok());
        let f = page(entry(10, 65_536));
        assert_eq!(
            Response::decode(f[4], &f[5..], f.len() - 5),
            Err(WireError::OutOfBounds { field: "chunks" })
        );
        // 17 MiB: 17 chunks, 3 bytes.
        let f = page(entry(17 << 20, 3));
        assert!(Response::decode(f[4], &f[5..], f.len() - 5).is_ok());
        let f = page(entry(17 << 20, 4));
        assert!(Response::decode(f[4], &f[5..], f.len() - 5).is_err());
    }

    /// A page of short paths decodes to a `String` per path whatever its
    /// length on the wire: the other paths of all its entries together
    /// are bounded while they are decoded.
    #[test]
    fn other_paths_are_bounded_per_page() {
        let page = |entries: usize| {
            let entries = (0..entries)
                .map(|i| InventoryEntry {
                    id: ContentId([i as u8; 32]),
                    name: "a.txt".into(),
                    more_paths: crate::wire::MorePaths::new(
                        (0..1000).map(|p| format!("p{p:04}")).collect(),
                    ),
                    size: 1,
                    category: Category::Text,
                    comment: String::new(),
                    chunks: ChunkSet::Full,
                })
                .collect();
            Response::Inventory(InventoryPage {
                req: 1,
                digest: [0; 16],
                base: None,
                entries,
                removed: Vec::new(),
                more: false,
            })
            .encode()
        };
        let f = page(crate::wire::MAX_PAGE_MORE_PATHS / 1000);
        assert!(Response::decode(f[4], &f[5..], f.len() - 5).is_ok());
        let f = page(crate::wire::MAX_PAGE_MORE_PATHS / 1000 + 1);
        assert!(Response::decode(f[4], &f[5..], f.len() - 5).is_err());
        // The bound holds only while a page is decoded.
        let f = page(crate::wire::MAX_PAGE_MORE_PATHS / 1000);
        assert!(Response::decode(f[4], &f[5..], f.len() - 5).is_ok());
    }

    #[test]
    fn inventory_pages_are_bounded_before_they_are_read() {
        assert!(check_response_len(K_R_INVENTORY, 1 << 20).is_ok());
        assert!(matches!(
            check_response_len(K_R_INVENTORY, 8 << 20),
            Err(WireError::TooLarge { .. })
        ));
        // Manifests and chunks keep the general limit.
        assert!(check_response_len(K_R_MANIFEST, 8 << 20).is_ok());
        assert!(check_response_len(K_R_CHUNK, 4 << 20).is_ok());
    }

    #[test]
    fn limits() {
        assert!(matches!(
            parse_header(&[0xff, 0xff, 0, 0, 1], MAX_REQUEST_FRAME),
            Err(WireError::TooLarge { .. })
        ));
        assert_eq!(
            parse_header(&[0, 0, 0, 0, 1], MAX_REQUEST_FRAME),
            Err(WireError::Truncated)
        );
        let long = ClientHello {
            key: PublicKey([0; 32]),
            static_sig: [0; 64],
            name: "x".repeat(65),
        }
        .encode();
        assert_eq!(
            ClientHello::decode(&long),
            Err(WireError::OutOfBounds { field: "name" })
        );
        assert_eq!(ClientHello::decode(&long[..95]), Err(WireError::Truncated));
        assert_eq!(check_preamble(b"LNSH\x03\x01"), Ok(1));
        // A version-2 node (before entries carried their other paths).
        assert_eq!(check_preamble(b"LNSH\x02\x00"), Err(WireError::Version(2)));
        assert_eq!(check_preamble(b"LNSH\x01\x00"), Err(WireError::Version(1)));
        assert_eq!(check_preamble(b"GET / "), Err(WireError::BadMagic));
    }

    fn peer_entry(i: u8, addrs: usize) -> PeerEntry {
        PeerEntry {
            id: NodeId([i; 16]),
            addrs: (0..addrs)
                .map(|k| SocketAddr::from(([0xfe80, 0, 0, 0, 0, 0, 0, k as u16], u16::MAX)))
                .collect(),
            age_ms: u32::MAX,
        }
    }

    /// The peer-exchange example of docs/protocol.md §6.10.
    #[test]
    fn golden_peer_exchange() {
        use crate::id::to_hex;
        let ask = Request::GetPeers { req: 3, port: 7373 };
        assert_eq!(to_hex(&ask.encode()), "040000000603cd39");
        let answer = Response::Peers {
            req: 3,
            entries: vec![PeerEntry {
                id: NodeId([0xab; 16]),
                addrs: vec!["10.0.0.2:7373".parse().unwrap()],
                age_ms: 1500,
            }],
        };
        assert_eq!(
            to_hex(&answer.encode()),
            concat!(
                "1d000000",
                "85",                               // length 29, kind Peers
                "03",                               // request id
                "01",                               // one entry
                "abababababababababababababababab", // node id
                "01",                               // one address
                "00",
                "0a000002",
                "cd39", // V4 10.0.0.2, port 7373 (varint)
                "dc0b", // age 1500 ms (varint)
            )
        );
    }

    #[test]
    fn peer_answers_are_bounded() {
        // The largest answer a node sends fits the frame limit.
        let full = Response::Peers {
            req: u32::MAX,
            entries: (0..MAX_PEER_ENTRIES as u8)
                .map(|i| peer_entry(i, MAX_PEER_ADDRS))
                .collect(),
        }
        .encode();
        assert!(full.len() - 4 <= MAX_PEERS_FRAME as usize, "{}", full.len());
        let (kind, body) = split(&full);
        assert!(check_response_len(kind, body.len()).is_ok());
        assert!(Response::decode(kind, body, body.len()).is_ok());
        assert!(matches!(
            check_response_len(K_R_PEERS, MAX_PEERS_FRAME as usize),
            Err(WireError::TooLarge { .. })
        ));
        let refused = |entries: Vec<PeerEntry>| {
            let f = Response::Peers { req: 1, entries }.encode();
            Response::decode(f[4], &f[5..], f.len() - 5)
        };
        let too_many = (0..=MAX_PEER_ENTRIES as u8)
            .map(|i| peer_entry(i, 1))
            .collect();
        assert_eq!(
            refused(too_many),
            Err(WireError::OutOfBounds { field: "entries" })
        );
        for n in [0, MAX_PEER_ADDRS + 1] {
            assert_eq!(
                refused(vec![peer_entry(1, n)]),
                Err(WireError::OutOfBounds { field: "addrs" })
            );
        }
        // A count is refused before anything is allocated for it.
        let huge = [1u8, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert_eq!(
            Response::decode(K_R_PEERS, &huge, huge.len()),
            Err(WireError::OutOfBounds { field: "entries" })
        );
        let mut trailing = Response::Peers {
            req: 1,
            entries: vec![],
        }
        .encode();
        trailing.push(0);
        trailing[0] += 1;
        assert!(Response::decode(K_R_PEERS, &trailing[5..], trailing.len() - 5).is_err());
    }

    proptest! {
        #[test]
        fn random_requests_never_panic(kind in any::<u8>(), body in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Request::decode(kind, &body);
        }

        #[test]
        fn random_responses_never_panic(kind in 0x80u8..0x90, body in proptest::collection::vec(any::<u8>(), 0..300), extra in 0usize..10_000_000) {
            let _ = Response::decode(kind, &body, body.len() + extra);
        }

        /// Any body decodes to an answer within every bound, or to an error.
        #[test]
        fn random_peer_answers_are_total_and_bounded(body in proptest::collection::vec(any::<u8>(), 0..2000)) {
            if let Ok(Response::Peers { entries, .. }) = Response::decode(K_R_PEERS, &body, body.len()) {
                prop_assert!(entries.len() <= MAX_PEER_ENTRIES);
                prop_assert!(entries.iter().all(|e| (1..=MAX_PEER_ADDRS).contains(&e.addrs.len())));
            }
        }

        /// Every answer within the bounds survives encoding, and any cut of
        /// it is refused.
        #[test]
        fn peer_answers_round_trip(
            req in any::<u32>(),
            raw in proptest::collection::vec((any::<[u8; 16]>(), proptest::collection::vec((any::<bool>(), any::<[u8; 16]>(), any::<u16>()), 1..=MAX_PEER_ADDRS), any::<u32>()), 0..=MAX_PEER_ENTRIES),
            cut in any::<prop::sample::Index>(),
        ) {
            let entries: Vec<PeerEntry> = raw.into_iter().map(|(id, addrs, age_ms)| PeerEntry {
                id: NodeId(id),
                addrs: addrs.into_iter().map(|(v4, ip, port)| if v4 {
                    SocketAddr::from(([ip[0], ip[1], ip[2], ip[3]], port))
                } else {
                    SocketAddr::from((ip, port))
                }).collect(),
                age_ms,
            }).collect();
            let r = Response::Peers { req, entries };
            let f = r.encode();
            prop_assert!(f.len() - 4 <= MAX_PEERS_FRAME as usize);
            let (kind, body) = split(&f);
            prop_assert_eq!(Response::decode(kind, body, body.len()), Ok(r));
            let cut = cut.index(body.len());
            prop_assert!(Response::decode(kind, &body[..cut], cut).is_err());
        }

        #[test]
        fn random_hellos_never_panic(body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = ClientHello::decode(&body);
            let _ = ServerHello::decode(&body);
        }

        #[test]
        fn truncated_manifest_never_panics(cut in 0usize..400) {
            let f = Response::Manifest { req: 1, manifest: manifest_of(&[7u8; 1000], 100) }.encode();
            let body = &f[5..];
            let cut = cut.min(body.len());
            let r = Response::decode(f[4], &body[..cut], cut);
            prop_assert!(r.is_ok() == (cut == body.len()));
        }
    }
}
