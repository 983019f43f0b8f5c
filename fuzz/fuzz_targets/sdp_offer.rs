#![no_main]
//! Fuzz target `sdp_offer`: the parser must never panic, whatever the bytes. The corpus in `fuzz/corpus/sdp_offer` is also
//! replayed by the normal test suite (`tests/fuzz_corpus.rs`).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fairvox::fuzzing::sdp_offer(data);
});
