//! Durable claim records: one JSON file per claim under `<DATA_DIR>/claims/<pool>/<tenant>.json`.
//!
//! A record is written (temp file, fsync, rename, fsync of the directory) before a
//! claim is answered and removed once the tenant's state is uploaded, so a
//! `kill -9` at any moment loses no claim. One file per claim means claims of
//! different tenants never contend for a lock.

use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ClaimRecord {
    pub tenant_id: String,
    pub pool_id: String,
    pub container_id: String,
    pub claimed_at: DateTime<Utc>,
    #[serde(default)]
    pub metadata: Option<serde_json::Value>,
}

#[derive(Debug, Clone)]
pub struct Ledger {
    dir: PathBuf,
}

impl Ledger {
    /// Opens (creating) the ledger under `data_dir`.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join("claims");
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    fn path(&self, pool: &str, tenant: &str) -> PathBuf {
        // Pool and tenant ids are validated newtypes: no separators, never `..`.
        self.dir.join(pool).join(format!("{tenant}.json"))
    }

    /// Writes the record durably; returns once it is on disk.
    pub async fn put(&self, record: &ClaimRecord) -> std::io::Result<()> {
        let path = self.path(&record.pool_id, &record.tenant_id);
        let bytes = serde_json::to_vec_pretty(record)?;
        tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
            .await
            .map_err(std::io::Error::other)?
    }

    /// Removes the record durably; absent is fine.
    pub async fn remove(&self, pool: &str, tenant: &str) -> std::io::Result<()> {
        let path = self.path(pool, tenant);
        tokio::task::spawn_blocking(move || {
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(e),
            }
            if let Some(parent) = path.parent() {
                std::fs::File::open(parent)?.sync_all()?;
            }
            Ok(())
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Every record on disk. Unreadable files are reported, not fatal.
    pub fn load_all(&self) -> (Vec<ClaimRecord>, Vec<String>) {
        let mut records = Vec::new();
        let mut problems = Vec::new();
        let Ok(pools) = std::fs::read_dir(&self.dir) else {
            return (records, problems);
        };
        for pool in pools.flatten() {
            let Ok(files) = std::fs::read_dir(pool.path()) else {
                continue;
            };
            for file in files.flatten() {
                let path = file.path();
                if path.extension().and_then(|e| e.to_str()) != Some("json") {
                    continue;
                }
                match std::fs::read(&path)
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                {
                    Ok(r) => records.push(r),
                    Err(e) => problems.push(format!("{}: {e}", path.display())),
                }
            }
        }
        (records, problems)
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let parent = path
        .parent()
        .ok_or_else(|| std::io::Error::other("record path has no parent"))?;
    std::fs::create_dir_all(parent)?;
    let tmp = parent.join(format!(
        ".{}.tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("record")
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(parent)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn records_survive_reopening_and_can_be_removed() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = Ledger::open(dir.path()).unwrap();
        let rec = ClaimRecord {
            tenant_id: "alice".into(),
            pool_id: "web".into(),
            container_id: "web-1".into(),
            claimed_at: Utc::now(),
            metadata: Some(serde_json::json!({"k": 1})),
        };
        ledger.put(&rec).await.unwrap();
        let (all, problems) = Ledger::open(dir.path()).unwrap().load_all();
        assert!(problems.is_empty());
        assert_eq!(all, vec![rec.clone()]);
        ledger.remove("web", "alice").await.unwrap();
        ledger.remove("web", "alice").await.unwrap();
        assert!(ledger.load_all().0.is_empty());
    }
}
