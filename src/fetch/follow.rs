//! The follower: reads the partial file in order as chunks complete and
//! hashes it with SHA-256, so the whole file is checked by the time the
//! last chunk lands. A chunk that fails its check on disk is fetched again.
//!
//! Never talks to a peer; changes chunk states only through
//! [`super::state::ChunkMap::mark_bad`].

use std::sync::Arc;

use sha2::Digest;
use tokio_util::sync::CancellationToken;

use super::FetchError;
use super::state::ChunkState;
use super::swarm::Shared;

/// Reads the partial file in order as chunks complete, hashing it with
/// SHA-256 (and re-checking with BLAKE3 any chunk this process did not hash
/// itself, i.e. one from an earlier run). Returns the SHA-256 once the whole
/// file is read and matches the manifest.
pub(super) async fn follow(
    shared: Arc<Shared>,
    cancel: CancellationToken,
) -> Result<[u8; 32], FetchError> {
    let mut changes = shared.changed.subscribe();
    let mut sha = sha2::Sha256::new();
    let mut buf = Vec::with_capacity(shared.manifest.chunk_size as usize);
    let total = shared.manifest.chunk_count();
    let mut index = 0;
    while index < total {
        changes.mark_unchanged();
        if shared.map.lock().expect("map lock").state(index) != Some(ChunkState::Done) {
            // A closed channel (never: `shared` holds the sender) looks again.
            if cancel
                .run_until_cancelled(changes.changed())
                .await
                .is_none()
            {
                return Err(FetchError::Cancelled);
            }
            continue;
        }
        let trusted = shared.verified_here.lock().expect("lock").get(index);
        let s = shared.clone();
        let (ok, sha_back, buf_back) = tokio::task::spawn_blocking(move || {
            let m = &s.manifest;
            buf.resize(m.chunk_len(index) as usize, 0);
            if s.partial.read_at(m.chunk_offset(index), &mut buf).is_err() {
                return (false, sha, buf);
            }
            if !trusted && !m.chunk_matches(index, &buf) {
                return (false, sha, buf);
            }
            sha.update(&buf);
            (true, sha, buf)
        })
        .await
        .expect("verifier does not panic");
        sha = sha_back;
        buf = buf_back;
        if !ok {
            tracing::warn!(
                chunk = index,
                "chunk failed the check on disk; fetching it again"
            );
            shared.partial.mark_missing(index);
            shared.map.lock().expect("map lock").mark_bad(index);
            shared.bump();
            continue;
        }
        index += 1;
    }
    let digest: [u8; 32] = sha.finalize().into();
    if digest != shared.manifest.sha256 {
        return Err(FetchError::Sha256Mismatch);
    }
    Ok(digest)
}
