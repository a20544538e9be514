//! Part 4: the control plane at 100, 1,000 and 10,000 clusters.
//!
//! Per size, a fresh hub (nats-server, selector-router, chart-ingest, gateway) and a few
//! leaf nats-servers behind cuttable relays, as in the test bed, with simulated edge agents
//! (`optikon-sim-edges`, see [`crate::sim`]) serving the clusters behind each leaf: real
//! per-cluster edge streams, registrations, heartbeats and status over the real leaf links,
//! no Kubernetes behind them. Measured per size: the time from one request matching every
//! cluster to the hub's record showing all of them acknowledged, router throughput on
//! single-cluster requests, the hub's memory and the CPU of the heartbeat load.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use async_nats::jetstream;
use futures::StreamExt;
use optikon_client::Client;
use optikon_core::message::{Action, ChartRef, ClusterProgress, ReleaseRequest, ReleaseState};
use optikon_core::subject;
use optikon_testbed::{Site, Testbed, TestbedConfig};
use tokio::io::AsyncBufReadExt;

use crate::bed::{CHART_NAME, CHART_VERSION, NAMESPACE, package_chart, push_chart};
use crate::cpu;
use crate::sim::{FLEET_LABEL, cluster_name};
use crate::stats::Summary;

/// What the part is set to do.
#[derive(Debug, Clone)]
pub struct ControlPlan {
    pub sizes: Vec<usize>,
    /// Leaf nodes the simulated clusters are spread over.
    pub leaves: usize,
    /// Timed fan-outs per size (after one untimed warm-up).
    pub reps: usize,
    /// Single-cluster requests sent at once for the router throughput.
    pub single_requests: usize,
    pub heartbeat_seconds: u64,
    /// Length of the idle window in which the heartbeat load is measured.
    pub idle_seconds: u64,
}

/// Everything measured at one size.
#[derive(Debug, Clone, Default)]
pub struct ScaleResult {
    pub clusters: usize,
    /// From starting the agents to every cluster registered and heartbeating at the hub.
    pub setup_seconds: f64,
    /// Per fan-out: request published → the hub's record shows every cluster acknowledged.
    pub fanout_all: Vec<f64>,
    /// Per cluster and fan-out (pooled): request published → that cluster acknowledged in
    /// the record, as a client watching it sees it.
    pub per_cluster: Vec<f64>,
    /// Median CPU seconds per fan-out, per process group.
    pub fanout_cpu: Vec<(String, f64)>,
    /// Single-cluster requests sent at once, and the seconds until all were acknowledged,
    /// with the router's default lanes.
    pub single: (usize, f64),
    /// The same with one lane (`--request-lanes 1`, one request at a time).
    pub single_one_lane: Option<f64>,
    /// Resident memory of the hub nats-server with the hub's streams set up and no cluster
    /// registered, and after the clusters registered and heartbeated for a while (MiB).
    pub hub_rss_base_mib: f64,
    pub hub_rss_mib: f64,
    pub router_rss_base_mib: f64,
    pub router_rss_mib: f64,
    /// Cores used while idle (only heartbeats and stream-source health checks), per group.
    pub idle_cores: Vec<(String, f64)>,
    pub heartbeats_per_second: f64,
    /// Seconds waited after the set-up for the hub to settle before the idle window.
    pub settle_seconds: f64,
    /// Idle cores of the hub nats-server over a second window with the hub's proximity-dns
    /// stopped, right after the first: what following the heartbeats costs the hub.
    pub idle_hub_without_dns: Option<f64>,
}

/// Runs every size, each on a fresh hub. Blocking: the test beds start and stop outside
/// `runtime`.
pub fn run(
    runtime: &tokio::runtime::Runtime,
    plan: &ControlPlan,
) -> anyhow::Result<Vec<ScaleResult>> {
    let agents = sim_binary()?;
    let mut results = Vec::new();
    for &clusters in &plan.sizes {
        eprintln!(
            "== part 4: {clusters} simulated clusters on {} leaf nodes",
            plan.leaves
        );
        let mut testbed = start_bed(plan.leaves)?;
        let result = runtime.block_on(measure(&mut testbed, &agents, clusters, plan));
        drop(testbed);
        let result = result.with_context(|| format!("control plane at {clusters} clusters"))?;
        eprintln!(
            "  {clusters}: all acknowledged in {:.2} s (median), hub {:.0} MiB",
            Summary::of(&result.fanout_all).map_or(f64::NAN, |s| s.median),
            result.hub_rss_mib
        );
        results.push(result);
    }
    Ok(results)
}

/// `optikon-sim-edges`, built beside this program.
pub(crate) fn sim_binary() -> anyhow::Result<PathBuf> {
    let path = std::env::current_exe()?
        .parent()
        .context("the benchmark's own directory")?
        .join("optikon-sim-edges");
    anyhow::ensure!(
        path.is_file(),
        "{} missing: build the optikon-bench package's binaries (scripts/bench does)",
        path.display()
    );
    Ok(path)
}

pub(crate) fn start_bed(leaves: usize) -> anyhow::Result<Testbed> {
    let dir = std::env::temp_dir().join(format!(
        "optikon-bench-control-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    ));
    Testbed::start(TestbedConfig {
        sites: (1..=leaves)
            .map(|i| Site::new(&format!("sim-leaf-{i}"), &[]))
            .collect(),
        clusters: false,
        services: true,
        dir: Some(dir),
        multi_cluster_sites: true,
        ..TestbedConfig::default()
    })
    .context("the control-plane test bed did not start")
}

/// The CPU probe's name for the hub's nats-server.
const HUB_PART: &str = "hub nats-server";

/// Waits until the hub's nats-server has finished what the set-up left it (at 10,000
/// clusters it still writes consumer state for tens of seconds after the last registration),
/// so the idle window sees only the steady load: until two 5 s windows in a row use about
/// the same CPU, at most a minute. Returns the seconds waited.
async fn settle(probe: &cpu::Probe) -> f64 {
    const WINDOW: Duration = Duration::from_secs(5);
    let started = Instant::now();
    let mut previous: Option<f64> = None;
    while started.elapsed() < Duration::from_secs(60) {
        let before = probe.snapshot();
        tokio::time::sleep(WINDOW).await;
        let usage = probe.usage(&before, &probe.snapshot());
        let hub = usage
            .parts
            .iter()
            .find(|(name, _)| name == HUB_PART)
            .map_or(0.0, |(_, seconds)| *seconds);
        if let Some(previous) = previous
            && (hub - previous).abs() <= 0.1 * previous + 0.02
        {
            break;
        }
        previous = Some(hub);
    }
    started.elapsed().as_secs_f64()
}

/// Resident memory of a process in MiB (`VmRSS`).
fn rss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))?
                .split_whitespace()
                .nth(1)?
                .parse::<f64>()
                .ok()
        })
        .map_or(f64::NAN, |kib| kib / 1024.0)
}

/// The hub's proximity-dns, in the CPU probes.
const DNS_PART: &str = "proximity-dns (hub)";

async fn measure(
    testbed: &mut Testbed,
    agents_binary: &PathBuf,
    clusters: usize,
    plan: &ControlPlan,
) -> anyhow::Result<ScaleResult> {
    let hub_pid = testbed.hub.pid();
    let router_pid = testbed
        .services
        .iter()
        .find(|s| s.spec.name == "selector-router")
        .context("no selector-router in the test bed")?
        .pid();
    let nats = optikon_runtime::connect_url(&testbed.hub_url(), "optikon-bench").await?;
    let client = Client::new(nats);
    let work = testbed.dir().join("bench");
    std::fs::create_dir_all(&work)?;
    let chart = package_chart(&testbed.tools().get("helm")?, &work).await?;
    push_chart(&client, &std::fs::read(&chart)?).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut result = ScaleResult {
        clusters,
        hub_rss_base_mib: rss_mib(hub_pid),
        router_rss_base_mib: rss_mib(router_pid),
        heartbeats_per_second: clusters as f64 / plan.heartbeat_seconds as f64,
        ..ScaleResult::default()
    };

    // The agents: one process per leaf node, an even share of the clusters each.
    let started = Instant::now();
    let mut agents = start_agents(testbed, agents_binary, clusters, plan.heartbeat_seconds).await?;
    wait_heartbeating(&client, clusters).await?;
    result.setup_seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "  {clusters} clusters registered and heartbeating in {:.0} s",
        result.setup_seconds
    );

    // The heartbeat load, idle: nothing is asked of the hub but to keep up.
    let mut probe = cpu::Probe::default();
    probe.add(HUB_PART, vec![hub_pid], false);
    probe.add("selector-router", vec![router_pid], false);
    probe.add(
        "leaf nats-servers",
        testbed.edges.iter().map(|e| e.leaf.pid()).collect(),
        false,
    );
    probe.add(
        "simulated agents",
        agents.iter().filter_map(|(_, c, _)| c.id()).collect(),
        false,
    );
    let dns_pid = testbed
        .services
        .iter()
        .find(|s| s.spec.name == "proximity-dns")
        .map(|s| s.pid());
    if let Some(pid) = dns_pid {
        probe.add(DNS_PART, vec![pid], false);
    }
    result.settle_seconds = settle(&probe).await;
    let before = probe.snapshot();
    tokio::time::sleep(Duration::from_secs(plan.idle_seconds)).await;
    let idle = probe.usage(&before, &probe.snapshot());
    // The same window again with the hub's proximity-dns stopped.
    if let Some(dns) = testbed.service_mut("proximity-dns") {
        dns.kill();
        tokio::time::sleep(Duration::from_secs(5)).await;
        let before = probe.snapshot();
        tokio::time::sleep(Duration::from_secs(plan.idle_seconds)).await;
        let without = probe.usage(&before, &probe.snapshot());
        result.idle_hub_without_dns = without
            .parts
            .iter()
            .find(|(name, _)| name == HUB_PART)
            .map(|(_, seconds)| seconds / without.wall);
        tokio::task::block_in_place(|| dns.restart())?;
    }
    result.idle_cores = idle
        .parts
        .iter()
        .map(|(name, seconds)| (name.clone(), seconds / idle.wall))
        .collect();
    result.hub_rss_mib = rss_mib(hub_pid);
    result.router_rss_mib = rss_mib(router_pid);
    eprintln!(
        "  idle: hub nats-server {:.0} MiB; cores {}",
        result.hub_rss_mib,
        result
            .idle_cores
            .iter()
            .map(|(name, cores)| format!("{name} {cores:.2}"))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // One request matching every cluster: an untimed warm-up install, then timed upgrades.
    let selector = format!("{}={}", FLEET_LABEL.0, FLEET_LABEL.1);
    let mut cpu_samples: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    // Above 5,000 clusters each fan-out takes minutes on a small machine: two timed ones.
    let reps = if clusters > 5_000 {
        plan.reps.min(2)
    } else {
        plan.reps
    };
    for rep in 0..=reps {
        let action = if rep == 0 {
            Action::Install
        } else {
            Action::Upgrade
        };
        let request = chart_request(action, "fanout", &selector, rep);
        let before = probe.snapshot();
        let (all, per_cluster) = fan_out(&client, &request, clusters).await?;
        let usage = probe.usage(&before, &probe.snapshot());
        if rep == 0 {
            continue;
        }
        eprintln!("  fan-out {rep}/{reps}: {all:.2} s");
        result.fanout_all.push(all);
        result.per_cluster.extend(per_cluster);
        for (name, seconds) in usage.parts {
            cpu_samples.entry(name).or_default().push(seconds);
        }
    }
    result.fanout_cpu = probe
        .parts
        .iter()
        .map(|p| {
            let median = Summary::of(&cpu_samples[&p.name]).map_or(f64::NAN, |s| s.median);
            (p.name.clone(), median)
        })
        .collect();

    // Router throughput: many small requests at once, each for one cluster; first with
    // one lane (one request at a time), then with the router's default lanes.
    let n = plan.single_requests;
    restart_router(testbed, Some(1)).await?;
    result.single_one_lane = Some(single_requests(&client, clusters, n, "one").await?);
    restart_router(testbed, None).await?;
    result.single = (n, single_requests(&client, clusters, n, "lanes").await?);

    for (_, child, _) in &mut agents {
        let _ = child.kill().await;
    }
    Ok(result)
}

/// One `optikon-sim-edges` process per leaf node: (leaf, process, its stdout lines).
pub(crate) type Agents = Vec<(
    String,
    tokio::process::Child,
    tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
)>;

/// Starts the simulated agents, an even share of `clusters` behind each leaf node, and
/// waits until each process says it is ready (every cluster set up and registered).
pub(crate) async fn start_agents(
    testbed: &Testbed,
    agents_binary: &PathBuf,
    clusters: usize,
    heartbeat_seconds: u64,
) -> anyhow::Result<Agents> {
    let mut agents = Vec::new();
    let per_leaf = clusters.div_ceil(testbed.edges.len());
    for (k, edge) in testbed.edges.iter().enumerate() {
        let first = k * per_leaf;
        let count = per_leaf.min(clusters.saturating_sub(first));
        if count == 0 {
            continue;
        }
        let log = testbed.dir().join(format!("sim-{}.log", edge.site.name));
        let log = std::fs::File::create(log)?;
        let mut child = tokio::process::Command::new(agents_binary)
            .args(["--nats-url", &edge.nats_url(), "--domain", &edge.site.name])
            .args(["--first", &first.to_string(), "--count", &count.to_string()])
            .args(["--heartbeat-seconds", &heartbeat_seconds.to_string()])
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("start optikon-sim-edges")?;
        let stdout = child.stdout.take().context("agent stdout")?;
        agents.push((
            edge.site.name.clone(),
            child,
            tokio::io::BufReader::new(stdout).lines(),
        ));
    }
    for (leaf, _, lines) in &mut agents {
        let line = tokio::time::timeout(Duration::from_secs(1800), lines.next_line())
            .await
            .with_context(|| format!("agents behind {leaf} not ready after 30 minutes"))??;
        if !line.as_deref().is_some_and(|l| l.starts_with("ready")) {
            let log = testbed.dir().join(format!("sim-{leaf}.log"));
            anyhow::bail!(
                "the agents behind {leaf} stopped before they were ready; their log ends:\n{}",
                optikon_testbed::process::log_tail(&log)
            );
        }
    }
    Ok(agents)
}

/// Restarts the router with `lanes` request lanes (`None`: its default), and waits until its
/// views have caught up with the hub (a restarted router reads the registry first).
async fn restart_router(testbed: &mut Testbed, lanes: Option<usize>) -> anyhow::Result<()> {
    const LANES: &str = "OPTIKON_ROUTER_REQUEST_LANES";
    let router = testbed
        .service_mut("selector-router")
        .context("no selector-router in the test bed")?;
    router.spec.env.retain(|(k, _)| k != LANES);
    if let Some(lanes) = lanes {
        router.set_env(LANES, &lanes.to_string());
    }
    tokio::task::block_in_place(|| router.restart())?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    Ok(())
}

/// `n` install requests at once, each matching one cluster; seconds until all deployed.
async fn single_requests(
    client: &Client,
    clusters: usize,
    n: usize,
    tag: &str,
) -> anyhow::Result<f64> {
    let requests: Vec<ReleaseRequest> = (0..n)
        .map(|i| {
            let target = cluster_name(i * clusters / n);
            chart_request(
                Action::Install,
                &format!("single-{tag}-{i}"),
                &format!("cluster={target}"),
                0,
            )
        })
        .collect();
    let started = Instant::now();
    let runs = requests.iter().map(|request| async {
        let status = client
            .run_request(request, Duration::from_secs(600), |_| {})
            .await
            .with_context(|| format!("single-cluster request {}", request.release))?;
        anyhow::ensure!(
            status.clusters.len() == 1
                && status
                    .clusters
                    .values()
                    .all(|p| p.state == ReleaseState::Deployed),
            "{} should be deployed on one cluster: {:?}",
            request.release,
            status.clusters
        );
        Ok(())
    });
    futures::future::try_join_all(runs).await?;
    Ok(started.elapsed().as_secs_f64())
}

pub(crate) fn chart_request(
    action: Action,
    release: &str,
    selector: &str,
    rep: usize,
) -> ReleaseRequest {
    let mut request = Client::new_request(action, release, NAMESPACE, selector);
    request.chart = Some(ChartRef::NameVersion {
        name: CHART_NAME.into(),
        version: CHART_VERSION.into(),
    });
    request.values = Some(serde_json::json!({ "rep": rep }));
    request
}

/// Waits until the hub's registry holds every cluster, each with a heartbeat.
pub(crate) async fn wait_heartbeating(client: &Client, clusters: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let records = client.clusters().await?;
        let beating = records
            .iter()
            .filter(|c| c.last_heartbeat.is_some())
            .count();
        if records.len() == clusters && beating == clusters {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "after 10 minutes the hub knows {} of {clusters} clusters, {beating} with a heartbeat",
            records.len()
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Publishes one request and follows its record until every cluster is acknowledged:
/// (seconds to all, seconds to each cluster).
pub(crate) async fn fan_out(
    client: &Client,
    request: &ReleaseRequest,
    clusters: usize,
) -> anyhow::Result<(f64, Vec<f64>)> {
    // Each cluster's entry of the request, watched as it changes: when it turned final.
    let entries = jetstream::new(client.nats().clone())
        .get_key_value(subject::REQUEST_CLUSTERS_BUCKET)
        .await?
        .watch(format!("{}.*", subject::token(&request.id)))
        .await?;
    let started = Instant::now();
    let acked = tokio::spawn(async move {
        let mut acked: BTreeMap<String, f64> = BTreeMap::new();
        let mut entries = std::pin::pin!(entries);
        while let Some(Ok(entry)) = entries.next().await {
            let Ok(progress) = serde_json::from_slice::<ClusterProgress>(&entry.value) else {
                continue;
            };
            if progress.state.is_final() {
                acked
                    .entry(entry.key.clone())
                    .or_insert(started.elapsed().as_secs_f64());
            }
            if acked.len() == clusters {
                break;
            }
        }
        acked
    });
    let status = client
        .run_request(request, Duration::from_secs(600), |_| {})
        .await
        .with_context(|| format!("{} of {} clusters", request.action, clusters))?;
    let all = started.elapsed().as_secs_f64();
    let acked = tokio::time::timeout(Duration::from_secs(30), acked)
        .await
        .context("every cluster's entry seen final")??;
    anyhow::ensure!(
        status.clusters.len() == clusters,
        "the request matched {} clusters, not all {clusters}",
        status.clusters.len()
    );
    let failed: Vec<&String> = status
        .clusters
        .iter()
        .filter(|(_, p)| p.state != ReleaseState::Deployed)
        .map(|(c, _)| c)
        .collect();
    anyhow::ensure!(failed.is_empty(), "not deployed on {failed:?}");
    Ok((all, acked.into_values().collect()))
}

/// The `p`-th percentile (0–100) by nearest rank.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted: Vec<f64> = samples.iter().copied().filter(|s| !s.is_nan()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), 50.0);
        assert_eq!(percentile(&samples, 99.0), 99.0);
        assert_eq!(percentile(&samples, 100.0), 100.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
