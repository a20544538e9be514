//! `/api/v1/charts`: upload a chart archive (chart-ingest validates and stores it), list and
//! look up what is stored.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use optikon_client::ClientError;
use optikon_core::message::{ChartIndexEntry, ErrorCode};
use serde::Deserialize;

use crate::Gateway;
use crate::error::{HttpError, QueryParams};
use crate::routes::Routes;
use crate::upload::Form;

pub fn routes() -> Routes<Gateway> {
    Routes::new()
        .get("/api/v1/charts", list)
        .post("/api/v1/charts", upload)
        .get("/api/v1/charts/{name}", versions)
        .get("/api/v1/charts/{name}/{version}", get_one)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadQuery {
    /// Replace a stored chart of the same name and version that has other bytes.
    #[serde(default)]
    pub force: bool,
}

async fn upload(
    State(gateway): State<Gateway>,
    QueryParams(query): QueryParams<UploadQuery>,
    request: Request,
) -> Result<(StatusCode, Json<ChartIndexEntry>), HttpError> {
    let archive = Form::read(request).await?.chart()?;
    let entry = push(&gateway, &archive, query.force).await?;
    Ok((StatusCode::CREATED, Json(entry)))
}

/// Hands an archive to chart-ingest; a refusal says why the chart was refused.
pub async fn push(
    gateway: &Gateway,
    archive: &[u8],
    force: bool,
) -> Result<ChartIndexEntry, HttpError> {
    let entry = gateway
        .client
        .push_chart(archive, force)
        .await
        .map_err(|e| match e {
            ClientError::Refused(mut error) => {
                error.message = format!("chart refused: {}", error.message);
                HttpError::from(error)
            }
            other => other.into(),
        })?;
    tracing::info!(chart = %entry.name, version = %entry.version, digest = %entry.digest, "chart pushed");
    Ok(entry)
}

async fn list(State(gateway): State<Gateway>) -> Result<Json<Vec<ChartIndexEntry>>, HttpError> {
    Ok(Json(gateway.client.charts().await?))
}

async fn versions(
    State(gateway): State<Gateway>,
    Path(name): Path<String>,
) -> Result<Json<Vec<ChartIndexEntry>>, HttpError> {
    let versions: Vec<ChartIndexEntry> = gateway
        .client
        .charts()
        .await?
        .into_iter()
        .filter(|c| c.name == name)
        .collect();
    if versions.is_empty() {
        return Err(HttpError::not_found(
            ErrorCode::ChartNotFound,
            format!("no chart named {name:?} is stored; push it with POST /api/v1/charts"),
        ));
    }
    Ok(Json(versions))
}

async fn get_one(
    State(gateway): State<Gateway>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Json<ChartIndexEntry>, HttpError> {
    // Anything else could not be a KV key, so it cannot be stored either.
    let plain = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.+".contains(c))
    };
    if !plain(&name) || !plain(&version) {
        return Err(HttpError::not_found(
            ErrorCode::ChartNotFound,
            format!("chart {name} {version} is not stored"),
        ));
    }
    match gateway.client.chart(&name, &version).await {
        Ok(entry) => Ok(Json(entry)),
        Err(ClientError::NotFound(message)) => {
            Err(HttpError::not_found(ErrorCode::ChartNotFound, message))
        }
        Err(e) => Err(e.into()),
    }
}
