//! UDP discovery datagrams: announce, query and goodbye, signed by the
//! sender's identity key in both modes, and sealed with the swarm's
//! datagram key in a private swarm. Bytes only: whether a datagram is
//! fresh (replay) and what it does are [`crate::discovery`]'s.
//!
//! ```text
//! signed: "LNSH" | version 2 | kind | postcard {body, ed_pk [32], seq u64} | sig [64]
//!         sig = Ed25519 over SIGN_DOMAIN || 0x00 || every byte before it
//! sealed: "LNSH" | version 2 | 0x10 | nonce [24] | XChaCha20-Poly1305(
//!             u16 BE length | signed datagram | zeros to a multiple of 256) | tag [16]
//!         key = SwarmKeys.datagram, aad = the 6-byte header
//! ```
//! A datagram never exceeds [`MAX_DATAGRAM`] bytes. The inventory itself is
//! never in a datagram: an announce carries its digest, and a peer whose copy
//! is stale pulls the full inventory over TCP.

use chacha20poly1305::{AeadInPlace, KeyInit, Tag, XChaCha20Poly1305, XNonce};
use serde::{Deserialize, Serialize};

use super::{MAGIC, MAX_NODE_NAME, WireError, decode_exact};
use crate::id::NodeId;
use crate::identity::{Identity, PublicKey, Signature};

/// Largest datagram sent or accepted; fits every LAN MTU with room to spare.
pub const MAX_DATAGRAM: usize = 1200;
/// Version byte of every datagram (signed or sealed).
pub const DATAGRAM_VERSION: u8 = super::VERSION;
/// Signing domain of a datagram's signature.
pub const SIGN_DOMAIN: &str = "lanshare datagram v2";
/// Magic, version, kind.
pub const HEADER: usize = 6;
/// Length of an Ed25519 signature.
const SIG: usize = 64;
/// XChaCha20-Poly1305 nonce and tag lengths.
pub const NONCE: usize = 24;
pub const TAG: usize = 16;
/// A sealed datagram's plaintext is padded to a multiple of this.
pub const PAD: usize = 256;
/// Longest sealed plaintext that keeps the datagram within MAX_DATAGRAM.
const MAX_SEALED_PLAIN: usize = (MAX_DATAGRAM - HEADER - NONCE - TAG) / PAD * PAD;

pub const KIND_ANNOUNCE: u8 = 1;
pub const KIND_QUERY: u8 = 2;
pub const KIND_GOODBYE: u8 = 3;
/// A sealed datagram (private swarm).
pub const KIND_SEALED: u8 = 0x10;

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

/// What follows the body of a signed datagram, before its signature.
#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    body: T,
    ed_pk: [u8; 32],
    seq: u64,
}

/// Why a datagram is not acted on (besides being malformed).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error(transparent)]
    Wire(#[from] WireError),
    /// Sealed under another swarm key, or plain where sealed is required
    /// (or the reverse).
    #[error("datagram from another swarm (another swarm key, or none)")]
    Foreign,
    #[error("the node id is not the signing key's")]
    IdMismatch,
    #[error("bad signature")]
    BadSignature,
}

/// A signed datagram as decoded, not yet verified: see [`Signed::verify`].
#[derive(Debug)]
pub struct Signed<'a> {
    pub datagram: Datagram,
    pub key: PublicKey,
    /// Microseconds since the Unix epoch at send, strictly increasing per
    /// sender (replay protection).
    pub seq: u64,
    signed: &'a [u8],
    sig: Signature,
}

impl Datagram {
    pub fn node(&self) -> NodeId {
        match self {
            Datagram::Announce(a) => a.node,
            Datagram::Query { node } | Datagram::Goodbye { node } => *node,
        }
    }

    fn kind(&self) -> u8 {
        match self {
            Datagram::Announce(_) => KIND_ANNOUNCE,
            Datagram::Query { .. } => KIND_QUERY,
            Datagram::Goodbye { .. } => KIND_GOODBYE,
        }
    }

    /// The unsigned form: header and postcard body, the first bytes of
    /// [`Datagram::sign`]'s. Never accepted on the network (tests and
    /// benches use it).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(&MAGIC);
        out.push(DATAGRAM_VERSION);
        out.push(self.kind());
        let out = match self {
            Datagram::Announce(a) => postcard::to_extend(a, out),
            Datagram::Query { node } | Datagram::Goodbye { node } => postcard::to_extend(node, out),
        };
        out.expect("encoding into a Vec cannot fail")
    }

    /// Decodes the unsigned form of [`Datagram::encode`].
    pub fn decode(bytes: &[u8]) -> Result<Datagram, WireError> {
        let kind = check_header(bytes, HEADER)?;
        Ok(decode_kind(kind, &bytes[HEADER..], Form::Unsigned)?.0)
    }

    /// The signed datagram: `identity` signs it, with sequence number `seq`.
    pub fn sign(&self, identity: &Identity, seq: u64) -> Vec<u8> {
        let mut out = self.encode();
        out.extend_from_slice(&identity.public_key().0);
        let mut out = postcard::to_extend(&seq, out).expect("encoding into a Vec cannot fail");
        let sig = identity.sign(SIGN_DOMAIN, &out);
        out.extend_from_slice(&sig);
        debug_assert!(out.len() + 2 <= MAX_SEALED_PLAIN);
        out
    }
}

impl<'a> Signed<'a> {
    /// Decodes a signed datagram (total: any bytes give a datagram or an
    /// error). Nothing in it is proven until [`Signed::verify`].
    pub fn decode(bytes: &'a [u8]) -> Result<Signed<'a>, WireError> {
        let kind = check_header(bytes, HEADER + SIG)?;
        let (signed, sig) = bytes.split_at(bytes.len() - SIG);
        let (datagram, envelope) = decode_kind(kind, &signed[HEADER..], Form::Signed)?;
        let (ed_pk, seq) = envelope.ok_or(WireError::Truncated)?;
        Ok(Signed {
            datagram,
            key: PublicKey(ed_pk),
            seq,
            signed,
            sig: sig.try_into().expect("split at 64 bytes from the end"),
        })
    }

    /// Checks that the claimed node id is the signing key's, and the
    /// signature (an Ed25519 verification, about 0.1 ms: rate-limit first).
    pub fn verify(&self) -> Result<NodeId, Refused> {
        let id = self.key.node_id();
        if id != self.datagram.node() {
            return Err(Refused::IdMismatch);
        }
        self.key
            .verify(SIGN_DOMAIN, self.signed, &self.sig)
            .map_err(|_| Refused::BadSignature)?;
        Ok(id)
    }
}

/// Whether a datagram's body carries the envelope (key, seq).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Form {
    Unsigned,
    Signed,
}

/// The signing key and sequence number of a signed datagram.
type EnvelopeFields = Option<([u8; 32], u64)>;

fn take<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    form: Form,
) -> Result<(T, EnvelopeFields), WireError> {
    match form {
        Form::Unsigned => Ok((decode_exact(bytes)?, None)),
        Form::Signed => {
            let e: Envelope<T> = decode_exact(bytes)?;
            Ok((e.body, Some((e.ed_pk, e.seq))))
        }
    }
}

fn decode_kind(kind: u8, body: &[u8], form: Form) -> Result<(Datagram, EnvelopeFields), WireError> {
    match kind {
        KIND_ANNOUNCE => {
            let (a, env) = take::<Announce>(body, form)?;
            super::check_text(&a.name, MAX_NODE_NAME, "name")?;
            if a.tcp_port == 0 {
                return Err(WireError::OutOfBounds { field: "tcp_port" });
            }
            Ok((Datagram::Announce(a), env))
        }
        KIND_QUERY => {
            let (node, env) = take(body, form)?;
            Ok((Datagram::Query { node }, env))
        }
        KIND_GOODBYE => {
            let (node, env) = take(body, form)?;
            Ok((Datagram::Goodbye { node }, env))
        }
        k => Err(WireError::UnknownKind(k)),
    }
}

/// Checks the size, magic and version of a datagram of at least `min`
/// bytes; returns its kind.
fn check_header(bytes: &[u8], min: usize) -> Result<u8, WireError> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(WireError::TooLarge {
            len: bytes.len(),
            max: MAX_DATAGRAM,
        });
    }
    if bytes.len() < min {
        return Err(WireError::Truncated);
    }
    if bytes[..4] != MAGIC {
        return Err(WireError::BadMagic);
    }
    if bytes[4] != DATAGRAM_VERSION {
        return Err(WireError::Version(bytes[4]));
    }
    Ok(bytes[5])
}

/// True when `bytes` look like a sealed datagram (header only: nothing
/// is opened).
pub fn is_sealed(bytes: &[u8]) -> bool {
    bytes.len() >= HEADER
        && bytes[..4] == MAGIC
        && bytes[4] == DATAGRAM_VERSION
        && bytes[5] == KIND_SEALED
}

/// Seals a signed datagram under the swarm's datagram `key`, with a
/// random `nonce` (passed in for golden tests).
pub fn seal(signed: &[u8], key: &[u8; 32], nonce: &[u8; NONCE]) -> Vec<u8> {
    let padded = (signed.len() + 2).div_ceil(PAD) * PAD;
    assert!(padded <= MAX_SEALED_PLAIN, "a signed datagram is small");
    let mut plain = Vec::with_capacity(padded);
    plain.extend_from_slice(&(signed.len() as u16).to_be_bytes());
    plain.extend_from_slice(signed);
    plain.resize(padded, 0);
    let mut out = Vec::with_capacity(HEADER + NONCE + padded + TAG);
    out.extend_from_slice(&MAGIC);
    out.push(DATAGRAM_VERSION);
    out.push(KIND_SEALED);
    out.extend_from_slice(nonce);
    let header: [u8; HEADER] = out[..HEADER].try_into().expect("the header is written");
    out.extend_from_slice(&aead_seal(key, nonce, &header, plain));
    out
}

/// Opens a sealed datagram: the signed datagram inside. `Foreign` when it
/// is not sealed, or not under `key` (another swarm); `Wire` when it is
/// not a lanshare datagram at all.
pub fn open(bytes: &[u8], key: &[u8; 32]) -> Result<Vec<u8>, Refused> {
    let kind = check_header(bytes, HEADER)?;
    if kind != KIND_SEALED {
        return Err(Refused::Foreign);
    }
    let sealed = &bytes[HEADER..];
    let body = sealed
        .len()
        .checked_sub(NONCE + TAG)
        .ok_or(Refused::Foreign)?;
    if body == 0 || body % PAD != 0 {
        return Err(Refused::Foreign);
    }
    let nonce: &[u8; NONCE] = sealed[..NONCE].try_into().expect("checked length");
    let plain =
        aead_open(key, nonce, &bytes[..HEADER], &sealed[NONCE..]).ok_or(Refused::Foreign)?;
    // Authenticated from here: a bad length is a member's bug, not a
    // stranger's, but still refused.
    let len = u16::from_be_bytes([plain[0], plain[1]]) as usize;
    if len + 2 > plain.len() || plain[len + 2..].iter().any(|b| *b != 0) {
        return Err(WireError::OutOfBounds {
            field: "sealed length",
        }
        .into());
    }
    Ok(plain[2..len + 2].to_vec())
}

/// XChaCha20-Poly1305 of `plain` under `key`, `nonce` and `aad`:
/// ciphertext then tag.
pub fn aead_seal(key: &[u8; 32], nonce: &[u8; NONCE], aad: &[u8], mut plain: Vec<u8>) -> Vec<u8> {
    let tag = XChaCha20Poly1305::new(key.into())
        .encrypt_in_place_detached(XNonce::from_slice(nonce), aad, &mut plain)
        .expect("a datagram is far below the AEAD's length limit");
    plain.extend_from_slice(&tag);
    plain
}

/// Opens `sealed` (ciphertext then tag) of [`aead_seal`]; `None` when it
/// does not authenticate.
pub fn aead_open(
    key: &[u8; 32],
    nonce: &[u8; NONCE],
    aad: &[u8],
    sealed: &[u8],
) -> Option<Vec<u8>> {
    let n = sealed.len().checked_sub(TAG)?;
    let mut plain = sealed[..n].to_vec();
    let tag = Tag::from_slice(&sealed[n..]);
    XChaCha20Poly1305::new(key.into())
        .decrypt_in_place_detached(XNonce::from_slice(nonce), aad, &mut plain, tag)
        .ok()?;
    Some(plain)
}
#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The golden vectors' signer (docs/protocol.md).
    fn signer() -> Identity {
        Identity::from_seed([0x01; 32])
    }
    const SEQ: u64 = 1_767_225_600_000_000; // 2026-01-01T00:00:00Z in µs
    const KEY: [u8; 32] = [0x42; 32];
    const NONCE_BYTES: [u8; NONCE] = [0x24; NONCE];

    fn announce_by(id: &Identity) -> Datagram {
        Datagram::Announce(Announce {
            node: id.node_id(),
            name: "alpha".into(),
            tcp_port: 7373,
            interval_ms: 5000,
            inventory_digest: [0xab; 16],
            contents: 3,
        })
    }

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

    fn goodbye_signed() -> Vec<u8> {
        let id = signer();
        Datagram::Goodbye { node: id.node_id() }.sign(&id, SEQ)
    }

    /// Golden bytes of the unsigned part: a change here is a wire format
    /// change (bump DATAGRAM_VERSION).
    #[test]
    fn announce_golden_bytes() {
        let hex = crate::id::to_hex(&announce().encode());
        assert_eq!(
            hex,
            concat!(
                "4c4e5348",
                "03",
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

    /// A goodbye signed by the identity of seed 01*32 with seq SEQ.
    #[test]
    fn signed_goodbye_golden_bytes() {
        assert_eq!(
            crate::id::to_hex(&goodbye_signed()),
            concat!(
                "4c4e5348",
                "03",
                "03",                               // magic, version, kind=goodbye
                "07d89bbfc805a7a07cde2e70d4415b3e", // node id (16 bytes)
                "8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c", // ed_pk (32 bytes)
                "808081b184e99103", // seq 1767225600000000 (varint)
                "cca0b4e6893da96361052df4680b5506a45dcd4e8494b64262ab2025e0e4ce318aef54f68ba5a3a8ef887ce2eff202df7d9ef6073806c6b98318e9e847b34601", // Ed25519 signature (64 bytes)
            )
        );
    }

    /// That goodbye sealed with key 42*32 and nonce 24*24.
    #[test]
    fn sealed_goodbye_golden_bytes() {
        let sealed = seal(&goodbye_signed(), &KEY, &NONCE_BYTES);
        assert_eq!(sealed.len(), HEADER + NONCE + PAD + TAG);
        assert_eq!(
            crate::id::to_hex(&sealed),
            concat!(
                "4c4e5348",
                "03",
                "10", // magic, version, kind=sealed
                "242424242424242424242424242424242424242424242424", // nonce (24 bytes)
                // XChaCha20-Poly1305 of: u16 BE length 0x007e, the signed
                // goodbye above, zeros to 256 bytes
                "a5209b2b3d6c4fa5a5f7a485c68daa6a4e2fa0caa85e2fa3abe905901f192a58",
                "e9c353f5082106eeb6d2b804e4493a97a439a7ff9347ee8092ba086215f625fb",
                "223486c28f0c7263ad9340ca5d2f0ffc1ac6bd8e22acd8e6611413d577fcb715",
                "5f84638ae97405adbd1c6cb8433c67c4c8fa54c317f18f2dbbc47603a643775d",
                "ba2a75624e6ea1be97dd042eb3ec28086dc7e95c41425e220ba1bf3c5abdcc8a",
                "295dd67dcd55084001333b3e5ac085a5bfdb2bf2ad8cd2355749f0c217a62823",
                "5ee4249c9b9135b7c79700af17bfb2bbc6dca65fb1df3c5a3ef2630602dfc5fc",
                "e598147556e52b73bfdd79a54e8ebbdc7614d2612de10e3be021ad627e2920e8",
                "e4c9895c3bcaa278b5b67791ee0e2bbb", // tag (16 bytes)
            )
        );
    }

    #[test]
    fn signed_round_trip_and_verify() {
        let id = signer();
        for d in [
            announce_by(&id),
            Datagram::Query { node: id.node_id() },
            Datagram::Goodbye { node: id.node_id() },
        ] {
            let bytes = d.sign(&id, SEQ);
            let s = Signed::decode(&bytes).unwrap();
            assert_eq!((&s.datagram, s.seq, s.key), (&d, SEQ, id.public_key()));
            assert_eq!(s.verify(), Ok(id.node_id()));
            let sealed = seal(&bytes, &KEY, &NONCE_BYTES);
            assert!(sealed.len() <= MAX_DATAGRAM);
            assert_eq!(open(&sealed, &KEY).unwrap(), bytes);
        }
    }

    #[test]
    fn forged_datagrams_do_not_verify() {
        let victim = signer();
        let forger = Identity::from_seed([0x02; 32]);
        // The victim's id, signed by another key.
        let bytes = Datagram::Goodbye {
            node: victim.node_id(),
        }
        .sign(&forger, SEQ);
        assert_eq!(
            Signed::decode(&bytes).unwrap().verify(),
            Err(Refused::IdMismatch)
        );
        // The victim's id and key, signed by another key.
        let mut bytes = goodbye_signed();
        let n = bytes.len();
        let sig = forger.sign(SIGN_DOMAIN, &bytes[..n - SIG]);
        bytes[n - SIG..].copy_from_slice(&sig);
        assert_eq!(
            Signed::decode(&bytes).unwrap().verify(),
            Err(Refused::BadSignature)
        );
        // Any byte changed.
        let good = goodbye_signed();
        for i in HEADER..good.len() {
            let mut b = good.clone();
            b[i] ^= 0x01;
            if let Ok(s) = Signed::decode(&b) {
                assert!(
                    s.verify().is_err(),
                    "byte {i} changed and it still verifies"
                );
            }
        }
        // Unsigned: the old layout has no room for a key and a signature.
        assert!(Signed::decode(&announce().encode()).is_err());
    }

    #[test]
    fn sealed_is_refused_under_another_key_and_when_tampered() {
        let sealed = seal(&goodbye_signed(), &KEY, &NONCE_BYTES);
        assert_eq!(open(&sealed, &[0x43; 32]), Err(Refused::Foreign));
        for i in [0, 4, 5, 6, 40, sealed.len() - 1] {
            let mut b = sealed.clone();
            b[i] ^= 0x01;
            assert!(
                open(&b, &KEY).is_err(),
                "byte {i} changed and it still opens"
            );
        }
        assert_eq!(
            open(&goodbye_signed(), &KEY),
            Err(Refused::Foreign),
            "plain"
        );
        assert!(is_sealed(&sealed) && !is_sealed(&goodbye_signed()));
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
        let good = goodbye_signed();
        assert_eq!(Signed::decode(&good[..3]).err(), Some(WireError::Truncated));
        let mut b = good.clone();
        b[0] = b'X';
        assert_eq!(Signed::decode(&b).err(), Some(WireError::BadMagic));
        let mut b = good.clone();
        b[4] = 1;
        assert_eq!(Signed::decode(&b).err(), Some(WireError::Version(1)));
        let mut b = good.clone();
        b[5] = 77;
        assert_eq!(Signed::decode(&b).err(), Some(WireError::UnknownKind(77)));
        let mut b = good.clone();
        b.insert(good.len() - SIG, 0);
        assert!(matches!(Signed::decode(&b), Err(WireError::Malformed(_))));
        assert!(matches!(
            Signed::decode(&[0; 5000]),
            Err(WireError::TooLarge { .. })
        ));
    }

    proptest! {
        #[test]
        fn round_trip(seed in any::<[u8; 32]>(), name in "[a-zA-Z0-9 -]{0,64}", port in 1u16.., interval in any::<u32>(),
                      digest in any::<[u8; 16]>(), contents in any::<u32>(), seq in any::<u64>()) {
            let id = Identity::from_seed(seed);
            let d = Datagram::Announce(Announce { node: id.node_id(), name, tcp_port: port, interval_ms: interval, inventory_digest: digest, contents });
            let bytes = d.sign(&id, seq);
            prop_assert!(bytes.len() + 2 <= PAD, "one pad block");
            let s = Signed::decode(&bytes).unwrap();
            prop_assert_eq!(&s.datagram, &d);
            prop_assert_eq!(s.verify(), Ok(id.node_id()));
            prop_assert_eq!(open(&seal(&bytes, &KEY, &NONCE_BYTES), &KEY).unwrap(), bytes);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1500)) {
            let _ = Datagram::decode(&bytes);
            if let Ok(s) = Signed::decode(&bytes) {
                let _ = s.verify();
            }
            let _ = open(&bytes, &KEY);
        }

        #[test]
        fn random_bodies_never_panic(kind in prop_oneof![0u8..5, Just(KIND_SEALED)], body in proptest::collection::vec(any::<u8>(), 0..400)) {
            let mut bytes = b"LNSH".to_vec();
            bytes.push(DATAGRAM_VERSION);
            bytes.push(kind);
            bytes.extend(body);
            let _ = Datagram::decode(&bytes);
            if let Ok(s) = Signed::decode(&bytes) {
                let _ = s.verify();
            }
            let _ = open(&bytes, &KEY);
        }

        #[test]
        fn truncations_never_panic(cut in 0usize..400) {
            let bytes = seal(&goodbye_signed(), &KEY, &NONCE_BYTES);
            let cut = cut.min(bytes.len());
            prop_assert!(open(&bytes[..cut], &KEY).is_err() || cut == bytes.len());
            let signed = goodbye_signed();
            let cut = cut.min(signed.len());
            prop_assert!(Signed::decode(&signed[..cut]).is_err() || cut == signed.len());
        }
    }
}
