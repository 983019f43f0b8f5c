//! The unit of media work: 20 ms of 8 kHz µ-law audio that carries its tenant and call from the socket that
//! received it to the provider stream that delivers it.

use std::time::Instant;

use crate::tenant::TenantId;

/// Samples in one 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;
/// Duration of one frame in milliseconds.
pub const FRAME_MS: u32 = 20;

/// Server-local identity of a call; cheap to copy, never reused within a process.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub u64);

impl std::fmt::Display for CallId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// 20 ms of inbound audio as µ-law bytes, stamped with its tenant and the instant its first packet was received.
///
/// The payload is inline (no heap) so that moving a frame through channels allocates nothing.
#[derive(Clone, Debug)]
pub struct Frame {
    pub tenant: TenantId,
    pub call: CallId,
    /// Frame counter within the call, from 0.
    pub seq: u64,
    /// RTP timestamp (8 kHz units) of the frame's first sample.
    pub ts: u32,
    pub payload: [u8; FRAME_SAMPLES],
    /// When the socket received the packet that completed this frame.
    pub t_ingress: Instant,
}
