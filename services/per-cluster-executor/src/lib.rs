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

pub mod cluster;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use futures::{StreamExt, TryStreamExt};
use optikon_core::message::{
    Action, ApiVersion, ChartPin, DesiredRelease, ReleaseState, ReleaseStatus, Timestamp, decode,
};
use optikon_core::subject;
use optikon_runtime::shutdown::Shutdown;
use optikon_runtime::{topology, trace};
use tokio::sync::Mutex;
use tracing::Instrument;

use crate::cluster::{ClusterTarget, DriftReport, Outcome, StoredRelease};

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
            // Timing points for scripts/bench (with "chart fetched" and "generation executed").
            tracing::info!(attempt, "command received");
            let work = async {
                let lock = self.lock_for(&desired.namespace, &desired.release).await;
                let _guard = lock.lock().await;
                self.process(&desired, &message.subject).await
            };
            // Waiting for the release's lock or for readiness can outlast the ack wait; say
            // the command is in hand, so it is redelivered only if this executor dies.
            let keepalive = async {
                loop {
                    tokio::time::sleep(self.config.ack_wait / 3).await;
                    if let Err(error) = message.ack_with(AckKind::Progress).await {
                        tracing::debug!(%error, "progress not acknowledged");
                    }
                }
            };
            let result = tokio::select! {
                result = work => result,
                never = keepalive => never,
            };
            match result {
                Ok(()) => {
                    let _ = message.ack().await;
                }
                Err(Retry::AwaitingHub(reason)) => {
                    let delay = Duration::from_secs(2u64.pow(attempt.clamp(1, 4) as u32));
                    tracing::warn!(%reason, attempt, ?delay, "command waits for the hub");
                    let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
                }
                Err(Retry::Transient(reason)) if attempt >= self.config.max_attempts => {
                    tracing::error!(%reason, attempt, "giving up on command");
                    let reason = format!("gave up after {attempt} attempts: {reason}");
                    self.report(&desired, failed(reason)).await;
                    let _ = message.ack_with(AckKind::Term).await;
                }
                Err(Retry::Transient(reason)) => {
                    let delay = Duration::from_secs(2u64.pow(attempt.clamp(1, 6) as u32));
                    tracing::warn!(%reason, attempt, ?delay, "command will be retried");
                    let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
                }
            }
        }
        .instrument(span)
        .await
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

    /// On start, carries out the newest command of every release whose Helm record is
    /// behind it, if commands were left unacknowledged (a crashed executor's): they would
    /// otherwise wait out the ack wait. Racing a live replica is harmless: the Helm record
    /// is written once per generation (the loser sees a conflict and replays).
    async fn catch_up(self: Arc<Self>, consumer: consumer::PullConsumer) {
        let mut consumer = consumer;
        match consumer.info().await {
            Ok(info) if info.num_ack_pending > 0 => {
                tracing::info!(
                    unacknowledged = info.num_ack_pending,
                    "commands left in hand by an earlier executor; catching up"
                );
            }
            Ok(_) => return,
            Err(error) => {
                tracing::warn!(%error, "cannot read the command consumer; no catch-up");
                return;
            }
        }
        let subjects = match self.command_subjects().await {
            Ok(subjects) => subjects,
            Err(error) => {
                tracing::warn!(%error, "cannot list this site's commands; no catch-up");
                return;
            }
        };
        for subject in subjects {
            if let Some(desired) = self.newest_command(&subject).await.ok().flatten() {
                self.settle_newest(&desired, &subject, "catch_up").await;
            }
        }
    }

    /// Carries out `desired`, the newest command known for its release, unless the
    /// cluster's Helm record already carries it (or a newer one). Outside the command
    /// consumer: the command itself stays with the consumer, which later finds it settled.
    async fn settle_newest(&self, desired: &DesiredRelease, subject: &str, why: &'static str) {
        let span = tracing::info_span!(
            "settle_newest",
            why,
            release = %desired.release,
            namespace = %desired.namespace,
            generation = desired.generation,
            action = %desired.action,
        );
        async {
            let lock = self.lock_for(&desired.namespace, &desired.release).await;
            let _guard = lock.lock().await;
            let applied = match self
                .target
                .current(&desired.namespace, &desired.release)
                .await
            {
                // An interrupted revision of this generation is not carried out yet.
                Ok(current) => current
                    .filter(|c| !c.is_interrupted())
                    .and_then(|c| c.generation),
                Err(error) => {
                    tracing::warn!(%error, "cannot read the release; left to the consumer");
                    return;
                }
            };
            if applied.is_some_and(|g| g >= desired.generation) {
                return;
            }
            if let Err(error) = self.process(desired, subject).await {
                tracing::warn!(?error, "not settled; left to the consumer");
            }
        }
        .instrument(span)
        .await
    }

    /// Every release subject this site holds commands for.
    async fn command_subjects(&self) -> Result<Vec<String>, String> {
        let stream = self
            .local
            .get_stream(subject::cmd_local_stream(&self.config.cluster))
            .await
            .map_err(|e| e.to_string())?;
        let info = stream
            .info_with_subjects(subject::commands_for(&self.config.cluster))
            .await
            .map_err(|e| e.to_string())?;
        info.map_ok(|(subject, _)| subject)
            .try_collect()
            .await
            .map_err(|e| e.to_string())
    }

    /// Puts deployed releases back as their records say, every `interval`, until shutdown.
    async fn correct_drift_forever(
        self: Arc<Self>,
        consumer: consumer::PullConsumer,
        interval: Duration,
        shutdown: Shutdown,
    ) {
        let mut consumer = consumer;
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // What was last said about each release, so a drift that cannot be corrected is
        // reported once rather than every pass.
        let mut last_said: HashMap<String, String> = HashMap::new();
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = shutdown.wait() => return,
            }
            // Commands not yet settled (here or at another replica): a release whose record
            // is behind its newest command is theirs to converge, not drift correction's.
            let commands_in_hand = match consumer.info().await {
                Ok(info) => info.num_pending > 0 || info.num_ack_pending > 0,
                Err(error) => {
                    tracing::warn!(%error, "cannot read the command consumer; drift check skipped");
                    continue;
                }
            };
            let releases = match self.target.deployed_releases().await {
                Ok(releases) => releases,
                Err(error) => {
                    tracing::warn!(%error, "cannot list releases; drift check skipped");
                    continue;
                }
            };
            for deployed in releases {
                let key = subject::release_key(
                    &self.config.cluster,
                    &deployed.namespace,
                    &deployed.release,
                );
                let subject =
                    subject::command(&self.config.cluster, &deployed.namespace, &deployed.release);
                if commands_in_hand
                    && let Ok(Some(newest)) = self.newest_command(&subject).await
                    && newest.generation > deployed.generation
                {
                    tracing::debug!(release = %deployed.release, "a newer command is in hand; drift check skipped");
                    continue;
                }
                let lock = self.lock_for(&deployed.namespace, &deployed.release).await;
                let _guard = lock.lock().await;
                match self
                    .target
                    .correct_drift(&deployed.namespace, &deployed.release)
                    .await
                {
                    Ok(Some(mut report)) if report.drifted() => {
                        if report.request_id.is_empty() {
                            // helm rewrote Optikon's record without its request annotation
                            // (a revision made by hand since): the command still names it.
                            if let Ok(Some(command)) = self.newest_command(&subject).await
                                && command.generation == report.generation
                            {
                                report.request_id = command.request_id;
                            }
                        }
                        if report.request_id.is_empty() {
                            tracing::warn!(release = %deployed.release, "drift not reported: no request names this release's generation");
                            continue;
                        }
                        let reason = report.reason();
                        let repeated =
                            report.corrected.is_empty() && last_said.get(&key) == Some(&reason);
                        if !repeated {
                            self.report_drift(&report).await;
                            last_said.insert(key, reason);
                        }
                    }
                    Ok(_) => {
                        last_said.remove(&key);
                    }
                    Err(error) => tracing::warn!(
                        release = %deployed.release,
                        namespace = %deployed.namespace,
                        %error,
                        "drift check failed; next pass tries again"
                    ),
                }
            }
        }
    }

    /// Carries out one command. `Err` is a problem worth another attempt.
    async fn process(&self, desired: &DesiredRelease, subject: &str) -> Result<(), Retry> {
        if desired.cluster != self.config.cluster {
            tracing::error!(cluster = %desired.cluster, "command for another cluster; dropped");
            return Ok(());
        }
        if let Some(newer) = self.newest_generation(subject).await?
            && newer > desired.generation
        {
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
            Some(applied)
                if applied == desired.generation
                    && !current.as_ref().is_some_and(StoredRelease::is_interrupted) =>
            {
                // A redelivery or a duplicate: `execute` reports the stored result and
                // applies nothing. (An interrupted revision goes on below, with its chart.)
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
            (Action::Install | Action::Upgrade, Some(pin)) => {
                let started = std::time::Instant::now();
                let chart = match self.fetch_chart(pin).await {
                    Ok(bytes) => bytes,
                    Err(ChartUnavailable::Lost(reason)) => {
                        self.report(desired, failed(reason)).await;
                        return Ok(());
                    }
                    Err(ChartUnavailable::Unreachable(reason)) => {
                        return Err(Retry::AwaitingHub(reason));
                    }
                    Err(ChartUnavailable::Local(reason)) => return Err(Retry::Transient(reason)),
                };
                let fetch_ms = started.elapsed().as_secs_f64() * 1e3;
                tracing::info!(fetch_ms, "chart fetched");
                Some(chart)
            }
            (Action::Install | Action::Upgrade, None) => {
                self.report(desired, failed("the command names no chart".into()))
                    .await;
                return Ok(());
            }
            _ => None,
        };
        let effective = self
            .effective_command(desired, current.as_ref(), subject)
            .await?;
        let outcome = self
            .target
            .execute(&effective, chart.as_deref())
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(state = %outcome.state, revision = ?outcome.revision, "command done");
        self.report(desired, outcome).await;
        Ok(())
    }

    /// What to carry out for `desired`. An upgrade normally needs the release installed; but
    /// when this site never applied the generations before it (superseded while it was away,
    /// or evicted at the hub), the install among them stands behind it: desired state wins,
    /// so the upgrade installs. An uninstall as the last word before it keeps it an upgrade
    /// of nothing, which fails as the user would expect.
    async fn effective_command(
        &self,
        desired: &DesiredRelease,
        current: Option<&StoredRelease>,
        subject: &str,
    ) -> Result<DesiredRelease, Retry> {
        let live = current.is_some_and(|c| c.status != "uninstalled" && c.status != "uninstalling");
        let applied = current.and_then(|c| c.generation).unwrap_or(0);
        if desired.action != Action::Upgrade || live || desired.generation <= applied + 1 {
            return Ok(desired.clone());
        }
        let between: Vec<(u64, Action)> = self
            .commands_of(subject)
            .await?
            .into_iter()
            .filter(|c| c.generation > applied && c.generation < desired.generation)
            .map(|c| (c.generation, c.action))
            .collect();
        let installs = upgrade_installs(applied, desired.generation, &between);
        if !installs {
            return Ok(desired.clone());
        }
        tracing::info!(
            applied,
            skipped = between.len(),
            "the install before this upgrade was never applied here; installing"
        );
        Ok(DesiredRelease {
            action: Action::Install,
            ..desired.clone()
        })
    }

    /// Every command this site holds for the release of `subject`, oldest first (at most
    /// `COMMANDS_KEPT_PER_RELEASE`).
    async fn commands_of(&self, subject: &str) -> Result<Vec<DesiredRelease>, String> {
        let stream = self
            .local
            .get_stream(subject::cmd_local_stream(&self.config.cluster))
            .await
            .map_err(|e| e.to_string())?;
        let consumer = stream
            .create_consumer(consumer::pull::OrderedConfig {
                filter_subject: subject.to_owned(),
                ..Default::default()
            })
            .await
            .map_err(|e| format!("read the release's commands: {e}"))?;
        let mut commands = Vec::new();
        // None yet: a command read from the hub before the site's copy has any.
        if consumer.cached_info().num_pending == 0 {
            return Ok(commands);
        }
        let mut messages = consumer
            .messages()
            .await
            .map_err(|e| format!("read the release's commands: {e}"))?;
        while let Ok(Some(message)) =
            tokio::time::timeout(Duration::from_secs(5), messages.next()).await
        {
            let message = message.map_err(|e| format!("read the release's commands: {e}"))?;
            if let Ok(command) = decode::<DesiredRelease>("command", &message.payload) {
                commands.push(command);
            }
            if message.info().map(|i| i.pending).unwrap_or(0) == 0 {
                break;
            }
        }
        Ok(commands)
    }

    /// The generation of the newest command this site holds for the release of `subject`.
    async fn newest_generation(&self, subject: &str) -> Result<Option<u64>, String> {
        Ok(self.newest_command(subject).await?.map(|d| d.generation))
    }

    /// The newest command this site holds for the release of `subject`, if readable.
    async fn newest_command(&self, subject: &str) -> Result<Option<DesiredRelease>, String> {
        let stream = self
            .local
            .get_stream(subject::cmd_local_stream(&self.config.cluster))
            .await
            .map_err(|e| e.to_string())?;
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(message) => Ok(decode::<DesiredRelease>("command", &message.payload).ok()),
            // Not here yet: a command read from the hub before the site's copy has it.
            Err(error)
                if matches!(
                    error.kind(),
                    async_nats::jetstream::stream::LastRawMessageErrorKind::NoMessageFound
                ) =>
            {
                Ok(None)
            }
            Err(error) => Err(format!("read newest command: {error}")),
        }
    }

    /// The chart archive: from this site's cache, else from the hub (then cached).
    async fn fetch_chart(&self, pin: &ChartPin) -> Result<Vec<u8>, ChartUnavailable> {
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

    /// Reports what became of a command.
    async fn report(&self, desired: &DesiredRelease, outcome: Outcome) {
        self.publish_status(ReleaseStatus {
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
        })
        .await
    }

    /// Reports drift of a deployed release: still deployed at the same generation and
    /// revision, with the reason naming what was put back.
    async fn report_drift(&self, report: &DriftReport) {
        let outcome = report.outcome();
        tracing::info!(
            release = %report.release,
            namespace = %report.namespace,
            revision = report.revision,
            generation = report.generation,
            reason = outcome.reason.as_deref().unwrap_or(""),
            "drift reported"
        );
        self.publish_status(ReleaseStatus {
            api_version: ApiVersion,
            cluster: self.config.cluster.clone(),
            namespace: report.namespace.clone(),
            release: report.release.clone(),
            generation: report.generation,
            request_id: report.request_id.clone(),
            action: report.action,
            state: outcome.state,
            revision: outcome.revision,
            chart: outcome.chart,
            reason: outcome.reason,
            first_deployed: outcome.first_deployed,
            at: Timestamp::now(),
        })
        .await
    }

    /// Stores a status event in the cluster's outbox `STATUS_<cluster>` (the site's uplink
    /// forwards it to the hub whenever the link is up), retrying while the local server is
    /// unavailable.
    async fn publish_status(&self, status: ReleaseStatus) {
        let body = serde_json::to_vec(&status).expect("status serializes");
        let subject = subject::outbox_status(&status.cluster, &status.namespace, &status.release);
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

/// Whether an upgrade to `generation` of a release that is not on the cluster installs it.
/// `applied` is the generation the cluster's record carries (0: none), `between` the
/// commands this site holds for the generations in between, none of them applied here.
/// The newest install or uninstall among them decides; with neither, the cluster's state
/// does (the upgrade fails), unless some generations in between are unknown here (evicted
/// at the hub), when the desired state wins.
fn upgrade_installs(applied: u64, generation: u64, between: &[(u64, Action)]) -> bool {
    if generation <= applied + 1 {
        return false;
    }
    let last_word = between
        .iter()
        .filter(|(_, action)| matches!(action, Action::Install | Action::Uninstall))
        .max_by_key(|(g, _)| *g)
        .map(|(_, action)| *action);
    match last_word {
        Some(action) => action == Action::Install,
        None => {
            let known: std::collections::BTreeSet<u64> = between.iter().map(|(g, _)| *g).collect();
            (known.len() as u64) < generation - applied - 1
        }
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

/// Why a command's chart could not be had.
#[derive(Debug)]
enum ChartUnavailable {
    /// The local chart cache failed.
    Local(String),
    /// Not cached, and the hub could not be asked.
    Unreachable(String),
    /// The hub answered, but has no such chart (any more): no retry will help.
    Lost(String),
}

#[derive(Debug)]
enum ObjectRead {
    NotFound,
    Failed(String),
}

async fn read_object(
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

/// Sleeps, or returns true at once if shutdown began.
async fn pause(shutdown: &Shutdown, duration: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(duration) => false,
        _ = shutdown.wait() => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_upgrade_installs_only_when_an_unapplied_install_stands_behind_it() {
        use Action::{Install, Uninstall, Upgrade};
        // The install before it was superseded while the site was away.
        assert!(upgrade_installs(0, 2, &[(1, Install)]));
        assert!(upgrade_installs(0, 3, &[(1, Install), (2, Upgrade)]));
        // Uninstalled, then upgraded: nothing to upgrade, as the user would expect.
        assert!(!upgrade_installs(1, 3, &[(2, Uninstall)]));
        assert!(!upgrade_installs(
            0,
            4,
            &[(1, Install), (2, Uninstall), (3, Upgrade)]
        ));
        // The generation before it was applied and left nothing: the cluster decides.
        assert!(!upgrade_installs(1, 2, &[]));
        assert!(!upgrade_installs(2, 4, &[(3, Upgrade)]));
        // Generations in between were evicted at the hub: desired state wins.
        assert!(upgrade_installs(2, 9, &[(7, Upgrade), (8, Upgrade)]));
        // A command held twice (redelivered) is still one generation.
        assert!(!upgrade_installs(
            2,
            5,
            &[(3, Upgrade), (3, Upgrade), (4, Upgrade)]
        ));
    }
}
