//! The resolved workload model: what a workload YAML file means once loaded.
//!
//! These types are produced by `load.rs` (parsing, interpolation, validation) and
//! consumed by the runtime, the pools and the sync engine. They never hold raw,
//! unvalidated input: every field here has already been checked.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

/// A validated workload (= pool) id: `^[a-z][a-z0-9-]*$`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct WorkloadId(String);

impl WorkloadId {
    /// Longest accepted id; ids become Docker names and label values.
    pub const MAX_LEN: usize = 63;

    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut chars = raw.chars();
        let first_ok = matches!(chars.next(), Some('a'..='z'));
        let rest_ok = chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '-'));
        if !first_ok || !rest_ok {
            return Err(format!(
                "workload id {raw:?} is invalid: it must start with a lowercase letter and contain only lowercase letters, digits and '-'"
            ));
        }
        if raw.len() > Self::MAX_LEN {
            return Err(format!(
                "workload id {raw:?} is too long: at most {} characters",
                Self::MAX_LEN
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for WorkloadId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    pub id: WorkloadId,
    /// Human-readable name; defaults to the id.
    pub name: String,
    /// Image reference; defaults to `BOILERHOUSE_DEFAULT_IMAGE`.
    pub image: String,
    pub command: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub environment: BTreeMap<String, String>,
    pub volumes: Volumes,
    pub healthcheck: Option<Healthcheck>,
    pub ports: Vec<PortSpec>,
    pub resources: Resources,
    /// Read-only root filesystem. Hardened default: true.
    pub read_only: bool,
    /// `uid` or `uid:gid`, numeric.
    pub user: Option<UserSpec>,
    pub network_mode: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub cap_add: Vec<String>,
    pub pool: PoolSpec,
    pub sync: Option<SyncSpec>,
    /// File the workload came from (None for the built-in default workload).
    pub source: Option<PathBuf>,
}

impl Workload {
    /// `(uid, gid)` the tenant's files belong to and rclone runs as; None = no `user`.
    pub fn owner(&self) -> Option<(u32, u32)> {
        self.user.map(|u| (u.uid, u.group()))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Volumes {
    pub state: VolumeMount,
    /// Always mounted read-only, whatever the file says.
    pub secrets: VolumeMount,
    pub comm: VolumeMount,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct VolumeMount {
    /// Absolute path inside the container.
    pub target: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Healthcheck {
    pub test: HealthTest,
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
    #[serde(with = "humantime_serde")]
    pub start_period: Option<Duration>,
    /// Probe interval during the start period (compose's `start_interval`); engines
    /// before API 1.44 ignore it and probe first after one `interval`.
    #[serde(with = "humantime_serde")]
    pub start_interval: Option<Duration>,
}

impl Healthcheck {
    /// The timings the engine will use, or None when the check is disabled.
    pub fn timings(&self) -> Option<ProbeTimings> {
        (self.test != HealthTest::None).then(|| {
            ProbeTimings::with_defaults(
                self.interval,
                self.timeout,
                self.retries,
                self.start_period,
                self.start_interval,
            )
        })
    }
}

/// A container's effective healthcheck timings (its own or its image's), with
/// Docker's defaults filled in for what neither sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeTimings {
    pub interval: Duration,
    pub timeout: Duration,
    pub retries: u32,
    pub start_period: Duration,
    /// Probe interval during the start period; honoured by engines with API ≥ 1.44 only.
    pub start_interval: Option<Duration>,
}

impl ProbeTimings {
    /// Docker's defaults for a healthcheck that leaves a value unset.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
    pub const DEFAULT_RETRIES: u32 = 3;
    pub const DEFAULT_START_INTERVAL: Duration = Duration::from_secs(5);

    /// Fills Docker's defaults into the values a healthcheck leaves unset (or at 0).
    pub fn with_defaults(
        interval: Option<Duration>,
        timeout: Option<Duration>,
        retries: Option<u32>,
        start_period: Option<Duration>,
        start_interval: Option<Duration>,
    ) -> Self {
        let set = |d: Option<Duration>| d.filter(|d| !d.is_zero());
        Self {
            interval: set(interval).unwrap_or(Self::DEFAULT_INTERVAL),
            timeout: set(timeout).unwrap_or(Self::DEFAULT_TIMEOUT),
            retries: retries.filter(|r| *r > 0).unwrap_or(Self::DEFAULT_RETRIES),
            start_period: start_period.unwrap_or_default(),
            start_interval: set(start_interval),
        }
    }

    /// When the engine runs the first probe after start: one `interval` on engines
    /// before API 1.44, one `start_interval` on newer ones when it is set.
    pub fn first_probe(&self, engine_has_start_interval: bool) -> Duration {
        match self.start_interval {
            Some(si) if engine_has_start_interval => si.min(self.interval),
            _ => self.interval,
        }
    }

    /// The longest a container can take before Docker calls it healthy or unhealthy:
    /// the start period, then `retries` failing probes after a first one, each up to
    /// `interval + timeout` apart.
    pub fn worst_case(&self) -> Duration {
        self.start_period + (self.interval + self.timeout) * (self.retries + 1)
    }
}

impl std::fmt::Display for ProbeTimings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let h = |d: Duration| humantime::format_duration(d).to_string();
        write!(
            f,
            "interval {}, timeout {}, retries {}, start_period {}",
            h(self.interval),
            h(self.timeout),
            self.retries,
            h(self.start_period)
        )?;
        if let Some(si) = self.start_interval {
            write!(f, ", start_interval {}", h(si))?;
        }
        Ok(())
    }
}

/// Extra time on top of a healthcheck's worst case before a new container is given up:
/// the engine's probes run late on a loaded node.
pub const READY_MARGIN: Duration = Duration::from_secs(10);

/// How long a new (or restarted) container may take to become ready: the pool's
/// `ready_timeout` if set, else at least `floor` (`CLAIM_TIMEOUT_MS`) and at least
/// the healthcheck's worst case plus [`READY_MARGIN`].
pub fn ready_deadline(
    timings: Option<&ProbeTimings>,
    ready_timeout: Option<Duration>,
    floor: Duration,
) -> Duration {
    if let Some(t) = ready_timeout {
        return t;
    }
    match timings {
        Some(t) => floor.max(t.worst_case() + READY_MARGIN),
        None => floor,
    }
}

/// The healthcheck command. Docker's `Test` array is built from this exactly once,
/// so `CMD` is never doubled (a defect of the original).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "value", rename_all = "lowercase")]
pub enum HealthTest {
    /// `["CMD", arg0, arg1, ...]`: exec form.
    Cmd(Vec<String>),
    /// `["CMD-SHELL", "..."]` or a plain string: run by the image's shell.
    Shell(String),
    /// `["NONE"]`: disable any healthcheck the image defines.
    None,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortSpec {
    pub container: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    /// Host port to publish on, when given.
    pub host: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Resources {
    /// CPU cores; None = `BOILERHOUSE_CONTAINER_CPUS`.
    pub cpus: Option<f64>,
    /// Bytes; None = `BOILERHOUSE_CONTAINER_MEMORY_MB`.
    pub memory_bytes: Option<u64>,
    /// None = `BOILERHOUSE_CONTAINER_PIDS_LIMIT`.
    pub pids_limit: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UserSpec {
    pub uid: u32,
    pub gid: Option<u32>,
}

impl UserSpec {
    /// The `User` string handed to Docker.
    pub fn docker_user(&self) -> String {
        match self.gid {
            Some(gid) => format!("{}:{}", self.uid, gid),
            None => self.uid.to_string(),
        }
    }

    /// Group owning the tenant directories: the gid if given, else the uid.
    pub fn group(&self) -> u32 {
        self.gid.unwrap_or(self.uid)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolSpec {
    /// None = `BOILERHOUSE_POOL_SIZE`.
    pub min_size: Option<usize>,
    /// None = `BOILERHOUSE_MAX_CONTAINERS`.
    pub max_size: Option<usize>,
    /// Idle containers above `min_size` older than this are removed. None = never.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    pub recycle: Recycle,
    /// How long a new container may take to become ready before it is given up.
    /// None = derived from the healthcheck (see docs/workloads.md).
    #[serde(with = "humantime_serde")]
    pub ready_timeout: Option<Duration>,
    /// `pool.autoscale`: the idle target follows recent demand. None = fixed `min_size`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<AutoscaleSpec>,
}

/// `pool.autoscale`: keep `buffer` idle ready containers beyond the claims that
/// arrived in the last `window`, and lower that target only once it has been
/// lower for `scale_down_delay` (see docs/workloads.md).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AutoscaleSpec {
    pub buffer: Buffer,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    #[serde(with = "humantime_serde")]
    pub scale_down_delay: Duration,
}

impl AutoscaleSpec {
    pub const DEFAULT_WINDOW: Duration = Duration::from_secs(10);
    pub const DEFAULT_SCALE_DOWN_DELAY: Duration = Duration::from_secs(60);
}

/// The spare idle containers: a count, or a share of the claimed count (rounded up).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buffer {
    Count(usize),
    Percent(u32),
}

impl Buffer {
    /// The spare containers for `claimed` claims.
    pub fn of(self, claimed: usize) -> usize {
        match self {
            Buffer::Count(n) => n,
            Buffer::Percent(p) => (claimed * p as usize).div_ceil(100),
        }
    }
}

impl Serialize for Buffer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Buffer::Count(n) => s.serialize_u64(*n as u64),
            Buffer::Percent(p) => s.serialize_str(&format!("{p}%")),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Recycle {
    /// Remove the container on release; the pool refills. Never serves two tenants.
    #[default]
    Destroy,
    /// Wipe state and secrets, restart, return to idle once ready.
    Restart,
    /// Wipe state and secrets, return to idle as it is (the original's behaviour).
    Reuse,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncSpec {
    pub sink: SinkSpec,
    pub mappings: Vec<SyncMapping>,
    pub policy: SyncPolicy,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SinkSpec {
    /// Backend type; `s3` is the one implemented.
    #[serde(rename = "type")]
    pub kind: String,
    pub bucket: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    /// Redacted on output.
    #[serde(serialize_with = "redact")]
    pub access_key_id: Option<String>,
    /// Redacted on output.
    #[serde(serialize_with = "redact")]
    pub secret_access_key: Option<String>,
    /// Key prefix template; `${tenantId}` is replaced per tenant.
    pub prefix: String,
    pub rclone_flags: Vec<String>,
}

fn redact<S: serde::Serializer>(value: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match value {
        Some(_) => s.serialize_str("***"),
        None => s.serialize_none(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncMapping {
    /// Relative to the state volume; `/` (or empty) = all of it. Never contains `..`.
    pub path: String,
    pub direction: SyncDirection,
    pub mode: SyncMode,
    pub pattern: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncDirection {
    Upload,
    Download,
    Bidirectional,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncMode {
    /// Mirror: the destination is made identical, deleting extra files.
    Sync,
    /// Never deletes at the destination.
    Copy,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SyncPolicy {
    pub on_claim: bool,
    pub on_release: bool,
    pub manual: bool,
    #[serde(with = "humantime_serde")]
    pub periodic: Option<Duration>,
}

impl Default for SyncPolicy {
    fn default() -> Self {
        Self {
            on_claim: true,
            on_release: true,
            manual: true,
            periodic: None,
        }
    }
}
