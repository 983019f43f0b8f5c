//! The media workers: the threads that watch and read every call's RTP, in the order the scheduler decides.
//!
//! Owns [`MediaWorkers`] (a [`Bulkhead`] of turns, one queue per tenant, over an epoll set of the calls' RTP
//! sockets, [`readiness`]) and each call's inbound state, [`CallIngress`]: latch, receive statistics, policer, DTMF
//! detector and re-framer, with the hand-off of finished frames to the call's agent ([`AgentSink`]): for a `ws://`
//! agent the frame is written to the socket's outbox right here, in the turn (`stream::outbox`), and a lagging
//! agent's pending bytes are flushed by [`FlushTurn`]s of the same tenant when its socket turns writable.
//!
//! Readiness is the workers' own. A call's RTP socket is registered in the pool's epoll set (edge-triggered and
//! one-shot, a token per call) for as long as its [`CallInbound`] lives; no async task takes part in inbound
//! reads. A worker with nothing queued waits in `epoll_wait`; a busy worker polls the set without waiting between
//! turns. Each ready socket becomes one [`IngressTurn`] queued for its tenant, in batches under one lock, and a
//! worker pops turns by deficit round robin over tenants in proportion to plan weight under `fair` (in arrival order
//! under `fifo`) and reads up to [`TURN_PACKETS`] packets with one `recvmmsg`. So every per-packet cost on the
//! inbound side — discovering readiness, the read, and everything after it — is spent on the workers in the order
//! the scheduler decides; a tenant that floods or has many calls waits in its own queue, its packets ageing in its
//! own sockets, and costs no wake-up of anyone else's thread.
//!
//! * **Order**: one turn per call at a time, so a call's packets are read and framed in order whichever worker
//!   serves it. The socket is armed one-shot: after its event fires it stays disarmed until the turn ends. A turn
//!   that read a full batch goes straight back into its tenant's queue (more may be waiting); one that read less
//!   re-arms the socket (`EPOLL_CTL_MOD`), and the kernel checks readiness when re-arming, so a packet that arrived
//!   during the turn raises the event at once: no lost wake-up.
//! * **Deadline**: each packet carries its kernel receive time (`SO_TIMESTAMPNS`). A packet older than its
//!   tenant's `max_frame_queue_ms` when a worker reads it is dropped and counted as `deadline`: the time it spent
//!   in the socket while its tenant's turns queued is the tenant's own backlog, and forwarding it would only make
//!   the agent's audio later. The same receive time is each frame's ingress instant for latency figures.
//! * **Policing** runs right after the read, before parsing beyond the header, framing or any hand-off.
//! * **Bounds**: a tenant's queue holds one turn per call, sized from its plan's concurrency; a refused turn (a
//!   tenant not configured, or the pool shut down) drains the call's socket on the worker, counting those packets as
//!   `queue_full`, and re-arms it.
//! * **Call end**: dropping the [`CallInbound`] marks the call ended, removes its socket from the set, then frees
//!   its token (a generation number makes a token whose event was already collected match nothing). The socket is
//!   owned by the call's shared state, so it is closed only after the last turn holding it is gone: the descriptor
//!   cannot be reused while the set could still name it. A turn of an ended call reads nothing.
//! * **No allocation** per packet or turn: a turn is an `Arc` clone, buffers live on the worker's stack, and the
//!   per-tenant metrics are handles made at call start.

mod framing;
mod readiness;

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Mutex, RwLock};

use crate::call::CallId;
use crate::call::police::{Policer, Verdict};
use crate::codec::g711;
use crate::codec::opus::PcmRate;
use crate::metrics::{FrameDropReason, TenantMetrics};
use crate::proto::dtmf::{self, DtmfDetector};
use crate::proto::media_streams::MediaFormat;
use crate::proto::rtp::{self, PacketVerdict, ReceiveStats};
use crate::proto::sdp::Negotiated;
use crate::sched::bulkhead::{Bulkhead, BulkheadConfig, BulkheadError, PoolLoad, PoolStats, Source};
use crate::sched::plan::Plan;
use crate::sched::wfq::{ConfigError, SchedulerKind, TenantConfig};
use crate::stream::outbox::WriteWaker;
use crate::stream::provider::AgentSink;
use crate::tenant::{Codec, TenantId};
use crate::transport::media::MediaCounters;
use crate::transport::webrtc::session::{RtcSession, SessionCounts, SessionIo, SessionState};

use framing::{Framing, HandOff};
use readiness::Readiness;

/// Most packets one turn reads (one `recvmmsg`): a turn is the unit the fair queue charges (cost 1), so it is kept
/// short. Four covers a 10 ms packetization with a frame of slack; a call with more queued gets another turn.
pub const TURN_PACKETS: usize = 4;
/// Receive buffer per packet: RTP of up to 640 samples is well inside it; larger datagrams are truncated.
const PACKET_BUF: usize = 2048;
/// Most packets a refused turn drains before it re-arms the socket (the rest raise the event again).
const REFUSED_DRAIN: usize = 64;
/// A latched source silent this long may be replaced by a new one (the carrier moved media).
const RELATCH_AFTER: Duration = Duration::from_secs(2);
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

/// The media workers could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MediaWorkersError {
    #[error("cannot create the media workers' epoll set: {0}")]
    Readiness(#[source] std::io::Error),
    #[error(transparent)]
    Pool(#[from] BulkheadError),
}

/// The worker pool that serves calls' inbound media.
pub struct MediaWorkers {
    pool: Bulkhead<MediaTurn>,
    readiness: Arc<Readiness>,
    /// Per tenant, by `TenantId` (grown by `configure_tenant`).
    counts: RwLock<Vec<Arc<TurnCounts>>>,
}

impl MediaWorkers {
    /// Starts `workers` threads (0: one per core, or one per CPU of `pin`) under `scheduler`, over a new epoll set,
    /// pinned to the CPUs of `pin` if it names any (`media.cpus`), at `SCHED_FIFO` priority `realtime` if given
    /// (`media.realtime_priority`).
    pub fn start(
        workers: usize,
        scheduler: SchedulerKind,
        pin: Vec<usize>,
        realtime: Option<u8>,
    ) -> Result<MediaWorkers, MediaWorkersError> {
        let readiness = Arc::new(Readiness::new().map_err(MediaWorkersError::Readiness)?);
        let source: Arc<dyn Source<MediaTurn>> = readiness.clone();
        let pool = Bulkhead::start_with_source(
            BulkheadConfig { workers, scheduler, quantum: 1, pin, realtime },
            source,
            |_, turn: MediaTurn| turn.serve(),
        )?;
        Ok(MediaWorkers { pool, readiness, counts: RwLock::new(Vec::new()) })
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

    /// The pool's cumulative load (the workers' CPU time, each tenant's weight and handler time), for
    /// [`CapacityTracker`].
    pub fn load(&self) -> PoolLoad {
        self.pool.load()
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

    /// The pool's gauges and refusal counters.
    pub fn pool_stats(&self) -> PoolStats {
        self.pool.pool_stats()
    }

    /// A tenant's counters in the pool: `processed` counts every turn served, reads and flushes alike.
    pub fn tenant_stats(&self, tenant: TenantId) -> Option<crate::sched::BulkheadStats> {
        self.pool.stats(tenant)
    }

    /// Calls whose RTP sockets are in the epoll set now.
    pub fn registered_calls(&self) -> usize {
        self.readiness.registered()
    }

    /// Stops the workers; queued turns end unserved. Sockets still registered are no longer read (the process is
    /// ending); their calls deregister as they end.
    pub fn shutdown(&self) {
        self.pool.shutdown();
    }

    /// Takes a call's inbound media onto the workers: builds its shared state around `socket` (its RTP socket,
    /// made non-blocking here, with kernel receive stamps) and adds the socket to the epoll set, armed. From here
    /// on only the workers read it. The call's inbound side lives as long as the returned handle.
    pub fn register(&self, socket: UdpSocket, setup: InboundSetup) -> std::io::Result<CallInbound> {
        socket.set_nonblocking(true)?;
        // Without kernel timestamps a packet's age is measured from its read: deadlines then miss the time spent
        // in the socket, nothing worse.
        if let Err(e) = enable_receive_timestamps(&socket) {
            tracing::debug!(error = %e, "no kernel receive timestamps on an RTP socket");
        }
        let turns = self.turn_counts(setup.tenant);
        let readiness = Arc::clone(&self.readiness);
        let outbox_fd = setup.sink.outbox().map(|o| o.fd());
        let call = self.readiness.register(socket.as_raw_fd(), outbox_fd, |token| {
            Arc::new(CallIngress {
                tenant: setup.tenant,
                socket,
                state: Mutex::new(Ingress::new(setup.tenant, setup.call, setup.negotiated, setup.format, setup.webrtc)),
                sink: setup.sink,
                counters: setup.counters,
                metrics: setup.metrics,
                max_age: setup.max_age,
                turns,
                readiness,
                token,
                ended: AtomicBool::new(false),
            })
        })?;
        if let Some(outbox) = call.sink.outbox() {
            let waker = readiness::FlushWaker::new(Arc::clone(&self.readiness), outbox.fd(), call.token);
            outbox.set_waker(Some(Arc::new(waker) as Arc<dyn WriteWaker>));
        }
        Ok(CallInbound(call))
    }
}

/// What a call's inbound side needs besides its socket.
pub struct InboundSetup {
    pub tenant: TenantId,
    pub call: CallId,
    pub negotiated: Negotiated,
    /// Where the call's frames go: its provider stream's outbox (written in the turn) or channel.
    pub sink: AgentSink,
    pub counters: Arc<MediaCounters>,
    pub metrics: TenantMetrics,
    /// The tenant's `max_frame_queue_ms`: a packet older than this when read is dropped as `deadline`.
    pub max_age: Duration,
    /// A WebRTC call's session: its datagrams go through it (ICE, DTLS, SRTP, Opus) instead of plain RTP.
    pub webrtc: Option<Box<RtcSession>>,
    /// The app's provider-stream format, which frames are made in.
    pub format: MediaFormat,
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

/// Decides, from samples of [`MediaWorkers::load`] (four a second), whether the workers are *hot* (their threads
/// used at least `threshold` of their cores' time) and, while they are, which tenants' turns took at least their
/// weighted share of the turns' time: those tenants' new calls are refused (`503`, as `overload`) until the workers
/// cool down. Sans-IO: the caller owns the clock.
///
/// Why: [`BehindTracker`] acts once turns are already late, and on a worker core that is full the OS, not the fair
/// queue, decides when a worker runs (the tokio thread with a tenant's call tasks, `ksoftirqd`: see
/// `docs/benchmarks.md`). Keeping the workers out of full saturation keeps the headroom that every tenant's latency
/// needs, and refusing only the tenants at or above their share means a noisy tenant cannot use up admission for
/// the others: a quiet tenant far below its share still gets its calls in while the node is hot.
///
/// A tenant's share is its weight over the weights of the tenants whose turns ran in the interval (idle tenants do
/// not dilute it). The workers stop being hot when they fall below `threshold - COOL_MARGIN`. A tenant found at or
/// above its share stays refused for [`CapacityTracker::HOLD`] after the last sample that found it so, even if the
/// workers cool sooner: the calls it got in last cost more a second or two later (its agents' outboxes fill, the
/// flushes are turns too), and letting it in again at the first cool sample let the workers settle well above the
/// threshold (`docs/benchmarks.md`). The hold is the `Retry-After` the refusal carries.
#[derive(Debug)]
pub struct CapacityTracker {
    threshold: f64,
    last: Option<(Instant, PoolLoad)>,
    hot: bool,
    over: Vec<bool>,
    /// By tenant index: refused until this instant (the last sample that found it over its share, plus `HOLD`).
    held_until: Vec<Option<Instant>>,
    utilisation: f64,
}

impl CapacityTracker {
    /// Hysteresis below the threshold before the workers count as cool again.
    pub const COOL_MARGIN: f64 = 0.05;
    /// How long a tenant found at or above its share stays refused: the `Retry-After` of the refusal.
    pub const HOLD: Duration = Duration::from_secs(crate::sched::admission::NODE_OVERLOAD_RETRY_AFTER_SECS as u64);

    /// `threshold`: the busy fraction (0..=1) from which the workers are hot; 1.0 or more never is.
    pub fn new(threshold: f64) -> CapacityTracker {
        CapacityTracker {
            threshold,
            last: None,
            hot: false,
            over: Vec::new(),
            held_until: Vec::new(),
            utilisation: 0.0,
        }
    }

    /// Feeds one sample taken at `now`; returns, by tenant index, who is refused: found at or above its share while
    /// the workers are hot, at this sample or within [`CapacityTracker::HOLD`] before it.
    pub fn update(&mut self, now: Instant, load: PoolLoad) -> &[bool] {
        self.over.clear();
        self.over.resize(load.tenants.len(), false);
        if let Some((at, last)) = self.last.take() {
            self.judge(now.saturating_duration_since(at), &last, &load);
        }
        self.last = Some((now, load));
        if self.held_until.len() < self.over.len() {
            self.held_until.resize(self.over.len(), None);
        }
        for (over, held) in self.over.iter_mut().zip(self.held_until.iter_mut()) {
            if *over {
                *held = Some(now + Self::HOLD);
            }
            *over = held.is_some_and(|until| until > now);
        }
        &self.over
    }

    fn judge(&mut self, interval: Duration, last: &PoolLoad, load: &PoolLoad) {
        let wall = interval.as_secs_f64() * load.workers.max(1) as f64;
        if wall <= 0.0 {
            return;
        }
        let cpu = load.cpu.saturating_sub(last.cpu).as_secs_f64();
        self.utilisation = (cpu / wall).clamp(0.0, 1.0);
        self.hot = if self.threshold >= 1.0 {
            false
        } else if self.hot {
            self.utilisation >= self.threshold - Self::COOL_MARGIN
        } else {
            self.utilisation >= self.threshold
        };
        if !self.hot {
            return;
        }
        // A tenant's turn time over the interval; 0 for a slot not configured, which is never judged.
        let busy = |i: usize| {
            let t = load.tenants[i];
            let before = last.tenants.get(i).map_or(Duration::ZERO, |t| t.busy);
            if t.weight == 0 { 0.0 } else { t.busy.saturating_sub(before).as_secs_f64() }
        };
        let (mut total_busy, mut busy_weight) = (0.0, 0u64);
        for i in 0..load.tenants.len() {
            let b = busy(i);
            if b > 0.0 {
                total_busy += b;
                busy_weight += u64::from(load.tenants[i].weight);
            }
        }
        if total_busy <= 0.0 {
            return;
        }
        for i in 0..load.tenants.len() {
            let b = busy(i);
            if b > 0.0 {
                self.over[i] = b / total_busy >= f64::from(load.tenants[i].weight) / busy_weight as f64;
            }
        }
    }

    /// Whether the workers are hot after the last sample.
    pub fn hot(&self) -> bool {
        self.hot
    }

    /// The workers' busy fraction over the last interval.
    pub fn utilisation(&self) -> f64 {
        self.utilisation
    }
}

/// One call's inbound media: shared by its task (which reads the latch and statistics for playout and RTCP, and
/// sends playout RTP from the same socket), the epoll registry, and the worker serving its turn. The lock is held
/// for one turn or one short read, never across an `.await`.
pub struct CallIngress {
    pub tenant: TenantId,
    /// The call's RTP socket (non-blocking). Closed when the last holder goes, after deregistration.
    socket: UdpSocket,
    pub state: Mutex<Ingress>,
    sink: AgentSink,
    counters: Arc<MediaCounters>,
    metrics: TenantMetrics,
    max_age: Duration,
    turns: Arc<TurnCounts>,
    readiness: Arc<Readiness>,
    /// The call's epoll token (slot and generation in the registry).
    token: u64,
    /// Set when the call's [`CallInbound`] is dropped: its turns read nothing and re-arm nothing.
    ended: AtomicBool,
}

impl CallIngress {
    /// Sends one datagram from the call's RTP socket without waiting (playout, symmetric RTP). A full send buffer
    /// is an error like any other: the packet is not sent.
    pub fn send_to(&self, packet: &[u8], dest: SocketAddr) -> std::io::Result<usize> {
        self.socket.send_to(packet, dest)
    }

    /// The address the RTP socket is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Watches the socket again (one-shot). Called when a turn ends without a full batch, or is dropped unserved.
    fn arm(&self) {
        if !self.ended.load(Ordering::Acquire) {
            self.readiness.arm(self.socket.as_raw_fd(), self.token);
        }
    }

    /// A refused turn: read what is queued in the socket and count it as dropped, so the call does not come back
    /// at once for packets nobody will serve.
    fn drain_refused(&self) {
        let mut buf = [0u8; PACKET_BUF];
        for _ in 0..REFUSED_DRAIN {
            if self.socket.recv_from(&mut buf).is_err() {
                break;
            }
            self.counters.dropped_queue_full.fetch_add(1, Ordering::Relaxed);
            self.metrics.frame_dropped(FrameDropReason::QueueFull);
        }
    }

    /// Runs one turn on a worker thread: one `recvmmsg` of up to [`TURN_PACKETS`], then each packet's deadline,
    /// latch, statistics, policing and framing. Returns whether the batch was full (more may be waiting).
    fn serve(&self) -> bool {
        let mut bufs = [[0u8; PACKET_BUF]; TURN_PACKETS];
        let mut got = [Received::EMPTY; TURN_PACKETS];
        let n = match recv_batch(&self.socket, &mut bufs, &mut got) {
            Ok(n) => n,
            Err(e) => {
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    tracing::debug!(error = %e, "RTP socket read failed");
                }
                return false;
            }
        };
        let now = Instant::now();
        let wall = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
        let mut state = self.state.lock();
        for (buf, r) in bufs.iter().zip(&got).take(n) {
            let Some(from) = r.from else { continue };
            // Zero without a stamp, or if the wall clock stepped back.
            let age = r.stamp.map_or(Duration::ZERO, |stamp| wall.saturating_sub(stamp));
            if age > self.max_age {
                self.counters.dropped_deadline.fetch_add(1, Ordering::Relaxed);
                self.metrics.frame_dropped(FrameDropReason::Deadline);
                continue;
            }
            let received = now.checked_sub(age).unwrap_or(now);
            if state.webrtc.is_some() {
                state.on_webrtc(
                    &buf[..r.len],
                    from,
                    received,
                    now,
                    &self.socket,
                    &self.sink,
                    &self.counters,
                    &self.metrics,
                );
            } else {
                state.on_rtp(&buf[..r.len], from, received, now, &self.sink, &self.counters, &self.metrics);
            }
        }
        n == TURN_PACKETS
    }

    /// Runs a WebRTC call's timers (from the call's task): whatever str0m sends or releases goes out as in a turn.
    /// The session's state and when it wants this again; `None` for a call without a session.
    pub fn webrtc_timeout(&self, now: Instant) -> Option<(SessionState, Instant)> {
        let mut state = self.state.lock();
        let (session, mut io) = state.split_webrtc(&self.socket, now, (&self.sink, &self.counters, &self.metrics))?;
        session.on_timeout(now, &mut io);
        Some((session.state(), session.next_timeout()))
    }

    /// Sends one 20 ms frame of the agent's audio (8 kHz PCM) to a WebRTC peer; whether it went.
    pub fn webrtc_send(&self, pcm: &[i16], now: Instant) -> bool {
        let mut state = self.state.lock();
        let io = state.split_webrtc(&self.socket, now, (&self.sink, &self.counters, &self.metrics));
        let Some((session, mut io)) = io else { return false };
        session.send_frame(pcm, now, &mut io)
    }

    /// Ends a WebRTC call's session (nothing more is sent); the counts it kept.
    pub fn webrtc_close(&self) -> Option<SessionCounts> {
        let mut state = self.state.lock();
        let session = state.webrtc.as_deref_mut()?;
        session.close();
        Some(session.counts())
    }

    /// Hands a DTMF digit from SIP INFO to the agent, counted with the RTP ones.
    pub fn send_digit(&self, digit: char) {
        let mut state = self.state.lock();
        state.dtmf_count += 1;
        drop(state);
        if self.sink.dtmf(digit).is_err() {
            self.counters.dropped_slow_consumer.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A call's inbound side as its task holds it: while it lives the workers read the call's RTP. Dropping it (on
/// every end of the call, a panic unwinding included) takes the socket out of the epoll set.
pub struct CallInbound(Arc<CallIngress>);

impl std::ops::Deref for CallInbound {
    type Target = CallIngress;

    fn deref(&self) -> &CallIngress {
        &self.0
    }
}

impl Drop for CallInbound {
    fn drop(&mut self) {
        // Ended first: a turn already queued or running then reads nothing and does not re-arm; the outbox stops
        // asking the workers for flushes (it waits for any flush in progress); then out of the set while both
        // descriptors are certainly open (this handle holds them), then the token is freed.
        self.0.ended.store(true, Ordering::Release);
        let outbox = self.0.sink.outbox();
        if let Some(outbox) = outbox {
            outbox.set_waker(None);
        }
        self.0.readiness.deregister(self.0.socket.as_raw_fd(), outbox.map(|o| o.fd()), self.0.token);
    }
}

/// A unit of a call's work on the media workers, charged 1 to the call's tenant.
pub enum MediaTurn {
    /// Read the call's RTP: one at a time per call.
    Read(IngressTurn),
    /// Write what waits in the call's agent outbox: its socket turned writable.
    Flush(FlushTurn),
}

impl MediaTurn {
    fn serve(self) -> Option<MediaTurn> {
        match self {
            MediaTurn::Read(turn) => turn.serve().map(MediaTurn::Read),
            MediaTurn::Flush(turn) => {
                turn.serve();
                None
            }
        }
    }
}

/// A flush of a call's agent outbox (see `stream::outbox`); one at a time per call, by the one-shot registration
/// of the outbox's socket.
pub struct FlushTurn {
    call: Arc<CallIngress>,
}

impl FlushTurn {
    /// Writes what the socket takes; the outbox asks for writability again if some is left.
    fn serve(self) {
        if let Some(outbox) = self.call.sink.outbox() {
            outbox.flush();
        }
    }
}

/// A call's read turn on a media worker. Dropped without being handed back (served, refused, drained at shutdown,
/// unwound by a panic), it re-arms the call's socket unless the call has ended, so a live call is never left
/// unwatched.
pub struct IngressTurn {
    call: Arc<CallIngress>,
    queued_at: Instant,
}

impl IngressTurn {
    fn new(call: Arc<CallIngress>, now: Instant) -> IngressTurn {
        IngressTurn { call, queued_at: now }
    }

    /// Serves the turn; hands it back when the call may have more packets waiting.
    fn serve(mut self) -> Option<IngressTurn> {
        if self.call.ended.load(Ordering::Acquire) {
            return None;
        }
        let wait = self.queued_at.elapsed();
        self.call.metrics.sched_wait(wait);
        self.call.turns.turns.fetch_add(1, Ordering::Relaxed);
        if wait > LATE_TURN {
            self.call.turns.late.fetch_add(1, Ordering::Relaxed);
        }
        if self.call.serve() && !self.call.ended.load(Ordering::Acquire) {
            self.queued_at = Instant::now();
            return Some(self);
        }
        None
    }
}

impl Drop for IngressTurn {
    fn drop(&mut self) {
        self.call.arm();
    }
}

/// The inbound state of one call.
pub struct Ingress {
    tenant: TenantId,
    call: CallId,
    pub negotiated: Negotiated,
    pub stats: ReceiveStats,
    pub framing: Framing,
    dtmf: DtmfDetector,
    pub policer: Policer,
    pub latched: Option<SocketAddr>,
    pub last_rtp_at: Instant,
    clock_origin: Instant,
    pub dtmf_count: u64,
    /// A WebRTC call's session (see [`InboundSetup::webrtc`]); `None` for plain RTP.
    pub webrtc: Option<Box<RtcSession>>,
}

impl Ingress {
    fn new(
        tenant: TenantId,
        call: CallId,
        negotiated: Negotiated,
        format: MediaFormat,
        webrtc: Option<Box<RtcSession>>,
    ) -> Ingress {
        let now = Instant::now();
        // WebRTC is policed by datagram (before decryption, so a flood costs no SRTP work): Opus at its shortest
        // packetization (10 ms, 100/s) plus RTCP and STUN consent, with a burst for a DTLS flight.
        let policer = if webrtc.is_some() { Policer::new(WEBRTC_DATAGRAMS_PER_SECOND, 60, 1) } else { Policer::g711() };
        let wide_source = webrtc.as_ref().is_some_and(|s| s.rate() == PcmRate::Wide);
        Ingress {
            webrtc,
            tenant,
            call,
            negotiated,
            stats: ReceiveStats::new(8000),
            framing: Framing::new(format, wide_source),
            dtmf: DtmfDetector::new(),
            policer,
            latched: None,
            last_rtp_at: now,
            clock_origin: now,
            dtmf_count: 0,
        }
    }

    /// One datagram of a WebRTC call (STUN, DTLS or SRTP), received at `received` (kernel time) and read at `now`:
    /// policed by count, then through the session; its decoded audio is framed and handed off as RTP audio is.
    #[allow(clippy::too_many_arguments)]
    fn on_webrtc(
        &mut self,
        datagram: &[u8],
        from: SocketAddr,
        received: Instant,
        now: Instant,
        socket: &UdpSocket,
        sink: &AgentSink,
        counters: &MediaCounters,
        metrics: &TenantMetrics,
    ) {
        if self.policer.audio(1, received) == Verdict::Policed {
            counters.policed.fetch_add(1, Ordering::Relaxed);
            metrics.frame_dropped(FrameDropReason::Policed);
            return;
        }
        if let Some((session, mut io)) = self.split_webrtc(socket, now, (sink, counters, metrics)) {
            session.on_datagram(datagram, from, received, &mut io);
        }
    }

    /// The WebRTC session and, borrowed beside it, what its output goes to.
    fn split_webrtc<'a>(
        &'a mut self,
        socket: &'a UdpSocket,
        now: Instant,
        (sink, counters, metrics): (&'a AgentSink, &'a MediaCounters, &'a TenantMetrics),
    ) -> Option<(&'a mut RtcSession, WorkerIo<'a>)> {
        let session = self.webrtc.as_deref_mut()?;
        let io = WorkerIo {
            socket,
            framing: &mut self.framing,
            last_media_at: &mut self.last_rtp_at,
            dtmf_count: &mut self.dtmf_count,
            now,
            to: HandOff { tenant: self.tenant, call: self.call, sink, counters, metrics },
        };
        Some((session, io))
    }

    /// One RTP packet, received at `received` (kernel time) and read at `now`.
    #[allow(clippy::too_many_arguments)]
    fn on_rtp(
        &mut self,
        packet: &[u8],
        from: SocketAddr,
        received: Instant,
        now: Instant,
        sink: &AgentSink,
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
            self.framing.reset();
            self.dtmf.reset();
        }
        // Held to the negotiated rate before any decoding or hand-off (see call::police), measured at the kernel's
        // receive time: how the sender paced its packets, not how late a busy worker read them (a stall of ours
        // would otherwise bunch a well-paced call's packets and police them).
        let verdict = if is_dtmf { self.policer.event(received) } else { self.policer.audio(payload.len(), received) };
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
                if sink.dtmf(digit).is_err() {
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
        let to = HandOff { tenant: self.tenant, call: self.call, sink, counters, metrics };
        self.framing.push_ulaw(header.timestamp, ulaw, received, &to);
    }
}

/// Datagrams a second a WebRTC call may send (see [`Ingress::new`]).
const WEBRTC_DATAGRAMS_PER_SECOND: u32 = 150;

/// What a WebRTC session hands back inside a worker's turn: datagrams go out of the call's socket at once, audio is
/// framed and handed to the agent like RTP audio, digits go to the agent.
struct WorkerIo<'a> {
    socket: &'a UdpSocket,
    framing: &'a mut Framing,
    last_media_at: &'a mut Instant,
    dtmf_count: &'a mut u64,
    now: Instant,
    to: HandOff<'a>,
}

impl SessionIo for WorkerIo<'_> {
    fn transmit(&mut self, packet: &[u8], to: SocketAddr) {
        // Non-blocking: a full send buffer drops the datagram, as the network would; str0m retransmits what needs it.
        let _ = self.socket.send_to(packet, to);
    }

    fn audio(&mut self, pcm: &[i16], rtp_samples: u32, received: Instant) {
        *self.last_media_at = self.now;
        self.framing.push_linear(rtp_samples, pcm, received, &self.to);
    }

    fn digit(&mut self, digit: char) {
        *self.dtmf_count += 1;
        if self.to.sink.dtmf(digit).is_err() {
            self.to.counters.dropped_slow_consumer.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Asks the kernel to stamp each datagram with its receive time (`SO_TIMESTAMPNS`, `CLOCK_REALTIME`).
fn enable_receive_timestamps(socket: &UdpSocket) -> std::io::Result<()> {
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

/// One datagram of a batch: its length, source (`None` for an address family we do not speak), and kernel
/// receive stamp (wall clock, since the epoch).
#[derive(Copy, Clone)]
struct Received {
    len: usize,
    from: Option<SocketAddr>,
    stamp: Option<Duration>,
}

impl Received {
    const EMPTY: Received = Received { len: 0, from: None, stamp: None };
}

/// One non-blocking `recvmmsg` of up to [`TURN_PACKETS`] datagrams into `bufs`; fills `out` and returns how many.
/// `WouldBlock` when none is waiting.
fn recv_batch(
    socket: &UdpSocket,
    bufs: &mut [[u8; PACKET_BUF]; TURN_PACKETS],
    out: &mut [Received; TURN_PACKETS],
) -> std::io::Result<usize> {
    // SAFETY: every pointer handed to recvmmsg points into a live local (or `bufs`) of the stated size; the control
    // buffers are u64-aligned as cmsghdr requires; the CMSG_* walk of each message stays within the msg_controllen
    // the kernel set for it; only the first `n` (as returned) headers are read back.
    unsafe {
        let mut addrs: [libc::sockaddr_storage; TURN_PACKETS] = std::mem::zeroed();
        let mut iovs: [libc::iovec; TURN_PACKETS] = std::mem::zeroed();
        let mut controls = [[0u64; 8]; TURN_PACKETS];
        let mut msgs: [libc::mmsghdr; TURN_PACKETS] = std::mem::zeroed();
        for i in 0..TURN_PACKETS {
            iovs[i] = libc::iovec { iov_base: bufs[i].as_mut_ptr().cast(), iov_len: PACKET_BUF };
            let h = &mut msgs[i].msg_hdr;
            h.msg_name = (&mut addrs[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = controls[i].as_mut_ptr().cast();
            h.msg_controllen = std::mem::size_of_val(&controls[i]) as _;
        }
        let n = libc::recvmmsg(
            socket.as_raw_fd(),
            msgs.as_mut_ptr(),
            TURN_PACKETS as libc::c_uint,
            libc::MSG_DONTWAIT,
            std::ptr::null_mut(),
        );
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let n = n as usize;
        for i in 0..n {
            let h = &msgs[i].msg_hdr;
            let mut stamp = None;
            let mut cmsg = libc::CMSG_FIRSTHDR(h);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                    stamp = Some(Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32));
                }
                cmsg = libc::CMSG_NXTHDR(h, cmsg);
            }
            out[i] =
                Received { len: (msgs[i].msg_len as usize).min(PACKET_BUF), from: sockaddr_to_std(&addrs[i]), stamp };
        }
        Ok(n)
    }
}

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
