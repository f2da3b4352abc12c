//! Host-side tenant directories: creation with the right owner, secrets files,
//! and wiping that keeps bind mounts attached and never follows a tenant's symlink.
//!
//! Everything here is blocking I/O; async callers go through `spawn_blocking`.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::SystemTime;

use crate::runtime::spec::ContainerDirs;

/// `(uid, gid)` the tenant directories belong to; None = leave as root.
pub type Owner = Option<(u32, u32)>;

fn chown(path: &Path, owner: Owner) -> std::io::Result<()> {
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    }
    Ok(())
}

/// Creates the container's state, secrets and socket dirs: mode 0700, owned by the
/// workload's user.
pub fn create_dirs(dirs: &ContainerDirs, owner: Owner) -> std::io::Result<()> {
    for dir in dirs.all() {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        chown(dir, owner).map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot chown {} to {owner:?}: {e}", dir.display()),
            )
        })?;
    }
    Ok(())
}

/// Removes the container's dirs entirely (after the container is gone).
pub fn remove_dirs(dirs: &ContainerDirs) {
    for dir in dirs.all() {
        if let Err(e) = fs::remove_dir_all(dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove container dir");
            }
        }
    }
}

/// Empties `dir` in place: the directory itself (a bind-mount source) stays.
/// Symlinks are removed, never followed; `remove_dir_all` does not follow them either.
pub fn wipe_contents(dir: &Path) -> std::io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let meta = fs::symlink_metadata(&path)?;
        if meta.is_dir() {
            fs::remove_dir_all(&path)?;
        } else {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Is the directory empty (or absent)?
pub fn is_empty(dir: &Path) -> bool {
    fs::read_dir(dir)
        .map(|mut e| e.next().is_none())
        .unwrap_or(true)
}

/// Checks a secret's name: it becomes a file name.
pub fn validate_secret_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "secret name {name:?} is invalid: use 1-255 characters from A-Z a-z 0-9 _ - ., starting with a letter, digit or _"
        ))
    }
}

/// Replaces the secrets in `dir` with `secrets`: one file per key, mode 0400, owned
/// by the workload's user. Each file is written beside and renamed into place.
pub fn write_secrets(
    dir: &Path,
    secrets: &BTreeMap<String, String>,
    owner: Owner,
) -> std::io::Result<()> {
    // A unique temp name per write: the rename is atomic, so a reader sees the old
    // content or the new, never a partial file.
    for (name, value) in secrets {
        let tmp = dir.join(format!(".{name}.{:016x}.tmp", rand::random::<u64>()));
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o400)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(value.as_bytes())?;
        drop(f);
        chown(&tmp, owner)?;
        fs::rename(&tmp, dir.join(name))?;
    }
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !secrets.contains_key(name.as_ref()) {
            let path = entry.path();
            if fs::symlink_metadata(&path)?.is_dir() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
        }
    }
    Ok(())
}

/// Newest modification time of anything under `dir` (symlinks not followed).
/// Used to count a tenant's writes as activity without watching the files.
pub fn newest_mtime(dir: &Path) -> Option<SystemTime> {
    let mut newest = fs::symlink_metadata(dir).and_then(|m| m.modified()).ok();
    let mut stack = vec![dir.to_path_buf()];
    let mut budget = 100_000usize;
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            budget = budget.saturating_sub(1);
            if budget == 0 {
                return newest;
            }
            let Ok(meta) = entry.metadata() else { continue };
            if let Ok(m) = meta.modified() {
                newest = newest.max(Some(m));
            }
            if meta.is_dir() {
                stack.push(entry.path());
            }
        }
    }
    newest
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wipe_keeps_the_dir_and_never_follows_symlinks() {
        let outside = tempfile::tempdir().unwrap();
        let victim_file = outside.path().join("precious");
        fs::write(&victim_file, "keep").unwrap();
        let victim_dir = outside.path().join("dir");
        fs::create_dir(&victim_dir).unwrap();
        fs::write(victim_dir.join("inner"), "keep").unwrap();

        let state = tempfile::tempdir().unwrap();
        fs::create_dir(state.path().join("sub")).unwrap();
        fs::write(state.path().join("sub/f"), "x").unwrap();
        std::os::unix::fs::symlink(&victim_file, state.path().join("link-file")).unwrap();
        std::os::unix::fs::symlink(&victim_dir, state.path().join("link-dir")).unwrap();
        std::os::unix::fs::symlink(&victim_dir, state.path().join("sub/link-dir")).unwrap();

        wipe_contents(state.path()).unwrap();
        assert!(state.path().is_dir());
        assert!(is_empty(state.path()));
        assert_eq!(fs::read_to_string(&victim_file).unwrap(), "keep");
        assert_eq!(
            fs::read_to_string(victim_dir.join("inner")).unwrap(),
            "keep"
        );
    }

    #[test]
    fn secrets_are_replaced_with_mode_0400() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = BTreeMap::new();
        s.insert("A".to_string(), "1".to_string());
        s.insert("B".to_string(), "2".to_string());
        write_secrets(dir.path(), &s, None).unwrap();
        s.remove("B");
        s.insert("A".to_string(), "3".to_string());
        write_secrets(dir.path(), &s, None).unwrap();
        assert_eq!(fs::read_to_string(dir.path().join("A")).unwrap(), "3");
        assert!(!dir.path().join("B").exists());
        let mode = fs::metadata(dir.path().join("A"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
    }

    #[test]
    fn secret_names_cannot_escape() {
        for bad in ["", "..", ".x", "a/b", "../x", "a b"] {
            assert!(validate_secret_name(bad).is_err(), "{bad}");
        }
        assert!(validate_secret_name("API_KEY").is_ok());
    }
}
