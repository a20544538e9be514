//! Chart fetches: answers `optikon.api.chart.fetch.<cluster>` with an archive that cluster's own desired state names, in chunks.
//!
//! Edges are untrusted, and static NATS permissions cannot limit an edge's reads of the
//! `charts` object store to its own charts, so edges do not read it: they ask here. The
//! cluster is the subject's last token (the hub's permissions let only that cluster's
//! identity publish there), never the body's. A fetch is served only when the newest
//! `desired` entry of one of that cluster's releases pins the digest asked for, or a
//! preview the router asked of that cluster names it (a grant in `preview-grants`, which
//! lasts minutes, and which no site may write: `tests/e2e/tests/hostile_edge.rs`); the
//! reply format is `optikon_runtime::chart_fetch`'s.

use async_nats::jetstream::{self, kv, object_store::ObjectStore};
use bytes::Bytes;
use futures::StreamExt;
use optikon_core::message::{
    ApiError, ChartFetchRequest, DesiredRelease, ErrorCode, Reply, decode,
};
use optikon_core::subject;
use optikon_runtime::chart_fetch::{HEADER_CHUNK, split_chunks};
use optikon_runtime::shutdown::Shutdown;
use optikon_runtime::trace;
use tokio::io::AsyncReadExt;
use tracing::Instrument;

use crate::internal;

/// Fetches one replica answers at once; each holds one archive (at most the archive limit)
/// in memory while it is sent.
const CONCURRENT_FETCHES: usize = 8;

pub struct ChartFetch {
    js: jetstream::Context,
    charts: ObjectStore,
    desired: kv::Store,
    preview_grants: kv::Store,
    max_archive_bytes: u64,
}

impl ChartFetch {
    pub fn new(
        js: jetstream::Context,
        charts: ObjectStore,
        desired: kv::Store,
        preview_grants: kv::Store,
        max_archive_bytes: u64,
    ) -> Self {
        ChartFetch {
            js,
            charts,
            desired,
            preview_grants,
            max_archive_bytes,
        }
    }

    /// Answers fetches until shutdown; those in hand are finished first. Replicas share the
    /// work through the queue group chart pushes use.
    pub async fn run(
        &self,
        client: &async_nats::Client,
        shutdown: Shutdown,
    ) -> Result<(), async_nats::SubscribeError> {
        let subject = format!("{}.*", subject::CHART_FETCH_PREFIX);
        let requests = client
            .queue_subscribe(subject.clone(), "chart-ingest".into())
            .await?;
        tracing::info!(%subject, "chart fetches answered");
        requests
            .take_until(shutdown.wait())
            .for_each_concurrent(CONCURRENT_FETCHES, |message| self.answer(client, message))
            .await;
        Ok(())
    }

    async fn answer(&self, client: &async_nats::Client, message: async_nats::Message) {
        let Some(inbox) = message.reply.clone() else {
            tracing::debug!(subject = %message.subject, "chart fetch without a reply subject; ignored");
            return;
        };
        let span = tracing::info_span!(
            "chart_fetch",
            cluster = tracing::field::Empty,
            digest = tracing::field::Empty,
        );
        trace::adopt(&span, message.headers.as_ref());
        async {
            let bytes = match self.serve(&message).await {
                Ok(bytes) => bytes,
                Err(error) => {
                    tracing::info!(%error, "chart fetch refused");
                    let body = serde_json::to_vec(&Reply::<()>::Error(error)).expect("reply serializes");
                    if let Err(error) = client.publish(inbox, body.into()).await {
                        tracing::warn!(%error, "could not answer a chart fetch");
                    }
                    return;
                }
            };
            let bytes = Bytes::from(bytes);
            let chunks = split_chunks(&bytes);
            let count = chunks.len();
            for (chunk, part) in chunks {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert(HEADER_CHUNK, chunk.header_value().as_str());
                let published = client
                    .publish_with_headers(inbox.clone(), headers, bytes.slice_ref(part))
                    .await;
                if let Err(error) = published {
                    // The edge times out and asks again; nothing to take back here.
                    tracing::warn!(%error, index = chunk.index, count, "chart fetch reply cut short");
                    return;
                }
            }
            tracing::info!(size = bytes.len(), chunks = count, "chart sent");
        }
        .instrument(span)
        .await
    }

    /// The archive the request asks for, if its cluster may have it.
    async fn serve(&self, message: &async_nats::Message) -> Result<Vec<u8>, ApiError> {
        let cluster =
            subject::cluster_of_api_subject(subject::CHART_FETCH_PREFIX, &message.subject)
                .map(subject::untoken)
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvalidRequest,
                        format!(
                            "chart fetches go to {}.<cluster>, not {}",
                            subject::CHART_FETCH_PREFIX,
                            message.subject
                        ),
                    )
                })?;
        // The name becomes a KV filter below: a wildcard in it must not widen the filter.
        optikon_core::names::validate_cluster_name(&cluster)
            .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
        tracing::Span::current().record("cluster", cluster.as_str());
        let request: ChartFetchRequest = decode("chart fetch request", &message.payload)?;
        tracing::Span::current().record("digest", request.digest.as_str());
        self.authorize(&cluster, &request.digest).await?;
        self.read_chart(&request.digest).await
    }

    /// Succeeds when the newest desired state of one of `cluster`'s releases pins `digest`,
    /// or a preview asked of `cluster` names it. Older generations do not count: a cluster
    /// has no business with a chart it is no longer meant to run.
    async fn authorize(&self, cluster: &str, digest: &str) -> Result<(), ApiError> {
        if let Some(key) = subject::preview_grant_key(cluster, digest) {
            let granted = self
                .preview_grants
                .entry(key.as_str())
                .await
                .map_err(|e| internal("read preview grants", e))?
                .is_some_and(|e| e.operation == kv::Operation::Put);
            if granted {
                return Ok(());
            }
        }
        let filter = format!("{}.>", subject::token(cluster));
        let keys = optikon_runtime::kv::keys_matching(&self.js, subject::DESIRED_BUCKET, &filter)
            .await
            .map_err(|e| internal("list desired state", e))?;
        for key in keys {
            let entry = self
                .desired
                .entry(key.as_str())
                .await
                .map_err(|e| internal("read desired state", e))?;
            let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
                continue;
            };
            // An entry this build cannot read grants nothing.
            let Ok(desired) = serde_json::from_slice::<DesiredRelease>(&entry.value) else {
                tracing::warn!(%key, "unreadable desired entry skipped");
                continue;
            };
            if desired.chart.is_some_and(|pin| pin.digest == digest) {
                return Ok(());
            }
        }
        // The same answer whether or not the chart exists: a cluster learns nothing about
        // other clusters' charts.
        Err(ApiError::new(
            ErrorCode::ChartNotFound,
            format!(
                "cluster {cluster}'s desired state names no chart with digest {digest}; \
                 a cluster may fetch only the charts its own releases are meant to run"
            ),
        ))
    }

    /// The stored archive, checked against its digest.
    async fn read_chart(&self, digest: &str) -> Result<Vec<u8>, ApiError> {
        use async_nats::jetstream::object_store::GetErrorKind;
        let name = subject::chart_object(digest);
        let mut object = self.charts.get(&name).await.map_err(|e| match e.kind() {
            GetErrorKind::NotFound => ApiError::new(
                ErrorCode::ChartNotFound,
                format!(
                    "chart {digest} is not in the hub's {} store any more; push the chart again",
                    subject::CHARTS_BUCKET
                ),
            ),
            _ => internal("read chart", e),
        })?;
        let mut bytes = Vec::new();
        // Stored charts passed the limit at ingest; reading one byte past it bounds memory
        // even if the store holds something else.
        let limit = self.max_archive_bytes;
        (&mut object)
            .take(limit + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| internal("read chart", e))?;
        if bytes.len() as u64 > limit {
            return Err(internal(
                "read chart",
                format!("stored object {name} is larger than the archive limit of {limit} bytes"),
            ));
        }
        let stored = optikon_core::chart::digest(&bytes);
        if stored != digest {
            return Err(internal(
                "read chart",
                format!("stored object {name} has digest {stored}, not {digest}"),
            ));
        }
        Ok(bytes)
    }
}
