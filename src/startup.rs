//! Start-up: logging, workloads, the Docker connection, recovery, the HTTP server,
//! the reload triggers (`SIGHUP`, a watch of `WORKLOADS_DIR`) and graceful
//! shutdown. `main` calls [`run`]; nothing here calls `exit`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::app::App;
use crate::config::{Config, LogFormat};
use crate::edge::EdgeLimits;
use crate::manager::ContainerManager;
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
    workload::load_dir_or_default(&config.workloads_dir, &env, &config.default_image).map_err(
        |errors| StartupError::Workloads {
            dir: config.workloads_dir.display().to_string(),
            errors,
        },
    )
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
    let (dir, debounce) = (
        config.workloads_dir.clone(),
        Duration::from_millis(config.workloads_debounce_ms),
    );
    let app = App::build(config, runtime, workloads).await?;
    app.shutdown.spawn(reload_on_sighup(app.manager.clone()));
    if !debounce.is_zero() {
        app.shutdown
            .spawn(reload_on_change(app.manager.clone(), dir, debounce));
    }
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

/// `SIGHUP` reloads the workload files (as `POST /workloads/reload` does).
async fn reload_on_sighup(manager: Arc<ContainerManager>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: reload with POST /workloads/reload");
            return;
        }
    };
    while hup.recv().await.is_some() {
        manager.reload("sighup").await;
    }
}

/// Reloads the workload files once `dir` has been quiet for `debounce` after a
/// change to a workload file. The `notify` crate gives the platform's file events
/// (inotify here) instead of polling the directory.
async fn reload_on_change(manager: Arc<ContainerManager>, dir: PathBuf, debounce: Duration) {
    use notify::Watcher;
    let (tx, mut changes) = tokio::sync::mpsc::unbounded_channel();
    let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
        if event.is_ok_and(|e| touches_workload_file(&e)) {
            let _ = tx.send(());
        }
    });
    let mut watcher = match watcher {
        Ok(w) => w,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch the workloads directory: reload with SIGHUP or POST /workloads/reload");
            return;
        }
    };
    if let Err(e) = watcher.watch(&dir, notify::RecursiveMode::NonRecursive) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the workloads directory (it must exist when the daemon starts): reload with SIGHUP or POST /workloads/reload");
        return;
    }
    tracing::info!(dir = %dir.display(), debounce_ms = debounce.as_millis() as u64, "watching the workloads directory");
    while changes.recv().await.is_some() {
        // Wait until the directory is quiet: a save is several events, a `cp *` many.
        loop {
            match tokio::time::timeout(debounce, changes.recv()).await {
                Ok(Some(())) => continue,
                Ok(None) => return,
                Err(_quiet) => break,
            }
        }
        manager.reload("watch").await;
    }
}

/// A workload file (`*.yaml`, `*.yml`) changed, appeared or went; or a
/// Kubernetes ConfigMap mount swapped its `..data` link. Reads and editors' swap
/// files are not changes.
fn touches_workload_file(event: &notify::Event) -> bool {
    if event.kind.is_access() {
        return false;
    }
    event.paths.iter().any(|p| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        name.starts_with("..")
            || (!name.starts_with('.') && (name.ends_with(".yaml") || name.ends_with(".yml")))
    })
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
