//! The site's link to the hub for one cluster: commands in (downlink), status out (uplink).
//!
//! Both directions are store and forward with the edge's own JetStream at either end:
//!
//! - **Downlink.** The hub keeps the cluster's commands in `CMD` behind the durable
//!   consumer `edge-<cluster>`, which remembers what the site has acknowledged. The downlink
//!   pulls from it, stores each command in the site's `CMD_LOCAL_<cluster>` under the hub's
//!   message id (stored once however often it arrives), and only then acknowledges it at the
//!   hub. A command pulled but not acknowledged (a cut link, a crash) is offered again.
//! - **Uplink.** The executor stores each status in the site's outbox `STATUS_<cluster>`;
//!   the uplink forwards it to the hub's `STATUS_HUB` and acknowledges it locally only once
//!   the hub has stored it, with `Nats-Msg-Id: <cluster>.<outbox sequence>` so a status sent
//!   twice is stored once.
//!
//! Why not JetStream stream sources, which do the same by themselves: each source is kept
//! alive by an idle heartbeat every second, both ways, so at 10,000 sites the hub spends its
//! idle time on 20,000 heartbeats a second. A waiting pull costs the hub nothing until it
//! expires, and a status costs it one store. And a source's consumer is created by the edge
//! at the hub, which needs more permissions than a site should hold; here the site may only
//! pull from and acknowledge its own consumer, and publish under its own name.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind, consumer};
use async_nats::{HeaderMap, StatusCode};
use futures::StreamExt;
use optikon_core::message::{DesiredRelease, decode};
use optikon_core::subject;
use optikon_runtime::shutdown::Shutdown;

/// How long one pull waits at the hub for commands. While it waits it costs the hub
/// nothing; each expiry is one small message each way.
pub const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// Commands asked for in one pull.
const PULL_BATCH: usize = 64;
/// After no answer from the hub at all (the link is down), the next pull is this short, so
/// a returning link is noticed within about this long.
const PROBE_EXPIRES: Duration = Duration::from_secs(2);
/// Pause after the hub could not be asked (no route, not registered yet).
const RETRY_PAUSE: Duration = Duration::from_secs(1);
/// Status messages forwarded at once.
const UPLINK_BATCH: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("NATS at the edge: {0}")]
    Local(String),
}

/// Pulls `cluster`'s commands from the hub into the site until shutdown.
/// `link_returned` is told each time the hub answers again after it had not.
pub async fn downlink(
    client: async_nats::Client,
    cluster: String,
    shutdown: Shutdown,
    link_returned: std::sync::Arc<tokio::sync::Notify>,
) {
    let local = optikon_runtime::jetstream(client.clone());
    let request_subject = format!(
        "{}.CONSUMER.MSG.NEXT.{}.{}",
        subject::js_api_prefix(subject::HUB_DOMAIN),
        subject::CMD_STREAM,
        subject::edge_consumer(&cluster)
    );
    // One inbox for every pull: a pull the hub still holds after a cut link delivers its
    // commands here when the link returns, in order, instead of into a forgotten inbox
    // (where they would wait out the ack wait and come back in any order).
    let inbox = client.new_inbox();
    let mut replies = loop {
        match client.subscribe(inbox.clone()).await {
            Ok(replies) => break replies,
            Err(error) => {
                tracing::warn!(%error, "cannot subscribe for pulled commands; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_PAUSE) => {}
                    _ = shutdown.wait() => return,
                }
            }
        }
    };
    let mut expires = PROBE_EXPIRES;
    let mut link_up: Option<bool> = None;
    loop {
        if shutdown.is_triggered() {
            return;
        }
        let pull = pull_once(
            &client,
            &mut replies,
            &inbox,
            &local,
            &cluster,
            &request_subject,
            expires,
        );
        let outcome = tokio::select! {
            outcome = pull => outcome,
            _ = shutdown.wait() => return,
        };
        let answered = !matches!(outcome, Pull::Unanswered | Pull::NoRoute);
        if matches!(outcome, Pull::Delivered { at_limit: true }) {
            // The hub held as many commands for this cluster as it keeps: older ones may
            // have been dropped unseen, even if this link never looked down (a cut shorter
            // than one pull). Registering as returning makes the router check and resend.
            tracing::info!(cluster = %cluster, "the hub held a full backlog of commands; asking it to check for dropped ones");
            link_returned.notify_one();
        }
        if link_up != Some(answered) {
            if answered {
                tracing::info!(cluster = %cluster, "commands from the hub flow");
                if link_up == Some(false) {
                    link_returned.notify_one();
                }
            } else {
                tracing::info!(cluster = %cluster, ?outcome, "the hub does not answer pulls (link down, or not registered yet)");
            }
            link_up = Some(answered);
        }
        expires = if answered {
            PULL_EXPIRES
        } else {
            PROBE_EXPIRES
        };
        match outcome {
            Pull::Delivered { .. } | Pull::Expired => {}
            Pull::Unanswered => {}
            Pull::NoRoute | Pull::Refused(_) | Pull::LocalFailure(_) => {
                if let Pull::Refused(reason) | Pull::LocalFailure(reason) = &outcome {
                    tracing::warn!(cluster = %cluster, %reason, "pull failed");
                }
                tokio::select! {
                    _ = tokio::time::sleep(RETRY_PAUSE) => {}
                    _ = shutdown.wait() => return,
                }
            }
        }
    }
}

/// What one pull came to.
#[derive(Debug)]
enum Pull {
    /// At least one command arrived and was stored. `at_limit`: the hub's consumer had as
    /// many commands waiting for this cluster as the hub keeps for it
    /// (`COMMANDS_KEPT_PER_CLUSTER`), so older ones may have been dropped before they came.
    Delivered { at_limit: bool },
    /// The hub let the pull expire: nothing new.
    Expired,
    /// Nothing came back at all: the request did not reach the hub.
    Unanswered,
    /// The edge's server has no route for the request (no link, or no such consumer).
    NoRoute,
    /// The hub answered with an error status.
    Refused(String),
    /// A command could not be stored at the edge; it stays unacknowledged at the hub.
    LocalFailure(String),
}

/// Asks the hub for up to a batch of commands, replies to `inbox`, and stores what comes.
/// What arrives may answer an earlier pull the hub still held: it is this cluster's all the
/// same, and taken in the order it comes.
async fn pull_once(
    client: &async_nats::Client,
    replies: &mut async_nats::Subscriber,
    inbox: &str,
    local: &jetstream::Context,
    cluster: &str,
    request_subject: &str,
    expires: Duration,
) -> Pull {
    let request = serde_json::json!({
        "batch": PULL_BATCH,
        "expires": expires.as_nanos() as u64,
    });
    let body = serde_json::to_vec(&request).expect("pull request serializes");
    if let Err(e) = client
        .publish_with_reply(request_subject.to_owned(), inbox.to_owned(), body.into())
        .await
    {
        return Pull::LocalFailure(format!("publish pull: {e}"));
    }
    let deadline = tokio::time::Instant::now() + expires + Duration::from_secs(3);
    let mut delivered = 0;
    let mut at_limit = false;
    let done = |at_limit| Pull::Delivered { at_limit };
    loop {
        let message = match tokio::time::timeout_at(deadline, replies.next()).await {
            Ok(Some(message)) => message,
            Ok(None) => return Pull::LocalFailure("the pull inbox subscription closed".into()),
            Err(_) if delivered > 0 => return done(at_limit),
            Err(_) => return Pull::Unanswered,
        };
        if let Some(status) = message.status {
            return match status {
                StatusCode::NO_RESPONDERS => Pull::NoRoute,
                StatusCode::TIMEOUT | StatusCode::NOT_FOUND if delivered > 0 => done(at_limit),
                StatusCode::TIMEOUT | StatusCode::NOT_FOUND => Pull::Expired,
                // Idle heartbeat: not asked for, but harmless.
                StatusCode::IDLE_HEARTBEAT => continue,
                other => Pull::Refused(format!(
                    "status {other}: {}",
                    message.description.as_deref().unwrap_or("")
                )),
            };
        }
        let Some(ack) = message.reply.clone() else {
            continue;
        };
        at_limit |= backlog_at_limit(&message, local);
        if let Err(reason) = store_command(local, cluster, &message).await {
            // Left unacknowledged: the hub offers it again after its ack wait.
            return Pull::LocalFailure(reason);
        }
        if let Err(error) = client.publish(ack, "+ACK".into()).await {
            tracing::debug!(%error, "command stored here; its ack is retried by redelivery");
        }
        delivered += 1;
        if delivered == PULL_BATCH {
            return done(at_limit);
        }
    }
}

/// Whether the consumer still had, counting this command, as many commands waiting as the
/// hub keeps per cluster: the only state in which the hub can have dropped one this site
/// never got (the count is in the ack subject the hub sends each command with).
fn backlog_at_limit(message: &async_nats::Message, local: &jetstream::Context) -> bool {
    let message = jetstream::Message {
        message: message.clone(),
        context: local.clone(),
    };
    message.info().is_ok_and(|info| {
        info.pending + 1 >= optikon_runtime::topology::COMMANDS_KEPT_PER_CLUSTER as u64
    })
}

/// Stores one pulled command in `CMD_LOCAL_<cluster>`. A command that is not this cluster's
/// (it cannot be: the consumer's filter is) or does not parse is stored nowhere.
async fn store_command(
    local: &jetstream::Context,
    cluster: &str,
    message: &async_nats::Message,
) -> Result<(), String> {
    let desired = match decode::<DesiredRelease>("command", &message.payload) {
        Ok(desired) if desired.cluster == cluster => desired,
        Ok(desired) => {
            tracing::error!(cluster, other = %desired.cluster, "dropping a command for another cluster");
            return Ok(());
        }
        Err(error) => {
            tracing::error!(cluster, %error, "dropping a malformed command");
            return Ok(());
        }
    };
    let mut headers = HeaderMap::new();
    if let Some(received) = &message.headers {
        for name in ["Nats-Msg-Id", "traceparent", "tracestate"] {
            if let Some(value) = received.get(name) {
                headers.insert(name, value.as_str());
            }
        }
    }
    let local_subject = subject::command(&desired.cluster, &desired.namespace, &desired.release);
    local
        .publish_with_headers(local_subject, headers, message.payload.clone())
        .await
        .map_err(|e| format!("store command: {e}"))?
        .await
        .map_err(|e| format!("store command: {e}"))?;
    Ok(())
}

/// Forwards `cluster`'s outbox to the hub until shutdown.
pub async fn uplink(
    client: async_nats::Client,
    cluster: String,
    shutdown: Shutdown,
) -> Result<(), LinkError> {
    let local = optikon_runtime::jetstream(client);
    let consumer: consumer::PullConsumer = local
        .get_stream(subject::status_stream(&cluster))
        .await
        .map_err(|e| LinkError::Local(e.to_string()))?
        .get_or_create_consumer(
            "uplink",
            consumer::pull::Config {
                durable_name: Some("uplink".into()),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                max_ack_pending: 4 * UPLINK_BATCH as i64,
                ..Default::default()
            },
        )
        .await
        .map_err(|e| LinkError::Local(e.to_string()))?;
    let mut batches = consumer
        .stream()
        .max_messages_per_batch(UPLINK_BATCH)
        .messages()
        .await
        .map_err(|e| LinkError::Local(e.to_string()))?
        .ready_chunks(UPLINK_BATCH);
    let mut link_up = true;
    loop {
        let batch = tokio::select! {
            b = batches.next() => match b { Some(b) => b, None => return Ok(()) },
            _ = shutdown.wait() => return Ok(()),
        };
        let messages: Vec<jetstream::Message> = batch
            .into_iter()
            .filter_map(|m| {
                m.map_err(|error| tracing::debug!(%error, "outbox consumer interrupted"))
                    .ok()
            })
            .collect();
        // All of a batch at once: each waits for its own store acknowledgement.
        let forwarded: Vec<Result<(), String>> =
            futures::future::join_all(messages.iter().cloned().map(|message| {
                let (local, cluster) = (local.clone(), cluster.clone());
                async move { forward(&local, &cluster, &message).await }
            }))
            .await;
        let mut failed = 0;
        for (message, result) in messages.iter().zip(&forwarded) {
            match result {
                Ok(()) => {
                    let _ = message.ack().await;
                }
                Err(_) => {
                    failed += 1;
                    let _ = message.ack_with(AckKind::Nak(Some(RETRY_PAUSE))).await;
                }
            }
        }
        let up = failed == 0;
        if up != link_up {
            match forwarded.iter().find_map(|r| r.as_ref().err()) {
                Some(error) => {
                    tracing::info!(cluster = %cluster, %error, "status waits at the edge for the hub")
                }
                None => tracing::info!(cluster = %cluster, "status reaches the hub again"),
            }
            link_up = up;
        }
        if !up {
            tokio::select! {
                _ = tokio::time::sleep(RETRY_PAUSE) => {}
                _ = shutdown.wait() => return Ok(()),
            }
        }
    }
}

/// Publishes one outbox message to the hub and waits until `STATUS_HUB` stored it.
async fn forward(
    js: &jetstream::Context,
    cluster: &str,
    message: &jetstream::Message,
) -> Result<(), String> {
    let Some(target) = subject::status_from_outbox(&message.subject) else {
        return Ok(());
    };
    let sequence = message
        .info()
        .map(|i| i.stream_sequence)
        .unwrap_or_default();
    let mut headers = HeaderMap::new();
    if let Some(received) = &message.headers {
        for name in ["traceparent", "tracestate"] {
            if let Some(value) = received.get(name) {
                headers.insert(name, value.as_str());
            }
        }
    }
    headers.insert("Nats-Msg-Id", format!("{cluster}.{sequence}").as_str());
    js.publish_with_headers(target, headers, message.payload.clone())
        .await
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}
