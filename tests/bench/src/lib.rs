//! `optikon-bench`: measures Optikon on the real test bed and writes BENCHMARKS.md.
//!
//! Four parts in one run, so their figures share the machine's conditions: the same chart on
//! N real clusters by Optikon and by helm loops ([`fleet`]), executor replicas against one
//! cluster ([`scaling`]), where the time of one install goes ([`steps`]), and the control
//! plane at thousands of simulated edges ([`control`], agents in [`sim`]). A benchmark, not
//! a test: nothing here passes or fails on time.

pub mod bed;
pub mod control;
pub mod cpu;
pub mod dns;
pub mod drift;
pub mod fleet;
pub mod logs;
pub mod machine;
pub mod report;
pub mod rollout;
pub mod scaling;
pub mod sim;
pub mod stats;
pub mod steps;
pub mod table;

use std::path::PathBuf;

use anyhow::bail;
use clap::{Parser, ValueEnum};

use crate::bed::{Bench, GIB_PER_SITE, Layout};
use crate::machine::Machine;

#[derive(Debug, Parser)]
#[command(
    name = "optikon-bench",
    about = "Benchmarks Optikon against helm loops on real clusters; writes BENCHMARKS.md"
)]
pub struct Args {
    /// A smoke run: fewer repetitions and releases (figures not worth quoting).
    #[arg(long, env = "OPTIKON_BENCH_QUICK")]
    pub quick: bool,
    /// The larger fleet size compared with 3 clusters.
    #[arg(long, env = "OPTIKON_BENCH_LARGE", default_value_t = 8)]
    pub large: usize,
    /// Repetitions per method and fleet size, and of the step breakdown (default 5; 2 with --quick).
    #[arg(long, env = "OPTIKON_BENCH_REPS")]
    pub reps: Option<usize>,
    /// Rounds per executor count (default 2; 1 with --quick).
    #[arg(long, env = "OPTIKON_BENCH_SCALING_REPS")]
    pub scaling_reps: Option<usize>,
    /// Releases installed at once per executor-scaling round (default 40; 12 with --quick).
    #[arg(long, env = "OPTIKON_BENCH_RELEASES")]
    pub releases: Option<usize>,
    /// Cluster counts of the control-plane part (default 100,1000,10000; 100,1000 with --quick).
    #[arg(long, env = "OPTIKON_BENCH_CONTROL_SIZES", value_delimiter = ',')]
    pub control_sizes: Vec<usize>,
    /// Leaf nodes carrying the control-plane part's simulated clusters.
    #[arg(long, env = "OPTIKON_BENCH_LEAVES", default_value_t = 4)]
    pub leaves: usize,
    /// Seconds between one simulated cluster's heartbeats (the health-prober's default).
    #[arg(long, env = "OPTIKON_BENCH_HEARTBEAT_SECONDS", default_value_t = 10)]
    pub heartbeat_seconds: u64,
    /// Idle releases of the drift part (default 200; 40 with --quick).
    #[arg(long, env = "OPTIKON_BENCH_DRIFT_RELEASES")]
    pub drift_releases: Option<usize>,
    /// An earlier executor binary measured beside this build's in the drift part.
    #[arg(long, env = "OPTIKON_BENCH_DRIFT_BASELINE")]
    pub drift_baseline: Option<PathBuf>,
    /// Sites in the hub's table for the proximity DNS part.
    #[arg(long, env = "OPTIKON_BENCH_DNS_SITES", default_value_t = 1000)]
    pub dns_sites: usize,
    /// Run only these parts (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    pub parts: Vec<Part>,
    /// Where to write the report.
    #[arg(long, env = "OPTIKON_BENCH_OUT", default_value = "BENCHMARKS.md")]
    pub out: PathBuf,
    /// The command line to record in the report (scripts/bench passes its own).
    #[arg(long, env = "OPTIKON_BENCH_COMMAND")]
    pub command: Option<String>,
    /// How the services were built, for the report (scripts/bench passes it).
    #[arg(long, env = "OPTIKON_BENCH_BUILD", default_value = "unknown")]
    pub build: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Part {
    Fleet,
    Scaling,
    Steps,
    ControlPlane,
    Drift,
    Dns,
    /// A 10-wave rollout across 1,000 simulated sites (part 7).
    Rollout,
}

/// What one run is set to do.
#[derive(Debug, Clone)]
pub struct Plan {
    pub sizes: Vec<usize>,
    pub reps: usize,
    pub scaling_reps: usize,
    pub releases: usize,
    pub executor_counts: Vec<usize>,
    pub parts: Vec<Part>,
    pub control: control::ControlPlan,
    pub drift_releases: usize,
    pub drift_baseline: Option<PathBuf>,
    pub dns_sites: usize,
}

impl Plan {
    pub fn from_args(args: &Args) -> anyhow::Result<Plan> {
        if args.large < 1 {
            bail!("--large must be at least 1");
        }
        let mut sizes = vec![3.min(args.large), args.large];
        sizes.dedup();
        let parts = if args.parts.is_empty() {
            vec![
                Part::Fleet,
                Part::Scaling,
                Part::Steps,
                Part::ControlPlane,
                Part::Drift,
                Part::Dns,
                Part::Rollout,
            ]
        } else {
            args.parts.clone()
        };
        Ok(Plan {
            sizes,
            reps: args.reps.unwrap_or(if args.quick { 2 } else { 5 }).max(1),
            scaling_reps: args
                .scaling_reps
                .unwrap_or(if args.quick { 1 } else { 2 })
                .max(1),
            releases: args
                .releases
                .unwrap_or(if args.quick { 12 } else { 40 })
                .max(1),
            executor_counts: vec![1, 2, 4],
            drift_releases: args
                .drift_releases
                .unwrap_or(if args.quick { 40 } else { 200 })
                .max(1),
            drift_baseline: args.drift_baseline.clone(),
            dns_sites: args.dns_sites.max(1),
            parts,
            control: control::ControlPlan {
                sizes: if !args.control_sizes.is_empty() {
                    args.control_sizes.clone()
                } else if args.quick {
                    vec![100, 1000]
                } else {
                    vec![100, 1000, 10_000]
                },
                leaves: args.leaves.max(1),
                reps: args.reps.unwrap_or(if args.quick { 2 } else { 5 }).max(1),
                single_requests: if args.quick { 30 } else { 100 },
                heartbeat_seconds: args.heartbeat_seconds.max(1),
                idle_seconds: if args.quick { 10 } else { 30 },
            },
        })
    }

    /// Whether any part needs the real clusters.
    pub fn needs_clusters(&self) -> bool {
        self.parts
            .iter()
            .any(|p| matches!(p, Part::Fleet | Part::Scaling | Part::Steps | Part::Drift))
    }

    pub fn layout(&self) -> Layout {
        Layout {
            fleet: if self.parts.contains(&Part::Fleet) {
                *self.sizes.iter().max().unwrap_or(&0)
            } else {
                0
            },
            sizes: self.sizes.clone(),
            scaling: self.parts.contains(&Part::Scaling) || self.parts.contains(&Part::Drift),
            steps: self.parts.contains(&Part::Steps),
        }
    }
}

/// Runs the benchmark and writes the report.
pub fn main(args: Args) -> anyhow::Result<()> {
    let plan = Plan::from_args(&args)?;
    let machine = Machine::read();
    let started = std::time::Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut results = report::Results {
        machine,
        command: args
            .command
            .clone()
            .unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" ")),
        build: args.build.clone(),
        quick: args.quick,
        plan: plan.clone(),
        ..report::Results::default()
    };
    if plan.needs_clusters() {
        real_clusters(&runtime, &plan, &mut results)?;
    }
    if plan.parts.contains(&Part::ControlPlane) {
        results.control = control::run(&runtime, &plan.control)?;
    }
    if plan.parts.contains(&Part::Dns) {
        eprintln!(
            "== part 6: proximity DNS with {} sites, against NSD",
            plan.dns_sites
        );
        let rounds = if args.quick { 1 } else { 3 };
        results.dns = Some(dns::run(&runtime, plan.dns_sites, rounds)?);
    }
    if plan.parts.contains(&Part::Rollout) {
        let sites = 1000;
        eprintln!(
            "== part 7: a {}-wave rollout across {sites} simulated sites",
            rollout::WAVES
        );
        let reps = if args.quick { 1 } else { 3 };
        results.rollout = Some(rollout::run(
            &runtime,
            sites,
            plan.control.leaves,
            plan.control.heartbeat_seconds,
            reps,
        )?);
    }
    results.total_seconds = started.elapsed().as_secs_f64();
    let text = report::markdown(&results);
    print!("{}", report::terminal(&results));
    std::fs::write(&args.out, text)?;
    eprintln!("== wrote {}", args.out.display());
    Ok(())
}

/// Parts 1–3, on one test bed of real clusters.
fn real_clusters(
    runtime: &tokio::runtime::Runtime,
    plan: &Plan,
    results: &mut report::Results,
) -> anyhow::Result<()> {
    let layout = plan.layout();
    let sites = layout.sites().len();
    let needed = sites as f64 * GIB_PER_SITE + 1.0;
    let available = results.machine.mem_available_gib;
    if available < needed {
        bail!(
            "{sites} edge sites need about {needed:.1} GiB, only {available:.1} GiB is available: \
             choose a smaller --large"
        );
    }
    eprintln!(
        "== starting the test bed: {sites} edge sites with real clusters ({available:.1} GiB available)"
    );
    let started = std::time::Instant::now();
    let testbed = Bench::start_testbed(&layout)?;
    results.sites = sites;
    results.startup_seconds = started.elapsed().as_secs_f64();
    runtime.block_on(async {
        let mut bench = Bench::new(testbed, layout).await?;
        bench.wait_ready().await?;
        results.available_after_start_gib = Machine::available_gib();
        results.idle_cores = bench.idle_cores(10).await;
        if plan.parts.contains(&Part::Fleet) {
            eprintln!(
                "== part 1: Optikon vs helm loops on {:?} clusters",
                plan.sizes
            );
            results.fleet = fleet::run_all(&bench, &plan.sizes, plan.reps).await?;
        }
        if plan.parts.contains(&Part::Scaling) {
            eprintln!(
                "== part 2: {} releases at once with 1, 2, 4 executors",
                plan.releases
            );
            results.scaling = Some(
                scaling::run(
                    &mut bench,
                    &plan.executor_counts,
                    plan.releases,
                    plan.scaling_reps,
                )
                .await?,
            );
        }
        if plan.parts.contains(&Part::Steps) {
            eprintln!("== part 3: where one install's time goes");
            results.steps = Some(steps::run(&mut bench, plan.reps).await?);
        }
        if plan.parts.contains(&Part::Drift) {
            eprintln!(
                "== part 5: drift correction with {} idle releases",
                plan.drift_releases
            );
            let window = std::time::Duration::from_secs(if plan.reps > 2 { 60 } else { 30 });
            results.drift = Some(
                drift::run(
                    &mut bench,
                    plan.drift_releases,
                    window,
                    2,
                    plan.drift_baseline.as_deref(),
                )
                .await?,
            );
        }
        // Drop the test bed (stops every process) outside the async context.
        let testbed = bench.testbed;
        tokio::task::spawn_blocking(move || drop(testbed)).await?;
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn args_are_consistent() {
        use clap::CommandFactory;
        Args::command().debug_assert();
    }

    #[test]
    fn plans() {
        let quick = Plan::from_args(&Args::parse_from(["optikon-bench", "--quick"])).unwrap();
        assert_eq!(
            (quick.sizes.clone(), quick.reps, quick.releases),
            (vec![3, 8], 2, 12)
        );
        let small = Plan::from_args(&Args::parse_from(["optikon-bench", "--large", "3"])).unwrap();
        assert_eq!(small.sizes, vec![3]);
        let only =
            Plan::from_args(&Args::parse_from(["optikon-bench", "--parts", "steps"])).unwrap();
        let layout = only.layout();
        assert_eq!(layout.sites().len(), 1);
        assert_eq!(layout.sites()[0].name, bed::STEPS_SITE);
        assert_eq!(quick.control.sizes, vec![100, 1000]);
        assert!(!only.needs_clusters() || only.parts == vec![Part::Steps]);
        let control = Plan::from_args(&Args::parse_from([
            "optikon-bench",
            "--parts",
            "control-plane",
            "--control-sizes",
            "50,500",
        ]))
        .unwrap();
        assert!(!control.needs_clusters());
        assert_eq!(control.control.sizes, vec![50, 500]);
        let all = Plan::from_args(&Args::parse_from(["optikon-bench"])).unwrap();
        assert_eq!(all.control.sizes, vec![100, 1000, 10_000]);
        let sites = all.layout().sites();
        assert_eq!(sites.len(), 10);
        assert_eq!(
            sites[2].labels.get("first3").map(String::as_str),
            Some("yes")
        );
        assert!(!sites[3].labels.contains_key("first3"));
        assert_eq!(
            sites[7].labels.get("first8").map(String::as_str),
            Some("yes")
        );
    }
}
