//! UDP discovery datagrams: announce, query and goodbye.
//!
//! ```text
//! magic "LNSH" | version u8 | kind u8 | postcard body
//! ```
//! A datagram never exceeds [`MAX_DATAGRAM`] bytes. The inventory itself is
//! never in a datagram: an announce carries its digest, and a peer whose copy
//! is stale pulls the full inventory over TCP.

use serde::{Deserialize, Serialize};

use super::{MAGIC, MAX_NODE_NAME, VERSION, WireError, decode_exact};
use crate::id::NodeId;

/// Largest datagram sent or accepted; fits every LAN MTU with room to spare.
pub const MAX_DATAGRAM: usize = 1200;
const HEADER: usize = 6;

const KIND_ANNOUNCE: u8 = 1;
const KIND_QUERY: u8 = 2;
const KIND_GOODBYE: u8 = 3;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Datagram {
    Announce(Announce),
    /// "Who is there?": sent by a node that starts; holders answer with an
    /// announce (rate-limited) so the newcomer sees the network at once.
    Query {
        node: NodeId,
    },
    /// Sent on a clean stop: drop this node now.
    Goodbye {
        node: NodeId,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    pub node: NodeId,
    pub name: String,
    /// TCP port of the node's peer server, on the datagram's source address.
    pub tcp_port: u16,
    /// How often this node announces; peers expire it after a few missed ones.
    pub interval_ms: u32,
    /// Digest of the node's inventory; a change means "pull it again".
    pub inventory_digest: [u8; 16],
    /// Number of contents in the inventory (for display before the pull).
    pub contents: u32,
}

impl Datagram {
    pub fn node(&self) -> NodeId {
        match self {
            Datagram::Announce(a) => a.node,
            Datagram::Query { node } | Datagram::Goodbye { node } => *node,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(128);
        out.extend_from_slice(&MAGIC);
        out.push(VERSION);
        let body = match self {
            Datagram::Announce(a) => {
                out.push(KIND_ANNOUNCE);
                postcard::to_extend(a, out)
            }
            Datagram::Query { node } => {
                out.push(KIND_QUERY);
                postcard::to_extend(node, out)
            }
            Datagram::Goodbye { node } => {
                out.push(KIND_GOODBYE);
                postcard::to_extend(node, out)
            }
        };
        let out = body.expect("encoding into a Vec cannot fail");
        debug_assert!(out.len() <= MAX_DATAGRAM);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Datagram, WireError> {
        if bytes.len() > MAX_DATAGRAM {
            return Err(WireError::TooLarge {
                len: bytes.len(),
                max: MAX_DATAGRAM,
            });
        }
        if bytes.len() < HEADER {
            return Err(WireError::Truncated);
        }
        if bytes[..4] != MAGIC {
            return Err(WireError::BadMagic);
        }
        if bytes[4] != VERSION {
            return Err(WireError::Version(bytes[4]));
        }
        let body = &bytes[HEADER..];
        match bytes[5] {
            KIND_ANNOUNCE => {
                let a: Announce = decode_exact(body)?;
                super::check_text(&a.name, MAX_NODE_NAME, "name")?;
                if a.tcp_port == 0 {
                    return Err(WireError::OutOfBounds { field: "tcp_port" });
                }
                Ok(Datagram::Announce(a))
            }
            KIND_QUERY => Ok(Datagram::Query {
                node: decode_exact(body)?,
            }),
            KIND_GOODBYE => Ok(Datagram::Goodbye {
                node: decode_exact(body)?,
            }),
            k => Err(WireError::UnknownKind(k)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn announce() -> Datagram {
        Datagram::Announce(Announce {
            node: NodeId([0x11; 16]),
            name: "alpha".into(),
            tcp_port: 7373,
            interval_ms: 5000,
            inventory_digest: [0xab; 16],
            contents: 3,
        })
    }

    /// Golden bytes: a change here is a wire format change (bump VERSION).
    #[test]
    fn announce_golden_bytes() {
        let hex = crate::id::to_hex(&announce().encode());
        assert_eq!(
            hex,
            concat!(
                "4c4e5348",
                "01",
                "01",                               // magic, version, kind=announce
                "11111111111111111111111111111111", // node id (16 bytes)
                "05",
                "616c706861",                       // name: len 5, "alpha"
                "cd39",                             // tcp_port 7373 (varint)
                "8827",                             // interval_ms 5000 (varint)
                "abababababababababababababababab", // inventory digest (16 bytes)
                "03",                               // contents 3 (varint)
            )
        );
    }

    #[test]
    fn goodbye_golden_bytes() {
        let bytes = Datagram::Goodbye {
            node: NodeId([0x22; 16]),
        }
        .encode();
        assert_eq!(
            crate::id::to_hex(&bytes),
            "4c4e5348010322222222222222222222222222222222"
        );
    }

    #[test]
    fn rejects_control_characters_in_names() {
        let Datagram::Announce(mut a) = announce() else {
            unreachable!()
        };
        a.name = "evil\x1b[2J".into();
        assert_eq!(
            Datagram::decode(&Datagram::Announce(a).encode()),
            Err(WireError::OutOfBounds { field: "name" })
        );
    }

    #[test]
    fn rejects_bad_headers() {
        let good = announce().encode();
        assert_eq!(Datagram::decode(&good[..3]), Err(WireError::Truncated));
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(Datagram::decode(&b), Err(WireError::BadMagic));
        let mut b = good.clone();
        b[4] = 9;
        assert_eq!(Datagram::decode(&b), Err(WireError::Version(9)));
        let mut b = good.clone();
        b[5] = 77;
        assert_eq!(Datagram::decode(&b), Err(WireError::UnknownKind(77)));
        let mut b = good.clone();
        b.push(0);
        assert!(matches!(Datagram::decode(&b), Err(WireError::Malformed(_))));
        assert!(matches!(
            Datagram::decode(&vec![0; 5000]),
            Err(WireError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn round_trip(node in any::<[u8; 16]>(), name in "[a-zA-Z0-9 -]{0,64}", port in 1u16.., interval in any::<u32>(),
                      digest in any::<[u8; 16]>(), contents in any::<u32>()) {
            let d = Datagram::Announce(Announce { node: NodeId(node), name, tcp_port: port, interval_ms: interval, inventory_digest: digest, contents });
            let bytes = d.encode();
            prop_assert!(bytes.len() <= MAX_DATAGRAM);
            prop_assert_eq!(Datagram::decode(&bytes).unwrap(), d);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let _ = Datagram::decode(&bytes);
        }

        #[test]
        fn random_bodies_never_panic(kind in 0u8..5, body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let mut bytes = b"LNSH\x01".to_vec();
            bytes.push(kind);
            bytes.extend(body);
            let _ = Datagram::decode(&bytes);
        }

        #[test]
        fn truncations_never_panic(cut in 0usize..60) {
            let bytes = announce().encode();
            let cut = cut.min(bytes.len());
            prop_assert!(Datagram::decode(&bytes[..cut]).is_err() || cut == bytes.len());
        }
    }
}
