//! One framed TCP connection of the peer protocol, for either role, after
//! its handshake ([`super::noise`]): reading and writing frames under the
//! size limits of `wire::frame`, over an [`Io`] that is the buffered socket
//! in open mode or the record layer ([`super::record`]) in private mode.
//! The client ([`super::client`]) and the server ([`super::server`]) both
//! speak through a [`FramedConn`]; neither reads a header by hand, and
//! neither knows whether the bytes are encrypted.
//!
//! It owns no policy: which deadline applies to which read is the caller's
//! (a deadline here is a parameter), and it never touches the store or the
//! dictionary.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::PeerError;
use super::noise::{self, Proven};
use super::record::SecureIo;
use crate::identity::Identity;
use crate::store::ChunkBuf;
use crate::swarm::Mode;
use crate::wire::frame::{
    self, ClientHello, HEADER_LEN, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME, Request, Response,
    ServerHello,
};

/// A body buffer bigger than this is freed after use rather than kept.
const KEEP_SCRATCH: usize = 1 << 20;

/// Buffer sizes of one side of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Buffers {
    pub read: usize,
    pub write: usize,
}

impl Buffers {
    /// A client reads chunks and writes tiny requests.
    pub const CLIENT: Buffers = Buffers {
        read: 256 * 1024,
        write: 64 * 1024,
    };
    /// A server reads tiny requests and writes manifests and pages.
    pub const SERVER: Buffers = Buffers {
        read: 16 * 1024,
        write: 256 * 1024,
    };
}

/// A frame header: its kind byte and the length of its body.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub kind: u8,
    pub len: usize,
}

/// The bytes under the frames: in clear (open mode), or records
/// (private mode).
pub enum Io {
    Plain {
        reader: BufReader<OwnedReadHalf>,
        writer: BufWriter<OwnedWriteHalf>,
    },
    Secure(Box<SecureIo>),
}

/// What the other side proved in its handshake.
pub enum Remote {
    /// A server, as its client sees it.
    Server(Proven<ServerHello>),
    /// A client, as its server sees it.
    Client(Proven<ClientHello>),
}

/// A buffered peer-protocol connection.
pub struct FramedConn {
    io: Io,
    /// Reused for frame bodies (requests, non-chunk responses).
    scratch: Vec<u8>,
}

impl FramedConn {
    /// Frames over `stream` once its handshake is done: in clear in open
    /// mode, inside records under `transport` in private mode.
    pub fn new(
        stream: TcpStream,
        buffers: Buffers,
        mode: &Mode,
        transport: snow::TransportState,
    ) -> FramedConn {
        let (r, w) = stream.into_split();
        let io = match mode {
            Mode::Open => Io::Plain {
                reader: BufReader::with_capacity(buffers.read, r),
                writer: BufWriter::with_capacity(buffers.write, w),
            },
            Mode::Private(_) => Io::Secure(Box::new(SecureIo::new(r, w, transport, buffers.read))),
        };
        FramedConn {
            io,
            scratch: Vec::with_capacity(256),
        }
    }

    /// The client's handshake on `stream`, bounded by `limit`; then the
    /// connection and the server's proven hello.
    pub async fn connect(
        mut stream: TcpStream,
        identity: &Identity,
        mode: &Mode,
        name: &str,
        limit: Duration,
    ) -> Result<(FramedConn, Proven<ServerHello>), PeerError> {
        let (server, transport) =
            tokio::time::timeout(limit, noise::initiate(&mut stream, identity, mode, name))
                .await
                .map_err(|_| PeerError::Timeout("handshaking"))??;
        let conn = FramedConn::new(stream, Buffers::CLIENT, mode, transport);
        Ok((conn, server))
    }

    /// The server's handshake on `stream`, bounded by `limit`; then the
    /// connection and the client's proven hello.
    pub async fn accept(
        mut stream: TcpStream,
        identity: &Identity,
        mode: &Mode,
        hello: &ServerHello,
        limit: Duration,
    ) -> Result<(FramedConn, Proven<ClientHello>), PeerError> {
        let (client, transport) =
            tokio::time::timeout(limit, noise::respond(&mut stream, identity, mode, hello))
                .await
                .map_err(|_| PeerError::Timeout("handshaking"))??;
        let conn = FramedConn::new(stream, Buffers::SERVER, mode, transport);
        Ok((conn, client))
    }

    /// True in private mode (records, no sendfile).
    pub fn is_secure(&self) -> bool {
        matches!(self.io, Io::Secure(_))
    }

    /// The socket, for sending file bytes straight to it (open mode, after
    /// a flush).
    pub fn socket(&self) -> &TcpStream {
        match &self.io {
            Io::Plain { writer, .. } => writer.get_ref().as_ref(),
            Io::Secure(s) => s.socket(),
        }
    }

    /// True when a whole or partial frame is already buffered: the caller
    /// may answer pipelined requests before flushing.
    pub fn input_buffered(&self) -> bool {
        match &self.io {
            Io::Plain { reader, .. } => !reader.buffer().is_empty(),
            Io::Secure(s) => s.input_buffered(),
        }
    }

    /// Queues bytes (an encoded frame) to send.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), PeerError> {
        match &mut self.io {
            Io::Plain { writer, .. } => Ok(writer.write_all(bytes).await?),
            Io::Secure(s) => s.send(bytes).await,
        }
    }

    pub async fn flush(&mut self) -> Result<(), PeerError> {
        match &mut self.io {
            Io::Plain { writer, .. } => Ok(writer.flush().await?),
            Io::Secure(s) => s.flush().await,
        }
    }

    /// Queues `len` bytes of `file` from `offset` as records (private mode
    /// only: open mode sends them with sendfile after a flush).
    pub async fn send_range_sealed(
        &mut self,
        file: &std::fs::File,
        offset: u64,
        len: usize,
        progress: impl Fn(),
    ) -> Result<(), PeerError> {
        match &mut self.io {
            Io::Secure(s) => s.send_file_range(file, offset, len, progress).await,
            Io::Plain { .. } => Err(PeerError::Io(std::io::Error::other(
                "sealed send on a plain connection",
            ))),
        }
    }

    /// Reads exactly `buf.len()` bytes.
    async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), PeerError> {
        match &mut self.io {
            Io::Plain { reader, .. } => {
                reader.read_exact(buf).await?;
                Ok(())
            }
            Io::Secure(s) => s.read_exact(buf).await,
        }
    }

    /// Reads a frame header, refusing frames over `max`; a clean end of
    /// the stream is [`PeerError::Closed`].
    pub async fn read_header(&mut self, max: u32) -> Result<Header, PeerError> {
        let mut header = [0u8; HEADER_LEN];
        match self.read_exact(&mut header).await {
            Ok(()) => {}
            Err(PeerError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(PeerError::Closed);
            }
            Err(e) => return Err(e),
        }
        let (kind, len) = frame::parse_header(&header, max)?;
        Ok(Header { kind, len })
    }

    /// Reads `len` bytes of body into a fresh buffer.
    pub async fn read_body(&mut self, len: usize) -> Result<Vec<u8>, PeerError> {
        let mut body = vec![0u8; len];
        self.read_exact(&mut body).await?;
        Ok(body)
    }

    /// Reads the next request (a server's read).
    pub async fn read_request(&mut self) -> Result<Request, PeerError> {
        let h = self.read_header(MAX_REQUEST_FRAME).await?;
        let mut body = std::mem::take(&mut self.scratch);
        body.resize(h.len, 0);
        let read = self.read_exact(&mut body).await;
        let req = read.and_then(|_| Ok(Request::decode(h.kind, &body)?));
        self.keep_scratch(body);
        req
    }

    /// Reads the next response (a client's read). A chunk's bytes are read
    /// into `chunk_buf`.
    pub async fn read_response(&mut self, chunk_buf: &mut ChunkBuf) -> Result<Response, PeerError> {
        self.read_response_within(chunk_buf, MAX_RESPONSE_FRAME)
            .await
    }

    /// [`read_response`](Self::read_response), refusing a frame longer
    /// than `max` bytes before reading its body (the caller bounds it by
    /// what it asked for).
    pub async fn read_response_within(
        &mut self,
        chunk_buf: &mut ChunkBuf,
        max: u32,
    ) -> Result<Response, PeerError> {
        let h = self.read_header(max.min(MAX_RESPONSE_FRAME)).await?;
        frame::check_response_len(h.kind, h.len)?;
        if h.kind == frame::K_R_CHUNK {
            let mut req = [0u8; 4];
            self.read_exact(&mut req).await?;
            let resp = Response::decode(h.kind, &req, h.len)?;
            if let Response::Chunk { len, .. } = resp {
                chunk_buf.resize(len);
                self.read_exact(chunk_buf).await?;
            }
            return Ok(resp);
        }
        let mut body = std::mem::take(&mut self.scratch);
        body.resize(h.len, 0);
        let read = self.read_exact(&mut body).await;
        let resp = read.and_then(|_| Ok(Response::decode(h.kind, &body, h.len)?));
        self.keep_scratch(body);
        resp
    }

    fn keep_scratch(&mut self, mut body: Vec<u8>) {
        body.clear();
        if body.capacity() <= KEEP_SCRATCH {
            self.scratch = body;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::NodeId;
    use crate::swarm::SwarmKey;
    use crate::wire::WireError;
    use tokio::net::TcpListener;

    fn key(b: u8) -> Mode {
        Mode::private(&SwarmKey::from_bytes([b; 32]))
    }

    async fn sockets() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (c.unwrap(), s.unwrap().0)
    }

    /// A client and a server connection that finished their handshake in
    /// `mode`, and the ids each proved to the other.
    async fn pair(mode: &Mode) -> (FramedConn, FramedConn, NodeId, NodeId) {
        let (c, s) = sockets().await;
        let (ci, si) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
        let hello = noise::server_hello(&si, "srv", [7; 16], 3);
        let limit = Duration::from_secs(3);
        let (client, server) = tokio::join!(
            FramedConn::connect(c, &ci, mode, "cli", limit),
            FramedConn::accept(s, &si, mode, &hello, limit)
        );
        let ((c, by_client), (s, by_server)) = (client.unwrap(), server.unwrap());
        assert_eq!(
            (by_client.hello.name.as_str(), by_client.hello.contents),
            ("srv", 3)
        );
        assert_eq!(by_server.hello.name, "cli");
        assert_eq!(
            (by_client.node, by_server.node),
            (si.node_id(), ci.node_id())
        );
        (c, s, by_client.node, by_server.node)
    }

    #[tokio::test]
    async fn both_modes_prove_ids_and_carry_frames() {
        for mode in [Mode::Open, key(5)] {
            let (mut c, mut s, _, _) = pair(&mode).await;
            assert_eq!(c.is_secure(), mode.is_private());
            let req = Request::GetInventory {
                req: 9,
                since: None,
                after: None,
            };
            c.send(&req.encode()).await.unwrap();
            c.flush().await.unwrap();
            assert_eq!(s.read_request().await.unwrap(), req);
            // A chunk bigger than many records, from a file.
            let data: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7) as u8).collect();
            let mut f = tempfile::tempfile().unwrap();
            std::io::Write::write_all(&mut f, &data).unwrap();
            s.send(&frame::chunk_header(4, data.len() - 10))
                .await
                .unwrap();
            if s.is_secure() {
                s.send_range_sealed(&f, 10, data.len() - 10, || {})
                    .await
                    .unwrap();
                s.flush().await.unwrap();
            } else {
                s.flush().await.unwrap();
                s.socket().writable().await.unwrap();
                crate::platform::send_file_range(s.socket(), &f, 10, data.len() - 10, || {})
                    .await
                    .unwrap();
            }
            let mut buf = ChunkBuf::new();
            let r = c.read_response(&mut buf).await.unwrap();
            assert!(matches!(r, Response::Chunk { req: 4, .. }), "{r:?}");
            assert!(*buf == data[10..], "chunk bytes differ ({})", mode.label());
        }
    }

    #[tokio::test]
    async fn a_request_over_the_limit_is_refused_before_its_body() {
        for mode in [Mode::Open, key(5)] {
            let (mut c, mut s, _, _) = pair(&mode).await;
            let mut frame = (MAX_REQUEST_FRAME + 1).to_le_bytes().to_vec();
            frame.push(0x02);
            c.send(&frame).await.unwrap();
            c.flush().await.unwrap();
            let err = s.read_request().await.unwrap_err();
            assert!(
                matches!(err, PeerError::Protocol(WireError::TooLarge { .. })),
                "{err}"
            );
        }
    }

    #[tokio::test]
    async fn a_silent_client_times_out_the_handshake() {
        let (_c, s) = sockets().await;
        let id = Identity::from_seed([2; 32]);
        let hello = noise::server_hello(&id, "srv", [0; 16], 0);
        let r = FramedConn::accept(s, &id, &Mode::Open, &hello, Duration::from_millis(50)).await;
        let err = r.err().expect("no handshake");
        assert!(matches!(err, PeerError::Timeout("handshaking")), "{err}");
    }

    /// Bytes a server in `server_mode` writes to a client in `client_mode`
    /// before it closes, and the server's error.
    async fn server_bytes(client_mode: &Mode, server_mode: &Mode) -> (usize, PeerError) {
        let (mut c, s) = sockets().await;
        let (ci, si) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
        let hello = noise::server_hello(&si, "srv", [0; 16], 0);
        let mut first = noise::Initiator::new(&ci, client_mode).unwrap();
        c.write_all(&first.first(client_mode).unwrap())
            .await
            .unwrap();
        let limit = Duration::from_secs(3);
        let err = FramedConn::accept(s, &si, server_mode, &hello, limit)
            .await
            .err()
            .expect("refused");
        let mut got = Vec::new();
        let _ = c.read_to_end(&mut got).await;
        (got.len(), err)
    }

    #[tokio::test]
    async fn another_key_or_none_gets_not_a_byte() {
        for (client, server) in [(key(1), key(2)), (Mode::Open, key(2)), (key(1), Mode::Open)] {
            let (n, err) = server_bytes(&client, &server).await;
            assert_eq!(n, 0, "{} client got bytes", client.label());
            assert!(matches!(err, PeerError::OtherSwarm), "{err}");
        }
        // The same key gets the server's message 2.
        let (mut c, s) = sockets().await;
        let (ci, si) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
        let mut first = noise::Initiator::new(&ci, &key(1)).unwrap();
        c.write_all(&first.first(&key(1)).unwrap()).await.unwrap();
        let hello = noise::server_hello(&si, "srv", [0; 16], 0);
        let server = tokio::spawn(async move {
            FramedConn::accept(s, &si, &key(1), &hello, Duration::from_millis(300))
                .await
                .err()
        });
        let mut len = [0u8; 2];
        c.read_exact(&mut len).await.unwrap();
        assert!(u16::from_be_bytes(len) > 100);
        drop(server.await);
    }

    #[tokio::test]
    async fn records_shorter_than_a_tag_or_tampered_are_refused() {
        let mode = key(5);
        for tamper in [false, true] {
            let (mut c, s, _, _) = pair(&mode).await;
            let Io::Secure(io) = &mut c.io else {
                panic!("private mode is sealed")
            };
            let mut out = Vec::new();
            io.records_mut().seal(b"hello frames", &mut out).unwrap();
            if tamper {
                *out.last_mut().unwrap() ^= 1;
            } else {
                // Only the length: it is refused before any body is awaited.
                out = vec![0, 15];
            }
            // Write the record from the client's socket as it is.
            io.socket().writable().await.unwrap();
            io.socket().try_write(&out).unwrap();
            let mut s = s;
            let read = tokio::time::timeout(Duration::from_secs(2), s.read_request()).await;
            let err = read.expect("refused at once").unwrap_err().to_string();
            let want = if tamper {
                "authentication"
            } else {
                "shorter than its tag"
            };
            assert!(err.contains(want), "{err}");
        }
    }
}
