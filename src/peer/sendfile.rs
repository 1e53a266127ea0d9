//! Sending a chunk's bytes from its file to a peer's socket: sendfile(2)
//! on Linux (the bytes go from the page cache to the socket, no buffer per
//! connection), a read-then-write fallback elsewhere. Knows nothing of
//! frames: the caller writes and flushes the chunk header first.

use tokio::net::TcpStream;

use super::slots::Activity;
use crate::store::ChunkRef;

/// Sends a chunk's bytes straight from the file to the socket; each step
/// forward counts as activity (a connection streaming a chunk is not idle).
#[cfg(target_os = "linux")]
pub(super) async fn send_range(
    stream: &TcpStream,
    chunk: &ChunkRef,
    activity: &Activity,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let (out_fd, in_fd) = (stream.as_raw_fd(), chunk.file.as_raw_fd());
    let mut offset = chunk.offset as libc::off_t;
    let mut left = chunk.len;
    while left > 0 {
        stream.writable().await?;
        let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
            // SAFETY: both descriptors are open for the duration of the call
            // (the stream and the Arc'd file are borrowed), and `offset` is a
            // valid pointer to an off_t that sendfile advances.
            let n = unsafe { libc::sendfile(out_fd, in_fd, &mut offset, left) };
            if n < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        match sent {
            Ok(0) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "file ended before the chunk did",
                ));
            }
            Ok(n) => {
                left -= n;
                activity.touch();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Portable fallback: read the chunk, then write it.
#[cfg(not(target_os = "linux"))]
pub(super) async fn send_range(
    stream: &TcpStream,
    chunk: &ChunkRef,
    activity: &Activity,
) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; chunk.len];
    chunk.file.read_exact_at(&mut buf, chunk.offset)?;
    let mut sent = 0;
    while sent < buf.len() {
        stream.writable().await?;
        match stream.try_write(&buf[sent..]) {
            Ok(n) => {
                sent += n;
                activity.touch();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
