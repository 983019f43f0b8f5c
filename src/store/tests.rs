//! The store suite, on real SQLite files in temporary directories. Written against `&dyn Store` plus a
//! [`Harness`] that knows how to open one back end, so a PostgreSQL back end can run the same cases.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;

use proptest::prelude::*;

use super::sqlite::{DB_FILE, LAST_USED_RESOLUTION_MS, SqliteStore};
use super::*;
use crate::call::record::{CallRecord, EndReason};
use crate::proto::media_streams::MediaFormat;
use crate::tenant::{Codec, E164, RouteDecision};

/// 2024-05-01T12:00:00Z
const T0: i64 = 1_714_564_800_000;
const PEPPER: [u8; 32] = [7; 32];

struct Harness {
    dir: tempfile::TempDir,
    store: SqliteStore,
    clock: Arc<ManualClock>,
    op: Operator,
}

impl Harness {
    fn new() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let store =
            SqliteStore::open_file(&dir.path().join(DB_FILE), KeyPepper::from_bytes(PEPPER), clock.clone()).unwrap();
        Harness { dir, store, clock, op: Operator::system("test") }
    }

    fn db_path(&self) -> PathBuf {
        self.dir.path().join(DB_FILE)
    }

    fn reopen(&self) -> Result<SqliteStore, StoreError> {
        SqliteStore::open_file(&self.db_path(), KeyPepper::from_bytes(PEPPER), self.clock.clone())
    }

    fn raw(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.db_path()).unwrap()
    }

    fn s(&self) -> &dyn Store {
        &self.store
    }

    fn tenant(&self, id: &str) -> TenantScope {
        let slug = TenantSlug::parse(id).unwrap();
        let new =
            NewTenant { id: slug.clone(), name: DisplayName::parse(&format!("{id} Inc")).unwrap(), plan: plan("pro") };
        self.s().create_tenant(&self.op, new).unwrap();
        self.s().operator_scope(&self.op, &slug).unwrap()
    }
}

fn plan(name: &str) -> PlanName {
    PlanName::parse(name).unwrap()
}

fn slug(id: &str) -> TenantSlug {
    TenantSlug::parse(id).unwrap()
}

fn e164(n: &str) -> E164 {
    E164::parse(n).unwrap()
}

fn stream_app(name: &str, header: Option<&str>) -> NewApp {
    NewApp {
        name: ResourceName::parse(name).unwrap(),
        target: AppTarget::Stream {
            url: StreamUrl::parse("ws://127.0.0.1:9000/stream").unwrap(),
            auth_header: header.map(|h| AuthHeader::parse(h).unwrap()),
        },
        codecs: CodecPreference::default(),
        custom_parameters: CustomParameters::new(vec![("lang".into(), "en".into())]).unwrap(),
        media_format: MediaFormat::default(),
    }
}

fn new_trunk(name: &str, cidrs: &[&str]) -> NewTrunk {
    NewTrunk { name: ResourceName::parse(name).unwrap(), allowed_sources: SourceCidrs::parse(cidrs).unwrap() }
}

fn new_key(name: &str, access: Access, expires_at_ms: Option<i64>) -> NewKey {
    NewKey { name: ResourceName::parse(name).unwrap(), access, expires_at_ms }
}

fn call_record(
    tenant: &str,
    sid: &str,
    app: &str,
    to: &str,
    invite_at_ms: i64,
    duration_secs: Option<u64>,
) -> CallRecord {
    let invite = invite_at_ms as u64;
    let answer = duration_secs.map(|_| invite + 1_500);
    CallRecord {
        tenant: tenant.into(),
        call_sid: sid.into(),
        sip_call_id: format!("{sid}@carrier"),
        from: "+15559990000".into(),
        to: to.into(),
        app: app.into(),
        invite_at_ms: invite,
        answer_at_ms: answer,
        end_at_ms: answer.unwrap_or(invite) + duration_secs.unwrap_or(0) * 1000 + 400,
        duration_secs: duration_secs.unwrap_or(0),
        end_reason: EndReason::CallerBye,
        codec: "PCMU",
        transport: "sip",
        packets_in: 10,
        packets_out: 9,
        packets_lost: 1,
        dtmf_count: 0,
    }
}

/// Every row of a paged listing, walked with small pages so that cursors are exercised.
fn walk<T>(page_size: u32, mut fetch: impl FnMut(PageRequest) -> Page<T>) -> Vec<T> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = fetch(PageRequest::new(page_size, cursor).unwrap());
        out.extend(page.items);
        match page.next {
            Some(c) => cursor = Some(c),
            None => return out,
        }
    }
}

fn all_calls(s: &dyn Store, scope: &TenantScope) -> Vec<CallView> {
    walk(7, |page| s.list_calls(scope, CallQuery { page, ..CallQuery::default() }).unwrap())
}

fn all_audit(s: &dyn Store, scope: &TenantScope) -> Vec<AuditEntry> {
    walk(5, |page| s.list_audit(scope, AuditQuery { page, ..AuditQuery::default() }).unwrap())
}

fn all_usage(s: &dyn Store, scope: &TenantScope) -> Vec<UsageRow> {
    let mut out = Vec::new();
    let mut from = UtcDay::parse("2024-01-01").unwrap();
    for _ in 0..3 {
        let to = UtcDay::from_unix_ms(from.start_unix_ms() + 365 * 86_400_000);
        out.extend(s.usage(scope, UsageQuery { from, to }).unwrap());
        from = to;
    }
    out
}

fn not_found(r: Result<impl std::fmt::Debug, StoreError>) -> Entity {
    match r {
        Err(StoreError::NotFound(e)) => e,
        other => panic!("expected NotFound, got {other:?}"),
    }
}

// ---- schema and migrations ----

#[test]
fn migrations_run_once_and_reopening_is_idempotent() {
    let h = Harness::new();
    let a = h.tenant("alpha");
    h.s().create_app(&a, stream_app("agent", None)).unwrap();
    assert_eq!(h.store.schema_version().unwrap(), SqliteStore::latest_schema_version());
    let raw = h.raw();
    let mode: String = raw.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    let tables_before: i64 = raw.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0)).unwrap();
    drop(raw);
    for _ in 0..3 {
        let again = h.reopen().unwrap();
        assert_eq!(again.schema_version().unwrap(), SqliteStore::latest_schema_version());
        let scope = again.operator_scope(&h.op, &slug("alpha")).unwrap();
        assert_eq!(again.list_apps(&scope).unwrap().len(), 1, "data survives reopening");
    }
    let tables_after: i64 = h.raw().query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0)).unwrap();
    assert_eq!(tables_before, tables_after);
    let version: i64 = h.raw().query_row("SELECT version FROM routing_version", [], |r| r.get(0)).unwrap();
    assert_eq!(version, 2, "the seed row of routing_version was not inserted again");
}

#[test]
fn a_database_from_a_newer_binary_is_refused() {
    let h = Harness::new();
    h.raw().pragma_update(None, "user_version", 999).unwrap();
    match h.reopen() {
        Err(StoreError::Backend(e)) => assert!(e.to_string().contains("newer"), "{e}"),
        Err(other) => panic!("expected a backend error, got {other:?}"),
        Ok(_) => panic!("a newer schema was opened"),
    }
}

#[test]
fn foreign_keys_are_enforced_by_the_database() {
    let h = Harness::new();
    let a = h.tenant("alpha");
    let b = h.tenant("bravo");
    let b_app = h.s().create_app(&b, stream_app("agent", None)).unwrap();
    // Even a hand-written row cannot point alpha's number at bravo's app: the composite key forbids it.
    let conn = h.raw();
    conn.pragma_update(None, "foreign_keys", true).unwrap();
    let err = conn
        .execute(
            "INSERT INTO numbers (number, tenant_id, app_id, claimed_at_ms, updated_at_ms) VALUES ('+15550001', ?1, ?2, 0, 0)",
            [a.tenant().as_str(), b_app.id.as_str()],
        )
        .unwrap_err();
    assert!(err.to_string().contains("FOREIGN KEY"), "{err}");
}

#[test]
fn opening_a_data_dir_creates_the_database_and_a_private_pepper() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let store = SqliteStore::open(&data).unwrap();
    assert!(data.join(DB_FILE).exists());
    assert_eq!(store.path(), data.join(DB_FILE));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for file in [super::sqlite::PEPPER_FILE, DB_FILE, &format!("{DB_FILE}-wal")] {
            let mode = std::fs::metadata(data.join(file)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
    }
}

#[tokio::test]
async fn async_callers_reach_the_store_through_the_blocking_pool() {
    let h = Harness::new();
    let a = h.tenant("alpha");
    let op = h.op.clone();
    let Harness { dir, store, .. } = h;
    let store: Arc<dyn Store> = Arc::new(store);
    let app = blocking(store.clone(), move |s| s.create_app(&a, stream_app("agent", None))).await.unwrap();
    let tenant = blocking(store.clone(), move |s| s.tenant(&op, &slug("alpha"))).await.unwrap();
    assert_eq!((app.name.as_str(), tenant.id.as_str()), ("agent", "alpha"));
    drop(dir);
}

// ---- tenants ----

#[test]
fn tenants_are_created_listed_and_moved_through_their_life() {
    let h = Harness::new();
    for id in ["delta", "alpha", "charlie", "bravo"] {
        h.tenant(id);
    }
    let dup = NewTenant { id: slug("alpha"), name: DisplayName::parse("x").unwrap(), plan: plan("free") };
    assert!(matches!(h.s().create_tenant(&h.op, dup), Err(StoreError::Conflict(Conflict::TenantExists))));

    let ids: Vec<String> =
        walk(3, |page| h.s().list_tenants(&h.op, page).unwrap()).into_iter().map(|t| t.id.to_string()).collect();
    assert_eq!(ids, ["alpha", "bravo", "charlie", "delta"]);

    let t = h.s().set_tenant_plan(&h.op, &slug("alpha"), plan("enterprise")).unwrap();
    assert_eq!(t.plan, "enterprise");
    let s = h.s().set_tenant_status(&h.op, &slug("alpha"), TenantStatus::Suspended).unwrap();
    assert_eq!(s.status, TenantStatus::Suspended);
    h.s().set_tenant_status(&h.op, &slug("alpha"), TenantStatus::Offboarding).unwrap();
    let back = h.s().set_tenant_status(&h.op, &slug("alpha"), TenantStatus::Active);
    assert!(matches!(back, Err(StoreError::Conflict(Conflict::StatusTransition { .. }))), "{back:?}");
    h.s().set_tenant_status(&h.op, &slug("alpha"), TenantStatus::Deleted).unwrap();
    assert_eq!(not_found(h.s().operator_scope(&h.op, &slug("alpha"))), Entity::Tenant);
    assert_eq!(h.s().tenant(&h.op, &slug("alpha")).unwrap().status, TenantStatus::Deleted);
    assert_eq!(not_found(h.s().tenant(&h.op, &slug("zulu"))), Entity::Tenant);

    let scope = h.s().operator_scope(&h.op, &slug("bravo")).unwrap();
    let actions: Vec<String> = all_audit(h.s(), &h.s().operator_scope(&h.op, &slug("charlie")).unwrap())
        .into_iter()
        .map(|e| e.action)
        .collect();
    assert_eq!(actions, ["tenant.create"]);
    assert_eq!(h.s().own_tenant(&scope).unwrap().id, slug("bravo"));
}

#[test]
fn operator_changes_are_audited_with_their_actor() {
    let h = Harness::new();
    let a = h.tenant("alpha");
    h.s().set_tenant_plan(&h.op, &slug("alpha"), plan("free")).unwrap();
    h.s().set_tenant_plan(&h.op, &slug("alpha"), plan("free")).unwrap(); // no change, no entry
    h.s().set_tenant_status(&h.op, &slug("alpha"), TenantStatus::Suspended).unwrap();
    let log = all_audit(h.s(), &a);
    let actions: Vec<&str> = log.iter().map(|e| e.action.as_str()).collect();
    assert_eq!(actions, ["tenant.status", "tenant.plan", "tenant.create"]);
    assert!(log.iter().all(|e| e.actor == "system:test" && e.target == "alpha" && e.at_ms == T0));
    assert_eq!(log[1].detail, serde_json::json!({ "from": "pro", "to": "free" }));
}

// ---- apps ----

#[test]
fn apps_keep_their_auth_header_but_never_show_it() {
    let h = Harness::new();
    let a = h.tenant("alpha");
    let header = "Bearer sk-live-0123456789abcdefSECRETtail";
    let app = h.s().create_app(&a, stream_app("agent", Some(header))).unwrap();
    assert_eq!(app.auth_header_masked.as_deref(), Some("****tail"));
    let shown =
        serde_json::to_string(&(h.s().app(&a, &app.id).unwrap(), h.s().list_apps(&a).unwrap(), all_audit(h.s(), &a)))
            .unwrap();
    assert!(!shown.contains("SECRET"), "{shown}");

    // The media core's copy has it in full.
    let routing = h.s().load_routing(&h.op).unwrap();
    match &routing.tenants[0].apps[0].kind {
        crate::tenant::AppKind::Stream { auth_header, .. } => assert_eq!(auth_header.as_deref(), Some(header)),
        other => panic!("{other:?}"),
    }

    // Updates keep the header unless told otherwise; an echo app takes none.
    let renamed = h
        .s()
        .update_app(
            &a,
            &app.id,
            AppUpdate { name: Some(ResourceName::parse("front desk").unwrap()), ..Default::default() },
        )
        .unwrap();
    assert_eq!(renamed.auth_header_masked.as_deref(), Some("****tail"));
    let cleared = h.s().update_app(&a, &app.id, AppUpdate { auth_header: Some(None), ..Default::default() }).unwrap();
    assert_eq!(cleared.auth_header_masked, None);
    let echo = NewApp {
        name: ResourceName::parse("echo").unwrap(),
        target: AppTarget::Echo,
        codecs: CodecPreference::new(vec![Codec::Pcma]).unwrap(),
        custom_parameters: CustomParameters::default(),
        media_format: MediaFormat::L16Wide,
    };
    let echo = h.s().create_app(&a, echo).unwrap();
    assert_eq!((echo.kind, echo.stream_url.as_deref()), ("echo", None));
    let bad = AppUpdate { auth_header: Some(Some(AuthHeader::parse("Bearer x").unwrap())), ..Default::default() };
    assert!(matches!(h.s().update_app(&a, &echo.id, bad), Err(StoreError::Invalid(_))));
    let to_stream =
        AppUpdate { stream_url: Some(StreamUrl::parse("wss://agent.example/x").unwrap()), ..Default::default() };
    assert_eq!(h.s().update_app(&a, &echo.id, to_stream).unwrap().kind, "stream");
}

#[test]
fn app_names_are_unique_per_tenant_and_apps_in_use_stay() {
    let h = Harness::new();
    let a = h.tenant("alpha");
    let b = h.tenant("bravo");
    let app = h.s().create_app(&a, stream_app("agent", None)).unwrap();
    assert!(matches!(h.s().create_app(&a, stream_app("agent", None)), Err(StoreError::Conflict(Conflict::NameTaken))));
    h.s().create_app(&b, stream_app("agent", None)).expect("another tenant may use the same name");
    let other = h.s().create_app(&a, stream_app("other", None)).unwrap();
    let rename = AppUpdate { name: Some(ResourceName::parse("agent").unwrap()), ..Default::default() };
    assert!(matches!(h.s().update_app(&a, &other.id, rename), Err(StoreError::Conflict(Conflict::NameTaken))));

    h.s().claim_number(&a, &e164("+15550001"), &app.id).unwrap();
    assert!(matches!(h.s().delete_app(&a, &app.id), Err(StoreError::Conflict(Conflict::AppInUse))));
    h.s().release_number(&a, &e164("+15550001")).unwrap();
    h.s().delete_app(&a, &app.id).unwrap();
    assert_eq!(not_found(h.s().app(&a, &app.id)), Entity::App);
}

#[test]
fn an_apps_media_format_is_stored_audited_routed_and_survives_reopening() {
    let h = Harness::new();
    let a = h.tenant("alpha");
    let plain = h.s().create_app(&a, stream_app("plain", None)).unwrap();
    assert_eq!(plain.media_format, MediaFormat::Mulaw8k, "the default");
    let wide = h.s().create_app(&a, NewApp { media_format: MediaFormat::L16Wide, ..stream_app("wide", None) }).unwrap();
    assert_eq!(wide.media_format, MediaFormat::L16Wide);
    assert_eq!(serde_json::to_value(&wide).unwrap()["media_format"], "l16_16k", "shown by its name");
    assert_eq!(h.s().app(&a, &wide.id).unwrap().media_format, MediaFormat::L16Wide);

    // The routing table, which the SIP path's snapshot is built from, carries it.
    let formats = |s: &dyn Store| -> Vec<(String, MediaFormat)> {
        let table = s.load_routing(&h.op).unwrap();
        table.tenants[0].apps.iter().map(|app| (app.name.to_string(), app.media_format)).collect()
    };
    assert_eq!(formats(h.s()), [("plain".to_owned(), MediaFormat::Mulaw8k), ("wide".to_owned(), MediaFormat::L16Wide)]);

    // An update changes it, and only what is given: a rename keeps it.
    let v = h.s().routing_version(&h.op).unwrap();
    let to_l16 = AppUpdate { media_format: Some(MediaFormat::L16Wide), ..Default::default() };
    assert_eq!(h.s().update_app(&a, &plain.id, to_l16).unwrap().media_format, MediaFormat::L16Wide);
    assert!(h.s().routing_version(&h.op).unwrap() > v, "a format change is a routing change");
    let rename = AppUpdate { name: Some(ResourceName::parse("wide-2").unwrap()), ..Default::default() };
    assert_eq!(h.s().update_app(&a, &wide.id, rename).unwrap().media_format, MediaFormat::L16Wide);
    let back = AppUpdate { media_format: Some(MediaFormat::Mulaw8k), ..Default::default() };
    assert_eq!(h.s().update_app(&a, &wide.id, back).unwrap().media_format, MediaFormat::Mulaw8k);
    let v = h.s().routing_version(&h.op).unwrap();
    let same = AppUpdate { media_format: Some(MediaFormat::Mulaw8k), ..Default::default() };
    h.s().update_app(&a, &wide.id, same).unwrap();
    assert_eq!(h.s().routing_version(&h.op).unwrap(), v, "setting the format it has changes nothing");

    // The audit log says what was chosen and what changed, like the other fields.
    let log = all_audit(h.s(), &a);
    let create = log.iter().find(|e| e.action == "app.create" && e.target == wide.id.as_str()).unwrap();
    assert_eq!(create.detail["media_format"], "l16_16k");
    let create = log.iter().find(|e| e.action == "app.create" && e.target == plain.id.as_str()).unwrap();
    assert_eq!(create.detail["media_format"], "mulaw_8k");
    let updates: Vec<&serde_json::Value> =
        log.iter().filter(|e| e.action == "app.update").map(|e| &e.detail).rev().collect();
    assert_eq!(
        updates,
        [
            &serde_json::json!({ "media_format": { "from": "mulaw_8k", "to": "l16_16k" } }),
            &serde_json::json!({ "name": { "from": "wide", "to": "wide-2" } }),
            &serde_json::json!({ "media_format": { "from": "l16_16k", "to": "mulaw_8k" } }),
        ]
    );

    // In the file: another process opening it sees the same.
    let again = h.reopen().unwrap();
    assert_eq!(
        formats(&again),
        [("plain".to_owned(), MediaFormat::L16Wide), ("wide-2".to_owned(), MediaFormat::Mulaw8k)]
    );
    let stored: Vec<String> = h
        .raw()
        .prepare("SELECT media_format FROM apps ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(stored, ["l16_16k", "mulaw_8k"], "stored by name");
}

#[test]
fn a_version_3_database_is_migrated_and_its_apps_stream_mulaw() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(DB_FILE);
    super::sqlite::create_at_version(&path, 3).unwrap();
    // The rows a version-3 binary wrote: a tenant and an app, without the column.
    let raw = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(raw.query_row("PRAGMA user_version", [], |r| r.get::<_, u32>(0)).unwrap(), 3);
    raw.execute_batch(
        "INSERT INTO tenants VALUES ('alpha', 'Alpha', 'pro', 'active', 0, 0);
         INSERT INTO apps (tenant_id, id, name, kind, stream_url, auth_header, codecs, custom_parameters, \
           created_at_ms, updated_at_ms) \
         VALUES ('alpha', 'app_abcdefgh23456723', 'old', 'stream', 'ws://127.0.0.1:9/s', NULL, '[\"PCMU\"]', '[]', 0, 0);",
    )
    .unwrap();
    let has_column = |c: &rusqlite::Connection| -> bool {
        c.prepare("SELECT 1 FROM pragma_table_info('apps') WHERE name = 'media_format'").unwrap().exists([]).unwrap()
    };
    assert!(!has_column(&raw));
    drop(raw);

    let clock = Arc::new(ManualClock::new(T0));
    let store = SqliteStore::open_file(&path, KeyPepper::from_bytes(PEPPER), clock).unwrap();
    assert_eq!(store.schema_version().unwrap(), SqliteStore::latest_schema_version());
    assert!(has_column(&rusqlite::Connection::open(&path).unwrap()));
    let op = Operator::system("test");
    let scope = store.operator_scope(&op, &slug("alpha")).unwrap();
    let apps = store.list_apps(&scope).unwrap();
    assert_eq!((apps.len(), apps[0].name.as_str(), apps[0].media_format), (1, "old", MediaFormat::Mulaw8k));
    assert_eq!(store.load_routing(&op).unwrap().tenants[0].apps[0].media_format, MediaFormat::Mulaw8k);
}

#[test]
fn an_unknown_media_format_in_a_row_is_reported_as_corrupt() {
    let h = Harness::new();
    let a = h.tenant("alpha");
    let app = h.s().create_app(&a, stream_app("agent", None)).unwrap();
    h.raw().execute("UPDATE apps SET media_format = 'opus_48k'", []).unwrap();
    for result in
        [h.s().app(&a, &app.id).map(|_| ()), h.s().list_apps(&a).map(|_| ()), h.s().load_routing(&h.op).map(|_| ())]
    {
        match result {
            Err(StoreError::Backend(e)) => assert!(e.to_string().contains("stored media_format does not parse"), "{e}"),
            other => panic!("expected a backend error, got {other:?}"),
        }
    }
}

// ---- numbers ----

#[test]
fn a_number_belongs_to_one_tenant_at_a_time() {
    let h = Harness::new();
    let a = h.tenant("alpha");
    let b = h.tenant("bravo");
    let a_app = h.s().create_app(&a, stream_app("agent", None)).unwrap();
    let b_app = h.s().create_app(&b, stream_app("agent", None)).unwrap();
    let n = e164("+1 (555) 123-0001");
    h.s().claim_number(&a, &n, &a_app.id).unwrap();

    let audit_before = all_audit(h.s(), &b).len();
    match h.s().claim_number(&b, &n, &b_app.id) {
        Err(StoreError::Conflict(Conflict::NumberTakenByAnotherTenant)) => {}
        other => panic!("expected the other-tenant conflict, got {other:?}"),
    }
    assert_eq!(all_audit(h.s(), &b).len(), audit_before, "a refused change leaves no audit entry");
    match h.s().claim_number(&a, &n, &a_app.id) {
        Err(StoreError::Conflict(Conflict::NumberAlreadyClaimed)) => {}
        other => panic!("expected the own-number conflict, got {other:?}"),
    }
    assert_eq!(h.s().number(&a, &n).unwrap().app_id, a_app.id);
    assert!(h.s().list_numbers(&b).unwrap().is_empty());
}

#[test]
fn a_released_number_keeps_a_record_and_can_be_claimed_by_another_tenant() {
    let h = Harness::new();
    let a = h.tenant("alpha");
    let b = h.tenant("bravo");
    let a_app = h.s().create_app(&a, stream_app("agent", None)).unwrap();
    let a_app2 = h.s().create_app(&a, stream_app("agent2", None)).unwrap();
    let b_app = h.s().create_app(&b, stream_app("agent", None)).unwrap();
    let n = e164("+15551230001");
    h.s().claim_number(&a, &n, &a_app.id).unwrap();
    h.clock.advance_ms(5_000);
    assert_eq!(h.s().assign_number(&a, &n, &a_app2.id).unwrap().app_id, a_app2.id);
    h.clock.advance_ms(5_000);
    let release = h.s().release_number(&a, &n).unwrap();
    assert_eq!((release.claimed_at_ms, release.released_at_ms), (T0, T0 + 10_000));
    assert_eq!(release.app_id, a_app2.id);
    assert_eq!(not_found(h.s().number(&a, &n)), Entity::Number);
    assert_eq!(not_found(h.s().release_number(&a, &n)), Entity::Number);

    let claimed = h.s().claim_number(&b, &n, &b_app.id).unwrap();
    assert_eq!(claimed.claimed_at_ms, T0 + 10_000);
    assert_eq!(h.s().list_number_releases(&a).unwrap(), vec![release]);
    assert!(h.s().list_number_releases(&b).unwrap().is_empty());
    let actions: Vec<String> = all_audit(h.s(), &a).into_iter().map(|e| e.action).collect();
    assert_eq!(actions[..3], ["number.release", "number.assign", "number.claim"]);
}

// ---- trunks ----

#[test]
fn trunks_store_their_networks() {
    let h = Harness::new();
    let a = h.tenant("alpha");
    let t = h.s().create_trunk(&a, new_trunk("carrier", &["192.0.2.7/24", "2001:db8::/32"])).unwrap();
    let nets: Vec<String> = t.allowed_sources.nets().iter().map(|n| n.to_string()).collect();
    assert_eq!(nets, ["192.0.2.0/24", "2001:db8::/32"]);
    let up =
        TrunkUpdate { allowed_sources: Some(SourceCidrs::parse(&["198.51.100.1"]).unwrap()), ..Default::default() };
    let t2 = h.s().update_trunk(&a, &t.id, up).unwrap();
    assert_eq!(t2.allowed_sources.nets()[0].to_string(), "198.51.100.1/32");
    assert_eq!(h.s().list_trunks(&a).unwrap(), vec![t2.clone()]);
    assert!(matches!(
        h.s().create_trunk(&a, new_trunk("carrier", &[])),
        Err(StoreError::Conflict(Conflict::NameTaken))
    ));
    h.s().delete_trunk(&a, &t.id).unwrap();
    assert_eq!(not_found(h.s().trunk(&a, &t.id)), Entity::Trunk);
}

// ---- keys ----

#[test]
fn keys_verify_until_revoked_and_record_their_use() {
    let h = Harness::new();
    let a = h.tenant("alpha");
    let created = h.s().create_key(&a, new_key("ci", Access::ReadWrite, None)).unwrap();
    let key = created.key.expose().to_owned();
    assert!(key.starts_with(&format!("{}_", created.view.prefix)));
    assert_eq!(created.view.last_used_at_ms, None);

    let scope = h.s().authenticate_key(&key).unwrap();
    assert_eq!(scope.tenant(), &slug("alpha"));
    assert_eq!(scope.actor(), &Actor::ApiKey(created.view.prefix.clone()));
    assert_eq!(scope.access(), Access::ReadWrite);
    assert_eq!(h.s().key(&a, &created.view.prefix).unwrap().last_used_at_ms, Some(T0));

    // Within the resolution no write; after it, the time moves.
    h.clock.advance_ms(1_000);
    h.s().authenticate_key(&key).unwrap();
    assert_eq!(h.s().key(&a, &created.view.prefix).unwrap().last_used_at_ms, Some(T0));
    h.clock.advance_ms(LAST_USED_RESOLUTION_MS);
    h.s().authenticate_key(&key).unwrap();
    assert_eq!(
        h.s().key(&a, &created.view.prefix).unwrap().last_used_at_ms,
        Some(T0 + 1_000 + LAST_USED_RESOLUTION_MS)
    );

    // Changes made with the key are audited under it.
    h.s().create_app(&scope, stream_app("agent", None)).unwrap();
    assert_eq!(all_audit(h.s(), &a)[0].actor, format!("key:{}", created.view.prefix));

    let revoked = h.s().revoke_key(&scope, &created.view.prefix).unwrap();
    assert!(revoked.revoked_at_ms.is_some());
    assert!(matches!(h.s().authenticate_key(&key), Err(AuthError::Revoked)));
    assert_eq!(h.s().revoke_key(&a, &created.view.prefix).unwrap(), revoked, "revoking twice changes nothing");
}

#[test]
fn wrong_expired_and_malformed_keys_fail() {
    let h = Harness::new();
    let a = h.tenant("alpha");
    let created = h.s().create_key(&a, new_key("short-lived", Access::ReadOnly, Some(T0 + 60_000))).unwrap();
    let key = created.key.expose().to_owned();
    h.s().authenticate_key(&key).unwrap();

    // Right prefix, wrong secret; a key of the right shape that was never issued; garbage.
    let mut wrong = key.clone().into_bytes();
    let last = wrong.len() - 1;
    wrong[last] = if wrong[last] == b'a' { b'b' } else { b'a' };
    let wrong = String::from_utf8(wrong).unwrap();
    assert!(matches!(h.s().authenticate_key(&wrong), Err(AuthError::Unknown)));
    let never = format!("fvk_aaaaaaaa_{}", "a".repeat(40));
    assert!(matches!(h.s().authenticate_key(&never), Err(AuthError::Unknown)));
    for garbage in ["", "fvk_", "Bearer x", &key[..key.len() - 1], &format!("{key} ")] {
        assert!(matches!(h.s().authenticate_key(garbage), Err(AuthError::Malformed)), "{garbage:?}");
    }

    h.clock.advance_ms(60_000);
    assert!(matches!(h.s().authenticate_key(&key), Err(AuthError::Expired)));
    assert!(matches!(
        h.s().create_key(&a, new_key("past", Access::ReadOnly, Some(T0))),
        Err(StoreError::Invalid(InvalidInput { field: "expires_at", .. }))
    ));
}

#[test]
fn read_only_keys_read_but_cannot_write() {
    let h = Harness::new();
    let a = h.tenant("alpha");
    let app = h.s().create_app(&a, stream_app("agent", None)).unwrap();
    let created = h.s().create_key(&a, new_key("ro", Access::ReadOnly, None)).unwrap();
    let ro = h.s().authenticate_key(created.key.expose()).unwrap();
    assert_eq!(h.s().list_apps(&ro).unwrap().len(), 1);
    assert!(matches!(h.s().create_app(&ro, stream_app("x", None)), Err(StoreError::ReadOnly)));
    assert!(matches!(h.s().delete_app(&ro, &app.id), Err(StoreError::ReadOnly)));
    assert!(matches!(h.s().claim_number(&ro, &e164("+15550001"), &app.id), Err(StoreError::ReadOnly)));
    assert!(matches!(h.s().create_key(&ro, new_key("escalate", Access::ReadWrite, None)), Err(StoreError::ReadOnly)));
    assert!(matches!(h.s().revoke_key(&ro, &created.view.prefix), Err(StoreError::ReadOnly)));
    let rec = call_record("alpha", "CA1", "agent", "+15550001", T0, Some(3));
    assert!(matches!(h.s().record_call(&ro, &rec), Err(StoreError::ReadOnly)));
}

#[test]
fn keys_follow_their_tenants_status() {
    let h = Harness::new();
    let a = h.tenant("alpha");
    let key = h.s().create_key(&a, new_key("ci", Access::ReadWrite, None)).unwrap().key;
    h.s().set_tenant_status(&h.op, &slug("alpha"), TenantStatus::Suspended).unwrap();
    h.s().authenticate_key(key.expose()).expect("a suspended tenant may still read its bill");
    h.s().set_tenant_status(&h.op, &slug("alpha"), TenantStatus::Offboarding).unwrap();
    assert!(matches!(h.s().authenticate_key(key.expose()), Err(AuthError::TenantClosed)));
}

#[test]
fn the_stored_key_material_never_contains_the_key() {
    let h = Harness::new();
    let a = h.tenant("alpha");
    let mut secrets = Vec::new();
    for i in 0..20 {
        let created = h.s().create_key(&a, new_key(&format!("k{i}"), Access::ReadWrite, None)).unwrap();
        h.s().authenticate_key(created.key.expose()).unwrap();
        secrets.push((created.view.prefix.clone(), created.key.expose().to_owned()));
    }
    let raw = h.raw();
    for (prefix, key) in &secrets {
        let secret_part = &key[prefix.as_str().len() + 1..];
        let (hash, name, access): (Vec<u8>, String, String) = raw
            .query_row("SELECT hash, name, access FROM api_keys WHERE prefix = ?1", [prefix.as_str()], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .unwrap();
        assert_eq!(hash.len(), 32);
        assert_ne!(hash.as_slice(), key.as_bytes());
        let hex: String = hash.iter().map(|b| format!("{b:02x}")).collect();
        for text in [&hex, &name, &access, &String::from_utf8_lossy(&hash).into_owned()] {
            assert!(!text.contains(secret_part) && !text.contains(key.as_str()));
        }
    }
    // Nowhere in the files either (database and write-ahead log).
    drop(raw);
    let mut bytes = std::fs::read(h.db_path()).unwrap();
    if let Ok(wal) = std::fs::read(h.dir.path().join(format!("{DB_FILE}-wal"))) {
        bytes.extend(wal);
    }
    for (_, key) in &secrets {
        let secret_part = &key.as_bytes()[13..];
        assert!(!bytes.windows(secret_part.len()).any(|w| w == secret_part), "the secret is in the files");
    }
    // The audit log names keys by prefix only.
    let audit = serde_json::to_string(&all_audit(h.s(), &a)).unwrap();
    assert!(secrets.iter().all(|(_, k)| !audit.contains(&k[13..])));
}

// ---- calls, usage, pagination ----

#[test]
fn a_call_is_recorded_once_and_billed_once() {
    let h = Harness::new();
    let a = h.tenant("alpha");
    let rec = call_record("alpha", "CA1", "agent", "+15550001", T0, Some(42));
    let billed = h.s().record_call(&a, &rec).unwrap();
    assert_eq!(billed, RecordedCall { billable_secs: 42, usage_day: UtcDay::parse("2024-05-01").unwrap() });
    assert!(matches!(h.s().record_call(&a, &rec), Err(StoreError::Conflict(Conflict::CallAlreadyRecorded))));
    let usage = all_usage(h.s(), &a);
    assert_eq!(usage.len(), 1);
    assert_eq!((usage[0].calls, usage[0].billable_secs), (1, 42));
    let view = h.s().call(&a, "CA1").unwrap();
    assert_eq!((view.duration_secs, view.billable_secs, view.end_reason.as_str()), (42, 42, "caller_bye"));
    assert_eq!(view.answer_at_ms, Some(T0 + 1_500));

    let unanswered = call_record("alpha", "CA2", "agent", "+15550001", T0, None);
    assert_eq!(h.s().record_call(&a, &unanswered).unwrap().billable_secs, 0);
    assert_eq!(all_usage(h.s(), &a)[0].calls, 2);

    let foreign = call_record("bravo", "CA3", "agent", "+15550001", T0, Some(1));
    assert!(matches!(h.s().record_call(&a, &foreign), Err(StoreError::Invalid(InvalidInput { field: "tenant", .. }))));
    assert_eq!(not_found(h.s().call(&a, "CA3")), Entity::Call);
}

#[test]
fn usage_queries_are_bounded() {
    let h = Harness::new();
    let a = h.tenant("alpha");
    let day = |d: &str| UtcDay::parse(d).unwrap();
    assert!(h.s().usage(&a, UsageQuery { from: day("2024-05-02"), to: day("2024-05-01") }).is_err());
    assert!(h.s().usage(&a, UsageQuery { from: day("2023-01-01"), to: day("2024-05-01") }).is_err());
    assert!(h.s().usage(&a, UsageQuery { from: day("2024-05-01"), to: day("2024-05-01") }).unwrap().is_empty());
}

#[test]
fn cursor_pagination_returns_every_call_exactly_once_in_order() {
    let h = Harness::new();
    let a = h.tenant("alpha");
    let b = h.tenant("bravo");
    let mut expected = HashSet::new();
    for i in 0..263 {
        // Many calls share an INVITE time, so the cursor must break ties.
        let at = T0 + (i % 17) * 1_000;
        let sid = format!("CA{i:04}");
        h.s().record_call(&a, &call_record("alpha", &sid, "agent", "+15550001", at, Some(i as u64 % 5))).unwrap();
        expected.insert(sid);
        let b_sid = format!("CB{i:04}");
        h.s().record_call(&b, &call_record("bravo", &b_sid, "agent", "+15550002", at, None)).unwrap();
    }
    let got = all_calls(h.s(), &a);
    let sids: Vec<&str> = got.iter().map(|c| c.call_sid.as_str()).collect();
    assert_eq!(sids.len(), 263);
    assert_eq!(sids.iter().map(|s| s.to_string()).collect::<HashSet<_>>(), expected);
    assert!(got.windows(2).all(|w| (w[0].invite_at_ms, &w[0].call_sid) > (w[1].invite_at_ms, &w[1].call_sid)));

    // With a time window, exactly the calls inside it.
    let (from, to) = (T0 + 3_000, T0 + 9_000);
    let windowed: Vec<String> =
        walk(10, |page| h.s().list_calls(&a, CallQuery { from_ms: Some(from), to_ms: Some(to), page }).unwrap())
            .into_iter()
            .map(|c| c.call_sid)
            .collect();
    let inside: HashSet<String> =
        got.iter().filter(|c| (from..to).contains(&c.invite_at_ms)).map(|c| c.call_sid.clone()).collect();
    assert_eq!(windowed.len(), inside.len());
    assert_eq!(windowed.into_iter().collect::<HashSet<_>>(), inside);

    // Garbage and other listings' cursors are refused, not misread.
    for bad in ["zz", "dGVuYW50cx9hbHBoYQ"] {
        let q = CallQuery {
            page: PageRequest::new(10, Some(Cursor::from_client(bad).unwrap())).unwrap(),
            ..Default::default()
        };
        assert!(
            matches!(h.s().list_calls(&a, q), Err(StoreError::Invalid(InvalidInput { field: "cursor", .. }))),
            "{bad}"
        );
    }
}

#[test]
fn audit_pagination_returns_every_entry_exactly_once() {
    let h = Harness::new();
    let a = h.tenant("alpha");
    for i in 0..23 {
        h.clock.advance_ms(10);
        h.s().create_app(&a, stream_app(&format!("app{i}"), None)).unwrap();
    }
    let log = all_audit(h.s(), &a);
    assert_eq!(log.len(), 24);
    let ids: HashSet<i64> = log.iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 24);
    assert!(log.windows(2).all(|w| w[0].id > w[1].id));
    let window = h
        .s()
        .list_audit(&a, AuditQuery { from_ms: Some(T0 + 50), to_ms: Some(T0 + 100), page: PageRequest::default() })
        .unwrap();
    assert_eq!(window.items.len(), 5);
}

/// One generated call: answered or not, how long, which day, app and number.
#[derive(Clone, Debug)]
struct GenCall {
    answered: bool,
    duration_secs: u64,
    day: i64,
    second_of_day: i64,
    app: usize,
    number: usize,
}

fn gen_call() -> impl Strategy<Value = GenCall> {
    (any::<bool>(), 0u64..7_200, 0i64..45, 0i64..86_400, 0usize..3, 0usize..4).prop_map(
        |(answered, duration_secs, day, second_of_day, app, number)| GenCall {
            answered,
            duration_secs,
            day,
            second_of_day,
            app,
            number,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// However calls fall across days, apps and numbers, and whatever duplicates arrive, the usage rows sum to the
    /// call records exactly, in total and per (day, app, number).
    #[test]
    fn usage_always_sums_to_the_call_records(calls in proptest::collection::vec(gen_call(), 1..120), dups in proptest::collection::vec(0usize..1000, 0..10)) {
        let h = Harness::new();
        let a = h.tenant("alpha");
        let b = h.tenant("bravo");
        let apps = ["front", "sales", "night"];
        let numbers = ["+15550001", "+15550002", "+15550003", "+15550004"];
        let mut records = Vec::new();
        for (i, c) in calls.iter().enumerate() {
            let at = T0 - 10 * 86_400_000 + c.day * 86_400_000 + c.second_of_day * 1000;
            let rec = call_record("alpha", &format!("CA{i}"), apps[c.app], numbers[c.number], at, c.answered.then_some(c.duration_secs));
            h.s().record_call(&a, &rec).unwrap();
            // Noise in another tenant, which must not count.
            h.s().record_call(&b, &call_record("bravo", &format!("CA{i}"), "x", "+15559999", at, Some(7))).unwrap();
            records.push(rec);
        }
        for d in dups {
            let rec = &records[d % records.len()];
            prop_assert!(matches!(h.s().record_call(&a, rec), Err(StoreError::Conflict(Conflict::CallAlreadyRecorded))));
        }

        let expected: u64 = calls.iter().map(|c| if c.answered { c.duration_secs } else { 0 }).sum();
        let stored = all_calls(h.s(), &a);
        prop_assert_eq!(stored.len(), calls.len());
        let call_sum: i64 = stored.iter().map(|c| c.billable_secs).sum();
        let usage = all_usage(h.s(), &a);
        let usage_sum: i64 = usage.iter().map(|u| u.billable_secs).sum();
        prop_assert_eq!(call_sum as u64, expected);
        prop_assert_eq!(usage_sum, call_sum);
        prop_assert_eq!(usage.iter().map(|u| u.calls).sum::<i64>(), calls.len() as i64);

        let mut by_group: BTreeMap<(String, String, String), i64> = BTreeMap::new();
        for c in &stored {
            *by_group.entry((c.usage_day.to_string(), c.app.clone(), c.to.clone())).or_default() += c.billable_secs;
        }
        let usage_groups: BTreeMap<(String, String, String), i64> =
            usage.iter().map(|u| ((u.day.to_string(), u.app.clone(), u.number.clone()), u.billable_secs)).collect();
        prop_assert_eq!(by_group, usage_groups);

        // And in the database itself, per tenant.
        let raw = h.raw();
        let (u, c): (i64, i64) = raw.query_row(
            "SELECT (SELECT coalesce(sum(billable_secs), 0) FROM usage_daily WHERE tenant_id = 'alpha'), \
                    (SELECT coalesce(sum(billable_secs), 0) FROM calls WHERE tenant_id = 'alpha')",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        ).unwrap();
        prop_assert_eq!(u, c);
    }
}

// ---- routing ----

#[test]
fn the_routing_table_builds_the_sip_snapshot() {
    let h = Harness::new();
    let a = h.tenant("alpha");
    let b = h.tenant("bravo");
    let v0 = h.s().routing_version(&h.op).unwrap();
    let a_app = h.s().create_app(&a, stream_app("agent", Some("Bearer 0123456789abcdef"))).unwrap();
    let b_app = h.s().create_app(&b, stream_app("desk", None)).unwrap();
    h.s().claim_number(&a, &e164("+15550001"), &a_app.id).unwrap();
    h.s().claim_number(&b, &e164("+15550002"), &b_app.id).unwrap();
    h.s().create_trunk(&b, new_trunk("carrier", &["10.0.0.0/8"])).unwrap();
    let v1 = h.s().routing_version(&h.op).unwrap();
    assert!(v1 > v0);

    let table = h.s().load_routing(&h.op).unwrap();
    assert_eq!(table.version, v1);
    let snapshot = table.to_snapshot();
    assert_eq!(snapshot.tenants().len(), 2);
    match snapshot.route(&e164("+15550001"), "192.0.2.1".parse().unwrap()) {
        RouteDecision::Accept { tenant, app, .. } => {
            assert_eq!(&*tenant.name, "alpha");
            assert_eq!(&*app.name, "agent");
            assert_eq!(app.custom_parameters, vec![("lang".to_owned(), "en".to_owned())]);
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        snapshot.route(&e164("+15550002"), "192.0.2.1".parse().unwrap()),
        RouteDecision::ForbiddenSource { .. }
    ));
    assert!(matches!(snapshot.route(&e164("+15550002"), "10.1.1.1".parse().unwrap()), RouteDecision::Accept { .. }));
    assert!(matches!(snapshot.route(&e164("+15550009"), "10.1.1.1".parse().unwrap()), RouteDecision::UnknownNumber));

    // A key does not route; a suspension does, and a suspended tenant's numbers route to its refusal.
    h.s().create_key(&a, new_key("ci", Access::ReadWrite, None)).unwrap();
    assert_eq!(h.s().routing_version(&h.op).unwrap(), v1);
    h.s().create_trunk(&a, new_trunk("carrier", &["10.0.0.0/8"])).unwrap();
    h.s().set_tenant_status(&h.op, &slug("alpha"), TenantStatus::Suspended).unwrap();
    let table = h.s().load_routing(&h.op).unwrap();
    assert!(table.version > v1);
    let snapshot = table.to_snapshot();
    assert!(matches!(
        snapshot.route(&e164("+15550001"), "10.1.1.1".parse().unwrap()),
        RouteDecision::Suspended { tenant } if &*tenant.name == "alpha"
    ));
    assert!(
        matches!(
            snapshot.route(&e164("+15550001"), "192.0.2.1".parse().unwrap()),
            RouteDecision::ForbiddenSource { .. }
        ),
        "a source the tenant does not admit is refused as such, learning nothing of the suspension"
    );
    assert_eq!(table.tenants.iter().find(|t| t.id == slug("alpha")).unwrap().status, TenantStatus::Suspended);
}

// ---- isolation ----

/// The methods of `Store`, read from its source, and whether each takes a `TenantScope`.
fn store_trait_methods() -> Vec<(String, bool)> {
    let src = include_str!("mod.rs");
    let start = src.find("pub trait Store").expect("the trait");
    let body = &src[start..];
    let body = &body[..body.find("\n}\n").expect("the end of the trait")];
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find("    fn ") {
        let sig_end = i + rest[i..].find(';').expect("a declaration ends with ;");
        let sig = &rest[i..sig_end];
        let name = sig.trim_start().trim_start_matches("fn ").split(['(', '<']).next().unwrap().trim().to_owned();
        out.push((name, sig.contains("scope: &TenantScope")));
        rest = &rest[sig_end..];
    }
    out
}

/// Methods that take no scope: the two ways to a scope, and the operator's.
const UNSCOPED_METHODS: &[&str] = &[
    "authenticate_key",
    "operator_scope",
    "create_tenant",
    "tenant",
    "list_tenants",
    "set_tenant_plan",
    "set_tenant_status",
    "load_routing",
    "routing_version",
    "start_offboarding",
    "offboard_job",
    "unfinished_offboard_jobs",
    "offboard_step_started",
    "offboard_step_done",
    "offboard_step_failed",
];

#[test]
fn every_store_method_is_classified() {
    let methods = store_trait_methods();
    assert!(methods.len() >= 30, "parsed {methods:?}");
    for (name, scoped) in &methods {
        assert_eq!(
            !*scoped,
            UNSCOPED_METHODS.contains(&name.as_str()),
            "Store::{name}: a method without a TenantScope must be listed in UNSCOPED_METHODS (and take an \
             Operator), and one with a scope needs a case in `cross_tenant_attempt`"
        );
    }
}

/// Tenant A's world, which tenant B tries to reach.
struct Victim {
    scope: TenantScope,
    app: AppId,
    number: E164,
    released: E164,
    trunk: TrunkId,
    key: KeyPrefix,
    key_secret: String,
    calls: Vec<String>,
    /// Strings that must not appear in anything B is shown.
    identifiers: Vec<String>,
}

fn seed_victim(h: &Harness) -> (Victim, TenantScope, AppId, E164) {
    let a = h.tenant("alpha");
    let b = h.tenant("bravo");
    let app = h.s().create_app(&a, stream_app("alpha-agent", Some("Bearer alpha-secret-header-0001"))).unwrap();
    let spare = h.s().create_app(&a, stream_app("alpha-spare", None)).unwrap();
    let number = e164("+15551110001");
    let released = e164("+15551110002");
    h.s().claim_number(&a, &number, &app.id).unwrap();
    h.s().claim_number(&a, &released, &spare.id).unwrap();
    h.s().release_number(&a, &released).unwrap();
    let trunk = h.s().create_trunk(&a, new_trunk("alpha-trunk", &["203.0.113.0/24"])).unwrap();
    let key = h.s().create_key(&a, new_key("alpha-key", Access::ReadWrite, None)).unwrap();
    // Used once now, so that a later use within LAST_USED_RESOLUTION_MS changes nothing of alpha's.
    h.s().authenticate_key(key.key.expose()).unwrap();
    let old = h.s().create_key(&a, new_key("alpha-old-key", Access::ReadWrite, None)).unwrap();
    h.s().revoke_key(&a, &old.view.prefix).unwrap();
    let mut calls = Vec::new();
    for i in 0..3 {
        let sid = format!("CA-alpha-{i}");
        h.s().record_call(&a, &call_record("alpha", &sid, "alpha-agent", number.as_str(), T0 + i, Some(60))).unwrap();
        calls.push(sid);
    }
    let b_app = h.s().create_app(&b, stream_app("bravo-agent", None)).unwrap();
    let b_number = e164("+15552220001");
    h.s().claim_number(&b, &b_number, &b_app.id).unwrap();
    h.s().record_call(&b, &call_record("bravo", "CA-bravo-0", "bravo-agent", b_number.as_str(), T0, Some(5))).unwrap();

    let mut identifiers = vec![
        "alpha".to_owned(),
        app.id.to_string(),
        spare.id.to_string(),
        number.to_string(),
        released.to_string(),
        trunk.id.to_string(),
        "203.0.113.0".to_owned(),
        key.view.prefix.to_string(),
        old.view.prefix.to_string(),
        "alpha-secret-header".to_owned(),
    ];
    identifiers.extend(calls.iter().cloned());
    let victim = Victim {
        scope: a,
        app: app.id,
        number,
        released,
        trunk: trunk.id,
        key: key.view.prefix,
        key_secret: key.key.expose().to_owned(),
        calls,
        identifiers,
    };
    (victim, b, b_app.id, b_number)
}

/// Everything A can see of itself, to check that nothing B did changed it.
fn fingerprint(s: &dyn Store, a: &TenantScope) -> String {
    serde_json::to_string(&serde_json::json!({
        "tenant": s.own_tenant(a).unwrap(),
        "apps": s.list_apps(a).unwrap(),
        "numbers": s.list_numbers(a).unwrap(),
        "releases": s.list_number_releases(a).unwrap(),
        "trunks": s.list_trunks(a).unwrap(),
        "keys": s.list_keys(a).unwrap(),
        "calls": all_calls(s, a),
        "usage": all_usage(s, a),
        "audit": all_audit(s, a),
    }))
    .unwrap()
}

/// Asserts that `shown` (anything B received) mentions nothing of A.
fn assert_reveals_nothing(victim: &Victim, method: &str, shown: &impl serde::Serialize) {
    let text = serde_json::to_string(shown).unwrap();
    for id in &victim.identifiers {
        assert!(!text.contains(id.as_str()), "Store::{method} showed bravo {id:?}: {text}");
    }
}

/// NotFound, and the very same NotFound a made-up id gets.
fn assert_hidden<T: std::fmt::Debug>(method: &str, theirs: Result<T, StoreError>, made_up: Result<T, StoreError>) {
    let theirs = format!("{theirs:?}");
    assert!(theirs.starts_with("Err(NotFound("), "Store::{method} on alpha's row: {theirs}");
    assert_eq!(theirs, format!("{made_up:?}"), "Store::{method}: alpha's row is told apart from a missing one");
}

/// Bravo's attempt on alpha's rows through one scoped method. Every scoped method of `Store` has a case; a new one
/// without a case fails here.
fn cross_tenant_attempt(method: &str, h: &Harness, v: &Victim, b: &TenantScope, b_app: &AppId, b_number: &E164) {
    let s = h.s();
    let ghost_app = AppId::generate().unwrap();
    let ghost_trunk = TrunkId::generate().unwrap();
    let ghost_key = KeyPrefix::parse("fvk_zzzzzzzz").unwrap();
    let ghost_number = e164("+15553330001");
    match method {
        "own_tenant" => {
            let t = s.own_tenant(b).unwrap();
            assert_eq!(t.id, slug("bravo"));
            assert_reveals_nothing(v, method, &t);
        }
        "create_app" => {
            // Same name as alpha's: names are per tenant, and the new app is bravo's alone.
            let created = s.create_app(b, stream_app("alpha-agent", None)).unwrap();
            assert_eq!(not_found(s.app(&v.scope, &created.id)), Entity::App);
        }
        "app" => assert_hidden(method, s.app(b, &v.app), s.app(b, &ghost_app)),
        "list_apps" => assert_reveals_nothing(v, method, &s.list_apps(b).unwrap()),
        "update_app" => {
            let up = || AppUpdate { name: Some(ResourceName::parse("taken-over").unwrap()), ..Default::default() };
            assert_hidden(method, s.update_app(b, &v.app, up()), s.update_app(b, &ghost_app, up()));
        }
        "delete_app" => assert_hidden(method, s.delete_app(b, &v.app), s.delete_app(b, &ghost_app)),
        "claim_number" => {
            // The one thing the store tells about another tenant: that a number is taken (409), never by whom.
            let taken = s.claim_number(b, &v.number, b_app);
            assert!(matches!(taken, Err(StoreError::Conflict(Conflict::NumberTakenByAnotherTenant))), "{taken:?}");
            assert_hidden(
                method,
                s.claim_number(b, &ghost_number, &v.app),
                s.claim_number(b, &ghost_number, &ghost_app),
            );
        }
        "number" => assert_hidden(method, s.number(b, &v.number), s.number(b, &ghost_number)),
        "list_numbers" => assert_reveals_nothing(v, method, &s.list_numbers(b).unwrap()),
        "assign_number" => {
            assert_hidden(method, s.assign_number(b, &v.number, b_app), s.assign_number(b, &ghost_number, b_app));
            assert_hidden(method, s.assign_number(b, b_number, &v.app), s.assign_number(b, b_number, &ghost_app));
        }
        "release_number" => {
            assert_hidden(method, s.release_number(b, &v.number), s.release_number(b, &ghost_number));
            assert_hidden(method, s.release_number(b, &v.released), s.release_number(b, &ghost_number));
        }
        "list_number_releases" => assert_reveals_nothing(v, method, &s.list_number_releases(b).unwrap()),
        "create_trunk" => {
            let created = s.create_trunk(b, new_trunk("alpha-trunk", &["203.0.113.0/24"])).unwrap();
            assert_eq!(not_found(s.trunk(&v.scope, &created.id)), Entity::Trunk);
        }
        "trunk" => assert_hidden(method, s.trunk(b, &v.trunk), s.trunk(b, &ghost_trunk)),
        "list_trunks" => assert_reveals_nothing(v, method, &s.list_trunks(b).unwrap()),
        "update_trunk" => {
            let up = || TrunkUpdate { allowed_sources: Some(SourceCidrs::default()), ..Default::default() };
            assert_hidden(method, s.update_trunk(b, &v.trunk, up()), s.update_trunk(b, &ghost_trunk, up()));
        }
        "delete_trunk" => assert_hidden(method, s.delete_trunk(b, &v.trunk), s.delete_trunk(b, &ghost_trunk)),
        "create_key" => {
            let created = s.create_key(b, new_key("alpha-key", Access::ReadWrite, None)).unwrap();
            assert_eq!(s.authenticate_key(created.key.expose()).unwrap().tenant(), &slug("bravo"));
            assert_eq!(not_found(s.key(&v.scope, &created.view.prefix)), Entity::Key);
        }
        "key" => assert_hidden(method, s.key(b, &v.key), s.key(b, &ghost_key)),
        "list_keys" => assert_reveals_nothing(v, method, &s.list_keys(b).unwrap()),
        "revoke_key" => {
            assert_hidden(method, s.revoke_key(b, &v.key), s.revoke_key(b, &ghost_key));
            assert_eq!(s.authenticate_key(&v.key_secret).unwrap().tenant(), &slug("alpha"));
        }
        "record_call" => {
            // A record naming alpha cannot be written with bravo's scope...
            let as_alpha = call_record("alpha", "CA-new", "alpha-agent", v.number.as_str(), T0, Some(9));
            assert!(matches!(s.record_call(b, &as_alpha), Err(StoreError::Invalid(_))));
            // ...and bravo reusing one of alpha's call ids writes into bravo's own space, revealing nothing.
            let clash = call_record("bravo", &v.calls[0], "bravo-agent", b_number.as_str(), T0, Some(9));
            assert_eq!(s.record_call(b, &clash).unwrap().billable_secs, 9);
            assert_eq!(s.call(&v.scope, &v.calls[0]).unwrap().billable_secs, 60);
        }
        "call" => assert_hidden(method, s.call(b, &v.calls[1]), s.call(b, "CA-nobody")),
        "list_calls" => {
            let windowed = CallQuery { from_ms: Some(T0 - 1), to_ms: Some(T0 + 10), page: PageRequest::default() };
            for q in [CallQuery::default(), windowed] {
                let page = s.list_calls(b, q).unwrap();
                assert_eq!(page.items.len(), 1);
                assert_reveals_nothing(v, method, &page);
            }
            // Even with a cursor made from alpha's listing.
            let alpha_page =
                s.list_calls(&v.scope, CallQuery { page: PageRequest::new(1, None).unwrap(), ..Default::default() });
            let cursor = alpha_page.unwrap().next.expect("alpha has more than one call");
            let page =
                s.list_calls(b, CallQuery { page: PageRequest::new(10, Some(cursor)).unwrap(), ..Default::default() });
            assert_reveals_nothing(v, method, &page.unwrap());
        }
        "usage" => {
            let usage = all_usage(s, b);
            assert_eq!(usage.iter().map(|u| u.billable_secs).sum::<i64>(), 5);
            assert_reveals_nothing(v, method, &usage);
        }
        "list_audit" => {
            let audit = all_audit(s, b);
            assert!(!audit.is_empty());
            assert_reveals_nothing(v, method, &audit);
            let alpha_page =
                s.list_audit(&v.scope, AuditQuery { page: PageRequest::new(1, None).unwrap(), ..Default::default() });
            let cursor = alpha_page.unwrap().next.expect("alpha has more than one entry");
            let page = s
                .list_audit(b, AuditQuery { page: PageRequest::new(100, Some(cursor)).unwrap(), ..Default::default() });
            assert_reveals_nothing(v, method, &page.unwrap());
        }
        other => {
            panic!("Store::{other} takes a TenantScope but has no cross-tenant case: add one to `cross_tenant_attempt`")
        }
    }
}

#[test]
fn another_tenants_scope_reaches_nothing_through_any_method() {
    let scoped: Vec<String> = store_trait_methods().into_iter().filter(|(_, s)| *s).map(|(n, _)| n).collect();
    assert!(scoped.len() >= 25, "{scoped:?}");
    for method in &scoped {
        // A fresh world per method, so that no case leans on another's leftovers.
        let h = Harness::new();
        let (victim, b, b_app, b_number) = seed_victim(&h);
        let before = fingerprint(h.s(), &victim.scope);
        cross_tenant_attempt(method, &h, &victim, &b, &b_app, &b_number);
        let after = fingerprint(h.s(), &victim.scope);
        assert_eq!(before, after, "Store::{method} called with bravo's scope changed alpha's rows");
    }
}

#[test]
fn a_key_only_ever_grants_its_own_tenant() {
    let h = Harness::new();
    let (victim, b, _, _) = seed_victim(&h);
    let b_key = h.s().create_key(&b, new_key("bravo", Access::ReadWrite, None)).unwrap();
    let scope = h.s().authenticate_key(b_key.key.expose()).unwrap();
    assert_eq!(scope.tenant(), &slug("bravo"));
    assert_eq!(not_found(h.s().app(&scope, &victim.app)), Entity::App);
    // Bravo's prefix with alpha's secret, and the reverse, are unknown keys.
    let a_secret = &victim.key_secret[13..];
    let b_secret = &b_key.key.expose()[13..];
    let mixed = format!("{}_{a_secret}", b_key.view.prefix);
    assert!(matches!(h.s().authenticate_key(&mixed), Err(AuthError::Unknown)));
    let mixed = format!("{}_{b_secret}", victim.key);
    assert!(matches!(h.s().authenticate_key(&mixed), Err(AuthError::Unknown)));
}

// ---- offboarding ----

/// A tenant with a bit of everything: apps, held and released numbers, a trunk, keys, calls, usage, audit.
fn seed_full(h: &Harness, id: &str, numbers: [&str; 2]) -> (TenantScope, ApiKeySecret) {
    let scope = h.tenant(id);
    let header = format!("Bearer {id}-agent-secret-0123456789");
    let app = h.s().create_app(&scope, stream_app("agent", Some(&header))).unwrap();
    for n in numbers {
        h.s().claim_number(&scope, &e164(n), &app.id).unwrap();
    }
    h.s().release_number(&scope, &e164(numbers[1])).unwrap();
    h.s().create_trunk(&scope, new_trunk("carrier", &["192.0.2.0/24"])).unwrap();
    let key = h.s().create_key(&scope, new_key("ci", Access::ReadWrite, None)).unwrap();
    for (i, secs) in [(1, 61), (2, 7)] {
        let rec = call_record(id, &format!("CA{id}{i}"), "agent", numbers[0], T0 + i * 60_000, Some(secs));
        h.s().record_call(&scope, &rec).unwrap();
    }
    (scope, key.key)
}

/// Every row of every table (from `sqlite_master`, not a list) as text, table by table.
fn every_row(h: &Harness) -> BTreeMap<String, Vec<String>> {
    let raw = h.raw();
    let tables: Vec<String> = raw
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut out = BTreeMap::new();
    for t in tables {
        let mut stmt = raw.prepare(&format!("SELECT * FROM \"{t}\"")).unwrap();
        let n = stmt.column_count();
        let rows: Vec<String> = stmt
            .query_map([], |r| {
                let cells: Vec<String> = (0..n)
                    .map(|i| match r.get_ref(i).unwrap() {
                        rusqlite::types::ValueRef::Text(b) | rusqlite::types::ValueRef::Blob(b) => {
                            String::from_utf8_lossy(b).into_owned()
                        }
                        rusqlite::types::ValueRef::Integer(v) => v.to_string(),
                        rusqlite::types::ValueRef::Real(v) => v.to_string(),
                        rusqlite::types::ValueRef::Null => "NULL".to_owned(),
                    })
                    .collect();
                Ok(cells.join("|"))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        out.insert(t, rows);
    }
    out
}

/// Runs `step` of alpha's job to its end with an empty result.
fn finish_step(h: &Harness, step: OffboardStep) -> OffboardJob {
    h.s().offboard_step_started(&h.op, &slug("alpha"), step, None).unwrap();
    h.s()
        .offboard_step_done(&h.op, &slug("alpha"), step, StepDone { detail: json_obj(step), ..StepDone::default() })
        .unwrap()
}

fn json_obj(step: OffboardStep) -> serde_json::Value {
    serde_json::json!({ "ran": step.as_str() })
}

#[test]
fn offboarding_starts_once_and_is_the_same_job_when_started_again() {
    let h = Harness::new();
    seed_full(&h, "alpha", ["+15551110001", "+15551110002"]);
    let operator = Operator { actor: Actor::Operator };
    let (job, created) = h.s().start_offboarding(&operator, &slug("alpha"), 5).unwrap();
    assert!(created);
    assert_eq!((job.step, job.grace_secs, job.started_by.as_str()), (OffboardStep::Suspend, 5, "operator"));
    assert_eq!(job.steps.iter().map(|s| s.name).collect::<Vec<_>>(), OffboardStep::STEPS.to_vec());
    h.clock.advance_ms(1000);
    let (again, created) = h.s().start_offboarding(&operator, &slug("alpha"), 99).unwrap();
    assert!(!created, "a second start is the same job");
    assert_eq!(again, job, "unchanged, grace included");
    let n: i64 = h.raw().query_row("SELECT count(*) FROM offboard_jobs", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 1);
    assert_eq!(not_found(h.s().offboard_job(&h.op, &slug("bravo"))), Entity::OffboardJob);
    assert_eq!(not_found(h.s().start_offboarding(&operator, &slug("bravo"), 5)), Entity::Tenant);
    let audit = all_audit(h.s(), &h.s().operator_scope(&h.op, &slug("alpha")).unwrap());
    assert!(audit.iter().any(|e| e.action == "offboard.start" && e.actor == "operator"), "{audit:?}");
}

#[test]
fn suspend_step_closes_the_tenant_to_keys_and_routing_and_to_writes_by_others() {
    let h = Harness::new();
    let (_, key) = seed_full(&h, "alpha", ["+15551110001", "+15551110002"]);
    h.s().start_offboarding(&h.op, &slug("alpha"), 5).unwrap();
    let version = h.s().routing_version(&h.op).unwrap();
    let job = finish_step(&h, OffboardStep::Suspend);
    assert_eq!(job.step, OffboardStep::DrainCalls);
    assert_eq!(job.steps[0].detail["status_before"], "active");
    assert_eq!(h.s().tenant(&h.op, &slug("alpha")).unwrap().status, TenantStatus::Offboarding);
    assert!(h.s().routing_version(&h.op).unwrap() > version, "the routing refresh sees it");
    assert!(matches!(h.s().authenticate_key(key.expose()), Err(AuthError::TenantClosed)));
    // The operator may read but no longer change the tenant's rows; the job's own component may.
    let operator = Operator { actor: Actor::Operator };
    let scope = h.s().operator_scope(&operator, &slug("alpha")).unwrap();
    assert_eq!(h.s().list_apps(&scope).unwrap().len(), 1);
    assert!(matches!(
        h.s().create_trunk(&scope, new_trunk("late", &[])),
        Err(StoreError::Conflict(Conflict::TenantOffboarding))
    ));
    let system = h.s().operator_scope(&Operator::system("call-records"), &slug("alpha")).unwrap();
    let late = call_record("alpha", "CAlate", "agent", "+15551110001", T0 + 600_000, Some(3));
    h.s().record_call(&system, &late).expect("a drained call's record is still written");
    // A step out of order is refused, and the same step twice too.
    assert!(matches!(
        h.s().offboard_step_done(&h.op, &slug("alpha"), OffboardStep::Export, StepDone::default()),
        Err(StoreError::Conflict(Conflict::OffboardStep))
    ));
    assert!(matches!(
        h.s().offboard_step_done(&h.op, &slug("alpha"), OffboardStep::Suspend, StepDone::default()),
        Err(StoreError::Conflict(Conflict::OffboardStep))
    ));
}

#[test]
fn the_drain_deadline_and_byes_are_set_once() {
    let h = Harness::new();
    seed_full(&h, "alpha", ["+15551110001", "+15551110002"]);
    h.s().start_offboarding(&h.op, &slug("alpha"), 5).unwrap();
    finish_step(&h, OffboardStep::Suspend);
    let byes = serde_json::json!([{ "call": 1 }]);
    let job = h
        .s()
        .offboard_step_started(&h.op, &slug("alpha"), OffboardStep::DrainCalls, Some((T0 + 5_000, byes.clone())))
        .unwrap();
    assert_eq!((job.drain_deadline_ms, job.pending_byes.clone()), (Some(T0 + 5_000), Some(byes.clone())));
    let started = job.step_record(OffboardStep::DrainCalls).unwrap().started_at_ms;
    // A restart starts the step again: the deadline, the BYEs and the start time stay those of the first start.
    h.clock.advance_ms(3_000);
    let again = h.reopen().unwrap();
    let job = again
        .offboard_step_started(
            &h.op,
            &slug("alpha"),
            OffboardStep::DrainCalls,
            Some((T0 + 8_000, serde_json::json!([]))),
        )
        .unwrap();
    assert_eq!((job.drain_deadline_ms, job.pending_byes.clone()), (Some(T0 + 5_000), Some(byes)));
    assert_eq!(job.step_record(OffboardStep::DrainCalls).unwrap().started_at_ms, started);
    let job = again.offboard_step_done(&h.op, &slug("alpha"), OffboardStep::DrainCalls, StepDone::default()).unwrap();
    assert_eq!(job.pending_byes, None, "the BYEs go once the drain is over");
}

#[test]
fn a_failed_try_is_recorded_until_the_step_succeeds() {
    let h = Harness::new();
    seed_full(&h, "alpha", ["+15551110001", "+15551110002"]);
    h.s().start_offboarding(&h.op, &slug("alpha"), 5).unwrap();
    for _ in 0..2 {
        h.s().offboard_step_failed(&h.op, &slug("alpha"), OffboardStep::Suspend, "disk full").unwrap();
    }
    let job = h.s().offboard_job(&h.op, &slug("alpha")).unwrap();
    let err = job.last_error.unwrap();
    assert_eq!((err.step, err.message.as_str(), err.attempts), (OffboardStep::Suspend, "disk full", 2));
    let job = finish_step(&h, OffboardStep::Suspend);
    assert_eq!(job.last_error, None);
}

/// The whole job at the store's level, reopening the file between every two steps (what a restart does): each
/// step resumes where the previous left it; at the end no row of alpha remains in any table but its job, bravo's
/// rows are untouched, alpha's numbers can be claimed by bravo and its id is never reused.
#[test]
fn deletion_leaves_no_row_of_the_tenant_in_any_table_and_the_job_resumes_after_each_step() {
    let mut h = Harness::new();
    let (_, alpha_key) = seed_full(&h, "alpha", ["+15551110001", "+15551110002"]);
    let (bravo, _) = seed_full(&h, "bravo", ["+15552220001", "+15552220002"]);
    let bravo_before: BTreeMap<String, Vec<String>> = every_row(&h)
        .into_iter()
        .map(|(t, rows)| (t, rows.into_iter().filter(|r| r.contains("bravo") || r.contains("+1555222")).collect()))
        .collect();
    h.s().start_offboarding(&h.op, &slug("alpha"), 0).unwrap();
    let alpha = slug("alpha");
    for step in OffboardStep::STEPS {
        // A restart before the step: the job says where it is.
        h.store = h.reopen().unwrap();
        let unfinished = h.s().unfinished_offboard_jobs(&h.op).unwrap();
        assert_eq!(unfinished.iter().map(|j| (j.tenant.as_str(), j.step)).collect::<Vec<_>>(), vec![("alpha", step)]);
        h.s().offboard_step_started(&h.op, &alpha, step, None).unwrap();
        // A restart in the middle of it: starting it again changes nothing.
        h.store = h.reopen().unwrap();
        h.s().offboard_step_started(&h.op, &alpha, step, None).unwrap();
        let mut done = StepDone { detail: json_obj(step), ..StepDone::default() };
        match step {
            OffboardStep::Export => {
                done.export = Some(ExportInfo {
                    file_name: "alpha.tar.gz".into(),
                    bytes: 10,
                    sha256: "ab".repeat(32),
                    created_at_ms: T0,
                })
            }
            OffboardStep::FinalInvoice => done.final_invoice = Some(serde_json::json!({ "billable_secs": 68 })),
            OffboardStep::ReleaseNumbers => {
                let scope = h.s().operator_scope(&Operator::system("offboard"), &alpha).unwrap();
                for n in h.s().list_numbers(&scope).unwrap() {
                    h.s().release_number(&scope, &e164(&n.number)).unwrap();
                }
            }
            OffboardStep::RevokeKeys => {
                let scope = h.s().operator_scope(&Operator::system("offboard"), &alpha).unwrap();
                for k in h.s().list_keys(&scope).unwrap() {
                    h.s().revoke_key(&scope, &k.prefix).unwrap();
                }
            }
            OffboardStep::Certificate => done.certificate = Some(serde_json::json!({ "tenant": "alpha" })),
            _ => {}
        }
        let job = h.s().offboard_step_done(&h.op, &alpha, step, done).unwrap();
        assert_eq!(job.step, step.next());
        if step == OffboardStep::DeleteRows {
            let counts = &job.step_record(step).unwrap().detail["rows_deleted"];
            assert_eq!(counts["tenants"], 1);
            assert_eq!(counts["apps"], 1);
            assert_eq!(counts["calls"], 2);
            assert_eq!(counts["usage_daily"], 1);
            assert_eq!(counts["number_releases"], 2, "the seed's release and the job's");
            assert_eq!(counts["numbers"], 0, "released the step before");
            assert_eq!(counts["api_keys"], 1);
            assert_eq!(counts["trunks"], 1);
            assert!(counts["audit_log"].as_u64().unwrap() >= 10, "{counts}");
            let total: u64 = counts.as_object().unwrap().values().map(|v| v.as_u64().unwrap()).sum();
            assert_eq!(job.step_record(step).unwrap().detail["rows_deleted_total"], total);
        }
    }
    let job = h.s().offboard_job(&h.op, &alpha).unwrap();
    assert!(job.finished() && job.finished_at_ms.is_some());
    assert!(job.steps.iter().all(|s| s.started_at_ms.is_some() && s.finished_at_ms.is_some()), "{:?}", job.steps);
    assert!(h.s().unfinished_offboard_jobs(&h.op).unwrap().is_empty());
    assert_eq!(job.export.as_ref().unwrap().sha256, "ab".repeat(32));
    assert_eq!(job.final_invoice.as_ref().unwrap()["billable_secs"], 68);

    // No row of alpha anywhere but its job; every table is looked at, whatever its name.
    let rows = every_row(&h);
    assert!(rows.len() >= 10, "{:?}", rows.keys());
    for (table, rows) in &rows {
        if table == "offboard_jobs" {
            assert_eq!(rows.len(), 1);
            continue;
        }
        for row in rows {
            for mark in ["alpha", "+1555111", &alpha_key.expose()[..12]] {
                assert!(!row.contains(mark), "{table} still holds {mark:?}: {row}");
            }
        }
    }
    // Nor in the bytes of the file and its WAL: deleted content is overwritten and the WAL folded in.
    for file in [h.db_path(), h.db_path().with_extension("db-wal")] {
        let bytes = std::fs::read(&file).unwrap_or_default();
        for secret in ["alpha-agent-secret", "CAalpha"] {
            let found = bytes.windows(secret.len()).any(|w| w == secret.as_bytes());
            assert!(!found, "{} still holds {secret:?}", file.display());
        }
    }
    // Bravo's rows are exactly as they were (plus nothing).
    for (table, before) in &bravo_before {
        let now: Vec<String> =
            rows[table].iter().filter(|r| r.contains("bravo") || r.contains("+1555222")).cloned().collect();
        assert_eq!(&now, before, "{table}");
    }
    // Gone for the operator too, its numbers free, its keys dead, its id kept.
    assert_eq!(not_found(h.s().tenant(&h.op, &alpha)), Entity::Tenant);
    assert_eq!(not_found(h.s().operator_scope(&h.op, &alpha)), Entity::Tenant);
    let b_app = h.s().list_apps(&bravo).unwrap().remove(0);
    h.s().claim_number(&bravo, &e164("+15551110001"), &b_app.id).expect("alpha's number is free");
    assert!(matches!(h.s().authenticate_key(alpha_key.expose()), Err(AuthError::Unknown)));
    let new = NewTenant { id: alpha.clone(), name: DisplayName::parse("New").unwrap(), plan: plan("pro") };
    assert!(matches!(h.s().create_tenant(&h.op, new), Err(StoreError::Conflict(Conflict::TenantExists))));
    let routing = h.s().load_routing(&h.op).unwrap();
    assert!(routing.tenants.iter().all(|t| t.id != alpha));
    // Steps after the end are refused.
    assert!(matches!(
        h.s().offboard_step_done(&h.op, &alpha, OffboardStep::Done, StepDone::default()),
        Err(StoreError::Conflict(Conflict::OffboardStep))
    ));
}

#[test]
fn the_tables_deleted_from_are_read_from_the_schema() {
    let h = Harness::new();
    let mut conn = h.raw();
    let tx = conn.transaction().unwrap();
    let tables: Vec<String> = sqlite::tenant_tables(&tx).unwrap().into_iter().map(|(t, _)| t).collect();
    let all: Vec<String> = tx
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    // Every table is either deleted from or one of the two that hold no tenant rows of their own.
    for t in &all {
        assert!(tables.contains(t) || t == "offboard_jobs" || t == "routing_version", "table {t} is not covered");
    }
    assert!(tables.contains(&"tenants".to_owned()) && tables.contains(&"calls".to_owned()));
}
