//! `gateway`: see the library for what it does.

use clap::Parser;
use gateway::Args;
use optikon_runtime::shutdown::Shutdown;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    optikon_runtime::telemetry::init(&args.telemetry, "gateway");
    let shutdown = Shutdown::on_signals();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let nats = optikon_runtime::connect(&args.nats, "gateway").await?;
    gateway::serve(nats.clone(), listener, args.config(), shutdown).await?;
    nats.drain().await?;
    Ok(())
}
