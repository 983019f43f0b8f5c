#![no_main]
//! Fuzz target `media_stream_json`: the parser must never panic, whatever the bytes. The corpus in `fuzz/corpus/media_stream_json` is also
//! replayed by the normal test suite (`tests/fuzz_corpus.rs`).

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fairvox::fuzzing::media_stream_json(data);
});
