//! The local state cache end to end: real daemon, real Docker, real rclone, a real S3
//! endpoint (`rclone serve s3` on 127.0.0.1, whose bucket is a directory, so a test
//! plays "another writer" by editing an object's file). Whether a claim was served
//! from the cache is read from the claim's `timings.restoreSource`, and what it was
//! served is read inside the container.

use std::path::{Path, PathBuf};

use std::time::Duration;

use boilerhouse_testkit::hold::{HoldProxy, Stage};
use boilerhouse_testkit::s3::S3Server;
use boilerhouse_testkit::*;
use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_boilerhouse");
const BUCKET: &str = "bh";
const POOL: &str = "app";

fn cached_workload(s3: &S3Server) -> String {
    workload_via(s3, &s3.endpoint())
}

fn workload_via(s3: &S3Server, endpoint: &str) -> String {
    workload(
        POOL,
        &format!(
            "pool:\n  min_size: 1\n  max_size: 3\nsync:\n  sink:\n    type: s3\n    bucket: {BUCKET}\n    region: us-east-1\n    endpoint: {}\n    access_key_id: {}\n    secret_access_key: {}\n    prefix: tenants/${{tenantId}}/\n  mappings:\n    - path: /\n      direction: bidirectional\n      mode: sync\n",
            endpoint,
            s3.access_key(),
            s3.secret_key()
        ),
    )
}

async fn rig(env: &[(&str, &str)]) -> (S3Server, Daemon) {
    let s3 = S3Server::start_new().await;
    std::fs::create_dir_all(s3.root_dir().join(BUCKET)).unwrap();
    let mut b = Daemon::builder(BIN).workload("app.yaml", &cached_workload(&s3));
    for (k, v) in env {
        b = b.env(k, v);
    }
    let d = b.start().await;
    d.wait_idle(POOL, 1).await;
    (s3, d)
}

fn remote(s3: &S3Server, tenant: &str, rel: &str) -> PathBuf {
    s3.root_dir()
        .join(BUCKET)
        .join("tenants")
        .join(tenant)
        .join(rel)
}

/// Claims, checks where the state came from, and returns the container's name.
async fn claim_from(d: &Daemon, tenant: &str, source: &str) -> (String, Value) {
    let v = d.claim(tenant, json!({})).await;
    assert_eq!(
        v["timings"]["restoreSource"],
        source,
        "claim of {tenant} restored from {source}: {v}\n{}",
        d.log_tail()
    );
    let name = d.docker_name(v["containerId"].as_str().unwrap());
    (name, v)
}

fn write_inside(name: &str, script: &str) {
    let (ok, out) = docker_exec(name, "1000", script);
    assert!(ok, "writing in {name}: {out}");
}

fn read_inside(name: &str, script: &str) -> String {
    let (ok, out) = docker_exec(name, "1000", script);
    assert!(ok, "reading in {name}: {out}");
    out.trim_end().to_owned()
}

async fn status(d: &Daemon, tenant: &str) -> Value {
    let (s, v) = d.get(&format!("/tenants/{tenant}/status")).await;
    assert_eq!(s, 200, "{v}");
    v
}

async fn metrics(d: &Daemon) -> String {
    let resp = reqwest::get(d.url("/metrics")).await.unwrap();
    resp.text().await.unwrap()
}

fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let meta = entry.metadata().unwrap();
        total += if meta.is_dir() {
            dir_bytes(&entry.path())
        } else {
            meta.len()
        };
    }
    total
}

#[tokio::test]
async fn a_returning_tenant_is_served_from_the_cache() {
    let (s3, d) = rig(&[]).await;
    std::fs::create_dir_all(remote(&s3, "alice", "")).unwrap();
    std::fs::write(remote(&s3, "alice", "seed.txt"), "from the bucket").unwrap();
    let (name, first) = claim_from(&d, "alice", "s3").await;
    assert_eq!(status(&d, "alice").await["syncStatus"]["lastRestore"], "s3");
    for stage in [
        "queueWaitMs",
        "secretsMs",
        "restoreMs",
        "ledgerMs",
        "totalMs",
    ] {
        assert!(first["timings"][stage].is_f64(), "{stage}: {first}");
    }
    write_inside(
        &name,
        "mkdir -p /state/deep/er && echo mine > /state/deep/er/f && echo v2 > /state/seed.txt",
    );
    d.release("alice", json!({})).await;
    d.wait_idle(POOL, 1).await;

    // The raw response carries the same stages as a Server-Timing header.
    let resp = reqwest::Client::new()
        .post(d.url("/tenants/alice/claim"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let timing = resp.headers()["server-timing"].to_str().unwrap().to_owned();
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["timings"]["restoreSource"],
        "cache",
        "{v}\n{}",
        d.log_tail()
    );
    for stage in [
        "queue;dur=",
        "secrets;dur=",
        "restore;dur=",
        "ledger;dur=",
        "total;dur=",
    ] {
        assert!(timing.contains(stage), "{stage} in {timing}");
    }
    assert!(timing.contains("desc=\"cache\""), "{timing}");
    let name = d.docker_name(v["containerId"].as_str().unwrap());
    let out = read_inside(
        &name,
        "cat /state/deep/er/f /state/seed.txt && stat -c '%u %a' /state/seed.txt /state/deep",
    );
    assert_eq!(out.trim(), "mine\nv2\n1000 644\n1000 755", "{out}");
    assert_eq!(
        status(&d, "alice").await["syncStatus"]["lastRestore"],
        "cache"
    );
    let m = metrics(&d).await;
    assert!(m.contains("boilerhouse_state_cache_hits_total"), "{m}");
    // The first claim downloaded: the daemon's own download, into the empty state dir.
    assert!(
        m.lines()
            .any(|l| l.starts_with("boilerhouse_sync_own_downloads_total{result=\"ok\"}")),
        "{m}"
    );
    // The cache is private to the daemon.
    let root = d.path("data/state-cache");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&root).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{}", root.display());
}

#[tokio::test]
async fn a_change_by_another_writer_is_downloaded() {
    let (s3, d) = rig(&[]).await;
    let (name, _) = claim_from(&d, "bob", "s3").await;
    write_inside(&name, "echo aaaa > /state/f && echo keep > /state/g");
    d.release("bob", json!({})).await;
    d.wait_idle(POOL, 1).await;
    // Same size, other content: only the ETag tells them apart.
    std::fs::write(remote(&s3, "bob", "f"), "bbbb\n").unwrap();
    let (name, _) = claim_from(&d, "bob", "s3").await;
    assert_eq!(read_inside(&name, "cat /state/f /state/g"), "bbbb\nkeep");
    let m = metrics(&d).await;
    assert!(
        m.contains("reason=\"remote_changed\""),
        "a miss by reason: {m}"
    );
    // A new object and a deleted one are changes too.
    d.release("bob", json!({})).await;
    d.wait_idle(POOL, 1).await;
    std::fs::write(remote(&s3, "bob", "new"), "n").unwrap();
    std::fs::remove_file(remote(&s3, "bob", "g")).unwrap();
    let (name, _) = claim_from(&d, "bob", "s3").await;
    assert_eq!(read_inside(&name, "ls /state"), "f\nnew");
}

#[tokio::test]
async fn two_tenants_caches_never_mix() {
    let (_s3, d) = rig(&[]).await;
    for t in ["t1", "t2"] {
        let (name, _) = claim_from(&d, t, "s3").await;
        write_inside(
            &name,
            &format!("echo {t} > /state/who && echo {t} > /state/{t}"),
        );
    }
    for t in ["t1", "t2"] {
        d.release(t, json!({})).await;
    }
    d.wait_idle(POOL, 1).await;
    for t in ["t1", "t2"] {
        let (name, _) = claim_from(&d, t, "cache").await;
        assert_eq!(
            read_inside(&name, "ls /state && cat /state/who"),
            format!("{t}\nwho\n{t}")
        );
    }
}

#[tokio::test]
async fn the_size_limit_holds_and_an_evicted_entry_is_downloaded() {
    let (_s3, d) = rig(&[("BOILERHOUSE_STATE_CACHE_MB", "1")]).await;
    for t in ["big1", "big2"] {
        let (name, _) = claim_from(&d, t, "s3").await;
        write_inside(
            &name,
            &format!(
                "head -c 600000 /dev/zero | tr '\\0' '{}' > /state/blob",
                &t[3..]
            ),
        );
        d.release(t, json!({})).await;
        d.wait_idle(POOL, 1).await;
        let used = dir_bytes(&d.path("data/state-cache"));
        assert!(used <= 1024 * 1024, "the cache holds {used} bytes");
    }
    // big1 was evicted for big2: its claim downloads, and gets its own bytes.
    let (name, _) = claim_from(&d, "big1", "s3").await;
    assert_eq!(read_inside(&name, "head -c 3 /state/blob"), "111");
    let m = metrics(&d).await;
    assert!(m.contains("reason=\"evicted\""), "{m}");
    let (name, _) = claim_from(&d, "big2", "cache").await;
    assert_eq!(read_inside(&name, "head -c 3 /state/blob"), "222");
}

#[tokio::test]
async fn kill_9_between_release_and_reclaim_loses_nothing_and_serves_nothing_stale() {
    let (s3, mut d) = rig(&[]).await;
    let (name, _) = claim_from(&d, "k", "s3").await;
    write_inside(&name, "echo one > /state/f");
    d.release("k", json!({})).await;
    wait_durable(&d, 1).await;
    d.kill9();
    d.restart().await;
    d.wait_idle(POOL, 1).await;
    // The entry survived the crash, and still equals the remote.
    let (name, _) = claim_from(&d, "k", "cache").await;
    assert_eq!(read_inside(&name, "cat /state/f"), "one");
    // It moved into the container (renamed, not copied): no entry is left behind.
    let left: Vec<_> = std::fs::read_dir(d.path("data/state-cache"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "the cache still holds {left:?}");
    write_inside(&name, "echo two > /state/f");
    d.release("k", json!({})).await;
    d.kill9();
    // Changed while the daemon was down.
    std::fs::write(remote(&s3, "k", "f"), "three").unwrap();
    d.restart().await;
    d.wait_idle(POOL, 1).await;
    let (name, _) = claim_from(&d, "k", "s3").await;
    assert_eq!(read_inside(&name, "cat /state/f"), "three");
    // A crash while an entry is being written leaves no half entry behind.
    let leftover = d.path("data/state-cache/.tmp-leftover");
    std::fs::create_dir_all(leftover.join("files")).unwrap();
    d.kill9();
    d.restart().await;
    assert!(
        !leftover.exists(),
        "incomplete entries are removed at start"
    );
}

#[tokio::test]
async fn s3_down_at_reclaim_fails_the_claim_instead_of_serving_unchecked_state() {
    let (mut s3, d) = rig(&[]).await;
    let (name, _) = claim_from(&d, "down", "s3").await;
    write_inside(&name, "echo saved > /state/f");
    d.release("down", json!({})).await;
    d.wait_idle(POOL, 1).await;
    s3.stop();
    let (code, v) = d.post("/tenants/down/claim", json!({})).await;
    assert_eq!(
        code, 502,
        "the cache cannot be checked, so the claim fails: {v}"
    );
    let m = metrics(&d).await;
    assert!(m.contains("reason=\"check_failed\""), "{m}");
    s3.start().await;
    d.wait_idle(POOL, 1).await;
    let (name, _) = claim_from(&d, "down", "cache").await;
    assert_eq!(read_inside(&name, "cat /state/f"), "saved");
}

#[tokio::test]
async fn a_disabled_cache_always_downloads() {
    let (_s3, d) = rig(&[("BOILERHOUSE_STATE_CACHE_MB", "0")]).await;
    let (name, _) = claim_from(&d, "off", "s3").await;
    write_inside(&name, "echo x > /state/f");
    d.release("off", json!({})).await;
    d.wait_idle(POOL, 1).await;
    let (name, _) = claim_from(&d, "off", "s3").await;
    assert_eq!(read_inside(&name, "cat /state/f"), "x");
    assert!(metrics(&d).await.contains("reason=\"disabled\""));
}

/// The cache's own listing (ListObjectsV2; rclone lists with V1 against this sink).
const CACHE_LISTING: &str = "list-type=2";
const WAIT: Duration = Duration::from_secs(60);

/// Sends a claim or release from a task of its own, so the daemon can be killed
/// while it is in flight.
fn in_flight(d: &Daemon, path: &str) -> tokio::task::JoinHandle<Result<u16, String>> {
    let url = d.url(path);
    tokio::spawn(async move {
        let resp = reqwest::Client::new()
            .post(&url)
            .json(&json!({}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        Ok(resp.status().as_u16())
    })
}

async fn held_rig() -> (S3Server, HoldProxy, Daemon) {
    let s3 = S3Server::start_new().await;
    std::fs::create_dir_all(s3.root_dir().join(BUCKET)).unwrap();
    let proxy = HoldProxy::start(&s3.endpoint());
    let d = Daemon::builder(BIN)
        .workload("app.yaml", &workload_via(&s3, &proxy.endpoint()))
        .start()
        .await;
    d.wait_idle(POOL, 1).await;
    (s3, proxy, d)
}

/// Killed after the release's upload, while the cache lists the remote for its
/// manifest (the container paused, the claim not yet forgotten): after the restart
/// the claim is intact, and its next release fills the cache.
#[tokio::test]
async fn kill_9_between_the_upload_and_the_cache_fill() {
    let (_s3, proxy, mut d) = held_rig().await;
    let (name, v) = claim_from(&d, "fill", "s3").await;
    write_inside(&name, "echo kept > /state/f");
    proxy.hold_next("GET", Some(CACHE_LISTING), Stage::Request);
    let release = in_flight(&d, "/tenants/fill/release");
    proxy.wait_held(WAIT).await;
    d.kill9();
    assert_ne!(release.await.unwrap(), Ok(200));
    proxy.release();
    d.start_again().await;
    let st = status(&d, "fill").await;
    assert_eq!(
        st["containerId"], v["containerId"],
        "the claim survived: {st}"
    );
    d.release("fill", json!({})).await;
    d.wait_idle(POOL, 1).await;
    let (name, _) = claim_from(&d, "fill", "cache").await;
    assert_eq!(read_inside(&name, "cat /state/f"), "kept");
}

/// Killed while a claim checks its entry; the remote changes before the restart:
/// the claim after it downloads the change.
#[tokio::test]
async fn kill_9_during_the_check_then_a_remote_change_is_downloaded() {
    let (s3, proxy, mut d) = held_rig().await;
    let (name, _) = claim_from(&d, "chk", "s3").await;
    write_inside(&name, "echo old > /state/f");
    d.release("chk", json!({})).await;
    d.wait_idle(POOL, 1).await;
    proxy.hold_next("GET", Some(CACHE_LISTING), Stage::Request);
    let claim = in_flight(&d, "/tenants/chk/claim");
    proxy.wait_held(WAIT).await;
    d.kill9();
    assert_ne!(claim.await.unwrap(), Ok(200));
    proxy.release();
    std::fs::write(remote(&s3, "chk", "f"), "new\n").unwrap();
    d.start_again().await;
    d.wait_idle(POOL, 1).await;
    let (name, _) = claim_from(&d, "chk", "s3").await;
    assert_eq!(read_inside(&name, "cat /state/f"), "new");
}

/// Waits until `n` entries of the cache have their manifest on disk (written after
/// the release answered, once the files are flushed): they survive a crash.
async fn wait_durable(d: &Daemon, n: usize) {
    let root = d.path("data/state-cache");
    let durable = || {
        std::fs::read_dir(&root)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                    .filter(|e| e.path().join("manifest.json").is_file())
                    .count()
            })
            .unwrap_or(0)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while durable() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "the cache's entries were not flushed within 30 s ({} of {n})",
            durable()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
