//! The bulkheaded worker pool: `N` OS threads that drive a [`Scheduler`] and run a caller's handler per item.
//!
//! Owns the worker threads, their wake-ups, the per-tenant cap on workers held at once, panic isolation, and the
//! per-tenant processing counters. The queue stays sans-IO; this module is its driver and the only place in
//! `sched` that reads the clock (`Instant::now()` in the worker loop, for deadline checks and waits).
//!
//! Items come in two ways: [`Bulkhead::submit`] from any thread, and, for a pool started with
//! [`Bulkhead::start_with_source`], a [`Source`] that the workers themselves poll (the media workers' epoll set of
//! RTP sockets, `transport::ingress`). A source moves the *discovery* of work onto the workers: nothing outside
//! them (no async task, no other thread) has to wake up to queue an item, and everything found is queued before the
//! next pop, so it competes in the scheduler's order at once.
//!
//! * **Shared state** is one `parking_lot::Mutex` around the scheduler and the counters, held only to push, or
//!   to record the end of one item and pop the next (one lock round per item), never while a handler runs or a
//!   source is polled.
//! * **Wake-ups**: a worker that finds nothing to pop waits. Without a source it waits on a `Condvar` (no
//!   spinning) after counting itself idle. With a source, one idle worker at a time (the *poller*) waits in the
//!   source instead (`poll(block = true)`: `epoll_wait`), the others on the `Condvar`; a worker that takes an item
//!   while others are idle and nobody polls hands the poller's role on (leader/followers), so readiness is always
//!   watched while a worker is free. Between items a worker polls the source without waiting, unless a poller is
//!   already watching it. `submit` notifies one `Condvar` worker when some are idle and the pushed item can be
//!   served now, or else wakes the poller (`Source::wake`). A worker that pops while more work is ready and others
//!   idle passes the wake-up on, so a burst wakes workers one by one without a thundering herd. Everything is
//!   checked and waited under the same mutex (the poller's role is taken and given back under it), so no wake-up
//!   is lost.
//! * **Again**: a handler may hand its item back (`Some(item)` from a [`Bulkhead::start_with_source`] handler);
//!   it is queued again at the back of its tenant's queue, under the lock the worker takes anyway to pop its next
//!   item. The media workers use it for a call that may have more packets waiting.
//! * **Bulkhead**: each tenant holds at most `max_in_flight` workers at once: its configured cap, or else its
//!   weighted share `ceil(N * weight / total_weight)`, always within `1..=N`. The fair queue parks a tenant at its
//!   cap (it keeps its deficit) so its slow items can never occupy every worker; the others keep flowing. The
//!   price: a lone busy tenant is not given more than its cap even when other workers are idle. (In `fifo` mode
//!   caps are not enforced: that is the unprotected comparison.)
//! * **Load**: each tenant's handler time is summed under the lock the worker takes anyway after an item, and
//!   [`Bulkhead::load`] reads the worker threads' CPU clocks, so a monitor can tell how busy the pool is and whose
//!   work kept it busy (`transport::ingress::CapacityTracker`).
//! * **Placement**: each worker pins itself to its CPU and takes its real-time priority (`sched::cpus`) before it
//!   serves anything, and reports back; a pool whose workers cannot be placed as configured does not start. A
//!   real-time worker keeps a duty cycle under the kernel's real-time limit ([`cpus::RestGuard`]), counting the
//!   time it blocks as rest and resting when saturated.
//! * **Panics** in the handler are caught per item (`catch_unwind`), counted for the tenant, and end only that item.
//! * **Refusals** of items from a source or handed back (queue full, unknown tenant, shut down) go back to the
//!   source ([`Source::refused`]), on the worker and outside the lock, so it can account them.

use std::num::NonZeroUsize;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::sched::cpus;
use crate::sched::wfq::{
    ConfigError, RefuseReason, Refused, Scheduler, SchedulerKind, TenantConfig, TenantStats, slot_index,
};
use crate::tenant::TenantId;

/// How to run the pool.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BulkheadConfig {
    /// Worker threads; 0 means one per core (`available_parallelism`), or one per CPU of `pin` if it names any.
    pub workers: usize,
    pub scheduler: SchedulerKind,
    /// See [`Wfq::new`](crate::sched::wfq::Wfq::new): the weight-1 credit per round and the largest item cost.
    pub quantum: u32,
    /// CPUs to pin the workers to, worker `i` to `pin[i % pin.len()]` (see [`crate::sched::cpus`]); empty: not
    /// pinned.
    pub pin: Vec<usize>,
    /// `SCHED_FIFO` priority for the workers ([`crate::sched::cpus::set_realtime`]); `None`: the normal policy.
    pub realtime: Option<u8>,
}

impl Default for BulkheadConfig {
    fn default() -> Self {
        BulkheadConfig { workers: 0, scheduler: SchedulerKind::Fair, quantum: 1, pin: Vec::new(), realtime: None }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BulkheadError {
    #[error("cannot start a scheduler worker thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("scheduler worker {worker} cannot be pinned to cpu {cpu}: {source}")]
    Pin {
        worker: usize,
        cpu: usize,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "media.realtime_priority: scheduler worker {worker} cannot run at SCHED_FIFO priority {priority}: {source} \
         (it needs root, CAP_SYS_NICE or an RLIMIT_RTPRIO of at least {priority})"
    )]
    Realtime {
        worker: usize,
        priority: u8,
        #[source]
        source: std::io::Error,
    },
}

/// One tenant's view of the pool.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BulkheadStats {
    /// Queue counters: enqueued, dequeued, drops by reason, wait histogram (push to start of processing).
    pub queue: TenantStats,
    /// Items whose handler returned.
    pub processed: u64,
    /// Items whose handler panicked.
    pub panics: u64,
    /// Workers this tenant may hold at once, as now computed.
    pub max_in_flight: u32,
}

/// The pool as a whole.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    pub workers: usize,
    /// Workers waiting for work (on the `Condvar`, or in the source).
    pub idle_workers: usize,
    pub queued: usize,
    pub refused_unknown_tenant: u64,
    pub refused_shut_down: u64,
    /// Items drained by `shutdown` (also counted per tenant as `dropped_drained`).
    pub dropped_at_shutdown: u64,
    pub shut_down: bool,
}

/// Cumulative load of the pool; see [`Bulkhead::load`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolLoad {
    pub workers: usize,
    /// CPU time the worker threads used (user and system, as the kernel counts it), summed over workers: what the
    /// workers cost their cores, polling and syscalls included.
    pub cpu: Duration,
    /// By `TenantId`.
    pub tenants: Vec<TenantLoad>,
    /// Rests the real-time workers took to stay under the kernel's real-time limit ([`cpus::RestGuard`]); only a
    /// worker busy beyond its duty cycle for a sustained stretch takes one, so a count that grows means the workers
    /// are saturated.
    pub rests: u64,
}

/// One tenant's part of a [`PoolLoad`].
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantLoad {
    /// Plan weight; 0 for a slot not configured (or removed).
    pub weight: u32,
    /// Time workers spent in the tenant's handler calls.
    pub busy: Duration,
}

/// A handler: serves one item, and may hand it back to be queued again.
type Handler<T> = dyn Fn(TenantId, T) -> Option<T> + Send + Sync;

/// Most items one poll of a [`Source`] may return.
pub const SOURCE_BATCH: usize = 64;

/// Where the workers find items besides [`Bulkhead::submit`]; see the module docs. Items from a source cost 1.
pub trait Source<T>: Send + Sync + 'static {
    /// Appends what became ready to `ready`, at most up to its spare capacity (it never grows `ready`: the worker
    /// reserved [`SOURCE_BATCH`]). With `block`, waits until something is ready or [`Source::wake`] is called
    /// (returning empty-handed now and then is allowed); without, returns at once.
    fn poll(&self, ready: &mut Vec<(TenantId, T)>, block: bool);
    /// Makes a blocked `poll` on another thread return soon. Called with the pool's lock held: must not block.
    fn wake(&self);
    /// An item from this source (or handed back by the handler) that the queue refused.
    fn refused(&self, tenant: TenantId, item: T, reason: RefuseReason);
}

#[derive(Copy, Clone, Default)]
struct PoolTenant {
    configured: bool,
    weight: u32,
    cap: Option<u32>,
    limit: u32,
    processed: u64,
    panics: u64,
    /// Time workers spent in this tenant's handler calls.
    busy: Duration,
}

struct State<T> {
    queue: Scheduler<T>,
    tenants: Vec<PoolTenant>,
    total_weight: u64,
    workers: usize,
    /// Workers waiting on the `Condvar`.
    idle: usize,
    /// A worker is waiting in the source (it is the poller).
    polling: bool,
    shutting_down: bool,
    refused_shut_down: u64,
    dropped_at_shutdown: u64,
}

impl<T> State<T> {
    /// Queues what a source found (and items handed back); refusals go to `refused`, for the source.
    fn enqueue(
        &mut self,
        ready: &mut Vec<(TenantId, T)>,
        refused: &mut Vec<(TenantId, T, RefuseReason)>,
        now: Instant,
    ) {
        for (tenant, item) in ready.drain(..) {
            if self.shutting_down {
                self.refused_shut_down += 1;
                refused.push((tenant, item, RefuseReason::ShutDown));
            } else if let Err(r) = self.queue.push(tenant, item, 1, now) {
                refused.push((tenant, r.item, r.reason));
            }
        }
    }

    /// The end of one item: it leaves the tenant's in-flight count (which may unpark the tenant).
    fn finish(&mut self, tenant: TenantId, panicked: bool, busy: Duration) {
        self.queue.done(tenant);
        if let Some(t) = self.tenants.get_mut(tenant.0 as usize) {
            t.busy += busy;
            if panicked {
                t.panics += 1;
            } else {
                t.processed += 1;
            }
        }
    }

    /// Recomputes every tenant's worker cap after a weight or membership change.
    fn recompute_limits(&mut self) {
        let n = self.workers as u64;
        let total = self.total_weight.max(1);
        for (i, t) in self.tenants.iter_mut().enumerate() {
            if !t.configured {
                continue;
            }
            let limit = match t.cap {
                Some(c) => u64::from(c),
                None => (n.saturating_mul(u64::from(t.weight))).div_ceil(total),
            }
            .clamp(1, n.max(1));
            let limit = u32::try_from(limit).unwrap_or(u32::MAX);
            if limit != t.limit {
                t.limit = limit;
                // Cannot fail: the tenant is configured and the limit is at least 1.
                let _ = self.queue.set_max_in_flight(TenantId(i as u32), Some(limit));
            }
        }
    }
}

struct Shared<T> {
    state: Mutex<State<T>>,
    wake: Condvar,
    handler: Box<Handler<T>>,
    source: Option<Arc<dyn Source<T>>>,
    /// `State::polling`, readable without the lock: a busy worker skips its non-blocking poll while it is set.
    polling: AtomicBool,
    /// Rests real-time workers took ([`cpus::RestGuard`]), summed over workers.
    rests: AtomicU64,
}

impl<T: Send + 'static> Shared<T> {
    /// Hands refused items back to the source (outside the lock).
    fn return_refused(&self, refused: &mut Vec<(TenantId, T, RefuseReason)>) {
        for (tenant, item, reason) in refused.drain(..) {
            match &self.source {
                Some(source) => source.refused(tenant, item, reason),
                None => drop(item),
            }
        }
    }

    /// Wakes every idle worker (configuration changed what may be served).
    fn wake_all(&self, g: &State<T>) {
        self.wake.notify_all();
        if g.polling
            && let Some(source) = &self.source
        {
            source.wake();
        }
    }

    /// Wakes a worker for work that can be served now: one on the `Condvar` if any, else the poller.
    fn wake_one(&self, g: &State<T>) {
        if g.idle > 0 {
            self.wake.notify_one();
        } else if g.polling
            && let Some(source) = &self.source
        {
            source.wake();
        }
    }
}

/// The worker pool; see the module docs. Dropping it shuts it down (and waits for running handlers).
pub struct Bulkhead<T: Send + 'static> {
    shared: Arc<Shared<T>>,
    handles: Mutex<Vec<JoinHandle<()>>>,
    workers: usize,
}

impl<T: Send + 'static> Bulkhead<T> {
    /// Starts the workers. Tenants must be configured ([`Bulkhead::configure_tenant`]) before their items are
    /// accepted.
    pub fn start(
        config: BulkheadConfig,
        handler: impl Fn(TenantId, T) + Send + Sync + 'static,
    ) -> Result<Bulkhead<T>, BulkheadError> {
        Self::spawn(
            config,
            Box::new(move |tenant, item| {
                handler(tenant, item);
                None
            }),
            None,
        )
    }

    /// Starts the workers over a [`Source`] that they poll themselves (see the module docs). The handler may hand
    /// its item back (`Some`) to queue it again for the same tenant.
    pub fn start_with_source(
        config: BulkheadConfig,
        source: Arc<dyn Source<T>>,
        handler: impl Fn(TenantId, T) -> Option<T> + Send + Sync + 'static,
    ) -> Result<Bulkhead<T>, BulkheadError> {
        Self::spawn(config, Box::new(handler), Some(source))
    }

    fn spawn(
        config: BulkheadConfig,
        handler: Box<Handler<T>>,
        source: Option<Arc<dyn Source<T>>>,
    ) -> Result<Bulkhead<T>, BulkheadError> {
        let workers = if config.workers == 0 && !config.pin.is_empty() {
            config.pin.len()
        } else if config.workers == 0 {
            std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
        } else {
            config.workers
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: Scheduler::new(config.scheduler, config.quantum),
                tenants: Vec::new(),
                total_weight: 0,
                workers,
                idle: 0,
                polling: false,
                shutting_down: false,
                refused_shut_down: 0,
                dropped_at_shutdown: 0,
            }),
            wake: Condvar::new(),
            handler,
            source,
            polling: AtomicBool::new(false),
            rests: AtomicU64::new(0),
        });
        let pool = Bulkhead { shared, handles: Mutex::new(Vec::with_capacity(workers)), workers };
        // Each worker places itself (cpu, policy) before it serves anything and says how that went: a pool that
        // cannot have the layout it was configured with does not start half-placed.
        let (placed_tx, placed_rx) = std::sync::mpsc::channel::<Result<(), BulkheadError>>();
        for i in 0..workers {
            let shared = Arc::clone(&pool.shared);
            let cpu = (!config.pin.is_empty()).then(|| config.pin[i % config.pin.len()]);
            let realtime = config.realtime;
            let placed = placed_tx.clone();
            let spawned = std::thread::Builder::new().name(format!("fairvox-sched-{i}")).spawn(move || {
                let placement = place_worker(i, cpu, realtime);
                let ok = placement.is_ok();
                let _ = placed.send(placement);
                drop(placed);
                if ok {
                    worker(&shared, realtime.is_some())
                }
            });
            match spawned {
                Ok(h) => pool.handles.lock().push(h),
                // Dropping `pool` stops and joins the workers already started.
                Err(e) => return Err(BulkheadError::Spawn(e)),
            }
        }
        drop(placed_tx);
        for placement in placed_rx.iter().take(workers) {
            // Dropping `pool` stops and joins the workers (those that failed have returned already).
            placement?;
        }
        Ok(pool)
    }

    pub fn workers(&self) -> usize {
        self.workers
    }

    pub fn scheduler(&self) -> SchedulerKind {
        self.shared.state.lock().queue.kind()
    }

    /// Adds or updates a tenant. `cfg.max_in_flight` is an explicit cap on the workers it may hold; `None` gives
    /// it its weighted share. Every tenant's share is recomputed (O(tenants); configuration is rare).
    pub fn configure_tenant(&self, tenant: TenantId, cfg: TenantConfig) -> Result<(), ConfigError> {
        cfg.validate()?;
        let i = slot_index(tenant)?;
        let mut g = self.shared.state.lock();
        let provisional = g.tenants.get(i).filter(|t| t.configured).map_or(1, |t| t.limit);
        g.queue.configure(tenant, TenantConfig { max_in_flight: Some(provisional.max(1)), ..cfg })?;
        if g.tenants.len() <= i {
            g.tenants.resize(i + 1, PoolTenant::default());
        }
        let t = g.tenants[i];
        let old_weight = if t.configured { u64::from(t.weight) } else { 0 };
        g.total_weight = g.total_weight - old_weight + u64::from(cfg.weight);
        g.tenants[i] =
            PoolTenant { configured: true, weight: cfg.weight, cap: cfg.max_in_flight, limit: provisional, ..t };
        g.recompute_limits();
        if g.queue.has_ready() {
            self.shared.wake_all(&g);
        }
        Ok(())
    }

    /// Offboards a tenant: its queued items are dropped (counted as `drained`), its share goes to the others.
    /// Items of it already running finish. Returns how many were dropped.
    pub fn remove_tenant(&self, tenant: TenantId) -> usize {
        let mut g = self.shared.state.lock();
        let n = g.queue.remove(tenant, drop);
        if let Some(t) = g.tenants.get_mut(tenant.0 as usize).filter(|t| t.configured) {
            t.configured = false;
            let w = u64::from(t.weight);
            g.total_weight -= w;
            g.recompute_limits();
            if g.queue.has_ready() {
                self.shared.wake_all(&g);
            }
        }
        n
    }

    /// Queues one item; callable from any thread, tokio tasks included: it takes the short mutex and never waits
    /// for a worker. `now` stamps the item (pass the frame's ingress instant to count time before the pool too).
    /// Refused, with the item back, when the tenant is unknown, its queue is full, the cost exceeds the quantum,
    /// or the pool is shut down.
    pub fn submit(&self, tenant: TenantId, item: T, cost: u32, now: Instant) -> Result<(), Refused<T>> {
        let mut g = self.shared.state.lock();
        if g.shutting_down {
            g.refused_shut_down += 1;
            return Err(Refused { item, reason: RefuseReason::ShutDown });
        }
        g.queue.push(tenant, item, cost, now)?;
        if g.queue.has_ready() {
            self.shared.wake_one(&g);
        }
        Ok(())
    }

    /// A tenant's counters; `None` if it was never configured.
    pub fn stats(&self, tenant: TenantId) -> Option<BulkheadStats> {
        let g = self.shared.state.lock();
        let queue = g.queue.stats(tenant)?;
        let t = g.tenants.get(tenant.0 as usize).copied().unwrap_or_default();
        Some(BulkheadStats { queue, processed: t.processed, panics: t.panics, max_in_flight: t.limit })
    }

    /// The pool's load so far: the CPU time its worker threads used, and each configured tenant's weight and
    /// handler time (indexed by `TenantId`). Two samples a known interval apart give the pool's utilisation and each
    /// tenant's part of it ([`PoolLoad`]).
    pub fn load(&self) -> PoolLoad {
        let cpu = self.handles.lock().iter().map(thread_cpu_time).sum();
        let g = self.shared.state.lock();
        PoolLoad {
            workers: g.workers,
            cpu,
            tenants: g
                .tenants
                .iter()
                .map(|t| TenantLoad { weight: if t.configured { t.weight } else { 0 }, busy: t.busy })
                .collect(),
            rests: self.shared.rests.load(Ordering::Relaxed),
        }
    }

    pub fn pool_stats(&self) -> PoolStats {
        let g = self.shared.state.lock();
        PoolStats {
            workers: g.workers,
            idle_workers: g.idle + usize::from(g.polling),
            queued: g.queue.len(),
            refused_unknown_tenant: g.queue.refused_unknown_tenant(),
            refused_shut_down: g.refused_shut_down,
            dropped_at_shutdown: g.dropped_at_shutdown,
            shut_down: g.shutting_down,
        }
    }

    /// Stops the pool: refuses further submits, drops what is queued (counted per tenant as `drained`), lets
    /// running handlers finish, and joins the workers. Returns how many queued items were dropped by this call
    /// (0 if already shut down). Idempotent. Must not be called from inside the handler (a worker would wait
    /// for itself; that worker is skipped rather than joined).
    pub fn shutdown(&self) -> usize {
        let dropped = {
            let mut g = self.shared.state.lock();
            let n = if g.shutting_down {
                0
            } else {
                g.shutting_down = true;
                g.queue.drain(|_, _, _| {})
            };
            g.dropped_at_shutdown += n as u64;
            self.shared.wake.notify_all();
            if let Some(source) = &self.shared.source {
                source.wake();
            }
            n
        };
        let handles = std::mem::take(&mut *self.handles.lock());
        let me = std::thread::current().id();
        for h in handles {
            if h.thread().id() != me {
                // A worker cannot panic (handlers run under catch_unwind); nothing to report if it somehow did.
                let _ = h.join();
            }
        }
        dropped
    }
}

impl<T: Send + 'static> Drop for Bulkhead<T> {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Pins worker `index` to `cpu` and gives it `realtime` priority, as configured.
fn place_worker(index: usize, cpu: Option<usize>, realtime: Option<u8>) -> Result<(), BulkheadError> {
    if let Some(cpu) = cpu {
        cpus::pin_current_thread(&[cpu]).map_err(|source| BulkheadError::Pin { worker: index, cpu, source })?;
    }
    if let Some(priority) = realtime {
        cpus::set_realtime(priority).map_err(|source| BulkheadError::Realtime { worker: index, priority, source })?;
    }
    Ok(())
}

/// Runs `wait`, in which the worker is blocked off its core, and counts that time as rest in a real-time worker's
/// guard (no clock is read without one).
fn off_core<R>(guard: &mut Option<cpus::RestGuard>, wait: impl FnOnce() -> R) -> R {
    let Some(guard) = guard else { return wait() };
    let since = Instant::now();
    let out = wait();
    guard.idled(since.elapsed());
    out
}

/// CPU time the thread has used so far (its `CLOCK_THREAD_CPUTIME_ID` clock, read from outside); zero if the OS
/// will not say (a thread that has ended).
fn thread_cpu_time(handle: &JoinHandle<()>) -> Duration {
    use std::os::unix::thread::JoinHandleExt;
    let mut clock: libc::clockid_t = 0;
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: the handle is not joined while borrowed, so its pthread_t is live (an ended thread not yet joined is
    // still a valid id); both out-pointers are to live locals of the right types.
    let ok = unsafe {
        libc::pthread_getcpuclockid(handle.as_pthread_t(), &mut clock) == 0 && libc::clock_gettime(clock, &mut ts) == 0
    };
    if !ok {
        return Duration::ZERO;
    }
    Duration::new(u64::try_from(ts.tv_sec).unwrap_or(0), u32::try_from(ts.tv_nsec).unwrap_or(0))
}

fn worker<T: Send + 'static>(shared: &Shared<T>, realtime: bool) {
    // (tenant, panicked, handed back, time in the handler) of the item this worker ran last.
    let mut finished: Option<(TenantId, bool, Option<T>, Duration)> = None;
    // Both reserved once: the source fills `ready` only up to SOURCE_BATCH, one more is the item handed back.
    let mut ready: Vec<(TenantId, T)> = Vec::with_capacity(SOURCE_BATCH + 1);
    let mut refused: Vec<(TenantId, T, RefuseReason)> = Vec::with_capacity(SOURCE_BATCH + 1);
    // A real-time worker keeps some of its core for the kernel's normal threads, in short rests (see RestGuard).
    let mut rest_guard = realtime.then(|| cpus::RestGuard::new(Instant::now(), cpus::RestGuard::duty_for_host()));
    loop {
        let owed = rest_guard.as_mut().map_or(Duration::ZERO, |guard| guard.due(Instant::now()));
        if !owed.is_zero() {
            shared.rests.fetch_add(1, Ordering::Relaxed);
            off_core(&mut rest_guard, || std::thread::sleep(owed));
        }
        // What became ready while this worker ran its last item: queued before the next pop, so it competes now.
        if let Some(source) = &shared.source
            && !shared.polling.load(Ordering::Acquire)
        {
            source.poll(&mut ready, false);
        }
        let job = {
            let mut g = shared.state.lock();
            if let Some((tenant, panicked, again, busy)) = finished.take() {
                g.finish(tenant, panicked, busy);
                if let Some(item) = again {
                    ready.push((tenant, item));
                }
            }
            g.enqueue(&mut ready, &mut refused, Instant::now());
            let job = loop {
                if g.shutting_down {
                    break None;
                }
                // Dropped (late) items are counted by the queue; the pool has nothing else to do with them.
                if let Some(p) = g.queue.pop(Instant::now(), |_, _, _| {}) {
                    break Some(p);
                }
                match &shared.source {
                    Some(source) if !g.polling => {
                        g.polling = true;
                        shared.polling.store(true, Ordering::Release);
                        MutexGuard::unlocked(&mut g, || {
                            shared.return_refused(&mut refused);
                            off_core(&mut rest_guard, || source.poll(&mut ready, true));
                        });
                        g.polling = false;
                        shared.polling.store(false, Ordering::Release);
                        g.enqueue(&mut ready, &mut refused, Instant::now());
                    }
                    _ => {
                        g.idle += 1;
                        off_core(&mut rest_guard, || shared.wake.wait(&mut g));
                        g.idle -= 1;
                    }
                }
            };
            // More ready work, or nobody left watching the source: an idle worker is needed.
            if job.is_some() && g.idle > 0 && (g.queue.has_ready() || (shared.source.is_some() && !g.polling)) {
                shared.wake.notify_one();
            }
            job
        };
        shared.return_refused(&mut refused);
        let Some(p) = job else { return };
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| (shared.handler)(p.tenant, p.item)));
        let busy = started.elapsed();
        finished = Some(match outcome {
            Ok(again) => (p.tenant, false, again, busy),
            Err(_) => (p.tenant, true, None, busy),
        });
    }
}

#[cfg(test)]
mod tests;
