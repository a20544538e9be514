//! The per-cluster executor: consumes its site's commands from the edge's own JetStream and
//! makes the cluster match each release's latest desired generation.
//!
//! Level-triggered: a command is a nudge. An older generation than the newest command for
//! the same release is reported `superseded`, a generation the cluster's Helm record already
//! carries is not applied again, so redelivery, duplicates and reordering are harmless.
//! Everything it needs is at the edge (commands in `CMD_LOCAL_<cluster>`, which the site's
//! downlink fills from the hub; charts in `chart-cache`), so it keeps working while the link
//! to the hub is down, and status goes to the site's outbox, which the uplink forwards.
//!
//! Crash safety: a command is acknowledged only once its outcome is reported; while one is
//! worked on, the executor tells the server it is still busy, so a short ack wait redelivers
//! a dead executor's commands soon. On start, the executor also catches up with the newest
//! command of every release it has not settled, instead of waiting for that redelivery.
//!
//! Drift correction: every few seconds each deployed release's objects are put back as its
//! Helm record says (see [`cluster::DriftReport`]); what had drifted is reported as a status
//! event, which reaches the hub whenever the link is up.
//!
//! By role: `commands` consumes and carries out commands, `catch_up` settles releases left
//! behind at start, `reconcile` runs drift correction, `charts` finds the charts commands
//! name, `status` stores what became of them, `previews` answers `--dry-run`; [`cluster`] is everything done to the
//! Kubernetes cluster itself.

mod catch_up;
mod charts;
pub mod cluster;
mod commands;
mod previews;
mod reconcile;
mod status;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use optikon_core::message::ReleaseState;
use optikon_core::subject;
use optikon_runtime::shutdown::Shutdown;
use optikon_runtime::topology;
use tokio::sync::Mutex;

use crate::cluster::{ClusterTarget, Outcome};

#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    pub cluster: String,
    pub helm: PathBuf,
    /// Attempts at a command before it is reported failed for good.
    pub max_attempts: i64,
    /// Commands worked on at once (never two of the same release).
    pub concurrency: usize,
    /// How long the server waits for an executor's word on a command before handing it to
    /// another (or a restarted) executor. Busy executors extend it as they go.
    pub ack_wait: Duration,
    /// How often deployed releases are checked for drift; `None`: never.
    pub drift_interval: Option<Duration>,
}

/// Why a command must be tried again later.
#[derive(Debug)]
enum Retry {
    /// Trouble that may pass (API server, a racing writer); tried `max_attempts` times.
    Transient(String),
    /// The chart is not cached here and the hub is out of reach: a cut-off site waits for its
    /// link, however long, rather than fail a command the hub will be able to serve.
    AwaitingHub(String),
}

impl From<String> for Retry {
    fn from(reason: String) -> Self {
        Retry::Transient(reason)
    }
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
/// How long commands in hand may take to finish once shutdown begins; within the grace
/// period process supervisors (and the test bed) give before killing.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(7);

pub struct Executor {
    config: ExecutorConfig,
    local: jetstream::Context,
    /// Asks the hub for charts (`optikon.api.chart.fetch.<cluster>`).
    client: async_nats::Client,
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
        let local = optikon_runtime::jetstream(client.clone());
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
            client,
            target,
            release_locks: Mutex::default(),
        })
    }

    /// Works on commands, and corrects drift, until shutdown.
    pub async fn run(self: Arc<Self>, shutdown: Shutdown) -> Result<(), ExecutorError> {
        let stream = self
            .local
            .get_stream(subject::cmd_local_stream(&self.config.cluster))
            .await
            .map_err(nats_err)?;
        // Create or update: an existing consumer takes this build's ack wait.
        let consumer: consumer::PullConsumer = stream
            .create_consumer(consumer::pull::Config {
                durable_name: Some(CONSUMER.into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: self.config.ack_wait,
                ..Default::default()
            })
            .await
            .map_err(nats_err)?;
        tokio::spawn(self.clone().catch_up(consumer.clone()));
        let previews = self.clone();
        let previews_shutdown = shutdown.clone();
        tokio::spawn(async move {
            if let Err(error) = previews.answer_previews(previews_shutdown).await {
                tracing::error!(%error, "previews cannot be answered");
            }
        });
        if let Some(interval) = self.config.drift_interval {
            tokio::spawn(self.clone().correct_drift_forever(
                consumer.clone(),
                interval,
                shutdown.clone(),
            ));
        }
        // Small batches: a message waiting in this client's buffer is not kept alive by
        // progress acks, so a big buffer could outlive the ack wait and be redelivered.
        let messages = consumer
            .stream()
            .max_messages_per_batch(self.config.concurrency)
            .messages()
            .await
            .map_err(nats_err)?;
        // On shutdown no new command is taken; those in hand get a moment to finish and be
        // acknowledged (the rest are redelivered, or caught up with by the next start).
        let work = messages.take_until(shutdown.wait()).for_each_concurrent(
            self.config.concurrency,
            |message| {
                let executor = self.clone();
                async move {
                    match message {
                        Ok(message) => executor.handle(message).await,
                        Err(error) => tracing::warn!(%error, "command stream interrupted"),
                    }
                }
            },
        );
        let grace = async {
            shutdown.wait().await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        };
        tokio::select! {
            _ = work => {}
            _ = grace => tracing::warn!("commands still in hand at shutdown are left for redelivery"),
        }
        Ok(())
    }

    async fn lock_for(&self, namespace: &str, release: &str) -> Arc<Mutex<()>> {
        let key = subject::release_key(&self.config.cluster, namespace, release);
        self.release_locks
            .lock()
            .await
            .entry(key)
            .or_default()
            .clone()
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

/// Sleeps, or returns true at once if shutdown began.
async fn pause(shutdown: &Shutdown, duration: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => false,
        _ = shutdown.wait() => true,
    }
}
