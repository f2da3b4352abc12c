//! This node's life in the cluster: join (lease, reconcile, node record), keep the
//! lease alive, publish capacity when it changes (at most once per tick), fence when
//! etcd stops confirming the lease, and reconcile when it comes back.
//!
//! Reconcile, after every new lease (start-up, or a lease that expired while etcd
//! was out of reach): each local claim's key is moved under the new lease when it
//! still names this node or is absent; a claim whose key names another node was
//! claimed there meanwhile, so it is released here *without upload* (the newer
//! owner's state must never be overwritten) after its state dir is copied to
//! `DATA_DIR/cluster-orphans/` for the operator. Keys naming this node for tenants
//! it no longer holds are deleted.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::etcd::{Created, EtcdError};
use super::{ClaimRecord, Cluster, NodeRecord, PoolCapacity};
use crate::shutdown::Shutdown;
use crate::tenant::TenantId;

impl Cluster {
    /// How often the lease is renewed and capacity compared: a few times per TTL,
    /// so one lost keep-alive never costs the lease; at least every 500 ms so
    /// published capacity lags by no more than that.
    fn tick(&self) -> Duration {
        (self.config.lease_ttl / 4).min(Duration::from_millis(500))
    }

    /// Joins once (so a node that reaches etcd serves its tenants from its first
    /// request), then keeps the membership alive in a task of the daemon's shutdown.
    pub async fn start(self: &Arc<Self>, shutdown: &Shutdown) {
        if let Err(e) = self.join().await {
            tracing::warn!(node = %self.config.node_id, error = %e, "cannot join the cluster yet; fenced until etcd answers");
        }
        let me = self.clone();
        let stop = shutdown.clone();
        shutdown.spawn(async move {
            tokio::select! {
                _ = me.run() => {}
                _ = stop.begun() => {}
            }
        });
    }

    async fn run(&self) {
        let mut failing = false;
        loop {
            tokio::time::sleep(self.tick()).await;
            let result = if self.lease() == 0 {
                self.join().await
            } else {
                self.renew().await
            };
            match result {
                Ok(()) if failing => {
                    failing = false;
                    tracing::info!(node = %self.config.node_id, "etcd answers again");
                }
                Ok(()) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(node = %self.config.node_id, error = %e, "etcd does not answer; fenced once the lease runs out");
                }
                Err(_) => {}
            }
        }
    }

    async fn renew(&self) -> Result<(), EtcdError> {
        let lease = self.lease();
        let sent = Instant::now();
        if self.etcd().keep_alive(lease).await? <= 0 {
            // etcd dropped the lease and every key under it: other nodes may hold
            // our tenants now. No claims until the reconcile of the next join.
            self.lease.store(0, Ordering::SeqCst);
            tracing::warn!(node = %self.config.node_id, lease, "the node's lease expired in etcd: fenced, reconciling");
            return self.join().await;
        }
        self.confirm(sent);
        self.publish(false).await
    }

    /// A new lease, reconcile, node record; the lease becomes current (unfenced)
    /// only once all three are done.
    async fn join(&self) -> Result<(), EtcdError> {
        let sent = Instant::now();
        let lease = self.etcd().grant(self.config.ttl_secs()).await?;
        let previous = self.node(&self.config.node_id).await?.map(|r| r.lease);
        self.reconcile(lease).await?;
        self.lease.store(lease, Ordering::SeqCst);
        self.confirm(sent);
        self.publish(true).await?;
        // A restart within the old lease's TTL: its keys were moved; end it so the
        // old node record does not linger.
        if let Some(old) = previous.filter(|&old| old != lease) {
            let _ = self.etcd().revoke(old).await;
            self.publish(true).await?;
        }
        tracing::info!(node = %self.config.node_id, cluster = %self.config.cluster, lease, url = %self.config.advertise_url, "joined the cluster");
        Ok(())
    }

    /// This node's pools' capacity, read live.
    pub async fn capacity(&self) -> Vec<PoolCapacity> {
        self.manager()
            .pool_views()
            .await
            .into_iter()
            .map(|p| PoolCapacity {
                pool_id: p.id,
                idle: p.idle_count,
                starting: p.starting_count,
                claimed: p.claimed_count,
                max: p.max_size,
            })
            .collect()
    }

    /// Writes the node record when capacity changed (or `force`).
    async fn publish(&self, force: bool) -> Result<(), EtcdError> {
        let pools = self.capacity().await;
        let same = self
            .published
            .lock()
            .ok()
            .is_some_and(|p| p.as_ref() == Some(&pools));
        if same && !force {
            return Ok(());
        }
        let record = NodeRecord {
            node_id: self.config.node_id.clone(),
            url: self.config.advertise_url.clone(),
            lease: self.lease(),
            pools: pools.clone(),
            updated_at: chrono::Utc::now(),
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        self.etcd()
            .put(
                &self.config.node_key(&self.config.node_id),
                &value,
                self.lease(),
            )
            .await?;
        if let Ok(mut p) = self.published.lock() {
            *p = Some(pools);
        }
        Ok(())
    }

    async fn reconcile(&self, lease: i64) -> Result<(), EtcdError> {
        let me = self.config.node_id.clone();
        let local = self.manager().claims().await;
        for claim in &local {
            let key = self.config.claim_key(&claim.tenant_id, &claim.pool_id);
            let record = ClaimRecord {
                node_id: me.clone(),
                tenant_id: claim.tenant_id.clone(),
                pool_id: claim.pool_id.clone(),
                container_id: Some(claim.container_id.clone()),
                since: claim.claimed_at,
            };
            let value = serde_json::to_vec(&record).unwrap_or_default();
            let theirs = match self.etcd().create(&key, &value, lease).await? {
                Created::Yes(_) => continue,
                Created::Exists(kv) => match ClaimRecord::parse(&kv) {
                    Some(r) if r.node_id == me => {
                        self.etcd()
                            .replace(&key, kv.mod_revision, &value, lease)
                            .await?;
                        continue;
                    }
                    Some(r) => r.node_id,
                    None => "an unreadable record".into(),
                },
            };
            self.give_up(claim, &theirs).await;
        }
        // Keys naming this node without a local claim (released while etcd was out
        // of reach, or a claim that never finished before a crash).
        for kv in self.etcd().get_prefix(&self.config.claims_prefix()).await? {
            let Some(r) = ClaimRecord::parse(&kv) else {
                continue;
            };
            let held = local
                .iter()
                .any(|c| c.tenant_id == r.tenant_id && c.pool_id == r.pool_id);
            if r.node_id == me && !held {
                self.etcd().delete_at(&kv.key, kv.mod_revision).await?;
            }
        }
        Ok(())
    }

    /// Releases a claim another node took over, without upload, keeping a copy of
    /// its state for the operator.
    async fn give_up(&self, claim: &crate::pool::ClaimView, holder: &str) {
        let config = self.manager().config();
        let from = config.state_dir.join(&claim.container_id);
        let to = config.data_dir.join("cluster-orphans").join(format!(
            "{}.{}.{}",
            claim.tenant_id, claim.pool_id, claim.container_id
        ));
        match copy_tree(&from, &to) {
            Ok(()) => tracing::warn!(
                tenant = %claim.tenant_id, pool = %claim.pool_id, holder,
                kept = %to.display(),
                "the tenant was claimed on another node while this one was out of the cluster: releasing it here without upload; its local state is kept for the operator"
            ),
            Err(e) => tracing::error!(
                tenant = %claim.tenant_id, pool = %claim.pool_id, holder, error = %e,
                "could not copy the local state of a claim taken over by another node; releasing it without upload anyway (the other node's state wins)"
            ),
        }
        let Ok(tenant) = TenantId::parse(&claim.tenant_id) else {
            return;
        };
        let pool = self.manager().pool(&claim.pool_id);
        if let Err(e) = self.manager().release(&tenant, pool, false).await {
            tracing::error!(tenant = %claim.tenant_id, pool = %claim.pool_id, error = %e, "could not release a claim another node holds now");
        }
    }
}

/// Copies a directory tree; symlinks a tenant planted are not followed (skipped).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    let mut stack: Vec<(PathBuf, PathBuf)> = vec![(from.to_path_buf(), to.to_path_buf())];
    while let Some((src, dst)) = stack.pop() {
        let entries = match std::fs::read_dir(&src) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            let target = dst.join(entry.file_name());
            if kind.is_dir() {
                std::fs::create_dir_all(&target)?;
                stack.push((entry.path(), target));
            } else if kind.is_file() {
                std::fs::copy(entry.path(), &target)?;
            }
        }
    }
    Ok(())
}
