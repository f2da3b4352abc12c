//! Pools and the tenant API on a real Docker engine, over HTTP against the real
//! daemon binary (issue: core). Each test runs its own daemon and instance label.

use std::time::Duration;

use boilerhouse_testkit::*;
use serde_json::{json, Value};

/// The daemon binary cargo built for this test crate.
const BIN: &str = env!("CARGO_BIN_EXE_boilerhouse");

fn ids(v: &Value) -> String {
    v["containerId"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_pool_warms_to_min_size_with_hardened_containers() {
    let d = web_daemon(BIN, "pool:\n  min_size: 2\n  max_size: 4\ndeploy:\n  resources:\n    limits:\n      cpus: 0.5\n      memory: 96m\n").await;
    let pool = d.wait_idle("web", 2).await;
    assert_eq!(pool["minSize"], 2);
    assert_eq!(pool["maxSize"], 4);
    assert_eq!(pool["status"], "healthy");
    let (s, ready) = d.get("/ready").await;
    assert_eq!(s, 200, "{ready}");

    let (_, containers) = d.get("/containers?poolId=web").await;
    let list = containers.as_array().unwrap();
    assert_eq!(list.len(), 2);
    for c in list {
        assert_eq!(c["status"], "idle");
        let cid = c["id"].as_str().unwrap();
        let info = docker_inspect(&d.docker_name(cid));
        let labels = &info["Config"]["Labels"];
        assert_eq!(labels["boilerhouse.managed"], "true");
        assert_eq!(labels["boilerhouse.instance"], d.instance.as_str());
        assert_eq!(labels["boilerhouse.pool"], "web");
        assert_eq!(labels["boilerhouse.container-id"], cid);
        assert!(labels["boilerhouse.spec-hash"].as_str().unwrap().len() >= 8);
        assert!(labels["boilerhouse.created-at"].is_string());
        let hc = &info["HostConfig"];
        assert_eq!(hc["CapDrop"], json!(["ALL"]), "{hc}");
        assert!(hc["SecurityOpt"].to_string().contains("no-new-privileges"));
        assert_eq!(hc["ReadonlyRootfs"], true);
        assert_eq!(hc["PidsLimit"], 512);
        assert_eq!(hc["Memory"], 96 * 1024 * 1024);
        assert_eq!(hc["NanoCpus"], 500_000_000);
        assert_eq!(hc["RestartPolicy"]["Name"], "no");
        assert!(hc["Tmpfs"]["/tmp"].as_str().unwrap().contains("mode=1777"));
        let mounts = info["Mounts"].as_array().unwrap();
        let secrets = mounts
            .iter()
            .find(|m| m["Destination"] == "/secrets")
            .expect("secrets mount");
        assert_eq!(secrets["RW"], false, "secrets must be read-only: {secrets}");
        let state = mounts
            .iter()
            .find(|m| m["Destination"] == "/state")
            .unwrap();
        assert_eq!(state["RW"], true);
        assert_eq!(info["Config"]["User"], "1000:1000");
    }
}

#[tokio::test]
async fn claim_gives_a_writable_state_dir_and_read_only_secrets() {
    let d = web_daemon(BIN, "pool:\n  min_size: 1\n  max_size: 3\n").await;
    d.wait_idle("web", 1).await;
    let v = d
        .claim(
            "alice",
            json!({"poolId": "web", "secrets": {"API_KEY": "s3cr3t", "TOKEN": "t"}, "metadata": {"plan": "pro"}}),
        )
        .await;
    for field in [
        "tenantId",
        "poolId",
        "containerId",
        "containerName",
        "claimedAt",
        "reused",
        "endpoints",
    ] {
        assert!(!v[field].is_null(), "missing {field}: {v}");
    }
    assert_eq!(v["tenantId"], "alice");
    assert_eq!(v["reused"], false);
    let cid = ids(&v);
    assert!(v["endpoints"]["socket"]
        .as_str()
        .unwrap()
        .ends_with(&format!("{cid}/app.sock")));
    let name = d.docker_name(&cid);
    assert_eq!(v["containerName"], name.as_str());

    let (ok, out) = docker_exec(
        &name,
        "1000",
        "id -u && echo hello > /state/f && cat /state/f",
    );
    assert!(ok, "{out}");
    assert!(out.contains("1000") && out.contains("hello"), "{out}");
    let (ok, out) = docker_exec(
        &name,
        "1000",
        "cat /secrets/API_KEY; stat -c %a /secrets/API_KEY",
    );
    assert!(ok, "{out}");
    assert!(out.contains("s3cr3t") && out.contains("400"), "{out}");
    let (ok, out) = docker_exec(&name, "1000", "echo x > /secrets/NEW");
    assert!(!ok, "secrets must be read-only inside: {out}");
    let (ok, _) = docker_exec(&name, "0", "touch /secrets/NEW2");
    assert!(!ok, "even root cannot write secrets");

    // Status shows the claim, never secret values.
    let (s, st) = d.get("/tenants/alice/status").await;
    assert_eq!(s, 200);
    assert_eq!(st["status"], "warm");
    assert_eq!(st["containerId"], cid.as_str());
    assert!(!st.to_string().contains("s3cr3t"));
    let (s, st) = d.get("/api/v1/tenants/nobody/status").await;
    assert_eq!(s, 200);
    assert_eq!(st["status"], "cold");
    assert_eq!(st["claims"], json!([]));

    // Claiming again rewrites secrets, keeps the container.
    let again = d
        .claim("alice", json!({"secrets": {"API_KEY": "rotated"}}))
        .await;
    assert_eq!(again["reused"], true);
    assert_eq!(ids(&again), cid);
    let (_, out) = docker_exec(&name, "1000", "cat /secrets/API_KEY; ls /secrets");
    assert!(out.contains("rotated") && !out.contains("TOKEN"), "{out}");
}

#[tokio::test]
async fn fifty_concurrent_claims_for_one_tenant_get_one_container() {
    let d = web_daemon(BIN, "pool:\n  min_size: 2\n  max_size: 4\n").await;
    d.wait_idle("web", 1).await;
    let d = std::sync::Arc::new(d);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let d = d.clone();
        tasks.push(tokio::spawn(async move { d.claim("bob", json!({})).await }));
    }
    let mut containers = std::collections::HashSet::new();
    let mut reused = 0;
    for t in tasks {
        let v = t.await.unwrap();
        containers.insert(ids(&v));
        if v["reused"] == true {
            reused += 1;
        }
    }
    assert_eq!(containers.len(), 1, "{containers:?}");
    assert_eq!(reused, 49);
    let (_, all) = d.get("/containers").await;
    let claimed = all
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] == "claimed")
        .count();
    assert_eq!(claimed, 1);
}

#[tokio::test]
async fn release_with_destroy_removes_the_container_and_the_pool_refills() {
    let d = web_daemon(
        BIN,
        "pool:\n  min_size: 1\n  max_size: 4\n  recycle: destroy\n",
    )
    .await;
    d.wait_idle("web", 1).await;
    let a = d.claim("a", json!({})).await;
    let b = d.claim("b", json!({})).await;
    assert_ne!(ids(&a), ids(&b), "two tenants never share a container");
    let r = d.release("a", json!({})).await;
    assert_eq!(r["success"], true);
    assert_eq!(r["released"][0]["containerId"], ids(&a).as_str());
    let name = d.docker_name(&ids(&a));
    eventually(Duration::from_secs(20), "container removal", || {
        (!docker(&["inspect", &name]).0).then_some(())
    })
    .await;
    assert!(!d.state_dir(&ids(&a)).exists());
    d.wait_idle("web", 1).await;
    let (s, v) = d.post("/tenants/a/release", json!({})).await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["code"], "tenant_not_found");
}

async fn recycled_container_is_clean(policy: &str) {
    let d = web_daemon(
        BIN,
        &format!("pool:\n  min_size: 1\n  max_size: 1\n  recycle: {policy}\n"),
    )
    .await;
    d.wait_idle("web", 1).await;
    let a = d.claim("a", json!({"secrets": {"K": "v"}})).await;
    let cid = ids(&a);
    let name = d.docker_name(&cid);
    let (ok, out) = docker_exec(
        &name,
        "1000",
        "mkdir -p /state/d && echo x > /state/d/f && echo y > /state/g",
    );
    assert!(ok, "{out}");
    d.release("a", json!({})).await;
    d.wait_idle("web", 1).await;
    let b = d.claim("b", json!({})).await;
    assert_eq!(
        ids(&b),
        cid,
        "{policy}: the same container serves the next tenant"
    );
    let (ok, out) = docker_exec(&name, "1000", "ls -A /state /secrets");
    assert!(ok, "{out}");
    assert!(
        !out.contains('f') && !out.contains('g') && !out.contains('K'),
        "{policy}: not wiped: {out}"
    );
    // The bind mount is still attached: a host write is seen inside.
    std::fs::write(d.state_dir(&cid).join("from-host"), "hi").unwrap();
    let (ok, out) = docker_exec(&name, "1000", "cat /state/from-host");
    assert!(
        ok && out.contains("hi"),
        "{policy}: bind mount detached: {out}"
    );
}

#[tokio::test]
async fn release_with_reuse_wipes_state_and_secrets() {
    recycled_container_is_clean("reuse").await;
}

#[tokio::test]
async fn release_with_restart_wipes_and_restarts() {
    recycled_container_is_clean("restart").await;
}

#[tokio::test]
async fn at_capacity_claims_fail_fast_or_wait_in_line() {
    let d = web_daemon(BIN, "pool:\n  min_size: 1\n  max_size: 1\n").await;
    d.wait_idle("web", 1).await;
    d.claim("a", json!({})).await;
    let resp = reqwest::Client::new()
        .post(format!("{}/tenants/b/claim", d.base))
        .json(&json!({"waitMs": 0}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("retry-after").is_some());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["code"], "pool_exhausted");
    assert!(v["error"].as_str().unwrap().contains("web"), "{v}");

    let d = std::sync::Arc::new(d);
    let waiter = {
        let d = d.clone();
        tokio::spawn(async move { d.post("/tenants/b/claim", json!({"waitMs": 20000})).await })
    };
    // The pool's queue shows the waiting claim: it is in line, not answered.
    d.wait_pool("web", Duration::from_secs(10), |v| v["queuedCount"] == 1)
        .await;
    assert!(
        !waiter.is_finished(),
        "the claim must wait for a free container"
    );
    d.release("a", json!({})).await;
    let (s, v) = waiter.await.unwrap();
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["tenantId"], "b");
}

#[tokio::test]
async fn hostile_tenant_ids_are_refused_and_create_nothing() {
    let d = web_daemon(BIN, "pool:\n  min_size: 0\n  max_size: 2\n").await;
    let long = "a".repeat(129);
    for bad in [
        "..",
        "../etc",
        "a/b",
        "%2e%2e",
        "%2E%2E%2Fetc",
        "a%2Fb",
        long.as_str(),
        "",
        ".hidden",
        "a%00b",
    ] {
        let (s, v) = raw_request(d.port, "POST", &format!("/tenants/{bad}/claim"), "{}").await;
        assert_eq!(s, 400, "{bad:?}: {v}");
        assert!(v.contains("\"code\":\"invalid_tenant_id\""), "{bad:?}: {v}");
        let (s, v) = raw_request(d.port, "GET", &format!("/api/v1/tenants/{bad}/status"), "").await;
        assert_eq!(s, 400, "{bad:?}: {v}");
    }
    for dir in ["states", "secrets", "sockets"] {
        let entries: Vec<_> = std::fs::read_dir(d.path(dir)).unwrap().collect();
        assert!(entries.is_empty(), "{dir} has entries");
    }
    assert!(!d.path("states/../etc").join("x").exists());
    let (_, v) = d.get("/tenants").await;
    assert_eq!(v, json!([]));
}

#[tokio::test]
async fn inactive_claims_are_released_and_writes_count_as_activity() {
    let d = Daemon::builder(BIN)
        .workload(
            "web.yaml",
            &workload("web", "pool:\n  min_size: 1\n  max_size: 3\n"),
        )
        .env("BOILERHOUSE_IDLE_TIMEOUT_MS", "1500")
        .start()
        .await;
    d.wait_idle("web", 1).await;
    let a = d.claim("writer", json!({})).await;
    let name = d.docker_name(&ids(&a));
    d.claim("sleeper", json!({})).await;
    // The writer writes under /state every 0.5 s (its activity, paced like a user's)
    // until the sleeper, which does nothing, has been auto-released.
    let started = std::time::Instant::now();
    for i in 0.. {
        let (ok, out) = docker_exec(&name, "1000", &format!("echo {i} > /state/tick"));
        assert!(ok, "{out}");
        let (_, s) = d.get("/tenants/sleeper/status").await;
        if s["status"] == "cold" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "sleeper should be auto-released: {s}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, w) = d.get("/tenants/writer/status").await;
    assert_eq!(w["status"], "warm", "writes are activity: {w}");
    let started = std::time::Instant::now();
    loop {
        let (_, w) = d.get("/tenants/writer/status").await;
        if w["status"] == "cold" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "writer never released: {w}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (_, act) = d.get("/activity?limit=50").await;
    assert!(act["events"].to_string().contains("container.released"));
}

#[tokio::test]
async fn dead_idle_containers_are_replaced_and_dead_claimed_ones_are_shown() {
    let d = web_daemon(BIN, "pool:\n  min_size: 2\n  max_size: 4\n").await;
    d.wait_idle("web", 2).await;
    let (_, list) = d.get("/containers").await;
    let victim = list[0]["id"].as_str().unwrap().to_owned();
    let (ok, out) = docker(&["kill", &d.docker_name(&victim)]);
    assert!(ok, "{out}");
    let started = std::time::Instant::now();
    loop {
        let (_, list) = d.get("/containers").await;
        let arr = list.as_array().unwrap();
        let gone = arr.iter().all(|c| c["id"] != victim.as_str());
        let idle = arr.iter().filter(|c| c["status"] == "idle").count();
        if gone && idle == 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "not replaced: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let a = d.claim("t", json!({})).await;
    let (ok, out) = docker(&["kill", &d.docker_name(&ids(&a))]);
    assert!(ok, "{out}");
    let started = std::time::Instant::now();
    loop {
        let (_, st) = d.get("/tenants/t/status").await;
        if st["health"]
            .as_str()
            .unwrap_or_default()
            .starts_with("dead")
        {
            assert_eq!(
                st["containerId"],
                ids(&a).as_str(),
                "never silently swapped"
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "status never showed it: {st}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Releasing a dead claim still works.
    d.release("t", json!({})).await;
}

#[tokio::test]
async fn kill_9_loses_no_claim_and_leaves_no_orphan() {
    let mut d = Daemon::builder(BIN)
        .workload(
            "web.yaml",
            &workload("web", "pool:\n  min_size: 2\n  max_size: 6\n"),
        )
        .workload(
            "api.yaml",
            &workload(
                "api",
                "pool:\n  min_size: 1\n  max_size: 3\n  recycle: reuse\n",
            ),
        )
        .start()
        .await;
    d.wait_idle("web", 2).await;
    d.wait_idle("api", 1).await;
    let a = d.claim("alice", json!({"poolId": "web"})).await;
    let b = d
        .claim("bob", json!({"poolId": "api", "secrets": {"K": "v"}}))
        .await;
    let name = d.docker_name(&ids(&a));
    docker_exec(&name, "1000", "echo precious > /state/data");
    d.wait_idle("web", 2).await;
    d.wait_idle("api", 1).await;
    d.kill9();
    d.start_again().await;

    let (_, st) = d.get("/tenants/alice/status").await;
    assert_eq!(st["containerId"], ids(&a).as_str(), "{st}");
    assert_eq!(st["status"], "warm");
    let (_, st) = d.get("/tenants/bob/status").await;
    assert_eq!(st["containerId"], ids(&b).as_str(), "{st}");
    assert_eq!(read(&d.state_dir(&ids(&a)).join("data")).trim(), "precious");
    let again = d.claim("alice", json!({"poolId": "web"})).await;
    assert_eq!(again["reused"], true);

    let web = d.wait_idle("web", 2).await;
    let api = d.wait_idle("api", 1).await;
    assert_eq!(web["claimedCount"], 1);
    assert_eq!(api["claimedCount"], 1);
    // No orphans: every container on the engine is known to the daemon.
    let (_, list) = d.get("/containers").await;
    let known: Vec<String> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|c| d.docker_name(c["id"].as_str().unwrap()))
        .collect();
    let engine = containers_of(&d.instance);
    assert_eq!(
        engine.len(),
        known.len(),
        "engine {engine:?} vs daemon {known:?}"
    );
    for name in known {
        assert!(
            docker(&["inspect", &name]).0,
            "{name} missing on the engine"
        );
    }
}

#[tokio::test]
async fn sigterm_leaves_containers_for_the_next_start() {
    let mut d = web_daemon(BIN, "pool:\n  min_size: 1\n  max_size: 3\n").await;
    d.wait_idle("web", 1).await;
    let a = d.claim("alice", json!({})).await;
    let cid = ids(&a);
    docker_exec(&d.docker_name(&cid), "1000", "echo keep > /state/k");
    let status = d.terminate();
    assert!(status.success(), "{status}");
    assert!(
        docker(&["inspect", &d.docker_name(&cid)]).0,
        "claimed container must keep running"
    );
    assert_eq!(read(&d.state_dir(&cid).join("k")).trim(), "keep");
    d.start_again().await;
    let again = d.claim("alice", json!({})).await;
    assert_eq!(ids(&again), cid);
    assert_eq!(again["reused"], true);
}

#[tokio::test]
async fn a_missing_image_puts_the_pool_in_error_and_claims_get_503() {
    let d = Daemon::builder(BIN)
        .workload(
            "ghost.yaml",
            "id: ghost\nimage: boilerhouse-test/does-not-exist:never\npool:\n  min_size: 1\n  max_size: 2\n",
        )
        .start()
        .await;
    let pool = d
        .wait_pool("ghost", Duration::from_secs(60), |v| v["status"] == "error")
        .await;
    let err = pool["lastError"]["message"].as_str().unwrap();
    assert!(
        err.contains("boilerhouse-test/does-not-exist:never"),
        "{pool}"
    );
    let (s, v) = d.post("/tenants/x/claim", json!({})).await;
    assert_eq!(s, 503, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("does-not-exist"),
        "{v}"
    );
    let (s, _) = d.get("/health").await;
    assert_eq!(s, 200);
    let (s, _) = d.get("/ready").await;
    assert_eq!(s, 503);
}

#[tokio::test]
async fn pools_scale_and_containers_can_be_destroyed() {
    let d = web_daemon(BIN, "pool:\n  min_size: 1\n  max_size: 4\n").await;
    d.wait_idle("web", 1).await;
    let (s, v) = d.post("/pools/web/scale", json!({"targetSize": 3})).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["previousSize"], 1);
    assert_eq!(v["newSize"], 3);
    d.wait_idle("web", 3).await;
    let (s, v) = d.post("/pools/web/scale", json!({"targetSize": 9})).await;
    assert_eq!(s, 400, "{v}");
    let (s, _) = d.post("/pools/web/scale", json!({"targetSize": -1})).await;
    assert_eq!(s, 400);
    let (s, v) = d.post("/pools/web/scale", json!({"targetSize": 1})).await;
    assert_eq!(s, 200, "{v}");
    d.wait_pool("web", Duration::from_secs(20), |v| v["currentSize"] == 1)
        .await;

    let a = d.claim("a", json!({})).await;
    let (s, v) = d
        .request("DELETE", &format!("/containers/{}", ids(&a)), None)
        .await;
    assert_eq!(s, 409, "{v}");
    let (s, v) = d
        .request(
            "DELETE",
            &format!("/containers/{}?force=true", ids(&a)),
            None,
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let (_, st) = d.get("/tenants/a/status").await;
    assert_eq!(st["status"], "cold");
    let (s, v) = d.request("DELETE", "/containers/nope", None).await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = d.get("/pools/nope").await;
    assert_eq!(s, 404);
    assert_eq!(v["code"], "pool_not_found");
}

#[tokio::test]
async fn containers_no_pool_knows_are_swept() {
    // What a daemon killed mid-create leaves behind: the engine finishes the create
    // after the next start has listed its containers.
    let d = web_daemon(BIN, "pool:\n  min_size: 1\n  max_size: 2\n").await;
    d.wait_idle("web", 1).await;
    let name = format!("bh-{}-web-0rphan00", d.instance);
    let (ok, out) = docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        "boilerhouse.managed=true",
        "--label",
        &format!("boilerhouse.instance={}", d.instance),
        "--label",
        "boilerhouse.pool=web",
        "--label",
        "boilerhouse.container-id=web-0rphan00",
        &test_image(),
        "sleep",
        "infinity",
    ]);
    assert!(ok, "{out}");
    eventually(Duration::from_secs(45), "the orphan to be swept", || {
        (!docker(&["inspect", &name]).0).then_some(())
    })
    .await;
    let (_, list) = d.get("/containers").await;
    assert_eq!(
        list.as_array().unwrap().len(),
        1,
        "the pool's own container stays: {list}"
    );
}
