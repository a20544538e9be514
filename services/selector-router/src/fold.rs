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
use optikon_core::message::{
    ApiError, ClusterProgress, ReleaseState, ReleaseStatus, RequestStatus, decode,
};
use optikon_core::subject;
use optikon_runtime::shutdown::Shutdown;
use tokio::sync::oneshot;

use crate::request::publish_event;
use crate::{Hub, consume_batches, internal, read, write_if};

const CONSUMER: &str = "status-fold";
/// Messages folded in one pass: a fan-out to thousands of clusters answers with thousands of
/// statuses for one request, and each pass rewrites that request's summary once.
const BATCH: usize = 512;
/// KV updates in flight at once within a pass.
const CONCURRENCY: usize = 32;

/// Folds statuses into requests: one writer per request in this process, with group commit.
/// Whatever arrives while a request is being written goes into its next write, so the
/// summary (the one record every status of a request touches) is written once per round
/// instead of racing itself (compare-and-set, retried) once per status. Replicas in other
/// processes are still kept apart by compare-and-set.
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
    {
        let hub = hub.clone();
        tokio::spawn(async move {
            match recount_open_requests(&hub).await {
                Ok(0) => {}
                Ok(fixed) => tracing::info!(requests = fixed, "recounted open requests"),
                Err(error) => tracing::warn!(%error, "open requests not recounted"),
            }
        });
    }
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

/// Folds statuses of one request: each changed cluster's entry (compare-and-set), then the
/// summary's counts in one write, then one event with the summary and what changed. A
/// fan-out to 10,000 clusters thus writes 10,000 small entries and a summary per batch,
/// not a record of every cluster per batch.
async fn fold_into_request(
    hub: &Hub,
    request_id: &str,
    statuses: Vec<&ReleaseStatus>,
) -> Result<(), ApiError> {
    let key = subject::token(request_id);
    if read::<RequestStatus>(&hub.requests, &key).await?.is_none() {
        // Not a request this hub knows (expired, or made elsewhere): nothing to track.
        return Ok(());
    }
    let mut by_cluster: BTreeMap<String, Vec<ReleaseStatus>> = BTreeMap::new();
    for status in statuses {
        by_cluster
            .entry(status.cluster.clone())
            .or_default()
            .push(status.clone());
    }
    // Owned work items: the folds run concurrently inside a spawned writer task.
    let work: Vec<_> = by_cluster
        .into_iter()
        .map(|(cluster, statuses)| {
            let (hub, id) = (hub.clone(), request_id.to_owned());
            async move { fold_cluster(&hub, &id, &cluster, &statuses).await }
        })
        .collect();
    let changes: Vec<(String, ClusterProgress, (isize, isize))> = futures::stream::iter(work)
        .buffer_unordered(CONCURRENCY)
        .try_collect::<Vec<_>>()
        .await?
        .into_iter()
        .flatten()
        .collect();
    if changes.is_empty() {
        return Ok(());
    }
    let delta = changes
        .iter()
        .fold((0, 0), |(d, f), (_, _, (dd, df))| (d + dd, f + df));
    for _ in 0..20 {
        let Some((mut summary, revision)) = read::<RequestStatus>(&hub.requests, &key).await?
        else {
            return Ok(());
        };
        let progress = match summary.progress {
            Some(progress) => progress,
            // A summary from before counts were kept: count its entries once.
            None => RequestStatus::counted(&request_clusters(hub, request_id).await?),
        };
        summary.progress = Some(progress.apply(delta));
        summary.clusters.clear();
        if write_if(&hub.requests, &key, &summary, Some(revision)).await? {
            let changed = changes
                .into_iter()
                .map(|(cluster, progress, _)| (cluster, progress));
            return publish_changes(hub, summary, changed).await;
        }
    }
    Err(internal(
        "fold request progress",
        "too many concurrent updates",
    ))
}

/// Most of an event's body given to cluster entries: well under NATS's 1 MiB message limit,
/// however many clusters changed at once and however long their reasons.
const EVENT_CLUSTER_BYTES: usize = 256 * 1024;

/// Announces the summary with the clusters that changed, in as many events as their size
/// needs (each event carries the summary).
async fn publish_changes(
    hub: &Hub,
    mut summary: RequestStatus,
    changed: impl Iterator<Item = (String, ClusterProgress)>,
) -> Result<(), ApiError> {
    summary.clusters.clear();
    let mut size = 0;
    for (cluster, progress) in changed {
        // Name, state, numbers and JSON around them: a generous 128 bytes.
        let entry_size = cluster.len() + progress.reason.as_ref().map_or(0, String::len) + 128;
        if size + entry_size > EVENT_CLUSTER_BYTES && !summary.clusters.is_empty() {
            publish_event(hub, &summary).await?;
            summary.clusters.clear();
            size = 0;
        }
        size += entry_size;
        summary.clusters.insert(cluster, progress);
    }
    publish_event(hub, &summary).await
}

/// Folds one cluster's statuses into its entry of the request. `Some` with the new progress
/// and its effect on the counts when the entry changed; `None` when nothing did (a repeat,
/// an older generation, a cluster the request did not target).
async fn fold_cluster(
    hub: &Hub,
    request_id: &str,
    cluster: &str,
    statuses: &[ReleaseStatus],
) -> Result<Option<(String, ClusterProgress, (isize, isize))>, ApiError> {
    let key = subject::request_cluster_key(request_id, cluster);
    for _ in 0..20 {
        let Some((old, revision)) = read::<ClusterProgress>(&hub.request_clusters, &key).await?
        else {
            return Ok(None);
        };
        let mut progress = old.clone();
        for status in statuses {
            if progress.generation != status.generation
                || (progress.state.is_final() && !status.state.is_final())
                || (progress.state == status.state && progress.revision == status.revision)
            {
                continue;
            }
            progress.state = status.state;
            progress.revision = status.revision;
            progress.reason = status.reason.as_deref().map(bounded_reason);
        }
        if progress == old {
            return Ok(None);
        }
        if write_if(&hub.request_clusters, &key, &progress, Some(revision)).await? {
            let delta = old.delta(&progress);
            return Ok(Some((cluster.to_owned(), progress, delta)));
        }
    }
    Err(internal(
        "fold request progress",
        format!("{key} kept changing under concurrent folds"),
    ))
}

/// Longest reason kept in a request's cluster entry; the full one is in the release's status.
const MAX_REASON_BYTES: usize = 16 * 1024;

/// `reason`, cut at [`MAX_REASON_BYTES`] (on a character boundary) with a note that it was.
fn bounded_reason(reason: &str) -> String {
    if reason.len() <= MAX_REASON_BYTES {
        return reason.to_owned();
    }
    let mut end = MAX_REASON_BYTES;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}… (cut at {MAX_REASON_BYTES} bytes; the release's status has it all)",
        &reason[..end]
    )
}

/// Every cluster's entry of a request.
pub async fn request_clusters(
    hub: &Hub,
    request_id: &str,
) -> Result<BTreeMap<String, ClusterProgress>, ApiError> {
    let filter = format!("{}.*", subject::token(request_id));
    let entries =
        optikon_runtime::kv::latest_values(&hub.js, subject::REQUEST_CLUSTERS_BUCKET, &filter)
            .await
            .map_err(|e| internal("read a request's clusters", e))?;
    let mut clusters = BTreeMap::new();
    for (key, value) in entries {
        let Some((_, cluster)) = key.split_once('.') else {
            continue;
        };
        let progress = decode::<ClusterProgress>("request cluster entry", &value)
            .map_err(|e| internal(&format!("decode {key}"), e))?;
        clusters.insert(subject::untoken(cluster), progress);
    }
    Ok(clusters)
}

/// Puts right the counts of every request still open that was accepted in the last day:
/// a router that stopped between a cluster's entry and the summary left its count short.
/// Run when a router starts; the entries are the truth.
pub async fn recount_open_requests(hub: &Hub) -> Result<usize, ApiError> {
    let keys = optikon_runtime::kv::keys(&hub.js, subject::REQUESTS_BUCKET)
        .await
        .map_err(|e| internal("list requests", e))?;
    let now = optikon_core::message::Timestamp::now();
    let mut fixed = 0;
    for key in keys {
        let Some((mut summary, revision)) = read::<RequestStatus>(&hub.requests, &key).await?
        else {
            continue;
        };
        if summary.is_complete() || summary.accepted_at.seconds_until(now) > 24.0 * 3600.0 {
            continue;
        }
        let counted = RequestStatus::counted(&request_clusters(hub, &summary.id).await?);
        if summary.progress == Some(counted) {
            continue;
        }
        summary.progress = Some(counted);
        if write_if(&hub.requests, &key, &summary, Some(revision)).await? {
            publish_event(hub, &summary).await?;
            fixed += 1;
        }
    }
    Ok(fixed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        assert_eq!(bounded_reason("short"), "short");
        let long = "é".repeat(MAX_REASON_BYTES);
        let cut = bounded_reason(&long);
        assert!(cut.len() < MAX_REASON_BYTES + 100, "{}", cut.len());
        assert!(cut.ends_with("has it all)"));
    }
}
