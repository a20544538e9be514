//! The Kubernetes side of the executor: carries out one desired generation of a release the
//! way Helm 3 would, and keeps Helm's release records so `helm list`/`history`/`get` agree.
//!
//! Install and upgrade render with the real `helm template` (the cluster's version and API
//! list), server-side apply in Helm's install order, prune what the previous revision had and
//! this one lacks, wait for readiness, then record the revision. Rollback re-applies a stored
//! revision's manifest, as `helm rollback` does. Uninstall deletes and keeps the history, as
//! `helm uninstall --keep-history` does. Each of these runs the release's hooks around its
//! changes as helm does (see `hooks`); test hooks are only recorded, for `helm test`.
//!
//! Errors are only for trouble worth a retry (API server unreachable, 5xx, a writer racing
//! for the same revision). Anything that would fail the same way again is an [`Outcome`] with
//! state `failed` and a reason.

mod catalog;
mod drift;
mod history;
mod hooks;
mod objects;
mod preview;
mod readiness;
mod render;
mod watch;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ListParams, ObjectMeta, PostParams, PropagationPolicy};
use optikon_core::chart;
use optikon_core::manifest::{self, HookEvent, ManifestObject, ObjectKey};
use optikon_core::message::{Action, ChartSummary, DesiredRelease, ReleaseState, Timestamp};
use optikon_core::release_record::{HelmChart, HelmRelease, Hook, Info, SecretWrite, Status};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use self::catalog::ApiCatalog;
use self::history::{History, StoredRecord};
use self::hooks::HookRunner;
use self::objects::Placed;
use self::render::RenderRequest;

pub use self::drift::{Correction, DeployedRelease, Drift, DriftReport};
pub use self::history::{GENERATION_LABEL, HISTORY_MAX, REQUEST_ID_ANNOTATION};

/// Field manager of Optikon's server-side applies.
pub const FIELD_MANAGER: &str = "optikon";
/// How long a release may take to become ready (or its objects to go) before it fails.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(120);

/// One Kubernetes cluster, reached with a kube client, plus the helm binary that renders for it.
pub struct ClusterTarget {
    client: kube::Client,
    helm: PathBuf,
    kube_version: String,
    /// Refreshed before each render, and after CRDs are created.
    catalog: RwLock<Arc<ApiCatalog>>,
    wait: Duration,
    /// The kubeconfig `client` was made from, for helm's `lookup`; `None`: helm finds the
    /// cluster as the client did (`KUBECONFIG`, or the pod's service account).
    kubeconfig: Option<PathBuf>,
    /// Drift correction's memory: each object's `resourceVersion` as last seen right after
    /// putting it in place; an object still at that version cannot have drifted.
    drift_seen: drift::Seen,
    /// Drift correction's last read of each release's newest record.
    drift_records: drift::DriftRecords,
    /// What the cluster's watches say of the objects helm manages.
    drift_watches: watch::Watches,
}

/// The newest Helm record of a release.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRelease {
    pub revision: u32,
    /// The Optikon generation it carried out; `None` for a revision made by hand with helm.
    pub generation: Option<u64>,
    /// Helm's status: `deployed`, `failed`, `superseded`, `uninstalled`, `uninstalling`, …
    pub status: String,
    pub chart: ChartSummary,
    pub first_deployed: Option<Timestamp>,
}

impl StoredRelease {
    /// Whether an attempt left this revision `pending-*`: cut off before it could say how
    /// it ended. Its generation is not carried out yet.
    pub fn is_interrupted(&self) -> bool {
        matches!(
            self.status.as_str(),
            "pending-install" | "pending-upgrade" | "pending-rollback"
        )
    }
}

/// What became of one desired generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub state: ReleaseState,
    pub revision: Option<u32>,
    pub chart: Option<ChartSummary>,
    pub reason: Option<String>,
    pub first_deployed: Option<Timestamp>,
}

impl Outcome {
    fn failed(reason: impl Into<String>) -> Self {
        Outcome {
            state: ReleaseState::Failed,
            revision: None,
            chart: None,
            reason: Some(reason.into()),
            first_deployed: None,
        }
    }

    fn with_chart(mut self, chart: &ChartSummary) -> Self {
        self.chart = Some(chart.clone());
        self
    }
}

/// Trouble worth retrying later; everything else is reported as a failed [`Outcome`].
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no usable Kubernetes configuration (set KUBECONFIG, or run in a pod): {0}")]
    Config(#[source] kube::Error),
    #[error("Kubernetes API call failed while trying to {doing}: {source}")]
    Api {
        doing: String,
        #[source]
        source: kube::Error,
    },
    #[error(
        "revision {revision} of release {release} in namespace {namespace} was recorded by \
         another writer first; retry to see its result"
    )]
    Conflict {
        namespace: String,
        release: String,
        revision: u32,
    },
    #[error(
        "cannot run helm at {path}: {source}; install it (scripts/install-tools) or point --helm at it"
    )]
    Helm {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("release record {secret} could not be encoded: {source}")]
    Record {
        secret: String,
        #[source]
        source: optikon_core::release_record::ReleaseRecordError,
    },
    #[error("{doing}: {source}")]
    Io {
        doing: String,
        #[source]
        source: std::io::Error,
    },
}

impl ClusterError {
    fn api(doing: impl Into<String>) -> impl FnOnce(kube::Error) -> ClusterError {
        let doing = doing.into();
        move |source| ClusterError::Api { doing, source }
    }

    fn io(doing: impl Into<String>, source: std::io::Error) -> Self {
        ClusterError::Io {
            doing: doing.into(),
            source,
        }
    }
}

/// Why a step stopped: a failure to report, or trouble to retry.
#[derive(Debug)]
enum Halt {
    Failed(String),
    Error(ClusterError),
}

impl From<ClusterError> for Halt {
    fn from(error: ClusterError) -> Self {
        Halt::Error(error)
    }
}

/// What kind of revision is being made; decides Helm's descriptions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verb {
    Install,
    Upgrade,
    Rollback(u32),
}

impl Verb {
    /// The record helm writes before it runs the pre hooks, overwritten when it is done.
    fn pending(self) -> (Status, String) {
        match self {
            Verb::Install => (
                Status::PendingInstall,
                "Initial install underway".to_owned(),
            ),
            Verb::Upgrade => (Status::PendingUpgrade, "Preparing upgrade".to_owned()),
            Verb::Rollback(to) => (Status::PendingRollback, format!("Rollback to {to}")),
        }
    }

    fn done(self) -> String {
        match self {
            Verb::Install => "Install complete".to_owned(),
            Verb::Upgrade => "Upgrade complete".to_owned(),
            Verb::Rollback(to) => format!("Rollback to {to}"),
        }
    }

    /// The hook events around the change, as helm runs them: a revision with no live one
    /// before it is an install, any other an upgrade.
    fn hook_events(self) -> (HookEvent, HookEvent) {
        match self {
            Verb::Install => (HookEvent::PreInstall, HookEvent::PostInstall),
            Verb::Upgrade => (HookEvent::PreUpgrade, HookEvent::PostUpgrade),
            Verb::Rollback(_) => (HookEvent::PreRollback, HookEvent::PostRollback),
        }
    }

    fn failed(self, release: &str, reason: &str) -> String {
        match self {
            Verb::Install => format!("Release {release:?} failed: {reason}"),
            Verb::Upgrade => format!("Upgrade {release:?} failed: {reason}"),
            Verb::Rollback(_) => format!("Rollback {release:?} failed: {reason}"),
        }
    }
}

/// What the cluster may still hold from earlier revisions.
#[derive(Debug, Default)]
struct Previous {
    /// The newest record, if its objects are live (not uninstalled or being uninstalled).
    live: Option<HelmRelease>,
    /// Objects of the newest record and of the last deployed one: a failed revision may have
    /// applied part of its objects, and those must be pruned too.
    objects: Vec<ManifestObject>,
}

/// A revision ready to be carried out: what it records and the objects it applies.
struct Plan {
    previous: Previous,
    release: HelmRelease,
    objects: Vec<ManifestObject>,
    /// From the chart's `crds/`, created before anything else.
    crds: Vec<ManifestObject>,
    verb: Verb,
}

/// An object to apply: placed now, or once the CRD defining its kind (earlier in the same
/// release) is established.
#[derive(Debug, Clone)]
enum Pending {
    Placed(Placed),
    AfterCrd(ManifestObject),
}

/// A chart archive unpacked for rendering and recording.
#[derive(Debug)]
struct LoadedChart {
    /// Paths relative to the chart root.
    files: Vec<(String, Vec<u8>)>,
    record: HelmChart,
    summary: ChartSummary,
}

impl ClusterTarget {
    /// Connects with the default kube config (`KUBECONFIG`, else `~/.kube/config`, else
    /// in-cluster), reads `/version` and the API groups.
    pub async fn connect(helm: PathBuf) -> Result<Self, ClusterError> {
        let client = kube::Client::try_default()
            .await
            .map_err(ClusterError::Config)?;
        let target = Self::connect_with(client, helm).await?;
        // helm runs with its home in scratch, so it would not find `~/.kube/config` itself;
        // `KUBECONFIG` and the service account it finds as the client did.
        let home_config = std::env::var_os("HOME")
            .map(|home| PathBuf::from(home).join(".kube/config"))
            .filter(|path| std::env::var_os("KUBECONFIG").is_none() && path.is_file());
        Ok(match home_config {
            Some(path) => target.with_kubeconfig(path),
            None => target,
        })
    }

    /// Like [`ClusterTarget::connect`], with a client made elsewhere.
    pub async fn connect_with(client: kube::Client, helm: PathBuf) -> Result<Self, ClusterError> {
        let version = client
            .apiserver_version()
            .await
            .map_err(ClusterError::api("read the API server version"))?;
        let catalog = ApiCatalog::discover(&client)
            .await
            .map_err(ClusterError::api("discover the served API groups"))?;
        Ok(ClusterTarget {
            client,
            helm,
            kube_version: version.git_version,
            catalog: RwLock::new(Arc::new(catalog)),
            wait: DEFAULT_WAIT,
            kubeconfig: None,
            drift_seen: drift::Seen::default(),
            drift_records: drift::DriftRecords::default(),
            drift_watches: watch::Watches::default(),
        })
    }

    /// The releases whose objects are edited or deleted, as the drift watches see it
    /// happen: (namespace, release). One listener at a time.
    pub fn drift_changes(&self) -> tokio::sync::mpsc::UnboundedReceiver<(String, String)> {
        self.drift_watches.subscribe()
    }

    /// How long to wait for readiness or deletion before failing (default [`DEFAULT_WAIT`]).
    pub fn with_wait_timeout(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// The kubeconfig file the client was made from, when [`ClusterTarget::connect_with`]
    /// was given a client that did not come from `KUBECONFIG`: helm's `lookup` needs it to
    /// reach the same cluster.
    pub fn with_kubeconfig(mut self, path: PathBuf) -> Self {
        self.kubeconfig = Some(path);
        self
    }

    /// `gitVersion` of the API server, e.g. `v1.34.4`.
    pub fn kubernetes_version(&self) -> &str {
        &self.kube_version
    }

    /// The newest Helm release record of (namespace, release), if any.
    pub async fn current(
        &self,
        namespace: &str,
        release: &str,
    ) -> Result<Option<StoredRelease>, ClusterError> {
        let history = self.history(namespace, release).await?;
        Ok(history.newest().map(|newest| StoredRelease {
            generation: history.generation(),
            ..newest.summary()
        }))
    }

    /// What became of `generation` here if it was carried out, though a newer generation
    /// replaced it since: an executor that died after applying it and before reporting it
    /// finds it so on the redelivery. `None` if no revision carries it (then it was never
    /// applied, and is superseded).
    pub async fn carried_out(
        &self,
        namespace: &str,
        release: &str,
        generation: u64,
    ) -> Result<Option<Outcome>, ClusterError> {
        let history = self.history(namespace, release).await?;
        Ok(history::carried_out(&history, generation))
    }

    /// Carries out one desired generation. `chart_tgz` is the chart archive for install and
    /// upgrade (`None` for rollback and uninstall, or when the generation is already applied).
    pub async fn execute(
        &self,
        desired: &DesiredRelease,
        chart_tgz: Option<&[u8]>,
    ) -> Result<Outcome, ClusterError> {
        let started = Instant::now();
        let history = self.history(&desired.namespace, &desired.release).await?;
        if let Some(outcome) = self.replay(desired, &history).await? {
            tracing::info!(
                release = %desired.release,
                namespace = %desired.namespace,
                generation = desired.generation,
                state = %outcome.state,
                revision = ?outcome.revision,
                "generation already settled; nothing applied"
            );
            return Ok(outcome);
        }
        let (history, resume) = self.take_over_interrupted(desired, history).await?;
        let resume = resume.as_ref();
        let outcome = match desired.action {
            Action::Install | Action::Upgrade => {
                match self.deploy(desired, chart_tgz, &history, resume).await {
                    Ok(outcome) if desired.atomic && outcome.state == ReleaseState::Failed => {
                        self.undo_failed(desired, outcome).await
                    }
                    other => other,
                }
            }
            Action::Rollback => self.rollback(desired, &history, resume).await,
            Action::Uninstall => self.uninstall(desired, &history).await,
        };
        match &outcome {
            Ok(outcome) => tracing::info!(
                release = %desired.release,
                namespace = %desired.namespace,
                generation = desired.generation,
                action = %desired.action,
                state = %outcome.state,
                revision = ?outcome.revision,
                reason = outcome.reason.as_deref().unwrap_or(""),
                elapsed_ms = started.elapsed().as_millis() as u64,
                "generation executed"
            ),
            Err(error) => tracing::warn!(
                release = %desired.release,
                namespace = %desired.namespace,
                generation = desired.generation,
                action = %desired.action,
                %error,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "generation interrupted; retry later"
            ),
        }
        outcome
    }

    /// The outcome already recorded for this generation, or `Superseded` if a newer one is.
    async fn replay(
        &self,
        desired: &DesiredRelease,
        history: &History,
    ) -> Result<Option<Outcome>, ClusterError> {
        let Some(newest) = history.newest() else {
            return Ok(None);
        };
        if newest.generation.is_none()
            && let Some(applied) = history.generation()
            && applied >= desired.generation
        {
            // Carried out, then changed by hand with helm on top (see drift correction).
            let mut outcome = newest
                .decode()
                .map(|r| history::outcome_of(&r))
                .unwrap_or_else(|e| Outcome::failed(unreadable(newest, &e)));
            if applied > desired.generation {
                outcome.state = ReleaseState::Superseded;
            }
            outcome.reason = Some(format!(
                "generation {applied} was carried out; revision {} was made outside Optikon \
                 after it",
                newest.version
            ));
            return Ok(Some(outcome));
        }
        match newest.generation {
            Some(applied) if applied > desired.generation => Ok(Some(
                history::carried_out(history, desired.generation).unwrap_or(Outcome {
                    state: ReleaseState::Superseded,
                    revision: None,
                    chart: None,
                    reason: Some(format!(
                        "generation {applied} is already applied (revision {})",
                        newest.version
                    )),
                    first_deployed: None,
                }),
            )),
            Some(applied) if applied == desired.generation => {
                let release = match newest.decode() {
                    Ok(release) => release,
                    Err(error) => return Ok(Some(Outcome::failed(unreadable(newest, &error)))),
                };
                if !history::is_settled(release.info.status) {
                    // Interrupted half-way (an uninstall): carry on.
                    return Ok(None);
                }
                if release.info.status == Status::Deployed {
                    // An earlier attempt may have stopped before superseding the old revision.
                    self.supersede(history, newest.version).await?;
                }
                let outcome = history::outcome_of(&release);
                if !matches!(desired.action, Action::Install | Action::Upgrade) {
                    return Ok(Some(outcome));
                }
                // An install or upgrade whose newest revision is a rollback, or uninstalled,
                // was undone (`atomic`); one still failed may have been cut off before that.
                Ok(Some(match release.info.status {
                    Status::Failed if desired.atomic => self.undo_failed(desired, outcome).await?,
                    Status::Uninstalled => Outcome {
                        state: ReleaseState::Failed,
                        reason: Some(release.info.description.clone()),
                        ..outcome
                    },
                    Status::Deployed if release.info.description.starts_with("Rollback to") => {
                        let failed = history
                            .records
                            .iter()
                            .rev()
                            .filter(|r| r.generation == Some(desired.generation))
                            .find(|r| r.status_label == Status::Failed.as_str())
                            .and_then(|r| r.decode().ok())
                            .map(|r| failure_of(&r))
                            .unwrap_or_default();
                        Outcome {
                            state: ReleaseState::Failed,
                            reason: Some(rolled_back_reason(&desired.release, &failed)),
                            ..outcome
                        }
                    }
                    _ => outcome,
                }))
            }
            _ => Ok(None),
        }
    }

    /// `atomic`: a failed install or upgrade is undone on this cluster, as helm's `--atomic`
    /// undoes it. A failed upgrade is rolled back to the newest revision that was deployed
    /// (`deployed` or `superseded`, as helm picks it); a failed install is uninstalled. The
    /// generation is still `failed`, its reason in helm's words. Unlike helm, the
    /// uninstalled install keeps its record (helm purges it), so the generation is known
    /// to be settled and is never applied again.
    async fn undo_failed(
        &self,
        desired: &DesiredRelease,
        failed: Outcome,
    ) -> Result<Outcome, ClusterError> {
        let (name, namespace) = (&desired.release, &desired.namespace);
        let history = self.history(namespace, name).await?;
        let Some(newest) = history
            .newest()
            .filter(|r| r.generation == Some(desired.generation))
            .filter(|r| r.status_label == Status::Failed.as_str())
        else {
            // Nothing was recorded (refused before any apply): nothing to undo.
            return Ok(failed);
        };
        let record = match newest.decode() {
            Ok(record) => record,
            Err(error) => return Ok(Outcome::failed(unreadable(newest, &error))),
        };
        let was_upgrade = record.info.description.starts_with("Upgrade ");
        if !was_upgrade && !record.info.description.starts_with("Release ") {
            // The undoing itself failed (a failed rollback revision): that is the outcome.
            return Ok(failed);
        }
        let error = failure_of(&record);
        let last_good = history.records.iter().rev().find(|r| {
            r.version != newest.version
                && [Status::Deployed.as_str(), Status::Superseded.as_str()]
                    .contains(&r.status_label.as_str())
        });
        let not_deployed = |outcome: Outcome, reason: String| Outcome {
            state: ReleaseState::Failed,
            reason: Some(reason),
            ..outcome
        };
        if was_upgrade {
            let Some(good) = last_good else {
                return Ok(not_deployed(
                    failed,
                    format!(
                        "unable to find a previously successful release when attempting to \
                         rollback. original upgrade error: {error}"
                    ),
                ));
            };
            tracing::info!(release = %name, namespace = %namespace, to = good.version, "upgrade failed and atomic is set: rolling back");
            let back = DesiredRelease {
                action: Action::Rollback,
                rollback_to: Some(good.version),
                atomic: false,
                ..desired.clone()
            };
            let rolled = self.rollback(&back, &history, None).await?;
            let reason = match rolled.state {
                ReleaseState::Deployed => rolled_back_reason(name, &error),
                _ => format!(
                    "an error occurred while rolling back the release. original upgrade error: \
                     {error}: {}",
                    rolled.reason.as_deref().unwrap_or("the rollback failed")
                ),
            };
            return Ok(not_deployed(rolled, reason));
        }
        tracing::info!(release = %name, namespace = %namespace, "install failed and atomic is set: uninstalling");
        let gone = DesiredRelease {
            action: Action::Uninstall,
            atomic: false,
            ..desired.clone()
        };
        let outcome = self.uninstall(&gone, &history).await?;
        if outcome.state != ReleaseState::Uninstalled {
            let reason = format!(
                "an error occurred while uninstalling the release. original install error: \
                 {error}: {}",
                outcome.reason.as_deref().unwrap_or("the uninstall failed")
            );
            return Ok(not_deployed(outcome, reason));
        }
        let reason = format!(
            "release {name} failed, and has been uninstalled due to atomic being set: {error}"
        );
        // The uninstalled record says why, where helm would have left none.
        let history = self.history(namespace, name).await?;
        if let Some(newest) = history.newest()
            && let Ok(mut record) = newest.decode()
        {
            record.info.description = reason.clone();
            self.update_record(newest, &record, Some(&desired.request_id))
                .await?;
        }
        Ok(not_deployed(outcome, reason))
    }

    /// A `pending-*` record on top of the history is an attempt cut off half-way (the
    /// executor died during its hooks or apply); helm would refuse to go on until someone
    /// rolls back. This generation's own attempt is taken over: returned apart from the
    /// history, its revision is written again. An older generation's is marked `failed`, as
    /// it never finished, and the history goes on from it.
    async fn take_over_interrupted(
        &self,
        desired: &DesiredRelease,
        mut history: History,
    ) -> Result<(History, Option<StoredRecord>), ClusterError> {
        let Some(newest) = history.newest() else {
            return Ok((history, None));
        };
        let Ok(mut release) = newest.decode() else {
            // Unreadable: each action reports that itself.
            return Ok((history, None));
        };
        if !release.info.status.is_pending() {
            return Ok((history, None));
        }
        if newest.generation == Some(desired.generation) {
            tracing::info!(
                release = %desired.release,
                namespace = %desired.namespace,
                revision = newest.version,
                "taking over this generation's interrupted revision"
            );
            let own = history.records.pop();
            return Ok((history, own));
        }
        if desired.action == Action::Uninstall {
            // The uninstall marks the newest record itself.
            return Ok((history, None));
        }
        tracing::info!(
            release = %desired.release,
            namespace = %desired.namespace,
            revision = newest.version,
            generation = ?newest.generation,
            "an older generation's revision was interrupted; marking it failed"
        );
        let reason = format!(
            "interrupted before it finished; generation {} carried on",
            desired.generation
        );
        release.info.description = match release.info.status {
            Status::PendingInstall => Verb::Install.failed(&release.name, &reason),
            Status::PendingRollback => Verb::Rollback(0).failed(&release.name, &reason),
            _ => Verb::Upgrade.failed(&release.name, &reason),
        };
        release.info.status = Status::Failed;
        let stored = newest.clone();
        let written = self.update_record(&stored, &release, None).await?;
        *history.records.last_mut().expect("newest exists") = written;
        Ok((history, None))
    }

    async fn history(&self, namespace: &str, release: &str) -> Result<History, ClusterError> {
        let secrets: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        let list = secrets
            .list(&ListParams::default().labels(&history::selector(release)))
            .await
            .map_err(ClusterError::api(format!(
                "list the records of release {release} in namespace {namespace}"
            )))?;
        Ok(History::new(list.items))
    }

    /// The catalog as last discovered.
    fn known_catalog(&self) -> Arc<ApiCatalog> {
        self.catalog
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    async fn refresh_catalog(&self) -> Result<Arc<ApiCatalog>, ClusterError> {
        let catalog = Arc::new(
            ApiCatalog::discover(&self.client)
                .await
                .map_err(ClusterError::api("discover the served API groups"))?,
        );
        *self.catalog.write().unwrap_or_else(|e| e.into_inner()) = catalog.clone();
        Ok(catalog)
    }

    /// Install and upgrade: render the chart and make the cluster match it.
    async fn deploy(
        &self,
        desired: &DesiredRelease,
        chart_tgz: Option<&[u8]>,
        history: &History,
        resume: Option<&StoredRecord>,
    ) -> Result<Outcome, ClusterError> {
        // Boxed, each: both are large futures, and `execute` runs on its caller's stack.
        match Box::pin(self.plan_deploy(desired, chart_tgz, history)).await? {
            Ok(plan) => Box::pin(self.carry_out(desired, history, resume, plan)).await,
            Err(refused) => Ok(refused),
        }
    }

    /// Install and upgrade up to the cluster: the rendered revision and its objects, or the
    /// outcome of a request that cannot be carried out (the chart does not render, ...).
    async fn plan_deploy(
        &self,
        desired: &DesiredRelease,
        chart_tgz: Option<&[u8]>,
        history: &History,
    ) -> Result<Result<Plan, Outcome>, ClusterError> {
        let (name, namespace) = (&desired.release, &desired.namespace);
        let previous = match previous(history, namespace) {
            Ok(previous) => previous,
            Err(reason) => return Ok(Err(Outcome::failed(reason))),
        };
        if desired.action == Action::Upgrade && previous.live.is_none() {
            return Ok(Err(Outcome::failed(format!(
                "release {name} has no deployed revision in namespace {namespace}; install it first"
            ))));
        }
        let Some(chart_tgz) = chart_tgz else {
            return Ok(Err(Outcome::failed(format!(
                "no chart archive was given to {} release {name}",
                desired.action
            ))));
        };
        let chart = match load_chart(chart_tgz) {
            Ok(chart) => chart,
            Err(reason) => return Ok(Err(Outcome::failed(reason))),
        };
        let values = match &desired.values {
            Value::Object(values) => values.clone(),
            Value::Null => Map::new(),
            other => {
                return Ok(Err(Outcome::failed(format!(
                    "values must be a JSON object of keys to values, not {}",
                    json_kind(other)
                ))
                .with_chart(&chart.summary)));
            }
        };

        let catalog = self.refresh_catalog().await?;
        let api_versions = catalog.api_versions();
        let request = RenderRequest {
            release: name,
            namespace,
            kube_version: &self.kube_version,
            api_versions: &api_versions,
            is_upgrade: previous.live.is_some(),
            values: &values,
            helm_values: &desired.helm_values,
            kubeconfig: self.kubeconfig.as_deref(),
        };
        let rendered = match render::render(&self.helm, &chart.files, &request).await? {
            Ok(rendered) => rendered,
            Err(reason) => {
                let reason = format!(
                    "chart {}-{} did not render: {reason}",
                    chart.summary.name, chart.summary.version
                );
                return Ok(Err(Outcome::failed(reason).with_chart(&chart.summary)));
            }
        };
        let mut record = chart.record;
        record.values = rendered.chart_values;
        render::type_as_helm(&mut record.metadata, &rendered.chart_yaml);
        let config = rendered.config;
        let notes = rendered.notes;
        let rendered = match manifest::parse(&rendered.manifest) {
            Ok(rendered) => rendered,
            Err(error) => {
                let reason = format!(
                    "chart {}-{} rendered invalid output: {error}",
                    chart.summary.name, chart.summary.version
                );
                return Ok(Err(Outcome::failed(reason).with_chart(&chart.summary)));
            }
        };
        let mut objects = rendered.objects;
        manifest::install_order(&mut objects);

        let now = OffsetDateTime::now_utc();
        let first_deployed = previous
            .live
            .as_ref()
            .and_then(|live| live.info.first_deployed)
            .unwrap_or(now);
        let release = HelmRelease {
            name: name.clone(),
            namespace: namespace.clone(),
            version: history.next_version(),
            info: Info {
                first_deployed: Some(first_deployed),
                last_deployed: Some(now),
                notes,
                ..Info::default()
            },
            chart: record,
            config,
            manifest: manifest::to_manifest_string(&objects),
            hooks: rendered.hooks.iter().map(Hook::from).collect(),
            labels: history::optikon_labels(desired.generation, history.next_version()),
        };
        let verb = if previous.live.is_some() {
            Verb::Upgrade
        } else {
            Verb::Install
        };
        Ok(Ok(Plan {
            previous,
            release,
            objects,
            crds: rendered.crds,
            verb,
        }))
    }

    /// Rollback: re-apply a stored revision's manifest (Helm's `helm rollback` never re-renders,
    /// and the record lacks subcharts, so re-rendering could not reproduce every release).
    async fn rollback(
        &self,
        desired: &DesiredRelease,
        history: &History,
        resume: Option<&StoredRecord>,
    ) -> Result<Outcome, ClusterError> {
        match Box::pin(self.plan_rollback(desired, history)).await? {
            Ok(plan) => Box::pin(self.carry_out(desired, history, resume, plan)).await,
            Err(refused) => Ok(refused),
        }
    }

    /// Rollback up to the cluster: the stored revision to return to, as a new revision.
    async fn plan_rollback(
        &self,
        desired: &DesiredRelease,
        history: &History,
    ) -> Result<Result<Plan, Outcome>, ClusterError> {
        let (name, namespace) = (&desired.release, &desired.namespace);
        let Some(newest) = history.newest() else {
            return Ok(Err(Outcome::failed(format!(
                "release {name} is not installed in namespace {namespace}; nothing to roll back"
            ))));
        };
        let target_version = desired
            .rollback_to
            .filter(|v| *v > 0)
            .unwrap_or(newest.version.saturating_sub(1));
        let Some(target) = history.get(target_version) else {
            return Ok(Err(Outcome::failed(format!(
                "release {name} in namespace {namespace} has no revision {target_version} to roll \
                 back to (it has {})",
                history.versions()
            ))));
        };
        let target = match target.decode() {
            Ok(target) => target,
            Err(error) => return Ok(Err(Outcome::failed(unreadable(target, &error)))),
        };
        let previous = match previous(history, namespace) {
            Ok(previous) => previous,
            Err(reason) => return Ok(Err(Outcome::failed(reason))),
        };
        let mut objects = match manifest::parse(&target.manifest) {
            Ok(rendered) => rendered.objects,
            Err(error) => {
                return Ok(Err(Outcome::failed(format!(
                    "revision {target_version} of release {name} has a manifest that cannot be \
                     read: {error}"
                ))));
            }
        };
        manifest::install_order(&mut objects);
        self.refresh_catalog().await?;

        let now = OffsetDateTime::now_utc();
        let first_deployed = previous
            .live
            .as_ref()
            .and_then(|live| live.info.first_deployed)
            .or(target.info.first_deployed)
            .unwrap_or(now);
        let release = HelmRelease {
            version: history.next_version(),
            info: Info {
                first_deployed: Some(first_deployed),
                last_deployed: Some(now),
                notes: target.info.notes.clone(),
                ..Info::default()
            },
            labels: history::optikon_labels(desired.generation, history.next_version()),
            ..target
        };
        Ok(Ok(Plan {
            previous,
            release,
            objects,
            crds: Vec::new(),
            verb: Verb::Rollback(target_version),
        }))
    }

    /// Records the revision `pending-*`, as helm does, then runs the hooks around the
    /// apply, prune and wait, and records how it ended. A failure before anything is applied
    /// leaves no record (as with helm); after (a hook counts), the revision is recorded
    /// `failed`. `resume` is this generation's own revision, left pending by an attempt that
    /// was cut off: it is written over, not added to.
    async fn carry_out(
        &self,
        desired: &DesiredRelease,
        history: &History,
        resume: Option<&StoredRecord>,
        plan: Plan,
    ) -> Result<Outcome, ClusterError> {
        let Plan {
            previous,
            mut release,
            objects,
            crds,
            verb,
        } = plan;
        let previous = &previous;
        let chart = history::chart_summary(&release.chart);
        if let Err(reason) = history::check_size(&release) {
            return Ok(Outcome::failed(reason).with_chart(&chart));
        }
        let (pending, prune) = match self.prepare(desired, previous, &objects, &crds).await {
            Ok(plan) => plan,
            Err(Halt::Failed(reason)) => return Ok(Outcome::failed(reason).with_chart(&chart)),
            Err(Halt::Error(error)) => return Err(error),
        };
        (release.info.status, release.info.description) = verb.pending();
        let request_id = desired.request_id.as_str();
        let recorded = match resume {
            Some(own) => self.update_record(own, &release, Some(request_id)).await?,
            None => match self.record_new(&release, request_id).await? {
                Ok(recorded) => recorded,
                Err(reason) => {
                    let reason = format!("nothing was applied: {reason}");
                    return Ok(Outcome::failed(reason).with_chart(&chart));
                }
            },
        };
        let applied = self
            .hooks_around(desired, &mut release.hooks, verb, &pending, &prune)
            .await;
        match applied {
            Ok(()) => {
                release.info.status = Status::Deployed;
                release.info.description = verb.done();
            }
            Err(Halt::Failed(reason)) => {
                release.info.status = Status::Failed;
                release.info.description = verb.failed(&release.name, &reason);
            }
            Err(Halt::Error(error)) => return Err(error),
        }
        // Should this write fail, the revision stays pending and the command is retried:
        // the retry takes the revision over.
        self.update_record(&recorded, &release, Some(request_id))
            .await?;
        tracing::info!(
            release = %release.name,
            namespace = %release.namespace,
            revision = release.version,
            status = %release.info.status,
            "revision recorded"
        );
        if release.info.status == Status::Deployed {
            self.supersede(history, release.version).await?;
        }
        self.trim(history, &release.namespace).await;
        Ok(history::outcome_of(&release))
    }

    /// The pre hooks, the change itself, the post hooks; each hook's run is noted in `hooks`.
    async fn hooks_around(
        &self,
        desired: &DesiredRelease,
        hooks: &mut [Hook],
        verb: Verb,
        pending: &[Pending],
        prune: &[Placed],
    ) -> Result<(), Halt> {
        let (pre, post) = verb.hook_events();
        self.run_hooks(&desired.namespace, hooks, pre).await?;
        self.converge(desired, pending, prune).await?;
        self.run_hooks(&desired.namespace, hooks, post).await
    }

    /// Runs the hooks of one event; a failure reads as helm's for that event.
    async fn run_hooks(
        &self,
        namespace: &str,
        hooks: &mut [Hook],
        event: HookEvent,
    ) -> Result<(), Halt> {
        let catalog = self.known_catalog();
        let runner = HookRunner {
            client: &self.client,
            catalog: &catalog,
            namespace,
            timeout: self.wait,
        };
        runner.run(hooks, event).await.map_err(|halt| match halt {
            Halt::Failed(error) => Halt::Failed(hooks::failure(event, &error)),
            other => other,
        })
    }

    /// Everything that can fail before the cluster's workloads change: the namespace, CRDs
    /// from `crds/` (Helm creates those first too), each object's resource, ownership. Returns
    /// the objects to apply (in order) and those to prune.
    async fn prepare(
        &self,
        desired: &DesiredRelease,
        previous: &Previous,
        objects: &[ManifestObject],
        crds: &[ManifestObject],
    ) -> Result<(Vec<Pending>, Vec<Placed>), Halt> {
        let namespace = &desired.namespace;
        self.ensure_namespace(namespace).await?;
        let catalog = if crds.is_empty() {
            self.known_catalog()
        } else {
            self.install_crds(crds, namespace).await?
        };

        // Kinds defined by CRDs among the templates are served once those are applied.
        let defined: BTreeMap<(String, String), bool> =
            objects.iter().filter_map(crd_defines).collect();
        let mut pending = Vec::with_capacity(objects.len());
        let mut keys = BTreeSet::new();
        for object in objects {
            let group_kind = (object.group().to_owned(), object.kind.clone());
            match objects::place(&catalog, object, namespace) {
                Some(p) => {
                    keys.insert(p.key());
                    pending.push(Pending::Placed(p));
                }
                None if defined.contains_key(&group_kind) => {
                    let key = object.key();
                    keys.insert(if defined[&group_kind] {
                        key.in_namespace(namespace)
                    } else {
                        key
                    });
                    pending.push(Pending::AfterCrd(object.clone()));
                }
                None => return Err(Halt::Failed(objects::unserved_reason(&catalog, object))),
            }
        }

        let previous_keys: BTreeSet<ObjectKey> = previous
            .objects
            .iter()
            .filter_map(|o| objects::place_for_delete(&catalog, o, namespace))
            .map(|p| p.key())
            .collect();
        for p in &pending {
            if let Pending::Placed(p) = p
                && !previous_keys.contains(&p.key())
            {
                objects::check_ownership(&self.client, p, &desired.release, namespace).await?;
            }
        }

        let mut stale: Vec<ManifestObject> = Vec::new();
        let mut seen = BTreeSet::new();
        for object in previous.objects.iter().filter(|o| !o.keeps_on_delete()) {
            match objects::place_for_delete(&catalog, object, namespace) {
                Some(p) if !keys.contains(&p.key()) && seen.insert(p.key()) => {
                    stale.push(object.clone());
                }
                Some(_) => {}
                None => tracing::warn!(
                    kind = %object.kind,
                    name = %object.name,
                    api_version = %object.api_version,
                    "previous object's kind is no longer served; not pruned"
                ),
            }
        }
        manifest::uninstall_order(&mut stale);
        let prune = stale
            .iter()
            .filter_map(|o| objects::place_for_delete(&catalog, o, namespace))
            .collect();
        Ok((pending, prune))
    }

    /// Apply in order, prune, wait.
    async fn converge(
        &self,
        desired: &DesiredRelease,
        pending: &[Pending],
        prune: &[Placed],
    ) -> Result<(), Halt> {
        let (release, namespace) = (&desired.release, &desired.namespace);
        let owner = Some((release.as_str(), namespace.as_str()));
        let mut catalog = self.known_catalog();
        let mut applied = Vec::with_capacity(pending.len());
        for p in pending {
            let p = match p {
                Pending::Placed(p) => p.clone(),
                Pending::AfterCrd(object) => {
                    // Its CRD was applied (and established) earlier in this loop.
                    if objects::place(&catalog, object, namespace).is_none() {
                        let kind = (object.api_version.clone(), object.kind.clone());
                        catalog = self.catalog_serving(&[kind]).await?;
                    }
                    objects::place(&catalog, object, namespace)
                        .ok_or_else(|| Halt::Failed(objects::unserved_reason(&catalog, object)))?
                }
            };
            objects::apply(&self.client, &p, owner).await?;
            if p.object.kind == "CustomResourceDefinition" {
                objects::wait_ready(&self.client, std::slice::from_ref(&p), self.wait).await?;
            }
            applied.push(p);
        }
        for p in prune {
            match objects::delete(&self.client, p, PropagationPolicy::Background).await {
                Ok(()) => tracing::info!(release = %release, object = %p.describe(), "pruned"),
                // Helm logs a failed prune and carries on; so do we.
                Err(Halt::Failed(reason)) => {
                    tracing::warn!(release = %release, object = %p.describe(), %reason, "could not prune");
                }
                Err(error) => return Err(error),
            }
        }
        objects::wait_ready(&self.client, &applied, self.wait).await
    }

    async fn ensure_namespace(&self, namespace: &str) -> Result<(), Halt> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        let exists = api
            .get_metadata_opt(namespace)
            .await
            .map_err(|e| objects::halt(e, || format!("look up namespace {namespace}")))?;
        if exists.is_some() {
            return Ok(());
        }
        let object = Namespace {
            metadata: ObjectMeta {
                name: Some(namespace.to_owned()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        match api.create(&PostParams::default(), &object).await {
            Ok(_) => {
                tracing::info!(namespace, "namespace created");
                Ok(())
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(e) => Err(objects::halt(e, || format!("create namespace {namespace}"))),
        }
    }

    /// Creates the chart's `crds/` CRDs that do not exist yet (never updates one, like Helm)
    /// and waits until they are established; returns the refreshed catalog.
    async fn install_crds(
        &self,
        crds: &[ManifestObject],
        namespace: &str,
    ) -> Result<Arc<ApiCatalog>, Halt> {
        let catalog = self.known_catalog();
        let mut created = Vec::new();
        for crd in crds {
            let Some(p) = objects::place(&catalog, crd, namespace) else {
                return Err(Halt::Failed(objects::unserved_reason(&catalog, crd)));
            };
            if objects::exists(&self.client, &p).await? {
                continue;
            }
            // Not part of the release (Helm leaves them out of the manifest, never deletes them).
            objects::apply(&self.client, &p, None).await?;
            tracing::info!(crd = %p.object.name, "CRD created");
            created.push(p);
        }
        if created.is_empty() {
            return Ok(catalog);
        }
        objects::wait_ready(&self.client, &created, self.wait).await?;
        let kinds: Vec<(String, String)> =
            created.iter().flat_map(|p| crd_kinds(&p.object)).collect();
        self.catalog_serving(&kinds).await
    }

    /// Rediscovers until every (`apiVersion`, kind) is served: an established CRD shows up in
    /// discovery a moment later. Gives up after the wait timeout and returns what it has.
    async fn catalog_serving(&self, kinds: &[(String, String)]) -> Result<Arc<ApiCatalog>, Halt> {
        let deadline = Instant::now() + self.wait;
        loop {
            let catalog = self.refresh_catalog().await?;
            let missing = kinds.iter().find(|(v, k)| catalog.resolve(v, k).is_none());
            match missing {
                None => return Ok(catalog),
                Some(_) if Instant::now() >= deadline => return Ok(catalog),
                Some((api_version, kind)) => {
                    tracing::debug!(%api_version, %kind, "waiting for discovery to serve a new kind");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// Creates the revision's Secret and returns it as stored. `Ok(Err(reason))` if the API
    /// server refuses it for good (e.g. the namespace is being deleted).
    async fn record_new(
        &self,
        release: &HelmRelease,
        request_id: &str,
    ) -> Result<Result<StoredRecord, String>, ClusterError> {
        let at = OffsetDateTime::now_utc();
        let secret = match history::record_secret(release, SecretWrite::Create { at }, request_id) {
            Ok(secret) => secret,
            Err(error) => {
                return Ok(Err(format!(
                    "the release record cannot be written: {error}"
                )));
            }
        };
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &release.namespace);
        match api.create(&PostParams::default(), &secret).await {
            Ok(created) => {
                // Not "revision recorded": that is said once the revision is settled, and
                // the benchmark's breakdown reads it as the end of the readiness wait.
                tracing::info!(
                    release = %release.name,
                    namespace = %release.namespace,
                    revision = release.version,
                    status = %release.info.status,
                    "pending revision recorded"
                );
                Ok(StoredRecord::from_secret(created).ok_or_else(|| {
                    format!(
                        "revision {} was recorded without its version label",
                        release.version
                    )
                }))
            }
            Err(kube::Error::Api(status)) if status.code == 409 => Err(ClusterError::Conflict {
                namespace: release.namespace.clone(),
                release: release.name.clone(),
                revision: release.version,
            }),
            Err(e) if objects::is_transient(&e) => Err(ClusterError::Api {
                doing: format!(
                    "record revision {} of release {}",
                    release.version, release.name
                ),
                source: e,
            }),
            Err(e) => Ok(Err(format!(
                "revision {} could not be recorded: {}",
                release.version,
                objects::rejection(&e)
            ))),
        }
    }

    /// Replaces a stored record with `release`; returns the record as now stored.
    async fn update_record(
        &self,
        stored: &StoredRecord,
        release: &HelmRelease,
        request_id: Option<&str>,
    ) -> Result<StoredRecord, ClusterError> {
        let secret = history::updated_secret(stored, release, request_id).map_err(|source| {
            ClusterError::Record {
                secret: stored.name(),
                source,
            }
        })?;
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &release.namespace);
        let written = api
            .replace(&stored.name(), &PostParams::default(), &secret)
            .await
            .map_err(ClusterError::api(format!(
                "update release record {}",
                stored.name()
            )))?;
        Ok(StoredRecord::from_secret(written).unwrap_or_else(|| stored.clone()))
    }

    /// Marks every other revision still `deployed` as `superseded`, as Helm does.
    async fn supersede(&self, history: &History, current: u32) -> Result<(), ClusterError> {
        for stored in history.deployed_except(current) {
            let mut release = match stored.decode() {
                Ok(release) => release,
                Err(error) => {
                    tracing::warn!(secret = %stored.name(), %error, "cannot supersede an unreadable record");
                    continue;
                }
            };
            release.info.status = Status::Superseded;
            self.update_record(stored, &release, None).await?;
        }
        Ok(())
    }

    /// Deletes the oldest revisions beyond [`HISTORY_MAX`]; a failure only delays that.
    async fn trim(&self, history: &History, namespace: &str) {
        let api: Api<Secret> = Api::namespaced(self.client.clone(), namespace);
        // `history` predates the revision just written, hence one fewer.
        for stored in history.beyond(HISTORY_MAX.saturating_sub(1)) {
            if let Err(error) = api.delete(&stored.name(), &Default::default()).await {
                tracing::warn!(secret = %stored.name(), %error, "could not delete an old revision");
            }
        }
    }

    /// Uninstall, keeping the history: run the pre-delete hooks, delete the objects, wait
    /// until gone, run the post-delete hooks, mark the newest record `uninstalled` (so
    /// `helm list` no longer shows the release). Hook objects stay unless their policy says
    /// otherwise, as with helm.
    async fn uninstall(
        &self,
        desired: &DesiredRelease,
        history: &History,
    ) -> Result<Outcome, ClusterError> {
        let (name, namespace) = (&desired.release, &desired.namespace);
        let Some(newest) = history.newest() else {
            return Ok(Outcome {
                state: ReleaseState::Uninstalled,
                revision: None,
                chart: None,
                reason: Some("not installed".to_owned()),
                first_deployed: None,
            });
        };
        let mut release = match newest.decode() {
            Ok(release) => release,
            Err(error) => return Ok(Outcome::failed(unreadable(newest, &error))),
        };
        if release.info.status == Status::Uninstalled {
            return Ok(Outcome {
                reason: Some("not installed (already uninstalled)".to_owned()),
                ..history::outcome_of(&release)
            });
        }
        let previous = match previous(history, namespace) {
            Ok(previous) => previous,
            Err(reason) => return Ok(Outcome::failed(reason)),
        };

        // Helm marks the record first, so an interrupted uninstall is visible (and resumable).
        let now = OffsetDateTime::now_utc();
        release.info.status = Status::Uninstalling;
        release.info.deleted = Some(now);
        release.info.description = "Deletion in progress (or silently failed)".to_owned();
        release
            .labels
            .insert(GENERATION_LABEL.to_owned(), desired.generation.to_string());
        let stored = self
            .update_record(newest, &release, Some(&desired.request_id))
            .await?;

        let catalog = self.refresh_catalog().await?;
        match self
            .run_hooks(namespace, &mut release.hooks, HookEvent::PreDelete)
            .await
        {
            Ok(()) => {}
            // Helm stops here: the objects stay, the record says `uninstalling`.
            Err(Halt::Failed(reason)) => {
                self.update_record(&stored, &release, Some(&desired.request_id))
                    .await?;
                return Ok(Outcome {
                    state: ReleaseState::Failed,
                    reason: Some(reason),
                    ..history::outcome_of(&release)
                });
            }
            Err(Halt::Error(error)) => return Err(error),
        }
        let mut doomed: Vec<ManifestObject> = Vec::new();
        let mut kept = Vec::new();
        let mut seen = BTreeSet::new();
        for object in &previous.objects {
            if object.keeps_on_delete() {
                kept.push(format!("{} {}", object.kind, object.name));
            } else if seen.insert(object.key().in_namespace(namespace)) {
                doomed.push(object.clone());
            }
        }
        manifest::uninstall_order(&mut doomed);
        let placed: Vec<Placed> = doomed
            .iter()
            .filter_map(|o| objects::place_for_delete(&catalog, o, namespace))
            .collect();

        let deleted = async {
            for p in &placed {
                objects::delete(&self.client, p, objects::uninstall_propagation(p)).await?;
            }
            objects::wait_gone(&self.client, &placed, self.wait).await
        };
        let mut errors = Vec::new();
        match deleted.await {
            Ok(()) => {
                match self
                    .run_hooks(namespace, &mut release.hooks, HookEvent::PostDelete)
                    .await
                {
                    Ok(()) => {}
                    // Helm still calls the release uninstalled, and reports the hook.
                    Err(Halt::Failed(reason)) => errors.push(reason),
                    Err(Halt::Error(error)) => return Err(error),
                }
                release.info.status = Status::Uninstalled;
                release.info.description = "Uninstallation complete".to_owned();
            }
            Err(Halt::Failed(reason)) => {
                release.info.description = format!("Uninstallation of {name:?} failed: {reason}");
            }
            Err(Halt::Error(error)) => return Err(error),
        }
        self.update_record(&stored, &release, Some(&desired.request_id))
            .await?;
        let mut outcome = history::outcome_of(&release);
        if release.info.status == Status::Uninstalling {
            outcome.state = ReleaseState::Failed;
            outcome.reason = Some(release.info.description.clone());
        } else if !errors.is_empty() {
            outcome.reason = Some(format!(
                "uninstallation completed with {} error(s): {}",
                errors.len(),
                errors.join("; ")
            ));
        } else if !kept.is_empty() {
            outcome.reason = Some(format!(
                "kept by their resource policy: {}",
                kept.join(", ")
            ));
        }
        Ok(outcome)
    }
}

/// The error of a failed revision, without helm's "Upgrade \"web\" failed: " in front.
fn failure_of(record: &HelmRelease) -> String {
    let description = &record.info.description;
    [
        format!("Upgrade {:?} failed: ", record.name),
        format!("Release {:?} failed: ", record.name),
    ]
    .iter()
    .find_map(|prefix| description.strip_prefix(prefix.as_str()))
    .unwrap_or(description)
    .to_owned()
}

/// helm's words for an upgrade undone by `--atomic`.
fn rolled_back_reason(release: &str, error: &str) -> String {
    format!("release {release} failed, and has been rolled back due to atomic being set: {error}")
}

/// What the cluster may hold from earlier revisions; `Err` if a record cannot be read.
fn previous(history: &History, namespace: &str) -> Result<Previous, String> {
    let Some(newest) = history.newest() else {
        return Ok(Previous::default());
    };
    let newest_release = newest.decode().map_err(|e| unreadable(newest, &e))?;
    if newest_release.info.status == Status::Uninstalled {
        return Ok(Previous::default());
    }
    let mut objects = parse_stored(&newest_release, newest)?;
    if let Some(deployed) = history
        .last_deployed()
        .filter(|d| d.version != newest.version)
    {
        let release = deployed.decode().map_err(|e| unreadable(deployed, &e))?;
        let known: BTreeSet<ObjectKey> = objects
            .iter()
            .map(|o| o.key().in_namespace(namespace))
            .collect();
        objects.extend(
            parse_stored(&release, deployed)?
                .into_iter()
                .filter(|o| !known.contains(&o.key().in_namespace(namespace))),
        );
    }
    let live = (newest_release.info.status != Status::Uninstalling).then_some(newest_release);
    Ok(Previous { live, objects })
}

fn parse_stored(
    release: &HelmRelease,
    stored: &StoredRecord,
) -> Result<Vec<ManifestObject>, String> {
    manifest::parse(&release.manifest)
        .map(|r| r.objects)
        .map_err(|e| {
            format!(
                "release record {} has a manifest that cannot be read ({e}); delete that Secret \
                 or fix the release by hand",
                stored.name()
            )
        })
}

fn unreadable(stored: &StoredRecord, error: &dyn std::fmt::Display) -> String {
    format!(
        "release record {} cannot be read ({error}); delete that Secret or fix the release by hand",
        stored.name()
    )
}

/// ((group, kind), namespaced) a CustomResourceDefinition object defines.
fn crd_defines(object: &ManifestObject) -> Option<((String, String), bool)> {
    if object.kind != "CustomResourceDefinition" {
        return None;
    }
    let group = object.body.pointer("/spec/group")?.as_str()?;
    let kind = object.body.pointer("/spec/names/kind")?.as_str()?;
    let namespaced = object.body.pointer("/spec/scope").and_then(Value::as_str) != Some("Cluster");
    Some(((group.to_owned(), kind.to_owned()), namespaced))
}

/// (`apiVersion`, kind) pairs a CustomResourceDefinition object serves.
fn crd_kinds(object: &ManifestObject) -> Vec<(String, String)> {
    let Some(((group, kind), _)) = crd_defines(object) else {
        return Vec::new();
    };
    let versions = object
        .body
        .pointer("/spec/versions")
        .and_then(Value::as_array);
    versions
        .into_iter()
        .flatten()
        .filter(|v| v.get("served").and_then(Value::as_bool) != Some(false))
        .filter_map(|v| v.get("name").and_then(Value::as_str))
        .map(|version| (format!("{group}/{version}"), kind.clone()))
        .collect()
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// Unpacks and checks a chart archive, and builds the chart as Helm records it.
fn load_chart(tgz: &[u8]) -> Result<LoadedChart, String> {
    let archive = chart::inspect(tgz, &chart::ChartLimits::default())
        .map_err(|e| format!("chart archive rejected: {e}"))?;
    // Helm's field names and omissions; the text of each field as written until helm's own
    // reading replaces it (see `render::type_as_helm`).
    let metadata = serde_json::to_value(&archive.metadata).expect("chart metadata serializes");
    // The chart's values as helm reads them come with the render; these stand in until then.
    let values = match archive.default_values() {
        Ok(Value::Object(values)) => values,
        Ok(_) => Map::new(),
        Err(e) => return Err(format!("chart values.yaml rejected: {e}")),
    };
    let files: Vec<(String, Vec<u8>)> = archive
        .files
        .into_iter()
        .map(|f| (f.path, f.data))
        .collect();
    let record = HelmChart::from_files(metadata, values, files.iter().cloned())
        .map_err(|e| format!("chart cannot be recorded: {e}"))?;
    let summary = history::chart_summary(&record);
    Ok(LoadedChart {
        files,
        record,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// The executor runs `execute` on a multi-threaded runtime, possibly in spawned tasks.
    #[allow(dead_code)]
    fn futures_are_send(target: &ClusterTarget, desired: &DesiredRelease) {
        fn send<T: Send>(_: T) {}
        send(target.execute(desired, None));
        send(target.current("ns", "release"));
        send(ClusterTarget::connect(PathBuf::new()));
    }

    #[test]
    fn descriptions_read_like_helms() {
        assert_eq!(Verb::Install.done(), "Install complete");
        assert_eq!(Verb::Upgrade.done(), "Upgrade complete");
        assert_eq!(Verb::Rollback(2).done(), "Rollback to 2");
        assert_eq!(
            Verb::Install.failed("web", "boom"),
            "Release \"web\" failed: boom"
        );
        assert_eq!(
            Verb::Upgrade.failed("web", "boom"),
            "Upgrade \"web\" failed: boom"
        );
        assert_eq!(
            Verb::Rollback(1).failed("web", "boom"),
            "Rollback \"web\" failed: boom"
        );
    }

    #[test]
    fn crds_in_templates_define_kinds() {
        let crd = ManifestObject {
            source: None,
            api_version: "apiextensions.k8s.io/v1".into(),
            kind: "CustomResourceDefinition".into(),
            name: "widgets.example.com".into(),
            namespace: None,
            body: json!({"spec": {
                "group": "example.com",
                "names": {"kind": "Widget", "plural": "widgets"},
                "versions": [{"name": "v1", "served": true}, {"name": "v0", "served": false}],
            }}),
            text: String::new(),
        };
        assert_eq!(
            crd_kinds(&crd),
            vec![("example.com/v1".to_owned(), "Widget".to_owned())]
        );
        assert_eq!(
            crd_defines(&crd),
            Some((("example.com".into(), "Widget".into()), true))
        );
        assert_eq!(
            crd_defines(&ManifestObject {
                kind: "ConfigMap".into(),
                ..crd
            }),
            None
        );
    }
}
