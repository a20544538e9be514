//! The release pipeline end to end on the real test bed (three demo sites, real Kubernetes,
//! real helm, all services as processes), driven through the `optikon` CLI as a user would.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use optikon_core::message::{ReleaseState, ReleaseStatus, RequestStatus};
use optikon_core::subject;
use optikon_e2e::{
    all_pods, eventually, helm, helm_chart, kube_client, optikon, running_pods, testbed,
    wait_until_healthy,
};
use optikon_testbed::Testbed;

const SITES: [&str; 3] = ["copenhagen-1", "copenhagen-2", "copenhagen-3"];

/// `helm list` on one site: release name → (revision, chart, status).
fn helm_list(
    testbed: &Testbed,
    site: &str,
    namespace: &str,
) -> anyhow::Result<BTreeMap<String, (u32, String, String)>> {
    let out = helm(testbed, site, &["list", "-n", namespace, "-o", "json"])?.ok()?;
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out.stdout)?;
    Ok(rows
        .iter()
        .map(|r| {
            let revision = r["revision"]
                .as_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            (
                r["name"].as_str().unwrap_or_default().to_owned(),
                (
                    revision,
                    r["chart"].as_str().unwrap_or_default().to_owned(),
                    r["status"].as_str().unwrap_or_default().to_owned(),
                ),
            )
        })
        .collect())
}

/// `optikon list` as (release, cluster) → (revision, chart-version, status).
/// (release, cluster) → (revision, chart-version, status)
type Listing = BTreeMap<(String, String), (u32, String, String)>;

fn optikon_list(testbed: &Testbed) -> anyhow::Result<Listing> {
    let out = optikon(testbed, &["list", "-o", "json"])?.ok()?;
    let rows: Vec<ReleaseStatus> = serde_json::from_str(&out.stdout)?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let chart = r
                .chart
                .map(|c| format!("{}-{}", c.name, c.version))
                .unwrap_or_default();
            (
                (r.release, r.cluster),
                (r.revision.unwrap_or(0), chart, r.state.to_string()),
            )
        })
        .collect())
}

/// Checks that `optikon list` and `helm list` on every site say the same about `release`,
/// and that it is exactly at `expected` (site → revision).
fn assert_agree(
    testbed: &Testbed,
    release: &str,
    namespace: &str,
    expected: &BTreeMap<&str, u32>,
) -> anyhow::Result<()> {
    let listed = optikon_list(testbed)?;
    for site in SITES {
        let on_helm = helm_list(testbed, site, namespace)?.remove(release);
        let on_optikon = listed.get(&(release.to_owned(), site.to_owned())).cloned();
        match expected.get(site) {
            Some(revision) => {
                let (helm_rev, helm_chart, helm_status) =
                    on_helm.with_context(|| format!("helm list on {site} lacks {release}"))?;
                let (rev, chart, status) = on_optikon
                    .with_context(|| format!("optikon list lacks {release} on {site}"))?;
                assert_eq!(
                    (helm_rev, helm_status.as_str()),
                    (*revision, "deployed"),
                    "helm on {site}"
                );
                assert_eq!(
                    (rev, status.as_str()),
                    (*revision, "deployed"),
                    "optikon on {site}"
                );
                assert_eq!(chart, helm_chart, "chart on {site}");
            }
            None => {
                assert!(
                    on_helm.is_none(),
                    "helm list on {site} still shows {release}: {on_helm:?}"
                );
                assert!(
                    on_optikon.is_none(),
                    "optikon list still shows {release} on {site}: {on_optikon:?}"
                );
            }
        }
    }
    Ok(())
}

#[tokio::test]
async fn install_upgrade_uninstall_by_selector() -> anyhow::Result<()> {
    let testbed = testbed().await;
    wait_until_healthy(&testbed).await?;
    let dir = tempfile::tempdir()?;
    let chart = helm_chart(&testbed, dir.path(), "nginx", "0.1.0")?;
    let pushed = optikon(&testbed, &["chart", "push", chart.to_str().unwrap()])?.ok()?;
    assert!(pushed.stdout.contains("nginx"), "{}", pushed.stdout);

    let mut pods_before = BTreeMap::new();
    for site in SITES {
        pods_before.insert(site, all_pods(&kube_client(&testbed, site).await?).await?);
    }

    // Install on Kubecon=True: exactly copenhagen-1 and -2.
    let out = optikon(
        &testbed,
        &[
            "install",
            "nginx",
            "nginx",
            "--version",
            "0.1.0",
            "-n",
            "default",
            "-l",
            "Kubecon=True",
            "--set",
            "replicaCount=2",
        ],
    )?
    .ok()?;
    assert!(
        out.stdout.contains("copenhagen-1") && out.stdout.contains("copenhagen-2"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("copenhagen-3"), "{}", out.stdout);
    for site in ["copenhagen-1", "copenhagen-2"] {
        let client = kube_client(&testbed, site).await?;
        eventually(
            &format!("2 nginx pods Running on {site}"),
            Duration::from_secs(60),
            || async { Ok((running_pods(&client, "default", "nginx").await? == 2).then_some(())) },
        )
        .await?;
        assert_eq!(
            all_pods(&client).await?,
            pods_before[site] + 2,
            "pod count on {site}"
        );
    }
    assert_eq!(
        running_pods(
            &kube_client(&testbed, "copenhagen-3").await?,
            "default",
            "nginx"
        )
        .await?,
        0
    );
    assert_agree(
        &testbed,
        "nginx",
        "default",
        &BTreeMap::from([("copenhagen-1", 1), ("copenhagen-2", 1)]),
    )?;

    // Upgrade with new values: revision 2 on both.
    optikon(
        &testbed,
        &[
            "upgrade",
            "nginx",
            "nginx",
            "-n",
            "default",
            "-l",
            "Kubecon=True",
            "--set",
            "replicaCount=3",
        ],
    )?
    .ok()?;
    for site in ["copenhagen-1", "copenhagen-2"] {
        let client = kube_client(&testbed, site).await?;
        eventually(
            &format!("3 nginx pods Running on {site}"),
            Duration::from_secs(60),
            || async { Ok((running_pods(&client, "default", "nginx").await? == 3).then_some(())) },
        )
        .await?;
    }
    assert_agree(
        &testbed,
        "nginx",
        "default",
        &BTreeMap::from([("copenhagen-1", 2), ("copenhagen-2", 2)]),
    )?;
    let history = helm(
        &testbed,
        "copenhagen-2",
        &["history", "nginx", "-n", "default", "-o", "json"],
    )?
    .ok()?;
    let history: Vec<serde_json::Value> = serde_json::from_str(&history.stdout)?;
    let statuses: Vec<&str> = history
        .iter()
        .filter_map(|h| h["status"].as_str())
        .collect();
    assert_eq!(statuses, ["superseded", "deployed"]);

    // Roll back to revision 1: a new revision 3 with revision 1's values (2 replicas).
    optikon(
        &testbed,
        &[
            "rollback",
            "nginx",
            "1",
            "-n",
            "default",
            "-l",
            "Kubecon=True",
        ],
    )?
    .ok()?;
    for site in ["copenhagen-1", "copenhagen-2"] {
        let client = kube_client(&testbed, site).await?;
        eventually(
            &format!("2 nginx pods on {site} again"),
            Duration::from_secs(60),
            || async { Ok((running_pods(&client, "default", "nginx").await? == 2).then_some(())) },
        )
        .await?;
    }
    assert_agree(
        &testbed,
        "nginx",
        "default",
        &BTreeMap::from([("copenhagen-1", 3), ("copenhagen-2", 3)]),
    )?;

    // Uninstall with ID=123: only copenhagen-1 loses it.
    optikon(
        &testbed,
        &["uninstall", "nginx", "-n", "default", "-l", "ID=123"],
    )?
    .ok()?;
    let client = kube_client(&testbed, "copenhagen-1").await?;
    eventually(
        "nginx pods gone from copenhagen-1",
        Duration::from_secs(60),
        || async { Ok((running_pods(&client, "default", "nginx").await? == 0).then_some(())) },
    )
    .await?;
    assert_eq!(
        running_pods(
            &kube_client(&testbed, "copenhagen-2").await?,
            "default",
            "nginx"
        )
        .await?,
        2
    );
    assert_agree(
        &testbed,
        "nginx",
        "default",
        &BTreeMap::from([("copenhagen-2", 3)]),
    )?;
    Ok(())
}

#[tokio::test]
async fn a_request_published_twice_applies_once() -> anyhow::Result<()> {
    let testbed = testbed().await;
    wait_until_healthy(&testbed).await?;
    let dir = tempfile::tempdir()?;
    let chart = helm_chart(&testbed, dir.path(), "twice", "1.0.0")?;
    optikon(&testbed, &["chart", "push", chart.to_str().unwrap()])?.ok()?;

    let hub = optikon_runtime::connect_url(&testbed.hub_url(), "test").await?;
    let js = async_nats::jetstream::new(hub);
    let id = format!("dup-{}", uuid::Uuid::new_v4().simple());
    let body = serde_json::json!({
        "apiVersion": "optikon/v1", "id": id, "action": "install", "release": "twice",
        "namespace": "dup", "selector": "ID=456", "chart": {"name": "twice", "version": "1.0.0"},
        "values": {"replicaCount": 1}
    });
    // A trace this test starts: every hop must carry it on.
    let trace_id = uuid::Uuid::new_v4().simple().to_string();
    for _ in 0..2 {
        let mut headers = optikon_runtime::trace::headers(Some(&id));
        headers.insert(
            "traceparent",
            format!("00-{trace_id}-00f067aa0ba902b7-01").as_str(),
        );
        js.publish_with_headers(subject::RELEASE_REQUEST, headers, body.to_string().into())
            .await?
            .await?;
    }
    // And once more without the dedup header, as a careless script would.
    js.publish(subject::RELEASE_REQUEST, body.to_string().into())
        .await?
        .await?;

    let requests = js.get_key_value(subject::REQUESTS_BUCKET).await?;
    let status = eventually(
        "the request completes",
        Duration::from_secs(120),
        || async {
            let Some(bytes) = requests.get(&id).await? else {
                return Ok(None);
            };
            let mut status: RequestStatus = serde_json::from_slice(&bytes)?;
            if !status.is_complete() {
                return Ok(None);
            }
            // The summary says complete; each cluster's part is its own entry.
            status.clusters = optikon_client::request_clusters(&js, &id).await?;
            Ok(Some(status))
        },
    )
    .await?;
    assert_eq!(status.clusters.keys().collect::<Vec<_>>(), ["copenhagen-2"]);
    assert_eq!(
        status.clusters["copenhagen-2"].state,
        ReleaseState::Deployed
    );
    // Give any duplicate time to do harm, then check there is exactly one revision.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let history = helm(
        &testbed,
        "copenhagen-2",
        &["history", "twice", "-n", "dup", "-o", "json"],
    )?
    .ok()?;
    let history: Vec<serde_json::Value> = serde_json::from_str(&history.stdout)?;
    assert_eq!(history.len(), 1, "one request, one revision: {history:?}");

    // The trace went from the request through the router's command to the edge's status.
    let trace_of = |message: async_nats::jetstream::message::StreamMessage| {
        message
            .headers
            .get("traceparent")
            .map(|v| v.as_str().split('-').nth(1).unwrap_or_default().to_owned())
    };
    let command = js
        .get_stream(subject::CMD_STREAM)
        .await?
        .get_last_raw_message_by_subject(&subject::cluster_commands("copenhagen-2"))
        .await?;
    assert_eq!(
        trace_of(command).as_deref(),
        Some(trace_id.as_str()),
        "command carries the trace"
    );
    let status = js
        .get_stream(subject::STATUS_HUB_STREAM)
        .await?
        .get_last_raw_message_by_subject(&subject::release_status("copenhagen-2", "dup", "twice"))
        .await?;
    assert_eq!(
        trace_of(status).as_deref(),
        Some(trace_id.as_str()),
        "status carries the trace"
    );

    optikon(
        &testbed,
        &["uninstall", "twice", "-n", "dup", "-l", "ID=456"],
    )?
    .ok()?;
    Ok(())
}

#[tokio::test]
async fn bad_input_is_refused_clearly_and_changes_nothing() -> anyhow::Result<()> {
    let testbed = testbed().await;
    wait_until_healthy(&testbed).await?;
    let before = optikon_list(&testbed)?;

    // A broken chart archive.
    let dir = tempfile::tempdir()?;
    let broken = dir.path().join("broken-0.1.0.tgz");
    std::fs::write(&broken, b"this is not a gzip archive")?;
    let out = optikon(&testbed, &["chart", "push", broken.to_str().unwrap()])?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("gzip"),
        "the error names the problem: {}",
        out.stderr
    );

    // A selector Kubernetes would refuse, a release name Helm would refuse.
    let out = optikon(
        &testbed,
        &[
            "install",
            "web",
            "nginx",
            "--version",
            "0.1.0",
            "-l",
            "tier in (edge",
        ],
    )?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("tier in (edge"), "{}", out.stderr);
    let out = optikon(
        &testbed,
        &[
            "install",
            "Web_Server",
            "nginx",
            "--version",
            "0.1.0",
            "-l",
            "Kubecon=True",
        ],
    )?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("Web_Server"), "{}", out.stderr);

    // A chart nobody pushed.
    let out = optikon(
        &testbed,
        &[
            "install",
            "ghost",
            "no-such-chart",
            "--version",
            "9.9.9",
            "-l",
            "Kubecon=True",
        ],
    )?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("no-such-chart"), "{}", out.stderr);

    // A malformed message straight onto the subject: refused with a reason under its id.
    let hub = optikon_runtime::connect_url(&testbed.hub_url(), "test").await?;
    let js = async_nats::jetstream::new(hub);
    let id = format!("bad-{}", uuid::Uuid::new_v4().simple());
    let body = serde_json::json!({"apiVersion": "optikon/v1", "id": id, "action": "explode", "release": "x", "namespace": "default", "selector": ""});
    js.publish_with_headers(
        subject::RELEASE_REQUEST,
        optikon_runtime::trace::headers(Some(&id)),
        body.to_string().into(),
    )
    .await?
    .await?;
    let requests = js.get_key_value(subject::REQUESTS_BUCKET).await?;
    let status = eventually(
        "the malformed request is answered",
        Duration::from_secs(30),
        || async {
            let Some(bytes) = requests.get(&id).await? else {
                return Ok(None);
            };
            Ok(Some(serde_json::from_slice::<RequestStatus>(&bytes)?))
        },
    )
    .await?;
    let error = status
        .error
        .context("a malformed request carries an error")?;
    assert!(error.message.contains("explode"), "{}", error.message);
    assert!(status.clusters.is_empty());

    // Nothing changed anywhere.
    assert_eq!(optikon_list(&testbed)?, before);
    Ok(())
}

#[tokio::test]
async fn labels_set_at_the_hub_choose_the_targets() -> anyhow::Result<()> {
    let testbed = testbed().await;
    wait_until_healthy(&testbed).await?;
    let dir = tempfile::tempdir()?;
    let chart = helm_chart(&testbed, dir.path(), "labelled", "0.2.0")?;

    optikon(
        &testbed,
        &["cluster", "label", "copenhagen-3", "tier=store"],
    )?
    .ok()?;
    let out = optikon(&testbed, &["clusters", "-l", "tier=store", "-o", "json"])?.ok()?;
    let clusters: Vec<serde_json::Value> = serde_json::from_str(&out.stdout)?;
    let names: Vec<&str> = clusters.iter().filter_map(|c| c["name"].as_str()).collect();
    assert_eq!(names, ["copenhagen-3"]);

    let out = optikon(
        &testbed,
        &[
            "install",
            "labelled",
            chart.to_str().unwrap(),
            "-n",
            "lbl",
            "-l",
            "tier in (store,edge)",
        ],
    )?
    .ok()?;
    assert!(out.stdout.contains("copenhagen-3"), "{}", out.stdout);
    let status = optikon(&testbed, &["status", "labelled", "-o", "json"])?.ok()?;
    let status: Vec<ReleaseStatus> = serde_json::from_str(&status.stdout)?;
    let on: Vec<(&str, ReleaseState)> = status
        .iter()
        .map(|s| (s.cluster.as_str(), s.state))
        .collect();
    assert_eq!(on, [("copenhagen-3", ReleaseState::Deployed)]);
    assert_eq!(
        helm_list(&testbed, "copenhagen-3", "lbl")?
            .get("labelled")
            .map(|r| r.0),
        Some(1)
    );

    // Removing the label takes the cluster out of the selection again.
    optikon(&testbed, &["cluster", "label", "copenhagen-3", "tier-"])?.ok()?;
    let out = optikon(&testbed, &["clusters", "-l", "tier", "-o", "json"])?.ok()?;
    assert_eq!(out.stdout.trim(), "[]");
    let out = optikon(&testbed, &["cluster", "label", "copenhagen-3", "Bad Key=1"])?;
    assert_eq!(out.code, 2, "{out:?}");
    let out = optikon(&testbed, &["cluster", "label", "no-such-site", "a=b"])?;
    assert_eq!(out.code, 2, "{out:?}");

    optikon(
        &testbed,
        &["uninstall", "labelled", "-n", "lbl", "-l", "ID=789"],
    )?
    .ok()?;
    assert!(helm_list(&testbed, "copenhagen-3", "lbl")?.is_empty());
    Ok(())
}

#[tokio::test]
async fn a_changed_chart_under_a_known_version_needs_force() -> anyhow::Result<()> {
    let testbed = testbed().await;
    let dir = tempfile::tempdir()?;
    let first = helm_chart(&testbed, dir.path(), "mutable", "1.0.0")?;
    let pushed = optikon(
        &testbed,
        &["chart", "push", first.to_str().unwrap(), "-o", "json"],
    )?
    .ok()?;
    let first_digest = serde_json::from_str::<serde_json::Value>(&pushed.stdout)?["digest"].clone();
    // Pushing the same bytes again is a no-op, not a conflict.
    optikon(&testbed, &["chart", "push", first.to_str().unwrap()])?.ok()?;

    // Same name and version, other content.
    let other = tempfile::tempdir()?;
    let changed = helm_chart(&testbed, other.path(), "mutable", "1.0.0")?;
    let values = other.path().join("mutable/values.yaml");
    std::fs::write(
        &values,
        std::fs::read_to_string(&values)? + "\nextra: true\n",
    )?;
    let helm_bin = testbed.tools().get("helm")?;
    let status = std::process::Command::new(helm_bin)
        .current_dir(other.path())
        .args(["package", "mutable", "--version", "1.0.0"])
        .output()?;
    anyhow::ensure!(status.status.success(), "helm package: {status:?}");

    let out = optikon(&testbed, &["chart", "push", changed.to_str().unwrap()])?;
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("already stored with other content"),
        "{}",
        out.stderr
    );
    let listed = optikon(&testbed, &["chart", "list", "-o", "json"])?.ok()?;
    let listed: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout)?;
    let entry = listed
        .iter()
        .find(|c| c["name"] == "mutable")
        .expect("listed");
    assert_eq!(
        entry["digest"], first_digest,
        "the refused push changed nothing"
    );

    let forced = optikon(
        &testbed,
        &[
            "chart",
            "push",
            changed.to_str().unwrap(),
            "--force",
            "-o",
            "json",
        ],
    )?
    .ok()?;
    let forced_digest =
        serde_json::from_str::<serde_json::Value>(&forced.stdout)?["digest"].clone();
    assert_ne!(forced_digest, first_digest);
    Ok(())
}
