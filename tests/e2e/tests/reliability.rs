//! Fault injection on the real test bed: link cuts, a hub restart, crashed executors and
//! services, drift on a cut-off edge, poison commands and more changes than the hub keeps.
//!
//! Each test drives the real `optikon` CLI (or publishes requests on NATS as a script would),
//! injects its fault, waits until every request has settled, then checks each cluster's Helm
//! records (the release Secrets and the real `helm`) and objects against what was asked:
//! every release at its newest requested state, exactly one revision per applied change,
//! none for a superseded one, nothing pending. It counts operations tried, lost and
//! duplicated and the time to converge after the fault ends, and adds a row to the table
//! printed at the end of each test and written to `$OPTIKON_RELIABILITY_REPORT` (default
//! `<tmp>/optikon-reliability.md`); docs/reliability.md quotes one run.
//!
//! `OPTIKON_SOAK=<n>` multiplies the releases per scenario by n (default 1).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Mutex as StdMutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use async_nats::jetstream::{self, consumer};
use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use optikon_core::message::{
    Action, ClusterProgress, ClusterRecord, Health, ReleaseState, ReleaseStatus, RequestStatus,
    Timestamp,
};
use optikon_core::selector::LabelSelector;
use optikon_core::subject;
use optikon_e2e::{helm, kube_client, optikon, running_pods, testbed};
use optikon_testbed::{Site, Testbed};
use serde_json::json;
use tokio::sync::MutexGuard;

const CHART: &str = "relchart";
const V1: &str = "0.1.0";
const V2: &str = "0.2.0";
/// The test bed's heartbeat interval (the suite keeps it).
const HEARTBEAT_SECONDS: u64 = optikon_testbed::services::TESTBED_HEARTBEAT_SECONDS;
/// Short intervals for the test bed's executors, so faults show and heal in seconds.
const DRIFT_CHECK_SECONDS: &str = "2";
const ACK_WAIT_SECONDS: &str = "9";
/// How long every request of a scenario may take to settle once its fault has ended.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(150);

// ---------------------------------------------------------------------------------------
// The scenarios.
// ---------------------------------------------------------------------------------------

/// Store and forward both ways: requests made while one edge is cut off reach it, in order
/// per release, when the link returns; its heartbeats made meanwhile reach the hub; the
/// hub shows it unreachable (never healthy) with its last-seen time while it is away. A
/// request published twice, and a command delivered twice, apply once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn link_cut_stores_and_forwards_both_ways() -> anyhow::Result<()> {
    let mut testbed = prepared().await?;
    let site = "copenhagen-1";
    let ns = "rel-cut";
    let selector = "Kubecon=True"; // copenhagen-1 (cut) and copenhagen-2 (control)
    let js = hub_js(&testbed).await?;
    let rounds = soak_rounds();

    // Releases that exist before the cut.
    let mut before = Vec::new();
    for round in 0..rounds {
        for name in ["cut-b", "cut-c"] {
            before.push(Op::deploy(
                Action::Install,
                &format!("{name}{}", suffix(round)),
                ns,
                selector,
                V1,
                1,
            ));
        }
    }
    submit_all(&testbed, &mut before)?;
    settle(&js, &before, Instant::now(), &[]).await?;
    let baseline = baseline(&testbed, &before, &[site, "copenhagen-2"]).await?;

    block(|| testbed.cut_link(site))?;
    let cut_at = Timestamp::now();
    let cut_instant = Instant::now();

    let mut ops = Vec::new();
    for round in 0..rounds {
        let s = suffix(round);
        let (a, b, c, d) = (
            format!("cut-a{s}"),
            format!("cut-b{s}"),
            format!("cut-c{s}"),
            format!("cut-d{s}"),
        );
        ops.push(Op::deploy(Action::Install, &a, ns, selector, V1, 1));
        ops.push(Op::deploy(Action::Upgrade, &a, ns, selector, V2, 2));
        ops.push(Op::deploy(Action::Upgrade, &a, ns, selector, V2, 3));
        ops.push(Op::deploy(Action::Upgrade, &b, ns, selector, V2, 2));
        ops.push(Op::remove(&b, ns, selector));
        ops.push(Op::deploy(Action::Upgrade, &c, ns, selector, V2, 3));
        ops.push(Op::deploy(Action::Install, &d, ns, selector, V1, 1));
        ops.push(Op::remove(&d, ns, selector));
        ops.push(Op::deploy(Action::Install, &d, ns, selector, V2, 2));
    }
    submit_all(&testbed, &mut ops)?;
    // A request a script publishes twice with the same id, and once more without the dedup
    // header: one generation, applied once.
    let mut twice = Op::deploy(Action::Install, "cut-e", ns, selector, V1, 2);
    twice.id = format!("twice-{}", uuid::Uuid::new_v4().simple());
    for with_header in [true, true, false] {
        publish_request(&js, &twice, with_header).await?;
    }
    ops.push(twice);

    // The control site converges while the other is away.
    let control: Vec<&str> = vec!["copenhagen-2"];
    settle_sites(&js, &ops, Instant::now(), &control).await?;

    // Unreachable with its last-seen time, never healthy, once three heartbeats are missed.
    let stale_after = Duration::from_secs(3 * HEARTBEAT_SECONDS + 2);
    let mut observations = 0;
    loop {
        let waited = cut_instant.elapsed();
        let (health, last_seen) = hub_health(&testbed, site)?;
        let last_seen = last_seen.context("the cut site was seen before")?;
        ensure!(
            last_seen.seconds_until(cut_at) > -(HEARTBEAT_SECONDS as f64) - 1.0,
            "last seen {last_seen} is after the cut at {cut_at}: a heartbeat crossed a cut link"
        );
        if waited > stale_after {
            ensure!(
                health == Health::Unreachable,
                "{site} cut off for {waited:?} but shown {health}"
            );
            let table = optikon(&testbed, &["clusters"])?.ok()?.stdout;
            let row = table
                .lines()
                .find(|l| l.starts_with(site))
                .context("cluster table row")?;
            ensure!(
                row.contains("unreachable") && row.contains(" ago"),
                "the cluster table shows health and last-seen time: {row}"
            );
            observations += 1;
        }
        if observations >= 3 && waited > Duration::from_secs(12) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    for other in ["copenhagen-2", "copenhagen-3"] {
        ensure!(
            hub_health(&testbed, other)?.0 == Health::Healthy,
            "{other} stays healthy"
        );
    }

    // While cut: nothing of the cut site's commands has been applied.
    for op in ops.iter().filter(|o| o.action != Action::Uninstall) {
        let records = records(&testbed, site, &op.namespace, &op.release).await?;
        let newest = records.last().map(|r| r.version).unwrap_or(0);
        let known = baseline
            .get(&(site.to_owned(), op.release.clone()))
            .copied()
            .unwrap_or(0);
        ensure!(
            newest == known,
            "{} changed on {site} while it was cut off",
            op.release
        );
    }

    let restore_at = Timestamp::now();
    block(|| testbed.restore_link(site))?;
    let restored = Instant::now();

    // A command the edge gets a second time (as after a redelivery) changes nothing.
    let settled = settle(&js, &ops, restored, &[site]).await?;
    let at_edge_settled = edge_converge(&testbed, &ops, &settled, &[site], restore_at).await?;
    let repeat = ops
        .iter()
        .rfind(|o| o.release == "cut-c")
        .context("cut-c")?;
    republish_command(&js, site, ns, &repeat.release).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut tally = verify(&testbed, &js, &ops, &settled, &baseline, &BTreeSet::new()).await?;

    // Heartbeats are not stored and forwarded (only the newest matters): once the link is
    // back, the hub has a heartbeat made after the restore within two intervals.
    let fresh = optikon_e2e::eventually(
        "a heartbeat made after the restore reaches the hub",
        Duration::from_secs(3 * HEARTBEAT_SECONDS),
        || async {
            let (_, last_seen) = hub_health(&testbed, site)?;
            Ok(last_seen.filter(|at| restore_at.seconds_until(*at) > 0.0))
        },
    )
    .await;
    tally.tried += 1;
    if let Err(error) = fresh {
        tally.lost += 1;
        tally.problems.push(error.to_string());
    }

    finish(
        "link cut, restored (requests queued at the hub, status at the edge)",
        &tally,
        &at_edge_settled,
        &settled.converge,
        &format!(
            "{} requests × 2 sites, a fresh heartbeat after it, cut {:.0} s",
            ops.len(),
            cut_instant.elapsed().as_secs_f64() - restored.elapsed().as_secs_f64()
        ),
    )
}

/// The hub's nats-server restarts while an edge is cut off: requests from before and after
/// the restart reach every site, the cut one once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_restart_during_a_cut() -> anyhow::Result<()> {
    let mut testbed = prepared().await?;
    let site = "copenhagen-2";
    let ns = "rel-hub";
    let selector = "Region=Europe"; // all three sites
    let js = hub_js(&testbed).await?;
    let rounds = soak_rounds();

    let mut before = Vec::new();
    for round in 0..rounds {
        before.push(Op::deploy(
            Action::Install,
            &format!("hub-b{}", suffix(round)),
            ns,
            selector,
            V1,
            1,
        ));
    }
    submit_all(&testbed, &mut before)?;
    settle(&js, &before, Instant::now(), &[]).await?;
    let all_sites = ["copenhagen-1", "copenhagen-2", "copenhagen-3"];
    let baseline = baseline(&testbed, &before, &all_sites).await?;

    block(|| testbed.cut_link(site))?;
    let mut ops = Vec::new();
    for round in 0..rounds {
        let s = suffix(round);
        ops.push(Op::deploy(
            Action::Install,
            &format!("hub-a{s}"),
            ns,
            selector,
            V1,
            1,
        ));
        ops.push(Op::deploy(
            Action::Upgrade,
            &format!("hub-b{s}"),
            ns,
            selector,
            V2,
            2,
        ));
    }
    submit_all(&testbed, &mut ops)?;
    // Restart once the router has made these requests' commands: a request it is in the
    // middle of when the hub goes is retried after later ones (see docs/reliability.md).
    routed(&js, &ops).await?;

    block(|| testbed.restart_hub())?;
    // Users and services reconnect by themselves; wait until the hub answers again.
    optikon_e2e::eventually(
        "the hub answers after its restart",
        Duration::from_secs(60),
        || async { Ok((optikon(&testbed, &["clusters", "-o", "json"])?.code == 0).then_some(())) },
    )
    .await?;
    // The restarted hub has lost its in-memory `heartbeats` bucket; the router makes it
    // again, and the sites still linked are healthy again within a few heartbeats.
    optikon_e2e::eventually(
        "the linked sites' heartbeats reach the restarted hub",
        Duration::from_secs(30),
        || async {
            let out = optikon(&testbed, &["clusters", "-o", "json"])?.ok()?;
            let clusters: Vec<ClusterRecord> = serde_json::from_str(&out.stdout)?;
            let now = Timestamp::now();
            let healthy = clusters
                .iter()
                .filter(|c| c.name != site && c.health(now) == Health::Healthy)
                .count();
            Ok((healthy == all_sites.len() - 1).then_some(()))
        },
    )
    .await?;
    let mut after = Vec::new();
    for round in 0..rounds {
        let s = suffix(round);
        after.push(Op::deploy(
            Action::Upgrade,
            &format!("hub-a{s}"),
            ns,
            selector,
            V2,
            3,
        ));
        after.push(Op::deploy(
            Action::Install,
            &format!("hub-c{s}"),
            ns,
            selector,
            V1,
            2,
        ));
        after.push(Op::remove(&format!("hub-b{s}"), ns, selector));
    }
    submit_all(&testbed, &mut after)?;
    ops.extend(after);

    let restore_at = Timestamp::now();
    block(|| testbed.restore_link(site))?;
    let restored = Instant::now();
    let settled = settle(&js, &ops, restored, &[site]).await?;
    let at_edge = edge_converge(&testbed, &ops, &settled, &[site], restore_at).await?;
    let tally = verify(&testbed, &js, &ops, &settled, &baseline, &BTreeSet::new()).await?;
    finish(
        "hub nats-server restarted while one edge is cut off",
        &tally,
        &at_edge,
        &settled.converge,
        &format!("{} requests × 3 sites", ops.len()),
    )
}

/// An executor is killed (SIGKILL) in the middle of an upgrade, after its objects were
/// applied and before the revision was recorded as done; requests arrive while it is down. Once it
/// is back: one revision per change (the interrupted one finished, not made again), nothing
/// pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_killed_during_an_apply() -> anyhow::Result<()> {
    let mut testbed = prepared().await?;
    let site = "copenhagen-3";
    let ns = "rel-kill";
    let selector = "ID=789";
    let service = format!("per-cluster-executor@{site}");
    let js = hub_js(&testbed).await?;

    let mut before = vec![Op::deploy(Action::Install, "kill-a", ns, selector, V1, 1)];
    submit_all(&testbed, &mut before)?;
    settle(&js, &before, Instant::now(), &[]).await?;
    let baseline = baseline(&testbed, &before, &[site]).await?;

    // Readiness takes minReadySeconds after the pods run: a window to kill the executor in.
    let edge = edge_client(&testbed, site).await?;
    let mut statuses = edge
        .subscribe(format!(
            "{}.{}.release.{ns}.>",
            subject::STATUS_PREFIX,
            site
        ))
        .await?;
    let mut upgrade = Op::deploy(Action::Upgrade, "kill-a", ns, selector, V2, 3);
    upgrade.min_ready_seconds = 8;
    let mut ops = vec![upgrade];
    submit_all(&testbed, &mut ops)?;
    let applying = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(message) = statuses.next().await {
            let status: ReleaseStatus = serde_json::from_slice(&message.payload)?;
            if status.release == "kill-a" && status.state == ReleaseState::Pending {
                return Ok(status);
            }
        }
        bail!("status subscription ended")
    })
    .await
    .context("the upgrade never started")??;
    let client = kube_client(&testbed, site).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    optikon_e2e::eventually(
        "the upgrade's objects applied",
        Duration::from_secs(20),
        || async {
            let replicas = deployments
                .get("kill-a")
                .await?
                .spec
                .and_then(|s| s.replicas);
            Ok((replicas == Some(3)).then_some(()))
        },
    )
    .await?;
    testbed
        .service_mut(&service)
        .context("executor service")?
        .kill();
    let killed = Instant::now();
    // Killed mid-apply: the objects changed and the revision is recorded `pending-upgrade`,
    // as helm leaves it when it dies there; nothing final was said. The restarted executor
    // must finish that same revision (`verify`: one revision per generation).
    let mid_apply = records(&testbed, site, ns, "kill-a").await?;
    let carrying: Vec<&Record> = mid_apply
        .iter()
        .filter(|r| r.generation == Some(applying.generation))
        .collect();
    ensure!(
        matches!(carrying.as_slice(), [r] if r.status == "pending-upgrade")
            && mid_apply.last().map(|r| r.generation) == Some(Some(applying.generation)),
        "killed mid-apply, the newest revision should be the upgrade's, pending-upgrade: \
         {mid_apply:?}"
    );
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_millis(300), statuses.next()).await
    {
        let status: ReleaseStatus = serde_json::from_slice(&message.payload)?;
        ensure!(
            !(status.release == "kill-a" && status.state.is_final()),
            "a final status came before the kill: {status:?}"
        );
    }

    // Requests while the executor is down.
    let mut while_down = vec![
        Op::deploy(Action::Install, "kill-b", ns, selector, V1, 2),
        Op::deploy(Action::Install, "kill-c", ns, selector, V1, 1),
        Op::remove("kill-c", ns, selector),
    ];
    submit_all(&testbed, &mut while_down)?;
    ops.extend(while_down);
    tokio::time::sleep(Duration::from_secs(1)).await;

    block(|| {
        testbed
            .service_mut(&service)
            .context("executor service")?
            .restart()
            .map_err(anyhow::Error::from)
    })?;
    let restarted = Instant::now();
    let restarted_at = Timestamp::now();
    let settled = settle(&js, &ops, restarted, &[site]).await?;
    let at_edge = edge_converge(&testbed, &ops, &settled, &[site], restarted_at).await?;
    let tally = verify(&testbed, &js, &ops, &settled, &baseline, &BTreeSet::new()).await?;
    finish(
        "executor SIGKILLed mid-apply, restarted",
        &tally,
        &at_edge,
        &settled.converge,
        &format!(
            "{} requests, executor down {:.1} s",
            ops.len(),
            killed.elapsed().as_secs_f64() - restarted.elapsed().as_secs_f64()
        ),
    )
}

/// One of two executor replicas of a site dies while both hold commands: the survivor
/// takes over the dead one's commands after the ack wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_one_of_two_executor_replicas() -> anyhow::Result<()> {
    let mut testbed = prepared().await?;
    let site = "copenhagen-2";
    let ns = "rel-replica";
    let selector = "ID=456";
    let first = format!("per-cluster-executor@{site}");
    let js = hub_js(&testbed).await?;
    let second = block(|| {
        testbed
            .add_executor_replica(site)
            .map_err(anyhow::Error::from)
    })?;
    let result = async {
        // Let the replica join the consumer before work arrives.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let baseline = BTreeMap::new();
        let mut ops = Vec::new();
        for i in 0..4 * soak_rounds() {
            let mut op = Op::deploy(Action::Install, &format!("rep-{i}"), ns, selector, V1, 1);
            op.min_ready_seconds = 4;
            ops.push(op);
        }
        submit_all(&testbed, &mut ops)?;
        // Kill a replica that has commands in hand.
        let victim = optikon_e2e::eventually(
            "a replica holding commands",
            Duration::from_secs(60),
            || async {
                for name in [&first, &second] {
                    let log = service_log(&testbed, name)?;
                    if log
                        .lines()
                        .any(|l| l.contains("command received") && l.contains("release=rep-"))
                    {
                        return Ok(Some(name.clone()));
                    }
                }
                Ok(None)
            },
        )
        .await?;
        testbed
            .service_mut(&victim)
            .context("victim replica")?
            .kill();
        let killed = Instant::now();
        let killed_at = Timestamp::now();
        let settled = settle(&js, &ops, killed, &[site]).await?;
        let at_edge = edge_converge(&testbed, &ops, &settled, &[site], killed_at).await?;
        let tally = verify(&testbed, &js, &ops, &settled, &baseline, &BTreeSet::new()).await?;
        finish(
            "one of two executor replicas SIGKILLed while applying",
            &tally,
            &at_edge,
            &settled.converge,
            &format!("{} requests, ack wait {ACK_WAIT_SECONDS} s", ops.len()),
        )
    }
    .await;
    // Back to one executor per site, whatever happened.
    testbed.services.retain(|s| s.spec.name != second);
    if let Some(service) = testbed.service_mut(&first)
        && service.check_running().is_err()
    {
        block(|| service.restart().map_err(anyhow::Error::from))?;
    }
    result
}

/// Every hub service and an edge's services restart while requests are in flight; the
/// router is killed (SIGKILL) and requests are made while it is down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_restart_while_requests_are_in_flight() -> anyhow::Result<()> {
    let mut testbed = prepared().await?;
    let ns = "rel-svc";
    let js = hub_js(&testbed).await?;
    let all_sites = ["copenhagen-1", "copenhagen-2", "copenhagen-3"];

    testbed
        .service_mut("selector-router")
        .context("router")?
        .kill();
    let mut ops = vec![
        Op::deploy(Action::Install, "svc-a", ns, "Region=Europe", V1, 1),
        Op::deploy(Action::Install, "svc-b", ns, "Kubecon=True", V1, 2),
    ];
    submit_all(&testbed, &mut ops)?;
    block(|| {
        for name in [
            "selector-router",
            "chart-ingest",
            "health-prober@copenhagen-1",
            "per-cluster-executor@copenhagen-2",
        ] {
            testbed
                .service_mut(name)
                .with_context(|| format!("service {name}"))?
                .restart()?;
        }
        anyhow::Ok(())
    })?;
    let restarted = Instant::now();
    let restarted_at = Timestamp::now();
    let mut later = vec![Op::deploy(
        Action::Upgrade,
        "svc-a",
        ns,
        "Region=Europe",
        V2,
        2,
    )];
    submit_all(&testbed, &mut later)?;
    ops.extend(later);
    let settled = settle(&js, &ops, restarted, &all_sites).await?;
    let at_edge = edge_converge(&testbed, &ops, &settled, &all_sites, restarted_at).await?;
    let tally = verify(
        &testbed,
        &js,
        &ops,
        &settled,
        &BTreeMap::new(),
        &BTreeSet::new(),
    )
    .await?;
    finish(
        "router SIGKILLed; router, chart-ingest, an executor and a prober restarted",
        &tally,
        &at_edge,
        &settled.converge,
        &format!("{} requests × 2–3 sites", ops.len()),
    )
}

/// Drift on a cut-off edge: a deleted Deployment and an edited one are put back by the
/// executor without the hub, also by an executor restarted while offline; no revision is
/// added; the drift reaches the hub when the link returns, and a request made meanwhile
/// is applied then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_on_a_cut_off_edge_is_corrected_and_reported() -> anyhow::Result<()> {
    let mut testbed = prepared().await?;
    let site = "copenhagen-3";
    let ns = "rel-drift";
    let selector = "ID=789";
    let service = format!("per-cluster-executor@{site}");
    let js = hub_js(&testbed).await?;

    let mut before = vec![
        Op::deploy(Action::Install, "drift-a", ns, selector, V1, 1),
        Op::deploy(Action::Install, "drift-b", ns, selector, V1, 2),
    ];
    submit_all(&testbed, &mut before)?;
    settle(&js, &before, Instant::now(), &[]).await?;
    let baseline = baseline(&testbed, &before, &[site]).await?;

    block(|| testbed.cut_link(site))?;
    let cut_at = Timestamp::now();
    let client = kube_client(&testbed, site).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let mut corrections = Vec::new();
    let mut injected = 0;

    // Someone deletes one Deployment and scales the other and edits its ConfigMap by hand.
    let old_uid = deployments.get("drift-a").await?.metadata.uid;
    deployments
        .delete("drift-a", &DeleteParams::default())
        .await?;
    let by_hand = PatchParams::apply("kubectl-by-hand").force();
    deployments
        .patch(
            "drift-b",
            &by_hand,
            &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "drift-b"}, "spec": {"replicas": 5}})),
        )
        .await?;
    config_maps
        .patch(
            "drift-b",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"message": "edited by hand"}})),
        )
        .await?;
    injected += 3;
    let drifted = Instant::now();
    let expected_b = before[1].clone();
    optikon_e2e::eventually(
        "drift corrected while cut off",
        Duration::from_secs(30),
        || async {
            let a = deployments.get_opt("drift-a").await?;
            let b = deployments.get("drift-b").await?;
            let b_message = config_maps.get("drift-b").await?.data.unwrap_or_default();
            Ok((a.is_some_and(|a| a.metadata.uid != old_uid)
                && b.spec.and_then(|s| s.replicas) == Some(expected_b.replicas as i32)
                && b_message.get("message") == Some(&expected_b.message))
            .then_some(()))
        },
    )
    .await?;
    corrections.push(drifted.elapsed());

    // An executor restarted while cut off keeps correcting.
    block(|| {
        let executor = testbed.service_mut(&service).context("executor")?;
        executor.kill();
        executor.restart().map_err(anyhow::Error::from)
    })?;
    let old_uid = deployments.get("drift-b").await?.metadata.uid;
    deployments
        .delete("drift-b", &DeleteParams::default())
        .await?;
    injected += 1;
    let drifted = Instant::now();
    optikon_e2e::eventually(
        "drift corrected by an executor restarted offline",
        Duration::from_secs(40),
        || async {
            let b = deployments.get_opt("drift-b").await?;
            Ok(b.is_some_and(|b| b.metadata.uid != old_uid).then_some(()))
        },
    )
    .await?;
    corrections.push(drifted.elapsed());

    // A request made while cut off.
    let mut ops = vec![Op::deploy(Action::Upgrade, "drift-a", ns, selector, V2, 2)];
    submit_all(&testbed, &mut ops)?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let restore_at = Timestamp::now();
    block(|| testbed.restore_link(site))?;
    let restored = Instant::now();
    let settled = settle(&js, &ops, restored, &[site]).await?;
    let request_at_edge = edge_converge(&testbed, &ops, &settled, &[site], restore_at).await?;
    let mut tally = verify(&testbed, &js, &ops, &settled, &baseline, &BTreeSet::new()).await?;

    // No drift correction made a revision: drift-b still has its one.
    let b_records = records(&testbed, site, ns, "drift-b").await?;
    tally.tried += injected;
    if b_records.len() != 1 {
        tally.duplicated += b_records.len().saturating_sub(1);
        tally
            .problems
            .push(format!("drift-b has revisions {b_records:?}"));
    }
    // Every drift status the edge made while cut off reached the hub, and says what it was.
    let edge_js = edge_js(&testbed, site).await?;
    let mut reported = Vec::new();
    for release in ["drift-a", "drift-b"] {
        let subject = subject::release_status(site, ns, release);
        let outbox = subject::outbox_status(site, ns, release);
        let during_cut = |bodies: Vec<bytes::Bytes>| -> Vec<ReleaseStatus> {
            bodies
                .iter()
                .filter_map(|b| serde_json::from_slice::<ReleaseStatus>(b).ok())
                .filter(|s| {
                    cut_at.seconds_until(s.at) > 0.0 && s.at.seconds_until(restore_at) > 0.0
                })
                .collect()
        };
        let at_edge =
            during_cut(stream_messages(&edge_js, &subject::status_stream(site), &outbox).await?);
        let made = at_edge.len();
        let at_hub = optikon_e2e::eventually(
            "drift reports reach the hub",
            Duration::from_secs(30),
            || async {
                let at_hub =
                    during_cut(stream_messages(&js, subject::STATUS_HUB_STREAM, &subject).await?);
                Ok((at_hub.len() >= made).then_some(at_hub))
            },
        )
        .await?;
        ensure!(
            at_hub == at_edge,
            "hub and edge disagree on {release}'s statuses"
        );
        reported.extend(at_hub);
    }
    let reports_arrived = restored.elapsed();
    let says = |release: &str, what: &str| {
        reported.iter().any(|s| {
            s.release == release
                && s.state == ReleaseState::Deployed
                && s.reason.as_deref().is_some_and(|r| r.contains(what))
        })
    };
    for (release, what) in [
        ("drift-a", "Deployment rel-drift/drift-a was deleted"),
        ("drift-b", "Deployment rel-drift/drift-b was changed"),
        ("drift-b", "ConfigMap rel-drift/drift-b was changed"),
        ("drift-b", "Deployment rel-drift/drift-b was deleted"),
    ] {
        if !says(release, what) {
            tally.lost += 1;
            tally.problems.push(format!(
                "no drift report on {release} saying {what:?}: {reported:#?}"
            ));
        }
    }
    // The user sees it: `optikon status` shows drift-b deployed, with the drift as reason.
    let shown = optikon(&testbed, &["status", "drift-b", "-n", ns, "-o", "json"])?.ok()?;
    let shown: Vec<ReleaseStatus> = serde_json::from_str(&shown.stdout)?;
    ensure!(
        shown.iter().any(|s| s.cluster == site
            && s.state == ReleaseState::Deployed
            && s.reason
                .as_deref()
                .is_some_and(|r| r.contains("drift corrected"))),
        "optikon status shows the drift: {shown:?}"
    );
    let mut at_edge = corrections;
    at_edge.extend(request_at_edge);
    let mut at_hub = settled.converge;
    at_hub.push(reports_arrived);
    finish(
        "drift on a cut-off edge (Deployment deleted / scaled, ConfigMap edited; executor restarted offline)",
        &tally,
        &at_edge,
        &at_hub,
        &format!(
            "{injected} drifts, corrected offline (edge: drift to corrected; hub: restore to drift reported), 1 request made while cut"
        ),
    )
}

/// Commands that can never succeed end `failed` with a reason after one attempt, and block
/// neither other releases nor later requests for the same release.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_commands_fail_with_a_reason_and_block_nothing() -> anyhow::Result<()> {
    let testbed = prepared().await?;
    let ns = "rel-poison";
    let forbidden_ns = "rel-forbidden";
    let selector = "Kubecon=True";
    let sites = ["copenhagen-1", "copenhagen-2"];
    let js = hub_js(&testbed).await?;

    // A namespace being deleted refuses new objects (403): held by a finalizer of ours.
    for site in sites {
        let namespaces: Api<Namespace> = Api::all(kube_client(&testbed, site).await?);
        let namespace: Namespace = serde_json::from_value(json!({
            "metadata": {"name": forbidden_ns, "finalizers": ["optikon.dev/reliability-test"]}
        }))?;
        match namespaces.create(&PostParams::default(), &namespace).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
        namespaces
            .delete(forbidden_ns, &DeleteParams::default())
            .await?;
    }

    let mut yaml = Op::deploy(Action::Install, "poison-yaml", ns, selector, V1, 1);
    yaml.poison = true;
    let forbidden = Op::deploy(Action::Install, "poison-ns", forbidden_ns, selector, V1, 1);
    let good = Op::deploy(Action::Install, "poison-ok", ns, selector, V1, 2);
    let mut ops = vec![yaml, forbidden, good];
    let started = Instant::now();
    let started_at = Timestamp::now();
    submit_all(&testbed, &mut ops)?;
    let settled = settle(&js, &ops, started, &sites).await?;
    let mut at_edge = edge_converge(&testbed, &ops, &settled, &sites, started_at).await?;

    let mut tally = Tally::default();
    for (op, expect) in [
        (
            &ops[0],
            "YAML parse error on relchart/templates/poison.yaml",
        ),
        (&ops[1], "being terminated"),
    ] {
        for site in sites {
            tally.tried += 1;
            let progress = &settled.progress[&(op.id.clone(), site.to_owned())];
            let reason = progress.reason.clone().unwrap_or_default();
            if progress.state != ReleaseState::Failed || !reason.contains(expect) {
                tally.lost += 1;
                tally.problems.push(format!(
                    "{} on {site}: {:?} {reason:?}, expected failed with {expect:?}",
                    op.release, progress.state
                ));
            }
            // Failed for good at the first attempt: one "applying", one "failed".
            let statuses = stream_messages(
                &edge_js(&testbed, site).await?,
                &subject::status_stream(site),
                &subject::outbox_status(site, &op.namespace, &op.release),
            )
            .await?;
            let attempts = statuses
                .iter()
                .filter_map(|b| serde_json::from_slice::<ReleaseStatus>(b).ok())
                .filter(|s| s.generation == progress.generation && s.state == ReleaseState::Pending)
                .count();
            if attempts != 1 {
                tally.problems.push(format!(
                    "{} on {site} was attempted {attempts} times",
                    op.release
                ));
            }
            let records = records(&testbed, site, &op.namespace, &op.release).await?;
            if records
                .iter()
                .any(|r| r.generation == Some(progress.generation))
            {
                tally.duplicated += 1;
                tally.problems.push(format!(
                    "{} on {site} left a revision: {records:?}",
                    op.release
                ));
            }
        }
        // Visible to the user, with the reason.
        let shown = optikon(&testbed, &["status", &op.release, "-n", &op.namespace])?.ok()?;
        ensure!(
            shown.stdout.contains("failed") && shown.stdout.contains(expect),
            "optikon status shows the failure and its reason:\n{}",
            shown.stdout
        );
    }
    // The same release, asked again with a chart that renders: no longer poisoned.
    let mut cured = vec![Op::deploy(
        Action::Install,
        "poison-yaml",
        ns,
        selector,
        V1,
        1,
    )];
    let cured_at = Instant::now();
    let cured_ts = Timestamp::now();
    submit_all(&testbed, &mut cured)?;
    let cured_settled = settle(&js, &cured, cured_at, &sites).await?;
    at_edge.extend(edge_converge(&testbed, &cured, &cured_settled, &sites, cured_ts).await?);
    // The good release next to them, and the cured one after, are deployed.
    let mut good = verify(
        &testbed,
        &js,
        &ops[2..],
        &settled,
        &BTreeMap::new(),
        &BTreeSet::new(),
    )
    .await?;
    let cured_tally = verify(
        &testbed,
        &js,
        &cured,
        &cured_settled,
        &BTreeMap::new(),
        &BTreeSet::new(),
    )
    .await?;
    good.absorb(cured_tally);
    tally.absorb(good);

    for site in sites {
        let namespaces: Api<Namespace> = Api::all(kube_client(&testbed, site).await?);
        namespaces
            .patch(
                forbidden_ns,
                &PatchParams::default(),
                &Patch::Merge(json!({"metadata": {"finalizers": null}})),
            )
            .await?;
    }
    let mut at_hub = settled.converge;
    at_hub.extend(cured_settled.converge);
    finish(
        "poison: chart renders invalid YAML; namespace forbidden (being deleted)",
        &tally,
        &at_edge,
        &at_hub,
        "no fault to end: times from request to settled (failed once, or deployed for the good ones)",
    )
}

/// An edge cut off while more commands are sent to it than the hub keeps per cluster
/// (`COMMANDS_KEPT_PER_CLUSTER`): the oldest are dropped at the hub, among them the only
/// command of a release installed early in the cut. When the site comes back it registers
/// as returning, the router sends the desired state whose command was dropped again, and
/// every release converges; the dropped upgrades of the busy release stay pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_away_longer_than_command_retention_still_converges() -> anyhow::Result<()> {
    let mut testbed = prepared().await?;
    let site = "copenhagen-1";
    let ns = "rel-retain";
    let selector = "ID=123";
    let js = hub_js(&testbed).await?;
    let kept = optikon_runtime::topology::COMMANDS_KEPT_PER_CLUSTER as usize;

    let mut before = vec![Op::deploy(Action::Install, "retain-a", ns, selector, V1, 1)];
    submit_all(&testbed, &mut before)?;
    settle(&js, &before, Instant::now(), &[]).await?;
    let baseline = baseline(&testbed, &before, &[site]).await?;

    block(|| testbed.cut_link(site))?;
    // One release installed once, then the other changed more often than the hub keeps.
    let mut quiet = Op::deploy(Action::Install, "retain-b", ns, selector, V1, 1);
    quiet.id = format!("retain-b-{}", uuid::Uuid::new_v4().simple());
    publish_request(&js, &quiet, true).await?;
    let changes = kept + 8;
    let mut busy = Vec::new();
    for i in 0..changes {
        let mut op = Op::deploy(
            Action::Upgrade,
            "retain-a",
            ns,
            selector,
            V2,
            1 + (i as u32 % 3),
        );
        op.id = format!("retain-{i}-{}", uuid::Uuid::new_v4().simple());
        publish_request(&js, &op, true).await?;
        busy.push(op);
    }
    // The router has made every change's command; the hub keeps only the newest.
    let command_subject = subject::cluster_commands(site);
    let held = optikon_e2e::eventually(
        "the hub routed every change",
        Duration::from_secs(60),
        || async {
            let held = stream_messages(&js, subject::CMD_STREAM, &command_subject).await?;
            let newest = held
                .last()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                .and_then(|v| v["requestId"].as_str().map(str::to_owned));
            Ok((newest.as_deref() == Some(busy.last().expect("ops").id.as_str())).then_some(held))
        },
    )
    .await?;
    ensure!(
        held.len() == kept,
        "the hub holds {} commands for the cluster, not {kept}",
        held.len()
    );
    let held_ids: BTreeSet<String> = held
        .iter()
        .filter_map(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
        .filter_map(|v| v["requestId"].as_str().map(str::to_owned))
        .collect();
    ensure!(
        !held_ids.contains(&quiet.id),
        "the quiet release's only command should have been dropped at the hub"
    );
    // Dropped before the edge could get them: the quiet install and the oldest changes.
    let dropped = changes + 1 - kept;
    let evicted: BTreeSet<String> = busy[..dropped - 1].iter().map(|o| o.id.clone()).collect();

    let restore_at = Timestamp::now();
    block(|| testbed.restore_link(site))?;
    let restored = Instant::now();
    // The resend is one more command: it may push out the oldest kept one before the edge
    // pulled it, so that one may settle or stay pending; every newer one must settle.
    let maybe = busy[dropped - 1].clone();
    let mut must: Vec<Op> = busy[dropped..].to_vec();
    must.push(quiet.clone());
    let settled = settle(&js, &must, restored, &[site]).await?;
    let at_edge = edge_converge(&testbed, &must, &settled, &[site], restore_at).await?;
    let mut evicted = evicted;
    let mut with_evicted = settled.clone();
    let maybe_progress = request_progress(&js, &maybe.id, site).await?;
    if !maybe_progress.as_ref().is_some_and(|p| p.state.is_final()) {
        evicted.insert(maybe.id.clone());
    }
    let mut ops: Vec<Op> = vec![quiet.clone()];
    ops.extend(busy.iter().cloned());
    for op in &ops {
        if let Some(progress) = request_progress(&js, &op.id, site).await? {
            with_evicted
                .progress
                .insert((op.id.clone(), site.to_owned()), progress);
        }
    }
    let tally = verify(&testbed, &js, &ops, &with_evicted, &baseline, &evicted).await?;
    finish(
        &format!(
            "edge away for more commands than the hub keeps ({} to the cluster, {kept} kept; one release's only command among those dropped)",
            changes + 1
        ),
        &tally,
        &at_edge,
        &settled.converge,
        &format!(
            "{} oldest changes' commands dropped at the hub (superseded by the newest; their request entries stay pending: see docs); the dropped install was sent again when the site registered on its return",
            evicted.len()
        ),
    )
}

// ---------------------------------------------------------------------------------------
// Requests.
// ---------------------------------------------------------------------------------------

/// One release request and what it asks for.
#[derive(Debug, Clone)]
struct Op {
    id: String,
    action: Action,
    release: String,
    namespace: String,
    selector: String,
    chart_version: &'static str,
    replicas: u32,
    /// Unique per request, so the cluster shows which request its objects came from.
    message: String,
    min_ready_seconds: u32,
    poison: bool,
}

impl Op {
    fn deploy(
        action: Action,
        release: &str,
        namespace: &str,
        selector: &str,
        chart_version: &'static str,
        replicas: u32,
    ) -> Op {
        Op {
            id: String::new(),
            action,
            release: release.to_owned(),
            namespace: namespace.to_owned(),
            selector: selector.to_owned(),
            chart_version,
            replicas,
            message: format!("m-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]),
            min_ready_seconds: 0,
            poison: false,
        }
    }

    fn remove(release: &str, namespace: &str, selector: &str) -> Op {
        Op::deploy(Action::Uninstall, release, namespace, selector, V1, 0)
    }

    fn sites(&self) -> Vec<String> {
        let selector = LabelSelector::parse(&self.selector).expect("test selectors parse");
        Site::demo()
            .into_iter()
            .filter(|s| selector.matches(&s.labels))
            .map(|s| s.name)
            .collect()
    }

    fn values(&self) -> serde_json::Value {
        json!({
            "replicaCount": self.replicas,
            "message": self.message,
            "minReadySeconds": self.min_ready_seconds,
            "poison": self.poison,
        })
    }
}

/// Submits each request with the real CLI (`--no-wait`), in order; fills in the ids.
fn submit_all(testbed: &Testbed, ops: &mut [Op]) -> anyhow::Result<()> {
    for op in ops.iter_mut() {
        let mut args: Vec<String> = vec![op.action.to_string(), op.release.clone()];
        if matches!(op.action, Action::Install | Action::Upgrade) {
            args.extend([
                CHART.to_owned(),
                "--version".to_owned(),
                op.chart_version.to_owned(),
                "--set".to_owned(),
                format!("replicaCount={}", op.replicas),
                "--set-string".to_owned(),
                format!("message={}", op.message),
                "--set".to_owned(),
                format!("minReadySeconds={}", op.min_ready_seconds),
                "--set".to_owned(),
                format!("poison={}", op.poison),
            ]);
        }
        args.extend([
            "-n".to_owned(),
            op.namespace.clone(),
            "-l".to_owned(),
            op.selector.clone(),
            "--no-wait".to_owned(),
        ]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = block(|| optikon(testbed, &args)?.ok())?;
        op.id = out.stdout.trim().to_owned();
        ensure!(!op.id.is_empty(), "the CLI printed no request id");
    }
    Ok(())
}

/// Publishes a request straight onto its subject, as a script would.
async fn publish_request(
    js: &jetstream::Context,
    op: &Op,
    dedup_header: bool,
) -> anyhow::Result<()> {
    let mut body = json!({
        "apiVersion": "optikon/v1", "id": op.id, "action": op.action,
        "release": op.release, "namespace": op.namespace, "selector": op.selector,
    });
    if matches!(op.action, Action::Install | Action::Upgrade) {
        body["chart"] = json!({"name": CHART, "version": op.chart_version});
        body["values"] = op.values();
    }
    let headers = optikon_runtime::trace::headers(dedup_header.then_some(op.id.as_str()));
    js.publish_with_headers(subject::RELEASE_REQUEST, headers, body.to_string().into())
        .await?
        .await?;
    Ok(())
}

/// Publishes the newest command of a release on `site` again (the release's desired state,
/// which is what the router sent), with a message id of its own so the stream's dedup does
/// not catch it: the executor must.
async fn republish_command(
    js: &jetstream::Context,
    site: &str,
    namespace: &str,
    release: &str,
) -> anyhow::Result<()> {
    let newest = js
        .get_key_value(subject::DESIRED_BUCKET)
        .await?
        .get(subject::release_key(site, namespace, release))
        .await?
        .context("the release has no desired state to send again")?;
    let id = format!("repeat-{}", uuid::Uuid::new_v4().simple());
    js.publish_with_headers(
        subject::cluster_commands(site),
        optikon_runtime::trace::headers(Some(&id)),
        newest,
    )
    .await?
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Waiting for requests to settle.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Default)]
struct Settled {
    /// (request id, cluster) → progress as the hub last showed it.
    progress: BTreeMap<(String, String), ClusterProgress>,
    /// For the watched sites: time from the fault's end until each request settled there.
    converge: Vec<Duration>,
}

async fn request_progress(
    js: &jetstream::Context,
    id: &str,
    site: &str,
) -> anyhow::Result<Option<ClusterProgress>> {
    let Some(status) = request_status(js, id).await? else {
        return Ok(None);
    };
    Ok(status.clusters.get(site).cloned())
}

/// A request's status as the client library assembles it: the summary from `requests`,
/// every cluster's entry from `request-clusters`.
async fn request_status(
    js: &jetstream::Context,
    id: &str,
) -> anyhow::Result<Option<RequestStatus>> {
    let requests = js.get_key_value(subject::REQUESTS_BUCKET).await?;
    let Some(bytes) = requests.get(subject::token(id)).await? else {
        return Ok(None);
    };
    let mut status: RequestStatus = serde_json::from_slice(&bytes)?;
    status.clusters = optikon_client::request_clusters(js, id).await?;
    // The router writes the summary beside its clusters' entries, so for a moment the
    // summary can name more targets than are listed; such a status is not read yet.
    let targets = status.progress.map_or(0, |p| p.targets);
    if status.error.is_none() && status.clusters.len() < targets {
        return Ok(None);
    }
    Ok(Some(status))
}

/// Waits until the router has turned every request into commands (its status lists the
/// clusters).
async fn routed(js: &jetstream::Context, ops: &[Op]) -> anyhow::Result<()> {
    for op in ops {
        optikon_e2e::eventually(
            &format!("request {} routed", op.id),
            Duration::from_secs(30),
            || async {
                let Some(status) = request_status(js, &op.id).await? else {
                    return Ok(None);
                };
                Ok((!status.clusters.is_empty()).then_some(()))
            },
        )
        .await?;
    }
    Ok(())
}

/// Waits until every request has settled (not pending) on every cluster it targets; fails
/// naming those still pending after [`SETTLE_TIMEOUT`]. Times are measured for `watched`.
async fn settle(
    js: &jetstream::Context,
    ops: &[Op],
    fault_end: Instant,
    watched: &[&str],
) -> anyhow::Result<Settled> {
    let all: Vec<String> = Site::demo().into_iter().map(|s| s.name).collect();
    let all: Vec<&str> = all.iter().map(String::as_str).collect();
    settle_on(js, ops, fault_end, watched, &all).await
}

/// Like [`settle`], only for the requests' part on `sites`.
async fn settle_sites(
    js: &jetstream::Context,
    ops: &[Op],
    fault_end: Instant,
    sites: &[&str],
) -> anyhow::Result<Settled> {
    settle_on(js, ops, fault_end, &[], sites).await
}

async fn settle_on(
    js: &jetstream::Context,
    ops: &[Op],
    fault_end: Instant,
    watched: &[&str],
    sites: &[&str],
) -> anyhow::Result<Settled> {
    let mut settled = Settled::default();
    let mut open: BTreeSet<(String, String)> = BTreeSet::new();
    for op in ops {
        for site in op.sites() {
            if sites.contains(&site.as_str()) {
                open.insert((op.id.clone(), site));
            }
        }
    }
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        for op in ops {
            let Ok(Some(status)) = request_status(js, &op.id).await else {
                continue;
            };
            ensure!(
                status.error.is_none(),
                "request {} was refused: {:?}",
                op.id,
                status.error
            );
            let targets: BTreeSet<&String> = status.clusters.keys().collect();
            let expected = op.sites();
            ensure!(
                targets == expected.iter().collect(),
                "the router sent request {} for {} to {targets:?}, not {expected:?} (a \
                 matching cluster left out: see \"Known gaps\" in docs/reliability.md)",
                op.id,
                op.selector
            );
            for (site, progress) in status.clusters {
                let key = (op.id.clone(), site.clone());
                if progress.state.is_final()
                    && open.remove(&key)
                    && watched.contains(&site.as_str())
                {
                    settled.converge.push(fault_end.elapsed());
                }
                settled.progress.insert(key, progress);
            }
        }
        if open.is_empty() {
            return Ok(settled);
        }
        if Instant::now() > deadline {
            bail!(
                "{} request parts still pending {SETTLE_TIMEOUT:?} after the fault ended: {open:?}",
                open.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// When the edge carried out each request part on `sites` that it applied (superseded ones
/// change nothing on the cluster and are left out), counted from `since`: the first final
/// status it made for the request's generation, stamped by the edge's own clock.
async fn edge_converge(
    testbed: &Testbed,
    ops: &[Op],
    settled: &Settled,
    sites: &[&str],
    since: Timestamp,
) -> anyhow::Result<Vec<Duration>> {
    let mut times = Vec::new();
    for site in sites {
        let js = edge_js(testbed, site).await?;
        let mut statuses: BTreeMap<(String, String), Vec<ReleaseStatus>> = BTreeMap::new();
        for op in ops.iter().filter(|o| o.sites().iter().any(|s| s == site)) {
            let key = (op.namespace.clone(), op.release.clone());
            if !statuses.contains_key(&key) {
                let subject = subject::outbox_status(site, &op.namespace, &op.release);
                let bodies = stream_messages(&js, &subject::status_stream(site), &subject).await?;
                let parsed = bodies
                    .iter()
                    .filter_map(|b| serde_json::from_slice(b).ok())
                    .collect();
                statuses.insert(key.clone(), parsed);
            }
            let Some(progress) = settled
                .progress
                .get(&(op.id.clone(), (*site).to_owned()))
                .filter(|p| p.state != ReleaseState::Superseded)
            else {
                continue;
            };
            let first = statuses[&key]
                .iter()
                .filter(|s| s.generation == progress.generation && s.state.is_final())
                .map(|s| s.at)
                .min()
                .with_context(|| format!("{site} never settled {} by itself", op.id))?;
            times.push(Duration::from_secs_f64(since.seconds_until(first).max(0.0)));
        }
    }
    Ok(times)
}

// ---------------------------------------------------------------------------------------
// Checking the clusters against the requests.
// ---------------------------------------------------------------------------------------

/// One release record (Secret) on a cluster.
#[derive(Debug, Clone, PartialEq)]
struct Record {
    version: u32,
    status: String,
    generation: Option<u64>,
}

async fn records(
    testbed: &Testbed,
    site: &str,
    namespace: &str,
    release: &str,
) -> anyhow::Result<Vec<Record>> {
    let secrets: Api<Secret> = Api::namespaced(kube_client(testbed, site).await?, namespace);
    let list = secrets
        .list_metadata(&ListParams::default().labels(&format!("owner=helm,name={release}")))
        .await?;
    let mut records: Vec<Record> = list
        .items
        .iter()
        .filter_map(|s| {
            let labels = s.metadata.labels.as_ref()?;
            Some(Record {
                version: labels.get("version")?.parse().ok()?,
                status: labels.get("status").cloned().unwrap_or_default(),
                generation: labels
                    .get("optikon.dev/generation")
                    .and_then(|g| g.parse().ok()),
            })
        })
        .collect();
    records.sort_by_key(|r| r.version);
    Ok(records)
}

/// (site, release) → newest revision before the fault.
type Baseline = BTreeMap<(String, String), u32>;

async fn baseline(testbed: &Testbed, ops: &[Op], sites: &[&str]) -> anyhow::Result<Baseline> {
    let mut baseline = Baseline::new();
    for op in ops {
        for site in sites {
            let newest = records(testbed, site, &op.namespace, &op.release)
                .await?
                .last()
                .map_or(0, |r| r.version);
            baseline.insert(((*site).to_owned(), op.release.clone()), newest);
        }
    }
    Ok(baseline)
}

#[derive(Debug, Default)]
struct Tally {
    tried: usize,
    lost: usize,
    duplicated: usize,
    problems: Vec<String>,
}

impl Tally {
    fn absorb(&mut self, other: Tally) {
        self.tried += other.tried;
        self.lost += other.lost;
        self.duplicated += other.duplicated;
        self.problems.extend(other.problems);
    }

    fn lose(&mut self, problem: String) {
        self.lost += 1;
        self.problems.push(problem);
    }

    fn duplicate(&mut self, problem: String) {
        self.duplicated += 1;
        self.problems.push(problem);
    }
}

/// Checks every (site, release) the requests touched: Helm records, `helm`, the objects on
/// the cluster and the hub's view against the requests in the order they were made.
/// `evicted`: requests whose commands the hub dropped by its retention (never applied).
async fn verify(
    testbed: &Testbed,
    js: &jetstream::Context,
    ops: &[Op],
    settled: &Settled,
    baseline: &Baseline,
    evicted: &BTreeSet<String>,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::default();
    let releases_kv = js.get_key_value(subject::RELEASES_BUCKET).await?;
    let mut groups: BTreeMap<(String, String, String), Vec<&Op>> = BTreeMap::new();
    for op in ops {
        for site in op.sites() {
            groups
                .entry((site, op.namespace.clone(), op.release.clone()))
                .or_default()
                .push(op);
        }
    }
    for ((site, ns, release), ops) in groups {
        let known = baseline
            .get(&(site.clone(), release.clone()))
            .copied()
            .unwrap_or(0);
        let records = records(testbed, &site, &ns, &release).await?;
        let new: Vec<&Record> = records.iter().filter(|r| r.version > known).collect();
        let at = |what: &str| format!("{release} on {site}: {what}");
        let mut used: BTreeSet<u32> = BTreeSet::new();
        let applied: Vec<(&Op, &ClusterProgress)> = ops
            .iter()
            .filter_map(|op| {
                settled
                    .progress
                    .get(&(op.id.clone(), site.clone()))
                    .map(|p| (*op, p))
            })
            .collect();
        for (index, op) in ops.iter().enumerate() {
            tally.tried += 1;
            let progress = settled.progress.get(&(op.id.clone(), site.clone()));
            if evicted.contains(&op.id) {
                // Never reached the edge: nothing may carry its generation.
                if let Some(p) = progress
                    && records.iter().any(|r| r.generation == Some(p.generation))
                {
                    tally.duplicate(at(&format!("evicted generation {} applied", p.generation)));
                }
                continue;
            }
            let Some(progress) = progress.filter(|p| p.state.is_final()) else {
                tally.lose(at(&format!("request {} never settled", op.id)));
                continue;
            };
            let last = index == ops.len() - 1;
            match progress.state {
                ReleaseState::Deployed => {
                    let Some(revision) = progress.revision else {
                        tally.lose(at("deployed without a revision"));
                        continue;
                    };
                    if !used.insert(revision) {
                        tally.duplicate(at(&format!("revision {revision} reported twice")));
                    }
                    let labelled = records
                        .iter()
                        .filter(|r| r.generation == Some(progress.generation))
                        .count();
                    let record = records.iter().find(|r| r.version == revision);
                    // An uninstall after it relabels the newest record with its own generation.
                    let relabelled = record.is_some_and(|r| r.status == "uninstalled")
                        && ops[index + 1..]
                            .iter()
                            .any(|o| o.action == Action::Uninstall);
                    match record {
                        None => tally.lose(at(&format!("revision {revision} is missing"))),
                        Some(r) if r.generation != Some(progress.generation) && !relabelled => {
                            tally.lose(at(&format!(
                                "revision {revision} carries generation {:?}, not {}",
                                r.generation, progress.generation
                            )))
                        }
                        Some(_) => {}
                    }
                    if labelled > 1 {
                        tally.duplicate(at(&format!(
                            "generation {} has {labelled} revisions",
                            progress.generation
                        )));
                    }
                }
                ReleaseState::Superseded => {
                    if records
                        .iter()
                        .any(|r| r.generation == Some(progress.generation))
                    {
                        tally.duplicate(at(&format!(
                            "superseded generation {} was applied",
                            progress.generation
                        )));
                    }
                    if last {
                        tally.lose(at("the newest request was superseded"));
                    }
                }
                ReleaseState::Uninstalled => {}
                state => tally.lose(at(&format!(
                    "request {} ended {state}: {:?}",
                    op.id, progress.reason
                ))),
            }
        }
        // Every new revision belongs to exactly one applied request, in request order.
        for record in &new {
            if !used.contains(&record.version) {
                tally.duplicate(at(&format!(
                    "revision {} was made by no request",
                    record.version
                )));
            }
        }
        let generations: Vec<u64> = new.iter().filter_map(|r| r.generation).collect();
        if generations.windows(2).any(|w| w[0] >= w[1]) {
            tally.lose(at(&format!("revisions out of request order: {new:?}")));
        }
        // The real helm sees the same history.
        if !records.is_empty() {
            let history = block(|| {
                helm(
                    testbed,
                    &site,
                    &["history", &release, "-n", &ns, "-o", "json"],
                )?
                .ok()
            })?;
            let history: Vec<serde_json::Value> = serde_json::from_str(&history.stdout)?;
            ensure!(
                history.len() == records.len(),
                "helm history of {release} on {site} has {} revisions, the Secrets {}",
                history.len(),
                records.len()
            );
        }
        // The newest request is what runs, and what the hub shows.
        let Some(&(last_op, last)) = applied.iter().rfind(|(op, _)| !evicted.contains(&op.id))
        else {
            continue;
        };
        let hub_view = releases_kv
            .get(subject::release_key(&site, &ns, &release))
            .await?
            .map(|b| serde_json::from_slice::<ReleaseStatus>(&b))
            .transpose()?;
        let client = kube_client(testbed, &site).await?;
        let deployment = Api::<Deployment>::namespaced(client.clone(), &ns)
            .get_opt(&release)
            .await?;
        let listed = block(|| helm(testbed, &site, &["list", "-n", &ns, "-o", "json"])?.ok())?;
        let listed: Vec<serde_json::Value> = serde_json::from_str(&listed.stdout)?;
        let listed = listed.iter().find(|r| r["name"] == release.as_str());
        match last_op.action {
            Action::Install | Action::Upgrade => {
                let replicas = deployment
                    .as_ref()
                    .and_then(|d| d.spec.as_ref())
                    .and_then(|s| s.replicas);
                let config = Api::<ConfigMap>::namespaced(client.clone(), &ns)
                    .get_opt(&release)
                    .await?
                    .and_then(|c| c.data)
                    .unwrap_or_default();
                let want_revision = last.revision.unwrap_or(0).to_string();
                let helm_ok = listed.is_some_and(|r| {
                    r["status"] == "deployed" && r["revision"] == want_revision.as_str()
                });
                let hub_ok = hub_view.as_ref().is_some_and(|s| {
                    s.state == ReleaseState::Deployed
                        && s.revision == last.revision
                        && s.generation == last.generation
                });
                if replicas != Some(last_op.replicas as i32)
                    || config.get("message") != Some(&last_op.message)
                    || config.get("chart").map(String::as_str) != Some(last_op.chart_version)
                    || !helm_ok
                    || !hub_ok
                {
                    tally.lose(at(&format!(
                        "not at the newest request: replicas {replicas:?}, config {config:?}, \
                         helm {listed:?}, hub {hub_view:?}; wanted {last_op:?} at {last:?}"
                    )));
                } else {
                    let pods = running_pods(&client, &ns, &release).await?;
                    if pods != last_op.replicas as usize {
                        tally.lose(at(&format!(
                            "{pods} pods running, not {}",
                            last_op.replicas
                        )));
                    }
                }
            }
            Action::Uninstall => {
                let hub_ok = hub_view.as_ref().is_some_and(|s| {
                    s.state == ReleaseState::Uninstalled && s.generation == last.generation
                }) || (hub_view.is_none() && records.is_empty());
                if deployment.is_some() || listed.is_some() || !hub_ok {
                    tally.lose(at(&format!(
                        "still installed: deployment {}, helm {listed:?}, hub {hub_view:?}",
                        deployment.is_some()
                    )));
                }
            }
            Action::Rollback => {}
        }
    }
    Ok(tally)
}

// ---------------------------------------------------------------------------------------
// The report.
// ---------------------------------------------------------------------------------------

struct Row {
    fault: String,
    tried: usize,
    lost: usize,
    duplicated: usize,
    at_edge: (Duration, Duration),
    at_hub: (Duration, Duration),
    note: String,
}

static ROWS: StdMutex<Vec<Row>> = StdMutex::new(Vec::new());

/// (median, max).
fn spread(times: &[Duration]) -> (Duration, Duration) {
    let mut sorted = times.to_vec();
    sorted.sort();
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or_default();
    (median, sorted.last().copied().unwrap_or_default())
}

/// Adds the scenario's row to the table, prints and writes the table, then fails on any
/// loss, duplicate or other problem. `at_edge`: when the edge had settled each operation
/// after the fault ended (by its statuses' clock); `at_hub`: when the hub showed it.
fn finish(
    fault: &str,
    tally: &Tally,
    at_edge: &[Duration],
    at_hub: &[Duration],
    note: &str,
) -> anyhow::Result<()> {
    let table = {
        let mut rows = ROWS.lock().unwrap_or_else(|e| e.into_inner());
        rows.push(Row {
            fault: fault.to_owned(),
            tried: tally.tried,
            lost: tally.lost,
            duplicated: tally.duplicated,
            at_edge: spread(at_edge),
            at_hub: spread(at_hub),
            note: note.to_owned(),
        });
        let mut table = String::from(
            "| fault | operations tried | lost | duplicated | applied at the edge after the fault, median / max | settled at the hub, median / max | notes |\n\
             |---|---:|---:|---:|---:|---:|---|\n",
        );
        for row in rows.iter() {
            table.push_str(&format!(
                "| {} | {} | {} | {} | {:.1} s / {:.1} s | {:.1} s / {:.1} s | {} |\n",
                row.fault,
                row.tried,
                row.lost,
                row.duplicated,
                row.at_edge.0.as_secs_f64(),
                row.at_edge.1.as_secs_f64(),
                row.at_hub.0.as_secs_f64(),
                row.at_hub.1.as_secs_f64(),
                row.note
            ));
        }
        table
    };
    println!("\n{table}");
    let path = std::env::var_os("OPTIKON_RELIABILITY_REPORT")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("optikon-reliability.md"));
    std::fs::write(&path, &table).with_context(|| format!("write {}", path.display()))?;
    ensure!(
        tally.lost == 0 && tally.duplicated == 0 && tally.problems.is_empty(),
        "{fault}: {} lost, {} duplicated of {}:\n{}",
        tally.lost,
        tally.duplicated,
        tally.tried,
        tally.problems.join("\n")
    );
    ensure!(tally.tried > 0, "{fault}: nothing was tried");
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The test bed.
// ---------------------------------------------------------------------------------------

static PREPARED: AtomicBool = AtomicBool::new(false);

/// The shared test bed with short intervals for this suite's services, the suite's charts
/// pushed, every link up and every service running (a failed test may have left a fault).
async fn prepared() -> anyhow::Result<MutexGuard<'static, Testbed>> {
    let mut testbed = testbed().await;
    if !PREPARED.load(Ordering::SeqCst) {
        block(|| {
            for service in testbed.services.iter_mut() {
                if service.spec.name.starts_with("per-cluster-executor@") {
                    service.set_env("OPTIKON_DRIFT_CHECK_SECONDS", DRIFT_CHECK_SECONDS);
                    service.set_env("OPTIKON_ACK_WAIT_SECONDS", ACK_WAIT_SECONDS);
                    service.restart()?;
                }
            }
            anyhow::Ok(())
        })?;
        healthy(&mut testbed).await?;
        let dir = tempfile::tempdir()?;
        for version in [V1, V2] {
            let tgz = block(|| package_chart(&testbed, dir.path(), version))?;
            block(|| {
                optikon(
                    &testbed,
                    &["chart", "push", tgz.to_str().expect("utf-8 path")],
                )?
                .ok()
            })?;
        }
        PREPARED.store(true, Ordering::SeqCst);
    }
    healthy(&mut testbed).await?;
    Ok(testbed)
}

/// Waits until every site is registered and healthy, undoing meanwhile what a failed test
/// may have left (see [`heal`]).
async fn healthy(testbed: &mut Testbed) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        block(|| heal(testbed))?;
        let out = block(|| optikon(testbed, &["clusters", "-o", "json"]))?;
        if out.code == 0 {
            let clusters: Vec<ClusterRecord> = serde_json::from_str(&out.stdout)?;
            let now = Timestamp::now();
            let healthy = clusters
                .iter()
                .filter(|c| c.health(now) == Health::Healthy)
                .count();
            if healthy == testbed.edges.len() {
                return Ok(());
            }
        }
        ensure!(
            Instant::now() < deadline,
            "the edge clusters did not all become healthy: {}",
            out.stdout
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Undoes what a failed test may have left: cut links, extra replicas, and services that
/// are not running (restarted as a supervisor would: a hub service can also lose the
/// start-up race for the hub's streams, see docs/reliability.md).
fn heal(testbed: &mut Testbed) -> anyhow::Result<()> {
    let sites: Vec<String> = testbed.edges.iter().map(|e| e.site.name.clone()).collect();
    for site in sites {
        if !testbed.edge(&site)?.link.is_up() {
            println!("healing: restoring the link of {site}");
            testbed.restore_link(&site)?;
        }
    }
    testbed.services.retain(|s| !s.spec.name.contains('#'));
    for service in testbed.services.iter_mut() {
        if service.check_running().is_err() {
            println!("healing: restarting {}", service.spec.name);
            service.restart()?;
        }
    }
    Ok(())
}

/// The suite's chart: a Deployment (replicas, minReadySeconds from values) and a ConfigMap
/// naming the request's message and the chart version; `poison=true` renders invalid YAML.
fn package_chart(
    testbed: &Testbed,
    dir: &Path,
    version: &str,
) -> anyhow::Result<std::path::PathBuf> {
    let root = dir.join(format!("src-{version}")).join(CHART);
    std::fs::create_dir_all(root.join("templates"))?;
    let files = [
        (
            "Chart.yaml",
            format!(
                "apiVersion: v2\nname: {CHART}\ndescription: Workload of Optikon's fault-injection tests\n\
                 type: application\nversion: {version}\nappVersion: \"1.0\"\n"
            ),
        ),
        (
            "values.yaml",
            "replicaCount: 1\nmessage: hello\nminReadySeconds: 0\npoison: false\n".to_owned(),
        ),
        (
            "templates/deployment.yaml",
            r#"apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ .Release.Name }}
  labels:
    app.kubernetes.io/instance: {{ .Release.Name }}
    app.kubernetes.io/name: {{ .Chart.Name }}
spec:
  replicas: {{ .Values.replicaCount }}
  minReadySeconds: {{ .Values.minReadySeconds }}
  selector:
    matchLabels:
      app.kubernetes.io/instance: {{ .Release.Name }}
  template:
    metadata:
      labels:
        app.kubernetes.io/instance: {{ .Release.Name }}
    spec:
      containers:
        - name: app
          image: "registry.invalid/relchart:{{ .Chart.AppVersion }}"
"#
            .to_owned(),
        ),
        (
            "templates/configmap.yaml",
            r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}
data:
  message: {{ .Values.message | quote }}
  chart: {{ .Chart.Version | quote }}
"#
            .to_owned(),
        ),
        (
            "templates/poison.yaml",
            r#"{{- if .Values.poison }}
apiVersion: v1
kind: ConfigMap
metadata:
  name: {{ .Release.Name }}-poison
data: [this is: not, valid
{{- end }}
"#
            .to_owned(),
        ),
    ];
    for (path, text) in files {
        std::fs::write(root.join(path), text)?;
    }
    let out_dir = dir.join(format!("out-{version}"));
    std::fs::create_dir_all(&out_dir)?;
    let status = std::process::Command::new(testbed.tools().get("helm")?)
        .arg("package")
        .arg(&root)
        .arg("--destination")
        .arg(&out_dir)
        .output()?;
    ensure!(
        status.status.success(),
        "helm package: {}",
        String::from_utf8_lossy(&status.stderr)
    );
    Ok(out_dir.join(format!("{CHART}-{version}.tgz")))
}

async fn hub_js(testbed: &Testbed) -> anyhow::Result<jetstream::Context> {
    let client = optikon_runtime::connect_url(&testbed.admin_url(), "reliability-test").await?;
    Ok(jetstream::new(client))
}

async fn edge_client(testbed: &Testbed, site: &str) -> anyhow::Result<async_nats::Client> {
    Ok(optikon_runtime::connect_url(&testbed.edge(site)?.nats_url(), "reliability-test").await?)
}

async fn edge_js(testbed: &Testbed, site: &str) -> anyhow::Result<jetstream::Context> {
    Ok(jetstream::new(edge_client(testbed, site).await?))
}

/// Every message a stream holds on `subject`, oldest first.
async fn stream_messages(
    js: &jetstream::Context,
    stream: &str,
    subject: &str,
) -> anyhow::Result<Vec<bytes::Bytes>> {
    let stream = js.get_stream(stream).await?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut bodies = Vec::new();
    // A subject with nothing (more) on it delivers nothing: the timeout ends the read.
    while let Ok(Some(message)) =
        tokio::time::timeout(Duration::from_secs(2), messages.next()).await
    {
        let message = message?;
        let pending = message.info().map(|i| i.pending).unwrap_or(0);
        bodies.push(message.payload.clone());
        if pending == 0 {
            break;
        }
    }
    Ok(bodies)
}

/// A site's health and last-seen time as `optikon clusters` shows them now.
fn hub_health(testbed: &Testbed, site: &str) -> anyhow::Result<(Health, Option<Timestamp>)> {
    let out = block(|| optikon(testbed, &["clusters", "-o", "json"])?.ok())?;
    let clusters: Vec<ClusterRecord> = serde_json::from_str(&out.stdout)?;
    let record = clusters
        .into_iter()
        .find(|c| c.name == site)
        .with_context(|| format!("{site} is registered"))?;
    Ok((record.health(Timestamp::now()), record.last_seen()))
}

/// A service's log so far, without terminal colour codes.
fn service_log(testbed: &Testbed, name: &str) -> anyhow::Result<String> {
    let path = testbed
        .services
        .iter()
        .find(|s| s.spec.name == name)
        .with_context(|| format!("service {name}"))?
        .log()
        .to_owned();
    let text = std::fs::read_to_string(path)?;
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    Ok(plain)
}

fn soak_rounds() -> usize {
    std::env::var("OPTIKON_SOAK")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1usize)
        .max(1)
}

/// Release name suffix of a soak round: none for the first.
fn suffix(round: usize) -> String {
    if round == 0 {
        String::new()
    } else {
        format!("-{round}")
    }
}

/// Runs blocking work (processes, the test bed's waits) without stalling the runtime.
fn block<T, E: Into<anyhow::Error>>(f: impl FnOnce() -> Result<T, E>) -> anyhow::Result<T> {
    tokio::task::block_in_place(f).map_err(Into::into)
}
