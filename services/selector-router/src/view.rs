//! The router's view of the cluster registry: every record of the `clusters` bucket,
//! followed live, so a request matches its selector in memory instead of reading every
//! record from the hub (at 10,000 clusters, 10,000 reads per request).
//!
//! The view is as fresh as a read: before answering, it waits until it has seen the
//! bucket's newest write as of the moment it was asked. A cluster registered or relabelled
//! just before a request is therefore matched, as it was when every request read the bucket.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use optikon_core::message::{ApiError, ClusterRecord};
use optikon_core::selector::LabelSelector;
use optikon_core::subject;
use tokio::sync::watch;

use crate::internal;

/// How long a request waits for the view to catch up before it is retried.
const CATCH_UP: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct ClusterView {
    records: Arc<RwLock<BTreeMap<String, ClusterRecord>>>,
    /// The newest bucket revision (stream sequence) applied to `records`.
    seen: watch::Receiver<u64>,
    js: async_nats::jetstream::Context,
}

impl ClusterView {
    /// Starts following the bucket in the background.
    pub fn follow(js: async_nats::jetstream::Context, bucket: kv::Store) -> ClusterView {
        let records: Arc<RwLock<BTreeMap<String, ClusterRecord>>> = Arc::default();
        let (seen_tx, seen) = watch::channel(0);
        tokio::spawn(follow(bucket, records.clone(), seen_tx));
        ClusterView { records, seen, js }
    }

    /// Every registered cluster whose labels match, sorted by name.
    pub async fn matching(&self, selector: &LabelSelector) -> Result<Vec<ClusterRecord>, ApiError> {
        self.catch_up().await?;
        let records = self.records.read().expect("cluster view lock");
        Ok(records
            .values()
            .filter(|record| selector.matches(&record.labels))
            .cloned()
            .collect())
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

/// Applies every change of the bucket to `records`, re-watching from scratch when the watch
/// ends (a reconnect): the newest value of every key comes first, then each change.
async fn follow(
    bucket: kv::Store,
    records: Arc<RwLock<BTreeMap<String, ClusterRecord>>>,
    seen: watch::Sender<u64>,
) {
    loop {
        let mut entries = match bucket.watch_with_history(">").await {
            Ok(entries) => entries,
            Err(error) => {
                tracing::warn!(%error, "cannot watch the cluster registry; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(entry) = entries.next().await {
            let entry = match entry {
                Ok(entry) => entry,
                Err(error) => {
                    tracing::warn!(%error, "cluster registry watch interrupted");
                    break;
                }
            };
            {
                let mut records = records.write().expect("cluster view lock");
                match entry.operation {
                    kv::Operation::Put => {
                        match serde_json::from_slice::<ClusterRecord>(&entry.value) {
                            Ok(record) => {
                                records.insert(entry.key.clone(), record);
                            }
                            Err(error) => {
                                tracing::warn!(key = %entry.key, %error, "unreadable cluster record ignored");
                                records.remove(&entry.key);
                            }
                        }
                    }
                    kv::Operation::Delete | kv::Operation::Purge => {
                        records.remove(&entry.key);
                    }
                }
            }
            seen.send_if_modified(|applied| {
                let newer = entry.revision > *applied;
                if newer {
                    *applied = entry.revision;
                }
                newer
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
