//! `gateway`: see the library for what it does.

use clap::Parser;
use gateway::Args;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let (nats, shutdown) =
        optikon_runtime::start_service(&args.nats, &args.telemetry, "gateway").await?;
    gateway::serve(nats.clone(), listener, args.config(), shutdown).await?;
    nats.drain().await?;
    Ok(())
}
