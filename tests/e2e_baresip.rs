//! End to end with a second real phone: baresip calls the demo number and records what it hears. The echo app
//! sends its own audio back, so what it heard must be speech-level audio, not silence.

mod common;

use std::time::Duration;

use common::*;

#[test]
fn baresip_calls_the_demo_number_and_hears_itself() {
    let server = Server::start_embedded_defaults();
    let result = Baresip::new().call(server.sip_addr(), "15550100", Duration::from_secs(20));
    assert!(result.established, "call not established:\n{}", result.log);
    assert!(result.terminated, "baresip did not hang up:\n{}", result.log);
    let sent = g711::rms_dbfs(&result.sent);
    let heard = g711::rms_dbfs(&result.heard);
    assert!(result.heard.len() >= 8000, "heard {} samples", result.heard.len());
    // Silence would be far below -60 dBFS; the echo of speech is within a few dB of what was sent.
    assert!(heard > -40.0, "heard {heard:.1} dBFS (sent {sent:.1} dBFS)");
    assert!((sent - heard).abs() < 10.0, "heard {heard:.1} dBFS vs sent {sent:.1} dBFS");
    let records = std::fs::read_to_string(server.data_dir().join("call-records.jsonl")).unwrap();
    assert!(records.contains("\"end_reason\":\"caller_bye\""), "{records}");
}
