//! Release requests → desired state per matching cluster → one command per cluster.
//!
//! Every step is idempotent, so a request redelivered after a crash, or published twice,
//! changes each cluster's desired state once: a cluster whose desired record already names
//! this request keeps its generation, and commands carry `Nats-Msg-Id: <request>.<cluster>`.

use std::collections::BTreeMap;
use std::time::Duration;

use async_nats::jetstream;
use futures::{StreamExt, TryStreamExt};
use optikon_core::message::{
    Action, ApiError, ApiVersion, ChartIndexEntry, ChartPin, ChartRef, ClusterProgress,
    ClusterRecord, DesiredRelease, ErrorCode, ReleaseRequest, ReleaseState, RequestProgress,
    RequestStatus, Timestamp, decode,
};
use optikon_core::selector::LabelSelector;
use optikon_core::subject;
use optikon_runtime::shutdown::Shutdown;
use optikon_runtime::trace;
use tracing::Instrument;

use crate::{Hub, consume_in_lanes, internal, read, write_if};

const CONSUMER: &str = "selector-router";

pub async fn run(hub: Hub, lanes: usize, shutdown: Shutdown) -> anyhow::Result<()> {
    let ack_wait = Duration::from_secs(60);
    let retry = Duration::from_secs(2);
    let stream = subject::RELEASE_REQUESTS_STREAM;
    // Requests for different releases at once; for one release in order, one at a time: an
    // uninstall must never overtake the upgrade requested before it. Should two requests
    // for one release still meet out of order (another replica, a lost ack), the later one
    // wins: see `set_desired`.
    consume_in_lanes(
        &hub,
        stream,
        CONSUMER,
        lanes,
        ack_wait,
        retry,
        shutdown,
        lane_of,
        |message| {
            let hub = hub.clone();
            async move {
                let span = tracing::info_span!("release_request");
                trace::adopt(&span, message.headers.as_ref());
                handle(&hub, &message).instrument(span).await
            }
        },
    )
    .await
}

/// A request's lane: the release it is for. An unreadable body has no release, and all such
/// share one lane (they are only recorded as refused).
fn lane_of(message: &jetstream::Message) -> String {
    #[derive(serde::Deserialize)]
    struct Release {
        namespace: String,
        release: String,
    }
    serde_json::from_slice::<Release>(&message.payload)
        .map(|r| format!("{}/{}", r.namespace, r.release))
        .unwrap_or_default()
}

/// Handles one request message. `Err` only for problems worth a retry; a bad request is
/// answered (its status records the error) and `Ok`.
pub async fn handle(hub: &Hub, message: &jetstream::Message) -> Result<(), ApiError> {
    // What to file a refusal under when the body's own id is unusable: the message id if it
    // is a usable id, else the stream sequence.
    let sequence_id = message
        .info()
        .map(|i| format!("seq-{}", i.stream_sequence))
        .unwrap_or_else(|_| "seq-unknown".into());
    let fallback_id = message
        .headers
        .as_ref()
        .and_then(|h| h.get("Nats-Msg-Id"))
        .map(|v| v.as_str().to_owned())
        .filter(|id| validate_id(id).is_ok())
        .unwrap_or(sequence_id);
    let request: ReleaseRequest = match decode("release request", &message.payload) {
        Ok(request) => request,
        Err(error) => {
            let status = rejected_unreadable(&fallback_id, &message.payload, error);
            return record_once(hub, &status).await;
        }
    };
    tracing::info!(id = %request.id, action = %request.action, release = %request.release, selector = %request.selector, "release request");
    let mut status = RequestStatus {
        api_version: ApiVersion,
        id: request.id.clone(),
        action: Some(request.action),
        release: request.release.clone(),
        namespace: request.namespace.clone(),
        selector: request.selector.clone(),
        error: None,
        clusters: BTreeMap::new(),
        progress: Some(RequestProgress::default()),
        accepted_at: Timestamp::now(),
    };
    if let Err(error) = validate_id(&request.id) {
        status.id = fallback_id;
        status.error = Some(error);
        return record_once(hub, &status).await;
    }
    let plan = match plan(hub, &request).await {
        Ok(plan) => plan,
        Err(error) if error.code == ErrorCode::Internal => return Err(error),
        Err(error) => {
            tracing::info!(id = %request.id, %error, "request refused");
            status.error = Some(error);
            return record_once(hub, &status).await;
        }
    };

    let sequence = message.info().ok().map(|i| i.stream_sequence);
    if request.strategy.is_some() {
        // Boxed: a rollout's acceptance is a large future of its own, and `handle` runs
        // on callers' stacks.
        return Box::pin(crate::rollout::start(
            hub,
            &request,
            plan.chart,
            plan.clusters,
            sequence,
            status,
        ))
        .await;
    }

    // Per cluster its desired state, then its entry of the request; beside them the
    // request's summary; only then the commands: an edge can only answer a command whose
    // request status already exists to be updated. Everything before the commands runs at
    // once across clusters: a fan-out to thousands is round trips, not computation.
    status.progress = Some(RequestProgress {
        targets: plan.clusters.len(),
        ..RequestProgress::default()
    });
    let per_cluster = futures::stream::iter(plan.clusters.iter().map(|cluster| {
        let chart = plan.chart.clone();
        let request = &request;
        async move {
            let outcome = set_desired(
                hub,
                request,
                &cluster.name,
                &cluster.labels,
                chart,
                sequence,
            )
            .await?;
            record_outcome(hub, &request.id, &cluster.name, &outcome).await?;
            Ok::<_, ApiError>(outcome)
        }
    }))
    .buffered(CONCURRENCY)
    .try_collect::<Vec<Desired>>();
    let (outcomes, status) = futures::try_join!(per_cluster, merge_status(hub, status))?;
    let (status, sent, decided) = count_and_send(hub, status, outcomes).await?;
    tracing::info!(id = %request.id, targets = sent, decided, "commands sent");
    // The summary only: every cluster is pending, which the count says.
    publish_event(hub, &status).await
}

/// What a request does to one cluster's desired state.
pub(crate) enum Desired {
    /// Set (or already set by an earlier attempt at this request): send it.
    Set(DesiredRelease),
    /// A request published later already set it; this one changes nothing there.
    Superseded(DesiredRelease),
    /// The request cannot apply to this cluster (its values use a label the cluster lacks):
    /// nothing changes there, and its entry says why.
    Refused(String),
}

impl Desired {
    /// The command to send, if any.
    pub(crate) fn into_command(self) -> Option<DesiredRelease> {
        match self {
            Desired::Set(desired) => Some(desired),
            Desired::Superseded(_) | Desired::Refused(_) => None,
        }
    }
}

/// Writes the cluster's entry of the request for what the request does there: `pending`,
/// or final at once (superseded, refused).
pub(crate) async fn record_outcome(
    hub: &Hub,
    request_id: &str,
    cluster: &str,
    outcome: &Desired,
) -> Result<(), ApiError> {
    match outcome {
        Desired::Set(desired) => create_cluster_entry(hub, request_id, desired).await,
        Desired::Superseded(newer) => record_superseded(hub, request_id, newer).await,
        Desired::Refused(reason) => {
            let key = subject::request_cluster_key(request_id, cluster);
            write_if(&hub.request_clusters, &key, &refused_entry(reason), None).await?;
            Ok(())
        }
    }
}

/// Once every target's entry is written ([`record_outcome`]): counts the clusters decided
/// at once in the summary, then sends the others their command. Returns the summary, the
/// commands sent and the clusters decided at once.
pub(crate) async fn count_and_send(
    hub: &Hub,
    mut status: RequestStatus,
    outcomes: Vec<Desired>,
) -> Result<(RequestStatus, usize, usize), ApiError> {
    let refused = outcomes
        .iter()
        .filter(|o| matches!(o, Desired::Refused(_)))
        .count();
    let targets = outcomes.len();
    let commands: Vec<DesiredRelease> = outcomes
        .into_iter()
        .filter_map(Desired::into_command)
        .collect();
    let decided = targets - commands.len();
    if decided > 0 {
        status = count_decided(hub, status, decided, refused).await?;
    }
    publish_commands(hub, &status.id, &commands).await?;
    Ok((status, commands.len(), decided))
}

/// The request's values as they apply to one cluster: overlays its labels match appended,
/// cluster expressions rendered. Only an install or upgrade carries values.
pub(crate) fn cluster_values(
    request: &ReleaseRequest,
    cluster: &str,
    labels: &BTreeMap<String, String>,
) -> Result<(serde_json::Value, optikon_core::values::HelmValues), ApiError> {
    let values = request
        .values
        .clone()
        .unwrap_or_else(|| serde_json::Value::Object(Default::default()));
    if !matches!(request.action, Action::Install | Action::Upgrade) {
        return Ok((values, request.helm_values.clone()));
    }
    optikon_core::cluster_values::for_cluster(
        &values,
        &request.helm_values,
        &request.overlays,
        &optikon_core::cluster_values::ClusterFacts {
            name: cluster,
            labels,
        },
    )
}

/// The entry of a cluster the request cannot apply to: failed, with the reason.
pub(crate) fn refused_entry(reason: &str) -> ClusterProgress {
    ClusterProgress {
        generation: 0,
        state: ReleaseState::Failed,
        revision: None,
        reason: Some(reason.to_owned()),
    }
}

/// The cluster's entry of the request, final at once: a later request already decided.
pub(crate) async fn record_superseded(
    hub: &Hub,
    request_id: &str,
    newer: &DesiredRelease,
) -> Result<(), ApiError> {
    let progress = ClusterProgress {
        generation: newer.generation,
        state: ReleaseState::Superseded,
        revision: None,
        reason: Some(format!(
            "request {} for this release was published later and already set it",
            newer.request_id
        )),
    };
    let key = subject::request_cluster_key(request_id, &newer.cluster);
    // An earlier attempt may have written it already: the same outcome.
    write_if(&hub.request_clusters, &key, &progress, None).await?;
    Ok(())
}

/// Counts clusters decided at once as done in the request's summary (no status will come
/// for them): superseded ones, and refused ones, which also count as failed.
async fn count_decided(
    hub: &Hub,
    mut status: RequestStatus,
    superseded: usize,
    refused: usize,
) -> Result<RequestStatus, ApiError> {
    let key = subject::token(&status.id);
    for _ in 0..20 {
        let Some((mut current, revision)) = read::<RequestStatus>(&hub.requests, &key).await?
        else {
            break;
        };
        let progress = current
            .progress
            .get_or_insert_with(RequestProgress::default);
        // A repeat of this request after a crash finds them counted already: they are
        // counted before any command is sent, so until then `done` holds nothing else.
        let counted_before = status.progress.is_some_and(|p| p.done >= superseded);
        if !counted_before {
            progress.done = (progress.done + superseded).min(progress.targets);
            progress.failed = (progress.failed + refused).min(progress.targets);
        }
        if write_if(&hub.requests, &key, &current, Some(revision)).await? {
            status.progress = current.progress;
            return Ok(status);
        }
    }
    Err(internal(
        "count superseded clusters",
        format!("request {} kept changing", status.id),
    ))
}

/// The cluster's entry of the request, `pending` at the desired generation, unless an
/// earlier attempt at this request made it already (progress folded into it is kept).
pub(crate) async fn create_cluster_entry(
    hub: &Hub,
    request_id: &str,
    desired: &DesiredRelease,
) -> Result<(), ApiError> {
    let progress = ClusterProgress {
        generation: desired.generation,
        state: ReleaseState::Pending,
        revision: None,
        reason: None,
    };
    let key = subject::request_cluster_key(request_id, &desired.cluster);
    write_if(&hub.request_clusters, &key, &progress, None).await?;
    Ok(())
}

/// KV reads and writes, and command publishes, in flight at once for one request.
pub(crate) const CONCURRENCY: usize = 128;

/// Publishes one command per cluster, pipelined: up to [`CONCURRENCY`] wait for their
/// store acknowledgement at once. `Nats-Msg-Id: <request>.<cluster>` makes a repeat after a
/// crash a duplicate JetStream drops.
pub(crate) async fn publish_commands(
    hub: &Hub,
    request_id: &str,
    commands: &[DesiredRelease],
) -> Result<(), ApiError> {
    futures::stream::iter(
        commands
            .iter()
            .map(|desired| send_command(hub, desired, format!("{request_id}.{}", desired.cluster))),
    )
    .buffer_unordered(CONCURRENCY)
    .try_collect::<()>()
    .await
}

/// Stores `desired` in `CMD` as a command to its cluster, under `msg_id`, and waits for the
/// store acknowledgement.
pub async fn send_command(
    hub: &Hub,
    desired: &DesiredRelease,
    msg_id: String,
) -> Result<(), ApiError> {
    let body = serde_json::to_vec(desired).expect("command serializes");
    hub.js
        .publish_with_headers(
            subject::cluster_commands(&desired.cluster),
            trace::headers(Some(&msg_id)),
            body.into(),
        )
        .await
        .map_err(|e| internal("publish command", e))?
        .await
        .map_err(|e| internal("store command", e))?;
    Ok(())
}

/// What a valid request resolves to.
pub(crate) struct Plan {
    pub(crate) chart: Option<ChartPin>,
    pub(crate) clusters: Vec<ClusterRecord>,
}

/// Checks the request and resolves its chart and target clusters.
pub(crate) async fn plan(hub: &Hub, request: &ReleaseRequest) -> Result<Plan, ApiError> {
    let selector = request.check()?;
    // `check` made sure an install or upgrade names a chart; other actions need none.
    let chart = match (&request.chart, request.action) {
        (Some(chart), Action::Install | Action::Upgrade) => Some(resolve_chart(hub, chart).await?),
        _ => None,
    };
    let clusters = matching_clusters(hub, &selector).await?;
    Ok(Plan { chart, clusters })
}

/// A request id becomes a KV key and a subject token: letters, digits, `-` and `_`.
fn validate_id(id: &str) -> Result<(), ApiError> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("request id {id:?} must be 1-128 letters, digits, '-' or '_' (a UUID works)"),
        ))
    }
}

async fn resolve_chart(hub: &Hub, chart: &ChartRef) -> Result<ChartPin, ApiError> {
    match chart {
        ChartRef::NameVersion { name, version } => {
            read::<ChartIndexEntry>(&hub.chart_index, &subject::chart_key(name, version))
                .await?
                .map(|(entry, _)| entry.pin())
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::ChartNotFound,
                        format!("chart {name} {version} is not in the chart index; push it first"),
                    )
                })
        }
        ChartRef::Digest { digest } => {
            let keys = optikon_runtime::kv::keys(&hub.js, subject::CHART_INDEX_BUCKET)
                .await
                .map_err(|e| internal("list charts", e))?;
            for key in keys {
                if let Some((entry, _)) = read::<ChartIndexEntry>(&hub.chart_index, &key).await?
                    && &entry.digest == digest
                {
                    return Ok(entry.pin());
                }
            }
            Err(ApiError::new(
                ErrorCode::ChartNotFound,
                format!("no chart with digest {digest}; push it first"),
            ))
        }
    }
}

/// Every registered cluster whose labels match.
pub async fn matching_clusters(
    hub: &Hub,
    selector: &LabelSelector,
) -> Result<Vec<ClusterRecord>, ApiError> {
    hub.cluster_view.matching(selector).await
}

/// Records the desired state of the release on `cluster` for this request, once.
pub(crate) async fn set_desired(
    hub: &Hub,
    request: &ReleaseRequest,
    cluster: &str,
    labels: &BTreeMap<String, String>,
    chart: Option<ChartPin>,
    sequence: Option<u64>,
) -> Result<Desired, ApiError> {
    let (values, helm_values) = match cluster_values(request, cluster, labels) {
        Ok(rendered) => rendered,
        Err(error) => return Ok(Desired::Refused(error.message)),
    };
    let key = subject::release_key(cluster, &request.namespace, &request.release);
    for attempt in 0..20 {
        // First try against the router's live copy; after a conflict, or to confirm a
        // repeat of this very request, read the hub's entry (the copy may lag behind).
        let cached = (attempt == 0).then(|| hub.desired_view.get(&key));
        let current = match cached {
            Some(cached)
                if cached
                    .as_ref()
                    .is_none_or(|(d, _)| d.request_id != request.id) =>
            {
                cached
            }
            _ => read::<DesiredRelease>(&hub.desired, &key).await?,
        };
        if let Some((existing, _)) = &current {
            if existing.request_id == request.id {
                return Ok(Desired::Set(existing.clone()));
            }
            if let (Some(theirs), Some(mine)) = (existing.request_sequence, sequence)
                && theirs > mine
            {
                // Read from the hub, not the copy, before giving up on the cluster.
                if attempt == 0 {
                    continue;
                }
                return Ok(Desired::Superseded(existing.clone()));
            }
        }
        let desired = DesiredRelease {
            api_version: ApiVersion,
            cluster: cluster.to_owned(),
            namespace: request.namespace.clone(),
            release: request.release.clone(),
            generation: current.as_ref().map_or(1, |(d, _)| d.generation + 1),
            request_id: request.id.clone(),
            action: request.action,
            chart: chart.clone(),
            values: values.clone(),
            helm_values: helm_values.clone(),
            rollback_to: request.revision,
            atomic: request.atomic,
            requested_at: Timestamp::now(),
            request_sequence: sequence,
        };
        if write_if(&hub.desired, &key, &desired, current.map(|(_, r)| r)).await? {
            return Ok(Desired::Set(desired));
        }
    }
    Err(internal(
        "update desired state",
        format!("{key} kept changing under concurrent requests"),
    ))
}

/// Creates the request's summary, or merges into one a previous attempt wrote (keeping the
/// progress already folded in).
pub(crate) async fn merge_status(
    hub: &Hub,
    mut status: RequestStatus,
) -> Result<RequestStatus, ApiError> {
    let key = subject::token(&status.id);
    // Almost always the first attempt at this request: create without reading first.
    if write_if(&hub.requests, &key, &status, None).await? {
        return Ok(status);
    }
    for _ in 0..20 {
        let current = read::<RequestStatus>(&hub.requests, &key).await?;
        let revision = current.as_ref().map(|(_, r)| *r);
        if let Some((existing, _)) = current {
            status.accepted_at = existing.accepted_at;
            if let (Some(mine), Some(theirs)) = (status.progress.as_mut(), existing.progress) {
                mine.done = theirs.done;
                mine.failed = theirs.failed;
                mine.targets = mine.targets.max(theirs.targets);
            }
        }
        if write_if(&hub.requests, &key, &status, revision).await? {
            return Ok(status);
        }
    }
    Err(internal(
        "record request status",
        "too many concurrent updates",
    ))
}

/// Records a refused request unless its id already has a status (a refused duplicate must
/// not overwrite the original's progress).
async fn record_once(hub: &Hub, status: &RequestStatus) -> Result<(), ApiError> {
    let key = subject::token(&status.id);
    if write_if(&hub.requests, &key, status, None).await? {
        publish_event(hub, status).await
    } else {
        tracing::info!(id = %status.id, "refused repeat of a known request id; kept the original");
        Ok(())
    }
}

/// Announces a request's status on `optikon.event.request.<id>` (stored in `EVENTS`).
pub async fn publish_event(hub: &Hub, status: &RequestStatus) -> Result<(), ApiError> {
    let body = serde_json::to_vec(status).expect("status serializes");
    hub.js
        .publish_with_headers(
            subject::request_event(&status.id),
            trace::headers(None),
            body.into(),
        )
        .await
        .map_err(|e| internal("publish event", e))?
        .await
        .map_err(|e| internal("store event", e))?;
    Ok(())
}

/// The status of a request whose body could not be read: as much as can be said of it.
fn rejected_unreadable(id: &str, body: &[u8], error: ApiError) -> RequestStatus {
    let loose: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    let text = |field: &str| loose[field].as_str().unwrap_or_default().to_owned();
    let id = if validate_id(&text("id")).is_ok() {
        text("id")
    } else {
        id.to_owned()
    };
    RequestStatus {
        api_version: ApiVersion,
        id,
        action: serde_json::from_value(loose["action"].clone()).ok(),
        release: text("release"),
        namespace: text("namespace"),
        selector: text("selector"),
        error: Some(error),
        clusters: BTreeMap::new(),
        progress: Some(RequestProgress::default()),
        accepted_at: Timestamp::now(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_must_be_subject_safe() {
        assert!(validate_id("5f0c1b7e-1d2a-4e9b-a0a1-0b9c8d7e6f5a").is_ok());
        for bad in ["", "a.b", "a b", "a*", "a>", &"x".repeat(129)] {
            let err = validate_id(bad).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidRequest, "{bad}");
        }
    }

    #[test]
    fn unreadable_requests_keep_what_can_be_read() {
        let body = br#"{"id":"r-1","action":"install","release":"web","namespace":"default","selector":"a=b","extra":1}"#;
        let err = ApiError::new(ErrorCode::MalformedMessage, "unknown field extra");
        let status = rejected_unreadable("seq-9", body, err);
        assert_eq!(status.id, "r-1");
        assert_eq!(status.action, Some(Action::Install));
        assert_eq!(status.release, "web");
        let status = rejected_unreadable(
            "seq-9",
            b"not json",
            ApiError::new(ErrorCode::MalformedMessage, "x"),
        );
        assert_eq!(status.id, "seq-9");
        assert!(status.is_complete());
    }
}
