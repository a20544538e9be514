//! Part 6: proximity DNS at the hub with many sites in its table, against NSD answering the
//! same names with the same addresses from a zone file.
//!
//! A hub nats-server alone (no Kubernetes): its buckets are filled as 1,000 sites would fill
//! them (a registry record with a position, a fresh heartbeat, the Services each runs), then
//! the hub's proximity-dns is started and asked with dnsperf, and NSD is asked the same
//! names with dnsperf, taking turns. NSD's zone is written from what proximity-dns answered,
//! so both give identical answers; the difference is the price of choosing them per query.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use optikon_core::message::{
    ApiVersion, ClusterRecord, Heartbeat, ServiceEndpoint, SiteServices, Timestamp,
};
use optikon_core::subject;
use optikon_testbed::dns::{Nsd, dig};
use optikon_testbed::services::{ServiceProcess, ServiceSpec};
use optikon_testbed::{HubRole, Testbed, TestbedConfig};

use crate::cpu;
use crate::stats::Summary;
use crate::table::Table;

/// The base domain of the benchmark's names.
const DOMAIN: &str = "optikon.bench";
/// Distinct Services in the fleet; each site runs [`RUNS_PER_SITE`] of them.
const SERVICES: usize = 50;
const RUNS_PER_SITE: usize = 10;
/// dnsperf's simultaneous clients (sockets) and seconds per window.
const CLIENTS: usize = 8;
const WINDOW_SECONDS: u64 = 10;

#[derive(Debug, Clone, Default)]
pub struct DnsResult {
    pub sites: usize,
    pub names: usize,
    pub window_seconds: u64,
    /// Per server (name), each window's measurement.
    pub runs: Vec<(String, Vec<Window>)>,
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Window {
    pub qps: f64,
    pub latency_ms: f64,
    pub lost: u64,
    /// CPU seconds the server used per 1,000 queries answered.
    pub cpu_ms_per_1000: f64,
}

/// A site's position: spread over Europe on a grid, so distances differ.
fn position(i: usize) -> (String, String) {
    let lat = 36.0 + (i % 40) as f64 * 0.6;
    let long = -9.0 + (i / 40 % 25) as f64 * 1.4;
    let long = if long < 0.0 {
        format!("{:.2}W", -long)
    } else {
        format!("{long:.2}")
    };
    (format!("{lat:.2}"), long)
}

pub fn run(
    runtime: &tokio::runtime::Runtime,
    sites: usize,
    rounds: usize,
) -> anyhow::Result<DnsResult> {
    for tool in ["dnsperf", "dig"] {
        if Command::new(tool).arg("-h").output().is_err() {
            bail!("{tool} not found: run scripts/install-packages (Debian's dnsperf and dnsutils)");
        }
    }
    let testbed = Testbed::start(TestbedConfig {
        sites: Vec::new(),
        clusters: false,
        services: false,
        ..TestbedConfig::default()
    })?;
    runtime.block_on(fill(&testbed, sites))?;
    eprintln!("  dns: {sites} sites in the hub's buckets");

    let port = optikon_testbed::free_udp_and_tcp_port()?;
    let address = SocketAddr::from(([127, 0, 0, 1], port));
    let bin = optikon_testbed::services::service_bin_dir()?;
    let spec = ServiceSpec {
        name: "proximity-dns".into(),
        binary: bin.join("proximity-dns"),
        args: Vec::new(),
        env: vec![
            (
                "OPTIKON_NATS_URL".into(),
                testbed.role_url(HubRole::ProximityDns),
            ),
            ("OPTIKON_DNS_LISTEN".into(), address.to_string()),
            ("OPTIKON_DNS_BASE_DOMAIN".into(), DOMAIN.into()),
            ("OPTIKON_DNS_LAT".into(), "50.11".into()),
            ("OPTIKON_DNS_LONG".into(), "8.68".into()),
        ],
    };
    let dns = ServiceProcess::start(&spec, testbed.dir())?;
    let names: Vec<String> = (0..SERVICES)
        .map(|k| format!("app-{k}.shop.{DOMAIN}"))
        .collect();
    let answers = wait_for_answers(address, &names)?;

    // NSD serving the names with exactly the addresses proximity-dns gave.
    let records: String = answers
        .iter()
        .flat_map(|(name, addresses)| addresses.iter().map(move |a| format!("{name}. IN A {a}\n")))
        .collect();
    let nsd = Nsd::start(&testbed.dir().join("nsd"), DOMAIN, 5, &records)?;
    wait_for_answers(nsd.address, &names)?;
    let queries = testbed.dir().join("queries.txt");
    std::fs::write(
        &queries,
        names.iter().map(|n| format!("{n} A\n")).collect::<String>(),
    )?;
    // NSD forks its server and transfer processes from the one started: count them all.
    let conf = nsd.config().display().to_string();
    let nsd_pids: Vec<u32> = cpu::processes()
        .into_iter()
        .filter(|(_, args)| args.contains(&conf))
        .map(|(pid, _)| pid)
        .collect();
    let mut runs = vec![
        (
            "proximity-dns".to_owned(),
            vec![dns.pid()],
            address,
            Vec::new(),
        ),
        (
            "NSD (zone file)".to_owned(),
            nsd_pids,
            nsd.address,
            Vec::new(),
        ),
    ];
    for round in 0..rounds {
        let order: Vec<usize> = if round % 2 == 0 {
            vec![0, 1]
        } else {
            vec![1, 0]
        };
        for i in order {
            let (name, pids, address, windows) = &mut runs[i];
            let window = measure(*address, pids, &queries)?;
            eprintln!(
                "  dns round {}/{rounds}: {name}: {:.0} queries/s, {:.2} ms, {} lost",
                round + 1,
                window.qps,
                window.latency_ms,
                window.lost
            );
            windows.push(window);
        }
    }
    drop(nsd);
    drop(dns);
    Ok(DnsResult {
        sites,
        names: names.len(),
        window_seconds: WINDOW_SECONDS,
        runs: runs.into_iter().map(|(name, _, _, w)| (name, w)).collect(),
    })
}

/// Writes `sites` registry records, heartbeats and Services entries at the hub, as the
/// router and the sites would. Heartbeats say 3,600 s, so none goes stale during the part.
async fn fill(testbed: &Testbed, sites: usize) -> anyhow::Result<()> {
    let client = optikon_runtime::connect_url(&testbed.admin_url(), "dns-bench").await?;
    let js = optikon_runtime::jetstream(client);
    optikon_runtime::topology::ensure_hub(&js).await?;
    let clusters = js.get_key_value(subject::CLUSTERS_BUCKET).await?;
    let heartbeats = js.get_key_value(subject::HEARTBEATS_BUCKET).await?;
    let services = js.get_key_value(subject::SERVICES_BUCKET).await?;
    let now = Timestamp::now();
    for i in 0..sites {
        let name = format!("site-{i:05}");
        let (lat, long) = position(i);
        let record = ClusterRecord {
            api_version: ApiVersion,
            name: name.clone(),
            domain: name.clone(),
            labels: [("lat".to_owned(), lat), ("long".to_owned(), long)].into(),
            registered_at: now,
            last_heartbeat: None,
        };
        let heartbeat = Heartbeat {
            api_version: ApiVersion,
            cluster: name.clone(),
            labels: Default::default(),
            api_ready: true,
            nodes_ready: 1,
            nodes_total: 1,
            pods_total: 1,
            pods_by_phase: Default::default(),
            kubernetes_version: None,
            error: None,
            interval_seconds: 3600,
            at: now,
        };
        // One address per site, 10.x.y.z from its number.
        let address = std::net::Ipv4Addr::from(0x0a00_0000 | (i as u32 & 0x00ff_ffff));
        let runs = SiteServices {
            api_version: ApiVersion,
            cluster: name.clone(),
            services: (0..RUNS_PER_SITE)
                .map(|j| ServiceEndpoint {
                    namespace: "shop".into(),
                    name: format!("app-{}", (i * 7 + j) % SERVICES),
                    addresses: vec![address.into()],
                })
                .collect(),
            at: now,
        };
        clusters
            .put(&name, serde_json::to_vec(&record)?.into())
            .await?;
        heartbeats
            .put(&name, serde_json::to_vec(&heartbeat)?.into())
            .await?;
        services
            .put(&name, serde_json::to_vec(&runs)?.into())
            .await?;
    }
    Ok(())
}

/// What proximity-dns answers for each name, once it answers every name with something.
fn wait_for_answers(
    server: SocketAddr,
    names: &[String],
) -> anyhow::Result<Vec<(String, Vec<IpAddr>)>> {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        // A server still starting refuses the query: that is "not yet", like no answer.
        let answers = names
            .iter()
            .map(|name| Ok((name.clone(), dig(server, name, "A")?.addresses)))
            .collect::<Result<Vec<_>, optikon_testbed::Error>>();
        let last = match answers {
            Ok(answers) if answers.iter().all(|(_, a)| !a.is_empty()) => return Ok(answers),
            Ok(_) => "some names had no answer".to_owned(),
            Err(error) => error.to_string(),
        };
        if std::time::Instant::now() > deadline {
            bail!("{server} did not answer every name within 120 s: {last}");
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// One dnsperf window against `server`, and the server's CPU over it.
fn measure(server: SocketAddr, pids: &[u32], queries: &Path) -> anyhow::Result<Window> {
    let cpu_of = |pids: &[u32]| -> f64 {
        pids.iter()
            .filter_map(|&p| cpu::process_times(p))
            .map(|t| t.own)
            .sum()
    };
    let before = cpu_of(pids);
    let out = Command::new("dnsperf")
        .args([
            "-s",
            &server.ip().to_string(),
            "-p",
            &server.port().to_string(),
        ])
        .arg("-d")
        .arg(queries)
        .args([
            "-l",
            &WINDOW_SECONDS.to_string(),
            "-c",
            &CLIENTS.to_string(),
            "-q",
            "200",
        ])
        .output()
        .context("run dnsperf")?;
    let after = cpu_of(pids);
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |label: &str| -> anyhow::Result<f64> {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(label))
            .with_context(|| format!("dnsperf printed no {label:?}:\n{text}"))?;
        line[line.find(':').context("a colon")? + 1..]
            .split_whitespace()
            .next()
            .context("a value")?
            .parse::<f64>()
            .with_context(|| format!("dnsperf's {label:?}: {line}"))
    };
    let qps = field("Queries per second")?;
    let completed = field("Queries completed")?;
    let lost = field("Queries lost")? as u64;
    Ok(Window {
        qps,
        latency_ms: field("Average Latency (s)")? * 1000.0,
        lost,
        cpu_ms_per_1000: 1e6 * (after - before) / completed.max(1.0),
    })
}

/// Queries per second, latency, and CPU per query, medians over the windows, per server.
pub fn table(r: &DnsResult) -> Table {
    let mut table = Table::new(&[
        "server",
        "windows",
        "queries/s",
        "average latency",
        "server CPU per 1,000 queries",
        "lost",
    ])
    .right_aligned(&[1, 2, 3, 4, 5]);
    for (name, windows) in &r.runs {
        let summary =
            |f: fn(&Window) -> f64| Summary::of(&windows.iter().map(f).collect::<Vec<_>>());
        let show = |s: Option<Summary>, unit: &str, decimals: usize| {
            s.map_or("n/a".to_owned(), |s| {
                format!(
                    "{:.*}{unit} ({:.*}–{:.*})",
                    decimals, s.median, decimals, s.min, decimals, s.max
                )
            })
        };
        table.push(vec![
            name.clone(),
            windows.len().to_string(),
            show(summary(|w| w.qps), "", 0),
            show(summary(|w| w.latency_ms), " ms", 2),
            show(summary(|w| w.cpu_ms_per_1000), " ms", 1),
            windows.iter().map(|w| w.lost).sum::<u64>().to_string(),
        ]);
    }
    table
}
