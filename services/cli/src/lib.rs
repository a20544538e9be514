//! The `optikon` command line: a thin client of Optikon's NATS API.
//!
//! Requests go to `optikon.release.request` (JetStream, deduplicated by request id);
//! progress is read by watching the request's entry in the `requests` bucket; listings
//! read the hub's KV buckets directly.

pub mod args;
pub mod output;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream::{self, kv};
use futures::{StreamExt, TryStreamExt};
use optikon_core::message::{
    Action, ApiVersion, ChartIndexEntry, ChartRef, ClusterRecord, Heartbeat, ReleaseRequest,
    ReleaseState, ReleaseStatus, Reply, RequestStatus, Timestamp, decode,
};
use optikon_core::selector::LabelSelector;
use optikon_core::{names, subject, values};

use crate::args::{
    ApplyArgs, ChartCommand, Cli, ClusterCommand, Command, SelectorCommand, TargetArgs, WaitArgs,
};
use crate::output::{Table, print};

/// Exit codes: 0 success, 1 something failed (or `selector match` found no match),
/// 2 the input was wrong.
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_BAD_INPUT: i32 = 2;

/// An error in what the user typed: exits with [`EXIT_BAD_INPUT`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

fn bad_input(message: impl Into<String>) -> anyhow::Error {
    BadInput(message.into()).into()
}

pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    if let Command::Selector(command) = &cli.command {
        return Ok(selector(command));
    }
    let client = optikon_runtime::connect(&cli.nats, "optikon-cli").await?;
    let js = jetstream::new(client.clone());
    let code = match cli.command {
        Command::Chart(ChartCommand::Push {
            file,
            force,
            output,
        }) => {
            let entry = push_chart(&client, &js, &file, force).await?;
            print(output.format, &entry, || {
                let mut t = Table::new(vec!["NAME", "VERSION", "DIGEST"]);
                t.rows.push(vec![entry.name.clone(), entry.version.clone(), entry.digest.clone()]);
                t
            });
            0
        }
        Command::Chart(ChartCommand::List { output }) => {
            let charts: Vec<ChartIndexEntry> = read_all(&js, subject::CHART_INDEX_BUCKET).await?;
            print(output.format, &charts, || {
                let mut t = Table::new(vec!["NAME", "VERSION", "APP VERSION", "DIGEST", "PUSHED"]);
                for c in &charts {
                    t.rows.push(vec![
                        c.name.clone(),
                        c.version.clone(),
                        c.app_version.clone().unwrap_or_default(),
                        c.digest.clone(),
                        c.ingested_at.to_string(),
                    ]);
                }
                t
            });
            0
        }
        Command::Install(args) => apply(&client, &js, Action::Install, args).await?,
        Command::Upgrade(args) => apply(&client, &js, Action::Upgrade, args).await?,
        Command::Rollback(args) => {
            let request = new_request(Action::Rollback, &args.release, &args.target, None, None, args.revision);
            submit(&js, request, &args.wait).await?
        }
        Command::Uninstall(args) => {
            let request = new_request(Action::Uninstall, &args.release, &args.target, None, None, None);
            submit(&js, request, &args.wait).await?
        }
        Command::List(args) => {
            let selector = parse_selector(&args.selector)?;
            let clusters = clusters_by_name(&js).await?;
            let mut releases: Vec<ReleaseStatus> = read_all(&js, subject::RELEASES_BUCKET).await?;
            releases.retain(|r| {
                r.state != ReleaseState::Uninstalled
                    && args.namespace.as_ref().is_none_or(|n| &r.namespace == n)
                    && clusters
                        .get(&r.cluster)
                        .is_some_and(|c| selector.matches(&c.labels))
            });
            releases.sort_by(|a, b| (&a.release, &a.namespace, &a.cluster).cmp(&(&b.release, &b.namespace, &b.cluster)));
            print(args.output.format, &releases, || release_table(&releases, false));
            0
        }
        Command::Status(args) => {
            let mut releases: Vec<ReleaseStatus> = read_all(&js, subject::RELEASES_BUCKET).await?;
            releases.retain(|r| {
                r.release == args.release && args.namespace.as_ref().is_none_or(|n| &r.namespace == n)
            });
            if releases.is_empty() {
                eprintln!("release {:?} is not known on any cluster", args.release);
                return Ok(EXIT_FAILED);
            }
            releases.sort_by(|a, b| (&a.namespace, &a.cluster).cmp(&(&b.namespace, &b.cluster)));
            print(args.output.format, &releases, || release_table(&releases, true));
            0
        }
        Command::Clusters(args) => {
            let selector = parse_selector(&args.selector)?;
            let clusters: Vec<ClusterRecord> = clusters_by_name(&js)
                .await?
                .into_values()
                .filter(|c| selector.matches(&c.labels))
                .collect();
            let now = Timestamp::now();
            print(args.output.format, &clusters, || {
                let mut t = Table::new(vec!["NAME", "LABELS", "HEALTH", "PODS", "VERSION", "LAST SEEN"]);
                for c in &clusters {
                    let hb: Option<&Heartbeat> = c.last_heartbeat.as_ref();
                    t.rows.push(vec![
                        c.name.clone(),
                        format_labels(&c.labels),
                        c.health(now).to_string(),
                        hb.map(|h| h.pods_total.to_string()).unwrap_or_else(|| "-".into()),
                        hb.and_then(|h| h.kubernetes_version.clone()).unwrap_or_else(|| "-".into()),
                        c.last_seen().map(|t| ago(t, now)).unwrap_or_else(|| "never".into()),
                    ]);
                }
                t
            });
            0
        }
        Command::Cluster(ClusterCommand::Label { name, changes }) => {
            let record = label_cluster(&js, &name, &changes).await?;
            println!("{}: {}", record.name, format_labels(&record.labels));
            0
        }
        Command::Watch(args) => {
            watch(&client, args.heartbeats).await?;
            0
        }
        Command::Selector(_) => unreachable!("handled before connecting"),
    };
    client.drain().await?;
    Ok(code)
}

fn selector(command: &SelectorCommand) -> i32 {
    match command {
        SelectorCommand::Parse { expr } => match LabelSelector::parse(expr) {
            Ok(selector) => {
                println!("{selector}");
                0
            }
            Err(e) => {
                eprintln!("error: {e}");
                EXIT_BAD_INPUT
            }
        },
        SelectorCommand::Match { expr, labels } => {
            let selector = match LabelSelector::parse(expr) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return EXIT_BAD_INPUT;
                }
            };
            let labels = match names::parse_labels(labels) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: --labels: {e}");
                    return EXIT_BAD_INPUT;
                }
            };
            if selector.matches(&labels) {
                println!("match");
                0
            } else {
                println!("no match");
                EXIT_FAILED
            }
        }
    }
}

fn parse_selector(expr: &str) -> anyhow::Result<LabelSelector> {
    LabelSelector::parse(expr).map_err(|e| bad_input(e.to_string()))
}

fn format_labels(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

fn ago(then: Timestamp, now: Timestamp) -> String {
    let secs = then.seconds_until(now).max(0.0) as u64;
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        _ => format!("{}h ago", secs / 3600),
    }
}

fn release_table(releases: &[ReleaseStatus], with_reason: bool) -> Table {
    let mut header = vec!["NAME", "NAMESPACE", "REVISION", "CHART", "CHART VERSION", "CLUSTER", "STATUS"];
    if with_reason {
        header.push("REASON");
    }
    let mut t = Table::new(header);
    for r in releases {
        let mut row = vec![
            r.release.clone(),
            r.namespace.clone(),
            r.revision.map(|v| v.to_string()).unwrap_or_else(|| "-".into()),
            r.chart.as_ref().map(|c| c.name.clone()).unwrap_or_else(|| "-".into()),
            r.chart.as_ref().map(|c| c.version.clone()).unwrap_or_else(|| "-".into()),
            r.cluster.clone(),
            r.state.to_string(),
        ];
        if with_reason {
            row.push(r.reason.clone().unwrap_or_default());
        }
        t.rows.push(row);
    }
    t
}

/// Reads every live value of a bucket.
async fn read_all<T: serde::de::DeserializeOwned>(
    js: &jetstream::Context,
    bucket: &str,
) -> anyhow::Result<Vec<T>> {
    let store = js
        .get_key_value(bucket)
        .await
        .with_context(|| format!("bucket {bucket} not found: is the hub set up (selector-router running)?"))?;
    let keys: Vec<String> = store.keys().await?.try_collect().await?;
    let mut out = Vec::new();
    for key in keys {
        if let Some(bytes) = store.get(&key).await? {
            out.push(decode::<T>(bucket, &bytes)?);
        }
    }
    Ok(out)
}

async fn clusters_by_name(js: &jetstream::Context) -> anyhow::Result<BTreeMap<String, ClusterRecord>> {
    let clusters: Vec<ClusterRecord> = read_all(js, subject::CLUSTERS_BUCKET).await?;
    Ok(clusters.into_iter().map(|c| (c.name.clone(), c)).collect())
}

/// Uploads an archive to `chart-uploads` and asks chart-ingest to take it.
pub async fn push_chart(
    client: &async_nats::Client,
    js: &jetstream::Context,
    file: &std::path::Path,
    force: bool,
) -> anyhow::Result<ChartIndexEntry> {
    let bytes = tokio::fs::read(file)
        .await
        .map_err(|e| bad_input(format!("cannot read chart {}: {e}", file.display())))?;
    let uploads = js
        .get_object_store(subject::UPLOADS_BUCKET)
        .await
        .context("object store chart-uploads not found: is chart-ingest running?")?;
    let name = format!("upload-{}", uuid::Uuid::new_v4());
    uploads.put(name.as_str(), &mut bytes.as_slice()).await?;
    let mut headers = optikon_runtime::trace::headers(None);
    headers.insert(subject::HEADER_UPLOAD, name.as_str());
    if force {
        headers.insert(subject::HEADER_FORCE, "true");
    }
    let reply = client
        .request_with_headers(subject::CHART_PUSH, headers, bytes::Bytes::new())
        .await
        .context("chart-ingest did not answer: is it running?")?;
    decode::<Reply<ChartIndexEntry>>("chart push reply", &reply.payload)?
        .into_result()
        .map_err(|e| bad_input(format!("chart {} refused: {}", file.display(), e.message)))
}

fn new_request(
    action: Action,
    release: &str,
    target: &TargetArgs,
    chart: Option<ChartRef>,
    values: Option<serde_json::Value>,
    revision: Option<u32>,
) -> ReleaseRequest {
    ReleaseRequest {
        api_version: ApiVersion,
        id: uuid::Uuid::new_v4().to_string(),
        action,
        release: release.to_owned(),
        namespace: target.namespace.clone(),
        selector: target.selector.clone(),
        chart,
        values,
        revision,
    }
}

async fn apply(
    client: &async_nats::Client,
    js: &jetstream::Context,
    action: Action,
    args: ApplyArgs,
) -> anyhow::Result<i32> {
    // Check what can be checked here, so a typo never reaches the hub.
    names::validate_release_name(&args.release).map_err(|e| bad_input(e.to_string()))?;
    names::validate_namespace(&args.target.namespace).map_err(|e| bad_input(e.to_string()))?;
    parse_selector(&args.target.selector)?;
    let values = collect_values(&args)?;
    let chart = if std::path::Path::new(&args.chart).is_file() {
        let entry = push_chart(client, js, std::path::Path::new(&args.chart), false).await?;
        eprintln!("pushed chart {} {} ({})", entry.name, entry.version, entry.digest);
        ChartRef::NameVersion {
            name: entry.name,
            version: entry.version,
        }
    } else if args.chart.starts_with("sha256:") {
        ChartRef::Digest {
            digest: args.chart.clone(),
        }
    } else {
        let version = match &args.version {
            Some(v) => v.clone(),
            None => latest_version(js, &args.chart).await?,
        };
        ChartRef::NameVersion {
            name: args.chart.clone(),
            version,
        }
    };
    let request = new_request(action, &args.release, &args.target, Some(chart), Some(values), None);
    submit(js, request, &args.wait).await
}

fn collect_values(args: &ApplyArgs) -> anyhow::Result<serde_json::Value> {
    let mut merged = serde_json::Value::Object(Default::default());
    for file in &args.values {
        let text = std::fs::read_to_string(file)
            .map_err(|e| bad_input(format!("cannot read values file {}: {e}", file.display())))?;
        let parsed = values::parse_file(&file.display().to_string(), &text)
            .map_err(|e| bad_input(e.to_string()))?;
        values::merge(&mut merged, parsed);
    }
    for expr in &args.set {
        values::apply_set(&mut merged, expr, false).map_err(|e| bad_input(e.to_string()))?;
    }
    for expr in &args.set_string {
        values::apply_set(&mut merged, expr, true).map_err(|e| bad_input(e.to_string()))?;
    }
    Ok(merged)
}

async fn latest_version(js: &jetstream::Context, name: &str) -> anyhow::Result<String> {
    let charts: Vec<ChartIndexEntry> = read_all(js, subject::CHART_INDEX_BUCKET).await?;
    charts
        .iter()
        .filter(|c| c.name == name)
        .filter_map(|c| semver::Version::parse(&c.version).ok())
        .max()
        .map(|v| v.to_string())
        .ok_or_else(|| {
            bad_input(format!(
                "no chart named {name:?} is stored; push it with `optikon chart push`, or give a .tgz path"
            ))
        })
}

/// Publishes a request, then (unless told not to) follows it to the end.
async fn submit(js: &jetstream::Context, request: ReleaseRequest, wait: &WaitArgs) -> anyhow::Result<i32> {
    let requests = js
        .get_key_value(subject::REQUESTS_BUCKET)
        .await
        .context("bucket requests not found: is selector-router running?")?;
    let key = subject::token(&request.id);
    // Watch before publishing, so not even a fast answer is missed.
    let mut updates = requests.watch(&key).await?;
    let body = serde_json::to_vec(&request)?;
    js.publish_with_headers(
        subject::RELEASE_REQUEST,
        optikon_runtime::trace::headers(Some(&request.id)),
        body.into(),
    )
    .await?
    .await
    .context("the hub did not store the request")?;
    eprintln!("request {} sent: {} {}", request.id, request.action, request.release);
    if wait.no_wait {
        println!("{}", request.id);
        return Ok(0);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait.timeout);
    let mut last_line = String::new();
    loop {
        let entry = tokio::time::timeout_at(deadline, updates.next()).await;
        let entry = match entry {
            Err(_) => {
                eprintln!("timed out after {}s; the request goes on: follow it with `optikon watch`", wait.timeout);
                return Ok(EXIT_FAILED);
            }
            Ok(None) => bail!("the request watch ended unexpectedly"),
            Ok(Some(entry)) => entry?,
        };
        if entry.operation != kv::Operation::Put {
            continue;
        }
        let status: RequestStatus = decode("request status", &entry.value)?;
        if let Some(error) = &status.error {
            eprintln!("error: request refused: {}", error.message);
            return Ok(EXIT_BAD_INPUT);
        }
        let (done, failed, total) = status.tally();
        let line = format!("{done}/{total} clusters done, {failed} failed");
        if line != last_line {
            eprintln!("{line}");
            last_line = line;
        }
        if status.is_complete() {
            return Ok(finish(&status));
        }
    }
}

/// Prints the per-cluster result and returns the exit code.
fn finish(status: &RequestStatus) -> i32 {
    if status.clusters.is_empty() {
        println!("no cluster matches selector {:?}: nothing to do", status.selector);
        return 0;
    }
    let mut t = Table::new(vec!["CLUSTER", "STATUS", "REVISION", "REASON"]);
    for (cluster, progress) in &status.clusters {
        t.rows.push(vec![
            cluster.clone(),
            progress.state.to_string(),
            progress.revision.map(|r| r.to_string()).unwrap_or_else(|| "-".into()),
            progress.reason.clone().unwrap_or_default(),
        ]);
    }
    print!("{}", t.render());
    let failed: Vec<&String> = status
        .clusters
        .iter()
        .filter(|(_, p)| p.state == ReleaseState::Failed)
        .map(|(c, _)| c)
        .collect();
    if failed.is_empty() {
        0
    } else {
        eprintln!(
            "error: {} failed on {}",
            status.release,
            failed.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
        );
        EXIT_FAILED
    }
}

/// Applies `key=value` and `key-` changes to a cluster's labels (optimistic concurrency).
async fn label_cluster(js: &jetstream::Context, name: &str, changes: &[String]) -> anyhow::Result<ClusterRecord> {
    let store = js.get_key_value(subject::CLUSTERS_BUCKET).await?;
    let key = subject::token(name);
    for _ in 0..10 {
        let Some(entry) = store.entry(&key).await?.filter(|e| e.operation == kv::Operation::Put) else {
            return Err(bad_input(format!("no cluster named {name:?}; see `optikon clusters`")));
        };
        let mut record: ClusterRecord = decode("cluster record", &entry.value)?;
        for change in changes {
            if let Some(label) = change.strip_suffix('-') {
                names::validate_label_key(label).map_err(|e| bad_input(e.to_string()))?;
                record.labels.remove(label);
            } else {
                let (k, v) = change
                    .split_once('=')
                    .ok_or_else(|| bad_input(format!("{change:?}: write key=value to set or key- to remove")))?;
                names::validate_label_key(k).map_err(|e| bad_input(e.to_string()))?;
                names::validate_label_value(v).map_err(|e| bad_input(e.to_string()))?;
                record.labels.insert(k.to_owned(), v.to_owned());
            }
        }
        let body = serde_json::to_vec(&record)?;
        if store.update(&key, body.into(), entry.revision).await.is_ok() {
            return Ok(record);
        }
    }
    bail!("cluster {name} kept changing; try again")
}

/// Prints request events and release status as they happen.
async fn watch(client: &async_nats::Client, heartbeats: bool) -> anyhow::Result<()> {
    let mut events = client.subscribe("optikon.event.>").await?;
    let mut status = client.subscribe(format!("{}.>", subject::STATUS_PREFIX)).await?;
    eprintln!("watching (Ctrl-C to stop)");
    loop {
        tokio::select! {
            Some(message) = events.next() => {
                if let Ok(s) = serde_json::from_slice::<RequestStatus>(&message.payload) {
                    let (done, failed, total) = s.tally();
                    let what = s.error.as_ref().map(|e| format!("refused: {}", e.message))
                        .unwrap_or_else(|| format!("{done}/{total} done, {failed} failed"));
                    println!("{} request {} {} {}: {what}", Timestamp::now(), s.id, s.action.map(|a| a.to_string()).unwrap_or_default(), s.release);
                } else {
                    println!("{} {} {}", Timestamp::now(), message.subject, String::from_utf8_lossy(&message.payload));
                }
            }
            Some(message) = status.next() => {
                if message.subject.ends_with(".heartbeat") {
                    if heartbeats {
                        if let Ok(h) = serde_json::from_slice::<Heartbeat>(&message.payload) {
                            println!("{} heartbeat {} api_ready={} pods={}", h.at, h.cluster, h.api_ready, h.pods_total);
                        }
                    }
                } else if let Ok(s) = serde_json::from_slice::<ReleaseStatus>(&message.payload) {
                    println!(
                        "{} {} {}/{} {} {}{}",
                        s.at, s.cluster, s.namespace, s.release, s.state,
                        s.revision.map(|r| format!("revision {r}")).unwrap_or_default(),
                        s.reason.map(|r| format!(" ({r})")).unwrap_or_default(),
                    );
                }
            }
            else => return Ok(()),
        }
    }
}
