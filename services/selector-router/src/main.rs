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
    /// Requests handled at once, each for a different release; requests for one release
    /// are always handled one after the other, in the order they were published.
    #[arg(long, env = "OPTIKON_ROUTER_REQUEST_LANES", default_value_t = selector_router::RouterConfig::default().request_lanes)]
    request_lanes: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let (client, shutdown) =
        optikon_runtime::start_service(&args.nats, &args.telemetry, "selector-router").await?;
    let config = selector_router::RouterConfig {
        request_lanes: args.request_lanes.max(1),
    };
    selector_router::run(client.clone(), config, shutdown).await?;
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
