//! Values that follow from what a site is: templates over the cluster's name and labels,
//! and overlay files for the clusters a selector matches.
//!
//! A request's values may say `region: '{{ .Cluster.Labels.Region }}'`; the router renders
//! that for each cluster before the values leave the hub, so the edge (and `helm get
//! values` there) sees `region: 'eu'`. Only the cluster's own expressions are rendered:
//!
//! - `{{ .Cluster.Name }}`
//! - `{{ .Cluster.Labels.KEY }}` (a key of letters, digits, `_`)
//! - `{{ index .Cluster.Labels "KEY" }}` (any label key, e.g. `topology.kubernetes.io/zone`)
//!
//! Any other `{{ … }}` is left as it is, for a chart that runs `tpl` on its values. A label
//! the cluster does not have is an error for that cluster, naming both: a value silently
//! empty on one site is worse than a refusal.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::message::{ApiError, ErrorCode};
use crate::selector::LabelSelector;
use crate::values::{HelmValues, ValuesFile};

/// Values files for the clusters a selector matches, applied after the request's own files
/// (in the order given), as later `-f` files are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Overlay {
    pub selector: String,
    pub files: Vec<ValuesFile>,
}

/// What a cluster's values are rendered from.
pub struct ClusterFacts<'a> {
    pub name: &'a str,
    pub labels: &'a BTreeMap<String, String>,
}

/// Renders every `{{ .Cluster… }}` expression in `text` for `cluster`.
pub fn render(text: &str, cluster: &ClusterFacts<'_>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let Some(len) = rest[start..].find("}}") else {
            break;
        };
        // Go's trim markers: `{{- ` drops the whitespace before, ` -}}` the whitespace after.
        let raw = &rest[start + 2..start + len];
        let trim_before = raw.starts_with("- ");
        let trim_after = raw.ends_with(" -");
        let mut inner = raw;
        if trim_before {
            inner = &inner[2..];
        }
        if trim_after && inner.len() >= 2 {
            inner = &inner[..inner.len() - 2];
        }
        let inner = inner.trim();
        out.push_str(&rest[..start]);
        let after = &rest[start + len + 2..];
        match expression(inner, cluster)? {
            Some(value) => {
                if trim_before {
                    out.truncate(out.trim_end().len());
                }
                out.push_str(&value);
                rest = if trim_after {
                    after.trim_start()
                } else {
                    after
                };
            }
            None => {
                out.push_str(&rest[start..start + len + 2]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// The value of one expression, `None` if it is not about the cluster.
fn expression(inner: &str, cluster: &ClusterFacts<'_>) -> Result<Option<String>, String> {
    let label = |key: &str| {
        cluster.labels.get(key).cloned().ok_or_else(|| {
            format!(
                "values use label {key:?}, which cluster {} does not have",
                cluster.name
            )
        })
    };
    if inner == ".Cluster.Name" {
        return Ok(Some(cluster.name.to_owned()));
    }
    if let Some(key) = inner.strip_prefix(".Cluster.Labels.") {
        if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return label(key).map(Some);
        }
        return Err(format!(
            "{{{{ {inner} }}}}: write {{{{ index .Cluster.Labels \"{key}\" }}}} for a label key with other characters"
        ));
    }
    let words: Vec<&str> = inner.split_whitespace().collect();
    if let ["index", ".Cluster.Labels", quoted] = words.as_slice() {
        let key = quoted
            .strip_prefix('"')
            .and_then(|k| k.strip_suffix('"'))
            .ok_or_else(|| format!("{{{{ {inner} }}}}: the label key must be in double quotes"))?;
        return label(key).map(Some);
    }
    if inner.contains(".Cluster") {
        return Err(format!(
            "{{{{ {inner} }}}}: only .Cluster.Name, .Cluster.Labels.KEY and index .Cluster.Labels \"KEY\" are known"
        ));
    }
    Ok(None)
}

/// Renders strings inside a JSON value (keys too), for the request's `values`.
fn render_json(
    value: &serde_json::Value,
    cluster: &ClusterFacts<'_>,
) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    Ok(match value {
        Value::String(s) => Value::String(render(s, cluster)?),
        Value::Array(items) => Value::Array(
            items
                .iter()
                .map(|v| render_json(v, cluster))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| Ok((render(k, cluster)?, render_json(v, cluster)?)))
                .collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// One cluster's values: the request's own with the overlays its labels match appended to
/// the files, every cluster expression rendered. `Err` says what this cluster lacks.
pub fn for_cluster(
    values: &serde_json::Value,
    helm_values: &HelmValues,
    overlays: &[Overlay],
    cluster: &ClusterFacts<'_>,
) -> Result<(serde_json::Value, HelmValues), ApiError> {
    let bad = |message: String| ApiError::new(ErrorCode::BadValues, message);
    let mut helm = helm_values.clone();
    for overlay in overlays {
        let selector = LabelSelector::parse(&overlay.selector).map_err(|e| {
            ApiError::new(
                ErrorCode::BadSelector,
                format!("overlay selector {:?}: {e}", overlay.selector),
            )
        })?;
        if selector.matches(cluster.labels) {
            helm.files.extend(overlay.files.iter().cloned());
        }
    }
    let each = |items: &mut Vec<String>| -> Result<(), String> {
        for item in items.iter_mut() {
            *item = render(item, cluster)?;
        }
        Ok(())
    };
    (|| -> Result<(), String> {
        for file in &mut helm.files {
            file.text = render(&file.text, cluster).map_err(|e| format!("{}: {e}", file.name))?;
        }
        each(&mut helm.set_json)?;
        each(&mut helm.set)?;
        each(&mut helm.set_string)?;
        each(&mut helm.set_literal)?;
        for file in &mut helm.set_file {
            file.text = render(&file.text, cluster)?;
        }
        Ok(())
    })()
    .map_err(bad)?;
    let values = render_json(values, cluster).map_err(bad)?;
    Ok((values, helm))
}

/// Checks overlays before anything is sent: their selectors and files.
pub fn check_overlays(overlays: &[Overlay]) -> Result<(), ApiError> {
    for overlay in overlays {
        LabelSelector::parse(&overlay.selector).map_err(|e| {
            ApiError::new(
                ErrorCode::BadSelector,
                format!("overlay selector {:?}: {e}", overlay.selector),
            )
        })?;
        for file in &overlay.files {
            crate::values::check_file(&file.name, &file.text)
                .map_err(|e| ApiError::new(ErrorCode::BadValues, e.to_string()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(labels: &BTreeMap<String, String>) -> ClusterFacts<'_> {
        ClusterFacts {
            name: "lisbon-1",
            labels,
        }
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn cluster_expressions_are_rendered_and_others_kept() {
        let l = labels(&[("Region", "eu"), ("topology.kubernetes.io/zone", "a")]);
        let text = "site: {{ .Cluster.Name }}\nregion: '{{.Cluster.Labels.Region}}'\nzone: '{{ index .Cluster.Labels \"topology.kubernetes.io/zone\" }}'\nname: '{{ .Release.Name }}'\n";
        assert_eq!(
            render(text, &facts(&l)).unwrap(),
            "site: lisbon-1\nregion: 'eu'\nzone: 'a'\nname: '{{ .Release.Name }}'\n"
        );
        // Trim markers as Go has them.
        assert_eq!(
            render("a: x-  {{- .Cluster.Name -}}  \n", &facts(&l)).unwrap(),
            "a: x-lisbon-1"
        );
        assert_eq!(
            render("no braces {{ here", &facts(&l)).unwrap(),
            "no braces {{ here"
        );
    }

    #[test]
    fn a_missing_label_names_the_cluster_and_the_label() {
        let l = labels(&[]);
        let err = render("{{ .Cluster.Labels.Region }}", &facts(&l)).unwrap_err();
        assert_eq!(
            err,
            "values use label \"Region\", which cluster lisbon-1 does not have"
        );
        let err = render("{{ .Cluster.Labels }}", &facts(&l)).unwrap_err();
        assert!(err.contains("only .Cluster.Name"), "{err}");
        let err = render("{{ .Cluster.Labels.a/b }}", &facts(&l)).unwrap_err();
        assert!(err.contains("index .Cluster.Labels \"a/b\""), "{err}");
    }

    #[test]
    fn overlays_apply_where_their_selector_matches_after_the_files() {
        let eu = labels(&[("Region", "eu")]);
        let base = HelmValues {
            files: vec![ValuesFile {
                name: "base.yaml".into(),
                text: "replicas: 1\n".into(),
            }],
            set: vec!["region={{ .Cluster.Labels.Region }}".into()],
            ..HelmValues::default()
        };
        let overlays = vec![
            Overlay {
                selector: "Region=eu".into(),
                files: vec![ValuesFile {
                    name: "eu.yaml".into(),
                    text: "replicas: 3\n".into(),
                }],
            },
            Overlay {
                selector: "Region=us".into(),
                files: vec![ValuesFile {
                    name: "us.yaml".into(),
                    text: "replicas: 5\n".into(),
                }],
            },
        ];
        let values = serde_json::json!({"site": "{{ .Cluster.Name }}", "n": 1});
        let (values, helm) = for_cluster(&values, &base, &overlays, &facts(&eu)).unwrap();
        assert_eq!(values, serde_json::json!({"site": "lisbon-1", "n": 1}));
        let names: Vec<&str> = helm.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["base.yaml", "eu.yaml"]);
        assert_eq!(helm.set, ["region=eu"]);
        let err =
            for_cluster(&serde_json::json!({}), &base, &[], &facts(&labels(&[]))).unwrap_err();
        assert_eq!(err.code, ErrorCode::BadValues);
    }
}
