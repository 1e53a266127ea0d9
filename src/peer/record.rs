//! Records: a private-mode connection's byte stream after its handshake,
//! cut into Noise transport messages. Each record is
//!
//! ```text
//! length u16 BE | one Noise transport message (ciphertext + 16-byte tag)
//! ```
//! with at most [`MAX_RECORD`] bytes after the length, so at most
//! [`MAX_PLAINTEXT`] bytes of plaintext. Frames are a layer above and span
//! records freely. Both directions rekey (Noise `REKEY`) after every
//! [`REKEY_EVERY`] records, deterministically, so both ends agree.
//!
//! [`Records`] seals and opens (no I/O: benches and fuzzing use it alone);
//! [`SecureIo`] is the buffered socket over it that [`super::conn`] uses.
//! Owns record sizes and buffers; knows nothing of frames or handshakes.

use snow::TransportState;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use super::PeerError;
use crate::wire::WireError;

/// Bytes of a record's length field.
pub const LEN_PREFIX: usize = 2;
/// Bytes of the AEAD tag at the end of every record.
pub const TAG_LEN: usize = 16;
/// Largest record after its length field (Noise's message limit).
pub const MAX_RECORD: usize = 65535;
/// Largest plaintext in one record.
pub const MAX_PLAINTEXT: usize = MAX_RECORD - TAG_LEN;
/// Records each way between two rekeys.
pub const REKEY_EVERY: u64 = 1 << 20;
/// Sealed bytes queued before they are written to the socket.
const OUT_FLUSH: usize = 256 * 1024;

/// Why a record was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record of {0} bytes is shorter than its tag")]
    Short(usize),
    #[error("record failed authentication")]
    Forged,
    #[error("record plaintext of {0} bytes is too large")]
    TooLarge(usize),
}

impl From<RecordError> for PeerError {
    fn from(e: RecordError) -> Self {
        PeerError::Protocol(WireError::Malformed(e.to_string()))
    }
}

/// The length a record header announces, refused before the body is read
/// when it cannot hold a tag.
pub fn record_len(header: [u8; LEN_PREFIX]) -> Result<usize, RecordError> {
    let len = u16::from_be_bytes(header) as usize;
    if len < TAG_LEN {
        return Err(RecordError::Short(len));
    }
    Ok(len)
}

/// Both directions' ciphers of a finished handshake, with their record
/// counts (for rekeying).
pub struct Records {
    noise: TransportState,
    sent: u64,
    received: u64,
}

impl Records {
    pub fn new(noise: TransportState) -> Records {
        Records {
            noise,
            sent: 0,
            received: 0,
        }
    }

    /// Seals `plain` (at most [`MAX_PLAINTEXT`] bytes) as one record
    /// appended to `out`, length included.
    pub fn seal(&mut self, plain: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        if plain.len() > MAX_PLAINTEXT {
            return Err(RecordError::TooLarge(plain.len()));
        }
        let at = out.len();
        let len = plain.len() + TAG_LEN;
        out.resize(at + LEN_PREFIX + len, 0);
        out[at..at + LEN_PREFIX].copy_from_slice(&(len as u16).to_be_bytes());
        self.noise
            .write_message(plain, &mut out[at + LEN_PREFIX..])
            .map_err(|_| RecordError::TooLarge(plain.len()))?;
        self.sent += 1;
        if self.sent.is_multiple_of(REKEY_EVERY) {
            self.noise.rekey_outgoing();
        }
        Ok(())
    }

    /// Opens one record body (after its length) into `out`, which must
    /// hold at least `record.len()` bytes; returns the plaintext length.
    pub fn open(&mut self, record: &[u8], out: &mut [u8]) -> Result<usize, RecordError> {
        if record.len() < TAG_LEN {
            return Err(RecordError::Short(record.len()));
        }
        let n = self
            .noise
            .read_message(record, out)
            .map_err(|_| RecordError::Forged)?;
        self.received += 1;
        if self.received.is_multiple_of(REKEY_EVERY) {
            self.noise.rekey_incoming();
        }
        Ok(n)
    }
}

/// A connection's socket speaking records: buffered both ways.
pub struct SecureIo {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    records: Records,
    /// Ciphertext read from the socket: `inbuf[in_start..in_end]`.
    inbuf: Vec<u8>,
    in_start: usize,
    in_end: usize,
    /// An opened record not consumed yet: `plain[plain_start..plain_end]`.
    plain: Vec<u8>,
    plain_start: usize,
    plain_end: usize,
    /// Plaintext waiting to fill a record.
    pending: Vec<u8>,
    /// Sealed records waiting to be written.
    out: Vec<u8>,
}

impl SecureIo {
    /// `read_buf`: bytes of ciphertext read from the socket at once (at
    /// least one whole record).
    pub fn new(
        rd: OwnedReadHalf,
        wr: OwnedWriteHalf,
        noise: TransportState,
        read_buf: usize,
    ) -> SecureIo {
        SecureIo {
            rd,
            wr,
            records: Records::new(noise),
            inbuf: vec![0; read_buf.max(LEN_PREFIX + MAX_RECORD)],
            in_start: 0,
            in_end: 0,
            plain: vec![0; MAX_RECORD],
            plain_start: 0,
            plain_end: 0,
            pending: Vec::with_capacity(MAX_PLAINTEXT),
            out: Vec::with_capacity(OUT_FLUSH + LEN_PREFIX + MAX_RECORD),
        }
    }

    #[cfg(test)]
    pub(super) fn records_mut(&mut self) -> &mut Records {
        &mut self.records
    }

    pub fn socket(&self) -> &tokio::net::TcpStream {
        self.wr.as_ref()
    }

    /// True when received bytes (opened or not) wait to be read.
    pub fn input_buffered(&self) -> bool {
        self.plain_start < self.plain_end || self.in_start < self.in_end
    }

    /// Makes `want` bytes of ciphertext available at `in_start`.
    async fn fill(&mut self, want: usize) -> std::io::Result<()> {
        if self.in_end - self.in_start >= want {
            return Ok(());
        }
        if self.inbuf.len() - self.in_start < want {
            self.inbuf.copy_within(self.in_start..self.in_end, 0);
            self.in_end -= self.in_start;
            self.in_start = 0;
        }
        while self.in_end - self.in_start < want {
            let n = self.rd.read(&mut self.inbuf[self.in_end..]).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.in_end += n;
        }
        Ok(())
    }

    /// Reads exactly `buf.len()` bytes of plaintext. An end of stream is
    /// an `UnexpectedEof` I/O error.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), PeerError> {
        let mut filled = 0;
        while filled < buf.len() {
            if self.plain_start < self.plain_end {
                let n = (self.plain_end - self.plain_start).min(buf.len() - filled);
                buf[filled..filled + n]
                    .copy_from_slice(&self.plain[self.plain_start..self.plain_start + n]);
                self.plain_start += n;
                filled += n;
                continue;
            }
            self.fill(LEN_PREFIX).await?;
            let header = [self.inbuf[self.in_start], self.inbuf[self.in_start + 1]];
            let len = record_len(header)?;
            self.fill(LEN_PREFIX + len).await?;
            let body = self.in_start + LEN_PREFIX;
            let record = &self.inbuf[body..body + len];
            if buf.len() - filled >= len {
                // Straight into the caller's buffer (a chunk), no copy after.
                filled += self.records.open(record, &mut buf[filled..])?;
            } else {
                self.plain_end = self.records.open(record, &mut self.plain)?;
                self.plain_start = 0;
            }
            self.in_start += LEN_PREFIX + len;
        }
        Ok(())
    }

    /// Queues plaintext; full records are sealed as they fill.
    pub async fn send(&mut self, mut bytes: &[u8]) -> Result<(), PeerError> {
        while !bytes.is_empty() {
            if self.pending.is_empty() && bytes.len() >= MAX_PLAINTEXT {
                self.records.seal(&bytes[..MAX_PLAINTEXT], &mut self.out)?;
                bytes = &bytes[MAX_PLAINTEXT..];
            } else {
                let take = (MAX_PLAINTEXT - self.pending.len()).min(bytes.len());
                self.pending.extend_from_slice(&bytes[..take]);
                bytes = &bytes[take..];
                self.seal_pending_if_full()?;
            }
            self.write_out_if_full().await?;
        }
        Ok(())
    }

    /// Queues `len` bytes of `file` from `offset`, read piece by piece
    /// into the record being filled (so no buffer grows with the chunk);
    /// `progress` is called after each write to the socket.
    pub async fn send_file_range(
        &mut self,
        file: &std::fs::File,
        offset: u64,
        len: usize,
        progress: impl Fn(),
    ) -> Result<(), PeerError> {
        let mut done = 0;
        while done < len {
            let at = self.pending.len();
            let take = (MAX_PLAINTEXT - at).min(len - done);
            self.pending.resize(at + take, 0);
            crate::platform::read_exact_at(file, &mut self.pending[at..], offset + done as u64)?;
            done += take;
            self.seal_pending_if_full()?;
            if self.write_out_if_full().await? {
                progress();
            }
        }
        Ok(())
    }

    fn seal_pending_if_full(&mut self) -> Result<(), RecordError> {
        if self.pending.len() == MAX_PLAINTEXT {
            self.records.seal(&self.pending, &mut self.out)?;
            self.pending.clear();
        }
        Ok(())
    }

    async fn write_out_if_full(&mut self) -> std::io::Result<bool> {
        if self.out.len() < OUT_FLUSH {
            return Ok(false);
        }
        self.wr.write_all(&self.out).await?;
        self.out.clear();
        Ok(true)
    }

    /// Seals what is pending and writes every sealed record.
    pub async fn flush(&mut self) -> Result<(), PeerError> {
        if !self.pending.is_empty() {
            self.records.seal(&self.pending, &mut self.out)?;
            self.pending.clear();
        }
        if !self.out.is_empty() {
            self.wr.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }
}
