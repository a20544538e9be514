//! Rollouts on the real test bed: waves, a failing wave that stops the rollout and puts
//! back what it changed, pause and resume, and an unreachable site under `wait` and `skip`.
//! Driven through the `optikon` CLI; what happened on each site is read with the real
//! `helm history`.

use std::time::Duration;

use anyhow::Context;
use optikon_core::rollout::{Rollout, RolloutState};
use optikon_e2e::{
    Output, eventually, helm, helm_chart, kube_client, optikon, testbed_of, wait_until_healthy,
};
use optikon_testbed::{Site, Testbed};
use tokio::sync::MutexGuard;

/// Five sites: the demo's three, berlin-1 and lisbon-1.
fn sites() -> Vec<Site> {
    let mut sites = Site::demo();
    sites.push(Site::new(
        "berlin-1",
        &[("ID", "201"), ("Region", "Europe")],
    ));
    sites.push(Site::new(
        "lisbon-1",
        &[("ID", "301"), ("Region", "Europe")],
    ));
    sites
}

async fn testbed() -> MutexGuard<'static, Testbed> {
    testbed_of(sites()).await
}

/// Waves by the sites' own labels: copenhagen-1, then copenhagen-2 and berlin-1, then the
/// rest (copenhagen-3 and lisbon-1).
const WAVES: [&str; 4] = ["--wave", "ID=123", "--wave", "ID in (456,201)"];

/// Packages the chart in `dir/<name>` again under `version` (with the real `helm package`).
fn package(
    testbed: &Testbed,
    dir: &std::path::Path,
    name: &str,
    version: &str,
) -> anyhow::Result<String> {
    let out = std::process::Command::new(testbed.tools().get("helm")?)
        .current_dir(dir)
        .args(["package", name, "--version", version])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "helm package: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(dir
        .join(format!("{name}-{version}.tgz"))
        .to_string_lossy()
        .into_owned())
}

/// `helm history` of a release on one site: (revision, status, description) per revision.
fn history(
    testbed: &Testbed,
    site: &str,
    release: &str,
    namespace: &str,
) -> anyhow::Result<Vec<(u32, String, String)>> {
    let out = helm(
        testbed,
        site,
        &["history", release, "-n", namespace, "-o", "json"],
    )?
    .ok()?;
    let entries: Vec<serde_json::Value> = serde_json::from_str(&out.stdout)?;
    Ok(entries
        .iter()
        .map(|e| {
            (
                e["revision"].as_u64().unwrap_or(0) as u32,
                e["status"].as_str().unwrap_or("").to_owned(),
                e["description"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect())
}

/// The request id the CLI printed first (`request <id>: …`).
fn request_id(out: &Output) -> anyhow::Result<String> {
    out.stderr
        .lines()
        .find_map(|l| l.strip_prefix("request ").and_then(|r| r.split(':').next()))
        .map(str::to_owned)
        .with_context(|| format!("no request id in:\n{}", out.stderr))
}

fn rollout(testbed: &Testbed, id: &str) -> anyhow::Result<Rollout> {
    let out = optikon(testbed, &["rollout", "status", id, "-o", "json"])?.ok()?;
    Ok(serde_json::from_str(&out.stdout)?)
}

/// Installs `release` from a fresh `helm create` chart at 0.1.0 on every site, all at once;
/// returns the chart's directory for later versions.
fn install_everywhere(
    testbed: &Testbed,
    dir: &std::path::Path,
    release: &str,
    namespace: &str,
) -> anyhow::Result<()> {
    let chart = helm_chart(testbed, dir, release, "0.1.0")?;
    optikon(
        testbed,
        &[
            "install",
            release,
            chart.to_str().unwrap(),
            "-n",
            namespace,
            "--set",
            "replicaCount=1",
        ],
    )?
    .ok()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_wave_stops_the_rollout_and_rolls_back_what_it_changed() -> anyhow::Result<()> {
    let testbed = testbed().await;
    wait_until_healthy(&testbed).await?;
    let (release, namespace) = ("ring", "rollouts");
    let dir = tempfile::tempdir()?;
    install_everywhere(&testbed, dir.path(), release, namespace)?;

    // 0.2.0 adds a ConfigMap. On copenhagen-2 one of that name exists already, not made by
    // helm: the upgrade fails there, as helm's would ("exists and cannot be imported").
    std::fs::write(
        dir.path().join(release).join("templates/extra.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-extra\ndata:\n  wave: \"2\"\n",
    )?;
    let v2 = package(&testbed, dir.path(), release, "0.2.0")?;
    {
        use k8s_openapi::api::core::v1::ConfigMap;
        let client = kube_client(&testbed, "copenhagen-2").await?;
        let maps: kube::Api<ConfigMap> = kube::Api::namespaced(client, namespace);
        let squatter: ConfigMap = serde_json::from_value(serde_json::json!({
            "metadata": { "name": format!("{release}-extra") },
            "data": { "owner": "someone else" }
        }))?;
        maps.create(&Default::default(), &squatter).await?;
    }

    let mut args = vec!["upgrade", release, &v2, "-n", namespace];
    args.extend(WAVES);
    args.extend([
        "--max-failures",
        "1",
        "--rollback-on-failure",
        "--timeout",
        "240",
    ]);
    let out = optikon(&testbed, &args)?;
    assert_eq!(
        out.code, 1,
        "a rollout that stopped fails:\n{}\n{}",
        out.stdout, out.stderr
    );
    assert!(
        out.stderr.contains("wave 2/3"),
        "progress names the wave:\n{}",
        out.stderr
    );
    assert!(out.stderr.contains("rolled-back"), "{}", out.stderr);
    let id = request_id(&out)?;
    let record = rollout(&testbed, &id)?;
    assert_eq!(record.state, RolloutState::RolledBack, "{record:?}");
    assert!(
        record
            .reason
            .as_deref()
            .unwrap_or("")
            .contains("1 cluster(s) failed"),
        "{record:?}"
    );
    assert_eq!(
        record
            .started
            .keys()
            .map(String::as_str)
            .collect::<Vec<_>>(),
        ["berlin-1", "copenhagen-1", "copenhagen-2"]
    );

    // What helm itself says on each site: waves 1 and 2 upgraded (or tried to) and went
    // back to revision 1; wave 3 was never touched.
    let h1 = history(&testbed, "copenhagen-1", release, namespace)?;
    assert_eq!(h1.len(), 3, "{h1:?}");
    assert_eq!(
        h1[1].1, "superseded",
        "the upgrade deployed, then was replaced: {h1:?}"
    );
    assert_eq!(
        (h1[2].1.as_str(), h1[2].2.as_str()),
        ("deployed", "Rollback to 1"),
        "{h1:?}"
    );
    // Wave 2: copenhagen-2 failed, berlin-1 beside it had upgraded (or was upgrading);
    // both end back at revision 1.
    for site in ["copenhagen-2", "berlin-1"] {
        let h = history(&testbed, site, release, namespace)?;
        let last = h.last().with_context(|| format!("{site} has a history"))?;
        assert_eq!(
            (last.1.as_str(), last.2.as_str()),
            ("deployed", "Rollback to 1"),
            "{site}: {h:?}"
        );
        assert!(
            h.iter()
                .all(|(_, status, _)| !status.starts_with("pending")),
            "nothing is left half-applied on {site}: {h:?}"
        );
    }
    let status = optikon(&testbed, &["rollout", "status", &id])?.ok()?;
    for site in ["copenhagen-3", "lisbon-1"] {
        let h = history(&testbed, site, release, namespace)?;
        assert_eq!(h.len(), 1, "wave 3 never started on {site}: {h:?}");
        assert_eq!(h[0].1, "deployed", "{site}: {h:?}");
        // The request says the same per cluster: left out, with the reason.
        let line = status
            .stdout
            .lines()
            .find(|l| l.contains(site))
            .unwrap_or_default()
            .to_owned();
        assert!(
            line.contains("skipped") && line.contains("not started"),
            "{site}:\n{}",
            status.stdout
        );
    }

    // Controls on a finished rollout are refused, naming its state.
    let abort = optikon(&testbed, &["rollout", "abort", &id])?;
    assert_eq!(abort.code, 2, "{}", abort.stderr);
    assert!(
        abort
            .stderr
            .contains("is rolled-back: it cannot be aborted"),
        "{}",
        abort.stderr
    );
    optikon(&testbed, &["uninstall", release, "-n", namespace])?.ok()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_rollout_starts_no_wave_until_resumed() -> anyhow::Result<()> {
    let testbed = testbed().await;
    wait_until_healthy(&testbed).await?;
    let (release, namespace) = ("paused", "rollouts-pause");
    let dir = tempfile::tempdir()?;
    install_everywhere(&testbed, dir.path(), release, namespace)?;
    let v2 = package(&testbed, dir.path(), release, "0.2.0")?;

    // A soak long enough that the pause lands before wave 2 could start.
    let mut args = vec![
        "upgrade",
        release,
        &v2,
        "-n",
        namespace,
        "--no-wait",
        "--soak",
        "10",
    ];
    args.extend(WAVES);
    let out = optikon(&testbed, &args)?.ok()?;
    let id = out.stdout.trim().to_owned();
    // Once wave 1 is under way (a rollout paused before it starts anything starts nothing).
    eventually("wave 1 started", Duration::from_secs(30), || async {
        let started = optikon(&testbed, &["rollout", "status", &id, "-o", "json"])?;
        Ok((started.code == 0
            && !serde_json::from_str::<Rollout>(&started.stdout)?
                .started
                .is_empty())
        .then_some(()))
    })
    .await?;
    let paused = optikon(&testbed, &["rollout", "pause", &id])?.ok()?;
    assert!(paused.stdout.contains("paused"), "{}", paused.stdout);

    // Wave 1 finishes; past its soak time, nothing more starts.
    eventually(
        "wave 1 done on copenhagen-1",
        Duration::from_secs(120),
        || async {
            Ok((history(&testbed, "copenhagen-1", release, namespace)?.len() == 2).then_some(()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(15)).await;
    let record = rollout(&testbed, &id)?;
    assert_eq!(record.state, RolloutState::Paused, "{record:?}");
    assert_eq!(record.started.len(), 1, "only wave 1 started: {record:?}");
    assert_eq!(
        history(&testbed, "copenhagen-2", release, namespace)?.len(),
        1
    );

    // Through the HTTP API, as the page does: read it, refuse a control that does not
    // exist, resume it.
    let base = testbed
        .gateway_url()
        .context("the test bed runs no gateway")?
        .trim_end_matches('/')
        .to_owned();
    let http = reqwest::Client::builder().no_proxy().build()?;
    let shown: serde_json::Value = http
        .get(format!("{base}/api/v1/rollouts/{id}"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(shown["state"], "paused", "{shown}");
    let listed: Vec<serde_json::Value> = http
        .get(format!("{base}/api/v1/rollouts"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert!(
        listed
            .iter()
            .any(|r| r["id"] == id.as_str() && r["state"] == "paused"),
        "{listed:?}"
    );
    let list = optikon(&testbed, &["rollout", "list"])?.ok()?;
    assert!(
        list.stdout
            .lines()
            .any(|l| l.contains(&id) && l.contains("paused")),
        "{}",
        list.stdout
    );
    let bad = http
        .post(format!("{base}/api/v1/rollouts/{id}/restart"))
        .header("content-type", "application/json")
        .send()
        .await?;
    assert_eq!(bad.status(), reqwest::StatusCode::BAD_REQUEST);
    assert!(bad.text().await?.contains("use pause, resume or abort"));
    let resumed: serde_json::Value = http
        .post(format!("{base}/api/v1/rollouts/{id}/resume"))
        .header("content-type", "application/json")
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(resumed["state"], "running", "{resumed}");
    eventually(
        "the rollout succeeded after resume",
        Duration::from_secs(180),
        || async { Ok((rollout(&testbed, &id)?.state == RolloutState::Succeeded).then_some(())) },
    )
    .await?;
    for site in sites() {
        let h = history(&testbed, &site.name, release, namespace)?;
        assert_eq!(
            (h.len(), h[1].1.as_str()),
            (2, "deployed"),
            "{}: {h:?}",
            site.name
        );
    }
    optikon(&testbed, &["uninstall", release, "-n", namespace])?.ok()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_site_is_waited_for_or_skipped_and_named() -> anyhow::Result<()> {
    let mut testbed = testbed().await;
    wait_until_healthy(&testbed).await?;
    let (release, namespace) = ("offline", "rollouts-offline");
    let dir = tempfile::tempdir()?;
    install_everywhere(&testbed, dir.path(), release, namespace)?;
    let v2 = package(&testbed, dir.path(), release, "0.2.0")?;
    let v3 = package(&testbed, dir.path(), release, "0.3.0")?;

    testbed.cut_link("copenhagen-3")?;
    let outcome = async {
        eventually(
            "copenhagen-3 shown unreachable",
            Duration::from_secs(90),
            || async {
                let out = optikon(&testbed, &["clusters"])?.ok()?;
                Ok(out
                    .stdout
                    .lines()
                    .any(|l| l.contains("copenhagen-3") && l.contains("unreachable"))
                    .then_some(()))
            },
        )
        .await?;

        // skip: left out, never counted a success; exit 4 says so.
        let mut args = vec![
            "upgrade",
            release,
            &v2,
            "-n",
            namespace,
            "--offline",
            "skip",
            "--timeout",
            "120",
        ];
        args.extend(WAVES);
        let skipped = optikon(&testbed, &args)?;
        assert_eq!(skipped.code, 4, "{}\n{}", skipped.stdout, skipped.stderr);
        let line = skipped
            .stdout
            .lines()
            .find(|l| l.contains("copenhagen-3"))
            .unwrap_or_default();
        assert!(
            line.contains("skipped") && line.contains("unreachable since"),
            "{}",
            skipped.stdout
        );

        // wait: sent, and the CLI names the site it waits for until it gives up (exit 4).
        let mut args = vec![
            "upgrade",
            release,
            &v3,
            "-n",
            namespace,
            "--offline",
            "wait",
            "--timeout",
            "45",
        ];
        args.extend(WAVES);
        let waiting = optikon(&testbed, &args)?;
        assert_eq!(waiting.code, 4, "{}\n{}", waiting.stdout, waiting.stderr);
        assert!(
            waiting.stderr.contains("copenhagen-3 (unreachable since"),
            "the progress line names the site:\n{}",
            waiting.stderr
        );
        assert!(
            waiting
                .stderr
                .contains("unreachable, the change waits at the hub for: copenhagen-3 (since"),
            "{}",
            waiting.stderr
        );
        // `optikon status` lists the site, with what waits for it.
        let status = optikon(&testbed, &["status", release, "-n", namespace])?.ok()?;
        let line = status
            .stdout
            .lines()
            .find(|l| l.contains("copenhagen-3"))
            .unwrap_or_default();
        assert!(
            line.contains("pending")
                && line.contains("waits at the hub for the site: unreachable since"),
            "{}",
            status.stdout
        );

        // A plain request (no strategy) says so too, and exits 4 on its timeout.
        let chart = dir.path().join(format!("{release}-0.1.0.tgz"));
        let plain = optikon(
            &testbed,
            &[
                "install",
                "offline-plain",
                chart.to_str().unwrap(),
                "-n",
                namespace,
                "-l",
                "ID=789",
                "--timeout",
                "12",
            ],
        )?;
        assert_eq!(plain.code, 4, "{}\n{}", plain.stdout, plain.stderr);
        assert!(
            plain
                .stderr
                .contains("unreachable, the change waits at the hub for: copenhagen-3 (since"),
            "{}",
            plain.stderr
        );
        request_id(&waiting)
    }
    .await;
    testbed.restore_link("copenhagen-3")?;
    let id = outcome?;

    // Back online, it catches up and the rollout finishes.
    eventually(
        "the waiting rollout succeeded",
        Duration::from_secs(180),
        || async { Ok((rollout(&testbed, &id)?.state == RolloutState::Succeeded).then_some(())) },
    )
    .await?;
    let h3 = history(&testbed, "copenhagen-3", release, namespace)?;
    assert_eq!(h3.len(), 2, "skipped 0.2.0, then 0.3.0 once back: {h3:?}");
    let h1 = history(&testbed, "copenhagen-1", release, namespace)?;
    assert_eq!(h1.len(), 3, "{h1:?}");
    eventually(
        "the plain install done once the site is back",
        Duration::from_secs(120),
        || async {
            let h = helm(
                &testbed,
                "copenhagen-3",
                &["history", "offline-plain", "-n", namespace],
            )?;
            Ok((h.code == 0).then_some(()))
        },
    )
    .await?;
    optikon(
        &testbed,
        &[
            "uninstall",
            "offline-plain",
            "-n",
            namespace,
            "-l",
            "ID=789",
        ],
    )?
    .ok()?;
    optikon(&testbed, &["uninstall", release, "-n", namespace])?.ok()?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn values_follow_each_clusters_name_and_labels() -> anyhow::Result<()> {
    let testbed = testbed().await;
    wait_until_healthy(&testbed).await?;
    let (release, namespace) = ("labelled", "rollouts-values");
    let dir = tempfile::tempdir()?;
    let chart = helm_chart(&testbed, dir.path(), release, "0.1.0")?;
    let chart = chart.to_str().unwrap();
    let base = dir.path().join("base.yaml");
    std::fs::write(
        &base,
        "region: '{{ .Cluster.Labels.Region }}'\nreplicaCount: 1\n",
    )?;
    let kubecon = dir.path().join("kubecon.yaml");
    std::fs::write(&kubecon, "booth: '{{ .Cluster.Labels.ID }}'\n")?;
    let overlay = format!("Kubecon=True:{}", kubecon.display());
    optikon(
        &testbed,
        &[
            "install",
            release,
            chart,
            "-n",
            namespace,
            "-f",
            base.to_str().unwrap(),
            "--set",
            "site={{ .Cluster.Name }}",
            "--overlay",
            &overlay,
        ],
    )?
    .ok()?;
    let values = |site: &str| -> anyhow::Result<serde_json::Value> {
        let out = helm(
            &testbed,
            site,
            &["get", "values", release, "-n", namespace, "-o", "json"],
        )?
        .ok()?;
        Ok(serde_json::from_str(&out.stdout)?)
    };
    for (site, booth) in [
        ("copenhagen-1", Some("123")),
        ("copenhagen-2", Some("456")),
        ("copenhagen-3", None),
        ("berlin-1", None),
        ("lisbon-1", None),
    ] {
        let v = values(site)?;
        assert_eq!(v["site"], site, "{site}: {v}");
        assert_eq!(v["region"], "Europe", "{site}: {v}");
        match booth {
            Some(id) => assert_eq!(v["booth"], id, "the overlay on {site}: {v}"),
            None => assert!(v.get("booth").is_none(), "no overlay on {site}: {v}"),
        }
    }
    // What the hub sent each cluster, on request.
    let shown = optikon(
        &testbed,
        &[
            "values",
            release,
            "-n",
            namespace,
            "--cluster",
            "copenhagen-2",
        ],
    )?
    .ok()?;
    assert!(
        shown.stdout.contains("booth: '456'") && shown.stdout.contains("--set site=copenhagen-2"),
        "{}",
        shown.stdout
    );

    // A label one cluster lacks fails that cluster, naming both, and changes nothing there.
    let out = optikon(
        &testbed,
        &[
            "upgrade",
            release,
            chart,
            "-n",
            namespace,
            "--set-string",
            "kubecon={{ .Cluster.Labels.Kubecon }}",
        ],
    )?;
    assert_eq!(out.code, 1, "{}\n{}", out.stdout, out.stderr);
    let line = out
        .stdout
        .lines()
        .find(|l| l.contains("copenhagen-3"))
        .unwrap_or_default();
    assert!(
        line.contains("failed")
            && line.contains("label \"Kubecon\", which cluster copenhagen-3 does not have"),
        "{}",
        out.stdout
    );
    assert_eq!(
        history(&testbed, "copenhagen-3", release, namespace)?.len(),
        1,
        "nothing applied there"
    );
    assert_eq!(values("copenhagen-1")?["kubecon"], "True");
    optikon(&testbed, &["uninstall", release, "-n", namespace])?.ok()?;
    Ok(())
}

/// One object of the release as it is on a site: (what, resource version or, for
/// workloads, generation). Creating, changing or deleting it changes the set.
async fn objects_on(
    testbed: &Testbed,
    site: &str,
    namespace: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceAccount};
    let client = kube_client(testbed, site).await?;
    let params = kube::api::ListParams::default();
    let mut seen = std::collections::BTreeMap::new();
    let key = |kind: &str, name: Option<String>| {
        format!("{kind} {namespace}/{}", name.unwrap_or_default())
    };
    for m in kube::Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .list(&params)
        .await?
    {
        if m.metadata.name.as_deref() != Some("kube-root-ca.crt") {
            seen.insert(
                key("ConfigMap", m.metadata.name),
                m.metadata.resource_version.unwrap_or_default(),
            );
        }
    }
    for s in kube::Api::<Service>::namespaced(client.clone(), namespace)
        .list(&params)
        .await?
    {
        seen.insert(
            key("Service", s.metadata.name),
            s.metadata.resource_version.unwrap_or_default(),
        );
    }
    for a in kube::Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .list(&params)
        .await?
    {
        if a.metadata.name.as_deref() != Some("default") {
            seen.insert(
                key("ServiceAccount", a.metadata.name),
                a.metadata.resource_version.unwrap_or_default(),
            );
        }
    }
    // A workload's status changes all the time; its generation only when its spec does.
    for d in kube::Api::<Deployment>::namespaced(client, namespace)
        .list(&params)
        .await?
    {
        seen.insert(
            key("Deployment", d.metadata.name),
            d.metadata.generation.unwrap_or_default().to_string(),
        );
    }
    Ok(seen)
}

/// The objects a printed preview names for one group of clusters, with their change.
fn previewed_objects(text: &str, group: &str) -> std::collections::BTreeMap<String, String> {
    text.split("\n\n")
        .find(|part| part.starts_with(group))
        .into_iter()
        .flat_map(|part| part.lines())
        .filter_map(|line| {
            let rest = line.strip_prefix("  ")?;
            let (mark, rest) = rest.split_once(' ')?;
            if !["+", "~", "-", "="].contains(&mark) {
                return None;
            }
            let (object, change) = rest.rsplit_once(" (")?;
            Some((object.to_owned(), change.trim_end_matches(')').to_owned()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dry_run_shows_what_the_real_run_then_changes() -> anyhow::Result<()> {
    let mut testbed = testbed().await;
    wait_until_healthy(&testbed).await?;
    let (release, namespace) = ("preview", "rollouts-preview");
    let dir = tempfile::tempdir()?;
    let templates = dir.path().join(release).join("templates");
    std::fs::create_dir_all(&templates)?;
    std::fs::write(
        dir.path().join(release).join("Chart.yaml"),
        "apiVersion: v2\nname: preview\nversion: 0.1.0\n",
    )?;
    std::fs::write(
        dir.path().join(release).join("values.yaml"),
        "greeting: hello\nextra: false\n",
    )?;
    std::fs::write(
        templates.join("settings.yaml"),
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-settings\ndata:\n  greeting: {{ .Values.greeting | quote }}\n",
    )?;
    std::fs::write(
        templates.join("extra.yaml"),
        "{{- if .Values.extra }}\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-extra\ndata:\n  added: \"yes\"\n{{- end }}\n",
    )?;
    std::fs::write(
        templates.join("legacy.yaml"),
        "{{- if not .Values.extra }}\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: {{ .Release.Name }}-legacy\ndata:\n  old: \"yes\"\n{{- end }}\n",
    )?;
    std::fs::write(
        templates.join("service.yaml"),
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {{ .Release.Name }}\nspec:\n  ports:\n  - port: 80\n  selector:\n    app: {{ .Release.Name }}\n",
    )?;
    let chart = package(&testbed, dir.path(), release, "0.1.0")?;
    optikon(&testbed, &["install", release, &chart, "-n", namespace])?.ok()?;

    // A preview of an install that would fail: the chart's values need a label nobody has.
    let refused = optikon(
        &testbed,
        &[
            "install",
            "preview-bad",
            &chart,
            "-n",
            namespace,
            "--set",
            "greeting={{ .Cluster.Labels.Shelf }}",
            "--dry-run",
        ],
    )?;
    assert_eq!(refused.code, 1, "{}\n{}", refused.stdout, refused.stderr);
    assert!(
        refused.stdout.contains("would fail:") && refused.stdout.contains("Shelf"),
        "{}",
        refused.stdout
    );

    testbed.cut_link("copenhagen-3")?;
    let upgrade = [
        "upgrade",
        release,
        "preview",
        "--version",
        "0.1.0",
        "-n",
        namespace,
        "--set",
        "greeting=hej",
        "--set",
        "extra=true",
    ];
    let answering = ["copenhagen-1", "copenhagen-2", "berlin-1", "lisbon-1"];
    let mut before = std::collections::BTreeMap::new();
    for site in answering {
        before.insert(site, objects_on(&testbed, site, namespace).await?);
    }
    let shown = async {
        let mut dry = upgrade.to_vec();
        dry.push("--dry-run");
        optikon(&testbed, &dry)
    }
    .await;
    testbed.restore_link("copenhagen-3")?;
    let shown = shown?;
    // Exit code 4: a site could not be asked.
    assert_eq!(shown.code, 4, "{}\n{}", shown.stdout, shown.stderr);
    let text = &shown.stdout;
    assert!(
        text.contains(
            "\nberlin-1, copenhagen-1, copenhagen-2, lisbon-1: revision 1 -> 2, 3 object(s) change\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("\ncopenhagen-3: offline, not previewed\n"),
        "{text}"
    );
    assert!(text.contains("copenhagen-3: unreachable since"), "{text}");
    assert!(
        text.contains("-  greeting: hello\n") && text.contains("+  greeting: hej\n"),
        "{text}"
    );
    let previewed = previewed_objects(text, "berlin-1");
    let object = |kind: &str, name: &str| format!("{kind} {namespace}/{name}");
    assert_eq!(
        previewed,
        [
            (object("ConfigMap", "preview-settings"), "update"),
            (object("ConfigMap", "preview-extra"), "create"),
            (object("ConfigMap", "preview-legacy"), "delete"),
            (object("Service", "preview"), "unchanged"),
        ]
        .into_iter()
        .map(|(o, c)| (o, c.to_owned()))
        .collect(),
        "{text}"
    );

    // Nothing changed: the same objects, the same revision.
    for site in answering {
        assert_eq!(
            objects_on(&testbed, site, namespace).await?,
            before[site],
            "{site}"
        );
        assert_eq!(
            history(&testbed, site, release, namespace)?.len(),
            1,
            "{site}"
        );
    }

    // The real run changes exactly what the preview said, on each site it previewed.
    optikon(&testbed, &upgrade)?.ok()?;
    let mut expected = previewed.clone();
    expected.retain(|_, change| change != "unchanged");
    for site in answering {
        let (before, after) = (&before[site], objects_on(&testbed, site, namespace).await?);
        let mut changed = std::collections::BTreeMap::new();
        for (name, version) in &after {
            match before.get(name) {
                None => changed.insert(name.clone(), "create".to_owned()),
                Some(old) if old != version => changed.insert(name.clone(), "update".to_owned()),
                Some(_) => None,
            };
        }
        for name in before.keys().filter(|n| !after.contains_key(*n)) {
            changed.insert(name.clone(), "delete".to_owned());
        }
        assert_eq!(
            changed, expected,
            "{site}: before {before:?}, after {after:?}"
        );
    }
    let client = kube_client(&testbed, "copenhagen-2").await?;
    let settings: k8s_openapi::api::core::v1::ConfigMap = kube::Api::namespaced(client, namespace)
        .get("preview-settings")
        .await?;
    assert_eq!(
        settings
            .data
            .unwrap_or_default()
            .get("greeting")
            .map(String::as_str),
        Some("hej")
    );

    // An uninstall's preview through the HTTP API, as scripts ask it: every object goes.
    let base = testbed
        .gateway_url()
        .context("the test bed runs no gateway")?
        .trim_end_matches('/')
        .to_owned();
    let http = reqwest::Client::builder().no_proxy().build()?;
    let answer: serde_json::Value = http
        .post(format!("{base}/api/v1/previews"))
        .json(&serde_json::json!({
            "action": "uninstall", "release": release, "namespace": namespace,
            "selector": "ID=123",
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let clusters = answer["clusters"].as_array().context("clusters")?;
    assert_eq!(clusters.len(), 1, "{answer}");
    assert_eq!(clusters[0]["cluster"], "copenhagen-1", "{answer}");
    assert_eq!(clusters[0]["outcome"], "previewed", "{answer}");
    assert_eq!(clusters[0]["revision"], 2, "{answer}");
    let mut gone: Vec<(String, String)> = clusters[0]["objects"]
        .as_array()
        .context("objects")?
        .iter()
        .map(|o| {
            (
                o["object"].as_str().unwrap_or("").to_owned(),
                o["change"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    gone.sort();
    let delete = |o: String| (o, "delete".to_owned());
    assert_eq!(
        gone,
        [
            delete(object("ConfigMap", "preview-extra")),
            delete(object("ConfigMap", "preview-settings")),
            delete(object("Service", "preview")),
        ],
        "{answer}"
    );
    assert_eq!(
        history(&testbed, "copenhagen-1", release, namespace)?.len(),
        2
    );

    // The same change on all five sites (a deletion would differ: each Service has its own
    // cluster IP): the answer carries it once, and the other sites name that one.
    let everywhere: serde_json::Value = http
        .post(format!("{base}/api/v1/previews"))
        .json(&serde_json::json!({
            "action": "upgrade", "release": release, "namespace": namespace, "selector": "",
            "chart": {"name": "preview", "version": "0.1.0"},
            "values": {"greeting": "hallo", "extra": true},
        }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let folded: Vec<(String, usize, Option<String>)> = everywhere["clusters"]
        .as_array()
        .context("clusters")?
        .iter()
        .map(|c| {
            (
                c["cluster"].as_str().unwrap_or("").to_owned(),
                c["objects"].as_array().map_or(0, Vec::len),
                c["sameAs"].as_str().map(str::to_owned),
            )
        })
        .collect();
    let berlin = || Some("berlin-1".to_owned());
    assert_eq!(
        folded,
        [
            ("berlin-1".to_owned(), 3, None),
            ("copenhagen-1".to_owned(), 0, berlin()),
            ("copenhagen-2".to_owned(), 0, berlin()),
            ("copenhagen-3".to_owned(), 0, berlin()),
            ("lisbon-1".to_owned(), 0, berlin()),
        ],
        "{everywhere}"
    );

    optikon(&testbed, &["uninstall", release, "-n", namespace])?.ok()?;
    Ok(())
}
