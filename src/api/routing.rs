//! Keeps the SIP path's routing snapshot equal to the store: a thread polls `Store::routing_version` every
//! [`POLL_INTERVAL`] (and at once when the API nudges it after a write), and when the version moved it loads the
//! routing table, configures admission, media workers, breakers and the tenant's latency budget metric for tenants
//! that are new or changed plan, then
//! swaps the snapshot. A change is live for new calls within a poll interval; no query runs on the INVITE path.
//!
//! # Stable ids
//!
//! Admission, the media workers and the breakers are indexed by [`TenantId`] and the app's position, and calls in
//! flight hold both. So [`TenantIds`] hands out ids once and never moves them: config tenants get `0..n` in config
//! order (the ids `server::call_guards` and `server::media_workers` configured), store tenants the next ids as they
//! appear. Apps keep their position within their tenant for the life of the process; a deleted app's position
//! keeps a placeholder no number routes to. A tenant that stops taking calls (suspended, offboarding) keeps its id,
//! name and numbers, flagged `suspended` (its calls are refused with 403); one whose rows are deleted keeps its id
//! and name (for its calls in flight) and has no numbers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use crate::metrics::Metrics;
use crate::proto::media_streams::MediaFormat;
use crate::sched::admission::Admission;
use crate::sched::breaker::Breakers;
use crate::sched::plan::PlanSet;
use crate::store::{AppId, Clock, Operator, RoutingTable, Store, StoreError, TenantSlug, UsageQuery, UtcDay};
use crate::tenant::{App, AppKind, Route, Snapshot, Tenant, TenantId};
use crate::transport::ingress::MediaWorkers;

/// How often the refresh asks the store for its routing version.
pub const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// What gets configured per tenant before the snapshot routes to it.
pub struct Targets {
    pub admission: Arc<Admission>,
    pub breakers: Arc<Breakers>,
    pub workers: Arc<MediaWorkers>,
    /// Its latency budget series (what its p99 alert compares with) and its label.
    pub metrics: Arc<Metrics>,
}

/// Rebuilds the snapshot from the store when its routing version moves.
pub struct RoutingSync {
    store: Arc<dyn Store>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    targets: Targets,
    plans: PlanSet,
    ids: TenantIds,
    operator: Operator,
    version: Option<u64>,
    /// The month admission's budgets were last set from the store for (`None`: not yet).
    budget_month: Option<UtcDay>,
}

impl RoutingSync {
    /// `config_tenants`: the config's tenant ids in order, whose `TenantId`s are their positions.
    pub fn new<'a>(
        store: Arc<dyn Store>,
        snapshot: Arc<ArcSwap<Snapshot>>,
        targets: Targets,
        plans: PlanSet,
        config_tenants: impl IntoIterator<Item = &'a str>,
    ) -> RoutingSync {
        RoutingSync {
            store,
            snapshot,
            targets,
            plans,
            ids: TenantIds::new(config_tenants),
            operator: Operator::system("routing"),
            version: None,
            budget_month: None,
        }
    }

    /// Rebuilds and swaps the snapshot if the store's routing version moved; whether it did.
    pub fn refresh(&mut self) -> Result<bool, StoreError> {
        let version = self.store.routing_version(&self.operator)?;
        if self.version == Some(version) {
            return Ok(false);
        }
        let table = self.store.load_routing(&self.operator)?;
        let built = self.ids.build(&table);
        for change in &built.plan_changes {
            self.configure(change);
        }
        for (id, apps) in &built.app_counts {
            self.targets.breakers.ensure(*id, *apps);
        }
        self.snapshot.store(Arc::new(built.snapshot));
        tracing::info!(version = table.version, tenants = table.tenants.len(), "routing snapshot refreshed");
        self.version = Some(table.version);
        Ok(true)
    }

    /// Sets every tenant's monthly seconds in admission to its usage in the store for the month of `today`, the
    /// first time and whenever the month changed since (UTC calendar months, as `docs/billing.md` bills). So a
    /// restart does not hand a tenant a fresh budget, and the budget rolls over with the month. Whether it ran.
    pub fn sync_budgets(&mut self, today: UtcDay) -> Result<bool, StoreError> {
        let month = today.month_start();
        if self.budget_month == Some(month) {
            return Ok(false);
        }
        let query = UsageQuery { from: month, to: month.next_month_start() };
        for (id, name) in self.ids.named() {
            let Ok(slug) = TenantSlug::parse(name) else { continue };
            let scope = match self.store.operator_scope(&self.operator, &slug) {
                Ok(scope) => scope,
                Err(StoreError::NotFound(_)) => continue,
                Err(e) => return Err(e),
            };
            let used: i64 = self.store.usage(&scope, query.clone())?.iter().map(|u| u.billable_secs).sum();
            self.targets.admission.set_used_seconds(id, u64::try_from(used).unwrap_or(0));
        }
        tracing::info!(month = %month.month(), "monthly budgets set from the store's usage");
        self.budget_month = Some(month);
        Ok(true)
    }

    fn configure(&mut self, change: &PlanChange) {
        let Some(plan) = self.plans.get(&change.plan) else {
            tracing::error!(
                tenant = %change.name, plan = %change.plan,
                "the tenant's plan is not in the config's plans: its admission keeps its previous plan, if any"
            );
            return;
        };
        let admission = self.targets.admission.set_tenant(change.id, plan);
        let workers = self.targets.workers.configure_tenant(change.id, plan);
        let budget = Duration::from_millis(u64::from(plan.max_frame_queue_ms()));
        self.targets.metrics.tenant(change.id, &change.name).set_latency_budget(budget);
        match (admission, workers) {
            (Ok(()), Ok(())) => {
                self.ids.configured(change.id, &change.plan);
                tracing::info!(tenant = %change.name, plan = %change.plan, id = change.id.0, "tenant configured");
            }
            (a, w) => tracing::error!(
                tenant = %change.name, plan = %change.plan,
                admission = ?a.err().map(|e| e.to_string()), workers = ?w.err().map(|e| e.to_string()),
                "cannot configure the tenant's plan"
            ),
        }
    }
}

/// Wakes the refresh thread (cheap, never blocks; nudges coalesce).
#[derive(Clone, Debug)]
pub struct Nudge(Sender<()>);

impl Nudge {
    pub fn nudge(&self) {
        let _ = self.0.try_send(());
    }

    /// A nudge nobody listens to (for an API without a media core, as in tests).
    pub fn detached() -> Nudge {
        Nudge(crossbeam_channel::bounded(1).0)
    }
}

/// The thread that runs [`RoutingSync::refresh`] every [`POLL_INTERVAL`] or when nudged.
pub struct RefreshThread {
    nudge: Sender<()>,
    stop: Arc<AtomicBool>,
}

impl RefreshThread {
    pub fn start(mut sync: RoutingSync) -> std::io::Result<RefreshThread> {
        let (tx, rx): (Sender<()>, Receiver<()>) = crossbeam_channel::bounded(1);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        std::thread::Builder::new().name("fairvox-routing".into()).spawn(move || {
            let mut failing = false;
            while !stopped.load(Ordering::Acquire) {
                match rx.recv_timeout(POLL_INTERVAL) {
                    Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                if stopped.load(Ordering::Acquire) {
                    return;
                }
                let today = UtcDay::from_unix_ms(crate::store::SystemClock.now_ms());
                match sync.refresh().and_then(|_| sync.sync_budgets(today)) {
                    Ok(_) if failing => {
                        failing = false;
                        tracing::info!("routing refresh works again");
                    }
                    Ok(_) => {}
                    // Logged once per failure streak: the previous snapshot stays in use meanwhile.
                    Err(e) if !failing => {
                        failing = true;
                        tracing::error!(error = %e, "routing refresh failed; the previous snapshot stays in use");
                    }
                    Err(_) => {}
                }
            }
        })?;
        Ok(RefreshThread { nudge: tx, stop })
    }

    pub fn nudge(&self) -> Nudge {
        Nudge(self.nudge.clone())
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.nudge.try_send(());
    }
}

impl Drop for RefreshThread {
    fn drop(&mut self) {
        self.stop();
    }
}

// ---- stable ids and the snapshot ----

/// A tenant whose plan must be (re)applied to admission and the media workers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanChange {
    pub id: TenantId,
    pub name: Arc<str>,
    pub plan: String,
}

/// What [`TenantIds::build`] made of a routing table.
pub struct Built {
    pub snapshot: Snapshot,
    /// Tenants that are new or changed plan since the last build (in id order).
    pub plan_changes: Vec<PlanChange>,
    /// Every tenant's number of app positions, for the breakers.
    pub app_counts: Vec<(TenantId, usize)>,
}

struct Slot {
    name: Arc<str>,
    plan: Arc<str>,
    /// App positions: the id each position was first given to.
    apps: Vec<AppId>,
    /// The plan admission and the workers were last configured with (by this process's control plane).
    configured: Option<String>,
}

/// Interns tenants and app positions: ids are handed out once and never reused or moved.
pub struct TenantIds {
    slots: Vec<Slot>,
    by_name: HashMap<String, usize>,
}

impl TenantIds {
    pub fn new<'a>(config_tenants: impl IntoIterator<Item = &'a str>) -> TenantIds {
        let mut ids = TenantIds { slots: Vec::new(), by_name: HashMap::new() };
        for name in config_tenants {
            ids.intern(name, "");
        }
        ids
    }

    fn intern(&mut self, name: &str, plan: &str) -> usize {
        if let Some(&i) = self.by_name.get(name) {
            return i;
        }
        let i = self.slots.len();
        self.slots.push(Slot { name: Arc::from(name), plan: Arc::from(plan), apps: Vec::new(), configured: None });
        self.by_name.insert(name.to_owned(), i);
        i
    }

    /// Every tenant that has an id, with its name.
    pub fn named(&self) -> impl Iterator<Item = (TenantId, &str)> {
        self.slots.iter().enumerate().map(|(i, slot)| (TenantId(i as u32), &*slot.name))
    }

    /// The id of a tenant, if it has one.
    pub fn id(&self, name: &str) -> Option<TenantId> {
        self.by_name.get(name).map(|&i| TenantId(i as u32))
    }

    fn configured(&mut self, id: TenantId, plan: &str) {
        if let Some(slot) = self.slots.get_mut(id.0 as usize) {
            slot.configured = Some(plan.to_owned());
        }
    }

    /// The snapshot of `table`: one [`Tenant`] per id ever handed out (index = id), numbers only for tenants that
    /// take calls, apps at their stable positions.
    pub fn build(&mut self, table: &RoutingTable) -> Built {
        let mut apps_now: Vec<Option<Vec<App>>> = Vec::new();
        let mut trunks_now = Vec::new();
        let mut numbers = HashMap::new();
        let mut plan_changes = Vec::new();
        let mut suspended_now = HashMap::new();
        for rt in &table.tenants {
            let i = self.intern(rt.id.as_str(), &rt.plan);
            let slot = &mut self.slots[i];
            slot.plan = Arc::from(rt.plan.as_str());
            for app_id in &rt.app_ids {
                if !slot.apps.contains(app_id) {
                    slot.apps.push(app_id.clone());
                }
            }
            if slot.configured.as_deref() != Some(rt.plan.as_str()) {
                plan_changes.push(PlanChange {
                    id: TenantId(i as u32),
                    name: slot.name.clone(),
                    plan: rt.plan.clone(),
                });
            }
            let positions: Vec<usize> =
                rt.app_ids.iter().map(|a| slot.apps.iter().position(|s| s == a).unwrap_or(usize::MAX)).collect();
            let mut apps: Vec<App> = slot.apps.iter().map(|_| placeholder_app()).collect();
            for (j, app) in rt.apps.iter().enumerate() {
                if let Some(p) = positions.get(j).and_then(|&p| apps.get_mut(p)) {
                    *p = app.clone();
                }
            }
            // A suspended or offboarding tenant keeps its numbers, flagged, so that its calls are refused as such.
            for (number, app_index) in &rt.numbers {
                if let Some(&position) = positions.get(*app_index) {
                    numbers.insert(number.clone(), Route { tenant: TenantId(i as u32), app: position });
                }
            }
            suspended_now.insert(i, !rt.status.takes_calls());
            if apps_now.len() <= i {
                apps_now.resize_with(i + 1, || None);
                trunks_now.resize_with(i + 1, Vec::new);
            }
            apps_now[i] = Some(apps);
            trunks_now[i] = rt.trunks.clone();
        }
        let mut tenants = Vec::with_capacity(self.slots.len());
        let mut app_counts = Vec::with_capacity(self.slots.len());
        for (i, slot) in self.slots.iter().enumerate() {
            let apps = apps_now
                .get_mut(i)
                .and_then(Option::take)
                .unwrap_or_else(|| slot.apps.iter().map(|_| placeholder_app()).collect());
            app_counts.push((TenantId(i as u32), apps.len()));
            tenants.push(Tenant {
                id: TenantId(i as u32),
                name: slot.name.clone(),
                apps,
                trunks: trunks_now.get_mut(i).map(std::mem::take).unwrap_or_default(),
                plan: slot.plan.clone(),
                // A tenant gone from the table (its rows deleted) has no numbers and takes no calls.
                suspended: suspended_now.get(&i).copied().unwrap_or(true),
            });
        }
        plan_changes.sort_by_key(|c| c.id);
        Built { snapshot: Snapshot::new(tenants, numbers), plan_changes, app_counts }
    }
}

/// What stands at the position of a deleted app: no number routes to it.
fn placeholder_app() -> App {
    App {
        name: Arc::from(""),
        kind: AppKind::Echo,
        codecs: Vec::new(),
        custom_parameters: Vec::new(),
        media_format: MediaFormat::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{RoutingTenant, TenantSlug, TenantStatus};
    use crate::tenant::{E164, RouteDecision};

    fn app(name: &str) -> App {
        App {
            name: Arc::from(name),
            kind: AppKind::Echo,
            codecs: vec![],
            custom_parameters: vec![],
            media_format: MediaFormat::default(),
        }
    }

    fn id(n: u8) -> AppId {
        AppId::parse(&format!("app_{}", std::iter::repeat_n((b'a' + n) as char, 16).collect::<String>())).unwrap()
    }

    fn tenant(name: &str, status: TenantStatus, apps: &[(u8, &str)], numbers: &[(&str, usize)]) -> RoutingTenant {
        RoutingTenant {
            id: TenantSlug::parse(name).unwrap(),
            plan: "pro".into(),
            status,
            app_ids: apps.iter().map(|(i, _)| id(*i)).collect(),
            apps: apps.iter().map(|(_, n)| app(n)).collect(),
            trunks: vec![],
            numbers: numbers.iter().map(|(n, a)| (E164::parse(n).unwrap(), *a)).collect(),
        }
    }

    fn routed(s: &Snapshot, number: &str) -> Option<(String, String)> {
        match s.route(&E164::parse(number).unwrap(), "127.0.0.1".parse().unwrap()) {
            RouteDecision::Accept { tenant, app, .. } => Some((tenant.name.to_string(), app.name.to_string())),
            _ => None,
        }
    }

    #[test]
    fn ids_are_stable_across_inserts_suspensions_and_app_changes() {
        let mut ids = TenantIds::new(["demo"]);
        let t1 = RoutingTable {
            version: 1,
            tenants: vec![
                tenant("demo", TenantStatus::Active, &[(0, "echo")], &[("+15550100", 0)]),
                tenant("zeta", TenantStatus::Active, &[(1, "b"), (2, "c")], &[("+15550200", 1)]),
            ],
        };
        let b1 = ids.build(&t1);
        assert_eq!(ids.id("demo"), Some(TenantId(0)), "config tenants keep their config position");
        assert_eq!(ids.id("zeta"), Some(TenantId(1)));
        assert_eq!(routed(&b1.snapshot, "+15550200"), Some(("zeta".into(), "c".into())));
        assert_eq!(b1.plan_changes.iter().map(|c| c.id).collect::<Vec<_>>(), vec![TenantId(0), TenantId(1)]);
        ids.configured(TenantId(0), "pro");
        ids.configured(TenantId(1), "pro");

        // "alpha" sorts first in the store's table, zeta's app "a" sorts before "b", app "b" is deleted, and
        // demo is suspended: no id or position moves.
        let t2 = RoutingTable {
            version: 2,
            tenants: vec![
                tenant("alpha", TenantStatus::Active, &[(3, "x")], &[("+15550300", 0)]),
                tenant("demo", TenantStatus::Suspended, &[(0, "echo")], &[("+15550100", 0)]),
                tenant("zeta", TenantStatus::Active, &[(4, "a"), (2, "c")], &[("+15550200", 1), ("+15550201", 0)]),
            ],
        };
        let b2 = ids.build(&t2);
        assert_eq!(ids.id("alpha"), Some(TenantId(2)));
        assert_eq!(ids.id("zeta"), Some(TenantId(1)));
        let zeta = b2.snapshot.tenant(TenantId(1)).unwrap();
        let names: Vec<&str> = zeta.apps.iter().map(|a| &*a.name).collect();
        assert_eq!(names, vec!["", "c", "a"], "c keeps position 1, the deleted b leaves a placeholder");
        assert_eq!(routed(&b2.snapshot, "+15550200"), Some(("zeta".into(), "c".into())));
        assert_eq!(routed(&b2.snapshot, "+15550201"), Some(("zeta".into(), "a".into())));
        assert_eq!(routed(&b2.snapshot, "+15550300"), Some(("alpha".into(), "x".into())));
        assert_eq!(routed(&b2.snapshot, "+15550100"), None, "a suspended tenant's numbers are not routed");
        assert!(
            matches!(
                b2.snapshot.route(&E164::parse("+15550100").unwrap(), "127.0.0.1".parse().unwrap()),
                RouteDecision::Suspended { tenant } if &*tenant.name == "demo"
            ),
            "but refused as the suspended tenant's"
        );
        assert_eq!(&*b2.snapshot.tenant(TenantId(0)).unwrap().name, "demo", "its name stays for calls in flight");
        assert_eq!(b2.plan_changes, vec![PlanChange { id: TenantId(2), name: "alpha".into(), plan: "pro".into() }]);
        assert_eq!(b2.app_counts, vec![(TenantId(0), 1), (TenantId(1), 3), (TenantId(2), 1)]);

        // A tenant gone from the table (deleted) keeps its slot, without numbers.
        let t3 = RoutingTable { version: 3, tenants: vec![] };
        let b3 = ids.build(&t3);
        assert_eq!(b3.snapshot.tenants().len(), 3);
        assert_eq!(routed(&b3.snapshot, "+15550300"), None);
        assert!(matches!(
            b3.snapshot.route(&E164::parse("+15550300").unwrap(), "127.0.0.1".parse().unwrap()),
            RouteDecision::UnknownNumber
        ));
    }

    fn call(tenant: &str, sid: &str, answer_at_ms: u64, secs: u64) -> crate::call::record::CallRecord {
        crate::call::record::CallRecord {
            tenant: tenant.into(),
            call_sid: sid.into(),
            sip_call_id: format!("{sid}@carrier"),
            from: "+15559990000".into(),
            to: "+15551230001".into(),
            app: "rx".into(),
            invite_at_ms: answer_at_ms - 500,
            answer_at_ms: Some(answer_at_ms),
            end_at_ms: answer_at_ms + secs * 1000,
            duration_secs: secs,
            end_reason: crate::call::record::EndReason::CallerBye,
            codec: "PCMU",
            transport: "sip",
            packets_in: 1,
            packets_out: 1,
            packets_lost: 0,
            dtmf_count: 0,
        }
    }

    #[test]
    fn monthly_budgets_come_from_the_store_at_start_and_roll_over_with_the_month() {
        use crate::sched::breaker::{BreakerConfig, Breakers};
        use crate::sched::wfq::SchedulerKind;
        use crate::store::sqlite::SqliteStore;
        use crate::store::{DisplayName, NewTenant, PlanName};

        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let op = Operator::system("test");
        for slug in ["acme", "zeta"] {
            let tenant = NewTenant {
                id: TenantSlug::parse(slug).unwrap(),
                name: DisplayName::parse(slug).unwrap(),
                plan: PlanName::parse("pro").unwrap(),
            };
            store.create_tenant(&op, tenant).unwrap();
        }
        let acme = store.operator_scope(&op, &TenantSlug::parse("acme").unwrap()).unwrap();
        let nov_23 = UtcDay::parse("2026-11-23").unwrap();
        let oct_31 = UtcDay::parse("2026-10-31").unwrap();
        let dec_01 = UtcDay::parse("2026-12-01").unwrap();
        store.record_call(&acme, &call("acme", "CA1", nov_23.start_unix_ms() as u64 + 3_600_000, 90)).unwrap();
        store.record_call(&acme, &call("acme", "CA2", nov_23.start_unix_ms() as u64 + 7_200_000, 31)).unwrap();
        store.record_call(&acme, &call("acme", "CA3", oct_31.start_unix_ms() as u64 + 3_600_000, 600)).unwrap();
        store.record_call(&acme, &call("acme", "CA4", dec_01.start_unix_ms() as u64 + 3_600_000, 7)).unwrap();

        let admission = Arc::new(Admission::new(1000));
        let workers = Arc::new(MediaWorkers::start(1, SchedulerKind::Fair, Vec::new(), None).unwrap());
        let targets = Targets {
            admission: Arc::clone(&admission),
            breakers: Arc::new(Breakers::new(BreakerConfig::default(), [])),
            workers: Arc::clone(&workers),
            metrics: Arc::new(Metrics::new(&Default::default())),
        };
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
        let mut sync = RoutingSync::new(Arc::clone(&store), snapshot, targets, PlanSet::builtin(), []);
        assert!(sync.refresh().unwrap());
        let (a, z) = (sync.ids.id("acme").unwrap(), sync.ids.id("zeta").unwrap());
        // A restart mid-month: the budget is charged with what the month's calls used, not started afresh.
        assert!(sync.sync_budgets(nov_23).unwrap());
        assert_eq!((admission.used_seconds(a), admission.used_seconds(z)), (121, 0));
        // Live billing adds on top; the same month does not reset it.
        admission.add_billed_seconds(a, 5);
        assert!(!sync.sync_budgets(nov_23.next()).unwrap());
        assert_eq!(admission.used_seconds(a), 126);
        // The month rolls over: the new month's usage only.
        assert!(sync.sync_budgets(dec_01).unwrap());
        assert_eq!((admission.used_seconds(a), admission.used_seconds(z)), (7, 0));
        workers.shutdown();
    }

    /// The format an app chose reaches the snapshot the SIP path routes by, and a change follows on the next
    /// refresh, for the same number at the same app position.
    #[test]
    fn an_apps_media_format_reaches_the_snapshot_and_follows_its_updates() {
        use crate::sched::breaker::{BreakerConfig, Breakers};
        use crate::sched::wfq::SchedulerKind;
        use crate::store::sqlite::SqliteStore;
        use crate::store::{
            AppTarget, AppUpdate, CodecPreference, CustomParameters, DisplayName, NewApp, NewTenant, PlanName,
            ResourceName, StreamUrl,
        };

        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
        let op = Operator::system("test");
        let slug = TenantSlug::parse("acme").unwrap();
        let tenant = NewTenant {
            id: slug.clone(),
            name: DisplayName::parse("Acme").unwrap(),
            plan: PlanName::parse("pro").unwrap(),
        };
        store.create_tenant(&op, tenant).unwrap();
        let scope = store.operator_scope(&op, &slug).unwrap();
        let app = NewApp {
            name: ResourceName::parse("rx").unwrap(),
            target: AppTarget::Stream { url: StreamUrl::parse("ws://127.0.0.1:9/s").unwrap(), auth_header: None },
            codecs: CodecPreference::default(),
            custom_parameters: CustomParameters::default(),
            media_format: MediaFormat::L16Wide,
        };
        let app = store.create_app(&scope, app).unwrap();
        let number = E164::parse("+15551230001").unwrap();
        store.claim_number(&scope, &number, &app.id).unwrap();

        let workers = Arc::new(MediaWorkers::start(1, SchedulerKind::Fair, Vec::new(), None).unwrap());
        let targets = Targets {
            admission: Arc::new(Admission::new(10)),
            breakers: Arc::new(Breakers::new(BreakerConfig::default(), [])),
            workers: Arc::clone(&workers),
            metrics: Arc::new(Metrics::new(&Default::default())),
        };
        let snapshot = Arc::new(ArcSwap::from_pointee(Snapshot::default()));
        let mut sync = RoutingSync::new(Arc::clone(&store), Arc::clone(&snapshot), targets, PlanSet::builtin(), []);
        let routed_format = || match snapshot.load().route(&number, "127.0.0.1".parse().unwrap()) {
            RouteDecision::Accept { app, app_index, .. } => (app_index, app.media_format),
            other => panic!("{other:?}"),
        };
        assert!(sync.refresh().unwrap());
        assert_eq!(routed_format(), (0, MediaFormat::L16Wide));
        let update = AppUpdate { media_format: Some(MediaFormat::Mulaw8k), ..Default::default() };
        store.update_app(&scope, &app.id, update).unwrap();
        assert!(sync.refresh().unwrap(), "the change moved the routing version");
        assert_eq!(routed_format(), (0, MediaFormat::Mulaw8k));
        workers.shutdown();
    }
}
