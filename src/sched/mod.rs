//! Per-tenant fair scheduling of media work: the weighted fair queue and the bulkheaded worker pool.
//!
//! Owns the answer to "whose frame goes next, and on which worker", so that a noisy tenant cannot add latency to
//! any other tenant. Nothing here knows about SIP, RTP or WebSockets: items are opaque `T`s tagged with a
//! [`TenantId`](crate::tenant::TenantId).
//!
//! * [`wfq`]: the sans-IO queues (the clock is passed in): [`Wfq`] (deficit round robin over per-tenant bounded
//!   FIFOs, deadline drop, in-flight limits), the [`Fifo`] kept for comparison, and [`Scheduler`], which is either.
//! * [`fifo`]: the single global FIFO with the same bound in total, deadline rule and counters.
//! * [`bulkhead`]: `N` worker threads that drive a [`Scheduler`] and cap how many workers one tenant may hold.
//! * [`histogram`]: the fixed-bucket wait-time record behind `fairvox_sched_wait_seconds{tenant}`.

pub mod bulkhead;
pub mod fifo;
pub mod histogram;
pub mod wfq;

pub use bulkhead::{Bulkhead, BulkheadConfig, BulkheadError, BulkheadStats, PoolStats};
pub use fifo::Fifo;
pub use histogram::WaitHistogram;
pub use wfq::{
    ConfigError, DropReason, Popped, RefuseReason, Refused, Scheduler, SchedulerKind, TenantConfig, TenantStats, Wfq,
};
