//! The per (tenant, app) circuit breaker: stops sending a tenant's calls to its agent after the agent failed several
//! times in a row, so callers get a fast `503` with a `Retry-After` instead of each waiting out a connect timeout,
//! and probes the agent with one trial call once the cool-down is over. Owns the breaker state machine
//! ([`CircuitBreaker`], sans-IO) and a table of breakers per (tenant, app) that only grows ([`Breakers`]).
//!
//! # States
//!
//! ```text
//!            failure_threshold consecutive failures
//!   Closed ------------------------------------------> Open (until now + cool_down)
//!     ^                                                  |  check() after the cool-down
//!     |   trial (or any) call succeeds                   v
//!     +------------------------------------------- HalfOpen: one trial call let through
//!                                                        |  trial fails
//!                                  Open <----------------+
//! ```
//!
//! - **Closed**: every call passes ([`Pass::Normal`]). A success resets the count of consecutive failures.
//! - **Open**: every call is refused with [`Refusal::CircuitOpen`], `retry_after` = the remaining cool-down rounded
//!   up (at least 1 s). Outcomes of calls that were let in before the circuit opened are ignored: the cool-down
//!   stands.
//! - **HalfOpen**: the first [`CircuitBreaker::check`] after the cool-down gets [`Pass::Trial`]; others are refused
//!   (retry after the trial's lease) until an outcome is recorded. A success closes the circuit, a failure reopens it
//!   for a full cool-down. If the trial never reaches the agent (admission refused it, the caller cancelled), the
//!   caller hands it back with [`CircuitBreaker::cancel_trial`]; if nobody reports, the trial's lease
//!   (`trial_timeout`) expires and the next call becomes the trial, so the breaker cannot wedge half-open.
//!
//! # What counts
//!
//! The integrator records a **failure** when the agent could not be reached (connect refused, handshake failed,
//! connect timeout) or closed the stream abnormally early in the call, and a **success** once the agent is
//! connected and streaming. Recommended order on an INVITE: `check` the breaker, then `Admission::admit`; when
//! admission refuses a call that held [`Pass::Trial`], call `cancel_trial`. A breaker refusal is counted through
//! `Admission::record_refusal` (label `provider_unavailable`).
//!
//! # Time
//!
//! sans-IO: every method that depends on time takes `now: Instant`.

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::sched::admission::{Refusal, retry_after_secs};
use crate::tenant::TenantId;

/// Breaker tuning, the same for every (tenant, app).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit. Default 5.
    pub failure_threshold: NonZeroU32,
    /// How long the circuit stays open before a trial call. Default 30 s (the `Retry-After` the SIP layer sends
    /// today when the agent is unreachable).
    pub cool_down: Duration,
    /// How long a half-open trial may go without an outcome before another call becomes the trial. Default 30 s.
    pub trial_timeout: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            failure_threshold: NonZeroU32::new(5).unwrap_or(NonZeroU32::MIN),
            cool_down: Duration::from_secs(30),
            trial_timeout: Duration::from_secs(30),
        }
    }
}

/// What [`CircuitBreaker::check`] lets through.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Pass {
    /// The circuit is closed.
    Normal,
    /// The single half-open probe: its outcome decides whether the circuit closes or reopens.
    Trial,
}

/// The state as seen at some `now`, e.g. for the `fairvox_provider_circuit_open{tenant,app}` gauge.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// Cool-down running: calls are refused.
    Open,
    /// Cool-down over: a trial is due or in flight.
    HalfOpen,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Inner {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// `lease`: when the trial in flight is presumed lost; `None` when no trial has been handed out yet.
    HalfOpen {
        lease: Option<Instant>,
    },
}

/// One (tenant, app)'s breaker. sans-IO and `&mut self`: wrap it in a lock to share it (as [`Breakers`] does).
#[derive(Clone, Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    inner: Inner,
}

impl CircuitBreaker {
    pub fn new(config: BreakerConfig) -> CircuitBreaker {
        CircuitBreaker { config, inner: Inner::Closed { failures: 0 } }
    }

    /// May a call go to the agent at `now`? [`Pass::Trial`] marks the one half-open probe.
    pub fn check(&mut self, now: Instant) -> Result<Pass, Refusal> {
        match self.inner {
            Inner::Closed { .. } => Ok(Pass::Normal),
            Inner::Open { until } if now < until => {
                Err(Refusal::CircuitOpen { retry_after: retry_after_secs(until - now) })
            }
            Inner::HalfOpen { lease: Some(lease) } if now < lease => {
                Err(Refusal::CircuitOpen { retry_after: retry_after_secs(lease - now) })
            }
            // Cool-down over, no trial yet, or the last trial's lease ran out: this call is the trial.
            Inner::Open { .. } | Inner::HalfOpen { .. } => {
                self.inner = Inner::HalfOpen { lease: Some(now + self.config.trial_timeout) };
                Ok(Pass::Trial)
            }
        }
    }

    /// The agent took a call. Closes a half-open circuit; resets the failure count of a closed one.
    pub fn record_success(&mut self, _now: Instant) {
        match self.inner {
            Inner::Closed { .. } | Inner::HalfOpen { .. } => self.inner = Inner::Closed { failures: 0 },
            Inner::Open { .. } => {}
        }
    }

    /// The agent failed a call. Opens the circuit at the threshold, or reopens a half-open one.
    pub fn record_failure(&mut self, now: Instant) {
        match self.inner {
            Inner::Closed { failures } => {
                let failures = failures.saturating_add(1);
                self.inner = if failures >= self.config.failure_threshold.get() {
                    Inner::Open { until: now + self.config.cool_down }
                } else {
                    Inner::Closed { failures }
                };
            }
            Inner::HalfOpen { .. } => self.inner = Inner::Open { until: now + self.config.cool_down },
            Inner::Open { .. } => {}
        }
    }

    /// The call that held [`Pass::Trial`] never reached the agent: the next call becomes the trial.
    pub fn cancel_trial(&mut self) {
        if let Inner::HalfOpen { .. } = self.inner {
            self.inner = Inner::HalfOpen { lease: None };
        }
    }

    /// `true` while the cool-down runs (calls refused), for the `fairvox_provider_circuit_open` gauge.
    pub fn is_open(&self, now: Instant) -> bool {
        self.state(now) == BreakerState::Open
    }

    pub fn state(&self, now: Instant) -> BreakerState {
        match self.inner {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { until } if now < until => BreakerState::Open,
            Inner::Open { .. } | Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Failures in a row while closed (0 when open or half-open).
    pub fn consecutive_failures(&self) -> u32 {
        match self.inner {
            Inner::Closed { failures } => failures,
            _ => 0,
        }
    }
}

/// A breaker per (tenant, app), shaped like the routing snapshot: `apps_per_tenant[t]` breakers for `TenantId(t)`,
/// indexed by the app's position (`Route::app`). Built from `snapshot.tenants().iter().map(|t| t.apps.len())`, and
/// grown with [`Breakers::ensure`] when a tenant or an app appears (the control plane keeps positions stable: an app
/// keeps its position for the life of the process). Each breaker has its own short lock: tenants never contend; the
/// table's read lock is taken for one breaker operation, and its write lock only to grow.
#[derive(Debug)]
pub struct Breakers {
    config: BreakerConfig,
    table: RwLock<Vec<Box<[Mutex<CircuitBreaker>]>>>,
}

impl Breakers {
    pub fn new(config: BreakerConfig, apps_per_tenant: impl IntoIterator<Item = usize>) -> Breakers {
        let table = apps_per_tenant
            .into_iter()
            .map(|apps| (0..apps).map(|_| Mutex::new(CircuitBreaker::new(config))).collect())
            .collect();
        Breakers { config, table: RwLock::new(table) }
    }

    /// Makes room for `apps` breakers of `tenant` (and for every tenant before it), keeping the state of the
    /// breakers that exist. Never shrinks.
    pub fn ensure(&self, tenant: TenantId, apps: usize) {
        let t = tenant.0 as usize;
        if self.table.read().get(t).is_some_and(|row| row.len() >= apps) {
            return;
        }
        let mut table = self.table.write();
        while table.len() <= t {
            table.push(Box::new([]));
        }
        if table[t].len() < apps {
            let mut row = std::mem::take(&mut table[t]).into_vec();
            row.extend((row.len()..apps).map(|_| Mutex::new(CircuitBreaker::new(self.config))));
            table[t] = row.into_boxed_slice();
        }
    }

    /// Runs `f` on the (tenant, app)'s breaker; `None` when it has none.
    fn with<T>(&self, tenant: TenantId, app: usize, f: impl FnOnce(&mut CircuitBreaker) -> T) -> Option<T> {
        let table = self.table.read();
        let breaker = table.get(tenant.0 as usize)?.get(app)?;
        Some(f(&mut breaker.lock()))
    }

    /// [`CircuitBreaker::check`]; a (tenant, app) outside the table has no breaker and passes.
    pub fn check(&self, tenant: TenantId, app: usize, now: Instant) -> Result<Pass, Refusal> {
        self.with(tenant, app, |b| b.check(now)).unwrap_or(Ok(Pass::Normal))
    }

    pub fn record_success(&self, tenant: TenantId, app: usize, now: Instant) {
        self.with(tenant, app, |b| b.record_success(now));
    }

    pub fn record_failure(&self, tenant: TenantId, app: usize, now: Instant) {
        self.with(tenant, app, |b| b.record_failure(now));
    }

    pub fn cancel_trial(&self, tenant: TenantId, app: usize) {
        self.with(tenant, app, |b| b.cancel_trial());
    }

    pub fn is_open(&self, tenant: TenantId, app: usize, now: Instant) -> bool {
        self.with(tenant, app, |b| b.is_open(now)).unwrap_or(false)
    }

    /// Every (tenant, app) with its open flag at `now`, for the gauge.
    pub fn open_flags(&self, now: Instant) -> impl Iterator<Item = (TenantId, usize, bool)> + use<> {
        let table = self.table.read();
        let flags: Vec<_> = table
            .iter()
            .enumerate()
            .flat_map(|(t, apps)| {
                apps.iter().enumerate().map(move |(a, b)| (TenantId(t as u32), a, b.lock().is_open(now)))
            })
            .collect();
        flags.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    fn ms(m: u64) -> Duration {
        Duration::from_millis(m)
    }

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig::default())
    }

    /// Drives a default breaker open at `t0` (5 failures).
    fn opened(t0: Instant) -> CircuitBreaker {
        let mut b = breaker();
        for _ in 0..5 {
            assert_eq!(b.check(t0), Ok(Pass::Normal));
            b.record_failure(t0);
        }
        b
    }

    #[test]
    fn defaults_are_five_failures_and_thirty_seconds() {
        let c = BreakerConfig::default();
        assert_eq!((c.failure_threshold.get(), c.cool_down, c.trial_timeout), (5, secs(30), secs(30)));
    }

    #[test]
    fn opens_after_threshold_consecutive_failures_only() {
        let t0 = Instant::now();
        let mut b = breaker();
        for i in 1..=4 {
            b.record_failure(t0);
            assert_eq!(b.consecutive_failures(), i);
            assert_eq!(b.check(t0), Ok(Pass::Normal));
        }
        // A success in between resets the run: four more failures do not open it.
        b.record_success(t0);
        assert_eq!(b.consecutive_failures(), 0);
        for _ in 0..4 {
            b.record_failure(t0);
        }
        assert!(!b.is_open(t0));
        b.record_failure(t0);
        assert!(b.is_open(t0));
        assert_eq!(b.state(t0), BreakerState::Open);
    }

    #[test]
    fn open_refuses_with_the_remaining_cool_down_rounded_up() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let refusal = b.check(t0).unwrap_err();
        assert_eq!(refusal, Refusal::CircuitOpen { retry_after: 30 });
        assert_eq!(refusal.label(), "provider_unavailable");
        assert_eq!(refusal.sip_status(), (503, "Service Unavailable - Agent Failing"));
        assert_eq!(b.check(t0 + ms(500)), Err(Refusal::CircuitOpen { retry_after: 30 }));
        assert_eq!(b.check(t0 + secs(29)), Err(Refusal::CircuitOpen { retry_after: 1 }));
        // Never 0, even a nanosecond before the end.
        assert_eq!(b.check(t0 + secs(30) - Duration::from_nanos(1)), Err(Refusal::CircuitOpen { retry_after: 1 }));
        // Late outcomes of calls let in before it opened change nothing.
        b.record_success(t0 + secs(10));
        b.record_failure(t0 + secs(10));
        assert_eq!(b.check(t0 + secs(20)), Err(Refusal::CircuitOpen { retry_after: 10 }));
    }

    #[test]
    fn half_open_admits_exactly_one_trial_and_success_closes() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let t1 = t0 + secs(30);
        assert!(!b.is_open(t1));
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert_eq!(b.check(t1), Ok(Pass::Trial));
        for i in 0..10 {
            let r = b.check(t1 + ms(i * 100)).unwrap_err();
            assert!(matches!(r, Refusal::CircuitOpen { retry_after } if retry_after >= 1), "{r:?}");
        }
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        b.record_success(t1 + secs(1));
        assert_eq!(b.state(t1 + secs(1)), BreakerState::Closed);
        assert_eq!(b.check(t1 + secs(1)), Ok(Pass::Normal));
        assert_eq!(b.check(t1 + secs(1)), Ok(Pass::Normal));
    }

    #[test]
    fn a_failed_trial_reopens_for_a_full_cool_down() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let t1 = t0 + secs(31);
        assert_eq!(b.check(t1), Ok(Pass::Trial));
        b.record_failure(t1 + secs(2));
        assert!(b.is_open(t1 + secs(2)));
        assert_eq!(b.check(t1 + secs(2)), Err(Refusal::CircuitOpen { retry_after: 30 }));
        assert_eq!(b.check(t1 + secs(32)), Ok(Pass::Trial));
    }

    #[test]
    fn a_lost_or_cancelled_trial_does_not_wedge_the_breaker() {
        let t0 = Instant::now();
        let mut b = opened(t0);
        let t1 = t0 + secs(30);
        assert_eq!(b.check(t1), Ok(Pass::Trial));
        // Admission refused the trial call: handed back, the next call is the trial.
        b.cancel_trial();
        assert_eq!(b.check(t1 + ms(1)), Ok(Pass::Trial));
        // Nobody reports this one: refused until its lease runs out, then a new trial.
        assert_eq!(b.check(t1 + secs(10)), Err(Refusal::CircuitOpen { retry_after: 21 }));
        assert_eq!(b.check(t1 + ms(1) + secs(30)), Ok(Pass::Trial));
        // cancel_trial does nothing outside half-open.
        let mut closed = breaker();
        closed.cancel_trial();
        assert_eq!(closed.check(t0), Ok(Pass::Normal));
    }

    #[test]
    fn threshold_one_and_zero_cool_down() {
        let t0 = Instant::now();
        let config =
            BreakerConfig { failure_threshold: NonZeroU32::MIN, cool_down: Duration::ZERO, ..Default::default() };
        let mut b = CircuitBreaker::new(config);
        b.record_failure(t0);
        // Opened and over at once: the very next check is the trial.
        assert!(!b.is_open(t0));
        assert_eq!(b.check(t0), Ok(Pass::Trial));
    }

    #[test]
    fn breakers_are_per_tenant_and_app() {
        let t0 = Instant::now();
        let set = Breakers::new(BreakerConfig::default(), [2, 1]);
        for _ in 0..5 {
            set.record_failure(TenantId(0), 1, t0);
        }
        assert!(set.is_open(TenantId(0), 1, t0));
        assert_eq!(set.check(TenantId(0), 1, t0), Err(Refusal::CircuitOpen { retry_after: 30 }));
        // Another app of the same tenant, and another tenant, are untouched.
        assert_eq!(set.check(TenantId(0), 0, t0), Ok(Pass::Normal));
        assert_eq!(set.check(TenantId(1), 0, t0), Ok(Pass::Normal));
        // Unknown (tenant, app): no breaker, passes, never open.
        assert_eq!(set.check(TenantId(7), 0, t0), Ok(Pass::Normal));
        assert!(!set.is_open(TenantId(0), 9, t0));
        let flags: Vec<_> = set.open_flags(t0).collect();
        assert_eq!(flags, vec![(TenantId(0), 0, false), (TenantId(0), 1, true), (TenantId(1), 0, false)]);
        assert_eq!(set.check(TenantId(0), 1, t0 + secs(30)), Ok(Pass::Trial));
        set.cancel_trial(TenantId(0), 1);
        assert_eq!(set.check(TenantId(0), 1, t0 + secs(30)), Ok(Pass::Trial));
        set.record_success(TenantId(0), 1, t0 + secs(31));
        assert_eq!(set.check(TenantId(0), 1, t0 + secs(31)), Ok(Pass::Normal));
    }

    #[test]
    fn breakers_grow_and_keep_their_state() {
        let t0 = Instant::now();
        let set = Breakers::new(BreakerConfig::default(), [1]);
        for _ in 0..5 {
            set.record_failure(TenantId(0), 0, t0);
        }
        set.ensure(TenantId(0), 2);
        set.ensure(TenantId(2), 1);
        set.ensure(TenantId(0), 1);
        assert!(set.is_open(TenantId(0), 0, t0), "growing keeps the open circuit");
        let flags: Vec<_> = set.open_flags(t0).collect();
        assert_eq!(flags, vec![(TenantId(0), 0, true), (TenantId(0), 1, false), (TenantId(2), 0, false)]);
        for _ in 0..5 {
            set.record_failure(TenantId(2), 0, t0);
        }
        assert!(set.is_open(TenantId(2), 0, t0), "a grown breaker works");
    }

    #[test]
    fn breakers_are_shareable() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Breakers>();
    }
}
