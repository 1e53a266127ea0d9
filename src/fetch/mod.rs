//! The downloader: gets a verified manifest, then pulls chunks from every
//! holder at once (one worker per peer, a few requests in flight each, so a
//! faster peer simply gets more), verifies each chunk before writing it,
//! drops peers that err, stall or lie, retries chunks nobody can serve right
//! now with backoff, and finally checks the whole file (SHA-256, computed
//! from disk in order while the download runs) before moving it into place.
//! docs/fetch-states.md explains it. The parts, each in its own module:
//! - [`ctx`]: [`FetchCtx`], the stages of one download, start to end;
//! - [`manifest`]: getting a manifest from the holders and checking it;
//! - [`swarm`]: the scheduler, starting a worker per usable holder and
//!   deciding when to give up;
//! - [`worker`]: one peer's connection, requests and answers;
//! - [`follow`]: hashing the file from disk as chunks complete;
//! - pure rules, time passed in: [`state::ChunkMap`] (chunk states),
//!   [`peers::PeerBook`] (bans, backoff, the give-up rule, the typed
//!   [`peers::DropReason`]), [`judge`] (a peer too slow, a download without
//!   progress), [`endgame`] (silent and trusted workers).
//!
//! - [`folder`]: a folder download, its files fetched a few at a time
//!   through [`FetchCtx`] into the folder's own tree.
//!
//! This module holds only the download's limits, request and errors.

mod check;
mod ctx;
pub mod endgame;
pub mod folder;
mod follow;
pub mod judge;
mod manifest;
mod pause;
pub mod peers;
pub mod state;
mod swarm;
mod worker;

use std::time::Duration;

use crate::id::ContentId;
use crate::logs::human_bytes;
use crate::store::{Placement, StoreError};

pub use ctx::FetchCtx;
pub use folder::{FetchLocks, FolderEntry, FolderJob, FolderWant};
pub use peers::{DropReason, HolderMemory, PeerBook, WorkerEnd};

/// Tunables of a download.
#[derive(Clone, Debug)]
pub struct FetchLimits {
    /// Peers downloaded from at once (each costs one chunk buffer).
    pub max_peers: usize,
    /// Chunk requests in flight per peer.
    pub pipeline: usize,
    /// A peer that sends nothing for this long is dropped.
    pub stall_timeout: Duration,
    /// Give up after this long without any holder able to make progress.
    pub give_up_after: Duration,
    /// How long to wait for a first holder to appear.
    pub wait_for_holders: Duration,
    /// Holders asked for the manifest at once.
    pub manifest_fanout: usize,
    /// A holder that has not answered the manifest request for this long is
    /// reported slow and another holder is asked as well; it is dropped
    /// after three times this long.
    pub manifest_patience: Duration,
    /// In the endgame, a peer silent for this long with a chunk requested
    /// gives up its duplicate slot to another peer.
    pub endgame_patience: Duration,
    /// Least useful throughput (bytes of verified chunks per second) of a
    /// peer kept busy, and of the whole download; measured over
    /// `stall_timeout` for a peer and `give_up_after` for the download.
    pub min_rate: u64,
    /// Files of a folder download fetched at once (each one download with
    /// its own workers; together they keep the holders busy when the
    /// files are small).
    pub folder_files: usize,
}

impl Default for FetchLimits {
    fn default() -> Self {
        FetchLimits {
            max_peers: 16,
            pipeline: 4,
            stall_timeout: Duration::from_secs(10),
            give_up_after: Duration::from_secs(30),
            wait_for_holders: Duration::from_secs(3),
            manifest_fanout: 4,
            manifest_patience: Duration::from_secs(1),
            endgame_patience: Duration::from_secs(2),
            min_rate: 32 << 10,
            folder_files: 8,
        }
    }
}

/// What the user asked for.
#[derive(Clone, Debug)]
pub struct Want {
    pub id: ContentId,
    /// What the user typed: a name, a name without its extension, or an id
    /// prefix. The download is saved under the content's name that matches it.
    pub query: String,
    /// The size the user chose from (the dictionary entry the query
    /// resolved to). A manifest of another size is refused.
    pub size: Option<u64>,
    /// Where the file lands when it is part of a folder download; `None`:
    /// in downloads/ under its own name.
    pub place: Option<Placement>,
}

impl Want {
    /// A download of `id` by id, with no expectation on the size.
    pub fn id(id: ContentId) -> Want {
        Want {
            id,
            query: id.to_hex(),
            size: None,
            place: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no online peer holds {0}; run `lanshare ls` to see what the network offers")]
    NoHolders(ContentId),
    #[error("no holder could send a valid manifest ({0})")]
    NoManifest(String),
    #[error(
        "refusing the download: {holder} sent a manifest of {} ({manifest} bytes) but the content was listed as {} ({listed} bytes); that listing is wrong or forged",
        human_bytes(*manifest as f64),
        human_bytes(*listed as f64)
    )]
    SizeMismatch {
        holder: String,
        listed: u64,
        manifest: u64,
    },
    #[error(
        "not enough free space in {dir}: the download needs {} more (and {} is kept free besides), {} is free; free some space and fetch again",
        human_bytes(*needed as f64),
        human_bytes(ctx::SPACE_RESERVE as f64),
        human_bytes(*free as f64)
    )]
    NoSpace { needed: u64, free: u64, dir: String },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("download stalled: {missing} chunks missing and no peer can send them ({reasons})")]
    Stalled { missing: u32, reasons: String },
    #[error(
        "the finished file's SHA-256 differs from the one its publisher listed; the publisher's index is wrong or forged"
    )]
    Sha256Mismatch,
    #[error("cancelled")]
    Cancelled,
    #[error(
        "{failed} of the folder's {total} files could not be fetched (first: {first}); the others are in {dest}"
    )]
    FolderIncomplete {
        failed: usize,
        total: usize,
        first: String,
        dest: String,
    },
}
