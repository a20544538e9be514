//! Validation of user-supplied names: releases, namespaces, clusters, label keys and values.
//!
//! The rules are Kubernetes' and Helm's, checked by hand (no regex engine) so that an error
//! can name the first offending character instead of quoting a pattern.

use std::collections::BTreeMap;

/// Helm 3 caps release names at 53 characters: it appends suffixes to build object names
/// that must stay within Kubernetes' 63.
pub const MAX_RELEASE_NAME_LEN: usize = 53;
/// DNS-1123 label (namespaces, cluster names, the name part of a label key).
pub const MAX_DNS1123_LABEL_LEN: usize = 63;
/// DNS-1123 subdomain (the prefix of a label key).
pub const MAX_DNS1123_SUBDOMAIN_LEN: usize = 253;
/// Label values and the name part of label keys.
pub const MAX_LABEL_VALUE_LEN: usize = 63;

const RELEASE_RULE: &str = "use at most 53 characters: lowercase letters, digits, '-' and '.', \
     each dot-separated part starting and ending with a letter or digit (e.g. \"web\" or \"web.v2\")";
const DNS_LABEL_RULE: &str = "use at most 63 characters: lowercase letters, digits and '-', \
     starting and ending with a letter or digit (e.g. \"edge-01\")";
const LABEL_KEY_RULE: &str = "use a name of at most 63 letters, digits, '-', '_' or '.' that starts \
     and ends with a letter or digit, optionally after a DNS subdomain prefix and '/' \
     (e.g. \"region\" or \"example.com/tier\")";
const LABEL_VALUE_RULE: &str = "use at most 63 letters, digits, '-', '_' or '.', starting and \
     ending with a letter or digit, or leave the value empty";

/// A name or label that breaks the rules.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} {value:?} is invalid: {problem}; {rule}")]
    Invalid {
        /// What the value was meant to be, e.g. "release name".
        what: &'static str,
        value: String,
        /// The first thing found wrong.
        problem: String,
        /// The rule, stated so the user can fix the value.
        rule: &'static str,
    },
    #[error(
        "labels {input:?}: item {item:?} is not key=value; write labels as key=value pairs \
         separated by commas, e.g. \"region=europe,tier=edge\""
    )]
    NotKeyValue { input: String, item: String },
    #[error("labels {input:?}: key {key:?} is given more than once; give each key once")]
    DuplicateLabelKey { input: String, key: String },
}

/// Checks a Helm release name (Helm 3's rule: a DNS-1123 subdomain of at most 53 characters).
pub fn validate_release_name(s: &str) -> Result<(), NameError> {
    dns1123_subdomain_problem(s, MAX_RELEASE_NAME_LEN).map_or(Ok(()), |problem| {
        Err(invalid("release name", s, problem, RELEASE_RULE))
    })
}

/// Checks a Kubernetes namespace name (a DNS-1123 label).
pub fn validate_namespace(s: &str) -> Result<(), NameError> {
    dns1123_label_problem(s).map_or(Ok(()), |problem| {
        Err(invalid("namespace", s, problem, DNS_LABEL_RULE))
    })
}

/// Checks a Service name as a proximity DNS question names it. Kubernetes' own rule for
/// Services (DNS-1035) is stricter still, so every Service a site reports passes.
pub fn validate_service_name(s: &str) -> Result<(), NameError> {
    dns1123_label_problem(s).map_or(Ok(()), |problem| {
        Err(invalid("service name", s, problem, DNS_LABEL_RULE))
    })
}

/// Checks a cluster name. It becomes a NATS JetStream domain and a subject token, so it is a
/// DNS-1123 label (no dots), and it must not be the hub's own domain.
pub fn validate_cluster_name(s: &str) -> Result<(), NameError> {
    let problem = dns1123_label_problem(s).or_else(|| {
        (s == crate::subject::HUB_DOMAIN).then(|| {
            format!(
                "{s:?} is the hub's JetStream domain, so an edge cannot use it; pick another name"
            )
        })
    });
    problem.map_or(Ok(()), |problem| {
        Err(invalid("cluster name", s, problem, DNS_LABEL_RULE))
    })
}

/// Checks a label key: `[prefix/]name`, the prefix a DNS-1123 subdomain, the name a
/// Kubernetes qualified name.
pub fn validate_label_key(s: &str) -> Result<(), NameError> {
    label_key_problem(s).map_or(Ok(()), |problem| {
        Err(invalid("label key", s, problem, LABEL_KEY_RULE))
    })
}

/// Checks a label value: empty, or a qualified name of at most 63 characters.
pub fn validate_label_value(s: &str) -> Result<(), NameError> {
    if s.is_empty() {
        return Ok(());
    }
    qualified_name_problem(s, 0).map_or(Ok(()), |problem| {
        Err(invalid("label value", s, problem, LABEL_VALUE_RULE))
    })
}

/// Parses `key=value,key2=value2` into a map, checking every key and value. Whitespace around
/// items, keys and values is ignored; an empty (or blank) string gives an empty map.
pub fn parse_labels(s: &str) -> Result<BTreeMap<String, String>, NameError> {
    let mut labels = BTreeMap::new();
    if s.trim().is_empty() {
        return Ok(labels);
    }
    for item in s.split(',') {
        let not_key_value = || NameError::NotKeyValue {
            input: s.to_owned(),
            item: item.trim().to_owned(),
        };
        let (key, value) = item.split_once('=').ok_or_else(not_key_value)?;
        // A second '=' would otherwise end up inside the value and be reported as a bad
        // character; this message says what is actually wrong.
        if value.contains('=') {
            return Err(not_key_value());
        }
        let (key, value) = (key.trim(), value.trim());
        validate_label_key(key)?;
        validate_label_value(value)?;
        if labels.insert(key.to_owned(), value.to_owned()).is_some() {
            return Err(NameError::DuplicateLabelKey {
                input: s.to_owned(),
                key: key.to_owned(),
            });
        }
    }
    Ok(labels)
}

fn invalid(what: &'static str, value: &str, problem: String, rule: &'static str) -> NameError {
    NameError::Invalid {
        what,
        value: value.to_owned(),
        problem,
        rule,
    }
}

/// Describes a character the rules do not allow, at character position `at`.
fn bad_char(c: char, at: usize) -> String {
    if c.is_ascii_uppercase() {
        format!("uppercase {c:?} at position {at} is not allowed")
    } else if c.is_whitespace() {
        format!("whitespace {c:?} at position {at} is not allowed")
    } else {
        format!("character {c:?} at position {at} is not allowed")
    }
}

fn too_long(subject: &str, len: usize, max: usize) -> String {
    format!("{subject} is {len} characters long, more than {max}")
}

fn is_lower_alnum(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// `[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters.
fn dns1123_label_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("it is empty".into());
    }
    for (i, c) in s.chars().enumerate() {
        if c == '.' {
            return Some(format!("'.' at position {i} is not allowed (no dots)"));
        }
        if !(is_lower_alnum(c) || c == '-') {
            return Some(bad_char(c, i));
        }
    }
    if s.len() > MAX_DNS1123_LABEL_LEN {
        return Some(too_long("it", s.len(), MAX_DNS1123_LABEL_LEN));
    }
    edge_problem(s, 0, "it")
}

/// Dot-separated DNS-1123 labels, at most `max` characters in all.
fn dns1123_subdomain_problem(s: &str, max: usize) -> Option<String> {
    if s.is_empty() {
        return Some("it is empty".into());
    }
    if let Some((i, c)) = s
        .chars()
        .enumerate()
        .find(|&(_, c)| !(is_lower_alnum(c) || c == '-' || c == '.'))
    {
        return Some(bad_char(c, i));
    }
    if s.len() > max {
        return Some(too_long("it", s.len(), max));
    }
    // All ASCII from here on, so byte offsets are character positions.
    let mut start = 0;
    for part in s.split('.') {
        if part.is_empty() {
            return Some(format!("empty part between dots at position {start}"));
        }
        if let Some(p) = edge_problem(part, start, &format!("part {part:?}")) {
            return Some(p);
        }
        start += part.len() + 1;
    }
    None
}

/// Reports a '-' (or any non-alphanumeric) at either end; `s` is ASCII-checked by the caller.
fn edge_problem(s: &str, offset: usize, subject: &str) -> Option<String> {
    let first = s.chars().next()?;
    let last = s.chars().next_back()?;
    if !first.is_ascii_alphanumeric() {
        return Some(format!(
            "{subject} starts with {first:?} at position {offset}"
        ));
    }
    if !last.is_ascii_alphanumeric() {
        return Some(format!(
            "{subject} ends with {last:?} at position {}",
            offset + s.len() - 1
        ));
    }
    None
}

/// `([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]`, non-empty, at most 63 characters; positions
/// in messages are shifted by `offset` (the name part of a key comes after its prefix).
fn qualified_name_problem(s: &str, offset: usize) -> Option<String> {
    if let Some((i, c)) = s
        .chars()
        .enumerate()
        .find(|&(_, c)| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Some(bad_char(c, offset + i));
    }
    if s.len() > MAX_LABEL_VALUE_LEN {
        return Some(too_long("it", s.len(), MAX_LABEL_VALUE_LEN));
    }
    edge_problem(s, offset, "it")
}

fn label_key_problem(s: &str) -> Option<String> {
    if s.is_empty() {
        return Some("it is empty".into());
    }
    let (prefix, name) = match s.split_once('/') {
        None => (None, s),
        Some((prefix, name)) => (Some(prefix), name),
    };
    if name.contains('/') {
        return Some("it contains more than one '/'".into());
    }
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Some("the prefix before '/' is empty".into());
        }
        if let Some(p) = dns1123_subdomain_problem(prefix, MAX_DNS1123_SUBDOMAIN_LEN) {
            return Some(format!("prefix {prefix:?}: {p}"));
        }
    }
    if name.is_empty() {
        return Some("the name after '/' is empty".into());
    }
    match prefix {
        None => qualified_name_problem(name, 0),
        Some(prefix) => qualified_name_problem(name, prefix.chars().count() + 1)
            .map(|p| format!("name {name:?}: {p}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problem(r: Result<(), NameError>) -> String {
        match r {
            Err(NameError::Invalid { problem, .. }) => problem,
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    #[test]
    fn release_names_follow_helm() {
        for ok in [
            "a",
            "nginx",
            "my-app",
            "web.v2",
            "a.b.c",
            "0",
            "1-2",
            &"a".repeat(53),
        ] {
            assert_eq!(validate_release_name(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "",
            "My-App",
            "my_app",
            "-a",
            "a-",
            ".a",
            "a.",
            "a..b",
            "a.-b",
            "a b",
            "é",
            &"a".repeat(54),
        ] {
            assert!(
                validate_release_name(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn release_name_error_names_the_character_and_rule() {
        let e = validate_release_name("My_app").unwrap_err().to_string();
        assert!(
            e.starts_with("release name \"My_app\" is invalid: uppercase 'M' at position 0"),
            "{e}"
        );
        assert!(e.contains("at most 53 characters"), "{e}");
        assert_eq!(
            problem(validate_release_name("my_app")),
            "character '_' at position 2 is not allowed"
        );
        assert_eq!(
            problem(validate_release_name("a.-b")),
            "part \"-b\" starts with '-' at position 2"
        );
        assert_eq!(
            problem(validate_release_name("ab-.c")),
            "part \"ab-\" ends with '-' at position 2"
        );
        assert_eq!(
            problem(validate_release_name("a..b")),
            "empty part between dots at position 2"
        );
        assert_eq!(problem(validate_release_name("")), "it is empty");
        assert_eq!(
            problem(validate_release_name(&"a".repeat(54))),
            "it is 54 characters long, more than 53"
        );
    }

    #[test]
    fn namespaces_are_dns_labels() {
        for ok in ["default", "kube-system", "a", "0a", &"a".repeat(63)] {
            assert_eq!(validate_namespace(ok), Ok(()), "{ok:?}");
        }
        for bad in ["", "Default", "a.b", "-a", "a-", "a_b", &"a".repeat(64)] {
            assert!(
                validate_namespace(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert_eq!(
            problem(validate_namespace("a.b")),
            "'.' at position 1 is not allowed (no dots)"
        );
        assert_eq!(
            problem(validate_namespace("ab-")),
            "it ends with '-' at position 2"
        );
        assert_eq!(
            problem(validate_namespace("a b")),
            "whitespace ' ' at position 1 is not allowed"
        );
    }

    #[test]
    fn cluster_names_are_dns_labels_and_not_the_hub() {
        assert_eq!(validate_cluster_name("edge-01"), Ok(()));
        assert!(validate_cluster_name("edge.01").is_err());
        assert!(validate_cluster_name("Edge").is_err());
        assert!(validate_cluster_name("").is_err());
        let e = validate_cluster_name(crate::subject::HUB_DOMAIN)
            .unwrap_err()
            .to_string();
        assert!(e.contains("hub's JetStream domain"), "{e}");
        assert!(e.starts_with("cluster name "), "{e}");
    }

    #[test]
    fn label_keys_follow_kubernetes() {
        for ok in [
            "a",
            "Region",
            "ID",
            "app.kubernetes.io/name",
            "example.com/My_Key.1",
            "k8s.io/a",
            "a-b_c.d",
            &"a".repeat(63),
            &format!("{}/{}", "a".repeat(253), "b".repeat(63)),
        ] {
            assert_eq!(validate_label_key(ok), Ok(()), "{ok:?}");
        }
        for bad in [
            "",
            "/a",
            "a/",
            "a/b/c",
            "Example.com/a",
            "-a",
            "a-",
            "_a",
            "a b",
            "a=b",
            "ä",
            &"a".repeat(64),
            &format!("{}/b", "a".repeat(254)),
        ] {
            assert!(
                validate_label_key(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn label_key_errors_locate_the_fault() {
        assert_eq!(
            problem(validate_label_key("/a")),
            "the prefix before '/' is empty"
        );
        assert_eq!(
            problem(validate_label_key("a/")),
            "the name after '/' is empty"
        );
        assert_eq!(
            problem(validate_label_key("a/b/c")),
            "it contains more than one '/'"
        );
        assert_eq!(
            problem(validate_label_key("Ex.com/a")),
            "prefix \"Ex.com\": uppercase 'E' at position 0 is not allowed"
        );
        assert_eq!(
            problem(validate_label_key("ex.com/a b")),
            "name \"a b\": whitespace ' ' at position 8 is not allowed"
        );
        assert_eq!(
            problem(validate_label_key("ex.com/a-")),
            "name \"a-\": it ends with '-' at position 8"
        );
        let e = validate_label_key("Bad Key").unwrap_err().to_string();
        assert!(
            e.starts_with("label key \"Bad Key\" is invalid: whitespace ' ' at position 3"),
            "{e}"
        );
    }

    #[test]
    fn label_values_follow_kubernetes() {
        for ok in [
            "",
            "a",
            "Europe",
            "True",
            "123",
            "a.b-c_d",
            "0.1.0",
            &"v".repeat(63),
        ] {
            assert_eq!(validate_label_value(ok), Ok(()), "{ok:?}");
        }
        for bad in ["-1", "a-", ".a", "a b", "a/b", "a=b", "ü", &"v".repeat(64)] {
            assert!(
                validate_label_value(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
        assert_eq!(
            problem(validate_label_value("-1")),
            "it starts with '-' at position 0"
        );
        assert_eq!(
            problem(validate_label_value(&"v".repeat(64))),
            "it is 64 characters long, more than 63"
        );
    }

    #[test]
    fn parse_labels_accepts_the_usual_forms() {
        assert!(parse_labels("").unwrap().is_empty());
        assert!(parse_labels("  ").unwrap().is_empty());
        let m = parse_labels(" Region=Europe , Kubecon = True,ID=123,empty=").unwrap();
        let want: BTreeMap<String, String> = [
            ("Region", "Europe"),
            ("Kubecon", "True"),
            ("ID", "123"),
            ("empty", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(m, want);
        assert_eq!(
            parse_labels("example.com/tier=edge").unwrap()["example.com/tier"],
            "edge"
        );
    }

    #[test]
    fn parse_labels_rejects_bad_input() {
        assert_eq!(
            parse_labels("a=1,a=2"),
            Err(NameError::DuplicateLabelKey {
                input: "a=1,a=2".into(),
                key: "a".into()
            })
        );
        assert_eq!(
            parse_labels("a=1,b"),
            Err(NameError::NotKeyValue {
                input: "a=1,b".into(),
                item: "b".into()
            })
        );
        assert_eq!(
            parse_labels("a=1,"),
            Err(NameError::NotKeyValue {
                input: "a=1,".into(),
                item: "".into()
            })
        );
        assert_eq!(
            parse_labels("a=b=c"),
            Err(NameError::NotKeyValue {
                input: "a=b=c".into(),
                item: "a=b=c".into()
            })
        );
        assert!(matches!(
            parse_labels("=x"),
            Err(NameError::Invalid {
                what: "label key",
                ..
            })
        ));
        assert!(matches!(
            parse_labels("a=x y"),
            Err(NameError::Invalid {
                what: "label value",
                ..
            })
        ));
        let e = parse_labels("a=1,b").unwrap_err().to_string();
        assert!(e.contains("key=value"), "{e}");
    }
}
