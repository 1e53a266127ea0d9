//! The registry of transfers in progress: every download this node runs
//! (progress, rate, ETA, bytes per peer, verification state, a cancel
//! handle) and every upload it serves right now (file, peer, bytes, rate).
//! Downloads are fed by [`crate::service`] from the fetch events; uploads
//! by the peer server's chunk hook. Read by `lanshare transfers`, the web
//! API and its event stream. Plain bookkeeping: it never starts, stops or
//! schedules a transfer itself (a cancel only fires the download's token).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::api::FetchEvent;
pub use crate::api::PeerBytes;
use crate::id::ContentId;

/// The window a rate is measured over.
const RATE_WINDOW: Duration = Duration::from_secs(4);
/// An upload with no chunk served for this long is over.
pub const UPLOAD_IDLE: Duration = Duration::from_secs(3);
/// A finished download stays listed this long (so a page sees its end).
pub const KEEP_FINISHED: Duration = Duration::from_secs(60);

/// Where a download stands (why it failed is in `detail`). A plain
/// enum: the control socket's postcard cannot carry tagged ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DownloadState {
    /// Waiting for holders and the manifest.
    Starting,
    /// Chunks arrive; each is hashed against the manifest before it is kept.
    Downloading,
    /// Every chunk verified and the whole file's SHA-256 computed.
    Done,
    Failed,
    Cancelled,
    /// A download resumed after a restart (or started from the dashboard)
    /// waits for a holder to come online; `detail` says why.
    Waiting,
    /// The disk filled up: the download waits for space (`detail` says
    /// which file needs how much where) and goes on once it is freed.
    Paused,
}

/// A download as `transfers` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DownloadView {
    /// The registry's number for it (`lanshare cancel ID`).
    pub transfer: u64,
    pub query: String,
    /// Content id (hex); empty until the name resolved.
    pub id: String,
    pub name: String,
    pub size: u64,
    /// Bytes verified and kept (resumed ones included).
    pub done: u64,
    /// Bytes per second over the last few seconds.
    pub rate: f64,
    /// Seconds left at the current rate; `None` when unknown.
    pub eta_secs: Option<f64>,
    /// Peers being pulled from now.
    pub active_peers: u32,
    pub peers: Vec<PeerBytes>,
    pub state: DownloadState,
    /// Why it failed.
    pub detail: Option<String>,
    /// What is verified so far, in words.
    pub verification: String,
    pub secs: f64,
}

/// An upload being served now.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UploadView {
    pub transfer: u64,
    pub id: String,
    pub name: String,
    pub size: u64,
    /// `name@address` of the peer downloading (its address, before hello).
    pub peer: String,
    /// Bytes of this content sent on this connection.
    pub sent: u64,
    pub rate: f64,
    pub secs: f64,
}

/// Every transfer in progress.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TransfersView {
    pub downloads: Vec<DownloadView>,
    pub uploads: Vec<UploadView>,
}

/// Bytes over time, for a rate.
#[derive(Debug, Default)]
struct Meter {
    samples: VecDeque<(Instant, u64)>,
}

impl Meter {
    fn sample(&mut self, now: Instant, total: u64) {
        self.samples.push_back((now, total));
        while self.samples.len() > 2 && now.duration_since(self.samples[1].0) >= RATE_WINDOW {
            self.samples.pop_front();
        }
    }

    fn rate(&self, now: Instant) -> f64 {
        let (Some(first), Some(last)) = (self.samples.front(), self.samples.back()) else {
            return 0.0;
        };
        // A transfer that went quiet has no rate.
        if now.duration_since(last.0) > RATE_WINDOW {
            return 0.0;
        }
        let secs = now.duration_since(first.0).as_secs_f64();
        if secs < 0.2 {
            return 0.0;
        }
        (last.1 - first.1) as f64 / secs
    }
}

struct Download {
    query: String,
    id: String,
    name: String,
    size: u64,
    done: u64,
    active_peers: u32,
    peers: BTreeMap<String, u64>,
    state: DownloadState,
    detail: Option<String>,
    sha256: Option<String>,
    meter: Meter,
    started: Instant,
    ended: Option<Instant>,
    cancel: CancellationToken,
}

struct Upload {
    id: ContentId,
    name: String,
    size: u64,
    peer: String,
    sent: u64,
    meter: Meter,
    started: Instant,
    last: Instant,
}

#[derive(Default)]
struct Inner {
    next: u64,
    downloads: BTreeMap<u64, Download>,
    /// By (connection, content).
    uploads: HashMap<(SocketAddr, ContentId), (u64, Upload)>,
}

/// The registry; cheap to share behind an `Arc`.
#[derive(Default)]
pub struct Transfers {
    /// Std mutex: every critical section is a few map operations.
    inner: Mutex<Inner>,
    /// Bumped on every change, so readers can tell whether to look again.
    generation: AtomicU64,
}

/// A number naming one download in the registry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DownloadId(pub u64);

/// One chunk served, as the peer server reports it.
pub struct Served<'a> {
    pub conn: SocketAddr,
    pub peer: &'a str,
    pub id: ContentId,
    pub name: &'a str,
    pub size: u64,
    pub bytes: u64,
}

impl std::fmt::Debug for Transfers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Transfers(generation {})", self.generation())
    }
}

impl Transfers {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().expect("transfers lock")
    }

    fn bump(&self) {
        self.generation.fetch_add(1, Ordering::Relaxed);
    }

    /// Changes since start; equal values mean nothing changed.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Relaxed)
    }

    /// Registers a download of `query`, stopped by `cancel`.
    pub fn start_download(
        &self,
        query: &str,
        cancel: CancellationToken,
        now: Instant,
    ) -> DownloadId {
        let mut inner = self.lock();
        inner.next += 1;
        let n = inner.next;
        inner.downloads.insert(
            n,
            Download {
                query: query.to_string(),
                id: String::new(),
                name: query.to_string(),
                size: 0,
                done: 0,
                active_peers: 0,
                peers: BTreeMap::new(),
                state: DownloadState::Starting,
                detail: None,
                sha256: None,
                meter: Meter::default(),
                started: now,
                ended: None,
                cancel,
            },
        );
        drop(inner);
        self.bump();
        DownloadId(n)
    }

    /// Records one fetch event of download `d`.
    pub fn download_event(&self, d: DownloadId, ev: &FetchEvent, now: Instant) {
        let mut inner = self.lock();
        let Some(dl) = inner.downloads.get_mut(&d.0) else {
            return;
        };
        match ev {
            FetchEvent::Started {
                id,
                name,
                size,
                already,
                ..
            } => {
                (dl.id, dl.name, dl.size, dl.done) = (id.clone(), name.clone(), *size, *already);
                dl.state = DownloadState::Downloading;
                dl.meter.sample(now, *already);
            }
            FetchEvent::Progress { done, size, peers } => {
                (dl.done, dl.size, dl.active_peers) = (*done, *size, *peers);
                dl.meter.sample(now, *done);
                if matches!(dl.state, DownloadState::Paused | DownloadState::Waiting) {
                    (dl.state, dl.detail) = (DownloadState::Downloading, None);
                }
            }
            FetchEvent::Paused { reason } => {
                (dl.state, dl.detail) = (DownloadState::Paused, Some(reason.clone()));
                dl.active_peers = 0;
            }
            FetchEvent::PeerBytes { peers } => {
                for p in peers {
                    dl.peers.insert(p.peer.clone(), p.bytes);
                }
            }
            FetchEvent::Done(done) => {
                (dl.id, dl.size, dl.done) = (done.id.clone(), done.size, done.size);
                dl.state = DownloadState::Done;
                dl.sha256 = Some(done.sha256.clone());
                dl.ended = Some(now);
            }
            FetchEvent::Failed { reason } => {
                if dl.cancel.is_cancelled() {
                    dl.state = DownloadState::Cancelled;
                } else {
                    (dl.state, dl.detail) = (DownloadState::Failed, Some(reason.clone()));
                }
                dl.ended = Some(now);
            }
            FetchEvent::NotFound { .. } => {
                dl.state = DownloadState::Failed;
                dl.detail = Some("nothing on the network has that name".into());
                dl.ended = Some(now);
            }
            FetchEvent::Ambiguous { .. } => {
                dl.state = DownloadState::Failed;
                dl.detail = Some("several contents match that name".into());
                dl.ended = Some(now);
            }
            FetchEvent::PeerDropped { .. } | FetchEvent::Slow { .. } | FetchEvent::Files { .. } => {
            }
        }
        drop(inner);
        self.bump();
    }

    /// Download `d` ended without a final event (its task panicked or
    /// was stopped).
    pub fn end_download(&self, d: DownloadId, now: Instant) {
        let mut inner = self.lock();
        if let Some(dl) = inner.downloads.get_mut(&d.0)
            && dl.ended.is_none()
        {
            if dl.cancel.is_cancelled() {
                dl.state = DownloadState::Cancelled;
            } else {
                dl.state = DownloadState::Failed;
                dl.detail = Some("the download stopped".into());
            }
            dl.ended = Some(now);
        }
        drop(inner);
        self.bump();
    }

    /// Download `d` is for content `id` (hex), saved as `name`: known
    /// before its first event when it resumes a recorded job.
    pub fn identify(&self, d: DownloadId, id: &str, name: &str, size: u64) {
        let mut inner = self.lock();
        if let Some(dl) = inner.downloads.get_mut(&d.0) {
            (dl.id, dl.name, dl.size) = (id.to_string(), name.to_string(), size);
        }
        drop(inner);
        self.bump();
    }

    /// Forgets download `d` (another took it over); later events of it
    /// are ignored.
    pub fn forget(&self, d: DownloadId) {
        self.lock().downloads.remove(&d.0);
        self.bump();
    }

    /// Download `d` waits (for a holder, or before trying again): `why`.
    pub fn waiting(&self, d: DownloadId, why: String) {
        let mut inner = self.lock();
        if let Some(dl) = inner.downloads.get_mut(&d.0)
            && dl.ended.is_none()
        {
            (dl.state, dl.detail, dl.active_peers) = (DownloadState::Waiting, Some(why), 0);
        }
        drop(inner);
        self.bump();
    }

    /// Lists a download that was not running when the user cancelled it
    /// (a recorded job), as cancelled; its number.
    pub fn cancelled_job(&self, query: &str, id: &str, name: &str, now: Instant) -> u64 {
        let d = self.start_download(query, CancellationToken::new(), now);
        self.identify(d, id, name, 0);
        let mut inner = self.lock();
        if let Some(dl) = inner.downloads.get_mut(&d.0) {
            (dl.state, dl.ended) = (DownloadState::Cancelled, Some(now));
        }
        drop(inner);
        self.bump();
        d.0
    }

    /// The running downloads `target` names (see [`Transfers::cancel`]):
    /// their content ids (hex, empty while unknown) and queries.
    pub fn named(&self, target: &str) -> Vec<(String, String)> {
        let inner = self.lock();
        inner
            .downloads
            .iter()
            .filter(|(n, d)| names(**n, d, target))
            .map(|(_, d)| (d.id.clone(), d.query.clone()))
            .collect()
    }

    /// Cancels the running downloads `target` names: a registry number,
    /// a content id prefix (4 hex digits at least), or a name or query
    /// (case-insensitive). Returns the numbers cancelled.
    pub fn cancel(&self, target: &str) -> Vec<u64> {
        let inner = self.lock();
        let hit: Vec<u64> = inner
            .downloads
            .iter()
            .filter(|(n, d)| names(**n, d, target))
            .map(|(n, d)| {
                d.cancel.cancel();
                *n
            })
            .collect();
        drop(inner);
        self.bump();
        hit
    }

    /// One chunk served (the peer server's hook).
    pub fn served(&self, s: Served<'_>, now: Instant) {
        let mut inner = self.lock();
        if !inner.uploads.contains_key(&(s.conn, s.id)) {
            inner.next += 1;
        }
        let n = inner.next;
        let (_, up) = inner.uploads.entry((s.conn, s.id)).or_insert_with(|| {
            (
                n,
                Upload {
                    id: s.id,
                    name: s.name.to_string(),
                    size: s.size,
                    peer: s.peer.to_string(),
                    sent: 0,
                    meter: Meter::default(),
                    started: now,
                    last: now,
                },
            )
        });
        if up.sent == 0 {
            up.meter.sample(now, 0);
        }
        up.sent += s.bytes;
        up.last = now;
        up.peer = s.peer.to_string();
        up.meter.sample(now, up.sent);
        drop(inner);
        self.bump();
    }

    /// The peer server's hook: `bytes` of `source` sent on the connection
    /// from `conn` to `peer` (`name@address`).
    pub fn chunk_served(
        &self,
        conn: SocketAddr,
        peer: &str,
        source: &crate::store::Source,
        bytes: u64,
        now: Instant,
    ) {
        let served = Served {
            conn,
            peer,
            id: source.id(),
            name: source.name(),
            size: source.manifest().size,
            bytes,
        };
        self.served(served, now);
    }

    /// Every transfer at `now`; forgets uploads idle for [`UPLOAD_IDLE`]
    /// and downloads finished [`KEEP_FINISHED`] ago.
    pub fn view(&self, now: Instant) -> TransfersView {
        let mut inner = self.lock();
        inner
            .uploads
            .retain(|_, (_, u)| now.duration_since(u.last) < UPLOAD_IDLE);
        inner.downloads.retain(|_, d| {
            d.ended
                .is_none_or(|e| now.duration_since(e) < KEEP_FINISHED)
        });
        let downloads = inner
            .downloads
            .iter()
            .rev()
            .map(|(n, d)| download_view(*n, d, now))
            .collect();
        let mut uploads: Vec<UploadView> = inner
            .uploads
            .values()
            .map(|(n, u)| UploadView {
                transfer: *n,
                id: u.id.to_hex(),
                name: u.name.clone(),
                size: u.size,
                peer: u.peer.clone(),
                sent: u.sent,
                rate: u.meter.rate(now),
                secs: now.duration_since(u.started).as_secs_f64(),
            })
            .collect();
        uploads.sort_by_key(|u| std::cmp::Reverse(u.transfer));
        TransfersView { downloads, uploads }
    }
}

/// Whether `target` names running download `n`: its number, a content
/// id prefix (4 hex digits at least), its name or its query
/// (case-insensitive).
fn names(n: u64, d: &Download, target: &str) -> bool {
    let t = target.trim().to_lowercase();
    let hex = t.len() >= 4 && t.chars().all(|c| c.is_ascii_hexdigit());
    d.ended.is_none()
        && (n.to_string() == t
            || (hex && !d.id.is_empty() && d.id.starts_with(&t))
            || d.name.to_lowercase() == t
            || d.query.to_lowercase() == t)
}

fn download_view(n: u64, d: &Download, now: Instant) -> DownloadView {
    let running = d.ended.is_none();
    let rate = if running { d.meter.rate(now) } else { 0.0 };
    let left = d.size.saturating_sub(d.done) as f64;
    let eta_secs = (running && rate > 0.0 && d.size > 0).then(|| left / rate);
    let verification = match (&d.state, &d.sha256) {
        (DownloadState::Done, Some(sha)) => format!("complete file verified, sha256 {sha}"),
        (DownloadState::Starting, _) => "waiting for the manifest".into(),
        (DownloadState::Waiting | DownloadState::Paused, _) if d.done > 0 => {
            "the chunks kept are re-checked against the manifest before use".into()
        }
        (DownloadState::Waiting | DownloadState::Paused, _) => "nothing fetched yet".into(),
        _ => "each chunk checked against the manifest before it is kept".into(),
    };
    let end = d.ended.unwrap_or(now);
    DownloadView {
        transfer: n,
        query: d.query.clone(),
        id: d.id.clone(),
        name: d.name.clone(),
        size: d.size,
        done: d.done,
        rate,
        eta_secs,
        active_peers: if running { d.active_peers } else { 0 },
        peers: d
            .peers
            .iter()
            .map(|(peer, bytes)| PeerBytes {
                peer: peer.clone(),
                bytes: *bytes,
            })
            .collect(),
        state: d.state,
        detail: d.detail.clone(),
        verification,
        secs: end.duration_since(d.started).as_secs_f64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_download_reports_progress_rate_and_its_end() {
        let t = Transfers::default();
        let t0 = Instant::now();
        let d = t.start_download("song", CancellationToken::new(), t0);
        let started = FetchEvent::Started {
            id: "ab".repeat(16),
            name: "song.ogg".into(),
            size: 1000,
            holders: 1,
            already: 0,
        };
        t.download_event(d, &started, t0);
        let progress = FetchEvent::Progress {
            done: 500,
            size: 1000,
            peers: 1,
        };
        t.download_event(d, &progress, t0 + Duration::from_secs(1));
        let v = t.view(t0 + Duration::from_secs(1));
        let dl = &v.downloads[0];
        assert_eq!(
            (dl.done, dl.size, dl.state),
            (500, 1000, DownloadState::Downloading)
        );
        assert!((dl.rate - 500.0).abs() < 1.0, "{}", dl.rate);
        assert!((dl.eta_secs.unwrap() - 1.0).abs() < 0.01);
        assert_eq!(t.cancel("SONG.OGG"), vec![1]);
        let failed = FetchEvent::Failed {
            reason: "cancelled".into(),
        };
        t.download_event(d, &failed, t0 + Duration::from_secs(2));
        let v = t.view(t0 + Duration::from_secs(2));
        assert_eq!(v.downloads[0].state, DownloadState::Cancelled);
        assert!(
            t.cancel("1").is_empty(),
            "an ended download is not cancelled again"
        );
        assert!(t.view(t0 + KEEP_FINISHED * 2).downloads.is_empty());
    }

    #[test]
    fn uploads_are_listed_while_chunks_flow() {
        let t = Transfers::default();
        let t0 = Instant::now();
        let conn: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let id = ContentId([7; 32]);
        for i in 0..3u64 {
            let s = Served {
                conn,
                peer: "beta@10.0.0.2:5000",
                id,
                name: "clip.mp4",
                size: 3000,
                bytes: 1000,
            };
            t.served(s, t0 + Duration::from_secs(i));
        }
        let v = t.view(t0 + Duration::from_secs(2));
        assert_eq!(v.uploads.len(), 1);
        assert_eq!(v.uploads[0].sent, 3000);
        assert!(v.uploads[0].rate > 0.0);
        assert!(
            t.view(t0 + Duration::from_secs(2) + UPLOAD_IDLE)
                .uploads
                .is_empty()
        );
    }
}
