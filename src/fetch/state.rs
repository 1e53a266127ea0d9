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

    /// Takes the lowest missing chunk that `peer` holds, marking it in flight.
    pub fn acquire(&mut self, peer: Slot, holds: impl Fn(u32) -> bool) -> Option<u32> {
        if !self.has_missing() {
            return None;
        }
        let start = self.first_missing as usize;
        let found = self.states[start..]
            .iter()
            .enumerate()
            .find(|(i, s)| **s == ChunkState::Missing && holds((start + i) as u32));
        let index = (start + found?.0) as u32;
        self.states[index as usize] = ChunkState::InFlight {
            owner: peer,
            second: None,
        };
        Some(index)
    }

    /// Endgame: when no chunk is missing any more, an idle `peer` may also
    /// request the lowest chunk in flight with one other peer, so a slow
    /// peer cannot hold up the end of the download.
    pub fn steal(&mut self, peer: Slot, holds: impl Fn(u32) -> bool) -> Option<u32> {
        if self.has_missing() {
            return None;
        }
        let (index, state) = self.states.iter_mut().enumerate().find(|(i, s)| {
            matches!(s, ChunkState::InFlight { owner, second: None } if *owner != peer)
                && holds(*i as u32)
        })?;
        if let ChunkState::InFlight { second, .. } = state {
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
                self.first_missing = self.first_missing.min(index);
            }
        }
    }

    /// Gives back every request of `peer` (it died or was dropped).
    pub fn release_peer(&mut self, peer: Slot) -> u32 {
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
            self.first_missing = self.first_missing.min(index);
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
            m.steal(1, |_| true),
            None,
            "chunk 2 is still missing: no duplicate requests"
        );
        assert_eq!(m.acquire(1, |_| true), Some(2));
        assert_eq!(
            m.steal(1, |_| true),
            Some(0),
            "everything requested: the idle peer helps"
        );
        assert_eq!(m.steal(1, |_| true), Some(1));
        assert_eq!(m.steal(2, |_| true), Some(2), "chunk 2 had one requester");
        assert_eq!(m.steal(3, |_| true), None, "at most two requests per chunk");
        assert!(m.complete(0, 1), "the helper's copy wins");
        assert!(!m.complete(0, 0), "the slow copy changes nothing");
        m.release_peer(1);
        assert_eq!(m.state(1), inflight(0), "the owner's request stands");
        assert_eq!(m.state(2), inflight(2), "the helper becomes the owner");
        m.release(1, 0);
        assert_eq!(m.state(1), Some(ChunkState::Missing));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Acquire(Slot, u8),
        Steal(Slot, u8),
        Complete(u32, Slot),
        Release(u32, Slot),
        ReleasePeer(Slot),
        Bad(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..4, any::<u8>()).prop_map(|(p, m)| Op::Acquire(p, m)),
            (0u32..4, any::<u8>()).prop_map(|(p, m)| Op::Steal(p, m)),
            (0u32..40, 0u32..4).prop_map(|(i, p)| Op::Complete(i, p)),
            (0u32..40, 0u32..4).prop_map(|(i, p)| Op::Release(i, p)),
            (0u32..4).prop_map(Op::ReleasePeer),
            (0u32..40).prop_map(Op::Bad),
        ]
    }

    proptest! {
        /// Whatever happens, the done count matches the states, a chunk is
        /// in flight with at most two different peers, a chunk handed out is
        /// in flight with the peer that got it, and a peer released holds nothing.
        #[test]
        fn invariants_hold(total in 0u32..40, ops in proptest::collection::vec(op(), 0..300)) {
            let mut m = ChunkMap::new(total, &Bitmap::new(total));
            for op in ops {
                match op {
                    Op::Acquire(p, mask) => {
                        if let Some(i) = m.acquire(p, |i| mask & (1 << (i % 8)) != 0) {
                            prop_assert_eq!(m.state(i), inflight(p));
                        }
                    }
                    Op::Steal(p, mask) => {
                        if let Some(i) = m.steal(p, |i| mask & (1 << (i % 8)) != 0) {
                            let ok = matches!(m.state(i), Some(ChunkState::InFlight { owner, second: Some(q) }) if q == p && owner != p);
                            prop_assert!(ok, "steal did not record the helper");
                            prop_assert!(m.missing().next().is_none(), "stole while a chunk was missing");
                        }
                    }
                    Op::Complete(i, p) => { m.complete(i, p); }
                    Op::Release(i, p) => m.release(i, p),
                    Op::ReleasePeer(p) => {
                        m.release_peer(p);
                        prop_assert!((0..total).all(|i| !in_flight_with(&m.state(i).unwrap(), p)));
                    }
                    Op::Bad(i) => m.mark_bad(i),
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
