//! The health-prober: measures one edge cluster, reports heartbeats, and runs the site's
//! link to the hub ([`link`]: commands in, status out).
//!
//! A heartbeat is one put of the cluster's own entry in the hub's `heartbeats` bucket, sent
//! only while the link is up: only the newest matters, and while the link is down the hub
//! shows the cluster as unreachable from the age of the last heartbeat it has.
//!
//! The prober is the site's one voice to the hub (registration, heartbeats, the link), so
//! there is one per cluster; executors, which scale out, only talk to their site's server.

pub mod link;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use optikon_core::message::{
    ApiVersion, ClusterRecord, ClusterRegistration, Heartbeat, Reply, Timestamp, decode,
};
use optikon_core::subject;
use optikon_runtime::shutdown::Shutdown;
use optikon_runtime::{topology, trace};
use tokio::sync::Notify;

#[derive(Debug, Clone)]
pub struct ProberConfig {
    pub cluster: String,
    pub labels: BTreeMap<String, String>,
    pub interval: Duration,
    /// How often the site announces itself to the hub again, repairing a lost registration.
    pub reregister_every: Duration,
}

/// One measurement of the cluster. Problems are reported in `error`, never hidden.
pub async fn probe(client: &kube::Client, config: &ProberConfig) -> Heartbeat {
    let mut heartbeat = Heartbeat {
        api_version: ApiVersion,
        cluster: config.cluster.clone(),
        labels: config.labels.clone(),
        api_ready: false,
        nodes_ready: 0,
        nodes_total: 0,
        pods_total: 0,
        pods_by_phase: BTreeMap::new(),
        kubernetes_version: None,
        error: None,
        interval_seconds: config.interval.as_secs().max(1) as u32,
        at: Timestamp::now(),
    };
    let mut errors = Vec::new();
    let readyz = http::Request::get("/readyz").body(Vec::new());
    match readyz {
        Ok(request) => match client.request_text(request).await {
            Ok(body) => heartbeat.api_ready = body.trim() == "ok",
            Err(e) => errors.push(format!("readyz: {e}")),
        },
        Err(e) => errors.push(format!("readyz request: {e}")),
    }
    match client.apiserver_version().await {
        Ok(info) => heartbeat.kubernetes_version = Some(info.git_version),
        Err(e) => errors.push(format!("version: {e}")),
    }
    match Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(nodes) => {
            heartbeat.nodes_total = nodes.items.len() as u32;
            heartbeat.nodes_ready = nodes.items.iter().filter(|n| node_ready(n)).count() as u32;
        }
        Err(e) => errors.push(format!("nodes: {e}")),
    }
    match Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(pods) => {
            heartbeat.pods_total = pods.items.len() as u32;
            for pod in &pods.items {
                let phase = pod
                    .status
                    .as_ref()
                    .and_then(|s| s.phase.clone())
                    .unwrap_or_else(|| "Unknown".into());
                *heartbeat.pods_by_phase.entry(phase).or_default() += 1;
            }
        }
        Err(e) => errors.push(format!("pods: {e}")),
    }
    if !errors.is_empty() {
        heartbeat.error = Some(errors.join("; "));
    }
    heartbeat
}

fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|conditions| {
            conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
        })
}

/// Probes every `interval` and publishes heartbeats until shutdown; registers the site with
/// the hub whenever the hub is reachable and the last registration is old; runs the link.
pub async fn run(
    nats: async_nats::Client,
    kube: kube::Client,
    config: ProberConfig,
    shutdown: Shutdown,
) -> Result<(), topology::TopologyError> {
    let js = async_nats::jetstream::new(nats.clone());
    topology::ensure_edge(&js, &config.cluster).await?;
    let link_returned = Arc::new(Notify::new());
    let link = spawn_link(
        nats.clone(),
        config.cluster.clone(),
        shutdown.clone(),
        link_returned.clone(),
    );
    let mut registered_at: Option<tokio::time::Instant> = None;
    // Just started, or the link came back, and the hub has not heard so yet: the site may
    // have been away. Kept until a registration saying so succeeds.
    let mut returning = true;
    let mut ticker = tokio::time::interval(config.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let returned = tokio::select! {
            _ = ticker.tick() => false,
            // Registering again at once lets the hub catch the site up (see the router's
            // registry) without waiting for the next periodic registration.
            _ = link_returned.notified() => true,
            _ = shutdown.wait() => break,
        };
        returning |= returned;
        if returning || registered_at.is_none_or(|t| t.elapsed() > config.reregister_every) {
            match register(&nats, &config, returning).await {
                Ok(record) => {
                    tracing::info!(cluster = %record.name, "registered with the hub");
                    registered_at = Some(tokio::time::Instant::now());
                    returning = false;
                }
                Err(error) => tracing::warn!(%error, "hub registration pending"),
            }
        }
        let heartbeat = probe(&kube, &config).await;
        if let Some(error) = &heartbeat.error {
            tracing::warn!(%error, "cluster probe found problems");
        }
        if let Err(error) = publish_heartbeat(&nats, &heartbeat).await {
            tracing::warn!(%error, "heartbeat not sent");
        }
    }
    for task in link {
        let _ = task.await;
    }
    Ok(())
}

/// Starts the site's downlink and uplink for `cluster` (see [`link`]); both run until
/// shutdown, the uplink restarting after a failure of the site's own server.
/// `link_returned` is told whenever the hub answers again after it did not.
pub fn spawn_link(
    nats: async_nats::Client,
    cluster: String,
    shutdown: Shutdown,
    link_returned: Arc<Notify>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let down = tokio::spawn(link::downlink(
        nats.clone(),
        cluster.clone(),
        shutdown.clone(),
        link_returned,
    ));
    let up = tokio::spawn(async move {
        while !shutdown.is_triggered() {
            if let Err(error) = link::uplink(nats.clone(), cluster.clone(), shutdown.clone()).await
            {
                tracing::warn!(%error, "uplink stopped; restarting");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    _ = shutdown.wait() => {}
                }
            }
        }
    });
    vec![down, up]
}

/// Puts the heartbeat into the cluster's entry of the hub's `heartbeats` bucket. No
/// acknowledgement is asked for: a heartbeat lost on the way is replaced by the next.
pub async fn publish_heartbeat(
    nats: &async_nats::Client,
    heartbeat: &Heartbeat,
) -> Result<(), String> {
    let body = serde_json::to_vec(heartbeat).expect("heartbeat serializes");
    nats.publish_with_headers(
        subject::heartbeat_put(&heartbeat.cluster),
        trace::headers(None),
        body.into(),
    )
    .await
    .map_err(|e| e.to_string())
}

/// Registers the site with the hub. `returning`: it may have been away (just started, or
/// its link just came back), so the hub checks whether commands for it were dropped.
pub async fn register(
    nats: &async_nats::Client,
    config: &ProberConfig,
    returning: bool,
) -> Result<ClusterRecord, String> {
    let registration = ClusterRegistration {
        api_version: ApiVersion,
        name: config.cluster.clone(),
        domain: config.cluster.clone(),
        labels: config.labels.clone(),
    };
    let body = serde_json::to_vec(&registration).expect("registration serializes");
    let mut headers = async_nats::HeaderMap::new();
    if returning {
        headers.insert(subject::HEADER_RETURNING, "true");
    }
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        nats.request_with_headers(
            subject::cluster_register(&config.cluster),
            headers,
            body.into(),
        ),
    )
    .await
    .map_err(|_| "hub did not answer".to_owned())?
    .map_err(|e| e.to_string())?;
    decode::<Reply<ClusterRecord>>("registration reply", &reply.payload)
        .map_err(|e| e.to_string())?
        .into_result()
        .map_err(|e| e.to_string())
}
