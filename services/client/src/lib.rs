//! A client of Optikon's NATS API: what the CLI and the gateway do, in one place.
//!
//! Requests go to `optikon.release.request` (JetStream, deduplicated by request id);
//! progress is read by watching the request's entry in the `requests` bucket; listings
//! read the hub's KV buckets.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::{Stream, StreamExt};
use optikon_core::message::{
    ApiError, ApiVersion, ChartIndexEntry, ClusterProgress, ClusterRecord, DesiredRelease,
    Heartbeat, ReleaseRequest, ReleaseStatus, Reply, RequestStatus, decode,
};
use optikon_core::preview::ReleasePreview;
use optikon_core::rollout::{ControlAction, Rollout, RolloutControl};
use optikon_core::{names, subject};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The hub refused what was asked, saying why (bad chart, bad selector, ...).
    #[error("{}", .0.message)]
    Refused(ApiError),
    /// What the user named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The user's input is wrong before anything was sent.
    #[error("{0}")]
    BadInput(String),
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("NATS: {0}")]
    Nats(String),
}

fn nats(what: &str) -> impl Fn(&dyn std::fmt::Display) -> ClientError + '_ {
    move |e| ClientError::Nats(format!("{what}: {e}"))
}

/// A label change as `kubectl label` takes it: `key=value` sets, `key-` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelChange {
    Set(String, String),
    Remove(String),
}

impl LabelChange {
    pub fn parse(change: &str) -> Result<Self, ClientError> {
        let bad = |e: names::NameError| ClientError::BadInput(e.to_string());
        if let Some(key) = change.strip_suffix('-') {
            names::validate_label_key(key).map_err(bad)?;
            return Ok(LabelChange::Remove(key.to_owned()));
        }
        let (key, value) = change.split_once('=').ok_or_else(|| {
            ClientError::BadInput(format!(
                "{change:?}: write key=value to set or key- to remove"
            ))
        })?;
        names::validate_label_key(key).map_err(bad)?;
        names::validate_label_value(value).map_err(bad)?;
        Ok(LabelChange::Set(key.to_owned(), value.to_owned()))
    }
}

/// Every target cluster's progress in a request, read from `request-clusters` in one pass.
pub async fn request_clusters(
    js: &jetstream::Context,
    request_id: &str,
) -> Result<BTreeMap<String, ClusterProgress>, ClientError> {
    let filter = format!("{}.*", subject::token(request_id));
    let entries = optikon_runtime::kv::latest_values(js, subject::REQUEST_CLUSTERS_BUCKET, &filter)
        .await
        .map_err(ClientError::Nats)?;
    let mut clusters = BTreeMap::new();
    for (key, value) in entries {
        if let Some((_, cluster)) = key.split_once('.') {
            let progress = decode::<ClusterProgress>("request cluster entry", &value)
                .map_err(ClientError::Refused)?;
            clusters.insert(subject::untoken(cluster), progress);
        }
    }
    Ok(clusters)
}

#[derive(Clone)]
pub struct Client {
    nats: async_nats::Client,
    js: jetstream::Context,
}

impl Client {
    pub fn new(nats: async_nats::Client) -> Self {
        let js = jetstream::new(nats.clone());
        Client { nats, js }
    }

    pub fn nats(&self) -> &async_nats::Client {
        &self.nats
    }

    async fn bucket(&self, name: &str) -> Result<kv::Store, ClientError> {
        self.js.get_key_value(name).await.map_err(|e| {
            ClientError::Nats(format!(
                "bucket {name} not found ({e}): is the hub set up (selector-router running)?"
            ))
        })
    }

    /// Every live value of a bucket.
    async fn read_all<T: serde::de::DeserializeOwned>(
        &self,
        bucket: &str,
    ) -> Result<Vec<T>, ClientError> {
        Ok(self
            .read_all_keyed(bucket)
            .await?
            .into_iter()
            .map(|(_, value)| value)
            .collect())
    }

    /// Every live value of a bucket, with its key.
    async fn read_all_keyed<T: serde::de::DeserializeOwned>(
        &self,
        bucket: &str,
    ) -> Result<Vec<(String, T)>, ClientError> {
        let store = self.bucket(bucket).await?;
        let keys = optikon_runtime::kv::keys(&self.js, bucket)
            .await
            .map_err(ClientError::Nats)?;
        let mut out = Vec::new();
        for key in keys {
            if let Some(bytes) = store.get(&key).await.map_err(|e| nats("read")(&e))? {
                let value = decode::<T>(bucket, &bytes).map_err(ClientError::Refused)?;
                out.push((key, value));
            }
        }
        Ok(out)
    }

    /// Uploads an archive to `chart-uploads` and asks chart-ingest to take it.
    pub async fn push_chart(
        &self,
        bytes: &[u8],
        force: bool,
    ) -> Result<ChartIndexEntry, ClientError> {
        let uploads = self
            .js
            .get_object_store(subject::UPLOADS_BUCKET)
            .await
            .map_err(|e| {
                ClientError::Nats(format!(
                    "object store chart-uploads not found ({e}): is chart-ingest running?"
                ))
            })?;
        let name = format!("upload-{}", uuid::Uuid::new_v4());
        uploads
            .put(name.as_str(), &mut &bytes[..])
            .await
            .map_err(|e| nats("upload chart")(&e))?;
        let mut headers = optikon_runtime::trace::headers(None);
        headers.insert(subject::HEADER_UPLOAD, name.as_str());
        if force {
            headers.insert(subject::HEADER_FORCE, "true");
        }
        let reply = self
            .nats
            .request_with_headers(subject::CHART_PUSH, headers, bytes::Bytes::new())
            .await
            .map_err(|e| {
                ClientError::Nats(format!("chart-ingest did not answer ({e}): is it running?"))
            })?;
        decode::<Reply<ChartIndexEntry>>("chart push reply", &reply.payload)
            .map_err(ClientError::Refused)?
            .into_result()
            .map_err(ClientError::Refused)
    }

    pub async fn charts(&self) -> Result<Vec<ChartIndexEntry>, ClientError> {
        let mut charts: Vec<ChartIndexEntry> = self.read_all(subject::CHART_INDEX_BUCKET).await?;
        charts.sort_by(|a, b| (&a.name, &a.version).cmp(&(&b.name, &b.version)));
        Ok(charts)
    }

    /// The highest SemVer version stored under `name`.
    pub async fn latest_chart_version(&self, name: &str) -> Result<String, ClientError> {
        self.charts()
            .await?
            .iter()
            .filter(|c| c.name == name)
            .filter_map(|c| Some((optikon_core::chart::helm_version(&c.version).ok()?, c)))
            .max_by(|(a, _), (b, _)| a.cmp(b))
            .map(|(_, c)| c.version.clone())
            .ok_or_else(|| {
                ClientError::NotFound(format!("no chart named {name:?} is stored; push it first"))
            })
    }

    /// Every registered cluster, each with its newest heartbeat (from the `heartbeats`
    /// bucket, which the edges write; a heartbeat of an unregistered cluster is not shown).
    pub async fn clusters(&self) -> Result<Vec<ClusterRecord>, ClientError> {
        let mut clusters: Vec<ClusterRecord> = self.read_all(subject::CLUSTERS_BUCKET).await?;
        // By key, not by what the body says: a site can write only its own key.
        let heartbeats: BTreeMap<String, Heartbeat> = self
            .read_all_keyed::<Heartbeat>(subject::HEARTBEATS_BUCKET)
            .await?
            .into_iter()
            .collect();
        for cluster in &mut clusters {
            cluster.last_heartbeat = heartbeats
                .get(&subject::heartbeat_key(&cluster.name))
                .filter(|h| h.cluster == cluster.name)
                .cloned();
        }
        clusters.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(clusters)
    }

    pub async fn clusters_by_name(&self) -> Result<BTreeMap<String, ClusterRecord>, ClientError> {
        Ok(self
            .clusters()
            .await?
            .into_iter()
            .map(|c| (c.name.clone(), c))
            .collect())
    }

    /// Every release on every cluster as last reported (uninstalled ones included).
    pub async fn releases(&self) -> Result<Vec<ReleaseStatus>, ClientError> {
        let mut releases: Vec<ReleaseStatus> = self.read_all(subject::RELEASES_BUCKET).await?;
        releases.sort_by(|a, b| {
            (&a.release, &a.namespace, &a.cluster).cmp(&(&b.release, &b.namespace, &b.cluster))
        });
        Ok(releases)
    }

    /// Desired state of `release` on every cluster it is meant for (`namespace`: only that
    /// one), as the router last set it.
    pub async fn desired(
        &self,
        release: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<DesiredRelease>, ClientError> {
        let filter = format!(
            "*.{}.{}",
            namespace.map_or("*".to_owned(), subject::token),
            subject::token(release)
        );
        let entries =
            optikon_runtime::kv::latest_values(&self.js, subject::DESIRED_BUCKET, &filter)
                .await
                .map_err(ClientError::Nats)?;
        entries
            .into_iter()
            .map(|(_, value)| decode("desired state", &value).map_err(ClientError::Refused))
            .collect()
    }

    /// A request's status with every target cluster's progress (the summary from
    /// `requests`, the clusters from `request-clusters`).
    pub async fn request_status(&self, id: &str) -> Result<Option<RequestStatus>, ClientError> {
        let store = self.bucket(subject::REQUESTS_BUCKET).await?;
        let Some(bytes) = store
            .get(subject::token(id))
            .await
            .map_err(|e| nats("read request")(&e))?
        else {
            return Ok(None);
        };
        let mut status: RequestStatus =
            decode("request status", &bytes).map_err(ClientError::Refused)?;
        if status.progress.is_some() {
            status.clusters = request_clusters(&self.js, id).await?;
        }
        Ok(Some(status))
    }

    /// A rollout's record (only requests with a strategy have one).
    pub async fn rollout(&self, id: &str) -> Result<Option<Rollout>, ClientError> {
        let store = self.bucket(subject::ROLLOUTS_BUCKET).await?;
        match store
            .get(subject::token(id))
            .await
            .map_err(|e| nats("read rollout")(&e))?
        {
            Some(bytes) => Ok(Some(
                decode("rollout", &bytes).map_err(ClientError::Refused)?,
            )),
            None => Ok(None),
        }
    }

    /// Every rollout the hub keeps (30 days), newest first.
    pub async fn rollouts(&self) -> Result<Vec<Rollout>, ClientError> {
        let mut rollouts: Vec<Rollout> = self.read_all(subject::ROLLOUTS_BUCKET).await?;
        rollouts.sort_by_key(|r| std::cmp::Reverse(r.created_at.0));
        Ok(rollouts)
    }

    /// Pauses, resumes or aborts a rollout; returns the record after the change.
    pub async fn control_rollout(
        &self,
        id: &str,
        action: ControlAction,
    ) -> Result<Rollout, ClientError> {
        let control = RolloutControl {
            api_version: ApiVersion,
            id: id.to_owned(),
            action,
        };
        let body = serde_json::to_vec(&control).expect("control serializes");
        self.ask_router(subject::ROLLOUT_CONTROL, body, None, "rollout control")
            .await
    }

    /// A request/reply call the router answers with a `Reply<T>`; `what` names the call in
    /// errors. `timeout`: the client's default when `None`.
    async fn ask_router<T: serde::de::DeserializeOwned>(
        &self,
        subject: &str,
        body: Vec<u8>,
        timeout: Option<Duration>,
        what: &str,
    ) -> Result<T, ClientError> {
        let mut request = async_nats::Request::new().payload(body.into());
        if timeout.is_some() {
            request = request.timeout(timeout);
        }
        let reply = self
            .nats
            .send_request(subject.to_owned(), request)
            .await
            .map_err(|e| {
                ClientError::Nats(format!(
                    "selector-router did not answer the {what} ({e}): is it running?"
                ))
            })?;
        decode::<Reply<T>>(&format!("{what} reply"), &reply.payload)
            .map_err(ClientError::Refused)?
            .into_result()
            .map_err(ClientError::Refused)
    }

    /// What became of a release on one cluster, oldest first: every status the cluster
    /// reported, as the hub keeps them (`STATUS_HUB`: the newest 1,000 per release, for 7
    /// days). Statuses this build cannot read are left out.
    pub async fn release_history(
        &self,
        cluster: &str,
        namespace: &str,
        release: &str,
    ) -> Result<Vec<ReleaseStatus>, ClientError> {
        let bodies = optikon_runtime::kv::stream_messages(
            &self.js,
            subject::STATUS_HUB_STREAM,
            &subject::release_status(cluster, namespace, release),
        )
        .await
        .map_err(ClientError::Nats)?;
        Ok(bodies
            .iter()
            .filter_map(|body| serde_json::from_slice(body).ok())
            .collect())
    }

    /// What `request` would change on each cluster it matches, asked of the clusters
    /// (`--dry-run`); nothing is changed or stored.
    pub async fn preview(&self, request: &ReleaseRequest) -> Result<ReleasePreview, ClientError> {
        /// Each site has 30 s to answer; a few more for the router to gather them.
        const PREVIEW_TIMEOUT: Duration = Duration::from_secs(45);
        let body = serde_json::to_vec(request).expect("request serializes");
        self.ask_router(
            subject::PREVIEW_REQUEST,
            body,
            Some(PREVIEW_TIMEOUT),
            "preview",
        )
        .await
    }

    /// Applies label changes to a cluster (optimistic concurrency, retried on conflict).
    pub async fn label_cluster(
        &self,
        name: &str,
        changes: &[LabelChange],
    ) -> Result<ClusterRecord, ClientError> {
        let store = self.bucket(subject::CLUSTERS_BUCKET).await?;
        let key = subject::token(name);
        for _ in 0..10 {
            let entry = store
                .entry(&key)
                .await
                .map_err(|e| nats("read cluster")(&e))?
                .filter(|e| e.operation == kv::Operation::Put)
                .ok_or_else(|| ClientError::NotFound(format!("no cluster named {name:?}")))?;
            let mut record: ClusterRecord =
                decode("cluster record", &entry.value).map_err(ClientError::Refused)?;
            for change in changes {
                match change {
                    LabelChange::Set(k, v) => {
                        record.labels.insert(k.clone(), v.clone());
                    }
                    LabelChange::Remove(k) => {
                        record.labels.remove(k);
                    }
                }
            }
            let body = serde_json::to_vec(&record).expect("record serializes");
            if store
                .update(&key, body.into(), entry.revision)
                .await
                .is_ok()
            {
                return Ok(record);
            }
        }
        Err(ClientError::Nats(format!(
            "cluster {name} kept changing; try again"
        )))
    }

    /// A new request with a fresh id.
    pub fn new_request(
        action: optikon_core::message::Action,
        release: &str,
        namespace: &str,
        selector: &str,
    ) -> ReleaseRequest {
        ReleaseRequest {
            api_version: ApiVersion,
            id: uuid::Uuid::new_v4().to_string(),
            action,
            release: release.to_owned(),
            namespace: namespace.to_owned(),
            selector: selector.to_owned(),
            chart: None,
            values: None,
            helm_values: Default::default(),
            revision: None,
            atomic: false,
            strategy: None,
            overlays: Vec::new(),
        }
    }

    /// Publishes a request and returns the stream of its status updates (the first one may
    /// come from before, if the id was used already).
    pub async fn submit(
        &self,
        request: &ReleaseRequest,
    ) -> Result<impl Stream<Item = RequestStatus> + use<>, ClientError> {
        let requests = self.bucket(subject::REQUESTS_BUCKET).await?;
        // Watch before publishing, so not even a fast answer is missed.
        let updates = requests
            .watch(subject::token(&request.id))
            .await
            .map_err(|e| nats("watch request")(&e))?;
        let body = serde_json::to_vec(request).expect("request serializes");
        self.js
            .publish_with_headers(
                subject::RELEASE_REQUEST,
                optikon_runtime::trace::headers(Some(&request.id)),
                body.into(),
            )
            .await
            .map_err(|e| nats("publish request")(&e))?
            .await
            .map_err(|e| nats("the hub did not store the request")(&e))?;
        Ok(updates.filter_map(|entry| async move {
            let entry = entry.ok()?;
            if entry.operation != kv::Operation::Put {
                return None;
            }
            serde_json::from_slice::<RequestStatus>(&entry.value).ok()
        }))
    }

    /// Submits and follows a request until it is complete (or refused), calling `progress`
    /// on every update.
    pub async fn run_request(
        &self,
        request: &ReleaseRequest,
        timeout: Duration,
        mut progress: impl FnMut(&RequestStatus),
    ) -> Result<RequestStatus, ClientError> {
        let updates = self.submit(request).await?;
        let mut updates = std::pin::pin!(updates);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, updates.next()).await {
                Err(_) => {
                    return Err(ClientError::Timeout(format!(
                        "request {} not complete after {}s; it goes on",
                        request.id,
                        timeout.as_secs()
                    )));
                }
                Ok(None) => return Err(ClientError::Nats("the request watch ended".into())),
                Ok(Some(status)) => {
                    progress(&status);
                    if let Some(error) = &status.error {
                        return Err(ClientError::Refused(error.clone()));
                    }
                    if status.is_complete() {
                        // The summary says done; the answer names every cluster.
                        return Ok(self.request_status(&status.id).await?.unwrap_or(status));
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Added for the gateway: live events and chart look-ups. Nothing above depends on this.
// ---------------------------------------------------------------------------------------

/// Something that just happened, as a live subscriber hears it.
#[derive(Debug, Clone, PartialEq)]
pub enum LiveEvent {
    /// A request's progress changed (`optikon.event.request.<id>`).
    Request(RequestStatus),
    /// chart-ingest stored a chart (`optikon.event.chart.ingested`).
    ChartIngested(ChartIndexEntry),
    /// A release changed on a cluster (`optikon.status.<cluster>.release.…`).
    Release(ReleaseStatus),
    /// A cluster's heartbeat (`optikon.status.<cluster>.heartbeat`).
    Heartbeat(Heartbeat),
}

impl LiveEvent {
    /// Reads a message from one of the subjects [`Client::live_events`] listens on; `None`
    /// for subjects it does not know or bodies it cannot read (a foreign or future writer).
    pub fn from_message(subject_name: &str, body: &[u8]) -> Option<LiveEvent> {
        if subject_name == subject::EVENT_CHART_INGESTED {
            return serde_json::from_slice(body)
                .ok()
                .map(LiveEvent::ChartIngested);
        }
        if subject_name.starts_with(&format!("{}.", subject::EVENT_REQUEST_PREFIX)) {
            return serde_json::from_slice(body).ok().map(LiveEvent::Request);
        }
        if let Some(cluster) =
            subject_name.strip_prefix(&format!("$KV.{}.", subject::HEARTBEATS_BUCKET))
        {
            // Only a heartbeat about the cluster whose entry it is: the key is what the
            // hub's permissions vouch for.
            return serde_json::from_slice::<Heartbeat>(body)
                .ok()
                .filter(|h| subject::heartbeat_key(&h.cluster) == cluster)
                .map(LiveEvent::Heartbeat);
        }
        let rest = subject_name.strip_prefix(&format!("{}.", subject::STATUS_PREFIX))?;
        let (_cluster, kind) = rest.split_once('.')?;
        if kind.starts_with("release.") {
            serde_json::from_slice(body).ok().map(LiveEvent::Release)
        } else {
            None
        }
    }
}

impl Client {
    /// Live request events, chart announcements, release status and heartbeats, as they
    /// happen (core NATS subscriptions: nothing is replayed; what happened before is in the
    /// KV buckets). Status from an edge whose link is down arrives at the hub later, when its
    /// uplink forwards it, and then shows as request events.
    pub async fn live_events(&self) -> Result<impl Stream<Item = LiveEvent> + use<>, ClientError> {
        let mut subscriptions = Vec::new();
        for filter in [
            "optikon.event.>".to_owned(),
            format!("{}.*.release.>", subject::STATUS_PREFIX),
            format!("$KV.{}.*", subject::HEARTBEATS_BUCKET),
        ] {
            let subscription = self
                .nats
                .subscribe(filter)
                .await
                .map_err(|e| nats("subscribe to live events")(&e))?;
            subscriptions.push(subscription);
        }
        Ok(
            futures::stream::select_all(subscriptions).filter_map(|message| async move {
                LiveEvent::from_message(message.subject.as_str(), &message.payload)
            }),
        )
    }

    /// One chart of the index by name and version.
    pub async fn chart(&self, name: &str, version: &str) -> Result<ChartIndexEntry, ClientError> {
        let store = self.bucket(subject::CHART_INDEX_BUCKET).await?;
        match store
            .get(subject::chart_key(name, version))
            .await
            .map_err(|e| nats("read chart index")(&e))?
        {
            Some(bytes) => decode("chart index entry", &bytes).map_err(ClientError::Refused),
            None => Err(ClientError::NotFound(format!(
                "chart {name} {version} is not stored; push it first"
            ))),
        }
    }
}

#[cfg(test)]
mod live_event_tests {
    use super::*;

    #[test]
    fn subjects_map_to_event_kinds() {
        let heartbeat = br#"{"apiVersion":"optikon/v1","cluster":"c1","apiReady":true,"nodesReady":1,"nodesTotal":1,"podsTotal":4,"intervalSeconds":5,"at":"2026-11-25T22:48:54Z"}"#;
        assert!(matches!(
            LiveEvent::from_message("$KV.heartbeats.c1", heartbeat),
            Some(LiveEvent::Heartbeat(h)) if h.pods_total == 4
        ));
        // A heartbeat is taken only for the cluster whose entry it is written to.
        assert_eq!(
            LiveEvent::from_message("$KV.heartbeats.c2", heartbeat),
            None
        );
        assert_eq!(
            LiveEvent::from_message("optikon.status.c1.heartbeat", heartbeat),
            None
        );
        let status = br#"{"apiVersion":"optikon/v1","cluster":"c1","namespace":"default","release":"web","generation":1,"requestId":"r1","action":"install","state":"deployed","at":"2026-11-25T22:48:54Z"}"#;
        assert!(matches!(
            LiveEvent::from_message("optikon.status.c1.release.default.web", status),
            Some(LiveEvent::Release(s)) if s.release == "web"
        ));
        assert_eq!(
            LiveEvent::from_message("optikon.status.c1.release.default.web", b"{}"),
            None
        );
        assert_eq!(
            LiveEvent::from_message("optikon.cmd.c1.default.web", status),
            None
        );
    }
}
