//! Start-up: logging, workloads, the Docker connection, recovery, the HTTP server,
//! and graceful shutdown. `main` calls [`run`]; nothing here calls `exit`.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::app::App;
use crate::config::{Config, LogFormat};
use crate::edge::EdgeLimits;
use crate::runtime::{DockerRuntime, Runtime};
use crate::workload::{self, Workload};

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error("invalid workloads in {dir}:\n{errors}")]
    Workloads {
        dir: String,
        errors: workload::LoadErrors,
    },
    #[error("{0}\nIs Docker running, and does DOCKER_HOST point at it?")]
    Docker(crate::runtime::RuntimeError),
    #[error(transparent)]
    Manager(#[from] crate::manager::StartError),
    #[error(transparent)]
    Preflight(#[from] crate::preflight::PreflightErrors),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server error: {0}")]
    Serve(std::io::Error),
}

pub fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
}

/// The workloads of `config.workloads_dir`, or the built-in `default` one if it has none.
pub fn load_workloads(config: &Config) -> Result<Vec<Workload>, StartupError> {
    let env = |name: &str| std::env::var(name).ok();
    let workloads = workload::load_dir(&config.workloads_dir, &env, &config.default_image)
        .map_err(|errors| StartupError::Workloads {
            dir: config.workloads_dir.display().to_string(),
            errors,
        })?;
    if workloads.is_empty() {
        tracing::info!(
            dir = %config.workloads_dir.display(),
            image = %config.default_image,
            "no workload files; using the built-in default workload"
        );
        return Ok(vec![workload::builtin_default(&config.default_image)]);
    }
    Ok(workloads)
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), StartupError> {
    let unknown = Config::unknown_vars(std::env::vars());
    if !unknown.is_empty() {
        tracing::warn!(variables = ?unknown, "ignoring unknown BOILERHOUSE_ variables (typos?)");
    }
    let workloads = load_workloads(&config)?;
    // Created here, not only by the manager, so the preflight enters the real thing.
    std::fs::create_dir_all(&config.state_dir)
        .map_err(|e| crate::manager::StartError::Dir(config.state_dir.display().to_string(), e))?;
    for passed in crate::preflight::check(&config, &workloads).await? {
        tracing::info!(
            workload = %passed.workload,
            uid = passed.uid,
            gid = passed.gid,
            rclone = %passed.version,
            state_dir = %config.state_dir.display(),
            "rclone runs as the workload's user and reaches the state dir"
        );
    }
    let runtime = DockerRuntime::connect()
        .await
        .map_err(StartupError::Docker)?;
    let addr = SocketAddr::new(config.api_host, config.api_port);
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartupError::Bind { addr, source })?;
    serve(
        config,
        Arc::new(runtime),
        workloads,
        listener,
        shutdown_signal(),
    )
    .await
}

/// Serves on `listener` until `signal` completes, then stops the pools (leaving
/// every container running for the next start).
pub async fn serve(
    config: Config,
    runtime: Arc<dyn Runtime>,
    workloads: Vec<Workload>,
    listener: TcpListener,
    signal: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), StartupError> {
    let pools: Vec<String> = workloads.iter().map(|w| w.id.to_string()).collect();
    let (instance, limits) = (config.instance.clone(), EdgeLimits::from_config(&config));
    let app = App::build(config, runtime, workloads).await?;
    app.shutdown.spawn(return_freed_memory());
    app.shutdown
        .spawn(crate::ui::samples::sample_pools(app.manager.clone()));
    let local = listener.local_addr().map_err(StartupError::Serve)?;
    tracing::info!(addr = %local, instance = %instance, ?pools, "boilerhouse listening");
    // Streams (`/events`) never finish on their own, and graceful shutdown waits for
    // every response: they end when shutdown begins.
    let shutdown = app.shutdown.clone();
    let begin = async move {
        signal.await;
        shutdown.begin();
    };
    crate::edge::serve(listener, app.router.clone(), limits, begin)
        .await
        .map_err(StartupError::Serve)?;
    tracing::info!("shutting down: containers stay running for the next start");
    app.stop().await;
    Ok(())
}

/// glibc keeps memory freed after a burst of claims (one thread per blocking task)
/// in its arenas; handing it back keeps the daemon's RSS near its idle size.
async fn return_freed_memory() {
    let mut every = tokio::time::interval(std::time::Duration::from_secs(10));
    loop {
        every.tick().await;
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: malloc_trim only releases free heap pages; it has no preconditions.
        let _ = tokio::task::spawn_blocking(|| unsafe { libc::malloc_trim(0) }).await;
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
