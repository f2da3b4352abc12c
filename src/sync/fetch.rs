//! The engine's own download: a mapping restored into an empty directory straight
//! from the sink over the resident HTTP client (the one the state cache lists with),
//! instead of an rclone process.
//!
//! Why: a first restore of many small files is CPU-bound here. rclone spends ~0.6 s of
//! CPU on 1,000 files of 10 KiB (its start, its S3 SDK, a goroutine and several
//! syscalls per file, hashing), on top of what the endpoint spends serving them; on a
//! 2-core node that is most of the claim. No rclone flag got below 0.82× of that
//! (docs/performance.md, issue 14). One signed GET per object on a kept-alive
//! connection, the body hashed as it is written, costs a fraction of it.
//!
//! When, and otherwise rclone exactly as before:
//! - a download into a mapping dir that is missing or empty (nothing to compare or
//!   delete: `rclone copy` into an empty dir is "GET everything");
//! - a sink the resident client can reach as rclone would (plain `http` endpoint,
//!   static keys, no proxy: [`target`]), without `rclone_flags` (an operator's flag
//!   may change what a download means) and a mapping without a `pattern`;
//! - every key one rclone would write under the same name ([`plain_key`]) and every
//!   object with an MD5 ETag.
//!
//! The result is what `rclone copy` gives: the same names, modes 0666/0777 less the
//! umask, `run_as` as owner, the modification time rclone stored
//! (`X-Amz-Meta-Mtime`, else `Last-Modified`), each file's size and MD5 checked
//! against the listing. A failure of any kind (an object that changed since the
//! listing, a name in the way, retries used up, the deadline) leaves the mapping dir
//! as it was — emptied, or removed if it was missing — and the engine runs rclone,
//! which reports the failure in its own words if it is real. A refused connection
//! ends the fetch at once; rclone's run then fails as fast (the engine's connection
//! check), so an outage costs one extra refused connection, not a retry storm.
//!
//! Writes go through directory descriptors opened from the state dir down without
//! following symlinks, and every file is created with `O_EXCL | O_NOFOLLOW`: the
//! container may write to its state dir while this runs, and a symlink it plants
//! fails the fetch instead of redirecting a write. Files are small writes to the page
//! cache, done on the runtime's threads; a large object is written frame by frame.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::io::{Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{StreamExt, TryStreamExt};
use http_body_util::BodyExt;
use md5::{Digest as _, Md5};

use super::listing::{bucket_and_prefix, target, worth_retrying, Lister, RemoteObject, Target};
use super::local::{local_path, open_dirs, plain_key};
use crate::workload::spec::{SinkSpec, SyncMapping};

/// Objects in flight at once: rclone's `--transfers` in `BASE_FLAGS`.
const CONCURRENCY: usize = 16;
/// Attempts per object, as rclone's `--low-level-retries 10`.
const ATTEMPTS: u32 = 10;
const BACKOFF_FIRST: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// What a fetch restored.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fetched {
    pub files: u64,
    pub bytes: u64,
}

#[derive(Debug)]
pub(super) enum FetchError {
    /// Not tried, or stopped before anything was written (see the module doc): rclone
    /// does this download.
    NotStarted(String),
    /// Tried and failed: files may have been written; [`undo`] puts the mapping dir
    /// back as it was.
    Failed(String),
}

/// Downloads `mapping` (normalized as `rel`) of `tenant` into `state_dir`, whose
/// mapping dir the caller found missing or empty.
pub(super) async fn fetch(
    lister: &Lister,
    sink: &SinkSpec,
    tenant: &str,
    mapping: &SyncMapping,
    rel: &str,
    state_dir: &Path,
    run_as: Option<(u32, u32)>,
) -> Result<Fetched, FetchError> {
    use FetchError::*;
    if !sink.rclone_flags.is_empty() {
        return Err(NotStarted("the sink sets rclone_flags".into()));
    }
    if mapping.pattern.is_some() {
        return Err(NotStarted("the mapping has a pattern".into()));
    }
    let target = target(sink, |name| std::env::var_os(name))
        .ok_or_else(|| NotStarted("the sink is not a plain-http endpoint with keys".into()))?;
    let (bucket, prefix) = bucket_and_prefix(sink, tenant, rel);
    let objects = lister
        .list_prefix(&target, &bucket, &prefix)
        .await
        .map_err(NotStarted)?;
    if let Some(o) = objects.iter().find(|o| !plain_key(&o.key)) {
        return Err(NotStarted(format!(
            "object {:?} has a name rclone would encode",
            o.key
        )));
    }
    // Like rclone's "directory not found": nothing, not even the directory.
    if objects.is_empty() {
        return Ok(Fetched::default());
    }
    download(
        lister, &target, &bucket, &prefix, objects, rel, state_dir, run_as,
    )
    .await
    .map_err(Failed)
}

/// Puts the mapping dir back as the caller found it after a failed (or cancelled)
/// fetch: removed if it was missing (`created`: its first component that did not
/// exist, from [`first_missing`] before the fetch), else emptied. Never through a
/// symlink.
pub(super) fn undo(state_dir: &Path, rel: &str, created: Option<&Path>) {
    let result = match created {
        Some(top) => match std::fs::symlink_metadata(top) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(top),
            Ok(_) => std::fs::remove_file(top),
            Err(_) => Ok(()),
        },
        None => {
            let dir = local_path(state_dir, rel);
            match std::fs::symlink_metadata(&dir) {
                Ok(m) if m.is_dir() => crate::fsutil::wipe_contents(&dir),
                _ => Ok(()),
            }
        }
    };
    if let Err(e) = result {
        tracing::warn!(dir = %local_path(state_dir, rel).display(), error = %e, "cannot undo a failed download");
    }
}

/// The first component of `state_dir/rel` that does not exist (what a fetch creates
/// and a failed one removes), None when the whole path exists.
pub(super) fn first_missing(state_dir: &Path, rel: &str) -> Option<std::path::PathBuf> {
    let mut path = state_dir.to_owned();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        path.push(part);
        if std::fs::symlink_metadata(&path).is_err() {
            return Some(path);
        }
    }
    None
}

#[allow(clippy::too_many_arguments)]
async fn download(
    lister: &Lister,
    target: &Target,
    bucket: &str,
    prefix: &str,
    objects: Vec<RemoteObject>,
    rel: &str,
    state_dir: &Path,
    run_as: Option<(u32, u32)>,
) -> Result<Fetched, String> {
    // Every directory first, each opened once (no symlink followed from the state dir
    // down), so that each file is one openat in its parent.
    let dirs: BTreeSet<String> = objects
        .iter()
        .map(|o| o.key.rsplit_once('/').map_or("", |(d, _)| d).to_owned())
        .collect();
    let (base, rel_owned) = (state_dir.to_owned(), rel.to_owned());
    let opened = tokio::task::spawn_blocking(move || {
        let mut opened = BTreeMap::new();
        for dir in dirs {
            let path = [rel_owned.as_str(), dir.as_str()]
                .iter()
                .filter(|p| !p.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join("/");
            opened.insert(dir, Arc::new(open_dirs(&base, &path, run_as)?));
        }
        Ok::<_, String>(opened)
    })
    .await
    .map_err(|e| e.to_string())??;

    let jobs = objects.into_iter().map(|object| {
        let (dir, name) = match object.key.rsplit_once('/') {
            Some((d, n)) => (d, n.to_owned()),
            None => ("", object.key.clone()),
        };
        let dir = opened[dir].clone();
        let key = format!("{prefix}{}", object.key);
        async move {
            let file = create_file(&dir, &name, run_as)
                .map_err(|e| format!("cannot create {}: {e}", object.key))?;
            fetch_object(lister, target, bucket, &key, &object, file).await
        }
    });
    futures_util::stream::iter(jobs)
        .buffer_unordered(CONCURRENCY)
        .try_fold(Fetched::default(), |mut total, bytes| async move {
            total.files += 1;
            total.bytes += bytes;
            Ok(total)
        })
        .await
}

/// `name` in `dir`, new (never over anything, never through a symlink), mode 0666
/// less the umask, owned by `run_as`.
fn create_file(
    dir: &OwnedFd,
    name: &str,
    run_as: Option<(u32, u32)>,
) -> std::io::Result<std::fs::File> {
    let c_name = CString::new(name).map_err(|_| std::io::ErrorKind::InvalidInput)?;
    // SAFETY: a valid descriptor and a NUL-terminated name; the result is checked
    // before it is owned.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c_name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            0o666 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a new descriptor nobody else owns.
    let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    if let Some((uid, gid)) = run_as {
        std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
    }
    Ok(file)
}

/// GETs `key` into `file` (retrying what rclone's S3 client would retry), checks
/// size and MD5 against `object`, sets the modification time. Returns the size.
async fn fetch_object(
    lister: &Lister,
    target: &Target,
    bucket: &str,
    key: &str,
    object: &RemoteObject,
    mut file: std::fs::File,
) -> Result<u64, String> {
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            let backoff = BACKOFF_FIRST.saturating_mul(1 << (attempt - 1).min(6));
            let jitter = rand::random_range(0.5..1.0);
            tokio::time::sleep(backoff.min(BACKOFF_MAX).mul_f64(jitter)).await;
            file.set_len(0).map_err(|e| e.to_string())?;
            file.rewind().map_err(|e| e.to_string())?;
        }
        let response = match lister.get_object(target, bucket, key).await {
            Ok(r) => r,
            Err(e) if e.refused => return Err(e.detail),
            Err(e) => {
                last = e.detail;
                continue;
            }
        };
        let status = response.status();
        if worth_retrying(status) {
            last = format!("GET {key} answered {status}");
            continue;
        }
        if !status.is_success() {
            return Err(format!("GET {key} answered {status}"));
        }
        let mtime = modification_time(response.headers());
        let mut body = response.into_body();
        let (mut md5, mut size) = (Md5::new(), 0u64);
        let mut broken = None;
        while let Some(frame) = body.frame().await {
            let frame = match frame {
                Ok(f) => f,
                Err(e) => {
                    broken = Some(format!("GET {key}: the body broke off: {e}"));
                    break;
                }
            };
            if let Ok(data) = frame.into_data() {
                md5.update(&data);
                file.write_all(&data).map_err(|e| format!("{key}: {e}"))?;
                size += data.len() as u64;
            }
        }
        if let Some(b) = broken {
            last = b;
            continue;
        }
        if size != object.size || hex::encode(md5.finalize()) != object.md5 {
            return Err(format!(
                "object {key} changed since it was listed ({size} bytes, not {})",
                object.size
            ));
        }
        if let Some(t) = mtime {
            let _ = file.set_modified(t);
        }
        return Ok(size);
    }
    Err(format!("{last} ({ATTEMPTS} attempts)"))
}

/// rclone's `X-Amz-Meta-Mtime` (`seconds[.fraction]`), else `Last-Modified`.
fn modification_time(headers: &hyper::HeaderMap) -> Option<SystemTime> {
    let text = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(t) = text("x-amz-meta-mtime").and_then(parse_mtime) {
        return Some(t);
    }
    let date = chrono::DateTime::parse_from_rfc2822(text("last-modified")?).ok()?;
    Some(date.with_timezone(&chrono::Utc).into())
}

/// `"1701600000.123456789"` → that instant (to the nanosecond, as rclone writes it).
fn parse_mtime(text: &str) -> Option<SystemTime> {
    let (secs, frac) = text.trim().split_once('.').unwrap_or((text.trim(), ""));
    let secs: u64 = secs.parse().ok()?;
    let digits: String = frac.chars().take(9).collect();
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let nanos: u32 = format!("{digits:0<9}").parse().ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rclone_mtimes_are_read_to_the_nanosecond() {
        let t = parse_mtime("1701600000.123456789").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap(),
            Duration::new(1_701_600_000, 123_456_789)
        );
        let t = parse_mtime("1701600000.5").unwrap();
        assert_eq!(
            t.duration_since(SystemTime::UNIX_EPOCH).unwrap(),
            Duration::new(1_701_600_000, 500_000_000)
        );
        assert_eq!(
            parse_mtime("1701600000"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_701_600_000))
        );
        assert_eq!(parse_mtime("soon"), None);
        assert_eq!(parse_mtime("1.2e3"), None);
        let mut headers = hyper::HeaderMap::new();
        headers.insert(
            "last-modified",
            "Wed, 02 Dec 2026 10:00:00 GMT".parse().unwrap(),
        );
        let t = modification_time(&headers).unwrap();
        assert_eq!(
            chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339(),
            "2026-12-02T10:00:00+00:00"
        );
    }

    #[test]
    fn a_file_is_never_created_over_or_through_anything() {
        let dir = tempfile::tempdir().unwrap();
        let victim = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(victim.path().join("f"), dir.path().join("link")).unwrap();
        std::fs::write(dir.path().join("there"), "x").unwrap();
        let fd: OwnedFd = std::fs::File::open(dir.path()).unwrap().into();
        for name in ["link", "there"] {
            let err = create_file(&fd, name, None).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{name}");
        }
        assert!(
            !victim.path().join("f").exists(),
            "nothing through the symlink"
        );
        assert_eq!(std::fs::read(dir.path().join("there")).unwrap(), b"x");
        let mut file = create_file(&fd, "new", None).unwrap();
        file.write_all(b"y").unwrap();
        assert_eq!(std::fs::read(dir.path().join("new")).unwrap(), b"y");
    }

    #[test]
    fn a_failed_fetch_puts_the_mapping_dir_back() {
        let state = tempfile::tempdir().unwrap();
        // Missing: the fetch made `a/b`; undo removes `a`, the first it created.
        let created = first_missing(state.path(), "a/b");
        assert_eq!(created.as_deref(), Some(state.path().join("a").as_path()));
        std::fs::create_dir_all(state.path().join("a/b/c")).unwrap();
        std::fs::write(state.path().join("a/b/c/f"), "x").unwrap();
        undo(state.path(), "a/b", created.as_deref());
        assert!(!state.path().join("a").exists());
        // Empty: emptied, kept (it may be a bind-mount source).
        std::fs::create_dir(state.path().join("d")).unwrap();
        assert_eq!(first_missing(state.path(), "d"), None);
        std::fs::write(state.path().join("d/f"), "x").unwrap();
        undo(state.path(), "d", None);
        assert!(state.path().join("d").is_dir());
        assert_eq!(
            std::fs::read_dir(state.path().join("d")).unwrap().count(),
            0
        );
    }
}
