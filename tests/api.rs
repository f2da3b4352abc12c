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
    assert!(paths.len() >= 17, "{} paths documented", paths.len());
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
    assert!(operations >= 20, "{operations} operations");
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
