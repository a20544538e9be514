//! Part 7: a 10-wave rollout across 1,000 simulated sites, and what the gate costs.
//!
//! The control-plane test bed of part 4 (a hub, leaf nodes, `optikon-sim-edges`), with the
//! clusters' `ring` label spread 0–9, so `--wave ring=0 … --wave ring=8` (and the rest,
//! ring 9) makes 10 waves of a tenth each. Three kinds of upgrade run in turns, side by
//! side in one run:
//! - **all at once**: every cluster, no strategy;
//! - **one wave's work**: the clusters of one ring, no strategy: what a wave costs without a
//!   gate;
//! - **10 waves**: every cluster, with the waves and no soak.
//!
//! The gate's overhead per wave is a tenth of the rollout's time minus one wave's work.
//! Each wave's own time (from the rollout record moving to it until it moves on) is read by
//! polling the record.

use std::time::{Duration, Instant};

use anyhow::Context;
use optikon_client::Client;
use optikon_core::message::{Action, ReleaseState};
use optikon_core::rollout::{RolloutState, RolloutStrategy};

use crate::bed::{package_chart, push_chart};
use crate::control::{
    chart_request, fan_out, sim_binary, start_agents, start_bed, wait_heartbeating,
};
use crate::sim::FLEET_LABEL;
use crate::stats::Summary;
use crate::table::Table;

/// Waves: `ring=0` … `ring=8`, and the rest (ring 9).
pub const WAVES: usize = 10;

#[derive(Debug, Clone, Default)]
pub struct RolloutResult {
    pub clusters: usize,
    pub leaves: usize,
    /// Seconds per run of each kind.
    pub all_at_once: Vec<f64>,
    pub one_wave: Vec<f64>,
    pub rollout: Vec<f64>,
    /// Seconds each wave took, over every rollout run.
    pub wave_seconds: Vec<f64>,
}

pub fn run(
    runtime: &tokio::runtime::Runtime,
    clusters: usize,
    leaves: usize,
    heartbeat_seconds: u64,
    reps: usize,
) -> anyhow::Result<RolloutResult> {
    let agents = sim_binary()?;
    let testbed = start_bed(leaves)?;
    let result = runtime.block_on(async {
        let nats = optikon_runtime::connect_url(&testbed.hub_url(), "optikon-bench").await?;
        let client = Client::new(nats);
        let work = testbed.dir().join("bench");
        std::fs::create_dir_all(&work)?;
        let chart = package_chart(&testbed.tools().get("helm")?, &work).await?;
        push_chart(&client, &std::fs::read(&chart)?).await?;
        let mut agents = start_agents(&testbed, &agents, clusters, heartbeat_seconds).await?;
        wait_heartbeating(&client, clusters).await?;
        eprintln!("  {clusters} clusters registered and heartbeating");
        let result = measure(&client, clusters, leaves, reps).await;
        for (_, child, _) in &mut agents {
            let _ = child.kill().await;
        }
        result
    });
    drop(testbed);
    result
}

async fn measure(
    client: &Client,
    clusters: usize,
    leaves: usize,
    reps: usize,
) -> anyhow::Result<RolloutResult> {
    let everyone = format!("{}={}", FLEET_LABEL.0, FLEET_LABEL.1);
    let release = "rollout";
    // The install first, untimed: every cluster has the release to upgrade.
    fan_out(
        client,
        &chart_request(Action::Install, release, &everyone, 0),
        clusters,
    )
    .await?;
    let mut result = RolloutResult {
        clusters,
        leaves,
        ..RolloutResult::default()
    };
    let wave_size = clusters / WAVES;
    for rep in 1..=reps {
        // Turns alternate in order per round, so drift in the machine's load is shared.
        let order: [u8; 3] = if rep % 2 == 1 { [0, 1, 2] } else { [2, 1, 0] };
        for kind in order {
            let round = rep * 3 + usize::from(kind);
            match kind {
                0 => {
                    let request = chart_request(Action::Upgrade, release, &everyone, round);
                    let (all, _) = fan_out(client, &request, clusters).await?;
                    eprintln!("  all at once {rep}/{reps}: {all:.2} s");
                    result.all_at_once.push(all);
                }
                1 => {
                    let selector = format!("{everyone},ring=0");
                    let request = chart_request(Action::Upgrade, release, &selector, round);
                    let (all, _) = fan_out(client, &request, wave_size).await?;
                    eprintln!("  one wave's work {rep}/{reps}: {all:.2} s");
                    result.one_wave.push(all);
                }
                _ => {
                    let (all, waves) = waves(client, release, &everyone, round).await?;
                    eprintln!("  10 waves {rep}/{reps}: {all:.2} s");
                    result.rollout.push(all);
                    result.wave_seconds.extend(waves);
                }
            }
        }
    }
    Ok(result)
}

/// One 10-wave rollout of an upgrade to every cluster: (seconds until it succeeded,
/// seconds each wave took).
async fn waves(
    client: &Client,
    release: &str,
    selector: &str,
    round: usize,
) -> anyhow::Result<(f64, Vec<f64>)> {
    let mut request = chart_request(Action::Upgrade, release, selector, round);
    request.strategy = Some(RolloutStrategy {
        waves: (0..WAVES - 1).map(|r| format!("ring={r}")).collect(),
        ..RolloutStrategy::default()
    });
    let started = Instant::now();
    drop(client.submit(&request).await?);
    let deadline = started + Duration::from_secs(600);
    let mut wave = 0;
    let mut wave_started = 0.0;
    let mut durations = Vec::new();
    loop {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the rollout did not finish in 10 minutes"
        );
        if let Some(rollout) = client.rollout(&request.id).await? {
            let now = started.elapsed().as_secs_f64();
            let finished = rollout.state.is_final();
            let current = if finished {
                rollout.waves.len()
            } else {
                rollout.wave
            };
            while wave < current {
                durations.push(now - wave_started);
                wave_started = now;
                wave += 1;
            }
            if finished {
                anyhow::ensure!(
                    rollout.state == RolloutState::Succeeded,
                    "the rollout ended {}: {:?}",
                    rollout.state,
                    rollout.reason
                );
                anyhow::ensure!(
                    rollout.waves.len() == WAVES,
                    "{} waves, not {WAVES}",
                    rollout.waves.len()
                );
                let status = client
                    .request_status(&request.id)
                    .await?
                    .context("the rollout's request")?;
                let deployed = status
                    .clusters
                    .values()
                    .filter(|p| p.state == ReleaseState::Deployed)
                    .count();
                anyhow::ensure!(
                    deployed == status.clusters.len(),
                    "deployed on {deployed} of {}",
                    status.clusters.len()
                );
                return Ok((now, durations));
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn table(r: &RolloutResult) -> Table {
    let median = |v: &[f64]| Summary::of(v).map_or(f64::NAN, |s| s.median);
    let range = |v: &[f64]| {
        Summary::of(v).map_or("-".into(), |s| {
            format!("{:.2} s ({:.2}–{:.2})", s.median, s.min, s.max)
        })
    };
    let per_wave = median(&r.rollout) / WAVES as f64;
    let overhead = per_wave - median(&r.one_wave);
    let mut t =
        Table::new(&["upgrade", "runs", "time (median, range)", "per wave"]).right_aligned(&[1]);
    t.push(vec![
        format!("all {} clusters at once", r.clusters),
        r.all_at_once.len().to_string(),
        range(&r.all_at_once),
        "-".into(),
    ]);
    t.push(vec![
        format!("one wave's work: {} clusters at once", r.clusters / WAVES),
        r.one_wave.len().to_string(),
        range(&r.one_wave),
        "-".into(),
    ]);
    t.push(vec![
        format!("{WAVES} waves of {}, no soak", r.clusters / WAVES),
        r.rollout.len().to_string(),
        range(&r.rollout),
        format!(
            "{per_wave:.2} s; each wave {} ; gate overhead {overhead:.2} s",
            range(&r.wave_seconds)
        ),
    ]);
    t
}
