//! Loading workload files: directory scan, `${VAR}` interpolation, validation, errors.
//!
//! Owns the path from YAML text to a validated [`Workload`]. Files are parsed into a
//! `serde_yaml::Value` and walked by hand (not with `deny_unknown_fields`) so that every
//! problem of every file is collected in one pass, each with its dotted key path; the
//! path is then resolved to a line number by scanning the source text. Nothing here
//! touches Docker or the pools: the output is plain data (see `spec.rs`).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;
use serde_yaml::Value;

use super::spec::*;

/// One problem in one workload file.
#[derive(Debug, Clone)]
pub struct LoadError {
    pub file: PathBuf,
    /// Dotted key path, e.g. `healthcheck.interval` or `sync.mappings[0].path`.
    pub key: Option<String>,
    /// 1-based line in `file`, when it could be located.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for LoadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(key) = &self.key {
            write!(f, ": {key}")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found while loading; displayed one per line.
#[derive(Debug, Clone)]
pub struct LoadErrors(pub Vec<LoadError>);

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

/// Loads every `*.yaml` / `*.yml` file directly in `dir`, in file-name order.
///
/// A missing directory is not an error (the caller falls back to [`builtin_default`]);
/// dot-files are skipped. All errors of all files are returned together, including
/// workload ids defined by more than one file.
pub fn load_dir(
    dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    default_image: &str,
) -> Result<Vec<Workload>, LoadErrors> {
    let file_error = |file: &Path, message: String| LoadError {
        file: file.to_owned(),
        key: None,
        line: None,
        message,
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            let message = format!("cannot read the workloads directory: {e}");
            return Err(LoadErrors(vec![file_error(dir, message)]));
        }
    };
    let mut errors = Vec::new();
    let mut files = Vec::new();
    for entry in entries {
        match entry {
            Ok(entry) if is_workload_file(&entry.path()) => files.push(entry.path()),
            Ok(_) => {}
            Err(e) => errors.push(file_error(dir, format!("cannot list directory: {e}"))),
        }
    }
    files.sort();

    let mut workloads = Vec::new();
    let mut seen: HashMap<WorkloadId, PathBuf> = HashMap::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(e) => {
                errors.push(file_error(&file, format!("cannot read file: {e}")));
                continue;
            }
        };
        match load_str(&file, &text, env, default_image) {
            Ok(workload) => match seen.get(&workload.id) {
                Some(first) => errors.push(LoadError {
                    line: locate(&text, &KeyPath::root().key("id"), false),
                    key: Some("id".into()),
                    message: format!(
                        "duplicate workload id `{}`: already defined in {}",
                        workload.id,
                        first.display()
                    ),
                    file,
                }),
                None => {
                    seen.insert(workload.id.clone(), file);
                    workloads.push(workload);
                }
            },
            Err(LoadErrors(mut file_errors)) => errors.append(&mut file_errors),
        }
    }
    if errors.is_empty() {
        Ok(workloads)
    } else {
        Err(LoadErrors(errors))
    }
}

fn is_workload_file(path: &Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    !name.starts_with('.') && matches!(ext, "yaml" | "yml") && path.is_file()
}

/// Loads one workload from `text`; `file` is only used in errors and `Workload::source`.
pub fn load_str(
    file: &Path,
    text: &str,
    env: &dyn Fn(&str) -> Option<String>,
    default_image: &str,
) -> Result<Workload, LoadErrors> {
    let mut root: Value = match serde_yaml::from_str(text) {
        Ok(root) => root,
        Err(e) => {
            return Err(LoadErrors(vec![LoadError {
                file: file.to_owned(),
                key: None,
                // libyaml reports an unexpected end of input one line past the end.
                line: e
                    .location()
                    .map(|l| l.line().min(text.lines().count().max(1))),
                message: format!("invalid YAML: {e}"),
            }]));
        }
    };
    let mut loader = Loader {
        env,
        file,
        errors: Vec::new(),
    };
    if let Err(e) = root.apply_merge() {
        loader.err(&KeyPath::root(), format!("invalid YAML merge (`<<`): {e}"));
    }
    let workload = loader.workload(&root, default_image);
    if loader.errors.is_empty() {
        if let Some(workload) = workload {
            return Ok(workload);
        }
    }
    let mut errors: Vec<LoadError> = loader
        .errors
        .into_iter()
        .map(|p| LoadError {
            file: file.to_owned(),
            key: (!p.path.0.is_empty()).then(|| p.path.to_string()),
            line: locate(text, &p.path, p.missing),
            message: p.message,
        })
        .collect();
    errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
    Err(LoadErrors(errors))
}

/// The workload used when the workloads directory holds no files: id `default`, the
/// given image with its own command, no healthcheck, defaults everywhere.
pub fn builtin_default(image: &str) -> Workload {
    let id = WorkloadId::parse("default").expect("\"default\" is a valid workload id");
    base_workload(id, image)
}

fn base_workload(id: WorkloadId, image: &str) -> Workload {
    let mount = |target: &str, read_only| VolumeMount {
        target: target.into(),
        read_only,
    };
    Workload {
        name: id.to_string(),
        id,
        image: image.into(),
        command: None,
        entrypoint: None,
        environment: BTreeMap::new(),
        volumes: Volumes {
            state: mount("/state", false),
            secrets: mount("/secrets", true),
            comm: mount("/comm", false),
        },
        healthcheck: None,
        ports: Vec::new(),
        resources: Resources::default(),
        read_only: true,
        user: None,
        network_mode: None,
        labels: BTreeMap::new(),
        cap_add: Vec::new(),
        pool: PoolSpec {
            min_size: None,
            max_size: None,
            idle_timeout: None,
            recycle: Recycle::Destroy,
            ready_timeout: None,
        },
        sync: None,
        source: None,
    }
}

// ---------------------------------------------------------------------------------
// Key paths and line location

#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// Where a value sits in the document, e.g. `sync.mappings[0].path`.
#[derive(Debug, Clone, Default, PartialEq)]
struct KeyPath(Vec<Seg>);

impl KeyPath {
    fn root() -> Self {
        Self::default()
    }
    fn key(&self, key: &str) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Key(key.into()));
        Self(segs)
    }
    fn index(&self, i: usize) -> Self {
        let mut segs = self.0.clone();
        segs.push(Seg::Index(i));
        Self(segs)
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, seg) in self.0.iter().enumerate() {
            match seg {
                Seg::Key(k) if i == 0 => write!(f, "{k}")?,
                Seg::Key(k) => write!(f, ".{k}")?,
                Seg::Index(n) => write!(f, "[{n}]")?,
            }
        }
        Ok(())
    }
}

/// A significant (not blank, not comment) source line, split around a list dash.
struct SourceLine<'a> {
    indent: usize,
    dash: bool,
    /// Column of the text after `- ` (equal to `indent` when there is no dash).
    content_col: usize,
    content: &'a str,
}

fn scan(text: &str) -> Vec<Option<SourceLine<'_>>> {
    text.lines()
        .map(|line| {
            let trimmed = line.trim_start_matches(' ').trim_end();
            let indent = line.len() - line.trim_start_matches(' ').len();
            if trimmed.is_empty() || trimmed.starts_with('#') || trimmed == "---" {
                return None;
            }
            let dash = trimmed == "-" || trimmed.starts_with("- ");
            let (content_col, content) = if dash {
                let rest = &trimmed[1..];
                let content = rest.trim_start();
                (indent + 1 + rest.len() - content.len(), content)
            } else {
                (indent, trimmed)
            };
            Some(SourceLine {
                indent,
                dash,
                content_col,
                content,
            })
        })
        .collect()
}

/// 1-based line of `path` in block-style YAML, or of its deepest ancestor that can be
/// found. With `missing`, the last segment is absent from the file by definition, so
/// the parent's line is reported (the first content line for top-level keys).
fn locate(text: &str, path: &KeyPath, missing: bool) -> Option<usize> {
    let lines = scan(text);
    let segs = if missing {
        &path.0[..path.0.len().saturating_sub(1)]
    } else {
        &path.0[..]
    };
    let mut found = None;
    let mut parent_col: isize = -1;
    let mut start = 0;
    let mut in_item = false;
    for seg in segs {
        let hit = match seg {
            Seg::Key(key) => find_key(&lines, start, parent_col, in_item, key),
            Seg::Index(n) => find_item(&lines, start, parent_col, *n),
        };
        let Some((line, col)) = hit else { break };
        found = Some(line);
        parent_col = col as isize;
        in_item = matches!(seg, Seg::Index(_));
        start = if in_item { line } else { line + 1 };
    }
    match found {
        Some(line) => Some(line + 1),
        None if segs.is_empty() => lines.iter().position(Option::is_some).map(|l| l + 1),
        None => None,
    }
}

fn find_key(
    lines: &[Option<SourceLine>],
    start: usize,
    parent_col: isize,
    in_item: bool,
    key: &str,
) -> Option<(usize, usize)> {
    let mut child_col = None;
    for (i, line) in lines.iter().enumerate().skip(start) {
        let Some(line) = line else { continue };
        let col = if in_item && i == start {
            if line.content.is_empty() {
                continue;
            }
            line.content_col
        } else if line.indent as isize <= parent_col {
            break;
        } else if line.dash {
            continue;
        } else {
            line.indent
        };
        if *child_col.get_or_insert(col) == col && is_key_line(line.content, key) {
            return Some((i, col));
        }
    }
    None
}

fn find_item(
    lines: &[Option<SourceLine>],
    start: usize,
    parent_col: isize,
    n: usize,
) -> Option<(usize, usize)> {
    let mut item_col = None;
    let mut count = 0;
    for (i, line) in lines.iter().enumerate().skip(start) {
        let Some(line) = line else { continue };
        let col = *item_col.get_or_insert(line.indent);
        if (line.indent as isize) < parent_col
            || line.indent < col
            || !line.dash && line.indent == col
        {
            break;
        }
        if line.dash && line.indent == col {
            if count == n {
                return Some((i, col));
            }
            count += 1;
        }
    }
    None
}

fn is_key_line(content: &str, key: &str) -> bool {
    [key.to_owned(), format!("\"{key}\""), format!("'{key}'")]
        .iter()
        .any(|k| {
            content
                .strip_prefix(k.as_str())
                .and_then(|rest| rest.strip_prefix(':'))
                .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
        })
}

// ---------------------------------------------------------------------------------
// The walk: Value tree → Workload, collecting errors

struct Pending {
    path: KeyPath,
    message: String,
    /// The key itself is absent; locate its parent instead.
    missing: bool,
}

struct Loader<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    file: &'a Path,
    errors: Vec<Pending>,
}

const TOP_KEYS: &str = "id name image command entrypoint environment volumes healthcheck \
    ports deploy read_only user network_mode labels cap_add pool sync";

/// Top-level compose keys that are refused, and why (mostly: they would weaken isolation).
const REFUSED: &[(&str, &str)] = &[
    ("devices", "host devices give the container direct access to host hardware"),
    ("security_opt", "it can switch off the seccomp, AppArmor or SELinux confinement that keeps containers apart from the host"),
    ("volumes_from", "it would mount another container's volumes, i.e. another tenant's data"),
    ("cap_drop", "dropping capabilities is not supported yet; containers get Docker's default set plus cap_add"),
];

const VOLUME_REFUSED: &str = "only the state, secrets and comm volumes exist; extra volumes \
    and host bind mounts would let tenants reach host files or share data with each other";

impl Loader<'_> {
    fn err(&mut self, at: &KeyPath, message: impl Into<String>) {
        let (path, message) = (at.clone(), message.into());
        self.errors.push(Pending {
            path,
            message,
            missing: false,
        });
    }

    /// Records `message` at `parent.key` when `v` (the parent mapping) lacks `key`.
    fn require(&mut self, parent: &KeyPath, v: &Value, key: &str, message: &str) {
        if v.is_mapping() && v.get(key).is_none_or(Value::is_null) {
            let (path, message) = (parent.key(key), message.into());
            self.errors.push(Pending {
                path,
                message,
                missing: true,
            });
        }
    }

    fn unknown(&mut self, at: &KeyPath, key: &str, known: &str) {
        self.err(at, format!("unknown key `{key}`{}", suggest(key, known)));
    }

    /// Entries of a schema mapping. `x-` keys are extension fields and skipped; a key
    /// with no value (`image:`) counts as absent.
    fn entries<'v>(&mut self, at: &KeyPath, v: &'v Value) -> Vec<(String, KeyPath, &'v Value)> {
        let Some(map) = v.as_mapping() else {
            self.err(at, format!("expected a mapping, found {}", kind(v)));
            return Vec::new();
        };
        let mut out = Vec::new();
        for (k, v) in map {
            match k.as_str() {
                Some(key) if key.starts_with("x-") || v.is_null() => {}
                Some(key) => out.push((key.to_owned(), at.key(key), v)),
                None => self.err(at, format!("keys must be strings, found {}", kind(k))),
            }
        }
        out
    }

    /// A scalar as a string; strings get `${VAR}` interpolation.
    fn text(&mut self, at: &KeyPath, v: &Value) -> Option<String> {
        let result = match v {
            Value::String(s) => interpolate(s, self.env),
            Value::Number(n) => Ok(n.to_string()),
            Value::Bool(b) => Ok(b.to_string()),
            _ => Err(format!("expected a single value, found {}", kind(v))),
        };
        result.map_err(|e| self.err(at, e)).ok()
    }

    /// A scalar run through `parse`, whose error message is recorded at `at`.
    fn scalar<T>(
        &mut self,
        at: &KeyPath,
        v: &Value,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.text(at, v)?;
        parse(&text).map_err(|e| self.err(at, e)).ok()
    }

    fn list<'v>(&mut self, at: &KeyPath, v: &'v Value) -> &'v [Value] {
        if let Some(items) = v.as_sequence() {
            return items;
        }
        self.err(at, format!("expected a list, found {}", kind(v)));
        &[]
    }

    fn string_list(&mut self, at: &KeyPath, v: &Value) -> Vec<String> {
        let items = self.list(at, v).iter().enumerate();
        items
            .filter_map(|(i, item)| self.text(&at.index(i), item))
            .collect()
    }

    /// `command` / `entrypoint`: a list, or a string split like a shell would.
    fn command(&mut self, at: &KeyPath, v: &Value) -> Option<Vec<String>> {
        match v.is_sequence() {
            true => Some(self.string_list(at, v)),
            false => self.scalar(at, v, shell_split),
        }
    }

    /// `environment` / `labels`: a mapping, or compose's `KEY=VAL` list. Keys here are
    /// data, not schema, so `x-` keys are kept.
    fn string_map(&mut self, at: &KeyPath, v: &Value, labels: bool) -> BTreeMap<String, String> {
        let no_value = |key: &str, sep: &str| {
            format!("`{key}` has no value: write `{key}{sep}value` (or `{key}{sep}${{{key}}}` to pass the daemon's variable through)")
        };
        let mut pairs = Vec::new();
        if let Some(map) = v.as_mapping() {
            for (k, val) in map {
                let key = match k {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => {
                        self.err(at, format!("keys must be strings, found {}", kind(k)));
                        continue;
                    }
                };
                let here = at.key(&key);
                let value = match val {
                    Value::Null if labels => Some(String::new()),
                    Value::Null => {
                        self.err(&here, no_value(&key, ": "));
                        None
                    }
                    _ => self.text(&here, val),
                };
                pairs.push((here, key, value));
            }
        } else {
            for (i, item) in self.list(at, v).iter().enumerate() {
                let here = at.index(i);
                let Some(entry) = self.text(&here, item) else {
                    continue;
                };
                match entry.split_once('=') {
                    Some((k, val)) => pairs.push((here, k.to_owned(), Some(val.to_owned()))),
                    None if labels => pairs.push((here, entry, Some(String::new()))),
                    None => self.err(&here, no_value(&entry, "=")),
                }
            }
        }
        let mut out = BTreeMap::new();
        for (here, key, value) in pairs {
            if key.is_empty() || key.contains('=') || key.contains(char::is_whitespace) {
                self.err(
                    &here,
                    format!("invalid name {key:?}: must be non-empty, without `=` or spaces"),
                );
            } else if labels && key.to_ascii_lowercase().starts_with("boilerhouse.") {
                self.err(&here, format!("label `{key}` is refused: the `boilerhouse.` prefix is reserved for the labels boilerhouse uses to find and recover its own containers"));
            } else if let Some(value) = value {
                out.insert(key, value);
            }
        }
        out
    }

    fn workload(&mut self, root: &Value, default_image: &str) -> Option<Workload> {
        let top = KeyPath::root();
        if !root.is_mapping() {
            let found = kind(root);
            self.err(
                &top,
                format!("expected a mapping of workload keys (id, image, ...), found {found}"),
            );
            return None;
        }
        let mut w = base_workload(WorkloadId::parse("default").ok()?, default_image);
        let (mut id, mut name) = (None, None);
        for (key, at, v) in self.entries(&top, root) {
            match key.as_str() {
                "id" => id = self.scalar(&at, v, WorkloadId::parse),
                "name" => name = self.scalar(&at, v, non_empty),
                "image" => w.image = self.scalar(&at, v, non_empty).unwrap_or_default(),
                "command" => w.command = self.command(&at, v),
                "entrypoint" => w.entrypoint = self.command(&at, v),
                "environment" => w.environment = self.string_map(&at, v, false),
                "volumes" => w.volumes = self.volumes(&at, v, w.volumes.clone()),
                "healthcheck" => w.healthcheck = self.healthcheck(&at, v),
                "ports" => w.ports = self.ports(&at, v),
                "deploy" => w.resources = self.deploy(&at, v),
                "read_only" => w.read_only = self.scalar(&at, v, parse_bool).unwrap_or(true),
                "user" => w.user = self.scalar(&at, v, parse_user),
                "network_mode" => w.network_mode = self.scalar(&at, v, parse_network_mode),
                "labels" => w.labels = self.string_map(&at, v, true),
                "cap_add" => w.cap_add = self.cap_add(&at, v),
                "pool" => w.pool = self.pool(&at, v),
                "sync" => w.sync = self.sync(&at, v),
                "privileged" => {
                    if self.scalar(&at, v, parse_bool) == Some(true) {
                        self.err(
                            &at,
                            "privileged containers can take over the host; not allowed",
                        );
                    }
                }
                "pid" | "ipc" | "userns_mode" => {
                    if let Some(mode) = self.text(&at, v) {
                        self.err(&at, refuse_namespace(&key, &mode));
                    }
                }
                _ => match REFUSED.iter().find(|(k, _)| *k == key) {
                    Some((_, why)) => self.err(&at, format!("`{key}` is refused: {why}")),
                    None => self.unknown(&at, &key, TOP_KEYS),
                },
            }
        }
        self.require(
            &top,
            root,
            "id",
            "missing required key `id` (the workload's unique id, e.g. `id: my-worker`)",
        );
        let host_port = w.ports.iter().position(|p| p.host.is_some());
        if let (Some(i), false) = (host_port, w.pool.max_size == Some(1)) {
            self.err(&top.key("ports").index(i), "a fixed host port can only be published by one container: set `pool.max_size: 1`, or leave out `host` so Docker picks a free port");
        }
        let restores = w.sync.as_ref().is_some_and(|sync| {
            sync.mappings
                .iter()
                .any(|m| m.direction != SyncDirection::Upload)
        });
        if restores && w.user.is_none_or(|u| u.uid == 0) {
            tracing::warn!(
                file = %self.file.display(),
                "this workload restores state but has no non-root `user`: rclone then runs as the \
                 daemon's user (root in production), and a symlink a tenant plants under /state \
                 could redirect a manual download onto host files; set `user` for untrusted code"
            );
        }
        let id = id?;
        w.name = name.unwrap_or_else(|| id.to_string());
        w.id = id;
        w.source = Some(self.file.to_owned());
        Some(w)
    }

    fn volumes(&mut self, at: &KeyPath, v: &Value, mut vols: Volumes) -> Volumes {
        if let Some(items) = v.as_sequence() {
            for (i, item) in items.iter().enumerate() {
                let spec = item.as_str().unwrap_or("");
                let what = match spec.split_once(':') {
                    Some((src, _)) if src.starts_with(['/', '.', '~']) => {
                        format!("host bind mount `{spec}`")
                    }
                    _ => "this volume".to_owned(),
                };
                self.err(&at.index(i), format!("{what} is refused: {VOLUME_REFUSED}. Choose where those three are mounted with the mapping form, e.g. `volumes: {{state: {{target: /data}}}}`"));
            }
            return vols;
        }
        for (key, at, v) in self.entries(at, v) {
            match key.as_str() {
                "state" => self.mount(&at, v, &mut vols.state),
                "secrets" => self.mount(&at, v, &mut vols.secrets),
                "comm" => self.mount(&at, v, &mut vols.comm),
                _ => {
                    let hint = suggest(&key, "state secrets comm");
                    self.err(
                        &at,
                        format!("volume `{key}`{hint} is refused: {VOLUME_REFUSED}"),
                    );
                }
            }
        }
        if !vols.secrets.read_only {
            tracing::warn!(file = %self.file.display(), "volumes.secrets.read_only: false is ignored: secrets are always mounted read-only");
            vols.secrets.read_only = true;
        }
        let mounts = [
            ("state", &vols.state),
            ("secrets", &vols.secrets),
            ("comm", &vols.comm),
        ];
        for (i, (name, mount)) in mounts.iter().enumerate() {
            if let Some((other, _)) = mounts[..i].iter().find(|(_, m)| m.target == mount.target) {
                let message = format!(
                    "`{}` is already the target of volumes.{other}: each volume needs its own path",
                    mount.target
                );
                self.err(&at.key(name).key("target"), message);
            }
        }
        vols
    }

    fn mount(&mut self, at: &KeyPath, v: &Value, mount: &mut VolumeMount) {
        for (key, at, v) in self.entries(at, v) {
            match key.as_str() {
                "target" => mount.target = self.scalar(&at, v, check_target).unwrap_or_default(),
                "read_only" => mount.read_only = self.scalar(&at, v, parse_bool).unwrap_or(false),
                "source" | "type" => self.err(&at, format!("`{key}` cannot be set: boilerhouse chooses the host directory (one per container); only target and read_only can be set")),
                _ => self.unknown(&at, &key, "target read_only"),
            }
        }
    }

    fn healthcheck(&mut self, at: &KeyPath, v: &Value) -> Option<Healthcheck> {
        let (mut test, mut disable) = (None, false);
        let mut hc = Healthcheck {
            test: HealthTest::None,
            interval: None,
            timeout: None,
            retries: None,
            start_period: None,
            start_interval: None,
        };
        for (key, at, v) in self.entries(at, v) {
            match key.as_str() {
                "test" => test = self.health_test(&at, v),
                "interval" => hc.interval = self.scalar(&at, v, parse_duration),
                "timeout" => hc.timeout = self.scalar(&at, v, parse_duration),
                "start_period" => hc.start_period = self.scalar(&at, v, parse_duration),
                "start_interval" => {
                    hc.start_interval = self.scalar(&at, v, |s| positive(parse_duration(s)?))
                }
                "retries" => hc.retries = self.scalar(&at, v, parse_number),
                "disable" => disable = self.scalar(&at, v, parse_bool).unwrap_or(false),
                _ => {
                    let known = "test interval timeout retries start_period start_interval disable";
                    self.unknown(&at, &key, known);
                }
            }
        }
        match (test, disable) {
            (Some(HealthTest::None), _) | (None, true) => {}
            (Some(_), true) => self.err(&at.key("disable"), "`disable: true` conflicts with a healthcheck test: remove one of them"),
            (Some(t), false) => hc.test = t,
            (None, false) => self.require(at, v, "test", "missing `test`: give a command such as [\"CMD\", \"curl\", \"-f\", \"http://localhost:8080/health\"], or `disable: true`"),
        }
        self.warn_slow_warm_up(&hc);
        Some(hc)
    }

    /// Docker before 25.0 (API 1.44) runs the first probe one `interval` after start
    /// and ignores `start_interval`: with a long interval a pool warms slowly, and
    /// the operator should hear that at load time rather than wonder at an empty pool.
    fn warn_slow_warm_up(&self, hc: &Healthcheck) {
        let Some(t) = hc.timings() else { return };
        if t.interval < Duration::from_secs(5) {
            return;
        }
        let h = |d: Duration| humantime::format_duration(d).to_string();
        let advice = match t.start_interval {
            Some(si) => format!(
                "start_interval {} is honoured only by Docker 25.0+ (API 1.44); older engines ignore it",
                h(si)
            ),
            None => "set healthcheck.start_interval (Docker 25.0+) or a shorter interval to warm faster".into(),
        };
        tracing::warn!(
            file = %self.file.display(),
            "healthcheck interval {}: on Docker engines before 25.0 (API 1.44) the first probe runs one interval after \
             a container starts, so each new container takes at least {} to become ready (it is given up after {} \
             unless pool.ready_timeout says otherwise); {advice}",
            h(t.interval),
            h(t.interval),
            h(crate::workload::ready_deadline(Some(&t), None, Duration::ZERO)),
        );
    }

    fn health_test(&mut self, at: &KeyPath, v: &Value) -> Option<HealthTest> {
        if !v.is_sequence() {
            return self.scalar(at, v, non_empty).map(HealthTest::Shell);
        }
        let items = self.string_list(at, v);
        match items
            .split_first()
            .map(|(first, rest)| (first.as_str(), rest))
        {
            Some(("NONE", [])) => Some(HealthTest::None),
            Some(("CMD", rest @ [_, ..])) => Some(HealthTest::Cmd(rest.to_vec())),
            Some(("CMD-SHELL", [shell])) => Some(HealthTest::Shell(shell.clone())),
            _ => {
                self.err(at, "test must be [\"CMD\", program, args...], [\"CMD-SHELL\", \"command\"], [\"NONE\"] or a plain string (run by the shell)");
                None
            }
        }
    }

    fn ports(&mut self, at: &KeyPath, v: &Value) -> Vec<PortSpec> {
        let mut out = Vec::new();
        for (i, item) in self.list(at, v).iter().enumerate() {
            let here = at.index(i);
            if !item.is_mapping() {
                out.extend(self.scalar(&here, item, parse_port));
                continue;
            }
            let mut port = PortSpec {
                container: 0,
                protocol: "tcp".into(),
                host: None,
            };
            for (key, at, v) in self.entries(&here, item) {
                match key.as_str() {
                    "container" => {
                        port.container = self.scalar(&at, v, parse_port_number).unwrap_or(0)
                    }
                    "host" => port.host = self.scalar(&at, v, parse_port_number),
                    "protocol" => {
                        port.protocol = self.scalar(&at, v, parse_protocol).unwrap_or_default()
                    }
                    _ => self.unknown(&at, &key, "container protocol host"),
                }
            }
            self.require(
                &here,
                item,
                "container",
                "missing `container`: the port the workload listens on inside the container",
            );
            out.push(port);
        }
        out
    }

    /// `deploy.resources.limits`: the only part of compose's `deploy` that applies.
    fn deploy(&mut self, at: &KeyPath, v: &Value) -> Resources {
        let mut res = Resources::default();
        let Some((at, v)) = self.single(at, v, "resources") else {
            return res;
        };
        let Some((at, v)) = self.single(&at, v, "limits") else {
            return res;
        };
        for (key, at, v) in self.entries(&at, v) {
            match key.as_str() {
                "cpus" => res.cpus = self.scalar(&at, v, parse_cpus),
                "memory" => res.memory_bytes = self.scalar(&at, v, parse_memory),
                "pids" => res.pids_limit = self.scalar(&at, v, parse_pids),
                _ => self.unknown(&at, &key, "cpus memory pids"),
            }
        }
        res
    }

    /// A mapping whose only allowed key is `name`; returns that key's value.
    fn single<'v>(
        &mut self,
        at: &KeyPath,
        v: &'v Value,
        name: &str,
    ) -> Option<(KeyPath, &'v Value)> {
        let mut found = None;
        for (key, at, v) in self.entries(at, v) {
            match key == name {
                true => found = Some((at, v)),
                false => self.unknown(&at, &key, name),
            }
        }
        found
    }

    fn cap_add(&mut self, at: &KeyPath, v: &Value) -> Vec<String> {
        let mut caps: Vec<String> = Vec::new();
        for (i, item) in self.list(at, v).iter().enumerate() {
            let cap = self.scalar(&at.index(i), item, parse_capability);
            caps.extend(cap.filter(|c| !caps.contains(c)));
        }
        caps
    }

    fn pool(&mut self, at: &KeyPath, v: &Value) -> PoolSpec {
        let mut pool = PoolSpec {
            min_size: None,
            max_size: None,
            idle_timeout: None,
            recycle: Recycle::Destroy,
            ready_timeout: None,
        };
        for (key, at, v) in self.entries(at, v) {
            match key.as_str() {
                "min_size" => pool.min_size = self.scalar(&at, v, parse_number),
                "max_size" => pool.max_size = self.scalar(&at, v, |s| positive(parse_number(s)?)),
                "idle_timeout" => {
                    pool.idle_timeout = self.scalar(&at, v, |s| positive(parse_duration(s)?))
                }
                "recycle" => {
                    pool.recycle = self
                        .scalar(&at, v, |s| one_of(s, RECYCLE))
                        .unwrap_or_default()
                }
                "ready_timeout" => {
                    pool.ready_timeout = self.scalar(&at, v, |s| positive(parse_duration(s)?))
                }
                _ => self.unknown(
                    &at,
                    &key,
                    "min_size max_size idle_timeout recycle ready_timeout",
                ),
            }
        }
        if let (Some(min), Some(max)) = (pool.min_size, pool.max_size) {
            if min > max {
                self.err(
                    &at.key("min_size"),
                    format!("min_size ({min}) is larger than max_size ({max})"),
                );
            }
        }
        pool
    }

    fn sync(&mut self, at: &KeyPath, v: &Value) -> Option<SyncSpec> {
        let (mut sink, mut policy) = (None, SyncPolicy::default());
        let mut mappings = vec![mapping("/")];
        for (key, at, v) in self.entries(at, v) {
            match key.as_str() {
                "sink" => sink = Some(self.sink(&at, v)),
                "mappings" => mappings = self.mappings(&at, v),
                "policy" => policy = self.policy(&at, v),
                _ => self.unknown(&at, &key, "sink mappings policy"),
            }
        }
        self.require(
            at,
            v,
            "sink",
            "missing `sink`: where tenant state is stored (type, bucket, ...)",
        );
        let mirrors_unrestored = mappings
            .iter()
            .any(|m| m.mode == SyncMode::Sync && m.direction == SyncDirection::Bidirectional);
        if policy.on_release && !policy.on_claim && mirrors_unrestored {
            tracing::warn!(
                file = %self.file.display(),
                "sync.policy.on_claim is false but a bidirectional `mode: sync` mapping uploads on release: \
                 a tenant's remote state is replaced by whatever the container holds, which starts empty \
                 unless the tenant downloads it with a manual sync first"
            );
        }
        Some(SyncSpec {
            sink: sink?,
            mappings,
            policy,
        })
    }

    fn sink(&mut self, at: &KeyPath, v: &Value) -> SinkSpec {
        let mut sink = SinkSpec {
            kind: "s3".into(),
            bucket: String::new(),
            region: None,
            endpoint: None,
            access_key_id: None,
            secret_access_key: None,
            prefix: "tenants/${tenantId}/".into(),
            rclone_flags: Vec::new(),
        };
        for (key, at, v) in self.entries(at, v) {
            match key.as_str() {
                "type" => sink.kind = self.scalar(&at, v, parse_sink_type).unwrap_or_default(),
                "bucket" => sink.bucket = self.scalar(&at, v, non_empty).unwrap_or_default(),
                "region" => sink.region = self.scalar(&at, v, non_empty),
                "endpoint" => sink.endpoint = self.scalar(&at, v, parse_http_url),
                "access_key_id" => sink.access_key_id = self.scalar(&at, v, non_empty),
                "secret_access_key" => sink.secret_access_key = self.scalar(&at, v, non_empty),
                "prefix" => sink.prefix = self.scalar(&at, v, parse_prefix).unwrap_or_default(),
                "rclone_flags" => {
                    for (i, item) in self.list(&at, v).iter().enumerate() {
                        sink.rclone_flags.extend(self.scalar(
                            &at.index(i),
                            item,
                            parse_rclone_flag,
                        ));
                    }
                }
                _ => {
                    let known = "type bucket region endpoint access_key_id secret_access_key prefix rclone_flags";
                    self.unknown(&at, &key, known);
                }
            }
        }
        self.require(
            at,
            v,
            "bucket",
            "missing `bucket`: the bucket tenant state is stored in",
        );
        let pair = match (&sink.access_key_id, &sink.secret_access_key) {
            (Some(_), None) => Some(("access_key_id", "secret_access_key")),
            (None, Some(_)) => Some(("secret_access_key", "access_key_id")),
            _ => None,
        };
        if let Some((set, unset)) = pair {
            self.err(&at.key(set), format!("{set} is set but {unset} is not: give both, or neither to use the daemon's default credentials"));
        }
        sink
    }

    fn mappings(&mut self, at: &KeyPath, v: &Value) -> Vec<SyncMapping> {
        let items = self.list(at, v);
        if items.is_empty() && v.is_sequence() {
            self.err(at, "mappings is empty: leave it out to sync the whole state volume, or list what to sync");
        }
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let here = at.index(i);
            let mut m = mapping("/");
            for (key, at, v) in self.entries(&here, item) {
                match key.as_str() {
                    "path" => m.path = self.scalar(&at, v, normalize_sync_path).unwrap_or_default(),
                    "direction" => {
                        m.direction = self
                            .scalar(&at, v, |s| one_of(s, DIRECTIONS))
                            .unwrap_or(m.direction)
                    }
                    "mode" => m.mode = self.scalar(&at, v, |s| one_of(s, MODES)).unwrap_or(m.mode),
                    "pattern" => m.pattern = self.scalar(&at, v, non_empty),
                    _ => self.unknown(&at, &key, "path direction mode pattern"),
                }
            }
            self.require(
                &here,
                item,
                "path",
                "missing `path`: relative to the state volume, `/` for all of it",
            );
            out.push(m);
        }
        out
    }

    fn policy(&mut self, at: &KeyPath, v: &Value) -> SyncPolicy {
        let mut policy = SyncPolicy::default();
        for (key, at, v) in self.entries(at, v) {
            match key.as_str() {
                "on_claim" => policy.on_claim = self.scalar(&at, v, parse_bool).unwrap_or(true),
                "on_release" => policy.on_release = self.scalar(&at, v, parse_bool).unwrap_or(true),
                "manual" => policy.manual = self.scalar(&at, v, parse_bool).unwrap_or(true),
                "periodic" | "interval" => {
                    policy.periodic = self.scalar(&at, v, |s| positive(parse_duration(s)?));
                }
                _ => self.unknown(&at, &key, "on_claim on_release manual periodic"),
            }
        }
        if v.get("periodic").is_some() && v.get("interval").is_some() {
            self.err(
                &at.key("interval"),
                "`interval` is another name for `periodic`: keep one",
            );
        }
        policy
    }
}

fn mapping(path: &str) -> SyncMapping {
    SyncMapping {
        path: path.into(),
        direction: SyncDirection::Bidirectional,
        mode: SyncMode::Sync,
        pattern: None,
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value (YAML tags are not supported)",
    }
}

// ---------------------------------------------------------------------------------
// Scalar parsers: text in, value or a message a person can act on out

const RECYCLE: &[(&str, Recycle)] = &[
    ("destroy", Recycle::Destroy),
    ("restart", Recycle::Restart),
    ("reuse", Recycle::Reuse),
];
const DIRECTIONS: &[(&str, SyncDirection)] = &[
    ("upload", SyncDirection::Upload),
    ("download", SyncDirection::Download),
    ("bidirectional", SyncDirection::Bidirectional),
];
const MODES: &[(&str, SyncMode)] = &[("sync", SyncMode::Sync), ("copy", SyncMode::Copy)];

fn one_of<T: Copy>(s: &str, options: &[(&str, T)]) -> Result<T, String> {
    if let Some((_, value)) = options.iter().find(|(name, _)| *name == s) {
        return Ok(*value);
    }
    let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
    Err(format!(
        "unknown value {s:?}: use one of {}",
        names.join(", ")
    ))
}

fn non_empty(s: &str) -> Result<String, String> {
    match s.trim().is_empty() {
        true => Err("must not be empty".into()),
        false => Ok(s.to_owned()),
    }
}

fn parse_bool(s: &str) -> Result<bool, String> {
    s.parse()
        .map_err(|_| format!("expected true or false, found {s:?}"))
}

fn parse_number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("expected a non-negative integer, found {s:?}"))
}

/// Rejects zero, for settings where zero would be a surprising way to say "off".
fn positive<T: PartialEq + Default>(value: T) -> Result<T, String> {
    match value == T::default() {
        true => Err("must be greater than zero (leave the key out for the default)".into()),
        false => Ok(value),
    }
}

fn parse_pids(s: &str) -> Result<i64, String> {
    match s.trim().parse::<i64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("invalid pids {s:?}: use a positive integer")),
    }
}

fn parse_cpus(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(n),
        _ => Err(format!(
            "invalid cpus {s:?}: use a positive number of cores such as 2 or 0.5"
        )),
    }
}

fn parse_user(s: &str) -> Result<UserSpec, String> {
    let (uid, gid) = s.split_once(':').map_or((s, None), |(u, g)| (u, Some(g)));
    match (uid.parse(), gid.map(str::parse).transpose()) {
        (Ok(uid), Ok(gid)) => Ok(UserSpec { uid, gid }),
        _ => Err(format!("user {s:?} must be numeric, a uid like \"1000\" or uid:gid like \"1000:1000\": tenant directories are chowned to it, so user names cannot be used")),
    }
}

fn parse_network_mode(mode: &str) -> Result<String, String> {
    if mode == "host" {
        Err("`host` is refused: the container would share the host's network stack, bypassing the network isolation between tenants and the host".into())
    } else if mode.starts_with("container:") || mode.starts_with("service:") {
        Err("joining another container's network is refused: a tenant could reach another tenant's services".into())
    } else {
        non_empty(mode)
    }
}

fn refuse_namespace(key: &str, mode: &str) -> String {
    match (key, mode) {
        ("pid", "host") => "`pid: host` is refused: the container would see and could signal every process on the host".into(),
        ("ipc", "host") => "`ipc: host` is refused: the container would share the host's IPC namespace and shared memory".into(),
        ("userns_mode", "host") => "`userns_mode: host` is refused: root in the container would be root on the host".into(),
        _ => format!("`{key}` is not supported: every container gets its own private namespace"),
    }
}

fn parse_capability(raw: &str) -> Result<String, String> {
    let upper = raw.trim().to_ascii_uppercase();
    let cap = upper.strip_prefix("CAP_").unwrap_or(&upper);
    if cap == "ALL" {
        Err("`ALL` is refused: it grants every kernel capability (SYS_ADMIN included), which makes escaping to the host easy; list only the capabilities the workload needs".into())
    } else if cap.is_empty() || !cap.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        Err(format!(
            "{raw:?} is not a capability name (e.g. NET_BIND_SERVICE)"
        ))
    } else {
        Ok(cap.to_owned())
    }
}

fn parse_sink_type(kind: &str) -> Result<String, String> {
    match kind {
        "s3" => Ok(kind.into()),
        _ => Err(format!("sink type {kind:?} is not supported: only s3 (S3-compatible stores such as MinIO or R2 work through `endpoint`)")),
    }
}

fn parse_prefix(prefix: &str) -> Result<String, String> {
    match prefix.contains("${tenantId}") {
        true => Ok(prefix.into()),
        false => Err("prefix must contain ${tenantId} so tenants never share objects".into()),
    }
}

fn parse_rclone_flag(flag: &str) -> Result<String, String> {
    match flag.starts_with("--") {
        true => Ok(flag.into()),
        false => Err(format!("rclone flag {flag:?} must start with `--`")),
    }
}

fn parse_http_url(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"));
    match rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/') && !r.contains(' ')) {
        true => Ok(url.into()),
        false => Err(format!(
            "endpoint {url:?} must be an http:// or https:// URL"
        )),
    }
}

fn parse_protocol(s: &str) -> Result<String, String> {
    match s.to_ascii_lowercase().as_str() {
        p @ ("tcp" | "udp") => Ok(p.into()),
        _ => Err(format!("unknown protocol {s:?}: use tcp or udp")),
    }
}

fn parse_port_number(s: &str) -> Result<u16, String> {
    match s.trim().parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ if s.contains('-') => Err(format!(
            "port ranges such as {s:?} are not supported: list each port"
        )),
        _ => Err(format!(
            "invalid port {s:?}: expected a number from 1 to 65535"
        )),
    }
}

/// Compose short syntax: `8080`, `8080/udp`, `9000:8080`, `9000:8080/tcp`.
fn parse_port(s: &str) -> Result<PortSpec, String> {
    let (ports, protocol) = s.split_once('/').unwrap_or((s, "tcp"));
    let protocol = parse_protocol(protocol)?;
    let (host, container) = match ports.split(':').collect::<Vec<_>>()[..] {
        [container] => (None, container),
        [host, container] => (Some(parse_port_number(host)?), container),
        _ => {
            return Err(format!(
            "{s:?}: binding to a host IP is not supported; use \"HOST:CONTAINER\" or \"CONTAINER\""
        ))
        }
    };
    Ok(PortSpec {
        container: parse_port_number(container)?,
        protocol,
        host,
    })
}

fn check_target(target: &str) -> Result<String, String> {
    if !target.starts_with('/') {
        Err(format!("target {target:?} must be an absolute path"))
    } else if target.trim_matches('/').is_empty() {
        Err("target cannot be `/`: it would cover the whole container filesystem".into())
    } else if target.split('/').any(|c| c == "..") {
        Err(format!("target {target:?} must not contain `..`"))
    } else {
        Ok(target.into())
    }
}

/// Mapping paths are relative to the state volume; the whole volume is `/`.
fn normalize_sync_path(path: &str) -> Result<String, String> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(format!(
            "path {path:?} must not contain `..`: mappings stay inside the state volume"
        ));
    }
    Ok(if parts.is_empty() {
        "/".into()
    } else {
        parts.join("/")
    })
}

/// ` (did you mean `x`?)` when one of the space-separated `known` keys is within edit
/// distance 2.
fn suggest(key: &str, known: &str) -> String {
    known
        .split_whitespace()
        .map(|k| (edit_distance(key, k), k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = (prev + usize::from(ca != *cb)).min(row[j] + 1).min(cur + 1);
            prev = cur;
        }
    }
    row[b.len()]
}

/// `${VAR}`, `${VAR:-default}`, `${VAR-default}` and `$$`; `${tenantId}` is kept as is.
fn interpolate(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = s;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
            continue;
        }
        let Some(body) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        // Find the matching brace, allowing nested `${...}` in defaults.
        let mut depth = 1;
        let end = body.char_indices().find_map(|(i, c)| {
            depth += match c {
                '{' => 1,
                '}' => -1,
                _ => 0,
            };
            (depth == 0).then_some(i)
        });
        let Some(end) = end else {
            return Err(format!(
                "unterminated `${{` in {s:?}: close it with `}}`, or write `$$` for a literal `$`"
            ));
        };
        let expr = &body[..end];
        rest = &body[end + 1..];
        if expr == "tenantId" {
            out.push_str("${tenantId}");
            continue;
        }
        let name_len = expr
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(expr.len());
        let (name, modifier) = expr.split_at(name_len);
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(format!("invalid variable `${{{expr}}}`: use ${{VAR}} or ${{VAR:-default}}, or `$$` for a literal `$`"));
        }
        let value = env(name);
        let default = match (modifier.strip_prefix(":-"), modifier.strip_prefix('-')) {
            _ if modifier.is_empty() => None,
            (Some(default), _) => value
                .as_deref()
                .is_none_or(str::is_empty)
                .then_some(default),
            (None, Some(default)) => value.is_none().then_some(default),
            _ => {
                return Err(format!(
                    "unsupported interpolation `${{{expr}}}`: use ${{VAR}} or ${{VAR:-default}}"
                ))
            }
        };
        match (default, value) {
            (Some(default), _) => out.push_str(&interpolate(default, env)?),
            (None, Some(value)) => out.push_str(&value),
            (None, None) => {
                return Err(format!("environment variable `{name}` is not set: set it for the daemon, or give a default with ${{{name}:-default}}"))
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

static DURATION_PART: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(\d+)(?:\.(\d+))?(ns|us|µs|ms|s|m|h)").expect("valid regex"));

/// Compose/Go durations (`1m30s`, `500ms`, `1.5s`) or an all-digit string of milliseconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    duration_of(s).ok_or_else(|| format!("invalid duration {s:?}: use compose form like 30s, 10m, 1m30s, 500ms, or integer milliseconds"))
}

fn duration_of(s: &str) -> Option<Duration> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok().map(Duration::from_millis);
    }
    let mut nanos: u128 = 0;
    let mut covered = 0;
    for caps in DURATION_PART.captures_iter(s) {
        let whole = caps.get(0)?;
        if whole.start() != covered {
            return None;
        }
        covered = whole.end();
        let unit: u128 = match &caps[3] {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            _ => 3_600_000_000_000,
        };
        let int: u128 = caps[1].parse().ok()?;
        let frac = match caps.get(2) {
            Some(f) => {
                (format!("0.{}", f.as_str()).parse::<f64>().ok()? * unit as f64).round() as u128
            }
            None => 0,
        };
        nanos = nanos.checked_add(int.checked_mul(unit)?.checked_add(frac)?)?;
    }
    if covered == 0 || covered != s.len() {
        return None;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).ok()?;
    Some(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

static MEMORY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(\d+(?:\.\d+)?) ?(?:([kmgtp])i?)?b?$").expect("valid regex"));

/// Docker-style sizes with binary multiples: `512m`, `2G`, `512mb`, `1.5g`, `1024`.
fn parse_memory(s: &str) -> Result<u64, String> {
    match bytes_of(s) {
        Some(0) => Err("memory limit must be greater than zero".into()),
        Some(n) => Ok(n),
        None => Err(format!(
            "invalid memory {s:?}: use a size like 512m, 2G, 1.5g or a number of bytes"
        )),
    }
}

fn bytes_of(s: &str) -> Option<u64> {
    let lower = s.trim().to_ascii_lowercase();
    let caps = MEMORY.captures(&lower)?;
    let exp = match caps.get(2).map(|m| m.as_str()) {
        None => 0,
        Some("k") => 1,
        Some("m") => 2,
        Some("g") => 3,
        Some("t") => 4,
        Some(_) => 5,
    };
    let number = &caps[1];
    let unit = 1024u64.pow(exp);
    match number.parse::<u64>() {
        Ok(n) => n.checked_mul(unit),
        Err(_) => {
            let bytes = number.parse::<f64>().ok()? * unit as f64;
            (bytes < u64::MAX as f64).then_some(bytes as u64)
        }
    }
}

/// Splits a command string like a POSIX shell would (quotes and backslashes, no
/// expansion).
fn shell_split(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err(format!("unterminated ' quote in {s:?}")),
                    }
                }
            }
            '"' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                            Some(c) => {
                                w.push('\\');
                                w.push(c);
                            }
                            None => return Err(format!("unterminated \" quote in {s:?}")),
                        },
                        Some(c) => w.push(c),
                        None => return Err(format!("unterminated \" quote in {s:?}")),
                    }
                }
            }
            '\\' => {
                let w = word.get_or_insert_with(String::new);
                w.extend(chars.next());
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

#[cfg(test)]
mod tests {
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
        let loaded =
            load_dir(&manifest_path("workloads"), &env, "unused").expect("workloads/ loads");
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
        assert!(
            messages[5].contains("prefix must contain ${tenantId} so tenants never share objects")
        );
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
        assert!(bad.iter().all(|e| e.line.is_some()), "{shown}");
    }

    #[test]
    fn environment_and_labels_forms() {
        let w = ok(
            "id: a\nenvironment:\n  A: x\n  N: 3\n  B: true\nlabels: [\"team=core\", \"flag\"]\n",
        );
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
    fn durations() {
        let d = |s: &str| parse_duration(s).ok();
        assert_eq!(d("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(d("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(d("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(d("2h30m"), Some(Duration::from_secs(9000)));
        assert_eq!(d("10us"), Some(Duration::from_micros(10)));
        assert_eq!(d("1500"), Some(Duration::from_millis(1500)));
        for bad in ["10 minutes", "", "s", "1x", "m10", "1.s", "-1s"] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
        let w = ok("id: a\npool:\n  idle_timeout: 1500\n");
        assert_eq!(w.pool.idle_timeout, Some(Duration::from_millis(1500)));
    }

    #[test]
    fn memory_cpus_and_pids_forms() {
        let m = |s: &str| parse_memory(s).ok();
        assert_eq!(
            (m("512m"), m("512mb"), m("512MB")),
            (Some(512 << 20), Some(512 << 20), Some(512 << 20))
        );
        assert_eq!(
            (m("2G"), m("1g"), m("1.5g")),
            (Some(2 << 30), Some(1 << 30), Some(3 << 29))
        );
        assert_eq!(
            (m("1048576"), m("64KiB"), m("100b")),
            (Some(1 << 20), Some(64 << 10), Some(100))
        );
        for bad in ["2GG", "", "m", "-1g", "1.5.5g", "12x", "0"] {
            assert_eq!(m(bad), None, "{bad:?}");
        }
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
        let text = "id: a\nsync:\n  sink:\n    bucket: ${UNSET:-b}\n    prefix: ${REGISTRY}/${tenantId}/\n";
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
    fn locate_handles_lists_and_compact_forms() {
        let text =
            "id: a\nsync:\n  mappings:\n  - path: /a\n    mode: copy\n  -\n    path: /b\n    \
            mode: copy\n  policy:\n    on_claim: true\n";
        let at = |segs: &[&str]| {
            let path = segs.iter().fold(KeyPath::root(), |p, s| match s.parse() {
                Ok(i) => p.index(i),
                Err(_) => p.key(s),
            });
            locate(text, &path, false)
        };
        assert_eq!(at(&["sync", "mappings", "1", "mode"]), Some(8));
        assert_eq!(at(&["sync", "mappings", "0", "mode"]), Some(5));
        assert_eq!(at(&["sync", "policy", "on_claim"]), Some(10));
        assert_eq!(at(&["sync", "nope"]), Some(2));
        assert_eq!(at(&["missing"]), None);
    }
}
