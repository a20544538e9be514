//! The `optikon` command line: a thin client of Optikon's NATS API (through
//! `optikon-client`), printing tables for people and JSON or YAML for scripts.

pub mod args;
pub mod output;

use std::collections::BTreeMap;

use futures::StreamExt;
use optikon_client::{Client, ClientError, LabelChange};
use optikon_core::message::{
    Action, ChartRef, ClusterRecord, Heartbeat, ReleaseRequest, ReleaseState, ReleaseStatus,
    RequestStatus, Timestamp,
};
use optikon_core::selector::LabelSelector;
use optikon_core::values::{HelmValues, SetFile, ValuesFile};
use optikon_core::{names, subject};

use crate::args::{
    ApplyArgs, ChartCommand, Cli, ClusterCommand, Command, SelectorCommand, WaitArgs,
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

/// Client errors that are the user's to fix become [`BadInput`].
fn classify(error: ClientError) -> anyhow::Error {
    match error {
        ClientError::Refused(_) | ClientError::NotFound(_) | ClientError::BadInput(_) => {
            bad_input(error.to_string())
        }
        other => other.into(),
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    if let Command::Selector(command) = &cli.command {
        return Ok(selector(command));
    }
    let nats = optikon_runtime::connect(&cli.nats, "optikon-cli").await?;
    let client = Client::new(nats.clone());
    let code = match cli.command {
        Command::Chart(ChartCommand::Push {
            file,
            force,
            output,
        }) => {
            let entry = push_file(&client, &file, force).await?;
            print(output.format, &entry, || {
                let mut t = Table::new(vec!["NAME", "VERSION", "DIGEST"]);
                t.rows.push(vec![
                    entry.name.clone(),
                    entry.version.clone(),
                    entry.digest.clone(),
                ]);
                t
            });
            0
        }
        Command::Chart(ChartCommand::List { output }) => {
            let charts = client.charts().await.map_err(classify)?;
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
        Command::Install(args) => apply(&client, Action::Install, args).await?,
        Command::Upgrade(args) => apply(&client, Action::Upgrade, args).await?,
        Command::Rollback(args) => {
            let mut request = Client::new_request(
                Action::Rollback,
                &args.release,
                &args.target.namespace,
                &args.target.selector,
            );
            request.revision = args.revision;
            check_request(&request)?;
            follow(&client, request, &args.wait).await?
        }
        Command::Uninstall(args) => {
            let request = Client::new_request(
                Action::Uninstall,
                &args.release,
                &args.target.namespace,
                &args.target.selector,
            );
            check_request(&request)?;
            follow(&client, request, &args.wait).await?
        }
        Command::List(args) => {
            let selector = parse_selector(&args.selector)?;
            let clusters = client.clusters_by_name().await.map_err(classify)?;
            let mut releases = client.releases().await.map_err(classify)?;
            releases.retain(|r| {
                r.state != ReleaseState::Uninstalled
                    && args.namespace.as_ref().is_none_or(|n| &r.namespace == n)
                    && clusters
                        .get(&r.cluster)
                        .is_some_and(|c| selector.matches(&c.labels))
            });
            print(args.output.format, &releases, || {
                release_table(&releases, false)
            });
            0
        }
        Command::Status(args) => {
            let mut releases = client.releases().await.map_err(classify)?;
            releases.retain(|r| {
                r.release == args.release
                    && args.namespace.as_ref().is_none_or(|n| &r.namespace == n)
            });
            if releases.is_empty() {
                eprintln!("release {:?} is not known on any cluster", args.release);
                return Ok(EXIT_FAILED);
            }
            print(args.output.format, &releases, || {
                release_table(&releases, true)
            });
            0
        }
        Command::Clusters(args) => {
            let selector = parse_selector(&args.selector)?;
            let mut clusters = client.clusters().await.map_err(classify)?;
            clusters.retain(|c| selector.matches(&c.labels));
            let now = Timestamp::now();
            print(args.output.format, &clusters, || {
                let mut t = Table::new(vec![
                    "NAME",
                    "LABELS",
                    "HEALTH",
                    "PODS",
                    "VERSION",
                    "LAST SEEN",
                ]);
                for c in &clusters {
                    let hb: Option<&Heartbeat> = c.last_heartbeat.as_ref();
                    t.rows.push(vec![
                        c.name.clone(),
                        format_labels(&c.labels),
                        c.health(now).to_string(),
                        hb.map(|h| h.pods_total.to_string())
                            .unwrap_or_else(|| "-".into()),
                        hb.and_then(|h| h.kubernetes_version.clone())
                            .unwrap_or_else(|| "-".into()),
                        c.last_seen()
                            .map(|t| ago(t, now))
                            .unwrap_or_else(|| "never".into()),
                    ]);
                }
                t
            });
            0
        }
        Command::Cluster(ClusterCommand::Label { name, changes }) => {
            let changes = changes
                .iter()
                .map(|c| LabelChange::parse(c))
                .collect::<Result<Vec<_>, _>>()
                .map_err(classify)?;
            let record: ClusterRecord = client
                .label_cluster(&name, &changes)
                .await
                .map_err(classify)?;
            println!("{}: {}", record.name, format_labels(&record.labels));
            0
        }
        Command::Watch(args) => {
            watch(&nats, args.heartbeats).await?;
            0
        }
        Command::Selector(_) => unreachable!("handled before connecting"),
    };
    nats.drain().await?;
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

/// Checks what can be checked here, so a typo never reaches the hub.
fn check_request(request: &ReleaseRequest) -> anyhow::Result<()> {
    optikon_core::message::check_target(&request.release, &request.namespace, &request.selector)
        .map_err(|e| bad_input(e.message))?;
    Ok(())
}

async fn push_file(
    client: &Client,
    file: &std::path::Path,
    force: bool,
) -> anyhow::Result<optikon_core::message::ChartIndexEntry> {
    let bytes = tokio::fs::read(file)
        .await
        .map_err(|e| bad_input(format!("cannot read chart {}: {e}", file.display())))?;
    client.push_chart(&bytes, force).await.map_err(|e| match e {
        ClientError::Refused(e) => {
            bad_input(format!("chart {} refused: {}", file.display(), e.message))
        }
        other => other.into(),
    })
}

async fn apply(client: &Client, action: Action, args: ApplyArgs) -> anyhow::Result<i32> {
    let mut request = Client::new_request(
        action,
        &args.release,
        &args.target.namespace,
        &args.target.selector,
    );
    request.atomic = args.atomic;
    check_request(&request)?;
    request.helm_values = collect_values(&args)?;
    let chart = if std::path::Path::new(&args.chart).is_file() {
        let entry = push_file(client, std::path::Path::new(&args.chart), false).await?;
        eprintln!(
            "pushed chart {} {} ({})",
            entry.name, entry.version, entry.digest
        );
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
            None => client
                .latest_chart_version(&args.chart)
                .await
                .map_err(classify)?,
        };
        ChartRef::NameVersion {
            name: args.chart.clone(),
            version,
        }
    };
    request.chart = Some(chart);
    follow(client, request, &args.wait).await
}

/// Publishes a request, then (unless told not to) follows it to the end.
async fn follow(client: &Client, request: ReleaseRequest, wait: &WaitArgs) -> anyhow::Result<i32> {
    eprintln!(
        "request {}: {} {}",
        request.id, request.action, request.release
    );
    if wait.no_wait {
        let updates = client.submit(&request).await.map_err(classify)?;
        drop(updates);
        println!("{}", request.id);
        return Ok(0);
    }
    let mut last_line = String::new();
    let result = client
        .run_request(
            &request,
            std::time::Duration::from_secs(wait.timeout),
            |status| {
                let (done, failed, total) = status.tally();
                let line = format!("{done}/{total} clusters done, {failed} failed");
                if line != last_line {
                    eprintln!("{line}");
                    last_line = line;
                }
            },
        )
        .await;
    match result {
        Ok(status) => Ok(finish(&status)),
        Err(ClientError::Refused(error)) => {
            eprintln!("error: request refused: {}", error.message);
            Ok(EXIT_BAD_INPUT)
        }
        Err(ClientError::Timeout(message)) => {
            eprintln!("{message}: follow it with `optikon watch`");
            Ok(EXIT_FAILED)
        }
        Err(other) => Err(other.into()),
    }
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
    let mut header = vec![
        "NAME",
        "NAMESPACE",
        "REVISION",
        "CHART",
        "CHART VERSION",
        "CLUSTER",
        "STATUS",
    ];
    if with_reason {
        header.push("REASON");
    }
    let mut t = Table::new(header);
    for r in releases {
        let mut row = vec![
            r.release.clone(),
            r.namespace.clone(),
            r.revision
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            r.chart
                .as_ref()
                .map(|c| c.name.clone())
                .unwrap_or_else(|| "-".into()),
            r.chart
                .as_ref()
                .map(|c| c.version.clone())
                .unwrap_or_else(|| "-".into()),
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

/// The values files and flags as given, for helm at the edge to read (see
/// `optikon_core::values`): files are read here, and only checked, never reinterpreted.
fn collect_values(args: &ApplyArgs) -> anyhow::Result<HelmValues> {
    let read = |file: &std::path::Path| {
        std::fs::read_to_string(file)
            .map_err(|e| bad_input(format!("cannot read values file {}: {e}", file.display())))
    };
    let mut collected = HelmValues {
        set: args.set.clone(),
        set_string: args.set_string.clone(),
        set_json: args.set_json.clone(),
        set_literal: args.set_literal.clone(),
        ..HelmValues::default()
    };
    for file in &args.values {
        collected.files.push(ValuesFile {
            name: file.display().to_string(),
            text: read(file)?,
        });
    }
    for expr in &args.set_file {
        // helm's `--set-file a=path1,b=path2`.
        for pair in expr.split(',') {
            let (key, path) = pair
                .split_once('=')
                .ok_or_else(|| bad_input(format!("--set-file {pair:?}: write key=path")))?;
            collected.set_file.push(SetFile {
                key: key.to_owned(),
                name: path.to_owned(),
                text: read(std::path::Path::new(path))?,
            });
        }
    }
    collected.check().map_err(|e| bad_input(e.to_string()))?;
    Ok(collected)
}

/// Prints the per-cluster result and returns the exit code.
fn finish(status: &RequestStatus) -> i32 {
    if status.clusters.is_empty() {
        println!(
            "no cluster matches selector {:?}: nothing to do",
            status.selector
        );
        return 0;
    }
    let mut t = Table::new(vec!["CLUSTER", "STATUS", "REVISION", "REASON"]);
    for (cluster, progress) in &status.clusters {
        t.rows.push(vec![
            cluster.clone(),
            progress.state.to_string(),
            progress
                .revision
                .map(|r| r.to_string())
                .unwrap_or_else(|| "-".into()),
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
            failed
                .iter()
                .map(|c| c.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
        EXIT_FAILED
    }
}

/// Prints request events and release status as they happen.
async fn watch(client: &async_nats::Client, heartbeats: bool) -> anyhow::Result<()> {
    let mut events = client.subscribe("optikon.event.>").await?;
    let mut status = client
        .subscribe(format!("{}.>", subject::STATUS_PREFIX))
        .await?;
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
                    if heartbeats
                        && let Ok(h) = serde_json::from_slice::<Heartbeat>(&message.payload) {
                            println!("{} heartbeat {} api_ready={} pods={}", h.at, h.cluster, h.api_ready, h.pods_total);
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
