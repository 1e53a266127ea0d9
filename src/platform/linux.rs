//! The Linux implementations: `sendfile`, `SO_REUSEPORT`,
//! `IP_MULTICAST_ALL`, a datagram's packet info (`IP_PKTINFO`,
//! `IPV6_RECVPKTINFO`, read with `recvmsg`), interface flags from sysfs,
//! `O_NOFOLLOW`, allocated blocks, direct writes (`O_DIRECT`) and
//! starting a file's writeback (`sync_file_range`). Compiled on Linux whatever the features, so the
//! tests compare them with the portable ones.

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};

use socket2::Socket;
use tokio::net::{TcpStream, UdpSocket};

use super::{LinkFlags, PacketInfo, Received};

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

/// Asks the system to tell, with every datagram `s` receives, where it
/// was headed ([`recv_datagram`]). Best effort: without it a datagram's
/// path is unknown, as on other systems.
pub fn packet_info(s: &Socket, v6: bool) {
    let on: libc::c_int = 1;
    let (level, opt) = if v6 {
        (libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO)
    } else {
        (libc::IPPROTO_IP, libc::IP_PKTINFO)
    };
    // SAFETY: setsockopt on a socket we borrow, with a c_int option value.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            opt,
            &on as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Receives one datagram into `buf`, with its packet info when the socket
/// was set up with [`packet_info`].
pub async fn recv_datagram(s: &UdpSocket, buf: &mut [u8]) -> std::io::Result<Received> {
    let fd = s.as_raw_fd();
    s.async_io(tokio::io::Interest::READABLE, || recvmsg(fd, buf))
        .await
}

/// One `recvmsg` on `fd`, parsing the source address and the
/// IP_PKTINFO / IPV6_PKTINFO control message.
fn recvmsg(fd: RawFd, buf: &mut [u8]) -> std::io::Result<Received> {
    // SAFETY: all-zero is a valid sockaddr_storage and msghdr.
    let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // Room for one in6_pktinfo (the larger) and its header, aligned.
    let mut control = [0u64; 16];
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: every pointer in msg points into a buffer that outlives the
    // call, with its length.
    let n = unsafe { libc::recvmsg(fd, &mut msg, 0) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let src = source(&name)?;
    let mut info = None;
    // SAFETY: the CMSG_* macros walk the control buffer recvmsg filled,
    // within msg_controllen; the data is read unaligned.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            let (level, kind) = ((*c).cmsg_level, (*c).cmsg_type);
            let data = libc::CMSG_DATA(c);
            if level == libc::IPPROTO_IP && kind == libc::IP_PKTINFO {
                let p: libc::in_pktinfo = std::ptr::read_unaligned(data.cast());
                info = Some(PacketInfo {
                    dst: IpAddr::V4(Ipv4Addr::from(u32::from_be(p.ipi_addr.s_addr))),
                    local: Some(Ipv4Addr::from(u32::from_be(p.ipi_spec_dst.s_addr))),
                    ifindex: p.ipi_ifindex as u32,
                });
            } else if level == libc::IPPROTO_IPV6 && kind == libc::IPV6_PKTINFO {
                let p: libc::in6_pktinfo = std::ptr::read_unaligned(data.cast());
                info = Some(PacketInfo {
                    dst: IpAddr::V6(Ipv6Addr::from(p.ipi6_addr.s6_addr)),
                    local: None,
                    ifindex: p.ipi6_ifindex,
                });
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(Received {
        len: n as usize,
        src,
        info,
    })
}

/// The source address recvmsg wrote.
fn source(name: &libc::sockaddr_storage) -> std::io::Result<SocketAddr> {
    match name.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in.
            let a: libc::sockaddr_in =
                unsafe { std::ptr::read((name as *const libc::sockaddr_storage).cast()) };
            Ok(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr)),
                u16::from_be(a.sin_port),
            )
            .into())
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6.
            let a: libc::sockaddr_in6 =
                unsafe { std::ptr::read((name as *const libc::sockaddr_storage).cast()) };
            Ok(SocketAddrV6::new(
                Ipv6Addr::from(a.sin6_addr.s6_addr),
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )
            .into())
        }
        f => Err(std::io::Error::other(format!(
            "a datagram from an address of family {f}"
        ))),
    }
}

/// IFF_UP, IFF_BROADCAST and IFF_MULTICAST from /sys/class/net/NAME/flags.
pub fn link_flags(name: &str) -> Option<LinkFlags> {
    const IFF_UP: u32 = 0x1;
    const IFF_BROADCAST: u32 = 0x2;
    const IFF_MULTICAST: u32 = 0x1000;
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/flags")).ok()?;
    let f = u32::from_str_radix(text.trim().trim_start_matches("0x"), 16).ok()?;
    Some(LinkFlags {
        up: f & IFF_UP != 0,
        multicast: f & IFF_MULTICAST != 0,
        broadcast: f & IFF_BROADCAST != 0,
    })
}

/// `file` opened a second time for direct writes (`O_DIRECT`), on a local
/// file system known to take direct writes of 4 KiB-aligned blocks: ext4
/// and XFS. Through `/proc/self/fd`, so it is the same file (checked by
/// device and inode) whatever its path names now. `None` on any other
/// file system: direct I/O is missing there (tmpfs before Linux 6.6),
/// slower (a network file system sends each write at once) or
/// differently bounded.
pub fn open_direct(file: &File) -> Option<File> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    const EXT4_SUPER_MAGIC: i64 = 0xEF53;
    const XFS_SUPER_MAGIC: i64 = 0x5846_5342;
    // SAFETY: `statfs` is plain data the call fills in; the descriptor is
    // open for the duration of the call (`file` is borrowed).
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut fs) } != 0 {
        return None;
    }
    #[allow(clippy::unnecessary_cast)] // f_type's type differs between libcs
    if !matches!(fs.f_type as i64, EXT4_SUPER_MAGIC | XFS_SUPER_MAGIC) {
        return None;
    }
    let direct = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT | libc::O_CLOEXEC)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()?;
    let (a, b) = (file.metadata().ok()?, direct.metadata().ok()?);
    (a.dev() == b.dev() && a.ino() == b.ino()).then_some(direct)
}

/// Asks the kernel to start writing `len` bytes at `offset` of `file` to
/// disk, without waiting for them (and without any durability promise:
/// no metadata, no disk cache flush). A failure changes nothing: the sync
/// that makes the bytes durable reports any I/O error.
pub fn start_writeback(file: &File, offset: u64, len: usize) {
    let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
        return;
    };
    // SAFETY: the descriptor is open for the duration of the call (`file`
    // is borrowed); the call reads no memory of ours.
    let _ = unsafe {
        libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
    };
}
