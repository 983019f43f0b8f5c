//! A call's inbound audio made into 20 ms [`Frame`]s in its app's provider-stream format, and handed to its agent.
//!
//! Owns the re-framing and the one conversion a format may need on the way: µ-law frames go as they are to a
//! `mulaw_8k` app; for an `l16_16k` app a G.711 call's µ-law frames are upsampled to 16 kHz, and a wideband WebRTC
//! session's 16 kHz audio is re-framed as it is (libopus decoded it at that rate). Allocation-free per frame.

use std::sync::atomic::Ordering;
use std::time::Instant;

use crate::call::reframe::{Reframer, WideReframer};
use crate::call::{CallId, FRAME_SAMPLES, Frame, FrameAudio};
use crate::codec::g711;
use crate::codec::resample::{Upsampler, WIDE_FRAME_SAMPLES};
use crate::metrics::{Direction as MetricDirection, FrameDropReason, TenantMetrics};
use crate::proto::media_streams::MediaFormat;
use crate::stream::provider::AgentSink;
use crate::tenant::TenantId;
use crate::transport::media::MediaCounters;

/// Longest forward gap filled with silence before the timeline resynchronises (ms).
const MAX_GAP_MS: u32 = 200;

/// Where finished frames go, and what counts them.
pub struct HandOff<'a> {
    pub tenant: TenantId,
    pub call: CallId,
    pub sink: &'a AgentSink,
    pub counters: &'a MediaCounters,
    pub metrics: &'a TenantMetrics,
}

impl HandOff<'_> {
    fn frame(&self, seq: &mut u64, ts: u32, payload: FrameAudio, received: Instant) {
        let frame = Frame { tenant: self.tenant, call: self.call, seq: *seq, ts, payload, t_ingress: received };
        *seq += 1;
        self.counters.frames_in.fetch_add(1, Ordering::Relaxed);
        if self.sink.media(frame).is_err() {
            self.counters.dropped_slow_consumer.fetch_add(1, Ordering::Relaxed);
            self.metrics.frame_dropped(FrameDropReason::SlowConsumer);
        } else {
            self.metrics.frame(MetricDirection::Inbound);
        }
    }
}

/// What happens to audio between the re-framer and the agent.
enum Widen {
    /// A `mulaw_8k` app: µ-law frames as they are.
    No,
    /// An `l16_16k` app, narrowband audio (G.711, or a narrowband session): each µ-law frame upsampled.
    Upsample(Box<Upsampler>),
    /// An `l16_16k` app, a wideband WebRTC session: its 16 kHz audio re-framed directly.
    Wide(Box<WideReframer>),
}

/// The framing state of one call's inbound audio.
pub struct Framing {
    /// The 8 kHz µ-law re-framer (unused by a wideband session).
    pub reframer: Reframer,
    widen: Widen,
    seq: u64,
}

impl Framing {
    /// `wide_source`: the call's decoded audio arrives at 16 kHz (a WebRTC session decoding for an `l16_16k` app).
    pub fn new(format: MediaFormat, wide_source: bool) -> Framing {
        let widen = match (format, wide_source) {
            (MediaFormat::Mulaw8k, _) => Widen::No,
            (MediaFormat::L16Wide, false) => Widen::Upsample(Box::default()),
            (MediaFormat::L16Wide, true) => Widen::Wide(Box::new(WideReframer::new(16 * MAX_GAP_MS))),
        };
        Framing { reframer: Reframer::new(8 * MAX_GAP_MS), widen, seq: 0 }
    }

    /// Forgets the timeline (the source restarted); counters are kept.
    pub fn reset(&mut self) {
        self.reframer.reset();
        if let Widen::Wide(r) = &mut self.widen {
            r.reset();
        }
    }

    /// Received µ-law audio, its first sample at `timestamp` (8 kHz units).
    pub fn push_ulaw(&mut self, timestamp: u32, ulaw: &[u8], received: Instant, to: &HandOff<'_>) {
        let Framing { reframer, widen, seq } = self;
        reframer.push(timestamp, ulaw, |ts, samples| match widen {
            Widen::Upsample(up) => {
                let mut narrow = [0i16; FRAME_SAMPLES];
                g711::ulaw_to_linear_slice(samples, &mut narrow);
                let mut wide = [0i16; WIDE_FRAME_SAMPLES];
                up.process(&narrow, &mut wide);
                to.frame(seq, ts, FrameAudio::l16(&wide), received);
            }
            Widen::No | Widen::Wide(_) => to.frame(seq, ts, FrameAudio::Mulaw(*samples), received),
        });
    }

    /// Decoded linear audio from a WebRTC session, its first sample at `timestamp` in units of its rate: 16 kHz
    /// when this framing was made with `wide_source`, else 8 kHz.
    pub fn push_linear(&mut self, timestamp: u32, pcm: &[i16], received: Instant, to: &HandOff<'_>) {
        if let Widen::Wide(wide) = &mut self.widen {
            let seq = &mut self.seq;
            wide.push(timestamp, pcm, |ts, samples| to.frame(seq, ts, FrameAudio::l16(samples), received));
            return;
        }
        // 120 ms at most per Opus packet; converted in pieces so nothing is cut.
        let mut ulaw = [0u8; 960];
        for (i, piece) in pcm.chunks(ulaw.len()).enumerate() {
            let out = &mut ulaw[..piece.len()];
            g711::linear_to_ulaw_slice(piece, out);
            let ts = timestamp.wrapping_add((i * 960) as u32);
            self.push_ulaw(ts, &ulaw[..piece.len()], received, to);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Metrics, MetricsConfig};
    use tokio::sync::mpsc;

    fn run(format: MediaFormat, wide_source: bool, feed: impl FnOnce(&mut Framing, &HandOff<'_>)) -> Vec<Frame> {
        let (tx, mut rx) = mpsc::channel(64);
        let sink = AgentSink::Channel(tx);
        let counters = MediaCounters::default();
        let metrics = Metrics::new(&MetricsConfig::default()).tenant(TenantId(0), "acme");
        let to = HandOff { tenant: TenantId(0), call: CallId(1), sink: &sink, counters: &counters, metrics: &metrics };
        let mut framing = Framing::new(format, wide_source);
        feed(&mut framing, &to);
        let mut frames = Vec::new();
        while let Ok(crate::stream::provider::ToAgent::Media(f)) = rx.try_recv() {
            frames.push(f);
        }
        frames
    }

    fn tone(hz: f64, rate: f64, samples: usize) -> Vec<i16> {
        (0..samples).map(|i| (8000.0 * (2.0 * std::f64::consts::PI * hz * i as f64 / rate).sin()) as i16).collect()
    }

    fn l16_samples(frames: &[Frame]) -> Vec<i16> {
        let mut out = Vec::new();
        for f in frames {
            let FrameAudio::L16(b) = &f.payload else { panic!("not L16: {:?}", f.payload) };
            out.extend(b.chunks_exact(2).map(|p| i16::from_le_bytes([p[0], p[1]])));
        }
        out
    }

    /// Energy of `hz` in `x` relative to its total energy (1.0: a pure tone).
    fn share(x: &[i16], hz: f64, rate: f64) -> f64 {
        let (mut re, mut im, mut total) = (0.0, 0.0, 0.0);
        for (i, s) in x.iter().enumerate() {
            let s = f64::from(*s);
            let p = 2.0 * std::f64::consts::PI * hz * i as f64 / rate;
            re += s * p.cos();
            im += s * p.sin();
            total += s * s;
        }
        2.0 * (re * re + im * im) / x.len() as f64 / total
    }

    #[test]
    fn a_mulaw_app_gets_the_received_mulaw_frames() {
        let frames = run(MediaFormat::Mulaw8k, false, |f, to| {
            f.push_ulaw(0, &[7u8; 320], Instant::now(), to);
        });
        assert_eq!(frames.len(), 2);
        assert_eq!(frames[1].payload, FrameAudio::Mulaw([7; FRAME_SAMPLES]));
        assert_eq!((frames[0].seq, frames[1].seq, frames[1].ts), (0, 1, 160));
    }

    #[test]
    fn an_l16_app_gets_g711_audio_upsampled_to_16_khz() {
        let pcm = tone(1000.0, 8000.0, 25 * FRAME_SAMPLES);
        let mut ulaw = vec![0u8; pcm.len()];
        g711::linear_to_ulaw_slice(&pcm, &mut ulaw);
        let frames = run(MediaFormat::L16Wide, false, |f, to| {
            for (i, packet) in ulaw.chunks(FRAME_SAMPLES).enumerate() {
                f.push_ulaw((i * FRAME_SAMPLES) as u32, packet, Instant::now(), to);
            }
        });
        assert_eq!(frames.len(), 25);
        let wide = l16_samples(&frames);
        assert_eq!(wide.len(), 25 * WIDE_FRAME_SAMPLES);
        let steady = &wide[2 * WIDE_FRAME_SAMPLES..];
        assert!(share(steady, 1000.0, 16_000.0) > 0.95, "1 kHz share {}", share(steady, 1000.0, 16_000.0));
        assert!(share(steady, 7000.0, 16_000.0) < 0.001, "image at 7 kHz");
    }

    #[test]
    fn an_l16_app_gets_a_wideband_session_audio_at_16_khz_with_its_high_band() {
        // 6 kHz cannot exist at 8 kHz: only a path that stays wideband delivers it.
        let pcm = tone(6000.0, 16_000.0, 10 * WIDE_FRAME_SAMPLES);
        let frames = run(MediaFormat::L16Wide, true, |f, to| {
            for (i, packet) in pcm.chunks(WIDE_FRAME_SAMPLES).enumerate() {
                f.push_linear((i * WIDE_FRAME_SAMPLES) as u32, packet, Instant::now(), to);
            }
        });
        assert_eq!(frames.len(), 10);
        assert_eq!(frames[3].ts, 3 * WIDE_FRAME_SAMPLES as u32);
        assert_eq!(l16_samples(&frames), pcm);
    }

    #[test]
    fn a_narrowband_session_long_packet_is_framed_whole() {
        // 120 ms of 8 kHz audio in one packet: six frames, none cut.
        let pcm = tone(440.0, 8000.0, 6 * FRAME_SAMPLES);
        let frames = run(MediaFormat::Mulaw8k, false, |f, to| f.push_linear(0, &pcm, Instant::now(), to));
        assert_eq!(frames.len(), 6);
    }
}
