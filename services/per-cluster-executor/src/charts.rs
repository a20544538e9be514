//! Charts for commands: from the edge's `chart-cache`, else fetched from the hub and cached.

use std::time::Duration;

use async_nats::jetstream;
use optikon_core::message::ChartPin;
use optikon_core::subject;

use crate::Executor;

impl Executor {
    /// The chart archive: from this site's cache, else from the hub (then cached).
    pub(crate) async fn fetch_chart(&self, pin: &ChartPin) -> Result<Vec<u8>, ChartUnavailable> {
        use optikon_runtime::chart_fetch::{self, ChartFetchError};
        /// Long enough for the largest chart (10 MiB) over a slow link.
        const FETCH_TIMEOUT: Duration = Duration::from_secs(30);
        let name = subject::chart_object(&pin.digest);
        let cache = self
            .local
            .get_object_store(subject::CHART_CACHE_BUCKET)
            .await
            .map_err(|e| ChartUnavailable::Local(format!("chart cache: {e}")))?;
        match read_object(&cache, &name).await {
            Ok(bytes) if optikon_core::chart::digest(&bytes) == pin.digest => return Ok(bytes),
            Ok(_) | Err(ObjectRead::NotFound) => {}
            // The hub can still serve the chart, but a failing cache is worth knowing of.
            Err(ObjectRead::Failed(error)) => {
                tracing::warn!(%error, "chart cache unreadable; asking the hub");
            }
        }
        let unreachable = |e: &dyn std::fmt::Display| {
            ChartUnavailable::Unreachable(format!(
                "chart {} is not cached here and the hub is out of reach ({e}); waiting for the link",
                pin.digest
            ))
        };
        // The hub answers only for charts this cluster's own desired state names; the
        // bytes returned match the digest.
        let fetched = chart_fetch::fetch_chart(
            &self.client,
            &self.config.cluster,
            &pin.digest,
            FETCH_TIMEOUT,
        )
        .await;
        let bytes = fetched.map_err(|e| match e {
            // The hub's own trouble (its store or KV), not a verdict on the chart.
            ChartFetchError::Refused(error)
                if error.code == optikon_core::message::ErrorCode::Internal =>
            {
                ChartUnavailable::Unreachable(format!(
                    "chart {} is not cached here and the hub could not serve it ({error}); \
                     trying again later",
                    pin.digest
                ))
            }
            // The hub's message says why and what to do.
            ChartFetchError::Refused(error) => ChartUnavailable::Lost(format!(
                "the hub refused to send chart {} {}: {}",
                pin.name, pin.version, error.message
            )),
            ChartFetchError::Unreachable(reason) => unreachable(&reason),
            ChartFetchError::Corrupt(reason) => ChartUnavailable::Lost(format!(
                "chart {} {} ({}) arrived damaged from the hub: {reason}; push it again",
                pin.name, pin.version, pin.digest
            )),
        })?;
        if let Err(error) = cache.put(name.as_str(), &mut bytes.as_slice()).await {
            tracing::warn!(%error, "could not cache chart");
        }
        Ok(bytes)
    }
}

/// Why a command's chart could not be had.
#[derive(Debug)]
pub(crate) enum ChartUnavailable {
    /// The local chart cache failed.
    Local(String),
    /// Not cached, and the hub could not be asked.
    Unreachable(String),
    /// The hub answered, but has no such chart (any more): no retry will help.
    Lost(String),
}

#[derive(Debug)]
pub(crate) enum ObjectRead {
    NotFound,
    Failed(String),
}

pub(crate) async fn read_object(
    store: &jetstream::object_store::ObjectStore,
    name: &str,
) -> Result<Vec<u8>, ObjectRead> {
    use async_nats::jetstream::object_store::GetErrorKind;
    use tokio::io::AsyncReadExt;
    let mut object = store.get(name).await.map_err(|e| match e.kind() {
        GetErrorKind::NotFound => ObjectRead::NotFound,
        _ => ObjectRead::Failed(e.to_string()),
    })?;
    let mut bytes = Vec::new();
    object
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| ObjectRead::Failed(e.to_string()))?;
    Ok(bytes)
}
