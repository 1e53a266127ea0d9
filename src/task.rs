//! Named tasks. Every long-running task of a node is spawned through
//! [`Tasks`]: it runs inside a tracing span carrying its name, its error
//! (if it returns one) is logged once with that name, and while it runs its
//! name is on a list, so a shutdown that times out says which tasks did not
//! stop. A [`Tasks`] is a scope: cloning it is cheap, [`Tasks::child`] makes
//! a sub-scope (a longer name, a child cancellation token) sharing the same
//! tracker and list. This module owns spawning and stopping; it never knows
//! what the tasks do.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
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

    /// Spawns `fut` as the task `name`: in a span of that name, on the
    /// list of running tasks until it ends, its error logged once.
    pub fn spawn<F>(&self, name: &str, fut: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Outcome,
    {
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
}
