//! `proximity-dns`: see the library for what it does.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use hickory_server::proto::rr::Name;
use optikon_core::proximity::Location;
use optikon_runtime::args::{NatsArgs, TelemetryArgs};
use proximity_dns::{DnsConfig, Placement};

#[derive(Debug, Parser)]
#[command(
    about = "Answers <service>.<namespace>.<base domain> with the nearest healthy site that runs it"
)]
struct Args {
    #[command(flatten)]
    nats: NatsArgs,
    #[command(flatten)]
    telemetry: TelemetryArgs,
    /// Address to answer DNS on, UDP and TCP.
    #[arg(long, env = "OPTIKON_DNS_LISTEN", default_value = "127.0.0.1:5353")]
    listen: SocketAddr,
    /// The domain under which every Service is named.
    #[arg(
        long,
        env = "OPTIKON_DNS_BASE_DOMAIN",
        default_value = "optikon.internal"
    )]
    base_domain: String,
    /// Seconds clients may cache an answer: short, so they follow a site going away.
    #[arg(long, env = "OPTIKON_DNS_TTL", default_value_t = 5)]
    ttl: u32,
    /// Where names outside the base domain go (`ip:port`); without it they are refused.
    #[arg(long, env = "OPTIKON_DNS_UPSTREAM")]
    upstream: Option<SocketAddr>,
    /// Run at this site (its cluster name); without it, run at the hub.
    #[arg(long, env = "OPTIKON_CLUSTER")]
    cluster: Option<String>,
    /// The hub's latitude, from which its answers are measured (degrees, or with N/S).
    #[arg(
        long,
        env = "OPTIKON_DNS_LAT",
        requires = "long",
        conflicts_with = "cluster"
    )]
    lat: Option<String>,
    /// The hub's longitude (degrees, or with E/W).
    #[arg(
        long,
        env = "OPTIKON_DNS_LONG",
        requires = "lat",
        conflicts_with = "cluster"
    )]
    long: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let base_domain = Name::from_ascii(&args.base_domain)
        .ok()
        .filter(|n| n.num_labels() > 0)
        .with_context(|| {
            format!(
                "--base-domain {:?} is not a domain name (e.g. optikon.internal)",
                args.base_domain
            )
        })?;
    let location = match (&args.lat, &args.long) {
        (Some(lat), Some(long)) => Some(Location::parse(lat, long)?),
        _ => None,
    };
    let (nats, shutdown, placement) = match &args.cluster {
        Some(cluster) => {
            optikon_core::names::validate_cluster_name(cluster)?;
            let (nats, shutdown) = optikon_runtime::start_edge_service(
                &args.nats,
                &args.telemetry,
                "proximity-dns",
                cluster,
            )
            .await?;
            let kube = kube::Client::try_default().await?;
            let placement = Placement::Site {
                cluster: cluster.clone(),
                kube,
            };
            (nats, shutdown, placement)
        }
        None => {
            let (nats, shutdown) =
                optikon_runtime::start_service(&args.nats, &args.telemetry, "proximity-dns")
                    .await?;
            (nats, shutdown, Placement::Hub { location })
        }
    };
    let config = DnsConfig {
        listen: args.listen,
        base_domain,
        ttl: args.ttl,
        upstream: args.upstream,
        placement,
    };
    proximity_dns::run(nats.clone(), config, shutdown).await?;
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
