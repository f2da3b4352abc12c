//! The local state cache: after a release's upload, the tenant's state is kept under
//! `DATA_DIR/state-cache/` with a manifest of what the remote holds; the tenant's next
//! claim moves it into the new container's state dir instead of downloading, if and
//! only if a fresh listing of the remote equals the manifest.
//!
//! What an entry is: one per (pool, tenant), `<root>/<hash of both>/` holding
//! `files/<mapping path>/<key>` and `manifest.json`: the sink's identity and, per
//! download mapping, every object under its prefix with size and MD5, as listed right
//! after the upload. Each file was copied out of the paused container and its MD5
//! computed over the bytes written to the cache, and the entry exists only if every
//! one equals the listing. So an entry's files are byte for byte what the remote held,
//! and a listing equal to the manifest (names, sizes, MD5 ETags: any outside write
//! changes one of them) means a download now would produce exactly these files.
//!
//! Never stale, never mixed, with the reasons:
//! - The remote is the truth, the cache only a copy of it that is checked on every
//!   use. Nothing is served without a listing: an endpoint that cannot be listed
//!   (down, slow, refusing) is a miss, and the claim then downloads as it would with
//!   no cache — which fails the claim just as today when S3 is down. Serving unchecked
//!   state could hand out what another node has since overwritten.
//! - Unverifiable remotes are not cached: a multipart ETag (not an MD5), a key rclone
//!   would re-encode on disk, a mapping with a filter pattern (its selection would
//!   have to match rclone's filter rules exactly), overlapping mappings.
//! - Files are copied, not moved, into the cache at release: a process of the old
//!   container may hold a file open and write to it after the container is unpaused
//!   for reuse, which would change a moved inode inside the cache. The copy gives
//!   them what a download would (owner, modes, modification time), so a restore
//!   *moves* them: the entry is renamed aside (out of the index and, for a restart,
//!   out of the cache), then each mapping's top-level names are renamed into the
//!   container's state dir — a handful of renames instead of a copy of 1,000 files.
//!   An entry so serves one claim; the release that ends it fills the cache again.
//!   No inode is ever in two containers: each was created by the fill's copy and
//!   is moved into exactly one.
//! - An entry is written in `.tmp-*` and renamed into place (a replaced entry is
//!   renamed to `.trash-*` first); this process may use it at once. Its manifest is
//!   written after the release answered, once one `syncfs` put the files on disk.
//!   At start anything starting with `.` or without a readable manifest is removed.
//!   So `kill -9` (or power loss) at any point leaves a complete entry, or none, or
//!   the previous one — and a previous one no longer matches the remote once
//!   anything newer was uploaded.
//! - No invalidation at claim time is needed: while the tenant holds a claim its
//!   container's state diverges, but the cache still equals the remote, which is what
//!   a download would give after a crash too. Every upload of the claim (periodic,
//!   manual, release) changes the listing, so the old entry stops matching.
//! - The cache is private: the root is 0700 and never mounted; restores create files
//!   with `O_NOFOLLOW`/`create_new` and directories only where nothing (not even a
//!   symlink) exists, and only into mapping dirs that are missing or empty.
//!
//! Size: bounded by `BOILERHOUSE_STATE_CACHE_MB`, least recently used entries evicted
//! first; an entry larger than the limit is not stored. `0` disables the cache (and
//! empties it at start).

use std::collections::{HashMap, HashSet};
use std::ffi::CString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex, MutexGuard};
use std::time::SystemTime;

use md5::{Digest as _, Md5};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::listing::Listing;
use super::local::{
    inspect_local, is_safe_tenant_id, normalize_mapping_path, open_dirs, plain_key, LocalState,
};
use super::{SyncEngine, SyncOp};
use crate::workload::spec::{SinkSpec, SyncMapping, SyncSpec};

const MANIFEST: &str = "manifest.json";
const FILES: &str = "files";
/// 2: files carry their final owner and modes (a restore only renames them).
const MANIFEST_VERSION: u32 = 2;

/// Where a claim's state came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RestoreSource {
    /// Nothing was restored (no sync, or no restore on claim).
    #[default]
    None,
    Cache,
    S3,
}

impl RestoreSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RestoreSource::None => "none",
            RestoreSource::Cache => "cache",
            RestoreSource::S3 => "s3",
        }
    }
}

/// Why a claim did not restore from the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MissReason {
    Disabled,
    /// The workload's mappings cannot be cached (see the module doc).
    Unsupported,
    /// No entry for this tenant.
    Absent,
    /// There was one; it was evicted to stay under the size limit.
    Evicted,
    /// The remote no longer holds what the entry holds.
    RemoteChanged,
    /// The remote could not be listed, so the entry could not be checked.
    CheckFailed,
    /// The new container's state dir was not empty.
    LocalNotEmpty,
    CopyFailed,
}

impl MissReason {
    pub fn as_str(self) -> &'static str {
        match self {
            MissReason::Disabled => "disabled",
            MissReason::Unsupported => "unsupported",
            MissReason::Absent => "absent",
            MissReason::Evicted => "evicted",
            MissReason::RemoteChanged => "remote_changed",
            MissReason::CheckFailed => "check_failed",
            MissReason::LocalNotEmpty => "local_not_empty",
            MissReason::CopyFailed => "copy_failed",
        }
    }
}

#[derive(Debug)]
pub struct Miss {
    pub reason: MissReason,
    pub detail: String,
}

impl Miss {
    fn new(reason: MissReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// What a restore from the cache or a fill copied.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Copied {
    pub bytes: u64,
    pub files: u64,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    version: u32,
    pool: String,
    tenant: String,
    /// Which remote the listing is of (endpoint, region, bucket, prefix, key id).
    sink: String,
    listing: Listing,
    bytes: u64,
    files: u64,
    /// The `(uid, gid)` the files and directories belong to (None: the daemon's).
    owner: Option<(u32, u32)>,
}

struct Meta {
    manifest: Arc<Manifest>,
    last_used: u64,
    /// Restores copying out of the entry right now; it is not evicted meanwhile.
    readers: usize,
}

#[derive(Default)]
struct Index {
    entries: HashMap<String, Meta>,
    evicted: HashSet<String>,
    tick: u64,
    bytes: u64,
}

pub struct StateCache {
    root: PathBuf,
    limit: u64,
    index: StdMutex<Index>,
}

impl StateCache {
    /// Opens (creating, 0700) the cache at `root`: removes incomplete entries and
    /// indexes the rest, oldest use first. `limit_bytes` 0 = disabled and emptied.
    pub fn open(root: PathBuf, limit_bytes: u64) -> std::io::Result<Self> {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(&root)?;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o700))?;
        let mut found = Vec::new();
        for entry in std::fs::read_dir(&root)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            let manifest = (limit_bytes > 0 && !name.starts_with('.'))
                .then(|| read_manifest(&path))
                .flatten();
            match manifest {
                Some((manifest, used)) => found.push((used, name, manifest)),
                None => remove_any(&path),
            }
        }
        found.sort_by_key(|(used, ..)| *used);
        let mut index = Index::default();
        for (_, name, manifest) in found {
            index.tick += 1;
            index.bytes += manifest.bytes;
            index.entries.insert(
                name,
                Meta {
                    manifest: Arc::new(manifest),
                    last_used: index.tick,
                    readers: 0,
                },
            );
        }
        let cache = Self {
            root,
            limit: limit_bytes,
            index: StdMutex::new(index),
        };
        crate::metrics::state_cache_size(cache.bytes());
        Ok(cache)
    }

    /// Can an entry be renamed into a state dir under `state_root`? Not across two
    /// mounts (`EXDEV`, even of one filesystem: e.g. `DATA_DIR` and `STATE_DIR`
    /// bind-mounted one by one into the daemon's container), where every hit would
    /// fail and download instead. Tries one empty file.
    pub fn can_move_into(&self, state_root: &Path) -> Result<(), String> {
        let name = format!(".probe-{:016x}", rand::random::<u64>());
        let (here, there) = (self.root.join(&name), state_root.join(&name));
        std::fs::File::create(&here).map_err(|e| format!("{}: {e}", here.display()))?;
        let moved = std::fs::rename(&here, &there);
        let _ = std::fs::remove_file(&here);
        let _ = std::fs::remove_file(&there);
        moved.map_err(|e| {
            format!(
                "the state cache cannot rename into BOILERHOUSE_STATE_DIR ({} → {}: {e}); \
                 returning tenants will download instead of using it. Put both on one \
                 mount (deploy/docker-compose.yml mounts /var/lib/boilerhouse once)",
                self.root.display(),
                state_root.display()
            )
        })
    }

    pub fn enabled(&self) -> bool {
        self.limit > 0
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Bytes held by complete entries.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    fn lock(&self) -> MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What the remote holds for the tenant's download mappings, listed as the cache
    /// compares it.
    pub async fn listing(
        &self,
        engine: &SyncEngine,
        spec: &SyncSpec,
        tenant: &str,
    ) -> Result<Listing, String> {
        let mappings = cacheable(spec)?;
        if let Some(listed) = engine.lister().list(&spec.sink, tenant, &mappings).await {
            return listed;
        }
        let mut listing = Vec::new();
        for mapping in mappings {
            let rel = normalize_mapping_path(&mapping.path)?;
            let objects = engine.lsjson(&spec.sink, tenant, &rel).await?;
            listing.push((rel, objects));
        }
        Ok(listing)
    }

    /// Moves the tenant's cached state into `state_dir` when the remote still holds
    /// exactly it (the entry serves this one claim and is gone after it); otherwise
    /// says why not, and `state_dir` is as it was.
    pub async fn restore(
        &self,
        engine: &SyncEngine,
        spec: &SyncSpec,
        pool: &str,
        tenant: &str,
        state_dir: &Path,
        run_as: Option<(u32, u32)>,
    ) -> Result<Copied, Miss> {
        if !self.enabled() {
            return Err(Miss::new(
                MissReason::Disabled,
                "BOILERHOUSE_STATE_CACHE_MB=0",
            ));
        }
        cacheable(spec).map_err(|e| Miss::new(MissReason::Unsupported, e))?;
        let name = entry_name(pool, tenant);
        let manifest = {
            let mut index = self.lock();
            let evicted = index.evicted.contains(&name);
            match index.entries.get_mut(&name) {
                Some(meta) => {
                    meta.readers += 1;
                    meta.manifest.clone()
                }
                None if evicted => {
                    return Err(Miss::new(
                        MissReason::Evicted,
                        "evicted to stay in the limit",
                    ))
                }
                None => return Err(Miss::new(MissReason::Absent, "no entry")),
            }
        };
        let started = std::time::Instant::now();
        let checked = self.check(engine, spec, tenant, &manifest).await;
        let taken = {
            let mut index = self.lock();
            if let Some(meta) = index.entries.get_mut(&name) {
                meta.readers -= 1;
            }
            match &checked {
                // It moves into the container (no copy: renames only), so it serves
                // this claim and no other; the release that ends the claim fills it
                // again.
                Ok(()) => Some(self.take_entry(&mut index, &name)),
                // It can never match again; free its space.
                Err(miss) if miss.reason == MissReason::RemoteChanged => {
                    let gone = self.take_entry(&mut index, &name);
                    drop(index);
                    if let Some(path) = gone {
                        remove_any(&path);
                    }
                    None
                }
                Err(_) => None,
            }
        };
        checked?;
        let list_ms = started.elapsed().as_secs_f64() * 1000.0;
        let entry = match taken.flatten() {
            // Only an entry renamed aside can be moved out of: one still under its own
            // name would be indexed again after a crash with half its files gone.
            Some(path) if path != self.root.join(&name) => path,
            Some(path) => {
                remove_any(&path);
                return Err(Miss::new(
                    MissReason::CopyFailed,
                    "the entry could not be set aside",
                ));
            }
            None => {
                return Err(Miss::new(
                    MissReason::Evicted,
                    "evicted while it was checked",
                ))
            }
        };
        let state_dir = state_dir.to_owned();
        let moved = tokio::task::spawn_blocking(move || {
            let moved = move_into_container(&entry, &state_dir, &manifest, run_as);
            remove_any(&entry);
            moved
        })
        .await
        .map_err(|e| Miss::new(MissReason::CopyFailed, e.to_string()))??;
        tracing::info!(
            tenant,
            files = moved.files,
            bytes = moved.bytes,
            list_ms,
            total_ms = started.elapsed().as_secs_f64() * 1000.0,
            "restored from the state cache"
        );
        Ok(moved)
    }

    /// Does the remote hold exactly what the entry holds?
    async fn check(
        &self,
        engine: &SyncEngine,
        spec: &SyncSpec,
        tenant: &str,
        manifest: &Manifest,
    ) -> Result<(), Miss> {
        if manifest.sink != sink_identity(&spec.sink, tenant) {
            return Err(Miss::new(
                MissReason::RemoteChanged,
                "the workload's sink changed",
            ));
        }
        let listing = self
            .listing(engine, spec, tenant)
            .await
            .map_err(|e| Miss::new(MissReason::CheckFailed, e))?;
        if listing != manifest.listing {
            return Err(Miss::new(
                MissReason::RemoteChanged,
                describe_difference(&manifest.listing, &listing),
            ));
        }
        Ok(())
    }

    /// Stores the tenant's state from `state_dir` (its container paused, its upload
    /// done) if every file equals `listing`, taken after the upload, owned by
    /// `run_as` as a download would make them. Evicts the least recently used
    /// entries to stay under the limit.
    pub async fn store(
        self: &Arc<Self>,
        spec: &SyncSpec,
        pool: &str,
        tenant: &str,
        state_dir: &Path,
        listing: Listing,
        run_as: Option<(u32, u32)>,
    ) -> Result<Copied, String> {
        if !self.enabled() {
            return Err("the state cache is disabled".into());
        }
        if !is_safe_tenant_id(tenant) {
            return Err(format!("tenant id {tenant:?} cannot be cached"));
        }
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            pool: pool.to_owned(),
            tenant: tenant.to_owned(),
            sink: sink_identity(&spec.sink, tenant),
            bytes: listing.iter().flat_map(|(_, o)| o).map(|o| o.size).sum(),
            files: listing.iter().map(|(_, o)| o.len() as u64).sum(),
            listing,
            owner: run_as,
        };
        if manifest.bytes > self.limit {
            return Err(format!(
                "{} bytes exceed the cache's limit of {} bytes",
                manifest.bytes, self.limit
            ));
        }
        let (cache, state_dir) = (self.clone(), state_dir.to_owned());
        let (copied, durable) =
            tokio::task::spawn_blocking(move || cache.fill(manifest, &state_dir))
                .await
                .map_err(|e| e.to_string())??;
        // Flushing takes longer than the copy (a `syncfs` waits for everything the
        // machine wrote meanwhile); the release does not wait for it.
        let tenant = tenant.to_owned();
        tokio::task::spawn_blocking(move || {
            let started = std::time::Instant::now();
            match durable.persist() {
                Ok(()) => tracing::debug!(
                    tenant,
                    flush_ms = started.elapsed().as_secs_f64() * 1000.0,
                    "state cache entry flushed"
                ),
                Err(e) => {
                    tracing::warn!(tenant, error = %e, "a state cache entry could not be flushed; it is dropped at the next start")
                }
            }
        });
        Ok(copied)
    }

    /// Copies the files into a new entry and installs it (usable at once by this
    /// process); what it returns writes the manifest once the files are on disk.
    fn fill(&self, manifest: Manifest, state_dir: &Path) -> Result<(Copied, Unflushed), String> {
        let name = entry_name(&manifest.pool, &manifest.tenant);
        let tmp = self
            .root
            .join(format!(".tmp-{name}-{:016x}", rand::random::<u64>()));
        let result = (|| {
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&tmp)
                .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
            let started = std::time::Instant::now();
            let copied = copy_in(
                state_dir,
                &tmp.join(FILES),
                &manifest.listing,
                manifest.owner,
            )?;
            let copy_ms = started.elapsed().as_secs_f64() * 1000.0;
            let json = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
            tracing::info!(
                tenant = %manifest.tenant,
                files = copied.files,
                bytes = copied.bytes,
                copy_ms,
                "state cache filled"
            );
            // The entry's own directory, wherever it is renamed to later: the
            // manifest goes into this one, never into a newer entry of the tenant.
            let dir = std::fs::File::options()
                .read(true)
                .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
                .open(&tmp)
                .map_err(|e| format!("{}: {e}", tmp.display()))?;
            Ok((copied, Unflushed { dir, json }))
        })();
        let (copied, unflushed) = match result {
            Ok(c) => c,
            Err(e) => {
                remove_any(&tmp);
                return Err(e);
            }
        };
        let final_path = self.root.join(&name);
        let mut trash = Vec::new();
        {
            let mut index = self.lock();
            trash.extend(self.take_entry(&mut index, &name));
            while index.bytes + manifest.bytes > self.limit {
                let victim = index
                    .entries
                    .iter()
                    .filter(|(_, m)| m.readers == 0)
                    .min_by_key(|(_, m)| m.last_used)
                    .map(|(n, _)| n.clone());
                let Some(victim) = victim else { break };
                trash.extend(self.take_entry(&mut index, &victim));
                index.evicted.insert(victim);
            }
            if index.bytes + manifest.bytes > self.limit {
                drop(index);
                remove_any(&tmp);
                trash.iter().for_each(|p| remove_any(p));
                return Err("entries in use leave no room".into());
            }
            if let Err(e) = std::fs::rename(&tmp, &final_path) {
                drop(index);
                remove_any(&tmp);
                trash.iter().for_each(|p| remove_any(p));
                return Err(format!("cannot install the entry: {e}"));
            }
            index.tick += 1;
            index.bytes += manifest.bytes;
            index.evicted.remove(&name);
            let last_used = index.tick;
            index.entries.insert(
                name,
                Meta {
                    manifest: Arc::new(manifest),
                    last_used,
                    readers: 0,
                },
            );
            crate::metrics::state_cache_size(index.bytes);
        }
        trash.iter().for_each(|p| remove_any(p));
        Ok((copied, unflushed))
    }

    /// Forgets an entry and moves its directory aside (to be removed outside the
    /// lock); the path returned is the moved one.
    fn take_entry(&self, index: &mut Index, name: &str) -> Option<PathBuf> {
        let meta = index.entries.remove(name)?;
        index.bytes = index.bytes.saturating_sub(meta.manifest.bytes);
        crate::metrics::state_cache_size(index.bytes);
        let trash = self
            .root
            .join(format!(".trash-{name}-{:016x}", rand::random::<u64>()));
        match std::fs::rename(self.root.join(name), &trash) {
            Ok(()) => Some(trash),
            Err(_) => Some(self.root.join(name)),
        }
    }
}

/// The download mappings, when the cache can stand in for them: no filter pattern,
/// none inside another.
fn cacheable(spec: &SyncSpec) -> Result<Vec<&SyncMapping>, String> {
    let mappings: Vec<&SyncMapping> = spec
        .mappings
        .iter()
        .filter(|m| SyncOp::Download.applies_to(m.direction))
        .collect();
    if mappings.is_empty() {
        return Err("no mapping downloads".into());
    }
    let mut rels = Vec::new();
    for m in &mappings {
        if m.pattern.is_some() {
            return Err(format!("mapping {} has a pattern", m.path));
        }
        rels.push(normalize_mapping_path(&m.path)?);
    }
    for (i, a) in rels.iter().enumerate() {
        for b in &rels[i + 1..] {
            let inside =
                |x: &str, y: &str| x.is_empty() || y == x || y.starts_with(&format!("{x}/"));
            if inside(a, b) || inside(b, a) {
                return Err(format!("mappings {a:?} and {b:?} overlap"));
            }
        }
    }
    Ok(mappings)
}

fn entry_name(pool: &str, tenant: &str) -> String {
    let digest = Sha256::new()
        .chain_update(pool.as_bytes())
        .chain_update([0])
        .chain_update(tenant.as_bytes())
        .finalize();
    hex::encode(&digest[..16])
}

fn sink_identity(sink: &SinkSpec, tenant: &str) -> String {
    format!(
        "{}|{}|{}|{}|{}",
        sink.endpoint.as_deref().unwrap_or(""),
        sink.region.as_deref().unwrap_or(""),
        sink.bucket,
        sink.prefix.replace("${tenantId}", tenant),
        sink.access_key_id.as_deref().unwrap_or(""),
    )
}

fn describe_difference(cached: &Listing, now: &Listing) -> String {
    for ((rel, a), (_, b)) in cached.iter().zip(now) {
        let first = a
            .iter()
            .zip(b)
            .find(|(x, y)| x != y)
            .map(|(x, _)| x.key.clone());
        if a.len() != b.len() || first.is_some() {
            return format!(
                "mapping /{rel}: {} objects cached, {} remote{}",
                a.len(),
                b.len(),
                first
                    .map(|k| format!(", first difference at {k}"))
                    .unwrap_or_default()
            );
        }
    }
    "the mappings differ".into()
}

fn read_manifest(dir: &Path) -> Option<(Manifest, SystemTime)> {
    let path = dir.join(MANIFEST);
    let used = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
    let manifest: Manifest = serde_json::from_slice(&std::fs::read(&path).ok()?).ok()?;
    (manifest.version == MANIFEST_VERSION && dir.join(FILES).is_dir()).then_some((manifest, used))
}

fn remove_any(path: &Path) {
    let result = match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(_) => return,
    };
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "cannot remove a state cache entry");
    }
}

/// Opens `base/rel/key` for reading without following a symlink anywhere below `base`.
fn open_no_follow(base: &Path, rel: &str, key: &str) -> Result<(std::fs::File, PathBuf), String> {
    let mut path = base.to_owned();
    let parts: Vec<&str> = rel
        .split('/')
        .chain(key.split('/'))
        .filter(|p| !p.is_empty())
        .collect();
    for (i, part) in parts.iter().enumerate() {
        path.push(part);
        let meta =
            std::fs::symlink_metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let last = i + 1 == parts.len();
        if meta.file_type().is_symlink() || (last && !meta.is_file()) || (!last && !meta.is_dir()) {
            return Err(format!(
                "{} is not a plain file or directory",
                path.display()
            ));
        }
    }
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((file, path))
}

/// Creates the directories of `rel/key` below `base` (as a download would: default
/// mode, the workload's owner when root), refusing anything but a real directory
/// on the way. Returns the file's path.
fn make_parents(
    base: &Path,
    rel: &str,
    key: &str,
    run_as: Option<(u32, u32)>,
) -> Result<PathBuf, String> {
    let parts: Vec<&str> = rel
        .split('/')
        .chain(key.split('/'))
        .filter(|p| !p.is_empty())
        .collect();
    let mut path = base.to_owned();
    for part in &parts[..parts.len() - 1] {
        path.push(part);
        match std::fs::symlink_metadata(&path) {
            Ok(m) if m.is_dir() && !m.file_type().is_symlink() => continue,
            Ok(_) => return Err(format!("{} is in the way", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            // Another copying thread made it; it is checked like any existing one.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                match std::fs::symlink_metadata(&path) {
                    Ok(m) if m.is_dir() && !m.file_type().is_symlink() => continue,
                    _ => return Err(format!("{} is in the way", path.display())),
                }
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
                .map_err(|e| format!("cannot chown {}: {e}", path.display()))?;
        }
    }
    path.push(parts[parts.len() - 1]);
    Ok(path)
}

/// Fill: copies every listed object from the paused container's state dir into a
/// new entry, hashing the bytes written; any difference from the listing fails it.
/// Files and directories get what a download would give them (modes 0666 and 0777
/// less the umask, `run_as` as owner, the file's modification time), so that a
/// restore only has to rename them into place. The entry's root stays 0700.
fn copy_in(
    state_dir: &Path,
    files: &Path,
    listing: &Listing,
    run_as: Option<(u32, u32)>,
) -> Result<Copied, String> {
    use std::os::unix::fs::fchown;
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(files)
        .map_err(|e| format!("cannot create {}: {e}", files.display()))?;
    let mut copied = Copied::default();
    let mut buf = vec![0u8; 256 * 1024];
    for (rel, objects) in listing {
        for object in objects {
            if !plain_key(&object.key) {
                return Err(format!(
                    "object {:?} has a name rclone would encode",
                    object.key
                ));
            }
            let (mut src, path) = open_no_follow(state_dir, rel, &object.key)?;
            let mtime = src.metadata().and_then(|m| m.modified()).ok();
            let dst_path = make_parents(files, rel, &object.key, run_as)?;
            let mut dst = std::fs::File::options()
                .write(true)
                .create_new(true)
                .mode(0o666)
                .open(&dst_path)
                .map_err(|e| format!("{}: {e}", dst_path.display()))?;
            if let Some((uid, gid)) = run_as {
                fchown(&dst, Some(uid), Some(gid))
                    .map_err(|e| format!("cannot chown {}: {e}", dst_path.display()))?;
            }
            let (mut md5, mut size) = (Md5::new(), 0u64);
            loop {
                let n = src
                    .read(&mut buf)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                if n == 0 {
                    break;
                }
                md5.update(&buf[..n]);
                dst.write_all(&buf[..n])
                    .map_err(|e| format!("{}: {e}", dst_path.display()))?;
                size += n as u64;
            }
            if size != object.size || hex::encode(md5.finalize()) != object.md5 {
                return Err(format!(
                    "{} differs from what the remote holds (the upload did not take it as it is now)",
                    path.display()
                ));
            }
            if let Some(t) = mtime {
                let _ = dst.set_modified(t);
            }
            copied.bytes += size;
            copied.files += 1;
        }
    }
    Ok(copied)
}

/// Restore: moves an entry's files (set aside at `entry`, already in their final
/// form) into a container's state dir by renaming each mapping's top-level names —
/// a handful of renames instead of a copy of every file. Mapping dirs must be
/// missing or empty; anything the container put in the way fails the restore,
/// which then leaves the mapping dirs empty. The state dir is the container's to
/// write, so every step below it goes through directory descriptors opened without
/// following symlinks: a symlink planted meanwhile cannot redirect a rename.
fn move_into_container(
    entry: &Path,
    state_dir: &Path,
    manifest: &Manifest,
    run_as: Option<(u32, u32)>,
) -> Result<Copied, Miss> {
    for (rel, _) in &manifest.listing {
        match inspect_local(state_dir, rel) {
            Ok(LocalState::Missing | LocalState::Empty) => {}
            Ok(LocalState::NonEmpty) => {
                return Err(Miss::new(
                    MissReason::LocalNotEmpty,
                    format!("{} is not empty", state_dir.join(rel).display()),
                ))
            }
            Err(e) => return Err(Miss::new(MissReason::LocalNotEmpty, e)),
        }
    }
    let files = entry.join(FILES);
    let moved = (|| {
        if manifest.owner != run_as {
            if let Some(owner) = run_as {
                chown_tree(&files, owner)?;
            }
        }
        for (rel, objects) in &manifest.listing {
            // Like a download of an empty prefix: nothing, not even the directory.
            if objects.is_empty() {
                continue;
            }
            let dst = open_dirs(state_dir, rel, run_as)?;
            let src = files.join(rel);
            for child in std::fs::read_dir(&src).map_err(|e| format!("{}: {e}", src.display()))? {
                let child = child.map_err(|e| format!("{}: {e}", src.display()))?;
                rename_into(&child.path(), &dst, &child.file_name())?;
            }
        }
        Ok(Copied {
            bytes: manifest.bytes,
            files: manifest.files,
        })
    })();
    moved.map_err(|e: String| {
        // Leave the mapping dirs empty (never through a symlink put in their place).
        for (rel, _) in &manifest.listing {
            let dir = state_dir.join(rel);
            if std::fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir()) {
                let _ = crate::fsutil::wipe_contents(&dir);
            }
        }
        Miss::new(MissReason::CopyFailed, e)
    })
}

/// Renames `src` (inside the private cache) to `name` in the directory `dst`, never
/// over anything already there.
fn rename_into(src: &Path, dst: &OwnedFd, name: &std::ffi::OsStr) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let from = CString::new(src.as_os_str().as_bytes())
        .map_err(|_| format!("{}: a NUL byte", src.display()))?;
    let to = CString::new(name.as_bytes()).map_err(|_| format!("{name:?}: a NUL byte"))?;
    // SAFETY: NUL-terminated paths and a valid descriptor; no memory is shared.
    let renamed = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            dst.as_raw_fd(),
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if renamed != 0 {
        return Err(format!(
            "cannot move {} into the state dir as {name:?}: {}",
            src.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Gives everything below `dir` (the private cache, no symlinks in it) to `owner`:
/// the workload's user changed since the entry was filled.
fn chown_tree(dir: &Path, (uid, gid): (u32, u32)) -> Result<(), String> {
    for child in std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))? {
        let path = child.map_err(|e| format!("{}: {e}", dir.display()))?.path();
        std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
            .map_err(|e| format!("cannot chown {}: {e}", path.display()))?;
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            chown_tree(&path, (uid, gid))?;
        }
    }
    Ok(())
}

/// A new entry whose files may not be on disk yet, and the manifest that says they
/// are: written only after one `syncfs`, so an entry found at start (one with a
/// manifest) has every file complete even after a power loss. One killed before
/// the manifest lacks it and is removed at start: a miss, never a half entry.
struct Unflushed {
    dir: std::fs::File,
    json: Vec<u8>,
}

impl Unflushed {
    fn persist(self) -> Result<(), String> {
        flush_filesystem(&self.dir)?;
        let name = CString::new(MANIFEST).expect("no NUL in the name");
        // SAFETY: a valid directory descriptor and a NUL-terminated name; the result
        // is checked before it is owned.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600 as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(format!(
                "cannot write the manifest: {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: `fd` is a new descriptor nobody else owns.
        let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
        f.write_all(&self.json)
            .and_then(|()| f.sync_all())
            .and_then(|()| self.dir.sync_all())
            .map_err(|e| format!("cannot write the manifest: {e}"))
    }
}

/// Flushes the files of a new entry before its manifest is written, so a manifest
/// never outlives its files on a power loss. One `syncfs` instead of a fsync each.
fn flush_filesystem(dir: &std::fs::File) -> Result<(), String> {
    // SAFETY: syncfs takes a valid open descriptor and has no other precondition.
    if unsafe { libc::syncfs(dir.as_raw_fd()) } != 0 {
        return Err(format!("syncfs: {}", std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::listing::RemoteObject;
    use crate::workload::spec::{SyncDirection, SyncMode, SyncPolicy};

    fn spec(mappings: &[(&str, Option<&str>)]) -> SyncSpec {
        SyncSpec {
            sink: SinkSpec {
                kind: "s3".into(),
                bucket: "b".into(),
                region: None,
                endpoint: Some("http://127.0.0.1:1".into()),
                access_key_id: Some("k".into()),
                secret_access_key: Some("s".into()),
                prefix: "t/${tenantId}/".into(),
                rclone_flags: vec![],
            },
            mappings: mappings
                .iter()
                .map(|(path, pattern)| SyncMapping {
                    path: (*path).into(),
                    direction: SyncDirection::Bidirectional,
                    mode: SyncMode::Sync,
                    pattern: pattern.map(Into::into),
                })
                .collect(),
            policy: SyncPolicy::default(),
        }
    }

    fn listing(files: &[(&str, &[u8])]) -> Listing {
        vec![(
            String::new(),
            files
                .iter()
                .map(|(k, c)| RemoteObject {
                    key: (*k).into(),
                    size: c.len() as u64,
                    md5: hex::encode(Md5::digest(c)),
                })
                .collect(),
        )]
    }

    #[test]
    fn only_plain_disjoint_mappings_are_cacheable() {
        assert!(cacheable(&spec(&[("/", None)])).is_ok());
        assert!(cacheable(&spec(&[("/a", None), ("/ab", None)])).is_ok());
        assert!(cacheable(&spec(&[("/", Some("*.db"))])).is_err());
        assert!(cacheable(&spec(&[("/a", None), ("/a/b", None)])).is_err());
        assert!(cacheable(&spec(&[("/", None), ("/x", None)])).is_err());
    }

    #[test]
    fn rclone_encoded_names_are_not_plain() {
        assert!(plain_key("a/b.txt") && plain_key("é ü/x"));
        for bad in [
            "",
            "a//b",
            "./a",
            "a/..",
            "a\\b",
            "a\u{1}",
            "a\u{FF0F}b",
            "x\u{201B}",
        ] {
            assert!(!plain_key(bad), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn fill_checks_every_file_and_eviction_keeps_the_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        std::fs::create_dir_all(state.join("d")).unwrap();
        std::fs::write(state.join("d/a"), b"hello").unwrap();
        let cache = Arc::new(StateCache::open(tmp.path().join("cache"), 12).unwrap());
        let s = spec(&[("/", None)]);
        let good = listing(&[("d/a", b"hello")]);
        assert_eq!(
            cache
                .store(&s, "p", "t1", &state, good.clone(), None)
                .await
                .unwrap(),
            Copied { bytes: 5, files: 1 }
        );
        // A file that changed after the listing: no entry.
        let stale = listing(&[("d/a", b"hellO")]);
        assert!(cache
            .store(&s, "p", "t2", &state, stale, None)
            .await
            .is_err());
        assert_eq!(cache.bytes(), 5);
        cache
            .store(&s, "p", "t3", &state, good.clone(), None)
            .await
            .unwrap();
        // A third entry does not fit in 12 bytes: the least recently used goes.
        cache
            .store(&s, "p", "t4", &state, good.clone(), None)
            .await
            .unwrap();
        assert_eq!(cache.bytes(), 10);
        {
            let index = cache.lock();
            assert!(index.evicted.contains(&entry_name("p", "t1")));
            assert!(index.entries.contains_key(&entry_name("p", "t4")));
        }
        // Manifests are written once the files are flushed, after `store` returned.
        for tenant in ["t3", "t4"] {
            let manifest = tmp
                .path()
                .join("cache")
                .join(entry_name("p", tenant))
                .join(MANIFEST);
            for _ in 0..500 {
                if manifest.exists() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            assert!(manifest.exists(), "{tenant}'s manifest was never written");
        }
        // Reopening keeps complete entries and drops leftovers.
        std::fs::create_dir(tmp.path().join("cache/.tmp-x")).unwrap();
        std::fs::create_dir(tmp.path().join("cache/nomanifest")).unwrap();
        let again = StateCache::open(tmp.path().join("cache"), 12).unwrap();
        assert_eq!(again.bytes(), 10);
        let names: Vec<_> = std::fs::read_dir(tmp.path().join("cache"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
        // Disabled: emptied.
        let off = StateCache::open(tmp.path().join("cache"), 0).unwrap();
        assert_eq!(off.bytes(), 0);
        assert!(crate::fsutil::is_empty(off.root()));
    }

    #[test]
    fn a_state_dir_on_another_mount_is_named_at_start() {
        let data = tempfile::tempdir().unwrap();
        let cache = StateCache::open(data.path().join("cache"), 1 << 20).unwrap();
        let states = tempfile::tempdir().unwrap();
        cache.can_move_into(states.path()).expect("one filesystem");
        // /dev/shm is a tmpfs: another mount, as separate bind mounts would be.
        let elsewhere = tempfile::tempdir_in("/dev/shm").unwrap();
        let err = cache.can_move_into(elsewhere.path()).unwrap_err();
        assert!(
            err.contains("BOILERHOUSE_STATE_DIR") && err.contains("one mount"),
            "{err}"
        );
        for dir in [
            data.path().join("cache"),
            states.path().into(),
            elsewhere.path().into(),
        ] {
            let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
            assert!(left.is_empty(), "the probe is gone from {}", dir.display());
        }
    }

    #[test]
    fn a_restore_moves_the_entry_and_refuses_a_symlink_in_the_way() {
        let tmp = tempfile::tempdir().unwrap();
        let entry = tmp.path().join("entry");
        std::fs::create_dir_all(entry.join(FILES).join("m/d")).unwrap();
        std::fs::write(entry.join(FILES).join("m/d/a"), b"hello").unwrap();
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            pool: "p".into(),
            tenant: "t".into(),
            sink: String::new(),
            listing: vec![("m".into(), listing(&[("d/a", b"hello")]).remove(0).1)],
            bytes: 5,
            files: 1,
            owner: None,
        };
        // A symlink where the mapping dir goes: refused, nothing written through it.
        let evil = tmp.path().join("evil");
        let target = tmp.path().join("target");
        std::fs::create_dir_all(&evil).unwrap();
        std::fs::create_dir_all(&target).unwrap();
        std::os::unix::fs::symlink(&target, evil.join("m")).unwrap();
        assert!(open_dirs(&evil, "m", None)
            .unwrap_err()
            .contains("in the way"));
        assert!(move_into_container(&entry, &evil, &manifest, None).is_err());
        assert!(crate::fsutil::is_empty(&target));
        // Something the container put at a moved name is never replaced.
        let out = tmp.path().join("out");
        std::fs::create_dir_all(out.join("m")).unwrap();
        let dst = open_dirs(&out, "m", None).unwrap();
        std::fs::write(out.join("m/x"), b"theirs").unwrap();
        std::fs::write(tmp.path().join("x"), b"ours").unwrap();
        assert!(rename_into(&tmp.path().join("x"), &dst, "x".as_ref())
            .unwrap_err()
            .contains("File exists"));
        assert_eq!(std::fs::read(out.join("m/x")).unwrap(), b"theirs");
        // An empty or missing mapping dir: the entry's files move in.
        let fresh = tmp.path().join("fresh");
        std::fs::create_dir(&fresh).unwrap();
        let moved = move_into_container(&entry, &fresh, &manifest, None).unwrap();
        assert_eq!(moved, Copied { bytes: 5, files: 1 });
        assert_eq!(std::fs::read(fresh.join("m/d/a")).unwrap(), b"hello");
        assert!(!entry.join(FILES).join("m/d").exists());
    }
}
