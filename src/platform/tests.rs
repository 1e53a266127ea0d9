//! The portable fallbacks against the Linux calls they stand in for:
//! same bytes sent, same files refused, same ports shared.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;

/// A file of `len` distinct-ish bytes.
fn file_of(dir: &Path, len: usize) -> (File, Vec<u8>) {
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + i / 251) as u8).collect();
    let path = dir.join("data.bin");
    std::fs::write(&path, &data).unwrap();
    (File::open(&path).unwrap(), data)
}

/// What arrives at the other end when `send` sends `len` bytes of `file`
/// from `offset`, and how many times it reported progress.
async fn received<F, Fut>(file: &File, offset: u64, len: usize, send: F) -> (Vec<u8>, usize)
where
    F: FnOnce(tokio::net::TcpStream, File, u64, usize, &'static AtomicUsize) -> Fut,
    Fut: std::future::Future<Output = std::io::Result<()>>,
{
    static STEPS: AtomicUsize = AtomicUsize::new(0);
    STEPS.store(0, Ordering::Relaxed);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let reader = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    send(stream, file.try_clone().unwrap(), offset, len, &STEPS)
        .await
        .unwrap();
    (reader.join().unwrap(), STEPS.load(Ordering::Relaxed))
}

#[tokio::test]
async fn both_senders_send_the_same_range() {
    let dir = tempfile::tempdir().unwrap();
    let (file, data) = file_of(dir.path(), 300_000);
    let (offset, len) = (1_000u64, 200_001usize);
    let want = &data[offset as usize..offset as usize + len];
    let (got, steps) = received(&file, offset, len, |s, f, o, l, steps| async move {
        portable::send_file_range(&s, &f, o, l, || {
            steps.fetch_add(1, Ordering::Relaxed);
        })
        .await
    })
    .await;
    assert!(got == want, "the portable sender sent other bytes");
    assert!(steps >= 1, "no progress reported");
    #[cfg(target_os = "linux")]
    {
        let (got, steps) = received(&file, offset, len, |s, f, o, l, steps| async move {
            linux::send_file_range(&s, &f, o, l, || {
                steps.fetch_add(1, Ordering::Relaxed);
            })
            .await
        })
        .await;
        assert!(got == want, "sendfile sent other bytes");
        assert!(steps >= 1, "no progress reported");
    }
}

#[tokio::test]
async fn a_range_past_the_end_of_the_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let (file, _) = file_of(dir.path(), 10_000);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let s = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let _peer = listener.accept().await.unwrap();
    let e = portable::send_file_range(&s, &file, 9_000, 2_000, || {})
        .await
        .unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    #[cfg(target_os = "linux")]
    {
        let e = linux::send_file_range(&s, &file, 9_000, 2_000, || {})
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
    }
}

#[test]
fn the_opener_does_not_follow_a_symlink() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::write(&outside, b"keep me").unwrap();
    let link = dir.path().join("link");
    #[cfg(unix)]
    std::os::unix::fs::symlink(&outside, &link).unwrap();
    let plain = dir.path().join("plain");
    let mut opts = OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    assert!(
        super::open_nofollow(&mut opts, &link).is_err(),
        "followed a symlink"
    );
    let mut f = super::open_nofollow(&mut opts, &plain).expect("a plain file opens");
    f.write_all(b"plain").unwrap();
    assert_eq!(std::fs::read(&outside).unwrap(), b"keep me");
}

#[test]
fn two_sockets_share_the_discovery_port() {
    use socket2::{Domain, Protocol, Type};
    let bind = |port: u16| {
        let s = socket2::Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        s.set_reuse_address(true).unwrap();
        super::reuse_port(&s).unwrap();
        s.bind(&std::net::SocketAddr::from(([0, 0, 0, 0], port)).into())
            .map(|()| s)
    };
    let first = bind(0).unwrap();
    let port = first.local_addr().unwrap().as_socket().unwrap().port();
    assert!(bind(port).is_ok(), "a second socket cannot bind");
}

#[cfg(target_os = "linux")]
#[test]
fn sysfs_flags_say_loopback_is_up_and_the_fallback_does_not_guess() {
    if let Some(f) = linux::link_flags("lo") {
        assert!(f.up, "lo is up");
    }
    assert_eq!(linux::link_flags("no-such-if0"), None);
    assert_eq!(portable::link_flags("lo"), None);
}

/// `Partial::open` sizes a `.part` to the whole content at once; before
/// anything is written it must count as (nearly) empty, or the free-space
/// check of a resumed download (`FetchCtx::check_space`) would think the
/// whole content is already on disk and never refuse. Found in the review
/// of issue 9: the portable tier once counted a file by its length.
#[cfg(unix)]
#[test]
fn an_unwritten_sparse_part_is_not_counted_as_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(".lanshare-000000000000000000000000.part");
    let file = File::create(&path).unwrap();
    file.set_len(1 << 30).unwrap();
    let sparse = super::allocated_bytes(&file.metadata().unwrap());
    assert!(
        sparse < 1 << 20,
        "an unwritten 1 GiB .part counts {sparse} bytes"
    );
    let (written, _) = file_of(dir.path(), 200_000);
    let full = super::allocated_bytes(&written.metadata().unwrap());
    assert!(full >= 200_000, "a written file counts {full} bytes");
}

/// A datagram to 127.0.0.1 arrives with its packet info on Linux (its
/// destination, the address answered from, loopback's index), and with
/// none from the fallback; both give the same bytes and source.
#[tokio::test]
async fn a_datagram_arrives_with_where_it_was_headed() {
    let s = {
        let s = socket2::Socket::new(
            socket2::Domain::IPV4,
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .unwrap();
        s.set_nonblocking(true).unwrap();
        s.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        chosen::packet_info(&s, false);
        tokio::net::UdpSocket::from_std(s.into()).unwrap()
    };
    let sender = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let to = s.local_addr().unwrap();
    sender.send_to(b"hello", to).await.unwrap();
    let mut buf = [0u8; 16];
    let r = portable::recv_datagram(&s, &mut buf).await.unwrap();
    assert_eq!(
        (&buf[..r.len], r.src),
        (&b"hello"[..], sender.local_addr().unwrap())
    );
    assert_eq!(r.info, None);
    #[cfg(target_os = "linux")]
    {
        sender.send_to(b"again", to).await.unwrap();
        let r = linux::recv_datagram(&s, &mut buf).await.unwrap();
        assert_eq!(
            (&buf[..r.len], r.src),
            (&b"again"[..], sender.local_addr().unwrap())
        );
        let info = r.info.expect("packet info on Linux");
        assert_eq!(info.dst, std::net::IpAddr::from([127, 0, 0, 1]));
        assert_eq!(info.local, Some([127, 0, 0, 1].into()));
        let lo = std::fs::read_to_string("/sys/class/net/lo/ifindex").unwrap();
        assert_eq!(info.ifindex, lo.trim().parse::<u32>().unwrap());
    }
}
