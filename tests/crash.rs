//! `kill -9` at the risky moments of a claim's life (issue 11, item 7): real daemon,
//! real Docker, real rclone, a real S3 endpoint (`rclone serve s3`) behind a holding
//! proxy ([`boilerhouse_testkit::hold`]) that stops one chosen request, so the daemon is killed
//! exactly while a restore or an upload is in flight. After every restart the same
//! invariants are checked: no acknowledged claim is lost, nothing is left paused,
//! no tenant's state is wiped before it was uploaded, and no orphan container
//! remains (every container of the instance is one the daemon lists).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use boilerhouse_testkit::hold::{HoldProxy, Stage};
use boilerhouse_testkit::s3::S3Server;
use boilerhouse_testkit::*;
use serde_json::{json, Value};

/// The daemon binary cargo built for this test crate.
const BIN: &str = env!("CARGO_BIN_EXE_boilerhouse");

const BUCKET: &str = "bh";
const POOL: &str = "app";
const WAIT: Duration = Duration::from_secs(60);

/// The tenant's files, as (path relative to its state, content).
fn files(tag: &str) -> Vec<(String, String)> {
    (1..=6)
        .map(|i| {
            let rel = if i % 2 == 0 {
                format!("dir{i}/nested/file{i}")
            } else {
                format!("file{i}.txt")
            };
            (rel, format!("{tag} content {i}"))
        })
        .collect()
}

/// A sync workload whose sink is the holding proxy; `env` adds an `environment` value.
fn crash_workload(s3: &S3Server, proxy: &HoldProxy, env: &str) -> String {
    workload(
        POOL,
        &format!(
            "environment:\n  FLAVOUR: \"{env}\"\npool:\n  min_size: 1\n  max_size: 4\nsync:\n  sink:\n    type: s3\n    bucket: {BUCKET}\n    region: us-east-1\n    endpoint: {}\n    access_key_id: {}\n    secret_access_key: {}\n    prefix: tenants/${{tenantId}}/\n  mappings:\n    - path: /\n      direction: bidirectional\n      mode: sync\n",
            proxy.endpoint(),
            s3.access_key(),
            s3.secret_key()
        ),
    )
}

struct Rig {
    s3: S3Server,
    proxy: HoldProxy,
    d: Daemon,
}

async fn rig() -> Rig {
    let s3 = S3Server::start_new().await;
    std::fs::create_dir_all(s3.root_dir().join(BUCKET)).unwrap();
    let proxy = HoldProxy::start(&s3.endpoint());
    let d = Daemon::builder(BIN)
        .workload("app.yaml", &crash_workload(&s3, &proxy, "one"))
        .start()
        .await;
    d.wait_idle(POOL, 1).await;
    Rig { s3, proxy, d }
}

fn remote(s3: &S3Server, tenant: &str) -> PathBuf {
    s3.root_dir().join(BUCKET).join("tenants").join(tenant)
}

/// Every file of `expected` is under `dir` with its content.
fn holds_all(dir: &Path, expected: &[(String, String)]) -> Result<(), String> {
    for (rel, content) in expected {
        match std::fs::read_to_string(dir.join(rel)) {
            Ok(found) if found.trim() == content => {}
            Ok(found) => return Err(format!("{rel}: {found:?} instead of {content:?}")),
            Err(e) => {
                return Err(format!(
                    "{rel} missing in {}: {e}; there: {:?}",
                    dir.display(),
                    listing(dir)
                ))
            }
        }
    }
    Ok(())
}

/// Writes the files into the claimed container, as the workload's user.
fn write_inside(d: &Daemon, cid: &str, expected: &[(String, String)]) {
    let script: String = expected
        .iter()
        .map(|(rel, content)| {
            let parent = Path::new(rel).parent().unwrap().display().to_string();
            format!("mkdir -p '/state/{parent}' && echo '{content}' > '/state/{rel}' && ")
        })
        .collect::<String>()
        + "true";
    let (ok, out) = docker_exec(&d.docker_name(cid), "1000", &script);
    assert!(ok, "writing the tenant's files: {out}");
}

/// The daemon's containers, by id (GET /containers).
async fn listed(d: &Daemon) -> Vec<Value> {
    let (s, v) = d.get("/containers").await;
    assert_eq!(s, 200, "{v}");
    v.as_array().cloned().unwrap_or_default()
}

/// The engine's containers of the instance: (container id label, Docker name).
fn engine_containers(d: &Daemon) -> Vec<(String, String)> {
    labelled_containers(&d.instance)
}

/// No orphan: eventually every container of the instance is one the daemon lists.
async fn assert_no_orphans(d: &Daemon) {
    let started = std::time::Instant::now();
    loop {
        let known: BTreeSet<String> = listed(d)
            .await
            .iter()
            .filter_map(|c| c["id"].as_str().map(str::to_owned))
            .collect();
        let engine = engine_containers(d);
        let orphans: Vec<_> = engine
            .iter()
            .filter(|(cid, _)| !known.contains(cid))
            .collect();
        if orphans.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "orphan containers (in the engine, unknown to the daemon): {orphans:?}; daemon lists {known:?}\n{}",
            d.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Nothing of the instance stays paused. Polled: a container whose release just
/// ended (recycle `destroy`) is still paused for the moment until its removal.
async fn assert_none_paused(d: &Daemon) {
    let started = std::time::Instant::now();
    loop {
        let paused: Vec<String> = engine_containers(d)
            .into_iter()
            .filter(|(_, name)| {
                let (ok, out) = docker(&["inspect", "--format", "{{json .State}}", name]);
                // A container removed since the listing is not paused either.
                ok && serde_json::from_str::<Value>(&out).expect("State JSON")["Paused"] == true
            })
            .map(|(cid, _)| cid)
            .collect();
        if paused.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "still paused: {paused:?}\n{}",
            d.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The invariants that hold after every restart.
async fn after_restart(d: &Daemon) {
    d.wait_pool(POOL, WAIT, |p| p["idleCount"].as_u64() >= Some(1))
        .await;
    assert_no_orphans(d).await;
    assert_none_paused(d).await;
    // An idle container never holds anyone's files.
    for c in listed(d).await {
        if c["status"] == "idle" {
            let cid = c["id"].as_str().unwrap();
            let left = listing(&d.state_dir(cid));
            assert!(
                left.is_empty(),
                "idle container {cid} holds files: {left:?}"
            );
        }
    }
}

async fn status(d: &Daemon, tenant: &str) -> Value {
    let (s, v) = d.get(&format!("/tenants/{tenant}/status")).await;
    assert_eq!(s, 200, "{v}");
    v
}

/// Sends a request from a task of its own, so the test can kill the daemon while it
/// is in flight; the task ends with the answer or the connection's failure.
fn in_flight(d: &Daemon, path: &str) -> tokio::task::JoinHandle<Result<(u16, String), String>> {
    let url = format!("{}{path}", d.base);
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let resp = client
            .post(&url)
            .json(&json!({}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let status = resp.status().as_u16();
        Ok((status, resp.text().await.unwrap_or_default()))
    })
}

/// rclone processes still working on this daemon's directories.
fn rclones_of(d: &Daemon) -> Vec<String> {
    let root = d.root.display().to_string();
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmd.contains("rclone") && cmd.contains(&root) {
            out.push(format!("{}: {cmd}", entry.file_name().to_string_lossy()));
        }
    }
    out
}

/// No rclone of the killed daemon goes on: an orphaned restore would write into a
/// container the next start may find clean and hand out, an orphaned upload could
/// mirror an old snapshot over a newer one.
async fn assert_rclone_died(d: &Daemon) {
    let started = std::time::Instant::now();
    loop {
        let alive = rclones_of(d);
        if alive.is_empty() {
            return;
        }
        assert!(
            started.elapsed() < WAIT,
            "rclone outlived the daemon: {alive:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// (a) Killed while a claim restores its state: the claim was never acknowledged, so
/// after the restart the tenant holds nothing, the half-restored container is gone
/// (or, if nothing reached it, idle and empty), and a new claim restores everything.
#[tokio::test]
async fn kill_during_a_claims_restore() {
    let Rig { s3, proxy, mut d } = rig().await;
    let state = files("restored");
    for (rel, content) in &state {
        s3.seed(BUCKET, "alice", rel, content.as_bytes());
    }
    // Object GETs name the key in the path; the listing has it in its (encoded) query.
    proxy.hold_next("GET", Some("/tenants/alice/"), Stage::Request);
    let claim = in_flight(&d, "/tenants/alice/claim");
    let held = proxy.wait_held(WAIT).await;
    let st = status(&d, "alice").await;
    assert_eq!(st["status"], "provisioning", "{st}");
    let provisioning = st["containerId"].as_str().unwrap().to_owned();
    eprintln!("held {held:?}; rclone: {:#?}", rclones_of(&d));
    d.kill9();
    let answer = claim.await.unwrap();
    assert!(
        !matches!(answer, Ok((200, _))),
        "the claim cannot have been acknowledged: {answer:?}"
    );
    assert_rclone_died(&d).await;
    proxy.release();

    d.start_again().await;
    after_restart(&d).await;
    let st = status(&d, "alice").await;
    assert_eq!(
        st["status"], "cold",
        "an unacknowledged claim is not kept: {st}"
    );
    let still = listed(&d)
        .await
        .into_iter()
        .find(|c| c["id"] == provisioning.as_str());
    if let Some(c) = &still {
        assert_eq!(c["status"], "idle", "{c}");
    }
    eprintln!(
        "provisioning container {provisioning}: {}",
        if still.is_some() {
            "kept idle (empty)"
        } else {
            "removed"
        }
    );

    let v = d.claim("alice", json!({})).await;
    let cid = v["containerId"].as_str().unwrap();
    holds_all(&d.state_dir(cid), &state).unwrap();
    assert_eq!(listing(&d.state_dir(cid)).len(), state.len());
}

/// Claims `tenant`, writes `expected` into its state; returns the container id.
async fn claim_with_files(d: &Daemon, tenant: &str, expected: &[(String, String)]) -> String {
    let v = d.claim(tenant, json!({})).await;
    let cid = v["containerId"].as_str().unwrap().to_owned();
    write_inside(d, &cid, expected);
    cid
}

/// After a restart, the tenant's acknowledged claim is there, on the same running,
/// unpaused container, with its files intact.
async fn assert_claim_intact(d: &Daemon, tenant: &str, cid: &str, expected: &[(String, String)]) {
    let st = status(d, tenant).await;
    assert_eq!(st["status"], "warm", "the acknowledged claim is kept: {st}");
    assert_eq!(st["containerId"], cid, "{st}");
    let state = &docker_inspect(&d.docker_name(cid))["State"];
    assert_eq!(state["Paused"], false, "{state}");
    assert_eq!(state["Running"], true, "{state}");
    holds_all(&d.state_dir(cid), expected).unwrap();
    let (ok, out) = docker_exec(
        &d.docker_name(cid),
        "1000",
        "echo after > /state/after-restart",
    );
    assert!(ok, "the tenant can write again: {out}");
}

/// Releases `tenant` and checks that the bucket then holds every file.
async fn release_saves_everything(
    d: &Daemon,
    s3: &S3Server,
    tenant: &str,
    expected: &[(String, String)],
) {
    d.release(tenant, json!({})).await;
    holds_all(&remote(s3, tenant), expected).unwrap();
    assert!(remote(s3, tenant).join("after-restart").is_file());
    assert_eq!(status(d, tenant).await["status"], "cold");
}

/// Waits until the release has paused the container (it freezes before uploading).
async fn wait_paused(d: &Daemon, cid: &str) {
    let name = d.docker_name(cid);
    eventually(WAIT, "the releasing container to be paused", || {
        (docker_inspect(&name)["State"]["Paused"] == true).then_some(())
    })
    .await;
}

/// (b) Killed during a release's upload, while the container is paused: the claim
/// was never given up, so after the restart it is there on the same container, which
/// runs again (unpaused) with every file; a release then saves them all.
#[tokio::test]
async fn kill_during_a_releases_upload() {
    let Rig { s3, proxy, mut d } = rig().await;
    let state = files("bob");
    let cid = claim_with_files(&d, "bob", &state).await;
    proxy.hold_next("PUT", None, Stage::Request);
    let release = in_flight(&d, "/tenants/bob/release");
    let held = proxy.wait_held(WAIT).await;
    wait_paused(&d, &cid).await;
    eprintln!("held {held:?}");
    d.kill9();
    let answer = release.await.unwrap();
    assert!(!matches!(answer, Ok((200, _))), "{answer:?}");
    assert_rclone_died(&d).await;
    proxy.release();

    d.start_again().await;
    after_restart(&d).await;
    assert_claim_intact(&d, "bob", &cid, &state).await;
    release_saves_everything(&d, &s3, "bob", &state).await;
    after_restart(&d).await;
}

/// (c) Killed after the upload reached the bucket but before rclone finished (the
/// answer to one PUT is held after the server stored the object, every other PUT is
/// answered): the release never got to forget the claim, so the claim is intact —
/// and the bucket already holds every file.
#[tokio::test]
async fn kill_after_the_upload_before_the_release_ends() {
    let Rig { s3, proxy, mut d } = rig().await;
    let state = files("carol");
    let cid = claim_with_files(&d, "carol", &state).await;
    proxy.hold_next("PUT", None, Stage::Response);
    let release = in_flight(&d, "/tenants/carol/release");
    proxy.wait_held(WAIT).await;
    let others = state.len() - 1;
    proxy
        .wait_answered(WAIT, "every other PUT", |a| {
            a.iter()
                .filter(|r| r.method == "PUT" && r.status == 200)
                .count()
                >= others
        })
        .await;
    holds_all(&remote(&s3, "carol"), &state).unwrap();
    d.kill9();
    let answer = release.await.unwrap();
    assert!(!matches!(answer, Ok((200, _))), "{answer:?}");
    assert_rclone_died(&d).await;
    proxy.release();

    d.start_again().await;
    after_restart(&d).await;
    assert_claim_intact(&d, "carol", &cid, &state).await;
    release_saves_everything(&d, &s3, "carol", &state).await;
}

/// (c') Killed as soon as the upload's last request (its last PUT) is answered: the
/// kill lands before or after
/// the claim record is removed. Either the claim is intact with its state, or the
/// tenant is released and the bucket holds every file — never neither.
#[tokio::test]
async fn kill_right_after_the_last_put() {
    let Rig { s3, proxy, mut d } = rig().await;
    let state = files("dave");
    let cid = claim_with_files(&d, "dave", &state).await;
    let release = in_flight(&d, "/tenants/dave/release");
    // rclone checks each PUT by the ETag of its answer (`--s3-no-head`): the last PUT
    // answered is the last request of the upload.
    let count = |a: &[boilerhouse_testkit::hold::Answered], method: &str| {
        a.iter()
            .filter(|r| r.method == method && r.status == 200)
            .count()
    };
    proxy
        .wait_answered(WAIT, "every PUT", |a| count(a, "PUT") >= state.len())
        .await;
    d.kill9();
    let answer = release.await.unwrap();
    eprintln!("release answer: {answer:?}");

    d.start_again().await;
    after_restart(&d).await;
    let st = status(&d, "dave").await;
    match st["status"].as_str() {
        Some("warm") => {
            eprintln!("the kill landed before the claim record was removed");
            assert_claim_intact(&d, "dave", &cid, &state).await;
            release_saves_everything(&d, &s3, "dave", &state).await;
        }
        Some("cold") => {
            eprintln!("the kill landed after the claim record was removed");
            holds_all(&remote(&s3, "dave"), &state).unwrap();
            assert!(
                !listed(&d).await.iter().any(|c| c["id"] == cid.as_str()),
                "the released container is not kept"
            );
        }
        _ => panic!("unexpected status after the restart: {st}"),
    }
    assert!(
        !matches!(answer, Ok((200, _))) || st["status"] == "cold",
        "an acknowledged release is not undone: {answer:?} {st}"
    );
}

fn spec_label(d: &Daemon, cid: &str) -> String {
    docker_inspect(&d.docker_name(cid))["Config"]["Labels"]["boilerhouse.spec-hash"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// (d) Restarted with a changed workload file (an environment value, so a new spec
/// hash): the claimed tenant keeps its container and state, the idle containers of
/// the old spec are replaced by containers of the new one, no orphan remains.
#[tokio::test]
async fn restart_with_a_changed_workload() {
    let Rig { s3, proxy, mut d } = rig().await;
    let state = files("erin");
    let cid = claim_with_files(&d, "erin", &state).await;
    d.wait_idle(POOL, 1).await;
    let old_idle: Vec<String> = listed(&d)
        .await
        .iter()
        .filter(|c| c["status"] == "idle")
        .map(|c| c["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(!old_idle.is_empty());
    let old_hash = spec_label(&d, &cid);
    d.kill9();
    std::fs::write(
        d.path("workloads").join("app.yaml"),
        crash_workload(&s3, &proxy, "two"),
    )
    .unwrap();

    d.start_again().await;
    after_restart(&d).await;
    assert_claim_intact(&d, "erin", &cid, &state).await;
    assert_eq!(
        spec_label(&d, &cid),
        old_hash,
        "the claimed container keeps its spec"
    );
    let env = docker_inspect(&d.docker_name(&cid))["Config"]["Env"].to_string();
    assert!(env.contains("FLAVOUR=one"), "{env}");
    let containers = listed(&d).await;
    for old in &old_idle {
        assert!(
            !containers.iter().any(|c| c["id"] == old.as_str()),
            "idle container {old} of the old spec is kept: {containers:?}"
        );
        assert!(
            !engine_containers(&d).iter().any(|(c, _)| c == old),
            "idle container {old} of the old spec is still in the engine"
        );
    }
    for c in containers.iter().filter(|c| c["status"] == "idle") {
        let id = c["id"].as_str().unwrap();
        assert_ne!(spec_label(&d, id), old_hash, "{id} has the old spec");
        let env = docker_inspect(&d.docker_name(id))["Config"]["Env"].to_string();
        assert!(env.contains("FLAVOUR=two"), "{id}: {env}");
    }
    release_saves_everything(&d, &s3, "erin", &state).await;
    after_restart(&d).await;
}
