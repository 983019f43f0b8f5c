#![no_main]
//! Fuzz target `rtp_packet`: the parser must never panic, whatever the bytes. The corpus in `fuzz/corpus/rtp_packet` is also
//! replayed by the normal test suite (`tests/fuzz_corpus.rs`).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fairvox::fuzzing::rtp_packet(data);
});
