//! Wiring: builds the routing snapshot and the metrics, binds the SIP, RTP and HTTP listeners, runs them, and drains
//! on shutdown.
//!
//! HTTP: `GET /healthz` (200 while the process runs), `GET /readyz` (200 while serving, 503 while starting or
//! draining), `GET /metrics` (Prometheus text format 0.0.4, see `docs/metrics.md`; the operator token only, as
//! `Authorization: Bearer`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio_util::task::TaskTracker;

use crate::call::record::{CallRecordSink, LogAndFileSink};
use crate::call::uas::CallGuards;
use crate::config::Config;
use crate::metrics::{self, Metrics};
use crate::sched::admission::Admission;
use crate::sched::breaker::{BreakerConfig, Breakers};
use crate::tenant::{Snapshot, TenantId};
use crate::transport::ingress::{BehindTracker, CapacityTracker, MediaWorkers};
use crate::transport::media::MediaCounters;
use crate::transport::rtp_ports::RtpPortPool;
use crate::transport::sip::{SipControl, SipDriver, SipShutdown, SipSockets};

/// How long a drain waits, once its grace is over and the remaining calls are being ended, for their BYEs to be
/// answered and their records written.
const HANG_UP_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("cannot listen for SIP on {addr}: {source}")]
    SipListen { addr: SocketAddr, source: std::io::Error },
    #[error("cannot listen for HTTP on {addr}: {source}")]
    HttpListen { addr: SocketAddr, source: std::io::Error },
    #[error("tenant {tenant}: {reason}")]
    Tenant { tenant: String, reason: String },
    #[error("cannot start the media workers: {0}")]
    MediaWorkers(#[from] crate::transport::ingress::MediaWorkersError),
    #[error("control plane: {0}")]
    ControlPlane(#[from] crate::api::ControlPlaneError),
}

/// Where the server is in its life, as `GET /readyz` reports it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    /// Listeners bound, not taking calls yet.
    Starting = 0,
    /// Taking calls.
    Serving = 1,
    /// Shutdown requested: refusing new calls, letting (then making) the active ones end.
    Draining = 2,
}

/// The server's [`Phase`], shared with the HTTP handlers.
#[derive(Debug)]
pub struct Readiness(AtomicU8);

impl Readiness {
    fn new() -> Readiness {
        Readiness(AtomicU8::new(Phase::Starting as u8))
    }

    pub fn phase(&self) -> Phase {
        match self.0.load(Ordering::Acquire) {
            0 => Phase::Starting,
            1 => Phase::Serving,
            _ => Phase::Draining,
        }
    }

    /// Moves to `phase`; never back out of `Draining`.
    fn set(&self, phase: Phase) {
        let _ = self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
            (now != Phase::Draining as u8).then_some(phase as u8)
        });
    }
}

/// A started server: its bound addresses, its metrics, and the handle that stops it.
pub struct Running {
    pub sip_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    shutdown: SipShutdown,
    calls: TaskTracker,
    sip_task: tokio::task::JoinHandle<()>,
    http_task: tokio::task::JoinHandle<()>,
    control: crate::api::ControlPlane,
}

impl Running {
    pub fn phase(&self) -> Phase {
        self.readiness.phase()
    }

    /// Drains: `/readyz` turns 503 and new INVITEs get 503 with Retry-After at once; active calls go on for up to
    /// `grace`; those still up then are ended (BYE to callers, `stop` to agents), and their BYEs and records get
    /// up to [`HANG_UP_WAIT`] more. Returns early when every call has ended.
    pub async fn shutdown(self, grace: Duration) {
        self.readiness.set(Phase::Draining);
        self.shutdown.drain.cancel();
        self.calls.close();
        let calls = self.calls;
        let mut sip_task = self.sip_task;
        let ended = tokio::time::timeout(grace, async {
            calls.wait().await;
            let _ = (&mut sip_task).await;
        })
        .await
        .is_ok();
        if !ended {
            self.shutdown.hang_up.cancel();
            let _ = tokio::time::timeout(HANG_UP_WAIT, async {
                let _ = (&mut sip_task).await;
                calls.wait().await;
            })
            .await;
        }
        sip_task.abort();
        self.control.shutdown(Duration::from_secs(5)).await;
        self.http_task.abort();
    }
}

/// What the HTTP handlers read.
#[derive(Clone)]
struct HttpState {
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
    snapshot: Arc<ArcSwap<Snapshot>>,
    guards: CallGuards,
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    match state.readiness.phase() {
        Phase::Serving => (StatusCode::OK, "ready\n"),
        Phase::Starting => (StatusCode::SERVICE_UNAVAILABLE, "starting\n"),
        Phase::Draining => (StatusCode::SERVICE_UNAVAILABLE, "draining\n"),
    }
}

async fn metrics_handler(State(state): State<HttpState>) -> impl IntoResponse {
    record_circuits(&state.metrics, &state.snapshot.load(), &state.guards, Instant::now());
    // Encoding reads a few small files under /proc/self: quick, but file IO, so off the async workers.
    let metrics = state.metrics.clone();
    match tokio::task::spawn_blocking(move || metrics.encode()).await {
        Ok(text) => (StatusCode::OK, [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "encoding metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// Sets `fairvox_provider_circuit_open` for every (tenant, app) from its breaker, at scrape time: a breaker opens
/// and half-opens with time, not only on events, so reading it when Prometheus asks is what is exact.
pub fn record_circuits(metrics: &Metrics, snapshot: &Snapshot, guards: &CallGuards, now: Instant) {
    for (id, app, open) in guards.breakers.open_flags(now) {
        let Some(tenant) = snapshot.tenant(id) else { continue };
        // A placeholder (a deleted app's position, every app of an offboarded tenant) has no circuit to show, and
        // recording it would bring back the series `Metrics::forget_tenant` removed.
        let Some(app) = tenant.apps.get(app).filter(|a| !a.name.is_empty()) else { continue };
        metrics.tenant(id, &tenant.name).set_provider_circuit_open(&app.name, open);
    }
}

/// Binds everything and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| StartError::DataDir { path: config.data_dir.display().to_string(), source })?;
    let sockets = SipSockets::bind(config.sip_listen)
        .await
        .map_err(|source| StartError::SipListen { addr: config.sip_listen, source })?;
    let sip_addr = sockets.udp.local_addr().unwrap_or(config.sip_listen);
    let http = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .map_err(|source| StartError::HttpListen { addr: config.http_listen, source })?;
    let http_addr = http.local_addr().unwrap_or(config.http_listen);

    let snapshot = Arc::new(ArcSwap::from_pointee(config.snapshot()));
    let sink: Arc<dyn CallRecordSink> = Arc::new(LogAndFileSink::open(config.data_dir.join("call-records.jsonl")));
    let rtp_ip = if config.sip_listen.ip().is_unspecified() { config.sip_listen.ip() } else { config.advertise_ip() };
    let ports = RtpPortPool::new(rtp_ip, config.rtp_ports);
    let counters = Arc::new(MediaCounters::default());
    tracing::info!(
        sip = %sip_addr, http = %http_addr, rtp_ports = %format!("{}-{}", config.rtp_ports.lo, config.rtp_ports.hi),
        tenants = config.tenants.len(), data_dir = %config.data_dir.display(), "fairvox serving"
    );

    let metrics = Arc::new(Metrics::new(&config.metrics));
    // Each tenant's latency budget, which its p99 alert compares with (this also gives every configured tenant,
    // up to `metrics.max_tenants` in config order, its label from the start).
    for (index, tenant) in config.tenants.iter().enumerate() {
        if let Some(plan) = config.plans.get(&tenant.plan) {
            let budget = Duration::from_millis(u64::from(plan.max_frame_queue_ms()));
            metrics.tenant(TenantId(index as u32), &tenant.id).set_latency_budget(budget);
        }
    }
    let readiness = Arc::new(Readiness::new());
    let shutdown = SipShutdown::default();
    let guards = call_guards(&config)?;
    let workers = Arc::new(media_workers(&config)?);
    let (sip_control, sip_commands) = SipControl::channel();
    let whip_sessions = crate::transport::webrtc::WhipSessions::default();
    let control = crate::api::ControlPlane::start(
        &config,
        &snapshot,
        &guards,
        &workers,
        &metrics,
        sip_control,
        whip_sessions.clone(),
    )?;
    let sink = control.call_record_sink(sink);
    tracing::info!(workers = workers.workers(), scheduler = workers.scheduler().label(), "media workers started");
    tokio::spawn(watch_workers(
        Arc::clone(&workers),
        Arc::clone(&guards.admission),
        CapacityTracker::new(config.worker_busy_threshold),
        Arc::clone(&metrics),
        shutdown.hang_up.clone(),
    ));
    let calls = TaskTracker::new();

    let state = HttpState {
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        snapshot: snapshot.clone(),
        guards: guards.clone(),
    };
    // `/metrics` lists every tenant's label and counts: the operator's token only. Health checks reveal nothing per
    // tenant and stay open.
    let metrics_route =
        control.operator_only(Router::new().route("/metrics", get(metrics_handler)).with_state(state.clone()));
    let whip = crate::transport::webrtc::Whip::new(
        crate::transport::webrtc::WhipDeps {
            snapshot: snapshot.clone(),
            guards: guards.clone(),
            ports: Arc::clone(&ports),
            workers: Arc::clone(&workers),
            metrics: metrics.clone(),
            sink: Arc::clone(&sink),
            counters: Arc::clone(&counters),
            calls: calls.clone(),
            shutdown: shutdown.clone(),
            sessions: whip_sessions,
        },
        crate::transport::webrtc::WhipSettings {
            advertise_ip: config.advertise_ip(),
            inactivity_timeout: config.rtp_inactivity_timeout,
            connect_timeout: config.provider_connect_timeout,
            playout_max_samples: config.playout_max_samples,
            plans: config.plans.clone(),
        },
    );
    let whip_routes = crate::api::whip::router(crate::api::whip::WhipState { api: control.api_state(), whip });
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
        .merge(metrics_route)
        .merge(whip_routes)
        .merge(control.router());
    let http_task = tokio::spawn(async move {
        if let Err(e) = axum::serve(http, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });

    let driver = SipDriver {
        config,
        snapshot,
        sink,
        ports,
        counters,
        calls: calls.clone(),
        guards,
        metrics: metrics.clone(),
        workers,
        control: sip_commands,
    };
    let sip_task = tokio::spawn(driver.run(sockets, shutdown.clone()));
    readiness.set(Phase::Serving);
    Ok(Running { sip_addr, http_addr, metrics, readiness, shutdown, calls, sip_task, http_task, control })
}

/// Once a second, tells admission which tenants' new calls the media workers cannot take: those they are
/// persistently behind for, or the whole node (`transport::ingress::BehindTracker`), and, while the workers are
/// hot, the tenants at or above their weighted share of them (`transport::ingress::CapacityTracker`).
async fn watch_workers(
    workers: Arc<MediaWorkers>,
    admission: Arc<Admission>,
    mut capacity: CapacityTracker,
    metrics: Arc<Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut tracker = BehindTracker::default();
    let mut was_node_behind = false;
    let mut was_hot = false;
    let (mut heated, mut last_warned) = (0u64, None);
    let mut behind = Vec::new();
    // The capacity check samples four times a second: calls arrive at tens a second and each adds load, so a
    // slower look lets a burst of set-ups carry the workers well past the threshold before it acts. Lateness is
    // judged per second (BehindTracker's thresholds are per second).
    let mut tick = tokio::time::interval(CAPACITY_SAMPLE);
    for n in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if n % 4 == 0 {
            let (late, node) = tracker.update(&workers.totals());
            behind.clear();
            behind.extend_from_slice(late);
            admission.set_node_behind(node);
            if node != was_node_behind {
                tracing::warn!(
                    behind = node,
                    "media workers persistently behind for every busy tenant: new calls refused"
                );
                was_node_behind = node;
            }
        }
        let load = workers.load();
        metrics.set_media_worker_rests(load.rests);
        let over_share = capacity.update(Instant::now(), load);
        for i in 0..behind.len().max(over_share.len()) {
            let full = behind.get(i).copied().unwrap_or(false) || over_share.get(i).copied().unwrap_or(false);
            admission.set_tenant_workers_full(TenantId(i as u32), full);
        }
        metrics.set_media_workers_load(capacity.utilisation(), capacity.hot());
        if capacity.hot() != was_hot {
            was_hot = capacity.hot();
            let busy_pct = (capacity.utilisation() * 100.0).round();
            // Near the threshold the check flips every few samples (it is admission control doing its job): say
            // so once a minute at most, with how often it flipped; each refusal is counted in the metrics anyway.
            heated += u64::from(was_hot);
            if was_hot && last_warned.is_none_or(|t: Instant| t.elapsed() >= Duration::from_secs(60)) {
                tracing::warn!(
                    busy_pct,
                    times_hot = heated,
                    "media workers hot: new calls of tenants at or above their share of them refused"
                );
                last_warned = Some(Instant::now());
                heated = 0;
            } else {
                tracing::debug!(busy_pct, hot = was_hot, "media workers' capacity check changed");
            }
        }
    }
}

/// How often the media workers' load is sampled for the capacity check.
const CAPACITY_SAMPLE: Duration = Duration::from_millis(250);

/// The media worker pool, each tenant given its plan's weight and queue room.
pub fn media_workers(config: &Config) -> Result<MediaWorkers, StartError> {
    let workers = MediaWorkers::start(
        config.media_workers,
        config.scheduler,
        config.media_cpus.clone(),
        config.media_realtime_priority,
    )?;
    for (index, tenant) in config.tenants.iter().enumerate() {
        let fail = |reason: String| StartError::Tenant { tenant: tenant.id.clone(), reason };
        let plan = config.plans.get(&tenant.plan).ok_or_else(|| fail(format!("unknown plan {:?}", tenant.plan)))?;
        workers.configure_tenant(TenantId(index as u32), plan).map_err(|e| fail(e.to_string()))?;
    }
    Ok(workers)
}

/// Admission per tenant from its plan, the node cap from `limits.max_calls`, and one breaker per (tenant, app).
pub fn call_guards(config: &Config) -> Result<CallGuards, StartError> {
    let admission = Admission::new(u32::try_from(config.max_calls).unwrap_or(u32::MAX));
    for (index, tenant) in config.tenants.iter().enumerate() {
        let fail = |reason: String| StartError::Tenant { tenant: tenant.id.clone(), reason };
        let plan = config.plans.get(&tenant.plan).ok_or_else(|| fail(format!("unknown plan {:?}", tenant.plan)))?;
        admission.set_tenant(TenantId(index as u32), plan).map_err(|e| fail(e.to_string()))?;
    }
    let breakers = Breakers::new(BreakerConfig::default(), config.tenants.iter().map(|t| t.apps.len()));
    Ok(CallGuards { admission: Arc::new(admission), breakers: Arc::new(breakers) })
}
