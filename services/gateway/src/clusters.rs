//! `/api/v1/clusters`: the edge clusters the hub knows, their health, and their labels.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path, State};
use optikon_client::{ClientError, LabelChange};
use optikon_core::message::{ClusterRecord, ErrorCode, Health, Heartbeat, Timestamp};
use optikon_core::names;
use optikon_core::selector::LabelSelector;
use serde::{Deserialize, Serialize};

use crate::Gateway;
use crate::error::{HttpError, JsonBody, QueryParams};
use crate::routes::Routes;

pub fn routes() -> Routes<Gateway> {
    Routes::new()
        .get("/api/v1/clusters", list)
        .get("/api/v1/clusters/{name}", get_one)
        .patch("/api/v1/clusters/{name}/labels", patch_labels)
}

/// A cluster as the API shows it: its registry record with health derived now.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    pub name: String,
    pub domain: String,
    pub labels: BTreeMap<String, String>,
    pub registered_at: Timestamp,
    /// From the `lat` and `long` labels, when both are there and readable.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<Location>,
    #[serde(flatten)]
    pub status: ClusterStatus,
}

/// What the last heartbeat said, and what its age means.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterStatus {
    pub health: Health,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Timestamp>,
    /// Age of the last heartbeat when this answer was made: a page adds the time since,
    /// whatever its own clock says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_seen_seconds_ago: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_seconds: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_ready: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes_ready: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes_total: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pods_total: Option<u32>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub pods_by_phase: BTreeMap<String, u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    /// What the prober could not measure, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Location {
    pub lat: f64,
    pub long: f64,
}

impl ClusterStatus {
    pub fn new(health: Health, heartbeat: Option<&Heartbeat>, now: Timestamp) -> Self {
        ClusterStatus {
            health,
            last_seen: heartbeat.map(|h| h.at),
            last_seen_seconds_ago: heartbeat.map(|h| h.at.seconds_until(now).max(0.0) as u64),
            interval_seconds: heartbeat.map(|h| h.interval_seconds),
            api_ready: heartbeat.map(|h| h.api_ready),
            nodes_ready: heartbeat.map(|h| h.nodes_ready),
            nodes_total: heartbeat.map(|h| h.nodes_total),
            pods_total: heartbeat.map(|h| h.pods_total),
            pods_by_phase: heartbeat
                .map(|h| h.pods_by_phase.clone())
                .unwrap_or_default(),
            kubernetes_version: heartbeat.and_then(|h| h.kubernetes_version.clone()),
            error: heartbeat.and_then(|h| h.error.clone()),
        }
    }

    /// A fresh heartbeat's view (as the live event stream sends it).
    pub fn from_heartbeat(heartbeat: &Heartbeat, now: Timestamp) -> Self {
        let record = ClusterRecord {
            api_version: Default::default(),
            name: heartbeat.cluster.clone(),
            domain: heartbeat.cluster.clone(),
            labels: BTreeMap::new(),
            registered_at: heartbeat.at,
            last_heartbeat: Some(heartbeat.clone()),
        };
        ClusterStatus::new(record.health(now), Some(heartbeat), now)
    }
}

impl ClusterView {
    pub fn new(record: &ClusterRecord, now: Timestamp) -> Self {
        ClusterView {
            name: record.name.clone(),
            domain: record.domain.clone(),
            labels: record.labels.clone(),
            registered_at: record.registered_at,
            location: location(&record.labels),
            status: ClusterStatus::new(record.health(now), record.last_heartbeat.as_ref(), now),
        }
    }
}

/// Reads `lat`/`long` labels. Label values cannot start with `-`, so south and west are
/// written with a suffix (`33.9S`, `18.4W`); `N`/`E` and plain numbers are north and east.
pub fn location(labels: &BTreeMap<String, String>) -> Option<Location> {
    let coordinate = |value: &str, negative: char, positive: char, limit: f64| {
        let value = value.trim();
        let (number, sign) = match value.chars().last()?.to_ascii_uppercase() {
            c if c == negative => (&value[..value.len() - 1], -1.0),
            c if c == positive => (&value[..value.len() - 1], 1.0),
            _ => (value, 1.0),
        };
        let number: f64 = number.parse().ok()?;
        (number.is_finite() && number.abs() <= limit).then_some(sign * number)
    };
    Some(Location {
        lat: coordinate(labels.get("lat")?, 'S', 'N', 90.0)?,
        long: coordinate(labels.get("long")?, 'W', 'E', 180.0)?,
    })
}

pub fn parse_selector(selector: &str) -> Result<LabelSelector, HttpError> {
    LabelSelector::parse(selector)
        .map_err(|e| HttpError::bad(ErrorCode::BadSelector, e.to_string()))
}

/// The clusters a selector names, in words, for messages.
pub fn describe(selector: &LabelSelector) -> String {
    if selector.is_empty() {
        "any cluster".to_owned()
    } else {
        format!("any cluster matching selector {:?}", selector.to_string())
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only clusters whose labels match (Kubernetes label selector syntax).
    #[serde(default)]
    pub selector: Option<String>,
}

async fn list(
    State(gateway): State<Gateway>,
    QueryParams(query): QueryParams<ListQuery>,
) -> Result<Json<Vec<ClusterView>>, HttpError> {
    let selector = parse_selector(query.selector.as_deref().unwrap_or(""))?;
    let now = Timestamp::now();
    let clusters = gateway.client.clusters().await?;
    Ok(Json(
        clusters
            .iter()
            .filter(|c| selector.matches(&c.labels))
            .map(|c| ClusterView::new(c, now))
            .collect(),
    ))
}

async fn get_one(
    State(gateway): State<Gateway>,
    Path(name): Path<String>,
) -> Result<Json<ClusterView>, HttpError> {
    let clusters = gateway.client.clusters_by_name().await?;
    let record = clusters
        .get(&name)
        .ok_or_else(|| unknown_cluster(&name, &clusters))?;
    Ok(Json(ClusterView::new(record, Timestamp::now())))
}

fn unknown_cluster(name: &str, clusters: &BTreeMap<String, ClusterRecord>) -> HttpError {
    let known = clusters.keys().cloned().collect::<Vec<_>>().join(", ");
    HttpError::not_found(
        ErrorCode::ClusterNotFound,
        format!("no cluster named {name:?} is registered (known: {known})"),
    )
}

/// `{"key": "value"}` sets a label, `{"key": null}` removes it (JSON merge patch).
async fn patch_labels(
    State(gateway): State<Gateway>,
    Path(name): Path<String>,
    JsonBody(patch): JsonBody<BTreeMap<String, Option<String>>>,
) -> Result<Json<ClusterView>, HttpError> {
    if patch.is_empty() {
        return Err(HttpError::bad(
            ErrorCode::InvalidRequest,
            "the patch is empty: send {\"key\": \"value\"} to set a label, {\"key\": null} to remove one",
        ));
    }
    let mut changes = Vec::new();
    for (key, value) in patch {
        let bad = |e: names::NameError| HttpError::bad(ErrorCode::BadLabel, e.to_string());
        names::validate_label_key(&key).map_err(bad)?;
        match value {
            Some(value) => {
                names::validate_label_value(&value).map_err(bad)?;
                changes.push(LabelChange::Set(key, value));
            }
            None => changes.push(LabelChange::Remove(key)),
        }
    }
    let record = match gateway.client.label_cluster(&name, &changes).await {
        Ok(record) => record,
        Err(ClientError::NotFound(_)) => {
            return Err(unknown_cluster(
                &name,
                &gateway.client.clusters_by_name().await?,
            ));
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Json(ClusterView::new(&record, Timestamp::now())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn locations_come_from_lat_long_labels() {
        let l = location(&labels(&[("lat", "55.68"), ("long", "12.57E")])).unwrap();
        assert_eq!((l.lat, l.long), (55.68, 12.57));
        let l = location(&labels(&[("lat", "33.9S"), ("long", "18.4w")])).unwrap();
        assert_eq!((l.lat, l.long), (-33.9, -18.4));
        assert_eq!(location(&labels(&[("lat", "55.68")])), None);
        assert_eq!(location(&labels(&[("lat", "95"), ("long", "1")])), None);
        assert_eq!(location(&labels(&[("lat", "north"), ("long", "1")])), None);
    }
}
