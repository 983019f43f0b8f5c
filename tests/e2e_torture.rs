//! End to end: all 49 RFC 4475 torture messages are sent, exactly as the RFC gives them, to a running server over
//! UDP. Each gets the answer the parser decided (400/505 for invalid requests that can be answered, a final
//! response for valid requests, nothing for responses and unanswerable ones), and after each one the server
//! still answers OPTIONS. The per-message decisions are tabulated in `src/proto/sip/tests.rs`.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use common::*;
use fairvox::proto::sip::{self, Limits, Message};

#[test]
fn every_torture_message_is_answered_as_decided_and_the_server_keeps_serving() {
    let server = Server::start_embedded_defaults();
    let addr = server.sip_addr();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rfc4475");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.retain(|p| p.extension().is_some_and(|e| e == "dat"));
    files.sort();
    assert_eq!(files.len(), 49);
    let (mut answered, mut rejected, mut silent) = (0, 0, 0);
    // One socket, like one carrier: two RFC 4475 messages (cparam01/cparam02) share branch and sent-by, so by
    // RFC 3261 §17.2.3 the second is a retransmission of the first and gets the first one's response again.
    let client = SipUdpClient::new(addr);
    let mut transactions: HashMap<(String, String, String), String> = HashMap::new();
    let mut earlier_call_ids: HashSet<String> = HashSet::new();
    for path in &files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(path).unwrap();
        // What the server should do, from its own parser (whose decisions the unit table pins per file).
        let (expected, call_id): (Option<u16>, Option<String>) = match sip::parse_message(&bytes, &Limits::default()) {
            Err(e) => (sip::error_response(&e).map(|_| e.status()), e.context.as_ref().and_then(|c| c.call_id.clone())),
            Ok(Message::Request(r)) if r.method == sip::Method::Ack => (None, None),
            Ok(Message::Request(r)) => {
                let via = &r.via[0];
                let key = (
                    via.branch.clone().unwrap_or_default(),
                    format!("{}:{:?}", via.host.to_ascii_lowercase(), via.port),
                    r.method.as_str().to_owned(),
                );
                let first = transactions.entry(key).or_insert_with(|| r.call_id.clone()).clone();
                (Some(0), Some(first)) // some final response, for this (or the matching earlier) transaction
            }
            Ok(Message::Response(_)) => (None, None),
        };
        client.recv_all(Duration::from_millis(50), Duration::from_millis(200)); // stale retransmissions
        client.send(&bytes);
        let wait = Duration::from_millis(if expected.is_some() { 3000 } else { 400 });
        let got = client.recv_all(Duration::from_millis(400), wait).into_iter().find(|m| {
            let response_call_id = sip_header(m, "Call-ID").map(|c| c.trim().to_owned());
            let about_this = match (&call_id, &response_call_id) {
                (Some(want), Some(have)) => want == have,
                // No Call-ID to match: anything not about an earlier message is about this one.
                (None, Some(have)) => !earlier_call_ids.contains(have),
                (_, None) => true,
            };
            sip_status(m).is_some_and(|s| s >= 200) && about_this
        });
        if let Some(id) = raw_call_id(&bytes) {
            earlier_call_ids.insert(id);
        }
        let status = got.as_deref().and_then(sip_status);
        match expected {
            Some(0) => {
                assert!(status.is_some(), "{name}: valid request got no final response");
                answered += 1;
            }
            Some(s) => {
                assert_eq!(status, Some(s), "{name}: invalid request");
                rejected += 1;
            }
            None => {
                assert_eq!(status, None, "{name}: must not be answered");
                silent += 1;
            }
        }
        assert_eq!(options_ping(addr), Some(200), "server stopped answering after {name}");
    }
    // The split the facade's table decides: 24 valid requests answered, 22 invalid ones refused with 400/505, 3
    // left unanswered (the two responses that parse and the unanswerable ones).
    assert!(answered >= 20 && rejected >= 18, "answered {answered}, rejected {rejected}, silent {silent}");
    assert!(server.log().contains("fairvox serving"));
}

/// The Call-ID of a raw message, however malformed the rest is (full or compact header name).
fn raw_call_id(bytes: &[u8]) -> Option<String> {
    String::from_utf8_lossy(bytes).lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        let name = name.trim();
        (name.eq_ignore_ascii_case("call-id") || name.eq_ignore_ascii_case("i")).then(|| value.trim().to_owned())
    })
}
