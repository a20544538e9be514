//! The hub's table of the fleet: where each site is, whether it is up, and what it runs.
//!
//! Followed live from three buckets: `clusters` (labels, so positions), `heartbeats`
//! (health) and `services` (what each site runs). A lookup reads only memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_nats::jetstream::kv;
use optikon_core::message::{
    ClusterRecord, DnsSite, Health, Heartbeat, ServiceEndpoint, SiteServices, Timestamp,
};
use optikon_core::proximity::{self, Candidate, Location};
use optikon_core::subject;

/// A Service by its DNS name's parts.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Default)]
struct Site {
    location: Option<Location>,
    registered: bool,
    heartbeat: Option<Heartbeat>,
    services: BTreeMap<ServiceName, Vec<IpAddr>>,
}

/// Everything the hub knows that a DNS answer depends on, keyed by cluster (KV key).
#[derive(Debug, Default)]
pub struct Fleet {
    sites: HashMap<String, Site>,
    /// Which clusters run each Service: a lookup looks at those, not at the whole fleet.
    runs: HashMap<ServiceName, BTreeSet<String>>,
    /// Grows by one whenever something an answer depends on changed: a position, a site's
    /// Services, or a site's health as its newest heartbeat says.
    epoch: u64,
    /// Answers already chosen, by Service and asker, with the epoch and time they were
    /// chosen at; only for Services some site runs, so unknown names cannot grow it.
    answers: Mutex<HashMap<(ServiceName, Option<String>), Cached>>,
}

#[derive(Debug)]
struct Cached {
    epoch: u64,
    at: Instant,
    sites: Vec<DnsSite>,
}

/// How long a chosen answer is reused while nothing it depends on changed: a site whose
/// heartbeats stop goes stale by the clock alone, so this bounds how late that shows.
pub const REUSE_ANSWERS_FOR: Duration = Duration::from_secs(1);

impl Fleet {
    pub fn set_record(&mut self, key: &str, record: Option<&ClusterRecord>) {
        self.epoch += 1;
        let site = self.sites.entry(key.to_owned()).or_default();
        site.registered = record.is_some();
        site.location = record.and_then(|r| match Location::from_labels(&r.labels) {
            Ok(location) => location,
            Err(error) => {
                tracing::warn!(cluster = %key, %error, "the site's position is not used");
                None
            }
        });
    }

    pub fn set_heartbeat(&mut self, key: &str, heartbeat: Option<Heartbeat>) {
        let now = Timestamp::now();
        let health = |hb: &Option<Heartbeat>| hb.as_ref().map(|hb| hb.health(now));
        let site = self.sites.entry(key.to_owned()).or_default();
        // Most heartbeats say what the one before said: they change no answer.
        if health(&site.heartbeat) != health(&heartbeat) {
            self.epoch += 1;
        }
        site.heartbeat = heartbeat;
    }

    pub fn set_services(&mut self, key: &str, services: Option<SiteServices>) {
        self.epoch += 1;
        let site = self.sites.entry(key.to_owned()).or_default();
        for name in std::mem::take(&mut site.services).into_keys() {
            if let Some(clusters) = self.runs.get_mut(&name) {
                clusters.remove(key);
                if clusters.is_empty() {
                    self.runs.remove(&name);
                }
            }
        }
        let endpoints = services.map(|s| s.services).unwrap_or_default();
        for ServiceEndpoint {
            namespace,
            name,
            addresses,
        } in endpoints
        {
            if addresses.is_empty() {
                continue;
            }
            let name = ServiceName { namespace, name };
            self.runs
                .entry(name.clone())
                .or_default()
                .insert(key.to_owned());
            site.services.insert(name, addresses);
        }
    }

    /// The position of a registered site, from its labels.
    pub fn location_of(&self, key: &str) -> Option<Location> {
        self.sites.get(key).and_then(|s| s.location)
    }

    /// [`Fleet::resolve`] at the time now, reusing an answer chosen less than
    /// [`REUSE_ANSWERS_FOR`] ago if nothing it depends on changed since.
    pub fn answer(
        &self,
        origin: Option<Location>,
        asker: Option<&str>,
        service: &ServiceName,
    ) -> Vec<DnsSite> {
        if !self.runs.contains_key(service) {
            return Vec::new();
        }
        let key = (service.clone(), asker.map(str::to_owned));
        let mut answers = self.answers.lock().expect("answers lock");
        if let Some(cached) = answers.get(&key)
            && cached.epoch == self.epoch
            && cached.at.elapsed() < REUSE_ANSWERS_FOR
        {
            return cached.sites.clone();
        }
        let sites = self.resolve(origin, asker, service, Timestamp::now());
        answers.insert(
            key,
            Cached {
                epoch: self.epoch,
                at: Instant::now(),
                sites: sites.clone(),
            },
        );
        sites
    }

    /// The sites that answer `service` asked from `origin`, leaving out `asker` itself and
    /// every site that is not registered and healthy at `now`.
    pub fn resolve(
        &self,
        origin: Option<Location>,
        asker: Option<&str>,
        service: &ServiceName,
        now: Timestamp,
    ) -> Vec<DnsSite> {
        let Some(clusters) = self.runs.get(service) else {
            return Vec::new();
        };
        let candidates = clusters
            .iter()
            .filter(|cluster| Some(cluster.as_str()) != asker)
            .filter_map(|cluster| {
                let site = self.sites.get(cluster)?;
                let healthy = site
                    .heartbeat
                    .as_ref()
                    .is_some_and(|hb| hb.health(now) == Health::Healthy);
                (site.registered && healthy).then_some(Candidate {
                    cluster: cluster.as_str(),
                    location: site.location,
                    addresses: site.services.get(service)?,
                })
            })
            .collect();
        proximity::choose(origin, candidates)
            .into_iter()
            .map(|chosen| DnsSite {
                cluster: chosen.cluster.to_owned(),
                addresses: chosen.addresses.clone(),
                distance_km: chosen.distance_km,
            })
            .collect()
    }
}

/// The table, shared by the DNS server and the hub's resolve responder.
pub type SharedFleet = Arc<RwLock<Fleet>>;

/// Follows the three buckets into `fleet` until the process ends.
pub async fn follow(nats: async_nats::Client, fleet: SharedFleet) {
    let js = optikon_runtime::jetstream(nats.clone());
    let clusters = bucket(&js, subject::CLUSTERS_BUCKET).await;
    let services = bucket(&js, subject::SERVICES_BUCKET).await;
    let records = {
        let fleet = fleet.clone();
        optikon_runtime::kv::follow_bucket(clusters, "cluster registry", move |entry| {
            let record = put_value::<ClusterRecord>(&entry);
            fleet
                .write()
                .expect("fleet lock")
                .set_record(&entry.key, record.as_ref());
        })
    };
    let beats = follow_heartbeats(js.clone(), nats, fleet.clone());
    let runs = {
        let fleet = fleet.clone();
        optikon_runtime::kv::follow_bucket(services, "site services", move |entry| {
            let services = put_value::<SiteServices>(&entry).filter(|s| {
                // A site writes only its own key (the hub's permissions); a body naming
                // another cluster is a site's mistake and is not believed.
                let own = subject::token(&s.cluster) == entry.key;
                if !own {
                    tracing::warn!(key = %entry.key, cluster = %s.cluster, "services entry names another cluster; ignored");
                }
                own
            });
            fleet
                .write()
                .expect("fleet lock")
                .set_services(&entry.key, services);
        })
    };
    tokio::join!(records, beats, runs);
}

/// Heartbeats as they are stored, by a plain subscription to the subjects the bucket stores
/// them under: the hub's server hands each to this one subscriber as it stores it, with
/// none of an ordered consumer's per-message flow control, which every site's heartbeat
/// would otherwise cost the hub. The newest of each site is read once at the start; one
/// missed while reconnecting is replaced by that site's next.
async fn follow_heartbeats(
    js: async_nats::jetstream::Context,
    nats: async_nats::Client,
    fleet: SharedFleet,
) {
    use futures::StreamExt;
    let live = loop {
        match nats
            .subscribe(format!("$KV.{}.*", subject::HEARTBEATS_BUCKET))
            .await
        {
            Ok(live) => break live,
            Err(error) => {
                tracing::warn!(%error, "cannot subscribe to heartbeats; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    };
    let _ = nats.flush().await;
    bucket(&js, subject::HEARTBEATS_BUCKET).await;
    match optikon_runtime::kv::latest_values(&js, subject::HEARTBEATS_BUCKET, ">").await {
        Ok(values) => {
            let mut fleet = fleet.write().expect("fleet lock");
            for (key, value) in values {
                if let Ok(heartbeat) = serde_json::from_slice::<Heartbeat>(&value) {
                    fleet.set_heartbeat(&key, Some(heartbeat));
                }
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot read the newest heartbeats; live ones fill in")
        }
    }
    let prefix = format!("$KV.{}.", subject::HEARTBEATS_BUCKET);
    let mut live = live;
    while let Some(message) = live.next().await {
        let Some(key) = message.subject.strip_prefix(&prefix) else {
            continue;
        };
        // A deleted or purged entry comes as an empty body with a KV-Operation header.
        let heartbeat = serde_json::from_slice::<Heartbeat>(&message.payload).ok();
        fleet
            .write()
            .expect("fleet lock")
            .set_heartbeat(key, heartbeat);
    }
}

/// The bucket, waiting until it exists (the router makes the hub's buckets).
async fn bucket(js: &async_nats::jetstream::Context, name: &str) -> kv::Store {
    loop {
        match js.get_key_value(name).await {
            Ok(store) => return store,
            Err(error) => {
                tracing::warn!(bucket = name, %error, "waiting for the hub's bucket");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

fn put_value<T: serde::de::DeserializeOwned>(entry: &kv::Entry) -> Option<T> {
    match entry.operation {
        kv::Operation::Put => match serde_json::from_slice(&entry.value) {
            Ok(value) => Some(value),
            Err(error) => {
                tracing::warn!(key = %entry.key, bucket = %entry.bucket, %error, "unreadable entry ignored");
                None
            }
        },
        kv::Operation::Delete | kv::Operation::Purge => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use optikon_core::message::ApiVersion;

    fn record(name: &str, lat: &str, long: &str) -> ClusterRecord {
        ClusterRecord {
            api_version: ApiVersion,
            name: name.into(),
            domain: name.into(),
            labels: [
                ("lat".to_owned(), lat.to_owned()),
                ("long".to_owned(), long.to_owned()),
            ]
            .into(),
            registered_at: Timestamp::now(),
            last_heartbeat: None,
        }
    }

    fn heartbeat(name: &str, at: Timestamp) -> Heartbeat {
        Heartbeat {
            api_version: ApiVersion,
            cluster: name.into(),
            labels: BTreeMap::new(),
            api_ready: true,
            nodes_ready: 1,
            nodes_total: 1,
            pods_total: 0,
            pods_by_phase: BTreeMap::new(),
            kubernetes_version: None,
            error: None,
            interval_seconds: 5,
            at,
        }
    }

    fn runs(name: &str, ip: &str) -> SiteServices {
        SiteServices {
            api_version: ApiVersion,
            cluster: name.into(),
            services: vec![ServiceEndpoint {
                namespace: "shop".into(),
                name: "web".into(),
                addresses: vec![ip.parse().unwrap()],
            }],
            at: Timestamp::now(),
        }
    }

    fn web() -> ServiceName {
        ServiceName {
            namespace: "shop".into(),
            name: "web".into(),
        }
    }

    /// Asked from here, Berlin is nearer than Lisbon.
    const COPENHAGEN: Option<Location> = Some(Location {
        lat: 55.68,
        long: 12.57,
    });

    /// Berlin and Lisbon registered, healthy at `now`, each running shop/web.
    fn berlin_and_lisbon(now: Timestamp) -> Fleet {
        let mut fleet = Fleet::default();
        for (name, lat, long, ip) in [
            ("berlin", "52.52", "13.40", "192.0.2.1"),
            ("lisbon", "38.72", "9.14W", "192.0.2.2"),
        ] {
            fleet.set_record(name, Some(&record(name, lat, long)));
            fleet.set_heartbeat(name, Some(heartbeat(name, now)));
            fleet.set_services(name, Some(runs(name, ip)));
        }
        fleet
    }

    fn clusters(sites: &[DnsSite]) -> Vec<&str> {
        sites.iter().map(|s| s.cluster.as_str()).collect()
    }

    #[test]
    fn reused_answers_follow_every_change_that_matters() {
        let now = Timestamp::now();
        let mut fleet = berlin_and_lisbon(now);
        assert_eq!(
            clusters(&fleet.answer(COPENHAGEN, None, &web())),
            ["berlin"]
        );
        // A heartbeat that says the same changes nothing, and the answer is reused.
        let epoch = fleet.epoch;
        fleet.set_heartbeat("berlin", Some(heartbeat("berlin", Timestamp::now())));
        assert_eq!(fleet.epoch, epoch);
        // One that says the API server is down changes the answer at once.
        let mut down = heartbeat("berlin", Timestamp::now());
        down.api_ready = false;
        fleet.set_heartbeat("berlin", Some(down));
        assert_eq!(
            clusters(&fleet.answer(COPENHAGEN, None, &web())),
            ["lisbon"]
        );
        // So does a site that stops running it, or a move.
        fleet.set_heartbeat("berlin", Some(heartbeat("berlin", Timestamp::now())));
        assert_eq!(
            clusters(&fleet.answer(COPENHAGEN, None, &web())),
            ["berlin"]
        );
        fleet.set_record("berlin", Some(&record("berlin", "35.68", "139.69")));
        assert_eq!(
            clusters(&fleet.answer(COPENHAGEN, None, &web())),
            ["lisbon"]
        );
        // Unknown names are not remembered.
        let unknown = ServiceName {
            namespace: "x".into(),
            name: "y".into(),
        };
        assert!(fleet.answer(COPENHAGEN, None, &unknown).is_empty());
        assert_eq!(fleet.answers.lock().unwrap().len(), 1);
    }

    #[test]
    fn only_registered_healthy_sites_answer() {
        let now = Timestamp::now();
        let mut fleet = berlin_and_lisbon(now);
        assert_eq!(
            clusters(&fleet.resolve(COPENHAGEN, None, &web(), now)),
            ["berlin"]
        );
        // Berlin's heartbeats stop: after three intervals Lisbon answers.
        let later = Timestamp(now.0 + time::Duration::seconds(16));
        fleet.set_heartbeat("lisbon", Some(heartbeat("lisbon", later)));
        assert_eq!(
            clusters(&fleet.resolve(COPENHAGEN, None, &web(), later)),
            ["lisbon"]
        );
        // The asker itself is left out; an unregistered site is not believed.
        assert!(
            fleet
                .resolve(COPENHAGEN, Some("lisbon"), &web(), later)
                .is_empty()
        );
        fleet.set_record("lisbon", None);
        assert!(fleet.resolve(COPENHAGEN, None, &web(), later).is_empty());
        // A site that stops running it leaves the index.
        fleet.set_services("berlin", None);
        assert!(
            fleet
                .runs
                .get(&web())
                .is_some_and(|c| !c.contains("berlin"))
        );
        fleet.set_services("lisbon", None);
        assert!(fleet.runs.is_empty());
    }
}
