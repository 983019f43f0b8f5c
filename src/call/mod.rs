//! One call's state and media logic: frames, re-framing, the playout buffer, call records. No IO here.

pub mod frame;
pub mod playout;
pub mod reframe;

pub use frame::{CallId, FRAME_MS, FRAME_SAMPLES, Frame};
