//! `GET /openapi.json`: the OpenAPI 3.1 document of the API. `docs/openapi.json` is written by hand and embedded;
//! it describes the canonical routes (`/v1/tenants/...` and `/openapi.json`). The short forms a key uses for its
//! own tenant (`/v1/apps` for `/v1/tenants/{tenant_id}/apps`, ...) are derived from it mechanically when it is
//! served, exactly as the router mounts the same handlers twice, so the two cannot drift apart. A test holds the
//! served document's (method, path) pairs equal to the router's.

use std::sync::OnceLock;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

/// The hand-written document.
const SOURCE: &str = include_str!("../../docs/openapi.json");
/// The canonical prefix of tenant routes.
const TENANT_PREFIX: &str = "/v1/tenants/{tenant_id}/";
const TENANT_PARAM_REF: &str = "#/components/parameters/tenant_id";
/// A path item extension: the route is the operator's and has no own-tenant short form.
const OPERATOR_ONLY: &str = "x-operator-only";

/// The document as served: the source with the own-tenant short forms added.
pub fn document() -> Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| match serde_json::from_str::<Value>(SOURCE) {
        Ok(doc) => with_short_forms(doc),
        // The test suite parses the document, so this is a build that skipped its tests.
        Err(e) => json!({ "openapi": "3.1.0", "info": { "title": "fairvox", "version": "0", "description": format!("docs/openapi.json does not parse: {e}") }, "paths": {} }),
    })
    .clone()
}

pub async fn serve() -> Response {
    static BODY: OnceLock<String> = OnceLock::new();
    let body = BODY.get_or_init(|| document().to_string()).clone();
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body).into_response()
}

fn with_short_forms(mut doc: Value) -> Value {
    let Some(paths) = doc.get("paths").and_then(Value::as_object).cloned() else { return doc };
    let mut out = Map::new();
    for (path, item) in paths {
        // Operator-only routes (offboarding) have no short form: a key never acts on them.
        let operator_only = item.get(OPERATOR_ONLY).and_then(Value::as_bool) == Some(true);
        if let Some(rest) = path.strip_prefix(TENANT_PREFIX).filter(|_| !operator_only) {
            let short = format!("/v1/{rest}");
            out.insert(short, short_form(&path, item.clone()));
        }
        out.insert(path, item);
    }
    doc["paths"] = Value::Object(out);
    doc
}

/// A tenant path item without its `tenant_id` parameter, operation ids suffixed `_own`.
fn short_form(canonical: &str, mut item: Value) -> Value {
    fn drop_tenant_param(v: &mut Value) {
        if let Some(params) = v.get_mut("parameters").and_then(Value::as_array_mut) {
            params.retain(|p| p.get("$ref").and_then(Value::as_str) != Some(TENANT_PARAM_REF));
        }
    }
    drop_tenant_param(&mut item);
    if let Some(ops) = item.as_object_mut() {
        for (method, op) in ops.iter_mut() {
            if !matches!(method.as_str(), "get" | "post" | "patch" | "delete" | "put") {
                continue;
            }
            drop_tenant_param(op);
            if let Some(id) = op.get("operationId").and_then(Value::as_str) {
                op["operationId"] = json!(format!("{id}_own"));
            }
            let summary = op.get("summary").and_then(Value::as_str).unwrap_or("").to_owned();
            op["summary"] = json!(format!("{summary} (own tenant)"));
            op["description"] = json!(format!(
                "Short form of `{} {canonical}` for an API key's own tenant. The operator must use the \
                 canonical form (here: 400 `tenant_required`).",
                method.to_uppercase()
            ));
        }
    }
    item
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn doc_routes(doc: &Value) -> BTreeSet<(String, String)> {
        let mut out = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if matches!(method.as_str(), "get" | "post" | "patch" | "delete" | "put" | "head" | "options") {
                    out.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn the_source_parses_as_openapi_3_1() {
        let doc: Value = serde_json::from_str(SOURCE).expect("docs/openapi.json is JSON");
        assert_eq!(doc["openapi"].as_str().map(|v| v.starts_with("3.1")), Some(true));
        assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    }

    /// Every route of the router is in the served document, and every operation of the document is a route.
    #[test]
    fn every_route_is_documented_and_every_documented_route_exists() {
        let routed: BTreeSet<(String, String)> =
            crate::api::routes().into_iter().map(|(m, p)| (m.as_str().to_owned(), p)).collect();
        let documented = doc_routes(&document());
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(undocumented.is_empty(), "routes missing from docs/openapi.json: {undocumented:?}");
        assert!(unrouted.is_empty(), "documented but not routed: {unrouted:?}");
    }

    /// Each `{param}` of a path is declared as a path parameter of each of its operations, operation ids are
    /// unique, every operation answers JSON errors, and every `$ref` resolves.
    #[test]
    fn operations_are_complete_and_refs_resolve() {
        let doc = document();
        let mut op_ids = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            let wanted: BTreeSet<String> = path
                .split('/')
                .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
                .map(str::to_owned)
                .collect();
            for (method, op) in item.as_object().unwrap() {
                if method == "parameters" || method.starts_with("x-") {
                    continue;
                }
                let params = item
                    .get("parameters")
                    .into_iter()
                    .chain(op.get("parameters"))
                    .flat_map(|p| p.as_array().unwrap().iter().map(|p| resolve(&doc, p)).collect::<Vec<_>>());
                let declared: BTreeSet<String> =
                    params.filter(|p| p["in"] == "path").map(|p| p["name"].as_str().unwrap().to_owned()).collect();
                assert_eq!(declared, wanted, "{method} {path}: path parameters");
                let id = op["operationId"].as_str().unwrap_or_else(|| panic!("{method} {path}: no operationId"));
                assert!(op_ids.insert(id.to_owned()), "operationId {id} twice");
                assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()), "{method} {path}: no responses");
                if path != "/openapi.json" {
                    assert!(op["responses"].get("401").is_some(), "{method} {path}: no 401");
                    // Every authenticated operation can be refused for its credential's rate.
                    assert!(op["responses"].get("429").is_some(), "{method} {path}: no 429");
                }
            }
        }
        check_refs(&doc, &doc);
    }

    /// The document's app format enum is the server's list of names, and every app schema refers to it.
    #[test]
    fn app_media_formats_are_the_servers() {
        let doc = document();
        let names: Vec<&str> = doc["components"]["schemas"]["MediaFormat"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(names, crate::proto::media_streams::MediaFormat::NAMES);
        for schema in ["App", "AppCreate", "AppUpdate"] {
            let field = &doc["components"]["schemas"][schema]["properties"]["media_format"];
            assert_eq!(field["$ref"], "#/components/schemas/MediaFormat", "{schema}");
        }
        let required = doc["components"]["schemas"]["App"]["required"].as_array().unwrap();
        assert!(required.contains(&json!("media_format")), "every app shows it");
    }

    fn resolve<'a>(doc: &'a Value, v: &'a Value) -> &'a Value {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => doc.pointer(r.trim_start_matches('#')).unwrap_or_else(|| panic!("unresolved {r}")),
            None => v,
        }
    }

    fn check_refs(doc: &Value, v: &Value) {
        match v {
            Value::Object(m) => {
                if let Some(r) = m.get("$ref").and_then(Value::as_str) {
                    assert!(doc.pointer(r.trim_start_matches('#')).is_some(), "unresolved $ref {r}");
                }
                m.values().for_each(|x| check_refs(doc, x));
            }
            Value::Array(a) => a.iter().for_each(|x| check_refs(doc, x)),
            _ => {}
        }
    }
}
