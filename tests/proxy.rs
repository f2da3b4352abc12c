//! The daemon behind docker-socket-proxy's allow-list (issue: deployment).
//!
//! deploy/docker-compose.yml gives the daemon Docker only through
//! tecnativa/docker-socket-proxy with `CONTAINERS=1 IMAGES=1 POST=1`. No image can
//! be pulled here, so the proxy is rebuilt from what it is: haproxy (Debian's,
//! provisioned by scripts/provision-proxy.sh) with the rules of the proxy's
//! haproxy.cfg, driven by the same environment variables, which this test reads
//! from deploy/docker-compose.yml. Every request is logged; a test fails when the
//! proxy denied any request of the daemon, so a new Docker call outside the
//! allow-list breaks the build instead of a production deployment.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use boilerhouse_testkit::*;
use serde_json::{json, Value};

/// The daemon binary cargo built for this test crate.
const BIN: &str = env!("CARGO_BIN_EXE_boilerhouse");

/// The proxy's API sections and the variable that opens each one, as in its
/// haproxy.cfg: `^(/v<api version>)?/<section>` is allowed when the variable is true.
const SECTIONS: &[(&str, &str)] = &[
    ("auth", "AUTH"),
    ("build", "BUILD"),
    ("commit", "COMMIT"),
    ("configs", "CONFIGS"),
    ("containers", "CONTAINERS"),
    ("distribution", "DISTRIBUTION"),
    ("events", "EVENTS"),
    ("exec", "EXEC"),
    ("grpc", "GRPC"),
    ("images", "IMAGES"),
    ("info", "INFO"),
    ("networks", "NETWORKS"),
    ("nodes", "NODES"),
    ("_ping", "PING"),
    ("plugins", "PLUGINS"),
    ("secrets", "SECRETS"),
    ("services", "SERVICES"),
    ("session", "SESSION"),
    ("swarm", "SWARM"),
    ("system", "SYSTEM"),
    ("tasks", "TASKS"),
    ("version", "VERSION"),
    ("volumes", "VOLUMES"),
];

/// Container sub-resources that newer proxy templates refuse even with
/// `CONTAINERS=1`, unless their own `ALLOW_*` flag is set. Enforced here too, so
/// the daemon stays compatible with them (it has no business with any of these).
const GATED_CONTAINER_ACTIONS: &[(&str, &str)] = &[
    ("exec", "ALLOW_EXEC"),
    ("kill", "ALLOW_KILL"),
    ("attach", "ALLOW_ATTACH"),
    ("archive", "ALLOW_ARCHIVE"),
    ("export", "ALLOW_EXPORT"),
    ("logs", "ALLOW_LOGS"),
];

/// The proxy image's defaults (its Dockerfile's ENV): only these are on.
const IMAGE_DEFAULTS_ON: &[&str] = &["EVENTS", "PING", "VERSION"];

const COMPOSE_FILE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/docker-compose.yml");

/// The `docker-proxy` environment of deploy/docker-compose.yml, values as strings.
fn compose_proxy_env() -> BTreeMap<String, String> {
    let text = read(Path::new(COMPOSE_FILE));
    let doc: serde_yaml::Value = serde_yaml::from_str(&text).expect("deploy/docker-compose.yml");
    let env = &doc["services"]["docker-proxy"]["environment"];
    let scalar = |v: &serde_yaml::Value| match v {
        serde_yaml::Value::String(s) => s.clone(),
        serde_yaml::Value::Number(n) => n.to_string(),
        serde_yaml::Value::Bool(b) => b.to_string(),
        other => panic!("unexpected value {other:?} in docker-proxy's environment"),
    };
    match env {
        serde_yaml::Value::Mapping(m) => m.iter().map(|(k, v)| (scalar(k), scalar(v))).collect(),
        serde_yaml::Value::Sequence(list) => list
            .iter()
            .map(|item| {
                let s = scalar(item);
                let (k, v) = s.split_once('=').unwrap_or((&s, ""));
                (k.to_owned(), v.to_owned())
            })
            .collect(),
        other => panic!("services.docker-proxy.environment missing in {COMPOSE_FILE}: {other:?}"),
    }
}

/// haproxy from PATH or Debian's /usr/sbin (not on every user's PATH).
fn haproxy_bin() -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join("haproxy"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "haproxy is missing: these tests need it to stand in for docker-socket-proxy; \
                 run scripts/provision-proxy.sh (`make test` provisions it)"
            )
        })
}

/// Where the engine listens, as haproxy's `server` address.
fn engine_address() -> String {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => h["unix://".len()..].to_owned(),
        Ok(h) if h.starts_with("tcp://") => h["tcp://".len()..].to_owned(),
        Ok(h) if !h.is_empty() => panic!("unsupported DOCKER_HOST {h}"),
        _ => "/var/run/docker.sock".to_owned(),
    }
}

/// One request as the proxy logged it.
#[derive(Debug, Clone)]
struct Logged {
    status: u16,
    /// haproxy's termination state: `PR` = refused by a rule.
    termination: String,
    method: String,
    uri: String,
}

impl Logged {
    fn denied(&self) -> bool {
        self.status == 403 || self.termination.starts_with('P')
    }

    /// `DELETE /containers/{id}`: API version, ids and query left out.
    fn endpoint(&self) -> String {
        let path = self.uri.split('?').next().unwrap_or_default();
        let path = regex::Regex::new(r"^/v[\d.]+")
            .unwrap()
            .replace(path, "")
            .into_owned();
        let mut parts: Vec<&str> = path.split('/').collect();
        // /containers/<id>/..., /images/<name...>/json
        if parts.len() > 2 && parts[1] == "containers" && !matches!(parts[2], "json" | "create") {
            parts[2] = "{id}";
        }
        if parts.len() > 2 && parts[1] == "images" && parts[2] != "create" {
            return format!(
                "{} /images/{{name}}/{}",
                self.method,
                parts[parts.len() - 1]
            );
        }
        format!("{} {}", self.method, parts.join("/"))
    }
}

/// haproxy configured like docker-socket-proxy, on a free loopback port.
struct Proxy {
    child: Option<Child>,
    port: u16,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Proxy {
    /// The proxy with deploy/docker-compose.yml's environment.
    fn from_compose() -> Proxy {
        let env = compose_proxy_env();
        let expected: BTreeMap<String, String> =
            [("CONTAINERS", "1"), ("IMAGES", "1"), ("POST", "1")]
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect();
        assert_eq!(
            env, expected,
            "deploy/docker-compose.yml must open exactly CONTAINERS, IMAGES and POST (SPEC §8)"
        );
        Proxy::start(&env)
    }

    fn start(overrides: &BTreeMap<String, String>) -> Proxy {
        let haproxy = haproxy_bin();
        let dir = tempfile::Builder::new()
            .prefix("bh-proxy-")
            .tempdir()
            .expect("tempdir");
        let port = free_port();
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, config(port, &engine_address())).unwrap();
        let log = dir.path().join("haproxy.log");
        let out = std::fs::File::create(&log).unwrap();

        // The environment decides, as in the proxy image: its defaults, then ours.
        let mut env: BTreeMap<String, String> = SECTIONS
            .iter()
            .map(|(_, var)| *var)
            .chain(GATED_CONTAINER_ACTIONS.iter().map(|(_, var)| *var))
            .chain(["POST", "ALLOW_START", "ALLOW_STOP", "ALLOW_RESTARTS"])
            .map(|var| {
                let on = IMAGE_DEFAULTS_ON.contains(&var);
                (var.to_owned(), if on { "1" } else { "0" }.to_owned())
            })
            .collect();
        env.extend(overrides.clone());

        let child = Command::new(&haproxy)
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .env_clear()
            .envs(&env)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", haproxy.display()));
        let mut proxy = Proxy {
            child: Some(child),
            port,
            log,
            _dir: dir,
        };
        proxy.wait_listening();
        proxy
    }

    fn wait_listening(&mut self) {
        let started = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("haproxy exited with {status}:\n{}", self.log_text());
            }
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "haproxy did not listen on {} in 10 s:\n{}",
                self.port,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn docker_host(&self) -> String {
        format!("tcp://127.0.0.1:{}", self.port)
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Requests logged so far: haproxy logs one when it ends, so a stream still
    /// open (the daemon's /events) shows up only once it is closed.
    fn requests(&self) -> Vec<Logged> {
        self.log_text()
            .lines()
            .filter_map(|line| {
                let rest = line.strip_prefix("req ")?;
                let mut f = rest.splitn(4, ' ');
                Some(Logged {
                    status: f.next()?.parse().ok()?,
                    termination: f.next()?.to_owned(),
                    method: f.next()?.to_owned(),
                    uri: f.next()?.to_owned(),
                })
            })
            .collect()
    }

    /// Waits until every request answered so far is in the log: sends a marker
    /// request and waits for its line. haproxy writes a request's line when its
    /// response starts (`logasap`), so the lines of requests answered before the
    /// marker was sent come before it.
    fn flush_log(&self) {
        use std::io::{Read, Write};
        static MARKS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let mark = format!(
            "/_ping?flush={}",
            MARKS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut conn = std::net::TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(conn, "GET {mark} HTTP/1.0\r\nHost: docker\r\n\r\n").unwrap();
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).unwrap();
        let started = Instant::now();
        while !self.log_text().contains(&mark) {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "haproxy did not log {mark} in 10 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Fails with every request the proxy refused, if there is one.
    fn assert_nothing_denied(&self) {
        self.flush_log();
        let requests = self.requests();
        // The one optional read: a failed container's output, quoted in `lastError`
        // when the proxy allows it; refused, the daemon says so and stops asking.
        let optional = |r: &&Logged| r.uri.contains("/logs?");
        let logs: Vec<&Logged> = requests
            .iter()
            .filter(|r| r.denied())
            .filter(optional)
            .collect();
        assert!(
            logs.len() <= 1,
            "the daemon asked for refused logs {} times",
            logs.len()
        );
        let denied: Vec<String> = requests
            .iter()
            .filter(|r| r.denied() && !optional(r))
            .map(|r| format!("{} {} -> {} {}", r.method, r.uri, r.status, r.termination))
            .collect();
        assert!(
            denied.is_empty(),
            "the daemon needs Docker endpoints outside the proxy's allow-list \
             (CONTAINERS=1 IMAGES=1 POST=1, plus the default EVENTS, PING, VERSION):\n{}",
            denied.join("\n")
        );
        let mut used: Vec<String> = requests.iter().map(Logged::endpoint).collect();
        used.sort();
        used.dedup();
        eprintln!(
            "{} requests through the proxy, none denied; endpoints used:\n  {}",
            requests.len(),
            used.join("\n  ")
        );
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "--- proxy log (last 40) ---\n{}",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

/// docker-socket-proxy's haproxy.cfg rules, with the local listener and engine,
/// and a log line per request (`req <status> <termination> <method> <uri>`).
fn config(port: u16, engine: &str) -> String {
    const API: &str = r"^(/v[\d\.]+)?";
    let mut rules = String::new();
    // GET and HEAD (haproxy's METH_GET) on open sections; any other method needs POST.
    rules.push_str("    http-request deny unless METH_GET || { env(POST) -m bool }\n");
    for (action, var) in GATED_CONTAINER_ACTIONS {
        rules.push_str(&format!(
            "    http-request deny if {{ path,url_dec -m reg -i {API}/containers/[a-zA-Z0-9_.-]+/{action} }} !{{ env({var}) -m bool }}\n"
        ));
    }
    for (action, var) in [
        ("((stop)|(restart)|(kill))", "ALLOW_RESTARTS"),
        ("start", "ALLOW_START"),
        ("stop", "ALLOW_STOP"),
    ] {
        rules.push_str(&format!(
            "    http-request allow if {{ path,url_dec -m reg -i {API}/containers/[a-zA-Z0-9_.-]+/{action} }} {{ env({var}) -m bool }}\n"
        ));
    }
    for (section, var) in SECTIONS {
        rules.push_str(&format!(
            "    http-request allow if {{ path,url_dec -m reg -i {API}/{section} }} {{ env({var}) -m bool }}\n"
        ));
    }
    rules.push_str("    http-request deny\n");
    format!(
        r#"global
    log stdout format raw local0 info
    maxconn 1000

defaults
    mode http
    log global
    log-format "req %ST %ts %HM %HU"
    option dontlognull
    # Log each request when its response starts, so the endless /events stream is
    # logged while it is open rather than whenever its connection ends.
    option logasap
    option http-server-close
    timeout http-request 10s
    timeout queue 1m
    timeout connect 10s
    timeout client 10m
    timeout server 10m
    timeout http-keep-alive 10s

backend dockerbackend
    server dockersocket {engine}

backend docker-events
    server dockersocket {engine}
    timeout server 0

frontend dockerfrontend
    bind 127.0.0.1:{port}
{rules}    default_backend dockerbackend
    use_backend docker-events if {{ path,url_dec -m reg -i {API}/events }}
"#
    )
}

fn cid(v: &Value) -> String {
    v["containerId"].as_str().unwrap().to_owned()
}

async fn wait_removed(name: &str) {
    eventually(
        Duration::from_secs(30),
        &format!("removal of {name}"),
        || (!docker(&["inspect", name]).0).then_some(()),
    )
    .await;
}

/// The control: the stand-in proxy refuses what docker-socket-proxy refuses with
/// this environment, and the log records it, so "nothing denied" means something.
#[tokio::test]
async fn the_proxy_refuses_what_the_allow_list_leaves_out() {
    let proxy = Proxy::from_compose();
    let http = reqwest::Client::new();
    let status = |method: &'static str, path: &'static str| {
        let req = http.request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            proxy.url(path),
        );
        async move {
            req.send()
                .await
                .expect("proxy unreachable")
                .status()
                .as_u16()
        }
    };
    for (method, path) in [
        ("GET", "/_ping"),
        ("HEAD", "/_ping"),
        ("GET", "/version"),
        ("GET", "/v1.41/containers/json"),
        ("GET", "/v1.41/images/json"),
    ] {
        assert_eq!(status(method, path).await, 200, "{method} {path}");
    }
    for (method, path) in [
        ("GET", "/v1.41/info"),
        ("GET", "/v1.41/networks"),
        ("GET", "/v1.41/volumes"),
        ("POST", "/v1.41/containers/nope/exec"),
        ("POST", "/v1.41/containers/nope/kill"),
        ("GET", "/v1.41/containers/nope/logs"),
        ("POST", "/v1.41/networks/create"),
    ] {
        assert_eq!(status(method, path).await, 403, "{method} {path}");
    }
    proxy.flush_log();
    let denied = proxy.requests().iter().filter(|r| r.denied()).count();
    assert_eq!(
        denied,
        7,
        "the log must record every denial:\n{}",
        proxy.log_text()
    );

    // And without POST=1, writes are refused even on an open section.
    let read_only = Proxy::start(
        &[("CONTAINERS", "1")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
    );
    let r = http
        .post(read_only.url("/v1.41/containers/create"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
}

/// Warm-up, claim, release (destroy and restart recycling), a dead idle container
/// replaced through the event stream, forced removal, and recovery after kill -9:
/// all through the proxy, none of it denied.
#[tokio::test]
async fn the_daemon_needs_nothing_beyond_the_allow_list() {
    let proxy = Proxy::from_compose();
    let mut d = Daemon::builder(BIN)
        .workload(
            "web.yaml",
            &workload("web", "pool:\n  min_size: 2\n  max_size: 4\n"),
        )
        .workload(
            "api.yaml",
            &workload(
                "api",
                "pool:\n  min_size: 1\n  max_size: 2\n  recycle: restart\n",
            ),
        )
        .env("DOCKER_HOST", &proxy.docker_host())
        .start()
        .await;

    // Warm-up: list, create, start, inspect.
    d.wait_idle("web", 2).await;
    d.wait_idle("api", 1).await;
    let (s, ready) = d.get("/ready").await;
    assert_eq!(s, 200, "{ready}");

    // Claims.
    let alice = d
        .claim(
            "alice",
            json!({"poolId": "web", "secrets": {"API_KEY": "k"}}),
        )
        .await;
    let alice_name = d.docker_name(&cid(&alice));
    let (ok, out) = docker_exec(&alice_name, "1000", "echo precious > /state/data");
    assert!(ok, "{out}");
    let bob = d.claim("bob", json!({"poolId": "web"})).await;
    let carol = d.claim("carol", json!({"poolId": "api"})).await;

    // Release with destroy: pause, remove; the pool refills.
    d.release("bob", json!({})).await;
    wait_removed(&d.docker_name(&cid(&bob))).await;
    // Release with restart: the same container comes back idle.
    d.release("carol", json!({})).await;
    let api = d.wait_idle("api", 1).await;
    assert_eq!(api["claimedCount"], 0, "{api}");
    assert!(docker(&["inspect", &d.docker_name(&cid(&carol))]).0);

    // A dead idle container is noticed through /events and replaced.
    d.wait_idle("web", 2).await;
    let victim = idle_container(&d, "web").await;
    let (ok, out) = docker(&["kill", &d.docker_name(&victim)]);
    assert!(ok, "{out}");
    d.wait_pool("web", Duration::from_secs(30), |v| {
        v["idleCount"].as_u64() >= Some(2)
    })
    .await;
    eventually(
        Duration::from_secs(30),
        "the killed container replaced",
        || (!docker(&["inspect", &d.docker_name(&victim)]).0).then_some(()),
    )
    .await;

    // DELETE /containers/:id through the API: an idle one is removed and replaced.
    let spare = idle_container(&d, "web").await;
    let (s, v) = d
        .request("DELETE", &format!("/containers/{spare}"), None)
        .await;
    assert_eq!(s, 200, "{v}");
    wait_removed(&d.docker_name(&spare)).await;

    // kill -9 and start again: recovery lists and inspects through the proxy,
    // and the tenant keeps its container.
    d.wait_idle("web", 2).await;
    d.kill9();
    d.start_again().await;
    let (_, st) = d.get("/tenants/alice/status").await;
    assert_eq!(st["containerId"], cid(&alice).as_str(), "{st}");
    assert_eq!(st["status"], "warm", "{st}");
    let again = d.claim("alice", json!({"poolId": "web"})).await;
    assert_eq!(again["reused"], true);
    assert_eq!(cid(&again), cid(&alice));
    assert_eq!(
        read(&d.state_dir(&cid(&alice)).join("data")).trim(),
        "precious"
    );
    d.wait_idle("web", 2).await;
    d.wait_idle("api", 1).await;
    d.release("alice", json!({})).await;
    wait_removed(&alice_name).await;

    proxy.assert_nothing_denied();
    let used: Vec<String> = proxy.requests().iter().map(Logged::endpoint).collect();
    for endpoint in [
        "GET /version",
        "POST /containers/create",
        "POST /containers/{id}/start",
        "POST /containers/{id}/pause",
        "POST /containers/{id}/restart",
        "DELETE /containers/{id}",
        "GET /containers/json",
        "GET /containers/{id}/json",
        "GET /events",
    ] {
        assert!(
            used.iter().any(|u| u == endpoint),
            "expected the daemon to use {endpoint} through the proxy; it used {used:?}"
        );
    }
}

/// A missing image is pulled through the proxy (IMAGES=1, POST=1): the pull
/// fails here only because no registry is reachable, never because the proxy
/// refused it.
#[tokio::test]
async fn image_pulls_go_through_the_proxy() {
    let proxy = Proxy::from_compose();
    let image = "boilerhouse-test/does-not-exist:never";
    let d = Daemon::builder(BIN)
        .workload(
            "ghost.yaml",
            &format!("id: ghost\nimage: {image}\npool:\n  min_size: 1\n  max_size: 2\n"),
        )
        .env("DOCKER_HOST", &proxy.docker_host())
        .start()
        .await;
    let pool = d
        .wait_pool("ghost", Duration::from_secs(60), |v| v["status"] == "error")
        .await;
    let err = pool["lastError"]["message"].as_str().unwrap_or_default();
    assert!(err.contains(image), "the error must name the image: {pool}");
    let lower = err.to_lowercase();
    assert!(
        !lower.contains("403") && !lower.contains("forbidden"),
        "the proxy refused the pull: {err}"
    );
    let pulls: Vec<Logged> = proxy
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "POST"
                && r.uri.contains("/images/create")
                && r.uri.contains("does-not-exist")
        })
        .collect();
    assert!(
        !pulls.is_empty(),
        "no pull request reached the proxy:\n{}",
        proxy.log_text()
    );
    assert!(
        pulls.iter().all(|r| !r.denied()),
        "pull denied by the proxy: {pulls:?}"
    );
    proxy.assert_nothing_denied();
}

/// The id of one idle container of `pool`.
async fn idle_container(d: &Daemon, pool: &str) -> String {
    let (_, list) = d.get(&format!("/containers?poolId={pool}")).await;
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["status"] == "idle")
        .and_then(|c| c["id"].as_str())
        .expect("an idle container")
        .to_owned()
}
