//! `per-cluster-executor`: see the library for what it does.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use optikon_runtime::args::{NatsArgs, TelemetryArgs};
use per_cluster_executor::{Executor, ExecutorConfig};

#[derive(Debug, Parser)]
#[command(about = "Applies this edge site's Helm releases to its Kubernetes cluster")]
struct Args {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    telemetry: TelemetryArgs,
    /// This site's cluster name (also its JetStream domain).
    #[arg(long, env = "OPTIKON_CLUSTER")]
    cluster: String,
    /// The helm binary used to render charts.
    #[arg(long, env = "OPTIKON_HELM", default_value = "helm")]
    helm: PathBuf,
    /// Attempts at a command before it is reported failed.
    #[arg(long, env = "OPTIKON_MAX_ATTEMPTS", default_value_t = 5)]
    max_attempts: i64,
    /// Commands worked on at once (never two of one release).
    #[arg(long, env = "OPTIKON_CONCURRENCY", default_value_t = 4)]
    concurrency: usize,
    /// Seconds before a command a dead executor held is handed to another (or a restarted)
    /// one; a live executor keeps extending it while it works.
    #[arg(long, env = "OPTIKON_ACK_WAIT_SECONDS", default_value_t = 30)]
    ack_wait_seconds: u64,
    /// Seconds between drift checks of the deployed releases (0: no drift correction).
    #[arg(long, env = "OPTIKON_DRIFT_CHECK_SECONDS", default_value_t = 15)]
    drift_check_seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    optikon_core::names::validate_cluster_name(&args.cluster)?;
    let (client, shutdown) = optikon_runtime::start_edge_service(
        &args.nats,
        &args.telemetry,
        "per-cluster-executor",
        &args.cluster,
    )
    .await?;
    let config = ExecutorConfig {
        cluster: args.cluster,
        helm: args.helm,
        max_attempts: args.max_attempts,
        concurrency: args.concurrency.max(1),
        // Progress is sent every third of it; below 3 s that would be chatty for nothing.
        ack_wait: Duration::from_secs(args.ack_wait_seconds.max(3)),
        drift_interval: (args.drift_check_seconds > 0)
            .then(|| Duration::from_secs(args.drift_check_seconds)),
    };
    if let Some(executor) = Executor::start(client.clone(), config, &shutdown).await {
        Arc::new(executor).run(shutdown).await?;
    }
    client.drain().await?;
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
