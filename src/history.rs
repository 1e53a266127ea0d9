//! The transfer history as the web API shows it: the lines of
//! `download_log.txt` and `upload_log.txt` (see [`crate::logs`]) parsed
//! into rows, newest first, filtered. Reads the two log files; never
//! writes them.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Most bytes read from the end of each log: older lines are not shown.
pub const MAX_TAIL: u64 = 4 << 20;
/// Most rows one answer holds.
pub const MAX_ROWS: usize = 1000;

/// One line of a transfer log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryRow {
    /// RFC 3339 UTC.
    pub time: String,
    /// `download` or `upload`.
    pub event: String,
    pub file: String,
    pub bytes: u64,
    pub id: String,
    pub peers: String,
    pub duration: String,
    pub throughput: String,
    /// `ok` or `failed: reason`.
    pub status: String,
    pub sha256: Option<String>,
}

/// Which rows to show.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HistoryQuery {
    /// `download` or `upload`; both when `None`.
    pub event: Option<String>,
    /// Kept when any field contains it (case-insensitive).
    pub query: Option<String>,
    pub limit: usize,
}

/// Parses one log line; `None` for a malformed one.
pub fn parse_line(line: &str) -> Option<HistoryRow> {
    let f: Vec<&str> = line.split('\t').collect();
    if f.len() < 9 {
        return None;
    }
    Some(HistoryRow {
        time: f[0].into(),
        event: f[1].into(),
        file: f[2].into(),
        bytes: f[3].parse().ok()?,
        id: f[4].into(),
        peers: f[5].into(),
        duration: f[6].into(),
        throughput: f[7].into(),
        status: f[8].into(),
        sha256: f
            .get(9)
            .and_then(|s| s.strip_prefix("sha256="))
            .map(String::from),
    })
}

/// The last [`MAX_TAIL`] bytes of `path`, from its first whole line.
fn tail(path: &Path) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let start = len.saturating_sub(MAX_TAIL);
    if f.seek(SeekFrom::Start(start)).is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(MAX_TAIL).read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf).into_owned();
    match (start > 0, text.find('\n')) {
        (true, Some(i)) => text[i + 1..].to_string(),
        _ => text,
    }
}

/// The rows of the logs in `paths` matching `q`, newest first.
pub fn read(paths: &[&Path], q: &HistoryQuery) -> Vec<HistoryRow> {
    let needle = q
        .query
        .as_deref()
        .map(str::to_lowercase)
        .filter(|s| !s.is_empty());
    let mut rows: Vec<HistoryRow> = paths
        .iter()
        .flat_map(|p| tail(p).lines().filter_map(parse_line).collect::<Vec<_>>())
        .filter(|r| q.event.as_deref().is_none_or(|e| r.event == e))
        .filter(|r| {
            needle.as_deref().is_none_or(|n| {
                [&r.file, &r.peers, &r.id, &r.status]
                    .iter()
                    .any(|f| f.to_lowercase().contains(n))
            })
        })
        .collect();
    // RFC 3339 UTC with milliseconds sorts as text.
    rows.sort_by(|a, b| b.time.cmp(&a.time));
    rows.truncate(q.limit.clamp(1, MAX_ROWS));
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_come_newest_first_and_filtered() {
        let dir = tempfile::tempdir().unwrap();
        let (d, u) = (dir.path().join("d.txt"), dir.path().join("u.txt"));
        std::fs::write(&d, "2026-01-01T00:00:01.000Z\tdownload\ta.txt\t3\tab\tx@1\t0.1s\t30B/s\tok\tsha256=ff\nbroken\n").unwrap();
        std::fs::write(
            &u,
            "2026-01-01T00:00:02.000Z\tupload\tb.txt\t5\tcd\ty@2\t0.1s\t50B/s\tok\n",
        )
        .unwrap();
        let all = read(
            &[&d, &u],
            &HistoryQuery {
                limit: 10,
                ..Default::default()
            },
        );
        assert_eq!(
            all.iter().map(|r| r.file.as_str()).collect::<Vec<_>>(),
            ["b.txt", "a.txt"]
        );
        assert_eq!(all[1].sha256.as_deref(), Some("ff"));
        let q = HistoryQuery {
            event: Some("download".into()),
            limit: 10,
            ..Default::default()
        };
        assert_eq!(read(&[&d, &u], &q).len(), 1);
        let q = HistoryQuery {
            query: Some("Y@".into()),
            limit: 10,
            ..Default::default()
        };
        assert_eq!(read(&[&d, &u], &q)[0].file, "b.txt");
    }
}
