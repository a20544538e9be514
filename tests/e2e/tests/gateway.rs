//! The gateway end to end on the real test bed (three demo sites, real Kubernetes, real
//! helm, every service as a process): each HTTP route of `/api/v1` and `/v0`, bad input
//! (right status, a message naming the problem, nothing changed), the event stream, and the
//! Edge Manager page driven in a real headless Chromium over WebDriver.
//!
//! Release names start with `gw-` and namespaces are the tests' own, so nothing here
//! collides with other tests on the shared test bed.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use futures::StreamExt;
use optikon_e2e::{eventually, helm, helm_chart, testbed, wait_until_healthy};
use optikon_testbed::Testbed;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// An HTTP client of the test bed's gateway.
struct Gateway {
    http: reqwest::Client,
    base: String,
}

/// Fails if a hub service has exited: every test here needs all of them running.
fn hub_services_running(testbed: &mut Testbed) -> anyhow::Result<()> {
    for name in ["chart-ingest", "selector-router", "gateway"] {
        testbed
            .service_mut(name)
            .with_context(|| format!("no {name} in the test bed"))?
            .check_running()?;
    }
    Ok(())
}

/// A response: status and JSON body (`Null` when the body is not JSON).
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    body: Value,
}

impl Answer {
    /// Fails unless the status is `status`.
    fn expect(self, status: StatusCode) -> anyhow::Result<Value> {
        ensure!(
            self.status == status,
            "expected {status}, got {}: {}",
            self.status,
            self.body
        );
        Ok(self.body)
    }

    /// Checks an error answer: status, code and that the message mentions `mentions`.
    fn expect_error(&self, status: StatusCode, code: &str, mentions: &str) -> anyhow::Result<()> {
        ensure!(
            self.status == status,
            "expected {status} {code}, got {}: {}",
            self.status,
            self.body
        );
        ensure!(
            self.body["code"] == code,
            "expected code {code}: {}",
            self.body
        );
        let message = self.body["message"]
            .as_str()
            .context("error without a message")?;
        ensure!(
            message.contains(mentions),
            "the message should mention {mentions:?}: {message}"
        );
        Ok(())
    }
}

impl Gateway {
    /// The test bed's gateway, once it answers and sees every site healthy.
    async fn connect(testbed: &mut Testbed) -> anyhow::Result<Gateway> {
        hub_services_running(testbed)?;
        let base = testbed
            .gateway_url()
            .context("the test bed runs no gateway")?;
        let gateway = Gateway {
            http: reqwest::Client::builder().no_proxy().build()?,
            base: base.trim_end_matches('/').to_owned(),
        };
        wait_until_healthy(testbed).await?;
        eventually(
            "the gateway to list three healthy clusters",
            Duration::from_secs(60),
            || async {
                let clusters = gateway
                    .get("/api/v1/clusters")
                    .await?
                    .expect(StatusCode::OK)?;
                let healthy = clusters
                    .as_array()
                    .context("clusters: an array")?
                    .iter()
                    .filter(|c| c["health"] == "healthy")
                    .count();
                Ok((healthy == testbed.edges.len()).then_some(()))
            },
        )
        .await?;
        Ok(gateway)
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Answer> {
        let response = request.send().await?;
        let status = response.status();
        let bytes = response.bytes().await?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Answer { status, body })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Answer> {
        self.send(self.http.get(self.url(path))).await
    }

    async fn json(&self, method: Method, path: &str, body: Value) -> anyhow::Result<Answer> {
        self.send(self.http.request(method, self.url(path)).json(&body))
            .await
    }

    async fn delete(&self, path: &str) -> anyhow::Result<Answer> {
        self.send(self.http.delete(self.url(path))).await
    }

    /// `(release, cluster) -> (state, revision)` for every release named `gw-...` that the
    /// hub knows, uninstalled ones included: what "nothing changed" compares.
    async fn release_states(
        &self,
    ) -> anyhow::Result<BTreeMap<(String, String), (String, u64, u64)>> {
        let all = self
            .get("/api/v1/releases?all=true")
            .await?
            .expect(StatusCode::OK)?;
        Ok(all
            .as_array()
            .context("releases: an array")?
            .iter()
            .filter(|r| r["release"].as_str().is_some_and(|n| n.starts_with("gw-")))
            .map(|r| {
                (
                    (
                        r["release"].as_str().unwrap_or_default().to_owned(),
                        r["cluster"].as_str().unwrap_or_default().to_owned(),
                    ),
                    (
                        r["state"].as_str().unwrap_or_default().to_owned(),
                        r["revision"].as_u64().unwrap_or(0),
                        r["generation"].as_u64().unwrap_or(0),
                    ),
                )
            })
            .collect())
    }
}

/// Per cluster `(state, revision)` of a request result (`clusters` map of `/api/v1`).
fn per_cluster(result: &Value) -> BTreeMap<String, (String, u64)> {
    result["clusters"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        (
                            v["state"].as_str().unwrap_or_default().to_owned(),
                            v["revision"].as_u64().unwrap_or(0),
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn expected(pairs: &[(&str, &str, u64)]) -> BTreeMap<String, (String, u64)> {
    pairs
        .iter()
        .map(|(c, s, r)| ((*c).to_owned(), ((*s).to_owned(), *r)))
        .collect()
}

/// Release name → revision per `helm list` on one site's cluster.
fn helm_revisions(
    testbed: &Testbed,
    site: &str,
    namespace: &str,
) -> anyhow::Result<BTreeMap<String, u64>> {
    let out = helm(testbed, site, &["list", "-n", namespace, "-o", "json"])?.ok()?;
    let rows: Vec<Value> = serde_json::from_str(&out.stdout)?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap_or_default().to_owned(),
                r["revision"]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0),
            )
        })
        .collect())
}

fn chart_bytes(
    testbed: &Testbed,
    dir: &std::path::Path,
    name: &str,
    version: &str,
) -> anyhow::Result<Vec<u8>> {
    Ok(std::fs::read(helm_chart(testbed, dir, name, version)?)?)
}

fn multipart_chart(field: &str, bytes: Vec<u8>) -> reqwest::multipart::Form {
    let part = reqwest::multipart::Part::bytes(bytes)
        .file_name("chart.tgz")
        .mime_str("application/gzip")
        .expect("a valid MIME type");
    reqwest::multipart::Form::new().part(field.to_owned(), part)
}

#[tokio::test]
async fn meta_routes_answer() -> anyhow::Result<()> {
    let mut testbed = testbed().await;
    let gw = Gateway::connect(&mut testbed).await?;
    let health = gw.get("/api/v1/health").await?.expect(StatusCode::OK)?;
    assert_eq!(health["status"], "ok", "{health}");
    let doc = gw
        .get("/api/v1/openapi.json")
        .await?
        .expect(StatusCode::OK)?;
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with('3')),
        "{doc}"
    );
    assert!(doc["paths"]["/api/v1/releases/{namespace}/{release}"]["delete"].is_object());
    gw.get("/api/v1/no-such-thing").await?.expect_error(
        StatusCode::NOT_FOUND,
        "not_found",
        "/api/v1/no-such-thing",
    )?;
    let page = gw.http.get(gw.url("/")).send().await?;
    assert_eq!(page.status(), StatusCode::OK);
    assert!(page.text().await?.contains("Edge Manager"));
    Ok(())
}

#[tokio::test]
async fn clusters_list_filter_get_and_label() -> anyhow::Result<()> {
    let mut testbed = testbed().await;
    let gw = Gateway::connect(&mut testbed).await?;

    let all = gw.get("/api/v1/clusters").await?.expect(StatusCode::OK)?;
    let names: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["copenhagen-1", "copenhagen-2", "copenhagen-3"]);
    let c1 = &all[0];
    assert_eq!(
        c1["labels"],
        json!({"ID": "123", "Kubecon": "True", "Region": "Europe"})
    );
    assert_eq!(c1["health"], "healthy");
    assert!(
        c1["podsTotal"].is_u64() && c1["kubernetesVersion"].is_string(),
        "{c1}"
    );
    assert!(
        c1["lastSeenSecondsAgo"].as_u64().is_some_and(|s| s < 30),
        "{c1}"
    );

    let kubecon = gw
        .get("/api/v1/clusters?selector=Kubecon%3DTrue")
        .await?
        .expect(StatusCode::OK)?;
    let names: Vec<&str> = kubecon
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(names, ["copenhagen-1", "copenhagen-2"]);
    let notin = gw
        .get("/api/v1/clusters?selector=ID%20notin%20(123,456)")
        .await?
        .expect(StatusCode::OK)?;
    assert_eq!(notin[0]["name"], "copenhagen-3");
    assert_eq!(notin.as_array().unwrap().len(), 1);
    gw.get("/api/v1/clusters?selector=Kubecon%20in%20(True")
        .await?
        .expect_error(StatusCode::BAD_REQUEST, "bad_selector", "Kubecon in (True")?;

    let one = gw
        .get("/api/v1/clusters/copenhagen-2")
        .await?
        .expect(StatusCode::OK)?;
    assert_eq!(one["labels"]["ID"], "456");
    gw.get("/api/v1/clusters/copenhagen-9")
        .await?
        .expect_error(StatusCode::NOT_FOUND, "cluster_not_found", "copenhagen-9")?;

    // Labels: set, then remove; bad ones change nothing.
    let path = "/api/v1/clusters/copenhagen-3/labels";
    let set = gw
        .json(Method::PATCH, path, json!({"gw-tier": "store"}))
        .await?
        .expect(StatusCode::OK)?;
    assert_eq!(set["labels"]["gw-tier"], "store");
    let matched = gw
        .get("/api/v1/clusters?selector=gw-tier%3Dstore")
        .await?
        .expect(StatusCode::OK)?;
    assert_eq!(matched[0]["name"], "copenhagen-3");
    gw.json(Method::PATCH, path, json!({"gw-tier": "not ok!"}))
        .await?
        .expect_error(StatusCode::BAD_REQUEST, "bad_label", "not ok!")?;
    gw.json(Method::PATCH, path, json!({"-bad": "x"}))
        .await?
        .expect_error(StatusCode::BAD_REQUEST, "bad_label", "-bad")?;
    gw.json(Method::PATCH, path, json!(["gw-tier"]))
        .await?
        .expect_error(StatusCode::BAD_REQUEST, "invalid_request", "request body")?;
    gw.json(
        Method::PATCH,
        "/api/v1/clusters/copenhagen-9/labels",
        json!({"a": "b"}),
    )
    .await?
    .expect_error(StatusCode::NOT_FOUND, "cluster_not_found", "copenhagen-9")?;
    let unchanged = gw
        .get("/api/v1/clusters/copenhagen-3")
        .await?
        .expect(StatusCode::OK)?;
    assert_eq!(
        unchanged["labels"]["gw-tier"], "store",
        "a refused patch changed nothing"
    );
    let removed = gw
        .json(Method::PATCH, path, json!({"gw-tier": null}))
        .await?
        .expect(StatusCode::OK)?;
    assert_eq!(removed["labels"], json!({"ID": "789", "Region": "Europe"}));
    Ok(())
}

#[tokio::test]
async fn charts_upload_list_get_and_refuse_broken_archives() -> anyhow::Result<()> {
    let mut testbed = testbed().await;
    let gw = Gateway::connect(&mut testbed).await?;
    let dir = tempfile::tempdir()?;
    let archive = chart_bytes(&testbed, dir.path(), "gw-chart", "0.1.0")?;

    // Multipart (as a browser sends it) and the raw body: the same chart, stored once.
    let form = gw
        .send(
            gw.http
                .post(gw.url("/api/v1/charts"))
                .multipart(multipart_chart("chart", archive.clone())),
        )
        .await?;
    let entry = form.expect(StatusCode::CREATED)?;
    assert_eq!(
        (entry["name"].as_str(), entry["version"].as_str()),
        (Some("gw-chart"), Some("0.1.0"))
    );
    let raw = gw
        .send(
            gw.http
                .post(gw.url("/api/v1/charts"))
                .header("content-type", "application/gzip")
                .body(archive.clone()),
        )
        .await?
        .expect(StatusCode::CREATED)?;
    assert_eq!(raw["digest"], entry["digest"]);

    let listed = gw.get("/api/v1/charts").await?.expect(StatusCode::OK)?;
    assert!(
        listed
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["name"] == "gw-chart" && c["digest"] == entry["digest"])
    );
    let versions = gw
        .get("/api/v1/charts/gw-chart")
        .await?
        .expect(StatusCode::OK)?;
    assert_eq!(versions.as_array().unwrap().len(), 1);
    let one = gw
        .get("/api/v1/charts/gw-chart/0.1.0")
        .await?
        .expect(StatusCode::OK)?;
    assert_eq!(one["digest"], entry["digest"]);
    gw.get("/api/v1/charts/gw-chart/9.9.9")
        .await?
        .expect_error(StatusCode::NOT_FOUND, "chart_not_found", "9.9.9")?;
    gw.get("/api/v1/charts/gw-nothing").await?.expect_error(
        StatusCode::NOT_FOUND,
        "chart_not_found",
        "gw-nothing",
    )?;

    // Broken archives: refused with the reason, nothing stored.
    let before = gw.get("/api/v1/charts").await?.expect(StatusCode::OK)?;
    let truncated = archive[..archive.len() / 2].to_vec();
    let answer = gw
        .send(
            gw.http
                .post(gw.url("/api/v1/charts"))
                .multipart(multipart_chart("chart", truncated)),
        )
        .await?;
    answer.expect_error(StatusCode::BAD_REQUEST, "bad_chart", "chart refused")?;
    let text = gw
        .send(
            gw.http
                .post(gw.url("/api/v1/charts"))
                .body("name: web\nversion: 1.0.0\n"),
        )
        .await?;
    text.expect_error(StatusCode::BAD_REQUEST, "bad_chart", "gzip")?;
    gw.send(gw.http.post(gw.url("/api/v1/charts")))
        .await?
        .expect_error(StatusCode::BAD_REQUEST, "bad_chart", "empty")?;
    assert_eq!(
        gw.get("/api/v1/charts").await?.expect(StatusCode::OK)?,
        before,
        "a refused chart changed nothing"
    );

    // Other bytes under a stored name and version: 409 unless forced.
    let other_dir = tempfile::tempdir()?;
    std::fs::create_dir_all(other_dir.path())?;
    let mut other = chart_bytes(&testbed, other_dir.path(), "gw-chart", "0.1.0")?;
    if other == archive {
        // `helm package` is deterministic for identical input; change the chart a little.
        let chart_dir = other_dir.path().join("gw-chart");
        std::fs::write(chart_dir.join("templates/NOTES.txt"), "changed\n")?;
        std::fs::remove_file(other_dir.path().join("gw-chart-0.1.0.tgz"))?;
        let helm_bin = testbed.tools().get("helm")?;
        let status = std::process::Command::new(helm_bin)
            .current_dir(other_dir.path())
            .args(["package", "gw-chart", "--version", "0.1.0"])
            .output()?;
        ensure!(status.status.success(), "helm package failed");
        other = std::fs::read(other_dir.path().join("gw-chart-0.1.0.tgz"))?;
    }
    let conflict = gw
        .send(gw.http.post(gw.url("/api/v1/charts")).body(other.clone()))
        .await?;
    conflict.expect_error(StatusCode::CONFLICT, "chart_conflict", "gw-chart")?;
    let forced = gw
        .send(
            gw.http
                .post(gw.url("/api/v1/charts?force=true"))
                .body(other),
        )
        .await?
        .expect(StatusCode::CREATED)?;
    assert_ne!(forced["digest"], entry["digest"]);
    Ok(())
}

#[tokio::test]
async fn releases_install_upgrade_rollback_uninstall_by_selector() -> anyhow::Result<()> {
    let mut testbed = testbed().await;
    let gw = Gateway::connect(&mut testbed).await?;
    let dir = tempfile::tempdir()?;
    let archive = chart_bytes(&testbed, dir.path(), "gw-web", "0.1.0")?;
    gw.send(gw.http.post(gw.url("/api/v1/charts")).body(archive))
        .await?
        .expect(StatusCode::CREATED)?;
    let ns = "gw-api";

    // Install on Kubecon=True: copenhagen-1 and -2, waited for.
    let started = Instant::now();
    let install = gw
        .json(
            Method::POST,
            "/api/v1/releases",
            json!({
                "release": "gw-web", "namespace": ns, "selector": "Kubecon=True",
                "chart": {"name": "gw-web", "version": "0.1.0"}, "values": "replicaCount: 2"
            }),
        )
        .await?
        .expect(StatusCode::OK)?;
    eprintln!("install on 2 clusters answered in {:?}", started.elapsed());
    assert_eq!(install["complete"], true);
    assert_eq!(
        per_cluster(&install),
        expected(&[
            ("copenhagen-1", "deployed", 1),
            ("copenhagen-2", "deployed", 1)
        ])
    );
    assert_eq!(
        install["summary"],
        json!({"clusters": 2, "done": 2, "failed": 0})
    );
    for site in ["copenhagen-1", "copenhagen-2"] {
        assert_eq!(
            helm_revisions(&testbed, site, ns)?.get("gw-web"),
            Some(&1),
            "helm list on {site}"
        );
    }
    assert_eq!(
        helm_revisions(&testbed, "copenhagen-3", ns)?.get("gw-web"),
        None
    );

    // Listing, with filters.
    let listed = gw
        .get(&format!("/api/v1/releases?release=gw-web&namespace={ns}"))
        .await?
        .expect(StatusCode::OK)?;
    let on: BTreeSet<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["cluster"].as_str())
        .collect();
    assert_eq!(on, BTreeSet::from(["copenhagen-1", "copenhagen-2"]));
    assert_eq!(listed[0]["chart"]["name"], "gw-web");
    let by_selector = gw
        .get("/api/v1/releases?release=gw-web&selector=ID%3D456")
        .await?
        .expect(StatusCode::OK)?;
    assert_eq!(by_selector.as_array().unwrap().len(), 1);
    assert_eq!(by_selector[0]["cluster"], "copenhagen-2");
    let by_cluster = gw
        .get("/api/v1/releases?release=gw-web&cluster=copenhagen-1")
        .await?
        .expect(StatusCode::OK)?;
    assert_eq!(by_cluster[0]["revision"], 1);
    let status = gw
        .get(&format!("/api/v1/releases/{ns}/gw-web"))
        .await?
        .expect(StatusCode::OK)?;
    assert_eq!(status.as_array().unwrap().len(), 2);

    // Upgrade without waiting: 202 with the targets pending, then followed by id.
    let upgrade = gw
        .json(Method::PUT, &format!("/api/v1/releases/{ns}/gw-web?wait=false"), json!({
            "selector": "Kubecon=True", "chart": {"name": "gw-web"}, "values": {"replicaCount": 3}
        }))
        .await?
        .expect(StatusCode::ACCEPTED)?;
    let id = upgrade["id"].as_str().context("request id")?.to_owned();
    let targets: BTreeSet<&String> = upgrade["clusters"]
        .as_object()
        .context("targets")?
        .keys()
        .collect();
    assert_eq!(targets.len(), 2, "{upgrade}");
    let done = eventually(
        "the upgrade to finish",
        Duration::from_secs(120),
        || async {
            let request = gw
                .get(&format!("/api/v1/requests/{id}"))
                .await?
                .expect(StatusCode::OK)?;
            Ok((request["complete"] == true).then_some(request))
        },
    )
    .await?;
    assert_eq!(
        per_cluster(&done),
        expected(&[
            ("copenhagen-1", "deployed", 2),
            ("copenhagen-2", "deployed", 2)
        ])
    );

    // Roll back (Helm makes it revision 3), only on copenhagen-2.
    let rollback = gw
        .json(
            Method::POST,
            &format!("/api/v1/releases/{ns}/gw-web/rollback"),
            json!({"selector": "ID=456"}),
        )
        .await?
        .expect(StatusCode::OK)?;
    assert_eq!(
        per_cluster(&rollback),
        expected(&[("copenhagen-2", "deployed", 3)])
    );
    assert_eq!(
        helm_revisions(&testbed, "copenhagen-2", ns)?.get("gw-web"),
        Some(&3)
    );
    assert_eq!(
        helm_revisions(&testbed, "copenhagen-1", ns)?.get("gw-web"),
        Some(&2)
    );

    // A failure on one cluster is reported for that cluster; the call succeeds.
    let partial = gw
        .json(
            Method::PUT,
            &format!("/api/v1/releases/{ns}/gw-web"),
            json!({
                "selector": "Region=Europe", "chart": {"name": "gw-web", "version": "0.1.0"}
            }),
        )
        .await?
        .expect(StatusCode::OK)?;
    let results = per_cluster(&partial);
    assert_eq!(results["copenhagen-1"], ("deployed".to_owned(), 3));
    assert_eq!(results["copenhagen-2"], ("deployed".to_owned(), 4));
    assert_eq!(results["copenhagen-3"].0, "failed", "{partial}");
    let reason = partial["clusters"]["copenhagen-3"]["reason"]
        .as_str()
        .unwrap_or_default();
    assert!(
        reason.contains("gw-web"),
        "the failure says why: {reason:?}"
    );
    assert_eq!(partial["summary"]["failed"], 1);

    // Uninstall from ID=123 only.
    let uninstall = gw
        .delete(&format!("/api/v1/releases/{ns}/gw-web?selector=ID%3D123"))
        .await?
        .expect(StatusCode::OK)?;
    assert_eq!(per_cluster(&uninstall)["copenhagen-1"].0, "uninstalled");
    assert_eq!(
        helm_revisions(&testbed, "copenhagen-1", ns)?.get("gw-web"),
        None
    );
    assert_eq!(
        helm_revisions(&testbed, "copenhagen-2", ns)?.get("gw-web"),
        Some(&4)
    );
    let left = gw
        .get("/api/v1/releases?release=gw-web")
        .await?
        .expect(StatusCode::OK)?;
    let on: BTreeSet<&str> = left
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["state"] == "deployed")
        .filter_map(|r| r["cluster"].as_str())
        .collect();
    assert_eq!(on, BTreeSet::from(["copenhagen-2"]));
    let with_gone = gw
        .get("/api/v1/releases?release=gw-web&all=true")
        .await?
        .expect(StatusCode::OK)?;
    assert!(
        with_gone
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["cluster"] == "copenhagen-1" && r["state"] == "uninstalled")
    );

    // A request id that was never used.
    gw.get("/api/v1/requests/no-such-request")
        .await?
        .expect_error(
            StatusCode::NOT_FOUND,
            "request_not_found",
            "no-such-request",
        )?;

    // Clean up for the tests that follow.
    gw.delete(&format!("/api/v1/releases/{ns}/gw-web?selector="))
        .await?
        .expect(StatusCode::OK)?;
    Ok(())
}

#[tokio::test]
async fn bad_release_input_is_refused_and_changes_nothing() -> anyhow::Result<()> {
    let mut testbed = testbed().await;
    let gw = Gateway::connect(&mut testbed).await?;
    let dir = tempfile::tempdir()?;
    let archive = chart_bytes(&testbed, dir.path(), "gw-bad", "0.1.0")?;
    gw.send(gw.http.post(gw.url("/api/v1/charts")).body(archive))
        .await?
        .expect(StatusCode::CREATED)?;
    let before = gw.release_states().await?;
    let install = |body: Value| gw.json(Method::POST, "/api/v1/releases", body);
    let chart = json!({"name": "gw-bad", "version": "0.1.0"});

    install(json!({"namespace": "gw-bad", "selector": "", "chart": chart}))
        .await?
        .expect_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "missing field `release`",
        )?;
    install(json!({"release": "gw-bad", "namespace": "gw-bad", "chart": chart}))
        .await?
        .expect_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "missing field `selector`",
        )?;
    install(json!({"release": "gw-bad", "namespace": "gw-bad", "selector": "Kubecon=True"}))
        .await?
        .expect_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "missing field `chart`",
        )?;
    install(json!({"release": "gw-bad", "namespace": "gw-bad", "selector": "Kubecon=True", "chart": chart, "valuez": {}})).await?
        .expect_error(StatusCode::BAD_REQUEST, "invalid_request", "valuez")?;
    install(json!({"release": "GW_Bad", "namespace": "gw-bad", "selector": "", "chart": chart}))
        .await?
        .expect_error(StatusCode::BAD_REQUEST, "bad_release_name", "GW_Bad")?;
    install(json!({"release": "gw-bad", "namespace": "Gw Bad", "selector": "", "chart": chart}))
        .await?
        .expect_error(StatusCode::BAD_REQUEST, "bad_namespace", "Gw Bad")?;
    install(json!({"release": "gw-bad", "namespace": "gw-bad", "selector": "Kubecon in (True", "chart": chart})).await?
        .expect_error(StatusCode::BAD_REQUEST, "bad_selector", "Kubecon in (True")?;
    install(json!({"release": "gw-bad", "namespace": "gw-bad", "selector": "", "chart": chart, "values": "replicaCount: [2"})).await?
        .expect_error(StatusCode::BAD_REQUEST, "bad_values", "values")?;
    install(json!({"release": "gw-bad", "namespace": "gw-bad", "selector": "", "chart": {"name": "gw-bad", "version": "9.9.9"}})).await?
        .expect_error(StatusCode::NOT_FOUND, "chart_not_found", "9.9.9")?;
    install(json!({"release": "gw-bad", "namespace": "gw-bad", "selector": "", "chart": {"name": "gw-nothing"}})).await?
        .expect_error(StatusCode::NOT_FOUND, "chart_not_found", "gw-nothing")?;
    let garbage = gw
        .send(
            gw.http
                .post(gw.url("/api/v1/releases"))
                .header("content-type", "application/json")
                .body("{\"release\": "),
        )
        .await?;
    garbage.expect_error(StatusCode::BAD_REQUEST, "malformed_message", "request body")?;
    gw.json(Method::POST, "/api/v1/releases?timeout=soon", json!({}))
        .await?
        .expect_error(StatusCode::BAD_REQUEST, "invalid_request", "timeout")?;

    // Unknown releases: 404 for upgrade, rollback and uninstall.
    gw.json(
        Method::PUT,
        "/api/v1/releases/gw-bad/gw-missing",
        json!({"selector": "", "chart": chart}),
    )
    .await?
    .expect_error(StatusCode::NOT_FOUND, "release_not_found", "gw-missing")?;
    gw.json(
        Method::POST,
        "/api/v1/releases/gw-bad/gw-missing/rollback",
        json!({"selector": ""}),
    )
    .await?
    .expect_error(StatusCode::NOT_FOUND, "release_not_found", "gw-missing")?;
    gw.delete("/api/v1/releases/gw-bad/gw-missing?selector=")
        .await?
        .expect_error(StatusCode::NOT_FOUND, "release_not_found", "gw-missing")?;
    gw.get("/api/v1/releases/gw-bad/gw-missing")
        .await?
        .expect_error(StatusCode::NOT_FOUND, "release_not_found", "gw-missing")?;
    // An uninstall must name its clusters.
    gw.delete("/api/v1/releases/gw-bad/gw-missing")
        .await?
        .expect_error(StatusCode::BAD_REQUEST, "invalid_request", "selector")?;
    gw.get("/api/v1/releases?selector=!").await?.expect_error(
        StatusCode::BAD_REQUEST,
        "bad_selector",
        "!",
    )?;

    // Nothing reached a cluster.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        gw.release_states().await?,
        before,
        "refused requests changed nothing"
    );
    for site in ["copenhagen-1", "copenhagen-2", "copenhagen-3"] {
        assert!(
            helm_revisions(&testbed, site, "gw-bad")?.is_empty(),
            "helm list on {site}"
        );
    }
    Ok(())
}

#[tokio::test]
async fn events_stream_request_release_and_cluster_updates() -> anyhow::Result<()> {
    let mut testbed = testbed().await;
    let gw = Gateway::connect(&mut testbed).await?;
    let dir = tempfile::tempdir()?;
    let archive = chart_bytes(&testbed, dir.path(), "gw-live", "0.1.0")?;
    gw.send(gw.http.post(gw.url("/api/v1/charts")).body(archive))
        .await?
        .expect(StatusCode::CREATED)?;

    let response = gw.http.get(gw.url("/api/v1/events")).send().await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(
        response.headers()["content-type"]
            .to_str()?
            .starts_with("text/event-stream")
    );
    let mut bytes = response.bytes_stream();
    let mut buffer = String::new();
    let mut next_event = async || -> anyhow::Result<(String, Value)> {
        loop {
            if let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let mut name = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        name = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim_start());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment
                }
                return Ok((name, serde_json::from_str(&data)?));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(60), bytes.next())
                .await
                .context("no event for 60 s")?
                .context("the event stream ended")??;
            buffer.push_str(std::str::from_utf8(&chunk)?);
        }
    };
    let (first, _) = next_event().await?;
    assert_eq!(first, "hello");

    let install = gw
        .json(Method::POST, "/api/v1/releases?wait=false", json!({
            "release": "gw-live", "namespace": "gw-live", "selector": "ID=789", "chart": {"name": "gw-live"}
        }))
        .await?
        .expect(StatusCode::ACCEPTED)?;
    let id = install["id"].as_str().context("id")?.to_owned();

    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !(seen.contains("request complete")
        && seen.contains("release deployed")
        && seen.contains("cluster"))
    {
        ensure!(Instant::now() < deadline, "events seen so far: {seen:?}");
        let (name, data) = next_event().await?;
        match name.as_str() {
            "request" if data["id"] == id.as_str() && data["complete"] == true => {
                assert_eq!(
                    per_cluster(&data),
                    expected(&[("copenhagen-3", "deployed", 1)])
                );
                seen.insert("request complete");
            }
            "release" if data["release"] == "gw-live" => {
                assert_eq!(data["cluster"], "copenhagen-3");
                if data["state"] == "deployed" {
                    seen.insert("release deployed");
                }
            }
            "cluster" => {
                assert!(
                    data["name"]
                        .as_str()
                        .is_some_and(|n| n.starts_with("copenhagen-")),
                    "{data}"
                );
                assert!(
                    data["podsTotal"].is_u64() && data["health"].is_string(),
                    "{data}"
                );
                seen.insert("cluster");
            }
            _ => {}
        }
    }
    gw.delete("/api/v1/releases/gw-live/gw-live?selector=")
        .await?
        .expect(StatusCode::OK)?;
    Ok(())
}

#[tokio::test]
async fn v0_api_keeps_the_original_shapes() -> anyhow::Result<()> {
    let mut testbed = testbed().await;
    let gw = Gateway::connect(&mut testbed).await?;
    let dir = tempfile::tempdir()?;
    let archive = chart_bytes(&testbed, dir.path(), "gw-old", "0.1.0")?;
    let origin = "http://legacy.example";

    // Clusters in the cluster-registry shape, pod count as the NumPods annotation.
    let response = gw
        .http
        .get(gw.url("/v0/clusters"))
        .header("origin", origin)
        .send()
        .await?;
    assert_eq!(response.headers()["access-control-allow-origin"], "*");
    let clusters: Value = response.json().await?;
    let c1 = clusters
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["metadata"]["name"] == "copenhagen-1")
        .context("copenhagen-1")?;
    assert_eq!(c1["metadata"]["labels"]["Kubecon"], "True");
    let pods = c1["metadata"]["annotations"]["NumPods"]
        .as_str()
        .context("NumPods is a string")?;
    pods.parse::<u32>().context("NumPods is a count")?;

    // Install: multipart chartTar, name, namespace → 201 with per-cluster results.
    let form = multipart_chart("chartTar", archive.clone())
        .text("name", "gw-old")
        .text("namespace", "gw-old");
    let created = gw
        .send(
            gw.http
                .post(gw.url("/v0/releases?labels=Kubecon%3DTrue"))
                .multipart(form),
        )
        .await?
        .expect(StatusCode::CREATED)?;
    let results: BTreeMap<String, (String, u64)> = created["Clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["OnCluster"].as_str().unwrap_or_default().to_owned(),
                (
                    c["Status"].as_str().unwrap_or_default().to_owned(),
                    c["Version"].as_u64().unwrap_or(0),
                ),
            )
        })
        .collect();
    assert_eq!(
        results,
        expected(&[
            ("copenhagen-1", "DEPLOYED", 1),
            ("copenhagen-2", "DEPLOYED", 1)
        ])
    );

    let listed = gw
        .get("/v0/releases?labels=ID%3D123")
        .await?
        .expect(StatusCode::OK)?;
    let mine: Vec<&Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["Name"] == "gw-old")
        .collect();
    assert_eq!(mine.len(), 1, "{listed}");
    let release = mine[0];
    assert_eq!(release["Namespace"], "gw-old");
    assert_eq!(release["Version"], 1);
    assert_eq!(release["OnCluster"], "copenhagen-1");
    assert_eq!(release["Chart"]["Metadata"]["Name"], "gw-old");
    assert_eq!(release["Chart"]["Metadata"]["Version"], "0.1.0");
    for field in ["FirstDeployed", "LastDeployed", "Deleted", "Description"] {
        assert!(
            release["Info"][field].is_string(),
            "Info.{field}: {release}"
        );
    }
    let everywhere = gw.get("/v0/releases").await?.expect(StatusCode::OK)?;
    assert_eq!(
        everywhere
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["Name"] == "gw-old")
            .count(),
        2
    );

    // Upgrade: PUT with chartTar → 200, revision 2.
    let form = multipart_chart("chartTar", archive.clone());
    let upgraded = gw
        .send(
            gw.http
                .put(gw.url("/v0/releases/gw-old?labels=Kubecon%3DTrue"))
                .multipart(form),
        )
        .await?
        .expect(StatusCode::OK)?;
    assert!(
        upgraded["Clusters"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["Status"] == "DEPLOYED" && c["Version"] == 2),
        "{upgraded}"
    );

    // Delete from ID=123 → 200; copenhagen-2 keeps it.
    let deleted = gw
        .delete("/v0/releases/gw-old?labels=ID%3D123")
        .await?
        .expect(StatusCode::OK)?;
    assert_eq!(deleted["Clusters"][0]["OnCluster"], "copenhagen-1");
    assert_eq!(deleted["Clusters"][0]["Status"], "DELETED");
    let left = gw
        .get("/v0/releases?labels=Kubecon%3DTrue")
        .await?
        .expect(StatusCode::OK)?;
    let on: Vec<&Value> = left
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["Name"] == "gw-old")
        .map(|r| &r["OnCluster"])
        .collect();
    assert_eq!(on, [&json!("copenhagen-2")]);

    // Errors: {"code": <status>, "message"}, nothing changed.
    let before = gw.release_states().await?;
    let no_chart = reqwest::multipart::Form::new()
        .text("name", "gw-old2")
        .text("namespace", "gw-old");
    let answer = gw
        .send(
            gw.http
                .post(gw.url("/v0/releases?labels=ID%3D123"))
                .multipart(no_chart),
        )
        .await?;
    assert_eq!(
        (answer.status, &answer.body["code"]),
        (StatusCode::BAD_REQUEST, &json!(400)),
        "{answer:?}"
    );
    assert!(
        answer.body["message"]
            .as_str()
            .unwrap()
            .contains("chartTar")
    );
    let broken = multipart_chart("chartTar", b"not a chart".to_vec())
        .text("name", "gw-old2")
        .text("namespace", "gw-old");
    let answer = gw
        .send(
            gw.http
                .post(gw.url("/v0/releases?labels=ID%3D123"))
                .multipart(broken),
        )
        .await?;
    assert_eq!(
        (answer.status, &answer.body["code"]),
        (StatusCode::BAD_REQUEST, &json!(400)),
        "{answer:?}"
    );
    assert!(
        answer.body["message"]
            .as_str()
            .unwrap()
            .contains("chart refused"),
        "{answer:?}"
    );
    let no_name = multipart_chart("chartTar", archive.clone()).text("namespace", "gw-old");
    let answer = gw
        .send(
            gw.http
                .post(gw.url("/v0/releases?labels=ID%3D123"))
                .multipart(no_name),
        )
        .await?;
    assert_eq!(answer.body["code"], 400);
    assert!(
        answer.body["message"]
            .as_str()
            .unwrap()
            .contains("\"name\""),
        "{answer:?}"
    );
    let bad_selector = multipart_chart("chartTar", archive.clone())
        .text("name", "gw-old2")
        .text("namespace", "gw-old");
    let answer = gw
        .send(
            gw.http
                .post(gw.url("/v0/releases?labels=ID%20in%20("))
                .multipart(bad_selector),
        )
        .await?;
    assert_eq!(answer.body["code"], 400);
    assert!(
        answer.body["message"]
            .as_str()
            .unwrap()
            .contains("selector"),
        "{answer:?}"
    );
    let answer = gw.delete("/v0/releases/gw-never?labels=ID%3D123").await?;
    assert_eq!(
        (answer.status, &answer.body["code"]),
        (StatusCode::NOT_FOUND, &json!(404)),
        "{answer:?}"
    );
    assert!(
        answer.body["message"]
            .as_str()
            .unwrap()
            .contains("gw-never")
    );
    let answer = gw.delete("/v0/releases/gw-old").await?;
    assert_eq!(
        answer.body["code"], 400,
        "DELETE without labels= is refused: {answer:?}"
    );
    assert_eq!(
        gw.release_states().await?,
        before,
        "refused calls changed nothing"
    );

    // CORS preflight from another origin.
    let preflight = gw
        .http
        .request(Method::OPTIONS, gw.url("/v0/releases/gw-old"))
        .header("origin", origin)
        .header("access-control-request-method", "PUT")
        .send()
        .await?;
    assert!(preflight.status().is_success());
    assert_eq!(preflight.headers()["access-control-allow-origin"], "*");

    gw.delete("/v0/releases/gw-old?labels=")
        .await?
        .expect(StatusCode::OK)?;
    Ok(())
}

/// The Edge Manager page in a real headless Chromium, over WebDriver: the demo story.
mod browser {
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};

    use fantoccini::{Client, ClientBuilder, Locator};

    use super::*;

    /// Debian's chromium and chromedriver, or a failure naming the script that installs them.
    fn browser_binaries() -> anyhow::Result<(PathBuf, PathBuf)> {
        let find = |name: &str| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|dir| dir.join(name))
                    .find(|p| p.is_file())
            })
        };
        match (find("chromium"), find("chromedriver")) {
            (Some(chromium), Some(driver)) => Ok((chromium, driver)),
            (chromium, driver) => bail!(
                "the browser test needs Debian's chromium and chromedriver (found chromium: {}, chromedriver: {}); \
                 install them with scripts/install-packages",
                chromium.is_some(),
                driver.is_some()
            ),
        }
    }

    /// chromedriver on a free port, stopped on drop.
    struct Driver {
        child: Child,
        port: u16,
    }

    impl Driver {
        async fn start(binary: &Path, log: &Path) -> anyhow::Result<Driver> {
            let port = optikon_testbed::free_port()?;
            let child = Command::new(binary)
                .arg(format!("--port={port}"))
                .arg(format!("--log-path={}", log.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("start {}", binary.display()))?;
            let driver = Driver { child, port };
            eventually(
                "chromedriver to answer",
                Duration::from_secs(20),
                || async {
                    let status = reqwest::Client::builder()
                        .no_proxy()
                        .build()?
                        .get(format!("http://127.0.0.1:{port}/status"))
                        .send()
                        .await;
                    Ok(status.ok().filter(|s| s.status().is_success()).map(|_| ()))
                },
            )
            .await?;
            Ok(driver)
        }
    }

    impl Drop for Driver {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// Where screenshots go: the target directory, so a test run leaves the work tree alone;
    /// with `UPDATE_SCREENSHOTS=1`, the one the docs show goes to `docs/screenshots/`.
    async fn save_screenshot(
        browser: &Client,
        name: &str,
        for_docs: bool,
    ) -> anyhow::Result<PathBuf> {
        let dir = if for_docs && std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/screenshots")
        } else {
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("screenshots")
        };
        std::fs::create_dir_all(&dir)?;
        let path = dir.join(name);
        std::fs::write(&path, browser.screenshot().await?)?;
        eprintln!("screenshot {}", path.display());
        Ok(path)
    }

    /// The clusters table as the page shows it: name → (labels, health, pods, seen).
    async fn cluster_rows(
        browser: &Client,
    ) -> anyhow::Result<BTreeMap<String, (String, String, String, String)>> {
        let rows = browser
            .execute(
                "return [...document.querySelectorAll('#clusters tbody tr[data-cluster]')].map(tr => [
                    tr.dataset.cluster, tr.querySelector('.labels').innerText.replace(/\\s+/g, ' ').trim(),
                    tr.querySelector('.health .badge').textContent, tr.querySelector('.pods').textContent,
                    tr.querySelector('.health').innerText]);",
                vec![],
            )
            .await?;
        let rows: Vec<(String, String, String, String, String)> = serde_json::from_value(rows)?;
        Ok(rows
            .into_iter()
            .map(|(n, l, h, p, s)| (n, (l, h, p, s)))
            .collect())
    }

    /// The releases table: (release, cluster) → (revision, chart, chart version, status).
    async fn release_rows(
        browser: &Client,
    ) -> anyhow::Result<BTreeMap<(String, String), (String, String, String, String)>> {
        let rows = browser
            .execute(
                "return [...document.querySelectorAll('#releases tbody tr[data-release]')].map(tr => [
                    tr.dataset.release, tr.dataset.cluster, tr.querySelector('.revision').textContent,
                    tr.querySelector('.chart').textContent, tr.querySelector('.chart-version').textContent,
                    tr.querySelector('.status').textContent]);",
                vec![],
            )
            .await?;
        let rows: Vec<(String, String, String, String, String, String)> =
            serde_json::from_value(rows)?;
        Ok(rows
            .into_iter()
            .map(|(r, c, rev, ch, v, s)| ((r, c), (rev, ch, v, s)))
            .collect())
    }

    /// gw-nginx as the page shows it: cluster → (revision, status).
    async fn nginx_on(browser: &Client) -> anyhow::Result<BTreeMap<String, (String, String)>> {
        Ok(release_rows(browser)
            .await?
            .into_iter()
            .filter(|((release, _), _)| release == "gw-nginx")
            .map(|((_, cluster), (revision, _, _, status))| (cluster, (revision, status)))
            .collect())
    }

    async fn fill(browser: &Client, selector: &str, text: &str) -> anyhow::Result<()> {
        let field = browser.find(Locator::Css(selector)).await?;
        field.clear().await?;
        field.send_keys(text).await?;
        Ok(())
    }

    async fn text_of(browser: &Client, selector: &str) -> anyhow::Result<String> {
        Ok(browser.find(Locator::Css(selector)).await?.text().await?)
    }

    async fn pods(browser: &Client, site: &str) -> anyhow::Result<u64> {
        let rows = cluster_rows(browser).await?;
        let (_, _, pods, _) = rows
            .get(site)
            .with_context(|| format!("{site} is not listed"))?;
        pods.trim()
            .parse()
            .with_context(|| format!("pods of {site}: {pods:?}"))
    }

    #[tokio::test]
    async fn edge_manager_walks_the_demo_story() -> anyhow::Result<()> {
        let (chromium, chromedriver) = browser_binaries()?;
        let mut testbed = testbed().await;
        let gw = Gateway::connect(&mut testbed).await?;
        let url = testbed.gateway_url().context("gateway url")?;
        let dir = tempfile::tempdir()?;
        let chart = helm_chart(&testbed, dir.path(), "nginx", "0.1.0")?;
        // The sites on the map: Copenhagen, a few kilometres apart.
        for (site, lat, long) in [
            ("copenhagen-1", "55.676N", "12.568E"),
            ("copenhagen-2", "55.706N", "12.452E"),
            ("copenhagen-3", "55.618N", "12.650E"),
        ] {
            gw.json(
                Method::PATCH,
                &format!("/api/v1/clusters/{site}/labels"),
                json!({"lat": lat, "long": long}),
            )
            .await?
            .expect(StatusCode::OK)?;
        }

        let driver = Driver::start(&chromedriver, &dir.path().join("chromedriver.log")).await?;
        let profile = dir.path().join("chromium-profile");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": chromium,
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", "--window-size=1280,1180", format!("--user-data-dir={}", profile.display()),
                ],
            }),
        );
        let browser = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", driver.port))
            .await
            .context("start a Chromium session through chromedriver")?;
        let story = async {
            let started = Instant::now();
            browser.goto(&url).await?;

            // The sites, with labels, health and pod counts.
            let rows = eventually(
                "the page to list three healthy sites",
                Duration::from_secs(30),
                || async {
                    let rows = cluster_rows(&browser).await?;
                    let healthy = rows
                        .values()
                        .filter(|(_, health, pods, _)| {
                            health == "healthy" && pods.parse::<u64>().is_ok()
                        })
                        .count();
                    Ok((healthy == 3).then_some(rows))
                },
            )
            .await?;
            assert_eq!(
                rows.keys().collect::<Vec<_>>(),
                ["copenhagen-1", "copenhagen-2", "copenhagen-3"]
            );
            assert!(
                rows["copenhagen-1"].0.contains("ID=123")
                    && rows["copenhagen-1"].0.contains("Kubecon=True"),
                "{rows:?}"
            );
            assert!(
                rows["copenhagen-3"].0.contains("Region=Europe")
                    && !rows["copenhagen-3"].0.contains("Kubecon"),
                "{rows:?}"
            );
            assert_eq!(text_of(&browser, "#live").await?, "live");
            let map_sites = browser
                .execute(
                    "return document.querySelectorAll('#map-svg circle[data-site]').length;",
                    vec![],
                )
                .await?;
            assert_eq!(map_sites, json!(3), "every site on the map");
            let before: BTreeMap<&str, u64> = [
                ("copenhagen-1", pods(&browser, "copenhagen-1").await?),
                ("copenhagen-2", pods(&browser, "copenhagen-2").await?),
            ]
            .into();

            // The selector preview: an error inline, then the matching sites.
            fill(
                &browser,
                "#install input[name=selector]",
                "Kubecon in (True",
            )
            .await?;
            eventually(
                "the selector error inline",
                Duration::from_secs(10),
                || async {
                    let preview = text_of(&browser, "#install .preview").await?;
                    Ok(preview.contains("expected").then_some(()))
                },
            )
            .await?;
            fill(&browser, "#install input[name=selector]", "Kubecon=True").await?;
            eventually("the selector preview", Duration::from_secs(10), || async {
                let preview = text_of(&browser, "#install .preview").await?;
                Ok((preview == "Matches copenhagen-1, copenhagen-2").then_some(()))
            })
            .await?;

            // Upload the chart and install gw-nginx on Kubecon=True.
            browser
                .find(Locator::Css("#install input[name=chart]"))
                .await?
                .send_keys(&chart.display().to_string())
                .await?;
            fill(&browser, "#install input[name=release]", "gw-nginx").await?;
            fill(&browser, "#install input[name=namespace]", "default").await?;
            fill(
                &browser,
                "#install textarea[name=values]",
                "replicaCount: 2",
            )
            .await?;
            browser
                .find(Locator::Css("#install button[value=install]"))
                .await?
                .click()
                .await?;
            let installed = eventually(
                "gw-nginx deployed on copenhagen-1 and -2",
                Duration::from_secs(120),
                || async {
                    let on = nginx_on(&browser).await?;
                    let want: BTreeMap<String, (String, String)> =
                        [("copenhagen-1", "1"), ("copenhagen-2", "1")]
                            .iter()
                            .map(|(c, r)| {
                                ((*c).to_owned(), ((*r).to_owned(), "deployed".to_owned()))
                            })
                            .collect();
                    Ok((on == want).then_some(on))
                },
            )
            .await?;
            eprintln!("install shown after {:?}: {installed:?}", started.elapsed());
            let row =
                &release_rows(&browser).await?[&("gw-nginx".to_owned(), "copenhagen-1".to_owned())];
            assert_eq!((row.1.as_str(), row.2.as_str()), ("nginx", "0.1.0"));
            let progress = text_of(&browser, "#rollouts").await?;
            assert!(
                progress.contains("install gw-nginx") && progress.contains("2/2 done"),
                "{progress}"
            );
            eventually(
                "pod counts to rise on copenhagen-1 and -2",
                Duration::from_secs(60),
                || async {
                    let c1 = pods(&browser, "copenhagen-1").await?;
                    let c2 = pods(&browser, "copenhagen-2").await?;
                    Ok(
                        (c1 >= before["copenhagen-1"] + 2 && c2 >= before["copenhagen-2"] + 2)
                            .then_some(()),
                    )
                },
            )
            .await?;
            save_screenshot(&browser, "edge-manager-installed.png", false).await?;

            // Update: three replicas, revision 2.
            fill(
                &browser,
                "#install textarea[name=values]",
                "replicaCount: 3",
            )
            .await?;
            browser
                .find(Locator::Css("#install button[value=upgrade]"))
                .await?
                .click()
                .await?;
            eventually(
                "gw-nginx at revision 2",
                Duration::from_secs(120),
                || async {
                    let on = nginx_on(&browser).await?;
                    let ok = on.len() == 2
                        && on
                            .values()
                            .all(|(rev, status)| rev == "2" && status == "deployed");
                    Ok(ok.then_some(()))
                },
            )
            .await?;

            // The stored charts, and a release's history on one cluster.
            let charts = browser
                .execute(
                    "return [...document.querySelectorAll('#charts tbody tr[data-chart]')].map(tr => tr.dataset.chart + ' ' + tr.dataset.version);",
                    vec![],
                )
                .await?;
            assert!(
                charts
                    .as_array()
                    .is_some_and(|c| c.contains(&json!("nginx 0.1.0"))),
                "{charts}"
            );
            browser
                .find(Locator::Css(
                    "#releases tr[data-release=gw-nginx][data-cluster=copenhagen-1] button[data-history]",
                ))
                .await?
                .click()
                .await?;
            let history = eventually(
                "gw-nginx's history on copenhagen-1",
                Duration::from_secs(20),
                || async {
                    let rows = browser
                        .execute(
                            "const box = document.querySelector('#history'); if (box.hidden) return null;
                             return [box.querySelector('h3').textContent, [...box.querySelectorAll('tbody tr')].map(tr =>
                               [...tr.querySelectorAll('td')].slice(1, 5).map(td => td.textContent).join(' '))];",
                            vec![],
                        )
                        .await?;
                    Ok((!rows.is_null()).then_some(rows))
                },
            )
            .await?;
            // Newest first; each change also as it began (`pending`, no revision yet).
            assert_eq!(
                history[0], "gw-nginx (default) on copenhagen-1",
                "{history}"
            );
            let rows: Vec<&str> = history[1]
                .as_array()
                .context("history rows")?
                .iter()
                .filter_map(|r| r.as_str())
                .collect();
            let settled: Vec<&str> = rows
                .iter()
                .copied()
                .filter(|r| !r.ends_with("pending –"))
                .collect();
            assert_eq!(
                settled,
                ["2 upgrade deployed 2", "1 install deployed 1"],
                "{history}"
            );
            assert!(
                rows.iter().all(|r| settled.contains(r)
                    || ["2 upgrade pending –", "1 install pending –"].contains(r)),
                "{history}"
            );

            // A preview: four replicas would change the Deployment on both, and nothing
            // changes until asked for real.
            fill(
                &browser,
                "#install textarea[name=values]",
                "replicaCount: 4",
            )
            .await?;
            browser
                .find(Locator::Css("#install button[value=preview]"))
                .await?
                .click()
                .await?;
            let shown = eventually("the preview", Duration::from_secs(60), || async {
                let shown = browser
                    .execute(
                        "const box = document.querySelector('#dry-run'); if (box.hidden) return null;
                         return [...box.querySelectorAll('.group')].map(g => [g.dataset.outcome, g.querySelector('strong').textContent,
                           [...g.querySelectorAll('li[data-change]')].map(li => li.dataset.object + ' ' + li.dataset.change),
                           [...g.querySelectorAll('pre.diff')].map(p => p.textContent).join('')]);",
                        vec![],
                    )
                    .await?;
                Ok((!shown.is_null()).then_some(shown))
            })
            .await?;
            let groups = shown.as_array().context("preview groups")?;
            assert_eq!(groups.len(), 1, "both sites the same: {shown}");
            assert_eq!(groups[0][0], "previewed", "{shown}");
            assert_eq!(groups[0][1], "copenhagen-1, copenhagen-2", "{shown}");
            let objects = groups[0][2].as_array().context("objects")?;
            assert!(
                objects.contains(&json!("Deployment default/gw-nginx update")),
                "{shown}"
            );
            assert!(
                objects.contains(&json!("Service default/gw-nginx unchanged")),
                "{shown}"
            );
            let diff = groups[0][3].as_str().unwrap_or("");
            assert!(
                diff.contains("-  replicas: 3") && diff.contains("+  replicas: 4"),
                "{diff}"
            );
            let on = nginx_on(&browser).await?;
            assert!(
                on.values().all(|(rev, _)| rev == "2"),
                "a preview changes nothing: {on:?}"
            );
            fill(
                &browser,
                "#install textarea[name=values]",
                "replicaCount: 3",
            )
            .await?;

            // A rollout from the form: wave 1 is copenhagen-1, then a 30 s soak. Paused in
            // the rollout view, wave 2 does not start; resumed, it finishes; the view's
            // rollback button then rolls the release back on both.
            let revisions = nginx_on(&browser).await?;
            let revision =
                |cluster: &str| -> u32 { revisions[cluster].0.trim().parse().unwrap_or(0) };
            let (r1, r2) = (revision("copenhagen-1"), revision("copenhagen-2"));
            fill(&browser, "#install input[name=selector]", "Kubecon=True").await?;
            fill(&browser, "#install input[name=waves]", "ID=123").await?;
            fill(&browser, "#install input[name=soak]", "30").await?;
            browser
                .find(Locator::Css("#install button[value=upgrade]"))
                .await?
                .click()
                .await?;
            let state_of = || async {
                let state = browser
                    .execute(
                        "const b = document.querySelector('#rollouts [data-rollout-state]'); return b ? b.dataset.rolloutState : null;",
                        vec![],
                    )
                    .await?;
                anyhow::Ok(state.as_str().map(str::to_owned))
            };
            eventually(
                "the rollout view, running",
                Duration::from_secs(30),
                || async { Ok((state_of().await?.as_deref() == Some("running")).then_some(())) },
            )
            .await?;
            // Paused once wave 1 is under way (a rollout paused before that starts nothing).
            eventually(
                "wave 1 started on copenhagen-1",
                Duration::from_secs(30),
                || async {
                    let state = browser
                        .execute(
                            "const b = document.querySelector('#rollouts > li li[data-cluster=copenhagen-1] .badge'); return b ? b.textContent : null;",
                            vec![],
                        )
                        .await?;
                    Ok(state
                        .as_str()
                        .is_some_and(|s| s != "queued")
                        .then_some(()))
                },
            )
            .await?;
            browser
                .find(Locator::Css("#rollouts button[data-control=pause]"))
                .await?
                .click()
                .await?;
            eventually("the rollout paused", Duration::from_secs(20), || async {
                Ok((state_of().await?.as_deref() == Some("paused")).then_some(()))
            })
            .await?;
            eventually(
                "wave 1 upgraded copenhagen-1",
                Duration::from_secs(120),
                || async {
                    let on = nginx_on(&browser).await?;
                    Ok((on["copenhagen-1"].0.trim() == (r1 + 1).to_string()).then_some(()))
                },
            )
            .await?;
            tokio::time::sleep(Duration::from_secs(35)).await;
            assert_eq!(
                nginx_on(&browser).await?["copenhagen-2"].0.trim(),
                r2.to_string(),
                "paused: wave 2 did not start"
            );
            assert_eq!(state_of().await?.as_deref(), Some("paused"));
            browser
                .find(Locator::Css("#rollouts button[data-control=resume]"))
                .await?
                .click()
                .await?;
            eventually(
                "the rollout succeeded",
                Duration::from_secs(120),
                || async { Ok((state_of().await?.as_deref() == Some("succeeded")).then_some(())) },
            )
            .await?;
            browser
                .find(Locator::Css("#rollouts button[data-control=rollback]"))
                .await?
                .click()
                .await?;
            eventually("the rollback on both", Duration::from_secs(120), || async {
                let on = nginx_on(&browser).await?;
                let back = on["copenhagen-1"] == ((r1 + 2).to_string(), "deployed".to_owned())
                    && on["copenhagen-2"] == ((r2 + 2).to_string(), "deployed".to_owned());
                Ok(back.then_some(()))
            })
            .await?;
            // Opened again, the page finds the rollout at the hub (not in its own memory).
            browser.refresh().await?;
            eventually(
                "the rollout listed after a reload",
                Duration::from_secs(30),
                || async {
                    let listed = browser
                        .execute(
                            "return [...document.querySelectorAll('#rollouts [data-rollout-state]')].map(b => b.dataset.rolloutState);",
                            vec![],
                        )
                        .await?;
                    Ok((listed.as_array().is_some_and(|l| l.contains(&json!("succeeded"))))
                        .then_some(()))
                },
            )
            .await?;
            fill(&browser, "#install input[name=waves]", "").await?;
            fill(&browser, "#install input[name=soak]", "").await?;
            // Delete with ID=123: gone from copenhagen-1 only.
            fill(&browser, "#delete input[name=release]", "gw-nginx").await?;
            fill(&browser, "#delete input[name=selector]", "ID=123").await?;
            browser
                .find(Locator::Css("#delete button"))
                .await?
                .click()
                .await?;
            eventually(
                "gw-nginx left on copenhagen-2 only",
                Duration::from_secs(120),
                || async {
                    let on = nginx_on(&browser).await?;
                    Ok(
                        (on.keys().map(String::as_str).collect::<Vec<_>>() == ["copenhagen-2"])
                            .then_some(()),
                    )
                },
            )
            .await?;
            eventually(
                "the delete form to say it is done",
                Duration::from_secs(30),
                || async {
                    let message = text_of(&browser, "#delete .message").await?;
                    Ok(message
                        .contains("gw-nginx: done on 1 cluster")
                        .then_some(()))
                },
            )
            .await?;
            eprintln!("demo story done after {:?}", started.elapsed());
            anyhow::Ok(())
        };
        let result = story.await;
        if result.is_err() {
            let _ = save_screenshot(&browser, "edge-manager-failure.png", false).await;
        }
        result?;

        // A site cut off from the hub shows as unreachable, with when it was last seen.
        testbed.cut_link("copenhagen-3")?;
        let offline = async {
            let seen = eventually(
                "copenhagen-3 shown unreachable",
                Duration::from_secs(60),
                || async {
                    let rows = cluster_rows(&browser).await?;
                    let (_, health, _, text) = &rows["copenhagen-3"];
                    Ok((health == "unreachable").then(|| text.clone()))
                },
            )
            .await?;
            assert!(
                seen.contains("last seen") && seen.contains("ago"),
                "{seen:?}"
            );
            save_screenshot(&browser, "edge-manager.png", true).await?;
            anyhow::Ok(())
        }
        .await;
        let restored = testbed.restore_link("copenhagen-3");
        browser.close().await?;
        drop(driver);
        offline?;
        restored?;

        // Leave the test bed as it was found.
        gw.delete("/api/v1/releases/default/gw-nginx?selector=")
            .await?
            .expect(StatusCode::OK)?;
        for site in ["copenhagen-1", "copenhagen-2", "copenhagen-3"] {
            gw.json(
                Method::PATCH,
                &format!("/api/v1/clusters/{site}/labels"),
                json!({"lat": null, "long": null}),
            )
            .await?
            .expect(StatusCode::OK)?;
        }
        Ok(())
    }
}
