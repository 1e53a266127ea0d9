//! Which workers are silent and which are trusted, with time passed in,
//! and the endgame rule built on them: once no chunk is missing, an idle
//! worker may also ask for a chunk a silent one holds up, and a trusted
//! one takes a silent helper's duplicate slot at once (others wait twice
//! as long). The chunk states themselves change only in
//! [`super::state::ChunkMap::steal`].
//!
//! Pure: never reads the clock, never touches a connection.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::state::{ChunkMap, Slot};

/// Per worker slot: since when it waits for an answer with requests in
/// flight, and whether it is trusted.
#[derive(Default)]
pub struct SlotWatch {
    /// Reset by every answer; absent while nothing is in flight.
    quiet_since: HashMap<Slot, Instant>,
    /// Slots trusted to take a stalled peer's endgame slot at once: their
    /// peer answered this node before (the manifest's sender among them)
    /// or sent a verified chunk in this download, and has not stalled
    /// since. Others wait twice as long, so a crowd of idle stalling peers
    /// cannot pass the slot round among themselves while a peer that
    /// answers waits its turn.
    trusted: HashSet<Slot>,
}

/// What one endgame decision sees.
pub struct Endgame {
    /// Silent for `patience`.
    stalled: HashSet<Slot>,
    /// Whether the asking slot is trusted.
    trusted: bool,
    /// Silent for twice `patience` (only computed for an untrusted slot).
    long_stalled: HashSet<Slot>,
}

impl SlotWatch {
    /// Slots silent at `now` for longer than `patience` with requests in
    /// flight; they lose their trust.
    pub fn stalled(&mut self, now: Instant, patience: Duration) -> HashSet<Slot> {
        let stalled: HashSet<Slot> = self
            .quiet_since
            .iter()
            .filter(|(_, since)| now.saturating_duration_since(**since) > patience)
            .map(|(s, _)| *s)
            .collect();
        self.trusted.retain(|s| !stalled.contains(s));
        stalled
    }

    pub fn set_trusted(&mut self, slot: Slot, yes: bool) {
        if yes {
            self.trusted.insert(slot);
        } else {
            self.trusted.remove(&slot);
        }
    }

    pub fn is_trusted(&self, slot: Slot) -> bool {
        self.trusted.contains(&slot)
    }

    /// `slot` waits for an answer since `since` (`None`: nothing in flight).
    pub fn set_quiet(&mut self, slot: Slot, since: Option<Instant>) {
        match since {
            Some(t) => self.quiet_since.insert(slot, t),
            None => self.quiet_since.remove(&slot),
        };
    }

    /// What `slot` may take over at `now` in the endgame.
    pub fn endgame(&mut self, slot: Slot, now: Instant, patience: Duration) -> Endgame {
        let stalled = self.stalled(now, patience);
        let trusted = self.is_trusted(slot);
        let long_stalled = if trusted {
            HashSet::new()
        } else {
            self.stalled(now, patience * 2)
        };
        Endgame {
            stalled,
            trusted,
            long_stalled,
        }
    }
}

impl Endgame {
    /// The chunk `slot` asks for as well (see [`ChunkMap::steal`]).
    pub fn steal(
        &self,
        map: &mut ChunkMap,
        slot: Slot,
        holds: impl Fn(u32) -> bool,
    ) -> Option<u32> {
        map.steal(
            slot,
            holds,
            |s| self.stalled.contains(&s),
            |s| self.trusted || self.long_stalled.contains(&s),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunkset::Bitmap;
    use crate::fetch::state::ChunkState;
    use proptest::prelude::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    proptest! {
        /// With every chunk held up by a silent owner and a silent helper
        /// that failed (silent `helper_quiet` ms, patience 2 s): a trusted
        /// peer takes the helper's place at once, an untrusted one only
        /// once the helper was silent for twice the patience, and one that
        /// stalled itself loses its trust.
        #[test]
        fn trusted_peer_replaces_a_failed_one(
            total in 1u32..20,
            helper_quiet in 0u64..6000,
            trusted in any::<bool>(),
            self_quiet in proptest::option::of(0u64..6000),
        ) {
            let patience = ms(2000);
            let t0 = Instant::now();
            let now = t0 + ms(10_000);
            let (owner, helper, me) = (0, 1, 2);
            let mut map = ChunkMap::new(total, &Bitmap::new(total));
            while map.acquire(owner, |_| true).is_some() {}
            for _ in 0..total {
                map.steal(helper, |_| true, |_| true, |_| true);
            }
            let mut w = SlotWatch::default();
            w.set_quiet(owner, Some(t0));
            w.set_quiet(helper, Some(now - ms(helper_quiet)));
            w.set_trusted(me, trusted);
            if let Some(q) = self_quiet {
                w.set_quiet(me, Some(now - ms(q)));
            }
            let me_stalled = self_quiet.is_some_and(|q| ms(q) > patience);
            let game = w.endgame(me, now, patience);
            let got = game.steal(&mut map, me, |_| true);
            let helper_stalled = ms(helper_quiet) > patience;
            let helper_long = ms(helper_quiet) > patience * 2;
            let expect = helper_stalled && ((trusted && !me_stalled) || helper_long);
            prop_assert_eq!(got.is_some(), expect, "{:?}", got);
            if let Some(i) = got {
                prop_assert_eq!(map.state(i), Some(ChunkState::InFlight { owner, second: Some(me) }));
            }
            prop_assert_eq!(w.is_trusted(me), trusted && !me_stalled);
        }
    }
}
