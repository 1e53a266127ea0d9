//! Named tasks. Every long-running task of a node is spawned through
//! [`Tasks`]: it runs inside a tracing span carrying its name, its error
//! (if it returns one) is logged once with that name, and while it runs its
//! name is on a list, so a shutdown that times out says which tasks did not
//! stop. A [`Tasks`] is a scope: cloning it is cheap, [`Tasks::child`] makes
//! a sub-scope (a longer name, a child cancellation token) sharing the same
//! tracker and list. This module owns spawning and stopping; it never knows
//! what the tasks do.
//!
//! Where the spawner collects results as tasks finish (a JoinSet), it uses
//! a [`TaskSet`] ([`Tasks::set`]): its tasks are named, spanned, listed and
//! waited for by the scope's shutdown the same way, and aborted when the
//! set is dropped; their results go to the caller, who reports them, and a
//! panic is logged with the task's name.
//!
//! Short CPU or blocking jobs awaited by a task (hashing a chunk, SHA-256,
//! a database call) run with `tokio::task::spawn_blocking` directly: they
//! belong to the task that awaits them and are not named here.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::collections::HashMap;

use tokio::task::{AbortHandle, JoinError, JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

/// A scope of named tasks sharing one cancellation.
#[derive(Clone)]
pub struct Tasks {
    /// The scope's name, prefixed to every task's name (`node/reach`).
    scope: Arc<str>,
    cancel: CancellationToken,
    tracker: TaskTracker,
    running: Arc<Running>,
}

/// The names of the tasks still running, by spawn number. A std mutex:
/// held only to insert or remove one entry, never across an await.
#[derive(Default)]
struct Running {
    next: AtomicU64,
    names: Mutex<BTreeMap<u64, Arc<str>>>,
}

/// Removes a task's name from the list when the task ends, however it ends
/// (returns, panics or is dropped).
struct Registered {
    running: Arc<Running>,
    key: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.running
            .names
            .lock()
            .expect("task list")
            .remove(&self.key);
    }
}

/// What a task returns: nothing, or a result whose error is logged.
pub trait Outcome: Send + 'static {
    /// The error to log, if the task failed.
    fn failure(&self) -> Option<String>;
}

impl Outcome for () {
    fn failure(&self) -> Option<String> {
        None
    }
}

impl<T: Send + 'static, E: std::fmt::Display + Send + 'static> Outcome for Result<T, E> {
    fn failure(&self) -> Option<String> {
        self.as_ref().err().map(|e| format!("{e:#}"))
    }
}

impl<T: Outcome> Outcome for Option<T> {
    fn failure(&self) -> Option<String> {
        self.as_ref().and_then(Outcome::failure)
    }
}

/// Tasks still running when a shutdown gave up waiting, by name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stragglers(pub Vec<String>);

impl std::fmt::Display for Stragglers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

impl Tasks {
    /// A new root scope named `scope`, with its own cancellation.
    pub fn new(scope: &str) -> Tasks {
        Tasks {
            scope: scope.into(),
            cancel: CancellationToken::new(),
            tracker: TaskTracker::new(),
            running: Default::default(),
        }
    }

    /// A sub-scope: its tasks are named `scope/name/...`, are cancelled with
    /// this scope (or alone, through [`Tasks::cancel`] on the child), and
    /// are waited for by this scope's shutdown.
    pub fn child(&self, name: &str) -> Tasks {
        Tasks {
            scope: self.full_name(name).into(),
            cancel: self.cancel.child_token(),
            tracker: self.tracker.clone(),
            running: self.running.clone(),
        }
    }

    fn full_name(&self, name: &str) -> String {
        format!("{}/{name}", self.scope)
    }

    /// The scope's cancellation, for code that takes a token.
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Cancels every task of this scope and its sub-scopes.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Puts `name` (in this scope) on the running list until the returned
    /// guard is dropped.
    fn register(&self, name: &str) -> (Arc<str>, Registered) {
        let name: Arc<str> = self.full_name(name).into();
        let key = self.running.next.fetch_add(1, Ordering::Relaxed);
        self.running
            .names
            .lock()
            .expect("task list")
            .insert(key, name.clone());
        let registered = Registered {
            running: self.running.clone(),
            key,
        };
        (name, registered)
    }

    /// Spawns `fut` as the task `name`: in a span of that name, on the
    /// list of running tasks until it ends, its error logged once.
    pub fn spawn<F>(&self, name: &str, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Outcome,
    {
        let (name, registered) = self.register(name);
        let span = tracing::info_span!("task", name = %name);
        self.tracker.spawn(
            async move {
                let _registered = registered;
                let out = fut.await;
                if let Some(e) = out.failure() {
                    tracing::warn!(task = %name, error = %e, "task failed");
                }
                out
            }
            .instrument(span),
        )
    }

    /// Spawns `fut` as the task `name`, stopped when this scope is cancelled.
    pub fn spawn_until_cancelled<F>(&self, name: &str, fut: F) -> JoinHandle<Option<F::Output>>
    where
        F: Future + Send + 'static,
        F::Output: Outcome,
    {
        let cancel = self.cancel.clone();
        self.spawn(name, async move { cancel.run_until_cancelled(fut).await })
    }

    /// Runs `fut` until it ends (`Some`) or this scope is cancelled (`None`).
    pub async fn until_cancelled<F: Future>(&self, fut: F) -> Option<F::Output> {
        self.cancel.run_until_cancelled(fut).await
    }

    /// A set of tasks named `scope/name/...` whose results are collected
    /// as they finish ([`TaskSet::join_next`]).
    pub fn set<T: Send + 'static>(&self, name: &str) -> TaskSet<T> {
        TaskSet {
            scope: self.child(name),
            set: JoinSet::new(),
            names: HashMap::new(),
        }
    }

    /// The names of the tasks still running, sorted.
    pub fn running(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .running
            .names
            .lock()
            .expect("task list")
            .values()
            .map(|n| n.to_string())
            .collect();
        names.sort();
        names
    }

    /// Cancels every task and waits up to `grace` for them to end. Tasks
    /// still running then are named in a warning and returned.
    pub async fn shutdown(&self, grace: Duration) -> Result<(), Stragglers> {
        self.cancel.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
        {
            return Ok(());
        }
        let left = Stragglers(self.running());
        tracing::warn!(
            "some tasks did not stop within {} s: {left}",
            grace.as_secs_f64()
        );
        Err(left)
    }
}

/// Named tasks whose results the spawner collects as they finish (a
/// `JoinSet` of named tasks). Each task runs in a span of its name, is on
/// its scope's running list until it ends and is waited for by the scope's
/// shutdown. Dropping the set aborts its tasks. Results (errors included)
/// go to the caller, who reports them; a panic is logged here, with the
/// task's name.
pub struct TaskSet<T> {
    scope: Tasks,
    set: JoinSet<T>,
    names: HashMap<tokio::task::Id, Arc<str>>,
}

impl<T: Send + 'static> TaskSet<T> {
    /// Spawns `fut` as the task `name` of this set.
    pub fn spawn<F>(&mut self, name: &str, fut: F) -> AbortHandle
    where
        F: Future<Output = T> + Send + 'static,
    {
        let (name, registered) = self.scope.register(name);
        let span = tracing::info_span!("task", name = %name);
        let fut = async move {
            let _registered = registered;
            fut.await
        };
        let handle = self
            .set
            .spawn(self.scope.tracker.track_future(fut.instrument(span)));
        self.names.insert(handle.id(), name);
        handle
    }

    /// The next result of a task that ended, `None` when none is left.
    pub async fn join_next(&mut self) -> Option<Result<T, JoinError>> {
        match self.set.join_next_with_id().await? {
            Ok((id, out)) => {
                self.names.remove(&id);
                Some(Ok(out))
            }
            Err(e) => {
                let name = self.names.remove(&e.id());
                if e.is_panic() {
                    let name = name.as_deref().unwrap_or("?");
                    tracing::warn!(task = %name, "task panicked");
                }
                Some(Err(e))
            }
        }
    }

    /// Tasks spawned and not yet joined.
    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    /// Aborts every task of the set (their results are not collected).
    pub fn abort_all(&mut self) {
        self.set.abort_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shutdown_names_the_task_that_ignores_cancellation() {
        let tasks = Tasks::new("node");
        tasks.spawn_until_cancelled("polite", std::future::pending::<()>());
        let sub = tasks.child("reach");
        let token = sub.token();
        sub.spawn("listens", async move { token.cancelled().await });
        sub.spawn("stubborn", std::future::pending::<()>());
        tokio::task::yield_now().await;
        assert_eq!(
            tasks.running(),
            ["node/polite", "node/reach/listens", "node/reach/stubborn"]
        );
        let left = tasks.shutdown(Duration::from_millis(100)).await;
        assert_eq!(left, Err(Stragglers(vec!["node/reach/stubborn".into()])));
    }

    #[tokio::test]
    async fn a_clean_shutdown_leaves_nothing() {
        let tasks = Tasks::new("node");
        tasks.spawn_until_cancelled("loop", std::future::pending::<()>());
        let done = tasks.spawn("done", async { Ok::<u8, std::io::Error>(7) });
        assert_eq!(done.await.unwrap().unwrap(), 7);
        assert_eq!(tasks.shutdown(Duration::from_secs(1)).await, Ok(()));
        assert!(tasks.running().is_empty());
    }

    #[tokio::test]
    async fn a_cancelled_child_leaves_its_parent_running() {
        let tasks = Tasks::new("node");
        let child = tasks.child("fetch");
        let h = child.spawn_until_cancelled("job", std::future::pending::<()>());
        child.cancel();
        assert_eq!(h.await.unwrap(), None);
        assert!(!tasks.is_cancelled());
        assert_eq!(tasks.until_cancelled(async { 3 }).await, Some(3));
    }

    #[tokio::test]
    async fn a_task_set_lists_its_tasks_and_returns_their_results() {
        let tasks = Tasks::new("node");
        let mut set = tasks.child("reach").set::<u32>("pull");
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        set.spawn("alice", async move {
            let _ = wait.await;
            1
        });
        set.spawn("bob", std::future::pending());
        tokio::task::yield_now().await;
        assert_eq!(set.len(), 2);
        assert_eq!(
            tasks.running(),
            ["node/reach/pull/alice", "node/reach/pull/bob"]
        );
        go.send(()).unwrap();
        assert_eq!(set.join_next().await.unwrap().unwrap(), 1);
        assert_eq!(tasks.running(), ["node/reach/pull/bob"]);
        // A stuck set member is named by the shutdown, like any task.
        let left = tasks.shutdown(Duration::from_millis(50)).await;
        assert_eq!(left, Err(Stragglers(vec!["node/reach/pull/bob".into()])));
        set.abort_all();
        assert!(set.join_next().await.unwrap().unwrap_err().is_cancelled());
        assert!(set.join_next().await.is_none());
        assert!(tasks.running().is_empty());
    }

    #[tokio::test]
    async fn a_dropped_task_set_aborts_its_tasks() {
        let tasks = Tasks::new("fetch");
        let mut set = tasks.set::<()>("worker");
        set.spawn("w", std::future::pending());
        drop(set);
        assert_eq!(tasks.shutdown(Duration::from_secs(1)).await, Ok(()));
        assert!(tasks.running().is_empty());
    }
}
