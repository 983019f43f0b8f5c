#![no_main]
//! Fuzz target `dtmf_event`: the parser must never panic, whatever the bytes. The corpus in `fuzz/corpus/dtmf_event` is also
//! replayed by the normal test suite (`tests/fuzz_corpus.rs`).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fairvox::fuzzing::dtmf_event(data);
});
