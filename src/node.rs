//! Builds every task of a running node from its configuration, owns their
//! cancellation, and stops them in order: the announcer says goodbye, the
//! server and control endpoint close, partial downloads save their state.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::api::{FetchEvent, NodeStatus};
use crate::config::{DEFAULT_TCP_PORT, NodeConfig};
use crate::control::{self, ControlRequest, ControlResponse};
use crate::dict::Dict;
use crate::discovery::{self, Discovery};
use crate::fetch::{FetchCtx, Want};
use crate::id::{ContentId, NodeId};
use crate::logs::TransferLog;
use crate::peer::server::Server;
use crate::resolve::Resolution;
use crate::store::{Home, Store};

/// What a bound node is: its id, its addresses and its control socket.
/// `up` prints it; tests read the bound address from it.
#[derive(Clone, Debug)]
pub struct Started {
    pub node: NodeId,
    /// The TCP address of the peer server (port 0 resolved).
    pub listen: SocketAddr,
    /// Interfaces discovery started on.
    pub links: Vec<String>,
    /// The control socket clients talk to.
    pub control: std::path::PathBuf,
}

/// How often interfaces are listed again, to follow ones that come and go.
const LINK_CHECK: Duration = Duration::from_secs(2);

/// Loads the node id from `.lanshare/node_id`, creating it on first start.
pub fn load_or_create_id(home: &Home) -> anyhow::Result<NodeId> {
    let path = home.node_id_file();
    if let Ok(s) = std::fs::read_to_string(&path) {
        if let Ok(id) = s.trim().parse() {
            return Ok(id);
        }
        tracing::warn!(path = %path.display(), "node id file is corrupt; creating a new identity");
    }
    let id = NodeId::random();
    std::fs::write(&path, format!("{id}\n"))
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(id)
}

struct Node {
    cfg: NodeConfig,
    id: NodeId,
    listen: SocketAddr,
    store: Arc<Store>,
    dict: Arc<Dict>,
    fetch: Arc<FetchCtx>,
    rescan: Arc<Notify>,
    /// One fetch per content at a time; a second waits for the first.
    fetch_locks: dashmap::DashMap<ContentId, Arc<tokio::sync::Mutex<()>>>,
}

/// A node with every socket bound, its identity loaded and its store
/// opened, and no task started yet. [`Bound::run`] starts it.
pub struct Bound {
    cfg: NodeConfig,
    home: Home,
    started: Started,
    control: tokio::net::UnixListener,
    listener: TcpListener,
    store: Arc<Store>,
    dict: Arc<Dict>,
    selection: crate::netif::Selection,
    links_tx: tokio::sync::watch::Sender<std::collections::BTreeSet<crate::netif::Link>>,
    links_rx: tokio::sync::watch::Receiver<std::collections::BTreeSet<crate::netif::Link>>,
    disc: Option<Arc<Discovery>>,
    mdns: Option<Arc<crate::mdns::Mdns>>,
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
    let id = load_or_create_id(&home)?;
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
    let me = Me {
        id,
        listen,
        dict: &dict,
        store: &store,
    };
    let disc = if cfg.multicast {
        Some(bind_discovery(&cfg, &me, &links)?)
    } else {
        None
    };
    let mdns = if cfg.mdns {
        Some(crate::mdns::Mdns::start(
            dict.clone(),
            store.clone(),
            id,
            cfg.name.clone(),
            listen.port(),
            cfg.announce_interval,
            links.clone(),
        )?)
    } else {
        None
    };
    let started = Started {
        node: id,
        listen,
        links: links.iter().map(|l| l.to_string()).collect(),
        control: home.control_socket(),
    };
    Ok(Bound {
        cfg,
        home,
        started,
        control,
        listener,
        store,
        dict,
        selection,
        links_tx,
        links_rx,
        disc,
        mdns,
    })
}

/// What discovery needs to know about this node while it binds.
struct Me<'a> {
    id: NodeId,
    listen: SocketAddr,
    dict: &'a Arc<Dict>,
    store: &'a Arc<Store>,
}

/// The links discovery starts on; an `--interface` address no interface
/// has is an error, a name not present yet only a warning.
fn selected_links(
    selection: &crate::netif::Selection,
) -> anyhow::Result<std::collections::BTreeSet<crate::netif::Link>> {
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

/// Binds the multicast sockets and joins the group on `links`.
fn bind_discovery(
    cfg: &NodeConfig,
    me: &Me<'_>,
    links: &std::collections::BTreeSet<crate::netif::Link>,
) -> anyhow::Result<Arc<Discovery>> {
    let recv4 = discovery::recv_socket(false, cfg.group.port())?;
    let recv6 = match discovery::recv_socket(true, cfg.group.port()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "no IPv6 multicast discovery");
            None
        }
    };
    let d = Discovery::new(
        me.dict.clone(),
        me.store.clone(),
        me.id,
        cfg.name.clone(),
        me.listen.port(),
        cfg.group,
        std::net::SocketAddrV6::new(cfg.group6, cfg.group.port(), 0, 0),
        cfg.announce_interval,
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
    /// them in order.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let Bound {
            cfg,
            home,
            started,
            control,
            listener,
            store,
            dict,
            selection,
            links_tx,
            links_rx,
            disc,
            mdns,
        } = self;
        let id = started.node;
        let listen = started.listen;
        let rescan = Arc::new(Notify::new());
        let fetch = Arc::new(FetchCtx {
            store: store.clone(),
            dict: dict.clone(),
            node: id,
            name: cfg.name.clone(),
            download_log: TransferLog::new(&home.download_log()),
            limits: cfg.fetch.clone(),
            memory: Default::default(),
        });
        let node = Arc::new(Node {
            cfg: cfg.clone(),
            id,
            listen,
            store: store.clone(),
            dict: dict.clone(),
            fetch,
            rescan: rescan.clone(),
            fetch_locks: Default::default(),
        });
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        // Index first from the cache (cheap), so the first announce is complete
        // for unchanged files; new files are hashed in the background.
        tasks.spawn(scanner(node.clone(), cancel.clone()));
        let server = Arc::new(Server::new(
            store.clone(),
            dict.clone(),
            id,
            cfg.name.clone(),
            cfg.server.clone(),
            rescan.clone(),
        ));
        tasks.spawn(server.run(listener, cancel.clone()));
        tasks.spawn(expiry(dict.clone(), cancel.clone()));
        for target in &cfg.peers {
            tasks.spawn(crate::manual::follow(
                dict.clone(),
                id,
                cfg.name.clone(),
                target.clone(),
                cfg.announce_interval,
                cancel.clone(),
            ));
        }
        let reach = Arc::new(crate::reach::Reach {
            dict: dict.clone(),
            me: id,
            name: cfg.name.clone(),
        });
        tasks.spawn(reach.clone().puller(cancel.clone()));
        tasks.spawn(reach.clone().prober(cancel.clone()));
        tasks.spawn(crate::netif::watch_links(
            selection,
            links_tx,
            LINK_CHECK,
            cancel.clone(),
        ));
        if !cfg.trackers.is_empty() {
            // This node's addresses on its discovery interfaces, for trackers.
            let (addrs_tx, addrs_rx) =
                tokio::sync::watch::channel(crate::netif::addresses(&links_rx.borrow()));
            tasks.spawn(local_addresses(links_rx.clone(), addrs_tx, cancel.clone()));
            for url in &cfg.trackers {
                tasks.spawn(crate::tracker::client::follow(
                    url.clone(),
                    crate::tracker::client::NodeInfo {
                        id,
                        name: cfg.name.clone(),
                        tcp_port: listen.port(),
                    },
                    addrs_rx.clone(),
                    store.subscribe(),
                    dict.clone(),
                    cancel.clone(),
                ));
            }
        }
        if let Some(mdns) = mdns {
            tasks.spawn(mdns.clone().links(links_rx.clone(), cancel.clone()));
            tasks.spawn(mdns.clone().browser(cancel.clone()));
            tasks.spawn(mdns.publisher(cancel.clone()));
        }
        if let Some(disc) = disc {
            tasks.spawn(disc.clone().listener(false, cancel.clone()));
            tasks.spawn(disc.clone().listener(true, cancel.clone()));
            tasks.spawn(disc.clone().links(links_rx.clone(), cancel.clone()));
            tasks.spawn(disc.announcer(cancel.clone()));
        }
        tasks.spawn(control_server(
            node.clone(),
            control,
            cancel.clone(),
            tasks.clone(),
        ));

        shutdown.await;
        tracing::info!("shutting down");
        // Peers that multicast does not reach hear the goodbye over TCP,
        // while the announcer says it on every link.
        let farewell = reach.farewell(Duration::from_millis(800));
        cancel.cancel();
        farewell.await;
        tasks.close();
        if tokio::time::timeout(Duration::from_secs(5), tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!("some tasks did not stop within 5 s");
        }
        let _ = std::fs::remove_file(home.control_socket());
        Ok(())
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

/// Keeps `tx` holding this node's addresses on the current links.
async fn local_addresses(
    mut links: tokio::sync::watch::Receiver<std::collections::BTreeSet<crate::netif::Link>>,
    tx: tokio::sync::watch::Sender<Vec<std::net::IpAddr>>,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = links.changed() => if r.is_err() { return },
        }
        let addrs = crate::netif::addresses(&links.borrow_and_update());
        tx.send_if_modified(|old| {
            let changed = *old != addrs;
            *old = addrs;
            changed
        });
    }
}

/// Marks silent peers offline, whichever way they were found.
async fn expiry(dict: Arc<Dict>, cancel: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => { dict.expire(std::time::Instant::now()); }
        }
    }
}

/// Rescans the shared folders when the file system reports a change
/// ([`crate::fswatch`]), when poked (`lanshare share`, a file changed under
/// an upload), and periodically as a safety net. A scan that takes long (a
/// huge tree) stretches the period, so periodic scans stay under about a
/// twentieth of one core; notifications still bring changes within about
/// a second.
async fn scanner(node: Arc<Node>, cancel: CancellationToken) {
    let fs_changed = Arc::new(Notify::new());
    let mut watch = crate::fswatch::FsWatch::new(fs_changed.clone());
    loop {
        let store = node.store.clone();
        let scan = tokio::task::spawn_blocking(move || {
            let changed = store.rescan_blocking();
            // Partial downloads change without a file changing: republish
            // their progress (a no-op when nothing changed).
            if changed || store.has_partials() {
                store.publish();
            }
            if let Some(w) = &mut watch {
                w.set_roots(&store.root_paths());
            }
            watch
        });
        tokio::select! {
            _ = cancel.cancelled() => return,
            r = scan => match r {
                Ok(w) => watch = w,
                Err(e) => {
                    tracing::error!(error = %e, "scan failed");
                    watch = None;
                }
            },
        }
        let scanned = std::time::Instant::now();
        let walk = node.store.last_walk();
        let mut period = node.cfg.scan_interval.max(walk * 20);
        if node.store.has_unsettled() {
            period = period.min(crate::store::SETTLE * 2);
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
            _ = node.rescan.notified() => {}
            _ = fs_changed.notified() => {
                // Let a burst of changes (a copy in progress) settle, and
                // keep at least two walks' time between scans so a stream
                // of changes in a huge tree costs at most a third of a core.
                let settle = Duration::from_millis(100)
                    .max((walk * 2).saturating_sub(scanned.elapsed()));
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(settle) => {}
                }
            }
        }
    }
}

async fn control_server(
    node: Arc<Node>,
    listener: tokio::net::UnixListener,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    loop {
        let stream = tokio::select! {
            _ = cancel.cancelled() => return,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "control accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let node = node.clone();
        let cancel = cancel.clone();
        tasks.spawn(async move {
            if let Err(e) = handle_control(&node, stream, cancel).await {
                tracing::debug!(error = %e, "control connection ended with an error");
            }
        });
    }
}

async fn handle_control(
    node: &Node,
    mut s: UnixStream,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let Some(req) = control::read_msg::<ControlRequest>(&mut s, control::MAX_REQUEST).await? else {
        return Ok(());
    };
    let resp = match req {
        ControlRequest::Status => ControlResponse::Status(node.status()),
        ControlRequest::Ls { query, category } => {
            let local: Vec<ContentId> = node
                .store
                .inventory()
                .entries
                .iter()
                .map(|e| e.id)
                .collect();
            let views = node
                .dict
                .list(query.as_deref(), category)
                .into_iter()
                .filter_map(|id| node.dict.view(&id, local.contains(&id)))
                .collect();
            ControlResponse::Ls(views)
        }
        ControlRequest::Peers => ControlResponse::Peers(node.dict.peer_views()),
        ControlRequest::Rescan => {
            node.rescan.notify_one();
            ControlResponse::Ok
        }
        ControlRequest::Fetch { query } => return node.serve_fetch(s, &query, cancel).await,
    };
    control::write_msg(&mut s, &resp).await?;
    Ok(())
}

impl Node {
    fn status(&self) -> NodeStatus {
        NodeStatus {
            id: self.id.to_hex(),
            name: self.cfg.name.clone(),
            listen: self.listen.to_string(),
            home: self.cfg.home.display().to_string(),
            shared_contents: self.store.inventory().entries.len() as u32,
            malformed_datagrams: self.dict.malformed_datagrams.load(Ordering::Relaxed),
            malformed_connections: self.dict.malformed_connections.load(Ordering::Relaxed),
            discovery_bytes_sent: self.dict.discovery_bytes_sent.load(Ordering::Relaxed),
            inventory_bytes_served: self.dict.inventory_bytes_served.load(Ordering::Relaxed),
        }
    }

    /// Resolves and runs one fetch, streaming events to the client; the
    /// fetch is cancelled if the client goes away.
    async fn serve_fetch(
        &self,
        mut s: UnixStream,
        query: &str,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        let local: Vec<(ContentId, String)> = self
            .store
            .inventory()
            .entries
            .iter()
            .map(|e| (e.id, e.name.clone()))
            .collect();
        // What the network offers comes first: a local file of the same name
        // must not make a fetch ambiguous. Only when nothing on the network
        // matches do this node's own contents count (-> "already here").
        let mut resolution = self.dict.resolve(query, &[]);
        if resolution == Resolution::None {
            // A node that just started may not have heard everyone yet.
            let deadline = tokio::time::Instant::now() + self.cfg.fetch.wait_for_holders;
            while resolution == Resolution::None && tokio::time::Instant::now() < deadline {
                let _ = tokio::time::timeout_at(deadline, self.dict.changed.notified()).await;
                resolution = self.dict.resolve(query, &[]);
            }
        }
        if resolution == Resolution::None {
            resolution = self.dict.resolve(query, &local);
        }
        let id = match resolution {
            Resolution::One(id) => id,
            Resolution::None => {
                let ev = FetchEvent::NotFound {
                    query: query.to_string(),
                };
                control::write_msg(&mut s, &ControlResponse::Fetch(ev)).await?;
                return Ok(());
            }
            Resolution::Ambiguous(ids) => {
                let local_ids: Vec<ContentId> = local.iter().map(|(id, _)| *id).collect();
                let candidates = ids
                    .iter()
                    .filter_map(|id| self.view_any(id, &local_ids))
                    .collect();
                control::write_msg(
                    &mut s,
                    &ControlResponse::Fetch(FetchEvent::Ambiguous { candidates }),
                )
                .await?;
                return Ok(());
            }
        };
        // What the user chose from: the size `ls` shows for that content.
        // A manifest of another size is refused before any file is made.
        let want = Want {
            id,
            query: query.to_string(),
            size: self.dict.content(&id).map(|c| c.size),
        };
        let lock = self.fetch_locks.entry(id).or_default().clone();
        let _guard = lock.lock().await;

        let fetch_cancel = cancel.child_token();
        let (tx, mut rx) = mpsc::channel::<FetchEvent>(64);
        let fetch = self.fetch.clone();
        let task_cancel = fetch_cancel.clone();
        let mut job = tokio::spawn(async move { fetch.fetch(want, &tx, task_cancel).await });
        let (mut read_half, mut write_half) = s.into_split();
        let mut probe = [0u8; 1];
        let mut client_gone = false;
        let result = loop {
            tokio::select! {
                r = &mut job => break r?,
                Some(ev) = rx.recv() => {
                    if write_event(&mut write_half, &ev).await.is_err() {
                        fetch_cancel.cancel();
                    }
                }
                // The client never writes again: a read returning means it left.
                _ = tokio::io::AsyncReadExt::read(&mut read_half, &mut probe), if !client_gone => {
                    client_gone = true;
                    tracing::info!(id = %id.short(), "fetch client went away; stopping the download (it resumes next time)");
                    fetch_cancel.cancel();
                }
            }
        };
        while let Ok(ev) = rx.try_recv() {
            let _ = write_event(&mut write_half, &ev).await;
        }
        let last = match result {
            Ok(done) => FetchEvent::Done(done),
            Err(e) => FetchEvent::Failed {
                reason: e.to_string(),
            },
        };
        let _ = write_event(&mut write_half, &last).await;
        Ok(())
    }

    fn view_any(&self, id: &ContentId, local: &[ContentId]) -> Option<crate::api::ContentView> {
        if let Some(v) = self.dict.view(id, local.contains(id)) {
            return Some(v);
        }
        let c = self.store.complete(id)?;
        Some(crate::api::ContentView {
            id: id.to_hex(),
            name: c.name.clone(),
            names: vec![c.name.clone()],
            size: c.manifest.size,
            category: c.category,
            comment: c.comment.clone(),
            complete: 0,
            partial: 0,
            holders: Vec::new(),
            local: true,
        })
    }
}

async fn write_event(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    ev: &FetchEvent,
) -> anyhow::Result<()> {
    use tokio::io::AsyncWriteExt;
    let body = postcard::to_allocvec(&ControlResponse::Fetch(ev.clone()))?;
    w.write_all(&(body.len() as u32).to_le_bytes()).await?;
    w.write_all(&body).await?;
    Ok(())
}

/// Checks that `path` exists before it is added to the shares.
pub fn check_share_path(path: &Path) -> anyhow::Result<std::path::PathBuf> {
    let abs =
        std::fs::canonicalize(path).with_context(|| format!("cannot share {}", path.display()))?;
    if !abs.is_file() && !abs.is_dir() {
        bail!(
            "cannot share {}: not a regular file or folder",
            path.display()
        );
    }
    Ok(abs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quiet_config(home: &Path) -> NodeConfig {
        let mut cfg = NodeConfig::new(home.to_path_buf());
        cfg.listen = Some("127.0.0.1:0".parse().unwrap());
        cfg.multicast = false;
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
        let stop = CancellationToken::new();
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
}
