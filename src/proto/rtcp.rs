//! RTCP (RFC 3550): compound receiver/sender reports with SDES, and parsing of what the peer sends.
//!
//! Owns the RTCP wire format for one call leg: building our compound report (SR or RR, at most one report
//! block, then SDES CNAME) into a caller buffer, and walking a received compound packet into summaries.
//!
//! Parsing uses `rtcp-types`: `Compound::parse` validates every length field up front, and the typed
//! `SenderReport`/`ReceiverReport`/`Bye` parsers check each packet. We do not use its `Compound` iterator or
//! `Packet::parse`, which parse SDES into `Vec`s: SDES and the other types are validated with the
//! allocation-free `Unknown` parser and summarised as [`RtcpSummary::Other`].
//!
//! Writing is hand-written on top of `rtcp-types`' header writer and SDES item builder, because its SR/RR/SDES
//! builders collect report blocks and chunks in `Vec`s (an allocation per report) and the hot path allows
//! none. Tests check our output with the crate's parsers.

use std::time::Duration;

use rtcp_types::prelude::*;
use rtcp_types::utils::{parser as rparser, writer as rwriter};
use rtcp_types::{Bye, ReceiverReport, RtcpParseError, Sdes, SdesItem, SenderReport, Unknown};

use crate::proto::rtp::ReportBlock;

/// The sender-info section of an SR (RFC 3550 §6.4.1).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct SenderInfo {
    pub ntp_timestamp: u64,
    pub rtp_timestamp: u32,
    pub packet_count: u32,
    pub octet_count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RtcpError {
    #[error("output buffer too small: need {0} bytes")]
    BufferTooSmall(usize),
    #[error("CNAME of {0} bytes is longer than 255")]
    CnameTooLong(usize),
    #[error("RTCP packet truncated")]
    Truncated,
    #[error("RTCP length field disagrees with the packet size")]
    BadLength,
    #[error("unsupported RTCP version {0}")]
    BadVersion(u8),
    #[error("invalid RTCP padding")]
    BadPadding,
    #[error("malformed RTCP packet")]
    Malformed,
}

impl RtcpError {
    /// A short, stable name for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            RtcpError::BufferTooSmall(_) => "buffer_too_small",
            RtcpError::CnameTooLong(_) => "cname_too_long",
            RtcpError::Truncated => "truncated",
            RtcpError::BadLength => "bad_length",
            RtcpError::BadVersion(_) => "bad_version",
            RtcpError::BadPadding => "bad_padding",
            RtcpError::Malformed => "malformed",
        }
    }
}

impl From<RtcpParseError> for RtcpError {
    fn from(e: RtcpParseError) -> Self {
        match e {
            RtcpParseError::UnsupportedVersion(v) => RtcpError::BadVersion(v),
            RtcpParseError::Truncated { .. } => RtcpError::Truncated,
            RtcpParseError::TooLarge { .. } => RtcpError::BadLength,
            RtcpParseError::InvalidPadding => RtcpError::BadPadding,
            _ => RtcpError::Malformed,
        }
    }
}

const SR_LEN: usize = 28;
const RR_LEN: usize = 8;
const BLOCK_LEN: usize = 24;

/// Writes a compound RTCP packet (RFC 3550 §6.1) into `buf`: an SR when `sender_info` is given, else an RR,
/// carrying `block` if any, followed by an SDES packet with our CNAME. Returns its length. No allocation.
pub fn write_report(
    buf: &mut [u8],
    our_ssrc: u32,
    sender_info: Option<&SenderInfo>,
    block: Option<&ReportBlock>,
    cname: &str,
) -> Result<usize, RtcpError> {
    if cname.len() > 255 {
        return Err(RtcpError::CnameTooLong(cname.len()));
    }
    let report_len = if sender_info.is_some() { SR_LEN } else { RR_LEN } + block.map_or(0, |_| BLOCK_LEN);
    // SDES: header, SSRC, CNAME item (type, length, text), at least one null octet, padded to 32 bits.
    let sdes_len = (4 + 4 + 2 + cname.len() + 1).div_ceil(4) * 4;
    let total = report_len + sdes_len;
    if buf.len() < total {
        return Err(RtcpError::BufferTooSmall(total));
    }
    let count = u8::from(block.is_some());

    let report = &mut buf[..report_len];
    if let Some(si) = sender_info {
        rwriter::write_header_unchecked::<SenderReport>(0, count, report);
        report[4..8].copy_from_slice(&our_ssrc.to_be_bytes());
        report[8..16].copy_from_slice(&si.ntp_timestamp.to_be_bytes());
        report[16..20].copy_from_slice(&si.rtp_timestamp.to_be_bytes());
        report[20..24].copy_from_slice(&si.packet_count.to_be_bytes());
        report[24..28].copy_from_slice(&si.octet_count.to_be_bytes());
    } else {
        rwriter::write_header_unchecked::<ReceiverReport>(0, count, report);
        report[4..8].copy_from_slice(&our_ssrc.to_be_bytes());
    }
    if let Some(b) = block {
        write_block(&mut report[report_len - BLOCK_LEN..], b);
    }

    let sdes = &mut buf[report_len..total];
    rwriter::write_header_unchecked::<Sdes>(0, 1, sdes);
    sdes[4..8].copy_from_slice(&our_ssrc.to_be_bytes());
    let item_len = SdesItem::builder(SdesItem::CNAME, cname)
        .write_into(&mut sdes[8..])
        .map_err(|_| RtcpError::CnameTooLong(cname.len()))?;
    // Null item terminating the list, and zero padding to the 32-bit boundary.
    sdes[8 + item_len..].fill(0);
    Ok(total)
}

fn write_block(out: &mut [u8], b: &ReportBlock) {
    let lost = (b.cumulative_lost.clamp(-0x80_0000, 0x7F_FFFF) as u32) & 0x00FF_FFFF;
    out[0..4].copy_from_slice(&b.ssrc.to_be_bytes());
    out[4..8].copy_from_slice(&(u32::from(b.fraction_lost) << 24 | lost).to_be_bytes());
    out[8..12].copy_from_slice(&b.extended_highest_seq.to_be_bytes());
    out[12..16].copy_from_slice(&b.jitter.to_be_bytes());
    out[16..20].copy_from_slice(&b.last_sr.to_be_bytes());
    out[20..24].copy_from_slice(&b.delay_since_last_sr.to_be_bytes());
}

/// What one packet of a compound RTCP packet said.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RtcpSummary {
    SenderReport {
        ssrc: u32,
        ntp_timestamp: u64,
        rtp_timestamp: u32,
        packet_count: u32,
    },
    ReceiverReport {
        ssrc: u32,
    },
    /// One reception report block carried by the SR or RR just summarised (reported by `reporter_ssrc`), e.g.
    /// the peer's view of our stream: loss, jitter, and LSR/DLSR for the round-trip time.
    ReportBlock {
        reporter_ssrc: u32,
        block: ReportBlock,
    },
    Bye {
        ssrcs_count: usize,
    },
    /// SDES, APP, feedback, XR or an unknown type: valid, not summarised.
    Other,
}

/// Walks a compound RTCP packet, calling `f` for each packet (and for each report block after its SR/RR).
/// The whole compound packet is validated first, so `f` sees nothing from a malformed one. No allocation.
pub fn parse_compound(packet: &[u8], mut f: impl FnMut(RtcpSummary)) -> Result<(), RtcpError> {
    // Length fields of every packet, padding only on the last.
    rtcp_types::Compound::parse(packet)?;
    for_each_packet(packet, |_| Ok(()))?;
    for_each_packet(packet, |summary| {
        f(summary);
        Ok(())
    })
}

fn for_each_packet(packet: &[u8], mut f: impl FnMut(RtcpSummary) -> Result<(), RtcpError>) -> Result<(), RtcpError> {
    let mut offset = 0;
    while offset < packet.len() {
        let rest = packet.get(offset..).ok_or(RtcpError::Truncated)?;
        if rest.len() < 4 {
            return Err(RtcpError::Truncated);
        }
        let len = rparser::parse_length(rest);
        let one = rest.get(..len).ok_or(RtcpError::Truncated)?;
        match rparser::parse_packet_type(one) {
            200 => {
                let sr = SenderReport::parse(one)?;
                f(RtcpSummary::SenderReport {
                    ssrc: sr.ssrc(),
                    ntp_timestamp: sr.ntp_timestamp(),
                    rtp_timestamp: sr.rtp_timestamp(),
                    packet_count: sr.packet_count(),
                })?;
                for rb in sr.report_blocks() {
                    f(RtcpSummary::ReportBlock { reporter_ssrc: sr.ssrc(), block: block_from(&rb) })?;
                }
            }
            201 => {
                let rr = ReceiverReport::parse(one)?;
                f(RtcpSummary::ReceiverReport { ssrc: rr.ssrc() })?;
                for rb in rr.report_blocks() {
                    f(RtcpSummary::ReportBlock { reporter_ssrc: rr.ssrc(), block: block_from(&rb) })?;
                }
            }
            203 => {
                let bye = Bye::parse(one)?;
                f(RtcpSummary::Bye { ssrcs_count: bye.count() as usize })?;
            }
            _ => {
                Unknown::parse(one)?;
                f(RtcpSummary::Other)?;
            }
        }
        offset += len;
    }
    Ok(())
}

fn block_from(rb: &rtcp_types::ReportBlock<'_>) -> ReportBlock {
    // Sign-extend the 24-bit cumulative loss.
    let raw = rb.cumulative_lost() & 0x00FF_FFFF;
    let cumulative_lost = ((raw << 8) as i32) >> 8;
    ReportBlock {
        ssrc: rb.ssrc(),
        fraction_lost: rb.fraction_lost(),
        cumulative_lost,
        extended_highest_seq: rb.extended_sequence_number(),
        jitter: rb.interarrival_jitter(),
        last_sr: rb.last_sender_report_timestamp(),
        delay_since_last_sr: rb.delay_since_last_sender_report_timestamp(),
    }
}

/// The LSR value for a report block: the middle 32 bits of the NTP timestamp of the SR received.
pub fn lsr_from_ntp(ntp: u64) -> u32 {
    crate::proto::rtp::lsr_from_ntp(ntp)
}

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_UNIX_OFFSET_SECS: u64 = 2_208_988_800;

/// A 64-bit NTP timestamp (32.32 fixed point since 1900) from a time since the Unix epoch, e.g.
/// `SystemTime::now().duration_since(UNIX_EPOCH)` taken by the caller.
pub fn ntp_from_unix(since_unix_epoch: Duration) -> u64 {
    let secs = since_unix_epoch.as_secs().wrapping_add(NTP_UNIX_OFFSET_SECS);
    let frac = (u64::from(since_unix_epoch.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// Round-trip time from a report block the peer sent about our stream (RFC 3550 §6.4.1: A - LSR - DLSR),
/// where `arrival_ntp` is the NTP time the report arrived. `None` when the peer has no SR of ours yet or the
/// values are inconsistent.
pub fn round_trip_time(block: &ReportBlock, arrival_ntp: u64) -> Option<Duration> {
    if block.last_sr == 0 {
        return None;
    }
    let a = lsr_from_ntp(arrival_ntp);
    let rtt = a.wrapping_sub(block.last_sr).wrapping_sub(block.delay_since_last_sr);
    // A negative result wraps to a huge value: treat anything over ~18 hours as inconsistent.
    if rtt > 0x8000_0000 {
        return None;
    }
    Some(Duration::from_nanos((u64::from(rtt) * 1_000_000_000) >> 16))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block() -> ReportBlock {
        ReportBlock {
            ssrc: 0xCAFE_BABE,
            fraction_lost: 51,
            cumulative_lost: -3,
            extended_highest_seq: 0x0001_0010,
            jitter: 37,
            last_sr: 0x1234_5678,
            delay_since_last_sr: 65536,
        }
    }

    fn collect(packet: &[u8]) -> Result<Vec<RtcpSummary>, RtcpError> {
        let mut v = Vec::new();
        parse_compound(packet, |s| v.push(s))?;
        Ok(v)
    }

    #[test]
    fn receiver_report_round_trip() {
        let mut buf = [0u8; 256];
        let n = write_report(&mut buf, 0x1111_2222, None, Some(&block()), "fairvox@10.0.0.1").unwrap();
        // RR 8 + block 24 + SDES (4 + 4 + 2 + 16 + 1 -> 28).
        assert_eq!(n, 8 + 24 + 28);
        assert_eq!(n % 4, 0);
        assert_eq!(
            collect(&buf[..n]).unwrap(),
            vec![
                RtcpSummary::ReceiverReport { ssrc: 0x1111_2222 },
                RtcpSummary::ReportBlock { reporter_ssrc: 0x1111_2222, block: block() },
                RtcpSummary::Other,
            ]
        );
        // The crate's own parsers agree, SDES included.
        let rr = ReceiverReport::parse(&buf[..32]).unwrap();
        let rb = rr.report_blocks().next().unwrap();
        assert_eq!(rb.cumulative_lost(), 0xFF_FFFD);
        assert_eq!(rb.fraction_lost(), 51);
        let sdes = Sdes::parse(&buf[32..n]).unwrap();
        let chunk = sdes.chunks().next().unwrap();
        assert_eq!(chunk.ssrc(), 0x1111_2222);
        let item = chunk.items().next().unwrap();
        assert_eq!(item.type_(), SdesItem::CNAME);
        assert_eq!(item.value(), b"fairvox@10.0.0.1");
    }

    #[test]
    fn sender_report_round_trip_and_without_block() {
        let si = SenderInfo {
            ntp_timestamp: 0xE000_0000_8000_0000,
            rtp_timestamp: 160,
            packet_count: 50,
            octet_count: 8000,
        };
        let mut buf = [0u8; 256];
        let n = write_report(&mut buf, 7, Some(&si), None, "x").unwrap();
        assert_eq!(n, 28 + 12);
        assert_eq!(
            collect(&buf[..n]).unwrap(),
            vec![
                RtcpSummary::SenderReport {
                    ssrc: 7,
                    ntp_timestamp: si.ntp_timestamp,
                    rtp_timestamp: 160,
                    packet_count: 50
                },
                RtcpSummary::Other,
            ]
        );
        let sr = SenderReport::parse(&buf[..28]).unwrap();
        assert_eq!(sr.octet_count(), 8000);
        assert_eq!(sr.n_reports(), 0);
        let n = write_report(&mut buf, 7, Some(&si), Some(&block()), "").unwrap();
        assert_eq!(n, 28 + 24 + 12);
        assert_eq!(collect(&buf[..n]).unwrap().len(), 3);
        assert!(Sdes::parse(&buf[52..n]).is_ok());
    }

    #[test]
    fn cname_lengths_pad_correctly() {
        let mut buf = [0u8; 400];
        for len in 0..=255 {
            let cname = "c".repeat(len);
            let n = write_report(&mut buf, 1, None, None, &cname).unwrap();
            assert_eq!(n % 4, 0);
            assert!(Sdes::parse(&buf[8..n]).is_ok(), "cname of {len}");
            assert_eq!(collect(&buf[..n]).unwrap().len(), 2);
        }
        assert_eq!(write_report(&mut buf, 1, None, None, &"c".repeat(256)).unwrap_err(), RtcpError::CnameTooLong(256));
        assert_eq!(write_report(&mut buf[..20], 1, None, None, "abc").unwrap_err().label(), "buffer_too_small");
    }

    #[test]
    fn parses_bye_and_skips_unknown_types() {
        let mut buf = [0u8; 128];
        let n = write_report(&mut buf, 9, None, None, "a").unwrap();
        // BYE with two SSRCs, then an APP packet.
        let bye = [0x82, 203, 0, 2, 0, 0, 0, 1, 0, 0, 0, 2];
        let app = [0x80, 204, 0, 2, 0, 0, 0, 9, b'n', b'a', b'm', b'e'];
        buf[n..n + 12].copy_from_slice(&bye);
        buf[n + 12..n + 24].copy_from_slice(&app);
        assert_eq!(
            collect(&buf[..n + 24]).unwrap(),
            vec![
                RtcpSummary::ReceiverReport { ssrc: 9 },
                RtcpSummary::Other,
                RtcpSummary::Bye { ssrcs_count: 2 },
                RtcpSummary::Other,
            ]
        );
    }

    #[test]
    fn malformed_lengths_are_rejected_without_calling_back() {
        let mut buf = [0u8; 128];
        let n = write_report(&mut buf, 9, None, Some(&block()), "abc").unwrap();
        let good = buf[..n].to_vec();
        let calls = |p: &[u8]| {
            let mut c = 0;
            let r = parse_compound(p, |_| c += 1);
            (r, c)
        };
        // Length field claims more than is there.
        let mut p = good.clone();
        p[3] = 200;
        assert_eq!(calls(&p), (Err(RtcpError::Truncated), 0));
        // The SDES length claims beyond the end.
        let mut p = good.clone();
        p[32 + 3] += 1;
        assert!(calls(&p).0.is_err());
        assert_eq!(calls(&p).1, 0);
        // Report count larger than the packet holds.
        let mut p = good.clone();
        p[0] = 0x80 | 3;
        assert!(calls(&p).0.is_err());
        // Trailing bytes, truncation, version 1, empty.
        let mut p = good.clone();
        p.extend_from_slice(&[0, 0]);
        assert!(calls(&p).0.is_err());
        assert!(calls(&good[..n - 1]).0.is_err());
        let mut p = good.clone();
        p[32] = 0x41;
        assert_eq!(calls(&p).0.unwrap_err().label(), "bad_version");
        assert!(calls(&[]).0.is_err());
        assert!(calls(&[0x80]).0.is_err());
        // Padding on a non-last packet.
        let mut p = good.clone();
        p[0] |= 0x20;
        assert!(calls(&p).0.is_err());
    }

    #[test]
    fn lsr_dlsr_and_rtt_from_a_received_sr() {
        let ntp = ntp_from_unix(Duration::from_millis(1_700_000_000_250));
        assert_eq!(ntp >> 32, 1_700_000_000 + NTP_UNIX_OFFSET_SECS);
        assert_eq!(ntp as u32, 1 << 30); // .25 s
        let mut buf = [0u8; 64];
        let si = SenderInfo { ntp_timestamp: ntp, ..Default::default() };
        let n = write_report(&mut buf, 3, Some(&si), None, "p").unwrap();
        let mut lsr = 0;
        parse_compound(&buf[..n], |s| {
            if let RtcpSummary::SenderReport { ntp_timestamp, .. } = s {
                lsr = lsr_from_ntp(ntp_timestamp);
            }
        })
        .unwrap();
        assert_eq!(lsr, ((ntp >> 16) & 0xFFFF_FFFF) as u32);
        // The peer held our SR for 0.5 s and we got its report 0.6 s after sending: RTT 100 ms.
        let block = ReportBlock { last_sr: lsr, delay_since_last_sr: 32768, ..Default::default() };
        let arrival = ntp_from_unix(Duration::from_millis(1_700_000_000_850));
        let rtt = round_trip_time(&block, arrival).unwrap();
        assert!(rtt.abs_diff(Duration::from_millis(100)) < Duration::from_micros(50), "{rtt:?}");
        assert_eq!(round_trip_time(&ReportBlock::default(), arrival), None);
        let early = ntp_from_unix(Duration::from_millis(1_700_000_000_300));
        assert_eq!(round_trip_time(&block, early), None);
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..128)) {
            let _ = parse_compound(&bytes, |_| {});
        }

        #[test]
        fn mutated_reports_never_panic(idx in 0usize..60, val: u8) {
            let mut buf = [0u8; 128];
            let n = write_report(&mut buf, 9, None, Some(&block()), "fairvox@host").unwrap();
            buf[idx % n] = val;
            let _ = parse_compound(&buf[..n], |_| {});
        }
    }
}
