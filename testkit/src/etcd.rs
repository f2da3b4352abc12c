//! A 3-member etcd cluster (Debian's `etcd-server`) on free loopback ports, each
//! member with its own data directory, for the cluster-mode tests and benchmark.
//! [`EtcdCluster::start`] returns once every member answers `/health`; members can be
//! killed (`kill -9`) and started again with their data, to lose one member or the
//! quorum; dropping the fixture kills every member and removes the directories.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{KitError, KitResult};
use crate::net::free_port;

/// How long a member may take to answer `/health` (well under a second here).
const HEALTH_TIMEOUT: Duration = Duration::from_secs(30);

struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    log: PathBuf,
}

pub struct EtcdCluster {
    members: Vec<Member>,
    root: tempfile::TempDir,
    http: reqwest::Client,
}

/// The etcd binary: `BOILERHOUSE_ETCD_BIN`, else `etcd` on PATH.
fn etcd_bin() -> PathBuf {
    std::env::var_os("BOILERHOUSE_ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("etcd"))
}

impl EtcdCluster {
    /// Starts three members and waits until each is healthy; panics (with the
    /// members' logs) when it cannot. Fails, never skips, without etcd installed.
    pub async fn start() -> EtcdCluster {
        // The ports are picked free, then bound by etcd a moment later: another test
        // (or daemon) may take one in between. Such a start is tried again on new ports.
        let mut last = None;
        for _ in 0..3 {
            match Self::try_start(3).await {
                Ok(c) => return c,
                Err(e) if e.to_string().contains("address already in use") => last = Some(e),
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{}", last.expect("three attempts"))
    }

    /// [`EtcdCluster::start`] with `n` members, for callers that report errors.
    pub async fn try_start(n: usize) -> KitResult<EtcdCluster> {
        let root = tempfile::Builder::new()
            .prefix("bh-etcd-")
            .tempdir()
            .map_err(KitError::io("temporary directory for etcd"))?;
        let members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_port: free_port(),
                peer_port: free_port(),
                child: None,
                log: root.path().join(format!("m{i}.log")),
            })
            .collect();
        let mut cluster = EtcdCluster {
            members,
            root,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(2))
                .build()?,
        };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        for i in 0..n {
            cluster.wait_healthy(i).await?;
        }
        Ok(cluster)
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.root.path().join(&self.members[i].name)
    }

    fn spawn(&mut self, i: usize) -> KitResult<()> {
        let initial = self.initial_cluster();
        let data = self.data_dir(i);
        // A member restarted with its data rejoins; the flags naming the initial
        // cluster are ignored then.
        let state = if data.exists() { "existing" } else { "new" };
        let m = &mut self.members[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&m.log)
            .map_err(KitError::io(format!("opening {}", m.log.display())))?;
        let log_err = log
            .try_clone()
            .map_err(KitError::io(format!("opening {}", m.log.display())))?;
        let client = format!("http://127.0.0.1:{}", m.client_port);
        let peer = format!("http://127.0.0.1:{}", m.peer_port);
        let bin = etcd_bin();
        let child = Command::new(&bin)
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&data)
            .args(["--listen-client-urls", &client])
            .args(["--advertise-client-urls", &client])
            .args(["--listen-peer-urls", &peer])
            .args(["--initial-advertise-peer-urls", &peer])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", "boilerhouse-test"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| KitError::Spawn { bin, source })?;
        m.child = Some(child);
        Ok(())
    }

    async fn wait_healthy(&mut self, i: usize) -> KitResult<()> {
        let started = Instant::now();
        let url = format!("{}/health", self.endpoint(i));
        loop {
            if let Some(Ok(Some(status))) = self.members[i].child.as_mut().map(Child::try_wait) {
                self.members[i].child = None;
                return Err(KitError::Io {
                    what: format!(
                        "etcd member {} exited with {status}:\n{}",
                        self.members[i].name,
                        self.log_tail(i)
                    ),
                    source: std::io::Error::other("exited during start-up"),
                });
            }
            if let Ok(r) = self.http.get(&url).send().await {
                if r.text().await.unwrap_or_default().contains("\"true\"") {
                    return Ok(());
                }
            }
            if started.elapsed() > HEALTH_TIMEOUT {
                return Err(KitError::Io {
                    what: format!(
                        "etcd member {} did not answer {url} healthy within {HEALTH_TIMEOUT:?}:\n{}",
                        self.members[i].name,
                        self.log_tail(i)
                    ),
                    source: std::io::Error::from(std::io::ErrorKind::TimedOut),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The client URL of member `i`.
    pub fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client_port)
    }

    /// Every member's client URL, comma-separated (`BOILERHOUSE_ETCD_ENDPOINTS`).
    pub fn endpoints(&self) -> String {
        (0..self.members.len())
            .map(|i| self.endpoint(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// SIGKILL to member `i` (its data stays for [`EtcdCluster::restart_member`]).
    pub fn kill_member(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            // An error means it has exited already; `wait` reaps it either way.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the killed member `i` again with its data; returns once it is healthy
    /// (which needs a quorum with it).
    pub async fn restart_member(&mut self, i: usize) {
        if let Err(e) = self.spawn(i) {
            panic!("{e}");
        }
        if let Err(e) = self.wait_healthy(i).await {
            panic!("{e}");
        }
    }

    /// Kills every member.
    pub fn stop(&mut self) {
        for i in 0..self.members.len() {
            self.kill_member(i);
        }
    }

    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The last 30 lines of member `i`'s log.
    pub fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(&self.members[i].log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A TCP proxy in front of one etcd member that a test can cut, to take one node
/// off etcd while the others keep it: while cut, it refuses new connections and
/// drops open ones. It runs on its own thread and runtime, so it serves while the
/// test blocks (on `docker exec`, say).
pub struct EtcdLink {
    port: u16,
    cut: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
    // Dropping it ends the proxy's thread.
    _stop: tokio::sync::oneshot::Sender<()>,
}

impl EtcdLink {
    /// A proxy on a free loopback port to `upstream` (`http://127.0.0.1:<port>`).
    pub fn to(upstream: &str) -> EtcdLink {
        let target = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_owned();
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap_or_else(|e| panic!("binding a proxy port for etcd {upstream}: {e}"));
        let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
        listener
            .set_nonblocking(true)
            .unwrap_or_else(|e| panic!("proxy to etcd {upstream}: {e}"));
        let (tx, _) = tokio::sync::watch::channel(false);
        let cut = std::sync::Arc::new(tx);
        let state = cut.clone();
        let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                loop {
                    let accepted = tokio::select! {
                        a = listener.accept() => a,
                        _ = &mut stop => return,
                    };
                    let Ok((mut client, _)) = accepted else {
                        continue;
                    };
                    if *state.borrow() {
                        drop(client);
                        continue;
                    }
                    let mut cut = state.subscribe();
                    let target = target.clone();
                    tokio::spawn(async move {
                        let Ok(mut server) = tokio::net::TcpStream::connect(&target).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = cut.wait_for(|c| *c) => {}
                        }
                    });
                }
            });
        });
        EtcdLink {
            port,
            cut,
            _stop: stop_tx,
        }
    }

    /// The URL a node uses instead of the member's.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Cuts (true) or heals (false) the link.
    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

impl EtcdCluster {
    /// One [`EtcdLink`] per member, and the endpoint list through them.
    pub fn links(&self) -> (Vec<EtcdLink>, String) {
        let links: Vec<EtcdLink> = (0..self.members.len())
            .map(|i| EtcdLink::to(&self.endpoint(i)))
            .collect();
        let endpoints = links
            .iter()
            .map(EtcdLink::url)
            .collect::<Vec<_>>()
            .join(",");
        (links, endpoints)
    }
}
