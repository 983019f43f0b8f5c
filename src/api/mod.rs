//! The control plane's HTTP API (JSON under `/v1`, described by `GET /openapi.json`) and its wiring into the media
//! core: the store opened under the data dir, config tenants seeded into it, the routing snapshot refreshed from it,
//! and call records written to it. `docs/api.md` is the user's guide.
//!
//! Owns: authentication (the operator token, tenant API keys), the mapping of store errors to HTTP, the route table
//! and the OpenAPI document that must match it. Must not: read a tenant's rows without a `TenantScope` (every
//! tenant route goes through [`extract::ReadScope`] or [`extract::WriteScope`]), or log a secret.
//!
//! # Routes
//!
//! Everything a tenant owns lives under `/v1/tenants/{tenant_id}/...` (the operator for any tenant, a key for its
//! own: any other id is `404`, like one that does not exist). The same routes are also mounted under `/v1/...`
//! for a key's own tenant (`GET /v1/calls` is `GET /v1/tenants/{own id}/calls`). The table is built once, by
//! [`router`], which also records every (method, path) for the test that holds it equal to the document.

pub mod auth;
pub mod error;
pub mod extract;
pub mod offboard;
mod openapi;
pub mod ratelimit;
mod reports;
mod resources;
pub mod routing;
mod seed;
pub mod sink;
mod tenants;
pub mod whip;

#[cfg(test)]
mod tests;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::http::Method;
use axum::routing::MethodRouter;

use crate::call::record::CallRecordSink;
use crate::call::uas::CallGuards;
use crate::config::{ApiSettings, Config};
use crate::metrics::Metrics;
use crate::sched::plan::PlanSet;
use crate::store::sqlite::SqliteStore;
use crate::store::{OperatorToken, Store, StoreError};
use crate::tenant::Snapshot;
use crate::transport::ingress::MediaWorkers;
use crate::transport::sip::SipControl;
use crate::transport::webrtc::WhipSessions;

pub use openapi::document;

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState {
    inner: Arc<StateInner>,
}

struct StateInner {
    store: Arc<dyn Store>,
    operator: OperatorToken,
    plans: PlanSet,
    stale_key_days: u32,
    rate_limits: ratelimit::RateLimits,
    routing: routing::Nudge,
    offboard: offboard::OffboardSettings,
}

impl ApiState {
    /// `routing` is nudged after every successful write, so the snapshot refresh runs at once instead of at its
    /// next poll. `metrics` counts the requests refused for their rate limit.
    pub fn new(
        store: Arc<dyn Store>,
        operator: OperatorToken,
        plans: PlanSet,
        settings: &ApiSettings,
        metrics: Arc<Metrics>,
        routing: routing::Nudge,
        offboard: offboard::OffboardSettings,
    ) -> ApiState {
        let rate_limits = ratelimit::RateLimits::new(settings, metrics);
        let stale_key_days = settings.stale_key_days;
        ApiState {
            inner: Arc::new(StateInner { store, operator, plans, stale_key_days, rate_limits, routing, offboard }),
        }
    }

    pub fn store(&self) -> Arc<dyn Store> {
        Arc::clone(&self.inner.store)
    }

    pub(crate) fn operator_token(&self) -> &OperatorToken {
        &self.inner.operator
    }

    pub(crate) fn plans(&self) -> &PlanSet {
        &self.inner.plans
    }

    pub(crate) fn stale_key_days(&self) -> u32 {
        self.inner.stale_key_days
    }

    pub(crate) fn offboard(&self) -> &offboard::OffboardSettings {
        &self.inner.offboard
    }

    pub(crate) fn rate_limits(&self) -> &ratelimit::RateLimits {
        &self.inner.rate_limits
    }

    /// Tells the routing refresh that something it reads may have changed.
    pub(crate) fn routing_changed(&self) {
        self.inner.routing.nudge();
    }
}

/// The API router: `/v1/...` and `/openapi.json`, with request ids, spans, a body limit and JSON errors for
/// unknown paths and methods under `/v1`.
pub fn router(state: ApiState) -> Router {
    build().router.with_state(state)
}

/// Every (method, path) the router serves, in the order they are added.
pub fn routes() -> Vec<(Method, String)> {
    build().routes
}

/// Where a tenant route is mounted: the canonical form and the key's own-tenant short form.
const TENANT_PREFIXES: [&str; 2] = ["/tenants/{tenant_id}", ""];

struct Built {
    router: Router<ApiState>,
    routes: Vec<(Method, String)>,
}

fn build() -> Built {
    use offboard as o;
    use reports as r;
    use resources as res;
    use tenants as t;
    // The offboarding routes are the operator's: mounted in the canonical form only.
    let mut v1 = Table::default()
        .post("/tenants", t::create)
        .get("/tenants", t::list)
        .get("/tenants/{tenant_id}", t::get)
        .patch("/tenants/{tenant_id}", t::update)
        .post("/tenants/{tenant_id}/offboard", o::start)
        .get("/tenants/{tenant_id}/offboard", o::status)
        .get("/tenants/{tenant_id}/offboard/export", o::export)
        .get("/tenants/{tenant_id}/offboard/invoice", o::final_invoice)
        .get("/tenants/{tenant_id}/offboard/certificate", o::certificate);
    for prefix in TENANT_PREFIXES {
        v1 = v1
            .post(&format!("{prefix}/apps"), res::create_app)
            .get(&format!("{prefix}/apps"), res::list_apps)
            .get(&format!("{prefix}/apps/{{app_id}}"), res::get_app)
            .patch(&format!("{prefix}/apps/{{app_id}}"), res::update_app)
            .delete(&format!("{prefix}/apps/{{app_id}}"), res::delete_app)
            .post(&format!("{prefix}/numbers"), res::claim_number)
            .get(&format!("{prefix}/numbers"), res::list_numbers)
            .get(&format!("{prefix}/numbers/{{number}}"), res::get_number)
            .patch(&format!("{prefix}/numbers/{{number}}"), res::assign_number)
            .delete(&format!("{prefix}/numbers/{{number}}"), res::release_number)
            .get(&format!("{prefix}/number-releases"), res::list_releases)
            .post(&format!("{prefix}/trunks"), res::create_trunk)
            .get(&format!("{prefix}/trunks"), res::list_trunks)
            .get(&format!("{prefix}/trunks/{{trunk_id}}"), res::get_trunk)
            .patch(&format!("{prefix}/trunks/{{trunk_id}}"), res::update_trunk)
            .delete(&format!("{prefix}/trunks/{{trunk_id}}"), res::delete_trunk)
            .post(&format!("{prefix}/keys"), res::create_key)
            .get(&format!("{prefix}/keys"), res::list_keys)
            .get(&format!("{prefix}/keys/{{prefix}}"), res::get_key)
            .delete(&format!("{prefix}/keys/{{prefix}}"), res::revoke_key)
            .get(&format!("{prefix}/calls"), r::list_calls)
            .get(&format!("{prefix}/calls/{{call_sid}}"), r::get_call)
            .get(&format!("{prefix}/usage"), r::usage)
            .get(&format!("{prefix}/invoices"), r::invoice)
            .get(&format!("{prefix}/audit"), r::list_audit);
    }
    let mut routes: Vec<(Method, String)> = v1.routes.into_iter().map(|(m, p)| (m, format!("/v1{p}"))).collect();
    routes.push((Method::GET, "/openapi.json".to_owned()));
    let v1 = v1.router.method_not_allowed_fallback(error::method_not_allowed).fallback(error::no_route);
    let router = Router::new()
        .nest("/v1", v1)
        .route("/openapi.json", axum::routing::get(openapi::serve))
        .layer(axum::middleware::from_fn(extract::request_span))
        .layer(DefaultBodyLimit::max(extract::MAX_BODY_BYTES));
    Built { router, routes }
}

/// Adds routes to a router and remembers them.
#[derive(Default)]
struct Table {
    router: Router<ApiState>,
    routes: Vec<(Method, String)>,
}

impl Table {
    fn get<H: Handler<T, ApiState>, T: 'static>(self, path: &str, handler: H) -> Table {
        self.push(Method::GET, path, axum::routing::get(handler))
    }

    fn post<H: Handler<T, ApiState>, T: 'static>(self, path: &str, handler: H) -> Table {
        self.push(Method::POST, path, axum::routing::post(handler))
    }

    fn patch<H: Handler<T, ApiState>, T: 'static>(self, path: &str, handler: H) -> Table {
        self.push(Method::PATCH, path, axum::routing::patch(handler))
    }

    fn delete<H: Handler<T, ApiState>, T: 'static>(self, path: &str, handler: H) -> Table {
        self.push(Method::DELETE, path, axum::routing::delete(handler))
    }

    fn push(mut self, method: Method, path: &str, method_router: MethodRouter<ApiState>) -> Table {
        self.router = self.router.route(path, method_router);
        self.routes.push((method, path.to_owned()));
        self
    }
}

// ---- wiring ----

/// Why the control plane did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlPlaneError {
    #[error("store: {0}")]
    Store(#[from] StoreError),
    #[error("operator token: {0}")]
    Token(#[from] auth::TokenError),
    #[error("seeding config tenant {tenant} into the store: {reason}")]
    Seed { tenant: String, reason: String },
    #[error("cannot start the {0} thread: {1}")]
    Thread(&'static str, std::io::Error),
}

/// The started control plane: the store, the API state, the routing refresh, the call record writer and the
/// offboarding runner.
pub struct ControlPlane {
    state: ApiState,
    refresh: routing::RefreshThread,
    writer: sink::StoreWriter,
    runner: offboard::runner::RunnerThread,
}

impl ControlPlane {
    /// Opens the store in `config.data_dir`, seeds the config's tenants into it (see `docs/store.md`, "Config and
    /// store"), builds the routing snapshot from it and swaps it into `snapshot`, configures admission, media
    /// workers, breakers and latency-budget metrics for its tenants, and starts the refresh thread and the call
    /// record writer, and the offboarding runner (which resumes the jobs an earlier process left unfinished; it
    /// reaches the SIP driver through `sip`). Blocks on the store for a moment: call it at start-up, before the SIP
    /// driver runs.
    pub fn start(
        config: &Config,
        snapshot: &Arc<ArcSwap<Snapshot>>,
        guards: &CallGuards,
        workers: &Arc<MediaWorkers>,
        metrics: &Arc<Metrics>,
        sip: SipControl,
        webrtc: WhipSessions,
    ) -> Result<ControlPlane, ControlPlaneError> {
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&config.data_dir)?);
        let (operator, source) = auth::operator_token(std::env::var(auth::ADMIN_TOKEN_ENV).ok(), &config.data_dir)?;
        match &source {
            auth::TokenSource::Env => tracing::info!("operator token from {}", auth::ADMIN_TOKEN_ENV),
            auth::TokenSource::File { path, created: true } => {
                tracing::info!(path = %path.display(), "operator token generated and written (mode 0600)")
            }
            auth::TokenSource::File { path, created: false } => {
                tracing::info!(path = %path.display(), "operator token read")
            }
        }
        seed::seed_config_tenants(store.as_ref(), config)?;
        let mut sync = routing::RoutingSync::new(
            Arc::clone(&store),
            Arc::clone(snapshot),
            routing::Targets {
                admission: Arc::clone(&guards.admission),
                breakers: Arc::clone(&guards.breakers),
                workers: Arc::clone(workers),
                metrics: Arc::clone(metrics),
            },
            config.plans.clone(),
            config.tenants.iter().map(|t| t.id.as_str()),
        );
        sync.refresh()?;
        sync.sync_budgets(crate::store::UtcDay::from_unix_ms(crate::store::Clock::now_ms(&crate::store::SystemClock)))?;
        let refresh = routing::RefreshThread::start(sync).map_err(|e| ControlPlaneError::Thread("routing", e))?;
        let writer = sink::StoreWriter::start(Arc::clone(&store), sink::QUEUE_CAPACITY, Some(Arc::clone(metrics)))
            .map_err(|e| ControlPlaneError::Thread("call record writer", e))?;
        let media = offboard::runner::LiveMediaCore {
            snapshot: Arc::clone(snapshot),
            admission: Arc::clone(&guards.admission),
            workers: Arc::clone(workers),
            metrics: Arc::clone(metrics),
            sip,
            webrtc,
            records: writer.flush_handle(),
        };
        let runner = offboard::runner::Runner::new(
            Arc::clone(&store),
            Arc::new(media),
            offboard::runner::RunnerConfig {
                data_dir: config.data_dir.clone(),
                plans: config.plans.clone(),
                stale_key_days: config.api.stale_key_days,
            },
            refresh.nudge(),
        );
        let runner =
            offboard::runner::RunnerThread::start(runner).map_err(|e| ControlPlaneError::Thread("offboarding", e))?;
        let offboarding = offboard::OffboardSettings {
            grace_secs: config.offboard_grace.as_secs(),
            data_dir: config.data_dir.clone(),
            nudge: runner.nudge(),
        };
        let state = ApiState::new(
            store,
            operator,
            config.plans.clone(),
            &config.api,
            Arc::clone(metrics),
            refresh.nudge(),
            offboarding,
        );
        Ok(ControlPlane { state, refresh, writer, runner })
    }

    /// The API's shared state (for routes outside `/v1` that authenticate the same way: WHIP).
    pub fn api_state(&self) -> ApiState {
        self.state.clone()
    }

    /// The API, to merge into the server's router.
    pub fn router(&self) -> Router {
        router(self.state.clone())
    }

    /// `routes` readable with the operator token only (`401` otherwise): for `GET /metrics`, which lists every
    /// tenant's label and counts on the listener tenants use for the API.
    pub fn operator_only(&self, routes: Router) -> Router {
        routes.route_layer(axum::middleware::from_fn_with_state(self.state.clone(), extract::require_operator))
    }

    /// `next` followed by the store: each record goes to `next` (the log and the JSONL file), then is queued for
    /// the store's writer thread.
    pub fn call_record_sink(&self, next: Arc<dyn CallRecordSink>) -> Arc<dyn CallRecordSink> {
        Arc::new(self.writer.sink(next))
    }

    pub fn store(&self) -> Arc<dyn Store> {
        self.state.store()
    }

    /// Stops the refresh and waits up to `grace` for queued call records to reach the store.
    pub async fn shutdown(&self, grace: Duration) {
        // A job stopped between steps resumes at the next start.
        self.runner.stop();
        self.refresh.stop();
        self.writer.flush(grace).await;
    }
}
