//! Drift correction: each release Optikon deployed is put back as its Helm record says, and
//! what had drifted is reported. A release is looked at as soon as the cluster's watches see
//! one of its objects edited or deleted, and every release every `drift_interval` (a pass
//! that finds nothing changed reads one listing of the release records and asks nothing
//! else of the API server).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer;
use optikon_core::subject;
use optikon_runtime::shutdown::Shutdown;

use crate::Executor;

/// How long after a watched change the pass starts, so one apply of many objects (or an
/// edit that a controller follows up at once) is looked at once.
const CHANGE_SETTLE: Duration = Duration::from_millis(500);

impl Executor {
    /// Puts deployed releases back as their records say, when their objects change and
    /// every `interval`, until shutdown.
    pub(crate) async fn correct_drift_forever(
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
        let mut changes = self.target.drift_changes();
        loop {
            // `None`: every release; else only those whose objects changed.
            let only: Option<BTreeSet<(String, String)>> = tokio::select! {
                _ = ticker.tick() => None,
                Some(first) = changes.recv() => {
                    // A burst (an apply of many objects) makes one pass.
                    tokio::time::sleep(CHANGE_SETTLE).await;
                    let mut changed = BTreeSet::from([first]);
                    while let Ok(more) = changes.try_recv() {
                        changed.insert(more);
                    }
                    Some(changed)
                }
                _ = shutdown.wait() => return,
            };
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
            self.target.forget_drift_except(&releases);
            for deployed in releases {
                if only.as_ref().is_some_and(|only| {
                    !only.contains(&(deployed.namespace.clone(), deployed.release.clone()))
                }) {
                    continue;
                }
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
                    .correct_drift_at(
                        &deployed.namespace,
                        &deployed.release,
                        deployed.record_version.as_deref(),
                    )
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
}
