//! A real S3 endpoint for the tests: `rclone serve s3` on a free loopback port, backed
//! by a temporary directory. A bucket is a subdirectory of `root_dir()` and an object
//! is a file below it, so tests seed and inspect objects directly as files.
//!
//! Credentials are random per server and reach rclone through its environment
//! (`RCLONE_AUTH_KEY`), so no process's command line ever shows them — tests can look
//! for them in `/proc` without finding the fixture's own.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use boilerhouse::workload::spec::{
    SinkSpec, SyncDirection, SyncMapping, SyncMode, SyncPolicy, SyncSpec,
};
use rand::distr::Alphanumeric;
use rand::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The rclone the tests use: `BOILERHOUSE_RCLONE_BIN`, else the provisioned
/// `.tools/bin/rclone`, else `rclone` on `PATH`.
pub fn rclone_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("BOILERHOUSE_RCLONE_BIN").filter(|b| !b.is_empty()) {
        return PathBuf::from(bin);
    }
    let provisioned = Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/bin/rclone");
    if provisioned.is_file() {
        return provisioned;
    }
    let on_path = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("rclone"))
            .find(|candidate| candidate.is_file())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "rclone not found: set BOILERHOUSE_RCLONE_BIN, or run `make test` \
             (or scripts/provision-test-deps.sh) to install it into .tools/bin"
        )
    })
}

pub struct S3Server {
    /// Holds `data/` (the served root) and `server.log`.
    dir: tempfile::TempDir,
    root: PathBuf,
    port: u16,
    access_key: String,
    secret_key: String,
    rclone: PathBuf,
    child: Option<Child>,
}

impl S3Server {
    /// Starts a server on a free port with fresh credentials and an empty root.
    pub async fn start_new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir for the S3 server");
        let root = dir.path().join("data");
        std::fs::create_dir_all(&root).expect("S3 root dir");
        let mut server = Self {
            dir,
            root,
            port: free_port(),
            access_key: random_string(20),
            secret_key: random_string(40),
            rclone: rclone_bin(),
            child: None,
        };
        server.start().await;
        server
    }

    /// (Re)starts the server on the same port and directory; waits until it answers.
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
        let child = Command::new(&self.rclone)
            .args(["serve", "s3", "--addr"])
            .arg(format!("127.0.0.1:{}", self.port))
            // Objects seeded as files must show up at once. (Not `0s`: with it, rclone
            // 1.75's server hangs on concurrent uploads into new directories.)
            .args(["--dir-cache-time", "1ms"])
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
    }

    /// Stops the server (SIGKILL) and waits for it; the data stays.
    pub fn stop(&mut self) {
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A sync spec for this server: bucket `bucket` (created), default prefix
    /// `tenants/${tenantId}/`, these mappings.
    pub fn sync_spec(&self, bucket: &str, mappings: Vec<SyncMapping>) -> SyncSpec {
        std::fs::create_dir_all(self.root.join(bucket)).expect("bucket dir");
        SyncSpec {
            sink: SinkSpec {
                kind: "s3".into(),
                bucket: bucket.into(),
                region: Some("us-east-1".into()),
                endpoint: Some(self.endpoint()),
                access_key_id: Some(self.access_key.clone()),
                secret_access_key: Some(self.secret_key.clone()),
                prefix: "tenants/${tenantId}/".into(),
                rclone_flags: Vec::new(),
            },
            mappings,
            policy: SyncPolicy::default(),
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
            if answers_http(self.port).await {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "rclone serve s3 did not answer on port {} within 20 s: {}",
                self.port,
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

/// A mapping for tests.
pub fn mapping(
    path: &str,
    direction: SyncDirection,
    mode: SyncMode,
    pattern: Option<&str>,
) -> SyncMapping {
    SyncMapping {
        path: path.into(),
        direction,
        mode,
        pattern: pattern.map(Into::into),
    }
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port")
}

fn random_string(len: usize) -> String {
    rand::rng()
        .sample_iter(Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}
