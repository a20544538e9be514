//! Release values the way Helm users give them: `-f` files and `--set`, `--set-string`,
//! `--set-json`, `--set-literal` and `--set-file` flags.
//!
//! Optikon does not interpret them. They travel unchanged to the edge, where the executor
//! hands them to helm, so a values file means there exactly what it means to `helm upgrade`:
//! helm reads YAML 1.1, where `flag: no` is false and `mode: 0644` is 420, and a YAML 1.2
//! reader here would make them "no" and 644. What is checked here is only what helm would
//! refuse anyway, so that a broken file fails when it is sent instead of on every cluster.

use std::fmt;

use schemars::JsonSchema;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValuesError {
    #[error("values file {file}: {message}")]
    File { file: String, message: String },
    #[error("{flag} {expr:?}: {message}")]
    Flag {
        flag: &'static str,
        expr: String,
        message: String,
    },
}

/// Values as given to helm, in the order helm applies them: every file, then `--set-json`,
/// `--set`, `--set-string`, `--set-file`, `--set-literal` (helm's own order, whatever the
/// order on the command line).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HelmValues {
    /// `-f`/`--values` files, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<ValuesFile>,
    /// `--set-json` expressions, e.g. `resources={"limits":{"cpu":"1"}}`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set_json: Vec<String>,
    /// `--set` expressions, e.g. `replicaCount=3,image.tag=1.27`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set: Vec<String>,
    /// `--set-string` expressions: values stay strings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set_string: Vec<String>,
    /// `--set-file key=path`: the file's text travels, not its path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set_file: Vec<SetFile>,
    /// `--set-literal` expressions: the value is taken as one literal string.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub set_literal: Vec<String>,
}

/// One values file: the name it was given under (for messages) and its text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ValuesFile {
    pub name: String,
    pub text: String,
}

/// One `--set-file` value: `key` is set to the text of the file called `name`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SetFile {
    pub key: String,
    pub name: String,
    pub text: String,
}

impl HelmValues {
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// Refuses what helm would refuse before rendering anything: a file that is not YAML, or
    /// whose top level is not a mapping, and flags without a `key=`.
    pub fn check(&self) -> Result<(), ValuesError> {
        for file in &self.files {
            check_file(&file.name, &file.text)?;
        }
        let flags = [
            ("--set-json", &self.set_json),
            ("--set", &self.set),
            ("--set-string", &self.set_string),
            ("--set-literal", &self.set_literal),
        ];
        for (flag, exprs) in flags {
            for expr in exprs {
                check_assignment(flag, expr)?;
            }
        }
        for file in &self.set_file {
            if file.key.is_empty() || file.key.contains(['=', ',']) {
                return Err(ValuesError::Flag {
                    flag: "--set-file",
                    expr: format!("{}={}", file.key, file.name),
                    message: "the key must be a values path like a.b, without '=' or ','".into(),
                });
            }
        }
        Ok(())
    }
}

fn check_assignment(flag: &'static str, expr: &str) -> Result<(), ValuesError> {
    match expr.split_once('=') {
        Some((key, _)) if !key.trim().is_empty() => Ok(()),
        _ => Err(ValuesError::Flag {
            flag,
            expr: expr.to_owned(),
            message: "write key=value".into(),
        }),
    }
}

/// Checks that `text` is YAML (JSON is YAML) whose top level is a mapping, or empty. Keys and
/// values are skipped, not read: how they are typed is helm's business.
pub fn check_file(name: &str, text: &str) -> Result<(), ValuesError> {
    let fail = |message: String| ValuesError::File {
        file: name.to_owned(),
        message,
    };
    if text.trim().is_empty() {
        return Ok(());
    }
    serde_yaml_ng::from_str::<MappingOrEmpty>(text)
        .map(|_| ())
        .map_err(|e| fail(e.to_string()))
}

/// Deserializes from a mapping (skipping its contents) or from nothing at all. Duplicate keys
/// pass, as they do in helm, where the last one wins.
struct MappingOrEmpty;

impl<'de> Deserialize<'de> for MappingOrEmpty {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(MappingOrEmptyVisitor)
    }
}

struct MappingOrEmptyVisitor;

impl<'de> Visitor<'de> for MappingOrEmptyVisitor {
    type Value = MappingOrEmpty;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping of keys to values, like the chart's values.yaml")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(MappingOrEmpty)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(MappingOrEmpty)
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(MappingOrEmpty)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_must_be_yaml_mappings() {
        check_file("a.yaml", "image:\n  tag: '1'\nflag: no\nmode: 0644\n").unwrap();
        check_file("b.json", r#"{"a": {"b": [1, 2]}}"#).unwrap();
        check_file("empty.yaml", "").unwrap();
        check_file("comments.yaml", "# nothing here\n").unwrap();
        // Helm takes the last of two equal keys; so does the edge, so it is not refused here.
        check_file("twice.yaml", "a: 1\na: 2\n").unwrap();

        let err = check_file("bad.yaml", "a: [").unwrap_err();
        assert!(
            err.to_string().starts_with("values file bad.yaml: "),
            "{err}"
        );
        let err = check_file("list.yaml", "- a\n- b\n").unwrap_err();
        assert!(err.to_string().contains("mapping"), "{err}");
        assert!(check_file("scalar.yaml", "just text").is_err());
    }

    #[test]
    fn flags_need_a_key() {
        let ok = HelmValues {
            set: vec!["a.b=1,c=2".into()],
            set_json: vec![r#"r={"x":1}"#.into()],
            set_file: vec![SetFile {
                key: "config".into(),
                name: "app.conf".into(),
                text: "x".into(),
            }],
            ..HelmValues::default()
        };
        ok.check().unwrap();
        for bad in ["novalue", "=1", ""] {
            let values = HelmValues {
                set_string: vec![bad.into()],
                ..HelmValues::default()
            };
            let err = values.check().unwrap_err();
            assert!(err.to_string().starts_with("--set-string"), "{err}");
        }
        let values = HelmValues {
            set_file: vec![SetFile {
                key: "a=b".into(),
                name: "f".into(),
                text: String::new(),
            }],
            ..HelmValues::default()
        };
        assert!(values.check().is_err());
        assert!(HelmValues::default().is_empty());
        assert!(!ok.is_empty());
    }

    #[test]
    fn empty_lists_are_left_out_of_the_json() {
        let values = HelmValues {
            set: vec!["a=1".into()],
            ..HelmValues::default()
        };
        assert_eq!(
            serde_json::to_value(&values).unwrap(),
            serde_json::json!({"set": ["a=1"]})
        );
    }
}
