//! One framed TCP connection of the peer protocol, for either role: the
//! buffered socket, reading and writing frames under the size limits of
//! `wire::frame`, and the hello exchange (preamble plus hello frame each
//! way). The client ([`super::client`]) and the server ([`super::server`])
//! both speak through a [`FramedConn`]; neither reads a header by hand.
//!
//! It owns no policy: which deadline applies to which read is the caller's
//! (a deadline here is a parameter), and it never touches the store or the
//! dictionary.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::PeerError;
use crate::id::NodeId;
use crate::wire::WireError;
use crate::wire::frame::{
    self, HEADER_LEN, MAX_REQUEST_FRAME, MAX_RESPONSE_FRAME, PREAMBLE, Request, Response,
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

/// What the other side said in its hello, as seen by a client.
#[derive(Clone, Debug)]
pub struct ServerHello {
    pub node: NodeId,
    pub name: String,
    /// The server's inventory digest and size when it answered.
    pub digest: [u8; 16],
    pub contents: u32,
}

/// What a client said in its hello, as seen by a server.
#[derive(Clone, Debug)]
pub struct ClientHello {
    /// Only a claim: nothing proves it until the address is checked.
    pub node: NodeId,
    pub name: String,
}

/// A frame header: its kind byte and the length of its body.
#[derive(Clone, Copy, Debug)]
pub struct Header {
    pub kind: u8,
    pub len: usize,
}

/// A buffered peer-protocol connection.
pub struct FramedConn {
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
    /// Reused for frame bodies (requests, non-chunk responses).
    scratch: Vec<u8>,
}

impl FramedConn {
    pub fn new(stream: TcpStream, buffers: Buffers) -> FramedConn {
        let (r, w) = stream.into_split();
        FramedConn {
            reader: BufReader::with_capacity(buffers.read, r),
            writer: BufWriter::with_capacity(buffers.write, w),
            scratch: Vec::with_capacity(256),
        }
    }

    /// The socket, for sending file bytes straight to it (flush first).
    pub fn socket(&self) -> &TcpStream {
        self.writer.get_ref().as_ref()
    }

    /// True when a whole or partial frame is already buffered: the caller
    /// may answer pipelined requests before flushing.
    pub fn input_buffered(&self) -> bool {
        !self.reader.buffer().is_empty()
    }

    /// Queues bytes (an encoded frame) to send.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), PeerError> {
        Ok(self.writer.write_all(bytes).await?)
    }

    pub async fn flush(&mut self) -> Result<(), PeerError> {
        Ok(self.writer.flush().await?)
    }

    /// Reads the other side's preamble and checks it.
    async fn read_preamble(&mut self) -> Result<(), PeerError> {
        let mut pre = [0u8; 5];
        self.reader.read_exact(&mut pre).await?;
        frame::check_preamble(&pre).map_err(PeerError::Handshake)
    }

    /// Reads a frame header, refusing frames over `max`; a clean end of
    /// the stream is [`PeerError::Closed`].
    pub async fn read_header(&mut self, max: u32) -> Result<Header, PeerError> {
        let mut header = [0u8; HEADER_LEN];
        match self.reader.read_exact(&mut header).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Err(PeerError::Closed);
            }
            Err(e) => return Err(e.into()),
        }
        let (kind, len) = frame::parse_header(&header, max)?;
        Ok(Header { kind, len })
    }

    /// Reads `len` bytes of body into a fresh buffer.
    pub async fn read_body(&mut self, len: usize) -> Result<Vec<u8>, PeerError> {
        let mut body = vec![0u8; len];
        self.reader.read_exact(&mut body).await?;
        Ok(body)
    }

    /// Reads the next request (a server's read).
    pub async fn read_request(&mut self) -> Result<Request, PeerError> {
        let h = self.read_header(MAX_REQUEST_FRAME).await?;
        let mut body = std::mem::take(&mut self.scratch);
        body.resize(h.len, 0);
        let read = self.reader.read_exact(&mut body).await;
        let req = read
            .map_err(PeerError::from)
            .and_then(|_| Ok(Request::decode(h.kind, &body)?));
        self.keep_scratch(body);
        req
    }

    /// Reads the next response (a client's read). A chunk's bytes are read
    /// into `chunk_buf`.
    pub async fn read_response(&mut self, chunk_buf: &mut Vec<u8>) -> Result<Response, PeerError> {
        let h = self.read_header(MAX_RESPONSE_FRAME).await?;
        frame::check_response_len(h.kind, h.len)?;
        if h.kind == frame::K_R_CHUNK {
            let mut req = [0u8; 4];
            self.reader.read_exact(&mut req).await?;
            let resp = Response::decode(h.kind, &req, h.len)?;
            if let Response::Chunk { len, .. } = resp {
                chunk_buf.resize(len, 0);
                self.reader.read_exact(chunk_buf).await?;
            }
            return Ok(resp);
        }
        let mut body = std::mem::take(&mut self.scratch);
        body.resize(h.len, 0);
        let read = self.reader.read_exact(&mut body).await;
        let resp = read
            .map_err(PeerError::from)
            .and_then(|_| Ok(Response::decode(h.kind, &body, h.len)?));
        self.keep_scratch(body);
        resp
    }

    fn keep_scratch(&mut self, mut body: Vec<u8>) {
        body.clear();
        if body.capacity() <= KEEP_SCRATCH {
            self.scratch = body;
        }
    }

    /// The client's side of the hello exchange: sends the preamble and
    /// hello, then reads the server's. The caller bounds it in time.
    pub async fn hello_as_client(
        &mut self,
        me: NodeId,
        my_name: &str,
    ) -> Result<ServerHello, PeerError> {
        self.send(&PREAMBLE).await?;
        let hello = Request::Hello {
            node: me,
            name: my_name.to_string(),
        };
        self.send(&hello.encode()).await?;
        self.flush().await?;
        self.read_preamble().await?;
        match self.read_response(&mut Vec::new()).await? {
            Response::Hello {
                node,
                name,
                digest,
                contents,
            } => Ok(ServerHello {
                node,
                name,
                digest,
                contents,
            }),
            _ => Err(PeerError::Unexpected(0)),
        }
    }

    /// The server's side, first half: the client's preamble and hello must
    /// both arrive within `deadline`.
    pub async fn hello_from_client(
        &mut self,
        deadline: Duration,
    ) -> Result<ClientHello, PeerError> {
        let hello = tokio::time::timeout(deadline, async {
            self.read_preamble().await?;
            self.read_request().await
        })
        .await
        .map_err(|_| PeerError::Timeout("handshaking"))??;
        match hello {
            Request::Hello { node, name } => Ok(ClientHello { node, name }),
            _ => Err(PeerError::Handshake(WireError::Malformed(
                "first frame must be a hello".into(),
            ))),
        }
    }

    /// The server's side, second half: its preamble and `hello` (a
    /// [`Response::Hello`]), flushed.
    pub async fn hello_to_client(&mut self, hello: &Response) -> Result<(), PeerError> {
        self.send(&PREAMBLE).await?;
        self.send(&hello.encode()).await?;
        self.flush().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair() -> (FramedConn, FramedConn) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (c, s) = tokio::join!(TcpStream::connect(addr), l.accept());
        (
            FramedConn::new(c.unwrap(), Buffers::CLIENT),
            FramedConn::new(s.unwrap().0, Buffers::SERVER),
        )
    }

    #[tokio::test]
    async fn both_roles_exchange_hellos() {
        let (mut c, mut s) = pair().await;
        let server = async {
            let hello = s.hello_from_client(Duration::from_secs(3)).await?;
            let answer = Response::Hello {
                node: NodeId([2; 16]),
                name: "srv".into(),
                digest: [7; 16],
                contents: 3,
            };
            s.hello_to_client(&answer).await?;
            Ok::<_, PeerError>(hello)
        };
        let (got_c, got_s) = tokio::join!(c.hello_as_client(NodeId([1; 16]), "cli"), server);
        let (got_c, got_s) = (got_c.unwrap(), got_s.unwrap());
        assert_eq!((got_s.node, got_s.name.as_str()), (NodeId([1; 16]), "cli"));
        assert_eq!((got_c.node, got_c.name.as_str()), (NodeId([2; 16]), "srv"));
        assert_eq!((got_c.digest, got_c.contents), ([7; 16], 3));
    }

    #[tokio::test]
    async fn a_request_over_the_limit_is_refused_before_its_body() {
        let (mut c, mut s) = pair().await;
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

    #[tokio::test]
    async fn a_first_frame_other_than_hello_fails_the_handshake() {
        let (mut c, mut s) = pair().await;
        c.send(&PREAMBLE).await.unwrap();
        c.send(&Request::Goodbye.encode()).await.unwrap();
        c.flush().await.unwrap();
        let err = s
            .hello_from_client(Duration::from_secs(3))
            .await
            .unwrap_err();
        assert!(matches!(err, PeerError::Handshake(_)), "{err}");
    }

    #[tokio::test]
    async fn a_silent_client_times_out_the_handshake() {
        let (_c, mut s) = pair().await;
        let err = s
            .hello_from_client(Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, PeerError::Timeout("handshaking")), "{err}");
    }
}
