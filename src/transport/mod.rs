//! Tokio drivers that own sockets and clocks: SIP over UDP/TCP, RTP/RTCP per call, and the RTP port pool.

pub mod ingress;
pub mod media;
pub mod rtp_ports;
pub mod sip;
