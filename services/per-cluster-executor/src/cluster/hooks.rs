//! Helm hooks: runs a release's hooks for one event the way `helm` does, and notes each run in
//! the release record.
//!
//! Follows Helm 3's `execHook`: the hooks of the event in the order Helm runs them, each one
//! deleted first if its policy says `before-hook-creation` (the default when it names none),
//! created as rendered, and, for Jobs and Pods, watched until it finished. The first failure
//! stops the event; `hook-failed` and `hook-succeeded` say which hook objects are deleted
//! afterwards. Errors read as Helm's own, so `helm history` shows the same descriptions.

use std::time::Duration;

use futures::StreamExt;
use kube::api::{DynamicObject, ListParams, PropagationPolicy, WatchEvent, WatchParams};
use optikon_core::manifest::{self, HookEvent, ManifestObject};
use optikon_core::release_record::{Hook, HookExecution, HookPhase};
use serde_json::Value;
use time::OffsetDateTime;

use super::catalog::ApiCatalog;
use super::objects::{self, Placed};
use super::{ClusterError, Halt};

/// Delete the hook's object before creating it again (Helm's default).
pub(crate) const BEFORE_HOOK_CREATION: &str = "before-hook-creation";
/// Delete the hook's object once every hook of the event has succeeded.
pub(crate) const HOOK_SUCCEEDED: &str = "hook-succeeded";
/// Delete the hook's object when it failed.
pub(crate) const HOOK_FAILED: &str = "hook-failed";

/// What Kubernetes' wait helpers (and so Helm) say when a hook does not finish in time.
const TIMED_OUT: &str = "timed out waiting for the condition";
/// The API server ends a watch after this long; it is then resumed.
const WATCH_SECONDS: u32 = 290;
/// Pause before listing again after a watch broke off.
const RELIST_PAUSE: Duration = Duration::from_millis(250);

/// Indexes into `hooks` of the hooks that run on `event`, in Helm's order: by weight, then by
/// name, otherwise as recorded (the record lists hooks in Helm's install order of kinds, then
/// by template path). A hook naming the event twice runs twice, as in Helm.
pub(crate) fn run_order(hooks: &[Hook], event: HookEvent) -> Vec<usize> {
    let mut order: Vec<usize> = hooks
        .iter()
        .enumerate()
        .flat_map(|(i, hook)| hook.events.iter().filter(|e| **e == event).map(move |_| i))
        .collect();
    // Stable, like Helm's `sort.Stable(hookByWeight(…))`.
    order.sort_by(|a, b| {
        let (a, b) = (&hooks[*a], &hooks[*b]);
        (a.weight, &a.name).cmp(&(b.weight, &b.name))
    });
    order
}

/// A hook without a delete policy gets `before-hook-creation`; Helm writes that into the
/// record of every hook it runs.
pub(crate) fn set_default_policy(hook: &mut Hook) {
    if hook.delete_policies.is_empty() {
        hook.delete_policies = vec![BEFORE_HOOK_CREATION.to_owned()];
    }
}

/// Whether the hook's object goes when `policy` applies. CRDs never go (deleting one would
/// take every object of its kind with it).
pub(crate) fn deletes_on(hook: &Hook, policy: &str) -> bool {
    hook.kind != "CustomResourceDefinition" && hook.delete_policies.iter().any(|p| p == policy)
}

/// How far a hook's object has got, judged from its live JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Progress {
    Running,
    Succeeded,
    /// Helm's words for the failure.
    Failed(String),
}

/// Whether Helm waits for objects of `kind` (Jobs to complete, Pods to end); anything else is
/// done once created.
pub(crate) fn waits_for(kind: &str) -> bool {
    matches!(kind, "Job" | "Pod")
}

/// Progress of the hook object `name` of `kind`, as Helm's `waitForJob` and
/// `waitForPodSuccess` decide it.
pub(crate) fn progress(kind: &str, name: &str, live: &Value) -> Progress {
    match kind {
        "Job" => {
            let conditions = live
                .pointer("/status/conditions")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let field =
                |c: &Value, key: &str| c.get(key).and_then(Value::as_str).map(str::to_owned);
            for condition in conditions {
                let is_true = field(condition, "status").as_deref() == Some("True");
                match field(condition, "type").as_deref() {
                    Some("Complete") if is_true => return Progress::Succeeded,
                    Some("Failed") if is_true => {
                        let reason = field(condition, "reason").unwrap_or_default();
                        return Progress::Failed(format!("job {name} failed: {reason}"));
                    }
                    _ => {}
                }
            }
            Progress::Running
        }
        "Pod" => match live.pointer("/status/phase").and_then(Value::as_str) {
            Some("Succeeded") => Progress::Succeeded,
            Some("Failed") => Progress::Failed(format!("pod {name} failed")),
            _ => Progress::Running,
        },
        _ => Progress::Succeeded,
    }
}

/// One error as Helm's `multierror` prints it (Helm waits for a list of objects, here a list
/// of one).
pub(crate) fn one_error(error: &str) -> String {
    format!("1 error occurred:\n\t* {error}\n\n")
}

/// What Helm says when the hooks of `event` failed with `error`; rollback and delete hooks
/// pass the error on as it is.
pub(crate) fn failure(event: HookEvent, error: &str) -> String {
    match event {
        HookEvent::PreInstall => format!("failed pre-install: {error}"),
        HookEvent::PostInstall => format!("failed post-install: {error}"),
        HookEvent::PreUpgrade => format!("pre-upgrade hooks failed: {error}"),
        HookEvent::PostUpgrade => format!("post-upgrade hooks failed: {error}"),
        _ => error.to_owned(),
    }
}

/// Runs hooks against one cluster for one release namespace.
pub(crate) struct HookRunner<'a> {
    pub client: &'a kube::Client,
    pub catalog: &'a ApiCatalog,
    pub namespace: &'a str,
    /// For each hook to finish, and for each deleted hook object to go (Helm's `--timeout`).
    pub timeout: Duration,
}

impl HookRunner<'_> {
    /// Runs the hooks of `event`, noting each run in `hooks`. `Halt::Failed` carries Helm's
    /// error for the event (wrap it with [`failure`]).
    pub async fn run(&self, hooks: &mut [Hook], event: HookEvent) -> Result<(), Halt> {
        let order = run_order(hooks, event);
        for (done, &i) in order.iter().enumerate() {
            set_default_policy(&mut hooks[i]);
            self.delete_by_policy(&hooks[i], BEFORE_HOOK_CREATION)
                .await?;
            let placed = self.place(&hooks[i]).map_err(|reason| {
                Halt::Failed(format!(
                    "unable to build kubernetes object for {event} hook {}: {reason}",
                    hooks[i].path
                ))
            })?;
            hooks[i].last_run = HookExecution {
                started_at: Some(OffsetDateTime::now_utc()),
                completed_at: None,
                phase: HookPhase::Unknown,
            };
            tracing::info!(event = %event, hook = %placed.describe(), weight = hooks[i].weight, "running hook");

            let created = match objects::create(self.client, &placed).await {
                Ok(created) => created,
                Err(error) if objects::is_transient(&error) && !already_exists(&error) => {
                    return Err(Halt::Error(ClusterError::Api {
                        doing: format!("create hook {}", placed.describe()),
                        source: error,
                    }));
                }
                Err(error) => {
                    let hook = &mut hooks[i];
                    hook.last_run.completed_at = Some(OffsetDateTime::now_utc());
                    hook.last_run.phase = HookPhase::Failed;
                    return Err(Halt::Failed(format!(
                        "warning: Hook {event} {} failed: {}",
                        hook.path,
                        one_error(&objects::rejection(&error))
                    )));
                }
            };
            let name = created.metadata.name.clone().unwrap_or_default();
            let result = if waits_for(&placed.resource.kind) {
                self.watch_until_done(&placed, &name).await?
            } else {
                Ok(())
            };
            hooks[i].last_run.completed_at = Some(OffsetDateTime::now_utc());
            if let Err(error) = result {
                hooks[i].last_run.phase = HookPhase::Failed;
                tracing::warn!(event = %event, hook = %placed.describe(), %error, "hook failed");
                // Helm only logs a failure to delete the failed hook: the hook's own failure
                // is what the release reports.
                if let Err(halt) = self.delete_by_policy(&hooks[i], HOOK_FAILED).await {
                    tracing::warn!(hook = %placed.describe(), error = ?halt, "could not delete the failed hook");
                }
                for &earlier in &order[..done] {
                    self.delete_by_policy(&hooks[earlier], HOOK_SUCCEEDED)
                        .await?;
                }
                return Err(Halt::Failed(one_error(&error)));
            }
            hooks[i].last_run.phase = HookPhase::Succeeded;
            tracing::info!(event = %event, hook = %placed.describe(), "hook succeeded");
        }
        for &i in order.iter().rev() {
            self.delete_by_policy(&hooks[i], HOOK_SUCCEEDED).await?;
        }
        Ok(())
    }

    /// The hook's object with the resource that serves it.
    fn place(&self, hook: &Hook) -> Result<Placed, String> {
        let object = hook_object(hook)?;
        objects::place(self.catalog, &object, self.namespace)
            .ok_or_else(|| objects::unserved_reason(self.catalog, &object))
    }

    /// Deletes the hook's object if `policy` says so, and waits until it is gone.
    async fn delete_by_policy(&self, hook: &Hook, policy: &str) -> Result<(), Halt> {
        if !deletes_on(hook, policy) || hook.name.is_empty() {
            return Ok(());
        }
        let object = hook_object(hook).map_err(|reason| {
            Halt::Failed(format!(
                "unable to build kubernetes object for deleting hook {}: {reason}",
                hook.path
            ))
        })?;
        let Some(placed) = objects::place_for_delete(self.catalog, &object, self.namespace) else {
            return Err(Halt::Failed(format!(
                "unable to build kubernetes object for deleting hook {}: {}",
                hook.path,
                objects::unserved_reason(self.catalog, &object)
            )));
        };
        // Background, as Helm deletes: a Job's pods follow on their own.
        objects::delete(self.client, &placed, PropagationPolicy::Background).await?;
        objects::wait_gone(self.client, std::slice::from_ref(&placed), self.timeout).await?;
        tracing::info!(hook = %placed.describe(), policy, "hook object gone, as its delete policy says");
        Ok(())
    }

    /// Watches the object until [`progress`] says it finished, or the timeout passes. A
    /// deleted object counts as finished, as in Helm. `Ok(Err(_))` is Helm's error for it.
    async fn watch_until_done(
        &self,
        placed: &Placed,
        name: &str,
    ) -> Result<Result<(), String>, Halt> {
        let api = placed.api(self.client);
        let kind = placed.resource.kind.as_str();
        let fields = format!("metadata.name={name}");
        let read =
            |error: kube::Error| objects::halt(error, || format!("watch {}", placed.describe()));
        let judge = |object: &DynamicObject| -> Option<Result<(), String>> {
            match progress(
                kind,
                name,
                &serde_json::to_value(object).unwrap_or_default(),
            ) {
                Progress::Running => None,
                Progress::Succeeded => Some(Ok(())),
                Progress::Failed(error) => Some(Err(error)),
            }
        };
        let watched = async {
            loop {
                // List, then watch from the list's version: what Helm's informer does.
                let list = api
                    .list(&ListParams::default().fields(&fields))
                    .await
                    .map_err(read)?;
                if let Some(done) = list.items.first().and_then(judge) {
                    return Ok(done);
                }
                let mut version = list.metadata.resource_version.unwrap_or_default();
                'watch: loop {
                    let params = WatchParams::default()
                        .fields(&fields)
                        .timeout(WATCH_SECONDS);
                    let stream = api.watch(&params, &version).await.map_err(read)?;
                    let mut stream = std::pin::pin!(stream);
                    while let Some(event) = stream.next().await {
                        match event {
                            Ok(WatchEvent::Added(object) | WatchEvent::Modified(object)) => {
                                if let Some(done) = judge(&object) {
                                    return Ok(done);
                                }
                                if let Some(seen) = object.metadata.resource_version {
                                    version = seen;
                                }
                            }
                            Ok(WatchEvent::Deleted(_)) => return Ok(Ok(())),
                            Ok(WatchEvent::Bookmark(bookmark)) => {
                                version = bookmark.metadata.resource_version;
                            }
                            // Too old a version, or the connection broke: list again.
                            Ok(WatchEvent::Error(status)) => {
                                tracing::debug!(hook = %placed.describe(), code = status.code, message = %status.message, "hook watch ended; listing again");
                                break 'watch;
                            }
                            Err(error) => {
                                tracing::debug!(hook = %placed.describe(), %error, "hook watch broke off; listing again");
                                break 'watch;
                            }
                        }
                    }
                    // The server closed the watch at its timeout: carry on from `version`.
                }
                tokio::time::sleep(RELIST_PAUSE).await;
            }
        };
        match tokio::time::timeout(self.timeout, watched).await {
            Ok(result) => result,
            Err(_) => Ok(Err(TIMED_OUT.to_owned())),
        }
    }
}

/// The object a hook's manifest describes, with the hook's template path as its source.
fn hook_object(hook: &Hook) -> Result<ManifestObject, String> {
    let rendered = manifest::parse(&hook.manifest).map_err(|e| e.to_string())?;
    let object = rendered
        .hooks
        .into_iter()
        .map(|h| h.object)
        .chain(rendered.objects)
        .next()
        .ok_or("the hook's manifest holds no object")?;
    Ok(ManifestObject {
        source: Some(hook.path.clone()).filter(|p| !p.is_empty()),
        ..object
    })
}

fn already_exists(error: &kube::Error) -> bool {
    matches!(error, kube::Error::Api(status) if status.reason == "AlreadyExists")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn hook(name: &str, kind: &str, weight: i64, events: &[HookEvent]) -> Hook {
        Hook {
            name: name.into(),
            kind: kind.into(),
            path: format!("web/templates/{name}.yaml"),
            manifest: format!(
                "apiVersion: v1\nkind: {kind}\nmetadata:\n  name: {name}\n  annotations:\n    helm.sh/hook: pre-install\n"
            ),
            events: events.to_vec(),
            weight,
            ..Hook::default()
        }
    }

    fn names(hooks: &[Hook], order: &[usize]) -> Vec<String> {
        order.iter().map(|i| hooks[*i].name.clone()).collect()
    }

    #[test]
    fn hooks_run_by_weight_then_name_then_as_recorded() {
        use HookEvent::*;
        // Recorded in Helm's kind order: ConfigMaps before Jobs.
        let hooks = vec![
            hook("settings", "ConfigMap", 5, &[PreInstall]),
            hook("b-same", "ConfigMap", 0, &[PreInstall, PreUpgrade]),
            hook("later", "ConfigMap", -1, &[PostInstall]),
            hook("migrate", "Job", -5, &[PreInstall]),
            hook("b-same", "Job", 0, &[PreInstall]),
            hook("a-first", "Job", 0, &[PreInstall]),
            hook("check", "Pod", 0, &[Test]),
        ];
        let order = run_order(&hooks, PreInstall);
        assert_eq!(
            names(&hooks, &order),
            ["migrate", "a-first", "b-same", "b-same", "settings"]
        );
        // Same weight and name: the recorded (kind) order decides, ConfigMap first.
        assert_eq!(&order[2..4], &[1, 4]);
        assert_eq!(names(&hooks, &run_order(&hooks, PreUpgrade)), ["b-same"]);
        assert_eq!(names(&hooks, &run_order(&hooks, PostInstall)), ["later"]);
        assert!(run_order(&hooks, PreDelete).is_empty());
        // Test hooks are for `helm test`: they run on no release event.
        for event in [
            PreInstall,
            PostInstall,
            PreUpgrade,
            PostUpgrade,
            PreRollback,
            PostRollback,
            PreDelete,
            PostDelete,
        ] {
            assert!(!names(&hooks, &run_order(&hooks, event)).contains(&"check".to_owned()));
        }
    }

    #[test]
    fn names_compare_bytewise_like_go() {
        let hooks = vec![
            hook("b", "Job", 1, &[HookEvent::PreDelete]),
            hook("B", "Job", 1, &[HookEvent::PreDelete]),
            hook("a-2", "Job", 1, &[HookEvent::PreDelete]),
            hook("a-10", "Job", 1, &[HookEvent::PreDelete]),
        ];
        assert_eq!(
            names(&hooks, &run_order(&hooks, HookEvent::PreDelete)),
            ["B", "a-10", "a-2", "b"]
        );
    }

    #[test]
    fn a_hook_naming_its_event_twice_runs_twice() {
        let hooks = vec![hook(
            "twice",
            "Job",
            0,
            &[HookEvent::PreInstall, HookEvent::PreInstall],
        )];
        assert_eq!(run_order(&hooks, HookEvent::PreInstall), [0, 0]);
    }

    #[test]
    fn delete_policies_default_to_before_hook_creation() {
        let mut plain = hook("a", "Job", 0, &[HookEvent::PreInstall]);
        set_default_policy(&mut plain);
        assert_eq!(plain.delete_policies, [BEFORE_HOOK_CREATION]);
        assert!(deletes_on(&plain, BEFORE_HOOK_CREATION));
        assert!(!deletes_on(&plain, HOOK_SUCCEEDED));
        assert!(!deletes_on(&plain, HOOK_FAILED));

        let mut chosen = hook("b", "Job", 0, &[HookEvent::PreInstall]);
        chosen.delete_policies = vec![HOOK_SUCCEEDED.into(), HOOK_FAILED.into()];
        set_default_policy(&mut chosen);
        assert_eq!(
            chosen.delete_policies,
            [HOOK_SUCCEEDED, HOOK_FAILED],
            "a named policy replaces the default"
        );
        assert!(!deletes_on(&chosen, BEFORE_HOOK_CREATION));
        assert!(deletes_on(&chosen, HOOK_SUCCEEDED) && deletes_on(&chosen, HOOK_FAILED));

        let mut crd = hook(
            "widgets.example.com",
            "CustomResourceDefinition",
            0,
            &[HookEvent::PreInstall],
        );
        crd.delete_policies = vec![HOOK_SUCCEEDED.into()];
        assert!(!deletes_on(&crd, HOOK_SUCCEEDED), "CRDs are never deleted");
    }

    #[test]
    fn jobs_finish_when_complete_or_failed() {
        let job = |conditions: Value| json!({"status": {"conditions": conditions}});
        assert_eq!(progress("Job", "m", &json!({})), Progress::Running);
        assert_eq!(progress("Job", "m", &job(json!([]))), Progress::Running);
        // Kubernetes ≥ 1.31 says SuccessCriteriaMet / FailureTarget first; Helm waits on.
        assert_eq!(
            progress(
                "Job",
                "m",
                &job(json!([{"type": "SuccessCriteriaMet", "status": "True"}]))
            ),
            Progress::Running
        );
        assert_eq!(
            progress(
                "Job",
                "m",
                &job(
                    json!([{"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"}])
                )
            ),
            Progress::Running
        );
        assert_eq!(
            progress(
                "Job",
                "m",
                &job(json!([
                    {"type": "SuccessCriteriaMet", "status": "True"},
                    {"type": "Complete", "status": "True"}
                ]))
            ),
            Progress::Succeeded
        );
        assert_eq!(
            progress(
                "Job",
                "m",
                &job(json!([
                    {"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded"},
                    {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}
                ]))
            ),
            Progress::Failed("job m failed: BackoffLimitExceeded".into())
        );
        assert_eq!(
            progress(
                "Job",
                "m",
                &job(json!([{"type": "Complete", "status": "False"}]))
            ),
            Progress::Running
        );
    }

    #[test]
    fn pods_finish_when_they_end_other_kinds_at_once() {
        let pod = |phase: &str| json!({"status": {"phase": phase}});
        assert_eq!(progress("Pod", "p", &pod("Pending")), Progress::Running);
        // Ready is not enough for a hook Pod: it must end.
        assert_eq!(progress("Pod", "p", &pod("Running")), Progress::Running);
        assert_eq!(progress("Pod", "p", &pod("Succeeded")), Progress::Succeeded);
        assert_eq!(
            progress("Pod", "p", &pod("Failed")),
            Progress::Failed("pod p failed".into())
        );
        assert_eq!(progress("ConfigMap", "c", &json!({})), Progress::Succeeded);
        assert!(
            waits_for("Job")
                && waits_for("Pod")
                && !waits_for("ConfigMap")
                && !waits_for("Deployment")
        );
    }

    #[test]
    fn failures_read_like_helms() {
        let error = one_error("job web-migrate failed: BackoffLimitExceeded");
        assert_eq!(
            error,
            "1 error occurred:\n\t* job web-migrate failed: BackoffLimitExceeded\n\n"
        );
        assert_eq!(
            failure(HookEvent::PreInstall, &error),
            format!("failed pre-install: {error}")
        );
        assert_eq!(
            failure(HookEvent::PostInstall, "x"),
            "failed post-install: x"
        );
        assert_eq!(
            failure(HookEvent::PreUpgrade, "x"),
            "pre-upgrade hooks failed: x"
        );
        assert_eq!(
            failure(HookEvent::PostUpgrade, "x"),
            "post-upgrade hooks failed: x"
        );
        for event in [
            HookEvent::PreRollback,
            HookEvent::PostRollback,
            HookEvent::PreDelete,
            HookEvent::PostDelete,
        ] {
            assert_eq!(failure(event, "x"), "x");
        }
    }

    #[test]
    fn a_hook_manifest_gives_its_object() {
        let configmap = hook("settings", "ConfigMap", 0, &[HookEvent::PreInstall]);
        let object = hook_object(&configmap).unwrap();
        assert_eq!(
            (object.kind.as_str(), object.name.as_str()),
            ("ConfigMap", "settings")
        );
        assert_eq!(
            object.source.as_deref(),
            Some("web/templates/settings.yaml")
        );
        let empty = Hook {
            manifest: "# nothing\n".into(),
            ..configmap
        };
        assert!(hook_object(&empty).is_err());
    }
}
