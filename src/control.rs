//! The local control endpoint: a Unix socket at `HOME/.lanshare/control.sock`
//! (mode 0600, so only the node's user can use it) through which `ls`,
//! `peers`, `fetch`, `share` and `status` talk to the running node.
//! Frames are `length u32 LE | postcard`; one request per connection, then
//! one response, a stream of fetch events ending with a final one, or the
//! pages of `ls` ([`LS_PAGE_ROWS`] rows each) ending with their count, so
//! neither side ever holds the whole listing.
//!
//! This module owns the framing, the server loop ([`serve`]: decode a
//! request, call the [`Service`], encode its answer) and the typed
//! [`Client`]. It answers nothing itself and prints nothing.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::api::{ContentView, FetchEvent, NodeStatus, PeerView};
use crate::manifest::Category;
use crate::service::Service;
use crate::task::Tasks;
use crate::transfers::TransfersView;

/// Largest request the node reads.
pub const MAX_REQUEST: u32 = 64 * 1024;
/// Largest response the CLI reads (an `ls` of a very large network).
pub const MAX_RESPONSE: u32 = 256 << 20;
/// Rows of `ls` per page: the node builds and encodes one page at a time.
pub const LS_PAGE_ROWS: usize = 256;

#[derive(Debug, Serialize, Deserialize)]
pub enum ControlRequest {
    Status,
    Ls {
        query: Option<String>,
        category: Option<Category>,
    },
    Peers,
    Fetch {
        query: String,
    },
    /// Rescan shared folders now (after `lanshare share`).
    Rescan,
    Transfers,
    /// Stop the downloads a number, name or id prefix names.
    Cancel {
        target: String,
    },
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ControlResponse {
    Status(NodeStatus),
    /// A page of `ls` rows, in order; more follow until [`ControlResponse::LsEnd`].
    LsPage(Vec<ContentView>),
    Peers(Vec<PeerView>),
    Fetch(FetchEvent),
    Transfers(TransfersView),
    /// The numbers of the downloads cancelled.
    Cancelled(Vec<u64>),
    Ok,
    Error(String),
    /// The end of an `ls`: how many rows its pages held.
    LsEnd {
        rows: u64,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "no lanshare node is running in {home} (nothing answers at {socket}); start one there with `lanshare up`, or pass --home"
    )]
    NotRunning { home: PathBuf, socket: PathBuf },
    #[error("the control connection failed: {0}")]
    Io(#[from] std::io::Error),
    #[error("the node sent a malformed answer: {0}")]
    Malformed(String),
    #[error("message of {0} bytes is over the limit")]
    TooLarge(u32),
    #[error("unexpected answer from the node: {0}")]
    Unexpected(String),
}

pub async fn write_msg<T: Serialize>(s: &mut UnixStream, msg: &T) -> Result<(), ControlError> {
    let body = postcard::to_allocvec(msg).map_err(|e| ControlError::Malformed(e.to_string()))?;
    s.write_all(&(body.len() as u32).to_le_bytes()).await?;
    s.write_all(&body).await?;
    Ok(())
}

/// Reads one message; `Ok(None)` on a clean end of stream.
pub async fn read_msg<T: for<'de> Deserialize<'de>>(
    s: &mut UnixStream,
    max: u32,
) -> Result<Option<T>, ControlError> {
    let mut len = [0u8; 4];
    match s.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let len = u32::from_le_bytes(len);
    if len > max {
        return Err(ControlError::TooLarge(len));
    }
    let mut body = vec![0u8; len as usize];
    s.read_exact(&mut body).await?;
    postcard::from_bytes(&body)
        .map(Some)
        .map_err(|e| ControlError::Malformed(e.to_string()))
}

/// Unix socket paths are limited to ~107 bytes; a longer one is reached
/// through the /proc/self/fd alias of an open handle on its directory.
fn usable_path(socket: &Path) -> std::io::Result<(PathBuf, Option<std::fs::File>)> {
    if socket.as_os_str().len() < 100 {
        return Ok((socket.to_path_buf(), None));
    }
    let dir = std::fs::File::open(socket.parent().unwrap_or(Path::new(".")))?;
    let alias = PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&dir)
    ))
    .join(socket.file_name().unwrap_or_default());
    Ok((alias, Some(dir)))
}

/// Binds the control socket, refusing if a live node already owns it.
pub async fn bind(socket: &Path) -> Result<UnixListener, std::io::Error> {
    let (path, _dir) = usable_path(socket)?;
    if path.exists() {
        if UnixStream::connect(&path).await.is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!(
                    "another lanshare node is already running with this home (it answers at {})",
                    socket.display()
                ),
            ));
        }
        std::fs::remove_file(&path)?;
    }
    let listener = UnixListener::bind(&path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Connects to the node of `home`.
pub async fn connect(home: &Path, socket: &Path) -> Result<UnixStream, ControlError> {
    let not_running = || ControlError::NotRunning {
        home: home.to_path_buf(),
        socket: socket.to_path_buf(),
    };
    let (path, _dir) = usable_path(socket).map_err(|_| not_running())?;
    UnixStream::connect(&path).await.map_err(|_| not_running())
}

/// Sends one request and returns the single answer.
pub async fn call(
    home: &Path,
    socket: &Path,
    req: &ControlRequest,
) -> Result<ControlResponse, ControlError> {
    let mut s = connect(home, socket).await?;
    write_msg(&mut s, req).await?;
    read_msg(&mut s, MAX_RESPONSE)
        .await?
        .ok_or_else(|| ControlError::Malformed("no answer".into()))
}

/// The typed client of the node whose home is `home`: one method per
/// request, each returning the answer's type (a connection per call).
pub struct Client {
    home: PathBuf,
    socket: PathBuf,
}

/// An answer of the wrong kind.
fn unexpected(r: ControlResponse) -> ControlError {
    ControlError::Unexpected(format!("{r:?}"))
}

impl Client {
    /// A client of the node in `home` (absolute); connects on each call.
    pub fn new(home: &Path) -> Client {
        Client {
            home: home.to_path_buf(),
            socket: crate::store::Home::new(home).control_socket(),
        }
    }

    async fn call(&self, req: &ControlRequest) -> Result<ControlResponse, ControlError> {
        call(&self.home, &self.socket, req).await
    }

    pub async fn status(&self) -> Result<NodeStatus, ControlError> {
        match self.call(&ControlRequest::Status).await? {
            ControlResponse::Status(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// Every row of `ls`, collected (see [`Client::ls_pages`] to take
    /// them a page at a time).
    pub async fn ls(
        &self,
        query: Option<String>,
        category: Option<Category>,
    ) -> Result<Vec<ContentView>, ControlError> {
        let mut pages = self.ls_pages(query, category).await?;
        let mut all = Vec::new();
        while let Some(page) = pages.next().await? {
            all.extend(page);
        }
        Ok(all)
    }

    /// Starts an `ls`; its rows arrive a page at a time through
    /// [`LsPages::next`].
    pub async fn ls_pages(
        &self,
        query: Option<String>,
        category: Option<Category>,
    ) -> Result<LsPages, ControlError> {
        let mut s = connect(&self.home, &self.socket).await?;
        write_msg(&mut s, &ControlRequest::Ls { query, category }).await?;
        Ok(LsPages { s, rows: 0 })
    }

    pub async fn peers(&self) -> Result<Vec<PeerView>, ControlError> {
        match self.call(&ControlRequest::Peers).await? {
            ControlResponse::Peers(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// Asks the node to rescan its shared folders now.
    pub async fn rescan(&self) -> Result<(), ControlError> {
        match self.call(&ControlRequest::Rescan).await? {
            ControlResponse::Ok => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    pub async fn transfers(&self) -> Result<TransfersView, ControlError> {
        match self.call(&ControlRequest::Transfers).await? {
            ControlResponse::Transfers(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// Cancels the downloads `target` names; the numbers cancelled.
    pub async fn cancel(&self, target: &str) -> Result<Vec<u64>, ControlError> {
        let target = target.to_string();
        match self.call(&ControlRequest::Cancel { target }).await? {
            ControlResponse::Cancelled(v) => Ok(v),
            other => Err(unexpected(other)),
        }
    }

    /// Starts a fetch; its events arrive through [`FetchStream::next`].
    pub async fn fetch(&self, query: &str) -> Result<FetchStream, ControlError> {
        let mut s = connect(&self.home, &self.socket).await?;
        let query = query.to_string();
        write_msg(&mut s, &ControlRequest::Fetch { query }).await?;
        Ok(FetchStream { s })
    }
}

/// The pages of one `ls`, as the node sends them.
pub struct LsPages {
    s: UnixStream,
    /// Rows received so far.
    rows: u64,
}

impl LsPages {
    /// The next page; `None` after the last, once the node confirmed how
    /// many rows there were (a listing cut short is an error).
    pub async fn next(&mut self) -> Result<Option<Vec<ContentView>>, ControlError> {
        match read_msg::<ControlResponse>(&mut self.s, MAX_RESPONSE).await? {
            Some(ControlResponse::LsPage(page)) => {
                self.rows += page.len() as u64;
                Ok(Some(page))
            }
            Some(ControlResponse::LsEnd { rows }) if rows == self.rows => Ok(None),
            Some(ControlResponse::LsEnd { rows }) => Err(ControlError::Malformed(format!(
                "the listing ended with {rows} rows announced, {} received",
                self.rows
            ))),
            Some(ControlResponse::Error(e)) => Err(ControlError::Unexpected(e)),
            Some(other) => Err(unexpected(other)),
            None => Err(ControlError::Malformed("the listing ended early".into())),
        }
    }
}

/// The events of one fetch, as the node sends them.
pub struct FetchStream {
    s: UnixStream,
}

impl FetchStream {
    /// The next event; `None` when the node closed the connection.
    pub async fn next(&mut self) -> Result<Option<FetchEvent>, ControlError> {
        match read_msg::<ControlResponse>(&mut self.s, MAX_RESPONSE).await? {
            Some(ControlResponse::Fetch(ev)) => Ok(Some(ev)),
            Some(other) => Err(unexpected(other)),
            None => Ok(None),
        }
    }
}

/// Accepts control connections until `tasks` is cancelled, each handled
/// by its own task.
pub async fn serve(listener: UnixListener, service: Arc<Service>, tasks: Tasks) {
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "control accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let service = service.clone();
        let cancel = tasks.token();
        // Not stopped by cancellation: a fetch in progress still tells its
        // client how it ended.
        tasks.spawn("connection", async move {
            if let Err(e) = handle(&service, stream, cancel).await {
                tracing::debug!(error = %e, "control connection ended with an error");
            }
        });
    }
}

/// Answers one request.
async fn handle(
    service: &Service,
    mut s: UnixStream,
    cancel: CancellationToken,
) -> Result<(), ControlError> {
    let Some(req) = read_msg::<ControlRequest>(&mut s, MAX_REQUEST).await? else {
        return Ok(());
    };
    let resp = match req {
        ControlRequest::Status => ControlResponse::Status(service.status()),
        ControlRequest::Ls { query, category } => {
            return stream_ls(service, &mut s, query.as_deref(), category).await;
        }
        ControlRequest::Peers => ControlResponse::Peers(service.peers()),
        ControlRequest::Rescan => {
            service.rescan();
            ControlResponse::Ok
        }
        ControlRequest::Transfers => ControlResponse::Transfers(service.transfers()),
        ControlRequest::Cancel { target } => ControlResponse::Cancelled(service.cancel(&target)),
        ControlRequest::Fetch { query } => {
            stream_fetch(service, s, &query, cancel.child_token()).await;
            return Ok(());
        }
    };
    write_msg(&mut s, &resp).await
}

/// Sends the rows of `ls` a page at a time, each page's views built just
/// before it is sent, then their count.
async fn stream_ls(
    service: &Service,
    s: &mut UnixStream,
    query: Option<&str>,
    category: Option<Category>,
) -> Result<(), ControlError> {
    let mut rows = service.ls_rows(query, category);
    let mut sent = 0u64;
    loop {
        let page = service.ls_views(rows.by_ref().take(LS_PAGE_ROWS));
        if page.is_empty() && rows.len() == 0 {
            break;
        }
        sent += page.len() as u64;
        write_msg(s, &ControlResponse::LsPage(page)).await?;
    }
    write_msg(s, &ControlResponse::LsEnd { rows: sent }).await
}

/// Runs one fetch, writing its events to the client as they come; the
/// fetch is cancelled if the client goes away.
async fn stream_fetch(service: &Service, s: UnixStream, query: &str, cancel: CancellationToken) {
    let (tx, mut rx) = mpsc::channel::<FetchEvent>(64);
    let job = service.fetch(query, tx, cancel.clone());
    tokio::pin!(job);
    let (mut read_half, mut write_half) = s.into_split();
    let mut probe = [0u8; 1];
    let (mut job_done, mut client_gone) = (false, false);
    loop {
        tokio::select! {
            _ = &mut job, if !job_done => job_done = true,
            ev = rx.recv() => match ev {
                Some(ev) => {
                    if write_event(&mut write_half, &ev).await.is_err() {
                        cancel.cancel();
                    }
                }
                // Every sender is gone: the fetch sent its last event.
                None => break,
            },
            // The client never writes again: a read returning means it left.
            _ = read_half.read(&mut probe), if !client_gone => {
                client_gone = true;
                tracing::info!(%query, "fetch client went away; stopping the download (it resumes next time)");
                cancel.cancel();
            }
        }
    }
}

async fn write_event(
    w: &mut tokio::net::unix::OwnedWriteHalf,
    ev: &FetchEvent,
) -> Result<(), ControlError> {
    let body = postcard::to_allocvec(&ControlResponse::Fetch(ev.clone()))
        .map_err(|e| ControlError::Malformed(e.to_string()))?;
    w.write_all(&(body.len() as u32).to_le_bytes()).await?;
    w.write_all(&body).await?;
    Ok(())
}
