//! Image pulls from a real registry (`docker-registry` on 127.0.0.1, see
//! tests/common/registry.rs): the test image is pushed there and its local tag
//! removed, so a workload naming it can only start after the daemon pulled it.
//! Credentials come from a Docker client configuration given as `DOCKER_CONFIG`.

use std::time::Duration;

use boilerhouse_testkit::registry::Registry;
use boilerhouse_testkit::*;
use serde_json::{json, Value};

/// The daemon binary cargo built for this test crate.
const BIN: &str = env!("CARGO_BIN_EXE_boilerhouse");

/// A workload on `image` whose pool keeps `min` containers warm.
fn image_workload(id: &str, image: &str, min: u32) -> String {
    format!(
        "id: {id}\nimage: {image}\ncommand: [\"sleep\", \"infinity\"]\nuser: \"1000:1000\"\n\
         pool:\n  min_size: {min}\n  max_size: {}\n",
        min + 2
    )
}

/// Waits until the pool reports an error, and returns its message.
async fn last_error(d: &Daemon, pool: &str) -> String {
    let v = d
        .wait_pool(pool, Duration::from_secs(60), |v| {
            v["lastError"]["message"].is_string()
        })
        .await;
    v["lastError"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn assert_no_secret(text: &str, secrets: &[&str], what: &str) {
    for secret in secrets {
        assert!(
            !text.contains(secret),
            "{what} shows a credential ({secret}):\n{text}"
        );
    }
}

#[tokio::test]
async fn concurrent_creations_pull_an_image_once_and_the_pool_warms() {
    let registry = Registry::start_open();
    let image = registry.push_test_image("bh/pulled", "v1");
    assert!(!Registry::present_locally(&image), "only a pull brings it");
    let requests_before = registry.manifest_requests("bh/pulled", "v1");

    let d = Daemon::builder(BIN)
        .workload("pulled.yaml", &image_workload("pulled", &image, 6))
        .start()
        .await;
    let pool = d.wait_idle("pulled", 6).await;
    assert_eq!(pool["image"], image.as_str(), "{pool}");
    assert!(pool["lastError"].is_null(), "{pool}");
    assert!(Registry::present_locally(&image));
    assert_eq!(
        registry.manifest_requests("bh/pulled", "v1") - requests_before,
        1,
        "six containers created at once, one pull"
    );
    let pulls = d.log_text().matches("pulling missing image").count();
    assert_eq!(pulls, 1, "one pull in the daemon's log:\n{}", d.log_tail());
    let v = d.claim("alice", json!({})).await;
    let name = d.docker_name(v["containerId"].as_str().unwrap());
    assert_eq!(docker_inspect(&name)["Config"]["Image"], image.as_str());
}

#[tokio::test]
async fn a_private_registry_pulls_with_the_credentials_of_docker_config() {
    let (user, password) = ("puller", "s3cret-Pa55word");
    let registry = Registry::start_private(user, password);
    let image = registry.push_test_image("bh/private", "v1");
    let plain = registry.push_test_image("bh/private", "v2");
    // Both forms the docker CLI writes: `auth` (base64) and username/password.
    for (encoded, image) in [(true, &image), (false, &plain)] {
        let config = registry.client_config(user, password, encoded);
        let d = Daemon::builder(BIN)
            .workload("private.yaml", &image_workload("private", image, 2))
            .env("DOCKER_CONFIG", &config.path().display().to_string())
            .start()
            .await;
        let pool = d.wait_idle("private", 2).await;
        assert!(pool["lastError"].is_null(), "{pool}");
        d.claim("bob", json!({})).await;

        let auth = base64_of(&format!("{user}:{password}"));
        let (_, pools) = d.get("/pools").await;
        let (_, workloads) = d.get("/workloads").await;
        for (what, text) in [
            ("GET /pools", pools.to_string()),
            ("GET /workloads", workloads.to_string()),
            ("the daemon's log", d.log_text()),
        ] {
            assert_no_secret(&text, &[password, &auth], what);
        }
        assert!(
            d.log_text().contains("config.json"),
            "the log says where the credentials came from:\n{}",
            d.log_tail()
        );
    }
}

#[tokio::test]
async fn a_wrong_password_or_a_missing_tag_is_the_pools_last_error() {
    let (user, password) = ("puller", "right-Pa55word");
    let private = Registry::start_private(user, password);
    let locked = private.push_test_image("bh/locked", "v1");
    let open = Registry::start_open();
    open.push_test_image("bh/there", "v1");
    let missing = open.reference("bh/there", "no-such-tag");

    let wrong = "wrong-Pa55word";
    let config = private.client_config(user, wrong, true);
    let d = Daemon::builder(BIN)
        .workload("locked.yaml", &image_workload("locked", &locked, 1))
        .workload("missing.yaml", &image_workload("missing", &missing, 1))
        .env("DOCKER_CONFIG", &config.path().display().to_string())
        .start()
        .await;

    let message = last_error(&d, "locked").await;
    println!("lastError of pool locked: {message}");
    assert!(message.contains(&locked), "names the image: {message}");
    assert!(
        message.contains("authentication failed"),
        "says why: {message}"
    );
    assert!(
        message.contains("config.json"),
        "says where the credentials came from: {message}"
    );
    let message = last_error(&d, "missing").await;
    println!("lastError of pool missing: {message}");
    assert!(message.contains(&missing), "names the image: {message}");
    assert!(message.contains("not found"), "says why: {message}");

    let (_, pools) = d.get("/pools").await;
    let texts: [(&str, String); 2] = [
        ("GET /pools", pools.to_string()),
        ("the daemon's log", d.log_text()),
    ];
    let wrong_auth = base64_of(&format!("{user}:{wrong}"));
    for (what, text) in texts {
        assert_no_secret(&text, &[wrong, password, &wrong_auth], what);
    }
    let (_, v): (u16, Value) = d
        .post(
            "/tenants/carol/claim",
            json!({"poolId": "locked", "waitMs": 0}),
        )
        .await;
    assert!(
        v["error"].is_string(),
        "no container without the image: {v}"
    );
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}
