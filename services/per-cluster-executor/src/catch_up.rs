//! Link and start-up catch-up: the newest command of every release whose Helm record is
//! behind it is carried out without waiting for the consumer to hand it over again.

use std::sync::Arc;

use async_nats::jetstream::consumer;
use futures::TryStreamExt;
use optikon_core::message::DesiredRelease;
use optikon_core::subject;
use tracing::Instrument;

use crate::Executor;

impl Executor {
    /// On start, carries out the newest command of every release whose Helm record is
    /// behind it, if commands were left unacknowledged (a crashed executor's): they would
    /// otherwise wait out the ack wait. Racing a live replica is harmless: the Helm record
    /// is written once per generation (the loser sees a conflict and replays).
    pub(crate) async fn catch_up(self: Arc<Self>, consumer: consumer::PullConsumer) {
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
    pub(crate) async fn settle_newest(
        &self,
        desired: &DesiredRelease,
        subject: &str,
        why: &'static str,
    ) {
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
    pub(crate) async fn command_subjects(&self) -> Result<Vec<String>, String> {
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
}
