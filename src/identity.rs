//! This node's long-term identity, and the checks that prove another's.
//!
//! A node owns one Ed25519 key pair, kept as its seed in
//! `HOME/.lanshare/identity.key` (mode 0600). Everything else is derived
//! from it, with BLAKE3 `derive_key` contexts listed in docs/protocol.md:
//! - the [`NodeId`]: the first 16 bytes of `derive_key(ID_CONTEXT, public key)`,
//!   so nobody can claim an id without the matching private key;
//! - the X25519 static key of the Noise handshake, bound to the identity by
//!   one Ed25519 signature made at start (`static_sig`), so a handshake
//!   signs nothing and a peer checks one signature.
//!
//! Owns: key generation, the key file, signing. Never touches the network.

use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use crate::id::{NodeId, from_hex, to_hex};

/// `derive_key` context of the node id.
pub const ID_CONTEXT: &str = "lanshare 2026 node id v1";
/// `derive_key` context of the Noise static secret (from the seed), and the
/// signing domain of the binding signature.
pub const NOISE_STATIC_CONTEXT: &str = "lanshare noise static v1";
/// First word of the key file.
const KEY_FILE_TAG: &str = "lanshare-ed25519-1";

/// An Ed25519 public key: what a peer proves it holds the private half of.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PublicKey(pub [u8; 32]);

/// An Ed25519 signature.
pub type Signature = [u8; 64];

/// A signature did not verify, or a key is not a valid Ed25519 point.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bad signature")]
pub struct BadSignature;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(
        "{path} is not a lanshare identity key ({why}); if you never copied it anywhere, delete it and start again to get a new node id"
    )]
    Corrupt { path: String, why: &'static str },
    #[error("cannot read or write the identity key {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl PublicKey {
    /// The node id this key stands for.
    pub fn node_id(&self) -> NodeId {
        NodeId::from_public_key(&self.0)
    }

    /// Checks `sig` over `domain || 0x00 || msg`.
    pub fn verify(&self, domain: &str, msg: &[u8], sig: &Signature) -> Result<(), BadSignature> {
        UnparsedPublicKey::new(&ED25519, self.0)
            .verify(&signed_bytes(domain, msg), sig)
            .map_err(|_| BadSignature)
    }
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PublicKey({})", &to_hex(&self.0)[..12])
    }
}

impl NodeId {
    /// The id of the node whose Ed25519 public key is `pk`.
    pub fn from_public_key(pk: &[u8; 32]) -> NodeId {
        let full = blake3::derive_key(ID_CONTEXT, pk);
        let mut id = [0u8; 16];
        id.copy_from_slice(&full[..16]);
        NodeId(id)
    }
}

/// Checks that `noise_static` (a peer's X25519 static key, as the Noise
/// handshake authenticated it) is bound to `pk` by `sig`, and returns the
/// node id it proves.
pub fn check_static_binding(
    pk: &PublicKey,
    noise_static: &[u8],
    sig: &Signature,
) -> Result<NodeId, BadSignature> {
    pk.verify(NOISE_STATIC_CONTEXT, noise_static, sig)?;
    Ok(pk.node_id())
}

/// This node's key pair and everything derived from it.
pub struct Identity {
    seed: [u8; 32],
    keypair: Ed25519KeyPair,
    public: PublicKey,
    node_id: NodeId,
    noise_secret: [u8; 32],
    noise_public: [u8; 32],
    static_sig: Signature,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.node_id)
    }
}

/// What [`Identity::load_or_create`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loaded {
    /// The key file existed.
    Existing,
    /// A new key was made; the home had no id before.
    Created,
    /// A new key was made and replaces an old random id.
    Migrated { old: NodeId },
}

impl Identity {
    /// The identity whose Ed25519 seed is `seed` (deterministic: for tests
    /// and golden vectors).
    pub fn from_seed(seed: [u8; 32]) -> Identity {
        let keypair = Ed25519KeyPair::from_seed_unchecked(&seed)
            .expect("every 32-byte string is a valid Ed25519 seed");
        let mut pk = [0u8; 32];
        pk.copy_from_slice(keypair.public_key().as_ref());
        let public = PublicKey(pk);
        let noise_secret = blake3::derive_key(NOISE_STATIC_CONTEXT, &seed);
        let noise_public =
            curve25519_dalek::MontgomeryPoint::mul_base_clamped(noise_secret).to_bytes();
        let static_sig = sign_with(&keypair, NOISE_STATIC_CONTEXT, &noise_public);
        Identity {
            seed,
            keypair,
            public,
            node_id: public.node_id(),
            noise_secret,
            noise_public,
            static_sig,
        }
    }

    /// A new random identity.
    pub fn generate() -> Identity {
        Identity::from_seed(random_bytes())
    }

    /// Loads `HOME/.lanshare/identity.key`, or creates it (mode 0600). A
    /// corrupt file is an error, never silently replaced: a new key is a
    /// new node id. `old_id_file` is the pre-key `node_id` file; it is
    /// rewritten to hold the derived id, and an old random id found there
    /// is reported as [`Loaded::Migrated`].
    pub fn load_or_create(
        key_file: &Path,
        old_id_file: &Path,
    ) -> Result<(Identity, Loaded), IdentityError> {
        let io = |source| IdentityError::Io {
            path: key_file.display().to_string(),
            source,
        };
        let (identity, loaded) = match std::fs::read_to_string(key_file) {
            Ok(text) => (parse_key_file(&text, key_file)?, Loaded::Existing),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let identity = Identity::generate();
                write_key_file(key_file, &identity.seed).map_err(io)?;
                let old = std::fs::read_to_string(old_id_file)
                    .ok()
                    .and_then(|s| s.trim().parse::<NodeId>().ok());
                let loaded = match old {
                    Some(old) if old != identity.node_id => Loaded::Migrated { old },
                    _ => Loaded::Created,
                };
                (identity, loaded)
            }
            Err(e) => return Err(io(e)),
        };
        tighten_mode(key_file).map_err(io)?;
        let cached = std::fs::read_to_string(old_id_file).unwrap_or_default();
        if cached.trim() != identity.node_id.to_hex() {
            std::fs::write(old_id_file, format!("{}\n", identity.node_id)).map_err(|source| {
                IdentityError::Io {
                    path: old_id_file.display().to_string(),
                    source,
                }
            })?;
        }
        Ok((identity, loaded))
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn public_key(&self) -> PublicKey {
        self.public
    }

    /// Signs `domain || 0x00 || msg`.
    pub fn sign(&self, domain: &str, msg: &[u8]) -> Signature {
        sign_with(&self.keypair, domain, msg)
    }

    /// The X25519 secret of the Noise handshake.
    pub fn noise_secret(&self) -> &[u8; 32] {
        &self.noise_secret
    }

    /// The X25519 public key of the Noise handshake.
    pub fn noise_public(&self) -> &[u8; 32] {
        &self.noise_public
    }

    /// Ed25519 signature over [`NOISE_STATIC_CONTEXT`] and the Noise public
    /// key: what a peer checks with [`check_static_binding`].
    pub fn static_sig(&self) -> &Signature {
        &self.static_sig
    }

    /// A secret derived from this identity for `context` (for example the
    /// seed of a pseudonymous key).
    pub fn derive_secret(&self, context: &str, extra: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key(context);
        h.update(&self.seed);
        h.update(extra);
        *h.finalize().as_bytes()
    }
}

static LAST_SEQ: AtomicU64 = AtomicU64::new(0);

/// The sequence number of a message signed at `now` (datagrams, mDNS
/// blobs, tracker requests): microseconds since
/// the Unix epoch, forced strictly increasing within the process (so a
/// restart moves forward with the clock, and two datagrams signed in the
/// same microsecond differ).
pub fn next_seq(now: SystemTime) -> u64 {
    let us = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros()
        .min(u64::MAX as u128 - 1) as u64;
    let mut prev = LAST_SEQ.load(Ordering::Relaxed);
    loop {
        let next = us.max(prev.saturating_add(1));
        match LAST_SEQ.compare_exchange_weak(prev, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(p) => prev = p,
        }
    }
}

/// 32 bytes from the system's secure random source.
pub fn random_bytes() -> [u8; 32] {
    let mut out = [0u8; 32];
    SystemRandom::new()
        .fill(&mut out)
        .expect("the system random source works");
    out
}

fn signed_bytes(domain: &str, msg: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(domain.len() + 1 + msg.len());
    v.extend_from_slice(domain.as_bytes());
    v.push(0);
    v.extend_from_slice(msg);
    v
}

fn sign_with(keypair: &Ed25519KeyPair, domain: &str, msg: &[u8]) -> Signature {
    let sig = keypair.sign(&signed_bytes(domain, msg));
    let mut out = [0u8; 64];
    out.copy_from_slice(sig.as_ref());
    out
}

fn parse_key_file(text: &str, path: &Path) -> Result<Identity, IdentityError> {
    let corrupt = |why| IdentityError::Corrupt {
        path: path.display().to_string(),
        why,
    };
    let mut words = text.split_whitespace();
    if words.next() != Some(KEY_FILE_TAG) {
        return Err(corrupt("it does not start with lanshare-ed25519-1"));
    }
    let seed = words
        .next()
        .and_then(from_hex::<32>)
        .ok_or_else(|| corrupt("the seed is not 64 hex digits"))?;
    if words.next().is_some() {
        return Err(corrupt("it has trailing text"));
    }
    Ok(Identity::from_seed(seed))
}

fn write_key_file(path: &Path, seed: &[u8; 32]) -> std::io::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600).custom_flags(libc::O_NOFOLLOW);
    }
    let mut f = opts.open(path)?;
    f.write_all(format!("{KEY_FILE_TAG} {}\n", to_hex(seed)).as_bytes())?;
    f.sync_all()
}

fn tighten_mode(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)?;
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_vectors() {
        let id = Identity::from_seed([7u8; 32]);
        // Fixed vectors, also in docs/protocol.md.
        assert_eq!(
            to_hex(&id.public_key().0),
            "ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c"
        );
        assert_eq!(id.node_id().to_hex(), "578fd20120761d2042c9583e99ba4717");
    }

    #[test]
    fn static_binding_proves_the_id() {
        let id = Identity::from_seed([1u8; 32]);
        let proven = check_static_binding(&id.public_key(), id.noise_public(), id.static_sig());
        assert_eq!(proven, Ok(id.node_id()));
        let other = Identity::from_seed([2u8; 32]);
        assert_eq!(
            check_static_binding(&other.public_key(), id.noise_public(), id.static_sig()),
            Err(BadSignature)
        );
        let mut sig = *id.static_sig();
        sig[0] ^= 1;
        assert_eq!(
            check_static_binding(&id.public_key(), id.noise_public(), &sig),
            Err(BadSignature)
        );
    }

    #[test]
    fn signatures_are_domain_separated() {
        let id = Identity::from_seed([3u8; 32]);
        let sig = id.sign("a", b"msg");
        assert!(id.public_key().verify("a", b"msg", &sig).is_ok());
        assert!(id.public_key().verify("b", b"msg", &sig).is_err());
        assert!(id.public_key().verify("a", b"msh", &sig).is_err());
    }

    #[test]
    fn key_file_is_created_once_kept_and_corruption_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("identity.key");
        let old = dir.path().join("node_id");
        std::fs::write(&old, "00112233445566778899aabbccddeeff\n").unwrap();
        let (a, loaded) = Identity::load_or_create(&key, &old).unwrap();
        assert_eq!(
            loaded,
            Loaded::Migrated {
                old: "00112233445566778899aabbccddeeff".parse().unwrap()
            }
        );
        assert_eq!(
            std::fs::read_to_string(&old).unwrap().trim(),
            a.node_id().to_hex()
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (b, loaded) = Identity::load_or_create(&key, &old).unwrap();
        assert_eq!(loaded, Loaded::Existing);
        assert_eq!(a.node_id(), b.node_id());
        std::fs::write(&key, "lanshare-ed25519-1 zz\n").unwrap();
        let err = Identity::load_or_create(&key, &old).unwrap_err();
        assert!(err.to_string().contains("delete it"), "{err}");
    }
}
