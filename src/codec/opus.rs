//! Opus (RFC 6716, RTP payload RFC 7587) for WebRTC calls, through libopus (the `opus` crate, which builds the
//! bundled libopus with cmake).
//!
//! Owns the two directions of a WebRTC call's audio: [`OpusDecoder`] turns the browser's Opus into 16-bit PCM at
//! the provider's rate, and [`OpusEncoder`] turns the agent's 20 ms frames into Opus. No separate resampler: libopus
//! decodes straight to 8 or 16 kHz and encodes from them (its own band-limiting and rate conversion, which it does
//! anyway when a 48 kHz stream is narrowband), so a frame costs one library call each way and no intermediate
//! 48 kHz buffer. RTP time stays at 48 kHz whatever the PCM rate (RFC 7587 §4.1). Nothing here allocates per frame.

use crate::call::FRAME_SAMPLES;

/// The PCM rate a call's provider stream carries.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PcmRate {
    /// 8 kHz: µ-law for the Twilio-compatible stream.
    Narrow,
    /// 16 kHz: L16 for apps that ask for wideband.
    Wide,
}

impl PcmRate {
    pub fn hz(self) -> u32 {
        match self {
            PcmRate::Narrow => 8000,
            PcmRate::Wide => 16000,
        }
    }

    /// Samples in one 20 ms frame.
    pub fn frame_samples(self) -> usize {
        match self {
            PcmRate::Narrow => FRAME_SAMPLES,
            PcmRate::Wide => 2 * FRAME_SAMPLES,
        }
    }

    /// 48 kHz RTP clock ticks per sample at this rate.
    pub fn rtp_ticks_per_sample(self) -> u32 {
        48_000 / self.hz()
    }
}

/// The longest Opus packet duration (120 ms) at 16 kHz: room for any packet a peer may send.
pub const MAX_DECODED_SAMPLES: usize = 1920;
/// Room for one encoded 20 ms frame (libopus' recommended ceiling for one frame is 1275 bytes).
pub const MAX_PACKET_BYTES: usize = 1275;
/// The encoder's bitrate: constant, so every 20 ms packet is the same size (see [`OpusEncoder`]).
pub const ENCODER_BITRATE: i32 = 24_000;
/// Bytes of one constant-bitrate 20 ms packet at [`ENCODER_BITRATE`].
pub const ENCODED_FRAME_BYTES: usize = (ENCODER_BITRATE as usize / 8) / 50;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpusError {
    #[error("libopus: {0}")]
    Codec(#[from] opus::Error),
    #[error("a frame must be {expected} samples, got {got}")]
    FrameSize { expected: usize, got: usize },
}

/// Decodes one call's inbound Opus (mono) to PCM at the provider's rate.
pub struct OpusDecoder {
    inner: opus::Decoder,
    rate: PcmRate,
}

impl OpusDecoder {
    pub fn new(rate: PcmRate) -> Result<OpusDecoder, OpusError> {
        Ok(OpusDecoder { inner: opus::Decoder::new(rate.hz(), opus::Channels::Mono)?, rate })
    }

    pub fn rate(&self) -> PcmRate {
        self.rate
    }

    /// Decodes one packet into `out`; returns the samples written. A corrupt packet is an error, not a panic.
    pub fn decode(&mut self, packet: &[u8], out: &mut [i16; MAX_DECODED_SAMPLES]) -> Result<usize, OpusError> {
        Ok(self.inner.decode(packet, out, false)?)
    }

    /// Fills a lost packet's place with libopus' concealment: `samples` samples (one packet's worth).
    pub fn conceal(&mut self, samples: usize, out: &mut [i16; MAX_DECODED_SAMPLES]) -> Result<usize, OpusError> {
        let n = samples.min(MAX_DECODED_SAMPLES);
        Ok(self.inner.decode(&[], &mut out[..n], false)?)
    }
}

/// Encodes one call's outbound 20 ms frames (mono, at the provider's rate) to Opus.
///
/// Constant bitrate on purpose: every packet is [`ENCODED_FRAME_BYTES`] long, so the WebRTC layer can reuse a
/// fixed-size buffer per frame instead of allocating one, and 24 kb/s is more than speech at 8 or 16 kHz needs.
pub struct OpusEncoder {
    inner: opus::Encoder,
    rate: PcmRate,
}

impl OpusEncoder {
    pub fn new(rate: PcmRate) -> Result<OpusEncoder, OpusError> {
        let mut inner = opus::Encoder::new(rate.hz(), opus::Channels::Mono, opus::Application::Voip)?;
        inner.set_bitrate(opus::Bitrate::Bits(ENCODER_BITRATE))?;
        inner.set_vbr(false)?;
        Ok(OpusEncoder { inner, rate })
    }

    /// Encodes one 20 ms frame into `out`; returns the packet's length.
    pub fn encode(&mut self, pcm: &[i16], out: &mut [u8]) -> Result<usize, OpusError> {
        let expected = self.rate.frame_samples();
        if pcm.len() != expected {
            return Err(OpusError::FrameSize { expected, got: pcm.len() });
        }
        Ok(self.inner.encode(pcm, out)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::goertzel;

    fn tone(hz: f64, rate: PcmRate, frame: usize) -> Vec<i16> {
        let n = rate.frame_samples();
        (0..n)
            .map(|i| {
                let t = (frame * n + i) as f64 / f64::from(rate.hz());
                (8000.0 * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16
            })
            .collect()
    }

    #[test]
    fn a_tone_survives_encode_and_decode_at_both_rates() {
        for rate in [PcmRate::Narrow, PcmRate::Wide] {
            let mut enc = OpusEncoder::new(rate).unwrap();
            let mut dec = OpusDecoder::new(rate).unwrap();
            let mut decoded = Vec::new();
            let mut packet = [0u8; MAX_PACKET_BYTES];
            let mut pcm = [0i16; MAX_DECODED_SAMPLES];
            for f in 0..50 {
                let n = enc.encode(&tone(440.0, rate, f), &mut packet).unwrap();
                assert_eq!(n, ENCODED_FRAME_BYTES, "constant bitrate: every packet the same size");
                let got = dec.decode(&packet[..n], &mut pcm).unwrap();
                assert_eq!(got, rate.frame_samples());
                decoded.extend_from_slice(&pcm[..got]);
            }
            // Skip the codec's start-up; the tone dominates a neighbouring frequency by far.
            let tail = &decoded[decoded.len() / 2..];
            let at = goertzel(tail, rate.hz(), 440.0);
            let off = goertzel(tail, rate.hz(), 1200.0);
            assert!(at > 1000.0, "{rate:?}: 440 Hz at {at}");
            assert!(at > 20.0 * off, "{rate:?}: 440 Hz {at} vs 1200 Hz {off}");
        }
    }

    #[test]
    fn a_wrong_frame_size_and_a_corrupt_packet_are_errors() {
        let mut enc = OpusEncoder::new(PcmRate::Narrow).unwrap();
        let mut out = [0u8; MAX_PACKET_BYTES];
        assert!(matches!(enc.encode(&[0i16; 100], &mut out), Err(OpusError::FrameSize { expected: 160, got: 100 })));
        let mut dec = OpusDecoder::new(PcmRate::Narrow).unwrap();
        let mut pcm = [0i16; MAX_DECODED_SAMPLES];
        // TOC code 3 (arbitrary frame count) with a frame count byte of 0: invalid.
        assert!(dec.decode(&[0x03, 0x00], &mut pcm).is_err());
        // Concealment for a lost 20 ms packet gives 20 ms.
        assert_eq!(dec.conceal(160, &mut pcm).unwrap(), 160);
    }
}
