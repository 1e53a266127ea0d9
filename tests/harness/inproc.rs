//! Nodes inside the test process, over the library's `node` API: the
//! same flags as a `lanshare up` process, parsed by the same `cli` types,
//! run on a runtime of their own whose threads log to the node's own file.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Duration;

use clap::Parser;
use tokio::sync::oneshot;

use super::node::log_path;

/// How long a node may take to bind its sockets.
const START: Duration = Duration::from_secs(60);

thread_local! {
    /// The node's log subscriber on each of its runtime's threads.
    static LOG: RefCell<Option<tracing::dispatcher::DefaultGuard>> = const { RefCell::new(None) };
}

/// A node running in this process until stopped, aborted or dropped.
pub struct InProcess {
    pub name: String,
    pub home: PathBuf,
    pub id: String,
    pub listen: SocketAddr,
    pub log_path: PathBuf,
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: Option<oneshot::Sender<()>>,
    /// The node's run result, once it ends (a Mutex: a Node is Sync).
    ended: std::sync::Mutex<mpsc::Receiver<anyhow::Result<()>>>,
}

/// A runtime whose every thread logs (lanshare=debug) to `log`.
fn runtime(log: &Path) -> tokio::runtime::Runtime {
    let file = std::fs::File::create(log).expect("create the node's log");
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("lanshare=debug"))
        .with_writer(Arc::new(file))
        .with_ansi(false)
        .finish();
    let dispatch = tracing::Dispatch::new(subscriber);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .on_thread_start(move || {
            let guard = tracing::dispatcher::set_default(&dispatch);
            LOG.with(|g| *g.borrow_mut() = Some(guard));
        })
        .on_thread_stop(|| LOG.with(|g| drop(g.borrow_mut().take())))
        .build()
        .expect("a runtime for the node")
}

/// The node configuration `lanshare up --home HOME --name NAME ARGS...`
/// would run with.
fn config(home: &Path, name: &str, args: &[String]) -> lanshare::config::NodeConfig {
    let argv = ["lanshare", "up", "--home"]
        .into_iter()
        .map(String::from)
        .chain([home.display().to_string(), "--name".into(), name.into()])
        .chain(args.iter().cloned());
    let cli = lanshare::cli::Cli::try_parse_from(argv).expect("valid `up` flags");
    let lanshare::cli::Command::Up(up) = cli.command else {
        unreachable!("parsed as `up`")
    };
    for share in &up.shares {
        lanshare::service::check_share_path(share).expect("a shareable path");
    }
    up.into_config().expect("an absolute home")
}

impl InProcess {
    /// Starts node NAME with home HOME and the `up` flags `args`: binds it
    /// (`node::bind`), then runs it (`Bound::run`) on the node's runtime;
    /// returns once every socket is bound, with the id and the listen
    /// address `bind` handed back.
    pub fn start(home: &Path, name: &str, args: &[String]) -> InProcess {
        std::fs::create_dir_all(home).unwrap();
        let cfg = config(home, name, args);
        let log_path = log_path(home, name, "stderr");
        let rt = runtime(&log_path);
        let (shutdown, stop) = oneshot::channel::<()>();
        let (started_tx, started) = mpsc::channel();
        let (ended_tx, ended) = mpsc::channel();
        rt.spawn(async move {
            let bound = match lanshare::node::bind(cfg).await {
                Ok(b) => b,
                Err(e) => {
                    let _ = ended_tx.send(Err(e));
                    return;
                }
            };
            let s = bound.started();
            let _ = started_tx.send((s.node.to_hex(), s.listen));
            let shutdown = async {
                let _ = stop.await;
            };
            let _ = ended_tx.send(bound.run(shutdown).await);
        });
        let (id, listen) = match started.recv_timeout(START) {
            Ok(s) => s,
            Err(_) => match ended.try_recv() {
                Ok(Err(e)) => panic!("node {name} did not start: {e:#}"),
                _ => panic!("node {name} did not start within {START:?}"),
            },
        };
        InProcess {
            name: name.into(),
            home: home.into(),
            id,
            listen,
            log_path,
            runtime: Some(rt),
            shutdown: Some(shutdown),
            ended: std::sync::Mutex::new(ended),
        }
    }

    /// True until the node's run ends.
    pub fn running(&self) -> bool {
        matches!(
            self.ended.lock().unwrap().try_recv(),
            Err(mpsc::TryRecvError::Empty)
        )
    }

    /// A clean stop: the node says goodbye, saves its state and ends.
    pub fn stop(mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        let _ = self
            .ended
            .lock()
            .unwrap()
            .recv_timeout(Duration::from_secs(10));
        self.abort();
    }

    /// Drops every task of the node where it stands (no goodbye).
    pub fn abort(mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}
