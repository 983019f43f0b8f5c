//! Per-tenant weighted fair queueing, sans-IO: the clock is passed in (`now: Instant`), nothing here reads it.
//!
//! Owns the order in which queued work of different tenants is handed out, and the bounds on that queue:
//!
//! * [`Wfq`]: one bounded FIFO per tenant, served by **deficit round robin** (Shreedhar & Varghese, 1995) in
//!   proportion to each tenant's weight. It is work-conserving (only tenants with work are on the active list, so an
//!   idle tenant's share goes to the busy ones), and every operation is O(1) (pop is amortised O(1): each item is
//!   dropped for its deadline at most once). Tenants may be capped in how many popped items they hold at once
//!   ([`TenantConfig::max_in_flight`]); a tenant at its cap is *parked* off the active list, keeping its deficit and
//!   turn, and comes back when [`Wfq::done`] is called for one of its items (see [`Wfq`] for where it rejoins).
//! * [`Scheduler`]: either a [`Wfq`] or the comparison [`Fifo`](crate::sched::fifo::Fifo) (config
//!   `scheduler = "fair" | "fifo"`), behind the same methods, so benchmarks can run both side by side.
//! * The shared vocabulary: [`TenantConfig`], [`TenantStats`], [`DropReason`], [`Refused`], [`ConfigError`].
//!
//! Bounds and what they refuse: a tenant's queue holds at most `capacity` items (push refused: `queue_full`); an
//! item waits at most `max_wait` (dropped at pop: `deadline`, only ever from the late tenant's own queue); an item
//! costs at most the quantum (push refused: `too_costly`); tenant ids are below [`MAX_TENANTS`] (push to an
//! unknown tenant refused and counted queue-wide). Per-tenant buffers are allocated when the tenant is configured,
//! at their bound, so push and pop allocate nothing.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::sched::fifo::Fifo;
use crate::sched::histogram::WaitHistogram;
use crate::tenant::TenantId;

/// Tenant ids must be below this (they index a `Vec`).
pub const MAX_TENANTS: u32 = 1 << 16;
/// Largest per-tenant queue bound accepted.
pub const MAX_CAPACITY: usize = 1 << 20;
/// Default `max_wait`: a plan's default `max_frame_queue_ms`, two frames.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_millis(40);
/// Default per-tenant queue bound: one second of 20 ms frames.
pub const DEFAULT_CAPACITY: usize = 50;

/// How one tenant is queued.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct TenantConfig {
    /// Share of service relative to other tenants, at least 1. A change takes effect at the tenant's next turn.
    pub weight: u32,
    /// Most items queued for this tenant (in `fifo` mode: its contribution to the global bound).
    pub capacity: usize,
    /// An item that has waited longer than this when it reaches the head is dropped (`deadline`).
    pub max_wait: Duration,
    /// Most popped items this tenant may hold at once (until [`Wfq::done`]). `None`: no cap in [`Wfq`]; the
    /// [`Bulkhead`](crate::sched::bulkhead::Bulkhead) then applies the tenant's weighted share of its workers.
    /// The `fifo` mode records but does not enforce it.
    pub max_in_flight: Option<u32>,
}

impl Default for TenantConfig {
    fn default() -> Self {
        TenantConfig { weight: 1, capacity: DEFAULT_CAPACITY, max_wait: DEFAULT_MAX_WAIT, max_in_flight: None }
    }
}

impl TenantConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.weight == 0 {
            return Err(ConfigError::ZeroWeight);
        }
        if self.capacity == 0 {
            return Err(ConfigError::ZeroCapacity);
        }
        if self.capacity > MAX_CAPACITY {
            return Err(ConfigError::CapacityTooLarge { capacity: self.capacity, max: MAX_CAPACITY });
        }
        if self.max_in_flight == Some(0) {
            return Err(ConfigError::ZeroInFlight);
        }
        Ok(())
    }
}

/// A tenant configuration the queue cannot take.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("tenant weight must be at least 1")]
    ZeroWeight,
    #[error("tenant queue capacity must be at least 1")]
    ZeroCapacity,
    #[error("tenant queue capacity {capacity} exceeds the maximum {max}")]
    CapacityTooLarge { capacity: usize, max: usize },
    #[error("max_in_flight must be at least 1")]
    ZeroInFlight,
    #[error("tenant id {tenant} is not below the maximum {max}")]
    TenantOutOfRange { tenant: u32, max: u32 },
    #[error("tenant {0} is not configured")]
    UnknownTenant(u32),
}

/// Why a queued item left the queue without being served.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DropReason {
    /// It waited longer than its tenant's `max_wait`.
    Deadline,
    /// Its tenant's queue (or, in `fifo` mode, the global queue) was full. Never passed to a `dropped` callback:
    /// the refused item goes back to the pusher in [`Refused`]; it is here so callers can account both alike.
    QueueFull,
    /// The queue was drained: tenant removed, or shutdown.
    Drained,
}

impl DropReason {
    /// A short, stable name for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            DropReason::Deadline => "deadline",
            DropReason::QueueFull => "queue_full",
            DropReason::Drained => "drained",
        }
    }
}

/// Why a push was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RefuseReason {
    #[error("tenant queue full")]
    QueueFull,
    #[error("tenant not configured")]
    UnknownTenant,
    #[error("item cost {cost} exceeds the quantum {max}")]
    CostTooLarge { cost: u32, max: u32 },
    #[error("scheduler shut down")]
    ShutDown,
}

impl RefuseReason {
    /// A short, stable name for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            RefuseReason::QueueFull => "queue_full",
            RefuseReason::UnknownTenant => "unknown_tenant",
            RefuseReason::CostTooLarge { .. } => "too_costly",
            RefuseReason::ShutDown => "shut_down",
        }
    }
}

/// A refused push: the item comes back to the caller, with the reason.
#[derive(thiserror::Error)]
#[error("push refused: {reason}")]
pub struct Refused<T> {
    pub item: T,
    #[source]
    pub reason: RefuseReason,
}

impl<T> fmt::Debug for Refused<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Refused").field("reason", &self.reason).finish_non_exhaustive()
    }
}

impl<T> Refused<T> {
    pub fn into_item(self) -> T {
        self.item
    }
}

/// An item handed out by `pop`. It counts as in flight for its tenant until `done(tenant)`.
#[derive(Debug)]
pub struct Popped<T> {
    pub tenant: TenantId,
    pub item: T,
    pub cost: u32,
    /// From push to this pop, by the caller's clock.
    pub waited: Duration,
}

/// Counters of one tenant, plus two gauges (`queued`, `in_flight`). Counters never go back; they survive
/// [`Wfq::remove`] and continue if the tenant is configured again.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TenantStats {
    /// Pushes accepted.
    pub enqueued: u64,
    /// Items popped (handed out for processing).
    pub dequeued: u64,
    pub dropped_deadline: u64,
    /// Pushes refused because the queue was full.
    pub dropped_queue_full: u64,
    /// Items drained by `remove` or shutdown.
    pub dropped_drained: u64,
    /// Pushes refused because the item cost more than the quantum.
    pub refused_too_costly: u64,
    /// Sum of the costs of the items popped.
    pub served_cost: u64,
    /// Gauge: items queued now.
    pub queued: usize,
    /// Gauge: items popped and not yet `done`.
    pub in_flight: u32,
    /// Waits of the popped items, push to pop.
    pub wait: WaitHistogram,
}

impl TenantStats {
    /// The counter for one drop reason.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        match reason {
            DropReason::Deadline => self.dropped_deadline,
            DropReason::QueueFull => self.dropped_queue_full,
            DropReason::Drained => self.dropped_drained,
        }
    }
}

/// A queued item.
pub(crate) struct Entry<T> {
    pub(crate) item: T,
    pub(crate) cost: u32,
    pub(crate) enqueued: Instant,
}

/// The per-tenant bookkeeping shared by [`Wfq`] and [`Fifo`]: configuration, in-flight count, counters.
#[derive(Default)]
pub(crate) struct TenantBook {
    /// Ever configured (stats exist).
    pub(crate) known: bool,
    pub(crate) configured: bool,
    pub(crate) cfg: TenantConfig,
    pub(crate) in_flight: u32,
    /// Counters; the gauges in it are filled in by `snapshot`.
    pub(crate) stats: TenantStats,
}

impl TenantBook {
    pub(crate) fn at_limit(&self) -> bool {
        self.cfg.max_in_flight.is_some_and(|m| self.in_flight >= m)
    }

    /// Checks an item's cost against the quantum; cost 0 is taken as 1.
    pub(crate) fn admit_cost(&mut self, cost: u32, quantum: u32) -> Result<u32, RefuseReason> {
        let cost = cost.max(1);
        if cost > quantum {
            self.stats.refused_too_costly += 1;
            return Err(RefuseReason::CostTooLarge { cost, max: quantum });
        }
        Ok(cost)
    }

    pub(crate) fn expired(&self, enqueued: Instant, now: Instant) -> bool {
        now.saturating_duration_since(enqueued) > self.cfg.max_wait
    }

    /// Accounts a pop and returns the wait.
    pub(crate) fn on_pop(&mut self, cost: u32, enqueued: Instant, now: Instant) -> Duration {
        let waited = now.saturating_duration_since(enqueued);
        self.stats.dequeued += 1;
        self.stats.served_cost += u64::from(cost);
        self.stats.wait.record(waited);
        self.in_flight = self.in_flight.saturating_add(1);
        waited
    }

    pub(crate) fn snapshot(&self, queued: usize) -> TenantStats {
        TenantStats { queued, in_flight: self.in_flight, ..self.stats }
    }
}

/// Index of a tenant's slot, if its id is in range.
pub(crate) fn slot_index(tenant: TenantId) -> Result<usize, ConfigError> {
    if tenant.0 >= MAX_TENANTS {
        return Err(ConfigError::TenantOutOfRange { tenant: tenant.0, max: MAX_TENANTS });
    }
    Ok(tenant.0 as usize)
}

const NIL: u32 = u32::MAX;

#[derive(Copy, Clone)]
struct Link {
    prev: u32,
    next: u32,
}

/// The DRR active list: an intrusive doubly linked FIFO of tenant indices, so append, unlink and rotate are O(1)
/// and allocate nothing (the links grow only when a tenant is configured).
struct ActiveList {
    head: u32,
    tail: u32,
    links: Vec<Link>,
}

impl ActiveList {
    fn grow(&mut self, n: usize) {
        if self.links.len() < n {
            self.links.resize(n, Link { prev: NIL, next: NIL });
        }
    }

    fn push_back(&mut self, i: u32) {
        self.links[i as usize] = Link { prev: self.tail, next: NIL };
        if self.tail == NIL {
            self.head = i;
        } else {
            self.links[self.tail as usize].next = i;
        }
        self.tail = i;
    }

    fn remove(&mut self, i: u32) {
        let Link { prev, next } = self.links[i as usize];
        if prev == NIL {
            self.head = next;
        } else {
            self.links[prev as usize].next = next;
        }
        if next == NIL {
            self.tail = prev;
        } else {
            self.links[next as usize].prev = prev;
        }
        self.links[i as usize] = Link { prev: NIL, next: NIL };
    }

    fn push_front(&mut self, i: u32) {
        self.links[i as usize] = Link { prev: NIL, next: self.head };
        if self.head == NIL {
            self.tail = i;
        } else {
            self.links[self.head as usize].prev = i;
        }
        self.head = i;
    }

    /// Moves the head to the back.
    fn rotate(&mut self) {
        let h = self.head;
        if h != NIL && h != self.tail {
            self.remove(h);
            self.push_back(h);
        }
    }

    fn clear(&mut self) {
        while self.head != NIL {
            self.remove(self.head);
        }
    }
}

/// Where a tenant is with respect to the active list.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Default)]
enum State {
    /// Nothing queued; not on the list.
    #[default]
    Idle,
    /// Work queued and allowed to be served; on the list.
    Active,
    /// Work queued but at its in-flight cap; off the list until `done`.
    Parked,
}

struct Slot<T> {
    book: TenantBook,
    queue: VecDeque<Entry<T>>,
    /// DRR deficit counter: credit left in the current turn.
    deficit: u64,
    /// Whether this turn's quantum has been added (only the head tenant, or a parked one, is mid-turn).
    turn_started: bool,
    state: State,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot {
            book: TenantBook::default(),
            queue: VecDeque::new(),
            deficit: 0,
            turn_started: false,
            state: State::Idle,
        }
    }
}

impl<T> Slot<T> {
    fn go_idle(&mut self) {
        self.state = State::Idle;
        self.deficit = 0;
        self.turn_started = false;
    }
}

/// Weighted fair queue: deficit round robin over per-tenant bounded FIFOs. See the module docs.
///
/// DRR details: a tenant at the head of the active list starts a turn by adding `quantum * weight` to its deficit;
/// it is served while its head item's cost fits in the deficit; then it goes to the back with what is left (less
/// than one item's cost, so at most `quantum`). A tenant whose queue empties leaves the list and loses its deficit
/// (no banking of credit while idle). Because an item may cost at most `quantum`, every turn serves at least one
/// item, so a pop never spins.
///
/// In-flight caps: a popped item counts against its tenant until [`Wfq::done`]. When a tenant reaches its cap it
/// is taken off the active list (O(1), no scanning past it on later pops) with its deficit and turn intact. On
/// `done` it rejoins: at the front if it still has credit for its head item in the interrupted turn (so it gets
/// the rest of that turn, and a tenant whose cap binds after every pop still gets its weighted share), otherwise at
/// the back for a fresh turn. The tenant it displaces from the head keeps its own turn and credit.
pub struct Wfq<T> {
    quantum: u32,
    slots: Vec<Slot<T>>,
    list: ActiveList,
    len: usize,
    refused_unknown_tenant: u64,
}

impl<T> Wfq<T> {
    /// `quantum` is the credit a weight-1 tenant gets per round, and the largest cost one item may have (0 is
    /// taken as 1). With cost 1 per frame, a quantum of 1 serves weights exactly frame by frame.
    pub fn new(quantum: u32) -> Self {
        Wfq {
            quantum: quantum.max(1),
            slots: Vec::new(),
            list: ActiveList { head: NIL, tail: NIL, links: Vec::new() },
            len: 0,
            refused_unknown_tenant: 0,
        }
    }

    pub fn quantum(&self) -> u32 {
        self.quantum
    }

    /// Adds or updates a tenant. Allocates its queue at `capacity` (the only allocation). A lower capacity keeps
    /// items already queued and refuses pushes until the queue is below it; a weight change applies from the
    /// tenant's next turn; a new `max_in_flight` applies at once.
    pub fn configure(&mut self, tenant: TenantId, cfg: TenantConfig) -> Result<(), ConfigError> {
        cfg.validate()?;
        let i = slot_index(tenant)?;
        if self.slots.len() <= i {
            self.slots.resize_with(i + 1, Slot::default);
            self.list.grow(i + 1);
        }
        let slot = &mut self.slots[i];
        slot.book.known = true;
        slot.book.configured = true;
        slot.book.cfg = cfg;
        if slot.queue.capacity() < cfg.capacity {
            slot.queue.reserve_exact(cfg.capacity - slot.queue.len());
        }
        self.refresh(i);
        Ok(())
    }

    /// Offboards a tenant: its queued items go to `dropped` (counted as `drained`), its buffer is freed, and
    /// pushes to it are refused until it is configured again. Returns how many were drained. Items of it still
    /// in flight may be `done` later.
    pub fn remove(&mut self, tenant: TenantId, mut dropped: impl FnMut(T)) -> usize {
        let Some(slot) = self.slots.get_mut(tenant.0 as usize).filter(|s| s.book.configured) else {
            return 0;
        };
        if slot.state == State::Active {
            self.list.remove(tenant.0);
        }
        slot.go_idle();
        slot.book.configured = false;
        let queue = std::mem::take(&mut slot.queue);
        let n = queue.len();
        slot.book.stats.dropped_drained += n as u64;
        self.len -= n;
        for e in queue {
            dropped(e.item);
        }
        n
    }

    /// Queues `item` for `tenant`, stamped with `now`. `cost` (0 is taken as 1) is what serving it uses of the
    /// tenant's share. Refused, with the item returned, when the tenant is unknown, its queue is full, or the cost
    /// exceeds the quantum; each refusal is counted.
    pub fn push(&mut self, tenant: TenantId, item: T, cost: u32, now: Instant) -> Result<(), Refused<T>> {
        let Some(slot) = self.slots.get_mut(tenant.0 as usize).filter(|s| s.book.configured) else {
            self.refused_unknown_tenant += 1;
            return Err(Refused { item, reason: RefuseReason::UnknownTenant });
        };
        let cost = match slot.book.admit_cost(cost, self.quantum) {
            Ok(c) => c,
            Err(reason) => return Err(Refused { item, reason }),
        };
        if slot.queue.len() >= slot.book.cfg.capacity {
            slot.book.stats.dropped_queue_full += 1;
            return Err(Refused { item, reason: RefuseReason::QueueFull });
        }
        slot.queue.push_back(Entry { item, cost, enqueued: now });
        slot.book.stats.enqueued += 1;
        self.len += 1;
        if slot.state == State::Idle {
            if slot.book.at_limit() {
                slot.state = State::Parked;
            } else {
                slot.state = State::Active;
                self.list.push_back(tenant.0);
            }
        }
        Ok(())
    }

    /// Hands out the next item by DRR, or `None` when no tenant with work is below its in-flight cap.
    ///
    /// On the way, items at the head of the serving tenant's queue that have waited longer than its `max_wait`
    /// are dropped, counted as `deadline` for that tenant, and passed to `dropped`. A tenant reaching its
    /// in-flight cap is parked with its deficit and its turn kept.
    pub fn pop(&mut self, now: Instant, mut dropped: impl FnMut(TenantId, T, DropReason)) -> Option<Popped<T>> {
        let quantum = u64::from(self.quantum);
        loop {
            let i = self.list.head;
            if i == NIL {
                return None;
            }
            let tenant = TenantId(i);
            let slot = &mut self.slots[i as usize];
            while let Some(front) = slot.queue.front() {
                if !slot.book.expired(front.enqueued, now) {
                    break;
                }
                if let Some(e) = slot.queue.pop_front() {
                    self.len -= 1;
                    slot.book.stats.dropped_deadline += 1;
                    dropped(tenant, e.item, DropReason::Deadline);
                }
            }
            let Some(cost) = slot.queue.front().map(|e| e.cost) else {
                self.list.remove(i);
                slot.go_idle();
                continue;
            };
            if !slot.turn_started {
                slot.deficit += quantum * u64::from(slot.book.cfg.weight);
                slot.turn_started = true;
            }
            if u64::from(cost) > slot.deficit {
                // Turn over: to the back with what is left.
                slot.turn_started = false;
                self.list.rotate();
                continue;
            }
            let Some(e) = slot.queue.pop_front() else { continue };
            slot.deficit -= u64::from(cost);
            self.len -= 1;
            let waited = slot.book.on_pop(cost, e.enqueued, now);
            if slot.queue.is_empty() {
                self.list.remove(i);
                slot.go_idle();
            } else if slot.book.at_limit() {
                self.list.remove(i);
                slot.state = State::Parked;
            }
            return Some(Popped { tenant, item: e.item, cost, waited });
        }
    }

    /// One item of `tenant` is no longer in flight. If that takes a parked tenant below its cap, it rejoins the
    /// active list with its deficit: at the front to finish an interrupted turn, else at the back (see [`Wfq`]).
    pub fn done(&mut self, tenant: TenantId) {
        let i = tenant.0 as usize;
        if let Some(slot) = self.slots.get_mut(i) {
            slot.book.in_flight = slot.book.in_flight.saturating_sub(1);
            self.refresh(i);
        }
    }

    /// Sets a tenant's in-flight cap (`None`: no cap). Applies at once: it may park or unpark the tenant.
    pub fn set_max_in_flight(&mut self, tenant: TenantId, max: Option<u32>) -> Result<(), ConfigError> {
        if max == Some(0) {
            return Err(ConfigError::ZeroInFlight);
        }
        let i = tenant.0 as usize;
        let Some(slot) = self.slots.get_mut(i).filter(|s| s.book.configured) else {
            return Err(ConfigError::UnknownTenant(tenant.0));
        };
        slot.book.cfg.max_in_flight = max;
        self.refresh(i);
        Ok(())
    }

    /// Moves a tenant between active and parked after its cap or in-flight count changed.
    fn refresh(&mut self, i: usize) {
        let slot = &mut self.slots[i];
        match slot.state {
            State::Active if slot.book.at_limit() => {
                self.list.remove(i as u32);
                slot.state = State::Parked;
            }
            State::Parked if !slot.book.at_limit() => {
                slot.state = State::Active;
                // Parked mid-turn with credit left for its head item: it resumes that turn first (the tenant at
                // the head keeps its own turn and deficit, and continues after). Otherwise its turn is over and
                // it waits for the next one at the back, keeping what is left of its deficit (less than one item).
                // Either way credit is granted once per turn, so the weighted shares hold while the cap binds.
                let resume = slot.turn_started && slot.queue.front().is_some_and(|e| u64::from(e.cost) <= slot.deficit);
                if resume {
                    self.list.push_front(i as u32);
                } else {
                    slot.turn_started = false;
                    self.list.push_back(i as u32);
                }
            }
            _ => {}
        }
    }

    /// Drains every queue into `dropped` (reason `Drained`, counted per tenant); tenants stay configured.
    pub fn drain(&mut self, mut dropped: impl FnMut(TenantId, T, DropReason)) -> usize {
        self.list.clear();
        let mut n = 0;
        for (i, slot) in self.slots.iter_mut().enumerate() {
            slot.go_idle();
            slot.book.stats.dropped_drained += slot.queue.len() as u64;
            n += slot.queue.len();
            for e in slot.queue.drain(..) {
                dropped(TenantId(i as u32), e.item, DropReason::Drained);
            }
        }
        self.len = 0;
        n
    }

    /// Items queued, all tenants (parked ones included).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn tenant_len(&self, tenant: TenantId) -> usize {
        self.slots.get(tenant.0 as usize).map_or(0, |s| s.queue.len())
    }

    /// Whether `pop` would find a tenant to serve (some tenant has work and is below its cap). Deadline drops may
    /// still empty it.
    pub fn has_ready(&self) -> bool {
        self.list.head != NIL
    }

    /// A tenant's counters; `None` if it was never configured.
    pub fn stats(&self, tenant: TenantId) -> Option<TenantStats> {
        let slot = self.slots.get(tenant.0 as usize)?;
        slot.book.known.then(|| slot.book.snapshot(slot.queue.len()))
    }

    pub fn is_configured(&self, tenant: TenantId) -> bool {
        self.slots.get(tenant.0 as usize).is_some_and(|s| s.book.configured)
    }

    /// Pushes refused because the tenant was not configured (they have no tenant to be counted against).
    pub fn refused_unknown_tenant(&self) -> u64 {
        self.refused_unknown_tenant
    }
}

/// Which queue discipline to run (config `scheduler = "fair" | "fifo"`).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerKind {
    /// Per-tenant weighted fair queueing ([`Wfq`]).
    #[default]
    Fair,
    /// One global FIFO ([`Fifo`]), for comparison.
    Fifo,
}

impl SchedulerKind {
    pub fn label(&self) -> &'static str {
        match self {
            SchedulerKind::Fair => "fair",
            SchedulerKind::Fifo => "fifo",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown scheduler {0:?}: expected \"fair\" or \"fifo\"")]
pub struct UnknownSchedulerKind(pub String);

impl FromStr for SchedulerKind {
    type Err = UnknownSchedulerKind;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "fair" => Ok(SchedulerKind::Fair),
            "fifo" => Ok(SchedulerKind::Fifo),
            _ => Err(UnknownSchedulerKind(s.to_owned())),
        }
    }
}

/// Either queue discipline behind one set of methods (an enum rather than a trait object: no virtual calls, and
/// the `FnMut` callbacks stay generic). Every method has the meaning documented on [`Wfq`]; [`Fifo`] ignores
/// weights and in-flight caps, which is the point of the comparison.
pub enum Scheduler<T> {
    Fair(Wfq<T>),
    Fifo(Fifo<T>),
}

macro_rules! delegate {
    ($self:ident, $q:ident => $e:expr) => {
        match $self {
            Scheduler::Fair($q) => $e,
            Scheduler::Fifo($q) => $e,
        }
    };
}

impl<T> Scheduler<T> {
    pub fn new(kind: SchedulerKind, quantum: u32) -> Self {
        match kind {
            SchedulerKind::Fair => Scheduler::Fair(Wfq::new(quantum)),
            SchedulerKind::Fifo => Scheduler::Fifo(Fifo::new(quantum)),
        }
    }

    pub fn kind(&self) -> SchedulerKind {
        match self {
            Scheduler::Fair(_) => SchedulerKind::Fair,
            Scheduler::Fifo(_) => SchedulerKind::Fifo,
        }
    }

    pub fn configure(&mut self, tenant: TenantId, cfg: TenantConfig) -> Result<(), ConfigError> {
        delegate!(self, q => q.configure(tenant, cfg))
    }

    pub fn remove(&mut self, tenant: TenantId, dropped: impl FnMut(T)) -> usize {
        delegate!(self, q => q.remove(tenant, dropped))
    }

    pub fn push(&mut self, tenant: TenantId, item: T, cost: u32, now: Instant) -> Result<(), Refused<T>> {
        delegate!(self, q => q.push(tenant, item, cost, now))
    }

    pub fn pop(&mut self, now: Instant, dropped: impl FnMut(TenantId, T, DropReason)) -> Option<Popped<T>> {
        delegate!(self, q => q.pop(now, dropped))
    }

    pub fn done(&mut self, tenant: TenantId) {
        delegate!(self, q => q.done(tenant))
    }

    pub fn set_max_in_flight(&mut self, tenant: TenantId, max: Option<u32>) -> Result<(), ConfigError> {
        delegate!(self, q => q.set_max_in_flight(tenant, max))
    }

    pub fn drain(&mut self, dropped: impl FnMut(TenantId, T, DropReason)) -> usize {
        delegate!(self, q => q.drain(dropped))
    }

    pub fn len(&self) -> usize {
        delegate!(self, q => q.len())
    }

    pub fn is_empty(&self) -> bool {
        delegate!(self, q => q.is_empty())
    }

    pub fn tenant_len(&self, tenant: TenantId) -> usize {
        delegate!(self, q => q.tenant_len(tenant))
    }

    pub fn has_ready(&self) -> bool {
        delegate!(self, q => q.has_ready())
    }

    pub fn stats(&self, tenant: TenantId) -> Option<TenantStats> {
        delegate!(self, q => q.stats(tenant))
    }

    pub fn is_configured(&self, tenant: TenantId) -> bool {
        delegate!(self, q => q.is_configured(tenant))
    }

    pub fn refused_unknown_tenant(&self) -> u64 {
        delegate!(self, q => q.refused_unknown_tenant())
    }
}

#[cfg(test)]
mod tests;
