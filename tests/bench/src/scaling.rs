//! Part 2: commands applied per second by 1, 2 and 4 executor replicas of one site, with the
//! CPU each part of the site used meanwhile.

use std::collections::BTreeMap;
use std::time::Instant;

use optikon_core::message::ReleaseState;

use crate::bed::{Bench, PART_LABEL, SCALE_SITE};
use crate::cpu::{Probe, Usage, processes};
use crate::logs;
use crate::stats::Summary;
use crate::table::Table;

/// The probe's name for the cluster's controllers.
const CONTROLLERS: &str = "controller-manager + scheduler";

/// Replicas of each release's Deployment: small releases.
const REPLICAS: u32 = 1;

#[derive(Debug, Clone, Default)]
pub struct ScalingResult {
    pub releases: usize,
    /// Per executor count: wall seconds and CPU use of each round.
    pub rounds: BTreeMap<usize, Vec<Usage>>,
    /// Commands each replica works on at once (the executor's default).
    pub concurrency: usize,
    /// Per executor count and round: how many of the round's commands each replica took,
    /// most first (from each replica's `command received` events).
    pub spread: BTreeMap<usize, Vec<Vec<usize>>>,
    /// Per executor count, per command: seconds of executor work before the readiness wait
    /// (`command received` → last `applied`) and of the wait itself (→ `revision recorded`).
    pub phases: BTreeMap<usize, Vec<(f64, f64)>>,
}

pub async fn run(
    bench: &mut Bench,
    counts: &[usize],
    releases: usize,
    reps: usize,
) -> anyhow::Result<ScalingResult> {
    let mut result = ScalingResult {
        releases,
        concurrency: 4,
        ..ScalingResult::default()
    };
    let selector = format!("{PART_LABEL}=scale");
    // Untimed warm-up: the chart reaches the edge cache.
    let warm = bench.install_request("s-warm", &selector, REPLICAS);
    bench.request(&warm, ReleaseState::Deployed).await?;
    bench.optikon_uninstall("s-warm", &selector).await?;
    bench.wait_gone(&[SCALE_SITE.to_owned()], "s-warm").await?;

    for rep in 0..reps {
        // Alternate the direction, so no count always follows a freshly started replica.
        let order: Vec<usize> = if rep % 2 == 0 {
            counts.to_vec()
        } else {
            counts.iter().rev().copied().collect()
        };
        for count in order {
            bench.set_executor_replicas(SCALE_SITE, count).await?;
            let names: Vec<String> = (0..releases)
                .map(|i| format!("s{count}-{rep}-{i}"))
                .collect();
            let probe = probe(bench);
            let before = probe.snapshot();
            let started = Instant::now();
            let requests: Vec<_> = names
                .iter()
                .map(|name| bench.install_request(name, &selector, REPLICAS))
                .collect();
            let done = futures::future::join_all(
                requests
                    .iter()
                    .map(|r| bench.request(r, ReleaseState::Deployed)),
            )
            .await;
            let wall = started.elapsed().as_secs_f64();
            let usage = probe.usage(&before, &probe.snapshot());
            for outcome in done {
                outcome?;
            }
            eprintln!(
                "  scaling rep {}/{reps}: {count} executor(s): {releases} releases in {wall:.2} s \
                 ({:.2}/s, machine {:.0}% busy)",
                rep + 1,
                releases as f64 / wall,
                usage.machine_percent()
            );
            let site = [SCALE_SITE.to_owned()];
            for name in &names {
                bench.check_running(&site, name, REPLICAS as usize).await?;
            }
            result
                .spread
                .entry(count)
                .or_default()
                .push(spread(bench, &names));
            result
                .phases
                .entry(count)
                .or_default()
                .extend(phases(bench, &names));
            futures::future::join_all(names.iter().map(|n| bench.optikon_uninstall(n, &selector)))
                .await
                .into_iter()
                .collect::<anyhow::Result<Vec<()>>>()?;
            for name in &names {
                bench.wait_gone(&site, name).await?;
            }
            result
                .rounds
                .entry(count)
                .or_default()
                .push(Usage { wall, ..usage });
        }
    }
    bench.set_executor_replicas(SCALE_SITE, 1).await?;
    Ok(result)
}

/// How many of `names`' install commands each running replica received, most first.
fn spread(bench: &Bench, names: &[String]) -> Vec<usize> {
    let names: std::collections::BTreeSet<&str> = names.iter().map(String::as_str).collect();
    let mut counts: Vec<usize> = bench
        .executor_logs(SCALE_SITE)
        .iter()
        .map(|log| {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            let mut seen: Vec<String> = logs::releases_with(&text, "command received", "install")
                .into_iter()
                .filter(|r| names.contains(r.as_str()))
                .collect();
            seen.sort();
            seen.dedup();
            seen.len()
        })
        .collect();
    counts.sort_unstable_by(|a, b| b.cmp(a));
    counts
}

/// Per install command of `names`: (executor work before readiness, readiness wait), seconds.
fn phases(bench: &Bench, names: &[String]) -> Vec<(f64, f64)> {
    let names: std::collections::BTreeSet<&str> = names.iter().map(String::as_str).collect();
    logs::events_of(&bench.executor_logs(SCALE_SITE), &names)
        .values()
        .filter_map(|events| {
            let received = logs::first(events, "command received")?.at;
            let recorded = logs::first(events, "revision recorded")?.at;
            let applied = events
                .iter()
                .filter(|e| e.message == "applied" && e.at <= recorded)
                .map(|e| e.at)
                .next_back()?;
            Some((
                (applied - received).as_seconds_f64(),
                (recorded - applied).as_seconds_f64(),
            ))
        })
        .collect()
}

/// Median wall seconds of the smallest executor count's rounds.
fn first_wall(r: &ScalingResult) -> Option<f64> {
    let rounds = r.rounds.values().next()?;
    Some(Summary::of(&rounds.iter().map(|u| u.wall).collect::<Vec<_>>())?.median)
}

/// Medians of (executor work, readiness wait) per command for one executor count.
fn phase_medians(r: &ScalingResult, count: usize) -> Option<(f64, f64)> {
    let phases = r.phases.get(&count)?;
    let work = Summary::of(&phases.iter().map(|p| p.0).collect::<Vec<_>>())?;
    let wait = Summary::of(&phases.iter().map(|p| p.1).collect::<Vec<_>>())?;
    Some((work.median, wait.median))
}

/// The processes of the scaling site, grouped by part.
pub(crate) fn probe(bench: &Bench) -> Probe {
    let all = processes();
    let marker = format!("/{SCALE_SITE}-cluster/");
    let component = |names: &[&str]| -> Vec<u32> {
        all.iter()
            .filter(|(_, args)| args.iter().any(|a| a.contains(&marker)))
            .filter(|(_, args)| {
                names.iter().any(|n| {
                    args.get(1).is_some_and(|a| a == n) || args[0].ends_with(&format!("/{n}"))
                })
            })
            .map(|(pid, _)| *pid)
            .collect()
    };
    let hub_conf = "/hub.conf".to_owned();
    let leaf_conf = format!("/{SCALE_SITE}.conf");
    let nats: Vec<u32> = all
        .iter()
        .filter(|(_, args)| args[0].ends_with("nats-server"))
        .filter(|(_, args)| {
            args.iter().any(|a| {
                a.starts_with(&bench.testbed.dir().display().to_string())
                    && (a.ends_with(&hub_conf) || a.ends_with(&leaf_conf))
            })
        })
        .map(|(pid, _)| *pid)
        .collect();
    let executors = bench.executor_pids(SCALE_SITE);
    let mut probe = Probe::default();
    probe.add("kube-apiserver", component(&["kube-apiserver"]), false);
    probe.add("etcd", component(&["etcd"]), false);
    probe.add(
        CONTROLLERS,
        component(&["kube-controller-manager", "kube-scheduler"]),
        false,
    );
    probe.add("kwok", component(&["kwok"]), false);
    probe.add("executors (Rust)", executors.clone(), false);
    probe.add("helm template (executors' children)", executors, true);
    probe.add(
        "selector-router",
        bench.service_pid("selector-router").into_iter().collect(),
        false,
    );
    probe.add("nats-server (hub + leaf)", nats, false);
    probe
}

pub fn throughput_table(r: &ScalingResult) -> Table {
    let mut t = Table::new(&[
        "executors",
        "commands at once (nominal)",
        "wall, median (min–max)",
        "commands/s",
        "speed-up",
        "CPU busy",
        "per command: work / readiness wait",
        "commands per replica",
    ])
    .right_aligned(&[0, 1, 2, 3, 4, 5]);
    let base = r
        .rounds
        .values()
        .next()
        .and_then(|u| Summary::of(&u.iter().map(|u| u.wall).collect::<Vec<_>>()));
    for (count, rounds) in &r.rounds {
        let Some(wall) = Summary::of(&rounds.iter().map(|u| u.wall).collect::<Vec<_>>()) else {
            continue;
        };
        let busy = Summary::of(
            &rounds
                .iter()
                .map(Usage::machine_percent)
                .collect::<Vec<_>>(),
        );
        t.push(vec![
            count.to_string(),
            (count * r.concurrency).to_string(),
            wall.seconds(),
            format!("{:.2}", r.releases as f64 / wall.median),
            base.map(|b| format!("{:.2}×", b.median / wall.median))
                .unwrap_or_default(),
            busy.map(|b| format!("{:.0} %", b.median))
                .unwrap_or_default(),
            phase_medians(r, *count)
                .map(|(work, wait)| format!("{work:.2} s / {wait:.2} s"))
                .unwrap_or_default(),
            r.spread
                .get(count)
                .map(|rounds| {
                    rounds
                        .iter()
                        .map(|c| c.iter().map(usize::to_string).collect::<Vec<_>>().join("+"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default(),
        ]);
    }
    t
}

/// CPU per part, in cores (CPU seconds ÷ wall seconds), median over the rounds.
pub fn cpu_table(r: &ScalingResult) -> Table {
    let parts: Vec<String> = r
        .rounds
        .values()
        .next()
        .and_then(|u| u.first())
        .map(|u| u.parts.iter().map(|(n, _)| n.clone()).collect())
        .unwrap_or_default();
    let mut header = vec!["part".to_owned()];
    header.extend(r.rounds.keys().map(|c| format!("{c} executor(s)")));
    let mut t = Table {
        header,
        rows: Vec::new(),
        right: (1..=r.rounds.len()).collect(),
    };
    let cores = |rounds: &[Usage], part: Option<&str>| -> String {
        let per_round: Vec<f64> = rounds
            .iter()
            .map(|u| {
                let seconds = match part {
                    Some(p) => u
                        .parts
                        .iter()
                        .find(|(n, _)| n == p)
                        .map_or(0.0, |(_, s)| *s),
                    None => u.other(),
                };
                seconds / u.wall
            })
            .collect();
        Summary::of(&per_round)
            .map(|s| format!("{:.2}", s.median))
            .unwrap_or_default()
    };
    for part in &parts {
        let mut row = vec![part.clone()];
        row.extend(r.rounds.values().map(|rounds| cores(rounds, Some(part))));
        t.push(row);
    }
    let mut other = vec!["everything else on the machine".to_owned()];
    other.extend(r.rounds.values().map(|rounds| cores(rounds, None)));
    t.push(other);
    t
}

/// One sentence per executor count on what limits it.
pub fn bottlenecks(r: &ScalingResult) -> Vec<String> {
    let first = r.rounds.keys().next().copied();
    let base = first.and_then(|c| Some((c, phase_medians(r, c)?)));
    r.rounds
        .iter()
        .filter_map(|(count, rounds)| {
            let percents: Vec<f64> = rounds.iter().map(Usage::machine_percent).collect();
            let busy = Summary::of(&percents)?.median;
            let walls: Vec<f64> = rounds.iter().map(|u| u.wall).collect();
            let throughput = r.releases as f64 / Summary::of(&walls)?.median;
            // CPU per part over all rounds of this count.
            let mut totals: BTreeMap<&str, f64> = BTreeMap::new();
            let mut wall = 0.0;
            for u in rounds {
                wall += u.wall;
                for (name, seconds) in &u.parts {
                    *totals.entry(name.as_str()).or_default() += seconds;
                }
            }
            let (top, top_seconds) = totals
                .iter()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(n, s)| (*n, *s))?;
            let controllers = totals.get(CONTROLLERS).copied().unwrap_or(0.0) / wall;
            let in_flight = count * r.concurrency;
            let (work, wait) = phase_medians(r, *count)?;
            let facts = format!(
                "{count} executor(s), {in_flight} commands in flight: {throughput:.1} \
                 commands/s; per command {work:.2} s of executor work (render, apply) and \
                 {wait:.2} s of readiness wait; cores {busy:.0} % busy, {top} the busiest part \
                 of the site ({:.2} cores)",
                top_seconds / wall
            );
            let verdict = match base {
                Some((c1, (work1, wait1)))
                    if *count > c1
                        && wait > 1.5 * wait1
                        && wait - wait1 > 2.0 * (work - work1)
                        && throughput < 1.5 * r.releases as f64 / first_wall(r)? =>
                {
                    format!(
                        "the cluster is the limit: with {} instead of {} commands in flight \
                         the rate hardly moved, and the extra time per command went to the \
                         readiness wait ({wait1:.2} → {wait:.2} s; executor work {work1:.2} → \
                         {work:.2} s) — the control plane makes only about {throughput:.0} \
                         Deployments ready per second, whatever the executors do; its \
                         controllers used just {controllers:.2} cores, which fits \
                         kube-controller-manager's defaults (20 API requests/s per controller, \
                         5 Deployments synced at once; not verified here)",
                        in_flight,
                        c1 * r.concurrency
                    )
                }
                _ if busy >= 85.0 => {
                    "the machine's CPU is the limit: more executors only compete for the same \
                     cores"
                        .to_owned()
                }
                _ => format!(
                    "latency per command, mostly the readiness wait, times the {in_flight} \
                     commands in flight sets the rate"
                ),
            };
            Some(format!("{facts}; {verdict}."))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(wall: f64, busy: f64, controllers: f64) -> Usage {
        Usage {
            wall,
            parts: vec![
                ("kube-apiserver".into(), 0.3 * wall),
                (CONTROLLERS.into(), controllers * wall),
            ],
            machine_busy: busy * 2.0 * wall / 100.0,
            machine_total: 2.0 * wall,
        }
    }

    #[test]
    fn a_growing_readiness_wait_blames_the_cluster() {
        let mut r = ScalingResult {
            releases: 40,
            concurrency: 4,
            ..ScalingResult::default()
        };
        r.rounds.insert(1, vec![usage(10.0, 60.0, 0.07)]);
        r.rounds.insert(4, vec![usage(10.0, 70.0, 0.08)]);
        r.rounds.insert(2, vec![usage(5.0, 95.0, 0.08)]);
        r.phases.insert(1, vec![(0.3, 0.6); 3]);
        r.phases.insert(4, vec![(0.3, 3.0); 3]);
        r.phases.insert(2, vec![(0.3, 0.7); 3]);
        let sentences = bottlenecks(&r);
        assert_eq!(sentences.len(), 3);
        assert!(
            sentences[0].contains("times the 4 commands in flight"),
            "{}",
            sentences[0]
        );
        assert!(
            sentences[1].contains("CPU is the limit"),
            "{}",
            sentences[1]
        );
        assert!(
            sentences[2].contains("the cluster is the limit"),
            "{}",
            sentences[2]
        );
        assert!(sentences[2].contains("(0.60 → 3.00 s"), "{}", sentences[2]);
        let table = throughput_table(&r).render();
        assert!(table.contains("0.30 s / 3.00 s"), "{table}");
        assert!(table.contains("2.00×"), "{table}");
    }
}
