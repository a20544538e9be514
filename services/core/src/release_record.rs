//! Helm 3's release record: the JSON Helm keeps, gzipped and base64-encoded, in release Secrets.
//!
//! Field names and `omitempty` behaviour follow Helm v3's `pkg/release` and `pkg/chart` JSON
//! tags, so the real `helm list`, `helm history`, `helm get` and `helm rollback` read what
//! Optikon writes. Subcharts are not part of the record (Helm does not serialise them either).

use std::collections::BTreeMap;
use std::io::{Read, Write};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};
use time::OffsetDateTime;

use crate::manifest::{HookEvent, HookObject};

/// `type` of a release Secret.
pub const SECRET_TYPE: &str = "helm.sh/release.v1";
/// Key under the Secret's `data` that holds [`encode`]'s output.
pub const SECRET_DATA_KEY: &str = "release";
/// Value of the `owner` label on release Secrets.
pub const OWNER: &str = "helm";
/// Labels Helm's storage driver manages itself; other Secret labels are the release's own.
pub const SYSTEM_LABELS: &[&str] = &[
    "name",
    "owner",
    "status",
    "version",
    "createdAt",
    "modifiedAt",
];

/// Decoded records larger than this are refused: a small Secret can gunzip to gigabytes.
pub const MAX_DECODED_BYTES: u64 = 64 * 1024 * 1024;

const GZIP_MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];

/// Why a release record could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseRecordError {
    #[error("release record could not be serialised to JSON: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("release record could not be gzipped: {0}")]
    Compress(#[source] std::io::Error),
    #[error("release record is not valid base64: {0}")]
    Base64(#[from] base64::DecodeError),
    #[error("release record is not valid gzip data: {0}")]
    Gunzip(#[source] std::io::Error),
    #[error("release record expands to more than {limit} bytes; refusing to read it")]
    TooLarge { limit: u64 },
    #[error("release record is not a Helm release in JSON: {0}")]
    Json(#[source] serde_json::Error),
    #[error("chart file {path} is not valid YAML: {message}")]
    ChartFileYaml { path: String, message: String },
    #[error("chart file {path} could not be written as YAML: {message}")]
    ChartFileWrite { path: String, message: String },
}

/// Helm's `release.Release`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HelmRelease {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub info: Info,
    #[serde(default, deserialize_with = "null_as_default")]
    pub chart: HelmChart,
    /// Values the user supplied (not the chart's defaults).
    #[serde(
        default,
        skip_serializing_if = "Map::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub config: Map<String, Value>,
    /// Rendered objects as `manifest::to_manifest_string` writes them; hooks are not in it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub manifest: String,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub hooks: Vec<Hook>,
    /// Revision, from 1.
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub version: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// The release's own labels; Helm keeps them on the Secret, not in the JSON. After
    /// [`decode`], set them from the Secret with [`release_labels_from_secret`].
    #[serde(skip)]
    pub labels: BTreeMap<String, String>,
}

/// Helm's `release.Info`. Times are `None` where Helm has Go's zero time (written `""`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Info {
    #[serde(default, with = "helm_time")]
    pub first_deployed: Option<OffsetDateTime>,
    #[serde(default, with = "helm_time")]
    pub last_deployed: Option<OffsetDateTime>,
    #[serde(default, with = "helm_time")]
    pub deleted: Option<OffsetDateTime>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
    #[serde(default)]
    pub status: Status,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub notes: String,
}

/// Helm's `release.Status`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    #[default]
    Unknown,
    Deployed,
    Uninstalled,
    Superseded,
    Failed,
    Uninstalling,
    PendingInstall,
    PendingUpgrade,
    PendingRollback,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Deployed => "deployed",
            Self::Uninstalled => "uninstalled",
            Self::Superseded => "superseded",
            Self::Failed => "failed",
            Self::Uninstalling => "uninstalling",
            Self::PendingInstall => "pending-install",
            Self::PendingUpgrade => "pending-upgrade",
            Self::PendingRollback => "pending-rollback",
        }
    }

    /// Whether an operation on the release is in progress (Helm refuses a new one then).
    pub fn is_pending(self) -> bool {
        matches!(
            self,
            Self::PendingInstall | Self::PendingUpgrade | Self::PendingRollback
        )
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Helm's `chart.Chart` as stored in a release (no subcharts: Helm does not store them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HelmChart {
    /// `Chart.yaml` as JSON (Helm's `chart.Metadata`: `name`, `version`, `apiVersion`,
    /// `appVersion`, …). Helm ignores fields it does not know when reading.
    #[serde(default)]
    pub metadata: Value,
    /// `Chart.lock` (or `requirements.lock`) as JSON; `null` when the chart has none.
    #[serde(default)]
    pub lock: Option<Value>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub templates: Vec<HelmFile>,
    /// The chart's default values (`values.yaml`).
    #[serde(default, deserialize_with = "null_as_default")]
    pub values: Map<String, Value>,
    /// `values.schema.json`, raw.
    #[serde(default, with = "go_bytes_opt")]
    pub schema: Option<Vec<u8>>,
    /// Every other file of the chart, e.g. `.helmignore`, `README.md`, `files/…`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub files: Vec<HelmFile>,
}

/// Helm's `chart.File`: a path relative to the chart root and its bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelmFile {
    pub name: String,
    /// Go `[]byte`, which JSON carries as standard base64.
    #[serde(default, with = "go_bytes")]
    pub data: Vec<u8>,
}

/// Helm's `release.Hook`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hook {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub kind: String,
    /// Template path, as in the `# Source:` comment.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub manifest: String,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub events: Vec<HookEvent>,
    /// Helm writes this even for a hook that never ran (Go does not omit empty structs).
    #[serde(default, deserialize_with = "null_as_default")]
    pub last_run: HookExecution,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub weight: i64,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub delete_policies: Vec<String>,
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_as_default"
    )]
    pub output_log_policies: Vec<String>,
}

/// Helm's `release.HookExecution`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HookExecution {
    #[serde(default, with = "helm_time")]
    pub started_at: Option<OffsetDateTime>,
    #[serde(default, with = "helm_time")]
    pub completed_at: Option<OffsetDateTime>,
    #[serde(default)]
    pub phase: HookPhase,
}

/// Helm's `release.HookPhase`; `NotRun` is the empty string Helm writes for a hook never run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum HookPhase {
    #[default]
    #[serde(rename = "")]
    NotRun,
    Unknown,
    Running,
    Succeeded,
    Failed,
}

impl From<&HookObject> for Hook {
    /// The hook as Helm records it at render time, before it runs (`last_run` empty).
    fn from(hook: &HookObject) -> Self {
        Hook {
            name: hook.object.name.clone(),
            kind: hook.object.kind.clone(),
            path: hook.object.source.clone().unwrap_or_default(),
            manifest: hook.object.text.clone(),
            events: hook.events.clone(),
            last_run: HookExecution::default(),
            weight: hook.weight,
            delete_policies: hook.delete_policies.clone(),
            output_log_policies: hook.output_log_policies.clone(),
        }
    }
}

/// How a Secret is being written: Helm stamps `createdAt` on create and `modifiedAt` on
/// update (Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretWrite {
    Create { at: OffsetDateTime },
    Update { at: OffsetDateTime },
}

/// `sh.helm.release.v1.<release>.v<version>`, the name of a revision's Secret.
pub fn secret_name(release: &str, version: u32) -> String {
    format!("sh.helm.release.v1.{release}.v{version}")
}

/// The labels Helm's Secrets driver puts on a release Secret: [`HelmRelease::labels`], then
/// `name`, `owner=helm`, `status`, `version`, and `createdAt` or `modifiedAt`.
///
/// Like Helm, this does not filter `labels`: Helm's upgrade reads the current revision by
/// listing Secrets, keeps all their labels, and so carries `createdAt` into its update.
pub fn secret_labels(release: &HelmRelease, write: SecretWrite) -> BTreeMap<String, String> {
    let mut labels = release.labels.clone();
    labels.insert("name".into(), release.name.clone());
    labels.insert("owner".into(), OWNER.into());
    labels.insert("status".into(), release.info.status.as_str().into());
    labels.insert("version".into(), release.version.to_string());
    let (key, at) = match write {
        SecretWrite::Create { at } => ("createdAt", at),
        SecretWrite::Update { at } => ("modifiedAt", at),
    };
    labels.insert(key.into(), at.unix_timestamp().to_string());
    labels
}

/// The release's own labels out of a Secret's labels (Helm's `filterSystemLabels`); set them
/// as [`HelmRelease::labels`] after [`decode`].
pub fn release_labels_from_secret(labels: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    labels
        .iter()
        .filter(|(key, _)| !SYSTEM_LABELS.contains(&key.as_str()))
        .map(|(key, value)| (key.clone(), value.clone()))
        .collect()
}

/// JSON, gzip (best compression), standard base64: Helm's `encodeRelease`. The result is the
/// Secret's `data.release` value before Kubernetes' own base64 of Secret data.
pub fn encode(release: &HelmRelease) -> Result<String, ReleaseRecordError> {
    let json = serde_json::to_vec(release).map_err(ReleaseRecordError::Serialize)?;
    let mut gzip = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gzip.write_all(&json)
        .map_err(ReleaseRecordError::Compress)?;
    let gzipped = gzip.finish().map_err(ReleaseRecordError::Compress)?;
    Ok(BASE64.encode(gzipped))
}

/// Inverse of [`encode`] (Helm's `decodeRelease`): base64, then gunzip if the bytes start with
/// the gzip magic number (older records are plain JSON), then JSON. `labels` stays empty.
pub fn decode(data: &[u8]) -> Result<HelmRelease, ReleaseRecordError> {
    decode_within(data, MAX_DECODED_BYTES)
}

fn decode_within(data: &[u8], limit: u64) -> Result<HelmRelease, ReleaseRecordError> {
    // Tolerate a trailing newline from tools that print the value.
    let bytes = BASE64.decode(data.trim_ascii())?;
    let json = if bytes.len() > 3 && bytes[..3] == GZIP_MAGIC {
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(bytes.as_slice())
            .take(limit + 1)
            .read_to_end(&mut json)
            .map_err(ReleaseRecordError::Gunzip)?;
        json
    } else {
        bytes
    };
    if json.len() as u64 > limit {
        return Err(ReleaseRecordError::TooLarge { limit });
    }
    serde_json::from_slice(&json).map_err(ReleaseRecordError::Json)
}

impl HelmRelease {
    /// Name of this revision's Secret.
    pub fn secret_name(&self) -> String {
        secret_name(&self.name, self.version)
    }

    /// The chart directory this release was made from, as `(path, bytes)` relative to the
    /// chart root: `Chart.yaml` from the metadata, `values.yaml` from the default values
    /// (both written as JSON, which Helm reads as YAML), `values.schema.json`, `Chart.lock`,
    /// templates and other files.
    ///
    /// Subcharts are not in the record, so a chart with dependencies cannot be rebuilt
    /// whole; `helm rollback` itself re-applies the stored `manifest` and never re-renders.
    pub fn to_chart_files(&self) -> Result<Vec<(String, Vec<u8>)>, ReleaseRecordError> {
        let chart = &self.chart;
        let mut out = vec![
            (
                "Chart.yaml".to_owned(),
                yaml_file_as_json("Chart.yaml", &chart.metadata)?,
            ),
            (
                "values.yaml".to_owned(),
                yaml_file_as_json("values.yaml", &chart.values)?,
            ),
        ];
        if let Some(schema) = &chart.schema {
            out.push(("values.schema.json".to_owned(), schema.clone()));
        }
        // A v1 chart keeps its requirements.lock among the files; don't invent a Chart.lock.
        let has_requirements_lock = chart.files.iter().any(|f| f.name == "requirements.lock");
        if let Some(lock) = chart.lock.as_ref().filter(|_| !has_requirements_lock) {
            out.push((
                "Chart.lock".to_owned(),
                yaml_file_as_json("Chart.lock", lock)?,
            ));
        }
        for file in chart.templates.iter().chain(&chart.files) {
            out.push((file.name.clone(), file.data.clone()));
        }
        Ok(out)
    }
}

impl HelmChart {
    /// Builds the chart Helm would store, sorting files as Helm's chart loader does.
    ///
    /// `metadata` is `Chart.yaml` as JSON and `values` is `values.yaml` as JSON; `files` are
    /// all files of the chart with paths relative to its root (`templates/x.yaml`, not
    /// `web/templates/x.yaml`). `Chart.yaml` and `values.yaml` among them are skipped,
    /// `values.schema.json` becomes the schema, `Chart.lock` the lock, `templates/…` the
    /// templates, `charts/…` is left out (subcharts are not stored; `.prov` files are kept
    /// as Helm keeps them) and everything else goes to `files`, in the given order.
    pub fn from_files<I, P, B>(
        metadata: Value,
        values: Map<String, Value>,
        files: I,
    ) -> Result<HelmChart, ReleaseRecordError>
    where
        I: IntoIterator<Item = (P, B)>,
        P: Into<String>,
        B: Into<Vec<u8>>,
    {
        let api_v1 = metadata
            .get("apiVersion")
            .and_then(Value::as_str)
            .is_none_or(|v| v == "v1");
        let mut chart = HelmChart {
            metadata,
            values,
            ..HelmChart::default()
        };
        for (path, data) in files {
            let (name, data) = (path.into(), data.into());
            match name.as_str() {
                "Chart.yaml" | "values.yaml" => {}
                "values.schema.json" => chart.schema = Some(data),
                "Chart.lock" => chart.lock = Some(yaml_file_to_json(&name, &data)?),
                // Helm 2 era files: Helm reads them into the metadata/lock and keeps them as
                // plain files only for apiVersion v1 charts.
                "requirements.lock" => {
                    chart.lock = Some(yaml_file_to_json(&name, &data)?);
                    if api_v1 {
                        chart.files.push(HelmFile { name, data });
                    }
                }
                "requirements.yaml" => {
                    if api_v1 {
                        chart.files.push(HelmFile { name, data });
                    }
                }
                _ if name.starts_with("templates/") => {
                    chart.templates.push(HelmFile { name, data })
                }
                _ if name.starts_with("charts/") => {
                    if name.ends_with(".prov") {
                        chart.files.push(HelmFile { name, data });
                    }
                }
                _ => chart.files.push(HelmFile { name, data }),
            }
        }
        Ok(chart)
    }

    /// `metadata.name`, or empty.
    pub fn name(&self) -> &str {
        self.metadata_str("name")
    }

    /// `metadata.version`, or empty.
    pub fn version(&self) -> &str {
        self.metadata_str("version")
    }

    /// `metadata.appVersion`, or empty.
    pub fn app_version(&self) -> &str {
        self.metadata_str("appVersion")
    }

    fn metadata_str(&self, key: &str) -> &str {
        self.metadata.get(key).and_then(Value::as_str).unwrap_or("")
    }
}

fn yaml_file_to_json(path: &str, data: &[u8]) -> Result<Value, ReleaseRecordError> {
    serde_yaml_ng::from_slice(data).map_err(|e| ReleaseRecordError::ChartFileYaml {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Writes a YAML chart file as JSON, which is YAML too. A YAML emitter would write `yes` or
/// `on` unquoted (plain strings in YAML 1.2) and Helm's YAML 1.1 reader would read booleans.
fn yaml_file_as_json(path: &str, value: &impl Serialize) -> Result<Vec<u8>, ReleaseRecordError> {
    let mut json =
        serde_json::to_vec_pretty(value).map_err(|e| ReleaseRecordError::ChartFileWrite {
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    json.push(b'\n');
    Ok(json)
}

fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}

fn is_zero_i64(n: &i64) -> bool {
    *n == 0
}

/// Go's JSON decoder leaves a field at its zero value on `null`; serde would fail.
fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// Helm's `pkg/time.Time` in JSON: Go's RFC 3339 with nanoseconds (trailing zeros trimmed,
/// `Z` for UTC) and `""` for the zero time.
mod helm_time {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};
    use time::format_description::well_known::Rfc3339;
    use time::{OffsetDateTime, UtcOffset};

    pub fn serialize<S: Serializer>(t: &Option<OffsetDateTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            None => s.serialize_str(""),
            Some(t) => s.serialize_str(&format(*t)),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<OffsetDateTime>, D::Error> {
        let text = Option::<String>::deserialize(d)?.unwrap_or_default();
        if text.is_empty() {
            return Ok(None);
        }
        let t = OffsetDateTime::parse(&text, &Rfc3339)
            .map_err(|e| D::Error::custom(format!("time {text:?} is not RFC 3339: {e}")))?;
        // Go's zero time, should another writer spell it out.
        let go_zero = time::macros::datetime!(0001-01-01 00:00:00 UTC);
        Ok((t != go_zero).then_some(t))
    }

    /// Go's `time.RFC3339Nano` layout, which `time.Time.MarshalJSON` uses.
    pub(super) fn format(t: OffsetDateTime) -> String {
        let mut out = format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second()
        );
        if t.nanosecond() != 0 {
            let fraction = format!("{:09}", t.nanosecond());
            out.push('.');
            out.push_str(fraction.trim_end_matches('0'));
        }
        let offset: UtcOffset = t.offset();
        if offset.is_utc() {
            out.push('Z');
        } else {
            let (h, m, _) = offset.as_hms();
            let sign = if offset.is_negative() { '-' } else { '+' };
            out.push_str(&format!(
                "{sign}{:02}:{:02}",
                h.unsigned_abs(),
                m.unsigned_abs()
            ));
        }
        out
    }
}

/// Go `[]byte` in JSON: standard base64, `null` for nil.
mod go_bytes {
    use base64::Engine as _;
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::BASE64.encode(data))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let text = Option::<String>::deserialize(d)?.unwrap_or_default();
        super::BASE64
            .decode(text.as_bytes())
            .map_err(D::Error::custom)
    }
}

/// Go `[]byte` where nil (`null`) is distinct from empty, as for a chart's schema.
mod go_bytes_opt {
    use serde::{Deserializer, Serializer};

    pub fn serialize<S: Serializer>(data: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match data {
            None => s.serialize_none(),
            Some(data) => super::go_bytes::serialize(data, s),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        use serde::Deserialize;
        let text = Option::<String>::deserialize(d)?;
        text.map(|t| {
            use base64::Engine as _;
            super::BASE64
                .decode(t.as_bytes())
                .map_err(serde::de::Error::custom)
        })
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest;

    // Genuine records written by Helm v3.21.4's Secrets driver; see the fixture's README.
    const V1: &str = include_str!("../tests/fixtures/helm-3.21.4/web.v1.release");
    const V2: &str = include_str!("../tests/fixtures/helm-3.21.4/web.v2.release");
    const V1_IST: &str = include_str!("../tests/fixtures/helm-3.21.4/web-ist.v1.release");
    const V2_SECRET: &str = include_str!("../tests/fixtures/helm-3.21.4/web.v2.secret.json");
    const TEMPLATE: &str = include_str!("../tests/fixtures/helm-3.21.4/web.template.yaml");
    // Written by the `helm` v3.21.4 CLI to a real Kubernetes API server, read back with kubectl.
    const CLUSTER_V1: &str = include_str!("../tests/fixtures/helm-3.21.4/cluster-web.v1.release");
    const CLUSTER_V2: &str = include_str!("../tests/fixtures/helm-3.21.4/cluster-web.v2.release");
    const CLUSTER_V2_SECRET: &str =
        include_str!("../tests/fixtures/helm-3.21.4/cluster-web.v2.secret.json");

    fn helm_json(record: &str) -> Value {
        let gzipped = BASE64.decode(record.trim()).unwrap();
        let mut json = Vec::new();
        flate2::read::GzDecoder::new(gzipped.as_slice())
            .read_to_end(&mut json)
            .unwrap();
        serde_json::from_slice(&json).unwrap()
    }

    #[test]
    fn decodes_a_record_helm_wrote() {
        let release = decode(V2.as_bytes()).unwrap();
        assert_eq!(
            (
                release.name.as_str(),
                release.namespace.as_str(),
                release.version
            ),
            ("web", "demo", 2)
        );
        assert_eq!(release.info.status, Status::Deployed);
        assert_eq!(release.info.description, "Upgrade complete");
        assert!(release.info.notes.starts_with("1. Get the application URL"));
        assert!(release.info.first_deployed.is_some());
        assert!(release.info.last_deployed > release.info.first_deployed);
        assert_eq!(release.info.deleted, None);
        assert_eq!(
            Value::Object(release.config.clone()),
            serde_json::json!({"replicaCount": 3})
        );
        assert!(release.labels.is_empty());

        let chart = &release.chart;
        assert_eq!(
            (chart.name(), chart.version(), chart.app_version()),
            ("web", "0.1.0", "1.16.0")
        );
        assert_eq!(chart.lock, None);
        assert_eq!(chart.values["replicaCount"], 1);
        assert_eq!(
            chart.schema.as_deref(),
            Some(&b"{\"$schema\":\"https://json-schema.org/draft-07/schema#\",\"type\":\"object\"}\n"[..])
        );
        let files: Vec<_> = chart.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(files, [".helmignore", "files/greeting.txt"]);
        assert_eq!(chart.files[1].data, b"hello\n");
        assert_eq!(chart.templates.len(), 11);
        assert!(
            chart
                .templates
                .iter()
                .all(|t| t.name.starts_with("templates/"))
        );

        assert_eq!(release.hooks.len(), 2);
        let job = &release.hooks[1];
        assert_eq!(job.last_run.phase, HookPhase::Succeeded);
        assert!(job.last_run.completed_at >= job.last_run.started_at);
        assert_eq!(release.hooks[0].last_run, HookExecution::default());

        let v1 = decode(V1.as_bytes()).unwrap();
        assert_eq!((v1.version, v1.info.status), (1, Status::Superseded));
        assert_eq!(v1.info.description, "Install complete");
    }

    #[test]
    fn re_encoding_a_helm_record_gives_the_same_json() {
        // Same fields, same omissions, same time and []byte spellings as Go's encoder.
        for record in [V1, V2, V1_IST, CLUSTER_V1, CLUSTER_V2] {
            let release = decode(record.as_bytes()).unwrap();
            assert_eq!(serde_json::to_value(&release).unwrap(), helm_json(record));
        }
        let ist = decode(V1_IST.as_bytes()).unwrap();
        assert_eq!(
            ist.info.first_deployed.unwrap().offset(),
            time::macros::offset!(+5:30)
        );
    }

    #[test]
    fn what_optikon_renders_is_what_helm_stored() {
        let rendered = manifest::parse(TEMPLATE).unwrap();
        let mut objects = rendered.objects;
        manifest::install_order(&mut objects);
        let hooks: Vec<Hook> = rendered.hooks.iter().map(Hook::from).collect();

        // `helm install --no-hooks` on a real cluster records hooks unrun, as Optikon does.
        let cluster = decode(CLUSTER_V2.as_bytes()).unwrap();
        assert_eq!(manifest::to_manifest_string(&objects), cluster.manifest);
        assert_eq!(hooks, cluster.hooks);

        let release = decode(V2.as_bytes()).unwrap();
        assert_eq!(manifest::to_manifest_string(&objects), release.manifest);
        let mut ran = hooks.clone();
        // Here Helm ran the pre-install Job.
        ran[1].last_run = release.hooks[1].last_run.clone();
        assert_eq!(ran, release.hooks);
    }

    #[test]
    fn round_trips() {
        let mut release = decode(V2.as_bytes()).unwrap();
        release.info.deleted = Some(time::macros::datetime!(2024-02-29 23:59:59.5 -03:30));
        release.info.status = Status::PendingRollback;
        let encoded = encode(&release).unwrap();
        assert_eq!(BASE64.decode(&encoded).unwrap()[..3], GZIP_MAGIC);
        assert_eq!(decode(encoded.as_bytes()).unwrap(), release);
        assert!(helm_json(&encoded)["info"]["deleted"] == "2024-02-29T23:59:59.5-03:30");
        assert!(helm_json(&encoded)["info"]["status"] == "pending-rollback");
    }

    #[test]
    fn minimal_release_is_written_as_helm_writes_it() {
        let release = HelmRelease {
            name: "web".into(),
            version: 1,
            namespace: "demo".into(),
            info: Info {
                first_deployed: Some(time::macros::datetime!(2025-01-02 03:04:05 UTC)),
                last_deployed: Some(time::macros::datetime!(2025-01-02 03:04:05.000120 UTC)),
                status: Status::Deployed,
                ..Info::default()
            },
            hooks: vec![Hook {
                events: vec![HookEvent::Test],
                ..Hook::default()
            }],
            ..HelmRelease::default()
        };
        let json = serde_json::to_value(&release).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "name": "web",
                "info": {
                    "first_deployed": "2025-01-02T03:04:05Z",
                    "last_deployed": "2025-01-02T03:04:05.00012Z",
                    "deleted": "",
                    "status": "deployed"
                },
                "chart": {"metadata": null, "lock": null, "templates": [], "values": {}, "schema": null, "files": []},
                "hooks": [{"events": ["test"], "last_run": {"started_at": "", "completed_at": "", "phase": ""}}],
                "version": 1,
                "namespace": "demo"
            })
        );
        // Go's zero time and nulls read as absent.
        let read: HelmRelease = serde_json::from_value(serde_json::json!({
            "info": {"first_deployed": "0001-01-01T00:00:00Z", "deleted": null, "status": "failed"},
            "chart": {"templates": null, "values": null, "files": null, "schema": ""},
            "config": null,
            "hooks": null
        }))
        .unwrap();
        assert_eq!(read.info.first_deployed, None);
        assert_eq!(read.info.status, Status::Failed);
        assert_eq!(read.chart.schema, Some(vec![]));
    }

    #[test]
    fn decodes_records_without_gzip_like_helm() {
        let plain = BASE64.encode(br#"{"name":"old","version":3,"info":{"status":"superseded"}}"#);
        let release = decode(plain.as_bytes()).unwrap();
        assert_eq!((release.name.as_str(), release.version), ("old", 3));
        // A trailing newline, as `kubectl get -o jsonpath | base64 -d` leaves, is fine.
        assert!(decode(format!("{V2}\n").as_bytes()).is_ok());
    }

    #[test]
    fn decode_errors_say_what_is_wrong() {
        let err = decode(b"not base64!").unwrap_err().to_string();
        assert!(
            err.starts_with("release record is not valid base64"),
            "{err}"
        );
        let broken_gzip = BASE64.encode([0x1f, 0x8b, 0x08, 0, 1, 2, 3]);
        let err = decode(broken_gzip.as_bytes()).unwrap_err().to_string();
        assert!(
            err.starts_with("release record is not valid gzip data"),
            "{err}"
        );
        let err = decode(BASE64.encode(b"[1]").as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("release record is not a Helm release in JSON"),
            "{err}"
        );
        let err = decode(
            BASE64
                .encode(br#"{"info":{"status":"sleeping"}}"#)
                .as_bytes(),
        )
        .unwrap_err();
        assert!(err.to_string().contains("sleeping"), "{err}");
        let err = decode_within(V2.as_bytes(), 1000).unwrap_err().to_string();
        assert_eq!(
            err,
            "release record expands to more than 1000 bytes; refusing to read it"
        );
    }

    #[test]
    fn secret_name_type_and_labels_match_helms_driver() {
        for (record, secret) in [(V2, V2_SECRET), (CLUSTER_V2, CLUSTER_V2_SECRET)] {
            let secret: Value = serde_json::from_str(secret).unwrap();
            assert_eq!(secret["type"], SECRET_TYPE);
            let helm_labels: BTreeMap<String, String> =
                serde_json::from_value(secret["labels"].clone()).unwrap();
            // Helm's final write of v2 was an update (pending-upgrade → deployed).
            let modified: i64 = helm_labels["modifiedAt"].parse().unwrap();
            let at = OffsetDateTime::from_unix_timestamp(modified).unwrap();
            let release = decode(record.as_bytes()).unwrap();
            assert_eq!(
                secret_labels(&release, SecretWrite::Update { at }),
                helm_labels
            );
        }

        let secret: Value = serde_json::from_str(V2_SECRET).unwrap();
        let helm_labels: BTreeMap<String, String> =
            serde_json::from_value(secret["labels"].clone()).unwrap();
        let mut release = decode(V2.as_bytes()).unwrap();
        assert_eq!(release.secret_name(), "sh.helm.release.v1.web.v2");
        assert_eq!(secret_name("a-b", 12), "sh.helm.release.v1.a-b.v12");
        let modified: i64 = helm_labels["modifiedAt"].parse().unwrap();
        let at = OffsetDateTime::from_unix_timestamp(modified).unwrap();

        // The release's own labels go on the Secret too; system labels in them are overridden.
        release.labels = BTreeMap::from([
            ("team".into(), "edge".into()),
            ("owner".into(), "me".into()),
        ]);
        let created = secret_labels(&release, SecretWrite::Create { at });
        let expected: BTreeMap<String, String> = [
            ("createdAt", modified.to_string().as_str()),
            ("name", "web"),
            ("owner", "helm"),
            ("status", "deployed"),
            ("team", "edge"),
            ("version", "2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(created, expected);
        assert_eq!(
            release_labels_from_secret(&created),
            BTreeMap::from([("team".to_owned(), "edge".to_owned())])
        );
    }

    #[test]
    fn chart_files_round_trip_through_a_helm_record() {
        let release = decode(V2.as_bytes()).unwrap();
        let files = release.to_chart_files().unwrap();
        let names: Vec<_> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            &names[..3],
            ["Chart.yaml", "values.yaml", "values.schema.json"]
        );
        assert!(names.contains(&"templates/tests/test-connection.yaml"));
        assert!(names.contains(&"files/greeting.txt"));

        let chart_yaml: Value = serde_yaml_ng::from_slice(&files[0].1).unwrap();
        assert_eq!(chart_yaml, release.chart.metadata);
        let values: Map<String, Value> = serde_yaml_ng::from_slice(&files[1].1).unwrap();
        assert_eq!(values, release.chart.values);

        let rebuilt = HelmChart::from_files(chart_yaml, values, files).unwrap();
        assert_eq!(rebuilt, release.chart);
    }

    #[test]
    fn rebuilt_chart_files_keep_strings_that_yaml_1_1_would_read_as_booleans() {
        let tricky = serde_json::json!({"a": "yes", "b": "on", "N": "off", "c": "1_000", "d": "0755", "e": 1.5, "f": [true, null]});
        let chart = HelmChart {
            metadata: serde_json::json!({"apiVersion": "v2", "name": "y", "version": "1.0", "appVersion": "on"}),
            values: tricky.as_object().unwrap().clone(),
            ..HelmChart::default()
        };
        let files = HelmRelease {
            chart,
            ..HelmRelease::default()
        }
        .to_chart_files()
        .unwrap();
        let values = String::from_utf8(files[1].1.clone()).unwrap();
        // Every string is double-quoted, so no YAML reader can take it for anything else.
        assert!(values.contains("\"a\": \"yes\""), "{values}");
        assert!(values.contains("\"N\": \"off\""), "{values}");
        assert_eq!(serde_yaml_ng::from_str::<Value>(&values).unwrap(), tricky);
        let chart_yaml = String::from_utf8(files[0].1.clone()).unwrap();
        assert!(
            chart_yaml.contains("\"appVersion\": \"on\""),
            "{chart_yaml}"
        );
    }

    #[test]
    fn from_files_sorts_like_helms_loader() {
        let files = [
            ("Chart.yaml", "apiVersion: v2\nname: c\nversion: 1.0.0\n"),
            ("values.yaml", "a: 1\n"),
            ("templates/cm.yaml", "kind: ConfigMap"),
            ("README.md", "read me"),
            (
                "Chart.lock",
                "dependencies:\n- name: db\n  repository: https://x\n  version: 1.2.3\ndigest: sha256:abc\ngenerated: \"2024-01-01T00:00:00Z\"\n",
            ),
            ("values.schema.json", "{}"),
            ("charts/db/Chart.yaml", "name: db"),
            ("charts/db/templates/x.yaml", "x"),
            ("charts/db-1.2.3.tgz", "\u{1f}"),
            ("charts/db-1.2.3.tgz.prov", "signature"),
            ("requirements.yaml", "dependencies: []"),
            ("ci/values.yaml", "b: 2"),
        ];
        let metadata = serde_json::json!({"apiVersion": "v2", "name": "c", "version": "1.0.0"});
        let values = serde_json::json!({"a": 1}).as_object().unwrap().clone();
        let chart = HelmChart::from_files(metadata.clone(), values.clone(), files).unwrap();
        assert_eq!(chart.metadata, metadata);
        assert_eq!(chart.values, values);
        assert_eq!(chart.schema.as_deref(), Some(&b"{}"[..]));
        assert_eq!(
            chart.lock.as_ref().unwrap()["dependencies"][0]["name"],
            "db"
        );
        let names = |files: &[HelmFile]| files.iter().map(|f| f.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&chart.templates), ["templates/cm.yaml"]);
        // Subcharts are not stored (as in Helm); provenance files are; requirements.yaml only for v1.
        assert_eq!(
            names(&chart.files),
            ["README.md", "charts/db-1.2.3.tgz.prov", "ci/values.yaml"]
        );

        let rebuilt = HelmRelease {
            chart: chart.clone(),
            ..HelmRelease::default()
        }
        .to_chart_files()
        .unwrap();
        let lock = rebuilt.iter().find(|(n, _)| n == "Chart.lock").unwrap();
        assert_eq!(
            serde_yaml_ng::from_slice::<Value>(&lock.1).unwrap(),
            chart.lock.clone().unwrap()
        );

        let v1 = HelmChart::from_files(
            serde_json::json!({"apiVersion": "v1", "name": "old"}),
            Map::new(),
            [
                ("requirements.yaml", "dependencies: []"),
                ("requirements.lock", "digest: x"),
            ],
        )
        .unwrap();
        assert_eq!(names(&v1.files), ["requirements.yaml", "requirements.lock"]);
        assert_eq!(v1.lock, Some(serde_json::json!({"digest": "x"})));
        let v1_files = HelmRelease {
            chart: v1,
            ..HelmRelease::default()
        }
        .to_chart_files()
        .unwrap();
        assert!(!v1_files.iter().any(|(n, _)| n == "Chart.lock"));

        let err =
            HelmChart::from_files(Value::Null, Map::new(), [("Chart.lock", "a: [")]).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("chart file Chart.lock is not valid YAML: "),
            "{err}"
        );
    }

    #[test]
    fn times_are_written_as_go_writes_them() {
        use time::macros::datetime;
        let cases = [
            (datetime!(2025-06-01 12:00:00 UTC), "2025-06-01T12:00:00Z"),
            (
                datetime!(2025-06-01 12:00:00.1 UTC),
                "2025-06-01T12:00:00.1Z",
            ),
            (
                datetime!(2025-06-01 12:00:00.123456789 +01:00),
                "2025-06-01T12:00:00.123456789+01:00",
            ),
            (
                datetime!(2025-06-01 12:00:00.000000010 -00:30),
                "2025-06-01T12:00:00.00000001-00:30",
            ),
        ];
        for (t, text) in cases {
            assert_eq!(helm_time::format(t), text);
            let exec = HookExecution {
                started_at: Some(t),
                ..HookExecution::default()
            };
            let json = serde_json::to_value(&exec).unwrap();
            assert_eq!(json["started_at"], text);
            assert_eq!(serde_json::from_value::<HookExecution>(json).unwrap(), exec);
        }
    }
}
