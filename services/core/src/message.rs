//! The JSON messages that travel on Optikon's NATS subjects and sit in its KV buckets.
//!
//! Every top-level message carries `"apiVersion": "optikon/v1"`, so a consumer can refuse a
//! body from a future or foreign writer by name instead of misreading it. JSON Schemas for
//! these types are generated into `schemas/` (see `schema::all`).

use std::collections::BTreeMap;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub use crate::values::HelmValues;

/// The only message version this build understands.
pub const API_VERSION: &str = "optikon/v1";

/// Marker field: serializes as `"optikon/v1"` and refuses any other value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApiVersion;

impl Serialize for ApiVersion {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(API_VERSION)
    }
}

impl<'de> Deserialize<'de> for ApiVersion {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = String::deserialize(d)?;
        if v == API_VERSION {
            Ok(ApiVersion)
        } else {
            Err(serde::de::Error::custom(format!(
                "unsupported apiVersion {v:?}: this build understands {API_VERSION:?}"
            )))
        }
    }
}

impl JsonSchema for ApiVersion {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ApiVersion".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "const": API_VERSION, "type": "string" })
    }
}

/// A point in time, written as RFC 3339 (`2026-11-25T22:48:54Z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub OffsetDateTime);

impl Timestamp {
    pub fn now() -> Self {
        Timestamp(OffsetDateTime::now_utc())
    }

    /// Seconds elapsed from `self` to `later` (negative if `later` is earlier).
    pub fn seconds_until(&self, later: Timestamp) -> f64 {
        (later.0 - self.0).as_seconds_f64()
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.format(&Rfc3339).map_err(|_| fmt::Error)?;
        f.write_str(&s)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = String::deserialize(d)?;
        OffsetDateTime::parse(&v, &Rfc3339)
            .map(Timestamp)
            .map_err(|e| serde::de::Error::custom(format!("timestamp {v:?} is not RFC 3339: {e}")))
    }
}

impl JsonSchema for Timestamp {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Timestamp".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "format": "date-time" })
    }
}

/// What a user asks for a release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Install,
    Upgrade,
    Rollback,
    Uninstall,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Install => "install",
            Action::Upgrade => "upgrade",
            Action::Rollback => "rollback",
            Action::Uninstall => "uninstall",
        })
    }
}

/// Which chart a request means: a name and version from the chart index, or an exact digest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ChartRef {
    Digest { digest: String },
    NameVersion { name: String, version: String },
}

impl fmt::Display for ChartRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ChartRef::Digest { digest } => f.write_str(digest),
            ChartRef::NameVersion { name, version } => write!(f, "{name}:{version}"),
        }
    }
}

/// A release request, published by a user (CLI, gateway, script) on
/// `optikon.release.request` and stored in the `RELEASE_REQUESTS` stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReleaseRequest {
    pub api_version: ApiVersion,
    /// Chosen by the client, unique per request; a request published twice with the same id
    /// is applied once.
    pub id: String,
    pub action: Action,
    /// Helm release name (DNS-1123 subdomain, at most 53 characters).
    pub release: String,
    pub namespace: String,
    /// Kubernetes label selector over cluster labels; empty selects every cluster.
    pub selector: String,
    /// Required for install and upgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<ChartRef>,
    /// Values overriding the chart's `values.yaml`; a JSON object. Applied first, as helm's
    /// first `-f` file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<serde_json::Value>,
    /// Values files and `--set` flags as the user gave them to the CLI, handed to helm at the
    /// edge unchanged, after `values`.
    #[serde(default, skip_serializing_if = "HelmValues::is_empty")]
    pub helm_values: HelmValues,
    /// For rollback: the Helm revision to return to (0 or absent = the previous one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u32>,
    /// Install and upgrade: on a cluster where it fails, undo it there, as
    /// `helm upgrade --install --atomic` does: an upgrade is rolled back to the last
    /// successful revision, an install is uninstalled. Each cluster on its own.
    #[serde(default, skip_serializing_if = "is_false")]
    pub atomic: bool,
    /// Reach the clusters in waves, a few at a time, behind a health gate, instead of all at
    /// once (see [`crate::rollout`] and docs/rollouts.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<crate::rollout::RolloutStrategy>,
    /// Values files for the clusters each selector matches, after `helm_values`' files.
    /// `{{ .Cluster.Name }}` and `{{ .Cluster.Labels.KEY }}` in any values are rendered per
    /// cluster (see [`crate::cluster_values`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overlays: Vec<crate::cluster_values::Overlay>,
}

fn is_false(value: &bool) -> bool {
    !*value
}

/// Checks where a release is to go — its name, namespace and selector — the way every client
/// and the router check it, with the error code each problem gets. Returns the parsed
/// selector.
pub fn check_target(
    release: &str,
    namespace: &str,
    selector: &str,
) -> Result<crate::selector::LabelSelector, ApiError> {
    check_release_names(release, namespace)?;
    crate::selector::LabelSelector::parse(selector)
        .map_err(|e| ApiError::new(ErrorCode::BadSelector, e.to_string()))
}

/// The release name and namespace part of [`check_target`], for calls that name a release
/// without choosing clusters.
pub fn check_release_names(release: &str, namespace: &str) -> Result<(), ApiError> {
    crate::names::validate_release_name(release)
        .map_err(|e| ApiError::new(ErrorCode::BadReleaseName, e.to_string()))?;
    crate::names::validate_namespace(namespace)
        .map_err(|e| ApiError::new(ErrorCode::BadNamespace, e.to_string()))
}

impl ReleaseRequest {
    /// Everything about the request that can be checked without the hub's state: the
    /// target ([`check_target`]), values that are a mapping, and a chart for an install or
    /// upgrade. The router checks this before anything changes; clients may check it first
    /// to fail fast. Returns the parsed selector.
    pub fn check(&self) -> Result<crate::selector::LabelSelector, ApiError> {
        let selector = check_target(&self.release, &self.namespace, &self.selector)?;
        if let Some(values) = &self.values
            && !values.is_object()
        {
            return Err(ApiError::new(
                ErrorCode::BadValues,
                "values must be a JSON object (a YAML mapping), like the chart's values.yaml",
            ));
        }
        self.helm_values
            .check()
            .map_err(|e| ApiError::new(ErrorCode::BadValues, e.to_string()))?;
        if self.atomic && !matches!(self.action, Action::Install | Action::Upgrade) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "atomic applies to install and upgrade, not to {}",
                    self.action
                ),
            ));
        }
        if let Some(strategy) = &self.strategy {
            strategy.check(self.action)?;
        }
        crate::cluster_values::check_overlays(&self.overlays)?;
        if matches!(self.action, Action::Install | Action::Upgrade) && self.chart.is_none() {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "{} needs a chart: give {{\"name\", \"version\"}} or {{\"digest\"}}",
                    self.action
                ),
            ));
        }
        Ok(selector)
    }
}

/// A chart resolved to its exact bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChartPin {
    pub name: String,
    pub version: String,
    /// `sha256:<hex>` of the .tgz bytes; also the object's name in the `charts` store.
    pub digest: String,
    pub size: u64,
}

/// The desired state of one release on one cluster. Written by the router into the `desired`
/// KV bucket and sent to the edge as a command on `optikon.cmd.<cluster>` (at the edge stored under
/// `optikon.cmd.<cluster>.<namespace>.<release>`).
///
/// `generation` grows by one with each change for this cluster/namespace/release; the edge
/// applies a generation at most once, and a newer one supersedes an older one not yet applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DesiredRelease {
    pub api_version: ApiVersion,
    pub cluster: String,
    pub namespace: String,
    pub release: String,
    pub generation: u64,
    pub request_id: String,
    /// What the user asked. Install and upgrade both mean "make it run `chart` with
    /// `values`"; upgrade additionally requires the release to exist already.
    pub action: Action,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<ChartPin>,
    #[serde(default)]
    pub values: serde_json::Value,
    /// Values files and flags for helm, after `values` (see [`ReleaseRequest::helm_values`]).
    #[serde(default, skip_serializing_if = "HelmValues::is_empty")]
    pub helm_values: HelmValues,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_to: Option<u32>,
    /// Undo a failed install or upgrade on this cluster (see [`ReleaseRequest::atomic`]).
    #[serde(default, skip_serializing_if = "is_false")]
    pub atomic: bool,
    pub requested_at: Timestamp,
    /// The request's sequence in `RELEASE_REQUESTS`. The router never lets a request
    /// replace desired state that a later request (a higher sequence) already set, however
    /// the two were delivered; absent in records written before it was kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_sequence: Option<u64>,
}

/// Where a release stands on one cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseState {
    /// In a rollout, waiting for its wave: nothing was sent to the cluster yet.
    Queued,
    /// The command is known but not finished.
    Pending,
    Deployed,
    Failed,
    Uninstalled,
    /// A newer generation arrived before this one was applied; the newer one wins.
    Superseded,
    /// Left out by a rollout (unreachable under `offline: skip`, or the rollout stopped
    /// before its wave): nothing was sent. Counted as failed, never as a success.
    Skipped,
}

impl ReleaseState {
    /// Whether the state ends the work for its generation.
    pub fn is_final(self) -> bool {
        !matches!(self, ReleaseState::Pending | ReleaseState::Queued)
    }

    /// Whether a request counts it as failed: it failed, or it was left out.
    pub fn is_failure(self) -> bool {
        matches!(self, ReleaseState::Failed | ReleaseState::Skipped)
    }
}

impl fmt::Display for ReleaseState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReleaseState::Queued => "queued",
            ReleaseState::Pending => "pending",
            ReleaseState::Deployed => "deployed",
            ReleaseState::Failed => "failed",
            ReleaseState::Uninstalled => "uninstalled",
            ReleaseState::Superseded => "superseded",
            ReleaseState::Skipped => "skipped",
        })
    }
}

/// Chart metadata as shown in release listings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChartSummary {
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_version: Option<String>,
}

/// A release's state on one cluster, published by the executor on
/// `optikon.status.<cluster>.release.<namespace>.<release>` and folded by the hub into the `releases` KV bucket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseStatus {
    pub api_version: ApiVersion,
    pub cluster: String,
    pub namespace: String,
    pub release: String,
    pub generation: u64,
    pub request_id: String,
    pub action: Action,
    pub state: ReleaseState,
    /// Helm revision on the cluster once applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<ChartSummary>,
    /// Why it failed, or what happened, in words a user can act on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_deployed: Option<Timestamp>,
    pub at: Timestamp,
}

/// A cluster's health as last measured at the edge, published by the health-prober on
/// `optikon.status.<cluster>.heartbeat`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    pub api_version: ApiVersion,
    pub cluster: String,
    /// The labels the site was configured with; the hub uses them when it first sees the cluster.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// `/readyz` of the API server answered ok.
    pub api_ready: bool,
    pub nodes_ready: u32,
    pub nodes_total: u32,
    pub pods_total: u32,
    #[serde(default)]
    pub pods_by_phase: BTreeMap<String, u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    /// What went wrong while probing, if anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Seconds between heartbeats; the hub calls a cluster stale after three missed ones.
    pub interval_seconds: u32,
    pub at: Timestamp,
}

impl Heartbeat {
    /// The site's health at `now` if this is its newest heartbeat: a stale one (three
    /// intervals old) makes it unreachable, whatever it said.
    pub fn health(&self, now: Timestamp) -> Health {
        let stale_after = f64::from(self.interval_seconds.max(1)) * 3.0;
        if self.at.seconds_until(now) > stale_after {
            Health::Unreachable
        } else if self.api_ready && self.nodes_ready == self.nodes_total && self.error.is_none() {
            Health::Healthy
        } else {
            Health::Degraded
        }
    }
}

/// Health as a reader derives it from the last heartbeat and the time now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Health {
    Healthy,
    /// Heartbeats arrive, but the API server or some nodes are not ready.
    Degraded,
    /// No heartbeat for three intervals: the edge is cut off or down. Never shown as healthy.
    Unreachable,
    /// Registered, never heard from.
    Unknown,
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Unreachable => "unreachable",
            Health::Unknown => "unknown",
        })
    }
}

/// A cluster in the hub registry (KV bucket `clusters`, key = cluster name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterRecord {
    pub api_version: ApiVersion,
    pub name: String,
    /// The JetStream domain of the edge's leaf node.
    pub domain: String,
    pub labels: BTreeMap<String, String>,
    pub registered_at: Timestamp,
    /// The cluster's newest heartbeat. Not stored in the registry: the edge writes its
    /// heartbeats to the `heartbeats` bucket, and readers fill this in from there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<Heartbeat>,
}

impl ClusterRecord {
    /// Health at `now`: stale heartbeats make a cluster unreachable, whatever they said.
    pub fn health(&self, now: Timestamp) -> Health {
        self.last_heartbeat
            .as_ref()
            .map_or(Health::Unknown, |hb| hb.health(now))
    }

    pub fn last_seen(&self) -> Option<Timestamp> {
        self.last_heartbeat.as_ref().map(|hb| hb.at)
    }
}

/// An edge announcing itself to the hub (request on `optikon.api.cluster.register.<name>`;
/// a body naming another cluster than the subject is refused).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterRegistration {
    pub api_version: ApiVersion,
    pub name: String,
    pub domain: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A chart in the index (KV bucket `chart-index`, key `<name>.<version>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChartIndexEntry {
    pub api_version: ApiVersion,
    pub name: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// `v2` or `v1`, from Chart.yaml.
    pub chart_api_version: String,
    pub digest: String,
    pub size: u64,
    pub ingested_at: Timestamp,
}

impl ChartIndexEntry {
    pub fn pin(&self) -> ChartPin {
        ChartPin {
            name: self.name.clone(),
            version: self.version.clone(),
            digest: self.digest.clone(),
            size: self.size,
        }
    }
}

/// One cluster's part in a request, as the hub tracks it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterProgress {
    pub generation: u64,
    pub state: ReleaseState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// How far a request has come: counts over its target clusters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestProgress {
    /// Clusters the request matched.
    pub targets: usize,
    /// Of those, the ones in a final state (deployed, failed, uninstalled, superseded, …).
    pub done: usize,
    /// Of the done ones, the failed.
    pub failed: usize,
}

/// Where a request stands. Stored as a summary plus one entry per cluster, so a change on
/// one cluster writes and announces only that cluster:
///
/// - in KV `requests` (key = request id): the summary, with `progress` and no `clusters`;
/// - in KV `request-clusters` (key = `<request id>.<cluster>`): each cluster's progress;
/// - on `optikon.event.request.<id>`: the summary with the clusters that just changed;
/// - from the client library (`request_status`): the summary with every cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RequestStatus {
    pub api_version: ApiVersion,
    pub id: String,
    /// Absent only when the request body could not be read at all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    pub release: String,
    pub namespace: String,
    pub selector: String,
    /// Set when the request itself was refused; then `clusters` is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
    /// Clusters and their progress: every matching cluster in an assembled status, the
    /// changed ones in an event, none in the stored summary (see above).
    #[serde(default)]
    pub clusters: BTreeMap<String, ClusterProgress>,
    /// The counts over every target cluster; absent in a status written before they were
    /// kept, whose `clusters` then holds every target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress: Option<RequestProgress>,
    pub accepted_at: Timestamp,
}

impl RequestStatus {
    /// Counts of (finished, failed, total) clusters.
    pub fn tally(&self) -> (usize, usize, usize) {
        if let Some(p) = self.progress {
            return (p.done, p.failed, p.targets);
        }
        let done = self
            .clusters
            .values()
            .filter(|c| c.state.is_final())
            .count();
        let failed = self
            .clusters
            .values()
            .filter(|c| c.state.is_failure())
            .count();
        (done, failed, self.clusters.len())
    }

    /// True once the request was refused or every target cluster reached a final state.
    pub fn is_complete(&self) -> bool {
        let (done, _, total) = self.tally();
        self.error.is_some() || done >= total
    }

    /// The counts over `clusters` (which must hold every target).
    pub fn counted(clusters: &BTreeMap<String, ClusterProgress>) -> RequestProgress {
        RequestProgress {
            targets: clusters.len(),
            done: clusters.values().filter(|c| c.state.is_final()).count(),
            failed: clusters.values().filter(|c| c.state.is_failure()).count(),
        }
    }
}

impl ClusterProgress {
    /// What changing from `self` to `next` does to a request's counts: (done, failed).
    pub fn delta(&self, next: &ClusterProgress) -> (isize, isize) {
        let count = |p: &ClusterProgress| {
            (
                isize::from(p.state.is_final()),
                isize::from(p.state.is_failure()),
            )
        };
        let (d0, f0) = count(self);
        let (d1, f1) = count(next);
        (d1 - d0, f1 - f0)
    }
}

impl RequestProgress {
    /// These counts after a cluster's change by `delta` (see [`ClusterProgress::delta`]).
    pub fn apply(self, (done, failed): (isize, isize)) -> RequestProgress {
        RequestProgress {
            targets: self.targets,
            done: self.done.saturating_add_signed(done),
            failed: self.failed.saturating_add_signed(failed),
        }
    }
}

/// A machine-readable error kind plus a message that says what was wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiError {
    pub code: ErrorCode,
    pub message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for ApiError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The message body is not valid JSON of the expected shape.
    MalformedMessage,
    /// Well-formed, but asks for something impossible (e.g. an install without a chart).
    InvalidRequest,
    BadSelector,
    BadReleaseName,
    BadNamespace,
    BadLabel,
    BadChart,
    BadValues,
    ChartNotFound,
    /// Same chart name and version already stored with other bytes.
    ChartConflict,
    ReleaseNotFound,
    ClusterNotFound,
    Internal,
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&s)
    }
}

/// The reply to a request/reply API call: exactly one of `ok` or `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Reply<T> {
    Ok(T),
    Error(ApiError),
}

impl<T> Reply<T> {
    pub fn into_result(self) -> Result<T, ApiError> {
        match self {
            Reply::Ok(v) => Ok(v),
            Reply::Error(e) => Err(e),
        }
    }
}

impl<T> From<Result<T, ApiError>> for Reply<T> {
    fn from(r: Result<T, ApiError>) -> Self {
        match r {
            Ok(v) => Reply::Ok(v),
            Err(e) => Reply::Error(e),
        }
    }
}

/// Parses a message body, naming the message kind in the error.
pub fn decode<T: serde::de::DeserializeOwned>(kind: &str, body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::new(
            ErrorCode::MalformedMessage,
            format!("malformed {kind}: {e}; see schemas/ for the expected shape"),
        )
    })
}

/// An edge asking the hub for one chart archive, on `optikon.api.chart.fetch.<cluster>`.
/// The cluster is the subject's, never the body's: the hub's permissions let only that
/// cluster's identity publish there. The hub answers only for a digest that the cluster's
/// own desired state names; the reply is the archive in chunks (see
/// `optikon_runtime::chart_fetch`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ChartFetchRequest {
    pub api_version: ApiVersion,
    /// `sha256:<hex>` of the archive, as in the command's [`ChartPin`].
    pub digest: String,
}

/// One Service a site runs, answered as `<name>.<namespace>.<base domain>` by proximity DNS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEndpoint {
    pub namespace: String,
    pub name: String,
    /// Where clients outside the cluster reach it: the load balancer's addresses, else the
    /// Service's `externalIPs`.
    pub addresses: Vec<std::net::IpAddr>,
}

/// The Services one site runs that have an address outside their cluster: the site's entry
/// in the hub's `services` bucket (key: the cluster), put by the site itself whenever they
/// change. Whether the site is up is read from its heartbeats, not from here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SiteServices {
    pub api_version: ApiVersion,
    pub cluster: String,
    pub services: Vec<ServiceEndpoint>,
    pub at: Timestamp,
}

/// A site's DNS server asks the hub for the sites nearest to it that run a Service
/// (request on `optikon.api.dns.resolve.<cluster>`; reply `Reply<DnsAnswer>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsResolveRequest {
    pub api_version: ApiVersion,
    pub namespace: String,
    pub service: String,
}

/// The sites that answer a name, nearest first; empty when no healthy site runs it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DnsAnswer {
    pub sites: Vec<DnsSite>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DnsSite {
    pub cluster: String,
    pub addresses: Vec<std::net::IpAddr>,
    /// Kilometres from the asking site, when both positions are known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distance_km: Option<f64>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_counts_follow_each_clusters_change() {
        let at = |state| ClusterProgress {
            generation: 1,
            state,
            revision: None,
            reason: None,
        };
        let start = RequestProgress {
            targets: 3,
            done: 0,
            failed: 0,
        };
        let p = start
            .apply(at(ReleaseState::Pending).delta(&at(ReleaseState::Deployed)))
            .apply(at(ReleaseState::Pending).delta(&at(ReleaseState::Failed)));
        assert_eq!((p.done, p.failed), (2, 1));
        // A failed cluster retried and deployed: still done, no longer failed.
        let p = p.apply(at(ReleaseState::Failed).delta(&at(ReleaseState::Deployed)));
        assert_eq!((p.done, p.failed), (2, 0));
        let status = RequestStatus {
            api_version: ApiVersion,
            id: "r".into(),
            action: None,
            release: "web".into(),
            namespace: "default".into(),
            selector: String::new(),
            error: None,
            clusters: BTreeMap::new(),
            progress: Some(p),
            accepted_at: Timestamp::now(),
        };
        assert_eq!(status.tally(), (2, 0, 3));
        assert!(!status.is_complete());
        let clusters = BTreeMap::from([
            ("a".to_owned(), at(ReleaseState::Deployed)),
            ("b".to_owned(), at(ReleaseState::Failed)),
        ]);
        assert_eq!(
            RequestStatus::counted(&clusters),
            RequestProgress {
                targets: 2,
                done: 2,
                failed: 1
            }
        );
    }

    use super::*;

    #[test]
    fn requests_are_checked_with_one_code_per_problem() {
        let request = |release: &str, namespace: &str, selector: &str| ReleaseRequest {
            api_version: ApiVersion,
            id: "r-1".into(),
            action: Action::Install,
            release: release.into(),
            namespace: namespace.into(),
            selector: selector.into(),
            chart: Some(ChartRef::NameVersion {
                name: "nginx".into(),
                version: "1.0.0".into(),
            }),
            values: None,
            helm_values: HelmValues::default(),
            revision: None,
            atomic: false,
            strategy: None,
            overlays: Vec::new(),
        };
        let code = |r: &ReleaseRequest| r.check().map(|_| ()).map_err(|e| e.code);
        assert_eq!(
            code(&request("web.v2", "default", "tier in (edge,store)")),
            Ok(())
        );
        assert_eq!(
            code(&request("Web!", "default", "")),
            Err(ErrorCode::BadReleaseName)
        );
        assert_eq!(
            code(&request("web", "Default", "")),
            Err(ErrorCode::BadNamespace)
        );
        assert_eq!(
            code(&request("web", "default", "a in (")),
            Err(ErrorCode::BadSelector)
        );
        let mut values = request("web", "default", "");
        values.values = Some(serde_json::json!([1]));
        assert_eq!(code(&values), Err(ErrorCode::BadValues));
        let mut files = request("web", "default", "");
        files.helm_values.files.push(crate::values::ValuesFile {
            name: "prod.yaml".into(),
            text: "a: [".into(),
        });
        let err = files.check().unwrap_err();
        assert_eq!(err.code, ErrorCode::BadValues);
        assert!(err.message.contains("prod.yaml"), "{}", err.message);
        let mut chartless = request("web", "default", "");
        chartless.chart = None;
        assert_eq!(code(&chartless), Err(ErrorCode::InvalidRequest));
        chartless.action = Action::Uninstall;
        assert_eq!(code(&chartless), Ok(()));
        chartless.atomic = true;
        let err = chartless.check().unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidRequest);
        assert_eq!(
            err.message,
            "atomic applies to install and upgrade, not to uninstall"
        );
        let mut atomic = request("web", "default", "");
        atomic.atomic = true;
        assert_eq!(code(&atomic), Ok(()));
    }

    #[test]
    fn api_version_is_checked() {
        let body = br#"{"apiVersion":"optikon/v2","id":"r1","action":"install","release":"nginx","namespace":"default","selector":""}"#;
        let err = decode::<ReleaseRequest>("release request", body).unwrap_err();
        assert_eq!(err.code, ErrorCode::MalformedMessage);
        assert!(err.message.contains("optikon/v2"), "{}", err.message);
    }

    #[test]
    fn unknown_fields_in_requests_are_refused() {
        let body = br#"{"apiVersion":"optikon/v1","id":"r1","action":"install","release":"nginx","namespace":"default","selector":"","chrt":{"name":"x","version":"1"}}"#;
        let err = decode::<ReleaseRequest>("release request", body).unwrap_err();
        assert!(err.message.contains("chrt"), "{}", err.message);
    }

    #[test]
    fn chart_ref_reads_both_shapes() {
        let a: ChartRef = serde_json::from_str(r#"{"name":"nginx","version":"1.0.0"}"#).unwrap();
        let b: ChartRef = serde_json::from_str(r#"{"digest":"sha256:ab"}"#).unwrap();
        assert!(matches!(a, ChartRef::NameVersion { .. }));
        assert!(matches!(b, ChartRef::Digest { .. }));
    }

    #[test]
    fn stale_heartbeat_is_unreachable_never_healthy() {
        let at = Timestamp(OffsetDateTime::UNIX_EPOCH + time::Duration::seconds(1000));
        let record = ClusterRecord {
            api_version: ApiVersion,
            name: "c".into(),
            domain: "c".into(),
            labels: BTreeMap::new(),
            registered_at: at,
            last_heartbeat: Some(Heartbeat {
                api_version: ApiVersion,
                cluster: "c".into(),
                labels: BTreeMap::new(),
                api_ready: true,
                nodes_ready: 1,
                nodes_total: 1,
                pods_total: 3,
                pods_by_phase: BTreeMap::new(),
                kubernetes_version: None,
                error: None,
                interval_seconds: 5,
                at,
            }),
        };
        let later = |s| Timestamp(at.0 + time::Duration::seconds(s));
        assert_eq!(record.health(later(14)), Health::Healthy);
        assert_eq!(record.health(later(16)), Health::Unreachable);
    }

    #[test]
    fn timestamps_round_trip_as_rfc3339() {
        let t: Timestamp = serde_json::from_str(r#""2026-11-25T22:48:54Z""#).unwrap();
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            r#""2026-11-25T22:48:54Z""#
        );
        assert!(serde_json::from_str::<Timestamp>(r#""yesterday""#).is_err());
    }
}
