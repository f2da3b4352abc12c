//! What both benchmark binaries need around their measurements: an error type for
//! expected failures, and a `main` that cleans up on every way out.

/// Every failure a bench can meet on an expected path (Docker down, daemon gone, a
/// claim refused) travels as this and ends the run with a message, never a panic.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type BenchResult<T> = Result<T, BoxError>;

/// A bench binary's `main`: does nothing without `--bench` (`cargo test
/// --all-targets` runs bench binaries without it), else runs `run` on a multi-thread
/// runtime until it ends or Ctrl-C. Every guard lives inside `run`, so when it returns,
/// fails or is interrupted (its future dropped), the daemon is stopped and the
/// instance's containers are removed before the process exits.
pub fn bench_main<F>(name: &str, run: impl FnOnce() -> F) -> std::process::ExitCode
where
    F: std::future::Future<Output = BenchResult<()>>,
{
    use std::process::ExitCode;
    if !std::env::args().any(|a| a == "--bench") {
        println!("{name}: not benchmarking without --bench (run `make bench`)");
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = run() => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted".into()),
        }
    });
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}
