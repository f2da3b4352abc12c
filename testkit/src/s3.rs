//! A real S3 endpoint for the tests: `rclone serve s3` on a free loopback port, backed
//! by a temporary directory. A bucket is a subdirectory of `root_dir()` and an object
//! is a file below it, so tests seed and inspect objects directly as files.
//!
//! Credentials are random per server and reach rclone through its environment
//! (`RCLONE_AUTH_KEY`), so no process's command line ever shows them — tests can look
//! for them in `/proc` without finding the fixture's own.
//!
//! rclone 1.75's S3 server is not safe under concurrent requests: two PUTs that create
//! the same new directory, or a listing that re-reads a directory while a PUT renames
//! its temporary file, fail with HTTP 500 (`Dir.Rename error: file does not exist` in
//! its log), sometimes after the object was written. Measured with 63 small files and
//! 16 transfers: 18 of 80 uploads hit it; one at a time, 0 of 100. Real S3 has no such
//! race, so tests talk to a proxy that passes the server one request at a time
//! ([`S3Server::start_new`]); the benchmark, which retries, talks to it directly
//! ([`S3Server::start_direct`]).
//!
//! The proxy can also inject the faults real S3 answers under load ([`Faults`]): a
//! share of requests answered `503 SlowDown` or `500 InternalError` with S3's XML
//! error body, or the first PUT of every key failing. A faulted request never reaches
//! the server, so nothing of it is written ([`S3Server::start_with`]).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::distr::Alphanumeric;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::net::free_port;

/// The rclone the tests use: `BOILERHOUSE_RCLONE_BIN`, else the provisioned
/// `.tools/bin/rclone` of the workspace, else `rclone` on `PATH`.
pub fn find_rclone() -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os("BOILERHOUSE_RCLONE_BIN").filter(|b| !b.is_empty()) {
        return Some(PathBuf::from(bin));
    }
    // The kit lives in `<workspace>/testkit`; provisioning installs into `<workspace>/.tools`.
    let provisioned = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/rclone");
    if provisioned.is_file() {
        return Some(provisioned);
    }
    std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("rclone"))
            .find(|candidate| candidate.is_file())
    })
}

/// [`find_rclone`], which must find one: a missing rclone fails the test, never skips it.
pub fn rclone_bin() -> PathBuf {
    find_rclone().unwrap_or_else(|| {
        panic!(
            "rclone not found: set BOILERHOUSE_RCLONE_BIN, or run `make test` \
             (or scripts/provision-test-deps.sh) to install it into .tools/bin"
        )
    })
}

/// Faults the proxy injects instead of forwarding a request.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Share of requests (0.0 to 1.0) answered at random with `503 SlowDown` or
    /// `500 InternalError`, half of each.
    pub rate: f64,
    /// The first PUT of every key is answered `500 InternalError`; the next succeeds.
    pub first_put_fails: bool,
    /// After this many requests the proxy stops listening and closes its connections,
    /// as an endpoint that goes away in the middle of a transfer (until restarted).
    pub vanish_after: Option<u64>,
    /// GETs of objects by the daemon's own client (User-Agent `boilerhouse/…`) after
    /// this many are answered `403 AccessDenied`; rclone's are served: the engine's
    /// own download failing half-way, for rclone to take over.
    pub daemon_gets_fail_after: Option<u64>,
}

impl Faults {
    pub fn none() -> Self {
        Self::default()
    }

    pub fn rate(rate: f64) -> Self {
        Self {
            rate,
            ..Self::default()
        }
    }

    pub fn first_put_fails() -> Self {
        Self {
            first_put_fails: true,
            ..Self::default()
        }
    }

    pub fn vanish_after(requests: u64) -> Self {
        Self {
            vanish_after: Some(requests),
            ..Self::default()
        }
    }

    pub fn daemon_gets_fail_after(gets: u64) -> Self {
        Self {
            daemon_gets_fail_after: Some(gets),
            ..Self::default()
        }
    }

    fn any(&self) -> bool {
        self.rate > 0.0
            || self.first_put_fails
            || self.vanish_after.is_some()
            || self.daemon_gets_fail_after.is_some()
    }
}

/// What the proxy did, counted over the server's life (restarts included).
#[derive(Debug, Default)]
pub struct ProxyStats {
    requests: AtomicU64,
    slow_down: AtomicU64,
    internal_error: AtomicU64,
    server_error: AtomicU64,
    puts_seen: Mutex<HashSet<String>>,
    daemon_requests: AtomicU64,
    rclone_requests: AtomicU64,
}

impl ProxyStats {
    /// Requests the proxy received, faulted or not.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// Requests answered `503 SlowDown`.
    pub fn slow_downs(&self) -> u64 {
        self.slow_down.load(Ordering::Relaxed)
    }

    /// Forwarded requests the server itself answered with a 5xx status.
    pub fn server_errors(&self) -> u64 {
        self.server_error.load(Ordering::Relaxed)
    }

    /// Requests answered `500 InternalError` (random or first-PUT faults).
    pub fn internal_errors(&self) -> u64 {
        self.internal_error.load(Ordering::Relaxed)
    }

    /// Requests of the daemon's own S3 client (User-Agent `boilerhouse/…`).
    pub fn daemon_requests(&self) -> u64 {
        self.daemon_requests.load(Ordering::Relaxed)
    }

    /// Requests of rclone (User-Agent `rclone/…`).
    pub fn rclone_requests(&self) -> u64 {
        self.rclone_requests.load(Ordering::Relaxed)
    }

    pub fn faults(&self) -> u64 {
        self.slow_downs() + self.internal_errors()
    }
}

pub struct S3Server {
    /// Holds `data/` (the served root) and `server.log`.
    dir: tempfile::TempDir,
    root: PathBuf,
    /// The port clients use: the proxy's, or rclone's own when there is no proxy.
    port: u16,
    /// rclone's port.
    backend_port: u16,
    serialized: bool,
    faults: Faults,
    /// Keep rclone's directory cache (see [`S3Server::start_direct_caching`]).
    caching: bool,
    stats: Arc<ProxyStats>,
    access_key: String,
    secret_key: String,
    rclone: PathBuf,
    child: Option<Child>,
    proxy: Option<Proxy>,
}

impl S3Server {
    /// Starts a server on a free port with fresh credentials and an empty root, behind
    /// a proxy that passes it one request at a time (see the module docs).
    pub async fn start_new() -> Self {
        Self::start_with(true, Faults::none()).await
    }

    /// The same without the proxy: clients reach rclone directly, concurrently, and
    /// may see its spurious 500s.
    pub async fn start_direct() -> Self {
        Self::start_with(false, Faults::none()).await
    }

    /// Like [`S3Server::start_direct`], but the server keeps what it knows of each
    /// object (its MD5 above all) as real S3 keeps an object's ETag from when it was
    /// written: rclone's default directory cache instead of `--dir-cache-time 1ms`.
    /// With 1 ms the server re-reads every object under a prefix to hash it on each
    /// listing (~100–200 ms for 10 MB / 1,000 files here, ~8 ms with the cache),
    /// which no S3 does. The price: objects must be written through S3, or seeded as
    /// files before a [`S3Server::stop`] + [`S3Server::start`] (the restarted server
    /// reads them afresh); a file changed behind the server's back is not seen.
    pub async fn start_direct_caching() -> Self {
        let mut server = Self::create_stopped(false, Faults::none(), false);
        server.caching = true;
        server.start().await;
        server
    }

    /// Like [`S3Server::start_direct`] (requests reach the server concurrently), but
    /// through the proxy, which counts the server's own 5xx answers
    /// ([`ProxyStats::server_errors`]).
    pub async fn start_observed() -> Self {
        Self::create(false, Faults::none(), true).await
    }

    /// A server behind a proxy that injects `faults`, and passes requests one at a
    /// time when `serialized` (else concurrently: rclone's own spurious 500s add to
    /// the injected ones). Without faults and unserialized there is no proxy.
    pub async fn start_with(serialized: bool, faults: Faults) -> Self {
        Self::create(serialized, faults, serialized || faults.any()).await
    }

    async fn create(serialized: bool, faults: Faults, proxied: bool) -> Self {
        let mut server = Self::create_stopped(serialized, faults, proxied);
        server.start().await;
        server
    }

    fn create_stopped(serialized: bool, faults: Faults, proxied: bool) -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the S3 server");
        let root = dir.path().join("data");
        std::fs::create_dir_all(&root).expect("S3 root dir");
        let backend_port = free_port();
        Self {
            dir,
            root,
            port: if proxied { free_port() } else { backend_port },
            backend_port,
            serialized,
            faults,
            caching: false,
            stats: Arc::default(),
            access_key: random_string(20),
            secret_key: random_string(40),
            rclone: rclone_bin(),
            child: None,
            proxy: None,
        }
    }

    /// (Re)starts the server (and its proxy) on the same ports and directory; waits
    /// until it answers.
    pub async fn start(&mut self) {
        if self.child.is_some() {
            return;
        }
        let log_path = self.dir.path().join("server.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("S3 server log file");
        let stderr = log.try_clone().expect("S3 server log file");
        let mut command = Command::new(&self.rclone);
        command
            .args(["serve", "s3", "--addr"])
            .arg(format!("127.0.0.1:{}", self.backend_port));
        if !self.caching {
            // Objects seeded as files must show up at once. (Not `0s`: with it, rclone
            // 1.75's server hangs on concurrent uploads into new directories.)
            command.args(["--dir-cache-time", "1ms"]);
        }
        let child = command
            .arg(&self.root)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("RCLONE_CONFIG", "")
            .env(
                "RCLONE_AUTH_KEY",
                format!("\"{},{}\"", self.access_key, self.secret_key),
            )
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", self.rclone.display()));
        self.child = Some(child);
        self.wait_until_answering(&log_path).await;
        if self.port != self.backend_port {
            self.proxy = Some(Proxy::start(
                self.port,
                self.backend_port,
                self.serialized,
                self.faults,
                self.stats.clone(),
            ));
        }
    }

    /// Stops the server (SIGKILL) and its proxy, so clients find the port closed; the
    /// data stays.
    pub fn stop(&mut self) {
        if let Some(proxy) = self.proxy.take() {
            proxy.stop();
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn access_key(&self) -> &str {
        &self.access_key
    }

    pub fn secret_key(&self) -> &str {
        &self.secret_key
    }

    /// The served directory: `<root>/<bucket>/<key>`.
    pub fn root_dir(&self) -> PathBuf {
        self.root.clone()
    }

    pub fn rclone_bin(&self) -> &Path {
        &self.rclone
    }

    /// What the proxy saw and injected (all zero without a proxy).
    pub fn proxy_stats(&self) -> &ProxyStats {
        &self.stats
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The sink a workload's `sync:` section names for this server: bucket `bucket`
    /// (created), region `us-east-1`, default prefix `tenants/${tenantId}/`. The kit
    /// does not know the daemon's spec types; suites build theirs from this.
    pub fn sink(&self, bucket: &str) -> S3Sink {
        std::fs::create_dir_all(self.root.join(bucket)).expect("bucket dir");
        S3Sink {
            bucket: bucket.into(),
            region: "us-east-1".into(),
            endpoint: self.endpoint(),
            access_key_id: self.access_key.clone(),
            secret_access_key: self.secret_key.clone(),
            prefix: "tenants/${tenantId}/".into(),
        }
    }

    /// Where the object `tenants/<tenant>/<rel>` of `bucket` lives on disk.
    pub fn object_path(&self, bucket: &str, tenant: &str, rel: &str) -> PathBuf {
        self.root
            .join(bucket)
            .join("tenants")
            .join(tenant)
            .join(rel)
    }

    /// Writes the object `tenants/<tenant>/<rel>` of `bucket`.
    pub fn seed(&self, bucket: &str, tenant: &str, rel: &str, content: &[u8]) {
        let path = self.object_path(bucket, tenant, rel);
        std::fs::create_dir_all(path.parent().expect("object has a parent")).expect("object dir");
        std::fs::write(&path, content).expect("seed object");
    }

    async fn wait_until_answering(&mut self, log_path: &Path) {
        let started = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "rclone serve s3 exited ({status}): {}",
                    std::fs::read_to_string(log_path).unwrap_or_default()
                );
            }
            if answers_http(self.backend_port).await {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "rclone serve s3 did not answer on port {} within 20 s: {}",
                self.backend_port,
                std::fs::read_to_string(log_path).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The coordinates of an S3 sink on an [`S3Server`] (see [`S3Server::sink`]).
#[derive(Clone, Debug)]
pub struct S3Sink {
    pub bucket: String,
    pub region: String,
    pub endpoint: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub prefix: String,
}

impl S3Sink {
    /// The `sink:` mapping of a workload's `sync:` section, indented for it (four
    /// spaces), each line ending in a newline.
    pub fn yaml(&self) -> String {
        format!(
            "    type: s3\n    bucket: {}\n    region: {}\n    endpoint: {}\n    \
             access_key_id: {}\n    secret_access_key: {}\n    prefix: {}\n",
            self.bucket,
            self.region,
            self.endpoint,
            self.access_key_id,
            self.secret_access_key,
            self.prefix
        )
    }
}

/// An HTTP proxy in front of the S3 server that forwards requests (one at a time when
/// serialized) or answers some with injected faults, on its own thread and runtime so
/// it outlives any test's runtime. Forwarded requests go through unchanged (the `Host`
/// header included, which the request signature covers).
struct Proxy {
    shutdown: tokio::sync::oneshot::Sender<()>,
    thread: JoinHandle<()>,
}

struct ProxyState {
    client: reqwest::Client,
    backend: String,
    /// Held while a request is forwarded, when serialized.
    one_at_a_time: Option<tokio::sync::Mutex<()>>,
    faults: Faults,
    stats: Arc<ProxyStats>,
    /// Notified when `vanish_after` requests have been received.
    vanish: tokio::sync::Notify,
}

impl Proxy {
    fn start(
        port: u16,
        backend_port: u16,
        serialized: bool,
        faults: Faults,
        stats: Arc<ProxyStats>,
    ) -> Self {
        let state = Arc::new(ProxyState {
            client: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("proxy HTTP client"),
            backend: format!("http://127.0.0.1:{backend_port}"),
            one_at_a_time: serialized.then(|| tokio::sync::Mutex::new(())),
            faults,
            stats,
            vanish: tokio::sync::Notify::new(),
        });
        let (shutdown, stopped) = tokio::sync::oneshot::channel::<()>();
        let (bound, listening) = std::sync::mpsc::channel::<std::io::Result<()>>();
        let thread = std::thread::spawn(move || {
            // Two workers: an unserialized proxy passes requests on concurrently.
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("proxy runtime");
            runtime.block_on(async move {
                // tokio's bind sets SO_REUSEADDR: after a restart the port may still
                // have connections in TIME_WAIT.
                let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                    Ok(listener) => {
                        let _ = bound.send(Ok(()));
                        listener
                    }
                    Err(e) => {
                        let _ = bound.send(Err(e));
                        return;
                    }
                };
                let app = axum::Router::new()
                    .fallback(forward)
                    .with_state(state.clone());
                tokio::select! {
                    served = axum::serve(listener, app) => served.expect("S3 proxy"),
                    _ = stopped => {}
                    () = state.vanish.notified() => {}
                }
            });
            // Dropping the runtime closes the listener and every open connection.
        });
        match listening.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("S3 proxy cannot listen on 127.0.0.1:{port}: {e}"),
            Err(_) => panic!("S3 proxy thread died before listening on 127.0.0.1:{port}"),
        }
        Self { shutdown, thread }
    }

    fn stop(self) {
        let _ = self.shutdown.send(());
        let _ = self.thread.join();
    }
}

/// The S3 errors the proxy injects.
#[derive(Clone, Copy)]
enum InjectedFault {
    SlowDown,
    InternalError,
    AccessDenied,
}

impl ProxyState {
    /// Decides whether this request is answered with a fault instead of forwarded.
    fn fault_for(
        &self,
        method: &axum::http::Method,
        path: &str,
        headers: &axum::http::HeaderMap,
    ) -> Option<InjectedFault> {
        let seen = self.stats.requests.fetch_add(1, Ordering::Relaxed) + 1;
        let agent = headers
            .get(axum::http::header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if agent.starts_with("boilerhouse/") {
            let n = self.stats.daemon_requests.fetch_add(1, Ordering::Relaxed) + 1;
            let object_get =
                method == axum::http::Method::GET && path.trim_start_matches('/').contains('/');
            if object_get
                && self
                    .faults
                    .daemon_gets_fail_after
                    .is_some_and(|after| n > after)
            {
                return Some(InjectedFault::AccessDenied);
            }
        } else if agent.starts_with("rclone/") {
            self.stats.rclone_requests.fetch_add(1, Ordering::Relaxed);
        }
        if self.faults.vanish_after.is_some_and(|n| seen >= n) {
            self.vanish.notify_one();
        }
        if self.faults.first_put_fails && method == axum::http::Method::PUT {
            let first = self
                .stats
                .puts_seen
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(path.to_owned());
            if first {
                return Some(InjectedFault::InternalError);
            }
        }
        let mut rng = rand::rng();
        if self.faults.rate > 0.0 && rng.random_bool(self.faults.rate.min(1.0)) {
            return Some(if rng.random_bool(0.5) {
                InjectedFault::SlowDown
            } else {
                InjectedFault::InternalError
            });
        }
        None
    }
}

/// The answer real S3 gives for `fault`: status, XML error body, request id header.
fn fault_response(fault: InjectedFault, path: &str) -> axum::response::Response {
    let (status, code, message) = match fault {
        InjectedFault::SlowDown => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "SlowDown",
            "Please reduce your request rate.",
        ),
        InjectedFault::InternalError => (
            axum::http::StatusCode::INTERNAL_SERVER_ERROR,
            "InternalError",
            "We encountered an internal error. Please try again.",
        ),
        InjectedFault::AccessDenied => (
            axum::http::StatusCode::FORBIDDEN,
            "AccessDenied",
            "Access Denied",
        ),
    };
    let request_id = random_string(16).to_uppercase();
    let resource = path.split('?').next().unwrap_or(path);
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code>\
         <Message>{message}</Message><Resource>{resource}</Resource>\
         <RequestId>{request_id}</RequestId></Error>"
    );
    let mut response = axum::response::Response::new(axum::body::Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static("application/xml"),
    );
    if let Ok(id) = axum::http::HeaderValue::from_str(&request_id) {
        headers.insert("x-amz-request-id", id);
    }
    response
}

/// Headers that belong to one connection, never forwarded.
fn hop_by_hop(name: &axum::http::HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// The end-to-end headers of a request or response (shared with the holding proxy).
pub fn end_to_end(headers: &axum::http::HeaderMap) -> axum::http::HeaderMap {
    headers
        .iter()
        .filter(|(name, _)| !hop_by_hop(name))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

async fn forward(
    axum::extract::State(state): axum::extract::State<Arc<ProxyState>>,
    request: axum::extract::Request,
) -> axum::response::Response {
    let (parts, body) = request.into_parts();
    let body = match axum::body::to_bytes(body, usize::MAX).await {
        Ok(body) => body,
        Err(e) => return proxy_error(format!("reading the request body: {e}")),
    };
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    if let Some(fault) = state.fault_for(&parts.method, parts.uri.path(), &parts.headers) {
        match fault {
            InjectedFault::SlowDown => state.stats.slow_down.fetch_add(1, Ordering::Relaxed),
            InjectedFault::InternalError => {
                state.stats.internal_error.fetch_add(1, Ordering::Relaxed)
            }
            InjectedFault::AccessDenied => 0,
        };
        return fault_response(fault, path);
    }
    let headers = end_to_end(&parts.headers);
    let _turn = match &state.one_at_a_time {
        Some(lock) => Some(lock.lock().await),
        None => None,
    };
    let sent = state
        .client
        .request(parts.method.clone(), format!("{}{path}", state.backend))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let answer = match sent {
        Ok(answer) => answer,
        Err(e) => return proxy_error(format!("forwarding {} {path}: {e}", parts.method)),
    };
    let status = answer.status();
    if status.is_server_error() {
        state.stats.server_error.fetch_add(1, Ordering::Relaxed);
    }
    let headers = end_to_end(answer.headers());
    let body = match answer.bytes().await {
        Ok(body) => body,
        Err(e) => return proxy_error(format!("reading the answer to {path}: {e}")),
    };
    let mut response = axum::response::Response::new(axum::body::Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

fn proxy_error(message: String) -> axum::response::Response {
    let mut response = axum::response::Response::new(axum::body::Body::from(message));
    *response.status_mut() = axum::http::StatusCode::BAD_GATEWAY;
    response
}

/// Any HTTP answer (even an S3 error) means the server is up.
async fn answers_http(port: u16) -> bool {
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        stream
            .write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await?;
        let mut head = [0u8; 8];
        stream.read_exact(&mut head).await?;
        Ok::<bool, std::io::Error>(head.starts_with(b"HTTP/"))
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(2), attempt).await,
        Ok(Ok(true))
    )
}

fn random_string(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}
