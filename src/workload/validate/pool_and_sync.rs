//! The pool's sizes and timeouts, and the sync sink, mappings and policy. Part of the
//! validation pass (see `validate/mod.rs`).

use super::{At, Validator};
use crate::workload::raw::*;
use crate::workload::spec::*;
use crate::workload::values::*;

impl Validator<'_> {
    pub(super) fn pool(&mut self, at: &At, v: &Section<RawPool>) -> PoolSpec {
        let mut pool = PoolSpec::default();
        let Some(raw) = self.section(at, v) else {
            return pool;
        };
        pool.min_size = self.opt(at, &raw.min_size, parse_number);
        pool.max_size = self.opt(at, &raw.max_size, |s| positive(parse_number(s)?));
        pool.idle_timeout = self.opt(at, &raw.idle_timeout, |s| positive(parse_duration(s)?));
        if raw.recycle.is_some() {
            pool.recycle = self
                .opt(at, &raw.recycle, |s| one_of(s, RECYCLE))
                .unwrap_or_default();
        }
        pool.ready_timeout = self.opt(at, &raw.ready_timeout, |s| positive(parse_duration(s)?));
        pool.autoscale = match &raw.autoscale {
            Some(f) => self.autoscale(&at.of(f), &f.value.value),
            None => None,
        };
        self.unknown(
            at,
            &raw.unknown,
            &raw.bad_keys,
            "min_size max_size idle_timeout recycle ready_timeout autoscale",
        );
        if let (Some(min), Some(max), Some(f)) = (pool.min_size, pool.max_size, &raw.min_size) {
            if min > max {
                self.err(
                    &at.of(f),
                    format!("min_size ({min}) is larger than max_size ({max})"),
                );
            }
        }
        pool
    }

    fn autoscale(&mut self, at: &At, v: &Section<RawAutoscale>) -> Option<AutoscaleSpec> {
        let raw = self.section(at, v)?;
        let buffer = self.opt(at, &raw.buffer, parse_buffer);
        let positive_duration = |s: &str| positive(parse_duration(s)?);
        let window = self.opt(at, &raw.window, positive_duration);
        // Zero is allowed: the target then falls as soon as demand does.
        let delay = self.opt(at, &raw.scale_down_delay, parse_duration);
        self.unknown(
            at,
            &raw.unknown,
            &raw.bad_keys,
            "buffer window scale_down_delay",
        );
        self.require(
            at,
            &raw.buffer,
            "buffer",
            "missing `buffer`: how many idle containers to keep beyond recent demand (`4`, or `20%` of the claimed count)",
        );
        Some(AutoscaleSpec {
            buffer: buffer?,
            window: window.unwrap_or(AutoscaleSpec::DEFAULT_WINDOW),
            scale_down_delay: delay.unwrap_or(AutoscaleSpec::DEFAULT_SCALE_DOWN_DELAY),
        })
    }

    pub(super) fn sync(&mut self, at: &At, v: &Section<RawSync>) -> Option<SyncSpec> {
        let raw = self.section(at, v)?;
        let sink = match &raw.sink {
            Some(f) => self.sink(&at.of(f), &f.value.value),
            None => None,
        };
        let mappings = match &raw.mappings {
            Some(f) => self.mappings(&at.of(f), &f.value.value),
            None => vec![mapping("/")],
        };
        let policy = match &raw.policy {
            Some(f) => self.policy(&at.of(f), &f.value.value),
            None => SyncPolicy::default(),
        };
        self.unknown(at, &raw.unknown, &raw.bad_keys, "sink mappings policy");
        self.require(
            at,
            &raw.sink,
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

    fn sink(&mut self, at: &At, v: &Section<RawSink>) -> Option<SinkSpec> {
        let raw = self.section(at, v)?;
        let or_default = |v: Option<String>, present: bool, default: &str| match present {
            true => v.unwrap_or_default(),
            false => default.to_owned(),
        };
        let kind = self.opt(at, &raw.kind, parse_sink_type);
        let prefix = self.opt(at, &raw.prefix, parse_prefix);
        let mut sink = SinkSpec {
            kind: or_default(kind, raw.kind.is_some(), "s3"),
            bucket: self.opt(at, &raw.bucket, non_empty).unwrap_or_default(),
            region: self.opt(at, &raw.region, non_empty),
            endpoint: self.opt(at, &raw.endpoint, parse_http_url),
            access_key_id: self.opt(at, &raw.access_key_id, non_empty),
            secret_access_key: self.opt(at, &raw.secret_access_key, non_empty),
            prefix: or_default(prefix, raw.prefix.is_some(), "tenants/${tenantId}/"),
            rclone_flags: Vec::new(),
        };
        if let Some(f) = &raw.rclone_flags {
            let flags = at.of(f);
            for (i, item) in self.list(&flags, &f.value.value).iter().enumerate() {
                sink.rclone_flags.extend(self.scalar(
                    &flags.index(i, item),
                    &item.value,
                    parse_rclone_flag,
                ));
            }
        }
        self.unknown(
            at,
            &raw.unknown,
            &raw.bad_keys,
            "type bucket region endpoint access_key_id secret_access_key prefix rclone_flags",
        );
        self.require(
            at,
            &raw.bucket,
            "bucket",
            "missing `bucket`: the bucket tenant state is stored in",
        );
        let pair = match (&sink.access_key_id, &sink.secret_access_key) {
            (Some(_), None) => Some((&raw.access_key_id, "access_key_id", "secret_access_key")),
            (None, Some(_)) => Some((&raw.secret_access_key, "secret_access_key", "access_key_id")),
            _ => None,
        };
        if let Some((Some(f), set, unset)) = pair {
            self.err(&at.of(f), format!("{set} is set but {unset} is not: give both, or neither to use the daemon's default credentials"));
        }
        Some(sink)
    }

    fn mappings(&mut self, at: &At, v: &List<Section<RawMapping>>) -> Vec<SyncMapping> {
        let items = self.list(at, v);
        if items.is_empty() && matches!(v, List::Seq(_)) {
            self.err(at, "mappings is empty: leave it out to sync the whole state volume, or list what to sync");
        }
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let here = at.index(i, item);
            let mut m = mapping("/");
            let Some(raw) = self.section(&here, &item.value) else {
                out.push(m);
                continue;
            };
            if raw.path.is_some() {
                m.path = self
                    .opt(&here, &raw.path, normalize_sync_path)
                    .unwrap_or_default();
            }
            m.direction = self
                .opt(&here, &raw.direction, |s| one_of(s, DIRECTIONS))
                .unwrap_or(m.direction);
            m.mode = self
                .opt(&here, &raw.mode, |s| one_of(s, MODES))
                .unwrap_or(m.mode);
            m.pattern = self.opt(&here, &raw.pattern, non_empty);
            self.unknown(
                &here,
                &raw.unknown,
                &raw.bad_keys,
                "path direction mode pattern",
            );
            self.require(
                &here,
                &raw.path,
                "path",
                "missing `path`: relative to the state volume, `/` for all of it",
            );
            out.push(m);
        }
        out
    }

    fn policy(&mut self, at: &At, v: &Section<RawPolicy>) -> SyncPolicy {
        let mut policy = SyncPolicy::default();
        let Some(raw) = self.section(at, v) else {
            return policy;
        };
        let flag = |this: &mut Self, field: &Option<Field<Node>>| match field {
            Some(_) => this.opt(at, field, parse_bool).unwrap_or(true),
            None => true,
        };
        policy.on_claim = flag(self, &raw.on_claim);
        policy.on_release = flag(self, &raw.on_release);
        policy.manual = flag(self, &raw.manual);
        let positive_duration = |s: &str| positive(parse_duration(s)?);
        let periodic = self.opt(at, &raw.periodic, positive_duration);
        let interval = self.opt(at, &raw.interval, positive_duration);
        policy.periodic = interval.or(periodic);
        self.unknown(
            at,
            &raw.unknown,
            &raw.bad_keys,
            "on_claim on_release manual periodic",
        );
        if let (Some(_), Some(f)) = (&raw.periodic, &raw.interval) {
            self.err(
                &at.of(f),
                "`interval` is another name for `periodic`: keep one",
            );
        }
        policy
    }
}

pub(crate) fn mapping(path: &str) -> SyncMapping {
    SyncMapping {
        path: path.into(),
        direction: SyncDirection::Bidirectional,
        mode: SyncMode::Sync,
        pattern: None,
    }
}
