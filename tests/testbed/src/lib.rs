//! The test bed: real parts on loopback ports, started and stopped by one owner.
//!
//! A hub nats-server (JetStream domain `hub`) and, per edge site, a leaf nats-server with its
//! own JetStream domain, a cuttable link to the hub, and a real Kubernetes cluster. Everything
//! is stopped when the [`Testbed`] is dropped (or the process exits). `optikon-testbed up`
//! runs the same thing from a shell; integration tests use it through [`Testbed::start`].

pub mod cluster;
pub mod dns;
pub mod identity;
pub mod link;
pub mod nats;
pub mod process;
pub mod services;
pub mod tools;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cluster::KubeCluster;
pub use crate::identity::HubRole;
use crate::identity::{NkeyUser, TlsFiles};
use crate::link::LinkProxy;
use crate::nats::{ClusterScope, EdgeCredentials, NatsServer};
use crate::services::{ServiceProcess, ServiceSpec};
use crate::tools::Tools;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error(
        "{name} not found in {dir}: run scripts/install-tools (or set OPTIKON_TOOLS to where it is)"
    )]
    MissingTool { name: String, dir: PathBuf },
    #[error("{name} exited ({status}); log {log}:\n{tail}")]
    Exited {
        name: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("timed out: {0}")]
    Timeout(String),
    #[error("{0}")]
    Config(String),
    #[error("no edge site named {0:?} in this test bed")]
    UnknownSite(String),
}

impl Error {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// An edge site to start: a cluster name and its labels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Site {
    pub name: String,
    pub labels: BTreeMap<String, String>,
}

impl Site {
    pub fn new(name: &str, labels: &[(&str, &str)]) -> Self {
        Site {
            name: name.to_owned(),
            labels: labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    /// The three sites of the original Optikon demo.
    pub fn demo() -> Vec<Site> {
        vec![
            Site::new(
                "copenhagen-1",
                &[("ID", "123"), ("Kubecon", "True"), ("Region", "Europe")],
            ),
            Site::new(
                "copenhagen-2",
                &[("ID", "456"), ("Kubecon", "True"), ("Region", "Europe")],
            ),
            Site::new("copenhagen-3", &[("ID", "789"), ("Region", "Europe")]),
        ]
    }

    /// Parses `name:k=v,k2=v2`.
    pub fn parse(s: &str) -> Result<Site, String> {
        let (name, labels) = s.split_once(':').unwrap_or((s, ""));
        optikon_core::names::validate_cluster_name(name).map_err(|e| e.to_string())?;
        let labels = optikon_core::names::parse_labels(labels).map_err(|e| e.to_string())?;
        Ok(Site {
            name: name.to_owned(),
            labels,
        })
    }
}

#[derive(Debug, Clone)]
pub struct TestbedConfig {
    pub sites: Vec<Site>,
    /// Start a Kubernetes cluster per site (NATS-only tests leave this off).
    pub clusters: bool,
    /// Start Optikon's services (hub services plus an executor and prober per site).
    pub services: bool,
    /// Where configs, stores and logs go; a fresh temporary directory if `None`.
    pub dir: Option<PathBuf>,
    /// Keep `dir` after stopping (for reading logs).
    pub keep_dir: bool,
    /// Each site's leaf node may carry many clusters (the scale benchmark's simulated
    /// edges) instead of the one named like the site.
    pub multi_cluster_sites: bool,
}

impl Default for TestbedConfig {
    fn default() -> Self {
        TestbedConfig {
            sites: Site::demo(),
            clusters: true,
            services: false,
            dir: None,
            keep_dir: std::env::var_os("OPTIKON_KEEP_TESTBED").is_some(),
            multi_cluster_sites: false,
        }
    }
}

/// How to reach everything; written to `<dir>/testbed.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestbedInfo {
    pub dir: PathBuf,
    pub hub: ServerInfo,
    pub edges: Vec<EdgeInfo>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// `nats://user:password@127.0.0.1:port`
    pub url: String,
    pub monitor: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EdgeInfo {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// The JetStream domain of the edge's leaf node.
    pub domain: String,
    /// The edge's own leaf node, for the services at that site.
    pub nats: ServerInfo,
    pub kubeconfig: Option<PathBuf>,
}

/// One edge site while it runs.
#[derive(Debug)]
pub struct EdgeSite {
    pub site: Site,
    pub leaf: NatsServer,
    pub link: LinkProxy,
    pub cluster: Option<KubeCluster>,
    /// The site's NATS identity at the hub (its leaf node dials in with it).
    pub identity: NkeyUser,
    local_password: String,
}

impl EdgeSite {
    pub fn nats_url(&self) -> String {
        format!(
            "nats://local:{}@127.0.0.1:{}",
            self.local_password, self.leaf.port
        )
    }
}

pub struct Testbed {
    dir: PathBuf,
    keep_dir: bool,
    tools: Tools,
    pub hub: NatsServer,
    roles: nats::RolePasswords,
    pub tls: TlsFiles,
    /// The hub's leafnode port (edges reach it through their relays).
    hub_leaf_port: u16,
    pub edges: Vec<EdgeSite>,
    pub services: Vec<ServiceProcess>,
    runtime_stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Testbed {
    pub fn start(config: TestbedConfig) -> Result<Self, Error> {
        let tools = Tools::locate();
        let nats_server = tools.get("nats-server")?;
        let dir = match &config.dir {
            Some(dir) => dir.clone(),
            None => std::env::temp_dir().join(format!(
                "optikon-testbed-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            )),
        };
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let (runtime, runtime_stop) = proxy_runtime()?;

        let credentials: Vec<EdgeCredentials> = config
            .sites
            .iter()
            .map(|s| {
                Ok(EdgeCredentials {
                    name: s.name.clone(),
                    identity: NkeyUser::generate()?,
                    clusters: if config.multi_cluster_sites {
                        ClusterScope::Any
                    } else {
                        ClusterScope::Own
                    },
                })
            })
            .collect::<Result<_, Error>>()?;
        let roles: nats::RolePasswords = HubRole::ALL
            .iter()
            .map(|role| (*role, nats::random_secret()))
            .collect();
        let tls = identity::make_tls(&dir)?;
        let (hub_port, hub_monitor, hub_leaf) = (free_port()?, free_port()?, free_port()?);
        let hub_config = nats::hub_config(
            hub_port,
            hub_monitor,
            hub_leaf,
            &dir.join("hub-store"),
            &tls,
            &roles,
            &credentials,
        )?;
        let hub = NatsServer::start(
            &nats_server,
            "hub",
            &dir,
            &hub_config,
            hub_port,
            hub_monitor,
        )?;

        let mut edges = Vec::new();
        for (site, creds) in config.sites.iter().zip(&credentials) {
            let link = LinkProxy::start(
                runtime.clone(),
                SocketAddr::from(([127, 0, 0, 1], free_port()?)),
                SocketAddr::from(([127, 0, 0, 1], hub_leaf)),
            )?;
            let local_password = nats::random_secret();
            let (port, monitor) = (free_port()?, free_port()?);
            let conf = nats::edge_config(
                &site.name,
                port,
                monitor,
                &dir.join(format!("{}-store", site.name)),
                link.listen_addr().port(),
                &creds.identity,
                &tls.ca,
                &local_password,
            )?;
            let leaf = NatsServer::start(&nats_server, &site.name, &dir, &conf, port, monitor)?;
            edges.push(EdgeSite {
                site: site.clone(),
                leaf,
                link,
                cluster: None,
                identity: creds.identity.clone(),
                local_password,
            });
        }

        let mut testbed = Testbed {
            dir,
            keep_dir: config.keep_dir,
            tools,
            hub,
            roles,
            tls,
            hub_leaf_port: hub_leaf,
            edges,
            services: Vec::new(),
            runtime_stop: Some(runtime_stop),
        };
        for edge in &testbed.edges {
            testbed.wait_link(&edge.site.name, true, Duration::from_secs(30))?;
        }
        if config.clusters {
            testbed.start_clusters()?;
        }
        testbed.write_info()?;
        if config.services {
            testbed.start_services()?;
        }
        Ok(testbed)
    }

    /// Starts every site's cluster, several at once: each spends most of its start waiting.
    fn start_clusters(&mut self) -> Result<(), Error> {
        let tools = self.tools.clone();
        let dir = self.dir.clone();
        let jobs: Vec<_> = self
            .edges
            .iter()
            .map(|e| e.site.name.clone())
            .map(|name| {
                let tools = tools.clone();
                let dir = dir.join(format!("{name}-cluster"));
                std::thread::spawn(move || {
                    let port = free_port()?;
                    KubeCluster::start(&tools, &name, &dir, port)
                })
            })
            .collect();
        let mut first_error = None;
        for (edge, job) in self.edges.iter_mut().zip(jobs) {
            match job.join().expect("cluster start thread") {
                Ok(cluster) => edge.cluster = Some(cluster),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn tools(&self) -> &Tools {
        &self.tools
    }

    /// The hub as an operator reaches it (the `optikon` and `nats` CLIs): what a person
    /// may do, no more. See [`Testbed::role_url`] for the other roles.
    pub fn hub_url(&self) -> String {
        self.role_url(HubRole::Operator)
    }

    /// The hub as `role` reaches it (`nats://user:password@127.0.0.1:port`).
    pub fn role_url(&self, role: HubRole) -> String {
        format!(
            "nats://{}:{}@127.0.0.1:{}",
            role.user(),
            self.roles
                .get(&role)
                .map(String::as_str)
                .unwrap_or_default(),
            self.hub.port
        )
    }

    /// The hub with the test bed's own unrestricted user, for tests that look at what
    /// happened inside it (no service connects like this).
    pub fn admin_url(&self) -> String {
        self.role_url(HubRole::Admin)
    }

    pub fn edge(&self, name: &str) -> Result<&EdgeSite, Error> {
        self.edges
            .iter()
            .find(|e| e.site.name == name)
            .ok_or_else(|| Error::UnknownSite(name.to_owned()))
    }

    fn edge_mut(&mut self, name: &str) -> Result<&mut EdgeSite, Error> {
        self.edges
            .iter_mut()
            .find(|e| e.site.name == name)
            .ok_or_else(|| Error::UnknownSite(name.to_owned()))
    }

    pub fn info(&self) -> TestbedInfo {
        TestbedInfo {
            dir: self.dir.clone(),
            hub: ServerInfo {
                url: self.hub_url(),
                monitor: format!("http://127.0.0.1:{}", self.hub.monitor_port),
            },
            edges: self
                .edges
                .iter()
                .map(|e| EdgeInfo {
                    name: e.site.name.clone(),
                    labels: e.site.labels.clone(),
                    domain: e.site.name.clone(),
                    nats: ServerInfo {
                        url: e.nats_url(),
                        monitor: format!("http://127.0.0.1:{}", e.leaf.monitor_port),
                    },
                    kubeconfig: e.cluster.as_ref().map(|c| c.kubeconfig.clone()),
                })
                .collect(),
        }
    }

    fn write_info(&self) -> Result<(), Error> {
        let path = self.dir.join("testbed.json");
        let text = serde_json::to_string_pretty(&self.info()).expect("info serializes");
        std::fs::write(&path, text).map_err(|e| Error::io(format!("write {}", path.display()), e))
    }

    /// Starts one more leaf node that dials the hub as `identity` — a stolen site's
    /// credentials in an attacker's own nats-server, for tests that try to break in.
    /// Returns the server and the URL of its local user. It is stopped when dropped.
    pub fn start_leaf_as(
        &self,
        name: &str,
        identity: &NkeyUser,
    ) -> Result<(NatsServer, String), Error> {
        let binary = self.tools.get("nats-server")?;
        let local_password = nats::random_secret();
        let (port, monitor) = (free_port()?, free_port()?);
        let conf = nats::edge_config(
            name,
            port,
            monitor,
            &self.dir.join(format!("{name}-store")),
            self.hub_leaf_port,
            identity,
            &self.tls.ca,
            &local_password,
        )?;
        let leaf = NatsServer::start(&binary, name, &self.dir, &conf, port, monitor)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.hub.connected_leafs()?.iter().any(|l| l == name) {
            if Instant::now() > deadline {
                return Err(Error::Timeout(format!(
                    "leaf {name} did not connect to the hub"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let url = format!("nats://local:{local_password}@127.0.0.1:{port}");
        Ok((leaf, url))
    }

    /// The hub's client URL without credentials.
    pub fn hub_address(&self) -> String {
        format!("nats://127.0.0.1:{}", self.hub.port)
    }

    /// Cuts an edge's link to the hub and waits until the hub sees it gone.
    pub fn cut_link(&mut self, name: &str) -> Result<(), Error> {
        self.edge_mut(name)?.link.cut();
        self.wait_link(name, false, Duration::from_secs(30))
    }

    /// Restores an edge's link and waits until its leaf node is connected again.
    pub fn restore_link(&mut self, name: &str) -> Result<(), Error> {
        self.edge_mut(name)?.link.restore()?;
        self.wait_link(name, true, Duration::from_secs(60))
    }

    /// Waits until the hub does (`up`) or does not list the edge's leaf connection.
    pub fn wait_link(&self, name: &str, up: bool, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let connected = self.hub.connected_leafs()?.iter().any(|l| l == name);
            if connected == up {
                return Ok(());
            }
            if Instant::now() > deadline {
                let state = if up { "connect" } else { "disconnect" };
                return Err(Error::Timeout(format!(
                    "leaf {name} did not {state} within {timeout:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Restarts the hub nats-server with the same config and store.
    pub fn restart_hub(&mut self) -> Result<(), Error> {
        let binary = self.tools.get("nats-server")?;
        self.hub.restart(&binary)?;
        let names: Vec<String> = self.edges.iter().map(|e| e.site.name.clone()).collect();
        for name in names {
            if self.edge(&name)?.link.is_up() {
                self.wait_link(&name, true, Duration::from_secs(60))?;
            }
        }
        Ok(())
    }

    /// Starts the hub services and, per site, an executor and a health-prober.
    pub fn start_services(&mut self) -> Result<(), Error> {
        let specs = ServiceSpec::all(self)?;
        for spec in specs {
            let process = ServiceProcess::start(&spec, &self.dir)?;
            self.services.push(process);
        }
        Ok(())
    }

    /// The gateway's base URL (`http://127.0.0.1:PORT/`), when services run.
    pub fn gateway_url(&self) -> Option<String> {
        let spec = &self
            .services
            .iter()
            .find(|s| s.spec.name == "gateway")?
            .spec;
        spec.env
            .iter()
            .find(|(k, _)| k == services::GATEWAY_LISTEN_ENV)
            .map(|(_, address)| format!("http://{address}/"))
    }

    /// Where proximity DNS answers at `site`, or at the hub for `None`, when services run.
    pub fn dns_address(&self, site: Option<&str>) -> Option<SocketAddr> {
        let name = match site {
            Some(site) => format!("proximity-dns@{site}"),
            None => "proximity-dns".to_owned(),
        };
        let spec = &self.services.iter().find(|s| s.spec.name == name)?.spec;
        spec.env
            .iter()
            .find(|(k, _)| k == services::DNS_LISTEN_ENV)
            .and_then(|(_, address)| address.parse().ok())
    }

    pub fn service_mut(&mut self, name: &str) -> Option<&mut ServiceProcess> {
        self.services.iter_mut().find(|s| s.spec.name == name)
    }

    /// Starts one more executor for `site`, a copy of the site's first one: replicas share
    /// the site's durable consumer, so this is horizontal scaling. Returns the new service's
    /// name (`per-cluster-executor@<site>#<n>`); drop it from `services` to stop it.
    pub fn add_executor_replica(&mut self, site: &str) -> Result<String, Error> {
        let first = format!("per-cluster-executor@{site}");
        let mut spec = self
            .services
            .iter()
            .find(|s| s.spec.name == first)
            .map(|s| s.spec.clone())
            .ok_or_else(|| Error::Config(format!("no executor runs at site {site:?}")))?;
        let replica = format!("{first}#");
        let mut n = 2;
        while self
            .services
            .iter()
            .any(|s| s.spec.name == format!("{replica}{n}"))
        {
            n += 1;
        }
        spec.name = format!("{replica}{n}");
        let process = ServiceProcess::start(&spec, &self.dir)?;
        self.services.push(process);
        Ok(spec.name)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        // Services first: they should see the servers go away last.
        self.services.clear();
        for edge in &mut self.edges {
            edge.cluster = None;
        }
        self.edges.clear();
        if let Some(stop) = self.runtime_stop.take() {
            let _ = stop.send(());
        }
        if !self.keep_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A runtime on a thread of its own for the link relays, independent of any test's runtime.
fn proxy_runtime() -> Result<(tokio::runtime::Handle, tokio::sync::oneshot::Sender<()>), Error> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("build link runtime", e))?;
    let handle = runtime.handle().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::Builder::new()
        .name("testbed-links".into())
        .spawn(move || {
            runtime.block_on(async {
                let _ = stopped.await;
            });
        })
        .map_err(|e| Error::io("start link thread", e))?;
    Ok((handle, stop))
}

/// A free TCP port on loopback (the OS picks; the listener is closed before use).
pub fn free_port() -> Result<u16, Error> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("find a free port", e))?;
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|e| Error::io("find a free port", e))
}

/// A port free on loopback for both UDP and TCP (a DNS server listens on both).
pub fn free_udp_and_tcp_port() -> Result<u16, Error> {
    for _ in 0..50 {
        let port = free_port()?;
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    Err(Error::Config(
        "no loopback port free for both UDP and TCP after 50 tries".into(),
    ))
}

/// A minimal HTTP/1.0 GET against a loopback port: status and body.
pub fn http_get(port: u16, path: &str) -> Result<(u16, String), Error> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .map_err(|e| Error::io(format!("connect 127.0.0.1:{port}"), e))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| Error::io("set timeout", e))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .map_err(|e| Error::io("send request", e))?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| Error::io("read response", e))?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}
