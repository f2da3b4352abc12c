//! Helpers shared by the engine-level sync suites (`sync_engine`, `sync_faults`) that
//! build the daemon's own types. They live here, not in the test kit, because the kit
//! drives the daemon only from outside and does not depend on the `boilerhouse` crate.

use boilerhouse::workload::spec::{
    SinkSpec, SyncDirection, SyncMapping, SyncMode, SyncPolicy, SyncSpec,
};
use boilerhouse_testkit::s3::S3Server;

/// The daemon's spec types for the kit's S3 server (the kit does not know them).
pub trait Specs {
    /// A sync spec over [`S3Server::sink`] of `bucket` with these mappings.
    fn sync_spec(&self, bucket: &str, mappings: Vec<SyncMapping>) -> SyncSpec;
    /// A sync spec mirroring the whole state dir both ways (`/`, bidirectional, `sync`).
    fn mirror_spec(&self, bucket: &str) -> SyncSpec {
        self.sync_spec(
            bucket,
            vec![mapping(
                "/",
                SyncDirection::Bidirectional,
                SyncMode::Sync,
                None,
            )],
        )
    }
}

impl Specs for S3Server {
    fn sync_spec(&self, bucket: &str, mappings: Vec<SyncMapping>) -> SyncSpec {
        let sink = self.sink(bucket);
        SyncSpec {
            sink: SinkSpec {
                kind: "s3".into(),
                bucket: sink.bucket,
                region: Some(sink.region),
                endpoint: Some(sink.endpoint),
                access_key_id: Some(sink.access_key_id),
                secret_access_key: Some(sink.secret_access_key),
                prefix: sink.prefix,
                rclone_flags: Vec::new(),
            },
            mappings,
            policy: SyncPolicy::default(),
        }
    }
}

/// A mapping for tests.
pub fn mapping(
    path: &str,
    direction: SyncDirection,
    mode: SyncMode,
    pattern: Option<&str>,
) -> SyncMapping {
    SyncMapping {
        path: path.into(),
        direction,
        mode,
        pattern: pattern.map(Into::into),
    }
}
