//! Edges announce themselves on `optikon.api.cluster.register.<cluster>`; the hub makes
//! sure the cluster's command consumer (`edge-<cluster>` on `CMD`) exists and records the
//! cluster in the registry.
//!
//! Who registers is the subject's last token, never the body: the hub's permissions let
//! only the cluster's own identity publish on its subject, so a site cannot register as
//! another. A body naming another cluster than its subject is refused.

use std::collections::HashMap;

use futures::{FutureExt, StreamExt};
use optikon_core::message::{
    ApiError, ApiVersion, ClusterRecord, ClusterRegistration, DesiredRelease, ErrorCode,
    ReleaseStatus, Reply, Timestamp, decode,
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
        let registrations: Vec<Registration<'_>> = batch
            .iter()
            .map(|m| Registration {
                subject: m.subject.as_str(),
                body: m.payload.as_ref(),
                returning: m
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(subject::HEADER_RETURNING))
                    .is_some(),
            })
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

/// One registration message.
pub struct Registration<'a> {
    pub subject: &'a str,
    pub body: &'a [u8],
    /// The site may have been away ([`subject::HEADER_RETURNING`]).
    pub returning: bool,
}

/// Registers each, answering each on its own: a bad registration does not fail the others
/// of its batch.
pub async fn register_all(
    hub: &Hub,
    registrations: &[Registration<'_>],
) -> Vec<Result<ClusterRecord, ApiError>> {
    let work = registrations.iter().map(|r| async move {
        let registration = check(r.subject, r.body)?;
        topology::ensure_edge_consumer(&hub.js, &registration.name)
            .await
            .map_err(|e| internal("set up the cluster's command consumer", e))?;
        let record = record(hub, registration).await?;
        if r.returning {
            resend_if_commands_dropped(hub, &record.name).await?;
        }
        Ok(record)
    });
    futures::stream::iter(work).buffered(32).collect().await
}

/// Sends the newest desired state of a release of `cluster` again where the hub has dropped
/// that command (see the module's notes): if the hub holds the limit of the cluster's
/// commands, each desired state that the site has not reported reaching and whose command
/// is not among those kept is sent again. A
/// resend is stored under a message id named after the oldest command kept, so a repeated
/// registration before anything new was sent to the cluster does not send it twice.
async fn resend_if_commands_dropped(hub: &Hub, cluster: &str) -> Result<(), ApiError> {
    let commands = subject::cluster_commands(cluster);
    let stream = hub
        .js
        .get_stream_no_info(subject::CMD_STREAM)
        .await
        .map_err(|e| internal("open the command stream", e))?;
    if (kept_commands(&stream, &commands).await? as i64) < topology::COMMANDS_KEPT_PER_CLUSTER {
        // Never at the limit, so nothing was ever dropped.
        return Ok(());
    }
    let (oldest, kept) = read_commands(&stream, &commands).await?;
    let desired = optikon_runtime::kv::latest_values(
        &hub.js,
        subject::DESIRED_BUCKET,
        &format!("{}.>", subject::token(cluster)),
    )
    .await
    .map_err(|e| internal("read the cluster's desired state", e))?;
    // What the site has already reported reaching (the folded status of each release).
    let reached: HashMap<String, u64> = optikon_runtime::kv::latest_values(
        &hub.js,
        subject::RELEASES_BUCKET,
        &format!("{}.>", subject::token(cluster)),
    )
    .await
    .map_err(|e| internal("read the cluster's release status", e))?
    .into_iter()
    .filter_map(|(key, value)| {
        let status: ReleaseStatus = decode("release status", &value).ok()?;
        status.state.is_final().then_some((key, status.generation))
    })
    .collect();
    let mut resent = 0;
    for (key, value) in desired {
        let desired: DesiredRelease = match decode("desired state", &value) {
            Ok(desired) => desired,
            Err(error) => {
                tracing::warn!(%key, %error, "unreadable desired state not resent");
                continue;
            }
        };
        let reported = reached.get(&key).is_some_and(|g| *g >= desired.generation);
        if reported || kept.contains(&(desired.request_id.clone(), desired.generation)) {
            continue;
        }
        let msg_id = format!("{}.{cluster}.resent-{oldest}", desired.request_id);
        crate::request::send_command(hub, &desired, msg_id).await?;
        resent += 1;
    }
    if resent > 0 {
        tracing::info!(
            cluster,
            resent,
            oldest_kept = oldest,
            "a returning site's commands were dropped before it got them; sent its desired state again"
        );
    }
    Ok(())
}

/// The stream sequence of the oldest command kept on `subject`, and each kept command's
/// request and generation.
async fn read_commands(
    stream: &async_nats::jetstream::stream::Stream<()>,
    subject: &str,
) -> Result<(u64, std::collections::HashSet<(String, u64)>), ApiError> {
    use async_nats::jetstream::consumer;
    let fail = |e: &dyn std::fmt::Display| internal("read the cluster's kept commands", e);
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            ..Default::default()
        })
        .await
        .map_err(|e| fail(&e))?;
    let mut messages = consumer.messages().await.map_err(|e| fail(&e))?;
    let (mut oldest, mut kept) = (0, std::collections::HashSet::new());
    loop {
        let message = tokio::time::timeout(std::time::Duration::from_secs(10), messages.next())
            .await
            .map_err(|_| fail(&"no message within 10 s"))?
            .ok_or_else(|| fail(&"the read ended early"))?
            .map_err(|e| fail(&e))?;
        let info = message.info().map_err(|e| fail(&e))?;
        if oldest == 0 {
            oldest = info.stream_sequence;
        }
        let pending = info.pending;
        if let Ok(command) = decode::<DesiredRelease>("command", &message.payload) {
            kept.insert((command.request_id, command.generation));
        }
        if pending == 0 {
            return Ok((oldest, kept));
        }
    }
}

/// How many commands `CMD` holds on `subject` (one cluster's).
async fn kept_commands(
    stream: &async_nats::jetstream::stream::Stream<()>,
    subject: &str,
) -> Result<usize, ApiError> {
    use futures::TryStreamExt;
    let counts: Vec<(String, usize)> = stream
        .info_with_subjects(subject)
        .await
        .map_err(|e| internal("count the cluster's commands", e))?
        .try_collect()
        .await
        .map_err(|e| internal("count the cluster's commands", e))?;
    Ok(counts.into_iter().map(|(_, n)| n).sum())
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
