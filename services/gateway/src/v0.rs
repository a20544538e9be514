//! `/v0`: the original (2018) Optikon REST API, for the clients written against it — its
//! jQuery page among them, served from another origin, hence CORS.
//!
//! Shapes are the original's: clusters in the Kubernetes cluster-registry shape with the pod
//! count as the `NumPods` annotation, releases in Helm's Go field names, errors as
//! `{"code": <HTTP status>, "message"}`. Unlike the original, one cluster failing does not
//! fail the call: each cluster's result is in the answer.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode};
use optikon_client::Client;
use optikon_core::message::{
    Action, ChartRef, ClusterRecord, ErrorCode, ReleaseState, ReleaseStatus, Timestamp,
};
use serde::{Deserialize, Serialize};
use tower_http::cors::{Any, CorsLayer};

use crate::Gateway;
use crate::charts::push;
use crate::clusters::parse_selector;
use crate::error::{HttpError, V0Error, V0Query};
use crate::releases::{RequestResult, Wait, carry_out, check_names, require_release};
use crate::routes::Routes;
use crate::upload::Form;

pub fn routes() -> Routes<Gateway> {
    let cors = CorsLayer::new()
        .allow_origin(Any)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::DELETE,
            Method::OPTIONS,
        ])
        .allow_headers(Any)
        .max_age(Duration::from_secs(3600));
    Routes::new()
        .get("/v0/clusters", clusters)
        .get("/v0/releases", releases)
        .post("/v0/releases", install)
        .put("/v0/releases/{name}", upgrade)
        .delete("/v0/releases/{name}", uninstall)
        // The fallback first: set later, it would replace the layered one and preflight
        // requests (OPTIONS) would get 405 instead of CORS headers.
        .map_router(|router| {
            router
                .method_not_allowed_fallback(crate::method_not_allowed)
                .layer(cors)
        })
}

/// A cluster in the shape of the Kubernetes cluster registry's `Cluster`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct V0Cluster {
    pub kind: &'static str,
    pub api_version: &'static str,
    pub metadata: V0Metadata,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct V0Metadata {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `NumPods` and `Lat`/`Long` (as the original page reads them; the position from the
    /// `lat`/`long` labels, in signed degrees) plus `Health`, `KubernetesVersion`,
    /// `LastSeen`; all strings, as annotations are.
    pub annotations: BTreeMap<String, String>,
    pub creation_timestamp: Timestamp,
}

impl V0Cluster {
    pub fn new(record: &ClusterRecord, now: Timestamp) -> Self {
        let mut annotations = BTreeMap::new();
        let heartbeat = record.last_heartbeat.as_ref();
        annotations.insert(
            "NumPods".to_owned(),
            heartbeat
                .map(|h| h.pods_total.to_string())
                .unwrap_or_else(|| "0".into()),
        );
        annotations.insert("Health".to_owned(), record.health(now).to_string());
        if let Some(version) = heartbeat.and_then(|h| h.kubernetes_version.clone()) {
            annotations.insert("KubernetesVersion".to_owned(), version);
        }
        if let Some(at) = record.last_seen() {
            annotations.insert("LastSeen".to_owned(), at.to_string());
        }
        // The original page's map reads `Lat`/`Long` as signed decimal degrees; Optikon keeps
        // a site's position in its `lat`/`long` labels (docs/dns.md).
        if let Ok(Some(at)) = optikon_core::proximity::Location::from_labels(&record.labels) {
            annotations.insert("Lat".to_owned(), at.lat.to_string());
            annotations.insert("Long".to_owned(), at.long.to_string());
        }
        V0Cluster {
            kind: "Cluster",
            api_version: "clusterregistry.k8s.io/v1alpha1",
            metadata: V0Metadata {
                name: record.name.clone(),
                labels: record.labels.clone(),
                annotations,
                creation_timestamp: record.registered_at,
            },
        }
    }
}

/// A release on one cluster, in Helm's Go field names as the original API returned them.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct V0Release {
    pub name: String,
    pub namespace: String,
    /// The Helm revision.
    pub version: u32,
    pub on_cluster: String,
    pub chart: V0Chart,
    pub info: V0Info,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct V0Chart {
    pub metadata: V0ChartMetadata,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct V0ChartMetadata {
    pub name: String,
    pub version: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub app_version: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct V0Info {
    pub status: V0Status,
    pub first_deployed: String,
    pub last_deployed: String,
    /// When it was uninstalled; empty while it is not.
    pub deleted: String,
    pub description: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct V0Status {
    /// Helm 2's status names: `DEPLOYED`, `FAILED`, `DELETED`, `PENDING_INSTALL`, ...
    pub code: &'static str,
}

impl V0Release {
    pub fn new(status: &ReleaseStatus) -> Self {
        let code = match (status.state, status.action) {
            (ReleaseState::Deployed, _) => "DEPLOYED",
            (ReleaseState::Failed, _) => "FAILED",
            (ReleaseState::Uninstalled, _) => "DELETED",
            (ReleaseState::Superseded, _) => "SUPERSEDED",
            (ReleaseState::Pending, Action::Install) => "PENDING_INSTALL",
            (ReleaseState::Pending, Action::Upgrade) => "PENDING_UPGRADE",
            (ReleaseState::Pending, Action::Rollback) => "PENDING_ROLLBACK",
            (ReleaseState::Pending, Action::Uninstall) => "DELETING",
            // Rollout states of a request, never of a release on a cluster; Helm 2's own
            // name for a state it cannot tell.
            (ReleaseState::Queued | ReleaseState::Skipped, _) => "UNKNOWN",
        };
        let description = status.reason.clone().unwrap_or_else(|| {
            match (status.action, status.state) {
                (Action::Install, ReleaseState::Deployed) => "Install complete",
                (Action::Upgrade, ReleaseState::Deployed) => "Upgrade complete",
                (Action::Rollback, ReleaseState::Deployed) => "Rollback complete",
                (Action::Uninstall, ReleaseState::Uninstalled) => "Deletion complete",
                _ => "",
            }
            .to_owned()
        });
        let at = status.at.to_string();
        V0Release {
            name: status.release.clone(),
            namespace: status.namespace.clone(),
            version: status.revision.unwrap_or(0),
            on_cluster: status.cluster.clone(),
            chart: V0Chart {
                metadata: V0ChartMetadata {
                    name: status
                        .chart
                        .as_ref()
                        .map(|c| c.name.clone())
                        .unwrap_or_default(),
                    version: status
                        .chart
                        .as_ref()
                        .map(|c| c.version.clone())
                        .unwrap_or_default(),
                    app_version: status
                        .chart
                        .as_ref()
                        .and_then(|c| c.app_version.clone())
                        .unwrap_or_default(),
                },
            },
            info: V0Info {
                status: V0Status { code },
                first_deployed: status
                    .first_deployed
                    .map(|t| t.to_string())
                    .unwrap_or_else(|| at.clone()),
                last_deployed: at.clone(),
                deleted: if status.state == ReleaseState::Uninstalled {
                    at
                } else {
                    String::new()
                },
                description,
            },
        }
    }
}

/// The answer to a write: the request and every target cluster's outcome.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct V0Result {
    pub name: String,
    pub namespace: String,
    #[serde(rename = "RequestID")]
    pub request_id: String,
    /// Every target cluster finished (else some are still `PENDING` when the wait ended).
    pub complete: bool,
    pub clusters: Vec<V0ClusterResult>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct V0ClusterResult {
    pub on_cluster: String,
    /// `DEPLOYED`, `FAILED`, `DELETED`, `PENDING`, `SUPERSEDED`.
    pub status: String,
    pub version: u32,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl V0Result {
    fn new(result: &RequestResult) -> Self {
        V0Result {
            name: result.release.clone(),
            namespace: result.namespace.clone(),
            request_id: result.id.clone(),
            complete: result.complete,
            clusters: result
                .clusters
                .iter()
                .map(|(cluster, progress)| V0ClusterResult {
                    on_cluster: cluster.clone(),
                    status: match progress.state {
                        ReleaseState::Uninstalled => "DELETED".to_owned(),
                        state => state.to_string().to_uppercase(),
                    },
                    version: progress.revision.unwrap_or(0),
                    reason: progress.reason.clone().unwrap_or_default(),
                })
                .collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct LabelsQuery {
    /// A Kubernetes label selector over cluster labels.
    pub labels: Option<String>,
    /// Seconds to wait for every cluster (default: the gateway's).
    pub timeout: Option<u64>,
}

impl LabelsQuery {
    /// Writes need the selector: forgetting it must not mean "every cluster".
    fn required_labels(&self) -> Result<&str, HttpError> {
        self.labels.as_deref().ok_or_else(|| {
            HttpError::bad(
                ErrorCode::InvalidRequest,
                "query parameter labels (a cluster label selector, e.g. labels=Kubecon=True) is missing",
            )
        })
    }
}

async fn clusters(State(gateway): State<Gateway>) -> Result<Json<Vec<V0Cluster>>, V0Error> {
    let now = Timestamp::now();
    let clusters = gateway.client.clusters().await?;
    Ok(Json(
        clusters.iter().map(|c| V0Cluster::new(c, now)).collect(),
    ))
}

async fn releases(
    State(gateway): State<Gateway>,
    V0Query(query): V0Query<LabelsQuery>,
) -> Result<Json<Vec<V0Release>>, V0Error> {
    let selector = parse_selector(query.labels.as_deref().unwrap_or(""))?;
    let clusters = gateway.client.clusters_by_name().await?;
    let releases = gateway.client.releases().await?;
    Ok(Json(
        releases
            .iter()
            .filter(|r| r.state != ReleaseState::Uninstalled)
            .filter(|r| {
                clusters
                    .get(&r.cluster)
                    .is_some_and(|c| selector.matches(&c.labels))
            })
            .map(V0Release::new)
            .collect(),
    ))
}

/// `POST /v0/releases?labels=`: form fields `chartTar` (the .tgz), `name`, `namespace`.
async fn install(
    State(gateway): State<Gateway>,
    V0Query(query): V0Query<LabelsQuery>,
    request: Request,
) -> Result<(StatusCode, Json<V0Result>), V0Error> {
    let selector = query.required_labels()?;
    parse_selector(selector)?;
    let wait = Wait::from_query(&gateway, None, query.timeout)?;
    let mut form = Form::read(request).await?;
    let name = form.text("name")?.to_owned();
    let namespace = form.text("namespace")?.to_owned();
    check_names(&name, &namespace)?;
    let archive = chart_tar(&mut form)?;
    let entry = push(&gateway, &archive, false).await?;
    let mut request = Client::new_request(Action::Install, &name, &namespace, selector);
    request.chart = Some(ChartRef::NameVersion {
        name: entry.name,
        version: entry.version,
    });
    let result = carry_out(&gateway.client, &request, wait).await?;
    Ok((StatusCode::CREATED, Json(V0Result::new(&result))))
}

/// `PUT /v0/releases/{name}?labels=`: form field `chartTar`; `namespace` optional when the
/// release lives in one namespace only.
async fn upgrade(
    State(gateway): State<Gateway>,
    Path(name): Path<String>,
    V0Query(query): V0Query<LabelsQuery>,
    request: Request,
) -> Result<Json<V0Result>, V0Error> {
    let selector_text = query.required_labels()?;
    let selector = parse_selector(selector_text)?;
    let wait = Wait::from_query(&gateway, None, query.timeout)?;
    let mut form = Form::read(request).await?;
    let namespace = match form
        .fields
        .get("namespace")
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
    {
        Some(namespace) => namespace.to_owned(),
        None => namespace_of(&gateway, &name).await?,
    };
    check_names(&name, &namespace)?;
    let archive = chart_tar(&mut form)?;
    require_release(&gateway.client, &name, &namespace, &selector).await?;
    let entry = push(&gateway, &archive, false).await?;
    let mut request = Client::new_request(Action::Upgrade, &name, &namespace, selector_text);
    request.chart = Some(ChartRef::NameVersion {
        name: entry.name,
        version: entry.version,
    });
    let result = carry_out(&gateway.client, &request, wait).await?;
    Ok(Json(V0Result::new(&result)))
}

#[derive(Debug, Deserialize)]
pub struct DeleteQuery {
    pub labels: Option<String>,
    pub namespace: Option<String>,
    pub timeout: Option<u64>,
}

/// `DELETE /v0/releases/{name}?labels=` (`namespace=` optional, as for upgrades).
async fn uninstall(
    State(gateway): State<Gateway>,
    Path(name): Path<String>,
    V0Query(query): V0Query<DeleteQuery>,
) -> Result<Json<V0Result>, V0Error> {
    let labels = LabelsQuery {
        labels: query.labels,
        timeout: query.timeout,
    };
    let selector_text = labels.required_labels()?;
    let selector = parse_selector(selector_text)?;
    let wait = Wait::from_query(&gateway, None, labels.timeout)?;
    let namespace = match query.namespace.filter(|n| !n.is_empty()) {
        Some(namespace) => namespace,
        None => namespace_of(&gateway, &name).await?,
    };
    check_names(&name, &namespace)?;
    require_release(&gateway.client, &name, &namespace, &selector).await?;
    let request = Client::new_request(Action::Uninstall, &name, &namespace, selector_text);
    let result = carry_out(&gateway.client, &request, wait).await?;
    Ok(Json(V0Result::new(&result)))
}

fn chart_tar(form: &mut Form) -> Result<bytes::Bytes, HttpError> {
    match form.take_file("chartTar") {
        Some(bytes) if !bytes.is_empty() => Ok(bytes),
        _ => Err(HttpError::bad(
            ErrorCode::BadChart,
            "form field chartTar (the chart .tgz that `helm package` made) is missing or empty",
        )),
    }
}

/// The original API names releases without a namespace: find the one it lives in.
async fn namespace_of(gateway: &Gateway, name: &str) -> Result<String, HttpError> {
    let mut namespaces: Vec<String> = gateway
        .client
        .releases()
        .await?
        .into_iter()
        .filter(|r| r.release == name && r.state != ReleaseState::Uninstalled)
        .map(|r| r.namespace)
        .collect();
    namespaces.sort();
    namespaces.dedup();
    match namespaces.as_slice() {
        [] => Err(HttpError::not_found(
            ErrorCode::ReleaseNotFound,
            format!("release {name:?} is not installed on any cluster"),
        )),
        [one] => Ok(one.clone()),
        many => Err(HttpError::bad(
            ErrorCode::InvalidRequest,
            format!(
                "release {name:?} exists in several namespaces ({}); say which with namespace=",
                many.join(", ")
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use optikon_core::message::{ApiVersion, ChartSummary};

    #[test]
    fn releases_keep_the_original_field_names() {
        let at: Timestamp = serde_json::from_str("\"2026-11-25T22:48:54Z\"").unwrap();
        let status = ReleaseStatus {
            api_version: ApiVersion,
            cluster: "copenhagen-1".into(),
            namespace: "default".into(),
            release: "nginx".into(),
            generation: 2,
            request_id: "r".into(),
            action: Action::Upgrade,
            state: ReleaseState::Deployed,
            revision: Some(2),
            chart: Some(ChartSummary {
                name: "nginx".into(),
                version: "0.1.0".into(),
                app_version: Some("1.16.0".into()),
            }),
            reason: None,
            first_deployed: Some(at),
            at,
        };
        let json = serde_json::to_value(V0Release::new(&status)).unwrap();
        assert_eq!(json["Name"], "nginx");
        assert_eq!(json["Version"], 2);
        assert_eq!(json["OnCluster"], "copenhagen-1");
        assert_eq!(json["Chart"]["Metadata"]["Version"], "0.1.0");
        assert_eq!(json["Info"]["FirstDeployed"], "2026-11-25T22:48:54Z");
        assert_eq!(json["Info"]["Deleted"], "");
        assert_eq!(json["Info"]["Status"]["Code"], "DEPLOYED");
        assert_eq!(json["Info"]["Description"], "Upgrade complete");
    }

    #[test]
    fn clusters_carry_their_position_as_the_original_map_reads_it() {
        let record = |labels: &[(&str, &str)]| ClusterRecord {
            api_version: ApiVersion,
            name: "lisbon-1".into(),
            domain: "lisbon-1".into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            registered_at: Timestamp::now(),
            last_heartbeat: None,
        };
        let placed = record(&[("lat", "38.72N"), ("long", "9.14W")]);
        let json = serde_json::to_value(V0Cluster::new(&placed, Timestamp::now())).unwrap();
        assert_eq!(json["metadata"]["annotations"]["Lat"], "38.72");
        assert_eq!(json["metadata"]["annotations"]["Long"], "-9.14");
        let unplaced = record(&[("Region", "Europe")]);
        let json = serde_json::to_value(V0Cluster::new(&unplaced, Timestamp::now())).unwrap();
        assert!(json["metadata"]["annotations"].get("Lat").is_none());
    }
}
