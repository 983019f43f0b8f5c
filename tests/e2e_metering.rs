//! Metering you can bill from, end to end: the real binary with its real SQLite file takes sipp calls of known
//! length (answer to BYE) to two numbers of two apps of one tenant, and one call of another tenant. Then each call
//! record bills exactly its length under the documented rule (whole seconds from answer to end, rounded down:
//! `docs/billing.md`), the JSONL record says the same, the tenant's usage (per day, month, app, number and row, in
//! JSON and CSV) sums exactly to its call records, the invoice is that usage times the plan's price, and the database
//! file itself holds a usage table whose sums equal its call rows', tenant by tenant.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use fairvox::store::UtcDay;
use serde_json::{Value, json};

const ADMIN: &str = "e2e-operator-token-0123456789abcdef0123";
const SIPP_TIMEOUT: Duration = Duration::from_secs(30);
/// The plan's price: 7 cents a minute, so that the invoice's one rounding (half up, on the total) is visible.
const PRICE_PER_MINUTE_CENTS: i64 = 7;

const DESK_NUMBER: &str = "+15554440001";
const AGENT_NUMBER: &str = "+15554440002";
const BRAVO_NUMBER: &str = "+15554440009";

/// One call placed: where, and how long the caller holds it after the answer (sipp's pause between its ACK and its
/// BYE). Each is a whole number of seconds plus 500 ms, so the billed length (rounded down) is that whole number
/// with half a second of margin either way for the time the 200, the ACK and the BYE take on a loaded machine.
struct Placed {
    number: &'static str,
    hold_ms: u64,
}

impl Placed {
    fn expected_secs(&self) -> i64 {
        (self.hold_ms / 1000) as i64
    }
}

#[derive(Clone, Copy)]
struct Api(SocketAddr);

impl Api {
    fn call(&self, method: &str, path: &str, token: &str, body: Option<&Value>) -> HttpReply {
        let text = body.map(|b| b.to_string());
        http_call(
            self.0,
            method,
            path,
            Some(token),
            text.as_deref().map(|t| ("application/json", t.as_bytes())),
            Duration::from_secs(10),
        )
        .unwrap_or_else(|| panic!("{method} {path}: no HTTP answer"))
    }

    fn expect(&self, status: u16, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
        let r = self.call(method, path, token, body.as_ref());
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {}", r.body))
    }
}

/// A tenant with a read-write key; returns the key.
fn tenant(api: Api, id: &str) -> String {
    api.expect(201, "POST", "/v1/tenants", ADMIN, Some(json!({"id": id, "name": format!("{id} Inc"), "plan": "pro"})));
    api.expect(
        201,
        "POST",
        &format!("/v1/tenants/{id}/keys"),
        ADMIN,
        Some(json!({"name": "billing", "scopes": ["read", "write"]})),
    )["key"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn app_and_number(api: Api, key: &str, app: Value, number: &str) {
    let app = api.expect(201, "POST", "/v1/apps", key, Some(app));
    api.expect(201, "POST", "/v1/numbers", key, Some(json!({"number": number, "app_id": app["id"]})));
}

fn int(v: &Value, field: &str) -> i64 {
    v[field].as_i64().unwrap_or_else(|| panic!("{field} is not an integer in {v}"))
}

/// Sums of (calls, billable seconds) of `records` grouped by `key`.
fn group(records: &[Value], key: impl Fn(&Value) -> String) -> BTreeMap<String, (i64, i64)> {
    let mut out: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for r in records {
        let e = out.entry(key(r)).or_default();
        e.0 += 1;
        e.1 += int(r, "billable_secs");
    }
    out
}

/// A usage listing (`days`, `months`, `apps`, `numbers`, `rows`, an invoice's `lines`) as (calls, billable seconds)
/// by `key`; a key listed twice fails the test.
fn listed(items: &Value, key: impl Fn(&Value) -> String) -> BTreeMap<String, (i64, i64)> {
    let mut out = BTreeMap::new();
    for item in items.as_array().unwrap_or_else(|| panic!("not a list: {items}")) {
        let previous = out.insert(key(item), (int(item, "calls"), int(item, "billable_secs")));
        assert!(previous.is_none(), "listed twice: {item} in {items}");
    }
    out
}

fn s(v: &Value, field: &str) -> String {
    v[field].as_str().unwrap_or_else(|| panic!("{field} is not a string in {v}")).to_owned()
}

/// `SELECT` of (group, calls, seconds) rows from the database file.
fn db_groups(db: &rusqlite::Connection, sql: &str, tenant: &str) -> BTreeMap<String, (i64, i64)> {
    let mut stmt = db.prepare(sql).unwrap_or_else(|e| panic!("{sql}: {e}"));
    stmt.query_map([tenant], |r| Ok((r.get::<_, String>(0)?, (r.get::<_, i64>(1)?, r.get::<_, i64>(2)?))))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn usage_equals_the_call_records_to_the_second() {
    let agent = Agent::start();
    let config = format!(
        "[plans.pro]\nprice_per_minute_cents = {PRICE_PER_MINUTE_CENTS}\n\n\
         [api]\nrequests_per_second = 1000\nburst = 1000\n"
    );
    let server = Server::start_with(
        &config,
        ServerOptions { env: vec![("FAIRVOX_ADMIN_TOKEN".into(), ADMIN.into())], ..Default::default() },
    );
    let api = Api(server.http_addr());

    // acme: an echo app on one number, a stream app (to the test agent) on another. bravo: one echo number.
    let key = tenant(api, "acme");
    app_and_number(api, &key, json!({"name": "desk", "kind": "echo"}), DESK_NUMBER);
    app_and_number(api, &key, json!({"name": "agent", "stream_url": agent.url()}), AGENT_NUMBER);
    let bravo = tenant(api, "bravo");
    app_and_number(api, &bravo, json!({"name": "front", "kind": "echo"}), BRAVO_NUMBER);
    std::thread::sleep(Duration::from_millis(1200)); // the numbers route within a second

    // Calls of 2, 3, 3 and 5 seconds for acme (two on each number), 4 for bravo: all at once, so the test takes
    // the longest call's time, not the sum. sipp's built-in client: INVITE, ACK of the 200, a pause of -d ms, BYE.
    let acme_calls = [
        Placed { number: DESK_NUMBER, hold_ms: 2_500 },
        Placed { number: DESK_NUMBER, hold_ms: 3_500 },
        Placed { number: AGENT_NUMBER, hold_ms: 3_500 },
        Placed { number: AGENT_NUMBER, hold_ms: 5_500 },
    ];
    let bravo_call = Placed { number: BRAVO_NUMBER, hold_ms: 4_500 };
    let runs: Vec<_> = acme_calls
        .iter()
        .chain([&bravo_call])
        .map(|p| {
            Sipp::builtin("uac", Some(server.sip_addr()))
                .service(&p.number[1..])
                .pause_ms(p.hold_ms)
                .spawn(SIPP_TIMEOUT)
        })
        .collect();
    for (run, p) in runs.into_iter().zip(acme_calls.iter().chain([&bravo_call])) {
        run.wait().assert_success(&format!("a {} ms call to {}", p.hold_ms, p.number));
    }

    let mut records = Vec::new();
    let listed_all = wait_until(Duration::from_secs(10), || {
        records = api.expect(200, "GET", "/v1/calls", &key, None)["items"].as_array().unwrap().clone();
        records.len() >= acme_calls.len()
    });
    assert!(listed_all, "acme's calls are recorded: {records:?}");
    assert_eq!(records.len(), acme_calls.len(), "{records:#?}");
    let bravo_records = api.expect(200, "GET", "/v1/calls", &bravo, None)["items"].as_array().unwrap().clone();
    assert_eq!(bravo_records.len(), 1, "{bravo_records:#?}");

    // Each record bills its call's known length. The record's own times say the same under the rule (whole seconds
    // from answer to end, rounded down), and so does the JSONL line the media core wrote for it.
    let jsonl: Vec<Value> = std::fs::read_to_string(server.data_dir().join("call-records.jsonl"))
        .expect("call-records.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    assert_eq!(jsonl.len(), acme_calls.len() + 1);
    let mut expected: Vec<(String, i64)> =
        acme_calls.iter().map(|p| (p.number.to_owned(), p.expected_secs())).collect();
    let mut billed: Vec<(String, i64)> = records.iter().map(|r| (s(r, "to"), int(r, "billable_secs"))).collect();
    expected.sort();
    billed.sort();
    assert_eq!(billed, expected, "each call bills its length: {records:#?}");
    for (r, label) in records.iter().map(|r| (r, "acme")).chain(bravo_records.iter().map(|r| (r, "bravo"))) {
        assert_eq!(r["end_reason"], "caller_bye", "{r}");
        let span_ms = int(r, "end_at_ms") - int(r, "answer_at_ms");
        assert_eq!(int(r, "billable_secs"), span_ms / 1000, "{label}: answer to end, rounded down: {r}");
        assert_eq!(int(r, "billable_secs"), int(r, "duration_secs"), "{r}");
        let line = jsonl.iter().find(|l| l["call_sid"] == r["call_sid"]).unwrap_or_else(|| panic!("no JSONL for {r}"));
        assert_eq!(line["tenant"], label);
        assert_eq!(line["duration_secs"].as_i64(), Some(int(r, "billable_secs")), "{line}");
        assert_eq!((&line["answer_at_ms"], &line["end_at_ms"]), (&r["answer_at_ms"], &r["end_at_ms"]));
    }
    assert_eq!(int(&bravo_records[0], "billable_secs"), bravo_call.expected_secs());
    let total: i64 = records.iter().map(|r| int(r, "billable_secs")).sum();
    assert_eq!(total, 13);

    // Usage, for the month(s) the calls were answered in (one, unless the test straddles midnight at a month's end),
    // sums exactly to the records: in total, per day, month, app, number and (day, app, number) row.
    let months: Vec<String> = group(&records, |r| s(r, "usage_day")[..7].to_owned()).into_keys().collect::<Vec<_>>();
    let first_day = records.iter().map(|r| s(r, "usage_day")).min().unwrap();
    let last_day = records.iter().map(|r| s(r, "usage_day")).max().unwrap();
    let mut usage_rows = BTreeMap::new();
    let mut csv_rows = BTreeMap::new();
    let mut invoiced = 0;
    for month in &months {
        let in_month: Vec<Value> = records.iter().filter(|r| s(r, "usage_day").starts_with(month)).cloned().collect();
        let usage = api.expect(200, "GET", &format!("/v1/usage?month={month}"), &key, None);
        let secs: i64 = in_month.iter().map(|r| int(r, "billable_secs")).sum();
        assert_eq!(
            (int(&usage["total"], "calls"), int(&usage["total"], "billable_secs")),
            (in_month.len() as i64, secs),
            "{usage:#}"
        );
        assert_eq!(listed(&usage["months"], |m| s(m, "month")), group(&in_month, |_| month.clone()));
        assert_eq!(listed(&usage["days"], |d| s(d, "day")), group(&in_month, |r| s(r, "usage_day")));
        assert_eq!(listed(&usage["apps"], |a| s(a, "app")), group(&in_month, |r| s(r, "app")));
        assert_eq!(listed(&usage["numbers"], |n| s(n, "number")), group(&in_month, |r| s(r, "to")));
        let by_row = |day: String, app: String, number: String| format!("{day} {app} {number}");
        let rows = listed(&usage["rows"], |u| by_row(s(u, "day"), s(u, "app"), s(u, "number")));
        assert_eq!(rows, group(&in_month, |r| by_row(s(r, "usage_day"), s(r, "app"), s(r, "to"))));
        usage_rows.extend(rows);

        // The CSV export has the same rows as the JSON, no more.
        let csv = api.call("GET", &format!("/v1/usage?month={month}&format=csv"), &key, None);
        assert_eq!(csv.status, 200, "{}", csv.body);
        let mut lines = csv.body.split("\r\n");
        assert_eq!(lines.next(), Some("day,month,app,number,calls,billable_secs"), "{}", csv.body);
        for line in lines.filter(|l| !l.is_empty()) {
            let cells: Vec<&str> = line.split(',').collect();
            let [day, in_month_of, app, number, calls, secs] = cells[..] else {
                panic!("a CSV row of 6 cells: {line}")
            };
            assert_eq!(&day[..7], in_month_of, "{line}");
            assert_eq!(in_month_of, month, "{line}");
            let previous = csv_rows.insert(
                by_row(day.into(), app.into(), number.into()),
                (calls.parse::<i64>().unwrap(), secs.parse::<i64>().unwrap()),
            );
            assert!(previous.is_none(), "a row twice in the CSV: {line}");
        }

        // The invoice is that usage times the plan's price: the seconds summed, priced once, rounded half up.
        let invoice = api.expect(200, "GET", &format!("/v1/invoices?period={month}"), &key, None);
        assert_eq!((int(&invoice, "calls"), int(&invoice, "billable_secs")), (in_month.len() as i64, secs));
        assert_eq!(int(&invoice, "price_per_minute_cents"), PRICE_PER_MINUTE_CENTS);
        assert_eq!(int(&invoice, "amount_cents"), (secs * PRICE_PER_MINUTE_CENTS + 30) / 60, "{invoice:#}");
        assert_eq!(
            listed(&invoice["lines"], |l| format!("{} {}", s(l, "app"), s(l, "number"))),
            group(&in_month, |r| format!("{} {}", s(r, "app"), s(r, "to")))
        );
        invoiced += int(&invoice, "billable_secs");
    }
    assert_eq!(csv_rows, usage_rows, "the CSV rows are the JSON rows");
    assert_eq!(invoiced, total);
    // 13 s at 7 cents a minute is 1.52 cents: 2, when the calls fall in one month (as they do but at a month's end).
    if months.len() == 1 {
        let invoice = api.expect(200, "GET", &format!("/v1/invoices?period={}", months[0]), &key, None);
        assert_eq!(int(&invoice, "amount_cents"), 2);
    }
    // A range of UTC days (`to` exclusive) from the first call's day to the day after the last: the same total.
    let day_after = UtcDay::parse(&last_day).unwrap().next();
    let range = api.expect(200, "GET", &format!("/v1/usage?from={first_day}&to={day_after}"), &key, None);
    assert_eq!(int(&range["total"], "billable_secs"), total, "{range:#}");
    assert_eq!(listed(&range["days"], |d| s(d, "day")), group(&records, |r| s(r, "usage_day")));

    // bravo's usage is its own call only, and acme's numbers never appear in it.
    let bravo_usage =
        api.expect(200, "GET", &format!("/v1/usage?month={}", &s(&bravo_records[0], "usage_day")[..7]), &bravo, None);
    assert_eq!(int(&bravo_usage["total"], "billable_secs"), bravo_call.expected_secs());
    assert_eq!(listed(&bravo_usage["numbers"], |n| s(n, "number")).into_keys().collect::<Vec<_>>(), [BRAVO_NUMBER]);

    // The database file, read directly: per tenant, the usage table sums to the call rows, in total and per
    // (day, app, number); and acme's call rows are the ones the API listed.
    let db = rusqlite::Connection::open_with_flags(
        server.data_dir().join("fairvox.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("the database file");
    for (tenant, n, secs) in [("acme", 4, total), ("bravo", 1, bravo_call.expected_secs())] {
        let sum = |sql: &str| -> (i64, i64) { db.query_row(sql, [tenant], |r| Ok((r.get(0)?, r.get(1)?))).unwrap() };
        let calls = sum("SELECT COUNT(*), COALESCE(SUM(billable_secs), 0) FROM calls WHERE tenant_id = ?1");
        let usage = sum(
            "SELECT COALESCE(SUM(calls), 0), COALESCE(SUM(billable_secs), 0) FROM usage_daily WHERE tenant_id = ?1",
        );
        assert_eq!(calls, (n, secs), "{tenant}: the call rows");
        assert_eq!(usage, calls, "{tenant}: SUM(usage_daily) = SUM(calls)");
        let call_groups = db_groups(
            &db,
            "SELECT usage_day || ' ' || app || ' ' || to_uri, COUNT(*), SUM(billable_secs) FROM calls \
             WHERE tenant_id = ?1 GROUP BY usage_day, app, to_uri",
            tenant,
        );
        let usage_groups = db_groups(
            &db,
            "SELECT day || ' ' || app || ' ' || number, calls, billable_secs FROM usage_daily WHERE tenant_id = ?1",
            tenant,
        );
        assert_eq!(usage_groups, call_groups, "{tenant}: usage_daily rows = call rows grouped");
        if tenant == "acme" {
            assert_eq!(usage_groups, usage_rows, "the file holds what the API reported");
        }
    }
    let per_call: BTreeMap<String, i64> = db
        .prepare("SELECT call_sid, billable_secs FROM calls WHERE tenant_id = 'acme'")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let from_api: BTreeMap<String, i64> = records.iter().map(|r| (s(r, "call_sid"), int(r, "billable_secs"))).collect();
    assert_eq!(per_call, from_api);
}
