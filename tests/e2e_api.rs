//! The control plane over real HTTP, against the real binary with its real SQLite file: onboarding a tenant through
//! the API makes its number routable within a second, the call is recorded and billed, and the adversarial
//! isolation suite walks every operation of the served OpenAPI document as another tenant (and with dead keys),
//! expecting refusals and never a byte of the first tenant's data, nor of a third tenant's whose offboarding was
//! started.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::*;
use serde_json::{Value, json};

const ADMIN: &str = "e2e-operator-token-0123456789abcdef0123";
const SIPP_TIMEOUT: Duration = Duration::from_secs(30);
/// Rate limits no test here reaches except the one about them: the isolation suite sends hundreds of requests with
/// one key as fast as it can, and `wait_for_calls` polls every 20 ms.
const UNLIMITED: &str = "[api]\nrequests_per_second = 1000000\nburst = 1000000\n";

struct Res {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Res {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {} {}", self.status, self.body))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

#[derive(Clone, Copy)]
struct Api(SocketAddr);

impl Api {
    fn raw(&self, method: &str, path: &str, token: Option<&str>, body: Option<(&str, &[u8])>) -> Res {
        let r = http_call(self.0, method, path, token, body, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("{method} {path}: no HTTP answer"));
        Res { status: r.status, headers: r.headers, body: r.body }
    }
    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> Res {
        let text = body.map(|b| b.to_string());
        self.raw(method, path, token, text.as_deref().map(|t| ("application/json", t.as_bytes())))
    }
    /// A call that must answer `status`; its JSON body.
    fn expect(&self, status: u16, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Value {
        let r = self.call(method, path, token, body.as_ref());
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        if r.body.is_empty() { Value::Null } else { r.json() }
    }
}

fn start_server(config: &str) -> Server {
    Server::start_with(
        config,
        ServerOptions { env: vec![("FAIRVOX_ADMIN_TOKEN".into(), ADMIN.into())], ..Default::default() },
    )
}

fn key_for(api: Api, tenant: &str, scopes: &[&str], expires_at_ms: Option<u64>) -> String {
    key_with(api, ADMIN, tenant, scopes, expires_at_ms)
}

fn key_with(api: Api, operator: &str, tenant: &str, scopes: &[&str], expires_at_ms: Option<u64>) -> String {
    let mut body = json!({"name": format!("key-{}", scopes.join("-")), "scopes": scopes});
    if let Some(at) = expires_at_ms {
        body["expires_at_ms"] = json!(at);
    }
    let k = api.expect(201, "POST", &format!("/v1/tenants/{tenant}/keys"), Some(operator), Some(body));
    k["key"].as_str().unwrap().to_owned()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// The JSONL call records the server also writes.
fn jsonl_records(server: &Server) -> Vec<Value> {
    std::fs::read_to_string(server.data_dir().join("call-records.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Waits until the tenant's `GET /calls` lists `n` calls; returns them.
fn wait_for_calls(api: Api, token: &str, n: usize) -> Vec<Value> {
    let mut items = Vec::new();
    wait_until(Duration::from_secs(10), || {
        items = api.expect(200, "GET", "/v1/calls", Some(token), None)["items"].as_array().unwrap().clone();
        items.len() >= n
    });
    items
}

#[test]
fn a_tenant_onboarded_over_http_takes_a_call_within_a_second_and_is_billed_for_it() {
    let agent = Agent::start();
    let server = start_server(UNLIMITED);
    let api = Api(server.http_addr());

    api.expect(
        201,
        "POST",
        "/v1/tenants",
        Some(ADMIN),
        Some(json!({"id": "acme", "name": "Acme Dental", "plan": "pro"})),
    );
    let key = key_for(api, "acme", &["read", "write"], None);
    let app = api.expect(
        201,
        "POST",
        "/v1/tenants/acme/apps",
        Some(&key),
        Some(json!({
            "name": "receptionist",
            "stream_url": agent.url(),
            "auth_header": "Bearer agent-secret-0123456789",
            "custom_parameters": {"lang": "fr"},
        })),
    );
    assert_eq!(app["auth_header"], "****6789");
    let app_id = app["id"].as_str().unwrap();
    api.expect(
        201,
        "POST",
        "/v1/tenants/acme/numbers",
        Some(&key),
        Some(json!({"number": ACME_STREAM_NUMBER, "app_id": app_id})),
    );
    let claimed = Instant::now();

    // Another tenant cannot have the number.
    api.expect(201, "POST", "/v1/tenants", Some(ADMIN), Some(json!({"id": "bravo", "name": "Bravo"})));
    let bravo = key_for(api, "bravo", &["read", "write"], None);
    let b_app = api.expect(201, "POST", "/v1/apps", Some(&bravo), Some(json!({"name": "e", "kind": "echo"})));
    let r = api.call(
        "POST",
        "/v1/numbers",
        Some(&bravo),
        Some(&json!({"number": ACME_STREAM_NUMBER, "app_id": b_app["id"]})),
    );
    assert_eq!((r.status, r.json()["error"]["code"].clone()), (409, json!("number_taken")));

    // Live for new calls within a second of the claim.
    std::thread::sleep(Duration::from_secs(1).saturating_sub(claimed.elapsed()));
    let sipp = Sipp::new(&server, "uac_pcmu_media.xml").service(&ACME_STREAM_NUMBER[1..]);
    let run = sipp.spawn(SIPP_TIMEOUT);
    let start = agent.wait_for_event("start", Duration::from_secs(10)).expect("the agent got the call");
    run.wait().assert_success("the call to the number claimed over the API");
    assert_eq!(start.msg.pointer("/start/customParameters/lang"), Some(&json!("fr")), "{}", start.msg);
    assert_eq!(start.msg.pointer("/start/accountSid"), Some(&json!("acme")));
    let conn = agent.connections().remove(0);
    assert!(
        conn.headers.iter().any(|(k, v)| k == "authorization" && v == "Bearer agent-secret-0123456789"),
        "the agent got the app's auth header: {:?}",
        conn.headers
    );

    // The call record is in the API, as in the JSONL file, and billed.
    let calls = wait_for_calls(api, &key, 1);
    assert_eq!(calls.len(), 1);
    let call = &calls[0];
    let jsonl = jsonl_records(&server);
    assert_eq!(jsonl.len(), 1);
    assert_eq!(call["call_sid"], jsonl[0]["call_sid"]);
    assert_eq!(call["to"], ACME_STREAM_NUMBER);
    assert_eq!(call["app"], "receptionist");
    assert_eq!(call["billable_secs"], jsonl[0]["duration_secs"]);
    assert!(call["billable_secs"].as_i64().unwrap() >= 3, "{call}");
    let one = api.expect(200, "GET", &format!("/v1/calls/{}", call["call_sid"].as_str().unwrap()), Some(&key), None);
    assert_eq!(&one, call);

    let month = &call["usage_day"].as_str().unwrap()[..7];
    let usage = api.expect(200, "GET", &format!("/v1/usage?month={month}"), Some(&key), None);
    let call_sum: i64 = calls.iter().map(|c| c["billable_secs"].as_i64().unwrap()).sum();
    assert_eq!(usage["total"]["billable_secs"].as_i64(), Some(call_sum), "usage sums to the call records exactly");
    assert_eq!(usage["rows"][0]["number"], ACME_STREAM_NUMBER);
    assert_eq!(usage["rows"][0]["app"], "receptionist");
    let csv = api.call("GET", &format!("/v1/usage?month={month}&format=csv"), Some(&key), None);
    assert_eq!(csv.header("content-type"), Some("text/csv; charset=utf-8"));
    assert!(csv.body.contains(&format!(",receptionist,{ACME_STREAM_NUMBER},1,{call_sum}")), "{}", csv.body);
    let invoice = api.expect(200, "GET", &format!("/v1/invoices?period={month}"), Some(&key), None);
    assert_eq!(invoice["billable_secs"].as_i64(), Some(call_sum));
    assert_eq!(invoice["amount_cents"], 0, "built-in plans are priced 0 until the operator sets a price");
    // The tenant made over the API has its metrics like a config tenant: its latency budget is set from its plan.
    let scrape = api.call("GET", "/metrics", Some(ADMIN), None).body;
    assert!(
        scrape.lines().any(|l| l.starts_with("fairvox_tenant_latency_budget_seconds{tenant=\"acme\"} 0.04")),
        "{scrape}"
    );
    // Bravo was billed nothing.
    let b_usage = api.expect(200, "GET", &format!("/v1/usage?month={month}"), Some(&bravo), None);
    assert_eq!(b_usage["total"]["billable_secs"], 0);

    // Releasing the number makes it unknown to the SIP path within a second, and bravo may then claim it.
    api.expect(200, "DELETE", &format!("/v1/numbers/{ACME_STREAM_NUMBER}"), Some(&key), None);
    api.expect(
        201,
        "POST",
        "/v1/numbers",
        Some(&bravo),
        Some(json!({"number": ACME_STREAM_NUMBER, "app_id": b_app["id"]})),
    );
    std::thread::sleep(Duration::from_secs(1));
    Sipp::builtin("uac", Some(server.sip_addr()))
        .service(&ACME_STREAM_NUMBER[1..])
        .run(SIPP_TIMEOUT)
        .assert_success("now bravo's echo");
    let b_calls = wait_for_calls(api, &bravo, 1);
    assert_eq!(b_calls[0]["app"], "e");
    assert_eq!(wait_for_calls(api, &key, 1).len(), 1, "acme still has its one call");
}

#[test]
fn keys_tokens_and_bad_input_over_http() {
    // No FAIRVOX_ADMIN_TOKEN: the server generates one into the data dir, 0600, and never logs it.
    let server = Server::start("");
    let api = Api(server.http_addr());
    let path = server.data_dir().join("admin-token");
    let token = std::fs::read_to_string(&path).expect("admin-token written").trim().to_owned();
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    api.expect(201, "POST", "/v1/tenants", Some(&token), Some(json!({"id": "acme", "name": "Acme"})));
    assert!(server.wait_for_log("admin-token", Duration::from_secs(2)), "the log says where the token is");
    assert!(!server.log().contains(&token), "the log never holds the token");

    let rw = key_with(api, &token, "acme", &["read", "write"], None);
    let ro = key_with(api, &token, "acme", &["read"], None);
    assert!(!server.log().contains(&rw[13..]), "nor a key");

    // A read-only key reads, and gets 403 on a write.
    api.expect(200, "GET", "/v1/apps", Some(&ro), None);
    let r = api.call("POST", "/v1/apps", Some(&ro), Some(&json!({"name": "x", "kind": "echo"})));
    assert_eq!((r.status, r.json()["error"]["code"].clone()), (403, json!("read_only")));

    // Malformed JSON is a 400 with a JSON error, as is a wrong field.
    let r = api.raw("POST", "/v1/apps", Some(&rw), Some(("application/json", b"{\"name\": \"x\",")));
    assert_eq!(r.status, 400);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["error"]["code"], "malformed_json");
    let r = api.call("POST", "/v1/apps", Some(&rw), Some(&json!({"name": "x", "stream_url": "https://agent/"})));
    assert_eq!((r.status, r.json()["error"]["field"].clone()), (400, json!("stream_url")));
    let big = vec![b' '; 300 * 1024];
    let r = api.raw("POST", "/v1/apps", Some(&rw), Some(("application/json", &big)));
    assert_eq!((r.status, r.json()["error"]["code"].clone()), (413, json!("payload_too_large")));
    assert!(r.header("x-request-id").is_some());

    // Revocation is effective on the very next request.
    api.expect(200, "GET", "/v1/apps", Some(&rw), None);
    api.expect(200, "DELETE", &format!("/v1/keys/{}", &ro[..12]), Some(&rw), None);
    let r = api.call("GET", "/v1/apps", Some(&ro), None);
    assert_eq!((r.status, r.json()["error"]["code"].clone()), (401, json!("unauthorized")));
    let keys = api.expect(200, "GET", "/v1/keys", Some(&rw), None);
    let listed: Vec<(Value, Value)> =
        keys["items"].as_array().unwrap().iter().map(|k| (k["prefix"].clone(), k["status"].clone())).collect();
    assert!(listed.contains(&(json!(&ro[..12]), json!("revoked"))), "{listed:?}");
    assert!(listed.contains(&(json!(&rw[..12]), json!("active"))), "{listed:?}");
}

#[test]
fn each_key_has_its_own_rate_limit_answered_429_with_retry_after() {
    // 1 request a second with a burst of 5 per key; the operator's limit is far away. (Each burst below is sent
    // well within the second it takes one token to come back.)
    let server = start_server(
        "[api]\nrequests_per_second = 1\nburst = 5\noperator_requests_per_second = 1000\noperator_burst = 1000\n",
    );
    let api = Api(server.http_addr());
    for (id, name) in [("alpha", "Alpha Secret Corp"), ("bravo", "Bravo")] {
        api.expect(201, "POST", "/v1/tenants", Some(ADMIN), Some(json!({"id": id, "name": name})));
    }
    let alpha_app = api.expect(
        201,
        "POST",
        "/v1/tenants/alpha/apps",
        Some(ADMIN),
        Some(json!({"name": "alpha-secret-app", "kind": "echo"})),
    );
    let alpha_app_id = alpha_app["id"].as_str().unwrap().to_owned();
    let a1 = key_for(api, "alpha", &["read", "write"], None);
    let a2 = key_for(api, "alpha", &["read"], None);
    let b1 = key_for(api, "bravo", &["read", "write"], None);

    // A made-up secret under bravo's (public) key prefix is 401 every time, never 429, and spends nothing of
    // bravo's budget: authentication comes before the limit.
    let forged = format!("{}_{}", &b1[..12], "a".repeat(b1.len() - 13));
    for _ in 0..12 {
        let r = api.call("GET", "/v1/apps", Some(&forged), None);
        assert_eq!((r.status, r.json()["error"]["code"].clone()), (401, json!("unauthorized")), "{}", r.body);
    }

    // Alpha's first key: its burst passes, the next request is 429 with Retry-After and the JSON error.
    let burst_started = Instant::now();
    for i in 0..5 {
        let r = api.call("GET", "/v1/apps", Some(&a1), None);
        assert_eq!(r.status, 200, "request {i} of the burst: {}", r.body);
    }
    let limited = api.call("GET", "/v1/apps", Some(&a1), None);
    assert!(burst_started.elapsed() < Duration::from_millis(900), "the burst was sent faster than the refill");
    assert_eq!(limited.status, 429, "{}", limited.body);
    assert_eq!(limited.header("content-type"), Some("application/json"));
    let retry_after: u64 = limited.header("retry-after").expect("Retry-After").parse().expect("whole seconds");
    assert_eq!(retry_after, 1, "at 1 per second the next token is at most 1 s away (whole seconds, at least 1)");
    let error = &limited.json()["error"];
    assert_eq!(error["code"], "rate_limited");
    assert!(error["message"].as_str().unwrap().contains("retry after 1 s"), "{error}");
    // Even a write it may do is refused before its body is looked at.
    let r = api.call("POST", "/v1/apps", Some(&a1), Some(&json!({"bogus": true})));
    assert_eq!(r.status, 429, "{}", r.body);

    // Alpha's other key, bravo's key and the operator are unaffected: the budget is per key.
    api.expect(200, "GET", "/v1/apps", Some(&a2), None);
    for _ in 0..5 {
        api.expect(200, "GET", "/v1/apps", Some(&b1), None);
    }
    api.expect(200, "GET", "/v1/tenants/alpha/apps", Some(ADMIN), None);

    // Bravo, now out of budget too, gets the same 429 on alpha's paths as on its own: nothing of alpha's in it,
    // and it does not tell alpha's app from one that does not exist.
    let own = api.call("GET", "/v1/tenants/bravo/apps", Some(&b1), None);
    let alphas = api.call("GET", &format!("/v1/tenants/alpha/apps/{alpha_app_id}"), Some(&b1), None);
    let nothing = api.call("GET", "/v1/tenants/nobody/apps/app_aaaaaaaaaaaaaaaa", Some(&b1), None);
    for r in [&own, &alphas, &nothing] {
        assert_eq!(r.status, 429, "{}", r.body);
        assert_eq!(r.json()["error"]["code"], "rate_limited");
        for secret in ["alpha", "Alpha Secret Corp", "alpha-secret-app", alpha_app_id.as_str()] {
            assert!(!r.body.contains(secret), "a 429 reveals {secret:?}: {}", r.body);
        }
    }
    assert_eq!(alphas.json()["error"]["code"], nothing.json()["error"]["code"]);

    // After Retry-After, requests pass again.
    std::thread::sleep(Duration::from_secs(retry_after));
    api.expect(200, "GET", "/v1/apps", Some(&a1), None);

    // The refusals are counted per tenant in /metrics (operator only).
    let scrape = api.call("GET", "/metrics", Some(ADMIN), None);
    assert_eq!(scrape.status, 200);
    let counted = |tenant: &str| -> f64 {
        let prefix = format!("fairvox_api_rate_limited_total{{tenant=\"{tenant}\"}} ");
        scrape.body.lines().find_map(|l| l.strip_prefix(&prefix)?.parse().ok()).unwrap_or(0.0)
    };
    assert_eq!(counted("alpha"), 2.0, "{}", scrape.body);
    assert_eq!(counted("bravo"), 3.0, "{}", scrape.body);
}

// ------------------------------------------------------------------------------------------ isolation suite

/// One tenant's identifiers.
struct Seeded {
    tenant: String,
    app_id: String,
    app_name: String,
    number: String,
    released_number: String,
    trunk_id: String,
    trunk_name: String,
    call_sid: String,
    invite_at_ms: i64,
    key: String,
    read_only_key: String,
    revoked_key: String,
    expired_key: String,
}

impl Seeded {
    /// Everything that would tell another tenant something about this one.
    fn secrets(&self) -> Vec<String> {
        let mut s = vec![
            self.tenant.clone(),
            self.app_id.clone(),
            self.app_name.clone(),
            self.number.clone(),
            self.released_number.clone(),
            self.trunk_id.clone(),
            self.trunk_name.clone(),
            "203.0.113.0/24".into(),
            self.call_sid.clone(),
        ];
        for k in [&self.key, &self.read_only_key, &self.revoked_key, &self.expired_key] {
            s.push(k[..12].to_owned());
        }
        s
    }
}

fn seed_tenant(api: Api, server: &Server, tenant: &str, number: &str, released: &str, cidr: &str) -> Seeded {
    api.expect(201, "POST", "/v1/tenants", Some(ADMIN), Some(json!({"id": tenant, "name": format!("{tenant} Inc")})));
    let key = key_for(api, tenant, &["read", "write"], None);
    let read_only_key = key_for(api, tenant, &["read"], None);
    let revoked_key = key_for(api, tenant, &["read", "write"], None);
    api.expect(200, "DELETE", &format!("/v1/keys/{}", &revoked_key[..12]), Some(&key), None);
    let expired_key = key_for(api, tenant, &["read", "write"], Some(now_ms() + 1500));
    let app_name = format!("{tenant}-secret-app");
    let app = api.expect(201, "POST", "/v1/apps", Some(&key), Some(json!({"name": app_name, "kind": "echo"})));
    let app_id = app["id"].as_str().unwrap().to_owned();
    for n in [number, released] {
        api.expect(201, "POST", "/v1/numbers", Some(&key), Some(json!({"number": n, "app_id": app_id})));
    }
    api.expect(200, "DELETE", &format!("/v1/numbers/{released}"), Some(&key), None);
    std::thread::sleep(Duration::from_secs(1));
    Sipp::builtin("uac", Some(server.sip_addr()))
        .service(&number[1..])
        .pause_ms(1500)
        .run(SIPP_TIMEOUT)
        .assert_success("seed call");
    let call = wait_for_calls(api, &key, 1).remove(0);
    // The trunk comes last: its sources do not include the loopback the seed call came from.
    let trunk_name = format!("{tenant}-secret-trunk");
    let trunk =
        api.expect(201, "POST", "/v1/trunks", Some(&key), Some(json!({"name": trunk_name, "allowed_sources": [cidr]})));
    Seeded {
        tenant: tenant.into(),
        app_id,
        app_name,
        number: number.into(),
        released_number: released.into(),
        trunk_id: trunk["id"].as_str().unwrap().into(),
        trunk_name,
        call_sid: call["call_sid"].as_str().unwrap().into(),
        invite_at_ms: call["invite_at_ms"].as_i64().unwrap(),
        key,
        read_only_key,
        revoked_key,
        expired_key,
    }
}

/// What alpha has, read by the operator: must be the same before and after the suite.
fn alpha_state(api: Api) -> Vec<Value> {
    ["", "/apps", "/numbers", "/number-releases", "/trunks", "/keys", "/calls", "/usage", "/audit"]
        .iter()
        .map(|p| {
            let mut v = api.expect(200, "GET", &format!("/v1/tenants/alpha-7q{p}"), Some(ADMIN), None);
            // Staleness depends on the clock, not on what others did.
            if let Some(items) = v["items"].as_array_mut() {
                for item in items.iter_mut().filter_map(Value::as_object_mut) {
                    item.remove("stale");
                }
            }
            v
        })
        .collect()
}

/// A request of the suite: where, with what body, and which statuses are acceptable.
struct Probe {
    path: String,
    body: Option<Value>,
    allowed: &'static [u16],
}

/// The probes for one documented operation, acting as bravo against alpha (and charlie, being offboarded). Panics
/// for an operation it does not know: a new route fails this test until it has a case.
fn probes(method: &str, doc_path: &str, a: &Seeded, b: &Seeded, c: &Seeded, n: &mut u32) -> Vec<Probe> {
    *n += 1;
    let fresh = format!("+1555999{:04}", *n);
    let probe = |path: String, body: Option<Value>, allowed: &'static [u16]| Probe { path, body, allowed };
    // The offboarding routes are the operator's: 404 to a key on any tenant, its own included, and on the one
    // being offboarded (and a key's POST starts nothing: alpha's state is compared at the end).
    if let Some(rest) = doc_path.strip_prefix("/v1/tenants/{tenant_id}").filter(|r| r.starts_with("/offboard")) {
        let body = (method == "POST").then(|| json!({}));
        return [a, b, c]
            .iter()
            .map(|t| probe(format!("/v1/tenants/{}{rest}", t.tenant), body.clone(), &[404]))
            .collect();
    }
    // Top-level operator routes.
    match (method, doc_path) {
        ("POST", "/v1/tenants") => {
            return vec![probe("/v1/tenants".into(), Some(json!({"id": format!("x{n}"), "name": "X"})), &[403])];
        }
        ("GET", "/v1/tenants") => return vec![probe("/v1/tenants".into(), None, &[403])],
        ("GET", "/v1/tenants/{tenant_id}") => return vec![probe(format!("/v1/tenants/{}", a.tenant), None, &[404])],
        ("PATCH", "/v1/tenants/{tenant_id}") => {
            return vec![probe(format!("/v1/tenants/{}", a.tenant), Some(json!({"status": "suspended"})), &[404])];
        }
        _ => {}
    }
    let (canonical, suffix) = match doc_path.strip_prefix("/v1/tenants/{tenant_id}") {
        Some(rest) => (true, rest),
        None => (false, doc_path.strip_prefix("/v1").unwrap_or_else(|| panic!("unexpected path {doc_path}"))),
    };
    let calls_cursor = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "calls\u{1f}{}\u{1f}{}",
        a.invite_at_ms + 1,
        a.call_sid
    ));
    // (suffix with alpha's ids, body, statuses with bravo's own tenant in the path).
    let cases: Vec<(String, Option<Value>, &'static [u16])> = match (method, suffix) {
        ("POST", "/apps") => vec![("/apps".into(), Some(json!({"name": format!("b{n}"), "kind": "echo"})), &[201])],
        ("GET", "/apps") => vec![("/apps".into(), None, &[200])],
        ("GET" | "DELETE", "/apps/{app_id}") => vec![(format!("/apps/{}", a.app_id), None, &[404])],
        ("PATCH", "/apps/{app_id}") => vec![(format!("/apps/{}", a.app_id), Some(json!({"name": "stolen"})), &[404])],
        ("POST", "/numbers") => vec![
            ("/numbers".into(), Some(json!({"number": a.number, "app_id": b.app_id})), &[409]),
            ("/numbers".into(), Some(json!({"number": fresh, "app_id": a.app_id})), &[404]),
        ],
        ("GET", "/numbers") => vec![("/numbers".into(), None, &[200])],
        ("GET" | "DELETE", "/numbers/{number}") => vec![
            (format!("/numbers/{}", a.number), None, &[404]),
            (format!("/numbers/{}", a.released_number), None, &[404]),
        ],
        ("PATCH", "/numbers/{number}") => vec![
            (format!("/numbers/{}", a.number), Some(json!({"app_id": b.app_id})), &[404]),
            (format!("/numbers/{}", b.number), Some(json!({"app_id": a.app_id})), &[404]),
        ],
        ("GET", "/number-releases") => vec![("/number-releases".into(), None, &[200])],
        ("POST", "/trunks") => vec![("/trunks".into(), Some(json!({"name": format!("t{n}")})), &[201])],
        ("GET", "/trunks") => vec![("/trunks".into(), None, &[200])],
        ("GET" | "DELETE", "/trunks/{trunk_id}") => vec![(format!("/trunks/{}", a.trunk_id), None, &[404])],
        ("PATCH", "/trunks/{trunk_id}") => {
            vec![(format!("/trunks/{}", a.trunk_id), Some(json!({"allowed_sources": ["0.0.0.0/0"]})), &[404])]
        }
        ("POST", "/keys") => vec![("/keys".into(), Some(json!({"name": format!("k{n}"), "scopes": ["read"]})), &[201])],
        ("GET", "/keys") => vec![("/keys".into(), None, &[200])],
        ("GET" | "DELETE", "/keys/{prefix}") => vec![
            (format!("/keys/{}", &a.key[..12]), None, &[404]),
            (format!("/keys/{}", &a.revoked_key[..12]), None, &[404]),
        ],
        ("GET", "/calls") => vec![
            ("/calls".into(), None, &[200]),
            (format!("/calls?cursor={calls_cursor}"), None, &[200]),
            (format!("/calls?from={}&to={}", a.invite_at_ms - 1, a.invite_at_ms + 1), None, &[200]),
        ],
        ("GET", "/calls/{call_sid}") => vec![(format!("/calls/{}", a.call_sid), None, &[404])],
        ("GET", "/usage") => vec![
            ("/usage?from=2000-01-01&to=2001-01-01".into(), None, &[200]),
            ("/usage".into(), None, &[200]),
            ("/usage?format=csv".into(), None, &[200]),
        ],
        ("GET", "/invoices") => vec![("/invoices".into(), None, &[200])],
        ("GET", "/audit") => vec![("/audit".into(), None, &[200]), ("/audit?limit=1000".into(), None, &[200])],
        _ => panic!("no isolation case for {method} {doc_path}: add one to probes()"),
    };
    let mut out = Vec::new();
    for (rest, body, allowed) in cases {
        if canonical {
            // Alpha's tenant id in the path: 404 whatever follows.
            out.push(probe(format!("/v1/tenants/{}{rest}", a.tenant), body.clone(), &[404]));
            out.push(probe(format!("/v1/tenants/{}{rest}", b.tenant), body, allowed));
        } else {
            out.push(probe(format!("/v1{rest}"), body, allowed));
        }
    }
    out
}

/// Fills a documented path's parameters with alpha's ids (for the dead-key sweep).
fn with_alpha_ids(doc_path: &str, a: &Seeded) -> String {
    doc_path
        .replace("{tenant_id}", &a.tenant)
        .replace("{app_id}", &a.app_id)
        .replace("{number}", &a.number)
        .replace("{trunk_id}", &a.trunk_id)
        .replace("{prefix}", &a.key[..12])
        .replace("{call_sid}", &a.call_sid)
}

#[test]
fn adversarial_isolation_over_every_documented_operation() {
    let server = start_server(UNLIMITED);
    let api = Api(server.http_addr());
    let a = seed_tenant(api, &server, "alpha-7q", "+15551110001", "+15551110002", "203.0.113.0/24");
    let b = seed_tenant(api, &server, "bravo-3k", "+15552220001", "+15552220002", "198.51.100.0/24");
    // A third tenant, seeded the same way, whose offboarding is started: its job, export, final invoice and
    // certificate are probed like everything else, and nothing of it may reach bravo either.
    let c = seed_tenant(api, &server, "charlie-5x", "+15553330001", "+15553330002", "192.0.2.0/24");
    api.expect(202, "POST", "/v1/tenants/charlie-5x/offboard", Some(ADMIN), None);
    let mut offboarded = Value::Null;
    assert!(wait_until(Duration::from_secs(15), || {
        offboarded = api.expect(200, "GET", "/v1/tenants/charlie-5x/offboard", Some(ADMIN), None);
        offboarded["status"] == "finished"
    }));
    std::thread::sleep(Duration::from_millis(1600)); // alpha's and bravo's expiring keys are expired now
    let before = alpha_state(api);
    let mut secrets = a.secrets();
    secrets.extend(c.secrets());
    secrets.push(offboarded["export"]["sha256"].as_str().unwrap().to_owned());

    let doc = api.expect(200, "GET", "/openapi.json", None, None);
    let mut operations = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys().filter(|m| *m != "parameters" && !m.starts_with("x-")) {
            operations.insert((method.to_uppercase(), path.clone()));
        }
    }
    assert!(operations.len() >= 50, "the document lists every operation: {}", operations.len());

    let mut n = 0;
    let mut checked = 0;
    let mut writes = Vec::new();
    let leaks = |what: &str, res: &Res| {
        for s in &secrets {
            assert!(!res.body.contains(s.as_str()), "{what}: the answer reveals {s:?}: {} {}", res.status, res.body);
        }
    };
    for (method, path) in &operations {
        if path == "/openapi.json" {
            let res = api.call(method, path, None, None);
            leaks("GET /openapi.json", &res);
            continue;
        }
        // As bravo, with alpha's ids in the path, the query and the body.
        for p in probes(method, path, &a, &b, &c, &mut n) {
            let res = api.call(method, &p.path, Some(&b.key), p.body.as_ref());
            let what =
                format!("bravo {method} {} {}", p.path, p.body.as_ref().map(|b| b.to_string()).unwrap_or_default());
            assert!(p.allowed.contains(&res.status), "{what}: {} {} (allowed {:?})", res.status, res.body, p.allowed);
            leaks(&what, &res);
            checked += 1;
        }
        // With alpha's revoked and expired keys, charlie's keys (revoked by its offboarding), a malformed key,
        // bravo's key misspelt, and no key: 401.
        let target = with_alpha_ids(path, &a);
        let body = matches!(method.as_str(), "POST" | "PATCH").then(|| json!({"name": "x"}));
        let mangled = misspelt(&b.key);
        for token in [
            Some(a.revoked_key.as_str()),
            Some(a.expired_key.as_str()),
            Some(c.key.as_str()),
            Some(c.read_only_key.as_str()),
            Some("fvk_malformed"),
            Some(&mangled),
            None,
        ] {
            let res = api.call(method, &target, token, body.as_ref());
            let what = format!("{token:?} {method} {target}");
            assert_eq!(res.status, 401, "{what}: {}", res.body);
            assert_eq!(res.json()["error"]["code"], "unauthorized", "{what}");
            leaks(&what, &res);
            checked += 1;
        }
        if method != "GET" {
            writes.push((method.clone(), target, body));
        }
    }
    // `/metrics` is not in the document (it is not part of the API) but lists every tenant's label and counts on
    // the same listener: any key, a dead or malformed one, or none, is 401 and learns nothing.
    let mangled = misspelt(&b.key);
    for token in [
        Some(b.key.as_str()),
        Some(b.read_only_key.as_str()),
        Some(a.key.as_str()),
        Some(a.revoked_key.as_str()),
        Some(a.expired_key.as_str()),
        Some(mangled.as_str()),
        Some("not-the-operator-token-0123456789abcdef"),
        None,
    ] {
        let res = api.call("GET", "/metrics", token, None);
        let what = format!("{token:?} GET /metrics");
        assert_eq!(res.status, 401, "{what}: {}", res.body);
        assert_eq!(res.json()["error"]["code"], "unauthorized", "{what}");
        assert!(!res.body.contains("fairvox_"), "{what}: {}", res.body);
        leaks(&what, &res);
        checked += 1;
    }
    assert!(checked > 300, "{checked} requests");
    assert_eq!(alpha_state(api), before, "nothing bravo did changed anything of alpha's");

    // Alpha's read-only key may not write, even its own rows (the operator routes are 403 to any key, but the
    // offboarding routes, which a key never sees: 404).
    for (method, target, body) in writes {
        let res = api.call(&method, &target, Some(&a.read_only_key), body.as_ref());
        let want = if target.contains("/offboard") { 404 } else { 403 };
        assert_eq!(res.status, want, "read-only {method} {target}: {}", res.body);
    }
    // No key started an offboarding of alpha or bravo, and charlie's job is as it was.
    for t in [&a.tenant, &b.tenant] {
        assert_eq!(api.call("GET", &format!("/v1/tenants/{t}/offboard"), Some(ADMIN), None).status, 404);
    }
    assert_eq!(api.expect(200, "GET", "/v1/tenants/charlie-5x/offboard", Some(ADMIN), None), offboarded);
    // Bravo's own data is intact and its own: the suite's probes did not reach alpha, and alpha's call is alpha's.
    let b_calls = wait_for_calls(api, &b.key, 1);
    assert!(b_calls.iter().all(|c| c["call_sid"] != json!(a.call_sid)));
}
