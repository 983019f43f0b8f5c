#![no_main]
//! Fuzz target `rtcp_compound`: the parser must never panic, whatever the bytes. The corpus in `fuzz/corpus/rtcp_compound` is also
//! replayed by the normal test suite (`tests/fuzz_corpus.rs`).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fairvox::fuzzing::rtcp_compound(data);
});
