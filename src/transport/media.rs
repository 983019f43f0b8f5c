//! The media driver of one call: owns its RTP and RTCP sockets, the provider stream handle and the 20 ms playout
//! clock, and runs the sans-IO pieces (RTP parse and statistics, G.711, re-framing, DTMF detection, playout).
//!
//! Inbound is not this task's: the call's RTP socket is registered with the media workers (`transport::ingress`),
//! which watch it, read it in their scheduler's order (latch, statistics, policing, G.711 to µ-law, re-framing) and
//! hand each [`Frame`] to the provider stream: written to a `ws://` agent's socket in the turn, or through a
//! bounded channel to the stream's task (`wss://`, echo); an agent that does not keep up loses the frame, counted
//! as `slow_consumer`. The task holds the registration ([`CallInbound`]) for the life of the call.
//! Outbound: agent audio -> bounded playout buffer -> one frame per 20 ms tick -> RTP to the caller.
//! It ends on a command from the SIP side, on the agent closing, or on RTP inactivity, and always writes a record.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use crate::call::playout::Playout;
use crate::call::record::{CallRecord, CallRecordSink, EndReason, unix_ms};
use crate::call::uas::CallGuards;
use crate::call::{CallId, FRAME_SAMPLES, L16_FRAME_BYTES};
use crate::codec::g711;
use crate::codec::resample::{Downsampler, WIDE_FRAME_SAMPLES};
use crate::metrics::{Direction as MetricDirection, TenantMetrics};
use crate::proto::media_streams::{self, MediaFormat, StreamStart};
use crate::proto::rtcp::{self, RtcpSummary, SenderInfo};
use crate::proto::rtp::{self, RtpHeader};
use crate::proto::sdp::{Direction, Negotiated};
use crate::sched::admission::CallPermit;
use crate::stream::echo;
use crate::stream::provider::{self, AgentSink, FromAgent, ProviderHandle, ToAgent};
use crate::tenant::{AppKind, Codec, TenantId};
use crate::transport::ingress::{CallInbound, InboundSetup, MediaWorkers};
use crate::transport::rtp_ports::RtpLease;
use crate::transport::webrtc::session::{MAX_TIMEOUT_WAIT, RtcSession, SessionState};

/// Capacity of the per-call channels to and from the provider stream (frames are 20 ms: 50 = 1 s).
const PROVIDER_CHANNEL: usize = 50;
/// RTCP report interval (RFC 3550 §6.2 minimum of 5 s for a two-party session).
const RTCP_INTERVAL: Duration = Duration::from_secs(5);
/// One frame of playout.
const FRAME: Duration = Duration::from_millis(20);
/// How far behind its timeline the playout clock may fall and still catch up by sending the missed frames.
const MAX_PLAYOUT_CATCH_UP: Duration = Duration::from_millis(100);
/// How long a WebRTC peer may stay unreachable (ICE disconnected) before the call ends.
const PEER_LOST_AFTER: Duration = Duration::from_secs(10);

/// What the SIP side tells a call.
#[derive(Debug)]
pub enum MediaCommand {
    Confirmed,
    Update(Negotiated),
    Dtmf(char),
    Stop(EndReason),
}

/// What a call tells the SIP side.
#[derive(Debug)]
pub enum MediaReport {
    /// Media and provider are ready: answer with this RTP port.
    Ready { call: CallId, port: u16 },
    /// The call cannot be answered: reject it.
    Failed { call: CallId, status: u16, reason: &'static str, retry_after: Option<u32> },
    /// The media side ended an answered call (agent hangup, RTP timeout): send BYE.
    Ended { call: CallId },
}

/// Everything a call's media task needs to know at start.
pub struct CallSetup {
    pub call: CallId,
    pub tenant: TenantId,
    pub app_index: usize,
    /// Held for the whole call: dropping it (whatever ends the call) frees the tenant's and the node's slot.
    pub permit: CallPermit,
    pub guards: CallGuards,
    pub tenant_name: Arc<str>,
    pub app_name: Arc<str>,
    pub app_kind: AppKind,
    pub custom_parameters: Vec<(String, String)>,
    pub from: String,
    pub to: String,
    pub sip_call_id: String,
    pub negotiated: Negotiated,
    pub invite_at: SystemTime,
    pub inactivity_timeout: Duration,
    pub connect_timeout: Duration,
    pub playout_max_samples: usize,
    pub advertise_ip: std::net::IpAddr,
    /// The workers that read the call's RTP (see `transport::ingress`).
    pub workers: Arc<MediaWorkers>,
    /// The tenant's metric handles.
    pub metrics: TenantMetrics,
    /// The tenant's plan `max_frame_queue_ms`: an inbound packet older than this when read is dropped.
    pub max_frame_age: Duration,
    /// How the caller reached us (recorded, and whether media is plain RTP or a WebRTC session).
    pub transport: Transport,
    /// The app's provider-stream format: what the agent gets and sends back.
    pub media_format: MediaFormat,
}

/// How a call reached us.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Transport {
    /// A SIP INVITE: plain RTP with G.711.
    Sip,
    /// WHIP: ICE, DTLS-SRTP, Opus, through a [`RtcSession`].
    Webrtc,
}

impl Transport {
    pub fn label(self) -> &'static str {
        match self {
            Transport::Sip => "sip",
            Transport::Webrtc => "webrtc",
        }
    }
}

/// Node-wide media counters (per-tenant families arrive with the metrics work).
#[derive(Default)]
pub struct MediaCounters {
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub dropped_slow_consumer: AtomicU64,
    pub packets_ignored: AtomicU64,
    /// Packets older than their tenant's `max_frame_queue_ms` when a media worker read them.
    pub dropped_deadline: AtomicU64,
    /// Packets drained unread because the media workers refused the call's turn (shut down).
    pub dropped_queue_full: AtomicU64,
    pub rtp_malformed: AtomicU64,
    /// Packets beyond the negotiated rate, dropped at the call's socket.
    pub policed: AtomicU64,
    /// Times a call's playout clock fell more than 100 ms behind and restarted its timeline.
    pub playout_resyncs: AtomicU64,
}

/// Runs one call's media until it ends; reports to the SIP side through `reports` and writes the record.
/// `webrtc`: a WebRTC call's session, already answered (WHIP); the call's datagrams and the agent's audio go
/// through it. `None` for a SIP call's plain RTP.
#[allow(clippy::too_many_arguments)]
pub async fn run_call(
    setup: CallSetup,
    webrtc: Option<Box<RtcSession>>,
    lease: RtpLease,
    mut commands: mpsc::Receiver<MediaCommand>,
    reports: mpsc::Sender<MediaReport>,
    sink: Arc<dyn CallRecordSink>,
    counters: Arc<MediaCounters>,
) {
    let call = setup.call;
    let mut record = Recorder::new(&setup);
    let is_webrtc = webrtc.is_some();

    // The RTP socket goes to the media workers (a descriptor of its own, closed only after it leaves their epoll
    // set); RTCP stays on this task.
    let Ok(rtp) = lease.rtp.try_clone() else {
        let _ = reports
            .send(MediaReport::Failed { call, status: 503, reason: "Service Unavailable", retry_after: Some(5) })
            .await;
        return record.finish(&*sink, EndReason::MediaUnavailable);
    };
    // WebRTC multiplexes RTCP on the media socket (str0m handles it).
    let rtcp = if is_webrtc { None } else { std_to_tokio(lease.rtcp.try_clone()) };
    let port = lease.port;

    // 1. Reach the agent (or start the echo app) before answering, unless the caller gives up first.
    let start = StreamStart {
        account_sid: setup.tenant_name.to_string(),
        call_sid: record.call_sid.clone(),
        stream_sid: media_streams::stream_sid(rand::random::<u128>()),
        from: setup.from.clone(),
        to: setup.to.clone(),
        custom_parameters: setup.custom_parameters.clone(),
        media_format: setup.media_format,
    };
    let connect = async {
        match &setup.app_kind {
            AppKind::Echo => Ok(echo::spawn_echo(PROVIDER_CHANNEL, Some(setup.metrics.clone()))),
            AppKind::Stream { url, auth_header } => {
                provider::connect(url, auth_header.as_deref(), setup.connect_timeout)
                    .await
                    .map(|socket| socket.spawn_metered(start, PROVIDER_CHANNEL, Some(setup.metrics.clone())))
            }
        }
    };
    let handle: ProviderHandle = tokio::select! {
        result = connect => match result {
            Ok(handle) => {
                setup.guards.breakers.record_success(setup.tenant, setup.app_index, Instant::now());
                handle
            }
            Err(e) => {
                setup.guards.breakers.record_failure(setup.tenant, setup.app_index, Instant::now());
                setup.metrics.provider_stream_error(e.label());
                tracing::warn!(tenant = %setup.tenant_name, call_id = %call, error = %e, kind = e.label(), "agent unreachable at answer time");
                let _ = reports.send(MediaReport::Failed { call, status: 480, reason: "Temporarily Unavailable - Agent Unreachable", retry_after: Some(30) }).await;
                return record.finish(&*sink, EndReason::AgentUnavailable);
            }
        },
        cmd = commands.recv() => {
            // The caller gave up while we were reaching the agent: that says nothing about the agent.
            setup.guards.breakers.cancel_trial(setup.tenant, setup.app_index);
            let reason = match cmd { Some(MediaCommand::Stop(r)) => r, _ => EndReason::Cancelled };
            return record.finish(&*sink, reason);
        }
    };
    let inbound = setup.workers.register(
        rtp,
        InboundSetup {
            tenant: setup.tenant,
            call,
            negotiated: setup.negotiated.clone(),
            sink: handle.sink.clone(),
            counters: Arc::clone(&counters),
            metrics: setup.metrics.clone(),
            max_age: setup.max_frame_age,
            webrtc,
            format: setup.media_format,
        },
    );
    let inbound = match inbound {
        Ok(inbound) => inbound,
        Err(e) => {
            tracing::warn!(tenant = %setup.tenant_name, call_id = %call, error = %e, "cannot hand the RTP socket to the media workers");
            let _ = tokio::time::timeout(Duration::from_secs(1), handle.tx.send(ToAgent::Stop)).await;
            let _ = reports
                .send(MediaReport::Failed { call, status: 503, reason: "Service Unavailable", retry_after: Some(5) })
                .await;
            return record.finish(&*sink, EndReason::MediaUnavailable);
        }
    };
    if reports.send(MediaReport::Ready { call, port }).await.is_err() {
        return record.finish(&*sink, EndReason::ServerDrain);
    }
    record.answered();

    let mut media = CallMedia::new(&setup, handle, inbound, counters, is_webrtc);
    let reason = media.run(rtcp.as_ref(), &mut commands, &setup).await;
    // A WebRTC session stops sending now; its own counts stand in for the RTP statistics it does not keep.
    let webrtc_counts = if is_webrtc { media.ingress.webrtc_close() } else { None };
    if matches!(
        reason,
        EndReason::AgentHangup | EndReason::RtpTimeout | EndReason::BudgetExhausted | EndReason::PeerLost
    ) {
        let _ = reports.send(MediaReport::Ended { call }).await;
    }
    media.stop_provider().await;
    {
        let ingress = media.ingress.state.lock();
        CallMedia::report_quality(&media.metrics, &mut media.lost_reported, &ingress.stats);
        record.packets_in = ingress.stats.received();
        record.packets_lost = ingress.stats.lost().max(0) as u64;
        record.dtmf_count = ingress.dtmf_count;
        tracing::debug!(
            tenant = %setup.tenant_name, call_id = %call,
            late = ingress.framing.reframer.late_dropped(), gaps = ingress.framing.reframer.gaps_filled(),
            policed = ingress.policer.policed(), playout_dropped = media.playout.dropped_bytes(), "media ended"
        );
    }
    record.packets_out = media.packets_out;
    if let Some(counts) = webrtc_counts {
        record.packets_in = counts.media_packets_in;
        record.dtmf_count = counts.digits;
    }
    // Out of the workers' epoll set before the lease's descriptor closes and its port goes back to the pool.
    drop(media);
    drop(lease);
    record.finish(&*sink, reason);
}

fn std_to_tokio(socket: std::io::Result<std::net::UdpSocket>) -> Option<UdpSocket> {
    let socket = socket.ok()?;
    socket.set_nonblocking(true).ok()?;
    UdpSocket::from_std(socket).ok()
}

/// The running media state of one answered call.
struct CallMedia {
    call: CallId,
    negotiated: Negotiated,
    /// To the provider task: stop.
    provider_tx: mpsc::Sender<ToAgent>,
    /// Marks played go here (DTMF from SIP INFO too, through the inbound side).
    sink: AgentSink,
    provider_rx: mpsc::Receiver<FromAgent>,
    /// Inbound state, shared with the media worker serving the call's turn; registered with the workers while
    /// it lives. Its socket also sends the playout RTP.
    ingress: CallInbound,
    playout: Playout,
    counters: Arc<MediaCounters>,
    metrics: TenantMetrics,
    latched_rtcp: Option<SocketAddr>,
    /// Losses already reported to the metrics.
    lost_reported: i64,
    ssrc: u32,
    out_seq: u16,
    out_ts: u32,
    out_octets: u32,
    packets_out: u64,
    sending: bool,
    /// RTP timestamp of step 0 of the playout grid (random, RFC 3550 §5.1).
    ts_base: u32,
    /// A WebRTC call: outbound audio is Opus through the session, and the session's timers run on this task.
    webrtc: bool,
    /// The agent's audio format.
    format: MediaFormat,
    /// A SIP call of an L16 app: the agent's 16 kHz audio comes down to the caller's 8 kHz.
    downsampler: Option<Box<Downsampler>>,
    /// Since when the WebRTC peer has been unreachable (ICE disconnected), if it is.
    peer_lost_since: Option<Instant>,
}

impl CallMedia {
    fn new(
        setup: &CallSetup,
        handle: ProviderHandle,
        ingress: CallInbound,
        counters: Arc<MediaCounters>,
        webrtc: bool,
    ) -> CallMedia {
        CallMedia {
            call: setup.call,
            negotiated: setup.negotiated.clone(),
            provider_tx: handle.tx,
            sink: handle.sink,
            provider_rx: handle.rx,
            ingress,
            playout: Playout::with_format(
                setup.media_format,
                setup.playout_max_samples * setup.media_format.bytes_per_second() / 8000,
                64,
            ),
            counters,
            metrics: setup.metrics.clone(),
            latched_rtcp: None,
            lost_reported: 0,
            ssrc: rand::random(),
            out_seq: rand::random(),
            out_ts: rand::random(),
            out_octets: 0,
            packets_out: 0,
            sending: false,
            ts_base: rand::random(),
            webrtc,
            format: setup.media_format,
            downsampler: (!webrtc && setup.media_format == MediaFormat::L16Wide).then(Box::default),
            peer_lost_since: None,
        }
    }

    async fn run(
        &mut self,
        rtcp: Option<&UdpSocket>,
        commands: &mut mpsc::Receiver<MediaCommand>,
        setup: &CallSetup,
    ) -> EndReason {
        // The playout clock is an absolute 20 ms timeline: a late tick is caught up at once, so the call plays
        // exactly 50 frames a second however busy the core is (a relative "delay" policy loses the late time for
        // good and the buffer, and the latency, grow for the rest of the call). After a stall longer than
        // MAX_PLAYOUT_CATCH_UP the timeline restarts from now, so a long hiccup never becomes a burst of packets.
        // The clock is armed only while audio or marks are queued: a silent agent costs no wake-ups. It re-arms on
        // the same grid, so the RTP timestamp (160 per grid step) stays continuous across silence.
        let origin = tokio::time::Instant::now();
        // Step k of the grid plays at origin + k * FRAME with RTP timestamp ts_base + k * 160.
        let step_at = |k: u64| origin + FRAME * (k as u32);
        let next_step_after =
            |t: tokio::time::Instant| (t.saturating_duration_since(origin).as_nanos() / FRAME.as_nanos()) as u64 + 1;
        let mut next_step: u64 = 1;
        let mut armed = false;
        let playout = tokio::time::sleep_until(step_at(next_step));
        tokio::pin!(playout);
        // Billing and the inactivity check, once a second.
        let mut housekeeping = tokio::time::interval_at(origin + Duration::from_secs(1), Duration::from_secs(1));
        let answered = Instant::now();
        let mut billed: u64 = 0;
        let mut rtcp_tick = tokio::time::interval_at(tokio::time::Instant::now() + RTCP_INTERVAL, RTCP_INTERVAL);
        let mut rtcp_buf = [0u8; 1500];
        let cname = format!("fairvox@{}", setup.advertise_ip);
        // A WebRTC session's own timers (ICE consent, DTLS retransmits, RTCP), at most MAX_TIMEOUT_WAIT apart.
        let rtc_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(rtc_timer);
        loop {
            tokio::select! {
                () = &mut rtc_timer, if self.webrtc => {
                    let now = Instant::now();
                    match self.ingress.webrtc_timeout(now) {
                        Some((SessionState::Failed, _)) | None => {
                            tracing::info!(tenant = %setup.tenant_name, call_id = %self.call, "WebRTC session failed; hanging up");
                            return EndReason::PeerLost;
                        }
                        Some((state, next)) => {
                            if state == SessionState::Disconnected {
                                let since = *self.peer_lost_since.get_or_insert(now);
                                if now.duration_since(since) >= PEER_LOST_AFTER {
                                    tracing::info!(tenant = %setup.tenant_name, call_id = %self.call, "WebRTC peer unreachable; hanging up");
                                    return EndReason::PeerLost;
                                }
                            } else {
                                self.peer_lost_since = None;
                            }
                            let next = next.clamp(now, now + MAX_TIMEOUT_WAIT);
                            rtc_timer.as_mut().reset(tokio::time::Instant::from_std(next));
                        }
                    }
                }
                received = recv_opt(rtcp, &mut rtcp_buf) => {
                    if let Some((n, from)) = received {
                        self.on_rtcp(&rtcp_buf[..n], from);
                    }
                }
                agent = self.provider_rx.recv() => {
                    match agent {
                        Some(FromAgent::Media(audio)) => { self.playout.push_audio(&audio); }
                        Some(FromAgent::Frame(frame)) => { self.playout.push_audio(frame.as_bytes()); }
                        Some(FromAgent::Mark(name)) => { self.playout.push_mark(name); }
                        Some(FromAgent::Clear) => {
                            let sink = &self.sink;
                            self.playout.clear(|mark| { let _ = sink.mark_played(mark); });
                        }
                        Some(FromAgent::Closed(_)) | None => return EndReason::AgentHangup,
                    }
                    if !armed && self.playout_pending() {
                        next_step = next_step_after(tokio::time::Instant::now());
                        playout.as_mut().reset(step_at(next_step));
                        armed = true;
                    }
                },
                () = &mut playout, if armed => {
                    let step = next_step;
                    next_step += 1;
                    let now = tokio::time::Instant::now();
                    if now.saturating_duration_since(step_at(next_step)) > MAX_PLAYOUT_CATCH_UP {
                        self.counters.playout_resyncs.fetch_add(1, Ordering::Relaxed);
                        next_step = next_step_after(now);
                    }
                    playout.as_mut().reset(step_at(next_step));
                    // Outbound latency: how late this frame leaves against its place on the 20 ms grid.
                    let lateness = now.saturating_duration_since(step_at(step));
                    self.on_tick(step, lateness);
                    if !self.playout_pending() {
                        armed = false;
                        // The next packet starts a talk spurt: it carries the marker bit (RFC 3551 §4.1).
                        self.sending = false;
                    }
                }
                _ = housekeeping.tick() => {
                    // Live usage, by whole seconds since answer: the call ends at the tenant's monthly limit, never
                    // past it.
                    let due = answered.elapsed().as_secs();
                    while billed < due {
                        billed += 1;
                        if setup.guards.admission.add_billed_seconds(setup.tenant, 1) == Some(0) {
                            tracing::info!(tenant = %setup.tenant_name, call_id = %self.call, "monthly minutes used up; hanging up");
                            return EndReason::BudgetExhausted;
                        }
                    }
                    let last_rtp_at = self.ingress.state.lock().last_rtp_at;
                    if self.inactivity_applies() && last_rtp_at.elapsed() >= setup.inactivity_timeout {
                        tracing::info!(tenant = %setup.tenant_name, call_id = %self.call, "no RTP for the inactivity timeout; hanging up");
                        return EndReason::RtpTimeout;
                    }
                }
                _ = rtcp_tick.tick() => {
                    if let Some(socket) = rtcp {
                        self.send_rtcp(socket, &cname).await;
                    }
                }
                cmd = commands.recv() => match cmd {
                    Some(MediaCommand::Confirmed) => {}
                    Some(MediaCommand::Update(negotiated)) => {
                        let mut ingress = self.ingress.state.lock();
                        ingress.negotiated = negotiated.clone();
                        // Hold/resume restarts the inactivity clock.
                        ingress.last_rtp_at = Instant::now();
                        drop(ingress);
                        self.negotiated = negotiated;
                    }
                    Some(MediaCommand::Dtmf(digit)) => self.ingress.send_digit(digit),
                    Some(MediaCommand::Stop(reason)) => return reason,
                    None => return EndReason::ServerDrain,
                },
            }
        }
    }

    /// Audio or marks waiting for the playout clock.
    fn playout_pending(&self) -> bool {
        self.playout.buffered_bytes() > 0 || self.playout.pending_marks() > 0
    }

    /// No RTP is expected while the caller holds the call (inactive) or only receives (we answered sendonly).
    fn inactivity_applies(&self) -> bool {
        matches!(self.negotiated.answer_direction, Direction::SendRecv | Direction::RecvOnly)
    }

    fn on_rtcp(&mut self, packet: &[u8], from: SocketAddr) {
        if self.latched_rtcp.is_none() {
            self.latched_rtcp = Some(from);
        }
        let mut ingress = self.ingress.state.lock();
        let stats = &mut ingress.stats;
        let now = Instant::now();
        let _ = rtcp::parse_compound(packet, |summary| {
            if let RtcpSummary::SenderReport { ntp_timestamp, .. } = summary {
                stats.on_sender_report(ntp_timestamp, now);
            }
        });
    }

    /// Plays step `step` of the call's 20 ms grid. The RTP timestamp follows the grid whether or not earlier
    /// steps sent anything, so silence keeps timing intact.
    fn on_tick(&mut self, step: u64, lateness: Duration) {
        self.out_ts = self.ts_base.wrapping_add((step as u32).wrapping_mul(FRAME_SAMPLES as u32));
        let may_send = matches!(self.negotiated.answer_direction, Direction::SendRecv | Direction::SendOnly);
        let mut frame = [0u8; L16_FRAME_BYTES];
        let frame = match self.format {
            MediaFormat::Mulaw8k => &mut frame[..FRAME_SAMPLES],
            MediaFormat::L16Wide => &mut frame[..],
        };
        let sink = &self.sink;
        let has_audio = self.playout.next_frame(frame, |mark| {
            let _ = sink.mark_played(mark);
        });
        if self.webrtc {
            if !has_audio {
                return;
            }
            // The session encodes at the format's rate (16 kHz for L16, see `transport::webrtc`).
            let mut pcm = [0i16; WIDE_FRAME_SAMPLES];
            let pcm = match self.format {
                MediaFormat::Mulaw8k => {
                    g711::ulaw_to_linear_slice(frame, &mut pcm[..FRAME_SAMPLES]);
                    &pcm[..FRAME_SAMPLES]
                }
                MediaFormat::L16Wide => {
                    l16_to_linear(frame, &mut pcm);
                    &pcm[..]
                }
            };
            if self.ingress.webrtc_send(pcm, Instant::now()) {
                self.count_sent(lateness);
            }
            return;
        }
        let dest = self.ingress.state.lock().latched.or(self.negotiated.remote);
        let (Some(dest), true, true) = (dest, has_audio, may_send) else {
            self.sending = false;
            return;
        };
        let mut packet = [0u8; rtp::HEADER_LEN + FRAME_SAMPLES];
        let header = RtpHeader {
            marker: !self.sending,
            payload_type: self.negotiated.pt,
            seq: self.out_seq,
            timestamp: self.out_ts,
            ssrc: self.ssrc,
        };
        let Ok(n) = rtp::write_header(&mut packet, &header) else { return };
        let body = &mut packet[n..n + FRAME_SAMPLES];
        if let Some(down) = &mut self.downsampler {
            let mut wide = [0i16; WIDE_FRAME_SAMPLES];
            l16_to_linear(frame, &mut wide);
            let mut narrow = [0i16; FRAME_SAMPLES];
            down.process(&wide, &mut narrow);
            match self.negotiated.codec {
                Codec::Pcmu => g711::linear_to_ulaw_slice(&narrow, body),
                Codec::Pcma => body.iter_mut().zip(&narrow).for_each(|(b, s)| *b = g711::linear_to_alaw(*s)),
            }
        } else {
            match self.negotiated.codec {
                Codec::Pcmu => body.copy_from_slice(frame),
                Codec::Pcma => g711::ulaw_to_alaw_slice(frame, body),
            }
        }
        // A non-blocking send: a UDP socket whose send buffer is full drops the packet, as the network would.
        if self.ingress.send_to(&packet[..n + FRAME_SAMPLES], dest).is_ok() {
            self.sending = true;
            self.out_seq = self.out_seq.wrapping_add(1);
            self.out_octets = self.out_octets.wrapping_add(FRAME_SAMPLES as u32);
            self.count_sent(lateness);
        }
    }

    /// One frame of playout sent (RTP or WebRTC): the call's, the node's and the tenant's counts.
    fn count_sent(&mut self, lateness: Duration) {
        self.packets_out += 1;
        self.counters.frames_out.fetch_add(1, Ordering::Relaxed);
        self.metrics.frame(MetricDirection::Outbound);
        self.metrics.frame_latency(MetricDirection::Outbound, lateness);
    }

    /// Per-tenant loss (new since the last report) and jitter: at each RTCP interval and once at the end.
    fn report_quality(metrics: &TenantMetrics, lost_reported: &mut i64, stats: &rtp::ReceiveStats) {
        let lost = stats.lost().max(0);
        if lost > *lost_reported {
            metrics.rtp_packets_lost((lost - *lost_reported) as u64);
            *lost_reported = lost;
        }
        if stats.ssrc().is_some() {
            metrics.rtp_jitter(Duration::from_secs_f64(f64::from(stats.jitter()) / 8000.0));
        }
    }

    async fn send_rtcp(&mut self, socket: &UdpSocket, cname: &str) {
        let latched = self.ingress.state.lock().latched;
        let dest = self
            .latched_rtcp
            .or_else(|| latched.or(self.negotiated.remote).map(|a| SocketAddr::new(a.ip(), a.port().wrapping_add(1))));
        let Some(dest) = dest else { return };
        let sender = (self.packets_out > 0).then(|| SenderInfo {
            ntp_timestamp: ntp_now(),
            rtp_timestamp: self.out_ts,
            packet_count: self.packets_out as u32,
            octet_count: self.out_octets,
        });
        let now = Instant::now();
        let block = {
            let mut ingress = self.ingress.state.lock();
            let stats = &mut ingress.stats;
            Self::report_quality(&self.metrics, &mut self.lost_reported, stats);
            stats.ssrc().map(|_| stats.take_report_block_at(now))
        };
        let mut buf = [0u8; 256];
        if let Ok(n) = rtcp::write_report(&mut buf, self.ssrc, sender.as_ref(), block.as_ref(), cname) {
            let _ = socket.send_to(&buf[..n], dest).await;
        }
    }

    async fn stop_provider(&mut self) {
        // Bounded wait: a stalled agent must not hold the call open.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.provider_tx.send(ToAgent::Stop)).await;
    }
}

/// L16 bytes (16-bit little-endian) as samples.
fn l16_to_linear(bytes: &[u8], out: &mut [i16]) {
    for (s, pair) in out.iter_mut().zip(bytes.chunks_exact(2)) {
        *s = i16::from_le_bytes([pair[0], pair[1]]);
    }
}

async fn recv_opt(socket: Option<&UdpSocket>, buf: &mut [u8]) -> Option<(usize, SocketAddr)> {
    match socket {
        Some(s) => s.recv_from(buf).await.ok(),
        None => std::future::pending().await,
    }
}

/// NTP timestamp (RFC 3550 §4) of now, from the wall clock.
fn ntp_now() -> u64 {
    const NTP_UNIX_OFFSET: u64 = 2_208_988_800;
    let since = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs() + NTP_UNIX_OFFSET;
    let frac = (u64::from(since.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// Collects a call's record facts; `finish` writes it exactly once.
struct Recorder {
    tenant: String,
    call_sid: String,
    sip_call_id: String,
    from: String,
    to: String,
    app: String,
    codec: &'static str,
    transport: Transport,
    invite_at: SystemTime,
    answer_at: Option<SystemTime>,
    packets_in: u64,
    packets_out: u64,
    packets_lost: u64,
    dtmf_count: u64,
}

impl Recorder {
    fn new(setup: &CallSetup) -> Recorder {
        Recorder {
            tenant: setup.tenant_name.to_string(),
            call_sid: media_streams::call_sid(rand::random::<u128>()),
            sip_call_id: setup.sip_call_id.clone(),
            from: setup.from.clone(),
            to: setup.to.clone(),
            app: setup.app_name.to_string(),
            codec: match setup.negotiated.codec {
                _ if setup.transport == Transport::Webrtc => "OPUS",
                Codec::Pcmu => "PCMU",
                Codec::Pcma => "PCMA",
            },
            transport: setup.transport,
            invite_at: setup.invite_at,
            answer_at: None,
            packets_in: 0,
            packets_out: 0,
            packets_lost: 0,
            dtmf_count: 0,
        }
    }

    fn answered(&mut self) {
        self.answer_at = Some(SystemTime::now());
    }

    fn finish(self, sink: &dyn CallRecordSink, reason: EndReason) {
        let end = SystemTime::now();
        let duration_secs = self.answer_at.and_then(|a| end.duration_since(a).ok()).map(|d| d.as_secs()).unwrap_or(0);
        sink.record(&CallRecord {
            tenant: self.tenant,
            call_sid: self.call_sid,
            sip_call_id: self.sip_call_id,
            from: self.from,
            to: self.to,
            app: self.app,
            invite_at_ms: unix_ms(self.invite_at),
            answer_at_ms: self.answer_at.map(unix_ms),
            end_at_ms: unix_ms(end),
            duration_secs,
            end_reason: reason,
            codec: self.codec,
            transport: self.transport.label(),
            packets_in: self.packets_in,
            packets_out: self.packets_out,
            packets_lost: self.packets_lost,
            dtmf_count: self.dtmf_count,
        });
    }
}
