//! Edges announce themselves on `optikon.api.cluster.register.<cluster>`; the hub makes
//! sure the cluster's command consumer (`edge-<cluster>` on `CMD`) exists and records the
//! cluster in the registry.
//!
//! Who registers is the subject's last token, never the body: the hub's permissions let
//! only the cluster's own identity publish on its subject, so a site cannot register as
//! another. A body naming another cluster than its subject is refused.

use futures::{FutureExt, StreamExt};
use optikon_core::message::{
    ApiError, ApiVersion, ClusterRecord, ClusterRegistration, ErrorCode, Reply, Timestamp, decode,
};
use optikon_core::{names, subject};
use optikon_runtime::shutdown::Shutdown;
use optikon_runtime::topology;

use crate::{Hub, internal, read, write_if};

/// At most this many registrations are handled in one batch.
const BATCH: usize = 256;

pub async fn run(client: async_nats::Client, hub: Hub, shutdown: Shutdown) -> anyhow::Result<()> {
    let mut requests = client
        .queue_subscribe(
            format!("{}.*", subject::CLUSTER_REGISTER_PREFIX),
            "selector-router".into(),
        )
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
        let registrations: Vec<(&str, &[u8])> = batch
            .iter()
            .map(|m| (m.subject.as_str(), m.payload.as_ref()))
            .collect();
        let replies = register_all(&hub, &registrations).await;
        for (message, reply) in batch.iter().zip(replies) {
            if let Some(inbox) = &message.reply {
                let reply: Reply<ClusterRecord> = reply.into();
                let body = serde_json::to_vec(&reply).expect("reply serializes");
                let _ = client.publish(inbox.clone(), body.into()).await;
            }
        }
    }
}

/// Registers each `(subject, body)`, answering each on its own: a bad registration does not
/// fail the others of its batch.
pub async fn register_all(
    hub: &Hub,
    registrations: &[(&str, &[u8])],
) -> Vec<Result<ClusterRecord, ApiError>> {
    let work = registrations.iter().map(|(subject, body)| async move {
        let registration = check(subject, body)?;
        topology::ensure_edge_consumer(&hub.js, &registration.name)
            .await
            .map_err(|e| internal("set up the cluster's command consumer", e))?;
        record(hub, registration).await
    });
    futures::stream::iter(work).buffered(32).collect().await
}

async fn record(hub: &Hub, registration: ClusterRegistration) -> Result<ClusterRecord, ApiError> {
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

/// Checks a registration; the cluster it is for is the one its subject names.
fn check(subject: &str, body: &[u8]) -> Result<ClusterRegistration, ApiError> {
    let caller = subject::cluster_of_api_subject(subject::CLUSTER_REGISTER_PREFIX, subject)
        .map(subject::untoken)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                format!("registration on {subject:?} names no cluster"),
            )
        })?;
    let registration: ClusterRegistration = decode("cluster registration", body)?;
    if registration.name != caller {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "registration for cluster {:?} arrived with the identity of cluster {caller:?}; \
                 a site registers only itself",
                registration.name
            ),
        ));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn body(name: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": "optikon/v1", "name": name, "domain": name, "labels": {}
        }))
        .unwrap()
    }

    #[test]
    fn a_site_registers_only_under_its_own_subject() {
        let subject = subject::cluster_register("copenhagen-1");
        assert_eq!(
            check(&subject, &body("copenhagen-1")).unwrap().name,
            "copenhagen-1"
        );
        let err = check(&subject, &body("copenhagen-2")).unwrap_err();
        assert!(
            err.message.contains("identity of cluster \"copenhagen-1\""),
            "{err}"
        );
        let err = check(subject::CLUSTER_REGISTER_PREFIX, &body("copenhagen-1")).unwrap_err();
        assert!(err.message.contains("names no cluster"), "{err}");
    }
}
