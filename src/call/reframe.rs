//! Re-framing: received audio of any packetization into 20 ms frames on a continuous timeline: 160 µ-law samples
//! for G.711 and narrowband calls, 320 linear samples for wideband (16 kHz) WebRTC calls.
//!
//! Owns the placement of received samples by RTP timestamp: carrying partial frames across packets, filling
//! short gaps (lost packets) with silence, dropping late packets, and resynchronising after a timestamp
//! discontinuity. Fixed-size, allocation-free; frames are handed to a caller closure by reference.

use crate::call::frame::FRAME_SAMPLES;
use crate::codec::g711::ULAW_SILENCE;

/// After this many consecutive late packets the source is taken to have jumped backwards for good, and the
/// re-framer resynchronises to it rather than dropping its audio until it catches up.
const LATE_RUN_RESYNC: u32 = 4;

/// A sample the re-framer can carry: it only needs to know what silence is.
pub trait Sample: Copy + std::fmt::Debug {
    const SILENCE: Self;
}

/// A µ-law byte.
impl Sample for u8 {
    const SILENCE: u8 = ULAW_SILENCE;
}

/// A linear 16-bit sample.
impl Sample for i16 {
    const SILENCE: i16 = 0;
}

/// Re-frames 8 kHz µ-law audio into 160-sample (20 ms) frames.
pub type Reframer = SampleReframer<u8, FRAME_SAMPLES>;
/// Re-frames 16 kHz linear audio into 320-sample (20 ms) frames.
pub type WideReframer = SampleReframer<i16, { 2 * FRAME_SAMPLES }>;

/// Turns received audio (any packetization, 10–40 ms or more, already converted by the caller to µ-law bytes or
/// linear samples) into `N`-sample (20 ms) frames ([`Reframer`] for µ-law, [`WideReframer`] for 16 kHz).
///
/// Timestamps drive placement. A forward gap of up to `max_gap` samples (e.g. 1600 = 200 ms) is filled with
/// silence so the agent's timeline stays continuous; a bigger jump, or a jump backwards by more than
/// `max_gap` before the frame being filled, resynchronises (the partial frame is padded with silence and
/// emitted first). A packet that starts before the frame being filled is late: it is dropped and counted
/// (four in a row resynchronise). A packet that lands inside the frame being filled overwrites what is there
/// (silence filled for it, or identical bytes of a duplicate).
#[derive(Clone, Debug)]
pub struct SampleReframer<S: Sample, const N: usize> {
    max_gap: u32,
    buf: [S; N],
    /// RTP timestamp of `buf[0]`.
    frame_ts: u32,
    /// Samples of `buf` filled so far.
    fill: usize,
    started: bool,
    late_run: u32,
    late_dropped: u64,
    gaps_filled: u64,
    silence_samples: u64,
    resyncs: u64,
}

impl<S: Sample, const N: usize> SampleReframer<S, N> {
    pub fn new(max_gap_samples: u32) -> Self {
        SampleReframer {
            max_gap: max_gap_samples.min(i32::MAX as u32),
            buf: [S::SILENCE; N],
            frame_ts: 0,
            fill: 0,
            started: false,
            late_run: 0,
            late_dropped: 0,
            gaps_filled: 0,
            silence_samples: 0,
            resyncs: 0,
        }
    }

    /// Places `samples` (one per timestamp unit, starting at `rtp_ts`) and emits each completed frame through
    /// `emit(frame_ts, &frame)`, where `frame_ts` is the RTP timestamp of the frame's first sample.
    pub fn push(&mut self, rtp_ts: u32, samples: &[S], mut emit: impl FnMut(u32, &[S; N])) {
        if samples.is_empty() {
            return;
        }
        if !self.started {
            self.started = true;
            self.frame_ts = rtp_ts;
            self.fill = 0;
        }
        let next = self.frame_ts.wrapping_add(self.fill as u32);
        let ahead = rtp_ts.wrapping_sub(next) as i32;
        if ahead >= 0 {
            if ahead as u32 > self.max_gap {
                self.resync(rtp_ts, &mut emit);
            } else if ahead > 0 {
                self.gaps_filled += 1;
                self.silence_samples += u64::from(ahead as u32);
                self.fill_with(None, ahead as usize, &mut emit);
            }
            self.late_run = 0;
            self.fill_with(Some(samples), samples.len(), &mut emit);
            return;
        }
        let before_frame = self.frame_ts.wrapping_sub(rtp_ts) as i32;
        if before_frame <= 0 {
            // Starts inside the frame being filled: overwrite the overlap, append the rest.
            let offset = rtp_ts.wrapping_sub(self.frame_ts) as usize;
            let overlap = (self.fill - offset).min(samples.len());
            self.buf[offset..offset + overlap].copy_from_slice(&samples[..overlap]);
            self.late_run = 0;
            let rest = &samples[overlap..];
            self.fill_with(Some(rest), rest.len(), &mut emit);
            return;
        }
        if before_frame as u32 > self.max_gap || self.late_run + 1 >= LATE_RUN_RESYNC {
            self.resync(rtp_ts, &mut emit);
            self.late_run = 0;
            self.fill_with(Some(samples), samples.len(), &mut emit);
            return;
        }
        self.late_run += 1;
        self.late_dropped += 1;
    }

    /// Pads the partial frame, if any, with silence and emits it (e.g. at the end of a call). The timeline
    /// continues after it.
    pub fn flush(&mut self, mut emit: impl FnMut(u32, &[S; N])) {
        if self.fill > 0 {
            let pad = N - self.fill;
            self.fill_with(None, pad, &mut emit);
        }
    }

    /// Forgets the timeline and drops any partial frame; the next packet starts a new one. Counters are kept.
    pub fn reset(&mut self) {
        self.started = false;
        self.fill = 0;
        self.late_run = 0;
    }

    /// Packets dropped because they started before the frame being filled.
    pub fn late_dropped(&self) -> u64 {
        self.late_dropped
    }

    /// Gaps filled with silence.
    pub fn gaps_filled(&self) -> u64 {
        self.gaps_filled
    }

    /// Samples of silence inserted by gap filling (not counting padding on resync or flush).
    pub fn silence_samples(&self) -> u64 {
        self.silence_samples
    }

    /// Timeline discontinuities followed.
    pub fn resyncs(&self) -> u64 {
        self.resyncs
    }

    /// Samples waiting in the partial frame.
    pub fn pending_samples(&self) -> usize {
        self.fill
    }

    fn resync(&mut self, rtp_ts: u32, emit: &mut impl FnMut(u32, &[S; N])) {
        self.resyncs += 1;
        if self.fill > 0 {
            self.buf[self.fill..].fill(S::SILENCE);
            emit(self.frame_ts, &self.buf);
        }
        self.frame_ts = rtp_ts;
        self.fill = 0;
    }

    /// Appends `count` samples: from `src` if given (then `count == src.len()`), else silence.
    fn fill_with(&mut self, src: Option<&[S]>, count: usize, emit: &mut impl FnMut(u32, &[S; N])) {
        let mut done = 0;
        while done < count {
            let n = (N - self.fill).min(count - done);
            let dst = &mut self.buf[self.fill..self.fill + n];
            match src {
                Some(s) => dst.copy_from_slice(&s[done..done + n]),
                None => dst.fill(S::SILENCE),
            }
            self.fill += n;
            done += n;
            if self.fill == N {
                emit(self.frame_ts, &self.buf);
                self.frame_ts = self.frame_ts.wrapping_add(N as u32);
                self.fill = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(r: &mut Reframer, packets: &[(u32, Vec<u8>)]) -> Vec<(u32, Vec<u8>)> {
        let mut out = Vec::new();
        for (ts, p) in packets {
            r.push(*ts, p, |t, f| out.push((t, f.to_vec())));
        }
        out
    }

    /// `count` packets of `ptime_samples` each from `start`, with distinct bytes (never 0xFF).
    fn stream(start: u32, ptime_samples: usize, count: usize) -> Vec<(u32, Vec<u8>)> {
        (0..count)
            .map(|i| {
                let ts = start.wrapping_add((i * ptime_samples) as u32);
                let bytes = (0..ptime_samples).map(|j| ((i * ptime_samples + j) % 251) as u8).collect();
                (ts, bytes)
            })
            .collect()
    }

    #[test]
    fn any_packetization_concatenates_to_the_input() {
        for ptime_ms in [10usize, 20, 30, 40, 60] {
            let per = ptime_ms * 8;
            let packets = stream(1000, per, 30);
            let mut r = Reframer::new(1600);
            let frames = collect(&mut r, &packets);
            let input: Vec<u8> = packets.iter().flat_map(|(_, p)| p.clone()).collect();
            assert_eq!(frames.len(), input.len() / 160, "{ptime_ms} ms");
            let output: Vec<u8> = frames.iter().flat_map(|(_, f)| f.clone()).collect();
            assert_eq!(output[..], input[..output.len()], "{ptime_ms} ms");
            for (k, (ts, _)) in frames.iter().enumerate() {
                assert_eq!(*ts, 1000 + 160 * k as u32);
            }
            assert_eq!(r.pending_samples(), input.len() % 160);
            assert_eq!((r.gaps_filled(), r.late_dropped(), r.resyncs()), (0, 0, 0));
        }
    }

    #[test]
    fn thirty_ms_packets_carry_halves() {
        let packets = stream(0, 240, 2);
        let (p1, p2) = (&packets[0].1, &packets[1].1);
        let mut r = Reframer::new(1600);
        let f = collect(&mut r, &packets[..1]);
        assert_eq!(f, vec![(0, p1[..160].to_vec())]);
        assert_eq!(r.pending_samples(), 80);
        let f = collect(&mut r, &packets[1..]);
        let mut second = p1[160..].to_vec();
        second.extend_from_slice(&p2[..80]);
        assert_eq!(f, vec![(160, second), (320, p2[80..].to_vec())]);
        assert_eq!(r.pending_samples(), 0);
    }

    #[test]
    fn lost_packet_is_filled_with_silence() {
        let mut packets = stream(0, 160, 4);
        packets.remove(1);
        let mut r = Reframer::new(1600);
        let f = collect(&mut r, &packets);
        assert_eq!(f.len(), 4);
        assert_eq!(f[1], (160, vec![ULAW_SILENCE; 160]));
        assert_eq!(f[2], packets[1].clone());
        assert_eq!(r.gaps_filled(), 1);
        assert_eq!(r.silence_samples(), 160);
        // A lost 30 ms packet spreads its silence over two frames.
        let mut packets = stream(0, 240, 3);
        packets.remove(1);
        let mut r = Reframer::new(1600);
        let f = collect(&mut r, &packets);
        assert_eq!(f.len(), 4);
        assert_eq!(f[1].1[..80], packets[0].1[160..]);
        assert!(f[1].1[80..].iter().all(|b| *b == ULAW_SILENCE));
        assert_eq!(f[2], (320, vec![ULAW_SILENCE; 160]));
        assert_eq!(f[3], (480, packets[1].1[..160].to_vec()));
        assert_eq!(r.silence_samples(), 240);
    }

    #[test]
    fn timestamps_wrap_at_2_pow_32() {
        let packets = stream(u32::MAX - 239, 80, 12);
        let mut r = Reframer::new(1600);
        let f = collect(&mut r, &packets);
        assert_eq!(f.len(), 6);
        let ts: Vec<u32> = f.iter().map(|(t, _)| *t).collect();
        assert_eq!(ts, vec![u32::MAX - 239, u32::MAX - 79, 80, 240, 400, 560]);
        let input: Vec<u8> = packets.iter().flat_map(|(_, p)| p.clone()).collect();
        let output: Vec<u8> = f.iter().flat_map(|(_, f)| f.clone()).collect();
        assert_eq!(input, output);
        assert_eq!((r.gaps_filled(), r.resyncs()), (0, 0));
        // A gap across the wrap is still a gap.
        let mut r = Reframer::new(1600);
        let f = collect(&mut r, &[(u32::MAX - 159, vec![1; 160]), (160, vec![2; 160])]);
        assert_eq!(f.iter().map(|(t, _)| *t).collect::<Vec<_>>(), vec![u32::MAX - 159, 0, 160]);
        assert_eq!(r.gaps_filled(), 1);
    }

    #[test]
    fn big_jump_resynchronises() {
        let mut r = Reframer::new(1600);
        let f = collect(&mut r, &[(0, vec![1; 160]), (160, vec![2; 80]), (100_000, vec![3; 160])]);
        let mut partial = vec![2; 80];
        partial.extend_from_slice(&[ULAW_SILENCE; 80]);
        assert_eq!(f, vec![(0, vec![1; 160]), (160, partial), (100_000, vec![3; 160])]);
        assert_eq!(r.resyncs(), 1);
        assert_eq!(r.gaps_filled(), 0);
        // Exactly max_gap is still filled.
        let mut r = Reframer::new(1600);
        let f = collect(&mut r, &[(0, vec![1; 160]), (1760, vec![2; 160])]);
        assert_eq!(f.len(), 12);
        assert_eq!((r.gaps_filled(), r.resyncs()), (1, 0));
        // A jump far backwards resynchronises too.
        let mut r = Reframer::new(1600);
        let f = collect(&mut r, &[(50_000, vec![1; 160]), (10_000, vec![2; 160])]);
        assert_eq!(f, vec![(50_000, vec![1; 160]), (10_000, vec![2; 160])]);
        assert_eq!(r.resyncs(), 1);
    }

    #[test]
    fn late_packet_is_dropped_and_counted() {
        let packets = stream(0, 160, 3);
        let mut r = Reframer::new(1600);
        collect(&mut r, &packets);
        let f = collect(&mut r, &[packets[1].clone()]);
        assert!(f.is_empty());
        assert_eq!(r.late_dropped(), 1);
        // Reordered: 3 arrives before 2; 2 is late once 3 has been placed.
        let f = collect(&mut r, &[(640, vec![4; 160]), (480, vec![3; 160])]);
        assert_eq!(f, vec![(480, vec![ULAW_SILENCE; 160]), (640, vec![4; 160])]);
        assert_eq!(r.late_dropped(), 2);
        // A duplicate of the packet being carried over is late as well.
        let mut r = Reframer::new(1600);
        let packets = stream(0, 240, 2);
        collect(&mut r, &packets);
        assert!(collect(&mut r, &[packets[1].clone()]).is_empty());
        assert_eq!(r.late_dropped(), 1);
    }

    #[test]
    fn persistent_small_backward_jump_resynchronises() {
        let mut r = Reframer::new(1600);
        collect(&mut r, &stream(10_000, 160, 2));
        let back = stream(9_000, 160, 5);
        let f = collect(&mut r, &back);
        assert_eq!(r.late_dropped(), 3);
        assert_eq!(r.resyncs(), 1);
        assert_eq!(f, vec![back[3].clone(), back[4].clone()]);
    }

    #[test]
    fn packet_inside_the_current_frame_replaces_filled_silence() {
        // 5 ms packets: 40 is lost at first and arrives after 80.
        let mut r = Reframer::new(1600);
        let f = collect(&mut r, &[(0, vec![1; 40]), (80, vec![3; 40]), (40, vec![2; 40]), (120, vec![4; 40])]);
        let mut expected = vec![1; 40];
        expected.extend_from_slice(&[2; 40]);
        expected.extend_from_slice(&[3; 40]);
        expected.extend_from_slice(&[4; 40]);
        assert_eq!(f, vec![(0, expected)]);
        assert_eq!((r.gaps_filled(), r.late_dropped()), (1, 0));
        // Overlapping the end of the partial frame: overlap overwritten, rest appended.
        let mut r = Reframer::new(1600);
        let f = collect(&mut r, &[(0, vec![1; 100]), (60, vec![2; 100])]);
        let mut expected = vec![1; 60];
        expected.extend_from_slice(&[2; 100]);
        assert_eq!(f, vec![(0, expected)]);
    }

    #[test]
    fn flush_and_reset() {
        let mut r = Reframer::new(1600);
        let mut out = Vec::new();
        r.push(0, &[7; 100], |t, f| out.push((t, f.to_vec())));
        r.flush(|t, f| out.push((t, f.to_vec())));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].1[..100], [7; 100]);
        assert!(out[0].1[100..].iter().all(|b| *b == ULAW_SILENCE));
        r.flush(|_, _| panic!("nothing pending"));
        r.push(160, &[8; 160], |t, _| assert_eq!(t, 160));
        r.push(1000, &[8; 10], |_, _| {});
        r.reset();
        assert_eq!(r.pending_samples(), 0);
        let mut first = None;
        r.push(5, &[9; 160], |t, _| first = Some(t));
        assert_eq!(first, Some(5));
        r.push(0, &[], |_, _| panic!("empty push emits nothing"));
    }

    proptest::proptest! {
        #[test]
        fn never_panics_and_frames_are_whole(
            pushes in proptest::collection::vec((proptest::num::u32::ANY, 0usize..500), 0..40),
            jitter in proptest::collection::vec(-400i32..400, 40),
        ) {
            let mut r = Reframer::new(1600);
            let mut ts = 0u32;
            let data = [0x55u8; 500];
            for (i, (raw, len)) in pushes.into_iter().enumerate() {
                // Mostly near the expected timestamp, sometimes anywhere.
                let t = if raw % 8 == 0 { raw } else { ts.wrapping_add_signed(jitter[i]) };
                r.push(t, &data[..len], |_, f| assert_eq!(f.len(), 160));
                ts = t.wrapping_add(len as u32);
                proptest::prop_assert!(r.pending_samples() < 160);
            }
            r.flush(|_, _| {});
            proptest::prop_assert_eq!(r.pending_samples(), 0);
        }
    }
}
