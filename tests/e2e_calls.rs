//! End to end, on real loopback sockets: the real `fairvox` binary, `sipp` as the carrier, and a scripted
//! WebSocket agent speaking the Twilio Media Streams protocol. Each test asserts what each side received.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const SIPP_TIMEOUT: Duration = Duration::from_secs(30);

fn call_records(server: &Server) -> Vec<Value> {
    let path = server.data_dir().join("call-records.jsonl");
    std::fs::read_to_string(&path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("call record is JSON"))
        .collect()
}

fn wait_for_records(server: &Server, n: usize) -> Vec<Value> {
    wait_until(Duration::from_secs(10), || call_records(server).len() >= n);
    call_records(server)
}

/// Concatenated payloads of the RTP packets fairvox sent to the caller, in arrival order.
fn played_audio(packets: &[(Instant, RtpPacket)]) -> Vec<u8> {
    packets.iter().flat_map(|(_, p)| p.payload.clone()).collect()
}

#[test]
fn demo_number_echoes_through_the_whole_pipeline() {
    let server = Server::start_embedded_defaults();
    let sipp = Sipp::new(&server, "uac_pcmu_media.xml").service("15550100");
    let capture = RtpCapture::to_port(sipp.media_port());
    sipp.run(SIPP_TIMEOUT).assert_success("echo call to the demo number");
    let back = capture.stop();
    let rtp: Vec<RtpPacket> = back.iter().filter_map(|c| c.rtp()).collect();
    // 175 audio packets went in (the DTMF packets are not audio); the echo plays them back frame for frame.
    assert!(rtp.len() >= 170, "caller heard {} packets:\n{}", rtp.len(), server.log());
    assert!(rtp.iter().all(|p| p.pt == 0 && p.payload.len() == 160));
    let heard: Vec<u8> = rtp.iter().flat_map(|p| p.payload.clone()).collect();
    let sent = fixtures::pcmu_payload();
    // The speech comes back byte for byte (PCMU in, PCMU out, no transcoding).
    assert_eq!(&heard[..fixtures::SPEECH_BYTES], &sent[..fixtures::SPEECH_BYTES]);
    let records = wait_for_records(&server, 1);
    let r = &records[0];
    assert_eq!(r["tenant"], "demo");
    assert_eq!(r["to"], "+15550100");
    assert_eq!(r["from"], CALLER_NUMBER);
    assert_eq!(r["end_reason"], "caller_bye");
    assert_eq!(r["codec"], "PCMU");
    assert_eq!(r["dtmf_count"], 1);
    assert_eq!(r["packets_in"], fixtures::PCMU_PACKETS as u64);
    assert_eq!(r["packets_lost"], 0);
    assert!(r["packets_out"].as_u64().unwrap() >= 170);
    assert!(r["answer_at_ms"].as_u64().unwrap() >= r["invite_at_ms"].as_u64().unwrap());
    assert!(r["duration_secs"].as_u64().unwrap() >= 3);
}

#[test]
fn the_builtin_sipp_uac_completes_a_call_to_the_demo_number() {
    // What a newcomer runs: `sipp -sn uac 127.0.0.1:5060 -s 15550100 -m 1`.
    let server = Server::start_embedded_defaults();
    Sipp::builtin("uac", Some(server.sip_addr())).service("15550100").run(SIPP_TIMEOUT).assert_success("sipp -sn uac");
    let records = wait_for_records(&server, 1);
    assert_eq!(records[0]["end_reason"], "caller_bye");
}

#[test]
fn stream_call_delivers_start_media_dtmf_marks_and_stop() {
    let agent = Agent::start();
    let server = Server::start(&acme_config(&agent.url()));
    let sipp = Sipp::new(&server, "uac_pcmu_media.xml").service("15551230001");
    let capture = RtpCapture::to_port(sipp.media_port());
    let run = sipp.spawn(SIPP_TIMEOUT);

    let start = agent.wait_for_event("start", Duration::from_secs(10)).expect("start");
    let messages = agent.messages();
    assert_eq!(messages[0].event(), "connected", "connected comes first");
    assert_eq!(messages[0].msg["protocol"], "Call");
    let s = &start.msg;
    assert_eq!(s["sequenceNumber"], "1");
    assert_eq!(s["start"]["accountSid"], "acme");
    assert_eq!(s["start"]["tracks"], json!(["inbound"]));
    assert_eq!(s["start"]["customParameters"]["from_number"], CALLER_NUMBER);
    assert_eq!(s["start"]["customParameters"]["to_number"], ACME_STREAM_NUMBER);
    assert_eq!(s["start"]["customParameters"]["lang"], "en");
    assert_eq!(s["start"]["mediaFormat"], json!({"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}));
    let stream_sid = s["streamSid"].as_str().unwrap().to_owned();
    assert!(stream_sid.starts_with("MZ") && stream_sid.len() == 34);
    assert!(s["start"]["callSid"].as_str().unwrap().starts_with("CA"));

    // The agent speaks: 1 s of tone, then a mark. The mark must come back only after that second was played.
    let tone = fixtures::tone1k_ulaw();
    let sent_at = Instant::now();
    agent.send(media_message(&stream_sid, &tone));
    agent.send(json!({"event":"mark","streamSid":stream_sid,"mark":{"name":"tone-done"}}));
    let mark = agent.wait_for_event("mark", Duration::from_secs(5)).expect("mark echoed");
    assert_eq!(mark.msg["mark"]["name"], "tone-done");
    let waited = mark.at.duration_since(sent_at);
    assert!(waited >= Duration::from_millis(900), "mark echoed after {waited:?}, before its audio was played");
    assert!(waited <= Duration::from_millis(2000), "mark echoed late: {waited:?}");

    let result = run.wait();
    result.assert_success("stream call");
    let stop = agent.wait_for_event("stop", Duration::from_secs(5)).expect("stop after BYE");
    assert_eq!(stop.msg["stop"]["accountSid"], "acme");
    assert!(agent.wait_for_close(0, Duration::from_secs(5)).is_some(), "socket closed after stop");

    // Media: every frame is 160 bytes, numbered, and the bytes are what sipp sent.
    let media = agent.events("media");
    assert!(media.iter().all(|m| m.msg["media"]["track"] == "inbound"));
    for (i, m) in media.iter().enumerate() {
        assert_eq!(m.msg["media"]["chunk"], (i + 1).to_string());
    }
    let inbound = agent.inbound_audio(0);
    assert_eq!(inbound.len() % 160, 0);
    let sent = fixtures::pcmu_payload();
    assert_eq!(&inbound[..fixtures::SPEECH_BYTES], &sent[..fixtures::SPEECH_BYTES], "speech byte for byte");
    let tail = &sent[fixtures::SPEECH_BYTES..];
    let found = inbound.windows(tail.len()).any(|w| w == tail);
    assert!(found, "the tone after the digit arrives intact");
    // Sequence numbers count every message after `connected`.
    let seqs: Vec<u64> =
        agent.messages().iter().skip(1).map(|m| m.msg["sequenceNumber"].as_str().unwrap().parse().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "sequenceNumber increments by one");
    // The digit, once.
    let dtmf = agent.events("dtmf");
    assert_eq!(dtmf.len(), 1, "{}", agent.dump());
    assert_eq!(dtmf[0].msg["dtmf"]["digit"], "5");
    assert_eq!(dtmf[0].msg["dtmf"]["track"], "inbound_track");

    // The caller heard the agent's tone, paced: 50 frames of 20 ms.
    let rtp = capture.rtp();
    let heard = played_audio(&rtp);
    assert!(heard.len() >= tone.len(), "caller heard {} bytes", heard.len());
    assert_eq!(&heard[..tone.len()], &tone[..], "the agent's audio reaches the caller byte for byte");
    let span = rtp[49].0.duration_since(rtp[0].0);
    assert!(span >= Duration::from_millis(900) && span <= Duration::from_millis(1200), "50 frames took {span:?}");
    assert!(rtp[0].1.marker, "marker bit on the first packet of a talk spurt");

    let records = wait_for_records(&server, 1);
    assert_eq!(records[0]["call_sid"], s["start"]["callSid"]);
    assert_eq!(records[0]["app"], "receptionist");
}

#[test]
fn clear_cuts_playback_short_and_flushes_marks() {
    let agent = Agent::start();
    let server = Server::start(&acme_config(&agent.url()));
    let sipp = Sipp::new(&server, "uac_wait_for_bye.xml").service("15551230001");
    let capture = RtpCapture::to_port(sipp.media_port());
    let run = sipp.spawn(SIPP_TIMEOUT);
    let start = agent.wait_for_event("start", Duration::from_secs(10)).expect("start");
    let sid = start.msg["streamSid"].as_str().unwrap().to_owned();
    // 5 s of audio in Pipecat-sized chunks (40 ms), then a mark.
    let tone = fixtures::tone1k_ulaw();
    for chunk in tone.iter().cycle().take(40_000).copied().collect::<Vec<u8>>().chunks(320) {
        agent.send(media_message(&sid, chunk));
    }
    agent.send(json!({"event":"mark","streamSid":sid,"mark":{"name":"after-5s"}}));
    std::thread::sleep(Duration::from_millis(500));
    let cleared_at = Instant::now();
    agent.send(json!({"event":"clear","streamSid":sid}));
    let mark = agent.wait_for_event("mark", Duration::from_secs(2)).expect("pending mark echoed at clear");
    assert!(mark.at.duration_since(cleared_at) < Duration::from_millis(300), "mark came back at the clear");
    std::thread::sleep(Duration::from_millis(1000));
    let played = capture.rtp().len();
    // About 25 frames were played before the clear; 250 would have been played without it.
    assert!((10..=60).contains(&played), "{played} frames played around a clear at 0.5 s");
    agent.close();
    run.wait().assert_success("agent hangs up: fairvox sends BYE");
    drop(server);
}

#[test]
fn pcma_at_30ms_is_reframed_into_20ms_ulaw_frames() {
    let agent = Agent::start();
    let server = Server::start(&acme_config(&agent.url()));
    Sipp::new(&server, "uac_pcma_30ms.xml").service("15551230001").run(SIPP_TIMEOUT).assert_success("PCMA call");
    agent.wait_for_event("stop", Duration::from_secs(5)).expect("stop");
    let media = agent.events("media");
    // 100 packets of 30 ms = 3 s = 150 frames of 20 ms.
    assert_eq!(media.len(), 150, "{} frames", media.len());
    let inbound = agent.inbound_audio(0);
    let alaw = fixtures::read("speech.alaw");
    let expected: Vec<u8> = alaw.iter().map(|&a| fairvox::codec::g711::alaw_to_ulaw(a)).collect();
    assert_eq!(inbound, expected, "A-law converted to µ-law, re-framed, byte for byte");
    let records = wait_for_records(&server, 1);
    assert_eq!(records[0]["codec"], "PCMA");
}

#[test]
fn sip_info_dtmf_and_reinvite_hold_keep_the_call() {
    let agent = Agent::start();
    let server = Server::start(&acme_config(&agent.url()));
    Sipp::new(&server, "uac_info_dtmf.xml").service("15551230001").run(SIPP_TIMEOUT).assert_success("INFO");
    let dtmf = agent.wait_for_event("dtmf", Duration::from_secs(5)).expect("INFO digit reaches the agent");
    assert_eq!(dtmf.msg["dtmf"]["digit"], "7");
    let res = Sipp::new(&server, "uac_reinvite_hold.xml").service("15551230001").run(SIPP_TIMEOUT);
    res.assert_success("re-INVITE hold and resume");
    assert!(res.messages.contains("a=recvonly"), "hold answered recvonly");
    let records = wait_for_records(&server, 2);
    assert!(records.iter().all(|r| r["end_reason"] == "caller_bye"), "{records:?}");
}

#[test]
fn tcp_call_with_media() {
    let server = Server::start(&acme_config("ws://127.0.0.1:9/unused"));
    let sipp = Sipp::new(&server, "uac_tcp_pcmu_media.xml").service("15551230002").tcp();
    let capture = RtpCapture::to_port(sipp.media_port());
    sipp.run(SIPP_TIMEOUT).assert_success("echo call over TCP");
    assert!(capture.stop().len() >= 170, "echo over a TCP-signalled call");
    let records = wait_for_records(&server, 1);
    assert_eq!(records[0]["end_reason"], "caller_bye");
}

#[test]
fn agent_hanging_up_mid_call_sends_bye_to_the_caller() {
    let agent = Agent::start();
    let server = Server::start(&acme_config(&agent.url()));
    let run = Sipp::new(&server, "uac_media_wait_for_bye.xml").service("15551230001").spawn(SIPP_TIMEOUT);
    agent.wait_for_event("start", Duration::from_secs(10)).expect("start");
    agent.wait_for(Duration::from_secs(5), |m| m.iter().filter(|r| r.event() == "media").count() >= 10);
    agent.close();
    run.wait().assert_success("caller receives BYE after the agent closes");
    let records = wait_for_records(&server, 1);
    assert_eq!(records[0]["end_reason"], "agent_hangup");
}

#[test]
fn rtp_inactivity_timeout_hangs_up_with_bye() {
    let config = format!("[rtp]\ninactivity_timeout_secs = 2\n\n{}", acme_config("ws://127.0.0.1:9/unused"));
    let server = Server::start(&config);
    let started = Instant::now();
    // The caller sends no RTP at all and waits for our BYE.
    Sipp::new(&server, "uac_wait_for_bye.xml").service("15551230002").run(SIPP_TIMEOUT).assert_success("BYE");
    let took = started.elapsed();
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(8), "BYE after {took:?}");
    let records = wait_for_records(&server, 1);
    assert_eq!(records[0]["end_reason"], "rtp_timeout");
}

#[test]
fn sigterm_drains_active_calls_with_bye_and_stop() {
    let agent = Agent::start();
    let mut server = Server::start(&acme_config(&agent.url()));
    let run = Sipp::new(&server, "uac_wait_for_bye.xml").service("15551230001").spawn(SIPP_TIMEOUT);
    agent.wait_for_event("start", Duration::from_secs(10)).expect("start");
    server.signal(libc::SIGTERM);
    run.wait().assert_success("caller gets BYE at drain");
    agent.wait_for_event("stop", Duration::from_secs(5)).expect("agent gets stop at drain");
    let status = server.stop(Duration::from_secs(15)).expect("server exits");
    assert!(status.success(), "exit status {status:?}");
    let records = call_records(&server);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["end_reason"], "server_drain");
}
