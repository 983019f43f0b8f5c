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
use crate::call::record::{CallRecordSink, EndReason};
use crate::call::uas::{CallGuards, SipEnd, Uas, UasConfig, UasEvent};
use crate::config::Config;
use crate::metrics::Metrics;
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
    pub metrics: Arc<Metrics>,
    /// The threads that read calls' RTP in scheduler order.
    pub workers: Arc<MediaWorkers>,
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
}

impl SipDriver {
    /// Serves SIP until `shutdown`, then ends every call (BYE, `stop` to agents) before returning.
    pub async fn run(self, sockets: SipSockets, shutdown: CancellationToken) {
        let SipSockets { udp, tcp } = sockets;
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
        );
        let (tcp_in_tx, mut tcp_in_rx) = mpsc::channel::<TcpInbound>(TCP_INBOUND);
        let (report_tx, mut report_rx) = mpsc::channel::<MediaReport>(1024);
        let mut tcp_writers: HashMap<u64, mpsc::Sender<Vec<u8>>> = HashMap::new();
        let mut calls: HashMap<CallId, CallEntry> = HashMap::new();
        let mut next_conn: u64 = 1;
        let mut buf = vec![0u8; 65_536];
        let limits = Limits { max_message_bytes: self.config.sip_max_message_bytes, ..Limits::default() };
        let mut draining = false;

        loop {
            let deadline = uas.poll_timeout().map(tokio::time::Instant::from_std);
            let snapshot = self.snapshot.load();
            tokio::select! {
                received = udp.recv_from(&mut buf) => {
                    if let Ok((n, from)) = received {
                        uas.handle_message(Instant::now(), &buf[..n], Peer { addr: from, transport: Transport::Udp }, &snapshot);
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
                        uas.handle_message(Instant::now(), &bytes, Peer { addr: peer, transport: Transport::Tcp { conn } }, &snapshot);
                    }
                    TcpInbound::Closed { conn } => {
                        tcp_writers.remove(&conn);
                        uas.handle_connection_lost(Instant::now(), conn, &snapshot);
                    }
                },
                Some(report) = report_rx.recv() => match report {
                    MediaReport::Ready { call, port } => uas.answer(Instant::now(), call, port),
                    MediaReport::Failed { call, status, reason, retry_after } => {
                        uas.reject(Instant::now(), call, status, reason, retry_after);
                        calls.remove(&call);
                    }
                    MediaReport::Ended { call } => {
                        uas.hangup(Instant::now(), call);
                        calls.remove(&call);
                    }
                },
                _ = sleep_until(deadline) => uas.handle_timeout(Instant::now(), &snapshot),
                _ = shutdown.cancelled(), if !draining => {
                    draining = true;
                    uas.start_draining();
                    tracing::info!(calls = calls.len(), "draining: ending active calls");
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
                let Some(lease) = self.ports.lease() else {
                    tracing::warn!(tenant = %incoming.tenant_name, call_id = %call, "no free RTP port");
                    uas.reject(Instant::now(), call, 503, "Service Unavailable - No Media Port", Some(5));
                    return;
                };
                let (ctx, crx) = mpsc::channel(CALL_COMMANDS);
                calls.insert(call, CallEntry { commands: ctx });
                let span = tracing::info_span!("call", tenant = %incoming.tenant_name, call_id = %call);
                tracing::info!(parent: &span, from = %incoming.from, to = %incoming.to, app = %incoming.app.name, codec = ?incoming.negotiated.codec, "incoming call");
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
                    metrics: self.metrics.tenant(incoming.tenant, &incoming.tenant_name),
                    max_frame_age: self.max_frame_age(incoming.tenant),
                };
                self.calls.spawn(
                    media::run_call(setup, lease, crx, reports.clone(), self.sink.clone(), self.counters.clone())
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
            UasEvent::Refused { tenant, status, refusal } => {
                let tenant = tenant
                    .and_then(|t| self.snapshot.load().tenant(t).map(|t| t.name.to_string()))
                    .unwrap_or_else(|| "unattributed".to_owned());
                tracing::info!(tenant = %tenant, status, reason = refusal.label(), "request refused");
            }
            UasEvent::Malformed { label, source } => {
                tracing::debug!(%source, kind = label, "malformed SIP message");
            }
        }
    }
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
