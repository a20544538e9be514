//! Fetching a chart archive from the hub by request/reply, in chunks, on `optikon.api.chart.fetch.<cluster>`.
//!
//! An edge may not read the hub's `charts` store itself: static NATS permissions cannot
//! limit object-store chunks to the charts a site's own commands name, so chart-ingest
//! answers fetches and checks that itself. Archives (up to 10 MiB) exceed NATS's 1 MiB
//! message limit, so the reply is a run of messages to the request's reply subject, each
//! carrying [`HEADER_CHUNK`] (`<index>/<count>`, index from 0). A refusal is one message
//! without that header whose body is a `Reply::<()>::Error`.
//!
//! The splitting and reassembly are pure functions here, shared by both sides, so the wire
//! format lives in one place.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use optikon_core::message::{ApiError, ApiVersion, ChartFetchRequest, Reply};
use optikon_core::subject;

use crate::trace;

/// Header on every chunk of a chart fetch reply: `<index>/<count>`, index from 0.
pub const HEADER_CHUNK: &str = "Optikon-Chunk";
/// Payload of one chunk: half of NATS's default 1 MiB message limit, leaving room for
/// headers and for servers configured a little below the default.
pub const CHUNK_BYTES: usize = 512 * 1024;
/// The most bytes a fetch accepts: above the 10 MiB archive limit, so any stored chart fits,
/// but bounded, so a bad reply cannot exhaust the edge's memory.
pub const MAX_FETCH_BYTES: usize = 16 * 1024 * 1024;
/// The most chunks a reply may announce (16 MiB / 512 KiB = 32; twice that for slack).
pub const MAX_CHUNKS: usize = 64;

/// Why a chart could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum ChartFetchError {
    /// The hub answered no: permanent for this digest unless the hub's state changes.
    #[error("the hub refused the chart fetch: {0}")]
    Refused(ApiError),
    /// No answer in time, nobody to answer, or the connection failed: retry later.
    #[error("the hub could not be asked for the chart: {0}")]
    Unreachable(String),
    /// An answer came, but it is not the chart: bytes that do not match the digest, or
    /// chunks that do not fit together.
    #[error("the hub's reply is not the chart asked for: {0}")]
    Corrupt(String),
}

/// Asks the hub for the archive with `digest` on behalf of `cluster` and waits at most
/// `timeout` for all of it. The bytes returned match `digest`.
pub async fn fetch_chart(
    client: &async_nats::Client,
    cluster: &str,
    digest: &str,
    timeout: Duration,
) -> Result<Vec<u8>, ChartFetchError> {
    // The whole exchange is bounded: a flush on a link that went down can wait too.
    let bytes = tokio::time::timeout(timeout, ask(client, cluster, digest))
        .await
        .map_err(|_| {
            ChartFetchError::Unreachable(format!(
                "no complete answer from the hub within {timeout:?}"
            ))
        })??;
    let got = optikon_core::chart::digest(&bytes);
    if got != digest {
        return Err(ChartFetchError::Corrupt(format!(
            "{} bytes arrived with digest {got}, not {digest}",
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Sends one fetch request and reassembles its reply.
async fn ask(
    client: &async_nats::Client,
    cluster: &str,
    digest: &str,
) -> Result<Vec<u8>, ChartFetchError> {
    let unreachable = |e: &dyn std::fmt::Display| ChartFetchError::Unreachable(e.to_string());
    // A fresh inbox per fetch: at the edge the client's inbox prefix is the site's own, so
    // the chunks cross the leaf link only to this site.
    let inbox = client.new_inbox();
    let mut replies = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| unreachable(&e))?;
    let request = ChartFetchRequest {
        api_version: ApiVersion,
        digest: digest.to_owned(),
    };
    let body = serde_json::to_vec(&request).expect("request serializes");
    client
        .publish_with_reply_and_headers(
            subject::chart_fetch(cluster),
            inbox,
            trace::headers(None),
            body.into(),
        )
        .await
        .map_err(|e| unreachable(&e))?;
    client.flush().await.map_err(|e| unreachable(&e))?;

    let mut reassembly = Reassembly::default();
    loop {
        let Some(message) = replies.next().await else {
            return Err(ChartFetchError::Unreachable(
                "the connection closed before the chart arrived".into(),
            ));
        };
        if message.status == Some(async_nats::StatusCode::NO_RESPONDERS) {
            return Err(ChartFetchError::Unreachable(
                "nobody at the hub answers chart fetches (chart-ingest down, or the link is)"
                    .into(),
            ));
        }
        let chunk = message
            .headers
            .as_ref()
            .and_then(|h| h.get(HEADER_CHUNK))
            .map(|v| parse_chunk_header(v.as_str()));
        match chunk {
            None => return Err(refusal(&message.payload)),
            Some(Err(problem)) => return Err(ChartFetchError::Corrupt(problem)),
            Some(Ok(chunk)) => {
                if let Some(bytes) = reassembly.add(chunk, message.payload)? {
                    return Ok(bytes);
                }
            }
        }
    }
}

/// What a message without a chunk header says: a refusal, or nonsense.
fn refusal(payload: &[u8]) -> ChartFetchError {
    match serde_json::from_slice::<Reply<()>>(payload) {
        Ok(Reply::Error(error)) => ChartFetchError::Refused(error),
        Ok(Reply::Ok(())) => {
            ChartFetchError::Corrupt("the hub answered ok but sent no chunk of the chart".into())
        }
        Err(e) => ChartFetchError::Corrupt(format!(
            "a reply without the {HEADER_CHUNK} header that is not an error reply: {e}"
        )),
    }
}

/// Where one chunk goes in a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Chunk {
    pub index: usize,
    pub count: usize,
}

impl Chunk {
    /// The [`HEADER_CHUNK`] value.
    pub fn header_value(&self) -> String {
        format!("{}/{}", self.index, self.count)
    }
}

/// Splits an archive into the chunks of a reply, in order. An empty archive is one empty
/// chunk, so every reply has at least one message.
pub fn split_chunks(bytes: &[u8]) -> Vec<(Chunk, &[u8])> {
    if bytes.is_empty() {
        return vec![(Chunk { index: 0, count: 1 }, bytes)];
    }
    let count = bytes.len().div_ceil(CHUNK_BYTES);
    bytes
        .chunks(CHUNK_BYTES)
        .enumerate()
        .map(|(index, part)| (Chunk { index, count }, part))
        .collect()
}

/// Reads a [`HEADER_CHUNK`] value; `Err` says what is wrong with it.
pub fn parse_chunk_header(value: &str) -> Result<Chunk, String> {
    let bad = |why: &str| format!("{HEADER_CHUNK} header {value:?} {why}");
    let (index, count) = value
        .trim()
        .split_once('/')
        .ok_or_else(|| bad("is not <index>/<count>"))?;
    let index: usize = index
        .parse()
        .map_err(|_| bad("has an index that is not a number"))?;
    let count: usize = count
        .parse()
        .map_err(|_| bad("has a count that is not a number"))?;
    if count == 0 || count > MAX_CHUNKS {
        return Err(bad(&format!("announces a count outside 1..={MAX_CHUNKS}")));
    }
    if index >= count {
        return Err(bad("has an index beyond its count"));
    }
    Ok(Chunk { index, count })
}

/// The chunks of one reply as they arrive, bounded by [`MAX_CHUNKS`] and [`MAX_FETCH_BYTES`].
#[derive(Debug, Default)]
pub struct Reassembly {
    parts: Vec<Option<Bytes>>,
    received: usize,
    bytes: usize,
}

impl Reassembly {
    /// Takes one chunk; returns the whole archive once the last missing chunk arrived.
    pub fn add(
        &mut self,
        chunk: Chunk,
        payload: Bytes,
    ) -> Result<Option<Vec<u8>>, ChartFetchError> {
        let corrupt = |why: String| Err(ChartFetchError::Corrupt(why));
        if chunk.count == 0 || chunk.count > MAX_CHUNKS || chunk.index >= chunk.count {
            return corrupt(format!(
                "chunk {} of {} is outside 1..={MAX_CHUNKS} chunks",
                chunk.index, chunk.count
            ));
        }
        if self.parts.is_empty() {
            self.parts = vec![None; chunk.count];
        } else if self.parts.len() != chunk.count {
            return corrupt(format!(
                "chunk {} says the reply has {} chunks, an earlier one said {}",
                chunk.index,
                chunk.count,
                self.parts.len()
            ));
        }
        if self.parts[chunk.index].is_some() {
            return corrupt(format!("chunk {} arrived twice", chunk.index));
        }
        self.bytes += payload.len();
        if self.bytes > MAX_FETCH_BYTES {
            return corrupt(format!(
                "the reply is larger than the limit of {MAX_FETCH_BYTES} bytes"
            ));
        }
        self.parts[chunk.index] = Some(payload);
        self.received += 1;
        if self.received < self.parts.len() {
            return Ok(None);
        }
        let mut whole = Vec::with_capacity(self.bytes);
        for part in self.parts.drain(..).flatten() {
            whole.extend_from_slice(&part);
        }
        Ok(Some(whole))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reassemble(chunks: &[(Chunk, &[u8])]) -> Result<Option<Vec<u8>>, ChartFetchError> {
        let mut reassembly = Reassembly::default();
        let mut result = None;
        for (chunk, part) in chunks {
            result = reassembly.add(*chunk, Bytes::copy_from_slice(part))?;
        }
        Ok(result)
    }

    #[test]
    fn an_archive_splits_into_chunks_that_fit_a_nats_message() {
        let bytes: Vec<u8> = (0..CHUNK_BYTES * 2 + 7).map(|i| i as u8).collect();
        let chunks = split_chunks(&bytes);
        assert_eq!(chunks.len(), 3);
        assert!(
            chunks
                .iter()
                .all(|(c, p)| c.count == 3 && p.len() <= CHUNK_BYTES)
        );
        assert_eq!(chunks[2].1.len(), 7);
        assert_eq!(
            chunks.iter().map(|(c, _)| c.index).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert_eq!(split_chunks(&bytes[..CHUNK_BYTES]).len(), 1);
        assert_eq!(split_chunks(&[]), [(Chunk { index: 0, count: 1 }, &[][..])]);
    }

    #[test]
    fn chunks_reassemble_in_any_order() {
        let bytes: Vec<u8> = (0..CHUNK_BYTES * 3 + 1).map(|i| (i * 7) as u8).collect();
        let mut chunks = split_chunks(&bytes);
        chunks.reverse();
        assert_eq!(reassemble(&chunks).unwrap(), Some(bytes.clone()));
        // Not complete until the last missing chunk is in.
        assert_eq!(reassemble(&chunks[..3]).unwrap(), None);
        assert_eq!(reassemble(&split_chunks(&[])).unwrap(), Some(Vec::new()));
    }

    #[test]
    fn chunk_headers_round_trip_and_bad_ones_are_named() {
        let chunk = Chunk { index: 2, count: 5 };
        assert_eq!(parse_chunk_header(&chunk.header_value()), Ok(chunk));
        for bad in ["", "3", "a/5", "1/b", "5/5", "0/0", "0/65", "-1/3", "1/2/3"] {
            let error = parse_chunk_header(bad).unwrap_err();
            assert!(error.contains(HEADER_CHUNK), "{error}");
        }
        assert!(parse_chunk_header("63/64").is_ok());
    }

    #[test]
    fn a_reply_that_does_not_fit_together_is_corrupt() {
        let corrupt = |chunks: &[(Chunk, &[u8])]| {
            matches!(reassemble(chunks), Err(ChartFetchError::Corrupt(_)))
        };
        let c = |index, count| Chunk { index, count };
        assert!(
            corrupt(&[(c(0, 2), b"a"), (c(1, 3), b"b")]),
            "count changes"
        );
        assert!(corrupt(&[(c(0, 2), b"a"), (c(0, 2), b"a")]), "duplicate");
        assert!(corrupt(&[(c(2, 2), b"a")]), "index beyond count");
        assert!(corrupt(&[(c(0, MAX_CHUNKS + 1), b"a")]), "too many chunks");
    }

    #[test]
    fn a_reply_larger_than_the_limit_is_refused_before_it_is_all_held() {
        let big = vec![0u8; MAX_FETCH_BYTES / 2 + 1];
        let mut reassembly = Reassembly::default();
        assert!(matches!(
            reassembly.add(Chunk { index: 0, count: 3 }, big.clone().into()),
            Ok(None)
        ));
        assert!(matches!(
            reassembly.add(Chunk { index: 1, count: 3 }, big.into()),
            Err(ChartFetchError::Corrupt(e)) if e.contains("limit")
        ));
    }

    #[test]
    fn a_message_without_a_chunk_header_is_a_refusal_or_nonsense() {
        let error = ApiError::new(
            optikon_core::message::ErrorCode::ChartNotFound,
            "no such chart",
        );
        let body = serde_json::to_vec(&Reply::<()>::Error(error.clone())).unwrap();
        assert!(matches!(refusal(&body), ChartFetchError::Refused(e) if e == error));
        assert!(matches!(refusal(b"\x1f\x8b"), ChartFetchError::Corrupt(_)));
        assert!(matches!(
            refusal(br#"{"ok":null}"#),
            ChartFetchError::Corrupt(_)
        ));
    }
}
