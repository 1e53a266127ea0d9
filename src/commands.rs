//! What each command does from the user's side: start a node, or talk to
//! the running one over the control endpoint and print the answer (tables
//! for people, JSON for scripts, a progress bar on a terminal).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use std::path::Path;

use anyhow::{Context, bail};

use crate::api::{ContentView, FetchDone, FetchEvent, NodeStatus, PeerView};
use crate::cli::{Cli, Command, HomeArg, absolute};
use crate::control::Client;
use crate::logs::human_bytes;
use crate::manifest::Category;

/// Exit code when a name matched nothing or several contents.
pub const EXIT_NO_MATCH: u8 = 3;

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up(args) => up(*args).await,
        Command::Tracker(args) => crate::tracker::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Key(crate::cli::KeyCommand::New) => {
            println!("{}", crate::swarm::SwarmKey::generate().to_text());
            Ok(ExitCode::SUCCESS)
        }
        Command::Ls {
            query,
            category,
            json,
            home,
        } => crate::ls_cmd::ls(&home, query, category, json).await,
        Command::Peers { json, home } => {
            let peers = client(&home)?.peers().await?;
            print_as(json, &peers, |p| print_peers(p))
        }
        Command::Status { json, home } => {
            let status = client(&home)?.status().await?;
            print_as(json, &status, print_status)
        }
        Command::Share {
            path,
            comment,
            category,
            home,
        } => share(&home, &path, comment, category).await,
        Command::Fetch { names, json, home } => fetch_all(&home, &names, json).await,
        Command::Transfers { json, home } => {
            let t = client(&home)?.transfers().await?;
            print_as(json, &t, crate::transfers_cmd::print_transfers)
        }
        Command::Cancel { target, home } => crate::transfers_cmd::cancel(&home, &target).await,
    }
}

/// The client of the node in `home`.
fn client(home: &HomeArg) -> anyhow::Result<Client> {
    Ok(Client::new(&absolute(&home.home)?))
}

/// Prints `v` as JSON for scripts, or with `human` for people.
fn print_as<T: serde::Serialize>(json: bool, v: &T, human: fn(&T)) -> anyhow::Result<ExitCode> {
    if json {
        println_json(v)?;
    } else {
        human(v);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_status(status: &NodeStatus) {
    println!("node      {} ({})", status.name, status.id);
    println!("listening {}", status.listen);
    println!("home      {}", status.home);
    println!("sharing   {} contents", status.shared_contents);
    println!("swarm     {}", status.swarm);
    println!(
        "dropped   {} malformed datagrams, {} malformed connections",
        status.malformed_datagrams, status.malformed_connections
    );
    println!(
        "          {} replayed, {} from another swarm, {} badly signed, {} over the check budget",
        status.replayed_datagrams,
        status.foreign_datagrams,
        status.bad_signature_datagrams,
        status.throttled_datagrams
    );
    println!(
        "exchange  {} peers heard of, {} dialed, {} verified, {} rejected",
        status.hints_received, status.hints_dialed, status.hints_verified, status.hints_rejected
    );
    println!(
        "sent      {} discovery datagrams ({}), {} of inventory pages",
        status.datagrams_sent,
        human_bytes(status.discovery_bytes_sent as f64),
        human_bytes(status.inventory_bytes_served as f64)
    );
    let r = &status.datagrams_received;
    println!(
        "heard     {} by IPv4 multicast, {} by IPv6 multicast, {} by broadcast, {} unicast{}; {} copies by a second path",
        r.multicast4,
        r.multicast6,
        r.broadcast,
        r.unicast,
        if r.ipv4_unclassified > 0 {
            format!(", {} by IPv4 multicast or broadcast", r.ipv4_unclassified)
        } else {
            String::new()
        },
        status.path_duplicate_datagrams
    );
}

async fn share(
    home: &HomeArg,
    path: &Path,
    comment: String,
    category: Option<Category>,
) -> anyhow::Result<ExitCode> {
    let home_dir = absolute(&home.home)?;
    let abs = crate::service::add_share(&home_dir, path, comment, category)?;
    println!("sharing {}", abs.display());
    // Tell a running node to pick it up now; without one, `up` will.
    if Client::new(&home_dir).rescan().await.is_err() {
        println!(
            "(no node is running in {}; it will be shared when `lanshare up` starts)",
            home_dir.display()
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn up(args: crate::cli::UpArgs) -> anyhow::Result<ExitCode> {
    for s in &args.shares {
        crate::service::check_share_path(s)?;
    }
    let cfg = args
        .into_config()
        .context("cannot resolve the home directory")?;
    let name = cfg.name.clone();
    let home = cfg.home.clone();
    let group = cfg.group;
    let group6 = cfg.group6;
    let multicast = cfg.multicast;
    let broadcast = if cfg.broadcast { "on" } else { "off" };
    let swarm = if cfg.swarm.is_private() {
        "private swarm (key given), "
    } else {
        ""
    };
    crate::node::run(cfg, shutdown_signal(), |s| {
        let disc = if !multicast {
            "multicast off".to_string()
        } else if s.links.is_empty() {
            "no multicast interface yet".to_string()
        } else {
            format!("multicast {group} / {group6} on {}", s.links.join(", "))
        };
        let disc = format!("{disc}, broadcast {broadcast}");
        let ui = s.ui.map(|a| format!(", dashboard http://{a}/")).unwrap_or_default();
        println!(
            "lanshare node {name:?} ({}) up: {swarm}home {}, listening on {}, {disc}{ui}. Ctrl-C stops it.",
            s.node.short(),
            home.display(),
            s.listen
        );
        let _ = std::io::stdout().flush();
    })
    .await?;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    crate::platform::stop_requested().await
}

fn println_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn print_peers(peers: &[PeerView]) {
    if peers.is_empty() {
        println!("No peers seen yet.");
        return;
    }
    // The best address, and how many others are known (`peers --json` lists them).
    let addr = |p: &PeerView| match p.addrs.len() {
        0 | 1 => p.addr.clone(),
        n => format!("{} (+{})", p.addr, n - 1),
    };
    let width = peers
        .iter()
        .map(|p| addr(p).len())
        .max()
        .unwrap_or(0)
        .max(22);
    println!(
        "{:<20} {:<width$} {:<8} {:<8} {:<12} {:<16} {:>8}  ID",
        "NAME", "ADDRESS", "STATUS", "VERIFIED", "LAST SEEN", "FOUND VIA", "CONTENTS"
    );
    for p in peers {
        let via: Vec<String> = p.found_via.iter().map(|v| v.to_string()).collect();
        println!(
            "{:<20} {:<width$} {:<8} {:<8} {:<12} {:<16} {:>8}  {}",
            p.name,
            addr(p),
            if p.online { "online" } else { "offline" },
            if p.verified { "yes" } else { "no" },
            format!("{:.1}s ago", p.last_seen_secs),
            via.join(","),
            p.contents,
            &p.id[..8]
        );
    }
}

/// How one name of `fetch` ended.
enum Fetched {
    Ok,
    /// It failed (or matched nothing or several): the exit code it gives.
    Failed(ExitCode),
    /// The user stopped it: no other name is fetched.
    Interrupted(ExitCode),
}

/// Fetches each name in turn; one that fails does not stop the others.
/// Exits 0 only when every one is complete and verified, else with the
/// first failure's code, after naming the names that failed.
async fn fetch_all(home: &HomeArg, names: &[String], json: bool) -> anyhow::Result<ExitCode> {
    let mut failed: Vec<(&str, ExitCode)> = Vec::new();
    for name in names {
        match fetch(home, name, json).await? {
            Fetched::Ok => {}
            Fetched::Failed(code) => failed.push((name, code)),
            Fetched::Interrupted(code) => return Ok(code),
        }
    }
    if names.len() > 1 && !failed.is_empty() && !json {
        let which: Vec<String> = failed.iter().map(|(n, _)| format!("{n:?}")).collect();
        eprintln!(
            "lanshare: {} of {} names failed: {}",
            failed.len(),
            names.len(),
            which.join(", ")
        );
    }
    Ok(failed.first().map_or(ExitCode::SUCCESS, |(_, code)| *code))
}

async fn fetch(home: &HomeArg, name: &str, json: bool) -> anyhow::Result<Fetched> {
    let mut events = client(home)?.fetch(name).await?;
    let mut view = FetchView::new(name, json);
    let mut stop = std::pin::pin!(crate::platform::stop_requested());
    loop {
        let next = tokio::select! {
            ev = events.next() => ev?,
            () = &mut stop => {
                return Ok(Fetched::Interrupted(crate::transfers_cmd::interrupted(name, view.verified)));
            }
        };
        let Some(ev) = next else {
            bail!(
                "the node closed the connection before the download finished; is it still running?"
            );
        };
        if json {
            println!("{}", serde_json::to_string(&ev)?);
        }
        if let Some(end) = view.show(ev) {
            return Ok(end);
        }
    }
}

/// How a fetch is shown: a progress bar on a terminal, a line a second
/// otherwise, or nothing but the JSON events.
struct FetchView<'a> {
    name: &'a str,
    json: bool,
    bar: Option<indicatif::ProgressBar>,
    last_line: std::time::Instant,
    /// Bytes verified so far: a failure after some says how to resume.
    verified: u64,
    /// A folder download: its files (done, failed, total) so far.
    files: Option<(u32, u32, u32)>,
}

impl<'a> FetchView<'a> {
    fn new(name: &'a str, json: bool) -> Self {
        let tty = !json && std::io::stderr().is_terminal();
        let bar = tty.then(|| {
            let b = indicatif::ProgressBar::new(0);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .expect("valid template")
                .progress_chars("=> "),
            );
            b
        });
        FetchView {
            name,
            json,
            bar,
            last_line: std::time::Instant::now(),
            verified: 0,
            files: None,
        }
    }

    /// Shows one event; how the fetch ended once it is over.
    fn show(&mut self, ev: FetchEvent) -> Option<Fetched> {
        match ev {
            FetchEvent::Started {
                name,
                size,
                holders,
                already,
                id,
            } => self.started(&name, size, holders, already, &id),
            FetchEvent::Progress { done, size, peers } => self.progress(done, size, peers),
            FetchEvent::PeerBytes { .. } => {}
            FetchEvent::PeerDropped { peer, reason } => {
                self.note(format!("dropped peer {peer}: {reason}"))
            }
            FetchEvent::Paused { reason } => self.note(format!("paused: {reason}")),
            FetchEvent::Slow { phase, peers } => self.note(format!(
                "waiting for the {phase}: no answer yet from {} (slow or not responding); asking other holders",
                peers.join(", ")
            )),
            FetchEvent::Files {
                done,
                failed,
                total,
                path,
                error,
            } => self.files(done, failed, total, &path, error),
            FetchEvent::Done(d) => return Some(self.done(&d)),
            FetchEvent::Failed { reason } => return Some(Fetched::Failed(self.failed(&reason))),
            FetchEvent::NotFound { query } => {
                if !self.json {
                    eprintln!(
                        "lanshare: nothing on the network is called {query:?}; `lanshare ls` shows what is offered"
                    );
                }
                return Some(Fetched::Failed(ExitCode::from(EXIT_NO_MATCH)));
            }
            FetchEvent::Ambiguous { candidates } => {
                if !self.json {
                    print_candidates(self.name, &candidates);
                }
                return Some(Fetched::Failed(ExitCode::from(EXIT_NO_MATCH)));
            }
        }
        None
    }

    /// A folder download's files: the count beside the bar (or in the
    /// progress lines), and each failure on its own line.
    fn files(&mut self, done: u32, failed: u32, total: u32, path: &str, error: Option<String>) {
        if self.files.is_none() && !self.json && self.bar.is_none() {
            println!("{total} file(s) in the folder");
        }
        self.files = Some((done, failed, total));
        if let Some(e) = error {
            self.note(format!("failed: {path}: {e}"));
        }
        if let Some(b) = &self.bar {
            b.set_message(format!("{} {done}/{total} files", self.name));
        }
    }

    fn started(&mut self, name: &str, size: u64, holders: u32, already: u64, id: &str) {
        self.verified = already;
        // A folder has no content id.
        let what = if id.is_empty() {
            format!("folder {name}")
        } else {
            format!("{name}, id {}", &id[..12.min(id.len())])
        };
        if let Some(b) = &self.bar {
            b.set_length(size);
            b.set_position(already);
            b.set_message(name.to_string());
            b.println("(Ctrl-C stops the download; what is verified is kept and fetching again resumes it)");
        } else if !self.json {
            let resumed = if already > 0 {
                format!(", resuming at {}", human_bytes(already as f64))
            } else {
                String::new()
            };
            println!(
                "fetching {what} ({}) from {holders} peer(s){resumed}",
                human_bytes(size as f64),
            );
        }
    }

    fn progress(&mut self, done: u64, size: u64, peers: u32) {
        self.verified = self.verified.max(done);
        if let Some(b) = &self.bar {
            b.set_position(done);
        } else if !self.json && self.last_line.elapsed() >= Duration::from_secs(1) {
            self.last_line = std::time::Instant::now();
            let pct = if size > 0 {
                done as f64 * 100.0 / size as f64
            } else {
                100.0
            };
            let files = self
                .files
                .map(|(d, _, t)| format!(", {d}/{t} files"))
                .unwrap_or_default();
            println!(
                "{pct:5.1}%  {} of {}{files} from {peers} peer(s)",
                human_bytes(done as f64),
                human_bytes(size as f64)
            );
        }
    }

    /// A line beside the progress: above the bar, or on its own.
    fn note(&self, msg: String) {
        match &self.bar {
            Some(b) => b.println(msg),
            None if !self.json => println!("{msg}"),
            None => {}
        }
    }

    fn done(&self, d: &FetchDone) -> Fetched {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
        if self.json {
            return Fetched::Ok;
        }
        if let Some((done, _, _)) = self.files {
            println!(
                "saved {} ({done} files, {}; {} fetched in {:.1}s, every file verified)",
                d.path,
                human_bytes(d.size as f64),
                human_bytes(d.transferred as f64),
                d.secs,
            );
            return Fetched::Ok;
        }
        if d.already_local {
            println!("already here: {}", d.path);
        } else {
            let rate = if d.secs > 0.0 {
                d.transferred as f64 / d.secs
            } else {
                0.0
            };
            let resumed = if d.transferred < d.size {
                format!("; {} fetched this run", human_bytes(d.transferred as f64))
            } else {
                String::new()
            };
            println!(
                "saved {} ({}{resumed} in {:.1}s, {}/s, verified)",
                d.path,
                human_bytes(d.size as f64),
                d.secs,
                human_bytes(rate)
            );
        }
        println!("sha256 {}", d.sha256);
        Fetched::Ok
    }

    fn failed(&self, reason: &str) -> ExitCode {
        if let Some(b) = &self.bar {
            b.abandon();
        }
        eprintln!("lanshare: download of {:?} failed: {reason}", self.name);
        if self.verified > 0 {
            eprintln!(
                "{} verified so far are kept: run the same command again to resume from them.",
                human_bytes(self.verified as f64)
            );
        }
        ExitCode::FAILURE
    }
}

/// The contents a name matches, so the user can pick one by id.
fn print_candidates(name: &str, candidates: &[ContentView]) {
    eprintln!(
        "lanshare: {name:?} matches {} different contents or folders; fetch a content by id (or a prefix of 8+ digits), a folder by its full path:",
        candidates.len()
    );
    for c in candidates {
        let who: Vec<&str> = c.holders.iter().map(|h| h.name.as_str()).collect();
        let who = if c.local && who.is_empty() {
            "this node".to_string()
        } else {
            who.join(",")
        };
        let id = if c.kind == crate::api::ContentKind::Folder {
            format!("{:<64}", format!("folder ({} files)", c.files))
        } else {
            c.id.clone()
        };
        eprintln!(
            "  {}  {:<32} {:>10}  held by {}",
            id,
            c.name,
            human_bytes(c.size as f64),
            who
        );
    }
}
