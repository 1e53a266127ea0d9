//! The checks between a datagram's bytes and its effect, and the wrapping
//! of what this node sends: signed in both modes, sealed with the swarm's
//! datagram key in a private swarm.
//!
//! Receive path ([`Gate::admit`]): open (private) or refuse sealed (open),
//! decode, skip our own, spend the source's signature-check budget, check
//! that the claimed id is the signing key's and the signature, then the
//! sender's replay window. Whatever fails is counted ([`crate::stats`])
//! and never takes effect. Owns those decisions; never touches the
//! dictionary (the caller acts on what is admitted).

use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use super::Context;
use super::replay::{Budget, Freshness, ReplayTable, VerifyBudget, next_seq};
use crate::stats::Counter;
use crate::swarm::Mode;
use crate::warn_once::WarnOnce;
use crate::wire::WireError;
use crate::wire::datagram::{self, Datagram, NONCE, Refused, Signed};

/// The bytes of `d` as this node sends them at `now`.
pub fn wrap(d: &Datagram, ctx: &Context, now: SystemTime) -> Vec<u8> {
    let signed = d.sign(&ctx.identity, next_seq(now));
    match &ctx.mode {
        Mode::Open => signed,
        Mode::Private(keys) => {
            let nonce: [u8; NONCE] = crate::identity::random_bytes()[..NONCE]
                .try_into()
                .expect("24 of 32 bytes");
            datagram::seal(&signed, &keys.datagram, &nonce)
        }
    }
}

/// What a received datagram amounts to.
#[derive(Debug, PartialEq, Eq)]
pub enum Admitted {
    /// Signed by the node it names, fresh: act on it.
    Verified(Datagram),
    /// Our own datagram, looped back.
    Own,
    /// Dropped (and counted).
    Dropped,
}

/// The state of the receive checks: replay windows, check budgets, and
/// the "another swarm" warnings already given.
#[derive(Default)]
pub struct Gate {
    replay: ReplayTable,
    budget: VerifyBudget,
    foreign: WarnOnce<IpAddr>,
}

impl Gate {
    /// Checks `bytes` received from `src` at `now`.
    pub fn admit(&self, ctx: &Context, bytes: &[u8], src: IpAddr, now: Instant) -> Admitted {
        let opened;
        let plain = match &ctx.mode {
            Mode::Open if datagram::is_sealed(bytes) => {
                return self.drop(ctx, src, now, Refused::Foreign);
            }
            Mode::Open => bytes,
            Mode::Private(keys) => match datagram::open(bytes, &keys.datagram) {
                Ok(p) => {
                    opened = p;
                    &opened[..]
                }
                // A lanshare datagram of version 1 is from a node without a
                // key: another swarm too.
                Err(Refused::Wire(WireError::Version(_))) => {
                    return self.drop(ctx, src, now, Refused::Foreign);
                }
                Err(e) => return self.drop(ctx, src, now, e),
            },
        };
        let signed = match Signed::decode(plain) {
            Ok(s) => s,
            // Version 1 datagrams were never signed.
            Err(WireError::Version(1)) => return self.drop(ctx, src, now, Refused::BadSignature),
            Err(e) => return self.drop(ctx, src, now, e.into()),
        };
        if signed.datagram.node() == ctx.node {
            return Admitted::Own;
        }
        if self.budget.spend(src, now) == Budget::Exhausted {
            ctx.stats.count(Counter::ThrottledDatagrams);
            return Admitted::Dropped;
        }
        let node = match signed.verify() {
            Ok(node) => node,
            Err(e) => return self.drop(ctx, src, now, e),
        };
        if self.replay.check(node, signed.seq, now) == Freshness::Replayed {
            // Also the same datagram heard on another link: quiet.
            ctx.stats.count(Counter::ReplayedDatagrams);
            tracing::trace!(peer = %node.short(), from = %src, seq = signed.seq, "dropped a replayed datagram");
            return Admitted::Dropped;
        }
        Admitted::Verified(signed.datagram)
    }

    fn drop(&self, ctx: &Context, src: IpAddr, now: Instant, why: Refused) -> Admitted {
        let counter = match why {
            Refused::Wire(_) => Counter::MalformedDatagrams,
            Refused::Foreign => Counter::ForeignDatagrams,
            Refused::IdMismatch | Refused::BadSignature => Counter::BadSignatureDatagrams,
        };
        ctx.stats.count(counter);
        if why == Refused::Foreign && self.foreign.should_warn(src, now) {
            tracing::warn!(
                "datagrams from {src} are from another swarm (another swarm key, or none); ignoring them"
            );
        } else {
            tracing::debug!(from = %src, error = %why, "dropped a datagram");
        }
        Admitted::Dropped
    }
}
