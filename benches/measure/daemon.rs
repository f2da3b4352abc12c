//! The daemon under measurement: the kit's [`Daemon`] (the release binary as a child
//! process, its instance's containers removed when it drops), plus what the bench
//! asks of it besides the measured requests — pool views, scaling, server-side
//! figures from `/metrics`, its memory — and `perf` attached to it.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use boilerhouse_testkit::Daemon;
use serde_json::Value;

use super::http::{self, Timed};
use super::{stats, BenchResult};

/// A running daemon and the control-plane client (pool polling, scaling, metrics),
/// separate from the clients whose latency is measured.
pub struct BenchDaemon {
    daemon: Daemon,
    pub pid: u32,
    control: reqwest::Client,
}

impl BenchDaemon {
    /// Starts `bin` in `root` with exactly `env` (plus `PATH`, `DOCKER_HOST` and any
    /// `MALLOC_*` variable, so a profiling run can try glibc allocator settings on
    /// it) and waits for `/health`. Killed with the bench if the bench is killed
    /// outright.
    pub async fn start(bin: &Path, root: &Path, env: Vec<(String, String)>) -> BenchResult<Self> {
        let daemon = Daemon::builder(bin)
            .root(root)
            .envs(env)
            .pass_env_prefix("MALLOC_")
            .die_with_parent()
            .try_start()
            .await?;
        let pid = daemon.pid().ok_or("the daemon is not running")?;
        Ok(Self {
            daemon,
            pid,
            control: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()?,
        })
    }

    pub fn url(&self, path: &str) -> String {
        self.daemon.url(path)
    }

    pub fn memory(&self) -> Option<stats::Memory> {
        stats::Memory::of(self.pid)
    }

    pub fn log_tail(&self) -> String {
        self.daemon.log_tail()
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
