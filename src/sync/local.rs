//! The local side: tenant ids and mapping paths as storage paths, the state of a
//! mapping's local directory (never through a symlink), and the identity rclone runs as.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use super::rclone::REMOTE;
use crate::workload::spec::SinkSpec;

/// Same rule as the API's tenant ids; checked again because the id becomes a key prefix.
pub(super) fn is_safe_tenant_id(id: &str) -> bool {
    let mut chars = id.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    first_ok
        && id.len() <= 128
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// `"/"`, `""` → `""` (the whole volume); `"/a//b/"` → `"a/b"`. `..` is refused (the
/// workload loader refuses it too).
pub(super) fn normalize_mapping_path(path: &str) -> Result<String, String> {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(format!("mapping path {path:?} must not contain `..`"));
    }
    Ok(parts.join("/"))
}

pub(super) fn local_path(state_dir: &Path, rel: &str) -> PathBuf {
    match rel {
        "" => state_dir.to_owned(),
        rel => state_dir.join(rel),
    }
}

/// `boilerhouse:<bucket>/<prefix with ${tenantId} replaced>/<mapping path>/`, without
/// empty segments (so no double slashes, which S3 would keep as part of the key).
///
/// The trailing slash tells rclone the path is a directory. Without it rclone first
/// HEADs the path to see whether it is a file, and when the endpoint is unreachable
/// 1.75 reports the misleading "is a file not a directory" instead of the real error.
pub(super) fn remote_path(sink: &SinkSpec, tenant: &str, rel: &str) -> String {
    let prefix = sink.prefix.replace("${tenantId}", tenant);
    let key = [sink.bucket.as_str(), prefix.as_str(), rel]
        .iter()
        .flat_map(|s| s.split('/'))
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("/");
    format!("{REMOTE}:{key}/")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum LocalState {
    Missing,
    Empty,
    NonEmpty,
}

/// Looks at a mapping's local directory without following any symlink below the state
/// directory. Blocking.
pub(super) fn inspect_local(state_dir: &Path, rel: &str) -> Result<LocalState, String> {
    use std::io::ErrorKind::NotFound;
    match std::fs::metadata(state_dir) {
        Err(e) if e.kind() == NotFound => return Ok(LocalState::Missing),
        Err(e) => return Err(format!("cannot read {}: {e}", state_dir.display())),
        Ok(m) if !m.is_dir() => return Err(format!("{} is not a directory", state_dir.display())),
        Ok(_) => {}
    }
    let mut path = state_dir.to_owned();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        path.push(part);
        match std::fs::symlink_metadata(&path) {
            Err(e) if e.kind() == NotFound => return Ok(LocalState::Missing),
            Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
            Ok(m) if m.file_type().is_symlink() => {
                return Err(format!(
                    "{} is a symbolic link; refusing to follow it",
                    path.display()
                ))
            }
            Ok(m) if !m.is_dir() => {
                return Err(format!(
                    "{} is not a directory (mapping paths name directories)",
                    path.display()
                ))
            }
            Ok(_) => {}
        }
    }
    let mut entries =
        std::fs::read_dir(&path).map_err(|e| format!("cannot list {}: {e}", path.display()))?;
    Ok(match entries.next() {
        None => LocalState::Empty,
        Some(_) => LocalState::NonEmpty,
    })
}

/// The identity rclone takes for a workload owned by `owner`: the owner when the
/// daemon is root (it can switch), None = the daemon's own.
pub fn run_as(owner: Option<(u32, u32)>) -> Option<(u32, u32)> {
    owner.filter(|_| running_as_root())
}

pub(super) fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// A key rclone would write under the same name: plain segments, no control
/// characters, none of the characters rclone's encoders substitute.
pub(super) fn plain_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .split('/')
            .all(|s| !s.is_empty() && s != "." && s != "..")
        && key.chars().all(|c| {
            !c.is_control()
                && c != '\\'
                && !matches!(c, '\u{FF00}'..='\u{FFEF}' | '\u{2400}'..='\u{243F}' | '\u{201B}')
        })
}

/// Opens `base/rel` as a directory, creating what is missing (mode 0777 less the
/// umask, owned by `run_as`, as a download makes them), never following a symlink.
pub(super) fn open_dirs(
    base: &Path,
    rel: &str,
    run_as: Option<(u32, u32)>,
) -> Result<OwnedFd, String> {
    let mut dir: OwnedFd = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(base)
        .map_err(|e| format!("{}: {e}", base.display()))?
        .into();
    let mut path = base.to_owned();
    for part in rel.split('/').filter(|p| !p.is_empty()) {
        path.push(part);
        let name = CString::new(part).map_err(|_| format!("{}: a NUL byte", path.display()))?;
        let open = |dir: &OwnedFd| {
            // SAFETY: a valid descriptor and a NUL-terminated name; the result is
            // checked before it is owned.
            let fd = unsafe {
                libc::openat(
                    dir.as_raw_fd(),
                    name.as_ptr(),
                    libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                )
            };
            // SAFETY: `fd` is a new descriptor nobody else owns.
            (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
        };
        let next = match open(&dir) {
            Some(fd) => fd,
            None => {
                // SAFETY: as above.
                let made = unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o777) } == 0;
                let err = std::io::Error::last_os_error();
                if !made && err.raw_os_error() != Some(libc::EEXIST) {
                    return Err(format!("cannot create {}: {err}", path.display()));
                }
                let fd = open(&dir).ok_or_else(|| format!("{} is in the way", path.display()))?;
                if let (true, Some((uid, gid))) = (made, run_as) {
                    std::os::unix::fs::fchown(&fd, Some(uid), Some(gid))
                        .map_err(|e| format!("cannot chown {}: {e}", path.display()))?;
                }
                fd
            }
        };
        dir = next;
    }
    Ok(dir)
}
