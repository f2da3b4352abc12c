//! Daemon configuration: `BOILERHOUSE_*` environment variables → [`Config`].
//!
//! Loaded once at start-up with figment. A value that does not parse stops the
//! daemon with a message naming the variable and the value: a typo in a
//! deployment never silently falls back to a default.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use figment::providers::Serialized;
use figment::Figment;
use serde::{Deserialize, Serialize};

pub const ENV_PREFIX: &str = "BOILERHOUSE_";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub api_port: u16,
    pub api_host: IpAddr,
    /// Idle containers kept warm per pool when a workload sets no `pool.min_size`.
    pub pool_size: usize,
    /// Cap on all managed containers on this node, across pools.
    pub max_containers: usize,
    /// Claim inactivity before automatic release; 0 = never.
    pub idle_timeout_ms: u64,
    /// How long a claim may wait for a container.
    pub claim_timeout_ms: u64,
    pub state_dir: PathBuf,
    pub secrets_dir: PathBuf,
    pub socket_dir: PathBuf,
    pub data_dir: PathBuf,
    pub workloads_dir: PathBuf,
    pub default_image: String,
    pub container_cpus: f64,
    pub container_memory_mb: u64,
    pub container_tmpfs_mb: u64,
    pub container_pids_limit: i64,
    pub api_token: Option<String>,
    pub rclone_bin: PathBuf,
    pub sync_concurrency: usize,
    pub sync_timeout_ms: u64,
    pub log_format: LogFormat,
    pub instance: String,
    /// How long a client may take to send a request's headers, from its connection
    /// (or its first byte after an idle keep-alive period) to the blank line.
    pub http_header_timeout_ms: u64,
    /// How long a keep-alive connection may sit between requests before it is closed.
    pub http_idle_timeout_ms: u64,
    /// Open connections at most; further clients wait in the listen backlog.
    pub http_max_connections: usize,
    /// How long a request (except the `/events` stream) may take; None = derived
    /// from the claim and sync timeouts (see [`Config::request_timeout`]).
    pub http_request_timeout_ms: Option<u64>,
    /// Cluster mode (see `crate::cluster`): comma-separated etcd client URLs; unset =
    /// single-node mode, no etcd at all.
    pub etcd_endpoints: Option<String>,
    /// The cluster this node joins (its keys' prefix in etcd).
    pub cluster: String,
    /// This node's name in the cluster; None = the hostname.
    pub node_id: Option<String>,
    /// The URL the other nodes reach this node's API at; None = `http://<hostname>:<API_PORT>`.
    pub advertise_url: Option<String>,
    /// The node's etcd lease: how long a node that stopped answering etcd still holds
    /// its tenants (rounded up to whole seconds).
    pub cluster_lease_ttl_ms: u64,
    /// How long `WORKLOADS_DIR` must be quiet after a change before the workloads
    /// are reloaded (an editor's save is several events); 0 = no watch (SIGHUP and
    /// `POST /workloads/reload` still reload).
    pub workloads_debounce_ms: u64,
    /// Disk the local state cache (`DATA_DIR/state-cache`) may use, in MiB; 0 = off.
    pub state_cache_mb: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            api_port: 3000,
            api_host: IpAddr::from([0, 0, 0, 0]),
            pool_size: 5,
            max_containers: 50,
            idle_timeout_ms: 300_000,
            claim_timeout_ms: 30_000,
            state_dir: "/var/lib/boilerhouse/states".into(),
            secrets_dir: "/var/lib/boilerhouse/secrets".into(),
            socket_dir: "/var/run/boilerhouse".into(),
            data_dir: "/var/lib/boilerhouse/data".into(),
            workloads_dir: "./workloads".into(),
            default_image: "alpine:latest".into(),
            container_cpus: 1.0,
            container_memory_mb: 512,
            container_tmpfs_mb: 100,
            container_pids_limit: 512,
            api_token: None,
            rclone_bin: "rclone".into(),
            sync_concurrency: 5,
            sync_timeout_ms: 300_000,
            log_format: LogFormat::Text,
            instance: "default".into(),
            http_header_timeout_ms: 10_000,
            http_idle_timeout_ms: 60_000,
            http_max_connections: 4096,
            http_request_timeout_ms: None,
            etcd_endpoints: None,
            cluster: "default".into(),
            node_id: None,
            advertise_url: None,
            cluster_lease_ttl_ms: 10_000,
            workloads_debounce_ms: 500,
            // A returning tenant is the common case; 1 GiB keeps ~100 tenants of 10 MB.
            state_cache_mb: 1024,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.join("\n"))]
pub struct ConfigError(pub Vec<String>);

/// Variables that are not ours to parse even though they carry the prefix.
const IGNORED: &[&str] = &["test_image", "rclone_bin_test"];

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_vars(std::env::vars())
    }

    /// Reads configuration from the given `(name, value)` pairs (tests pass their own).
    pub fn from_vars(
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let vars: Vec<(String, String)> = vars
            .into_iter()
            .filter(|(k, v)| k.starts_with(ENV_PREFIX) && !v.is_empty())
            .collect();
        let lookup = |name: &str| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        let mut errors = Vec::new();
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        for (name, value) in &vars {
            let key = name[ENV_PREFIX.len()..].to_ascii_lowercase();
            // The original's name for the claim timeout.
            let key = if key == "start_timeout_ms" {
                if lookup("BOILERHOUSE_CLAIM_TIMEOUT_MS").is_some() {
                    continue;
                }
                "claim_timeout_ms".to_owned()
            } else {
                key
            };
            if IGNORED.contains(&key.as_str()) {
                continue;
            }
            if !KNOWN.contains(&key.as_str()) {
                // Unknown prefixed variables are most likely typos; say so, but they
                // cannot break anything, so they only warn (see `warnings`).
                continue;
            }
            let parsed = if STRING_KEYS.contains(&key.as_str()) {
                figment::value::Value::from(value.clone())
            } else {
                value
                    .parse::<figment::value::Value>()
                    .unwrap_or_else(|_| figment::value::Value::from(value.clone()))
            };
            // Each variable is checked on its own too, so every bad one is reported at
            // once (figment stops at the first error of a struct).
            let single = Figment::from(Serialized::defaults(Config::default()))
                .merge(Serialized::default(&key, &parsed));
            if let Err(e) = single.extract::<Config>() {
                report(&mut errors, e, &lookup);
            }
            figment = figment.merge(Serialized::default(&key, parsed));
        }
        if !errors.is_empty() {
            return Err(ConfigError(errors));
        }
        let config: Config = match figment.extract() {
            Ok(c) => c,
            Err(e) => {
                report(&mut errors, e, &lookup);
                return Err(ConfigError(errors));
            }
        };
        config.validate()?;
        Ok(config)
    }

    /// Prefixed variables that are not recognised (likely typos), for a start-up warning.
    pub fn unknown_vars(vars: impl IntoIterator<Item = (String, String)>) -> Vec<String> {
        vars.into_iter()
            .filter_map(|(k, _)| {
                let key = k.strip_prefix(ENV_PREFIX)?.to_ascii_lowercase();
                (!KNOWN.contains(&key.as_str())
                    && key != "start_timeout_ms"
                    && !IGNORED.contains(&key.as_str()))
                .then_some(k)
            })
            .collect()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        let mut check = |ok: bool, msg: String| {
            if !ok {
                errors.push(msg)
            }
        };
        check(
            self.max_containers >= 1,
            "BOILERHOUSE_MAX_CONTAINERS must be at least 1".into(),
        );
        check(
            self.container_cpus > 0.0 && self.container_cpus.is_finite(),
            format!(
                "BOILERHOUSE_CONTAINER_CPUS={}: must be a positive number",
                self.container_cpus
            ),
        );
        check(
            self.container_memory_mb >= 6,
            "BOILERHOUSE_CONTAINER_MEMORY_MB must be at least 6 (Docker's minimum)".into(),
        );
        check(
            self.container_pids_limit >= 1,
            "BOILERHOUSE_CONTAINER_PIDS_LIMIT must be at least 1".into(),
        );
        check(
            self.sync_concurrency >= 1,
            "BOILERHOUSE_SYNC_CONCURRENCY must be at least 1".into(),
        );
        check(
            self.sync_timeout_ms >= 1,
            "BOILERHOUSE_SYNC_TIMEOUT_MS must be at least 1".into(),
        );
        for (name, value) in [
            ("HTTP_HEADER_TIMEOUT_MS", self.http_header_timeout_ms),
            ("HTTP_IDLE_TIMEOUT_MS", self.http_idle_timeout_ms),
            ("HTTP_MAX_CONNECTIONS", self.http_max_connections as u64),
            (
                "HTTP_REQUEST_TIMEOUT_MS",
                self.http_request_timeout_ms.unwrap_or(1),
            ),
        ] {
            check(
                value >= 1,
                format!("BOILERHOUSE_{name}={value}: must be at least 1"),
            );
        }
        check(
            !self.instance.is_empty()
                && self.instance.len() <= 32
                && self
                    .instance
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.'),
            format!(
                "BOILERHOUSE_INSTANCE={:?}: use 1-32 characters from A-Z a-z 0-9 . _ - (it becomes part of container names)",
                self.instance
            ),
        );
        for (name, dir) in [
            ("STATE_DIR", &self.state_dir),
            ("SECRETS_DIR", &self.secrets_dir),
            ("SOCKET_DIR", &self.socket_dir),
        ] {
            check(
                dir.is_absolute(),
                format!(
                    "BOILERHOUSE_{name}={}: must be an absolute path (it is handed to Docker as a bind source)",
                    dir.display()
                ),
            );
        }
        if self.etcd_endpoints.is_some() {
            errors.extend(crate::cluster::ClusterConfig::from_config(self).err());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigError(errors))
        }
    }

    pub fn idle_timeout(&self) -> Option<Duration> {
        (self.idle_timeout_ms > 0).then(|| Duration::from_millis(self.idle_timeout_ms))
    }

    pub fn claim_timeout(&self) -> Duration {
        Duration::from_millis(self.claim_timeout_ms)
    }

    pub fn sync_timeout(&self) -> Duration {
        Duration::from_millis(self.sync_timeout_ms)
    }

    pub fn header_timeout(&self) -> Duration {
        Duration::from_millis(self.http_header_timeout_ms)
    }

    pub fn http_idle_timeout(&self) -> Duration {
        Duration::from_millis(self.http_idle_timeout_ms)
    }

    /// The request timeout: `BOILERHOUSE_HTTP_REQUEST_TIMEOUT_MS`, or, when unset, the
    /// longest a single-mapping claim legitimately takes — the wait for a container
    /// (claim timeout), one restore (sync timeout) — plus 30 s of slack. The same
    /// bound covers a release, whose upload is bounded by the sync timeout. A fixed
    /// default shorter than that would cut claims that would have succeeded.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.http_request_timeout_ms.unwrap_or_else(|| {
            self.claim_timeout_ms
                .saturating_add(self.sync_timeout_ms)
                .saturating_add(REQUEST_TIMEOUT_SLACK_MS)
        }))
    }
}

/// Added to the claim and sync timeouts for the derived request timeout: container
/// start, secrets and the answer itself.
const REQUEST_TIMEOUT_SLACK_MS: u64 = 30_000;

const KNOWN: &[&str] = &[
    "api_port",
    "api_host",
    "pool_size",
    "max_containers",
    "idle_timeout_ms",
    "claim_timeout_ms",
    "state_dir",
    "secrets_dir",
    "socket_dir",
    "data_dir",
    "workloads_dir",
    "default_image",
    "container_cpus",
    "container_memory_mb",
    "container_tmpfs_mb",
    "container_pids_limit",
    "api_token",
    "rclone_bin",
    "sync_concurrency",
    "sync_timeout_ms",
    "log_format",
    "instance",
    "http_header_timeout_ms",
    "http_idle_timeout_ms",
    "http_max_connections",
    "http_request_timeout_ms",
    "etcd_endpoints",
    "cluster",
    "node_id",
    "advertise_url",
    "cluster_lease_ttl_ms",
    "workloads_debounce_ms",
    "state_cache_mb",
];

/// Keys whose values are strings even when they look like numbers (a token `12345`).
const STRING_KEYS: &[&str] = &[
    "api_host",
    "state_dir",
    "secrets_dir",
    "socket_dir",
    "data_dir",
    "workloads_dir",
    "default_image",
    "api_token",
    "rclone_bin",
    "log_format",
    "instance",
    "etcd_endpoints",
    "cluster",
    "node_id",
    "advertise_url",
];

fn report(errors: &mut Vec<String>, e: figment::Error, lookup: &dyn Fn(&str) -> Option<String>) {
    for err in e {
        let key = err.path.join("_").to_ascii_uppercase();
        let var = format!("{ENV_PREFIX}{key}");
        let shown = lookup(&var)
            .or_else(|| {
                (key == "CLAIM_TIMEOUT_MS")
                    .then(|| lookup("BOILERHOUSE_START_TIMEOUT_MS"))
                    .flatten()
            })
            .unwrap_or_default();
        errors.push(format!("{var}={shown:?}: {}", describe(&err.kind)));
    }
}

fn describe(kind: &figment::error::Kind) -> String {
    use figment::error::Kind;
    match kind {
        Kind::InvalidType(_, expected) | Kind::InvalidValue(_, expected) => {
            format!("not a valid value: expected {}", friendly(expected))
        }
        Kind::UnknownVariant(v, allowed) => {
            format!("{v:?} is not one of {}", allowed.join(", "))
        }
        other => other.to_string(),
    }
}

fn friendly(expected: &str) -> String {
    match expected {
        "u16" => "a port number (0-65535)".into(),
        "usize" | "u64" | "u32" => "a non-negative integer".into(),
        "i64" => "an integer".into(),
        "f64" => "a number".into(),
        "IP address" => "an IP address such as 0.0.0.0".into(),
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_match_the_seed_readme() {
        let c = Config::from_vars(vec![]).unwrap();
        assert_eq!(c.api_port, 3000);
        assert_eq!(c.api_host.to_string(), "0.0.0.0");
        assert_eq!(c.pool_size, 5);
        assert_eq!(c.max_containers, 50);
        assert_eq!(c.idle_timeout_ms, 300_000);
        assert_eq!(c.claim_timeout_ms, 30_000);
        assert_eq!(c.state_dir, PathBuf::from("/var/lib/boilerhouse/states"));
        assert_eq!(c.secrets_dir, PathBuf::from("/var/lib/boilerhouse/secrets"));
        assert_eq!(c.socket_dir, PathBuf::from("/var/run/boilerhouse"));
        assert_eq!(c.default_image, "alpine:latest");
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.instance, "default");
        assert!(c.api_token.is_none());
    }

    #[test]
    fn values_are_read_from_prefixed_variables() {
        let c = Config::from_vars(vars(&[
            ("BOILERHOUSE_API_PORT", "8080"),
            ("BOILERHOUSE_API_TOKEN", "12345"),
            ("BOILERHOUSE_LOG_FORMAT", "json"),
            ("BOILERHOUSE_CONTAINER_CPUS", "0.5"),
            ("BOILERHOUSE_START_TIMEOUT_MS", "1000"),
            ("OTHER", "x"),
        ]))
        .unwrap();
        assert_eq!(c.api_port, 8080);
        assert_eq!(c.api_token.as_deref(), Some("12345"));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.container_cpus, 0.5);
        assert_eq!(c.claim_timeout_ms, 1000);
    }

    #[test]
    fn claim_timeout_wins_over_the_original_name() {
        let c = Config::from_vars(vars(&[
            ("BOILERHOUSE_START_TIMEOUT_MS", "1000"),
            ("BOILERHOUSE_CLAIM_TIMEOUT_MS", "2000"),
        ]))
        .unwrap();
        assert_eq!(c.claim_timeout_ms, 2000);
    }

    #[test]
    fn a_bad_value_names_the_variable_and_the_value() {
        let err = Config::from_vars(vars(&[("BOILERHOUSE_API_PORT", "abc")])).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("BOILERHOUSE_API_PORT=\"abc\""), "{msg}");
        assert!(msg.contains("port number"), "{msg}");
    }

    #[test]
    fn every_bad_value_is_reported() {
        let err = Config::from_vars(vars(&[
            ("BOILERHOUSE_POOL_SIZE", "-1"),
            ("BOILERHOUSE_LOG_FORMAT", "xml"),
        ]))
        .unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("BOILERHOUSE_POOL_SIZE=\"-1\""), "{msg}");
        assert!(msg.contains("BOILERHOUSE_LOG_FORMAT=\"xml\""), "{msg}");
    }

    #[test]
    fn relative_bind_dirs_are_refused() {
        let err = Config::from_vars(vars(&[("BOILERHOUSE_STATE_DIR", "states")])).unwrap_err();
        assert!(err.to_string().contains("BOILERHOUSE_STATE_DIR=states"));
    }

    #[test]
    fn unknown_prefixed_variables_are_listed() {
        let unknown = Config::unknown_vars(vars(&[
            ("BOILERHOUSE_POOL_SIZ", "1"),
            ("BOILERHOUSE_POOL_SIZE", "1"),
        ]));
        assert_eq!(unknown, vec!["BOILERHOUSE_POOL_SIZ".to_string()]);
    }

    #[test]
    fn http_edge_defaults() {
        let c = Config::from_vars(vec![]).unwrap();
        assert_eq!(c.header_timeout(), Duration::from_secs(10));
        assert_eq!(c.http_idle_timeout(), Duration::from_secs(60));
        assert_eq!(c.http_max_connections, 4096);
        // Unset: derived, never shorter than a claim that waits and restores.
        assert_eq!(c.http_request_timeout_ms, None);
        assert_eq!(
            c.request_timeout(),
            c.claim_timeout() + c.sync_timeout() + Duration::from_secs(30)
        );
    }

    #[test]
    fn http_edge_values_are_read_and_the_derived_timeout_follows_its_inputs() {
        let c = Config::from_vars(vars(&[
            ("BOILERHOUSE_HTTP_HEADER_TIMEOUT_MS", "1000"),
            ("BOILERHOUSE_HTTP_IDLE_TIMEOUT_MS", "2000"),
            ("BOILERHOUSE_HTTP_MAX_CONNECTIONS", "10"),
        ]))
        .unwrap();
        assert_eq!(c.header_timeout(), Duration::from_secs(1));
        assert_eq!(c.http_idle_timeout(), Duration::from_secs(2));
        assert_eq!(c.http_max_connections, 10);
        let c = Config::from_vars(vars(&[
            ("BOILERHOUSE_CLAIM_TIMEOUT_MS", "1000"),
            ("BOILERHOUSE_SYNC_TIMEOUT_MS", "2000"),
        ]))
        .unwrap();
        assert_eq!(c.request_timeout(), Duration::from_millis(33_000));
        let c =
            Config::from_vars(vars(&[("BOILERHOUSE_HTTP_REQUEST_TIMEOUT_MS", "1500")])).unwrap();
        assert_eq!(c.request_timeout(), Duration::from_millis(1500));
        assert!(
            Config::unknown_vars(vars(&[("BOILERHOUSE_HTTP_MAX_CONNECTIONS", "1")])).is_empty()
        );
    }

    #[test]
    fn bad_http_edge_values_name_the_variable_and_the_value() {
        let err = Config::from_vars(vars(&[
            ("BOILERHOUSE_HTTP_HEADER_TIMEOUT_MS", "10s"),
            ("BOILERHOUSE_HTTP_REQUEST_TIMEOUT_MS", "-5"),
        ]))
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("BOILERHOUSE_HTTP_HEADER_TIMEOUT_MS=\"10s\""),
            "{msg}"
        );
        assert!(
            msg.contains("BOILERHOUSE_HTTP_REQUEST_TIMEOUT_MS=\"-5\""),
            "{msg}"
        );
        for var in [
            "BOILERHOUSE_HTTP_MAX_CONNECTIONS",
            "BOILERHOUSE_HTTP_IDLE_TIMEOUT_MS",
            "BOILERHOUSE_HTTP_REQUEST_TIMEOUT_MS",
        ] {
            let err = Config::from_vars(vars(&[(var, "0")])).unwrap_err();
            assert!(
                err.to_string()
                    .contains(&format!("{var}=0: must be at least 1")),
                "{err}"
            );
        }
    }
}
