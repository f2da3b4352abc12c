//! The validation pass: raw spanned values (`raw.rs`) in, a [`Workload`] out.
//!
//! One pass over the file's raw structs that checks every key and records every
//! problem with its dotted key path and line, rather than stopping at the first: a
//! broken deployment is fixed in one round. It is also where isolation is enforced
//! (privileged, host namespaces, host mounts, capabilities, reserved labels) and where
//! the load-time warnings are logged. Scalar parsing lives in `values.rs`, `${VAR}`
//! interpolation in `interpolate.rs`; nothing here touches Docker or the pools. This
//! file holds the helpers and the top level; `container` checks what the container
//! may do (mounts, healthcheck, ports, limits, capabilities), `pool_and_sync` the
//! pool's sizes and the sync sink, mappings and policy.

use std::collections::BTreeMap;
use std::path::Path;

use super::interpolate::interpolate;
use super::load::base_workload;
use super::raw::*;
use super::spec::*;
use super::values::*;

mod container;
mod pool_and_sync;

// The default mapping (all of the state volume), which the unit tests compare with.
#[cfg(test)]
pub(super) use pool_and_sync::mapping;

/// One problem found by the pass, before it is given its file.
pub(super) struct Problem {
    /// Dotted key path, empty for the document itself.
    pub key: String,
    pub line: usize,
    pub message: String,
}

/// Where a value sits: its dotted path (`sync.mappings[0].path`) and its line.
#[derive(Clone)]
struct At {
    path: String,
    line: usize,
}

impl At {
    fn key(&self, name: &str, line: usize) -> At {
        let path = match self.path.is_empty() {
            true => name.to_owned(),
            false => format!("{}.{name}", self.path),
        };
        At { path, line }
    }
    fn of<T>(&self, field: &Field<T>) -> At {
        self.key(&field.name, field.line)
    }
    fn index<T>(&self, i: usize, item: &Spanned<T>) -> At {
        let path = format!("{}[{i}]", self.path);
        At {
            path,
            line: line_of(item),
        }
    }
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

pub(super) struct Validator<'a> {
    pub env: &'a dyn Fn(&str) -> Option<String>,
    pub file: &'a Path,
    pub problems: Vec<Problem>,
}

impl Validator<'_> {
    fn err(&mut self, at: &At, message: impl Into<String>) {
        self.problems.push(Problem {
            key: at.path.clone(),
            line: at.line,
            message: message.into(),
        });
    }

    /// Records `message` at `parent.key` when the parent mapping lacks `key`; the
    /// parent's line is reported, the key having none.
    fn require<T>(&mut self, parent: &At, field: &Option<Field<T>>, key: &str, message: &str) {
        if field.is_none() {
            let at = parent.key(key, parent.line);
            self.err(&at, message);
        }
    }

    /// Reports the keys a mapping does not know, with a hint from `known`.
    fn unknown(
        &mut self,
        at: &At,
        unknown: &[Field<Node>],
        bad_keys: &[Spanned<Node>],
        known: &str,
    ) {
        for field in unknown {
            let hint = suggest(&field.name, known);
            self.err(&at.of(field), format!("unknown key `{}`{hint}", field.name));
        }
        self.bad_keys(at, bad_keys);
    }

    fn bad_keys(&mut self, at: &At, bad_keys: &[Spanned<Node>]) {
        for key in bad_keys {
            let here = At {
                line: line_of(key),
                ..at.clone()
            };
            self.err(
                &here,
                format!("keys must be strings, found {}", key.value.kind()),
            );
        }
    }

    /// A scalar as a string; strings get `${VAR}` interpolation.
    fn text(&mut self, at: &At, v: &Node) -> Option<String> {
        let result = match v {
            Node::Str(s) => interpolate(s, self.env),
            Node::Int(n) => Ok(n.to_string()),
            // Debug keeps the `.0` of whole numbers, as YAML wrote them (`2.0`).
            Node::Float(n) => Ok(format!("{n:?}")),
            Node::Bool(b) => Ok(b.to_string()),
            _ => Err(format!("expected a single value, found {}", v.kind())),
        };
        result.map_err(|e| self.err(at, e)).ok()
    }

    /// A scalar run through `parse`, whose error message is recorded at `at`.
    fn scalar<T>(
        &mut self,
        at: &At,
        v: &Node,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.text(at, v)?;
        parse(&text).map_err(|e| self.err(at, e)).ok()
    }

    /// The value of an optional key of `parent`, parsed; None when absent or invalid.
    fn opt<T>(
        &mut self,
        parent: &At,
        field: &Option<Field<Node>>,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let field = field.as_ref()?;
        self.scalar(&parent.of(field), &field.value.value, parse)
    }

    fn section<'s, T>(&mut self, at: &At, s: &'s Section<T>) -> Option<&'s T> {
        match s {
            Section::Map(t) => Some(t),
            Section::Other(v) => {
                self.err(at, format!("expected a mapping, found {}", v.kind()));
                None
            }
        }
    }

    fn list<'s, T>(&mut self, at: &At, l: &'s List<T>) -> &'s [Spanned<T>] {
        match l {
            List::Seq(items) => items,
            List::Other(v) => {
                self.err(at, format!("expected a list, found {}", v.kind()));
                &[]
            }
        }
    }

    fn node_list<'s>(&mut self, at: &At, v: &'s Node) -> &'s [Spanned<Node>] {
        match v {
            Node::Seq(items) => items,
            _ => {
                self.err(at, format!("expected a list, found {}", v.kind()));
                &[]
            }
        }
    }

    fn string_list(&mut self, at: &At, v: &Node) -> Vec<String> {
        let items = self.node_list(at, v).iter().enumerate();
        items
            .filter_map(|(i, item)| self.text(&at.index(i, item), &item.value))
            .collect()
    }

    /// `command` / `entrypoint`: a list, or a string split like a shell would.
    fn command(&mut self, at: &At, v: &Node) -> Option<Vec<String>> {
        match v {
            Node::Seq(_) => Some(self.string_list(at, v)),
            _ => self.scalar(at, v, shell_split),
        }
    }

    /// `environment` / `labels`: a mapping, or compose's `KEY=VAL` list. Keys here are
    /// data, not schema, so `x-` keys are kept.
    fn string_map(&mut self, at: &At, v: &Node, labels: bool) -> BTreeMap<String, String> {
        let no_value = |key: &str, sep: &str| {
            format!("`{key}` has no value: write `{key}{sep}value` (or `{key}{sep}${{{key}}}` to pass the daemon's variable through)")
        };
        let mut pairs = Vec::new();
        if let Node::Map(entries) = v {
            for (k, val) in entries {
                let key = match &k.value {
                    Node::Str(s) => s.clone(),
                    Node::Int(n) => n.to_string(),
                    Node::Float(n) => format!("{n:?}"),
                    other => {
                        let here = At {
                            line: line_of(k),
                            ..at.clone()
                        };
                        self.err(
                            &here,
                            format!("keys must be strings, found {}", other.kind()),
                        );
                        continue;
                    }
                };
                let here = at.key(&key, line_of(k));
                let value = match &val.value {
                    Node::Null if labels => Some(String::new()),
                    Node::Null => {
                        self.err(&here, no_value(&key, ": "));
                        None
                    }
                    other => self.text(&here, other),
                };
                pairs.push((here, key, value));
            }
        } else {
            for (i, item) in self.node_list(at, v).iter().enumerate() {
                let here = at.index(i, item);
                let Some(entry) = self.text(&here, &item.value) else {
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

    /// The whole file. Returns the workload and the line of its `id`, for the
    /// duplicate check across files.
    pub fn workload(&mut self, file: &RawFile, default_image: &str) -> Option<(Workload, usize)> {
        let top = At {
            path: String::new(),
            line: line_of(file),
        };
        let raw = match &file.value {
            Section::Map(raw) => raw,
            Section::Other(v) => {
                let found = v.kind();
                self.err(
                    &top,
                    format!("expected a mapping of workload keys (id, image, ...), found {found}"),
                );
                return None;
            }
        };
        let mut w = base_workload(WorkloadId::parse("default").ok()?, default_image);
        let id = self.opt(&top, &raw.id, WorkloadId::parse);
        let name = self.opt(&top, &raw.name, non_empty);
        if let Some(f) = &raw.image {
            w.image = self
                .scalar(&top.of(f), &f.value.value, non_empty)
                .unwrap_or_default();
        }
        if let Some(f) = &raw.command {
            w.command = self.command(&top.of(f), &f.value.value);
        }
        if let Some(f) = &raw.entrypoint {
            w.entrypoint = self.command(&top.of(f), &f.value.value);
        }
        if let Some(f) = &raw.environment {
            w.environment = self.string_map(&top.of(f), &f.value.value, false);
        }
        if let Some(f) = &raw.volumes {
            w.volumes = self.volumes(&top.of(f), &f.value.value, w.volumes.clone());
        }
        if let Some(f) = &raw.healthcheck {
            w.healthcheck = self.healthcheck(&top.of(f), &f.value.value);
        }
        if let Some(f) = &raw.ports {
            w.ports = self.ports(&top.of(f), &f.value.value);
        }
        if let Some(f) = &raw.deploy {
            w.resources = self.deploy(&top.of(f), &f.value.value);
        }
        if raw.read_only.is_some() {
            w.read_only = self.opt(&top, &raw.read_only, parse_bool).unwrap_or(true);
        }
        w.user = self.opt(&top, &raw.user, parse_user);
        w.network_mode = self.opt(&top, &raw.network_mode, parse_network_mode);
        if let Some(f) = &raw.labels {
            w.labels = self.string_map(&top.of(f), &f.value.value, true);
        }
        if let Some(f) = &raw.cap_add {
            w.cap_add = self.cap_add(&top.of(f), &f.value.value);
        }
        if let Some(f) = &raw.pool {
            w.pool = self.pool(&top.of(f), &f.value.value);
        }
        if let Some(f) = &raw.sync {
            w.sync = self.sync(&top.of(f), &f.value.value);
        }
        if let Some(f) = &raw.privileged {
            if self.scalar(&top.of(f), &f.value.value, parse_bool) == Some(true) {
                self.err(
                    &top.of(f),
                    "privileged containers can take over the host; not allowed",
                );
            }
        }
        for f in [&raw.pid, &raw.ipc, &raw.userns_mode].into_iter().flatten() {
            if let Some(mode) = self.text(&top.of(f), &f.value.value) {
                self.err(&top.of(f), refuse_namespace(&f.name, &mode));
            }
        }
        for f in &raw.unknown {
            match REFUSED.iter().find(|(k, _)| *k == f.name) {
                Some((key, why)) => self.err(&top.of(f), format!("`{key}` is refused: {why}")),
                None => self.unknown(&top, std::slice::from_ref(f), &[], TOP_KEYS),
            }
        }
        self.bad_keys(&top, &raw.bad_keys);
        self.require(
            &top,
            &raw.id,
            "id",
            "missing required key `id` (the workload's unique id, e.g. `id: my-worker`)",
        );
        let host_port = w.ports.iter().position(|p| p.host.is_some());
        if let (Some(i), false, Some(List::Seq(items))) = (
            host_port,
            w.pool.max_size == Some(1),
            raw.ports.as_ref().map(|f| &f.value.value),
        ) {
            let ports = raw.ports.as_ref().map_or(top.clone(), |f| top.of(f));
            // The i-th valid port is the i-th item: an invalid one fails the file anyway.
            let here = items
                .get(i)
                .map_or(ports.clone(), |item| ports.index(i, item));
            self.err(&here, "a fixed host port can only be published by one container: set `pool.max_size: 1`, or leave out `host` so Docker picks a free port");
        }
        self.warn_unconfined_restore(&w);
        let id = id?;
        w.name = name.unwrap_or_else(|| id.to_string());
        w.id = id;
        w.source = Some(self.file.to_owned());
        Some((w, raw.id.as_ref().map_or(top.line, |f| f.line)))
    }

    fn warn_unconfined_restore(&self, w: &Workload) {
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
    }
}
