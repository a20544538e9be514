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
    ApplyArgs, ChartCommand, Cli, ClusterCommand, Command, RolloutCommand, SelectorCommand,
    StrategyArgs, WaitArgs,
};
use crate::output::{Table, print};
use optikon_core::cluster_values::Overlay;
use optikon_core::message::Health;
use optikon_core::preview::PreviewOutcome;
use optikon_core::rollout::{
    Amount, ControlAction, OfflinePolicy, Rollout, RolloutState, RolloutStrategy,
};

/// Exit codes: 0 success, 1 something failed (or `selector match` found no match, or a
/// rollout stopped or was aborted), 2 the input was wrong, 3 timed out while clusters that
/// answer were still busy, 4 only unreachable clusters kept it from finishing: it timed
/// out waiting for them, or a rollout skipped them.
pub const EXIT_FAILED: i32 = 1;
pub const EXIT_BAD_INPUT: i32 = 2;
pub const EXIT_TIMEOUT: i32 = 3;
pub const EXIT_OFFLINE: i32 = 4;

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
            request.strategy = strategy_of(&args.strategy)?;
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
            let desired = client
                .desired(&args.release, args.namespace.as_deref())
                .await
                .map_err(classify)?;
            let clusters = client.clusters_by_name().await.map_err(classify)?;
            // A change not answered yet replaces the row of what the cluster last said.
            let pending = not_answered(&releases, &desired, &clusters);
            releases.retain(|r| {
                !pending
                    .iter()
                    .any(|p| p.cluster == r.cluster && p.namespace == r.namespace)
            });
            releases.extend(pending);
            releases.sort_by(|a, b| (&a.namespace, &a.cluster).cmp(&(&b.namespace, &b.cluster)));
            if releases.is_empty() {
                eprintln!("release {:?} is not known on any cluster", args.release);
                return Ok(EXIT_FAILED);
            }
            print(args.output.format, &releases, || {
                release_table(&releases, true)
            });
            0
        }
        Command::History(args) => {
            names::validate_cluster_name(&args.cluster).map_err(|e| bad_input(e.to_string()))?;
            let history = client
                .release_history(&args.cluster, &args.namespace, &args.release)
                .await
                .map_err(classify)?;
            if history.is_empty() {
                eprintln!(
                    "cluster {} has reported nothing of release {} in namespace {} (the hub keeps 7 days)",
                    args.cluster, args.release, args.namespace
                );
                return Ok(EXIT_FAILED);
            }
            print(args.output.format, &history, || {
                let mut t = Table::new(vec![
                    "TIME",
                    "GENERATION",
                    "ACTION",
                    "STATE",
                    "REVISION",
                    "CHART",
                    "REASON",
                ]);
                for s in &history {
                    t.rows.push(vec![
                        s.at.to_string(),
                        s.generation.to_string(),
                        s.action.to_string(),
                        s.state.to_string(),
                        s.revision
                            .map(|r| r.to_string())
                            .unwrap_or_else(|| "-".into()),
                        s.chart
                            .as_ref()
                            .map(|c| format!("{}-{}", c.name, c.version))
                            .unwrap_or_else(|| "-".into()),
                        s.reason.clone().unwrap_or_default(),
                    ]);
                }
                t
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
        Command::Rollout(command) => rollout_command(&client, command).await?,
        Command::Values(args) => show_values(&client, args).await?,
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
    if let Some(strategy) = &request.strategy {
        strategy
            .check(request.action)
            .map_err(|e| bad_input(e.message))?;
    }
    Ok(())
}

/// The rollout strategy the flags ask for; `None` when none was given (all at once).
fn strategy_of(args: &StrategyArgs) -> anyhow::Result<Option<RolloutStrategy>> {
    let amount = |flag: &str, text: &Option<String>| {
        text.as_deref()
            .map(|t| {
                t.parse::<Amount>()
                    .map_err(|e| bad_input(format!("--{flag}: {e}")))
            })
            .transpose()
    };
    let strategy = RolloutStrategy {
        waves: args.waves.clone(),
        max_unavailable: amount("max-unavailable", &args.max_unavailable)?,
        max_failures: amount("max-failures", &args.max_failures)?,
        rollback_on_failure: args.rollback_on_failure,
        soak_seconds: args.soak.unwrap_or(0),
        offline: args
            .offline
            .as_deref()
            .map(|o| {
                o.parse::<OfflinePolicy>()
                    .map_err(|e| bad_input(format!("--offline: {e}")))
            })
            .transpose()?
            .unwrap_or_default(),
    };
    if args.rollback_on_failure && strategy.max_failures.is_none() {
        return Err(bad_input(
            "--rollback-on-failure needs --max-failures: it acts when the rollout stops on failures",
        ));
    }
    let given = !args.waves.is_empty()
        || args.max_unavailable.is_some()
        || args.max_failures.is_some()
        || args.soak.is_some()
        || args.offline.is_some();
    Ok(given.then_some(strategy))
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
    request.strategy = strategy_of(&args.strategy)?;
    check_request(&request)?;
    request.helm_values = collect_values(&args)?;
    request.overlays = collect_overlays(&args.overlay)?;
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
    if wait.dry_run {
        return dry_run(client, &request).await;
    }
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
    if request.strategy.is_some() {
        return follow_rollout(client, request, wait).await;
    }
    let mut last_line = String::new();
    let run = client.run_request(
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
    );
    tokio::pin!(run);
    // Every few seconds while it runs: which clusters it still waits for, and which of them
    // are unreachable (a cut-off site would otherwise look like a silent wait).
    let mut notes = tokio::time::interval(NOTE_EVERY);
    notes.tick().await;
    let mut last_note = String::new();
    let result = loop {
        tokio::select! {
            result = &mut run => break result,
            _ = notes.tick() => {
                if let Ok(waiting) = waiting(client, &request.id).await {
                    let note = waiting.note();
                    if !note.is_empty() && note != last_note {
                        eprintln!("{note}");
                        last_note = note;
                    }
                }
            }
        }
    };
    match result {
        Ok(status) => Ok(finish(&status)),
        Err(ClientError::Refused(error)) => {
            eprintln!("error: request refused: {}", error.message);
            Ok(EXIT_BAD_INPUT)
        }
        Err(ClientError::Timeout(message)) => {
            eprintln!("{message}: follow it with `optikon watch`");
            timed_out(client, &request.id).await
        }
        Err(other) => Err(other.into()),
    }
}

/// `--dry-run`: the preview, clusters with the same changes shown together. Exit code as
/// for the real run: failed if it would fail somewhere, offline if a cluster could not be
/// asked.
async fn dry_run(client: &Client, request: &ReleaseRequest) -> anyhow::Result<i32> {
    let preview = match client.preview(request).await {
        Ok(preview) => preview,
        Err(ClientError::Refused(error)) => {
            eprintln!("error: request refused: {}", error.message);
            return Ok(EXIT_BAD_INPUT);
        }
        Err(other) => return Err(other.into()),
    };
    print!("{}", output::preview(&preview));
    let any = |outcome| preview.clusters.iter().any(|c| c.outcome == outcome);
    Ok(if any(PreviewOutcome::Failed) {
        EXIT_FAILED
    } else if any(PreviewOutcome::Offline) {
        EXIT_OFFLINE
    } else {
        0
    })
}

/// How often a request still running says what it waits for.
const NOTE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
/// Clusters named in one line; the rest are counted.
const NAMES_SHOWN: usize = 8;

/// The clusters a request still waits for: busy ones, and unreachable ones with their last
/// heartbeat (`None`: never heard from).
struct Waiting {
    busy: Vec<String>,
    offline: Vec<(String, Option<Timestamp>)>,
}

impl Waiting {
    /// `waiting for a, b; unreachable: c (since …)`, or empty when nothing is waited for.
    fn note(&self) -> String {
        let mut parts = Vec::new();
        if !self.busy.is_empty() {
            parts.push(format!("waiting for {}", names(self.busy.iter().cloned())));
        }
        if !self.offline.is_empty() {
            let offline = self.offline.iter().map(|(c, since)| match since {
                Some(t) => format!("{c} (since {t})"),
                None => format!("{c} (never heard from)"),
            });
            parts.push(format!(
                "unreachable, the change waits at the hub for: {}",
                names(offline)
            ));
        }
        parts.join("; ")
    }
}

/// Up to [`NAMES_SHOWN`] names, then how many more.
fn names(all: impl Iterator<Item = String>) -> String {
    let all: Vec<String> = all.collect();
    let shown = all[..all.len().min(NAMES_SHOWN)].join(", ");
    match all.len().saturating_sub(NAMES_SHOWN) {
        0 => shown,
        more => format!("{shown} and {more} more"),
    }
}

async fn waiting(client: &Client, id: &str) -> anyhow::Result<Waiting> {
    let status = client.request_status(id).await.map_err(classify)?;
    let clusters = client.clusters_by_name().await.map_err(classify)?;
    let now = Timestamp::now();
    let mut waiting = Waiting {
        busy: Vec::new(),
        offline: Vec::new(),
    };
    for (cluster, progress) in status.map(|s| s.clusters).unwrap_or_default() {
        if progress.state.is_final() || progress.state == ReleaseState::Queued {
            continue;
        }
        match clusters.get(&cluster) {
            Some(record)
                if !matches!(record.health(now), Health::Unreachable | Health::Unknown) =>
            {
                waiting.busy.push(cluster)
            }
            record => waiting
                .offline
                .push((cluster, record.and_then(|r| r.last_seen()))),
        }
    }
    Ok(waiting)
}

/// After a timeout: names the clusters still waited for, and which of them are
/// unreachable; [`EXIT_OFFLINE`] when only unreachable ones are left, else [`EXIT_TIMEOUT`].
async fn timed_out(client: &Client, id: &str) -> anyhow::Result<i32> {
    let waiting = waiting(client, id).await?;
    let note = waiting.note();
    if !note.is_empty() {
        eprintln!("{note}");
    }
    Ok(if waiting.busy.is_empty() && !waiting.offline.is_empty() {
        EXIT_OFFLINE
    } else {
        EXIT_TIMEOUT
    })
}

/// Follows a rollout to its end: one line whenever its wave, counts or what it waits for
/// change; then the clusters, and the rollback's if it rolled back.
async fn follow_rollout(
    client: &Client,
    request: ReleaseRequest,
    wait: &WaitArgs,
) -> anyhow::Result<i32> {
    let updates = client.submit(&request).await.map_err(classify)?;
    drop(updates);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(wait.timeout);
    let mut last_line = String::new();
    loop {
        let status = client.request_status(&request.id).await.map_err(classify)?;
        if let Some(error) = status.as_ref().and_then(|s| s.error.as_ref()) {
            eprintln!("error: request refused: {}", error.message);
            return Ok(EXIT_BAD_INPUT);
        }
        let rollout = client.rollout(&request.id).await.map_err(classify)?;
        if let (Some(status), Some(rollout)) = (&status, &rollout) {
            let line = rollout_line(status, rollout);
            if line != last_line {
                eprintln!("{line}");
                last_line = line;
            }
            let rolled_back = match &rollout.rollback_request {
                Some(id) if rollout.state == RolloutState::RolledBack => {
                    client.request_status(id).await.map_err(classify)?
                }
                _ => None,
            };
            if rollout.state.is_final() && status.is_complete() {
                let mut code = finish(status);
                if let Some(rollback) = rolled_back {
                    println!("rolled back ({}):", rollback.id);
                    code = code.max(finish(&rollback));
                }
                return Ok(match rollout.state {
                    RolloutState::Succeeded => code,
                    _ => {
                        eprintln!(
                            "error: rollout {}: {}",
                            rollout.state,
                            rollout.reason.as_deref().unwrap_or("")
                        );
                        EXIT_FAILED
                    }
                });
            }
        }
        if tokio::time::Instant::now() > deadline {
            eprintln!(
                "rollout {} not finished after {}s; it goes on: follow it with `optikon rollout status {}`",
                request.id, wait.timeout, request.id
            );
            return timed_out(client, &request.id).await;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// `wave 2/3 (ring=early): 3/5 clusters done, 1 failed; waiting for b, c (unreachable since …)`
fn rollout_line(status: &RequestStatus, rollout: &Rollout) -> String {
    let (done, failed, total) = status.tally();
    let waves = rollout.waves.len();
    let wave = (rollout.wave + 1).min(waves);
    let selector = rollout
        .waves
        .get(rollout.wave)
        .map(|w| {
            if w.selector.is_empty() {
                "the rest".to_owned()
            } else {
                w.selector.clone()
            }
        })
        .unwrap_or_default();
    let mut line = format!("wave {wave}/{waves}");
    if !selector.is_empty() && !rollout.state.is_final() {
        line += &format!(" ({selector})");
    }
    line += &format!(": {done}/{total} clusters done, {failed} failed");
    if rollout.state != RolloutState::Running {
        line += &format!("; {}", rollout.state);
    }
    if let Some(reason) = &rollout.reason {
        line += &format!("; {reason}");
    }
    line
}

async fn rollout_command(client: &Client, command: RolloutCommand) -> anyhow::Result<i32> {
    let (id, action) = match command {
        RolloutCommand::List { output } => {
            let rollouts = client.rollouts().await.map_err(classify)?;
            print(output.format, &rollouts, || {
                let mut t = Table::new(vec![
                    "ID",
                    "ACTION",
                    "RELEASE",
                    "NAMESPACE",
                    "STATE",
                    "WAVE",
                    "CREATED",
                ]);
                for r in &rollouts {
                    t.rows.push(vec![
                        r.id.clone(),
                        r.action.to_string(),
                        r.release.clone(),
                        r.namespace.clone(),
                        r.state.to_string(),
                        format!("{}/{}", (r.wave + 1).min(r.waves.len()), r.waves.len()),
                        r.created_at.to_string(),
                    ]);
                }
                t
            });
            return Ok(0);
        }
        RolloutCommand::Status { id, output } => {
            let Some(rollout) = client.rollout(&id).await.map_err(classify)? else {
                return Err(bad_input(format!(
                    "no rollout {id:?}: only a request with --wave, --max-unavailable, --max-failures, --soak or --offline has one"
                )));
            };
            let status = client.request_status(&id).await.map_err(classify)?;
            print(output.format, &rollout, || {
                let mut t = Table::new(vec!["WAVE", "SELECTOR", "CLUSTER", "STATUS", "REASON"]);
                for (i, wave) in rollout.waves.iter().enumerate() {
                    for cluster in &wave.clusters {
                        let progress = status.as_ref().and_then(|s| s.clusters.get(cluster));
                        t.rows.push(vec![
                            (i + 1).to_string(),
                            if wave.selector.is_empty() {
                                "(the rest)".into()
                            } else {
                                wave.selector.clone()
                            },
                            cluster.clone(),
                            progress
                                .map(|p| p.state.to_string())
                                .unwrap_or_else(|| "-".into()),
                            progress.and_then(|p| p.reason.clone()).unwrap_or_default(),
                        ]);
                    }
                }
                t
            });
            if output.format == crate::args::Format::Table
                && let Some(status) = &status
            {
                println!("{}", rollout_line(status, &rollout));
            }
            return Ok(0);
        }
        RolloutCommand::Pause { id } => (id, ControlAction::Pause),
        RolloutCommand::Resume { id } => (id, ControlAction::Resume),
        RolloutCommand::Abort { id } => (id, ControlAction::Abort),
    };
    let rollout = client
        .control_rollout(&id, action)
        .await
        .map_err(classify)?;
    println!("rollout {}: {}", rollout.id, rollout.state);
    Ok(0)
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

/// A row for each cluster whose desired state asks for a change it has not answered yet
/// (no status of that generation): `pending`, saying whether the site is unreachable.
fn not_answered(
    releases: &[ReleaseStatus],
    desired: &[optikon_core::message::DesiredRelease],
    clusters: &BTreeMap<String, ClusterRecord>,
) -> Vec<ReleaseStatus> {
    let now = Timestamp::now();
    desired
        .iter()
        .filter(|d| {
            !releases.iter().any(|r| {
                r.cluster == d.cluster && r.namespace == d.namespace && r.generation >= d.generation
            })
        })
        .map(|d| {
            let record = clusters.get(&d.cluster);
            let reason = match record.map(|r| (r.health(now), r.last_seen())) {
                Some((Health::Unreachable, Some(since))) => format!(
                    "{} waits at the hub for the site: unreachable since {since}",
                    d.action
                ),
                Some((Health::Unreachable | Health::Unknown, _)) | None => {
                    format!(
                        "{} waits at the hub for the site: never heard from",
                        d.action
                    )
                }
                Some(_) => format!("{} sent, not answered yet", d.action),
            };
            let current = releases
                .iter()
                .find(|r| r.cluster == d.cluster && r.namespace == d.namespace);
            ReleaseStatus {
                api_version: optikon_core::message::ApiVersion,
                cluster: d.cluster.clone(),
                namespace: d.namespace.clone(),
                release: d.release.clone(),
                generation: d.generation,
                request_id: d.request_id.clone(),
                action: d.action,
                state: ReleaseState::Pending,
                revision: current.and_then(|r| r.revision),
                chart: current.and_then(|r| r.chart.clone()),
                reason: Some(reason),
                first_deployed: None,
                at: d.requested_at,
            }
        })
        .collect()
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

/// `--overlay SELECTOR:FILE` flags, files read here (a selector has no `:`).
fn collect_overlays(flags: &[String]) -> anyhow::Result<Vec<Overlay>> {
    let mut overlays: Vec<Overlay> = Vec::new();
    for flag in flags {
        let (selector, path) = flag
            .split_once(':')
            .ok_or_else(|| bad_input(format!("--overlay {flag:?}: write SELECTOR:FILE")))?;
        LabelSelector::parse(selector)
            .map_err(|e| bad_input(format!("--overlay {flag:?}: selector: {e}")))?;
        let text = std::fs::read_to_string(path)
            .map_err(|e| bad_input(format!("cannot read overlay file {path}: {e}")))?;
        optikon_core::values::check_file(path, &text).map_err(|e| bad_input(e.to_string()))?;
        let file = ValuesFile {
            name: path.to_owned(),
            text,
        };
        // Files for one selector stay together, in order.
        match overlays.last_mut() {
            Some(last) if last.selector == selector => last.files.push(file),
            _ => overlays.push(Overlay {
                selector: selector.to_owned(),
                files: vec![file],
            }),
        }
    }
    Ok(overlays)
}

/// `optikon values`: what each cluster's release was given, as the hub sent it.
async fn show_values(client: &Client, args: crate::args::ValuesArgs) -> anyhow::Result<i32> {
    let mut desired = client
        .desired(&args.release, Some(&args.namespace))
        .await
        .map_err(classify)?;
    desired.retain(|d| args.cluster.as_ref().is_none_or(|c| &d.cluster == c));
    desired.sort_by(|a, b| a.cluster.cmp(&b.cluster));
    if desired.is_empty() {
        eprintln!(
            "release {:?} in namespace {:?} has no desired state{}",
            args.release,
            args.namespace,
            args.cluster
                .as_ref()
                .map(|c| format!(" on {c}"))
                .unwrap_or_default()
        );
        return Ok(EXIT_FAILED);
    }
    #[derive(serde::Serialize)]
    struct Effective<'a> {
        cluster: &'a str,
        generation: u64,
        values: &'a serde_json::Value,
        #[serde(rename = "helmValues")]
        helm_values: &'a HelmValues,
    }
    let shown: Vec<Effective<'_>> = desired
        .iter()
        .map(|d| Effective {
            cluster: &d.cluster,
            generation: d.generation,
            values: &d.values,
            helm_values: &d.helm_values,
        })
        .collect();
    if args.output.format != crate::args::Format::Table {
        print(args.output.format, &shown, || Table::new(vec![]));
        return Ok(0);
    }
    for e in &shown {
        println!("# {} (generation {})", e.cluster, e.generation);
        if e.values.as_object().is_some_and(|o| !o.is_empty()) {
            println!("# values\n{}", serde_yaml_ng::to_string(e.values)?);
        }
        for file in &e.helm_values.files {
            println!("# -f {}\n{}", file.name, file.text.trim_end());
        }
        for (flag, exprs) in [
            ("--set-json", &e.helm_values.set_json),
            ("--set", &e.helm_values.set),
            ("--set-string", &e.helm_values.set_string),
            ("--set-literal", &e.helm_values.set_literal),
        ] {
            for expr in exprs {
                println!("# {flag} {expr}");
            }
        }
        for file in &e.helm_values.set_file {
            println!("# --set-file {}={}", file.key, file.name);
        }
        println!();
    }
    Ok(0)
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
    let skipped: Vec<&str> = status
        .clusters
        .iter()
        .filter(|(_, p)| p.state == ReleaseState::Skipped)
        .map(|(c, _)| c.as_str())
        .collect();
    if failed.is_empty() && skipped.is_empty() {
        0
    } else if failed.is_empty() {
        eprintln!("{} left out on {}", status.release, skipped.join(", "));
        EXIT_OFFLINE
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
