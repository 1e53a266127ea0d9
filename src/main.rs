//! The `lanshare` binary: parse arguments, set up logging, run the command,
//! turn errors into messages and exit codes. No logic of its own.

#![warn(clippy::too_many_lines)]

use std::process::ExitCode;

use clap::Parser;
use lanshare::cli::Cli;

/// Requests from this size on get their own mapping from glibc's malloc.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 2 << 20;

/// Fixes glibc's mmap threshold (see docs/architecture.md, "Memory"):
/// by default it rises after each large block freed, up to 32 MiB, and
/// large transient lists (the order of `ls` rows, an inventory being
/// rebuilt) then come from the heap, where what they leave behind stays
/// resident. Fixed, every list of 2 MiB and more is a mapping of its own,
/// grown without a copy and returned to the system when freed; the 1 MiB
/// chunk buffers of transfers stay below it.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets a tunable of the allocator; it is called
    // before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
    }
}

fn main() -> ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    if !matches!(cli.command, lanshare::cli::Command::Up(_)) {
        // A client whose output is cut (`lanshare ls | head`) ends quietly,
        // like any Unix tool. Not for `up`: a node must survive peers that
        // close their sockets.
        lanshare::platform::quiet_broken_pipe();
    }
    let default = match cli.verbose {
        0 => "warn",
        1 => "info,lanshare=info",
        _ => "debug,lanshare=debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("lanshare: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(lanshare::commands::run(cli));
    // Do not wait for blocking work still running (a long hash after
    // Ctrl-C): everything that matters has been saved by now.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("lanshare: {e:#}");
            ExitCode::FAILURE
        }
    }
}
