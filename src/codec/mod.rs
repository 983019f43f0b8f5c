//! Audio codecs as pure functions over sample buffers. Nothing here allocates per frame.

pub mod g711;
pub mod opus;
pub mod resample;

/// Strength of `hz` in `x` (one Goertzel bin, sampled at `rate`), normalised by length: the tone checks of the
/// codec and WebRTC session tests.
#[cfg(test)]
pub(crate) fn goertzel(x: &[i16], rate: u32, hz: f64) -> f64 {
    let w = 2.0 * std::f64::consts::PI * hz / f64::from(rate);
    let (mut s1, mut s2) = (0.0, 0.0);
    for &v in x {
        let s = f64::from(v) + 2.0 * w.cos() * s1 - s2;
        s2 = s1;
        s1 = s;
    }
    (s1 * s1 + s2 * s2 - 2.0 * w.cos() * s1 * s2).sqrt() / x.len().max(1) as f64
}
