//! A real Prometheus (Debian's 2.42) on 127.0.0.1 scrapes fairvox every second with the shipped rules loaded, while
//! sipp places calls with RTP for two tenants; the tests ask Prometheus' HTTP API what an SRE would.
//!
//! `prometheus_sees_each_tenants_calls_and_evaluates_the_rules` checks the plumbing: the target is up, each
//! tenant's calls are there by tenant, every shipped rule evaluates without error, and recording rules produce
//! per-tenant series. `prometheus_gives_a_p99_frame_latency_per_tenant` is the issue's check,
//! `histogram_quantile(0.99, ...)` by tenant: it needs the frame path to record `fairvox_frame_latency_seconds`.

mod common;
#[path = "support/prom.rs"]
mod prom;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use prom::{Prometheus, repo};

const SIPP_TIMEOUT: Duration = Duration::from_secs(40);

const CONFIG: &str = r#"
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

const TENANTS: [&str; 2] = ["tenant-a", "tenant-b"];

/// fairvox, a Prometheus scraping it with `deploy/prometheus/rules.yml`, and one call with 3.76 s of RTP for
/// each tenant, both in progress when this returns (their sipp runs are returned to wait on).
fn setup() -> (Server, Prometheus, Vec<SippRun>) {
    let server = Server::start(CONFIG);
    let rules = repo().join("deploy/prometheus/rules.yml");
    // /metrics is operator-only: Prometheus reads the token the server generated, as a deployment's scrape config
    // does (`authorization: {type: Bearer, credentials_file: ...}`).
    let token_file = server.admin_token_path();
    let prometheus = Prometheus::start(&[server.http_addr()], &[&rules], Some(&token_file), free_port());
    // The calls must run while Prometheus scrapes: a series first scraped after its last increase has no rate.
    let up =
        prometheus.query_until("up{job=\"fairvox\"}", Duration::from_secs(30), |r| r.iter().any(|(_, v)| *v == 1.0));
    assert!(up.iter().any(|(_, v)| *v == 1.0), "Prometheus scrapes fairvox: {up:?}");
    let calls = ["15550001", "15550002"]
        .iter()
        .map(|n| Sipp::new(&server, "uac_pcmu_media.xml").service(n).spawn(SIPP_TIMEOUT))
        .collect();
    (server, prometheus, calls)
}

/// The value per tenant of a query's result (series without a tenant label are ignored).
fn by_tenant(result: &[(BTreeMap<String, String>, f64)]) -> BTreeMap<String, f64> {
    result.iter().filter_map(|(l, v)| Some((l.get("tenant")?.clone(), *v))).collect()
}

fn has_every_tenant(result: &[(BTreeMap<String, String>, f64)], ok: impl Fn(f64) -> bool) -> bool {
    let values = by_tenant(result);
    TENANTS.iter().all(|t| values.get(*t).is_some_and(|v| ok(*v)))
}

#[test]
fn prometheus_sees_each_tenants_calls_and_evaluates_the_rules() {
    let (server, prometheus, calls) = setup();
    for call in calls {
        call.wait().assert_success("call with RTP");
    }
    let up =
        prometheus.query_until("up{job=\"fairvox\"}", Duration::from_secs(20), |r| r.iter().any(|(_, v)| *v == 1.0));
    assert_eq!(up.len(), 1, "{up:?}");
    assert_eq!(up[0].0.get("instance"), Some(&server.http_addr().to_string()));
    assert_eq!(up[0].1, 1.0, "target up");

    let calls = prometheus.query_until("sum by (tenant) (fairvox_calls_total)", Duration::from_secs(20), |r| {
        has_every_tenant(r, |v| v == 1.0)
    });
    assert_eq!(by_tenant(&calls), BTreeMap::from([("tenant-a".into(), 1.0), ("tenant-b".into(), 1.0)]), "{calls:?}");
    // The frame path, per tenant: 3.76 s of RTP each way is 188 frames; RTP quality reported at the call's end.
    let frames = prometheus.query_until(
        "sum by (tenant) (fairvox_frames_total{direction=\"inbound\"})",
        Duration::from_secs(20),
        |r| has_every_tenant(r, |v| v >= 150.0),
    );
    assert!(has_every_tenant(&frames, |v| (150.0..=200.0).contains(&v)), "{frames:?}");
    let jitter =
        prometheus.query_until("sum by (tenant) (fairvox_rtp_jitter_seconds_count)", Duration::from_secs(20), |r| {
            has_every_tenant(r, |v| v >= 1.0)
        });
    assert!(has_every_tenant(&jitter, |v| v >= 1.0), "{jitter:?}");
    let billable = prometheus.query("sum by (tenant) (fairvox_billable_seconds_total)");
    assert!(has_every_tenant(&billable, |v| v >= 4.0), "calls of ~8 s each: {billable:?}");

    // A recording rule of the shipped file, per tenant.
    let active = prometheus
        .query_until("tenant:fairvox_calls_active:sum", Duration::from_secs(20), |r| has_every_tenant(r, |v| v == 0.0));
    assert!(has_every_tenant(&active, |v| v == 0.0), "{active:?}");

    // Every shipped rule has been evaluated, without error.
    let mut evaluated = false;
    for _ in 0..20 {
        let groups = prometheus.api("rules");
        let rules: Vec<&serde_json::Value> =
            groups["data"]["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap()).collect();
        assert!(rules.len() >= 15, "{groups}");
        for r in &rules {
            assert_ne!(r["health"], "err", "rule {} fails: {}", r["name"], r["lastError"]);
        }
        if rules.iter().all(|r| r["health"] == "ok") {
            evaluated = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(evaluated, "every rule evaluated: {}", prometheus.api("rules"));
}

/// Per-tenant p99 of `fairvox_frame_latency_seconds`, as an SRE queries it.
#[test]
fn prometheus_gives_a_p99_frame_latency_per_tenant() {
    let (_server, prometheus, calls) = setup();
    // While the calls run: frames flow both ways (the echo app plays the caller's audio back).
    let query = "histogram_quantile(0.99, sum by (tenant, le) (rate(fairvox_frame_latency_seconds_bucket[30s])))";
    let p99 = prometheus.query_until(query, Duration::from_secs(30), |r| has_every_tenant(r, f64::is_finite));
    assert!(
        has_every_tenant(&p99, |v| v.is_finite() && v > 0.0 && v <= 0.25),
        "a p99 frame latency per tenant within the buckets (0.1 ms-250 ms): {p99:?}"
    );
    // The shipped recording rule gives it per direction too.
    let recorded =
        prometheus.query_until("tenant_direction:fairvox_frame_latency_seconds:p99_1m", Duration::from_secs(20), |r| {
            r.iter().filter(|(_, v)| v.is_finite()).count() >= 4
        });
    for tenant in TENANTS {
        for direction in ["inbound", "outbound"] {
            assert!(
                recorded.iter().any(|(l, v)| l.get("tenant").map(String::as_str) == Some(tenant)
                    && l.get("direction").map(String::as_str) == Some(direction)
                    && v.is_finite()),
                "{tenant} {direction} p99 recorded: {recorded:?}"
            );
        }
    }
    for call in calls {
        call.wait().assert_success("call with RTP");
    }
}
