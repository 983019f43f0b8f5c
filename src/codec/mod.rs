//! Audio codecs as pure functions over sample buffers. Nothing here allocates per frame.

pub mod g711;
pub mod opus;
pub mod resample;
