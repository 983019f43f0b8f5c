//! Human output of the CLI: aligned tables for listings, `field  value` views for one object, readable UTC times
//! for the API's `*_at_ms` fields. Every string from the server is shown with control characters escaped
//! (`client::clean`). `--json` output does not come through here: it is the API's body as received.

use serde_json::Value;

use super::client::clean;
use crate::store::UtcDay;

/// One column of a table: its header, the item's field, and how to show it.
#[derive(Copy, Clone, Debug)]
pub struct Column {
    pub header: &'static str,
    pub field: &'static str,
    pub show: Show,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Show {
    /// As it is (strings unquoted, arrays joined with `, `, objects as `k=v`).
    Plain,
    /// Unix milliseconds as a UTC time.
    Time,
    /// A number of seconds, `12 s`.
    Seconds,
    /// Compact JSON cut to 60 characters.
    Short,
}

pub const fn col(header: &'static str, field: &'static str) -> Column {
    Column { header, field, show: Show::Plain }
}

pub const fn time(header: &'static str, field: &'static str) -> Column {
    Column { header, field, show: Show::Time }
}

pub const fn secs(header: &'static str, field: &'static str) -> Column {
    Column { header, field, show: Show::Seconds }
}

pub const fn short(header: &'static str, field: &'static str) -> Column {
    Column { header, field, show: Show::Short }
}

/// Unix milliseconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc(ms: i64) -> String {
    let day = UtcDay::from_unix_ms(ms);
    let in_day = ms.rem_euclid(86_400_000) / 1000;
    format!("{day} {:02}:{:02}:{:02} UTC", in_day / 3600, in_day / 60 % 60, in_day % 60)
}

/// A value as one cell.
pub fn cell(value: Option<&Value>, show: Show) -> String {
    let Some(value) = value else { return "-".to_owned() };
    match (show, value) {
        (_, Value::Null) => "-".to_owned(),
        (Show::Time, Value::Number(n)) => n.as_i64().map(utc).unwrap_or_else(|| n.to_string()),
        (Show::Seconds, Value::Number(n)) => format!("{n} s"),
        (Show::Short, v) => {
            let text = clean(&v.to_string());
            if text.chars().count() > 60 { format!("{}...", text.chars().take(57).collect::<String>()) } else { text }
        }
        (_, Value::String(s)) => clean(s),
        (_, Value::Bool(b)) => if *b { "yes" } else { "no" }.to_owned(),
        (_, Value::Number(n)) => n.to_string(),
        (_, Value::Array(items)) if items.is_empty() => "-".to_owned(),
        (_, Value::Array(items)) => items.iter().map(|v| cell(Some(v), Show::Plain)).collect::<Vec<_>>().join(", "),
        (_, Value::Object(map)) if map.is_empty() => "-".to_owned(),
        (_, Value::Object(map)) => map
            .iter()
            .map(|(k, v)| format!("{}={}", clean(k), cell(Some(v), Show::Plain)))
            .collect::<Vec<_>>()
            .join(" "),
    }
}

/// Rows under headers, columns two spaces apart; the columns marked in `numeric` are right-aligned.
pub fn table(headers: &[String], rows: &[Vec<String>], numeric: &[bool]) -> String {
    let widths: Vec<usize> = (0..headers.len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).chain([headers[i].chars().count()]).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for line in std::iter::once(headers).chain(rows.iter().map(Vec::as_slice)) {
        let mut text = String::new();
        for (i, c) in line.iter().enumerate() {
            let pad = widths[i].saturating_sub(c.chars().count());
            let last = i + 1 == line.len();
            if numeric.get(i).copied().unwrap_or(false) {
                text.push_str(&" ".repeat(pad));
                text.push_str(c);
            } else {
                text.push_str(c);
                if !last {
                    text.push_str(&" ".repeat(pad));
                }
            }
            if !last {
                text.push_str("  ");
            }
        }
        out.push_str(text.trim_end());
        out.push('\n');
    }
    out
}

/// Whether every item's `field` is a JSON number (or absent or null), and one is: a column to right-align.
fn numeric(items: &[Value], field: &str) -> bool {
    items.iter().any(|i| i.get(field).is_some_and(Value::is_number))
        && items.iter().all(|i| i.get(field).is_none_or(|v| v.is_number() || v.is_null()))
}

/// A listing as a table of `columns`; `(none)` under the headers when it is empty.
pub fn items_table(items: &[Value], columns: &[Column]) -> String {
    let headers: Vec<String> = columns.iter().map(|c| c.header.to_owned()).collect();
    let rows: Vec<Vec<String>> =
        items.iter().map(|item| columns.iter().map(|c| cell(item.get(c.field), c.show)).collect()).collect();
    let right: Vec<bool> = columns.iter().map(|c| c.show != Show::Time && numeric(items, c.field)).collect();
    let mut out = table(&headers, &rows, &right);
    if rows.is_empty() {
        out.push_str("(none)\n");
    }
    out
}

/// A listing whose columns are not known in advance: every field of its items, in order of appearance.
pub fn generic_table(items: &[Value]) -> String {
    let mut fields: Vec<String> = Vec::new();
    for item in items {
        if let Some(map) = item.as_object() {
            for k in map.keys() {
                if !fields.contains(k) {
                    fields.push(k.clone());
                }
            }
        }
    }
    let headers: Vec<String> = fields.iter().map(|f| clean(f).to_uppercase()).collect();
    let rows: Vec<Vec<String>> =
        items.iter().map(|item| fields.iter().map(|f| cell(item.get(f), show_for(f))).collect()).collect();
    if headers.is_empty() {
        return "(none)\n".to_owned();
    }
    let right: Vec<bool> = fields.iter().map(|f| show_for(f) != Show::Time && numeric(items, f)).collect();
    table(&headers, &rows, &right)
}

/// How a field is shown by its name: `*_at_ms` and `at_ms` are times.
fn show_for(field: &str) -> Show {
    if field.ends_with("_at_ms") || field == "at_ms" { Show::Time } else { Show::Plain }
}

/// One object as `field  value` lines (times readable), then each field that is a list of objects as a table of
/// its own under its name.
pub fn object(value: &Value) -> String {
    let Some(map) = value.as_object() else { return format!("{}\n", cell(Some(value), Show::Plain)) };
    let mut rows = Vec::new();
    let mut tables = Vec::new();
    // Identifiers first (and the new key, which is shown once), then the rest in the API's (alphabetical) order.
    let first = ["id", "key", "prefix", "number", "call_sid", "tenant", "name", "status"];
    let mut ordered: Vec<(&String, &Value)> = first.iter().filter_map(|f| map.get_key_value(*f)).collect();
    ordered.extend(map.iter().filter(|(k, _)| !first.contains(&k.as_str())));
    for (k, v) in ordered {
        match v {
            Value::Array(items) if items.iter().any(Value::is_object) => tables.push((k, items)),
            _ => rows.push(vec![clean(k), cell(Some(v), show_for(k))]),
        }
    }
    let width = rows.iter().map(|r| r[0].chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    for row in &rows {
        let pad = width.saturating_sub(row[0].chars().count());
        out.push_str(&format!("{}{}  {}\n", row[0], " ".repeat(pad), row[1]));
    }
    for (name, items) in tables {
        out.push_str(&format!("\n{}:\n", clean(name)));
        out.push_str(&generic_table(items));
    }
    out
}

/// A value inside a step's detail: times for `*_ms` fields, nested objects in braces, lists joined with `,` (spaces
/// separate the detail's `field=value` pairs).
fn detail_value(field: &str, value: &Value) -> String {
    match value {
        Value::Number(n) if field.ends_with("_ms") => n.as_i64().map(utc).unwrap_or_else(|| n.to_string()),
        Value::Array(items) if !items.is_empty() => {
            items.iter().map(|v| detail_value("", v)).collect::<Vec<_>>().join(",")
        }
        Value::Object(map) if !map.is_empty() => format!(
            "{{{}}}",
            map.iter().map(|(k, v)| format!("{}={}", clean(k), detail_value(k, v))).collect::<Vec<_>>().join(" ")
        ),
        other => cell(Some(other), Show::Plain),
    }
}

/// A step's `detail` as `field=value` pairs (`-` when it is empty).
fn step_detail(detail: Option<&Value>) -> String {
    match detail {
        Some(Value::Object(map)) if !map.is_empty() => {
            map.iter().map(|(k, v)| format!("{}={}", clean(k), detail_value(k, v))).collect::<Vec<_>>().join(" ")
        }
        Some(Value::Object(_)) | Some(Value::Null) | None => "-".to_owned(),
        Some(other) => cell(Some(other), Show::Plain),
    }
}

/// An offboarding job (`GET /v1/tenants/{id}/offboard`): its state as `field  value` lines, the steps as a table
/// (what each did, from its `detail`), and the downloads it has links for, with the command that fetches each.
pub fn offboard_job(job: &Value) -> String {
    let Some(map) = job.as_object() else { return object(job) };
    let mut rows: Vec<(String, String)> = Vec::new();
    for field in ["tenant", "status", "step", "started_by"] {
        rows.push((field.to_owned(), cell(map.get(field), Show::Plain)));
    }
    rows.push(("grace_secs".to_owned(), cell(map.get("grace_secs"), Show::Seconds)));
    for field in ["created_at_ms", "drain_deadline_ms", "finished_at_ms"] {
        rows.push((field.to_owned(), cell(map.get(field), Show::Time)));
    }
    let error = match map.get("error") {
        Some(Value::Object(e)) => format!(
            "step {} failed (attempt {}, {}): {}",
            cell(e.get("step"), Show::Plain),
            cell(e.get("attempts"), Show::Plain),
            cell(e.get("at_ms"), Show::Time),
            cell(e.get("message"), Show::Plain)
        ),
        other => cell(other, Show::Plain),
    };
    rows.push(("error".to_owned(), error));
    let export = match map.get("export") {
        Some(Value::Object(e)) => format!(
            "{} ({} bytes, SHA-256 {})",
            cell(e.get("file_name"), Show::Plain),
            cell(e.get("bytes"), Show::Plain),
            cell(e.get("sha256"), Show::Plain)
        ),
        other => cell(other, Show::Plain),
    };
    rows.push(("export".to_owned(), export));
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    let mut out = String::new();
    for (k, v) in &rows {
        out.push_str(&format!("{k:width$}  {v}\n"));
    }

    let steps = map.get("steps").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
    let headers: Vec<String> = ["STEP", "STATE", "STARTED", "FINISHED", "DETAIL"].map(str::to_owned).to_vec();
    let step_rows: Vec<Vec<String>> = steps
        .iter()
        .map(|s| {
            vec![
                cell(s.get("name"), Show::Plain),
                cell(s.get("state"), Show::Plain),
                cell(s.get("started_at_ms"), Show::Time),
                cell(s.get("finished_at_ms"), Show::Time),
                step_detail(s.get("detail")),
            ]
        })
        .collect();
    out.push('\n');
    out.push_str(&table(&headers, &step_rows, &[]));

    // The downloads, by the CLI command that fetches each (links still null are not there yet).
    let tenant = cell(map.get("tenant"), Show::Plain);
    let links = map.get("links");
    let ready: Vec<Vec<String>> = [("export", "export"), ("final_invoice", "invoice"), ("certificate", "certificate")]
        .iter()
        .filter_map(|(link, command)| {
            let path = links.and_then(|l| l.get(link)).and_then(Value::as_str)?;
            Some(vec![(*link).to_owned(), clean(path), format!("fairvox offboard {command} {tenant}")])
        })
        .collect();
    if !ready.is_empty() {
        out.push_str("\ndownloads:\n");
        out.push_str(&table(&["WHAT", "PATH", "COMMAND"].map(str::to_owned), &ready, &[]));
    }
    out
}

/// The `items` of a listing body (`{"items": [...], "next": ...}`).
pub fn items(body: &Value) -> &[Value] {
    body.get("items").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

/// The `next` cursor of a page, when there is one.
pub fn next_cursor(body: &Value) -> Option<String> {
    body.get("next").and_then(Value::as_str).map(clean)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn times_are_utc_and_readable() {
        assert_eq!(utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc(1_795_460_726_966), "2026-11-23 19:05:26 UTC"); // date -u -d @1795460726
        assert_eq!(utc(-1), "1969-12-31 23:59:59 UTC");
        assert_eq!(cell(Some(&json!(null)), Show::Time), "-");
        assert_eq!(cell(None, Show::Plain), "-");
        assert_eq!(cell(Some(&json!(["PCMU", "PCMA"])), Show::Plain), "PCMU, PCMA");
        assert_eq!(cell(Some(&json!({"lang": "en"})), Show::Plain), "lang=en");
        assert_eq!(cell(Some(&json!(12)), Show::Seconds), "12 s");
        assert_eq!(cell(Some(&json!("a\u{1b}[31mb")), Show::Plain), "a\\u{1b}[31mb");
    }

    #[test]
    fn tables_align_columns_and_right_align_numbers() {
        let items = vec![
            json!({"id": "acme", "calls": 10, "created_at_ms": 0}),
            json!({"id": "a-much-longer-id", "calls": 7, "created_at_ms": 86_400_000}),
        ];
        let out = items_table(&items, &[col("ID", "id"), col("CALLS", "calls"), time("CREATED", "created_at_ms")]);
        assert_eq!(
            out,
            "ID                CALLS  CREATED\n\
             acme                 10  1970-01-01 00:00:00 UTC\n\
             a-much-longer-id      7  1970-01-02 00:00:00 UTC\n"
        );
        assert_eq!(items_table(&[], &[col("ID", "id")]), "ID\n(none)\n");
    }

    #[test]
    fn an_object_lists_fields_then_its_lists_as_tables() {
        let v = json!({"period": "2026-11", "amount_cents": null, "created_at_ms": 0,
                       "lines": [{"app": "echo", "calls": 1}]});
        let out = object(&v);
        assert!(out.contains("amount_cents   -\n"), "{out}");
        assert!(out.contains("created_at_ms  1970-01-01 00:00:00 UTC\n"), "{out}");
        assert!(out.contains("\nlines:\nAPP   CALLS\necho      1\n"), "{out}");
    }

    #[test]
    fn an_offboarding_job_shows_its_steps_and_what_it_produced() {
        let job = json!({
            "tenant": "acme", "status": "running", "step": "drain_calls", "started_by": "operator", "grace_secs": 5,
            "created_at_ms": 0, "updated_at_ms": 1000, "finished_at_ms": null, "drain_deadline_ms": 5000,
            "error": {"step": "drain_calls", "message": "disk full", "at_ms": 2000, "attempts": 2},
            "export": null,
            "steps": [
                {"name": "suspend", "state": "done", "started_at_ms": 0, "finished_at_ms": 1000,
                 "detail": {"status_before": "active"}},
                {"name": "drain_calls", "state": "running", "started_at_ms": 1000, "finished_at_ms": null,
                 "detail": {}},
                {"name": "delete_rows", "state": "pending", "started_at_ms": null, "finished_at_ms": null,
                 "detail": {"rows_deleted": {"apps": 1, "calls": 2}, "deadline_ms": 0, "released": ["+1555", "+1666"]}}
            ],
            "links": {"self": "/v1/tenants/acme/offboard", "export": null, "final_invoice": null, "certificate": null}
        });
        let out = offboard_job(&job);
        assert!(out.starts_with("tenant             acme\nstatus             running\n"), "{out}");
        assert!(out.contains("grace_secs         5 s\n"), "{out}");
        assert!(out.contains("drain_deadline_ms  1970-01-01 00:00:05 UTC\n"), "{out}");
        assert!(out.contains("finished_at_ms     -\n"), "{out}");
        assert!(
            out.contains(
                "error              step drain_calls failed (attempt 2, 1970-01-01 00:00:02 UTC): disk full\n"
            ),
            "{out}"
        );
        assert!(
            out.contains("\nSTEP         STATE    STARTED                  FINISHED                 DETAIL\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "suspend      done     1970-01-01 00:00:00 UTC  1970-01-01 00:00:01 UTC  status_before=active\n"
            ),
            "{out}"
        );
        assert!(out.contains("drain_calls  running  1970-01-01 00:00:01 UTC  -                        -\n"), "{out}");
        assert!(
            out.contains("deadline_ms=1970-01-01 00:00:00 UTC released=+1555,+1666 rows_deleted={apps=1 calls=2}\n"),
            "{out}"
        );
        assert!(!out.contains("downloads:"), "no link yet: {out}");

        let mut done = job.clone();
        done["links"]["export"] = json!("/v1/tenants/acme/offboard/export");
        done["export"] = json!({"file_name": "acme-export.tar.gz", "bytes": 3, "sha256": "ab", "created_at_ms": 0});
        let out = offboard_job(&done);
        assert!(out.contains("export             acme-export.tar.gz (3 bytes, SHA-256 ab)\n"), "{out}");
        assert!(
            out.contains(
                "\ndownloads:\nWHAT    PATH                              COMMAND\n\
                           export  /v1/tenants/acme/offboard/export  fairvox offboard export acme\n"
            ),
            "{out}"
        );
    }
}
