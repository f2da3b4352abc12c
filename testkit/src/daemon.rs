//! The daemon under test as a child process: the built binary on a free loopback port,
//! with its own `BOILERHOUSE_INSTANCE`, directories and workloads. It answers
//! `/health` before [`DaemonBuilder::start`] returns; dropping it kills the process
//! and removes every container of its instance — also when a test fails or a bench
//! errors out. Integration tests and benchmarks both start theirs here.
//!
//! The kit cannot see the binary's path (`CARGO_BIN_EXE_boilerhouse` is set for the
//! test and bench crates only), so the caller passes it in.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::docker::InstanceGuard;
use crate::error::{KitError, KitResult};
use crate::image::{require_docker, test_image};
use crate::net::free_port;
use crate::s3::find_rclone;

/// How long a daemon may take to answer `/health` after its spawn.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);

/// An instance name no other run uses: `t<pid>x<n>x<random>`. The `t` prefix is what
/// `make clean-test-containers` recognises.
pub fn unique_instance() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t{}x{}x{:04x}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        rand::random::<u16>()
    )
}

/// Where the daemon's directories live.
enum Root {
    /// A fresh temporary directory with this prefix, removed with the daemon.
    Temp(&'static str),
    /// A directory the caller owns (and removes).
    At(PathBuf),
}

pub struct DaemonBuilder {
    bin: PathBuf,
    root: Root,
    instance: Option<String>,
    workloads: Vec<(String, String)>,
    env: Vec<(String, String)>,
    pass_env_prefixes: Vec<String>,
    die_with_parent: bool,
    own_process_group: bool,
}

pub struct Daemon {
    child: Option<Child>,
    bin: PathBuf,
    pub port: u16,
    pub base: String,
    pub instance: String,
    /// Holds `states/`, `secrets/`, `sockets/`, `data/`, `workloads/` and `daemon.log`.
    pub root: PathBuf,
    /// The daemon's whole environment but `PATH`, `DOCKER_HOST` and passed-through
    /// variables.
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    pub(crate) http: reqwest::Client,
    pass_env_prefixes: Vec<String>,
    die_with_parent: bool,
    own_process_group: bool,
    // Dropped after the process is killed (in `drop`), before the directories go.
    _containers: InstanceGuard,
    _tempdir: Option<tempfile::TempDir>,
}

impl DaemonBuilder {
    /// Adds `workloads/<file>` with `yaml`.
    pub fn workload(mut self, file: &str, yaml: &str) -> Self {
        self.workloads.push((file.to_owned(), yaml.to_owned()));
        self
    }

    /// Sets a variable of the daemon's environment, replacing the kit's default.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }

    pub fn envs(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        self.env.extend(vars);
        self
    }

    /// The instance label (default [`unique_instance`]).
    pub fn instance(mut self, instance: &str) -> Self {
        self.instance = Some(instance.to_owned());
        self
    }

    /// Keeps the daemon's directories in `dir` (which the caller owns) instead of a
    /// temporary directory.
    pub fn root(mut self, dir: &Path) -> Self {
        self.root = Root::At(dir.to_path_buf());
        self
    }

    /// The prefix of the temporary root (default `bh-test-`).
    pub fn root_prefix(mut self, prefix: &'static str) -> Self {
        self.root = Root::Temp(prefix);
        self
    }

    /// Also passes the caller's variables starting with `prefix` (e.g. `MALLOC_`, so
    /// a profiling run can try allocator settings on the daemon).
    pub fn pass_env_prefix(mut self, prefix: &str) -> Self {
        self.pass_env_prefixes.push(prefix.to_owned());
        self
    }

    /// The daemon gets SIGKILL when the thread that spawned it exits, so a bench killed
    /// outright takes it along. Only for callers whose spawning thread lives as long
    /// as the daemon (a bench's `block_on` thread).
    pub fn die_with_parent(mut self) -> Self {
        self.die_with_parent = true;
        self
    }

    /// Runs the daemon in a process group of its own: stopping it then also stops an
    /// rclone it runs (which would otherwise keep writing into directories being
    /// removed), and a Ctrl-C in the terminal reaches only the caller.
    pub fn own_process_group(mut self) -> Self {
        self.own_process_group = true;
        self
    }

    /// Starts the daemon and waits for `/health`; panics with its log when it cannot.
    /// Fails (never skips) when Docker or the test image is missing.
    pub async fn start(self) -> Daemon {
        require_docker();
        match self.try_start().await {
            Ok(d) => d,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`DaemonBuilder::start`] for callers that report errors instead of panicking.
    pub async fn try_start(self) -> KitResult<Daemon> {
        let (tempdir, root) = match self.root {
            Root::Temp(prefix) => {
                let dir = tempfile::Builder::new()
                    .prefix(prefix)
                    .tempdir()
                    .map_err(KitError::io("temporary directory for the daemon"))?;
                let path = dir.path().to_path_buf();
                (Some(dir), path)
            }
            Root::At(path) => (None, path),
        };
        let wdir = root.join("workloads");
        std::fs::create_dir_all(&wdir)
            .map_err(KitError::io(format!("creating {}", wdir.display())))?;
        for (file, yaml) in &self.workloads {
            let path = wdir.join(file);
            std::fs::write(&path, yaml)
                .map_err(KitError::io(format!("writing {}", path.display())))?;
        }
        let mut instance = self.instance.unwrap_or_else(unique_instance);
        let mut port = free_port();
        let p = |s: &str| root.join(s).display().to_string();
        let mut env: Vec<(String, String)> = [
            ("BOILERHOUSE_API_HOST", "127.0.0.1".to_owned()),
            ("BOILERHOUSE_API_PORT", port.to_string()),
            ("BOILERHOUSE_INSTANCE", instance.clone()),
            ("BOILERHOUSE_STATE_DIR", p("states")),
            ("BOILERHOUSE_SECRETS_DIR", p("secrets")),
            ("BOILERHOUSE_SOCKET_DIR", p("sockets")),
            ("BOILERHOUSE_DATA_DIR", p("data")),
            ("BOILERHOUSE_WORKLOADS_DIR", p("workloads")),
            ("BOILERHOUSE_DEFAULT_IMAGE", test_image()),
            ("BOILERHOUSE_CONTAINER_MEMORY_MB", "64".to_owned()),
            ("RUST_LOG", "info,boilerhouse=debug".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        // Without an rclone the daemon falls back to `rclone` on PATH; a test that
        // syncs fails then through its S3 fixture, which requires one.
        if let Some(rclone) = find_rclone() {
            env.push((
                "BOILERHOUSE_RCLONE_BIN".to_owned(),
                rclone.display().to_string(),
            ));
        }
        for (k, v) in self.env {
            env.retain(|(ek, _)| ek != &k);
            env.push((k, v));
        }
        // The environment is what the daemon sees: a caller's own port or instance
        // there is the one the fixture must talk to and clean up after.
        for (k, v) in &env {
            match k.as_str() {
                "BOILERHOUSE_API_PORT" => port = v.parse().unwrap_or(port),
                "BOILERHOUSE_INSTANCE" => instance.clone_from(v),
                _ => {}
            }
        }
        let mut d = Daemon {
            child: None,
            bin: self.bin,
            port,
            base: format!("http://127.0.0.1:{port}"),
            _containers: InstanceGuard::new(&instance),
            instance,
            log: root.join("daemon.log"),
            root,
            env,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()?,
            pass_env_prefixes: self.pass_env_prefixes,
            die_with_parent: self.die_with_parent,
            own_process_group: self.own_process_group,
            _tempdir: tempdir,
        };
        d.spawn().await?;
        Ok(d)
    }
}

impl Daemon {
    /// A daemon of `bin` (tests: `env!("CARGO_BIN_EXE_boilerhouse")`).
    pub fn builder(bin: impl Into<PathBuf>) -> DaemonBuilder {
        DaemonBuilder {
            bin: bin.into(),
            root: Root::Temp("bh-test-"),
            instance: None,
            workloads: Vec::new(),
            env: Vec::new(),
            pass_env_prefixes: Vec::new(),
            die_with_parent: false,
            own_process_group: false,
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn state_dir(&self, container_id: &str) -> PathBuf {
        self.path("states").join(container_id)
    }

    pub fn secrets_dir(&self, container_id: &str) -> PathBuf {
        self.path("secrets").join(container_id)
    }

    /// Docker name of one of this daemon's containers.
    pub fn docker_name(&self, container_id: &str) -> String {
        format!("bh-{}-{}", self.instance, container_id)
    }

    async fn spawn(&mut self) -> KitResult<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(KitError::io(format!("opening {}", self.log.display())))?;
        let log_err = log
            .try_clone()
            .map_err(KitError::io(format!("opening {}", self.log.display())))?;
        let prefixes = &self.pass_env_prefixes;
        let mut command = Command::new(&self.bin);
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(std::env::vars().filter(|(k, _)| {
                k == "DOCKER_HOST" || prefixes.iter().any(|p| k.starts_with(p.as_str()))
            }))
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        if self.own_process_group {
            command.process_group(0);
        }
        if self.die_with_parent {
            // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let child = command.spawn().map_err(|source| KitError::Spawn {
            bin: self.bin.clone(),
            source,
        })?;
        self.child = Some(child);
        self.wait_healthy().await
    }

    async fn wait_healthy(&mut self) -> KitResult<()> {
        let started = Instant::now();
        let health = self.url("/health");
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Err(KitError::Exited {
                    status,
                    log: self.log_text(),
                });
            }
            if let Ok(r) = self.http.get(&health).send().await {
                if r.status().is_success() {
                    return Ok(());
                }
            }
            if started.elapsed() > HEALTH_TIMEOUT {
                return Err(KitError::NotHealthy {
                    timeout: HEALTH_TIMEOUT,
                    log: self.log_text(),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The daemon's process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last 40 lines of the daemon's log.
    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// SIGKILL, no chance to clean up (to its whole group when it has its own).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            if self.own_process_group {
                signal(c.id(), libc::SIGKILL, true);
            }
            // An error means it has exited already; `wait` reaps it either way.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut c = self.child.take().expect("daemon not running");
        signal(c.id(), libc::SIGTERM, false);
        c.wait()
            .unwrap_or_else(|e| panic!("waiting for the daemon: {e}"))
    }

    /// SIGTERM, then polls for the exit for at most `bound`; None = still running
    /// (the fixture's drop kills it).
    pub async fn terminate_within(&mut self, bound: Duration) -> Option<ExitStatus> {
        let pid = self.pid().expect("daemon not running");
        signal(pid, libc::SIGTERM, false);
        let started = Instant::now();
        while started.elapsed() < bound {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                self.child = None;
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// SIGKILL, then the same daemon again (same port, directories and instance).
    pub async fn restart(&mut self) {
        self.kill9();
        self.start_again().await;
    }

    /// Starts the stopped daemon again (same port, directories and instance).
    pub async fn start_again(&mut self) {
        if let Err(e) = self.spawn().await {
            panic!("{e}");
        }
    }
}

/// kill(2) to `pid`, or to its process group.
fn signal(pid: u32, sig: libc::c_int, group: bool) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill has no memory preconditions; the pid is our own unreaped child's
    // (and its group, when it was spawned with one of its own), so it names no other
    // process. Failure (already gone) is fine.
    unsafe {
        libc::kill(if group { -pid } else { pid }, sig);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- daemon log ({}) ---\n{}",
                self.instance,
                self.log_tail()
            );
        }
        self.kill9();
        // Then `_containers` drops: it removes the instance's containers.
    }
}

/// A daemon whose only workload is `web`: [`workload`] with `extra`.
pub async fn web_daemon(bin: &str, extra: &str) -> Daemon {
    Daemon::builder(bin)
        .workload("web.yaml", &workload("web", extra))
        .start()
        .await
}

/// A simple workload on the test image.
pub fn workload(id: &str, extra: &str) -> String {
    format!(
        "id: {id}\nimage: {}\ncommand: [\"sleep\", \"infinity\"]\nuser: \"1000:1000\"\n{extra}\n",
        test_image()
    )
}
