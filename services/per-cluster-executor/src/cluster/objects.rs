//! A release's objects on the cluster: placing them (resource and namespace), server-side
//! apply, ownership checks, deletion, and waiting for them to be ready or gone.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kube::api::{
    Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, PropagationPolicy,
};
use kube::discovery::ApiResource;
use optikon_core::manifest::{ManifestObject, ObjectKey};
use serde_json::{Map, Value};

use super::catalog::ApiCatalog;
use super::readiness::{Readiness, needs_wait, readiness};
use super::{ClusterError, FIELD_MANAGER, Halt};

/// Helm 3 marks every object it manages with these, and refuses to take over an object marked
/// for another release; `helm upgrade` run by hand later accepts objects that carry them.
pub(crate) const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub(crate) const RELEASE_NAME_ANNOTATION: &str = "meta.helm.sh/release-name";
pub(crate) const RELEASE_NAMESPACE_ANNOTATION: &str = "meta.helm.sh/release-namespace";

/// Polling interval while waiting; the first check is immediate.
const POLL: Duration = Duration::from_millis(500);
/// At most this many unready objects are named in a failure reason.
const NAMED_IN_REASON: usize = 5;

/// An object with the resource that serves it and the namespace it lives in.
#[derive(Debug, Clone)]
pub(crate) struct Placed {
    pub object: ManifestObject,
    pub resource: ApiResource,
    /// `None` for cluster-scoped kinds.
    pub namespace: Option<String>,
}

impl Placed {
    /// Identity for pruning, with the namespace as the cluster sees it.
    pub fn key(&self) -> ObjectKey {
        ObjectKey {
            group: self.object.group().to_owned(),
            kind: self.object.kind.clone(),
            namespace: self.namespace.clone(),
            name: self.object.name.clone(),
        }
    }

    /// `Deployment shop/web`, `ClusterRole view-web`.
    pub fn describe(&self) -> String {
        match &self.namespace {
            Some(namespace) => format!("{} {namespace}/{}", self.object.kind, self.object.name),
            None => format!("{} {}", self.object.kind, self.object.name),
        }
    }

    fn source(&self) -> String {
        self.object
            .source
            .as_ref()
            .map(|s| format!(" (from {s})"))
            .unwrap_or_default()
    }

    pub fn api(&self, client: &kube::Client) -> Api<DynamicObject> {
        match &self.namespace {
            Some(namespace) => Api::namespaced_with(client.clone(), namespace, &self.resource),
            None => Api::all_with(client.clone(), &self.resource),
        }
    }
}

/// Finds the resource for `object`; namespaced objects without a namespace go to the release
/// namespace, cluster-scoped ones lose any namespace they were given. `None` if the cluster
/// does not serve the kind at that `apiVersion`.
pub(crate) fn place(
    catalog: &ApiCatalog,
    object: &ManifestObject,
    release_namespace: &str,
) -> Option<Placed> {
    let served = catalog.resolve(&object.api_version, &object.kind)?;
    let namespace = served.namespaced.then(|| {
        object
            .namespace
            .clone()
            .unwrap_or_else(|| release_namespace.to_owned())
    });
    Some(Placed {
        object: object.clone(),
        resource: served.resource.clone(),
        namespace,
    })
}

/// Like [`place`], for deleting an object a previous revision made: if its `apiVersion` is no
/// longer served, any served version of the same group and kind reaches the same object.
pub(crate) fn place_for_delete(
    catalog: &ApiCatalog,
    object: &ManifestObject,
    release_namespace: &str,
) -> Option<Placed> {
    place(catalog, object, release_namespace).or_else(|| {
        let api_version = catalog
            .versions_of(object.group(), &object.kind)
            .first()?
            .to_string();
        let moved = ManifestObject {
            api_version,
            ..object.clone()
        };
        place(catalog, &moved, release_namespace)
    })
}

/// Why an object's kind cannot be applied here, in words a chart author can act on.
pub(crate) fn unserved_reason(catalog: &ApiCatalog, object: &ManifestObject) -> String {
    let source = object
        .source
        .as_ref()
        .map(|s| format!("{s}: "))
        .unwrap_or_default();
    let others = catalog.versions_of(object.group(), &object.kind);
    if others.is_empty() {
        format!(
            "{source}{} {} uses kind {} of apiVersion {}, which this cluster does not serve \
             (is its CRD installed?)",
            object.kind, object.name, object.kind, object.api_version
        )
    } else {
        format!(
            "{source}{} {} uses apiVersion {}, which this cluster does not serve for {}; it \
             serves {}",
            object.kind,
            object.name,
            object.api_version,
            object.kind,
            others.join(", ")
        )
    }
}

/// The object as sent to server-side apply: namespace set as placed, and, given the owning
/// (release, namespace), Helm's ownership label and annotations added.
pub(crate) fn apply_body(placed: &Placed, owner: Option<(&str, &str)>) -> Value {
    let mut body = placed.object.body.clone();
    let Some(root) = body.as_object_mut() else {
        return body;
    };
    let metadata = object_entry(root, "metadata");
    match &placed.namespace {
        Some(namespace) => {
            metadata.insert("namespace".into(), Value::String(namespace.clone()));
        }
        None => {
            metadata.remove("namespace");
        }
    }
    if let Some((release, release_namespace)) = owner {
        object_entry(metadata, "labels").insert(MANAGED_BY_LABEL.into(), "Helm".into());
        let annotations = object_entry(metadata, "annotations");
        annotations.insert(RELEASE_NAME_ANNOTATION.into(), release.into());
        annotations.insert(
            RELEASE_NAMESPACE_ANNOTATION.into(),
            release_namespace.into(),
        );
    }
    body
}

/// `map[key]` as a JSON object, replacing a missing or `null` (or otherwise odd) entry.
fn object_entry<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let entry = map
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        *entry = Value::Object(Map::new());
    }
    entry.as_object_mut().expect("just made an object")
}

/// Which release, if any, an existing object says it belongs to.
pub(crate) fn owner_of(object: &Value) -> Option<(String, String)> {
    let annotations = object.pointer("/metadata/annotations")?;
    let name = annotations.get(RELEASE_NAME_ANNOTATION)?.as_str()?;
    let namespace = annotations.get(RELEASE_NAMESPACE_ANNOTATION)?.as_str()?;
    Some((name.to_owned(), namespace.to_owned()))
}

/// Whether a failed API call is worth repeating later (the server or the network), rather
/// than a rejection that will come back the same way.
pub(crate) fn is_transient(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => {
            matches!(status.code, 0 | 408 | 409 | 429) || status.code >= 500
        }
        _ => true,
    }
}

/// The API server's own words for a rejection.
pub(crate) fn rejection(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) if !status.message.is_empty() => status.message.clone(),
        other => other.to_string(),
    }
}

/// Turns an API error into a transient error or a failure naming `what`.
pub(crate) fn halt(error: kube::Error, doing: impl FnOnce() -> String) -> Halt {
    let doing = doing();
    if is_transient(&error) {
        Halt::Error(ClusterError::Api {
            doing,
            source: error,
        })
    } else {
        Halt::Failed(format!("{doing}: {}", rejection(&error)))
    }
}

fn is_not_found(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.code == 404)
}

/// Refuses objects that exist already but belong to another release or to nobody: Helm does
/// the same rather than take them over silently.
pub(crate) async fn check_ownership(
    client: &kube::Client,
    placed: &Placed,
    release: &str,
    release_namespace: &str,
) -> Result<(), Halt> {
    let Some(existing) = live(client, placed).await? else {
        return Ok(());
    };
    match owner_of(&existing) {
        Some((name, namespace)) if name == release && namespace == release_namespace => Ok(()),
        Some((name, namespace)) => Err(Halt::Failed(format!(
            "{}{} already exists and belongs to release {name} in namespace {namespace}; \
             rename it in the chart or uninstall that release",
            placed.describe(),
            placed.source()
        ))),
        None => Err(Halt::Failed(format!(
            "{}{} already exists and is not managed by Helm; delete it or rename it in the chart",
            placed.describe(),
            placed.source()
        ))),
    }
}

/// Server-side apply, forcing ownership of conflicting fields. Returns the live object.
pub(crate) async fn apply(
    client: &kube::Client,
    placed: &Placed,
    owner: Option<(&str, &str)>,
) -> Result<Value, Halt> {
    let live = server_side_apply(client, placed, owner, false).await?;
    tracing::debug!(object = %placed.describe(), "applied");
    Ok(live)
}

/// [`apply`] as a server-side dry run (`dryRun=All`): the object as the API server would
/// store it, defaults and admission included; nothing changes.
pub(crate) async fn dry_run_apply(
    client: &kube::Client,
    placed: &Placed,
    owner: Option<(&str, &str)>,
) -> Result<Value, Halt> {
    server_side_apply(client, placed, owner, true).await
}

async fn server_side_apply(
    client: &kube::Client,
    placed: &Placed,
    owner: Option<(&str, &str)>,
    dry_run: bool,
) -> Result<Value, Halt> {
    let body = apply_body(placed, owner);
    let mut params = PatchParams::apply(FIELD_MANAGER).force();
    params.dry_run = dry_run;
    let object = placed
        .api(client)
        .patch(&placed.object.name, &params, &Patch::Apply(&body))
        .await
        .map_err(|e| {
            halt(e, || {
                let dry = if dry_run { " (dry run)" } else { "" };
                format!("apply {}{}{dry}", placed.describe(), placed.source())
            })
        })?;
    Ok(serde_json::to_value(object).unwrap_or_default())
}

/// Creates the object as given, without Helm's ownership marks, as Helm creates a hook: an
/// object already there is refused by the API server, not taken over. Returns the live object.
pub(crate) async fn create(
    client: &kube::Client,
    placed: &Placed,
) -> Result<DynamicObject, kube::Error> {
    let body = apply_body(placed, None);
    let object: DynamicObject = serde_json::from_value(body).map_err(kube::Error::SerdeError)?;
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.to_owned()),
        ..PostParams::default()
    };
    placed.api(client).create(&params, &object).await
}

/// Whether the object exists. A 404 for the resource itself (its CRD is gone, so the API
/// server answers `404 page not found` rather than a NotFound status) means no, too.
pub(crate) async fn exists(client: &kube::Client, placed: &Placed) -> Result<bool, Halt> {
    match placed.api(client).get_metadata(&placed.object.name).await {
        Ok(_) => Ok(true),
        Err(e) if is_not_found(&e) => Ok(false),
        Err(e) => Err(halt(e, || format!("look up {}", placed.describe()))),
    }
}

/// The live object, `None` if it (or its resource) does not exist.
pub(crate) async fn live(client: &kube::Client, placed: &Placed) -> Result<Option<Value>, Halt> {
    match placed.api(client).get(&placed.object.name).await {
        Ok(object) => Ok(Some(serde_json::to_value(object).unwrap_or_default())),
        Err(e) if is_not_found(&e) => Ok(None),
        Err(e) => Err(halt(e, || format!("read {}", placed.describe()))),
    }
}

/// How uninstall deletes an object: workloads in the foreground, so that waiting for them to
/// go also waits for their pods; everything else in the background, as Helm does. (The
/// garbage collector learns of a new CRD's kinds only at its next resync, so foreground
/// deletion of a custom resource can take half a minute for nothing.)
pub(crate) fn uninstall_propagation(placed: &Placed) -> PropagationPolicy {
    let workload = matches!(
        (
            placed.resource.group.as_str(),
            placed.resource.kind.as_str()
        ),
        (
            "apps",
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet"
        ) | ("batch", "Job" | "CronJob")
            | ("", "ReplicationController")
    );
    if workload {
        PropagationPolicy::Foreground
    } else {
        PropagationPolicy::Background
    }
}

/// Deletes the object; one already gone is fine.
pub(crate) async fn delete(
    client: &kube::Client,
    placed: &Placed,
    propagation: PropagationPolicy,
) -> Result<(), Halt> {
    let params = DeleteParams {
        propagation_policy: Some(propagation),
        ..DeleteParams::default()
    };
    match placed
        .api(client)
        .delete(&placed.object.name, &params)
        .await
    {
        Ok(_) => {
            tracing::debug!(object = %placed.describe(), "deleted");
            Ok(())
        }
        Err(e) if is_not_found(&e) => Ok(()),
        Err(e) => Err(halt(e, || format!("delete {}", placed.describe()))),
    }
}

/// Waits until every object is ready or `deadline` passes (then fails naming the laggards).
pub(crate) async fn wait_ready(
    client: &kube::Client,
    objects: &[Placed],
    timeout: Duration,
) -> Result<(), Halt> {
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<&Placed> = objects
        .iter()
        .filter(|p| needs_wait(&p.resource.group, &p.resource.kind))
        .collect();
    loop {
        let mut waiting = Vec::new();
        for placed in pending {
            let live = placed
                .api(client)
                .get_opt(&placed.object.name)
                .await
                .map_err(|e| halt(e, || format!("read {}", placed.describe())))?;
            let Some(live) = live else {
                waiting.push((
                    placed,
                    "does not exist (deleted by someone else?)".to_owned(),
                ));
                continue;
            };
            let live = serde_json::to_value(live).unwrap_or_default();
            match readiness(&placed.resource.group, &placed.resource.kind, &live) {
                Readiness::Ready => {}
                Readiness::Waiting(why) => waiting.push((placed, why)),
                Readiness::Failed(why) => {
                    return Err(Halt::Failed(format!("{}: {why}", placed.describe())));
                }
            }
        }
        if waiting.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Halt::Failed(not_ready_reason(&waiting, timeout)));
        }
        pending = waiting.into_iter().map(|(p, _)| p).collect();
        tokio::time::sleep(POLL).await;
    }
}

fn not_ready_reason(waiting: &[(&Placed, String)], timeout: Duration) -> String {
    let mut named: Vec<String> = waiting
        .iter()
        .take(NAMED_IN_REASON)
        .map(|(p, why)| format!("{} ({why})", p.describe()))
        .collect();
    if waiting.len() > NAMED_IN_REASON {
        named.push(format!("and {} more", waiting.len() - NAMED_IN_REASON));
    }
    format!(
        "not ready after {}s: {}",
        timeout.as_secs(),
        named.join("; ")
    )
}

/// Waits until every object is gone or `deadline` passes.
pub(crate) async fn wait_gone(
    client: &kube::Client,
    objects: &[Placed],
    timeout: Duration,
) -> Result<(), Halt> {
    let deadline = Instant::now() + timeout;
    let mut pending: Vec<&Placed> = objects.iter().collect();
    loop {
        let mut left = Vec::new();
        for placed in pending {
            if exists(client, placed).await? {
                left.push(placed);
            }
        }
        if left.is_empty() {
            return Ok(());
        }
        tracing::debug!(left = left.len(), first = %left[0].describe(), "waiting for deletion");
        if Instant::now() >= deadline {
            let names: BTreeSet<String> = left.iter().map(|p| p.describe()).collect();
            let names: Vec<String> = names.into_iter().collect();
            return Err(Halt::Failed(format!(
                "still present {}s after deletion: {}",
                timeout.as_secs(),
                names.join(", ")
            )));
        }
        pending = left;
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::catalog::resource;
    use super::*;

    fn object(
        api_version: &str,
        kind: &str,
        name: &str,
        namespace: Option<&str>,
        body: Value,
    ) -> ManifestObject {
        ManifestObject {
            source: Some(format!("web/templates/{}.yaml", kind.to_lowercase())),
            api_version: api_version.into(),
            kind: kind.into(),
            name: name.into(),
            namespace: namespace.map(str::to_owned),
            body,
            text: String::new(),
        }
    }

    fn catalog() -> ApiCatalog {
        let mut catalog = ApiCatalog::default();
        catalog.insert(resource("apps", "v1", "Deployment", "deployments"), true);
        catalog.insert(
            resource(
                "rbac.authorization.k8s.io",
                "v1",
                "ClusterRole",
                "clusterroles",
            ),
            false,
        );
        catalog.insert(
            resource(
                "autoscaling",
                "v2",
                "HorizontalPodAutoscaler",
                "horizontalpodautoscalers",
            ),
            true,
        );
        catalog
    }

    #[test]
    fn namespaced_objects_default_to_the_release_namespace() {
        let catalog = catalog();
        let web = object("apps/v1", "Deployment", "web", None, json!({}));
        let placed = place(&catalog, &web, "shop").unwrap();
        assert_eq!(placed.namespace.as_deref(), Some("shop"));
        assert_eq!(placed.resource.plural, "deployments");
        assert_eq!(placed.describe(), "Deployment shop/web");
        assert_eq!(placed.key(), web.key().in_namespace("shop"));

        let elsewhere = object("apps/v1", "Deployment", "web", Some("other"), json!({}));
        assert_eq!(
            place(&catalog, &elsewhere, "shop")
                .unwrap()
                .namespace
                .as_deref(),
            Some("other")
        );

        let role = object(
            "rbac.authorization.k8s.io/v1",
            "ClusterRole",
            "view",
            Some("shop"),
            json!({}),
        );
        let placed = place(&catalog, &role, "shop").unwrap();
        assert_eq!(
            placed.namespace, None,
            "cluster-scoped kinds have no namespace"
        );
        assert_eq!(placed.describe(), "ClusterRole view");
    }

    #[test]
    fn unserved_kinds_are_explained() {
        let catalog = catalog();
        let old = object(
            "autoscaling/v2beta1",
            "HorizontalPodAutoscaler",
            "web",
            None,
            json!({}),
        );
        assert!(place(&catalog, &old, "shop").is_none());
        let reason = unserved_reason(&catalog, &old);
        assert!(
            reason.contains("autoscaling/v2beta1") && reason.contains("it serves autoscaling/v2"),
            "{reason}"
        );
        // A previous revision's object is still reachable for deletion through another version.
        assert_eq!(
            place_for_delete(&catalog, &old, "shop")
                .unwrap()
                .resource
                .version,
            "v2"
        );

        let custom = object("example.com/v1", "Widget", "w", None, json!({}));
        assert!(unserved_reason(&catalog, &custom).contains("is its CRD installed?"));
        assert!(place_for_delete(&catalog, &custom, "shop").is_none());
    }

    #[test]
    fn apply_body_sets_namespace_and_helm_ownership() {
        let catalog = catalog();
        let body = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": null, "annotations": {"keep": "me"}},
            "spec": {"replicas": 2}
        });
        let placed = place(
            &catalog,
            &object("apps/v1", "Deployment", "web", None, body),
            "shop",
        )
        .unwrap();
        let sent = apply_body(&placed, Some(("web", "shop")));
        assert_eq!(sent["metadata"]["namespace"], "shop");
        assert_eq!(sent["metadata"]["labels"][MANAGED_BY_LABEL], "Helm");
        assert_eq!(sent["metadata"]["annotations"]["keep"], "me");
        assert_eq!(owner_of(&sent), Some(("web".into(), "shop".into())));
        assert_eq!(sent["spec"]["replicas"], 2);

        let role = json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "view", "namespace": "shop"}});
        let placed = place(
            &catalog,
            &object(
                "rbac.authorization.k8s.io/v1",
                "ClusterRole",
                "view",
                Some("shop"),
                role,
            ),
            "shop",
        )
        .unwrap();
        let sent = apply_body(&placed, None);
        assert!(sent["metadata"].get("namespace").is_none());
        assert_eq!(owner_of(&sent), None, "no ownership without an owner");
    }

    #[test]
    fn uninstall_waits_for_workload_pods_only() {
        let catalog = catalog();
        let web = place(
            &catalog,
            &object("apps/v1", "Deployment", "web", None, json!({})),
            "ns",
        )
        .unwrap();
        assert!(matches!(
            uninstall_propagation(&web),
            PropagationPolicy::Foreground
        ));
        let role = place(
            &catalog,
            &object(
                "rbac.authorization.k8s.io/v1",
                "ClusterRole",
                "r",
                None,
                json!({}),
            ),
            "ns",
        )
        .unwrap();
        assert!(matches!(
            uninstall_propagation(&role),
            PropagationPolicy::Background
        ));
    }

    #[test]
    fn only_server_and_network_trouble_is_transient() {
        let api = |code: u16| {
            kube::Error::Api(Box::new(
                kube::core::Status::failure("x", "y").with_code(code),
            ))
        };
        for code in [500, 503, 429, 409, 408] {
            assert!(is_transient(&api(code)), "{code}");
        }
        for code in [400, 403, 404, 413, 422] {
            assert!(!is_transient(&api(code)), "{code}");
        }
        match halt(api(422), || "apply Deployment shop/web".into()) {
            Halt::Failed(reason) => assert_eq!(reason, "apply Deployment shop/web: x"),
            Halt::Error(e) => panic!("422 is not transient: {e}"),
        }
    }

    #[test]
    fn not_ready_reason_names_a_few() {
        let catalog = catalog();
        let placed: Vec<Placed> = (0..7)
            .map(|i| {
                place(
                    &catalog,
                    &object("apps/v1", "Deployment", &format!("d{i}"), None, json!({})),
                    "ns",
                )
                .unwrap()
            })
            .collect();
        let waiting: Vec<(&Placed, String)> = placed
            .iter()
            .map(|p| (p, "0 of 1 replicas available".to_owned()))
            .collect();
        let reason = not_ready_reason(&waiting, Duration::from_secs(120));
        assert!(
            reason
                .starts_with("not ready after 120s: Deployment ns/d0 (0 of 1 replicas available)"),
            "{reason}"
        );
        assert!(reason.ends_with("and 2 more"), "{reason}");
    }
}
