//! `selector-router`: see the library for what it does.

use clap::Parser;
use optikon_runtime::args::{NatsArgs, TelemetryArgs};

#[derive(Debug, Parser)]
#[command(about = "Routes Optikon release requests to the clusters their selector matches")]
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
        optikon_runtime::start_service(&args.nats, &args.telemetry, "selector-router").await?;
    selector_router::run(client.clone(), shutdown).await?;
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
