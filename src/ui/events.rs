//! `GET /api/v1/events`: one Server-Sent Events stream per open page.
//! One [`Hub`] per dashboard detects changes on the node side (the
//! dictionary's change notification, the store's inventory, the transfers
//! registry's counter, the transfer logs' lengths, and a 250 ms look at
//! peers, status and shares) and broadcasts each change once, encoded,
//! to every stream. Events: `status`, `peers`, `contents` (the library
//! changed: ask for the page again), `transfers`, `shares`, `log` (one
//! new history row) and `resync` (events were missed: ask for everything).
//! Reads the service only.

use std::io::{Read, Seek, SeekFrom};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast;

use super::AppState;
use crate::service::Service;

/// How often the hub looks for changes.
const TICK: Duration = Duration::from_millis(250);
/// Peers, status and the library are sent again at least this often.
const REFRESH: Duration = Duration::from_secs(5);
/// A comment line keeps idle streams (and proxies) open.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// Frames buffered per stream before a slow page misses some (and resyncs).
const BACKLOG: usize = 256;

/// One SSE frame: `event: NAME` and one line of JSON.
fn frame<T: Serialize>(event: &str, data: &T) -> String {
    let json = serde_json::to_string(data).unwrap_or_else(|_| "null".into());
    format!("event: {event}\ndata: {json}\n\n")
}

/// Broadcasts every change, encoded, to every open stream.
pub struct Hub {
    tx: broadcast::Sender<Arc<str>>,
}

/// What the hub sent last, to tell a change.
#[derive(Default)]
struct Last {
    status: String,
    peers: String,
    transfers: String,
    shares: String,
    generation: u64,
    /// A transfer was running at the last look.
    running: bool,
    refreshed: Option<Instant>,
    contents_dirty: bool,
    /// Lengths of the download and upload logs already read.
    log_lens: [u64; 2],
}

impl Hub {
    pub fn new() -> Hub {
        Hub {
            tx: broadcast::channel(BACKLOG).0,
        }
    }

    fn send(&self, frame: String) {
        let _ = self.tx.send(frame.into());
    }

    /// Watches the node and broadcasts its changes, until dropped.
    pub async fn run(self: Arc<Self>, service: Arc<Service>) {
        let mut last = Last {
            log_lens: service.log_paths().map(|p| file_len(&p)),
            ..Last::default()
        };
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut inventory = service.inventory_changes();
        loop {
            let changed = service.contents_changed().notified();
            tokio::select! {
                _ = changed => last.contents_dirty = true,
                Ok(()) = inventory.changed() => last.contents_dirty = true,
                _ = tick.tick() => self.look(&service, &mut last, Instant::now()),
            }
        }
    }

    /// One look at the node: sends what changed since `last`.
    fn look(&self, service: &Service, last: &mut Last, now: Instant) {
        if self.tx.receiver_count() == 0 {
            last.refreshed = None;
            return;
        }
        let refresh = last
            .refreshed
            .is_none_or(|t| now.duration_since(t) >= REFRESH);
        if refresh {
            last.refreshed = Some(now);
            last.contents_dirty = true;
        }
        // The registry's counter tells a change; while a transfer runs its
        // rate and ETA change on every look.
        let gen_now = service.transfers_generation();
        let transfers = service.transfers();
        let running = !transfers.downloads.is_empty() || !transfers.uploads.is_empty();
        // (One more look after the last ends, to send the empty list.)
        if gen_now != last.generation || running || last.running || refresh {
            let t = frame("transfers", &transfers);
            if t != last.transfers {
                self.send(t.clone());
                last.transfers = t;
            }
        }
        (last.generation, last.running) = (gen_now, running);
        let rows = super::routes::peer_rows(service.peers(), &transfers);
        let p = frame("peers", &rows);
        if p != last.peers && (refresh || fingerprint(&p) != fingerprint(&last.peers)) {
            self.send(p.clone());
            last.peers = p;
            last.contents_dirty = true;
        }
        if std::mem::take(&mut last.contents_dirty) {
            self.send(frame("contents", &serde_json::json!({})));
        }
        let s = frame("status", &service.overview());
        if s != last.status && (refresh || fingerprint(&s) != fingerprint(&last.status)) {
            self.send(s.clone());
            last.status = s;
        }
        let sh = frame("shares", &service.shares());
        if sh != last.shares {
            self.send(sh.clone());
            last.shares = sh;
        }
        for (i, path) in service.log_paths().iter().enumerate() {
            for row in new_rows(path, &mut last.log_lens[i]) {
                self.send(frame("log", &row));
            }
        }
    }
}

/// A frame without the fields that change on every look (last seen,
/// counters), so only real changes are sent between refreshes.
fn fingerprint(frame: &str) -> String {
    const VOLATILE: [&str; 4] = [
        "last_seen",
        "discovery_bytes_sent",
        "inventory_bytes_served",
        "malformed",
    ];
    frame
        .split(',')
        .filter(|field| !VOLATILE.iter().any(|v| field.contains(v)))
        .collect()
}

fn file_len(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The whole lines appended to `path` since `*read` bytes, as rows.
fn new_rows(path: &std::path::Path, read: &mut u64) -> Vec<crate::history::HistoryRow> {
    let len = file_len(path);
    if len < *read {
        *read = 0; // rotated or truncated
    }
    if len == *read {
        return Vec::new();
    }
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let mut buf = Vec::new();
    if f.seek(SeekFrom::Start(*read)).is_err() || f.take(1 << 20).read_to_end(&mut buf).is_err() {
        return Vec::new();
    }
    let Some(end) = buf.iter().rposition(|b| *b == b'\n') else {
        return Vec::new();
    };
    *read += end as u64 + 1;
    String::from_utf8_lossy(&buf[..end])
        .lines()
        .filter_map(crate::history::parse_line)
        .collect()
}

/// The current state, as the first frames of a new stream.
fn snapshot(service: &Service) -> String {
    let transfers = service.transfers();
    [
        frame("status", &service.overview()),
        frame(
            "peers",
            &super::routes::peer_rows(service.peers(), &transfers),
        ),
        frame("transfers", &transfers),
        frame("shares", &service.shares()),
        frame("contents", &serde_json::json!({})),
    ]
    .concat()
}

/// The event stream of one page: the current state, then every change,
/// until the page goes away or the node stops.
pub async fn stream(State(state): State<AppState>) -> Response {
    let mut rx = state.hub.tx.subscribe();
    let (mut writer, reader) = tokio::io::duplex(64 * 1024);
    let service = state.service.clone();
    state.tasks.spawn_until_cancelled("stream", async move {
        let mut out = snapshot(&service);
        let mut keepalive = tokio::time::interval(KEEPALIVE);
        loop {
            if writer.write_all(out.as_bytes()).await.is_err() {
                return; // the page went away
            }
            out = tokio::select! {
                got = rx.recv() => match got {
                    Ok(frame) => frame.to_string(),
                    Err(broadcast::error::RecvError::Lagged(_)) => frame("resync", &serde_json::json!({})),
                    Err(broadcast::error::RecvError::Closed) => return,
                },
                _ = keepalive.tick() => ": keepalive\n\n".to_string(),
            };
        }
    });
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(reader));
    let mut resp = body.into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}
