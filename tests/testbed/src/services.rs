//! Optikon's own services, started against the test bed as real processes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::identity::HubRole;
use crate::process::ChildProcess;
use crate::{Error, Testbed};

/// The gateway's listen address variable; the test bed picks a free port for it.
pub const GATEWAY_LISTEN_ENV: &str = "OPTIKON_GATEWAY_LISTEN";
/// proximity-dns's listen address variable (UDP and TCP); the test bed picks a free port.
pub const DNS_LISTEN_ENV: &str = "OPTIKON_DNS_LISTEN";
/// The base domain under which the test bed's proximity DNS names every Service.
pub const TESTBED_DNS_DOMAIN: &str = "optikon.test";
/// Seconds between each test-bed site's heartbeats.
pub const TESTBED_HEARTBEAT_SECONDS: u64 = 5;

/// How to start one service process.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// Unique in the test bed, e.g. `selector-router` or `per-cluster-executor@copenhagen-1`.
    pub name: String,
    pub binary: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl ServiceSpec {
    /// The hub services, then an executor and a prober per site.
    pub fn all(testbed: &Testbed) -> Result<Vec<ServiceSpec>, Error> {
        let bin = service_bin_dir()?;
        // Each hub service connects as its own role.
        let hub = |name: &str, role: HubRole| ServiceSpec {
            name: name.to_owned(),
            binary: bin.join(name),
            args: Vec::new(),
            env: vec![("OPTIKON_NATS_URL".into(), testbed.role_url(role))],
        };
        let mut specs = vec![
            hub("selector-router", HubRole::Router),
            hub("chart-ingest", HubRole::ChartIngest),
        ];
        let mut gateway = hub("gateway", HubRole::Gateway);
        gateway.env.push((
            GATEWAY_LISTEN_ENV.into(),
            format!("127.0.0.1:{}", crate::free_port()?),
        ));
        specs.push(gateway);
        let mut dns = hub("proximity-dns", HubRole::ProximityDns);
        dns.env.extend(dns_env()?);
        specs.push(dns);
        for edge in &testbed.edges {
            let Some(cluster) = &edge.cluster else {
                continue;
            };
            let env = vec![
                ("OPTIKON_NATS_URL".to_owned(), edge.nats_url()),
                ("OPTIKON_CLUSTER".to_owned(), edge.site.name.clone()),
                (
                    "KUBECONFIG".to_owned(),
                    cluster.kubeconfig.display().to_string(),
                ),
                (
                    "OPTIKON_HELM".to_owned(),
                    testbed.tools().get("helm")?.display().to_string(),
                ),
            ];
            let labels = edge
                .site
                .labels
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",");
            specs.push(ServiceSpec {
                name: format!("per-cluster-executor@{}", edge.site.name),
                binary: bin.join("per-cluster-executor"),
                args: Vec::new(),
                env: env.clone(),
            });
            let mut dns_site_env = env.clone();
            dns_site_env.extend(dns_env()?);
            specs.push(ServiceSpec {
                name: format!("proximity-dns@{}", edge.site.name),
                binary: bin.join("proximity-dns"),
                args: Vec::new(),
                env: dns_site_env,
            });
            let mut prober_env = env;
            prober_env.push(("OPTIKON_CLUSTER_LABELS".into(), labels));
            // Quicker than the prober's default, so that tests see a cut site go
            // unreachable sooner; the suites' timings count on this interval.
            prober_env.push((
                "OPTIKON_HEARTBEAT_SECONDS".into(),
                TESTBED_HEARTBEAT_SECONDS.to_string(),
            ));
            specs.push(ServiceSpec {
                name: format!("health-prober@{}", edge.site.name),
                binary: bin.join("health-prober"),
                args: Vec::new(),
                env: prober_env,
            });
        }
        Ok(specs)
    }
}

/// A free port for both UDP and TCP, and the base domain, for one proximity-dns.
fn dns_env() -> Result<Vec<(String, String)>, Error> {
    Ok(vec![
        (
            DNS_LISTEN_ENV.into(),
            format!("127.0.0.1:{}", crate::free_udp_and_tcp_port()?),
        ),
        ("OPTIKON_DNS_BASE_DOMAIN".into(), TESTBED_DNS_DOMAIN.into()),
    ])
}

/// A running service.
#[derive(Debug)]
pub struct ServiceProcess {
    pub spec: ServiceSpec,
    process: ChildProcess,
    log: PathBuf,
}

impl ServiceProcess {
    pub fn start(spec: &ServiceSpec, dir: &Path) -> Result<Self, Error> {
        if !spec.binary.is_file() {
            return Err(Error::Config(format!(
                "service binary {} missing: run `cargo build --workspace` first (or set OPTIKON_BIN_DIR)",
                spec.binary.display()
            )));
        }
        let mut command = Command::new(&spec.binary);
        command.args(&spec.args);
        for (k, v) in &spec.env {
            command.env(k, v);
        }
        command.env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
        );
        let log = dir.join(format!("{}.log", spec.name.replace('@', "-")));
        let process = ChildProcess::spawn(&spec.name, command, &log)?;
        Ok(ServiceProcess {
            spec: spec.clone(),
            process,
            log,
        })
    }

    pub fn log(&self) -> &Path {
        &self.log
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sets (or replaces) one environment variable of the service, e.g. a shorter interval
    /// for a test; it takes effect at the next [`ServiceProcess::restart`].
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.spec.env.retain(|(k, _)| k != key);
        self.spec.env.push((key.to_owned(), value.to_owned()));
    }

    /// SIGKILL: a crash.
    pub fn kill(&mut self) {
        self.process.kill();
    }

    /// A graceful stop and a fresh start with the same settings.
    pub fn restart(&mut self) -> Result<(), Error> {
        self.process.stop(Duration::from_secs(10));
        let dir = self.log.parent().unwrap_or(Path::new(".")).to_owned();
        *self = ServiceProcess::start(&self.spec, &dir)?;
        Ok(())
    }

    pub fn check_running(&mut self) -> Result<(), Error> {
        self.process.check_running()
    }
}

/// Where the workspace's service binaries are: `$OPTIKON_BIN_DIR`, else next to the running
/// executable (`target/debug`, also for test binaries in `target/debug/deps`).
pub fn service_bin_dir() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os("OPTIKON_BIN_DIR") {
        return Ok(PathBuf::from(dir));
    }
    let exe = std::env::current_exe().map_err(|e| Error::io("find own executable", e))?;
    let mut dir = exe.parent().unwrap_or(Path::new(".")).to_owned();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}
