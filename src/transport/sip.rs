//! The SIP driver: owns the UDP socket and TCP listener, the clock, and the sans-IO UAS core; spawns a media task
//! per call and relays between them.
//!
//! One task runs the UAS core for every call: each message costs a parse and a few map look-ups, so one task
//! keeps call setup ordered and lock-free. TCP connections get a reader task (framing by Content-Length, RFC
//! 3261 §18.3) and a writer task each, bounded on both sides.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::call::CallId;
use crate::call::record::{CallRecord, CallRecordSink, EndReason};
use crate::call::uas::{CallGuards, PreparedBye, Refusal, SipEnd, Uas, UasConfig, UasEvent};
use crate::config::Config;
use crate::metrics::{Metrics, RejectReason, TenantMetrics};
use crate::proto::sip::transaction::{Peer, Timers, Transport};
use crate::proto::sip::{self, Framed, Limits};
use crate::tenant::{Snapshot, TenantId};
use crate::transport::ingress::MediaWorkers;
use crate::transport::media::{self, CallSetup, MediaCommand, MediaCounters, MediaReport};
use crate::transport::rtp_ports::RtpPortPool;

/// Bound on messages queued from all TCP readers to the SIP task, and per connection to its writer.
const TCP_INBOUND: usize = 1024;
const TCP_OUTBOUND: usize = 64;
/// Bound on commands queued to one call's media task.
const CALL_COMMANDS: usize = 16;

enum TcpInbound {
    Message { conn: u64, peer: SocketAddr, bytes: Vec<u8> },
    Closed { conn: u64 },
}

/// Shared state the SIP driver needs.
pub struct SipDriver {
    pub config: Config,
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub sink: Arc<dyn CallRecordSink>,
    pub ports: Arc<RtpPortPool>,
    pub counters: Arc<MediaCounters>,
    /// Every call's media task, so that a drain can wait for their records.
    pub calls: TaskTracker,
    pub guards: CallGuards,
    /// The node's metrics. The driver records SIP messages (through the UAS core), refusals, calls in progress,
    /// and each finished call's outcome and billable seconds.
    pub metrics: Arc<Metrics>,
    /// The threads that read calls' RTP in scheduler order.
    pub workers: Arc<MediaWorkers>,
    /// Commands from the control plane (see [`SipControl`]).
    pub control: mpsc::Receiver<SipCommand>,
}

/// What the control plane asks of the SIP driver: the offboarding job ends one tenant's calls, as a drain ends
/// everyone's.
#[derive(Debug)]
pub enum SipCommand {
    /// Ends every call of `tenant` now: BYE to the callers of answered calls, 480 to those still being set up,
    /// `stop` to their agents; their records are written as usual, with `reason`.
    HangUpTenant { tenant: TenantId, reason: EndReason },
    /// The BYEs that would end each answered call of `tenant` (see `Uas::bye_for_later`).
    PrepareByes { tenant: TenantId, reply: tokio::sync::oneshot::Sender<Vec<PreparedBye>> },
    /// Sends BYEs an earlier process prepared for calls that died with it.
    SendByes { byes: Vec<PreparedBye> },
}

/// The control plane's handle on the SIP driver, for blocking threads (the offboarding runner). Bounded: a
/// command that does not fit is refused, never waited on by the driver.
#[derive(Clone, Debug)]
pub struct SipControl {
    tx: mpsc::Sender<SipCommand>,
}

/// Commands queued to the SIP driver at most.
const CONTROL_QUEUE: usize = 64;

impl SipControl {
    pub fn channel() -> (SipControl, mpsc::Receiver<SipCommand>) {
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        (SipControl { tx }, rx)
    }

    /// Queues `command`, waiting for room: from a blocking thread only (never inside the runtime). False when the
    /// driver is gone.
    pub fn send_blocking(&self, command: SipCommand) -> bool {
        self.tx.blocking_send(command).is_ok()
    }

    /// The BYEs for `tenant`'s answered calls; `None` when the driver is gone.
    pub fn prepare_byes_blocking(&self, tenant: TenantId) -> Option<Vec<PreparedBye>> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        if !self.send_blocking(SipCommand::PrepareByes { tenant, reply }) {
            return None;
        }
        answer.blocking_recv().ok()
    }
}

impl SipDriver {
    /// The tenant's plan `max_frame_queue_ms` (the plan default when the tenant is unknown, which routing rules out).
    fn max_frame_age(&self, tenant: TenantId) -> Duration {
        let ms = self
            .config
            .tenants
            .get(tenant.0 as usize)
            .and_then(|t| self.config.plans.get(&t.plan))
            .map_or(crate::sched::plan::DEFAULT_MAX_FRAME_QUEUE_MS, |p| p.max_frame_queue_ms());
        Duration::from_millis(u64::from(ms))
    }
}

/// When the driver stops: [`SipShutdown::drain`] stops taking calls (new INVITEs get 503 + Retry-After) and lets the
/// active ones go on; [`SipShutdown::hang_up`] then ends those left (BYE to callers, `stop` to agents). The driver
/// returns once it is draining and no call or BYE transaction is left.
#[derive(Clone, Debug, Default)]
pub struct SipShutdown {
    pub drain: CancellationToken,
    pub hang_up: CancellationToken,
}

/// Bound sockets, so that start-up fails early and tests can read the real ports.
pub struct SipSockets {
    pub udp: UdpSocket,
    pub tcp: TcpListener,
}

impl SipSockets {
    pub async fn bind(addr: SocketAddr) -> std::io::Result<SipSockets> {
        let udp = UdpSocket::bind(addr).await?;
        let tcp = TcpListener::bind(addr).await?;
        Ok(SipSockets { udp, tcp })
    }
}

struct CallEntry {
    commands: mpsc::Sender<MediaCommand>,
    /// Whose call it is, for a command about one tenant's calls.
    tenant_id: TenantId,
    /// The call's tenant, for a refusal reported by its media task.
    tenant: TenantMetrics,
}

/// Counts each finished call in its tenant's `fairvox_calls_total{outcome}` and `fairvox_billable_seconds_total`,
/// then hands the record on. One per call, made with the call's tenant handle, so no name is looked up.
pub(crate) struct MeteredSink {
    pub(crate) inner: Arc<dyn CallRecordSink>,
    pub(crate) tenant: TenantMetrics,
}

impl CallRecordSink for MeteredSink {
    fn record(&self, record: &CallRecord) {
        self.tenant.call_ended(record.end_reason);
        self.tenant.add_billable_seconds(record.duration_secs);
        self.inner.record(record);
    }
}

impl SipDriver {
    /// Serves SIP until `shutdown.drain`; then refuses new calls, lets the active ones end, ends those left at
    /// `shutdown.hang_up` (BYE, `stop` to agents), and returns when no call is left.
    pub async fn run(mut self, sockets: SipSockets, shutdown: SipShutdown) {
        let SipSockets { udp, tcp } = sockets;
        let (_, closed) = mpsc::channel(1);
        let mut control = std::mem::replace(&mut self.control, closed);
        let local = SocketAddr::new(self.config.advertise_ip(), udp.local_addr().map(|a| a.port()).unwrap_or(5060));
        let mut uas = Uas::new(
            UasConfig {
                local,
                limits: Limits { max_message_bytes: self.config.sip_max_message_bytes, ..Limits::default() },
                timers: Timers::default(),
                max_calls: self.config.max_calls,
                seed: rand::random(),
            },
            self.guards.clone(),
        )
        .with_metrics(self.metrics.clone());
        let (tcp_in_tx, mut tcp_in_rx) = mpsc::channel::<TcpInbound>(TCP_INBOUND);
        let (report_tx, mut report_rx) = mpsc::channel::<MediaReport>(1024);
        let mut tcp_writers: HashMap<u64, mpsc::Sender<Vec<u8>>> = HashMap::new();
        let mut calls: HashMap<CallId, CallEntry> = HashMap::new();
        let mut next_conn: u64 = 1;
        let mut buf = vec![0u8; 65_536];
        let limits = Limits { max_message_bytes: self.config.sip_max_message_bytes, ..Limits::default() };
        let mut draining = false;
        let mut hanging_up = false;

        loop {
            let deadline = uas.poll_timeout().map(tokio::time::Instant::from_std);
            // The snapshot is loaded when an event arrives, not before waiting for one: the control plane swaps it
            // while this loop waits, and an INVITE must see the routing of its arrival.
            tokio::select! {
                received = udp.recv_from(&mut buf) => {
                    if let Ok((n, from)) = received {
                        uas.handle_message(Instant::now(), &buf[..n], Peer { addr: from, transport: Transport::Udp }, &self.snapshot.load());
                    }
                }
                accepted = tcp.accept(), if !draining => {
                    if let Ok((stream, peer)) = accepted {
                        let conn = next_conn;
                        next_conn += 1;
                        let (wtx, wrx) = mpsc::channel(TCP_OUTBOUND);
                        tcp_writers.insert(conn, wtx);
                        spawn_tcp_connection(stream, peer, conn, limits, tcp_in_tx.clone(), wrx);
                    }
                }
                Some(inbound) = tcp_in_rx.recv() => match inbound {
                    TcpInbound::Message { conn, peer, bytes } => {
                        uas.handle_message(Instant::now(), &bytes, Peer { addr: peer, transport: Transport::Tcp { conn } }, &self.snapshot.load());
                    }
                    TcpInbound::Closed { conn } => {
                        tcp_writers.remove(&conn);
                        uas.handle_connection_lost(Instant::now(), conn, &self.snapshot.load());
                    }
                },
                Some(report) = report_rx.recv() => match report {
                    MediaReport::Ready { call, port } => uas.answer(Instant::now(), call, port),
                    MediaReport::Failed { call, status, reason, retry_after } => {
                        uas.reject(Instant::now(), call, status, reason, retry_after);
                        if let Some(entry) = calls.remove(&call) {
                            let refusal = media_failure_reason(status);
                            entry.tenant.call_rejected(refusal);
                            tracing::info!(
                                tenant = entry.tenant.name(), call_id = %call, status, reason = refusal.label(),
                                "call refused by its media setup"
                            );
                        }
                    }
                    MediaReport::Ended { call } => {
                        uas.hangup(Instant::now(), call);
                        calls.remove(&call);
                    }
                },
                _ = sleep_until(deadline) => uas.handle_timeout(Instant::now(), &self.snapshot.load()),
                Some(command) = control.recv() => on_command(command, &mut calls, &mut uas),
                _ = shutdown.drain.cancelled(), if !draining => {
                    draining = true;
                    uas.start_draining();
                    tracing::info!(calls = calls.len(), "draining: refusing new calls, letting active calls end");
                }
                _ = shutdown.hang_up.cancelled(), if draining && !hanging_up => {
                    hanging_up = true;
                    tracing::info!(calls = calls.len(), "drain grace over: ending active calls");
                    for (call, entry) in calls.drain() {
                        let _ = entry.commands.try_send(MediaCommand::Stop(EndReason::ServerDrain));
                        uas.hangup(Instant::now(), call);
                    }
                }
            }

            while let Some(transmit) = uas.poll_transmit() {
                match transmit.dest.transport {
                    Transport::Udp => {
                        if let Err(e) = udp.send_to(&transmit.bytes, transmit.dest.addr).await {
                            tracing::debug!(dest = %transmit.dest.addr, error = %e, "SIP UDP send failed");
                        }
                    }
                    Transport::Tcp { conn } => {
                        let sent = tcp_writers.get(&conn).is_some_and(|w| w.try_send(transmit.bytes).is_ok());
                        if !sent {
                            tracing::debug!(conn, "SIP TCP connection gone or full; message dropped");
                        }
                    }
                }
            }
            while let Some(event) = uas.poll_event() {
                self.on_event(event, &mut calls, &report_tx, &mut uas);
            }
            if draining && uas.is_idle() {
                break;
            }
        }
    }

    /// The tenant a refusal is charged to: the one the request was routed to, except for a source not on the
    /// tenant's trunks (the unauthenticated source chose the number), and `unattributed` when routing did not
    /// get that far.
    fn refused_tenant(&self, tenant: Option<TenantId>, refusal: &Refusal) -> TenantMetrics {
        let routed = tenant.filter(|_| *refusal != Refusal::Forbidden);
        let snapshot = self.snapshot.load();
        match routed.and_then(|id| snapshot.tenant(id).map(|t| (id, t))) {
            Some((id, t)) => self.metrics.tenant(id, &t.name),
            None => self.metrics.unattributed(),
        }
    }

    fn on_event(
        &self,
        event: UasEvent,
        calls: &mut HashMap<CallId, CallEntry>,
        reports: &mpsc::Sender<MediaReport>,
        uas: &mut Uas,
    ) {
        match event {
            UasEvent::IncomingCall(incoming) => {
                let call = incoming.call;
                let tenant = self.metrics.tenant(incoming.tenant, &incoming.tenant_name);
                let Some(lease) = self.ports.lease() else {
                    tracing::warn!(tenant = %incoming.tenant_name, call_id = %call, sip_call_id = %incoming.sip_call_id, "no free RTP port");
                    uas.reject(Instant::now(), call, 503, "Service Unavailable - No Media Port", Some(5));
                    tenant.call_rejected(RejectReason::Overload);
                    return;
                };
                let (ctx, crx) = mpsc::channel(CALL_COMMANDS);
                calls.insert(call, CallEntry { commands: ctx, tenant_id: incoming.tenant, tenant: tenant.clone() });
                let span = tracing::info_span!("call", tenant = %incoming.tenant_name, call_id = %call);
                tracing::info!(parent: &span, sip_call_id = %incoming.sip_call_id, from = %incoming.from, to = %incoming.to, app = %incoming.app.name, codec = ?incoming.negotiated.codec, "incoming call");
                let incoming = *incoming;
                let setup = CallSetup {
                    call,
                    tenant: incoming.tenant,
                    app_index: incoming.app_index,
                    permit: incoming.permit,
                    guards: self.guards.clone(),
                    tenant_name: incoming.tenant_name.clone(),
                    app_name: incoming.app.name.clone(),
                    app_kind: incoming.app.kind.clone(),
                    custom_parameters: incoming.app.custom_parameters.clone(),
                    from: incoming.from.clone(),
                    to: incoming.to.to_string(),
                    sip_call_id: incoming.sip_call_id.clone(),
                    negotiated: incoming.negotiated.clone(),
                    invite_at: SystemTime::now(),
                    inactivity_timeout: self.config.rtp_inactivity_timeout,
                    connect_timeout: self.config.provider_connect_timeout,
                    playout_max_samples: self.config.playout_max_samples,
                    advertise_ip: self.config.advertise_ip(),
                    workers: Arc::clone(&self.workers),
                    metrics: tenant.clone(),
                    max_frame_age: self.max_frame_age(incoming.tenant),
                    transport: media::Transport::Sip,
                    media_format: incoming.app.media_format,
                };
                let sink: Arc<dyn CallRecordSink> =
                    Arc::new(MeteredSink { inner: self.sink.clone(), tenant: tenant.clone() });
                let media = media::run_call(setup, None, lease, crx, reports.clone(), sink, self.counters.clone());
                self.calls.spawn(
                    async move {
                        // In progress for as long as its media task runs, however the call ends.
                        let _active = tenant.call_started();
                        media.await
                    }
                    .instrument(span),
                );
            }
            UasEvent::Confirmed { call } => send_command(calls, call, MediaCommand::Confirmed),
            UasEvent::Ended { call, reason } => {
                let reason = match reason {
                    SipEnd::CallerBye => EndReason::CallerBye,
                    SipEnd::Cancelled => EndReason::Cancelled,
                    SipEnd::AckTimeout => EndReason::AckTimeout,
                };
                if let Some(entry) = calls.remove(&call) {
                    let _ = entry.commands.try_send(MediaCommand::Stop(reason));
                }
            }
            UasEvent::MediaUpdate { call, negotiated } => send_command(calls, call, MediaCommand::Update(negotiated)),
            UasEvent::Dtmf { call, digit } => send_command(calls, call, MediaCommand::Dtmf(digit)),
            UasEvent::Refused { tenant, status, refusal, new_call, sip_call_id } => {
                let handle = self.refused_tenant(tenant, &refusal);
                if new_call {
                    handle.call_rejected(&refusal);
                }
                tracing::info!(tenant = handle.name(), sip_call_id = %sip_call_id, status, reason = refusal.label(), new_call, "request refused");
            }
            UasEvent::Malformed { label, source } => {
                tracing::debug!(%source, kind = label, "malformed SIP message");
            }
        }
    }
}

fn on_command(command: SipCommand, calls: &mut HashMap<CallId, CallEntry>, uas: &mut Uas) {
    let now = Instant::now();
    match command {
        SipCommand::HangUpTenant { tenant, reason } => {
            let ending: Vec<CallId> = calls.iter().filter(|(_, e)| e.tenant_id == tenant).map(|(c, _)| *c).collect();
            for call in &ending {
                if let Some(entry) = calls.remove(call) {
                    let _ = entry.commands.try_send(MediaCommand::Stop(reason));
                    uas.hangup(now, *call);
                }
            }
            tracing::info!(tenant = tenant.0, calls = ending.len(), reason = reason.label(), "tenant's calls ended");
        }
        SipCommand::PrepareByes { tenant, reply } => {
            let byes: Vec<PreparedBye> = calls
                .iter()
                .filter(|(_, e)| e.tenant_id == tenant)
                .filter_map(|(call, _)| uas.bye_for_later(*call))
                .collect();
            let _ = reply.send(byes);
        }
        SipCommand::SendByes { byes } => {
            for bye in &byes {
                tracing::info!(sip_call_id = %bye.sip_call_id, dest = %bye.dest.addr, "BYE for a call of an earlier process");
                uas.send_prepared_bye(now, bye);
            }
        }
    }
}

/// The rejection reason of a call its media task could not set up: `480` is the agent that could not be reached
/// (`provider_unavailable`); anything else (`503`: no media socket) is the node's lack of resources (`overload`).
fn media_failure_reason(status: u16) -> RejectReason {
    if status == 480 { RejectReason::ProviderUnavailable } else { RejectReason::Overload }
}

fn send_command(calls: &HashMap<CallId, CallEntry>, call: CallId, command: MediaCommand) {
    if let Some(entry) = calls.get(&call) {
        let _ = entry.commands.try_send(command);
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

fn spawn_tcp_connection(
    stream: TcpStream,
    peer: SocketAddr,
    conn: u64,
    limits: Limits,
    inbound: mpsc::Sender<TcpInbound>,
    mut outbound: mpsc::Receiver<Vec<u8>>,
) {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = stream.into_split();
    tokio::spawn(async move {
        while let Some(bytes) = outbound.recv().await {
            if writer.write_all(&bytes).await.is_err() {
                break;
            }
        }
    });
    tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(8192);
        'read: loop {
            loop {
                match sip::frame_stream(&buf, &limits) {
                    Ok(Framed::NeedMore) => break,
                    Ok(Framed::Skip(n)) => {
                        let _ = buf.split_to(n.min(buf.len()));
                    }
                    Ok(Framed::Message(n)) => {
                        let message = buf.split_to(n.min(buf.len())).to_vec();
                        if inbound.send(TcpInbound::Message { conn, peer, bytes: message }).await.is_err() {
                            break 'read;
                        }
                    }
                    Err(e) => {
                        // A stream that cannot be framed cannot be resynchronised: close it (RFC 3261 §18.3).
                        tracing::debug!(%peer, kind = e.kind.label(), "unframeable SIP over TCP; closing");
                        break 'read;
                    }
                }
            }
            if buf.len() >= limits.max_message_bytes {
                break;
            }
            match reader.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
        let _ = inbound.send(TcpInbound::Closed { conn }).await;
    });
}
