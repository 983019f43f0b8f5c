//! Scheduling and admission: which tenant's calls get in, whose frame goes next and on which worker, and how a
//! tenant is shielded from its own failing agent, so that a noisy tenant cannot add latency to any other tenant.
//! Nothing here knows about SIP, RTP or WebSockets: items are opaque `T`s tagged with a
//! [`TenantId`](crate::tenant::TenantId), and time is passed in.
//!
//! - [`plan`]: plans (a tenant's limits), the built-in defaults and the TOML-facing overrides.
//! - [`admission`]: O(1) per-INVITE admission (node cap, monthly budget, concurrency, call rate) with RAII permits.
//! - [`breaker`]: the per (tenant, app) circuit breaker that stops sending calls to an agent that keeps failing.
//! - [`wfq`]: the sans-IO queues: [`Wfq`] (deficit round robin over per-tenant bounded FIFOs, deadline drop,
//!   in-flight limits), the [`Fifo`] kept for comparison, and [`Scheduler`], which is either.
//! - [`fifo`]: the single global FIFO with the same bound in total, deadline rule and counters.
//! - [`bulkhead`]: `N` worker threads that drive a [`Scheduler`] and cap how many workers one tenant may hold.
//! - [`cpus`]: cores dedicated to the media workers (`media.cpus`), and keeping the rest of the process off them.
//! - [`histogram`]: the fixed-bucket wait-time record behind `fairvox_sched_wait_seconds{tenant}`.

pub mod admission;
pub mod breaker;
pub mod bulkhead;
pub mod cpus;
pub mod fifo;
pub mod histogram;
pub mod plan;
pub mod wfq;

pub use bulkhead::{Bulkhead, BulkheadConfig, BulkheadError, BulkheadStats, PoolLoad, PoolStats, TenantLoad};
pub use fifo::Fifo;
pub use histogram::WaitHistogram;
pub use wfq::{
    ConfigError, DropReason, Popped, RefuseReason, Refused, Scheduler, SchedulerKind, TenantConfig, TenantStats, Wfq,
};
