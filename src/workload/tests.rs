//! Unit tests of the workload loader as a whole: text in, workload or errors out.
//!
//! They go through `load_str` / `load_dir` (not the internals) so that they pin what
//! an operator sees: every error with its key, line and reason.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::load::load_str;
use super::validate::mapping;
use super::values::shell_split;
use super::*;

fn env(name: &str) -> Option<String> {
    match name {
        "REGISTRY" => Some("registry.example".into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

fn load(text: &str) -> Result<Workload, LoadErrors> {
    load_str(Path::new("w.yaml"), text, &env, "alpine:latest")
}

fn ok(text: &str) -> Workload {
    load(text).unwrap_or_else(|e| panic!("expected to load, got:\n{e}"))
}

/// The errors as `(key, line, message)`.
fn errs(text: &str) -> Vec<(String, Option<usize>, String)> {
    let Err(LoadErrors(errors)) = load(text) else {
        panic!("expected errors for:\n{text}")
    };
    let as_tuple = |e: LoadError| (e.key.unwrap_or_default(), e.line, e.message);
    errors.into_iter().map(as_tuple).collect()
}

fn manifest_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}

#[test]
fn seed_readme_example_loads_as_written() {
    let path = manifest_path("workloads/examples/my-worker.yaml");
    let text = std::fs::read_to_string(&path).expect("example file");
    let w = load_str(&path, &text, &env, "alpine:latest").expect("seed example loads");
    assert_eq!((w.id.as_str(), w.name.as_str()), ("my-worker", "My Worker"));
    assert_eq!(w.image, "myregistry/my-worker:latest");
    assert_eq!((w.pool.min_size, w.pool.max_size), (Some(2), Some(20)));
    assert_eq!(w.pool.idle_timeout, Some(Duration::from_secs(600)));
    assert_eq!(w.resources.memory_bytes, Some(2 << 30));
    assert_eq!(w.resources.cpus, Some(2.0));
    assert_eq!(
        w.user,
        Some(UserSpec {
            uid: 1000,
            gid: None
        })
    );
    assert!(!w.read_only);
    assert_eq!(w.network_mode.as_deref(), Some("bridge"));
    assert_eq!(
        (
            w.volumes.state.target.as_str(),
            w.volumes.comm.target.as_str()
        ),
        ("/data", "/comm")
    );
    assert!(w.volumes.secrets.read_only);
    assert_eq!(w.environment["LOG_LEVEL"], "info");
    let hc = w.healthcheck.expect("healthcheck");
    let curl = ["curl", "-f", "http://localhost:8080/health"].map(String::from);
    assert_eq!(hc.test, HealthTest::Cmd(curl.to_vec()));
    assert_eq!(
        (hc.interval, hc.retries),
        (Some(Duration::from_secs(30)), Some(3))
    );
    let sync = w.sync.expect("sync");
    assert_eq!(
        (sync.sink.bucket.as_str(), sync.sink.prefix.as_str()),
        ("my-bucket", "tenants/${tenantId}/")
    );
    assert_eq!(sync.mappings, vec![mapping("/")]);
    assert!(sync.policy.on_claim && sync.policy.on_release && sync.policy.manual);
    assert_eq!(w.source.as_deref(), Some(path.as_path()));
}

#[test]
fn default_workload_file_and_builtin() {
    let loaded = load_dir(&manifest_path("workloads"), &env, "unused").expect("workloads/ loads");
    let w = &loaded[0];
    assert_eq!(
        (loaded.len(), w.id.as_str(), w.image.as_str()),
        (1, "default", "alpine:latest")
    );
    assert_eq!(w.command, Some(vec!["sleep".into(), "infinity".into()]));
    assert_eq!((w.pool.min_size, w.pool.max_size), (Some(2), Some(10)));
    assert!(w.sync.is_none());

    let b = builtin_default("busybox");
    assert_eq!(
        (b.id.as_str(), b.image.as_str(), b.name.as_str()),
        ("default", "busybox", "default")
    );
    assert!(b.command.is_none() && b.healthcheck.is_none() && b.read_only);
}

#[test]
fn minimal_file_gets_defaults() {
    let w = ok("id: tiny\n");
    assert_eq!(
        (w.name.as_str(), w.image.as_str()),
        ("tiny", "alpine:latest")
    );
    assert!(w.read_only && w.sync.is_none() && w.command.is_none() && w.user.is_none());
    assert_eq!(w.volumes.state.target, "/state");
    assert!(!w.volumes.state.read_only && w.volumes.secrets.read_only);
    assert_eq!(w.pool.recycle, Recycle::Destroy);
}

/// Each bad file yields exactly one error, at the given key and line, whose message
/// contains the given text.
#[test]
fn single_errors_name_key_line_and_reason() {
    #[rustfmt::skip]
    let cases: &[(&str, &str, usize, &str)] = &[
        ("id: a\nhealtcheck:\n  test: [NONE]\n", "healtcheck", 2, "unknown key `healtcheck` (did you mean `healthcheck`?)"),
        ("id: a\npool:\n  min_size: 1\n  max_siz: 2\n", "pool.max_siz", 4, "did you mean `max_size`?"),
        ("id: a\nhealthcheck:\n  test: [CMD, \"true\"]\n  interval: 10 minutes\n", "healthcheck.interval", 4,
         "invalid duration \"10 minutes\": use compose form like 30s, 10m, 1m30s, 500ms, or integer milliseconds"),
        ("id: a\ndeploy:\n  resources:\n    limits:\n      cpus: 1\n      memory: 2GG\n", "deploy.resources.limits.memory", 6, "\"2GG\""),
        ("id: a\ndeploy:\n  resources:\n    limits:\n      cpus: lots\n", "deploy.resources.limits.cpus", 5, "cores"),
        ("id: a\ndeploy:\n  replicas: 3\n", "deploy.replicas", 3, "unknown key"),
        ("# comment\n\nimage: x\n", "id", 3, "missing required key `id`"),
        ("id: Bad\n", "id", 1, "lowercase"),
        ("id: a\nprivileged: true\n", "privileged", 2, "privileged containers can take over the host; not allowed"),
        ("id: a\npid: host\n", "pid", 2, "every process on the host"),
        ("id: a\nipc: private\n", "ipc", 2, "not supported"),
        ("id: a\ndevices: [/dev/sda]\n", "devices", 2, "hardware"),
        ("id: a\nsecurity_opt: [seccomp=unconfined]\n", "security_opt", 2, "seccomp"),
        ("id: a\nuserns_mode: host\n", "userns_mode", 2, "root on the host"),
        ("id: a\nnetwork_mode: host\n", "network_mode", 2, "bypassing the network isolation"),
        ("id: a\nnetwork_mode: container:other\n", "network_mode", 2, "another tenant"),
        ("id: a\ncap_add:\n  - NET_ADMIN\n  - ALL\n", "cap_add[1]", 4, "every kernel capability"),
        ("id: a\nvolumes:\n  - /etc:/host-etc\n", "volumes[0]", 3, "host bind mount `/etc:/host-etc` is refused"),
        ("id: a\nvolumes:\n  stat:\n    target: /c\n", "volumes.stat", 3, "(did you mean `state`?) is refused"),
        ("id: a\nvolumes:\n  state:\n    target: /\n", "volumes.state.target", 4, "whole container filesystem"),
        ("id: a\nvolumes:\n  comm:\n    target: /x/../y\n", "volumes.comm.target", 4, "`..`"),
        ("id: a\nvolumes:\n  comm:\n    target: relative\n", "volumes.comm.target", 4, "absolute"),
        ("id: a\nvolumes:\n  comm:\n    target: /state\n", "volumes.comm.target", 4, "already the target of volumes.state"),
        ("id: a\nlabels:\n  boilerhouse.tenant: x\n", "labels.boilerhouse.tenant", 3, "reserved"),
        ("id: a\nuser: node\n", "user", 2, "numeric"),
        ("id: a\nuser: \"1000:staff\"\n", "user", 2, "chowned"),
        ("id: a\nenvironment:\n  - NOVALUE\n", "environment[0]", 3, "`NOVALUE=value`"),
        ("id: a\nenvironment:\n  TOKEN: ${UNSET_VAR}\n", "environment.TOKEN", 3, "`UNSET_VAR` is not set"),
        ("id: a\nimage: ${oops\n", "image", 2, "unterminated"),
        ("id: a\nhealthcheck:\n  test: [CMD]\n", "healthcheck.test", 3, "CMD-SHELL"),
        ("id: a\nhealthcheck:\n  interval: 5s\n", "healthcheck.test", 2, "missing `test`"),
        ("id: a\nhealthcheck:\n  test: [CMD, x]\n  disable: true\n", "healthcheck.disable", 4, "conflicts"),
        ("id: a\nports:\n  - \"9000:8080\"\n", "ports[0]", 3, "pool.max_size: 1"),
        ("id: a\nports:\n  - protocol: udp\n", "ports[0].container", 3, "missing `container`"),
        ("id: a\nports:\n  - 127.0.0.1:80:80\n", "ports[0]", 3, "host IP"),
        ("id: a\npool:\n  min_size: 5\n  max_size: 3\n", "pool.min_size", 3, "larger than max_size"),
        ("id: a\npool:\n  max_size: 0\n", "pool.max_size", 3, "greater than zero"),
        ("id: a\npool:\n  recycle: keep\n", "pool.recycle", 3, "destroy, restart, reuse"),
        ("id: a\nsync:\n  policy:\n    manual: false\n", "sync.sink", 2, "missing `sink`"),
        ("id: a\nsync:\n  sink:\n    bucket: b\n    access_key_id: k\n", "sync.sink.access_key_id", 5, "give both"),
        ("id: a\nsync:\n  sink:\n    bucket: b\n    endpoint: minio:9000\n", "sync.sink.endpoint", 5, "http"),
        ("id: a\nsync:\n  sink:\n    bucket: b\n    rclone_flags: [-v]\n", "sync.sink.rclone_flags[0]", 5, "`--`"),
        ("id: a\nsync:\n  sink: {bucket: b}\n  mappings: []\n", "sync.mappings", 4, "empty"),
        ("id: a\nsync:\n  sink: {bucket: b, type: gcs}\n", "sync.sink.type", 3, "only s3"),
        ("id: a\nimage: [unclosed\n", "", 2, "invalid YAML"),
        ("- id: a\n", "", 1, "expected a mapping"),
    ];
    for (text, key, line, needle) in cases {
        let errors = errs(text);
        assert_eq!(errors.len(), 1, "{text}\n{errors:?}");
        let (k, l, message) = &errors[0];
        assert_eq!((k.as_str(), *l), (*key, Some(*line)), "{text}\n{message}");
        assert!(message.contains(needle), "{text}\n{message}");
    }
}

#[test]
fn all_errors_of_a_file_are_reported_in_line_order() {
    let text = "\
id: a
image: ${NOPE}
user: node
healthcheck:
  test: [\"CMD\", \"true\"]
  timeout: soon
sync:
  sink:
    type: gcs
    prefix: shared/
  mappings:
    - path: ../escape
      direction: sideways
";
    let got: Vec<(String, Option<usize>)> =
        errs(text).into_iter().map(|(k, l, _)| (k, l)).collect();
    let want = [
        ("image", 2),
        ("user", 3),
        ("healthcheck.timeout", 6),
        ("sync.sink.bucket", 8),
        ("sync.sink.type", 9),
        ("sync.sink.prefix", 10),
        ("sync.mappings[0].path", 12),
        ("sync.mappings[0].direction", 13),
    ];
    assert_eq!(got, want.map(|(k, l)| (k.to_owned(), Some(l))));
    let messages: Vec<String> = errs(text).into_iter().map(|e| e.2).collect();
    assert!(messages[5].contains("prefix must contain ${tenantId} so tenants never share objects"));
}

#[test]
fn load_dir_reports_duplicates_across_files_and_all_files_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write =
        |name: &str, text: &str| std::fs::write(dir.path().join(name), text).expect("write");
    write("a.yaml", "id: same\n");
    write("b.yml", "# comment\nid: same\n");
    write("c.yaml", "id: c\nprivileged: true\n");
    write("notes.txt", "not a workload");
    write(".hidden.yaml", "garbage: [");
    let Err(LoadErrors(errors)) = load_dir(dir.path(), &env, "alpine") else {
        panic!("expected errors")
    };
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors[0].file.ends_with("b.yml"));
    assert_eq!(
        (errors[0].key.as_deref(), errors[0].line),
        (Some("id"), Some(2))
    );
    assert!(
        errors[0].message.contains("a.yaml"),
        "{}",
        errors[0].message
    );
    let shown = LoadErrors(errors).to_string();
    let expected =
        "c.yaml:2: privileged: privileged containers can take over the host; not allowed";
    assert!(
        shown.lines().nth(1).is_some_and(|l| l.ends_with(expected)),
        "{shown}"
    );

    std::fs::remove_file(dir.path().join("b.yml")).expect("rm");
    std::fs::remove_file(dir.path().join("c.yaml")).expect("rm");
    let loaded = load_dir(dir.path(), &env, "alpine").expect("loads");
    assert_eq!(
        loaded.iter().map(|w| w.id.as_str()).collect::<Vec<_>>(),
        ["same"]
    );
    assert!(load_dir(&dir.path().join("missing"), &env, "alpine")
        .expect("missing dir")
        .is_empty());
}

#[test]
fn fixture_directories() {
    let fixtures = manifest_path("tests/fixtures/workloads");
    let good = load_dir(&fixtures.join("good"), &env, "alpine").expect("good fixtures load");
    assert_eq!(good.len(), 2);
    let Err(LoadErrors(bad)) = load_dir(&fixtures.join("bad"), &env, "alpine") else {
        panic!("bad fixtures must fail")
    };
    let shown = LoadErrors(bad.clone()).to_string();
    let in_file = |name: &str| bad.iter().filter(|e| e.file.ends_with(name)).count();
    assert_eq!(in_file("many-errors.yaml"), 6, "{shown}");
    assert_eq!(
        (
            in_file("typo.yaml"),
            in_file("privileged.yaml"),
            in_file("missing-id.yml")
        ),
        (1, 2, 1)
    );
    assert_eq!(in_file("duplicate.yaml") + in_file("dup-twin.yaml"), 1);
    assert_eq!(
        (in_file("flow-style.yaml"), in_file("flow-one-line.yaml")),
        (2, 3),
        "{shown}"
    );
    assert!(bad.iter().all(|e| e.line.is_some()), "{shown}");
}

#[test]
fn environment_and_labels_forms() {
    let w =
        ok("id: a\nenvironment:\n  A: x\n  N: 3\n  B: true\nlabels: [\"team=core\", \"flag\"]\n");
    let env_of = |w: &Workload, k: &str| w.environment.get(k).cloned();
    assert_eq!(
        (env_of(&w, "N").as_deref(), env_of(&w, "B").as_deref()),
        (Some("3"), Some("true"))
    );
    assert_eq!(w.labels.get("flag").map(String::as_str), Some(""));
    let w = ok("id: a\nenvironment:\n  - A=x=y\n  - x-kept=1\n");
    assert_eq!(env_of(&w, "A").as_deref(), Some("x=y"));
    assert!(w.environment.contains_key("x-kept"));
}

#[test]
fn healthcheck_test_forms() {
    let test = |yaml: &str| {
        ok(&format!("id: a\nhealthcheck:\n  {yaml}\n"))
            .healthcheck
            .map(|h| h.test)
    };
    let cmd = HealthTest::Cmd(vec!["pg_isready".into(), "-q".into()]);
    assert_eq!(test("test: [\"CMD\", \"pg_isready\", \"-q\"]"), Some(cmd));
    let shell = Some(HealthTest::Shell("curl -f x || exit 1".into()));
    assert_eq!(
        test("test: [\"CMD-SHELL\", \"curl -f x || exit 1\"]"),
        shell
    );
    assert_eq!(test("test: curl -f x || exit 1"), shell);
    assert_eq!(test("test: [\"NONE\"]"), Some(HealthTest::None));
    assert_eq!(test("disable: true"), Some(HealthTest::None));
}

#[test]
fn start_interval_and_ready_timeout_are_read_and_the_deadline_follows_the_healthcheck() {
    let w = ok("id: a\nhealthcheck:\n  test: [\"CMD\", \"true\"]\n  interval: 30s\n  timeout: 5s\n  retries: 3\n  start_period: 10s\n  start_interval: 2s\npool:\n  ready_timeout: 2m\n");
    let hc = w.healthcheck.unwrap();
    assert_eq!(hc.start_interval, Some(Duration::from_secs(2)));
    assert_eq!(w.pool.ready_timeout, Some(Duration::from_secs(120)));
    let t = hc.timings().unwrap();
    // The first probe: one interval on old engines, the start interval on new ones.
    assert_eq!(t.first_probe(false), Duration::from_secs(30));
    assert_eq!(t.first_probe(true), Duration::from_secs(2));
    // start_period + (retries + 1) × (interval + timeout) + margin, at least the floor.
    let floor = Duration::from_secs(30);
    assert_eq!(
        ready_deadline(Some(&t), None, floor),
        Duration::from_secs(160)
    );
    assert_eq!(
        ready_deadline(Some(&t), Some(Duration::from_secs(7)), floor),
        Duration::from_secs(7)
    );
    assert_eq!(ready_deadline(None, None, floor), floor);
    // Docker's defaults for what is left out: 30s, 30s, 3 retries.
    let bare = ok("id: a\nhealthcheck:\n  test: [\"CMD\", \"true\"]\n")
        .healthcheck
        .unwrap()
        .timings()
        .unwrap();
    assert_eq!(bare.worst_case(), Duration::from_secs(240));
    let e = errs("id: a\nhealthcheck:\n  test: [\"CMD\", \"true\"]\n  start_interval: 0s\npool:\n  ready_timeout: soon\n");
    assert!(
        e.iter().any(|(k, _, _)| k == "healthcheck.start_interval"),
        "{e:?}"
    );
    assert!(e.iter().any(|(k, _, _)| k == "pool.ready_timeout"), "{e:?}");
}

#[test]
fn limits_forms() {
    let limits = |v: &str| {
        ok(&format!(
            "id: a\ndeploy:\n  resources:\n    limits:\n      {v}\n"
        ))
        .resources
    };
    assert_eq!(limits("memory: 1073741824").memory_bytes, Some(1 << 30));
    assert_eq!(limits("cpus: 0.5").cpus, Some(0.5));
    assert_eq!(limits("cpus: \"2\"").cpus, Some(2.0));
    assert_eq!(limits("cpus: 3").cpus, Some(3.0));
    assert_eq!(limits("pids: 64").pids_limit, Some(64));
}

#[test]
fn user_forms() {
    let user = |v: &str| ok(&format!("id: a\nuser: {v}\n")).user;
    assert_eq!(
        user("\"1000\""),
        Some(UserSpec {
            uid: 1000,
            gid: None
        })
    );
    assert_eq!(
        user("1000"),
        Some(UserSpec {
            uid: 1000,
            gid: None
        })
    );
    assert_eq!(
        user("\"1000:2000\""),
        Some(UserSpec {
            uid: 1000,
            gid: Some(2000)
        })
    );
}

#[test]
fn commands_ports_caps_and_pool() {
    let text = "id: a\ncommand: sh -c 'echo \"hi there\"' x\\ y\nentrypoint: [\"/init\", 1]\n\
        cap_add: [cap_net_admin, NET_ADMIN]\nports:\n  - \"8080\"\n  - 53/udp\n  - container: 9000\n\
        pool:\n  min_size: 0\n  max_size: 3\n  recycle: reuse\n";
    let w = ok(text);
    assert_eq!(
        w.command,
        Some(
            ["sh", "-c", "echo \"hi there\"", "x y"]
                .map(String::from)
                .to_vec()
        )
    );
    assert_eq!(w.entrypoint, Some(vec!["/init".into(), "1".into()]));
    assert_eq!(w.cap_add, ["NET_ADMIN"]);
    let ports: Vec<(u16, &str)> = w
        .ports
        .iter()
        .map(|p| (p.container, p.protocol.as_str()))
        .collect();
    assert_eq!(ports, [(8080, "tcp"), (53, "udp"), (9000, "tcp")]);
    assert_eq!(
        (w.pool.min_size, w.pool.max_size, w.pool.recycle),
        (Some(0), Some(3), Recycle::Reuse)
    );
    let w = ok("id: a\nports: [\"9000:8080/udp\"]\npool:\n  max_size: 1\n");
    let published = PortSpec {
        container: 8080,
        protocol: "udp".into(),
        host: Some(9000),
    };
    assert_eq!(w.ports, [published]);
    assert!(shell_split("say 'unterminated").is_err());
}

#[test]
fn secrets_are_always_read_only() {
    let w = ok("id: a\nvolumes:\n  secrets:\n    target: /run/keys\n    read_only: false\n");
    assert_eq!(w.volumes.secrets.target, "/run/keys");
    assert!(w.volumes.secrets.read_only);
    ok("id: a\nprivileged: false\n");
}

#[test]
fn sync_forms() {
    let text = "id: a\nsync:\n  sink:\n    bucket: b\n    endpoint: http://minio:9000\n    access_key_id: k\n    \
        secret_access_key: s\n    rclone_flags: [\"--s3-force-path-style\"]\n  mappings:\n  - path: /credentials/\n    \
        direction: upload\n    mode: copy\n    pattern: \"*.json\"\n  policy:\n    interval: 5m\n";
    let sync = ok(text).sync.expect("sync");
    assert_eq!(
        (sync.sink.kind.as_str(), sync.sink.prefix.as_str()),
        ("s3", "tenants/${tenantId}/")
    );
    let m = &sync.mappings[0];
    assert_eq!(
        (m.path.as_str(), m.direction, m.mode),
        ("credentials", SyncDirection::Upload, SyncMode::Copy)
    );
    assert_eq!(sync.policy.periodic, Some(Duration::from_secs(300)));
    let sync = ok("id: a\nsync:\n  sink:\n    bucket: b\n")
        .sync
        .expect("sync");
    assert_eq!(sync.mappings, [mapping("/")]);
}

#[test]
fn interpolation() {
    let image = |v: &str| load(&format!("id: a\nimage: {v}\n")).map(|w| w.image).ok();
    assert_eq!(
        image("${REGISTRY}/app").as_deref(),
        Some("registry.example/app")
    );
    assert_eq!(image("${UNSET:-fallback:1}").as_deref(), Some("fallback:1"));
    assert_eq!(image("${EMPTY:-dflt}").as_deref(), Some("dflt"));
    assert_eq!(
        image("${UNSET:-${REGISTRY}}/x").as_deref(),
        Some("registry.example/x")
    );
    assert_eq!(image("a$$b$c").as_deref(), Some("a$b$c"));
    // `${tenantId}` is for the sync prefix and must survive untouched.
    let text =
        "id: a\nsync:\n  sink:\n    bucket: ${UNSET:-b}\n    prefix: ${REGISTRY}/${tenantId}/\n";
    assert_eq!(
        ok(text).sync.map(|s| s.sink.prefix).as_deref(),
        Some("registry.example/${tenantId}/")
    );
}

#[test]
fn extension_keys_and_merges_are_supported() {
    let text = "x-common: &common\n  read_only: false\nid: a\n<<: *common\n\
        healthcheck:\n  x-note: ignored\n  test: [\"NONE\"]\npool:\n  x-why: fine\n";
    assert!(!ok(text).read_only);
}

#[test]
fn flow_style_errors_name_the_line_of_the_entry() {
    #[rustfmt::skip]
    let cases: &[(&str, &[(&str, usize)])] = &[
        ("id: a\npool: {min_size: 2, max_size: x}\n", &[("pool.max_size", 2)]),
        ("id: a\npool: {\n  min_size: 2, max_size: x\n}\n", &[("pool.max_size", 3)]),
        ("id: a\nports: [8080, 0]\n", &[("ports[1]", 2)]),
        ("id: a\nports: [\n  8080,\n  \"70000\"\n]\n", &[("ports[1]", 4)]),
        ("id: a\nsync: {sink: {type: gcs},\n  mappings: [{path: /}, {mode: x}]}\n",
         &[("sync.sink.type", 2), ("sync.sink.bucket", 2), ("sync.mappings[1].mode", 3), ("sync.mappings[1].path", 3)]),
        ("{id: a,\n healtcheck: {}}\n", &[("healtcheck", 2)]),
    ];
    for (text, want) in cases {
        let got: Vec<(String, Option<usize>)> =
            errs(text).into_iter().map(|(k, l, _)| (k, l)).collect();
        let want: Vec<(String, Option<usize>)> = want
            .iter()
            .map(|(k, l)| (k.to_string(), Some(*l)))
            .collect();
        assert_eq!(got, want, "{text}");
    }
}

#[test]
fn compact_and_indented_list_items_get_their_own_lines() {
    let text = "id: a\nsync:\n  sink: {bucket: b}\n  mappings:\n  - path: /a\n    mode: x\n  -\n    path: /b\n    \
        mode: y\n  policy:\n    on_claim: maybe\n";
    let got: Vec<(String, Option<usize>)> =
        errs(text).into_iter().map(|(k, l, _)| (k, l)).collect();
    let want = [
        ("sync.mappings[0].mode", 6),
        ("sync.mappings[1].mode", 9),
        ("sync.policy.on_claim", 11),
    ];
    assert_eq!(got, want.map(|(k, l)| (k.to_owned(), Some(l))));
}

/// `GET /workloads` serialises durations with humantime; a workload written back
/// from that output must load to the same durations.
#[test]
fn durations_the_daemon_prints_load_back_the_same() {
    let text = "id: a\nhealthcheck:\n  test: [\"CMD\", \"true\"]\n  interval: 1m30s\n  timeout: 1500ms\n  \
        start_period: 2h\n  start_interval: 250ms\npool:\n  idle_timeout: 90061s\n  ready_timeout: 45s\n\
        sync:\n  sink: {bucket: b}\n  policy: {periodic: 10m}\nuser: \"1000\"\n";
    let first = ok(text);
    let json = serde_json::to_value(&first).expect("serialises");
    let printed = |section: &str, key: &str| {
        json[section][key]
            .as_str()
            .unwrap_or_else(|| panic!("{section}.{key} in {json}"))
            .to_owned()
    };
    let hc = |key: &str| printed("healthcheck", key);
    let again = format!(
        "id: a\nhealthcheck:\n  test: [\"CMD\", \"true\"]\n  interval: {}\n  timeout: {}\n  start_period: {}\n  \
         start_interval: {}\npool:\n  idle_timeout: {}\n  ready_timeout: {}\nsync:\n  sink: {{bucket: b}}\n  \
         policy: {{periodic: {}}}\nuser: \"1000\"\n",
        hc("interval"),
        hc("timeout"),
        hc("startPeriod"),
        hc("startInterval"),
        printed("pool", "idleTimeout"),
        printed("pool", "readyTimeout"),
        json["sync"]["policy"]["periodic"].as_str().expect("periodic"),
    );
    // The printed forms have spaces (`1m 30s`), which the compose form never has.
    assert!(
        again.contains("interval: 1m 30s") && again.contains("idle_timeout: 1day 1h 1m 1s"),
        "{again}"
    );
    let second = ok(&again);
    let periodic = |w: &Workload| w.sync.as_ref().and_then(|s| s.policy.periodic);
    assert_eq!(periodic(&first), periodic(&second));
    assert_eq!(periodic(&second), Some(Duration::from_secs(600)));
    let (h1, h2) = (
        first.healthcheck.expect("hc"),
        second.healthcheck.expect("hc"),
    );
    assert_eq!(
        (h1.interval, h1.timeout, h1.start_period, h1.start_interval),
        (h2.interval, h2.timeout, h2.start_period, h2.start_interval)
    );
    assert_eq!(h2.interval, Some(Duration::from_secs(90)));
    assert_eq!(
        (first.pool.idle_timeout, first.pool.ready_timeout),
        (second.pool.idle_timeout, second.pool.ready_timeout)
    );
    assert_eq!(second.pool.idle_timeout, Some(Duration::from_secs(90061)));
}

#[test]
fn an_empty_file_or_a_scalar_is_not_a_workload() {
    for text in ["", "# only a comment\n", "just text\n"] {
        let errors = errs(text);
        assert_eq!(errors.len(), 1, "{text:?}: {errors:?}");
        assert!(
            errors[0].2.contains("expected a mapping") || errors[0].2.contains("invalid YAML"),
            "{text:?}: {errors:?}"
        );
    }
}

/// The parser's own errors are worded for a person (no advice on library options)
/// and carry the line once, in front.
#[test]
fn parser_errors_name_their_line_once_and_no_library_options() {
    for (text, line, needle) in [
        ("id: a\nid: b\n", 2, "duplicate mapping key `id`"),
        ("---\nid: a\n---\nid: b\n", 3, "multiple"),
        ("id: a\nimage: [x\n", 2, "unclosed bracket"),
    ] {
        let errors = errs(text);
        let (key, l, message) = &errors[0];
        assert_eq!((errors.len(), key.as_str()), (1, ""), "{text}: {errors:?}");
        assert!(
            (*l == Some(line) || *l == Some(line + 1)) && message.contains(needle),
            "{text}: {errors:?}"
        );
        assert!(
            !message.contains("Options") && !message.contains("at line"),
            "{message}"
        );
    }
}

#[test]
fn autoscale_takes_a_count_or_a_share_with_defaults_for_its_timings() {
    let w = ok("id: a\npool:\n  min_size: 1\n  autoscale:\n    buffer: 4\n");
    let a = w.pool.autoscale.expect("autoscale");
    assert_eq!(a.buffer, Buffer::Count(4));
    assert_eq!(a.window, AutoscaleSpec::DEFAULT_WINDOW);
    assert_eq!(a.scale_down_delay, AutoscaleSpec::DEFAULT_SCALE_DOWN_DELAY);

    let w = ok(
        "id: a\npool:\n  autoscale:\n    buffer: 20%\n    window: 30s\n    scale_down_delay: 0\n",
    );
    let a = w.pool.autoscale.expect("autoscale");
    assert_eq!(a.buffer, Buffer::Percent(20));
    assert_eq!(a.window, Duration::from_secs(30));
    assert_eq!(a.scale_down_delay, Duration::ZERO);
    assert_eq!(a.buffer.of(0), 0);
    assert_eq!(a.buffer.of(6), 2, "20% of 6 rounds up");
    assert!(ok("id: a\n").pool.autoscale.is_none());
}

#[test]
fn autoscale_errors_name_the_key_and_line() {
    for (text, key, line, needle) in [
        (
            "id: a\npool:\n  autoscale:\n    buffer: lots\n",
            "pool.autoscale.buffer",
            4,
            "count of containers",
        ),
        (
            "id: a\npool:\n  autoscale:\n    buffer: 0%\n",
            "pool.autoscale.buffer",
            4,
            "from 1% to 1000%",
        ),
        (
            "id: a\npool:\n  autoscale:\n    buffer: 2\n    window: 0s\n",
            "pool.autoscale.window",
            5,
            "greater than zero",
        ),
        (
            "id: a\npool:\n  autoscale:\n    buffer: 2\n    scale_down_dela: 1m\n",
            "pool.autoscale.scale_down_dela",
            5,
            "did you mean `scale_down_delay`?",
        ),
        (
            "id: a\npool:\n  autoscale:\n    window: 5s\n",
            "pool.autoscale.buffer",
            3,
            "missing `buffer`",
        ),
        (
            "id: a\npool:\n  autoscale: 4\n",
            "pool.autoscale",
            3,
            "expected a mapping",
        ),
        (
            "id: a\npool:\n  autoscal: {buffer: 1}\n",
            "pool.autoscal",
            3,
            "did you mean `autoscale`?",
        ),
    ] {
        let found = errs(text);
        assert!(
            found
                .iter()
                .any(|(k, l, m)| k == key && *l == Some(line) && m.contains(needle)),
            "{text:?}: expected {key}:{line} {needle:?}, got {found:?}"
        );
    }
}
