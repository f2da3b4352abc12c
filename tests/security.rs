//! Observability and hostile input: auth, metrics, the live event stream, symlink
//! planting, secrets never leaking, and malformed input never causing a 5xx.

use std::time::Duration;

use boilerhouse_testkit::*;
use serde_json::{json, Value};

/// The daemon binary cargo built for this test crate.
const BIN: &str = env!("CARGO_BIN_EXE_boilerhouse");

const PROTECTED: &[(&str, &str)] = &[
    ("GET", "/tenants"),
    ("GET", "/tenants/a"),
    ("POST", "/tenants/a/claim"),
    ("POST", "/tenants/a/release"),
    ("GET", "/tenants/a/status"),
    ("POST", "/tenants/a/sync"),
    ("GET", "/pools"),
    ("GET", "/pools/web"),
    ("POST", "/pools/web/scale"),
    ("GET", "/containers"),
    ("GET", "/containers/x"),
    ("DELETE", "/containers/x"),
    ("GET", "/workloads"),
    ("GET", "/workloads/web"),
    ("GET", "/stats"),
    ("GET", "/activity"),
    ("GET", "/events"),
    ("GET", "/metrics"),
];

#[tokio::test]
async fn a_token_protects_every_route_but_health_and_ready() {
    let d = Daemon::builder(BIN)
        .workload(
            "web.yaml",
            &workload("web", "pool:\n  min_size: 0\n  max_size: 1\n"),
        )
        .env("BOILERHOUSE_API_TOKEN", "correct-horse-battery")
        .start()
        .await;
    let client = reqwest::Client::new();
    for prefix in ["", "/api/v1"] {
        for (method, path) in PROTECTED {
            for auth in [
                None,
                Some("Bearer wrong"),
                Some("correct-horse-battery"),
                Some("Bearer "),
            ] {
                let mut req = client.request(
                    reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
                    format!("{}{prefix}{path}", d.base),
                );
                if let Some(a) = auth {
                    req = req.header("Authorization", a);
                }
                let resp = req.send().await.unwrap();
                assert_eq!(resp.status(), 401, "{method} {prefix}{path} with {auth:?}");
                let v: Value = resp.json().await.unwrap();
                assert_eq!(v["code"], "unauthorized");
            }
        }
        for open in ["/health", "/ready"] {
            let resp = client
                .get(format!("{}{prefix}{open}", d.base))
                .send()
                .await
                .unwrap();
            assert_ne!(resp.status(), 401, "{open} must not need a token");
        }
    }
    let resp = client
        .get(format!("{}/pools", d.base))
        .header("Authorization", "Bearer correct-horse-battery")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn metrics_and_the_event_stream_follow_claims() {
    let d = web_daemon(BIN, "pool:\n  min_size: 1\n  max_size: 2\n").await;
    d.wait_idle("web", 1).await;
    let mut stream = reqwest::Client::new()
        .get(format!("{}/events", d.base))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    d.claim("m1", json!({})).await;
    let (s, v) = d
        .post("/tenants/m2/claim", json!({"poolId": "web", "waitMs": 0}))
        .await;
    assert!(s == 200 || s == 503, "{v}");
    d.release("m1", json!({})).await;

    let mut seen = String::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !(seen.contains("event: container.claimed") && seen.contains("event: container.released"))
    {
        let chunk = tokio::time::timeout_at(deadline, stream.chunk())
            .await
            .expect("events arrive")
            .unwrap()
            .expect("stream open");
        seen.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert!(seen.contains("\"tenantId\":\"m1\""), "{seen}");

    let text = reqwest::get(format!("{}/metrics", d.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for needle in [
        "boilerhouse_claims_total{pool=\"web\",result=\"warm\"}",
        "boilerhouse_claim_duration_seconds_bucket",
        "boilerhouse_release_duration_seconds_bucket",
        "boilerhouse_container_create_duration_seconds_bucket",
        "boilerhouse_containers{pool=\"web\",state=\"idle\"}",
        "boilerhouse_pool_probe_timeouts{pool=\"web\"} 0",
        "boilerhouse_pool_create_concurrency{pool=\"web\"}",
        "boilerhouse_pool_ready_timeout_seconds{pool=\"web\"}",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
}

async fn symlinks_never_reach_the_host(policy: &str) {
    let d = web_daemon(
        BIN,
        &format!("pool:\n  min_size: 1\n  max_size: 2\n  recycle: {policy}\n"),
    )
    .await;
    d.wait_idle("web", 1).await;
    let outside = tempfile::tempdir().unwrap();
    let victim_file = outside.path().join("passwd-copy");
    std::fs::write(&victim_file, "host data").unwrap();
    let victim_dir = outside.path().join("etc-copy");
    std::fs::create_dir(&victim_dir).unwrap();
    std::fs::write(victim_dir.join("inner"), "host data").unwrap();

    let v = d.claim("evil", json!({"secrets": {"K": "v"}})).await;
    let cid = v["containerId"].as_str().unwrap();
    let name = d.docker_name(cid);
    // The tenant plants links to host paths (as the host sees them) in its state dir.
    let script = format!(
        "ln -s {f} /state/file-link && ln -s {dir} /state/dir-link && mkdir /state/sub && ln -s {dir} /state/sub/deep",
        f = victim_file.display(),
        dir = victim_dir.display()
    );
    let (ok, out) = docker_exec(&name, "1000", &script);
    assert!(ok, "{out}");
    d.release("evil", json!({})).await;
    d.wait_idle("web", 1).await;
    assert_eq!(
        std::fs::read_to_string(&victim_file).unwrap(),
        "host data",
        "{policy}"
    );
    assert_eq!(
        std::fs::read_to_string(victim_dir.join("inner")).unwrap(),
        "host data",
        "{policy}"
    );
}

#[tokio::test]
async fn planted_symlinks_are_harmless_with_destroy() {
    symlinks_never_reach_the_host("destroy").await;
}

#[tokio::test]
async fn planted_symlinks_are_harmless_with_reuse() {
    symlinks_never_reach_the_host("reuse").await;
}

#[tokio::test]
async fn planted_symlinks_are_harmless_with_restart() {
    symlinks_never_reach_the_host("restart").await;
}

#[tokio::test]
async fn secrets_never_leak_into_logs_responses_or_metrics() {
    let d = Daemon::builder(BIN)
        .workload(
            "web.yaml",
            &workload("web", "pool:\n  min_size: 1\n  max_size: 2\n"),
        )
        .env("RUST_LOG", "trace")
        .start()
        .await;
    d.wait_idle("web", 1).await;
    let secret = "sekret-value-8f3a1c";
    let v = d.claim("s", json!({"secrets": {"API_KEY": secret}})).await;
    assert!(!v.to_string().contains(secret));
    d.claim("s", json!({"secrets": {"API_KEY": secret}})).await;
    for path in [
        "/tenants/s/status",
        "/tenants",
        "/tenants/s",
        "/containers",
        "/activity",
        "/stats",
        "/workloads",
    ] {
        let (_, body) = d.get(path).await;
        assert!(!body.to_string().contains(secret), "{path} leaks");
    }
    let metrics = reqwest::get(format!("{}/metrics", d.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains(secret));
    d.release("s", json!({})).await;
    assert!(!d.log_text().contains(secret), "the log leaks the secret");
}

#[tokio::test]
async fn malformed_input_gets_a_4xx_never_a_5xx() {
    let d = web_daemon(BIN, "pool:\n  min_size: 0\n  max_size: 1\n").await;
    let long_pool = "a".repeat(300);
    let long_secret = "K".repeat(300);
    let cases: Vec<(&str, String, String)> = vec![
        ("POST", "/tenants/a/claim".into(), "[]".into()),
        ("POST", "/tenants/a/claim".into(), "null".into()),
        ("POST", "/tenants/a/claim".into(), "\"x\"".into()),
        ("POST", "/tenants/a/claim".into(), r#"{"poolId": 5}"#.into()),
        (
            "POST",
            "/tenants/a/claim".into(),
            format!(r#"{{"poolId": "{long_pool}"}}"#),
        ),
        (
            "POST",
            "/tenants/a/claim".into(),
            r#"{"poolId": "Web"}"#.into(),
        ),
        (
            "POST",
            "/tenants/a/claim".into(),
            r#"{"poolId": "../x"}"#.into(),
        ),
        (
            "POST",
            "/tenants/a/claim".into(),
            r#"{"waitMs": -1}"#.into(),
        ),
        (
            "POST",
            "/tenants/a/claim".into(),
            r#"{"waitMs": 1e99}"#.into(),
        ),
        (
            "POST",
            "/tenants/a/claim".into(),
            r#"{"secrets": {"../x": "v"}}"#.into(),
        ),
        (
            "POST",
            "/tenants/a/claim".into(),
            format!(r#"{{"secrets": {{"{long_secret}": "v"}}}}"#),
        ),
        (
            "POST",
            "/tenants/a/claim".into(),
            r#"{"secrets": {"A": 1}}"#.into(),
        ),
        (
            "POST",
            "/tenants/a/release".into(),
            r#"{"sync": "yes"}"#.into(),
        ),
        (
            "POST",
            "/tenants/a/sync".into(),
            r#"{"direction": "sideways"}"#.into(),
        ),
        (
            "POST",
            "/pools/web/scale".into(),
            r#"{"targetSize": "3"}"#.into(),
        ),
        (
            "POST",
            "/pools/web/scale".into(),
            r#"{"targetSize": 99999999999999999999}"#.into(),
        ),
        ("POST", "/pools/web/scale".into(), "{}".into()),
        (
            "POST",
            "/pools/Bad_Pool/scale".into(),
            r#"{"targetSize": 1}"#.into(),
        ),
        ("GET", "/pools/%2e%2e".into(), String::new()),
        ("GET", format!("/workloads/{long_pool}"), String::new()),
        ("GET", "/containers?poolId=NOPE".into(), String::new()),
        ("GET", "/activity?limit=abc".into(), String::new()),
        ("GET", "/activity?limit=-1".into(), String::new()),
        ("DELETE", "/containers/x?force=maybe".into(), String::new()),
        ("GET", "/tenants/%ff%fe/status".into(), String::new()),
    ];
    for (method, path, body) in cases {
        let (s, text) = raw_request(d.port, method, &path, &body).await;
        assert!(
            (400..500).contains(&s),
            "{method} {path} {body:.60}: {s} {text}"
        );
        let v: Value = serde_json::from_str(&text)
            .unwrap_or_else(|_| panic!("{method} {path}: not JSON: {text}"));
        assert!(
            v["error"].as_str().is_some_and(|e| e.len() > 10),
            "{method} {path}: {v}"
        );
        assert!(v["code"].is_string(), "{method} {path}: {v}");
    }
    let (s, _) = d.get("/health").await;
    assert_eq!(s, 200, "the daemon survived");
}
