//! Bytes <-> messages, and nothing else: the UDP discovery datagrams
//! ([`datagram`]) and the TCP peer protocol frames ([`frame`]). Every decoder
//! is total: any input gives a message or an error, never a panic, and every
//! length is checked against a named limit before anything is allocated.
//! docs/protocol.md is the byte-level specification of what is here.

pub mod datagram;
pub mod frame;

use serde::{Deserialize, Serialize};

use crate::chunkset::ChunkSet;
use crate::id::ContentId;
use crate::manifest::Category;

/// Protocol version carried by every datagram and by the TCP hello.
pub const VERSION: u8 = 2;
/// First bytes of every datagram and of every TCP connection's hello.
pub const MAGIC: [u8; 4] = *b"LNSH";
/// Longest node name accepted, in bytes.
pub const MAX_NODE_NAME: usize = 64;
/// Longest file name accepted, in bytes.
pub const MAX_FILE_NAME: usize = 255;
/// Longest comment accepted, in bytes.
pub const MAX_COMMENT: usize = 1024;
/// Longest error message accepted, in bytes.
pub const MAX_ERROR_MESSAGE: usize = 512;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message too short")]
    Truncated,
    #[error("bad magic (not a lanshare message)")]
    BadMagic,
    #[error("unsupported protocol version {0} (this node speaks {VERSION})")]
    Version(u8),
    #[error("unknown message kind {0:#04x}")]
    UnknownKind(u8),
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge { len: usize, max: usize },
    #[error("malformed message body: {0}")]
    Malformed(String),
    #[error("field {field} is out of bounds")]
    OutOfBounds { field: &'static str },
}

impl From<postcard::Error> for WireError {
    fn from(e: postcard::Error) -> Self {
        WireError::Malformed(e.to_string())
    }
}

/// One content in a node's inventory, as sent to peers.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InventoryEntry {
    pub id: ContentId,
    pub name: String,
    pub size: u64,
    pub category: Category,
    pub comment: String,
    /// Which chunks the node holds: `Full`, or a bitmap while downloading.
    pub chunks: ChunkSet,
}

impl InventoryEntry {
    /// About how many bytes the entry takes on the wire.
    pub fn approx_size(&self) -> usize {
        let bitmap = match &self.chunks {
            ChunkSet::Full => 0,
            ChunkSet::Partial(b) => b.as_bytes().len(),
        };
        48 + self.name.len() + self.comment.len() + bitmap
    }
}

/// Checks a text field from the network: at most `max` bytes and no
/// control characters (which could rewrite a user's terminal).
pub fn check_text(s: &str, max: usize, field: &'static str) -> Result<(), WireError> {
    if s.len() > max || s.chars().any(char::is_control) {
        return Err(WireError::OutOfBounds { field });
    }
    Ok(())
}

/// Makes local text safe to send: control characters become `_`, and it
/// is cut at a character boundary to `max` bytes.
pub fn clean_text(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect();
    while out.len() > max {
        out.pop();
    }
    out
}

impl InventoryEntry {
    /// Checks every bound of an entry received from the network.
    pub fn check(&self) -> Result<(), WireError> {
        if self.name.is_empty() {
            return Err(WireError::OutOfBounds { field: "name" });
        }
        check_text(&self.name, MAX_FILE_NAME, "name")?;
        // Comments may span lines; other control characters are refused.
        if self.comment.len() > MAX_COMMENT
            || self.comment.chars().any(|c| c.is_control() && c != '\n')
        {
            return Err(WireError::OutOfBounds { field: "comment" });
        }
        // One bit per chunk of the advertised size, and no more (at most
        // MAX_CHUNKS / 8 bytes): a bitmap cannot carry more than it means.
        if let ChunkSet::Partial(b) = &self.chunks
            && b.as_bytes().len() > crate::chunkset::max_bitmap_bytes(self.size)
        {
            return Err(WireError::OutOfBounds { field: "chunks" });
        }
        Ok(())
    }
}

/// Decodes a postcard body that must fill `bytes` exactly.
fn decode_exact<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, WireError> {
    let (value, rest) = postcard::take_from_bytes(bytes)?;
    if !rest.is_empty() {
        return Err(WireError::Malformed(format!(
            "{} trailing bytes",
            rest.len()
        )));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_text_is_always_accepted() {
        for s in [
            "plain",
            "tab\there",
            "new\nline",
            "\u{1b}[31mred",
            &"é".repeat(200),
        ] {
            let c = clean_text(s, MAX_NODE_NAME);
            check_text(&c, MAX_NODE_NAME, "name").unwrap();
        }
    }
}
