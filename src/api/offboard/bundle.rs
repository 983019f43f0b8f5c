//! The export bundle of an offboarding: everything the tenant had, as JSON and CSV files in one `tar.gz` under
//! `<data_dir>/offboarding/<tenant>/`, read through the tenant's scope like any other read of its rows. Written to
//! a temporary file, synced, then renamed, so the file is either whole or absent; hashed (SHA-256) after the rename.
//!
//! Contents (under `<tenant>-export/`): `manifest.json` (what each file holds and its SHA-256), `tenant.json`,
//! `apps.json` (auth headers masked as the API shows them), `numbers.json`/`.csv`, `number_releases.json`/`.csv`,
//! `trunks.json`, `keys.json`/`.csv` (metadata: never a key or its hash), `calls.json`/`.csv`, `usage.json`/`.csv`,
//! `invoices.json` (one per month with usage), `audit.json`/`.csv`.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::super::reports::{csv_text, invoice_json, month_bounds, usage_csv};
use super::super::resources::{app_json, key_json};
use crate::sched::plan::PlanSet;
use crate::store::sqlite::MAX_USAGE_DAYS;
use crate::store::{
    AuditQuery, CallQuery, ExportInfo, PageRequest, Store, StoreError, TenantScope, UsageQuery, UsageRow, UtcDay,
};

/// Why a bundle could not be written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> BundleError + '_ {
    move |source| BundleError::Io { path: path.display().to_string(), source }
}

/// The directory that holds a tenant's offboarding files (created private).
pub fn job_dir(data_dir: &Path, tenant: &str) -> PathBuf {
    data_dir.join("offboarding").join(tenant)
}

/// The bundle's file name.
pub fn file_name(tenant: &str) -> String {
    format!("{tenant}-export.tar.gz")
}

/// Writes the tenant's bundle into `dir` and returns what it is. `stale_key_days` is the API's stale rule (keys are
/// shown as the API shows them); `now_ms` stamps the files.
pub fn write(
    store: &dyn Store,
    scope: &TenantScope,
    plans: &PlanSet,
    stale_key_days: u32,
    dir: &Path,
    now_ms: i64,
) -> Result<ExportInfo, BundleError> {
    let tenant = store.own_tenant(scope)?;
    let files = contents(store, scope, plans, stale_key_days, &tenant, now_ms)?;
    create_private_dir(dir)?;
    let name = file_name(tenant.id.as_str());
    let path = dir.join(&name);
    let tmp = dir.join(format!("{name}.tmp"));
    write_archive(&tmp, tenant.id.as_str(), &files, now_ms)?;
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    // The rename is durable only once the directory is synced.
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))?;
    let (sha256, bytes) = sha256_file(&path)?;
    Ok(ExportInfo { file_name: name, bytes, sha256, created_at_ms: now_ms })
}

/// Hex SHA-256 and length of a file.
pub fn sha256_file(path: &Path) -> Result<(String, u64), BundleError> {
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex(&hasher.finalize()), total))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn create_private_dir(dir: &Path) -> Result<(), BundleError> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(io(dir))
}

fn write_archive(tmp: &Path, tenant: &str, files: &[(String, Vec<u8>)], now_ms: i64) -> Result<(), BundleError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let file = options.open(tmp).map_err(io(tmp))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mtime = u64::try_from(now_ms / 1000).unwrap_or(0);
    for (name, bytes) in files {
        let mut header = tar::Header::new_ustar();
        header.set_path(format!("{tenant}-export/{name}")).map_err(io(tmp))?;
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(mtime);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        tar.append(&header, bytes.as_slice()).map_err(io(tmp))?;
    }
    let gz = tar.into_inner().map_err(io(tmp))?;
    let mut file = gz.finish().map_err(io(tmp))?;
    file.flush().map_err(io(tmp))?;
    file.sync_all().map_err(io(tmp))
}

/// Every file of the bundle, `manifest.json` first.
fn contents(
    store: &dyn Store,
    scope: &TenantScope,
    plans: &PlanSet,
    stale_key_days: u32,
    tenant: &crate::store::TenantView,
    now_ms: i64,
) -> Result<Vec<(String, Vec<u8>)>, BundleError> {
    let apps = store.list_apps(scope)?;
    let numbers = store.list_numbers(scope)?;
    let releases = store.list_number_releases(scope)?;
    let trunks = store.list_trunks(scope)?;
    let keys = store.list_keys(scope)?;
    let calls = walk(|page| store.list_calls(scope, CallQuery { page, ..CallQuery::default() }))?;
    let audit = walk(|page| store.list_audit(scope, AuditQuery { page, ..AuditQuery::default() }))?;
    let usage = all_usage(store, scope, tenant.created_at_ms, now_ms)?;
    let price = plans.get(&tenant.plan).map(|p| p.price_per_minute_cents());
    let mut months: Vec<String> = usage.iter().map(|r| r.day.month()).collect();
    months.dedup();
    let invoices: Vec<Value> = months
        .iter()
        .filter_map(|m| {
            let (from, to) = month_bounds("period", m).ok()?;
            let rows: Vec<UsageRow> = usage.iter().filter(|r| r.day >= from && r.day < to).cloned().collect();
            let status = if to.start_unix_ms() <= now_ms { "closed" } else { "open" };
            Some(invoice_json(tenant, price, m, (from, to), status, &rows))
        })
        .collect();

    let pretty = |v: &Value| serde_json::to_vec_pretty(v).unwrap_or_default();
    let mut files: Vec<(String, Vec<u8>, usize)> = vec![
        ("tenant.json".into(), pretty(&json!(tenant)), 1),
        ("apps.json".into(), pretty(&json!(apps.iter().map(app_json).collect::<Vec<_>>())), apps.len()),
        ("numbers.json".into(), pretty(&json!(numbers)), numbers.len()),
        (
            "numbers.csv".into(),
            csv(
                "number,app_id,claimed_at_ms,updated_at_ms",
                numbers.iter().map(|n| {
                    vec![
                        n.number.clone(),
                        n.app_id.to_string(),
                        n.claimed_at_ms.to_string(),
                        n.updated_at_ms.to_string(),
                    ]
                }),
            ),
            numbers.len(),
        ),
        ("number_releases.json".into(), pretty(&json!(releases)), releases.len()),
        (
            "number_releases.csv".into(),
            csv(
                "number,app_id,claimed_at_ms,released_at_ms",
                releases.iter().map(|r| {
                    vec![
                        r.number.clone(),
                        r.app_id.to_string(),
                        r.claimed_at_ms.to_string(),
                        r.released_at_ms.to_string(),
                    ]
                }),
            ),
            releases.len(),
        ),
        ("trunks.json".into(), pretty(&json!(trunks)), trunks.len()),
        (
            "keys.json".into(),
            pretty(&json!(keys.iter().map(|k| key_json(k, now_ms, stale_key_days)).collect::<Vec<_>>())),
            keys.len(),
        ),
        (
            "keys.csv".into(),
            csv(
                "prefix,name,access,created_at_ms,expires_at_ms,last_used_at_ms,revoked_at_ms",
                keys.iter().map(|k| {
                    vec![
                        k.prefix.to_string(),
                        k.name.clone(),
                        k.access.as_str().to_owned(),
                        k.created_at_ms.to_string(),
                        opt(k.expires_at_ms),
                        opt(k.last_used_at_ms),
                        opt(k.revoked_at_ms),
                    ]
                }),
            ),
            keys.len(),
        ),
        ("calls.json".into(), pretty(&json!(calls)), calls.len()),
        (
            "calls.csv".into(),
            csv(
                "call_sid,sip_call_id,from,to,app,invite_at_ms,answer_at_ms,end_at_ms,duration_secs,billable_secs,\
                 usage_day,end_reason,codec,transport,packets_in,packets_out,packets_lost,dtmf_count",
                calls.iter().map(|c| {
                    vec![
                        c.call_sid.clone(),
                        c.sip_call_id.clone(),
                        c.from.clone(),
                        c.to.clone(),
                        c.app.clone(),
                        c.invite_at_ms.to_string(),
                        opt(c.answer_at_ms),
                        c.end_at_ms.to_string(),
                        c.duration_secs.to_string(),
                        c.billable_secs.to_string(),
                        c.usage_day.to_string(),
                        c.end_reason.clone(),
                        c.codec.clone(),
                        c.transport.clone(),
                        c.packets_in.to_string(),
                        c.packets_out.to_string(),
                        c.packets_lost.to_string(),
                        c.dtmf_count.to_string(),
                    ]
                }),
            ),
            calls.len(),
        ),
        ("usage.json".into(), pretty(&json!(usage)), usage.len()),
        ("usage.csv".into(), usage_csv(&usage).into_bytes(), usage.len()),
        ("invoices.json".into(), pretty(&json!(invoices)), invoices.len()),
        ("audit.json".into(), pretty(&json!(audit)), audit.len()),
        (
            "audit.csv".into(),
            csv(
                "id,at_ms,actor,action,target,detail",
                audit.iter().map(|e| {
                    vec![
                        e.id.to_string(),
                        e.at_ms.to_string(),
                        e.actor.clone(),
                        e.action.clone(),
                        e.target.clone(),
                        e.detail.to_string(),
                    ]
                }),
            ),
            audit.len(),
        ),
    ];
    let manifest: Vec<Value> = files
        .iter()
        .map(|(name, bytes, rows)| {
            json!({ "file": name, "rows": rows, "bytes": bytes.len(), "sha256": hex(&Sha256::digest(bytes)) })
        })
        .collect();
    let manifest = json!({
        "tenant": tenant.id,
        "created_at_ms": now_ms,
        "format": "fairvox offboarding export, version 1",
        "files": manifest,
    });
    files.insert(0, ("manifest.json".into(), pretty(&manifest), files.len()));
    Ok(files.into_iter().map(|(name, bytes, _)| (name, bytes)).collect())
}

fn opt(v: Option<i64>) -> String {
    v.map(|v| v.to_string()).unwrap_or_default()
}

/// RFC 4180 text, CRLF line ends, cells defused as the usage CSV's are.
fn csv(header: &str, rows: impl Iterator<Item = Vec<String>>) -> Vec<u8> {
    let mut out = String::with_capacity(256);
    out.push_str(header);
    out.push_str("\r\n");
    for row in rows {
        let cells: Vec<String> = row.iter().map(|c| csv_text(c)).collect();
        out.push_str(&cells.join(","));
        out.push_str("\r\n");
    }
    out.into_bytes()
}

/// Every row of a paged listing.
fn walk<T>(
    mut fetch: impl FnMut(PageRequest) -> Result<crate::store::Page<T>, StoreError>,
) -> Result<Vec<T>, StoreError> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = fetch(PageRequest::new(PageRequest::MAX_LIMIT, cursor)?)?;
        out.extend(page.items);
        match page.next {
            Some(c) => cursor = Some(c),
            None => return Ok(out),
        }
    }
}

/// All usage from the tenant's creation to tomorrow, in windows the store accepts.
fn all_usage(
    store: &dyn Store,
    scope: &TenantScope,
    created_at_ms: i64,
    now_ms: i64,
) -> Result<Vec<UsageRow>, StoreError> {
    let mut out = Vec::new();
    let end = UtcDay::from_unix_ms(now_ms).next();
    let mut from = UtcDay::from_unix_ms(created_at_ms);
    while from < end {
        let to = UtcDay::from_unix_ms((from.start_unix_ms() + MAX_USAGE_DAYS * 86_400_000).min(end.start_unix_ms()));
        out.extend(store.usage(scope, UsageQuery { from, to })?);
        from = to;
    }
    Ok(out)
}
