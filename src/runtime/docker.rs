//! [`DockerRuntime`]: the [`Runtime`] over the Docker Engine API, through bollard.
//!
//! Honours `DOCKER_HOST` (`unix://…`, `tcp://…`) and negotiates the API version,
//! so it works with old engines (API 1.41) and behind docker-socket-proxy: it
//! only uses `/_ping`, `/version`, `/events`, `/containers/*` and `/images/*`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerStateStatusEnum, HealthConfig, HealthStatusEnum, HostConfig,
    PortBinding, RestartPolicy, RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    InspectContainerOptions, ListContainersOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, RestartContainerOptionsBuilder, StartContainerOptions,
};
use bollard::Docker;
use futures_util::stream::{BoxStream, StreamExt};

use super::registry_auth;
use super::{
    labels, ContainerReport, ContainerSpec, EngineHealth, EngineState, EventKind, ManagedContainer,
    ProbeResult, ProbeTimings, Readiness, Runtime, RuntimeError, RuntimeEvent,
};

const LOGS_REFUSED: &str =
    "the Docker API refused /containers/{id}/logs (behind docker-socket-proxy, \
     ALLOW_LOGS=1 lets the daemon quote a failed container's output)";

/// The first Docker API version that honours `healthcheck.start_interval`.
const START_INTERVAL_API: (usize, usize) = (1, 44);

#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    host: String,
    /// One pull at a time per image reference (see [`DockerRuntime::pull_once`]).
    pulls: Arc<StdMutex<HashMap<String, Arc<PullSlot>>>>,
    /// The engine (or a socket proxy in front of it) refused `/containers/{id}/logs`
    /// once: a failed container's output is then not asked for again.
    logs_refused: Arc<AtomicBool>,
}

/// The lock of one image's pulls, holding the outcome of the last one and when it
/// ended, so callers that waited for it share its outcome instead of pulling again.
type PullSlot = tokio::sync::Mutex<Option<(Instant, Result<(), RuntimeError>)>>;

impl DockerRuntime {
    /// Connects as `DOCKER_HOST` says (default: the local socket) and negotiates
    /// the API version with the engine.
    pub async fn connect() -> Result<Self, RuntimeError> {
        let host = std::env::var("DOCKER_HOST")
            .unwrap_or_else(|_| "unix:///var/run/docker.sock".to_owned());
        let unreachable = |e: BollardError| RuntimeError::Unreachable {
            host: host.clone(),
            message: e.to_string(),
        };
        let docker = Docker::connect_with_defaults().map_err(unreachable)?;
        let docker = docker.negotiate_version().await.map_err(unreachable)?;
        let runtime = Self {
            docker,
            host: host.clone(),
            pulls: Arc::default(),
            logs_refused: Arc::new(AtomicBool::new(false)),
        };
        runtime.ping().await?;
        Ok(runtime)
    }

    pub fn client(&self) -> &Docker {
        &self.docker
    }

    async fn inspect(&self, docker_id: &str) -> Result<Inspection, RuntimeError> {
        let info = counted(
            "inspect",
            self.docker
                .inspect_container(docker_id, None::<InspectContainerOptions>)
                .await,
        )
        .map_err(api)?;
        let state = info.state.unwrap_or_default();
        let health = match state.health.as_ref().and_then(|h| h.status) {
            None | Some(HealthStatusEnum::EMPTY) | Some(HealthStatusEnum::NONE) => {
                EngineHealth::None
            }
            Some(HealthStatusEnum::STARTING) => EngineHealth::Starting,
            Some(HealthStatusEnum::HEALTHY) => EngineHealth::Healthy,
            Some(HealthStatusEnum::UNHEALTHY) => EngineHealth::Unhealthy,
        };
        let last_probe = state
            .health
            .as_ref()
            .and_then(|h| h.log.as_ref())
            .and_then(|log| log.last())
            .map(|r| {
                let output = r.output.clone().unwrap_or_default().trim().to_owned();
                ProbeResult {
                    exit_code: r.exit_code.unwrap_or(-1),
                    timed_out: output.starts_with("Health check exceeded timeout"),
                    output,
                }
            });
        let timings = info
            .config
            .and_then(|c| c.healthcheck)
            .filter(|h| {
                h.test
                    .as_ref()
                    .is_some_and(|t| !t.is_empty() && t[0] != "NONE")
            })
            .map(|h| {
                let d = |n: Option<i64>| n.map(|n| Duration::from_nanos(n.max(0) as u64));
                ProbeTimings::with_defaults(
                    d(h.interval),
                    d(h.timeout),
                    h.retries.map(|r| r.clamp(0, u32::MAX as i64) as u32),
                    d(h.start_period),
                    d(h.start_interval),
                )
            });
        let detail = format!(
            "status {:?}, exit code {}{}{}",
            state.status.map(|s| s.to_string()).unwrap_or_default(),
            state.exit_code.unwrap_or_default(),
            if state.oom_killed == Some(true) {
                ", killed by the OOM killer"
            } else {
                ""
            },
            state
                .error
                .filter(|e| !e.is_empty())
                .map(|e| format!(", error: {e}"))
                .unwrap_or_default(),
        );
        Ok(Inspection {
            status: state.status,
            exit_code: state.exit_code,
            oom_killed: state.oom_killed == Some(true),
            health,
            last_probe,
            timings,
            detail,
        })
    }

    /// The last `lines` lines the container wrote to stdout and stderr.
    async fn log_tail(&self, docker_id: &str, lines: usize) -> Result<String, RuntimeError> {
        let tail = lines.to_string();
        let options = LogsOptionsBuilder::default()
            .stdout(true)
            .stderr(true)
            .tail(&tail)
            .build();
        let mut stream = self.docker.logs(docker_id, Some(options));
        let mut out = String::new();
        while let Some(item) = stream.next().await {
            let chunk = match item {
                Ok(chunk) => chunk,
                Err(e) => {
                    if is_status(&e, &[403]) {
                        self.logs_refused.store(true, Ordering::Release);
                    }
                    return counted("logs", Err(e)).map_err(api);
                }
            };
            out.push_str(&String::from_utf8_lossy(&chunk.into_bytes()));
        }
        Ok(out.trim_end().to_owned())
    }
}

/// One inspection of a container, as far as the pools need it.
struct Inspection {
    status: Option<ContainerStateStatusEnum>,
    exit_code: Option<i64>,
    oom_killed: bool,
    health: EngineHealth,
    last_probe: Option<ProbeResult>,
    timings: Option<ProbeTimings>,
    detail: String,
}

impl DockerRuntime {
    async fn image_present(&self, image: &str) -> Result<bool, RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, &[404]) => Ok(false),
            Err(e) => Err(api(e)),
        }
    }

    /// Pulls `image`, once however many callers ask at the same time: a pool creates
    /// many containers at once, and each would otherwise pull the same image (and a
    /// wrong password would be tried once per container). Callers that waited for a
    /// pull take its outcome; a caller arriving after a failed pull tries again.
    async fn pull_once(&self, image: &str) -> Result<(), RuntimeError> {
        let reference = with_tag(image);
        let slot = {
            let mut pulls = self.pulls.lock().unwrap_or_else(|p| p.into_inner());
            pulls.entry(reference.clone()).or_default().clone()
        };
        let asked = Instant::now();
        let mut last = slot.lock().await;
        if let Some((ended, outcome)) = last.as_ref() {
            if *ended >= asked {
                return outcome.clone();
            }
        }
        // Pulled by a caller that was before us, or by someone else meanwhile.
        if self.image_present(image).await? {
            return Ok(());
        }
        let outcome = self.pull(image, &reference).await;
        *last = Some((Instant::now(), outcome.clone()));
        outcome
    }

    async fn pull(&self, image: &str, reference: &str) -> Result<(), RuntimeError> {
        let failed = |message: String| RuntimeError::ImagePull {
            image: image.to_owned(),
            message,
        };
        let lookup = registry_auth::lookup(reference).await.map_err(failed)?;
        let source = lookup.credentials.as_ref().map(|c| c.source.clone());
        tracing::info!(
            image = %reference,
            registry = %lookup.registry,
            credentials = source.as_deref().unwrap_or("none"),
            "pulling missing image"
        );
        let secrets = lookup
            .credentials
            .as_ref()
            .map(registry_auth::Credentials::secrets)
            .unwrap_or_default();
        let options = CreateImageOptionsBuilder::default()
            .from_image(reference)
            .build();
        let credentials = lookup.credentials.as_ref().map(|c| c.docker.clone());
        let mut stream = self.docker.create_image(Some(options), None, credentials);
        while let Some(item) = stream.next().await {
            if let Err(e) = item {
                crate::metrics::docker_error("pull");
                let raw = scrub(&e.to_string(), &secrets);
                return Err(failed(describe_pull_failure(reference, &lookup, &raw)));
            }
        }
        // A pull can "succeed" without producing the image (e.g. wrong platform).
        match self.image_present(image).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(failed(format!(
                "the pull of {reference} ended without the image (is it for another platform?)"
            ))),
            Err(e) => Err(failed(e.to_string())),
        }
    }
}

/// Says in a sentence why a pull failed: authentication, a missing repository or
/// tag, or whatever else the engine said.
fn describe_pull_failure(reference: &str, lookup: &registry_auth::Lookup, raw: &str) -> String {
    let registry = &lookup.registry;
    let lower = raw.to_ascii_lowercase();
    let credentials = match &lookup.credentials {
        Some(c) => format!("with the credentials from {}", c.source),
        None => format!(
            "without credentials (none for {registry} in {}; set DOCKER_CONFIG or log in with `docker login {registry}`)",
            lookup.config.display()
        ),
    };
    // Docker Hub answers both a missing repository and a private one this way.
    if lower.contains("repository does not exist") {
        return format!(
            "{reference} was not found at registry {registry}, or it needs other credentials (pulled {credentials}): {raw}"
        );
    }
    let auth_failed = [
        "unauthorized",
        "authentication required",
        "no basic auth credentials",
        "access denied",
        "denied:",
        "401",
        "incorrect username or password",
    ]
    .iter()
    .any(|m| lower.contains(m));
    if auth_failed {
        return format!("authentication failed at registry {registry} {credentials}: {raw}");
    }
    let not_found = ["manifest unknown", "not found", "404", "does not exist"]
        .iter()
        .any(|m| lower.contains(m));
    if not_found {
        return format!(
            "{reference} was not found at registry {registry} (no such repository or tag): {raw}"
        );
    }
    format!("the pull from registry {registry} failed: {raw}")
}

fn scrub(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .fold(text.to_owned(), |t, s| t.replace(s.as_str(), "***"))
}

fn api(e: BollardError) -> RuntimeError {
    RuntimeError::Api(e.to_string())
}

/// Counts a failed engine call by operation, then passes the error on.
fn counted<T, E>(operation: &'static str, result: Result<T, E>) -> Result<T, E> {
    if result.is_err() {
        crate::metrics::docker_error(operation);
    }
    result
}

fn is_status(e: &BollardError, codes: &[u16]) -> bool {
    matches!(e, BollardError::DockerResponseServerError { status_code, .. } if codes.contains(status_code))
}

/// `name` → `name:latest`, so a pull never fetches every tag.
fn with_tag(image: &str) -> String {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') || last.contains(':') {
        image.to_owned()
    } else {
        format!("{image}:latest")
    }
}

/// A probe result in one line: its exit code and output, shortened.
pub fn probe_summary(p: &ProbeResult) -> String {
    let mut output: String = p.output.split_whitespace().collect::<Vec<_>>().join(" ");
    if output.len() > 300 {
        let cut = (0..=300)
            .rev()
            .find(|i| output.is_char_boundary(*i))
            .unwrap_or(0);
        output.truncate(cut);
        output.push('…');
    }
    if output.is_empty() {
        format!("exit code {} (no output)", p.exit_code)
    } else {
        format!("exit code {}: {output:?}", p.exit_code)
    }
}

fn nanos(d: Option<Duration>) -> Option<i64> {
    d.map(|d| d.as_nanos() as i64)
}

#[async_trait]
impl Runtime for DockerRuntime {
    async fn ping(&self) -> Result<(), RuntimeError> {
        self.docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|e| RuntimeError::Unreachable {
                host: self.host.clone(),
                message: e.to_string(),
            })
    }

    async fn ensure_image(&self, image: &str) -> Result<(), RuntimeError> {
        if self.image_present(image).await? {
            return Ok(());
        }
        self.pull_once(image).await
    }

    async fn create_and_start(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let err = |e: BollardError| RuntimeError::Container {
            name: spec.name.clone(),
            message: e.to_string(),
        };
        let mut port_bindings = HashMap::new();
        let mut exposed = Vec::new();
        for p in &spec.ports {
            let key = format!("{}/{}", p.container, p.protocol);
            exposed.push(key.clone());
            if let Some(host) = p.host {
                port_bindings.insert(
                    key,
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".into()),
                        host_port: Some(host.to_string()),
                    }]),
                );
            }
        }
        let host_config = HostConfig {
            binds: Some(spec.binds.clone()),
            tmpfs: Some(spec.tmpfs.clone()),
            readonly_rootfs: Some(spec.read_only_root),
            cap_drop: Some(vec!["ALL".into()]),
            cap_add: (!spec.cap_add.is_empty()).then(|| spec.cap_add.clone()),
            security_opt: Some(vec!["no-new-privileges:true".into()]),
            pids_limit: Some(spec.pids_limit),
            nano_cpus: Some(spec.nano_cpus),
            memory: Some(spec.memory_bytes),
            // Same as memory: no swap beyond the limit.
            memory_swap: Some(spec.memory_bytes),
            restart_policy: Some(RestartPolicy {
                name: Some(RestartPolicyNameEnum::NO),
                maximum_retry_count: None,
            }),
            network_mode: spec.network_mode.clone(),
            port_bindings: (!port_bindings.is_empty()).then_some(port_bindings),
            ..Default::default()
        };
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            labels: Some(spec.labels.clone()),
            env: Some(spec.env.clone()),
            cmd: spec.cmd.clone(),
            entrypoint: spec.entrypoint.clone(),
            user: spec.user.clone(),
            exposed_ports: (!exposed.is_empty()).then_some(exposed),
            healthcheck: spec.healthcheck.as_ref().map(|h| HealthConfig {
                test: Some(h.test.clone()),
                interval: nanos(h.interval),
                timeout: nanos(h.timeout),
                retries: h.retries.map(i64::from),
                start_period: nanos(h.start_period),
                // Older engines refuse the field: send it only where it is honoured.
                start_interval: nanos(h.start_interval.filter(|_| self.supports_start_interval())),
            }),
            host_config: Some(host_config),
            ..Default::default()
        };
        let options = CreateContainerOptionsBuilder::default()
            .name(&spec.name)
            .build();
        let created = counted(
            "create",
            self.docker.create_container(Some(options), body).await,
        )
        .map_err(err)?;
        if let Err(e) = counted(
            "start",
            self.docker
                .start_container(&created.id, None::<StartContainerOptions>)
                .await,
        ) {
            let _ = self.remove(&created.id).await;
            return Err(err(e));
        }
        Ok(created.id)
    }

    async fn wait_ready(
        &self,
        docker_id: &str,
        name: &str,
        within: Duration,
    ) -> Result<Readiness, RuntimeError> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(5);
        loop {
            let seen = self.inspect(docker_id).await?;
            match seen.status {
                Some(ContainerStateStatusEnum::RUNNING) => match seen.health {
                    EngineHealth::None | EngineHealth::Healthy => return Ok(Readiness::Ready),
                    EngineHealth::Unhealthy => {
                        let probe = seen
                            .last_probe
                            .map(|p| format!("; last probe: {}", probe_summary(&p)))
                            .unwrap_or_default();
                        return Err(RuntimeError::NotReady {
                            name: name.into(),
                            timeout: started.elapsed(),
                            message: format!("its healthcheck reports unhealthy{probe}"),
                        });
                    }
                    EngineHealth::Starting => {}
                },
                Some(ContainerStateStatusEnum::CREATED)
                | Some(ContainerStateStatusEnum::RESTARTING) => {}
                _ => {
                    return Err(RuntimeError::NotReady {
                        name: name.into(),
                        timeout: started.elapsed(),
                        message: format!("it is not running ({})", seen.detail),
                    })
                }
            }
            if started.elapsed() >= within {
                if seen.status == Some(ContainerStateStatusEnum::RUNNING) {
                    return Ok(Readiness::Starting(seen.timings));
                }
                return Err(RuntimeError::NotReady {
                    name: name.into(),
                    timeout: within,
                    message: format!("it never started running ({})", seen.detail),
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(100));
        }
    }

    async fn report(
        &self,
        docker_id: &str,
        log_lines: usize,
    ) -> Result<ContainerReport, RuntimeError> {
        let seen = self.inspect(docker_id).await?;
        let running = seen.status == Some(ContainerStateStatusEnum::RUNNING);
        let log_tail = if running || log_lines == 0 {
            None
        } else if self.logs_refused.load(Ordering::Acquire) {
            Some(Err(LOGS_REFUSED.to_owned()))
        } else {
            Some(self.log_tail(docker_id, log_lines).await.map_err(|e| {
                if self.logs_refused.load(Ordering::Acquire) {
                    LOGS_REFUSED.to_owned()
                } else {
                    e.to_string()
                }
            }))
        };
        Ok(ContainerReport {
            running,
            exit_code: seen.exit_code,
            oom_killed: seen.oom_killed,
            detail: seen.detail,
            health: seen.health,
            last_probe: seen.last_probe,
            log_tail,
        })
    }

    fn supports_start_interval(&self) -> bool {
        let v = self.docker.client_version();
        (v.major_version, v.minor_version) >= START_INTERVAL_API
    }

    async fn pause(&self, docker_id: &str) -> Result<(), RuntimeError> {
        counted("pause", self.docker.pause_container(docker_id).await).map_err(api)
    }

    async fn unpause(&self, docker_id: &str) -> Result<(), RuntimeError> {
        match self.docker.unpause_container(docker_id).await {
            // 409/500: "container is not paused" — already where we want it.
            Err(e) if is_status(&e, &[409]) => Ok(()),
            other => counted("unpause", other).map_err(api),
        }
    }

    async fn restart(&self, docker_id: &str) -> Result<(), RuntimeError> {
        let options = RestartContainerOptionsBuilder::default().t(5).build();
        counted(
            "restart",
            self.docker
                .restart_container(docker_id, Some(options))
                .await,
        )
        .map_err(api)
    }

    async fn remove(&self, docker_id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        match self.docker.remove_container(docker_id, Some(options)).await {
            Ok(()) => Ok(()),
            // Gone already, or its removal is already under way.
            Err(e) if is_status(&e, &[404, 409]) => Ok(()),
            Err(e) => counted("remove", Err(e)).map_err(api),
        }
    }

    async fn list_managed(&self, instance: &str) -> Result<Vec<ManagedContainer>, RuntimeError> {
        let filters: HashMap<String, Vec<String>> = HashMap::from([(
            "label".to_owned(),
            vec![
                format!("{}=true", labels::MANAGED),
                format!("{}={instance}", labels::INSTANCE),
            ],
        )]);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let list =
            counted("list", self.docker.list_containers(Some(options)).await).map_err(api)?;
        Ok(list
            .into_iter()
            .filter_map(|c| {
                let status = c.status.unwrap_or_default();
                let state = match c.state.map(|s| s.to_string()).as_deref() {
                    Some("running") => EngineState::Running,
                    Some("paused") => EngineState::Paused,
                    _ => EngineState::Other,
                };
                let health = if status.contains("(healthy)") {
                    EngineHealth::Healthy
                } else if status.contains("(unhealthy)") {
                    EngineHealth::Unhealthy
                } else if status.contains("(health: starting)") {
                    EngineHealth::Starting
                } else {
                    EngineHealth::None
                };
                Some(ManagedContainer {
                    docker_id: c.id?,
                    labels: c.labels.unwrap_or_default(),
                    state,
                    health,
                })
            })
            .collect())
    }

    fn events(&self, instance: &str) -> BoxStream<'static, Result<RuntimeEvent, RuntimeError>> {
        let filters: HashMap<String, Vec<String>> = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            (
                "label".to_owned(),
                vec![format!("{}={instance}", labels::INSTANCE)],
            ),
        ]);
        let options = EventsOptionsBuilder::default().filters(&filters).build();
        self.docker
            .events(Some(options))
            .filter_map(|item| async move {
                let msg = match item {
                    Ok(m) => m,
                    Err(e) => return Some(Err(api(e))),
                };
                let action = msg.action.unwrap_or_default();
                let attrs = msg.actor.and_then(|a| a.attributes).unwrap_or_default();
                let kind = match action.as_str() {
                    "die" => EventKind::Died {
                        exit_code: attrs.get("exitCode").and_then(|c| c.parse().ok()),
                    },
                    "oom" => EventKind::Oom,
                    "health_status: healthy" => EventKind::Healthy,
                    "health_status: unhealthy" => EventKind::Unhealthy,
                    _ => return None,
                };
                Some(Ok(RuntimeEvent {
                    pool: attrs.get(labels::POOL)?.clone(),
                    container_id: attrs.get(labels::CONTAINER_ID)?.clone(),
                    kind,
                }))
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::{describe_pull_failure, registry_auth, scrub, with_tag};

    #[test]
    fn pull_failures_say_why() {
        let lookup = |credentials: Option<registry_auth::Credentials>| registry_auth::Lookup {
            registry: "r.io:5000".into(),
            config: "/c/config.json".into(),
            credentials,
        };
        let with = registry_auth::Credentials {
            docker: Default::default(),
            source: "/c/config.json".into(),
        };
        let m = describe_pull_failure(
            "r.io:5000/a:1",
            &lookup(Some(with)),
            "Head \"http://r.io:5000/v2/a/manifests/1\": unauthorized: authentication required",
        );
        assert!(m.starts_with("authentication failed at registry r.io:5000 with the credentials from /c/config.json"), "{m}");
        let m = describe_pull_failure("r.io:5000/a:1", &lookup(None), "no basic auth credentials");
        assert!(
            m.contains("without credentials") && m.contains("docker login r.io:5000"),
            "{m}"
        );
        let m = describe_pull_failure(
            "r.io:5000/a:1",
            &lookup(None),
            "manifest for r.io:5000/a:1 not found: manifest unknown",
        );
        assert!(
            m.starts_with("r.io:5000/a:1 was not found at registry r.io:5000"),
            "{m}"
        );
        let m = describe_pull_failure(
            "a:1",
            &lookup(None),
            "pull access denied for a, repository does not exist or may require 'docker login': denied",
        );
        assert!(m.contains("was not found at registry r.io:5000, or it needs other credentials (pulled without"), "{m}");
        let m = describe_pull_failure("r.io:5000/a:1", &lookup(None), "connection refused");
        assert!(
            m.starts_with("the pull from registry r.io:5000 failed"),
            "{m}"
        );
        assert_eq!(scrub("pw is pw", &["pw".into()]), "*** is ***");
    }

    #[test]
    fn pulls_name_with_a_tag() {
        assert_eq!(with_tag("alpine"), "alpine:latest");
        assert_eq!(with_tag("alpine:3.20"), "alpine:3.20");
        assert_eq!(with_tag("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(with_tag("r.io/app@sha256:abc"), "r.io/app@sha256:abc");
    }
}
