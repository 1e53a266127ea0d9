//! What a content is: its size, chunk size, whole-file SHA-256 and the BLAKE3
//! hash of every chunk, and the content id that commits to all of them.
//! Also the streaming file hasher and the category of a file name.
//! Owns no state and touches no file except the one it is asked to hash.

use std::fs::File;
use std::io::{self, Read, Seek};
use std::path::Path;
use std::sync::mpsc;

use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::id::{ChunkHash, ContentId};

/// Chunk size of every content this version creates: 1 MiB. Large enough
/// that per-chunk overhead vanishes at gigabytes per second, small enough
/// that a chunk buffer is cheap and a lost chunk costs little.
pub const CHUNK_SIZE: u32 = 1 << 20;
/// Largest chunk size accepted from a peer.
pub const MAX_CHUNK_SIZE: u32 = 4 << 20;
/// Smallest chunk size accepted from a peer. Every request, refusal and
/// bookkeeping step costs the same whatever the chunk's size, so a
/// manifest of tiny chunks would let a peer turn a small file into
/// hundreds of thousands of round trips (CPU amplification).
pub const MIN_CHUNK_SIZE: u32 = 64 << 10;
/// Most chunks in one manifest (a 512 GiB file at 1 MiB chunks); bounds the
/// manifest frame at 16 MiB.
pub const MAX_CHUNKS: usize = 512 * 1024;

/// Files up to this size are hashed in one read on the calling thread
/// (`hash_file`); larger ones stream through chunk buffers, with SHA-256 on
/// a second thread.
const SMALL_FILE: u64 = 256 << 10;

/// Domain separation for the content id hash.
const CONTENT_ID_DOMAIN: &[u8] = b"lanshare content id v1\0";

/// Everything needed to verify a content chunk by chunk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub size: u64,
    pub chunk_size: u32,
    /// SHA-256 of the whole file, shown to users to compare with published sums.
    pub sha256: [u8; 32],
    pub chunks: ChunkList,
}

/// The chunk hashes of a manifest, in order. Most shared files are one
/// chunk: that hash is held inline, with no allocation of its own; more
/// are one slice sized to them. Encoded as a sequence, the bytes of a
/// `Vec<ChunkHash>`.
#[derive(Clone)]
pub enum ChunkList {
    /// No chunk (an empty file) or one.
    Inline(Option<ChunkHash>),
    Many(Box<[ChunkHash]>),
}

impl From<Vec<ChunkHash>> for ChunkList {
    fn from(v: Vec<ChunkHash>) -> Self {
        match v.as_slice() {
            [] => ChunkList::Inline(None),
            [one] => ChunkList::Inline(Some(*one)),
            _ => ChunkList::Many(v.into_boxed_slice()),
        }
    }
}

impl FromIterator<ChunkHash> for ChunkList {
    fn from_iter<I: IntoIterator<Item = ChunkHash>>(iter: I) -> Self {
        iter.into_iter().collect::<Vec<_>>().into()
    }
}

impl std::ops::Deref for ChunkList {
    type Target = [ChunkHash];
    fn deref(&self) -> &[ChunkHash] {
        match self {
            ChunkList::Inline(one) => one.as_slice(),
            ChunkList::Many(all) => all,
        }
    }
}

impl std::ops::DerefMut for ChunkList {
    fn deref_mut(&mut self) -> &mut [ChunkHash] {
        match self {
            ChunkList::Inline(one) => one.as_mut_slice(),
            ChunkList::Many(all) => all,
        }
    }
}

impl PartialEq for ChunkList {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for ChunkList {}

impl std::fmt::Debug for ChunkList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl Serialize for ChunkList {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for ChunkList {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Vec::<ChunkHash>::deserialize(d).map(ChunkList::from)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error(
        "chunk size {0} is not a power of two between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE} bytes"
    )]
    ChunkSize(u32),
    #[error("manifest lists {got} chunks but a {size}-byte file at this chunk size has {want}")]
    ChunkCount { size: u64, got: usize, want: u64 },
    #[error("manifest does not match content id {0}")]
    WrongId(ContentId),
}

impl Manifest {
    /// Number of chunks a file of `size` bytes has (an empty file has none).
    pub fn chunk_count_for(size: u64, chunk_size: u32) -> u64 {
        size.div_ceil(chunk_size as u64)
    }

    /// Longest `Manifest` response frame (kind byte, request id and
    /// manifest) that can describe a content of `size` bytes: its chunk
    /// count is at most `size / MIN_CHUNK_SIZE`, rounded up.
    pub fn max_frame_len(size: u64) -> u32 {
        let chunks = Self::chunk_count_for(size, MIN_CHUNK_SIZE).min(MAX_CHUNKS as u64);
        (64 + 32 * chunks) as u32
    }

    pub fn chunk_count(&self) -> u32 {
        self.chunks.len() as u32
    }

    /// Byte length of chunk `index` (the last one may be short).
    pub fn chunk_len(&self, index: u32) -> u32 {
        let start = index as u64 * self.chunk_size as u64;
        (self.size.saturating_sub(start)).min(self.chunk_size as u64) as u32
    }

    pub fn chunk_offset(&self, index: u32) -> u64 {
        index as u64 * self.chunk_size as u64
    }

    /// The content id: BLAKE3 over a domain tag, the size, the chunk size,
    /// the SHA-256 and every chunk hash, in that order (see docs/protocol.md).
    pub fn content_id(&self) -> ContentId {
        let mut h = blake3::Hasher::new();
        h.update(CONTENT_ID_DOMAIN);
        h.update(&self.size.to_le_bytes());
        h.update(&self.chunk_size.to_le_bytes());
        h.update(&self.sha256);
        for c in self.chunks.iter() {
            h.update(&c.0);
        }
        ContentId(*h.finalize().as_bytes())
    }

    /// Checks the manifest is internally consistent.
    pub fn check_shape(&self) -> Result<(), ManifestError> {
        if !self.chunk_size.is_power_of_two()
            || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size)
        {
            return Err(ManifestError::ChunkSize(self.chunk_size));
        }
        let want = Self::chunk_count_for(self.size, self.chunk_size);
        if want != self.chunks.len() as u64 || self.chunks.len() > MAX_CHUNKS {
            return Err(ManifestError::ChunkCount {
                size: self.size,
                got: self.chunks.len(),
                want,
            });
        }
        Ok(())
    }

    /// Checks a manifest received from a peer against the id it was asked for.
    pub fn verify(&self, id: &ContentId) -> Result<(), ManifestError> {
        self.check_shape()?;
        if self.content_id() != *id {
            return Err(ManifestError::WrongId(*id));
        }
        Ok(())
    }

    /// True when `data` is chunk `index` of this content.
    pub fn chunk_matches(&self, index: u32, data: &[u8]) -> bool {
        self.chunks.get(index as usize).is_some_and(|h| {
            data.len() == self.chunk_len(index) as usize && blake3::hash(data).as_bytes() == &h.0
        })
    }
}

/// Hashes a file into its manifest, reading it once in chunk-sized buffers.
/// BLAKE3 runs on the reading thread while SHA-256 runs on a second one, so
/// indexing costs about as much as SHA-256 alone. Memory: a few chunk buffers.
/// `progress` is called with the bytes hashed so far.
pub fn hash_file(path: &Path, mut progress: impl FnMut(u64)) -> io::Result<Manifest> {
    let mut file = File::open(path)?;
    // Most shared files are small: one read and both hashes on this thread,
    // with no buffers to set up and no thread to start (a tree of 100,000
    // small files is indexed at the speed of `sha256sum`).
    if file.metadata()?.len() <= SMALL_FILE {
        let mut data = Vec::new();
        (&mut file).take(SMALL_FILE + 1).read_to_end(&mut data)?;
        if data.len() as u64 <= SMALL_FILE {
            progress(data.len() as u64);
            return Ok(manifest_of(&data, CHUNK_SIZE));
        }
        // It grew since the stat: hash it as the large file it now is.
        file.rewind()?;
    }
    let chunk_size = CHUNK_SIZE;
    const BUFFERS: usize = 4;
    let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(BUFFERS);
    let (empty_tx, empty_rx) = mpsc::sync_channel::<Vec<u8>>(BUFFERS);
    for _ in 0..BUFFERS {
        empty_tx
            .send(vec![0u8; chunk_size as usize])
            .expect("channel has room");
    }
    std::thread::scope(|s| {
        let sha_thread = s.spawn(move || {
            let mut sha = sha2::Sha256::new();
            for (buf, len) in full_rx {
                sha.update(&buf[..len]);
                // The reader may have stopped early; then nobody takes buffers back.
                let _ = empty_tx.send(buf);
            }
            let out: [u8; 32] = sha.finalize().into();
            out
        });
        let mut chunks = Vec::new();
        let mut size = 0u64;
        let read_result = (|| -> io::Result<()> {
            loop {
                let mut buf = empty_rx.recv().expect("sha thread returns buffers");
                let len = read_full(&mut file, &mut buf)?;
                if len == 0 {
                    return Ok(());
                }
                if chunks.len() >= MAX_CHUNKS {
                    return Err(io::Error::new(
                        io::ErrorKind::FileTooLarge,
                        "file is larger than lanshare can share (512 GiB)",
                    ));
                }
                chunks.push(ChunkHash(*blake3::hash(&buf[..len]).as_bytes()));
                size += len as u64;
                progress(size);
                full_tx.send((buf, len)).expect("sha thread is running");
                if len < chunk_size as usize {
                    return Ok(());
                }
            }
        })();
        drop(full_tx);
        let sha256 = sha_thread.join().expect("sha256 thread does not panic");
        read_result?;
        Ok(Manifest {
            size,
            chunk_size,
            sha256,
            chunks: chunks.into(),
        })
    })
}

/// Reads until `buf` is full or the file ends; returns the bytes read.
pub fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Manifest of an in-memory byte string (tests, benches, small data).
pub fn manifest_of(data: &[u8], chunk_size: u32) -> Manifest {
    let chunks = data
        .chunks(chunk_size as usize)
        .map(|c| ChunkHash(*blake3::hash(c).as_bytes()))
        .collect();
    let sha256: [u8; 32] = sha2::Sha256::digest(data).into();
    Manifest {
        size: data.len() as u64,
        chunk_size,
        sha256,
        chunks,
    }
}

/// The seven categories users search by (seed 000).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Audio,
    Video,
    Image,
    Text,
    Document,
    Archive,
    Other,
}

impl Category {
    pub const ALL: [Category; 7] = [
        Category::Audio,
        Category::Video,
        Category::Image,
        Category::Text,
        Category::Document,
        Category::Archive,
        Category::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Audio => "audio",
            Category::Video => "video",
            Category::Image => "image",
            Category::Text => "text",
            Category::Document => "document",
            Category::Archive => "archive",
            Category::Other => "other",
        }
    }

    /// Guesses the category from a file name's extension.
    pub fn from_name(name: &str) -> Category {
        let ext = match name.rsplit_once('.') {
            Some((stem, ext)) if !stem.is_empty() => ext.to_ascii_lowercase(),
            _ => return Category::Other,
        };
        match ext.as_str() {
            "mp3" | "flac" | "wav" | "ogg" | "opus" | "m4a" | "aac" | "wma" | "aiff" | "mid"
            | "midi" => Category::Audio,
            "mp4" | "mkv" | "avi" | "mov" | "webm" | "wmv" | "flv" | "m4v" | "mpg" | "mpeg"
            | "ts" => Category::Video,
            "png" | "jpg" | "jpeg" | "gif" | "bmp" | "webp" | "tif" | "tiff" | "svg" | "heic"
            | "ico" | "raw" => Category::Image,
            "txt" | "md" | "csv" | "log" | "json" | "xml" | "yaml" | "yml" | "toml" | "ini"
            | "rs" | "py" | "c" | "h" | "js" | "html" | "css" | "sh" => Category::Text,
            "pdf" | "doc" | "docx" | "odt" | "rtf" | "xls" | "xlsx" | "ods" | "ppt" | "pptx"
            | "odp" | "epub" => Category::Document,
            "zip" | "tar" | "gz" | "tgz" | "bz2" | "xz" | "zst" | "7z" | "rar" | "iso" | "deb"
            | "rpm" => Category::Archive,
            _ => Category::Other,
        }
    }
}

impl std::str::FromStr for Category {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Category::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown category {s:?}; use one of audio, video, image, text, document, archive, other"))
    }
}

impl std::fmt::Display for Category {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn boundary_sizes_hash_like_in_memory() {
        let (cs, small) = (CHUNK_SIZE as usize, SMALL_FILE as usize);
        for size in [
            0,
            1,
            small - 1,
            small,
            small + 1,
            cs - 1,
            cs,
            cs + 1,
            3 * cs + 7,
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let mut f = tempfile::NamedTempFile::new().unwrap();
            f.write_all(&data).unwrap();
            let m = hash_file(f.path(), |_| {}).unwrap();
            assert_eq!(m, manifest_of(&data, CHUNK_SIZE), "size {size}");
            assert_eq!(
                m.chunk_count() as u64,
                Manifest::chunk_count_for(size as u64, CHUNK_SIZE)
            );
            m.verify(&m.content_id()).unwrap();
            for i in 0..m.chunk_count() {
                let start = m.chunk_offset(i) as usize;
                let chunk = &data[start..start + m.chunk_len(i) as usize];
                assert!(m.chunk_matches(i, chunk));
                assert!(!m.chunk_matches(i, &chunk[1..]));
            }
        }
    }

    #[test]
    fn chunk_size_must_be_a_power_of_two_in_range() {
        let data = vec![7u8; 300 << 10];
        for cs in [
            1,
            4,
            1000,
            MIN_CHUNK_SIZE / 2,
            MIN_CHUNK_SIZE + 1,
            3 << 20,
            2 * MAX_CHUNK_SIZE,
        ] {
            let m = manifest_of(&data, cs);
            assert_eq!(
                m.verify(&m.content_id()),
                Err(ManifestError::ChunkSize(cs)),
                "{cs}"
            );
        }
        for cs in [MIN_CHUNK_SIZE, 128 << 10, CHUNK_SIZE, MAX_CHUNK_SIZE] {
            let m = manifest_of(&data, cs);
            m.verify(&m.content_id()).unwrap();
        }
        assert!(
            CHUNK_SIZE.is_power_of_two() && (MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&CHUNK_SIZE)
        );
    }

    #[test]
    fn content_id_commits_to_every_field() {
        let data: Vec<u8> = (0..3 * MIN_CHUNK_SIZE as usize + 5)
            .map(|i| i as u8)
            .collect();
        let m = manifest_of(&data, MIN_CHUNK_SIZE);
        let id = m.content_id();
        let mut other = m.clone();
        other.sha256[0] ^= 1;
        assert_ne!(other.content_id(), id);
        let mut other = m.clone();
        other.chunks[2].0[0] ^= 1;
        assert_ne!(other.content_id(), id);
        assert_eq!(other.verify(&id), Err(ManifestError::WrongId(id)));
        let mut other = m.clone();
        let n = other.chunks.len();
        other.chunks = other.chunks[..n - 1].to_vec().into();
        assert!(matches!(
            other.verify(&id),
            Err(ManifestError::ChunkCount { .. })
        ));
    }

    /// The chunk list is encoded as the `Vec` it was (the wire and the
    /// index cache do not change), and one chunk is held inline.
    #[test]
    fn a_chunk_list_encodes_as_a_vec() {
        for n in [0usize, 1, 3] {
            let data = vec![7u8; n * MIN_CHUNK_SIZE as usize];
            let m = manifest_of(&data, MIN_CHUNK_SIZE);
            assert_eq!(m.chunks.len(), n);
            let as_vec = (m.size, m.chunk_size, m.sha256, m.chunks.to_vec());
            let bytes = postcard::to_allocvec(&m).unwrap();
            assert_eq!(bytes, postcard::to_allocvec(&as_vec).unwrap());
            assert_eq!(postcard::from_bytes::<Manifest>(&bytes).unwrap(), m);
            assert_eq!(matches!(m.chunks, ChunkList::Many(_)), n > 1);
        }
        assert!(size_of::<ChunkList>() <= 40);
    }

    #[test]
    fn categories() {
        assert_eq!(Category::from_name("photo.PNG"), Category::Image);
        assert_eq!(Category::from_name("song.flac"), Category::Audio);
        assert_eq!(Category::from_name(".bashrc"), Category::Other);
        assert_eq!(Category::from_name("README"), Category::Other);
        assert_eq!("Video".parse::<Category>(), Ok(Category::Video));
        assert!("nope".parse::<Category>().is_err());
    }
}
