//! Media policing: holds one call's inbound RTP to the audio rate its SDP negotiated, so that a flood (a broken
//! or hostile sender, a carrier replaying a buffer) is dropped at the call's own socket and counted as `policed`
//! before it costs any shared work. Sans-IO: the caller passes `now`.
//!
//! A token bucket in samples: it refills at the codec's sample rate (8000/s for G.711) and holds a burst of
//! `burst` (default 200 ms of audio plus one 40 ms packet, for network jitter that bunches packets). A packet of
//! `n` samples passes if `n` tokens are there. RFC 4733 events are policed by count instead (at most
//! `events_per_second`, default 100: a digit is ~10-20 packets over its duration).

use std::time::{Duration, Instant};

/// What the policer decided about one packet.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Pass,
    Policed,
}

#[derive(Clone, Debug)]
pub struct Policer {
    rate: u32,
    burst: u32,
    tokens: f64,
    last: Option<Instant>,
    event_tokens: f64,
    events_per_second: u32,
    event_burst: u32,
    policed: u64,
}

impl Policer {
    /// `rate` samples per second (8000 for G.711), `burst` samples of slack.
    pub fn new(rate: u32, burst: u32, events_per_second: u32) -> Policer {
        let event_burst = events_per_second.max(1);
        Policer {
            rate,
            burst,
            tokens: f64::from(burst),
            last: None,
            event_tokens: f64::from(event_burst),
            events_per_second,
            event_burst,
            policed: 0,
        }
    }

    /// The policer for a G.711 call: 8000 samples/s, 240 ms of slack, 100 events/s.
    pub fn g711() -> Policer {
        Policer::new(8000, 1600 + 320, 100)
    }

    /// An audio packet of `samples` samples arriving at `now`.
    pub fn audio(&mut self, samples: usize, now: Instant) -> Verdict {
        self.refill(now);
        let n = samples as f64;
        if n <= self.tokens {
            self.tokens -= n;
            Verdict::Pass
        } else {
            self.policed += 1;
            Verdict::Policed
        }
    }

    /// An RFC 4733 event packet arriving at `now`.
    pub fn event(&mut self, now: Instant) -> Verdict {
        self.refill(now);
        if self.event_tokens >= 1.0 {
            self.event_tokens -= 1.0;
            Verdict::Pass
        } else {
            self.policed += 1;
            Verdict::Policed
        }
    }

    /// Packets dropped so far.
    pub fn policed(&self) -> u64 {
        self.policed
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = match self.last {
            Some(last) => now.saturating_duration_since(last),
            None => Duration::ZERO,
        };
        // Arrival stamps can step back by a hair (derived from the wall clock per batch): never rewind, or the
        // next packet would be credited the same time twice.
        self.last = Some(self.last.map_or(now, |last| last.max(now)));
        let secs = elapsed.as_secs_f64();
        self.tokens = (self.tokens + secs * f64::from(self.rate)).min(f64::from(self.burst));
        self.event_tokens =
            (self.event_tokens + secs * f64::from(self.events_per_second)).min(f64::from(self.event_burst));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(policer: &mut Policer, start: Instant, packets: u32, every: Duration, samples: usize) -> (u32, u32) {
        let (mut pass, mut policed) = (0, 0);
        for i in 0..packets {
            match policer.audio(samples, start + every * i) {
                Verdict::Pass => pass += 1,
                Verdict::Policed => policed += 1,
            }
        }
        (pass, policed)
    }

    #[test]
    fn negotiated_rate_passes_whatever_the_packetization() {
        let t0 = Instant::now();
        for (ms, samples) in [(10, 80), (20, 160), (30, 240), (40, 320)] {
            let mut p = Policer::g711();
            let n = 60_000 / ms; // one minute
            assert_eq!(run(&mut p, t0, n, Duration::from_millis(ms.into()), samples), (n, 0), "{ms} ms");
        }
    }

    #[test]
    fn jitter_bunching_within_the_burst_passes() {
        // 200 ms of packets held up, then delivered back to back, then the stream goes on.
        let t0 = Instant::now();
        let mut p = Policer::g711();
        let mut verdicts = Vec::new();
        for i in 0..10 {
            verdicts.push(p.audio(160, t0 + Duration::from_millis(200) + Duration::from_micros(i * 10)));
        }
        for i in 0..100 {
            verdicts.push(p.audio(160, t0 + Duration::from_millis(220 + 20 * i)));
        }
        assert!(verdicts.iter().all(|v| *v == Verdict::Pass));
    }

    #[test]
    fn a_flood_is_held_to_the_negotiated_rate() {
        // Ten times the rate for 10 s: about a tenth passes (plus the burst), the rest is policed.
        let t0 = Instant::now();
        let mut p = Policer::g711();
        let (pass, policed) = run(&mut p, t0, 5000, Duration::from_millis(2), 160);
        assert!((500..=520).contains(&pass), "{pass} passed");
        assert_eq!(pass + policed, 5000);
        assert_eq!(p.policed(), u64::from(policed));
    }

    #[test]
    fn oversized_packets_cannot_borrow_beyond_the_burst() {
        let mut p = Policer::g711();
        assert_eq!(p.audio(10_000, Instant::now()), Verdict::Policed);
    }

    #[test]
    fn events_are_policed_by_count() {
        let t0 = Instant::now();
        let mut p = Policer::g711();
        let passed = (0..1000).filter(|i| p.event(t0 + Duration::from_millis(*i)) == Verdict::Pass).count();
        // 1 s at 1000 events/s: the burst of 100 plus 100 refilled.
        assert!((190..=201).contains(&passed), "{passed}");
    }
}
