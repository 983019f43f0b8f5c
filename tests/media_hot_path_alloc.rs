//! The media hot path allocates nothing per packet: RTP parse/write, receive statistics, G.711 conversion,
//! telephone-event detection, re-framing and RTCP report building/parsing are run under a counting allocator.

use fairvox::call::reframe::Reframer;
use fairvox::codec::g711;
use fairvox::proto::{dtmf, rtcp, rtp};

#[path = "support/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::allocations;

#[test]
fn per_packet_work_does_not_allocate() {
    let mut stats = rtp::ReceiveStats::new(8000);
    let mut reframer = Reframer::new(1600);
    let mut detector = dtmf::DtmfDetector::new();
    let mut packet = [0u8; 512];
    let mut ulaw = [0u8; 240];
    let mut rtcp_buf = [0u8; 256];
    let mut frames = 0u64;
    let mut digits = 0u64;

    let before = allocations();
    for i in 0..2_000u32 {
        // Outbound: write a 30 ms A-law packet.
        let header = rtp::RtpHeader {
            marker: i == 0,
            payload_type: 8,
            seq: (i % 65536) as u16,
            timestamp: i.wrapping_mul(240),
            ssrc: 0x1234_5678,
        };
        let len = rtp::write_packet(&mut packet, &header, &[0xD5; 240]).unwrap();
        // Inbound: parse, account, convert, re-frame.
        let (h, payload) = rtp::parse(&packet[..len]).unwrap();
        stats.on_packet(h.seq, h.timestamp, h.timestamp.wrapping_add(i % 7), h.ssrc);
        g711::alaw_to_ulaw_slice(payload, &mut ulaw);
        let pcm = g711::ulaw_to_linear(ulaw[0]);
        ulaw[1] = g711::linear_to_ulaw(pcm);
        ulaw[2] = g711::ulaw_to_alaw(g711::linear_to_alaw(pcm));
        reframer.push(h.timestamp, &ulaw[..payload.len()], |_, _| frames += 1);
        // Telephone events every 10 packets.
        let ev = dtmf::parse_event(&[(i / 10 % 12) as u8, if i % 10 == 9 { 0x80 } else { 0 }, 0, 160]).unwrap();
        stats.on_packet_untimed(h.seq, h.ssrc);
        if detector.on_packet(i / 10 * 1600, &ev).is_some() {
            digits += 1;
        }
        // RTCP every 250 packets.
        if i % 250 == 0 {
            let block = stats.take_report_block();
            let si = rtcp::SenderInfo {
                ntp_timestamp: u64::from(i) << 32,
                rtp_timestamp: h.timestamp,
                packet_count: i,
                octet_count: i * 240,
            };
            let n = rtcp::write_report(&mut rtcp_buf, 0xABCD, Some(&si), Some(&block), "fairvox@198.51.100.7").unwrap();
            rtcp::parse_compound(&rtcp_buf[..n], |s| {
                if let rtcp::RtcpSummary::SenderReport { ntp_timestamp, .. } = s {
                    std::hint::black_box(rtcp::lsr_from_ntp(ntp_timestamp));
                }
            })
            .unwrap();
        }
    }
    let after = allocations();

    assert_eq!(after - before, 0, "the media hot path allocated");
    // The counter does count.
    let v: Vec<u8> = Vec::with_capacity(16);
    assert!(allocations() > after);
    drop(v);
    assert_eq!(frames, 2_000 * 240 / 160);
    assert_eq!(digits, 200);
    assert_eq!(stats.lost(), -2_000, "each packet was accounted twice (audio + untimed)");
}
