//! How rclone is spoken to: its environment (the remote's settings and nothing
//! inherited that could change what it does), the flags, the arguments of a transfer
//! and of a probe, and the parsing of its JSON log (stats, errors, failed connections).

use std::ffi::{OsStr, OsString};
use std::process::ExitStatus;
use std::sync::{Arc, LazyLock};

use regex::Regex;
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};

use crate::workload::spec::SinkSpec;

/// Name of the rclone remote; rclone reads its settings from `RCLONE_CONFIG_<NAME>_*`.
pub(super) const REMOTE: &str = "boilerhouse";
pub(super) const REMOTE_ENV: &str = "RCLONE_CONFIG_BOILERHOUSE_";

/// rclone's exit code for "directory not found" (the source of a transfer is absent).
pub(super) const EXIT_DIR_NOT_FOUND: i32 = 3;

/// How many of rclone's error lines a result keeps, and how long each may be.
pub(super) const MAX_ERROR_LINES: usize = 5;
pub(super) const MAX_ERROR_CHARS: usize = 400;

/// Flags of every rclone invocation. The sink's `rclone_flags` come after them, so an
/// operator can override any of these (rclone keeps the last value of a flag).
pub const BASE_FLAGS: &[&str] = &[
    // One JSON object per log line on stderr; the final stats line is parsed for the
    // byte and file counts. Stats are printed once at exit when the interval is > 0.
    "--use-json-log",
    "--log-level",
    "NOTICE",
    "--stats",
    "1h",
    "--stats-log-level",
    "NOTICE",
    // Compare by size and MD5: S3 listings carry the MD5 (ETag), while comparing
    // modification times costs one HEAD request per object.
    "--checksum",
    // Many small files: list the prefix in one paginated request instead of one per
    // directory, and move files in parallel.
    "--fast-list",
    "--transfers",
    "16",
    "--checkers",
    "16",
    // Retries. Real S3 answers `503 SlowDown` and `500 InternalError` under load, and
    // each request must be retried on its own, with backoff, or a release with many
    // files fails for one unlucky request. `--low-level-retries` is that per-request
    // count, at two levels: the S3 SDK's attempts for reads and listings (its standard
    // retryer: exponential backoff with jitter, capped at 20 s), and rclone's own
    // retries of each file's PUT (the SDK makes one attempt per upload), spaced by
    // rclone's S3 pacer, which lengthens the pause between all calls of the process
    // (up to 2 s) while errors go on and shortens it after successes. Measured against
    // the test proxy, 50 files, half of all requests failing: 1 (the old value) fails
    // in 110 s, 3 fails, 5 succeeds (one in thirty files would still fail a run), 10
    // succeeds. `--retries` redoes, after `--retries-sleep`, only what failed in a run.
    //
    // The same retries would hold an unreachable endpoint for minutes (a listing
    // against a closed port: first error after 0.1 s with 1, 6.9 s with 3, 19.5 s with
    // 5), so the engine does not leave that to rclone: it checks that the endpoint
    // accepts a TCP connection when rclone starts and every 2 s while it runs, and
    // stops rclone at the first failed connection, its own or one rclone logs
    // (`is_unreachable`) — see `exec`.
    "--retries",
    "3",
    "--retries-sleep",
    "1s",
    "--low-level-retries",
    "10",
    // A black-holed endpoint should not hold a claim for rclone's default minute.
    "--contimeout",
    "10s",
    // Symlinks are never followed (rclone's default); this only silences the notice.
    "--skip-links",
    // An upload is not followed by a HEAD of each object it wrote: rclone still checks
    // the MD5 it sent against the ETag of the PUT's answer (a single-part upload), so a
    // corrupted upload still fails. Measured on 1,000 files of 10 KiB against the test
    // endpoint, paired runs on a quiet machine: 1,000 fewer requests, 0.80× the time.
    "--s3-no-head",
];

/// Added to a download into a directory that is missing or empty (every restore of
/// a claim): with nothing at the destination there is nothing to compare
/// (`--no-check-dest` skips listing and statting it), and a failed restore fails the
/// claim, whose container and directories are then removed, so a file need not be
/// written aside and renamed (`--inplace`) nor its space reserved first
/// (`--local-no-preallocate`). Measured like `--s3-no-head`: 0.82× a download with
/// `BASE_FLAGS` alone (3,000 fewer syscalls: rename, fallocate and the destination's
/// stats). A manual `download` sync into a live tenant's empty mapping that fails
/// leaves files cut short where it would have left `*.partial` ones; the call answers
/// the failure either way.
pub const FRESH_DOWNLOAD_FLAGS: &[&str] =
    &["--no-check-dest", "--inplace", "--local-no-preallocate"];

/// Variables passed through from the daemon's environment to rclone.
pub(super) const PASS_THROUGH: &[&str] = &[
    "PATH",
    "TMPDIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
];

/// Used when the daemon itself has no `PATH` (rclone_bin may be a bare name).
pub(super) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// rclone's whole environment. `inherited` is the daemon's environment; only a few
/// harmless variables (and, for env auth, the AWS ones and `HOME`) pass through.
pub(super) fn rclone_env(
    sink: &SinkSpec,
    inherited: impl IntoIterator<Item = (OsString, OsString)>,
) -> Vec<(OsString, OsString)> {
    let keys = sink
        .access_key_id
        .as_deref()
        .zip(sink.secret_access_key.as_deref());
    let env_auth = keys.is_none();
    let mut env: Vec<(OsString, OsString)> = inherited
        .into_iter()
        .filter(|(name, _)| {
            let name = name.to_string_lossy();
            PASS_THROUGH.contains(&name.as_ref())
                || (env_auth && (name == "HOME" || name.starts_with("AWS_")))
        })
        .collect();
    if !env.iter().any(|(name, _)| name == "PATH") {
        env.push(("PATH".into(), DEFAULT_PATH.into()));
    }
    // An empty config path keeps rclone's configuration in memory: no file is read.
    env.push(("RCLONE_CONFIG".into(), "".into()));
    let mut remote = |key: &str, value: &str| {
        env.push((format!("{REMOTE_ENV}{key}").into(), value.into()));
    };
    remote("TYPE", "s3");
    remote(
        "PROVIDER",
        if sink.endpoint.is_some() {
            "Other"
        } else {
            "AWS"
        },
    );
    match keys {
        Some((id, secret)) => {
            remote("ENV_AUTH", "false");
            remote("ACCESS_KEY_ID", id);
            remote("SECRET_ACCESS_KEY", secret);
        }
        None => remote("ENV_AUTH", "true"),
    }
    if let Some(region) = &sink.region {
        remote("REGION", region);
    }
    if let Some(endpoint) = &sink.endpoint {
        remote("ENDPOINT", endpoint);
        remote("FORCE_PATH_STYLE", "true");
    }
    env
}

pub(super) fn secret_values(sink: &SinkSpec) -> Vec<String> {
    [&sink.access_key_id, &sink.secret_access_key]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .cloned()
        .collect()
}

/// `rclone <copy|sync> <src> <dst> <flags> [--include <pattern>] <operator flags>`.
///
/// `pattern` is an rclone filter rule (`--include`): without a `/` it matches a file
/// name at any depth (`*.db`), with a leading `/` it is anchored at the mapping's
/// root, `**` crosses directories. In `sync` mode only matching files are deleted at
/// the destination.
/// `fresh`: a download into a missing or empty directory (`FRESH_DOWNLOAD_FLAGS`).
pub(super) fn transfer_args(
    verb: &str,
    src: &OsStr,
    dst: &OsStr,
    pattern: Option<&str>,
    fresh: bool,
    extra: &[String],
) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec![verb.into(), src.into(), dst.into()];
    args.extend(BASE_FLAGS.iter().map(OsString::from));
    if fresh {
        args.extend(FRESH_DOWNLOAD_FLAGS.iter().map(OsString::from));
    }
    if let Some(pattern) = pattern {
        args.extend(["--include".into(), pattern.into()]);
    }
    args.extend(extra.iter().map(OsString::from));
    args
}

/// Lists the remote just far enough to know whether it holds anything: the top level
/// without a pattern, else the first matching file.
pub(super) fn probe_args(remote: &str, pattern: Option<&str>, extra: &[String]) -> Vec<OsString> {
    let mut args: Vec<OsString> = vec!["lsf".into(), remote.into()];
    match pattern {
        None => args.extend(["--max-depth".into(), "1".into()]),
        Some(pattern) => args.extend([
            "-R".into(),
            "--files-only".into(),
            "--include".into(),
            pattern.into(),
        ]),
    }
    args.extend(BASE_FLAGS.iter().map(OsString::from));
    args.extend(extra.iter().map(OsString::from));
    args
}

pub(super) fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with code {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        (None, None) => "ended abnormally".into(),
    }
}

/// rclone's last error line: its closing "Failed to <verb>: …" sums up the others.
pub(super) fn summarize(errors: &[String]) -> String {
    errors
        .last()
        .cloned()
        .unwrap_or_else(|| "no error message (see the daemon's debug log)".into())
}

/// The parts of rclone's stats object that are used.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(default)]
pub(super) struct RcloneStats {
    pub(super) bytes: u64,
    pub(super) transfers: u64,
}

#[derive(Deserialize)]
pub(super) struct LogLine {
    #[serde(default)]
    pub(super) level: String,
    #[serde(default)]
    pub(super) msg: String,
    #[serde(default)]
    pub(super) object: Option<String>,
    #[serde(default)]
    pub(super) stats: Option<RcloneStats>,
}

/// What is kept of rclone's stderr: the last stats and the last few error lines.
#[derive(Debug, Default)]
pub(super) struct RcloneLog {
    pub(super) stats: Option<RcloneStats>,
    pub(super) errors: Vec<String>,
}

impl RcloneLog {
    /// Keeps what matters of one line; true when it is an error saying the endpoint
    /// could not be reached.
    pub(super) fn push(&mut self, line: &str, secrets: &[String]) -> bool {
        let line = line.trim();
        if line.is_empty() {
            return false;
        }
        match serde_json::from_str::<LogLine>(line) {
            Ok(entry) => {
                if let Some(stats) = entry.stats {
                    self.stats = Some(stats);
                }
                let is_error = matches!(entry.level.as_str(), "error" | "critical" | "fatal")
                    || entry.msg.starts_with("Failed to");
                if !is_error {
                    return false;
                }
                let msg = match entry.object.filter(|o| !o.is_empty()) {
                    Some(object) => format!("{object}: {}", entry.msg.trim()),
                    None => entry.msg.trim().to_owned(),
                };
                self.error(&msg, secrets);
                is_unreachable(&entry.msg)
            }
            // Before its logger is set up (bad flags), rclone prints plain text.
            Err(_) => {
                if line.starts_with("Error")
                    || line.contains("Fatal error")
                    || line.starts_with("panic")
                {
                    self.error(line, secrets);
                }
                false
            }
        }
    }

    pub(super) fn error(&mut self, msg: &str, secrets: &[String]) {
        let msg = shorten(&strip_request_ids(&scrub(msg, secrets)), MAX_ERROR_CHARS);
        if self.errors.contains(&msg) {
            return;
        }
        if self.errors.len() == MAX_ERROR_LINES {
            self.errors.remove(0);
        }
        self.errors.push(msg);
    }
}

/// The AWS SDK puts `RequestID: …, HostID: <long base64>, ` in every error; useless to
/// a person reading why a sync failed, and it pushes the cause out of the message.
pub(super) fn strip_request_ids(text: &str) -> String {
    static IDS: LazyLock<Regex> =
        LazyLock::new(|| Regex::new(r"RequestID: [^,]*, HostID: [^,]*, ").expect("valid regex"));
    IDS.replace_all(text, "").into_owned()
}

pub(super) fn scrub(text: &str, secrets: &[String]) -> String {
    secrets
        .iter()
        .filter(|s| !s.is_empty())
        .fold(text.to_owned(), |t, s| t.replace(s.as_str(), "***"))
}

pub(super) fn shorten(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Collects rclone's log; the first error line that says the endpoint could not be
/// reached is also signalled on `unreachable`.
pub(super) async fn read_log(
    stderr: Option<impl AsyncRead + Unpin>,
    secrets: Arc<Vec<String>>,
    unreachable: tokio::sync::oneshot::Sender<()>,
) -> RcloneLog {
    let mut log = RcloneLog::default();
    let Some(stderr) = stderr else {
        return log;
    };
    let mut unreachable = Some(unreachable);
    let mut reader = BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {
                let failed_connection = log.push(&String::from_utf8_lossy(&buf), &secrets);
                if failed_connection {
                    if let Some(tx) = unreachable.take() {
                        let _ = tx.send(());
                    }
                }
            }
        }
    }
    log
}

/// Does this error say a connection to the endpoint could not be made at all (Go's
/// `dial tcp …`: refused, unknown host, no route, connect timeout)? Nothing was sent,
/// and nothing will be in the rest of this run either.
pub(super) fn is_unreachable(msg: &str) -> bool {
    msg.contains("dial tcp")
        && [
            "connection refused",
            "no such host",
            "network is unreachable",
            "no route to host",
            "i/o timeout",
        ]
        .iter()
        .any(|cause| msg.contains(cause))
}
