//! `boilerhouse` — run the daemon (default), or `boilerhouse validate [DIR]`.

use std::path::PathBuf;
use std::process::ExitCode;

use boilerhouse::config::Config;
use boilerhouse::{preflight, startup, workload};

const USAGE: &str = "usage: boilerhouse [serve]           run the daemon (configured by BOILERHOUSE_* variables)
       boilerhouse validate [DIR]   check the workload files in DIR (default: BOILERHOUSE_WORKLOADS_DIR or ./workloads)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None | Some("serve") => serve(),
        Some("validate") => validate(args.get(1).map(PathBuf::from)),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("unknown command {other:?}\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

fn serve() -> ExitCode {
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("boilerhouse: {e}");
            return ExitCode::FAILURE;
        }
    };
    startup::init_tracing(config.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("boilerhouse: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(startup::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("boilerhouse: {e}");
            ExitCode::FAILURE
        }
    }
}

fn validate(dir: Option<PathBuf>) -> ExitCode {
    let env = |name: &str| std::env::var(name).ok();
    let dir = dir
        .or_else(|| env("BOILERHOUSE_WORKLOADS_DIR").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("./workloads"));
    let default_image = env("BOILERHOUSE_DEFAULT_IMAGE").unwrap_or_else(|| "alpine:latest".into());
    if !dir.is_dir() {
        eprintln!("{}: not a directory", dir.display());
        return ExitCode::FAILURE;
    }
    // The loader's warnings (valid but risky settings) go to stderr.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::WARN)
        .without_time()
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match workload::load_dir(&dir, &env, &default_image) {
        Ok(list) if list.is_empty() => {
            println!(
                "{}: no workload files (*.yaml, *.yml); the daemon would use the built-in default workload",
                dir.display()
            );
            ExitCode::SUCCESS
        }
        Ok(list) => {
            for w in &list {
                let file = w
                    .source
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                println!(
                    "ok  {:<20} image={} pool(min={}, max={}, recycle={:?}) sync={}  ({file})",
                    w.id.as_str(),
                    w.image,
                    w.pool.min_size.map_or("default".into(), |n| n.to_string()),
                    w.pool.max_size.map_or("default".into(), |n| n.to_string()),
                    w.pool.recycle,
                    if w.sync.is_some() { "yes" } else { "no" },
                );
            }
            println!("{} workload(s) valid", list.len());
            preflight(&list)
        }
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!("{} error(s) in {}", errors.0.len(), dir.display());
            ExitCode::FAILURE
        }
    }
}

/// The daemon's start-up checks of the sync workloads (rclone and the state dir, as
/// each workload's user), with the same sentences.
fn preflight(workloads: &[workload::Workload]) -> ExitCode {
    if workloads.iter().all(|w| w.sync.is_none()) {
        return ExitCode::SUCCESS;
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let checked = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| eprintln!("cannot start the async runtime: {e}"))
        .map(|rt| rt.block_on(preflight::check(&config, workloads)));
    match checked {
        Ok(Ok(passed)) => {
            for p in passed {
                println!(
                    "ok  {:<20} {} runs as uid {} (gid {}) and enters BOILERHOUSE_STATE_DIR={}",
                    p.workload,
                    p.version,
                    p.uid,
                    p.gid,
                    config.state_dir.display()
                );
            }
            ExitCode::SUCCESS
        }
        Ok(Err(errors)) => {
            eprintln!("{errors}");
            ExitCode::FAILURE
        }
        Err(()) => ExitCode::FAILURE,
    }
}
