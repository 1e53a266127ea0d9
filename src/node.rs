//! Starts and stops a node. [`bind`] binds every socket (control, TCP,
//! discovery, mDNS), loads the identity and opens the store, starting
//! nothing; [`Bound::run`] spawns every task as a named [`Tasks`] task and,
//! at shutdown, stops them in order: the announcer says goodbye, the server
//! and control endpoint close, partial downloads save their state, and
//! tasks that do not stop in time are named. Nothing here answers a
//! request ([`crate::service`] does) or relies on process-wide state, so
//! several nodes can run in one process.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::config::{DEFAULT_TCP_PORT, NodeConfig};
use crate::control;
use crate::dict::Dict;
use crate::discovery::{self, Discovery};
use crate::id::NodeId;
use crate::netif::Link;
use crate::peer::server::Server;
use crate::service::{Identity, Service};
use crate::stats::Stats;
use crate::store::{Home, Store};
use crate::task::Tasks;

mod scanner;
use scanner::Scanner;

/// What a bound node is: its id, its addresses and its control socket.
/// `up` prints it; tests read the bound address from it.
#[derive(Clone, Debug)]
pub struct Started {
    pub node: NodeId,
    /// The key pair `node` is derived from.
    pub identity: Arc<crate::identity::Identity>,
    /// The TCP address of the peer server (port 0 resolved).
    pub listen: SocketAddr,
    /// Interfaces discovery started on.
    pub links: Vec<String>,
    /// The control socket clients talk to.
    pub control: std::path::PathBuf,
    /// Where the web dashboard listens (`None` with `--no-ui`).
    pub ui: Option<SocketAddr>,
}

/// How often interfaces are listed again, to follow ones that come and go.
const LINK_CHECK: Duration = Duration::from_secs(2);
/// How long a stopping node waits for its tasks before naming the late ones.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// The links discovery runs on, as they change.
type Links = std::collections::BTreeSet<Link>;

/// Loads the node id from `.lanshare/node_id`, creating it on first start.
/// Loads the node's key pair (creating it at first start) and says once
/// when an old random node id gives way to the key-derived one.
pub fn load_identity(home: &Home) -> anyhow::Result<Arc<crate::identity::Identity>> {
    use crate::identity::{Identity, Loaded};
    let (identity, loaded) = Identity::load_or_create(&home.identity_file(), &home.node_id_file())?;
    match loaded {
        Loaded::Migrated { old } => tracing::warn!(
            "node id changed from {old} to {}: now derived from {}",
            identity.node_id(),
            home.identity_file().display()
        ),
        Loaded::Created => tracing::info!(node = %identity.node_id(), "new node identity"),
        Loaded::Existing => {}
    }
    Ok(Arc::new(identity))
}

/// A node with every socket bound, its identity loaded and its store
/// opened, and no task started yet. [`Bound::run`] starts it.
pub struct Bound {
    cfg: NodeConfig,
    started: Started,
    control: tokio::net::UnixListener,
    listener: TcpListener,
    store: Arc<Store>,
    dict: Arc<Dict>,
    stats: Arc<Stats>,
    selection: crate::netif::Selection,
    links_tx: tokio::sync::watch::Sender<Links>,
    links_rx: tokio::sync::watch::Receiver<Links>,
    disc: Option<Arc<Discovery>>,
    mdns: Option<Arc<crate::mdns::Mdns>>,
    ui: Option<crate::ui::BoundUi>,
}

/// Runs a node until `shutdown` completes. `on_start` is called once every
/// socket is bound.
pub async fn run(
    cfg: NodeConfig,
    shutdown: impl std::future::Future<Output = ()>,
    on_start: impl FnOnce(&Started),
) -> anyhow::Result<()> {
    let bound = bind(cfg).await?;
    on_start(bound.started());
    bound.run(shutdown).await
}

/// Binds every socket (control, TCP, discovery, mDNS), loads the node id
/// and opens the store. Nothing runs yet, so a failure leaves nothing
/// behind but the control socket file.
pub async fn bind(cfg: NodeConfig) -> anyhow::Result<Bound> {
    let home = Home::new(&cfg.home);
    home.create_dirs()
        .with_context(|| format!("cannot create the node's folders in {}", cfg.home.display()))?;
    let control = control::bind(&home.control_socket())
        .await
        .with_context(|| {
            format!(
                "cannot open the control socket {}",
                home.control_socket().display()
            )
        })?;
    let identity = load_identity(&home)?;
    let id = identity.node_id();
    let listener = bind_tcp(cfg.listen).await?;
    let listen = listener.local_addr()?;
    let store =
        Store::open(home.clone(), cfg.shares.clone()).context("cannot open the content store")?;
    store.set_follow_symlinks(cfg.follow_symlinks);
    let dict = Arc::new(Dict::with_limits(
        cfg.max_remote_contents,
        cfg.max_remote_bytes,
    ));
    let selection = cfg.selection();
    let links = selected_links(&selection)?;
    let (links_tx, links_rx) = tokio::sync::watch::channel(links.clone());
    let stats = Arc::new(Stats::default());
    let ctx = discovery::Context {
        node: id,
        identity: identity.clone(),
        mode: cfg.swarm.clone(),
        name: cfg.name.clone(),
        tcp_port: listen.port(),
        interval: cfg.announce_interval,
        inventory: store.subscribe(),
        dict: dict.clone(),
        stats: stats.clone(),
    };
    let disc = if cfg.multicast || cfg.broadcast {
        Some(bind_discovery(&cfg, ctx.clone(), &links)?)
    } else {
        None
    };
    let mdns = if cfg.mdns {
        Some(crate::mdns::Mdns::start(ctx, links.clone())?)
    } else {
        None
    };
    let ui = crate::ui::bind(&cfg).await?;
    let started = Started {
        node: id,
        identity,
        listen,
        links: links.iter().map(|l| l.to_string()).collect(),
        control: home.control_socket(),
        ui: ui.as_ref().map(|u| u.addr),
    };
    Ok(Bound {
        cfg,
        started,
        control,
        listener,
        store,
        dict,
        stats,
        selection,
        links_tx,
        links_rx,
        disc,
        mdns,
        ui,
    })
}

/// The links discovery starts on; an `--interface` address no interface
/// has is an error, a name not present yet only a warning.
fn selected_links(selection: &crate::netif::Selection) -> anyhow::Result<Links> {
    let ifaces = crate::netif::list();
    for spec in selection.unmatched(&ifaces) {
        match spec {
            crate::netif::IfaceSpec::Addr(a) => bail!(
                "--interface {a}: no interface of this machine has that address; see `ip addr` for the addresses, or give an interface name"
            ),
            crate::netif::IfaceSpec::Name(n) => tracing::warn!(
                "--interface {n}: no such interface yet; discovery starts on it when it appears"
            ),
        }
    }
    Ok(selection.links(&ifaces))
}

/// A node whose tasks run, until [`Running::stop`].
struct Running {
    tasks: Tasks,
    goodbye: Goodbye,
    /// The control socket's path, removed at the end.
    socket: std::path::PathBuf,
}

impl Running {
    /// Stops the node: peers hear a goodbye, every task is cancelled, and
    /// those still running after `grace` are named in a warning and
    /// returned.
    async fn stop(self, grace: Duration) -> Result<(), crate::task::Stragglers> {
        // Peers that multicast does not reach hear the goodbye over TCP,
        // while the announcer says it on every link.
        let farewell = self.goodbye.say(Duration::from_millis(800));
        self.tasks.cancel();
        farewell.await;
        let left = self.tasks.shutdown(grace).await;
        let _ = std::fs::remove_file(&self.socket);
        left
    }
}

/// What says goodbye over TCP at shutdown: the reach, in its task scope.
struct Goodbye {
    reach: Arc<crate::reach::Reach>,
    scope: Tasks,
}

impl Goodbye {
    async fn say(&self, within: Duration) {
        self.reach.farewell(&self.scope, within).await
    }
}

/// Binds the multicast sockets and joins the group on `links`.
fn bind_discovery(
    cfg: &NodeConfig,
    ctx: discovery::Context,
    links: &Links,
) -> anyhow::Result<Arc<Discovery>> {
    let recv4 = discovery::recv_socket(false, cfg.group.port())?;
    // Broadcast is IPv4 only: no IPv6 socket without multicast.
    let recv6 = match cfg
        .multicast
        .then(|| discovery::recv_socket(true, cfg.group.port()))
    {
        None => None,
        Some(Ok(s)) => Some(s),
        Some(Err(e)) => {
            tracing::warn!(error = %e, "no IPv6 multicast discovery");
            None
        }
    };
    let paths = discovery::Paths {
        multicast: cfg.multicast,
        broadcast: cfg.broadcast,
    };
    let d = Discovery::new(
        ctx,
        paths,
        cfg.group,
        std::net::SocketAddrV6::new(cfg.group6, cfg.group.port(), 0, 0),
        Some(recv4),
        recv6,
    );
    for (link, e) in d.set_links(links) {
        if !cfg.interfaces.is_empty() {
            return Err(anyhow::Error::new(e).context(format!("cannot use {link}")));
        }
        tracing::warn!(%link, error = %e, "cannot use this interface for discovery; skipping it");
    }
    if links.is_empty() {
        tracing::warn!(
            "no up, multicast-capable interface found yet; multicast discovery starts when one appears (or use --interface)"
        );
    }
    Ok(d)
}

impl Bound {
    /// The node's id and bound addresses.
    pub fn started(&self) -> &Started {
        &self.started
    }

    /// Starts every task and runs until `shutdown` completes, then stops
    /// them in order: peers hear a goodbye, every task is cancelled, and
    /// those that do not stop within [`STOP_GRACE`] are named in a warning.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let running = self.start();
        shutdown.await;
        tracing::info!("shutting down");
        let _ = running.stop(STOP_GRACE).await;
        Ok(())
    }

    /// Spawns every task of the node in the scope `node`.
    fn start(self) -> Running {
        let tasks = Tasks::new("node");
        let socket = self.started.control.clone();
        let goodbye = self.spawn_all(&tasks);
        Running {
            tasks,
            goodbye,
            socket,
        }
    }

    /// Spawns every task of the node; returns what says goodbye to peers.
    fn spawn_all(self, tasks: &Tasks) -> Goodbye {
        let cfg = &self.cfg;
        let (id, listen) = (self.started.node, self.started.listen);
        let rescan = Arc::new(Notify::new());
        // Index first from the cache (cheap), so the first announce is complete
        // for unchanged files; new files are hashed in the background.
        let scanner = Scanner {
            store: self.store.clone(),
            period: cfg.scan_interval,
            rescan: rescan.clone(),
        };
        tasks.spawn_until_cancelled("scanner", scanner.run());
        let local = crate::peer::server::Local {
            identity: self.started.identity.clone(),
            mode: cfg.swarm.clone(),
            name: cfg.name.clone(),
        };
        let mut server = Server::new(
            self.store.clone(),
            self.dict.clone(),
            self.stats.clone(),
            local,
            cfg.server.clone(),
            rescan.clone(),
        );
        tasks.spawn_until_cancelled("expiry", expiry(self.dict.clone()));
        let reach = self.spawn_peer_followers(tasks);
        server.exchange = reach.reach.exchange.clone();
        self.spawn_trackers(tasks);
        self.spawn_discovery(tasks);
        let server = Arc::new(server).run(self.listener, tasks.child("server"));
        tasks.spawn("server", server);
        tasks.spawn(
            "links",
            crate::netif::watch_links(self.selection, self.links_tx, LINK_CHECK, tasks.token()),
        );
        let ui = self.started.ui;
        let me = Identity {
            id,
            listen,
            key: self.started.identity.clone(),
            ui,
        };
        let mut service = Service::new(
            cfg,
            me,
            self.store,
            self.dict,
            self.stats,
            rescan,
            tasks.child("service"),
        );
        service.set_links(self.links_rx.clone());
        let service = Arc::new(service);
        // Downloads left unfinished by the last run go on in the background.
        service.resume_jobs();
        if let Some(ui) = self.ui {
            tasks.spawn_until_cancelled("ui", ui.serve(service.clone(), tasks.child("ui")));
        }
        let control_tasks = tasks.child("control");
        tasks.spawn_until_cancelled(
            "control",
            control::serve(self.control, service, control_tasks),
        );
        reach
    }

    /// Peers given with `--peer`, and the pulls and probes that keep
    /// every peer's inventory and liveness current.
    fn spawn_peer_followers(&self, tasks: &Tasks) -> Goodbye {
        let cfg = &self.cfg;
        let dialer = crate::peer::dial::Dialer::new(
            self.started.identity.clone(),
            cfg.swarm.clone(),
            &cfg.name,
            self.dict.clone(),
        );
        for target in &cfg.peers {
            let follow = crate::manual::follow(
                self.dict.clone(),
                dialer.clone(),
                target.clone(),
                cfg.announce_interval,
                tasks.token(),
            );
            tasks.spawn(&format!("manual peer {target}"), follow);
        }
        let exchange = Arc::new(crate::exchange::Exchange::new(
            self.dict.clone(),
            dialer.clone(),
            self.stats.clone(),
            self.started.listen.port(),
            cfg.announce_interval,
        ));
        let reach = Arc::new(crate::reach::Reach {
            dict: self.dict.clone(),
            dialer,
            exchange: Some(exchange.clone()),
        });
        let scope = tasks.child("reach");
        scope.spawn("exchange", exchange.run(scope.child("exchange")));
        scope.spawn("puller", reach.clone().puller(scope.clone()));
        scope.spawn("prober", reach.clone().prober(scope.clone()));
        Goodbye { reach, scope }
    }

    /// One client per tracker, fed this node's addresses on its links.
    fn spawn_trackers(&self, tasks: &Tasks) {
        let cfg = &self.cfg;
        if cfg.trackers.is_empty() {
            return;
        }
        let (addrs_tx, addrs_rx) =
            tokio::sync::watch::channel(crate::netif::addresses(&self.links_rx.borrow()));
        tasks.spawn(
            "local addresses",
            local_addresses(self.links_rx.clone(), addrs_tx, tasks.token()),
        );
        for url in &cfg.trackers {
            let mut node = crate::tracker::client::NodeInfo::new(
                self.started.identity.clone(),
                cfg.name.clone(),
                self.started.listen.port(),
                &cfg.swarm,
                crate::peer::dial::Dialer::new(
                    self.started.identity.clone(),
                    cfg.swarm.clone(),
                    &cfg.name,
                    self.dict.clone(),
                ),
            );
            node.stats = self.stats.clone();
            let follow = crate::tracker::client::follow(
                url.clone(),
                node,
                addrs_rx.clone(),
                self.store.subscribe(),
                self.dict.clone(),
                tasks.token(),
            );
            tasks.spawn(&format!("tracker {url}"), follow);
        }
    }

    /// mDNS and multicast discovery, where bound.
    fn spawn_discovery(&self, tasks: &Tasks) {
        let links = &self.links_rx;
        if let Some(mdns) = &self.mdns {
            let scope = tasks.child("mdns");
            scope.spawn("links", mdns.clone().links(links.clone(), scope.token()));
            scope.spawn("browser", mdns.clone().browser(scope.token()));
            scope.spawn("publisher", mdns.clone().publisher(scope.token()));
        }
        if let Some(disc) = &self.disc {
            let scope = tasks.child("discovery");
            let listen4 = disc.clone().listener(false, scope.clone());
            scope.spawn("listener v4", listen4);
            let listen6 = disc.clone().listener(true, scope.clone());
            scope.spawn("listener v6", listen6);
            scope.spawn("links", disc.clone().links(links.clone(), scope.token()));
            scope.spawn("announcer", disc.clone().announcer(scope.token()));
        }
    }
}

async fn bind_tcp(listen: Option<SocketAddr>) -> anyhow::Result<TcpListener> {
    match listen {
        Some(addr) => TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr}; is another program using that port? Pick another with --listen ADDR:PORT (port 0 picks a free one)")
        }),
        None => match dual_stack(DEFAULT_TCP_PORT) {
            Ok(l) => Ok(l),
            Err(e) => {
                tracing::info!(error = %e, "default port {DEFAULT_TCP_PORT} is taken; using a free one");
                dual_stack(0).context("cannot listen on any TCP port")
            }
        },
    }
}

/// A listener for both IPv4 and IPv6 on `port`, or IPv4 only where the
/// system has no IPv6.
fn dual_stack(port: u16) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let v6 = (|| {
        let s = Socket::new(Domain::IPV6, Type::STREAM, None)?;
        s.set_only_v6(false)?;
        s.set_reuse_address(true)?;
        s.bind(&SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, port)).into())?;
        Ok::<_, std::io::Error>(s)
    })();
    let s = match v6 {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => return Err(e),
        Err(e) => {
            tracing::debug!(error = %e, "no IPv6; listening on IPv4 only");
            let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            s.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
            s
        }
    };
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    TcpListener::from_std(s.into())
}

/// Keeps `tx` holding this node's addresses on the current links, until
/// cancelled or the link watcher is gone.
async fn local_addresses(
    links: tokio::sync::watch::Receiver<Links>,
    tx: tokio::sync::watch::Sender<Vec<std::net::IpAddr>>,
    cancel: tokio_util::sync::CancellationToken,
) {
    discovery::follow_links(links, cancel, |links| {
        let addrs = crate::netif::addresses(&links);
        tx.send_if_modified(|old| {
            let changed = *old != addrs;
            *old = addrs;
            changed
        });
        std::future::ready(())
    })
    .await
}

/// Marks silent peers offline, whichever way they were found.
async fn expiry(dict: Arc<Dict>) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tick.tick().await;
        dict.expire(std::time::Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet_config(home: &std::path::Path) -> NodeConfig {
        let mut cfg = NodeConfig::new(home.to_path_buf());
        cfg.listen = Some("127.0.0.1:0".parse().unwrap());
        cfg.multicast = false;
        cfg.broadcast = false;
        cfg.mdns = false;
        cfg.interfaces = vec![crate::netif::IfaceSpec::Addr(Ipv4Addr::LOCALHOST.into())];
        cfg
    }

    /// Two nodes bind in one process on one runtime, each on its own
    /// port, and stop when their shutdown future completes.
    #[tokio::test]
    async fn two_nodes_bind_and_run_in_one_process() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let na = bind(quiet_config(a.path())).await.unwrap();
        let nb = bind(quiet_config(b.path())).await.unwrap();
        let (sa, sb) = (na.started().clone(), nb.started().clone());
        assert_ne!(sa.listen.port(), 0);
        assert_ne!(sa.listen, sb.listen);
        assert_ne!(sa.node, sb.node);
        assert_eq!(sa.control, Home::new(a.path()).control_socket());
        let stop = tokio_util::sync::CancellationToken::new();
        let ra = tokio::spawn(na.run(stop.clone().cancelled_owned()));
        let rb = tokio::spawn(nb.run(stop.clone().cancelled_owned()));
        tokio::net::TcpStream::connect(sa.listen).await.unwrap();
        stop.cancel();
        ra.await.unwrap().unwrap();
        rb.await.unwrap().unwrap();
        assert!(
            !sa.control.exists(),
            "the control socket is removed on stop"
        );
    }

    /// The typed client talks to an in-process node: status names the
    /// bound address, an unknown name ends the fetch stream with NotFound.
    #[tokio::test]
    async fn the_typed_client_reaches_the_service() {
        let home = tempfile::tempdir().unwrap();
        let mut cfg = quiet_config(home.path());
        cfg.fetch.wait_for_holders = Duration::from_millis(50);
        let node = bind(cfg).await.unwrap();
        let started = node.started().clone();
        let stop = tokio_util::sync::CancellationToken::new();
        let run = tokio::spawn(node.run(stop.clone().cancelled_owned()));
        let client = control::Client::new(home.path());
        let status = client.status().await.unwrap();
        assert_eq!(status.listen, started.listen.to_string());
        assert_eq!(status.id, started.node.to_hex());
        assert!(client.ls(None, None).await.unwrap().is_empty());
        assert!(client.peers().await.unwrap().is_empty());
        client.rescan().await.unwrap();
        let mut events = client.fetch("nothing-here").await.unwrap();
        let ev = events.next().await.unwrap();
        assert_eq!(
            ev,
            Some(crate::api::FetchEvent::NotFound {
                query: "nothing-here".into()
            })
        );
        assert_eq!(events.next().await.unwrap(), None);
        stop.cancel();
        run.await.unwrap().unwrap();
    }

    /// Waits up to 5 s until `name` is on the node's running list.
    async fn until_running(tasks: &Tasks, name: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !tasks.running().iter().any(|n| n == name) {
            assert!(std::time::Instant::now() < deadline, "{name} never ran");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The running list names the node's real tasks, a peer connection
    /// among them; a shutdown names the one task that outlives it: a
    /// control connection (not stopped by cancellation, so a fetch can
    /// still report how it ended) whose client never sends its request.
    #[tokio::test]
    async fn shutdown_names_the_real_task_that_did_not_stop() {
        let home = tempfile::tempdir().unwrap();
        let node = bind(quiet_config(home.path())).await.unwrap();
        let started = node.started().clone();
        let running = node.start();
        let tasks = running.tasks.clone();
        let _peer = tokio::net::TcpStream::connect(started.listen)
            .await
            .unwrap();
        let _silent = tokio::net::UnixStream::connect(&started.control)
            .await
            .unwrap();
        until_running(&tasks, "node/server/conn").await;
        until_running(&tasks, "node/control/connection").await;
        let names = tasks.running();
        for task in [
            "node/control",
            "node/expiry",
            "node/links",
            "node/reach/prober",
            "node/reach/puller",
            "node/scanner",
            "node/server",
        ] {
            assert!(names.iter().any(|n| n == task), "{task} not in {names:?}");
        }
        let left = running.stop(Duration::from_millis(300)).await;
        assert_eq!(
            left,
            Err(crate::task::Stragglers(vec![
                "node/control/connection".into()
            ]))
        );
    }
}
