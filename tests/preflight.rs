//! Start-up preflight of sync workloads: rclone and the state dir must be reachable
//! by the workload's user, or the daemon (and `validate`) stop with one sentence
//! naming the variable, the path, the uid and the OS error.
//!
//! These tests need root (the daemon only switches users as root); they fail, never
//! skip, without it.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use boilerhouse_testkit::*;

/// The daemon binary cargo built for this test crate.
const BIN: &str = env!("CARGO_BIN_EXE_boilerhouse");

const SYNC_WORKLOAD: &str = "sync:\n  sink:\n    type: s3\n    bucket: b\n    region: us-east-1\n    endpoint: http://127.0.0.1:9\n    access_key_id: k\n    secret_access_key: s\n  mappings:\n    - path: /\n";

fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root: only a root daemon runs rclone as the workload's user"
    );
}

/// A scratch tree: `root/` (0755) with `locked/` (0700, root's) and `workloads/`
/// holding one sync workload that runs as 1000:1000.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("bh-preflight-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), PermissionsExt::from_mode(0o755)).unwrap();
        let locked = dir.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, PermissionsExt::from_mode(0o700)).unwrap();
        let workloads = dir.path().join("workloads");
        std::fs::create_dir(&workloads).unwrap();
        std::fs::write(workloads.join("w.yaml"), workload("w", SYNC_WORKLOAD)).unwrap();
        Self { dir }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// rclone copied where only root can reach it.
    fn locked_rclone(&self) -> PathBuf {
        let bin = self.path("locked/rclone");
        std::fs::copy(boilerhouse_testkit::s3::rclone_bin(), &bin).unwrap();
        std::fs::set_permissions(&bin, PermissionsExt::from_mode(0o755)).unwrap();
        bin
    }

    /// The daemon's environment, with `overrides` last.
    fn env(&self, overrides: &[(&str, &Path)]) -> Vec<(String, String)> {
        let p = |rel: &str| self.path(rel).display().to_string();
        let mut env = vec![
            ("BOILERHOUSE_API_HOST".into(), "127.0.0.1".into()),
            ("BOILERHOUSE_API_PORT".into(), free_port().to_string()),
            ("BOILERHOUSE_INSTANCE".into(), unique_instance()),
            ("BOILERHOUSE_STATE_DIR".into(), p("states")),
            ("BOILERHOUSE_SECRETS_DIR".into(), p("secrets")),
            ("BOILERHOUSE_SOCKET_DIR".into(), p("sockets")),
            ("BOILERHOUSE_DATA_DIR".into(), p("data")),
            ("BOILERHOUSE_WORKLOADS_DIR".into(), p("workloads")),
            ("BOILERHOUSE_DEFAULT_IMAGE".into(), test_image()),
            (
                "BOILERHOUSE_RCLONE_BIN".into(),
                boilerhouse_testkit::s3::rclone_bin().display().to_string(),
            ),
        ];
        for (k, v) in overrides {
            env.retain(|(ek, _)| ek != k);
            env.push((k.to_string(), v.display().to_string()));
        }
        env
    }
}

/// Runs the binary with `args` and only `env`, bounded: a daemon that wrongly starts
/// is stopped after 60 s (and the test then fails on its exit status).
fn run(args: &[&str], env: &[(String, String)]) -> Output {
    Command::new("timeout")
        .args(["60", env!("CARGO_BIN_EXE_boilerhouse")])
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(std::env::vars().filter(|(k, _)| k == "DOCKER_HOST"))
        .envs(env.iter().cloned())
        .output()
        .expect("run boilerhouse")
}

/// The daemon refuses to start and `validate` fails, both with the sentence that
/// starts with `starts`; returns the sentence.
fn refused_by_daemon_and_validate(env: &[(String, String)], starts: &str) -> String {
    let daemon = run(&[], env);
    let daemon_err = String::from_utf8_lossy(&daemon.stderr).into_owned();
    assert_eq!(
        daemon.status.code(),
        Some(1),
        "the daemon must stop at start-up: {daemon_err}{}",
        String::from_utf8_lossy(&daemon.stdout)
    );
    let validate = run(&["validate"], env);
    let validate_err = String::from_utf8_lossy(&validate.stderr).into_owned();
    assert_eq!(validate.status.code(), Some(1), "validate: {validate_err}");
    let sentence = validate_err
        .lines()
        .find(|l| l.starts_with(starts))
        .unwrap_or_else(|| panic!("validate did not say {starts:?}: {validate_err}"))
        .to_owned();
    assert!(
        daemon_err.contains(&sentence),
        "the daemon's sentence differs from validate's ({sentence:?}): {daemon_err}"
    );
    sentence
}

#[test]
fn rclone_the_workload_user_cannot_reach_stops_start_up_and_validate() {
    require_root();
    let scratch = Scratch::new();
    let bin = scratch.locked_rclone();
    let env = scratch.env(&[("BOILERHOUSE_RCLONE_BIN", &bin)]);
    let sentence =
        refused_by_daemon_and_validate(&env, &format!("BOILERHOUSE_RCLONE_BIN={}:", bin.display()));
    for needle in ["uid 1000", "gid 1000", "workload `w`", "Permission denied"] {
        assert!(sentence.contains(needle), "missing {needle:?}: {sentence}");
    }
    assert_eq!(sentence.lines().count(), 1);
}

#[test]
fn a_state_dir_under_a_root_only_parent_stops_start_up_and_validate() {
    require_root();
    let scratch = Scratch::new();
    let states = scratch.path("locked/states");
    let env = scratch.env(&[("BOILERHOUSE_STATE_DIR", &states)]);
    let sentence = refused_by_daemon_and_validate(
        &env,
        &format!("BOILERHOUSE_STATE_DIR={}:", states.display()),
    );
    for needle in ["uid 1000", "gid 1000", "workload `w`", "Permission denied"] {
        assert!(sentence.contains(needle), "missing {needle:?}: {sentence}");
    }
}

#[tokio::test]
async fn a_reachable_rclone_and_state_dir_start_and_log_the_version() {
    require_root();
    let d = web_daemon(BIN, &format!("pool:\n  min_size: 0\n{SYNC_WORKLOAD}")).await;
    // The log is coloured text: compare without the escapes.
    let log = regex::Regex::new("\x1b\\[[0-9;]*m")
        .unwrap()
        .replace_all(&d.log_text(), "")
        .into_owned();
    let line = log
        .lines()
        .find(|l| l.contains("rclone runs as the workload's user"))
        .unwrap_or_else(|| panic!("no preflight line in:\n{log}"));
    assert!(
        line.contains("rclone v") && line.contains("uid=1000"),
        "{line}"
    );
    let (s, _) = d.get("/health").await;
    assert_eq!(s, 200);
    // validate agrees.
    let scratch = Scratch::new();
    let out = run(&["validate"], &scratch.env(&[]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("rclone v") && text.contains("runs as uid 1000 (gid 1000)"),
        "{text}"
    );
}
