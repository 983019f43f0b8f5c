//! The media workers: the threads that read every call's RTP, in the order the scheduler decides.
//!
//! Owns [`MediaWorkers`] (a [`Bulkhead`] of turns, one queue per tenant) and each call's inbound state,
//! [`CallIngress`]: latch, receive statistics, policer, DTMF detector and re-framer, with the hand-off of finished
//! frames to the call's provider channel.
//!
//! A call's task does not read its RTP socket. When the socket turns readable, the task queues one
//! [`IngressTurn`] for its tenant and waits until the turn is over; a worker pops the turn (by deficit round robin
//! over tenants in proportion to plan weight under `fair`, in arrival order under `fifo`) and reads up to
//! [`TURN_PACKETS`] packets. So the costly part of inbound media, the `recvmsg` calls and everything after them,
//! runs where the scheduler decides, and a tenant that floods or has many calls waits in its own queue.
//!
//! * **Order**: one turn per call at a time, so a call's packets are read and framed in order whichever worker
//!   serves it.
//! * **Deadline**: each packet carries its kernel receive time (`SO_TIMESTAMPNS`). A packet older than its
//!   tenant's `max_frame_queue_ms` when a worker reads it is dropped and counted as `deadline`: the time it spent
//!   in the socket while its tenant's turns queued is the tenant's own backlog, and forwarding it would only make
//!   the agent's audio later. The same receive time is each frame's ingress instant for latency figures.
//! * **Policing** runs right after the read, before parsing beyond the header, framing or any hand-off.
//! * **Bounds**: a tenant's queue holds one turn per call, sized from its plan's concurrency; a refused turn (the
//!   pool shut down, say) makes the call drain its socket itself and count those packets as `queue_full`.
//! * **No allocation** per packet or turn: a turn is an `Arc` clone, buffers live on the worker's stack, and the
//!   per-tenant metrics are handles made at call start.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use tokio::io::Interest;
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc};

use crate::call::police::{Policer, Verdict};
use crate::call::reframe::Reframer;
use crate::call::{CallId, Frame};
use crate::codec::g711;
use crate::metrics::{Direction as MetricDirection, FrameDropReason, TenantMetrics};
use crate::proto::dtmf::{self, DtmfDetector};
use crate::proto::rtp::{self, PacketVerdict, ReceiveStats};
use crate::proto::sdp::Negotiated;
use crate::sched::bulkhead::{Bulkhead, BulkheadConfig, BulkheadError};
use crate::sched::plan::Plan;
use crate::sched::wfq::{ConfigError, SchedulerKind, TenantConfig};
use crate::stream::provider::ToAgent;
use crate::tenant::{Codec, TenantId};
use crate::transport::media::MediaCounters;

/// Most packets one turn reads: a turn is the unit the fair queue charges (cost 1), so it is kept short. Four
/// covers a 10 ms packetization with a frame of slack; a call with more queued gets another turn at once.
pub const TURN_PACKETS: usize = 4;
/// A latched source silent this long may be replaced by a new one (the carrier moved media).
const RELATCH_AFTER: Duration = Duration::from_secs(2);
/// Gap filled with silence by the re-framer before it resynchronises: 200 ms.
const MAX_GAP_SAMPLES: u32 = 1600;
/// Turns a tenant may have queued beyond its concurrency cap (calls ending and starting overlap briefly).
const QUEUE_SLACK: usize = 16;
/// A turn that waited longer than one frame is late.
pub const LATE_TURN: Duration = Duration::from_millis(20);

/// Turns served for one tenant, and how many of them were late; read by [`BehindTracker`] once a second.
#[derive(Default)]
pub struct TurnCounts {
    pub turns: AtomicU64,
    pub late: AtomicU64,
}

/// The worker pool that serves calls' inbound media.
pub struct MediaWorkers {
    pool: Bulkhead<IngressTurn>,
    /// Per tenant, by `TenantId` (grown by `configure_tenant`).
    counts: RwLock<Vec<Arc<TurnCounts>>>,
}

impl MediaWorkers {
    /// Starts `workers` threads (0: one per core) under `scheduler`.
    pub fn start(workers: usize, scheduler: SchedulerKind) -> Result<MediaWorkers, BulkheadError> {
        let pool =
            Bulkhead::start(BulkheadConfig { workers, scheduler, quantum: 1 }, |_, turn: IngressTurn| turn.serve())?;
        Ok(MediaWorkers { pool, counts: RwLock::new(Vec::new()) })
    }

    /// The tenant's turn counters (shared with its calls; a new set for a tenant not configured yet).
    pub fn turn_counts(&self, tenant: TenantId) -> Arc<TurnCounts> {
        if let Some(c) = self.counts.read().get(tenant.0 as usize) {
            return Arc::clone(c);
        }
        let mut counts = self.counts.write();
        while counts.len() <= tenant.0 as usize {
            counts.push(Arc::default());
        }
        Arc::clone(&counts[tenant.0 as usize])
    }

    /// Every tenant's (turns, late) totals so far, indexed by `TenantId`.
    pub fn totals(&self) -> Vec<(u64, u64)> {
        self.counts.read().iter().map(|c| (c.turns.load(Ordering::Relaxed), c.late.load(Ordering::Relaxed))).collect()
    }

    /// Gives `tenant` its plan's share: weight, and room for one queued turn per call it may hold.
    pub fn configure_tenant(&self, tenant: TenantId, plan: &Plan) -> Result<(), ConfigError> {
        let _ = self.turn_counts(tenant);
        self.pool.configure_tenant(
            tenant,
            TenantConfig {
                weight: plan.weight(),
                capacity: (plan.max_concurrent_calls() as usize).saturating_add(QUEUE_SLACK),
                // Deadlines are applied per packet by its kernel receive time (see the module docs), which counts
                // the time in the socket too; a turn itself is never too old to serve.
                max_wait: Duration::from_secs(3600),
                max_in_flight: None,
            },
        )
    }

    pub fn workers(&self) -> usize {
        self.pool.workers()
    }

    pub fn scheduler(&self) -> SchedulerKind {
        self.pool.scheduler()
    }

    /// Offboards a tenant whose calls have ended: its share of the workers goes to the others.
    pub fn remove_tenant(&self, tenant: TenantId) {
        self.pool.remove_tenant(tenant);
    }

    /// Stops the workers; queued turns end unserved (their calls are told, and are ending anyway).
    pub fn shutdown(&self) {
        self.pool.shutdown();
    }

    /// Queues a turn for `call`. On refusal the turn comes back (and is dropped, which wakes the call).
    fn submit(&self, call: &Arc<CallIngress>) -> bool {
        let now = Instant::now();
        let turn = IngressTurn { call: Arc::clone(call), queued_at: now, wake_call: true };
        match self.pool.submit(call.tenant, turn, 1, now) {
            Ok(()) => true,
            Err(refused) => {
                // The call is not waiting for this turn: its drop must not leave a stale wake-up behind.
                refused.into_item().wake_call = false;
                false
            }
        }
    }
}

/// Decides, from once-a-second samples of [`MediaWorkers::totals`], which tenants the workers are persistently
/// behind for, and whether they are behind for the whole node. Sans-IO: the caller owns the clock.
///
/// A tenant is *late* in a second when it had at least [`BehindTracker::MIN_TURNS`] turns and more than 5% of them
/// waited over [`LATE_TURN`]; it is *behind* after 3 late seconds in a row and stops being behind after 2 seconds
/// that are not late. The node is behind when every tenant busy enough to judge is behind: while any tenant is still
/// served on time the workers have room, and the late tenant is the one whose share is used up, so only its new
/// calls are refused.
#[derive(Debug, Default)]
pub struct BehindTracker {
    last: Vec<(u64, u64)>,
    /// Per tenant: consecutive late seconds (positive) or on-time seconds (negative), capped.
    streak: Vec<i8>,
    behind: Vec<bool>,
}

impl BehindTracker {
    pub const MIN_TURNS: u64 = 50;
    const BEHIND_AFTER: i8 = 3;
    const RECOVER_AFTER: i8 = 2;

    /// Feeds one sample of totals; returns the tenants now behind (by index) and whether the node is.
    pub fn update(&mut self, totals: &[(u64, u64)]) -> (&[bool], bool) {
        self.last.resize(totals.len(), (0, 0));
        self.streak.resize(totals.len(), 0);
        self.behind.resize(totals.len(), false);
        let (mut judged, mut judged_behind) = (0usize, 0usize);
        for (i, &(turns, late)) in totals.iter().enumerate() {
            let (t0, l0) = self.last[i];
            let (dt, dl) = (turns.saturating_sub(t0), late.saturating_sub(l0));
            self.last[i] = (turns, late);
            let s = &mut self.streak[i];
            if dt >= Self::MIN_TURNS && dl * 20 > dt {
                *s = if *s > 0 { s.saturating_add(1).min(Self::BEHIND_AFTER) } else { 1 };
            } else {
                *s = if *s < 0 { s.saturating_sub(1).max(-Self::RECOVER_AFTER) } else { -1 };
            }
            if *s >= Self::BEHIND_AFTER {
                self.behind[i] = true;
            } else if *s <= -Self::RECOVER_AFTER {
                self.behind[i] = false;
            }
            if dt >= Self::MIN_TURNS {
                judged += 1;
                judged_behind += usize::from(self.behind[i]);
            }
        }
        let node = judged > 0 && judged_behind == judged;
        (&self.behind, node)
    }
}

/// What the call task's RTP arm is waiting for.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TurnState {
    /// For the socket to turn readable.
    Idle,
    /// For the worker to finish the turn it queued.
    Queued,
}

/// One call's inbound media: shared by its task (which queues turns, and reads the latch and statistics for
/// playout and RTCP) and the worker serving its turn. The lock is held for one turn or one short read, never
/// across an `.await`.
pub struct CallIngress {
    pub tenant: TenantId,
    socket: Arc<UdpSocket>,
    pub state: Mutex<Ingress>,
    turn_over: Notify,
    provider_tx: mpsc::Sender<ToAgent>,
    counters: Arc<MediaCounters>,
    metrics: TenantMetrics,
    max_age: Duration,
    turns: Arc<TurnCounts>,
}

impl CallIngress {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        tenant: TenantId,
        call: CallId,
        socket: Arc<UdpSocket>,
        negotiated: Negotiated,
        provider_tx: mpsc::Sender<ToAgent>,
        counters: Arc<MediaCounters>,
        metrics: TenantMetrics,
        max_age: Duration,
        turns: Arc<TurnCounts>,
    ) -> Arc<CallIngress> {
        // Without kernel timestamps a packet's age is measured from its read: deadlines then miss the time spent
        // in the socket, nothing worse.
        if let Err(e) = enable_receive_timestamps(&socket) {
            tracing::debug!(error = %e, "no kernel receive timestamps on an RTP socket");
        }
        Arc::new(CallIngress {
            tenant,
            socket,
            state: Mutex::new(Ingress::new(tenant, call, negotiated)),
            turn_over: Notify::new(),
            provider_tx,
            counters,
            metrics,
            max_age,
            turns,
        })
    }

    /// Waits for the next step of the RTP arm and returns the new state. Cancel-safe: dropped mid-wait, the state
    /// is unchanged and a finished turn's notification is kept for the next call.
    pub async fn next(self: &Arc<Self>, state: TurnState, workers: &MediaWorkers) -> TurnState {
        match state {
            TurnState::Idle => {
                if self.socket.readable().await.is_err() {
                    return std::future::pending().await;
                }
                if workers.submit(self) {
                    TurnState::Queued
                } else {
                    self.drain_refused();
                    TurnState::Idle
                }
            }
            TurnState::Queued => {
                self.turn_over.notified().await;
                TurnState::Idle
            }
        }
    }

    /// The pool refused the turn: read what is queued in the socket and count it as dropped, so the call does not
    /// spin on a socket that stays readable.
    fn drain_refused(&self) {
        let mut buf = [0u8; 2048];
        while self.socket.try_recv_from(&mut buf).is_ok() {
            self.counters.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
            self.metrics.frame_dropped(FrameDropReason::QueueFull);
        }
    }

    /// Runs one turn on a worker thread.
    fn serve(&self) {
        let mut buf = [0u8; 2048];
        let mut state = self.state.lock();
        for _ in 0..TURN_PACKETS {
            let read = self.socket.try_io(Interest::READABLE, || recv_stamped(&self.socket, &mut buf));
            let Ok((n, from, age)) = read else { break };
            let now = Instant::now();
            if age > self.max_age {
                self.counters.dropped_deadline.fetch_add(1, Ordering::Relaxed);
                self.metrics.frame_dropped(FrameDropReason::Deadline);
                continue;
            }
            let received = now.checked_sub(age).unwrap_or(now);
            state.on_rtp(&buf[..n], from, received, now, &self.provider_tx, &self.counters, &self.metrics);
        }
    }

    /// Hands a DTMF digit from SIP INFO to the agent, counted with the RTP ones.
    pub fn send_digit(&self, digit: char) {
        let mut state = self.state.lock();
        state.dtmf_count += 1;
        drop(state);
        if self.provider_tx.try_send(ToAgent::Dtmf(digit)).is_err() {
            self.counters.dropped_slow_consumer.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A call's turn on a media worker. Dropping it, served or not, tells the call's task the turn is over.
pub struct IngressTurn {
    call: Arc<CallIngress>,
    queued_at: Instant,
    wake_call: bool,
}

impl IngressTurn {
    fn serve(self) {
        let wait = self.queued_at.elapsed();
        self.call.metrics.sched_wait(wait);
        self.call.turns.turns.fetch_add(1, Ordering::Relaxed);
        if wait > LATE_TURN {
            self.call.turns.late.fetch_add(1, Ordering::Relaxed);
        }
        self.call.serve();
    }
}

impl Drop for IngressTurn {
    fn drop(&mut self) {
        if self.wake_call {
            self.call.turn_over.notify_one();
        }
    }
}

/// The inbound state of one call.
pub struct Ingress {
    tenant: TenantId,
    call: CallId,
    pub negotiated: Negotiated,
    pub stats: ReceiveStats,
    pub reframer: Reframer,
    dtmf: DtmfDetector,
    pub policer: Policer,
    pub latched: Option<SocketAddr>,
    pub last_rtp_at: Instant,
    clock_origin: Instant,
    frame_seq: u64,
    pub dtmf_count: u64,
}

impl Ingress {
    fn new(tenant: TenantId, call: CallId, negotiated: Negotiated) -> Ingress {
        let now = Instant::now();
        Ingress {
            tenant,
            call,
            negotiated,
            stats: ReceiveStats::new(8000),
            reframer: Reframer::new(MAX_GAP_SAMPLES),
            dtmf: DtmfDetector::new(),
            policer: Policer::g711(),
            latched: None,
            last_rtp_at: now,
            clock_origin: now,
            frame_seq: 0,
            dtmf_count: 0,
        }
    }

    /// One RTP packet, received at `received` (kernel time) and read at `now`.
    #[allow(clippy::too_many_arguments)]
    fn on_rtp(
        &mut self,
        packet: &[u8],
        from: SocketAddr,
        received: Instant,
        now: Instant,
        tx: &mpsc::Sender<ToAgent>,
        counters: &MediaCounters,
        metrics: &TenantMetrics,
    ) {
        match self.latched {
            Some(addr) if addr == from => {}
            Some(_) if now.duration_since(self.last_rtp_at) < RELATCH_AFTER => {
                counters.packets_ignored.fetch_add(1, Ordering::Relaxed);
                return;
            }
            _ => self.latched = Some(from),
        }
        let Ok((header, payload)) = rtp::parse(packet) else {
            counters.rtp_malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        self.last_rtp_at = now;
        let is_dtmf = Some(header.payload_type) == self.negotiated.telephone_event_pt;
        let verdict = if is_dtmf {
            // RFC 4733 packets repeat one timestamp per key press: they must not feed the jitter estimate.
            self.stats.on_packet_untimed(header.seq, header.ssrc)
        } else {
            let arrival = self.stats.to_rtp_units(received.saturating_duration_since(self.clock_origin));
            self.stats.on_packet(header.seq, header.timestamp, arrival, header.ssrc)
        };
        if matches!(verdict, PacketVerdict::Invalid | PacketVerdict::Duplicate) {
            counters.packets_ignored.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if verdict == PacketVerdict::SourceRestart {
            self.reframer.reset();
            self.dtmf.reset();
        }
        // Held to the negotiated rate before any decoding or hand-off (see call::police).
        let verdict = if is_dtmf { self.policer.event(now) } else { self.policer.audio(payload.len(), now) };
        if verdict == Verdict::Policed {
            counters.policed.fetch_add(1, Ordering::Relaxed);
            metrics.frame_dropped(FrameDropReason::Policed);
            return;
        }
        if is_dtmf {
            if let Ok(event) = dtmf::parse_event(payload)
                && let Some(digit) = self.dtmf.on_packet(header.timestamp, &event)
            {
                self.dtmf_count += 1;
                if tx.try_send(ToAgent::Dtmf(digit)).is_err() {
                    counters.dropped_slow_consumer.fetch_add(1, Ordering::Relaxed);
                }
            }
            return;
        }
        if header.payload_type != self.negotiated.pt {
            counters.packets_ignored.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if payload.len() > 640 {
            counters.rtp_malformed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut ulaw = [0u8; 640];
        let ulaw = &mut ulaw[..payload.len()];
        match self.negotiated.codec {
            Codec::Pcmu => ulaw.copy_from_slice(payload),
            Codec::Pcma => g711::alaw_to_ulaw_slice(payload, ulaw),
        }
        let (tenant, call) = (self.tenant, self.call);
        let seq = &mut self.frame_seq;
        self.reframer.push(header.timestamp, ulaw, |ts, samples| {
            let frame = Frame { tenant, call, seq: *seq, ts, payload: *samples, t_ingress: received };
            *seq += 1;
            counters.frames_in.fetch_add(1, Ordering::Relaxed);
            if tx.try_send(ToAgent::Media(frame)).is_err() {
                counters.dropped_slow_consumer.fetch_add(1, Ordering::Relaxed);
                metrics.frame_dropped(FrameDropReason::SlowConsumer);
            } else {
                metrics.frame(MetricDirection::Inbound);
            }
        });
    }
}

/// Asks the kernel to stamp each datagram with its receive time (`SO_TIMESTAMPNS`, `CLOCK_REALTIME`).
#[cfg(target_os = "linux")]
fn enable_receive_timestamps(socket: &UdpSocket) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let on: libc::c_int = 1;
    // SAFETY: a valid socket descriptor and a c_int option value of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

#[cfg(not(target_os = "linux"))]
fn enable_receive_timestamps(_socket: &UdpSocket) -> std::io::Result<()> {
    Err(std::io::Error::from(std::io::ErrorKind::Unsupported))
}

/// One non-blocking `recvmsg`: the datagram's length, source, and age (now minus the kernel's receive stamp;
/// zero without a stamp or if the wall clock stepped back).
#[cfg(target_os = "linux")]
fn recv_stamped(socket: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, Duration)> {
    use std::os::fd::AsRawFd;
    // SAFETY: every pointer handed to recvmsg points into a live local of the stated size; the control buffer is
    // u64-aligned as cmsghdr requires; the CMSG_* walk stays within msg_controllen as set by the kernel.
    unsafe {
        let mut addr: libc::sockaddr_storage = std::mem::zeroed();
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        let mut control = [0u64; 8];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_name = (&mut addr as *mut libc::sockaddr_storage).cast();
        msg.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&control) as _;
        let n = libc::recvmsg(socket.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut age = Duration::ZERO;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                let stamp = Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32);
                let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                age = wall.saturating_sub(stamp);
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        let from = sockaddr_to_std(&addr).ok_or_else(|| std::io::Error::from(std::io::ErrorKind::InvalidData))?;
        Ok((n as usize, from, age))
    }
}

#[cfg(not(target_os = "linux"))]
fn recv_stamped(socket: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr, Duration)> {
    socket.try_recv_from(buf).map(|(n, from)| (n, from, Duration::ZERO))
}

#[cfg(target_os = "linux")]
fn sockaddr_to_std(addr: &libc::sockaddr_storage) -> Option<SocketAddr> {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, SocketAddrV6};
    match i32::from(addr.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says the storage holds a sockaddr_in; storage is larger and suitably aligned.
            let a = unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(addr as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                u32::from_be(a.sin6_flowinfo),
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests;
