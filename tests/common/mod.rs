//! Shared fixtures for the integration tests: a real daemon process on a free
//! loopback port, with its own `BOILERHOUSE_INSTANCE`, directories and workloads,
//! whose containers are removed when the fixture drops — also when a test fails.
#![allow(dead_code)]

pub mod hold;
pub mod registry;
pub mod s3;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn test_image() -> String {
    std::env::var("BOILERHOUSE_TEST_IMAGE").unwrap_or_else(|_| "boilerhouse-test:busybox".into())
}

/// Fails (never skips) when Docker or the test image is missing.
pub fn require_docker() {
    let ok = Command::new("docker")
        .args(["image", "inspect", &test_image()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "Docker is unreachable or the test image {} is missing: run `make test` (it provisions the image)",
        test_image()
    );
}

pub fn unique_instance() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t{}x{}x{:04x}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst),
        rand::random::<u16>()
    )
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

/// `docker` CLI, for assertions from outside the daemon. Bounded: an engine call
/// that hangs fails the test instead of stalling the run.
pub fn docker(args: &[&str]) -> (bool, String) {
    let out = Command::new("timeout")
        .arg("120")
        .arg("docker")
        .args(args)
        .output()
        .expect("docker CLI missing");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text.trim().to_owned())
}

pub fn docker_inspect(name: &str) -> Value {
    let (ok, out) = docker(&["inspect", name]);
    assert!(ok, "docker inspect {name}: {out}");
    let v: Value = serde_json::from_str(&out).expect("inspect JSON");
    v[0].clone()
}

/// Runs `sh -c script` in the container as `user`; returns (exit ok, output).
pub fn docker_exec(name: &str, user: &str, script: &str) -> (bool, String) {
    docker(&["exec", "-u", user, name, "sh", "-c", script])
}

pub fn containers_of(instance: &str) -> Vec<String> {
    let (_, out) = docker(&[
        "ps",
        "-aq",
        "--filter",
        &format!("label=boilerhouse.instance={instance}"),
    ]);
    out.lines()
        .map(str::to_owned)
        .filter(|l| !l.is_empty())
        .collect()
}

pub fn remove_instance_containers(instance: &str) {
    let ids = containers_of(instance);
    if !ids.is_empty() {
        let mut args = vec!["rm", "-f", "-v"];
        args.extend(ids.iter().map(String::as_str));
        docker(&args);
    }
}

pub struct Daemon {
    child: Option<Child>,
    pub port: u16,
    pub base: String,
    pub instance: String,
    pub root: tempfile::TempDir,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
    http: reqwest::Client,
}

pub struct DaemonBuilder {
    workloads: Vec<(String, String)>,
    env: Vec<(String, String)>,
}

impl DaemonBuilder {
    pub fn workload(mut self, file: &str, yaml: &str) -> Self {
        self.workloads.push((file.to_owned(), yaml.to_owned()));
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }
    pub async fn start(self) -> Daemon {
        require_docker();
        let root = tempfile::Builder::new()
            .prefix("bh-test-")
            .tempdir()
            .expect("tempdir");
        let wdir = root.path().join("workloads");
        std::fs::create_dir_all(&wdir).unwrap();
        for (file, yaml) in &self.workloads {
            std::fs::write(wdir.join(file), yaml).unwrap();
        }
        let instance = unique_instance();
        let port = free_port();
        let p = |s: &str| root.path().join(s).display().to_string();
        let mut env = vec![
            ("BOILERHOUSE_API_HOST".to_owned(), "127.0.0.1".to_owned()),
            ("BOILERHOUSE_API_PORT".to_owned(), port.to_string()),
            ("BOILERHOUSE_INSTANCE".to_owned(), instance.clone()),
            ("BOILERHOUSE_STATE_DIR".to_owned(), p("states")),
            ("BOILERHOUSE_SECRETS_DIR".to_owned(), p("secrets")),
            ("BOILERHOUSE_SOCKET_DIR".to_owned(), p("sockets")),
            ("BOILERHOUSE_DATA_DIR".to_owned(), p("data")),
            ("BOILERHOUSE_WORKLOADS_DIR".to_owned(), p("workloads")),
            ("BOILERHOUSE_DEFAULT_IMAGE".to_owned(), test_image()),
            (
                "BOILERHOUSE_CONTAINER_MEMORY_MB".to_owned(),
                "64".to_owned(),
            ),
            (
                "BOILERHOUSE_RCLONE_BIN".to_owned(),
                s3::rclone_bin().display().to_string(),
            ),
            ("RUST_LOG".to_owned(), "info,boilerhouse=debug".to_owned()),
        ];
        for (k, v) in self.env {
            env.retain(|(ek, _)| ek != &k);
            env.push((k, v));
        }
        let mut d = Daemon {
            child: None,
            port,
            base: format!("http://127.0.0.1:{port}"),
            instance,
            log: root.path().join("daemon.log"),
            root,
            env,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(120))
                .build()
                .unwrap(),
        };
        d.spawn().await;
        d
    }
}

impl Daemon {
    pub fn builder() -> DaemonBuilder {
        DaemonBuilder {
            workloads: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.path().join(rel)
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

    async fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_boilerhouse"))
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(std::env::vars().filter(|(k, _)| k == "DOCKER_HOST"))
            .envs(self.env.iter().cloned())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn daemon");
        self.child = Some(child);
        let started = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("daemon exited with {status}:\n{}", self.log_text());
            }
            if let Ok(r) = self.http.get(format!("{}/health", self.base)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "daemon did not answer /health in 30 s:\n{}",
                self.log_text()
            );
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

    /// SIGKILL, no chance to clean up.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for the exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("daemon not running");
        unsafe_kill(c.id(), "TERM");
        c.wait().expect("wait")
    }

    /// SIGTERM, then polls for the exit for at most `bound`; None = still running
    /// (the fixture's drop kills it).
    pub async fn terminate_within(&mut self, bound: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.as_ref().expect("daemon not running").id();
        unsafe_kill(pid, "TERM");
        let started = Instant::now();
        while started.elapsed() < bound {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                self.child = None;
                return Some(status);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    pub async fn restart(&mut self) {
        self.kill9();
        self.spawn().await;
    }

    pub async fn start_again(&mut self) {
        self.spawn().await;
    }

    pub async fn request(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{}", self.base, path);
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut req = self.http.request(m, &url);
        if let Some((_, token)) = self.env.iter().find(|(k, _)| k == "BOILERHOUSE_API_TOKEN") {
            req = req.bearer_auth(token);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, v)
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        self.request("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.request("POST", path, Some(body)).await
    }

    pub async fn claim(&self, tenant: &str, body: Value) -> Value {
        let (s, v) = self.post(&format!("/tenants/{tenant}/claim"), body).await;
        assert_eq!(s, 200, "claim {tenant}: {v}\n{}", self.log_tail());
        v
    }

    pub async fn release(&self, tenant: &str, body: Value) -> Value {
        let (s, v) = self.post(&format!("/tenants/{tenant}/release"), body).await;
        assert_eq!(s, 200, "release {tenant}: {v}\n{}", self.log_tail());
        v
    }

    pub fn log_tail(&self) -> String {
        let text = self.log_text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub async fn pool(&self, id: &str) -> Value {
        let (s, v) = self.get(&format!("/pools/{id}")).await;
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Polls until `check` holds for the pool view, or panics after `timeout`.
    pub async fn wait_pool(
        &self,
        id: &str,
        timeout: Duration,
        check: impl Fn(&Value) -> bool,
    ) -> Value {
        let started = Instant::now();
        loop {
            let v = self.pool(id).await;
            if check(&v) {
                return v;
            }
            assert!(
                started.elapsed() < timeout,
                "pool {id} did not reach the expected state in {timeout:?}: {v}\n{}",
                self.log_tail()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_idle(&self, id: &str, n: u64) -> Value {
        self.wait_pool(id, Duration::from_secs(60), |v| {
            v["idleCount"].as_u64() >= Some(n)
        })
        .await
    }
}

fn unsafe_kill(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status();
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
        // The engine may still finish a create the daemon sent just before it died:
        // sweep until the instance has stayed empty for a moment.
        let mut quiet = 0;
        for _ in 0..40 {
            remove_instance_containers(&self.instance);
            std::thread::sleep(Duration::from_millis(250));
            if containers_of(&self.instance).is_empty() {
                quiet += 1;
                if quiet == 3 {
                    break;
                }
            } else {
                quiet = 0;
            }
        }
    }
}

/// Polls `f` until it returns Some, or panics with `what` after `timeout`.
pub async fn eventually<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(started.elapsed() < timeout, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every regular file below `dir`, relative path → content.
pub fn file_tree(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path).unwrap();
            if meta.is_dir() {
                stack.push(path);
            } else if meta.is_file() {
                let rel = path.strip_prefix(dir).unwrap().display().to_string();
                out.insert(rel, std::fs::read(&path).unwrap());
            }
        }
    }
    out
}

/// The relative paths of everything but directories below `dir`, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A daemon whose only workload is `web`: [`workload`] with `extra`.
pub async fn web_daemon(extra: &str) -> Daemon {
    Daemon::builder()
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

/// Sends a request line exactly as given (no client-side path normalisation, so
/// `/tenants/../claim` reaches the server as written); returns (status, body).
pub async fn raw_request(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or_default().to_owned();
    (status, body)
}
