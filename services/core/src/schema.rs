//! JSON Schemas of every message, generated from the Rust types into `schemas/`.
//!
//! `UPDATE_SCHEMAS=1 cargo test -p optikon-core schema` rewrites them; without it the same
//! test fails when a committed schema no longer matches the code.

use schemars::{JsonSchema, Schema, schema_for};

use crate::message::{
    ChartFetchRequest, ChartIndexEntry, ClusterRecord, ClusterRegistration, DesiredRelease,
    DnsAnswer, DnsResolveRequest, Heartbeat, ReleaseRequest, ReleaseStatus, Reply, RequestStatus,
    SiteServices,
};
use crate::preview::{ClusterPreview, ReleasePreview};
use crate::rollout::{Rollout, RolloutControl};

fn named<T: JsonSchema>(file: &'static str) -> (&'static str, Schema) {
    (file, schema_for!(T))
}

/// Every schema with the file name it is stored under.
pub fn all() -> Vec<(&'static str, Schema)> {
    vec![
        named::<ReleaseRequest>("release-request.json"),
        named::<DesiredRelease>("command.json"),
        named::<ReleaseStatus>("release-status.json"),
        named::<Heartbeat>("heartbeat.json"),
        named::<RequestStatus>("request-status.json"),
        named::<ClusterRecord>("cluster-record.json"),
        named::<ClusterRegistration>("cluster-registration.json"),
        named::<ChartIndexEntry>("chart-index-entry.json"),
        named::<Reply<ChartIndexEntry>>("chart-push-reply.json"),
        named::<Reply<ClusterRecord>>("cluster-register-reply.json"),
        named::<ChartFetchRequest>("chart-fetch-request.json"),
        named::<Reply<()>>("chart-fetch-error.json"),
        named::<SiteServices>("site-services.json"),
        named::<DnsResolveRequest>("dns-resolve-request.json"),
        named::<Reply<DnsAnswer>>("dns-resolve-reply.json"),
        named::<Rollout>("rollout.json"),
        named::<RolloutControl>("rollout-control.json"),
        named::<Reply<Rollout>>("rollout-control-reply.json"),
        named::<Reply<ReleasePreview>>("preview-reply.json"),
        named::<Reply<ClusterPreview>>("cluster-preview-reply.json"),
    ]
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    #[test]
    fn schemas_in_repo_match_the_code() {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../schemas");
        let update = std::env::var_os("UPDATE_SCHEMAS").is_some();
        let mut stale = Vec::new();
        for (file, schema) in super::all() {
            let text = serde_json::to_string_pretty(&schema).expect("schema serializes") + "\n";
            let path = dir.join(file);
            if update {
                std::fs::create_dir_all(&dir).expect("create schemas/");
                std::fs::write(&path, &text).expect("write schema");
            } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                stale.push(file);
            }
        }
        assert!(
            stale.is_empty(),
            "stale schemas {stale:?}: run `UPDATE_SCHEMAS=1 cargo test -p optikon-core schema` and commit schemas/"
        );
    }
}
