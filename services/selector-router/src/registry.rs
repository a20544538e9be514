//! Edges announce themselves on `optikon.api.cluster.register`; the hub starts sourcing
//! their `STATUS` stream and records them in the cluster registry.

use futures::StreamExt;
use optikon_core::message::{
    ApiError, ApiVersion, ClusterRecord, ClusterRegistration, ErrorCode, Reply, Timestamp, decode,
};
use optikon_core::{names, subject};
use optikon_runtime::shutdown::Shutdown;
use optikon_runtime::topology;

use crate::{Hub, internal, read, write_if};

pub async fn run(client: async_nats::Client, hub: Hub, shutdown: Shutdown) -> anyhow::Result<()> {
    let mut requests = client
        .queue_subscribe(subject::CLUSTER_REGISTER, "selector-router".into())
        .await?;
    loop {
        let message = tokio::select! {
            m = requests.next() => match m { Some(m) => m, None => return Ok(()) },
            _ = shutdown.wait() => return Ok(()),
        };
        let reply: Reply<ClusterRecord> = register(&hub, &message.payload).await.into();
        if let Some(inbox) = message.reply {
            let body = serde_json::to_vec(&reply).expect("reply serializes");
            let _ = client.publish(inbox, body.into()).await;
        }
    }
}

pub async fn register(hub: &Hub, body: &[u8]) -> Result<ClusterRecord, ApiError> {
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
    if topology::add_edge_source(&hub.js, &registration.domain)
        .await
        .map_err(|e| internal("source edge status", e))?
    {
        tracing::info!(cluster = %registration.name, "now sourcing the edge's status");
    }
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
