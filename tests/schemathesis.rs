//! Property-based API testing: schemathesis (from PyPI, provisioned by `make test`)
//! generates valid and malformed requests from `/openapi.json` against a live daemon
//! and checks that nothing answers 5xx and every response matches the document.

use std::process::Command;

use boilerhouse_testkit::*;

/// The daemon binary cargo built for this test crate.
const BIN: &str = env!("CARGO_BIN_EXE_boilerhouse");

fn schemathesis() -> String {
    let path = format!(
        "{}/.tools/venv/bin/schemathesis",
        env!("CARGO_MANIFEST_DIR")
    );
    assert!(
        std::path::Path::new(&path).exists(),
        "{path} is missing: run `make test` (it provisions schemathesis)"
    );
    path
}

#[tokio::test]
async fn the_openapi_document_covers_every_route() {
    let d = web_daemon(BIN, "pool:\n  min_size: 0\n  max_size: 1\n").await;
    let (s, doc) = d.get("/openapi.json").await;
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/tenants",
        "/tenants/{id}",
        "/tenants/{id}/claim",
        "/tenants/{id}/release",
        "/tenants/{id}/status",
        "/tenants/{id}/sync",
        "/pools",
        "/pools/{id}",
        "/pools/{id}/scale",
        "/containers",
        "/containers/{id}",
        "/workloads",
        "/workloads/{id}",
        "/health",
        "/ready",
        "/stats",
        "/activity",
        "/events",
        "/metrics",
    ] {
        assert!(paths.contains_key(p), "{p} missing from the document");
    }
    assert!(doc["components"]["schemas"]["ErrorBody"].is_object());
}

#[tokio::test]
async fn schemathesis_finds_no_server_error_and_no_schema_violation() {
    let token = "schemathesis-token-123";
    let d = Daemon::builder(BIN)
        .workload(
            "web.yaml",
            &workload("web", "pool:\n  min_size: 1\n  max_size: 2\n"),
        )
        .env("BOILERHOUSE_API_TOKEN", token)
        .env("BOILERHOUSE_CLAIM_TIMEOUT_MS", "2000")
        .start()
        .await;
    d.wait_idle("web", 1).await;
    let out = tokio::task::spawn_blocking({
        let base = d.base.clone();
        move || {
            Command::new(schemathesis())
                .args([
                    "run",
                    &format!("{base}/openapi.json"),
                    "--url",
                    &base,
                    "-H",
                    &format!("Authorization: Bearer {token}"),
                    "--checks",
                    "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,negative_data_rejection",
                    "--exclude-path",
                    "/events",
                    "--max-examples",
                    "40",
                    "--phases",
                    "examples,coverage,fuzzing,stateful",
                    "--generation-deterministic",
                ])
                .env("NO_COLOR", "1")
                .output()
                .expect("run schemathesis")
        }
    })
    .await
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{text}\n{}",
        d.log_tail()
    );
    assert!(text.contains("passed"), "{text}");
}
