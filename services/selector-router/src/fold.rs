//! Folds the edges' status (`STATUS_HUB`) into the hub's view: the release list
//! (`releases`) and each request's progress (`requests` + events). Heartbeats are not
//! folded: each edge keeps its own entry of the `heartbeats` bucket, read where needed.
//!
//! A status counts for the cluster its subject names — the hub's permissions let only that
//! cluster's identity publish there — and one whose body names another cluster is dropped.
//!
//! Status may arrive late (a link was down), twice (redelivery) or out of order (several
//! router replicas); every fold keeps the newest by generation or time, so the result is
//! the same whatever the order.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use futures::{StreamExt, TryStreamExt};
use optikon_core::message::{ApiError, ReleaseState, ReleaseStatus, RequestStatus, decode};
use optikon_core::subject;
use optikon_runtime::shutdown::Shutdown;
use tokio::sync::oneshot;

use crate::request::publish_event;
use crate::{Hub, consume_batches, internal, read, write_if};

const CONSUMER: &str = "status-fold";
/// Messages folded in one pass: a fan-out to thousands of clusters answers with thousands of
/// statuses for one request, and each pass rewrites that request's record once.
const BATCH: usize = 512;
/// KV updates in flight at once within a pass.
const CONCURRENCY: usize = 32;

/// Folds statuses into request records: one writer per request in this process, with group
/// commit. A fan-out's statuses arrive through every shard at once; whatever arrives while
/// a request's record is being written goes into its next write. Without this the shards
/// would race on the one record (compare-and-set, retried), and at thousands of clusters
/// each write of the record — hundreds of KiB — would carry one shard's batch only.
/// Replicas in other processes are still kept apart by compare-and-set.
#[derive(Clone, Default)]
struct RequestFolds(Arc<std::sync::Mutex<HashMap<String, Queue>>>);

/// What waits for the next write of one request's record.
#[derive(Default)]
struct Queue {
    statuses: Vec<ReleaseStatus>,
    waiting: Vec<oneshot::Sender<Result<(), ApiError>>>,
}

impl RequestFolds {
    /// Folds `statuses` into the request's record; returns once a write including them is
    /// stored (or failed).
    async fn fold(
        &self,
        hub: &Hub,
        request_id: &str,
        statuses: Vec<ReleaseStatus>,
    ) -> Result<(), ApiError> {
        let (done, written) = oneshot::channel();
        let lead = {
            let mut queues = self.0.lock().expect("request folds");
            match queues.get_mut(request_id) {
                Some(queue) => {
                    queue.statuses.extend(statuses);
                    queue.waiting.push(done);
                    false
                }
                None => {
                    let waiting = vec![done];
                    queues.insert(request_id.to_owned(), Queue { statuses, waiting });
                    true
                }
            }
        };
        if lead {
            // A task of its own: the writer must outlive a caller that gives up (a batch
            // whose other fold failed), or the queue would wait for it forever.
            let (folds, hub, id) = (self.clone(), hub.clone(), request_id.to_owned());
            tokio::spawn(async move { folds.write_until_drained(&hub, &id).await });
        }
        written
            .await
            .unwrap_or_else(|_| Err(internal("fold request progress", "writer stopped")))
    }

    async fn write_until_drained(&self, hub: &Hub, request_id: &str) {
        loop {
            let queue = {
                let mut queues = self.0.lock().expect("request folds");
                let queue = queues.get_mut(request_id).expect("the writer's queue");
                if queue.waiting.is_empty() {
                    queues.remove(request_id);
                    return;
                }
                std::mem::take(queue)
            };
            let result = fold_into_request(hub, request_id, queue.statuses.iter().collect()).await;
            for done in queue.waiting {
                let _ = done.send(result.clone());
            }
        }
    }
}

/// Folds `STATUS_HUB` through the durable consumer all replicas share.
pub async fn run(hub: Hub, shutdown: Shutdown) -> anyhow::Result<()> {
    let folds = RequestFolds::default();
    consume_batches(
        &hub,
        subject::STATUS_HUB_STREAM,
        CONSUMER,
        BATCH,
        Duration::from_secs(30),
        Duration::from_secs(1),
        shutdown,
        |messages| {
            let hub = hub.clone();
            let folds = folds.clone();
            async move { fold_batch(&hub, &folds, &messages).await }
        },
    )
    .await
}

/// Folds a batch: the newest status per release, and per request every status of the
/// batch in one update of its record.
async fn fold_batch(
    hub: &Hub,
    folds: &RequestFolds,
    messages: &[jetstream::Message],
) -> Result<(), ApiError> {
    let mut statuses = Vec::new();
    for message in messages {
        match decode::<ReleaseStatus>("release status", &message.payload) {
            Ok(status) if sent_by(&message.subject, &status) => statuses.push(status),
            Ok(status) => {
                tracing::warn!(subject = %message.subject, claimed = %status.cluster, "dropping a status claiming another cluster than its sender");
            }
            Err(error) => {
                tracing::warn!(%error, subject = %message.subject, "dropping malformed status");
            }
        }
    }

    // Superseded says nothing about what runs on the cluster: only the request cares.
    let mut newest: BTreeMap<String, &ReleaseStatus> = BTreeMap::new();
    for status in statuses
        .iter()
        .filter(|s| s.state != ReleaseState::Superseded)
    {
        let key = subject::release_key(&status.cluster, &status.namespace, &status.release);
        match newest.get(&key) {
            Some(old) if !newer(status, old) => {}
            _ => {
                newest.insert(key, status);
            }
        }
    }
    futures::stream::iter(newest.into_iter().map(|(key, s)| fold_release(hub, key, s)))
        .buffer_unordered(CONCURRENCY)
        .try_collect::<()>()
        .await?;

    let mut by_request: BTreeMap<&str, Vec<ReleaseStatus>> = BTreeMap::new();
    for status in &statuses {
        by_request
            .entry(&status.request_id)
            .or_default()
            .push(status.clone());
    }
    futures::stream::iter(
        by_request
            .into_iter()
            .map(|(id, statuses)| folds.fold(hub, id, statuses)),
    )
    .buffer_unordered(CONCURRENCY)
    .try_collect::<()>()
    .await
}

/// Whether `status` came from the cluster it is about: the one its subject names.
fn sent_by(subject: &str, status: &ReleaseStatus) -> bool {
    subject::cluster_of_status_subject(subject).as_deref() == Some(status.cluster.as_str())
        && subject == subject::release_status(&status.cluster, &status.namespace, &status.release)
}

/// Whether `new` should replace `old` as what is known of one release generation.
fn newer(new: &ReleaseStatus, old: &ReleaseStatus) -> bool {
    (new.generation, new.state.is_final(), new.at) > (old.generation, old.state.is_final(), old.at)
}

/// Keeps the newest status of one release on one cluster in the `releases` bucket.
async fn fold_release(hub: &Hub, key: String, status: &ReleaseStatus) -> Result<(), ApiError> {
    for _ in 0..20 {
        let current = read::<ReleaseStatus>(&hub.releases, &key).await?;
        if let Some((old, _)) = &current
            && !newer(status, old)
        {
            return Ok(());
        }
        if write_if(&hub.releases, &key, status, current.map(|(_, r)| r)).await? {
            return Ok(());
        }
    }
    Err(internal(
        "fold release status",
        "too many concurrent updates",
    ))
}

/// Folds statuses of one request into its record, in one write, and announces the result.
async fn fold_into_request(
    hub: &Hub,
    request_id: &str,
    statuses: Vec<&ReleaseStatus>,
) -> Result<(), ApiError> {
    let key = subject::token(request_id);
    for _ in 0..20 {
        let Some((mut request, revision)) = read::<RequestStatus>(&hub.requests, &key).await?
        else {
            // Not a request this hub knows (expired, or made elsewhere): nothing to track.
            return Ok(());
        };
        let mut changed = false;
        for status in &statuses {
            let Some(progress) = request.clusters.get_mut(&status.cluster) else {
                continue;
            };
            if progress.generation != status.generation
                || (progress.state.is_final() && !status.state.is_final())
                || (progress.state == status.state && progress.revision == status.revision)
            {
                continue;
            }
            progress.state = status.state;
            progress.revision = status.revision;
            progress.reason = status.reason.clone();
            changed = true;
        }
        if !changed {
            return Ok(());
        }
        if write_if(&hub.requests, &key, &request, Some(revision)).await? {
            return publish_event(hub, &request).await;
        }
    }
    Err(internal(
        "fold request progress",
        "too many concurrent updates",
    ))
}
