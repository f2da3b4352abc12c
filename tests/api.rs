//! The API's rules, in process: the real router and manager built by `App::build`
//! on the in-memory runtime, requests sent through the router as a tower service.
//! Fast (no Docker, no socket) and deterministic; the Docker suites cover the
//! engine behind the same router.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use boilerhouse::app::App;
use boilerhouse::config::Config;
use boilerhouse::runtime::memory::MemoryRuntime;
use boilerhouse::workload::{self, Workload};
use serde_json::{json, Value};
use tower::ServiceExt;

struct Api {
    app: App,
    runtime: Arc<MemoryRuntime>,
    _dir: tempfile::TempDir,
}

/// A workload read by the daemon's own loader from a file.
fn workload(yaml: &str) -> Workload {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("w.yaml"), yaml).unwrap();
    let env = |_: &str| None;
    let mut list = workload::load_dir(dir.path(), &env, "img")
        .unwrap_or_else(|e| panic!("test workload invalid: {e}"));
    assert_eq!(list.len(), 1);
    list.remove(0)
}

async fn api(workloads: Vec<Workload>, extra: &[(&str, &str)]) -> Api {
    let dir = tempfile::tempdir().unwrap();
    let p = |s: &str| dir.path().join(s).display().to_string();
    let mut vars = vec![
        ("BOILERHOUSE_STATE_DIR".to_owned(), p("state")),
        ("BOILERHOUSE_SECRETS_DIR".to_owned(), p("secrets")),
        ("BOILERHOUSE_SOCKET_DIR".to_owned(), p("sockets")),
        ("BOILERHOUSE_DATA_DIR".to_owned(), p("data")),
        ("BOILERHOUSE_CLAIM_TIMEOUT_MS".to_owned(), "2000".to_owned()),
        // Reloads read this (empty) directory unless a test writes files into it.
        ("BOILERHOUSE_WORKLOADS_DIR".to_owned(), p("workloads")),
    ];
    vars.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let config = Config::from_vars(vars).unwrap();
    let runtime = Arc::new(MemoryRuntime::default());
    let app = App::build(config, runtime.clone(), workloads)
        .await
        .unwrap();
    let api = Api {
        app,
        runtime,
        _dir: dir,
    };
    api.wait_idle().await;
    api
}

fn web(min: usize, max: usize) -> Workload {
    workload(&format!(
        "id: web\nimage: img\npool:\n  min_size: {min}\n  max_size: {max}\n  recycle: reuse\n"
    ))
}

impl Api {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        self.send(method, path, body, None).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        let res = self.app.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let bytes = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value)
    }

    /// Waits until every pool holds its minimum of idle containers.
    async fn wait_idle(&self) {
        for _ in 0..300 {
            if self.app.manager.warmed_up().await {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the pools never warmed up");
    }
}

fn code(body: &Value) -> &str {
    body["code"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn a_claim_is_warm_then_reused_and_a_release_ends_it() {
    let api = api(vec![web(1, 2)], &[]).await;
    let (s, first) = api.call(Method::POST, "/tenants/alice/claim", None).await;
    assert_eq!(s, StatusCode::OK, "{first}");
    assert_eq!(first["reused"], false);
    assert_eq!(first["poolId"], "web");
    let (s, again) = api
        .call(Method::POST, "/api/v1/tenants/alice/claim", None)
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(again["reused"], true);
    assert_eq!(again["containerId"], first["containerId"]);
    let (_, status) = api.call(Method::GET, "/tenants/alice/status", None).await;
    assert_eq!(status["status"], "warm");
    let (s, released) = api
        .call(Method::POST, "/tenants/alice/release", Some(json!({})))
        .await;
    assert_eq!(s, StatusCode::OK, "{released}");
    assert_eq!(released["released"][0]["containerId"], first["containerId"]);
    let (s, body) = api.call(Method::POST, "/tenants/alice/release", None).await;
    assert_eq!(
        (s, code(&body)),
        (StatusCode::NOT_FOUND, "tenant_not_found")
    );
    let (_, status) = api.call(Method::GET, "/tenants/alice/status", None).await;
    assert_eq!(status["status"], "cold");
    // The memory runtime counts a create before the container exists: wait for the
    // refill that the claim started to land, then every created one still runs.
    for _ in 0..500 {
        if api.runtime.calls("create") == api.runtime.running() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(api.runtime.calls("create"), api.runtime.running());
    api.app.stop().await;
}

#[tokio::test]
async fn secrets_are_on_disk_when_the_claim_answers() {
    let api = api(vec![web(1, 2)], &[]).await;
    let body = json!({"secrets": {"token.txt": "s3cret"}});
    let (s, grant) = api
        .call(Method::POST, "/tenants/bob/claim", Some(body))
        .await;
    assert_eq!(s, StatusCode::OK, "{grant}");
    let container = grant["containerId"].as_str().unwrap();
    let config = api.app.manager.config();
    let file = config.secrets_dir.join(container).join("token.txt");
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "s3cret");
    let bad = json!({"secrets": {"../escape": "x"}});
    let (s, body) = api
        .call(Method::POST, "/tenants/eve/claim", Some(bad))
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"].as_str().unwrap().contains("escape"), "{body}");
}

#[tokio::test]
async fn bad_input_is_refused_with_a_sentence_and_a_code() {
    let api = api(vec![web(1, 1)], &[]).await;
    let cases: &[(Method, &str, Option<Value>, StatusCode, &str)] = &[
        (
            Method::POST,
            "/tenants/a%20b/claim",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_tenant_id",
        ),
        (
            Method::POST,
            "/tenants/a/b/claim",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_tenant_id",
        ),
        (
            Method::POST,
            "/tenants/a/claim",
            Some(json!({"poolid": "web"})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/tenants/a/claim",
            Some(json!({"poolId": "nope"})),
            StatusCode::NOT_FOUND,
            "pool_not_found",
        ),
        (
            Method::POST,
            "/pools/web/scale",
            Some(json!({"targetSize": 9})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/pools/web/scale",
            Some(json!({})),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            Method::POST,
            "/tenants/a/sync",
            Some(json!({"poolId": "web"})),
            StatusCode::BAD_REQUEST,
            "sync_not_configured",
        ),
        (
            Method::GET,
            "/containers/nope",
            None,
            StatusCode::NOT_FOUND,
            "container_not_found",
        ),
        (
            Method::GET,
            "/nowhere",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
        (
            Method::DELETE,
            "/pools",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
    ];
    for (method, path, body, status, want) in cases {
        let (s, got) = api.call(method.clone(), path, body.clone()).await;
        assert_eq!((s, code(&got)), (*status, *want), "{method} {path}: {got}");
        assert!(
            got["error"].as_str().is_some_and(|e| e.len() > 10),
            "{method} {path}: a sentence, not just a code: {got}"
        );
    }
    let (s, body) = api
        .call(
            Method::POST,
            "/tenants/a/claim",
            Some(json!({"poolid": "web"})),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(
        body["error"].as_str().unwrap().contains("poolid"),
        "names the field: {body}"
    );
}

#[tokio::test]
async fn a_full_pool_fails_fast_with_exhausted() {
    let api = api(vec![web(1, 1)], &[]).await;
    let (s, _) = api.call(Method::POST, "/tenants/a/claim", None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, body) = api
        .call(Method::POST, "/tenants/b/claim", Some(json!({"waitMs": 0})))
        .await;
    assert_eq!(
        (s, code(&body)),
        (StatusCode::SERVICE_UNAVAILABLE, "pool_exhausted"),
        "{body}"
    );
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("1 claimed of at most 1"),
        "{body}"
    );
}

#[tokio::test]
async fn with_several_pools_a_claim_must_name_one() {
    let other = workload("id: other\nimage: img\npool:\n  min_size: 1\n  max_size: 1\n");
    let api = api(vec![web(1, 1), other], &[]).await;
    let (s, body) = api.call(Method::POST, "/tenants/a/claim", None).await;
    assert_eq!(
        (s, code(&body)),
        (StatusCode::BAD_REQUEST, "pool_required"),
        "{body}"
    );
    assert!(
        body["error"].as_str().unwrap().contains("other, web"),
        "{body}"
    );
    let (s, body) = api
        .call(
            Method::POST,
            "/tenants/a/claim",
            Some(json!({"poolId": "other"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{body}");
    assert_eq!(body["poolId"], "other");
}

#[tokio::test]
async fn a_token_guards_everything_but_the_probes() {
    let api = api(
        vec![web(1, 1)],
        &[("BOILERHOUSE_API_TOKEN", "a-long-test-token")],
    )
    .await;
    for path in ["/health", "/ready", "/openapi.json"] {
        let (s, body) = api.call(Method::GET, path, None).await;
        assert_eq!(s, StatusCode::OK, "{path}: {body}");
    }
    let (s, body) = api.call(Method::GET, "/pools", None).await;
    assert_eq!((s, code(&body)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let (s, _) = api.send(Method::GET, "/pools", None, Some("wrong")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, pools) = api
        .send(
            Method::GET,
            "/api/v1/pools",
            None,
            Some("a-long-test-token"),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(pools[0]["id"], "web");
}

/// The document and the router are built from the same registrations: every
/// documented operation is routed (a documented route that fell out of the router
/// would answer the fallback's `not_found` or 405).
#[tokio::test]
async fn every_documented_operation_is_routed() {
    let api = api(vec![web(0, 1)], &[]).await;
    let (s, doc) = api.call(Method::GET, "/openapi.json", None).await;
    assert_eq!(s, StatusCode::OK);
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.len() >= 18, "{} paths documented", paths.len());
    let mut operations = 0;
    for (path, item) in paths {
        for method in ["get", "post", "delete"] {
            if item.get(method).is_none() {
                continue;
            }
            operations += 1;
            let concrete = path.replace("{id}", "doc-probe");
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            // `/events` streams forever: its status is enough.
            if concrete == "/events" {
                let req = Request::get("/events").body(Body::empty()).unwrap();
                let res = api.app.router.clone().oneshot(req).await.unwrap();
                assert_eq!(res.status(), StatusCode::OK);
                continue;
            }
            let body = (method == Method::POST).then(|| json!({}));
            let (s, got) = api.call(method.clone(), &concrete, body).await;
            assert!(
                s != StatusCode::METHOD_NOT_ALLOWED && code(&got) != "not_found",
                "{method} {path} is documented but not routed: {s} {got}"
            );
        }
    }
    assert!(operations >= 21, "{operations} operations");
    for schema in [
        "ErrorBody",
        "Released",
        "ReleaseResponse",
        "TenantStatus",
        "TenantClaims",
        "DestroyResponse",
        "Health",
        "Activity",
        "Event",
        "ClaimView",
        "ContainerView",
        "Endpoints",
        "LastError",
        "PoolView",
        "ScaleOutcome",
        "ClaimBody",
        "ClaimResponse",
        "ReleaseBody",
        "SyncBody",
        "Direction",
        "SyncResponse",
        "ScaleBody",
        "StartingView",
        "ClusterView",
        "ClusterNode",
        "PoolCapacity",
        "ReloadReport",
        "ReloadError",
        "ChangedPool",
        "Applied",
        "AutoscaleView",
        "RolloutView",
        "TargetReason",
        "ClaimTimingsView",
        "RestoreSource",
    ] {
        assert!(
            doc["components"]["schemas"].get(schema).is_some(),
            "schema {schema} is in the document"
        );
    }
}

/// The dashboard is served by the same router: `/` leads to it, its pages render
/// the pools, and with a token they ask for it instead of showing anything.
#[tokio::test]
async fn the_dashboard_is_served_and_guarded_by_the_token() {
    let api = api(vec![web(1, 1)], &[]).await;
    let req = Request::get("/").body(Body::empty()).unwrap();
    let res = api.app.router.clone().oneshot(req).await.unwrap();
    assert!(res.status().is_redirection(), "{}", res.status());
    assert_eq!(res.headers()["location"], "/ui");
    let (s, page) = api.call(Method::GET, "/ui", None).await;
    assert_eq!(s, StatusCode::OK);
    let page = page.as_str().expect("HTML");
    assert!(page.contains("<html") && page.contains("web"), "{page}");

    let guarded = api_with_token().await;
    let (s, page) = guarded.call(Method::GET, "/ui", None).await;
    let page = page.as_str().expect("HTML");
    assert!(
        s == StatusCode::UNAUTHORIZED || s == StatusCode::OK,
        "the login form: {s}"
    );
    assert!(
        page.contains("type=\"password\""),
        "asks for the token: {page}"
    );
    assert!(
        !page.contains("a-long-test-token"),
        "the token never appears in HTML"
    );
}

async fn api_with_token() -> Api {
    api(
        vec![web(1, 1)],
        &[("BOILERHOUSE_API_TOKEN", "a-long-test-token")],
    )
    .await
}

impl Api {
    fn workloads_dir(&self) -> std::path::PathBuf {
        let dir = self.app.manager.config().workloads_dir.clone();
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    async fn pool(&self, id: &str) -> Value {
        let (s, v) = self.call(Method::GET, &format!("/pools/{id}"), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        v
    }

    /// Polls `/pools/:id` until `ok` holds (no timing is asserted: only the state).
    async fn pool_until(&self, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..500 {
            last = self.pool(id).await;
            if ok(&last) {
                return last;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("pool {id} never reached: {what}; last view {last}");
    }
}

/// The idle target follows demand: a burst of claims raises it to arrivals +
/// buffer at once; after the window and the scale-down delay it falls back.
#[tokio::test]
async fn autoscaling_raises_the_idle_target_with_a_burst_and_lowers_it_after_a_lull() {
    let w = workload(
        "id: web\nimage: img\npool:\n  min_size: 1\n  max_size: 30\n  autoscale:\n    buffer: 2\n    window: 1s\n    scale_down_delay: 1s\n",
    );
    let api = api(vec![w], &[]).await;
    let v = api
        .pool_until("web", "idle at the buffer", |v| v["idleCount"] == 2)
        .await;
    assert_eq!(v["idleTarget"], 2, "{v}");
    assert_eq!(v["idleTargetReason"], "demand", "{v}");
    for i in 0..6 {
        let (s, b) = api
            .call(Method::POST, &format!("/tenants/t{i}/claim"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let v = api.pool("web").await;
    assert!(
        v["idleTarget"].as_u64().unwrap() >= 8,
        "6 arrivals + 2: {v}"
    );
    assert_eq!(v["autoscale"]["claimArrivals"], 6, "{v}");
    let v = api
        .pool_until("web", "idle up to the raised target", |v| {
            v["idleCount"].as_u64() >= Some(8)
        })
        .await;
    assert_eq!(v["claimsNew"], 6, "{v}");
    for i in 0..6 {
        let (s, b) = api
            .call(Method::POST, &format!("/tenants/t{i}/release"), None)
            .await;
        assert_eq!(s, StatusCode::OK, "{b}");
    }
    let held = api
        .pool_until("web", "the target held by the delay", |v| {
            v["idleTargetReason"] == "scale_down_delay"
        })
        .await;
    assert!(held["idleTarget"].as_u64().unwrap() >= 8, "{held}");
    let v = api
        .pool_until("web", "back to the buffer", |v| {
            v["idleTarget"] == 2 && v["idleCount"] == 2
        })
        .await;
    assert_eq!(v["idleTargetReason"], "demand", "{v}");
    let ratio = v["warmHitRatio"].as_f64().expect("a ratio after claims");
    assert!((0.0..=1.0).contains(&ratio), "{v}");
    let (s, metrics) = api.call(Method::GET, "/metrics", None).await;
    assert_eq!(s, StatusCode::OK);
    let text = metrics.as_str().unwrap_or_default();
    for name in [
        "boilerhouse_pool_idle_target{pool=\"web\"}",
        "boilerhouse_pool_warm_hit_ratio{pool=\"web\"}",
        "boilerhouse_pool_idle_target_reason{pool=\"web\",reason=\"demand\"} 1",
    ] {
        assert!(text.contains(name), "{name} in /metrics:\n{text}");
    }
}

/// All-or-nothing reloads in process: an invalid file changes nothing and is
/// reported (reload route and `GET /workloads`); a valid set adds a pool, applies
/// a size change in place, rolls a spec change and drains a removed workload.
#[tokio::test]
async fn a_reload_applies_the_whole_set_or_nothing() {
    let api = api(vec![web(1, 5)], &[]).await;
    let dir = api.workloads_dir();
    let web_yaml = |min: usize, image: &str| {
        format!(
            "id: web\nimage: {image}\npool:\n  min_size: {min}\n  max_size: 5\n  recycle: reuse\n"
        )
    };
    std::fs::write(dir.join("web.yaml"), web_yaml(1, "img")).unwrap();
    std::fs::write(dir.join("bad.yaml"), "id: bad\npool:\n  min_siz: 1\n").unwrap();
    let before = api.pool("web").await;

    let (s, r) = api.call(Method::POST, "/workloads/reload", None).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY, "{r}");
    assert_eq!(code(&r), "reload_rejected", "{r}");
    assert_eq!(r["applied"], false);
    let e = &r["errors"][0];
    assert!(e["file"].as_str().unwrap().ends_with("bad.yaml"), "{r}");
    assert_eq!(
        (e["line"].as_u64(), e["key"].as_str()),
        (Some(3), Some("pool.min_siz")),
        "{r}"
    );
    let req = Request::get("/workloads").body(Body::empty()).unwrap();
    let res = api.app.router.clone().oneshot(req).await.unwrap();
    let header = res.headers()["boilerhouse-reload-errors"]
        .to_str()
        .unwrap()
        .to_owned();
    let shown: Value = serde_json::from_str(&header).unwrap();
    assert_eq!(shown[0]["key"], "pool.min_siz", "{header}");
    let after = api.pool("web").await;
    assert_eq!(before["specHash"], after["specHash"]);
    let (s, _) = api.call(Method::GET, "/pools/bad", None).await;
    assert_eq!(
        s,
        StatusCode::NOT_FOUND,
        "nothing of the invalid set was applied"
    );

    // Valid: a new pool, and web's size changes (in place: no container replaced).
    std::fs::remove_file(dir.join("bad.yaml")).unwrap();
    std::fs::write(
        dir.join("api.yaml"),
        "id: api\nimage: img\npool:\n  min_size: 1\n",
    )
    .unwrap();
    std::fs::write(dir.join("web.yaml"), web_yaml(2, "img")).unwrap();
    let (_, containers) = api.call(Method::GET, "/containers?poolId=web", None).await;
    let first = containers[0]["id"].clone();
    let (s, r) = api.call(Method::POST, "/workloads/reload", None).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["added"], json!(["api"]), "{r}");
    assert_eq!(r["changed"][0]["applied"]["kind"], "inPlace", "{r}");
    let v = api
        .pool_until("web", "two idle", |v| v["idleCount"] == 2)
        .await;
    assert_eq!(v["specHash"], before["specHash"], "{v}");
    let (_, containers) = api.call(Method::GET, "/containers?poolId=web", None).await;
    assert!(
        containers
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["id"] == first),
        "the first container stayed: {containers}"
    );
    api.pool_until("api", "warm", |v| v["idleCount"] == 1).await;
    let req = Request::get("/workloads").body(Body::empty()).unwrap();
    let res = api.app.router.clone().oneshot(req).await.unwrap();
    assert!(res.headers().get("boilerhouse-reload-errors").is_none());

    // A claimed tenant, then a spec change: idle ones roll, the claim keeps its spec.
    let (s, claim) = api
        .call(
            Method::POST,
            "/tenants/alice/claim",
            Some(json!({"poolId": "web"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK, "{claim}");
    let alice = claim["containerId"].clone();
    std::fs::write(dir.join("web.yaml"), web_yaml(2, "img2")).unwrap();
    let (s, r) = api.call(Method::POST, "/workloads/reload", None).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["changed"][0]["applied"]["kind"], "rollout", "{r}");
    assert_eq!(r["changed"][0]["applied"]["claimed"], 1, "{r}");
    let new_hash = api.pool("web").await["specHash"].clone();
    assert_ne!(new_hash, before["specHash"]);
    api.pool_until("web", "idle containers all of the new spec", |v| {
        v["idleCount"] == 2 && v["rollout"]["oldIdle"] == 0
    })
    .await;
    let (_, containers) = api.call(Method::GET, "/containers?poolId=web", None).await;
    // Old idle containers still being removed are listed as releasing.
    let live = containers
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["status"] != "releasing" || c["id"] == alice);
    for c in live {
        let expected = if c["id"] == alice {
            &before["specHash"]
        } else {
            &new_hash
        };
        assert_eq!(&c["specHash"], expected, "{c}");
        let image = if c["id"] == alice { "img" } else { "img2" };
        assert_eq!(c["image"], image, "{c}");
    }
    // Released, alice's old container goes instead of returning to idle.
    let (s, _) = api.call(Method::POST, "/tenants/alice/release", None).await;
    assert_eq!(s, StatusCode::OK);
    api.pool_until("web", "the rollout done", |v| v["rollout"].is_null())
        .await;
    let (_, containers) = api.call(Method::GET, "/containers?poolId=web", None).await;
    assert!(
        containers
            .as_array()
            .unwrap()
            .iter()
            .filter(|c| c["status"] != "releasing")
            .all(|c| c["specHash"] == new_hash && c["id"] != alice),
        "{containers}"
    );

    // Removed: claims get 404, the pool drains and ends once bob releases.
    let (s, _) = api
        .call(
            Method::POST,
            "/tenants/bob/claim",
            Some(json!({"poolId": "api"})),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    std::fs::remove_file(dir.join("api.yaml")).unwrap();
    let (s, r) = api.call(Method::POST, "/workloads/reload", None).await;
    assert_eq!(s, StatusCode::OK, "{r}");
    assert_eq!(r["removed"], json!(["api"]), "{r}");
    let (s, b) = api
        .call(
            Method::POST,
            "/tenants/carol/claim",
            Some(json!({"poolId": "api"})),
        )
        .await;
    assert_eq!(
        (s, code(&b)),
        (StatusCode::NOT_FOUND, "pool_not_found"),
        "{b}"
    );
    let v = api
        .pool_until("api", "draining", |v| v["status"] == "draining")
        .await;
    assert_eq!(
        (v["idleCount"].as_u64(), v["claimedCount"].as_u64()),
        (Some(0), Some(1)),
        "{v}"
    );
    let (s, _) = api.call(Method::POST, "/tenants/bob/release", None).await;
    assert_eq!(s, StatusCode::OK);
    for _ in 0..500 {
        let (s, _) = api.call(Method::GET, "/pools/api", None).await;
        if s == StatusCode::NOT_FOUND {
            let (_, events) = api.call(Method::GET, "/activity?limit=200", None).await;
            let kinds: Vec<&str> = events["events"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|e| e["type"].as_str())
                .collect();
            for k in [
                "workloads.reload_failed",
                "workloads.reloaded",
                "pool.rollout.started",
                "pool.rollout.completed",
                "pool.draining",
                "pool.removed",
            ] {
                assert!(kinds.contains(&k), "{k} in {kinds:?}");
            }
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("the drained pool never ended");
}
