//! Observability end to end: what an SRE reads from a running node. sipp places calls for two tenants and to an
//! unknown number; `/metrics` must then show each tenant's calls, refusals and billable seconds as placed, the
//! unknown number under `tenant="unattributed"`, and pass `promtool check metrics`. The shipped alert rules pass
//! `promtool check rules` (and the shipped Prometheus config `promtool check config`), and the shipped dashboard and
//! rules refer only to metrics that exist. `/metrics` answers the operator token only. SIGTERM turns `/readyz` to
//! 503 and refuses new calls while the active ones finish.

mod common;
#[path = "support/prom.rs"]
mod prom;

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use prom::{Exposition, metric_names_in, prometheus_tool, repo, scrape};
use serde_json::Value;

const SIPP_TIMEOUT: Duration = Duration::from_secs(30);

const CONFIG: &str = r#"
[log]
format = "json"

[[tenants]]
id = "tenant-a"
[[tenants.apps]]
name = "echo"
kind = "echo"
[[tenants.numbers]]
number = "+15550001"
app = "echo"

[[tenants]]
id = "tenant-b"
[[tenants.apps]]
name = "echo"
kind = "echo"
[[tenants.numbers]]
number = "+15550002"
app = "echo"
"#;

fn call_records(server: &Server) -> Vec<Value> {
    std::fs::read_to_string(server.data_dir().join("call-records.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("call record is JSON"))
        .collect()
}

/// `n` calls of 1.5 s each from sipp's built-in UAC to `number`, one after the other's start (-r default).
fn place_calls(server: &Server, number: &str, n: usize) {
    Sipp::builtin("uac", Some(server.sip_addr()))
        .service(number)
        .args(&["-m", &n.to_string(), "-l", "1"])
        .pause_ms(1500)
        .run(SIPP_TIMEOUT)
        .assert_success(&format!("{n} calls to {number}"));
}

fn expect_status(server: &Server, scenario: &str, number: &str, status: u16) {
    Sipp::new(server, scenario)
        .service(number)
        .set("expected_status", &status.to_string())
        .run(SIPP_TIMEOUT)
        .assert_success(&format!("{number} answered {status}"));
}

#[test]
fn per_tenant_series_match_the_calls_placed() {
    let server = Server::start(CONFIG);
    place_calls(&server, "15550001", 3);
    place_calls(&server, "15550002", 2);
    expect_status(&server, "uac_expect_status.xml", "15559999", 404);
    // tenant-b's carrier offers only G.729: refused for codec, charged to tenant-b.
    Sipp::new(&server, "uac_codec_g729.xml").service("15550002").run(SIPP_TIMEOUT).assert_success("488");
    assert!(wait_until(Duration::from_secs(10), || call_records(&server).len() >= 5), "5 call records");
    let records = call_records(&server);

    let (content_type, text) = scrape(server.http_addr(), &server.admin_token());
    assert_eq!(content_type, fairvox::metrics::CONTENT_TYPE);
    let m = Exposition::parse(&text);
    let v = |name: &str, labels: &[(&str, &str)]| {
        m.value(name, labels).unwrap_or_else(|| panic!("{name}{labels:?}\n{text}"))
    };

    // Calls that ended, by tenant and outcome: exactly what was placed.
    assert_eq!(v("fairvox_calls_total", &[("tenant", "tenant-a"), ("outcome", "caller_bye")]), 3.0);
    assert_eq!(v("fairvox_calls_total", &[("tenant", "tenant-b"), ("outcome", "caller_bye")]), 2.0);
    assert_eq!(m.sum("fairvox_calls_total", &[]), 5.0, "no other outcome or tenant");
    // Refusals: the unknown number is unattributed, the codec refusal is tenant-b's, tenant-a has none.
    assert_eq!(v("fairvox_calls_rejected_total", &[("tenant", "unattributed"), ("reason", "unknown_number")]), 1.0);
    assert_eq!(v("fairvox_calls_rejected_total", &[("tenant", "tenant-b"), ("reason", "codec")]), 1.0);
    assert_eq!(
        m.sum("fairvox_calls_rejected_total", &[]),
        2.0,
        "{:?}",
        m.matching("fairvox_calls_rejected_total", &[])
    );
    // Nothing in progress any more.
    assert_eq!(v("fairvox_calls_active", &[("tenant", "tenant-a")]), 0.0);
    assert_eq!(v("fairvox_calls_active", &[("tenant", "tenant-b")]), 0.0);
    // Billable seconds: what the call records say, and each 1.5 s call is at least 1 s.
    for (tenant, calls) in [("tenant-a", 3.0), ("tenant-b", 2.0)] {
        let recorded: u64 =
            records.iter().filter(|r| r["tenant"] == tenant).map(|r| r["duration_secs"].as_u64().unwrap()).sum();
        let billable = v("fairvox_billable_seconds_total", &[("tenant", tenant)]);
        assert_eq!(billable, recorded as f64, "{tenant}");
        assert!(billable >= calls, "{tenant}: {billable} s for {calls} calls of 1.5 s");
        assert_eq!(v("fairvox_provider_circuit_open", &[("tenant", tenant), ("app", "echo")]), 0.0);
        assert_eq!(v("fairvox_tenant_latency_budget_seconds", &[("tenant", tenant)]), 0.04, "pro plan: 40 ms");
    }
    // The unattributed tenant has per-call series only, and no tenant beyond the three is labelled.
    let tenants: BTreeSet<&str> = m.samples.iter().filter_map(|s| s.labels.get("tenant")).map(String::as_str).collect();
    assert_eq!(tenants, BTreeSet::from(["tenant-a", "tenant-b", "unattributed"]));
    assert!(m.matching("fairvox_calls_active", &[("tenant", "unattributed")]).is_empty());
    // SIP: 7 INVITEs in (retransmissions would add), 5 answered 200, one 404 and one 488; 5 BYEs in, 5 200s out.
    let sip =
        |method: &str, status: &str| m.sum("fairvox_sip_messages_total", &[("method", method), ("status", status)]);
    assert!(sip("INVITE", "request") >= 7.0, "{}", sip("INVITE", "request"));
    assert!(sip("INVITE", "200") >= 5.0 && sip("INVITE", "404") >= 1.0 && sip("INVITE", "488") >= 1.0);
    assert_eq!(sip("BYE", "request"), 5.0);
    assert_eq!(sip("BYE", "200"), 5.0);
    assert!(sip("ACK", "request") >= 7.0, "ACKs of the 200s and of the 404 and 488");
    assert_eq!(v("fairvox_sip_malformed_total", &[]), 0.0);
    assert!(v("process_cpu_seconds_total", &[]) > 0.0);
    assert!(v("process_open_fds", &[]) > 0.0);

    // Logs: JSON lines, and every line about a call carries its tenant and call id.
    let log = server.log();
    let lines: Vec<Value> = log.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let about_calls: Vec<&Value> = lines
        .iter()
        .filter(|l| ["incoming call", "call record", "media ended"].contains(&l["message"].as_str().unwrap_or("")))
        .collect();
    assert!(about_calls.len() >= 10, "incoming call + call record for each of 5 calls:\n{log}");
    for l in &about_calls {
        assert!(l["tenant"].as_str().is_some_and(|t| t.starts_with("tenant-")), "no tenant: {l}");
        assert!(l["call_id"].as_str().is_some_and(|c| !c.is_empty()), "no call_id: {l}");
    }
    let refused: Vec<&Value> = lines.iter().filter(|l| l["message"] == "request refused").collect();
    assert_eq!(refused.len(), 2, "{log}");
    assert!(refused.iter().any(|l| l["tenant"] == "unattributed" && l["reason"] == "unknown_number"));
    assert!(refused.iter().any(|l| l["tenant"] == "tenant-b" && l["reason"] == "codec"));
    assert!(refused.iter().all(|l| l["sip_call_id"].as_str().is_some_and(|c| !c.is_empty())), "{refused:?}");
}

#[test]
fn promtool_accepts_a_live_scrape_and_the_shipped_rules() {
    let promtool = prometheus_tool("promtool");
    let server = Server::start(CONFIG);
    place_calls(&server, "15550001", 1);
    expect_status(&server, "uac_expect_status.xml", "15559999", 404);
    assert!(wait_until(Duration::from_secs(10), || !call_records(&server).is_empty()));
    let (_, text) = scrape(server.http_addr(), &server.admin_token());
    assert!(text.contains("fairvox_calls_total{"), "the scrape has per-tenant series to lint:\n{text}");

    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics: {said}\n---\n{text}");

    let rules = repo().join("deploy/prometheus/rules.yml");
    let out = Command::new(&promtool).arg("check").arg("rules").arg(&rules).output().expect("run promtool");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool check rules: {said}");
    assert!(said.contains("SUCCESS"), "{said}");

    // The shipped Prometheus config, with its two paths pointed at the rules here and at this server's token file:
    // promtool checks its syntax, that the token file exists, and the rules it loads.
    let shipped = std::fs::read_to_string(repo().join("deploy/prometheus/prometheus.yml")).unwrap();
    assert!(shipped.contains("credentials_file: /etc/prometheus/fairvox-token"), "{shipped}");
    let config = shipped
        .replace("/etc/prometheus/fairvox-rules.yml", &rules.display().to_string())
        .replace("/etc/prometheus/fairvox-token", &server.admin_token_path().display().to_string());
    let path = server.dir().join("prometheus.yml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(&promtool).arg("check").arg("config").arg(&path).output().expect("run promtool");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.contains("1 rule files found"), "promtool check config: {said}");
}

/// Every `expr` of a Grafana dashboard, panels in rows included, and every query variable's query.
fn dashboard_queries(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "definition", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::String(s)) if s.contains('(') => out.push(s.clone()),
                    _ => dashboard_queries(v, out),
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

#[test]
fn dashboard_and_rules_refer_only_to_metrics_that_exist() {
    // The source of truth: the registry's own list (families with no series yet print no TYPE line, so a scrape
    // alone would miss them). A live scrape must not show any family outside it.
    let known: BTreeSet<String> = fairvox::metrics::Metrics::default().family_names().iter().cloned().collect();
    let server = Server::start(CONFIG);
    place_calls(&server, "15550001", 1);
    let (_, text) = scrape(server.http_addr(), &server.admin_token());
    for family in Exposition::parse(&text).types.keys() {
        assert!(known.contains(family), "{family} scraped but not in Metrics::family_names()");
    }

    let path = repo().join("deploy/grafana/fairvox.json");
    let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).expect("dashboard is JSON");
    let mut queries = Vec::new();
    dashboard_queries(&dashboard, &mut queries);
    assert!(queries.len() >= 15, "{queries:?}");
    let mut used = BTreeSet::new();
    for q in &queries {
        for name in metric_names_in(q) {
            assert!(known.contains(&name), "dashboard query refers to unknown metric {name}: {q}");
            used.insert(name);
        }
        // A query on a per-tenant family follows the tenant variable.
        if q.contains("fairvox_")
            && !q.contains("fairvox_sip_")
            && !q.contains("fairvox_metrics_")
            && !q.starts_with("label_values")
        {
            assert!(q.contains("tenant=~\"$tenant\""), "does not follow $tenant: {q}");
        }
    }
    // What the issue asks the dashboard to show.
    for family in [
        "fairvox_frame_latency_seconds",
        "fairvox_calls_active",
        "fairvox_calls_rejected_total",
        "fairvox_frames_dropped_total",
        "fairvox_provider_stream_errors_total",
        "fairvox_billable_seconds_total",
        "process_cpu_seconds_total",
    ] {
        assert!(used.contains(family), "dashboard has no panel on {family}");
    }
    assert!(dashboard["schemaVersion"].as_u64().is_some_and(|v| v >= 36), "schemaVersion");
    let vars: HashMap<&str, &Value> =
        dashboard["templating"]["list"].as_array().unwrap().iter().map(|v| (v["name"].as_str().unwrap(), v)).collect();
    assert_eq!(vars["datasource"]["type"], "datasource");
    assert_eq!(vars["datasource"]["query"], "prometheus");
    assert_eq!(vars["tenant"]["definition"], "label_values(fairvox_calls_total, tenant)");
    // Every panel queries through the datasource variable.
    let mut panels = Vec::new();
    for p in dashboard["panels"].as_array().unwrap() {
        panels.push(p);
        panels.extend(p["panels"].as_array().into_iter().flatten());
    }
    for p in panels.iter().filter(|p| p["type"] != "row") {
        assert_eq!(p["datasource"]["uid"], "${datasource}", "panel {}", p["title"]);
    }

    // The rules: every metric they name exists, and every runbook link has its section in docs/runbooks.md.
    let rules = std::fs::read_to_string(repo().join("deploy/prometheus/rules.yml")).unwrap();
    for name in metric_names_in(&rules) {
        assert!(known.contains(&name), "rules.yml refers to unknown metric {name}");
    }
    let runbooks = std::fs::read_to_string(repo().join("docs/runbooks.md")).unwrap();
    let anchors: BTreeSet<String> =
        runbooks.lines().filter_map(|l| l.strip_prefix("## ")).map(|h| h.trim().to_ascii_lowercase()).collect();
    let alerts: Vec<&str> = rules.lines().filter_map(|l| l.trim().strip_prefix("- alert: ")).collect();
    let links: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook_url: \"docs/runbooks.md#")?.strip_suffix('"'))
        .collect();
    assert!(alerts.len() >= 5, "{alerts:?}");
    assert_eq!(alerts.len(), links.len(), "every alert has a runbook_url");
    for (alert, link) in alerts.iter().zip(&links) {
        assert_eq!(alert.to_ascii_lowercase(), *link, "{alert}'s runbook_url");
        assert!(anchors.contains(*link), "docs/runbooks.md has no section for {alert}");
    }
}

#[test]
fn metrics_need_the_operator_token_and_refusals_reveal_no_tenant() {
    let server = Server::start(CONFIG);
    let operator = server.admin_token();
    let get = |token: Option<&str>| {
        http_call(server.http_addr(), "GET", "/metrics", token, None, Duration::from_secs(5)).expect("HTTP answer")
    };
    // The operator reads every tenant's series (so the refusals below have something to hide).
    let ok = get(Some(&operator));
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(ok.body.contains("tenant=\"tenant-a\"") && ok.body.contains("tenant=\"tenant-b\""), "{}", ok.body);

    // A key of tenant-a, made by the operator over the API.
    let created = http_call(
        server.http_addr(),
        "POST",
        "/v1/tenants/tenant-a/keys",
        Some(&operator),
        Some(("application/json", br#"{"name":"reader","scopes":["read"]}"#)),
        Duration::from_secs(5),
    )
    .expect("HTTP answer");
    assert_eq!(created.status, 201, "{}", created.body);
    let key: Value = serde_json::from_str(&created.body).unwrap();
    let key = key["key"].as_str().unwrap().to_owned();
    assert_eq!(
        http_call(server.http_addr(), "GET", "/v1/apps", Some(&key), None, Duration::from_secs(5)).map(|r| r.status),
        Some(200),
        "the key works on the API"
    );

    let wrong = misspelt(&operator);
    for (what, token) in
        [("no token", None), ("a tenant key", Some(key.as_str())), ("a wrong token", Some(wrong.as_str()))]
    {
        let r = get(token);
        assert_eq!(r.status, 401, "{what}: {}", r.body);
        assert!(r.headers.iter().any(|(k, v)| k == "www-authenticate" && v == "Bearer"), "{what}: {:?}", r.headers);
        let error: Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{what}: {e}: {}", r.body));
        assert_eq!(error["error"]["code"], "unauthorized", "{what}");
        for secret in ["tenant-a", "tenant-b", "fairvox_", "unattributed"] {
            assert!(!r.body.contains(secret), "{what}: the refusal shows {secret:?}: {}", r.body);
        }
    }
    // The token under another scheme is not accepted either.
    let mut s = std::net::TcpStream::connect(server.http_addr()).unwrap();
    std::io::Write::write_all(
        &mut s,
        format!("GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {operator}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .unwrap();
    let mut reply = String::new();
    std::io::Read::read_to_string(&mut s, &mut reply).unwrap();
    assert!(reply.starts_with("HTTP/1.1 401"), "{reply}");

    // Health checks stay open: they say nothing per tenant.
    assert_eq!(server.http_get("/healthz"), Some((200, "ok\n".to_owned())));
    assert_eq!(server.http_get("/readyz"), Some((200, "ready\n".to_owned())));
}

#[test]
fn sigterm_makes_readyz_503_and_refuses_new_calls_while_active_ones_finish() {
    let mut server = Server::start_with(
        CONFIG,
        ServerOptions { args: vec!["--drain-secs".into(), "30".into()], ..Default::default() },
    );
    assert_eq!(server.http_get("/readyz"), Some((200, "ready\n".to_owned())));
    // A 4 s call, in progress when the drain starts.
    let active = Sipp::builtin("uac", Some(server.sip_addr())).service("15550001").pause_ms(4000).spawn(SIPP_TIMEOUT);
    assert!(server.wait_for_log("incoming call", Duration::from_secs(5)));
    std::thread::sleep(Duration::from_millis(300));
    let (_, text) = scrape(server.http_addr(), &server.admin_token());
    assert_eq!(Exposition::parse(&text).value("fairvox_calls_active", &[("tenant", "tenant-a")]), Some(1.0));

    let sigterm_at = Instant::now();
    server.signal(libc::SIGTERM);
    assert!(
        wait_until(Duration::from_secs(2), || server.http_get("/readyz").is_some_and(|(s, _)| s == 503)),
        "/readyz turns 503 at once"
    );
    assert_eq!(server.http_get("/readyz"), Some((503, "draining\n".to_owned())));
    assert_eq!(server.http_get("/healthz").map(|(s, _)| s), Some(200), "still alive");
    // A new call is refused with 503 and Retry-After, and counted as overload for the tenant it was for.
    let refused =
        Sipp::new(&server, "uac_expect_status.xml").service("15550002").set("expected_status", "503").run(SIPP_TIMEOUT);
    refused.assert_success("503 while draining");
    assert!(refused.messages.contains("Retry-After: 5"), "{}", refused.messages);
    let (_, text) = scrape(server.http_addr(), &server.admin_token());
    let m = Exposition::parse(&text);
    assert_eq!(m.value("fairvox_calls_rejected_total", &[("tenant", "tenant-b"), ("reason", "overload")]), Some(1.0));

    // The active call was not cut: the caller hangs up itself, then the node exits, well before the 30 s grace.
    active.wait().assert_success("the active call ends normally");
    let status = server.stop(Duration::from_secs(15)).expect("server exits");
    assert!(status.success(), "exit status {status:?}");
    assert!(sigterm_at.elapsed() < Duration::from_secs(15), "exited {:?} after SIGTERM", sigterm_at.elapsed());
    let records = call_records(&server);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["end_reason"], "caller_bye", "not ended by the drain");
}
