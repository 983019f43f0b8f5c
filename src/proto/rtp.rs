//! RTP (RFC 3550) headers: zero-copy parse, header writing, and receive statistics (loss, reordering, jitter).
//!
//! Owns the RTP fixed header on the wire and the per-source receive statistics that feed RTCP report blocks.
//! Parsing and header writing are delegated to `rtp-types` (zero-copy, fail-fast length checks, CSRC/extension/
//! padding handling; its builder keeps CSRCs in an inline `SmallVec`, so writing allocates nothing). The
//! statistics (RFC 3550 A.1 sequence validation, A.3 loss, A.8 jitter) are hand-written: the crate has none.
//! Nothing here allocates, reads the clock or panics on network input.

use std::time::{Duration, Instant};

use rtp_types::{RtpPacket, RtpPacketBuilder, RtpParseError, RtpWriteError};

/// Length of the fixed RTP header (no CSRCs, no extension).
pub const HEADER_LEN: usize = 12;

/// The RTP header fields the media path uses.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RtpHeader {
    pub marker: bool,
    pub payload_type: u8,
    pub seq: u16,
    pub timestamp: u32,
    pub ssrc: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtpError {
    #[error("RTP packet truncated: need {expected} bytes, have {actual}")]
    Truncated { expected: usize, actual: usize },
    #[error("unsupported RTP version {0}")]
    BadVersion(u8),
    #[error("invalid RTP padding length {0}")]
    BadPadding(u8),
    #[error("output buffer too small: need {0} bytes")]
    BufferTooSmall(usize),
    #[error("invalid payload type {0}")]
    BadPayloadType(u8),
    #[error("RTP packet rejected: {0}")]
    Other(&'static str),
}

impl RtpError {
    /// A short, stable name for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            RtpError::Truncated { .. } => "truncated",
            RtpError::BadVersion(_) => "bad_version",
            RtpError::BadPadding(_) => "bad_padding",
            RtpError::BufferTooSmall(_) => "buffer_too_small",
            RtpError::BadPayloadType(_) => "bad_payload_type",
            RtpError::Other(_) => "other",
        }
    }
}

impl From<RtpParseError> for RtpError {
    fn from(e: RtpParseError) -> Self {
        match e {
            RtpParseError::UnsupportedVersion(v) => RtpError::BadVersion(v),
            RtpParseError::Truncated { expected, actual } => RtpError::Truncated { expected, actual },
            RtpParseError::PaddingInvalid(p) => RtpError::BadPadding(p),
        }
    }
}

impl From<RtpWriteError> for RtpError {
    fn from(e: RtpWriteError) -> Self {
        match e {
            RtpWriteError::OutputTooSmall(n) => RtpError::BufferTooSmall(n),
            RtpWriteError::InvalidPayloadType(pt) => RtpError::BadPayloadType(pt),
            _ => RtpError::Other("rtp-types refused to write the packet"),
        }
    }
}

/// Parses an RTP packet without copying: returns the header and the payload slice (after CSRCs and the
/// header extension, before padding). The version must be 2.
pub fn parse(packet: &[u8]) -> Result<(RtpHeader, &[u8]), RtpError> {
    let p = RtpPacket::parse(packet)?;
    let header = RtpHeader {
        marker: p.marker_bit(),
        payload_type: p.payload_type(),
        seq: p.sequence_number(),
        timestamp: p.timestamp(),
        ssrc: p.ssrc(),
    };
    let start = p.payload_offset();
    let end = start + p.payload_len();
    let payload = packet.get(start..end).ok_or(RtpError::Other("payload bounds"))?;
    Ok((header, payload))
}

/// True when a datagram on an RTP port is RTCP (RFC 5761 §4: second byte 192..=223, i.e. RTCP packet types
/// 192..=223, which as RTP would be marker + payload types 64..=95).
pub fn is_rtcp(packet: &[u8]) -> bool {
    matches!(packet.get(1), Some(192..=223))
}

/// Writes the 12-byte fixed header (version 2, no padding, extension or CSRCs). Returns [`HEADER_LEN`].
pub fn write_header(buf: &mut [u8], h: &RtpHeader) -> Result<usize, RtpError> {
    write_packet(buf, h, &[])
}

/// Writes the fixed header followed by `payload`. Returns the packet length.
pub fn write_packet(buf: &mut [u8], h: &RtpHeader, payload: &[u8]) -> Result<usize, RtpError> {
    let n = RtpPacketBuilder::<&[u8], &[u8]>::new()
        .marker_bit(h.marker)
        .payload_type(h.payload_type)
        .sequence_number(h.seq)
        .timestamp(h.timestamp)
        .ssrc(h.ssrc)
        .payload(payload)
        .write_into(buf)?;
    Ok(n)
}

/// What [`ReceiveStats::on_packet`] made of a packet.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum PacketVerdict {
    /// In order (possibly after a gap): it advanced the highest sequence number. Also the first packet.
    New,
    /// Older than the highest sequence number seen and not seen before.
    Reordered,
    /// A sequence number already received.
    Duplicate,
    /// A new source: the SSRC changed, or the sequence jumped and the next packet confirmed the jump
    /// (RFC 3550 A.1). Statistics were reset and this packet is the first of the new source.
    SourceRestart,
    /// A large sequence jump not (yet) confirmed by a following packet: not counted (RFC 3550 A.1 `bad_seq`).
    /// The caller should drop the packet.
    Invalid,
}

/// One RTCP reception report block (RFC 3550 §6.4.1), in host values.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct ReportBlock {
    pub ssrc: u32,
    /// Fraction lost since the previous report, 8-bit fixed point (256 = all).
    pub fraction_lost: u8,
    /// Cumulative packets lost, clamped to the signed 24-bit range on the wire.
    pub cumulative_lost: i32,
    pub extended_highest_seq: u32,
    /// Interarrival jitter in RTP timestamp units.
    pub jitter: u32,
    /// Middle 32 bits of the NTP timestamp of the last SR received from this source (0 if none).
    pub last_sr: u32,
    /// Delay since that SR in units of 1/65536 s (0 if none).
    pub delay_since_last_sr: u32,
}

const RTP_SEQ_MOD: u32 = 1 << 16;
const MAX_DROPOUT: u16 = 3000;
const MAX_MISORDER: u16 = 100;
/// Window of recent sequence numbers remembered for duplicate detection (covers `MAX_MISORDER`).
const WINDOW: u16 = 128;

/// RFC 3550 receive statistics for one source: A.1 sequence validation and extended sequence numbers,
/// A.3 expected/lost/fraction, A.8 interarrival jitter. Fixed size, no allocation.
///
/// Unlike A.1 there is no probation period: a unicast call has exactly one expected peer, so the first
/// packet is accepted at once. Duplicates are told apart from reordered packets with a 128-packet bitmap.
/// As in RFC 3550, duplicates count as received, so [`lost`](Self::lost) may go negative.
#[derive(Clone, Debug)]
pub struct ReceiveStats {
    clock_rate: u32,
    ssrc: Option<u32>,
    base_seq: u16,
    max_seq: u16,
    cycles: u32,
    bad_seq: u32,
    /// Bit i set: sequence number `max_seq - i` was received.
    seen: u128,
    received: u64,
    received_prior: u64,
    expected_prior: u64,
    reordered: u64,
    duplicates: u64,
    /// Relative transit time of the previous timed packet, if any.
    transit: Option<u32>,
    /// Jitter scaled by 16 (RFC 3550 A.8 integer form).
    jitter_q4: u32,
    /// LSR and when that SR arrived.
    last_sr: Option<(u32, Instant)>,
}

impl ReceiveStats {
    pub fn new(clock_rate: u32) -> Self {
        ReceiveStats {
            clock_rate,
            ssrc: None,
            base_seq: 0,
            max_seq: 0,
            cycles: 0,
            bad_seq: RTP_SEQ_MOD + 1,
            seen: 0,
            received: 0,
            received_prior: 0,
            expected_prior: 0,
            reordered: 0,
            duplicates: 0,
            transit: None,
            jitter_q4: 0,
            last_sr: None,
        }
    }

    /// The clock rate given at construction.
    pub fn clock_rate(&self) -> u32 {
        self.clock_rate
    }

    /// Converts a time offset (e.g. `arrival - call_start`) into RTP timestamp units, wrapping at 2^32, for
    /// use as `arrival_ts`.
    pub fn to_rtp_units(&self, offset: Duration) -> u32 {
        let units = offset.as_nanos() * u128::from(self.clock_rate) / 1_000_000_000;
        units as u32
    }

    fn init_seq(&mut self, seq: u16) {
        self.base_seq = seq;
        self.max_seq = seq;
        self.bad_seq = RTP_SEQ_MOD + 1;
        self.cycles = 0;
        self.seen = 1;
        self.received = 0;
        self.received_prior = 0;
        self.expected_prior = 0;
        self.reordered = 0;
        self.duplicates = 0;
        self.transit = None;
        self.jitter_q4 = 0;
    }

    /// Accounts for one packet. `arrival_ts` is the arrival time in RTP timestamp units (the caller converts
    /// its `Instant`, e.g. with [`to_rtp_units`](Self::to_rtp_units)).
    pub fn on_packet(&mut self, seq: u16, rtp_ts: u32, arrival_ts: u32, ssrc: u32) -> PacketVerdict {
        let verdict = self.on_packet_untimed(seq, ssrc);
        if matches!(verdict, PacketVerdict::New | PacketVerdict::Reordered | PacketVerdict::SourceRestart) {
            self.update_jitter(rtp_ts, arrival_ts);
        }
        verdict
    }

    /// Accounts for a packet's sequence number without touching the jitter estimate: for packets whose RTP
    /// timestamp is not a sampling instant, e.g. RFC 4733 events, which repeat one timestamp for a whole
    /// key press.
    pub fn on_packet_untimed(&mut self, seq: u16, ssrc: u32) -> PacketVerdict {
        match self.ssrc {
            None => {
                self.ssrc = Some(ssrc);
                self.last_sr = None;
                self.init_seq(seq);
                self.received = 1;
                return PacketVerdict::New;
            }
            Some(s) if s != ssrc => {
                self.ssrc = Some(ssrc);
                self.last_sr = None;
                self.init_seq(seq);
                self.received = 1;
                return PacketVerdict::SourceRestart;
            }
            Some(_) => {}
        }

        let udelta = seq.wrapping_sub(self.max_seq);
        if udelta == 0 {
            self.received += 1;
            self.duplicates += 1;
            return PacketVerdict::Duplicate;
        }
        if udelta < MAX_DROPOUT {
            // In order, possibly with a gap.
            if seq < self.max_seq {
                self.cycles = self.cycles.wrapping_add(RTP_SEQ_MOD);
            }
            self.max_seq = seq;
            self.seen = if u32::from(udelta) >= u128::BITS { 1 } else { (self.seen << udelta) | 1 };
            self.received += 1;
            return PacketVerdict::New;
        }
        if u32::from(udelta) <= RTP_SEQ_MOD - u32::from(MAX_MISORDER) {
            // A very large jump: believe it only when the next packet follows it.
            if u32::from(seq) == self.bad_seq {
                self.init_seq(seq);
                self.received = 1;
                return PacketVerdict::SourceRestart;
            }
            self.bad_seq = (u32::from(seq) + 1) & (RTP_SEQ_MOD - 1);
            return PacketVerdict::Invalid;
        }
        // Behind the highest sequence number: reordered or duplicate.
        let behind = self.max_seq.wrapping_sub(seq);
        self.received += 1;
        if behind < WINDOW {
            let bit = 1u128 << behind;
            if self.seen & bit != 0 {
                self.duplicates += 1;
                return PacketVerdict::Duplicate;
            }
            self.seen |= bit;
        }
        self.reordered += 1;
        PacketVerdict::Reordered
    }

    fn update_jitter(&mut self, rtp_ts: u32, arrival_ts: u32) {
        let transit = arrival_ts.wrapping_sub(rtp_ts);
        if let Some(prev) = self.transit {
            let d = (transit.wrapping_sub(prev) as i32).unsigned_abs();
            // J += (|D| - J) / 16, in Q4.
            let j = i64::from(self.jitter_q4) + i64::from(d) - ((i64::from(self.jitter_q4) + 8) >> 4);
            self.jitter_q4 = j.clamp(0, i64::from(u32::MAX)) as u32;
        }
        self.transit = Some(transit);
    }

    /// Records an RTCP SR from this source (its NTP timestamp and when it arrived), for LSR/DLSR.
    pub fn on_sender_report(&mut self, ntp_timestamp: u64, received_at: Instant) {
        self.last_sr = Some((lsr_from_ntp(ntp_timestamp), received_at));
    }

    /// Packets received, duplicates included (RFC 3550 A.3).
    pub fn received(&self) -> u64 {
        self.received
    }

    /// Packets expected: extended highest sequence number - base + 1 (0 before the first packet).
    pub fn expected(&self) -> u64 {
        if self.ssrc.is_none() {
            return 0;
        }
        let ext_max = u64::from(self.cycles) + u64::from(self.max_seq);
        ext_max + 1 - u64::from(self.base_seq)
    }

    /// Cumulative packets lost; negative when duplicates outnumber losses.
    pub fn lost(&self) -> i64 {
        self.expected() as i64 - self.received as i64
    }

    pub fn reordered(&self) -> u64 {
        self.reordered
    }

    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Interarrival jitter in RTP timestamp units.
    pub fn jitter(&self) -> u32 {
        self.jitter_q4 >> 4
    }

    /// Highest sequence number received, extended with the count of wraps in the high 16 bits.
    pub fn extended_highest_seq(&self) -> u32 {
        self.cycles.wrapping_add(u32::from(self.max_seq))
    }

    pub fn ssrc(&self) -> Option<u32> {
        self.ssrc
    }

    /// The report block for an RTCP report sent now: fraction lost since the previous call, cumulative
    /// lost clamped to 24 bits, and LSR with a zero DLSR (see [`take_report_block_at`](Self::take_report_block_at)).
    pub fn take_report_block(&mut self) -> ReportBlock {
        let expected = self.expected();
        let expected_interval = expected.saturating_sub(self.expected_prior);
        self.expected_prior = expected;
        let received_interval = self.received.saturating_sub(self.received_prior);
        self.received_prior = self.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        let fraction_lost = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval as i64).min(255) as u8
        };
        ReportBlock {
            ssrc: self.ssrc.unwrap_or(0),
            fraction_lost,
            cumulative_lost: self.lost().clamp(-0x80_0000, 0x7F_FFFF) as i32,
            extended_highest_seq: self.extended_highest_seq(),
            jitter: self.jitter(),
            last_sr: self.last_sr.map_or(0, |(lsr, _)| lsr),
            delay_since_last_sr: 0,
        }
    }

    /// As [`take_report_block`](Self::take_report_block), with DLSR computed for a report sent at `now`.
    pub fn take_report_block_at(&mut self, now: Instant) -> ReportBlock {
        let mut block = self.take_report_block();
        if let Some((_, at)) = self.last_sr {
            block.delay_since_last_sr = duration_to_q16(now.saturating_duration_since(at));
        }
        block
    }
}

/// The middle 32 bits of a 64-bit NTP timestamp: the LSR field of a report block (RFC 3550 §6.4.1).
pub fn lsr_from_ntp(ntp: u64) -> u32 {
    (ntp >> 16) as u32
}

/// A duration in units of 1/65536 s (the DLSR unit), saturating.
pub fn duration_to_q16(d: Duration) -> u32 {
    let q = (d.as_nanos() << 16) / 1_000_000_000;
    q.min(u128::from(u32::MAX)) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-assembled packet: V=2, given flags, PT 0, seq 0x1234, ts 0xDEADBEEF, SSRC 0x11223344.
    fn fixed(first: u8, second: u8) -> Vec<u8> {
        vec![first, second, 0x12, 0x34, 0xDE, 0xAD, 0xBE, 0xEF, 0x11, 0x22, 0x33, 0x44]
    }

    #[test]
    fn parses_the_fixed_header() {
        let mut p = fixed(0x80, 0x80 | 8);
        p.extend_from_slice(&[0xD5; 160]);
        let (h, payload) = parse(&p).unwrap();
        assert_eq!(
            h,
            RtpHeader { marker: true, payload_type: 8, seq: 0x1234, timestamp: 0xDEAD_BEEF, ssrc: 0x1122_3344 }
        );
        assert_eq!(payload.len(), 160);
        assert!(payload.iter().all(|b| *b == 0xD5));
    }

    #[test]
    fn skips_csrcs_extension_and_padding() {
        // CC=2, X=1, P=1.
        let mut p = fixed(0x80 | 0x20 | 0x10 | 2, 0);
        p.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 2]); // CSRCs
        p.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x10, 0xAA, 0, 0]); // one-word extension
        p.extend_from_slice(b"abcd"); // payload
        p.extend_from_slice(&[0, 0, 3]); // 3 bytes of padding
        let (h, payload) = parse(&p).unwrap();
        assert_eq!(h.seq, 0x1234);
        assert_eq!(payload, b"abcd");
    }

    #[test]
    fn rejects_bad_version_truncation_and_padding() {
        let mut p = fixed(0x40, 0);
        p.push(0);
        assert_eq!(parse(&p).unwrap_err(), RtpError::BadVersion(1));
        assert_eq!(parse(&p).unwrap_err().label(), "bad_version");
        assert!(matches!(parse(&[0x80, 0, 0]), Err(RtpError::Truncated { .. })));
        assert!(matches!(parse(&[]), Err(RtpError::Truncated { .. })));
        // Two CSRCs announced, none present.
        assert!(matches!(parse(&fixed(0x82, 0)), Err(RtpError::Truncated { .. })));
        // Extension announced, header missing; then extension length beyond the packet.
        assert!(matches!(parse(&fixed(0x90, 0)), Err(RtpError::Truncated { .. })));
        let mut p = fixed(0x90, 0);
        p.extend_from_slice(&[0xBE, 0xDE, 0xFF, 0xFF]);
        assert!(matches!(parse(&p), Err(RtpError::Truncated { .. })));
        // Padding of zero is invalid; padding longer than the payload is truncation.
        let mut p = fixed(0xA0, 0);
        p.push(0);
        assert_eq!(parse(&p).unwrap_err(), RtpError::BadPadding(0));
        let mut p = fixed(0xA0, 0);
        p.extend_from_slice(&[1, 2, 200]);
        assert!(matches!(parse(&p), Err(RtpError::Truncated { .. })));
        // Padding exactly covering the payload area leaves an empty payload.
        let mut p = fixed(0xA0, 0);
        p.extend_from_slice(&[0, 0, 3]);
        assert_eq!(parse(&p).unwrap().1, b"");
    }

    #[test]
    fn writes_a_header_that_parses_back() {
        let h = RtpHeader { marker: true, payload_type: 101, seq: 65535, timestamp: 4_294_967_295, ssrc: 7 };
        let mut buf = [0u8; 12];
        assert_eq!(write_header(&mut buf, &h).unwrap(), HEADER_LEN);
        assert_eq!(buf[0], 0x80);
        assert_eq!(buf[1], 0x80 | 101);
        assert_eq!(parse(&buf).unwrap(), (h, &[][..]));
        let mut small = [0u8; 11];
        assert_eq!(write_header(&mut small, &h).unwrap_err().label(), "buffer_too_small");
        let bad = RtpHeader { payload_type: 128, ..h };
        assert_eq!(write_header(&mut buf, &bad).unwrap_err(), RtpError::BadPayloadType(128));
        let mut pkt = [0u8; 172];
        assert_eq!(write_packet(&mut pkt, &h, &[0xFF; 160]).unwrap(), 172);
        assert_eq!(parse(&pkt).unwrap().1, &[0xFF; 160][..]);
    }

    #[test]
    fn recognises_muxed_rtcp() {
        assert!(is_rtcp(&[0x80, 200, 0, 6]));
        assert!(is_rtcp(&[0x81, 201, 0, 1]));
        assert!(!is_rtcp(&[0x80, 0, 0, 1]));
        assert!(!is_rtcp(&[0x80, 0x80 | 101]));
        assert!(!is_rtcp(&[0x80]));
    }

    fn feed(stats: &mut ReceiveStats, seqs: &[u16]) -> Vec<PacketVerdict> {
        seqs.iter().map(|&s| stats.on_packet(s, u32::from(s) * 160, u32::from(s) * 160, 42)).collect()
    }

    #[test]
    fn counts_in_order_packets_across_the_sequence_wrap() {
        let mut s = ReceiveStats::new(8000);
        let seqs: Vec<u16> = (0..20u16).map(|i| 65530u16.wrapping_add(i)).collect();
        assert!(feed(&mut s, &seqs).iter().all(|v| *v == PacketVerdict::New));
        assert_eq!(s.received(), 20);
        assert_eq!(s.expected(), 20);
        assert_eq!(s.lost(), 0);
        assert_eq!(s.extended_highest_seq(), 65536 + 13);
        assert_eq!(s.ssrc(), Some(42));
        assert_eq!(s.jitter(), 0);
    }

    #[test]
    fn loss_and_fraction_lost() {
        let mut s = ReceiveStats::new(8000);
        // 10 packets, 2 lost (3 and 7).
        feed(&mut s, &[0, 1, 2, 4, 5, 6, 8, 9]);
        assert_eq!(s.expected(), 10);
        assert_eq!(s.lost(), 2);
        let b = s.take_report_block();
        assert_eq!(b.ssrc, 42);
        assert_eq!(b.fraction_lost, (2 * 256 / 10) as u8);
        assert_eq!(b.cumulative_lost, 2);
        assert_eq!(b.extended_highest_seq, 9);
        // Next interval: 10 packets, none lost.
        feed(&mut s, &(10..20).collect::<Vec<_>>());
        let b = s.take_report_block();
        assert_eq!(b.fraction_lost, 0);
        assert_eq!(b.cumulative_lost, 2);
        // Next interval: all 4 lost except the last one.
        feed(&mut s, &[24]);
        assert_eq!(s.take_report_block().fraction_lost, (4 * 256 / 5) as u8);
    }

    #[test]
    fn reordering_and_duplicates() {
        let mut s = ReceiveStats::new(8000);
        let v = feed(&mut s, &[0, 1, 3, 2, 3, 2, 4, 4]);
        use PacketVerdict::*;
        assert_eq!(v, vec![New, New, New, Reordered, Duplicate, Duplicate, New, Duplicate]);
        assert_eq!(s.reordered(), 1);
        assert_eq!(s.duplicates(), 3);
        assert_eq!(s.received(), 8);
        assert_eq!(s.expected(), 5);
        assert_eq!(s.lost(), -3, "duplicates count as received (RFC 3550 A.3)");
        assert_eq!(s.take_report_block().cumulative_lost, -3);
        // A reordered packet from before the sequence wrap.
        let mut s = ReceiveStats::new(8000);
        assert_eq!(feed(&mut s, &[65534, 0, 65535]), vec![New, New, Reordered]);
        assert_eq!(s.extended_highest_seq(), 65536);
        assert_eq!(s.lost(), 0);
    }

    #[test]
    fn large_jump_needs_confirmation() {
        let mut s = ReceiveStats::new(8000);
        use PacketVerdict::*;
        assert_eq!(
            feed(&mut s, &[100, 101, 20000, 102, 30000, 30001, 30002]),
            vec![New, New, Invalid, New, Invalid, SourceRestart, New]
        );
        assert_eq!(s.received(), 2);
        assert_eq!(s.expected(), 2);
        assert_eq!(s.extended_highest_seq(), 30002);
    }

    #[test]
    fn ssrc_change_resets() {
        let mut s = ReceiveStats::new(8000);
        feed(&mut s, &[0, 1, 5]);
        assert_eq!(s.lost(), 3);
        assert_eq!(s.on_packet(9000, 0, 0, 99), PacketVerdict::SourceRestart);
        assert_eq!(s.ssrc(), Some(99));
        assert_eq!(s.received(), 1);
        assert_eq!(s.lost(), 0);
        assert_eq!(s.on_packet(9001, 160, 160, 99), PacketVerdict::New);
        assert_eq!(s.take_report_block().ssrc, 99);
    }

    #[test]
    fn jitter_on_a_known_arrival_pattern() {
        // 20 ms packets (160 units); arrivals alternate 0 and +80 units late: |D| = 80 every packet after the first.
        let mut s = ReceiveStats::new(8000);
        let mut expected_q4: i64 = 0;
        for i in 0..200u32 {
            let ts = 1000 + i * 160;
            let arrival = 5000 + i * 160 + if i % 2 == 1 { 80 } else { 0 };
            s.on_packet(i as u16, ts, arrival, 1);
            if i > 0 {
                expected_q4 += 80 - ((expected_q4 + 8) >> 4);
            }
        }
        assert_eq!(s.jitter(), (expected_q4 >> 4) as u32);
        // Converges towards |D| = 80.
        assert!((78..=80).contains(&s.jitter()), "jitter {}", s.jitter());
        // The first step of the recurrence: J = 80/16 = 5.
        let mut s = ReceiveStats::new(8000);
        s.on_packet(0, 0, 0, 1);
        s.on_packet(1, 160, 240, 1);
        assert_eq!(s.jitter(), 5);
        // Untimed packets (DTMF) leave jitter alone.
        s.on_packet_untimed(2, 1);
        s.on_packet_untimed(3, 1);
        assert_eq!(s.jitter(), 5);
        assert_eq!(s.received(), 4);
    }

    #[test]
    fn lsr_and_dlsr() {
        let ntp: u64 = 0xAABB_CCDD_EEFF_0011;
        assert_eq!(lsr_from_ntp(ntp), 0xCCDD_EEFF);
        let mut s = ReceiveStats::new(8000);
        s.on_packet(0, 0, 0, 5);
        let t0 = Instant::now();
        s.on_sender_report(ntp, t0);
        let b = s.take_report_block_at(t0 + Duration::from_millis(1500));
        assert_eq!(b.last_sr, 0xCCDD_EEFF);
        assert_eq!(b.delay_since_last_sr, 98304); // 1.5 * 65536
        assert_eq!(s.take_report_block().delay_since_last_sr, 0);
        assert_eq!(duration_to_q16(Duration::from_secs(1)), 65536);
        assert_eq!(s.to_rtp_units(Duration::from_millis(20)), 160);
    }

    #[test]
    fn cumulative_lost_clamps_to_24_bits() {
        let mut s = ReceiveStats::new(8000);
        s.on_packet(0, 0, 0, 1);
        // Many gaps just under the dropout limit.
        let mut seq: u16 = 0;
        for _ in 0..4000 {
            seq = seq.wrapping_add(2999);
            s.on_packet(seq, 0, 0, 1);
        }
        assert!(s.lost() > 0x7F_FFFF);
        assert_eq!(s.take_report_block().cumulative_lost, 0x7F_FFFF);
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = parse(&bytes);
            let _ = is_rtcp(&bytes);
        }

        #[test]
        fn write_then_parse_round_trips(
            marker: bool, pt in 0u8..128, seq: u16, ts: u32, ssrc: u32,
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..200),
        ) {
            let h = RtpHeader { marker, payload_type: pt, seq, timestamp: ts, ssrc };
            let mut buf = [0u8; 212];
            let n = write_packet(&mut buf, &h, &payload).unwrap();
            proptest::prop_assert_eq!(parse(&buf[..n]).unwrap(), (h, &payload[..]));
        }

        #[test]
        fn stats_never_panic(ops in proptest::collection::vec((proptest::num::u16::ANY, proptest::num::u32::ANY, 0u32..3), 0..300)) {
            let mut s = ReceiveStats::new(8000);
            for (seq, ts, ssrc) in ops {
                s.on_packet(seq, ts, ts.wrapping_add(seq.into()), ssrc);
                let b = s.take_report_block();
                proptest::prop_assert!((-0x80_0000..=0x7F_FFFF).contains(&b.cumulative_lost));
            }
        }
    }
}
