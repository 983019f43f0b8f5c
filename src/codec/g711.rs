//! G.711 µ-law and A-law (ITU-T G.711): table-driven conversion, no allocation.
//!
//! Owns sample-level conversion between 16-bit linear PCM and the two 8-bit companded laws, and between the
//! laws themselves. Every function is a table lookup; the tables are computed at compile time by `const fn`.
//!
//! Conventions (those of the ITU-T G.191 reference software):
//! - Linear values are 16-bit two's complement; µ-law uses the top 14 bits, A-law the top 13.
//! - A negative input is quantised by its one's complement (`!x`), so the quantiser is symmetric about -½:
//!   `linear_to_ulaw(-1) == 0x7F` (negative zero) and `linear_to_alaw(-1) == 0x55`.
//! - Decoding yields the centre of the quantisation interval on the 16-bit scale (µ-law ±32124, A-law ±32256).
//! - Law-to-law conversion goes through linear (decode, then re-encode) and is tabulated. This is not G.711's
//!   direct µ-law/A-law transcoding tables: compared with them, µ-law -> A-law lands one A-law step lower for
//!   19 of the 128 magnitudes (the mid-level ones). Inaudible for our use (carrier A-law to agent µ-law and
//!   back); 240 of the 256 A-law codes survive an A -> µ -> A round trip unchanged.

/// µ-law code of a zero sample (positive zero).
pub const ULAW_SILENCE: u8 = 0xFF;
/// A-law code of a zero sample (positive zero, even bits inverted).
pub const ALAW_SILENCE: u8 = 0xD5;

/// µ-law bias (33) on the 14-bit scale.
const ULAW_BIAS: u32 = 33;
/// Largest biased µ-law magnitude on the 14-bit scale.
const ULAW_MAX: u32 = 0x1FFF;

/// Encode one sample to µ-law, computing the segment from the bit length of the biased magnitude.
const fn encode_ulaw(x: i16) -> u8 {
    let (mag, positive) = if x < 0 { ((!x) as u32 >> 2, false) } else { (x as u32 >> 2, true) };
    let mut biased = mag + ULAW_BIAS;
    if biased > ULAW_MAX {
        biased = ULAW_MAX;
    }
    // Biased magnitude 33..=8191 has its top set bit at position 5..=12; segment = position - 5.
    let top_bit = 31 - biased.leading_zeros();
    let segment = top_bit - 5;
    let mantissa = (biased >> (segment + 1)) & 0x0F;
    let code = ((segment << 4) | mantissa) as u8;
    // µ-law transmits the complement; the sign bit is 1 for positive.
    if positive { !code } else { !code & 0x7F }
}

/// Decode one µ-law code to linear.
const fn decode_ulaw(u: u8) -> i16 {
    let c = !u;
    let segment = ((c >> 4) & 0x07) as u32;
    let mantissa = (c & 0x0F) as i32;
    let magnitude = (((mantissa << 3) + 0x84) << segment) - 0x84;
    if c & 0x80 != 0 { -magnitude as i16 } else { magnitude as i16 }
}

/// Encode one sample to A-law, computing the segment from the bit length of the 12-bit magnitude.
const fn encode_alaw(x: i16) -> u8 {
    let (mag, positive) = if x < 0 { ((!x) as u32 >> 4, false) } else { (x as u32 >> 4, true) };
    // mag is 0..=2047. Segment 0 is 0..=15 in steps of 1; segment s >= 1 is [16 << (s-1), 32 << (s-1)).
    let code = if mag < 16 {
        mag
    } else {
        let top_bit = 31 - mag.leading_zeros(); // 4..=10
        let segment = top_bit - 3; // 1..=7
        (segment << 4) | ((mag >> (segment - 1)) & 0x0F)
    };
    let signed = if positive { code | 0x80 } else { code };
    (signed as u8) ^ 0x55
}

/// Decode one A-law code to linear.
const fn decode_alaw(a: u8) -> i16 {
    let c = a ^ 0x55;
    let segment = ((c >> 4) & 0x07) as u32;
    let mantissa = (c & 0x0F) as i32;
    let magnitude = match segment {
        0 => (mantissa << 4) + 8,
        _ => ((mantissa << 4) + 0x108) << (segment - 1),
    };
    if c & 0x80 != 0 { magnitude as i16 } else { -magnitude as i16 }
}

const fn build_ulaw_decode() -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = decode_ulaw(i as u8);
        i += 1;
    }
    t
}

const fn build_alaw_decode() -> [i16; 256] {
    let mut t = [0i16; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = decode_alaw(i as u8);
        i += 1;
    }
    t
}

/// Indexed by the top 14 bits of the sample (`(s >> 2) & 0x3FFF`): µ-law depends on nothing else.
const fn build_ulaw_encode() -> [u8; 1 << 14] {
    let mut t = [0u8; 1 << 14];
    let mut i = 0;
    while i < (1 << 14) {
        // Sign-extend the 14-bit index back to a 16-bit sample with the two low bits zero.
        let s = ((i as u16) << 2) as i16;
        t[i] = encode_ulaw(s);
        i += 1;
    }
    t
}

/// Indexed by the top 12 bits of the sample (`(s >> 4) & 0xFFF`): A-law depends on nothing else.
const fn build_alaw_encode() -> [u8; 1 << 12] {
    let mut t = [0u8; 1 << 12];
    let mut i = 0;
    while i < (1 << 12) {
        let s = ((i as u16) << 4) as i16;
        t[i] = encode_alaw(s);
        i += 1;
    }
    t
}

const fn build_alaw_to_ulaw() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = encode_ulaw(decode_alaw(i as u8));
        i += 1;
    }
    t
}

const fn build_ulaw_to_alaw() -> [u8; 256] {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        t[i] = encode_alaw(decode_ulaw(i as u8));
        i += 1;
    }
    t
}

static ULAW_DECODE: [i16; 256] = build_ulaw_decode();
static ALAW_DECODE: [i16; 256] = build_alaw_decode();
static ULAW_ENCODE: [u8; 1 << 14] = build_ulaw_encode();
static ALAW_ENCODE: [u8; 1 << 12] = build_alaw_encode();
static ALAW_TO_ULAW: [u8; 256] = build_alaw_to_ulaw();
static ULAW_TO_ALAW: [u8; 256] = build_ulaw_to_alaw();

/// µ-law code to 16-bit linear.
#[inline]
pub fn ulaw_to_linear(u: u8) -> i16 {
    ULAW_DECODE[u as usize]
}

/// 16-bit linear to µ-law.
#[inline]
pub fn linear_to_ulaw(s: i16) -> u8 {
    ULAW_ENCODE[((s >> 2) as u16 & 0x3FFF) as usize]
}

/// A-law code to 16-bit linear.
#[inline]
pub fn alaw_to_linear(a: u8) -> i16 {
    ALAW_DECODE[a as usize]
}

/// 16-bit linear to A-law.
#[inline]
pub fn linear_to_alaw(s: i16) -> u8 {
    ALAW_ENCODE[((s >> 4) as u16 & 0x0FFF) as usize]
}

/// A-law code to the µ-law code of the same level.
#[inline]
pub fn alaw_to_ulaw(a: u8) -> u8 {
    ALAW_TO_ULAW[a as usize]
}

/// µ-law code to the A-law code of the same level.
#[inline]
pub fn ulaw_to_alaw(u: u8) -> u8 {
    ULAW_TO_ALAW[u as usize]
}

/// Encodes `min(src.len(), dst.len())` linear samples as µ-law.
#[inline]
pub fn linear_to_ulaw_slice(src: &[i16], dst: &mut [u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = linear_to_ulaw(*s);
    }
}

/// Decodes `min(src.len(), dst.len())` µ-law bytes to linear samples.
#[inline]
pub fn ulaw_to_linear_slice(src: &[u8], dst: &mut [i16]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = ulaw_to_linear(*s);
    }
}

/// Converts `min(src.len(), dst.len())` A-law bytes into µ-law.
#[inline]
pub fn alaw_to_ulaw_slice(src: &[u8], dst: &mut [u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = ALAW_TO_ULAW[*s as usize];
    }
}

/// Converts `min(src.len(), dst.len())` µ-law bytes into A-law.
#[inline]
pub fn ulaw_to_alaw_slice(src: &[u8], dst: &mut [u8]) {
    for (d, s) in dst.iter_mut().zip(src) {
        *d = ULAW_TO_ALAW[*s as usize];
    }
}

/// Converts µ-law bytes in place to A-law.
#[inline]
pub fn ulaw_to_alaw_in_place(buf: &mut [u8]) {
    for b in buf {
        *b = ULAW_TO_ALAW[*b as usize];
    }
}

/// Converts A-law bytes in place to µ-law.
#[inline]
pub fn alaw_to_ulaw_in_place(buf: &mut [u8]) {
    for b in buf {
        *b = ALAW_TO_ULAW[*b as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- Reference implementation: G.711 as specified, by segment search over the decision tables. ----

    /// Upper ends of the µ-law segments for the biased 14-bit magnitude (G.711 Table 2a, biased by 33).
    const REF_ULAW_SEG_END: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
    /// Upper ends of the A-law segments for the 12-bit magnitude (G.711 Table 1a).
    const REF_ALAW_SEG_END: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];

    fn ref_search(v: i32, table: &[i32; 8]) -> usize {
        table.iter().position(|&end| v <= end).unwrap_or(8)
    }

    fn ref_linear_to_ulaw(x: i16) -> u8 {
        let x = i32::from(x);
        let (mag, sign) = if x < 0 { ((-x - 1) >> 2, 0x00) } else { (x >> 2, 0x80) };
        let biased = (mag + 33).min(0x1FFF);
        let seg = ref_search(biased, &REF_ULAW_SEG_END);
        assert!(seg < 8);
        let mant = (biased >> (seg + 1)) & 0x0F;
        let code = (sign | ((seg as i32) << 4) | mant) as u8;
        code ^ 0x7F // complement segment and mantissa; the sign bit stays 1 for positive
    }

    fn ref_ulaw_to_linear(u: u8) -> i16 {
        let c = !u;
        let seg = i32::from((c >> 4) & 7);
        let mant = i32::from(c & 0x0F);
        // Reconstruction value on the 14-bit scale is (2*mant + 33) * 2^seg - 33; times 4 for 16 bits.
        let v = ((2 * mant + 33) * (1 << seg) - 33) * 4;
        (if c & 0x80 != 0 { -v } else { v }) as i16
    }

    fn ref_linear_to_alaw(x: i16) -> u8 {
        let x = i32::from(x);
        let (mag, sign) = if x < 0 { ((-x - 1) >> 4, 0x00) } else { (x >> 4, 0x80) };
        // The 12-bit magnitude table is in steps of 2 of this 11-bit magnitude: compare on the 12-bit scale.
        let seg = ref_search(mag << 1, &REF_ALAW_SEG_END);
        assert!(seg < 8);
        let mant = if seg == 0 { mag & 0x0F } else { (mag >> (seg - 1)) & 0x0F };
        ((sign | ((seg as i32) << 4) | mant) as u8) ^ 0x55
    }

    fn ref_alaw_to_linear(a: u8) -> i16 {
        let c = a ^ 0x55;
        let seg = i32::from((c >> 4) & 7);
        let mant = i32::from(c & 0x0F);
        let v = if seg == 0 { (2 * mant + 1) * 8 } else { (2 * mant + 33) * (1 << (seg - 1)) * 8 };
        (if c & 0x80 != 0 { v } else { -v }) as i16
    }

    #[test]
    fn decode_matches_reference_for_all_codes() {
        for c in 0..=255u8 {
            assert_eq!(ulaw_to_linear(c), ref_ulaw_to_linear(c), "ulaw {c:#04x}");
            assert_eq!(alaw_to_linear(c), ref_alaw_to_linear(c), "alaw {c:#04x}");
        }
    }

    #[test]
    fn encode_matches_reference_for_all_samples() {
        for s in i16::MIN..=i16::MAX {
            assert_eq!(linear_to_ulaw(s), ref_linear_to_ulaw(s), "ulaw of {s}");
            assert_eq!(linear_to_alaw(s), ref_linear_to_alaw(s), "alaw of {s}");
        }
    }

    #[test]
    fn known_values() {
        assert_eq!(ulaw_to_linear(0xFF), 0);
        assert_eq!(ulaw_to_linear(0x7F), 0);
        assert_eq!(ulaw_to_linear(0x00), -32124);
        assert_eq!(ulaw_to_linear(0x80), 32124);
        assert_eq!(ulaw_to_linear(0xFE), 8);
        assert_eq!(alaw_to_linear(0xD5), 8);
        assert_eq!(alaw_to_linear(0x55), -8);
        assert_eq!(alaw_to_linear(0xAA), 32256);
        assert_eq!(alaw_to_linear(0x2A), -32256);
        assert_eq!(linear_to_ulaw(0), ULAW_SILENCE);
        assert_eq!(linear_to_ulaw(-1), 0x7F);
        assert_eq!(linear_to_ulaw(i16::MAX), 0x80);
        assert_eq!(linear_to_ulaw(i16::MIN), 0x00);
        assert_eq!(linear_to_alaw(0), ALAW_SILENCE);
        assert_eq!(linear_to_alaw(-1), 0x55);
        assert_eq!(linear_to_alaw(i16::MAX), 0xAA);
        assert_eq!(linear_to_alaw(i16::MIN), 0x2A);
        // A-law has no zero level: its silence code decodes to +8, which µ-law represents exactly.
        assert_eq!(alaw_to_ulaw(ALAW_SILENCE), 0xFE);
        assert_eq!(ulaw_to_linear(0xFE), 8);
        assert_eq!(ulaw_to_alaw(ULAW_SILENCE), ALAW_SILENCE);
    }

    #[test]
    fn decode_then_encode_is_identity_on_codes() {
        for c in 0..=255u8 {
            assert_eq!(linear_to_ulaw(ulaw_to_linear(c)), if c == 0x7F { 0xFF } else { c }, "ulaw {c:#04x}");
            assert_eq!(linear_to_alaw(alaw_to_linear(c)), c, "alaw {c:#04x}");
        }
    }

    #[test]
    fn law_to_law_goes_through_linear_and_keeps_sign_and_level() {
        for c in 0..=255u8 {
            assert_eq!(alaw_to_ulaw(c), linear_to_ulaw(alaw_to_linear(c)));
            assert_eq!(ulaw_to_alaw(c), linear_to_alaw(ulaw_to_linear(c)));
            let (a, u) = (i32::from(alaw_to_linear(c)), i32::from(ulaw_to_linear(alaw_to_ulaw(c))));
            assert!(a.signum() == u.signum() || u == 0, "sign of alaw {c:#04x}");
            // One quantisation step of the coarser law at that level is at most 1/16 of the level plus a little.
            assert!((a - u).abs() <= a.abs() / 16 + 16, "alaw {c:#04x}: {a} vs {u}");
        }
        // Most A-law codes survive a trip through µ-law.
        let transparent = (0..=255u8).filter(|&a| ulaw_to_alaw(alaw_to_ulaw(a)) == a).count();
        assert_eq!(transparent, 240);
    }

    #[test]
    fn slice_versions_convert_the_overlap() {
        let src: Vec<u8> = (0..=255u8).collect();
        let mut dst = [0u8; 256];
        alaw_to_ulaw_slice(&src, &mut dst);
        assert!(dst.iter().zip(&src).all(|(d, s)| *d == alaw_to_ulaw(*s)));
        ulaw_to_alaw_slice(&src, &mut dst);
        assert!(dst.iter().zip(&src).all(|(d, s)| *d == ulaw_to_alaw(*s)));
        let mut short = [0u8; 3];
        ulaw_to_alaw_slice(&src, &mut short);
        assert_eq!(short, [ulaw_to_alaw(0), ulaw_to_alaw(1), ulaw_to_alaw(2)]);
        let mut buf = src.clone();
        alaw_to_ulaw_in_place(&mut buf);
        ulaw_to_alaw_in_place(&mut buf);
        assert_eq!(buf.len(), 256);
    }
}
