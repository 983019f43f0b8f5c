//! Per-frame cost of a WebRTC call's audio path, both ways (issue 6): the browser's 20 ms Opus packet decoded
//! straight to 8 kHz by libopus and turned into µ-law for the agent; the agent's 20 ms µ-law frame turned into PCM
//! and encoded to Opus for the browser. Both at 16 kHz too (the wideband rate). The packets are real: a 440 Hz
//! tone encoded first (decode cost depends on the content). Also the 8 <-> 16 kHz conversion an `l16_16k` app's
//! SIP calls pay per frame (`codec::resample`: upsampling the caller's frame, downsampling the agent's).
//!
//! `cargo bench --bench webrtc_codec`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fairvox::codec::g711;
use fairvox::codec::opus::{MAX_DECODED_SAMPLES, MAX_PACKET_BYTES, OpusDecoder, OpusEncoder, PcmRate};
use fairvox::codec::resample::{Downsampler, Upsampler, WIDE_FRAME_SAMPLES};

fn tone(rate: PcmRate, frames: usize) -> Vec<Vec<i16>> {
    let n = rate.frame_samples();
    (0..frames)
        .map(|f| {
            (0..n)
                .map(|i| {
                    let t = (f * n + i) as f64 / f64::from(rate.hz());
                    (9000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
                })
                .collect()
        })
        .collect()
}

fn benches(c: &mut Criterion) {
    for (rate, name) in [(PcmRate::Narrow, "8k"), (PcmRate::Wide, "16k")] {
        // Real packets of a tone, as the peer would send them (48 kHz encoder, as browsers use).
        let mut enc48 = opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).expect("encoder");
        let packets: Vec<Vec<u8>> = tone(PcmRate::Narrow, 50)
            .iter()
            .map(|f| {
                let pcm48: Vec<i16> = f.iter().flat_map(|&s| std::iter::repeat_n(s, 6)).collect();
                let mut out = [0u8; MAX_PACKET_BYTES];
                let n = enc48.encode(&pcm48, &mut out).expect("encode");
                out[..n].to_vec()
            })
            .collect();
        let mut decoder = OpusDecoder::new(rate).expect("decoder");
        let mut pcm = [0i16; MAX_DECODED_SAMPLES];
        let mut ulaw = [0u8; MAX_DECODED_SAMPLES];
        let mut i = 0;
        c.bench_function(&format!("webrtc_inbound_opus_decode_to_ulaw_{name}_20ms"), |b| {
            b.iter(|| {
                let n = decoder.decode(black_box(&packets[i % packets.len()]), &mut pcm).expect("decode");
                g711::linear_to_ulaw_slice(&pcm[..n], &mut ulaw[..n]);
                i += 1;
                black_box(&ulaw[..n]);
            })
        });

        let frames: Vec<Vec<u8>> =
            tone(rate, 50).iter().map(|f| f.iter().map(|&s| g711::linear_to_ulaw(s)).collect()).collect();
        let mut encoder = OpusEncoder::new(rate).expect("encoder");
        let mut linear = vec![0i16; rate.frame_samples()];
        let mut packet = [0u8; MAX_PACKET_BYTES];
        let mut j = 0;
        c.bench_function(&format!("webrtc_outbound_ulaw_to_opus_encode_{name}_20ms"), |b| {
            b.iter(|| {
                g711::ulaw_to_linear_slice(black_box(&frames[j % frames.len()]), &mut linear);
                let n = encoder.encode(&linear, &mut packet).expect("encode");
                j += 1;
                black_box(&packet[..n]);
            })
        });
    }
}

fn resample(c: &mut Criterion) {
    let narrow: Vec<[i16; 160]> =
        tone(PcmRate::Narrow, 50).into_iter().map(|f| f.try_into().expect("160 samples")).collect();
    let wide: Vec<[i16; WIDE_FRAME_SAMPLES]> =
        tone(PcmRate::Wide, 50).into_iter().map(|f| f.try_into().expect("320 samples")).collect();
    let mut up = Upsampler::new();
    let mut out_wide = [0i16; WIDE_FRAME_SAMPLES];
    let mut i = 0;
    c.bench_function("l16_sip_inbound_upsample_8k_to_16k_20ms", |b| {
        b.iter(|| {
            up.process(black_box(&narrow[i % narrow.len()]), &mut out_wide);
            i += 1;
            black_box(&out_wide);
        })
    });
    let mut down = Downsampler::new();
    let mut out_narrow = [0i16; 160];
    let mut j = 0;
    c.bench_function("l16_sip_outbound_downsample_16k_to_8k_20ms", |b| {
        b.iter(|| {
            down.process(black_box(&wide[j % wide.len()]), &mut out_narrow);
            j += 1;
            black_box(&out_narrow);
        })
    });
}

criterion_group!(webrtc_codec, benches, resample);
criterion_main!(webrtc_codec);
