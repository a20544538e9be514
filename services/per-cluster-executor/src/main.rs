//! `per-cluster-executor`: see the library for what it does.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use optikon_runtime::args::{NatsArgs, TelemetryArgs};
use optikon_runtime::shutdown::Shutdown;
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    optikon_runtime::telemetry::init(&args.telemetry, "per-cluster-executor");
    optikon_core::names::validate_cluster_name(&args.cluster)?;
    let shutdown = Shutdown::on_signals();
    let client = optikon_runtime::connect(&args.nats, "per-cluster-executor").await?;
    let config = ExecutorConfig {
        cluster: args.cluster,
        helm: args.helm,
        max_attempts: args.max_attempts,
        concurrency: args.concurrency.max(1),
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
