//! Part 1: the same chart on the same N real clusters, by Optikon, by a sequential
//! `helm upgrade --install --wait` loop and by the same loop run all at once.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::Context;

use crate::bed::{Bench, CHART_NAME, CHART_VERSION, Layout, NAMESPACE, run};
use crate::cpu::Probe;
use crate::logs;
use crate::stats::{Summary, ratio};
use crate::table::Table;

/// Replicas of the chart's Deployment in this part.
const REPLICAS: u32 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Method {
    Optikon,
    HelmSequential,
    HelmParallel,
}

pub const METHODS: [Method; 3] = [
    Method::Optikon,
    Method::HelmSequential,
    Method::HelmParallel,
];

impl Method {
    pub fn label(self) -> &'static str {
        match self {
            Method::Optikon => "Optikon (`optikon install`, one request)",
            Method::HelmSequential => "helm loop, sequential",
            Method::HelmParallel => "helm loop, all at once",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Method::Optikon => "opt",
            Method::HelmSequential => "seq",
            Method::HelmParallel => "par",
        }
    }
}

/// Everything measured for one fleet size.
#[derive(Debug, Clone, Default)]
pub struct FleetResult {
    pub size: usize,
    /// Seconds per run, per method.
    pub seconds: BTreeMap<Method, Vec<f64>>,
    /// How busy the machine's cores were during each run (%), per method.
    pub busy: BTreeMap<Method, Vec<f64>>,
    /// Per Optikon run: the slowest cluster's executor time for the generation (render,
    /// apply, readiness wait, record), from its "generation executed" log event.
    pub optikon_slowest_execute: Vec<f64>,
}

pub async fn run_all(
    bench: &Bench,
    sizes: &[usize],
    reps: usize,
) -> anyhow::Result<Vec<FleetResult>> {
    let mut results = Vec::new();
    for &size in sizes {
        let mut result = FleetResult {
            size,
            ..FleetResult::default()
        };
        // One untimed round first: charts reach the edge caches, helm's discovery caches
        // fill, every code path is paged in.
        for method in METHODS {
            once(bench, method, size, &format!("w{size}-{}", method.short())).await?;
        }
        for rep in 0..reps {
            // Rotate the order, so no method always runs right after another.
            let order: Vec<Method> = (0..METHODS.len())
                .map(|i| METHODS[(i + rep) % METHODS.len()])
                .collect();
            for method in order {
                let release = format!("f{size}-{}-{rep}", method.short());
                let measured = once(bench, method, size, &release).await?;
                eprintln!(
                    "  fleet N={size} rep {}/{reps}: {:<40} {:6.2} s (machine {:.0}% busy)",
                    rep + 1,
                    method.label(),
                    measured.seconds,
                    measured.busy
                );
                result
                    .seconds
                    .entry(method)
                    .or_default()
                    .push(measured.seconds);
                result.busy.entry(method).or_default().push(measured.busy);
                if let Some(slowest) = measured.slowest_execute {
                    result.optikon_slowest_execute.push(slowest);
                }
            }
        }
        results.push(result);
    }
    Ok(results)
}

struct Measured {
    seconds: f64,
    busy: f64,
    slowest_execute: Option<f64>,
}

/// Installs `release` on the first `size` fleet sites with one method, checks the pods,
/// and removes it again (untimed) so the next run starts on idle clusters.
async fn once(
    bench: &Bench,
    method: Method,
    size: usize,
    release: &str,
) -> anyhow::Result<Measured> {
    let sites = Layout::fleet_sites(size);
    let selector = Layout::fleet_selector(size);
    let probe = Probe::default();
    let before = probe.snapshot();
    let seconds = match method {
        Method::Optikon => {
            let replicas = format!("replicaCount={REPLICAS}");
            let command = bench.optikon_command(&[
                "install",
                release,
                CHART_NAME,
                "--version",
                CHART_VERSION,
                "-n",
                NAMESPACE,
                "-l",
                &selector,
                "--set",
                &replicas,
                "--timeout",
                "300",
            ]);
            let out = run(command).await?.ok("optikon install")?;
            // The final table: CLUSTER STATUS REVISION REASON.
            let deployed = out
                .stdout
                .lines()
                .filter(|l| l.split_whitespace().nth(1) == Some("deployed"))
                .count();
            anyhow::ensure!(
                deployed == size,
                "optikon install {release}: {deployed} of {size} clusters deployed:\n{}",
                out.stdout
            );
            out.seconds
        }
        Method::HelmSequential => {
            let started = Instant::now();
            for site in &sites {
                run(bench.helm_install(site, release, REPLICAS)?)
                    .await?
                    .ok(&format!("helm upgrade --install on {site}"))?;
            }
            started.elapsed().as_secs_f64()
        }
        Method::HelmParallel => {
            let started = Instant::now();
            let commands = sites
                .iter()
                .map(|site| bench.helm_install(site, release, REPLICAS))
                .collect::<anyhow::Result<Vec<_>>>()?;
            let runs = futures::future::join_all(commands.into_iter().map(run)).await;
            let seconds = started.elapsed().as_secs_f64();
            for (site, out) in sites.iter().zip(runs) {
                out?.ok(&format!("helm upgrade --install on {site}"))?;
            }
            seconds
        }
    };
    let busy = probe.usage(&before, &probe.snapshot()).machine_percent();
    bench
        .check_running(&sites, release, REPLICAS as usize)
        .await
        .with_context(|| format!("after {}", method.label()))?;

    let slowest_execute = (method == Method::Optikon)
        .then(|| {
            sites
                .iter()
                .filter_map(|site| {
                    let events = logs::events_in(&bench.executor_logs(site), release);
                    logs::last(&events, "generation executed")?.number("elapsed_ms")
                })
                .map(|ms| ms / 1e3)
                .reduce(f64::max)
        })
        .flatten();

    match method {
        Method::Optikon => bench.optikon_uninstall(release, &selector).await?,
        _ => {
            let commands = sites
                .iter()
                .map(|site| bench.helm_uninstall(site, release))
                .collect::<anyhow::Result<Vec<_>>>()?;
            for out in futures::future::join_all(commands.into_iter().map(run)).await {
                out?.ok("helm uninstall")?;
            }
        }
    }
    bench.wait_gone(&sites, release).await?;
    Ok(Measured {
        seconds,
        busy,
        slowest_execute,
    })
}

/// The comparison table over all fleet sizes.
pub fn table(results: &[FleetResult]) -> Table {
    let mut t = Table::new(&[
        "clusters",
        "method",
        "median (min–max)",
        "÷ Optikon",
        "per cluster",
        "CPU busy",
    ])
    .right_aligned(&[0, 2, 3, 4, 5]);
    for r in results {
        let optikon = r.seconds.get(&Method::Optikon).and_then(|s| Summary::of(s));
        for method in METHODS {
            let Some(s) = r.seconds.get(&method).and_then(|s| Summary::of(s)) else {
                continue;
            };
            let versus = match (&optikon, method) {
                (_, Method::Optikon) => "1.0×".to_owned(),
                (Some(o), _) => ratio(&s, o),
                (None, _) => "–".to_owned(),
            };
            let busy = r
                .busy
                .get(&method)
                .and_then(|b| Summary::of(b))
                .map(|b| format!("{:.0} %", b.median))
                .unwrap_or_default();
            t.push(vec![
                r.size.to_string(),
                method.label().to_owned(),
                s.seconds(),
                versus,
                format!("{:.2} s", s.median / r.size as f64),
                busy,
            ]);
        }
    }
    t
}

/// One sentence per fleet size on what bounds Optikon's time there; `base` is the smallest
/// size measured, to see what grew with N.
pub fn bottleneck(r: &FleetResult, base: Option<&FleetResult>) -> Option<String> {
    let optikon = Summary::of(r.seconds.get(&Method::Optikon)?)?;
    let busy = Summary::of(r.busy.get(&Method::Optikon)?)?.median;
    let execute = Summary::of(&r.optikon_slowest_execute)?.median;
    let rest = (optikon.median - execute).max(0.0);
    let per_helm = r
        .seconds
        .get(&Method::HelmSequential)
        .and_then(|s| Summary::of(s))
        .map(|s| s.median / r.size as f64);
    let base_execute = base
        .filter(|b| b.size < r.size)
        .and_then(|b| Some((b.size, Summary::of(&b.optikon_slowest_execute)?.median)));
    let bound = match base_execute {
        Some((n, before)) if execute > 1.3 * before => format!(
            "contention: the slowest cluster's executor needed {execute:.2} s here against \
             {before:.2} s at N = {n}, because {} executors render (`helm template`) and apply \
             at once and {} control planes react, all on the machine's shared cores \
             ({busy:.0} % busy during these runs)",
            r.size, r.size
        ),
        _ => format!(
            "the per-cluster chain: every cluster renders, applies and waits for readiness at \
             once, so Optikon's time is the slowest cluster's plus a little; most of that chain \
             is the executor's 0.5 s readiness poll (part 3) ({busy:.0} % CPU busy during \
             these runs)"
        ),
    };
    Some(format!(
        "N = {}: Optikon took {:.2} s; its slowest cluster's executor (render → apply → \
         readiness → record) took {execute:.2} s of that, request routing, NATS hops, chart \
         lookup and status folding the other {rest:.2} s{}. Bound by {bound}.",
        r.size,
        optikon.median,
        per_helm
            .map(|s| format!(" (one `helm --wait` install costs {s:.2} s in the sequential loop)"))
            .unwrap_or_default(),
    ))
}
