//! The benchmark's test bed: real clusters and services, one chart, and the commands the
//! parts run against them (optikon, helm, kube reads).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Pod;
use optikon_client::Client;
use optikon_core::message::{
    Action, ChartRef, Health, ReleaseRequest, ReleaseState, RequestStatus, Timestamp,
};
use optikon_testbed::{Site, Testbed, TestbedConfig};

use crate::cpu;

/// Label every benchmark site carries: which part it serves.
pub const PART_LABEL: &str = "bench";
/// The namespace every benchmark release goes to (exists on every cluster: nothing to create).
pub const NAMESPACE: &str = "default";
pub const CHART_NAME: &str = "benchapp";
pub const CHART_VERSION: &str = "0.1.0";

/// Memory one edge site needs while it runs a few small releases (docs/testbed.md: 300 MiB
/// idle, 390–435 MiB PSS with a 3-replica Deployment), rounded up.
pub const GIB_PER_SITE: f64 = 0.45;

/// helm with its homes under `work`, so the host's repositories and plugins play no part.
pub fn helm_in(helm: &Path, work: &Path) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(helm);
    let home = work.join("helm-home");
    command
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    command
}

/// The benchmark chart: what `helm create` makes, packaged by `helm package` in `work`.
pub async fn package_chart(helm: &Path, work: &Path) -> anyhow::Result<PathBuf> {
    let mut create = helm_in(helm, work);
    create.current_dir(work).args(["create", CHART_NAME]);
    run(create).await?.ok("helm create")?;
    let mut package = helm_in(helm, work);
    package
        .current_dir(work)
        .args(["package", CHART_NAME, "--version", CHART_VERSION]);
    run(package).await?.ok("helm package")?;
    Ok(work.join(format!("{CHART_NAME}-{CHART_VERSION}.tgz")))
}

/// Pushes a chart, retrying while chart-ingest is still starting.
pub async fn push_chart(client: &Client, bytes: &[u8]) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        match client.push_chart(bytes, false).await {
            Ok(_) => return Ok(()),
            Err(error) if Instant::now() < deadline => {
                eprintln!("  chart push not taken yet ({error}); retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(error) => return Err(error).context("push the chart"),
        }
    }
}

/// Which sites the benchmark starts.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Edge sites for the fleet comparison: `fleet-1..fleet-<n>`.
    pub fleet: usize,
    /// The fleet sizes compared (each ≤ `fleet`); the first `k` sites carry `first<k>=yes`.
    pub sizes: Vec<usize>,
    pub scaling: bool,
    pub steps: bool,
}

pub const SCALE_SITE: &str = "scale-1";
pub const STEPS_SITE: &str = "steps-1";

impl Layout {
    pub fn sites(&self) -> Vec<Site> {
        let mut sites = Vec::new();
        for i in 1..=self.fleet {
            let mut site = Site::new(&format!("fleet-{i}"), &[(PART_LABEL, "fleet")]);
            for size in &self.sizes {
                if i <= *size {
                    site.labels.insert(format!("first{size}"), "yes".into());
                }
            }
            sites.push(site);
        }
        if self.scaling {
            sites.push(Site::new(SCALE_SITE, &[(PART_LABEL, "scale")]));
        }
        if self.steps {
            sites.push(Site::new(STEPS_SITE, &[(PART_LABEL, "steps")]));
        }
        sites
    }

    /// The selector for the first `size` fleet sites.
    pub fn fleet_selector(size: usize) -> String {
        format!("{PART_LABEL}=fleet,first{size}=yes")
    }

    pub fn fleet_sites(size: usize) -> Vec<String> {
        (1..=size).map(|i| format!("fleet-{i}")).collect()
    }
}

/// What one external command printed, and how long it took.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub seconds: f64,
}

impl Run {
    pub fn ok(self, what: &str) -> anyhow::Result<Run> {
        if self.code != 0 {
            bail!(
                "{what} exited {}\nstdout:\n{}\nstderr:\n{}",
                self.code,
                self.stdout,
                self.stderr
            );
        }
        Ok(self)
    }
}

/// Runs a command to its end, timing it from spawn to exit.
pub async fn run(mut command: tokio::process::Command) -> anyhow::Result<Run> {
    let program = command
        .as_std()
        .get_program()
        .to_string_lossy()
        .into_owned();
    command
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    let started = Instant::now();
    let out = command
        .output()
        .await
        .with_context(|| format!("run {program}"))?;
    Ok(Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        seconds: started.elapsed().as_secs_f64(),
    })
}

pub struct Bench {
    pub testbed: Testbed,
    pub layout: Layout,
    /// Scratch files: the chart, helm's homes, the render log.
    pub work: PathBuf,
    pub helm: PathBuf,
    pub optikon: PathBuf,
    /// The packaged chart (`helm create` + `helm package`): the same bytes for every method.
    pub chart: PathBuf,
    pub client: Client,
    kube: BTreeMap<String, kube::Client>,
}

impl Bench {
    /// Starts the test bed (blocking: call before entering the async runtime).
    pub fn start_testbed(layout: &Layout) -> anyhow::Result<Testbed> {
        let dir = std::env::temp_dir().join(format!(
            "optikon-bench-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let config = TestbedConfig {
            sites: layout.sites(),
            clusters: true,
            services: true,
            dir: Some(dir),
            ..TestbedConfig::default()
        };
        Testbed::start(config).context(
            "the test bed did not start (scripts/bench installs the tools and builds first)",
        )
    }

    pub async fn new(testbed: Testbed, layout: Layout) -> anyhow::Result<Bench> {
        let work = testbed.dir().join("bench");
        std::fs::create_dir_all(&work)?;
        let helm = testbed.tools().get("helm")?;
        let optikon = optikon_testbed::services::service_bin_dir()?.join("optikon");
        anyhow::ensure!(
            optikon.is_file(),
            "{} missing: build the workspace first",
            optikon.display()
        );
        let nats = optikon_runtime::connect_url(&testbed.admin_url(), "optikon-bench").await?;
        let mut kube = BTreeMap::new();
        for edge in &testbed.edges {
            let kubeconfig = &edge
                .cluster
                .as_ref()
                .context("site without cluster")?
                .kubeconfig;
            let config = kube::config::Kubeconfig::read_from(kubeconfig)?;
            let config = kube::Config::from_custom_kubeconfig(
                config,
                &kube::config::KubeConfigOptions::default(),
            )
            .await?;
            kube.insert(edge.site.name.clone(), kube::Client::try_from(config)?);
        }
        let mut bench = Bench {
            chart: work.join(format!("{CHART_NAME}-{CHART_VERSION}.tgz")),
            testbed,
            layout,
            work,
            helm,
            optikon,
            client: Client::new(nats),
            kube,
        };
        bench.make_chart().await?;
        Ok(bench)
    }

    /// `helm create` + `helm package`, then pushed to Optikon once.
    async fn make_chart(&mut self) -> anyhow::Result<()> {
        self.chart = package_chart(&self.helm, &self.work).await?;
        push_chart(&self.client, &std::fs::read(&self.chart)?).await
    }

    /// helm with its own homes, so the host's repositories and plugins play no part.
    pub fn helm_command(&self) -> tokio::process::Command {
        helm_in(&self.helm, &self.work)
    }

    pub fn kubeconfig(&self, site: &str) -> anyhow::Result<PathBuf> {
        Ok(self
            .testbed
            .edge(site)?
            .cluster
            .as_ref()
            .context("site without cluster")?
            .kubeconfig
            .clone())
    }

    /// `helm upgrade --install --wait` of the chart on one site.
    pub fn helm_install(
        &self,
        site: &str,
        release: &str,
        replicas: u32,
    ) -> anyhow::Result<tokio::process::Command> {
        let mut command = self.helm_command();
        command
            .args(["upgrade", "--install", release])
            .arg(&self.chart)
            .args(["-n", NAMESPACE, "--set"])
            .arg(format!("replicaCount={replicas}"))
            .args(["--wait", "--timeout", "5m", "--kubeconfig"])
            .arg(self.kubeconfig(site)?);
        Ok(command)
    }

    pub fn helm_uninstall(
        &self,
        site: &str,
        release: &str,
    ) -> anyhow::Result<tokio::process::Command> {
        let mut command = self.helm_command();
        command
            .args([
                "uninstall",
                release,
                "-n",
                NAMESPACE,
                "--wait",
                "--kubeconfig",
            ])
            .arg(self.kubeconfig(site)?);
        Ok(command)
    }

    /// The real `optikon` command line against the hub.
    pub fn optikon_command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(&self.optikon);
        command
            .args(args)
            .env("OPTIKON_NATS_URL", self.testbed.hub_url())
            .env("RUST_LOG", "warn");
        command
    }

    /// An install request for the benchmark chart.
    pub fn install_request(&self, release: &str, selector: &str, replicas: u32) -> ReleaseRequest {
        let mut request = Client::new_request(Action::Install, release, NAMESPACE, selector);
        request.chart = Some(ChartRef::NameVersion {
            name: CHART_NAME.into(),
            version: CHART_VERSION.into(),
        });
        request.values = Some(serde_json::json!({ "replicaCount": replicas }));
        request
    }

    /// Sends a request through the client library and waits until every cluster finished;
    /// fails unless each reached `expect`.
    pub async fn request(
        &self,
        request: &ReleaseRequest,
        expect: ReleaseState,
    ) -> anyhow::Result<RequestStatus> {
        let status = self
            .client
            .run_request(request, Duration::from_secs(600), |_| {})
            .await
            .with_context(|| format!("{} {}", request.action, request.release))?;
        for (cluster, progress) in &status.clusters {
            anyhow::ensure!(
                progress.state == expect,
                "{} {} on {cluster}: {} ({})",
                request.action,
                request.release,
                progress.state,
                progress.reason.as_deref().unwrap_or("")
            );
        }
        Ok(status)
    }

    pub async fn optikon_uninstall(&self, release: &str, selector: &str) -> anyhow::Result<()> {
        let request = Client::new_request(Action::Uninstall, release, NAMESPACE, selector);
        self.request(&request, ReleaseState::Uninstalled).await?;
        Ok(())
    }

    pub fn kube(&self, site: &str) -> anyhow::Result<&kube::Client> {
        self.kube
            .get(site)
            .with_context(|| format!("no cluster client for {site}"))
    }

    /// Pods of a release: (all, Running and not being deleted).
    pub async fn pods(&self, site: &str, release: &str) -> anyhow::Result<(usize, usize)> {
        let pods: kube::Api<Pod> = kube::Api::namespaced(self.kube(site)?.clone(), NAMESPACE);
        let list = pods
            .list(
                &kube::api::ListParams::default()
                    .labels(&format!("app.kubernetes.io/instance={release}")),
            )
            .await?;
        let running = list
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        Ok((list.items.len(), running))
    }

    /// Fails unless every site runs `replicas` pods of the release.
    pub async fn check_running(
        &self,
        sites: &[String],
        release: &str,
        replicas: usize,
    ) -> anyhow::Result<()> {
        for site in sites {
            let (_, running) = self.pods(site, release).await?;
            anyhow::ensure!(
                running == replicas,
                "{release} on {site}: {running} pods Running, expected {replicas}"
            );
        }
        Ok(())
    }

    /// Waits until no pod of the release is left on any of the sites, then a moment more so
    /// the controllers are idle before the next measurement.
    pub async fn wait_gone(&self, sites: &[String], release: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(120);
        for site in sites {
            while self.pods(site, release).await?.0 > 0 {
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "pods of {release} still on {site} after 120 s"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        Ok(())
    }

    /// Waits until every site is registered and healthy and every executor is ready.
    pub async fn wait_ready(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(300);
        let expected = self.testbed.edges.len();
        loop {
            let now = Timestamp::now();
            let healthy = self
                .client
                .clusters()
                .await
                .map(|c| {
                    c.iter()
                        .filter(|c| c.health(now) == Health::Healthy)
                        .count()
                })
                .unwrap_or(0);
            let executors = self
                .testbed
                .services
                .iter()
                .filter(|s| s.spec.name.starts_with("per-cluster-executor@"))
                .filter(|s| log_says(s.log(), READY))
                .count();
            if healthy == expected && executors >= expected {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "after 300 s only {healthy} of {expected} sites are healthy and \
                     {executors} executors ready; see the logs in {}",
                    self.testbed.dir().display()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Replaces a site's executor with one that renders through `helm` (same settings
    /// otherwise) and waits until it is ready. The old one stops first.
    pub async fn swap_executor_helm(&mut self, site: &str, helm: &Path) -> anyhow::Result<()> {
        self.swap_executor(site, |spec| {
            for (key, value) in &mut spec.env {
                if key == "OPTIKON_HELM" {
                    *value = helm.display().to_string();
                }
            }
        })
        .await
    }

    /// Replaces a site's executor with `binary` (same settings otherwise) and waits until it
    /// is ready. The old one stops first.
    pub async fn swap_executor_binary(&mut self, site: &str, binary: &Path) -> anyhow::Result<()> {
        self.swap_executor(site, |spec| spec.binary = binary.to_owned())
            .await
    }

    /// Stops a site's executor and starts it again with its spec changed by `change`, then
    /// waits until the new one is ready.
    async fn swap_executor(
        &mut self,
        site: &str,
        change: impl FnOnce(&mut optikon_testbed::services::ServiceSpec),
    ) -> anyhow::Result<()> {
        let name = format!("per-cluster-executor@{site}");
        let index = self
            .testbed
            .services
            .iter()
            .position(|s| s.spec.name == name)
            .with_context(|| format!("no {name}"))?;
        let old = self.testbed.services.remove(index);
        let mut spec = old.spec.clone();
        let ready_before = log_count(old.log(), READY);
        drop(old);
        change(&mut spec);
        let process = optikon_testbed::services::ServiceProcess::start(&spec, self.testbed.dir())?;
        let log = process.log().to_owned();
        self.testbed.services.push(process);
        wait_log(&log, READY, ready_before + 1).await
    }

    /// Starts executor replicas or stops the extra ones until `site` runs `replicas`.
    pub async fn set_executor_replicas(
        &mut self,
        site: &str,
        replicas: usize,
    ) -> anyhow::Result<()> {
        let prefix = format!("per-cluster-executor@{site}#");
        loop {
            let extra: Vec<String> = self
                .testbed
                .services
                .iter()
                .filter(|s| s.spec.name.starts_with(&prefix))
                .map(|s| s.spec.name.clone())
                .collect();
            match (extra.len() + 1).cmp(&replicas) {
                std::cmp::Ordering::Equal => return Ok(()),
                std::cmp::Ordering::Less => {
                    let name = self.testbed.add_executor_replica(site)?;
                    let log = self
                        .testbed
                        .services
                        .iter()
                        .find(|s| s.spec.name == name)
                        .map(|s| s.log().to_owned())
                        .context("replica just started")?;
                    wait_log(&log, READY, 1).await?;
                }
                std::cmp::Ordering::Greater => {
                    // Dropping a service stops it (SIGTERM, then its NATS client drains).
                    let last = extra.last().cloned().unwrap_or_default();
                    self.testbed.services.retain(|s| s.spec.name != last);
                }
            }
        }
    }

    /// Pids of the executors of a site (all replicas).
    pub fn executor_pids(&self, site: &str) -> Vec<u32> {
        let prefix = format!("per-cluster-executor@{site}");
        self.testbed
            .services
            .iter()
            .filter(|s| s.spec.name == prefix || s.spec.name.starts_with(&format!("{prefix}#")))
            .map(|s| s.pid())
            .collect()
    }

    pub fn service_pid(&self, name: &str) -> Option<u32> {
        self.testbed
            .services
            .iter()
            .find(|s| s.spec.name == name)
            .map(|s| s.pid())
    }

    /// Cores the whole test bed uses while nothing is asked of it (every process it started:
    /// hub and leaf nats-servers, control planes, services), over `seconds`.
    pub async fn idle_cores(&self, seconds: u64) -> f64 {
        let dir = self.testbed.dir().display().to_string();
        let mut pids: Vec<u32> = cpu::processes()
            .into_iter()
            .filter(|(_, args)| args.iter().any(|a| a.contains(&dir)))
            .map(|(pid, _)| pid)
            .collect();
        pids.extend(self.testbed.services.iter().map(|s| s.pid()));
        pids.sort_unstable();
        pids.dedup();
        let mut probe = cpu::Probe::default();
        probe.add("test bed", pids, false);
        let before = probe.snapshot();
        tokio::time::sleep(Duration::from_secs(seconds)).await;
        let usage = probe.usage(&before, &probe.snapshot());
        usage
            .parts
            .first()
            .map_or(f64::NAN, |(_, s)| s / usage.wall)
    }

    /// The log files of a site's executors.
    pub fn executor_logs(&self, site: &str) -> Vec<PathBuf> {
        let prefix = format!("per-cluster-executor@{site}");
        self.testbed
            .services
            .iter()
            .filter(|s| s.spec.name == prefix || s.spec.name.starts_with(&format!("{prefix}#")))
            .map(|s| s.log().to_owned())
            .collect()
    }
}

/// What an executor logs once it reaches its cluster and its streams.
const READY: &str = "executor ready";

fn log_says(path: &Path, text: &str) -> bool {
    log_count(path, text) > 0
}

fn log_count(path: &Path, text: &str) -> usize {
    std::fs::read_to_string(path).map_or(0, |l| l.matches(text).count())
}

/// Waits until `text` occurs `count` times in a log file.
async fn wait_log(path: &Path, text: &str, count: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    while log_count(path, text) < count {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{} does not say {text:?} after 120 s",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}
