//! Private swarms: the shared swarm key, its text form, and the keys derived
//! from it. Without a key a node is in the open swarm ([`Mode::Open`]).
//!
//! The key is 32 random bytes, written as one line that survives a chat:
//! `lanshare-swarm1-` + 64 hex digits + 4 hex digits of checksum (the first
//! two bytes of `blake3(key)`), so a truncated or mistyped key is refused
//! instead of silently making another swarm.
//!
//! Every use gets its own key through BLAKE3 `derive_key` (contexts below,
//! vectors in docs/protocol.md); the swarm key itself is never used directly,
//! never logged, and `Debug` prints it redacted.
//!
//! Owns: parsing and deriving. Never touches the network or the disk.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::id::{from_hex, to_hex};

const TEXT_PREFIX: &str = "lanshare-swarm1-";
/// `derive_key` context of the Noise pre-shared key (TCP).
pub const TCP_PSK_CONTEXT: &str = "lanshare tcp psk v1";
/// `derive_key` context of the XChaCha20-Poly1305 key of sealed datagrams.
pub const DATAGRAM_CONTEXT: &str = "lanshare datagram v1";
/// `derive_key` context of the key sealing the mDNS TXT blob.
pub const MDNS_CONTEXT: &str = "lanshare mdns v1";
/// `derive_key` context of the opaque swarm tag shown to trackers.
pub const TRACKER_TAG_CONTEXT: &str = "lanshare tracker tag v1";

/// A shared swarm key.
#[derive(Clone, PartialEq, Eq)]
pub struct SwarmKey([u8; 32]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BadSwarmKey {
    #[error("a swarm key starts with {TEXT_PREFIX} (make one with `lanshare key new`)")]
    Prefix,
    #[error("a swarm key has 68 hex digits after {TEXT_PREFIX}; this one has {0}")]
    Length(usize),
    #[error("the swarm key has a character that is not a hex digit")]
    NotHex,
    #[error("the swarm key's checksum does not match: it was mistyped or cut; copy it again")]
    Checksum,
}

impl SwarmKey {
    pub fn generate() -> SwarmKey {
        SwarmKey(crate::identity::random_bytes())
    }

    pub fn from_bytes(bytes: [u8; 32]) -> SwarmKey {
        SwarmKey(bytes)
    }

    /// The one-line text form (what `lanshare key new` prints).
    pub fn to_text(&self) -> String {
        format!(
            "{TEXT_PREFIX}{}{}",
            to_hex(&self.0),
            to_hex(&checksum(&self.0))
        )
    }

    /// The keys this swarm key derives.
    pub fn derive(&self) -> SwarmKeys {
        let tag = blake3::derive_key(TRACKER_TAG_CONTEXT, &self.0);
        let mut tracker_tag = [0u8; 16];
        tracker_tag.copy_from_slice(&tag[..16]);
        SwarmKeys {
            tcp_psk: blake3::derive_key(TCP_PSK_CONTEXT, &self.0),
            datagram: blake3::derive_key(DATAGRAM_CONTEXT, &self.0),
            mdns: blake3::derive_key(MDNS_CONTEXT, &self.0),
            tracker_tag,
        }
    }
}

fn checksum(key: &[u8; 32]) -> [u8; 2] {
    let h = blake3::hash(key);
    [h.as_bytes()[0], h.as_bytes()[1]]
}

impl FromStr for SwarmKey {
    type Err = BadSwarmKey;
    fn from_str(s: &str) -> Result<SwarmKey, BadSwarmKey> {
        let hex = s
            .trim()
            .strip_prefix(TEXT_PREFIX)
            .ok_or(BadSwarmKey::Prefix)?;
        if hex.len() != 68 {
            return Err(BadSwarmKey::Length(hex.len()));
        }
        if !hex.is_ascii() {
            return Err(BadSwarmKey::NotHex);
        }
        let key = from_hex::<32>(&hex[..64]).ok_or(BadSwarmKey::NotHex)?;
        let sum = from_hex::<2>(&hex[64..]).ok_or(BadSwarmKey::NotHex)?;
        if sum != checksum(&key) {
            return Err(BadSwarmKey::Checksum);
        }
        Ok(SwarmKey(key))
    }
}

impl fmt::Debug for SwarmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SwarmKey(<redacted>)")
    }
}

/// The keys derived from one swarm key.
#[derive(Clone, PartialEq, Eq)]
pub struct SwarmKeys {
    /// Noise `psk0` of every TCP connection.
    pub tcp_psk: [u8; 32],
    /// XChaCha20-Poly1305 key of sealed datagrams.
    pub datagram: [u8; 32],
    /// XChaCha20-Poly1305 key of the mDNS TXT blob.
    pub mdns: [u8; 32],
    /// Opaque tag a tracker groups a private swarm's nodes by.
    pub tracker_tag: [u8; 16],
}

impl fmt::Debug for SwarmKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SwarmKeys(<redacted>)")
    }
}

/// Which swarm a node is in.
#[derive(Clone, Debug, Default)]
pub enum Mode {
    /// No key: plaintext data after an authenticating handshake, signed
    /// datagrams.
    #[default]
    Open,
    /// A swarm key: everything on the wire is encrypted and authenticated
    /// with keys derived from it.
    Private(Arc<SwarmKeys>),
}

impl Mode {
    pub fn private(key: &SwarmKey) -> Mode {
        Mode::Private(Arc::new(key.derive()))
    }

    /// The mode byte of the TCP preamble: 0 open, 1 private.
    pub fn wire_byte(&self) -> u8 {
        match self {
            Mode::Open => 0,
            Mode::Private(_) => 1,
        }
    }

    pub fn keys(&self) -> Option<&SwarmKeys> {
        match self {
            Mode::Open => None,
            Mode::Private(k) => Some(k),
        }
    }

    pub fn is_private(&self) -> bool {
        matches!(self, Mode::Private(_))
    }

    /// "open" or "private", for status and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Mode::Open => "open",
            Mode::Private(_) => "private",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_and_checksum() {
        let k = SwarmKey::from_bytes([9u8; 32]);
        let text = k.to_text();
        assert_eq!(text.len(), TEXT_PREFIX.len() + 68);
        assert_eq!(text.parse::<SwarmKey>(), Ok(k.clone()));
        assert_eq!(format!(" {text}\n").parse::<SwarmKey>(), Ok(k.clone()));
        // One digit changed: refused by the checksum.
        let mut bad = text.clone().into_bytes();
        let i = TEXT_PREFIX.len() + 3;
        bad[i] = if bad[i] == b'0' { b'1' } else { b'0' };
        let bad = String::from_utf8(bad).unwrap();
        assert_eq!(bad.parse::<SwarmKey>(), Err(BadSwarmKey::Checksum));
        assert_eq!(text[..70].parse::<SwarmKey>(), Err(BadSwarmKey::Length(54)));
        assert_eq!("hello".parse::<SwarmKey>(), Err(BadSwarmKey::Prefix));
        assert!(!format!("{k:?}").contains("0909"));
    }

    #[test]
    fn golden_derivations() {
        // Fixed vectors, also in docs/protocol.md.
        let k = SwarmKey::from_bytes([9u8; 32]);
        let d = k.derive();
        assert_eq!(
            k.to_text(),
            "lanshare-swarm1-09090909090909090909090909090909090909090909090909090909090909097a86"
        );
        assert_eq!(
            to_hex(&d.tcp_psk),
            "94a975e3a1cc8ba8179487c55051dfe0f4d6227865c85039ace37643b63d8dff"
        );
        assert_eq!(
            to_hex(&d.datagram),
            "7099609d82e2b11396e7c3d811f7494fb39918a425a8b634fd99fecd37aeff4e"
        );
        assert_eq!(
            to_hex(&d.mdns),
            "049d8f34677564a81a5b05c1c1a992b3e8d49462340ba7e3375ef0a4a4909e73"
        );
        assert_eq!(to_hex(&d.tracker_tag), "e825ed78799756ada91c30f7e87fff08");
        // Different keys, different everything.
        let e = SwarmKey::from_bytes([10u8; 32]).derive();
        assert_ne!(d.tcp_psk, e.tcp_psk);
        assert_ne!(d.datagram, d.mdns);
    }
}
