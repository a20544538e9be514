//! Previews: what one desired generation would change on this cluster, nothing applied.
//!
//! The revision is planned exactly as a real run plans it (the same render, the same
//! rollback target, the same prune list), then every object is sent to the API server as a
//! server-side apply with `dryRun=All`. The server answers with the object as it would store
//! it, defaults, admission and all, and that is diffed against the live object. A request a
//! real run would refuse (a chart that does not render, an object owned by another release,
//! an object the API server rejects) is a failed preview with the same reason.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;
use optikon_core::manifest::{self, HookEvent, ManifestObject, ObjectKey};
use optikon_core::message::{Action, DesiredRelease};
use optikon_core::preview::{Change, ClusterPreview, ObjectChange, PreviewOutcome, unified_diff};
use optikon_core::release_record::{Hook, Status};
use serde_json::Value;

use super::catalog::ApiCatalog;
use super::history::History;
use super::objects::{self, Placed};
use super::{ClusterError, ClusterTarget, Halt, Plan, Previous, crd_defines, previous};

/// Metadata the API server keeps for itself: never a change a chart makes.
const SERVER_METADATA: &[&str] = &[
    "managedFields",
    "resourceVersion",
    "uid",
    "creationTimestamp",
    "generation",
    "selfLink",
];

impl ClusterTarget {
    /// What carrying out `desired` would do here. `chart_tgz` as for
    /// [`ClusterTarget::execute`]. `Err` only for trouble worth asking again (the API
    /// server is unreachable).
    pub async fn preview(
        &self,
        desired: &DesiredRelease,
        chart_tgz: Option<&[u8]>,
    ) -> Result<ClusterPreview, ClusterError> {
        let (name, namespace) = (&desired.release, &desired.namespace);
        let history = self.history(namespace, name).await?;
        let revision = history
            .newest()
            .filter(|r| r.status_label != Status::Uninstalled.as_str())
            .map(|r| r.version);
        let planned = match desired.action {
            Action::Install | Action::Upgrade => {
                Box::pin(self.plan_deploy(desired, chart_tgz, &history)).await?
            }
            Action::Rollback => Box::pin(self.plan_rollback(desired, &history)).await?,
            Action::Uninstall => return self.preview_uninstall(desired, &history, revision).await,
        };
        let plan = match planned {
            Ok(plan) => plan,
            Err(refused) => {
                let reason = refused.reason.unwrap_or_else(|| "it would fail".into());
                return Ok(ClusterPreview::failed(&desired.cluster, reason));
            }
        };
        let next_revision = Some(plan.release.version);
        let hooks = hooks_of(&plan);
        let answer = match self.changes(desired, &plan).await {
            Ok(objects) => ClusterPreview {
                cluster: desired.cluster.clone(),
                outcome: PreviewOutcome::Previewed,
                reason: None,
                revision,
                next_revision,
                objects,
                hooks,
                last_heartbeat: None,
                same_as: None,
            },
            Err(Halt::Failed(reason)) => ClusterPreview {
                revision,
                ..ClusterPreview::failed(&desired.cluster, reason)
            },
            Err(Halt::Error(error)) => return Err(error),
        };
        Ok(answer)
    }

    /// Every object of the plan and every object it would prune, each with its change.
    async fn changes(
        &self,
        desired: &DesiredRelease,
        plan: &Plan,
    ) -> Result<Vec<ObjectChange>, Halt> {
        let (release, namespace) = (desired.release.as_str(), desired.namespace.as_str());
        let catalog = self.known_catalog();
        let namespace_exists = Api::<Namespace>::all(self.client.clone())
            .get_opt(namespace)
            .await
            .map_err(|e| objects::halt(e, || format!("look up namespace {namespace}")))?
            .is_some();
        let mut changes = Vec::new();
        if !namespace_exists {
            changes.push(ObjectChange {
                object: format!("Namespace {namespace}"),
                change: Change::Create,
                diff: String::new(),
            });
        }
        let previous_keys = placed_keys(&catalog, &plan.previous.objects, namespace);
        let defined: BTreeSet<(String, String)> = plan
            .crds
            .iter()
            .chain(&plan.objects)
            .filter_map(crd_defines)
            .map(|(group_kind, _)| group_kind)
            .collect();
        // CRDs from `crds/` are created when absent and never changed, as helm does: not
        // part of the release.
        for crd in &plan.crds {
            let Some(placed) = objects::place(&catalog, crd, namespace) else {
                return Err(Halt::Failed(objects::unserved_reason(&catalog, crd)));
            };
            if objects::exists(&self.client, &placed).await? {
                changes.push(ObjectChange {
                    object: placed.describe(),
                    change: Change::Unchanged,
                    diff: String::new(),
                });
                continue;
            }
            let after = objects::dry_run_apply(&self.client, &placed, None).await?;
            changes.push(object_diff(placed.describe(), None, Some(after)));
        }
        let mut keys = BTreeSet::new();
        for object in &plan.objects {
            let Some(placed) = objects::place(&catalog, object, namespace) else {
                let group_kind = (object.group().to_owned(), object.kind.clone());
                if !defined.contains(&group_kind) {
                    return Err(Halt::Failed(objects::unserved_reason(&catalog, object)));
                }
                // Its kind comes with a CRD of this same release: the server cannot dry-run
                // it before that exists, so it is shown as the chart renders it.
                keys.insert(object.key().in_namespace(namespace));
                changes.push(as_rendered(object, describe(object, namespace)));
                continue;
            };
            keys.insert(placed.key());
            if !previous_keys.contains(&placed.key()) {
                objects::check_ownership(&self.client, &placed, release, namespace).await?;
            }
            changes.push(
                self.object_change(&placed, (release, namespace), namespace_exists)
                    .await?,
            );
        }
        let mut stale: Vec<ManifestObject> = plan
            .previous
            .objects
            .iter()
            .filter(|o| !o.keeps_on_delete())
            .cloned()
            .collect();
        manifest::uninstall_order(&mut stale);
        let mut seen = BTreeSet::new();
        for object in &stale {
            if let Some(placed) = objects::place_for_delete(&catalog, object, namespace)
                && !keys.contains(&placed.key())
                && seen.insert(placed.key())
                && let Some(change) = deletion(&self.client, &placed).await?
            {
                changes.push(change);
            }
        }
        Ok(changes)
    }

    /// One object: the live one against the server's dry run of the apply.
    async fn object_change(
        &self,
        placed: &Placed,
        owner: (&str, &str),
        namespace_exists: bool,
    ) -> Result<ObjectChange, Halt> {
        let described = placed.describe();
        if placed.namespace.is_some() && !namespace_exists {
            // Nothing can be dry-run in a namespace that is not there yet.
            let body = objects::apply_body(placed, Some(owner));
            return Ok(object_diff(described, None, Some(body)));
        }
        let live = objects::live(&self.client, placed).await?;
        let after = objects::dry_run_apply(&self.client, placed, Some(owner)).await?;
        Ok(object_diff(described, live, Some(after)))
    }

    async fn preview_uninstall(
        &self,
        desired: &DesiredRelease,
        history: &History,
        revision: Option<u32>,
    ) -> Result<ClusterPreview, ClusterError> {
        let namespace = desired.namespace.as_str();
        let base = ClusterPreview {
            outcome: PreviewOutcome::Previewed,
            reason: None,
            revision,
            ..ClusterPreview::failed(&desired.cluster, String::new())
        };
        let Some(newest) = history.newest().filter(|_| revision.is_some()) else {
            return Ok(ClusterPreview {
                reason: Some("not installed; nothing to uninstall".into()),
                ..base
            });
        };
        let (release, prior) = match (newest.decode(), previous(history, namespace)) {
            (Ok(release), Ok(prior)) => (release, prior),
            (Err(error), _) => {
                let reason = super::unreadable(newest, &error);
                return Ok(ClusterPreview::failed(&desired.cluster, reason));
            }
            (_, Err(reason)) => return Ok(ClusterPreview::failed(&desired.cluster, reason)),
        };
        let catalog = self.refresh_catalog().await?;
        let Previous { objects: known, .. } = prior;
        let mut gone: Vec<ManifestObject> =
            known.into_iter().filter(|o| !o.keeps_on_delete()).collect();
        manifest::uninstall_order(&mut gone);
        let mut changes = Vec::new();
        let mut seen = BTreeSet::new();
        for object in &gone {
            let Some(placed) = objects::place_for_delete(&catalog, object, namespace) else {
                continue;
            };
            if !seen.insert(placed.key()) {
                continue;
            }
            match deletion(&self.client, &placed).await {
                Ok(Some(change)) => changes.push(change),
                Ok(None) => {}
                Err(Halt::Failed(reason)) => {
                    return Ok(ClusterPreview::failed(&desired.cluster, reason));
                }
                Err(Halt::Error(error)) => return Err(error),
            }
        }
        Ok(ClusterPreview {
            objects: changes,
            hooks: hook_names(
                &release.hooks,
                &[HookEvent::PreDelete, HookEvent::PostDelete],
            ),
            ..base
        })
    }
}

/// The keys of `objects` as the cluster would place them.
fn placed_keys(
    catalog: &ApiCatalog,
    objects: &[ManifestObject],
    namespace: &str,
) -> BTreeSet<ObjectKey> {
    objects
        .iter()
        .filter_map(|o| objects::place_for_delete(catalog, o, namespace))
        .map(|p| p.key())
        .collect()
}

/// The deletion of a live object; `None` if it is already gone.
async fn deletion(client: &kube::Client, placed: &Placed) -> Result<Option<ObjectChange>, Halt> {
    Ok(objects::live(client, placed)
        .await?
        .map(|live| object_diff(placed.describe(), Some(live), None)))
}

fn describe(object: &ManifestObject, namespace: &str) -> String {
    let namespace = object.namespace.as_deref().unwrap_or(namespace);
    format!("{} {namespace}/{}", object.kind, object.name)
}

fn as_rendered(object: &ManifestObject, described: String) -> ObjectChange {
    object_diff(described, None, Some(object.body.clone()))
}

/// The change from `before` to `after` (`None`: absent), compared without what the server
/// keeps for itself.
fn object_diff(object: String, before: Option<Value>, after: Option<Value>) -> ObjectChange {
    let before = before.map(comparable);
    let after = after.map(comparable);
    let change = match (&before, &after) {
        (None, _) => Change::Create,
        (Some(_), None) => Change::Delete,
        (Some(b), Some(a)) if a == b => Change::Unchanged,
        _ => Change::Update,
    };
    let text = |v: &Option<Value>| {
        v.as_ref()
            .map(|v| serde_yaml_ng::to_string(v).unwrap_or_default())
            .unwrap_or_default()
    };
    let diff = if change == Change::Unchanged {
        String::new()
    } else {
        unified_diff(&text(&before), &text(&after), "live", "after")
    };
    ObjectChange {
        object,
        change,
        diff,
    }
}

/// The object without `status` and the server's own metadata.
fn comparable(mut object: Value) -> Value {
    if let Some(root) = object.as_object_mut() {
        root.remove("status");
        if let Some(metadata) = root.get_mut("metadata").and_then(Value::as_object_mut) {
            for field in SERVER_METADATA {
                metadata.remove(*field);
            }
            for map in ["annotations", "labels"] {
                if metadata
                    .get(map)
                    .is_some_and(|m| m.is_null() || m.as_object().is_some_and(|m| m.is_empty()))
                {
                    metadata.remove(map);
                }
            }
        }
    }
    object
}

/// The hooks the plan's revision would run: its verb's pre and post hooks, by weight.
fn hooks_of(plan: &Plan) -> Vec<String> {
    let (pre, post) = plan.verb.hook_events();
    hook_names(&plan.release.hooks, &[pre, post])
}

fn hook_names(hooks: &[Hook], events: &[HookEvent]) -> Vec<String> {
    let mut names = Vec::new();
    for event in events {
        let mut these: Vec<&Hook> = hooks.iter().filter(|h| h.events.contains(event)).collect();
        these.sort_by(|a, b| a.weight.cmp(&b.weight).then_with(|| a.name.cmp(&b.name)));
        names.extend(
            these
                .into_iter()
                .map(|h| format!("{} {} {}", event.as_str(), h.kind, h.name)),
        );
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_servers_own_fields_are_no_change() {
        let live = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "12",
                         "uid": "u", "managedFields": [{"manager": "optikon"}]},
            "data": {"greeting": "hello"},
        });
        let after = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "13",
                         "annotations": {}},
            "data": {"greeting": "hello"},
        });
        let same = object_diff("ConfigMap shop/web".into(), Some(live.clone()), Some(after));
        assert_eq!(same.change, Change::Unchanged);
        assert_eq!(same.diff, "");

        let changed = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "web", "namespace": "shop"},
            "data": {"greeting": "hej"},
        });
        let update = object_diff(
            "ConfigMap shop/web".into(),
            Some(live.clone()),
            Some(changed),
        );
        assert_eq!(update.change, Change::Update);
        assert!(
            update
                .diff
                .contains("-  greeting: hello\n+  greeting: hej\n"),
            "{}",
            update.diff
        );

        let gone = object_diff("ConfigMap shop/web".into(), Some(live), None);
        assert_eq!(gone.change, Change::Delete);
        assert!(gone.diff.contains("-kind: ConfigMap"), "{}", gone.diff);
    }

    #[test]
    fn hooks_are_listed_by_event_then_weight() {
        let hook = |name: &str, event: HookEvent, weight: i64| Hook {
            name: name.into(),
            kind: "Job".into(),
            events: vec![event],
            weight,
            ..Hook::default()
        };
        let hooks = [
            hook("late", HookEvent::PreUpgrade, 5),
            hook("after", HookEvent::PostUpgrade, 0),
            hook("early", HookEvent::PreUpgrade, -1),
            hook("other", HookEvent::PreInstall, 0),
        ];
        assert_eq!(
            hook_names(&hooks, &[HookEvent::PreUpgrade, HookEvent::PostUpgrade]),
            [
                "pre-upgrade Job early",
                "pre-upgrade Job late",
                "post-upgrade Job after"
            ]
        );
    }
}
