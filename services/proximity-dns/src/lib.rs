//! Proximity DNS: one name for a Service on every site, `<service>.<namespace>.<base domain>`,
//! answered with the nearest healthy site that runs it.
//!
//! The same binary runs at the hub and at each site:
//! - at a site it watches its own cluster's Services, answers for them itself (also while
//!   its link is down), reports them to the hub, and asks the hub for the rest;
//! - at the hub it follows the fleet's table ([`table`]), answers from it measured from its
//!   own position, and answers the sites' questions measured from theirs.
//!
//! A site asks over NATS on a subject that names it, so the hub measures from the asking
//! site's position as the registry has it, and a site can only ever ask as itself.

pub mod server;
pub mod site;
pub mod table;

use std::net::SocketAddr;
use std::time::Duration;

use futures::StreamExt;
use hickory_server::Server;
use hickory_server::proto::rr::Name;
use optikon_core::message::{ApiError, DnsAnswer, DnsResolveRequest, ErrorCode, Reply, decode};
use optikon_core::names;
use optikon_core::proximity::Location;
use optikon_core::subject;
use optikon_runtime::shutdown::Shutdown;

use crate::server::{ProximityDns, Source};
use crate::table::{ServiceName, SharedFleet};

/// Where this instance runs.
pub enum Placement {
    Hub { location: Option<Location> },
    Site { cluster: String, kube: kube::Client },
}

pub struct DnsConfig {
    pub listen: SocketAddr,
    pub base_domain: Name,
    pub ttl: u32,
    pub upstream: Option<SocketAddr>,
    pub placement: Placement,
}

#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("listen on {address}: {source}")]
    Listen {
        address: SocketAddr,
        source: std::io::Error,
    },
    #[error("upstream resolver: {0}")]
    Upstream(String),
    #[error("subscribe to site questions: {0}")]
    Subscribe(String),
}

/// Serves DNS on `config.listen` (UDP and TCP) until shutdown.
pub async fn run(
    nats: async_nats::Client,
    config: DnsConfig,
    shutdown: Shutdown,
) -> Result<(), DnsError> {
    let upstream = config
        .upstream
        .map(server::forwarder)
        .transpose()
        .map_err(DnsError::Upstream)?;
    let mut tasks = Vec::new();
    let source = match config.placement {
        Placement::Hub { location } => {
            let fleet = SharedFleet::default();
            tasks.push(tokio::spawn(table::follow(nats.clone(), fleet.clone())));
            let questions = nats
                .queue_subscribe(
                    format!("{}.*", subject::DNS_RESOLVE_PREFIX),
                    "proximity-dns".to_owned(),
                )
                .await
                .map_err(|e| DnsError::Subscribe(e.to_string()))?;
            tasks.push(tokio::spawn(answer_sites(
                nats.clone(),
                questions,
                fleet.clone(),
            )));
            Source::Hub { fleet, location }
        }
        Placement::Site { cluster, kube } => {
            let local = site::LocalServices::default();
            tasks.push(tokio::spawn(site::run(
                kube,
                nats.clone(),
                cluster.clone(),
                local.clone(),
                shutdown.clone(),
            )));
            Source::Site {
                cluster,
                local,
                nats: nats.clone(),
            }
        }
    };
    let handler = ProximityDns::new(config.base_domain.clone(), config.ttl, source, upstream);
    let mut server = Server::new(handler);
    let listen = |e| DnsError::Listen {
        address: config.listen,
        source: e,
    };
    let udp = tokio::net::UdpSocket::bind(config.listen)
        .await
        .map_err(listen)?;
    let tcp = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(listen)?;
    server.register_socket(udp);
    server.register_listener(tcp, Duration::from_secs(5), 64 * 1024);
    tracing::info!(listen = %config.listen, base = %config.base_domain, "answering DNS");
    shutdown.wait().await;
    let _ = server.shutdown_gracefully().await;
    for task in tasks {
        task.abort();
    }
    Ok(())
}

/// Answers each site's question with the sites nearest to it; the asking site is the
/// subject's last token, which only that site's identity may publish.
async fn answer_sites(
    nats: async_nats::Client,
    mut questions: async_nats::Subscriber,
    fleet: SharedFleet,
) {
    while let Some(message) = questions.next().await {
        let Some(reply) = message.reply.clone() else {
            continue;
        };
        let asker = subject::cluster_of_api_subject(subject::DNS_RESOLVE_PREFIX, &message.subject)
            .map(subject::untoken);
        let answer = match asker {
            None => Reply::Error(ApiError::new(
                ErrorCode::InvalidRequest,
                "no cluster in the subject",
            )),
            Some(asker) => resolve_for(&fleet, &asker, &message.payload),
        };
        let body = serde_json::to_vec(&answer).expect("resolve reply serializes");
        if let Err(error) = nats.publish(reply, body.into()).await {
            tracing::warn!(%error, "resolve reply not sent");
        }
    }
}

fn resolve_for(fleet: &SharedFleet, asker: &str, payload: &[u8]) -> Reply<DnsAnswer> {
    let request = match decode::<DnsResolveRequest>("resolve request", payload) {
        Ok(request) => request,
        Err(error) => {
            return Reply::Error(ApiError::new(
                ErrorCode::MalformedMessage,
                error.to_string(),
            ));
        }
    };
    if let Err(error) = names::validate_namespace(&request.namespace) {
        return Reply::Error(ApiError::new(ErrorCode::BadNamespace, error.to_string()));
    }
    if let Err(error) = names::validate_service_name(&request.service) {
        return Reply::Error(ApiError::new(ErrorCode::InvalidRequest, error.to_string()));
    }
    let fleet = fleet.read().expect("fleet lock");
    let service = ServiceName {
        namespace: request.namespace,
        name: request.service,
    };
    let asker = subject::token(asker);
    let sites = fleet.answer(fleet.location_of(&asker), Some(&asker), &service);
    Reply::Ok(DnsAnswer { sites })
}
