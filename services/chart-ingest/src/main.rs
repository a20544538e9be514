//! `chart-ingest`: see the library for what it does.

use clap::Parser;
use optikon_core::chart::ChartLimits;
use optikon_runtime::args::{NatsArgs, TelemetryArgs};

#[derive(Debug, Parser)]
#[command(about = "Validates and stores Helm charts pushed to Optikon")]
struct Args {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    telemetry: TelemetryArgs,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (client, shutdown) =
        optikon_runtime::start_service(&args.nats, &args.telemetry, "chart-ingest").await?;
    let js = async_nats::jetstream::new(client.clone());
    let ingest = chart_ingest::ChartIngest::new(js, ChartLimits::default()).await?;
    ingest.run(&client, shutdown).await?;
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
