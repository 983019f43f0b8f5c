//! Offboarding over real HTTP, real SIP (sipp) and the real SQLite file, against the real binary: a tenant with
//! apps, numbers, keys and calls is offboarded while a call is up; the server is killed (SIGKILL) in the middle of
//! the drain's grace and started again on the same data dir; the job resumes and finishes. Then the call that was up
//! got its BYE, the certificate carries the downloaded bundle's SHA-256 and the rows deleted per table, the bundle
//! holds the call records, the final invoice equals the usage, no row of the tenant is left in the database but its
//! job, its numbers are free, its keys fail. A second test drains without a crash: the call gets its BYE and its
//! agent a `stop` at the end of the grace, and is billed; and a suspension by PATCH refuses calls with 403 too.

mod common;
#[path = "support/prom.rs"]
mod prom;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use prom::{Exposition, scrape};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const ADMIN: &str = "e2e-operator-token-0123456789abcdef0123";
const SIPP_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy)]
struct Api(SocketAddr);

impl Api {
    fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<&Value>) -> HttpReply {
        let text = body.map(|b| b.to_string());
        http_call(
            self.0,
            method,
            path,
            token,
            text.as_deref().map(|t| ("application/json", t.as_bytes())),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("{method} {path}: no HTTP answer"))
    }

    /// A call that must answer `status`; its JSON body.
    fn expect(&self, status: u16, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Value {
        let r = self.call(method, path, token, body.as_ref());
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        if r.body.is_empty() { Value::Null } else { serde_json::from_str(&r.body).expect("JSON") }
    }

    /// A GET whose body is bytes (the bundle): status, headers, body.
    fn download(&self, path: &str) -> (u16, HashMap<String, String>, Vec<u8>) {
        http_download(self.0, path, ADMIN)
    }
}

fn options() -> ServerOptions {
    ServerOptions { env: vec![("FAIRVOX_ADMIN_TOKEN".into(), ADMIN.into())], ..Default::default() }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A tenant with a read-write key and one app; returns (key, app id).
fn tenant(api: Api, id: &str, app: Value) -> (String, String) {
    api.expect(201, "POST", "/v1/tenants", Some(ADMIN), Some(json!({"id": id, "name": format!("{id} Inc")})));
    let key = api.expect(
        201,
        "POST",
        &format!("/v1/tenants/{id}/keys"),
        Some(ADMIN),
        Some(json!({"name": "ci", "scopes": ["read", "write"]})),
    )["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let app = api.expect(201, "POST", "/v1/apps", Some(&key), Some(app));
    (key, app["id"].as_str().unwrap().to_owned())
}

fn claim(api: Api, key: &str, number: &str, app_id: &str) {
    api.expect(201, "POST", "/v1/numbers", Some(key), Some(json!({"number": number, "app_id": app_id})));
}

fn job(api: Api, tenant: &str) -> Value {
    api.expect(200, "GET", &format!("/v1/tenants/{tenant}/offboard"), Some(ADMIN), None)
}

/// Waits until the job is finished (bounded); returns it.
fn wait_finished(api: Api, tenant: &str) -> Value {
    let mut last = Value::Null;
    let done = wait_until(Duration::from_secs(20), || {
        last = job(api, tenant);
        last["status"] == "finished"
    });
    assert!(done, "the offboarding did not finish: {last:#}");
    last
}

fn expect_403(server: &Server, number: &str) {
    Sipp::new(server, "uac_expect_status.xml")
        .service(&number[1..])
        .set("expected_status", "403")
        .run(SIPP_TIMEOUT)
        .assert_success(&format!("{number} refused with 403"));
}

fn suspended_refusals(server: &Server, tenant: &str) -> f64 {
    let (_, text) = scrape(server.http_addr(), &server.admin_token());
    Exposition::parse(&text)
        .value("fairvox_calls_rejected_total", &[("tenant", tenant), ("reason", "suspended")])
        .unwrap_or(0.0)
}

/// The files of a `tar.gz`, by path.
/// Every row of every table of the database file, read directly (tables from `sqlite_master`).
fn rows_by_table(server: &Server) -> HashMap<String, Vec<String>> {
    let db = rusqlite::Connection::open_with_flags(
        server.data_dir().join("fairvox.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("the database file");
    let tables: Vec<String> = db
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table'")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut out = HashMap::new();
    for t in tables {
        let mut stmt = db.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let n = stmt.column_count();
        let rows: Vec<String> = stmt
            .query_map([], |r| {
                Ok((0..n)
                    .map(|i| match r.get_ref(i).unwrap() {
                        rusqlite::types::ValueRef::Text(b) | rusqlite::types::ValueRef::Blob(b) => {
                            String::from_utf8_lossy(b).into_owned()
                        }
                        rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                        rusqlite::types::ValueRef::Real(v) => v.to_string(),
                        rusqlite::types::ValueRef::Null => String::new(),
                    })
                    .collect::<Vec<_>>()
                    .join("|"))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        out.insert(t, rows);
    }
    out
}

const N1: &str = "+15553330001";
const N2: &str = "+15553330002";

#[test]
fn offboarding_survives_a_kill_during_the_grace_and_finishes_on_restart() {
    let mut server = Server::start_with("[offboard]\ngrace_secs = 8\n", options());
    let api = Api(server.http_addr());

    let (key, app) = tenant(api, "acme", json!({"name": "desk", "kind": "echo"}));
    let read_key = api.expect(
        201,
        "POST",
        "/v1/tenants/acme/keys",
        Some(ADMIN),
        Some(json!({"name": "reader", "scopes": ["read"]})),
    )["key"]
        .as_str()
        .unwrap()
        .to_owned();
    claim(api, &key, N1, &app);
    claim(api, &key, N2, &app);
    let (bravo_key, bravo_app) = tenant(api, "bravo", json!({"name": "front", "kind": "echo"}));
    std::thread::sleep(Duration::from_secs(1)); // the numbers route within a second

    // Two calls of known length, billed.
    let first = Sipp::builtin("uac", Some(server.sip_addr())).service(&N1[1..]).pause_ms(2300).spawn(SIPP_TIMEOUT);
    let second = Sipp::builtin("uac", Some(server.sip_addr())).service(&N2[1..]).pause_ms(1300).spawn(SIPP_TIMEOUT);
    first.wait().assert_success("a 2 s call");
    second.wait().assert_success("a 1 s call");
    let mut calls = Vec::new();
    assert!(wait_until(Duration::from_secs(10), || {
        calls = api.expect(200, "GET", "/v1/calls", Some(&key), None)["items"].as_array().unwrap().clone();
        calls.len() == 2
    }));
    let sids: Vec<String> = calls.iter().map(|c| c["call_sid"].as_str().unwrap().to_owned()).collect();
    let billed: i64 = calls.iter().map(|c| c["billable_secs"].as_i64().unwrap()).sum();
    assert!(billed >= 3, "{calls:?}");
    let usage = api.expect(200, "GET", "/v1/usage", Some(&key), None);
    assert_eq!(usage["total"]["billable_secs"].as_i64(), Some(billed));

    // A call that stays up until fairvox ends it.
    let mut up = Sipp::new(&server, "uac_wait_for_bye.xml").service(&N1[1..]).spawn(SIPP_TIMEOUT);
    assert!(wait_until(Duration::from_secs(10), || server.log().matches("incoming call").count() == 3));
    std::thread::sleep(Duration::from_millis(500)); // answered and acknowledged

    let started = api.expect(202, "POST", "/v1/tenants/acme/offboard", Some(ADMIN), None);
    assert_eq!(started["tenant"], "acme");
    assert_eq!(started["grace_secs"], 8);
    let mut drain = Value::Null;
    assert!(
        wait_until(Duration::from_secs(5), || {
            drain = job(api, "acme");
            drain["step"] == "drain_calls" && drain["drain_deadline_ms"].is_i64()
        }),
        "the job reaches the drain: {drain:#}"
    );
    // Suspended: its keys fail at once, and a new call to its numbers is refused with 403, counted as such.
    let r = api.call("GET", "/v1/apps", Some(&key), None);
    assert_eq!(r.status, 401, "{}", r.body);
    expect_403(&server, N2);
    assert_eq!(suspended_refusals(&server, "acme"), 1.0);
    // Still in the grace: kill -9 now.
    let drain = job(api, "acme");
    assert_eq!(drain["step"], "drain_calls");
    assert!(drain["drain_deadline_ms"].as_i64().unwrap() > now_ms() + 500, "{drain:#}");
    server.kill9();
    assert!(!up.is_done(), "the call is still up on the caller's side: nobody hung it up");

    // Started again on the same data dir: the job resumes at the drain, the call gets its BYE, the job finishes.
    server.restart(options()).expect("restart");
    let finished = wait_finished(api, "acme");
    up.wait().assert_success("the call that was up during the crash got a BYE from the restarted server");
    assert_eq!(finished["step"], "done");
    for step in finished["steps"].as_array().unwrap() {
        assert_eq!(step["state"], "done", "{step}");
    }
    let drain_step = &finished["steps"][1];
    assert_eq!(
        (drain_step["name"].clone(), drain_step["detail"]["byes_kept"].clone()),
        (json!("drain_calls"), json!(1))
    );
    assert_eq!(finished["drain_deadline_ms"], drain["drain_deadline_ms"], "the restart kept the deadline");
    assert!(server.log().contains("offboarding resumed"), "the log says it resumed");

    // Gone for the API, but the job, the certificate and the final invoice remain.
    let r = api.call("GET", "/v1/tenants/acme", Some(ADMIN), None);
    assert_eq!(r.status, 404, "{}", r.body);
    let links = &finished["links"];
    let cert = api.expect(200, "GET", links["certificate"].as_str().unwrap(), Some(ADMIN), None);
    let invoice = api.expect(200, "GET", links["final_invoice"].as_str().unwrap(), Some(ADMIN), None);
    let (status, headers, bundle) = api.download(links["export"].as_str().unwrap());
    assert_eq!(status, 200);
    assert_eq!(headers.get("content-type").map(String::as_str), Some("application/gzip"));
    let sha = Sha256::digest(&bundle).iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(cert["export"]["sha256"], sha, "the certificate carries the downloaded bundle's SHA-256");
    assert_eq!(finished["export"]["sha256"], sha);
    assert_eq!(cert["export"]["bytes"], bundle.len());
    let deleted = &cert["rows_deleted"];
    assert_eq!((deleted["tenants"].clone(), deleted["calls"].clone()), (json!(1), json!(2)));
    assert_eq!((deleted["apps"].clone(), deleted["api_keys"].clone()), (json!(1), json!(2)));
    assert_eq!((deleted["numbers"].clone(), deleted["number_releases"].clone()), (json!(0), json!(2)));
    assert!(deleted["usage_daily"].as_i64().unwrap() >= 1 && deleted["audit_log"].as_i64().unwrap() >= 8, "{cert:#}");
    let total: i64 = deleted.as_object().unwrap().values().map(|v| v.as_i64().unwrap()).sum();
    assert_eq!(cert["rows_deleted_total"], total);
    let mut released: Vec<&str> =
        cert["numbers_released"].as_array().unwrap().iter().map(|n| n.as_str().unwrap()).collect();
    released.sort();
    assert_eq!(released, vec![N1, N2]);

    // The bundle holds the call records (JSON and CSV).
    let files = untar(&bundle);
    let exported: Value = serde_json::from_str(&files["acme-export/calls.json"]).unwrap();
    let mut exported_sids: Vec<&str> =
        exported.as_array().unwrap().iter().map(|c| c["call_sid"].as_str().unwrap()).collect();
    exported_sids.sort();
    let mut want: Vec<&str> = sids.iter().map(String::as_str).collect();
    want.sort();
    assert_eq!(exported_sids, want);
    for sid in &sids {
        assert!(files["acme-export/calls.csv"].contains(sid.as_str()));
    }
    assert!(files.contains_key("acme-export/manifest.json") && files.contains_key("acme-export/audit.csv"));

    // The final invoice is the usage.
    assert_eq!(invoice["billable_secs"].as_i64(), Some(billed));
    assert_eq!(invoice["calls"], 2);
    assert_eq!((invoice["status"].clone(), invoice["final"].clone()), (json!("final"), json!(true)));
    assert_eq!(cert["final_invoice"]["billable_secs"].as_i64(), Some(billed));

    // The database file itself: no row of acme anywhere but its job.
    let marks: Vec<String> =
        vec!["acme".into(), "+1555333".into(), key[..12].to_owned(), read_key[..12].to_owned(), app.clone()];
    for (table, rows) in rows_by_table(&server) {
        if table == "offboard_jobs" {
            assert_eq!(rows.len(), 1, "one job");
            continue;
        }
        for row in rows {
            for mark in &marks {
                assert!(!row.contains(mark.as_str()), "{table} still holds {mark}: {row}");
            }
        }
    }

    // Its numbers are free for another tenant; its keys are dead; a second POST is the same job.
    api.expect(201, "POST", "/v1/numbers", Some(&bravo_key), Some(json!({"number": N1, "app_id": bravo_app})));
    for k in [&key, &read_key] {
        assert_eq!(api.call("GET", "/v1/apps", Some(k), None).status, 401);
    }
    let again = api.expect(202, "POST", "/v1/tenants/acme/offboard", Some(ADMIN), None);
    assert_eq!(again["created_at_ms"], started["created_at_ms"]);
    assert_eq!(again["status"], "finished");
}

#[test]
fn the_drain_ends_calls_still_up_after_the_grace_and_bills_them_and_a_patch_suspension_refuses_with_403() {
    let agent = Agent::start();
    let server = Server::start_with("[offboard]\ngrace_secs = 1\n", options());
    let api = Api(server.http_addr());
    let (key, app) = tenant(api, "beta", json!({"name": "agent", "stream_url": agent.url()}));
    claim(api, &key, N1, &app);
    let (gamma_key, gamma_app) = tenant(api, "gamma", json!({"name": "desk", "kind": "echo"}));
    claim(api, &gamma_key, N2, &gamma_app);
    std::thread::sleep(Duration::from_secs(1));

    // A suspension by PATCH: 403, counted under `suspended`; resumed, calls go through again.
    api.expect(200, "PATCH", "/v1/tenants/gamma", Some(ADMIN), Some(json!({"status": "suspended"})));
    std::thread::sleep(Duration::from_millis(600));
    expect_403(&server, N2);
    assert_eq!(suspended_refusals(&server, "gamma"), 1.0);
    api.expect(200, "PATCH", "/v1/tenants/gamma", Some(ADMIN), Some(json!({"status": "active"})));
    std::thread::sleep(Duration::from_millis(600));
    Sipp::builtin("uac", Some(server.sip_addr())).service(&N2[1..]).run(SIPP_TIMEOUT).assert_success("resumed");

    // A call up when beta is offboarded: it goes on for the grace, then BYE, and the agent gets `stop`.
    let up = Sipp::new(&server, "uac_wait_for_bye.xml").service(&N1[1..]).spawn(SIPP_TIMEOUT);
    agent.wait_for_event("start", Duration::from_secs(10)).expect("the agent got the call");
    std::thread::sleep(Duration::from_millis(1200));
    api.expect(202, "POST", "/v1/tenants/beta/offboard", Some(ADMIN), Some(json!({})));
    up.wait().assert_success("the call got a BYE at the end of the grace");
    agent.wait_for_event("stop", Duration::from_secs(5)).expect("the agent got stop");
    let finished = wait_finished(api, "beta");
    assert_eq!(finished["steps"][1]["detail"]["calls_ended_at_deadline"], true);

    // The call was recorded and billed before the export and the final invoice.
    let invoice = api.expect(200, "GET", "/v1/tenants/beta/offboard/invoice", Some(ADMIN), None);
    assert_eq!(invoice["calls"], 1);
    assert!(invoice["billable_secs"].as_i64().unwrap() >= 1, "{invoice}");
    let (_, _, bundle) = api.download("/v1/tenants/beta/offboard/export");
    let calls: Value = serde_json::from_str(&untar(&bundle)["beta-export/calls.json"]).unwrap();
    assert_eq!(calls[0]["end_reason"], "tenant_offboarded");
    assert_eq!(calls[0]["billable_secs"], invoice["billable_secs"]);
    // Gamma is untouched.
    assert_eq!(api.expect(200, "GET", "/v1/calls", Some(&gamma_key), None)["items"].as_array().unwrap().len(), 1);
    // Beta's metric series are gone (and stay gone across scrapes); gamma's are there.
    for _ in 0..2 {
        let (_, text) = scrape(server.http_addr(), &server.admin_token());
        assert!(!text.contains("tenant=\"beta\""), "{text}");
        assert!(text.contains("tenant=\"gamma\""));
    }
}
