//! Cluster mode: several daemons share one claim registry in etcd, so a tenant is
//! claimed on at most one node cluster-wide, and any node answers for any tenant.
//! The consensus is etcd's; each node keeps its own pools on its own engine.
//!
//! With `BOILERHOUSE_ETCD_ENDPOINTS` unset none of this exists: no etcd, no
//! forwarding, single-node mode exactly as before.
//!
//! The keys, under `/boilerhouse/<cluster>/`:
//! - `nodes/<node>` — [`NodeRecord`]: the node's URL, its lease and its pools'
//!   capacity, written under the node's lease (gone when the node is);
//! - `claims/<tenant>/<pool>` — [`ClaimRecord`]: which node holds the tenant's claim
//!   in that pool, created only if absent, under the *holding* node's lease, so a
//!   lost node's claims vanish with its lease and the tenant can be claimed elsewhere.
//!
//! Rooms: [`etcd`] (the client), [`membership`] (lease, capacity, fencing,
//! reconcile), [`placement`] (which node takes a new tenant). The HTTP side —
//! routing a tenant request to its holder — is `api/forward.rs`.
//! This module must not touch a pool's records: it acts on the pools only through
//! the manager, as the API does.

pub mod etcd;
pub mod membership;
pub mod placement;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::config::Config;
use crate::manager::ContainerManager;
use etcd::{Created, EtcdClient, EtcdError, Kv};

/// Cluster mode's settings, parsed once from [`Config`].
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub endpoints: Vec<String>,
    pub cluster: String,
    pub node_id: String,
    pub advertise_url: String,
    pub lease_ttl: Duration,
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

impl ClusterConfig {
    /// None in single-node mode; an error names the variable that is wrong.
    pub fn from_config(config: &Config) -> Result<Option<Self>, String> {
        let Some(raw) = config.etcd_endpoints.as_deref() else {
            return Ok(None);
        };
        let endpoints: Vec<String> = raw
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned)
            .collect();
        if endpoints.is_empty() {
            return Err(format!(
                "BOILERHOUSE_ETCD_ENDPOINTS={raw:?}: give one or more etcd client URLs, comma-separated"
            ));
        }
        if let Some(bad) = endpoints.iter().find(|e| !e.starts_with("http://")) {
            return Err(format!(
                "BOILERHOUSE_ETCD_ENDPOINTS: {bad:?} must be an http:// URL (TLS to etcd is not supported; put etcd on a private network)"
            ));
        }
        if !is_name(&config.cluster) {
            return Err(format!(
                "BOILERHOUSE_CLUSTER={:?}: use 1-64 characters from A-Z a-z 0-9 . _ -",
                config.cluster
            ));
        }
        let node_id = config.node_id.clone().unwrap_or_else(hostname);
        if !is_name(&node_id) {
            return Err(format!(
                "BOILERHOUSE_NODE_ID={node_id:?}: use 1-64 characters from A-Z a-z 0-9 . _ - (the default is the hostname)"
            ));
        }
        let advertise_url = config
            .advertise_url
            .clone()
            .unwrap_or_else(|| format!("http://{}:{}", hostname(), config.api_port));
        if !advertise_url.starts_with("http://") {
            return Err(format!(
                "BOILERHOUSE_ADVERTISE_URL={advertise_url:?}: must be an http:// URL the other nodes reach this node's API at"
            ));
        }
        if config.cluster_lease_ttl_ms < 2_000 {
            return Err(format!(
                "BOILERHOUSE_CLUSTER_LEASE_TTL_MS={}: must be at least 2000 (etcd's shortest lease is longer than a second)",
                config.cluster_lease_ttl_ms
            ));
        }
        Ok(Some(Self {
            endpoints,
            cluster: config.cluster.clone(),
            node_id,
            advertise_url: advertise_url.trim_end_matches('/').to_owned(),
            lease_ttl: Duration::from_millis(config.cluster_lease_ttl_ms),
        }))
    }

    /// The lease TTL in etcd's unit, whole seconds, rounded up.
    pub fn ttl_secs(&self) -> i64 {
        self.lease_ttl.as_millis().div_ceil(1000) as i64
    }

    fn prefix(&self) -> String {
        format!("/boilerhouse/{}/", self.cluster)
    }

    pub fn node_key(&self, node: &str) -> String {
        format!("{}nodes/{node}", self.prefix())
    }

    pub fn nodes_prefix(&self) -> String {
        format!("{}nodes/", self.prefix())
    }

    pub fn claim_key(&self, tenant: &str, pool: &str) -> String {
        format!("{}claims/{tenant}/{pool}", self.prefix())
    }

    pub fn tenant_prefix(&self, tenant: &str) -> String {
        format!("{}claims/{tenant}/", self.prefix())
    }

    pub fn claims_prefix(&self) -> String {
        format!("{}claims/", self.prefix())
    }
}

/// One pool's capacity on one node, as published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolCapacity {
    pub pool_id: String,
    pub idle: usize,
    pub starting: usize,
    pub claimed: usize,
    pub max: usize,
}

/// `nodes/<node>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeRecord {
    pub node_id: String,
    pub url: String,
    /// The node's lease: claims it holds are written under it.
    pub lease: i64,
    pub pools: Vec<PoolCapacity>,
    pub updated_at: chrono::DateTime<chrono::Utc>,
}

/// `claims/<tenant>/<pool>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRecord {
    pub node_id: String,
    pub tenant_id: String,
    pub pool_id: String,
    /// None while the claim is being placed or provisioned.
    pub container_id: Option<String>,
    pub since: chrono::DateTime<chrono::Utc>,
}

impl ClaimRecord {
    pub fn parse(kv: &Kv) -> Option<Self> {
        serde_json::from_slice(&kv.value).ok()
    }
}

/// Why a tenant request cannot be answered in cluster mode.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cannot reach the cluster's claim registry: {0}")]
    Etcd(#[from] EtcdError),
    #[error("{0}")]
    Fenced(String),
    #[error("tenant {tenant} is held by node {node}, which is not registered in etcd: its claim frees when that node's lease expires (at most {ttl_secs} s)")]
    HolderUnknown {
        tenant: String,
        node: String,
        ttl_secs: i64,
    },
}

/// This node's membership: the etcd client, its lease, and whether etcd confirmed
/// the lease recently. Shared by the API (through `AppState`) and the membership task.
pub struct Cluster {
    pub config: ClusterConfig,
    etcd: EtcdClient,
    manager: Arc<ContainerManager>,
    /// The current lease; 0 while none (not joined yet, or lost and reconciling).
    lease: AtomicI64,
    /// When etcd last confirmed the lease.
    confirmed: Mutex<Option<Instant>>,
    /// The capacity last written to the node record.
    published: Mutex<Option<Vec<PoolCapacity>>>,
    /// One lock per tenant with a request in flight on this node (see
    /// [`Cluster::tenant_lock`]).
    tenant_locks: Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// For forwarding requests to other nodes.
    pub http: reqwest::Client,
    pub api_token: Option<String>,
}

impl Cluster {
    pub fn new(config: ClusterConfig, manager: Arc<ContainerManager>) -> Self {
        let api_token = manager.config().api_token.clone();
        Self {
            etcd: EtcdClient::new(config.endpoints.clone()),
            config,
            manager,
            lease: AtomicI64::new(0),
            confirmed: Mutex::new(None),
            published: Mutex::new(None),
            tenant_locks: Mutex::default(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(600))
                .build()
                .unwrap_or_default(),
            api_token,
        }
    }

    /// Serializes this node's claims and releases of one tenant, from reading its
    /// key to the key's last write: otherwise a release (or a failed claim)
    /// deleting the key could interleave with a claim that read it a moment earlier
    /// and then claims locally with no key, which another node could then place
    /// anew. Held only while the request is answered here, never while it is
    /// forwarded (the other node may forward back). Concurrent claims of one
    /// tenant on one node are reuses after the first, so the wait is short.
    pub async fn tenant_lock(&self, tenant: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = match self.tenant_locks.lock() {
            Ok(mut locks) => {
                // Locks no request holds or waits for.
                locks.retain(|_, l| Arc::strong_count(l) > 1);
                locks.entry(tenant.to_owned()).or_default().clone()
            }
            Err(_) => Arc::default(),
        };
        lock.lock_owned().await
    }

    pub fn node_id(&self) -> &str {
        &self.config.node_id
    }

    pub fn etcd(&self) -> &EtcdClient {
        &self.etcd
    }

    pub fn manager(&self) -> &ContainerManager {
        &self.manager
    }

    pub fn lease(&self) -> i64 {
        self.lease.load(Ordering::SeqCst)
    }

    /// etcd renewed the lease on a request sent at `sent`: the lease runs in etcd
    /// until at least `sent + TTL`.
    fn confirm(&self, sent: Instant) {
        if let Ok(mut c) = self.confirmed.lock() {
            *c = Some(sent);
        }
    }

    /// How long after the last confirmed renewal this node fences itself: two
    /// thirds of the TTL, so it stops answering *before* etcd can expire the lease
    /// and let another node claim its tenants.
    fn fence_after(&self) -> Duration {
        self.config.lease_ttl * 2 / 3
    }

    /// Some(sentence) when this node must not place or accept claims: it holds no
    /// lease, or etcd has not confirmed it within the lease's TTL.
    pub fn fenced(&self) -> Option<String> {
        let (node, cluster) = (&self.config.node_id, &self.config.cluster);
        if self.lease() == 0 {
            return Some(format!(
                "node {node} holds no lease in etcd for cluster {cluster} (not joined yet, or lost it and is reconciling); try another node or retry shortly"
            ));
        }
        let last = self.confirmed.lock().ok().and_then(|c| *c);
        match last {
            Some(t) if t.elapsed() < self.fence_after() => None,
            _ => Some(format!(
                "node {node} has not reached etcd {} (it fences after {} ms; its lease is {} ms) and is fenced: it accepts no claims until etcd confirms it again",
                last.map_or("since it started".to_owned(), |t| format!(
                    "for {} ms",
                    t.elapsed().as_millis()
                )),
                self.fence_after().as_millis(),
                self.config.lease_ttl.as_millis()
            )),
        }
    }

    /// The node record of `node`, if its lease is alive.
    pub async fn node(&self, node: &str) -> Result<Option<NodeRecord>, EtcdError> {
        Ok(self
            .etcd
            .get(&self.config.node_key(node))
            .await?
            .and_then(|kv| serde_json::from_slice(&kv.value).ok()))
    }

    /// Every live node's record.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, EtcdError> {
        Ok(self
            .etcd
            .get_prefix(&self.config.nodes_prefix())
            .await?
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect())
    }

    /// The tenant's claim key in `pool` and its record, if any.
    pub async fn claim_of(
        &self,
        tenant: &str,
        pool: &str,
    ) -> Result<Option<(Kv, ClaimRecord)>, EtcdError> {
        let kv = self.etcd.get(&self.config.claim_key(tenant, pool)).await?;
        Ok(kv.and_then(|kv| ClaimRecord::parse(&kv).map(|r| (kv, r))))
    }

    /// Every claim the tenant holds, in any pool.
    pub async fn claims_of(&self, tenant: &str) -> Result<Vec<(Kv, ClaimRecord)>, EtcdError> {
        Ok(self
            .etcd
            .get_prefix(&self.config.tenant_prefix(tenant))
            .await?
            .into_iter()
            .filter_map(|kv| ClaimRecord::parse(&kv).map(|r| (kv, r)))
            .collect())
    }

    /// Registers the tenant's claim in `pool` as this node's, if no node holds it.
    /// Returns the key's state afterwards: ours (Yes) or another's (Exists).
    pub async fn register_claim(&self, tenant: &str, pool: &str) -> Result<Created, ClusterError> {
        if let Some(why) = self.fenced() {
            return Err(ClusterError::Fenced(why));
        }
        let record = ClaimRecord {
            node_id: self.config.node_id.clone(),
            tenant_id: tenant.to_owned(),
            pool_id: pool.to_owned(),
            container_id: None,
            since: chrono::Utc::now(),
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        Ok(self
            .etcd
            .create(&self.config.claim_key(tenant, pool), &value, self.lease())
            .await?)
    }

    /// After a local claim succeeded: the key names the container (one write, the
    /// first time only; `known` is the record read before the claim, if any).
    pub async fn claimed(
        &self,
        tenant: &str,
        pool: &str,
        container: &str,
        known: Option<&ClaimRecord>,
    ) {
        if known.is_some_and(|r| r.container_id.as_deref() == Some(container)) {
            return;
        }
        let outcome = async {
            let Some((kv, mut record)) = self.claim_of(tenant, pool).await? else {
                return Ok::<_, EtcdError>(());
            };
            if record.node_id != self.config.node_id
                || record.container_id.as_deref() == Some(container)
            {
                return Ok(());
            }
            record.container_id = Some(container.to_owned());
            let value = serde_json::to_vec(&record).unwrap_or_default();
            self.etcd
                .replace(&kv.key, kv.mod_revision, &value, self.lease())
                .await?;
            Ok(())
        }
        .await;
        if let Err(e) = outcome {
            tracing::warn!(tenant, pool, container, error = %e, "could not record the claim's container in etcd");
        }
    }

    /// After a local claim failed or a release succeeded: the key goes if this node
    /// no longer holds the tenant in that pool (guarded by the key's revision, so a
    /// newer claim's key is never deleted).
    pub async fn forget_if_unheld(&self, tenant: &str, pool: &str) {
        let held = self
            .manager
            .claims()
            .await
            .iter()
            .any(|c| c.tenant_id == tenant && c.pool_id == pool);
        if held {
            return;
        }
        let outcome = async {
            if let Some((kv, record)) = self.claim_of(tenant, pool).await? {
                if record.node_id == self.config.node_id {
                    self.etcd.delete_at(&kv.key, kv.mod_revision).await?;
                }
            }
            Ok::<_, EtcdError>(())
        }
        .await;
        if let Err(e) = outcome {
            tracing::warn!(tenant, pool, error = %e, "could not remove the claim from etcd; it goes with this node's lease or the next release");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(vars: &[(&str, &str)]) -> Result<Config, crate::config::ConfigError> {
        Config::from_vars(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn without_endpoints_there_is_no_cluster() {
        let c = config(&[]).unwrap();
        assert!(ClusterConfig::from_config(&c).unwrap().is_none());
    }

    #[test]
    fn cluster_variables_are_parsed_with_their_defaults() {
        let c = config(&[
            (
                "BOILERHOUSE_ETCD_ENDPOINTS",
                "http://a:2379, http://b:2379/",
            ),
            ("BOILERHOUSE_NODE_ID", "node-a"),
            ("BOILERHOUSE_API_PORT", "3100"),
        ])
        .unwrap();
        let cc = ClusterConfig::from_config(&c).unwrap().unwrap();
        assert_eq!(cc.endpoints, vec!["http://a:2379", "http://b:2379/"]);
        assert_eq!(cc.cluster, "default");
        assert_eq!(cc.node_id, "node-a");
        assert!(cc.advertise_url.ends_with(":3100"), "{}", cc.advertise_url);
        assert_eq!(cc.ttl_secs(), 10);
        assert_eq!(
            cc.claim_key("t", "web"),
            "/boilerhouse/default/claims/t/web"
        );
    }

    #[test]
    fn bad_cluster_variables_stop_start_up_naming_them() {
        for (vars, named) in [
            (
                vec![("BOILERHOUSE_ETCD_ENDPOINTS", "https://a:2379")],
                "BOILERHOUSE_ETCD_ENDPOINTS",
            ),
            (
                vec![("BOILERHOUSE_ETCD_ENDPOINTS", " , ")],
                "BOILERHOUSE_ETCD_ENDPOINTS",
            ),
            (
                vec![
                    ("BOILERHOUSE_ETCD_ENDPOINTS", "http://a"),
                    ("BOILERHOUSE_CLUSTER", "a/b"),
                ],
                "BOILERHOUSE_CLUSTER",
            ),
            (
                vec![
                    ("BOILERHOUSE_ETCD_ENDPOINTS", "http://a"),
                    ("BOILERHOUSE_CLUSTER_LEASE_TTL_MS", "500"),
                ],
                "BOILERHOUSE_CLUSTER_LEASE_TTL_MS",
            ),
            (
                vec![
                    ("BOILERHOUSE_ETCD_ENDPOINTS", "http://a"),
                    ("BOILERHOUSE_ADVERTISE_URL", "node-a:3000"),
                ],
                "BOILERHOUSE_ADVERTISE_URL",
            ),
        ] {
            let err = config(&vars).expect_err("refused").to_string();
            assert!(err.contains(named), "{vars:?}: {err}");
        }
    }
}
