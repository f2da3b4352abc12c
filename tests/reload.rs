//! Live reload on the real engine: the workload files change while the daemon
//! runs, and `POST /workloads/reload`, `SIGHUP` or the watch of `WORKLOADS_DIR`
//! apply the new set — all of it or, if any file is invalid, none of it.

use std::path::PathBuf;
use std::time::Duration;

use boilerhouse_testkit::s3::S3Server;
use boilerhouse_testkit::*;
use serde_json::{json, Value};

/// The daemon binary cargo built for this test crate.
const BIN: &str = env!("CARGO_BIN_EXE_boilerhouse");
const WAIT: Duration = Duration::from_secs(90);
const BUCKET: &str = "bh";

fn web(flavour: &str, pool: &str) -> String {
    workload(
        "web",
        &format!("environment:\n  FLAVOUR: \"{flavour}\"\npool:\n{pool}\n"),
    )
}

/// A workload whose tenants' state goes to the kit's S3 server on release.
fn synced(id: &str, s3: &S3Server) -> String {
    workload(
        id,
        &format!(
            "pool:\n  min_size: 1\n  max_size: 3\nsync:\n  sink:\n    type: s3\n    bucket: {BUCKET}\n    region: us-east-1\n    endpoint: {}\n    access_key_id: {}\n    secret_access_key: {}\n    prefix: tenants/${{tenantId}}/\n  mappings:\n    - path: /\n      direction: bidirectional\n      mode: sync\n",
            s3.endpoint(),
            s3.access_key(),
            s3.secret_key()
        ),
    )
}

fn workloads_dir(d: &Daemon) -> PathBuf {
    d.path("workloads")
}

/// Docker's view of one of the daemon's containers.
fn spec_label(d: &Daemon, cid: &str) -> String {
    docker_inspect(&d.docker_name(cid))["Config"]["Labels"]["boilerhouse.spec-hash"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn running(d: &Daemon, cid: &str) -> bool {
    docker_inspect(&d.docker_name(cid))["State"]["Running"] == true
}

/// The daemon's containers of `pool` (GET /containers).
async fn containers(d: &Daemon, pool: &str) -> Vec<Value> {
    let (s, v) = d.get(&format!("/containers?poolId={pool}")).await;
    assert_eq!(s, 200, "{v}");
    v.as_array().cloned().unwrap_or_default()
}

fn ids(list: &[Value]) -> Vec<String> {
    list.iter()
        .map(|c| c["id"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// Docker containers of the daemon's instance, by their boilerhouse container id.
fn engine_containers(d: &Daemon) -> Vec<String> {
    labelled_containers(&d.instance)
        .into_iter()
        .map(|(cid, _)| cid)
        .collect()
}

async fn activity_kinds(d: &Daemon) -> Vec<String> {
    let (_, v) = d.get("/activity?limit=1000").await;
    v["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|e| e["type"].as_str().map(str::to_owned))
        .collect()
}

/// Polls `GET path` until it answers `status` (a pool appearing or ending).
async fn wait_status(d: &Daemon, path: &str, status: u16) {
    for _ in 0..900 {
        if d.get(path).await.0 == status {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("GET {path} never answered {status}\n{}", d.log_tail());
}

fn sighup(d: &Daemon) {
    let pid = d.pid().expect("the daemon runs").to_string();
    let ok = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -HUP {pid}");
}

/// An invalid file anywhere in the set: nothing changes (no pool added, none
/// changed, no container touched), and the errors are answered by the reload
/// route, logged, and carried by `GET /workloads`.
#[tokio::test]
async fn an_invalid_reload_changes_nothing() {
    let d = Daemon::builder(BIN)
        .workload("web.yaml", &web("one", "  min_size: 2\n  max_size: 4"))
        .env("BOILERHOUSE_WORKLOADS_DEBOUNCE_MS", "0")
        .start()
        .await;
    let before_view = d.wait_idle("web", 2).await;
    let before = ids(&containers(&d, "web").await);
    let dir = workloads_dir(&d);
    // A valid change and a new workload, next to a file with two mistakes.
    std::fs::write(
        dir.join("web.yaml"),
        web("two", "  min_size: 3\n  max_size: 4"),
    )
    .unwrap();
    std::fs::write(dir.join("api.yaml"), workload("api", "")).unwrap();
    std::fs::write(
        dir.join("broken.yaml"),
        "id: broken\nimage: x\npool:\n  min_size: 1\n  autoscale:\n    bufer: 2\n",
    )
    .unwrap();

    let (s, r) = d.post("/workloads/reload", json!({})).await;
    assert_eq!(s, 422, "{r}");
    assert_eq!(r["code"], "reload_rejected", "{r}");
    let errors = r["errors"].as_array().unwrap();
    assert!(
        errors.iter().any(|e| e["key"] == "pool.autoscale.bufer"
            && e["line"] == 6
            && e["file"].as_str().unwrap().ends_with("broken.yaml")
            && e["message"]
                .as_str()
                .unwrap()
                .contains("did you mean `buffer`")),
        "{r}"
    );
    let listed = reqwest::get(d.url("/workloads")).await.unwrap();
    let header = listed.headers()["boilerhouse-reload-errors"]
        .to_str()
        .unwrap()
        .to_owned();
    let shown: Value = serde_json::from_str(&header).unwrap();
    assert!(
        shown.to_string().contains("pool.autoscale.bufer"),
        "{header}"
    );
    let body: Value = listed.json().await.unwrap();
    assert_eq!(body.as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body[0]["environment"]["FLAVOUR"], "one", "{body}");
    assert!(
        d.log_text().contains("pool.autoscale.bufer"),
        "the errors are logged"
    );

    // SIGHUP reloads the same invalid set: still nothing changes.
    sighup(&d);
    eventually(WAIT, "the SIGHUP reload to be rejected too", || {
        (d.log_text().matches("workload reload rejected").count() >= 2).then_some(())
    })
    .await;
    let (s, _) = d.get("/pools/api").await;
    assert_eq!(s, 404, "no pool of the invalid set started");
    let after = d.pool("web").await;
    assert_eq!(after["specHash"], before_view["specHash"]);
    assert_eq!(after["minSize"], 2);
    assert_eq!(
        ids(&containers(&d, "web").await),
        before,
        "no container touched"
    );
    for cid in &before {
        assert!(running(&d, cid), "{cid} still runs");
    }
    let kinds = activity_kinds(&d).await;
    assert!(
        kinds.iter().any(|k| k == "workloads.reload_failed"),
        "{kinds:?}"
    );
    assert!(
        !kinds.iter().any(|k| k == "workloads.reloaded"),
        "{kinds:?}"
    );
}

/// One valid change of the files, picked up by the watch of `WORKLOADS_DIR`: a new
/// workload starts a pool; a removed one takes no claims (404), loses its idle
/// containers and keeps its claimed one until the release, which uploads and then
/// removes it; a changed one rolls its idle containers to the new spec while the
/// claimed tenant's container is untouched, and is removed on release.
#[tokio::test]
async fn new_removed_and_changed_workloads_follow_the_files() {
    let s3 = S3Server::start_new().await;
    std::fs::create_dir_all(s3.root_dir().join(BUCKET)).unwrap();
    let d = Daemon::builder(BIN)
        .workload(
            "web.yaml",
            &web("one", "  min_size: 2\n  max_size: 6\n  recycle: reuse"),
        )
        .workload("gone.yaml", &synced("gone", &s3))
        .env("BOILERHOUSE_WORKLOADS_DEBOUNCE_MS", "300")
        .start()
        .await;
    d.wait_idle("web", 2).await;
    d.wait_idle("gone", 1).await;
    let alice = d.claim("alice", json!({"poolId": "web"})).await["containerId"]
        .as_str()
        .unwrap()
        .to_owned();
    let bob = d.claim("bob", json!({"poolId": "gone"})).await["containerId"]
        .as_str()
        .unwrap()
        .to_owned();
    let (ok, out) = docker_exec(
        &d.docker_name(&bob),
        "1000",
        "echo bob-was-here > /state/note",
    );
    assert!(ok, "{out}");
    let old = d.wait_idle("web", 2).await;
    let old_hash = old["specHash"].as_str().unwrap().to_owned();
    assert_eq!(spec_label(&d, &alice), old_hash);

    let dir = workloads_dir(&d);
    std::fs::write(
        dir.join("web.yaml"),
        web("two", "  min_size: 2\n  max_size: 6\n  recycle: reuse"),
    )
    .unwrap();
    std::fs::write(
        dir.join("fresh.yaml"),
        workload("fresh", "pool:\n  min_size: 1"),
    )
    .unwrap();
    std::fs::remove_file(dir.join("gone.yaml")).unwrap();

    // New: a pool, warmed.
    wait_status(&d, "/pools/fresh", 200).await;
    let fresh = d.wait_pool("fresh", WAIT, |v| v["idleCount"] == 1).await;
    assert_eq!(fresh["status"], "healthy", "{fresh}");

    // Changed: the idle containers are all of the new spec once the rollout is through.
    let rolled = d
        .wait_pool("web", WAIT, |v| {
            v["specHash"] != old_hash.as_str()
                && v["idleCount"] == 2
                && v["rollout"]["oldIdle"] == 0
        })
        .await;
    let new_hash = rolled["specHash"].as_str().unwrap().to_owned();
    for c in containers(&d, "web").await {
        let cid = c["id"].as_str().unwrap();
        if cid == alice {
            continue;
        }
        if c["status"] == "idle" {
            assert_eq!(
                spec_label(&d, cid),
                new_hash,
                "idle {cid} is of the new spec"
            );
            let env = docker_inspect(&d.docker_name(cid))["Config"]["Env"].to_string();
            assert!(env.contains("FLAVOUR=two"), "{env}");
        }
    }
    // The claimed tenant's container is untouched: same container, running, old spec.
    assert!(running(&d, &alice));
    assert_eq!(spec_label(&d, &alice), old_hash);
    let env = docker_inspect(&d.docker_name(&alice))["Config"]["Env"].to_string();
    assert!(env.contains("FLAVOUR=one"), "{env}");
    let (_, st) = d.get("/tenants/alice/status").await;
    assert_eq!(
        (st["status"].as_str(), st["containerId"].as_str()),
        (Some("warm"), Some(alice.as_str())),
        "{st}"
    );
    assert_eq!(rolled["rollout"]["oldClaimed"], 1, "{rolled}");
    let new_alice = d.claim("alice", json!({"poolId": "web"})).await;
    assert_eq!(
        new_alice["containerId"],
        alice.as_str(),
        "a repeated claim keeps it"
    );

    // Removed: no claims, no idle containers, the claimed one stays.
    let (s, v) = d
        .post("/tenants/carol/claim", json!({"poolId": "gone"}))
        .await;
    assert_eq!(
        (s, v["code"].as_str()),
        (404, Some("pool_not_found")),
        "{v}"
    );
    let draining = d
        .wait_pool("gone", WAIT, |v| {
            v["status"] == "draining" && v["idleCount"] == 0
        })
        .await;
    assert_eq!(draining["claimedCount"], 1, "{draining}");
    assert!(running(&d, &bob), "bob's container stays until released");
    // Released with upload, then gone with its pool.
    d.release("bob", json!({})).await;
    let note = s3.root_dir().join(BUCKET).join("tenants/bob/note");
    assert_eq!(
        std::fs::read_to_string(&note).unwrap_or_default().trim(),
        "bob-was-here"
    );
    eventually(WAIT, "the drained pool to end", || {
        (!engine_containers(&d).iter().any(|c| c.starts_with("gone-"))).then_some(())
    })
    .await;
    let mut ended = false;
    for _ in 0..600 {
        if d.get("/pools/gone").await.0 == 404 {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        ended,
        "GET /pools/gone answers 404 once drained\n{}",
        d.log_tail()
    );

    // Alice's release recycles nothing of the old spec: her container goes.
    d.release("alice", json!({})).await;
    eventually(WAIT, "alice's old container to be removed", || {
        (!engine_containers(&d).contains(&alice)).then_some(())
    })
    .await;
    let done = d
        .wait_pool("web", WAIT, |v| {
            v["rollout"].is_null() && v["idleCount"] == 2
        })
        .await;
    assert_eq!(done["specHash"], new_hash.as_str());
    for c in containers(&d, "web").await {
        // An old container whose removal the engine is finishing is listed as releasing.
        if c["status"] != "releasing" {
            let cid = c["id"].as_str().unwrap();
            assert_eq!(spec_label(&d, cid), new_hash, "{cid}");
        }
    }

    // A pool-only change (sizes) applies in place: no container is replaced.
    let kept = ids(&containers(&d, "web").await);
    std::fs::write(
        dir.join("web.yaml"),
        web("two", "  min_size: 3\n  max_size: 6\n  recycle: reuse"),
    )
    .unwrap();
    let grown = d.wait_pool("web", WAIT, |v| v["idleCount"] == 3).await;
    assert_eq!(grown["specHash"], new_hash.as_str(), "{grown}");
    assert!(grown["rollout"].is_null(), "{grown}");
    let now = ids(&containers(&d, "web").await);
    for cid in &kept {
        assert!(
            now.contains(cid),
            "{cid} kept by an in-place change: {now:?}"
        );
    }

    let kinds = activity_kinds(&d).await;
    for k in [
        "workloads.reloaded",
        "pool.rollout.started",
        "pool.rollout.completed",
        "pool.draining",
        "pool.removed",
        "pool.reconfigured",
    ] {
        assert!(kinds.iter().any(|x| x == k), "{k} in {kinds:?}");
    }
    let (_, metrics) = d.get("/metrics").await;
    let text = metrics.as_str().unwrap_or_default();
    assert!(
        text.contains("boilerhouse_workload_reloads_total{trigger=\"watch\",result=\"applied\"}"),
        "{text}"
    );
    assert!(
        text.contains("boilerhouse_pool_rollouts_completed_total{pool=\"web\"}"),
        "{text}"
    );
}

/// A reload that rolls the pool in the middle of a burst of claims: every claim
/// is answered with a container, each tenant holds exactly one, and once the burst
/// is released the engine holds exactly the containers the pool knows.
#[tokio::test]
async fn a_reload_during_a_burst_of_claims_loses_no_claim_and_leaks_no_container() {
    let d = Daemon::builder(BIN)
        .workload("web.yaml", &web("one", "  min_size: 3\n  max_size: 16"))
        .env("BOILERHOUSE_WORKLOADS_DEBOUNCE_MS", "0")
        .start()
        .await;
    d.wait_idle("web", 3).await;
    let dir = workloads_dir(&d);
    let tenants: Vec<String> = (0..12).map(|i| format!("burst-{i}")).collect();
    let claims = tenants.iter().map(|t| {
        let d = &d;
        async move {
            d.post(&format!("/tenants/{t}/claim"), json!({"poolId": "web"}))
                .await
        }
    });
    let reload = async {
        std::fs::write(
            dir.join("web.yaml"),
            web("two", "  min_size: 3\n  max_size: 16"),
        )
        .unwrap();
        d.post("/workloads/reload", json!({})).await
    };
    let (answers, (s, r)) = tokio::join!(futures_util::future::join_all(claims), reload);
    assert_eq!(s, 200, "{r}");
    let mut held = std::collections::HashSet::new();
    for (t, (s, v)) in tenants.iter().zip(&answers) {
        assert_eq!(*s, 200, "claim {t}: {v}\n{}", d.log_tail());
        assert!(
            held.insert(v["containerId"].as_str().unwrap().to_owned()),
            "one container per tenant: {v}"
        );
    }
    let (_, claims) = d.get("/tenants").await;
    assert_eq!(claims.as_array().unwrap().len(), tenants.len(), "{claims}");
    for t in &tenants {
        d.release(t, json!({})).await;
    }
    let settled = d
        .wait_pool("web", WAIT, |v| {
            v["rollout"].is_null() && v["idleCount"] == 3 && v["currentSize"] == 3
        })
        .await;
    // The engine holds what the pool knows: nothing leaked, nothing of the old spec.
    let known = ids(&containers(&d, "web").await);
    let engine = eventually(
        WAIT,
        "the engine to hold only the pool's containers",
        || {
            let mut e = engine_containers(&d);
            e.sort();
            let mut k = known.clone();
            k.sort();
            (e == k).then_some(e)
        },
    )
    .await;
    for cid in &engine {
        assert_eq!(spec_label(&d, cid), settled["specHash"].as_str().unwrap());
    }
}

/// A restart while a removed workload's pool still drains: the claimed container
/// has no pool to go back to, but its tenant's state is not deleted un-uploaded.
#[tokio::test]
async fn a_restart_during_a_drain_leaves_the_tenant_state_on_disk() {
    let mut d = Daemon::builder(BIN)
        .workload("web.yaml", &web("one", "  min_size: 1\n  max_size: 2"))
        .workload("gone.yaml", &workload("gone", "pool:\n  min_size: 1"))
        .env("BOILERHOUSE_WORKLOADS_DEBOUNCE_MS", "0")
        .start()
        .await;
    d.wait_idle("gone", 1).await;
    let cid = d.claim("dora", json!({"poolId": "gone"})).await["containerId"]
        .as_str()
        .unwrap()
        .to_owned();
    let (ok, out) = docker_exec(&d.docker_name(&cid), "1000", "echo keep-me > /state/note");
    assert!(ok, "{out}");
    std::fs::remove_file(workloads_dir(&d).join("gone.yaml")).unwrap();
    let (s, r) = d.post("/workloads/reload", json!({})).await;
    assert_eq!((s, &r["removed"]), (200, &json!(["gone"])), "{r}");
    d.kill9();
    d.start_again().await;
    d.wait_idle("web", 1).await;
    eventually(WAIT, "the unknown pool's container to be removed", || {
        (!engine_containers(&d).contains(&cid)).then_some(())
    })
    .await;
    let note = d.state_dir(&cid).join("note");
    assert_eq!(
        std::fs::read_to_string(&note).unwrap_or_default().trim(),
        "keep-me",
        "the state dir is left for the operator\n{}",
        d.log_tail()
    );
}
