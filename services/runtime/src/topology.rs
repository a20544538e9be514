//! The JetStream streams, KV buckets and object stores Optikon needs, created idempotently
//! by whichever service starts first.
//!
//! Hub (domain `hub`): `RELEASE_REQUESTS`, `CMD`, `EVENTS`, `STATUS_HUB_00` … `_15` (each
//! sources the status streams of the clusters hashed to it), KV `clusters`, `desired`,
//! `releases`, `requests`, `chart-index`, object stores `charts` and `chart-uploads`. Edge (its
//! own domain, one leaf node), per cluster it serves: `CMD_LOCAL_<cluster>` (sources the hub's
//! `CMD`, filtered to the cluster) and `STATUS_<cluster>`; object store `chart-cache`.
//! Retention is deliberate: see docs/nats.md.

use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store, stream};
use optikon_core::subject;

#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot set up stream {name}: {message}")]
    Stream { name: String, message: String },
    #[error("cannot set up KV bucket {name}: {message}")]
    Bucket { name: String, message: String },
    #[error("cannot set up object store {name}: {message}")]
    ObjectStore { name: String, message: String },
}

/// Per release and cluster, the commands kept. The newest always survives, so an edge that
/// was away longer than any age limit still converges to the latest desired state.
pub const COMMANDS_KEPT_PER_RELEASE: i64 = 32;
/// Per heartbeat or release subject, the status messages kept: at a 5 s heartbeat, 1,000 is
/// well over an hour of an edge's heartbeats; only the newest matter to the hub.
pub const STATUS_KEPT_PER_SUBJECT: i64 = 1000;
const DAY: Duration = Duration::from_secs(24 * 3600);

fn stream_err(name: &str, e: impl std::fmt::Display) -> TopologyError {
    TopologyError::Stream {
        name: name.to_owned(),
        message: e.to_string(),
    }
}

/// Several services set up the topology at once when a site starts. A create that loses
/// such a race can fail (JetStream may count both reservations against its storage limit),
/// so a failed step is retried after a pause, by which time the winner's stream exists.
async fn with_retries<T, E: std::fmt::Display, F, Fut>(what: &str, mut step: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    const ATTEMPTS: u64 = 4;
    for attempt in 1.. {
        match step().await {
            Ok(value) => return Ok(value),
            Err(e) if attempt >= ATTEMPTS => return Err(e.to_string()),
            Err(error) => {
                tracing::debug!(what, %error, attempt, "topology setup raced; retrying");
                tokio::time::sleep(Duration::from_millis(250 * attempt)).await;
            }
        }
    }
    unreachable!("the loop returns")
}

/// Creates the stream or brings its config up to date.
async fn ensure_stream(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<(), TopologyError> {
    let name = config.name.clone();
    with_retries(&name, || js.create_or_update_stream(config.clone()))
        .await
        .map_err(|e| stream_err(&name, e))?;
    Ok(())
}

/// Creates the stream if it does not exist; an existing one is left as it is.
async fn ensure_stream_exists(
    js: &jetstream::Context,
    config: stream::Config,
) -> Result<(), TopologyError> {
    let name = config.name.clone();
    with_retries(&name, || async {
        if js.get_stream(&name).await.is_ok() {
            return Ok(());
        }
        js.create_stream(config.clone()).await.map(|_| ())
    })
    .await
    .map_err(|e| stream_err(&name, e))
}

async fn ensure_kv(
    js: &jetstream::Context,
    config: kv::Config,
) -> Result<kv::Store, TopologyError> {
    let name = config.bucket.clone();
    with_retries(&name, || async {
        match js.get_key_value(&name).await {
            Ok(store) => Ok(store),
            Err(_) => js.create_key_value(config.clone()).await,
        }
    })
    .await
    .map_err(|message| TopologyError::Bucket {
        name: name.clone(),
        message,
    })
}

async fn ensure_object_store(
    js: &jetstream::Context,
    config: object_store::Config,
) -> Result<object_store::ObjectStore, TopologyError> {
    let name = config.bucket.clone();
    with_retries(&name, || async {
        match js.get_object_store(&name).await {
            Ok(store) => Ok(store),
            Err(_) => js.create_object_store(config.clone()).await,
        }
    })
    .await
    .map_err(|message| TopologyError::ObjectStore {
        name: name.clone(),
        message,
    })
}

/// Everything the hub holds. `js` must be the hub's JetStream.
pub async fn ensure_hub(js: &jetstream::Context) -> Result<(), TopologyError> {
    ensure_stream(
        js,
        stream::Config {
            name: subject::RELEASE_REQUESTS_STREAM.into(),
            subjects: vec![subject::RELEASE_REQUEST.into()],
            max_age: 7 * DAY,
            // Publishing the same request id twice within a day stores it once; the router's
            // `requests` bucket catches later repeats.
            duplicate_window: DAY,
            ..Default::default()
        },
    )
    .await?;
    ensure_stream(
        js,
        stream::Config {
            name: subject::CMD_STREAM.into(),
            subjects: vec![format!("{}.>", subject::CMD_PREFIX)],
            max_messages_per_subject: COMMANDS_KEPT_PER_RELEASE,
            duplicate_window: DAY,
            ..Default::default()
        },
    )
    .await?;
    ensure_stream(
        js,
        stream::Config {
            name: subject::EVENTS_STREAM.into(),
            subjects: vec!["optikon.event.>".into()],
            max_age: 7 * DAY,
            max_bytes: 1 << 30,
            ..Default::default()
        },
    )
    .await?;
    // The STATUS_HUB shards have no subjects of their own: they only source the edges'
    // status streams, so a status published live over the leaf link is never stored twice.
    // Their sources are added as edges register, so an existing shard is kept as it is.
    for shard in 0..subject::STATUS_HUB_SHARDS {
        ensure_stream_exists(
            js,
            stream::Config {
                name: subject::status_hub_stream(shard),
                max_age: 7 * DAY,
                max_bytes: (4 << 30) / i64::from(subject::STATUS_HUB_SHARDS),
                max_messages_per_subject: STATUS_KEPT_PER_SUBJECT,
                ..Default::default()
            },
        )
        .await?;
    }
    for (bucket, history) in [
        (subject::CLUSTERS_BUCKET, 1),
        (subject::DESIRED_BUCKET, 16),
        (subject::RELEASES_BUCKET, 1),
        (subject::CHART_INDEX_BUCKET, 1),
    ] {
        ensure_kv(
            js,
            kv::Config {
                bucket: bucket.into(),
                history,
                ..Default::default()
            },
        )
        .await?;
    }
    ensure_kv(
        js,
        kv::Config {
            bucket: subject::REQUESTS_BUCKET.into(),
            history: 1,
            max_age: 30 * DAY,
            ..Default::default()
        },
    )
    .await?;
    ensure_object_store(
        js,
        object_store::Config {
            bucket: subject::CHARTS_BUCKET.into(),
            description: Some("Helm chart archives, named by digest".into()),
            ..Default::default()
        },
    )
    .await?;
    ensure_object_store(
        js,
        object_store::Config {
            bucket: subject::UPLOADS_BUCKET.into(),
            description: Some("Chart archives waiting for chart-ingest".into()),
            max_age: Duration::from_secs(3600),
            ..Default::default()
        },
    )
    .await?;
    Ok(())
}

/// Everything an edge site holds for one cluster. `js` must be the edge's own JetStream (its
/// leaf node); a leaf node serving several clusters holds this once per cluster.
pub async fn ensure_edge(js: &jetstream::Context, cluster: &str) -> Result<(), TopologyError> {
    ensure_stream(
        js,
        stream::Config {
            name: subject::status_stream(cluster),
            subjects: vec![subject::status_for(cluster)],
            // Bounded by count per subject (one per release, plus the heartbeat) and age, not
            // by bytes: JetStream reserves a stream's byte limit up front, and a leaf node
            // serving many clusters would run out of reservable storage long before it ran
            // out of disk.
            max_age: 7 * DAY,
            max_messages_per_subject: STATUS_KEPT_PER_SUBJECT,
            ..Default::default()
        },
    )
    .await?;
    ensure_stream(
        js,
        stream::Config {
            name: subject::cmd_local_stream(cluster),
            max_messages_per_subject: COMMANDS_KEPT_PER_RELEASE,
            sources: Some(vec![stream::Source {
                name: subject::CMD_STREAM.into(),
                filter_subject: Some(subject::commands_for(cluster)),
                // Set `external` directly: `domain` is dropped on update (nats.rs#1350).
                external: Some(stream::External {
                    api_prefix: subject::js_api_prefix(subject::HUB_DOMAIN),
                    delivery_prefix: Some(subject::edge_delivery_prefix(cluster)),
                }),
                ..Default::default()
            }]),
            ..Default::default()
        },
    )
    .await?;
    ensure_object_store(
        js,
        object_store::Config {
            bucket: subject::CHART_CACHE_BUCKET.into(),
            description: Some("Charts this site's releases use, for reconciling offline".into()),
            ..Default::default()
        },
    )
    .await?;
    Ok(())
}

/// A cluster whose status the hub should source: its name and the JetStream domain of the
/// leaf node that holds its `STATUS_<cluster>` stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeStatusSource {
    pub domain: String,
    pub cluster: String,
}

impl EdgeStatusSource {
    fn source(&self) -> stream::Source {
        stream::Source {
            name: subject::status_stream(&self.cluster),
            external: Some(stream::External {
                api_prefix: subject::js_api_prefix(&self.domain),
                delivery_prefix: Some(subject::hub_delivery_prefix(&self.cluster)),
            }),
            ..Default::default()
        }
    }

    fn is(&self, source: &stream::Source) -> bool {
        source.name == subject::status_stream(&self.cluster)
            && source.external.as_ref().map(|e| e.api_prefix.as_str())
                == Some(subject::js_api_prefix(&self.domain).as_str())
    }
}

/// Makes the hub's `STATUS_HUB` shards source the status streams of these clusters, with one
/// stream update per shard touched however many clusters register at once. Returns the
/// clusters newly sourced (the others were sourced already).
///
/// A cluster that moved to another domain gets its old source replaced.
pub async fn add_edge_sources(
    js: &jetstream::Context,
    edges: &[EdgeStatusSource],
) -> Result<Vec<EdgeStatusSource>, TopologyError> {
    let mut by_shard: std::collections::BTreeMap<u32, Vec<&EdgeStatusSource>> =
        std::collections::BTreeMap::new();
    for edge in edges {
        by_shard
            .entry(subject::status_hub_shard(&edge.cluster))
            .or_default()
            .push(edge);
    }
    let mut added = Vec::new();
    for (shard, edges) in by_shard {
        let name = subject::status_hub_stream(shard);
        // Read-modify-write of the shard's config: if another router replica updates the
        // same shard in between, the update fails on the changed config and is retried.
        let newly = with_retries(&name, || async {
            let mut stream = js.get_stream(&name).await.map_err(|e| e.to_string())?;
            let info = stream.info().await.map_err(|e| e.to_string())?;
            let mut config = info.config.clone();
            let sources = config.sources.get_or_insert_with(Vec::new);
            let mut newly = Vec::new();
            for edge in &edges {
                if sources.iter().any(|s| edge.is(s)) || newly.contains(*edge) {
                    continue;
                }
                let stream_name = subject::status_stream(&edge.cluster);
                sources.retain(|s| s.name != stream_name);
                sources.push(edge.source());
                newly.push((*edge).clone());
            }
            if !newly.is_empty() {
                js.update_stream(config).await.map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(newly)
        })
        .await
        .map_err(|e| stream_err(&name, e))?;
        added.extend(newly);
    }
    Ok(added)
}

/// Makes the hub source the status of one cluster; see [`add_edge_sources`]. Returns whether
/// a source was added (false: it was there already).
pub async fn add_edge_source(
    js: &jetstream::Context,
    domain: &str,
    cluster: &str,
) -> Result<bool, TopologyError> {
    let edge = EdgeStatusSource {
        domain: domain.to_owned(),
        cluster: cluster.to_owned(),
    };
    Ok(!add_edge_sources(js, &[edge]).await?.is_empty())
}
