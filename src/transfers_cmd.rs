//! What `lanshare transfers`, `lanshare cancel` and an interrupted
//! `lanshare fetch` print: tables and sentences for people. Talks to the
//! node through the control [`Client`] only.

use std::process::ExitCode;

use crate::cli::{HomeArg, absolute};
use crate::control::Client;
use crate::logs::human_bytes;
use crate::transfers::{DownloadState, TransfersView};

/// Exit code of a command stopped by Ctrl-C (128 + SIGINT).
pub const EXIT_INTERRUPTED: u8 = 130;

fn percent(done: u64, size: u64) -> f64 {
    if size == 0 {
        0.0
    } else {
        done as f64 * 100.0 / size as f64
    }
}

fn eta(secs: Option<f64>) -> String {
    match secs {
        Some(s) if s < 3600.0 * 24.0 => {
            humantime::format_duration(std::time::Duration::from_secs(s.ceil() as u64)).to_string()
        }
        Some(_) => "more than a day".into(),
        None => "-".into(),
    }
}

/// The transfers as tables.
pub fn print_transfers(t: &TransfersView) {
    if t.downloads.is_empty() && t.uploads.is_empty() {
        println!("(no transfer in progress)");
        return;
    }
    if !t.downloads.is_empty() {
        println!(
            "{:>4}  {:<32} {:>6} {:>10} {:>11} {:>10}  STATE / PEERS",
            "#", "DOWNLOAD", "DONE", "SIZE", "RATE", "ETA"
        );
    }
    for d in &t.downloads {
        let state = match (d.state, &d.detail) {
            (DownloadState::Failed, Some(why)) => format!("failed: {why}"),
            (DownloadState::Waiting, Some(why)) => format!("waiting: {why}"),
            (DownloadState::Paused, Some(why)) => format!("paused: {why}"),
            (other, _) => serde_json::to_value(other)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
        };
        let peers: Vec<String> = d
            .peers
            .iter()
            .map(|p| format!("{} {}", p.peer, human_bytes(p.bytes as f64)))
            .collect();
        println!(
            "{:>4}  {:<32} {:>5.1}% {:>10} {:>9}/s {:>10}  {state}{}{}",
            d.transfer,
            d.name,
            percent(d.done, d.size),
            human_bytes(d.size as f64),
            human_bytes(d.rate),
            eta(d.eta_secs),
            if peers.is_empty() { "" } else { "; from " },
            peers.join(", ")
        );
    }
    if !t.uploads.is_empty() {
        println!(
            "{:>4}  {:<32} {:>6} {:>10} {:>11}  TO",
            "#", "UPLOAD", "SENT", "SIZE", "RATE"
        );
    }
    for u in &t.uploads {
        println!(
            "{:>4}  {:<32} {:>5.1}% {:>10} {:>9}/s  {}",
            u.transfer,
            u.name,
            percent(u.sent, u.size),
            human_bytes(u.size as f64),
            human_bytes(u.rate),
            u.peer
        );
    }
}

/// `lanshare cancel TARGET`.
pub async fn cancel(home: &HomeArg, target: &str) -> anyhow::Result<ExitCode> {
    let hit = Client::new(&absolute(&home.home)?).cancel(target).await?;
    if hit.is_empty() {
        eprintln!("lanshare: no download is {target:?}; `lanshare transfers` lists them");
        return Ok(ExitCode::from(crate::commands::EXIT_NO_MATCH));
    }
    let n: Vec<String> = hit.iter().map(|n| format!("#{n}")).collect();
    println!(
        "cancelled {} for good: its partial file is deleted and it does not come back after a restart",
        n.join(", ")
    );
    Ok(ExitCode::SUCCESS)
}

/// What `fetch` says when Ctrl-C stops it: the node stops the download
/// when its client goes away, and keeps what it verified.
pub fn interrupted(name: &str, verified: u64) -> ExitCode {
    eprintln!();
    eprintln!(
        "lanshare: interrupted: the node stops this download now; the {} verified so far are kept, and `lanshare fetch {name}` (or the node's next start) resumes it; `lanshare cancel {name}` drops it for good",
        human_bytes(verified as f64)
    );
    ExitCode::from(EXIT_INTERRUPTED)
}
