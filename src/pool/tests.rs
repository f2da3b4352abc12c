//! Pool logic against the in-memory runtime: fast, deterministic, no Docker.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::activity::ActivityLog;
use crate::config::Config;
use crate::fsutil;
use crate::ledger::Ledger;
use crate::runtime::memory::MemoryRuntime;
use crate::runtime::{EventKind, RuntimeEvent};
use crate::sync::SyncEngine;
use crate::tenant::TenantId;
use crate::workload::{Recycle, Workload};

struct Fixture {
    _dir: tempfile::TempDir,
    ctx: Arc<PoolContext>,
    runtime: Arc<MemoryRuntime>,
}

fn fixture(max_containers: usize) -> Fixture {
    fixture_with(
        max_containers,
        SyncEngine::new("rclone".into(), 1, Duration::from_secs(1)),
    )
}

fn fixture_with(max_containers: usize, sync: SyncEngine) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s).display().to_string();
    let config = Config::from_vars(vec![
        ("BOILERHOUSE_STATE_DIR".into(), p("s")),
        ("BOILERHOUSE_SECRETS_DIR".into(), p("x")),
        ("BOILERHOUSE_SOCKET_DIR".into(), p("k")),
        ("BOILERHOUSE_DATA_DIR".into(), p("d")),
        (
            "BOILERHOUSE_MAX_CONTAINERS".into(),
            max_containers.to_string(),
        ),
        ("BOILERHOUSE_CLAIM_TIMEOUT_MS".into(), "3000".into()),
    ])
    .unwrap();
    let runtime = Arc::new(MemoryRuntime::default());
    let ctx = Arc::new(PoolContext {
        sync,
        ledger: Ledger::open(&config.data_dir).unwrap(),
        capacity: NodeCapacity::new(config.max_containers),
        config: Arc::new(config),
        runtime: runtime.clone(),
        activity: Arc::new(ActivityLog::default()),
        fence: crate::fence::Fence::default(),
    });
    Fixture {
        _dir: dir,
        ctx,
        runtime,
    }
}

fn workload(id: &str, min: usize, max: usize) -> Arc<Workload> {
    let mut w = crate::workload::builtin_default("img");
    w.id = crate::workload::WorkloadId::parse(id).unwrap();
    w.pool.min_size = Some(min);
    w.pool.max_size = Some(max);
    w.pool.recycle = Recycle::Reuse;
    Arc::new(w)
}

fn req(tenant: &str, wait_ms: u64) -> ClaimRequest {
    ClaimRequest {
        tenant: TenantId::parse(tenant).unwrap(),
        queue_wait: Duration::from_millis(wait_ms),
        metadata: None,
        secrets: None,
    }
}

async fn idle(pool: &PoolHandle, n: usize) {
    for _ in 0..200 {
        if pool.snapshot().await.unwrap().pool.idle_count >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("pool never reached {n} idle");
}

/// Waits until `n` claims wait in the pool's queue.
async fn queued(pool: &PoolHandle, n: usize) {
    for _ in 0..200 {
        if pool.snapshot().await.unwrap().pool.queued_count >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the queue never held {n} claims");
}

#[tokio::test]
async fn warms_to_min_size_and_a_warm_claim_makes_no_engine_call() {
    let f = fixture(10);
    // max = min: the claim triggers no refill, so any call would be the claim's own.
    let pool = spawn(f.ctx.clone(), workload("web", 3, 3), vec![]);
    idle(&pool, 3).await;
    let before = f.runtime.total_calls();
    let grant = pool.claim(req("a", 0)).await.unwrap();
    assert!(!grant.reused && !grant.cold);
    // A round trip through the actor: every message the claim caused is handled.
    pool.snapshot().await.unwrap();
    assert_eq!(
        f.runtime.total_calls(),
        before,
        "no engine call on a warm claim"
    );
    let again = pool.claim(req("a", 0)).await.unwrap();
    assert!(again.reused);
    assert_eq!(again.container.id, grant.container.id);
}

#[tokio::test]
async fn concurrent_claims_for_one_tenant_share_one_container() {
    let f = fixture(10);
    let pool = spawn(f.ctx.clone(), workload("web", 0, 5), vec![]);
    *f.runtime.create_delay.lock().unwrap() = Duration::from_millis(50);
    let claims: Vec<_> = (0..20)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.claim(req("same", 1000)).await.unwrap() })
        })
        .collect();
    let mut ids = std::collections::HashSet::new();
    let mut reused = 0;
    for c in claims {
        let g = c.await.unwrap();
        ids.insert(g.container.id);
        reused += usize::from(g.reused);
    }
    assert_eq!(ids.len(), 1);
    assert_eq!(reused, 19);
}

#[tokio::test]
async fn at_capacity_claims_queue_in_order_or_fail_fast() {
    let f = fixture(10);
    let pool = spawn(f.ctx.clone(), workload("web", 1, 1), vec![]);
    idle(&pool, 1).await;
    pool.claim(req("a", 0)).await.unwrap();
    assert!(matches!(
        pool.claim(req("fast", 0)).await,
        Err(PoolError::Exhausted(_))
    ));
    let b = tokio::spawn({
        let p = pool.clone();
        async move { p.claim(req("b", 2000)).await }
    });
    queued(&pool, 1).await;
    let c = tokio::spawn({
        let p = pool.clone();
        async move { p.claim(req("c", 2000)).await }
    });
    queued(&pool, 2).await;
    pool.release(TenantId::parse("a").unwrap(), false)
        .await
        .unwrap();
    let b = b.await.unwrap().unwrap();
    assert!(b.cold, "it waited in the queue");
    assert!(!c.is_finished(), "c is behind b");
    pool.release(TenantId::parse("b").unwrap(), false)
        .await
        .unwrap();
    c.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_queued_claim_gives_up_with_exhausted() {
    let f = fixture(10);
    let pool = spawn(f.ctx.clone(), workload("web", 1, 1), vec![]);
    idle(&pool, 1).await;
    pool.claim(req("a", 0)).await.unwrap();
    match pool.claim(req("b", 300)).await {
        Err(PoolError::Exhausted(m)) => assert!(m.contains("1 claimed of at most 1"), "{m}"),
        other => panic!("expected exhausted, got {other:?}"),
    }
    assert_eq!(
        pool.snapshot().await.unwrap().pool.queued_count,
        0,
        "the claim left the queue when it gave up"
    );
}

#[tokio::test]
async fn failing_creation_backs_off_and_reports_the_error() {
    let f = fixture(10);
    f.runtime.fail_create.store(true, Ordering::SeqCst);
    let pool = spawn(f.ctx.clone(), workload("web", 2, 4), vec![]);
    let view = loop {
        let view = pool.snapshot().await.unwrap().pool;
        if view.last_error.is_some() {
            break view;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(view.status, "error");
    assert!(view
        .last_error
        .unwrap()
        .message
        .contains("injected failure"));
    assert!(matches!(
        pool.claim(req("a", 1000)).await,
        Err(PoolError::Unavailable(_))
    ));
    // Backoff: far fewer attempts than a hot loop would make.
    assert!(
        f.runtime.calls("create") <= 4,
        "{}",
        f.runtime.calls("create")
    );
    f.runtime.fail_create.store(false, Ordering::SeqCst);
    idle(&pool, 2).await;
}

/// Once creations fail, one runs at a time: claims that queue meanwhile do not
/// start a batch of containers of an image that keeps failing.
#[tokio::test]
async fn a_failing_pool_probes_with_one_creation_at_a_time_whatever_queues() {
    let f = fixture(10);
    f.runtime.fail_create.store(true, Ordering::SeqCst);
    *f.runtime.create_delay.lock().unwrap() = Duration::from_millis(300);
    let pool = spawn(f.ctx.clone(), workload("web", 2, 8), vec![]);
    while pool.snapshot().await.unwrap().pool.last_error.is_none() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Both first creations ran together; from here on the pool is failing.
    while pool.snapshot().await.unwrap().pool.starting_count > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f.runtime.reset_peak_creates();
    let claims: Vec<_> = ["a", "b", "c"]
        .into_iter()
        .map(|t| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.claim(req(t, 5000)).await })
        })
        .collect();
    // Two more attempts (after 1 s and 2 s of backoff).
    for _ in 0..600 {
        if f.runtime.calls("create") >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        f.runtime.calls("create") >= 4,
        "{}",
        f.runtime.calls("create")
    );
    assert_eq!(
        f.runtime.peak_creates(),
        1,
        "creations at once while failing"
    );
    f.runtime.fail_create.store(false, Ordering::SeqCst);
    for c in claims {
        let _ = c.await.unwrap();
    }
}

#[tokio::test]
async fn a_starting_container_joins_the_idle_set_on_its_health_event() {
    let f = fixture(10);
    f.runtime.start_unready.store(true, Ordering::SeqCst);
    let pool = spawn(f.ctx.clone(), workload("web", 1, 1), vec![]);
    let id = loop {
        let snap = pool.snapshot().await.unwrap();
        if let Some(s) = snap.pool.starting.first().filter(|s| s.ready_by.is_some()) {
            break s.container_id.clone();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let view = pool.snapshot().await.unwrap().pool;
    assert_eq!((view.idle_count, view.starting_count), (0, 1));
    assert!(view.last_error.is_none(), "starting is not failing");
    pool.event(RuntimeEvent {
        pool: "web".into(),
        container_id: id,
        kind: EventKind::Healthy,
    })
    .await;
    idle(&pool, 1).await;
    assert_eq!(pool.snapshot().await.unwrap().pool.starting_count, 0);
}

#[tokio::test]
async fn the_node_cap_holds_across_pools() {
    let f = fixture(3);
    let a = spawn(f.ctx.clone(), workload("a", 2, 5), vec![]);
    let b = spawn(f.ctx.clone(), workload("b", 2, 5), vec![]);
    // Both pools want 2; the node allows 3. Never more at any look, until 3 run.
    for _ in 0..200 {
        let total = a.snapshot().await.unwrap().pool.current_size
            + b.snapshot().await.unwrap().pool.current_size;
        assert!(
            total <= 3 && f.runtime.running() <= 3,
            "cap exceeded: {total}"
        );
        if total == 3 && f.runtime.running() == 3 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the pools never used the node's 3 slots");
}

#[tokio::test]
async fn scaling_sets_the_idle_target() {
    let f = fixture(10);
    let pool = spawn(f.ctx.clone(), workload("web", 1, 5), vec![]);
    idle(&pool, 1).await;
    let out = pool.scale(4).await.unwrap();
    assert_eq!((out.previous_size, out.new_size), (1, 4));
    idle(&pool, 4).await;
    pool.scale(2).await.unwrap();
    for _ in 0..100 {
        if pool.snapshot().await.unwrap().pool.current_size == 2 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("did not scale down");
}

#[tokio::test]
async fn reuse_returns_the_container_to_the_idle_set_wiped() {
    let f = fixture(10);
    let pool = spawn(f.ctx.clone(), workload("web", 1, 1), vec![]);
    idle(&pool, 1).await;
    let g = pool.claim(req("a", 0)).await.unwrap();
    std::fs::write(g.container.dirs.state.join("f"), "x").unwrap();
    pool.release(TenantId::parse("a").unwrap(), true)
        .await
        .unwrap();
    idle(&pool, 1).await;
    assert!(fsutil::is_empty(&g.container.dirs.state));
    let g2 = pool.claim(req("b", 0)).await.unwrap();
    assert_eq!(g2.container.id, g.container.id);
    assert!(matches!(
        pool.release(TenantId::parse("zzz").unwrap(), true).await,
        Err(PoolError::NotClaimed)
    ));
}

/// A rollout at `max_size`: no room for a surge, so one old idle container at a
/// time makes room for a new one; the pool never holds more than `max_size`, and
/// ends with only containers of the new spec.
#[tokio::test]
async fn a_rollout_at_max_size_replaces_one_at_a_time_within_the_cap() {
    let f = fixture(10);
    let (pool, control) = spawn_controlled(
        f.ctx.clone(),
        workload("web", 2, 2),
        vec![],
        Default::default(),
    );
    idle(&pool, 2).await;
    let mut changed = (*workload("web", 2, 2)).clone();
    changed.image = "img2".into();
    let applied = control.apply(Arc::new(changed)).await.unwrap();
    assert_eq!(
        applied,
        Applied::Rollout {
            idle: 2,
            claimed: 0
        }
    );
    for _ in 0..500 {
        let s = pool.snapshot().await.unwrap();
        assert!(s.pool.current_size <= 2, "above max_size: {:?}", s.pool);
        let all_new = s.containers.iter().all(|c| c.spec_hash == s.pool.spec_hash);
        if s.pool.rollout.is_none() && all_new && s.pool.idle_count == 2 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the rollout never finished");
}

/// Draining: claims are refused as removed, idle containers go, and the actor
/// ends (telling the manager) once the last container is gone.
#[tokio::test]
async fn a_drained_pool_refuses_claims_and_ends_with_its_last_container() {
    let f = fixture(10);
    let (pool, control) = spawn_controlled(
        f.ctx.clone(),
        workload("web", 2, 4),
        vec![],
        Default::default(),
    );
    idle(&pool, 2).await;
    pool.claim(req("a", 0)).await.unwrap();
    let (claimed, ended) = control.drain().await.unwrap();
    assert_eq!(claimed, 1);
    assert!(matches!(
        pool.claim(req("b", 0)).await,
        Err(PoolError::Removed(_))
    ));
    pool.release(TenantId::parse("a").unwrap(), false)
        .await
        .unwrap();
    ended.await.expect("the pool ends once drained");
    assert!(matches!(pool.snapshot().await, Err(PoolError::Stopped)));
    assert_eq!(f.ctx.capacity.used(), 0, "every node slot is back");
}

/// While a claim restores state, its replacement waits for the restore to end — if
/// another idle container is there to hand out; with none left it is created at once.
#[tokio::test]
async fn a_claims_replacement_waits_for_its_restore_while_another_is_idle() {
    use crate::workload::spec::{SinkSpec, SyncDirection, SyncMapping, SyncMode, SyncSpec};
    use std::os::unix::fs::PermissionsExt;
    // A "restore" that takes 1 s and finds nothing (rclone's exit 3), against an
    // https sink (so rclone, not the engine's own download) that accepts connections.
    let bin_dir = tempfile::tempdir().unwrap();
    let bin = bin_dir.path().join("rclone");
    std::fs::write(&bin, "#!/bin/sh\nsleep 1\nexit 3\n").unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let endpoint = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = endpoint.local_addr().unwrap().port();
    let f = fixture_with(10, SyncEngine::new(bin, 4, Duration::from_secs(30)));
    let with_sync = |id: &str, min: usize| {
        let mut w = (*workload(id, min, 4)).clone();
        w.sync = Some(SyncSpec {
            sink: SinkSpec {
                kind: "s3".into(),
                bucket: "b".into(),
                region: None,
                endpoint: Some(format!("https://127.0.0.1:{port}")),
                access_key_id: Some("k".into()),
                secret_access_key: Some("s".into()),
                prefix: "t/${tenantId}/".into(),
                rclone_flags: vec![],
            },
            mappings: vec![SyncMapping {
                path: "/".into(),
                direction: SyncDirection::Bidirectional,
                mode: SyncMode::Sync,
                pattern: None,
            }],
            policy: Default::default(),
        });
        Arc::new(w)
    };
    for (min, deferred) in [(2, true), (1, false)] {
        let pool = spawn(f.ctx.clone(), with_sync(&format!("p{min}"), min), vec![]);
        idle(&pool, min).await;
        let claiming = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.claim(req("t", 0)).await })
        };
        tokio::time::sleep(Duration::from_millis(400)).await;
        let during = pool.snapshot().await.unwrap().pool;
        assert_eq!(during.claimed_count, 1, "min {min}: the claim is restoring");
        let replaced = during.current_size > min;
        assert_eq!(
            replaced, !deferred,
            "min {min}: size {} while the claim restores",
            during.current_size
        );
        claiming.await.unwrap().expect("the claim");
        idle(&pool, min).await;
        assert_eq!(pool.snapshot().await.unwrap().pool.current_size, min + 1);
    }
}
