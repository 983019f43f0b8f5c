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
}
