//! The RTP port pool: an even port for RTP and the odd one above it for RTCP, per call, from the configured range.
//!
//! Ports are handed out first-in first-out, so a port just released is the last to be reused: stray packets of a
//! finished call are unlikely to land in a new one. A port another process holds is skipped and put back at the
//! end of the queue. The lease returns its port when dropped, on every hangup path.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::config::RtpPorts;

pub struct RtpPortPool {
    ip: IpAddr,
    free: Mutex<VecDeque<u16>>,
    total: usize,
}

/// Two bound sockets (RTP on an even port, RTCP on the next) that return their port to the pool on drop.
pub struct RtpLease {
    pub rtp: UdpSocket,
    pub rtcp: UdpSocket,
    pub port: u16,
    pool: Arc<RtpPortPool>,
}

impl Drop for RtpLease {
    fn drop(&mut self) {
        self.pool.free.lock().push_back(self.port);
    }
}

impl RtpPortPool {
    pub fn new(ip: IpAddr, range: RtpPorts) -> Arc<RtpPortPool> {
        let first = range.lo + range.lo % 2;
        let free: VecDeque<u16> = (first..range.hi).step_by(2).collect();
        let total = free.len();
        Arc::new(RtpPortPool { ip, free: Mutex::new(free), total })
    }

    pub fn capacity(&self) -> usize {
        self.total
    }

    pub fn available(&self) -> usize {
        self.free.lock().len()
    }

    /// Binds the next free pair; `None` when every port is taken (by our calls or by other processes).
    pub fn lease(self: &Arc<Self>) -> Option<RtpLease> {
        let attempts = self.available();
        for _ in 0..attempts {
            let port = self.free.lock().pop_front()?;
            match (UdpSocket::bind(SocketAddr::new(self.ip, port)), UdpSocket::bind(SocketAddr::new(self.ip, port + 1)))
            {
                (Ok(rtp), Ok(rtcp)) => {
                    return Some(RtpLease { rtp, rtcp, port, pool: Arc::clone(self) });
                }
                _ => self.free.lock().push_back(port),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_even_pairs_and_returns_them_fifo() {
        let pool = RtpPortPool::new("127.0.0.1".parse().unwrap(), RtpPorts { lo: 41001, hi: 41009 });
        assert_eq!(pool.capacity(), 4); // 41002, 41004, 41006, 41008
        let a = pool.lease().unwrap();
        assert_eq!(a.port % 2, 0);
        assert_eq!(a.rtcp.local_addr().unwrap().port(), a.port + 1);
        let first = a.port;
        drop(a);
        let b = pool.lease().unwrap();
        assert_ne!(b.port, first, "a released port goes to the back of the queue");
        let _c = pool.lease().unwrap();
        let _d = pool.lease().unwrap();
        let _e = pool.lease().unwrap();
        assert!(pool.lease().is_none());
        drop(b);
        assert!(pool.lease().is_some());
    }

    #[test]
    fn skips_ports_held_by_others() {
        let pool = RtpPortPool::new("127.0.0.1".parse().unwrap(), RtpPorts { lo: 41100, hi: 41103 });
        let _squatter = UdpSocket::bind("127.0.0.1:41101").unwrap();
        let lease = pool.lease().unwrap();
        assert_eq!(lease.port, 41102);
    }
}
