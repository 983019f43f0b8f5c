//! 2:1 rate conversion between 8 kHz and 16 kHz, one 20 ms frame at a time, for apps whose provider stream is
//! L16 at 16 kHz while the caller is G.711 at 8 kHz (SIP calls). WebRTC calls need none: libopus decodes and
//! encodes at 16 kHz directly.
//!
//! Both directions use one linear-phase half-band FIR (63 taps, Kaiser window β = 8, cut-off at 4 kHz): upsampling
//! zero-stuffs and filters out the image above 4 kHz, downsampling filters out what would alias below 4 kHz, then
//! keeps every other sample. Stopband attenuation is about 80 dB from 4.65 kHz, the passband is flat to 3.35 kHz
//! (the whole G.711 band), and the delay is 31 samples at 16 kHz (under 2 ms) each way. The ratio is fixed and the
//! block is always one frame, so a general-purpose resampler (`rubato`'s FFT or sinc resamplers, with their
//! buffers and chunking) would buy nothing here; this is one short loop over stack arrays, no allocation.

use crate::call::FRAME_SAMPLES;

/// Filter length; odd, so the filter has a centre tap and a whole-sample delay.
const TAPS: usize = 63;
/// Centre tap, and the filter's delay in 16 kHz samples.
const CENTRE: usize = TAPS / 2;
/// Samples in one 20 ms frame at 16 kHz.
pub const WIDE_FRAME_SAMPLES: usize = 2 * FRAME_SAMPLES;

/// The half-band low-pass, cut-off at a quarter of the 16 kHz rate; unity gain at DC.
fn half_band() -> [f32; TAPS] {
    const BETA: f64 = 8.0;
    let mut h = [0f32; TAPS];
    let i0_beta = bessel_i0(BETA);
    for (k, tap) in h.iter_mut().enumerate() {
        let m = k as f64 - CENTRE as f64;
        // sinc at half the Nyquist frequency: sin(πm/2) / (πm), 1/2 at m = 0; zero at every even m ≠ 0.
        let ideal = if m == 0.0 { 0.5 } else { (std::f64::consts::FRAC_PI_2 * m).sin() / (std::f64::consts::PI * m) };
        let r = m / CENTRE as f64;
        let window = bessel_i0(BETA * (1.0 - r * r).max(0.0).sqrt()) / i0_beta;
        *tap = (ideal * window) as f32;
    }
    // Normalise the DC gain to exactly 1 (the window shaves a little off).
    let sum: f32 = h.iter().sum();
    for tap in &mut h {
        *tap /= sum;
    }
    h
}

/// The zeroth-order modified Bessel function of the first kind, by its power series (converges fast for β ≤ 10).
fn bessel_i0(x: f64) -> f64 {
    let (mut sum, mut term) = (1.0, 1.0);
    let half = x / 2.0;
    for k in 1..40 {
        term *= (half / k as f64) * (half / k as f64);
        sum += term;
        if term < sum * 1e-12 {
            break;
        }
    }
    sum
}

fn to_i16(x: f32) -> i16 {
    x.round().clamp(i16::MIN as f32, i16::MAX as f32) as i16
}

/// 8 kHz → 16 kHz, one frame at a time; keeps the history that makes consecutive frames one continuous signal.
#[derive(Clone, Debug)]
pub struct Upsampler {
    h: [f32; TAPS],
    /// The last `CENTRE` 8 kHz samples of the previous frames, oldest first.
    history: [f32; CENTRE],
}

impl Default for Upsampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Upsampler {
    pub fn new() -> Upsampler {
        Upsampler { h: half_band(), history: [0.0; CENTRE] }
    }

    /// Converts one 20 ms frame (160 samples at 8 kHz) into 320 samples at 16 kHz.
    pub fn process(&mut self, input: &[i16; FRAME_SAMPLES], out: &mut [i16; WIDE_FRAME_SAMPLES]) {
        let mut w = [0f32; CENTRE + FRAME_SAMPLES];
        w[..CENTRE].copy_from_slice(&self.history);
        for (d, s) in w[CENTRE..].iter_mut().zip(input) {
            *d = f32::from(*s);
        }
        for n in 0..FRAME_SAMPLES {
            let at = CENTRE + n;
            // Output 2n sees the inputs under the even taps, output 2n+1 those under the odd taps; the zero-stuffed
            // samples contribute nothing. Gain 2 restores the energy the zeros took.
            let (mut even, mut odd) = (0f32, 0f32);
            for j in 0..=CENTRE {
                even += self.h[2 * j] * w[at - j];
                if 2 * j + 1 < TAPS {
                    odd += self.h[2 * j + 1] * w[at - j];
                }
            }
            out[2 * n] = to_i16(2.0 * even);
            out[2 * n + 1] = to_i16(2.0 * odd);
        }
        self.history.copy_from_slice(&w[FRAME_SAMPLES..]);
    }
}

/// 16 kHz → 8 kHz, one frame at a time; keeps the history that makes consecutive frames one continuous signal.
#[derive(Clone, Debug)]
pub struct Downsampler {
    h: [f32; TAPS],
    /// The last `TAPS - 1` 16 kHz samples of the previous frames, oldest first.
    history: [f32; TAPS - 1],
}

impl Default for Downsampler {
    fn default() -> Self {
        Self::new()
    }
}

impl Downsampler {
    pub fn new() -> Downsampler {
        Downsampler { h: half_band(), history: [0.0; TAPS - 1] }
    }

    /// Converts one 20 ms frame (320 samples at 16 kHz) into 160 samples at 8 kHz.
    pub fn process(&mut self, input: &[i16; WIDE_FRAME_SAMPLES], out: &mut [i16; FRAME_SAMPLES]) {
        let mut w = [0f32; TAPS - 1 + WIDE_FRAME_SAMPLES];
        w[..TAPS - 1].copy_from_slice(&self.history);
        for (d, s) in w[TAPS - 1..].iter_mut().zip(input) {
            *d = f32::from(*s);
        }
        for (n, o) in out.iter_mut().enumerate() {
            let at = TAPS - 1 + 2 * n;
            let mut acc = 0f32;
            for (k, tap) in self.h.iter().enumerate() {
                acc += tap * w[at - k];
            }
            *o = to_i16(acc);
        }
        self.history.copy_from_slice(&w[WIDE_FRAME_SAMPLES..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f64, rate: f64, amplitude: f64, samples: usize, from: usize) -> Vec<i16> {
        (from..from + samples)
            .map(|i| (amplitude * (2.0 * std::f64::consts::PI * hz * i as f64 / rate).sin()).round() as i16)
            .collect()
    }

    /// Amplitude of the `hz` component of `x` (sampled at `rate`), by correlation with a quadrature pair.
    fn amplitude(x: &[i16], hz: f64, rate: f64) -> f64 {
        let (mut re, mut im) = (0.0, 0.0);
        for (i, s) in x.iter().enumerate() {
            let phase = 2.0 * std::f64::consts::PI * hz * i as f64 / rate;
            re += f64::from(*s) * phase.cos();
            im += f64::from(*s) * phase.sin();
        }
        2.0 * (re * re + im * im).sqrt() / x.len() as f64
    }

    /// Largest sample difference between `out` and `ideal` delayed by `delay` samples, past the first four frames
    /// (`frame` samples each) of filter start-up.
    fn worst_difference(out: &[i16], ideal: &[i16], frame: usize, delay: usize) -> i32 {
        out[4 * frame..]
            .iter()
            .zip(&ideal[4 * frame - delay..])
            .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
            .max()
            .unwrap_or(i32::MAX)
    }

    fn upsample(input: &[i16]) -> Vec<i16> {
        let mut up = Upsampler::new();
        let mut out = Vec::new();
        for chunk in input.chunks_exact(FRAME_SAMPLES) {
            let mut o = [0i16; WIDE_FRAME_SAMPLES];
            up.process(chunk.try_into().unwrap(), &mut o);
            out.extend_from_slice(&o);
        }
        out
    }

    fn downsample(input: &[i16]) -> Vec<i16> {
        let mut down = Downsampler::new();
        let mut out = Vec::new();
        for chunk in input.chunks_exact(WIDE_FRAME_SAMPLES) {
            let mut o = [0i16; FRAME_SAMPLES];
            down.process(chunk.try_into().unwrap(), &mut o);
            out.extend_from_slice(&o);
        }
        out
    }

    #[test]
    fn the_filter_is_half_band_symmetric_with_unity_dc_gain() {
        let h = half_band();
        assert!((h.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        for k in 0..TAPS {
            assert!((h[k] - h[TAPS - 1 - k]).abs() < 1e-7, "linear phase");
        }
        for i in (2..=CENTRE).step_by(2) {
            assert!(h[CENTRE + i].abs() < 1e-6, "every other tap of a half-band filter is zero");
        }
    }

    #[test]
    fn upsampling_keeps_telephone_band_tones_and_removes_their_images() {
        for hz in [300.0, 1000.0, 3000.0] {
            let input = tone(hz, 8000.0, 10_000.0, 50 * FRAME_SAMPLES, 0);
            let out = upsample(&input);
            // Skip the first frames (filter start-up from silence).
            let steady = &out[4 * WIDE_FRAME_SAMPLES..];
            let kept = amplitude(steady, hz, 16_000.0);
            assert!((kept - 10_000.0).abs() < 200.0, "{hz} Hz kept at {kept:.0}");
            // Zero-stuffing mirrors `hz` to 8000 - hz: the filter must take it out.
            let image = amplitude(steady, 8000.0 - hz, 16_000.0);
            assert!(image < 10_000.0 * 0.003, "{hz} Hz image at {image:.1}");
        }
    }

    #[test]
    fn downsampling_keeps_telephone_band_tones_and_blocks_what_would_alias() {
        for hz in [300.0, 1000.0, 3000.0] {
            let input = tone(hz, 16_000.0, 10_000.0, 50 * WIDE_FRAME_SAMPLES, 0);
            let steady = &downsample(&input)[4 * FRAME_SAMPLES..];
            let kept = amplitude(steady, hz, 8000.0);
            assert!((kept - 10_000.0).abs() < 200.0, "{hz} Hz kept at {kept:.0}");
        }
        // 6 kHz at 16 kHz folds to 2 kHz at 8 kHz unless filtered.
        let input = tone(6000.0, 16_000.0, 10_000.0, 50 * WIDE_FRAME_SAMPLES, 0);
        let steady = &downsample(&input)[4 * FRAME_SAMPLES..];
        let aliased = amplitude(steady, 2000.0, 8000.0);
        assert!(aliased < 10_000.0 * 0.003, "6 kHz aliased to 2 kHz at {aliased:.1}");
    }

    #[test]
    fn frames_join_without_a_seam() {
        // A tone cut into frames must come out the same as the tone made at the high rate, frame edges included:
        // the history carries the filter across frames.
        let input = tone(1000.0, 8000.0, 8000.0, 20 * FRAME_SAMPLES, 0);
        let out = upsample(&input);
        let expected = tone(1000.0, 16_000.0, 8000.0, 20 * WIDE_FRAME_SAMPLES, 0);
        let worst = worst_difference(&out, &expected, WIDE_FRAME_SAMPLES, CENTRE);
        assert!(worst < 80, "largest difference {worst} from the ideal 16 kHz tone (delay {CENTRE})");
    }

    #[test]
    fn full_scale_input_clips_instead_of_wrapping() {
        // The filter's ripple overshoots a full-scale tone by a little: those samples must saturate at the i16
        // limits, never wrap around to the other sign.
        let input = tone(1000.0, 8000.0, 32_767.0, 20 * FRAME_SAMPLES, 0);
        let out = upsample(&input);
        let expected = tone(1000.0, 16_000.0, 32_767.0, 20 * WIDE_FRAME_SAMPLES, 0);
        let worst = worst_difference(&out, &expected, WIDE_FRAME_SAMPLES, CENTRE);
        assert!(worst < 400, "largest difference {worst}");
        let back = downsample(&out);
        let worst = worst_difference(&back, &input, FRAME_SAMPLES, CENTRE);
        assert!(worst < 600, "round trip: largest difference {worst}");
    }
}
