//! An agent-side TCP stream that remembers the kernel's receive time of what it last read (`SO_TIMESTAMPNS`): the
//! moment the server's bytes reached the agent's socket, before the agent's own thread was woken to read them.
//!
//! The isolation bench measures a frame's ingress-to-provider latency up to that moment (generator send instant to
//! the frame's bytes in the agent's socket), because the agent's wake-up and parsing run on the generator's core,
//! beside the noisy tenant's flood and the kernel's loopback work for it: that delay is the harness's, not the
//! server's. The agent's own receive instant is still measured and reported beside it.

use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

/// A TCP stream whose reads record the kernel receive time (CLOCK_REALTIME, ns) of the last segment read.
pub struct RxStamped {
    tcp: TcpStream,
    last_rx_unix_ns: Arc<AtomicU64>,
}

impl RxStamped {
    /// Turns on `SO_TIMESTAMPNS` for `tcp`; the returned handle reads the latest stamp (0 until one is seen).
    pub fn new(tcp: TcpStream) -> io::Result<(RxStamped, Arc<AtomicU64>)> {
        let on: libc::c_int = 1;
        // SAFETY: setsockopt on an open socket with a valid int option.
        let rc = unsafe {
            libc::setsockopt(
                tcp.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_TIMESTAMPNS,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let stamp = Arc::new(AtomicU64::new(0));
        Ok((RxStamped { tcp, last_rx_unix_ns: Arc::clone(&stamp) }, stamp))
    }
}

/// One `recvmsg` into `buf`: bytes read and the kernel's receive stamp of the segment, if it gave one.
fn recv_stamped(fd: libc::c_int, buf: &mut [u8]) -> io::Result<(usize, Option<u64>)> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let mut control = [0u64; 16];
    // SAFETY: msghdr is plain data; every pointer set below points at a live buffer of the stated length.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&control) as _;
    // SAFETY: recvmsg on an open, non-blocking socket with the msghdr above.
    let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_DONTWAIT) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut stamp = None;
    // SAFETY: the CMSG_* walk stays inside `control`, as filled in by the kernel (msg_controllen).
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                stamp = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok((n as usize, stamp))
}

impl AsyncRead for RxStamped {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            ready!(this.tcp.poll_read_ready(cx))?;
            let fd = this.tcp.as_raw_fd();
            let unfilled = buf.initialize_unfilled();
            match this.tcp.try_io(Interest::READABLE, || recv_stamped(fd, unfilled)) {
                Ok((n, stamp)) => {
                    if let Some(s) = stamp {
                        this.last_rx_unix_ns.store(s, Ordering::Relaxed);
                    }
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for RxStamped {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().tcp).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().tcp).poll_shutdown(cx)
    }
}
