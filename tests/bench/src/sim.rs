//! Simulated edge agents for the control-plane scale benchmark (`optikon-sim-edges`).
//!
//! One process serves many clusters behind one leaf node and does, per cluster, what the
//! health-prober and the per-cluster-executor do on the wire, with no Kubernetes behind it:
//! it sets up the cluster's edge streams (`CMD_LOCAL_<cluster>`, `STATUS_<cluster>`) with
//! the services' own topology code, registers with the hub, runs the prober's own site
//! link (`health_prober::link`: the downlink pulling the cluster's commands from its
//! consumer at the hub, the uplink forwarding its outbox), puts a heartbeat into the hub's
//! `heartbeats` bucket every interval, and answers each command from `CMD_LOCAL_<cluster>`
//! with a final status (`deployed`, or `uninstalled`) in the cluster's outbox before
//! acknowledging it. Everything travels over the real leaf link; the hub cannot tell these
//! clusters from real ones, which is the point: the hub's cost is what is measured.
//!
//! At the edge, commands reach the process through one durable push consumer per cluster
//! on `CMD_LOCAL_<cluster>` delivering on `sim.deliver.<cluster>`, each with its own
//! subscription: the executor's pull consumer per cluster is the same JetStream state at
//! the edge, without thousands more outstanding pull requests in one process. (With one
//! wildcard subscription for all of them instead, nats-server 2.14.9 reported the push
//! consumers as having no interest and delivered nothing.)

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use async_nats::jetstream::{self, consumer};
use futures::{StreamExt, TryStreamExt};
use optikon_core::message::{
    Action, ApiVersion, ClusterRecord, ClusterRegistration, DesiredRelease, Heartbeat,
    ReleaseState, ReleaseStatus, Reply, Timestamp, decode,
};
use optikon_core::subject;
use optikon_runtime::topology;

/// Label every simulated cluster carries, so one selector matches the whole fleet.
pub const FLEET_LABEL: (&str, &str) = ("fleet", "sim");
const DELIVER_PREFIX: &str = "sim.deliver";
const CONSUMER: &str = "sim-agent";
/// Set-up and registration requests in flight at once.
const SETUP_CONCURRENCY: usize = 32;

/// Name of the `index`-th simulated cluster.
pub fn cluster_name(index: usize) -> String {
    format!("sim-{index:05}")
}

/// Labels of the `index`-th simulated cluster: the fleet, its own name, and a region and
/// ring spread evenly, so selectors of different reach can be tried.
pub fn cluster_labels(index: usize) -> BTreeMap<String, String> {
    let regions = ["eu", "us", "ap"];
    BTreeMap::from([
        (FLEET_LABEL.0.to_owned(), FLEET_LABEL.1.to_owned()),
        ("cluster".to_owned(), cluster_name(index)),
        (
            "region".to_owned(),
            regions[index % regions.len()].to_owned(),
        ),
        ("ring".to_owned(), (index % 10).to_string()),
    ])
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The leaf node's NATS URL (its local user).
    pub nats_url: String,
    /// The leaf node's JetStream domain.
    pub domain: String,
    /// Indexes of the clusters this process serves.
    pub clusters: std::ops::Range<usize>,
    pub heartbeat: Duration,
}

/// Sets up and registers every cluster, prints `ready <n>`, then heartbeats and answers
/// commands until the process is stopped.
pub async fn run(config: SimConfig) -> anyhow::Result<()> {
    // The leaf node's user at the hub lets replies cross under the site's inbox prefix only.
    let client = optikon_runtime::connect_url_with(
        &config.nats_url,
        "optikon-sim-edges",
        Some(&subject::edge_inbox_prefix(&config.domain)),
    )
    .await?;
    // As patient as the prober and executor: a leaf node carrying thousands of simulated
    // clusters acknowledges later than a site's own leaf.
    let js = optikon_runtime::jetstream(client.clone());
    let names: Vec<(usize, String)> = config
        .clusters
        .clone()
        .map(|i| (i, cluster_name(i)))
        .collect();

    // Subscribe before any consumer exists, so no delivery is missed.
    let mut deliveries = Vec::new();
    for (_, name) in &names {
        deliveries.push(client.subscribe(deliver_subject(name)).await?);
    }
    let revisions: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let answering = tokio::spawn(answer_commands(
        client.clone(),
        js.clone(),
        futures::stream::select_all(deliveries),
        revisions,
    ));

    futures::stream::iter(names.iter().map(|(_, name)| set_up(&js, name)))
        .buffer_unordered(SETUP_CONCURRENCY)
        .try_collect::<()>()
        .await?;
    eprintln!("{}: {} clusters set up", config.domain, names.len());
    futures::stream::iter(
        names
            .iter()
            .map(|(i, name)| register(&client, &config.domain, name, cluster_labels(*i))),
    )
    .buffer_unordered(SETUP_CONCURRENCY)
    .try_collect::<()>()
    .await?;
    // Each cluster's link, as its prober runs it; never stopped (the process is killed).
    let shutdown = optikon_runtime::shutdown::Shutdown::new();
    let links: Vec<_> = names
        .iter()
        .flat_map(|(_, name)| {
            health_prober::spawn_link(
                client.clone(),
                name.clone(),
                shutdown.clone(),
                Default::default(),
            )
        })
        .collect();
    println!("ready {}", names.len());

    let heartbeats = tokio::spawn(heartbeat(client.clone(), names, config.heartbeat));
    let _links = links;
    tokio::select! {
        r = answering => r?,
        r = heartbeats => r?,
    }
}

fn deliver_subject(cluster: &str) -> String {
    format!("{DELIVER_PREFIX}.{}", subject::token(cluster))
}

/// The cluster's edge streams (the services' own topology code) and its command consumer.
async fn set_up(js: &jetstream::Context, cluster: &str) -> anyhow::Result<()> {
    topology::ensure_edge(js, cluster).await?;
    js.get_stream(subject::cmd_local_stream(cluster))
        .await?
        .get_or_create_consumer(
            CONSUMER,
            consumer::push::Config {
                durable_name: Some(CONSUMER.into()),
                deliver_subject: deliver_subject(cluster),
                ack_policy: consumer::AckPolicy::Explicit,
                ack_wait: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .await
        .with_context(|| format!("command consumer of {cluster}"))?;
    Ok(())
}

/// Registers like the health-prober does, retrying while the hub is busy with others.
async fn register(
    client: &async_nats::Client,
    domain: &str,
    cluster: &str,
    labels: BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let registration = ClusterRegistration {
        api_version: ApiVersion,
        name: cluster.to_owned(),
        domain: domain.to_owned(),
        labels,
    };
    let body = serde_json::to_vec(&registration)?;
    let mut last_error = String::new();
    for _ in 0..10 {
        let reply = tokio::time::timeout(
            Duration::from_secs(30),
            client.request(subject::cluster_register(cluster), body.clone().into()),
        )
        .await;
        match reply {
            Ok(Ok(reply)) => {
                decode::<Reply<ClusterRecord>>("registration reply", &reply.payload)?
                    .into_result()
                    .map_err(|e| anyhow::anyhow!("hub refused {cluster}: {e}"))?;
                return Ok(());
            }
            Ok(Err(e)) => last_error = e.to_string(),
            Err(_) => last_error = "no answer within 30 s".into(),
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    anyhow::bail!("registering {cluster}: {last_error}")
}

/// Every cluster's heartbeat once per interval, spread evenly over it; the first round goes
/// out at once, as every prober starting together would.
async fn heartbeat(
    client: async_nats::Client,
    clusters: Vec<(usize, String)>,
    interval: Duration,
) -> anyhow::Result<()> {
    let gap = interval / clusters.len().max(1) as u32;
    let mut ticker = tokio::time::interval(gap);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for (round, (index, name)) in clusters.iter().cycle().enumerate() {
        if round >= clusters.len() {
            ticker.tick().await;
        }
        let heartbeat = Heartbeat {
            api_version: ApiVersion,
            cluster: name.clone(),
            labels: cluster_labels(*index),
            api_ready: true,
            nodes_ready: 1,
            nodes_total: 1,
            pods_total: 12,
            pods_by_phase: BTreeMap::from([("Running".to_owned(), 12)]),
            kubernetes_version: Some("v1.34.4-sim".into()),
            error: None,
            interval_seconds: interval.as_secs().max(1) as u32,
            at: Timestamp::now(),
        };
        // What the prober does: one unacknowledged put of the cluster's own entry.
        if let Err(error) = health_prober::publish_heartbeat(&client, &heartbeat).await {
            eprintln!("heartbeat of a simulated cluster not sent: {error}");
        }
    }
    unreachable!("the cluster list cycles forever")
}

/// Answers each delivered command with its final status, then acknowledges it.
async fn answer_commands(
    client: async_nats::Client,
    js: jetstream::Context,
    mut deliveries: futures::stream::SelectAll<async_nats::Subscriber>,
    revisions: Arc<Mutex<HashMap<String, u32>>>,
) -> anyhow::Result<()> {
    while let Some(message) = deliveries.next().await {
        let (client, js, revisions) = (client.clone(), js.clone(), revisions.clone());
        tokio::spawn(async move {
            if let Err(error) = answer(&client, &js, &message, &revisions).await {
                // Unacknowledged, the command comes again after the ack wait.
                eprintln!("command on {} not answered: {error:#}", message.subject);
            }
        });
    }
    anyhow::bail!("the delivery subscription ended")
}

async fn answer(
    client: &async_nats::Client,
    js: &jetstream::Context,
    message: &async_nats::Message,
    revisions: &Mutex<HashMap<String, u32>>,
) -> anyhow::Result<()> {
    let Some(ack_subject) = message.reply.clone() else {
        anyhow::bail!("a delivery without an ack subject");
    };
    let desired: DesiredRelease = decode("command", &message.payload)?;
    let (state, revision) = if desired.action == Action::Uninstall {
        (ReleaseState::Uninstalled, None)
    } else {
        let key = subject::release_key(&desired.cluster, &desired.namespace, &desired.release);
        let mut revisions = revisions.lock().expect("revisions lock");
        let revision = revisions.entry(key).or_default();
        *revision += 1;
        (ReleaseState::Deployed, Some(*revision))
    };
    let status = ReleaseStatus {
        api_version: ApiVersion,
        cluster: desired.cluster.clone(),
        namespace: desired.namespace.clone(),
        release: desired.release.clone(),
        generation: desired.generation,
        request_id: desired.request_id.clone(),
        action: desired.action,
        state,
        revision,
        chart: None,
        reason: None,
        first_deployed: None,
        at: Timestamp::now(),
    };
    // Into the cluster's outbox, as the executor does; the uplink forwards it.
    js.publish(
        subject::outbox_status(&desired.cluster, &desired.namespace, &desired.release),
        serde_json::to_vec(&status)?.into(),
    )
    .await?
    .await?;
    client.publish(ack_subject, "+ACK".into()).await?;
    Ok(())
}
