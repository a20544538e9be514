//! Rollouts: release requests with a strategy reach their clusters wave by wave.
//!
//! A request with a strategy is accepted like any other (its summary, and an entry per
//! target cluster, here `queued`), and gets a [`Rollout`] record in the `rollouts` bucket.
//! Nothing is sent yet. The driver then moves an open rollout on whenever its request's
//! event says a cluster changed, and every one of them once a [`TICK`]: it reads the record, the request's entries and who is reachable, asks
//! [`next_step`] what to do, writes the record (compare-and-set) and only then acts: it
//! sends the clusters the step started, leaves out the ones it skipped, and starts the
//! rollback. A record written first and actions repeated until the entries show them make
//! a replica that dies mid-step harmless: the next tick, here or in another replica,
//! finishes the step, and every action is idempotent (desired state by request id, commands
//! by `Nats-Msg-Id`, entries by compare-and-set).
//!
//! Pause, resume and abort arrive on `optikon.api.rollout.control` and change the record.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use optikon_core::message::{
    Action, ApiError, ApiVersion, ChartPin, ClusterProgress, ClusterRecord, ErrorCode, Health,
    Heartbeat, ReleaseRequest, ReleaseState, ReleaseStatus, Reply, RequestProgress, RequestStatus,
    Timestamp, decode,
};
use optikon_core::rollout::{
    Rollout, RolloutControl, RolloutState, apply_control, assign_waves, next_step,
    rollback_request_id,
};
use optikon_core::selector::LabelSelector;
use optikon_core::subject;
use optikon_runtime::shutdown::Shutdown;

use crate::request::{
    Desired, count_and_send, merge_status, publish_commands, publish_event, record_outcome,
    set_desired,
};
use crate::{Hub, internal, read, write_if};

/// How often each open rollout is looked at.
pub const TICK: Duration = Duration::from_secs(1);
/// KV reads and writes in flight at once within one step.
const CONCURRENCY: usize = 64;

/// Accepts a request with a strategy: its summary, a `queued` entry per target, and its
/// rollout record. The driver sends the first wave.
pub async fn start(
    hub: &Hub,
    request: &ReleaseRequest,
    chart: Option<ChartPin>,
    clusters: Vec<ClusterRecord>,
    sequence: Option<u64>,
    mut status: RequestStatus,
) -> Result<(), ApiError> {
    let strategy = request.strategy.clone().expect("a rollout has a strategy");
    let selectors: Vec<(String, LabelSelector)> = strategy
        .waves
        .iter()
        .cloned()
        .zip(strategy.check(request.action)?)
        .collect();
    let waves = assign_waves(
        &selectors,
        clusters.iter().map(|c| (c.name.as_str(), &c.labels)),
    );
    status.progress = Some(RequestProgress {
        targets: clusters.len(),
        ..RequestProgress::default()
    });
    let status = merge_status(hub, status).await?;
    futures::stream::iter(clusters.iter().map(|cluster| async move {
        let queued = ClusterProgress {
            generation: 0,
            state: ReleaseState::Queued,
            revision: None,
            reason: None,
        };
        let key = subject::request_cluster_key(&request.id, &cluster.name);
        // A repeat of this request finds them made, and perhaps moved on: kept.
        write_if(&hub.request_clusters, &key, &queued, None).await
    }))
    .buffer_unordered(CONCURRENCY)
    .try_collect::<Vec<bool>>()
    .await?;
    let now = Timestamp::now();
    let rollout = Rollout {
        api_version: ApiVersion,
        id: request.id.clone(),
        action: request.action,
        release: request.release.clone(),
        namespace: request.namespace.clone(),
        strategy,
        state: RolloutState::Running,
        waves,
        wave: 0,
        started: BTreeMap::new(),
        reason: None,
        rollback_request: None,
        rollback_sent: false,
        request: request.clone(),
        chart,
        request_sequence: sequence,
        created_at: now,
        updated_at: now,
    };
    if !write_if(&hub.rollouts, &subject::token(&request.id), &rollout, None).await? {
        tracing::info!(id = %request.id, "rollout exists already (a repeat of its request)");
    }
    tracing::info!(id = %request.id, waves = rollout.waves.len(), targets = clusters.len(), "rollout accepted");
    publish_event(hub, &status).await
}

/// Moves every open rollout on, and answers controls, until shutdown.
pub async fn run(client: async_nats::Client, hub: Hub, shutdown: Shutdown) -> anyhow::Result<()> {
    let open: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    {
        // Every record ever written passes by once; the open ones are kept.
        let (open, bucket) = (open.clone(), hub.rollouts.clone());
        tokio::spawn(optikon_runtime::kv::follow_bucket(
            bucket,
            "rollouts",
            move |entry| {
                let mut open = open.lock().expect("open rollouts");
                if entry.operation == async_nats::jetstream::kv::Operation::Put {
                    open.insert(entry.key);
                } else {
                    open.remove(&entry.key);
                }
            },
        ));
    }
    let controls = client
        .queue_subscribe(subject::ROLLOUT_CONTROL, "selector-router".into())
        .await?;
    let answering = answer_controls(client.clone(), hub.clone(), controls);
    // A cluster of an open rollout finishing is announced as its request's event: look at
    // once instead of at the next tick. Every replica hears every event; each looks.
    let mut events = client
        .subscribe(format!("{}.*", subject::EVENT_REQUEST_PREFIX))
        .await?;
    let driving = async {
        let mut ticker = tokio::time::interval(TICK);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let woken_by: Option<String> = tokio::select! {
                _ = ticker.tick() => None,
                Some(event) = events.next() => event
                    .subject
                    .strip_prefix(subject::EVENT_REQUEST_PREFIX)
                    .and_then(|rest| rest.strip_prefix('.'))
                    .map(str::to_owned),
                _ = shutdown.wait() => return,
            };
            let keys: Vec<String> = {
                let open = open.lock().expect("open rollouts");
                match woken_by {
                    // An event of a request that is no open rollout: nothing to do.
                    Some(id) if !open.contains(&id) => continue,
                    Some(id) => vec![id],
                    None => open.iter().cloned().collect(),
                }
            };
            for key in keys {
                match drive_on(&hub, &key).await {
                    Ok(true) => {}
                    Ok(false) => {
                        // Finished, and nothing left to do for it.
                        open.lock().expect("open rollouts").remove(&key);
                    }
                    Err(error) => {
                        tracing::warn!(rollout = %key, %error, "rollout step failed; retried next tick")
                    }
                }
            }
        }
    };
    tokio::select! {
        _ = driving => Ok(()),
        r = answering => r,
    }
}

/// Steps a rollout for as long as each step passes a wave's gate (the next wave then starts
/// at once, not a tick later). `Ok(false)` once it is final and nothing is left to do.
async fn drive_on(hub: &Hub, key: &str) -> Result<bool, ApiError> {
    loop {
        let wave = read::<Rollout>(&hub.rollouts, key)
            .await?
            .map(|(r, _)| (r.wave, r.state));
        let open = drive(hub, key).await?;
        let after = read::<Rollout>(&hub.rollouts, key)
            .await?
            .map(|(r, _)| (r.wave, r.state));
        let passed_a_gate = matches!((wave, after), (Some((w0, RolloutState::Running)), Some((w1, RolloutState::Running))) if w1 > w0);
        if !open || !passed_a_gate {
            return Ok(open);
        }
    }
}

/// One step of one rollout. `Ok(false)` once it is final and nothing is left to do.
async fn drive(hub: &Hub, key: &str) -> Result<bool, ApiError> {
    let Some((mut rollout, revision)) = read::<Rollout>(&hub.rollouts, key).await? else {
        return Ok(false);
    };
    let entries = crate::fold::request_clusters(hub, &rollout.id).await?;
    let offline = unreachable(hub, &rollout, &entries).await;
    let rolled_back = match &rollout.rollback_request {
        Some(id) if rollout.rollback_sent => {
            read::<RequestStatus>(&hub.requests, &subject::token(id))
                .await?
                .is_some_and(|(s, _)| s.is_complete())
        }
        _ => false,
    };
    let step = next_step(
        &mut rollout,
        &entries,
        &offline,
        rolled_back,
        Timestamp::now(),
    );
    let nothing_to_do = step.start.is_empty()
        && step.resend.is_empty()
        && step.skip.is_empty()
        && !step.roll_back
        && !step.changed;
    if nothing_to_do {
        return Ok(!rollout.state.is_final());
    }
    if !step.start.is_empty() {
        record_previous_revisions(hub, &mut rollout, &step.start).await?;
    }
    if step.changed && !write_if(&hub.rollouts, key, &rollout, Some(revision)).await? {
        // Another replica moved it on first: look again next tick.
        return Ok(true);
    }
    if step.changed {
        tracing::info!(id = %rollout.id, state = %rollout.state, wave = rollout.wave + 1, started = step.start.len(), skipped = step.skip.len(), reason = rollout.reason.as_deref().unwrap_or(""), "rollout step");
    }
    let send: Vec<String> = step.start.iter().chain(&step.resend).cloned().collect();
    send_clusters(hub, &rollout, &send).await?;
    leave_out(hub, &rollout.id, &step.skip).await?;
    if step.roll_back {
        roll_back(hub, &rollout).await?;
        // Recorded as sent; a conflict only means the next tick sends (idempotently) again.
        if let Some((mut current, revision)) = read::<Rollout>(&hub.rollouts, key).await? {
            current.rollback_sent = true;
            current.updated_at = Timestamp::now();
            write_if(&hub.rollouts, key, &current, Some(revision)).await?;
        }
    }
    Ok(true)
}

/// The clusters of the current wave that have not finished and are unreachable now, with
/// the time of their last heartbeat (`None`: never heard from). Without the hub's
/// `heartbeats` bucket (a hub that just restarted) nothing is known, and nobody counts as
/// unreachable.
async fn unreachable(
    hub: &Hub,
    rollout: &Rollout,
    entries: &BTreeMap<String, ClusterProgress>,
) -> BTreeMap<String, Option<Timestamp>> {
    let Some(wave) = rollout.waves.get(rollout.wave) else {
        return BTreeMap::new();
    };
    if rollout.state != RolloutState::Running {
        return BTreeMap::new();
    }
    let Ok(heartbeats) = hub.js.get_key_value(subject::HEARTBEATS_BUCKET).await else {
        return BTreeMap::new();
    };
    let now = Timestamp::now();
    let open = wave
        .clusters
        .iter()
        .filter(|c| entries.get(*c).is_none_or(|p| !p.state.is_final()));
    futures::stream::iter(open.map(|cluster| {
        let heartbeats = heartbeats.clone();
        async move {
            let last = read::<Heartbeat>(&heartbeats, &subject::heartbeat_key(cluster))
                .await
                .ok()
                .flatten()
                .map(|(h, _)| h);
            match last {
                Some(h) if h.health(now) != Health::Unreachable => None,
                Some(h) => Some((cluster.clone(), Some(h.at))),
                None => Some((cluster.clone(), None)),
            }
        }
    }))
    .buffer_unordered(CONCURRENCY)
    .filter_map(|x| async move { x })
    .collect()
    .await
}

/// Notes, for each cluster about to start, the revision it runs now (for a rollback).
async fn record_previous_revisions(
    hub: &Hub,
    rollout: &mut Rollout,
    clusters: &[String],
) -> Result<(), ApiError> {
    let found: Vec<(String, Option<u32>)> = futures::stream::iter(clusters.iter().map(|c| {
        let key = subject::release_key(c, &rollout.namespace, &rollout.release);
        async move {
            let status = read::<ReleaseStatus>(&hub.releases, &key).await?;
            let revision = status
                .filter(|(s, _)| s.state == ReleaseState::Deployed)
                .and_then(|(s, _)| s.revision);
            Ok::<_, ApiError>((c.clone(), revision))
        }
    }))
    .buffer_unordered(CONCURRENCY)
    .try_collect()
    .await?;
    for (cluster, revision) in found {
        if let Some(started) = rollout.started.get_mut(&cluster) {
            started.previous_revision = revision;
        }
    }
    Ok(())
}

/// Sends the rollout's change to `clusters`: desired state, the entry moved from `queued`
/// to `pending`, then the command.
async fn send_clusters(hub: &Hub, rollout: &Rollout, clusters: &[String]) -> Result<(), ApiError> {
    if clusters.is_empty() {
        return Ok(());
    }
    let outcomes: Vec<Desired> = futures::stream::iter(clusters.iter().map(|cluster| async move {
        // Values follow the cluster's labels as they are when its turn comes.
        let labels = hub
            .cluster_view
            .get(cluster)
            .map(|c| c.labels)
            .unwrap_or_default();
        let outcome = set_desired(
            hub,
            &rollout.request,
            cluster,
            &labels,
            rollout.chart.clone(),
            rollout.request_sequence,
        )
        .await?;
        let next = match &outcome {
            Desired::Set(desired) => ClusterProgress {
                generation: desired.generation,
                state: ReleaseState::Pending,
                revision: None,
                reason: None,
            },
            Desired::Superseded(newer) => ClusterProgress {
                generation: newer.generation,
                state: ReleaseState::Superseded,
                revision: None,
                reason: Some(format!(
                    "request {} for this release was published later and already set it",
                    newer.request_id
                )),
            },
            Desired::Refused(reason) => crate::request::refused_entry(reason),
        };
        move_on_entry(hub, &rollout.id, cluster, next).await?;
        Ok::<_, ApiError>(outcome)
    }))
    .buffer_unordered(CONCURRENCY)
    .try_collect()
    .await?;
    let commands: Vec<_> = outcomes
        .into_iter()
        .filter_map(Desired::into_command)
        .collect();
    publish_commands(hub, &rollout.id, &commands).await
}

/// Marks clusters as left out, each with its reason.
async fn leave_out(hub: &Hub, id: &str, skip: &[(String, String)]) -> Result<(), ApiError> {
    futures::stream::iter(skip.iter().map(|(cluster, reason)| {
        let next = ClusterProgress {
            generation: 0,
            state: ReleaseState::Skipped,
            revision: None,
            reason: Some(reason.clone()),
        };
        move_on_entry(hub, id, cluster, next)
    }))
    .buffer_unordered(CONCURRENCY)
    .try_collect::<()>()
    .await
}

/// Replaces a cluster's `queued` entry with `next` and counts the change in the request's
/// summary. An entry already moved on (by another replica, or an earlier try) is kept.
async fn move_on_entry(
    hub: &Hub,
    id: &str,
    cluster: &str,
    next: ClusterProgress,
) -> Result<(), ApiError> {
    let key = subject::request_cluster_key(id, cluster);
    for _ in 0..20 {
        let current = read::<ClusterProgress>(&hub.request_clusters, &key).await?;
        let revision = match &current {
            Some((old, _)) if old.state != ReleaseState::Queued => return Ok(()),
            Some((_, revision)) => Some(*revision),
            None => None,
        };
        if write_if(&hub.request_clusters, &key, &next, revision).await? {
            let old = current.map(|(old, _)| old).unwrap_or(ClusterProgress {
                generation: 0,
                state: ReleaseState::Queued,
                revision: None,
                reason: None,
            });
            return count(hub, id, cluster, &old, next).await;
        }
    }
    Err(internal(
        "move a rollout's cluster on",
        format!("{key} kept changing"),
    ))
}

/// Applies one entry's change to the request's summary and announces it.
async fn count(
    hub: &Hub,
    id: &str,
    cluster: &str,
    old: &ClusterProgress,
    next: ClusterProgress,
) -> Result<(), ApiError> {
    let delta = old.delta(&next);
    let key = subject::token(id);
    for _ in 0..20 {
        let Some((mut summary, revision)) = read::<RequestStatus>(&hub.requests, &key).await?
        else {
            return Ok(());
        };
        if delta != (0, 0) {
            let progress = summary.progress.unwrap_or_default();
            summary.progress = Some(progress.apply(delta));
            if !write_if(&hub.requests, &key, &summary, Some(revision)).await? {
                continue;
            }
        }
        summary.clusters = BTreeMap::from([(cluster.to_owned(), next)]);
        return publish_event(hub, &summary).await;
    }
    Err(internal(
        "count a rollout's cluster",
        "too many concurrent updates",
    ))
}

/// Puts every cluster the rollout started back as it was: a rollback to the revision it
/// ran before, or an uninstall where it ran none. One request of its own,
/// `<id>-rollback`, whose status tells each cluster's result.
async fn roll_back(hub: &Hub, rollout: &Rollout) -> Result<(), ApiError> {
    let id = rollback_request_id(&rollout.id);
    let status = RequestStatus {
        api_version: ApiVersion,
        id: id.clone(),
        action: Some(Action::Rollback),
        release: rollout.release.clone(),
        namespace: rollout.namespace.clone(),
        selector: rollout.request.selector.clone(),
        error: None,
        clusters: BTreeMap::new(),
        progress: Some(RequestProgress {
            targets: rollout.started.len(),
            ..RequestProgress::default()
        }),
        accepted_at: Timestamp::now(),
    };
    let status = merge_status(hub, status).await?;
    let outcomes: Vec<Desired> =
        futures::stream::iter(rollout.started.iter().map(|(cluster, started)| {
            let mut request = rollout.request.clone();
            request.id = id.clone();
            request.strategy = None;
            request.atomic = false;
            match started.previous_revision {
                Some(revision) => {
                    request.action = Action::Rollback;
                    request.revision = Some(revision);
                }
                None => request.action = Action::Uninstall,
            }
            async move {
                let outcome = set_desired(
                    hub,
                    &request,
                    cluster,
                    &BTreeMap::new(),
                    None,
                    rollout.request_sequence,
                )
                .await?;
                record_outcome(hub, &request.id, cluster, &outcome).await?;
                Ok::<_, ApiError>(outcome)
            }
        }))
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    let (status, sent, _) = count_and_send(hub, status, outcomes).await?;
    tracing::info!(id = %rollout.id, rollback = %id, clusters = sent, "rollout rolled back what it changed");
    publish_event(hub, &status).await
}

/// Answers pause, resume and abort.
async fn answer_controls(
    client: async_nats::Client,
    hub: Hub,
    mut controls: async_nats::Subscriber,
) -> anyhow::Result<()> {
    while let Some(message) = controls.next().await {
        let reply = control(&hub, &message.payload).await;
        if let Some(inbox) = message.reply {
            let reply: Reply<Rollout> = reply.into();
            let body = serde_json::to_vec(&reply).expect("reply serializes");
            let _ = client.publish(inbox, body.into()).await;
        }
    }
    Ok(())
}

async fn control(hub: &Hub, body: &[u8]) -> Result<Rollout, ApiError> {
    let control: RolloutControl = decode("rollout control", body)?;
    let key = subject::token(&control.id);
    for _ in 0..20 {
        let Some((mut rollout, revision)) = read::<Rollout>(&hub.rollouts, &key).await? else {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!(
                    "no rollout {:?}: only a request with a strategy has one",
                    control.id
                ),
            ));
        };
        apply_control(&mut rollout, control.action, Timestamp::now())?;
        if write_if(&hub.rollouts, &key, &rollout, Some(revision)).await? {
            tracing::info!(id = %rollout.id, action = %control.action, state = %rollout.state, "rollout control");
            return Ok(rollout);
        }
    }
    Err(internal("control a rollout", "too many concurrent updates"))
}
