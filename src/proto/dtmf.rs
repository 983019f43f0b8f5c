//! RFC 4733 telephone-event payloads: parse, and a detector that reports each digit once.
//!
//! Owns the telephone-event payload format and the de-duplication of key presses. Hand-written: the format is
//! one 4-byte word and no vetted crate covers it. The detector is fixed-size and allocation-free.

/// One telephone-event payload (RFC 4733 §2.3).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct DtmfEvent {
    /// Event code: 0-9 digits, 10 `*`, 11 `#`, 12-15 `A`-`D`, 16 flash, others tones.
    pub event: u8,
    /// The E bit: this packet ends the event.
    pub end: bool,
    /// Power level in -dBm0 (0-63).
    pub volume: u8,
    /// Duration so far, in RTP timestamp units from the event's timestamp.
    pub duration: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DtmfError {
    #[error("telephone-event payload of {0} bytes is shorter than 4")]
    Truncated(usize),
}

impl DtmfError {
    /// A short, stable name for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            DtmfError::Truncated(_) => "truncated",
        }
    }
}

/// Parses the first event of a telephone-event payload. Extra bytes (further events) are ignored.
pub fn parse_event(payload: &[u8]) -> Result<DtmfEvent, DtmfError> {
    match payload {
        [event, flags, d0, d1, ..] => Ok(DtmfEvent {
            event: *event,
            end: flags & 0x80 != 0,
            volume: flags & 0x3F,
            duration: u16::from_be_bytes([*d0, *d1]),
        }),
        _ => Err(DtmfError::Truncated(payload.len())),
    }
}

/// Writes an event into a 4-byte payload (for tests and for sending digits).
pub fn write_event(ev: &DtmfEvent) -> [u8; 4] {
    let d = ev.duration.to_be_bytes();
    [ev.event, (u8::from(ev.end) << 7) | (ev.volume & 0x3F), d[0], d[1]]
}

/// The key of a DTMF event code: 0-9, 10 `*`, 11 `#`, 12-15 `A`-`D`; `None` for other events.
pub fn digit(event: u8) -> Option<char> {
    match event {
        0..=9 => Some(char::from(b'0' + event)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + event - 12)),
        _ => None,
    }
}

/// How far behind the current event (in timestamp units) a packet is still taken for a late retransmission;
/// anything further behind is taken for a new event from a restarted source. 2^20 is 131 s at 8 kHz.
const OLD_WINDOW: u32 = 1 << 20;
/// A segment of a long event (RFC 4733 §2.5.1.3) ends when its duration nears the 16-bit limit.
const SEGMENT_NEAR_FULL: u16 = 0xF000;

#[derive(Copy, Clone, Debug)]
struct Current {
    ts: u32,
    event: u8,
    reported: bool,
    max_duration: u16,
}

/// Reports each key press exactly once, however many start/continuation/end packets arrive. Events are keyed
/// by RTP timestamp. A press is reported at its first end packet or, if all its end packets were lost, when a
/// packet of a newer event arrives. Late packets of earlier events are ignored; a long event split into
/// segments (RFC 4733 §2.5.1.3) is one press. Non-DTMF events (flash, tones) are ignored.
#[derive(Clone, Debug, Default)]
pub struct DtmfDetector {
    current: Option<Current>,
}

impl DtmfDetector {
    pub fn new() -> Self {
        DtmfDetector { current: None }
    }

    /// Forgets the event in progress without reporting it (e.g. on an SSRC change).
    pub fn reset(&mut self) {
        self.current = None;
    }

    /// Feeds one telephone-event packet; returns a key when a press is complete.
    pub fn on_packet(&mut self, rtp_ts: u32, ev: &DtmfEvent) -> Option<char> {
        let key = digit(ev.event)?;
        let Some(cur) = self.current.as_mut() else {
            return self.start(rtp_ts, ev, key);
        };
        if cur.ts == rtp_ts {
            cur.max_duration = cur.max_duration.max(ev.duration);
            if cur.reported || !ev.end {
                return None;
            }
            cur.reported = true;
            return digit(cur.event);
        }
        let behind = cur.ts.wrapping_sub(rtp_ts);
        if behind <= OLD_WINDOW {
            return None; // a late packet of an earlier event
        }
        if !cur.reported {
            let delta = rtp_ts.wrapping_sub(cur.ts);
            let next_segment = cur.event == ev.event
                && cur.max_duration >= SEGMENT_NEAR_FULL
                && delta <= u32::from(u16::MAX) + 1 + u32::from(u16::MAX - SEGMENT_NEAR_FULL);
            if next_segment {
                cur.ts = rtp_ts;
                cur.max_duration = ev.duration;
                if ev.end {
                    cur.reported = true;
                    return Some(key);
                }
                return None;
            }
            // The previous press lost all its end packets: report it now; this packet starts the next one,
            // which is reported at its own end (or when a newer event arrives).
            let pending = digit(cur.event);
            *cur = Current { ts: rtp_ts, event: ev.event, reported: false, max_duration: ev.duration };
            return pending;
        }
        self.start(rtp_ts, ev, key)
    }

    fn start(&mut self, rtp_ts: u32, ev: &DtmfEvent, key: char) -> Option<char> {
        self.current = Some(Current { ts: rtp_ts, event: ev.event, reported: ev.end, max_duration: ev.duration });
        ev.end.then_some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(event: u8, end: bool, duration: u16) -> DtmfEvent {
        DtmfEvent { event, end, volume: 10, duration }
    }

    /// A full RFC 4733 press: start, continuations every 50 ms, three end packets; returns what was reported.
    fn press(d: &mut DtmfDetector, ts: u32, event: u8) -> Vec<char> {
        let mut out = Vec::new();
        for dur in [400u16, 800, 1200] {
            out.extend(d.on_packet(ts, &ev(event, false, dur)));
        }
        for _ in 0..3 {
            out.extend(d.on_packet(ts, &ev(event, true, 1600)));
        }
        out
    }

    #[test]
    fn parses_payloads() {
        let e = parse_event(&[5, 0x80 | 10, 0x03, 0x20]).unwrap();
        assert_eq!(e, DtmfEvent { event: 5, end: true, volume: 10, duration: 800 });
        assert_eq!(write_event(&e), [5, 0x8A, 0x03, 0x20]);
        // The reserved bit is ignored.
        assert_eq!(parse_event(&[11, 0x40 | 7, 0, 160]).unwrap(), ev(11, false, 160).with_volume(7));
        assert_eq!(parse_event(&[1, 2, 3]).unwrap_err(), DtmfError::Truncated(3));
        assert_eq!(parse_event(&[]).unwrap_err().label(), "truncated");
        assert!(parse_event(&[1, 2, 3, 4, 5, 6, 7, 8]).is_ok());
    }

    impl DtmfEvent {
        fn with_volume(mut self, v: u8) -> Self {
            self.volume = v;
            self
        }
    }

    #[test]
    fn digits() {
        let keys: String = (0..16).filter_map(digit).collect();
        assert_eq!(keys, "0123456789*#ABCD");
        assert_eq!(digit(16), None);
        assert_eq!(digit(255), None);
    }

    #[test]
    fn full_sequence_gives_one_digit() {
        let mut d = DtmfDetector::new();
        assert_eq!(press(&mut d, 1000, 5), vec!['5']);
    }

    #[test]
    fn reports_at_the_first_end_packet() {
        let mut d = DtmfDetector::new();
        assert_eq!(d.on_packet(1000, &ev(9, false, 160)), None);
        assert_eq!(d.on_packet(1000, &ev(9, true, 800)), Some('9'));
        assert_eq!(d.on_packet(1000, &ev(9, true, 800)), None);
    }

    #[test]
    fn two_presses_of_the_same_digit_give_two() {
        let mut d = DtmfDetector::new();
        assert_eq!(press(&mut d, 1000, 1), vec!['1']);
        assert_eq!(press(&mut d, 3000, 1), vec!['1']);
        assert_eq!(press(&mut d, 5000, 11), vec!['#']);
    }

    #[test]
    fn lost_end_packets_report_on_the_next_event() {
        let mut d = DtmfDetector::new();
        assert_eq!(d.on_packet(1000, &ev(3, false, 160)), None);
        assert_eq!(d.on_packet(1000, &ev(3, false, 320)), None);
        // All three end packets of '3' lost; '3' again is pressed.
        assert_eq!(d.on_packet(3000, &ev(3, false, 160)), Some('3'));
        assert_eq!(d.on_packet(3000, &ev(3, true, 800)), Some('3'));
        // Ends lost, and the next packet is already an end of a new press: both are reported.
        assert_eq!(d.on_packet(5000, &ev(4, false, 160)), None);
        assert_eq!(d.on_packet(7000, &ev(6, true, 800)), Some('4'));
        assert_eq!(d.on_packet(7000, &ev(6, true, 800)), Some('6'));
        assert_eq!(d.on_packet(7000, &ev(6, true, 800)), None);
    }

    #[test]
    fn start_lost_still_reports_at_end() {
        let mut d = DtmfDetector::new();
        assert_eq!(d.on_packet(1000, &ev(0, true, 800)), Some('0'));
        assert_eq!(d.on_packet(1000, &ev(0, true, 800)), None);
    }

    #[test]
    fn retransmitted_end_packets_after_a_new_event_do_not_refire() {
        let mut d = DtmfDetector::new();
        assert_eq!(press(&mut d, 1000, 1), vec!['1']);
        assert_eq!(d.on_packet(3000, &ev(2, false, 160)), None);
        assert_eq!(d.on_packet(1000, &ev(1, true, 1600)), None);
        assert_eq!(d.on_packet(1000, &ev(1, false, 400)), None);
        assert_eq!(d.on_packet(3000, &ev(2, true, 800)), Some('2'));
        assert_eq!(d.on_packet(1000, &ev(1, true, 1600)), None);
    }

    #[test]
    fn timestamps_wrap() {
        let mut d = DtmfDetector::new();
        assert_eq!(press(&mut d, u32::MAX - 100, 7), vec!['7']);
        assert_eq!(press(&mut d, 2000, 8), vec!['8']);
        assert_eq!(d.on_packet(u32::MAX - 100, &ev(7, true, 1600)), None);
    }

    #[test]
    fn a_restarted_source_far_behind_is_a_new_event() {
        let mut d = DtmfDetector::new();
        assert_eq!(press(&mut d, 3_000_000_000, 1), vec!['1']);
        assert_eq!(press(&mut d, 5_000, 2), vec!['2']);
    }

    #[test]
    fn long_event_segments_are_one_press() {
        let mut d = DtmfDetector::new();
        assert_eq!(d.on_packet(0, &ev(5, false, 400)), None);
        assert_eq!(d.on_packet(0, &ev(5, false, 65000)), None);
        assert_eq!(d.on_packet(0, &ev(5, false, u16::MAX)), None);
        assert_eq!(d.on_packet(65535, &ev(5, false, 400)), None);
        assert_eq!(d.on_packet(65535, &ev(5, true, 1200)), Some('5'));
        assert_eq!(d.on_packet(65535, &ev(5, true, 1200)), None);
    }

    #[test]
    fn non_dtmf_events_are_ignored() {
        let mut d = DtmfDetector::new();
        assert_eq!(d.on_packet(1000, &ev(16, true, 800)), None);
        assert_eq!(press(&mut d, 2000, 12), vec!['A']);
        d.reset();
        assert_eq!(d.on_packet(2000, &ev(12, true, 800)), Some('A'));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_reports_each_event_at_most_once(
            packets in proptest::collection::vec((0u32..8, proptest::num::u8::ANY, proptest::bool::ANY), 0..64)
        ) {
            let mut d = DtmfDetector::new();
            let mut timestamps = std::collections::HashSet::new();
            let mut reports = 0;
            for (slot, event, end) in packets {
                let ts = slot.wrapping_mul(1000).wrapping_sub(3000);
                let parsed = parse_event(&[event, u8::from(end) << 7, 0, 0]).unwrap();
                if digit(parsed.event).is_some() {
                    timestamps.insert(ts);
                }
                reports += usize::from(d.on_packet(ts, &parsed).is_some());
            }
            proptest::prop_assert!(reports <= timestamps.len());
        }
    }
}
