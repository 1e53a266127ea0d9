//! The small files of a folder's batch ([`super::batch`]) and which
//! holder's lane may take which: each file waits in the queue of every
//! holder that lists it and has a lane, is taken by one lane at a time,
//! and, given back by a lane that could not fetch it, waits for its other
//! holders' lanes, or leaves the pool to be handed back when none is left.
//!
//! Pure bookkeeping under the batch's lock: no I/O, no time.

use std::collections::{HashMap, HashSet, VecDeque};

use super::FileTask;
use crate::id::{ContentId, NodeId};

/// Where a file of the batch stands.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FileState {
    Waiting,
    Taken,
    Gone,
}

struct PoolFile {
    task: Option<FileTask>,
    holders: Vec<NodeId>,
    /// Holders that refused it, erred or lied (never asked again).
    excluded: Vec<NodeId>,
    state: FileState,
}

/// The batch's files and which lane may take which.
pub(super) struct Pool {
    files: Vec<PoolFile>,
    /// Per holder with a lane, the files it lists, in order.
    queues: HashMap<NodeId, VecDeque<usize>>,
    /// Holders whose lane still takes files.
    alive: HashSet<NodeId>,
}

/// A lane's next step from the pool.
pub(super) enum Next {
    File {
        idx: usize,
        id: ContentId,
        size: u64,
    },
    /// Its next file does not fit in what is in flight now.
    Full,
    /// Nothing is left for it, and nothing is in flight: it ends.
    Retired,
}

impl Pool {
    /// The pool of `listed` files (each with its holders) for lanes of
    /// the `alive` holders; the files none of them lists are returned.
    pub(super) fn new(
        listed: Vec<(FileTask, Vec<NodeId>)>,
        alive: HashSet<NodeId>,
    ) -> (Pool, Vec<FileTask>) {
        let mut pool = Pool {
            files: Vec::new(),
            queues: alive.iter().map(|h| (*h, VecDeque::new())).collect(),
            alive,
        };
        let mut orphans = Vec::new();
        for (task, holders) in listed {
            let holders: Vec<NodeId> = (holders.into_iter())
                .filter(|h| pool.alive.contains(h))
                .collect();
            if holders.is_empty() {
                orphans.push(task);
                continue;
            }
            let idx = pool.files.len();
            for h in &holders {
                pool.queues
                    .get_mut(h)
                    .expect("a lane's queue")
                    .push_back(idx);
            }
            pool.files.push(PoolFile {
                task: Some(task),
                holders,
                excluded: Vec::new(),
                state: FileState::Waiting,
            });
        }
        (pool, orphans)
    }

    /// The next waiting file `me` lists, if it fits in `room` bytes (any
    /// size when `idle`); when none is waiting and it is `idle`, retires it.
    pub(super) fn next(&mut self, me: NodeId, room: u64, idle: bool) -> Next {
        let queue = self.queues.get_mut(&me).expect("a lane's queue");
        while let Some(&idx) = queue.front() {
            let f = &mut self.files[idx];
            // A stale entry: taken meanwhile, or given back by this very
            // holder (which is never asked for it again).
            if f.state != FileState::Waiting || f.excluded.contains(&me) {
                queue.pop_front();
                continue;
            }
            let task = f.task.as_ref().expect("a waiting file's task");
            if task.size > room && !idle {
                return Next::Full;
            }
            queue.pop_front();
            f.state = FileState::Taken;
            return Next::File {
                idx,
                id: task.id,
                size: task.size,
            };
        }
        if idle {
            self.alive.remove(&me);
            Next::Retired
        } else {
            Next::Full
        }
    }

    /// Takes file `idx` out of the pool (done, or handed back).
    pub(super) fn take(&mut self, idx: usize) -> FileTask {
        let f = &mut self.files[idx];
        f.state = FileState::Gone;
        f.task.take().expect("a file's task, taken once")
    }

    /// Gives file `idx` back from `me` (`exclude`: never to `me` again):
    /// it waits for another lane of its holders, or, none being left, is
    /// returned to be handed back.
    pub(super) fn give_back(&mut self, idx: usize, me: NodeId, exclude: bool) -> Option<FileTask> {
        let f = &mut self.files[idx];
        if exclude {
            f.excluded.push(me);
        }
        f.state = FileState::Waiting;
        let mut queued = false;
        for h in &f.holders {
            if self.alive.contains(h) && !f.excluded.contains(h) {
                self.queues
                    .get_mut(h)
                    .expect("a lane's queue")
                    .push_back(idx);
                queued = true;
            }
        }
        (!queued).then(|| self.take(idx))
    }

    /// `me`'s lane ended early: the files only it could fetch are
    /// returned to be handed back.
    pub(super) fn drop_lane(&mut self, me: NodeId) -> Vec<FileTask> {
        self.alive.remove(&me);
        let queue = std::mem::take(self.queues.get_mut(&me).expect("a lane's queue"));
        let mut orphans = Vec::new();
        for idx in queue {
            let f = &self.files[idx];
            let served =
                (f.holders.iter()).any(|h| self.alive.contains(h) && !f.excluded.contains(h));
            if f.state == FileState::Waiting && !served {
                orphans.push(self.take(idx));
            }
        }
        orphans
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(b: u8, size: u64) -> FileTask {
        FileTask {
            id: ContentId([b; 32]),
            size,
            places: Vec::new(),
        }
    }

    fn taken(n: Next) -> usize {
        match n {
            Next::File { idx, .. } => idx,
            Next::Full => panic!("full"),
            Next::Retired => panic!("retired"),
        }
    }

    #[test]
    fn a_file_refused_by_one_holder_goes_to_another_and_only_once() {
        let (a, b, c) = (NodeId([1; 16]), NodeId([2; 16]), NodeId([3; 16]));
        let listed = vec![
            (task(1, 10), vec![a, b]),
            (task(2, 10), vec![a]),
            // Listed by a holder without a lane: handed back at once.
            (task(3, 10), vec![c]),
        ];
        let (mut pool, orphans) = Pool::new(listed, [a, b].into());
        assert_eq!(
            orphans.iter().map(|t| t.id).collect::<Vec<_>>(),
            [ContentId([3; 32])]
        );
        // a takes both of its files; b then has nothing waiting.
        let first = taken(pool.next(a, 100, true));
        let second = taken(pool.next(a, 100, false));
        assert!(matches!(pool.next(b, 100, false), Next::Full));
        // a refuses the first: b gets it; never a again.
        assert!(pool.give_back(first, a, true).is_none());
        assert_eq!(taken(pool.next(b, 100, true)), first);
        // b refuses it too: no holder is left, it is handed back.
        let back = pool.give_back(first, b, true).expect("handed back");
        assert_eq!(back.id, ContentId([1; 32]));
        assert!(matches!(pool.next(b, 100, true), Next::Retired));
        // The second, in flight on a, comes back when a drops out: only a
        // listed it, so it is handed back.
        let back = pool.give_back(second, a, true).map(|t| t.id);
        assert_eq!(back, Some(ContentId([2; 32])));
        assert!(pool.drop_lane(a).is_empty());
    }

    #[test]
    fn a_holder_that_refused_a_file_is_never_given_it_again() {
        let (a, b, c) = (NodeId([1; 16]), NodeId([2; 16]), NodeId([3; 16]));
        let (mut pool, _) = Pool::new(vec![(task(1, 10), vec![a, b, c])], [a, b, c].into());
        // a takes it; its entries in b's and c's queues stay behind.
        let f = taken(pool.next(a, 100, true));
        assert!(pool.give_back(f, a, true).is_none());
        // b takes it (its stale entry first) and refuses it too.
        assert_eq!(taken(pool.next(b, 100, true)), f);
        assert!(pool.give_back(f, b, true).is_none());
        // Waiting again, with a stale entry still in b's queue: b must not
        // take it, only c.
        assert!(matches!(pool.next(b, 100, true), Next::Retired));
        assert!(matches!(pool.next(a, 100, true), Next::Retired));
        assert_eq!(taken(pool.next(c, 100, true)), f);
    }

    #[test]
    fn a_lane_takes_no_more_bytes_than_its_room_unless_idle() {
        let a = NodeId([1; 16]);
        let (mut pool, _) = Pool::new(
            vec![(task(1, 50), vec![a]), (task(2, 50), vec![a])],
            [a].into(),
        );
        taken(pool.next(a, 60, true));
        assert!(matches!(pool.next(a, 10, false), Next::Full));
        taken(pool.next(a, 10, true));
        assert!(matches!(pool.next(a, 10, true), Next::Retired));
    }
}
