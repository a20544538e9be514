//! The harness every end-to-end test uses: one shared test bed per test binary.
//!
//! Starting Kubernetes control planes takes a while, so a test binary starts the test bed
//! once, on first use, and every test shares it; tests keep out of each other's way by
//! using their own release names and namespaces. The test bed stops when the binary exits.

use std::time::{Duration, Instant};

use optikon_testbed::{Testbed, TestbedConfig};
use tokio::sync::{Mutex, MutexGuard, OnceCell};

static TESTBED: OnceCell<Mutex<Testbed>> = OnceCell::const_new();

/// The shared test bed (three demo sites, real clusters, services running). A test holds
/// the guard for its whole run, so tests that cut links or restart servers keep others out.
pub async fn testbed() -> MutexGuard<'static, Testbed> {
    testbed_of(optikon_testbed::Site::demo()).await
}

/// The shared test bed with these sites instead of the demo's three. A test binary uses one
/// kind: the first call starts it, later calls share it whatever they ask for.
pub async fn testbed_of(sites: Vec<optikon_testbed::Site>) -> MutexGuard<'static, Testbed> {
    let cell = TESTBED
        .get_or_init(|| async {
            // Statics are never dropped, so the test bed's own clean-up does not run: its
            // processes are stopped at exit, and its directory is reused by the next run.
            let binary = std::env::current_exe()
                .ok()
                .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "e2e".into());
            let dir = std::env::temp_dir().join(format!("optikon-e2e-{binary}"));
            let _ = std::fs::remove_dir_all(&dir);
            let config = TestbedConfig {
                sites,
                clusters: true,
                services: true,
                dir: Some(dir),
                ..TestbedConfig::default()
            };
            let started = tokio::task::spawn_blocking(move || Testbed::start(config))
                .await
                .expect("test bed start task");
            let testbed = match started {
                Ok(testbed) => testbed,
                Err(e) => panic!("the test bed did not start; integration tests need it: {e}"),
            };
            // Every test starts on a ready hub: its streams, buckets and object stores set up
            // (the router does that before it registers anyone) and every site registered.
            if let Err(e) = wait_until_healthy(&testbed).await {
                panic!("the test bed started but did not become ready: {e:#}");
            }
            Mutex::new(testbed)
        })
        .await;
    cell.lock().await
}

/// Polls `check` until it returns `Some`, or fails naming `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match check().await {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(e) => last_error = Some(e),
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "timed out after {timeout:?} waiting for {what}{}",
                last_error
                    .map(|e| format!(" (last error: {e:#})"))
                    .unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a command printed and how it exited.
#[derive(Debug)]
pub struct Output {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Fails with everything the command said unless it exited 0.
    pub fn ok(self) -> anyhow::Result<Output> {
        anyhow::ensure!(
            self.code == 0,
            "exit {}\nstdout:\n{}\nstderr:\n{}",
            self.code,
            self.stdout,
            self.stderr
        );
        Ok(self)
    }
}

fn run(mut command: std::process::Command) -> anyhow::Result<Output> {
    let program = command.get_program().to_string_lossy().into_owned();
    let out = command
        .output()
        .map_err(|e| anyhow::anyhow!("cannot run {program}: {e}"))?;
    Ok(Output {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Runs the real `optikon` CLI against the test bed's hub.
pub fn optikon(testbed: &Testbed, args: &[&str]) -> anyhow::Result<Output> {
    let bin = optikon_testbed::services::service_bin_dir()?.join("optikon");
    let mut command = std::process::Command::new(bin);
    command
        .args(args)
        .env("OPTIKON_NATS_URL", testbed.hub_url());
    run(command)
}

/// Runs the real `helm` against one edge site's cluster.
pub fn helm(testbed: &Testbed, site: &str, args: &[&str]) -> anyhow::Result<Output> {
    let kubeconfig = kubeconfig(testbed, site)?;
    let mut command = std::process::Command::new(testbed.tools().get("helm")?);
    command.args(args).arg("--kubeconfig").arg(kubeconfig);
    run(command)
}

pub fn kubeconfig(testbed: &Testbed, site: &str) -> anyhow::Result<std::path::PathBuf> {
    Ok(testbed
        .edge(site)?
        .cluster
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("site {site} has no cluster"))?
        .kubeconfig
        .clone())
}

/// A Kubernetes client for one edge site's cluster.
pub async fn kube_client(testbed: &Testbed, site: &str) -> anyhow::Result<kube::Client> {
    let config = kube::config::Kubeconfig::read_from(kubeconfig(testbed, site)?)?;
    let config =
        kube::Config::from_custom_kubeconfig(config, &kube::config::KubeConfigOptions::default())
            .await?;
    Ok(kube::Client::try_from(config)?)
}

/// Pods of a Helm release in `Running` phase, counted through the Kubernetes API.
pub async fn running_pods(
    client: &kube::Client,
    namespace: &str,
    release: &str,
) -> anyhow::Result<usize> {
    use k8s_openapi::api::core::v1::Pod;
    let pods: kube::Api<Pod> = kube::Api::namespaced(client.clone(), namespace);
    let list = pods
        .list(
            &kube::api::ListParams::default()
                .labels(&format!("app.kubernetes.io/instance={release}")),
        )
        .await?;
    Ok(list
        .items
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count())
}

/// All pods of the cluster, as the health-prober counts them.
pub async fn all_pods(client: &kube::Client) -> anyhow::Result<usize> {
    use k8s_openapi::api::core::v1::Pod;
    let pods: kube::Api<Pod> = kube::Api::all(client.clone());
    Ok(pods
        .list(&kube::api::ListParams::default())
        .await?
        .items
        .len())
}

/// Makes a chart with the real `helm create` and packages it with `helm package`:
/// returns the .tgz path.
pub fn helm_chart(
    testbed: &Testbed,
    dir: &std::path::Path,
    name: &str,
    version: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let helm_bin = testbed.tools().get("helm")?;
    let mut create = std::process::Command::new(&helm_bin);
    create.current_dir(dir).args(["create", name]);
    run(create)?.ok()?;
    let mut package = std::process::Command::new(&helm_bin);
    package
        .current_dir(dir)
        .args(["package", name, "--version", version]);
    run(package)?.ok()?;
    Ok(dir.join(format!("{name}-{version}.tgz")))
}

/// Waits until every site is registered at the hub and healthy.
pub async fn wait_until_healthy(testbed: &Testbed) -> anyhow::Result<()> {
    let expected = testbed.edges.len();
    eventually(
        "every edge cluster registered and healthy",
        Duration::from_secs(180),
        || async {
            let out = optikon(testbed, &["clusters", "-o", "json"])?.ok()?;
            let clusters: Vec<serde_json::Value> = serde_json::from_str(&out.stdout)?;
            let now = optikon_core::message::Timestamp::now();
            let healthy = clusters
                .iter()
                .filter_map(|c| {
                    serde_json::from_value::<optikon_core::message::ClusterRecord>(c.clone()).ok()
                })
                .filter(|c| c.health(now) == optikon_core::message::Health::Healthy)
                .count();
            Ok((healthy == expected).then_some(()))
        },
    )
    .await
}
