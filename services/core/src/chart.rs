//! Validation of uploaded Helm chart archives (.tgz): untrusted bytes in, a checked chart out.
//!
//! [`inspect`] streams the archive once, enforcing size and count limits as it inflates (a
//! compression bomb is stopped at the limit, never inflated), refuses anything that could
//! escape the chart directory when unpacked, and checks `Chart.yaml`, `values.yaml` and the
//! templates the way Helm's loader and linter do. Templates themselves are Go-template source
//! and are not parsed here; the `helm` binary renders them later.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, Read};
use std::rc::Rc;

use flate2::read::GzDecoder;
use schemars::JsonSchema;
use serde::{Deserialize, Deserializer, Serialize};
use sha2::{Digest, Sha256};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// Bounds on what an upload may cost to inspect and store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChartLimits {
    /// Size of the compressed upload.
    pub max_archive_bytes: u64,
    /// Everything the gzip stream inflates to, tar headers included.
    pub max_unpacked_bytes: u64,
    /// Entries in the archive (files and directories).
    pub max_files: usize,
    /// Any single file.
    pub max_file_bytes: u64,
}

impl Default for ChartLimits {
    /// Helm stores every release, chart included, gzipped in one Kubernetes Secret, which
    /// cannot exceed 1 MiB; a chart that compresses to much more than that can never be
    /// installed. The defaults leave ample room above that (10 MiB compressed, 50 MiB
    /// unpacked — half of Helm's own 100 MiB loader cap) while bounding memory and CPU per
    /// upload. 5 MiB per file is Helm's former per-file cap; 5000 entries is far beyond real
    /// charts (`helm create` makes about ten).
    fn default() -> Self {
        ChartLimits {
            max_archive_bytes: 10 * MIB,
            max_unpacked_bytes: 50 * MIB,
            max_files: 5000,
            max_file_bytes: 5 * MIB,
        }
    }
}

/// Why an upload is not an installable chart.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChartError {
    #[error(
        "chart archive is {size} bytes, more than the limit of {limit} bytes (max_archive_bytes); \
         remove files the chart does not need (list them in .helmignore) and package it again"
    )]
    ArchiveTooLarge { size: u64, limit: u64 },
    #[error(
        "chart archive is not gzip-compressed: {found}; upload the .tgz file that `helm package` produces"
    )]
    NotGzip { found: String },
    #[error("chart archive is truncated ({detail}); upload the complete .tgz file again")]
    Truncated { detail: String },
    #[error("chart archive is corrupt ({detail}); package the chart again with `helm package`")]
    Corrupt { detail: String },
    #[error(
        "chart archive does not contain a valid tar archive ({detail}); upload the .tgz file that \
         `helm package` produces"
    )]
    NotTar { detail: String },
    #[error(
        "chart archive unpacks to more than {limit} bytes (max_unpacked_bytes); a chart this large \
         cannot be stored as a Helm release — remove large files from the chart"
    )]
    UnpackedTooLarge { limit: u64 },
    #[error(
        "chart archive has more than {limit} entries (max_files); remove files the chart does not \
         need (list them in .helmignore)"
    )]
    TooManyFiles { limit: usize },
    #[error(
        "file {path:?} in the chart archive is {size} bytes, more than the per-file limit of {limit} \
         bytes (max_file_bytes); keep large data out of the chart"
    )]
    FileTooLarge { path: String, size: u64, limit: u64 },
    #[error("archive entry {path:?} has a name that is not UTF-8; rename the file")]
    PathNotUtf8 { path: String },
    #[error(
        "archive entry {path:?} has an absolute path; a chart archive holds relative paths under \
         one top-level directory — package the chart with `helm package`"
    )]
    AbsolutePath { path: String },
    #[error(
        "archive entry {path:?} contains a \"..\" component, which would point outside the chart; \
         package the chart with `helm package`"
    )]
    ParentReference { path: String },
    #[error("archive entry {path:?} has a control character in its name; rename the file")]
    ControlCharacter { path: String },
    #[error(
        "archive entry {path:?} is a {kind}; a chart archive may hold only regular files and \
         directories — replace it with a regular file"
    )]
    UnsupportedEntry { path: String, kind: String },
    #[error(
        "archive entry {path:?} is not inside the chart directory; the archive must hold a single \
         top-level directory with the whole chart in it, as `helm package` makes"
    )]
    OutsideRoot { path: String },
    #[error(
        "chart archive has more than one top-level directory ({first:?} and {second:?}); package \
         one chart per archive with `helm package`"
    )]
    SeveralRoots { first: String, second: String },
    #[error("file {path:?} appears more than once in the chart archive; keep one copy")]
    DuplicatePath { path: String },
    #[error(
        "chart archive uses {path:?} both as a file and as a directory, so it cannot be unpacked \
         consistently; package the chart again"
    )]
    PathConflict { path: String },
    #[error("chart archive contains no files; package a chart directory with `helm package`")]
    Empty,
    #[error(
        "chart archive has no Chart.yaml in its top-level directory {root:?}; every chart needs one there"
    )]
    MissingChartYaml { root: String },
    #[error("{path} is not UTF-8 text (invalid byte at offset {offset}); save it as UTF-8{advice}")]
    NotUtf8 {
        path: String,
        offset: usize,
        advice: &'static str,
    },
    #[error("Chart.yaml cannot be read: {detail}; fix the YAML")]
    ChartYamlSyntax { detail: String },
    #[error("Chart.yaml has no {field}; add it, e.g. `{example}`")]
    MissingField {
        field: &'static str,
        example: &'static str,
    },
    #[error(
        "apiVersion {value:?} in Chart.yaml is not supported; use \"v2\" (Helm 3 charts) or \"v1\""
    )]
    ApiVersion { value: String },
    #[error(
        "chart name {name:?} in Chart.yaml is invalid: {problem}; use lowercase letters, digits and \
         '-' (Helm's rule for chart names)"
    )]
    ChartName { name: String, problem: String },
    #[error(
        "version {version:?} in Chart.yaml is not a version Helm accepts (SemVer, e.g. \"1.2.3\" \
         or \"1.2.3-rc.1\"): {detail}"
    )]
    Version { version: String, detail: String },
    #[error("type {value:?} in Chart.yaml is not valid; use \"application\" (or leave it out)")]
    ChartType { value: String },
    #[error(
        "chart {name:?} is a library chart (type: library), and Helm cannot install library charts; \
         upload an application chart that depends on it"
    )]
    LibraryChart { name: String },
    #[error("dependency #{number} in Chart.yaml: {problem}")]
    Dependency { number: usize, problem: String },
    #[error("values.yaml cannot be read: {detail}; fix the YAML")]
    ValuesSyntax { detail: String },
    #[error("values.yaml must be a mapping of keys to values (or empty), but it is {found}")]
    ValuesNotMapping { found: &'static str },
    #[error(
        "values.schema.json is not valid JSON ({detail}); Helm would refuse to install the chart — fix or remove it"
    )]
    ValuesSchema { detail: String },
}

/// A chart's `Chart.yaml`. Serializes with the field names, order and omissions of Helm's
/// `chart.Metadata` JSON, because it is written into the Helm release records that
/// `helm list` reads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", default)]
pub struct ChartMetadata {
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub name: String,
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub home: String,
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub sources: Vec<String>,
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub version: String,
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub description: String,
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub keywords: Vec<String>,
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub maintainers: Vec<Maintainer>,
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub icon: String,
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub api_version: String,
    /// Helm 2 era; kept so that such charts round-trip.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub condition: String,
    /// Helm 2 era; kept so that such charts round-trip.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub tags: String,
    /// Written as a string even when Chart.yaml has a bare number, with Helm's text of that
    /// number: unquoted `appVersion: 1.10` is "1.1", as Helm reads it.
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub app_version: String,
    #[serde(deserialize_with = "null_default", skip_serializing_if = "is_false")]
    pub deprecated: bool,
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub kube_version: String,
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub dependencies: Vec<Dependency>,
    /// `application` (or empty) or `library`.
    #[serde(
        rename = "type",
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub chart_type: String,
}

/// A chart maintainer, as in Helm's `chart.Maintainer`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Maintainer {
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub name: String,
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub email: String,
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub url: String,
}

/// A dependency declared in Chart.yaml, as in Helm 3's `chart.Dependency` (`name` and
/// `repository` are always written, like Helm does).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(default)]
pub struct Dependency {
    #[serde(deserialize_with = "null_default")]
    pub name: String,
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub version: String,
    #[serde(deserialize_with = "null_default")]
    pub repository: String,
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub condition: String,
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub tags: Vec<String>,
    #[serde(deserialize_with = "null_default", skip_serializing_if = "is_false")]
    pub enabled: bool,
    /// Strings or `{child, parent}` mappings.
    #[serde(
        rename = "import-values",
        deserialize_with = "null_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub import_values: Vec<serde_json::Value>,
    #[serde(
        deserialize_with = "null_default",
        skip_serializing_if = "String::is_empty"
    )]
    pub alias: String,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Go leaves a field at its zero value for `key: ~` (or `key:`); do the same instead of
/// failing on the null.
fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

impl ChartMetadata {
    /// Parses and checks a `Chart.yaml` as Helm's loader and linter would (see [`inspect`]
    /// for the rules). A missing `apiVersion` becomes "v1", as in Helm.
    pub fn from_chart_yaml(data: &[u8]) -> Result<ChartMetadata, ChartError> {
        parse_chart_yaml(data).map(|(metadata, _)| metadata)
    }
}

/// One file of a chart.
#[derive(Clone, PartialEq, Eq)]
pub struct ChartFile {
    /// Relative to the chart's top-level directory, '/'-separated, e.g. `templates/service.yaml`.
    pub path: String,
    pub data: Vec<u8>,
}

impl fmt::Debug for ChartFile {
    // The bytes would drown everything else in test failures and logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChartFile")
            .field("path", &self.path)
            .field("len", &self.data.len())
            .finish()
    }
}

/// A chart archive that passed [`inspect`].
#[derive(Debug, Clone, PartialEq)]
pub struct ChartArchive {
    pub metadata: ChartMetadata,
    /// `sha256:<hex>` of the archive bytes.
    pub digest: String,
    /// Size of the archive in bytes.
    pub size: u64,
    /// The archive's top-level directory (normally the chart name).
    pub root: String,
    /// Every regular file, sorted by path.
    pub files: Vec<ChartFile>,
    /// Things Helm accepts but that deserve a look, as sentences for the uploader.
    pub warnings: Vec<String>,
}

impl ChartArchive {
    /// The files under `templates/`.
    pub fn templates(&self) -> impl Iterator<Item = &ChartFile> {
        self.files
            .iter()
            .filter(|f| f.path.starts_with("templates/"))
    }

    /// The file at `path` (relative to the chart root), if any.
    pub fn file(&self, path: &str) -> Option<&ChartFile> {
        self.files
            .binary_search_by(|f| f.path.as_str().cmp(path))
            .ok()
            .map(|i| &self.files[i])
    }

    /// `values.yaml` as a JSON object; `{}` when the chart has none.
    ///
    /// YAML is read as YAML 1.2: unlike Helm's YAML 1.1 reader, `yes`/`on` stay strings.
    pub fn default_values(&self) -> Result<serde_json::Value, ChartError> {
        match self.file("values.yaml") {
            Some(f) => parse_values(&f.data),
            None => Ok(serde_json::Value::Object(Default::default())),
        }
    }
}

/// `sha256:<hex>` of `bytes`, the form OCI registries and Helm use for digests.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Checks an uploaded chart archive and returns its files and metadata.
///
/// Rules, beyond the limits in `limits`:
/// - gzip containing tar (pax and GNU long names are fine);
/// - only regular files and directories; no absolute paths, `..`, or control characters;
///   `\` separators (archives made on Windows) are read as `/`, as Helm does;
/// - exactly one top-level directory holding everything; `./` prefixes are ignored;
/// - `Chart.yaml` at the top: `apiVersion` v2 or v1, `name` of lowercase letters, digits and
///   `-`, `version` SemVer as Helm reads it ([`helm_version`]), `type` application (library charts cannot be installed);
/// - `values.yaml`, if present, a mapping or empty; `values.schema.json`, if present, JSON;
/// - every file under `templates/` UTF-8 text.
pub fn inspect(bytes: &[u8], limits: &ChartLimits) -> Result<ChartArchive, ChartError> {
    let size = bytes.len() as u64;
    if size > limits.max_archive_bytes {
        return Err(ChartError::ArchiveTooLarge {
            size,
            limit: limits.max_archive_bytes,
        });
    }
    check_gzip_magic(bytes)?;
    let entries = unpack(bytes, limits)?;
    let (root, files) = arrange(entries)?;
    let chart_yaml = files
        .get("Chart.yaml")
        .ok_or_else(|| ChartError::MissingChartYaml { root: root.clone() })?;
    let (metadata, mut warnings) = parse_chart_yaml(chart_yaml)?;
    if metadata.chart_type == "library" {
        return Err(ChartError::LibraryChart {
            name: metadata.name,
        });
    }
    if let Some(values) = files.get("values.yaml") {
        parse_values(values)?;
    }
    if let Some(schema) = files.get("values.schema.json") {
        serde_json::from_slice::<serde_json::Value>(strip_bom(schema)).map_err(|e| {
            ChartError::ValuesSchema {
                detail: e.to_string(),
            }
        })?;
    }
    for (path, data) in files.iter().filter(|(p, _)| p.starts_with("templates/")) {
        utf8(
            path,
            data,
            "; templates must be text — keep binary data in files outside templates/ and read it with .Files",
        )?;
    }
    if root != metadata.name {
        warnings.push(format!(
            "the archive's top-level directory is {root:?} but Chart.yaml names the chart {:?}; \
             Helm loads it anyway, and `helm package` would name the directory {:?}",
            metadata.name, metadata.name
        ));
    }
    Ok(ChartArchive {
        metadata,
        digest: digest(bytes),
        size,
        root,
        files: files
            .into_iter()
            .map(|(path, data)| ChartFile { path, data })
            .collect(),
        warnings,
    })
}

fn check_gzip_magic(bytes: &[u8]) -> Result<(), ChartError> {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(());
    }
    let found = if bytes.is_empty() {
        "the upload is empty".to_owned()
    } else if bytes.get(257..262) == Some(b"ustar") {
        "it is an uncompressed tar archive — compress it with gzip".to_owned()
    } else if bytes.starts_with(b"PK\x03\x04") {
        "it is a zip archive".to_owned()
    } else if bytes
        .iter()
        .take(512)
        .all(|&b| b.is_ascii_graphic() || b.is_ascii_whitespace())
    {
        "it looks like a text file (a Chart.yaml or values.yaml?)".to_owned()
    } else {
        let head: Vec<String> = bytes.iter().take(4).map(|b| format!("{b:02x}")).collect();
        format!("it starts with bytes {} instead of 1f 8b", head.join(" "))
    };
    Err(ChartError::NotGzip { found })
}

/// What went wrong below the tar reader, recorded by [`Meter`] so the error can be told
/// apart from tar's own (which wraps it).
#[derive(Debug, Clone)]
enum StreamFault {
    TooLarge,
    Truncated(String),
    Corrupt(String),
}

/// Counts inflated bytes and fails the read that passes the limit, so nothing beyond
/// `limit + 1` bytes is ever inflated.
struct Meter<R> {
    inner: R,
    count: u64,
    limit: u64,
    fault: Rc<RefCell<Option<StreamFault>>>,
}

impl<R: Read> Read for Meter<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // One byte of room past the limit tells "exactly at the limit" from "over it".
        let room = (self.limit + 1).saturating_sub(self.count);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        if want == 0 && !buf.is_empty() {
            return Err(self.fail(StreamFault::TooLarge));
        }
        match self.inner.read(&mut buf[..want]) {
            Ok(n) => {
                self.count += n as u64;
                if self.count > self.limit {
                    return Err(self.fail(StreamFault::TooLarge));
                }
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Err(self.fail(
                StreamFault::Truncated(format!("the gzip stream ends early: {e}")),
            )),
            Err(e) => Err(self.fail(StreamFault::Corrupt(format!("gzip: {e}")))),
        }
    }
}

impl<R> Meter<R> {
    fn fail(&self, fault: StreamFault) -> io::Error {
        let e = io::Error::other(match &fault {
            StreamFault::TooLarge => "inflated size limit reached".to_owned(),
            StreamFault::Truncated(d) | StreamFault::Corrupt(d) => d.clone(),
        });
        *self.fault.borrow_mut() = Some(fault);
        e
    }
}

/// Turns an I/O error from the tar reader into the cause the user can act on.
fn stream_error(
    fault: &RefCell<Option<StreamFault>>,
    limits: &ChartLimits,
    e: io::Error,
) -> ChartError {
    match fault.borrow().clone() {
        Some(StreamFault::TooLarge) => ChartError::UnpackedTooLarge {
            limit: limits.max_unpacked_bytes,
        },
        Some(StreamFault::Truncated(detail)) => ChartError::Truncated { detail },
        Some(StreamFault::Corrupt(detail)) => ChartError::Corrupt { detail },
        None => ChartError::NotTar {
            detail: e.to_string(),
        },
    }
}

/// An archive entry that passed the per-entry checks.
struct RawEntry {
    /// As written in the archive, for messages.
    path: String,
    /// Normalized components (no empty, `.` or `..` parts).
    components: Vec<String>,
    /// `None` for a directory.
    data: Option<Vec<u8>>,
}

fn unpack(bytes: &[u8], limits: &ChartLimits) -> Result<Vec<RawEntry>, ChartError> {
    let fault = Rc::new(RefCell::new(None));
    let meter = Meter {
        inner: GzDecoder::new(bytes),
        count: 0,
        limit: limits.max_unpacked_bytes,
        fault: fault.clone(),
    };
    let mut archive = tar::Archive::new(meter);
    let fail = |e: io::Error| stream_error(&fault, limits, e);
    let mut out = Vec::new();
    for entry in archive.entries().map_err(fail)? {
        let mut entry = entry.map_err(fail)?;
        let kind = entry.header().entry_type();
        // Global pax headers only carry defaults such as mtimes (git archive writes one).
        if kind.is_pax_global_extensions() {
            continue;
        }
        if out.len() >= limits.max_files {
            return Err(ChartError::TooManyFiles {
                limit: limits.max_files,
            });
        }
        let path = String::from_utf8(entry.path_bytes().into_owned()).map_err(|e| {
            ChartError::PathNotUtf8 {
                path: String::from_utf8_lossy(e.as_bytes()).into_owned(),
            }
        })?;
        let components = split_path(&path)?;
        let size = entry.size();
        // Old (v7) archives mark directories only by the trailing slash.
        let is_dir = kind.is_dir() || (kind.is_file() && path.ends_with('/') && size == 0);
        if is_dir {
            out.push(RawEntry {
                path,
                components,
                data: None,
            });
            continue;
        }
        if !(kind.is_file() || kind.is_contiguous()) {
            return Err(ChartError::UnsupportedEntry {
                kind: describe_entry(&entry, kind),
                path,
            });
        }
        if size > limits.max_file_bytes {
            return Err(ChartError::FileTooLarge {
                path,
                size,
                limit: limits.max_file_bytes,
            });
        }
        if size > limits.max_unpacked_bytes {
            return Err(ChartError::UnpackedTooLarge {
                limit: limits.max_unpacked_bytes,
            });
        }
        // Capacity from the header is bounded by the checks above; a lying header just
        // yields a short read.
        let mut data = Vec::with_capacity(size as usize);
        (&mut entry)
            .take(size)
            .read_to_end(&mut data)
            .map_err(fail)?;
        if (data.len() as u64) < size {
            return Err(ChartError::Truncated {
                detail: format!(
                    "the tar data ends inside {path:?} after {} of {size} bytes",
                    data.len()
                ),
            });
        }
        out.push(RawEntry {
            path,
            components,
            data: Some(data),
        });
    }
    // Reading on to the end verifies the gzip checksum; the meter still bounds it, so data
    // hidden after the tar's end marker cannot be a bomb either.
    io::copy(&mut archive.into_inner(), &mut io::sink())
        .map_err(|e| stream_error(&fault, limits, e))?;
    Ok(out)
}

fn describe_entry<R: Read>(entry: &tar::Entry<'_, R>, kind: tar::EntryType) -> String {
    let target = || {
        entry
            .link_name_bytes()
            .map(|t| format!(" to {:?}", String::from_utf8_lossy(&t)))
            .unwrap_or_default()
    };
    match kind {
        tar::EntryType::Symlink => format!("symbolic link{}", target()),
        tar::EntryType::Link => format!("hard link{}", target()),
        tar::EntryType::Char => "character device".to_owned(),
        tar::EntryType::Block => "block device".to_owned(),
        tar::EntryType::Fifo => "FIFO (named pipe)".to_owned(),
        tar::EntryType::GNUSparse => "sparse file".to_owned(),
        other => format!(
            "tar entry of unsupported type {:?}",
            other.as_byte() as char
        ),
    }
}

/// Splits an archive path into safe components, refusing anything that could leave the
/// directory it is unpacked into.
fn split_path(path: &str) -> Result<Vec<String>, ChartError> {
    if path.chars().any(char::is_control) {
        return Err(ChartError::ControlCharacter {
            path: path.to_owned(),
        });
    }
    // Archives made on Windows may use '\'; Helm reads it as a separator, and so do we.
    let normalized = path.replace('\\', "/");
    let is_drive =
        |c: &str| c.len() == 2 && c.as_bytes()[0].is_ascii_alphabetic() && c.as_bytes()[1] == b':';
    if normalized.starts_with('/') || normalized.split('/').next().is_some_and(is_drive) {
        return Err(ChartError::AbsolutePath {
            path: path.to_owned(),
        });
    }
    let mut components = Vec::new();
    for c in normalized.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                return Err(ChartError::ParentReference {
                    path: path.to_owned(),
                });
            }
            c => components.push(c.to_owned()),
        }
    }
    Ok(components)
}

/// Checks the layout (one top-level directory, no duplicates or file/directory clashes) and
/// returns the root and the files keyed by their path under it.
fn arrange(entries: Vec<RawEntry>) -> Result<(String, BTreeMap<String, Vec<u8>>), ChartError> {
    let mut root: Option<String> = None;
    let mut files = BTreeMap::new();
    let mut dirs = BTreeSet::new();
    for entry in entries {
        let Some((top, rest)) = entry.components.split_first() else {
            // `./` itself: harmless as a directory, meaningless as a file.
            if entry.data.is_some() {
                return Err(ChartError::OutsideRoot { path: entry.path });
            }
            continue;
        };
        if rest.is_empty() && entry.data.is_some() {
            return Err(ChartError::OutsideRoot { path: entry.path });
        }
        let root = root.get_or_insert_with(|| top.clone());
        if root != top {
            return Err(ChartError::SeveralRoots {
                first: root.clone(),
                second: top.clone(),
            });
        }
        let relative = rest.join("/");
        // Every ancestor of an entry is a directory, whether or not the archive lists it.
        for i in 1..rest.len() {
            dirs.insert(rest[..i].join("/"));
        }
        match entry.data {
            None => {
                if !relative.is_empty() {
                    dirs.insert(relative);
                }
            }
            Some(data) => {
                if files.insert(relative.clone(), data).is_some() {
                    return Err(ChartError::DuplicatePath { path: relative });
                }
            }
        }
    }
    if let Some(clash) = dirs.iter().find(|d| files.contains_key(*d)) {
        return Err(ChartError::PathConflict {
            path: clash.clone(),
        });
    }
    match root {
        Some(root) if !files.is_empty() => Ok((root, files)),
        _ => Err(ChartError::Empty),
    }
}

fn strip_bom(data: &[u8]) -> &[u8] {
    data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data)
}

fn utf8<'a>(path: &str, data: &'a [u8], advice: &'static str) -> Result<&'a str, ChartError> {
    std::str::from_utf8(data).map_err(|e| ChartError::NotUtf8 {
        path: path.to_owned(),
        offset: e.valid_up_to(),
        advice,
    })
}

/// Parses Chart.yaml and applies Helm's checks; returns the metadata and any warnings.
fn parse_chart_yaml(data: &[u8]) -> Result<(ChartMetadata, Vec<String>), ChartError> {
    let text = utf8("Chart.yaml", strip_bom(data), "")?;
    let mut warnings = Vec::new();
    if text.trim().is_empty() {
        return Err(ChartError::ChartYamlSyntax {
            detail: "the file is empty".into(),
        });
    }
    let syntax = |e: serde_yaml_ng::Error| ChartError::ChartYamlSyntax {
        detail: e.to_string(),
    };
    // A list or scalar would otherwise fill the struct positionally or give a vaguer error.
    let value: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).map_err(syntax)?;
    if !value.is_mapping() {
        return Err(ChartError::ChartYamlSyntax {
            detail: "it must be a mapping of keys to values".into(),
        });
    }
    // Parsed again from the text (not the Value) so that errors carry line numbers.
    let mut md: ChartMetadata = serde_yaml_ng::from_str(text).map_err(syntax)?;
    numbers_as_helm_writes_them(&value, &mut md);
    sanitize_metadata(&mut md);

    match md.api_version.as_str() {
        "v1" | "v2" => {}
        "" => {
            // Helm 2 charts may lack it; Helm's loader then assumes v1, and so do we.
            md.api_version = "v1".into();
            warnings.push("Chart.yaml has no apiVersion, so it is read as \"v1\" (as Helm does); add `apiVersion: v2`".into());
        }
        other => {
            return Err(ChartError::ApiVersion {
                value: other.to_owned(),
            });
        }
    }
    if md.name.is_empty() {
        return Err(ChartError::MissingField {
            field: "name",
            example: "name: my-chart",
        });
    }
    if let Some(problem) = chart_name_problem(&md.name) {
        return Err(ChartError::ChartName {
            name: md.name,
            problem,
        });
    }
    if md.version.is_empty() {
        return Err(ChartError::MissingField {
            field: "version",
            example: "version: 0.1.0",
        });
    }
    if let Err(detail) = helm_version(&md.version) {
        return Err(ChartError::Version {
            version: md.version,
            detail,
        });
    }
    if !matches!(md.chart_type.as_str(), "" | "application" | "library") {
        return Err(ChartError::ChartType {
            value: md.chart_type,
        });
    }
    check_dependencies(&md.dependencies)?;
    Ok((md, warnings))
}

/// Gives the string fields of `md` that Chart.yaml wrote as bare numbers the text Helm's
/// loader makes of them: it reads the number, then prints it, so `appVersion: 1.10` is
/// "1.1" and `version: 1.0` is "1" to `helm show chart`, `helm package` and `helm list`.
/// Quoted, `"1.10"` stays as written. (YAML 1.1's octal `010` is 8 to Helm and 10 here.)
fn numbers_as_helm_writes_them(chart_yaml: &serde_yaml_ng::Value, md: &mut ChartMetadata) {
    let number = |key: &str| match chart_yaml.get(key)? {
        serde_yaml_ng::Value::Number(n) => Some(match n.as_f64() {
            Some(float) if n.is_f64() => helm_float_text(float),
            _ => n.to_string(),
        }),
        _ => None,
    };
    let fields = [
        ("name", &mut md.name),
        ("home", &mut md.home),
        ("version", &mut md.version),
        ("description", &mut md.description),
        ("icon", &mut md.icon),
        ("condition", &mut md.condition),
        ("tags", &mut md.tags),
        ("appVersion", &mut md.app_version),
        ("kubeVersion", &mut md.kube_version),
    ];
    for (key, field) in fields {
        if let Some(text) = number(key) {
            *field = text;
        }
    }
}

/// The text Helm's YAML reader makes of a floating-point number it finds where Chart.yaml
/// wants a string: Go's `FormatFloat(x, 'g', -1, 32)`, the shortest text that reads back as
/// the same single-precision number, with an exponent from 10^6 up or below 10^-4. So 1.10
/// is "1.1", 1.0 is "1", 3.14159265358979 is "3.1415927" and 1000000.0 is "1e+06", as
/// `helm show chart` prints them.
pub fn helm_float_text(x: f64) -> String {
    let single = x as f32;
    let scientific = format!("{single:e}");
    let Some((mantissa, exponent)) = scientific.split_once('e') else {
        return scientific; // inf, NaN
    };
    let exponent: i32 = exponent.parse().unwrap_or(0);
    if (-4..6).contains(&exponent) {
        format!("{single}")
    } else {
        let sign = if exponent < 0 { '-' } else { '+' };
        format!("{mantissa}e{sign}{:02}", exponent.unsigned_abs())
    }
}

/// A chart version read the way Helm reads it (Masterminds semver, not strict): an optional
/// `v`, one to three numbers (missing ones are 0, leading zeros allowed), then SemVer 2
/// pre-release and build parts. `1`, `v1.2` and `01.0.0` are versions to Helm; `latest`,
/// `1.0.0.0` and `1.0.0-01` are not. The result orders versions; the text as written stays
/// the chart's version.
pub fn helm_version(version: &str) -> Result<semver::Version, String> {
    let text = version.strip_prefix('v').unwrap_or(version);
    let core_end = text.find(['-', '+']).unwrap_or(text.len());
    let (core, rest) = text.split_at(core_end);
    let numbers: Vec<&str> = core.split('.').collect();
    if numbers.len() > 3
        || numbers
            .iter()
            .any(|n| n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err("expected one to three numbers separated by dots, as in 1.2.3".into());
    }
    let mut parts = [0u64; 3];
    for (part, number) in parts.iter_mut().zip(&numbers) {
        *part = number
            .parse()
            .map_err(|_| format!("{number} is too large for a version number"))?;
    }
    let canonical = format!("{}.{}.{}{rest}", parts[0], parts[1], parts[2]);
    semver::Version::parse(&canonical).map_err(|e| e.to_string())
}

/// Helm's linter: `^[a-z0-9-]+$` (which also rules out path separators and `.`/`..`).
fn chart_name_problem(name: &str) -> Option<String> {
    let (i, c) = name
        .chars()
        .enumerate()
        .find(|&(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))?;
    Some(if c.is_ascii_uppercase() {
        format!("uppercase {c:?} at position {i}")
    } else {
        format!("character {c:?} at position {i} is not allowed")
    })
}

fn check_dependencies(dependencies: &[Dependency]) -> Result<(), ChartError> {
    let mut seen = BTreeSet::new();
    for (i, d) in dependencies.iter().enumerate() {
        let fail = |problem: String| ChartError::Dependency {
            number: i + 1,
            problem,
        };
        if d.name.is_empty() {
            return Err(fail(
                "it has no name; give the name of the chart it depends on".into(),
            ));
        }
        // Helm's alias rule: the alias becomes a values key.
        if let Some(c) = d
            .alias
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(fail(format!(
                "alias {:?} of {:?} contains {c:?}; use letters, digits, '-' and '_'",
                d.alias, d.name
            )));
        }
        let key = if d.alias.is_empty() {
            &d.name
        } else {
            &d.alias
        };
        if !seen.insert(key.as_str()) {
            return Err(fail(format!(
                "more than one dependency is named {key:?}; give one of them an alias"
            )));
        }
    }
    Ok(())
}

/// Helm's `sanitizeString`: whitespace becomes a space and invisible characters are
/// dropped, so metadata cannot smuggle control or direction-override characters into
/// terminals and UIs.
fn sanitize(s: &mut String) {
    let invisible = |c: char| {
        (c.is_control() && !c.is_whitespace())
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
    };
    if s.chars()
        .any(|c| invisible(c) || (c.is_whitespace() && c != ' '))
    {
        *s = s
            .chars()
            .filter(|&c| !invisible(c))
            .map(|c| if c.is_whitespace() { ' ' } else { c })
            .collect();
    }
}

fn sanitize_metadata(md: &mut ChartMetadata) {
    for s in [
        &mut md.name,
        &mut md.description,
        &mut md.home,
        &mut md.icon,
        &mut md.condition,
        &mut md.tags,
        &mut md.app_version,
        &mut md.kube_version,
    ] {
        sanitize(s);
    }
    md.sources
        .iter_mut()
        .chain(md.keywords.iter_mut())
        .for_each(sanitize);
    for m in &mut md.maintainers {
        [&mut m.name, &mut m.email, &mut m.url]
            .into_iter()
            .for_each(sanitize);
    }
    for d in &mut md.dependencies {
        [
            &mut d.name,
            &mut d.version,
            &mut d.repository,
            &mut d.condition,
        ]
        .into_iter()
        .for_each(sanitize);
        d.tags.iter_mut().for_each(sanitize);
    }
}

/// values.yaml as a JSON object (`{}` when empty).
fn parse_values(data: &[u8]) -> Result<serde_json::Value, ChartError> {
    let text = utf8("values.yaml", strip_bom(data), "")?;
    // Through serde_yaml_ng's own Value: it refuses duplicate keys (as current Helm does) and
    // caps alias expansion, so a "billion laughs" file fails fast.
    let value: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(text).map_err(|e| ChartError::ValuesSyntax {
            detail: e.to_string(),
        })?;
    let found = match value {
        serde_yaml_ng::Value::Null => return Ok(serde_json::Value::Object(Default::default())),
        serde_yaml_ng::Value::Mapping(_) => {
            return yaml_to_json(value, "").map_err(|detail| ChartError::ValuesSyntax { detail });
        }
        serde_yaml_ng::Value::Bool(_) => "a boolean",
        serde_yaml_ng::Value::Number(_) => "a number",
        serde_yaml_ng::Value::String(_) => "a string",
        serde_yaml_ng::Value::Sequence(_) => "a list",
        serde_yaml_ng::Value::Tagged(_) => "a tagged value",
    };
    Err(ChartError::ValuesNotMapping { found })
}

/// Converts YAML to JSON as Helm's YAML reader does: scalar keys become strings, tags are
/// dropped. `at` is the dotted path, for messages.
fn yaml_to_json(value: serde_yaml_ng::Value, at: &str) -> Result<serde_json::Value, String> {
    use serde_json::Value as J;
    use serde_yaml_ng::Value as Y;
    let shown = || {
        if at.is_empty() {
            "the top level".to_owned()
        } else {
            format!("{at:?}")
        }
    };
    Ok(match value {
        Y::Null => J::Null,
        Y::Bool(b) => J::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                J::from(i)
            } else if let Some(u) = n.as_u64() {
                J::from(u)
            } else {
                let f = n.as_f64().unwrap_or(f64::NAN);
                serde_json::Number::from_f64(f).map(J::Number).ok_or_else(|| {
                    format!("the value at {} is {n}, which JSON cannot hold; quote it to make it a string", shown())
                })?
            }
        }
        Y::String(s) => J::String(s),
        Y::Sequence(items) => J::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, v)| yaml_to_json(v, &format!("{at}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(map) => {
            let mut object = serde_json::Map::new();
            for (k, v) in map {
                let key = match k {
                    Y::String(s) => s,
                    Y::Bool(b) => b.to_string(),
                    Y::Number(n) => n.to_string(),
                    Y::Null => "null".to_owned(),
                    _ => {
                        return Err(format!(
                            "a key under {} is a list or mapping; keys must be plain values",
                            shown()
                        ));
                    }
                };
                let child = if at.is_empty() {
                    key.clone()
                } else {
                    format!("{at}.{key}")
                };
                object.insert(key, yaml_to_json(v, &child)?);
            }
            J::Object(object)
        }
        Y::Tagged(tagged) => yaml_to_json(tagged.value, at)?,
    })
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::{Duration, Instant};

    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;

    /// An archive entry to build in tests; paths are written raw, so tests can build the
    /// malicious archives `tar::Builder` itself refuses to write.
    enum E<'a> {
        File(&'a str, &'a [u8]),
        Dir(&'a str),
        Symlink(&'a str, &'a str),
        Hardlink(&'a str, &'a str),
        Fifo(&'a str),
        CharDevice(&'a str),
        /// A file whose path travels in a pax extended header.
        PaxFile(&'a str, &'a [u8]),
        /// A global pax header, as `git archive` writes.
        PaxGlobal,
    }

    fn header(path: &str, kind: tar::EntryType, size: u64) -> tar::Header {
        let mut h = tar::Header::new_ustar();
        let name = path.as_bytes();
        assert!(
            name.len() <= 100,
            "test path {path:?} too long for a raw header"
        );
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(if kind.is_dir() { 0o755 } else { 0o644 });
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        h
    }

    fn tar_bytes(entries: &[E]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for e in entries {
            match *e {
                E::File(p, data) => b
                    .append(&header(p, tar::EntryType::Regular, data.len() as u64), data)
                    .unwrap(),
                E::Dir(p) => b
                    .append(&header(p, tar::EntryType::Directory, 0), io::empty())
                    .unwrap(),
                E::Symlink(p, target) | E::Hardlink(p, target) => {
                    let kind = if matches!(e, E::Symlink(..)) {
                        tar::EntryType::Symlink
                    } else {
                        tar::EntryType::Link
                    };
                    let mut h = header(p, kind, 0);
                    h.set_link_name(target).unwrap();
                    h.set_cksum();
                    b.append(&h, io::empty()).unwrap();
                }
                E::Fifo(p) => b
                    .append(&header(p, tar::EntryType::Fifo, 0), io::empty())
                    .unwrap(),
                E::CharDevice(p) => b
                    .append(&header(p, tar::EntryType::Char, 0), io::empty())
                    .unwrap(),
                E::PaxFile(p, data) => {
                    let record = pax_record("path", p);
                    b.append(
                        &header("PaxHeaders/x", tar::EntryType::XHeader, record.len() as u64),
                        record.as_bytes(),
                    )
                    .unwrap();
                    b.append(
                        &header("truncated-name", tar::EntryType::Regular, data.len() as u64),
                        data,
                    )
                    .unwrap();
                }
                E::PaxGlobal => {
                    let record = pax_record("comment", "0123456789abcdef");
                    b.append(
                        &header(
                            "pax_global_header",
                            tar::EntryType::XGlobalHeader,
                            record.len() as u64,
                        ),
                        record.as_bytes(),
                    )
                    .unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    /// `"<len> key=value\n"`, where `<len>` counts the whole record including itself.
    fn pax_record(key: &str, value: &str) -> String {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while len.to_string().len() + body.len() != len {
            len += 1;
        }
        format!("{len}{body}")
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = GzEncoder::new(Vec::new(), Compression::default());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    fn tgz(entries: &[E]) -> Vec<u8> {
        gzip(&tar_bytes(entries))
    }

    fn check(entries: &[E]) -> Result<ChartArchive, ChartError> {
        inspect(&tgz(entries), &ChartLimits::default())
    }

    fn check_err(entries: &[E]) -> ChartError {
        match check(entries) {
            Ok(chart) => panic!("archive should be rejected, got {chart:?}"),
            Err(e) => e,
        }
    }

    const CHART_YAML: &str = "\
apiVersion: v2
name: nginx
description: A Helm chart for Kubernetes

# A chart can be either an 'application' or a 'library' chart.
type: application

# This is the chart version.
version: 0.1.0

# This is the version number of the application being deployed.
appVersion: \"1.16.0\"
";

    const VALUES_YAML: &str = "\
# Default values for nginx.
replicaCount: 1

image:
  repository: nginx
  pullPolicy: IfNotPresent
  tag: \"\"

imagePullSecrets: []
nameOverride: \"\"
fullnameOverride: \"\"

serviceAccount:
  create: true
  automount: true
  annotations: {}
  name: \"\"

podAnnotations: {}
podLabels: {}

service:
  type: ClusterIP
  port: 80

ingress:
  enabled: false
  className: \"\"
  hosts:
    - host: chart-example.local
      paths:
        - path: /
          pathType: ImplementationSpecific
  tls: []

resources: {}

autoscaling:
  enabled: false
  minReplicas: 1
  maxReplicas: 100
  targetCPUUtilizationPercentage: 80

nodeSelector: {}
tolerations: []
affinity: {}
";

    const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: {{ include \"nginx.fullname\" . }}
  labels:
    {{- include \"nginx.labels\" . | nindent 4 }}
spec:
  {{- if not .Values.autoscaling.enabled }}
  replicas: {{ .Values.replicaCount }}
  {{- end }}
  template:
    spec:
      containers:
        - name: {{ .Chart.Name }}
          image: \"{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}\"
";

    const HELPERS: &str = "\
{{/*
Expand the name of the chart.
*/}}
{{- define \"nginx.name\" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix \"-\" }}
{{- end }}
";

    const NOTES: &str = "1. Get the application URL by running these commands:\n{{- if .Values.ingress.enabled }}\n  http://...\n{{- end }}\n";

    const TEST_CONNECTION: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: \"{{ include \"nginx.fullname\" . }}-test-connection\"
  annotations:
    \"helm.sh/hook\": test
spec:
  containers:
    - name: wget
      image: busybox
      command: ['wget']
      args: ['{{ include \"nginx.fullname\" . }}:{{ .Values.service.port }}']
  restartPolicy: Never
";

    const HELMIGNORE: &str = ".DS_Store\n.git/\n*.swp\n*.bak\n*.tmp\n.idea/\n";

    /// The layout `helm create nginx` followed by `helm package` produces (plus directory
    /// entries, which `tar czf` adds).
    fn nginx_entries() -> Vec<E<'static>> {
        vec![
            E::Dir("nginx/"),
            E::File("nginx/Chart.yaml", CHART_YAML.as_bytes()),
            E::File("nginx/values.yaml", VALUES_YAML.as_bytes()),
            E::Dir("nginx/templates/"),
            E::File("nginx/templates/deployment.yaml", DEPLOYMENT.as_bytes()),
            E::File("nginx/templates/_helpers.tpl", HELPERS.as_bytes()),
            E::File("nginx/templates/NOTES.txt", NOTES.as_bytes()),
            E::Dir("nginx/templates/tests/"),
            E::File(
                "nginx/templates/tests/test-connection.yaml",
                TEST_CONNECTION.as_bytes(),
            ),
            E::File("nginx/.helmignore", HELMIGNORE.as_bytes()),
            E::Dir("nginx/charts/"),
        ]
    }

    /// A minimal valid chart plus `extra` entries.
    fn chart_with<'a>(extra: Vec<E<'a>>) -> Vec<E<'a>> {
        let mut entries = vec![E::File("nginx/Chart.yaml", CHART_YAML.as_bytes())];
        entries.extend(extra);
        entries
    }

    fn chart_yaml_err(chart_yaml: &str) -> ChartError {
        check_err(&[E::File("nginx/Chart.yaml", chart_yaml.as_bytes())])
    }

    #[test]
    fn accepts_a_helm_create_chart() {
        let bytes = tgz(&nginx_entries());
        let chart = inspect(&bytes, &ChartLimits::default()).unwrap();
        assert_eq!(chart.metadata.name, "nginx");
        assert_eq!(chart.metadata.version, "0.1.0");
        assert_eq!(chart.metadata.app_version, "1.16.0");
        assert_eq!(chart.metadata.api_version, "v2");
        assert_eq!(chart.metadata.chart_type, "application");
        assert_eq!(chart.metadata.description, "A Helm chart for Kubernetes");
        assert_eq!(chart.root, "nginx");
        assert_eq!(chart.size, bytes.len() as u64);
        assert_eq!(chart.digest, digest(&bytes));
        assert!(chart.warnings.is_empty(), "{:?}", chart.warnings);
        let paths: Vec<&str> = chart.files.iter().map(|f| f.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                ".helmignore",
                "Chart.yaml",
                "templates/NOTES.txt",
                "templates/_helpers.tpl",
                "templates/deployment.yaml",
                "templates/tests/test-connection.yaml",
                "values.yaml",
            ]
        );
        let templates: Vec<&str> = chart.templates().map(|f| f.path.as_str()).collect();
        assert_eq!(templates.len(), 4, "{templates:?}");
        assert_eq!(
            chart.file("templates/deployment.yaml").unwrap().data,
            DEPLOYMENT.as_bytes()
        );
        assert!(chart.file("templates/missing.yaml").is_none());
        let values = chart.default_values().unwrap();
        assert_eq!(values["replicaCount"], 1);
        assert_eq!(values["image"]["repository"], "nginx");
        assert_eq!(values["ingress"]["hosts"][0]["paths"][0]["path"], "/");
    }

    #[test]
    fn accepts_helm_package_layout_without_directory_entries() {
        let entries: Vec<E> = nginx_entries()
            .into_iter()
            .filter(|e| !matches!(e, E::Dir(_)))
            .collect();
        let chart = check(&entries).unwrap();
        assert_eq!(chart.files.len(), 7);
    }

    #[test]
    fn accepts_dot_slash_prefixes_and_the_dot_directory() {
        let chart = check(&[
            E::Dir("./"),
            E::Dir("./nginx/"),
            E::File("./nginx/Chart.yaml", CHART_YAML.as_bytes()),
            E::File("./nginx//templates/./a.yaml", b"kind: ConfigMap\n"),
        ])
        .unwrap();
        assert_eq!(chart.root, "nginx");
        assert!(chart.file("templates/a.yaml").is_some());
    }

    #[test]
    fn accepts_windows_separators_like_helm() {
        let chart = check(&[
            E::File("nginx\\Chart.yaml", CHART_YAML.as_bytes()),
            E::File("nginx\\templates\\a.yaml", b"x"),
        ])
        .unwrap();
        assert!(chart.file("templates/a.yaml").is_some());
    }

    #[test]
    fn long_names_via_gnu_and_pax_headers_work() {
        let long_dir = "d".repeat(120);
        let gnu_path = format!("nginx/templates/{long_dir}/gnu.yaml");
        let pax_path = format!("nginx/templates/{long_dir}/pax.yaml");
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(CHART_YAML.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, "nginx/Chart.yaml", CHART_YAML.as_bytes())
            .unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(3);
        h.set_mode(0o644);
        // Over 100 bytes: the builder writes a GNU long-name entry first.
        b.append_data(&mut h, &gnu_path, &b"gnu"[..]).unwrap();
        let mut bytes = b.into_inner().unwrap();
        // Drop the end-of-archive blocks and append a pax-named entry and a global header.
        bytes.truncate(bytes.len() - 1024);
        bytes.extend(tar_bytes(&[E::PaxGlobal, E::PaxFile(&pax_path, b"pax")]));
        let chart = inspect(&gzip(&bytes), &ChartLimits::default()).unwrap();
        assert_eq!(
            chart
                .file(&format!("templates/{long_dir}/gnu.yaml"))
                .unwrap()
                .data,
            b"gnu"
        );
        assert_eq!(
            chart
                .file(&format!("templates/{long_dir}/pax.yaml"))
                .unwrap()
                .data,
            b"pax"
        );
        assert_eq!(chart.files.len(), 3);
    }

    #[test]
    fn pax_paths_are_checked_too() {
        let e = check_err(&chart_with(vec![E::PaxFile(
            "nginx/../../etc/cron.d/x",
            b"x",
        )]));
        assert_eq!(
            e,
            ChartError::ParentReference {
                path: "nginx/../../etc/cron.d/x".into()
            }
        );
    }

    #[test]
    fn root_directory_differing_from_chart_name_is_accepted_with_a_warning() {
        let chart = check(&[E::File("nginx-0.1.0/Chart.yaml", CHART_YAML.as_bytes())]).unwrap();
        assert_eq!(chart.root, "nginx-0.1.0");
        assert_eq!(chart.warnings.len(), 1);
        assert!(
            chart.warnings[0].contains("\"nginx-0.1.0\""),
            "{:?}",
            chart.warnings
        );
    }

    #[test]
    fn rejects_oversized_archive_before_reading_it() {
        let bytes = tgz(&nginx_entries());
        let limits = ChartLimits {
            max_archive_bytes: 100,
            ..ChartLimits::default()
        };
        let e = inspect(&bytes, &limits).unwrap_err();
        assert_eq!(
            e,
            ChartError::ArchiveTooLarge {
                size: bytes.len() as u64,
                limit: 100
            }
        );
        assert!(e.to_string().contains("max_archive_bytes"), "{e}");
        // Exactly at the limit is fine.
        let limits = ChartLimits {
            max_archive_bytes: bytes.len() as u64,
            ..ChartLimits::default()
        };
        assert!(inspect(&bytes, &limits).is_ok());
    }

    #[test]
    fn rejects_what_is_not_gzip() {
        let not_gzip = |bytes: &[u8]| match inspect(bytes, &ChartLimits::default()) {
            Err(ChartError::NotGzip { found }) => found,
            other => panic!("expected NotGzip, got {other:?}"),
        };
        assert!(not_gzip(b"").contains("empty"));
        assert!(not_gzip(&tar_bytes(&nginx_entries())).contains("uncompressed tar"));
        assert!(not_gzip(CHART_YAML.as_bytes()).contains("text file"));
        assert!(not_gzip(b"PK\x03\x04rest").contains("zip"));
        assert!(not_gzip(&[0x00, 0x01, 0x02, 0xff, 0x80]).contains("00 01 02 ff"));
        let msg = inspect(b"apiVersion: v2", &ChartLimits::default())
            .unwrap_err()
            .to_string();
        assert!(msg.contains("helm package"), "{msg}");
    }

    #[test]
    fn rejects_truncated_archives() {
        let bytes = tgz(&nginx_entries());
        for cut in [bytes.len() - 1, bytes.len() - 8, bytes.len() / 2, 12] {
            let e = inspect(&bytes[..cut], &ChartLimits::default()).unwrap_err();
            assert!(
                matches!(e, ChartError::Truncated { .. }),
                "cut at {cut}: {e:?}"
            );
            assert!(e.to_string().contains("truncated"), "{e}");
        }
    }

    #[test]
    fn rejects_corrupt_gzip() {
        let bytes = tgz(&nginx_entries());
        // The CRC in the trailer: caught because the whole stream is read.
        let mut bad_crc = bytes.clone();
        let n = bad_crc.len();
        bad_crc[n - 8] ^= 0xff;
        let e = inspect(&bad_crc, &ChartLimits::default()).unwrap_err();
        assert!(
            matches!(&e, ChartError::Corrupt { detail } if detail.contains("checksum")),
            "{e:?}"
        );
        // Garbage in the deflate data.
        let mut bad_data = bytes.clone();
        for b in &mut bad_data[20..60] {
            *b = 0xff;
        }
        let e = inspect(&bad_data, &ChartLimits::default()).unwrap_err();
        assert!(
            matches!(e, ChartError::Corrupt { .. } | ChartError::NotTar { .. }),
            "{e:?}"
        );
    }

    #[test]
    fn rejects_gzip_that_does_not_hold_a_tar() {
        for content in [&b"just some text\n"[..], &[7u8; 2048][..]] {
            let e = inspect(&gzip(content), &ChartLimits::default()).unwrap_err();
            assert!(matches!(e, ChartError::NotTar { .. }), "{e:?}");
            assert!(e.to_string().contains("valid tar"), "{e}");
        }
        // A tar with no entries at all.
        assert_eq!(
            inspect(&gzip(&[0u8; 1024]), &ChartLimits::default()).unwrap_err(),
            ChartError::Empty
        );
        assert_eq!(
            inspect(&gzip(b""), &ChartLimits::default()).unwrap_err(),
            ChartError::Empty
        );
    }

    #[test]
    fn rejects_escaping_paths() {
        assert_eq!(
            check_err(&chart_with(vec![E::File("/etc/passwd", b"x")])),
            ChartError::AbsolutePath {
                path: "/etc/passwd".into()
            }
        );
        assert_eq!(
            check_err(&chart_with(vec![E::File("nginx/../../evil", b"x")])),
            ChartError::ParentReference {
                path: "nginx/../../evil".into()
            }
        );
        assert_eq!(
            check_err(&chart_with(vec![E::File("nginx/templates/..", b"x")])),
            ChartError::ParentReference {
                path: "nginx/templates/..".into()
            }
        );
        assert_eq!(
            check_err(&chart_with(vec![E::File("nginx\\..\\evil", b"x")])),
            ChartError::ParentReference {
                path: "nginx\\..\\evil".into()
            }
        );
        assert_eq!(
            check_err(&chart_with(vec![E::File("C:\\evil", b"x")])),
            ChartError::AbsolutePath {
                path: "C:\\evil".into()
            }
        );
        assert_eq!(
            check_err(&chart_with(vec![E::Dir("/tmp/")])),
            ChartError::AbsolutePath {
                path: "/tmp/".into()
            }
        );
        assert_eq!(
            check_err(&chart_with(vec![E::File("nginx/a\u{1b}[2Jb", b"x")])),
            ChartError::ControlCharacter {
                path: "nginx/a\u{1b}[2Jb".into()
            }
        );
        let msg = check_err(&chart_with(vec![E::File("nginx/../x", b"x")])).to_string();
        assert!(msg.contains("\"nginx/../x\""), "{msg}");
    }

    #[test]
    fn rejects_non_utf8_paths() {
        let mut bytes = tar_bytes(&chart_with(vec![E::File("nginx/\u{e9}.yaml", b"x")]));
        // Turn the two-byte é into an invalid sequence (and fix the header checksum).
        let at = bytes
            .windows(2)
            .position(|w| w == "\u{e9}".as_bytes())
            .unwrap();
        bytes[at + 1] = 0x28;
        let header_start = at - at % 512;
        let mut h = tar::Header::new_old();
        h.as_mut_bytes()
            .copy_from_slice(&bytes[header_start..header_start + 512]);
        h.set_cksum();
        bytes[header_start..header_start + 512].copy_from_slice(h.as_bytes());
        let e = inspect(&gzip(&bytes), &ChartLimits::default()).unwrap_err();
        assert!(matches!(e, ChartError::PathNotUtf8 { .. }), "{e:?}");
    }

    #[test]
    fn rejects_links_devices_and_fifos() {
        let cases = [
            (
                E::Symlink("nginx/templates/x.yaml", "/etc/passwd"),
                "symbolic link to \"/etc/passwd\"",
            ),
            (
                E::Hardlink("nginx/templates/x.yaml", "nginx/Chart.yaml"),
                "hard link to \"nginx/Chart.yaml\"",
            ),
            (E::Fifo("nginx/pipe"), "FIFO (named pipe)"),
            (E::CharDevice("nginx/tty"), "character device"),
        ];
        for (entry, kind) in cases {
            let path = match &entry {
                E::Symlink(p, _) | E::Hardlink(p, _) | E::Fifo(p) | E::CharDevice(p) => {
                    p.to_string()
                }
                _ => unreachable!(),
            };
            let e = check_err(&chart_with(vec![entry]));
            assert_eq!(
                e,
                ChartError::UnsupportedEntry {
                    path: path.clone(),
                    kind: kind.into()
                }
            );
            assert!(e.to_string().contains(&format!("{path:?}")), "{e}");
        }
    }

    #[test]
    fn rejects_layouts_without_a_single_root() {
        assert_eq!(
            check_err(&chart_with(vec![E::File("other/Chart.yaml", b"x")])),
            ChartError::SeveralRoots {
                first: "nginx".into(),
                second: "other".into()
            }
        );
        assert_eq!(
            check_err(&[E::File("Chart.yaml", CHART_YAML.as_bytes())]),
            ChartError::OutsideRoot {
                path: "Chart.yaml".into()
            }
        );
        assert_eq!(
            check_err(&chart_with(vec![E::File("README.md", b"x")])),
            ChartError::OutsideRoot {
                path: "README.md".into()
            }
        );
        assert_eq!(
            check_err(&[E::Dir("nginx/"), E::Dir("nginx/templates/")]),
            ChartError::Empty
        );
        assert_eq!(
            check_err(&[E::Dir("nginx/"), E::File("nginx/values.yaml", b"a: 1\n")]),
            ChartError::MissingChartYaml {
                root: "nginx".into()
            }
        );
        // Chart.yaml in a subdirectory does not count.
        assert_eq!(
            check_err(&[E::File(
                "nginx/charts/sub/Chart.yaml",
                CHART_YAML.as_bytes()
            )]),
            ChartError::MissingChartYaml {
                root: "nginx".into()
            }
        );
    }

    #[test]
    fn rejects_duplicates_and_file_directory_clashes() {
        assert_eq!(
            check_err(&chart_with(vec![
                E::File("nginx/values.yaml", b"a: 1"),
                E::File("./nginx/values.yaml", b"a: 2")
            ])),
            ChartError::DuplicatePath {
                path: "values.yaml".into()
            }
        );
        assert_eq!(
            check_err(&chart_with(vec![
                E::File("nginx/templates", b"x"),
                E::File("nginx/templates/a.yaml", b"y")
            ])),
            ChartError::PathConflict {
                path: "templates".into()
            }
        );
        assert_eq!(
            check_err(&chart_with(vec![
                E::File("nginx/charts", b"x"),
                E::Dir("nginx/charts/")
            ])),
            ChartError::PathConflict {
                path: "charts".into()
            }
        );
    }

    #[test]
    fn enforces_file_count_and_size_limits() {
        let entries = nginx_entries();
        let limits = ChartLimits {
            max_files: 5,
            ..ChartLimits::default()
        };
        let e = inspect(&tgz(&entries), &limits).unwrap_err();
        assert_eq!(e, ChartError::TooManyFiles { limit: 5 });
        assert!(e.to_string().contains("max_files"), "{e}");
        let exact = ChartLimits {
            max_files: entries.len(),
            ..ChartLimits::default()
        };
        assert!(inspect(&tgz(&entries), &exact).is_ok());

        let limits = ChartLimits {
            max_file_bytes: 100,
            ..ChartLimits::default()
        };
        let e = inspect(&tgz(&entries), &limits).unwrap_err();
        assert_eq!(
            e,
            ChartError::FileTooLarge {
                path: "nginx/Chart.yaml".into(),
                size: CHART_YAML.len() as u64,
                limit: 100
            }
        );
        assert!(e.to_string().contains("max_file_bytes"), "{e}");

        let limits = ChartLimits {
            max_unpacked_bytes: 4096,
            ..ChartLimits::default()
        };
        let e = inspect(&tgz(&entries), &limits).unwrap_err();
        assert_eq!(e, ChartError::UnpackedTooLarge { limit: 4096 });
        assert!(e.to_string().contains("max_unpacked_bytes"), "{e}");
    }

    #[test]
    fn unpacked_limit_covers_data_after_the_tar_end() {
        let mut bytes = tar_bytes(&[E::File("nginx/Chart.yaml", CHART_YAML.as_bytes())]);
        bytes.extend(std::iter::repeat_n(0u8, 64 * 1024));
        let limits = ChartLimits {
            max_unpacked_bytes: 16 * 1024,
            ..ChartLimits::default()
        };
        assert_eq!(
            inspect(&gzip(&bytes), &limits).unwrap_err(),
            ChartError::UnpackedTooLarge { limit: 16 * 1024 }
        );
        assert!(inspect(&gzip(&bytes), &ChartLimits::default()).is_ok());
    }

    #[test]
    fn chart_yaml_must_parse() {
        assert!(matches!(
            chart_yaml_err("name: [unclosed"),
            ChartError::ChartYamlSyntax { .. }
        ));
        assert!(matches!(
            chart_yaml_err(""),
            ChartError::ChartYamlSyntax { .. }
        ));
        assert!(matches!(
            chart_yaml_err("- a list\n"),
            ChartError::ChartYamlSyntax { .. }
        ));
        assert!(matches!(
            chart_yaml_err("name: x\nversion: [1]\n"),
            ChartError::ChartYamlSyntax { .. }
        ));
        let e = check_err(&[E::File("nginx/Chart.yaml", b"name: \xff\n")]);
        assert_eq!(
            e,
            ChartError::NotUtf8 {
                path: "Chart.yaml".into(),
                offset: 6,
                advice: ""
            }
        );
    }

    #[test]
    fn chart_yaml_required_fields() {
        assert_eq!(
            chart_yaml_err("apiVersion: v2\nversion: 1.0.0\n"),
            ChartError::MissingField {
                field: "name",
                example: "name: my-chart"
            }
        );
        assert_eq!(
            chart_yaml_err("apiVersion: v2\nname: nginx\n"),
            ChartError::MissingField {
                field: "version",
                example: "version: 0.1.0"
            }
        );
        assert_eq!(
            chart_yaml_err("apiVersion: v3\nname: nginx\nversion: 1.0.0\n"),
            ChartError::ApiVersion { value: "v3".into() }
        );
        let msg = chart_yaml_err("apiVersion: v2\nversion: 1.0.0\n").to_string();
        assert_eq!(msg, "Chart.yaml has no name; add it, e.g. `name: my-chart`");
    }

    #[test]
    fn chart_yaml_v1_and_missing_api_version_are_accepted() {
        let chart = check(&[E::File(
            "nginx/Chart.yaml",
            b"apiVersion: v1\nname: nginx\nversion: 1.0.0\n",
        )])
        .unwrap();
        assert_eq!(chart.metadata.api_version, "v1");
        assert!(chart.warnings.is_empty());
        let chart = check(&[E::File(
            "nginx/Chart.yaml",
            b"name: nginx\nversion: 1.0.0\n",
        )])
        .unwrap();
        assert_eq!(chart.metadata.api_version, "v1");
        assert!(
            chart.warnings[0].contains("no apiVersion"),
            "{:?}",
            chart.warnings
        );
    }

    #[test]
    fn chart_names_follow_helm_lint() {
        for bad in ["Nginx", "my_chart", "my.chart", "a/b", "..", "my chart"] {
            let yaml = format!("apiVersion: v2\nname: {bad:?}\nversion: 1.0.0\n");
            let e = chart_yaml_err(&yaml);
            assert!(
                matches!(&e, ChartError::ChartName { name, .. } if name == bad),
                "{bad:?}: {e:?}"
            );
        }
        let msg = chart_yaml_err("apiVersion: v2\nname: My_chart\nversion: 1.0.0\n").to_string();
        assert!(
            msg.starts_with(
                "chart name \"My_chart\" in Chart.yaml is invalid: uppercase 'M' at position 0"
            ),
            "{msg}"
        );
        for good in ["nginx", "kube-prometheus-stack", "a1", "0-0"] {
            let yaml = format!("apiVersion: v2\nname: {good}\nversion: 1.0.0\n");
            assert!(
                check(&[E::File(&format!("{good}/Chart.yaml"), yaml.as_bytes())]).is_ok(),
                "{good}"
            );
        }
    }

    #[test]
    fn chart_version_is_read_as_helm_reads_it() {
        // Each of these is refused by `helm package` and `helm template` (helm 3.21).
        for bad in [
            "1.0.0-", "1.0.0-01", "latest", "1.0.0.0", "1..0", "v", "1.x",
        ] {
            let yaml = format!("apiVersion: v2\nname: nginx\nversion: {bad}\n");
            let e = chart_yaml_err(&yaml);
            assert!(
                matches!(&e, ChartError::Version { version, .. } if version == bad),
                "{bad:?}: {e:?}"
            );
        }
        let msg = chart_yaml_err("apiVersion: v2\nname: nginx\nversion: latest\n").to_string();
        assert!(
            msg.starts_with("version \"latest\" in Chart.yaml is not a version Helm accepts"),
            "{msg}"
        );
        // ... and each of these helm packages under the version as written.
        for (lenient, order) in [
            ("1", "1.0.0"),
            ("v1.2", "1.2.0"),
            ("01.0.0", "1.0.0"),
            ("1.010.0", "1.10.0"),
            ("v2.0.0-rc.1", "2.0.0-rc.1"),
        ] {
            let yaml = format!("apiVersion: v2\nname: nginx\nversion: {lenient}\n");
            let checked = check(&[E::File("nginx/Chart.yaml", yaml.as_bytes())]).unwrap();
            assert_eq!(checked.metadata.version, lenient);
            assert_eq!(helm_version(lenient).unwrap().to_string(), order);
        }
        for good in [
            "0.1.0",
            "1.2.3-rc.1",
            "1.2.3+build.5",
            "10.20.30-alpha.1+sha.abc",
        ] {
            let yaml = format!("apiVersion: v2\nname: nginx\nversion: {good}\n");
            assert_eq!(
                check(&[E::File("nginx/Chart.yaml", yaml.as_bytes())])
                    .unwrap()
                    .metadata
                    .version,
                good
            );
        }
    }

    #[test]
    fn chart_type_must_be_installable() {
        assert_eq!(
            chart_yaml_err("apiVersion: v2\nname: nginx\nversion: 1.0.0\ntype: library\n"),
            ChartError::LibraryChart {
                name: "nginx".into()
            }
        );
        assert_eq!(
            chart_yaml_err("apiVersion: v2\nname: nginx\nversion: 1.0.0\ntype: plugin\n"),
            ChartError::ChartType {
                value: "plugin".into()
            }
        );
    }

    #[test]
    fn dependencies_are_checked_like_helm() {
        let base = "apiVersion: v2\nname: nginx\nversion: 1.0.0\ndependencies:\n";
        let e = chart_yaml_err(&format!(
            "{base}  - name: redis\n    repository: https://x\n    alias: bad.alias\n"
        ));
        assert!(
            matches!(&e, ChartError::Dependency { number: 1, problem } if problem.contains("bad.alias")),
            "{e:?}"
        );
        let e = chart_yaml_err(&format!("{base}  - name: redis\n  - name: redis\n"));
        assert!(
            matches!(&e, ChartError::Dependency { number: 2, problem } if problem.contains("alias")),
            "{e:?}"
        );
        let e = chart_yaml_err(&format!("{base}  - repository: https://x\n"));
        assert!(
            matches!(&e, ChartError::Dependency { number: 1, .. }),
            "{e:?}"
        );
        let yaml = format!(
            "{base}  - name: redis\n  - name: redis\n    alias: cache\n    import-values: [data, {{child: a, parent: b}}]\n"
        );
        let chart = check(&[E::File("nginx/Chart.yaml", yaml.as_bytes())]).unwrap();
        assert_eq!(chart.metadata.dependencies[1].alias, "cache");
        assert_eq!(
            chart.metadata.dependencies[1].import_values[1]["parent"],
            "b"
        );
    }

    #[test]
    fn values_yaml_must_be_a_mapping() {
        let with_values =
            |v: &'static str| chart_with(vec![E::File("nginx/values.yaml", v.as_bytes())]);
        assert_eq!(
            check_err(&with_values("- a\n- b\n")),
            ChartError::ValuesNotMapping { found: "a list" }
        );
        assert_eq!(
            check_err(&with_values("just text\n")),
            ChartError::ValuesNotMapping { found: "a string" }
        );
        assert!(matches!(
            check_err(&with_values("a: [1\n")),
            ChartError::ValuesSyntax { .. }
        ));
        let e = check_err(&with_values("a: 1\na: 2\n"));
        assert!(
            matches!(&e, ChartError::ValuesSyntax { detail } if detail.contains("duplicate")),
            "{e:?}"
        );
        let e = check_err(&with_values("a:\n  b: .inf\n"));
        assert!(
            matches!(&e, ChartError::ValuesSyntax { detail } if detail.contains("\"a.b\"")),
            "{e:?}"
        );
        for empty in ["", "# only a comment\n", "~\n"] {
            let chart = check(&with_values(empty)).unwrap();
            assert_eq!(chart.default_values().unwrap(), serde_json::json!({}));
        }
        let chart = check(&chart_with(vec![])).unwrap();
        assert_eq!(chart.default_values().unwrap(), serde_json::json!({}));
    }

    #[test]
    fn values_convert_to_json_like_helm() {
        let yaml = "\u{feff}1: one\ntrue: yes\nlist: [1, 2.5, -3, x]\ntagged: !custom value\nnested: {deep: {n: 18446744073709551615}}\n";
        let chart = check(&chart_with(vec![E::File(
            "nginx/values.yaml",
            yaml.as_bytes(),
        )]))
        .unwrap();
        assert_eq!(
            chart.default_values().unwrap(),
            serde_json::json!({
                "1": "one",
                "true": "yes",
                "list": [1, 2.5, -3, "x"],
                "tagged": "value",
                "nested": {"deep": {"n": 18446744073709551615u64}},
            })
        );
    }

    #[test]
    fn values_alias_bombs_fail_fast() {
        let mut yaml = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = i - 1;
            yaml.push_str(&format!("a{i}: &a{i} [*a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}, *a{p}]\n"));
        }
        let started = Instant::now();
        let e = check_err(&chart_with(vec![E::File(
            "nginx/values.yaml",
            yaml.as_bytes(),
        )]));
        assert!(matches!(e, ChartError::ValuesSyntax { .. }), "{e:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn values_schema_must_be_json() {
        let e = check_err(&chart_with(vec![E::File(
            "nginx/values.schema.json",
            b"{\"type\": ",
        )]));
        assert!(matches!(e, ChartError::ValuesSchema { .. }), "{e:?}");
        assert!(
            check(&chart_with(vec![E::File(
                "nginx/values.schema.json",
                b"{\"type\": \"object\"}"
            )]))
            .is_ok()
        );
    }

    #[test]
    fn templates_must_be_utf8_but_other_files_need_not() {
        let e = check_err(&chart_with(vec![E::File(
            "nginx/templates/bin.yaml",
            b"ok: \xff\xfe",
        )]));
        assert!(
            matches!(&e, ChartError::NotUtf8 { path, offset: 4, .. } if path == "templates/bin.yaml"),
            "{e:?}"
        );
        assert!(e.to_string().contains(".Files"), "{e}");
        let chart = check(&chart_with(vec![
            E::File("nginx/files/logo.png", b"\x89PNG\r\n\x1a\n\xff"),
            E::File("nginx/charts/redis-1.0.0.tgz", b"\x1f\x8b\x08\xff"),
        ]))
        .unwrap();
        assert_eq!(chart.files.len(), 3);
        // Go-template syntax that is not YAML is fine: templates are not parsed.
        assert!(
            check(&chart_with(vec![E::File(
                "nginx/templates/x.yaml",
                b"{{- if .x }}\n: : [\n{{ end }}"
            )]))
            .is_ok()
        );
    }

    #[test]
    fn metadata_tolerates_nulls_and_numbers() {
        let yaml = "apiVersion: v2\nname: nginx\nversion: 1.0.0\nappVersion: 1.10\ndescription:\nicon: ~\nkeywords:\ndeprecated: ~\nannotations:\n  count: 3\n";
        let md = ChartMetadata::from_chart_yaml(yaml.as_bytes()).unwrap();
        // helm 3.21's `helm show chart` prints `appVersion: "1.1"` for this file.
        assert_eq!(md.app_version, "1.1");
        assert_eq!(md.description, "");
        assert!(md.keywords.is_empty());
        assert!(!md.deprecated);
        assert_eq!(md.annotations["count"], "3");
    }

    /// Each expectation is what `helm show chart` (helm 3.21) prints for the same file.
    #[test]
    fn bare_numbers_in_chart_yaml_read_as_helm_reads_them() {
        // `helm package` names this chart c-1.tgz; the quoted appVersion stays as written.
        let yaml = "apiVersion: v2\nname: c\nversion: 1.0\nappVersion: \"1.10\"\nkubeVersion: 1.20\ndescription: 2.50\n";
        let md = ChartMetadata::from_chart_yaml(yaml.as_bytes()).unwrap();
        assert_eq!(
            [md.version, md.app_version, md.kube_version, md.description],
            ["1", "1.10", "1.2", "2.5"]
        );
        // Single precision, and exponents from 10^6 up and below 10^-4.
        let yaml = "apiVersion: v2\nname: c\nversion: 1.0.0\nappVersion: 1000000.0\nkubeVersion: 0.00001\ndescription: 1234567.5\nhome: 3.14159265358979\nicon: 1e3\n";
        let md = ChartMetadata::from_chart_yaml(yaml.as_bytes()).unwrap();
        assert_eq!(
            [
                md.app_version,
                md.kube_version,
                md.description,
                md.home,
                md.icon
            ],
            ["1e+06", "1e-05", "1.2345675e+06", "3.1415927", "1000"]
        );
    }

    #[test]
    fn metadata_strings_are_sanitized() {
        let yaml =
            "apiVersion: v2\nname: nginx\nversion: 1.0.0\ndescription: \"a\\tb\\u202Ec\\u0007d\"\n";
        let md = ChartMetadata::from_chart_yaml(yaml.as_bytes()).unwrap();
        assert_eq!(md.description, "a bcd");
    }

    #[test]
    fn metadata_json_matches_helm_field_names_and_omits_empties() {
        let yaml = "\
apiVersion: v2
name: nginx
version: 0.1.0
appVersion: \"1.16.0\"
kubeVersion: \">=1.20.0-0\"
description: d
type: application
home: https://example.com
icon: https://example.com/i.png
sources: [https://github.com/x/y]
keywords: [web]
maintainers: [{name: Ann, email: ann@example.com}]
deprecated: true
annotations: {category: web}
dependencies: [{name: redis, version: 1.x, repository: \"\"}]
";
        let md = ChartMetadata::from_chart_yaml(yaml.as_bytes()).unwrap();
        let json = serde_json::to_string(&md).unwrap();
        assert_eq!(
            json,
            r#"{"name":"nginx","home":"https://example.com","sources":["https://github.com/x/y"],"version":"0.1.0","description":"d","keywords":["web"],"maintainers":[{"name":"Ann","email":"ann@example.com"}],"icon":"https://example.com/i.png","apiVersion":"v2","appVersion":"1.16.0","deprecated":true,"annotations":{"category":"web"},"kubeVersion":">=1.20.0-0","dependencies":[{"name":"redis","version":"1.x","repository":""}],"type":"application"}"#
        );
        let back: ChartMetadata = serde_json::from_str(&json).unwrap();
        assert_eq!(back, md);
        let minimal =
            ChartMetadata::from_chart_yaml(b"apiVersion: v2\nname: a\nversion: 1.0.0\n").unwrap();
        assert_eq!(
            serde_json::to_string(&minimal).unwrap(),
            r#"{"name":"a","version":"1.0.0","apiVersion":"v2"}"#
        );
    }

    #[test]
    fn metadata_has_a_json_schema() {
        let schema = serde_json::to_value(schemars::schema_for!(ChartMetadata)).unwrap();
        let props = schema["properties"].as_object().unwrap();
        for field in [
            "name",
            "version",
            "apiVersion",
            "appVersion",
            "kubeVersion",
            "type",
            "dependencies",
        ] {
            assert!(props.contains_key(field), "schema lacks {field}: {schema}");
        }
    }

    #[test]
    fn digest_is_sha256_hex() {
        assert_eq!(
            digest(b""),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            digest(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    /// Builds a gzip stream of a tar with `files` entries of `file_mib` MiB of zeros each
    /// (after a Chart.yaml), without ever holding the inflated bytes: one deflate-compressed
    /// MiB of zeros is repeated, and tar headers go in as stored blocks. 1 GiB of content
    /// costs about 1 MiB.
    fn zero_bomb(files: usize, file_mib: usize) -> Vec<u8> {
        const CHUNK: usize = 1 << 20;
        let zeros = vec![0u8; CHUNK];
        // A fresh raw-deflate compressor cannot refer to data before the chunk, and a sync
        // flush ends it on a byte boundary without a final-block bit, so copies chain.
        let mut compressor = flate2::Compress::new(Compression::best(), false);
        let mut chunk = Vec::with_capacity(64 * 1024);
        let status = compressor
            .compress_vec(&zeros, &mut chunk, flate2::FlushCompress::Sync)
            .unwrap();
        assert_eq!(status, flate2::Status::Ok);
        assert_eq!(
            compressor.total_in(),
            CHUNK as u64,
            "compress buffer too small"
        );
        let mut zeros_crc = flate2::Crc::new();
        zeros_crc.update(&zeros);

        let mut deflate = Vec::new();
        let mut crc = flate2::Crc::new();
        fn stored(deflate: &mut Vec<u8>, crc: &mut flate2::Crc, data: &[u8]) {
            for piece in data.chunks(65_535) {
                let len = piece.len() as u16;
                deflate.push(0); // not final, stored; the rest of the byte is padding
                deflate.extend(len.to_le_bytes());
                deflate.extend((!len).to_le_bytes());
                deflate.extend(piece);
                crc.update(piece);
            }
        }
        stored(
            &mut deflate,
            &mut crc,
            &tar_bytes(&[E::File(
                "bomb/Chart.yaml",
                b"apiVersion: v2\nname: bomb\nversion: 1.0.0\n",
            )])[..1024],
        );
        for i in 0..files {
            let h = header(
                &format!("bomb/zeros-{i}"),
                tar::EntryType::Regular,
                (file_mib * CHUNK) as u64,
            );
            stored(&mut deflate, &mut crc, h.as_bytes());
            for _ in 0..file_mib {
                deflate.extend(&chunk);
                crc.combine(&zeros_crc);
            }
        }
        stored(&mut deflate, &mut crc, &[0u8; 1024]);
        deflate.extend([1, 0, 0, 0xff, 0xff]); // final, empty stored block

        let mut gz = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
        gz.extend(deflate);
        gz.extend(crc.sum().to_le_bytes());
        gz.extend(crc.amount().to_le_bytes());
        gz
    }

    #[test]
    fn zero_bomb_generator_makes_a_valid_archive() {
        // Small enough to inflate: proves the bomb below is a well-formed .tgz.
        let chart = inspect(&zero_bomb(2, 2), &ChartLimits::default()).unwrap();
        assert_eq!(chart.files.len(), 3);
        assert_eq!(chart.file("zeros-1").unwrap().data.len(), 2 << 20);
        assert!(chart.file("zeros-1").unwrap().data.iter().all(|&b| b == 0));
    }

    #[test]
    fn gzip_bomb_is_stopped_at_the_unpacked_limit() {
        // 256 files of 4 MiB: each under the per-file limit, 1 GiB in all, about 1 MiB packed.
        let bomb = zero_bomb(256, 4);
        assert!(bomb.len() < 2 << 20, "bomb is {} bytes", bomb.len());
        let limits = ChartLimits::default();
        let started = Instant::now();
        let e = inspect(&bomb, &limits).unwrap_err();
        let took = started.elapsed();
        assert_eq!(
            e,
            ChartError::UnpackedTooLarge {
                limit: limits.max_unpacked_bytes
            }
        );
        assert!(e.to_string().contains("max_unpacked_bytes"), "{e}");
        // Inflating the whole GiB would take far longer than stopping at 50 MiB.
        assert!(took < Duration::from_secs(60), "took {took:?}");
    }

    #[test]
    fn single_huge_file_is_refused_from_its_header() {
        let bomb = zero_bomb(1, 1024);
        let started = Instant::now();
        let e = inspect(&bomb, &ChartLimits::default()).unwrap_err();
        assert_eq!(
            e,
            ChartError::FileTooLarge {
                path: "bomb/zeros-0".into(),
                size: 1 << 30,
                limit: ChartLimits::default().max_file_bytes
            }
        );
        assert!(started.elapsed() < Duration::from_secs(10));
    }
}
