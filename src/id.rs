//! Identifier newtypes: content ids, chunk hashes and node ids, with their
//! hex and short display forms. Pure; no I/O.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Number of hex digits shown in the short form of a content id.
pub const SHORT_HEX: usize = 12;
/// The fewest hex digits a user may type to name a content by id prefix.
pub const MIN_PREFIX_HEX: usize = 8;

/// BLAKE3 hash that names one content: it commits to the size, the chunk
/// size, the whole-file SHA-256 and every chunk hash (see `manifest`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ContentId(pub [u8; 32]);

/// BLAKE3 hash of one chunk's bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChunkHash(pub [u8; 32]);

/// Random identity of a node, created once and kept in `HOME/.lanshare/node_id`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub [u8; 16]);

pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Parses exactly `N` bytes of hex (either case).
pub fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let s = s.as_bytes();
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

macro_rules! hex_newtype {
    ($t:ident, $n:expr) => {
        impl $t {
            pub fn to_hex(&self) -> String {
                to_hex(&self.0)
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.to_hex())
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "{}({})",
                    stringify!($t),
                    &self.to_hex()[..SHORT_HEX.min($n * 2)]
                )
            }
        }
        impl FromStr for $t {
            type Err = InvalidHex;
            fn from_str(s: &str) -> Result<Self, InvalidHex> {
                from_hex::<$n>(s).map($t).ok_or(InvalidHex)
            }
        }
    };
}

hex_newtype!(ContentId, 32);
hex_newtype!(ChunkHash, 32);
hex_newtype!(NodeId, 16);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a valid hex identifier")]
pub struct InvalidHex;

impl ContentId {
    /// The first [`SHORT_HEX`] hex digits, for tables and log lines.
    pub fn short(&self) -> String {
        self.to_hex()[..SHORT_HEX].to_string()
    }

    /// True when `prefix` (hex, any case) is a prefix of this id's hex form.
    pub fn has_hex_prefix(&self, prefix: &str) -> bool {
        let hex = self.to_hex();
        prefix.len() <= hex.len()
            && hex.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
    }
}

impl NodeId {
    pub fn random() -> Self {
        NodeId(rand::random())
    }
    pub fn short(&self) -> String {
        self.to_hex()[..8].to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ContentId([0xab; 32]);
        assert_eq!(id.to_hex().parse::<ContentId>().unwrap(), id);
        assert_eq!(id.short(), "abababababab");
        assert!(id.has_hex_prefix("ABABab"));
        assert!(!id.has_hex_prefix("abac"));
        assert_eq!("zz".parse::<NodeId>(), Err(InvalidHex));
        assert_eq!(from_hex::<2>("0aFf"), Some([0x0a, 0xff]));
        assert_eq!(from_hex::<2>("0aF"), None);
    }
}
