//! Tokio drivers that own sockets and clocks: SIP over UDP/TCP, RTP/RTCP per call.
