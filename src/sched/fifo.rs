//! The comparison discipline: one global FIFO for all tenants, sans-IO like [`Wfq`](crate::sched::wfq::Wfq).
//!
//! Owns nothing the fair queue does not also do, minus fairness: the bound is the sum of the configured tenants'
//! capacities (the same total as the fair queue), the deadline rule is the same (each item against its own
//! tenant's `max_wait`, checked at the head), and the counters are the same. It ignores weights and in-flight caps
//! (it records the in-flight count but never skips anyone). It exists so benchmarks and tests can show, side by
//! side, that here a noisy tenant's backlog delays and drops everyone else's frames.

use std::collections::VecDeque;
use std::time::Instant;

use crate::sched::wfq::{
    ConfigError, DropReason, Entry, Popped, RefuseReason, Refused, TenantBook, TenantConfig, TenantStats, slot_index,
};
use crate::tenant::TenantId;

/// One global FIFO; see the module docs.
pub struct Fifo<T> {
    quantum: u32,
    books: Vec<TenantBook>,
    /// Items queued per tenant (for `tenant_len` and the `queued` gauge).
    queued: Vec<usize>,
    queue: VecDeque<(TenantId, Entry<T>)>,
    /// Sum of the configured tenants' capacities.
    capacity: usize,
    refused_unknown_tenant: u64,
}

impl<T> Fifo<T> {
    /// `quantum` only bounds an item's cost, so that both disciplines refuse the same pushes.
    pub fn new(quantum: u32) -> Self {
        Fifo {
            quantum: quantum.max(1),
            books: Vec::new(),
            queued: Vec::new(),
            queue: VecDeque::new(),
            capacity: 0,
            refused_unknown_tenant: 0,
        }
    }

    /// The global bound now in force.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    pub fn configure(&mut self, tenant: TenantId, cfg: TenantConfig) -> Result<(), ConfigError> {
        cfg.validate()?;
        let i = slot_index(tenant)?;
        if self.books.len() <= i {
            self.books.resize_with(i + 1, TenantBook::default);
            self.queued.resize(i + 1, 0);
        }
        let book = &mut self.books[i];
        if book.configured {
            self.capacity -= book.cfg.capacity;
        }
        book.known = true;
        book.configured = true;
        book.cfg = cfg;
        self.capacity += cfg.capacity;
        if self.queue.capacity() < self.capacity {
            self.queue.reserve_exact(self.capacity - self.queue.len());
        }
        Ok(())
    }

    /// Drains the tenant's items out of the global queue (O(queue length); offboarding is rare).
    pub fn remove(&mut self, tenant: TenantId, mut dropped: impl FnMut(T)) -> usize {
        let i = tenant.0 as usize;
        let Some(book) = self.books.get_mut(i).filter(|b| b.configured) else {
            return 0;
        };
        book.configured = false;
        self.capacity -= book.cfg.capacity;
        let mut n = 0;
        for _ in 0..self.queue.len() {
            let Some((t, e)) = self.queue.pop_front() else { break };
            if t == tenant {
                n += 1;
                dropped(e.item);
            } else {
                self.queue.push_back((t, e));
            }
        }
        book.stats.dropped_drained += n as u64;
        self.queued[i] = 0;
        n
    }

    pub fn push(&mut self, tenant: TenantId, item: T, cost: u32, now: Instant) -> Result<(), Refused<T>> {
        let i = tenant.0 as usize;
        let Some(book) = self.books.get_mut(i).filter(|b| b.configured) else {
            self.refused_unknown_tenant += 1;
            return Err(Refused { item, reason: RefuseReason::UnknownTenant });
        };
        let cost = match book.admit_cost(cost, self.quantum) {
            Ok(c) => c,
            Err(reason) => return Err(Refused { item, reason }),
        };
        if self.queue.len() >= self.capacity {
            book.stats.dropped_queue_full += 1;
            return Err(Refused { item, reason: RefuseReason::QueueFull });
        }
        book.stats.enqueued += 1;
        self.queued[i] += 1;
        self.queue.push_back((tenant, Entry { item, cost, enqueued: now }));
        Ok(())
    }

    /// The oldest item, after dropping head items that outlived their own tenant's `max_wait`.
    pub fn pop(&mut self, now: Instant, mut dropped: impl FnMut(TenantId, T, DropReason)) -> Option<Popped<T>> {
        loop {
            let (tenant, e) = self.queue.pop_front()?;
            let i = tenant.0 as usize;
            self.queued[i] -= 1;
            let book = &mut self.books[i];
            if book.expired(e.enqueued, now) {
                book.stats.dropped_deadline += 1;
                dropped(tenant, e.item, DropReason::Deadline);
                continue;
            }
            let waited = book.on_pop(e.cost, e.enqueued, now);
            return Some(Popped { tenant, item: e.item, cost: e.cost, waited });
        }
    }

    pub fn done(&mut self, tenant: TenantId) {
        if let Some(book) = self.books.get_mut(tenant.0 as usize) {
            book.in_flight = book.in_flight.saturating_sub(1);
        }
    }

    /// Recorded (it shows in the tenant's config) but not enforced.
    pub fn set_max_in_flight(&mut self, tenant: TenantId, max: Option<u32>) -> Result<(), ConfigError> {
        if max == Some(0) {
            return Err(ConfigError::ZeroInFlight);
        }
        let Some(book) = self.books.get_mut(tenant.0 as usize).filter(|b| b.configured) else {
            return Err(ConfigError::UnknownTenant(tenant.0));
        };
        book.cfg.max_in_flight = max;
        Ok(())
    }

    pub fn drain(&mut self, mut dropped: impl FnMut(TenantId, T, DropReason)) -> usize {
        let n = self.queue.len();
        for (tenant, e) in self.queue.drain(..) {
            let i = tenant.0 as usize;
            self.books[i].stats.dropped_drained += 1;
            self.queued[i] -= 1;
            dropped(tenant, e.item, DropReason::Drained);
        }
        n
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn tenant_len(&self, tenant: TenantId) -> usize {
        self.queued.get(tenant.0 as usize).copied().unwrap_or(0)
    }

    pub fn has_ready(&self) -> bool {
        !self.queue.is_empty()
    }

    pub fn stats(&self, tenant: TenantId) -> Option<TenantStats> {
        let i = tenant.0 as usize;
        let book = self.books.get(i)?;
        book.known.then(|| book.snapshot(self.queued[i]))
    }

    pub fn is_configured(&self, tenant: TenantId) -> bool {
        self.books.get(tenant.0 as usize).is_some_and(|b| b.configured)
    }

    pub fn refused_unknown_tenant(&self) -> u64 {
        self.refused_unknown_tenant
    }
}
