//! Scheduling and admission: which tenant's calls get in, and how a tenant is shielded from its own failing agent.
//!
//! - [`plan`]: plans (a tenant's limits), the built-in defaults and the TOML-facing overrides.
//! - [`admission`]: O(1) per-INVITE admission (node cap, monthly budget, concurrency, call rate) with RAII permits.
//! - [`breaker`]: the per (tenant, app) circuit breaker that stops sending calls to an agent that keeps failing.

pub mod admission;
pub mod breaker;
pub mod plan;
