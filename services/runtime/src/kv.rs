//! Listing a KV bucket's keys reliably, and following a bucket live.
//!
//! `kv::Store::keys()` walks the bucket with a consumer, and a key rewritten while the walk
//! runs (a heartbeat updating a cluster record, say) can be missed: a selector would then
//! leave a matching cluster out of a request. The stream's own per-subject count is one
//! consistent answer from the server instead.

use async_nats::jetstream;
use futures::{StreamExt, TryStreamExt};

/// Every key of `bucket` that has a message (a deleted key's marker counts: readers skip it).
pub async fn keys(js: &jetstream::Context, bucket: &str) -> Result<Vec<String>, String> {
    keys_matching(js, bucket, ">").await
}

/// The keys of `bucket` that match `filter`, a key pattern with NATS wildcards
/// (`copenhagen-1.>`: one cluster's keys), as [`keys`] lists them.
pub async fn keys_matching(
    js: &jetstream::Context,
    bucket: &str,
    filter: &str,
) -> Result<Vec<String>, String> {
    let prefix = format!("$KV.{bucket}.");
    let stream = js
        .get_stream(format!("KV_{bucket}"))
        .await
        .map_err(|e| format!("bucket {bucket}: {e}"))?;
    let subjects: Vec<(String, usize)> = stream
        .info_with_subjects(format!("{prefix}{filter}"))
        .await
        .map_err(|e| format!("list bucket {bucket}: {e}"))?
        .try_collect()
        .await
        .map_err(|e| format!("list bucket {bucket}: {e}"))?;
    let mut keys: Vec<String> = subjects
        .into_iter()
        .filter_map(|(subject, _)| subject.strip_prefix(&prefix).map(str::to_owned))
        .collect();
    keys.sort();
    Ok(keys)
}

/// The newest live value of every key of `bucket` matching `filter` (a key pattern with
/// NATS wildcards), with its key, in one pass of an ordered consumer: one request however
/// many keys match, where [`keys`] plus a read per key would make one per key.
pub async fn latest_values(
    js: &jetstream::Context,
    bucket: &str,
    filter: &str,
) -> Result<Vec<(String, bytes::Bytes)>, String> {
    use async_nats::jetstream::consumer::{self, DeliverPolicy};
    use futures::StreamExt;

    let prefix = format!("$KV.{bucket}.");
    let stream = js
        .get_stream(format!("KV_{bucket}"))
        .await
        .map_err(|e| format!("bucket {bucket}: {e}"))?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: format!("{prefix}{filter}"),
            deliver_policy: DeliverPolicy::LastPerSubject,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("read bucket {bucket}: {e}"))?;
    let mut values = Vec::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok(values);
    }
    let mut messages = consumer
        .messages()
        .await
        .map_err(|e| format!("read bucket {bucket}: {e}"))?;
    // Each message within this long, or the read fails rather than hangs.
    const QUIET: std::time::Duration = std::time::Duration::from_secs(10);
    loop {
        let message = match tokio::time::timeout(QUIET, messages.next()).await {
            Ok(Some(message)) => message,
            Ok(None) => break,
            Err(_) => return Err(format!("read bucket {bucket}: no message within {QUIET:?}")),
        };
        let message = message.map_err(|e| format!("read bucket {bucket}: {e}"))?;
        let pending = message.info().map(|i| i.pending).unwrap_or(0);
        let deleted = message
            .headers
            .as_ref()
            .and_then(|h| h.get("KV-Operation"))
            .is_some_and(|op| op.as_str() == "DEL" || op.as_str() == "PURGE");
        if !deleted && let Some(key) = message.subject.strip_prefix(&prefix) {
            values.push((key.to_owned(), message.payload.clone()));
        }
        if pending == 0 {
            break;
        }
    }
    Ok(values)
}

/// Every message of `stream` on `filter` (a subject with NATS wildcards), oldest first, in
/// one pass of an ordered consumer.
pub async fn stream_messages(
    js: &jetstream::Context,
    stream: &str,
    filter: &str,
) -> Result<Vec<bytes::Bytes>, String> {
    use async_nats::jetstream::consumer;
    use futures::StreamExt;

    let read = |e: &dyn std::fmt::Display| format!("read {filter} from {stream}: {e}");
    let consumer = js
        .get_stream(stream)
        .await
        .map_err(|e| read(&e))?
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: filter.to_owned(),
            ..Default::default()
        })
        .await
        .map_err(|e| read(&e))?;
    let mut bodies = Vec::new();
    if consumer.cached_info().num_pending == 0 {
        return Ok(bodies);
    }
    let mut messages = consumer.messages().await.map_err(|e| read(&e))?;
    // Each message within this long, or the read fails rather than hangs.
    const QUIET: std::time::Duration = std::time::Duration::from_secs(10);
    loop {
        let message = match tokio::time::timeout(QUIET, messages.next()).await {
            Ok(Some(message)) => message.map_err(|e| read(&e))?,
            Ok(None) => break,
            Err(_) => return Err(read(&format!("no message within {QUIET:?}"))),
        };
        let pending = message.info().map(|i| i.pending).unwrap_or(0);
        bodies.push(message.payload.clone());
        if pending == 0 {
            break;
        }
    }
    Ok(bodies)
}

/// Hands every change of `bucket` to `apply`, re-watching from scratch when the watch ends
/// (a reconnect): the newest value of every key comes first, then each change. Runs
/// forever; `what` names the bucket in logs.
pub async fn follow_bucket(
    bucket: jetstream::kv::Store,
    what: &str,
    mut apply: impl FnMut(jetstream::kv::Entry),
) {
    loop {
        let mut entries = match bucket.watch_with_history(">").await {
            Ok(entries) => entries,
            Err(error) => {
                tracing::warn!(%error, what, "cannot watch the bucket; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                continue;
            }
        };
        while let Some(entry) = entries.next().await {
            match entry {
                Ok(entry) => apply(entry),
                Err(error) => {
                    tracing::warn!(%error, what, "bucket watch interrupted");
                    break;
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
