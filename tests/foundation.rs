//! The foundation: configuration errors, workload validation (CLI and daemon),
//! the HTTP basics, and the Docker runtime itself against the real engine.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use boilerhouse::config::Config;
use boilerhouse::runtime::spec::{spec_hash, ContainerDirs};
use boilerhouse::runtime::{ContainerSpec, DockerRuntime, Runtime};
use boilerhouse_testkit::*;
use serde_json::json;

/// The daemon binary cargo built for this test crate.
const BIN: &str = env!("CARGO_BIN_EXE_boilerhouse");

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_boilerhouse"));
    // validate starts rclone for sync workloads (the preflight): give it the real one.
    c.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env(
            "BOILERHOUSE_RCLONE_BIN",
            boilerhouse_testkit::s3::rclone_bin(),
        );
    c
}

#[test]
fn a_bad_variable_stops_start_up_naming_it() {
    let out = bin()
        .env("BOILERHOUSE_API_PORT", "abc")
        .env("BOILERHOUSE_MAX_CONTAINERS", "lots")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("BOILERHOUSE_API_PORT=\"abc\""), "{err}");
    assert!(err.contains("BOILERHOUSE_MAX_CONTAINERS=\"lots\""), "{err}");
}

#[test]
fn validate_reports_every_bad_workload_with_file_key_and_line() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/workloads/bad");
    let out = bin()
        .args(["validate", dir])
        .env("BOILERHOUSE_DEFAULT_IMAGE", "x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "typo.yaml:3: healtcheck: unknown key `healtcheck` (did you mean `healthcheck`?)",
        "healthcheck.interval: invalid duration \"10 minutes\"",
        "deploy.resources.limits.memory: invalid memory \"2GG\"",
        "missing-id.yml",
        "missing required key `id`",
        "\"Many-Errors\" is invalid",
        "duplicate workload id `twin`",
        "privileged: privileged containers can take over the host",
        "SURELY_UNSET_BOILERHOUSE_VAR",
        // Flow style: the line of the entry, not of the key that opens the braces.
        "flow-style.yaml:4: pool.max_size: expected a non-negative integer, found \"x\"",
        "flow-style.yaml:7: ports[1]: invalid port \"70000\"",
        "flow-one-line.yaml:3: pool.max_size: expected a non-negative integer, found \"x\"",
        "flow-one-line.yaml:4: ports[1]: invalid port \"0\"",
        "flow-one-line.yaml:5: deploy.resources.limits.memroy: unknown key `memroy` (did you mean `memory`?)",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    // Every error line names a file and a line number (warnings name the file last).
    for line in err
        .lines()
        .filter(|l| !l.trim_start().starts_with("WARN"))
        .filter(|l| l.contains(".yaml") || l.contains(".yml"))
    {
        let mut parts = line.splitn(3, ':');
        let (file, num) = (parts.next().unwrap(), parts.next().unwrap_or(""));
        assert!(file.ends_with(".yaml") || file.ends_with(".yml"), "{line}");
        assert!(num.parse::<usize>().is_ok(), "no line number: {line}");
    }
}

#[test]
fn validate_lists_good_workloads_and_the_seed_example() {
    for dir in [
        "tests/fixtures/workloads/good",
        "workloads/examples",
        "workloads",
    ] {
        let path = format!("{}/{dir}", env!("CARGO_MANIFEST_DIR"));
        let out = bin().args(["validate", &path]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{dir}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(text.contains("ok  "), "{dir}: {text}");
    }
}

#[test]
fn validate_warns_about_a_restore_without_a_non_root_user() {
    let sync = "sync:\n  sink:\n    type: s3\n    bucket: b\n  mappings:\n    - path: /\n";
    for (user, warned) in [
        ("", true),
        ("user: \"0\"\n", true),
        ("user: \"1000\"\n", false),
    ] {
        let root = tempfile::tempdir().unwrap();
        let yaml = format!("id: w\nimage: x\n{user}{sync}");
        std::fs::write(root.path().join("w.yaml"), &yaml).unwrap();
        let out = bin().arg("validate").arg(root.path()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{yaml}: {err}");
        assert_eq!(
            err.contains("WARN") && err.contains("no non-root `user`") && err.contains("w.yaml"),
            warned,
            "{yaml}: {err}"
        );
    }
}

#[tokio::test]
async fn the_daemon_refuses_invalid_workloads() {
    let root = tempfile::tempdir().unwrap();
    std::fs::write(root.path().join("bad.yaml"), "id: x\nprivileged: true\n").unwrap();
    let out = bin()
        .env("BOILERHOUSE_WORKLOADS_DIR", root.path())
        .env("BOILERHOUSE_API_PORT", free_port().to_string())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.yaml:2: privileged"), "{err}");
}

#[test]
fn an_unreachable_engine_is_a_clear_error() {
    let root = tempfile::tempdir().unwrap();
    let out = bin()
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock")
        .env("BOILERHOUSE_WORKLOADS_DIR", root.path())
        .env("BOILERHOUSE_DATA_DIR", root.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot reach the Docker engine at unix:///nonexistent/docker.sock"),
        "{err}"
    );
}

#[tokio::test]
async fn health_ready_errors_and_limits_over_http() {
    let mut d = Daemon::builder(BIN)
        .workload(
            "web.yaml",
            &workload("web", "pool:\n  min_size: 1\n  max_size: 2\n"),
        )
        .env("BOILERHOUSE_LOG_FORMAT", "json")
        .start()
        .await;
    for prefix in ["", "/api/v1"] {
        let (s, v) = d.get(&format!("{prefix}/health")).await;
        assert_eq!(s, 200);
        assert_eq!(v["status"], "ok");
        assert!(v["timestamp"].is_string());
    }
    d.wait_idle("web", 1).await;
    let (s, _) = d.get("/api/v1/ready").await;
    assert_eq!(s, 200);
    let (s, v) = d.get("/nope").await;
    assert_eq!(s, 404);
    assert_eq!(v["code"], "not_found");
    let (s, v) = d.request("PUT", "/health", None).await;
    assert_eq!(s, 405);
    assert_eq!(v["code"], "method_not_allowed");
    let big = "x".repeat(1024 * 1024 + 10);
    let (s, v) = d.post("/tenants/a/claim", json!({"metadata": big})).await;
    assert_eq!(s, 413, "{v}");
    assert_eq!(v["code"], "payload_too_large");
    let (s, v) = raw_request(d.port, "POST", "/tenants/a/claim", "{not json").await;
    assert_eq!(s, 400);
    assert!(v.contains("invalid JSON body"), "{v}");
    let (s, v) = d.post("/tenants/a/claim", json!({"poolID": "web"})).await;
    assert_eq!(s, 400);
    assert!(v["error"].as_str().unwrap().contains("poolID"), "{v}");
    let (s, v) = d
        .post("/tenants/a/claim", json!({"poolId": "missing"}))
        .await;
    assert_eq!(s, 404);
    assert_eq!(v["code"], "pool_not_found");
    // Logs are JSON lines.
    let log = d.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("boilerhouse listening"))
        .expect("start line");
    let parsed: serde_json::Value = serde_json::from_str(line).expect("json log line");
    assert_eq!(parsed["level"], "INFO");
    let status = d.terminate();
    assert!(status.success());
}

#[tokio::test]
async fn without_workload_files_the_builtin_default_pool_serves() {
    let d = Daemon::builder(BIN)
        .env("BOILERHOUSE_POOL_SIZE", "1")
        .start()
        .await;
    let (s, pools) = d.get("/pools").await;
    assert_eq!(s, 200);
    assert_eq!(pools[0]["id"], "default");
    assert_eq!(pools[0]["image"], test_image().as_str());
    // The test image's own command keeps it running.
    d.wait_idle("default", 1).await;
    let v = d.claim("solo", json!({})).await;
    assert_eq!(v["poolId"], "default");
}

#[tokio::test]
async fn pools_are_required_when_there_are_several() {
    let d = Daemon::builder(BIN)
        .workload(
            "a.yaml",
            &workload("a", "pool:\n  min_size: 0\n  max_size: 1\n"),
        )
        .workload(
            "b.yaml",
            &workload("b", "pool:\n  min_size: 0\n  max_size: 1\n"),
        )
        .start()
        .await;
    let (s, v) = d.post("/tenants/x/claim", json!({})).await;
    assert_eq!(s, 400);
    assert_eq!(v["code"], "pool_required");
    assert!(v["error"].as_str().unwrap().contains("a, b"), "{v}");
    // A cold claim (min_size 0) creates a container on demand.
    let v = d.claim("x", json!({"workload": "b"})).await;
    assert_eq!(v["poolId"], "b");
}

/// The runtime creates, inspects and removes a container of a locally built image.
#[tokio::test]
async fn the_docker_runtime_creates_and_removes_a_container() {
    require_docker();
    let instance = unique_instance();
    let root = tempfile::tempdir().unwrap();
    let config = Config::from_vars(vec![
        ("BOILERHOUSE_INSTANCE".into(), instance.clone()),
        (
            "BOILERHOUSE_STATE_DIR".into(),
            root.path().join("s").display().to_string(),
        ),
        (
            "BOILERHOUSE_SECRETS_DIR".into(),
            root.path().join("x").display().to_string(),
        ),
        (
            "BOILERHOUSE_SOCKET_DIR".into(),
            root.path().join("k").display().to_string(),
        ),
    ])
    .unwrap();
    struct Cleanup(String);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            remove_instance_containers(&self.0);
        }
    }
    let _cleanup = Cleanup(instance.clone());
    let rt: Arc<dyn Runtime> = Arc::new(DockerRuntime::connect().await.expect("docker"));
    rt.ping().await.unwrap();
    let w = boilerhouse::workload::builtin_default(&test_image());
    let dirs = ContainerDirs::new(&config, "default-rt1");
    boilerhouse::fsutil::create_dirs(&dirs, None).unwrap();
    let spec = ContainerSpec::for_workload(
        &w,
        &config,
        "default-rt1",
        &dirs,
        &spec_hash(&w, &config),
        "now",
    );
    rt.ensure_image(&spec.image).await.unwrap();
    let id = rt.create_and_start(&spec).await.unwrap();
    assert_eq!(
        rt.wait_ready(&id, &spec.name, Duration::from_secs(20))
            .await
            .unwrap(),
        boilerhouse::runtime::Readiness::Ready
    );
    let listed = rt.list_managed(&instance).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].docker_id, id);
    assert_eq!(
        listed[0].label("boilerhouse.container-id"),
        Some("default-rt1")
    );
    rt.pause(&id).await.unwrap();
    rt.unpause(&id).await.unwrap();
    rt.remove(&id).await.unwrap();
    rt.remove(&id).await.unwrap();
    assert!(rt.list_managed(&instance).await.unwrap().is_empty());
    let missing = rt
        .ensure_image("boilerhouse-test/none:never")
        .await
        .unwrap_err();
    assert!(
        missing.to_string().contains("boilerhouse-test/none:never"),
        "{missing}"
    );
}
