//! Scalar values of workload files: text in, a typed value or a message a person
//! can act on out.
//!
//! Each parser knows one kind of value (a duration, a memory size, a port, a user...)
//! and nothing about where it sits in the file; `validate.rs` decides which parser a
//! key gets and where its error is reported. Durations accept both what people write
//! (compose/Go form, `1m30s`) and what the daemon prints (humantime, `1m 30s`), so a
//! workload read back from `GET /workloads` loads again.

use std::sync::LazyLock;
use std::time::Duration;

use regex::Regex;

use super::spec::{Buffer, PortSpec, Recycle, SyncDirection, SyncMode, UserSpec};

pub(super) const RECYCLE: &[(&str, Recycle)] = &[
    ("destroy", Recycle::Destroy),
    ("restart", Recycle::Restart),
    ("reuse", Recycle::Reuse),
];
pub(super) const DIRECTIONS: &[(&str, SyncDirection)] = &[
    ("upload", SyncDirection::Upload),
    ("download", SyncDirection::Download),
    ("bidirectional", SyncDirection::Bidirectional),
];
pub(super) const MODES: &[(&str, SyncMode)] = &[("sync", SyncMode::Sync), ("copy", SyncMode::Copy)];

pub(super) fn one_of<T: Copy>(s: &str, options: &[(&str, T)]) -> Result<T, String> {
    if let Some((_, value)) = options.iter().find(|(name, _)| *name == s) {
        return Ok(*value);
    }
    let names: Vec<&str> = options.iter().map(|(name, _)| *name).collect();
    Err(format!(
        "unknown value {s:?}: use one of {}",
        names.join(", ")
    ))
}

pub(super) fn non_empty(s: &str) -> Result<String, String> {
    match s.trim().is_empty() {
        true => Err("must not be empty".into()),
        false => Ok(s.to_owned()),
    }
}

pub(super) fn parse_bool(s: &str) -> Result<bool, String> {
    s.parse()
        .map_err(|_| format!("expected true or false, found {s:?}"))
}

pub(super) fn parse_number<T: std::str::FromStr>(s: &str) -> Result<T, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("expected a non-negative integer, found {s:?}"))
}

/// Rejects zero, for settings where zero would be a surprising way to say "off".
/// `pool.autoscale.buffer`: a count (`4`) or a share of the claimed count (`20%`).
pub(super) fn parse_buffer(s: &str) -> Result<Buffer, String> {
    let s = s.trim();
    match s.strip_suffix('%') {
        Some(p) => match p.trim().parse::<u32>() {
            Ok(p) if (1..=1000).contains(&p) => Ok(Buffer::Percent(p)),
            _ => Err(format!(
                "invalid buffer {s:?}: a percentage must be a whole number from 1% to 1000%"
            )),
        },
        None => s.parse().map(Buffer::Count).map_err(|_| {
            format!("invalid buffer {s:?}: use a count of containers (`4`) or a share of the claimed count (`20%`)")
        }),
    }
}

pub(super) fn positive<T: PartialEq + Default>(value: T) -> Result<T, String> {
    match value == T::default() {
        true => Err("must be greater than zero (leave the key out for the default)".into()),
        false => Ok(value),
    }
}

pub(super) fn parse_pids(s: &str) -> Result<i64, String> {
    match s.trim().parse::<i64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("invalid pids {s:?}: use a positive integer")),
    }
}

pub(super) fn parse_cpus(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(n) if n.is_finite() && n > 0.0 => Ok(n),
        _ => Err(format!(
            "invalid cpus {s:?}: use a positive number of cores such as 2 or 0.5"
        )),
    }
}

pub(super) fn parse_user(s: &str) -> Result<UserSpec, String> {
    let (uid, gid) = s.split_once(':').map_or((s, None), |(u, g)| (u, Some(g)));
    match (uid.parse(), gid.map(str::parse).transpose()) {
        (Ok(uid), Ok(gid)) => Ok(UserSpec { uid, gid }),
        _ => Err(format!("user {s:?} must be numeric, a uid like \"1000\" or uid:gid like \"1000:1000\": tenant directories are chowned to it, so user names cannot be used")),
    }
}

pub(super) fn parse_network_mode(mode: &str) -> Result<String, String> {
    if mode == "host" {
        Err("`host` is refused: the container would share the host's network stack, bypassing the network isolation between tenants and the host".into())
    } else if mode.starts_with("container:") || mode.starts_with("service:") {
        Err("joining another container's network is refused: a tenant could reach another tenant's services".into())
    } else {
        non_empty(mode)
    }
}

pub(super) fn refuse_namespace(key: &str, mode: &str) -> String {
    match (key, mode) {
        ("pid", "host") => "`pid: host` is refused: the container would see and could signal every process on the host".into(),
        ("ipc", "host") => "`ipc: host` is refused: the container would share the host's IPC namespace and shared memory".into(),
        ("userns_mode", "host") => "`userns_mode: host` is refused: root in the container would be root on the host".into(),
        _ => format!("`{key}` is not supported: every container gets its own private namespace"),
    }
}

pub(super) fn parse_capability(raw: &str) -> Result<String, String> {
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

pub(super) fn parse_sink_type(kind: &str) -> Result<String, String> {
    match kind {
        "s3" => Ok(kind.into()),
        _ => Err(format!("sink type {kind:?} is not supported: only s3 (S3-compatible stores such as MinIO or R2 work through `endpoint`)")),
    }
}

pub(super) fn parse_prefix(prefix: &str) -> Result<String, String> {
    match prefix.contains("${tenantId}") {
        true => Ok(prefix.into()),
        false => Err("prefix must contain ${tenantId} so tenants never share objects".into()),
    }
}

pub(super) fn parse_rclone_flag(flag: &str) -> Result<String, String> {
    match flag.starts_with("--") {
        true => Ok(flag.into()),
        false => Err(format!("rclone flag {flag:?} must start with `--`")),
    }
}

pub(super) fn parse_http_url(url: &str) -> Result<String, String> {
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

pub(super) fn parse_protocol(s: &str) -> Result<String, String> {
    match s.to_ascii_lowercase().as_str() {
        p @ ("tcp" | "udp") => Ok(p.into()),
        _ => Err(format!("unknown protocol {s:?}: use tcp or udp")),
    }
}

pub(super) fn parse_port_number(s: &str) -> Result<u16, String> {
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
pub(super) fn parse_port(s: &str) -> Result<PortSpec, String> {
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

pub(super) fn check_target(target: &str) -> Result<String, String> {
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
pub(super) fn normalize_sync_path(path: &str) -> Result<String, String> {
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
pub(super) fn suggest(key: &str, known: &str) -> String {
    known
        .split_whitespace()
        .map(|k| (strsim::levenshtein(key, k), k))
        .filter(|(d, _)| *d <= 2)
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| format!(" (did you mean `{k}`?)"))
        .unwrap_or_default()
}

static DURATION_PART: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"(\d+)(?:\.(\d+))?(ns|us|µs|ms|s|m|h)").expect("valid regex"));

/// One part of a duration as the daemon prints it (`humantime::format_duration`, also
/// what `GET /workloads` serialises): an integer and one of the units it writes.
static PRINTED_PART: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"^\d+(ns|us|ms|s|m|h|d|days?|months?|years?)$").expect("valid regex")
});

/// Compose/Go durations (`1m30s`, `500ms`, `1.5s`), an all-digit string of
/// milliseconds, or the daemon's own printed form (`1m 30s`, `2h 5ms`).
pub(super) fn parse_duration(s: &str) -> Result<Duration, String> {
    go_duration(s)
        .or_else(|| printed_duration(s))
        .ok_or_else(|| format!("invalid duration {s:?}: use compose form like 30s, 10m, 1m30s, 500ms, or integer milliseconds"))
}

fn go_duration(s: &str) -> Option<Duration> {
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

/// The form `humantime::format_duration` writes: parts separated by single spaces.
/// Only the units it writes are let through to humantime's parser, which would
/// otherwise also take words (`10 minutes`) that compose files never use and that the
/// error message does not promise.
fn printed_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let printed = !s.is_empty() && s.split(' ').all(|part| PRINTED_PART.is_match(part));
    printed.then(|| humantime::parse_duration(s).ok()).flatten()
}

static MEMORY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"^(\d+(?:\.\d+)?) ?(?:([kmgtp])i?)?b?$").expect("valid regex"));

/// Docker-style sizes with binary multiples: `512m`, `2G`, `512mb`, `1.5g`, `1024`.
pub(super) fn parse_memory(s: &str) -> Result<u64, String> {
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
pub(super) fn shell_split(s: &str) -> Result<Vec<String>, String> {
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

    #[test]
    fn durations() {
        let d = |s: &str| parse_duration(s).ok();
        assert_eq!(d("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(d("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(d("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(d("2h30m"), Some(Duration::from_secs(9000)));
        assert_eq!(d("10us"), Some(Duration::from_micros(10)));
        assert_eq!(d("1500"), Some(Duration::from_millis(1500)));
        // What the daemon prints (humantime), read back.
        assert_eq!(d("1m 30s"), Some(Duration::from_secs(90)));
        assert_eq!(
            d("2days 3h"),
            Some(Duration::from_secs(2 * 86_400 + 3 * 3_600))
        );
        assert_eq!(d("1d 2h 5ms"), Some(Duration::from_millis(93_600_005)));
        for secs in [1, 59, 90, 3_601, 86_400 * 40, 86_400 * 400] {
            let printed = humantime::format_duration(Duration::from_secs(secs)).to_string();
            assert_eq!(d(&printed), Some(Duration::from_secs(secs)), "{printed}");
        }
        for bad in [
            "10 minutes",
            "",
            "s",
            "1x",
            "m10",
            "1.s",
            "-1s",
            "1m  30s",
            "1 m",
        ] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn memory_forms() {
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
    }

    #[test]
    fn shell_split_quotes_and_escapes() {
        let words = shell_split(r#"sh -c 'echo "hi there"' x\ y "a\"b""#).expect("splits");
        assert_eq!(words, ["sh", "-c", "echo \"hi there\"", "x y", "a\"b"]);
        assert!(shell_split("say 'unterminated").is_err());
        assert!(shell_split("say \"unterminated").is_err());
    }

    #[test]
    fn suggestions_come_within_two_edits_only() {
        assert_eq!(
            suggest("healtcheck", "image healthcheck"),
            " (did you mean `healthcheck`?)"
        );
        assert_eq!(
            suggest("max_siz", "min_size max_size"),
            " (did you mean `max_size`?)"
        );
        assert_eq!(suggest("zzz", "image healthcheck"), "");
    }
}
