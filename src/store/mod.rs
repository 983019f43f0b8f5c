//! Persistence of the control plane behind one trait, [`Store`]: tenants, apps, numbers, trunks, API keys, call
//! records, usage and the audit log. [`sqlite::SqliteStore`] is the embedded default; a PostgreSQL back end can
//! implement the same trait without its callers changing (the trait carries no driver types).
//!
//! # The scoping rule
//!
//! Every read or write of a tenant's rows takes a [`TenantScope`], and a scope can only be had two ways:
//! [`Store::authenticate_key`] (a tenant's API key) or [`Store::operator_scope`] (an [`Operator`], obtained by
//! verifying the operator token, or claimed by an internal component under its own name). A scope names one tenant
//! and every query behind it filters on that tenant, so another tenant's row is [`StoreError::NotFound`], exactly
//! as a row that does not exist. Operator methods (tenants, the routing table) take `&Operator` and are separate.
//! This module owns the rule; it must not grow a method that reads tenant rows without one of the two.
//!
//! # Sync, on purpose
//!
//! The trait is synchronous. SQLite (rusqlite) is a blocking library whose calls take microseconds to a few
//! milliseconds, so an async trait would only wrap each call in `spawn_blocking` inside the back end and box every
//! future; a sync trait stays object-safe (`Arc<dyn Store>`), testable without a runtime (proptest included), and
//! fits [`crate::call::record::CallRecordSink`], which is sync. Async callers (the axum API) go through
//! [`blocking`], which runs one store call on tokio's blocking pool. A PostgreSQL back end can use the sync
//! `postgres` client, which is safe on that pool.

pub mod billing;
pub mod keys;
pub mod model;
pub mod sqlite;

#[cfg(test)]
mod tests;

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::call::record::CallRecord;
use crate::tenant::E164;

pub use billing::UtcDay;
pub use keys::{ApiKeySecret, KeyPepper, KeyPrefix, OperatorToken};
pub use model::*;

/// The persistence of the control plane. Methods are grouped: authentication (the way to a scope), operator
/// methods (`&Operator`), and tenant methods (`&TenantScope`). Writes run in one transaction each, together with
/// their audit entry; a tenant's writes with a read-only scope fail with [`StoreError::ReadOnly`].
///
/// The isolation test in `store::tests` reads this trait's source: a method that takes a `TenantScope` needs a
/// cross-tenant case there, and any other method must be listed as an operator or authentication method.
pub trait Store: Send + Sync {
    // ---- authentication ----

    /// The scope a presented API key grants, or why it grants none. Checks the format, then the keyed hash in
    /// constant time, then revocation, expiry and the tenant's status; sets `last_used_at` (at most once a minute).
    fn authenticate_key(&self, presented: &str) -> Result<TenantScope, AuthError>;

    /// A scope over one tenant for the operator (or an internal component acting as one). `NotFound` for a tenant
    /// that does not exist or is deleted.
    fn operator_scope(&self, operator: &Operator, tenant: &TenantSlug) -> Result<TenantScope, StoreError>;

    // ---- operator ----

    /// `Conflict(TenantExists)` when the id is taken, deleted tenants included (ids are never reused).
    fn create_tenant(&self, operator: &Operator, tenant: NewTenant) -> Result<TenantView, StoreError>;
    /// Any tenant the store has, whatever its status (an offboarded tenant's rows are gone: `NotFound`).
    fn tenant(&self, operator: &Operator, tenant: &TenantSlug) -> Result<TenantView, StoreError>;
    /// Tenants ordered by id.
    fn list_tenants(&self, operator: &Operator, page: PageRequest) -> Result<Page<TenantView>, StoreError>;
    fn set_tenant_plan(
        &self,
        operator: &Operator,
        tenant: &TenantSlug,
        plan: PlanName,
    ) -> Result<TenantView, StoreError>;
    /// `Conflict(StatusTransition)` for a move [`TenantStatus::may_become`] forbids.
    fn set_tenant_status(
        &self,
        operator: &Operator,
        tenant: &TenantSlug,
        status: TenantStatus,
    ) -> Result<TenantView, StoreError>;
    /// Everything the SIP path routes by, in one consistent read.
    fn load_routing(&self, operator: &Operator) -> Result<RoutingTable, StoreError>;
    /// The routing table's version: poll it to learn cheaply whether [`Store::load_routing`] would differ.
    fn routing_version(&self, operator: &Operator) -> Result<u64, StoreError>;

    // ---- offboarding (operator: the job outlives the tenant's rows) ----

    /// Starts offboarding a tenant, or returns the job it already has (one per tenant, never a second): the job
    /// and whether it was created now. `NotFound(Tenant)` for a tenant that does not exist and never had a job.
    fn start_offboarding(
        &self,
        operator: &Operator,
        tenant: &TenantSlug,
        grace_secs: u64,
    ) -> Result<(OffboardJob, bool), StoreError>;
    /// The tenant's job, finished ones included. `NotFound(OffboardJob)` when it has none.
    fn offboard_job(&self, operator: &Operator, tenant: &TenantSlug) -> Result<OffboardJob, StoreError>;
    /// Every job not finished, oldest first: what the runner resumes at start.
    fn unfinished_offboard_jobs(&self, operator: &Operator) -> Result<Vec<OffboardJob>, StoreError>;
    /// Notes that `step` started (the first time only). For the drain: sets the deadline and the pending BYEs
    /// unless the job has them already. `Conflict(OffboardStep)` if the job is at another step.
    fn offboard_step_started(
        &self,
        operator: &Operator,
        tenant: &TenantSlug,
        step: OffboardStep,
        drain: Option<(i64, serde_json::Value)>,
    ) -> Result<OffboardJob, StoreError>;
    /// Finishes `step` and moves the job to the next one, in one transaction with what the step leaves and the
    /// step's own change: `Suspend` sets the tenant's status to `offboarding`; `DeleteRows` deletes every row of the
    /// tenant (each table that references `tenants`, then the tenant) and records the counts per table in its
    /// detail. An audit entry is written while the tenant's rows exist. `Conflict(OffboardStep)` if the job is at
    /// another step.
    fn offboard_step_done(
        &self,
        operator: &Operator,
        tenant: &TenantSlug,
        step: OffboardStep,
        done: StepDone,
    ) -> Result<OffboardJob, StoreError>;
    /// Records a failed try of the job's current step (cleared when a step succeeds).
    fn offboard_step_failed(
        &self,
        operator: &Operator,
        tenant: &TenantSlug,
        step: OffboardStep,
        message: &str,
    ) -> Result<(), StoreError>;

    // ---- the scope's tenant ----

    fn own_tenant(&self, scope: &TenantScope) -> Result<TenantView, StoreError>;

    // ---- apps ----

    /// `Conflict(NameTaken)` when the tenant has an app of that name.
    fn create_app(&self, scope: &TenantScope, app: NewApp) -> Result<AppView, StoreError>;
    fn app(&self, scope: &TenantScope, app: &AppId) -> Result<AppView, StoreError>;
    /// The tenant's apps by name.
    fn list_apps(&self, scope: &TenantScope) -> Result<Vec<AppView>, StoreError>;
    fn update_app(&self, scope: &TenantScope, app: &AppId, update: AppUpdate) -> Result<AppView, StoreError>;
    /// `Conflict(AppInUse)` while a number is assigned to it.
    fn delete_app(&self, scope: &TenantScope, app: &AppId) -> Result<(), StoreError>;

    // ---- numbers ----

    /// Claims a number for one of the scope's apps. `Conflict(NumberTakenByAnotherTenant)` when another tenant holds
    /// it (the one fact about another tenant the store reveals: numbers are unique across the server),
    /// `Conflict(NumberAlreadyClaimed)` when this tenant does.
    fn claim_number(&self, scope: &TenantScope, number: &E164, app: &AppId) -> Result<NumberView, StoreError>;
    fn number(&self, scope: &TenantScope, number: &E164) -> Result<NumberView, StoreError>;
    /// The tenant's numbers in order.
    fn list_numbers(&self, scope: &TenantScope) -> Result<Vec<NumberView>, StoreError>;
    /// Points a number the tenant holds at another of its apps.
    fn assign_number(&self, scope: &TenantScope, number: &E164, app: &AppId) -> Result<NumberView, StoreError>;
    /// Gives a number up, keeping a release record; any tenant may claim it afterwards.
    fn release_number(&self, scope: &TenantScope, number: &E164) -> Result<NumberRelease, StoreError>;
    /// The tenant's release records, newest first.
    fn list_number_releases(&self, scope: &TenantScope) -> Result<Vec<NumberRelease>, StoreError>;

    // ---- trunks ----

    fn create_trunk(&self, scope: &TenantScope, trunk: NewTrunk) -> Result<TrunkView, StoreError>;
    fn trunk(&self, scope: &TenantScope, trunk: &TrunkId) -> Result<TrunkView, StoreError>;
    fn list_trunks(&self, scope: &TenantScope) -> Result<Vec<TrunkView>, StoreError>;
    fn update_trunk(&self, scope: &TenantScope, trunk: &TrunkId, update: TrunkUpdate) -> Result<TrunkView, StoreError>;
    fn delete_trunk(&self, scope: &TenantScope, trunk: &TrunkId) -> Result<(), StoreError>;

    // ---- API keys ----

    /// A new key; the secret in the result is never available again.
    fn create_key(&self, scope: &TenantScope, key: NewKey) -> Result<CreatedKey, StoreError>;
    fn key(&self, scope: &TenantScope, prefix: &KeyPrefix) -> Result<KeyView, StoreError>;
    /// The tenant's keys, newest first, revoked ones included.
    fn list_keys(&self, scope: &TenantScope) -> Result<Vec<KeyView>, StoreError>;
    /// Effective on the key's next lookup. Revoking a revoked key returns it unchanged.
    fn revoke_key(&self, scope: &TenantScope, prefix: &KeyPrefix) -> Result<KeyView, StoreError>;

    // ---- calls and usage ----

    /// Stores a finished call and adds its billable seconds to the usage rows in the same transaction, so usage
    /// always sums to the call records. The record's `tenant` must be the scope's. A second record with the same
    /// `call_sid` is `Conflict(CallAlreadyRecorded)` and bills nothing.
    fn record_call(&self, scope: &TenantScope, record: &CallRecord) -> Result<RecordedCall, StoreError>;
    fn call(&self, scope: &TenantScope, call_sid: &str) -> Result<CallView, StoreError>;
    fn list_calls(&self, scope: &TenantScope, query: CallQuery) -> Result<Page<CallView>, StoreError>;
    /// Usage rows in the range, by day, app and number.
    fn usage(&self, scope: &TenantScope, query: UsageQuery) -> Result<Vec<UsageRow>, StoreError>;

    // ---- audit ----

    fn list_audit(&self, scope: &TenantScope, query: AuditQuery) -> Result<Page<AuditEntry>, StoreError>;
}

/// Runs one store call on tokio's blocking pool, for async callers.
pub async fn blocking<T, F>(store: Arc<dyn Store>, call: F) -> Result<T, StoreError>
where
    T: Send + 'static,
    F: FnOnce(&dyn Store) -> Result<T, StoreError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || call(store.as_ref()))
        .await
        .map_err(|e| StoreError::Backend(BackendError::new(format!("store call did not finish: {e}"))))?
}

// ---- who acts ----

/// Who made a change, as the audit log records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Actor {
    /// The holder of the operator token.
    Operator,
    /// A tenant's API key.
    ApiKey(KeyPrefix),
    /// A component of the server acting with operator authority (the media core recording calls, the offboarding
    /// job, start-up).
    System(&'static str),
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::Operator => f.write_str("operator"),
            Actor::ApiKey(prefix) => write!(f, "key:{prefix}"),
            Actor::System(component) => write!(f, "system:{component}"),
        }
    }
}

/// Proof of operator authority. From outside the crate the only way to one is [`OperatorToken::verify`].
#[derive(Clone, Debug)]
pub struct Operator {
    actor: Actor,
}

impl Operator {
    /// Operator authority for a server component, recorded in the audit log as `system:<component>`. For wiring
    /// (the call record writer, the offboarding job), never for a request: requests prove themselves with a token.
    pub(crate) fn system(component: &'static str) -> Operator {
        Operator { actor: Actor::System(component) }
    }

    pub fn actor(&self) -> &Actor {
        &self.actor
    }
}

/// The right to read (and, with [`Access::ReadWrite`], change) one tenant's rows. Built only by
/// [`Store::authenticate_key`] and [`Store::operator_scope`]; its fields are private to the store.
#[derive(Clone, Debug)]
pub struct TenantScope {
    tenant: TenantSlug,
    actor: Actor,
    access: Access,
    /// The tenant is being offboarded: only server components may still change its rows.
    closing: bool,
}

impl TenantScope {
    /// For back ends only: the constructors of scopes are the two trait methods.
    pub(in crate::store) fn new(tenant: TenantSlug, actor: Actor, access: Access) -> TenantScope {
        TenantScope { tenant, actor, access, closing: false }
    }

    /// For back ends only: marks the scope of a tenant being offboarded.
    pub(in crate::store) fn closing(mut self, closing: bool) -> TenantScope {
        self.closing = closing;
        self
    }

    pub fn tenant(&self) -> &TenantSlug {
        &self.tenant
    }

    pub fn actor(&self) -> &Actor {
        &self.actor
    }

    pub fn access(&self) -> Access {
        self.access
    }

    /// `Err(ReadOnly)` unless the scope may write; `Err(Conflict(TenantOffboarding))` for a tenant being
    /// offboarded, unless a server component acts (the job itself, the call records of its draining calls).
    pub fn require_write(&self) -> Result<(), StoreError> {
        match self.access {
            Access::ReadWrite if self.closing && !matches!(self.actor, Actor::System(_)) => {
                Err(StoreError::Conflict(Conflict::TenantOffboarding))
            }
            Access::ReadWrite => Ok(()),
            Access::ReadOnly => Err(StoreError::ReadOnly),
        }
    }
}

// ---- errors ----

/// A value a client sent that the store will not take, with the field it came in.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct InvalidInput {
    pub field: &'static str,
    pub reason: String,
}

impl InvalidInput {
    pub fn new(field: &'static str, reason: impl Into<String>) -> InvalidInput {
        InvalidInput { field, reason: reason.into() }
    }
}

/// What a store call can fail with. `NotFound` is the same whether the row does not exist or belongs to another
/// tenant.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(Entity),
    #[error("conflict: {0}")]
    Conflict(Conflict),
    #[error("invalid input: {0}")]
    Invalid(#[from] InvalidInput),
    #[error("this key may only read")]
    ReadOnly,
    #[error("storage failure: {0}")]
    Backend(#[from] BackendError),
}

/// What was not found (what the caller asked for, not what exists).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Entity {
    Tenant,
    App,
    Number,
    Trunk,
    Key,
    Call,
    OffboardJob,
}

impl fmt::Display for Entity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Entity::Tenant => "tenant",
            Entity::App => "app",
            Entity::Number => "number",
            Entity::Trunk => "trunk",
            Entity::Key => "key",
            Entity::Call => "call",
            Entity::OffboardJob => "offboarding job",
        })
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Conflict {
    #[error("a tenant with this id exists or existed")]
    TenantExists,
    #[error("the tenant cannot go from {from} to {to}")]
    StatusTransition { from: &'static str, to: &'static str },
    #[error("another tenant holds this number")]
    NumberTakenByAnotherTenant,
    #[error("this tenant already holds this number")]
    NumberAlreadyClaimed,
    #[error("the name is taken")]
    NameTaken,
    #[error("a number is assigned to this app")]
    AppInUse,
    #[error("this call is already recorded")]
    CallAlreadyRecorded,
    #[error("the tenant is being offboarded: its rows only change through the offboarding job")]
    TenantOffboarding,
    #[error("the offboarding job is not at this step")]
    OffboardStep,
}

/// A failure of the storage itself (I/O, corruption, a newer schema), with the back end's message. Carries no
/// driver type, so callers do not depend on the back end.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct BackendError {
    message: String,
}

impl BackendError {
    pub fn new(message: impl Into<String>) -> BackendError {
        BackendError { message: message.into() }
    }
}

/// Why a presented key grants no scope. The API answers 401 to all but `Backend`, without saying which: the
/// variants are for logs and tests.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("not an API key")]
    Malformed,
    #[error("unknown key")]
    Unknown,
    #[error("key revoked")]
    Revoked,
    #[error("key expired")]
    Expired,
    #[error("the key's tenant is offboarding or deleted")]
    TenantClosed,
    #[error("storage failure: {0}")]
    Backend(#[from] BackendError),
}

// ---- time ----

/// Where the store reads the time (Unix ms) it stamps rows with and checks expiry against.
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
    }
}

/// A clock that only moves when told, for tests of expiry and `last_used_at`.
#[derive(Debug, Default)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn new(now_ms: i64) -> ManualClock {
        ManualClock(AtomicI64::new(now_ms))
    }

    pub fn advance_ms(&self, ms: i64) {
        self.0.fetch_add(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_ms(&self) -> i64 {
        (**self).now_ms()
    }
}
