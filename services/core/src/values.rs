//! Release values the way Helm users give them: `-f values.yaml` files merged in order, then
//! `--set a.b=c,list[0]=x` and `--set-string` overrides.

use serde_json::{Map, Value};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ValuesError {
    #[error("values file {file}: {message}")]
    File { file: String, message: String },
    #[error("--set {expr:?}: {message}")]
    Set { expr: String, message: String },
}

/// Parses a values file (YAML or JSON; YAML is a superset) into a JSON object.
pub fn parse_file(name: &str, text: &str) -> Result<Value, ValuesError> {
    let value: Value = serde_yaml_ng::from_str(text).map_err(|e| ValuesError::File {
        file: name.to_owned(),
        message: e.to_string(),
    })?;
    match value {
        Value::Object(_) => Ok(value),
        Value::Null => Ok(Value::Object(Map::new())),
        _ => Err(ValuesError::File {
            file: name.to_owned(),
            message: "must be a mapping of keys to values".into(),
        }),
    }
}

/// Deep-merges `overlay` into `base`: maps merge key by key, anything else is replaced.
pub fn merge(base: &mut Value, overlay: Value) {
    match (base, overlay) {
        (Value::Object(base), Value::Object(overlay)) => {
            for (key, value) in overlay {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, overlay) => *base = overlay,
    }
}

/// Applies one `--set` expression (`a.b=1,c[0]=x`). With `as_string`, values stay strings
/// (`--set-string`); otherwise `true`/`false`, `null` and integers are typed as Helm does.
pub fn apply_set(values: &mut Value, expr: &str, as_string: bool) -> Result<(), ValuesError> {
    let err = |message: &str| ValuesError::Set {
        expr: expr.to_owned(),
        message: message.to_owned(),
    };
    for assignment in split_unescaped(expr, ',') {
        let (path, raw) = assignment
            .split_once('=')
            .ok_or_else(|| err(&format!("{assignment:?} has no '='; write key=value")))?;
        let path = parse_path(path).map_err(|m| err(&m))?;
        let value = if as_string {
            Value::String(unescape(raw))
        } else {
            typed(raw)
        };
        set_path(values, &path, value).map_err(|m| err(&m))?;
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
enum Step {
    Key(String),
    Index(usize),
}

fn parse_path(path: &str) -> Result<Vec<Step>, String> {
    let mut steps = Vec::new();
    for part in split_unescaped(path, '.') {
        let (name, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part.as_str(), ""),
        };
        if name.is_empty() {
            return Err(format!("empty key in {path:?}"));
        }
        steps.push(Step::Key(unescape(name)));
        while !rest.is_empty() {
            let close = rest
                .find(']')
                .ok_or_else(|| format!("unclosed '[' in {path:?}"))?;
            let index = rest[1..close].parse::<usize>().map_err(|_| {
                format!(
                    "list index {:?} in {path:?} is not a number",
                    &rest[1..close]
                )
            })?;
            if index > 65_536 {
                return Err(format!("list index {index} in {path:?} is too large"));
            }
            steps.push(Step::Index(index));
            rest = &rest[close + 1..];
            if !rest.is_empty() && !rest.starts_with('[') {
                return Err(format!("unexpected {rest:?} after ']' in {path:?}"));
            }
        }
    }
    if steps.is_empty() {
        return Err("empty key".into());
    }
    Ok(steps)
}

fn set_path(target: &mut Value, path: &[Step], value: Value) -> Result<(), String> {
    let Some((step, rest)) = path.split_first() else {
        *target = value;
        return Ok(());
    };
    match step {
        Step::Key(key) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let map = target.as_object_mut().expect("just made an object");
            let slot = map.entry(key.clone()).or_insert(Value::Null);
            set_path(slot, rest, value)
        }
        Step::Index(index) => {
            if !target.is_array() {
                *target = Value::Array(Vec::new());
            }
            let list = target.as_array_mut().expect("just made an array");
            if list.len() <= *index {
                list.resize(index + 1, Value::Null);
            }
            set_path(&mut list[*index], rest, value)
        }
    }
}

fn typed(raw: &str) -> Value {
    match raw {
        "true" => Value::Bool(true),
        "false" => Value::Bool(false),
        "null" => Value::Null,
        _ => match raw.parse::<i64>() {
            // Helm keeps numbers with leading zeros as strings ("007").
            Ok(n) if !(raw.len() > 1 && raw.starts_with('0')) => Value::from(n),
            _ => Value::String(unescape(raw)),
        },
    }
}

/// Splits on `sep` except where it is escaped with a backslash.
fn split_unescaped(s: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                parts.last_mut().expect("non-empty").extend(['\\', next]);
            }
        } else if c == sep {
            parts.push(String::new());
        } else {
            parts.last_mut().expect("non-empty").push(c);
        }
    }
    parts
}

fn unescape(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(next) = chars.next() {
                out.push(next);
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_builds_nested_typed_values() {
        let mut v = json!({});
        apply_set(
            &mut v,
            "replicaCount=3,image.tag=1.27,debug=true,list[1]=b",
            false,
        )
        .unwrap();
        assert_eq!(
            v,
            json!({"replicaCount": 3, "image": {"tag": "1.27"}, "debug": true, "list": [null, "b"]})
        );
    }

    #[test]
    fn set_string_and_escapes() {
        let mut v = json!({});
        apply_set(&mut v, r"port=0080,name=a\,b,dotted\.key=x", false).unwrap();
        assert_eq!(v, json!({"port": "0080", "name": "a,b", "dotted.key": "x"}));
        apply_set(&mut v, "replicas=3", true).unwrap();
        assert_eq!(v["replicas"], json!("3"));
    }

    #[test]
    fn bad_set_expressions_are_named() {
        let mut v = json!({});
        let err = apply_set(&mut v, "novalue", false).unwrap_err();
        assert!(err.to_string().contains("novalue"), "{err}");
        assert!(apply_set(&mut v, "a[x]=1", false).is_err());
        assert!(apply_set(&mut v, "a[1=1", false).is_err());
        assert!(apply_set(&mut v, ".a=1", false).is_err());
    }

    #[test]
    fn files_merge_deeply_in_order() {
        let mut v =
            parse_file("a.yaml", "image:\n  repo: nginx\n  tag: '1'\nreplicas: 1\n").unwrap();
        merge(
            &mut v,
            parse_file("b.yaml", "image:\n  tag: '2'\n").unwrap(),
        );
        assert_eq!(
            v,
            json!({"image": {"repo": "nginx", "tag": "2"}, "replicas": 1})
        );
        assert!(parse_file("c.yaml", "- a\n- b\n").is_err());
        assert_eq!(parse_file("empty.yaml", "").unwrap(), json!({}));
        let err = parse_file("bad.yaml", "a: [").unwrap_err();
        assert!(err.to_string().starts_with("values file bad.yaml"), "{err}");
    }
}
