//! Signed tracker requests: every request that changes a node's row
//! carries `X-Lanshare-Sig: <seq>.<128 hex>`, an Ed25519 signature by the
//! node's key over [`SIG_DOMAIN`] and
//! `method || 0x00 || path || 0x00 || seq (u64 BE) || blake3(body)`.
//! `seq` grows strictly within a process and across restarts (µs since the
//! Unix epoch, forced monotonic), so the tracker refuses a replay by
//! keeping the last seq it accepted per node.
//!
//! Owns the header's text form, the signed bytes and the sequence clock.
//! Never touches the network or the database.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crate::identity::{BadSignature, Identity, PublicKey, Signature};

/// The header every signed request carries.
pub const SIG_HEADER: &str = "x-lanshare-sig";
/// Signing domain of a tracker request.
pub const SIG_DOMAIN: &str = "lanshare tracker request v1";
/// `derive_secret` context of a private-swarm node's pseudonymous tracker key.
pub const PSEUDONYM_CONTEXT: &str = "lanshare tracker id v1";
/// Longest header value accepted: 20 digits, a dot, 128 hex digits.
const MAX_HEADER: usize = 20 + 1 + 128;

/// A parsed `X-Lanshare-Sig` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SigHeader {
    pub seq: u64,
    pub sig: Signature,
}

/// Why a header is not `SEQ.HEXSIG`.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "the X-Lanshare-Sig header is not SEQ.SIG (a decimal sequence number, a dot, 128 hex digits)"
)]
pub struct BadHeader;

impl SigHeader {
    pub fn parse(value: &str) -> Result<SigHeader, BadHeader> {
        if value.len() > MAX_HEADER {
            return Err(BadHeader);
        }
        let (seq, sig) = value.trim().split_once('.').ok_or(BadHeader)?;
        if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BadHeader);
        }
        let seq: u64 = seq.parse().map_err(|_| BadHeader)?;
        let sig = crate::id::from_hex::<64>(sig).ok_or(BadHeader)?;
        Ok(SigHeader { seq, sig })
    }

    pub fn to_value(&self) -> String {
        format!("{}.{}", self.seq, crate::id::to_hex(&self.sig))
    }

    /// Checks the signature with `key`.
    pub fn verify(
        &self,
        key: &PublicKey,
        method: &str,
        path: &str,
        body: &[u8],
    ) -> Result<(), BadSignature> {
        key.verify(
            SIG_DOMAIN,
            &signed_bytes(method, path, self.seq, body),
            &self.sig,
        )
    }
}

/// The bytes a request's signature covers (after the domain):
/// `method || 0x00 || path || 0x00 || seq u64 BE || blake3(body)`.
pub fn signed_bytes(method: &str, path: &str, seq: u64, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(method.len() + path.len() + 2 + 8 + 32);
    m.extend_from_slice(method.as_bytes());
    m.push(0);
    m.extend_from_slice(path.as_bytes());
    m.push(0);
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(blake3::hash(body).as_bytes());
    m
}

/// Signs a request with `seq`.
pub fn sign(identity: &Identity, method: &str, path: &str, seq: u64, body: &[u8]) -> SigHeader {
    let sig = identity.sign(SIG_DOMAIN, &signed_bytes(method, path, seq, body));
    SigHeader { seq, sig }
}

/// Signs a request with the next sequence number of this process.
pub fn sign_now(identity: &Identity, method: &str, path: &str, body: &[u8]) -> SigHeader {
    sign(identity, method, path, next_seq(now_us()), body)
}

/// The last sequence number this process handed out.
static LAST_SEQ: AtomicU64 = AtomicU64::new(0);

/// The next sequence number: `now_us`, or one more than the last one
/// handed out if the clock did not move forward.
pub fn next_seq(now_us: u64) -> u64 {
    let mut last = LAST_SEQ.load(Ordering::Relaxed);
    loop {
        let next = now_us.max(last + 1);
        match LAST_SEQ.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// Microseconds since the Unix epoch.
pub fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The pseudonymous key a private-swarm node registers under at a
/// tracker: derived from its identity and the swarm's tracker tag, so it
/// is stable across restarts, differs per swarm and says nothing about the
/// real node id.
pub fn pseudonym(identity: &Identity, tag: &[u8; 16]) -> Identity {
    Identity::from_seed(identity.derive_secret(PSEUDONYM_CONTEXT, tag))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_covers_method_path_seq_and_body() {
        let me = Identity::from_seed([7; 32]);
        let h = sign(&me, "POST", "/v1/nodes", 42, b"{}");
        let key = me.public_key();
        assert_eq!(SigHeader::parse(&h.to_value()), Ok(h));
        h.verify(&key, "POST", "/v1/nodes", b"{}").unwrap();
        assert!(h.verify(&key, "PUT", "/v1/nodes", b"{}").is_err());
        assert!(h.verify(&key, "POST", "/v1/nodez", b"{}").is_err());
        assert!(h.verify(&key, "POST", "/v1/nodes", b"{ }").is_err());
        let replayed = SigHeader { seq: 43, ..h };
        assert!(replayed.verify(&key, "POST", "/v1/nodes", b"{}").is_err());
        let other = Identity::from_seed([8; 32]).public_key();
        assert!(h.verify(&other, "POST", "/v1/nodes", b"{}").is_err());
    }

    #[test]
    fn headers_are_bounded_and_exact() {
        let sig = "ab".repeat(64);
        assert!(SigHeader::parse(&format!("1.{sig}")).is_ok());
        for bad in [
            String::new(),
            sig.clone(),
            format!(".{sig}"),
            format!("-1.{sig}"),
            format!("+1.{sig}"),
            format!("1.{}", &sig[2..]),
            format!("1.{sig}00"),
            format!("99999999999999999999.{sig}"),
            format!("1.{}", "zz".repeat(64)),
        ] {
            assert_eq!(SigHeader::parse(&bad), Err(BadHeader), "{bad:?}");
        }
    }

    #[test]
    fn seq_moves_forward_even_when_the_clock_does_not() {
        let a = next_seq(1_000);
        let b = next_seq(1_000);
        let c = next_seq(5);
        assert!(a < b && b < c, "{a} {b} {c}");
    }

    #[test]
    fn the_pseudonym_depends_on_identity_and_tag() {
        let me = Identity::from_seed([1; 32]);
        let p = pseudonym(&me, &[2; 16]);
        assert_eq!(p.node_id(), pseudonym(&me, &[2; 16]).node_id());
        assert_ne!(p.node_id(), me.node_id());
        assert_ne!(p.node_id(), pseudonym(&me, &[3; 16]).node_id());
        let you = Identity::from_seed([4; 32]);
        assert_ne!(p.node_id(), pseudonym(&you, &[2; 16]).node_id());
    }
}
