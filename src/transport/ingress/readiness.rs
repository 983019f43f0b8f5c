//! The media workers' readiness: one epoll set over every live call's RTP socket (and agent socket, for a direct
//! provider stream), polled by the workers themselves.
//!
//! Owns the epoll instance, the eventfd that wakes a worker blocked in `epoll_wait`, and the registry that maps an
//! event's token to its call. It is the pool's [`Source`]: each ready RTP socket becomes one read turn
//! ([`IngressTurn`]) for its tenant, and each agent socket whose outbox asked for writability one flush turn
//! ([`FlushTurn`]). Linux only (epoll, eventfd), like the rest of the media path.
//!
//! * **Interest** is `EPOLLIN | EPOLLET | EPOLLONESHOT`: an event disarms the socket until the call's turn ends and
//!   re-arms it ([`Readiness::arm`], `EPOLL_CTL_MOD`), which is what keeps one turn per call at a time; a flood
//!   costs one event per turn, not one per packet.
//! * **Agent sockets** (direct provider streams) are in the set too, under the call's token with [`FLUSH`] set:
//!   registered disarmed, and armed for `EPOLLOUT` (one-shot) only when the outbox has bytes the socket would not
//!   take ([`FlushWaker`]).
//! * **Tokens** are `generation << 32 | kind | slot`. Deregistration removes the socket from the set and then frees the
//!   slot with the next generation, so an event collected just before (by another worker) finds no call and is
//!   ignored, and a reused slot never receives another call's events.
//! * **Lock**: the registry's mutex is held to register, to deregister, and once per batch of events to turn tokens
//!   into calls; never across a syscall that waits.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use super::{CallIngress, FlushTurn, IngressTurn, MediaTurn};
use crate::sched::bulkhead::{SOURCE_BATCH, Source};
use crate::sched::wfq::RefuseReason;
use crate::stream::outbox::WriteWaker;
use crate::tenant::TenantId;

/// The eventfd's token; never a call's (slots stay below `FLUSH`).
const WAKE_TOKEN: u64 = u64::MAX;
/// The token bit of a call's agent socket (its outbox wants a flush); without it, the call's RTP socket.
const FLUSH: u64 = 1 << 31;
/// A call socket's interest: readable, edge-triggered, disarmed after each event.
const CALL_INTEREST: u32 = (libc::EPOLLIN | libc::EPOLLET | libc::EPOLLONESHOT) as u32;
/// An agent socket's interest while its outbox waits: writable, edge-triggered, disarmed after each event.
const FLUSH_INTEREST: u32 = (libc::EPOLLOUT | libc::EPOLLET | libc::EPOLLONESHOT) as u32;
/// An agent socket's interest otherwise: nothing (errors and hang-ups still raise one event).
const IDLE_INTEREST: u32 = (libc::EPOLLET | libc::EPOLLONESHOT) as u32;
/// Longest a blocked poll waits without an event; a safety net only (wake-ups come through the eventfd).
const MAX_BLOCK_MS: libc::c_int = 1000;

/// The epoll set and its registry; see the module docs.
pub(super) struct Readiness {
    epoll: OwnedFd,
    wake: OwnedFd,
    calls: Mutex<Registry>,
}

#[derive(Default)]
struct Registry {
    slots: Vec<Slot>,
    free: Vec<u32>,
    live: usize,
}

#[derive(Default)]
struct Slot {
    generation: u32,
    call: Option<Arc<CallIngress>>,
}

fn token(slot: u32, generation: u32) -> u64 {
    (u64::from(generation) << 32) | u64::from(slot)
}

/// (slot, generation) of a token, whichever its kind.
fn split(token: u64) -> (usize, u32) {
    ((token & (FLUSH - 1)) as usize, (token >> 32) as u32)
}

fn ctl(epoll: RawFd, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
    let mut ev = libc::epoll_event { events, u64: token };
    // SAFETY: the callers pass descriptors that their call (alive) owns; `ev` is a valid epoll_event (ignored by
    // EPOLL_CTL_DEL).
    cvt(unsafe { libc::epoll_ctl(epoll, op, fd, &mut ev) }).map(drop)
}

/// Arms a call's agent socket for one writability event: the outbox's way to ask the workers for a flush.
pub(super) struct FlushWaker {
    readiness: Arc<Readiness>,
    fd: RawFd,
    token: u64,
}

impl FlushWaker {
    /// `fd` is the outbox's own descriptor: the outbox holds this waker, so the descriptor is open whenever it is
    /// called; it is taken out of the outbox before the call deregisters.
    pub(super) fn new(readiness: Arc<Readiness>, fd: RawFd, token: u64) -> FlushWaker {
        FlushWaker { readiness, fd, token: token | FLUSH }
    }
}

impl WriteWaker for FlushWaker {
    fn want_writable(&self) {
        if let Err(e) = ctl(self.readiness.epoll.as_raw_fd(), libc::EPOLL_CTL_MOD, self.fd, FLUSH_INTEREST, self.token)
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            tracing::warn!(error = %e, "cannot arm an agent socket for writability");
        }
    }
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

impl Readiness {
    pub(super) fn new() -> io::Result<Readiness> {
        // SAFETY: plain syscalls; each descriptor returned is checked and owned at once.
        let (epoll, wake) = unsafe {
            let epoll = OwnedFd::from_raw_fd(cvt(libc::epoll_create1(libc::EPOLL_CLOEXEC))?);
            let wake = OwnedFd::from_raw_fd(cvt(libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC))?);
            (epoll, wake)
        };
        // Level-triggered: a wake written before the poller blocks is still seen when it does.
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: WAKE_TOKEN };
        // SAFETY: both descriptors are open and owned above; `ev` is a valid epoll_event.
        cvt(unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, wake.as_raw_fd(), &mut ev) })?;
        Ok(Readiness { epoll, wake, calls: Mutex::new(Registry::default()) })
    }

    /// Reserves a token, stores the call `make` builds for it, and adds `fd` (the call's RTP socket, owned by that
    /// call) to the set, armed: packets already waiting raise the event at once; and `outbox_fd` (its agent socket's
    /// outbox descriptor, if the stream is written directly), disarmed.
    pub(super) fn register(
        &self,
        fd: RawFd,
        outbox_fd: Option<RawFd>,
        make: impl FnOnce(u64) -> Arc<CallIngress>,
    ) -> io::Result<Arc<CallIngress>> {
        let (call, token) = {
            let mut reg = self.calls.lock();
            let slot = match reg.free.pop() {
                Some(slot) => slot,
                None => {
                    let slot = u32::try_from(reg.slots.len())
                        .ok()
                        .filter(|&s| u64::from(s) < FLUSH)
                        .ok_or_else(|| io::Error::other("too many registered calls"))?;
                    reg.slots.push(Slot::default());
                    slot
                }
            };
            let token = token(slot, reg.slots[slot as usize].generation);
            let call = make(token);
            reg.slots[slot as usize].call = Some(Arc::clone(&call));
            reg.live += 1;
            (call, token)
        };
        let epoll = self.epoll.as_raw_fd();
        if let Err(e) = ctl(epoll, libc::EPOLL_CTL_ADD, fd, CALL_INTEREST, token) {
            self.release(token);
            return Err(e);
        }
        if let Some(outbox_fd) = outbox_fd
            && let Err(e) = ctl(epoll, libc::EPOLL_CTL_ADD, outbox_fd, IDLE_INTEREST, token | FLUSH)
        {
            self.deregister(fd, None, token);
            return Err(e);
        }
        Ok(call)
    }

    /// Re-arms a call's socket after its turn. The kernel checks readiness here, so a packet that arrived during
    /// the turn raises the event at once. Fails only for a socket already deregistered (`ENOENT`), which is fine.
    pub(super) fn arm(&self, fd: RawFd, token: u64) {
        // The caller holds the call that owns `fd`, so it is open and still the call's socket.
        if let Err(e) = ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_MOD, fd, CALL_INTEREST, token)
            && e.raw_os_error() != Some(libc::ENOENT)
        {
            tracing::warn!(error = %e, "cannot re-arm an RTP socket");
        }
    }

    /// Takes a call's sockets out of the set (while they are still open: the caller holds the call), then frees
    /// its token.
    pub(super) fn deregister(&self, fd: RawFd, outbox_fd: Option<RawFd>, token: u64) {
        for fd in std::iter::once(fd).chain(outbox_fd) {
            if let Err(e) = ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, 0, 0)
                && e.raw_os_error() != Some(libc::ENOENT)
            {
                tracing::warn!(error = %e, "cannot deregister a call's socket");
            }
        }
        self.release(token);
    }

    fn release(&self, token: u64) {
        let (slot, generation) = split(token);
        let released = {
            let mut reg = self.calls.lock();
            let Some(s) = reg.slots.get_mut(slot).filter(|s| s.generation == generation && s.call.is_some()) else {
                return;
            };
            s.generation = s.generation.wrapping_add(1);
            let call = s.call.take();
            reg.free.push(slot as u32);
            reg.live -= 1;
            call
        };
        // The registry's reference goes outside the lock (it may be the last, closing the socket).
        drop(released);
    }

    /// Calls registered now.
    pub(super) fn registered(&self) -> usize {
        self.calls.lock().live
    }
}

impl Source<MediaTurn> for Readiness {
    fn poll(&self, ready: &mut Vec<(TenantId, MediaTurn)>, block: bool) {
        let room = ready.capacity().saturating_sub(ready.len()).min(SOURCE_BATCH);
        if room == 0 {
            return;
        }
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; SOURCE_BATCH];
        let timeout = if block { MAX_BLOCK_MS } else { 0 };
        // SAFETY: `events` has room for `room` entries.
        let n = unsafe { libc::epoll_wait(self.epoll.as_raw_fd(), events.as_mut_ptr(), room as libc::c_int, timeout) };
        if n <= 0 {
            // Nothing ready, the timeout, or EINTR: the worker simply looks again.
            return;
        }
        let now = Instant::now();
        let reg = self.calls.lock();
        for ev in &events[..n as usize] {
            let t = ev.u64;
            if t == WAKE_TOKEN {
                let mut count = 0u64;
                // SAFETY: reading the 8-byte counter of our own non-blocking eventfd into a u64.
                let _ = unsafe { libc::read(self.wake.as_raw_fd(), (&mut count as *mut u64).cast(), 8) };
                continue;
            }
            let (slot, generation) = split(t);
            // An event of a call deregistered since it fired matches no slot (or a newer generation): ignored.
            let Some(call) = reg.slots.get(slot).filter(|s| s.generation == generation).and_then(|s| s.call.as_ref())
            else {
                continue;
            };
            let turn = if t & FLUSH != 0 {
                MediaTurn::Flush(FlushTurn { call: Arc::clone(call) })
            } else {
                MediaTurn::Read(IngressTurn::new(Arc::clone(call), now))
            };
            ready.push((call.tenant, turn));
        }
    }

    fn wake(&self) {
        let one = 1u64;
        // SAFETY: writing an 8-byte counter increment to our own non-blocking eventfd. A full counter (EAGAIN)
        // means a wake-up is pending already.
        let _ = unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    fn refused(&self, _tenant: TenantId, turn: MediaTurn, _reason: RefuseReason) {
        match turn {
            MediaTurn::Read(turn) => {
                turn.call.drain_refused();
                // Dropping the turn re-arms the socket.
            }
            // Not the agent's fault: its bytes still go out (the outbox re-arms if some are left).
            MediaTurn::Flush(turn) => turn.serve(),
        }
    }
}
