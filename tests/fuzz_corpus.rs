//! Replays every fuzz target's seed corpus (`fuzz/corpus/<target>/*`) through the same entry points the fuzzers
//! use (`fairvox::fuzzing`), so the normal test suite catches a regression on any seed without cargo-fuzz.
//! Each target must have seeds: an empty directory would make this test pass vacuously.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.expect("corpus entry").path();
        let bytes = std::fs::read(&path).expect("corpus file");
        let outcome = std::panic::catch_unwind(|| run(&bytes));
        assert!(outcome.is_ok(), "{target}: {} panicked", path.display());
        // Every prefix too: truncation is the most common real-world corruption.
        for cut in [1, bytes.len() / 3, bytes.len() / 2, bytes.len().saturating_sub(1)] {
            let prefix = &bytes[..cut.min(bytes.len())];
            assert!(
                std::panic::catch_unwind(|| run(prefix)).is_ok(),
                "{target}: prefix {cut} of {} panicked",
                path.display()
            );
        }
        count += 1;
    }
    assert!(count >= 2, "{target}: only {count} seeds in {}", dir.display());
}

#[test]
fn sip_message_corpus() {
    replay("sip_message", fairvox::fuzzing::sip_message);
}

#[test]
fn sip_stream_corpus() {
    replay("sip_stream", fairvox::fuzzing::sip_stream);
}

#[test]
fn sdp_offer_corpus() {
    replay("sdp_offer", fairvox::fuzzing::sdp_offer);
}

#[test]
fn rtp_packet_corpus() {
    replay("rtp_packet", fairvox::fuzzing::rtp_packet);
}

#[test]
fn rtcp_compound_corpus() {
    replay("rtcp_compound", fairvox::fuzzing::rtcp_compound);
}

#[test]
fn dtmf_event_corpus() {
    replay("dtmf_event", fairvox::fuzzing::dtmf_event);
}

#[test]
fn media_stream_json_corpus() {
    replay("media_stream_json", fairvox::fuzzing::media_stream_json);
}
