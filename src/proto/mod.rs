//! Wire formats and protocol state machines, sans-IO: bytes and `Instant`s in, events and bytes out.
//! Nothing under `proto/` touches a socket, the clock, tokio or a tenant.

pub mod dtmf;
pub mod media_streams;
pub mod rtcp;
pub mod rtp;
pub mod sdp;
pub mod sip;
