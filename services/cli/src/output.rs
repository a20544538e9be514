//! Printing: aligned tables for people, JSON and YAML for scripts.

use serde::Serialize;

use crate::args::Format;

/// A table: a header and rows of cells, printed with columns aligned like kubectl's.
pub struct Table {
    pub header: Vec<&'static str>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: Vec<&'static str>) -> Self {
        Table {
            header,
            rows: Vec::new(),
        }
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.len()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
        let line = |cells: Vec<String>| {
            let mut out = String::new();
            for (i, cell) in cells.iter().enumerate() {
                if i + 1 == cells.len() {
                    out.push_str(cell);
                } else {
                    out.push_str(&format!("{cell:<width$}   ", width = widths[i]));
                }
            }
            out.trim_end().to_owned() + "\n"
        };
        let mut out = line(self.header.iter().map(|h| (*h).to_owned()).collect());
        for row in &self.rows {
            out.push_str(&line(row.clone()));
        }
        out
    }
}

/// Prints `items` as JSON or YAML, or `table` for people.
pub fn print<T: Serialize>(format: Format, items: &T, table: impl FnOnce() -> Table) {
    match format {
        Format::Table => print!("{}", table().render()),
        Format::Json => println!(
            "{}",
            serde_json::to_string_pretty(items).expect("output serializes")
        ),
        Format::Yaml => print!(
            "{}",
            serde_yaml_ng::to_string(items).expect("output serializes")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align() {
        let mut t = Table::new(vec!["NAME", "STATUS"]);
        t.rows.push(vec!["copenhagen-1".into(), "deployed".into()]);
        t.rows.push(vec!["a".into(), "failed".into()]);
        assert_eq!(
            t.render(),
            "NAME           STATUS\ncopenhagen-1   deployed\na              failed\n"
        );
    }
}

/// A preview for people: clusters with the same changes together, then per object its
/// change (`+` create, `~` update, `-` delete, `=` unchanged) and the diff, indented.
pub fn preview(preview: &optikon_core::preview::ReleasePreview) -> String {
    use optikon_core::preview::{Change, PreviewOutcome};
    use std::fmt::Write;
    let mut out = String::new();
    let chart = preview
        .chart
        .as_ref()
        .map(|c| format!(" with chart {} {}", c.name, c.version))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "{} {}/{}{chart} would change {} matching cluster(s); nothing was changed:",
        preview.action,
        preview.namespace,
        preview.release,
        preview.clusters.len()
    );
    let mut groups: Vec<Vec<&optikon_core::preview::ClusterPreview>> = Vec::new();
    for cluster in &preview.clusters {
        let found = groups.iter_mut().find(|g| match &cluster.same_as {
            Some(name) => &g[0].cluster == name,
            None => g[0].same_as(cluster),
        });
        match found {
            Some(group) => group.push(cluster),
            None => groups.push(vec![cluster]),
        }
    }
    if let Some(note) = &preview.note {
        let _ = writeln!(out, "({note})");
    }
    for group in groups {
        let first = group[0];
        let names: Vec<&str> = group.iter().map(|c| c.cluster.as_str()).collect();
        let _ = write!(out, "\n{}: ", names.join(", "));
        match first.outcome {
            PreviewOutcome::Offline => {
                let _ = writeln!(out, "offline, not previewed");
                for cluster in &group {
                    if let Some(reason) = &cluster.reason {
                        let _ = writeln!(out, "  {}: {reason}", cluster.cluster);
                    }
                }
                continue;
            }
            PreviewOutcome::Failed => {
                let _ = writeln!(
                    out,
                    "would fail: {}",
                    first.reason.as_deref().unwrap_or("no reason given")
                );
                continue;
            }
            PreviewOutcome::Previewed => {}
        }
        let revisions = match (first.revision, first.next_revision) {
            (Some(now), Some(next)) => format!("revision {now} -> {next}"),
            (None, Some(next)) => format!("not installed -> revision {next}"),
            (Some(now), None) => format!("revision {now}"),
            (None, None) => "not installed".to_owned(),
        };
        let changed = first.changed().count();
        let _ = writeln!(out, "{revisions}, {changed} object(s) change");
        if let Some(reason) = &first.reason {
            let _ = writeln!(out, "  {reason}");
        }
        for hook in &first.hooks {
            let _ = writeln!(out, "  hook  {hook}");
        }
        for object in &first.objects {
            let mark = match object.change {
                Change::Create => "+",
                Change::Update => "~",
                Change::Delete => "-",
                Change::Unchanged => "=",
            };
            let _ = writeln!(out, "  {mark} {} ({})", object.object, object.change);
            for line in object.diff.lines() {
                let _ = writeln!(out, "      {line}");
            }
        }
    }
    out
}

#[cfg(test)]
mod preview_tests {
    use optikon_core::message::{Action, ApiVersion};
    use optikon_core::preview::{
        Change, ClusterPreview, ObjectChange, PreviewOutcome, ReleasePreview,
    };

    #[test]
    fn a_preview_groups_clusters_with_the_same_changes() {
        let changed = ClusterPreview {
            outcome: PreviewOutcome::Previewed,
            reason: None,
            revision: Some(1),
            next_revision: Some(2),
            objects: vec![
                ObjectChange {
                    object: "ConfigMap shop/web".into(),
                    change: Change::Update,
                    diff: "--- live\n+++ after\n-  greeting: hello\n+  greeting: hej\n".into(),
                },
                ObjectChange {
                    object: "Deployment shop/web".into(),
                    change: Change::Unchanged,
                    diff: String::new(),
                },
            ],
            ..ClusterPreview::failed("berlin-1", String::new())
        };
        let preview = ReleasePreview {
            api_version: ApiVersion,
            action: Action::Upgrade,
            release: "web".into(),
            namespace: "shop".into(),
            selector: String::new(),
            chart: None,
            clusters: vec![
                changed.clone(),
                ClusterPreview::offline("copenhagen-1", None),
                ClusterPreview {
                    cluster: "lisbon-1".into(),
                    ..changed
                },
            ],
            note: None,
        };
        let text = super::preview(&preview);
        let mut folded = preview.clone();
        folded.fold_duplicates();
        assert_eq!(super::preview(&folded), text, "the same once folded");
        assert!(
            text.starts_with("upgrade shop/web would change 3 matching cluster(s)"),
            "{text}"
        );
        assert!(
            text.contains("\nberlin-1, lisbon-1: revision 1 -> 2, 1 object(s) change\n"),
            "{text}"
        );
        assert!(text.contains("  ~ ConfigMap shop/web (update)\n"), "{text}");
        assert!(text.contains("      +  greeting: hej\n"), "{text}");
        assert!(
            text.contains("  = Deployment shop/web (unchanged)\n"),
            "{text}"
        );
        assert!(
            text.contains("\ncopenhagen-1: offline, not previewed\n"),
            "{text}"
        );
    }
}
