//! Previews (`--dry-run`): what a release request would change on each cluster, asked of
//! the clusters themselves, nothing stored or sent as a command.
//!
//! A preview resolves its chart, clusters and per-cluster values as the request would
//! ([`request::plan`], [`request::cluster_values`]), then asks every target's executor on
//! `optikon.preview.ask.<cluster>` and waits for its answer on
//! `optikon.preview.answer.<cluster>.<nonce>`. The answer's cluster is the subject's: the
//! hub's permissions let only that site publish there (`tests/e2e/tests/hostile_edge.rs`
//! forges another site's answer). A site with nobody listening (its link or its executor
//! is down) is answered at once by the server as having no responders, and shown offline
//! with its last heartbeat.

use std::time::Duration;

use async_nats::StatusCode;
use futures::StreamExt;
use optikon_core::message::{
    ApiError, ApiVersion, ChartPin, ClusterRecord, DesiredRelease, Heartbeat, ReleaseRequest,
    Reply, Timestamp, decode,
};
use optikon_core::preview::{ClusterPreview, ReleasePreview};
use optikon_core::subject;
use optikon_runtime::shutdown::Shutdown;

use crate::request::{self, CONCURRENCY};
use crate::{Hub, internal, read};

/// How long one site may take to render and dry-run a release before it is reported as
/// not answering.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Previews answered at once by one router.
const CONCURRENT_PREVIEWS: usize = 8;
/// Room left in a message for the reply's envelope and headers.
const REPLY_MARGIN: usize = 4096;

/// Answers preview requests until shutdown; replicas share them through a queue group.
pub async fn run(client: async_nats::Client, hub: Hub, shutdown: Shutdown) -> anyhow::Result<()> {
    let requests = client
        .queue_subscribe(subject::PREVIEW_REQUEST, "selector-router".into())
        .await?;
    tracing::info!(subject = subject::PREVIEW_REQUEST, "previews answered");
    requests
        .take_until(shutdown.wait())
        .for_each_concurrent(CONCURRENT_PREVIEWS, |message| {
            let (client, hub) = (client.clone(), hub.clone());
            async move {
                let Some(reply) = message.reply.clone() else {
                    return;
                };
                let answer: Reply<ReleasePreview> =
                    preview(&client, &hub, &message.payload).await.into();
                let body = serde_json::to_vec(&answer).expect("preview serializes");
                if let Err(error) = client.publish(reply, body.into()).await {
                    tracing::warn!(%error, "could not answer a preview");
                }
            }
        })
        .await;
    Ok(())
}

/// The preview of one request: every matching cluster's answer, by cluster name.
pub async fn preview(
    client: &async_nats::Client,
    hub: &Hub,
    body: &[u8],
) -> Result<ReleasePreview, ApiError> {
    let request: ReleaseRequest = decode("preview request", body)?;
    let plan = request::plan(hub, &request).await?;
    tracing::info!(action = %request.action, release = %request.release, selector = %request.selector, targets = plan.clusters.len(), "preview");
    let mut clusters: Vec<ClusterPreview> = futures::stream::iter(
        plan.clusters
            .iter()
            .map(|cluster| ask(client, hub, &request, cluster, plan.chart.clone())),
    )
    .buffer_unordered(CONCURRENCY)
    .collect()
    .await;
    clusters.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    let mut preview = ReleasePreview {
        api_version: ApiVersion,
        action: request.action,
        release: request.release,
        namespace: request.namespace,
        selector: request.selector,
        chart: plan.chart,
        clusters,
        note: None,
    };
    preview.fold_duplicates();
    // Still too large for one message (many sites with changes of their own): what changes
    // is kept, the diffs go.
    let limit = client
        .server_info()
        .max_payload
        .saturating_sub(REPLY_MARGIN);
    let size = serde_json::to_vec(&preview).map_or(0, |b| b.len());
    if size > limit {
        preview.drop_diffs(format!(
            "diffs left out: with them the answer ({size} bytes) would pass the server's \
             message limit; preview fewer clusters at a time (a narrower selector) to see them"
        ));
    }
    Ok(preview)
}

/// Asks one cluster, with the desired release the request would give it.
async fn ask(
    client: &async_nats::Client,
    hub: &Hub,
    request: &ReleaseRequest,
    cluster: &ClusterRecord,
    chart: Option<ChartPin>,
) -> ClusterPreview {
    let name = cluster.name.as_str();
    let (values, helm_values) = match request::cluster_values(request, name, &cluster.labels) {
        Ok(values) => values,
        Err(error) => return ClusterPreview::failed(name, error.message),
    };
    let key = subject::release_key(name, &request.namespace, &request.release);
    let generation = hub
        .desired_view
        .get(&key)
        .map_or(1, |(desired, _)| desired.generation + 1);
    let desired = DesiredRelease {
        api_version: ApiVersion,
        cluster: name.to_owned(),
        namespace: request.namespace.clone(),
        release: request.release.clone(),
        generation,
        request_id: request.id.clone(),
        action: request.action,
        chart: chart.clone(),
        values,
        helm_values,
        rollback_to: request.revision,
        atomic: request.atomic,
        requested_at: Timestamp::now(),
        request_sequence: None,
    };
    match ask_site(client, hub, &desired).await {
        Ok(Answer::Given(answer)) => answer,
        Ok(Answer::NobodyListens) => ClusterPreview::offline(name, last_heartbeat(hub, name).await),
        // Not a verdict on the change: the site could not be asked in time.
        Ok(Answer::TooLate) => ClusterPreview {
            reason: Some(format!(
                "did not answer within {} s (its executor may be busy or its link slow); \
                 nothing is known of what the change would do there",
                ANSWER_TIMEOUT.as_secs()
            )),
            ..ClusterPreview::offline(name, last_heartbeat(hub, name).await)
        },
        Err(error) => ClusterPreview::failed(name, error.message),
    }
}

/// How a site answered a preview.
enum Answer {
    Given(ClusterPreview),
    /// Nobody listens on its subject: its link or its executor is down.
    NobodyListens,
    /// Asked, but no answer within [`ANSWER_TIMEOUT`].
    TooLate,
}

/// The site's answer, if it gave one in time.
async fn ask_site(
    client: &async_nats::Client,
    hub: &Hub,
    desired: &DesiredRelease,
) -> Result<Answer, ApiError> {
    let name = desired.cluster.as_str();
    if let Some(pin) = &desired.chart {
        grant_chart(hub, name, pin).await?;
    }
    let nonce = uuid::Uuid::new_v4().simple().to_string();
    let answer_subject = subject::preview_answer(name, &nonce);
    let mut answers = client
        .subscribe(answer_subject.clone())
        .await
        .map_err(|e| internal("listen for a preview answer", e))?;
    let body = serde_json::to_vec(desired).expect("desired release serializes");
    client
        .publish_with_reply(subject::preview_ask(name), answer_subject, body.into())
        .await
        .map_err(|e| internal("ask for a preview", e))?;
    let answer = match tokio::time::timeout(ANSWER_TIMEOUT, answers.next()).await {
        Ok(Some(answer)) => answer,
        Ok(None) => return Err(internal("preview answer", "subscription closed")),
        Err(_) => return Ok(Answer::TooLate),
    };
    if answer.status == Some(StatusCode::NO_RESPONDERS) {
        return Ok(Answer::NobodyListens);
    }
    let reply: Reply<ClusterPreview> = decode("preview answer", &answer.payload)?;
    match reply.into_result() {
        // The cluster is the one asked, whatever the body says.
        Ok(preview) => Ok(Answer::Given(ClusterPreview {
            cluster: name.to_owned(),
            ..preview
        })),
        Err(error) => Ok(Answer::Given(ClusterPreview::failed(name, error.message))),
    }
}

/// Lets the cluster fetch the chart a preview names for a while (see
/// [`subject::PREVIEW_GRANTS_BUCKET`]).
async fn grant_chart(hub: &Hub, cluster: &str, pin: &ChartPin) -> Result<(), ApiError> {
    let key = subject::preview_grant_key(cluster, &pin.digest).ok_or_else(|| {
        internal(
            "grant a chart",
            format!("chart digest {} is not sha256", pin.digest),
        )
    })?;
    let body = serde_json::to_vec(pin).expect("pin serializes");
    hub.preview_grants
        .put(key, body.into())
        .await
        .map_err(|e| internal("grant a chart for a preview", e))?;
    Ok(())
}

async fn last_heartbeat(hub: &Hub, cluster: &str) -> Option<Timestamp> {
    let heartbeats = hub
        .js
        .get_key_value(subject::HEARTBEATS_BUCKET)
        .await
        .ok()?;
    read::<Heartbeat>(&heartbeats, &subject::heartbeat_key(cluster))
        .await
        .ok()
        .flatten()
        .map(|(h, _)| h.at)
}
