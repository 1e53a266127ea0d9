//! What each command does from the user's side: start a node, or talk to
//! the running one over the control endpoint and print the answer (tables
//! for people, JSON for scripts, a progress bar on a terminal).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::api::{ContentView, FetchEvent, PeerView};
use crate::cli::{Cli, Command, HomeArg, absolute};
use crate::control::{self, ControlRequest, ControlResponse};
use crate::logs::human_bytes;
use crate::store::{Home, ShareRoot, SharesFile};

/// Exit code when a name matched nothing or several contents.
pub const EXIT_NO_MATCH: u8 = 3;

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Up(args) => up(args).await,
        Command::Tracker(args) => crate::tracker::run(args).await.map(|()| ExitCode::SUCCESS),
        Command::Ls {
            query,
            category,
            json,
            home,
        } => {
            let views = match call(&home, &ControlRequest::Ls { query, category }).await? {
                ControlResponse::Ls(v) => v,
                other => bail!("unexpected answer from the node: {other:?}"),
            };
            if json {
                println_json(&views)?;
            } else {
                print_ls(&views);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Peers { json, home } => {
            let peers = match call(&home, &ControlRequest::Peers).await? {
                ControlResponse::Peers(v) => v,
                other => bail!("unexpected answer from the node: {other:?}"),
            };
            if json {
                println_json(&peers)?;
            } else {
                print_peers(&peers);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json, home } => {
            let status = match call(&home, &ControlRequest::Status).await? {
                ControlResponse::Status(s) => s,
                other => bail!("unexpected answer from the node: {other:?}"),
            };
            if json {
                println_json(&status)?;
            } else {
                println!("node      {} ({})", status.name, status.id);
                println!("listening {}", status.listen);
                println!("home      {}", status.home);
                println!("sharing   {} contents", status.shared_contents);
                println!(
                    "dropped   {} malformed datagrams, {} malformed connections",
                    status.malformed_datagrams, status.malformed_connections
                );
                println!(
                    "sent      {} of discovery datagrams, {} of inventory pages",
                    human_bytes(status.discovery_bytes_sent as f64),
                    human_bytes(status.inventory_bytes_served as f64)
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Share {
            path,
            comment,
            category,
            home,
        } => {
            let abs = crate::node::check_share_path(&path)?;
            let home_dir = absolute(&home.home)?;
            let h = Home::new(&home_dir);
            h.create_dirs()
                .with_context(|| format!("cannot create {}", home_dir.display()))?;
            if comment.len() > crate::wire::MAX_COMMENT {
                bail!(
                    "the comment is {} bytes; the limit is {}",
                    comment.len(),
                    crate::wire::MAX_COMMENT
                );
            }
            SharesFile::add(
                &h.shares_file(),
                ShareRoot {
                    path: abs.clone(),
                    comment,
                    category,
                },
            )
            .with_context(|| format!("cannot write {}", h.shares_file().display()))?;
            println!("sharing {}", abs.display());
            // Tell a running node to pick it up now; without one, `up` will.
            if control::call(&home_dir, &h.control_socket(), &ControlRequest::Rescan)
                .await
                .is_err()
            {
                println!(
                    "(no node is running in {}; it will be shared when `lanshare up` starts)",
                    home_dir.display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Fetch { name, json, home } => fetch(&home, &name, json).await,
    }
}

async fn up(args: crate::cli::UpArgs) -> anyhow::Result<ExitCode> {
    for s in &args.shares {
        crate::node::check_share_path(s)?;
    }
    let cfg = args
        .into_config()
        .context("cannot resolve the home directory")?;
    let name = cfg.name.clone();
    let home = cfg.home.clone();
    let group = cfg.group;
    let group6 = cfg.group6;
    let multicast = cfg.multicast;
    crate::node::run(cfg, shutdown_signal(), |s| {
        let disc = if !multicast {
            "multicast off".to_string()
        } else if s.links.is_empty() {
            "no multicast interface yet".to_string()
        } else {
            format!("multicast {group} / {group6} on {}", s.links.join(", "))
        };
        println!(
            "lanshare node {name:?} ({}) up: home {}, listening on {}, {disc}. Ctrl-C stops it.",
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

async fn call(home: &HomeArg, req: &ControlRequest) -> anyhow::Result<ControlResponse> {
    let dir = absolute(&home.home)?;
    let h = Home::new(&dir);
    Ok(control::call(&dir, &h.control_socket(), req).await?)
}

fn println_json<T: serde::Serialize>(v: &T) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, v)?;
    writeln!(out)?;
    Ok(())
}

fn print_ls(views: &[ContentView]) {
    if views.is_empty() {
        println!(
            "Nothing found on the network yet. Peers appear within a second of starting; see `lanshare peers`."
        );
        return;
    }
    println!(
        "{:<32} {:>10}  {:<8}  {:<9}  {:<12}  {:<24}  COMMENT",
        "NAME", "SIZE", "CATEGORY", "HOLDERS", "ID", "HELD BY"
    );
    for v in views {
        let holders = if v.partial > 0 {
            format!("{}+{}part", v.complete, v.partial)
        } else {
            v.complete.to_string()
        };
        let held_by: Vec<&str> = v.holders.iter().map(|h| h.name.as_str()).collect();
        println!(
            "{:<32} {:>10}  {:<8}  {:<9}  {:<12}  {:<24}  {}",
            v.name,
            human_bytes(v.size as f64),
            v.category,
            holders,
            &v.id[..12],
            held_by.join(","),
            v.comment
        );
    }
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
        "{:<20} {:<width$} {:<8} {:<12} {:<16} {:>8}  ID",
        "NAME", "ADDRESS", "STATUS", "LAST SEEN", "FOUND VIA", "CONTENTS"
    );
    for p in peers {
        let via: Vec<String> = p.found_via.iter().map(|v| v.to_string()).collect();
        println!(
            "{:<20} {:<width$} {:<8} {:<12} {:<16} {:>8}  {}",
            p.name,
            addr(p),
            if p.online { "online" } else { "offline" },
            format!("{:.1}s ago", p.last_seen_secs),
            via.join(","),
            p.contents,
            &p.id[..8]
        );
    }
}

async fn fetch(home: &HomeArg, name: &str, json: bool) -> anyhow::Result<ExitCode> {
    let dir = absolute(&home.home)?;
    let h = Home::new(&dir);
    let mut s = control::connect(&dir, &h.control_socket()).await?;
    control::write_msg(
        &mut s,
        &ControlRequest::Fetch {
            query: name.to_string(),
        },
    )
    .await?;
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
    let mut last_line = std::time::Instant::now();
    // Bytes verified so far: a failure after some says how to resume.
    let mut verified = 0u64;
    loop {
        let ev = match control::read_msg::<ControlResponse>(&mut s, control::MAX_RESPONSE).await? {
            Some(ControlResponse::Fetch(ev)) => ev,
            Some(other) => bail!("unexpected answer from the node: {other:?}"),
            None => bail!(
                "the node closed the connection before the download finished; is it still running?"
            ),
        };
        if json {
            println!("{}", serde_json::to_string(&ev)?);
        }
        match ev {
            FetchEvent::Started {
                name,
                size,
                holders,
                already,
                id,
            } => {
                verified = already;
                if let Some(b) = &bar {
                    b.set_length(size);
                    b.set_position(already);
                    b.set_message(name.clone());
                } else if !json {
                    let resumed = if already > 0 {
                        format!(", resuming at {}", human_bytes(already as f64))
                    } else {
                        String::new()
                    };
                    println!(
                        "fetching {name} ({}, id {}) from {holders} peer(s){resumed}",
                        human_bytes(size as f64),
                        &id[..12]
                    );
                }
            }
            FetchEvent::Progress { done, size, peers } => {
                verified = verified.max(done);
                if let Some(b) = &bar {
                    b.set_position(done);
                } else if !json && last_line.elapsed() >= Duration::from_secs(1) {
                    last_line = std::time::Instant::now();
                    let pct = if size > 0 {
                        done as f64 * 100.0 / size as f64
                    } else {
                        100.0
                    };
                    println!(
                        "{pct:5.1}%  {} of {} from {peers} peer(s)",
                        human_bytes(done as f64),
                        human_bytes(size as f64)
                    );
                }
            }
            FetchEvent::PeerDropped { peer, reason } => {
                let msg = format!("dropped peer {peer}: {reason}");
                match &bar {
                    Some(b) => b.println(msg),
                    None if !json => println!("{msg}"),
                    None => {}
                }
            }
            FetchEvent::Slow { phase, peers } => {
                let msg = format!(
                    "waiting for the {phase}: no answer yet from {} (slow or not responding); asking other holders",
                    peers.join(", ")
                );
                match &bar {
                    Some(b) => b.println(msg),
                    None if !json => println!("{msg}"),
                    None => {}
                }
            }
            FetchEvent::Done(d) => {
                if let Some(b) = &bar {
                    b.finish_and_clear();
                }
                if !json {
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
                }
                return Ok(ExitCode::SUCCESS);
            }
            FetchEvent::Failed { reason } => {
                if let Some(b) = &bar {
                    b.abandon();
                }
                eprintln!("lanshare: download of {name:?} failed: {reason}");
                if verified > 0 {
                    eprintln!(
                        "{} verified so far are kept: run the same command again to resume from them.",
                        human_bytes(verified as f64)
                    );
                }
                return Ok(ExitCode::FAILURE);
            }
            FetchEvent::NotFound { query } => {
                if !json {
                    eprintln!(
                        "lanshare: nothing on the network is called {query:?}; `lanshare ls` shows what is offered"
                    );
                }
                return Ok(ExitCode::from(EXIT_NO_MATCH));
            }
            FetchEvent::Ambiguous { candidates } => {
                if !json {
                    eprintln!(
                        "lanshare: {name:?} matches {} different contents; fetch one by id (or a prefix of 8+ digits):",
                        candidates.len()
                    );
                    for c in &candidates {
                        let who: Vec<&str> = c.holders.iter().map(|h| h.name.as_str()).collect();
                        let who = if c.local && who.is_empty() {
                            "this node".to_string()
                        } else {
                            who.join(",")
                        };
                        eprintln!(
                            "  {}  {:<32} {:>10}  held by {}",
                            c.id,
                            c.name,
                            human_bytes(c.size as f64),
                            who
                        );
                    }
                }
                return Ok(ExitCode::from(EXIT_NO_MATCH));
            }
        }
    }
}
