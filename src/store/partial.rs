//! A download in progress: the `.part` file in downloads/ (hidden, never
//! indexed), and its state file in `.lanshare/partial/` recording the
//! manifest and which chunks are verified, so a stopped fetch resumes.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::{Home, StoreError, io_err, safe_file_name};
use crate::chunkset::Bitmap;
use crate::id::ContentId;
use crate::manifest::Manifest;

/// How often the verified-chunk bitmap is written while chunks arrive.
const STATE_SAVE_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Serialize, Deserialize)]
struct StateFile {
    name: String,
    manifest: Manifest,
    have: Bitmap,
}

struct HaveState {
    have: Bitmap,
    last_save: Instant,
    dirty: bool,
}

pub struct Partial {
    pub id: ContentId,
    pub manifest: Arc<Manifest>,
    /// Name the file gets in downloads/ (already made safe).
    pub name: String,
    part_path: PathBuf,
    state_path: PathBuf,
    file: Arc<File>,
    /// Verified chunks. Std mutex: held only for bit operations.
    state: Mutex<HaveState>,
}

impl Partial {
    pub(super) fn open(
        home: &Home,
        manifest: Arc<Manifest>,
        name: &str,
    ) -> Result<Partial, StoreError> {
        let id = manifest.content_id();
        let name = safe_file_name(name);
        let part_path = home
            .downloads()
            .join(format!(".lanshare-{}.part", &id.to_hex()[..24]));
        let state_path = home.partial_dir().join(format!("{}.state", id.to_hex()));
        let part_existed = part_path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part_path)
            .map_err(io_err("cannot create partial file", &part_path))?;
        file.set_len(manifest.size)
            .map_err(io_err("cannot size partial file", &part_path))?;
        let mut have = Bitmap::new(manifest.chunk_count());
        if part_existed
            && let Ok(bytes) = std::fs::read(&state_path)
            && let Ok(state) = postcard::from_bytes::<StateFile>(&bytes)
            && state.manifest == *manifest
            && state.have.as_bytes().len() == have.as_bytes().len()
        {
            have = state.have;
            tracing::info!(id = %id.short(), chunks = have.count_ones(), "resuming partial download");
        }
        let p = Partial {
            id,
            manifest,
            name,
            part_path,
            state_path,
            file: Arc::new(file),
            state: Mutex::new(HaveState {
                have,
                last_save: Instant::now(),
                dirty: true,
            }),
        };
        p.save_state()?;
        Ok(p)
    }

    pub fn has(&self, index: u32) -> bool {
        self.state.lock().expect("partial lock").have.get(index)
    }

    pub fn have(&self) -> Bitmap {
        self.state.lock().expect("partial lock").have.clone()
    }

    pub fn verified_count(&self) -> u32 {
        self.state.lock().expect("partial lock").have.count_ones()
    }

    /// Writes a chunk that has already been verified against the manifest.
    pub fn write_chunk(&self, index: u32, data: &[u8]) -> Result<(), StoreError> {
        self.file
            .write_all_at(data, self.manifest.chunk_offset(index))
            .map_err(io_err("cannot write", &self.part_path))?;
        let save = {
            let mut s = self.state.lock().expect("partial lock");
            s.have.set(index);
            s.dirty = true;
            s.last_save.elapsed() >= STATE_SAVE_INTERVAL
        };
        if save {
            self.save_state()?;
        }
        Ok(())
    }

    /// Forgets a chunk (it failed the final check).
    pub fn mark_missing(&self, index: u32) {
        let mut s = self.state.lock().expect("partial lock");
        s.have.clear(index);
        s.dirty = true;
    }

    /// The partial file, for serving verified chunks without a copy.
    pub fn file(&self) -> &Arc<File> {
        &self.file
    }

    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), StoreError> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(io_err("cannot read", &self.part_path))
    }

    /// Writes the state file if anything changed since the last write.
    pub fn save_state(&self) -> Result<(), StoreError> {
        let bytes = {
            let mut s = self.state.lock().expect("partial lock");
            if !s.dirty {
                return Ok(());
            }
            s.dirty = false;
            s.last_save = Instant::now();
            postcard::to_allocvec(&StateFile {
                name: self.name.clone(),
                manifest: (*self.manifest).clone(),
                have: s.have.clone(),
            })
            .expect("serializable")
        };
        let tmp = self.state_path.with_extension("tmp");
        std::fs::write(&tmp, bytes).map_err(io_err("cannot write", &tmp))?;
        std::fs::rename(&tmp, &self.state_path).map_err(io_err("cannot write", &self.state_path))
    }

    /// Deletes the partial file and its state (its content can never verify).
    pub fn discard(&self) {
        let _ = std::fs::remove_file(&self.part_path);
        let _ = std::fs::remove_file(&self.state_path);
    }

    /// Flushes the data and links it into `dir` under the first free name
    /// (`name`, `name (1)`, ...); an existing file is never replaced.
    pub(super) fn finish(&self, dir: &Path) -> Result<PathBuf, StoreError> {
        self.file
            .sync_all()
            .map_err(io_err("cannot flush", &self.part_path))?;
        let (stem, ext) = match self.name.rsplit_once('.') {
            Some((s, e)) if !s.is_empty() => (s.to_string(), format!(".{e}")),
            _ => (self.name.clone(), String::new()),
        };
        for n in 0..10_000u32 {
            let candidate = if n == 0 {
                self.name.clone()
            } else {
                // Keep the name within 255 bytes with its suffix.
                let suffix = format!(" ({n}){ext}");
                let mut stem = stem.clone();
                while stem.len() + suffix.len() > crate::wire::MAX_FILE_NAME {
                    stem.pop();
                }
                format!("{stem}{suffix}")
            };
            let target = dir.join(candidate);
            match std::fs::hard_link(&self.part_path, &target) {
                Ok(()) => {
                    let _ = std::fs::remove_file(&self.part_path);
                    let _ = std::fs::remove_file(&self.state_path);
                    return Ok(target);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(StoreError::Io {
                        what: "cannot move download into place at",
                        path: target,
                        source: e,
                    });
                }
            }
        }
        Err(StoreError::Io {
            what: "no free file name in",
            path: dir.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        })
    }
}
