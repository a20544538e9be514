//! Previews (`--dry-run`): what a release request would change on each cluster it matches,
//! without changing anything.
//!
//! A client asks the router on [`crate::subject::PREVIEW_REQUEST`] with an ordinary
//! [`ReleaseRequest`](crate::message::ReleaseRequest). The router resolves the chart, the
//! target clusters and each cluster's values exactly as it would for the request, and asks
//! each cluster's executor on `optikon.preview.ask.<cluster>` with the
//! [`DesiredRelease`](crate::message::DesiredRelease) it would have sent. The executor
//! renders it, asks its API server for a server-side dry run of every object, and answers
//! with a [`ClusterPreview`]: per object, whether it would be created, changed, deleted or
//! left as it is, and a diff against the live object. Nothing is stored, nothing is applied:
//! a preview is a question to the sites that are there now, so a site that is offline says
//! so rather than being queued.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::{Action, ApiVersion, ChartPin, Timestamp};

/// The router's answer to a preview request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleasePreview {
    pub api_version: ApiVersion,
    pub action: Action,
    pub release: String,
    pub namespace: String,
    pub selector: String,
    /// The chart an install or upgrade would use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chart: Option<ChartPin>,
    /// Every matching cluster, by name.
    pub clusters: Vec<ClusterPreview>,
    /// Set when something was left out to keep the answer within the server's message
    /// limit, saying what.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl ReleasePreview {
    /// Leaves out of every cluster that has the same changes as an earlier one its objects
    /// and hooks, naming that cluster in `same_as`: a fleet of identical sites answers with
    /// one set of diffs, not one per site.
    pub fn fold_duplicates(&mut self) {
        let mut firsts: Vec<usize> = Vec::new();
        for i in 0..self.clusters.len() {
            let this = &self.clusters[i];
            if this.outcome == PreviewOutcome::Offline {
                continue;
            }
            match firsts.iter().find(|&&f| self.clusters[f].same_as(this)) {
                Some(&first) => {
                    let name = self.clusters[first].cluster.clone();
                    let this = &mut self.clusters[i];
                    this.same_as = Some(name);
                    this.objects.clear();
                    this.hooks.clear();
                }
                None => firsts.push(i),
            }
        }
    }

    /// The cluster whose objects and hooks stand for `cluster`'s (itself, or the one it is
    /// the same as).
    pub fn changes_of<'a>(&'a self, cluster: &'a ClusterPreview) -> &'a ClusterPreview {
        cluster
            .same_as
            .as_ref()
            .and_then(|name| self.clusters.iter().find(|c| &c.cluster == name))
            .unwrap_or(cluster)
    }

    /// Drops every diff, keeping what changes: for an answer too large to send.
    pub fn drop_diffs(&mut self, why: String) {
        for cluster in &mut self.clusters {
            for object in &mut cluster.objects {
                object.diff.clear();
            }
        }
        self.note = Some(why);
    }
}

/// What the request would do on one cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPreview {
    pub cluster: String,
    pub outcome: PreviewOutcome,
    /// Why it would fail, or since when the cluster is unreachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The release's revision on the cluster now (absent: not installed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<u32>,
    /// The revision the change would record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_revision: Option<u32>,
    /// Every object the change touches or keeps, in the order it would apply them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<ObjectChange>,
    /// The hooks that would run, in order: `pre-upgrade Job shop/web-migrate`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hooks: Vec<String>,
    /// The last heartbeat of an offline cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<Timestamp>,
    /// The same changes as this cluster of the same answer: `objects` and `hooks` are left
    /// out here (see [`ReleasePreview::fold_duplicates`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub same_as: Option<String>,
}

/// How a cluster answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum PreviewOutcome {
    /// The change was dry-run: `objects` says what it would do.
    Previewed,
    /// The change would fail there; `reason` says why (a chart that does not render, an
    /// object another release owns, a label its values need and the cluster lacks).
    Failed,
    /// The cluster did not answer: its link or its executor is down.
    Offline,
}

impl fmt::Display for PreviewOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PreviewOutcome::Previewed => "previewed",
            PreviewOutcome::Failed => "failed",
            PreviewOutcome::Offline => "offline",
        })
    }
}

/// One object and what the change would do to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectChange {
    /// `Deployment shop/web`, `ClusterRole view-web`.
    pub object: String,
    pub change: Change,
    /// A unified diff of the object as it is (`-`) against the object as the API server
    /// would store it (`+`), both as YAML without the fields the server keeps for itself
    /// (status, managed fields, resource version, uid, timestamps). Empty when unchanged.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub diff: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    Create,
    Update,
    Delete,
    Unchanged,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Change::Create => "create",
            Change::Update => "update",
            Change::Delete => "delete",
            Change::Unchanged => "unchanged",
        })
    }
}

impl ClusterPreview {
    /// A cluster that did not answer.
    pub fn offline(cluster: &str, last_heartbeat: Option<Timestamp>) -> Self {
        let reason = match &last_heartbeat {
            Some(at) => format!("unreachable since {at}; nothing can be previewed there"),
            None => "never heard from; nothing can be previewed there".to_owned(),
        };
        ClusterPreview {
            outcome: PreviewOutcome::Offline,
            reason: Some(reason),
            last_heartbeat,
            ..ClusterPreview::failed(cluster, String::new())
        }
    }

    /// A cluster where the change would fail.
    pub fn failed(cluster: &str, reason: String) -> Self {
        ClusterPreview {
            cluster: cluster.to_owned(),
            outcome: PreviewOutcome::Failed,
            reason: Some(reason),
            revision: None,
            next_revision: None,
            objects: Vec::new(),
            hooks: Vec::new(),
            last_heartbeat: None,
            same_as: None,
        }
    }

    /// The objects the change would create, update or delete.
    pub fn changed(&self) -> impl Iterator<Item = &ObjectChange> {
        self.objects
            .iter()
            .filter(|o| o.change != Change::Unchanged)
    }

    /// The same preview apart from the cluster's name: clients show such clusters together.
    pub fn same_as(&self, other: &ClusterPreview) -> bool {
        ClusterPreview {
            cluster: other.cluster.clone(),
            last_heartbeat: other.last_heartbeat,
            reason: other.reason.clone(),
            ..self.clone()
        } == *other
            && (self.outcome == PreviewOutcome::Offline || self.reason == other.reason)
    }
}

/// A unified diff of two texts, three lines of context, with `a`/`b` headers naming them.
/// Empty when the texts are equal.
pub fn unified_diff(before: &str, after: &str, before_name: &str, after_name: &str) -> String {
    if before == after {
        return String::new();
    }
    similar::TextDiff::from_lines(before, after)
        .unified_diff()
        .context_radius(3)
        .header(before_name, after_name)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_shows_the_changed_line_with_context() {
        let before = "a: 1\nb: 2\nc: 3\n";
        let after = "a: 1\nb: 5\nc: 3\n";
        let diff = unified_diff(before, after, "live", "after");
        assert!(diff.starts_with("--- live\n+++ after\n"), "{diff}");
        assert!(diff.contains("-b: 2\n+b: 5\n"), "{diff}");
        assert!(diff.contains(" a: 1\n"), "{diff}");
        assert_eq!(unified_diff(before, before, "live", "after"), "");
    }

    #[test]
    fn identical_clusters_carry_their_changes_once() {
        let change = ObjectChange {
            object: "ConfigMap shop/web".into(),
            change: Change::Update,
            diff: "-x\n+y\n".into(),
        };
        let changed = |name: &str, diff: &str| ClusterPreview {
            outcome: PreviewOutcome::Previewed,
            reason: None,
            revision: Some(1),
            next_revision: Some(2),
            objects: vec![ObjectChange {
                diff: diff.into(),
                ..change.clone()
            }],
            ..ClusterPreview::failed(name, String::new())
        };
        let mut preview = ReleasePreview {
            api_version: ApiVersion,
            action: Action::Upgrade,
            release: "web".into(),
            namespace: "shop".into(),
            selector: String::new(),
            chart: None,
            clusters: vec![
                changed("a", "-x\n+y\n"),
                changed("b", "-x\n+z\n"),
                changed("c", "-x\n+y\n"),
                ClusterPreview::offline("d", None),
                ClusterPreview::offline("e", None),
            ],
            note: None,
        };
        preview.fold_duplicates();
        let same: Vec<Option<&str>> = preview
            .clusters
            .iter()
            .map(|c| c.same_as.as_deref())
            .collect();
        assert_eq!(same, [None, None, Some("a"), None, None]);
        assert!(preview.clusters[2].objects.is_empty());
        assert_eq!(
            preview.changes_of(&preview.clusters[2]).objects[0].diff,
            "-x\n+y\n"
        );
        assert_eq!(preview.changes_of(&preview.clusters[1]).cluster, "b");
        preview.drop_diffs("too large".into());
        assert!(preview.clusters[0].objects[0].diff.is_empty());
        assert_eq!(preview.clusters[0].objects[0].change, Change::Update);
        assert_eq!(preview.note.as_deref(), Some("too large"));
    }

    #[test]
    fn clusters_with_the_same_changes_are_the_same_preview() {
        let change = ObjectChange {
            object: "ConfigMap shop/web".into(),
            change: Change::Update,
            diff: "-x\n+y\n".into(),
        };
        let berlin = ClusterPreview {
            outcome: PreviewOutcome::Previewed,
            reason: None,
            revision: Some(1),
            next_revision: Some(2),
            objects: vec![change.clone()],
            ..ClusterPreview::failed("berlin-1", String::new())
        };
        let lisbon = ClusterPreview {
            cluster: "lisbon-1".into(),
            ..berlin.clone()
        };
        assert!(berlin.same_as(&lisbon));
        let other = ClusterPreview {
            objects: vec![ObjectChange {
                diff: "-x\n+z\n".into(),
                ..change
            }],
            ..lisbon.clone()
        };
        assert!(!berlin.same_as(&other));
        assert_eq!(berlin.changed().count(), 1);
        // Offline clusters go together whenever they were last heard from.
        let a = ClusterPreview::offline("a", None);
        let b = ClusterPreview::offline("b", Some(Timestamp::now()));
        assert!(a.same_as(&b));
        assert!(!a.same_as(&ClusterPreview::failed("c", "no".into())));
    }
}
