//! The daemon under test as a child process (the release binary, like the integration
//! tests spawn theirs), and [`InstanceGuard`], which removes every container carrying
//! the bench's `boilerhouse.instance` label when it drops — after an error, a panic or
//! Ctrl-C too. Containers of other instances are never touched.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::http::{self, Timed};
use super::{stats, BenchResult};

/// Removes the instance's containers on drop. Declare it before the [`Daemon`] so the
/// daemon is stopped first and cannot refill behind the removal.
pub struct InstanceGuard {
    instance: String,
}

impl InstanceGuard {
    pub fn new(instance: &str) -> Self {
        Self {
            instance: instance.to_owned(),
        }
    }
}

impl Drop for InstanceGuard {
    fn drop(&mut self) {
        let mut removed = remove_instance_containers(&self.instance);
        if removed > 0 {
            // A create the killed daemon had in flight may land just after the listing.
            std::thread::sleep(Duration::from_secs(1));
            removed += remove_instance_containers(&self.instance);
        }
        if removed > 0 {
            eprintln!(
                "cleanup: removed {removed} container(s) of instance {}",
                self.instance
            );
        }
    }
}

/// Ids of every container (any state) labelled with `instance`.
pub fn instance_containers(instance: &str) -> Vec<String> {
    let filter = format!("label=boilerhouse.instance={instance}");
    match Command::new("docker")
        .args(["ps", "-aq", "--filter", &filter])
        .output()
    {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect(),
        Err(e) => {
            eprintln!("cleanup: cannot run `docker ps`: {e}");
            Vec::new()
        }
    }
}

/// `docker rm -f -v` on the instance's containers; returns how many there were.
pub fn remove_instance_containers(instance: &str) -> usize {
    let ids = instance_containers(instance);
    // Chunks keep the command line short; docker removes each chunk in parallel.
    for chunk in ids.chunks(100) {
        let status = Command::new("docker")
            .args(["rm", "-f", "-v"])
            .args(chunk)
            .stdout(Stdio::null())
            .status();
        if !matches!(status, Ok(s) if s.success()) {
            eprintln!("cleanup: `docker rm -f` failed for some containers of {instance}");
        }
    }
    ids.len()
}

/// The running daemon. Dropping it kills the process (SIGKILL) and waits for it.
pub struct Daemon {
    child: Option<Child>,
    pub pid: u32,
    pub base: String,
    log: PathBuf,
    /// Control-plane client (pool polling, scaling, metrics), separate from the
    /// clients whose latency is measured.
    control: reqwest::Client,
}

/// Waits until `GET url` answers 2xx. Fails, with the end of the daemon's log, if the
/// daemon exits first or 30 s pass.
pub async fn wait_for_health(
    client: &reqwest::Client,
    url: &str,
    child: &mut Child,
    log: &Path,
) -> BenchResult<()> {
    let started = Instant::now();
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "the daemon exited with {status} during start-up:\n{}",
                log_tail(log)
            )
            .into());
        }
        if let Ok(r) = client.get(url).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!(
                "the daemon did not answer /health within 30 s:\n{}",
                log_tail(log)
            )
            .into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The last 30 lines of a daemon's log file.
pub fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl Daemon {
    /// Spawns `bin` with exactly `env` (plus `PATH`, `DOCKER_HOST` and any `MALLOC_*`
    /// variable) and waits for `/health`.
    pub async fn start(
        bin: &Path,
        env: &[(String, String)],
        port: u16,
        log: PathBuf,
    ) -> BenchResult<Self> {
        let log_file = std::fs::File::create(&log)?;
        let mut command = Command::new(bin);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            // DOCKER_HOST finds the engine; MALLOC_* lets a profiling run try glibc
            // allocator settings on the daemon.
            .envs(std::env::vars().filter(|(k, _)| k == "DOCKER_HOST" || k.starts_with("MALLOC_")))
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        // If the bench itself is killed outright, take the daemon with it. The signal
        // fires when the spawning thread exits: this runs on the thread that owns the
        // runtime's `block_on`, which lives as long as the bench.
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let child = command
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut daemon = Self {
            pid: child.id(),
            child: Some(child),
            base: format!("http://127.0.0.1:{port}"),
            log,
            control: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
        };
        let health = daemon.url("/health");
        if let Some(child) = daemon.child.as_mut() {
            wait_for_health(&daemon.control, &health, child, &daemon.log).await?;
        }
        Ok(daemon)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn memory(&self) -> Option<stats::Memory> {
        stats::Memory::of(self.pid)
    }

    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    pub async fn get(&self, path: &str) -> BenchResult<Timed> {
        http::send(&self.control, &self.url(path), None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> BenchResult<Timed> {
        http::send(&self.control, &self.url(path), Some(body)).await
    }

    /// `GET /pools/:id`, which must answer 200.
    pub async fn pool(&self, id: &str) -> BenchResult<Value> {
        let r = self.get(&format!("/pools/{id}")).await?;
        if r.status != 200 {
            return Err(format!("GET /pools/{id} answered {}: {}", r.status, r.body).into());
        }
        Ok(r.body)
    }

    /// Polls the pool every `every` until `check` holds; returns the view and the time
    /// it took.
    pub async fn wait_pool(
        &self,
        id: &str,
        timeout: Duration,
        every: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> BenchResult<(Value, Duration)> {
        let started = Instant::now();
        loop {
            let view = self.pool(id).await?;
            if check(&view) {
                return Ok((view, started.elapsed()));
            }
            if started.elapsed() > timeout {
                return Err(format!(
                    "pool {id} did not reach the expected state within {timeout:?}: {view}\n{}",
                    self.log_tail()
                )
                .into());
            }
            tokio::time::sleep(every).await;
        }
    }

    /// `POST /pools/:id/scale`.
    pub async fn scale(&self, id: &str, target: usize) -> BenchResult<()> {
        let body = serde_json::json!({ "targetSize": target });
        let r = self.post(&format!("/pools/{id}/scale"), &body).await?;
        if r.status != 200 {
            return Err(
                format!("scaling {id} to {target} answered {}: {}", r.status, r.body).into(),
            );
        }
        Ok(())
    }

    /// Server-side claim figures from `/metrics`: (count, sum of seconds) of
    /// `boilerhouse_claim_duration_seconds` for `pool` and `result`.
    pub async fn claim_metric(&self, pool: &str, result: &str) -> BenchResult<(u64, f64)> {
        let r = http::send_text(&self.control, &self.url("/metrics")).await?;
        let labels = [format!("pool=\"{pool}\""), format!("result=\"{result}\"")];
        let value = |name: &str| -> f64 {
            r.lines()
                .filter(|l| l.starts_with(name) && labels.iter().all(|lb| l.contains(lb)))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum()
        };
        Ok((
            value("boilerhouse_claim_duration_seconds_count{") as u64,
            value("boilerhouse_claim_duration_seconds_sum{"),
        ))
    }
}

/// `perf record` attached to the daemon while it lives; stopped (SIGINT, so perf
/// writes its file) on drop.
pub struct Profiler {
    child: Option<Child>,
}

impl Profiler {
    /// Starts `perf record` with DWARF call graphs (release builds have no frame
    /// pointers; `debug = 1` gives the line tables). None when perf cannot start.
    pub fn attach(pid: u32, out: &Path) -> Option<Self> {
        let child = Command::new("perf")
            .args(["record", "-F", "999", "--call-graph", "dwarf,16384", "-p"])
            .arg(pid.to_string())
            .arg("-o")
            .arg(out)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| eprintln!("claim_latency: cannot start perf: {e}"))
            .ok()?;
        // perf needs a moment to attach to every thread.
        std::thread::sleep(Duration::from_millis(500));
        Some(Self { child: Some(child) })
    }
}

impl Drop for Profiler {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: plain kill(2) on our own child's pid.
                unsafe {
                    libc::kill(pid, libc::SIGINT);
                }
            }
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A free loopback port (the daemon binds it a moment later).
pub fn free_port() -> BenchResult<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
