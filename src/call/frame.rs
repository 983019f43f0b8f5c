//! The unit of media work: 20 ms of audio in the app's provider-stream format (8 kHz µ-law, or 16 kHz L16) that
//! carries its tenant and call from the socket that received it to the provider stream that delivers it.

use std::time::Instant;

use crate::tenant::TenantId;

/// Samples in one 20 ms frame at 8 kHz.
pub const FRAME_SAMPLES: usize = 160;
/// Duration of one frame in milliseconds.
pub const FRAME_MS: u32 = 20;
/// Bytes in one 20 ms frame of 16 kHz L16 (320 samples, two bytes each).
pub const L16_FRAME_BYTES: usize = 4 * FRAME_SAMPLES;

/// Server-local identity of a call; cheap to copy, never reused within a process.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CallId(pub u64);

impl std::fmt::Display for CallId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// 20 ms of audio, as the provider stream carries it.
///
/// Inline (no heap), so that moving a frame through channels allocates nothing; the wide variant makes every frame
/// 640 bytes, a copy that costs less than the branch a boxed payload would need to free it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant, reason = "inline on purpose: a boxed payload would allocate per frame")]
pub enum FrameAudio {
    /// 160 µ-law samples at 8 kHz.
    Mulaw([u8; FRAME_SAMPLES]),
    /// 320 samples at 16 kHz, 16-bit signed little-endian.
    L16([u8; L16_FRAME_BYTES]),
}

impl FrameAudio {
    /// The bytes the provider stream sends, base64-encoded.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            FrameAudio::Mulaw(b) => b,
            FrameAudio::L16(b) => b,
        }
    }

    /// 16 kHz samples as L16 bytes.
    pub fn l16(samples: &[i16; 2 * FRAME_SAMPLES]) -> FrameAudio {
        let mut bytes = [0u8; L16_FRAME_BYTES];
        for (pair, s) in bytes.chunks_exact_mut(2).zip(samples) {
            pair.copy_from_slice(&s.to_le_bytes());
        }
        FrameAudio::L16(bytes)
    }
}

/// 20 ms of inbound audio, stamped with its tenant and the instant its first packet was received.
#[derive(Clone, Debug)]
pub struct Frame {
    pub tenant: TenantId,
    pub call: CallId,
    /// Frame counter within the call, from 0.
    pub seq: u64,
    /// RTP timestamp of the frame's first sample (in units of the received audio's rate: 8 kHz for G.711, 16 kHz
    /// for a wideband WebRTC call).
    pub ts: u32,
    pub payload: FrameAudio,
    /// When the socket received the packet that completed this frame.
    pub t_ingress: Instant,
}
