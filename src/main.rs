//! The pgsift command line: run the proxy from a config file or from an
//! upstream URL, or check a config file.

use clap::{Parser, Subcommand};
use pgsift::config::Config;
use pgsift::runtime::{self, ConfigSource};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "pgsift",
    version,
    about = "A transparent PostgreSQL proxy: pooling, statement fingerprints, N+1 detection, caching, metrics"
)]
struct Cli {
    /// Path to config.yaml
    #[arg(long, global = true, default_value = "config.yaml")]
    config: PathBuf,
    /// Run with built-in defaults in front of this server, e.g.
    /// postgresql://USER:PASS@HOST:PORT/DB (no config file needed)
    #[arg(long, conflicts_with = "config")]
    upstream: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the config file: print every error with its key path
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Check) = cli.command {
        return match Config::load(&cli.config) {
            Ok(_) => {
                println!("{}: ok", cli.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                for line in &e.0 {
                    eprintln!("{line}");
                }
                ExitCode::FAILURE
            }
        };
    }
    let (config, source) = match &cli.upstream {
        Some(url) => (Config::from_upstream_url(url), ConfigSource::Upstream),
        None => (
            Config::load(&cli.config),
            ConfigSource::File(cli.config.clone()),
        ),
    };
    let config = match config {
        Ok(c) => c,
        Err(e) => {
            for line in &e.0 {
                eprintln!("{line}");
            }
            return ExitCode::FAILURE;
        }
    };
    init_logging(&config);
    // One worker: a current-thread runtime, which wakes tasks without the
    // cross-thread machinery a multi-thread scheduler pays for.
    let workers = config.effective_worker_threads();
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    // No time driver: pgsift's timers live on the control thread
    // (src/timer.rs). The Redis client uses tokio's timers in its own code
    // and runs in the sessions that call it, so with the Redis cache backend
    // (fixed at start) the runtime keeps its time driver.
    builder.enable_io();
    if config.session_runtime_timers() {
        builder.enable_time();
    }
    let rt = match builder.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(runtime::run(config, source)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("pgsift: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(config: &Config) {
    pgsift::logging::init(config);
}
