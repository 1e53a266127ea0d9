//! The Linux implementations: `sendfile`, `SO_REUSEPORT`,
//! `IP_MULTICAST_ALL`, interface flags from sysfs, `O_NOFOLLOW`, and
//! allocated blocks. Compiled on Linux whatever the features, so the
//! tests compare them with the portable ones.

use std::fs::File;
use std::os::fd::AsRawFd;

use socket2::Socket;
use tokio::net::TcpStream;

use super::LinkFlags;

/// Sends `len` bytes of `file` from `offset` straight to `stream` with
/// `sendfile`; `progress` is called at each step forward (a connection
/// streaming a chunk is not idle).
pub async fn send_file_range(
    stream: &TcpStream,
    file: &File,
    offset: u64,
    len: usize,
    progress: impl Fn(),
) -> std::io::Result<()> {
    let (out_fd, in_fd) = (stream.as_raw_fd(), file.as_raw_fd());
    let mut offset = offset as libc::off_t;
    let mut left = len;
    while left > 0 {
        stream.writable().await?;
        let sent = stream.try_io(tokio::io::Interest::WRITABLE, || {
            // SAFETY: both descriptors are open for the duration of the call
            // (the stream and the file are borrowed), and `offset` is a
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
                progress();
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Only datagrams for groups this socket joined (Linux otherwise delivers
/// every group's traffic on the port).
pub fn only_joined_groups(s: &Socket, v6: bool) {
    let off: libc::c_int = 0;
    let (level, opt) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_ALL)
    } else {
        (libc::IPPROTO_IP, libc::IP_MULTICAST_ALL)
    };
    // SAFETY: setsockopt on a socket we borrow, with a c_int option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            opt,
            &off as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// IFF_UP and IFF_MULTICAST from /sys/class/net/NAME/flags.
pub fn link_flags(name: &str) -> Option<LinkFlags> {
    const IFF_UP: u32 = 0x1;
    const IFF_MULTICAST: u32 = 0x1000;
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/flags")).ok()?;
    let f = u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()?;
    Some(LinkFlags {
        up: f & IFF_UP != 0,
        multicast: f & IFF_MULTICAST != 0,
    })
}
