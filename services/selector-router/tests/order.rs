//! Request order on a real hub nats-server: requests for different releases are handled at
//! once, requests for one release in the order they were published, and a request that
//! meets a later one's desired state (another replica, a redelivery) never replaces it.

use std::time::Duration;

use anyhow::{Context, ensure};
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use optikon_core::message::{
    ApiVersion, ClusterProgress, ClusterRecord, DesiredRelease, ReleaseState, RequestStatus,
    Timestamp,
};
use optikon_core::subject;
use optikon_runtime::shutdown::Shutdown;
use optikon_testbed::{HubRole, Testbed, TestbedConfig};
use selector_router::{Hub, RouterConfig};

const CLUSTER: &str = "order-1";

fn hub_only() -> Testbed {
    Testbed::start(TestbedConfig {
        sites: Vec::new(),
        clusters: false,
        services: false,
        ..TestbedConfig::default()
    })
    .expect("hub nats-server starts (run scripts/install-tools if nats-server is missing)")
}

/// The hub set up by the router's role, one registered cluster, and the admin's JetStream.
async fn set_up(testbed: &Testbed) -> anyhow::Result<(async_nats::Client, jetstream::Context)> {
    let router = optikon_runtime::connect_url(&testbed.role_url(HubRole::Router), "order").await?;
    optikon_runtime::topology::ensure_hub(&optikon_runtime::jetstream(router.clone())).await?;
    let admin = optikon_runtime::connect_url(&testbed.admin_url(), "order").await?;
    let js = optikon_runtime::jetstream(admin);
    let record = ClusterRecord {
        api_version: ApiVersion,
        name: CLUSTER.into(),
        domain: CLUSTER.into(),
        labels: [("order".to_owned(), "yes".to_owned())].into(),
        registered_at: Timestamp::now(),
        last_heartbeat: None,
    };
    js.get_key_value(subject::CLUSTERS_BUCKET)
        .await?
        .put(CLUSTER, serde_json::to_vec(&record)?.into())
        .await?;
    Ok((router, js))
}

fn uninstall(id: &str, release: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "apiVersion": "optikon/v1", "id": id, "action": "uninstall",
        "release": release, "namespace": "default", "selector": "order=yes"
    }))
    .expect("request serializes")
}

async fn publish(js: &jetstream::Context, id: &str, release: &str) -> anyhow::Result<u64> {
    Ok(js
        .publish(subject::RELEASE_REQUEST, uninstall(id, release).into())
        .await?
        .await?
        .sequence)
}

async fn desired(js: &jetstream::Context, release: &str) -> anyhow::Result<Option<DesiredRelease>> {
    let key = subject::release_key(CLUSTER, "default", release);
    let entry = js
        .get_key_value(subject::DESIRED_BUCKET)
        .await?
        .get(&key)
        .await?;
    Ok(entry.map(|v| serde_json::from_slice(&v)).transpose()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_release_in_order_many_at_once() -> anyhow::Result<()> {
    let testbed = hub_only();
    let (router, js) = set_up(&testbed).await?;
    let releases = ["web", "api", "db", "cache"];
    let rounds = 10;
    for n in 0..rounds {
        for &release in &releases {
            publish(&js, &format!("{release}-{n}"), release).await?;
        }
    }
    let shutdown = Shutdown::new();
    // The router runs beside the checks, in this task (its future is not Send).
    let routing = selector_router::run(router, RouterConfig { request_lanes: 8 }, shutdown.clone());
    let checks = check_order(&js, &releases, rounds);
    tokio::select! {
        outcome = routing => anyhow::bail!("the router stopped: {outcome:?}"),
        outcome = checks => outcome,
    }
}

async fn check_order(
    js: &jetstream::Context,
    releases: &[&str],
    rounds: u64,
) -> anyhow::Result<()> {
    let releases = releases.to_vec();
    for &release in &releases {
        let last = format!("{release}-{}", rounds - 1);
        eventually(&format!("{release}'s last request applied"), || async {
            Ok(desired(js, release)
                .await?
                .filter(|d| d.request_id == last)
                .map(|_| ()))
        })
        .await?;
        let d = desired(js, release).await?.context("desired state")?;
        ensure!(
            d.generation == rounds,
            "{release}: generation {} after {rounds} requests",
            d.generation
        );
    }
    // The commands for each release went out in publication order.
    let stream = js.get_stream(subject::CMD_STREAM).await?;
    let mut messages = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject::cluster_commands(CLUSTER),
            ..Default::default()
        })
        .await?
        .messages()
        .await?;
    let mut seen: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let total = releases.len() * rounds as usize;
    for _ in 0..total {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .context("every command stored")?
            .context("command stream")??;
        let command: DesiredRelease = serde_json::from_slice(&message.payload)?;
        seen.entry(command.release)
            .or_default()
            .push(command.request_id);
    }
    for &release in &releases {
        let expected: Vec<String> = (0..rounds).map(|n| format!("{release}-{n}")).collect();
        ensure!(
            seen.get(release) == Some(&expected),
            "{release}: commands {:?}",
            seen.get(release)
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_request_never_replaces_a_newer_one() -> anyhow::Result<()> {
    let testbed = hub_only();
    let (router, js) = set_up(&testbed).await?;
    let older = publish(&js, "older", "web").await?;
    let newer = publish(&js, "newer", "web").await?;
    ensure!(older < newer);
    // Hand the router the two the wrong way round, as two replicas or a redelivery could.
    let mut requests = js
        .get_stream(subject::RELEASE_REQUESTS_STREAM)
        .await?
        .create_consumer(consumer::pull::Config {
            durable_name: Some("order-test".into()),
            ack_policy: consumer::AckPolicy::None,
            ..Default::default()
        })
        .await?
        .fetch()
        .max_messages(2)
        .messages()
        .await?;
    let first = requests
        .next()
        .await
        .context("older request")?
        .map_err(|e| anyhow::anyhow!(e))?;
    let second = requests
        .next()
        .await
        .context("newer request")?
        .map_err(|e| anyhow::anyhow!(e))?;
    let hub = Hub::open(optikon_runtime::jetstream(router)).await?;
    selector_router::request::handle(&hub, &second)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    selector_router::request::handle(&hub, &first)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;

    let d = desired(&js, "web").await?.context("desired state")?;
    ensure!(
        (d.request_id.as_str(), d.generation, d.request_sequence) == ("newer", 1, Some(newer)),
        "the older request replaced the newer: {d:?}"
    );
    let entry = js
        .get_key_value(subject::REQUEST_CLUSTERS_BUCKET)
        .await?
        .get(subject::request_cluster_key("older", CLUSTER))
        .await?
        .context("the older request's entry")?;
    let progress: ClusterProgress = serde_json::from_slice(&entry)?;
    ensure!(progress.state == ReleaseState::Superseded, "{progress:?}");
    ensure!(
        progress
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("newer")),
        "{progress:?}"
    );
    // The older request is complete (nothing will ever report for it) and sent nothing.
    let summary = js
        .get_key_value(subject::REQUESTS_BUCKET)
        .await?
        .get("older")
        .await?
        .context("the older request's summary")?;
    let summary: RequestStatus = serde_json::from_slice(&summary)?;
    ensure!(summary.is_complete(), "{:?}", summary.progress);
    let commands = js
        .get_stream(subject::CMD_STREAM)
        .await?
        .info()
        .await?
        .state
        .messages;
    ensure!(
        commands == 1,
        "{commands} commands stored; only the newer request's is due"
    );
    // Handled again (a redelivery), the older request still changes nothing.
    selector_router::request::handle(&hub, &first)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let again = desired(&js, "web").await?.context("desired state")?;
    ensure!(again == d, "a repeat changed desired state: {again:?}");
    Ok(())
}

/// Polls `check` for up to 30 s.
async fn eventually<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<()>>>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if check().await?.is_some() {
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
