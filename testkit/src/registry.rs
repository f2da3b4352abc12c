//! A real container registry for the tests: Debian's `docker-registry` (the CNCF
//! distribution registry, installed by scripts/provision-test-deps.sh) on a free
//! loopback port, storing into a temporary directory, with or without htpasswd
//! authentication. Docker accepts 127.0.0.0/8 registries over plain HTTP.
//!
//! Images are pushed with the docker CLI under a client configuration of the test's
//! own (`docker --config`), so no test ever logs the machine's docker in anywhere.
//! Every tag a test creates locally is removed when the fixture drops.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;

use crate::docker::docker;
use crate::image::test_image;
use crate::net::free_port;

pub struct Registry {
    dir: tempfile::TempDir,
    port: u16,
    /// `(user, password)` when the registry requires them.
    auth: Option<(String, String)>,
    child: Option<Child>,
    /// Local tags created for pushes or by pulls, removed on drop.
    tags: Mutex<Vec<String>>,
}

impl Registry {
    /// A registry anyone may pull from and push to.
    pub fn start_open() -> Self {
        Self::start(None)
    }

    /// A registry that requires `user` / `password` (htpasswd, bcrypt) for everything.
    pub fn start_private(user: &str, password: &str) -> Self {
        Self::start(Some((user.to_owned(), password.to_owned())))
    }

    fn start(auth: Option<(String, String)>) -> Self {
        let bin = which("docker-registry").unwrap_or_else(|| {
            panic!(
                "docker-registry not found: run scripts/provision-test-deps.sh \
                 (it installs Debian's docker-registry and apache2-utils)"
            )
        });
        let mut dir = tempfile::tempdir().expect("registry temp dir");
        let auth_section = match &auth {
            Some((user, password)) => {
                let htpasswd = dir.path().join("htpasswd");
                let out = Command::new("htpasswd")
                    .args(["-Bbn", user, password])
                    .output()
                    .expect("htpasswd missing: run scripts/provision-test-deps.sh");
                assert!(out.status.success(), "htpasswd failed: {out:?}");
                std::fs::write(&htpasswd, &out.stdout).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: boilerhouse-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
            None => String::new(),
        };
        let config_path = dir.path().join("config.yml");
        // A free port can be taken by another test's server between the look and the
        // registry's bind: the registry then exits, and a new port is tried.
        for _ in 0..5 {
            let port = free_port();
            let config = format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: 127.0.0.1:{port}\n{auth_section}",
                dir.path().join("data").display()
            );
            std::fs::write(&config_path, config).expect("registry config");
            let log = std::fs::File::create(dir.path().join("registry.log")).expect("registry log");
            let child = Command::new(&bin)
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("registry log"))
                .stderr(log)
                .spawn()
                .expect("start docker-registry");
            let mut registry = Self {
                dir,
                port,
                auth: auth.clone(),
                child: Some(child),
                tags: Mutex::new(Vec::new()),
            };
            if registry.wait_until_answering() {
                return registry;
            }
            // It exited (its port was taken): keep its directory for the next try.
            registry.child = None;
            dir = std::mem::replace(&mut registry.dir, tempfile::tempdir().expect("temp dir"));
        }
        panic!("docker-registry could not bind a free port in 5 tries");
    }

    /// `127.0.0.1:<port>`, the registry part of an image reference.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// How many requests for the manifest of `repository:tag` the registry's access
    /// log shows (GET or HEAD: an engine that has the layers already only HEADs it).
    /// Each pull asks for it once.
    pub fn manifest_requests(&self, repository: &str, tag: &str) -> usize {
        let log = self.log();
        ["GET", "HEAD"]
            .iter()
            .map(|method| {
                log.matches(&format!("\"{method} /v2/{repository}/manifests/{tag} "))
                    .count()
            })
            .sum()
    }

    /// Pushes the test image as `<host>/<repository>:<tag>`, then removes that local
    /// tag, so only a pull can bring it back. Returns the reference.
    pub fn push_test_image(&self, repository: &str, tag: &str) -> String {
        let reference = format!("{}/{repository}:{tag}", self.host());
        self.remember(&reference);
        let client = tempfile::tempdir().expect("docker client config dir");
        let config = client.path().display().to_string();
        let (ok, out) = docker(&["tag", &test_image(), &reference]);
        assert!(ok, "docker tag: {out}");
        if let Some((user, password)) = &self.auth {
            let mut login = Command::new("docker")
                .args(["--config", &config, "login", "-u", user, "--password-stdin"])
                .arg(self.host())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("docker login");
            {
                use std::io::Write;
                let mut stdin = login.stdin.take().expect("login stdin");
                stdin
                    .write_all(password.as_bytes())
                    .expect("login password");
            }
            let out = login.wait_with_output().expect("docker login");
            assert!(out.status.success(), "docker login: {out:?}");
        }
        let (ok, out) = docker(&["--config", &config, "push", &reference]);
        assert!(ok, "docker push {reference}: {out}");
        self.untag(&reference);
        reference
    }

    /// A Docker client configuration directory (for `DOCKER_CONFIG`) whose
    /// `config.json` holds `auths` for this registry: `auth` (base64) when `encoded`,
    /// else `username` / `password`.
    pub fn client_config(&self, user: &str, password: &str, encoded: bool) -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("DOCKER_CONFIG dir");
        let entry = if encoded {
            let auth =
                base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
            serde_json::json!({ "auth": auth })
        } else {
            serde_json::json!({ "username": user, "password": password })
        };
        let config = serde_json::json!({ "auths": { self.host(): entry } });
        std::fs::write(dir.path().join("config.json"), config.to_string())
            .expect("write config.json");
        dir
    }

    /// `<host>/<repository>:<tag>`, whether pushed or not; a local tag of it that a
    /// pull creates is removed on drop.
    pub fn reference(&self, repository: &str, tag: &str) -> String {
        let reference = format!("{}/{repository}:{tag}", self.host());
        self.remember(&reference);
        reference
    }

    /// Removes the local tag `reference` (never the image itself: the test image
    /// keeps its own tag). Containers of the image keep running.
    pub fn untag(&self, reference: &str) {
        let (ok, out) = docker(&["rmi", "-f", reference]);
        assert!(
            ok || out.contains("No such image"),
            "docker rmi {reference}: {out}"
        );
    }

    /// Is `reference` present in the local engine?
    pub fn present_locally(reference: &str) -> bool {
        docker(&["image", "inspect", reference]).0
    }

    fn remember(&self, reference: &str) {
        self.tags
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(reference.to_owned());
    }

    /// True once the registry itself answers HTTP on its port (a `/v2/` reply
    /// carries its API version header, so another server on the port does not
    /// count); false when it exited first.
    fn wait_until_answering(&mut self) -> bool {
        let started = Instant::now();
        loop {
            if let Some(Ok(Some(_))) = self.child.as_mut().map(Child::try_wait) {
                return false;
            }
            if self.answers_v2() {
                return true;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "docker-registry did not answer on {} within 20 s: {}",
                self.host(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn answers_v2(&self) -> bool {
        use std::io::{Read, Write};
        let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!("GET /v2/ HTTP/1.0\r\nHost: {}\r\n\r\n", self.host());
        if stream.write_all(request.as_bytes()).is_err() {
            return false;
        }
        let mut reply = String::new();
        let _ = stream.read_to_string(&mut reply);
        reply
            .to_ascii_lowercase()
            .contains("docker-distribution-api-version")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let tags = std::mem::take(&mut *self.tags.lock().unwrap_or_else(|p| p.into_inner()));
        for tag in tags {
            let _ = docker(&["rmi", "-f", &tag]);
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
