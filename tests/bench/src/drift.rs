//! Part 5: what drift correction costs a site whose releases sit idle. Many releases are
//! installed on one real cluster, then the executor's CPU (and the API server's and etcd's)
//! is measured over a window in which nothing is asked of the site, for this build's
//! executor and, side by side in the same run, for an earlier executor binary given with
//! `--drift-baseline` (one built before a change to drift correction, say). Each executor
//! first gets a settling pause: its first pass reads everything once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use optikon_core::message::ReleaseState;

use crate::bed::{Bench, PART_LABEL, SCALE_SITE};
use crate::cpu::Usage;
use crate::scaling::probe;
use crate::stats::Summary;
use crate::table::Table;

/// Replicas of each release's Deployment.
const REPLICAS: u32 = 1;
/// Releases installed at once while setting up.
const AT_ONCE: usize = 20;
/// After an executor starts, before its window: its first pass has read every release.
const SETTLE: Duration = Duration::from_secs(25);

#[derive(Debug, Clone, Default)]
pub struct DriftResult {
    pub releases: usize,
    pub window_seconds: f64,
    pub drift_check_seconds: u64,
    /// Per executor (label, binary), the usage of each of its windows.
    pub runs: Vec<(String, PathBuf, Vec<Usage>)>,
}

pub async fn run(
    bench: &mut Bench,
    releases: usize,
    window: Duration,
    rounds: usize,
    baseline: Option<&Path>,
) -> anyhow::Result<DriftResult> {
    let selector = format!("{PART_LABEL}=scale");
    let names: Vec<String> = (0..releases).map(|i| format!("idle-{i}")).collect();
    for chunk in names.chunks(AT_ONCE) {
        let requests: Vec<_> = chunk
            .iter()
            .map(|name| bench.install_request(name, &selector, REPLICAS))
            .collect();
        for done in futures::future::join_all(
            requests
                .iter()
                .map(|r| bench.request(r, ReleaseState::Deployed)),
        )
        .await
        {
            done?;
        }
    }
    eprintln!("  drift: {releases} releases installed");

    let current = optikon_testbed::services::service_bin_dir()?.join("per-cluster-executor");
    let mut runs: Vec<(String, PathBuf, Vec<Usage>)> = vec![("this build".into(), current, vec![])];
    if let Some(baseline) = baseline {
        runs.insert(0, ("baseline".into(), baseline.to_owned(), vec![]));
    }
    for round in 0..rounds {
        // Alternate which executor goes first.
        let order: Vec<usize> = if round % 2 == 0 {
            (0..runs.len()).collect()
        } else {
            (0..runs.len()).rev().collect()
        };
        for i in order {
            let binary = runs[i].1.clone();
            bench.swap_executor_binary(SCALE_SITE, &binary).await?;
            tokio::time::sleep(SETTLE).await;
            let probe = probe(bench);
            let before = probe.snapshot();
            tokio::time::sleep(window).await;
            let usage = probe.usage(&before, &probe.snapshot());
            eprintln!(
                "  drift round {}/{rounds}: {}: executor {:.2} CPU s in {:.0} s",
                round + 1,
                runs[i].0,
                part(&usage, "executors (Rust)"),
                usage.wall
            );
            runs[i].2.push(usage);
        }
    }
    let current = runs.last().map(|r| r.1.clone()).unwrap_or_default();
    bench.swap_executor_binary(SCALE_SITE, &current).await?;
    futures::future::join_all(names.iter().map(|n| bench.optikon_uninstall(n, &selector)))
        .await
        .into_iter()
        .collect::<anyhow::Result<Vec<()>>>()?;
    Ok(DriftResult {
        releases,
        window_seconds: window.as_secs_f64(),
        drift_check_seconds: 15,
        runs,
    })
}

fn part(usage: &Usage, name: &str) -> f64 {
    usage
        .parts
        .iter()
        .find(|(n, _)| n == name)
        .map_or(0.0, |(_, s)| *s)
}

/// CPU seconds per minute of idle, medians over the windows, per executor.
pub fn table(r: &DriftResult) -> Table {
    let mut table = Table::new(&[
        "executor",
        "windows",
        "executor CPU s/min",
        "kube-apiserver CPU s/min",
        "etcd CPU s/min",
    ])
    .right_aligned(&[1, 2, 3, 4]);
    for (label, binary, usages) in &r.runs {
        let per_minute = |name: &str| {
            let values: Vec<f64> = usages
                .iter()
                .map(|u| 60.0 * part(u, name) / u.wall.max(1e-9))
                .collect();
            Summary::of(&values).map_or("n/a".to_owned(), |s| {
                format!("{:.2} ({:.2}–{:.2})", s.median, s.min, s.max)
            })
        };
        let name = binary
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        table.push(vec![
            format!("{label} (`{name}`)"),
            usages.len().to_string(),
            per_minute("executors (Rust)"),
            per_minute("kube-apiserver"),
            per_minute("etcd"),
        ]);
    }
    table
}
