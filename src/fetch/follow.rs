//! The follower: hashes the file with SHA-256 in chunk order as chunks
//! land, so the whole file is checked by the time the last chunk does. It
//! hashes the buffers the workers verified and wrote, handed over through
//! the [`Feed`] (on a thread of its own, so SHA-256 runs beside receiving,
//! BLAKE3 and writing), and reads back from the partial file only a chunk
//! it was not handed (one that came too far out of order, or from an
//! earlier run). A chunk that fails its check on disk is fetched again.
//!
//! Never talks to a peer; changes chunk states only through
//! [`super::state::ChunkMap::mark_bad`].

use std::collections::BTreeMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use sha2::Digest;
use tokio_util::sync::CancellationToken;

use super::FetchError;
use super::state::ChunkState;
use super::swarm::Shared;
use crate::store::ChunkBuf;

/// Most bytes of verified chunks kept for the follower ahead of the chunk
/// it hashes next (the next one itself is always kept). A chunk that comes
/// further ahead is read back from the partial file when its turn comes.
pub(super) const FEED_AHEAD_BYTES: usize = 4 << 20;
/// How long a worker's writing thread waits for room in the [`Feed`] while
/// the follower is busy hashing, before it lets the follower read the
/// chunk back from disk instead.
pub(super) const FEED_PATIENCE: Duration = Duration::from_secs(1);

/// Verified chunk buffers handed from the workers to the follower, in
/// order, and spare buffers handed back: the SHA-256 of the whole file is
/// computed from the bytes already in memory instead of a second read of
/// the partial file. Bounded by [`FEED_AHEAD_BYTES`], whatever the file
/// size: the buffers it holds are those ahead (at most that many bytes),
/// the next chunk's, the one being hashed, and spares that were one of
/// these before.
pub(super) struct Feed {
    /// Std mutex: held only to move a buffer in or out of the map, never
    /// across an `.await` (the writing threads wait on `room` with it).
    state: Mutex<FeedState>,
    ahead_bytes: usize,
    /// Signalled when the follower advances (there may be room ahead).
    room: Condvar,
    /// Signalled when the chunk the follower waits for is handed over.
    ready: tokio::sync::Notify,
}

#[derive(Default)]
struct FeedState {
    /// The chunk the follower hashes next.
    next: u32,
    /// Verified, written chunks the follower has not hashed yet.
    held: BTreeMap<u32, ChunkBuf>,
    /// Bytes in `held`, excluding chunk `next`.
    ahead: usize,
    /// Buffers the follower is done with.
    spare: Vec<ChunkBuf>,
    /// The follower is hashing a chunk it took (it will advance soon).
    hashing: bool,
}

impl FeedState {
    /// The follower will advance without waiting for a worker: it is
    /// hashing, or the chunk it hashes next is here (taken as soon as its
    /// task runs). Between two chunks it is not hashing for a moment; a
    /// writer that gave up then would make it read that chunk back.
    fn follower_busy(&self) -> bool {
        self.hashing || self.held.contains_key(&self.next)
    }
}

impl Feed {
    pub fn new(ahead_bytes: usize) -> Feed {
        Feed {
            state: Mutex::default(),
            ahead_bytes,
            room: Condvar::new(),
            ready: tokio::sync::Notify::new(),
        }
    }

    /// Offers chunk `index`'s bytes, verified and written (blocking: call
    /// it on a blocking thread). Kept for the follower when it is the next
    /// chunk to hash, or when it fits in the budget ahead of it; while the
    /// budget is full and the follower is hashing, waits up to `patience`
    /// for room while the follower has work (the follower is the slower
    /// side: the worker waits rather than make it read the chunk back). Returns the buffer the worker
    /// reads its next chunk into: a spare one (or a new one) when `data`
    /// was kept, else `data` itself.
    pub fn offer(&self, index: u32, data: ChunkBuf, patience: Duration) -> ChunkBuf {
        let deadline = Instant::now() + patience;
        let mut s = self.state.lock().expect("feed lock");
        let ahead = loop {
            if index < s.next || s.held.contains_key(&index) {
                return data;
            }
            let ahead = if index == s.next { 0 } else { data.len() };
            if s.ahead + ahead <= self.ahead_bytes {
                break ahead;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if !s.follower_busy() || left.is_zero() {
                return data;
            }
            s = self.room.wait_timeout(s, left).expect("feed lock").0;
        };
        let capacity = data.capacity();
        s.ahead += ahead;
        s.held.insert(index, data);
        if index == s.next {
            self.ready.notify_one();
        }
        s.spare
            .pop()
            .unwrap_or_else(|| ChunkBuf::with_capacity(capacity))
    }

    /// The buffer of chunk `index`, if a worker handed it over; the
    /// follower is then hashing until it advances.
    fn take(&self, index: u32) -> Option<ChunkBuf> {
        let mut s = self.state.lock().expect("feed lock");
        debug_assert_eq!(index, s.next);
        let held = s.held.remove(&index);
        s.hashing = held.is_some();
        held
    }

    /// Chunk `next - 1` is hashed (its buffer, if any, comes back for
    /// reuse): from now on chunk `next` is the one not counted ahead.
    fn advance(&self, next: u32, used: Option<ChunkBuf>) {
        let mut s = self.state.lock().expect("feed lock");
        s.next = next;
        // A late endgame copy of a chunk already hashed is not needed.
        s.held.retain(|&i, _| i >= next);
        s.ahead = s
            .held
            .range(next.saturating_add(1)..)
            .map(|(_, b)| b.len())
            .sum();
        s.hashing = false;
        if let Some(buf) = used {
            s.spare.push(buf);
        }
        self.room.notify_all();
    }

    #[cfg(test)]
    fn held(&self) -> (usize, usize) {
        let s = self.state.lock().expect("feed lock");
        (s.held.len(), s.ahead)
    }
}

/// How chunk `index` was hashed.
enum Hashed {
    /// From the buffers workers handed over (given back for reuse), it and
    /// every chunk after it that was already handed over too: the next
    /// chunk to hash is this one, and the feed has advanced to it.
    Memory { next: u32 },
    /// Read back from the partial file (and checked with BLAKE3 unless this
    /// process verified it in memory).
    Disk,
    /// Unreadable, or failed its BLAKE3 check on disk.
    Bad,
}

/// Hashes chunk `index` into `sha` on a blocking thread: from `held` if a
/// worker handed it over (and then, on the same thread, each next chunk
/// already handed over, with no wake-up between them), else from the
/// partial file into `buf`.
async fn hash_chunk(
    shared: &Arc<Shared>,
    index: u32,
    held: Option<ChunkBuf>,
    sha: sha2::Sha256,
    mut buf: ChunkBuf,
) -> (Hashed, sha2::Sha256, ChunkBuf) {
    let trusted = shared.verified_here.lock().expect("lock").get(index);
    let s = shared.clone();
    tokio::task::spawn_blocking(move || {
        let mut sha = sha;
        if let Some(data) = held {
            let next = hash_run(&s.feed, index, data, &mut sha);
            return (Hashed::Memory { next }, sha, buf);
        }
        let m = &s.manifest;
        buf.resize(m.chunk_len(index) as usize);
        if s.partial.read_at(m.chunk_offset(index), &mut buf).is_err()
            || (!trusted && !m.chunk_matches(index, &buf))
        {
            return (Hashed::Bad, sha, buf);
        }
        sha.update(&buf);
        (Hashed::Disk, sha, buf)
    })
    .await
    .expect("verifier does not panic")
}

/// Hashes chunk `index` from `data`, then each next chunk the feed holds,
/// advancing the feed past each one: returns the next chunk to hash.
fn hash_run(feed: &Feed, mut index: u32, mut data: ChunkBuf, sha: &mut sha2::Sha256) -> u32 {
    loop {
        sha.update(&data);
        index += 1;
        feed.advance(index, Some(data));
        match feed.take(index) {
            Some(next) => data = next,
            None => return index,
        }
    }
}

/// Hashes the file with SHA-256 in order as chunks land: from the
/// workers' buffers as soon as they are handed over, or, for a chunk not
/// handed over, from the partial file once it is done (re-checking with
/// BLAKE3 any chunk this process did not hash itself, i.e. one from an
/// earlier run). Returns the SHA-256 once the whole file is hashed, every
/// chunk is done, and it matches the manifest.
pub(super) async fn follow(
    shared: Arc<Shared>,
    cancel: CancellationToken,
) -> Result<[u8; 32], FetchError> {
    let mut changes = shared.changed.subscribe();
    let mut sha = sha2::Sha256::new();
    // Allocated only when a chunk must be read back from disk.
    let mut buf = ChunkBuf::new();
    let total = shared.manifest.chunk_count();
    let mut index = 0;
    while index < total {
        let ready = shared.feed.ready.notified();
        tokio::pin!(ready);
        ready.as_mut().enable();
        changes.mark_unchanged();
        let held = shared.feed.take(index);
        if held.is_none()
            && shared.map.lock().expect("map lock").state(index) != Some(ChunkState::Done)
        {
            // A closed channel (never: `shared` holds the sender) looks again.
            tokio::select! {
                _ = cancel.cancelled() => return Err(FetchError::Cancelled),
                _ = changes.changed() => {}
                _ = &mut ready => {}
            }
            continue;
        }
        let (hashed, sha_back, buf_back) = hash_chunk(&shared, index, held, sha, buf).await;
        (sha, buf) = (sha_back, buf_back);
        match hashed {
            Hashed::Memory { next } => index = next,
            Hashed::Disk => {
                index += 1;
                shared.feed.advance(index, None);
            }
            Hashed::Bad => {
                tracing::warn!(
                    chunk = index,
                    "chunk failed the check on disk; fetching it again"
                );
                shared.partial.mark_missing(index);
                shared.map.lock().expect("map lock").mark_bad(index);
                shared.bump();
            }
        }
    }
    all_done(&shared, &mut changes, &cancel).await?;
    let digest: [u8; 32] = sha.finalize().into();
    if digest != shared.manifest.sha256 {
        return Err(FetchError::Sha256Mismatch);
    }
    Ok(digest)
}

/// Waits until every chunk is done: the last chunks may be hashed before
/// their workers counted them, and the download's counts must be whole
/// when it ends.
async fn all_done(
    shared: &Shared,
    changes: &mut tokio::sync::watch::Receiver<u64>,
    cancel: &CancellationToken,
) -> Result<(), FetchError> {
    loop {
        changes.mark_unchanged();
        if shared.map.lock().expect("map lock").is_complete() {
            return Ok(());
        }
        if cancel
            .run_until_cancelled(changes.changed())
            .await
            .is_none()
        {
            return Err(FetchError::Cancelled);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(b: u8) -> ChunkBuf {
        ChunkBuf::from(&[b; 100][..])
    }

    /// Offers without waiting.
    fn put(feed: &Feed, index: u32, data: ChunkBuf) -> ChunkBuf {
        feed.offer(index, data, Duration::ZERO)
    }

    #[test]
    fn the_next_chunk_is_always_kept_and_a_spare_comes_back() {
        let feed = Feed::new(0);
        let back = put(&feed, 0, chunk(1));
        assert!(back.is_empty() && back.capacity() >= 100, "a new buffer");
        assert_eq!(feed.held(), (1, 0));
        // Ahead of the next chunk, nothing fits in a zero budget.
        assert_eq!(put(&feed, 1, chunk(2)), chunk(2));
        let got = feed.take(0).unwrap();
        assert_eq!(got, chunk(1));
        feed.advance(1, Some(got));
        // The spare comes back to the next worker whose chunk is kept.
        let back = put(&feed, 1, chunk(2));
        assert_eq!(back, chunk(1), "the follower's used buffer is reused");
    }

    #[test]
    fn chunks_ahead_are_kept_within_the_budget_only() {
        let feed = Feed::new(250);
        for i in 1..=2 {
            assert!(put(&feed, i, chunk(i as u8)).is_empty(), "chunk {i} kept");
        }
        // Chunks 1 and 2 fit (200 bytes), chunk 3 does not.
        assert_eq!(feed.held(), (2, 200));
        assert_eq!(put(&feed, 3, chunk(3)), chunk(3));
        // Chunk 0 (the next) is kept over the budget.
        assert!(put(&feed, 0, chunk(0)).is_empty());
        assert_eq!(feed.held(), (3, 200));
        // Hashing 0 makes 1 the next: it no longer counts ahead.
        let got = feed.take(0).unwrap();
        feed.advance(1, Some(got));
        assert_eq!(feed.held(), (2, 100));
    }

    #[test]
    fn a_late_copy_of_a_hashed_or_held_chunk_is_refused() {
        let feed = Feed::new(1000);
        assert!(put(&feed, 0, chunk(0)).is_empty());
        assert_eq!(put(&feed, 0, chunk(9)), chunk(9), "already held");
        let got = feed.take(0).unwrap();
        // The endgame's second copy lands between take and advance.
        assert!(put(&feed, 0, chunk(9)).is_empty());
        feed.advance(1, Some(got));
        assert_eq!(feed.held(), (0, 0), "the stale copy is dropped");
        assert_eq!(put(&feed, 0, chunk(9)), chunk(9), "already hashed");
    }

    #[test]
    fn a_full_feed_waits_while_the_next_chunk_is_due() {
        // Between two chunks the follower is not hashing, but the next one
        // is here: it will advance, so a writer waits rather than make it
        // read the chunk back from disk.
        let feed = Arc::new(Feed::new(100));
        assert!(put(&feed, 1, chunk(1)).is_empty());
        assert!(put(&feed, 0, chunk(0)).is_empty());
        let f = feed.clone();
        let waiting = std::thread::spawn(move || f.offer(2, chunk(2), Duration::from_secs(30)));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiting.is_finished(), "it waits while chunk 0 is due");
        let got = feed.take(0).unwrap();
        feed.advance(1, Some(got));
        assert_eq!(waiting.join().unwrap(), chunk(0), "kept; the spare back");
        assert_eq!(feed.held(), (2, 100));
    }

    #[test]
    fn a_full_feed_waits_for_the_hashing_follower_else_refuses() {
        let feed = Arc::new(Feed::new(100));
        assert!(put(&feed, 1, chunk(1)).is_empty());
        // Full, and the follower is idle: refused at once, whatever the patience.
        let long = Duration::from_secs(30);
        let t0 = Instant::now();
        assert_eq!(feed.offer(2, chunk(2), long), chunk(2));
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no wait for an idle follower"
        );
        // The follower hashes chunk 0: chunk 2 waits until it advances.
        assert!(put(&feed, 0, chunk(0)).is_empty());
        let got = feed.take(0).unwrap();
        let f = feed.clone();
        let waiting = std::thread::spawn(move || f.offer(2, chunk(2), long));
        std::thread::sleep(Duration::from_millis(50));
        assert!(!waiting.is_finished(), "it waits for room");
        feed.advance(1, Some(got));
        let back = waiting.join().unwrap();
        assert_eq!(back, chunk(0), "kept, with the follower's spare back");
        assert_eq!(feed.held(), (2, 100));
        // A follower hashing for longer than the patience: refused after it.
        let got = feed.take(1).unwrap();
        let t0 = Instant::now();
        assert_eq!(feed.offer(3, chunk(3), Duration::from_millis(30)), chunk(3));
        assert!(t0.elapsed() >= Duration::from_millis(30));
        feed.advance(2, Some(got));
    }
}
