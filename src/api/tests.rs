//! Router tests over a real SQLite file, without sockets (`tower::ServiceExt::oneshot`). The same checks over real
//! HTTP against the real binary, with calls, are in `tests/e2e_api.rs`.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, to_bytes};
use axum::http::{HeaderMap, Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::{ApiState, router, routing::Nudge};
use crate::call::record::{CallRecord, EndReason};
use crate::config::Config;
use crate::store::sqlite::SqliteStore;
use crate::store::{Operator, OperatorToken, Store, TenantSlug};

const OP: &str = "operator-token-0123456789-0123456789";

struct Api {
    router: Router,
    store: Arc<dyn Store>,
    _dir: tempfile::TempDir,
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    text: String,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
    fn code(&self) -> String {
        self.json()["error"]["code"].as_str().unwrap_or_default().to_owned()
    }
}

impl Api {
    fn new() -> Api {
        Api::with_config(
            "[plans.metered]\nweight = 1\nmax_concurrent_calls = 5\ncalls_per_second = 1\nburst = 1\nmonthly_minutes = 100\nprice_per_minute_cents = 3\n",
        )
    }

    fn with_config(toml: &str) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let config = Config::from_toml("t.toml", toml).unwrap();
        let state = ApiState::new(
            Arc::clone(&store),
            OperatorToken::new(OP).unwrap(),
            config.plans.clone(),
            &config.api,
            Arc::new(crate::metrics::Metrics::default()),
            Nudge::detached(),
            super::offboard::OffboardSettings {
                grace_secs: 0,
                data_dir: dir.path().to_owned(),
                nudge: super::offboard::runner::RunnerNudge::detached(),
            },
        );
        Api { router: router(state), store, _dir: dir }
    }

    async fn send(&self, req: Request<Body>) -> Reply {
        let res = self.router.clone().oneshot(req).await.unwrap();
        let status = res.status();
        let headers = res.headers().clone();
        let bytes = to_bytes(res.into_body(), usize::MAX).await.unwrap();
        Reply { status, headers, text: String::from_utf8_lossy(&bytes).into_owned() }
    }

    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req.header(header::CONTENT_TYPE, "application/json").body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        };
        self.send(req.unwrap()).await
    }

    /// Creates tenant `id` and a key for it with `scopes`; returns the key.
    async fn tenant_with_key(&self, id: &str, scopes: &[&str]) -> String {
        let r = self.call("POST", "/v1/tenants", Some(OP), Some(json!({"id": id, "name": id}))).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        self.key(id, scopes).await
    }

    async fn key(&self, id: &str, scopes: &[&str]) -> String {
        let r = self
            .call("POST", &format!("/v1/tenants/{id}/keys"), Some(OP), Some(json!({"name": "k", "scopes": scopes})))
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
        r.json()["key"].as_str().unwrap().to_owned()
    }

    fn record(&self, tenant: &str, sid: &str, to: &str, app: &str, secs: u64) {
        let op = Operator::system("test");
        let scope = self.store.operator_scope(&op, &TenantSlug::parse(tenant).unwrap()).unwrap();
        // Answered on 2024-05-15 at 12:00 UTC, whenever the test runs.
        let now = 1_715_774_400_000 + secs * 1000;
        let record = CallRecord {
            tenant: tenant.into(),
            call_sid: sid.into(),
            sip_call_id: format!("{sid}@test"),
            from: "+15557770001".into(),
            to: to.into(),
            app: app.into(),
            invite_at_ms: now - secs * 1000 - 500,
            answer_at_ms: Some(now - secs * 1000),
            end_at_ms: now,
            duration_secs: secs,
            end_reason: EndReason::CallerBye,
            codec: "PCMU",
            transport: "sip",
            packets_in: 1,
            packets_out: 1,
            packets_lost: 0,
            dtmf_count: 0,
        };
        self.store.record_call(&scope, &record).unwrap();
    }
}

#[tokio::test]
async fn a_tenant_sets_itself_up_and_sees_only_itself() {
    let api = Api::new();
    let key = api.tenant_with_key("acme", &["read", "write"]).await;
    let r = api
        .call(
            "POST",
            "/v1/tenants/acme/apps",
            Some(&key),
            Some(json!({
                "name": "receptionist",
                "stream_url": "wss://agent.example/twilio",
                "auth_header": "Bearer 0123456789abcdefSECRET",
                "codecs": ["PCMA"],
                "custom_parameters": {"lang": "en", "tier": 2}
            })),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    let app = r.json();
    assert_eq!(app["auth_header"], "****CRET", "masked");
    assert!(!r.text.contains("0123456789abcdef"), "the header is never returned in full");
    assert_eq!(app["custom_parameters"], json!({"lang": "en", "tier": "2"}));
    assert_eq!(app["codecs"], json!(["PCMA"]));
    let app_id = app["id"].as_str().unwrap().to_owned();

    let r =
        api.call("POST", "/v1/numbers", Some(&key), Some(json!({"number": "+1 555 123 0001", "app_id": app_id}))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json()["number"], "+15551230001", "normalised");
    let r = api.call("GET", "/v1/numbers/+15551230001", Some(&key), None).await;
    assert_eq!((r.status, r.json()["app_id"].clone()), (StatusCode::OK, json!(app_id)));
    let r = api.call("GET", "/v1/tenants/acme/numbers/%2B15551230001", Some(&key), None).await;
    assert_eq!(r.status, StatusCode::OK, "a percent-encoded + works too: {}", r.text);

    // Another tenant: 409 on the number, 404 on every id of acme's, nothing of acme's in its listings.
    let other = api.tenant_with_key("bravo", &["read", "write"]).await;
    let r = api.call("POST", "/v1/apps", Some(&other), Some(json!({"name": "b", "kind": "echo"}))).await;
    let bravo_app = r.json()["id"].as_str().unwrap().to_owned();
    let r = api
        .call("POST", "/v1/numbers", Some(&other), Some(json!({"number": "+15551230001", "app_id": bravo_app})))
        .await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "number_taken".into()));
    assert!(!r.text.contains("acme"));
    for path in [
        format!("/v1/apps/{app_id}"),
        format!("/v1/tenants/bravo/apps/{app_id}"),
        format!("/v1/tenants/acme/apps/{app_id}"),
        "/v1/tenants/acme".to_owned(),
        "/v1/tenants/acme/apps".to_owned(),
        "/v1/numbers/+15551230001".to_owned(),
    ] {
        let r = api.call("GET", &path, Some(&other), None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}: {}", r.text);
        assert!(!r.text.contains("acme") && !r.text.contains(&app_id), "{path}: {}", r.text);
    }
    let made_up = api.call("GET", "/v1/tenants/nobody", Some(&other), None).await;
    let real = api.call("GET", "/v1/tenants/acme", Some(&other), None).await;
    assert_eq!(made_up.text, real.text, "another tenant is answered exactly like one that does not exist");
    let r = api.call("GET", "/v1/apps", Some(&other), None).await;
    assert!(!r.text.contains(&app_id));

    // A key reads its own tenant, but cannot change it or reach operator routes.
    let r = api.call("GET", "/v1/tenants/acme", Some(&key), None).await;
    assert_eq!(r.json()["id"], "acme");
    let r = api.call("PATCH", "/v1/tenants/acme", Some(&key), Some(json!({"plan": "enterprise"}))).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    let r = api.call("GET", "/v1/tenants", Some(&key), None).await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);

    // The audit log names who did what.
    let r = api.call("GET", "/v1/audit", Some(&key), None).await;
    let audit = r.json();
    let actions: Vec<&str> = audit["items"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    for a in ["tenant.create", "key.create", "app.create", "number.claim"] {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
}

#[tokio::test]
async fn an_apps_media_format_is_chosen_shown_changed_and_checked() {
    let api = Api::new();
    let key = api.tenant_with_key("acme", &["read", "write"]).await;
    let create = |name: &str, extra: Value| {
        let mut body = json!({"name": name, "stream_url": "wss://agent.example/twilio"});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let r = api.call("POST", "/v1/apps", Some(&key), Some(create("wide", json!({"media_format": "l16_16k"})))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    assert_eq!(r.json()["media_format"], "l16_16k");
    let wide = r.json()["id"].as_str().unwrap().to_owned();
    let r = api.call("POST", "/v1/apps", Some(&key), Some(create("plain", json!({})))).await;
    assert_eq!((r.status, r.json()["media_format"].clone()), (StatusCode::CREATED, json!("mulaw_8k")), "the default");
    let plain = r.json()["id"].as_str().unwrap().to_owned();
    let r = api.call("POST", "/v1/apps", Some(&key), Some(json!({"name": "e", "kind": "echo"}))).await;
    assert_eq!(r.json()["media_format"], "mulaw_8k", "an echo app has one too: {}", r.text);

    // Shown in GET and in the listing.
    let r = api.call("GET", &format!("/v1/apps/{wide}"), Some(&key), None).await;
    assert_eq!(r.json()["media_format"], "l16_16k");
    let listed = api.call("GET", "/v1/tenants/acme/apps", Some(OP), None).await.json();
    let formats: Vec<(String, String)> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| (a["name"].as_str().unwrap().to_owned(), a["media_format"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(
        formats,
        [("e".into(), "mulaw_8k".into()), ("plain".into(), "mulaw_8k".into()), ("wide".into(), "l16_16k".into())]
    );

    // Changed by PATCH; a PATCH of another field keeps it.
    let r = api.call("PATCH", &format!("/v1/apps/{plain}"), Some(&key), Some(json!({"media_format": "l16_16k"}))).await;
    assert_eq!((r.status, r.json()["media_format"].clone()), (StatusCode::OK, json!("l16_16k")), "{}", r.text);
    let r = api.call("PATCH", &format!("/v1/apps/{plain}"), Some(&key), Some(json!({"name": "plain-2"}))).await;
    assert_eq!((r.json()["name"].clone(), r.json()["media_format"].clone()), (json!("plain-2"), json!("l16_16k")));
    let r = api.call("PATCH", &format!("/v1/apps/{wide}"), Some(&key), Some(json!({"media_format": "mulaw_8k"}))).await;
    assert_eq!(r.json()["media_format"], "mulaw_8k");
    let audit = api.call("GET", "/v1/audit", Some(&key), None).await.json();
    let change = audit["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "app.update" && e["target"] == json!(wide))
        .expect("the change is audited");
    assert_eq!(change["detail"]["media_format"], json!({"from": "l16_16k", "to": "mulaw_8k"}));

    // Anything else is 400 on the field, on create and on update, and changes nothing.
    for (method, path, body) in [
        ("POST", "/v1/apps".to_owned(), create("x", json!({"media_format": "l16"}))),
        ("POST", "/v1/apps".to_owned(), create("x", json!({"media_format": "L16_16K"}))),
        ("POST", "/v1/apps".to_owned(), create("x", json!({"media_format": 16000}))),
        ("PATCH", format!("/v1/apps/{wide}"), json!({"media_format": "opus"})),
        ("PATCH", format!("/v1/apps/{wide}"), json!({"media_format": ["l16_16k"]})),
    ] {
        let r = api.call(method, &path, Some(&key), Some(body.clone())).await;
        assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid".into()), "{body}: {}", r.text);
        assert_eq!(r.json()["error"]["field"], "media_format", "{body}: {}", r.text);
    }
    let r = api.call("POST", "/v1/apps", Some(&key), Some(create("x", json!({"media_format": "l16"})))).await;
    assert_eq!(r.json()["error"]["message"], "\"l16\" is not one of \"mulaw_8k\", \"l16_16k\"");
    assert_eq!(api.call("GET", "/v1/apps", Some(&key), None).await.json()["items"].as_array().unwrap().len(), 3);
    let r = api.call("GET", &format!("/v1/apps/{wide}"), Some(&key), None).await;
    assert_eq!(r.json()["media_format"], "mulaw_8k", "the refused update changed nothing");
}

#[tokio::test]
async fn credentials_and_permissions() {
    let api = Api::new();
    let rw = api.tenant_with_key("acme", &["read", "write"]).await;
    let ro = api.key("acme", &["read"]).await;
    let app = json!({"name": "e", "kind": "echo"});
    for (token, want) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("garbage"), StatusCode::UNAUTHORIZED),
        (Some("fvk_aaaaaaaa_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"), StatusCode::UNAUTHORIZED),
        (Some(ro.as_str()), StatusCode::FORBIDDEN),
        (Some(rw.as_str()), StatusCode::CREATED),
    ] {
        let r = api.call("POST", "/v1/apps", token, Some(app.clone())).await;
        assert_eq!(r.status, want, "{token:?}: {}", r.text);
        if want == StatusCode::UNAUTHORIZED {
            assert_eq!(r.code(), "unauthorized");
            assert_eq!(r.headers.get(header::WWW_AUTHENTICATE).unwrap(), "Bearer");
        }
    }
    // A read-only key is refused before its input is read: 403, not 400, for a bad body.
    let r = api.call("POST", "/v1/apps", Some(&ro), Some(json!({"bogus": 1}))).await;
    assert_eq!((r.status, r.code()), (StatusCode::FORBIDDEN, "read_only".into()));
    assert_eq!(api.call("GET", "/v1/apps", Some(&ro), None).await.status, StatusCode::OK);

    // Revocation is effective on the next request.
    let prefix = &ro[..12];
    let r = api.call("DELETE", &format!("/v1/keys/{prefix}"), Some(&rw), None).await;
    assert_eq!((r.status, r.json()["status"].clone()), (StatusCode::OK, json!("revoked")));
    assert_eq!(api.call("GET", "/v1/apps", Some(&ro), None).await.status, StatusCode::UNAUTHORIZED);

    // Listing shows prefix, scopes, status and the stale flag, never a secret.
    let r = api.call("GET", "/v1/keys", Some(&rw), None).await;
    let keys = r.json();
    assert_eq!(keys["stale_after_days"], 30);
    assert_eq!(keys["items"].as_array().unwrap().len(), 2);
    assert!(!r.text.contains(&rw[13..]) && !r.text.contains(&ro[13..]));
    let revoked = keys["items"].as_array().unwrap().iter().find(|k| k["prefix"] == prefix).unwrap();
    assert_eq!((revoked["status"].clone(), revoked["scopes"].clone()), (json!("revoked"), json!(["read"])));
    let live = keys["items"].as_array().unwrap().iter().find(|k| k["prefix"] != prefix).unwrap();
    assert_eq!((live["stale"].clone(), live["last_used_at_ms"].is_i64()), (json!(false), true));

    // The operator on a short-form route must name the tenant.
    let r = api.call("GET", "/v1/apps", Some(OP), None).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "tenant_required".into()));
    let r = api.call("GET", "/v1/tenants/acme/apps", Some(OP), None).await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test]
async fn bad_input_is_a_json_error_naming_the_field() {
    let api = Api::new();
    let key = api.tenant_with_key("acme", &["read", "write"]).await;
    let raw = |body: &'static str, ctype: Option<&'static str>| {
        let mut req =
            Request::builder().method("POST").uri("/v1/apps").header(header::AUTHORIZATION, format!("Bearer {key}"));
        if let Some(c) = ctype {
            req = req.header(header::CONTENT_TYPE, c);
        }
        req.body(Body::from(body)).unwrap()
    };
    let r = api.send(raw("{\"name\": ", Some("application/json"))).await;
    assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "malformed_json".into()));
    assert_eq!(r.headers.get(header::CONTENT_TYPE).unwrap(), "application/json");
    let r = api.send(raw("{\"name\": \"x\"}", None)).await;
    assert_eq!((r.status, r.code()), (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type".into()));
    let r = api.send(raw("{\"name\": \"x\", \"kind\": \"echo\"}", Some("application/json; charset=utf-8"))).await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);

    for (body, field) in [
        (json!({"name": "a", "stream_url": "http://agent/"}), "stream_url"),
        (json!({"name": "a", "stream_url": "ws://agent/", "codecs": ["G729"]}), "codecs[0]"),
        (
            json!({"name": "a", "stream_url": "ws://agent/", "custom_parameters": {"to_number": "1"}}),
            "custom_parameters",
        ),
        (json!({"name": "a", "stream_url": "ws://agent/", "custom_parameters": {"k": [1]}}), "custom_parameters.k"),
        (json!({"name": "a", "stream_url": "ws://agent/", "colour": "red"}), "colour"),
        (json!({"stream_url": "ws://agent/"}), "name"),
        (json!({"name": 5, "stream_url": "ws://agent/"}), "name"),
        (json!({"name": " padded", "kind": "echo"}), "name"),
    ] {
        let r = api.call("POST", "/v1/apps", Some(&key), Some(body.clone())).await;
        assert_eq!((r.status, r.code()), (StatusCode::BAD_REQUEST, "invalid".into()), "{body}: {}", r.text);
        assert_eq!(r.json()["error"]["field"], field, "{body}: {}", r.text);
    }
    let r = api.call("POST", "/v1/numbers", Some(&key), Some(json!({"number": "call me", "app_id": "app_x"}))).await;
    assert_eq!(r.json()["error"]["field"], "number");
    let r = api.call("GET", "/v1/calls?limit=0", Some(&key), None).await;
    assert_eq!(r.json()["error"]["field"], "limit");
    let r = api.call("GET", "/v1/calls?cursor=bm9wZQ", Some(&key), None).await;
    assert_eq!(r.json()["error"]["field"], "cursor");
    let r = api.call("GET", "/v1/usage?form=csv", Some(&key), None).await;
    assert_eq!(r.json()["error"]["field"], "form", "an unknown query parameter is named");
    let r = api.call("GET", "/v1/invoices?period=2024-13", Some(&key), None).await;
    assert_eq!(r.json()["error"]["field"], "period");
    let r = api.call("POST", "/v1/tenants", Some(OP), Some(json!({"id": "x", "name": "X", "plan": "platinum"}))).await;
    assert_eq!((r.status, r.json()["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("plan")));

    let big = format!("{{\"name\": \"{}\"}}", "a".repeat(super::extract::MAX_BODY_BYTES));
    let req = Request::builder()
        .method("POST")
        .uri("/v1/apps")
        .header(header::AUTHORIZATION, format!("Bearer {key}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(big))
        .unwrap();
    let r = api.send(req).await;
    assert_eq!((r.status, r.code()), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large".into()));

    let r = api.call("GET", "/v1/nothing/here", Some(&key), None).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found".into()));
    let r = api.call("PUT", "/v1/apps", Some(&key), None).await;
    assert_eq!((r.status, r.code()), (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed".into()));
    assert!(r.headers.get("x-request-id").is_some());
}

#[tokio::test]
async fn operator_changes_plan_and_status() {
    let api = Api::new();
    api.tenant_with_key("acme", &["read"]).await;
    let r =
        api.call("PATCH", "/v1/tenants/acme", Some(OP), Some(json!({"plan": "metered", "status": "suspended"}))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!((r.json()["plan"].clone(), r.json()["status"].clone()), (json!("metered"), json!("suspended")));
    let r = api.call("PATCH", "/v1/tenants/acme", Some(OP), Some(json!({"status": "deleted"}))).await;
    assert_eq!(r.json()["error"]["field"], "status");
    let r = api.call("PATCH", "/v1/tenants/nobody", Some(OP), Some(json!({"status": "active"}))).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = api.call("POST", "/v1/tenants", Some(OP), Some(json!({"id": "acme", "name": "again"}))).await;
    assert_eq!((r.status, r.code()), (StatusCode::CONFLICT, "tenant_exists".into()));
    let r = api.call("GET", "/v1/tenants?limit=1", Some(OP), None).await;
    assert_eq!(r.json()["items"][0]["id"], "acme");
}

#[tokio::test]
async fn usage_and_invoice_add_up_to_the_call_records() {
    let api = Api::new();
    let key = api.tenant_with_key("acme", &["read", "write"]).await;
    let r = api.call("PATCH", "/v1/tenants/acme", Some(OP), Some(json!({"plan": "metered"}))).await;
    assert_eq!(r.status, StatusCode::OK);
    api.record("acme", "CA1", "+15551230001", "rx", 61);
    api.record("acme", "CA2", "+15551230001", "rx", 29);
    api.record("acme", "CA3", "+15551230002", "echo, \"main\"", 10);
    api.tenant_with_key("bravo", &["read"]).await;
    api.record("bravo", "CA1", "+15551239999", "rx", 1000);

    let calls = api.call("GET", "/v1/calls?limit=2", Some(&key), None).await.json();
    assert_eq!(calls["items"].as_array().unwrap().len(), 2);
    let next = calls["next"].as_str().unwrap().to_owned();
    let rest = api.call("GET", &format!("/v1/calls?limit=2&cursor={next}"), Some(&key), None).await.json();
    assert_eq!((rest["items"].as_array().unwrap().len(), rest["next"].clone()), (1, Value::Null));
    let sum_calls: i64 = calls["items"]
        .as_array()
        .unwrap()
        .iter()
        .chain(rest["items"].as_array().unwrap())
        .map(|c| c["billable_secs"].as_i64().unwrap())
        .sum();
    assert_eq!(sum_calls, 100);
    let r = api.call("GET", "/v1/calls/CA2", Some(&key), None).await;
    assert_eq!(r.json()["billable_secs"], 29);

    let usage = api.call("GET", "/v1/usage?month=2024-05", Some(&key), None).await.json();
    assert_eq!(usage["total"], json!({"calls": 3, "billable_secs": 100}), "bravo's 1000 s are not acme's");
    assert_eq!(usage["apps"].as_array().unwrap().len(), 2);
    assert_eq!(usage["numbers"][0], json!({"number": "+15551230001", "calls": 2, "billable_secs": 90}));
    assert_eq!(usage["months"].as_array().unwrap().len(), 1);

    let r = api.call("GET", "/v1/usage?from=2024-05-01&to=2024-06-01&format=csv", Some(&key), None).await;
    assert_eq!(r.headers.get(header::CONTENT_TYPE).unwrap(), "text/csv; charset=utf-8");
    let lines: Vec<&str> = r.text.lines().collect();
    assert_eq!(lines[0], "day,month,app,number,calls,billable_secs");
    assert_eq!(lines.len(), 3);
    assert!(r.text.contains(",\"echo, \"\"main\"\"\",+15551230002,1,10"), "{}", r.text);
    let csv_sum: i64 = lines[1..].iter().map(|l| l.rsplit(',').next().unwrap().parse::<i64>().unwrap()).sum();
    assert_eq!(csv_sum, 100);

    let inv = api.call("GET", "/v1/invoices?period=2024-05", Some(&key), None).await.json();
    assert_eq!(inv["plan"], "metered");
    assert_eq!(inv["price_per_minute_cents"], 3);
    assert_eq!(inv["billable_secs"], 100);
    assert_eq!(inv["amount_cents"], 5, "100 s at 3 cents a minute is 5 cents (4.99..., rounded)");
    assert_eq!(inv["status"], "closed");
    assert_eq!(inv["lines"].as_array().unwrap().len(), 2);
    let inv = api.call("GET", "/v1/tenants/acme/invoices", Some(OP), None).await.json();
    assert_eq!(inv["status"], "open", "this month's invoice is to date");
    let inv = api.call("GET", "/v1/tenants/acme/invoices?period=2020-01", Some(OP), None).await.json();
    assert_eq!((inv["billable_secs"].clone(), inv["status"].clone()), (json!(0), json!("closed")));
}

#[tokio::test]
async fn openapi_is_served() {
    let api = Api::new();
    let r = api.call("GET", "/openapi.json", None, None).await;
    assert_eq!(r.status, StatusCode::OK);
    let doc = r.json();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/v1/tenants/{tenant_id}/apps"]["post"].is_object());
    assert!(doc["paths"]["/v1/apps"]["post"]["operationId"] == "createApp_own");
}

#[tokio::test]
async fn offboarding_is_the_operators_one_job_per_tenant_and_keys_see_nothing_of_it() {
    let api = Api::new();
    let acme = api.tenant_with_key("acme", &["read", "write"]).await;
    let bravo = api.tenant_with_key("bravo", &["read", "write"]).await;
    let routes = ["/offboard", "/offboard/export", "/offboard/invoice", "/offboard/certificate"];

    // Keys: 404 on every offboarding route, their own tenant's included, before and after a job exists, exactly
    // as a tenant that does not exist; the POST starts nothing.
    let nobody = api.call("GET", "/v1/tenants/nobody/offboard", Some(&acme), None).await;
    assert_eq!(nobody.status, StatusCode::NOT_FOUND);
    for key in [&acme, &bravo] {
        for tenant in ["acme", "bravo"] {
            let r = api.call("POST", &format!("/v1/tenants/{tenant}/offboard"), Some(key), None).await;
            assert_eq!((r.status, r.text.clone()), (StatusCode::NOT_FOUND, nobody.text.clone()), "POST as a key");
            for route in routes {
                let r = api.call("GET", &format!("/v1/tenants/{tenant}{route}"), Some(key), None).await;
                assert_eq!(r.status, StatusCode::NOT_FOUND, "{tenant}{route}: {}", r.text);
            }
        }
    }
    let op = Operator::system("test");
    assert!(api.store.offboard_job(&op, &TenantSlug::parse("acme").unwrap()).is_err(), "no job was started");
    // No short form for keys either.
    let r = api.call("POST", "/v1/offboard", Some(&acme), None).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // No credentials: 401 first.
    let r = api.call("POST", "/v1/tenants/acme/offboard", None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);

    // The operator: bad bodies are refused before anything starts; an empty body or {} is fine.
    let r = api.call("POST", "/v1/tenants/acme/offboard", Some(OP), Some(json!({"grace": 5}))).await;
    assert_eq!((r.status, r.json()["error"]["field"].clone()), (StatusCode::BAD_REQUEST, json!("grace")));
    let raw = Request::builder()
        .method("POST")
        .uri("/v1/tenants/acme/offboard")
        .header(header::AUTHORIZATION, format!("Bearer {OP}"))
        .body(Body::from("now please"))
        .unwrap();
    assert_eq!(api.send(raw).await.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let big = Request::builder()
        .method("POST")
        .uri("/v1/tenants/acme/offboard")
        .header(header::AUTHORIZATION, format!("Bearer {OP}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(vec![b' '; 300 * 1024]))
        .unwrap();
    let r = api.send(big).await;
    assert_eq!((r.status, r.code()), (StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large".into()), "a JSON error");
    assert!(api.store.offboard_job(&op, &TenantSlug::parse("acme").unwrap()).is_err());
    let r = api.call("POST", "/v1/tenants/nobody/offboard", Some(OP), None).await;
    assert_eq!((r.status, r.code()), (StatusCode::NOT_FOUND, "not_found".into()));

    let first = api.call("POST", "/v1/tenants/acme/offboard", Some(OP), Some(json!({}))).await;
    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text);
    assert_eq!(first.headers.get(header::LOCATION).unwrap(), "/v1/tenants/acme/offboard");
    let job = first.json();
    assert_eq!(
        (job["tenant"].clone(), job["status"].clone(), job["step"].clone()),
        (json!("acme"), json!("running"), json!("suspend"))
    );
    assert_eq!(job["started_by"], "operator");
    assert_eq!(job["steps"].as_array().unwrap().len(), 8);
    assert_eq!(job["steps"][0]["state"], "running");
    assert_eq!(job["steps"][1]["state"], "pending");
    assert_eq!(
        job["links"],
        json!({"self": "/v1/tenants/acme/offboard", "export": null, "final_invoice": null, "certificate": null})
    );
    let again = api.call("POST", "/v1/tenants/acme/offboard", Some(OP), None).await;
    assert_eq!(again.status, StatusCode::ACCEPTED);
    assert_eq!(again.json(), job, "the same job, not a second one");
    let got = api.call("GET", "/v1/tenants/acme/offboard", Some(OP), None).await;
    assert_eq!((got.status, got.json()), (StatusCode::OK, job));
    // Nothing to download yet (no runner here).
    for route in &routes[1..] {
        let r = api.call("GET", &format!("/v1/tenants/acme{route}"), Some(OP), None).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{route}: {}", r.text);
    }
    let r = api.call("GET", "/v1/tenants/bravo/offboard", Some(OP), None).await;
    assert_eq!(
        (r.status, r.json()["error"]["message"].clone()),
        (StatusCode::NOT_FOUND, json!("offboarding job not found"))
    );
    // The audit log has who started it.
    let r = api.call("GET", "/v1/tenants/acme/audit", Some(OP), None).await;
    assert_eq!(r.json()["items"][0]["action"], "offboard.start");
    assert_eq!(r.json()["items"][0]["actor"], "operator");
}
