#![no_main]
//! Fuzz target `sip_message`: the parser must never panic, whatever the bytes. The corpus in `fuzz/corpus/sip_message` is also
//! replayed by the normal test suite (`tests/fuzz_corpus.rs`).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fairvox::fuzzing::sip_message(data);
});
