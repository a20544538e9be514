//! The JetStream streams, KV buckets and object stores Optikon needs, created idempotently
//! by whichever service starts first.
//!
//! Hub (domain `hub`): `RELEASE_REQUESTS`, `CMD` (with one durable consumer per cluster,
//! `edge-<cluster>`), `EVENTS`, `STATUS_HUB`, KV `clusters`, `heartbeats`, `desired`,
//! `releases`, `requests`, `request-clusters`, `chart-index`, object stores `charts` and `chart-uploads`. Edge
//! (its own domain, one leaf node), per cluster it serves: `CMD_LOCAL_<cluster>` (commands
//! pulled from the hub) and `STATUS_<cluster>` (the outbox of status for the hub); object
//! store `chart-cache`.
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
    #[error("cannot set up consumer {name}: {message}")]
    Consumer { name: String, message: String },
}

/// At the edge, per release, the commands kept in `CMD_LOCAL_<cluster>`. The newest always
/// survives, so the executor always has the latest desired state of every release. As many
/// as the hub holds back for the cluster in all, so that a backlog arriving at once after a
/// cut link is kept whole at the edge until the executor has read it.
pub const COMMANDS_KEPT_PER_RELEASE: i64 = COMMANDS_KEPT_PER_CLUSTER;
/// At the hub, per cluster, the commands kept in `CMD`. A site away for more commands than
/// this misses the oldest; when it registers on its return the router sends the newest
/// desired state of each of its releases again (`selector-router`'s registry), so it still
/// converges.
pub const COMMANDS_KEPT_PER_CLUSTER: i64 = 64;
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
            // One subject per cluster (`subject::cluster_commands`), nothing deeper.
            subjects: vec![format!("{}.*", subject::CMD_PREFIX)],
            max_messages_per_subject: COMMANDS_KEPT_PER_CLUSTER,
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
    // Release status from every edge, forwarded by each site's uplink. Only the release
    // subjects: heartbeats go to their own bucket, and nothing else of `optikon.status`
    // is anyone's to store.
    ensure_stream(
        js,
        stream::Config {
            name: subject::STATUS_HUB_STREAM.into(),
            subjects: vec![format!("{}.*.release.>", subject::STATUS_PREFIX)],
            max_age: 7 * DAY,
            max_bytes: 4 << 30,
            max_messages_per_subject: STATUS_KEPT_PER_SUBJECT,
            // An uplink that lost an ack sends the status again under the same id.
            duplicate_window: Duration::from_secs(600),
            ..Default::default()
        },
    )
    .await?;
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
    ensure_heartbeats(js).await?;
    ensure_kv(
        js,
        kv::Config {
            bucket: subject::SERVICES_BUCKET.into(),
            history: 1,
            // Written by the edges themselves: a site cannot make its entry large.
            max_value_size: MAX_SITE_SERVICES_BYTES,
            ..Default::default()
        },
    )
    .await?;
    for bucket in [
        subject::REQUESTS_BUCKET,
        subject::REQUEST_CLUSTERS_BUCKET,
        subject::ROLLOUTS_BUCKET,
    ] {
        ensure_kv(
            js,
            kv::Config {
                bucket: bucket.into(),
                history: 1,
                max_age: 30 * DAY,
                ..Default::default()
            },
        )
        .await?;
    }
    ensure_kv(
        js,
        kv::Config {
            bucket: subject::PREVIEW_GRANTS_BUCKET.into(),
            history: 1,
            // A grant lets a site fetch the chart a preview names; previews take seconds.
            max_age: Duration::from_secs(600),
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

/// The hub's `heartbeats` bucket: the one write every site makes all the time, and worth
/// nothing after a few intervals, so it is kept in memory and costs the hub no disk write.
/// A restarted hub has lost it; the router makes it again ([`heartbeats_present`]), and each
/// site's next heartbeat fills its entry.
pub async fn ensure_heartbeats(js: &jetstream::Context) -> Result<(), TopologyError> {
    ensure_kv(
        js,
        kv::Config {
            bucket: subject::HEARTBEATS_BUCKET.into(),
            history: 1,
            // Written by the edges themselves: a site cannot make its entry large.
            max_value_size: MAX_HEARTBEAT_BYTES,
            storage: stream::StorageType::Memory,
            ..Default::default()
        },
    )
    .await?;
    Ok(())
}

/// Whether the hub still has its `heartbeats` bucket: `Ok(false)` only when the hub says
/// there is no such stream, an error when it could not be asked.
pub async fn heartbeats_present(js: &jetstream::Context) -> Result<bool, TopologyError> {
    let name = format!("KV_{}", subject::HEARTBEATS_BUCKET);
    match js.get_stream(&name).await {
        Ok(_) => Ok(true),
        Err(e) => match e.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(error)
                if error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                Ok(false)
            }
            _ => Err(stream_err(&name, e)),
        },
    }
}

/// Everything an edge site holds for one cluster. `js` must be the edge's own JetStream (its
/// leaf node); a leaf node serving several clusters holds this once per cluster.
///
/// Nothing here crosses the leaf link by itself: the site's downlink pulls the cluster's
/// commands from the hub into `CMD_LOCAL_<cluster>`, and its uplink forwards the outbox
/// `STATUS_<cluster>` to the hub (see `health_prober::link`). Stream sources would do the
/// same with one idle heartbeat per second per source at the hub, which at 10,000 sites is
/// the hub's whole idle load.
pub async fn ensure_edge(js: &jetstream::Context, cluster: &str) -> Result<(), TopologyError> {
    ensure_stream(
        js,
        stream::Config {
            name: subject::status_stream(cluster),
            subjects: vec![subject::outbox_for(cluster)],
            // Bounded by count per subject (one per release) and age, not by bytes:
            // JetStream reserves a stream's byte limit up front, and a leaf node serving
            // many clusters would run out of reservable storage long before it ran out of
            // disk.
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
            subjects: vec![subject::commands_for(cluster)],
            max_messages_per_subject: COMMANDS_KEPT_PER_RELEASE,
            // The downlink stores each command under the hub's message id: one pulled twice
            // (an ack lost on a cut link) is stored once.
            duplicate_window: DAY,
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

/// How long the hub waits for an edge to acknowledge a pulled command before offering it
/// again: a command lost on a cut link comes back this long after the link does, at most.
pub const EDGE_ACK_WAIT: Duration = Duration::from_secs(10);
/// Pull requests one edge may have waiting at the hub at once; more are refused, so a
/// hostile site cannot pile them up.
pub const EDGE_MAX_WAITING: i64 = 4;
/// Largest heartbeat an edge may store.
pub const MAX_HEARTBEAT_BYTES: i32 = 16 * 1024;
/// Largest entry a site may put in the `services` bucket: about 2,000 Services.
pub const MAX_SITE_SERVICES_BYTES: i32 = 256 * 1024;

/// The hub's durable consumer through which `cluster` pulls its commands, created if it is
/// missing (and corrected if an older version made it differently). `js` must be the hub's
/// JetStream; the router calls this when a cluster registers.
pub async fn ensure_edge_consumer(
    js: &jetstream::Context,
    cluster: &str,
) -> Result<(), TopologyError> {
    let name = subject::edge_consumer(cluster);
    let config = jetstream::consumer::pull::Config {
        durable_name: Some(name.clone()),
        // Literal, so the server finds the next command by its subject index.
        filter_subject: subject::cluster_commands(cluster),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: EDGE_ACK_WAIT,
        max_waiting: EDGE_MAX_WAITING,
        // One command in flight per cluster keeps them in order at the edge even when one
        // was handed to a pull that a cut link left behind: nothing after it is delivered
        // until it is acknowledged, after its redelivery. Order per release matters (the
        // executor reads the newest command of each release from the edge's copy), and a
        // cluster gets few commands; the cost is one round trip per command.
        max_ack_pending: 1,
        ..Default::default()
    };
    with_retries(&name, || async {
        // One request: create, or confirm an identical consumer (no stream info first).
        js.get_stream_no_info(subject::CMD_STREAM)
            .await
            .map_err(|e| e.to_string())?
            .create_consumer(config.clone())
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    })
    .await
    .map_err(|message| TopologyError::Consumer { name, message })
}
