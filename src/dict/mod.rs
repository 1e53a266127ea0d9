//! The dictionary: what the network offers and who holds it, the only
//! shared state of discovery. Three owners, each with its own locks:
//! - [`Peers`] (`peers.rs`, one entry is a [`Peer`]): the peer table,
//!   proven or not, their addresses, who needs a pull or a probe;
//! - [`Contents`] (`contents.rs`): each online peer's inventory as held,
//!   the content index and its holders, the memory budget for them;
//! - views (`views.rs`): the holders a download asks, resolution, and what
//!   `ls` and `peers` show.
//!
//! [`Dict`] holds both parts and keeps them in step: a peer that goes
//! offline or is forgotten has its holdings withdrawn, and an inventory is
//! held only for an online peer. Operations touching both take the peer
//! table's write lock first, then the contents' lock.
//!
//! Who writes: discovery (multicast, mDNS, tracker client, `--peer`)
//! through [`Dict::observe`], [`Dict::depart`] and
//! [`Peers::claim_departure`]; the puller ([`Dict::set_inventory`],
//! [`Dict::refuse_inventory`]); the prober ([`Dict::probe_failed`]); the
//! expiry task ([`Dict::expire`]); the peer server relays a `Goodbye`
//! ([`Dict::depart`]); any code that dials a peer reports the outcome
//! ([`Peers::reached`], [`Peers::unreachable`]). Never talks to the
//! network, never reads the clock: time is passed in.

mod contents;
mod peer;
mod peers;
mod views;

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

pub use contents::{Content, Contents, Held, PullBudget, Refusal, entry_cost};
pub use peer::{Peer, PeerAddr};
pub use peers::Peers;
pub use views::Holder;

use crate::api::FoundVia;
use crate::id::NodeId;
use crate::inventory::{Digest, Inventory};

/// Most peers remembered; the longest-offline are forgotten first.
pub const MAX_PEERS: usize = 1024;
/// Most peers remembered that never proved themselves over TCP (a TCP
/// hello at one of their addresses answered with their id). Only they are
/// evicted for a newcomer, oldest first, besides offline peers: anyone can
/// announce a made-up id, and such ids must not push out real peers.
pub const MAX_UNPROVEN: usize = 256;
/// Most peers remembered per IP address (proven or not, online or not).
/// One host runs one node, or a few in tests (30 on loopback): a flood of
/// made-up ids from one address takes this many entries at most.
pub const MAX_PEERS_PER_IP: usize = 64;
/// Announce intervals a peer may claim: it stays online for
/// [`MISSED_ANNOUNCES`] of them after its last word, so a forged announce
/// keeps a ghost at most 3 minutes (`up --announce-interval` is bounded
/// the same way).
pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// A peer is offline after this many announce intervals without a word...
pub const MISSED_ANNOUNCES: u32 = 3;
/// ...and this much more.
pub const EXPIRY_GRACE: Duration = Duration::from_millis(500);
/// Most addresses remembered per peer.
pub const MAX_ADDRS: usize = 8;
/// Default bound on inventory entries held for all peers together
/// (`up --max-remote-contents`).
pub const DEFAULT_MAX_REMOTE_CONTENTS: usize = 1_000_000;
/// Default bound on the memory held for all peers' inventories together
/// (`up --max-remote-bytes`), as counted by [`entry_cost`]: about 200,000
/// contents with short names.
pub const DEFAULT_MAX_REMOTE_BYTES: usize = 128 << 20;
/// Memory one inventory entry costs besides its text and bitmap: the
/// entry, its share of the content's record and of the holder map.
pub const ENTRY_OVERHEAD: usize = 512;

/// A peer heard of: an announcement, an mDNS record, a tracker's list, a
/// `--peer` hello.
#[derive(Clone, Copy, Debug)]
pub struct Sighting<'a> {
    pub id: NodeId,
    pub name: &'a str,
    /// Where its TCP server is.
    pub addr: SocketAddr,
    pub via: FoundVia,
    /// The announce interval it claims (clamped to [`MIN_INTERVAL`],
    /// [`MAX_INTERVAL`]).
    pub interval: Duration,
    /// Its inventory's digest and size, as the source says.
    pub digest: Digest,
    pub contents: u32,
}

/// What an announcement means for the caller.
#[derive(Debug, PartialEq, Eq)]
pub enum Observed {
    /// Nothing new.
    Known,
    /// The peer's inventory is new or changed: pull it.
    Pull,
}

/// The peer table and the content index, kept in step.
#[derive(Default)]
pub struct Dict {
    pub peers: Peers,
    pub contents: Contents,
}

impl Dict {
    pub fn new() -> Self {
        Self::default()
    }

    /// A dictionary holding at most `max_entries` inventory entries in all.
    pub fn with_limit(max_entries: usize) -> Self {
        Self::with_limits(max_entries, DEFAULT_MAX_REMOTE_BYTES)
    }

    /// A dictionary holding at most `max_entries` inventory entries and
    /// `max_bytes` of them ([`entry_cost`]) in all; a peer whose inventory
    /// would pass a bound is listed without its contents.
    pub fn with_limits(max_entries: usize, max_bytes: usize) -> Self {
        Dict {
            peers: Peers::default(),
            contents: Contents::new(max_entries, max_bytes),
        }
    }

    /// Records that a peer was heard of at `now`. A newcomer may make
    /// room by forgetting another peer, whose holdings go with it.
    pub fn observe(&self, s: Sighting<'_>, now: Instant) -> Observed {
        let mut peers = self.peers.write();
        let seen = peers.observe(&s, now);
        if let Some(gone) = seen.forgotten {
            self.contents.withdraw(gone);
        }
        seen.observed
    }

    /// A peer said goodbye, or stopped answering: offline, its holdings
    /// withdrawn.
    pub fn set_offline(&self, id: NodeId) {
        let mut peers = self.peers.write();
        peers.set_offline(id);
        self.contents.withdraw(id);
    }

    /// A goodbye for `id` arrived from `from` (a datagram's source, or a
    /// TCP connection's remote address): the peer goes offline at once if it
    /// is known at that address ([`Peer::is_at`]); from anywhere else it is
    /// only a claim, checked by a hello ([`Peers::claim_departure`]). True
    /// when it went at once.
    pub fn depart(&self, id: NodeId, from: IpAddr) -> bool {
        match self.peers.with(&id, |p| p.online.then(|| p.is_at(from))) {
            Some(Some(true)) => {
                self.set_offline(id);
                true
            }
            Some(Some(false)) => {
                // Maybe forged, maybe the peer leaving from an address
                // it never answered at: a hello tells which, at once.
                tracing::debug!(peer = %id.short(), %from, "a goodbye from an address where this peer is not known; checking that it left");
                self.peers.claim_departure(id);
                false
            }
            _ => false,
        }
    }

    /// A probe found no address answering as `id`: if its departure was
    /// claimed, it is gone now, not after missed announcements.
    pub fn probe_failed(&self, id: NodeId) {
        let claimed = self.peers.with(&id, |p| p.online && p.departure_claimed);
        if claimed == Some(true) {
            tracing::info!(peer = %id.short(), "peer said to have left did not answer; marking it offline");
            self.set_offline(id);
        }
    }

    /// Marks offline every peer silent at `now` for [`MISSED_ANNOUNCES`]
    /// intervals and [`EXPIRY_GRACE`]; returns them.
    pub fn expire(&self, now: Instant) -> Vec<NodeId> {
        let stale = self.peers.silent(now);
        for id in &stale {
            tracing::info!(peer = %id.short(), "peer went silent; marking it offline");
            self.set_offline(*id);
        }
        stale
    }

    /// Replaces a peer's inventory (pulled over TCP, its digest checked),
    /// if the peer is online: held, or refused over a bound (then listed
    /// without contents, not pulled again until its digest changes).
    pub fn set_inventory(&self, id: NodeId, inv: Inventory) {
        let mut peers = self.peers.write();
        let Some(proven) = peers.pulled(id, inv.digest, inv.count()) else {
            return;
        };
        let held = if proven {
            self.contents.set(id, inv)
        } else {
            contents::warn_refused(id, &inv, Refusal::AddressFull);
            self.contents.withdraw(id);
            Err(Refusal::AddressFull)
        };
        if held.is_err() {
            peers.refused(id, None);
        }
    }

    /// A peer's inventory of `digest` could not be held (`why`): it is
    /// listed without contents and not pulled again until its digest
    /// changes.
    pub fn refuse_inventory(&self, id: NodeId, digest: Digest, why: Refusal) {
        let mut peers = self.peers.write();
        if !peers.refused(id, Some(digest)) {
            return;
        }
        tracing::warn!(peer = %id.short(), "{why}; this peer's contents are not listed");
        self.contents.withdraw(id);
    }
}

#[cfg(test)]
mod tests;
