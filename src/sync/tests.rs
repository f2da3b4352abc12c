use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::sync::Mutex as StdMutex;

use super::endpoint::*;
use super::local::*;
use super::rclone::*;
use super::status::*;
use super::*;
use crate::workload::spec::SinkSpec;

fn sink(keys: bool, endpoint: Option<&str>) -> SinkSpec {
    SinkSpec {
        kind: "s3".into(),
        bucket: "state-bucket".into(),
        region: Some("eu-west-1".into()),
        endpoint: endpoint.map(Into::into),
        access_key_id: keys.then(|| "AKIAEXAMPLEKEY".into()),
        secret_access_key: keys.then(|| "s3cr3t/Value+xyz".into()),
        prefix: "tenants/${tenantId}/".into(),
        rclone_flags: vec!["--bwlimit".into(), "10M".into()],
    }
}

fn env_map(env: &[(OsString, OsString)]) -> std::collections::BTreeMap<String, String> {
    env.iter()
        .map(|(k, v)| (k.to_string_lossy().into(), v.to_string_lossy().into()))
        .collect()
}

#[test]
fn remote_path_joins_without_double_slashes() {
    let mut s = sink(true, None);
    assert_eq!(
        remote_path(&s, "alice", ""),
        "boilerhouse:state-bucket/tenants/alice/"
    );
    assert_eq!(
        remote_path(&s, "alice", "data/db"),
        "boilerhouse:state-bucket/tenants/alice/data/db/"
    );
    s.prefix = "/x//${tenantId}//".into();
    s.bucket = "b/".into();
    assert_eq!(remote_path(&s, "bob", "d"), "boilerhouse:b/x/bob/d/");
    s.prefix = "${tenantId}".into();
    assert_eq!(remote_path(&s, "a.b-c_d", ""), "boilerhouse:b/a.b-c_d/");
}

#[test]
fn mapping_paths_normalize() {
    assert_eq!(normalize_mapping_path("/").unwrap(), "");
    assert_eq!(normalize_mapping_path("").unwrap(), "");
    assert_eq!(normalize_mapping_path("/a//b/./c/").unwrap(), "a/b/c");
    assert!(normalize_mapping_path("a/../b").is_err());
    let dir = Path::new("/s/c1");
    assert_eq!(local_path(dir, ""), PathBuf::from("/s/c1"));
    assert_eq!(local_path(dir, "a/b"), PathBuf::from("/s/c1/a/b"));
}

#[test]
fn tenant_ids_are_checked() {
    for ok in ["alice", "A1", "a.b_c-d", "0"] {
        assert!(is_safe_tenant_id(ok), "{ok}");
    }
    for bad in ["", ".", "..", "-a", "a/b", "a b", "é", &"a".repeat(129)] {
        assert!(!is_safe_tenant_id(bad), "{bad}");
    }
}

#[test]
fn op_selects_mappings_by_direction() {
    use SyncDirection::*;
    assert!(SyncOp::Upload.applies_to(Upload) && SyncOp::Upload.applies_to(Bidirectional));
    assert!(!SyncOp::Upload.applies_to(Download));
    assert!(SyncOp::Download.applies_to(Download) && SyncOp::Download.applies_to(Bidirectional));
    assert!(!SyncOp::Download.applies_to(Upload));
}

#[test]
fn env_describes_the_remote_and_argv_carries_no_secret() {
    let s = sink(true, Some("http://127.0.0.1:9000"));
    let inherited = [
        ("PATH", "/usr/bin"),
        ("HOME", "/root"),
        ("RCLONE_DRY_RUN", "true"),
        ("RCLONE_CONFIG", "/root/.config/rclone/rclone.conf"),
        ("AWS_SECRET_ACCESS_KEY", "ambient"),
        ("HTTPS_PROXY", "http://proxy:3128"),
    ]
    .map(|(k, v)| (OsString::from(k), OsString::from(v)));
    let env = env_map(&rclone_env(&s, inherited));
    assert_eq!(env["RCLONE_CONFIG"], "");
    assert_eq!(env["RCLONE_CONFIG_BOILERHOUSE_TYPE"], "s3");
    assert_eq!(env["RCLONE_CONFIG_BOILERHOUSE_PROVIDER"], "Other");
    assert_eq!(
        env["RCLONE_CONFIG_BOILERHOUSE_ACCESS_KEY_ID"],
        "AKIAEXAMPLEKEY"
    );
    assert_eq!(
        env["RCLONE_CONFIG_BOILERHOUSE_SECRET_ACCESS_KEY"],
        "s3cr3t/Value+xyz"
    );
    assert_eq!(env["RCLONE_CONFIG_BOILERHOUSE_ENV_AUTH"], "false");
    assert_eq!(env["RCLONE_CONFIG_BOILERHOUSE_REGION"], "eu-west-1");
    assert_eq!(
        env["RCLONE_CONFIG_BOILERHOUSE_ENDPOINT"],
        "http://127.0.0.1:9000"
    );
    assert_eq!(env["RCLONE_CONFIG_BOILERHOUSE_FORCE_PATH_STYLE"], "true");
    assert_eq!(env["PATH"], "/usr/bin");
    assert_eq!(env["HTTPS_PROXY"], "http://proxy:3128");
    // Inherited rclone settings, HOME and ambient AWS credentials stay out.
    assert!(!env.contains_key("RCLONE_DRY_RUN"));
    assert!(!env.contains_key("HOME"));
    assert!(!env.contains_key("AWS_SECRET_ACCESS_KEY"));

    let args = transfer_args(
        "sync",
        OsStr::new("/state/c1"),
        OsStr::new(&remote_path(&s, "alice", "")),
        Some("*.db"),
        false,
        &s.rclone_flags,
    );
    let argv: Vec<String> = args.iter().map(|a| a.to_string_lossy().into()).collect();
    for secret in secret_values(&s) {
        assert!(argv.iter().all(|a| !a.contains(&secret)), "{argv:?}");
    }
    // The sink's settings travel in the environment; the only S3 options on the
    // command line are the engine's own, the same for every sink.
    assert!(argv
        .iter()
        .all(|a| !a.starts_with(":s3")
            && (!a.starts_with("--s3-") || BASE_FLAGS.contains(&a.as_str()))));
    // An upload is no fresh download.
    assert!(FRESH_DOWNLOAD_FLAGS
        .iter()
        .all(|f| !argv.iter().any(|a| a == f)));
    let fresh = transfer_args(
        "copy",
        OsStr::new(&remote_path(&s, "alice", "")),
        OsStr::new("/state/c1"),
        None,
        true,
        &s.rclone_flags,
    );
    let fresh: Vec<String> = fresh.iter().map(|a| a.to_string_lossy().into()).collect();
    for flag in FRESH_DOWNLOAD_FLAGS {
        assert!(fresh.iter().any(|a| a == flag), "{flag} missing: {fresh:?}");
    }
    // Still before the operator's flags, which can override them.
    assert_eq!(&fresh[fresh.len() - 2..], ["--bwlimit", "10M"]);
    assert_eq!(
        &argv[..3],
        [
            "sync",
            "/state/c1",
            "boilerhouse:state-bucket/tenants/alice/"
        ]
    );
    let include = argv.iter().position(|a| a == "--include").unwrap();
    assert_eq!(argv[include + 1], "*.db");
    // Operator flags come last so they override the defaults.
    assert_eq!(&argv[argv.len() - 2..], ["--bwlimit", "10M"]);
}

#[test]
fn env_auth_passes_ambient_aws_settings_only_without_keys() {
    let s = sink(false, None);
    let inherited = [("HOME", "/root"), ("AWS_PROFILE", "prod"), ("USER", "root")]
        .map(|(k, v)| (OsString::from(k), OsString::from(v)));
    let env = env_map(&rclone_env(&s, inherited));
    assert_eq!(env["RCLONE_CONFIG_BOILERHOUSE_ENV_AUTH"], "true");
    assert_eq!(env["RCLONE_CONFIG_BOILERHOUSE_PROVIDER"], "AWS");
    assert_eq!(env["AWS_PROFILE"], "prod");
    assert_eq!(env["HOME"], "/root");
    assert_eq!(env["PATH"], DEFAULT_PATH);
    assert!(!env.contains_key("USER"));
    assert!(!env.contains_key("RCLONE_CONFIG_BOILERHOUSE_ACCESS_KEY_ID"));
    assert!(!env.contains_key("RCLONE_CONFIG_BOILERHOUSE_ENDPOINT"));
    assert!(secret_values(&s).is_empty());
}

#[test]
fn failed_connections_are_recognised_and_other_errors_are_not() {
    let mut log = RcloneLog::default();
    for (cause, unreachable) in [
        (
            r#"Put \"http://127.0.0.1:1/b\": dial tcp 127.0.0.1:1: connect: connection refused"#,
            true,
        ),
        (
            r#"Get \"http://s3.invalid/b\": dial tcp: lookup s3.invalid on 10.0.0.2:53: no such host"#,
            true,
        ),
        (
            r#"Get \"http://10.9.9.9/b\": dial tcp 10.9.9.9:80: i/o timeout"#,
            true,
        ),
        (
            r#"Get \"http://10.9.9.9/b\": dial tcp 10.9.9.9:80: connect: no route to host"#,
            true,
        ),
        (
            r#"Put \"http://h/b\": read tcp 1.2.3.4:5->6.7.8.9:80: read: connection reset by peer"#,
            false,
        ),
        (
            "StatusCode: 500, api error InternalError: Internal Error",
            false,
        ),
        (
            "StatusCode: 403, api error AccessDenied: dial tcp is not the cause",
            false,
        ),
    ] {
        let line = format!(
            r#"{{"level":"error","msg":"Failed to copy: operation error S3: PutObject, {cause}"}}"#
        );
        assert_eq!(log.push(&line, &[]), unreachable, "{line}");
    }
    // Only errors count, however they read.
    let notice = r#"{"level":"notice","msg":"dial tcp 127.0.0.1:1: connect: connection refused"}"#;
    assert!(!log.push(notice, &[]));
}

#[test]
fn stats_and_errors_are_parsed_from_the_json_log() {
    let secrets = vec!["AKIAEXAMPLEKEY".to_owned(), "s3cr3t/Value+xyz".to_owned()];
    let mut log = RcloneLog::default();
    for line in [
        r#"{"time":"t","level":"info","msg":"Copied (new)","size":3,"object":"a.txt"}"#,
        r#"{"time":"t","level":"error","msg":"Attempt 1/2 failed with 1 errors and: denied for AKIAEXAMPLEKEY","source":"cmd/cmd.go:283"}"#,
        r#"{"time":"t","level":"error","msg":"open x: permission denied","object":"x/pwn","objectType":"*s3.Object"}"#,
        r#"{"time":"t","level":"notice","msg":"\nTransferred: 6 B / 6 B\n","stats":{"bytes":6,"checks":0,"errors":1,"transfers":2,"lastError":"x"}}"#,
        r#"{"time":"t","level":"notice","msg":"Failed to copy: s3cr3t/Value+xyz leaked?"}"#,
        "2026/11/29 09:20:35 NOTICE: Fatal error: unknown flag: --frobnicate",
        "Usage:",
        "",
    ] {
        assert!(!log.push(line, &secrets), "not a failed connection: {line}");
    }
    assert_eq!(
        log.stats,
        Some(RcloneStats {
            bytes: 6,
            transfers: 2
        })
    );
    assert_eq!(
        log.errors,
        [
            "Attempt 1/2 failed with 1 errors and: denied for ***",
            "x/pwn: open x: permission denied",
            "Failed to copy: *** leaked?",
            "2026/11/29 09:20:35 NOTICE: Fatal error: unknown flag: --frobnicate",
        ]
    );
    assert!(summarize(&log.errors).contains("Fatal error"));
}

#[test]
fn error_lines_are_bounded() {
    let mut log = RcloneLog::default();
    for i in 0..20 {
        log.push(
            &format!(r#"{{"level":"error","msg":"e{i} {}"}}"#, "x".repeat(1000)),
            &[],
        );
    }
    assert_eq!(log.errors.len(), MAX_ERROR_LINES);
    assert!(log.errors[0].starts_with("e15 "));
    assert!(log
        .errors
        .iter()
        .all(|e| e.chars().count() <= MAX_ERROR_CHARS + 1));
    // The same line twice is kept once.
    let mut log = RcloneLog::default();
    log.push(r#"{"level":"error","msg":"same"}"#, &[]);
    log.push(r#"{"level":"error","msg":"same"}"#, &[]);
    assert_eq!(log.errors, ["same"]);
}

#[test]
fn probe_lists_only_what_it_needs() {
    let args: Vec<String> = probe_args("boilerhouse:b/t/a", None, &[])
        .iter()
        .map(|a| a.to_string_lossy().into())
        .collect();
    assert_eq!(&args[..4], ["lsf", "boilerhouse:b/t/a", "--max-depth", "1"]);
    let args: Vec<String> = probe_args("boilerhouse:b/t/a", Some("*.db"), &[])
        .iter()
        .map(|a| a.to_string_lossy().into())
        .collect();
    assert_eq!(&args[2..6], ["-R", "--files-only", "--include", "*.db"]);
}

#[test]
fn local_inspection_never_follows_symlinks() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("state");
    assert_eq!(inspect_local(&state, "").unwrap(), LocalState::Missing);
    std::fs::create_dir_all(state.join("a/b")).unwrap();
    assert_eq!(inspect_local(&state, "a/b").unwrap(), LocalState::Empty);
    assert_eq!(inspect_local(&state, "a/c").unwrap(), LocalState::Missing);
    assert_eq!(inspect_local(&state, "").unwrap(), LocalState::NonEmpty);
    std::fs::write(state.join("f"), b"x").unwrap();
    assert!(inspect_local(&state, "f")
        .unwrap_err()
        .contains("not a directory"));
    std::os::unix::fs::symlink(tmp.path(), state.join("link")).unwrap();
    assert!(inspect_local(&state, "link")
        .unwrap_err()
        .contains("symbolic link"));
    assert!(inspect_local(&state, "link/state")
        .unwrap_err()
        .contains("symbolic link"));
}

#[test]
fn sdk_request_ids_are_dropped_from_errors() {
    let line = r#"{"level":"error","msg":"Failed to copy: operation error S3: PutObject, https response error StatusCode: 500, RequestID: AF0D3481, HostID: QUYwRDM0ODE1OUY3QTMyQg==, api error InternalError: Internal Error"}"#;
    let mut log = RcloneLog::default();
    log.push(line, &[]);
    assert_eq!(
        log.errors,
        ["Failed to copy: operation error S3: PutObject, https response error StatusCode: 500, api error InternalError: Internal Error"]
    );
}

#[test]
fn the_endpoint_checked_for_connections_is_the_one_rclone_uses() {
    let no_env = |_: &str| None;
    let mut s = sink(true, Some("http://127.0.0.1:9000"));
    assert_eq!(endpoint_address(&s, no_env).unwrap(), "127.0.0.1:9000");
    for (endpoint, address) in [
        ("http://minio.local/", "minio.local:80"),
        ("https://s3.example.com/x?y", "s3.example.com:443"),
        ("s3.example.com", "s3.example.com:443"),
        ("http://[::1]:9000", "[::1]:9000"),
        ("https://[::1]", "[::1]:443"),
    ] {
        s.endpoint = Some(endpoint.into());
        assert_eq!(endpoint_address(&s, no_env).unwrap(), address, "{endpoint}");
    }
    let aws = sink(false, None);
    assert_eq!(
        endpoint_address(&aws, no_env).unwrap(),
        "s3.eu-west-1.amazonaws.com:443"
    );
    // Behind a proxy rclone never connects to the endpoint itself.
    let proxied = |name: &str| (name == "HTTPS_PROXY").then(|| OsString::from("http://p:3128"));
    assert_eq!(endpoint_address(&s, proxied), None);
    let empty = |name: &str| (name == "HTTPS_PROXY").then(OsString::new);
    assert!(endpoint_address(&s, empty).is_some());
}

#[tokio::test]
async fn a_refused_connection_is_reported_in_rclones_words() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let err = check_connect(&format!("127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(err.contains("connection refused"), "{err}");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open = listener.local_addr().unwrap().to_string();
    assert_eq!(check_connect(&open).await, Ok(()));
}

#[test]
fn shorten_cuts_on_char_boundaries() {
    assert_eq!(shorten("héllo", 2), "hé…");
    assert_eq!(shorten("hé", 2), "hé");
}

#[test]
fn claim_status_starts_idle_and_serializes_in_camel_case() {
    let status = ClaimSync::new().status();
    assert_eq!(status.state, SyncState::Idle);
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["state"], "idle");
    assert!(json["lastSyncAt"].is_null() && json["lastError"].is_null());
    assert_eq!(json["bytesTransferred"], 0);
    let r = TransferResult {
        path: "/".into(),
        direction: SyncOp::Download,
        success: true,
        bytes_transferred: 1,
        files_transferred: 1,
        errors: vec![],
    };
    let json = serde_json::to_value(&r).unwrap();
    assert_eq!(json["direction"], "download");
    assert_eq!(json["filesTransferred"], 1);
}

#[test]
fn cancelled_sync_leaves_an_error_status() {
    let status = StdMutex::new(SyncStatus::default());
    {
        let _in_progress = InProgress::begin(&status, SyncOp::Upload);
        assert_eq!(lock(&status).state, SyncState::Syncing);
    }
    let s = lock(&status).clone();
    assert_eq!(s.state, SyncState::Error);
    assert!(s.last_error.unwrap().contains("upload was cancelled"));
}
