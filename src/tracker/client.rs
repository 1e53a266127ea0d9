//! The node's side of a tracker: [`follow`] registers, keeps the tracker's
//! copy of this node's inventory current, heartbeats, and merges the
//! tracker's online peers into the dictionary (the node's puller then pulls
//! their inventories over TCP, as for any other peer). [`Api`] is the plain
//! HTTP client under it, also used by tests and the load generator.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::proto::{
    AnnounceResponse, Entry, ErrorBody, FullAnnounce, HeartbeatRequest, HeartbeatResponse,
    PatchAnnounce, PeerInfo, PeersQuery, PeersResponse, RegisterRequest, RegisterResponse,
    SearchQuery, SearchResponse, Stats, check_node_name,
};
use crate::api::FoundVia;
use crate::dict::Dict;
use crate::id::{ContentId, NodeId};
use crate::inventory::Inventory;

/// Who this node is, as the tracker lists it.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    pub id: NodeId,
    pub name: String,
    /// TCP port of the node's peer server.
    pub tcp_port: u16,
}

/// Time limit of one request to the tracker.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Time limit of the goodbye when the node stops.
const DEREGISTER_TIMEOUT: Duration = Duration::from_secs(2);
/// First retry delay when the tracker fails; it doubles up to
/// `max(MAX_BACKOFF, heartbeat)`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Inventory changes are sent at most this often (a download in progress
/// changes the inventory every second or so).
const MIN_ANNOUNCE_GAP: Duration = Duration::from_secs(1);
/// Entries plus removals per request; at the longest names and comments a
/// request stays under the tracker's default 16 MiB body limit.
pub const BATCH: usize = 5000;
/// Smallest batch when a tracker refuses requests as too large (413).
const MIN_BATCH: usize = 100;
/// Most tracker peers remembered (bounded whatever the tracker sends).
const MAX_PEERS: usize = 20_000;
/// Most peer-list pages read per poll.
const MAX_PAGES: usize = 50;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the tracker at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    #[error("the tracker at {url} answered {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
        stored_digest: Option<String>,
    },
    #[error("the tracker at {url} sent an answer this node does not understand: {message}")]
    BadAnswer { url: String, message: String },
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// The tracker's HTTP API, one method per route.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    /// `base` is the tracker's URL, `http://HOST:PORT`. Connections are
    /// kept open between requests (for scripts and the load generator).
    pub fn new(base: &str) -> Api {
        Self::build(base, true)
    }

    /// What a node uses: one connection per request, closed after it. A
    /// node talks to the tracker a few times per heartbeat interval, and
    /// thousands of nodes each holding an idle connection would exhaust
    /// the tracker's connection slots.
    pub fn per_request(base: &str) -> Api {
        Self::build(base, false)
    }

    fn build(base: &str, keep_alive: bool) -> Api {
        let mut b = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(5))
            .no_proxy();
        b = if keep_alive {
            b.pool_idle_timeout(Duration::from_secs(30))
        } else {
            b.pool_max_idle_per_host(0)
        };
        let http = b.build().expect("a plain HTTP client builds");
        Api {
            http,
            base: base.trim_end_matches('/').to_string(),
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send<T: DeserializeOwned>(
        &self,
        url: String,
        rb: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        let resp = rb.send().await.map_err(|source| ClientError::Unreachable {
            url: url.clone(),
            source,
        })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|source| ClientError::Unreachable {
                url: url.clone(),
                source,
            })?;
        if !status.is_success() {
            let body: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
            return Err(ClientError::Status {
                url,
                status: status.as_u16(),
                message: body.as_ref().map(|b| b.error.clone()).unwrap_or_else(|| {
                    String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned()
                }),
                stored_digest: body.and_then(|b| b.stored_digest),
            });
        }
        let body: &[u8] = if bytes.is_empty() { b"null" } else { &bytes };
        serde_json::from_slice(body).map_err(|e| ClientError::BadAnswer {
            url,
            message: e.to_string(),
        })
    }

    pub async fn register(&self, req: &RegisterRequest) -> Result<RegisterResponse, ClientError> {
        let url = self.url("/v1/nodes");
        let rb = self.http.post(&url).json(req);
        self.send(url, rb).await
    }

    pub async fn heartbeat(
        &self,
        id: NodeId,
        token: &str,
        req: &HeartbeatRequest,
    ) -> Result<HeartbeatResponse, ClientError> {
        let url = self.url(&format!("/v1/nodes/{id}/heartbeat"));
        let rb = self.http.post(&url).bearer_auth(token).json(req);
        self.send(url, rb).await
    }

    pub async fn announce_full(
        &self,
        id: NodeId,
        token: &str,
        req: &FullAnnounce,
    ) -> Result<AnnounceResponse, ClientError> {
        let url = self.url(&format!("/v1/nodes/{id}/inventory"));
        let rb = self.http.put(&url).bearer_auth(token).json(req);
        self.send(url, rb).await
    }

    pub async fn announce_patch(
        &self,
        id: NodeId,
        token: &str,
        req: &PatchAnnounce,
    ) -> Result<AnnounceResponse, ClientError> {
        let url = self.url(&format!("/v1/nodes/{id}/inventory"));
        let rb = self.http.patch(&url).bearer_auth(token).json(req);
        self.send(url, rb).await
    }

    pub async fn deregister(&self, id: NodeId, token: &str) -> Result<(), ClientError> {
        let url = self.url(&format!("/v1/nodes/{id}"));
        let rb = self.http.delete(&url).bearer_auth(token);
        self.send::<serde_json::Value>(url, rb).await.map(|_| ())
    }

    pub async fn peers(&self, q: &PeersQuery) -> Result<PeersResponse, ClientError> {
        let mut url = self.parse_url("/v1/peers")?;
        {
            let mut pairs = url.query_pairs_mut();
            pairs.append_pair("since", &q.since.to_string());
            if let Some(e) = &q.epoch {
                pairs.append_pair("epoch", e);
            }
            if let Some(l) = q.limit {
                pairs.append_pair("limit", &l.to_string());
            }
        }
        let rb = self.http.get(url.clone());
        self.send(url.to_string(), rb).await
    }

    pub async fn search(&self, q: &SearchQuery) -> Result<SearchResponse, ClientError> {
        let mut url = self.parse_url("/v1/search")?;
        {
            let mut pairs = url.query_pairs_mut();
            if let Some(text) = &q.q {
                pairs.append_pair("q", text);
            }
            if let Some(c) = &q.category {
                pairs.append_pair("category", c);
            }
            if let Some(l) = q.limit {
                pairs.append_pair("limit", &l.to_string());
            }
        }
        let rb = self.http.get(url.clone());
        self.send(url.to_string(), rb).await
    }

    pub async fn stats(&self) -> Result<Stats, ClientError> {
        let url = self.url("/v1/stats");
        let rb = self.http.get(&url);
        self.send(url, rb).await
    }

    fn parse_url(&self, path: &str) -> Result<reqwest::Url, ClientError> {
        let url = self.url(path);
        reqwest::Url::parse(&url).map_err(|e| ClientError::BadAnswer {
            url: url.clone(),
            message: format!("not a valid URL: {e}"),
        })
    }
}

/// Registers with the tracker at `url`, announces the inventory at start, on
/// every change and with each heartbeat (its digest; the whole inventory
/// when the tracker asks), merges the tracker's online peers into `dict`,
/// retries with backoff (warning once, then debug) while the tracker is
/// unreachable, re-registers when the tracker forgot the node (restarted
/// with a fresh db, or pruned it), and deregisters when `cancel` fires
/// (bounded by a short timeout).
pub async fn follow(
    url: String,
    me: NodeInfo,
    addrs: watch::Receiver<Vec<IpAddr>>,
    inventory: watch::Receiver<Inventory>,
    dict: Arc<Dict>,
    cancel: CancellationToken,
) {
    let mut f = Follower {
        api: Api::per_request(&url),
        me,
        dict,
        session: None,
        acked: None,
        sent_addrs: Vec::new(),
        peers: HashMap::new(),
        since: 0,
        epoch: None,
        warned_entries: false,
        max_files: crate::wire::frame::MAX_INVENTORY_ENTRIES as u32,
        batch: BATCH,
    };
    f.run(addrs, inventory, &cancel).await;
    f.leave().await;
}

/// A live registration.
struct Session {
    token: String,
    heartbeat: Duration,
    observed: IpAddr,
}

/// The inventory the tracker holds for this node.
struct Acked {
    digest: [u8; 16],
    /// Sorted by id.
    entries: Vec<Entry>,
}

/// Why a round with the tracker failed.
enum Failure {
    /// The tracker does not know this node (404) or its token (401).
    Forgotten(ClientError),
    Other(ClientError),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        match e.status() {
            Some(401) | Some(404) => Failure::Forgotten(e),
            _ => Failure::Other(e),
        }
    }
}

struct Follower {
    api: Api,
    me: NodeInfo,
    dict: Arc<Dict>,
    session: Option<Session>,
    acked: Option<Acked>,
    sent_addrs: Vec<IpAddr>,
    /// The tracker's online peers, by id (not this node).
    peers: HashMap<NodeId, PeerInfo>,
    since: u64,
    epoch: Option<String>,
    warned_entries: bool,
    /// The tracker's cap on entries per node.
    max_files: u32,
    /// Entries plus removals per request ([`BATCH`], less after a 413).
    batch: usize,
}

impl Follower {
    async fn run(
        &mut self,
        mut addrs: watch::Receiver<Vec<IpAddr>>,
        mut inventory: watch::Receiver<Inventory>,
        cancel: &CancellationToken,
    ) {
        let mut next_tick = Instant::now();
        let mut last_announce: Option<Instant> = None;
        let mut backoff = FIRST_BACKOFF;
        let mut warned = false;
        let mut forgotten_in_a_row = 0u32;
        let (mut addrs_open, mut inventory_open) = (true, true);
        loop {
            if cancel.is_cancelled() {
                return;
            }
            let round = self
                .round(&addrs, &inventory, &mut next_tick, &mut last_announce)
                .await;
            let failed = match round {
                Ok(()) => {
                    if warned {
                        tracing::info!(tracker = %self.api.base(), "the tracker is reachable again");
                    }
                    warned = false;
                    backoff = FIRST_BACKOFF;
                    forgotten_in_a_row = 0;
                    None
                }
                Err(Failure::Forgotten(e)) => {
                    forgotten_in_a_row += 1;
                    tracing::info!(tracker = %self.api.base(), error = %e, "the tracker forgot this node; registering again");
                    self.session = None;
                    self.acked = None;
                    // Register again at once, unless that keeps failing.
                    (forgotten_in_a_row > 2).then_some(e)
                }
                Err(Failure::Other(e)) => Some(e),
            };
            if let Some(e) = failed {
                if !warned {
                    tracing::warn!(tracker = %self.api.base(), error = %e, "tracker unavailable; retrying with backoff (the node keeps working on its LAN)");
                    warned = true;
                } else {
                    tracing::debug!(tracker = %self.api.base(), error = %e, "tracker still unavailable");
                }
                let cap = self
                    .session
                    .as_ref()
                    .map_or(MAX_BACKOFF, |s| MAX_BACKOFF.max(s.heartbeat));
                let jitter = rand::random_range(0.8..1.2);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
                }
                backoff = (backoff * 2).min(cap);
                continue;
            }
            if self.session.is_none() {
                continue;
            }
            // Wait for the next heartbeat, an inventory change (sent at most
            // once per MIN_ANNOUNCE_GAP) or new addresses.
            let pending = {
                let inv = inventory.borrow();
                published(&inv) && self.acked.as_ref().is_none_or(|a| a.digest != inv.digest)
            };
            let mut wake = next_tick;
            if pending {
                let at = last_announce.map_or(Instant::now(), |t| t + MIN_ANNOUNCE_GAP);
                wake = wake.min(at);
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(wake) => {}
                r = inventory.changed(), if inventory_open && !pending => {
                    if r.is_err() { inventory_open = false; }
                }
                r = addrs.changed(), if addrs_open => {
                    if r.is_err() { addrs_open = false; } else { next_tick = Instant::now(); }
                }
            }
        }
    }

    /// One round: register if needed, send the inventory if it changed, and
    /// when due, heartbeat and refresh peers.
    async fn round(
        &mut self,
        addrs: &watch::Receiver<Vec<IpAddr>>,
        inventory: &watch::Receiver<Inventory>,
        next_tick: &mut Instant,
        last_announce: &mut Option<Instant>,
    ) -> Result<(), Failure> {
        let my_addrs = reportable(&addrs.borrow());
        if self.session.is_none() {
            let inv = inventory.borrow().clone();
            self.register(my_addrs.clone(), &inv).await?;
            *next_tick = Instant::now();
        }
        let inv = inventory.borrow().clone();
        let due = last_announce.is_none_or(|t| t.elapsed() >= MIN_ANNOUNCE_GAP);
        if published(&inv) && self.acked.as_ref().is_none_or(|a| a.digest != inv.digest) && due {
            *last_announce = Some(Instant::now());
            self.announce(&inv).await?;
        }
        if Instant::now() >= *next_tick {
            let session = self.session.as_ref().expect("registered above");
            let (token, interval) = (session.token.clone(), session.heartbeat);
            let req = HeartbeatRequest {
                digest: inv.digest,
                addrs: (my_addrs != self.sent_addrs).then(|| my_addrs.clone()),
            };
            let hb = self.api.heartbeat(self.me.id, &token, &req).await?;
            if req.addrs.is_some() {
                self.sent_addrs = my_addrs.clone();
            }
            if let Some(s) = self.session.as_mut() {
                s.observed = hb.observed_addr;
                if hb.heartbeat_secs.is_finite() && hb.heartbeat_secs >= 0.05 {
                    s.heartbeat = Duration::from_secs_f64(hb.heartbeat_secs.min(3600.0));
                }
            }
            if hb.send_inventory && published(&inv) {
                self.acked = None;
                *last_announce = Some(Instant::now());
                self.announce(&inv).await?;
            }
            self.poll_peers().await?;
            self.merge(&my_addrs, interval);
            *next_tick = Instant::now() + interval;
        }
        Ok(())
    }

    async fn register(&mut self, my_addrs: Vec<IpAddr>, inv: &Inventory) -> Result<(), Failure> {
        let req = RegisterRequest {
            id: self.me.id,
            name: self.me.name.clone(),
            port: self.me.tcp_port,
            addrs: my_addrs.clone(),
        };
        let r = self.api.register(&req).await.map_err(Failure::Other)?;
        tracing::info!(tracker = %self.api.base(), observed = %r.observed_addr, "registered with the tracker");
        let heartbeat = if r.heartbeat_secs.is_finite() && r.heartbeat_secs >= 0.05 {
            Duration::from_secs_f64(r.heartbeat_secs.min(3600.0))
        } else {
            Duration::from_secs(10)
        };
        self.session = Some(Session {
            token: r.token,
            heartbeat,
            observed: r.observed_addr,
        });
        self.sent_addrs = my_addrs;
        // The tracker may still hold what this node announced before.
        self.acked = match r.stored_digest {
            Some(d) if d == inv.digest => Some(Acked {
                digest: d,
                entries: self.entries(inv, r.max_files),
            }),
            _ => None,
        };
        if self.epoch.as_deref() != Some(r.epoch.as_str()) {
            self.since = 0;
        }
        self.max_files = r.max_files;
        Ok(())
    }

    /// The inventory as the tracker takes it: checked, sorted by id, unique
    /// ids, at most the tracker's cap.
    fn entries(&mut self, inv: &Inventory, max: u32) -> Vec<Entry> {
        let mut out: Vec<Entry> = Vec::with_capacity(inv.entries.len());
        let mut skipped = 0usize;
        for e in inv.entries.iter() {
            let entry = Entry::from_inventory(e);
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
    async fn announce(&mut self, inv: &Inventory) -> Result<(), Failure> {
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
                self.me.id,
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
                    self.me.id,
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
            self.api.announce_patch(self.me.id, token, &req).await?;
            if last {
                return Ok(());
            }
        }
    }

    /// Reads what changed in the tracker's peer list since the last poll.
    async fn poll_peers(&mut self) -> Result<(), ClientError> {
        for _ in 0..MAX_PAGES {
            let resp = self
                .api
                .peers(&PeersQuery {
                    since: self.since,
                    epoch: self.epoch.clone(),
                    limit: None,
                })
                .await?;
            if resp.full {
                self.peers.clear();
            }
            for g in &resp.gone {
                self.peers.remove(g);
                // Deregistered or timed out at the tracker: a peer known
                // only from it is gone now, not after three intervals.
                if self.dict.peers.with(g, |p| {
                    p.online && p.found_via.iter().all(|v| *v == FoundVia::Tracker)
                }) == Some(true)
                {
                    // The tracker's word is checked over TCP first.
                    tracing::info!(peer = %g.short(), "peer left the tracker; checking that it left");
                    self.dict.peers.claim_departure(*g);
                }
            }
            for p in resp.peers {
                if p.id == self.me.id || check_node_name(&p.name).is_err() || p.port == 0 {
                    continue;
                }
                if self.peers.len() < MAX_PEERS || self.peers.contains_key(&p.id) {
                    self.peers.insert(p.id, p);
                }
            }
            self.since = resp.seq;
            self.epoch = Some(resp.epoch);
            if !resp.more {
                break;
            }
        }
        Ok(())
    }

    /// Tells the dictionary about every online peer with a complete
    /// inventory at the tracker, once per address, best address last.
    fn merge(&self, my_addrs: &[IpAddr], interval: Duration) {
        let Some(session) = &self.session else {
            return;
        };
        for p in self.peers.values() {
            let Some(digest) = p.digest else {
                continue;
            };
            for ip in candidates(p, session.observed, my_addrs) {
                let seen = crate::dict::Sighting {
                    id: p.id,
                    name: &p.name,
                    addr: SocketAddr::new(ip, p.port),
                    via: FoundVia::Tracker,
                    interval,
                    digest,
                    contents: p.files,
                };
                self.dict.observe(seen, std::time::Instant::now());
            }
        }
    }

    /// Deregisters, bounded by [`DEREGISTER_TIMEOUT`].
    async fn leave(&mut self) {
        let Some(s) = self.session.take() else {
            return;
        };
        match tokio::time::timeout(
            DEREGISTER_TIMEOUT,
            self.api.deregister(self.me.id, &s.token),
        )
        .await
        {
            Ok(Ok(())) => {
                tracing::info!(tracker = %self.api.base(), "deregistered from the tracker")
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "could not deregister from the tracker"),
            Err(_) => {
                tracing::debug!(tracker = %self.api.base(), "the tracker did not answer the deregistration in time")
            }
        }
    }
}

/// True once the store has published an inventory (the watch starts with a
/// zero digest before the first scan).
fn published(inv: &Inventory) -> bool {
    inv.digest != [0; 16]
}

/// This node's addresses worth telling others: unicast, not loopback, not
/// IPv6 link-local (useless without a scope), at most 16.
fn reportable(addrs: &[IpAddr]) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = Vec::new();
    for a in addrs {
        let a = a.to_canonical();
        if a.is_loopback() || a.is_unspecified() || a.is_multicast() || is_link_local_v6(&a) {
            continue;
        }
        if a == IpAddr::from([255, 255, 255, 255]) || out.contains(&a) {
            continue;
        }
        out.push(a);
        if out.len() == super::proto::MAX_ADDRS {
            break;
        }
    }
    out
}

fn is_link_local_v6(a: &IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

fn same_subnet(a: &IpAddr, b: &IpAddr) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => a.octets()[..3] == b.octets()[..3],
        (IpAddr::V6(a), IpAddr::V6(b)) => a.segments()[..4] == b.segments()[..4],
        _ => false,
    }
}

/// The addresses of `p` this node may reach, worst first:
/// - loopback only when both this node and `p` reach the tracker over
///   loopback (all three on one host), and then it is the best;
/// - next best, an address on one of this node's subnets;
/// - then the address the tracker sees `p`'s requests come from;
/// - then any other address `p` reported.
fn candidates(p: &PeerInfo, observed: IpAddr, mine: &[IpAddr]) -> Vec<IpAddr> {
    let same_host = observed.is_loopback() && p.source.is_loopback();
    let mut scored: Vec<(u8, IpAddr)> = Vec::new();
    for a in &p.addrs {
        let a = a.to_canonical();
        if scored.iter().any(|(_, x)| *x == a)
            || a.is_unspecified()
            || a.is_multicast()
            || is_link_local_v6(&a)
        {
            continue;
        }
        let score = if a.is_loopback() {
            if !same_host {
                continue;
            }
            4
        } else if mine.iter().any(|m| same_subnet(m, &a)) {
            3
        } else if a == p.source {
            2
        } else {
            1
        };
        scored.push((score, a));
    }
    scored.sort_by_key(|(s, _)| *s);
    scored.into_iter().map(|(_, a)| a).collect()
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

    fn peer(source: &str, addrs: &[&str]) -> PeerInfo {
        PeerInfo {
            id: NodeId([9; 16]),
            name: "p".into(),
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            source: source.parse().unwrap(),
            port: 7373,
            digest: Some([1; 16]),
            files: 1,
            last_seen: String::new(),
            last_seen_secs: 0.0,
        }
    }

    #[test]
    fn best_address_comes_last() {
        let lan: IpAddr = "10.1.0.5".parse().unwrap();
        let p = peer(
            "10.2.0.7",
            &[
                "10.2.0.7",
                "10.1.0.9",
                "192.168.5.5",
                "fe80::1",
                "127.0.0.1",
            ],
        );
        let got = candidates(&p, lan, &[lan]);
        let want: Vec<IpAddr> = ["192.168.5.5", "10.2.0.7", "10.1.0.9"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(got, want);
        // All on the tracker's host: loopback works and wins.
        let p = peer("127.0.0.1", &["127.0.0.1", "10.2.0.7"]);
        let lo: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(candidates(&p, lo, &[]).last(), Some(&lo));
        // A peer on the tracker's host seen from elsewhere: no loopback.
        assert_eq!(
            candidates(&p, lan, &[lan]),
            vec!["10.2.0.7".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn reportable_addresses() {
        let addrs: Vec<IpAddr> = [
            "127.0.0.1",
            "10.0.0.2",
            "fe80::2",
            "10.0.0.2",
            "2001:db8::1",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        let want: Vec<IpAddr> = ["10.0.0.2", "2001:db8::1"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        assert_eq!(reportable(&addrs), want);
    }
}
