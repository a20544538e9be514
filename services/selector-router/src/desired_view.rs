//! The router's copy of the `desired` bucket, followed live: a fan-out writes each target's
//! desired state with compare-and-set against the revision seen here, instead of reading
//! every target's entry from the hub first (at 10,000 clusters, 10,000 reads per request).
//!
//! The copy is a hint, never the authority: a write against a revision that is no longer
//! the newest fails at the hub, and the router then reads the entry and tries again
//! (`request::set_desired`). A copy that lags behind costs a retry, not a wrong write.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_nats::jetstream::kv;
use optikon_core::message::DesiredRelease;

#[derive(Clone, Default)]
pub struct DesiredView {
    entries: Arc<RwLock<HashMap<String, (DesiredRelease, u64)>>>,
}

impl DesiredView {
    /// Starts following the bucket in the background.
    pub fn follow(bucket: kv::Store) -> DesiredView {
        let view = DesiredView::default();
        tokio::spawn(follow(bucket, view.clone()));
        view
    }

    /// The newest entry seen for `key` and its revision (`None`: none seen, which may also
    /// mean not seen yet).
    pub fn get(&self, key: &str) -> Option<(DesiredRelease, u64)> {
        self.entries
            .read()
            .expect("desired view lock")
            .get(key)
            .cloned()
    }

    fn apply(&self, key: &str, entry: Option<(DesiredRelease, u64)>) {
        let mut entries = self.entries.write().expect("desired view lock");
        match entry {
            // Only forward: a watch restarted from scratch replays older revisions.
            Some((desired, revision)) => {
                if entries.get(key).is_none_or(|(_, seen)| *seen < revision) {
                    entries.insert(key.to_owned(), (desired, revision));
                }
            }
            None => {
                entries.remove(key);
            }
        }
    }
}

async fn follow(bucket: kv::Store, view: DesiredView) {
    optikon_runtime::kv::follow_bucket(bucket, "desired state", |entry| match entry.operation {
        kv::Operation::Put => match serde_json::from_slice(&entry.value) {
            Ok(desired) => view.apply(&entry.key, Some((desired, entry.revision))),
            Err(_) => view.apply(&entry.key, None),
        },
        kv::Operation::Delete | kv::Operation::Purge => view.apply(&entry.key, None),
    })
    .await
}
