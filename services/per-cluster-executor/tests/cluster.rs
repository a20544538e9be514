//! `ClusterTarget` against a real Kubernetes control plane (optikon-kube: etcd, kube-apiserver,
//! controller-manager, scheduler, kwok nodes), checked with the real `helm` binary.
//!
//! Needs the test-bed tools; without them the test fails and says to run scripts/install-tools.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use kube::api::{Api, ListParams, Patch, PatchParams};
use optikon_core::message::{
    Action, ApiVersion, ChartPin, DesiredRelease, ReleaseState, Timestamp,
};
use optikon_core::preview::{Change, PreviewOutcome};
use optikon_testbed::cluster::KubeCluster;
use optikon_testbed::tools::Tools;
use per_cluster_executor::cluster::{ClusterError, ClusterTarget, Outcome};
use serde_json::{Value, json};

/// The cluster, the helm binary and a kube client, for one test run.
struct Bed {
    helm: PathBuf,
    kubeconfig: PathBuf,
    client: kube::Client,
    /// HELM_*_HOME for the helm CLI, away from the host's.
    helm_home: tempfile::TempDir,
    charts: tempfile::TempDir,
}

impl Bed {
    async fn target(&self, wait: Duration) -> ClusterTarget {
        ClusterTarget::connect_with(self.client.clone(), self.helm.clone())
            .await
            .expect("connect to the test cluster")
            .with_wait_timeout(wait)
            .with_kubeconfig(self.kubeconfig.clone())
    }

    /// Runs the real helm CLI against the cluster; fails on a non-zero exit.
    fn helm(&self, args: &[&str]) -> Result<String> {
        let home = self.helm_home.path();
        let output = Command::new(&self.helm)
            .args(args)
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_DATA_HOME", home.join("data"))
            .output()
            .context("run helm")?;
        ensure!(
            output.status.success(),
            "helm {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8(output.stdout)?)
    }

    fn helm_json(&self, args: &[&str]) -> Result<Value> {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        Ok(serde_json::from_str(&self.helm(&args)?)?)
    }

    /// Writes a chart directory and packages it with `helm package`; returns (dir, .tgz bytes).
    fn chart(
        &self,
        name: &str,
        version: &str,
        files: &[(&str, &str)],
    ) -> Result<(PathBuf, Vec<u8>)> {
        let dir = self
            .charts
            .path()
            .join(format!("{name}-{version}-src"))
            .join(name);
        for (path, text) in files {
            let path = dir.join(path);
            std::fs::create_dir_all(path.parent().unwrap())?;
            std::fs::write(path, text)?;
        }
        let out = self.charts.path().join("packaged");
        std::fs::create_dir_all(&out)?;
        self.helm(&[
            "package",
            dir.to_str().unwrap(),
            "--destination",
            out.to_str().unwrap(),
        ])?;
        let tgz = std::fs::read(out.join(format!("{name}-{version}.tgz")))?;
        Ok((dir, tgz))
    }

    async fn release_secrets(&self, namespace: &str, release: &str) -> Result<Vec<String>> {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let list = api
            .list(&ListParams::default().labels(&format!("owner=helm,name={release}")))
            .await?;
        let mut names: Vec<String> = list
            .items
            .into_iter()
            .filter_map(|s| s.metadata.name)
            .collect();
        names.sort();
        Ok(names)
    }

    async fn running_pods(&self, namespace: &str, instance: &str) -> Result<usize> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pods = api
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={instance}")))
            .await?;
        Ok(pods
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count())
    }

    async fn pod_count(&self, namespace: &str, instance: &str) -> Result<usize> {
        let api: Api<Pod> = Api::namespaced(self.client.clone(), namespace);
        let pods = api
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/instance={instance}")))
            .await?;
        Ok(pods.items.len())
    }
}

fn desired(
    namespace: &str,
    release: &str,
    generation: u64,
    action: Action,
    values: Value,
) -> DesiredRelease {
    DesiredRelease {
        api_version: ApiVersion,
        cluster: "pce".into(),
        namespace: namespace.into(),
        release: release.into(),
        generation,
        request_id: format!("req-{generation}"),
        action,
        chart: Some(ChartPin {
            name: "web".into(),
            version: "0.1.0".into(),
            digest: "sha256:unused-here".into(),
            size: 0,
        }),
        values,
        helm_values: Default::default(),
        rollback_to: None,
        atomic: false,
        requested_at: Timestamp::now(),
        request_sequence: None,
    }
}

const WEB_CHART: &[(&str, &str)] = &[
    (
        "Chart.yaml",
        "apiVersion: v2\nname: web\ndescription: A web server for tests\nversion: 0.1.0\nappVersion: \"1.25\"\n",
    ),
    (
        "values.yaml",
        "replicas: 1\nimage: nginx:1.25\nmessage: hello\nservice:\n  enabled: true\nnodeSelector: {}\n",
    ),
    (
        "templates/deployment.yaml",
        r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
  labels:
    app.kubernetes.io/instance: {{ .Release.Name }}
spec:
  replicas: {{ .Values.replicas }}
  selector:
    matchLabels:
      app.kubernetes.io/instance: {{ .Release.Name }}
  template:
    metadata:
      labels:
        app.kubernetes.io/instance: {{ .Release.Name }}
    spec:
      {{- with .Values.nodeSelector }}
      nodeSelector:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      containers:
        - name: web
          image: {{ .Values.image }}
          ports:
            - containerPort: 80
"#,
    ),
    (
        "templates/service.yaml",
        r#"{{- if .Values.service.enabled }}
apiVersion: v1
kind: Service
metadata:
  name: {{ .Release.Name }}
spec:
  selector:
    app.kubernetes.io/instance: {{ .Release.Name }}
  ports:
    - port: 80
      targetPort: 80
{{- end }}
"#,
    ),
    (
        "templates/configmap.yaml",
        r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-config
data:
  message: {{ .Values.message | quote }}
  kubeVersion: {{ .Capabilities.KubeVersion.Version | quote }}
  hasDeployments: {{ .Capabilities.APIVersions.Has "apps/v1/Deployment" | quote }}
  isUpgrade: {{ .Release.IsUpgrade | quote }}
"#,
    ),
    (
        "templates/tests/test-connection.yaml",
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {{ .Release.Name }}-test-connection
  labels:
    app.kubernetes.io/instance: {{ .Release.Name }}-test
  annotations:
    "helm.sh/hook": test
spec:
  containers:
    - name: wget
      image: busybox
      command: ['wget', '{{ .Release.Name }}:80']
  restartPolicy: Never
"#,
    ),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn releases_on_a_real_cluster() -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    // Missing tools fail the test (never skip it); the error says to run scripts/install-tools.
    let tools = Tools::locate();
    let helm = tools.get("helm").unwrap_or_else(|e| panic!("{e}"));
    for tool in ["optikon-kube", "kwok"] {
        tools.get(tool).unwrap_or_else(|e| panic!("{e}"));
    }
    let dir = tempfile::Builder::new().prefix("optikon-pce-").tempdir()?;
    let started = Instant::now();
    let cluster_dir = dir.path().join("cluster");
    let port = optikon_testbed::free_port()?;
    let cluster =
        tokio::task::spawn_blocking(move || KubeCluster::start(&tools, "pce", &cluster_dir, port))
            .await?
            .context("start the test cluster")?;
    eprintln!("cluster up in {:?}", started.elapsed());

    let kubeconfig = kube::config::Kubeconfig::read_from(&cluster.kubeconfig)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let bed = Bed {
        helm,
        kubeconfig: cluster.kubeconfig.clone(),
        client: kube::Client::try_from(config)?,
        helm_home: tempfile::tempdir()?,
        charts: tempfile::tempdir()?,
    };

    let scenarios = async {
        let t = Instant::now();
        lifecycle(&bed).await.context("lifecycle")?;
        eprintln!("lifecycle: {:?}", t.elapsed());
        let t = Instant::now();
        tokio::try_join!(
            async {
                upgrade_without_release_fails(&bed)
                    .await
                    .context("upgrade without release")
            },
            async {
                invalid_yaml_fails_naming_the_template(&bed)
                    .await
                    .context("invalid yaml")
            },
            async {
                readiness_deadline_records_a_failed_revision(&bed)
                    .await
                    .context("deadline")
            },
            async {
                racing_executors_write_one_revision(&bed)
                    .await
                    .context("race")
            },
            async {
                crds_jobs_ownership_and_helm_interplay(&bed)
                    .await
                    .context("crds, jobs, ownership")
            },
            async {
                a_hook_out_of_time_fails_and_runs_again(&bed)
                    .await
                    .context("hook timeout")
            },
            async {
                a_failing_rollback_hook_records_a_failed_revision(&bed)
                    .await
                    .context("rollback hook")
            },
            async { lookup_reads_the_live_cluster(&bed).await.context("lookup") },
            async {
                pending_records_as_helm_writes_them(&bed)
                    .await
                    .context("pending records")
            },
            async {
                atomic_undoes_a_failure_on_its_cluster(&bed)
                    .await
                    .context("atomic")
            },
            async { drift_is_watched(&bed).await.context("drift watch") },
        )?;
        eprintln!("other scenarios: {:?}", t.elapsed());
        Ok::<_, anyhow::Error>(())
    };
    let result = scenarios.await;
    if result.is_err() {
        eprintln!("cluster logs kept in {}", dir.path().display());
        std::mem::forget(dir);
    }
    drop(cluster);
    result
}

/// Install, upgrade, idempotent replay, prune, rollback, uninstall — checked with helm itself.
async fn lifecycle(bed: &Bed) -> Result<()> {
    let (ns, name) = ("shop", "web");
    let (chart_dir, tgz) = bed.chart("web", "0.1.0", WEB_CHART)?;
    let target = bed.target(Duration::from_secs(120)).await;
    assert!(
        target.kubernetes_version().starts_with("v1."),
        "{}",
        target.kubernetes_version()
    );
    assert_eq!(target.current(ns, name).await?, None);

    // Install: revision 1, deployed, pods running, the test hook not run.
    let values1 = json!({"replicas": 2});
    let t = Instant::now();
    let outcome = target
        .execute(
            &desired(ns, name, 1, Action::Install, values1.clone()),
            Some(&tgz),
        )
        .await?;
    eprintln!("install: {:?}", t.elapsed());
    assert_eq!(outcome.state, ReleaseState::Deployed, "{outcome:?}");
    assert_eq!(outcome.revision, Some(1));
    let chart = outcome.chart.clone().unwrap();
    assert_eq!(
        (
            chart.name.as_str(),
            chart.version.as_str(),
            chart.app_version.as_deref()
        ),
        ("web", "0.1.0", Some("1.25"))
    );
    assert!(outcome.first_deployed.is_some());

    let list = bed.helm_json(&["list", "-n", ns])?;
    let releases = list.as_array().unwrap();
    assert_eq!(releases.len(), 1, "{list}");
    assert_eq!(releases[0]["name"], "web");
    assert_eq!(releases[0]["namespace"], ns);
    assert_eq!(releases[0]["revision"], "1");
    assert_eq!(releases[0]["status"], "deployed");
    assert_eq!(releases[0]["chart"], "web-0.1.0");
    assert_eq!(releases[0]["app_version"], "1.25");
    // Readiness was waited for: both replicas are running the moment execute returns.
    assert_eq!(bed.running_pods(ns, name).await?, 2);
    assert_eq!(
        bed.pod_count(ns, "web-test").await?,
        0,
        "test hooks never run"
    );
    let hooks = bed.helm(&["get", "hooks", name, "-n", ns])?;
    assert!(
        hooks.contains("web-test-connection") && hooks.contains("helm.sh/hook\": test"),
        "{hooks}"
    );
    let config: ConfigMap = Api::namespaced(bed.client.clone(), ns)
        .get("web-config")
        .await?;
    let data = config.data.unwrap();
    assert_eq!(
        data["kubeVersion"],
        target.kubernetes_version(),
        "rendered for the cluster's version"
    );
    assert_eq!(
        data["hasDeployments"], "true",
        "rendered with the cluster's API list"
    );
    assert_eq!(data["isUpgrade"], "false");
    let stored = target.current(ns, name).await?.unwrap();
    assert_eq!(
        (stored.revision, stored.generation, stored.status.as_str()),
        (1, Some(1), "deployed")
    );

    // The same generation again: no new revision.
    let again = target
        .execute(
            &desired(ns, name, 1, Action::Install, values1.clone()),
            Some(&tgz),
        )
        .await?;
    assert_eq!(
        again, outcome,
        "replaying a generation reports its stored outcome"
    );
    let replay = target
        .execute(
            &desired(ns, name, 1, Action::Install, values1.clone()),
            None,
        )
        .await?;
    assert_eq!(replay.revision, Some(1));
    assert_eq!(
        bed.release_secrets(ns, name).await?,
        vec!["sh.helm.release.v1.web.v1"]
    );

    // Upgrade with new values: revision 2; history 1 superseded, 2 deployed.
    let values2 = json!({"replicas": 3, "message": "second"});
    let outcome = target
        .execute(
            &desired(ns, name, 2, Action::Upgrade, values2.clone()),
            Some(&tgz),
        )
        .await?;
    assert_eq!(
        (outcome.state, outcome.revision),
        (ReleaseState::Deployed, Some(2)),
        "{outcome:?}"
    );
    assert_eq!(
        outcome.first_deployed,
        target_first_deployed(&target, ns, name).await?,
        "first deployment time carried over"
    );
    let history = bed.helm_json(&["history", name, "-n", ns])?;
    let statuses: Vec<(i64, &str, &str)> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["revision"].as_i64().unwrap(),
                h["status"].as_str().unwrap(),
                h["description"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        statuses,
        vec![
            (1, "superseded", "Install complete"),
            (2, "deployed", "Upgrade complete")
        ]
    );
    assert_eq!(bed.running_pods(ns, name).await?, 3);
    assert_eq!(
        bed.helm_json(&["get", "values", name, "-n", ns])?,
        values2,
        "user values recorded"
    );
    let data = Api::<ConfigMap>::namespaced(bed.client.clone(), ns)
        .get("web-config")
        .await?
        .data
        .unwrap();
    assert_eq!(
        (data["message"].as_str(), data["isUpgrade"].as_str()),
        ("second", "true")
    );

    // `helm get manifest` is exactly what helm itself renders (hooks aside) for these values.
    let stored_manifest = bed.helm(&["get", "manifest", name, "-n", ns])?;
    let values_file = bed.charts.path().join("values2.json");
    std::fs::write(&values_file, values2.to_string())?;
    let kube_version = target.kubernetes_version().to_owned();
    let expected = bed.helm(&[
        "template",
        name,
        chart_dir.to_str().unwrap(),
        "--namespace",
        ns,
        "--no-hooks",
        "--is-upgrade",
        "--kube-version",
        &kube_version,
        "--api-versions",
        "apps/v1/Deployment",
        "-f",
        values_file.to_str().unwrap(),
    ])?;
    assert_eq!(stored_manifest.trim(), expected.trim());
    assert!(!stored_manifest.contains("helm.sh/hook"));

    // Objects carry Helm's ownership marks and Optikon's field manager.
    let deployment: Deployment = Api::namespaced(bed.client.clone(), ns).get(name).await?;
    let annotations = deployment.metadata.annotations.clone().unwrap();
    assert_eq!(annotations["meta.helm.sh/release-name"], name);
    assert_eq!(annotations["meta.helm.sh/release-namespace"], ns);
    assert_eq!(
        deployment.metadata.labels.clone().unwrap()["app.kubernetes.io/managed-by"],
        "Helm"
    );
    let managers: Vec<String> = deployment
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.operation.as_deref() == Some("Apply"))
        .filter_map(|m| m.manager)
        .collect();
    assert_eq!(managers, vec!["optikon"]);

    // An upgrade that drops the Service prunes it.
    let values3 = json!({"replicas": 3, "message": "second", "service": {"enabled": false}});
    let outcome = target
        .execute(&desired(ns, name, 3, Action::Install, values3), Some(&tgz))
        .await?;
    assert_eq!(
        (outcome.state, outcome.revision),
        (ReleaseState::Deployed, Some(3)),
        "{outcome:?}"
    );
    let services: Api<Service> = Api::namespaced(bed.client.clone(), ns);
    assert!(services.get_opt(name).await?.is_none(), "Service pruned");
    assert!(
        !bed.helm(&["get", "manifest", name, "-n", ns])?
            .contains("kind: Service")
    );

    // An older generation arriving late (a redelivery) changes nothing, and says what it
    // did when it was carried out: deployed as revision 2, replaced since.
    let late = target
        .execute(
            &desired(ns, name, 2, Action::Upgrade, values2.clone()),
            Some(&tgz),
        )
        .await?;
    assert_eq!(
        (late.state, late.revision),
        (ReleaseState::Deployed, Some(2)),
        "{late:?}"
    );
    assert!(
        late.reason
            .as_deref()
            .unwrap_or("")
            .contains("replaced it since"),
        "{late:?}"
    );
    let revisions = bed.helm_json(&["history", name, "-n", ns])?;
    assert_eq!(
        revisions.as_array().map(Vec::len),
        Some(3),
        "nothing applied"
    );

    // Rollback to revision 2: revision 4, the Service is back, values of revision 2.
    let mut rollback = desired(ns, name, 4, Action::Rollback, Value::Null);
    rollback.rollback_to = Some(2);
    let outcome = target.execute(&rollback, None).await?;
    assert_eq!(
        (outcome.state, outcome.revision),
        (ReleaseState::Deployed, Some(4)),
        "{outcome:?}"
    );
    assert!(services.get_opt(name).await?.is_some(), "Service restored");
    let history = bed.helm_json(&["history", name, "-n", ns])?;
    let last = history.as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (
            last["revision"].as_i64(),
            last["status"].as_str(),
            last["description"].as_str()
        ),
        (Some(4), Some("deployed"), Some("Rollback to 2"))
    );
    let deployed: Vec<i64> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["status"] == "deployed")
        .map(|h| h["revision"].as_i64().unwrap())
        .collect();
    assert_eq!(deployed, vec![4], "exactly one deployed revision");
    assert_eq!(bed.helm_json(&["get", "values", name, "-n", ns])?, values2);

    // Rollback to a revision that does not exist: failed, nothing written.
    let mut missing = desired(ns, name, 5, Action::Rollback, Value::Null);
    missing.rollback_to = Some(42);
    let outcome = target.execute(&missing, None).await?;
    assert_eq!(outcome.state, ReleaseState::Failed);
    assert!(
        outcome
            .reason
            .as_deref()
            .unwrap()
            .contains("no revision 42"),
        "{outcome:?}"
    );
    assert_eq!(bed.release_secrets(ns, name).await?.len(), 4);

    // Uninstall: objects gone, helm list empty, history kept.
    let t = Instant::now();
    let outcome = target
        .execute(&desired(ns, name, 6, Action::Uninstall, Value::Null), None)
        .await?;
    eprintln!("uninstall: {:?}", t.elapsed());
    assert_eq!(
        (outcome.state, outcome.revision),
        (ReleaseState::Uninstalled, Some(4)),
        "{outcome:?}"
    );
    assert!(services.get_opt(name).await?.is_none());
    assert!(
        Api::<Deployment>::namespaced(bed.client.clone(), ns)
            .get_opt(name)
            .await?
            .is_none()
    );
    assert!(
        Api::<ConfigMap>::namespaced(bed.client.clone(), ns)
            .get_opt("web-config")
            .await?
            .is_none()
    );
    assert_eq!(
        bed.pod_count(ns, name).await?,
        0,
        "foreground deletion waited for the pods"
    );
    assert_eq!(bed.helm_json(&["list", "-n", ns])?, json!([]));
    let all = bed.helm_json(&["list", "-n", ns, "--uninstalled"])?;
    assert_eq!(all[0]["status"], "uninstalled", "{all}");
    let stored = target.current(ns, name).await?.unwrap();
    assert_eq!(
        (stored.revision, stored.generation, stored.status.as_str()),
        (4, Some(6), "uninstalled")
    );

    // Uninstalling again is harmless; installing again starts a fresh deployment at revision 5.
    let outcome = target
        .execute(&desired(ns, name, 7, Action::Uninstall, Value::Null), None)
        .await?;
    assert_eq!(outcome.state, ReleaseState::Uninstalled);
    let outcome = target
        .execute(&desired(ns, name, 8, Action::Install, values1), Some(&tgz))
        .await?;
    assert_eq!(
        (outcome.state, outcome.revision),
        (ReleaseState::Deployed, Some(5)),
        "{outcome:?}"
    );
    let history = bed.helm_json(&["history", name, "-n", ns])?;
    assert_eq!(
        history.as_array().unwrap().last().unwrap()["description"],
        "Install complete"
    );
    assert_eq!(bed.running_pods(ns, name).await?, 2);
    Ok(())
}

async fn target_first_deployed(
    target: &ClusterTarget,
    ns: &str,
    name: &str,
) -> Result<Option<Timestamp>> {
    Ok(target
        .current(ns, name)
        .await?
        .and_then(|c| c.first_deployed))
}

/// Upgrade of a release that does not exist: failed with a clear reason, no record.
async fn upgrade_without_release_fails(bed: &Bed) -> Result<()> {
    let (_, tgz) = bed.chart("web", "0.1.0", WEB_CHART)?;
    let target = bed.target(Duration::from_secs(30)).await;
    let outcome = target
        .execute(
            &desired("ghost", "nobody", 1, Action::Upgrade, json!({})),
            Some(&tgz),
        )
        .await?;
    assert_eq!(outcome.state, ReleaseState::Failed);
    assert_eq!(
        outcome.reason.as_deref(),
        Some("release nobody has no deployed revision in namespace ghost; install it first")
    );
    assert!(bed.release_secrets("ghost", "nobody").await?.is_empty());
    let outcome = target
        .execute(
            &desired("ghost", "nobody", 2, Action::Uninstall, Value::Null),
            None,
        )
        .await?;
    assert_eq!(
        (outcome.state, outcome.reason.as_deref()),
        (ReleaseState::Uninstalled, Some("not installed"))
    );
    Ok(())
}

/// `lookup` in a template reads the live cluster, as in `helm upgrade --install`: a chart that
/// keeps a generated password across upgrades (the common use) finds the Secret it made, and
/// one that reads another object finds its data. A lookup of something absent gives an empty
/// map, as in helm.
async fn lookup_reads_the_live_cluster(bed: &Bed) -> Result<()> {
    let (ns, name) = ("looking", "looker");
    let (_, tgz) = bed.chart(
        "looker",
        "1.0.0",
        &[
            (
                "Chart.yaml",
                "apiVersion: v2\nname: looker\nversion: 1.0.0\n",
            ),
            (
                "templates/found.yaml",
                r#"{{- $source := lookup "v1" "ConfigMap" .Release.Namespace "colours" }}
{{- $absent := lookup "v1" "ConfigMap" .Release.Namespace "no-such-map" }}
{{- $mine := lookup "v1" "Secret" .Release.Namespace "looker-password" }}
apiVersion: v1
kind: ConfigMap
metadata:
  name: looker-found
data:
  colour: {{ dig "data" "colour" "nothing" $source | quote }}
  absent: {{ $absent | toJson | quote }}
  kept: {{ if $mine }}"kept"{{ else }}"new"{{ end }}
---
apiVersion: v1
kind: Secret
metadata:
  name: looker-password
data:
  password: {{ dig "data" "password" (randAlphaNum 16 | b64enc) $mine | quote }}
"#,
            ),
        ],
    )?;
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(bed.client.clone());
    namespaces
        .create(
            &Default::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}}))?,
        )
        .await?;
    let maps: Api<ConfigMap> = Api::namespaced(bed.client.clone(), ns);
    maps.create(
        &Default::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": "colours"}, "data": {"colour": "teal"}
        }))?,
    )
    .await?;

    let target = bed.target(Duration::from_secs(60)).await;
    let outcome = target
        .execute(
            &desired(ns, name, 1, Action::Install, json!({})),
            Some(&tgz),
        )
        .await?;
    assert_eq!(outcome.state, ReleaseState::Deployed, "{outcome:?}");
    let found = maps.get("looker-found").await?.data.unwrap_or_default();
    assert_eq!(found["colour"], "teal", "{found:?}");
    assert_eq!(found["absent"], "{}", "{found:?}");
    assert_eq!(found["kept"], "new", "{found:?}");
    let secrets: Api<Secret> = Api::namespaced(bed.client.clone(), ns);
    let password = |secret: Secret| secret.data.unwrap_or_default().get("password").cloned();
    let first = password(secrets.get("looker-password").await?);
    assert!(first.is_some());

    // The upgrade finds the Secret the install made, and keeps its password.
    let outcome = target
        .execute(
            &desired(ns, name, 2, Action::Upgrade, json!({})),
            Some(&tgz),
        )
        .await?;
    assert_eq!(outcome.state, ReleaseState::Deployed, "{outcome:?}");
    assert_eq!(outcome.revision, Some(2));
    let found = maps.get("looker-found").await?.data.unwrap_or_default();
    assert_eq!(found["kept"], "kept", "{found:?}");
    assert_eq!(password(secrets.get("looker-password").await?), first);
    Ok(())
}

/// A template rendering to invalid YAML: failed, the reason names the template.
async fn invalid_yaml_fails_naming_the_template(bed: &Bed) -> Result<()> {
    let (_, tgz) = bed.chart(
        "broken",
        "0.2.0",
        &[
            (
                "Chart.yaml",
                "apiVersion: v2\nname: broken\nversion: 0.2.0\n",
            ),
            (
                "templates/bad.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bad\ndata:\n  a: b\n  - c\n",
            ),
        ],
    )?;
    let target = bed.target(Duration::from_secs(30)).await;
    let outcome = target
        .execute(
            &desired("broken", "broken", 1, Action::Install, json!({})),
            Some(&tgz),
        )
        .await?;
    assert_eq!(outcome.state, ReleaseState::Failed, "{outcome:?}");
    let reason = outcome.reason.unwrap();
    assert!(reason.contains("broken/templates/bad.yaml"), "{reason}");
    assert!(
        !reason.contains("optikon-render-"),
        "no scratch paths in reasons: {reason}"
    );
    eprintln!("invalid YAML reason: {reason}");
    assert!(
        bed.release_secrets("broken", "broken").await?.is_empty(),
        "no record, as with helm"
    );
    Ok(())
}

/// Pods that can never be scheduled: the deadline passes, revision 1 is recorded failed the
/// way Helm records it; a fixed generation then deploys revision 2.
async fn readiness_deadline_records_a_failed_revision(bed: &Bed) -> Result<()> {
    let (ns, name) = ("stuck", "stuck");
    let (_, tgz) = bed.chart("web", "0.1.0", WEB_CHART)?;
    let target = bed.target(Duration::from_secs(5)).await;
    let values = json!({"nodeSelector": {"optikon.dev/no-such-node": "true"}});
    let outcome = target
        .execute(&desired(ns, name, 1, Action::Install, values), Some(&tgz))
        .await?;
    assert_eq!(
        (outcome.state, outcome.revision),
        (ReleaseState::Failed, Some(1)),
        "{outcome:?}"
    );
    let reason = outcome.reason.clone().unwrap();
    assert!(
        reason.starts_with(
            "Release \"stuck\" failed: not ready after 5s: Deployment stuck/stuck (0 of 1 replicas"
        ),
        "{reason}"
    );
    let list = bed.helm_json(&["list", "-n", ns])?;
    assert_eq!(
        (list[0]["status"].as_str(), list[0]["revision"].as_str()),
        (Some("failed"), Some("1")),
        "{list}"
    );
    let history = bed.helm_json(&["history", name, "-n", ns])?;
    assert_eq!(history[0]["description"].as_str(), Some(reason.as_str()));
    // Replaying the failed generation reports the same failure without a new revision.
    let again = target
        .execute(&desired(ns, name, 1, Action::Install, json!({})), None)
        .await?;
    assert_eq!(again, outcome);

    let target = bed.target(Duration::from_secs(60)).await;
    let outcome = target
        .execute(
            &desired(ns, name, 2, Action::Install, json!({})),
            Some(&tgz),
        )
        .await?;
    assert_eq!(
        (outcome.state, outcome.revision),
        (ReleaseState::Deployed, Some(2)),
        "{outcome:?}"
    );
    let history = bed.helm_json(&["history", name, "-n", ns])?;
    assert_eq!(history[1]["description"], "Upgrade complete", "{history}");
    Ok(())
}

/// `atomic`, as helm's `--atomic`: a failing upgrade is rolled back to the revision before
/// it, a failing install is uninstalled (its record kept, saying why). Replaying either
/// generation reports the same failure and applies nothing.
async fn atomic_undoes_a_failure_on_its_cluster(bed: &Bed) -> Result<()> {
    let ns = "atomic";
    let (_, tgz) = bed.chart("web", "0.1.0", WEB_CHART)?;
    let patient = bed.target(Duration::from_secs(60)).await;
    let hasty = bed.target(Duration::from_secs(5)).await;
    let stuck = json!({"nodeSelector": {"optikon.dev/no-such-node": "true"}});
    let atomic = |release: &str, generation, action, values| DesiredRelease {
        atomic: true,
        ..desired(ns, release, generation, action, values)
    };
    let deployments: Api<Deployment> = Api::namespaced(bed.client.clone(), ns);

    let installed = patient
        .execute(&atomic("kept", 1, Action::Install, json!({})), Some(&tgz))
        .await?;
    assert_eq!(installed.state, ReleaseState::Deployed, "{installed:?}");
    let upgrade = atomic("kept", 2, Action::Upgrade, stuck.clone());
    let outcome = hasty.execute(&upgrade, Some(&tgz)).await?;
    assert_eq!(
        (outcome.state, outcome.revision),
        (ReleaseState::Failed, Some(3)),
        "{outcome:?}"
    );
    let reason = outcome.reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with(
            "release kept failed, and has been rolled back due to atomic being set: not ready \
             after 5s: Deployment atomic/kept"
        ),
        "{reason}"
    );
    let history = bed.helm_json(&["history", "kept", "-n", ns])?;
    let rows: Vec<(&str, &str)> = history
        .as_array()
        .context("history rows")?
        .iter()
        .map(|r| {
            (
                r["status"].as_str().unwrap_or_default(),
                r["description"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(rows.len(), 3, "{history}");
    assert_eq!(rows[0], ("superseded", "Install complete"));
    assert_eq!(rows[1].0, "failed");
    assert!(
        rows[1]
            .1
            .starts_with("Upgrade \"kept\" failed: not ready after 5s")
    );
    assert_eq!(rows[2], ("deployed", "Rollback to 1"));
    let spec = deployments.get("kept").await?.spec.context("spec")?;
    assert_eq!(
        spec.template.spec.and_then(|p| p.node_selector),
        None,
        "the Deployment is back at revision 1"
    );
    assert_eq!(hasty.execute(&upgrade, None).await?, outcome, "replayed");

    let install = atomic("gone", 1, Action::Install, stuck);
    let outcome = hasty.execute(&install, Some(&tgz)).await?;
    assert_eq!(outcome.state, ReleaseState::Failed, "{outcome:?}");
    let reason = outcome.reason.clone().unwrap_or_default();
    assert!(
        reason.starts_with(
            "release gone failed, and has been uninstalled due to atomic being set: not ready \
             after 5s: Deployment atomic/gone"
        ),
        "{reason}"
    );
    assert!(deployments.get_opt("gone").await?.is_none(), "uninstalled");
    let listed = bed.helm_json(&["list", "-n", ns])?;
    assert_eq!(
        listed.as_array().map(|l| l.len()),
        Some(1),
        "only kept: {listed}"
    );
    let history = bed.helm_json(&["history", "gone", "-n", ns])?;
    assert_eq!(history[0]["status"], "uninstalled", "{history}");
    assert_eq!(history[0]["description"].as_str(), Some(reason.as_str()));
    assert_eq!(hasty.execute(&install, None).await?, outcome, "replayed");
    Ok(())
}

/// Drift by watching: once a drift pass has looked at a release, the cluster's watches tell
/// of an edit or a delete of one of its objects as it happens (no pass needed to find it),
/// and the next pass puts the object back.
async fn drift_is_watched(bed: &Bed) -> Result<()> {
    let (ns, name) = ("watched", "watched");
    let (_, tgz) = bed.chart("web", "0.1.0", WEB_CHART)?;
    let target = bed.target(Duration::from_secs(60)).await;
    let outcome = target
        .execute(
            &desired(ns, name, 1, Action::Install, json!({})),
            Some(&tgz),
        )
        .await?;
    assert_eq!(outcome.state, ReleaseState::Deployed, "{outcome:?}");
    let mut changes = target.drift_changes();
    let first = target
        .correct_drift(ns, name)
        .await?
        .context("a deployed release")?;
    assert!(!first.drifted(), "{first:?}");

    let services: Api<Service> = Api::namespaced(bed.client.clone(), ns);
    let told = |changed: Option<(String, String)>| changed == Some((ns.into(), name.into()));
    // The watches list first; a label added by hand is then seen as it is made.
    let deadline = Instant::now() + Duration::from_secs(30);
    for poke in 0.. {
        let patch = json!({"metadata": {"labels": {"poke": poke.to_string()}}});
        services
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        if let Ok(changed) = tokio::time::timeout(Duration::from_secs(1), changes.recv()).await
            && told(changed)
        {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the watches never told of an edit"
        );
    }
    services.delete(name, &Default::default()).await?;
    let changed = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            let changed = changes.recv().await;
            if told(changed.clone()) || changed.is_none() {
                return changed;
            }
        }
    })
    .await
    .context("the delete was never told")?;
    ensure!(told(changed), "the delete was told for the release");
    let report = target
        .correct_drift(ns, name)
        .await?
        .context("still deployed")?;
    assert_eq!(
        report.reason(),
        "drift corrected: Service watched/watched was deleted"
    );
    assert!(services.get_opt(name).await?.is_some(), "put back");
    Ok(())
}

/// The newest release record, decoded.
async fn newest_record(
    bed: &Bed,
    namespace: &str,
    release: &str,
) -> Result<optikon_core::release_record::HelmRelease> {
    let api: Api<Secret> = Api::namespaced(bed.client.clone(), namespace);
    let name = bed
        .release_secrets(namespace, release)
        .await?
        .into_iter()
        .max_by_key(|n| n.rsplit(".v").next().and_then(|v| v.parse::<u32>().ok()))
        .context("no release record")?;
    let secret = api.get(&name).await?;
    let data = secret
        .data
        .and_then(|d| d.get("release").cloned())
        .context("record without data")?;
    Ok(optikon_core::release_record::decode(&data.0)?)
}

/// Chart `name` 1.0.0: a ConfigMap `<name>-app`, and a pre-install/pre-upgrade Job
/// `<name>-setup` whose pod goes where `nodeSelector` (a value) says; a selector no node
/// matches leaves the hook waiting.
fn setup_hook_chart(bed: &Bed, name: &str) -> Result<Vec<u8>> {
    let chart_yaml = format!("apiVersion: v2\nname: {name}\nversion: 1.0.0\n");
    let app = format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {name}-app\n");
    let setup = format!(
        r#"apiVersion: batch/v1
kind: Job
metadata:
  name: {name}-setup
  annotations:
    helm.sh/hook: pre-install,pre-upgrade
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      {{{{- with .Values.nodeSelector }}}}
      nodeSelector:
        {{{{- toYaml . | nindent 8 }}}}
      {{{{- end }}}}
      containers:
        - name: setup
          image: busybox
"#
    );
    let (_, tgz) = bed.chart(
        name,
        "1.0.0",
        &[
            ("Chart.yaml", &chart_yaml),
            ("values.yaml", "nodeSelector: {}\n"),
            ("templates/app.yaml", &app),
            ("templates/setup.yaml", &setup),
        ],
    )?;
    Ok(tgz)
}

/// A pre-install Job that cannot be scheduled: the hook runs out of the release's wait and
/// the install fails in helm's words, before any object is applied. The next generation is an
/// upgrade (as `helm upgrade --install` after a failed install); its hook deletes the stuck
/// Job first (the default `before-hook-creation`) and this time completes.
async fn a_hook_out_of_time_fails_and_runs_again(bed: &Bed) -> Result<()> {
    let (ns, name) = ("hooked", "hooked");
    let tgz = setup_hook_chart(bed, "hooked")?;
    let target = bed.target(Duration::from_secs(5)).await;
    let stuck = json!({"nodeSelector": {"optikon.dev/no-such-node": "true"}});
    let outcome = target
        .execute(&desired(ns, name, 1, Action::Install, stuck), Some(&tgz))
        .await?;
    assert_eq!(
        (outcome.state, outcome.revision),
        (ReleaseState::Failed, Some(1)),
        "{outcome:?}"
    );
    assert_eq!(
        outcome.reason.as_deref(),
        Some(
            "Release \"hooked\" failed: failed pre-install: 1 error occurred:\n\t* timed out \
             waiting for the condition\n\n"
        )
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(bed.client.clone(), ns);
    assert!(
        configmaps.get_opt("hooked-app").await?.is_none(),
        "nothing applied"
    );
    let record = newest_record(bed, ns, name).await?;
    let hook = &record.hooks[0];
    assert_eq!(
        hook.last_run.phase,
        optikon_core::release_record::HookPhase::Failed
    );
    assert!(hook.last_run.completed_at >= hook.last_run.started_at);
    assert_eq!(hook.delete_policies, ["before-hook-creation"]);
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(bed.client.clone(), ns);
    let first_uid = jobs.get("hooked-setup").await?.metadata.uid;

    let target = bed.target(Duration::from_secs(60)).await;
    let outcome = target
        .execute(
            &desired(ns, name, 2, Action::Install, json!({})),
            Some(&tgz),
        )
        .await?;
    assert_eq!(
        (outcome.state, outcome.revision),
        (ReleaseState::Deployed, Some(2)),
        "{outcome:?}"
    );
    let job = jobs.get("hooked-setup").await?;
    assert_ne!(job.metadata.uid, first_uid, "made anew");
    assert_eq!(job.status.and_then(|s| s.succeeded), Some(1));
    let record = newest_record(bed, ns, name).await?;
    assert_eq!(
        record.hooks[0].last_run.phase,
        optikon_core::release_record::HookPhase::Succeeded
    );
    assert!(configmaps.get_opt("hooked-app").await?.is_some());
    let history = bed.helm_json(&["history", name, "-n", ns])?;
    assert_eq!(history[1]["description"], "Upgrade complete", "{history}");
    Ok(())
}

/// Waits until the hook Job `job` exists and is not the one with uid `not`: the attempt
/// that made it has written its record and is running its hooks. Returns its uid.
async fn hook_job_made(bed: &Bed, namespace: &str, job: &str, not: Option<&str>) -> Result<String> {
    let jobs: Api<k8s_openapi::api::batch::v1::Job> =
        Api::namespaced(bed.client.clone(), namespace);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(uid) = jobs.get_opt(job).await?.and_then(|j| j.metadata.uid)
            && Some(uid.as_str()) != not
        {
            return Ok(uid);
        }
        ensure!(Instant::now() < deadline, "hook job {job} was never made");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Helm's pending records: while a pre-install hook runs, the release's revision is already
/// recorded `pending-install`, "Initial install underway". An executor that dies there (the
/// attempt dropped mid-hook) leaves that record; the same generation run again takes the
/// revision over instead of adding one, and a newer generation marks it failed, as it never
/// finished, and records its own revision after it.
async fn pending_records_as_helm_writes_them(bed: &Bed) -> Result<()> {
    use optikon_core::release_record::Status;
    let (ns, name) = ("pending", "pending");
    let tgz = setup_hook_chart(bed, "pending")?;
    let stuck = json!({"nodeSelector": {"optikon.dev/no-such-node": "true"}});
    let first = desired(ns, name, 1, Action::Install, stuck);
    let target = bed.target(Duration::from_secs(120)).await;
    let configmaps: Api<ConfigMap> = Api::namespaced(bed.client.clone(), ns);
    let mut hook_uid = None;
    for attempt in 1..=2 {
        // The attempt is dropped once its hook runs: an executor dying mid-hook.
        let uid = tokio::select! {
            outcome = target.execute(&first, Some(&tgz)) => {
                anyhow::bail!("attempt {attempt} ended before it was cut off: {outcome:?}")
            }
            uid = hook_job_made(bed, ns, "pending-setup", hook_uid.as_deref()) => uid?,
        };
        hook_uid = Some(uid);
        let seen = newest_record(bed, ns, name).await?;
        assert_eq!(
            seen.info.status,
            Status::PendingInstall,
            "attempt {attempt}"
        );
        assert_eq!(seen.version, 1, "attempt {attempt}");
        assert_eq!(seen.info.description, "Initial install underway");
        assert_eq!(
            bed.release_secrets(ns, name).await?.len(),
            1,
            "attempt {attempt}: one revision"
        );
        assert!(
            configmaps.get_opt("pending-app").await?.is_none(),
            "nothing applied before the pre-install hook finished"
        );
    }
    let history = bed.helm_json(&["history", name, "-n", ns])?;
    assert_eq!(history[0]["status"], "pending-install", "{history}");

    let outcome = target
        .execute(
            &desired(ns, name, 2, Action::Install, json!({})),
            Some(&tgz),
        )
        .await?;
    assert_eq!(
        (outcome.state, outcome.revision),
        (ReleaseState::Deployed, Some(2)),
        "{outcome:?}"
    );
    let history = bed.helm_json(&["history", name, "-n", ns])?;
    assert_eq!(history.as_array().map(Vec::len), Some(2), "{history}");
    assert_eq!(history[0]["status"], "failed", "{history}");
    assert_eq!(
        history[0]["description"],
        "Release \"pending\" failed: interrupted before it finished; generation 2 carried on",
        "{history}"
    );
    assert_eq!(history[1]["status"], "deployed", "{history}");
    assert_eq!(history[1]["description"], "Upgrade complete", "{history}");
    assert!(configmaps.get_opt("pending-app").await?.is_some());
    Ok(())
}

/// A pre-rollback hook that cannot finish: the rollback revision is recorded `failed` (helm
/// 3.21 would leave it `pending-rollback`, see docs/helm.md), nothing is re-applied, and the
/// revision rolled away from stays deployed.
async fn a_failing_rollback_hook_records_a_failed_revision(bed: &Bed) -> Result<()> {
    let (ns, name) = ("rolling", "rolling");
    let (_, tgz) = bed.chart(
        "rolling",
        "1.0.0",
        &[
            ("Chart.yaml", "apiVersion: v2\nname: rolling\nversion: 1.0.0\n"),
            ("values.yaml", "message: one\n"),
            (
                "templates/app.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: rolling-app\ndata:\n  message: {{ .Values.message }}\n",
            ),
            (
                "templates/guard.yaml",
                r#"apiVersion: batch/v1
kind: Job
metadata:
  name: rolling-guard
  annotations:
    helm.sh/hook: pre-rollback
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      nodeSelector:
        optikon.dev/no-such-node: "true"
      containers:
        - name: guard
          image: busybox
"#,
            ),
        ],
    )?;
    let target = bed.target(Duration::from_secs(60)).await;
    for (generation, message) in [(1, "one"), (2, "two")] {
        let outcome = target
            .execute(
                &desired(
                    ns,
                    name,
                    generation,
                    Action::Install,
                    json!({"message": message}),
                ),
                Some(&tgz),
            )
            .await?;
        assert_eq!(outcome.state, ReleaseState::Deployed, "{outcome:?}");
    }
    let target = bed.target(Duration::from_secs(5)).await;
    let mut rollback = desired(ns, name, 3, Action::Rollback, Value::Null);
    rollback.rollback_to = Some(1);
    let outcome = target.execute(&rollback, None).await?;
    assert_eq!(
        (outcome.state, outcome.revision),
        (ReleaseState::Failed, Some(3)),
        "{outcome:?}"
    );
    assert_eq!(
        outcome.reason.as_deref(),
        Some(
            "Rollback \"rolling\" failed: 1 error occurred:\n\t* timed out waiting for the \
             condition\n\n"
        )
    );
    let configmaps: Api<ConfigMap> = Api::namespaced(bed.client.clone(), ns);
    let app = configmaps.get("rolling-app").await?;
    assert_eq!(
        app.data.and_then(|d| d.get("message").cloned()).as_deref(),
        Some("two"),
        "nothing re-applied"
    );
    let history = bed.helm_json(&["history", name, "-n", ns])?;
    let statuses: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["superseded", "deployed", "failed"], "{history}");
    Ok(())
}

/// Two executors on one generation at once: one revision, the loser told to retry (or it sees
/// the winner's result), and a retry reports the recorded outcome.
async fn racing_executors_write_one_revision(bed: &Bed) -> Result<()> {
    let (ns, name) = ("race", "race");
    let (_, tgz) = bed.chart("web", "0.1.0", WEB_CHART)?;
    let (a, b) = (
        bed.target(Duration::from_secs(60)).await,
        bed.target(Duration::from_secs(60)).await,
    );
    let command = desired(ns, name, 1, Action::Install, json!({}));
    let (ra, rb) = tokio::join!(
        a.execute(&command, Some(&tgz)),
        b.execute(&command, Some(&tgz))
    );
    let mut won = 0;
    for result in [ra, rb] {
        match result {
            Ok(Outcome {
                state: ReleaseState::Deployed,
                revision: Some(1),
                ..
            }) => won += 1,
            Err(ClusterError::Conflict { revision: 1, .. }) => {}
            other => panic!("unexpected race result: {other:?}"),
        }
    }
    assert!(won >= 1);
    assert_eq!(
        bed.release_secrets(ns, name).await?,
        vec!["sh.helm.release.v1.race.v1"]
    );
    let retry = b.execute(&command, Some(&tgz)).await?;
    assert_eq!(
        (retry.state, retry.revision),
        (ReleaseState::Deployed, Some(1))
    );
    Ok(())
}

fn crd(plural: &str, kind: &str) -> String {
    format!(
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: {plural}.example.com
spec:
  group: example.com
  scope: Namespaced
  names:
    plural: {plural}
    singular: {singular}
    kind: {kind}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
"#,
        singular = kind.to_lowercase()
    )
}

/// CRDs from `crds/` (created first, kept on uninstall) and from `templates/` (applied before
/// their custom resources), a Job waited for until complete, refusal to take over an object
/// nobody owns, and a revision written by the real `helm upgrade` in between.
async fn crds_jobs_ownership_and_helm_interplay(bed: &Bed) -> Result<()> {
    let (ns, name) = ("extras", "gadgets");
    let gadget_crd = crd("gadgets", "Gadget");
    let widget_crd = crd("widgets", "Widget");
    let (chart_dir, tgz) = bed.chart(
        "gadgets",
        "1.0.0",
        &[
            ("Chart.yaml", "apiVersion: v2\nname: gadgets\nversion: 1.0.0\n"),
            ("values.yaml", "size: 1\n"),
            ("crds/gadget.yaml", &gadget_crd),
            ("templates/widget-crd.yaml", &widget_crd),
            ("templates/gadget.yaml", "apiVersion: example.com/v1\nkind: Gadget\nmetadata:\n  name: g1\nspec:\n  size: {{ .Values.size }}\n"),
            ("templates/widget.yaml", "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: {{ .Values.size }}\n"),
            ("templates/taken.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: taken\ndata:\n  by: chart\n"),
            (
                "templates/job.yaml",
                "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: migrate\nspec:\n  template:\n    metadata:\n      labels:\n        app.kubernetes.io/instance: gadgets-job\n    spec:\n      restartPolicy: Never\n      containers:\n        - name: migrate\n          image: busybox\n",
            ),
        ],
    )?;
    let target = bed.target(Duration::from_secs(60)).await;

    // An object of the same name that nobody manages: refused, nothing recorded.
    let namespace = k8s_openapi::api::core::v1::Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(ns.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::all(bed.client.clone())
        .create(&Default::default(), &namespace)
        .await?;
    // A preview on the empty cluster: both CRDs would be created, and the custom resources,
    // of kinds no CRD serves yet, are shown as the chart renders them.
    let fresh = target
        .preview(
            &desired(ns, name, 1, Action::Install, json!({})),
            Some(&tgz),
        )
        .await?;
    assert_eq!(fresh.outcome, PreviewOutcome::Previewed, "{fresh:?}");
    for object in [
        "CustomResourceDefinition gadgets.example.com",
        "CustomResourceDefinition widgets.example.com",
        "Gadget extras/g1",
        "Widget extras/w1",
    ] {
        assert!(
            fresh
                .objects
                .iter()
                .any(|o| o.object == object && o.change == Change::Create),
            "{object} created: {fresh:?}"
        );
    }
    let configmaps: Api<ConfigMap> = Api::namespaced(bed.client.clone(), ns);
    let taken = ConfigMap {
        metadata: kube::api::ObjectMeta {
            name: Some("taken".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    configmaps.create(&Default::default(), &taken).await?;
    // The preview says so first, with the same reason, and changes nothing.
    let preview = target
        .preview(
            &desired(ns, name, 1, Action::Install, json!({})),
            Some(&tgz),
        )
        .await?;
    assert_eq!(preview.outcome, PreviewOutcome::Failed, "{preview:?}");
    assert!(
        preview
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("not managed by Helm"),
        "{preview:?}"
    );
    let outcome = target
        .execute(
            &desired(ns, name, 1, Action::Install, json!({})),
            Some(&tgz),
        )
        .await?;
    assert_eq!(outcome.state, ReleaseState::Failed, "{outcome:?}");
    let reason = outcome.reason.unwrap();
    assert!(
        reason.contains("ConfigMap extras/taken") && reason.contains("not managed by Helm"),
        "{reason}"
    );
    assert!(bed.release_secrets(ns, name).await?.is_empty());
    assert_eq!(configmaps.get("taken").await?.data, None, "left alone");

    // Once it is out of the way the same generation installs; the Job has completed by then.
    configmaps.delete("taken", &Default::default()).await?;
    // Previewed first. The CRD from `crds/` is there already (the refused attempt created
    // it, as helm's does before its templates) and stays as it is; the one from templates is
    // created, and the Widget, of a kind not served yet, is shown as the chart renders it.
    let preview = target
        .preview(
            &desired(ns, name, 1, Action::Install, json!({})),
            Some(&tgz),
        )
        .await?;
    assert_eq!(preview.outcome, PreviewOutcome::Previewed, "{preview:?}");
    let changes: Vec<(String, Change)> = preview
        .objects
        .iter()
        .map(|o| (o.object.clone(), o.change))
        .collect();
    assert_eq!(
        changes[0],
        (
            "CustomResourceDefinition gadgets.example.com".to_owned(),
            Change::Unchanged
        )
    );
    for object in [
        "CustomResourceDefinition widgets.example.com",
        "Gadget extras/g1",
        "Widget extras/w1",
        "ConfigMap extras/taken",
        "Job extras/migrate",
    ] {
        assert!(
            changes.contains(&(object.to_owned(), Change::Create)),
            "{object} created: {changes:?}"
        );
    }
    assert!(
        preview
            .objects
            .iter()
            .any(|o| o.object == "Widget extras/w1" && o.diff.contains("+  size: 1")),
        "{preview:?}"
    );
    assert!(
        bed.release_secrets(ns, name).await?.is_empty(),
        "a preview records nothing"
    );
    let outcome = target
        .execute(
            &desired(ns, name, 1, Action::Install, json!({})),
            Some(&tgz),
        )
        .await?;
    assert_eq!(
        (outcome.state, outcome.revision),
        (ReleaseState::Deployed, Some(1)),
        "{outcome:?}"
    );
    let jobs: Api<k8s_openapi::api::batch::v1::Job> = Api::namespaced(bed.client.clone(), ns);
    let job = jobs.get("migrate").await?;
    assert_eq!(
        job.status.and_then(|s| s.succeeded),
        Some(1),
        "waited for the Job to complete"
    );
    let gadgets = kube::api::ApiResource {
        group: "example.com".into(),
        version: "v1".into(),
        api_version: "example.com/v1".into(),
        kind: "Gadget".into(),
        plural: "gadgets".into(),
    };
    let widgets = kube::api::ApiResource {
        kind: "Widget".into(),
        plural: "widgets".into(),
        ..gadgets.clone()
    };
    let gadget_api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(bed.client.clone(), ns, &gadgets);
    let widget_api: Api<kube::api::DynamicObject> =
        Api::namespaced_with(bed.client.clone(), ns, &widgets);
    assert_eq!(gadget_api.get("g1").await?.data["spec"]["size"], 1);
    assert_eq!(widget_api.get("w1").await?.data["spec"]["size"], 1);
    let manifest = bed.helm(&["get", "manifest", name, "-n", ns])?;
    assert!(
        manifest.contains("name: widgets.example.com"),
        "templates/ CRDs are part of the release"
    );
    assert!(
        !manifest.contains("name: gadgets.example.com"),
        "crds/ CRDs are not (as with helm)"
    );

    // A revision made by hand with the real helm, then Optikon's next generation on top.
    bed.helm(&[
        "upgrade",
        name,
        chart_dir.to_str().unwrap(),
        "-n",
        ns,
        "--set",
        "size=2",
    ])?;
    assert_eq!(gadget_api.get("g1").await?.data["spec"]["size"], 2);
    let outcome = target
        .execute(
            &desired(ns, name, 2, Action::Install, json!({"size": 3})),
            Some(&tgz),
        )
        .await?;
    assert_eq!(
        (outcome.state, outcome.revision),
        (ReleaseState::Deployed, Some(3)),
        "{outcome:?}"
    );
    assert_eq!(gadget_api.get("g1").await?.data["spec"]["size"], 3);
    let history = bed.helm_json(&["history", name, "-n", ns])?;
    let statuses: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["superseded", "superseded", "deployed"],
        "{history}"
    );

    // Uninstall removes the release's objects, CRD from templates/ included; crds/ ones stay.
    let outcome = target
        .execute(&desired(ns, name, 3, Action::Uninstall, Value::Null), None)
        .await?;
    assert_eq!(outcome.state, ReleaseState::Uninstalled, "{outcome:?}");
    let crds: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
        Api::all(bed.client.clone());
    assert!(crds.get_opt("widgets.example.com").await?.is_none());
    assert!(crds.get_opt("gadgets.example.com").await?.is_some());
    assert!(jobs.get_opt("migrate").await?.is_none());
    assert!(gadget_api.get_opt("g1").await?.is_none());
    Ok(())
}
