//! What a tenant reads about its traffic: call records (time filters, cursor pages), usage (billable seconds per
//! day and month, per app and number; JSON or CSV), invoices (a month's usage times the plan's price) and the audit
//! log. Billable seconds are the store's (`docs/billing.md`); this module only sums and prices them.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::ApiState;
use super::error::ApiError;
use super::extract::{Ids, Params, ReadScope};
use crate::store::{
    self, AuditQuery, CallQuery, Clock as _, Cursor, PageRequest, SystemClock, TenantView, UsageQuery, UsageRow, UtcDay,
};

/// `limit` and `cursor` of a listing.
pub fn page_request(params: &mut Params) -> Result<PageRequest, ApiError> {
    let limit = match params.take("limit")? {
        None => PageRequest::DEFAULT_LIMIT,
        Some(l) => {
            l.parse().map_err(|_| ApiError::invalid("limit", format!("must be 1-{}", PageRequest::MAX_LIMIT)))?
        }
    };
    let cursor = params.take("cursor")?.map(|c| Cursor::from_client(&c)).transpose()?;
    Ok(PageRequest::new(limit, cursor)?)
}

/// A point in time as a query gives it: Unix milliseconds, or `YYYY-MM-DD` (00:00 UTC that day).
fn instant(params: &mut Params, name: &str) -> Result<Option<i64>, ApiError> {
    let Some(text) = params.take(name)? else { return Ok(None) };
    if let Ok(ms) = text.parse::<i64>() {
        return Ok(Some(ms));
    }
    UtcDay::parse(&text)
        .map(|d| Some(d.start_unix_ms()))
        .map_err(|_| ApiError::invalid(name, format!("{text:?} is neither Unix milliseconds nor YYYY-MM-DD")))
}

fn today() -> UtcDay {
    UtcDay::from_unix_ms(SystemClock.now_ms())
}

/// The first day of `YYYY-MM` and of the month after it.
pub(crate) fn month_bounds(field: &str, text: &str) -> Result<(UtcDay, UtcDay), ApiError> {
    let bad = || ApiError::invalid(field, format!("{text:?} is not a month of the form YYYY-MM"));
    let (y, m) = text.split_once('-').ok_or_else(bad)?;
    if y.len() != 4 || m.len() != 2 {
        return Err(bad());
    }
    let (year, month): (u32, u32) = (y.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if !(1..=12).contains(&month) || year == 9999 && month == 12 {
        return Err(bad());
    }
    let first = UtcDay::parse(&format!("{year:04}-{month:02}-01")).map_err(|_| bad())?;
    let (ny, nm) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
    let next = UtcDay::parse(&format!("{ny:04}-{nm:02}-01")).map_err(|_| bad())?;
    Ok((first, next))
}

// ---- calls ----

pub async fn list_calls(
    State(state): State<ApiState>,
    ReadScope(scope): ReadScope,
    mut params: Params,
) -> Result<Json<Value>, ApiError> {
    let query = CallQuery {
        from_ms: instant(&mut params, "from")?,
        to_ms: instant(&mut params, "to")?,
        page: page_request(&mut params)?,
    };
    params.finish()?;
    let page = store::blocking(state.store(), move |s| s.list_calls(&scope, query)).await?;
    Ok(Json(json!({ "items": page.items, "next": page.next })))
}

pub async fn get_call(
    State(state): State<ApiState>,
    ReadScope(scope): ReadScope,
    ids: Ids,
) -> Result<Json<Value>, ApiError> {
    let sid = ids.get("call_sid").to_owned();
    if sid.is_empty() || sid.len() > 128 {
        return Err(ApiError::NotFound("call"));
    }
    let call = store::blocking(state.store(), move |s| s.call(&scope, &sid)).await?;
    Ok(Json(json!(call)))
}

// ---- usage ----

#[derive(Default, Clone, Copy)]
struct Sum {
    calls: i64,
    billable_secs: i64,
}

impl Sum {
    fn add(&mut self, r: &UsageRow) {
        self.calls += r.calls;
        self.billable_secs += r.billable_secs;
    }
}

fn sums<K: Ord>(rows: &[UsageRow], key: impl Fn(&UsageRow) -> K) -> BTreeMap<K, Sum> {
    let mut out: BTreeMap<K, Sum> = BTreeMap::new();
    for r in rows {
        out.entry(key(r)).or_default().add(r);
    }
    out
}

fn sum_list<K: serde::Serialize>(name: &str, sums: BTreeMap<K, Sum>) -> Vec<Value> {
    sums.into_iter().map(|(k, s)| json!({ name: k, "calls": s.calls, "billable_secs": s.billable_secs })).collect()
}

pub async fn usage(
    State(state): State<ApiState>,
    ReadScope(scope): ReadScope,
    mut params: Params,
) -> Result<Response, ApiError> {
    let day = |params: &mut Params, name: &str| -> Result<Option<UtcDay>, ApiError> {
        params.take(name)?.map(|t| UtcDay::parse(&t).map_err(|e| ApiError::invalid(name, e.reason))).transpose()
    };
    let month = params.take("month")?;
    let (from, to) = match (month, day(&mut params, "from")?, day(&mut params, "to")?) {
        (Some(m), None, None) => month_bounds("month", &m)?,
        (Some(_), _, _) => return Err(ApiError::invalid("month", "give month, or from and to, not both")),
        (None, from, to) => {
            let (this_month, _) = month_bounds("month", &today().month())?;
            (from.unwrap_or(this_month), to.unwrap_or_else(|| today().next()))
        }
    };
    let csv = match params.take("format")?.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(other) => return Err(ApiError::invalid("format", format!("{other:?} is not \"json\" or \"csv\""))),
    };
    params.finish()?;
    let rows = store::blocking(state.store(), move |s| s.usage(&scope, UsageQuery { from, to })).await?;
    if csv {
        return Ok(([(header::CONTENT_TYPE, "text/csv; charset=utf-8")], usage_csv(&rows)).into_response());
    }
    let total = sums(&rows, |_| ()).remove(&()).unwrap_or_default();
    Ok(Json(json!({
        "from": from,
        "to": to,
        "total": { "calls": total.calls, "billable_secs": total.billable_secs },
        "months": sum_list("month", sums(&rows, |r| r.day.month())),
        "days": sum_list("day", sums(&rows, |r| r.day)),
        "apps": sum_list("app", sums(&rows, |r| r.app.clone())),
        "numbers": sum_list("number", sums(&rows, |r| r.number.clone())),
        "rows": rows,
    }))
    .into_response())
}

/// `day,month,app,number,calls,billable_secs`, one line per usage row (RFC 4180).
pub(crate) fn usage_csv(rows: &[UsageRow]) -> String {
    let mut out = String::from("day,month,app,number,calls,billable_secs\r\n");
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{}\r\n",
            r.day,
            r.day.month(),
            csv_text(&r.app),
            csv_text(&r.number),
            r.calls,
            r.billable_secs
        ));
    }
    out
}

/// A text cell: quoted when it holds a separator, quote or line break; prefixed with `'` when a spreadsheet would
/// take it for a formula (`=`, `-`, `@`, a tab, or `+` not followed by digits only).
pub(crate) fn csv_text(text: &str) -> String {
    let formula = match text.chars().next() {
        Some('=' | '-' | '@' | '\t' | '\r') => true,
        Some('+') => !(text.len() > 1 && text[1..].bytes().all(|b| b.is_ascii_digit())),
        _ => false,
    };
    let text = if formula { format!("'{text}") } else { text.to_owned() };
    if text.contains([',', '"', '\r', '\n']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text }
}

// ---- invoices ----

/// Cents for `billable_secs` at `price_per_minute_cents`: seconds × price / 60, rounded half up, on the period's
/// total (not per line).
pub fn amount_cents(billable_secs: i64, price_per_minute_cents: u32) -> i64 {
    let cents_x60 = i128::from(billable_secs.max(0)) * i128::from(price_per_minute_cents);
    i64::try_from((cents_x60 + 30) / 60).unwrap_or(i64::MAX)
}

pub async fn invoice(
    State(state): State<ApiState>,
    ReadScope(scope): ReadScope,
    mut params: Params,
) -> Result<Json<Value>, ApiError> {
    let period = params.take("period")?.unwrap_or_else(|| today().month());
    let (from, to) = month_bounds("period", &period)?;
    params.finish()?;
    let (tenant, rows) =
        store::blocking(state.store(), move |s| Ok((s.own_tenant(&scope)?, s.usage(&scope, UsageQuery { from, to })?)))
            .await?;
    let price = state.plans().get(&tenant.plan).map(|p| p.price_per_minute_cents());
    let closed = to.start_unix_ms() <= SystemClock.now_ms();
    let status = if closed { "closed" } else { "open" };
    Ok(Json(invoice_json(&tenant, price, &period, (from, to), status, &rows)))
}

/// An invoice: the usage `rows` of `[from, to)` priced at `price_per_minute_cents` (`None`: the plan is gone).
/// The one shape of `GET /invoices`, of the export bundle's invoices and of the offboarding's final invoice.
pub(crate) fn invoice_json(
    tenant: &TenantView,
    price: Option<u32>,
    period: &str,
    (from, to): (UtcDay, UtcDay),
    status: &str,
    rows: &[UsageRow],
) -> Value {
    let total = sums(rows, |_| ()).remove(&()).unwrap_or_default();
    let lines: Vec<Value> = sums(rows, |r| (r.app.clone(), r.number.clone()))
        .into_iter()
        .map(|((app, number), s)| json!({ "app": app, "number": number, "calls": s.calls, "billable_secs": s.billable_secs }))
        .collect();
    json!({
        "tenant": tenant.id,
        "period": period,
        "from": from,
        "to": to,
        "status": status,
        "plan": tenant.plan,
        "price_per_minute_cents": price,
        "calls": total.calls,
        "billable_secs": total.billable_secs,
        "amount_cents": price.map(|p| amount_cents(total.billable_secs, p)),
        "lines": lines,
    })
}

// ---- audit ----

pub async fn list_audit(
    State(state): State<ApiState>,
    ReadScope(scope): ReadScope,
    mut params: Params,
) -> Result<Json<Value>, ApiError> {
    let query = AuditQuery {
        from_ms: instant(&mut params, "from")?,
        to_ms: instant(&mut params, "to")?,
        page: page_request(&mut params)?,
    };
    params.finish()?;
    let page = store::blocking(state.store(), move |s| s.list_audit(&scope, query)).await?;
    Ok(Json(json!({ "items": page.items, "next": page.next })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_round_half_up_on_the_total() {
        assert_eq!(amount_cents(0, 5), 0);
        assert_eq!(amount_cents(60, 5), 5);
        assert_eq!(amount_cents(6, 5), 1, "0.5 cents rounds up");
        assert_eq!(amount_cents(5, 5), 0, "0.42 cents rounds down");
        assert_eq!(amount_cents(90, 3), 5, "4.5 rounds up");
        assert_eq!(amount_cents(i64::MAX, 1_000_000), i64::MAX, "saturates");
        assert_eq!(amount_cents(-5, 10), 0);
    }

    #[test]
    fn months() {
        let (a, b) = month_bounds("period", "2024-12").unwrap();
        assert_eq!((a.to_string(), b.to_string()), ("2024-12-01".into(), "2025-01-01".into()));
        let (a, b) = month_bounds("period", "2024-02").unwrap();
        assert_eq!((a.to_string(), b.to_string()), ("2024-02-01".into(), "2024-03-01".into()));
        for bad in ["2024-13", "2024-1", "24-01", "2024/01", "", "9999-12", "2024-00"] {
            assert!(month_bounds("period", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn csv_cells_are_quoted_and_defused() {
        assert_eq!(csv_text("rx"), "rx");
        assert_eq!(csv_text("+15551230001"), "+15551230001", "E.164 numbers stay as they are");
        assert_eq!(csv_text("a,b"), "\"a,b\"");
        assert_eq!(csv_text("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_text("=HYPERLINK(1)"), "'=HYPERLINK(1)");
        assert_eq!(csv_text("+SUM(A1)"), "'+SUM(A1)");
        assert_eq!(csv_text("-1"), "'-1");
        let rows = vec![UsageRow {
            day: UtcDay::parse("2024-05-31").unwrap(),
            app: "rx, main".into(),
            number: "+15551230001".into(),
            calls: 2,
            billable_secs: 61,
        }];
        assert_eq!(
            usage_csv(&rows),
            "day,month,app,number,calls,billable_secs\r\n2024-05-31,2024-05,\"rx, main\",+15551230001,2,61\r\n"
        );
    }
}
