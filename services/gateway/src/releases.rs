//! `/api/v1/releases` and `/api/v1/requests`: install, upgrade, roll back and uninstall a
//! release on every cluster a selector matches, and list where releases stand.
//!
//! A call checks what it can first (names, selector, values, that the chart or release
//! exists), so bad input changes nothing; then it publishes one release request and follows
//! it in the `requests` bucket until every target cluster has finished or the timeout ends.
//! One cluster failing is part of the answer, not an error of the call.
//! `/api/v1/previews` asks the clusters what a request would change, and changes nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use futures::StreamExt;
use optikon_client::{Client, ClientError};
use optikon_core::message::{
    Action, ApiError, ChartRef, ClusterProgress, ErrorCode, ReleaseRequest, ReleaseState,
    ReleaseStatus, RequestStatus, Timestamp,
};
use optikon_core::preview::ReleasePreview;
use optikon_core::rollout::{ControlAction, Rollout, RolloutStrategy};
use optikon_core::selector::LabelSelector;
use optikon_core::values;
use serde::{Deserialize, Serialize};

use crate::Gateway;
use crate::clusters::{describe, parse_selector};
use crate::error::{HttpError, JsonBody, QueryParams};
use crate::routes::Routes;

pub fn routes() -> Routes<Gateway> {
    Routes::new()
        .get("/api/v1/releases", list)
        .post("/api/v1/releases", install)
        .get("/api/v1/releases/{namespace}/{release}", status)
        .put("/api/v1/releases/{namespace}/{release}", upgrade)
        .delete("/api/v1/releases/{namespace}/{release}", uninstall)
        .post("/api/v1/releases/{namespace}/{release}/rollback", rollback)
        .get("/api/v1/releases/{namespace}/{release}/history", history)
        .get("/api/v1/requests/{id}", request)
        .get("/api/v1/rollouts", rollouts)
        .get("/api/v1/rollouts/{id}", rollout)
        .post("/api/v1/rollouts/{id}/{action}", control_rollout)
        .post("/api/v1/previews", preview)
}

/// Which chart to run: `{"name", "version"}`, `{"name"}` (its newest version) or
/// `{"digest"}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChartSpec {
    pub name: Option<String>,
    pub version: Option<String>,
    pub digest: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstallBody {
    pub release: String,
    pub namespace: String,
    /// Kubernetes label selector over cluster labels; `""` selects every cluster.
    pub selector: String,
    pub chart: ChartSpec,
    /// A JSON object, or YAML/JSON text, overriding the chart's values.
    #[serde(default)]
    pub values: Option<serde_json::Value>,
    /// Undo it on a cluster where it fails (helm's `--atomic`).
    #[serde(default)]
    pub atomic: bool,
    /// Reach the clusters in waves behind a health gate (docs/rollouts.md).
    #[serde(default)]
    pub strategy: Option<RolloutStrategy>,
    /// Values files for the clusters each selector matches (docs/rollouts.md).
    #[serde(default)]
    pub overlays: Vec<optikon_core::cluster_values::Overlay>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpgradeBody {
    pub selector: String,
    pub chart: ChartSpec,
    #[serde(default)]
    pub values: Option<serde_json::Value>,
    /// Undo it on a cluster where it fails (helm's `--atomic`).
    #[serde(default)]
    pub atomic: bool,
    /// Reach the clusters in waves behind a health gate (docs/rollouts.md).
    #[serde(default)]
    pub strategy: Option<RolloutStrategy>,
    /// Values files for the clusters each selector matches (docs/rollouts.md).
    #[serde(default)]
    pub overlays: Vec<optikon_core::cluster_values::Overlay>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollbackBody {
    pub selector: String,
    /// The Helm revision to return to; absent or 0: the one before the current.
    #[serde(default)]
    pub revision: Option<u32>,
    /// Reach the clusters in waves behind a health gate (docs/rollouts.md).
    #[serde(default)]
    pub strategy: Option<RolloutStrategy>,
}

/// A preview (`--dry-run`): the request as it would be made; nothing changes.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreviewBody {
    pub action: Action,
    pub release: String,
    pub namespace: String,
    pub selector: String,
    /// Install and upgrade.
    #[serde(default)]
    pub chart: Option<ChartSpec>,
    #[serde(default)]
    pub values: Option<serde_json::Value>,
    /// Rollback: the revision to return to.
    #[serde(default)]
    pub revision: Option<u32>,
    #[serde(default)]
    pub overlays: Vec<optikon_core::cluster_values::Overlay>,
}

/// `?wait=false` returns as soon as the hub has accepted the request; `?timeout=SECONDS`
/// bounds the wait for every cluster to finish.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    #[serde(default)]
    pub wait: Option<bool>,
    #[serde(default)]
    pub timeout: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UninstallQuery {
    pub selector: Option<String>,
    #[serde(default)]
    pub wait: Option<bool>,
    #[serde(default)]
    pub timeout: Option<u64>,
}

/// How long to follow a request.
#[derive(Debug, Clone, Copy)]
pub struct Wait {
    /// Follow until every cluster has finished (else only until the hub accepted it).
    pub for_clusters: bool,
    pub timeout: Duration,
}

impl Wait {
    pub fn from_query(
        gateway: &Gateway,
        wait: Option<bool>,
        timeout: Option<u64>,
    ) -> Result<Wait, HttpError> {
        let timeout = match timeout {
            None => gateway.config.default_timeout,
            Some(0) => {
                return Err(HttpError::bad(
                    ErrorCode::InvalidRequest,
                    "timeout must be at least 1 second; use wait=false not to wait",
                ));
            }
            Some(seconds) => Duration::from_secs(seconds),
        };
        if timeout > gateway.config.max_timeout {
            return Err(HttpError::bad(
                ErrorCode::InvalidRequest,
                format!(
                    "timeout may be at most {} seconds",
                    gateway.config.max_timeout.as_secs()
                ),
            ));
        }
        Ok(Wait {
            for_clusters: wait.unwrap_or(true),
            timeout,
        })
    }
}

/// Where a request stands, as the release calls and the event stream report it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestResult {
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    pub release: String,
    pub namespace: String,
    pub selector: String,
    /// Every target cluster has reached a final state (or the request was refused).
    pub complete: bool,
    pub summary: Summary,
    /// Per target cluster: `pending`, `deployed`, `failed` (with the reason), `uninstalled`
    /// or `superseded`. Empty when no cluster matches: that is an answer, not an error.
    pub clusters: BTreeMap<String, ClusterProgress>,
    /// Set when the hub refused the request itself.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub clusters: usize,
    pub done: usize,
    pub failed: usize,
}

impl RequestResult {
    pub fn from_status(status: &RequestStatus) -> Self {
        let (done, failed, clusters) = status.tally();
        RequestResult {
            id: status.id.clone(),
            action: status.action,
            release: status.release.clone(),
            namespace: status.namespace.clone(),
            selector: status.selector.clone(),
            complete: status.is_complete(),
            summary: Summary {
                clusters,
                done,
                failed,
            },
            clusters: status.clusters.clone(),
            error: status.error.clone(),
            accepted_at: Some(status.accepted_at),
        }
    }

    /// A request published whose acceptance has not been seen yet.
    fn published(request: &ReleaseRequest) -> Self {
        RequestResult {
            id: request.id.clone(),
            action: Some(request.action),
            release: request.release.clone(),
            namespace: request.namespace.clone(),
            selector: request.selector.clone(),
            complete: false,
            summary: Summary {
                clusters: 0,
                done: 0,
                failed: 0,
            },
            clusters: BTreeMap::new(),
            error: None,
            accepted_at: None,
        }
    }

    /// 200 when finished, 202 while clusters are still at work.
    pub fn http_status(&self) -> StatusCode {
        if self.complete {
            StatusCode::OK
        } else {
            StatusCode::ACCEPTED
        }
    }
}

/// How long `?wait=false` waits for the hub to accept (and so to name the target clusters
/// or refuse the request).
const ACCEPT_WAIT: Duration = Duration::from_secs(10);

/// Publishes `request` and follows it as `wait` says. A refusal by the hub is an error of
/// the call; a cluster that fails is part of the result.
pub async fn carry_out(
    client: &Client,
    request: &ReleaseRequest,
    wait: Wait,
) -> Result<RequestResult, HttpError> {
    let updates = client.submit(request).await?;
    let mut updates = std::pin::pin!(updates);
    let limit = if wait.for_clusters {
        wait.timeout
    } else {
        wait.timeout.min(ACCEPT_WAIT)
    };
    let deadline = tokio::time::Instant::now() + limit;
    let mut last = None;
    loop {
        match tokio::time::timeout_at(deadline, updates.next()).await {
            Err(_) => break,
            Ok(None) => {
                return Err(HttpError::internal(
                    "the watch on the request's status ended",
                ));
            }
            Ok(Some(status)) => {
                if let Some(error) = status.error {
                    return Err(error.into());
                }
                let finished = status.is_complete() || !wait.for_clusters;
                last = Some(status);
                if finished {
                    break;
                }
            }
        }
    }
    // Updates carry the summary; the answer names every cluster.
    let last = match last {
        Some(status) if status.progress.is_some() => {
            Some(client.request_status(&status.id).await?.unwrap_or(status))
        }
        other => other,
    };
    let result = match &last {
        Some(status) => RequestResult::from_status(status),
        None => RequestResult::published(request),
    };
    tracing::info!(
        id = %result.id, release = %result.release, complete = result.complete,
        clusters = result.summary.clusters, failed = result.summary.failed, "release request followed"
    );
    Ok(result)
}

pub fn check_names(release: &str, namespace: &str) -> Result<(), HttpError> {
    Ok(optikon_core::message::check_release_names(
        release, namespace,
    )?)
}

/// Release name, namespace and selector, checked as the router checks them; the parsed
/// selector.
pub fn check_target(
    release: &str,
    namespace: &str,
    selector: &str,
) -> Result<LabelSelector, HttpError> {
    Ok(optikon_core::message::check_target(
        release, namespace, selector,
    )?)
}

/// Values as given: a JSON object (sent as `values`), YAML/JSON text (sent unchanged, as a
/// values file for helm to read at the edge), or nothing.
pub fn parse_values(values: Option<serde_json::Value>) -> Result<SentValues, HttpError> {
    let bad = |m: String| HttpError::bad(ErrorCode::BadValues, m);
    match values {
        None | Some(serde_json::Value::Null) => Ok(SentValues::default()),
        Some(v @ serde_json::Value::Object(_)) => Ok(SentValues {
            object: Some(v),
            ..SentValues::default()
        }),
        Some(serde_json::Value::String(text)) if text.trim().is_empty() => {
            Ok(SentValues::default())
        }
        Some(serde_json::Value::String(text)) => {
            values::check_file("values", &text).map_err(|e| match e {
                values::ValuesError::File { message, .. } => bad(format!("values: {message}")),
                other => bad(other.to_string()),
            })?;
            Ok(SentValues {
                helm: values::HelmValues {
                    files: vec![values::ValuesFile {
                        name: "values".into(),
                        text,
                    }],
                    ..values::HelmValues::default()
                },
                ..SentValues::default()
            })
        }
        Some(_) => Err(bad(
            "values must be a JSON object, or YAML/JSON text of a mapping (like values.yaml)"
                .into(),
        )),
    }
}

/// Where a request body's values go in the release request.
#[derive(Debug, Default, PartialEq)]
pub struct SentValues {
    pub object: Option<serde_json::Value>,
    pub helm: values::HelmValues,
}

impl SentValues {
    fn fill(self, request: &mut optikon_core::message::ReleaseRequest) {
        request.values = self.object;
        request.helm_values = self.helm;
    }
}

/// Resolves a chart to one that is stored, so an unknown chart is a 404 before anything is
/// published.
pub async fn resolve_chart(client: &Client, spec: &ChartSpec) -> Result<ChartRef, HttpError> {
    let not_found = |m: String| HttpError::not_found(ErrorCode::ChartNotFound, m);
    match (&spec.name, &spec.version, &spec.digest) {
        (None, None, Some(digest)) => {
            if client.charts().await?.iter().any(|c| &c.digest == digest) {
                Ok(ChartRef::Digest {
                    digest: digest.clone(),
                })
            } else {
                Err(not_found(format!(
                    "no stored chart has digest {digest}; push it first"
                )))
            }
        }
        (Some(name), version, None) => {
            let version = match version {
                Some(version) => version.clone(),
                None => client
                    .latest_chart_version(name)
                    .await
                    .map_err(|e| match e {
                        ClientError::NotFound(m) => not_found(m),
                        other => other.into(),
                    })?,
            };
            let stored = client
                .charts()
                .await?
                .iter()
                .any(|c| &c.name == name && c.version == version);
            if !stored {
                return Err(not_found(format!(
                    "chart {name} {version} is not stored; push it with POST /api/v1/charts"
                )));
            }
            Ok(ChartRef::NameVersion {
                name: name.clone(),
                version,
            })
        }
        (None, None, None) => Err(HttpError::bad(
            ErrorCode::InvalidRequest,
            "chart is empty: give {\"name\": ..., \"version\": ...} (version optional: the newest) or {\"digest\": ...}",
        )),
        _ => Err(HttpError::bad(
            ErrorCode::InvalidRequest,
            "chart: give either a name (and optionally a version) or a digest, not both and not a version alone",
        )),
    }
}

/// The release's status on every cluster, uninstalled ones included.
async fn statuses_of(
    client: &Client,
    release: &str,
    namespace: &str,
) -> Result<Vec<ReleaseStatus>, HttpError> {
    Ok(client
        .releases()
        .await?
        .into_iter()
        .filter(|r| r.release == release && r.namespace == namespace)
        .collect())
}

/// 404 unless the release is present (not uninstalled) on a cluster the selector matches.
pub async fn require_release(
    client: &Client,
    release: &str,
    namespace: &str,
    selector: &LabelSelector,
) -> Result<(), HttpError> {
    let clusters = client.clusters_by_name().await?;
    let present = statuses_of(client, release, namespace)
        .await?
        .iter()
        .any(|r| {
            r.state != ReleaseState::Uninstalled
                && clusters
                    .get(&r.cluster)
                    .is_some_and(|c| selector.matches(&c.labels))
        });
    if present {
        Ok(())
    } else {
        Err(HttpError::not_found(
            ErrorCode::ReleaseNotFound,
            format!(
                "release {release:?} is not installed in namespace {namespace:?} on {}",
                describe(selector)
            ),
        ))
    }
}

fn respond(result: RequestResult) -> (StatusCode, Json<RequestResult>) {
    (result.http_status(), Json(result))
}

async fn install(
    State(gateway): State<Gateway>,
    QueryParams(query): QueryParams<WaitQuery>,
    JsonBody(body): JsonBody<InstallBody>,
) -> Result<(StatusCode, Json<RequestResult>), HttpError> {
    let wait = Wait::from_query(&gateway, query.wait, query.timeout)?;
    check_target(&body.release, &body.namespace, &body.selector)?;
    let values = parse_values(body.values)?;
    let chart = resolve_chart(&gateway.client, &body.chart).await?;
    let mut request = Client::new_request(
        Action::Install,
        &body.release,
        &body.namespace,
        &body.selector,
    );
    request.chart = Some(chart);
    request.atomic = body.atomic;
    request.strategy = checked_strategy(body.strategy, request.action)?;
    optikon_core::cluster_values::check_overlays(&body.overlays)?;
    request.overlays = body.overlays;
    values.fill(&mut request);
    Ok(respond(carry_out(&gateway.client, &request, wait).await?))
}

async fn upgrade(
    State(gateway): State<Gateway>,
    Path((namespace, release)): Path<(String, String)>,
    QueryParams(query): QueryParams<WaitQuery>,
    JsonBody(body): JsonBody<UpgradeBody>,
) -> Result<(StatusCode, Json<RequestResult>), HttpError> {
    let wait = Wait::from_query(&gateway, query.wait, query.timeout)?;
    let selector = check_target(&release, &namespace, &body.selector)?;
    let values = parse_values(body.values)?;
    let chart = resolve_chart(&gateway.client, &body.chart).await?;
    require_release(&gateway.client, &release, &namespace, &selector).await?;
    let mut request = Client::new_request(Action::Upgrade, &release, &namespace, &body.selector);
    request.chart = Some(chart);
    request.atomic = body.atomic;
    request.strategy = checked_strategy(body.strategy, request.action)?;
    optikon_core::cluster_values::check_overlays(&body.overlays)?;
    request.overlays = body.overlays;
    values.fill(&mut request);
    Ok(respond(carry_out(&gateway.client, &request, wait).await?))
}

async fn rollback(
    State(gateway): State<Gateway>,
    Path((namespace, release)): Path<(String, String)>,
    QueryParams(query): QueryParams<WaitQuery>,
    JsonBody(body): JsonBody<RollbackBody>,
) -> Result<(StatusCode, Json<RequestResult>), HttpError> {
    let wait = Wait::from_query(&gateway, query.wait, query.timeout)?;
    let selector = check_target(&release, &namespace, &body.selector)?;
    require_release(&gateway.client, &release, &namespace, &selector).await?;
    let mut request = Client::new_request(Action::Rollback, &release, &namespace, &body.selector);
    request.revision = body.revision.filter(|r| *r > 0);
    request.strategy = checked_strategy(body.strategy, request.action)?;
    Ok(respond(carry_out(&gateway.client, &request, wait).await?))
}

async fn uninstall(
    State(gateway): State<Gateway>,
    Path((namespace, release)): Path<(String, String)>,
    QueryParams(query): QueryParams<UninstallQuery>,
) -> Result<(StatusCode, Json<RequestResult>), HttpError> {
    let wait = Wait::from_query(&gateway, query.wait, query.timeout)?;
    check_names(&release, &namespace)?;
    // Required, so that forgetting it never uninstalls everywhere.
    let selector_text = query.selector.ok_or_else(|| {
        HttpError::bad(
            ErrorCode::InvalidRequest,
            "query parameter selector is missing: name the clusters (selector= alone means every cluster)",
        )
    })?;
    let selector = parse_selector(&selector_text)?;
    require_release(&gateway.client, &release, &namespace, &selector).await?;
    let request = Client::new_request(Action::Uninstall, &release, &namespace, &selector_text);
    Ok(respond(carry_out(&gateway.client, &request, wait).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    pub cluster: String,
}

/// What became of a release on one cluster, oldest first, as it reported it.
async fn history(
    State(gateway): State<Gateway>,
    Path((namespace, release)): Path<(String, String)>,
    QueryParams(query): QueryParams<HistoryQuery>,
) -> Result<Json<Vec<ReleaseStatus>>, HttpError> {
    check_names(&release, &namespace)?;
    optikon_core::names::validate_cluster_name(&query.cluster)
        .map_err(|e| HttpError::bad(ErrorCode::InvalidRequest, e.to_string()))?;
    let history = gateway
        .client
        .release_history(&query.cluster, &namespace, &release)
        .await?;
    if history.is_empty() {
        return Err(HttpError::not_found(
            ErrorCode::ReleaseNotFound,
            format!(
                "cluster {:?} has reported nothing of release {release:?} in namespace \
                 {namespace:?} (the hub keeps 7 days)",
                query.cluster
            ),
        ));
    }
    Ok(Json(history))
}

/// What a request would change on each matching cluster, asked of the clusters.
async fn preview(
    State(gateway): State<Gateway>,
    JsonBody(body): JsonBody<PreviewBody>,
) -> Result<Json<ReleasePreview>, HttpError> {
    check_target(&body.release, &body.namespace, &body.selector)?;
    let values = parse_values(body.values)?;
    let mut request =
        Client::new_request(body.action, &body.release, &body.namespace, &body.selector);
    if let Some(chart) = &body.chart {
        request.chart = Some(resolve_chart(&gateway.client, chart).await?);
    }
    request.revision = body.revision.filter(|r| *r > 0);
    optikon_core::cluster_values::check_overlays(&body.overlays)?;
    request.overlays = body.overlays;
    values.fill(&mut request);
    request.check()?;
    Ok(Json(gateway.client.preview(&request).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only releases on clusters whose labels match.
    pub selector: Option<String>,
    pub namespace: Option<String>,
    pub release: Option<String>,
    pub cluster: Option<String>,
    /// Also list releases uninstalled from a cluster.
    #[serde(default)]
    pub all: bool,
}

async fn list(
    State(gateway): State<Gateway>,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<Vec<ReleaseStatus>>, HttpError> {
    let selector = parse_selector(query.selector.as_deref().unwrap_or(""))?;
    let clusters = gateway.client.clusters_by_name().await?;
    let mut releases = gateway.client.releases().await?;
    releases.retain(|r| {
        (query.all || r.state != ReleaseState::Uninstalled)
            && query.namespace.as_ref().is_none_or(|n| &r.namespace == n)
            && query.release.as_ref().is_none_or(|n| &r.release == n)
            && query.cluster.as_ref().is_none_or(|n| &r.cluster == n)
            && clusters
                .get(&r.cluster)
                .is_some_and(|c| selector.matches(&c.labels))
    });
    Ok(Json(releases))
}

async fn status(
    State(gateway): State<Gateway>,
    Path((namespace, release)): Path<(String, String)>,
) -> Result<Json<Vec<ReleaseStatus>>, HttpError> {
    check_names(&release, &namespace)?;
    let statuses = statuses_of(&gateway.client, &release, &namespace).await?;
    if statuses.is_empty() {
        return Err(HttpError::not_found(
            ErrorCode::ReleaseNotFound,
            format!("release {release:?} in namespace {namespace:?} is not known on any cluster"),
        ));
    }
    Ok(Json(statuses))
}

async fn request(
    State(gateway): State<Gateway>,
    Path(id): Path<String>,
) -> Result<Json<RequestResult>, HttpError> {
    check_request_id(&id)?;
    match gateway.client.request_status(&id).await? {
        Some(status) => Ok(Json(RequestResult::from_status(&status))),
        None => Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "request_not_found",
            format!("no request with id {id:?} (requests are kept 30 days)"),
        )),
    }
}

/// A strategy, checked before anything is published.
fn checked_strategy(
    strategy: Option<RolloutStrategy>,
    action: Action,
) -> Result<Option<RolloutStrategy>, HttpError> {
    if let Some(strategy) = &strategy {
        strategy.check(action)?;
    }
    Ok(strategy)
}

fn check_request_id(id: &str) -> Result<(), HttpError> {
    let plain = !id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if plain {
        Ok(())
    } else {
        Err(HttpError::bad(
            ErrorCode::InvalidRequest,
            format!("request id {id:?} must be 1-128 letters, digits, '-' or '_'"),
        ))
    }
}

/// `GET /api/v1/rollouts/{id}`: a rollout's waves, state and what it waits for.
/// The newest rollouts first, at most this many.
const ROLLOUTS_LISTED: usize = 100;

/// The rollouts the hub keeps, newest first (at most 100).
async fn rollouts(State(gateway): State<Gateway>) -> Result<Json<Vec<Rollout>>, HttpError> {
    let mut rollouts = gateway.client.rollouts().await?;
    rollouts.truncate(ROLLOUTS_LISTED);
    Ok(Json(rollouts))
}

async fn rollout(
    State(gateway): State<Gateway>,
    Path(id): Path<String>,
) -> Result<Json<Rollout>, HttpError> {
    check_request_id(&id)?;
    match gateway.client.rollout(&id).await? {
        Some(rollout) => Ok(Json(rollout)),
        None => Err(HttpError::new(
            StatusCode::NOT_FOUND,
            "rollout_not_found",
            format!("no rollout {id:?}: only a request with a strategy has one"),
        )),
    }
}

/// `POST /api/v1/rollouts/{id}/pause|resume|abort`.
async fn control_rollout(
    State(gateway): State<Gateway>,
    Path((id, action)): Path<(String, String)>,
) -> Result<Json<Rollout>, HttpError> {
    check_request_id(&id)?;
    let action = match action.as_str() {
        "pause" => ControlAction::Pause,
        "resume" => ControlAction::Resume,
        "abort" => ControlAction::Abort,
        other => {
            return Err(HttpError::bad(
                ErrorCode::InvalidRequest,
                format!("{other:?} is not a rollout control: use pause, resume or abort"),
            ));
        }
    };
    Ok(Json(gateway.client.control_rollout(&id, action).await?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_come_as_objects_or_text() {
        assert_eq!(parse_values(None).unwrap(), SentValues::default());
        assert_eq!(
            parse_values(Some(serde_json::json!(" "))).unwrap(),
            SentValues::default()
        );
        // Text goes to helm as written: `flag: no` is helm's to read (as false).
        let text = "replicaCount: 2\nflag: no\n";
        let v = parse_values(Some(serde_json::json!(text))).unwrap();
        assert_eq!(v.object, None);
        assert_eq!(v.helm.files.len(), 1);
        assert_eq!(v.helm.files[0].text, text);
        let v = parse_values(Some(serde_json::json!({"a": 1}))).unwrap();
        assert_eq!(v.object, Some(serde_json::json!({"a": 1})));
        assert!(v.helm.is_empty());
        let e = parse_values(Some(serde_json::json!("a: [1"))).unwrap_err();
        assert_eq!(
            (e.status, e.code.as_ref()),
            (StatusCode::BAD_REQUEST, "bad_values")
        );
        let e = parse_values(Some(serde_json::json!([1, 2]))).unwrap_err();
        assert_eq!(e.code.as_ref(), "bad_values");
    }

    #[test]
    fn names_are_checked_with_their_own_codes() {
        assert_eq!(
            check_names("Web!", "default").unwrap_err().code.as_ref(),
            "bad_release_name"
        );
        assert_eq!(
            check_names("web", "Default").unwrap_err().code.as_ref(),
            "bad_namespace"
        );
        assert!(check_names("web.v2", "default").is_ok());
    }
}
