//! Helm parity for hooks: one chart of ours, taken through install, a failing upgrade, rollback
//! and uninstall (and, apart, a failing install) by Optikon on one edge cluster and by the real
//! `helm upgrade --install` / `helm rollback` / `helm uninstall` on a twin cluster of the same
//! test bed, must leave the same hook objects, the same release records (hooks and their runs,
//! statuses, descriptions) and the same `helm history` and `helm get hooks` output.
//!
//! The twin clusters are copenhagen-1 (Optikon, selected by `ID=123`) and copenhagen-2
//! (helm by hand). Timestamps and uids differ and are left out of every comparison.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use optikon_core::message::{ReleaseState, ReleaseStatus};
use optikon_core::release_record::{self, HelmRelease, HookPhase, Status};
use optikon_e2e::{helm, kube_client, optikon, testbed, wait_until_healthy};
use optikon_testbed::Testbed;
use serde_json::Value;

const RELEASE: &str = "parity";
const NAMESPACE: &str = "parity";
/// Optikon's side, and the selector that picks only it.
const OPTIKON_SITE: &str = "copenhagen-1";
const OPTIKON_SELECTOR: &str = "ID=123";
/// Where the real helm runs.
const HELM_SITE: &str = "copenhagen-2";
/// helm waits as Optikon does (`DEFAULT_WAIT`), for hooks and for the release.
const HELM_WAIT: &[&str] = &["--wait", "--wait-for-jobs", "--timeout", "120s"];

/// `helm upgrade --install` of the test release from `chart` on the helm side's cluster, with
/// `extra` arguments, waiting for hooks and workloads as Optikon does.
fn helm_upgrade_install(
    testbed: &Testbed,
    chart: &str,
    namespace: &str,
    extra: &[&str],
) -> anyhow::Result<optikon_e2e::Output> {
    let mut args = vec!["upgrade", "--install", RELEASE, chart, "-n", namespace];
    args.extend(extra);
    args.extend(HELM_WAIT);
    helm(testbed, HELM_SITE, &args)
}

/// Helm failed too, and its error names each of `words`.
fn ensure_failed_naming(by_helm: &optikon_e2e::Output, words: &[&str]) -> anyhow::Result<()> {
    ensure!(by_helm.code != 0, "helm fails too: {by_helm:?}");
    ensure!(
        words.iter().all(|w| by_helm.stderr.contains(w)),
        "helm's error should name {words:?}: {}",
        by_helm.stderr
    );
    Ok(())
}

/// A Job of the chart; `fails` makes its pod fail (the test bed's kwok stage for that label).
fn job(name: &str, hook: &str, weight: &str, policy: Option<&str>, fails: &str) -> String {
    let policy = policy
        .map(|p| format!("\n    \"helm.sh/hook-delete-policy\": {p}"))
        .unwrap_or_default();
    format!(
        r#"apiVersion: batch/v1
kind: Job
metadata:
  name: {{{{ .Release.Name }}}}-{name}
  annotations:
    "helm.sh/hook": {hook}
    "helm.sh/hook-weight": "{weight}"{policy}
spec:
  backoffLimit: 0
  template:
    metadata:
      labels:
        app.kubernetes.io/instance: {{{{ .Release.Name }}}}-hooks
        {{{{- if {fails} }}}}
        pod-container-running-failed.stage.kwok.x-k8s.io: "true"
        {{{{- end }}}}
    spec:
      restartPolicy: Never
      containers:
        - name: {name}
          image: busybox:1.36
          command: ["sh", "-c", "echo {name}"]
"#
    )
}

/// The chart: weighted pre-install Jobs and ConfigMaps (one of each with the same name and
/// weight, so kind breaks the tie), each delete policy, a post-install Pod, a pre-install and
/// a pre-upgrade Job that fail when asked to, rollback and delete hooks, a test hook, and one
/// ordinary object.
fn chart_files(version: &str) -> Vec<(&'static str, String)> {
    vec![
        (
            "Chart.yaml",
            format!("apiVersion: v2\nname: parity\ndescription: Hooks of every kind and policy\nversion: {version}\nappVersion: \"1.0\"\n"),
        ),
        ("values.yaml", "message: hello\ninstallFails: false\nupgradeFails: false\n".into()),
        (
            "templates/configmap.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-app\ndata:\n  message: {{ .Values.message | quote }}\n".into(),
        ),
        (
            "templates/hooks/settings.yaml",
            r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-settings
  annotations:
    "helm.sh/hook": pre-install
    "helm.sh/hook-weight": "-10"
    "helm.sh/hook-delete-policy": hook-failed
data:
  message: {{ .Values.message | quote }}
"#
            .into(),
        ),
        (
            "templates/hooks/prepare.yaml",
            format!(
                "{}---\n{}---\n{}",
                job("prepare-late", "pre-install", "5", None, "false"),
                job(
                    "prepare-early",
                    "pre-install",
                    "-5",
                    Some("hook-succeeded"),
                    ".Values.installFails",
                ),
                r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-prepare-late
  annotations:
    "helm.sh/hook": pre-install
    "helm.sh/hook-weight": "5"
data:
  step: late
"#
            ),
        ),
        (
            "templates/hooks/announce.yaml",
            r#"apiVersion: v1
kind: Pod
metadata:
  name: {{ .Release.Name }}-announce
  labels:
    app.kubernetes.io/instance: {{ .Release.Name }}-hooks
  annotations:
    "helm.sh/hook": post-install
    "helm.sh/hook-delete-policy": hook-succeeded,hook-failed
spec:
  restartPolicy: Never
  containers:
    - name: announce
      image: busybox:1.36
      command: ["sh", "-c", "echo installed"]
"#
            .into(),
        ),
        (
            "templates/hooks/upgrade-check.yaml",
            job(
                "upgrade-check",
                "pre-upgrade",
                "0",
                Some("hook-failed"),
                ".Values.upgradeFails",
            ),
        ),
        (
            "templates/hooks/rollback.yaml",
            job("rolled-back", "pre-rollback,post-rollback", "1", None, "false"),
        ),
        (
            "templates/hooks/delete.yaml",
            format!(
                "{}---\n{}",
                job("goodbye", "pre-delete", "0", Some("hook-succeeded"), "false"),
                r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-gone
  annotations:
    "helm.sh/hook": post-delete
data:
  gone: "true"
"#
            ),
        ),
        (
            "templates/tests/test-app.yaml",
            r#"apiVersion: v1
kind: Pod
metadata:
  name: {{ .Release.Name }}-test-app
  annotations:
    "helm.sh/hook": test
spec:
  restartPolicy: Never
  containers:
    - name: test
      image: busybox:1.36
      command: ["sh", "-c", "true"]
"#
            .into(),
        ),
    ]
}

/// Writes and packages the chart with the real helm; returns the archive. Each test packages
/// its own version: the hub refuses other bytes under a version it already stores.
fn package_chart(
    testbed: &Testbed,
    dir: &Path,
    version: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let source = dir.join("parity");
    for (path, text) in chart_files(version) {
        let path = source.join(path);
        std::fs::create_dir_all(path.parent().context("chart file has a parent")?)?;
        std::fs::write(path, text)?;
    }
    let out = std::process::Command::new(testbed.tools().get("helm")?)
        .current_dir(dir)
        .args(["package", "parity"])
        .output()?;
    ensure!(out.status.success(), "helm package: {out:?}");
    Ok(dir.join(format!("parity-{version}.tgz")))
}

/// The newest release record on one site, decoded.
async fn newest_record(testbed: &Testbed, site: &str, ns: &str) -> anyhow::Result<HelmRelease> {
    let secrets: Api<Secret> = Api::namespaced(kube_client(testbed, site).await?, ns);
    let list = secrets
        .list(&ListParams::default().labels(&format!("owner=helm,name={RELEASE}")))
        .await?;
    let newest = list
        .items
        .into_iter()
        .max_by_key(|s| {
            s.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("version"))
                .and_then(|v| v.parse::<u32>().ok())
        })
        .with_context(|| format!("no release record of {RELEASE} on {site}"))?;
    let data = newest
        .data
        .as_ref()
        .and_then(|d| d.get(release_record::SECRET_DATA_KEY))
        .context("release Secret without data")?;
    Ok(release_record::decode(&data.0)?)
}

/// A recorded hook without its times.
#[derive(Debug, PartialEq)]
struct RecordedHook {
    kind: String,
    name: String,
    path: String,
    events: String,
    weight: i64,
    delete_policies: String,
    phase: HookPhase,
}

fn hooks_of(release: &HelmRelease) -> Vec<RecordedHook> {
    release
        .hooks
        .iter()
        .map(|h| {
            let events: Vec<&str> = h.events.iter().map(|e| e.as_str()).collect();
            RecordedHook {
                kind: h.kind.clone(),
                name: h.name.clone(),
                path: h.path.clone(),
                events: events.join(","),
                weight: h.weight,
                delete_policies: h.delete_policies.join(","),
                phase: h.last_run.phase,
            }
        })
        .collect()
}

/// The hooks that ran, in the order they started.
fn run_order(release: &HelmRelease) -> Vec<String> {
    let mut ran: Vec<_> = release
        .hooks
        .iter()
        .filter_map(|h| {
            h.last_run
                .started_at
                .map(|at| (at, format!("{} {}", h.kind, h.name)))
        })
        .collect();
    ran.sort();
    ran.into_iter().map(|(_, hook)| hook).collect()
}

/// Which of the chart's hook objects exist on a site.
async fn hook_objects(
    testbed: &Testbed,
    site: &str,
    ns: &str,
) -> anyhow::Result<BTreeMap<String, bool>> {
    let client = kube_client(testbed, site).await?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let configmaps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client, ns);
    let mut present = BTreeMap::new();
    for name in [
        "prepare-late",
        "prepare-early",
        "upgrade-check",
        "rolled-back",
        "goodbye",
    ] {
        let name = format!("{RELEASE}-{name}");
        present.insert(format!("Job {name}"), jobs.get_opt(&name).await?.is_some());
    }
    for name in ["settings", "prepare-late", "gone"] {
        let name = format!("{RELEASE}-{name}");
        present.insert(
            format!("ConfigMap {name}"),
            configmaps.get_opt(&name).await?.is_some(),
        );
    }
    for name in ["announce", "test-app"] {
        let name = format!("{RELEASE}-{name}");
        present.insert(format!("Pod {name}"), pods.get_opt(&name).await?.is_some());
    }
    Ok(present)
}

/// One row of `helm history` without its time.
#[derive(Debug, PartialEq)]
struct HistoryRow {
    revision: u64,
    status: String,
    chart: String,
    app_version: String,
    description: String,
}

fn history(testbed: &Testbed, site: &str, ns: &str) -> anyhow::Result<Vec<HistoryRow>> {
    let out = helm(testbed, site, &["history", RELEASE, "-n", ns, "-o", "json"])?.ok()?;
    let rows: Vec<Value> = serde_json::from_str(&out.stdout)?;
    let text = |row: &Value, key: &str| row[key].as_str().unwrap_or_default().to_owned();
    Ok(rows
        .iter()
        .map(|r| HistoryRow {
            revision: r["revision"].as_u64().unwrap_or_default(),
            status: text(r, "status"),
            chart: text(r, "chart"),
            app_version: text(r, "app_version"),
            description: text(r, "description"),
        })
        .collect())
}

/// Fails on any difference between the two sites that is not a time or a uid.
async fn assert_sites_agree(
    testbed: &Testbed,
    ns: &str,
    step: &str,
) -> anyhow::Result<HelmRelease> {
    let ours = newest_record(testbed, OPTIKON_SITE, ns).await?;
    let theirs = newest_record(testbed, HELM_SITE, ns).await?;
    assert_eq!(
        (ours.version, ours.info.status, &ours.info.description),
        (theirs.version, theirs.info.status, &theirs.info.description),
        "{step}: revision, status and description"
    );
    assert_eq!(
        hooks_of(&ours),
        hooks_of(&theirs),
        "{step}: recorded hooks and their last runs"
    );
    assert_eq!(
        run_order(&ours),
        run_order(&theirs),
        "{step}: the order hooks ran in"
    );
    assert_eq!(ours.manifest, theirs.manifest, "{step}: manifest");
    assert_eq!(
        hook_objects(testbed, OPTIKON_SITE, ns).await?,
        hook_objects(testbed, HELM_SITE, ns).await?,
        "{step}: hook objects left on the cluster"
    );
    assert_eq!(
        history(testbed, OPTIKON_SITE, ns)?,
        history(testbed, HELM_SITE, ns)?,
        "{step}: helm history"
    );
    let get_hooks = |site| helm(testbed, site, &["get", "hooks", RELEASE, "-n", ns]);
    assert_eq!(
        get_hooks(OPTIKON_SITE)?.ok()?.stdout,
        get_hooks(HELM_SITE)?.ok()?.stdout,
        "{step}: helm get hooks"
    );
    Ok(ours)
}

/// What Optikon reports for the release on its site.
fn optikon_status(testbed: &Testbed, ns: &str) -> anyhow::Result<ReleaseStatus> {
    let out = optikon(testbed, &["status", RELEASE, "-o", "json"])?.ok()?;
    let statuses: Vec<ReleaseStatus> = serde_json::from_str(&out.stdout)?;
    statuses
        .into_iter()
        .find(|s| s.cluster == OPTIKON_SITE && s.namespace == ns)
        .with_context(|| format!("optikon status has no {RELEASE} on {OPTIKON_SITE}"))
}

#[tokio::test]
async fn hooks_run_as_helm_runs_them() -> anyhow::Result<()> {
    let testbed = testbed().await;
    wait_until_healthy(&testbed).await?;
    let dir = tempfile::tempdir()?;
    let chart = package_chart(&testbed, dir.path(), "0.1.0")?;
    let chart = chart.to_str().context("chart path is UTF-8")?;

    // Install: every pre-install hook by weight, then the objects, then the post-install Pod.
    let out = optikon(
        &testbed,
        &[
            "install",
            RELEASE,
            chart,
            "-n",
            NAMESPACE,
            "-l",
            OPTIKON_SELECTOR,
        ],
    )?
    .ok()?;
    ensure!(out.stdout.contains(OPTIKON_SITE), "{}", out.stdout);
    helm_upgrade_install(&testbed, chart, NAMESPACE, &["--create-namespace"])?.ok()?;

    let installed = assert_sites_agree(&testbed, NAMESPACE, "install").await?;
    assert_eq!(installed.info.description, "Install complete");
    assert_eq!(
        run_order(&installed),
        [
            "ConfigMap parity-settings",
            "Job parity-prepare-early",
            "ConfigMap parity-prepare-late",
            "Job parity-prepare-late",
            "Pod parity-announce",
        ],
        "weights first, then names, then kinds in Helm's install order"
    );
    let objects = hook_objects(&testbed, OPTIKON_SITE, NAMESPACE).await?;
    let expected: BTreeMap<String, bool> = [
        ("ConfigMap parity-gone", false),        // post-delete
        ("ConfigMap parity-prepare-late", true), // before-hook-creation (the default) keeps it
        ("ConfigMap parity-settings", true),     // hook-failed, and it succeeded
        ("Job parity-goodbye", false),           // pre-delete
        ("Job parity-prepare-early", false),     // hook-succeeded
        ("Job parity-prepare-late", true),
        ("Job parity-rolled-back", false), // pre- and post-rollback
        ("Job parity-upgrade-check", false), // pre-upgrade
        ("Pod parity-announce", false),    // hook-succeeded
        ("Pod parity-test-app", false),    // test hooks wait for `helm test`
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    assert_eq!(objects, expected);
    let test_hook = installed
        .hooks
        .iter()
        .find(|h| h.name == "parity-test-app")
        .context("the test hook is recorded")?;
    assert_eq!(test_hook.last_run.phase, HookPhase::NotRun);
    assert!(
        test_hook.delete_policies.is_empty(),
        "never run, so no default policy"
    );
    assert_eq!(
        optikon_status(&testbed, NAMESPACE)?.state,
        ReleaseState::Deployed
    );

    // An upgrade whose pre-upgrade Job fails: revision 2 failed, naming the hook; nothing of
    // the upgrade applied; revision 1 stays deployed.
    let out = optikon(
        &testbed,
        &[
            "upgrade",
            RELEASE,
            chart,
            "-n",
            NAMESPACE,
            "-l",
            OPTIKON_SELECTOR,
            "--set",
            "upgradeFails=true",
        ],
    )?;
    ensure!(
        out.code == 1 && out.stdout.contains(OPTIKON_SITE),
        "a failed hook fails the request on its cluster: {out:?}"
    );
    let by_helm =
        helm_upgrade_install(&testbed, chart, NAMESPACE, &["--set", "upgradeFails=true"])?;
    ensure_failed_naming(
        &by_helm,
        &["pre-upgrade hooks failed", "parity-upgrade-check"],
    )?;

    let failed = assert_sites_agree(&testbed, NAMESPACE, "failed upgrade").await?;
    assert_eq!(
        failed.info.description,
        "Upgrade \"parity\" failed: pre-upgrade hooks failed: 1 error occurred:\n\t* job parity-upgrade-check failed: BackoffLimitExceeded\n\n"
    );
    let status = optikon_status(&testbed, NAMESPACE)?;
    assert_eq!(status.state, ReleaseState::Failed, "{status:?}");
    let reason = status.reason.unwrap_or_default();
    ensure!(
        reason.contains("pre-upgrade hooks failed") && reason.contains("parity-upgrade-check"),
        "the reason names the hook: {reason}"
    );
    let statuses: Vec<String> = history(&testbed, OPTIKON_SITE, NAMESPACE)?
        .into_iter()
        .map(|h| h.status)
        .collect();
    assert_eq!(statuses, ["deployed", "failed"]);
    assert!(
        !hook_objects(&testbed, OPTIKON_SITE, NAMESPACE).await?["Job parity-upgrade-check"],
        "hook-failed deleted the failed Job"
    );

    // Back to revision 1: its hooks (as recorded then) run for pre- and post-rollback.
    optikon(
        &testbed,
        &[
            "rollback",
            RELEASE,
            "1",
            "-n",
            NAMESPACE,
            "-l",
            OPTIKON_SELECTOR,
        ],
    )?
    .ok()?;
    let mut args = vec!["rollback", RELEASE, "1", "-n", NAMESPACE];
    args.extend(HELM_WAIT);
    helm(&testbed, HELM_SITE, &args)?.ok()?;
    let rolled_back = assert_sites_agree(&testbed, NAMESPACE, "rollback").await?;
    assert_eq!(
        (rolled_back.version, rolled_back.info.description.as_str()),
        (3, "Rollback to 1")
    );
    let rollback_hook = rolled_back
        .hooks
        .iter()
        .find(|h| h.name == "parity-rolled-back")
        .context("the rollback hook is recorded")?;
    assert_eq!(rollback_hook.last_run.phase, HookPhase::Succeeded);
    assert!(hook_objects(&testbed, OPTIKON_SITE, NAMESPACE).await?["Job parity-rolled-back"]);

    // Uninstall (history kept, as Optikon keeps it): pre-delete, the objects, post-delete.
    optikon(
        &testbed,
        &[
            "uninstall",
            RELEASE,
            "-n",
            NAMESPACE,
            "-l",
            OPTIKON_SELECTOR,
        ],
    )?
    .ok()?;
    let mut args = vec!["uninstall", RELEASE, "-n", NAMESPACE, "--keep-history"];
    args.extend(HELM_WAIT.iter().filter(|a| **a != "--wait-for-jobs"));
    helm(&testbed, HELM_SITE, &args)?.ok()?;
    let uninstalled = assert_sites_agree(&testbed, NAMESPACE, "uninstall").await?;
    assert_eq!(uninstalled.info.description, "Uninstallation complete");
    let left = hook_objects(&testbed, OPTIKON_SITE, NAMESPACE).await?;
    assert!(!left["Job parity-goodbye"], "hook-succeeded");
    assert!(
        left["ConfigMap parity-gone"] && left["Job parity-prepare-late"],
        "hook objects outlive the release, as with helm: {left:?}"
    );
    Ok(())
}

/// A pre-install Job that fails: the install is `failed` on both sides in helm's words, naming
/// the Job; nothing of the chart is applied; the hooks that ran stay unless a policy says
/// otherwise (the failed Job's is `hook-succeeded`, so it stays as well).
#[tokio::test]
async fn a_failing_pre_install_hook_fails_the_install() -> anyhow::Result<()> {
    const FAILING: &str = "parity-failing";
    let testbed = testbed().await;
    wait_until_healthy(&testbed).await?;
    let dir = tempfile::tempdir()?;
    let chart = package_chart(&testbed, dir.path(), "0.2.0")?;
    let chart = chart.to_str().context("chart path is UTF-8")?;

    let out = optikon(
        &testbed,
        &[
            "install",
            RELEASE,
            chart,
            "-n",
            FAILING,
            "-l",
            OPTIKON_SELECTOR,
            "--set",
            "installFails=true",
        ],
    )?;
    ensure!(
        out.code == 1 && out.stdout.contains(OPTIKON_SITE),
        "a failed hook fails the request on its cluster: {out:?}"
    );
    let by_helm = helm_upgrade_install(
        &testbed,
        chart,
        FAILING,
        &["--create-namespace", "--set", "installFails=true"],
    )?;
    ensure_failed_naming(&by_helm, &["failed pre-install", "parity-prepare-early"])?;

    let failed = assert_sites_agree(&testbed, FAILING, "failed install").await?;
    assert_eq!(
        failed.info.description,
        "Release \"parity\" failed: failed pre-install: 1 error occurred:\n\t* job parity-prepare-early failed: BackoffLimitExceeded\n\n"
    );
    assert_eq!(
        run_order(&failed),
        ["ConfigMap parity-settings", "Job parity-prepare-early"]
    );
    let objects = hook_objects(&testbed, OPTIKON_SITE, FAILING).await?;
    assert!(
        objects["ConfigMap parity-settings"] && objects["Job parity-prepare-early"],
        "{objects:?}"
    );
    assert!(
        !objects["Job parity-prepare-late"],
        "never ran: {objects:?}"
    );
    for site in [OPTIKON_SITE, HELM_SITE] {
        let configmaps: Api<ConfigMap> =
            Api::namespaced(kube_client(&testbed, site).await?, FAILING);
        assert!(
            configmaps.get_opt("parity-app").await?.is_none(),
            "nothing of the chart applied on {site}"
        );
    }
    let status = optikon_status(&testbed, FAILING)?;
    assert_eq!(status.state, ReleaseState::Failed, "{status:?}");
    let reason = status.reason.unwrap_or_default();
    ensure!(
        reason.contains("failed pre-install") && reason.contains("parity-prepare-early"),
        "the reason names the hook: {reason}"
    );
    Ok(())
}

/// A chart archive made with tar, not `helm package` (which would rewrite Chart.yaml), so that
/// the hub and the edge see `version: 1` and `appVersion: 1.10` unquoted, as written.
fn tar_chart(dir: &Path, name: &str, files: &[(&str, &str)]) -> anyhow::Result<std::path::PathBuf> {
    for (path, text) in files {
        let path = dir.join(name).join(path);
        std::fs::create_dir_all(path.parent().context("chart file has a parent")?)?;
        std::fs::write(path, text)?;
    }
    let archive = dir.join(format!("{name}.tgz"));
    let out = std::process::Command::new("tar")
        .current_dir(dir)
        .arg("czf")
        .arg(&archive)
        .arg(name)
        .output()?;
    ensure!(out.status.success(), "tar: {out:?}");
    Ok(archive)
}

/// What helm says of the release on one site: its values as given and as computed, the
/// values the chart saw, and its chart and app version.
async fn values_seen(testbed: &Testbed, site: &str, ns: &str) -> anyhow::Result<Vec<String>> {
    let get = |args: &[&str]| -> anyhow::Result<String> {
        let mut all = vec!["get", "values", RELEASE, "-n", ns, "-o", "json"];
        all.extend(args);
        Ok(helm(testbed, site, &all)?.ok()?.stdout)
    };
    let configmaps: Api<ConfigMap> = Api::namespaced(kube_client(testbed, site).await?, ns);
    let rendered = configmaps
        .get(&format!("{RELEASE}-values"))
        .await?
        .data
        .unwrap_or_default()
        .remove("values.json")
        .context("the ConfigMap holds values.json")?;
    let rows = history(testbed, site, ns)?;
    let newest = rows.last().context("a history")?;
    let notes = helm(testbed, site, &["get", "notes", RELEASE, "-n", ns])?
        .ok()?
        .stdout;
    Ok(vec![
        format!("helm get values: {}", get(&[])?.trim()),
        format!("helm get values --all: {}", get(&["--all"])?.trim()),
        format!("rendered: {rendered}"),
        format!("chart {} app {}", newest.chart, newest.app_version),
        format!("helm get notes: {notes}"),
    ])
}

/// One values file, read as helm reads it: `flag: no` is false, `mode: 0644` is 420 (YAML
/// 1.1), on install and upgrade, with every kind of `--set`. And Chart.yaml's `version: 1`
/// is a version (helm packages it) and `appVersion: 1.10` reads as helm reads it. The NOTES
/// (`helm get notes`) read the same too, `.Release.IsInstall` and a missing value included.
#[tokio::test]
async fn values_and_chart_fields_are_read_as_helm_reads_them() -> anyhow::Result<()> {
    const NS: &str = "parity-values";
    let testbed = testbed().await;
    wait_until_healthy(&testbed).await?;
    let dir = tempfile::tempdir()?;
    let chart = tar_chart(
        dir.path(),
        "parity-values",
        &[
            (
                "Chart.yaml",
                "apiVersion: v2\nname: parity-values\nversion: 1\nappVersion: 1.10\n",
            ),
            (
                "values.yaml",
                "enabled: yes\nreplicas: 010\nnothing: ~\nimage:\n  tag: 1.20\n",
            ),
            (
                "templates/values.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-values\ndata:\n  values.json: {{ toJson .Values | quote }}\n",
            ),
            (
                "templates/_names.tpl",
                "{{ define \"parity.who\" }}{{ .Release.Name }}@{{ .Release.Namespace }}{{ end }}",
            ),
            (
                "templates/NOTES.txt",
                "{{ template \"parity.who\" . }}{{ if .Release.IsInstall }} installed{{ else }} upgraded{{ end }}.\n\
                 flag={{ .Values.flag }} mode={{ .Values.mode }} missing=[{{ .Values.nope }}] <b>&\n\
                 {{- /* a comment */}}\n  chart {{ .Chart.Name }}-{{ .Chart.Version }} app {{ .Chart.AppVersion }}\n",
            ),
        ],
    )?;
    let chart = chart.to_str().context("chart path is UTF-8")?;
    let values_file = dir.path().join("prod.yaml");
    std::fs::write(&values_file, "flag: no\nmode: 0644\nlist: [on, off, 1e3]\n")?;
    let motd = dir.path().join("motd.txt");
    std::fs::write(&motd, "welcome: 01\n")?;
    let values_file = values_file.to_str().context("UTF-8 path")?;
    let set_file = format!("motd={}", motd.to_str().context("UTF-8 path")?);
    let flags = [
        "-f",
        values_file,
        "--set",
        "count=010,on=yes",
        "--set-string",
        "tag=0644",
        "--set-json",
        r#"obj={"a":[1,2.50]}"#,
        "--set-file",
        &set_file,
        "--set-literal",
        "lit=a,b",
    ];

    let mut install = vec!["install", RELEASE, chart, "-n", NS, "-l", OPTIKON_SELECTOR];
    install.extend(flags);
    optikon(&testbed, &install)?.ok()?;
    let mut by_helm = vec!["--create-namespace"];
    by_helm.extend(flags);
    helm_upgrade_install(&testbed, chart, NS, &by_helm)?.ok()?;

    let ours = values_seen(&testbed, OPTIKON_SITE, NS).await?;
    assert_eq!(ours, values_seen(&testbed, HELM_SITE, NS).await?, "install");
    let rendered: Value = serde_json::from_str(
        ours[2]
            .strip_prefix("rendered: ")
            .context("rendered values")?,
    )?;
    assert_eq!(
        (&rendered["flag"], &rendered["mode"], &rendered["enabled"]),
        (
            &Value::Bool(false),
            &serde_json::json!(420),
            &Value::Bool(true)
        ),
        "YAML 1.1, as helm reads it: {rendered}"
    );

    // Upgrade with another file on top: the same on both sides again.
    let second = dir.path().join("more.yaml");
    std::fs::write(&second, "mode: 0755\nimage:\n  tag: '1.20'\n")?;
    let second = second.to_str().context("UTF-8 path")?;
    let mut upgrade = vec!["upgrade", RELEASE, chart, "-n", NS, "-l", OPTIKON_SELECTOR];
    upgrade.extend(flags);
    upgrade.extend(["-f", second]);
    optikon(&testbed, &upgrade)?.ok()?;
    let mut by_helm = flags.to_vec();
    by_helm.extend(["-f", second]);
    helm_upgrade_install(&testbed, chart, NS, &by_helm)?.ok()?;
    assert_eq!(
        values_seen(&testbed, OPTIKON_SITE, NS).await?,
        values_seen(&testbed, HELM_SITE, NS).await?,
        "upgrade"
    );
    Ok(())
}

/// `--atomic` as helm's: an upgrade whose pre-upgrade hook fails is rolled back to the
/// revision before it, record by record as helm leaves it; an install whose pre-install hook
/// fails is uninstalled, so `helm list` shows nothing on either site. (helm then purges the
/// install's history; Optikon keeps it `uninstalled`, see docs/helm.md.)
#[tokio::test]
async fn atomic_undoes_a_failure_as_helm_does() -> anyhow::Result<()> {
    const UPGRADED: &str = "parity-atomic";
    const INSTALLED: &str = "parity-atomic-install";
    let testbed = testbed().await;
    wait_until_healthy(&testbed).await?;
    let dir = tempfile::tempdir()?;
    let chart = package_chart(&testbed, dir.path(), "0.3.0")?;
    let chart = chart.to_str().context("chart path is UTF-8")?;
    let optikon_apply = |verb: &str, ns: &str, extra: &[&str]| {
        let mut args = vec![verb, RELEASE, chart, "-n", ns, "-l", OPTIKON_SELECTOR];
        args.extend(extra);
        optikon(&testbed, &args)
    };

    optikon_apply("install", UPGRADED, &[])?.ok()?;
    helm_upgrade_install(&testbed, chart, UPGRADED, &["--create-namespace"])?.ok()?;
    let failing = ["--set", "upgradeFails=true", "--atomic"];
    let out = optikon_apply("upgrade", UPGRADED, &failing)?;
    ensure!(
        out.code == 1 && out.stdout.contains(OPTIKON_SITE),
        "the upgrade fails on its cluster: {out:?}"
    );
    let by_helm = helm_upgrade_install(&testbed, chart, UPGRADED, &failing)?;
    ensure_failed_naming(
        &by_helm,
        &[
            "has been rolled back due to atomic being set",
            "parity-upgrade-check",
        ],
    )?;
    let back = assert_sites_agree(&testbed, UPGRADED, "atomic upgrade").await?;
    assert_eq!(
        (
            back.version,
            back.info.status,
            back.info.description.as_str()
        ),
        (3, Status::Deployed, "Rollback to 1")
    );
    let reason = optikon_status(&testbed, UPGRADED)?
        .reason
        .unwrap_or_default();
    ensure!(
        reason.starts_with("release parity failed, and has been rolled back due to atomic being set: pre-upgrade hooks failed")
            && by_helm.stderr.contains(reason.trim_end()),
        "Optikon's reason is helm's error: {reason:?} / {:?}",
        by_helm.stderr
    );

    let failing = ["--set", "installFails=true", "--atomic"];
    let out = optikon_apply("install", INSTALLED, &failing)?;
    ensure!(out.code == 1, "the install fails: {out:?}");
    let mut by_helm_args = vec!["--create-namespace"];
    by_helm_args.extend(failing);
    let by_helm = helm_upgrade_install(&testbed, chart, INSTALLED, &by_helm_args)?;
    ensure_failed_naming(&by_helm, &["has been uninstalled due to atomic being set"])?;
    for site in [OPTIKON_SITE, HELM_SITE] {
        let listed = helm(&testbed, site, &["list", "-n", INSTALLED, "-q"])?.ok()?;
        assert_eq!(listed.stdout.trim(), "", "nothing listed on {site}");
        let configmaps: Api<ConfigMap> =
            Api::namespaced(kube_client(&testbed, site).await?, INSTALLED);
        assert!(
            configmaps.get_opt("parity-app").await?.is_none(),
            "nothing of the chart left on {site}"
        );
    }
    let reason = optikon_status(&testbed, INSTALLED)?
        .reason
        .unwrap_or_default();
    ensure!(
        reason.starts_with("release parity failed, and has been uninstalled due to atomic being set: failed pre-install")
            && by_helm.stderr.contains(reason.trim_end()),
        "Optikon's reason is helm's error: {reason:?} / {:?}",
        by_helm.stderr
    );
    Ok(())
}

/// The hand-over: after Optikon, someone runs `helm upgrade` by hand on the edge. Drift
/// correction does not undo it but reports it (the release's status names the revision made
/// outside Optikon); Optikon's next change goes on top of it as helm's next upgrade would;
/// from then on drift correction keeps Optikon's revision in place again.
#[tokio::test]
async fn a_helm_upgrade_by_hand_is_reported_then_built_on() -> anyhow::Result<()> {
    const NS: &str = "parity-handover";
    let testbed = testbed().await;
    wait_until_healthy(&testbed).await?;
    let dir = tempfile::tempdir()?;
    let chart = tar_chart(
        dir.path(),
        "parity-handover",
        &[
            (
                "Chart.yaml",
                "apiVersion: v2\nname: parity-handover\nversion: 0.1.0\n",
            ),
            ("values.yaml", "message: hello\n"),
            (
                "templates/configmap.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-app\ndata:\n  message: {{ .Values.message | quote }}\n",
            ),
        ],
    )?;
    let chart = chart.to_str().context("chart path is UTF-8")?;
    let configmaps: Api<ConfigMap> =
        Api::namespaced(kube_client(&testbed, OPTIKON_SITE).await?, NS);
    let message = || async {
        let data = configmaps.get(&format!("{RELEASE}-app")).await?.data;
        anyhow::Ok(
            data.unwrap_or_default()
                .remove("message")
                .unwrap_or_default(),
        )
    };
    let optikon_apply = |verb: &str, value: &str| {
        let set = format!("message={value}");
        optikon(
            &testbed,
            &[
                verb,
                RELEASE,
                chart,
                "-n",
                NS,
                "-l",
                OPTIKON_SELECTOR,
                "--set",
                &set,
            ],
        )
    };

    optikon_apply("install", "optikon")?.ok()?;
    let mut by_hand = vec!["upgrade", RELEASE, chart, "-n", NS, "--reuse-values"];
    by_hand.extend(["--set", "message=by-hand"]);
    by_hand.extend(HELM_WAIT);
    helm(&testbed, OPTIKON_SITE, &by_hand)?.ok()?;

    let reported = optikon_e2e::eventually(
        "the drift pass reports the revision made by hand",
        Duration::from_secs(90),
        || async {
            let status = optikon_status(&testbed, NS)?;
            let outside = status
                .reason
                .as_deref()
                .is_some_and(|r| r.starts_with("revision 2 was made outside Optikon"));
            Ok(outside.then_some(status))
        },
    )
    .await?;
    assert_eq!(
        (reported.state, reported.revision),
        (ReleaseState::Deployed, Some(2))
    );
    assert_eq!(message().await?, "by-hand", "left as it is");

    optikon_apply("upgrade", "next")?.ok()?;
    assert_eq!(message().await?, "next");
    let rows: Vec<(u64, String, String)> = history(&testbed, OPTIKON_SITE, NS)?
        .into_iter()
        .map(|h| (h.revision, h.status, h.description))
        .collect();
    let row = |revision: u64, status: &str, description: &str| {
        (revision, status.to_owned(), description.to_owned())
    };
    assert_eq!(
        rows,
        [
            row(1, "superseded", "Install complete"),
            row(2, "superseded", "Upgrade complete"),
            row(3, "deployed", "Upgrade complete"),
        ]
    );

    // Optikon's revision again: an edit is put back.
    configmaps
        .patch(
            &format!("{RELEASE}-app"),
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"message": "edited"}})),
        )
        .await?;
    optikon_e2e::eventually(
        "drift correction puts Optikon's value back",
        Duration::from_secs(90),
        || async { Ok((message().await? == "next").then_some(())) },
    )
    .await?;
    Ok(())
}

/// Subcharts as helm reads them, and a values schema: a subchart enabled by its condition,
/// one left out by its tag, a value imported from a subchart (`import-values`); then an
/// upgrade whose value breaks `values.schema.json`, refused before anything is applied. The
/// same on both sites: values, rendered objects, records and history.
#[tokio::test]
async fn subcharts_and_a_values_schema_as_helm_reads_them() -> anyhow::Result<()> {
    const NS: &str = "parity-subcharts";
    let testbed = testbed().await;
    wait_until_healthy(&testbed).await?;
    let dir = tempfile::tempdir()?;
    let configmap = |suffix: &str| {
        format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{{{ .Release.Name }}}}-{suffix}\ndata:\n  values.json: {{{{ toJson .Values | quote }}}}\n"
        )
    };
    let (top, db, cache) = (configmap("values"), configmap("db"), configmap("cache"));
    let chart = tar_chart(
        dir.path(),
        "parity-sub",
        &[
            (
                "Chart.yaml",
                "apiVersion: v2\nname: parity-sub\nversion: 0.1.0\ndependencies:\n\
                 - name: db\n  version: 0.1.0\n  condition: db.enabled\n  tags: [backend]\n\
                 \x20 import-values:\n    - child: exported\n      parent: fromDb\n\
                 - name: cache\n  version: 0.1.0\n  tags: [extras]\n",
            ),
            (
                "values.yaml",
                "replicas: 1\ndb:\n  enabled: true\ntags:\n  extras: false\n",
            ),
            (
                "values.schema.json",
                r#"{"type": "object", "properties": {"replicas": {"type": "integer", "minimum": 1}}}"#,
            ),
            ("templates/values.yaml", &top),
            (
                "charts/db/Chart.yaml",
                "apiVersion: v2\nname: db\nversion: 0.1.0\n",
            ),
            ("charts/db/values.yaml", "exported:\n  port: 5432\n"),
            ("charts/db/templates/cm.yaml", &db),
            (
                "charts/cache/Chart.yaml",
                "apiVersion: v2\nname: cache\nversion: 0.1.0\n",
            ),
            ("charts/cache/templates/cm.yaml", &cache),
        ],
    )?;
    let chart = chart.to_str().context("chart path is UTF-8")?;

    optikon(
        &testbed,
        &["install", RELEASE, chart, "-n", NS, "-l", OPTIKON_SELECTOR],
    )?
    .ok()?;
    helm_upgrade_install(&testbed, chart, NS, &["--create-namespace"])?.ok()?;
    let ours = values_seen(&testbed, OPTIKON_SITE, NS).await?;
    assert_eq!(ours, values_seen(&testbed, HELM_SITE, NS).await?, "values");
    ensure!(
        ours[2].contains(r#""fromDb":{"port":5432}"#),
        "the value imported from the subchart: {}",
        ours[2]
    );
    for site in [OPTIKON_SITE, HELM_SITE] {
        let configmaps: Api<ConfigMap> = Api::namespaced(kube_client(&testbed, site).await?, NS);
        assert!(
            configmaps
                .get_opt(&format!("{RELEASE}-db"))
                .await?
                .is_some(),
            "the subchart its condition enables, on {site}"
        );
        assert!(
            configmaps
                .get_opt(&format!("{RELEASE}-cache"))
                .await?
                .is_none(),
            "the subchart its tag leaves out, on {site}"
        );
    }
    let record = |site| newest_record(&testbed, site, NS);
    assert_eq!(
        record(OPTIKON_SITE).await?.manifest,
        record(HELM_SITE).await?.manifest,
        "manifest"
    );

    let out = optikon(
        &testbed,
        &[
            "upgrade",
            RELEASE,
            chart,
            "-n",
            NS,
            "-l",
            OPTIKON_SELECTOR,
            "--set",
            "replicas=0",
        ],
    )?;
    ensure!(out.code == 1, "the schema refuses the upgrade: {out:?}");
    let by_helm = helm_upgrade_install(&testbed, chart, NS, &["--set", "replicas=0"])?;
    ensure_failed_naming(&by_helm, &["schema", "replicas"])?;
    let reason = optikon_status(&testbed, NS)?.reason.unwrap_or_default();
    ensure!(
        reason.contains("schema") && reason.contains("replicas"),
        "the reason names the schema and the value: {reason}"
    );
    assert_eq!(
        history(&testbed, OPTIKON_SITE, NS)?,
        history(&testbed, HELM_SITE, NS)?,
        "nothing recorded for the refused upgrade, on either site"
    );
    Ok(())
}
