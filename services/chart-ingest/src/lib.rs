//! chart-ingest: answers chart pushes on `optikon.api.chart.push`.
//!
//! A push carries the archive in its body, or names an object in the `chart-uploads` store
//! (header `Optikon-Upload`) for charts larger than a NATS message. The archive is untrusted:
//! it is validated by `optikon_core::chart::inspect`, stored under its digest in `charts`,
//! indexed by name and version in `chart-index`, and announced on
//! `optikon.event.chart.ingested`. The same name and version with other bytes is refused
//! unless the push sets `Optikon-Force: true`.
//!
//! Beside pushes it answers edges' chart fetches on `optikon.api.chart.fetch.<cluster>`
//! (see [`fetch`]).

pub mod fetch;

use async_nats::jetstream::{self, kv, object_store::ObjectStore};
use bytes::Bytes;
use futures::StreamExt;
use optikon_core::chart::{ChartLimits, inspect};
use optikon_core::message::{ApiError, ApiVersion, ChartIndexEntry, ErrorCode, Reply, Timestamp};
use optikon_core::subject;
use optikon_runtime::shutdown::Shutdown;
use optikon_runtime::trace;
use tokio::io::AsyncReadExt;
use tracing::Instrument;

pub struct ChartIngest {
    js: jetstream::Context,
    charts: ObjectStore,
    uploads: ObjectStore,
    index: kv::Store,
    limits: ChartLimits,
    fetch: fetch::ChartFetch,
}

pub(crate) fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, format!("{what}: {e}"))
}

impl ChartIngest {
    /// Opens the hub's chart stores, waiting until they exist: the router sets up the hub's
    /// topology (chart-ingest's role may not create streams), and may start after this.
    pub async fn new(js: jetstream::Context, limits: ChartLimits) -> anyhow::Result<Self> {
        let mut waited = 0;
        loop {
            let opened = async {
                anyhow::Ok((
                    js.get_object_store(subject::CHARTS_BUCKET).await?,
                    js.get_object_store(subject::UPLOADS_BUCKET).await?,
                    js.get_key_value(subject::CHART_INDEX_BUCKET).await?,
                    js.get_key_value(subject::DESIRED_BUCKET).await?,
                    js.get_key_value(subject::PREVIEW_GRANTS_BUCKET).await?,
                ))
            };
            match opened.await {
                Ok((charts, uploads, index, desired, grants)) => {
                    return Ok(ChartIngest {
                        fetch: fetch::ChartFetch::new(
                            js.clone(),
                            charts.clone(),
                            desired,
                            grants,
                            limits.max_archive_bytes,
                        ),
                        charts,
                        uploads,
                        index,
                        js,
                        limits,
                    });
                }
                Err(error) if waited < 120 => {
                    if waited % 10 == 0 {
                        tracing::info!(%error, "waiting for the hub's chart stores (set up by selector-router)");
                    }
                    waited += 1;
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                }
                Err(error) => {
                    anyhow::bail!(
                        "the hub's chart stores are missing after 60 s (is selector-router running?): {error}"
                    )
                }
            }
        }
    }

    /// Serves pushes and fetches until shutdown.
    pub async fn run(&self, client: &async_nats::Client, shutdown: Shutdown) -> anyhow::Result<()> {
        let fetches = async {
            self.fetch
                .run(client, shutdown.clone())
                .await
                .map_err(anyhow::Error::from)
        };
        tokio::try_join!(self.serve_pushes(client, shutdown.clone()), fetches)?;
        Ok(())
    }

    /// Serves pushes until shutdown. Replicas share the work through a queue group.
    async fn serve_pushes(
        &self,
        client: &async_nats::Client,
        shutdown: Shutdown,
    ) -> anyhow::Result<()> {
        let mut requests = client
            .queue_subscribe(subject::CHART_PUSH, "chart-ingest".into())
            .await?;
        tracing::info!(subject = subject::CHART_PUSH, "chart-ingest ready");
        loop {
            let message = tokio::select! {
                m = requests.next() => match m { Some(m) => m, None => return Ok(()) },
                _ = shutdown.wait() => return Ok(()),
            };
            let span = tracing::info_span!("chart_push");
            trace::adopt(&span, message.headers.as_ref());
            let reply: Reply<ChartIndexEntry> = self.push(&message).instrument(span).await.into();
            if let Some(inbox) = message.reply {
                let body = serde_json::to_vec(&reply).expect("reply serializes");
                if let Err(error) = client.publish(inbox, body.into()).await {
                    tracing::warn!(%error, "could not answer a chart push");
                }
            }
        }
    }

    async fn push(&self, message: &async_nats::Message) -> Result<ChartIndexEntry, ApiError> {
        let header = |name: &str| {
            message
                .headers
                .as_ref()
                .and_then(|h| h.get(name))
                .map(|v| v.as_str().to_owned())
        };
        let force = header(subject::HEADER_FORCE).is_some_and(|v| v == "true");
        let upload = header(subject::HEADER_UPLOAD);
        let bytes = match &upload {
            Some(name) => self.read_upload(name).await?,
            None => message.payload.clone(),
        };
        let result = self.ingest(&bytes, force).await;
        if let Some(name) = &upload {
            // The upload has served its purpose either way; a rejected chart is not kept.
            let _ = self.uploads.delete(name).await;
        }
        match &result {
            Ok(entry) => {
                tracing::info!(chart = %entry.name, version = %entry.version, digest = %entry.digest, "chart stored")
            }
            Err(error) => tracing::info!(%error, "chart refused"),
        }
        result
    }

    async fn read_upload(&self, name: &str) -> Result<Bytes, ApiError> {
        let mut object = self.uploads.get(name).await.map_err(|e| {
            ApiError::new(
                ErrorCode::BadChart,
                format!(
                    "upload {name:?} not found in {}: {e}",
                    subject::UPLOADS_BUCKET
                ),
            )
        })?;
        let mut bytes = Vec::new();
        // Read at most one byte past the limit: enough to know it is too large.
        let limit = self.limits.max_archive_bytes;
        (&mut object)
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| internal("read upload", e))?;
        if bytes.len() as u64 > limit {
            return Err(ApiError::new(
                ErrorCode::BadChart,
                format!("chart archive is larger than the limit of {limit} bytes"),
            ));
        }
        Ok(bytes.into())
    }

    /// Validates and stores one archive.
    pub async fn ingest(&self, bytes: &[u8], force: bool) -> Result<ChartIndexEntry, ApiError> {
        let archive = inspect(bytes, &self.limits)
            .map_err(|e| ApiError::new(ErrorCode::BadChart, e.to_string()))?;
        let metadata = &archive.metadata;
        let key = subject::chart_key(&metadata.name, &metadata.version);
        let existing = self
            .index
            .entry(&key)
            .await
            .map_err(|e| internal("read chart index", e))?
            .filter(|e| e.operation == kv::Operation::Put);
        let mut previous_revision = None;
        if let Some(entry) = existing {
            let stored: ChartIndexEntry = serde_json::from_slice(&entry.value)
                .map_err(|e| internal("chart index entry", e))?;
            if stored.digest == archive.digest {
                return Ok(stored);
            }
            if !force {
                return Err(ApiError::new(
                    ErrorCode::ChartConflict,
                    format!(
                        "chart {} {} is already stored with other content ({}); bump the version in Chart.yaml, or push with force to replace it",
                        metadata.name, metadata.version, stored.digest
                    ),
                ));
            }
            previous_revision = Some(entry.revision);
        }
        let object = subject::chart_object(&archive.digest);
        if self.charts.info(&object).await.is_err() {
            self.charts
                .put(object.as_str(), &mut &bytes[..])
                .await
                .map_err(|e| internal("store chart", e))?;
        }
        let entry = ChartIndexEntry {
            api_version: ApiVersion,
            name: metadata.name.clone(),
            version: metadata.version.clone(),
            app_version: Some(metadata.app_version.clone()).filter(|v| !v.is_empty()),
            description: Some(metadata.description.clone()).filter(|d| !d.is_empty()),
            chart_api_version: metadata.api_version.clone(),
            digest: archive.digest.clone(),
            size: archive.size,
            ingested_at: Timestamp::now(),
        };
        let body: Bytes = serde_json::to_vec(&entry).expect("entry serializes").into();
        // Create, or replace exactly the entry we read: two pushes racing on one
        // name+version cannot both win.
        let written = match previous_revision {
            None => self
                .index
                .create(&key, body.clone())
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Some(revision) => self
                .index
                .update(&key, body.clone(), revision)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        };
        if let Err(error) = written {
            return Err(ApiError::new(
                ErrorCode::ChartConflict,
                format!(
                    "chart {} {} changed while it was being stored ({error}); push again",
                    entry.name, entry.version
                ),
            ));
        }
        let _ = self
            .js
            .publish_with_headers(subject::EVENT_CHART_INGESTED, trace::headers(None), body)
            .await;
        Ok(entry)
    }
}
