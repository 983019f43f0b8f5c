//! Nanoseconds per message for the SIP facade: a typical carrier INVITE with SDP and an in-dialog BYE, parsed
//! from a datagram, and the 200 OK built for the INVITE.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use fairvox::proto::sip::{Limits, Message, OutgoingResponse, parse_message};

const INVITE: &[u8] = include_bytes!("../tests/fixtures/sip/carrier-invite.dat");
const BYE: &[u8] = include_bytes!("../tests/fixtures/sip/rfc3261-f15-bye.dat");

fn bench(c: &mut Criterion) {
    let limits = Limits::default();
    let mut g = c.benchmark_group("sip_parse");
    g.throughput(Throughput::Elements(1));
    g.bench_function("carrier_invite_with_sdp", |b| b.iter(|| parse_message(black_box(INVITE), &limits)));
    g.bench_function("bye", |b| b.iter(|| parse_message(black_box(BYE), &limits)));
    if let Ok(Message::Request(req)) = parse_message(INVITE, &limits) {
        g.bench_function("invite_200_ok_to_bytes", |b| {
            b.iter(|| {
                OutgoingResponse::for_request(black_box(&req), 200, "OK")
                    .to_tag("8ca3f0e1")
                    .header("Contact", "<sip:fairvox@203.0.113.10:5060>")
                    .to_bytes()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
