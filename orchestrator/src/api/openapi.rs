//! `GET /openapi.json`: the OpenAPI 3.1 description of this API, written by hand next to this
//! file (`openapi.json`) and embedded at build time. The tests below keep it in step with the
//! router.

use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;

pub const DOCUMENT: &str = include_str!("openapi.json");

pub async fn document() -> impl IntoResponse {
    ([(CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    /// Every route of `api::router`, with its methods.
    const ROUTES: &[(&str, &[&str])] = &[
        ("/v1/definitions", &["post", "get"]),
        ("/v1/definitions/{name}", &["get"]),
        ("/v1/definitions/{name}/versions/{version}", &["get"]),
        ("/v1/sagas", &["post", "get"]),
        ("/v1/sagas/{id}", &["get"]),
        ("/v1/sagas/{id}/history", &["get"]),
        ("/v1/sagas/{id}/signals/{event}", &["post"]),
        ("/v1/sagas/{id}/cancel", &["post"]),
        ("/v1/sagas/{id}/retry", &["post"]),
        ("/v1/sagas/{id}/skip", &["post"]),
        ("/v1/sagas/{id}/terminate", &["post"]),
        ("/v1/bulk/retry", &["post"]),
        ("/v1/bulk/terminate", &["post"]),
        ("/v1/queues", &["get"]),
        ("/healthz", &["get"]),
        ("/readyz", &["get"]),
        ("/metrics", &["get"]),
        ("/openapi.json", &["get"]),
        ("/ui", &["get"]),
    ];

    fn doc() -> Value {
        serde_json::from_str(DOCUMENT).expect("openapi.json is JSON")
    }

    /// Every `$ref` in `v`.
    fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.push(r);
                }
                m.values().for_each(|x| refs(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
            _ => {}
        }
    }

    #[test]
    fn describes_every_route_and_nothing_else() {
        let doc = doc();
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().expect("paths");
        assert_eq!(paths.len(), ROUTES.len());
        for (path, methods) in ROUTES {
            let item = paths
                .get(*path)
                .unwrap_or_else(|| panic!("{path} is not described"));
            for m in *methods {
                let op = &item[*m];
                assert!(op["operationId"].is_string(), "{m} {path}");
                assert!(
                    op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                    "{m} {path}"
                );
            }
        }
    }

    #[test]
    fn every_reference_resolves() {
        let doc = doc();
        let mut all = Vec::new();
        refs(&doc, &mut all);
        assert!(!all.is_empty());
        for r in all {
            let pointer = r
                .strip_prefix('#')
                .unwrap_or_else(|| panic!("external ref {r}"));
            assert!(doc.pointer(pointer).is_some(), "{r} does not resolve");
        }
    }

    #[test]
    fn errors_are_problem_json() {
        let doc = doc();
        for (name, response) in doc["components"]["responses"]
            .as_object()
            .expect("responses")
        {
            assert!(
                response["content"]["application/problem+json"].is_object(),
                "{name} is not problem+json"
            );
        }
    }
}
