//! When an applied object counts as ready, judged from its live JSON.
//!
//! Close to `helm --wait --wait-for-jobs`: workloads must have rolled out and be available,
//! Jobs must have completed, CRDs must be established. Kinds with nothing to wait for
//! (Services, ConfigMaps, …) are ready at once. PersistentVolumeClaims are not waited for:
//! with `WaitForFirstConsumer` storage they bind only once a pod uses them, and edge clusters
//! often have no provisioner at all.

use serde_json::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Readiness {
    Ready,
    /// Not yet; says what is missing.
    Waiting(String),
    /// Will not become ready by waiting; says why.
    Failed(String),
}

/// Whether objects of `group`/`kind` have anything to wait for.
pub(crate) fn needs_wait(group: &str, kind: &str) -> bool {
    matches!(
        (group, kind),
        (
            "apps",
            "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet"
        ) | ("", "ReplicationController" | "Pod")
            | ("batch", "Job")
            | ("apiextensions.k8s.io", "CustomResourceDefinition")
    )
}

/// Readiness of a live object of `group`/`kind`.
pub(crate) fn readiness(group: &str, kind: &str, object: &Value) -> Readiness {
    match (group, kind) {
        ("apps", "Deployment") => deployment(object),
        ("apps", "StatefulSet") => stateful_set(object),
        ("apps", "DaemonSet") => daemon_set(object),
        ("apps", "ReplicaSet") | ("", "ReplicationController") => replica_set(object),
        ("", "Pod") => pod(object),
        ("batch", "Job") => job(object),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => crd(object),
        _ => Readiness::Ready,
    }
}

fn int(object: &Value, pointer: &str) -> Option<i64> {
    object.pointer(pointer).and_then(Value::as_i64)
}

fn text<'a>(object: &'a Value, pointer: &str) -> Option<&'a str> {
    object.pointer(pointer).and_then(Value::as_str)
}

/// The `status.conditions` entry of `type`, if any.
fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object
        .pointer("/status/conditions")?
        .as_array()?
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
}

fn condition_is(object: &Value, kind: &str, status: &str) -> bool {
    condition(object, kind)
        .and_then(|c| c.get("status"))
        .and_then(Value::as_str)
        == Some(status)
}

fn condition_message(object: &Value, kind: &str) -> String {
    let c = condition(object, kind);
    let field = |name| {
        c.and_then(|c| c.get(name))
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    match (field("reason"), field("message")) {
        ("", "") => "no reason given".to_owned(),
        (reason, "") => reason.to_owned(),
        ("", message) => message.to_owned(),
        (reason, message) => format!("{reason}: {message}"),
    }
}

/// The controller has seen the latest spec; until then the status describes an older one.
fn observed(object: &Value) -> Result<(), Readiness> {
    let generation = int(object, "/metadata/generation").unwrap_or(0);
    match int(object, "/status/observedGeneration") {
        Some(seen) if seen >= generation => Ok(()),
        _ => Err(Readiness::Waiting(format!(
            "controller has not yet seen generation {generation}"
        ))),
    }
}

fn desired_replicas(object: &Value) -> i64 {
    int(object, "/spec/replicas").unwrap_or(1)
}

fn deployment(object: &Value) -> Readiness {
    if let Err(waiting) = observed(object) {
        return waiting;
    }
    if object.pointer("/spec/paused").and_then(Value::as_bool) == Some(true) {
        return Readiness::Ready;
    }
    if condition(object, "Progressing")
        .and_then(|c| c.get("reason"))
        .and_then(Value::as_str)
        == Some("ProgressDeadlineExceeded")
    {
        return Readiness::Failed(format!(
            "rollout exceeded its progress deadline ({})",
            condition_message(object, "Progressing")
        ));
    }
    let desired = desired_replicas(object);
    let updated = int(object, "/status/updatedReplicas").unwrap_or(0);
    let total = int(object, "/status/replicas").unwrap_or(0);
    let available = int(object, "/status/availableReplicas").unwrap_or(0);
    if updated < desired {
        Readiness::Waiting(format!("{updated} of {desired} replicas updated"))
    } else if total > updated {
        Readiness::Waiting(format!(
            "{} old replicas still terminating",
            total - updated
        ))
    } else if available < desired {
        Readiness::Waiting(format!("{available} of {desired} replicas available"))
    } else {
        Readiness::Ready
    }
}

fn stateful_set(object: &Value) -> Readiness {
    if let Err(waiting) = observed(object) {
        return waiting;
    }
    let desired = desired_replicas(object);
    let ready = int(object, "/status/readyReplicas").unwrap_or(0);
    if ready < desired {
        return Readiness::Waiting(format!("{ready} of {desired} replicas ready"));
    }
    if text(object, "/spec/updateStrategy/type") == Some("OnDelete") {
        return Readiness::Ready;
    }
    let partition = int(object, "/spec/updateStrategy/rollingUpdate/partition").unwrap_or(0);
    let updated = int(object, "/status/updatedReplicas").unwrap_or(0);
    if updated < desired - partition {
        return Readiness::Waiting(format!(
            "{updated} of {} replicas updated",
            desired - partition
        ));
    }
    if partition == 0
        && let (Some(current), Some(update)) = (
            text(object, "/status/currentRevision"),
            text(object, "/status/updateRevision"),
        )
        && current != update
    {
        return Readiness::Waiting(format!("revision {update} still rolling out"));
    }
    Readiness::Ready
}

fn daemon_set(object: &Value) -> Readiness {
    if let Err(waiting) = observed(object) {
        return waiting;
    }
    let desired = int(object, "/status/desiredNumberScheduled").unwrap_or(0);
    let ready = int(object, "/status/numberReady").unwrap_or(0);
    if text(object, "/spec/updateStrategy/type") != Some("OnDelete") {
        let updated = int(object, "/status/updatedNumberScheduled").unwrap_or(0);
        if updated < desired {
            return Readiness::Waiting(format!("{updated} of {desired} pods updated"));
        }
    }
    if ready < desired {
        Readiness::Waiting(format!("{ready} of {desired} pods ready"))
    } else {
        Readiness::Ready
    }
}

fn replica_set(object: &Value) -> Readiness {
    if let Err(waiting) = observed(object) {
        return waiting;
    }
    let desired = desired_replicas(object);
    let ready = int(object, "/status/readyReplicas").unwrap_or(0);
    if ready < desired {
        Readiness::Waiting(format!("{ready} of {desired} replicas ready"))
    } else {
        Readiness::Ready
    }
}

fn pod(object: &Value) -> Readiness {
    match text(object, "/status/phase") {
        Some("Succeeded") => Readiness::Ready,
        Some("Failed") => Readiness::Failed(format!(
            "pod failed ({})",
            text(object, "/status/reason").unwrap_or("no reason given")
        )),
        _ if condition_is(object, "Ready", "True") => Readiness::Ready,
        phase => Readiness::Waiting(format!("pod is {}", phase.unwrap_or("not yet scheduled"))),
    }
}

/// Jobs are waited for until they complete (Helm's `--wait-for-jobs`): a release whose
/// migration Job has not finished is not ready. A failed Job fails the release at once.
fn job(object: &Value) -> Readiness {
    if condition_is(object, "Complete", "True")
        || condition_is(object, "SuccessCriteriaMet", "True")
    {
        return Readiness::Ready;
    }
    if condition_is(object, "Failed", "True") {
        return Readiness::Failed(format!(
            "job failed ({})",
            condition_message(object, "Failed")
        ));
    }
    if object.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true) {
        return Readiness::Ready;
    }
    let succeeded = int(object, "/status/succeeded").unwrap_or(0);
    let completions = int(object, "/spec/completions").unwrap_or(1);
    Readiness::Waiting(format!("{succeeded} of {completions} completions"))
}

fn crd(object: &Value) -> Readiness {
    if condition_is(object, "Established", "True") {
        Readiness::Ready
    } else if condition_is(object, "NamesAccepted", "False") {
        Readiness::Failed(format!(
            "names not accepted ({})",
            condition_message(object, "NamesAccepted")
        ))
    } else {
        Readiness::Waiting("not yet established".to_owned())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn deployment_with(generation: i64, status: Value) -> Value {
        json!({
            "metadata": {"name": "web", "generation": generation},
            "spec": {"replicas": 2},
            "status": status,
        })
    }

    #[test]
    fn deployment_waits_for_rollout_and_availability() {
        let unobserved = deployment_with(
            2,
            json!({"observedGeneration": 1, "updatedReplicas": 2, "replicas": 2, "availableReplicas": 2}),
        );
        assert!(
            matches!(readiness("apps", "Deployment", &unobserved), Readiness::Waiting(m) if m.contains("generation 2"))
        );

        let half = deployment_with(
            2,
            json!({"observedGeneration": 2, "updatedReplicas": 2, "replicas": 2, "availableReplicas": 1}),
        );
        assert_eq!(
            readiness("apps", "Deployment", &half),
            Readiness::Waiting("1 of 2 replicas available".into())
        );

        let old_left = deployment_with(
            2,
            json!({"observedGeneration": 2, "updatedReplicas": 2, "replicas": 3, "availableReplicas": 2}),
        );
        assert!(
            matches!(readiness("apps", "Deployment", &old_left), Readiness::Waiting(m) if m.contains("terminating"))
        );

        let done = deployment_with(
            2,
            json!({"observedGeneration": 2, "updatedReplicas": 2, "replicas": 2, "availableReplicas": 2}),
        );
        assert_eq!(readiness("apps", "Deployment", &done), Readiness::Ready);

        let no_status = json!({"metadata": {"generation": 1}, "spec": {}});
        assert!(matches!(
            readiness("apps", "Deployment", &no_status),
            Readiness::Waiting(_)
        ));
    }

    #[test]
    fn deployment_past_its_progress_deadline_fails() {
        let stuck = deployment_with(
            1,
            json!({
                "observedGeneration": 1, "updatedReplicas": 0, "replicas": 2,
                "conditions": [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet web-1 has timed out progressing."}]
            }),
        );
        assert!(
            matches!(readiness("apps", "Deployment", &stuck), Readiness::Failed(m) if m.contains("timed out progressing"))
        );
    }

    #[test]
    fn zero_replicas_is_ready() {
        let scaled_down = json!({"metadata": {"generation": 3}, "spec": {"replicas": 0}, "status": {"observedGeneration": 3}});
        assert_eq!(
            readiness("apps", "Deployment", &scaled_down),
            Readiness::Ready
        );
    }

    #[test]
    fn stateful_set_needs_ready_and_updated_replicas() {
        let sts = |status: Value| json!({"metadata": {"generation": 1}, "spec": {"replicas": 3}, "status": status});
        assert!(matches!(
            readiness("apps", "StatefulSet", &sts(json!({"observedGeneration": 1, "readyReplicas": 2}))),
            Readiness::Waiting(m) if m == "2 of 3 replicas ready"
        ));
        assert!(matches!(
            readiness(
                "apps",
                "StatefulSet",
                &sts(
                    json!({"observedGeneration": 1, "readyReplicas": 3, "updatedReplicas": 3, "currentRevision": "a", "updateRevision": "b"})
                )
            ),
            Readiness::Waiting(_)
        ));
        assert_eq!(
            readiness(
                "apps",
                "StatefulSet",
                &sts(
                    json!({"observedGeneration": 1, "readyReplicas": 3, "updatedReplicas": 3, "currentRevision": "b", "updateRevision": "b"})
                )
            ),
            Readiness::Ready
        );
    }

    #[test]
    fn daemon_set_needs_every_scheduled_pod_ready() {
        let ds = |ready: i64| json!({"metadata": {"generation": 1}, "status": {"observedGeneration": 1, "desiredNumberScheduled": 2, "updatedNumberScheduled": 2, "numberReady": ready}});
        assert!(matches!(
            readiness("apps", "DaemonSet", &ds(1)),
            Readiness::Waiting(_)
        ));
        assert_eq!(readiness("apps", "DaemonSet", &ds(2)), Readiness::Ready);
    }

    #[test]
    fn jobs_wait_for_completion_and_fail_fast() {
        let running = json!({"spec": {"completions": 1}, "status": {"active": 1}});
        assert!(matches!(
            readiness("batch", "Job", &running),
            Readiness::Waiting(_)
        ));
        let complete = json!({"status": {"conditions": [{"type": "Complete", "status": "True"}]}});
        assert_eq!(readiness("batch", "Job", &complete), Readiness::Ready);
        let failed = json!({"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}});
        assert!(
            matches!(readiness("batch", "Job", &failed), Readiness::Failed(m) if m.contains("BackoffLimitExceeded"))
        );
    }

    #[test]
    fn pods_and_crds() {
        let ready_pod = json!({"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}});
        assert_eq!(readiness("", "Pod", &ready_pod), Readiness::Ready);
        let pending = json!({"status": {"phase": "Pending"}});
        assert!(matches!(
            readiness("", "Pod", &pending),
            Readiness::Waiting(_)
        ));
        let crd = json!({"status": {"conditions": [{"type": "Established", "status": "True"}]}});
        assert_eq!(
            readiness("apiextensions.k8s.io", "CustomResourceDefinition", &crd),
            Readiness::Ready
        );
    }

    #[test]
    fn kinds_without_rollout_are_ready_at_once() {
        assert_eq!(readiness("", "Service", &json!({})), Readiness::Ready);
        assert_eq!(readiness("", "ConfigMap", &json!({})), Readiness::Ready);
        // Same kind name in another group is not mistaken for a workload.
        assert_eq!(
            readiness("example.com", "Deployment", &json!({})),
            Readiness::Ready
        );
        assert!(!needs_wait("", "Service") && !needs_wait("example.com", "Deployment"));
        assert!(needs_wait("apps", "Deployment") && needs_wait("batch", "Job"));
    }
}
