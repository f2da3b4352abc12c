//! State sync end to end: real daemon, real Docker, real rclone, a real S3 endpoint
//! (`rclone serve s3` on 127.0.0.1). The bucket is a directory of the S3 server, so
//! tests seed and inspect objects as files.

use std::time::Duration;

use boilerhouse_testkit::s3::S3Server;
use boilerhouse_testkit::*;
use serde_json::json;

/// The daemon binary cargo built for this test crate.
const BIN: &str = env!("CARGO_BIN_EXE_boilerhouse");

const BUCKET: &str = "bh";

fn sync_workload(id: &str, s3: &S3Server, sync_extra: &str, extra: &str) -> String {
    workload(
        id,
        &format!(
            "pool:\n  min_size: 1\n  max_size: 3\n{extra}\nsync:\n  sink:\n    type: s3\n    bucket: {BUCKET}\n    region: us-east-1\n    endpoint: {}\n    access_key_id: {}\n    secret_access_key: {}\n    prefix: tenants/${{tenantId}}/\n{sync_extra}",
            s3.endpoint(),
            s3.access_key(),
            s3.secret_key()
        ),
    )
}

const MIRROR: &str =
    "  mappings:\n    - path: /\n      direction: bidirectional\n      mode: sync\n";

fn remote(s3: &S3Server, tenant: &str) -> std::path::PathBuf {
    s3.root_dir().join(BUCKET).join("tenants").join(tenant)
}

fn seed(s3: &S3Server, tenant: &str, rel: &str, content: &str) {
    let p = remote(s3, tenant).join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

async fn s3_daemon(id: &str, sync_extra: &str, extra: &str) -> (S3Server, Daemon) {
    let s3 = S3Server::start_new().await;
    std::fs::create_dir_all(s3.root_dir().join(BUCKET)).unwrap();
    let d = Daemon::builder(BIN)
        .workload(
            &format!("{id}.yaml"),
            &sync_workload(id, &s3, sync_extra, extra),
        )
        .start()
        .await;
    d.wait_idle(id, 1).await;
    (s3, d)
}

#[tokio::test]
async fn state_is_restored_on_claim_and_saved_on_release() {
    let (s3, d) = s3_daemon("app", MIRROR, "").await;
    seed(&s3, "alice", "notes.txt", "from the bucket");
    seed(&s3, "alice", "deep/nested/file", "nested");
    let v = d.claim("alice", json!({})).await;
    assert_eq!(v["syncStatus"]["state"], "idle", "{v}");
    let name = d.docker_name(v["containerId"].as_str().unwrap());
    let (ok, out) = docker_exec(&name, "1000", "cat /state/notes.txt /state/deep/nested/file && echo new > /state/written-inside && mkdir -p /state/d2 && echo x > /state/d2/y");
    assert!(
        ok,
        "restored state must be readable and writable by the workload's user: {out}"
    );
    assert!(
        out.contains("from the bucket") && out.contains("nested"),
        "{out}"
    );

    d.release("alice", json!({})).await;
    let files = listing(&remote(&s3, "alice"));
    assert_eq!(
        files,
        vec!["d2/y", "deep/nested/file", "notes.txt", "written-inside"],
        "{files:?}"
    );

    // Destroy recycling: the next claim is another container, and sees it all.
    d.wait_idle("app", 1).await;
    let again = d.claim("alice", json!({})).await;
    assert_ne!(again["containerId"], v["containerId"]);
    let name = d.docker_name(again["containerId"].as_str().unwrap());
    let (ok, out) = docker_exec(&name, "1000", "cat /state/written-inside /state/d2/y");
    assert!(ok && out.contains("new") && out.contains('x'), "{out}");

    // Sync mode mirrors deletions to the bucket.
    let (ok, out) = docker_exec(&name, "1000", "rm /state/notes.txt");
    assert!(ok, "{out}");
    d.release("alice", json!({})).await;
    assert!(
        !remote(&s3, "alice").join("notes.txt").exists(),
        "sync mode deletes remotely"
    );
}

#[tokio::test]
async fn copy_mode_upload_only_and_patterns() {
    let mappings = "  mappings:\n    - path: keep\n      direction: bidirectional\n      mode: copy\n    - path: backup\n      direction: upload\n      mode: sync\n    - path: logs\n      direction: bidirectional\n      mode: sync\n      pattern: \"*.log\"\n";
    let (s3, d) = s3_daemon("app", mappings, "").await;
    seed(&s3, "t", "keep/old", "remote-only");
    seed(&s3, "t", "backup/prev", "not restored");
    let v = d.claim("t", json!({})).await;
    let name = d.docker_name(v["containerId"].as_str().unwrap());
    let (ok, out) = docker_exec(&name, "1000", "ls -R /state; rm -f /state/keep/old; mkdir -p /state/keep /state/backup /state/logs && echo a > /state/keep/new && echo b > /state/backup/now && echo c > /state/logs/app.log && echo d > /state/logs/skip.txt");
    assert!(ok, "{out}");
    assert!(
        !out.contains("prev"),
        "upload-only mappings are not restored: {out}"
    );
    d.release("t", json!({})).await;
    let files = listing(&remote(&s3, "t"));
    assert!(
        files.contains(&"keep/old".to_string()),
        "copy never deletes: {files:?}"
    );
    assert!(files.contains(&"keep/new".to_string()), "{files:?}");
    assert!(files.contains(&"backup/now".to_string()), "{files:?}");
    assert!(
        !files.contains(&"backup/prev".to_string()),
        "sync mirrors the upload-only mapping: {files:?}"
    );
    assert!(files.contains(&"logs/app.log".to_string()), "{files:?}");
    assert!(
        !files.contains(&"logs/skip.txt".to_string()),
        "pattern filters: {files:?}"
    );
}

#[tokio::test]
async fn periodic_and_manual_sync() {
    let policy = format!("{MIRROR}  policy:\n    periodic: 1s\n");
    let (s3, d) = s3_daemon("app", &policy, "").await;
    let v = d.claim("p", json!({})).await;
    let name = d.docker_name(v["containerId"].as_str().unwrap());
    docker_exec(&name, "1000", "echo tick > /state/periodic");
    eventually(Duration::from_secs(15), "a periodic upload", || {
        remote(&s3, "p").join("periodic").exists().then_some(())
    })
    .await;

    // Manual: upload, then download, then both.
    docker_exec(&name, "1000", "echo up > /state/manual-up");
    let (s, r) = d
        .post("/tenants/p/sync", json!({"direction": "upload"}))
        .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["success"], true);
    assert_eq!(r["results"][0]["direction"], "upload");
    assert!(remote(&s3, "p").join("manual-up").exists());
    seed(&s3, "p", "manual-down", "down");
    let (s, r) = d
        .post("/tenants/p/sync", json!({"direction": "download"}))
        .await;
    assert_eq!(s, 200, "{r}");
    let (_, out) = docker_exec(&name, "1000", "cat /state/manual-down");
    assert!(out.contains("down"), "{out}");
    let (s, r) = d.post("/tenants/p/sync", json!({})).await;
    assert_eq!(s, 200, "{r}");
    let (_, st) = d.get("/tenants/p/status").await;
    assert!(st["syncStatus"]["lastSyncAt"].is_string(), "{st}");
    let (s, r) = d.post("/tenants/nobody/sync", json!({})).await;
    assert_eq!(s, 404, "{r}");
}

#[tokio::test]
async fn manual_sync_refused_without_sync_or_when_disabled() {
    let s3 = S3Server::start_new().await;
    let d = Daemon::builder(BIN)
        .workload(
            "plain.yaml",
            &workload("plain", "pool:\n  min_size: 1\n  max_size: 2\n"),
        )
        .workload(
            "nomanual.yaml",
            &sync_workload(
                "nomanual",
                &s3,
                &format!("{MIRROR}  policy:\n    manual: false\n"),
                "",
            ),
        )
        .start()
        .await;
    d.wait_idle("plain", 1).await;
    d.claim("u", json!({"poolId": "plain"})).await;
    let (s, v) = d.post("/tenants/u/sync", json!({})).await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["code"], "sync_not_configured");
    let (s, v) = d
        .post("/tenants/u/sync", json!({"poolId": "nomanual"}))
        .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(v["code"], "manual_sync_disabled");
}

#[tokio::test]
async fn an_s3_outage_never_loses_state() {
    let (mut s3, d) = s3_daemon("app", MIRROR, "").await;
    seed(&s3, "seeded", "f", "remote");
    let before = listing(&s3.root_dir());

    // Down at claim: 502, nothing remote changed, no claim left behind.
    s3.stop();
    let (s, v) = d.post("/tenants/seeded/claim", json!({})).await;
    assert_eq!(s, 502, "{v}");
    assert_eq!(v["code"], "sync_failed");
    let (_, st) = d.get("/tenants/seeded/status").await;
    assert_eq!(st["status"], "cold", "{st}");
    assert_eq!(listing(&s3.root_dir()), before);

    // Down at release: 502, claim and state intact; back up: release succeeds.
    s3.start().await;
    let v = d.claim("writer", json!({})).await;
    let cid = v["containerId"].as_str().unwrap().to_owned();
    let name = d.docker_name(&cid);
    docker_exec(
        &name,
        "1000",
        "for i in 1 2 3 4 5; do echo $i > /state/file$i; done",
    );
    s3.stop();
    let (s, r) = d.post("/tenants/writer/release", json!({})).await;
    assert_eq!(s, 502, "{r}");
    assert_eq!(r["code"], "sync_failed");
    let (_, st) = d.get("/tenants/writer/status").await;
    assert_eq!(st["status"], "warm", "{st}");
    assert_eq!(st["containerId"], cid.as_str());
    assert_eq!(read(&d.state_dir(&cid).join("file3")).trim(), "3");
    let (ok, out) = docker_exec(&name, "1000", "echo still-running > /state/after");
    assert!(
        ok,
        "the container is unpaused after a failed release: {out}"
    );
    s3.start().await;
    d.release("writer", json!({})).await;
    let files = listing(&remote(&s3, "writer"));
    assert_eq!(files.len(), 6, "{files:?}");
}

#[tokio::test]
async fn inactivity_release_retries_until_the_upload_succeeds() {
    let s3 = S3Server::start_new().await;
    std::fs::create_dir_all(s3.root_dir().join(BUCKET)).unwrap();
    let mut s3 = s3;
    let d = Daemon::builder(BIN)
        .workload("app.yaml", &sync_workload("app", &s3, MIRROR, ""))
        .env("BOILERHOUSE_IDLE_TIMEOUT_MS", "1000")
        .start()
        .await;
    d.wait_idle("app", 1).await;
    let v = d.claim("sleepy", json!({})).await;
    let name = d.docker_name(v["containerId"].as_str().unwrap());
    let (ok, out) = docker_exec(&name, "1000", "echo data > /state/important");
    assert!(ok, "{out}");
    s3.stop();
    // Wait for two failed auto-release uploads (the first and a retry after its
    // backoff); at every look the claim must still be held. Between retries it is
    // warm, during one releasing — never cold.
    let started = std::time::Instant::now();
    loop {
        let (_, st) = d.get("/tenants/sleepy/status").await;
        assert!(
            st["status"] == "warm" || st["status"] == "releasing",
            "no release without an upload: {st}"
        );
        assert_eq!(st["containerId"], v["containerId"]);
        let (_, act) = d.get("/activity?limit=200").await;
        let failed = act["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "sync.failed" && e["tenantId"] == "sleepy")
            .count();
        if failed >= 2 {
            assert!(st["syncStatus"]["lastError"].is_string(), "{st}");
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no second failed auto-release upload in 30 s: {act}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    s3.start().await;
    let started = std::time::Instant::now();
    loop {
        let (_, st) = d.get("/tenants/sleepy/status").await;
        if st["status"] == "cold" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "never released: {st}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        read(&remote(&s3, "sleepy").join("important")).trim(),
        "data"
    );
}

#[tokio::test]
async fn credentials_never_leak_and_tenants_never_share_objects() {
    let s3 = S3Server::start_new().await;
    std::fs::create_dir_all(s3.root_dir().join(BUCKET)).unwrap();
    // A wrapper records every rclone argv, then runs the real rclone.
    // rclone runs as the workload's user: the wrapper and its log must be usable by it.
    let wrap_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        wrap_dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let argv_log = wrap_dir.path().join("argv.log");
    std::fs::write(&argv_log, "").unwrap();
    std::fs::set_permissions(
        &argv_log,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let wrapper = wrap_dir.path().join("rclone");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$@\" >> {}\nexec {} \"$@\"\n",
            argv_log.display(),
            s3.rclone_bin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let d = Daemon::builder(BIN)
        .workload("app.yaml", &sync_workload("app", &s3, MIRROR, ""))
        .env("BOILERHOUSE_RCLONE_BIN", wrapper.to_str().unwrap())
        .env("RUST_LOG", "trace")
        .start()
        .await;
    d.wait_idle("app", 1).await;
    seed(&s3, "tenant-a", "a-only", "A's data");
    let a = d.claim("tenant-a", json!({})).await;
    let b = d.claim("tenant-b", json!({})).await;
    let (an, bn) = (
        d.docker_name(a["containerId"].as_str().unwrap()),
        d.docker_name(b["containerId"].as_str().unwrap()),
    );
    let (_, out) = docker_exec(&bn, "1000", "ls -A /state");
    assert!(!out.contains("a-only"), "B sees A's object: {out}");
    docker_exec(&bn, "1000", "echo b > /state/b-only");
    d.post("/tenants/tenant-b/sync", json!({"direction": "upload"}))
        .await;
    d.post("/tenants/tenant-a/sync", json!({})).await;
    let (_, out) = docker_exec(&an, "1000", "ls -A /state");
    assert!(!out.contains("b-only"), "A sees B's object: {out}");
    assert!(remote(&s3, "tenant-b").join("b-only").exists());
    assert!(!remote(&s3, "tenant-a").join("b-only").exists());

    let secret = s3.secret_key().to_owned();
    let key = s3.access_key().to_owned();
    let argv = read(&argv_log);
    assert!(
        argv.contains("boilerhouse:"),
        "rclone ran through the wrapper: {argv}"
    );
    assert!(
        !argv.contains(&secret) && !argv.contains(&key),
        "credentials on rclone's command line: {argv}"
    );
    for path in [
        "/workloads",
        "/workloads/app",
        "/tenants/tenant-a/status",
        "/tenants",
        "/activity",
        "/stats",
    ] {
        let (_, body) = d.get(path).await;
        assert!(
            !body.to_string().contains(&secret),
            "{path} leaks the secret"
        );
    }
    let metrics = reqwest::get(format!("{}/metrics", d.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(!metrics.contains(&secret));
    for name in [&an, &bn] {
        let (_, env) = docker_exec(
            name,
            "0",
            "env; cat /proc/1/environ; ls -laR /state /secrets /comm",
        );
        assert!(
            !env.contains(&secret) && !env.contains(&key),
            "the container sees credentials"
        );
        let (_, found) = docker_exec(
            name,
            "0",
            // Split so the command line (echoed in Docker's exec events) never holds it.
            &format!(
                "grep -r '{}''{}' /state /secrets /comm /tmp /etc /home 2>/dev/null | head -1",
                &secret[..secret.len() / 2],
                &secret[secret.len() / 2..]
            ),
        );
        assert!(
            found.is_empty(),
            "credentials in the container's files: {found}"
        );
    }
    d.release("tenant-a", json!({})).await;
    d.release("tenant-b", json!({})).await;
    let log = d.log_text();
    let leaks: Vec<&str> = log.lines().filter(|l| l.contains(&secret)).collect();
    assert!(leaks.is_empty(), "the log leaks the secret: {leaks:?}");
}

#[tokio::test]
async fn a_new_tenant_with_nothing_to_save_claims_and_releases() {
    let (s3, d) = s3_daemon("app", MIRROR, "").await;
    d.claim("fresh", json!({})).await;
    d.release("fresh", json!({})).await;
    d.wait_idle("app", 1).await;
    let v = d.claim("fresh2", json!({})).await;
    let name = d.docker_name(v["containerId"].as_str().unwrap());
    let (ok, out) = docker_exec(&name, "1000", "echo x > /state/x");
    assert!(ok, "{out}");
    d.release("fresh2", json!({})).await;
    assert!(remote(&s3, "fresh2").join("x").exists());
}
