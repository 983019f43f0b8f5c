//! One call's state and media logic: frames, re-framing, the playout buffer, the SIP UAS core, call records.
//! No IO here.

pub mod frame;
pub mod playout;
pub mod police;
pub mod record;
pub mod reframe;
pub mod uas;

pub use frame::{CallId, FRAME_MS, FRAME_SAMPLES, Frame, FrameAudio, L16_FRAME_BYTES};
