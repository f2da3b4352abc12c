//! The sync engine against a real rclone and a real S3 endpoint (`rclone serve s3` on
//! loopback): no Docker, no daemon. Objects are files under the server's root, so the
//! tests seed and inspect the bucket directly.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use boilerhouse::sync::{ClaimSync, SyncEngine, SyncError, SyncOp, SyncState};
use boilerhouse::workload::spec::{SyncDirection, SyncMode};
use boilerhouse_testkit::s3::{rclone_bin, Faults, S3Server};
use boilerhouse_testkit::{eventually, file_tree};

mod common;
use common::{mapping, Specs};

const BUCKET: &str = "state";

fn engine_with(bin: PathBuf, timeout: Duration) -> SyncEngine {
    SyncEngine::new(bin, 4, timeout)
}

fn engine() -> SyncEngine {
    engine_with(rclone_bin(), Duration::from_secs(60))
}

fn write(path: &Path, content: &[u8]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
}

fn tenant_remote(s3: &S3Server, tenant: &str) -> PathBuf {
    s3.object_path(BUCKET, tenant, "")
}

/// A small shell script standing in for rclone: `body` runs first, then the real one.
fn wrapper(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("rclone-wrapper");
    let script = format!(
        "#!/bin/sh\n{body}\nexec '{}' \"$@\"\n",
        rclone_bin().display()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

#[tokio::test]
async fn download_restores_seeded_objects() {
    let s3 = S3Server::start_new().await;
    let spec = s3.mirror_spec(BUCKET);
    s3.seed(BUCKET, "alice", "notes.txt", b"hello");
    s3.seed(BUCKET, "alice", "deep/nested/dir/data.bin", &[7u8; 3000]);
    let state = tempfile::tempdir().unwrap();

    let results = engine()
        .run(&spec, "alice", state.path(), SyncOp::Download, None)
        .await
        .expect("download");
    assert_eq!(results.len(), 1);
    let r = &results[0];
    assert!(r.success && r.direction == SyncOp::Download && r.path == "/");
    assert_eq!(
        (r.files_transferred, r.bytes_transferred),
        (2, 3005),
        "{r:?}"
    );
    let files = file_tree(state.path());
    assert_eq!(files["notes.txt"], b"hello");
    assert_eq!(files["deep/nested/dir/data.bin"], vec![7u8; 3000]);
    assert_eq!(files.len(), 2);
}

#[tokio::test]
async fn a_tenant_without_remote_data_downloads_nothing_and_keeps_local_files() {
    let s3 = S3Server::start_new().await;
    let spec = s3.mirror_spec(BUCKET);
    s3.seed(BUCKET, "someone-else", "x", b"x");

    // Empty state dir, missing state dir, and a non-empty one in mirror mode (where a
    // naive `rclone sync` from the empty prefix would wipe the directory).
    let empty = tempfile::tempdir().unwrap();
    let missing = empty.path().join("not-yet");
    let full = tempfile::tempdir().unwrap();
    write(&full.path().join("keep.txt"), b"mine");
    write(&full.path().join("dir/keep2"), b"mine too");
    for dir in [empty.path(), &missing, full.path()] {
        let results = engine()
            .run(&spec, "newcomer", dir, SyncOp::Download, None)
            .await
            .expect("a tenant with no remote data is fine");
        assert!(results[0].success, "{results:?}");
        assert_eq!(results[0].files_transferred, 0);
    }
    assert_eq!(file_tree(full.path()).len(), 2, "nothing deleted locally");
    assert_eq!(file_tree(empty.path()).len(), 0);

    // Same for a bucket that does not exist at all.
    let mut no_bucket = s3.mirror_spec(BUCKET);
    no_bucket.sink.bucket = "never-created".into();
    for dir in [empty.path(), full.path()] {
        let results = engine()
            .run(&no_bucket, "newcomer", dir, SyncOp::Download, None)
            .await
            .expect("a missing bucket is no remote data");
        assert!(results[0].success && results[0].files_transferred == 0);
    }
    assert_eq!(file_tree(full.path()).len(), 2, "nothing deleted locally");
}

#[tokio::test]
async fn upload_then_download_round_trips_every_file() {
    let s3 = S3Server::start_new().await;
    let spec = s3.mirror_spec(BUCKET);
    let src = tempfile::tempdir().unwrap();
    let mut expected = BTreeMap::new();
    for i in 0..60u32 {
        let rel = format!("d{}/s{}/file {i}.bin", i % 4, i % 3);
        let content: Vec<u8> = (0..(i * 37)).map(|b| (b * 31 + i) as u8).collect();
        write(&src.path().join(&rel), &content);
        expected.insert(rel, content);
    }
    for (rel, content) in [
        ("top.txt", b"top".to_vec()),
        ("empty", Vec::new()),
        ("ünïcode/名前.txt", "ünï".as_bytes().to_vec()),
    ] {
        write(&src.path().join(rel), &content);
        expected.insert(rel.to_owned(), content);
    }

    let up = engine()
        .run(&spec, "rt", src.path(), SyncOp::Upload, None)
        .await
        .expect("upload");
    assert!(up[0].success && up[0].direction == SyncOp::Upload);
    assert_eq!(up[0].files_transferred, expected.len() as u64, "{up:?}");
    let total: usize = expected.values().map(Vec::len).sum();
    assert_eq!(up[0].bytes_transferred, total as u64);
    assert_eq!(
        file_tree(&tenant_remote(&s3, "rt")),
        expected,
        "objects = files"
    );

    let dst = tempfile::tempdir().unwrap();
    let down = engine()
        .run(&spec, "rt", dst.path(), SyncOp::Download, None)
        .await
        .expect("download");
    assert_eq!(down[0].files_transferred, expected.len() as u64);
    assert_eq!(file_tree(dst.path()), expected);

    // Nothing changed: a second upload moves nothing.
    let again = engine()
        .run(&spec, "rt", src.path(), SyncOp::Upload, None)
        .await
        .expect("upload again");
    assert_eq!(again[0].files_transferred, 0, "{again:?}");
}

#[tokio::test]
async fn sync_mode_mirrors_deletions_and_copy_mode_never_deletes() {
    let s3 = S3Server::start_new().await;
    let spec = s3.sync_spec(
        BUCKET,
        vec![
            mapping("mirror", SyncDirection::Bidirectional, SyncMode::Sync, None),
            mapping("keep", SyncDirection::Bidirectional, SyncMode::Copy, None),
        ],
    );
    let state = tempfile::tempdir().unwrap();
    for rel in ["mirror/a", "mirror/b", "keep/a", "keep/b"] {
        write(&state.path().join(rel), rel.as_bytes());
    }
    engine()
        .run(&spec, "t", state.path(), SyncOp::Upload, None)
        .await
        .expect("first upload");
    std::fs::remove_file(state.path().join("mirror/b")).unwrap();
    std::fs::remove_file(state.path().join("keep/b")).unwrap();
    let results = engine()
        .run(&spec, "t", state.path(), SyncOp::Upload, None)
        .await
        .expect("second upload");
    assert_eq!(results.len(), 2);
    let remote: Vec<String> = file_tree(&tenant_remote(&s3, "t")).into_keys().collect();
    assert_eq!(
        remote,
        ["keep/a", "keep/b", "mirror/a"],
        "sync deletes, copy does not"
    );

    // Downloads: sync mode removes local extras, copy mode keeps them.
    write(&state.path().join("mirror/local-only"), b"x");
    write(&state.path().join("keep/local-only"), b"x");
    engine()
        .run(&spec, "t", state.path(), SyncOp::Download, None)
        .await
        .expect("download");
    let local: Vec<String> = file_tree(state.path()).into_keys().collect();
    assert_eq!(local, ["keep/a", "keep/b", "keep/local-only", "mirror/a"]);
}

#[tokio::test]
async fn directions_select_mappings() {
    let s3 = S3Server::start_new().await;
    let spec = s3.sync_spec(
        BUCKET,
        vec![
            mapping("up", SyncDirection::Upload, SyncMode::Sync, None),
            mapping("down", SyncDirection::Download, SyncMode::Sync, None),
        ],
    );
    s3.seed(BUCKET, "t", "up/remote-up", b"1");
    s3.seed(BUCKET, "t", "down/remote-down", b"2");
    let state = tempfile::tempdir().unwrap();
    write(&state.path().join("up/local-up"), b"3");
    write(&state.path().join("down/local-down"), b"4");

    let down = engine()
        .run(&spec, "t", state.path(), SyncOp::Download, None)
        .await
        .expect("download");
    assert_eq!(
        down.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        ["down"]
    );
    let up = engine()
        .run(&spec, "t", state.path(), SyncOp::Upload, None)
        .await
        .expect("upload");
    assert_eq!(
        up.iter().map(|r| r.path.as_str()).collect::<Vec<_>>(),
        ["up"]
    );

    let local: Vec<String> = file_tree(state.path()).into_keys().collect();
    assert_eq!(
        local,
        ["down/remote-down", "up/local-up"],
        "upload-only is never downloaded; download mirrors"
    );
    let remote: Vec<String> = file_tree(&tenant_remote(&s3, "t")).into_keys().collect();
    assert_eq!(
        remote,
        ["down/remote-down", "up/local-up"],
        "download-only is never uploaded; upload mirrors"
    );
}

#[tokio::test]
async fn patterns_filter_what_moves() {
    let s3 = S3Server::start_new().await;
    let spec = s3.sync_spec(
        BUCKET,
        vec![mapping(
            "logs",
            SyncDirection::Bidirectional,
            SyncMode::Sync,
            Some("*.log"),
        )],
    );
    let state = tempfile::tempdir().unwrap();
    for rel in ["logs/app.log", "logs/old/deep.log", "logs/skip.txt"] {
        write(&state.path().join(rel), b"x");
    }
    let up = engine()
        .run(&spec, "t", state.path(), SyncOp::Upload, None)
        .await
        .expect("upload");
    assert_eq!(up[0].files_transferred, 2);
    let remote: Vec<String> = file_tree(&tenant_remote(&s3, "t")).into_keys().collect();
    assert_eq!(remote, ["logs/app.log", "logs/old/deep.log"]);

    // A remote object that does not match is neither downloaded nor a reason to keep
    // non-matching local files from the mirror: they are outside the filter.
    s3.seed(BUCKET, "t", "logs/remote.txt", b"y");
    std::fs::remove_file(tenant_remote(&s3, "t").join("logs/app.log")).unwrap();
    engine()
        .run(&spec, "t", state.path(), SyncOp::Download, None)
        .await
        .expect("download");
    let local: Vec<String> = file_tree(state.path()).into_keys().collect();
    assert_eq!(local, ["logs/old/deep.log", "logs/skip.txt"]);
}

#[tokio::test]
async fn a_missing_local_dir_uploads_nothing_and_deletes_nothing_remote() {
    let s3 = S3Server::start_new().await;
    s3.seed(BUCKET, "t", "precious", b"keep me");
    s3.seed(BUCKET, "t", "sub/precious", b"keep me too");
    let before = file_tree(&tenant_remote(&s3, "t"));
    let base = tempfile::tempdir().unwrap();

    // The whole state dir is gone (mirroring it would wipe the tenant's data).
    let results = engine()
        .run(
            &s3.mirror_spec(BUCKET),
            "t",
            &base.path().join("gone"),
            SyncOp::Upload,
            None,
        )
        .await
        .expect("nothing to upload is not an error");
    assert!(results[0].success && results[0].files_transferred == 0);

    // The state dir exists, the mapping's directory does not.
    let sub = s3.sync_spec(
        BUCKET,
        vec![mapping("sub", SyncDirection::Upload, SyncMode::Sync, None)],
    );
    let results = engine()
        .run(&sub, "t", base.path(), SyncOp::Upload, None)
        .await
        .expect("nothing to upload is not an error");
    assert!(results[0].success && results[0].files_transferred == 0);
    assert_eq!(
        file_tree(&tenant_remote(&s3, "t")),
        before,
        "remote untouched"
    );
}

#[tokio::test]
async fn a_mapping_through_a_symlink_is_refused() {
    let s3 = S3Server::start_new().await;
    let spec = s3.sync_spec(
        BUCKET,
        vec![mapping(
            "data",
            SyncDirection::Bidirectional,
            SyncMode::Copy,
            None,
        )],
    );
    s3.seed(BUCKET, "t", "data/x", b"x");
    let state = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    write(&elsewhere.path().join("host-file"), b"host");
    std::os::unix::fs::symlink(elsewhere.path(), state.path().join("data")).unwrap();
    for op in [SyncOp::Upload, SyncOp::Download] {
        let err = engine()
            .run(&spec, "t", state.path(), op, None)
            .await
            .expect_err("a symlinked mapping must be refused");
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }
    assert_eq!(file_tree(elsewhere.path()).len(), 1);
    assert!(!s3.object_path(BUCKET, "t", "data/host-file").exists());
}

#[tokio::test]
async fn an_outage_fails_loudly_and_touches_nothing() {
    let mut s3 = S3Server::start_new().await;
    let spec = s3.mirror_spec(BUCKET);
    let state = tempfile::tempdir().unwrap();
    write(&state.path().join("a"), b"1");
    write(&state.path().join("d/b"), b"2");
    engine()
        .run(&spec, "t", state.path(), SyncOp::Upload, None)
        .await
        .expect("upload while up");
    // Enough new files that rclone, left to itself, would try each one in turn and back
    // off longer after every failure (minutes); the engine stops it at the first.
    for i in 0..40 {
        write(&state.path().join(format!("new/{i}")), b"3");
    }
    let local_before = file_tree(state.path());
    let remote_before = file_tree(&s3.root_dir());

    s3.stop();
    let started = std::time::Instant::now();
    for op in [SyncOp::Upload, SyncOp::Download] {
        let err = engine()
            .run(&spec, "t", state.path(), op, None)
            .await
            .expect_err("the endpoint is down");
        let msg = err.to_string();
        assert!(
            msg.contains("tenant t") && msg.contains(op.as_str()) && msg.contains("rclone"),
            "{msg}"
        );
        assert!(
            msg.contains("connection refused"),
            "says what failed: {msg}"
        );
        // The upload would go on file after file; a download's listing fails once
        // and rclone may exit on its own before it is stopped.
        if op == SyncOp::Upload {
            assert!(
                msg.contains("stopped at its first failed connection"),
                "{msg}"
            );
        }
        assert!(!msg.contains(s3.secret_key()) && !msg.contains(s3.access_key()));
    }
    // Both the mirror check (non-empty dir) and a plain download into an empty one.
    let fresh = tempfile::tempdir().unwrap();
    let err = engine()
        .run(&spec, "t", fresh.path(), SyncOp::Download, None)
        .await;
    assert!(matches!(err, Err(SyncError::Failed { .. })), "{err:?}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "an unreachable endpoint fails fast, took {:?}",
        started.elapsed()
    );
    assert_eq!(
        file_tree(state.path()),
        local_before,
        "nothing local touched"
    );
    assert_eq!(
        file_tree(&s3.root_dir()),
        remote_before,
        "nothing remote touched"
    );

    s3.start().await;
    let results = engine()
        .run(&spec, "t", state.path(), SyncOp::Upload, None)
        .await
        .expect("upload after the outage");
    assert_eq!(
        results[0].files_transferred, 40,
        "only the new files: {results:?}"
    );
    assert_eq!(file_tree(&tenant_remote(&s3, "t")), local_before);
}

#[tokio::test]
async fn credentials_never_reach_the_command_line() {
    let s3 = S3Server::start_new().await;
    let spec = s3.mirror_spec(BUCKET);
    let scratch = tempfile::tempdir().unwrap();
    let argv_log = scratch.path().join("argv");
    let env_log = scratch.path().join("env");
    // Records rclone's exact argv (it execs with the same "$@") and its environment.
    let bin = wrapper(
        scratch.path(),
        &format!(
            "for a in \"$@\"; do printf '%s\\n' \"$a\"; done >> '{}'\nenv >> '{}'",
            argv_log.display(),
            env_log.display()
        ),
    );
    let engine = engine_with(bin, Duration::from_secs(60));
    let state = tempfile::tempdir().unwrap();
    write(&state.path().join("f"), b"data");
    engine
        .run(&spec, "t", state.path(), SyncOp::Upload, None)
        .await
        .expect("upload");
    write(&state.path().join("g"), b"local");
    engine
        .run(&spec, "t", state.path(), SyncOp::Download, None)
        .await
        .expect("download (with the mirror check)");

    let argv = std::fs::read_to_string(&argv_log).unwrap();
    let env = std::fs::read_to_string(&env_log).unwrap();
    assert!(argv.contains("lsf") && argv.contains("sync"), "{argv}");
    for secret in [s3.secret_key(), s3.access_key()] {
        assert!(
            !argv.contains(secret),
            "a credential on the command line: {argv}"
        );
        assert!(
            env.contains(secret),
            "credentials travel in the environment"
        );
    }
    // The sink's settings travel in the environment too: the only S3 options on the
    // command line are the engine's own, the same for every sink.
    assert!(!argv.contains(":s3"), "{argv}");
    for arg in argv.lines().filter(|a| a.starts_with("--s3-")) {
        assert!(
            boilerhouse::sync::BASE_FLAGS.contains(&arg),
            "a sink setting on the command line: {arg}"
        );
    }
    for line in env.lines() {
        let name = line.split('=').next().unwrap_or_default();
        if name.starts_with("RCLONE_") {
            assert!(
                name == "RCLONE_CONFIG" || name.starts_with("RCLONE_CONFIG_BOILERHOUSE_"),
                "unexpected rclone setting in its environment: {name}"
            );
        }
        assert!(
            !name.starts_with("AWS_") && name != "HOME",
            "{name} passed with keys given"
        );
    }
    assert!(
        env.lines().any(|l| l == "RCLONE_CONFIG="),
        "no config file is read"
    );
}

#[tokio::test]
async fn tenants_never_see_each_others_objects() {
    let s3 = S3Server::start_new().await;
    let spec = s3.mirror_spec(BUCKET);
    s3.seed(BUCKET, "tenant-a", "a-only", b"A");
    let b_state = tempfile::tempdir().unwrap();
    write(&b_state.path().join("b-only"), b"B");

    // B's mirror upload and download stay within B's prefix.
    engine()
        .run(&spec, "tenant-b", b_state.path(), SyncOp::Upload, None)
        .await
        .expect("upload B");
    engine()
        .run(&spec, "tenant-b", b_state.path(), SyncOp::Download, None)
        .await
        .expect("download B");
    assert_eq!(
        file_tree(b_state.path()).into_keys().collect::<Vec<_>>(),
        ["b-only"]
    );
    assert_eq!(
        file_tree(&tenant_remote(&s3, "tenant-a"))
            .into_keys()
            .collect::<Vec<_>>(),
        ["a-only"],
        "B's mirror never deletes A's objects"
    );

    let a_state = tempfile::tempdir().unwrap();
    engine()
        .run(&spec, "tenant-a", a_state.path(), SyncOp::Download, None)
        .await
        .expect("download A");
    assert_eq!(
        file_tree(a_state.path()).into_keys().collect::<Vec<_>>(),
        ["a-only"]
    );

    // A tenant id that is a prefix of another does not see the other's objects.
    s3.seed(BUCKET, "tenant-ab", "ab-only", b"AB");
    let a2 = tempfile::tempdir().unwrap();
    engine()
        .run(&spec, "tenant-a", a2.path(), SyncOp::Download, None)
        .await
        .expect("download A again");
    assert_eq!(
        file_tree(a2.path()).into_keys().collect::<Vec<_>>(),
        ["a-only"]
    );

    let err = engine()
        .run(&spec, "../tenant-a", a2.path(), SyncOp::Download, None)
        .await
        .expect_err("path traversal in a tenant id");
    assert!(matches!(err, SyncError::InvalidTenant { .. }), "{err}");
}

#[tokio::test]
async fn a_transfer_over_its_timeout_is_killed_and_says_so() {
    let s3 = S3Server::start_new().await;
    let spec = s3.mirror_spec(BUCKET);
    for i in 0..1000 {
        s3.seed(BUCKET, "slow", &format!("d{}/f{i}", i % 10), &[1u8; 1024]);
    }
    let state = tempfile::tempdir().unwrap();
    let engine = engine_with(rclone_bin(), Duration::from_millis(150));
    let err = engine
        .run(&spec, "slow", state.path(), SyncOp::Download, None)
        .await
        .expect_err("1000 objects do not download in 150 ms");
    assert!(matches!(err, SyncError::TimedOut { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("timed out after 150 ms") && msg.contains("tenant slow"),
        "{msg}"
    );
    // rclone is gone (no process names the state dir any more), so nothing can
    // change in the state dir afterwards, and it did not finish.
    let dir = state.path().to_string_lossy().into_owned();
    eventually(Duration::from_secs(5), "the killed rclone to exit", || {
        processes_naming(&dir).is_empty().then_some(())
    })
    .await;
    assert!(file_tree(state.path()).len() < 1000);
}

#[tokio::test]
async fn claim_sync_runs_one_transfer_at_a_time_and_keeps_totals() {
    let mut s3 = S3Server::start_new().await;
    let spec = s3.mirror_spec(BUCKET);
    let scratch = tempfile::tempdir().unwrap();
    let lock = scratch.path().join("running");
    let overlaps = scratch.path().join("overlaps");
    // Slow and watchful: notes when two rclone processes of this claim run at once.
    let script = format!(
        "#!/bin/sh\nmkdir '{lock}' 2>/dev/null || echo overlap >> '{overlaps}'\nsleep 0.3\n'{bin}' \"$@\"\nrc=$?\nrmdir '{lock}' 2>/dev/null\nexit $rc\n",
        lock = lock.display(),
        overlaps = overlaps.display(),
        bin = rclone_bin().display()
    );
    let bin = scratch.path().join("slow-rclone");
    std::fs::write(&bin, script).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let engine = engine_with(bin, Duration::from_secs(60));

    let state = tempfile::tempdir().unwrap();
    write(&state.path().join("one"), b"12345");
    write(&state.path().join("two/three"), b"123");
    let claim = ClaimSync::new();
    assert_eq!(claim.status().state, SyncState::Idle);

    let watcher = {
        let claim = claim.clone();
        tokio::spawn(async move {
            let mut saw_syncing = false;
            for _ in 0..200 {
                saw_syncing |= claim.status().state == SyncState::Syncing;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            saw_syncing
        })
    };
    let (a, b) = tokio::join!(
        claim.run(&engine, &spec, "t", state.path(), SyncOp::Upload, None),
        claim.run(&engine, &spec, "t", state.path(), SyncOp::Upload, None),
    );
    let (a, b) = (a.expect("first"), b.expect("second"));
    assert!(
        watcher.await.unwrap(),
        "status shows syncing while a transfer runs"
    );
    assert!(!overlaps.exists(), "two transfers of one claim overlapped");

    let moved: u64 = a.iter().chain(&b).map(|r| r.bytes_transferred).sum();
    let files: u64 = a.iter().chain(&b).map(|r| r.files_transferred).sum();
    assert_eq!(
        (moved, files),
        (8, 2),
        "one upload moved everything, the other nothing"
    );
    let status = claim.status();
    assert_eq!(status.state, SyncState::Idle);
    assert_eq!((status.bytes_transferred, status.files_transferred), (8, 2));
    let first_sync = status.last_sync_at.expect("lastSyncAt");
    assert!(status.last_error.is_none());

    // A failure shows as `error` with the reason; totals and lastSyncAt stay.
    s3.stop();
    let err = claim
        .run(&engine, &spec, "t", state.path(), SyncOp::Upload, None)
        .await;
    assert!(err.is_err());
    let status = claim.status();
    assert_eq!(status.state, SyncState::Error);
    assert!(status
        .last_error
        .as_deref()
        .unwrap_or_default()
        .contains("tenant t"));
    assert_eq!(status.last_sync_at, Some(first_sync));
    assert_eq!(status.bytes_transferred, 8);

    // The next success clears the error.
    s3.start().await;
    write(&state.path().join("four"), b"4444");
    claim
        .run(&engine, &spec, "t", state.path(), SyncOp::Upload, None)
        .await
        .expect("upload after the outage");
    let status = claim.status();
    assert_eq!(status.state, SyncState::Idle);
    assert!(status.last_error.is_none());
    assert_eq!(
        (status.bytes_transferred, status.files_transferred),
        (12, 3)
    );
    assert!(status.last_sync_at > Some(first_sync));
}

/// As root, rclone runs as the workload's user: downloads belong to that user, and a
/// symlink a tenant planted cannot steer a download into files of the host.
#[tokio::test]
async fn downloads_run_as_the_workload_user() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "this test runs rclone as another user and must run as root (CI does)"
    );
    let (uid, gid) = (4242, 4243);
    let s3 = S3Server::start_new().await;
    let spec = s3.mirror_spec(BUCKET);
    s3.seed(BUCKET, "u", "mine/file", b"restored");
    s3.seed(BUCKET, "u", "escape/pwned", b"evil");

    let base = tempfile::tempdir().unwrap();
    std::fs::set_permissions(base.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let state = base.path().join("state");
    std::fs::create_dir(&state).unwrap();
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&state, Some(uid), Some(gid)).unwrap();
    let host_dir = base.path().join("host-only");
    std::fs::create_dir(&host_dir).unwrap();
    std::os::unix::fs::symlink(&host_dir, state.join("escape")).unwrap();

    let err = engine()
        .run(&spec, "u", &state, SyncOp::Download, Some((uid, gid)))
        .await
        .expect_err("writing through the tenant's symlink is refused");
    assert!(err.to_string().contains("permission denied"), "{err}");
    assert!(
        std::fs::read_dir(&host_dir).unwrap().next().is_none(),
        "nothing written outside the state dir"
    );

    std::fs::remove_file(state.join("escape")).unwrap();
    engine()
        .run(&spec, "u", &state, SyncOp::Download, Some((uid, gid)))
        .await
        .expect("download as the workload user");
    use std::os::unix::fs::MetadataExt;
    for rel in ["mine", "mine/file", "escape/pwned"] {
        let meta = std::fs::symlink_metadata(state.join(rel)).unwrap();
        assert_eq!((meta.uid(), meta.gid()), (uid, gid), "{rel}");
    }
}

/// Pids of the processes whose command line contains `needle` (read from /proc).
fn processes_naming(needle: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Mode, owner and modification time of every file and directory below `dir`.
fn attributes(dir: &Path) -> BTreeMap<String, (u32, u32, u32, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let meta = std::fs::symlink_metadata(entry.path()).unwrap();
            let rel = entry
                .path()
                .strip_prefix(dir)
                .unwrap()
                .display()
                .to_string();
            // A directory's mtime changes as entries are made in it: only files'.
            let (secs, nanos) = match meta.is_dir() {
                true => (0, 0),
                false => (meta.mtime(), meta.mtime_nsec()),
            };
            out.insert(
                rel,
                (meta.mode() & 0o7777, meta.uid(), meta.gid(), secs, nanos),
            );
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    out
}

/// A download into an empty dir is the engine's own (no rclone process) on a sink
/// its resident client reaches, and gives exactly what rclone gives: names (spaces,
/// `&`, non-ASCII), contents (an empty file, one of several HTTP frames), modes,
/// owner, modification times to the nanosecond. `rclone_flags` hand it to rclone.
#[tokio::test]
async fn the_engines_own_download_gives_what_rclone_gives() {
    // SAFETY: geteuid has no preconditions.
    assert!(
        unsafe { libc::geteuid() } == 0,
        "this test downloads as another user and must run as root (CI does)"
    );
    let (uid, gid) = (4242, 4243);
    let owner = Some((uid, gid));
    let s3 = S3Server::start_new().await;
    let spec = s3.mirror_spec(BUCKET);
    let source = tempfile::tempdir().unwrap();
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let files: [(&str, &[u8]); 5] = [
        ("notes.txt", b"hello"),
        ("deep/nested/dir/data.bin", &big),
        ("with space & ampersand.txt", b"a&b"),
        ("\u{fc}n\u{ef}code/stra\u{df}e.txt", b"non-ascii"),
        ("deep/empty", b""),
    ];
    for (i, (rel, content)) in files.iter().enumerate() {
        let path = source.path().join(rel);
        write(&path, content);
        let mtime = std::time::UNIX_EPOCH + Duration::new(1_600_000_000 + i as u64, 123_456_789);
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
    }
    engine()
        .run(&spec, "alice", source.path(), SyncOp::Upload, None)
        .await
        .expect("upload");

    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("runs");
    // rclone runs as the workload's user, and so does the wrapper that logs it.
    std::fs::write(&log, "").unwrap();
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o666)).unwrap();
    let counting = wrapper(work.path(), &format!("echo run >> '{}'", log.display()));
    let runs = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .count()
    };

    // State dirs as the daemon makes them: 0700, owned by the workload's user.
    let state_dir = || {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        dir
    };
    let own = state_dir();
    let before = s3.proxy_stats().daemon_requests();
    let results = engine_with(counting.clone(), Duration::from_secs(60))
        .run(&spec, "alice", own.path(), SyncOp::Download, owner)
        .await
        .expect("the engine's own download");
    assert_eq!(
        runs(),
        0,
        "no rclone process for a download into an empty dir"
    );
    assert_eq!(results[0].files_transferred, 5, "{results:?}");
    assert_eq!(results[0].bytes_transferred, 300_017, "{results:?}");
    assert_eq!(
        s3.proxy_stats().daemon_requests() - before,
        6,
        "one listing and one GET per object"
    );

    let mut by_rclone = spec.clone();
    by_rclone.sink.rclone_flags = vec!["--transfers".into(), "16".into()];
    let theirs = state_dir();
    engine_with(counting, Duration::from_secs(60))
        .run(&by_rclone, "alice", theirs.path(), SyncOp::Download, owner)
        .await
        .expect("rclone's download");
    assert_eq!(runs(), 1, "a sink with rclone_flags downloads with rclone");

    assert_eq!(file_tree(own.path()), file_tree(source.path()));
    assert_eq!(file_tree(own.path()), file_tree(theirs.path()));
    assert_eq!(attributes(own.path()), attributes(theirs.path()));
    let uploaded = attributes(source.path());
    for (rel, (mode, file_uid, file_gid, secs, nanos)) in attributes(own.path()) {
        let (.., src_secs, src_nanos) = uploaded[&rel];
        assert_eq!((secs, nanos), (src_secs, src_nanos), "{rel}: mtime");
        assert_eq!((file_uid, file_gid), (uid, gid), "{rel}: owner");
        assert_eq!(mode & 0o022, 0o022 & !umask(), "{rel}: mode {mode:o}");
    }
}

fn umask() -> u32 {
    // SAFETY: umask has no preconditions; it is set back at once.
    unsafe {
        let old = libc::umask(0o022);
        libc::umask(old);
        old
    }
}

/// The engine's own download failing half-way (its GETs refused after a few) leaves
/// nothing behind — a mapping dir it had to create is gone again when rclone starts
/// — and rclone then restores everything.
#[tokio::test]
async fn an_own_download_failing_half_way_is_undone_and_rclone_restores_it() {
    let s3 = S3Server::start_with(true, Faults::daemon_gets_fail_after(5)).await;
    let spec = s3.sync_spec(
        BUCKET,
        vec![mapping(
            "/sub/dir",
            SyncDirection::Bidirectional,
            SyncMode::Sync,
            None,
        )],
    );
    for i in 0..40 {
        s3.seed(
            BUCKET,
            "bob",
            &format!("sub/dir/d{}/f{i}", i % 4),
            format!("{i}").as_bytes(),
        );
    }
    let state = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let log = work.path().join("seen");
    let sub = state.path().join("sub");
    let watching = wrapper(
        work.path(),
        &format!("ls -A '{}' >> '{}' 2>&1", sub.display(), log.display()),
    );
    engine_with(watching, Duration::from_secs(60))
        .run(&spec, "bob", state.path(), SyncOp::Download, None)
        .await
        .expect("rclone takes over");
    let seen = std::fs::read_to_string(&log).unwrap();
    assert!(
        seen.contains("No such file or directory"),
        "rclone started with the mapping dir gone again: {seen:?}"
    );
    assert!(
        s3.proxy_stats().daemon_requests() > 5,
        "the own download was tried"
    );
    assert!(s3.proxy_stats().rclone_requests() > 0);
    assert_eq!(
        file_tree(&state.path().join("sub/dir")),
        file_tree(&s3.object_path(BUCKET, "bob", "sub/dir"))
    );
    assert_eq!(boilerhouse_testkit::listing(state.path()).len(), 40);
}
