//! `download_log.txt` and `upload_log.txt`: one tab-separated line per
//! transfer, appended and flushed at once so `tail -f` shows it live.
//!
//! ```text
//! time(RFC 3339 UTC, ms)  event  file  bytes  content-id  peers  duration  throughput  status  [sha256=HEX]
//! ```
//! `bytes` is what this transfer moved (a resumed download counts only what
//! it fetched); `peers` is a comma-separated list of `name@address`;
//! `status` is `ok` or `failed: reason`.
//!
//! A line is written whole or not at all: a write that a full disk cuts
//! short is cut off the file again, so the log never holds half a line.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::id::ContentId;

pub struct TransferLog {
    path: PathBuf,
    /// Std mutex: a line is written with one syscall; never held across an await.
    file: Mutex<Option<File>>,
}

/// One finished (or failed) transfer.
pub struct Transfer<'a> {
    pub event: &'a str,
    pub file: &'a str,
    pub bytes: u64,
    pub id: &'a ContentId,
    pub peers: &'a [String],
    pub duration: Duration,
    pub result: Result<(), String>,
    pub sha256: Option<&'a str>,
}

/// Replaces tabs and line breaks so a field cannot break the format.
fn field(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

pub fn human_bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0}{}", UNITS[u])
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

impl Transfer<'_> {
    pub fn line(&self, at: SystemTime) -> String {
        let secs = self.duration.as_secs_f64();
        let rate = if secs > 0.0 {
            self.bytes as f64 / secs
        } else {
            0.0
        };
        let status = match &self.result {
            Ok(()) => "ok".to_string(),
            Err(reason) => format!("failed: {}", field(reason)),
        };
        let mut line = format!(
            "{}\t{}\t{}\t{}\t{}\t{}\t{:.3}s\t{}/s\t{}",
            humantime::format_rfc3339_millis(at),
            self.event,
            field(self.file),
            self.bytes,
            self.id,
            field(&self.peers.join(",")),
            secs,
            human_bytes(rate),
            status
        );
        if let Some(sha) = self.sha256 {
            line.push_str("\tsha256=");
            line.push_str(sha);
        }
        line.push('\n');
        line
    }
}

impl TransferLog {
    pub fn new(path: &Path) -> Self {
        TransferLog {
            path: path.to_path_buf(),
            file: Mutex::new(None),
        }
    }

    /// Appends one line. A log that cannot be written is reported, not fatal.
    pub fn append(&self, t: &Transfer<'_>) {
        let line = t.line(SystemTime::now());
        let mut guard = self.file.lock().expect("log lock");
        if guard.is_none() {
            match OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
            {
                Ok(f) => *guard = Some(f),
                Err(e) => {
                    tracing::warn!(path = %self.path.display(), error = %e, "cannot open transfer log");
                    return;
                }
            }
        }
        if let Some(f) = guard.as_mut()
            && let Err(e) = append_whole(f, line.as_bytes())
        {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write transfer log; this line is lost");
            *guard = None;
        }
    }
}

/// Appends `line` whole or not at all: a write cut short (a full disk)
/// is cut off again, so the next line does not run into half of this one.
fn append_whole(f: &mut File, line: &[u8]) -> std::io::Result<()> {
    let before = f.metadata()?.len();
    let written = f.write_all(line);
    if written.is_err() {
        // Shrinking needs no space. Only this node appends to its log.
        if let Err(e) = f.set_len(before) {
            tracing::warn!(error = %e, "cannot cut a half-written transfer log line");
        }
    }
    written
}

/// A node name made safe for the `name@addr` peers field.
pub fn peer_name(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c == ',' || c == '@' || c.is_control() {
                '_'
            } else {
                c
            }
        })
        .collect();
    if s.is_empty() { "?".into() } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_format() {
        let id = ContentId([0xab; 32]);
        let t = Transfer {
            event: "download",
            file: "photo\t.png",
            bytes: 2 << 20,
            id: &id,
            peers: &["a@127.0.0.1:1".into(), "b@127.0.0.1:2".into()],
            duration: Duration::from_secs(2),
            result: Err("peer\nvanished".into()),
            sha256: Some("00ff"),
        };
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let line = t.line(at);
        let fields: Vec<&str> = line.trim_end().split('\t').collect();
        assert_eq!(
            fields,
            vec![
                "2023-11-14T22:13:20.123Z",
                "download",
                "photo .png",
                "2097152",
                &id.to_hex(),
                "a@127.0.0.1:1,b@127.0.0.1:2",
                "2.000s",
                "1.0MiB/s",
                "failed: peer vanished",
                "sha256=00ff"
            ]
        );
    }
}
