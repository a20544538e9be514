//! Folds the edges' status into the hub's view: the cluster registry (`clusters`), the
//! release list (`releases`) and each request's progress (`requests` + events).
//!
//! Status may arrive late (a link was down), twice (redelivery) or out of order (several
//! router replicas); every fold keeps the newest by generation or time, so the result is
//! the same whatever the order.

use std::time::Duration;

use async_nats::jetstream;
use optikon_core::message::{
    ApiError, ApiVersion, ClusterRecord, Heartbeat, ReleaseState, ReleaseStatus, RequestStatus,
    decode,
};
use optikon_core::subject;
use optikon_runtime::shutdown::Shutdown;

use crate::request::publish_event;
use crate::{Hub, consume, internal, read, write_if};

const CONSUMER: &str = "status-fold";

pub async fn run(hub: Hub, shutdown: Shutdown) -> anyhow::Result<()> {
    let ack_wait = Duration::from_secs(30);
    let retry = Duration::from_secs(1);
    consume(
        &hub,
        subject::STATUS_HUB_STREAM,
        CONSUMER,
        false, // folding does not depend on order
        ack_wait,
        retry,
        shutdown,
        |message| {
            let hub = hub.clone();
            async move { fold_message(&hub, &message).await }
        },
    )
    .await
}

async fn fold_message(hub: &Hub, message: &jetstream::Message) -> Result<(), ApiError> {
    if message.subject.ends_with(".heartbeat") {
        match decode::<Heartbeat>("heartbeat", &message.payload) {
            Ok(heartbeat) => fold_heartbeat(hub, heartbeat).await,
            Err(error) => {
                tracing::warn!(%error, subject = %message.subject, "dropping malformed heartbeat");
                Ok(())
            }
        }
    } else {
        match decode::<ReleaseStatus>("release status", &message.payload) {
            Ok(status) => fold_release_status(hub, status).await,
            Err(error) => {
                tracing::warn!(%error, subject = %message.subject, "dropping malformed status");
                Ok(())
            }
        }
    }
}

/// Keeps the newest heartbeat of a cluster; the first one registers an unknown cluster.
pub async fn fold_heartbeat(hub: &Hub, heartbeat: Heartbeat) -> Result<(), ApiError> {
    let key = subject::token(&heartbeat.cluster);
    for _ in 0..20 {
        let current = read::<ClusterRecord>(&hub.clusters, &key).await?;
        let (mut record, revision) = match current {
            Some((record, revision)) => (record, Some(revision)),
            None => (
                ClusterRecord {
                    api_version: ApiVersion,
                    name: heartbeat.cluster.clone(),
                    domain: heartbeat.cluster.clone(),
                    labels: heartbeat.labels.clone(),
                    registered_at: heartbeat.at,
                    last_heartbeat: None,
                },
                None,
            ),
        };
        if record
            .last_heartbeat
            .as_ref()
            .is_some_and(|last| last.at >= heartbeat.at)
        {
            return Ok(());
        }
        record.last_heartbeat = Some(heartbeat.clone());
        if write_if(&hub.clusters, &key, &record, revision).await? {
            return Ok(());
        }
    }
    Err(internal("fold heartbeat", "too many concurrent updates"))
}

/// Whether `new` should replace `old` as what is known of one release generation.
fn newer(new: &ReleaseStatus, old: &ReleaseStatus) -> bool {
    (new.generation, new.state.is_final(), new.at) > (old.generation, old.state.is_final(), old.at)
}

pub async fn fold_release_status(hub: &Hub, status: ReleaseStatus) -> Result<(), ApiError> {
    // Superseded says nothing about what runs on the cluster: only the request cares.
    if status.state != ReleaseState::Superseded {
        let key = subject::release_key(&status.cluster, &status.namespace, &status.release);
        let mut written = false;
        for _ in 0..20 {
            let current = read::<ReleaseStatus>(&hub.releases, &key).await?;
            if let Some((old, _)) = &current
                && !newer(&status, old)
            {
                written = true;
                break;
            }
            if write_if(&hub.releases, &key, &status, current.map(|(_, r)| r)).await? {
                written = true;
                break;
            }
        }
        if !written {
            return Err(internal(
                "fold release status",
                "too many concurrent updates",
            ));
        }
    }
    fold_into_request(hub, &status).await
}

async fn fold_into_request(hub: &Hub, status: &ReleaseStatus) -> Result<(), ApiError> {
    let key = subject::token(&status.request_id);
    for _ in 0..20 {
        let Some((mut request, revision)) = read::<RequestStatus>(&hub.requests, &key).await?
        else {
            // Not a request this hub knows (expired, or made elsewhere): nothing to track.
            return Ok(());
        };
        let Some(progress) = request.clusters.get_mut(&status.cluster) else {
            return Ok(());
        };
        if progress.generation != status.generation
            || (progress.state.is_final() && !status.state.is_final())
            || (progress.state == status.state && progress.revision == status.revision)
        {
            return Ok(());
        }
        progress.state = status.state;
        progress.revision = status.revision;
        progress.reason = status.reason.clone();
        if write_if(&hub.requests, &key, &request, Some(revision)).await? {
            return publish_event(hub, &request).await;
        }
    }
    Err(internal(
        "fold request progress",
        "too many concurrent updates",
    ))
}
