//! What the cluster serves: each kind's resource name and scope, and Helm's `--api-versions`.

use std::collections::{BTreeMap, BTreeSet};

use kube::discovery::{ApiResource, Discovery, Scope};

/// A kind the API server serves at one group/version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServedKind {
    pub resource: ApiResource,
    pub namespaced: bool,
}

/// The served kinds, from discovery. Cheap to clone behind an `Arc`.
#[derive(Debug, Clone, Default)]
pub(crate) struct ApiCatalog {
    /// Keyed by (`apiVersion`, kind), e.g. (`apps/v1`, `Deployment`).
    kinds: BTreeMap<(String, String), ServedKind>,
    group_versions: BTreeSet<String>,
}

impl ApiCatalog {
    /// Asks the API server what it serves: aggregated discovery (2 requests) where the server
    /// has it, else one request per group version.
    pub async fn discover(client: &kube::Client) -> Result<Self, kube::Error> {
        let discovery = match Discovery::new(client.clone()).run_aggregated().await {
            Ok(discovery) => discovery,
            Err(error) => {
                tracing::debug!(%error, "aggregated discovery unavailable; querying each group");
                Discovery::new(client.clone()).run().await?
            }
        };
        Ok(Self::from_discovery(&discovery))
    }

    fn from_discovery(discovery: &Discovery) -> Self {
        let mut catalog = ApiCatalog::default();
        for group in discovery.groups() {
            for version in group.versions() {
                catalog
                    .group_versions
                    .insert(group_version(group.name(), version));
                for (resource, caps) in group.versioned_resources(version) {
                    catalog.insert(resource, caps.scope == Scope::Namespaced);
                }
            }
        }
        catalog
    }

    pub fn insert(&mut self, resource: ApiResource, namespaced: bool) {
        self.group_versions.insert(resource.api_version.clone());
        self.kinds.insert(
            (resource.api_version.clone(), resource.kind.clone()),
            ServedKind {
                resource,
                namespaced,
            },
        );
    }

    pub fn resolve(&self, api_version: &str, kind: &str) -> Option<&ServedKind> {
        self.kinds.get(&(api_version.to_owned(), kind.to_owned()))
    }

    /// The `apiVersion`s at which the cluster serves `kind` of `group`, to suggest one when a
    /// chart asks for a version the cluster does not have.
    pub fn versions_of(&self, group: &str, kind: &str) -> Vec<&str> {
        self.kinds
            .values()
            .filter(|k| k.resource.group == group && k.resource.kind == kind)
            .map(|k| k.resource.api_version.as_str())
            .collect()
    }

    /// What Helm's `.Capabilities.APIVersions` holds for a real cluster: every `group/version`
    /// and every `group/version/Kind` (core group without the group: `v1`, `v1/Pod`). Sorted.
    pub fn api_versions(&self) -> Vec<String> {
        let mut out: BTreeSet<String> = self.group_versions.clone();
        for (api_version, kind) in self.kinds.keys() {
            out.insert(format!("{api_version}/{kind}"));
        }
        out.into_iter().collect()
    }
}

fn group_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_owned()
    } else {
        format!("{group}/{version}")
    }
}

#[cfg(test)]
pub(crate) fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource {
        group: group.to_owned(),
        version: version.to_owned(),
        api_version: group_version(group, version),
        kind: kind.to_owned(),
        plural: plural.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ApiCatalog {
        let mut catalog = ApiCatalog::default();
        catalog.insert(resource("", "v1", "Pod", "pods"), true);
        catalog.insert(resource("", "v1", "Namespace", "namespaces"), false);
        catalog.insert(resource("apps", "v1", "Deployment", "deployments"), true);
        catalog.insert(
            resource(
                "autoscaling",
                "v1",
                "HorizontalPodAutoscaler",
                "horizontalpodautoscalers",
            ),
            true,
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
    fn api_versions_list_group_versions_and_kinds_like_helm() {
        let versions = sample().api_versions();
        for expected in [
            "v1",
            "v1/Pod",
            "v1/Namespace",
            "apps/v1",
            "apps/v1/Deployment",
            "autoscaling/v1/HorizontalPodAutoscaler",
            "autoscaling/v2",
        ] {
            assert!(
                versions.iter().any(|v| v == expected),
                "{expected} missing from {versions:?}"
            );
        }
        let mut sorted = versions.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted, versions, "sorted and without duplicates");
    }

    #[test]
    fn resolves_kind_and_scope() {
        let catalog = sample();
        let deployment = catalog.resolve("apps/v1", "Deployment").unwrap();
        assert_eq!(deployment.resource.plural, "deployments");
        assert!(deployment.namespaced);
        assert!(!catalog.resolve("v1", "Namespace").unwrap().namespaced);
        assert!(catalog.resolve("apps/v1beta1", "Deployment").is_none());
        assert_eq!(
            catalog.versions_of("autoscaling", "HorizontalPodAutoscaler"),
            vec!["autoscaling/v1", "autoscaling/v2"]
        );
    }
}
