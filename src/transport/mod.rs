//! Tokio drivers that own sockets and clocks: SIP over UDP/TCP, RTP/RTCP per call, the RTP port pool, and WebRTC
//! calls (WHIP).

pub mod ingress;
pub mod media;
pub mod rtp_ports;
pub mod sip;
pub mod webrtc;
