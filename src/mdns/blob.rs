//! The sealed `x=` value of a private swarm's mDNS record: this node's
//! signed `{pk, digest, seq}`, sealed with the swarm's mDNS key, in
//! unpadded base64url so it fits one TXT string.
//!
//! ```text
//! signed = ed_pk [32] | digest [16] | seq u64 BE | sig [64]
//!          sig = Ed25519 over SIGN_DOMAIN || 0x00 || ed_pk | digest | seq
//! blob   = nonce [24] | XChaCha20-Poly1305(key = SwarmKeys.mdns, aad = AAD, signed) | tag [16]
//! x=     base64url(blob), no padding: 214 characters
//! ```
//! No name, no id in clear: without the key, the record says only "some
//! lanshare node is at this address". Owns the format; never touches the
//! network or the dictionary.

use crate::id::NodeId;
use crate::identity::{Identity, PublicKey};
use crate::wire::datagram::{NONCE, TAG, aead_open, aead_seal};

/// Signing domain of the blob's signature.
pub const SIGN_DOMAIN: &str = "lanshare mdns v2";
/// Associated data of the blob's AEAD.
pub const AAD: &[u8] = b"LNSH\x02mdns";
const SIGNED: usize = 32 + 16 + 8;
const PLAIN: usize = SIGNED + 64;
/// Length of the blob in bytes, and of its text.
pub const BLOB: usize = NONCE + PLAIN + TAG;
pub const TEXT: usize = (BLOB * 4).div_ceil(3);

/// What a member learns from a blob: a signed announce of the node's
/// inventory digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claim {
    pub node: NodeId,
    pub digest: [u8; 16],
    pub seq: u64,
}

/// The `x=` text for `identity` announcing `digest` with sequence `seq`.
pub fn seal(
    identity: &Identity,
    digest: &[u8; 16],
    seq: u64,
    key: &[u8; 32],
    nonce: &[u8; NONCE],
) -> String {
    let mut plain = Vec::with_capacity(PLAIN);
    plain.extend_from_slice(&identity.public_key().0);
    plain.extend_from_slice(digest);
    plain.extend_from_slice(&seq.to_be_bytes());
    let sig = identity.sign(SIGN_DOMAIN, &plain);
    plain.extend_from_slice(&sig);
    let mut blob = nonce.to_vec();
    blob.extend_from_slice(&aead_seal(key, nonce, AAD, plain));
    base64url(&blob)
}

/// Opens and verifies an `x=` text; `None` when it is not sealed with
/// `key` or not validly signed.
pub fn open(text: &str, key: &[u8; 32]) -> Option<Claim> {
    if text.len() != TEXT {
        return None;
    }
    let blob = unbase64url(text)?;
    if blob.len() != BLOB {
        return None;
    }
    let nonce: &[u8; NONCE] = blob[..NONCE].try_into().ok()?;
    let plain = aead_open(key, nonce, AAD, &blob[NONCE..])?;
    let (signed, sig) = plain.split_at(SIGNED);
    let pk = PublicKey(signed[..32].try_into().ok()?);
    pk.verify(SIGN_DOMAIN, signed, sig.try_into().ok()?).ok()?;
    Some(Claim {
        node: pk.node_id(),
        digest: signed[32..48].try_into().ok()?,
        seq: u64::from_be_bytes(signed[48..56].try_into().ok()?),
    })
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Unpadded base64url (RFC 4648 section 5).
pub fn base64url(bytes: &[u8]) -> String {
    let mut out = String::with_capacity((bytes.len() * 4).div_ceil(3));
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (*b as u32) << (16 - 8 * i));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Decodes unpadded base64url; `None` on any other character, an
/// impossible length, or non-zero trailing bits (one text per value).
pub fn unbase64url(text: &str) -> Option<Vec<u8>> {
    let digit = |c: u8| ALPHABET.iter().position(|a| *a == c).map(|p| p as u32);
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.as_bytes().chunks(4) {
        if chunk.len() == 1 {
            return None;
        }
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= digit(*c)? << (18 - 6 * i);
        }
        let bytes = chunk.len() - 1;
        if n & ((1 << (24 - 8 * bytes)) - 1) != 0 {
            return None;
        }
        out.extend((0..bytes).map(|i| (n >> (16 - 8 * i)) as u8));
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn base64url_vectors() {
        // RFC 4648 section 10, without padding, and the url-safe digits.
        for (plain, text) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url(plain.as_bytes()), text);
            assert_eq!(unbase64url(text).unwrap(), plain.as_bytes());
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(unbase64url("Zh"), None, "non-zero trailing bits");
        assert_eq!(unbase64url("Z"), None);
        assert_eq!(unbase64url("Zm9v+A"), None);
    }

    #[test]
    fn a_member_opens_an_outsider_does_not() {
        let id = Identity::from_seed([7; 32]);
        let text = seal(&id, &[0xab; 16], 42, &[1; 32], &[9; NONCE]);
        assert_eq!(text.len(), TEXT);
        assert!(2 + TEXT <= 255, "x=... fits one TXT string");
        let claim = open(&text, &[1; 32]).unwrap();
        assert_eq!(
            claim,
            Claim {
                node: id.node_id(),
                digest: [0xab; 16],
                seq: 42
            }
        );
        assert_eq!(open(&text, &[2; 32]), None, "another swarm key");
        let mut tampered = text.into_bytes();
        tampered[100] = if tampered[100] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            open(std::str::from_utf8(&tampered).unwrap(), &[1; 32]),
            None
        );
    }

    proptest! {
        #[test]
        fn base64url_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            prop_assert_eq!(unbase64url(&base64url(&bytes)).unwrap(), bytes);
        }

        #[test]
        fn open_is_total(text in "[A-Za-z0-9_-]{0,300}") {
            let _ = open(&text, &[1; 32]);
            let _ = unbase64url(&text);
        }
    }
}
