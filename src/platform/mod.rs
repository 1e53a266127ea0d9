//! Every call that differs between operating systems, behind one small
//! API, so a Windows or macOS build is a packaging step, not a port.
//!
//! Owns: zero-copy file sending, direct writes and early writeback, the discovery socket options that only
//! Linux has, a received datagram's destination, interface flags beyond what `if-addrs` reports, the
//! file-system watcher, opening a file without following a symlink, the
//! bytes a file occupies and the free space of a file system, and the
//! process-level Unix facilities (SIGPIPE, SIGTERM, the open-file limit).
//! Never touches: what is sent, which sockets exist, which files are
//! opened — callers decide; this module only says how, here.
//!
//! Two tiers:
//! - Linux specifics with a portable fallback ([`linux`] and
//!   [`portable`]): `sendfile` (fallback: read, then write),
//!   `IP_MULTICAST_ALL` (fallback: skipped), a datagram's destination
//!   address and interface from `IP_PKTINFO` / `IPV6_PKTINFO` (fallback:
//!   unknown, so discovery cannot tell a broadcast from a multicast
//!   datagram), interface flags from sysfs (fallback: up as the system
//!   reports it, multicast assumed, broadcast unless loopback or
//!   point-to-point), direct writes of a download's chunks (`O_DIRECT` on
//!   ext4 and XFS; fallback: none, through the page cache) and starting
//!   their writeback at once (`sync_file_range`; fallback: skipped). The
//!   cargo feature `portable` forces the fallbacks on Linux, so CI runs
//!   the loopback tests through them; it also swaps the native
//!   file-system watcher (inotify) for notify's polling one.
//! - Calls every Unix has, macOS and the BSDs included (`SO_REUSEPORT`,
//!   `O_NOFOLLOW`, allocated blocks, a signal's default action, the
//!   open-file limit, `statvfs`): `cfg(unix)` code, kept on every Unix so
//!   no protection is lost there, with what Windows needs instead noted
//!   beside each.

use std::fs::{File, Metadata, OpenOptions};
use std::path::Path;

#[cfg(target_os = "linux")]
#[cfg_attr(feature = "portable", allow(dead_code))]
mod linux;
#[cfg_attr(all(target_os = "linux", not(feature = "portable")), allow(dead_code))]
mod portable;

#[cfg(all(target_os = "linux", not(feature = "portable")))]
use linux as chosen;
#[cfg(not(all(target_os = "linux", not(feature = "portable"))))]
use portable as chosen;

pub use chosen::{
    only_joined_groups, open_direct, packet_info, recv_datagram, send_file_range, start_writeback,
};

/// Where a received datagram was headed, as the system says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacketInfo {
    /// The destination address in the datagram's IP header.
    pub dst: std::net::IpAddr,
    /// IPv4: the local address the system answers from (`ipi_spec_dst`):
    /// the header's destination for a unicast datagram, an address of the
    /// interface for a broadcast or multicast one.
    pub local: Option<std::net::Ipv4Addr>,
    /// The index of the interface it arrived on.
    pub ifindex: u32,
}

/// One datagram received by [`recv_datagram`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Received {
    pub len: usize,
    pub src: std::net::SocketAddr,
    /// None where the system does not say (the portable fallback).
    pub info: Option<PacketInfo>,
}

/// An interface's administrative flags, where the system says them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkFlags {
    /// Configured up (IFF_UP); whether it has a carrier is separate.
    pub up: bool,
    /// Multicast-capable (IFF_MULTICAST).
    pub multicast: bool,
    /// Broadcast-capable (IFF_BROADCAST): not loopback, not point-to-point.
    pub broadcast: bool,
}

/// The flags of interface `name`; None when this system does not say
/// (the caller then trusts the operational state and assumes multicast).
pub fn link_flags(name: &str) -> Option<LinkFlags> {
    chosen::link_flags(name)
}

/// Lets several sockets of this machine bind the discovery port: on the
/// BSDs and macOS two sockets bound to one UDP port need `SO_REUSEPORT`,
/// not only `SO_REUSEADDR`. (Windows: `SO_REUSEADDR`, which the caller
/// sets, is enough.)
pub fn reuse_port(s: &socket2::Socket) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        s.set_reuse_port(true)
    }
    #[cfg(not(unix))]
    {
        let _ = s;
        Ok(())
    }
}

/// Opens a lanshare-owned file without following a symlink at `path`:
/// `O_NOFOLLOW`, so even a symlink swapped in a moment before is refused
/// by the kernel. (Windows: refuses a symlink, then opens; a Windows build
/// should open with `FILE_FLAG_OPEN_REPARSE_POINT` instead.)
pub fn open_nofollow(opts: &mut OpenOptions, path: &Path) -> std::io::Result<File> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NOFOLLOW).open(path)
    }
    #[cfg(not(unix))]
    {
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(std::io::Error::other(format!(
                "{} is a symbolic link; not following it",
                path.display()
            )));
        }
        opts.open(path)
    }
}

/// Bytes a file occupies on disk: its allocated blocks, so a sparse
/// `.part` sized to the whole content but not written yet counts as
/// empty. (Windows: the file's length, which makes the free-space check
/// of a resumed download weaker there.)
pub fn allocated_bytes(meta: &Metadata) -> u64 {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        meta.blocks() * 512
    }
    #[cfg(not(unix))]
    {
        meta.len()
    }
}

/// Reads exactly `buf.len()` bytes of `file` at `offset`, without moving
/// a shared cursor (safe from several threads at once).
pub fn read_exact_at(file: &File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::os::unix::fs::FileExt::read_exact_at(file, buf, offset)
    }
    #[cfg(windows)]
    {
        let (mut buf, mut offset) = (buf, offset);
        while !buf.is_empty() {
            match std::os::windows::fs::FileExt::seek_read(file, buf, offset)? {
                0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
                n => {
                    buf = &mut buf[n..];
                    offset += n as u64;
                }
            }
        }
        Ok(())
    }
}

/// A watcher of file-system changes calling `handler` on each event:
/// the system's own (inotify, FSEvents, ReadDirectoryChanges), or with
/// the `portable` feature notify's polling watcher, the one left where a
/// system offers none.
pub fn fs_watcher<F: notify::EventHandler>(
    handler: F,
) -> notify::Result<Box<dyn notify::Watcher + Send>> {
    #[cfg(not(feature = "portable"))]
    {
        Ok(Box::new(notify::recommended_watcher(handler)?))
    }
    #[cfg(feature = "portable")]
    {
        let config =
            notify::Config::default().with_poll_interval(std::time::Duration::from_secs(1));
        Ok(Box::new(notify::PollWatcher::new(handler, config)?))
    }
}

/// What to tell the user when a folder cannot be watched.
pub const WATCH_LIMIT_HINT: &str = if cfg!(target_os = "linux") {
    "raise fs.inotify.max_user_watches for huge trees"
} else {
    "the system's watch limit may be reached"
};

/// Bytes available to this user in the file system holding `dir`; None
/// when the system will not say. (Windows: GetDiskFreeSpaceExW.)
pub fn free_space(dir: &Path) -> Option<u64> {
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // SAFETY: a valid NUL-terminated path and a statvfs we own.
        if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
            return None;
        }
        #[allow(clippy::unnecessary_cast)] // the field types differ by platform
        Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        None
    }
}

/// For a client command: a closed stdout (`lanshare ls | head`) ends the
/// process quietly, as any Unix tool. Not for a node, which must survive
/// peers closing their sockets. Call before any thread exists.
/// (Windows has no SIGPIPE: a write to a closed pipe is an error there.)
pub fn quiet_broken_pipe() {
    #[cfg(unix)]
    // SAFETY: called before any thread exists; SIG_DFL is a valid handler.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// Completes on Ctrl-C, or on SIGTERM where there is one (a service
/// manager's stop).
pub async fn stop_requested() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Raises the soft limit on open files to `need` where the hard limit
/// allows; returns the soft limit now in force, or None where there is
/// no such limit (Windows: handles are not limited this way).
pub fn raise_open_files(need: u64) -> Option<u64> {
    #[cfg(unix)]
    {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes into the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
            return None;
        }
        let need = need as libc::rlim_t;
        if lim.rlim_cur < need {
            let raised = libc::rlimit {
                rlim_cur: need.min(lim.rlim_max),
                rlim_max: lim.rlim_max,
            };
            // SAFETY: setrlimit only reads the struct it is given.
            if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
                lim.rlim_cur = raised.rlim_cur;
            }
        }
        #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
        Some(lim.rlim_cur as u64)
    }
    #[cfg(not(unix))]
    {
        let _ = need;
        None
    }
}

#[cfg(test)]
mod tests;
