//! At a site: the Services its own cluster runs, watched on its API server, answered from
//! memory even while the link is down, and reported to the hub whenever they change.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Service;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use optikon_core::message::{ApiVersion, ServiceEndpoint, SiteServices, Timestamp};
use optikon_core::subject;
use optikon_runtime::shutdown::Shutdown;
use tokio::sync::watch;

use crate::table::ServiceName;

/// What this site's cluster runs with an address outside the cluster.
pub type LocalServices = Arc<RwLock<BTreeMap<ServiceName, Vec<IpAddr>>>>;

/// How often the site reports its Services again although nothing changed, so a hub that
/// lost the entry has it back soon.
const REPORT_AGAIN: Duration = Duration::from_secs(300);
/// How long a failed report waits before it is tried again.
const RETRY: Duration = Duration::from_secs(2);

/// The addresses at which clients outside the cluster reach `service`: its load balancer's
/// IPs, else its `externalIPs`. Host names of load balancers are not answered.
pub fn external_addresses(service: &Service) -> Vec<IpAddr> {
    let balanced: Vec<IpAddr> = service
        .status
        .as_ref()
        .and_then(|s| s.load_balancer.as_ref())
        .and_then(|lb| lb.ingress.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|ingress| ingress.ip.as_deref()?.parse().ok())
        .collect();
    if !balanced.is_empty() {
        return balanced;
    }
    service
        .spec
        .as_ref()
        .and_then(|s| s.external_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|ip| ip.parse().ok())
        .collect()
}

/// Watches the cluster's Services into `local` and reports each change to the hub.
pub async fn run(
    kube: kube::Client,
    nats: async_nats::Client,
    cluster: String,
    local: LocalServices,
    shutdown: Shutdown,
) {
    let (changed_tx, changed) = watch::channel(());
    let reporter = tokio::spawn(report(
        nats,
        cluster,
        local.clone(),
        changed,
        shutdown.clone(),
    ));
    let (store, writer) = reflector::store::<Service>();
    let events = reflector(
        writer,
        watcher(kube::Api::all(kube), watcher::Config::default()),
    )
    .default_backoff();
    futures::pin_mut!(events);
    // Nothing is reported before the first full list: a half-listed cluster would take
    // Services away from the hub's answers for a moment.
    let mut listed = false;
    loop {
        tokio::select! {
            event = events.next() => match event {
                Some(Ok(watcher::Event::InitDone)) => {
                    let first = !listed;
                    listed = true;
                    if first {
                        // Report even an empty cluster once, so the hub's entry is current.
                        update(&local, &store, &changed_tx, true);
                        continue;
                    }
                }
                Some(Ok(watcher::Event::Init | watcher::Event::InitApply(_))) => continue,
                Some(Ok(watcher::Event::Apply(_) | watcher::Event::Delete(_))) => {}
                Some(Err(error)) => {
                    tracing::warn!(%error, "watching the cluster's Services");
                    continue;
                }
                None => break,
            },
            _ = shutdown.wait() => break,
        }
        if listed {
            update(&local, &store, &changed_tx, false);
        }
    }
    drop(changed_tx);
    let _ = reporter.await;
}

/// Recomputes the site's table from the reflector's store; tells the reporter when it
/// changed (or always, with `force`).
fn update(
    local: &LocalServices,
    store: &reflector::Store<Service>,
    changed: &watch::Sender<()>,
    force: bool,
) {
    let mut now: BTreeMap<ServiceName, Vec<IpAddr>> = BTreeMap::new();
    for service in store.state() {
        let addresses = external_addresses(&service);
        let (Some(namespace), Some(name)) = (
            service.metadata.namespace.clone(),
            service.metadata.name.clone(),
        ) else {
            continue;
        };
        if !addresses.is_empty() {
            now.insert(ServiceName { namespace, name }, addresses);
        }
    }
    let mut table = local.write().expect("local services lock");
    if *table != now || force {
        tracing::info!(services = now.len(), "the cluster's Services changed");
        *table = now;
        drop(table);
        let _ = changed.send(());
    }
}

/// Puts the site's Services into its entry at the hub after every change, again every
/// [`REPORT_AGAIN`], and until the hub has stored it.
async fn report(
    nats: async_nats::Client,
    cluster: String,
    local: LocalServices,
    mut changed: watch::Receiver<()>,
    shutdown: Shutdown,
) {
    // Nothing to report before the first full list (see `run`).
    if changed.changed().await.is_err() {
        return;
    }
    loop {
        let entry = SiteServices {
            api_version: ApiVersion,
            cluster: cluster.clone(),
            services: local
                .read()
                .expect("local services lock")
                .iter()
                .map(|(name, addresses)| ServiceEndpoint {
                    namespace: name.namespace.clone(),
                    name: name.name.clone(),
                    addresses: addresses.clone(),
                })
                .collect(),
            at: Timestamp::now(),
        };
        let wait = match put(&nats, &cluster, &entry).await {
            Ok(()) => {
                tracing::info!(
                    services = entry.services.len(),
                    "reported the site's Services to the hub"
                );
                REPORT_AGAIN
            }
            Err(error) => {
                tracing::warn!(%error, "the site's Services are not reported yet");
                RETRY
            }
        };
        tokio::select! {
            result = changed.changed() => {
                if result.is_err() {
                    return;
                }
                // A burst of changes (a chart installing ten Services) is one report.
                tokio::time::sleep(Duration::from_millis(200)).await;
                changed.borrow_and_update();
            }
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.wait() => return,
        }
    }
}

/// One KV put into the site's own key at the hub, waiting for the hub's acknowledgement.
async fn put(nats: &async_nats::Client, cluster: &str, entry: &SiteServices) -> Result<(), String> {
    let body = serde_json::to_vec(entry).expect("site services serialize");
    let reply = tokio::time::timeout(
        Duration::from_secs(5),
        nats.request(subject::services_put(cluster), body.into()),
    )
    .await
    .map_err(|_| "the hub did not acknowledge".to_owned())?
    .map_err(|e| e.to_string())?;
    let ack: serde_json::Value = serde_json::from_slice(&reply.payload)
        .map_err(|e| format!("unreadable acknowledgement: {e}"))?;
    match ack.get("error") {
        Some(error) => Err(format!("the hub refused the entry: {error}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        LoadBalancerIngress, LoadBalancerStatus, ServiceSpec, ServiceStatus,
    };

    #[test]
    fn load_balancer_addresses_come_before_external_ips() {
        let mut service = Service {
            spec: Some(ServiceSpec {
                external_ips: Some(vec!["192.0.2.7".into(), "not-an-ip".into()]),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(
            external_addresses(&service),
            ["192.0.2.7".parse::<IpAddr>().unwrap()]
        );
        service.status = Some(ServiceStatus {
            load_balancer: Some(LoadBalancerStatus {
                ingress: Some(vec![
                    LoadBalancerIngress {
                        ip: Some("2001:db8::1".into()),
                        ..Default::default()
                    },
                    LoadBalancerIngress {
                        hostname: Some("lb.example".into()),
                        ..Default::default()
                    },
                ]),
            }),
            ..Default::default()
        });
        assert_eq!(
            external_addresses(&service),
            ["2001:db8::1".parse::<IpAddr>().unwrap()]
        );
        assert!(external_addresses(&Service::default()).is_empty());
    }
}
