//! `health-prober`: see the library for what it does.

use std::time::Duration;

use clap::Parser;
use health_prober::ProberConfig;
use optikon_runtime::args::{NatsArgs, TelemetryArgs};

#[derive(Debug, Parser)]
#[command(about = "Reports this edge site's cluster health to the Optikon hub")]
struct Args {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    telemetry: TelemetryArgs,
    /// This site's cluster name (also its JetStream domain).
    #[arg(long, env = "OPTIKON_CLUSTER")]
    cluster: String,
    /// The site's labels, `key=value,key=value`, used when the hub first sees it.
    #[arg(long, env = "OPTIKON_CLUSTER_LABELS", default_value = "")]
    labels: String,
    /// Seconds between heartbeats; the hub calls the site unreachable after three missed.
    /// Ten, as Kubernetes renews a node's lease: each heartbeat is a write at the hub, so
    /// halving the interval doubles what an idle fleet costs it.
    #[arg(long, env = "OPTIKON_HEARTBEAT_SECONDS", default_value_t = 10)]
    interval: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    optikon_core::names::validate_cluster_name(&args.cluster)?;
    let labels = optikon_core::names::parse_labels(&args.labels)?;
    let (nats, shutdown) = optikon_runtime::start_edge_service(
        &args.nats,
        &args.telemetry,
        "health-prober",
        &args.cluster,
    )
    .await?;
    let kube = kube::Client::try_default().await?;
    let config = ProberConfig {
        cluster: args.cluster,
        labels,
        interval: Duration::from_secs(args.interval.max(1)),
        reregister_every: Duration::from_secs(300),
    };
    health_prober::run(nats.clone(), kube, config, shutdown).await?;
    nats.drain().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn args_are_consistent() {
        use clap::CommandFactory;
        super::Args::command().debug_assert();
    }
}
