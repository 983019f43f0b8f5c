//! The offboarding runner: one thread (`fairvox-offboard`) that advances every unfinished job, step by step, in
//! the order of `OffboardStep::STEPS`. Started with the control plane, it first picks up the jobs a previous
//! process left unfinished, so a job survives a crash and resumes at the step it reached.
//!
//! Each step is idempotent, and its result is written in one transaction with the move to the next step
//! (`Store::offboard_step_done`): a crash before that commit reruns the step, after it moves on. The drain is the
//! one step that waits: its deadline is written when it first starts, so a restart does not give the calls a new
//! grace, and so are the BYEs of the calls it drains, which a restarted process sends because those calls' dialogs
//! died with the process that had them. Jobs run interleaved: one tenant's grace does not hold up another's job.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use serde_json::{Value, json};

use super::bundle;
use crate::api::reports::{invoice_json, month_bounds};
use crate::api::routing::Nudge;
use crate::api::sink::RecordsFlush;
use crate::call::record::EndReason;
use crate::call::uas::PreparedBye;
use crate::metrics::Metrics;
use crate::proto::sip::transaction::{Peer, Transport};
use crate::sched::admission::Admission;
use crate::sched::plan::PlanSet;
use crate::store::{
    Clock, OffboardJob, OffboardStep, Operator, StepDone, Store, StoreError, SystemClock, TenantSlug, UsageQuery,
    UtcDay,
};
use crate::tenant::{Snapshot, TenantId};
use crate::transport::ingress::MediaWorkers;
use crate::transport::sip::{SipCommand, SipControl};
use crate::transport::webrtc::WhipSessions;

/// How often the runner looks at its jobs when nothing nudges it (the drain's granularity).
const TICK: Duration = Duration::from_millis(100);
/// How often it looks when no job waits (a start nudges it at once).
const IDLE_TICK: Duration = Duration::from_secs(1);
/// How long, once the grace is over and the calls told to end, the drain waits for them before moving on.
const HANG_UP_WAIT: Duration = Duration::from_secs(10);
/// How long the drain waits for the call records of the ended calls to reach the store.
const RECORDS_WAIT: Duration = Duration::from_secs(10);
/// A failed step is tried again after this (doubling up to the cap).
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_CAP: Duration = Duration::from_secs(60);

/// What the runner needs of the media core: the one seam of this module, so that the steps can be tested on a real
/// store without a SIP stack (the e2e test runs them against the real one).
pub trait MediaCore: Send + Sync {
    /// Whether the SIP path's routing snapshot has caught up with the tenant's suspension (its numbers refuse
    /// calls), or has no routable number of it at all.
    fn refuses_calls(&self, tenant: &str) -> bool;
    /// Calls of the tenant holding an admission slot (being set up or up).
    fn active_calls(&self, tenant: &str) -> u32;
    /// BYEs for the tenant's answered calls, to keep (see `Uas::bye_for_later`).
    fn prepare_byes(&self, tenant: &str) -> Vec<PreparedBye>;
    /// Ends the tenant's calls now.
    fn hang_up(&self, tenant: &str);
    /// Sends BYEs kept by an earlier process.
    fn send_byes(&self, byes: Vec<PreparedBye>);
    /// Waits until the call records queued so far are in the store.
    fn flush_records(&self, timeout: Duration) -> bool;
    /// Removes what the media core still holds of a deleted tenant (its worker share, its metric series).
    fn forget(&self, tenant: &str);
}

/// The real media core: the routing snapshot, admission, the SIP driver, the WHIP sessions, the call record writer.
pub struct LiveMediaCore {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub admission: Arc<Admission>,
    pub workers: Arc<MediaWorkers>,
    pub metrics: Arc<Metrics>,
    pub sip: SipControl,
    pub webrtc: WhipSessions,
    pub records: RecordsFlush,
}

impl LiveMediaCore {
    fn id(&self, tenant: &str) -> Option<TenantId> {
        self.snapshot.load().tenants().iter().find(|t| &*t.name == tenant).map(|t| t.id)
    }
}

impl MediaCore for LiveMediaCore {
    fn refuses_calls(&self, tenant: &str) -> bool {
        let snapshot = self.snapshot.load();
        snapshot.tenants().iter().find(|t| &*t.name == tenant).is_none_or(|t| t.suspended)
    }

    fn active_calls(&self, tenant: &str) -> u32 {
        self.id(tenant).map_or(0, |id| self.admission.active_calls(id))
    }

    fn prepare_byes(&self, tenant: &str) -> Vec<PreparedBye> {
        self.id(tenant).and_then(|id| self.sip.prepare_byes_blocking(id)).unwrap_or_default()
    }

    fn hang_up(&self, tenant: &str) {
        if let Some(id) = self.id(tenant) {
            self.sip.send_blocking(SipCommand::HangUpTenant { tenant: id, reason: EndReason::TenantOffboarded });
        }
        let webrtc = self.webrtc.hang_up_tenant(tenant, EndReason::TenantOffboarded);
        if webrtc > 0 {
            tracing::info!(tenant, calls = webrtc, "tenant's WebRTC calls ended");
        }
    }

    fn send_byes(&self, byes: Vec<PreparedBye>) {
        self.sip.send_blocking(SipCommand::SendByes { byes });
    }

    fn flush_records(&self, timeout: Duration) -> bool {
        self.records.wait(timeout)
    }

    fn forget(&self, tenant: &str) {
        if let Some(id) = self.id(tenant) {
            self.workers.remove_tenant(id);
        }
        self.metrics.forget_tenant(tenant);
    }
}

/// Why a step failed (it is tried again later).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StepError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("export: {0}")]
    Bundle(#[from] bundle::BundleError),
    /// The media core did not do what the step needs (yet).
    #[error("{0}")]
    Media(&'static str),
    /// Stored data the step cannot use (a broken invariant, logged and retried like any failure).
    #[error("{0}")]
    Corrupt(&'static str),
}

/// What one try at a job's current step came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Progress {
    /// The step finished; the job is at the next one.
    Moved,
    /// The step waits (the drain's grace, calls ending, the routing refresh): try again at the next tick.
    Waiting,
    /// The job is finished.
    Finished,
}

/// What the steps need besides the store and the media core.
#[derive(Clone)]
pub struct RunnerConfig {
    pub data_dir: PathBuf,
    pub plans: PlanSet,
    pub stale_key_days: u32,
}

/// The steps, on one store and one media core. Not thread-safe by design: one runner thread owns it.
pub struct Runner {
    store: Arc<dyn Store>,
    media: Arc<dyn MediaCore>,
    config: RunnerConfig,
    routing: Nudge,
    operator: Operator,
    /// Tenants whose drain this process started (their calls are its own) or whose kept BYEs it sent already.
    drains_seen: HashSet<TenantSlug>,
    /// Tenants whose calls this process told to end, and when.
    hung_up: HashMap<TenantSlug, Instant>,
    /// When a failed job may be tried again.
    retry_at: HashMap<TenantSlug, Instant>,
}

impl Runner {
    pub fn new(store: Arc<dyn Store>, media: Arc<dyn MediaCore>, config: RunnerConfig, routing: Nudge) -> Runner {
        Runner {
            store,
            media,
            config,
            routing,
            operator: Operator::system("offboard"),
            drains_seen: HashSet::new(),
            hung_up: HashMap::new(),
            retry_at: HashMap::new(),
        }
    }

    /// One pass over the unfinished jobs: each is advanced as far as it goes now. Whether any still waits.
    pub fn pass(&mut self) -> Result<bool, StoreError> {
        let jobs = self.store.unfinished_offboard_jobs(&self.operator)?;
        let mut waiting = false;
        for job in jobs {
            if self.retry_at.get(&job.tenant).is_some_and(|at| Instant::now() < *at) {
                waiting = true;
                continue;
            }
            waiting |= self.run(job);
        }
        Ok(waiting)
    }

    /// Advances one job until it waits, fails or finishes; whether it is still unfinished.
    fn run(&mut self, mut job: OffboardJob) -> bool {
        let tenant = job.tenant.clone();
        loop {
            let step = job.step;
            match self.step(&job) {
                Ok(Progress::Finished) => {
                    self.retry_at.remove(&tenant);
                    tracing::info!(tenant = %tenant, "offboarding finished");
                    return false;
                }
                Ok(Progress::Waiting) => return true,
                Ok(Progress::Moved) => {
                    self.retry_at.remove(&tenant);
                    tracing::info!(tenant = %tenant, step = %step, "offboarding step done");
                    match self.store.offboard_job(&self.operator, &tenant) {
                        Ok(next) => job = next,
                        Err(e) => {
                            tracing::error!(tenant = %tenant, error = %e, "offboarding job unreadable");
                            return true;
                        }
                    }
                }
                Err(e) => {
                    let message = e.to_string();
                    tracing::error!(tenant = %tenant, step = %step, error = %message, "offboarding step failed; it will be tried again");
                    let attempts = match self.store.offboard_step_failed(&self.operator, &tenant, step, &message) {
                        Ok(()) => self
                            .store
                            .offboard_job(&self.operator, &tenant)
                            .ok()
                            .and_then(|j| j.last_error)
                            .map_or(1, |e| e.attempts),
                        Err(_) => 1,
                    };
                    let backoff = RETRY_FIRST.saturating_mul(1 << attempts.min(6).saturating_sub(1)).min(RETRY_CAP);
                    self.retry_at.insert(tenant, Instant::now() + backoff);
                    return true;
                }
            }
        }
    }

    /// One try at the job's current step.
    pub fn step(&mut self, job: &OffboardJob) -> Result<Progress, StepError> {
        let tenant = &job.tenant;
        let step = job.step;
        if step == OffboardStep::Done {
            return Ok(Progress::Finished);
        }
        if step != OffboardStep::DrainCalls {
            self.store.offboard_step_started(&self.operator, tenant, step, None)?;
        }
        let done = match step {
            OffboardStep::Suspend => StepDone::default(),
            OffboardStep::DrainCalls => match self.drain(job)? {
                Some(done) => done,
                None => return Ok(Progress::Waiting),
            },
            OffboardStep::Export => self.export(job)?,
            OffboardStep::FinalInvoice => self.final_invoice(job)?,
            OffboardStep::ReleaseNumbers => self.release_numbers(job)?,
            OffboardStep::RevokeKeys => self.revoke_keys(job)?,
            OffboardStep::DeleteRows => StepDone::default(),
            OffboardStep::Certificate => {
                // Again here, for a job resumed after the rows were deleted by an earlier process.
                self.media.forget(tenant.as_str());
                StepDone { certificate: Some(certificate(job)), ..StepDone::default() }
            }
            OffboardStep::Done => return Ok(Progress::Finished),
        };
        let next = self.store.offboard_step_done(&self.operator, tenant, step, done)?;
        match step {
            // The routing refresh learns at once that the tenant refuses calls, then that it is gone.
            OffboardStep::Suspend => self.routing.nudge(),
            OffboardStep::DeleteRows => {
                self.routing.nudge();
                self.media.forget(tenant.as_str());
            }
            _ => {}
        }
        if next.finished() {
            self.drains_seen.remove(tenant);
            self.hung_up.remove(tenant);
            return Ok(Progress::Finished);
        }
        Ok(Progress::Moved)
    }

    /// The drain: `None` while it waits.
    fn drain(&mut self, job: &OffboardJob) -> Result<Option<StepDone>, StepError> {
        let tenant = &job.tenant;
        let name = tenant.as_str();
        // New calls must be refused before the calls up now are counted: wait for the routing refresh.
        if !self.media.refuses_calls(name) {
            self.routing.nudge();
            return Ok(None);
        }
        let now_ms = SystemClock.now_ms();
        let job = if job.drain_deadline_ms.is_none() {
            let byes = self.media.prepare_byes(name);
            self.drains_seen.insert(tenant.clone());
            let deadline =
                now_ms.saturating_add(i64::try_from(job.grace_secs.saturating_mul(1000)).unwrap_or(i64::MAX));
            let kept: Vec<Value> = byes.iter().map(bye_json).collect();
            tracing::info!(tenant = %tenant, calls = self.media.active_calls(name), answered = byes.len(), grace_secs = job.grace_secs, "offboarding: draining the tenant's calls");
            self.store.offboard_step_started(
                &self.operator,
                tenant,
                OffboardStep::DrainCalls,
                Some((deadline, json!(kept))),
            )?
        } else if !self.drains_seen.contains(tenant) {
            // Started by an earlier process: the calls it drained died with it, and their callers still hold them.
            let job = self.store.offboard_step_started(&self.operator, tenant, OffboardStep::DrainCalls, None)?;
            let kept = job.pending_byes.as_ref().and_then(Value::as_array).cloned().unwrap_or_default();
            let byes: Vec<PreparedBye> = kept.iter().filter_map(bye_from_json).collect();
            let tcp = kept.len() - byes.len();
            tracing::info!(tenant = %tenant, byes = byes.len(), unsendable_tcp = tcp, "offboarding resumed: ending the calls of the earlier process");
            if !byes.is_empty() {
                self.media.send_byes(byes);
            }
            self.drains_seen.insert(tenant.clone());
            job
        } else {
            job.clone()
        };
        let deadline = job.drain_deadline_ms.unwrap_or(now_ms);
        let active = self.media.active_calls(name);
        if active > 0 && now_ms < deadline {
            return Ok(None);
        }
        if active > 0 {
            match self.hung_up.get(tenant) {
                None => {
                    tracing::info!(tenant = %tenant, calls = active, "offboarding grace over: ending the tenant's calls");
                    self.media.hang_up(name);
                    self.hung_up.insert(tenant.clone(), Instant::now());
                    return Ok(None);
                }
                Some(at) if at.elapsed() < HANG_UP_WAIT => return Ok(None),
                Some(_) => {
                    tracing::warn!(tenant = %tenant, calls = active, "calls still holding their slots after being ended; moving on");
                }
            }
        }
        // Every ended call handed its record to the writer before its slot was freed: wait for them to be stored.
        if !self.media.flush_records(RECORDS_WAIT) {
            return Err(StepError::Media("the call records of the drained calls did not reach the store in time"));
        }
        let kept = job.pending_byes.as_ref().and_then(Value::as_array).map_or(0, Vec::len);
        let detail = json!({
            "deadline_ms": deadline,
            "calls_ended_at_deadline": self.hung_up.contains_key(tenant),
            "calls_still_active": active,
            "byes_kept": kept,
        });
        Ok(Some(StepDone { detail, ..StepDone::default() }))
    }

    fn export(&mut self, job: &OffboardJob) -> Result<StepDone, StepError> {
        let scope = self.store.operator_scope(&self.operator, &job.tenant)?;
        let dir = bundle::job_dir(&self.config.data_dir, job.tenant.as_str());
        let now = SystemClock.now_ms();
        let info =
            bundle::write(self.store.as_ref(), &scope, &self.config.plans, self.config.stale_key_days, &dir, now)?;
        let detail = json!({ "file_name": info.file_name, "bytes": info.bytes, "sha256": info.sha256 });
        Ok(StepDone { detail, export: Some(info), ..StepDone::default() })
    }

    /// The invoice of the month the calls were drained in, from its first day to the end of the drain: nothing
    /// of the tenant's can be billed after it. Earlier months are closed invoices (in the bundle).
    fn final_invoice(&mut self, job: &OffboardJob) -> Result<StepDone, StepError> {
        let scope = self.store.operator_scope(&self.operator, &job.tenant)?;
        let tenant = self.store.own_tenant(&scope)?;
        let drained_at = job
            .step_record(OffboardStep::DrainCalls)
            .and_then(|s| s.finished_at_ms)
            .unwrap_or_else(|| SystemClock.now_ms());
        let day = UtcDay::from_unix_ms(drained_at);
        let period = day.month();
        let (from, _) =
            month_bounds("period", &period).map_err(|_| StepError::Corrupt("the drain's day gives no period"))?;
        let to = day.next();
        let rows = self.store.usage(&scope, UsageQuery { from, to })?;
        let price = self.config.plans.get(&tenant.plan).map(|p| p.price_per_minute_cents());
        let mut invoice = invoice_json(&tenant, price, &period, (from, to), "final", &rows);
        invoice["final"] = json!(true);
        invoice["closed_at_ms"] = json!(drained_at);
        let detail = json!({
            "period": period,
            "billable_secs": invoice["billable_secs"],
            "amount_cents": invoice["amount_cents"],
        });
        Ok(StepDone { detail, final_invoice: Some(invoice), ..StepDone::default() })
    }

    fn release_numbers(&mut self, job: &OffboardJob) -> Result<StepDone, StepError> {
        let scope = self.store.operator_scope(&self.operator, &job.tenant)?;
        for number in self.store.list_numbers(&scope)? {
            let e164 = crate::tenant::E164::parse(&number.number)
                .map_err(|_| StepError::Corrupt("a stored number does not parse"))?;
            match self.store.release_number(&scope, &e164) {
                Ok(_) | Err(StoreError::NotFound(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        // What this step released, across restarts: the release records since it started.
        let since = self.step_started_at(job, OffboardStep::ReleaseNumbers);
        let released: Vec<String> = self
            .store
            .list_number_releases(&scope)?
            .into_iter()
            .filter(|r| r.released_at_ms >= since)
            .map(|r| r.number)
            .collect();
        Ok(StepDone { detail: json!({ "released": released }), ..StepDone::default() })
    }

    fn revoke_keys(&mut self, job: &OffboardJob) -> Result<StepDone, StepError> {
        let scope = self.store.operator_scope(&self.operator, &job.tenant)?;
        let keys = self.store.list_keys(&scope)?;
        for key in keys.iter().filter(|k| k.revoked_at_ms.is_none()) {
            self.store.revoke_key(&scope, &key.prefix)?;
        }
        let since = self.step_started_at(job, OffboardStep::RevokeKeys);
        let revoked: Vec<String> = self
            .store
            .list_keys(&scope)?
            .into_iter()
            .filter(|k| k.revoked_at_ms.is_some_and(|at| at >= since))
            .map(|k| k.prefix.to_string())
            .collect();
        Ok(StepDone { detail: json!({ "revoked": revoked, "keys": keys.len() }), ..StepDone::default() })
    }

    fn step_started_at(&self, job: &OffboardJob, step: OffboardStep) -> i64 {
        // The job passed in may predate `offboard_step_started`: read it again.
        self.store
            .offboard_job(&self.operator, &job.tenant)
            .ok()
            .and_then(|j| j.step_record(step).and_then(|s| s.started_at_ms))
            .unwrap_or(i64::MIN)
    }
}

/// The deletion certificate: what was deleted (rows per table), the export's hash, when each step ran.
fn certificate(job: &OffboardJob) -> Value {
    let at = |step: OffboardStep| job.step_record(step).and_then(|s| s.finished_at_ms);
    let detail = |step: OffboardStep| job.step_record(step).map(|s| s.detail.clone()).unwrap_or(Value::Null);
    let deleted = detail(OffboardStep::DeleteRows);
    json!({
        "certificate": "fairvox tenant deletion certificate",
        "version": 1,
        "tenant": job.tenant,
        "started_by": job.started_by,
        "offboarding_started_at_ms": job.created_at_ms,
        "suspended_at_ms": at(OffboardStep::Suspend),
        "calls_drained_at_ms": at(OffboardStep::DrainCalls),
        "exported_at_ms": at(OffboardStep::Export),
        "rows_deleted_at_ms": at(OffboardStep::DeleteRows),
        "issued_at_ms": SystemClock.now_ms(),
        "rows_deleted": deleted.get("rows_deleted").cloned().unwrap_or(Value::Null),
        "rows_deleted_total": deleted.get("rows_deleted_total").cloned().unwrap_or(Value::Null),
        "export": job.export.as_ref().map(|e| json!({
            "file_name": e.file_name,
            "bytes": e.bytes,
            "sha256": e.sha256,
            "created_at_ms": e.created_at_ms,
        })),
        "final_invoice": job.final_invoice.as_ref().map(|i| json!({
            "period": i["period"],
            "billable_secs": i["billable_secs"],
            "amount_cents": i["amount_cents"],
        })),
        "numbers_released": detail(OffboardStep::ReleaseNumbers).get("released").cloned().unwrap_or(Value::Null),
        "keys_revoked": detail(OffboardStep::RevokeKeys).get("revoked").cloned().unwrap_or(Value::Null),
        "kept": [
            "this certificate, the final invoice and the job's step history (table offboard_jobs)",
            "the export bundle (until the operator removes it)",
        ],
    })
}

/// A kept BYE as JSON: the request as text (SIP is text), where it goes.
fn bye_json(bye: &PreparedBye) -> Value {
    let transport = match bye.dest.transport {
        Transport::Udp => "udp",
        Transport::Tcp { .. } => "tcp",
    };
    json!({
        "sip_call_id": bye.sip_call_id,
        "branch": bye.branch,
        "dest": bye.dest.addr.to_string(),
        "transport": transport,
        "request": String::from_utf8_lossy(&bye.bytes),
    })
}

/// A kept BYE a new process can send: UDP only (a TCP connection does not outlive its process).
fn bye_from_json(v: &Value) -> Option<PreparedBye> {
    if v.get("transport")?.as_str()? != "udp" {
        return None;
    }
    Some(PreparedBye {
        bytes: v.get("request")?.as_str()?.as_bytes().to_vec(),
        branch: v.get("branch")?.as_str()?.to_owned(),
        dest: Peer { addr: v.get("dest")?.as_str()?.parse().ok()?, transport: Transport::Udp },
        sip_call_id: v.get("sip_call_id")?.as_str()?.to_owned(),
    })
}

// ---- the thread ----

/// Wakes the runner (a job was started); cheap, coalesces.
#[derive(Clone, Debug)]
pub struct RunnerNudge(Sender<()>);

impl RunnerNudge {
    pub fn nudge(&self) {
        let _ = self.0.try_send(());
    }

    /// A nudge nobody listens to (an API without a runner, as in tests).
    pub fn detached() -> RunnerNudge {
        RunnerNudge(crossbeam_channel::bounded(1).0)
    }
}

/// The runner's thread: a pass at start (resuming what an earlier process left), then one per tick or nudge.
pub struct RunnerThread {
    nudge: Sender<()>,
    stop: Arc<AtomicBool>,
}

impl RunnerThread {
    pub fn start(mut runner: Runner) -> std::io::Result<RunnerThread> {
        let (tx, rx): (Sender<()>, Receiver<()>) = crossbeam_channel::bounded(1);
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        std::thread::Builder::new().name("fairvox-offboard".into()).spawn(move || {
            let mut failing = false;
            while !stopped.load(Ordering::Acquire) {
                let waiting = match runner.pass() {
                    Ok(waiting) if failing => {
                        failing = false;
                        tracing::info!("offboarding runner reads its jobs again");
                        waiting
                    }
                    Ok(waiting) => waiting,
                    Err(e) => {
                        if !failing {
                            tracing::error!(error = %e, "offboarding runner cannot read its jobs");
                        }
                        failing = true;
                        true
                    }
                };
                // A job that waits (a drain) is looked at every tick; otherwise a start nudges the runner.
                match rx.recv_timeout(if waiting { TICK } else { IDLE_TICK }) {
                    Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        })?;
        Ok(RunnerThread { nudge: tx, stop })
    }

    pub fn nudge(&self) -> RunnerNudge {
        RunnerNudge(self.nudge.clone())
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _ = self.nudge.try_send(());
    }
}

impl Drop for RunnerThread {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    //! The steps on a real SQLite file and real files, with a media core that reports calls as a test sets them
    //! (the SIP side is exercised over real sockets by `tests/e2e_offboard.rs`).

    use std::io::Read as _;
    use std::sync::atomic::AtomicU32;

    use parking_lot::Mutex;

    use super::*;
    use crate::call::record::CallRecord;
    use crate::config::Config;
    use crate::store::sqlite::SqliteStore;
    use crate::store::{Access, PlanName, ResourceName};
    use crate::store::{AppTarget, CodecPreference, CustomParameters, DisplayName, NewApp, NewKey, NewTenant};
    use crate::tenant::E164;

    #[derive(Default)]
    struct Calls {
        active: AtomicU32,
        /// Active calls end when told to.
        hung_up: AtomicU32,
        byes_sent: Mutex<Vec<PreparedBye>>,
        forgotten: Mutex<Vec<String>>,
        byes: Mutex<Vec<PreparedBye>>,
    }

    impl MediaCore for Calls {
        fn refuses_calls(&self, _: &str) -> bool {
            true
        }
        fn active_calls(&self, _: &str) -> u32 {
            self.active.load(Ordering::SeqCst)
        }
        fn prepare_byes(&self, _: &str) -> Vec<PreparedBye> {
            self.byes.lock().clone()
        }
        fn hang_up(&self, _: &str) {
            self.hung_up.fetch_add(1, Ordering::SeqCst);
            self.active.store(0, Ordering::SeqCst);
        }
        fn send_byes(&self, byes: Vec<PreparedBye>) {
            self.byes_sent.lock().extend(byes);
        }
        fn flush_records(&self, _: Duration) -> bool {
            true
        }
        fn forget(&self, tenant: &str) {
            self.forgotten.lock().push(tenant.to_owned());
        }
    }

    const PLANS: &str = "[plans.metered]\nweight = 1\nmax_concurrent_calls = 5\ncalls_per_second = 1\nburst = 1\nmonthly_minutes = 100\nprice_per_minute_cents = 6\n";

    struct World {
        dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        calls: Arc<Calls>,
        config: RunnerConfig,
    }

    impl World {
        fn new() -> World {
            let dir = tempfile::tempdir().unwrap();
            let store: Arc<dyn Store> = Arc::new(SqliteStore::open(dir.path()).unwrap());
            let config = RunnerConfig {
                data_dir: dir.path().to_owned(),
                plans: Config::from_toml("t.toml", PLANS).unwrap().plans,
                stale_key_days: 30,
            };
            World { dir, store, calls: Arc::new(Calls::default()), config }
        }

        /// A restart: the store opened again on the same files, a new runner.
        fn restart(&mut self) {
            self.store = Arc::new(SqliteStore::open(self.dir.path()).unwrap());
        }

        fn runner(&self) -> Runner {
            let media: Arc<dyn MediaCore> = self.calls.clone();
            Runner::new(Arc::clone(&self.store), media, self.config.clone(), Nudge::detached())
        }

        fn seed(&self, id: &str, number: &str) {
            let op = Operator::system("test");
            let slug = TenantSlug::parse(id).unwrap();
            let name = DisplayName::parse(id).unwrap();
            self.store
                .create_tenant(&op, NewTenant { id: slug.clone(), name, plan: PlanName::parse("metered").unwrap() })
                .unwrap();
            let scope = self.store.operator_scope(&op, &slug).unwrap();
            let app = NewApp {
                name: ResourceName::parse("rx").unwrap(),
                target: AppTarget::Stream {
                    url: crate::store::StreamUrl::parse("ws://127.0.0.1:9/s").unwrap(),
                    auth_header: Some(crate::store::AuthHeader::parse("Bearer secret-0123456789abcd").unwrap()),
                },
                codecs: CodecPreference::default(),
                custom_parameters: CustomParameters::default(),
                media_format: crate::proto::media_streams::MediaFormat::L16Wide,
            };
            let app = self.store.create_app(&scope, app).unwrap();
            self.store.claim_number(&scope, &E164::parse(number).unwrap(), &app.id).unwrap();
            let key =
                NewKey { name: ResourceName::parse("ci").unwrap(), access: Access::ReadWrite, expires_at_ms: None };
            self.store.create_key(&scope, key).unwrap();
            let now = SystemClock.now_ms() as u64;
            for (i, secs) in [(1u64, 61u64), (2, 7)] {
                let record = CallRecord {
                    tenant: id.into(),
                    call_sid: format!("CA{id}{i}"),
                    sip_call_id: format!("{i}@carrier"),
                    from: "+15557770001".into(),
                    to: number.into(),
                    app: "rx".into(),
                    invite_at_ms: now - 100_000,
                    answer_at_ms: Some(now - 99_000),
                    end_at_ms: now - 99_000 + secs * 1000,
                    duration_secs: secs,
                    end_reason: EndReason::CallerBye,
                    codec: "PCMU",
                    transport: "sip",
                    packets_in: 1,
                    packets_out: 1,
                    packets_lost: 0,
                    dtmf_count: 0,
                };
                self.store.record_call(&scope, &record).unwrap();
            }
        }

        fn job(&self, id: &str) -> OffboardJob {
            self.store.offboard_job(&Operator::system("test"), &TenantSlug::parse(id).unwrap()).unwrap()
        }

        fn start(&self, id: &str, grace_secs: u64) {
            let op = Operator::system("test");
            self.store.start_offboarding(&op, &TenantSlug::parse(id).unwrap(), grace_secs).unwrap();
        }
    }

    /// Runs passes until no job is left (bounded).
    fn run_to_end(runner: &mut Runner) {
        for _ in 0..200 {
            if !runner.pass().unwrap() && runner.store.unfinished_offboard_jobs(&runner.operator).unwrap().is_empty() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the job did not finish");
    }

    fn bundle_files(path: &std::path::Path) -> HashMap<String, String> {
        let file = std::fs::File::open(path).unwrap();
        let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
        let mut out = HashMap::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let name = entry.path().unwrap().to_string_lossy().into_owned();
            let mut text = String::new();
            entry.read_to_string(&mut text).unwrap();
            out.insert(name, text);
        }
        out
    }

    /// What a finished job must show, whatever restarts it went through.
    fn check_finished(w: &World, id: &str, number: &str) {
        let job = w.job(id);
        assert!(job.finished(), "{job:?}");
        let export = job.export.clone().unwrap();
        let path = bundle::job_dir(w.dir.path(), id).join(&export.file_name);
        let (sha, bytes) = bundle::sha256_file(&path).unwrap();
        assert_eq!((sha.as_str(), bytes), (export.sha256.as_str(), export.bytes));
        let cert = job.certificate.clone().unwrap();
        assert_eq!(cert["export"]["sha256"], export.sha256);
        assert_eq!(cert["tenant"], id);
        assert_eq!(cert["rows_deleted"]["calls"], 2);
        assert_eq!(cert["rows_deleted"]["tenants"], 1);
        assert_eq!(cert["numbers_released"], json!([number]));
        let invoice = job.final_invoice.clone().unwrap();
        assert_eq!((invoice["billable_secs"].clone(), invoice["calls"].clone()), (json!(68), json!(2)));
        assert_eq!(invoice["amount_cents"], 7, "68 s at 6 cents a minute: 6.8, rounded half up");
        assert_eq!(invoice["status"], "final");
        let files = bundle_files(&path);
        let calls: Value = serde_json::from_str(&files[&format!("{id}-export/calls.json")]).unwrap();
        assert_eq!(calls.as_array().unwrap().len(), 2);
        assert!(files[&format!("{id}-export/calls.csv")].contains(&format!("CA{id}1,")));
        let apps = &files[&format!("{id}-export/apps.json")];
        assert!(apps.contains("****abcd") && !apps.contains("secret-0123"), "auth header masked: {apps}");
        let apps: Value = serde_json::from_str(apps).unwrap();
        assert_eq!(apps[0]["media_format"], "l16_16k", "the app's stream format is exported with it");
        let keys = &files[&format!("{id}-export/keys.json")];
        assert!(keys.contains("\"prefix\"") && !keys.contains("hash"), "{keys}");
        assert!(files[&format!("{id}-export/audit.json")].contains("offboard.start"));
        let manifest: Value = serde_json::from_str(&files[&format!("{id}-export/manifest.json")]).unwrap();
        assert_eq!(manifest["files"].as_array().unwrap().len(), files.len() - 1);
        // Gone from the store.
        let op = Operator::system("test");
        assert!(w.store.tenant(&op, &TenantSlug::parse(id).unwrap()).is_err());
        assert!(w.calls.forgotten.lock().iter().any(|t| t == id));
    }

    #[test]
    fn a_job_runs_every_step_and_ends_with_a_certificate_carrying_the_bundles_hash() {
        let w = World::new();
        w.seed("acme", "+15551230001");
        w.seed("bravo", "+15551230002");
        w.start("acme", 0);
        let mut runner = w.runner();
        run_to_end(&mut runner);
        check_finished(&w, "acme", "+15551230001");
        let job = w.job("acme");
        let names: Vec<&str> = job.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, super::super::step_names());
        // Bravo is untouched.
        let op = Operator::system("test");
        let bravo = w.store.operator_scope(&op, &TenantSlug::parse("bravo").unwrap()).unwrap();
        assert_eq!(w.store.list_calls(&bravo, Default::default()).unwrap().items.len(), 2);
    }

    /// A restart at every step: the job stops after each, the store is reopened and a new runner (a new
    /// process) finishes it, with the same result.
    #[test]
    fn the_job_resumes_at_the_step_it_reached() {
        for stop_before in OffboardStep::STEPS {
            let mut w = World::new();
            w.seed("acme", "+15551230001");
            w.start("acme", 0);
            let mut first = w.runner();
            while w.job("acme").step != stop_before {
                let job = w.job("acme");
                assert_eq!(first.step(&job).unwrap(), Progress::Moved, "{stop_before}: {:?}", job.step);
            }
            drop(first);
            w.restart();
            let unfinished = w.store.unfinished_offboard_jobs(&Operator::system("test")).unwrap();
            assert_eq!(unfinished[0].step, stop_before);
            let mut second = w.runner();
            run_to_end(&mut second);
            check_finished(&w, "acme", "+15551230001");
        }
    }

    #[test]
    fn the_drain_waits_for_the_grace_then_ends_the_calls_and_a_restart_sends_the_kept_byes() {
        let mut w = World::new();
        w.seed("acme", "+15551230001");
        w.calls.active.store(1, Ordering::SeqCst);
        let bye = PreparedBye {
            bytes: b"BYE sip:caller@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKx\r\n\r\n"
                .to_vec(),
            branch: "z9hG4bKx".into(),
            dest: Peer { addr: "127.0.0.1:5070".parse().unwrap(), transport: Transport::Udp },
            sip_call_id: "call-1".into(),
        };
        *w.calls.byes.lock() = vec![bye.clone()];
        w.start("acme", 1);
        let mut runner = w.runner();
        assert!(runner.pass().unwrap(), "waits in the drain");
        let job = w.job("acme");
        assert_eq!(job.step, OffboardStep::DrainCalls);
        let deadline = job.drain_deadline_ms.unwrap();
        assert!(deadline > SystemClock.now_ms(), "the grace runs");
        assert_eq!(job.pending_byes.as_ref().unwrap()[0]["sip_call_id"], "call-1");
        assert_eq!(w.calls.hung_up.load(Ordering::SeqCst), 0);
        // A restart during the grace: the new process sends the kept BYE at once, once, keeps the deadline.
        drop(runner);
        w.restart();
        let mut runner = w.runner();
        runner.pass().unwrap();
        runner.pass().unwrap();
        assert_eq!(*w.calls.byes_sent.lock(), vec![bye]);
        assert_eq!(w.job("acme").drain_deadline_ms, Some(deadline));
        // The fake's call is still "active" in this process: it is ended when the grace is over.
        while SystemClock.now_ms() < deadline {
            assert_eq!(w.calls.hung_up.load(Ordering::SeqCst), 0, "not before the deadline");
            runner.pass().unwrap();
            std::thread::sleep(Duration::from_millis(50));
        }
        run_to_end(&mut runner);
        assert_eq!(w.calls.hung_up.load(Ordering::SeqCst), 1);
        let job = w.job("acme");
        let drain = job.step_record(OffboardStep::DrainCalls).unwrap();
        assert_eq!(drain.detail["calls_ended_at_deadline"], true);
        assert_eq!(job.pending_byes, None);
        check_finished(&w, "acme", "+15551230001");
    }

    #[test]
    fn kept_byes_round_trip_and_tcp_ones_are_not_resent() {
        let udp = PreparedBye {
            bytes: b"BYE sip:a@127.0.0.1 SIP/2.0\r\n\r\n".to_vec(),
            branch: "z9hG4bK1".into(),
            dest: Peer { addr: "127.0.0.1:5070".parse().unwrap(), transport: Transport::Udp },
            sip_call_id: "c1".into(),
        };
        assert_eq!(bye_from_json(&bye_json(&udp)), Some(udp.clone()));
        let tcp = PreparedBye { dest: Peer { transport: Transport::Tcp { conn: 3 }, ..udp.dest }, ..udp };
        assert_eq!(bye_from_json(&bye_json(&tcp)), None);
        assert_eq!(bye_from_json(&json!({"transport": "udp"})), None, "garbage is skipped, not a panic");
    }
}
