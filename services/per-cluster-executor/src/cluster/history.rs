//! A release's Helm records on the cluster: reading the Secrets, picking revisions, writing new
//! ones the way Helm's Secrets driver does, with Optikon's generation label on top.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use optikon_core::message::{ChartSummary, ReleaseState, Timestamp};
use optikon_core::release_record::{
    self, HelmChart, HelmRelease, ReleaseRecordError, SECRET_DATA_KEY, SECRET_TYPE, SecretWrite,
    Status,
};

use super::{Outcome, StoredRelease};

/// Label on release Secrets naming the Optikon generation the revision carries out.
pub const GENERATION_LABEL: &str = "optikon.dev/generation";
/// Label on release Secrets naming the revision Optikon wrote the record as. helm copies a
/// release's labels into the revisions it makes after it (`helm upgrade`, `helm rollback`),
/// so a revision whose label names another revision was made by hand.
pub const REVISION_LABEL: &str = "optikon.dev/revision";
/// Annotation on release Secrets naming the request that asked for the revision.
pub const REQUEST_ID_ANNOTATION: &str = "optikon.dev/request-id";
/// Revisions kept per release, as `helm upgrade --history-max` defaults to.
pub const HISTORY_MAX: usize = 10;
/// Kubernetes refuses a Secret whose data exceeds 1 MiB.
pub const SECRET_DATA_LIMIT: usize = 1024 * 1024;
/// Room kept for what a revision gains after the size check (a failure description).
const SIZE_HEADROOM: usize = 16 * 1024;

/// The label selector Helm uses to find a release's Secrets.
pub fn selector(release: &str) -> String {
    format!("owner={},name={release}", release_record::OWNER)
}

/// One release Secret.
#[derive(Debug, Clone)]
pub struct StoredRecord {
    pub secret: Secret,
    pub version: u32,
    /// `status` label; the decoded record is authoritative, this is for when it cannot be read.
    pub status_label: String,
    pub generation: Option<u64>,
}

impl StoredRecord {
    /// `None` for a Secret without a usable `version` label (not a Helm record).
    pub fn from_secret(secret: Secret) -> Option<Self> {
        let labels = secret.metadata.labels.clone().unwrap_or_default();
        let version = labels.get("version")?.parse().ok()?;
        Some(StoredRecord {
            version,
            status_label: labels.get("status").cloned().unwrap_or_default(),
            generation: labels.get(GENERATION_LABEL).and_then(|g| g.parse().ok()),
            secret,
        })
    }

    /// Whether Optikon wrote this revision: it carries a generation, and the revision label
    /// names this very revision (records from before that label: the request annotation,
    /// which helm drops when it rewrites a record).
    pub fn is_optikons(&self) -> bool {
        let labels = self.secret.metadata.labels.as_ref();
        match labels.and_then(|l| l.get(REVISION_LABEL)) {
            Some(revision) => self.generation.is_some() && revision.parse() == Ok(self.version),
            None => {
                self.generation.is_some()
                    && self
                        .secret
                        .metadata
                        .annotations
                        .as_ref()
                        .is_some_and(|a| a.contains_key(REQUEST_ID_ANNOTATION))
            }
        }
    }

    pub fn name(&self) -> String {
        self.secret.metadata.name.clone().unwrap_or_default()
    }

    /// The Helm release in the Secret, with its own labels filled in from the Secret's.
    pub fn decode(&self) -> Result<HelmRelease, ReleaseRecordError> {
        let data = self
            .secret
            .data
            .as_ref()
            .and_then(|d| d.get(SECRET_DATA_KEY))
            .map(|b| b.0.as_slice())
            .unwrap_or_default();
        let mut release = release_record::decode(data)?;
        let labels = self.secret.metadata.labels.clone().unwrap_or_default();
        release.labels = release_record::release_labels_from_secret(&labels);
        Ok(release)
    }

    /// `current()`'s view of the record; from the labels alone when the data cannot be read.
    pub fn summary(&self) -> StoredRelease {
        match self.decode() {
            Ok(release) => StoredRelease {
                revision: self.version,
                generation: self.generation,
                status: release.info.status.as_str().to_owned(),
                chart: chart_summary(&release.chart),
                first_deployed: release.info.first_deployed.map(Timestamp),
            },
            Err(error) => {
                tracing::warn!(secret = %self.name(), %error, "release record unreadable; using its labels");
                StoredRelease {
                    revision: self.version,
                    generation: self.generation,
                    status: self.status_label.clone(),
                    chart: ChartSummary {
                        name: String::new(),
                        version: String::new(),
                        app_version: None,
                    },
                    first_deployed: None,
                }
            }
        }
    }
}

/// Every revision of one release, oldest first.
#[derive(Debug, Clone, Default)]
pub struct History {
    pub records: Vec<StoredRecord>,
}

impl History {
    pub fn new(secrets: impl IntoIterator<Item = Secret>) -> Self {
        let mut records: Vec<StoredRecord> = secrets
            .into_iter()
            .filter_map(StoredRecord::from_secret)
            .collect();
        records.sort_by_key(|r| r.version);
        History { records }
    }

    pub fn newest(&self) -> Option<&StoredRecord> {
        self.records.last()
    }

    pub fn get(&self, version: u32) -> Option<&StoredRecord> {
        self.records.iter().find(|r| r.version == version)
    }

    /// The newest generation any revision carries out: the newest record's, or, when that
    /// was made by hand with helm (no generation), the one before it that Optikon made.
    pub fn generation(&self) -> Option<u64> {
        self.records.iter().filter_map(|r| r.generation).max()
    }

    pub fn next_version(&self) -> u32 {
        self.newest().map_or(1, |r| r.version + 1)
    }

    /// Records that claim `deployed`, except `except`: after a new revision is recorded
    /// they become `superseded`.
    pub fn deployed_except(&self, except: u32) -> impl Iterator<Item = &StoredRecord> {
        self.records
            .iter()
            .filter(move |r| r.version != except && r.status_label == Status::Deployed.as_str())
    }

    /// The newest record labelled `deployed`.
    pub fn last_deployed(&self) -> Option<&StoredRecord> {
        self.records
            .iter()
            .rev()
            .find(|r| r.status_label == Status::Deployed.as_str())
    }

    /// Oldest records beyond `max` that may go; the deployed revision and the newest stay.
    pub fn beyond(&self, max: usize) -> Vec<&StoredRecord> {
        let excess = self.records.len().saturating_sub(max);
        let newest = self.newest().map(|r| r.version);
        self.records
            .iter()
            .filter(|r| r.status_label != Status::Deployed.as_str() && Some(r.version) != newest)
            .take(excess)
            .collect()
    }

    pub fn versions(&self) -> String {
        let versions: Vec<String> = self.records.iter().map(|r| r.version.to_string()).collect();
        versions.join(", ")
    }
}

/// The release labels Optikon gives a revision it writes.
pub fn optikon_labels(generation: u64, version: u32) -> BTreeMap<String, String> {
    BTreeMap::from([
        (GENERATION_LABEL.to_owned(), generation.to_string()),
        (REVISION_LABEL.to_owned(), version.to_string()),
    ])
}

/// The Secret holding `release` as Helm's Secrets driver writes it, with Optikon's request id.
pub fn record_secret(
    release: &HelmRelease,
    write: SecretWrite,
    request_id: &str,
) -> Result<Secret, ReleaseRecordError> {
    let data = release_record::encode(release)?;
    Ok(Secret {
        metadata: ObjectMeta {
            name: Some(release.secret_name()),
            namespace: Some(release.namespace.clone()),
            labels: Some(release_record::secret_labels(release, write)),
            annotations: Some(BTreeMap::from([(
                REQUEST_ID_ANNOTATION.to_owned(),
                request_id.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        type_: Some(SECRET_TYPE.to_owned()),
        data: Some(BTreeMap::from([(
            SECRET_DATA_KEY.to_owned(),
            ByteString(data.into_bytes()),
        )])),
        ..Secret::default()
    })
}

/// Refuses a revision whose record could not be stored, before anything is applied (the
/// objects would otherwise be on the cluster with no record of them).
pub fn check_size(release: &HelmRelease) -> Result<(), String> {
    let size = release_record::encode(release)
        .map_err(|e| format!("the release record cannot be written: {e}"))?
        .len();
    if size + SIZE_HEADROOM > SECRET_DATA_LIMIT {
        Err(format!(
            "the release record would take {size} bytes, more than the {SECRET_DATA_LIMIT} a \
             Kubernetes Secret can hold; make the chart (or its values) smaller"
        ))
    } else {
        Ok(())
    }
}

/// An updated copy of a stored record's Secret: the same resource version (so a concurrent
/// writer makes the update fail instead of being lost) and the request id kept unless given.
pub fn updated_secret(
    stored: &StoredRecord,
    release: &HelmRelease,
    request_id: Option<&str>,
) -> Result<Secret, ReleaseRecordError> {
    let at = time::OffsetDateTime::now_utc();
    let kept = stored
        .secret
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REQUEST_ID_ANNOTATION))
        .cloned()
        .unwrap_or_default();
    let mut secret = record_secret(
        release,
        SecretWrite::Update { at },
        request_id.unwrap_or(&kept),
    )?;
    if request_id.is_none() && kept.is_empty() {
        secret.metadata.annotations = None;
    }
    secret.metadata.resource_version = stored.secret.metadata.resource_version.clone();
    Ok(secret)
}

pub fn chart_summary(chart: &HelmChart) -> ChartSummary {
    ChartSummary {
        name: chart.name().to_owned(),
        version: chart.version().to_owned(),
        app_version: Some(chart.app_version().to_owned()).filter(|v| !v.is_empty()),
    }
}

/// Whether Helm is finished with a record in this status (nothing is half done).
pub fn is_settled(status: Status) -> bool {
    matches!(
        status,
        Status::Deployed | Status::Failed | Status::Superseded | Status::Uninstalled
    )
}

/// What a recorded revision means for the generation it carries.
pub fn outcome_of(release: &HelmRelease) -> Outcome {
    let state = match release.info.status {
        Status::Deployed => ReleaseState::Deployed,
        Status::Uninstalled => ReleaseState::Uninstalled,
        Status::Superseded => ReleaseState::Superseded,
        _ => ReleaseState::Failed,
    };
    let reason = match state {
        ReleaseState::Failed => Some(release.info.description.clone()).filter(|d| !d.is_empty()),
        _ => None,
    };
    Outcome {
        state,
        revision: Some(release.version),
        chart: Some(chart_summary(&release.chart)),
        reason,
        first_deployed: release.info.first_deployed.map(Timestamp),
    }
}

/// What became of `generation`, if a revision carries it (see
/// [`super::ClusterTarget::carried_out`]). A revision helm marked `superseded` was deployed,
/// and then replaced: its generation's outcome is `deployed`, at that revision.
pub fn carried_out(history: &History, generation: u64) -> Option<Outcome> {
    let own = history
        .records
        .iter()
        .rev()
        .find(|r| r.generation == Some(generation))?;
    let record = own.decode().ok()?;
    let mut outcome = outcome_of(&record);
    if outcome.state == ReleaseState::Superseded {
        outcome.state = ReleaseState::Deployed;
    }
    let replaced = format!(
        "carried out as revision {}; a newer generation replaced it since",
        own.version
    );
    outcome.reason = Some(match outcome.reason {
        Some(reason) => format!("{reason} ({replaced})"),
        None => replaced,
    });
    Some(outcome)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn release(version: u32, status: Status, generation: u64) -> HelmRelease {
        let mut release = HelmRelease {
            name: "web".into(),
            namespace: "shop".into(),
            version,
            manifest: "---\n# Source: web/templates/cm.yaml\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n".into(),
            ..HelmRelease::default()
        };
        release.info.status = status;
        release.info.description = "Release \"web\" failed: boom".into();
        release.chart.metadata = json!({"name": "web", "version": "1.2.3", "appVersion": "4.5"});
        release
            .labels
            .insert(GENERATION_LABEL.into(), generation.to_string());
        release
    }

    fn stored(version: u32, status: Status, generation: u64) -> StoredRecord {
        let at = time::OffsetDateTime::now_utc();
        let mut secret = record_secret(
            &release(version, status, generation),
            SecretWrite::Create { at },
            "req-1",
        )
        .unwrap();
        secret.metadata.resource_version = Some(format!("{version}00"));
        StoredRecord::from_secret(secret).unwrap()
    }

    #[test]
    fn a_revision_helm_made_after_optikons_is_not_optikons() {
        let with_labels = |version: u32, labels: BTreeMap<String, String>, annotated: bool| {
            let mut release = release(version, Status::Deployed, 1);
            release.labels = labels;
            let at = time::OffsetDateTime::now_utc();
            let mut secret = record_secret(&release, SecretWrite::Create { at }, "req-1").unwrap();
            if !annotated {
                secret.metadata.annotations = None;
            }
            StoredRecord::from_secret(secret).unwrap()
        };
        assert!(with_labels(2, optikon_labels(1, 2), true).is_optikons());
        // helm rewrote it (superseding it) and dropped the annotation: still Optikon's.
        assert!(with_labels(2, optikon_labels(1, 2), false).is_optikons());
        // helm upgrade copied revision 2's labels into revision 3.
        assert!(!with_labels(3, optikon_labels(1, 2), false).is_optikons());
        // From before the revision label: the annotation decides.
        let generation_only = BTreeMap::from([(GENERATION_LABEL.to_owned(), "1".to_owned())]);
        assert!(with_labels(2, generation_only.clone(), true).is_optikons());
        assert!(!with_labels(2, generation_only, false).is_optikons());
        assert!(!with_labels(2, BTreeMap::new(), true).is_optikons());
    }

    #[test]
    fn secret_is_what_helm_writes_plus_generation() {
        let record = stored(3, Status::Deployed, 7);
        let secret = &record.secret;
        assert_eq!(
            secret.metadata.name.as_deref(),
            Some("sh.helm.release.v1.web.v3")
        );
        assert_eq!(secret.type_.as_deref(), Some("helm.sh/release.v1"));
        let labels = secret.metadata.labels.as_ref().unwrap();
        for (key, value) in [
            ("name", "web"),
            ("owner", "helm"),
            ("status", "deployed"),
            ("version", "3"),
            (GENERATION_LABEL, "7"),
        ] {
            assert_eq!(
                labels.get(key).map(String::as_str),
                Some(value),
                "label {key}"
            );
        }
        assert!(labels.contains_key("createdAt"));
        assert_eq!(
            secret
                .metadata
                .annotations
                .as_ref()
                .unwrap()
                .get(REQUEST_ID_ANNOTATION)
                .map(String::as_str),
            Some("req-1")
        );
        assert_eq!((record.version, record.generation), (3, Some(7)));
        let decoded = record.decode().unwrap();
        assert_eq!(decoded.version, 3);
        assert_eq!(
            decoded.labels.get(GENERATION_LABEL).map(String::as_str),
            Some("7")
        );
        assert!(
            !decoded.labels.contains_key("owner"),
            "system labels are not release labels"
        );
    }

    #[test]
    fn update_keeps_resource_version_and_request_id() {
        let record = stored(1, Status::Deployed, 1);
        let mut release = record.decode().unwrap();
        release.info.status = Status::Superseded;
        let secret = updated_secret(&record, &release, None).unwrap();
        assert_eq!(secret.metadata.resource_version.as_deref(), Some("100"));
        let labels = secret.metadata.labels.as_ref().unwrap();
        assert_eq!(labels.get("status").map(String::as_str), Some("superseded"));
        assert!(labels.contains_key("modifiedAt") && !labels.contains_key("createdAt"));
        assert_eq!(labels.get(GENERATION_LABEL).map(String::as_str), Some("1"));
        assert_eq!(
            secret
                .metadata
                .annotations
                .as_ref()
                .unwrap()
                .get(REQUEST_ID_ANNOTATION)
                .map(String::as_str),
            Some("req-1")
        );
        let other = updated_secret(&record, &release, Some("req-2")).unwrap();
        assert_eq!(
            other
                .metadata
                .annotations
                .as_ref()
                .unwrap()
                .get(REQUEST_ID_ANNOTATION)
                .map(String::as_str),
            Some("req-2")
        );
    }

    #[test]
    fn a_generation_replaced_after_it_was_applied_reads_deployed() {
        let history = History::new(
            [
                stored(1, Status::Superseded, 1),
                stored(2, Status::Deployed, 2),
            ]
            .into_iter()
            .map(|r| r.secret),
        );
        let first = carried_out(&history, 1).expect("generation 1 has a revision");
        assert_eq!(
            (first.state, first.revision),
            (ReleaseState::Deployed, Some(1))
        );
        assert!(first.reason.unwrap().contains("replaced it since"));
        assert_eq!(
            carried_out(&history, 2).unwrap().state,
            ReleaseState::Deployed
        );
        assert!(
            carried_out(&history, 3).is_none(),
            "never applied: superseded"
        );
    }

    #[test]
    fn history_orders_by_revision_and_finds_deployed() {
        let history = History::new(
            [
                stored(10, Status::Deployed, 5),
                stored(2, Status::Superseded, 2),
                stored(9, Status::Failed, 4),
            ]
            .into_iter()
            .map(|r| r.secret),
        );
        let versions: Vec<u32> = history.records.iter().map(|r| r.version).collect();
        assert_eq!(versions, vec![2, 9, 10]);
        assert_eq!(history.newest().unwrap().version, 10);
        assert_eq!(history.next_version(), 11);
        assert_eq!(history.last_deployed().unwrap().version, 10);
        assert_eq!(history.deployed_except(11).count(), 1);
        assert_eq!(history.deployed_except(10).count(), 0);
        assert_eq!(history.versions(), "2, 9, 10");
        assert_eq!(History::default().next_version(), 1);
    }

    #[test]
    fn trimming_keeps_deployed_and_newest() {
        let mut secrets = vec![stored(1, Status::Deployed, 1).secret];
        secrets.extend((2..=12).map(|v| stored(v, Status::Failed, v.into()).secret));
        let history = History::new(secrets);
        let gone: Vec<u32> = history
            .beyond(HISTORY_MAX)
            .iter()
            .map(|r| r.version)
            .collect();
        assert_eq!(
            gone,
            vec![2, 3],
            "12 records, 10 kept; revision 1 is deployed and stays"
        );
        assert!(
            History::new([stored(1, Status::Deployed, 1).secret])
                .beyond(HISTORY_MAX)
                .is_empty()
        );
    }

    #[test]
    fn records_too_large_for_a_secret_are_refused() {
        let mut big = release(1, Status::Deployed, 1);
        assert!(check_size(&big).is_ok());
        // Incompressible text: gzip cannot save it.
        let mut state = 0x2545_f491_u64;
        big.manifest = (0..1_500_000)
            .map(|_| {
                state = state
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1);
                char::from(b'a' + (state >> 59) as u8 % 26)
            })
            .collect();
        let reason = check_size(&big).unwrap_err();
        assert!(reason.contains("more than the 1048576"), "{reason}");
    }

    #[test]
    fn non_records_are_ignored() {
        let mut secret = stored(1, Status::Deployed, 1).secret;
        secret.metadata.labels.as_mut().unwrap().remove("version");
        assert!(StoredRecord::from_secret(secret).is_none());
    }

    #[test]
    fn outcome_from_a_recorded_revision() {
        let failed = outcome_of(&release(4, Status::Failed, 9));
        assert_eq!(failed.state, ReleaseState::Failed);
        assert_eq!(failed.revision, Some(4));
        assert_eq!(
            failed.reason.as_deref(),
            Some("Release \"web\" failed: boom")
        );
        let chart = failed.chart.unwrap();
        assert_eq!(
            (
                chart.name.as_str(),
                chart.version.as_str(),
                chart.app_version.as_deref()
            ),
            ("web", "1.2.3", Some("4.5"))
        );
        assert_eq!(
            outcome_of(&release(4, Status::Deployed, 9)).state,
            ReleaseState::Deployed
        );
        assert_eq!(outcome_of(&release(4, Status::Deployed, 9)).reason, None);
        assert_eq!(
            outcome_of(&release(4, Status::Uninstalled, 9)).state,
            ReleaseState::Uninstalled
        );
        assert!(!is_settled(Status::Uninstalling) && !is_settled(Status::PendingUpgrade));
    }

    #[test]
    fn unreadable_record_is_summarised_from_labels() {
        let mut record = stored(2, Status::Failed, 3);
        record.secret.data = Some(BTreeMap::from([(
            SECRET_DATA_KEY.to_owned(),
            ByteString(b"not base64!".to_vec()),
        )]));
        let summary = record.summary();
        assert_eq!(
            (
                summary.revision,
                summary.generation,
                summary.status.as_str()
            ),
            (2, Some(3), "failed")
        );
    }
}
