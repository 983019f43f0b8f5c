//! End to end: every way a call is refused or a request is answered with an error, each with the status, reason
//! and headers a carrier sees, and the server still serving afterwards.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const SIPP_TIMEOUT: Duration = Duration::from_secs(30);

fn expect_status(server: &Server, number: &str, status: u16) -> SippResult {
    let res = Sipp::new(server, "uac_expect_status.xml")
        .service(number)
        .set("expected_status", &status.to_string())
        .run(SIPP_TIMEOUT);
    res.assert_success(&format!("INVITE to {number} answered {status}"));
    res
}

fn records(server: &Server) -> Vec<Value> {
    std::fs::read_to_string(server.data_dir().join("call-records.jsonl"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn unknown_number_is_404() {
    let server = Server::start_embedded_defaults();
    let res = expect_status(&server, "15559999", 404);
    assert!(res.messages.contains("SIP/2.0 404 Not Found"));
    expect_status(&server, "alice", 404);
    assert_eq!(options_ping(server.sip_addr()), Some(200));
}

#[test]
fn call_from_outside_the_trunk_is_403() {
    let config = r#"
[[tenants]]
id = "acme"
[[tenants.apps]]
name = "echo"
kind = "echo"
[[tenants.numbers]]
number = "+15551230002"
app = "echo"
[[tenants.trunks]]
name = "carrier"
allowed_sources = ["192.0.2.0/24"]
"#;
    let server = Server::start(config);
    let res = expect_status(&server, "15551230002", 403);
    assert!(res.messages.contains("403 Forbidden"));
}

#[test]
fn no_common_codec_is_488() {
    let server = Server::start_embedded_defaults();
    let res = Sipp::new(&server, "uac_codec_g729.xml").service("15550100").run(SIPP_TIMEOUT);
    res.assert_success("G.729-only offer");
    assert!(res.messages.contains("SIP/2.0 488 Not Acceptable Here"));
}

#[test]
fn agent_down_at_answer_is_480_with_retry_after() {
    // Nothing listens at the agent URL.
    let agent = Agent::start_with(AgentMode::Refuse);
    let server = Server::start(&acme_config(&agent.url()));
    let res = expect_status(&server, "15551230001", 480);
    assert!(res.messages.contains("Retry-After: 30"), "{}", res.messages);
    // An agent that accepts TCP but never completes the handshake: refused after the connect timeout.
    let silent = Agent::start_with(AgentMode::NeverHandshake);
    let config = acme_config(&silent.url()).replace("connect_timeout_ms = 2000", "connect_timeout_ms = 500");
    let server = Server::start(&config);
    let started = Instant::now();
    expect_status(&server, "15551230001", 480);
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(500) && took < Duration::from_secs(5), "{took:?}");
    let r = &records(&server)[0];
    assert_eq!(r["end_reason"], "agent_unavailable");
    assert!(r["answer_at_ms"].is_null(), "never answered");
}

#[test]
fn cancel_before_answer_is_200_and_487() {
    // The agent never finishes its handshake, so the call stays unanswered long enough to cancel.
    let agent = Agent::start_with(AgentMode::NeverHandshake);
    let server = Server::start(&acme_config(&agent.url()));
    let res = Sipp::new(&server, "uac_cancel.xml").service("15551230001").run(SIPP_TIMEOUT);
    res.assert_success("CANCEL");
    assert!(res.messages.contains("SIP/2.0 487 Request Terminated"), "{}", res.messages);
    wait_until(Duration::from_secs(5), || !records(&server).is_empty());
    assert_eq!(records(&server)[0]["end_reason"], "cancelled");
}

#[test]
fn node_full_is_503_with_retry_after_and_frees_up_after_hangup() {
    let config = format!(
        "[rtp]\ninactivity_timeout_secs = 2\n[limits]\nmax_calls = 1\n\n{}",
        acme_config("ws://127.0.0.1:9/unused")
    );
    let server = Server::start(&config);
    // One call holds the only slot; it sends no RTP, so after 2 s we hang it up with BYE.
    let holder = Sipp::new(&server, "uac_wait_for_bye.xml").service("15551230002").spawn(SIPP_TIMEOUT);
    assert!(wait_until(Duration::from_secs(5), || server.log().contains("incoming call")));
    let res = expect_status(&server, "15551230002", 503);
    assert!(res.messages.contains("Retry-After: 5"), "{}", res.messages);
    holder.wait().assert_success("holder hung up by the inactivity timeout");
    // The slot is released on that hangup path: the next call gets through.
    Sipp::builtin("uac", Some(server.sip_addr()))
        .service("15551230002")
        .run(SIPP_TIMEOUT)
        .assert_success("after hangup");
}

#[test]
fn unsupported_methods_unknown_dialogs_and_malformed_requests() {
    let server = Server::start_embedded_defaults();
    let addr = server.sip_addr();
    let register = "REGISTER sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKreg1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=r1\r\nTo: <sip:a@127.0.0.1>\r\nCall-ID: reg1\r\nCSeq: 1 REGISTER\r\nContact: <sip:a@{local}>\r\nContent-Length: 0\r\n\r\n";
    let resp = sip_udp_exchange(addr, register.as_bytes(), Duration::from_secs(2)).expect("405");
    assert_eq!(sip_status(&resp), Some(405));
    assert_eq!(sip_header(&resp, "Allow").as_deref(), Some("INVITE, ACK, BYE, CANCEL, OPTIONS, INFO"));

    let bye = "BYE sip:fairvox@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKbye1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=b1\r\nTo: <sip:15550100@127.0.0.1>;tag=nosuchdialog\r\nCall-ID: nosuch\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n";
    let resp = sip_udp_exchange(addr, bye.as_bytes(), Duration::from_secs(2)).expect("481");
    assert_eq!(sip_status(&resp), Some(481));

    // CSeq method disagrees with the request method: 400 with a reason that says so.
    let bad = "INVITE sip:15550100@127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bKbad1;rport\r\nMax-Forwards: 70\r\nFrom: <sip:a@127.0.0.1>;tag=x1\r\nTo: <sip:15550100@127.0.0.1>\r\nCall-ID: bad1\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n";
    let resp = sip_udp_exchange(addr, bad.as_bytes(), Duration::from_secs(2)).expect("400");
    assert_eq!(sip_status(&resp), Some(400));
    let status_line = String::from_utf8_lossy(&resp).lines().next().unwrap_or("").to_owned();
    assert!(status_line.len() > "SIP/2.0 400 Bad Request".len(), "the reason phrase says what is wrong: {status_line}");
    assert_eq!(sip_header(&resp, "Call-ID").as_deref(), Some("bad1"));

    // Garbage gets no answer (nothing to answer to) and costs the server nothing.
    assert!(sip_udp_exchange(addr, b"\x00\x01\x02 not sip at all", Duration::from_millis(500)).is_none());
    let huge = vec![b'A'; 60_000];
    assert!(sip_udp_exchange(addr, &huge, Duration::from_millis(500)).is_none());

    // Still serving.
    assert_eq!(options_ping(addr), Some(200));
    Sipp::builtin("uac", Some(addr)).service("15550100").run(SIPP_TIMEOUT).assert_success("a call after the abuse");
}

#[test]
fn options_over_tcp_and_garbage_on_a_tcp_stream() {
    let server = Server::start_embedded_defaults();
    let addr = server.sip_addr();
    let local: std::net::SocketAddr = "127.0.0.1:5999".parse().unwrap();
    let options = options_request(addr, local, "TCP");
    let resp = sip_tcp_exchange(addr, options.as_bytes(), Duration::from_secs(2)).expect("OPTIONS over TCP");
    assert_eq!(sip_status(&resp), Some(200));
    // A stream with no Content-Length cannot be framed: the connection is closed, the server goes on.
    let bad = "OPTIONS sip:127.0.0.1 SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1:5999;branch=z9hG4bKt1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:b@c>\r\nCall-ID: t1\r\nCSeq: 1 OPTIONS\r\n\r\n";
    let _ = sip_tcp_exchange(addr, bad.as_bytes(), Duration::from_millis(500));
    assert_eq!(options_ping(addr), Some(200));
}
