//! Chart fetches against a real hub nats-server: a cluster gets the charts its desired state
//! names, in chunks when large, and nothing else.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream;
use chart_ingest::ChartIngest;
use futures::StreamExt;
use optikon_core::chart::ChartLimits;
use optikon_core::message::{
    Action, ApiVersion, ChartPin, DesiredRelease, ErrorCode, Reply, Timestamp,
};
use optikon_core::subject;
use optikon_runtime::chart_fetch::{self, CHUNK_BYTES, ChartFetchError, HEADER_CHUNK};
use optikon_runtime::shutdown::Shutdown;
use optikon_testbed::{HubRole, Site, Testbed, TestbedConfig};

const TIMEOUT: Duration = Duration::from_secs(10);

/// A chart archive named `name`; `blob` bytes of noise in a file make it as large as wanted.
fn chart(name: &str, blob: usize) -> Vec<u8> {
    let files: Vec<(String, Vec<u8>)> = vec![
        (
            "Chart.yaml".into(),
            format!("apiVersion: v2\nname: {name}\nversion: 1.0.0\n").into_bytes(),
        ),
        ("values.yaml".into(), b"message: hello\n".to_vec()),
        (
            "templates/configmap.yaml".into(),
            b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}\n".to_vec(),
        ),
        ("files/noise.bin".into(), noise(blob)),
    ];
    let mut tar = tar::Builder::new(Vec::new());
    for (path, data) in &files {
        let mut header = tar::Header::new_ustar();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(1_700_000_000);
        tar.append_data(&mut header, format!("{name}/{path}"), data.as_slice())
            .expect("tar entry");
    }
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar.into_inner().expect("tar")).expect("gzip");
    gz.finish().expect("gzip")
}

/// Bytes gzip cannot shrink (xorshift), so the archive is as large as the file.
fn noise(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

struct Hub {
    client: async_nats::Client,
    desired: jetstream::kv::Store,
    ingest: Arc<ChartIngest>,
    shutdown: Shutdown,
    service: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start_hub(testbed: &Testbed) -> anyhow::Result<Hub> {
    // The router sets up the hub; chart-ingest runs as its own role.
    let router =
        optikon_runtime::connect_url(&testbed.role_url(HubRole::Router), "fetch-test").await?;
    optikon_runtime::topology::ensure_hub(&jetstream::new(router)).await?;
    let client =
        optikon_runtime::connect_url(&testbed.role_url(HubRole::ChartIngest), "fetch-test").await?;
    let js = jetstream::new(client.clone());
    let ingest = Arc::new(ChartIngest::new(js.clone(), ChartLimits::default()).await?);
    // Desired state is the router's to write: the test writes it as the test bed's admin.
    let admin = optikon_runtime::connect_url(&testbed.admin_url(), "fetch-test").await?;
    let desired = jetstream::new(admin.clone())
        .get_key_value(subject::DESIRED_BUCKET)
        .await?;
    let shutdown = Shutdown::new();
    let service = tokio::spawn({
        let (ingest, client, shutdown) = (ingest.clone(), client.clone(), shutdown.clone());
        async move { ingest.run(&client, shutdown).await }
    });
    let client = admin;
    // The service subscribes in its own task; wait until it answers.
    let mut answered = false;
    for _ in 0..50 {
        let probe = client
            .request(subject::chart_fetch("probe"), "{}".into())
            .await;
        if probe.is_ok() {
            answered = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::ensure!(answered, "chart-ingest never answered a fetch");
    Ok(Hub {
        client,
        desired,
        ingest,
        shutdown,
        service,
    })
}

impl Hub {
    /// Stores `archive` and makes it the desired chart of `release` on `cluster`.
    async fn desire(&self, cluster: &str, release: &str, archive: &[u8]) -> anyhow::Result<String> {
        let entry = self
            .ingest
            .ingest(archive, false)
            .await
            .map_err(|e| anyhow::anyhow!("push: {e}"))?;
        self.pin(cluster, release, entry.pin()).await?;
        Ok(entry.digest)
    }

    async fn pin(&self, cluster: &str, release: &str, pin: ChartPin) -> anyhow::Result<()> {
        let desired = DesiredRelease {
            api_version: ApiVersion,
            cluster: cluster.into(),
            namespace: "default".into(),
            release: release.into(),
            generation: 1,
            request_id: "r-1".into(),
            action: Action::Install,
            chart: Some(pin),
            values: serde_json::json!({}),
            helm_values: Default::default(),
            rollback_to: None,
            atomic: false,
            requested_at: Timestamp::now(),
            request_sequence: None,
        };
        self.desired
            .put(
                subject::release_key(cluster, "default", release),
                serde_json::to_vec(&desired)?.into(),
            )
            .await?;
        Ok(())
    }

    async fn fetch(&self, cluster: &str, digest: &str) -> Result<Vec<u8>, ChartFetchError> {
        chart_fetch::fetch_chart(&self.client, cluster, digest, TIMEOUT).await
    }

    /// Every message of the reply to a raw `body` on `cluster`'s fetch subject, as
    /// (chunk header, payload); ends once a refusal or the last chunk arrived.
    async fn raw_fetch(
        &self,
        cluster: &str,
        body: &[u8],
    ) -> anyhow::Result<Vec<(Option<String>, bytes::Bytes)>> {
        let inbox = self.client.new_inbox();
        let mut replies = self.client.subscribe(inbox.clone()).await?;
        self.client
            .publish_with_reply(subject::chart_fetch(cluster), inbox, body.to_vec().into())
            .await?;
        let mut out = Vec::new();
        loop {
            let message = tokio::time::timeout(TIMEOUT, replies.next())
                .await
                .context("reply in time")?
                .context("subscription open")?;
            let header = message
                .headers
                .as_ref()
                .and_then(|h| h.get(HEADER_CHUNK))
                .map(|v| v.as_str().to_owned());
            let last = match &header {
                None => true,
                Some(h) => {
                    let chunk = chart_fetch::parse_chunk_header(h).map_err(anyhow::Error::msg)?;
                    chunk.index + 1 == chunk.count
                }
            };
            out.push((header, message.payload));
            if last {
                return Ok(out);
            }
        }
    }
}

fn refused(result: Result<Vec<u8>, ChartFetchError>) -> optikon_core::message::ApiError {
    match result {
        Err(ChartFetchError::Refused(error)) => error,
        other => panic!("expected a refusal, got {:?}", other.map(|b| b.len())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_fetches_only_the_charts_its_desired_state_names() -> anyhow::Result<()> {
    let testbed = Testbed::start(TestbedConfig {
        sites: Vec::new(),
        clusters: false,
        services: false,
        ..TestbedConfig::default()
    })
    .expect("hub starts (run scripts/install-tools if nats-server is missing)");
    let mut hub = start_hub(&testbed).await?;

    let small = chart("small", 1000);
    let digest = hub.desire("cluster-a", "web", &small).await?;
    assert_eq!(hub.fetch("cluster-a", &digest).await?, small);

    // Another cluster, same digest: refused, naming the cluster and the digest.
    let error = refused(hub.fetch("cluster-b", &digest).await);
    assert_eq!(error.code, ErrorCode::ChartNotFound);
    assert!(
        error.message.contains("cluster-b") && error.message.contains(&digest),
        "{error}"
    );

    // Larger than a NATS message: arrives in several chunks, and whole.
    let large = chart("large", 3 * CHUNK_BYTES / 2 + CHUNK_BYTES);
    assert!(large.len() > 1024 * 1024, "{} bytes", large.len());
    let large_digest = hub.desire("cluster-a", "big", &large).await?;
    assert_eq!(hub.fetch("cluster-a", &large_digest).await?, large);
    let body = format!(r#"{{"apiVersion":"optikon/v1","digest":"{large_digest}"}}"#);
    let chunks = hub.raw_fetch("cluster-a", body.as_bytes()).await?;
    let count = large.len().div_ceil(CHUNK_BYTES);
    assert!(count >= 3);
    let headers: Vec<String> = chunks.iter().filter_map(|(h, _)| h.clone()).collect();
    let expected: Vec<String> = (0..count).map(|i| format!("{i}/{count}")).collect();
    assert_eq!(headers, expected);
    assert!(chunks.iter().all(|(_, p)| p.len() <= CHUNK_BYTES));

    // Malformed bodies are refused as such, in one message without a chunk header.
    for body in [
        &b"{not json"[..],
        br#"{"apiVersion":"optikon/v1","digest":"x","cluster":"cluster-b"}"#,
    ] {
        let reply = hub.raw_fetch("cluster-a", body).await?;
        assert_eq!(reply.len(), 1);
        assert_eq!(reply[0].0, None);
        let error = serde_json::from_slice::<Reply<()>>(&reply[0].1)?
            .into_result()
            .unwrap_err();
        assert_eq!(error.code, ErrorCode::MalformedMessage, "{error}");
    }

    // Named by the desired state, but not (any more) in the charts store.
    let missing = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    hub.pin(
        "cluster-a",
        "gone",
        ChartPin {
            name: "gone".into(),
            version: "1.0.0".into(),
            digest: missing.into(),
            size: 1,
        },
    )
    .await?;
    let error = refused(hub.fetch("cluster-a", missing).await);
    assert_eq!(error.code, ErrorCode::ChartNotFound);
    assert!(error.message.contains(subject::CHARTS_BUCKET), "{error}");

    // Only the newest desired value counts: once the release moves on, the old chart is
    // no longer the cluster's to fetch.
    let newer = chart("small-v2", 2000);
    hub.desire("cluster-a", "web", &newer).await?;
    let error = refused(hub.fetch("cluster-a", &digest).await);
    assert!(error.message.contains("cluster-a"), "{error}");

    // Nobody answering is "unreachable", not a refusal.
    hub.shutdown.trigger();
    (&mut hub.service).await??;
    assert!(matches!(
        hub.fetch("cluster-a", &large_digest).await,
        Err(ChartFetchError::Unreachable(_))
    ));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_fetches_its_own_chart_over_its_leaf_link_and_only_its_own() -> anyhow::Result<()> {
    let testbed = Testbed::start(TestbedConfig {
        sites: Site::demo().into_iter().take(2).collect(),
        clusters: false,
        services: false,
        ..TestbedConfig::default()
    })
    .expect("hub and edges start (run scripts/install-tools if nats-server is missing)");
    let hub = start_hub(&testbed).await?;
    let (mine, theirs) = ("copenhagen-1", "copenhagen-2");
    let edge = optikon_runtime::connect_url_with(
        &testbed.edge(mine)?.nats_url(),
        "fetch-test",
        Some(&subject::edge_inbox_prefix(mine)),
    )
    .await?;

    let large = chart("edge-large", 2 * CHUNK_BYTES + 1000);
    let digest = hub.desire(mine, "web", &large).await?;
    hub.desire(theirs, "web", &chart("theirs", 10)).await?;
    assert_eq!(
        chart_fetch::fetch_chart(&edge, mine, &digest, TIMEOUT).await?,
        large
    );

    // Speaking for another cluster: the leaf link does not carry the request, so nobody
    // answers, whatever that cluster's desired state says.
    let theirs_digest = hub.desire(theirs, "web", &large).await?;
    assert_eq!(theirs_digest, digest);
    let result = chart_fetch::fetch_chart(&edge, theirs, &digest, Duration::from_secs(2)).await;
    assert!(
        matches!(result, Err(ChartFetchError::Unreachable(_))),
        "{:?}",
        result.map(|b| b.len())
    );
    Ok(())
}
