//! The checks between a datagram's bytes and its effect, and the wrapping
//! of what this node sends: signed in both modes, sealed with the swarm's
//! datagram key in a private swarm.
//!
//! Receive path ([`Gate::admit`]): open (private) or refuse sealed (open),
//! decode, skip our own, drop a copy of a datagram taken moments ago by
//! another path or link (a path duplicate: the same bytes, so no check is
//! spent on it), spend the source's signature-check budget, check that the
//! claimed id is the signing key's and the signature, then the sender's
//! replay window. Whatever fails is counted ([`crate::stats`])
//! and never takes effect. Owns those decisions; never touches the
//! dictionary (the caller acts on what is admitted).

use std::net::IpAddr;
use std::time::{Instant, SystemTime};

use super::Context;
use super::path::Route;
use super::replay::{Budget, Copy, Freshness, PathCopies, ReplayTable, VerifyBudget, next_seq};
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
    /// Signed by the node it names, and the first word heard from it (no
    /// replay window: never heard, long silent, or pushed out of a full
    /// table). An announce is acted on; a goodbye is only a claim, since it
    /// may be an old one replayed.
    FirstWord(Datagram),
    /// Our own datagram, looped back.
    Own,
    /// A copy of a datagram admitted moments ago, heard by another path or
    /// link (counted as such).
    PathCopy,
    /// Dropped (and counted).
    Dropped,
}

/// The state of the receive checks: replay windows, check budgets, and
/// the "another swarm" warnings already given.
#[derive(Default)]
pub struct Gate {
    replay: ReplayTable,
    copies: PathCopies<Route>,
    budget: VerifyBudget,
    foreign: WarnOnce<IpAddr>,
}

impl Gate {
    /// Checks `bytes` received from `src` by `route` at `now`.
    pub fn admit(
        &self,
        ctx: &Context,
        bytes: &[u8],
        src: IpAddr,
        route: Route,
        now: Instant,
    ) -> Admitted {
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
        let digest = *blake3::hash(plain).as_bytes();
        let route = route.known().then_some(route);
        if self.copies.check(digest, route, now) == Copy::ByAnotherRoute {
            ctx.stats.count(Counter::PathDuplicates);
            return Admitted::PathCopy;
        }
        if self.budget.spend(src, now) == Budget::Exhausted {
            ctx.stats.count(Counter::ThrottledDatagrams);
            return Admitted::Dropped;
        }
        let node = match signed.verify() {
            Ok(node) => node,
            Err(e) => return self.drop(ctx, src, now, e),
        };
        let replay = || self.replay.check(node, signed.seq, now);
        match self.copies.settle(digest, route, now, replay) {
            Some(Freshness::Fresh) => Admitted::Verified(signed.datagram),
            Some(Freshness::First) => Admitted::FirstWord(signed.datagram),
            None => {
                ctx.stats.count(Counter::PathDuplicates);
                Admitted::PathCopy
            }
            Some(Freshness::Replayed) => {
                ctx.stats.count(Counter::ReplayedDatagrams);
                tracing::trace!(peer = %node.short(), from = %src, seq = signed.seq, "dropped a replayed datagram");
                Admitted::Dropped
            }
        }
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::discovery::path::Path;
    use crate::identity::Identity;
    use crate::swarm::SwarmKey;
    use crate::wire::datagram::Announce;

    fn ctx(mode: Mode) -> Context {
        let identity = Arc::new(Identity::generate());
        let (_tx, inventory) =
            tokio::sync::watch::channel(crate::inventory::Inventory::new(Vec::new()));
        Context {
            node: identity.node_id(),
            identity,
            mode,
            name: "me".into(),
            tcp_port: 1,
            interval: Duration::from_secs(1),
            inventory,
            dict: Default::default(),
            stats: Default::default(),
        }
    }

    fn goodbye(id: &Identity) -> Datagram {
        Datagram::Goodbye { node: id.node_id() }
    }

    const SRC: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 7));
    const MCAST: Route = Route {
        path: Path::Multicast4,
        ifindex: 2,
    };
    const BCAST: Route = Route {
        path: Path::Broadcast,
        ifindex: 2,
    };

    /// The same datagram by multicast then broadcast (and on another
    /// link) is taken once, the copies counted as path duplicates and not
    /// as replays; the same copy again, or any copy later, is a replay.
    #[test]
    fn a_copy_by_another_path_is_no_replay() {
        let me = ctx(Mode::Open);
        let peer = ctx(Mode::Open);
        let gate = Gate::default();
        let t0 = Instant::now();
        let bytes = wrap(&goodbye(&peer.identity), &peer, SystemTime::now());
        assert!(matches!(
            gate.admit(&me, &bytes, SRC, MCAST, t0),
            Admitted::FirstWord(_)
        ));
        let soon = t0 + Duration::from_millis(3);
        assert_eq!(
            gate.admit(&me, &bytes, SRC, BCAST, soon),
            Admitted::PathCopy
        );
        let other_link = Route {
            ifindex: 3,
            ..MCAST
        };
        assert_eq!(
            gate.admit(&me, &bytes, SRC, other_link, soon),
            Admitted::PathCopy
        );
        assert_eq!(me.stats.get(Counter::PathDuplicates), 2);
        assert_eq!(me.stats.get(Counter::ReplayedDatagrams), 0);
        // By a route it came by already: a replay.
        assert_eq!(gate.admit(&me, &bytes, SRC, BCAST, soon), Admitted::Dropped);
        assert_eq!(me.stats.get(Counter::ReplayedDatagrams), 1);
        // Any copy after the window: a replay.
        let late = t0 + super::super::replay::COPY_WINDOW;
        let third = Route {
            ifindex: 4,
            ..BCAST
        };
        assert_eq!(gate.admit(&me, &bytes, SRC, third, late), Admitted::Dropped);
        assert_eq!(me.stats.get(Counter::ReplayedDatagrams), 2);
        // Another datagram claiming the peer, not the same bytes: checked.
        let forged = goodbye(&peer.identity).sign(&Identity::generate(), u64::MAX);
        assert_eq!(
            gate.admit(&me, &forged, SRC, BCAST, soon),
            Admitted::Dropped
        );
        assert_eq!(me.stats.get(Counter::BadSignatureDatagrams), 1);
        assert_eq!(me.stats.get(Counter::PathDuplicates), 2);
    }

    #[test]
    fn signed_is_admitted_once_forged_never() {
        let me = ctx(Mode::Open);
        let peer = ctx(Mode::Open);
        let gate = Gate::default();
        let now = Instant::now();
        let bytes = wrap(&goodbye(&peer.identity), &peer, SystemTime::now());
        // The first word from a sender: admitted, but a goodbye then is
        // only a claim (an old one may be replayed after its window went).
        assert_eq!(
            gate.admit(&me, &bytes, SRC, MCAST, now),
            Admitted::FirstWord(goodbye(&peer.identity))
        );
        // The same bytes again (a replay, or another link): dropped, counted.
        assert_eq!(gate.admit(&me, &bytes, SRC, MCAST, now), Admitted::Dropped);
        assert_eq!(me.stats.get(Counter::ReplayedDatagrams), 1);
        // A later one is fresh.
        let later = wrap(&goodbye(&peer.identity), &peer, SystemTime::now());
        assert!(matches!(
            gate.admit(&me, &later, SRC, MCAST, now),
            Admitted::Verified(_)
        ));
        // The peer's id signed by another key, and the unsigned form.
        let forger = Identity::generate();
        let forged = goodbye(&peer.identity).sign(&forger, u64::MAX);
        assert_eq!(gate.admit(&me, &forged, SRC, MCAST, now), Admitted::Dropped);
        let unsigned = goodbye(&peer.identity).encode();
        assert_eq!(
            gate.admit(&me, &unsigned, SRC, MCAST, now),
            Admitted::Dropped
        );
        assert_eq!(me.stats.get(Counter::BadSignatureDatagrams), 1);
        assert_eq!(me.stats.get(Counter::MalformedDatagrams), 1);
        // Our own, looped back.
        let own = wrap(&goodbye(&me.identity), &me, SystemTime::now());
        assert_eq!(gate.admit(&me, &own, SRC, MCAST, now), Admitted::Own);
    }

    #[test]
    fn private_swarms_are_separate() {
        let k = SwarmKey::generate();
        let me = ctx(Mode::private(&k));
        let member = ctx(Mode::private(&k));
        let other = ctx(Mode::private(&SwarmKey::generate()));
        let open = ctx(Mode::Open);
        let gate = Gate::default();
        let now = Instant::now();
        let a = Datagram::Announce(Announce {
            node: member.node,
            name: "member".into(),
            tcp_port: 9,
            interval_ms: 1000,
            inventory_digest: [1; 16],
            contents: 1,
        });
        let sealed = wrap(&a, &member, SystemTime::now());
        assert!(datagram::is_sealed(&sealed));
        assert!(
            !sealed.windows(6).any(|w| w == b"member"),
            "the name is not in clear"
        );
        assert_eq!(
            gate.admit(&me, &sealed, SRC, MCAST, now),
            Admitted::FirstWord(a)
        );
        for stranger in [&other, &open] {
            let bytes = wrap(&goodbye(&stranger.identity), stranger, SystemTime::now());
            assert_eq!(gate.admit(&me, &bytes, SRC, MCAST, now), Admitted::Dropped);
        }
        assert_eq!(me.stats.get(Counter::ForeignDatagrams), 2);
        // And an open node ignores the members' sealed datagrams.
        let open_gate = Gate::default();
        assert_eq!(
            open_gate.admit(&open, &sealed, SRC, MCAST, now),
            Admitted::Dropped
        );
        assert_eq!(open.stats.get(Counter::ForeignDatagrams), 1);
    }

    #[test]
    fn signature_checks_are_budgeted_per_source() {
        let me = ctx(Mode::Open);
        let gate = Gate::default();
        let now = Instant::now();
        let forger = Identity::generate();
        let victim = Identity::generate();
        let forged = goodbye(&victim).sign(&forger, 1);
        for _ in 0..1000 {
            gate.admit(&me, &forged, SRC, MCAST, now);
        }
        let checked = me.stats.get(Counter::BadSignatureDatagrams);
        assert!(
            checked <= 200,
            "{checked} signatures checked in one instant"
        );
        assert_eq!(me.stats.get(Counter::ThrottledDatagrams), 1000 - checked);
    }

    /// Signing and verifying one datagram (figures for the closing note):
    /// `cargo test --release --lib datagram_auth_cost -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn datagram_auth_cost() {
        let k = SwarmKey::generate();
        let peer = ctx(Mode::private(&k));
        let me = ctx(Mode::private(&k));
        let d = Datagram::Announce(Announce {
            node: peer.node,
            name: "a-typical-node-name".into(),
            tcp_port: 7373,
            interval_ms: 5000,
            inventory_digest: [1; 16],
            contents: 100,
        });
        let n = 20_000u32;
        let t = Instant::now();
        let all: Vec<Vec<u8>> = (0..n).map(|_| wrap(&d, &peer, SystemTime::now())).collect();
        let send = t.elapsed() / n;
        let gate = Gate {
            budget: VerifyBudget::new(f64::MAX),
            ..Gate::default()
        };
        let t = Instant::now();
        for b in &all {
            assert!(matches!(
                gate.admit(&me, b, SRC, MCAST, Instant::now()),
                Admitted::Verified(_) | Admitted::FirstWord(_)
            ));
        }
        let recv = t.elapsed() / n;
        let signed = d.sign(&peer.identity, 1);
        let t = Instant::now();
        for _ in 0..n {
            Signed::decode(&signed).unwrap().verify().unwrap();
        }
        let verify = t.elapsed() / n;
        let t = Instant::now();
        for i in 0..n {
            std::hint::black_box(d.sign(&peer.identity, i as u64));
        }
        let sign = t.elapsed() / n;
        eprintln!(
            "sign {sign:?}, verify {verify:?}; sealed: wrap (sign+seal) {send:?}, admit (open+verify+replay) {recv:?}; {} bytes sealed, {} signed",
            all[0].len(),
            signed.len()
        );
    }
}
