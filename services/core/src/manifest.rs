//! Parses `helm template` output into objects to apply and hooks to record, in Helm's order.
//!
//! Helm joins rendered documents as `---\n# Source: <path>\n<document>\n` (install order, hooks
//! after the manifest). Each document keeps its rendered text so the manifest Optikon stores
//! reads, byte for byte, like the one `helm install` would have stored.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Annotation naming the events a hook runs on.
pub const HOOK_ANNOTATION: &str = "helm.sh/hook";
/// Annotation ordering hooks of the same event.
pub const HOOK_WEIGHT_ANNOTATION: &str = "helm.sh/hook-weight";
/// Annotation saying when Helm deletes a hook's object.
pub const HOOK_DELETE_POLICY_ANNOTATION: &str = "helm.sh/hook-delete-policy";
/// Annotation saying when Helm prints a hook's logs.
pub const HOOK_OUTPUT_LOG_POLICY_ANNOTATION: &str = "helm.sh/hook-output-log-policy";
/// Annotation that, set to `keep`, stops Helm deleting an object on uninstall or upgrade.
pub const RESOURCE_POLICY_ANNOTATION: &str = "helm.sh/resource-policy";

/// Label Helm sets to `Helm` on the objects of a release.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Annotation naming the release that owns an object.
pub const RELEASE_NAME_ANNOTATION: &str = "meta.helm.sh/release-name";
/// Annotation naming the namespace of the release that owns an object.
pub const RELEASE_NAMESPACE_ANNOTATION: &str = "meta.helm.sh/release-namespace";

const SOURCE_PREFIX: &str = "# Source: ";

/// Helm 3's `releaseutil.InstallOrder`: kinds applied first come first.
pub const INSTALL_ORDER: &[&str] = &[
    "PriorityClass",
    "Namespace",
    "NetworkPolicy",
    "ResourceQuota",
    "LimitRange",
    "PodSecurityPolicy",
    "PodDisruptionBudget",
    "ServiceAccount",
    "Secret",
    "SecretList",
    "ConfigMap",
    "StorageClass",
    "PersistentVolume",
    "PersistentVolumeClaim",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleList",
    "ClusterRoleBinding",
    "ClusterRoleBindingList",
    "Role",
    "RoleList",
    "RoleBinding",
    "RoleBindingList",
    "Service",
    "DaemonSet",
    "Pod",
    "ReplicationController",
    "ReplicaSet",
    "Deployment",
    "HorizontalPodAutoscaler",
    "StatefulSet",
    "Job",
    "CronJob",
    "IngressClass",
    "Ingress",
    "APIService",
];

/// Helm 3's `releaseutil.UninstallOrder`: kinds deleted first come first.
pub const UNINSTALL_ORDER: &[&str] = &[
    "APIService",
    "Ingress",
    "IngressClass",
    "Service",
    "CronJob",
    "Job",
    "StatefulSet",
    "HorizontalPodAutoscaler",
    "Deployment",
    "ReplicaSet",
    "ReplicationController",
    "Pod",
    "DaemonSet",
    "RoleBindingList",
    "RoleBinding",
    "RoleList",
    "Role",
    "ClusterRoleBindingList",
    "ClusterRoleBinding",
    "ClusterRoleList",
    "ClusterRole",
    "CustomResourceDefinition",
    "PersistentVolumeClaim",
    "PersistentVolume",
    "StorageClass",
    "ConfigMap",
    "SecretList",
    "Secret",
    "ServiceAccount",
    "PodDisruptionBudget",
    "PodSecurityPolicy",
    "LimitRange",
    "ResourceQuota",
    "NetworkPolicy",
    "Namespace",
    "PriorityClass",
];

/// Why rendered output could not be turned into objects.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("{at} is not valid YAML for Kubernetes: {message}")]
    InvalidYaml {
        at: DocumentLocation,
        message: String,
    },
    #[error("{at} is not a YAML mapping (a Kubernetes object)")]
    NotAnObject { at: DocumentLocation },
    #[error("{at} has no \"{field}\"")]
    MissingField {
        at: DocumentLocation,
        field: &'static str,
    },
    #[error("{at}: \"{field}\" must be {expected}")]
    WrongType {
        at: DocumentLocation,
        field: String,
        expected: &'static str,
    },
    #[error(
        "{at} is a {kind} with items; render each object as its own document (Optikon does \
         not expand List kinds)"
    )]
    ListKind { at: DocumentLocation, kind: String },
}

/// Where a document sits in rendered output: its template and its position in that template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentLocation {
    /// Path from the `# Source:` comment, if the document had one.
    pub source: Option<String>,
    /// 1-based position among the documents of the same source (of the whole text without one).
    pub index: usize,
}

impl fmt::Display for DocumentLocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Some(source) => write!(f, "{source}: document {}", self.index),
            None => write!(f, "document {}", self.index),
        }
    }
}

/// One Kubernetes object from rendered output.
#[derive(Debug, Clone, PartialEq)]
pub struct ManifestObject {
    /// Template path from the `# Source:` comment, e.g. `web/templates/service.yaml`.
    pub source: Option<String>,
    pub api_version: String,
    pub kind: String,
    /// Empty only for hooks that use `metadata.generateName`.
    pub name: String,
    /// `metadata.namespace` as rendered; `None` means "the release namespace" if namespaced.
    pub namespace: Option<String>,
    /// The whole object.
    pub body: Value,
    /// The document as rendered, trimmed, without its `# Source:` line; empty if built by hand.
    pub text: String,
}

/// An object's identity for pruning: what Helm compares (group, kind, namespace, name).
///
/// The API version is left out on purpose: a chart moving `autoscaling/v1` to
/// `autoscaling/v2` still owns the same object, and must not prune it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// API group; empty for the core group.
    pub group: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl ObjectKey {
    /// The key with `namespace` filled in where the manifest left it out.
    ///
    /// Helm compares objects after the release namespace has been filled in, so an object
    /// that gains or loses an explicit `namespace:` between revisions is the same object.
    /// Call this for namespaced kinds only (the caller knows the scope from discovery).
    pub fn in_namespace(mut self, release_namespace: &str) -> Self {
        if self.namespace.is_none() {
            self.namespace = Some(release_namespace.to_owned());
        }
        self
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.kind)?;
        if !self.group.is_empty() {
            write!(f, ".{}", self.group)?;
        }
        match &self.namespace {
            Some(namespace) => write!(f, " {namespace}/{}", self.name),
            None => write!(f, " {}", self.name),
        }
    }
}

impl ManifestObject {
    /// Identity used to compute what the previous revision had and this one lacks.
    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            group: self.group().to_owned(),
            kind: self.kind.clone(),
            namespace: self.namespace.clone(),
            name: self.name.clone(),
        }
    }

    /// API group from `apiVersion` (`apps/v1` → `apps`, `v1` → empty).
    pub fn group(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map_or("", |(group, _)| group)
    }

    /// API version without the group (`apps/v1` → `v1`).
    pub fn version(&self) -> &str {
        self.api_version
            .rsplit_once('/')
            .map_or(self.api_version.as_str(), |(_, v)| v)
    }

    /// A `metadata.annotations` value, if present and a string.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.body
            .pointer("/metadata/annotations")?
            .get(key)?
            .as_str()
    }

    /// Adds what Helm stamps on every object it applies (not on the stored manifest): the
    /// label `app.kubernetes.io/managed-by: Helm` and the annotations
    /// `meta.helm.sh/release-name` / `meta.helm.sh/release-namespace`. Without them the real
    /// `helm upgrade` refuses to adopt an object that a later revision adds.
    pub fn set_helm_ownership(&mut self, release_name: &str, release_namespace: &str) {
        let Value::Object(body) = &mut self.body else {
            return;
        };
        let metadata = object_entry(body, "metadata");
        object_entry(metadata, "labels").insert(MANAGED_BY_LABEL.into(), "Helm".into());
        let annotations = object_entry(metadata, "annotations");
        annotations.insert(RELEASE_NAME_ANNOTATION.into(), release_name.into());
        annotations.insert(
            RELEASE_NAMESPACE_ANNOTATION.into(),
            release_namespace.into(),
        );
    }

    /// Whether `helm.sh/resource-policy: keep` asks that uninstall and pruning leave it alone.
    pub fn keeps_on_delete(&self) -> bool {
        self.annotation(RESOURCE_POLICY_ANNOTATION)
            .is_some_and(|policy| policy.trim().eq_ignore_ascii_case("keep"))
    }
}

/// When a hook runs, with Helm's spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HookEvent {
    PreInstall,
    PostInstall,
    PreDelete,
    PostDelete,
    PreUpgrade,
    PostUpgrade,
    PreRollback,
    PostRollback,
    Test,
}

impl HookEvent {
    /// Reads one entry of a `helm.sh/hook` annotation the way Helm does (case-insensitive,
    /// and the Helm 2 spelling `test-success` means `test`).
    pub fn from_annotation(entry: &str) -> Option<Self> {
        Some(match entry.trim().to_lowercase().as_str() {
            "pre-install" => Self::PreInstall,
            "post-install" => Self::PostInstall,
            "pre-delete" => Self::PreDelete,
            "post-delete" => Self::PostDelete,
            "pre-upgrade" => Self::PreUpgrade,
            "post-upgrade" => Self::PostUpgrade,
            "pre-rollback" => Self::PreRollback,
            "post-rollback" => Self::PostRollback,
            "test" | "test-success" => Self::Test,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::PreInstall => "pre-install",
            Self::PostInstall => "post-install",
            Self::PreDelete => "pre-delete",
            Self::PostDelete => "post-delete",
            Self::PreUpgrade => "pre-upgrade",
            Self::PostUpgrade => "post-upgrade",
            Self::PreRollback => "pre-rollback",
            Self::PostRollback => "post-rollback",
            Self::Test => "test",
        }
    }
}

impl fmt::Display for HookEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A document annotated `helm.sh/hook`: recorded in the release and run around its changes,
/// not applied with its objects.
#[derive(Debug, Clone, PartialEq)]
pub struct HookObject {
    pub object: ManifestObject,
    pub events: Vec<HookEvent>,
    /// `helm.sh/hook-weight`; 0 when absent or not an integer, as in Helm.
    pub weight: i64,
    /// `helm.sh/hook-delete-policy` entries, lower-cased and trimmed, unvalidated as in Helm.
    pub delete_policies: Vec<String>,
    /// `helm.sh/hook-output-log-policy` entries, lower-cased and trimmed.
    pub output_log_policies: Vec<String>,
}

impl HookObject {
    /// Whether this is a `helm test` hook.
    pub fn is_test(&self) -> bool {
        self.events.contains(&HookEvent::Test)
    }
}

/// Rendered output split the way Helm treats it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rendered {
    /// Objects to apply, in the order they appeared (Helm's install order for `helm template`).
    pub objects: Vec<ManifestObject>,
    /// Hooks, in the order they appeared.
    pub hooks: Vec<HookObject>,
    /// Objects from a chart's `crds/` directory (`helm template --include-crds`). Helm creates
    /// these before anything else, never updates or deletes them, and leaves them out of the
    /// stored manifest.
    pub crds: Vec<ManifestObject>,
}

/// Splits multi-document YAML (the output of `helm template`, or a stored release manifest).
///
/// Documents that are empty or only comments are skipped. A document annotated
/// `helm.sh/hook` with an event Helm does not know is dropped, as Helm drops it.
pub fn parse(manifest: &str) -> Result<Rendered, ManifestError> {
    let mut rendered = Rendered::default();
    let mut per_source: BTreeMap<Option<String>, usize> = BTreeMap::new();
    let mut source: Option<String> = None;

    for chunk in split_documents(manifest) {
        let (chunk_source, text) = strip_source(chunk);
        // A raw `crds/` file printed whole keeps its later documents under the same path.
        if chunk_source.is_some() {
            source = chunk_source;
        }
        if text.is_empty() {
            continue;
        }
        let index = per_source.entry(source.clone()).or_default();
        *index += 1;
        let at = DocumentLocation {
            source: source.clone(),
            index: *index,
        };

        let Some(object) = parse_object(text, source.clone(), &at)? else {
            continue;
        };
        if let Some(events) = object.annotation(HOOK_ANNOTATION) {
            if let Some(hook) = hook(object.clone(), events) {
                rendered.hooks.push(hook);
            }
            continue;
        }
        if object.name.is_empty() {
            return Err(ManifestError::MissingField {
                at,
                field: "metadata.name",
            });
        }
        if source.as_deref().is_some_and(is_crds_dir_path) {
            rendered.crds.push(object);
        } else {
            rendered.objects.push(object);
        }
    }
    Ok(rendered)
}

/// Sorts objects into Helm's install order: by kind as in [`INSTALL_ORDER`], unknown kinds
/// last (alphabetically among themselves), otherwise keeping the given order.
pub fn install_order(objects: &mut [ManifestObject]) {
    sort_by_kind(objects, INSTALL_ORDER, |o| &o.kind);
}

/// Sorts the objects of a stored manifest (given in manifest order) into the order
/// `helm uninstall` deletes them.
///
/// Helm keys each document as `manifest-<n>` and sorts those keys as strings before the
/// stable kind sort, so within a kind document 10 comes before document 2; mirrored here.
/// Unknown kinds go last, as in Helm (its sorter does not reverse for uninstall).
pub fn uninstall_order(objects: &mut [ManifestObject]) {
    let mut keyed: Vec<(String, ManifestObject)> = objects
        .iter()
        .enumerate()
        .map(|(n, o)| (format!("manifest-{n}"), o.clone()))
        .collect();
    keyed.sort_by(|a, b| a.0.cmp(&b.0));
    sort_by_kind(&mut keyed, UNINSTALL_ORDER, |(_, o)| &o.kind);
    for (slot, (_, object)) in objects.iter_mut().zip(keyed) {
        *slot = object;
    }
}

/// Helm's `lessByKind` as a stable sort: ranked kinds by rank, unranked after them ordered by
/// kind name, equal kinds in their given order. Helm does not sort by name.
pub fn sort_by_kind<T>(items: &mut [T], order: &[&str], kind_of: impl Fn(&T) -> &str) {
    let rank = |kind: &str| order.iter().position(|k| *k == kind);
    items.sort_by(|a, b| {
        let (ka, kb) = (kind_of(a), kind_of(b));
        match (rank(ka), rank(kb)) {
            (Some(ra), Some(rb)) => ra.cmp(&rb),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => ka.cmp(kb),
        }
    });
}

/// The `manifest` text Helm stores in a release: `---\n# Source: <path>\n<document>\n` per
/// object, in the given order (call [`install_order`] first).
pub fn to_manifest_string(objects: &[ManifestObject]) -> String {
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        if let Some(source) = &object.source {
            out.push_str(SOURCE_PREFIX);
            out.push_str(source);
            out.push('\n');
        }
        if object.text.is_empty() {
            // Built by hand rather than parsed: write the body as YAML instead.
            let yaml = serde_yaml_ng::to_string(&object.body).unwrap_or_default();
            out.push_str(yaml.trim());
        } else {
            out.push_str(&object.text);
        }
        out.push('\n');
    }
    out
}

/// The mapping under `key`, replacing anything else found there.
fn object_entry<'a>(
    map: &'a mut serde_json::Map<String, Value>,
    key: &str,
) -> &'a mut serde_json::Map<String, Value> {
    let entry = map
        .entry(key)
        .or_insert_with(|| Value::Object(serde_json::Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(serde_json::Map::new());
    }
    match entry {
        Value::Object(object) => object,
        _ => unreachable!("replaced by a mapping above"),
    }
}

/// Whether a `# Source:` path is a file in a chart's (or subchart's) `crds/` directory,
/// e.g. `web/crds/a.yaml` or `web/charts/db/crds/a.yaml`, not `web/templates/crds/a.yaml`.
fn is_crds_dir_path(path: &str) -> bool {
    let mut segments = path.split('/').skip(1); // the chart's own name
    loop {
        match segments.next() {
            Some("charts") => {
                segments.next(); // the subchart's name
            }
            Some("crds") => return segments.next().is_some(),
            _ => return false,
        }
    }
}

/// Splits at YAML document markers: lines that are `---` or start with `---` and whitespace.
fn split_documents(text: &str) -> Vec<&str> {
    let mut documents = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let is_marker = line
            .strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace));
        if is_marker {
            documents.push(&text[start..offset]);
            // Anything after the marker on the same line belongs to the next document.
            start = offset + 3;
        }
        offset += line.len();
    }
    documents.push(&text[start..]);
    documents
}

/// Takes a leading `# Source: <path>` line off a document; returns the path and the rest,
/// trimmed as Helm trims each document.
fn strip_source(chunk: &str) -> (Option<String>, &str) {
    let chunk = chunk.trim();
    match chunk.strip_prefix(SOURCE_PREFIX) {
        Some(rest) => {
            let (path, body) = rest.split_once('\n').unwrap_or((rest, ""));
            (Some(path.trim().to_owned()), body.trim())
        }
        None => (None, chunk),
    }
}

/// Parses one document; `None` for a document with no content (only comments).
fn parse_object(
    text: &str,
    source: Option<String>,
    at: &DocumentLocation,
) -> Result<Option<ManifestObject>, ManifestError> {
    // Helm applies the document as it stores it, with a newline after the trimmed text; that
    // newline matters to a block scalar ending the document (`|` keeps one trailing newline).
    let body = yaml11::to_json(&format!("{text}\n")).map_err(|e| ManifestError::InvalidYaml {
        at: at.clone(),
        message: e.to_string(),
    })?;
    if body.is_null() {
        return Ok(None);
    }
    let Value::Object(map) = &body else {
        return Err(ManifestError::NotAnObject { at: at.clone() });
    };

    let wrong_type = |field: &str, expected: &'static str| ManifestError::WrongType {
        at: at.clone(),
        field: field.to_owned(),
        expected,
    };
    let string_field = |value: Option<&Value>, field: &'static str| match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(wrong_type(field, "a string")),
    };
    let required = |value: Option<&Value>, field: &'static str| {
        string_field(value, field)?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ManifestError::MissingField {
                at: at.clone(),
                field,
            })
    };

    let api_version = required(map.get("apiVersion"), "apiVersion")?;
    let kind = required(map.get("kind"), "kind")?;
    if kind.ends_with("List") && map.contains_key("items") {
        return Err(ManifestError::ListKind {
            at: at.clone(),
            kind,
        });
    }
    let metadata = match map.get("metadata") {
        None | Some(Value::Null) => {
            return Err(ManifestError::MissingField {
                at: at.clone(),
                field: "metadata",
            });
        }
        Some(Value::Object(metadata)) => metadata,
        Some(_) => return Err(wrong_type("metadata", "a mapping")),
    };
    let name = string_field(metadata.get("name"), "metadata.name")?.unwrap_or_default();
    let namespace =
        string_field(metadata.get("namespace"), "metadata.namespace")?.filter(|s| !s.is_empty());
    // Helm reads annotations as map[string]string and fails on anything else.
    if let Some(annotations) = metadata.get("annotations").filter(|a| !a.is_null()) {
        let Value::Object(annotations) = annotations else {
            return Err(wrong_type("metadata.annotations", "a mapping"));
        };
        for (key, value) in annotations {
            if !value.is_string() {
                return Err(wrong_type(
                    &format!("metadata.annotations.{key}"),
                    "a string",
                ));
            }
        }
    }

    Ok(Some(ManifestObject {
        source,
        api_version,
        kind,
        name,
        namespace,
        body,
        text: text.to_owned(),
    }))
}

/// Builds a hook as Helm's manifest sorter does; `None` if an event is unknown (Helm skips
/// such a document entirely).
fn hook(object: ManifestObject, events: &str) -> Option<HookObject> {
    let events = events
        .split(',')
        .map(HookEvent::from_annotation)
        .collect::<Option<Vec<_>>>()?;
    let weight = object
        .annotation(HOOK_WEIGHT_ANNOTATION)
        .and_then(|w| w.parse().ok())
        .unwrap_or(0);
    let policies = |annotation: &str| -> Vec<String> {
        object
            .annotation(annotation)
            .map(|v| v.split(',').map(|p| p.trim().to_lowercase()).collect())
            .unwrap_or_default()
    };
    Some(HookObject {
        delete_policies: policies(HOOK_DELETE_POLICY_ANNOTATION),
        output_log_policies: policies(HOOK_OUTPUT_LOG_POLICY_ANNOTATION),
        object,
        events,
        weight,
    })
}

/// YAML to JSON as Helm's Kubernetes client reads it (sigs.k8s.io/yaml over go-yaml v2).
///
/// serde_yaml_ng implements YAML 1.2; go-yaml v2 resolves plain scalars by YAML 1.1 rules, so
/// `defaultMode: 0644` is the integer 420 and `enabled: yes` is `true` when Helm applies them.
/// Quoted scalars are strings in both. serde_yaml_ng does not report a scalar's style, but it
/// hands over plain and quoted scalars without escapes as slices of the input, so the
/// characters around the slice tell a plain scalar from a quoted one.
mod yaml11 {
    use serde::de::{
        self, DeserializeSeed, Deserializer, EnumAccess, MapAccess, SeqAccess, VariantAccess,
        Visitor,
    };
    use serde_json::{Map, Number, Value};

    /// Parses one document; `Value::Null` if it is empty.
    pub(super) fn to_json(text: &str) -> Result<Value, serde_yaml_ng::Error> {
        let node = Reader {
            input: text,
            resolve_plain: true,
        }
        .deserialize(serde_yaml_ng::Deserializer::from_str(text))?;
        Ok(node.value)
    }

    struct Node {
        value: Value,
        /// A plain `<<` key: YAML's merge key.
        merge_key: bool,
    }

    impl From<Value> for Node {
        fn from(value: Value) -> Self {
            Node {
                value,
                merge_key: false,
            }
        }
    }

    #[derive(Clone, Copy)]
    struct Reader<'de> {
        input: &'de str,
        /// False under an explicit tag, which go-yaml does not resolve further.
        resolve_plain: bool,
    }

    impl<'de> DeserializeSeed<'de> for Reader<'de> {
        type Value = Node;
        fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Node, D::Error> {
            deserializer.deserialize_any(self)
        }
    }

    impl<'de> Reader<'de> {
        fn nested(self) -> Self {
            Reader {
                resolve_plain: true,
                ..self
            }
        }

        /// Whether `s` (a slice of the input) was written as a plain scalar without a tag.
        fn is_plain(&self, s: &str) -> bool {
            let start = (s.as_ptr() as usize).wrapping_sub(self.input.as_ptr() as usize);
            let Some(end) = start
                .checked_add(s.len())
                .filter(|end| *end <= self.input.len())
            else {
                return false;
            };
            let (before, after) = (&self.input[..start], &self.input[end..]);
            let quote = |c: Option<char>| matches!(c, Some('\'' | '"'));
            !quote(before.chars().next_back()) && !quote(after.chars().next()) && !after_tag(before)
        }
    }

    /// Whether the token before a scalar (skipping an anchor) is a tag such as `!!str`.
    fn after_tag(before: &str) -> bool {
        let mut tokens = before.split_whitespace().rev();
        for _ in 0..2 {
            match tokens.next().map(|t| t.trim_start_matches(['[', '{', ','])) {
                Some(t) if t.starts_with('!') => return true,
                Some(t) if t.starts_with('&') => continue,
                _ => return false,
            }
        }
        false
    }

    impl<'de> Visitor<'de> for Reader<'de> {
        type Value = Node;

        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a YAML value")
        }

        fn visit_unit<E>(self) -> Result<Node, E> {
            Ok(Value::Null.into())
        }

        fn visit_none<E>(self) -> Result<Node, E> {
            Ok(Value::Null.into())
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
            d.deserialize_any(self)
        }

        fn visit_bool<E>(self, b: bool) -> Result<Node, E> {
            Ok(Value::Bool(b).into())
        }

        fn visit_i64<E>(self, n: i64) -> Result<Node, E> {
            Ok(Value::from(n).into())
        }

        fn visit_u64<E>(self, n: u64) -> Result<Node, E> {
            Ok(Value::from(n).into())
        }

        // Beyond 64 bits go-yaml falls back to a float.
        fn visit_i128<E: de::Error>(self, n: i128) -> Result<Node, E> {
            self.visit_f64(n as f64)
        }

        fn visit_u128<E: de::Error>(self, n: u128) -> Result<Node, E> {
            self.visit_f64(n as f64)
        }

        fn visit_f64<E: de::Error>(self, f: f64) -> Result<Node, E> {
            float(f)
                .map(Node::from)
                .ok_or_else(|| E::custom(format!("{f} cannot be carried in JSON")))
        }

        fn visit_str<E>(self, s: &str) -> Result<Node, E> {
            // Not a slice of the input: quoted with escapes, a block scalar, or a plain scalar
            // folded over lines (which has spaces, so it can be nothing but a string).
            Ok(Value::String(s.to_owned()).into())
        }

        fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Node, E> {
            if !(self.resolve_plain && self.is_plain(s)) {
                return Ok(Value::String(s.to_owned()).into());
            }
            if s == "<<" {
                return Ok(Node {
                    value: Value::String(s.to_owned()),
                    merge_key: true,
                });
            }
            match resolve_plain(s) {
                Some(Resolved::Float(f)) => self.visit_f64(f),
                Some(Resolved::Value(v)) => Ok(v.into()),
                None => Ok(Value::String(s.to_owned()).into()),
            }
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element_seed(self.nested())? {
                items.push(item.value);
            }
            Ok(Value::Array(items).into())
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
            let mut object = Map::new();
            while let Some(key) = map.next_key_seed(self.nested())? {
                let value = map.next_value_seed(self.nested())?.value;
                if key.merge_key {
                    merge(&mut object, value).map_err(de::Error::custom)?;
                    continue;
                }
                let key = match key.value {
                    Value::String(s) => s,
                    Value::Bool(b) => b.to_string(),
                    Value::Number(n) => n.to_string(),
                    Value::Null => return Err(de::Error::custom("a mapping key is null")),
                    _ => return Err(de::Error::custom("a mapping key is a mapping or a list")),
                };
                object.insert(key, value);
            }
            Ok(Value::Object(object).into())
        }

        fn visit_enum<A: EnumAccess<'de>>(self, data: A) -> Result<Node, A::Error> {
            // A local tag (`!thing value`): keep the value, unresolved as go-yaml keeps it.
            let (_tag, variant): (String, _) = data.variant()?;
            variant.newtype_variant_seed(Reader {
                resolve_plain: false,
                ..self
            })
        }
    }

    /// go-yaml v2's merge: a mapping's keys overwrite in document order; in a list of
    /// mappings, earlier ones win.
    fn merge(object: &mut Map<String, Value>, value: Value) -> Result<(), &'static str> {
        match value {
            Value::Object(from) => object.extend(from),
            Value::Array(list) => {
                for item in list.into_iter().rev() {
                    let Value::Object(from) = item else {
                        return Err("a merge key (<<) must refer to mappings");
                    };
                    object.extend(from);
                }
            }
            _ => return Err("a merge key (<<) must refer to a mapping"),
        }
        Ok(())
    }

    enum Resolved {
        Value(Value),
        Float(f64),
    }

    /// What go-yaml v2 makes of a plain scalar that YAML 1.2 (serde_yaml_ng) left a string.
    fn resolve_plain(s: &str) -> Option<Resolved> {
        match s {
            "y" | "Y" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => {
                return Some(Resolved::Value(Value::Bool(true)));
            }
            "n" | "N" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => {
                return Some(Resolved::Value(Value::Bool(false)));
            }
            _ => {}
        }
        match s.as_bytes().first()? {
            b'.' => s
                .parse()
                .ok()
                .filter(|_| !s.contains('_'))
                .map(Resolved::Float),
            b'0'..=b'9' | b'+' | b'-' => {
                let plain = s.replace('_', "");
                if let Some(n) = go_parse_int(&plain) {
                    return Some(Resolved::Value(n));
                }
                if is_yaml_style_float(&plain) {
                    return plain.parse().ok().map(Resolved::Float);
                }
                let (negative, binary) = match plain.strip_prefix("-0b") {
                    Some(digits) => (true, digits),
                    None => (false, plain.strip_prefix("0b")?),
                };
                let magnitude = i128::from(u64::from_str_radix(binary, 2).ok()?);
                int(if negative { -magnitude } else { magnitude }).map(Resolved::Value)
            }
            _ => None,
        }
    }

    /// Go's `strconv.ParseInt(s, 0, 64)`, falling back to `ParseUint` (which takes no sign).
    fn go_parse_int(s: &str) -> Option<Value> {
        let (sign, unsigned) = match s.as_bytes().first()? {
            b'+' => (Some(1), &s[1..]),
            b'-' => (Some(-1), &s[1..]),
            _ => (None, s),
        };
        let (radix, digits) = match unsigned.get(..2) {
            Some("0x" | "0X") => (16, &unsigned[2..]),
            Some("0o" | "0O") => (8, &unsigned[2..]),
            Some("0b" | "0B") => (2, &unsigned[2..]),
            _ if unsigned.len() > 1 && unsigned.starts_with('0') => (8, &unsigned[1..]),
            _ => (10, unsigned),
        };
        if digits.is_empty() || digits.starts_with(['+', '-']) {
            return None;
        }
        let magnitude = i128::from(u64::from_str_radix(digits, radix).ok()?);
        match sign {
            Some(sign) => i64::try_from(sign * magnitude).ok().map(Value::from),
            None => int(magnitude),
        }
    }

    fn int(n: i128) -> Option<Value> {
        i64::try_from(n)
            .map(Value::from)
            .or_else(|_| u64::try_from(n).map(Value::from))
            .ok()
    }

    /// go-yaml's `^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`.
    fn is_yaml_style_float(s: &str) -> bool {
        let s = s.strip_prefix(['-', '+']).unwrap_or(s);
        let (mantissa, exponent) = match s.find(['e', 'E']) {
            Some(at) => (&s[..at], Some(&s[at + 1..])),
            None => (s, None),
        };
        let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
        let mantissa_ok = match mantissa.split_once('.') {
            Some(("", fraction)) => digits(fraction),
            Some((whole, fraction)) => digits(whole) && (fraction.is_empty() || digits(fraction)),
            None => digits(mantissa),
        };
        let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['-', '+']).unwrap_or(e)));
        mantissa_ok && exponent_ok
    }

    /// A float as Go's JSON encoder writes it: whole numbers without a fraction, which
    /// integer fields on the API server need.
    fn float(f: f64) -> Option<Value> {
        if f.fract() == 0.0 && f.abs() < 9.2e18 {
            return Some(Value::from(f as i64));
        }
        Number::from_f64(f).map(Value::Number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real `helm template` output (Helm v3.21.4) of `helm create web` plus a ConfigMap and
    /// Secret in one template and a pre-install Job hook; see the fixture's README.
    const TEMPLATE: &str = include_str!("../tests/fixtures/helm-3.21.4/web.template.yaml");

    fn object(kind: &str, name: &str) -> ManifestObject {
        ManifestObject {
            source: Some(format!("c/templates/{name}.yaml")),
            api_version: "v1".into(),
            kind: kind.into(),
            name: name.into(),
            namespace: None,
            body: serde_json::json!({"apiVersion": "v1", "kind": kind, "metadata": {"name": name}}),
            text: format!("apiVersion: v1\nkind: {kind}\nmetadata:\n  name: {name}"),
        }
    }

    fn kinds(objects: &[ManifestObject]) -> Vec<&str> {
        objects.iter().map(|o| o.kind.as_str()).collect()
    }

    #[test]
    fn parses_real_helm_template_output() {
        let rendered = parse(TEMPLATE).unwrap();
        let names: Vec<_> = rendered
            .objects
            .iter()
            .map(|o| (o.kind.as_str(), o.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [
                ("ServiceAccount", "web"),
                ("Secret", "web-token"),
                ("ConfigMap", "web-settings"),
                ("Service", "web"),
                ("Deployment", "web"),
            ]
        );
        let deployment = &rendered.objects[4];
        assert_eq!(
            deployment.source.as_deref(),
            Some("web/templates/deployment.yaml")
        );
        assert_eq!(deployment.api_version, "apps/v1");
        assert_eq!(deployment.body["spec"]["replicas"], 3);
        assert!(deployment.text.starts_with("apiVersion: apps/v1\n"));
        assert!(rendered.crds.is_empty());

        // Test hooks from `helm create` are recorded, never among the objects to apply.
        assert_eq!(rendered.hooks.len(), 2);
        let test = &rendered.hooks[0];
        assert_eq!(
            (test.object.kind.as_str(), test.object.name.as_str()),
            ("Pod", "web-test-connection")
        );
        assert_eq!(test.events, [HookEvent::Test]);
        assert!(test.is_test());
        let job = &rendered.hooks[1];
        assert_eq!(job.object.name, "web-migrate");
        assert_eq!(job.events, [HookEvent::PreInstall, HookEvent::PreUpgrade]);
        assert_eq!(job.weight, -5);
        assert_eq!(
            job.delete_policies,
            ["before-hook-creation", "hook-succeeded"]
        );
        assert!(job.output_log_policies.is_empty());
    }

    #[test]
    fn manifest_string_reproduces_the_manifest_part_of_helm_template_output() {
        let rendered = parse(TEMPLATE).unwrap();
        let mut objects = rendered.objects.clone();
        install_order(&mut objects);
        let manifest = to_manifest_string(&objects);
        assert!(TEMPLATE.starts_with(&manifest));
        assert!(TEMPLATE[manifest.len()..].starts_with("---\n# Source: web/templates/tests/"));
        // And it parses back to the same objects.
        assert_eq!(parse(&manifest).unwrap().objects, objects);
    }

    #[test]
    fn install_order_matches_helm() {
        // Reverse of Helm's list, with unknown kinds and two objects per kind mixed in.
        let mut objects: Vec<_> = INSTALL_ORDER.iter().rev().map(|k| object(k, "a")).collect();
        objects.insert(0, object("Widget", "w"));
        objects.insert(3, object("Deployment", "second"));
        objects.insert(5, object("Apple", "x"));
        objects.push(object("Deployment", "first-after-second"));
        install_order(&mut objects);

        let mut expected: Vec<&str> = INSTALL_ORDER.to_vec();
        let at = expected.iter().position(|k| *k == "Deployment").unwrap();
        expected.splice(at..=at, ["Deployment"; 3]);
        expected.extend(["Apple", "Widget"]);
        assert_eq!(kinds(&objects), expected);
        // Stable within a kind: Helm sorts by kind only, never by name.
        let deployments: Vec<_> = objects
            .iter()
            .filter(|o| o.kind == "Deployment")
            .map(|o| o.name.as_str())
            .collect();
        assert_eq!(deployments, ["second", "a", "first-after-second"]);
    }

    #[test]
    fn install_order_spot_checks_against_helm_list() {
        let mut objects = vec![
            object("Ingress", "i"),
            object("CronJob", "c"),
            object("Namespace", "n"),
            object("CustomResourceDefinition", "crd"),
            object("Service", "s"),
            object("PriorityClass", "p"),
            object("Secret", "s"),
        ];
        install_order(&mut objects);
        assert_eq!(
            kinds(&objects),
            [
                "PriorityClass",
                "Namespace",
                "Secret",
                "CustomResourceDefinition",
                "Service",
                "CronJob",
                "Ingress"
            ]
        );
    }

    #[test]
    fn uninstall_order_matches_helm_including_its_string_sorted_document_keys() {
        let mut objects: Vec<_> = (0..12)
            .map(|n| object("ConfigMap", &format!("cm{n}")))
            .collect();
        objects.insert(4, object("Widget", "w"));
        objects.push(object("Namespace", "ns"));
        objects.push(object("Deployment", "d"));
        // Positions: cm0..cm3 = 0..3, Widget = 4, cm4..cm11 = 5..12, Namespace 13, Deployment 14.
        uninstall_order(&mut objects);
        let order: Vec<_> = objects.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(
            order,
            [
                "d", // Deployment before ConfigMap
                // manifest-0, -1, -10, -11, -12, -2, -3, -5, … as strings
                "cm0", "cm1", "cm9", "cm10", "cm11", "cm2", "cm3", "cm4", "cm5", "cm6", "cm7",
                "cm8", "ns", // Namespace near the end
                "w",  // unknown kinds last, as in Helm
            ]
        );
    }

    #[test]
    fn kind_orders_are_mirror_images() {
        let reversed: Vec<_> = INSTALL_ORDER.iter().rev().copied().collect();
        // Helm's uninstall list is the reverse except that Service moves before the workloads.
        let mut expected = reversed.clone();
        let service = expected.iter().position(|k| *k == "Service").unwrap();
        expected.remove(service);
        expected.insert(3, "Service");
        assert_eq!(UNINSTALL_ORDER, expected.as_slice());
    }

    #[test]
    fn errors_name_the_template_and_the_problem() {
        let missing_kind = "---\n# Source: web/templates/svc.yaml\napiVersion: v1\nkind: Service\nmetadata:\n  name: a\n---\n# Source: web/templates/svc.yaml\napiVersion: v1\nmetadata:\n  name: b\n";
        assert_eq!(
            parse(missing_kind).unwrap_err().to_string(),
            "web/templates/svc.yaml: document 2 has no \"kind\""
        );

        let invalid = "---\n# Source: web/templates/cm.yaml\napiVersion: v1\nkind: [ConfigMap\n";
        let err = parse(invalid).unwrap_err().to_string();
        assert!(
            err.starts_with("web/templates/cm.yaml: document 1 is not valid YAML for Kubernetes: "),
            "{err}"
        );

        let cases = [
            (
                "- a\n- b\n",
                "document 1 is not a YAML mapping (a Kubernetes object)",
            ),
            (
                "kind: ConfigMap\nmetadata:\n  name: a\n",
                "document 1 has no \"apiVersion\"",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\n",
                "document 1 has no \"metadata\"",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n",
                "document 1 has no \"metadata.name\"",
            ),
            (
                "apiVersion: v1\nkind: 3\nmetadata: {name: a}\n",
                "document 1: \"kind\" must be a string",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata: a\n",
                "document 1: \"metadata\" must be a mapping",
            ),
            (
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  annotations:\n    note: 5\n",
                "document 1: \"metadata.annotations.note\" must be a string",
            ),
            (
                "apiVersion: v1\nkind: List\nitems: []\nmetadata: {name: a}\n",
                "document 1 is a List with items; render each object as its own document (Optikon does not expand List kinds)",
            ),
            (
                "apiVersion: v1\nkind: X\nmetadata: {name: a}\nv: .nan\n",
                "document 1 is not valid YAML for Kubernetes: v: NaN cannot be carried in JSON at line 4 column 4",
            ),
            (
                "apiVersion: v1\nkind: X\nmetadata: {name: a}\n? [k]\n: v\n",
                "document 1 is not valid YAML for Kubernetes: a mapping key is a mapping or a list",
            ),
            (
                "apiVersion: v1\nkind: X\nmetadata: {name: a}\nv: {<<: 5}\n",
                "document 1 is not valid YAML for Kubernetes: v: a merge key (<<) must refer to a mapping at line 4 column 4",
            ),
        ];
        for (text, message) in cases {
            assert_eq!(
                parse(text).unwrap_err().to_string(),
                message,
                "for {text:?}"
            );
        }
    }

    #[test]
    fn skips_empty_and_comment_only_documents() {
        let text = "\n---\n---\n# Source: c/templates/empty.yaml\n# nothing rendered\n---   \n\n--- # a comment\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n...\n";
        let rendered = parse(text).unwrap();
        assert_eq!(rendered.objects.len(), 1);
        let object = &rendered.objects[0];
        assert_eq!(object.name, "a");
        // The comment-only document set the source; the next document kept it.
        assert_eq!(object.source.as_deref(), Some("c/templates/empty.yaml"));
        assert_eq!(parse("").unwrap(), Rendered::default());
    }

    #[test]
    fn indented_dashes_inside_a_block_scalar_do_not_split() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\ndata:\n  f: |\n    ---\n    x\n";
        let rendered = parse(text).unwrap();
        assert_eq!(rendered.objects[0].body["data"]["f"], "---\nx\n");
    }

    #[test]
    fn crds_directory_objects_are_kept_apart() {
        let text = "---\n# Source: web/crds/widgets.yaml\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: widgets.example.com\n---\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: gadgets.example.com\n---\n# Source: web/charts/db/crds/x.yaml\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: x.example.com\n---\n# Source: web/templates/crds/y.yaml\napiVersion: apiextensions.k8s.io/v1\nkind: CustomResourceDefinition\nmetadata:\n  name: y.example.com\n";
        let rendered = parse(text).unwrap();
        let crds: Vec<_> = rendered.crds.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(
            crds,
            [
                "widgets.example.com",
                "gadgets.example.com",
                "x.example.com"
            ]
        );
        assert_eq!(
            rendered.crds[1].source.as_deref(),
            Some("web/crds/widgets.yaml")
        );
        assert_eq!(rendered.objects.len(), 1);
        assert_eq!(rendered.objects[0].name, "y.example.com");
    }

    #[test]
    fn hooks_follow_helms_annotation_rules() {
        let hook = |annotations: &str| {
            format!(
                "---\n# Source: c/templates/h.yaml\napiVersion: batch/v1\nkind: Job\nmetadata:\n  name: h\n  annotations:\n{annotations}\n"
            )
        };
        let rendered = parse(&hook(
            "    helm.sh/hook: \" Post-Install , test-success\"\n    helm.sh/hook-weight: \"x\"\n    helm.sh/hook-delete-policy: \"Hook-Failed\"\n    helm.sh/hook-output-log-policy: hook-failed",
        ))
        .unwrap();
        assert!(rendered.objects.is_empty());
        let hook_object = &rendered.hooks[0];
        assert_eq!(
            hook_object.events,
            [HookEvent::PostInstall, HookEvent::Test]
        );
        assert_eq!(hook_object.weight, 0);
        assert_eq!(hook_object.delete_policies, ["hook-failed"]);
        assert_eq!(hook_object.output_log_policies, ["hook-failed"]);

        // Helm drops a hook with an event it does not know, rather than applying it.
        let unknown = parse(&hook("    helm.sh/hook: pre-install,on-tuesday")).unwrap();
        assert_eq!(unknown, Rendered::default());

        // Other annotations do not make a hook.
        let plain = parse(&hook("    helm.sh/resource-policy: Keep ")).unwrap();
        assert!(plain.hooks.is_empty());
        assert!(plain.objects[0].keeps_on_delete());
        assert!(!object("ConfigMap", "a").keeps_on_delete());

        // A hook may use generateName.
        let generated = "apiVersion: v1\nkind: Pod\nmetadata:\n  generateName: t-\n  annotations:\n    helm.sh/hook: test\n";
        assert_eq!(parse(generated).unwrap().hooks[0].object.name, "");
    }

    #[test]
    fn helm_ownership_goes_on_the_body_not_the_text() {
        let mut cm = object("ConfigMap", "a");
        cm.body["metadata"]["labels"] =
            serde_json::json!({"app": "x", MANAGED_BY_LABEL: "someone"});
        cm.set_helm_ownership("web", "demo");
        assert_eq!(
            cm.body["metadata"],
            serde_json::json!({
                "name": "a",
                "labels": {"app": "x", "app.kubernetes.io/managed-by": "Helm"},
                "annotations": {"meta.helm.sh/release-name": "web", "meta.helm.sh/release-namespace": "demo"}
            })
        );
        assert!(!cm.text.contains("meta.helm.sh"));
    }

    #[test]
    fn keys_compare_by_group_kind_namespace_name() {
        let mut a = object("Deployment", "web");
        a.api_version = "apps/v1".into();
        let mut b = a.clone();
        b.api_version = "apps/v1beta2".into();
        assert_eq!(a.key(), b.key());
        assert_eq!((a.group(), a.version()), ("apps", "v1"));
        let core = object("Service", "web");
        assert_eq!((core.group(), core.version()), ("", "v1"));

        let explicit = ObjectKey {
            namespace: Some("demo".into()),
            ..a.key()
        };
        assert_ne!(a.key(), explicit);
        assert_eq!(a.key().in_namespace("demo"), explicit);
        assert_eq!(explicit.clone().in_namespace("other"), explicit);
        assert_eq!(explicit.to_string(), "Deployment.apps demo/web");
        assert_eq!(core.key().to_string(), "Service web");

        let previous = std::collections::BTreeSet::from([a.key(), core.key()]);
        let current = std::collections::BTreeSet::from([b.key()]);
        let gone: Vec<_> = previous.difference(&current).collect();
        assert_eq!(gone, [&core.key()]);
    }

    #[test]
    fn yaml_becomes_json_like_kubernetes_tooling() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  labels: &l {x: \"1\"}\nbase: &b {p: 1, q: 2}\nmerged:\n  q: 3\n  <<: *b\nlist:\n  <<: [{p: 1}, {p: 2, r: 3}]\n  '<<': quoted\nkeys: {1: one, on: a, n: b, \"y\": c}\ncopy: *l\nbig: 18446744073709551615\ntagged: !custom 0755\n";
        let body = &parse(text).unwrap().objects[0].body;
        // go-yaml v2 merges in document order (a later merge overwrites), earlier list entries win.
        assert_eq!(body["merged"], serde_json::json!({"p": 1, "q": 2}));
        assert_eq!(
            body["list"],
            serde_json::json!({"p": 1, "r": 3, "<<": "quoted"})
        );
        assert_eq!(
            body["keys"],
            serde_json::json!({"1": "one", "true": "a", "false": "b", "y": "c"})
        );
        assert_eq!(body["copy"], serde_json::json!({"x": "1"}));
        assert_eq!(body["big"], serde_json::json!(u64::MAX));
        assert_eq!(body["tagged"], "0755");
    }

    #[test]
    fn plain_scalars_resolve_as_in_yaml_1_1() {
        // Expected values are what sigs.k8s.io/yaml v1.6.0 (go-yaml v2, as used by Helm's
        // Kubernetes client) made of `v: <scalar>`.
        let cases = [
            ("yes", serde_json::json!(true)),
            ("Off", serde_json::json!(false)),
            ("y", serde_json::json!(true)),
            ("N", serde_json::json!(false)),
            ("~", serde_json::json!(null)),
            ("", serde_json::json!(null)),
            ("0755", serde_json::json!(493)),
            ("-0755", serde_json::json!(-493)),
            ("+0755", serde_json::json!(493)),
            ("08", serde_json::json!(8)),
            ("007", serde_json::json!(7)),
            ("0x1F", serde_json::json!(31)),
            ("-0x10", serde_json::json!(-16)),
            ("0o17", serde_json::json!(15)),
            ("0b101", serde_json::json!(5)),
            ("-0b101", serde_json::json!(-5)),
            ("0b1_0", serde_json::json!(2)),
            ("1_000", serde_json::json!(1000)),
            ("0x_1F", serde_json::json!(31)),
            ("1_0.5", serde_json::json!(10.5)),
            ("1.0", serde_json::json!(1)),
            ("1e3", serde_json::json!(1000)),
            ("1.e2", serde_json::json!(100)),
            ("-.5", serde_json::json!(-0.5)),
            ("01.5", serde_json::json!(1.5)),
            ("3e-2", serde_json::json!(0.03)),
            (
                "9223372036854775808",
                serde_json::json!(9_223_372_036_854_775_808_u64),
            ),
            ("2024-01-01", serde_json::json!("2024-01-01")),
            ("12:30:45", serde_json::json!("12:30:45")),
            ("_1", serde_json::json!("_1")),
            ("0b", serde_json::json!("0b")),
            ("0b2", serde_json::json!("0b2")),
            ("1e", serde_json::json!("1e")),
            ("inf", serde_json::json!("inf")),
            ("NaN", serde_json::json!("NaN")),
            ("'yes'", serde_json::json!("yes")),
            ("\"0755\"", serde_json::json!("0755")),
            ("'it''s'", serde_json::json!("it's")),
            ("!!str yes", serde_json::json!("yes")),
            ("!!str &b on", serde_json::json!("on")),
            ("&a yes", serde_json::json!(true)),
            ("yes # comment", serde_json::json!(true)),
            ("|\n  yes", serde_json::json!("yes\n")),
            ("[yes, 'no', 0755]", serde_json::json!([true, "no", 493])),
            (
                "{on: 1, 'off': 2, 3: x, 1.5: y}",
                serde_json::json!({"true": 1, "off": 2, "3": "x", "1.5": true}),
            ),
        ];
        for (scalar, expected) in cases {
            let text = format!("apiVersion: v1\nkind: X\nmetadata: {{name: a}}\nv: {scalar}\n");
            let rendered = parse(&text).unwrap_or_else(|e| panic!("{scalar:?}: {e}"));
            assert_eq!(rendered.objects[0].body["v"], expected, "for {scalar:?}");
        }
    }

    #[test]
    fn hand_built_objects_are_written_as_yaml() {
        let mut built = object("ConfigMap", "a");
        built.text.clear();
        built.source = None;
        let manifest = to_manifest_string(&[built.clone()]);
        assert_eq!(
            manifest,
            "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n"
        );
        assert_eq!(parse(&manifest).unwrap().objects[0].body, built.body);
    }
}
