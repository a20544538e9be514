//! BENCHMARKS.md: the machine, the command, the tables, one sentence per bottleneck.

use std::fmt::Write as _;

use crate::Plan;
use crate::control::{self, ScaleResult};
use crate::fleet::{self, FleetResult};
use crate::machine::Machine;
use crate::scaling::{self, ScalingResult};
use crate::stats::Summary;
use crate::steps::{self, StepsResult};
use crate::table::Table;

#[derive(Debug, Clone)]
pub struct Results {
    pub machine: Machine,
    pub command: String,
    pub build: String,
    pub quick: bool,
    pub plan: Plan,
    pub sites: usize,
    pub startup_seconds: f64,
    pub available_after_start_gib: f64,
    /// Cores the test bed used while idle.
    pub idle_cores: f64,
    pub total_seconds: f64,
    pub fleet: Vec<FleetResult>,
    pub scaling: Option<ScalingResult>,
    pub steps: Option<StepsResult>,
    pub control: Vec<ScaleResult>,
    pub drift: Option<crate::drift::DriftResult>,
    pub dns: Option<crate::dns::DnsResult>,
    pub rollout: Option<crate::rollout::RolloutResult>,
}

impl Default for Results {
    fn default() -> Self {
        Results {
            machine: Machine::read(),
            command: String::new(),
            build: String::new(),
            quick: false,
            plan: Plan {
                sizes: Vec::new(),
                reps: 0,
                scaling_reps: 0,
                releases: 0,
                executor_counts: Vec::new(),
                parts: Vec::new(),
                control: control::ControlPlan {
                    sizes: Vec::new(),
                    leaves: 0,
                    reps: 0,
                    single_requests: 0,
                    heartbeat_seconds: 0,
                    idle_seconds: 0,
                },
                drift_releases: 0,
                drift_baseline: None,
                dns_sites: 0,
            },
            sites: 0,
            startup_seconds: 0.0,
            available_after_start_gib: 0.0,
            idle_cores: 0.0,
            total_seconds: 0.0,
            fleet: Vec::new(),
            scaling: None,
            steps: None,
            control: Vec::new(),
            drift: None,
            dns: None,
            rollout: None,
        }
    }
}

pub fn markdown(r: &Results) -> String {
    let mut out = String::new();
    let m = &r.machine;
    let _ = writeln!(out, "# Benchmarks\n");
    let _ = writeln!(
        out,
        "Written by `scripts/bench` (the `optikon-bench` program in `tests/bench`); every figure \
         below comes from the one run described here — run it again to refresh them. A \
         benchmark, not a test: nothing in `cargo test` depends on time.\n"
    );
    if r.quick {
        let _ = writeln!(
            out,
            "> **Smoke run (`--quick`)**: few repetitions; do not quote these figures.\n"
        );
    }
    let used = (m.mem_available_gib - r.available_after_start_gib).max(0.0);
    let _ = writeln!(out, "| run | |\n| --- | --- |");
    let _ = writeln!(out, "| command | `{}` |", r.command);
    let _ = writeln!(out, "| date (UTC) | {} |", m.date);
    let _ = writeln!(
        out,
        "| machine | `nproc` {}, {:.1} GiB memory ({:.1} GiB available at start), {} |",
        m.nproc, m.mem_total_gib, m.mem_available_gib, m.cpu_model
    );
    let _ = writeln!(out, "| load average at start | {} |", m.load_average);
    let _ = writeln!(out, "| services built | {} |", r.build);
    if r.sites > 0 {
        let _ = writeln!(
            out,
            "| test bed | {} edge sites, each a real Kubernetes control plane (etcd, kube-apiserver, \
         controller-manager, scheduler, kwok) with a leaf nats-server, executor and prober; \
         started in {:.0} s; memory available fell by {:.1} GiB ({:.2} GiB per site); idle, \
         it used {:.2} cores ({:.3} per site) |",
            r.sites,
            r.startup_seconds,
            used,
            used / r.sites.max(1) as f64,
            r.idle_cores,
            r.idle_cores / r.sites.max(1) as f64
        );
    }
    let _ = writeln!(out, "| whole run | {:.0} s |\n", r.total_seconds);
    let _ = writeln!(
        out,
        "**Noise.** The machine is shared: other builds and test beds run beside the benchmark, \
         so absolute times move from run to run (±20 % and more). Quote the ratios, which \
         compare methods measured minutes apart in the same run, and read the \"CPU busy\" \
         column (all cores, every process on the machine) to see how crowded a run was. \
         Figures are medians over the repetitions, (min–max) beside them.\n"
    );

    if !r.fleet.is_empty() {
        let _ = writeln!(
            out,
            "## 1. One chart on N real clusters: Optikon vs helm loops\n"
        );
        let _ = writeln!(
            out,
            "The chart `helm create` makes (a Deployment, Service and ServiceAccount), packaged \
             once; the same `.tgz` bytes and the same values (`replicaCount=2`) for every \
             method, release namespace `default`. Per run a fresh release name; after each run \
             the release is removed (untimed) and the benchmark waits until its pods are gone \
             and one more second, so every run starts on idle clusters. One untimed warm-up \
             round per size (edge chart caches, helm's discovery cache). Methods, in rotating \
             order, {} repetitions each:\n",
            r.plan.reps
        );
        let _ = writeln!(
            out,
            "- **Optikon**: `optikon install <release> benchapp --version 0.1.0 -l <selector> \
             --set replicaCount=2` (the chart was pushed before), timed from start until the \
             command exits, which it does when every cluster reported `deployed` — the \
             executor waits until the Deployment's pods are available.\n\
             - **helm loop, sequential**: `helm upgrade --install <release> benchapp-0.1.0.tgz \
             -n default --set replicaCount=2 --wait --kubeconfig <cluster>` once per cluster, \
             one after another — what a shell `for` loop does.\n\
             - **helm loop, all at once**: the same commands started together, timed until the \
             last one exits.\n"
        );
        let largest = r.fleet.iter().map(|f| f.size).max().unwrap_or(0);
        let _ = writeln!(
            out,
            "Why N = {largest} at most: memory would hold several times more sites (about \
             {:.1} GiB of the {:.1} GiB available were left after start), but the {} shared \
             cores are the scarcer resource — each idle site costs CPU (see the test bed row \
             above) and the helm loops start N helm processes — so larger N would measure the \
             crowding more than the methods.\n",
            r.available_after_start_gib, r.machine.mem_available_gib, r.machine.nproc
        );
        let _ = writeln!(out, "{}", fleet::table(&r.fleet).render());
        let _ = writeln!(
            out,
            "\"÷ Optikon\" is the method's median over Optikon's median in the same run; \"per \
             cluster\" is the median divided by N. Readiness: `helm --wait` and the executor \
             wait for the same thing (the Deployment's replicas updated and available), but \
             helm 3 polls every 2 s and the executor every 0.5 s, which is part of the \
             difference per cluster.\n"
        );
        let _ = writeln!(out, "**Bottleneck at each scale.**\n");
        let smallest = r.fleet.iter().min_by_key(|f| f.size);
        for result in &r.fleet {
            if let Some(sentence) = fleet::bottleneck(result, smallest) {
                let _ = writeln!(out, "- {sentence}");
            }
        }
        let _ = writeln!(out);
    }

    if let Some(s) = &r.scaling {
        let _ = writeln!(out, "## 2. Executor replicas against one cluster\n");
        let _ = writeln!(
            out,
            "{} small releases (the same chart, `replicaCount=1`), one install request each, \
             all sent at once through the client library to one site; timed until every \
             request reported `deployed`, then removed (untimed). The site runs 1, 2 or 4 \
             executor replicas sharing its durable consumer, each working on {} commands at \
             once (its default). {} round(s) per count, the order alternating.\n",
            s.releases, s.concurrency, r.plan.scaling_reps
        );
        let _ = writeln!(out, "{}", scaling::throughput_table(s).render());
        let _ = writeln!(
            out,
            "CPU used meanwhile, in cores (CPU seconds ÷ wall seconds; the machine has {}). \
             `helm template` runs are the executors' child processes; \"everything else\" is \
             the other idle sites of this test bed, other people's work on the machine and \
             the benchmark itself:\n",
            r.machine.nproc
        );
        let _ = writeln!(out, "{}", scaling::cpu_table(s).render());
        let _ = writeln!(out, "**What limits it.**\n");
        for sentence in scaling::bottlenecks(s) {
            let _ = writeln!(out, "- {sentence}");
        }
        let _ = writeln!(out);
    }

    if let Some(s) = &r.steps {
        let _ = writeln!(out, "## 3. Where one install's time goes\n");
        let _ = writeln!(
            out,
            "One release (`replicaCount=2`) on one cluster, {} repetitions after a warm-up, \
             nothing else running on that site. The steps run between consecutive timestamps, \
             so they add up to the total: the client's clock at publish and when it sees the \
             request complete; JetStream's store times of the request (`RELEASE_REQUESTS`), \
             the command (`CMD` at the hub, `CMD_LOCAL_<cluster>` at the edge), the `deployed` status \
             (the outbox `STATUS_<cluster>` at the edge, `STATUS_HUB` at the hub) and the request record \
             (`requests` bucket); the executor's log events (`command received`, `chart \
             fetched` with `fetch_ms`, the per-object `applied` debug events, `revision \
             recorded`); a wrapper around helm noting when `helm template` starts and ends; \
             and a watch on the Deployment for when the cluster made it available.\n",
            s.runs.len()
        );
        let _ = writeln!(out, "{}", steps::table(s).render());
        if let Some(cold) = s.cold_fetch_ms {
            let _ = writeln!(
                out,
                "The first install on the site fetched the chart from the hub's object store \
                 instead of the edge cache: {cold:.0} ms.\n"
            );
        }
        if let Some(sentence) = steps::bottleneck(s) {
            let _ = writeln!(out, "**Bottleneck.** {sentence}\n");
        }
    }

    if !r.control.is_empty() {
        control_section(&mut out, r);
    }
    if let Some(d) = &r.drift {
        let _ = writeln!(
            out,
            "## 5. Drift correction with idle releases
"
        );
        let _ = writeln!(
            out,
            "{} small releases installed through Optikon on one site (`helm create`'s \
             chart: a ServiceAccount, a Service and a Deployment each), then nothing asked of the site. Per executor: it \
             is started in place of the site's executor, given {} s for its first drift pass, \
             then measured over {:.0} s with drift correction every {} s (the default). \
             Medians (and range) over the windows; the executors take turns, the order \
             alternating per round:\n",
            d.releases, 25, d.window_seconds, d.drift_check_seconds
        );
        let _ = writeln!(out, "{}", crate::drift::table(d).render());
    }
    if let Some(d) = &r.dns {
        let _ = writeln!(
            out,
            "## 6. Proximity DNS at the hub with {} sites: Optikon vs NSD\n",
            thousands(d.sites)
        );
        let _ = writeln!(
            out,
            "The hub's buckets hold {} sites as the router and the sites write them (a registry \
             record with a `lat`/`long` position spread over Europe, a fresh heartbeat, ten \
             Services each out of {} names), and the hub's `proximity-dns` (release build) \
             answers from them, choosing per query the nearest healthy sites to the hub's \
             position. NSD (Debian's, one server process) answers the same {} names with the \
             same addresses from a zone file written from proximity-dns's answers. Both are \
             asked by dnsperf on this machine ({} clients, A queries cycling through the names, \
             {} s windows, the servers taking turns):\n",
            thousands(d.sites),
            d.names,
            d.names,
            8,
            d.window_seconds
        );
        let _ = writeln!(out, "{}", crate::dns::table(d).render());
    }
    if let Some(r) = &r.rollout {
        let _ = writeln!(
            out,
            "## 7. A {}-wave rollout across {} simulated sites\n",
            crate::rollout::WAVES,
            thousands(r.clusters)
        );
        let _ = writeln!(
            out,
            "Part 4's test bed ({} leaf nodes, `optikon-sim-edges` answering every command with \
             `deployed`), with the clusters' `ring` label spread 0–9. Three upgrades take \
             turns, the order alternating per round: every cluster at once; one ring's clusters \
             at once (one wave's work without a gate); and every cluster in {} waves \
             (`--wave ring=0` … `--wave ring=8`, the rest last), no soak. The gate's overhead per \
             wave is a tenth of the rollout's time minus one wave's work; each wave's own time \
             is read by polling the rollout record every 50 ms:\n",
            r.leaves,
            crate::rollout::WAVES
        );
        let _ = writeln!(out, "{}", crate::rollout::table(r).render());
    }
    out
}

/// What the terminal shows at the end: the same report.
pub fn terminal(r: &Results) -> String {
    markdown(r)
}

fn control_section(out: &mut String, r: &Results) {
    let plan = &r.plan.control;
    let _ = writeln!(
        out,
        "## 4. The control plane at {} clusters\n",
        r.control
            .iter()
            .map(|c| thousands(c.clusters))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let _ = writeln!(
        out,
        "Per size a fresh hub — nats-server (JetStream domain `hub`), selector-router, \
         chart-ingest and gateway as release builds — and {} leaf nats-servers, each dialling \
         the hub through a relay as in the test bed and each carrying an even share of the \
         clusters. Each cluster is served by a simulated edge agent (`optikon-sim-edges`, \
         `tests/bench/src/sim.rs`): per cluster it creates the real edge streams \
         (`CMD_LOCAL_<cluster>`, the outbox `STATUS_<cluster>`), registers with the hub, runs \
         the prober's own site link (the downlink pulling the cluster's commands from its \
         consumer `edge-<cluster>` at the hub, the uplink forwarding its outbox to \
         `STATUS_HUB`), puts a heartbeat into the hub's `heartbeats` bucket every {} s, and \
         answers every command with a `deployed` status for its generation before \
         acknowledging it — what the prober and executor put on the wire, without a \
         Kubernetes cluster behind it. The hub cannot tell these clusters from real ones. \
         Everything runs on this one machine, agents and leaf nodes included.\n",
        plan.leaves, plan.heartbeat_seconds
    );
    let _ = writeln!(
        out,
        "**Fan-out.** One request (`optikon upgrade` through the client library, selector \
         `fleet=sim`, matching every cluster), timed from publishing it until the hub's \
         request record shows every cluster acknowledged (`deployed`), as a client watching \
         the record sees it. An untimed install first, then {} timed upgrades (2 above 5,000 \
         clusters, where each takes minutes here). \"per cluster\" pools each cluster's own time to acknowledged over those upgrades. CPU \
         is seconds per fan-out (median):\n",
        plan.reps
    );
    let mut fanout = Table::new(&[
        "clusters",
        "runs",
        "all acknowledged",
        "per cluster p50",
        "per cluster p99",
        "commands/s",
        "CPU hub nats",
        "CPU router",
        "CPU leaves",
        "CPU agents",
    ])
    .right_aligned(&[0, 1, 3, 4, 5, 6, 7, 8, 9]);
    for c in &r.control {
        let all = Summary::of(&c.fanout_all);
        let cpu = |name: &str| {
            c.fanout_cpu
                .iter()
                .find(|(n, _)| n == name)
                .map_or("–".into(), |(_, s)| format!("{s:.2} s"))
        };
        fanout.push(vec![
            thousands(c.clusters),
            c.fanout_all.len().to_string(),
            all.map_or("–".into(), |s| s.seconds()),
            format!("{:.2} s", control::percentile(&c.per_cluster, 50.0)),
            format!("{:.2} s", control::percentile(&c.per_cluster, 99.0)),
            all.map_or("–".into(), |s| {
                format!("{:.0}", c.clusters as f64 / s.median)
            }),
            cpu("hub nats-server"),
            cpu("selector-router"),
            cpu("leaf nats-servers"),
            cpu("simulated agents"),
        ]);
    }
    let _ = writeln!(out, "{}", fanout.render());

    let _ = writeln!(
        out,
        "**Router throughput.** {} install requests sent at once, each matching one \
         cluster (`cluster=<name>`), timed until all were acknowledged. The router takes \
         requests for one release strictly in order (an uninstall must never overtake the \
         upgrade before it) and requests for different releases at once, in lanes; the \
         same {} requests are sent with one lane (`--request-lanes 1`: one request at a \
         time, as the router worked before) and with the default:\n",
        plan.single_requests, plan.single_requests
    );
    let mut single = Table::new(&[
        "clusters",
        "requests",
        "one lane: time",
        "one lane: requests/s",
        "lanes: time",
        "lanes: requests/s",
        "lanes / one lane",
    ])
    .right_aligned(&[0, 1, 2, 3, 4, 5, 6]);
    for c in &r.control {
        let (n, seconds) = c.single;
        let rate = |s: f64| n as f64 / s;
        let (one_time, one_rate, ratio) = match c.single_one_lane {
            Some(one) => (
                format!("{one:.1} s"),
                format!("{:.1}", rate(one)),
                format!("{:.1}×", one / seconds),
            ),
            None => ("n/a".into(), "n/a".into(), "n/a".into()),
        };
        single.push(vec![
            thousands(c.clusters),
            n.to_string(),
            one_time,
            one_rate,
            format!("{seconds:.1} s"),
            format!("{:.1}", rate(seconds)),
            ratio,
        ]);
    }
    let _ = writeln!(out, "{}", single.render());

    let _ = writeln!(
        out,
        "**Hub memory and the heartbeat load.** Resident memory (RSS) of the hub's \
         nats-server and the router with the hub's streams set up and no cluster registered, \
         then after every cluster registered and heartbeated; \"per 1,000\" is the growth \
         divided by the clusters. Idle cores: CPU seconds over a {} s window, once the hub has \
         settled after the set-up (\"settled\": two 5 s windows in a row used about the same \
         CPU), with nothing asked of the hub but the heartbeats (one KV put per cluster every {} s) and each \
         cluster's waiting pull for commands (one expiry each way per cluster every 30 s). \
         The hub also runs proximity-dns, which follows every heartbeat; the last column is \
         the hub's nats-server over a second window of the same length with it stopped:\n",
        plan.idle_seconds, plan.heartbeat_seconds
    );
    let mut memory = Table::new(&[
        "clusters",
        "set-up",
        "settled",
        "hub nats RSS",
        "per 1,000",
        "router RSS",
        "per 1,000",
        "heartbeats/s",
        "idle hub nats",
        "idle router",
        "idle leaves",
        "idle agents",
        "idle proximity-dns",
        "idle hub nats, proximity-dns stopped",
    ])
    .right_aligned(&[0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]);
    for c in &r.control {
        let per_1000 = |base: f64, now: f64| (now - base) / c.clusters as f64 * 1000.0;
        let idle = |name: &str| {
            c.idle_cores
                .iter()
                .find(|(n, _)| n == name)
                .map_or("–".into(), |(_, cores)| format!("{cores:.2}"))
        };
        memory.push(vec![
            thousands(c.clusters),
            format!("{:.0} s", c.setup_seconds),
            format!("{:.0} s", c.settle_seconds),
            format!("{:.0} → {:.0} MiB", c.hub_rss_base_mib, c.hub_rss_mib),
            format!("{:.1} MiB", per_1000(c.hub_rss_base_mib, c.hub_rss_mib)),
            format!("{:.0} → {:.0} MiB", c.router_rss_base_mib, c.router_rss_mib),
            format!(
                "{:.1} MiB",
                per_1000(c.router_rss_base_mib, c.router_rss_mib)
            ),
            format!("{:.0}", c.heartbeats_per_second),
            idle("hub nats-server"),
            idle("selector-router"),
            idle("leaf nats-servers"),
            idle("simulated agents"),
            idle("proximity-dns (hub)"),
            c.idle_hub_without_dns
                .map_or("–".into(), |cores| format!("{cores:.2}")),
        ]);
    }
    let _ = writeln!(out, "{}", memory.render());
    let _ = writeln!(
        out,
        "**What grows with the number of clusters.** Per cluster the hub holds one durable \
         consumer on `CMD` (`edge-<cluster>`), one waiting pull on it (30 s long poll, an \
         expiry each way when it ends), one `heartbeats` entry rewritten every heartbeat, and \
         one registry record written at registration. Nothing folds heartbeats, and no \
         stream source keeps a heartbeat of its own. Here all of it shares the machine's \
         cores with the simulated edges; on a real fleet the leaf-node half of the load runs \
         at the edge sites, and the hub's half is in the \"idle hub nats\" and \"idle \
         router\" columns.\n"
    );
    let _ = writeln!(out, "**Bottleneck at each scale.**\n");
    for c in &r.control {
        let _ = writeln!(out, "- {}", control_bottleneck(c, r.machine.nproc));
    }
    let _ = writeln!(out);
}

/// One sentence per size: where the fan-out's time went, from the CPU it used.
fn control_bottleneck(c: &ScaleResult, cores: usize) -> String {
    let Some(all) = Summary::of(&c.fanout_all) else {
        return format!("{}: no fan-out finished.", thousands(c.clusters));
    };
    let total: f64 = c.fanout_cpu.iter().map(|(_, s)| s).sum();
    let busy = 100.0 * total / (all.median * cores as f64);
    let mut parts = c.fanout_cpu.clone();
    parts.sort_by(|a, b| b.1.total_cmp(&a.1));
    let named: Vec<String> = parts
        .iter()
        .map(|(name, s)| format!("{name} {:.0} %", 100.0 * s / total.max(f64::EPSILON)))
        .collect();
    let bound = if busy >= 80.0 {
        "CPU-bound: the processes measured kept the machine's cores busy"
    } else {
        "not CPU-bound: part of the time is waiting on round trips between the parts"
    };
    let idle = |names: &[&str]| -> f64 {
        c.idle_cores
            .iter()
            .filter(|(n, _)| names.contains(&n.as_str()))
            .map(|(_, cores)| cores)
            .sum()
    };
    let idle_all = idle(&[
        "hub nats-server",
        "selector-router",
        "leaf nats-servers",
        "simulated agents",
    ]);
    let idle_sim = idle(&["leaf nats-servers", "simulated agents"]);
    format!(
        "{}: one fan-out took {:.2} s and {:.1} CPU s ({busy:.0} % of {cores} cores) — {bound}; \
         the CPU went to {}. Idle, the heartbeat load already kept {idle_all:.2} of the {cores} \
         cores busy, {idle_sim:.2} of them in the simulation's leaf nodes and agents, which \
         in a real fleet run on the edge sites.",
        thousands(c.clusters),
        all.median,
        total,
        named.join(", ")
    )
}

fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, d) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(d);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Method;

    #[test]
    fn report_holds_the_tables() {
        let mut fleet = FleetResult {
            size: 3,
            ..FleetResult::default()
        };
        fleet.seconds.insert(Method::Optikon, vec![2.0, 2.2, 1.8]);
        fleet
            .seconds
            .insert(Method::HelmSequential, vec![9.0, 9.5, 8.5]);
        fleet
            .seconds
            .insert(Method::HelmParallel, vec![4.0, 4.4, 3.6]);
        fleet.busy.insert(Method::Optikon, vec![50.0]);
        fleet.optikon_slowest_execute = vec![1.5];
        let results = Results {
            command: "scripts/bench".into(),
            fleet: vec![fleet],
            control: vec![ScaleResult {
                clusters: 1000,
                fanout_all: vec![0.8, 0.9, 1.0],
                per_cluster: (1..=100).map(|i| f64::from(i) / 100.0).collect(),
                fanout_cpu: vec![
                    ("hub nats-server".into(), 0.3),
                    ("selector-router".into(), 0.6),
                ],
                single: (100, 20.0),
                hub_rss_base_mib: 20.0,
                hub_rss_mib: 120.0,
                ..ScaleResult::default()
            }],
            ..Results::default()
        };
        let text = markdown(&results);
        assert!(text.contains("| command | `scripts/bench` |"), "{text}");
        assert!(text.contains("4.5×"), "{text}");
        assert!(text.contains("2.0×"), "{text}");
        assert!(text.contains("N = 3: Optikon took 2.00 s"), "{text}");
        assert!(
            text.contains("## 4. The control plane at 1,000 clusters"),
            "{text}"
        );
        // p50 and p99 of the pooled per-cluster times, requests/s, memory per 1,000.
        assert!(text.contains(" 0.50 s |"), "{text}");
        assert!(text.contains(" 0.99 s |"), "{text}");
        assert!(text.contains(" 5.0 |"), "{text}");
        assert!(text.contains("20 → 120 MiB | 100.0 MiB"), "{text}");
        assert!(text.contains("selector-router 67 %"), "{text}");
        assert!(!text.contains("## 2."), "{text}");
    }
}
