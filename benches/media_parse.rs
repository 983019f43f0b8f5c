//! Hot-path costs of the media protocol units: RTP and telephone-event parsing, SDP offer parsing,
//! A-law to µ-law conversion of one frame and re-framing a 30 ms packet.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use fairvox::call::reframe::Reframer;
use fairvox::codec::g711;
use fairvox::proto::{dtmf, rtp, sdp};

fn benches(c: &mut Criterion) {
    let header = rtp::RtpHeader { marker: false, payload_type: 0, seq: 4242, timestamp: 123_456, ssrc: 0xDEAD_BEEF };
    let mut packet = [0u8; rtp::HEADER_LEN + 160];
    let n = rtp::write_packet(&mut packet, &header, &[0xFF; 160]).expect("packet fits");
    c.bench_function("rtp_parse_172", |b| b.iter(|| rtp::parse(black_box(&packet[..n]))));

    let event = [5u8, 0x8A, 0x03, 0x20];
    c.bench_function("dtmf_parse_event", |b| b.iter(|| dtmf::parse_event(black_box(&event))));

    let offer = include_bytes!("../tests/fixtures/sdp/carrier_pcmu_pcma_te.sdp");
    c.bench_function("sdp_parse_offer_carrier", |b| b.iter(|| sdp::parse_offer(black_box(offer))));

    let alaw = [0xD5u8; 160];
    let mut ulaw = [0u8; 160];
    c.bench_function("alaw_to_ulaw_160", |b| {
        b.iter(|| {
            g711::alaw_to_ulaw_slice(black_box(&alaw), &mut ulaw);
            black_box(&ulaw);
        })
    });

    let samples = [0x7Fu8; 240];
    let mut reframer = Reframer::new(1600);
    let mut ts = 0u32;
    c.bench_function("reframe_push_30ms", |b| {
        b.iter(|| {
            reframer.push(ts, black_box(&samples), |t, f| {
                black_box((t, f));
            });
            ts = ts.wrapping_add(240);
        })
    });
}

criterion_group!(media, benches);
criterion_main!(media);
