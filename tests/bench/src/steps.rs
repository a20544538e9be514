//! Part 3: where the time of one install on one cluster goes, from timestamps the parts
//! leave anyway: JetStream store times (request, command at hub and edge, status at edge and
//! hub, request record), the executor's log events, a watch on the Deployment, and a
//! wrapper around helm that notes when `helm template` starts and ends.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use async_nats::jetstream;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use optikon_core::message::RequestStatus;
use optikon_core::subject;
use time::OffsetDateTime;

use crate::bed::{Bench, NAMESPACE, PART_LABEL, STEPS_SITE};
use crate::logs::{self, Event};
use crate::stats::Summary;
use crate::table::Table;

const REPLICAS: u32 = 2;

/// The steps, in order; consecutive timestamps, so they add up to the total.
pub const STEPS: [&str; 15] = [
    "client → request stored (hub JetStream)",
    "router: request → command stored in `CMD` (hub)",
    "downlink: `CMD` (hub) → `CMD_LOCAL_<cluster>` (edge)",
    "executor picks the command up",
    "newest-generation and record checks, `pending` status",
    "chart fetch (edge cache)",
    "release history read, API discovery",
    "render (`helm template` process)",
    "parse, ownership checks, server-side apply",
    "readiness: pods scheduled and Running (cluster side)",
    "readiness noticed (0.5 s poll) + release record written",
    "`deployed` status stored at the edge",
    "uplink: outbox `STATUS_<cluster>` (edge) → `STATUS_HUB` (hub)",
    "router folds status into the request",
    "client sees the request complete",
];

#[derive(Debug, Clone, Default)]
pub struct StepsResult {
    /// Per run: each step's milliseconds (`None` where a timestamp was missing).
    pub runs: Vec<Vec<Option<f64>>>,
    pub totals: Vec<f64>,
    /// The first fetch of the chart, from the hub's object store (ms).
    pub cold_fetch_ms: Option<f64>,
}

pub async fn run(bench: &mut Bench, reps: usize) -> anyhow::Result<StepsResult> {
    let render_log = bench.work.join("helm-runs.log");
    let wrapper = write_helm_wrapper(&bench.work, &bench.helm, &render_log)?;
    bench.swap_executor_helm(STEPS_SITE, &wrapper).await?;
    let edge_url = bench.testbed.edge(STEPS_SITE)?.nats_url();
    let edge = optikon_runtime::connect_url(&edge_url, "optikon-bench-edge").await?;

    let mut result = StepsResult::default();
    // The first install fetches the chart from the hub; later ones find it in the edge cache.
    let warm = once(bench, &edge, &render_log, "t-warm").await?;
    result.cold_fetch_ms = warm.steps[5];
    for rep in 0..reps {
        let measured = once(bench, &edge, &render_log, &format!("t-{rep}")).await?;
        eprintln!(
            "  steps rep {}/{reps}: {:.0} ms end to end",
            rep + 1,
            measured.total
        );
        result.runs.push(measured.steps);
        result.totals.push(measured.total);
    }
    Ok(result)
}

/// A shell script that runs the real helm and appends `<subcommand> <start> <end>`
/// (epoch seconds, µs) to `log`. Bash's `$EPOCHREALTIME` needs no extra process.
fn write_helm_wrapper(dir: &Path, helm: &Path, log: &Path) -> anyhow::Result<PathBuf> {
    let path = dir.join("helm-timed");
    let script = format!(
        "#!/usr/bin/env bash\n\
         # Notes when each helm run starts and ends, for optikon-bench; then exits as helm did.\n\
         LC_ALL=C\n\
         start=$EPOCHREALTIME\n\
         '{helm}' \"$@\"\n\
         rc=$?\n\
         echo \"${{1:-none}} $start $EPOCHREALTIME\" >> '{log}'\n\
         exit $rc\n",
        helm = helm.display(),
        log = log.display(),
    );
    std::fs::write(&path, script)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

struct Measured {
    steps: Vec<Option<f64>>,
    total: f64,
}

async fn once(
    bench: &Bench,
    edge: &async_nats::Client,
    render_log: &Path,
    release: &str,
) -> anyhow::Result<Measured> {
    let selector = format!("{PART_LABEL}=steps");
    let request = bench.install_request(release, &selector, REPLICAS);
    let _ = std::fs::remove_file(render_log);

    // Watch the Deployment become available, from before the request is sent.
    let (opened, watching) = tokio::sync::oneshot::channel();
    let ready = tokio::spawn(deployment_ready(
        bench.kube(STEPS_SITE)?.clone(),
        release.to_owned(),
        REPLICAS as i32,
        opened,
    ));
    watching.await.context("deployment watch did not start")?;

    // Publish the request ourselves (as the client library does) to learn its sequence.
    let hub = jetstream::new(bench.client.nats().clone());
    let requests = hub.get_key_value(subject::REQUESTS_BUCKET).await?;
    let mut updates = requests.watch(subject::token(&request.id)).await?;
    let published_at = OffsetDateTime::now_utc();
    let ack = hub
        .publish_with_headers(
            subject::RELEASE_REQUEST,
            optikon_runtime::trace::headers(Some(&request.id)),
            serde_json::to_vec(&request)?.into(),
        )
        .await?
        .await?;
    let (completed_at, seen_at) = tokio::time::timeout(Duration::from_secs(300), async {
        while let Some(entry) = updates.try_next().await? {
            let Ok(status) = serde_json::from_slice::<RequestStatus>(&entry.value) else {
                continue;
            };
            if let Some(error) = status.error {
                bail!("request refused: {}", error.message);
            }
            if status.is_complete() {
                // The summary counts; the one cluster's entry says how it went.
                let (_, failed, _) = status.tally();
                anyhow::ensure!(failed == 0, "{release} failed on {STEPS_SITE}");
                return Ok((entry.created, OffsetDateTime::now_utc()));
            }
        }
        bail!("the request watch ended")
    })
    .await
    .context("request not complete after 300 s")??;
    let ready_at = tokio::time::timeout(Duration::from_secs(30), ready)
        .await
        .context("deployment never seen available")???;

    let command = subject::command(STEPS_SITE, NAMESPACE, release);
    let status = subject::release_status(STEPS_SITE, NAMESPACE, release);
    let request_stored = hub
        .get_stream(subject::RELEASE_REQUESTS_STREAM)
        .await?
        .get_raw_message(ack.sequence)
        .await?
        .time;
    let stored_last = |js: jetstream::Context, stream: String, subject: String| async move {
        let message = js
            .get_stream(&stream)
            .await?
            .get_last_raw_message_by_subject(&subject)
            .await
            .with_context(|| format!("{subject} in {stream}"))?;
        anyhow::Ok(message.time)
    };
    let local = jetstream::new(edge.clone());
    // At the hub one subject holds all of the site's commands; this release's is the last.
    let command_hub = stored_last(
        hub.clone(),
        subject::CMD_STREAM.into(),
        subject::cluster_commands(STEPS_SITE),
    )
    .await?;
    let command_edge = stored_last(
        local.clone(),
        subject::cmd_local_stream(STEPS_SITE),
        command,
    )
    .await?;
    let outbox = subject::outbox_status(STEPS_SITE, NAMESPACE, release);
    let status_edge = stored_last(local, subject::status_stream(STEPS_SITE), outbox).await?;
    let status_hub = stored_last(hub, subject::STATUS_HUB_STREAM.into(), status).await?;

    let events = logs::events_in(&bench.executor_logs(STEPS_SITE), release);
    let at = |message: &str| logs::first(&events, message).map(|e: &Event| e.at);
    let received = at("command received");
    let fetched = logs::first(&events, "chart fetched");
    let fetch_ms = fetched.and_then(|e| e.number("fetch_ms"));
    let fetch_start = fetched
        .zip(fetch_ms)
        .map(|(e, ms)| e.at - time::Duration::seconds_f64(ms / 1e3));
    let last_applied = logs::last(&events, "applied").map(|e| e.at);
    let recorded = at("revision recorded");
    let (render_start, render_end) = match template_run(render_log) {
        Some((s, e)) => (Some(s), Some(e)),
        None => (None, None),
    };

    let points = [
        Some(published_at),
        Some(request_stored),
        Some(command_hub),
        Some(command_edge),
        received,
        fetch_start,
        fetched.map(|e| e.at),
        render_start,
        render_end,
        last_applied,
        Some(ready_at),
        recorded,
        Some(status_edge),
        Some(status_hub),
        Some(completed_at),
        Some(seen_at),
    ];
    let steps = points
        .windows(2)
        .map(|w| match (w[0], w[1]) {
            (Some(a), Some(b)) => Some((b - a).as_seconds_f64() * 1e3),
            _ => None,
        })
        .collect();

    bench.optikon_uninstall(release, &selector).await?;
    bench.wait_gone(&[STEPS_SITE.to_owned()], release).await?;
    Ok(Measured {
        steps,
        total: (seen_at - published_at).as_seconds_f64() * 1e3,
    })
}

/// Start and end of the `helm template` run the wrapper noted.
fn template_run(log: &Path) -> Option<(OffsetDateTime, OffsetDateTime)> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().rev().find(|l| l.starts_with("template "))?;
    let mut fields = line.split_whitespace().skip(1).map(epoch);
    Some((fields.next()??, fields.next()??))
}

/// `1764110934.123456` → a time.
fn epoch(text: &str) -> Option<OffsetDateTime> {
    let (secs, frac) = text.split_once('.').unwrap_or((text, "0"));
    let micros: i128 = format!("{frac:0<6}")[..6].parse().ok()?;
    let nanos = secs.parse::<i128>().ok()? * 1_000_000_000 + micros * 1_000;
    OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
}

/// When the release's Deployment is first seen with all replicas updated and available
/// (what the executor waits for).
async fn deployment_ready(
    client: kube::Client,
    release: String,
    replicas: i32,
    opened: tokio::sync::oneshot::Sender<()>,
) -> anyhow::Result<OffsetDateTime> {
    let api: kube::Api<Deployment> = kube::Api::namespaced(client, NAMESPACE);
    let params = kube::api::WatchParams::default()
        .labels(&format!("app.kubernetes.io/instance={release}"))
        .timeout(290);
    let mut events = api.watch(&params, "0").await?.boxed();
    let _ = opened.send(());
    while let Some(event) = events.try_next().await? {
        let (kube::api::WatchEvent::Added(d) | kube::api::WatchEvent::Modified(d)) = event else {
            continue;
        };
        let generation = d.metadata.generation.unwrap_or(0);
        let Some(status) = d.status else { continue };
        if status.observed_generation.unwrap_or(0) >= generation
            && status.updated_replicas.unwrap_or(0) >= replicas
            && status.available_replicas.unwrap_or(0) >= replicas
        {
            return Ok(OffsetDateTime::now_utc());
        }
    }
    bail!("the deployment watch ended")
}

pub fn table(r: &StepsResult) -> Table {
    let mut t = Table::new(&["step", "median (min–max)", "share"]).right_aligned(&[1, 2]);
    let total = Summary::of(&r.totals);
    for (i, step) in STEPS.iter().enumerate() {
        let samples: Vec<f64> = r.runs.iter().filter_map(|s| s[i]).collect();
        let cell = Summary::of(&samples).map(|s| s.millis());
        let share = Summary::of(&samples)
            .zip(total)
            .map(|(s, t)| format!("{:.0} %", 100.0 * s.median / t.median));
        t.push(vec![
            (*step).to_owned(),
            cell.unwrap_or_else(|| "not observed".into()),
            share.unwrap_or_default(),
        ]);
    }
    if let Some(total) = total {
        t.push(vec![
            "**total** (client publish → client sees complete)".into(),
            total.millis(),
            "100 %".into(),
        ]);
    }
    t
}

/// The largest step, in one sentence.
pub fn bottleneck(r: &StepsResult) -> Option<String> {
    let total = Summary::of(&r.totals)?.median;
    let medians: Vec<(usize, f64)> = (0..STEPS.len())
        .filter_map(|i| {
            let samples: Vec<f64> = r.runs.iter().filter_map(|s| s[i]).collect();
            Some((i, Summary::of(&samples)?.median))
        })
        .collect();
    let (top, ms) = medians.iter().max_by(|a, b| a.1.total_cmp(&b.1))?;
    let nats: f64 = medians
        .iter()
        .filter(|(i, _)| [0, 1, 2, 3, 11, 12, 13, 14].contains(i))
        .map(|(_, ms)| ms)
        .sum();
    Some(format!(
        "One install on one cluster took {total:.0} ms; the largest step is \"{}\" ({ms:.0} ms, \
         {:.0} %), while everything NATS and the hub add (request, routing, both hops, status \
         fold, notification) is {nats:.0} ms ({:.0} %).",
        STEPS[*top],
        100.0 * ms / total,
        100.0 * nats / total
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_epoch_realtime() {
        let t = epoch("1764110934.123456").unwrap();
        assert_eq!(t.unix_timestamp(), 1764110934);
        assert_eq!(t.microsecond(), 123456);
        assert_eq!(epoch("1764110934.5").unwrap().millisecond(), 500);
        assert_eq!(epoch("x.1"), None);
    }
}
