//! Sending a chunk's bytes from its file to a peer's socket through
//! [`crate::platform::send_file_range`]: sendfile(2) on Linux (the bytes go
//! from the page cache to the socket, no buffer per connection), a
//! read-then-write fallback elsewhere. Knows nothing of
//! frames: the caller writes and flushes the chunk header first.

use tokio::net::TcpStream;

use super::slots::Activity;
use crate::store::ChunkRef;

/// Sends a chunk's bytes straight from the file to the socket (sendfile
/// on Linux, see [`crate::platform`]); each step forward counts as
/// activity (a connection streaming a chunk is not idle).
pub(super) async fn send_range(
    stream: &TcpStream,
    chunk: &ChunkRef,
    activity: &Activity,
) -> std::io::Result<()> {
    crate::platform::send_file_range(stream, &chunk.file, chunk.offset, chunk.len, || {
        activity.touch()
    })
    .await
}
