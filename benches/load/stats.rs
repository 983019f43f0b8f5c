//! Measurement state shared by the generator, the caller-side RTP receivers and the agent: the payload marker, the
//! measurement window, and per-path counters. Owns no IO.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use serde::Serialize;

/// µ-law payload bytes in one 20 ms PCMU frame.
pub const PAYLOAD_LEN: usize = 160;
/// Raw marker bytes: call u32, seq u32, send instant u64 (ns since the bench epoch), check u32.
const MARK_RAW: usize = 20;
/// Each raw byte travels as two bytes `0x40 | nibble`: µ-law codes that survive a decode/encode round trip
/// (unlike 0x7F or a zero-trapped 0x00), so the marker survives a server that transcodes through linear PCM.
const MARK_LEN: usize = MARK_RAW * 2;
const CHECK_SALT: u32 = 0x4656_5831;

/// What one frame carries so the receiver can tell who sent it, which one it was, and when it left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Marker {
    pub call: u32,
    pub seq: u32,
    pub send_ns: u64,
}

/// What a received payload turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    Marker(Marker),
    /// Audio the server made up (silence while nothing was queued, comfort noise): no marker at all.
    Filler,
    /// Marker-shaped bytes whose check fails: the server altered the payload or re-sliced frames.
    Corrupt,
}

impl Marker {
    fn check(&self) -> u32 {
        self.call.wrapping_mul(0x9E37_79B1)
            ^ self.seq.rotate_left(16)
            ^ (self.send_ns as u32)
            ^ ((self.send_ns >> 32) as u32)
            ^ CHECK_SALT
    }

    /// Writes the marker followed by µ-law silence into a 160-byte payload.
    pub fn write(&self, out: &mut [u8; PAYLOAD_LEN]) {
        let mut raw = [0u8; MARK_RAW];
        raw[0..4].copy_from_slice(&self.call.to_be_bytes());
        raw[4..8].copy_from_slice(&self.seq.to_be_bytes());
        raw[8..16].copy_from_slice(&self.send_ns.to_be_bytes());
        raw[16..20].copy_from_slice(&self.check().to_be_bytes());
        for (i, b) in raw.iter().enumerate() {
            out[2 * i] = 0x40 | (b >> 4);
            out[2 * i + 1] = 0x40 | (b & 0x0f);
        }
        out[MARK_LEN..].fill(0xFF);
    }

    pub fn read(payload: &[u8]) -> Decoded {
        if payload.len() < MARK_LEN {
            return Decoded::Filler;
        }
        let marked = payload[..MARK_LEN].iter().all(|b| b & 0xF0 == 0x40);
        if !marked {
            // Marker-looking start but broken nibbles: corrupt; anything else is server-made audio.
            return if payload[0] & 0xF0 == 0x40 && payload[1] & 0xF0 == 0x40 {
                Decoded::Corrupt
            } else {
                Decoded::Filler
            };
        }
        let mut raw = [0u8; MARK_RAW];
        for (i, r) in raw.iter_mut().enumerate() {
            *r = ((payload[2 * i] & 0x0f) << 4) | (payload[2 * i + 1] & 0x0f);
        }
        let m = Marker {
            call: u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]),
            seq: u32::from_be_bytes([raw[4], raw[5], raw[6], raw[7]]),
            send_ns: u64::from_be_bytes([raw[8], raw[9], raw[10], raw[11], raw[12], raw[13], raw[14], raw[15]]),
        };
        if m.check() == u32::from_be_bytes([raw[16], raw[17], raw[18], raw[19]]) {
            Decoded::Marker(m)
        } else {
            Decoded::Corrupt
        }
    }
}

/// The measurement window, in ns since the epoch: a frame belongs to it when it was *sent* inside it.
pub struct Window {
    start: AtomicU64,
    end: AtomicU64,
}

impl Window {
    fn new() -> Self {
        Window { start: AtomicU64::new(u64::MAX), end: AtomicU64::new(u64::MAX) }
    }

    pub fn open(&self, ns: u64) {
        self.start.store(ns, Ordering::Relaxed);
    }

    pub fn close(&self, ns: u64) {
        self.end.store(ns, Ordering::Relaxed);
    }

    pub fn contains(&self, ns: u64) -> bool {
        ns >= self.start.load(Ordering::Relaxed) && ns < self.end.load(Ordering::Relaxed)
    }
}

/// One direction of media: caller → agent ("up"), or back to the caller ("back": echo, or the agent's talk-back).
pub struct PathStats {
    /// Frames put on this path whose send instant is in the window.
    pub sent: u64,
    /// Of those, frames that arrived (with their own call's marker).
    pub received: u64,
    pub lat_ns: Vec<u64>,
    /// (send instant, latency) of each received in-window frame, to see latency drift across the window.
    timeline: Vec<(u64, u64)>,
    pub late: u64,
    pub out_of_order: u64,
    pub duplicate: u64,
    /// Frames received in the window that carried another call's marker: cross-talk.
    pub crossed: u64,
    pub corrupt: u64,
    pub filler: u64,
    /// Packets that were not PCMU (RTCP on the RTP port, telephone-event, CN ...), received in the window.
    pub other: u64,
    max_seq: Vec<Option<u32>>,
}

impl PathStats {
    fn new(calls: usize) -> Self {
        PathStats {
            sent: 0,
            received: 0,
            lat_ns: Vec::new(),
            timeline: Vec::new(),
            late: 0,
            out_of_order: 0,
            duplicate: 0,
            crossed: 0,
            corrupt: 0,
            filler: 0,
            other: 0,
            max_seq: vec![None; calls],
        }
    }

    /// Accounts one received payload. `owner` is the call the receiving leg belongs to, when known.
    pub fn on_payload(&mut self, owner: Option<u32>, payload: &[u8], now_ns: u64, win: &Window, late_ns: u64) {
        match Marker::read(payload) {
            Decoded::Filler => {
                if win.contains(now_ns) {
                    self.filler += 1;
                }
            }
            Decoded::Corrupt => {
                if win.contains(now_ns) {
                    self.corrupt += 1;
                }
            }
            Decoded::Marker(m) => {
                if owner.is_some_and(|o| o != m.call) || m.call as usize >= self.max_seq.len() {
                    if win.contains(now_ns) {
                        self.crossed += 1;
                    }
                    return;
                }
                if !win.contains(m.send_ns) {
                    return;
                }
                self.received += 1;
                let lat = now_ns.saturating_sub(m.send_ns);
                self.lat_ns.push(lat);
                self.timeline.push((m.send_ns, lat));
                if lat > late_ns {
                    self.late += 1;
                }
                let slot = &mut self.max_seq[m.call as usize];
                match *slot {
                    Some(max) if m.seq == max => self.duplicate += 1,
                    Some(max) if m.seq < max => self.out_of_order += 1,
                    _ => *slot = Some(m.seq),
                }
            }
        }
    }

    pub fn summary(&mut self, win: &Window) -> PathSummary {
        self.lat_ns.sort_unstable();
        // Median latency of frames sent in the first and in the last fifth of the window: a growing queue shows as
        // last ≫ first, a fixed cost as last ≈ first.
        let (start, end) = (win.start.load(Ordering::Relaxed), win.end.load(Ordering::Relaxed));
        let fifth = end.saturating_sub(start) / 5;
        let median_between = |lo: u64, hi: u64| {
            let mut v: Vec<u64> = self.timeline.iter().filter(|(t, _)| *t >= lo && *t < hi).map(|(_, l)| *l).collect();
            v.sort_unstable();
            percentile(&v, 0.5).map(|ns| ns as f64 / 1000.0)
        };
        let p50_first_fifth_us = median_between(start, start + fifth);
        let p50_last_fifth_us = median_between(end - fifth, end);
        let us = |p: f64| percentile(&self.lat_ns, p).map(|ns| ns as f64 / 1000.0);
        let loss_pct =
            if self.sent == 0 { None } else { Some(100.0 * (1.0 - self.received as f64 / self.sent as f64)) };
        PathSummary {
            sent: self.sent,
            received: self.received,
            loss_pct,
            p50_us: us(0.50),
            p99_us: us(0.99),
            p999_us: us(0.999),
            max_us: self.lat_ns.last().map(|&ns| ns as f64 / 1000.0),
            p50_first_fifth_us,
            p50_last_fifth_us,
            late: self.late,
            out_of_order: self.out_of_order,
            duplicate: self.duplicate,
            crossed: self.crossed,
            corrupt: self.corrupt,
            filler: self.filler,
            other: self.other,
        }
    }
}

#[derive(Serialize, Clone, Debug)]
pub struct PathSummary {
    pub sent: u64,
    pub received: u64,
    /// 100 × (1 − received/sent); negative would mean duplicates.
    pub loss_pct: Option<f64>,
    pub p50_us: Option<f64>,
    pub p99_us: Option<f64>,
    pub p999_us: Option<f64>,
    pub max_us: Option<f64>,
    /// Median of the frames sent in the window's first fifth, and in its last fifth.
    pub p50_first_fifth_us: Option<f64>,
    pub p50_last_fifth_us: Option<f64>,
    pub late: u64,
    pub out_of_order: u64,
    pub duplicate: u64,
    pub crossed: u64,
    pub corrupt: u64,
    pub filler: u64,
    pub other: u64,
}

/// What the agent saw on its WebSocket connections.
#[derive(Default, Serialize, Clone, Debug)]
pub struct AgentCounters {
    pub connections: u64,
    pub handshake_failures: u64,
    pub connected_events: u64,
    pub start_events: u64,
    pub media_events: u64,
    pub stop_events: u64,
    pub other_events: u64,
    pub closes: u64,
    /// Connections that ended with an error instead of a close frame.
    pub errors: u64,
    pub bad_json: u64,
    /// `sequenceNumber` not one more than the previous message's on the same socket.
    pub sequence_gaps: u64,
    /// `start` without a `customParameters.from_number` we could map to a call.
    pub unmapped_starts: u64,
    pub talkback_sent: u64,
    pub talkback_send_errors: u64,
}

/// Pacing quality and cost of the RTP generator.
#[derive(Default)]
pub struct GenCounters {
    pub sent_total: u64,
    pub send_errors: u64,
    /// Frames dropped by the generator because it fell more than three frames behind.
    pub skipped: u64,
    /// How late each in-window frame left relative to its 20 ms grid slot, µs.
    pub lateness_us: Vec<u32>,
    /// How long each in-window frame's send took, from the instant written into its marker to the send call's
    /// return, µs: the part of the measured latency spent in the generator's own thread (the kernel's loopback
    /// delivery to the server's socket included).
    pub send_us: Vec<u32>,
}

/// Everything the measuring tasks of one ramp step share.
pub struct Shared {
    pub epoch: Instant,
    /// `epoch` on the realtime clock (ns since 1970), to place the kernel's socket timestamps on the bench's clock.
    pub epoch_unix_ns: u64,
    pub window: Window,
    pub late_ns: u64,
    /// Generator → agent, received when the agent's thread read the frame.
    pub up: Mutex<PathStats>,
    /// Generator → agent, received when the frame's bytes reached the agent's socket (kernel timestamp).
    pub up_wire: Mutex<PathStats>,
    pub back: Mutex<PathStats>,
    pub agent: Mutex<AgentCounters>,
    pub generator: Mutex<GenCounters>,
}

impl Shared {
    pub fn new(calls: usize, late_ns: u64) -> Self {
        let epoch = Instant::now();
        Shared {
            epoch,
            epoch_unix_ns: unix_ns_at(epoch),
            window: Window::new(),
            late_ns,
            up: Mutex::new(PathStats::new(calls)),
            up_wire: Mutex::new(PathStats::new(calls)),
            back: Mutex::new(PathStats::new(calls)),
            agent: Mutex::new(AgentCounters::default()),
            generator: Mutex::new(GenCounters::default()),
        }
    }

    pub fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Moves the epoch (several tenants' states on one clock).
    #[allow(dead_code)] // used by benches/isolation.rs, not by benches/load.rs
    pub fn set_epoch(&mut self, epoch: Instant) {
        self.epoch = epoch;
        self.epoch_unix_ns = unix_ns_at(epoch);
    }

    /// A kernel timestamp (realtime ns) on the bench's clock; 0 for a stamp before the epoch.
    pub fn unix_to_bench_ns(&self, unix_ns: u64) -> u64 {
        unix_ns.saturating_sub(self.epoch_unix_ns)
    }
}

/// `at` (now or earlier) on the realtime clock, in ns since 1970.
fn unix_ns_at(at: Instant) -> u64 {
    let now_unix = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    now_unix.saturating_sub(at.elapsed().as_nanos() as u64)
}

/// Nearest-rank percentile of a sorted slice.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> Option<T> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Sanity check run at start-up (a `harness = false` bench has no test runner): the marker survives a round trip and
/// a flipped bit is caught.
pub fn self_check() {
    let m = Marker { call: 4321, seq: 77, send_ns: 123_456_789_012 };
    let mut p = [0u8; PAYLOAD_LEN];
    m.write(&mut p);
    assert_eq!(Marker::read(&p), Decoded::Marker(m));
    p[9] ^= 0x01;
    assert_eq!(Marker::read(&p), Decoded::Corrupt);
    assert_eq!(Marker::read(&[0xFF; PAYLOAD_LEN]), Decoded::Filler);
    assert_eq!(percentile(&[1, 2, 3, 4], 0.5), Some(2));
    assert_eq!(percentile(&[1, 2, 3, 4], 0.999), Some(4));
}
