//! Edges announce themselves on `optikon.api.cluster.register`; the hub starts sourcing
//! their `STATUS_<cluster>` stream and records them in the cluster registry.
//!
//! Registrations that arrive together (a fleet coming online, a hub restart) are handled as
//! one batch: one update per `STATUS_HUB` shard instead of one per cluster.

use futures::{FutureExt, StreamExt};
use optikon_core::message::{
    ApiError, ApiVersion, ClusterRecord, ClusterRegistration, ErrorCode, Reply, Timestamp, decode,
};
use optikon_core::{names, subject};
use optikon_runtime::shutdown::Shutdown;
use optikon_runtime::topology::{self, EdgeStatusSource};

use crate::{Hub, internal, read, write_if};

/// At most this many registrations are handled in one batch.
const BATCH: usize = 256;

pub async fn run(client: async_nats::Client, hub: Hub, shutdown: Shutdown) -> anyhow::Result<()> {
    let mut requests = client
        .queue_subscribe(subject::CLUSTER_REGISTER, "selector-router".into())
        .await?;
    loop {
        let first = tokio::select! {
            m = requests.next() => match m { Some(m) => m, None => return Ok(()) },
            _ = shutdown.wait() => return Ok(()),
        };
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match requests.next().now_or_never() {
                Some(Some(message)) => batch.push(message),
                _ => break,
            }
        }
        let bodies: Vec<&[u8]> = batch.iter().map(|m| m.payload.as_ref()).collect();
        let replies = register_all(&hub, &bodies).await;
        for (message, reply) in batch.iter().zip(replies) {
            if let Some(inbox) = &message.reply {
                let reply: Reply<ClusterRecord> = reply.into();
                let body = serde_json::to_vec(&reply).expect("reply serializes");
                let _ = client.publish(inbox.clone(), body.into()).await;
            }
        }
    }
}

/// Registers each body, answering each on its own: a bad registration does not fail the
/// others of its batch.
pub async fn register_all(hub: &Hub, bodies: &[&[u8]]) -> Vec<Result<ClusterRecord, ApiError>> {
    let checked: Vec<Result<ClusterRegistration, ApiError>> =
        bodies.iter().map(|body| check(body)).collect();
    let edges: Vec<EdgeStatusSource> = checked
        .iter()
        .flatten()
        .map(|r| EdgeStatusSource {
            domain: r.domain.clone(),
            cluster: r.name.clone(),
        })
        .collect();
    let sourced = match topology::add_edge_sources(&hub.js, &edges).await {
        Ok(added) => {
            if !added.is_empty() {
                tracing::info!(clusters = added.len(), "now sourcing the edges' status");
            }
            Ok(())
        }
        Err(e) => Err(internal("source edge status", e)),
    };
    let records = checked.into_iter().map(|registration| {
        let sourced = sourced.clone();
        async move { record(hub, registration?, sourced).await }
    });
    futures::stream::iter(records).buffered(32).collect().await
}

async fn record(
    hub: &Hub,
    registration: ClusterRegistration,
    sourced: Result<(), ApiError>,
) -> Result<ClusterRecord, ApiError> {
    sourced?;
    let key = subject::token(&registration.name);
    for _ in 0..20 {
        if let Some((record, _)) = read::<ClusterRecord>(&hub.clusters, &key).await? {
            // Labels set at the hub win over the site's configured ones.
            return Ok(record);
        }
        let record = ClusterRecord {
            api_version: ApiVersion,
            name: registration.name.clone(),
            domain: registration.domain.clone(),
            labels: registration.labels.clone(),
            registered_at: Timestamp::now(),
            last_heartbeat: None,
        };
        if write_if(&hub.clusters, &key, &record, None).await? {
            return Ok(record);
        }
    }
    Err(internal("register cluster", "too many concurrent updates"))
}

fn check(body: &[u8]) -> Result<ClusterRegistration, ApiError> {
    let registration: ClusterRegistration = decode("cluster registration", body)?;
    names::validate_cluster_name(&registration.name)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("cluster name: {e}")))?;
    names::validate_cluster_name(&registration.domain)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("domain: {e}")))?;
    for (key, value) in &registration.labels {
        names::validate_label_key(key)
            .and_then(|()| names::validate_label_value(value))
            .map_err(|e| ApiError::new(ErrorCode::BadLabel, e.to_string()))?;
    }
    Ok(registration)
}
