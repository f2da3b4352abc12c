//! [`ContainerSpec`]: everything needed to create one pool container, derived
//! from a workload plus the daemon's defaults. The hardening defaults of the
//! product live here, in one place.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::workload::{HealthTest, PortSpec, Workload};

use super::labels;

#[derive(Debug, Clone, PartialEq)]
pub struct HealthSpec {
    /// Docker's `Test` array, e.g. `["CMD", "curl", "-f", "..."]`.
    pub test: Vec<String>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    pub retries: Option<u32>,
    pub start_period: Option<Duration>,
    pub start_interval: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    /// Engine-wide unique name.
    pub name: String,
    pub image: String,
    pub labels: HashMap<String, String>,
    pub env: Vec<String>,
    pub cmd: Option<Vec<String>>,
    pub entrypoint: Option<Vec<String>>,
    pub user: Option<String>,
    /// `source:target:mode` bind strings.
    pub binds: Vec<String>,
    /// Mount point → tmpfs options.
    pub tmpfs: HashMap<String, String>,
    pub read_only_root: bool,
    pub nano_cpus: i64,
    pub memory_bytes: i64,
    pub pids_limit: i64,
    pub cap_add: Vec<String>,
    pub network_mode: Option<String>,
    pub healthcheck: Option<HealthSpec>,
    pub ports: Vec<PortSpec>,
}

/// The host directories of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerDirs {
    pub state: PathBuf,
    pub secrets: PathBuf,
    pub socket: PathBuf,
}

impl ContainerDirs {
    pub fn new(config: &Config, container_id: &str) -> Self {
        Self {
            state: config.state_dir.join(container_id),
            secrets: config.secrets_dir.join(container_id),
            socket: config.socket_dir.join(container_id),
        }
    }

    pub fn all(&self) -> [&PathBuf; 3] {
        [&self.state, &self.secrets, &self.socket]
    }
}

/// Hash of everything in a workload that shapes its containers, so a daemon that
/// restarts with a changed workload replaces idle containers built from the old one.
pub fn spec_hash(workload: &Workload, config: &Config) -> String {
    let mut hasher = Sha256::new();
    let mut w = workload.clone();
    // Sync settings and the pool block (sizes, timeouts, recycling, autoscaling) do
    // not change how a container is built: a reload that changes only them must
    // not replace any container.
    w.sync = None;
    w.pool = crate::workload::PoolSpec::default();
    w.source = None;
    hasher.update(serde_json::to_vec(&w).unwrap_or_default());
    hasher.update(
        format!(
            "{}|{}|{}|{}",
            config.container_cpus,
            config.container_memory_mb,
            config.container_tmpfs_mb,
            config.container_pids_limit
        )
        .as_bytes(),
    );
    hex::encode(&hasher.finalize()[..8])
}

impl ContainerSpec {
    /// Builds the spec for container `container_id` of `workload`.
    pub fn for_workload(
        workload: &Workload,
        config: &Config,
        container_id: &str,
        dirs: &ContainerDirs,
        spec_hash: &str,
        created_at: &str,
    ) -> Self {
        let mut labels_map: HashMap<String, String> = workload
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels_map.insert(labels::MANAGED.into(), "true".into());
        labels_map.insert(labels::INSTANCE.into(), config.instance.clone());
        labels_map.insert(labels::POOL.into(), workload.id.to_string());
        labels_map.insert(labels::CONTAINER_ID.into(), container_id.into());
        labels_map.insert(labels::SPEC_HASH.into(), spec_hash.into());
        labels_map.insert(labels::CREATED_AT.into(), created_at.into());

        let env = workload
            .environment
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();

        let v = &workload.volumes;
        let binds = vec![
            bind(&dirs.state, &v.state.target, v.state.read_only),
            // Secrets are read-only inside the container, whatever the file says.
            bind(&dirs.secrets, &v.secrets.target, true),
            bind(&dirs.socket, &v.comm.target, v.comm.read_only),
        ];

        let tmpfs_bytes = config.container_tmpfs_mb * 1024 * 1024;
        let mut tmpfs = HashMap::new();
        // Mode is octal text: Docker parses it as such (the original wrote decimal).
        tmpfs.insert(
            "/tmp".to_owned(),
            format!("rw,nosuid,nodev,size={tmpfs_bytes},mode=1777"),
        );
        if workload.read_only {
            tmpfs.insert(
                "/run".to_owned(),
                "rw,nosuid,nodev,noexec,size=16777216,mode=0755".to_owned(),
            );
        }

        let cpus = workload.resources.cpus.unwrap_or(config.container_cpus);
        let memory = workload
            .resources
            .memory_bytes
            .unwrap_or(config.container_memory_mb * 1024 * 1024);

        Self {
            name: format!("bh-{}-{}", config.instance, container_id),
            image: workload.image.clone(),
            labels: labels_map,
            env,
            cmd: workload.command.clone(),
            entrypoint: workload.entrypoint.clone(),
            user: workload.user.map(|u| u.docker_user()),
            binds,
            tmpfs,
            read_only_root: workload.read_only,
            nano_cpus: (cpus * 1e9) as i64,
            memory_bytes: memory as i64,
            pids_limit: workload
                .resources
                .pids_limit
                .unwrap_or(config.container_pids_limit),
            cap_add: workload.cap_add.clone(),
            network_mode: workload.network_mode.clone(),
            healthcheck: workload.healthcheck.as_ref().map(|h| HealthSpec {
                test: match &h.test {
                    HealthTest::Cmd(args) => std::iter::once("CMD".to_owned())
                        .chain(args.clone())
                        .collect(),
                    HealthTest::Shell(cmd) => vec!["CMD-SHELL".to_owned(), cmd.clone()],
                    HealthTest::None => vec!["NONE".to_owned()],
                },
                interval: h.interval,
                timeout: h.timeout,
                retries: h.retries,
                start_period: h.start_period,
                start_interval: h.start_interval,
            }),
            ports: workload.ports.clone(),
        }
    }
}

fn bind(source: &std::path::Path, target: &str, read_only: bool) -> String {
    format!(
        "{}:{}:{}",
        source.display(),
        target,
        if read_only { "ro" } else { "rw" }
    )
}
