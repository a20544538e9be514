//! The per-cluster executor: consumes its site's commands from the edge's own JetStream and
//! makes the cluster match each release's latest desired generation.
//!
//! Level-triggered: a command is a nudge. An older generation than the newest command for
//! the same release is reported `superseded`, a generation the cluster's Helm record already
//! carries is not applied again, so redelivery, duplicates and reordering are harmless.
//! Everything it needs is at the edge (commands in `CMD_LOCAL`, charts in `chart-cache`), so
//! it keeps working while the link to the hub is down.

pub mod cluster;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use optikon_core::message::{
    Action, ApiVersion, ChartPin, DesiredRelease, ReleaseState, ReleaseStatus, Timestamp, decode,
};
use optikon_core::subject;
use optikon_runtime::shutdown::Shutdown;
use optikon_runtime::{topology, trace};
use tokio::sync::Mutex;
use tracing::Instrument;

use crate::cluster::{ClusterTarget, Outcome};

#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    pub cluster: String,
    pub helm: PathBuf,
    /// Attempts at a command before it is reported failed for good.
    pub max_attempts: i64,
    /// Commands worked on at once (never two of the same release).
    pub concurrency: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("NATS: {0}")]
    Nats(String),
    #[error(transparent)]
    Topology(#[from] topology::TopologyError),
}

fn nats_err(e: impl std::fmt::Display) -> ExecutorError {
    ExecutorError::Nats(e.to_string())
}

/// The durable consumer all executor replicas of a site share.
const CONSUMER: &str = "executor";

pub struct Executor {
    config: ExecutorConfig,
    local: jetstream::Context,
    hub: jetstream::Context,
    target: ClusterTarget,
    /// One lock per release, so replicas' tasks never apply one release concurrently.
    release_locks: Mutex<HashMap<String, Arc<Mutex<()>>>>,
}

impl Executor {
    /// Sets up the edge's streams and connects to the cluster, retrying until both work:
    /// an executor may start while the cluster or the link is still coming up.
    pub async fn start(
        client: async_nats::Client,
        config: ExecutorConfig,
        shutdown: &Shutdown,
    ) -> Option<Self> {
        let local = jetstream::new(client.clone());
        let hub = jetstream::with_domain(client, subject::HUB_DOMAIN);
        loop {
            match topology::ensure_edge(&local, &config.cluster).await {
                Ok(()) => break,
                Err(error) => tracing::warn!(%error, "edge streams not ready; retrying"),
            }
            if pause(shutdown, Duration::from_secs(2)).await {
                return None;
            }
        }
        let target = loop {
            match ClusterTarget::connect(config.helm.clone()).await {
                Ok(target) => break target,
                Err(error) => tracing::warn!(%error, "cluster not reachable; retrying"),
            }
            if pause(shutdown, Duration::from_secs(2)).await {
                return None;
            }
        };
        tracing::info!(
            cluster = %config.cluster,
            kubernetes = %target.kubernetes_version(),
            "executor ready"
        );
        Some(Executor {
            config,
            local,
            hub,
            target,
            release_locks: Mutex::default(),
        })
    }

    /// Works on commands until shutdown.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) -> Result<(), ExecutorError> {
        let stream = self
            .local
            .get_stream(subject::CMD_LOCAL_STREAM)
            .await
            .map_err(nats_err)?;
        let consumer = stream
            .get_or_create_consumer(
                CONSUMER,
                consumer::pull::Config {
                    durable_name: Some(CONSUMER.into()),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: Duration::from_secs(300),
                    ..Default::default()
                },
            )
            .await
            .map_err(nats_err)?;
        let messages = consumer.messages().await.map_err(nats_err)?;
        let work = messages.for_each_concurrent(self.config.concurrency, |message| {
            let executor = self.clone();
            async move {
                match message {
                    Ok(message) => executor.handle(message).await,
                    Err(error) => tracing::warn!(%error, "command stream interrupted"),
                }
            }
        });
        tokio::select! {
            _ = work => {}
            _ = shutdown.wait() => {}
        }
        Ok(())
    }

    async fn handle(&self, message: jetstream::Message) {
        let attempt = message.info().map(|i| i.delivered).unwrap_or(1);
        let desired: DesiredRelease = match decode("command", &message.payload) {
            Ok(desired) => desired,
            Err(error) => {
                // Nothing to report it against: log it and drop it, it will never parse.
                tracing::error!(subject = %message.subject, %error, "dropping malformed command");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        let span = tracing::info_span!(
            "command",
            release = %desired.release,
            namespace = %desired.namespace,
            generation = desired.generation,
            action = %desired.action,
        );
        trace::adopt(&span, message.headers.as_ref());
        async {
            let lock = self.lock_for(&desired).await;
            let _guard = lock.lock().await;
            match self.process(&desired, &message.subject).await {
                Ok(()) => {
                    let _ = message.ack().await;
                }
                Err(reason) if attempt >= self.config.max_attempts => {
                    tracing::error!(%reason, attempt, "giving up on command");
                    self.report(&desired, failed(reason)).await;
                    let _ = message.ack_with(AckKind::Term).await;
                }
                Err(reason) => {
                    let delay = Duration::from_secs(2u64.pow(attempt.clamp(1, 6) as u32));
                    tracing::warn!(%reason, attempt, ?delay, "command will be retried");
                    let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
                }
            }
        }
        .instrument(span)
        .await
    }

    async fn lock_for(&self, desired: &DesiredRelease) -> Arc<Mutex<()>> {
        let key = subject::release_key(&desired.cluster, &desired.namespace, &desired.release);
        self.release_locks
            .lock()
            .await
            .entry(key)
            .or_default()
            .clone()
    }

    /// Carries out one command. `Err` is a transient problem worth another attempt.
    async fn process(&self, desired: &DesiredRelease, subject: &str) -> Result<(), String> {
        if desired.cluster != self.config.cluster {
            tracing::error!(cluster = %desired.cluster, "command for another cluster; dropped");
            return Ok(());
        }
        if let Some(newer) = self.newest_generation(subject).await?
            && newer > desired.generation {
                self.report(
                    desired,
                    outcome(
                        ReleaseState::Superseded,
                        format!("generation {newer} replaces it"),
                    ),
                )
                .await;
                return Ok(());
            }
        let current = self
            .target
            .current(&desired.namespace, &desired.release)
            .await
            .map_err(|e| e.to_string())?;
        match current.as_ref().and_then(|c| c.generation) {
            Some(applied) if applied > desired.generation => {
                let reason = format!("generation {applied} is already applied");
                self.report(desired, outcome(ReleaseState::Superseded, reason))
                    .await;
                return Ok(());
            }
            Some(applied) if applied == desired.generation => {
                // A redelivery or a duplicate: `execute` reports the stored result and
                // applies nothing.
                let outcome = self
                    .target
                    .execute(desired, None)
                    .await
                    .map_err(|e| e.to_string())?;
                self.report(desired, outcome).await;
                return Ok(());
            }
            _ => {}
        }
        self.report(desired, outcome(ReleaseState::Pending, "applying".into()))
            .await;
        let chart = match (&desired.action, &desired.chart) {
            (Action::Install | Action::Upgrade, Some(pin)) => Some(self.fetch_chart(pin).await?),
            (Action::Install | Action::Upgrade, None) => {
                self.report(desired, failed("the command names no chart".into()))
                    .await;
                return Ok(());
            }
            _ => None,
        };
        let outcome = self
            .target
            .execute(desired, chart.as_deref())
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(state = %outcome.state, revision = ?outcome.revision, "command done");
        self.report(desired, outcome).await;
        Ok(())
    }

    /// The generation of the newest command this site holds for the release of `subject`.
    async fn newest_generation(&self, subject: &str) -> Result<Option<u64>, String> {
        let stream = self
            .local
            .get_stream(subject::CMD_LOCAL_STREAM)
            .await
            .map_err(|e| e.to_string())?;
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(decode::<DesiredRelease>("command", &message.payload)
                .ok()
                .map(|d| d.generation)),
            Err(error) => Err(format!("read newest command: {error}")),
        }
    }

    /// The chart archive: from this site's cache, else from the hub (then cached).
    async fn fetch_chart(&self, pin: &ChartPin) -> Result<Vec<u8>, String> {
        let name = subject::chart_object(&pin.digest);
        let cache = self
            .local
            .get_object_store(subject::CHART_CACHE_BUCKET)
            .await
            .map_err(|e| format!("chart cache: {e}"))?;
        if let Ok(bytes) = read_object(&cache, &name).await
            && optikon_core::chart::digest(&bytes) == pin.digest {
                return Ok(bytes);
            }
        let charts = self
            .hub
            .get_object_store(subject::CHARTS_BUCKET)
            .await
            .map_err(|e| {
                format!(
                    "chart {} not cached here and the hub is unreachable: {e}",
                    pin.digest
                )
            })?;
        let bytes = read_object(&charts, &name)
            .await
            .map_err(|e| format!("fetch chart {} from the hub: {e}", pin.digest))?;
        if optikon_core::chart::digest(&bytes) != pin.digest {
            return Err(format!("chart {} arrived with other bytes", pin.digest));
        }
        if let Err(error) = cache.put(name.as_str(), &mut bytes.as_slice()).await {
            tracing::warn!(%error, "could not cache chart");
        }
        Ok(bytes)
    }

    /// Publishes a status event into the site's `STATUS` stream (the hub sources it), retrying
    /// while the local server is unavailable.
    async fn report(&self, desired: &DesiredRelease, outcome: Outcome) {
        let status = ReleaseStatus {
            api_version: ApiVersion,
            cluster: desired.cluster.clone(),
            namespace: desired.namespace.clone(),
            release: desired.release.clone(),
            generation: desired.generation,
            request_id: desired.request_id.clone(),
            action: desired.action,
            state: outcome.state,
            revision: outcome.revision,
            chart: outcome.chart,
            reason: outcome.reason,
            first_deployed: outcome.first_deployed,
            at: Timestamp::now(),
        };
        let body = serde_json::to_vec(&status).expect("status serializes");
        let subject =
            subject::release_status(&desired.cluster, &desired.namespace, &desired.release);
        for attempt in 1..=10u64 {
            let published = async {
                self.local
                    .publish_with_headers(
                        subject.clone(),
                        trace::headers(None),
                        body.clone().into(),
                    )
                    .await?
                    .await
            };
            match published.await {
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(%error, attempt, "status not stored yet; retrying");
                    tokio::time::sleep(Duration::from_millis(200 * attempt)).await;
                }
            }
        }
        tracing::error!(state = %status.state, "status could not be stored");
    }
}

fn outcome(state: ReleaseState, reason: String) -> Outcome {
    Outcome {
        state,
        revision: None,
        chart: None,
        reason: Some(reason),
        first_deployed: None,
    }
}

fn failed(reason: String) -> Outcome {
    outcome(ReleaseState::Failed, reason)
}

async fn read_object(
    store: &jetstream::object_store::ObjectStore,
    name: &str,
) -> Result<Vec<u8>, String> {
    use tokio::io::AsyncReadExt;
    let mut object = store.get(name).await.map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    object
        .read_to_end(&mut bytes)
        .await
        .map_err(|e| e.to_string())?;
    Ok(bytes)
}

/// Sleeps, or returns true at once if shutdown began.
async fn pause(shutdown: &Shutdown, duration: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => false,
        _ = shutdown.wait() => true,
    }
}
