//! Call admission: decides, in O(1) and without a global lock, whether a tenant's new call may start, and owns the
//! live counts that decision reads (calls held per tenant and on the node, seconds used this month, refusals per
//! reason). A call that gets in holds a [`CallPermit`] until it ends; a call that does not gets a [`Refusal`] that
//! says why, which SIP answer to send and when to retry.
//!
//! # Order of checks
//!
//! [`Admission::admit`] checks, in this order, and stops at the first that refuses:
//!
//! 1. **node cap** (`limits.max_calls`), or **media workers behind** (set from outside by the workers' monitor,
//!    `transport::ingress::BehindTracker`: the node when every busy tenant's turns are late, a tenant when its own
//!    are; and `transport::ingress::CapacityTracker`: a tenant at or above its weighted share of workers that are
//!    hot): protects the box, whatever the plans add up to. `503`, `Retry-After: 5`, reason `overload`.
//! 2. **budget** (`monthly_minutes`): seconds used this month ≥ the plan's limit. `403`, no `Retry-After`.
//! 3. **concurrency** (`max_concurrent_calls`): `486 Busy Here`, `Retry-After: 5`.
//! 4. **rate** (`calls_per_second` refill, `burst` depth; GCRA via `governor`): `503`, `Retry-After` from the bucket.
//!
//! A refused call consumes nothing: the rate check comes last and is the only one that spends a token, and it spends
//! one only when the call is admitted. The node slot is reserved (a bounded compare-and-swap) just before the rate
//! check and handed back if the bucket refuses, so a call refused for rate holds a node slot for the duration of one
//! GCRA update and never longer.
//!
//! # Locking
//!
//! Tenants live in a `Vec` indexed by [`TenantId`], read through `arc_swap` (no lock; the vector is replaced only
//! when [`Admission::set_tenant`] meets a new, higher id). Each tenant has its own short `parking_lot::Mutex` over
//! its plan limits and rate bucket, so tenants never wait for each other; the node count is one atomic. Dropping a
//! permit takes no lock at all.
//!
//! # Retry-After (RFC 3261 §20.33: whole delta-seconds)
//!
//! - **rate**: the time until the bucket holds a token again (`governor`'s `NotUntil::wait_time_from`), rounded
//!   **up** to whole seconds, so a retry at exactly `Retry-After` seconds is admitted (if no other call took the
//!   token meanwhile).
//! - **concurrency**: [`CONCURRENCY_RETRY_AFTER_SECS`] (5 s). When a slot frees depends on when another call of the
//!   tenant hangs up, which the server cannot know; 5 s is long enough that a carrier retrying does not hammer, short
//!   enough to catch a slot soon after a typical hangup.
//! - **node overload**: [`NODE_OVERLOAD_RETRY_AFTER_SECS`] (5 s), the value the SIP layer already sends at
//!   `limits.max_calls` (see `docs/call-flow.md`).
//! - **circuit open** (from [`crate::sched::breaker`]): the remaining cool-down, rounded up.
//! - **budget**: none; the month must roll over (or the plan change) first.
//!
//! Every value goes through [`retry_after_secs`]: rounded up, and never 0 (a `Retry-After: 0` invites an immediate
//! retry storm).
//!
//! # Budget rule
//!
//! Usage is billed in whole seconds by the media side through [`Admission::add_billed_seconds`] (for example one
//! second per active call per second). A new call is refused with [`Refusal::Budget`] once the seconds used reach the
//! plan's `monthly_minutes * 60`. Calls already up are ended cleanly: the media side reads the remaining seconds (the
//! return value of `add_billed_seconds`, or [`Admission::remaining_seconds`]) and sends BYE to every active call of
//! the tenant when it reaches 0. Billing saturates at the limit, so a tenant is never billed past it; the budget is
//! shared by all of a tenant's calls, so with N calls up it drains N seconds per second. The month's count is
//! the caller's: the control plane sets it from the store's usage ([`Admission::set_used_seconds`]) at start, so a
//! restart hands no tenant a fresh budget, and again when the UTC calendar month rolls over
//! (`api::routing::RoutingSync::sync_budgets`). A plan change
//! ([`Admission::set_tenant`] on a configured tenant) keeps the usage, the calls up and the refusal counts.
//!
//! # Time
//!
//! sans-IO: every time-dependent call takes `now: Instant`. The first `now` ever passed becomes the epoch of all rate
//! buckets; a `now` earlier than that counts as the epoch. `now` may come from `Instant::now()` in production and from
//! `t0 + offset` in tests.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};
use parking_lot::Mutex;

use crate::sched::plan::Plan;
use crate::tenant::TenantId;

/// `Retry-After` sent with a concurrency refusal (486).
pub const CONCURRENCY_RETRY_AFTER_SECS: u32 = 5;
/// `Retry-After` sent when the node is at its call cap (503); the SIP layer's existing value.
pub const NODE_OVERLOAD_RETRY_AFTER_SECS: u32 = 5;
/// Highest tenant index + 1 that [`Admission::set_tenant`] accepts: a guard against a bogus id allocating a huge table.
pub const MAX_TENANTS: u32 = 1 << 20;

/// Why a call was not admitted. `label()` is the stable metrics label; `sip_status()` the answer to the INVITE.
#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    /// The tenant's call-rate bucket is empty.
    #[error("call rate exceeded; retry after {retry_after} s")]
    Rate { retry_after: u32 },
    /// The tenant holds `max_concurrent_calls` calls.
    #[error("concurrent call limit reached; retry after {retry_after} s")]
    Concurrency { retry_after: u32 },
    /// The tenant used its monthly minutes.
    #[error("monthly minutes exhausted")]
    Budget,
    /// The node holds `limits.max_calls` calls.
    #[error("node at its call limit; retry after {retry_after} s")]
    NodeOverload { retry_after: u32 },
    /// The circuit breaker of the tenant's app is open (see [`crate::sched::breaker`]).
    #[error("the agent keeps failing (circuit open); retry after {retry_after} s")]
    CircuitOpen { retry_after: u32 },
    /// No plan was set for this tenant: an integration bug, answered rather than panicked on.
    #[error("tenant has no plan")]
    Unconfigured,
}

/// Metric labels, in [`Refusal::index`] order.
const LABELS: [&str; 6] = ["rate", "concurrency", "budget", "overload", "provider_unavailable", "unconfigured"];
/// Reasons counted per tenant (all but `unconfigured`, which is counted node-wide).
const TENANT_REASONS: usize = 5;

impl Refusal {
    /// Stable snake_case label for metrics (`reason="rate"`).
    pub fn label(&self) -> &'static str {
        LABELS[self.index()]
    }

    /// Status code and reason phrase of the final response to the INVITE.
    pub fn sip_status(&self) -> (u16, &'static str) {
        match self {
            Refusal::Rate { .. } => (503, "Service Unavailable - Call Rate Exceeded"),
            Refusal::Concurrency { .. } => (486, "Busy Here - Concurrent Call Limit"),
            Refusal::Budget => (403, "Forbidden - Monthly Minutes Exhausted"),
            Refusal::NodeOverload { .. } => (503, "Service Unavailable"),
            Refusal::CircuitOpen { .. } => (503, "Service Unavailable - Agent Failing"),
            Refusal::Unconfigured => (500, "Server Internal Error - Tenant Not Configured"),
        }
    }

    /// Value of the `Retry-After` header, in seconds (never 0), or `None` to send none.
    pub fn retry_after(&self) -> Option<u32> {
        match *self {
            Refusal::Rate { retry_after }
            | Refusal::Concurrency { retry_after }
            | Refusal::NodeOverload { retry_after }
            | Refusal::CircuitOpen { retry_after } => Some(retry_after),
            Refusal::Budget | Refusal::Unconfigured => None,
        }
    }

    fn index(&self) -> usize {
        match self {
            Refusal::Rate { .. } => 0,
            Refusal::Concurrency { .. } => 1,
            Refusal::Budget => 2,
            Refusal::NodeOverload { .. } => 3,
            Refusal::CircuitOpen { .. } => 4,
            Refusal::Unconfigured => 5,
        }
    }
}

/// A wait as a `Retry-After` value: whole seconds rounded **up**, at least 1, saturating at `u32::MAX`.
pub fn retry_after_secs(wait: Duration) -> u32 {
    let secs = wait.as_secs().saturating_add(u64::from(wait.subsec_nanos() > 0));
    u32::try_from(secs).unwrap_or(u32::MAX).max(1)
}

/// Refusals of one tenant's calls so far, per reason (monotonic counters).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RefusalCounts {
    pub rate: u64,
    pub concurrency: u64,
    pub budget: u64,
    pub overload: u64,
    pub provider_unavailable: u64,
}

impl RefusalCounts {
    /// `(label, count)` for every reason, labels as [`Refusal::label`].
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> {
        let counts = [self.rate, self.concurrency, self.budget, self.overload, self.provider_unavailable];
        LABELS.into_iter().zip(counts)
    }

    pub fn total(&self) -> u64 {
        self.iter().map(|(_, n)| n).sum()
    }
}

/// Could not (re)configure a tenant.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdmissionError {
    #[error("tenant index {0} is beyond the admission table's limit of {MAX_TENANTS} tenants")]
    TenantIdTooLarge(u32),
}

/// A governor clock that reads the `now` last handed to [`Admission::admit`], as nanoseconds since the epoch. It is
/// set and read only under the tenant's gate lock, so each bucket sees the `now` of the call it is deciding.
#[derive(Debug, Default)]
struct GivenClock(AtomicU64);

impl Clock for GivenClock {
    type Instant = Nanos;

    fn now(&self) -> Nanos {
        Nanos::new(self.0.load(Ordering::Relaxed))
    }
}

type Bucket = RateLimiter<NotKeyed, InMemoryState, GivenClock, NoOpMiddleware<Nanos>>;

/// Marks an unlimited budget in [`TenantSlot::limit_secs`].
const UNLIMITED: u64 = u64::MAX;

/// What the gate lock guards: the plan limits that need to change together with the bucket.
#[derive(Debug)]
struct Gate {
    plan: Arc<str>,
    max_concurrent: u32,
    quota: Quota,
    bucket: Bucket,
}

/// One tenant's admission state. Shared by the table and every permit of the tenant.
#[derive(Debug)]
struct TenantSlot {
    /// `None` until a plan is set.
    gate: Mutex<Option<Gate>>,
    /// Calls held. Incremented only under `gate` (so the cap holds), decremented by permits without a lock.
    active: AtomicU32,
    /// Seconds billed this month.
    used_secs: AtomicU64,
    /// The plan's monthly seconds, or [`UNLIMITED`]; 0 while unconfigured.
    limit_secs: AtomicU64,
    refusals: [AtomicU64; TENANT_REASONS],
    /// The media workers cannot take this tenant's new calls: they persistently serve it late, or they are hot and
    /// it uses at least its share of them.
    workers_full: AtomicBool,
}

impl TenantSlot {
    fn new() -> TenantSlot {
        TenantSlot {
            gate: Mutex::new(None),
            active: AtomicU32::new(0),
            used_secs: AtomicU64::new(0),
            limit_secs: AtomicU64::new(0),
            refusals: Default::default(),
            workers_full: AtomicBool::new(false),
        }
    }

    fn remaining(&self) -> Option<u64> {
        match self.limit_secs.load(Ordering::Acquire) {
            UNLIMITED => None,
            limit => Some(limit.saturating_sub(self.used_secs.load(Ordering::Acquire))),
        }
    }
}

#[derive(Debug)]
struct Node {
    active: AtomicU32,
    max: AtomicU32,
    /// The media workers are persistently behind for every busy tenant.
    behind: AtomicBool,
}

/// Admission control for every tenant of the node. `Send + Sync`; share it through an `Arc`.
pub struct Admission {
    node: Arc<Node>,
    tenants: ArcSwap<Vec<Arc<TenantSlot>>>,
    /// Serialises growth of `tenants` (never taken by `admit`).
    grow: Mutex<()>,
    epoch: OnceLock<Instant>,
    unconfigured: AtomicU64,
}

impl fmt::Debug for Admission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admission")
            .field("node_active", &self.node_active())
            .field("node_max_calls", &self.node_max_calls())
            .field("tenants", &self.tenants.load().len())
            .finish_non_exhaustive()
    }
}

impl Admission {
    /// An admission table with no tenant yet. `node_max_calls` is `limits.max_calls`; 0 refuses every call.
    pub fn new(node_max_calls: u32) -> Admission {
        Admission {
            node: Arc::new(Node {
                active: AtomicU32::new(0),
                max: AtomicU32::new(node_max_calls),
                behind: AtomicBool::new(false),
            }),
            tenants: ArcSwap::from_pointee(Vec::new()),
            grow: Mutex::new(()),
            epoch: OnceLock::new(),
            unconfigured: AtomicU64::new(0),
        }
    }

    /// Changes the node cap (config reload). Calls already up stay; new ones are refused while above it.
    pub fn set_node_max_calls(&self, node_max_calls: u32) {
        self.node.max.store(node_max_calls, Ordering::Release);
    }

    pub fn node_max_calls(&self) -> u32 {
        self.node.max.load(Ordering::Acquire)
    }

    /// Marks the node's media workers as persistently behind (new calls refused as `overload`) or not.
    pub fn set_node_behind(&self, behind: bool) {
        self.node.behind.store(behind, Ordering::Release);
    }

    /// Marks the media workers as unable to take `tenant`'s new calls (refused as `overload`) or not: they are
    /// persistently late for it (`BehindTracker`), or hot with it at or above its share (`CapacityTracker`).
    pub fn set_tenant_workers_full(&self, tenant: TenantId, full: bool) {
        if let Some(slot) = self.slot(tenant) {
            slot.workers_full.store(full, Ordering::Release);
        }
    }

    /// Configures `tenant` with `plan`, or moves it to another plan. Usage this month, calls up and refusal counts
    /// are kept. The rate bucket keeps its state when the plan's rate and burst are unchanged; otherwise it starts
    /// full under the new quota. A lower `max_concurrent_calls` ends no call: new ones are refused until below it.
    pub fn set_tenant(&self, tenant: TenantId, plan: &Plan) -> Result<(), AdmissionError> {
        let slot = self.slot_or_grow(tenant)?;
        let quota = quota_of(plan);
        let mut gate = slot.gate.lock();
        match gate.as_mut() {
            Some(g) if g.quota == quota => {
                g.plan = Arc::from(plan.name());
                g.max_concurrent = plan.max_concurrent_calls();
            }
            _ => {
                *gate = Some(Gate {
                    plan: Arc::from(plan.name()),
                    max_concurrent: plan.max_concurrent_calls(),
                    quota,
                    bucket: RateLimiter::direct_with_clock(quota, GivenClock::default()),
                });
            }
        }
        slot.limit_secs.store(plan.monthly_seconds().unwrap_or(UNLIMITED), Ordering::Release);
        Ok(())
    }

    /// Name of the tenant's plan, `None` if it has none.
    pub fn plan_name(&self, tenant: TenantId) -> Option<Arc<str>> {
        let slot = self.slot(tenant)?;
        let gate = slot.gate.lock();
        gate.as_ref().map(|g| g.plan.clone())
    }

    /// Decides whether `tenant` may start a call at `now`. O(1): one atomic load of the tenant table, the tenant's
    /// own short lock, atomics for the counts. See the module doc for the order of checks and the Retry-After rules.
    /// Every refusal is counted.
    pub fn admit(&self, tenant: TenantId, now: Instant) -> Result<CallPermit, Refusal> {
        let tenants = self.tenants.load();
        let Some(slot) = tenants.get(tenant.0 as usize) else {
            return Err(self.refuse_unconfigured());
        };

        // 1. Node cap, or media workers behind: a cheap look before taking any lock.
        if self.node.active.load(Ordering::Acquire) >= self.node.max.load(Ordering::Acquire)
            || self.node.behind.load(Ordering::Acquire)
            || slot.workers_full.load(Ordering::Acquire)
        {
            return Err(count(slot, Refusal::NodeOverload { retry_after: NODE_OVERLOAD_RETRY_AFTER_SECS }));
        }

        let gate = slot.gate.lock();
        let Some(g) = gate.as_ref() else {
            return Err(self.refuse_unconfigured());
        };

        // 2. Budget.
        if slot.used_secs.load(Ordering::Acquire) >= slot.limit_secs.load(Ordering::Acquire) {
            return Err(count(slot, Refusal::Budget));
        }

        // 3. Concurrency. `active` only grows under this lock, so the cap cannot be overshot.
        if slot.active.load(Ordering::Acquire) >= g.max_concurrent {
            return Err(count(slot, Refusal::Concurrency { retry_after: CONCURRENCY_RETRY_AFTER_SECS }));
        }

        // 1 again, for real: reserve a node slot, bounded by the cap (another tenant may have taken the last one).
        let max = self.node.max.load(Ordering::Acquire);
        if self.node.active.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < max).then_some(n + 1)).is_err() {
            return Err(count(slot, Refusal::NodeOverload { retry_after: NODE_OVERLOAD_RETRY_AFTER_SECS }));
        }

        // 4. Rate: the only check that spends anything, and only on success.
        let t = self.ticks(now);
        g.bucket.clock().0.store(t, Ordering::Relaxed);
        if let Err(not_until) = g.bucket.check() {
            self.node.active.fetch_sub(1, Ordering::AcqRel);
            let retry_after = retry_after_secs(not_until.wait_time_from(Nanos::new(t)));
            return Err(count(slot, Refusal::Rate { retry_after }));
        }

        slot.active.fetch_add(1, Ordering::AcqRel);
        drop(gate);
        Ok(CallPermit { slot: Arc::clone(slot), node: Arc::clone(&self.node), tenant })
    }

    /// Counts a refusal decided elsewhere against `tenant` (the breaker's [`Refusal::CircuitOpen`]), so that all
    /// refusals show in [`Admission::refusals`]. `Unconfigured`, or any refusal of a tenant the table has no slot
    /// for, goes to [`Admission::unconfigured_refusals`].
    pub fn record_refusal(&self, tenant: TenantId, refusal: &Refusal) {
        match self.slot(tenant) {
            Some(slot) if refusal.index() < TENANT_REASONS => {
                count(&slot, *refusal);
            }
            _ => {
                self.unconfigured.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Bills `secs` more seconds of use this month and returns the seconds left (`None`: unlimited). Billing
    /// saturates at the plan's limit: a tenant is never billed past it. When this returns `Some(0)` the media side
    /// ends the tenant's calls with BYE. An unconfigured tenant bills nothing and has `Some(0)` left.
    pub fn add_billed_seconds(&self, tenant: TenantId, secs: u64) -> Option<u64> {
        let Some(slot) = self.slot(tenant) else {
            return Some(0);
        };
        let limit = slot.limit_secs.load(Ordering::Acquire);
        let _ = slot.used_secs.fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
            if used >= limit { None } else { Some(used.saturating_add(secs).min(limit)) }
        });
        slot.remaining()
    }

    /// Seconds left this month (`None`: unlimited; `Some(0)` for an unconfigured tenant).
    pub fn remaining_seconds(&self, tenant: TenantId) -> Option<u64> {
        self.slot(tenant).map_or(Some(0), |s| s.remaining())
    }

    /// Seconds billed this month.
    pub fn used_seconds(&self, tenant: TenantId) -> u64 {
        self.slot(tenant).map_or(0, |s| s.used_secs.load(Ordering::Acquire))
    }

    /// Sets the seconds billed this month to what the store recorded: at start (so a restart does not hand a tenant
    /// a fresh budget) and at the month's rollover. Calls still up keep billing on top of it.
    pub fn set_used_seconds(&self, tenant: TenantId, secs: u64) {
        if let Some(slot) = self.slot(tenant) {
            slot.used_secs.store(secs, Ordering::Release);
        }
    }

    /// Month rollover: the caller invokes this for each tenant at the start of its billing month.
    pub fn reset_usage(&self, tenant: TenantId) {
        if let Some(slot) = self.slot(tenant) {
            slot.used_secs.store(0, Ordering::Release);
        }
    }

    /// Calls of `tenant` holding a permit.
    pub fn active_calls(&self, tenant: TenantId) -> u32 {
        self.slot(tenant).map_or(0, |s| s.active.load(Ordering::Acquire))
    }

    /// Calls on the node holding a permit.
    pub fn node_active(&self) -> u32 {
        self.node.active.load(Ordering::Acquire)
    }

    /// Refusals of `tenant`'s calls so far, per reason.
    pub fn refusals(&self, tenant: TenantId) -> RefusalCounts {
        let Some(slot) = self.slot(tenant) else {
            return RefusalCounts::default();
        };
        let n = |i: usize| slot.refusals[i].load(Ordering::Relaxed);
        RefusalCounts { rate: n(0), concurrency: n(1), budget: n(2), overload: n(3), provider_unavailable: n(4) }
    }

    /// Calls refused because their tenant had no plan (counted node-wide: such a tenant has no metrics identity).
    pub fn unconfigured_refusals(&self) -> u64 {
        self.unconfigured.load(Ordering::Relaxed)
    }

    fn slot(&self, tenant: TenantId) -> Option<Arc<TenantSlot>> {
        self.tenants.load().get(tenant.0 as usize).cloned()
    }

    fn slot_or_grow(&self, tenant: TenantId) -> Result<Arc<TenantSlot>, AdmissionError> {
        if let Some(slot) = self.slot(tenant) {
            return Ok(slot);
        }
        if tenant.0 >= MAX_TENANTS {
            return Err(AdmissionError::TenantIdTooLarge(tenant.0));
        }
        let _grow = self.grow.lock();
        let current = self.tenants.load_full();
        let index = tenant.0 as usize;
        if let Some(slot) = current.get(index) {
            return Ok(Arc::clone(slot));
        }
        let mut table: Vec<Arc<TenantSlot>> = current.as_ref().clone();
        table.resize_with(index + 1, || Arc::new(TenantSlot::new()));
        let slot = table.last().map(Arc::clone);
        self.tenants.store(Arc::new(table));
        slot.ok_or(AdmissionError::TenantIdTooLarge(tenant.0))
    }

    /// `now` as nanoseconds since the epoch (the first `now` seen), saturating at 0.
    fn ticks(&self, now: Instant) -> u64 {
        let epoch = *self.epoch.get_or_init(|| now);
        u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    fn refuse_unconfigured(&self) -> Refusal {
        self.unconfigured.fetch_add(1, Ordering::Relaxed);
        Refusal::Unconfigured
    }
}

fn count(slot: &TenantSlot, refusal: Refusal) -> Refusal {
    if let Some(counter) = slot.refusals.get(refusal.index()) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
    refusal
}

fn quota_of(plan: &Plan) -> Quota {
    let burst = std::num::NonZeroU32::new(plan.burst()).unwrap_or(std::num::NonZeroU32::MIN);
    // replenish_interval() is never zero; the fallback only satisfies the type.
    Quota::with_period(plan.replenish_interval()).unwrap_or(Quota::per_second(burst)).allow_burst(burst)
}

/// One admitted call's hold on a concurrency slot of its tenant and of the node. Dropping it releases both, on
/// every path a call can end by (BYE either way, CANCEL, agent failure, error, panic unwinding). `Send`, not `Clone`.
#[must_use = "dropping the permit releases the call's slot at once"]
pub struct CallPermit {
    slot: Arc<TenantSlot>,
    node: Arc<Node>,
    tenant: TenantId,
}

impl CallPermit {
    pub fn tenant(&self) -> TenantId {
        self.tenant
    }
}

impl fmt::Debug for CallPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallPermit").field("tenant", &self.tenant).finish_non_exhaustive()
    }
}

impl Drop for CallPermit {
    fn drop(&mut self) {
        self.slot.active.fetch_sub(1, Ordering::AcqRel);
        self.node.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sched::plan::{PlanSet, RawMinutes, RawPlan, build_plans};

    const A: TenantId = TenantId(0);
    const B: TenantId = TenantId(1);

    fn ms(m: u64) -> Duration {
        Duration::from_millis(m)
    }

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// A validated plan with the given limits (weight 1, default frame queue).
    fn plan(max_concurrent: u32, cps: f64, burst: u32, minutes: Option<u64>) -> Plan {
        let raw = RawPlan {
            weight: Some(1),
            max_concurrent_calls: Some(max_concurrent),
            calls_per_second: Some(cps),
            burst: Some(burst),
            monthly_minutes: Some(minutes.map_or(RawMinutes::Unlimited, RawMinutes::Limited)),
            max_frame_queue_ms: None,
            price_per_minute_cents: None,
        };
        build_plans(&[("t".to_owned(), raw)]).unwrap().get("t").unwrap().clone()
    }

    fn builtin(name: &str) -> Plan {
        PlanSet::builtin().get(name).unwrap().clone()
    }

    fn admission(node: u32, tenants: &[(TenantId, &Plan)]) -> Admission {
        let adm = Admission::new(node);
        for (t, p) in tenants {
            adm.set_tenant(*t, p).unwrap();
        }
        adm
    }

    #[test]
    fn types_are_shareable_and_permits_movable() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Admission>();
        send_sync::<CallPermit>();
        send_sync::<Refusal>();
    }

    #[test]
    fn media_workers_behind_refuse_new_calls_as_overload_for_the_tenant_or_the_node() {
        let adm = admission(1000, &[(A, &builtin("pro")), (B, &builtin("pro"))]);
        let t0 = Instant::now();
        adm.set_tenant_workers_full(A, true);
        let refusal = adm.admit(A, t0).unwrap_err();
        assert_eq!(refusal, Refusal::NodeOverload { retry_after: NODE_OVERLOAD_RETRY_AFTER_SECS });
        assert_eq!(refusal.sip_status().0, 503);
        let b_call = adm.admit(B, t0).expect("only A's share is used up");
        adm.set_node_behind(true);
        assert!(matches!(adm.admit(B, t0), Err(Refusal::NodeOverload { .. })));
        adm.set_node_behind(false);
        adm.set_tenant_workers_full(A, false);
        let a_call = adm.admit(A, t0).expect("A is served on time again");
        assert_eq!(adm.refusals(A).overload, 1);
        assert_eq!(adm.refusals(B).overload, 1);
        drop((a_call, b_call));
    }

    /// cps 5 burst 10 (the `pro` plan): ten calls at once, the eleventh refused with the bucket's wait.
    #[test]
    fn burst_then_rate_refusal_whose_retry_after_matches_the_bucket() {
        let adm = admission(1000, &[(A, &builtin("pro"))]);
        let t0 = Instant::now();
        let held: Vec<CallPermit> = (0..10).map(|_| adm.admit(A, t0).unwrap()).collect();
        let refusal = adm.admit(A, t0).unwrap_err();
        assert_eq!(refusal, Refusal::Rate { retry_after: 1 });
        assert_eq!(refusal.label(), "rate");
        assert_eq!(refusal.sip_status(), (503, "Service Unavailable - Call Rate Exceeded"));
        // The bucket's next token is due at 200 ms: not a nanosecond before.
        assert_eq!(adm.admit(A, t0 + ms(200) - Duration::from_nanos(1)).unwrap_err(), Refusal::Rate { retry_after: 1 });
        let at_200 = adm.admit(A, t0 + ms(200)).unwrap();
        // A call admitted at t0 + Retry-After passes.
        let retry = adm.admit(A, t0 + ms(200)).unwrap_err().retry_after().unwrap();
        let later = adm.admit(A, t0 + ms(200) + secs(u64::from(retry))).unwrap();
        // Rate refusals held no slot.
        assert_eq!(adm.active_calls(A), 12);
        assert_eq!(adm.node_active(), 12);
        assert_eq!(adm.refusals(A).rate, 3);
        drop((held, at_200, later));
        assert_eq!((adm.active_calls(A), adm.node_active()), (0, 0));
    }

    #[test]
    fn steady_state_admits_the_plan_rate() {
        let adm = admission(1000, &[(A, &builtin("pro"))]);
        let t0 = Instant::now();
        for _ in 0..10 {
            drop(adm.admit(A, t0).unwrap());
        }
        // Try every 10 ms for 10 fake seconds, hanging up at once: the bucket lets 5 a second through.
        let mut per_second = [0u32; 10];
        for i in 1..=1000u64 {
            if adm.admit(A, t0 + ms(10 * i)).is_ok() {
                per_second[((i - 1) / 100) as usize] += 1;
            }
        }
        assert_eq!(per_second, [5; 10]);
        assert_eq!(adm.refusals(A).rate, 1000 - 50);
    }

    #[test]
    fn retry_after_is_rounded_up_and_never_zero() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_secs(secs(1)), 1);
        assert_eq!(retry_after_secs(secs(1) + Duration::from_nanos(1)), 2);
        assert_eq!(retry_after_secs(ms(2499)), 3);
        assert_eq!(retry_after_secs(Duration::MAX), u32::MAX);

        let t0 = Instant::now();
        // 0.4 cps: a token every 2.5 s. 1 ms after the burst the wait is 2.499 s: Retry-After 3, and 3 s later it
        // passes.
        let adm = admission(10, &[(A, &plan(10, 0.4, 1, None))]);
        let _first = adm.admit(A, t0).unwrap();
        assert_eq!(adm.admit(A, t0 + ms(1)).unwrap_err(), Refusal::Rate { retry_after: 3 });
        assert_eq!(adm.admit(A, t0 + ms(2400)).unwrap_err(), Refusal::Rate { retry_after: 1 });
        let _second = adm.admit(A, t0 + ms(1) + secs(3)).unwrap();
        // A whole-second wait stays whole: 1 cps, refused at t0 with Retry-After 1 (not 2), passes at t0 + 1 s.
        let adm = admission(10, &[(A, &plan(10, 1.0, 1, None))]);
        let _first = adm.admit(A, t0).unwrap();
        assert_eq!(adm.admit(A, t0).unwrap_err(), Refusal::Rate { retry_after: 1 });
        let _second = adm.admit(A, t0 + secs(1)).unwrap();
        // A 100 µs wait (10 000 cps) is still 1 s, not 0.
        let adm = admission(10, &[(A, &plan(10, 10_000.0, 1, None))]);
        let _first = adm.admit(A, t0).unwrap();
        assert_eq!(adm.admit(A, t0 + Duration::from_nanos(1)).unwrap_err(), Refusal::Rate { retry_after: 1 });
    }

    #[test]
    fn refusal_labels_statuses_and_retry_after() {
        let cases = [
            (Refusal::Rate { retry_after: 2 }, "rate", 503, "Service Unavailable - Call Rate Exceeded", Some(2)),
            (Refusal::Concurrency { retry_after: 5 }, "concurrency", 486, "Busy Here - Concurrent Call Limit", Some(5)),
            (Refusal::Budget, "budget", 403, "Forbidden - Monthly Minutes Exhausted", None),
            (Refusal::NodeOverload { retry_after: 5 }, "overload", 503, "Service Unavailable", Some(5)),
            (
                Refusal::CircuitOpen { retry_after: 30 },
                "provider_unavailable",
                503,
                "Service Unavailable - Agent Failing",
                Some(30),
            ),
            (Refusal::Unconfigured, "unconfigured", 500, "Server Internal Error - Tenant Not Configured", None),
        ];
        for (r, label, code, phrase, retry) in cases {
            assert_eq!(r.label(), label);
            assert_eq!(r.sip_status(), (code, phrase));
            assert_eq!(r.retry_after(), retry);
            assert!(!r.to_string().is_empty());
        }
        assert_eq!(CONCURRENCY_RETRY_AFTER_SECS, 5);
        assert_eq!(NODE_OVERLOAD_RETRY_AFTER_SECS, 5);
    }

    #[test]
    fn concurrency_cap_answers_486_and_a_dropped_permit_frees_the_slot() {
        let adm = admission(100, &[(A, &plan(2, 100.0, 100, None))]);
        let t0 = Instant::now();
        let first = adm.admit(A, t0).unwrap();
        let _second = adm.admit(A, t0).unwrap();
        let refusal = adm.admit(A, t0).unwrap_err();
        assert_eq!(refusal, Refusal::Concurrency { retry_after: CONCURRENCY_RETRY_AFTER_SECS });
        assert_eq!(refusal.sip_status().0, 486);
        assert_eq!(first.tenant(), A);
        drop(first);
        assert_eq!(adm.active_calls(A), 1);
        let _third = adm.admit(A, t0).unwrap();
        assert_eq!((adm.active_calls(A), adm.node_active()), (2, 2));
        assert_eq!(adm.refusals(A).concurrency, 1);
    }

    #[test]
    fn a_refused_call_spends_no_rate_token_and_holds_no_slot() {
        let t0 = Instant::now();
        // Cap 2, exactly 3 tokens (refill negligible): two concurrency refusals must leave the third token.
        let adm = admission(100, &[(A, &plan(2, 0.001, 3, None))]);
        let first = adm.admit(A, t0).unwrap();
        let second = adm.admit(A, t0).unwrap();
        for _ in 0..2 {
            assert!(matches!(adm.admit(A, t0), Err(Refusal::Concurrency { .. })));
        }
        drop(first);
        let third = adm.admit(A, t0).unwrap();
        drop((second, third));
        assert!(matches!(adm.admit(A, t0), Err(Refusal::Rate { .. })));

        // A rate refusal holds no tenant or node slot.
        let adm = admission(100, &[(A, &plan(5, 0.001, 1, None))]);
        let _held = adm.admit(A, t0).unwrap();
        for _ in 0..3 {
            assert!(matches!(adm.admit(A, t0), Err(Refusal::Rate { .. })));
        }
        assert_eq!((adm.active_calls(A), adm.node_active()), (1, 1));

        // Node and budget refusals spend no token: A has a single token, kept through both.
        let adm = admission(1, &[(A, &plan(5, 0.001, 1, Some(1))), (B, &plan(5, 100.0, 100, None))]);
        let b_call = adm.admit(B, t0).unwrap();
        for _ in 0..3 {
            assert!(matches!(adm.admit(A, t0), Err(Refusal::NodeOverload { .. })));
        }
        drop(b_call);
        adm.add_billed_seconds(A, 60);
        for _ in 0..3 {
            assert_eq!(adm.admit(A, t0).unwrap_err(), Refusal::Budget);
        }
        adm.reset_usage(A);
        let _a_call = adm.admit(A, t0).unwrap();
        assert_eq!(adm.node_active(), 1);
    }

    #[test]
    fn node_cap_refuses_across_tenants_while_tenant_caps_are_fine() {
        let p = plan(2, 100.0, 100, None);
        let adm = admission(3, &[(A, &p), (B, &p)]);
        let t0 = Instant::now();
        let a1 = adm.admit(A, t0).unwrap();
        let _a2 = adm.admit(A, t0).unwrap();
        let _b1 = adm.admit(B, t0).unwrap();
        let refusal = adm.admit(B, t0).unwrap_err();
        assert_eq!(refusal, Refusal::NodeOverload { retry_after: NODE_OVERLOAD_RETRY_AFTER_SECS });
        assert_eq!((refusal.label(), refusal.sip_status()), ("overload", (503, "Service Unavailable")));
        assert_eq!((adm.active_calls(B), adm.node_active()), (1, 3));
        assert_eq!(adm.refusals(B).overload, 1);
        drop(a1);
        let _b2 = adm.admit(B, t0).unwrap();
        // The cap can change at run time; a cap of 0 refuses everyone, ending no call.
        adm.set_node_max_calls(0);
        assert!(matches!(adm.admit(A, t0), Err(Refusal::NodeOverload { .. })));
        assert_eq!((adm.node_active(), adm.node_max_calls()), (3, 0));
        adm.set_node_max_calls(10);
        let _a3 = adm.admit(A, t0).unwrap();
    }

    #[test]
    fn budget_refuses_after_the_limit_and_counts_down() {
        let adm = admission(100, &[(A, &plan(10, 100.0, 100, Some(1)))]);
        let t0 = Instant::now();
        let _call = adm.admit(A, t0).unwrap();
        assert_eq!(adm.remaining_seconds(A), Some(60));
        assert_eq!(adm.add_billed_seconds(A, 25), Some(35));
        assert_eq!(adm.remaining_seconds(A), Some(35));
        assert_eq!(adm.add_billed_seconds(A, 25), Some(10));
        // Seconds left: new calls still get in.
        let _second = adm.admit(A, t0).unwrap();
        // Billing saturates at the limit: never billed past it.
        assert_eq!(adm.add_billed_seconds(A, 100), Some(0));
        assert_eq!(adm.used_seconds(A), 60);
        assert_eq!(adm.add_billed_seconds(A, 5), Some(0));
        assert_eq!(adm.used_seconds(A), 60);
        let refusal = adm.admit(A, t0).unwrap_err();
        assert_eq!(refusal, Refusal::Budget);
        assert_eq!(
            (refusal.sip_status(), refusal.retry_after()),
            ((403, "Forbidden - Monthly Minutes Exhausted"), None)
        );
        assert_eq!(adm.refusals(A).budget, 1);
        // Month rollover.
        adm.reset_usage(A);
        assert_eq!(adm.remaining_seconds(A), Some(60));
        let _third = adm.admit(A, t0).unwrap();

        // Unlimited: no remaining count, usage still recorded.
        let adm = admission(100, &[(A, &builtin("enterprise"))]);
        assert_eq!(adm.remaining_seconds(A), None);
        assert_eq!(adm.add_billed_seconds(A, 1_000_000), None);
        assert_eq!(adm.used_seconds(A), 1_000_000);
        let _call = adm.admit(A, t0).unwrap();

        // Zero minutes admits nothing.
        let adm = admission(100, &[(A, &plan(10, 100.0, 100, Some(0)))]);
        assert_eq!(adm.admit(A, t0).unwrap_err(), Refusal::Budget);
    }

    #[test]
    fn a_plan_change_keeps_usage_calls_and_counts() {
        let small = plan(2, 100.0, 100, Some(1));
        let big = plan(5, 100.0, 100, Some(10));
        let adm = admission(100, &[(A, &small)]);
        let t0 = Instant::now();
        let held: Vec<CallPermit> = (0..2).map(|_| adm.admit(A, t0).unwrap()).collect();
        adm.add_billed_seconds(A, 60);
        assert_eq!(adm.admit(A, t0).unwrap_err(), Refusal::Budget);

        adm.set_tenant(A, &big).unwrap();
        assert_eq!(adm.used_seconds(A), 60);
        assert_eq!(adm.remaining_seconds(A), Some(540));
        assert_eq!(adm.active_calls(A), 2);
        let third = adm.admit(A, t0).unwrap();

        // Back to the small plan: over its budget and its cap, but nothing is ended.
        adm.set_tenant(A, &small).unwrap();
        assert_eq!(adm.remaining_seconds(A), Some(0));
        assert_eq!(adm.active_calls(A), 3);
        assert_eq!(adm.admit(A, t0).unwrap_err(), Refusal::Budget);
        assert_eq!(adm.refusals(A).budget, 2);
        adm.set_tenant(A, &builtin("enterprise")).unwrap();
        assert_eq!(adm.plan_name(A).as_deref(), Some("enterprise"));
        assert_eq!(adm.remaining_seconds(A), None);
        drop((held, third));
        assert_eq!((adm.active_calls(A), adm.node_active()), (0, 0));
    }

    #[test]
    fn a_plan_change_keeps_the_bucket_unless_the_quota_changes() {
        let t0 = Instant::now();
        let adm = admission(100, &[(A, &plan(10, 0.001, 1, None))]);
        drop(adm.admit(A, t0).unwrap());
        // Same rate and burst, another cap: the bucket is still empty.
        adm.set_tenant(A, &plan(20, 0.001, 1, None)).unwrap();
        assert!(matches!(adm.admit(A, t0), Err(Refusal::Rate { .. })));
        // Another burst: a fresh, full bucket.
        adm.set_tenant(A, &plan(20, 0.001, 2, None)).unwrap();
        drop(adm.admit(A, t0).unwrap());
        drop(adm.admit(A, t0).unwrap());
        assert!(matches!(adm.admit(A, t0), Err(Refusal::Rate { .. })));
    }

    #[test]
    fn every_refusal_is_counted_per_tenant_and_reason() {
        let adm = admission(100, &[(A, &plan(1, 0.001, 2, Some(1))), (B, &builtin("pro"))]);
        let t0 = Instant::now();
        let call = adm.admit(A, t0).unwrap();
        assert!(adm.admit(A, t0).is_err()); // concurrency
        drop(call);
        drop(adm.admit(A, t0).unwrap());
        assert!(adm.admit(A, t0).is_err()); // rate
        assert!(adm.admit(A, t0).is_err()); // rate
        adm.add_billed_seconds(A, 60);
        assert!(adm.admit(A, t0).is_err()); // budget
        adm.set_node_max_calls(0);
        assert!(adm.admit(A, t0).is_err()); // overload
        adm.record_refusal(A, &Refusal::CircuitOpen { retry_after: 30 });
        let counts = adm.refusals(A);
        assert_eq!(counts, RefusalCounts { rate: 2, concurrency: 1, budget: 1, overload: 1, provider_unavailable: 1 });
        assert_eq!(counts.total(), 6);
        let labels: Vec<_> = counts.iter().collect();
        assert_eq!(
            labels,
            vec![("rate", 2), ("concurrency", 1), ("budget", 1), ("overload", 1), ("provider_unavailable", 1)]
        );
        assert_eq!(adm.refusals(B), RefusalCounts::default());
    }

    #[test]
    fn an_unconfigured_tenant_is_refused_not_panicked_on() {
        let adm = Admission::new(10);
        let t0 = Instant::now();
        let refusal = adm.admit(TenantId(3), t0).unwrap_err();
        assert_eq!(refusal, Refusal::Unconfigured);
        assert_eq!(refusal.sip_status().0, 500);
        // Setting tenant 2 leaves 0 and 1 as unconfigured gaps.
        adm.set_tenant(TenantId(2), &builtin("free")).unwrap();
        assert_eq!(adm.admit(TenantId(0), t0).unwrap_err(), Refusal::Unconfigured);
        assert!(adm.admit(TenantId(2), t0).is_ok());
        assert_eq!(adm.unconfigured_refusals(), 2);
        assert_eq!(adm.remaining_seconds(TenantId(0)), Some(0));
        assert_eq!(adm.remaining_seconds(TenantId(9)), Some(0));
        assert_eq!(adm.add_billed_seconds(TenantId(9), 5), Some(0));
        assert_eq!(adm.plan_name(TenantId(0)), None);
        assert_eq!(adm.plan_name(TenantId(2)).as_deref(), Some("free"));
        assert_eq!((adm.active_calls(TenantId(9)), adm.refusals(TenantId(9))), (0, RefusalCounts::default()));
        assert_eq!(
            adm.set_tenant(TenantId(u32::MAX), &builtin("free")),
            Err(AdmissionError::TenantIdTooLarge(u32::MAX))
        );
        assert_eq!(
            adm.set_tenant(TenantId(MAX_TENANTS), &builtin("free")),
            Err(AdmissionError::TenantIdTooLarge(MAX_TENANTS))
        );
    }

    /// Tenant B's answers, one per step, with A idle or hammering its rate, cap and budget in between.
    fn b_answers(noisy_a: bool) -> (Vec<Result<(), Refusal>>, RefusalCounts, Option<u64>, Admission) {
        let adm = admission(10_000, &[(A, &plan(3, 2.0, 4, Some(1))), (B, &plan(2, 1.0, 2, Some(2)))]);
        let t0 = Instant::now();
        let mut a_held = Vec::new();
        let mut b_held = Vec::new();
        let mut answers = Vec::new();
        for step in 0..200u64 {
            let now = t0 + ms(100 * step);
            if noisy_a {
                for _ in 0..20 {
                    if let Ok(p) = adm.admit(A, now) {
                        a_held.push(p);
                    }
                }
                adm.add_billed_seconds(A, 7);
                if step % 5 == 4 {
                    a_held.clear();
                }
            }
            let answer = adm.admit(B, now).map(|p| b_held.push(p));
            answers.push(answer);
            if step % 7 == 6 {
                b_held.clear();
            }
            adm.add_billed_seconds(B, 1);
        }
        drop(a_held);
        (answers, adm.refusals(B), adm.remaining_seconds(B), adm)
    }

    #[test]
    fn a_noisy_tenant_never_changes_another_tenants_answers() {
        let (quiet, quiet_counts, quiet_left, _) = b_answers(false);
        let (noisy, noisy_counts, noisy_left, adm) = b_answers(true);
        assert_eq!(quiet, noisy);
        assert_eq!((quiet_counts, quiet_left), (noisy_counts, noisy_left));
        // B's script meets each of its own limits, so the comparison is not vacuous...
        assert!(quiet_counts.rate > 0 && quiet_counts.concurrency > 0 && quiet_counts.budget > 0, "{quiet_counts:?}");
        // ...and A did exhaust its rate, its cap and its budget.
        let a = adm.refusals(A);
        assert!(a.rate > 0 && a.concurrency > 0 && a.budget > 0, "{a:?}");
    }

    #[test]
    fn permits_dropped_on_other_threads_release_their_slots() {
        let adm = Arc::new(admission(1000, &[(A, &plan(50, 10_000.0, 100_000, None)), (B, &builtin("pro"))]));
        let t0 = Instant::now();
        let mut held: Vec<CallPermit> = (0..40).map(|_| adm.admit(A, t0).unwrap()).collect();
        held.extend((0..10).map(|_| adm.admit(B, t0).unwrap()));
        assert_eq!(adm.node_active(), 50);
        let mut chunks = Vec::new();
        while !held.is_empty() {
            let rest = held.split_off(held.len().saturating_sub(7));
            chunks.push(rest);
        }
        std::thread::scope(|s| {
            for chunk in chunks {
                s.spawn(move || drop(chunk));
            }
        });
        assert_eq!((adm.active_calls(A), adm.active_calls(B), adm.node_active()), (0, 0, 0));
    }

    #[test]
    fn concurrent_admits_never_exceed_the_caps() {
        let p = plan(50, 10_000.0, 100_000, None);
        let adm = admission(70, &[(A, &p), (B, &p), (TenantId(2), &p)]);
        let t0 = Instant::now();
        let admitted: Vec<Vec<CallPermit>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..6u32)
                .map(|i| {
                    let adm = &adm;
                    s.spawn(move || (0..60).filter_map(|_| adm.admit(TenantId(i % 3), t0).ok()).collect::<Vec<_>>())
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let total: usize = admitted.iter().map(Vec::len).sum();
        assert_eq!(total, 70);
        assert_eq!(adm.node_active(), 70);
        for t in 0..3 {
            assert!(adm.active_calls(TenantId(t)) <= 50);
        }
        drop(admitted);
        assert_eq!(adm.node_active(), 0);
    }

    mod no_leaks {
        use super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            Admit(u32),
            Drop(usize),
            Advance(u64),
            Bill(u32, u64),
            Reset(u32),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                4 => (0..3u32).prop_map(Op::Admit),
                3 => any::<usize>().prop_map(Op::Drop),
                1 => (0..2000u64).prop_map(Op::Advance),
                1 => (0..3u32, 0..40u64).prop_map(|(t, s)| Op::Bill(t, s)),
                1 => (0..3u32).prop_map(Op::Reset),
            ]
        }

        proptest! {
            /// Random admit/drop/bill sequences across three tenants: the counts always equal the permits held, no
            /// cap is ever passed, every refusal is the one the order of checks predicts, and dropping every permit
            /// brings all counts to zero.
            #[test]
            fn counts_track_permits_and_return_to_zero(ops in proptest::collection::vec(op(), 0..300)) {
                let caps = [3u32, 2, 10];
                let plans = [plan(3, 5.0, 2, None), plan(2, 100.0, 100, Some(1)), plan(10, 1.0, 1, Some(2))];
                let node_cap = 8u32;
                let adm = Admission::new(node_cap);
                for (t, p) in plans.iter().enumerate() {
                    adm.set_tenant(TenantId(t as u32), p).unwrap();
                }
                let mut now = Instant::now();
                let mut held: Vec<CallPermit> = Vec::new();
                for op in ops {
                    match op {
                        Op::Admit(t) => {
                            let tenant = TenantId(t);
                            let mine = held.iter().filter(|p| p.tenant() == tenant).count() as u32;
                            let node_full = held.len() as u32 >= node_cap;
                            let broke = adm.remaining_seconds(tenant) == Some(0);
                            match adm.admit(tenant, now) {
                                Ok(p) => {
                                    prop_assert!(!node_full && !broke && mine < caps[t as usize]);
                                    held.push(p);
                                }
                                Err(Refusal::NodeOverload { .. }) => prop_assert!(node_full),
                                Err(Refusal::Budget) => prop_assert!(!node_full && broke),
                                Err(Refusal::Concurrency { .. }) => {
                                    prop_assert!(!node_full && !broke && mine >= caps[t as usize]);
                                }
                                Err(Refusal::Rate { retry_after }) => {
                                    prop_assert!(!node_full && !broke && mine < caps[t as usize]);
                                    prop_assert!(retry_after >= 1);
                                }
                                Err(other) => prop_assert!(false, "unexpected {other:?}"),
                            }
                        }
                        Op::Drop(i) => {
                            if !held.is_empty() {
                                let i = i % held.len();
                                drop(held.swap_remove(i));
                            }
                        }
                        Op::Advance(m) => now += ms(m),
                        Op::Bill(t, s) => {
                            adm.add_billed_seconds(TenantId(t), s);
                        }
                        Op::Reset(t) => adm.reset_usage(TenantId(t)),
                    }
                    for t in 0..3u32 {
                        let mine = held.iter().filter(|p| p.tenant() == TenantId(t)).count() as u32;
                        prop_assert_eq!(adm.active_calls(TenantId(t)), mine);
                        prop_assert!(mine <= caps[t as usize]);
                    }
                    prop_assert_eq!(adm.node_active(), held.len() as u32);
                    prop_assert!(adm.node_active() <= node_cap);
                }
                drop(held);
                for t in 0..3u32 {
                    prop_assert_eq!(adm.active_calls(TenantId(t)), 0);
                }
                prop_assert_eq!(adm.node_active(), 0);
            }
        }
    }
}
