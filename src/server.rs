//! Wiring: builds the routing snapshot, binds the SIP, RTP and HTTP listeners, runs them, and drains on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::Router;
use axum::routing::get;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::call::record::{CallRecordSink, LogAndFileSink};
use crate::call::uas::CallGuards;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::sched::admission::Admission;
use crate::sched::breaker::{BreakerConfig, Breakers};
use crate::tenant::TenantId;
use crate::transport::ingress::{BehindTracker, MediaWorkers};
use crate::transport::media::MediaCounters;
use crate::transport::rtp_ports::RtpPortPool;
use crate::transport::sip::{SipDriver, SipSockets};

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
    MediaWorkers(#[from] crate::sched::bulkhead::BulkheadError),
}

/// A started server: its bound addresses, and the handle that stops it.
pub struct Running {
    pub sip_addr: SocketAddr,
    pub http_addr: SocketAddr,
    shutdown: CancellationToken,
    calls: TaskTracker,
    sip_task: tokio::task::JoinHandle<()>,
    http_task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops taking calls, ends the active ones (BYE to callers, `stop` to agents), and waits up to `grace`.
    pub async fn shutdown(self, grace: Duration) {
        self.shutdown.cancel();
        self.calls.close();
        let calls = self.calls;
        let _ = tokio::time::timeout(grace, async move {
            let _ = self.sip_task.await;
            calls.wait().await;
        })
        .await;
        self.http_task.abort();
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

    let shutdown = CancellationToken::new();
    let guards = call_guards(&config)?;
    let workers = Arc::new(media_workers(&config)?);
    let metrics = Arc::new(Metrics::new(&config.metrics));
    tracing::info!(workers = workers.workers(), scheduler = workers.scheduler().label(), "media workers started");
    tokio::spawn(watch_workers(Arc::clone(&workers), Arc::clone(&guards.admission), shutdown.clone()));
    let calls = TaskTracker::new();
    let driver = SipDriver { config, snapshot, sink, ports, counters, calls: calls.clone(), guards, metrics, workers };
    let sip_task = tokio::spawn(driver.run(sockets, shutdown.clone()));
    let app = Router::new().route("/healthz", get(|| async { "ok\n" }));
    let http_task = tokio::spawn(async move {
        if let Err(e) = axum::serve(http, app).await {
            tracing::error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(Running { sip_addr, http_addr, shutdown, calls, sip_task, http_task })
}

/// Once a second, tells admission which tenants the media workers are persistently behind for, and whether they are
/// behind for the whole node (see `transport::ingress::BehindTracker`).
async fn watch_workers(workers: Arc<MediaWorkers>, admission: Arc<Admission>, shutdown: CancellationToken) {
    let mut tracker = BehindTracker::default();
    let mut was_node_behind = false;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = shutdown.cancelled() => return,
        }
        let totals = workers.totals();
        let (behind, node) = tracker.update(&totals);
        for (i, &b) in behind.iter().enumerate() {
            admission.set_tenant_behind(TenantId(i as u32), b);
        }
        admission.set_node_behind(node);
        if node != was_node_behind {
            tracing::warn!(behind = node, "media workers persistently behind for every busy tenant: new calls refused");
            was_node_behind = node;
        }
    }
}

/// The media worker pool, each tenant given its plan's weight and queue room.
pub fn media_workers(config: &Config) -> Result<MediaWorkers, StartError> {
    let workers = MediaWorkers::start(config.media_workers, config.scheduler)?;
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
