//! Status: outcomes and drift reports stored in the site's outbox `STATUS_<cluster>`, which
//! the uplink forwards to the hub.

use std::time::Duration;

use optikon_core::message::{ApiVersion, DesiredRelease, ReleaseStatus, Timestamp};
use optikon_core::subject;
use optikon_runtime::trace;

use crate::Executor;
use crate::cluster::{DriftReport, Outcome};

impl Executor {
    /// Reports what became of a command.
    pub(crate) async fn report(&self, desired: &DesiredRelease, outcome: Outcome) {
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
    pub(crate) async fn report_drift(&self, report: &DriftReport) {
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
    pub(crate) async fn publish_status(&self, status: ReleaseStatus) {
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
