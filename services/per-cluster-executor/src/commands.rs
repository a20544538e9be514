//! Consuming commands: each command from `CMD_LOCAL_<cluster>` is carried out once for its
//! generation, or reported superseded, and acknowledged only once its outcome is stored.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use futures::StreamExt;
use optikon_core::message::{Action, DesiredRelease, ReleaseState, decode};
use optikon_core::subject;
use optikon_runtime::trace;
use tracing::Instrument;

use crate::charts::ChartUnavailable;
use crate::cluster::{Outcome, StoredRelease};
use crate::{Executor, Retry, failed, outcome};

impl Executor {
    pub(crate) async fn handle(&self, message: jetstream::Message) {
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

    /// The outcome of a generation a newer one replaces: `superseded` if it was never
    /// applied, else what it did when it was (an executor that died between applying and
    /// reporting it sees it so on the redelivery).
    async fn superseded(&self, desired: &DesiredRelease, reason: String) -> Result<Outcome, Retry> {
        let done = self
            .target
            .carried_out(&desired.namespace, &desired.release, desired.generation)
            .await
            .map_err(|e| e.to_string())?;
        Ok(done.unwrap_or_else(|| outcome(ReleaseState::Superseded, reason)))
    }

    /// Carries out one command. `Err` is a problem worth another attempt.
    pub(crate) async fn process(
        &self,
        desired: &DesiredRelease,
        subject: &str,
    ) -> Result<(), Retry> {
        if desired.cluster != self.config.cluster {
            tracing::error!(cluster = %desired.cluster, "command for another cluster; dropped");
            return Ok(());
        }
        if let Some(newer) = self.newest_generation(subject).await?
            && newer > desired.generation
        {
            let reason = format!("generation {newer} replaces it");
            let outcome = self.superseded(desired, reason).await?;
            self.report(desired, outcome).await;
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
                let outcome = self.superseded(desired, reason).await?;
                self.report(desired, outcome).await;
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
    pub(crate) async fn effective_command(
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
    pub(crate) async fn commands_of(&self, subject: &str) -> Result<Vec<DesiredRelease>, String> {
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
    pub(crate) async fn newest_generation(&self, subject: &str) -> Result<Option<u64>, String> {
        Ok(self.newest_command(subject).await?.map(|d| d.generation))
    }

    /// The newest command this site holds for the release of `subject`, if readable.
    pub(crate) async fn newest_command(
        &self,
        subject: &str,
    ) -> Result<Option<DesiredRelease>, String> {
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
}

/// Whether an upgrade to `generation` of a release that is not on the cluster installs it.
/// `applied` is the generation the cluster's record carries (0: none), `between` the
/// commands this site holds for the generations in between, none of them applied here.
/// The newest install or uninstall among them decides; with neither, the cluster's state
/// does (the upgrade fails), unless some generations in between are unknown here (evicted
/// at the hub), when the desired state wins.
pub(crate) fn upgrade_installs(applied: u64, generation: u64, between: &[(u64, Action)]) -> bool {
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
