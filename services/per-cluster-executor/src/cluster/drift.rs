//! Drift correction: puts a deployed release's objects back the way its newest Helm record
//! says, without a new revision, and says what had drifted.
//!
//! Everything comes from the cluster itself (the record's stored manifest), so it works while
//! the edge is cut off from the hub. Server-side apply with Optikon's field manager is a no-op
//! for an object nobody touched (no write, same `resourceVersion`); an object someone deleted
//! comes back, and fields someone edited that Optikon manages are set back, which the API
//! server shows by a new `metadata.generation` (or, for kinds without one, a new
//! `resourceVersion`). Fields Optikon never set are not its business and stay as they are.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::PartialObjectMeta;
use optikon_core::manifest;
use optikon_core::message::{Action, ChartSummary, ReleaseState, Timestamp};
use optikon_core::release_record::{self, HelmRelease, Status};
use serde_json::Value;

use super::history::{self, GENERATION_LABEL, REQUEST_ID_ANNOTATION, StoredRecord};
use super::objects::{self, Placed};
use super::watch;
use super::{ClusterError, ClusterTarget, Halt, Outcome};

/// Objects' `resourceVersion` right after drift correction last looked at them, keyed by
/// resource, namespace and name. Lets a pass skip the apply (a write) for every object that
/// has not changed since: only changed or missing objects are applied again.
#[derive(Debug, Default)]
pub(crate) struct Seen(Mutex<HashMap<String, String>>);

impl Seen {
    fn get(&self, key: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .cloned()
    }

    fn set(&self, key: String, resource_version: Option<String>) {
        let mut seen = self.0.lock().unwrap_or_else(|e| e.into_inner());
        match resource_version {
            Some(version) => {
                seen.insert(key, version);
            }
            None => {
                seen.remove(&key);
            }
        }
    }
}

/// A release's newest record as a drift pass needs it.
#[derive(Debug)]
pub(crate) struct DriftRead {
    /// The record Secret's `resourceVersion`: while it stays, so does all of this.
    record_version: Option<String>,
    objects: Vec<manifest::ManifestObject>,
    report: DriftReport,
}

/// The last [`DriftRead`] of each release, so a pass decodes a record only once it changed.
#[derive(Debug, Default)]
pub(crate) struct DriftRecords(Mutex<HashMap<(String, String), Arc<DriftRead>>>);

impl DriftRecords {
    fn get(&self, key: &(String, String), record_version: &str) -> Option<Arc<DriftRead>> {
        let records = self.0.lock().unwrap_or_else(|e| e.into_inner());
        records
            .get(key)
            .filter(|read| read.record_version.as_deref() == Some(record_version))
            .cloned()
    }

    fn put(&self, key: (String, String), read: Arc<DriftRead>) {
        let mut records = self.0.lock().unwrap_or_else(|e| e.into_inner());
        records.insert(key, read);
    }

    fn retain(&self, keep: impl Fn(&(String, String)) -> bool) {
        let mut records = self.0.lock().unwrap_or_else(|e| e.into_inner());
        records.retain(|key, _| keep(key));
    }
}

/// A release Optikon manages (one of its records carries a generation) whose newest Helm
/// record is `deployed`. Releases made by hand with helm are not Optikon's to correct; a
/// newest revision made by hand on top of Optikon's is reported, not corrected.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeployedRelease {
    pub namespace: String,
    pub release: String,
    pub revision: u32,
    /// The newest generation Optikon recorded for it.
    pub generation: u64,
    /// The newest record Secret's `resourceVersion`.
    pub record_version: Option<String>,
}

/// How one object had drifted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drift {
    /// It was gone (or being deleted); it was created again.
    Deleted,
    /// Fields Optikon manages had other values; they were set back.
    Changed,
}

/// One object put back, e.g. `Deployment default/nginx` that was deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Correction {
    pub object: String,
    pub drift: Drift,
}

/// What one drift pass found for one release.
#[derive(Debug, Clone, PartialEq)]
pub struct DriftReport {
    pub namespace: String,
    pub release: String,
    pub revision: u32,
    pub generation: u64,
    /// The request whose revision this is, from the record's annotation.
    pub request_id: String,
    /// What that revision carried out, from Helm's description of it.
    pub action: Action,
    pub chart: ChartSummary,
    pub first_deployed: Option<Timestamp>,
    pub corrected: Vec<Correction>,
    /// Objects that could not be put back, with the API server's reason.
    pub uncorrected: Vec<String>,
    /// The newest revision was made outside Optikon (`helm upgrade` or `helm rollback` on
    /// the cluster): reported, and left as it is until Optikon's next change.
    pub made_outside: bool,
}

impl DriftReport {
    /// Whether anything had drifted (corrected or not).
    pub fn drifted(&self) -> bool {
        self.made_outside || !self.corrected.is_empty() || !self.uncorrected.is_empty()
    }

    /// In words for the user: `drift corrected: Deployment default/nginx was deleted`.
    pub fn reason(&self) -> String {
        if self.made_outside {
            return format!(
                "revision {} was made outside Optikon (helm upgrade or rollback on the \
                 cluster); drift correction leaves it as it is until Optikon's next change",
                self.revision
            );
        }
        let mut parts = Vec::new();
        if !self.corrected.is_empty() {
            let what: Vec<String> = self
                .corrected
                .iter()
                .map(|c| match c.drift {
                    Drift::Deleted => format!("{} was deleted", c.object),
                    Drift::Changed => format!("{} was changed", c.object),
                })
                .collect();
            parts.push(format!("drift corrected: {}", what.join(", ")));
        }
        if !self.uncorrected.is_empty() {
            parts.push(format!(
                "drift not corrected: {}",
                self.uncorrected.join("; ")
            ));
        }
        parts.join("; ")
    }

    /// The release is still deployed at the same revision; the reason tells of the drift.
    pub fn outcome(&self) -> Outcome {
        Outcome {
            state: ReleaseState::Deployed,
            revision: Some(self.revision),
            chart: Some(self.chart.clone()),
            reason: Some(self.reason()),
            first_deployed: self.first_deployed,
        }
    }
}

impl ClusterTarget {
    /// Every release on the cluster whose newest record is a `deployed` one Optikon wrote.
    /// Reads only the records' labels (not their data).
    pub async fn deployed_releases(&self) -> Result<Vec<DeployedRelease>, ClusterError> {
        let secrets: Api<Secret> = Api::all(self.client.clone());
        let owner = format!("owner={}", release_record::OWNER);
        let list = secrets
            .list_metadata(&ListParams::default().labels(&owner))
            .await
            .map_err(ClusterError::api(
                "list the release records of every namespace",
            ))?;
        Ok(newest_deployed(&list.items))
    }

    /// Forgets what drift correction read of releases that are no longer among `deployed`
    /// (uninstalled, failed, or made by hand since), so the memory follows the cluster.
    pub fn forget_drift_except(&self, deployed: &[DeployedRelease]) {
        let keep: std::collections::BTreeSet<(&str, &str)> = deployed
            .iter()
            .map(|d| (d.namespace.as_str(), d.release.as_str()))
            .collect();
        self.drift_records
            .retain(|(namespace, release)| keep.contains(&(namespace.as_str(), release.as_str())));
    }

    /// Re-applies the stored manifest of the release's newest record if that record is a
    /// `deployed` one Optikon wrote; `None` otherwise (nothing of Optikon's to keep in place).
    /// Writes no record: the revision stays what it was.
    ///
    /// The caller must keep commands for the same release out meanwhile: an upgrade half
    /// done has objects its record does not describe yet.
    pub async fn correct_drift(
        &self,
        namespace: &str,
        release: &str,
    ) -> Result<Option<DriftReport>, ClusterError> {
        self.correct_drift_at(namespace, release, None).await
    }

    /// Like [`ClusterTarget::correct_drift`], for a release whose newest record a listing
    /// found at `record_version`: the record is read and decoded again only when that
    /// changed, and objects the watches saw unchanged are not asked for.
    pub async fn correct_drift_at(
        &self,
        namespace: &str,
        release: &str,
        record_version: Option<&str>,
    ) -> Result<Option<DriftReport>, ClusterError> {
        let key = (namespace.to_owned(), release.to_owned());
        let cached = record_version.and_then(|version| self.drift_records.get(&key, version));
        let read = match cached {
            Some(read) => read,
            None => match self.read_for_drift(namespace, release).await? {
                Some(read) => {
                    let read = Arc::new(read);
                    self.drift_records.put(key, read.clone());
                    read
                }
                None => return Ok(None),
            },
        };
        let mut report = read.report.clone();
        if report.made_outside {
            return Ok(Some(report));
        }
        let objects = &read.objects;
        let mut catalog = self.known_catalog();
        if objects
            .iter()
            .any(|o| objects::place(&catalog, o, namespace).is_none())
        {
            // A kind the catalog lacks: a CRD may have been (re)created since discovery.
            catalog = self.refresh_catalog().await?;
        }
        for object in objects {
            let Some(placed) = objects::place(&catalog, object, namespace) else {
                // Its CRD is gone or not established yet; the next pass tries again.
                report
                    .uncorrected
                    .push(objects::unserved_reason(&catalog, object));
                continue;
            };
            match self.put_back(&placed, release, namespace).await {
                Ok(None) => {}
                Ok(Some(drift)) => {
                    tracing::info!(
                        release,
                        namespace,
                        object = %placed.describe(),
                        ?drift,
                        "drift corrected"
                    );
                    report.corrected.push(Correction {
                        object: placed.describe(),
                        drift,
                    });
                }
                Err(Halt::Failed(reason)) => {
                    tracing::warn!(release, namespace, object = %placed.describe(), %reason, "drift not corrected");
                    report.uncorrected.push(reason);
                }
                Err(Halt::Error(error)) => return Err(error),
            }
        }
        Ok(Some(report))
    }

    /// Reads the release's records for a drift pass: its newest record's objects and what a
    /// report says of it, or `None` when it is not a deployed release of Optikon's.
    async fn read_for_drift(
        &self,
        namespace: &str,
        release: &str,
    ) -> Result<Option<DriftRead>, ClusterError> {
        let history = self.history(namespace, release).await?;
        let Some(newest) = history.newest() else {
            return Ok(None);
        };
        if newest.status_label != Status::Deployed.as_str() {
            return Ok(None);
        }
        // Optikon's newest revision (helm copies its labels into the ones it makes after).
        let Some(ours) = history.records.iter().rev().find(|r| r.is_optikons()) else {
            return Ok(None);
        };
        let record = match newest.decode() {
            Ok(record) if record.info.status == Status::Deployed => record,
            Ok(_) => return Ok(None),
            Err(error) => {
                tracing::warn!(secret = %newest.name(), %error, "release record unreadable; drift not checked");
                return Ok(None);
            }
        };
        let mut objects = match manifest::parse(&record.manifest) {
            Ok(rendered) => rendered.objects,
            Err(error) => {
                tracing::warn!(secret = %newest.name(), %error, "stored manifest unreadable; drift not checked");
                return Ok(None);
            }
        };
        manifest::install_order(&mut objects);
        let report = DriftReport {
            namespace: namespace.to_owned(),
            release: release.to_owned(),
            revision: newest.version,
            generation: ours.generation.unwrap_or_default(),
            request_id: request_id(ours),
            action: action_of(&record),
            chart: history::chart_summary(&record.chart),
            first_deployed: record.info.first_deployed.map(Timestamp),
            corrected: Vec::new(),
            uncorrected: Vec::new(),
            made_outside: newest.version != ours.version,
        };
        Ok(Some(DriftRead {
            record_version: newest.secret.metadata.resource_version.clone(),
            objects,
            report,
        }))
    }

    /// Applies one object of the record and tells how it had drifted, if it had.
    async fn put_back(
        &self,
        placed: &Placed,
        release: &str,
        namespace: &str,
    ) -> Result<Option<Drift>, Halt> {
        let api: Api<DynamicObject> = match &placed.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &placed.resource),
            None => Api::all_with(self.client.clone(), &placed.resource),
        };
        let key = watch::object_key(
            &placed.resource,
            placed.namespace.as_deref(),
            &placed.object.name,
        );
        self.drift_watches.ensure(&self.client, &placed.resource);
        if let Some(Some(version)) = self.drift_watches.version(&placed.resource, &key)
            && self.drift_seen.get(&key) == Some(version)
        {
            // The watch saw no change since this pass last put it in place.
            return Ok(None);
        }
        let before = api
            .get_metadata_opt(&placed.object.name)
            .await
            .map_err(|e| objects::halt(e, || format!("read {}", placed.describe())))?;
        if let Some(before) = &before
            && before.metadata.deletion_timestamp.is_none()
            && before.metadata.resource_version.is_some()
            && before.metadata.resource_version == self.drift_seen.get(&key)
        {
            return Ok(None);
        }
        if let Some(before) = &before {
            let annotations = before.metadata.annotations.clone().unwrap_or_default();
            let claimed = (
                annotations.get(objects::RELEASE_NAME_ANNOTATION),
                annotations.get(objects::RELEASE_NAMESPACE_ANNOTATION),
            );
            if let (Some(other), Some(other_ns)) = claimed
                && (other != release || other_ns != namespace)
            {
                // Taken over by another release since: not ours to overwrite.
                return Err(Halt::Failed(format!(
                    "{} now belongs to release {other} in namespace {other_ns}",
                    placed.describe()
                )));
            }
        }
        let after = objects::apply(&self.client, placed, Some((release, namespace))).await?;
        let version = after
            .pointer("/metadata/resourceVersion")
            .and_then(Value::as_str)
            .map(str::to_owned);
        self.drift_seen.set(key, version);
        Ok(drift_of(before.as_ref(), &after))
    }
}

/// How an object had drifted, judged from its metadata before and after Optikon's apply.
/// Kinds with a `metadata.generation` (workloads, custom resources) bump it only when their
/// spec changes, so status writes by controllers racing the apply do not count as drift.
fn drift_of(before: Option<&PartialObjectMeta<DynamicObject>>, after: &Value) -> Option<Drift> {
    let Some(before) = before else {
        return Some(Drift::Deleted);
    };
    if before.metadata.deletion_timestamp.is_some() {
        return Some(Drift::Deleted);
    }
    let after_generation = after
        .pointer("/metadata/generation")
        .and_then(Value::as_i64);
    let changed = match (before.metadata.generation, after_generation) {
        (Some(old), Some(new)) => old != new,
        _ => {
            let after_version = after
                .pointer("/metadata/resourceVersion")
                .and_then(Value::as_str);
            before.metadata.resource_version.as_deref() != after_version
        }
    };
    changed.then_some(Drift::Changed)
}

/// The newest record of each release, kept if it is `deployed` and carries a generation.
fn newest_deployed(records: &[PartialObjectMeta<Secret>]) -> Vec<DeployedRelease> {
    let mut newest: BTreeMap<(String, String), (u32, String, Option<String>)> = BTreeMap::new();
    let mut generations: BTreeMap<(String, String), u64> = BTreeMap::new();
    for record in records {
        let labels = record.metadata.labels.clone().unwrap_or_default();
        let (Some(name), Some(namespace), Some(version)) = (
            labels.get("name"),
            record.metadata.namespace.as_ref(),
            labels.get("version").and_then(|v| v.parse::<u32>().ok()),
        ) else {
            continue;
        };
        let status = labels.get("status").cloned().unwrap_or_default();
        let generation = labels.get(GENERATION_LABEL).and_then(|g| g.parse().ok());
        let key = (namespace.clone(), name.clone());
        if let Some(generation) = generation {
            let highest = generations.entry(key.clone()).or_default();
            *highest = (*highest).max(generation);
        }
        if newest.get(&key).is_none_or(|(v, _, _)| *v < version) {
            let record_version = record.metadata.resource_version.clone();
            newest.insert(key, (version, status, record_version));
        }
    }
    newest
        .into_iter()
        .filter_map(|(key, (revision, status, record_version))| {
            let generation = *generations.get(&key)?;
            let (namespace, release) = key;
            (status == Status::Deployed.as_str()).then_some(DeployedRelease {
                namespace,
                release,
                revision,
                generation,
                record_version,
            })
        })
        .collect()
}

fn request_id(record: &StoredRecord) -> String {
    record
        .secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REQUEST_ID_ANNOTATION))
        .cloned()
        .unwrap_or_default()
}

/// What made the revision, read back from the description Optikon (like Helm) gave it.
fn action_of(record: &HelmRelease) -> Action {
    let description = record.info.description.as_str();
    if description.starts_with("Rollback") {
        Action::Rollback
    } else if description.starts_with("Install") {
        Action::Install
    } else if description.starts_with("Upgrade") || record.version > 1 {
        Action::Upgrade
    } else {
        Action::Install
    }
}

#[cfg(test)]
mod tests {
    use kube::api::ObjectMeta;
    use serde_json::json;

    use super::*;

    fn meta(generation: Option<i64>, resource_version: &str) -> PartialObjectMeta<DynamicObject> {
        PartialObjectMeta {
            types: None,
            metadata: ObjectMeta {
                generation,
                resource_version: Some(resource_version.into()),
                ..ObjectMeta::default()
            },
            _phantom: Default::default(),
        }
    }

    #[test]
    fn generation_decides_for_kinds_that_have_one() {
        let after = json!({"metadata": {"generation": 3, "resourceVersion": "90"}});
        assert_eq!(drift_of(None, &after), Some(Drift::Deleted));
        // A controller wrote status meanwhile: new resourceVersion, same generation.
        assert_eq!(drift_of(Some(&meta(Some(3), "80")), &after), None);
        assert_eq!(
            drift_of(Some(&meta(Some(2), "80")), &after),
            Some(Drift::Changed)
        );
    }

    #[test]
    fn resource_version_decides_for_kinds_without_generation() {
        let after = json!({"metadata": {"resourceVersion": "41"}});
        assert_eq!(drift_of(Some(&meta(None, "41")), &after), None);
        assert_eq!(
            drift_of(Some(&meta(None, "40")), &after),
            Some(Drift::Changed)
        );
    }

    #[test]
    fn an_object_being_deleted_counts_as_deleted() {
        let mut before = meta(Some(1), "5");
        before.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-01T00:00:00Z".parse().unwrap(),
            ));
        assert_eq!(
            drift_of(Some(&before), &json!({"metadata": {"generation": 1}})),
            Some(Drift::Deleted)
        );
    }

    fn record(
        namespace: &str,
        name: &str,
        version: u32,
        status: &str,
        generation: Option<u64>,
    ) -> PartialObjectMeta<Secret> {
        let mut labels = BTreeMap::from([
            ("name".to_owned(), name.to_owned()),
            ("owner".to_owned(), "helm".to_owned()),
            ("version".to_owned(), version.to_string()),
            ("status".to_owned(), status.to_owned()),
        ]);
        if let Some(g) = generation {
            labels.insert(GENERATION_LABEL.to_owned(), g.to_string());
        }
        PartialObjectMeta {
            types: None,
            metadata: ObjectMeta {
                name: Some(format!("sh.helm.release.v1.{name}.v{version}")),
                namespace: Some(namespace.to_owned()),
                labels: Some(labels),
                ..ObjectMeta::default()
            },
            _phantom: Default::default(),
        }
    }

    #[test]
    fn only_newest_deployed_optikon_records_count() {
        let records = vec![
            record("a", "web", 1, "superseded", Some(1)),
            record("a", "web", 2, "deployed", Some(2)),
            // Uninstalled at its newest record: nothing to keep in place.
            record("a", "gone", 1, "uninstalled", Some(2)),
            // Newest revision failed: its objects are half applied, leave them be.
            record("b", "web", 1, "deployed", Some(1)),
            record("b", "web", 2, "failed", Some(2)),
            // Made by hand with helm: no generation.
            record("c", "manual", 1, "deployed", None),
            // Upgraded by hand after Optikon (helm copied no label): visited, to be reported.
            record("d", "web", 1, "superseded", Some(5)),
            record("d", "web", 2, "deployed", None),
        ];
        assert_eq!(
            newest_deployed(&records),
            vec![
                DeployedRelease {
                    namespace: "a".into(),
                    release: "web".into(),
                    revision: 2,
                    generation: 2,
                    record_version: None,
                },
                DeployedRelease {
                    namespace: "d".into(),
                    release: "web".into(),
                    revision: 2,
                    generation: 5,
                    record_version: None,
                }
            ]
        );
    }

    #[test]
    fn reasons_name_each_object() {
        let report = DriftReport {
            namespace: "default".into(),
            release: "web".into(),
            revision: 2,
            generation: 4,
            request_id: "r".into(),
            action: Action::Upgrade,
            chart: ChartSummary {
                name: "web".into(),
                version: "1.0.0".into(),
                app_version: None,
            },
            first_deployed: None,
            corrected: vec![
                Correction {
                    object: "Deployment default/web".into(),
                    drift: Drift::Deleted,
                },
                Correction {
                    object: "ConfigMap default/web".into(),
                    drift: Drift::Changed,
                },
            ],
            uncorrected: Vec::new(),
            made_outside: false,
        };
        assert!(report.drifted());
        assert_eq!(
            report.reason(),
            "drift corrected: Deployment default/web was deleted, ConfigMap default/web was changed"
        );
        let outcome = report.outcome();
        assert_eq!(outcome.state, ReleaseState::Deployed);
        assert_eq!(outcome.revision, Some(2));

        let by_hand = DriftReport {
            corrected: Vec::new(),
            made_outside: true,
            revision: 3,
            ..report
        };
        assert!(by_hand.drifted());
        assert_eq!(
            by_hand.reason(),
            "revision 3 was made outside Optikon (helm upgrade or rollback on the cluster); \
             drift correction leaves it as it is until Optikon's next change"
        );
    }
}
