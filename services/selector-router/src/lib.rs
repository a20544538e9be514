//! selector-router: the hub's brain, stateless (all state is in JetStream).
//!
//! - [`request`]: release requests from `RELEASE_REQUESTS` become desired state per matching
//!   cluster (KV `desired`, optimistic concurrency) and one command each on `CMD`.
//! - [`fold`]: status from the edges (the `STATUS_HUB` shards) is folded into the cluster registry,
//!   the release list and each request's progress, and announced on
//!   `optikon.event.request.<id>`.
//! - [`registry`]: edges announce themselves; the hub starts sourcing their status.
//! - [`rollout`]: requests with a strategy reach their clusters wave by wave, behind a
//!   health gate (KV `rollouts`); pause, resume and abort on `optikon.api.rollout.control`.
//! - [`preview`]: `--dry-run`: each target cluster is asked what the request would change
//!   there, on `optikon.api.release.preview`; nothing is stored.
//! - [`view`]: the cluster registry, followed live, which requests match their selectors in.
//!
//! Replicas share the work through durable consumers and queue groups.

pub mod desired_view;
pub mod fold;
pub mod preview;
pub mod registry;
pub mod request;
pub mod rollout;
pub mod view;

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer, kv};
use bytes::Bytes;
use futures::StreamExt;
use optikon_core::message::{ApiError, ErrorCode};
use optikon_core::subject;
use optikon_runtime::shutdown::Shutdown;
use optikon_runtime::topology;

/// The hub's JetStream and the buckets the router reads and writes.
#[derive(Clone)]
pub struct Hub {
    pub js: jetstream::Context,
    pub clusters: kv::Store,
    pub desired: kv::Store,
    pub releases: kv::Store,
    pub requests: kv::Store,
    pub request_clusters: kv::Store,
    pub chart_index: kv::Store,
    pub rollouts: kv::Store,
    pub preview_grants: kv::Store,
    /// Every cluster record, followed live (see [`view`]).
    pub cluster_view: view::ClusterView,
    /// Every `desired` entry, followed live (see [`desired_view`]).
    pub desired_view: desired_view::DesiredView,
}

impl Hub {
    pub async fn open(js: jetstream::Context) -> anyhow::Result<Self> {
        topology::ensure_hub(&js).await?;
        let clusters = js.get_key_value(subject::CLUSTERS_BUCKET).await?;
        let desired = js.get_key_value(subject::DESIRED_BUCKET).await?;
        Ok(Hub {
            cluster_view: view::ClusterView::follow(js.clone(), clusters.clone()),
            desired_view: desired_view::DesiredView::follow(desired.clone()),
            clusters,
            desired,
            releases: js.get_key_value(subject::RELEASES_BUCKET).await?,
            requests: js.get_key_value(subject::REQUESTS_BUCKET).await?,
            request_clusters: js.get_key_value(subject::REQUEST_CLUSTERS_BUCKET).await?,
            chart_index: js.get_key_value(subject::CHART_INDEX_BUCKET).await?,
            rollouts: js.get_key_value(subject::ROLLOUTS_BUCKET).await?,
            preview_grants: js.get_key_value(subject::PREVIEW_GRANTS_BUCKET).await?,
            js,
        })
    }
}

/// How the router works through requests.
#[derive(Debug, Clone, Copy)]
pub struct RouterConfig {
    /// Requests in hand at once, each for a different release (see [`consume_in_lanes`]).
    pub request_lanes: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig { request_lanes: 32 }
    }
}

/// Runs the request, fold and registry parts, and the heartbeats-bucket check, until shutdown.
pub async fn run(
    client: async_nats::Client,
    config: RouterConfig,
    shutdown: Shutdown,
) -> anyhow::Result<()> {
    let js = optikon_runtime::jetstream(client.clone());
    let hub = Hub::open(js).await?;
    tracing::info!(
        request_lanes = config.request_lanes,
        "selector-router ready"
    );
    // Each part boxed: together their futures are too large for a caller's stack (a test
    // runs the router in its own task).
    tokio::try_join!(
        Box::pin(request::run(
            hub.clone(),
            config.request_lanes,
            shutdown.clone()
        )),
        Box::pin(fold::run(hub.clone(), shutdown.clone())),
        Box::pin(registry::run(client.clone(), hub.clone(), shutdown.clone())),
        Box::pin(rollout::run(client.clone(), hub.clone(), shutdown.clone())),
        Box::pin(preview::run(client, hub.clone(), shutdown.clone())),
        Box::pin(keep_heartbeats_bucket(hub.js, shutdown)),
    )?;
    Ok(())
}

/// How often the router checks that the hub still has its in-memory `heartbeats` bucket.
/// Three missed heartbeats make a site stale, so a restarted hub's bucket is back well
/// before any site is wrongly shown unreachable.
const HEARTBEATS_CHECK: Duration = Duration::from_secs(3);

/// Makes the `heartbeats` bucket again whenever the hub has lost it (a restarted hub keeps
/// no in-memory stream): nobody else may, since the sites that write it cannot manage
/// streams. Proven by the reliability suite's `hub_restart_during_a_cut`.
async fn keep_heartbeats_bucket(js: jetstream::Context, shutdown: Shutdown) -> anyhow::Result<()> {
    let mut ticks = tokio::time::interval(HEARTBEATS_CHECK);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = shutdown.wait() => return Ok(()),
        }
        match topology::heartbeats_present(&js).await {
            Ok(true) => {}
            Ok(false) => match topology::ensure_heartbeats(&js).await {
                Ok(()) => tracing::info!("the hub had lost the heartbeats bucket; made it again"),
                Err(error) => tracing::warn!(%error, "cannot make the heartbeats bucket again"),
            },
            // The hub is restarting or unreachable: the next tick asks again.
            Err(error) => tracing::debug!(%error, "cannot ask after the heartbeats bucket"),
        }
    }
}

/// Works through a durable pull consumer with up to `lanes` messages in hand at once, but
/// never two of the same lane (`lane_of`, e.g. the release a request is for): within a lane,
/// messages are handled one after the other in stream order, and the next starts only once
/// the server has confirmed the ack of the one before. A failed message is retried in place
/// after `retry`, holding its lane, so a later message of its lane never overtakes it.
/// With `lanes` 1, one message is in hand at a time.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn consume_in_lanes<L, F, Fut>(
    hub: &Hub,
    stream: &str,
    durable: &str,
    lanes: usize,
    ack_wait: Duration,
    retry: Duration,
    shutdown: Shutdown,
    lane_of: L,
    handle: F,
) -> anyhow::Result<()>
where
    L: Fn(&jetstream::Message) -> String,
    F: Fn(jetstream::Message) -> Fut,
    Fut: std::future::Future<Output = Result<(), ApiError>>,
{
    use std::collections::{HashMap, VecDeque};
    let lanes = lanes.max(1);
    let consumer = lanes_consumer(hub, stream, durable, ack_wait, lanes as i64).await?;
    let mut messages = consumer.messages().await?;
    // A lane is here while one of its messages is in hand; the queue holds the ones behind it.
    let mut waiting: HashMap<String, VecDeque<jetstream::Message>> = HashMap::new();
    let mut running = futures::stream::FuturesUnordered::new();
    let work = |lane: String, message: jetstream::Message| {
        let attempt = &handle;
        async move {
            loop {
                let outcome = in_progress(
                    std::slice::from_ref(&message),
                    ack_wait,
                    attempt(message.clone()),
                )
                .await;
                match outcome {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::warn!(stream, %error, subject = %message.subject, "will be retried");
                        in_progress(
                            std::slice::from_ref(&message),
                            ack_wait,
                            tokio::time::sleep(retry),
                        )
                        .await;
                    }
                }
            }
            confirm_ack(stream, &message).await;
            lane
        }
    };
    // Messages waiting behind another of their lane are in progress too: without a word
    // their ack wait would run out while the one ahead takes long, and they would be
    // handed out again.
    let mut progress = tokio::time::interval(ack_wait / 3);
    progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = progress.tick() => {
                for message in waiting.values().flatten() {
                    let _ = message.ack_with(AckKind::Progress).await;
                }
            }
            m = messages.next() => match m {
                Some(Ok(message)) => {
                    let lane = lane_of(&message);
                    match waiting.get_mut(&lane) {
                        Some(queue) => queue.push_back(message),
                        None => {
                            waiting.insert(lane.clone(), VecDeque::new());
                            running.push(work(lane, message));
                        }
                    }
                }
                Some(Err(error)) => tracing::warn!(stream, %error, "consumer interrupted"),
                None => return Ok(()),
            },
            Some(lane) = running.next() => {
                let next = waiting.get_mut(&lane).and_then(VecDeque::pop_front);
                match next {
                    Some(message) => running.push(work(lane, message)),
                    None => {
                        waiting.remove(&lane);
                    }
                }
            }
            _ = shutdown.wait() => {
                // What is in hand finishes; what waits behind it is handed out again.
                for message in waiting.values().flatten() {
                    let _ = message.ack_with(AckKind::Nak(None)).await;
                }
                while running.next().await.is_some() {}
                return Ok(());
            }
        }
    }
}

/// Acks `message` and waits for the server to confirm, trying a few times: the next message
/// of its lane must not start while this one could still be handed out again.
async fn confirm_ack(stream: &str, message: &jetstream::Message) {
    for attempt in 1..=5 {
        match message.double_ack().await {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(stream, %error, attempt, subject = %message.subject, "ack not confirmed");
                tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
            }
        }
    }
}

/// The lanes' durable consumer: as [`durable_consumer`], but its `max_ack_pending` follows
/// the configured lanes also when the consumer exists already (an update, which nats-server
/// allows for that field).
async fn lanes_consumer(
    hub: &Hub,
    stream: &str,
    durable: &str,
    ack_wait: Duration,
    max_ack_pending: i64,
) -> anyhow::Result<consumer::PullConsumer> {
    let config = consumer::pull::Config {
        durable_name: Some(durable.into()),
        ack_policy: consumer::AckPolicy::Explicit,
        ack_wait,
        max_ack_pending,
        ..Default::default()
    };
    let stream = hub.js.get_stream(stream).await?;
    match stream.create_consumer(config).await {
        Ok(consumer) => Ok(consumer),
        Err(error) => {
            tracing::warn!(%error, durable, "cannot update the consumer; using it as it is");
            stream
                .get_consumer(durable)
                .await
                .map_err(|e| anyhow::anyhow!("consumer {durable}: {e}"))
        }
    }
}

/// The durable pull consumer all replicas share on `stream`, created if missing.
async fn durable_consumer(
    hub: &Hub,
    stream: &str,
    durable: &str,
    ack_wait: Duration,
    max_ack_pending: i64,
) -> anyhow::Result<consumer::PullConsumer> {
    Ok(hub
        .js
        .get_stream(stream)
        .await?
        .get_or_create_consumer(
            durable,
            consumer::pull::Config {
                durable_name: Some(durable.into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait,
                max_ack_pending,
                ..Default::default()
            },
        )
        .await?)
}

/// Like [`consume`], but hands over every message that is ready at once (up to `batch`), so
/// the handler can fold many in one pass: the batch is acked when `handle` succeeds and
/// redelivered as a whole after `retry` when it fails (handlers must be idempotent).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn consume_batches<F, Fut>(
    hub: &Hub,
    stream: &str,
    durable: &str,
    batch: usize,
    ack_wait: Duration,
    retry: Duration,
    shutdown: Shutdown,
    mut handle: F,
) -> anyhow::Result<()>
where
    F: FnMut(Vec<jetstream::Message>) -> Fut,
    Fut: std::future::Future<Output = Result<(), ApiError>>,
{
    let consumer = durable_consumer(hub, stream, durable, ack_wait, 4 * batch as i64).await?;
    let mut chunks = consumer
        .stream()
        .max_messages_per_batch(batch)
        .messages()
        .await?
        .ready_chunks(batch);
    loop {
        let chunk = tokio::select! {
            c = chunks.next() => match c { Some(c) => c, None => return Ok(()) },
            _ = shutdown.wait() => return Ok(()),
        };
        let mut messages = Vec::with_capacity(chunk.len());
        for message in chunk {
            match message {
                Ok(message) => messages.push(message),
                Err(error) => tracing::warn!(stream, %error, "consumer interrupted"),
            }
        }
        if messages.is_empty() {
            continue;
        }
        let outcome = in_progress(&messages, ack_wait, handle(messages.clone())).await;
        let ack = match &outcome {
            Ok(()) => AckKind::Ack,
            Err(error) => {
                tracing::warn!(stream, %error, messages = messages.len(), "will be retried");
                AckKind::Nak(Some(retry))
            }
        };
        for message in &messages {
            let _ = message.ack_with(ack).await;
        }
    }
}

/// Runs `work`, telling the server every third of `ack_wait` that `messages` are in
/// progress: a request to thousands of clusters, or a large fold, can take longer than the
/// ack wait on a busy hub, and must not be handed out again meanwhile.
async fn in_progress<T>(
    messages: &[jetstream::Message],
    ack_wait: Duration,
    work: impl std::future::Future<Output = T>,
) -> T {
    tokio::pin!(work);
    let mut progress = tokio::time::interval(ack_wait / 3);
    progress.tick().await;
    loop {
        tokio::select! {
            outcome = &mut work => return outcome,
            _ = progress.tick() => {
                for message in messages {
                    let _ = message.ack_with(AckKind::Progress).await;
                }
            }
        }
    }
}

fn internal(what: &str, e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Internal, format!("{what}: {e}"))
}

/// Reads and decodes a KV value (absent or deleted: `None`) with its revision.
pub async fn read<T: serde::de::DeserializeOwned>(
    store: &kv::Store,
    key: &str,
) -> Result<Option<(T, u64)>, ApiError> {
    let entry = store.entry(key).await.map_err(|e| internal("read KV", e))?;
    match entry {
        Some(entry) if entry.operation == kv::Operation::Put => {
            let value = serde_json::from_slice(&entry.value)
                .map_err(|e| internal(&format!("decode KV entry {key}"), e))?;
            Ok(Some((value, entry.revision)))
        }
        _ => Ok(None),
    }
}

/// Writes `value` if the key is still at `revision` (`None`: still absent). `Ok(false)` when
/// someone else wrote first; the caller reads again and retries.
pub async fn write_if<T: serde::Serialize>(
    store: &kv::Store,
    key: &str,
    value: &T,
    revision: Option<u64>,
) -> Result<bool, ApiError> {
    let body: Bytes = serde_json::to_vec(value).expect("value serializes").into();
    let result = match revision {
        Some(revision) => store
            .update(key, body, revision)
            .await
            .map_err(|e| e.kind() == kv::UpdateErrorKind::WrongLastRevision)
            .err(),
        None => store
            .create(key, body)
            .await
            .map(|_| ())
            .map_err(|e| e.kind() == kv::CreateErrorKind::AlreadyExists)
            .err(),
    };
    match result {
        None => Ok(true),
        Some(true) => Ok(false),
        Some(false) => Err(ApiError::new(
            ErrorCode::Internal,
            format!("write KV entry {key} failed"),
        )),
    }
}
