//! Listing a KV bucket's keys reliably.
//!
//! `kv::Store::keys()` walks the bucket with a consumer, and a key rewritten while the walk
//! runs (a heartbeat updating a cluster record, say) can be missed: a selector would then
//! leave a matching cluster out of a request. The stream's own per-subject count is one
//! consistent answer from the server instead.

use async_nats::jetstream;
use futures::TryStreamExt;

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
