//! The local control endpoint: a Unix socket at `HOME/.lanshare/control.sock`
//! (mode 0600, so only the node's user can use it) through which `ls`,
//! `peers`, `fetch`, `share` and `status` talk to the running node.
//! Frames are `length u32 LE | postcard`; one request per connection, then
//! one response, or a stream of fetch events ending with a final one.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

use crate::api::{ContentView, FetchEvent, NodeStatus, PeerView};
use crate::manifest::Category;

/// Largest request the node reads.
pub const MAX_REQUEST: u32 = 64 * 1024;
/// Largest response the CLI reads (an `ls` of a very large network).
pub const MAX_RESPONSE: u32 = 256 << 20;

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
}

#[derive(Debug, Serialize, Deserialize)]
pub enum ControlResponse {
    Status(NodeStatus),
    Ls(Vec<ContentView>),
    Peers(Vec<PeerView>),
    Fetch(FetchEvent),
    Ok,
    Error(String),
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
