//! Autoscaling on the real engine: the idle target follows a burst of claims up
//! and, after a lull and the scale-down delay, back down — and the engine's
//! containers follow the target. Warm hits are counted per pool.

use std::time::Duration;

use boilerhouse_testkit::*;
use serde_json::{json, Value};

/// The daemon binary cargo built for this test crate.
const BIN: &str = env!("CARGO_BIN_EXE_boilerhouse");
const WAIT: Duration = Duration::from_secs(90);

/// Containers of the daemon's instance that the engine runs.
fn running_containers(d: &Daemon) -> usize {
    let (ok, out) = docker(&[
        "ps",
        "-q",
        "--filter",
        &format!("label=boilerhouse.instance={}", d.instance),
    ]);
    assert!(ok, "docker ps: {out}");
    out.lines().filter(|l| !l.trim().is_empty()).count()
}

fn target(v: &Value) -> u64 {
    v["idleTarget"].as_u64().unwrap_or_default()
}

#[tokio::test]
async fn the_idle_target_rises_with_a_burst_and_falls_after_a_lull() {
    let d = web_daemon(
        BIN,
        "pool:\n  min_size: 1\n  max_size: 12\n  autoscale:\n    buffer: 1\n    window: 3s\n    scale_down_delay: 2s",
    )
    .await;
    let calm = d.wait_idle("web", 1).await;
    assert_eq!(target(&calm), 1, "{calm}");
    assert_eq!(calm["autoscale"]["buffer"], 1, "{calm}");

    // A burst of 5 claims: demand 5 + buffer 1.
    let tenants: Vec<String> = (0..5).map(|i| format!("burst-{i}")).collect();
    let claims = tenants.iter().map(|t| {
        let d = &d;
        async move { d.post(&format!("/tenants/{t}/claim"), json!({})).await }
    });
    for (s, v) in futures_util::future::join_all(claims).await {
        assert_eq!(s, 200, "{v}\n{}", d.log_tail());
    }
    let raised = d.pool("web").await;
    assert!(target(&raised) >= 6, "5 arrivals + 1: {raised}");
    assert!(
        ["demand", "scale_down_delay"].contains(&raised["idleTargetReason"].as_str().unwrap()),
        "{raised}"
    );
    // The engine follows: idle ready containers up to the raised target.
    let warm = d
        .wait_pool("web", WAIT, |v| v["idleCount"].as_u64() >= Some(6))
        .await;
    assert_eq!(warm["claimedCount"], 5, "{warm}");
    eventually(WAIT, "the engine to run 5 claimed + 6 idle", || {
        (running_containers(&d) >= 11).then_some(())
    })
    .await;

    // The burst ends; the window passes; the delay holds the target, then lets go.
    for t in &tenants {
        d.release(t, json!({})).await;
    }
    let held = d
        .wait_pool("web", WAIT, |v| v["idleTargetReason"] == "scale_down_delay")
        .await;
    assert!(target(&held) >= 6, "held at the peak: {held}");
    let lowered = d
        .wait_pool("web", WAIT, |v| target(v) == 1 && v["idleCount"] == 1)
        .await;
    assert_eq!(lowered["idleTargetReason"], "demand", "{lowered}");
    eventually(
        WAIT,
        "the engine to run only the one idle container",
        || (running_containers(&d) == 1).then_some(()),
    )
    .await;

    // Warm hits: the first claim found the one idle container; the rest queued.
    assert_eq!(lowered["claimsNew"], 5, "{lowered}");
    let warm = lowered["claimsWarm"].as_u64().unwrap();
    assert!((1..=5).contains(&warm), "{lowered}");
    let (_, metrics) = d.get("/metrics").await;
    let text = metrics.as_str().unwrap_or_default();
    let ratio = format!(
        "boilerhouse_pool_warm_hit_ratio{{pool=\"web\"}} {}",
        warm as f64 / 5.0
    );
    assert!(text.contains(&ratio), "{ratio} in:\n{text}");
    assert!(
        text.contains("boilerhouse_pool_idle_target{pool=\"web\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("boilerhouse_pool_idle_target_reason{pool=\"web\",reason=\"demand\"} 1"),
        "{text}"
    );
}

/// The limits bound the target: `max_size` minus the claimed containers, with the
/// reason saying so.
#[tokio::test]
async fn max_size_caps_the_target_and_says_so() {
    let d = web_daemon(
        BIN,
        "pool:\n  min_size: 0\n  max_size: 3\n  autoscale:\n    buffer: 100%\n    window: 30s\n    scale_down_delay: 30s",
    )
    .await;
    d.wait_pool("web", WAIT, |v| v["idleTargetReason"] == "demand")
        .await;
    for t in ["a", "b"] {
        d.claim(t, json!({})).await;
    }
    // Demand 2 + 100% of 2 claimed = 4, but only 1 fits beside the 2 claimed.
    let capped = d
        .wait_pool("web", WAIT, |v| v["idleTargetReason"] == "max_size")
        .await;
    assert_eq!(target(&capped), 1, "{capped}");
    let full = d.wait_pool("web", WAIT, |v| v["idleCount"] == 1).await;
    assert_eq!(full["currentSize"], 3, "never above max_size: {full}");
}
