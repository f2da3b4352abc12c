//! Cluster mode end to end: a real 3-member etcd cluster (Debian's etcd-server on
//! loopback ports) and three real daemons, each with its own instance, port and
//! directories on the one Docker engine. Timings are never asserted: every wait
//! polls for the state it needs.

use std::time::{Duration, Instant};

use boilerhouse_testkit::s3::S3Server;
use boilerhouse_testkit::*;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_boilerhouse");
const BUCKET: &str = "bh";
/// Short, so node-loss tests wait seconds, not the default 10 s.
const LEASE_TTL_MS: &str = "4000";
const POOL: &str = "pool:\n  min_size: 1\n  max_size: 3\n";

struct Nodes {
    etcd: EtcdCluster,
    nodes: Vec<Daemon>,
    /// Per node, its links to the etcd members (when it reaches etcd through them).
    links: Vec<Vec<EtcdLink>>,
    _s3: Option<S3Server>,
}

fn sync_yaml(s3: &S3Server) -> String {
    format!(
        "{POOL}sync:\n  sink:\n    type: s3\n    bucket: {BUCKET}\n    region: us-east-1\n    endpoint: {}\n    access_key_id: {}\n    secret_access_key: {}\n    prefix: tenants/${{tenantId}}/\n  mappings:\n    - path: /\n      direction: bidirectional\n      mode: sync\n",
        s3.endpoint(),
        s3.access_key(),
        s3.secret_key()
    )
}

/// etcd, then three daemons `n0`..`n2` joined to one cluster (named uniquely, so
/// runs never share keys), each with one idle container.
async fn cluster(with_s3: bool, token: Option<&str>) -> Nodes {
    cluster_with(with_s3, token, false).await
}

/// [`cluster`]; with `linked`, each node reaches etcd through links of its own
/// that a test can cut.
async fn cluster_with(with_s3: bool, token: Option<&str>, linked: bool) -> Nodes {
    let etcd = EtcdCluster::start().await;
    let (links, endpoints): (Vec<Vec<EtcdLink>>, Vec<String>) = (0..3)
        .map(|_| {
            if linked {
                etcd.links()
            } else {
                (Vec::new(), etcd.endpoints())
            }
        })
        .unzip();
    let s3 = if with_s3 {
        let s3 = S3Server::start_new().await;
        std::fs::create_dir_all(s3.root_dir().join(BUCKET)).unwrap();
        Some(s3)
    } else {
        None
    };
    let extra = s3
        .as_ref()
        .map(sync_yaml)
        .unwrap_or_else(|| POOL.to_owned());
    // The cut test also uploads every second while claimed (a fenced node must not).
    let extra = if linked && with_s3 {
        format!("{extra}  policy:\n    periodic: 1s\n")
    } else {
        extra
    };
    let name = unique_instance();
    let starts = endpoints.iter().enumerate().map(|(i, endpoints)| {
        let port = free_port();
        let mut b = Daemon::builder(BIN)
            .workload("web.yaml", &workload("web", &extra))
            .env("BOILERHOUSE_API_PORT", &port.to_string())
            .env("BOILERHOUSE_ETCD_ENDPOINTS", endpoints)
            .env("BOILERHOUSE_CLUSTER", &name)
            .env("BOILERHOUSE_NODE_ID", &format!("n{i}"))
            .env(
                "BOILERHOUSE_ADVERTISE_URL",
                &format!("http://127.0.0.1:{port}"),
            )
            .env("BOILERHOUSE_CLUSTER_LEASE_TTL_MS", LEASE_TTL_MS);
        if let Some(t) = token {
            b = b.env("BOILERHOUSE_API_TOKEN", t);
        }
        b.start()
    });
    let nodes = futures_util::future::join_all(starts).await;
    for d in &nodes {
        d.wait_idle("web", 1).await;
    }
    let c = Nodes {
        etcd,
        nodes,
        links,
        _s3: s3,
    };
    // Every node's record shows its idle container, so placement sees all three.
    for d in &c.nodes {
        poll(
            Duration::from_secs(30),
            "three nodes with idle capacity",
            || async {
                let (s, v) = d.get("/cluster").await;
                let nodes = v["nodes"].as_array().cloned().unwrap_or_default();
                (s == 200
                    && nodes.len() == 3
                    && nodes
                        .iter()
                        .all(|n| n["healthy"] == true && n["pools"][0]["idle"].as_u64() >= Some(1)))
                .then_some(())
            },
        )
        .await;
    }
    c
}

/// Polls the async `check` every 200 ms until it gives Some, or panics after `timeout`.
async fn poll<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let started = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `POST path` through `d`, returning (status, body, the node that answered).
async fn post_via(d: &Daemon, path: &str, body: Value) -> (u16, Value, String) {
    let mut req = reqwest::Client::new().post(d.url(path)).json(&body);
    if let Some((_, t)) = d.env.iter().find(|(k, _)| k == "BOILERHOUSE_API_TOKEN") {
        req = req.bearer_auth(t);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    let status = resp.status().as_u16();
    let node = resp
        .headers()
        .get("x-boilerhouse-node")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let text = resp.text().await.unwrap_or_default();
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v, node)
}

/// The tenant's claims held on each node (its local list), by node index.
async fn local_claims(c: &Nodes, tenant: &str) -> Vec<(usize, String)> {
    let mut held = Vec::new();
    for (i, d) in c.nodes.iter().enumerate() {
        let (s, v) = d.get("/tenants").await;
        assert_eq!(s, 200, "{v}");
        for claim in v.as_array().cloned().unwrap_or_default() {
            if claim["tenantId"] == tenant {
                held.push((i, claim["containerId"].as_str().unwrap_or("").to_owned()));
            }
        }
    }
    held
}

fn node_index(name: &str) -> usize {
    name.trim_start_matches('n').parse().expect("node id n<i>")
}

#[tokio::test]
async fn concurrent_claims_through_all_three_nodes_end_with_one_container() {
    let c = cluster(false, None).await;
    for tenant in ["alice", "bob", "carol"] {
        let path = format!("/tenants/{tenant}/claim");
        let claims = c.nodes.iter().map(|d| post_via(d, &path, json!({})));
        let answers = futures_util::future::join_all(claims).await;
        for (s, v, _) in &answers {
            assert_eq!(*s, 200, "{v}");
        }
        let ids: std::collections::BTreeSet<&str> = answers
            .iter()
            .map(|(_, v, _)| v["containerId"].as_str().unwrap())
            .collect();
        assert_eq!(ids.len(), 1, "one container for {tenant}: {answers:?}");
        let nodes: std::collections::BTreeSet<&str> =
            answers.iter().map(|(_, _, n)| n.as_str()).collect();
        assert_eq!(
            nodes.len(),
            1,
            "every answer comes from the holder: {answers:?}"
        );
        let held = local_claims(&c, tenant).await;
        assert_eq!(
            held.len(),
            1,
            "one claim cluster-wide for {tenant}: {held:?}"
        );
    }
    let mut claimed = 0;
    for d in &c.nodes {
        claimed += d.pool("web").await["claimedCount"].as_u64().unwrap();
    }
    assert_eq!(claimed, 3, "three tenants, three containers");
}

#[tokio::test]
async fn a_node_that_does_not_hold_the_tenant_forwards_with_the_token() {
    let c = cluster(false, Some("cluster-secret")).await;
    let (s, first, holder) = post_via(&c.nodes[0], "/tenants/dora/claim", json!({})).await;
    assert_eq!(s, 200, "{first}");
    let h = node_index(&holder);
    let other = &c.nodes[(h + 1) % 3];
    let (s, again, answered) = post_via(other, "/tenants/dora/claim", json!({})).await;
    assert_eq!(s, 200, "{again}");
    assert_eq!(
        answered, holder,
        "answered by the holder, through {}",
        other.base
    );
    assert_eq!(again["containerId"], first["containerId"]);
    assert_eq!(again["reused"], true);
    // Status and sync are forwarded too; the status names the holder's container.
    let (s, status) = other.get("/tenants/dora/status").await;
    assert_eq!(s, 200);
    assert_eq!(status["status"], "warm", "{status}");
    assert_eq!(status["containerId"], first["containerId"]);
    // No token on a direct call: the holder refuses, so forwarding carried it.
    let anon = reqwest::Client::new()
        .get(c.nodes[h].url("/tenants/dora/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status().as_u16(), 401);
    // Release through the non-holder ends the claim cluster-wide.
    let (s, released, _) = post_via(other, "/tenants/dora/release", json!({})).await;
    assert_eq!(s, 200, "{released}");
    assert!(local_claims(&c, "dora").await.is_empty());
    let (s, cold) = other.get("/tenants/dora/status").await;
    assert_eq!((s, cold["status"].as_str()), (200, Some("cold")), "{cold}");
    // And the tenant can be claimed anew.
    let (s, v, _) = post_via(other, "/tenants/dora/claim", json!({})).await;
    assert_eq!(s, 200, "{v}");
    // New tenants through one node stay there while it has idle containers; once
    // its pool is full (max 3) they are placed on a node with idle capacity.
    let mut placed_elsewhere = None;
    for i in 0..4 {
        let (s, v, n) = post_via(other, &format!("/tenants/new-{i}/claim"), json!({})).await;
        assert_eq!(s, 200, "{v}");
        if n != format!("n{}", (h + 1) % 3) {
            placed_elsewhere = Some(n);
            break;
        }
    }
    assert!(
        placed_elsewhere.is_some(),
        "a full node places new tenants on another node"
    );
    // GET /cluster: three healthy nodes and the totals.
    let (s, view) = other.get("/cluster").await;
    assert_eq!(s, 200);
    assert_eq!(view["enabled"], true);
    assert_eq!(view["nodes"].as_array().map(Vec::len), Some(3), "{view}");
    assert_eq!(view["totals"][0]["poolId"], "web", "{view}");
    assert_eq!(view["totals"][0]["max"], 9, "{view}");
}

#[tokio::test]
async fn a_killed_holder_frees_its_tenant_after_the_lease_with_uploaded_state() {
    let mut c = cluster(true, None).await;
    let (s, first, holder) = post_via(&c.nodes[1], "/tenants/erin/claim", json!({})).await;
    assert_eq!(s, 200, "{first}");
    let h = node_index(&holder);
    let cid = first["containerId"].as_str().unwrap().to_owned();
    let name = c.nodes[h].docker_name(&cid);
    docker_exec_ok(&name, "1000", "echo uploaded > /state/note");
    // Manual upload through another node (forwarded): the state S3 holds.
    let (s, up, _) = post_via(
        &c.nodes[(h + 1) % 3],
        "/tenants/erin/sync",
        json!({"direction": "upload"}),
    )
    .await;
    assert_eq!((s, up["success"].as_bool()), (200, Some(true)), "{up}");
    docker_exec_ok(&name, "1000", "echo lost-with-the-node > /state/late");

    c.nodes[h].kill9();
    let survivor = &c.nodes[(h + 1) % 3];
    let (second, new_holder) = poll(
        Duration::from_secs(60),
        "a claim for erin on a surviving node",
        || async {
            let (s, v, n) = post_via(survivor, "/tenants/erin/claim", json!({})).await;
            if s != 200 {
                assert_eq!(s, 503, "until the lease expires: {v}");
            }
            (s == 200).then_some((v, n))
        },
    )
    .await;
    let nh = node_index(&new_holder);
    assert_ne!(nh, h, "claimed on a surviving node");
    let new_name = c.nodes[nh].docker_name(second["containerId"].as_str().unwrap());
    let out = docker_exec_ok(&new_name, "1000", "cat /state/note; ls /state");
    assert!(out.contains("uploaded"), "restored from S3: {out}");
    assert!(
        !out.contains("late"),
        "what was never uploaded is what the node took with it: {out}"
    );

    // The killed node comes back: its adopted claim is now another node's, so it
    // releases it without upload and keeps the state on disk.
    c.nodes[h].start_again().await;
    let back = &c.nodes[h];
    poll(
        Duration::from_secs(30),
        "the returning node to let erin go",
        || async {
            let (s, v) = back.get("/tenants").await;
            (s == 200
                && v.as_array()
                    .is_some_and(|a| a.iter().all(|c| c["tenantId"] != "erin")))
            .then_some(())
        },
    )
    .await;
    let kept = back
        .path("data")
        .join("cluster-orphans")
        .join(format!("erin.web.{cid}"));
    assert_eq!(
        read(&kept.join("late")).trim(),
        "lost-with-the-node",
        "local state kept for the operator"
    );
    let held = local_claims(&c, "erin").await;
    assert_eq!(
        held,
        vec![(nh, second["containerId"].as_str().unwrap().to_owned())]
    );
    // The new owner's state in S3 was not overwritten by the returning node.
    let remote = c
        ._s3
        .as_ref()
        .unwrap()
        .root_dir()
        .join(BUCKET)
        .join("tenants/erin");
    assert!(
        !remote.join("late").exists(),
        "no upload from the returning node"
    );
    // And claims through the returning node reach the new holder.
    let (s, v, n) = post_via(back, "/tenants/erin/claim", json!({})).await;
    assert_eq!((s, n.as_str()), (200, new_holder.as_str()), "{v}");
    assert_eq!(v["containerId"], second["containerId"]);
}

#[tokio::test]
async fn losing_one_etcd_member_changes_nothing() {
    let mut c = cluster(false, None).await;
    let (s, before, _) = post_via(&c.nodes[0], "/tenants/fay/claim", json!({})).await;
    assert_eq!(s, 200, "{before}");
    // The first endpoint of every node's list.
    c.etcd.kill_member(0);
    for d in &c.nodes {
        let (s, v, _) = post_via(d, "/tenants/fay/claim", json!({})).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["containerId"], before["containerId"]);
        let (s, v, _) = post_via(d, &format!("/tenants/new-{}/claim", d.port), json!({})).await;
        assert_eq!(s, 200, "{v}");
        let (s, view) = d.get("/cluster").await;
        assert_eq!(s, 200, "{view}");
        assert!(view["fenced"].is_null(), "{view}");
    }
}

#[tokio::test]
async fn losing_the_etcd_quorum_refuses_new_claims_and_loses_nothing() {
    let mut c = cluster(false, None).await;
    let (s, held, holder) = post_via(&c.nodes[0], "/tenants/gus/claim", json!({})).await;
    assert_eq!(s, 200, "{held}");
    let h = node_index(&holder);
    c.etcd.kill_member(1);
    c.etcd.kill_member(2);
    for d in &c.nodes {
        let (s, v, _) = post_via(d, "/tenants/hal/claim", json!({})).await;
        assert_eq!(s, 503, "{v}");
        assert!(
            v["error"].as_str().is_some_and(|e| e.contains("etcd")),
            "the answer names etcd: {v}"
        );
    }
    let name = c.nodes[h].docker_name(held["containerId"].as_str().unwrap());
    assert_eq!(
        docker_inspect(&name)["State"]["Running"],
        true,
        "the claimed container keeps running"
    );
    assert_eq!(local_claims(&c, "gus").await.len(), 1);

    c.etcd.restart_member(1).await;
    c.etcd.restart_member(2).await;
    let (s, v, n) = poll(
        Duration::from_secs(60),
        "claims once etcd has its quorum",
        || async {
            let r = post_via(&c.nodes[(h + 2) % 3], "/tenants/gus/claim", json!({})).await;
            (r.0 == 200).then_some(r)
        },
    )
    .await;
    assert_eq!((s, n), (200, holder), "{v}");
    assert_eq!(v["containerId"], held["containerId"], "nothing lost");
    // Each node unfences at its own next confirmed renewal: one whose keep-alive was
    // under way when the quorum came back waits for it to time out on each member
    // (2 s each), so node 1 may still be fenced when another node answers already.
    let (s, v, _) = poll(Duration::from_secs(60), "node 1 claims again", || async {
        let r = post_via(&c.nodes[1], "/tenants/hal/claim", json!({})).await;
        (r.0 != 503 || r.1["code"] != "node_fenced").then_some(r)
    })
    .await;
    assert_eq!(s, 200, "{v}");
}

#[tokio::test]
async fn a_node_cut_off_from_etcd_fences_itself_and_reconciles_when_healed() {
    let c = cluster_with(true, None, true).await;
    let (s, first, holder) = post_via(&c.nodes[2], "/tenants/ivy/claim", json!({})).await;
    assert_eq!(s, 200, "{first}");
    let h = node_index(&holder);
    let cid = first["containerId"].as_str().unwrap().to_owned();
    let name = c.nodes[h].docker_name(&cid);
    docker_exec_ok(&name, "1000", "echo before-the-cut > /state/note");
    let (s, up, _) = post_via(
        &c.nodes[h],
        "/tenants/ivy/sync",
        json!({"direction": "upload"}),
    )
    .await;
    assert_eq!((s, up["success"].as_bool()), (200, Some(true)), "{up}");

    for link in &c.links[h] {
        link.set_cut(true);
    }
    let cut = &c.nodes[h];
    // Cut off, the holder answers nothing it cannot confirm, then fences itself.
    poll(
        Duration::from_secs(30),
        "the cut-off node to fence itself",
        || async {
            let (s, v, _) = post_via(cut, "/tenants/ivy/claim", json!({})).await;
            assert_eq!(s, 503, "a cut-off node confirms no claim: {v}");
            (v["code"] == "node_fenced").then_some(())
        },
    )
    .await;
    // Fenced, it uploads nothing more: a write in its container now is never saved
    // over what the next owner will restore. Its periodic upload says why it waits.
    docker_exec_ok(&name, "1000", "echo stale-after-the-cut > /state/note");
    poll(
        Duration::from_secs(30),
        "a periodic upload held by the fence",
        || async {
            let (_, act) = cut.get("/activity?limit=200").await;
            act["events"]
                .as_array()
                .is_some_and(|events| {
                    events.iter().any(|e| {
                        e["type"] == "sync.failed"
                            && e["tenantId"] == "ivy"
                            && e["message"].as_str().is_some_and(|m| {
                                m.contains("was not started") && m.contains("fenced")
                            })
                    })
                })
                .then_some(())
        },
    )
    .await;
    // The others claim the tenant once its lease is gone.
    let survivor = &c.nodes[(h + 1) % 3];
    let (second, new_holder) = poll(Duration::from_secs(60), "ivy claimed elsewhere", || async {
        let (s, v, n) = post_via(survivor, "/tenants/ivy/claim", json!({})).await;
        (s == 200).then_some((v, n))
    })
    .await;
    let nh = node_index(&new_holder);
    assert_ne!(nh, h);
    let new_name = c.nodes[nh].docker_name(second["containerId"].as_str().unwrap());
    let out = docker_exec_ok(&new_name, "1000", "cat /state/note");
    assert!(out.contains("before-the-cut"), "restored from S3: {out}");
    // The cut-off node still runs its container, but serves it to no one.
    assert_eq!(docker_inspect(&name)["State"]["Running"], true);

    for link in &c.links[h] {
        link.set_cut(false);
    }
    poll(
        Duration::from_secs(30),
        "the healed node to release ivy",
        || async {
            let (s, v) = cut.get("/tenants").await;
            (s == 200
                && v.as_array()
                    .is_some_and(|a| a.iter().all(|c| c["tenantId"] != "ivy")))
            .then_some(())
        },
    )
    .await;
    let kept = cut
        .path("data")
        .join("cluster-orphans")
        .join(format!("ivy.web.{cid}"));
    // What it could not upload is kept on disk for the operator.
    assert_eq!(read(&kept.join("note")).trim(), "stale-after-the-cut");
    let (s, v, n) = poll(
        Duration::from_secs(30),
        "the healed node to serve again",
        || async {
            let r = post_via(cut, "/tenants/ivy/claim", json!({})).await;
            (r.0 == 200).then_some(r)
        },
    )
    .await;
    assert_eq!((s, n.as_str()), (200, new_holder.as_str()), "{v}");
    assert_eq!(v["containerId"], second["containerId"]);
    assert_eq!(local_claims(&c, "ivy").await.len(), 1, "no double claim");
}
