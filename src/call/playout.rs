//! The outbound buffer of one call: agent audio of any chunk size in, exact 20 ms frames out on each tick, and
//! the agent's marks released once the audio queued before them has been played (or cleared).
//!
//! Positions are counted in samples over the whole call: `queued` (samples ever accepted) and `played` (samples
//! ever taken out by a tick or dropped by `clear`). A mark records `queued` when it arrives and fires as soon as
//! `played` reaches it, so a mark after 1 s of audio fires on the tick that plays its 8000th sample.
//!
//! Memory: the ring grows on demand (never shrinks) and never beyond `max_buffered_bytes` bytes (one byte per
//! µ-law sample; 160 000 = 20 s = 156 KiB per call at most); until an agent sends that much, it stays as small as
//! the largest backlog seen. `next_frame` never allocates; `push_audio` allocates only while the ring grows to a
//! new high-water mark. Pending marks are bounded by `max_pending_marks` (each holds the agent's name string).

use std::collections::VecDeque;

use crate::proto::media_streams::MediaFormat;

/// µ-law silence, used to pad a partial last frame.
pub const ULAW_SILENCE: u8 = 0xFF;

/// Smallest ring allocation, so trickling agents don't cause a string of tiny reallocations (1 s of audio).
const MIN_RING: usize = 8000;

#[derive(Debug)]
pub struct Playout {
    ring: VecDeque<u8>,
    max_bytes: usize,
    /// Bytes per sample: a partial last frame is cut at a whole sample.
    sample_bytes: usize,
    /// The byte that pads a partial last frame (µ-law 0xFF; L16 0, both halves of a zero sample).
    silence: u8,
    /// (position in `queued` units, name), in arrival order; positions never decrease.
    marks: VecDeque<(u64, String)>,
    max_marks: usize,
    queued: u64,
    played: u64,
    dropped: u64,
    cleared: u64,
    refused_marks: u64,
}

impl Playout {
    /// A µ-law playout. `max_buffered_bytes`: the most audio held at once (e.g. 20 s = 160 000);
    /// `max_pending_marks`: the most marks waiting to fire.
    pub fn new(max_buffered_bytes: usize, max_pending_marks: usize) -> Self {
        Self::with_format(MediaFormat::Mulaw8k, max_buffered_bytes, max_pending_marks)
    }

    /// A playout of `format` audio, holding at most `max_buffered_bytes` of it.
    pub fn with_format(format: MediaFormat, max_buffered_bytes: usize, max_pending_marks: usize) -> Self {
        let (sample_bytes, silence) = match format {
            MediaFormat::Mulaw8k => (1, ULAW_SILENCE),
            MediaFormat::L16Wide => (2, 0),
        };
        Playout {
            ring: VecDeque::new(),
            max_bytes: max_buffered_bytes,
            sample_bytes,
            silence,
            marks: VecDeque::new(),
            max_marks: max_pending_marks,
            queued: 0,
            played: 0,
            dropped: 0,
            cleared: 0,
            refused_marks: 0,
        }
    }

    /// Queues agent audio (the stream's format, any length). What doesn't fit under the bound is dropped from the
    /// end of `audio` and counted; returns the number of bytes dropped.
    pub fn push_audio(&mut self, audio: &[u8]) -> usize {
        let room = self.max_bytes - self.ring.len();
        let mut take = audio.len().min(room);
        if take < audio.len() {
            // Cut at a sample boundary of the whole stream, so what comes after the drop stays aligned.
            take -= (self.queued as usize + take) % self.sample_bytes;
        }
        let needed = self.ring.len() + take;
        if needed > self.ring.capacity() {
            // Grow geometrically but never past the bound, so the ring's memory stays bounded by it.
            let target = needed.max(self.ring.capacity() * 2).max(MIN_RING).min(self.max_bytes);
            self.ring.reserve_exact(target - self.ring.len());
        }
        self.ring.extend(&audio[..take]);
        self.queued += take as u64;
        let dropped = audio.len() - take;
        self.dropped += dropped as u64;
        dropped
    }

    /// A mark after all audio queued so far. Refused and counted (returns false) when `max_pending_marks` are
    /// already waiting.
    pub fn push_mark(&mut self, name: String) -> bool {
        if self.marks.len() >= self.max_marks {
            self.refused_marks += 1;
            return false;
        }
        self.marks.push_back((self.queued, name));
        true
    }

    /// Barge-in: drops all queued audio; every pending mark is passed to `marks`, in order, to be echoed now.
    /// Returns the number of bytes dropped.
    pub fn clear(&mut self, mut marks: impl FnMut(String)) -> usize {
        let n = self.ring.len();
        self.ring.clear();
        self.played = self.queued;
        self.cleared += n as u64;
        for (_, name) in self.marks.drain(..) {
            marks(name);
        }
        n
    }

    /// One 20 ms tick. Fills `frame` (160 bytes of µ-law, 640 of L16) with the next audio (a partial tail is padded
    /// with silence) and returns true, or returns false when nothing is queued (the caller sends nothing, or
    /// comfort noise). Marks whose audio has now been played in full, including marks at the head of an empty
    /// queue, go to `marks`.
    pub fn next_frame(&mut self, frame: &mut [u8], mut marks: impl FnMut(String)) -> bool {
        let mut n = self.ring.len().min(frame.len());
        if n < frame.len() {
            // A partial tail plays whole samples; an odd last byte waits for its other half.
            n -= n % self.sample_bytes;
        }
        if n > 0 {
            let (a, b) = self.ring.as_slices();
            let from_a = a.len().min(n);
            frame[..from_a].copy_from_slice(&a[..from_a]);
            frame[from_a..n].copy_from_slice(&b[..n - from_a]);
            frame[n..].fill(self.silence);
            self.ring.drain(..n);
            self.played += n as u64;
        }
        while let Some((at, _)) = self.marks.front() {
            if *at > self.played {
                break;
            }
            if let Some((_, name)) = self.marks.pop_front() {
                marks(name);
            }
        }
        n > 0
    }

    /// Bytes queued and not yet played.
    pub fn buffered_bytes(&self) -> usize {
        self.ring.len()
    }

    /// Bytes dropped because the buffer was full (not counting `clear`).
    pub fn dropped_bytes(&self) -> u64 {
        self.dropped
    }

    /// Bytes dropped by `clear`.
    pub fn cleared_bytes(&self) -> u64 {
        self.cleared
    }

    /// Marks refused because `max_pending_marks` were already waiting.
    pub fn refused_marks(&self) -> u64 {
        self.refused_marks
    }

    /// Marks waiting for their audio to play.
    pub fn pending_marks(&self) -> usize {
        self.marks.len()
    }

    /// Bytes the ring currently holds allocated (for memory accounting).
    pub fn ring_capacity(&self) -> usize {
        self.ring.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::{FRAME_SAMPLES, L16_FRAME_BYTES};

    #[test]
    fn l16_plays_640_byte_frames_pads_with_zero_and_keeps_samples_whole() {
        let mut p = Playout::with_format(MediaFormat::L16Wide, 4000, 4);
        // 701 bytes in two messages, the first ending halfway through a sample.
        let audio: Vec<u8> = (0..701u32).map(|i| (i % 200 + 1) as u8).collect();
        p.push_audio(&audio[..321]);
        p.push_audio(&audio[321..]);
        let mut frame = [9u8; L16_FRAME_BYTES];
        assert!(p.next_frame(&mut frame, |_| {}));
        assert_eq!(&frame[..], &audio[..640]);
        // 61 bytes left: 30 whole samples play, the odd byte waits for its other half.
        assert!(p.next_frame(&mut frame, |_| {}));
        assert_eq!(&frame[..60], &audio[640..700]);
        assert!(frame[60..].iter().all(|b| *b == 0), "L16 silence is zero");
        assert_eq!(p.buffered_bytes(), 1);
        p.push_audio(&[0x42]);
        assert!(p.next_frame(&mut frame, |_| {}));
        assert_eq!(&frame[..2], &[audio[700], 0x42]);
    }

    #[test]
    fn l16_overflow_is_cut_at_a_sample_boundary() {
        let mut p = Playout::with_format(MediaFormat::L16Wide, 1001, 4);
        p.push_audio(&[1; 3]);
        // 998 bytes of room; the stream is at an odd offset, so 997 are taken (ending on a whole sample).
        let dropped = p.push_audio(&[2; 1200]);
        assert_eq!(p.buffered_bytes() % 2, 0);
        assert_eq!(p.buffered_bytes(), 1000);
        assert_eq!(dropped, 1203 - 1000);
        assert_eq!(p.dropped_bytes(), dropped as u64);
    }

    fn tick(p: &mut Playout) -> (Option<[u8; FRAME_SAMPLES]>, Vec<String>) {
        let mut frame = [0u8; FRAME_SAMPLES];
        let mut fired = Vec::new();
        let played = p.next_frame(&mut frame, |m| fired.push(m));
        (played.then_some(frame), fired)
    }

    #[test]
    fn mark_after_one_second_fires_on_the_50th_frame() {
        let mut p = Playout::new(160_000, 16);
        let audio: Vec<u8> = (0..8000u32).map(|i| (i % 251) as u8).collect();
        p.push_audio(&audio);
        assert!(p.push_mark("one-second".into()));
        for i in 1..=50 {
            let (frame, fired) = tick(&mut p);
            let frame = frame.expect("audio queued");
            let start = (i - 1) * FRAME_SAMPLES;
            assert_eq!(&frame[..], &audio[start..start + FRAME_SAMPLES]);
            if i < 50 {
                assert!(fired.is_empty(), "fired early at frame {i}");
            } else {
                assert_eq!(fired, ["one-second"]);
            }
        }
        assert_eq!(tick(&mut p), (None, vec![]));
        assert_eq!(p.pending_marks(), 0);
    }

    #[test]
    fn mark_on_empty_queue_fires_on_next_tick() {
        let mut p = Playout::new(1600, 4);
        assert!(p.push_mark("now".into()));
        assert_eq!(tick(&mut p), (None, vec!["now".to_string()]));
        // Same after audio has drained.
        p.push_audio(&[1; 100]);
        let (frame, fired) = tick(&mut p);
        assert!(fired.is_empty());
        let frame = frame.unwrap();
        assert_eq!(&frame[..100], &[1; 100][..]);
        assert!(frame[100..].iter().all(|&b| b == ULAW_SILENCE), "partial tail padded with silence");
        assert!(p.push_mark("after".into()));
        assert_eq!(tick(&mut p), (None, vec!["after".to_string()]));
    }

    #[test]
    fn marks_interleaved_with_audio_fire_in_order_at_their_positions() {
        let mut p = Playout::new(16_000, 8);
        p.push_audio(&[0; 160]);
        p.push_mark("a".into());
        p.push_mark("b".into());
        p.push_audio(&[0; 170]);
        p.push_mark("c".into());
        assert_eq!(tick(&mut p).1, ["a", "b"]);
        assert_eq!(tick(&mut p).1, Vec::<String>::new());
        let (frame, fired) = tick(&mut p);
        assert!(frame.is_some(), "10-sample tail still makes a frame");
        assert_eq!(fired, ["c"]);
    }

    #[test]
    fn clear_returns_pending_marks_and_empties() {
        let mut p = Playout::new(160_000, 8);
        p.push_audio(&[7; 4000]);
        p.push_mark("m1".into());
        p.push_audio(&[7; 4000]);
        p.push_mark("m2".into());
        tick(&mut p);
        let mut echoed = Vec::new();
        assert_eq!(p.clear(|m| echoed.push(m)), 8000 - 160);
        assert_eq!(echoed, ["m1", "m2"]);
        assert_eq!(p.buffered_bytes(), 0);
        assert_eq!(p.pending_marks(), 0);
        assert_eq!(p.cleared_bytes(), 7840);
        assert_eq!(p.dropped_bytes(), 0);
        assert_eq!(tick(&mut p), (None, vec![]));
        // Audio after a clear plays, and a new mark fires at its own position.
        p.push_audio(&[9; 320]);
        p.push_mark("m3".into());
        assert_eq!(tick(&mut p).1, Vec::<String>::new());
        assert_eq!(tick(&mut p).1, ["m3"]);
    }

    #[test]
    fn bound_is_enforced() {
        let mut p = Playout::new(1000, 2);
        assert_eq!(p.push_audio(&[1; 600]), 0);
        assert_eq!(p.push_audio(&[2; 600]), 200);
        assert_eq!(p.push_audio(&[3; 10]), 10);
        assert_eq!(p.buffered_bytes(), 1000);
        assert_eq!(p.dropped_bytes(), 210);
        assert!(p.ring_capacity() <= 1000, "ring never grows past the bound: {}", p.ring_capacity());
        // The excess was dropped from the end: the last queued sample is from the second push.
        let mut last = [0u8; FRAME_SAMPLES];
        for _ in 0..7 {
            p.next_frame(&mut last, |_| {});
        }
        assert_eq!(&last[..40], &[2; 40][..]);
        assert!(last[40..].iter().all(|&b| b == ULAW_SILENCE));
        // Marks.
        assert!(p.push_mark("a".into()));
        assert!(p.push_mark("b".into()));
        assert!(!p.push_mark("c".into()));
        assert_eq!(p.refused_marks(), 1);
    }

    #[test]
    fn pipecat_chunks_become_exact_frames() {
        let mut p = Playout::new(160_000, 8);
        let mut all = Vec::new();
        for chunk in 0..25u8 {
            let data: Vec<u8> = (0..320).map(|i| chunk.wrapping_mul(31).wrapping_add(i as u8)).collect();
            all.extend_from_slice(&data);
            p.push_audio(&data);
        }
        let mut out = Vec::new();
        while let (Some(frame), _) = tick(&mut p) {
            out.extend_from_slice(&frame);
        }
        assert_eq!(out.len(), 25 * 320);
        assert!(out == all, "frames are the chunks, in order");
    }

    #[test]
    fn odd_chunk_sizes_round_trip_through_the_ring() {
        let mut p = Playout::new(100_000, 8);
        let mut all = Vec::new();
        let mut out = Vec::new();
        let mut n = 0u32;
        // Takes one tick, keeping only the real samples (an underrun pads the frame with silence).
        let tick_into = |p: &mut Playout, out: &mut Vec<u8>| {
            let real = p.buffered_bytes().min(FRAME_SAMPLES);
            let mut frame = [0u8; FRAME_SAMPLES];
            let had = p.next_frame(&mut frame, |_| {});
            assert_eq!(had, real > 0);
            assert!(!had || frame[real..].iter().all(|&b| b == ULAW_SILENCE));
            out.extend_from_slice(&frame[..real]);
            had
        };
        for size in [1usize, 7, 159, 161, 333, 1000, 3, 4096] {
            let data: Vec<u8> = (0..size)
                .map(|_| {
                    n += 1;
                    (n % 253) as u8
                })
                .collect();
            all.extend_from_slice(&data);
            p.push_audio(&data);
            // Interleave ticks so the ring wraps.
            tick_into(&mut p, &mut out);
        }
        while tick_into(&mut p, &mut out) {}
        assert!(out == all, "samples differ ({} vs {})", out.len(), all.len());
    }

    #[test]
    fn no_reallocation_in_steady_state() {
        let mut p = Playout::new(160_000, 8);
        p.push_audio(&[0; 320]);
        let cap = p.ring_capacity();
        let mut frame = [0u8; FRAME_SAMPLES];
        for _ in 0..10_000 {
            p.push_audio(&[1; 320]);
            p.next_frame(&mut frame, |_| {});
            p.next_frame(&mut frame, |_| {});
        }
        assert_eq!(p.ring_capacity(), cap);
    }

    proptest::proptest! {
        #[test]
        fn marks_fire_exactly_when_their_audio_has_played(
            ops in proptest::collection::vec((0usize..700, proptest::bool::ANY, 0u8..4), 1..60)
        ) {
            let mut p = Playout::new(4000, 16);
            // Model: each accepted mark's position (in played samples) and how much had been played when it was
            // queued; each firing with the played count before and after its tick.
            let mut expected: Vec<(String, u64, u64)> = Vec::new();
            let mut fired: Vec<(String, u64, u64)> = Vec::new();
            let mut played = 0u64;
            let mut id = 0;
            for (len, mark, ticks) in ops {
                let before = p.buffered_bytes();
                let dropped = p.push_audio(&vec![0x11; len]);
                proptest::prop_assert_eq!(p.buffered_bytes(), before + len - dropped);
                proptest::prop_assert!(p.buffered_bytes() <= 4000);
                if mark {
                    id += 1;
                    let name = format!("m{id}");
                    if p.push_mark(name.clone()) {
                        expected.push((name, played + p.buffered_bytes() as u64, played));
                    }
                }
                for _ in 0..ticks {
                    let mut frame = [0u8; FRAME_SAMPLES];
                    let buffered = p.buffered_bytes();
                    let mut now = Vec::new();
                    let had = p.next_frame(&mut frame, |m| now.push(m));
                    proptest::prop_assert_eq!(had, buffered > 0);
                    let before = played;
                    played += buffered.min(FRAME_SAMPLES) as u64;
                    for m in now {
                        fired.push((m, before, played));
                    }
                }
            }
            // Drain.
            loop {
                let mut frame = [0u8; FRAME_SAMPLES];
                let buffered = p.buffered_bytes();
                let mut now = Vec::new();
                let had = p.next_frame(&mut frame, |m| now.push(m));
                let before = played;
                played += buffered.min(FRAME_SAMPLES) as u64;
                for m in now {
                    fired.push((m, before, played));
                }
                if !had {
                    break;
                }
            }
            proptest::prop_assert_eq!(fired.len(), expected.len());
            for ((name, before, after), (ename, eat, queued_at)) in fired.iter().zip(&expected) {
                proptest::prop_assert_eq!(name, ename);
                if eat == queued_at {
                    // Nothing was queued before it: it fires on the very next tick.
                    proptest::prop_assert_eq!(*before, *eat, "{} fired late", name);
                } else {
                    // Fired on the tick that played its last preceding sample, not one earlier or later.
                    proptest::prop_assert!(*before < *eat && *eat <= *after, "{} at {}..{} for {}", name, before, after, eat);
                }
            }
        }
    }
}
