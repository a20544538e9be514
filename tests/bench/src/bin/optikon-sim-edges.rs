//! `optikon-sim-edges`: many simulated edge clusters behind one leaf node, for the
//! control-plane scale benchmark (see `optikon_bench::sim`). The benchmark starts one per
//! leaf node; it prints `ready <n>` once every cluster is set up and registered.

use std::time::Duration;

use clap::Parser;

#[derive(Debug, Parser)]
#[command(name = "optikon-sim-edges")]
struct Args {
    /// The leaf node's NATS URL.
    #[arg(long)]
    nats_url: String,
    /// The leaf node's JetStream domain.
    #[arg(long)]
    domain: String,
    /// Index of the first simulated cluster (`sim-<index>`).
    #[arg(long, default_value_t = 0)]
    first: usize,
    /// How many clusters this process serves.
    #[arg(long)]
    count: usize,
    /// Seconds between one cluster's heartbeats (the health-prober's default is 5).
    #[arg(long, default_value_t = 5)]
    heartbeat_seconds: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(optikon_bench::sim::run(optikon_bench::sim::SimConfig {
        nats_url: args.nats_url,
        domain: args.domain,
        clusters: args.first..args.first + args.count,
        heartbeat: Duration::from_secs(args.heartbeat_seconds.max(1)),
    }))
}
