//! The download's chunk states and the only ways they change (see
//! docs/fetch-states.md). Pure: no I/O, no clock, no locks.
//!
//! ```text
//!            acquire(p)                    complete(p or q)
//!  Missing ─────────────► InFlight{p} ─────────────────────► Done
//!     ▲                     │    ▲ │ steal(q): endgame only      │
//!     │  release(p)         │    │ ▼                             │
//!     ├─────────────────────┘  InFlight{p, q} ──complete──► Done │
//!     │     release(p): back to InFlight{q}; release(q): to {p}  │
//!     └──────────────────────────────────────────────────────────┘ mark_bad
//! ```

use std::collections::HashMap;

use crate::chunkset::Bitmap;

/// A peer's slot in one download.
pub type Slot = u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkState {
    Missing,
    /// Requested from `owner`; in the endgame also from `second`, and the
    /// first verified copy wins.
    InFlight {
        owner: Slot,
        second: Option<Slot>,
    },
    Done,
}

#[derive(Debug)]
pub struct ChunkMap {
    states: Vec<ChunkState>,
    done: u32,
    /// No chunk below this index is `Missing` (a scan hint, never wrong).
    first_missing: u32,
    /// Where each peer's next `acquire` starts scanning. Below it, every
    /// `Missing` chunk is one the peer lacked when it scanned past it, or
    /// gave back itself (refused); a chunk another peer gives back lowers
    /// it. So a peer that refuses chunks never rescans them: a refusal
    /// costs O(1) amortized instead of a scan of the whole map.
    cursors: HashMap<Slot, u32>,
}

impl ChunkMap {
    /// A map of `total` chunks where those set in `have` are already done.
    pub fn new(total: u32, have: &Bitmap) -> Self {
        let states: Vec<ChunkState> = (0..total)
            .map(|i| {
                if have.get(i) {
                    ChunkState::Done
                } else {
                    ChunkState::Missing
                }
            })
            .collect();
        let done = states.iter().filter(|s| **s == ChunkState::Done).count() as u32;
        ChunkMap {
            states,
            done,
            first_missing: 0,
            cursors: HashMap::new(),
        }
    }

    pub fn total(&self) -> u32 {
        self.states.len() as u32
    }

    pub fn done_count(&self) -> u32 {
        self.done
    }

    pub fn is_complete(&self) -> bool {
        self.done == self.total()
    }

    pub fn state(&self, index: u32) -> Option<ChunkState> {
        self.states.get(index as usize).copied()
    }

    /// Advances the hint; true when some chunk is `Missing`.
    fn has_missing(&mut self) -> bool {
        while (self.first_missing as usize) < self.states.len()
            && self.states[self.first_missing as usize] != ChunkState::Missing
        {
            self.first_missing += 1;
        }
        (self.first_missing as usize) < self.states.len()
    }

    /// Takes the lowest missing chunk that `peer` holds, marking it in
    /// flight; chunks `peer` itself gave back since its last
    /// [`rewind`](Self::rewind) are skipped (see `cursors`). `holds` must
    /// not change between rewinds.
    pub fn acquire(&mut self, peer: Slot, holds: impl Fn(u32) -> bool) -> Option<u32> {
        if !self.has_missing() {
            return None;
        }
        let cursor = self.cursors.entry(peer).or_insert(0);
        let start = (*cursor).max(self.first_missing) as usize;
        let found = self.states[start..]
            .iter()
            .enumerate()
            .find(|(i, s)| **s == ChunkState::Missing && holds((start + i) as u32))
            .map(|(i, _)| (start + i) as u32);
        let Some(index) = found else {
            *cursor = self.states.len() as u32;
            return None;
        };
        *cursor = index + 1;
        self.states[index as usize] = ChunkState::InFlight {
            owner: peer,
            second: None,
        };
        Some(index)
    }

    /// `peer`'s next `acquire` looks at every missing chunk again (its
    /// holdings grew, or it may now have chunks it refused).
    pub fn rewind(&mut self, peer: Slot) {
        self.cursors.remove(&peer);
    }

    /// Chunk `index` became `Missing` because of `by` (None: the follower):
    /// every other peer's scan must see it again.
    fn became_missing(&mut self, index: u32, by: Option<Slot>) {
        self.first_missing = self.first_missing.min(index);
        for (slot, c) in self.cursors.iter_mut() {
            if Some(*slot) != by {
                *c = (*c).min(index);
            }
        }
    }

    /// Endgame: when no chunk is missing any more, an idle `peer` may also
    /// request a chunk in flight with another peer, so a slow peer cannot
    /// hold up the end of the download. First choice: the lowest chunk
    /// whose every requester is `stalled` (no answer for a while); if it
    /// already has a second requester, `peer` takes that stalled second's
    /// place when `may_replace(second)` (the caller lets a peer it trusts
    /// replace at once and others only after longer), so an idle stalling
    /// peer never keeps the duplicate slot, and a crowd of idle stalling
    /// peers cannot pass it round among themselves. Otherwise the lowest
    /// chunk in flight with one peer only.
    pub fn steal(
        &mut self,
        peer: Slot,
        holds: impl Fn(u32) -> bool,
        stalled: impl Fn(Slot) -> bool,
        may_replace: impl Fn(Slot) -> bool,
    ) -> Option<u32> {
        if self.has_missing() {
            return None;
        }
        let mut single = None;
        let mut stuck = None;
        for (i, s) in self.states.iter().enumerate() {
            let ChunkState::InFlight { owner, second } = *s else {
                continue;
            };
            if owner == peer || second == Some(peer) || !holds(i as u32) {
                continue;
            }
            if stalled(owner) && second.is_none_or(|q| stalled(q) && may_replace(q)) {
                stuck = Some(i);
                break;
            }
            if second.is_none() && single.is_none() {
                single = Some(i);
            }
        }
        let index = stuck.or(single)?;
        if let ChunkState::InFlight { second, .. } = &mut self.states[index] {
            *second = Some(peer);
        }
        Some(index as u32)
    }

    /// A chunk from `peer` arrived and verified. Returns false (and changes
    /// nothing) unless it was in flight with that peer.
    pub fn complete(&mut self, index: u32, peer: Slot) -> bool {
        match self.states.get_mut(index as usize) {
            Some(s @ ChunkState::InFlight { .. }) if in_flight_with(s, peer) => {
                *s = ChunkState::Done;
                self.done += 1;
                true
            }
            _ => false,
        }
    }

    /// Gives back `peer`'s request for a chunk (it failed). The chunk stays
    /// in flight if another peer was asked for it too.
    pub fn release(&mut self, index: u32, peer: Slot) {
        if let Some(s) = self.states.get_mut(index as usize) {
            let next = match *s {
                ChunkState::InFlight { owner, second } if owner == peer => match second {
                    Some(q) => ChunkState::InFlight {
                        owner: q,
                        second: None,
                    },
                    None => ChunkState::Missing,
                },
                ChunkState::InFlight {
                    owner,
                    second: Some(q),
                } if q == peer => ChunkState::InFlight {
                    owner,
                    second: None,
                },
                other => other,
            };
            *s = next;
            if next == ChunkState::Missing {
                self.became_missing(index, Some(peer));
            }
        }
    }

    /// Gives back every request of `peer` (it died or was dropped).
    pub fn release_peer(&mut self, peer: Slot) -> u32 {
        // Slots are never reused: its scan position goes too, before its
        // chunks are given back so that none is hidden from the others.
        self.cursors.remove(&peer);
        let mut n = 0;
        for i in 0..self.total() {
            if let Some(s) = self.states.get(i as usize)
                && in_flight_with(s, peer)
            {
                self.release(i, peer);
                n += 1;
            }
        }
        n
    }

    /// A done chunk failed the check on disk: fetch it again.
    pub fn mark_bad(&mut self, index: u32) {
        if let Some(s) = self.states.get_mut(index as usize)
            && *s == ChunkState::Done
        {
            *s = ChunkState::Missing;
            self.done -= 1;
            self.became_missing(index, None);
        }
    }

    /// Missing chunks (not in flight, not done).
    pub fn missing(&self) -> impl Iterator<Item = u32> + '_ {
        self.states
            .iter()
            .enumerate()
            .filter(|(_, s)| **s == ChunkState::Missing)
            .map(|(i, _)| i as u32)
    }
}

fn in_flight_with(s: &ChunkState, peer: Slot) -> bool {
    matches!(s, ChunkState::InFlight { owner, second } if *owner == peer || *second == Some(peer))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn inflight(owner: Slot) -> Option<ChunkState> {
        Some(ChunkState::InFlight {
            owner,
            second: None,
        })
    }

    #[test]
    fn lifecycle() {
        let mut have = Bitmap::new(5);
        have.set(1);
        let mut m = ChunkMap::new(5, &have);
        assert_eq!(m.done_count(), 1);
        assert_eq!(m.acquire(0, |_| true), Some(0));
        assert_eq!(m.acquire(1, |i| i == 4), Some(4));
        assert_eq!(m.acquire(0, |_| true), Some(2));
        assert!(
            !m.complete(2, 1),
            "only a peer it is in flight with completes it"
        );
        assert!(m.complete(2, 0));
        assert_eq!(m.release_peer(0), 1);
        assert_eq!(m.state(0), Some(ChunkState::Missing));
        assert_eq!(m.acquire(1, |_| true), Some(0));
        m.release(0, 1);
        assert_eq!(m.missing().collect::<Vec<_>>(), vec![0, 3]);
        for i in [0, 3] {
            assert_eq!(m.acquire(2, |_| true), Some(i));
            assert!(m.complete(i, 2));
        }
        assert!(m.complete(4, 1));
        assert!(m.is_complete());
        m.mark_bad(3);
        assert!(!m.is_complete());
        assert_eq!(m.acquire(0, |_| true), Some(3));
        assert_eq!(m.acquire(0, |_| true), None);
    }

    #[test]
    fn endgame_steals_only_when_nothing_is_missing() {
        let mut m = ChunkMap::new(3, &Bitmap::new(3));
        assert_eq!(m.acquire(0, |_| true), Some(0));
        assert_eq!(m.acquire(0, |_| true), Some(1));
        assert_eq!(
            m.steal(1, |_| true, |_| false, |_| true),
            None,
            "chunk 2 is still missing: no duplicate requests"
        );
        assert_eq!(m.acquire(1, |_| true), Some(2));
        assert_eq!(
            m.steal(1, |_| true, |_| false, |_| true),
            Some(0),
            "everything requested: the idle peer helps"
        );
        assert_eq!(m.steal(1, |_| true, |_| false, |_| true), Some(1));
        assert_eq!(
            m.steal(2, |_| true, |_| false, |_| true),
            Some(2),
            "chunk 2 had one requester"
        );
        assert_eq!(
            m.steal(3, |_| true, |_| false, |_| true),
            None,
            "at most two requests per chunk"
        );
        assert!(m.complete(0, 1), "the helper's copy wins");
        assert!(!m.complete(0, 0), "the slow copy changes nothing");
        m.release_peer(1);
        assert_eq!(m.state(1), inflight(0), "the owner's request stands");
        assert_eq!(m.state(2), inflight(2), "the helper becomes the owner");
        m.release(1, 0);
        assert_eq!(m.state(1), Some(ChunkState::Missing));
    }

    #[test]
    fn a_stalled_helper_gives_its_duplicate_slot_to_another_peer() {
        let mut m = ChunkMap::new(2, &Bitmap::new(2));
        assert_eq!(m.acquire(0, |_| true), Some(0));
        assert_eq!(m.acquire(1, |_| true), Some(1));
        assert_eq!(m.steal(2, |_| true, |_| false, |_| true), Some(0));
        assert_eq!(m.steal(3, |_| true, |_| false, |_| true), Some(1));
        assert_eq!(
            m.steal(4, |_| true, |_| false, |_| true),
            None,
            "both chunks have two live requesters"
        );
        // Slots 0 and 2 (both requesters of chunk 0) stop answering.
        let stalled = |s: Slot| s == 0 || s == 2;
        assert_eq!(
            m.steal(4, |_| true, stalled, |_| false),
            None,
            "a peer not trusted to replace a stalled helper waits"
        );
        assert_eq!(
            m.steal(4, |_| true, stalled, |_| true),
            Some(0),
            "the stalled helper is replaced"
        );
        assert_eq!(
            m.state(0),
            Some(ChunkState::InFlight {
                owner: 0,
                second: Some(4)
            })
        );
        assert!(
            !m.complete(0, 2),
            "the replaced helper's late copy changes nothing"
        );
        m.release(0, 2);
        assert_eq!(
            m.state(0),
            Some(ChunkState::InFlight {
                owner: 0,
                second: Some(4)
            })
        );
        // A stalled owner alone: an idle peer prefers that chunk.
        let mut m = ChunkMap::new(3, &Bitmap::new(3));
        for i in 0..3 {
            assert_eq!(m.acquire(i, |_| true), Some(i));
        }
        assert_eq!(
            m.steal(5, |_| true, |s| s == 2, |_| false),
            Some(2),
            "the stuck chunk first"
        );
        assert_eq!(m.steal(6, |_| true, |s| s == 2, |_| false), Some(0));
    }

    #[test]
    fn refused_chunks_are_not_rescanned_but_given_back_ones_are() {
        let mut m = ChunkMap::new(6, &Bitmap::new(6));
        // Peer 0 refuses every chunk it gets: each acquire moves on.
        for i in 0..6 {
            assert_eq!(m.acquire(0, |_| true), Some(i));
            m.release(i, 0);
        }
        assert_eq!(m.acquire(0, |_| true), None, "nothing it has not refused");
        assert_eq!(m.acquire(1, |_| true), Some(0), "others see every chunk");
        m.release(0, 1);
        assert_eq!(
            m.acquire(0, |_| true),
            Some(0),
            "given back by another: seen again"
        );
        m.release(0, 0);
        m.rewind(0);
        assert_eq!(
            m.acquire(0, |_| true),
            Some(0),
            "after a rewind: everything again"
        );
    }

    #[derive(Debug, Clone)]
    enum Op {
        Acquire(Slot),
        Steal(Slot, u8, u8),
        Rewind(Slot),
        Complete(u32, Slot),
        Release(u32, Slot),
        ReleasePeer(Slot),
        Bad(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..4).prop_map(Op::Acquire),
            (0u32..4, any::<u8>(), any::<u8>()).prop_map(|(p, m, s)| Op::Steal(p, m, s)),
            (0u32..4).prop_map(Op::Rewind),
            (0u32..40, 0u32..4).prop_map(|(i, p)| Op::Complete(i, p)),
            (0u32..40, 0u32..4).prop_map(|(i, p)| Op::Release(i, p)),
            (0u32..4).prop_map(Op::ReleasePeer),
            (0u32..40).prop_map(Op::Bad),
        ]
    }

    proptest! {
        /// Whatever happens, the done count matches the states, a chunk is
        /// in flight with at most two different peers, a chunk handed out is
        /// in flight with the peer that got it, a peer released holds
        /// nothing, and `acquire` hands out the lowest missing chunk the
        /// peer holds and has not itself given back since its last rewind
        /// (a model of what the scan cursors may skip).
        #[test]
        fn invariants_hold(total in 0u32..40, masks in proptest::array::uniform4(any::<u8>()), ops in proptest::collection::vec(op(), 0..300)) {
            let mut m = ChunkMap::new(total, &Bitmap::new(total));
            let holds = |p: Slot, i: u32| masks[p as usize] & (1 << (i % 8)) != 0;
            let mut gave_back: [std::collections::BTreeSet<u32>; 4] = Default::default();
            for op in ops {
                let before: Vec<Option<ChunkState>> = (0..total).map(|i| m.state(i)).collect();
                let mut by = None;
                match op {
                    Op::Acquire(p) => {
                        let candidates: Vec<u32> = (0..total)
                            .filter(|i| m.state(*i) == Some(ChunkState::Missing) && holds(p, *i))
                            .collect();
                        let visible = candidates.iter().find(|i| !gave_back[p as usize].contains(i)).copied();
                        let got = m.acquire(p, |i| holds(p, i));
                        match got {
                            // It may offer again a chunk the peer gave back,
                            // never skip one it should see.
                            Some(i) => {
                                prop_assert!(candidates.contains(&i));
                                prop_assert!(visible.is_none_or(|v| v >= i), "skipped chunk {:?}", visible);
                                prop_assert_eq!(m.state(i), inflight(p));
                            }
                            None => prop_assert_eq!(visible, None, "hid a missing chunk"),
                        }
                    }
                    Op::Steal(p, mask, stalled) => {
                        if let Some(i) = m.steal(p, |i| mask & (1 << (i % 8)) != 0, |s| stalled & (1 << s) != 0, |s| s % 2 == 0) {
                            let ok = matches!(m.state(i), Some(ChunkState::InFlight { owner, second: Some(q) }) if q == p && owner != p);
                            prop_assert!(ok, "steal did not record the helper");
                            prop_assert!(m.missing().next().is_none(), "stole while a chunk was missing");
                        }
                    }
                    Op::Rewind(p) => {
                        m.rewind(p);
                        gave_back[p as usize].clear();
                    }
                    Op::Complete(i, p) => { m.complete(i, p); }
                    Op::Release(i, p) => {
                        m.release(i, p);
                        by = Some(p);
                    }
                    Op::ReleasePeer(p) => {
                        m.release_peer(p);
                        gave_back[p as usize].clear();
                        prop_assert!((0..total).all(|i| !in_flight_with(&m.state(i).unwrap(), p)));
                    }
                    Op::Bad(i) => m.mark_bad(i),
                }
                // Update the model: a chunk that became missing is seen
                // again by everyone but the peer that gave it back.
                for i in 0..total {
                    if before[i as usize] != Some(ChunkState::Missing) && m.state(i) == Some(ChunkState::Missing) {
                        for (p, set) in gave_back.iter_mut().enumerate() {
                            if Some(p as Slot) == by {
                                set.insert(i);
                            } else {
                                set.remove(&i);
                            }
                        }
                    }
                }
                let done = (0..total).filter(|i| m.state(*i) == Some(ChunkState::Done)).count() as u32;
                prop_assert_eq!(done, m.done_count());
                for i in 0..total {
                    if let Some(ChunkState::InFlight { owner, second: Some(q) }) = m.state(i) {
                        prop_assert_ne!(owner, q);
                    }
                }
                // The hint never hides a missing chunk.
                if let Some(f) = m.missing().next() { prop_assert!(f >= m.first_missing); }
            }
        }
    }
}
