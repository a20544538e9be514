//! The router's view of the cluster registry: every record of the `clusters` bucket,
//! followed live, so a request matches its selector in memory instead of reading every
//! record from the hub (at 10,000 clusters, 10,000 reads per request).
//!
//! The view is as fresh as a read: before answering, it waits until it has seen the
//! bucket's newest write as of the moment it was asked. A cluster registered or relabelled
//! just before a request is therefore matched, as it was when every request read the bucket.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use optikon_core::message::{ApiError, ClusterRecord};
use optikon_core::selector::{LabelSelector, Operator};
use optikon_core::subject;
use tokio::sync::watch;

use crate::internal;

/// How long a request waits for the view to catch up before it is retried.
const CATCH_UP: Duration = Duration::from_secs(10);

/// The registry's records by key, and an index of them by label, so a selector with an
/// equality (`cluster=sim-00042`, `ring in (0,1)`) looks at the clusters carrying that
/// label instead of at every cluster.
#[derive(Default)]
pub struct Registry {
    records: BTreeMap<String, ClusterRecord>,
    by_label: HashMap<(String, String), BTreeSet<String>>,
}

impl Registry {
    pub fn insert(&mut self, key: String, record: ClusterRecord) {
        self.remove(&key);
        for (label, value) in &record.labels {
            self.by_label
                .entry((label.clone(), value.clone()))
                .or_default()
                .insert(key.clone());
        }
        self.records.insert(key, record);
    }

    pub fn remove(&mut self, key: &str) {
        let Some(old) = self.records.remove(key) else {
            return;
        };
        for (label, value) in old.labels {
            let slot = (label, value);
            if let Some(keys) = self.by_label.get_mut(&slot) {
                keys.remove(key);
                if keys.is_empty() {
                    self.by_label.remove(&slot);
                }
            }
        }
    }

    /// Every record whose labels match, sorted by key (the cluster name).
    pub fn matching(&self, selector: &LabelSelector) -> Vec<ClusterRecord> {
        // The keys that can match at all: those of the narrowest equality requirement.
        let narrowest = selector
            .requirements()
            .iter()
            .filter(|r| {
                matches!(
                    r.operator,
                    Operator::Equals | Operator::DoubleEquals | Operator::In
                )
            })
            .map(|r| {
                r.values
                    .iter()
                    .filter_map(|v| self.by_label.get(&(r.key.clone(), v.clone())))
                    .flatten()
                    .collect::<BTreeSet<&String>>()
            })
            .min_by_key(BTreeSet::len);
        match narrowest {
            Some(keys) => keys
                .into_iter()
                .filter_map(|key| self.records.get(key))
                .filter(|record| selector.matches(&record.labels))
                .cloned()
                .collect(),
            None => self
                .records
                .values()
                .filter(|record| selector.matches(&record.labels))
                .cloned()
                .collect(),
        }
    }
}

#[derive(Clone)]
pub struct ClusterView {
    registry: Arc<RwLock<Registry>>,
    /// The newest bucket revision (stream sequence) applied to `records`.
    seen: watch::Receiver<u64>,
    js: async_nats::jetstream::Context,
}

impl ClusterView {
    /// Starts following the bucket in the background.
    pub fn follow(js: async_nats::jetstream::Context, bucket: kv::Store) -> ClusterView {
        let registry: Arc<RwLock<Registry>> = Arc::default();
        let (seen_tx, seen) = watch::channel(0);
        tokio::spawn(follow(bucket, registry.clone(), seen_tx));
        ClusterView { registry, seen, js }
    }

    /// Every registered cluster whose labels match, sorted by name.
    pub async fn matching(&self, selector: &LabelSelector) -> Result<Vec<ClusterRecord>, ApiError> {
        self.catch_up().await?;
        let registry = self.registry.read().expect("cluster view lock");
        Ok(registry.matching(selector))
    }

    /// A cluster's record as the view holds it now (no catch-up: for a cluster the router
    /// already matched).
    pub fn get(&self, name: &str) -> Option<ClusterRecord> {
        let registry = self.registry.read().expect("cluster view lock");
        registry.records.get(name).cloned()
    }

    /// Waits until the view holds every write the bucket had when this was called.
    async fn catch_up(&self) -> Result<(), ApiError> {
        let stream = format!("KV_{}", subject::CLUSTERS_BUCKET);
        let newest = self
            .js
            .get_stream(&stream)
            .await
            .map_err(|e| internal("read the cluster registry's state", e))?
            .cached_info()
            .state
            .last_sequence;
        let mut seen = self.seen.clone();
        tokio::time::timeout(CATCH_UP, seen.wait_for(|&applied| applied >= newest))
            .await
            .map_err(|_| {
                internal(
                    "match clusters",
                    format!("the cluster view is not caught up after {CATCH_UP:?}"),
                )
            })?
            .map_err(|_| internal("match clusters", "the cluster view stopped"))?;
        Ok(())
    }
}

/// Applies every change of the registry to `registry` and says how far it got in `seen`.
async fn follow(bucket: kv::Store, registry: Arc<RwLock<Registry>>, seen: watch::Sender<u64>) {
    optikon_runtime::kv::follow_bucket(bucket, "cluster registry", |entry| {
        {
            let mut records = registry.write().expect("cluster view lock");
            match entry.operation {
                kv::Operation::Put => match serde_json::from_slice::<ClusterRecord>(&entry.value) {
                    Ok(record) => records.insert(entry.key.clone(), record),
                    Err(error) => {
                        tracing::warn!(key = %entry.key, %error, "unreadable cluster record ignored");
                        records.remove(&entry.key);
                    }
                },
                kv::Operation::Delete | kv::Operation::Purge => records.remove(&entry.key),
            }
        }
        seen.send_if_modified(|applied| {
            let newer = entry.revision > *applied;
            if newer {
                *applied = entry.revision;
            }
            newer
        });
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use optikon_core::message::{ApiVersion, Timestamp};

    fn record(name: &str, labels: &[(&str, &str)]) -> ClusterRecord {
        ClusterRecord {
            api_version: ApiVersion,
            name: name.into(),
            domain: name.into(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            registered_at: Timestamp::now(),
            last_heartbeat: None,
        }
    }

    fn names(records: Vec<ClusterRecord>) -> Vec<String> {
        records.into_iter().map(|r| r.name).collect()
    }

    #[test]
    fn the_index_answers_as_a_full_scan_would() {
        let mut registry = Registry::default();
        for i in 0..300 {
            let name = format!("c-{i:03}");
            let ring = (i % 10).to_string();
            let region = ["eu", "us", "ap"][i % 3];
            registry.insert(
                name.clone(),
                record(
                    &name,
                    &[("ring", &ring), ("region", region), ("cluster", &name)],
                ),
            );
        }
        // Relabelled and removed records leave the index too.
        registry.insert(
            "c-007".into(),
            record("c-007", &[("ring", "canary"), ("region", "eu")]),
        );
        registry.remove("c-010");
        for selector in [
            "cluster=c-042",
            "ring in (1,canary),region!=us",
            "ring==3,region=ap",
            "region notin (eu)",
            "ring",
            "!cluster",
            "",
            "cluster=c-010",
        ] {
            let parsed = LabelSelector::parse(selector).unwrap();
            let scanned: Vec<String> = registry
                .records
                .values()
                .filter(|r| parsed.matches(&r.labels))
                .map(|r| r.name.clone())
                .collect();
            assert_eq!(names(registry.matching(&parsed)), scanned, "{selector}");
        }
        assert_eq!(
            names(registry.matching(&LabelSelector::parse("cluster=c-042").unwrap())),
            ["c-042"]
        );
        assert!(
            registry
                .matching(&LabelSelector::parse("cluster=c-010").unwrap())
                .is_empty()
        );
        assert_eq!(
            names(registry.matching(&LabelSelector::parse("ring=canary").unwrap())),
            ["c-007"]
        );
    }
}
