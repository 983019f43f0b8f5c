//! Entry points shared by the cargo-fuzz targets in `fuzz/` and the corpus replay in `tests/fuzz_corpus.rs`:
//! each feeds arbitrary bytes to one parser (and what it drives next) and must never panic.

use crate::proto::{dtmf, media_streams, rtcp, rtp, sdp, sip};

/// A whole SIP datagram; a parsed request also goes through the UAS checks and, when malformed, the 400 builder.
pub fn sip_message(data: &[u8]) {
    match sip::parse_message(data, &sip::Limits::default()) {
        Ok(sip::Message::Request(req)) => {
            let _ = sip::check_request(&req);
            let _ = sip::OutgoingResponse::for_request(&req, 200, "OK").to_tag("fuzz").to_bytes();
        }
        Ok(sip::Message::Response(_)) => {}
        Err(e) => {
            let _ = sip::error_response(&e);
            let _ = e.reason_phrase();
        }
    }
}

/// A TCP byte stream: frame message after message, as the TCP driver does.
pub fn sip_stream(data: &[u8]) {
    let limits = sip::Limits::default();
    let mut rest = data;
    while !rest.is_empty() {
        match sip::frame_stream(rest, &limits) {
            Ok(sip::Framed::Message(n)) if n > 0 && n <= rest.len() => {
                let _ = sip::parse_message(&rest[..n], &limits);
                rest = &rest[n..];
            }
            Ok(sip::Framed::Skip(n)) if n > 0 && n <= rest.len() => rest = &rest[n..],
            _ => break,
        }
    }
}

/// An SDP offer, negotiated against both codec preferences and answered.
pub fn sdp_offer(data: &[u8]) {
    use crate::tenant::Codec;
    if let Ok(offer) = sdp::parse_offer(data) {
        for prefs in [&[Codec::Pcmu, Codec::Pcma][..], &[Codec::Pcma][..]] {
            if let Ok(n) = sdp::negotiate(&offer, prefs) {
                let _ = sdp::write_answer(&n, &offer, std::net::IpAddr::from([127, 0, 0, 1]), 20000, 1, 1);
            }
        }
    }
}

/// An RTP packet, through the receive statistics as the media driver uses them.
pub fn rtp_packet(data: &[u8]) {
    if let Ok((h, payload)) = rtp::parse(data) {
        let mut stats = rtp::ReceiveStats::new(8000);
        stats.on_packet(h.seq, h.timestamp, 0, h.ssrc);
        let _ = stats.take_report_block();
        let _ = payload.len();
    }
}

/// An RTCP compound packet.
pub fn rtcp_compound(data: &[u8]) {
    let _ = rtcp::parse_compound(data, |_| {});
}

/// RFC 4733 events fed to the detector as a packet stream (4-byte payloads with a 4-byte timestamp prefix).
pub fn dtmf_event(data: &[u8]) {
    let mut detector = dtmf::DtmfDetector::new();
    for chunk in data.chunks(8) {
        if chunk.len() < 8 {
            let _ = dtmf::parse_event(chunk);
            break;
        }
        let ts = u32::from_be_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        if let Ok(ev) = dtmf::parse_event(&chunk[4..]) {
            let _ = detector.on_packet(ts, &ev);
            let _ = dtmf::digit(ev.event);
        }
    }
}

/// A message from an agent (any bytes; non-UTF-8 is what the WebSocket layer would refuse).
pub fn media_stream_json(data: &[u8]) {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = media_streams::parse_agent_message(text);
    }
}
