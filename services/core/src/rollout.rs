//! Fleet rollouts: a release request that reaches its clusters in waves, a few at a time,
//! behind a health gate, and stops (and optionally undoes itself) when too many fail.
//!
//! The request carries a [`RolloutStrategy`]. The router keeps one [`Rollout`] record per
//! such request in the hub's `rollouts` bucket and moves it on with [`next_step`], a pure
//! function of the record, each cluster's progress and which clusters are reachable. Every
//! router replica may run it: the record is written with compare-and-set, and what a step
//! sends is idempotent, so a replica that dies mid-step leaves nothing another cannot finish.
//! docs/rollouts.md explains the semantics for users.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::{
    Action, ApiError, ApiVersion, ChartPin, ClusterProgress, ErrorCode, ReleaseRequest,
    ReleaseState, Timestamp,
};
use crate::selector::LabelSelector;

/// How a request reaches its clusters when it should not reach all of them at once.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutStrategy {
    /// Label selectors, one per wave, in order. A target cluster belongs to the first wave
    /// whose selector it matches; the clusters no wave matches form one last wave.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub waves: Vec<String>,
    /// Clusters changing at once within a wave: a count ("2") or a share of the wave
    /// ("25%", at least one). Absent: the whole wave at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<Amount>,
    /// Failed clusters that stop the rollout: a count ("1") or a share of all targets
    /// ("10%", at least one). Absent: the rollout never stops by itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<Amount>,
    /// When the rollout stops on failures, return every cluster it changed to the revision it
    /// had before (a cluster that had none is uninstalled).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollback_on_failure: bool,
    /// Seconds a finished wave must stay healthy before the next one starts.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub soak_seconds: u64,
    /// What to do with a cluster that is unreachable when its turn comes.
    #[serde(default)]
    pub offline: OfflinePolicy,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A count of clusters, or a percentage of some whole. Written as `"3"` or `"25%"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Count(usize),
    Percent(u8),
}

impl Amount {
    /// This amount out of `whole` clusters: a percentage rounds down but is at least one
    /// (`25%` of 3 is 1), a count is what it says.
    pub fn of(self, whole: usize) -> usize {
        match self {
            Amount::Count(n) => n,
            Amount::Percent(p) => (whole * usize::from(p) / 100).max(1),
        }
    }
}

impl FromStr for Amount {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || format!("{text:?} is neither a count (\"2\") nor a percentage (\"25%\")");
        if let Some(percent) = text.strip_suffix('%') {
            let p: u8 = percent.trim().parse().map_err(|_| bad())?;
            if p == 0 || p > 100 {
                return Err(format!("{text:?}: a percentage must be from 1% to 100%"));
            }
            return Ok(Amount::Percent(p));
        }
        let n: usize = text.trim().parse().map_err(|_| bad())?;
        if n == 0 {
            return Err(format!("{text:?}: a count must be at least 1"));
        }
        Ok(Amount::Count(n))
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Count(n) => write!(f, "{n}"),
            Amount::Percent(p) => write!(f, "{p}%"),
        }
    }
}

impl Serialize for Amount {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Amount {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for Amount {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Amount".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "pattern": "^([1-9][0-9]*|([1-9]|[1-9][0-9]|100)%)$",
            "description": "A count of clusters (\"2\") or a percentage (\"25%\")."
        })
    }
}

/// What a rollout does with a cluster that is unreachable when its turn comes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum OfflinePolicy {
    /// Send it anyway (the hub keeps it until the site is back) and hold the wave's gate
    /// until the site has answered.
    #[default]
    Wait,
    /// Leave the cluster out: it is recorded as skipped, never as a success.
    Skip,
}

impl fmt::Display for OfflinePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OfflinePolicy::Wait => "wait",
            OfflinePolicy::Skip => "skip",
        })
    }
}

impl FromStr for OfflinePolicy {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "wait" => Ok(OfflinePolicy::Wait),
            "skip" => Ok(OfflinePolicy::Skip),
            other => Err(format!("offline policy {other:?}: use wait or skip")),
        }
    }
}

impl RolloutStrategy {
    /// Checks the strategy on its own and for `action`; returns the wave selectors parsed.
    pub fn check(&self, action: Action) -> Result<Vec<LabelSelector>, ApiError> {
        if action == Action::Uninstall {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "a rollout strategy applies to install, upgrade and rollback, not to uninstall",
            ));
        }
        if self.waves.len() > MAX_WAVES {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("{} waves: at most {MAX_WAVES}", self.waves.len()),
            ));
        }
        self.waves
            .iter()
            .enumerate()
            .map(|(i, wave)| {
                LabelSelector::parse(wave).map_err(|e| {
                    ApiError::new(
                        ErrorCode::BadSelector,
                        format!("wave {} selector {wave:?}: {e}", i + 1),
                    )
                })
            })
            .collect()
    }
}

/// Most waves one rollout may have.
pub const MAX_WAVES: usize = 64;

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    /// Starting clusters of the current wave, or waiting for its gate.
    Running,
    /// Asked to pause: nothing more starts; what started goes on.
    Paused,
    /// Every wave passed its gate (failures below the limit may remain).
    Succeeded,
    /// Stopped on reaching `max_failures`; nothing more starts.
    Failed,
    /// Stopped on reaching `max_failures`, and putting back what it changed.
    RollingBack,
    /// Stopped on failures and put back (the rollback request tells each cluster's result).
    RolledBack,
    /// Stopped by an abort; nothing more starts, nothing is undone.
    Aborted,
}

impl RolloutState {
    /// No step changes it any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RolloutState::Succeeded
                | RolloutState::Failed
                | RolloutState::RolledBack
                | RolloutState::Aborted
        )
    }
}

impl fmt::Display for RolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = serde_json::to_value(self)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        f.write_str(&text)
    }
}

/// One wave: its selector (empty for the last wave of clusters no selector matched) and its
/// clusters, in the order they start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutWave {
    pub selector: String,
    pub clusters: Vec<String>,
    /// When every cluster of the wave had finished; the soak time counts from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<Timestamp>,
}

/// A cluster this rollout has started, and what it ran before, for a rollback.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartedCluster {
    /// The release's deployed revision on the cluster before this rollout changed it; absent
    /// when it had none (a rollback then uninstalls it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_revision: Option<u32>,
}

/// A rollout as the hub keeps it (KV bucket `rollouts`, key = the request id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Rollout {
    pub api_version: ApiVersion,
    /// The release request's id; its progress is that request's status.
    pub id: String,
    pub action: Action,
    pub release: String,
    pub namespace: String,
    pub strategy: RolloutStrategy,
    pub state: RolloutState,
    pub waves: Vec<RolloutWave>,
    /// Index into `waves` of the wave now under way.
    pub wave: usize,
    /// Every cluster the rollout sent its change to.
    #[serde(default)]
    pub started: BTreeMap<String, StartedCluster>,
    /// Why it stopped, or what it waits for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The request that put back what this rollout changed (`<id>-rollback`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_request: Option<String>,
    /// Every command of the rollback request is sent.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub rollback_sent: bool,
    /// The request as it was published, for the clusters still to come.
    pub request: ReleaseRequest,
    /// The chart the request resolved to when it was accepted: every wave gets the same.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<ChartPin>,
    /// The request's sequence in `RELEASE_REQUESTS`: a later request for the release still
    /// wins over a wave that starts after it (see `DesiredRelease::request_sequence`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_sequence: Option<u64>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// The id of the request that rolls back rollout `id`.
pub fn rollback_request_id(id: &str) -> String {
    format!("{id}-rollback")
}

/// Assigns `clusters` (every target, in order) to waves: each to the first wave selector it
/// matches, the rest to a last wave. Empty waves are left out.
pub fn assign_waves<'a>(
    selectors: &[(String, LabelSelector)],
    clusters: impl IntoIterator<Item = (&'a str, &'a BTreeMap<String, String>)>,
) -> Vec<RolloutWave> {
    let mut waves: Vec<RolloutWave> = selectors
        .iter()
        .map(|(text, _)| RolloutWave {
            selector: text.clone(),
            clusters: Vec::new(),
            finished_at: None,
        })
        .collect();
    let mut rest = Vec::new();
    for (name, labels) in clusters {
        match selectors.iter().position(|(_, s)| s.matches(labels)) {
            Some(i) => waves[i].clusters.push(name.to_owned()),
            None => rest.push(name.to_owned()),
        }
    }
    waves.push(RolloutWave {
        selector: String::new(),
        clusters: rest,
        finished_at: None,
    });
    waves.retain(|w| !w.clusters.is_empty());
    waves
}

/// What the router is to do for a rollout now. Effects in this order: skip, start, then
/// write `rollout` (the record after the step), then roll back if asked.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Step {
    /// Clusters to start now (already added to `rollout.started`).
    pub start: Vec<String>,
    /// Clusters to leave out, with the reason for their entry.
    pub skip: Vec<(String, String)>,
    /// Clusters started whose entry does not show it yet (a step that stopped half way):
    /// send them again; sending is idempotent.
    pub resend: Vec<String>,
    /// Start the rollback of every started cluster.
    pub roll_back: bool,
    /// The record changed and must be written.
    pub changed: bool,
}

/// Whether a cluster's entry counts as a failure of the rollout.
fn failed(progress: &ClusterProgress) -> bool {
    progress.state == ReleaseState::Failed
}

/// Decides the next step of `rollout` from each target's entry in the request
/// (`entries`), the clusters that are unreachable now with the time of their last
/// heartbeat (`offline`), and the time. Mutates `rollout` into the record after the step.
/// `rolled_back` says whether the rollback request (if any) has finished.
pub fn next_step(
    rollout: &mut Rollout,
    entries: &BTreeMap<String, ClusterProgress>,
    offline: &BTreeMap<String, Option<Timestamp>>,
    rolled_back: bool,
    now: Timestamp,
) -> Step {
    let mut step = Step::default();
    let before = rollout.clone();
    let targets: usize = rollout.waves.iter().map(|w| w.clusters.len()).sum();
    let queued = |c: &str| {
        entries
            .get(c)
            .is_none_or(|p| p.state == ReleaseState::Queued)
    };

    // Started, but the entry was not moved on: finish sending them.
    step.resend = rollout
        .started
        .keys()
        .filter(|c| queued(c))
        .cloned()
        .collect();

    match rollout.state {
        RolloutState::RollingBack if rolled_back && rollout.rollback_sent => {
            rollout.state = RolloutState::RolledBack;
        }
        RolloutState::Running => {
            let failures = entries.values().filter(|p| failed(p)).count();
            let limit = rollout.strategy.max_failures.map(|a| a.of(targets));
            if let Some(limit) = limit.filter(|&l| failures >= l) {
                let stopped = format!(
                    "stopped: {failures} cluster(s) failed, the limit is {limit} ({})",
                    rollout.strategy.max_failures.expect("limit set")
                );
                step.skip = not_started(rollout, entries)
                    .map(|c| (c, format!("not started: the rollout {stopped}")))
                    .collect();
                if rollout.strategy.rollback_on_failure && !rollout.started.is_empty() {
                    rollout.state = RolloutState::RollingBack;
                    rollout.rollback_request = Some(rollback_request_id(&rollout.id));
                } else {
                    rollout.state = RolloutState::Failed;
                }
                rollout.reason = Some(stopped);
            } else {
                advance(rollout, entries, offline, now, &mut step);
            }
        }
        RolloutState::Paused | RolloutState::Succeeded => {}
        RolloutState::RollingBack
        | RolloutState::RolledBack
        | RolloutState::Failed
        | RolloutState::Aborted => {
            // Stopped: what never started is left out (an abort, or a step that stopped
            // between its record and the entries).
            let why = rollout
                .reason
                .clone()
                .unwrap_or_else(|| rollout.state.to_string());
            step.skip = not_started(rollout, entries)
                .filter(|c| queued(c))
                .map(|c| (c, format!("not started: the rollout {why}")))
                .collect();
        }
    }
    // Sent after the record is written; repeated until a write records it sent.
    step.roll_back = rollout.state == RolloutState::RollingBack && !rollout.rollback_sent;
    if *rollout != before {
        rollout.updated_at = now;
        step.changed = true;
    }
    step
}

/// Clusters in any wave that the rollout has not started and whose entry is not final.
fn not_started<'a>(
    rollout: &'a Rollout,
    entries: &'a BTreeMap<String, ClusterProgress>,
) -> impl Iterator<Item = String> + 'a {
    rollout
        .waves
        .iter()
        .flat_map(|w| &w.clusters)
        .filter(move |c| {
            !rollout.started.contains_key(*c) && entries.get(*c).is_none_or(|p| !p.state.is_final())
        })
        .cloned()
}

/// A running rollout: start what the current wave allows, pass its gate, or finish.
fn advance(
    rollout: &mut Rollout,
    entries: &BTreeMap<String, ClusterProgress>,
    offline: &BTreeMap<String, Option<Timestamp>>,
    now: Timestamp,
    step: &mut Step,
) {
    let finished = |c: &str| entries.get(c).is_some_and(|p| p.state.is_final());
    let mut skipped: BTreeSet<String> = BTreeSet::new();
    if rollout.wave < rollout.waves.len() {
        let wave = rollout.waves[rollout.wave].clone();
        let in_flight = wave
            .clusters
            .iter()
            .filter(|c| rollout.started.contains_key(*c) && !finished(c))
            .count();
        let allowed = rollout
            .strategy
            .max_unavailable
            .map_or(usize::MAX, |a| a.of(wave.clusters.len()));
        let mut room = allowed.saturating_sub(in_flight);
        for cluster in &wave.clusters {
            if rollout.started.contains_key(cluster) || finished(cluster) {
                continue;
            }
            if let Some(since) = offline.get(cluster)
                && rollout.strategy.offline == OfflinePolicy::Skip
            {
                let reason = match since {
                    Some(t) => format!("skipped: unreachable since {t}"),
                    None => "skipped: never heard from".to_owned(),
                };
                step.skip.push((cluster.clone(), reason));
                skipped.insert(cluster.clone());
                continue;
            }
            if room == 0 {
                continue;
            }
            room -= 1;
            rollout.started.insert(
                cluster.clone(),
                StartedCluster {
                    previous_revision: None,
                },
            );
            step.start.push(cluster.clone());
        }
        let wave_done = wave
            .clusters
            .iter()
            .all(|c| finished(c) || skipped.contains(c));
        if !wave_done {
            rollout.reason = waiting_reason(&wave, entries, offline);
            return;
        }
        let finished_at = *rollout.waves[rollout.wave].finished_at.get_or_insert(now);
        let soaked = finished_at.seconds_until(now) >= rollout.strategy.soak_seconds as f64;
        if !soaked {
            rollout.reason = Some(format!(
                "wave {} soaking for {} s",
                rollout.wave + 1,
                rollout.strategy.soak_seconds
            ));
            return;
        }
        // One wave per step: the next step sees the new wave's clusters with their own
        // reachability, read for that wave.
        rollout.wave += 1;
        if rollout.wave < rollout.waves.len() {
            rollout.reason = Some(format!("wave {} passed its gate", rollout.wave));
            return;
        }
    }
    rollout.state = RolloutState::Succeeded;
    rollout.reason = None;
}

/// What a wave still waits for, naming the clusters (unreachable ones with since when).
fn waiting_reason(
    wave: &RolloutWave,
    entries: &BTreeMap<String, ClusterProgress>,
    offline: &BTreeMap<String, Option<Timestamp>>,
) -> Option<String> {
    let waiting: Vec<String> = wave
        .clusters
        .iter()
        .filter(|c| entries.get(*c).is_none_or(|p| !p.state.is_final()))
        .map(|c| match offline.get(c) {
            Some(Some(since)) => format!("{c} (unreachable since {since})"),
            Some(None) => format!("{c} (never heard from)"),
            None => c.clone(),
        })
        .collect();
    (!waiting.is_empty()).then(|| format!("waiting for {}", waiting.join(", ")))
}

/// Asks the router to pause, resume or abort a rollout
/// (request/reply on `optikon.api.rollout.control`; reply: `Reply<Rollout>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RolloutControl {
    pub api_version: ApiVersion,
    /// The rollout's request id.
    pub id: String,
    pub action: ControlAction,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ControlAction {
    Pause,
    Resume,
    Abort,
}

impl fmt::Display for ControlAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ControlAction::Pause => "pause",
            ControlAction::Resume => "resume",
            ControlAction::Abort => "abort",
        })
    }
}

/// Applies a control to a rollout record; `Err` says why it does not apply. After an abort,
/// [`next_step`] leaves out the clusters that never started.
pub fn apply_control(
    rollout: &mut Rollout,
    action: ControlAction,
    now: Timestamp,
) -> Result<(), ApiError> {
    let refuse = |what: &str| {
        Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "rollout {} is {}: it cannot be {what}",
                rollout.id, rollout.state
            ),
        ))
    };
    match (action, rollout.state) {
        (ControlAction::Pause, RolloutState::Running) => {
            rollout.state = RolloutState::Paused;
            rollout.reason = Some("paused".into());
        }
        (ControlAction::Pause, RolloutState::Paused) => {}
        (ControlAction::Pause, _) => return refuse("paused"),
        (ControlAction::Resume, RolloutState::Paused) => {
            rollout.state = RolloutState::Running;
            rollout.reason = None;
        }
        (ControlAction::Resume, RolloutState::Running) => {}
        (ControlAction::Resume, _) => return refuse("resumed"),
        (ControlAction::Abort, RolloutState::Running | RolloutState::Paused) => {
            rollout.state = RolloutState::Aborted;
            rollout.reason = Some("aborted: nothing more starts; nothing is undone".into());
        }
        (ControlAction::Abort, RolloutState::Aborted) => {}
        (ControlAction::Abort, _) => return refuse("aborted"),
    }
    rollout.updated_at = now;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(state: ReleaseState) -> ClusterProgress {
        ClusterProgress {
            generation: 1,
            state,
            revision: None,
            reason: None,
        }
    }

    fn rollout(waves: &[&[&str]], strategy: RolloutStrategy) -> Rollout {
        Rollout {
            api_version: ApiVersion,
            id: "r1".into(),
            action: Action::Upgrade,
            release: "web".into(),
            namespace: "shop".into(),
            strategy: strategy.clone(),
            state: RolloutState::Running,
            waves: waves
                .iter()
                .map(|w| RolloutWave {
                    selector: String::new(),
                    clusters: w.iter().map(|c| c.to_string()).collect(),
                    finished_at: None,
                })
                .collect(),
            wave: 0,
            started: BTreeMap::new(),
            reason: None,
            rollback_request: None,
            rollback_sent: false,
            request: ReleaseRequest {
                api_version: ApiVersion,
                id: "r1".into(),
                action: Action::Upgrade,
                release: "web".into(),
                namespace: "shop".into(),
                selector: String::new(),
                chart: None,
                values: None,
                helm_values: Default::default(),
                revision: None,
                atomic: false,
                strategy: Some(strategy.clone()),
                overlays: Vec::new(),
            },
            chart: None,
            request_sequence: None,
            created_at: Timestamp::now(),
            updated_at: Timestamp::now(),
        }
    }

    fn queued(names: &[&str]) -> BTreeMap<String, ClusterProgress> {
        names
            .iter()
            .map(|n| (n.to_string(), entry(ReleaseState::Queued)))
            .collect()
    }

    fn later(t: Timestamp, seconds: i64) -> Timestamp {
        Timestamp(t.0 + time::Duration::seconds(seconds))
    }

    #[test]
    fn amounts_parse_and_resolve() {
        assert_eq!("3".parse::<Amount>().unwrap().of(10), 3);
        assert_eq!("25%".parse::<Amount>().unwrap().of(10), 2);
        assert_eq!("25%".parse::<Amount>().unwrap().of(3), 1, "at least one");
        for bad in ["0", "0%", "101%", "-1", "x", "2.5"] {
            assert!(bad.parse::<Amount>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&Amount::Percent(10)).unwrap();
        assert_eq!(json, "\"10%\"");
    }

    #[test]
    fn clusters_go_to_the_first_wave_they_match_and_the_rest_last() {
        let sel = |s: &str| (s.to_owned(), LabelSelector::parse(s).unwrap());
        let labels = |ring: &str| BTreeMap::from([("ring".to_owned(), ring.to_owned())]);
        let (canary, early, other) = (labels("canary"), labels("early"), labels("late"));
        let clusters = [("a", &early), ("b", &canary), ("c", &other), ("d", &early)];
        let waves = assign_waves(
            &[
                sel("ring=canary"),
                sel("ring in (canary,early)"),
                sel("ring=none"),
            ],
            clusters,
        );
        let names: Vec<Vec<&str>> = waves
            .iter()
            .map(|w| w.clusters.iter().map(String::as_str).collect())
            .collect();
        assert_eq!(names, vec![vec!["b"], vec!["a", "d"], vec!["c"]]);
        assert_eq!(waves[2].selector, "", "the rest; the empty wave is gone");
    }

    #[test]
    fn a_wave_starts_at_most_max_unavailable_at_once() {
        let strategy = RolloutStrategy {
            max_unavailable: Some(Amount::Count(2)),
            ..Default::default()
        };
        let mut r = rollout(&[&["a", "b", "c"]], strategy);
        let mut entries = queued(&["a", "b", "c"]);
        let now = Timestamp::now();
        let step = next_step(&mut r, &entries, &BTreeMap::new(), false, now);
        assert_eq!(step.start, vec!["a", "b"]);
        // Nothing more while both run.
        entries.insert("a".into(), entry(ReleaseState::Pending));
        entries.insert("b".into(), entry(ReleaseState::Pending));
        let step = next_step(&mut r, &entries, &BTreeMap::new(), false, now);
        assert!(step.start.is_empty(), "{step:?}");
        entries.insert("a".into(), entry(ReleaseState::Deployed));
        let step = next_step(&mut r, &entries, &BTreeMap::new(), false, now);
        assert_eq!(step.start, vec!["c"]);
    }

    #[test]
    fn the_next_wave_waits_for_the_soak_time() {
        let strategy = RolloutStrategy {
            soak_seconds: 30,
            ..Default::default()
        };
        let mut r = rollout(&[&["a"], &["b"]], strategy);
        let mut entries = queued(&["a", "b"]);
        let t0 = Timestamp::now();
        assert_eq!(
            next_step(&mut r, &entries, &BTreeMap::new(), false, t0).start,
            ["a"]
        );
        entries.insert("a".into(), entry(ReleaseState::Deployed));
        let step = next_step(&mut r, &entries, &BTreeMap::new(), false, later(t0, 10));
        assert!(step.start.is_empty());
        assert_eq!(r.reason.as_deref(), Some("wave 1 soaking for 30 s"));
        let step = next_step(&mut r, &entries, &BTreeMap::new(), false, later(t0, 40));
        assert!(
            step.start.is_empty(),
            "a step passes the gate, the next starts the wave"
        );
        assert_eq!(r.reason.as_deref(), Some("wave 1 passed its gate"));
        let step = next_step(&mut r, &entries, &BTreeMap::new(), false, later(t0, 41));
        assert_eq!(step.start, ["b"]);
        entries.insert("b".into(), entry(ReleaseState::Deployed));
        next_step(&mut r, &entries, &BTreeMap::new(), false, later(t0, 80));
        assert_eq!(r.state, RolloutState::Running, "the last wave soaks too");
        next_step(&mut r, &entries, &BTreeMap::new(), false, later(t0, 111));
        assert_eq!(r.state, RolloutState::Succeeded);
    }

    #[test]
    fn reaching_max_failures_stops_and_rolls_back_what_started() {
        let strategy = RolloutStrategy {
            max_failures: Some(Amount::Count(1)),
            rollback_on_failure: true,
            ..Default::default()
        };
        let mut r = rollout(&[&["a"], &["b", "c"], &["d"]], strategy);
        let mut entries = queued(&["a", "b", "c", "d"]);
        let now = Timestamp::now();
        next_step(&mut r, &entries, &BTreeMap::new(), false, now);
        entries.insert("a".into(), entry(ReleaseState::Deployed));
        next_step(&mut r, &entries, &BTreeMap::new(), false, now);
        let step = next_step(&mut r, &entries, &BTreeMap::new(), false, now);
        assert_eq!(step.start, ["b", "c"]);
        entries.insert("b".into(), entry(ReleaseState::Failed));
        entries.insert("c".into(), entry(ReleaseState::Pending));
        let step = next_step(&mut r, &entries, &BTreeMap::new(), false, now);
        assert!(step.roll_back);
        assert_eq!(r.state, RolloutState::RollingBack);
        assert_eq!(
            step.skip
                .iter()
                .map(|(c, _)| c.as_str())
                .collect::<Vec<_>>(),
            ["d"],
            "wave 3 never starts"
        );
        assert_eq!(r.rollback_request.as_deref(), Some("r1-rollback"));
        let step = next_step(&mut r, &entries, &BTreeMap::new(), true, now);
        assert!(step.roll_back, "asked again until it is recorded as sent");
        assert_eq!(r.state, RolloutState::RollingBack);
        r.rollback_sent = true;
        let step = next_step(&mut r, &entries, &BTreeMap::new(), false, now);
        assert!(!step.roll_back);
        assert_eq!(
            r.state,
            RolloutState::RollingBack,
            "until the rollback request is done"
        );
        next_step(&mut r, &entries, &BTreeMap::new(), true, now);
        assert_eq!(r.state, RolloutState::RolledBack);
    }

    #[test]
    fn without_rollback_a_stopped_rollout_is_failed() {
        let strategy = RolloutStrategy {
            max_failures: Some(Amount::Count(1)),
            ..Default::default()
        };
        let mut r = rollout(&[&["a"], &["b"]], strategy);
        let mut entries = queued(&["a", "b"]);
        let now = Timestamp::now();
        next_step(&mut r, &entries, &BTreeMap::new(), false, now);
        entries.insert("a".into(), entry(ReleaseState::Failed));
        let step = next_step(&mut r, &entries, &BTreeMap::new(), false, now);
        assert!(!step.roll_back);
        assert_eq!(r.state, RolloutState::Failed);
        assert_eq!(step.skip.len(), 1);
    }

    #[test]
    fn offline_clusters_wait_or_are_skipped_and_never_succeed() {
        let now = Timestamp::now();
        let since = later(now, -60);
        let offline = BTreeMap::from([("b".to_owned(), Some(since))]);
        // wait: sent anyway, and the gate holds, naming it.
        let mut r = rollout(&[&["a", "b"], &["c"]], RolloutStrategy::default());
        let mut entries = queued(&["a", "b", "c"]);
        assert_eq!(
            next_step(&mut r, &entries, &offline, false, now).start,
            ["a", "b"]
        );
        entries.insert("a".into(), entry(ReleaseState::Deployed));
        entries.insert("b".into(), entry(ReleaseState::Pending));
        let step = next_step(&mut r, &entries, &offline, false, now);
        assert!(step.start.is_empty());
        let reason = r.reason.clone().unwrap();
        assert!(reason.contains("b (unreachable since"), "{reason}");
        // skip: left out, and the next wave goes on.
        let strategy = RolloutStrategy {
            offline: OfflinePolicy::Skip,
            ..Default::default()
        };
        let mut r = rollout(&[&["a", "b"], &["c"]], strategy);
        let mut entries = queued(&["a", "b", "c"]);
        let step = next_step(&mut r, &entries, &offline, false, now);
        assert_eq!(step.start, ["a"]);
        assert_eq!(step.skip[0].0, "b");
        assert!(step.skip[0].1.starts_with("skipped: unreachable since"));
        entries.insert("a".into(), entry(ReleaseState::Deployed));
        entries.insert("b".into(), entry(ReleaseState::Skipped));
        next_step(&mut r, &entries, &offline, false, now);
        assert_eq!(
            next_step(&mut r, &entries, &offline, false, now).start,
            ["c"]
        );
    }

    #[test]
    fn a_paused_rollout_starts_nothing_until_resumed() {
        let mut r = rollout(&[&["a"], &["b"]], RolloutStrategy::default());
        let mut entries = queued(&["a", "b"]);
        let now = Timestamp::now();
        next_step(&mut r, &entries, &BTreeMap::new(), false, now);
        apply_control(&mut r, ControlAction::Pause, now).unwrap();
        entries.insert("a".into(), entry(ReleaseState::Deployed));
        assert!(
            next_step(&mut r, &entries, &BTreeMap::new(), false, now)
                .start
                .is_empty()
        );
        apply_control(&mut r, ControlAction::Resume, now).unwrap();
        next_step(&mut r, &entries, &BTreeMap::new(), false, now);
        assert_eq!(
            next_step(&mut r, &entries, &BTreeMap::new(), false, now).start,
            ["b"]
        );
    }

    #[test]
    fn controls_that_do_not_apply_are_refused_by_name() {
        let mut r = rollout(&[&["a"]], RolloutStrategy::default());
        r.state = RolloutState::Succeeded;
        let err = apply_control(&mut r, ControlAction::Abort, Timestamp::now()).unwrap_err();
        assert_eq!(err.message, "rollout r1 is succeeded: it cannot be aborted");
        let mut r = rollout(&[&["a"], &["b"]], RolloutStrategy::default());
        apply_control(&mut r, ControlAction::Abort, Timestamp::now()).unwrap();
        assert_eq!(r.state, RolloutState::Aborted);
        let step = next_step(
            &mut r,
            &queued(&["a", "b"]),
            &BTreeMap::new(),
            false,
            Timestamp::now(),
        );
        assert_eq!(step.skip.len(), 2, "an abort leaves out what never started");
        assert!(
            step.skip[0]
                .1
                .starts_with("not started: the rollout aborted"),
            "{:?}",
            step.skip
        );
    }

    #[test]
    fn a_started_cluster_whose_entry_still_says_queued_is_sent_again() {
        let mut r = rollout(&[&["a", "b"]], RolloutStrategy::default());
        r.started.insert(
            "a".into(),
            StartedCluster {
                previous_revision: Some(3),
            },
        );
        let step = next_step(
            &mut r,
            &queued(&["a", "b"]),
            &BTreeMap::new(),
            false,
            Timestamp::now(),
        );
        assert_eq!(step.resend, ["a"]);
        assert_eq!(step.start, ["b"]);
    }

    #[test]
    fn strategies_are_checked() {
        let s = RolloutStrategy {
            waves: vec!["ring=canary".into(), "ring in (".into()],
            ..Default::default()
        };
        let err = s.check(Action::Upgrade).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadSelector);
        assert!(
            err.message.starts_with("wave 2 selector"),
            "{}",
            err.message
        );
        let err = RolloutStrategy::default()
            .check(Action::Uninstall)
            .unwrap_err();
        assert!(err.message.contains("not to uninstall"));
    }
}
