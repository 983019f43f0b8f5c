//! The embedded [`Store`]: one SQLite file (`fairvox.db` in the data directory) in WAL mode, with foreign keys on,
//! a busy timeout, `synchronous = FULL` (a committed call record survives a power cut) and the migrations of
//! [`migrations`] applied at open.
//!
//! One writer connection behind a lock (SQLite has one writer at a time anyway; taking it with `BEGIN IMMEDIATE`
//! means a transaction never fails half-way for want of it) and a few read-only connections that WAL lets read
//! while the writer writes. Every query names `tenant_id` from the caller's [`TenantScope`]; rows of another
//! tenant are never read, so they are [`StoreError::NotFound`] like rows that do not exist.

mod migrations;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ipnet::IpNet;
use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior, params};
use serde_json::json;

use crate::call::record::CallRecord;
use crate::proto::media_streams::MediaFormat;
use crate::tenant::{App, Codec, E164, Trunk};

use super::billing::{self, UtcDay};
use super::keys::{self, ApiKeySecret, KeyHasher, KeyPepper, KeyPrefix};
use super::model::{self, *};
use super::{
    Actor, AuthError, BackendError, Clock, Conflict, Entity, InvalidInput, Operator, Store, StoreError, SystemClock,
    TenantScope,
};

use migrations::MIGRATIONS;

/// The database's file name in the data directory.
pub const DB_FILE: &str = "fairvox.db";
/// The key pepper's file name in the data directory.
pub const PEPPER_FILE: &str = "key-pepper";
/// `last_used_at` is written at most this often per key, so that authenticating is a read most of the time.
pub const LAST_USED_RESOLUTION_MS: i64 = 60_000;
/// The widest usage query, in days.
pub const MAX_USAGE_DAYS: i64 = 400;

const READERS: usize = 4;
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

pub struct SqliteStore {
    writer: Mutex<Connection>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    hasher: KeyHasher,
    clock: Arc<dyn Clock>,
    path: PathBuf,
}

impl SqliteStore {
    /// Opens (creating) `fairvox.db` and `key-pepper` in `data_dir`, with the system clock.
    pub fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError::Backend(BackendError::new(format!("cannot create {}: {e}", data_dir.display())))
        })?;
        let pepper = KeyPepper::load_or_create(&data_dir.join(PEPPER_FILE))?;
        SqliteStore::open_file(&data_dir.join(DB_FILE), pepper, Arc::new(SystemClock))
    }

    /// Opens (creating) the database at `path` and brings its schema up to date.
    /// A new file is created readable by its owner only (it holds agents' auth headers); SQLite gives the `-wal`
    /// and `-shm` files the same mode.
    pub fn open_file(path: &Path, pepper: KeyPepper, clock: Arc<dyn Clock>) -> Result<SqliteStore, StoreError> {
        create_private(path)?;
        let mut writer = connect(path, false)?;
        let mode: String = writer.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(backend(format!("{}: cannot switch to WAL (journal_mode is {mode})", path.display())));
        }
        migrate(&mut writer)?;
        let readers = (0..READERS).map(|_| connect(path, true).map(Mutex::new)).collect::<Result<Vec<_>, _>>()?;
        Ok(SqliteStore {
            writer: Mutex::new(writer),
            readers,
            next_reader: AtomicUsize::new(0),
            hasher: KeyHasher::new(pepper),
            clock,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The schema version the file is at (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.read(|c| Ok(c.query_row("PRAGMA user_version", [], |r| r.get(0))?))
    }

    /// The newest schema version this binary knows.
    pub fn latest_schema_version() -> u32 {
        MIGRATIONS.last().map(|m| m.version).unwrap_or(0)
    }

    /// Runs `f` in one `BEGIN IMMEDIATE` transaction on the writer, with the time to stamp rows with. An error
    /// rolls everything back.
    fn write<T>(&self, f: impl FnOnce(&Transaction<'_>, i64) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx, self.clock.now_ms())?;
        tx.commit()?;
        Ok(out)
    }

    /// Runs `f` in one read transaction on a reader, so that several statements see one state.
    fn read<T>(&self, f: impl FnOnce(&Transaction<'_>) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        let mut conn = self.readers[i].lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Deferred)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }
}

/// Creates an empty `path` with mode 0600 unless it exists.
fn create_private(path: &Path) -> Result<(), StoreError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(backend(format!("cannot create {}: {e}", path.display()))),
    }
}

fn connect(path: &Path, read_only: bool) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| backend(format!("cannot open {}: {e}", path.display())))?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.pragma_update(None, "foreign_keys", true)?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Deleted rows are overwritten, not left in free pages: an offboarded tenant's data must not stay readable in
    // the file (deletes are rare here, so the extra writes cost nothing that matters).
    conn.pragma_update(None, "secure_delete", true)?;
    if read_only {
        conn.pragma_update(None, "query_only", true)?;
    }
    Ok(conn)
}

/// Applies the migrations the file lacks, each in its own transaction with its version; refuses a file from a newer
/// binary.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    migrate_up_to(conn, SqliteStore::latest_schema_version())
}

/// [`migrate`], stopping after migration `target` (below the latest only to make an older binary's file in tests).
fn migrate_up_to(conn: &mut Connection, target: u32) -> Result<(), StoreError> {
    let latest = SqliteStore::latest_schema_version();
    for m in MIGRATIONS.iter().take_while(|m| m.version <= target) {
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current: u32 = tx.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if current > latest {
            return Err(backend(format!(
                "the database is at schema version {current}, newer than this binary's {latest}: upgrade fairvox"
            )));
        }
        if current >= m.version {
            continue;
        }
        if current + 1 != m.version {
            return Err(backend(format!("schema version {current} cannot take migration {}", m.version)));
        }
        tx.execute_batch(m.sql).map_err(|e| backend(format!("migration {} ({}): {e}", m.version, m.name)))?;
        tx.pragma_update(None, "user_version", m.version)?;
        tx.commit()?;
        tracing::info!(version = m.version, name = m.name, "store migration applied");
    }
    Ok(())
}

/// Creates the database at `path` as a binary of schema `version` left it (no rows), for the migration tests.
#[cfg(test)]
pub(crate) fn create_at_version(path: &Path, version: u32) -> Result<(), StoreError> {
    create_private(path)?;
    migrate_up_to(&mut connect(path, false)?, version)
}

// ---- errors ----

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> StoreError {
        StoreError::Backend(BackendError::new(format!("sqlite: {e}")))
    }
}

impl From<rusqlite::Error> for AuthError {
    fn from(e: rusqlite::Error) -> AuthError {
        AuthError::Backend(BackendError::new(format!("sqlite: {e}")))
    }
}

fn backend(message: String) -> StoreError {
    StoreError::Backend(BackendError::new(message))
}

fn corrupt(what: &str) -> StoreError {
    backend(format!("stored {what} does not parse"))
}

/// Which constraint a failed statement broke, if any.
#[derive(Debug, PartialEq, Eq)]
enum Violation {
    Unique,
    ForeignKey,
}

fn violation(e: &rusqlite::Error) -> Option<Violation> {
    let code = e.sqlite_error()?.extended_code;
    match code {
        rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY | rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE => {
            Some(Violation::Unique)
        }
        rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY => Some(Violation::ForeignKey),
        _ => None,
    }
}

/// Maps a write's constraint failures: a unique clash to `on_unique`, a missing parent to the tenant being gone.
fn map_write(e: rusqlite::Error, on_unique: Conflict) -> StoreError {
    match violation(&e) {
        Some(Violation::Unique) => StoreError::Conflict(on_unique),
        Some(Violation::ForeignKey) => StoreError::NotFound(Entity::Tenant),
        None => e.into(),
    }
}

fn to_i64(value: u64, field: &'static str) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Invalid(InvalidInput::new(field, "out of range")))
}

// ---- audit and routing version ----

fn audit(
    tx: &Transaction<'_>,
    tenant: &TenantSlug,
    actor: &Actor,
    at_ms: i64,
    action: AuditAction,
    target: &str,
    detail: serde_json::Value,
) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO audit_log (tenant_id, at_ms, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![tenant.as_str(), at_ms, actor.to_string(), action.as_str(), target, detail.to_string()])?;
    Ok(())
}

fn bump_routing(tx: &Transaction<'_>) -> Result<(), StoreError> {
    tx.execute("UPDATE routing_version SET version = version + 1 WHERE singleton = 1", [])?;
    Ok(())
}

// ---- cursors: base64url of `kind` and parts separated by 0x1f ----

fn encode_cursor(kind: &str, parts: &[&str]) -> Cursor {
    let mut text = kind.to_owned();
    for p in parts {
        text.push('\u{1f}');
        text.push_str(p);
    }
    Cursor::new(URL_SAFE_NO_PAD.encode(text))
}

fn decode_cursor(cursor: &Cursor, kind: &str, n: usize) -> Result<Vec<String>, StoreError> {
    let bad = || StoreError::Invalid(InvalidInput::new("cursor", "not a cursor of this listing"));
    let bytes = URL_SAFE_NO_PAD.decode(cursor.as_str()).map_err(|_| bad())?;
    let text = String::from_utf8(bytes).map_err(|_| bad())?;
    let mut parts = text.split('\u{1f}');
    if parts.next() != Some(kind) {
        return Err(bad());
    }
    let parts: Vec<String> = parts.map(str::to_owned).collect();
    if parts.len() != n {
        return Err(bad());
    }
    Ok(parts)
}

fn cursor_i64(text: &str) -> Result<i64, StoreError> {
    text.parse().map_err(|_| StoreError::Invalid(InvalidInput::new("cursor", "not a cursor of this listing")))
}

/// Cuts a `limit + 1` fetch to `limit` and makes the next cursor from the last row kept.
fn paginate<T>(mut rows: Vec<T>, limit: u32, cursor_of: impl Fn(&T) -> Cursor) -> Page<T> {
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next = if more { rows.last().map(cursor_of) } else { None };
    Page { items: rows, next }
}

// ---- rows ----

const TENANT_COLUMNS: &str = "id, name, plan, status, created_at_ms, updated_at_ms";

fn tenant_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, String, String, i64, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
}

fn tenant_view(row: (String, String, String, String, i64, i64)) -> Result<TenantView, StoreError> {
    let (id, name, plan, status, created_at_ms, updated_at_ms) = row;
    Ok(TenantView {
        id: TenantSlug::parse(&id).map_err(|_| corrupt("tenant id"))?,
        name,
        plan,
        status: TenantStatus::parse(&status).ok_or_else(|| corrupt("tenant status"))?,
        created_at_ms,
        updated_at_ms,
    })
}

fn load_tenant(tx: &Transaction<'_>, id: &TenantSlug) -> Result<TenantView, StoreError> {
    let row = tx
        .prepare_cached(&format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ?1"))?
        .query_row([id.as_str()], tenant_row)
        .optional()?;
    tenant_view(row.ok_or(StoreError::NotFound(Entity::Tenant))?)
}

const APP_COLUMNS: &str =
    "id, name, kind, stream_url, auth_header, codecs, custom_parameters, created_at_ms, updated_at_ms, media_format";

/// An app as stored, auth header included: never returned as is (see [`AppRow::view`]).
struct AppRow {
    id: AppId,
    name: String,
    target: AppTarget,
    codecs: Vec<Codec>,
    custom_parameters: Vec<(String, String)>,
    media_format: MediaFormat,
    created_at_ms: i64,
    updated_at_ms: i64,
}

type RawAppRow = (String, String, String, Option<String>, Option<String>, String, String, i64, i64, String);

fn raw_app_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawAppRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?, r.get(9)?))
}

impl AppRow {
    fn from_raw(raw: RawAppRow) -> Result<AppRow, StoreError> {
        let (id, name, kind, stream_url, auth_header, codecs, params, created_at_ms, updated_at_ms, media_format) = raw;
        let target = match (kind.as_str(), stream_url) {
            ("echo", None) => AppTarget::Echo,
            ("stream", Some(url)) => AppTarget::Stream {
                url: StreamUrl::parse(&url).map_err(|_| corrupt("stream_url"))?,
                auth_header: auth_header
                    .map(|h| AuthHeader::parse(&h).map_err(|_| corrupt("auth_header")))
                    .transpose()?,
            },
            _ => return Err(corrupt("app kind")),
        };
        Ok(AppRow {
            id: AppId::parse(&id).map_err(|_| corrupt("app id"))?,
            name,
            target,
            codecs: serde_json::from_str(&codecs).map_err(|_| corrupt("codecs"))?,
            custom_parameters: serde_json::from_str(&params).map_err(|_| corrupt("custom_parameters"))?,
            media_format: MediaFormat::from_name(&media_format).ok_or_else(|| corrupt("media_format"))?,
            created_at_ms,
            updated_at_ms,
        })
    }

    fn view(&self) -> AppView {
        let (kind, stream_url, auth_header_masked) = match &self.target {
            AppTarget::Echo => ("echo", None, None),
            AppTarget::Stream { url, auth_header } => {
                ("stream", Some(url.as_str().to_owned()), auth_header.as_ref().map(AuthHeader::masked))
            }
        };
        AppView {
            id: self.id.clone(),
            name: self.name.clone(),
            kind,
            stream_url,
            auth_header_masked,
            codecs: self.codecs.clone(),
            custom_parameters: self.custom_parameters.clone(),
            media_format: self.media_format,
            created_at_ms: self.created_at_ms,
            updated_at_ms: self.updated_at_ms,
        }
    }

    fn routing(&self) -> App {
        App {
            name: Arc::from(self.name.as_str()),
            kind: model::app_kind(&self.target),
            codecs: self.codecs.clone(),
            custom_parameters: self.custom_parameters.clone(),
            media_format: self.media_format,
        }
    }
}

fn load_app(tx: &Transaction<'_>, tenant: &TenantSlug, id: &AppId) -> Result<AppRow, StoreError> {
    let raw = tx
        .prepare_cached(&format!("SELECT {APP_COLUMNS} FROM apps WHERE tenant_id = ?1 AND id = ?2"))?
        .query_row([tenant.as_str(), id.as_str()], raw_app_row)
        .optional()?;
    AppRow::from_raw(raw.ok_or(StoreError::NotFound(Entity::App))?)
}

fn load_apps(tx: &Transaction<'_>, tenant: &str) -> Result<Vec<AppRow>, StoreError> {
    let mut stmt = tx.prepare_cached(&format!("SELECT {APP_COLUMNS} FROM apps WHERE tenant_id = ?1 ORDER BY name"))?;
    let raws = stmt.query_map([tenant], raw_app_row)?.collect::<Result<Vec<_>, _>>()?;
    raws.into_iter().map(AppRow::from_raw).collect()
}

fn app_exists(tx: &Transaction<'_>, tenant: &TenantSlug, id: &AppId) -> Result<bool, StoreError> {
    Ok(tx
        .prepare_cached("SELECT 1 FROM apps WHERE tenant_id = ?1 AND id = ?2")?
        .query_row([tenant.as_str(), id.as_str()], |_| Ok(()))
        .optional()?
        .is_some())
}

fn app_target_columns(target: &AppTarget) -> (&'static str, Option<&str>, Option<&str>) {
    match target {
        AppTarget::Echo => ("echo", None, None),
        AppTarget::Stream { url, auth_header } => {
            ("stream", Some(url.as_str()), auth_header.as_ref().map(|h| h.expose()))
        }
    }
}

fn json_text<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| backend(format!("cannot encode JSON: {e}")))
}

const NUMBER_COLUMNS: &str = "number, app_id, claimed_at_ms, updated_at_ms";

fn number_view(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, i64, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
}

fn to_number_view(row: (String, String, i64, i64)) -> Result<NumberView, StoreError> {
    let (number, app_id, claimed_at_ms, updated_at_ms) = row;
    Ok(NumberView {
        number,
        app_id: AppId::parse(&app_id).map_err(|_| corrupt("app id"))?,
        claimed_at_ms,
        updated_at_ms,
    })
}

fn load_number(tx: &Transaction<'_>, tenant: &TenantSlug, number: &E164) -> Result<NumberView, StoreError> {
    let row = tx
        .prepare_cached(&format!("SELECT {NUMBER_COLUMNS} FROM numbers WHERE tenant_id = ?1 AND number = ?2"))?
        .query_row([tenant.as_str(), number.as_str()], number_view)
        .optional()?;
    to_number_view(row.ok_or(StoreError::NotFound(Entity::Number))?)
}

const TRUNK_COLUMNS: &str = "id, name, allowed_sources, created_at_ms, updated_at_ms";

fn trunk_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, String, String, i64, i64)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
}

fn trunk_view(row: (String, String, String, i64, i64)) -> Result<TrunkView, StoreError> {
    let (id, name, sources, created_at_ms, updated_at_ms) = row;
    let texts: Vec<String> = serde_json::from_str(&sources).map_err(|_| corrupt("allowed_sources"))?;
    let nets = texts.iter().map(|t| t.parse::<IpNet>()).collect::<Result<Vec<_>, _>>();
    let allowed_sources =
        SourceCidrs::new(nets.map_err(|_| corrupt("allowed_sources"))?).map_err(|_| corrupt("allowed_sources"))?;
    Ok(TrunkView {
        id: TrunkId::parse(&id).map_err(|_| corrupt("trunk id"))?,
        name,
        allowed_sources,
        created_at_ms,
        updated_at_ms,
    })
}

fn sources_json(sources: &SourceCidrs) -> Result<String, StoreError> {
    json_text(&sources.nets().iter().map(|n| n.to_string()).collect::<Vec<_>>())
}

fn load_trunk(tx: &Transaction<'_>, tenant: &TenantSlug, id: &TrunkId) -> Result<TrunkView, StoreError> {
    let row = tx
        .prepare_cached(&format!("SELECT {TRUNK_COLUMNS} FROM trunks WHERE tenant_id = ?1 AND id = ?2"))?
        .query_row([tenant.as_str(), id.as_str()], trunk_row)
        .optional()?;
    trunk_view(row.ok_or(StoreError::NotFound(Entity::Trunk))?)
}

const KEY_COLUMNS: &str = "prefix, name, access, created_at_ms, expires_at_ms, last_used_at_ms, revoked_at_ms";

type RawKeyRow = (String, String, String, i64, Option<i64>, Option<i64>, Option<i64>);

fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawKeyRow> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
}

fn key_view(row: RawKeyRow) -> Result<KeyView, StoreError> {
    let (prefix, name, access, created_at_ms, expires_at_ms, last_used_at_ms, revoked_at_ms) = row;
    Ok(KeyView {
        prefix: KeyPrefix::parse(&prefix).map_err(|_| corrupt("key prefix"))?,
        name,
        access: Access::parse(&access).ok_or_else(|| corrupt("key access"))?,
        created_at_ms,
        expires_at_ms,
        last_used_at_ms,
        revoked_at_ms,
    })
}

fn load_key(tx: &Transaction<'_>, tenant: &TenantSlug, prefix: &KeyPrefix) -> Result<KeyView, StoreError> {
    let row = tx
        .prepare_cached(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = ?1 AND prefix = ?2"))?
        .query_row([tenant.as_str(), prefix.as_str()], key_row)
        .optional()?;
    key_view(row.ok_or(StoreError::NotFound(Entity::Key))?)
}

const CALL_COLUMNS: &str = "call_sid, sip_call_id, from_uri, to_uri, app, invite_at_ms, answer_at_ms, end_at_ms, \
     duration_secs, billable_secs, usage_day, end_reason, codec, packets_in, packets_out, packets_lost, dtmf_count, \
     recorded_at_ms, transport";

fn call_view(r: &rusqlite::Row<'_>) -> rusqlite::Result<(CallView, String)> {
    let view = CallView {
        call_sid: r.get(0)?,
        sip_call_id: r.get(1)?,
        from: r.get(2)?,
        to: r.get(3)?,
        app: r.get(4)?,
        invite_at_ms: r.get(5)?,
        answer_at_ms: r.get(6)?,
        end_at_ms: r.get(7)?,
        duration_secs: r.get(8)?,
        billable_secs: r.get(9)?,
        usage_day: UtcDay::from_unix_ms(0),
        end_reason: r.get(11)?,
        codec: r.get(12)?,
        packets_in: r.get(13)?,
        packets_out: r.get(14)?,
        packets_lost: r.get(15)?,
        dtmf_count: r.get(16)?,
        recorded_at_ms: r.get(17)?,
        transport: r.get(18)?,
    };
    Ok((view, r.get(10)?))
}

fn finish_call_view((mut view, day): (CallView, String)) -> Result<CallView, StoreError> {
    view.usage_day = UtcDay::parse(&day).map_err(|_| corrupt("usage day"))?;
    Ok(view)
}

// ---- offboarding jobs ----

const JOB_COLUMNS: &str = "tenant_id, started_by, step, grace_secs, created_at_ms, updated_at_ms, finished_at_ms, \
     drain_deadline_ms, steps, pending_byes, export, final_invoice, certificate, last_error";

type RawJobRow = (
    String,
    String,
    String,
    i64,
    i64,
    i64,
    Option<i64>,
    Option<i64>,
    String,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn raw_job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RawJobRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
        r.get(12)?,
        r.get(13)?,
    ))
}

fn job_from_raw(raw: RawJobRow) -> Result<OffboardJob, StoreError> {
    let (
        tenant,
        started_by,
        step,
        grace,
        created,
        updated,
        finished,
        deadline,
        steps,
        byes,
        export,
        invoice,
        cert,
        err,
    ) = raw;
    fn parsed<T: serde::de::DeserializeOwned>(text: Option<String>, what: &str) -> Result<Option<T>, StoreError> {
        text.map(|t| serde_json::from_str(&t).map_err(|_| corrupt(what))).transpose()
    }
    Ok(OffboardJob {
        tenant: TenantSlug::parse(&tenant).map_err(|_| corrupt("job tenant"))?,
        started_by,
        step: OffboardStep::parse(&step).ok_or_else(|| corrupt("job step"))?,
        grace_secs: u64::try_from(grace).map_err(|_| corrupt("job grace"))?,
        created_at_ms: created,
        updated_at_ms: updated,
        finished_at_ms: finished,
        drain_deadline_ms: deadline,
        steps: serde_json::from_str(&steps).map_err(|_| corrupt("job steps"))?,
        pending_byes: parsed(byes, "job pending BYEs")?,
        export: parsed(export, "job export")?,
        final_invoice: parsed(invoice, "job final invoice")?,
        certificate: parsed(cert, "job certificate")?,
        last_error: parsed(err, "job error")?,
    })
}

fn load_job(tx: &Transaction<'_>, tenant: &TenantSlug) -> Result<Option<OffboardJob>, StoreError> {
    let raw = tx
        .prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM offboard_jobs WHERE tenant_id = ?1"))?
        .query_row([tenant.as_str()], raw_job_row)
        .optional()?;
    raw.map(job_from_raw).transpose()
}

/// The tables that hold a tenant's rows, and the column that names the tenant: every table with a foreign key to
/// `tenants`, read from the schema itself (so a table added by a later migration is included without a list to
/// keep up to date), and `tenants` itself.
pub(crate) fn tenant_tables(tx: &Transaction<'_>) -> Result<Vec<(String, String)>, StoreError> {
    let mut stmt = tx.prepare(
        "SELECT DISTINCT m.name, f.\"from\" FROM sqlite_master m, pragma_foreign_key_list(m.name) f \
         WHERE m.type = 'table' AND f.\"table\" = 'tenants' ORDER BY m.name",
    )?;
    let mut tables =
        stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?.collect::<Result<Vec<_>, _>>()?;
    tables.push(("tenants".to_owned(), "id".to_owned()));
    Ok(tables)
}

/// Deletes every row of `tenant` (see [`tenant_tables`]) in the caller's transaction; the count per table.
/// Foreign keys are checked at commit, so the order of the tables does not matter.
fn delete_tenant_rows(
    tx: &Transaction<'_>,
    tenant: &TenantSlug,
) -> Result<std::collections::BTreeMap<String, u64>, StoreError> {
    tx.pragma_update(None, "defer_foreign_keys", true)?;
    let mut counts = std::collections::BTreeMap::new();
    for (table, column) in tenant_tables(tx)? {
        let sql =
            format!("DELETE FROM \"{}\" WHERE \"{}\" = ?1", table.replace('"', "\"\""), column.replace('"', "\"\""));
        let n = tx.execute(&sql, [tenant.as_str()])?;
        *counts.entry(table).or_insert(0) += n as u64;
    }
    Ok(counts)
}

impl SqliteStore {
    /// [`Store::offboard_step_done`] without the WAL checkpoint.
    fn step_done(
        &self,
        operator: &Operator,
        tenant: &TenantSlug,
        step: OffboardStep,
        done: StepDone,
    ) -> Result<OffboardJob, StoreError> {
        self.write(|tx, now| {
            let mut job = load_job(tx, tenant)?.ok_or(StoreError::NotFound(Entity::OffboardJob))?;
            if job.step != step || step == OffboardStep::Done {
                return Err(StoreError::Conflict(Conflict::OffboardStep));
            }
            let mut detail = if done.detail.is_null() { json!({}) } else { done.detail };
            match step {
                OffboardStep::Suspend => {
                    let before = load_tenant(tx, tenant)?;
                    if before.status != TenantStatus::Offboarding {
                        tx.execute(
                            "UPDATE tenants SET status = 'offboarding', updated_at_ms = ?1 WHERE id = ?2",
                            params![now, tenant.as_str()],
                        )?;
                        let change = json!({ "from": before.status.as_str(), "to": "offboarding" });
                        audit(tx, tenant, operator.actor(), now, AuditAction::TenantStatus, tenant.as_str(), change)?;
                        bump_routing(tx)?;
                    }
                    detail = json!({ "status_before": before.status.as_str() });
                }
                OffboardStep::DeleteRows => {
                    let deleted = delete_tenant_rows(tx, tenant)?;
                    bump_routing(tx)?;
                    detail = json!({
                        "rows_deleted": deleted,
                        "rows_deleted_total": deleted.values().sum::<u64>(),
                    });
                }
                _ => {}
            }
            if step < OffboardStep::DeleteRows {
                let entry = json!({ "step": step.as_str(), "started_by": job.started_by, "detail": detail });
                audit(tx, tenant, operator.actor(), now, AuditAction::OffboardStep, step.as_str(), entry)?;
            }
            if let Some(record) = job.steps.iter_mut().find(|r| r.name == step) {
                record.started_at_ms.get_or_insert(now);
                record.finished_at_ms = Some(now);
                record.detail = detail;
            }
            let next = step.next();
            let export = done.export.or(job.export);
            let final_invoice = done.final_invoice.or(job.final_invoice);
            let certificate = done.certificate.or(job.certificate);
            let finished_at = (next == OffboardStep::Done).then_some(now);
            // The BYEs are only needed while the drain runs.
            let pending_byes = if step == OffboardStep::DrainCalls { None } else { job.pending_byes };
            tx.prepare_cached(
                "UPDATE offboard_jobs SET step = ?1, steps = ?2, export = ?3, final_invoice = ?4, certificate = ?5, \
                 finished_at_ms = ?6, pending_byes = ?7, last_error = NULL, updated_at_ms = ?8 WHERE tenant_id = ?9",
            )?
            .execute(params![
                next.as_str(),
                json_text(&job.steps)?,
                export.as_ref().map(json_text).transpose()?,
                final_invoice.as_ref().map(json_text).transpose()?,
                certificate.as_ref().map(json_text).transpose()?,
                finished_at,
                pending_byes.as_ref().map(json_text).transpose()?,
                now,
                tenant.as_str()
            ])?;
            load_job(tx, tenant)?.ok_or(StoreError::NotFound(Entity::OffboardJob))
        })
    }
}

// ---- the trait ----

impl Store for SqliteStore {
    fn authenticate_key(&self, presented: &str) -> Result<TenantScope, AuthError> {
        let Some(prefix) = keys::parse_presented(presented) else {
            return Err(AuthError::Malformed);
        };
        let now = self.clock.now_ms();
        type Found = (String, Vec<u8>, String, Option<i64>, Option<i64>, Option<i64>, String);
        let found: Option<Found> = self
            .read(|tx| {
                Ok(tx
                    .prepare_cached(
                        "SELECT k.tenant_id, k.hash, k.access, k.expires_at_ms, k.revoked_at_ms, k.last_used_at_ms, \
                         t.status FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.prefix = ?1",
                    )?
                    .query_row([prefix.as_str()], |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?))
                    })
                    .optional()?)
            })
            .map_err(|e| match e {
                StoreError::Backend(b) => AuthError::Backend(b),
                other => AuthError::Backend(BackendError::new(other.to_string())),
            })?;
        let matches = self.hasher.verify(presented, found.as_ref().map(|f| f.1.as_slice()));
        let Some((tenant, _, access, expires_at_ms, revoked_at_ms, last_used_at_ms, status)) = found else {
            return Err(AuthError::Unknown);
        };
        if !matches {
            return Err(AuthError::Unknown);
        }
        if revoked_at_ms.is_some() {
            return Err(AuthError::Revoked);
        }
        if expires_at_ms.is_some_and(|at| at <= now) {
            return Err(AuthError::Expired);
        }
        let status = TenantStatus::parse(&status).ok_or_else(|| AuthError::Backend(BackendError::new("bad status")))?;
        if !status.keys_work() {
            return Err(AuthError::TenantClosed);
        }
        let access = Access::parse(&access).ok_or_else(|| AuthError::Backend(BackendError::new("bad key access")))?;
        let tenant = TenantSlug::parse(&tenant).map_err(|_| AuthError::Backend(BackendError::new("bad tenant id")))?;
        if last_used_at_ms.is_none_or(|at| now - at >= LAST_USED_RESOLUTION_MS) {
            let conn = self.writer.lock();
            conn.prepare_cached(
                "UPDATE api_keys SET last_used_at_ms = ?1 WHERE prefix = ?2 AND (last_used_at_ms IS NULL OR last_used_at_ms < ?1)",
            )?
            .execute(params![now, prefix.as_str()])?;
        }
        Ok(TenantScope::new(tenant, Actor::ApiKey(prefix), access))
    }

    fn operator_scope(&self, operator: &Operator, tenant: &TenantSlug) -> Result<TenantScope, StoreError> {
        let view = self.read(|tx| load_tenant(tx, tenant))?;
        if view.status == TenantStatus::Deleted {
            return Err(StoreError::NotFound(Entity::Tenant));
        }
        let closing = view.status == TenantStatus::Offboarding;
        Ok(TenantScope::new(view.id, operator.actor().clone(), Access::ReadWrite).closing(closing))
    }

    fn create_tenant(&self, operator: &Operator, tenant: NewTenant) -> Result<TenantView, StoreError> {
        self.write(|tx, now| {
            // An offboarded tenant's id stays taken: its job (certificate, final invoice) is filed under it.
            if load_job(tx, &tenant.id)?.is_some() {
                return Err(StoreError::Conflict(Conflict::TenantExists));
            }
            tx.execute(
                "INSERT INTO tenants (id, name, plan, status, created_at_ms, updated_at_ms) VALUES (?1, ?2, ?3, 'active', ?4, ?4)",
                params![tenant.id.as_str(), tenant.name.as_str(), tenant.plan.as_str(), now],
            )
            .map_err(|e| map_write(e, Conflict::TenantExists))?;
            let detail = json!({ "name": tenant.name.as_str(), "plan": tenant.plan.as_str() });
            audit(tx, &tenant.id, operator.actor(), now, AuditAction::TenantCreate, tenant.id.as_str(), detail)?;
            bump_routing(tx)?;
            load_tenant(tx, &tenant.id)
        })
    }

    fn tenant(&self, _operator: &Operator, tenant: &TenantSlug) -> Result<TenantView, StoreError> {
        self.read(|tx| load_tenant(tx, tenant))
    }

    fn list_tenants(&self, _operator: &Operator, page: PageRequest) -> Result<Page<TenantView>, StoreError> {
        let after = match &page.cursor {
            Some(c) => decode_cursor(c, "tenants", 1)?.remove(0),
            None => String::new(),
        };
        let rows = self.read(|tx| {
            let mut stmt =
                tx.prepare_cached(&format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id > ?1 ORDER BY id LIMIT ?2"))?;
            let raws = stmt.query_map(params![after, page.limit() as i64 + 1], tenant_row)?;
            raws.map(|r| tenant_view(r?)).collect::<Result<Vec<_>, _>>()
        })?;
        Ok(paginate(rows, page.limit(), |t| encode_cursor("tenants", &[t.id.as_str()])))
    }

    fn set_tenant_plan(
        &self,
        operator: &Operator,
        tenant: &TenantSlug,
        plan: PlanName,
    ) -> Result<TenantView, StoreError> {
        self.write(|tx, now| {
            let before = load_tenant(tx, tenant)?;
            if before.status == TenantStatus::Deleted {
                return Err(StoreError::NotFound(Entity::Tenant));
            }
            if before.plan == plan.as_str() {
                return Ok(before);
            }
            tx.execute(
                "UPDATE tenants SET plan = ?1, updated_at_ms = ?2 WHERE id = ?3",
                params![plan.as_str(), now, tenant.as_str()],
            )?;
            let detail = json!({ "from": before.plan, "to": plan.as_str() });
            audit(tx, tenant, operator.actor(), now, AuditAction::TenantPlan, tenant.as_str(), detail)?;
            bump_routing(tx)?;
            load_tenant(tx, tenant)
        })
    }

    fn set_tenant_status(
        &self,
        operator: &Operator,
        tenant: &TenantSlug,
        status: TenantStatus,
    ) -> Result<TenantView, StoreError> {
        self.write(|tx, now| {
            let before = load_tenant(tx, tenant)?;
            if !before.status.may_become(status) {
                return Err(StoreError::Conflict(Conflict::StatusTransition {
                    from: before.status.as_str(),
                    to: status.as_str(),
                }));
            }
            if before.status == status {
                return Ok(before);
            }
            tx.execute(
                "UPDATE tenants SET status = ?1, updated_at_ms = ?2 WHERE id = ?3",
                params![status.as_str(), now, tenant.as_str()],
            )?;
            let detail = json!({ "from": before.status.as_str(), "to": status.as_str() });
            audit(tx, tenant, operator.actor(), now, AuditAction::TenantStatus, tenant.as_str(), detail)?;
            bump_routing(tx)?;
            load_tenant(tx, tenant)
        })
    }

    fn load_routing(&self, _operator: &Operator) -> Result<RoutingTable, StoreError> {
        self.read(|tx| {
            let version: i64 =
                tx.query_row("SELECT version FROM routing_version WHERE singleton = 1", [], |r| r.get(0))?;
            let tenants = {
                let mut stmt = tx.prepare_cached(&format!(
                    "SELECT {TENANT_COLUMNS} FROM tenants WHERE status != 'deleted' ORDER BY id"
                ))?;
                let raws = stmt.query_map([], tenant_row)?;
                raws.map(|r| tenant_view(r?)).collect::<Result<Vec<_>, _>>()?
            };
            let mut out = Vec::with_capacity(tenants.len());
            for t in tenants {
                let apps = load_apps(tx, t.id.as_str())?;
                let mut numbers = Vec::new();
                {
                    let mut stmt =
                        tx.prepare_cached("SELECT number, app_id FROM numbers WHERE tenant_id = ?1 ORDER BY number")?;
                    let rows =
                        stmt.query_map([t.id.as_str()], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
                    for row in rows {
                        let (number, app_id) = row?;
                        let number = E164::parse(&number).map_err(|_| corrupt("number"))?;
                        // The composite foreign key guarantees the app exists in this tenant.
                        if let Some(index) = apps.iter().position(|a| a.id.as_str() == app_id) {
                            numbers.push((number, index));
                        }
                    }
                }
                let trunks = {
                    let mut stmt = tx.prepare_cached(&format!(
                        "SELECT {TRUNK_COLUMNS} FROM trunks WHERE tenant_id = ?1 ORDER BY name"
                    ))?;
                    let raws = stmt.query_map([t.id.as_str()], trunk_row)?;
                    raws.map(|r| {
                        let view = trunk_view(r?)?;
                        Ok(Trunk {
                            name: Arc::from(view.name.as_str()),
                            allowed_sources: view.allowed_sources.nets().to_vec(),
                        })
                    })
                    .collect::<Result<Vec<_>, StoreError>>()?
                };
                out.push(RoutingTenant {
                    id: t.id,
                    plan: t.plan,
                    status: t.status,
                    app_ids: apps.iter().map(|a| a.id.clone()).collect(),
                    apps: apps.iter().map(AppRow::routing).collect(),
                    trunks,
                    numbers,
                });
            }
            Ok(RoutingTable { version: version as u64, tenants: out })
        })
    }

    fn routing_version(&self, _operator: &Operator) -> Result<u64, StoreError> {
        self.read(|tx| {
            let v: i64 = tx.query_row("SELECT version FROM routing_version WHERE singleton = 1", [], |r| r.get(0))?;
            Ok(v as u64)
        })
    }

    // ---- offboarding ----

    fn start_offboarding(
        &self,
        operator: &Operator,
        tenant: &TenantSlug,
        grace_secs: u64,
    ) -> Result<(OffboardJob, bool), StoreError> {
        self.write(|tx, now| {
            if let Some(job) = load_job(tx, tenant)? {
                return Ok((job, false));
            }
            let view = load_tenant(tx, tenant)?;
            if view.status == TenantStatus::Deleted {
                return Err(StoreError::NotFound(Entity::Tenant));
            }
            let steps: Vec<StepRecord> = OffboardStep::STEPS
                .iter()
                .map(|&name| StepRecord { name, started_at_ms: None, finished_at_ms: None, detail: json!({}) })
                .collect();
            tx.prepare_cached(
                "INSERT INTO offboard_jobs (tenant_id, started_by, step, grace_secs, created_at_ms, updated_at_ms, \
                 steps) VALUES (?1, ?2, ?3, ?4, ?5, ?5, ?6)",
            )?
            .execute(params![
                tenant.as_str(),
                operator.actor().to_string(),
                OffboardStep::Suspend.as_str(),
                to_i64(grace_secs, "grace_secs")?,
                now,
                json_text(&steps)?
            ])?;
            let detail = json!({ "grace_secs": grace_secs, "status": view.status.as_str() });
            audit(tx, tenant, operator.actor(), now, AuditAction::OffboardStart, tenant.as_str(), detail)?;
            let job = load_job(tx, tenant)?.ok_or_else(|| backend("offboarding job vanished".into()))?;
            Ok((job, true))
        })
    }

    fn offboard_job(&self, _operator: &Operator, tenant: &TenantSlug) -> Result<OffboardJob, StoreError> {
        self.read(|tx| load_job(tx, tenant)?.ok_or(StoreError::NotFound(Entity::OffboardJob)))
    }

    fn unfinished_offboard_jobs(&self, _operator: &Operator) -> Result<Vec<OffboardJob>, StoreError> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {JOB_COLUMNS} FROM offboard_jobs WHERE step != 'done' ORDER BY created_at_ms, tenant_id"
            ))?;
            let raws = stmt.query_map([], raw_job_row)?.collect::<Result<Vec<_>, _>>()?;
            raws.into_iter().map(job_from_raw).collect()
        })
    }

    fn offboard_step_started(
        &self,
        _operator: &Operator,
        tenant: &TenantSlug,
        step: OffboardStep,
        drain: Option<(i64, serde_json::Value)>,
    ) -> Result<OffboardJob, StoreError> {
        self.write(|tx, now| {
            let mut job = load_job(tx, tenant)?.ok_or(StoreError::NotFound(Entity::OffboardJob))?;
            if job.step != step {
                return Err(StoreError::Conflict(Conflict::OffboardStep));
            }
            let mut changed = false;
            if let Some(record) = job.steps.iter_mut().find(|r| r.name == step)
                && record.started_at_ms.is_none()
            {
                record.started_at_ms = Some(now);
                changed = true;
            }
            if let Some((deadline, byes)) = drain
                && job.drain_deadline_ms.is_none()
            {
                job.drain_deadline_ms = Some(deadline);
                job.pending_byes = Some(byes);
                changed = true;
            }
            if !changed {
                return Ok(job);
            }
            tx.prepare_cached(
                "UPDATE offboard_jobs SET steps = ?1, drain_deadline_ms = ?2, pending_byes = ?3, updated_at_ms = ?4 \
                 WHERE tenant_id = ?5",
            )?
            .execute(params![
                json_text(&job.steps)?,
                job.drain_deadline_ms,
                job.pending_byes.as_ref().map(json_text).transpose()?,
                now,
                tenant.as_str()
            ])?;
            load_job(tx, tenant)?.ok_or(StoreError::NotFound(Entity::OffboardJob))
        })
    }

    fn offboard_step_done(
        &self,
        operator: &Operator,
        tenant: &TenantSlug,
        step: OffboardStep,
        done: StepDone,
    ) -> Result<OffboardJob, StoreError> {
        let job = self.step_done(operator, tenant, step, done)?;
        if step == OffboardStep::DeleteRows {
            // Deleted content is zeroed in the pages (secure_delete), but older versions of those pages stay in
            // the WAL until it is checkpointed: fold it into the database and truncate it now.
            let conn = self.writer.lock();
            let checkpoint: Result<(i64, i64, i64), _> =
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)));
            match checkpoint {
                Ok((0, _, _)) => {}
                Ok(_) => {
                    tracing::warn!(tenant = %tenant, "WAL checkpoint after deletion was blocked by a reader; the next one folds it")
                }
                Err(e) => tracing::warn!(tenant = %tenant, error = %e, "WAL checkpoint after deletion failed"),
            }
        }
        Ok(job)
    }

    fn offboard_step_failed(
        &self,
        _operator: &Operator,
        tenant: &TenantSlug,
        step: OffboardStep,
        message: &str,
    ) -> Result<(), StoreError> {
        self.write(|tx, now| {
            let job = load_job(tx, tenant)?.ok_or(StoreError::NotFound(Entity::OffboardJob))?;
            if job.step != step {
                return Err(StoreError::Conflict(Conflict::OffboardStep));
            }
            let attempts = job.last_error.filter(|e| e.step == step).map_or(1, |e| e.attempts.saturating_add(1));
            let error = JobError { step, message: message.to_owned(), at_ms: now, attempts };
            tx.prepare_cached("UPDATE offboard_jobs SET last_error = ?1, updated_at_ms = ?2 WHERE tenant_id = ?3")?
                .execute(params![json_text(&error)?, now, tenant.as_str()])?;
            Ok(())
        })
    }

    fn own_tenant(&self, scope: &TenantScope) -> Result<TenantView, StoreError> {
        self.read(|tx| load_tenant(tx, scope.tenant()))
    }

    // ---- apps ----

    fn create_app(&self, scope: &TenantScope, app: NewApp) -> Result<AppView, StoreError> {
        scope.require_write()?;
        let id = AppId::generate()?;
        self.write(|tx, now| {
            let (kind, url, header) = app_target_columns(&app.target);
            tx.prepare_cached(
                "INSERT INTO apps (tenant_id, id, name, kind, stream_url, auth_header, codecs, custom_parameters, \
                 media_format, created_at_ms, updated_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10)",
            )?
            .execute(params![
                scope.tenant().as_str(),
                id.as_str(),
                app.name.as_str(),
                kind,
                url,
                header,
                json_text(app.codecs.codecs())?,
                json_text(app.custom_parameters.pairs())?,
                app.media_format.name(),
                now
            ])
            .map_err(|e| map_write(e, Conflict::NameTaken))?;
            let detail = json!({
                "name": app.name.as_str(),
                "kind": kind,
                "stream_url": url,
                "auth_header": header.map(|_| "set"),
                "codecs": app.codecs.codecs(),
                "custom_parameter_keys": app.custom_parameters.pairs().iter().map(|(k, _)| k).collect::<Vec<_>>(),
                "media_format": app.media_format.name(),
            });
            audit(tx, scope.tenant(), scope.actor(), now, AuditAction::AppCreate, id.as_str(), detail)?;
            bump_routing(tx)?;
            Ok(load_app(tx, scope.tenant(), &id)?.view())
        })
    }

    fn app(&self, scope: &TenantScope, app: &AppId) -> Result<AppView, StoreError> {
        self.read(|tx| Ok(load_app(tx, scope.tenant(), app)?.view()))
    }

    fn list_apps(&self, scope: &TenantScope) -> Result<Vec<AppView>, StoreError> {
        self.read(|tx| Ok(load_apps(tx, scope.tenant().as_str())?.iter().map(AppRow::view).collect()))
    }

    fn update_app(&self, scope: &TenantScope, app: &AppId, update: AppUpdate) -> Result<AppView, StoreError> {
        scope.require_write()?;
        self.write(|tx, now| {
            let before = load_app(tx, scope.tenant(), app)?;
            let name = update.name.as_ref().map(|n| n.as_str().to_owned()).unwrap_or_else(|| before.name.clone());
            let target = match (&before.target, update.stream_url.clone(), update.auth_header.clone()) {
                (AppTarget::Echo, None, None | Some(None)) => AppTarget::Echo,
                (AppTarget::Echo, None, Some(Some(_))) => {
                    return Err(InvalidInput::new("auth_header", "an echo app takes no auth header").into());
                }
                (AppTarget::Echo, Some(url), header) => AppTarget::Stream { url, auth_header: header.flatten() },
                (AppTarget::Stream { url, auth_header }, new_url, new_header) => AppTarget::Stream {
                    url: new_url.unwrap_or_else(|| url.clone()),
                    auth_header: new_header.unwrap_or_else(|| auth_header.clone()),
                },
            };
            let codecs = update.codecs.as_ref().map(|c| c.codecs().to_vec()).unwrap_or_else(|| before.codecs.clone());
            let params_after = update
                .custom_parameters
                .as_ref()
                .map(|p| p.pairs().to_vec())
                .unwrap_or_else(|| before.custom_parameters.clone());
            let media_format = update.media_format.unwrap_or(before.media_format);
            let (kind, url, header) = app_target_columns(&target);
            tx.prepare_cached(
                "UPDATE apps SET name = ?1, kind = ?2, stream_url = ?3, auth_header = ?4, codecs = ?5, \
                 custom_parameters = ?6, media_format = ?7, updated_at_ms = ?8 WHERE tenant_id = ?9 AND id = ?10",
            )?
            .execute(params![
                name,
                kind,
                url,
                header,
                json_text(&codecs)?,
                json_text(&params_after)?,
                media_format.name(),
                now,
                scope.tenant().as_str(),
                app.as_str()
            ])
            .map_err(|e| map_write(e, Conflict::NameTaken))?;
            let mut changed = serde_json::Map::new();
            if name != before.name {
                changed.insert("name".into(), json!({ "from": before.name, "to": name }));
            }
            if target != before.target {
                let (_, before_url, before_header) = app_target_columns(&before.target);
                if url != before_url {
                    changed.insert("stream_url".into(), json!({ "from": before_url, "to": url }));
                }
                if header != before_header {
                    changed.insert("auth_header".into(), json!(if header.is_some() { "set" } else { "cleared" }));
                }
            }
            if codecs != before.codecs {
                changed.insert("codecs".into(), json!({ "from": before.codecs, "to": codecs }));
            }
            if params_after != before.custom_parameters {
                let keys: Vec<&String> = params_after.iter().map(|(k, _)| k).collect();
                changed.insert("custom_parameter_keys".into(), json!(keys));
            }
            if media_format != before.media_format {
                changed.insert(
                    "media_format".into(),
                    json!({ "from": before.media_format.name(), "to": media_format.name() }),
                );
            }
            if !changed.is_empty() {
                let detail = serde_json::Value::Object(changed);
                audit(tx, scope.tenant(), scope.actor(), now, AuditAction::AppUpdate, app.as_str(), detail)?;
                bump_routing(tx)?;
            }
            Ok(load_app(tx, scope.tenant(), app)?.view())
        })
    }

    fn delete_app(&self, scope: &TenantScope, app: &AppId) -> Result<(), StoreError> {
        scope.require_write()?;
        self.write(|tx, now| {
            let before = load_app(tx, scope.tenant(), app)?;
            let in_use = tx
                .prepare_cached("SELECT 1 FROM numbers WHERE tenant_id = ?1 AND app_id = ?2 LIMIT 1")?
                .query_row([scope.tenant().as_str(), app.as_str()], |_| Ok(()))
                .optional()?;
            if in_use.is_some() {
                return Err(StoreError::Conflict(Conflict::AppInUse));
            }
            tx.prepare_cached("DELETE FROM apps WHERE tenant_id = ?1 AND id = ?2")?
                .execute([scope.tenant().as_str(), app.as_str()])?;
            let detail = json!({ "name": before.name });
            audit(tx, scope.tenant(), scope.actor(), now, AuditAction::AppDelete, app.as_str(), detail)?;
            bump_routing(tx)?;
            Ok(())
        })
    }

    // ---- numbers ----

    fn claim_number(&self, scope: &TenantScope, number: &E164, app: &AppId) -> Result<NumberView, StoreError> {
        scope.require_write()?;
        self.write(|tx, now| {
            if !app_exists(tx, scope.tenant(), app)? {
                return Err(StoreError::NotFound(Entity::App));
            }
            let holder: Option<String> = tx
                .prepare_cached("SELECT tenant_id FROM numbers WHERE number = ?1")?
                .query_row([number.as_str()], |r| r.get(0))
                .optional()?;
            match holder {
                Some(t) if t == scope.tenant().as_str() => {
                    return Err(StoreError::Conflict(Conflict::NumberAlreadyClaimed));
                }
                Some(_) => return Err(StoreError::Conflict(Conflict::NumberTakenByAnotherTenant)),
                None => {}
            }
            tx.prepare_cached(
                "INSERT INTO numbers (number, tenant_id, app_id, claimed_at_ms, updated_at_ms) VALUES (?1, ?2, ?3, ?4, ?4)",
            )?
            .execute(params![number.as_str(), scope.tenant().as_str(), app.as_str(), now])
            .map_err(|e| map_write(e, Conflict::NumberTakenByAnotherTenant))?;
            let detail = json!({ "app_id": app.as_str() });
            audit(tx, scope.tenant(), scope.actor(), now, AuditAction::NumberClaim, number.as_str(), detail)?;
            bump_routing(tx)?;
            load_number(tx, scope.tenant(), number)
        })
    }

    fn number(&self, scope: &TenantScope, number: &E164) -> Result<NumberView, StoreError> {
        self.read(|tx| load_number(tx, scope.tenant(), number))
    }

    fn list_numbers(&self, scope: &TenantScope) -> Result<Vec<NumberView>, StoreError> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {NUMBER_COLUMNS} FROM numbers WHERE tenant_id = ?1 ORDER BY number"
            ))?;
            let rows = stmt.query_map([scope.tenant().as_str()], number_view)?;
            rows.map(|r| to_number_view(r?)).collect()
        })
    }

    fn assign_number(&self, scope: &TenantScope, number: &E164, app: &AppId) -> Result<NumberView, StoreError> {
        scope.require_write()?;
        self.write(|tx, now| {
            let before = load_number(tx, scope.tenant(), number)?;
            if !app_exists(tx, scope.tenant(), app)? {
                return Err(StoreError::NotFound(Entity::App));
            }
            if &before.app_id == app {
                return Ok(before);
            }
            tx.prepare_cached(
                "UPDATE numbers SET app_id = ?1, updated_at_ms = ?2 WHERE tenant_id = ?3 AND number = ?4",
            )?
            .execute(params![app.as_str(), now, scope.tenant().as_str(), number.as_str()])?;
            let detail = json!({ "from_app_id": before.app_id.as_str(), "to_app_id": app.as_str() });
            audit(tx, scope.tenant(), scope.actor(), now, AuditAction::NumberAssign, number.as_str(), detail)?;
            bump_routing(tx)?;
            load_number(tx, scope.tenant(), number)
        })
    }

    fn release_number(&self, scope: &TenantScope, number: &E164) -> Result<NumberRelease, StoreError> {
        scope.require_write()?;
        self.write(|tx, now| {
            let held = load_number(tx, scope.tenant(), number)?;
            tx.prepare_cached("DELETE FROM numbers WHERE tenant_id = ?1 AND number = ?2")?
                .execute([scope.tenant().as_str(), number.as_str()])?;
            tx.prepare_cached(
                "INSERT INTO number_releases (tenant_id, number, app_id, claimed_at_ms, released_at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                scope.tenant().as_str(),
                number.as_str(),
                held.app_id.as_str(),
                held.claimed_at_ms,
                now
            ])?;
            let detail = json!({ "app_id": held.app_id.as_str(), "claimed_at_ms": held.claimed_at_ms });
            audit(tx, scope.tenant(), scope.actor(), now, AuditAction::NumberRelease, number.as_str(), detail)?;
            bump_routing(tx)?;
            Ok(NumberRelease {
                number: held.number,
                app_id: held.app_id,
                claimed_at_ms: held.claimed_at_ms,
                released_at_ms: now,
            })
        })
    }

    fn list_number_releases(&self, scope: &TenantScope) -> Result<Vec<NumberRelease>, StoreError> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT number, app_id, claimed_at_ms, released_at_ms FROM number_releases WHERE tenant_id = ?1 \
                 ORDER BY released_at_ms DESC, id DESC",
            )?;
            let rows = stmt.query_map([scope.tenant().as_str()], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?))
            })?;
            rows.map(|r| {
                let (number, app_id, claimed_at_ms, released_at_ms) = r?;
                Ok(NumberRelease {
                    number,
                    app_id: AppId::parse(&app_id).map_err(|_| corrupt("app id"))?,
                    claimed_at_ms,
                    released_at_ms,
                })
            })
            .collect()
        })
    }

    // ---- trunks ----

    fn create_trunk(&self, scope: &TenantScope, trunk: NewTrunk) -> Result<TrunkView, StoreError> {
        scope.require_write()?;
        let id = TrunkId::generate()?;
        self.write(|tx, now| {
            let sources = sources_json(&trunk.allowed_sources)?;
            tx.prepare_cached(
                "INSERT INTO trunks (tenant_id, id, name, allowed_sources, created_at_ms, updated_at_ms) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
            )?
            .execute(params![scope.tenant().as_str(), id.as_str(), trunk.name.as_str(), sources, now])
            .map_err(|e| map_write(e, Conflict::NameTaken))?;
            let detail = json!({ "name": trunk.name.as_str(), "allowed_sources": trunk.allowed_sources });
            audit(tx, scope.tenant(), scope.actor(), now, AuditAction::TrunkCreate, id.as_str(), detail)?;
            bump_routing(tx)?;
            load_trunk(tx, scope.tenant(), &id)
        })
    }

    fn trunk(&self, scope: &TenantScope, trunk: &TrunkId) -> Result<TrunkView, StoreError> {
        self.read(|tx| load_trunk(tx, scope.tenant(), trunk))
    }

    fn list_trunks(&self, scope: &TenantScope) -> Result<Vec<TrunkView>, StoreError> {
        self.read(|tx| {
            let mut stmt =
                tx.prepare_cached(&format!("SELECT {TRUNK_COLUMNS} FROM trunks WHERE tenant_id = ?1 ORDER BY name"))?;
            let rows = stmt.query_map([scope.tenant().as_str()], trunk_row)?;
            rows.map(|r| trunk_view(r?)).collect()
        })
    }

    fn update_trunk(&self, scope: &TenantScope, trunk: &TrunkId, update: TrunkUpdate) -> Result<TrunkView, StoreError> {
        scope.require_write()?;
        self.write(|tx, now| {
            let before = load_trunk(tx, scope.tenant(), trunk)?;
            let name = update.name.as_ref().map(|n| n.as_str().to_owned()).unwrap_or_else(|| before.name.clone());
            let sources = update.allowed_sources.clone().unwrap_or_else(|| before.allowed_sources.clone());
            if name == before.name && sources == before.allowed_sources {
                return Ok(before);
            }
            tx.prepare_cached(
                "UPDATE trunks SET name = ?1, allowed_sources = ?2, updated_at_ms = ?3 WHERE tenant_id = ?4 AND id = ?5",
            )?
            .execute(params![name, sources_json(&sources)?, now, scope.tenant().as_str(), trunk.as_str()])
            .map_err(|e| map_write(e, Conflict::NameTaken))?;
            let detail = json!({
                "name": { "from": before.name, "to": name },
                "allowed_sources": { "from": before.allowed_sources, "to": sources },
            });
            audit(tx, scope.tenant(), scope.actor(), now, AuditAction::TrunkUpdate, trunk.as_str(), detail)?;
            bump_routing(tx)?;
            load_trunk(tx, scope.tenant(), trunk)
        })
    }

    fn delete_trunk(&self, scope: &TenantScope, trunk: &TrunkId) -> Result<(), StoreError> {
        scope.require_write()?;
        self.write(|tx, now| {
            let before = load_trunk(tx, scope.tenant(), trunk)?;
            tx.prepare_cached("DELETE FROM trunks WHERE tenant_id = ?1 AND id = ?2")?
                .execute([scope.tenant().as_str(), trunk.as_str()])?;
            let detail = json!({ "name": before.name });
            audit(tx, scope.tenant(), scope.actor(), now, AuditAction::TrunkDelete, trunk.as_str(), detail)?;
            bump_routing(tx)?;
            Ok(())
        })
    }

    // ---- keys ----

    fn create_key(&self, scope: &TenantScope, key: NewKey) -> Result<CreatedKey, StoreError> {
        scope.require_write()?;
        // A prefix clash (40 random bits) is retried with a fresh one; it says nothing about the other key.
        for _ in 0..4 {
            let prefix = KeyPrefix::generate()?;
            let secret = ApiKeySecret::generate(&prefix)?;
            let hash = self.hasher.hash(secret.expose());
            let created = self.write(|tx, now| {
                if key.expires_at_ms.is_some_and(|at| at <= now) {
                    return Err(InvalidInput::new("expires_at", "must lie in the future").into());
                }
                tx.prepare_cached(
                    "INSERT INTO api_keys (prefix, tenant_id, name, hash, access, created_at_ms, expires_at_ms) \
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    prefix.as_str(),
                    scope.tenant().as_str(),
                    key.name.as_str(),
                    hash.as_slice(),
                    key.access.as_str(),
                    now,
                    key.expires_at_ms
                ])
                .map_err(|e| map_write(e, Conflict::NameTaken))?;
                let detail = json!({
                    "name": key.name.as_str(), "access": key.access.as_str(), "expires_at_ms": key.expires_at_ms,
                });
                audit(tx, scope.tenant(), scope.actor(), now, AuditAction::KeyCreate, prefix.as_str(), detail)?;
                load_key(tx, scope.tenant(), &prefix)
            });
            match created {
                Ok(view) => return Ok(CreatedKey { key: secret, view }),
                Err(StoreError::Conflict(Conflict::NameTaken)) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(backend("could not find a free key prefix in 4 tries".into()))
    }

    fn key(&self, scope: &TenantScope, prefix: &KeyPrefix) -> Result<KeyView, StoreError> {
        self.read(|tx| load_key(tx, scope.tenant(), prefix))
    }

    fn list_keys(&self, scope: &TenantScope) -> Result<Vec<KeyView>, StoreError> {
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(&format!(
                "SELECT {KEY_COLUMNS} FROM api_keys WHERE tenant_id = ?1 ORDER BY created_at_ms DESC, prefix"
            ))?;
            let rows = stmt.query_map([scope.tenant().as_str()], key_row)?;
            rows.map(|r| key_view(r?)).collect()
        })
    }

    fn revoke_key(&self, scope: &TenantScope, prefix: &KeyPrefix) -> Result<KeyView, StoreError> {
        scope.require_write()?;
        self.write(|tx, now| {
            let before = load_key(tx, scope.tenant(), prefix)?;
            if before.revoked_at_ms.is_some() {
                return Ok(before);
            }
            tx.prepare_cached("UPDATE api_keys SET revoked_at_ms = ?1 WHERE tenant_id = ?2 AND prefix = ?3")?
                .execute(params![now, scope.tenant().as_str(), prefix.as_str()])?;
            let detail = json!({ "name": before.name });
            audit(tx, scope.tenant(), scope.actor(), now, AuditAction::KeyRevoke, prefix.as_str(), detail)?;
            load_key(tx, scope.tenant(), prefix)
        })
    }

    // ---- calls and usage ----

    fn record_call(&self, scope: &TenantScope, record: &CallRecord) -> Result<RecordedCall, StoreError> {
        scope.require_write()?;
        if record.tenant != scope.tenant().as_str() {
            return Err(InvalidInput::new("tenant", "the record is not the scope's tenant's").into());
        }
        let billable = billing::billable_seconds(record)?;
        let day = billing::usage_day(record)?;
        let answer_at_ms = record.answer_at_ms.map(|a| to_i64(a, "answer_at_ms")).transpose()?;
        self.write(|tx, now| {
            tx.prepare_cached(&format!(
                "INSERT INTO calls (tenant_id, {CALL_COLUMNS}) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20)"
            ))?
            .execute(params![
                scope.tenant().as_str(),
                record.call_sid,
                record.sip_call_id,
                record.from,
                record.to,
                record.app,
                to_i64(record.invite_at_ms, "invite_at_ms")?,
                answer_at_ms,
                to_i64(record.end_at_ms, "end_at_ms")?,
                to_i64(record.duration_secs, "duration_secs")?,
                to_i64(billable, "duration_secs")?,
                day.to_string(),
                record.end_reason.label(),
                record.codec,
                to_i64(record.packets_in, "packets_in")?,
                to_i64(record.packets_out, "packets_out")?,
                to_i64(record.packets_lost, "packets_lost")?,
                to_i64(record.dtmf_count, "dtmf_count")?,
                now,
                record.transport
            ])
            .map_err(|e| map_write(e, Conflict::CallAlreadyRecorded))?;
            tx.prepare_cached(
                "INSERT INTO usage_daily (tenant_id, day, app, number, calls, billable_secs) VALUES (?1, ?2, ?3, ?4, 1, ?5) \
                 ON CONFLICT (tenant_id, day, app, number) DO UPDATE \
                 SET calls = calls + 1, billable_secs = billable_secs + excluded.billable_secs",
            )?
            .execute(params![scope.tenant().as_str(), day.to_string(), record.app, record.to, to_i64(billable, "duration_secs")?])?;
            Ok(RecordedCall { billable_secs: billable, usage_day: day })
        })
    }

    fn call(&self, scope: &TenantScope, call_sid: &str) -> Result<CallView, StoreError> {
        self.read(|tx| {
            let row = tx
                .prepare_cached(&format!("SELECT {CALL_COLUMNS} FROM calls WHERE tenant_id = ?1 AND call_sid = ?2"))?
                .query_row([scope.tenant().as_str(), call_sid], call_view)
                .optional()?;
            finish_call_view(row.ok_or(StoreError::NotFound(Entity::Call))?)
        })
    }

    fn list_calls(&self, scope: &TenantScope, query: CallQuery) -> Result<Page<CallView>, StoreError> {
        let from = query.from_ms.unwrap_or(i64::MIN);
        let to = query.to_ms.unwrap_or(i64::MAX);
        let limit = query.page.limit();
        let rows = self.read(|tx| {
            let base = format!(
                "SELECT {CALL_COLUMNS} FROM calls WHERE tenant_id = ?1 AND invite_at_ms >= ?2 AND invite_at_ms < ?3"
            );
            let order = "ORDER BY invite_at_ms DESC, call_sid DESC";
            let raws = match &query.page.cursor {
                None => {
                    let mut stmt = tx.prepare_cached(&format!("{base} {order} LIMIT ?4"))?;
                    let rows =
                        stmt.query_map(params![scope.tenant().as_str(), from, to, limit as i64 + 1], call_view)?;
                    rows.collect::<Result<Vec<_>, _>>()?
                }
                Some(c) => {
                    let parts = decode_cursor(c, "calls", 2)?;
                    let at = cursor_i64(&parts[0])?;
                    let mut stmt = tx.prepare_cached(&format!(
                        "{base} AND (invite_at_ms < ?4 OR (invite_at_ms = ?4 AND call_sid < ?5)) {order} LIMIT ?6"
                    ))?;
                    let rows = stmt.query_map(
                        params![scope.tenant().as_str(), from, to, at, parts[1], limit as i64 + 1],
                        call_view,
                    )?;
                    rows.collect::<Result<Vec<_>, _>>()?
                }
            };
            raws.into_iter().map(finish_call_view).collect::<Result<Vec<_>, _>>()
        })?;
        Ok(paginate(rows, limit, |c| encode_cursor("calls", &[&c.invite_at_ms.to_string(), &c.call_sid])))
    }

    fn usage(&self, scope: &TenantScope, query: UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let days = (query.to.start_unix_ms() - query.from.start_unix_ms()) / 86_400_000;
        if days < 0 {
            return Err(InvalidInput::new("to", "must not be before from").into());
        }
        if days > MAX_USAGE_DAYS {
            return Err(InvalidInput::new("to", format!("at most {MAX_USAGE_DAYS} days per query")).into());
        }
        self.read(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT day, app, number, calls, billable_secs FROM usage_daily \
                 WHERE tenant_id = ?1 AND day >= ?2 AND day < ?3 ORDER BY day, app, number",
            )?;
            let rows = stmt
                .query_map(params![scope.tenant().as_str(), query.from.to_string(), query.to.to_string()], |r| {
                    Ok((r.get::<_, String>(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
                })?;
            rows.map(|r| {
                let (day, app, number, calls, billable_secs) = r?;
                Ok(UsageRow {
                    day: UtcDay::parse(&day).map_err(|_| corrupt("usage day"))?,
                    app,
                    number,
                    calls,
                    billable_secs,
                })
            })
            .collect()
        })
    }

    // ---- audit ----

    fn list_audit(&self, scope: &TenantScope, query: AuditQuery) -> Result<Page<AuditEntry>, StoreError> {
        let from = query.from_ms.unwrap_or(i64::MIN);
        let to = query.to_ms.unwrap_or(i64::MAX);
        let before_id = match &query.page.cursor {
            Some(c) => cursor_i64(&decode_cursor(c, "audit", 1)?[0])?,
            None => i64::MAX,
        };
        let limit = query.page.limit();
        let rows = self.read(|tx| {
            let mut stmt = tx.prepare_cached(
                "SELECT id, at_ms, actor, action, target, detail FROM audit_log \
                 WHERE tenant_id = ?1 AND at_ms >= ?2 AND at_ms < ?3 AND id < ?4 ORDER BY id DESC LIMIT ?5",
            )?;
            let rows = stmt
                .query_map(params![scope.tenant().as_str(), from, to, before_id, limit as i64 + 1], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get::<_, String>(5)?))
                })?;
            rows.map(|r| {
                let (id, at_ms, actor, action, target, detail) = r?;
                let detail = serde_json::from_str(&detail).map_err(|_| corrupt("audit detail"))?;
                Ok(AuditEntry { id, at_ms, actor, action, target, detail })
            })
            .collect::<Result<Vec<_>, StoreError>>()
        })?;
        Ok(paginate(rows, limit, |e| encode_cursor("audit", &[&e.id.to_string()])))
    }
}
