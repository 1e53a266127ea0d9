//! Keeping the tracker's copy of this node's inventory current: the
//! entries as the tracker takes them, a change against what it holds when
//! it holds a copy, else the whole inventory, in batches that shrink when
//! the tracker refuses one as too large. Never polls peers.

use super::{Acked, ClientError, Failure, Follower, MIN_BATCH};
use crate::id::ContentId;
use crate::inventory::Inventory;
use crate::tracker::proto::{Entry, FullAnnounce, PatchAnnounce};

impl Follower {
    /// The inventory as the tracker takes it: checked, sorted by id, unique
    /// ids, at most the tracker's cap.
    pub(super) fn entries(&mut self, inv: &Inventory, max: u32) -> Vec<Entry> {
        let mut out: Vec<Entry> = Vec::with_capacity(inv.len());
        let mut skipped = 0usize;
        for e in inv.iter() {
            let entry = Entry::from_inventory(&e);
            if entry.check().is_err() {
                skipped += 1;
                continue;
            }
            out.push(entry);
        }
        out.sort_by_key(|e| e.id);
        out.dedup_by(|a, b| a.id == b.id);
        if out.len() > max as usize {
            skipped += out.len() - max as usize;
            out.truncate(max as usize);
        }
        if skipped > 0 && !self.warned_entries {
            self.warned_entries = true;
            tracing::warn!(tracker = %self.api.base(), skipped, "some shared files are not announced to the tracker (over its cap, or names it refuses)");
        }
        out
    }

    /// Brings the tracker's copy of the inventory up to `inv`: a change
    /// against what it holds when it has a copy, else the whole inventory.
    pub(super) async fn announce(&mut self, inv: &Inventory) -> Result<(), Failure> {
        let token = self.session.as_ref().expect("registered").token.clone();
        let entries = self.entries(inv, self.max_files);
        loop {
            match self.try_announce(inv, &token, &entries).await {
                // A tracker with a smaller body limit: smaller requests.
                Err(e) if e.status() == Some(413) && self.batch > MIN_BATCH => {
                    self.batch = (self.batch / 4).max(MIN_BATCH);
                    tracing::info!(tracker = %self.api.base(), batch = self.batch, "the tracker refused a request as too large; sending smaller parts");
                    self.acked = None;
                }
                Err(e) => return Err(e.into()),
                Ok(()) => {
                    self.acked = Some(Acked {
                        digest: inv.digest,
                        entries,
                    });
                    return Ok(());
                }
            }
        }
    }

    async fn try_announce(
        &mut self,
        inv: &Inventory,
        token: &str,
        entries: &[Entry],
    ) -> Result<(), ClientError> {
        let batch = self.batch;
        if let Some(acked) = &self.acked {
            let (upsert, remove) = diff(&acked.entries, entries);
            if upsert.len() + remove.len() < entries.len() {
                match self
                    .send_patch(token, Some(acked.digest), inv.digest, upsert, remove)
                    .await
                {
                    Ok(()) => {
                        tracing::debug!(tracker = %self.api.base(), "inventory change announced");
                        return Ok(());
                    }
                    Err(e) if e.status() == Some(409) => {
                        tracing::debug!(tracker = %self.api.base(), "the tracker holds another inventory; sending all of it");
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        self.acked = None;
        let mut batches = entries.chunks(batch);
        let first = batches.next().unwrap_or(&[]).to_vec();
        let more = entries.len() > batch;
        self.api
            .announce_full(
                &self.me.identity,
                token,
                &FullAnnounce {
                    digest: (!more).then_some(inv.digest),
                    entries: first,
                    more,
                },
            )
            .await?;
        let rest: Vec<&[Entry]> = batches.collect();
        for (i, part) in rest.iter().enumerate() {
            let last = i + 1 == rest.len();
            self.api
                .announce_patch(
                    &self.me.identity,
                    token,
                    &PatchAnnounce {
                        base: None,
                        digest: last.then_some(inv.digest),
                        upsert: part.to_vec(),
                        remove: Vec::new(),
                        more: !last,
                    },
                )
                .await?;
        }
        tracing::debug!(tracker = %self.api.base(), entries = entries.len(), "inventory announced");
        Ok(())
    }

    /// Sends a change in batches; only the first is checked against `base`.
    async fn send_patch(
        &self,
        token: &str,
        base: Option<[u8; 16]>,
        digest: [u8; 16],
        upsert: Vec<Entry>,
        remove: Vec<ContentId>,
    ) -> Result<(), ClientError> {
        let mut upsert = upsert.into_iter().peekable();
        let mut remove = remove.into_iter().peekable();
        let mut base = Some(base);
        loop {
            let ups: Vec<Entry> = upsert.by_ref().take(self.batch).collect();
            let rems: Vec<ContentId> = remove.by_ref().take(self.batch - ups.len()).collect();
            let last = upsert.peek().is_none() && remove.peek().is_none();
            let req = PatchAnnounce {
                base: base.take().unwrap_or(None),
                digest: last.then_some(digest),
                upsert: ups,
                remove: rems,
                more: !last,
            };
            self.api
                .announce_patch(&self.me.identity, token, &req)
                .await?;
            if last {
                return Ok(());
            }
        }
    }
}

/// What changed from `old` to `new` (both sorted by id): entries to upsert,
/// ids to remove.
fn diff(old: &[Entry], new: &[Entry]) -> (Vec<Entry>, Vec<ContentId>) {
    let (mut upsert, mut remove) = (Vec::new(), Vec::new());
    crate::inventory::diff_sorted(
        old,
        new,
        |e| e.id,
        |o, n| match (o, n) {
            (_, Some(n)) => upsert.push(n.clone()),
            (Some(o), None) => remove.push(o.id),
            (None, None) => {}
        },
    );
    (upsert, remove)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u8, name: &str) -> Entry {
        Entry {
            id: ContentId([id; 32]),
            name: name.into(),
            size: 10,
            category: None,
            comment: String::new(),
            have: None,
            total: None,
        }
    }

    #[test]
    fn diff_finds_upserts_and_removals() {
        let old = vec![entry(1, "a"), entry(2, "b"), entry(4, "d")];
        let new = vec![entry(2, "b2"), entry(3, "c"), entry(4, "d")];
        let (up, rm) = diff(&old, &new);
        assert_eq!(up, vec![entry(2, "b2"), entry(3, "c")]);
        assert_eq!(rm, vec![ContentId([1; 32])]);
        assert_eq!(diff(&new, &new), (vec![], vec![]));
        assert_eq!(diff(&[], &new).0.len(), 3);
        assert_eq!(diff(&new, &[]).1.len(), 3);
    }
}
