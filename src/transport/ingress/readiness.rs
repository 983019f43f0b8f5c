//! The media workers' readiness: one epoll set over every live call's RTP socket, polled by the workers themselves.
//!
//! Owns the epoll instance, the eventfd that wakes a worker blocked in `epoll_wait`, and the registry that maps an
//! event's token to its call. It is the pool's [`Source`]: each ready socket becomes one [`IngressTurn`] for its
//! tenant. Linux only (epoll, eventfd), like the rest of the media path.
//!
//! * **Interest** is `EPOLLIN | EPOLLET | EPOLLONESHOT`: an event disarms the socket until the call's turn ends and
//!   re-arms it ([`Readiness::arm`], `EPOLL_CTL_MOD`), which is what keeps one turn per call at a time; a flood
//!   costs one event per turn, not one per packet.
//! * **Tokens** are `generation << 32 | slot`. Deregistration removes the socket from the set and then frees the
//!   slot with the next generation, so an event collected just before (by another worker) finds no call and is
//!   ignored, and a reused slot never receives another call's events.
//! * **Lock**: the registry's mutex is held to register, to deregister, and once per batch of events to turn tokens
//!   into calls; never across a syscall that waits.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use super::{CallIngress, IngressTurn};
use crate::sched::bulkhead::{SOURCE_BATCH, Source};
use crate::sched::wfq::RefuseReason;
use crate::tenant::TenantId;

/// The eventfd's token; never a call's (slots stay below `u32::MAX`).
const WAKE_TOKEN: u64 = u64::MAX;
/// A call socket's interest: readable, edge-triggered, disarmed after each event.
const CALL_INTEREST: u32 = (libc::EPOLLIN | libc::EPOLLET | libc::EPOLLONESHOT) as u32;
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

fn split(token: u64) -> (usize, u32) {
    ((token & 0xFFFF_FFFF) as usize, (token >> 32) as u32)
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

    /// Reserves a token, stores the call `make` builds for it, and adds `fd` (the call's socket, owned by that call)
    /// to the set, armed: packets already waiting raise the event at once.
    pub(super) fn register(
        &self,
        fd: RawFd,
        make: impl FnOnce(u64) -> Arc<CallIngress>,
    ) -> io::Result<Arc<CallIngress>> {
        let (call, token) = {
            let mut reg = self.calls.lock();
            let slot = match reg.free.pop() {
                Some(slot) => slot,
                None => {
                    let slot = u32::try_from(reg.slots.len())
                        .ok()
                        .filter(|&s| s < u32::MAX)
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
        let mut ev = libc::epoll_event { events: CALL_INTEREST, u64: token };
        // SAFETY: `fd` is the call's open socket (the call, alive here, owns it); `ev` is a valid epoll_event.
        if let Err(e) = cvt(unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) }) {
            self.release(token);
            return Err(e);
        }
        Ok(call)
    }

    /// Re-arms a call's socket after its turn. The kernel checks readiness here, so a packet that arrived during
    /// the turn raises the event at once. Fails only for a socket already deregistered (`ENOENT`), which is fine.
    pub(super) fn arm(&self, fd: RawFd, token: u64) {
        let mut ev = libc::epoll_event { events: CALL_INTEREST, u64: token };
        // SAFETY: the caller holds the call that owns `fd`, so it is open and still the call's socket.
        let rc = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_MOD, fd, &mut ev) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::warn!(error = %e, "cannot re-arm an RTP socket");
            }
        }
    }

    /// Takes a call's socket out of the set (while it is still open: the caller holds the call), then frees its
    /// token.
    pub(super) fn deregister(&self, fd: RawFd, token: u64) {
        // SAFETY: as for `arm`; a null event is allowed for EPOLL_CTL_DEL since Linux 2.6.9.
        let rc = unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ENOENT) {
                tracing::warn!(error = %e, "cannot deregister an RTP socket");
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

impl Source<IngressTurn> for Readiness {
    fn poll(&self, ready: &mut Vec<(TenantId, IngressTurn)>, block: bool) {
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
            if let Some(call) = reg.slots.get(slot).filter(|s| s.generation == generation).and_then(|s| s.call.as_ref())
            {
                ready.push((call.tenant, IngressTurn::new(Arc::clone(call), now)));
            }
        }
    }

    fn wake(&self) {
        let one = 1u64;
        // SAFETY: writing an 8-byte counter increment to our own non-blocking eventfd. A full counter (EAGAIN)
        // means a wake-up is pending already.
        let _ = unsafe { libc::write(self.wake.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    fn refused(&self, _tenant: TenantId, turn: IngressTurn, _reason: RefuseReason) {
        turn.call.drain_refused();
        // Dropping the turn re-arms the socket.
    }
}
