//! A received chunk's way to disk: each worker's checking thread verifies
//! it with BLAKE3, then the download's one writing thread writes it into
//! the `.part` and hands its buffer to the follower, and the verdict and a
//! buffer to read into go back to the worker, in the order it handed its
//! chunks over.
//!
//! Threads: one long-lived blocking task per worker (checking) and one per
//! download (writing), rather than a blocking task per chunk: no wake-up
//! chain per chunk, a chunk is checked while the one before it is being
//! written (a direct write waits for the disk), and writers to one file
//! would only wait for each other on its lock (ext4 holds it through a
//! direct write into blocks not yet written). The writing thread runs
//! while some worker's checker holds it, and ends with the last one.
//!
//! Owns only that hand-over; never decides which chunk to ask for, and
//! marks nothing done (the worker settles each verdict).

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc::{self, UnboundedSender, WeakUnboundedSender};

use super::follow::FEED_PATIENCE;
use super::state::ChunkState;
use super::swarm::Shared;
use crate::store::{ChunkBuf, StoreError};

/// A chunk handed to the checker: its index, its length, its bytes.
pub(super) struct Landing {
    pub index: u32,
    pub len: usize,
    pub data: ChunkBuf,
}

/// A chunk the checker is done with: its verdict, and the buffer to read
/// another chunk into.
pub(super) struct Landed {
    pub index: u32,
    pub len: usize,
    pub verdict: Result<bool, StoreError>,
    pub data: ChunkBuf,
}

/// A checked chunk on its way to the writing thread, with where its
/// verdict goes.
struct WriteJob {
    landing: Landing,
    good: bool,
    done: UnboundedSender<Landed>,
}

/// Where a download's writing thread is reached: the thread runs while a
/// checker holds a sender, so this keeps only a weak one (no cycle
/// through the thread's own `Arc<Shared>`).
#[derive(Default)]
pub(super) struct WriterSlot(Mutex<Option<WeakUnboundedSender<WriteJob>>>);

impl WriterSlot {
    /// The download's writing thread, started if none runs.
    fn get(shared: &Arc<Shared>) -> UnboundedSender<WriteJob> {
        let mut slot = shared.writer.0.lock().expect("writer lock");
        if let Some(running) = slot.as_ref().and_then(WeakUnboundedSender::upgrade) {
            return running;
        }
        let (to, mut jobs) = mpsc::unbounded_channel::<WriteJob>();
        let shared = shared.clone();
        tokio::task::spawn_blocking(move || {
            while let Some(WriteJob {
                landing: Landing { index, len, data },
                good,
                done,
            }) = jobs.blocking_recv()
            {
                if done.is_closed() {
                    continue; // its worker ended: nobody settles it
                }
                let (verdict, data) = if good {
                    write_checked(&shared, index, data)
                } else {
                    (Ok(false), data)
                };
                let _ = done.send(Landed {
                    index,
                    len,
                    verdict,
                    data,
                });
            }
        });
        *slot = Some(to.downgrade());
        to
    }
}

/// One worker's checking thread and its way back: chunks handed over are
/// checked in order, written by the download's writing thread, and come
/// back in the same order. Its channels hold at most the worker's
/// buffers; its thread ends when the worker drops it.
pub(super) struct Checker {
    to: UnboundedSender<Landing>,
    from: mpsc::UnboundedReceiver<Landed>,
    /// Chunks handed over and not taken back yet.
    pub running: usize,
}

impl Checker {
    pub fn start(shared: &Arc<Shared>) -> Checker {
        let (to, mut jobs) = mpsc::unbounded_channel::<Landing>();
        let (done, from) = mpsc::unbounded_channel();
        let writer = WriterSlot::get(shared);
        let manifest = shared.manifest.clone();
        tokio::task::spawn_blocking(move || {
            while let Some(landing) = jobs.blocking_recv() {
                if done.is_closed() {
                    break; // the worker ended
                }
                let good = manifest.chunk_matches(landing.index, &landing.data);
                let job = WriteJob {
                    landing,
                    good,
                    done: done.clone(),
                };
                if writer.send(job).is_err() {
                    break;
                }
            }
        });
        Checker {
            to,
            from,
            running: 0,
        }
    }

    pub fn hand(&mut self, landing: Landing) {
        self.to.send(landing).expect("chunk checker does not panic");
        self.running += 1;
    }

    /// The oldest chunk handed over, if it is checked already.
    pub fn try_landed(&mut self) -> Option<Landed> {
        let done = self.from.try_recv().ok()?;
        self.running -= 1;
        Some(done)
    }

    /// The oldest chunk handed over, once it is checked (there must be one).
    pub async fn landed(&mut self) -> Landed {
        let done = self
            .from
            .recv()
            .await
            .expect("chunk checker does not panic");
        self.running -= 1;
        done
    }
}

/// Writes chunk `index`, already checked against the manifest (unless the
/// other endgame copy won), then hands the bytes to the follower's
/// [`Feed`](super::follow::Feed) for the whole-file SHA-256: `Ok(true)`
/// unless the write failed. Gives back the buffer to read the next chunk
/// into.
fn write_checked(s: &Shared, index: u32, data: ChunkBuf) -> (Result<bool, StoreError>, ChunkBuf) {
    if s.map.lock().expect("map lock").state(index) == Some(ChunkState::Done) {
        return (Ok(true), data); // the other endgame copy won
    }
    if let Err(e) = s.partial.write_chunk(index, &data) {
        return (Err(e), data);
    }
    (Ok(true), s.feed.offer(index, data, FEED_PATIENCE))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::manifest_of;
    use crate::store::{Home, Store};
    use std::time::Duration;

    const MIB: usize = 1 << 20;

    /// Two workers' checkers share the download's writing thread: each
    /// gets its verdicts back in the order it handed its chunks over, a bad
    /// chunk's too (it is not written, and does not overtake a good chunk
    /// still being written), and the good ones are on disk.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn verdicts_come_back_in_the_order_chunks_were_handed_over() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..8 * MIB).map(|i| (i * 13 % 251) as u8).collect();
        let manifest = Arc::new(manifest_of(&data, MIB as u32));
        let store = Store::open(Home::new(dir.path()), Vec::new()).unwrap();
        let partial = store.begin_partial(manifest, "f.bin").unwrap();
        let shared = Arc::new(Shared::new(partial.id, partial.clone(), Arc::default()));
        let bad = [1u32, 2, 6];
        let chunk = |i: u32| {
            let mut b = ChunkBuf::from(&data[i as usize * MIB..(i as usize + 1) * MIB]);
            if bad.contains(&i) {
                b[7] ^= 1;
            }
            Landing {
                index: i,
                len: MIB,
                data: b,
            }
        };
        let (mut a, mut b) = (Checker::start(&shared), Checker::start(&shared));
        {
            // The writing thread waits for the chunk map (the first thing
            // it takes for chunk 0) while chunks 1 and 2, bad, are checked:
            // no verdict may come back before chunk 0's.
            let _map = shared.map.lock().unwrap();
            for i in 0..3 {
                a.hand(chunk(i));
            }
            let until = std::time::Instant::now() + Duration::from_millis(300);
            while std::time::Instant::now() < until {
                assert!(
                    a.from.try_recv().is_err(),
                    "a verdict came back while chunk 0 was still being written"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        a.hand(chunk(3));
        for i in 4..8 {
            b.hand(chunk(i));
        }
        for (checker, first) in [(&mut a, 0), (&mut b, 4)] {
            for i in first..first + 4 {
                let got = tokio::time::timeout(Duration::from_secs(20), checker.landed())
                    .await
                    .expect("a verdict within 20 s");
                assert_eq!(got.index, i, "verdicts out of order");
                assert_eq!(got.verdict.unwrap(), !bad.contains(&i), "chunk {i}");
                assert_eq!(partial.has(i), !bad.contains(&i), "chunk {i} on disk");
            }
        }
    }
}
