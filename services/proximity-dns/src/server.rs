//! The DNS side: `<service>.<namespace>.<base domain>` answered from the table or the hub;
//! every other name forwarded upstream.
//!
//! hickory-server runs the sockets, parses every message (a malformed one gets FORMERR from
//! it) and forwards; this module only decides what a name in the base domain means.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::runtime::Time;
use hickory_server::proto::op::{
    Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode,
};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::{Catalog, MessageResponseBuilder};
use optikon_core::message::{ApiVersion, DnsAnswer, DnsResolveRequest, Reply, decode};
use optikon_core::proximity::Location;
use optikon_core::subject;

use crate::site::LocalServices;
use crate::table::{ServiceName, SharedFleet};

/// Where answers come from.
pub enum Source {
    /// At the hub: the whole fleet's table, distances measured from the hub's own position.
    Hub {
        fleet: SharedFleet,
        location: Option<Location>,
    },
    /// At a site: its own cluster's Services first; for the rest, the hub is asked which
    /// sites are nearest to this one.
    Site {
        cluster: String,
        local: LocalServices,
        nats: async_nats::Client,
    },
}

/// Why a name in the base domain has no answer.
#[derive(Debug)]
enum Lookup {
    Found(Vec<IpAddr>),
    NoSuchName,
    /// The hub could not be asked; a client should try again, not cache a negative answer.
    Failed(String),
}

/// How long a site waits for the hub's answer before answering SERVFAIL.
const HUB_TIMEOUT: Duration = Duration::from_secs(2);

pub struct ProximityDns {
    base: LowerName,
    base_name: Name,
    ttl: u32,
    source: Source,
    /// Names outside the base domain, when an upstream is configured.
    upstream: Option<Catalog>,
    soa: Record,
}

impl ProximityDns {
    pub fn new(base: Name, ttl: u32, source: Source, upstream: Option<Catalog>) -> Self {
        let base = base.to_lowercase();
        let host = |label: &str| {
            Name::from_ascii(label)
                .and_then(|n| n.append_domain(&base))
                .unwrap_or_else(|_| base.clone())
        };
        // Negative answers are cached for the same short TTL as positive ones (RFC 2308:
        // the SOA's minimum), so a service that appears is found within one TTL.
        let soa = Record::from_rdata(
            base.clone(),
            ttl,
            RData::SOA(SOA::new(
                host("ns"),
                host("hostmaster"),
                1,
                60,
                30,
                600,
                ttl,
            )),
        );
        ProximityDns {
            base: LowerName::from(base.clone()),
            base_name: base,
            ttl,
            source,
            upstream,
            soa,
        }
    }

    /// The Service a name in the base domain stands for, if it has the shape
    /// `<service>.<namespace>.<base>`; `Err(())` for the base domain itself.
    fn service_of(&self, name: &LowerName) -> Result<Option<ServiceName>, ()> {
        let name = Name::from(name.clone());
        let extra = usize::from(name.num_labels()) - usize::from(self.base_name.num_labels());
        if extra == 0 {
            return Err(());
        }
        if extra != 2 {
            return Ok(None);
        }
        let labels: Vec<String> = name
            .iter()
            .take(2)
            .map(|l| String::from_utf8_lossy(l).to_ascii_lowercase())
            .collect();
        Ok(Some(ServiceName {
            name: labels[0].clone(),
            namespace: labels[1].clone(),
        }))
    }

    async fn lookup(&self, service: &ServiceName) -> Lookup {
        match &self.source {
            Source::Hub { fleet, location } => {
                let sites = fleet
                    .read()
                    .expect("fleet lock")
                    .answer(*location, None, service);
                found(sites.into_iter().flat_map(|s| s.addresses).collect())
            }
            Source::Site {
                cluster,
                local,
                nats,
            } => {
                let own = local
                    .read()
                    .expect("local services lock")
                    .get(service)
                    .cloned();
                if let Some(addresses) = own {
                    return found(addresses);
                }
                match ask_hub(nats, cluster, service).await {
                    Ok(answer) => {
                        found(answer.sites.into_iter().flat_map(|s| s.addresses).collect())
                    }
                    Err(error) => Lookup::Failed(error),
                }
            }
        }
    }

    async fn answer<R: ResponseHandler>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let Ok(info) = request.request_info() else {
            return send(request, response, ResponseCode::FormErr, &[], &[]).await;
        };
        let query_type = info.query.query_type();
        let (code, answers, authority) = match self.service_of(info.query.name()) {
            Err(()) if query_type == RecordType::SOA => {
                (ResponseCode::NoError, vec![self.soa.clone()], vec![])
            }
            Err(()) => (ResponseCode::NoError, vec![], vec![self.soa.clone()]),
            Ok(None) => (ResponseCode::NXDomain, vec![], vec![self.soa.clone()]),
            Ok(Some(service)) => match self.lookup(&service).await {
                Lookup::Found(addresses) => {
                    let name = Name::from(info.query.name().clone());
                    let records: Vec<Record> = addresses
                        .into_iter()
                        .filter_map(|address| match (address, query_type) {
                            (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => {
                                Some(RData::A(A(v4)))
                            }
                            (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => {
                                Some(RData::AAAA(AAAA(v6)))
                            }
                            _ => None,
                        })
                        .map(|data| Record::from_rdata(name.clone(), self.ttl, data))
                        .collect();
                    // The name exists, only not with this type: NODATA, not NXDOMAIN.
                    let authority = if records.is_empty() {
                        vec![self.soa.clone()]
                    } else {
                        vec![]
                    };
                    (ResponseCode::NoError, records, authority)
                }
                Lookup::NoSuchName => (ResponseCode::NXDomain, vec![], vec![self.soa.clone()]),
                Lookup::Failed(error) => {
                    tracing::warn!(service = %service.name, namespace = %service.namespace, %error, "cannot answer from the hub");
                    (ResponseCode::ServFail, vec![], vec![])
                }
            },
        };
        let edns = request.edns.as_ref().map(|asked| {
            let mut edns = Edns::new();
            edns.set_max_payload(asked.max_payload().max(512));
            edns
        });
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &edns {
            builder.edns(edns);
        }
        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.authoritative = true;
        metadata.response_code = code;
        let message = builder.build(
            metadata,
            answers.iter(),
            [].iter(),
            authority.iter(),
            [].iter(),
        );
        match response.send_response(message).await {
            Ok(info) => info,
            Err(error) => {
                tracing::warn!(%error, "answer not sent");
                failed(request)
            }
        }
    }
}

fn found(addresses: Vec<IpAddr>) -> Lookup {
    if addresses.is_empty() {
        Lookup::NoSuchName
    } else {
        Lookup::Found(addresses)
    }
}

/// Asks the hub which sites nearest to `cluster` run `service`.
async fn ask_hub(
    nats: &async_nats::Client,
    cluster: &str,
    service: &ServiceName,
) -> Result<DnsAnswer, String> {
    let body = serde_json::to_vec(&DnsResolveRequest {
        api_version: ApiVersion,
        namespace: service.namespace.clone(),
        service: service.name.clone(),
    })
    .expect("resolve request serializes");
    let reply = tokio::time::timeout(
        HUB_TIMEOUT,
        nats.request(subject::dns_resolve(cluster), body.into()),
    )
    .await
    .map_err(|_| format!("the hub did not answer within {HUB_TIMEOUT:?}"))?
    .map_err(|e| format!("asking the hub: {e}"))?;
    decode::<Reply<DnsAnswer>>("resolve reply", &reply.payload)
        .map_err(|e| e.to_string())?
        .into_result()
        .map_err(|e| e.to_string())
}

async fn send<R: ResponseHandler>(
    request: &Request,
    mut response: R,
    code: ResponseCode,
    answers: &[Record],
    authority: &[Record],
) -> ResponseInfo {
    let builder = MessageResponseBuilder::from_message_request(request);
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = code;
    let message = builder.build(
        metadata,
        answers.iter(),
        [].iter(),
        authority.iter(),
        [].iter(),
    );
    response
        .send_response(message)
        .await
        .unwrap_or_else(|error| {
            tracing::warn!(%error, "answer not sent");
            failed(request)
        })
}

fn failed(request: &Request) -> ResponseInfo {
    let mut metadata = Metadata::response_from_request(&request.metadata);
    metadata.response_code = ResponseCode::ServFail;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

#[async_trait::async_trait]
impl RequestHandler for ProximityDns {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        if request.metadata.message_type != MessageType::Query
            || request.metadata.op_code != OpCode::Query
        {
            return send(request, response, ResponseCode::NotImp, &[], &[]).await;
        }
        let in_base = request
            .request_info()
            .map(|info| self.base.zone_of(info.query.name()))
            .unwrap_or(true);
        if in_base {
            return self.answer(request, response).await;
        }
        match &self.upstream {
            Some(catalog) => catalog.handle_request::<R, T>(request, response).await,
            None => send(request, response, ResponseCode::Refused, &[], &[]).await,
        }
    }
}

/// A catalog that forwards every name to `upstream` (UDP, then TCP for long answers).
pub fn forwarder(upstream: std::net::SocketAddr) -> Result<Catalog, String> {
    use hickory_server::resolver::config::NameServerConfig;
    use hickory_server::store::forwarder::{ForwardConfig, ForwardZoneHandler};
    let mut server = NameServerConfig::udp_and_tcp(upstream.ip());
    for connection in &mut server.connections {
        connection.port = upstream.port();
    }
    let handler = ForwardZoneHandler::builder_tokio(ForwardConfig {
        name_servers: vec![server],
        options: None,
    })
    .build()?;
    let mut catalog = Catalog::new();
    catalog.upsert(LowerName::from(Name::root()), vec![Arc::new(handler)]);
    Ok(catalog)
}
