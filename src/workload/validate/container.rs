//! What the container may do: its mounts, healthcheck, ports, resource limits and
//! capabilities. Part of the validation pass (see `validate/mod.rs`); the refusals
//! that keep tenants apart from the host and from each other are here.

use std::time::Duration;

use super::{At, Validator};
use crate::workload::raw::*;
use crate::workload::spec::*;
use crate::workload::values::*;

const VOLUME_REFUSED: &str = "only the state, secrets and comm volumes exist; extra volumes \
    and host bind mounts would let tenants reach host files or share data with each other";

impl Validator<'_> {
    pub(super) fn volumes(
        &mut self,
        at: &At,
        v: &Section<RawVolumes>,
        mut vols: Volumes,
    ) -> Volumes {
        let raw = match v {
            Section::Other(Node::Seq(items)) => {
                for (i, item) in items.iter().enumerate() {
                    let spec = match &item.value {
                        Node::Str(s) => s.as_str(),
                        _ => "",
                    };
                    let what = match spec.split_once(':') {
                        Some((src, _)) if src.starts_with(['/', '.', '~']) => {
                            format!("host bind mount `{spec}`")
                        }
                        _ => "this volume".to_owned(),
                    };
                    self.err(&at.index(i, item), format!("{what} is refused: {VOLUME_REFUSED}. Choose where those three are mounted with the mapping form, e.g. `volumes: {{state: {{target: /data}}}}`"));
                }
                return vols;
            }
            other => match self.section(at, other) {
                Some(raw) => raw,
                None => return vols,
            },
        };
        let mut target_lines = [at.line; 3];
        let mounts = [
            (&raw.state, &mut vols.state),
            (&raw.secrets, &mut vols.secrets),
            (&raw.comm, &mut vols.comm),
        ];
        for (i, (field, mount)) in mounts.into_iter().enumerate() {
            if let Some(f) = field {
                target_lines[i] = self.mount(&at.of(f), &f.value.value, mount);
            }
        }
        for f in &raw.unknown {
            let hint = suggest(&f.name, "state secrets comm");
            self.err(
                &at.of(f),
                format!("volume `{}`{hint} is refused: {VOLUME_REFUSED}", f.name),
            );
        }
        self.bad_keys(at, &raw.bad_keys);
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
                let here = At {
                    path: format!("{}.{name}.target", at.path),
                    line: target_lines[i],
                };
                self.err(&here, message);
            }
        }
        vols
    }

    /// Reads one mount; returns the line its target is on (the mount's when unset).
    fn mount(&mut self, at: &At, v: &Section<RawMount>, mount: &mut VolumeMount) -> usize {
        let Some(raw) = self.section(at, v) else {
            return at.line;
        };
        if let Some(f) = &raw.target {
            mount.target = self
                .scalar(&at.of(f), &f.value.value, check_target)
                .unwrap_or_default();
        }
        if raw.read_only.is_some() {
            mount.read_only = self.opt(at, &raw.read_only, parse_bool).unwrap_or(false);
        }
        for f in [&raw.source, &raw.kind].into_iter().flatten() {
            self.err(&at.of(f), format!("`{}` cannot be set: boilerhouse chooses the host directory (one per container); only target and read_only can be set", f.name));
        }
        self.unknown(at, &raw.unknown, &raw.bad_keys, "target read_only");
        raw.target.as_ref().map_or(at.line, |f| f.line)
    }

    pub(super) fn healthcheck(
        &mut self,
        at: &At,
        v: &Section<RawHealthcheck>,
    ) -> Option<Healthcheck> {
        let raw = self.section(at, v)?;
        let test = match &raw.test {
            Some(f) => self.health_test(&at.of(f), &f.value.value),
            None => None,
        };
        let mut hc = Healthcheck {
            test: HealthTest::None,
            interval: self.opt(at, &raw.interval, parse_duration),
            timeout: self.opt(at, &raw.timeout, parse_duration),
            retries: self.opt(at, &raw.retries, parse_number),
            start_period: self.opt(at, &raw.start_period, parse_duration),
            start_interval: self.opt(at, &raw.start_interval, |s| positive(parse_duration(s)?)),
        };
        let disable = self.opt(at, &raw.disable, parse_bool).unwrap_or(false);
        self.unknown(
            at,
            &raw.unknown,
            &raw.bad_keys,
            "test interval timeout retries start_period start_interval disable",
        );
        match (test, &raw.disable) {
            (Some(HealthTest::None), _) => {}
            (None, _) if disable => {}
            (Some(_), Some(f)) if disable => self.err(&at.of(f), "`disable: true` conflicts with a healthcheck test: remove one of them"),
            (Some(t), _) => hc.test = t,
            (None, _) => self.require(at, &raw.test, "test", "missing `test`: give a command such as [\"CMD\", \"curl\", \"-f\", \"http://localhost:8080/health\"], or `disable: true`"),
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
            Some(si) => format!("start_interval {} is honoured only by Docker 25.0+ (API 1.44); older engines ignore it", h(si)),
            None => "set healthcheck.start_interval (Docker 25.0+) or a shorter interval to warm faster".into(),
        };
        tracing::warn!(
            file = %self.file.display(),
            "healthcheck interval {}: on Docker engines before 25.0 (API 1.44) the first probe runs one interval after \
             a container starts, so each new container takes at least {} to become ready (it is given up after {} \
             unless pool.ready_timeout says otherwise); {advice}",
            h(t.interval),
            h(t.interval),
            h(ready_deadline(Some(&t), None, Duration::ZERO)),
        );
    }

    fn health_test(&mut self, at: &At, v: &Node) -> Option<HealthTest> {
        if !matches!(v, Node::Seq(_)) {
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

    pub(super) fn ports(&mut self, at: &At, v: &List<Section<RawPort>>) -> Vec<PortSpec> {
        let mut out = Vec::new();
        for (i, item) in self.list(at, v).iter().enumerate() {
            let here = at.index(i, item);
            let raw = match &item.value {
                Section::Map(raw) => raw,
                Section::Other(v) => {
                    out.extend(self.scalar(&here, v, parse_port));
                    continue;
                }
            };
            let port = PortSpec {
                container: self
                    .opt(&here, &raw.container, parse_port_number)
                    .unwrap_or(0),
                host: self.opt(&here, &raw.host, parse_port_number),
                protocol: match raw.protocol.is_some() {
                    true => self
                        .opt(&here, &raw.protocol, parse_protocol)
                        .unwrap_or_default(),
                    false => "tcp".into(),
                },
            };
            self.unknown(
                &here,
                &raw.unknown,
                &raw.bad_keys,
                "container protocol host",
            );
            self.require(
                &here,
                &raw.container,
                "container",
                "missing `container`: the port the workload listens on inside the container",
            );
            out.push(port);
        }
        out
    }

    /// `deploy.resources.limits`: the only part of compose's `deploy` that applies.
    pub(super) fn deploy(&mut self, at: &At, v: &Section<RawDeploy>) -> Resources {
        let mut res = Resources::default();
        let Some(deploy) = self.section(at, v) else {
            return res;
        };
        self.unknown(at, &deploy.unknown, &deploy.bad_keys, "resources");
        let Some(f) = &deploy.resources else {
            return res;
        };
        let at = at.of(f);
        let Some(resources) = self.section(&at, &f.value.value) else {
            return res;
        };
        self.unknown(&at, &resources.unknown, &resources.bad_keys, "limits");
        let Some(f) = &resources.limits else {
            return res;
        };
        let at = at.of(f);
        let Some(limits) = self.section(&at, &f.value.value) else {
            return res;
        };
        res.cpus = self.opt(&at, &limits.cpus, parse_cpus);
        res.memory_bytes = self.opt(&at, &limits.memory, parse_memory);
        res.pids_limit = self.opt(&at, &limits.pids, parse_pids);
        self.unknown(&at, &limits.unknown, &limits.bad_keys, "cpus memory pids");
        res
    }

    pub(super) fn cap_add(&mut self, at: &At, v: &Node) -> Vec<String> {
        let mut caps: Vec<String> = Vec::new();
        for (i, item) in self.node_list(at, v).iter().enumerate() {
            let cap = self.scalar(&at.index(i, item), &item.value, parse_capability);
            caps.extend(cap.filter(|c| !caps.contains(c)));
        }
        caps
    }
}
