//! A socket's receive low-water mark (`SO_RCVLOWAT`) while a chunk's bytes
//! are read: poll and epoll report the socket readable only once that
//! many bytes are queued, so the reading task is woken once a large part
//! of the chunk is there and reads it with one `recv`, instead of being
//! woken for every few segments that arrive.
//!
//! The mark is never more than the bytes the frame being read still
//! needs from the socket (what the peer's header announced, less what is
//! already read or buffered): were it more, a peer that sends exactly
//! its frame and then waits for the next request would leave the read
//! waiting forever. A peer that sends less than it announced stalls the
//! read as it would without the mark (the caller's deadline applies).
//! Owns only the option's value; never reads the socket.

use std::os::fd::{AsRawFd, RawFd};

use tokio::net::TcpStream;

/// Bytes still needed from which the mark is raised: below that, one
/// more wake-up costs less than the two system calls.
pub const LOWAT_FROM: usize = 128 << 10;
/// Highest mark set (the kernel also caps it at half its largest receive
/// buffer, and grows the socket's buffer to hold it).
pub const LOWAT_MAX: usize = 4 << 20;

/// The low-water mark of one socket during one read; set back to one
/// byte when dropped, however the read ends (the next read may be a
/// small frame).
pub struct RecvLowat {
    fd: RawFd,
    /// The value set now (1: the system's default).
    now: usize,
}

impl RecvLowat {
    /// For `socket`, which must outlive this.
    pub fn new(socket: &TcpStream) -> RecvLowat {
        RecvLowat {
            fd: socket.as_raw_fd(),
            now: 1,
        }
    }

    /// Before a read that still needs `coming` bytes from the socket: the
    /// mark is `coming` (at most [`LOWAT_MAX`]) when that is at least
    /// [`LOWAT_FROM`], else one byte. A failure leaves the mark at one
    /// byte (reads then go on as without it).
    pub fn expect(&mut self, coming: usize) {
        let want = if coming >= LOWAT_FROM {
            coming.min(LOWAT_MAX)
        } else {
            1
        };
        if want != self.now {
            self.now = if set_rcvlowat(self.fd, want).is_ok() {
                want
            } else {
                let _ = set_rcvlowat(self.fd, 1);
                1
            };
        }
    }
}

impl Drop for RecvLowat {
    fn drop(&mut self) {
        if self.now != 1 {
            let _ = set_rcvlowat(self.fd, 1);
        }
    }
}

/// Sets `SO_RCVLOWAT` of the socket `fd`.
fn set_rcvlowat(fd: RawFd, bytes: usize) -> std::io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: `fd` is an open socket (its owner outlives the call), and
    // the option value is a live c_int of the length passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn lowat(s: &TcpStream) -> usize {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: a live c_int and its length, an open socket.
        let r = unsafe {
            libc::getsockopt(
                s.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVLOWAT,
                (&raw mut v).cast(),
                &raw mut len,
            )
        };
        assert_eq!(r, 0);
        v as usize
    }

    #[tokio::test]
    async fn the_mark_follows_what_is_still_coming_and_is_reset() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        let (mut c, mut s) = (c.unwrap(), s.unwrap().0);
        {
            let mut mark = RecvLowat::new(&c);
            mark.expect(1 << 20);
            assert_eq!(lowat(&c), 1 << 20);
            mark.expect(LOWAT_FROM - 1);
            assert_eq!(lowat(&c), 1, "little left: the default");
            mark.expect(64 << 20);
            assert_eq!(lowat(&c), LOWAT_MAX, "at most LOWAT_MAX");
        }
        assert_eq!(lowat(&c), 1, "reset when dropped");
        // A read of exactly what is announced never waits for more: the
        // mark is lowered as the bytes come.
        let body = vec![7u8; 600 << 10];
        let mut got = vec![0u8; body.len()];
        let send = async {
            s.write_all(&body[..300 << 10]).await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            s.write_all(&body[300 << 10..]).await.unwrap();
        };
        let read = async {
            let mut mark = RecvLowat::new(&c);
            let mut filled = 0;
            while filled < got.len() {
                mark.expect(got.len() - filled);
                filled += c.read(&mut got[filled..]).await.unwrap();
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            tokio::join!(send, read)
        })
        .await
        .expect("the read ends with the last byte announced");
        assert!(got == body);
    }
}
