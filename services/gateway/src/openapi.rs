//! The OpenAPI 3 document of every route (hand-written in `openapi.json`; a test holds it to
//! the router's route table, both ways).

use axum::http::header;
use axum::response::IntoResponse;

pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn serve() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::DOCUMENT;

    fn documented() -> BTreeSet<(String, String)> {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("openapi.json is JSON");
        assert!(
            doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
            "an OpenAPI 3 document"
        );
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, _) in item.as_object().expect("path item") {
                if ["get", "put", "post", "delete", "patch", "options", "head"]
                    .contains(&method.as_str())
                {
                    out.insert((method.clone(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn every_route_is_documented_and_every_documented_route_exists() {
        let routed: BTreeSet<(String, String)> = crate::routes()
            .table
            .iter()
            .map(|(method, path)| (method.as_str().to_owned(), path.clone()))
            .collect();
        let documented = documented();
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let missing: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from openapi.json: {undocumented:?}"
        );
        assert!(
            missing.is_empty(),
            "openapi.json documents routes the router lacks: {missing:?}"
        );
    }

    #[test]
    fn every_reference_resolves() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).unwrap();
        fn walk(v: &serde_json::Value, doc: &serde_json::Value, path: &str) {
            match v {
                serde_json::Value::Object(map) => {
                    if let Some(r) = map.get("$ref").and_then(|r| r.as_str()) {
                        let pointer = r.strip_prefix('#').expect("local reference");
                        assert!(doc.pointer(pointer).is_some(), "{path}: dangling $ref {r}");
                    }
                    for (k, v) in map {
                        walk(v, doc, &format!("{path}/{k}"));
                    }
                }
                serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, doc, path)),
                _ => {}
            }
        }
        walk(&doc, &doc, "");
    }
}
