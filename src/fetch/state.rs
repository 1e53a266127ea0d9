//! The download's chunk states and the only ways they change (see
//! docs/fetch-states.md). Pure: no I/O, no clock, no locks.
//!
//! ```text
//!            acquire(peer)              complete(peer)
//!  Missing ─────────────────► InFlight ───────────────► Done
//!     ▲  ◄──────────────────────┘ release / release_peer   │
//!     └─────────────────────────────────────────────────────┘ mark_bad
//! ```

use crate::chunkset::Bitmap;

/// A peer's slot in one download.
pub type Slot = u32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkState {
    Missing,
    InFlight(Slot),
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

    /// Takes the lowest missing chunk that `peer` holds, marking it in flight.
    pub fn acquire(&mut self, peer: Slot, holds: impl Fn(u32) -> bool) -> Option<u32> {
        while (self.first_missing as usize) < self.states.len()
            && self.states[self.first_missing as usize] != ChunkState::Missing
        {
            self.first_missing += 1;
        }
        let start = self.first_missing as usize;
        let found = self.states[start..]
            .iter()
            .enumerate()
            .find(|(i, s)| **s == ChunkState::Missing && holds((start + i) as u32));
        let index = (start + found?.0) as u32;
        self.states[index as usize] = ChunkState::InFlight(peer);
        Some(index)
    }

    /// A chunk from `peer` arrived and verified. Returns false (and changes
    /// nothing) unless it was in flight with that peer.
    pub fn complete(&mut self, index: u32, peer: Slot) -> bool {
        match self.states.get_mut(index as usize) {
            Some(s) if *s == ChunkState::InFlight(peer) => {
                *s = ChunkState::Done;
                self.done += 1;
                true
            }
            _ => false,
        }
    }

    /// Gives an in-flight chunk back (its request failed).
    pub fn release(&mut self, index: u32, peer: Slot) {
        if let Some(s) = self.states.get_mut(index as usize)
            && *s == ChunkState::InFlight(peer)
        {
            *s = ChunkState::Missing;
            self.first_missing = self.first_missing.min(index);
        }
    }

    /// Gives back every chunk in flight with `peer` (it died or was dropped).
    pub fn release_peer(&mut self, peer: Slot) -> u32 {
        let mut n = 0;
        for (i, s) in self.states.iter_mut().enumerate() {
            if *s == ChunkState::InFlight(peer) {
                *s = ChunkState::Missing;
                self.first_missing = self.first_missing.min(i as u32);
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lifecycle() {
        let mut have = Bitmap::new(5);
        have.set(1);
        let mut m = ChunkMap::new(5, &have);
        assert_eq!(m.done_count(), 1);
        assert_eq!(m.acquire(0, |_| true), Some(0));
        assert_eq!(m.acquire(1, |i| i == 4), Some(4));
        assert_eq!(m.acquire(0, |_| true), Some(2));
        assert!(!m.complete(2, 1), "only the owner completes");
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

    #[derive(Debug, Clone)]
    enum Op {
        Acquire(Slot, u8),
        Complete(u32, Slot),
        Release(u32, Slot),
        ReleasePeer(Slot),
        Bad(u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u32..4, any::<u8>()).prop_map(|(p, m)| Op::Acquire(p, m)),
            (0u32..40, 0u32..4).prop_map(|(i, p)| Op::Complete(i, p)),
            (0u32..40, 0u32..4).prop_map(|(i, p)| Op::Release(i, p)),
            (0u32..4).prop_map(Op::ReleasePeer),
            (0u32..40).prop_map(Op::Bad),
        ]
    }

    proptest! {
        /// Whatever happens, the done count matches the states, and a chunk
        /// handed out is never handed out again until given back.
        #[test]
        fn invariants_hold(total in 0u32..40, ops in proptest::collection::vec(op(), 0..200)) {
            let mut m = ChunkMap::new(total, &Bitmap::new(total));
            for op in ops {
                match op {
                    Op::Acquire(p, mask) => {
                        if let Some(i) = m.acquire(p, |i| mask & (1 << (i % 8)) != 0) {
                            prop_assert_eq!(m.state(i), Some(ChunkState::InFlight(p)));
                            prop_assert!(mask & (1 << (i % 8)) != 0);
                        }
                    }
                    Op::Complete(i, p) => { m.complete(i, p); }
                    Op::Release(i, p) => m.release(i, p),
                    Op::ReleasePeer(p) => { m.release_peer(p); }
                    Op::Bad(i) => m.mark_bad(i),
                }
                let done = (0..total).filter(|i| m.state(*i) == Some(ChunkState::Done)).count() as u32;
                prop_assert_eq!(done, m.done_count());
                // The hint never hides a missing chunk.
                let first = (0..total).find(|i| m.state(*i) == Some(ChunkState::Missing));
                if let Some(f) = first { prop_assert!(f >= m.first_missing); }
            }
        }
    }
}
