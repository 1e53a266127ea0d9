//! The `lanshare` binary: parse arguments, set up logging, run the command,
//! turn errors into messages and exit codes. No logic of its own.

#![warn(clippy::too_many_lines)]

use std::process::ExitCode;

use clap::Parser;
use lanshare::cli::Cli;

fn main() -> ExitCode {
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
