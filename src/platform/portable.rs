//! The portable implementations of the Linux-only calls, std and tokio
//! only: what every system other than Linux runs, and Linux too with the
//! `portable` feature.

use std::fs::File;

use socket2::Socket;
use tokio::net::{TcpStream, UdpSocket};

use super::{LinkFlags, Received};

/// Bytes read from the file per write to the socket.
const PIECE: usize = 64 * 1024;

/// Sends `len` bytes of `file` from `offset` to `stream`: read a piece,
/// then write it; `progress` is called at each step forward.
pub async fn send_file_range(
    stream: &TcpStream,
    file: &File,
    offset: u64,
    len: usize,
    progress: impl Fn(),
) -> std::io::Result<()> {
    let mut buf = vec![0u8; PIECE.min(len)];
    let mut done = 0;
    while done < len {
        let piece = &mut buf[..PIECE.min(len - done)];
        super::read_exact_at(file, piece, offset + done as u64).map_err(|e| {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                std::io::Error::new(e.kind(), "file ended before the chunk did")
            } else {
                e
            }
        })?;
        let mut sent = 0;
        while sent < piece.len() {
            stream.writable().await?;
            match stream.try_write(&piece[sent..]) {
                Ok(n) => {
                    sent += n;
                    progress();
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        done += piece.len();
    }
    Ok(())
}

/// Skipped: other systems deliver only the groups a socket joined.
pub fn only_joined_groups(_s: &Socket, _v6: bool) {}

/// Skipped: a datagram's destination is not read here.
pub fn packet_info(_s: &Socket, _v6: bool) {}

/// Receives one datagram, without its packet info: where it was headed
/// (multicast, broadcast, unicast) is not known.
pub async fn recv_datagram(s: &UdpSocket, buf: &mut [u8]) -> std::io::Result<Received> {
    let (len, src) = s.recv_from(buf).await?;
    Ok(Received {
        len,
        src,
        info: None,
    })
}

/// Not known: the caller trusts the operational state.
pub fn link_flags(_name: &str) -> Option<LinkFlags> {
    None
}

/// No direct writes: chunks go through the page cache.
pub fn open_direct(_file: &File) -> Option<File> {
    None
}

/// Skipped: the file's writeback starts when the system decides.
pub fn start_writeback(_file: &File, _offset: u64, _len: usize) {}
