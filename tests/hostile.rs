//! Claims in hostile conditions, on the real engine: many concurrent claims with
//! secrets for the same tenants, and a claim ledger whose disk fills up.

use std::process::Command;
use std::time::Duration;

use boilerhouse_testkit::*;
use futures_util::stream::{self, StreamExt};
use serde_json::{json, Value};

/// The daemon binary cargo built for this test crate.
const BIN: &str = env!("CARGO_BIN_EXE_boilerhouse");

/// 1,000 claims across 25 tenants, 200 in flight at once, each with its own secrets:
/// every answer is 200, and when it comes the files are on disk, complete, and hold
/// that tenant's values (a concurrent claim of the same tenant may have replaced the
/// value since, never with another tenant's).
#[tokio::test]
async fn a_thousand_concurrent_claims_with_secrets_all_find_their_files() {
    let d = web_daemon(BIN, "pool:\n  min_size: 8\n  max_size: 40\n").await;
    d.wait_idle("web", 8).await;
    let results: Vec<(String, u16, Value)> = stream::iter(0..1000)
        .map(|i| {
            let d = &d;
            async move {
                let tenant = format!("t{}", i % 25);
                let body = json!({
                    "poolId": "web",
                    "secrets": {"API_KEY": format!("{tenant}-key-{i}"), "TENANT": tenant},
                });
                let (s, v) = d.post(&format!("/tenants/{tenant}/claim"), body).await;
                if s == 200 {
                    // Checked as soon as the answer is in, before the next claim starts.
                    let dir = d.secrets_dir(v["containerId"].as_str().unwrap());
                    let who = std::fs::read_to_string(dir.join("TENANT"))
                        .unwrap_or_else(|e| panic!("TENANT missing after 200 for {tenant}: {e}"));
                    assert_eq!(who, tenant);
                    let key = std::fs::read_to_string(dir.join("API_KEY")).unwrap();
                    assert!(key.starts_with(&format!("{tenant}-key-")), "{key}");
                }
                (tenant, s, v)
            }
        })
        .buffer_unordered(200)
        .collect()
        .await;
    let failed: Vec<_> = results.iter().filter(|(_, s, _)| *s != 200).collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    // One container per tenant, and no temp file left behind.
    let mut containers = std::collections::HashMap::new();
    for (tenant, _, v) in &results {
        let c = v["containerId"].as_str().unwrap().to_owned();
        assert_eq!(containers.entry(tenant.clone()).or_insert(c.clone()), &c);
    }
    assert_eq!(containers.len(), 25);
    for c in containers.values() {
        let names: Vec<String> = std::fs::read_dir(d.secrets_dir(c))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, ["API_KEY", "TENANT"], "{names:?}");
    }
    // Stale keys go: a later claim with one key leaves only that key.
    let c = d
        .claim("t0", json!({"poolId": "web", "secrets": {"ONLY": "x"}}))
        .await;
    let dir = d.secrets_dir(c["containerId"].as_str().unwrap());
    assert!(dir.join("ONLY").exists());
    assert!(!dir.join("API_KEY").exists());
}

/// Unmounts the tmpfs even when the test fails.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// `DATA_DIR` on a small tmpfs that fills up: the claim whose record cannot be
/// written is answered 503 naming the data dir and the OS error, its container is
/// not left claimed, `/ready` turns false, and claims work again once space is back.
#[tokio::test]
async fn a_full_data_dir_refuses_claims_until_space_is_back() {
    assert!(
        unsafe { libc::geteuid() } == 0,
        "this test mounts a tmpfs and must run as root (CI does)"
    );
    let base = tempfile::Builder::new()
        .prefix("bh-full-")
        .tempdir()
        .unwrap();
    let data = base.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&data)
        .status()
        .unwrap()
        .success();
    assert!(ok, "cannot mount a tmpfs on {}", data.display());
    let _mount = Mount(data.clone());
    let d = Daemon::builder(BIN)
        .workload(
            "web.yaml",
            &workload(
                "web",
                "pool:\n  min_size: 2\n  max_size: 6\n  recycle: reuse\n",
            ),
        )
        .env("BOILERHOUSE_DATA_DIR", &data.display().to_string())
        .start()
        .await;
    d.wait_idle("web", 2).await;
    d.claim("before", json!({"poolId": "web"})).await;
    // Fill the tmpfs to the last page.
    let filler = data.join("filler");
    // dd runs until the disk is full: it must fail, and say why.
    let dd = Command::new("dd")
        .args(["if=/dev/zero", "bs=4096"])
        .arg(format!("of={}", filler.display()))
        .output()
        .expect("run dd");
    let dd_err = String::from_utf8_lossy(&dd.stderr);
    assert!(
        !dd.status.success() && dd_err.contains("No space left on device"),
        "dd should fill the tmpfs: {dd_err}"
    );
    // tmpfs allocates whole pages: the log's last page may still take a few appends.
    let mut refused = None;
    for i in 0..200 {
        let (s, v) = d
            .post(&format!("/tenants/full{i}/claim"), json!({"poolId": "web"}))
            .await;
        if s != 200 {
            refused = Some((i, s, v));
            break;
        }
        // A release on a full disk may fail too (its record removal is a write).
        let _ = d
            .post(
                &format!("/tenants/full{i}/release"),
                json!({"poolId": "web", "sync": false}),
            )
            .await;
    }
    let (i, status, body) = refused.expect("no claim was refused on a full disk");
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "ledger_unavailable", "{body}");
    let msg = body["error"].as_str().unwrap();
    assert!(msg.contains(&data.display().to_string()), "{msg}");
    assert!(msg.contains("No space left on device"), "{msg}");
    // The refused tenant holds nothing; the earlier claim is intact.
    let (_, v) = d.get(&format!("/tenants/full{i}/status")).await;
    assert_eq!(
        v["status"], "cold",
        "the refused claim must not hold a container: {v}"
    );
    let (_, v) = d.get("/tenants/before/status").await;
    assert_eq!(v["status"], "warm", "{v}");
    let (s, ready) = d.get("/ready").await;
    assert_eq!(s, 503, "{ready}");
    assert!(
        ready["error"].as_str().unwrap().contains("claim ledger"),
        "{ready}"
    );
    // Space back: ready again, claims work, and the log replays cleanly on restart.
    std::fs::remove_file(&filler).unwrap();
    let mut ok = false;
    for _ in 0..50 {
        if d.get("/ready").await.0 == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "/ready did not recover: {:?}", d.get("/ready").await);
    d.claim("after", json!({"poolId": "web"})).await;
    let mut d = d;
    d.restart().await;
    for t in ["before", "after"] {
        let (_, v) = d.get(&format!("/tenants/{t}/status")).await;
        assert_eq!(v["status"], "warm", "{t} lost at restart: {v}");
    }
    assert!(
        !d.log_text().contains("unreadable claim record"),
        "torn ledger line"
    );
}
