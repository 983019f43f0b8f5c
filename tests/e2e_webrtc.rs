//! WebRTC calls end to end (issue 6): headless Chromium calls an app over WHIP and talks to its agent, in µ-law
//! and in L16 16 kHz (then audio above 4 kHz gets through both ways); WHIP's refusals; offboarding ends a tenant's
//! WebRTC calls; the call's record, usage and metrics. Also the L16 option on a SIP call (baresip): upsampled for
//! the agent, the agent's reply filtered down for the caller.
//!
//! The browser is Debian's Chromium driven by `tests/webrtc/whip_call.mjs` (playwright-core; `.ci/run` installs
//! both and runs `npm ci --prefix tests/webrtc`). The refusal tests make their offers with `str0m` in the client
//! role, the same library a native caller would use, so they need no browser.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{Value, json};

const ADMIN: &str = "fvadm_webrtc_e2e_operator_token_0123456789";
/// The tone the browser's fake microphone plays, and the one the agent sends back.
const CALLER_HZ: f64 = 1000.0;
const AGENT_HZ: f64 = 440.0;
/// Tones only a wideband path carries (above 4 kHz, beyond what µ-law at 8 kHz can hold): the `l16_16k` test's.
const WIDE_CALLER_HZ: f64 = 6000.0;
const WIDE_AGENT_HZ: f64 = 5000.0;

#[derive(Clone, Copy)]
struct Api(SocketAddr);

impl Api {
    fn call(&self, method: &str, path: &str, token: &str, body: Option<(&str, &[u8])>) -> HttpReply {
        http_call(self.0, method, path, Some(token), body, Duration::from_secs(20))
            .unwrap_or_else(|| panic!("{method} {path}: no HTTP answer"))
    }

    fn json(&self, status: u16, method: &str, path: &str, token: &str, body: Option<Value>) -> Value {
        let text = body.map(|b| b.to_string());
        let r = self.call(method, path, token, text.as_deref().map(|t| ("application/json", t.as_bytes())));
        assert_eq!(r.status, status, "{method} {path}: {}", r.body);
        serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("{method} {path}: not JSON ({e}): {}", r.body))
    }

    /// A tenant on `plan` with a read-write key; returns the key.
    fn tenant(&self, id: &str, plan: &str) -> String {
        self.json(
            201,
            "POST",
            "/v1/tenants",
            ADMIN,
            Some(json!({"id": id, "name": format!("{id} Inc"), "plan": plan})),
        );
        let key = self.json(
            201,
            "POST",
            &format!("/v1/tenants/{id}/keys"),
            ADMIN,
            Some(json!({"name": "web", "scopes": ["read", "write"]})),
        );
        key["key"].as_str().unwrap().to_owned()
    }

    fn app(&self, key: &str, body: Value) -> String {
        self.json(201, "POST", "/v1/apps", key, Some(body))["id"].as_str().unwrap().to_owned()
    }

    fn number(&self, key: &str, number: &str, app: &str) {
        self.json(201, "POST", "/v1/numbers", key, Some(json!({"number": number, "app_id": app})));
    }

    fn offer(&self, app: &str, key: &str, sdp: &str) -> HttpReply {
        self.call("POST", &format!("/whip/{app}"), key, Some(("application/sdp", sdp.as_bytes())))
    }
}

fn header<'a>(r: &'a HttpReply, name: &str) -> Option<&'a str> {
    r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn error_code(r: &HttpReply) -> String {
    let v: Value = serde_json::from_str(&r.body).unwrap_or_else(|e| panic!("error body is not JSON ({e}): {}", r.body));
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {v}")).to_owned()
}

fn server(extra: &str) -> Server {
    let config =
        format!("[api]\nrequests_per_second = 1000\nburst = 1000\n\n[rtp]\ninactivity_timeout_secs = 60\n\n{extra}");
    Server::start_with(
        &config,
        ServerOptions { env: vec![("FAIRVOX_ADMIN_TOKEN".into(), ADMIN.into())], ..Default::default() },
    )
}

/// An SDP offer as a native WebRTC client makes it (str0m in the client role): Opus sendrecv, one host candidate.
fn native_offer() -> String {
    use str0m::media::{Direction, MediaKind};
    let mut rtc = str0m::RtcConfig::new().build(Instant::now());
    rtc.add_local_candidate(str0m::Candidate::host("127.0.0.1:9".parse().unwrap(), "udp").unwrap());
    let mut change = rtc.sdp_api();
    change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let (offer, _) = change.apply().unwrap();
    offer.to_sdp_string()
}

/// A mono 16-bit WAV of a sine at `hz`, `secs` long, sampled at `rate`.
fn write_tone_wav(path: &Path, hz: f64, secs: u32, rate: u32) {
    let samples: Vec<i16> = (0..rate * secs)
        .map(|i| (12000.0 * (2.0 * std::f64::consts::PI * hz * f64::from(i) / f64::from(rate)).sin()) as i16)
        .collect();
    let data_len = (samples.len() * 2) as u32;
    let mut out = Vec::with_capacity(44 + data_len as usize);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + data_len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    out.extend_from_slice(&1u16.to_le_bytes()); // PCM
    out.extend_from_slice(&1u16.to_le_bytes()); // mono
    out.extend_from_slice(&rate.to_le_bytes());
    out.extend_from_slice(&(rate * 2).to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&16u16.to_le_bytes());
    out.extend_from_slice(b"data");
    out.extend_from_slice(&data_len.to_le_bytes());
    for s in samples {
        out.extend_from_slice(&s.to_le_bytes());
    }
    std::fs::write(path, out).unwrap();
}

use fairvox::codec::g711::{linear_to_ulaw, ulaw_to_linear};

fn harness() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/webrtc");
    assert!(
        dir.join("node_modules/playwright-core").is_dir(),
        "tests/webrtc/node_modules is missing: run `npm ci --prefix tests/webrtc` (.ci/run does)"
    );
    dir.join("whip_call.mjs")
}

/// One browser call, as far as the harness's result: the server (still up), the tenant's key, what the page
/// measured, the agent's `start`, and the caller audio the agent received (raw payload bytes).
struct BrowserCall {
    server: Server,
    api: Api,
    key: String,
    result: Value,
    start: Value,
    inbound: Vec<u8>,
    agent: Agent,
}

/// Headless Chromium calls a `stream` app (`media_format` as given, if any) over WHIP for 6 s; its fake microphone
/// plays `caller_hz`; the agent answers with `agent_hz` in the app's format, paced in real time, until `stop`.
fn browser_call(media_format: Option<&str>, caller_hz: f64, agent_hz: f64) -> BrowserCall {
    let agent = Agent::start();
    let server = server("");
    let api = Api(server.http_addr());
    let key = api.tenant("webco", "pro");
    let mut body = json!({"name": "widget", "stream_url": agent.url()});
    if let Some(format) = media_format {
        body["media_format"] = json!(format);
    }
    let app = api.app(&key, body);
    std::thread::sleep(Duration::from_millis(1200)); // the app routes within a second

    let wav = server.dir().join("caller-tone.wav");
    write_tone_wav(&wav, caller_hz, 4, 48_000);
    let whip_url = format!("http://{}/whip/{app}", server.http_addr());
    let browser = Command::new("node")
        .arg(harness())
        .args(["--whip-url", &whip_url, "--token", &key, "--wav"])
        .arg(&wav)
        .args(["--seconds", "6", "--tone-hz", &agent_hz.to_string(), "--hangup"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("node runs tests/webrtc/whip_call.mjs");

    let conn = agent.wait_for_connection(1, Duration::from_secs(20)).expect("the agent gets the call's stream");
    let start = agent.wait_for_event("start", Duration::from_secs(5)).expect("a start message").msg;
    let wide = start.pointer("/start/mediaFormat/encoding").and_then(Value::as_str) == Some("audio/x-l16");
    let rate = if wide { 16_000.0 } else { 8000.0 };
    let mut phase = 0usize;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(12) && agent.events("stop").is_empty() {
        // 100 ms of the tone in the app's format.
        let n = (rate / 10.0) as usize;
        let samples =
            (0..n).map(|i| (9000.0 * (2.0 * std::f64::consts::PI * agent_hz * (phase + i) as f64 / rate).sin()) as i16);
        let audio: Vec<u8> =
            if wide { samples.flat_map(i16::to_le_bytes).collect() } else { samples.map(linear_to_ulaw).collect() };
        phase += n;
        if !agent.send_to(conn.id, media_message(&agent.stream_sid(Some(conn.id)).unwrap_or_default(), &audio)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = browser.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "harness failed: {}\nstderr: {}", stdout, String::from_utf8_lossy(&out.stderr));
    let result: Value = serde_json::from_str(stdout.lines().last().unwrap_or(""))
        .unwrap_or_else(|e| panic!("harness JSON ({e}): {stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert!(
        agent.wait_for_event("stop", Duration::from_secs(5)).is_some(),
        "the stream stops when the caller hangs up:\n{}",
        agent.dump()
    );
    let inbound = agent.inbound_audio(conn.id);
    BrowserCall { server, api, key, result, start, inbound, agent }
}

/// Every media message carries one 20 ms frame of L16 at 16 kHz: 320 samples, 640 bytes.
fn assert_l16_frames(media: &[Received]) {
    use base64::Engine as _;
    for m in media {
        let payload = m.msg.pointer("/media/payload").and_then(Value::as_str).unwrap_or_default();
        let bytes = base64::engine::general_purpose::STANDARD.decode(payload).unwrap_or_default();
        assert_eq!(bytes.len(), 640, "{}", m.msg);
    }
}

/// The page heard `hz` from the agent: a WebAudio analyser on the remote track found it in at least half its
/// loud samples, and the median peak is within 30 Hz of it.
fn assert_page_heard(result: &Value, hz: f64) {
    let remote = &result["remote_audio"];
    let (hits, samples) = (remote["tone_hits"].as_u64().unwrap_or(0), remote["samples"].as_u64().unwrap_or(0));
    assert!(samples >= 40 && hits * 2 >= samples, "the page hears the agent's {hz} Hz: {remote}");
    let peak = remote["peak_hz_median"].as_f64().unwrap_or(0.0);
    assert!((peak - hz).abs() < 30.0, "peak at {peak} Hz: {remote}");
}

/// `pcm` (at `rate`) is at least 4 s of non-silent audio in which `hz` beats each of `others` by more than 10x.
fn assert_tone(pcm: &[i16], rate: u32, hz: f64, others: &[f64]) {
    assert!(pcm.len() >= rate as usize * 4, "at least 4 s of caller audio, got {} samples at {rate} Hz", pcm.len());
    let rms = (pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / pcm.len() as f64).sqrt();
    assert!(rms > 1000.0, "non-silent: rms {rms}");
    let steady = &pcm[pcm.len() / 4..pcm.len() * 3 / 4];
    let at = goertzel(steady, rate, hz);
    for &other in others {
        let off = goertzel(steady, rate, other);
        assert!(at > 10.0 * off, "{hz} Hz ({at:.0}) dominates {other} Hz ({off:.0})");
    }
}

#[test]
fn a_browser_calls_an_app_over_whip_and_talks_to_its_agent() {
    let BrowserCall { server, api, key, result, start, inbound, agent: _agent } =
        browser_call(None, CALLER_HZ, AGENT_HZ);
    assert_eq!(start.pointer("/start/accountSid").and_then(Value::as_str), Some("webco"), "{start}");
    assert_eq!(
        start.pointer("/start/mediaFormat"),
        Some(&json!({"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}))
    );

    // WHIP: 201, our answer with a host candidate, a Location that DELETE ends.
    assert_eq!(result["post_status"], 201, "{result}");
    assert!(result["location"].as_str().is_some_and(|l| l.starts_with("/whip/sessions/")), "{result}");
    assert_eq!(result["answer_has_candidate"], true, "{result}");
    assert!(result["connected_ms"].as_f64().is_some(), "ICE + DTLS connected: {result}");
    assert_eq!(result["delete_status"], 200, "{result}");

    // The agent's 440 Hz reached the page; the browser's 1 kHz reached the agent as µ-law 8 kHz.
    assert_page_heard(&result, AGENT_HZ);
    let pcm: Vec<i16> = inbound.into_iter().map(ulaw_to_linear).collect();
    assert_tone(&pcm, 8000, CALLER_HZ, &[440.0, 700.0, 1500.0, 2500.0]);

    // The call is recorded like a SIP call, with its transport, and counted in the tenant's metrics.
    let mut calls = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            calls = api.json(200, "GET", "/v1/calls", &key, None)["items"].as_array().unwrap().clone();
            !calls.is_empty()
        }),
        "the call is recorded"
    );
    let record = &calls[0];
    assert_eq!(record["transport"], "webrtc", "{record}");
    assert_eq!(record["codec"], "OPUS", "{record}");
    assert_eq!(record["end_reason"], "caller_hangup", "{record}");
    assert_eq!(record["app"], "widget", "{record}");
    let billed = record["billable_secs"].as_i64().unwrap();
    assert!((5..=12).contains(&billed), "billed the call's length: {record}");
    assert!(
        record["packets_in"].as_i64().unwrap() >= 200 && record["packets_out"].as_i64().unwrap() >= 200,
        "{record}"
    );
    let usage = api.json(200, "GET", "/v1/usage", &key, None);
    let apps = &usage["apps"];
    assert!(
        apps.to_string().contains("widget") && apps.to_string().contains(&format!("\"billable_secs\":{billed}")),
        "usage lists the app with the call's seconds: {usage}"
    );
    let metrics = http_call(server.http_addr(), "GET", "/metrics", Some(ADMIN), None, Duration::from_secs(5)).unwrap();
    assert!(
        metrics.body.contains(r#"fairvox_calls_total{tenant="webco",outcome="caller_hangup"} 1"#),
        "the tenant's call counter: {}",
        metrics.body.lines().filter(|l| l.contains("fairvox_calls_total")).collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn a_browser_calls_an_l16_app_and_audio_above_4_khz_gets_through_both_ways() {
    let call = browser_call(Some("l16_16k"), WIDE_CALLER_HZ, WIDE_AGENT_HZ);
    assert_eq!(
        call.start.pointer("/start/mediaFormat"),
        Some(&json!({"encoding": "audio/x-l16", "sampleRate": 16000, "channels": 1})),
        "{}",
        call.start
    );
    assert_eq!(call.result["post_status"], 201, "{}", call.result);

    // Every media message is one 20 ms frame of L16: 320 samples, 640 bytes.
    let media = call.agent.events("media");
    assert!(media.len() >= 200, "{} media messages", media.len());
    assert_l16_frames(&media);

    // The browser's 6 kHz reached the agent as 6 kHz (at 8 kHz it could not exist; folded, it would be 2 kHz), and
    // the agent's 5 kHz reached the page.
    let pcm: Vec<i16> = call.inbound.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    assert_tone(&pcm, 16_000, WIDE_CALLER_HZ, &[1000.0, 2000.0, 3000.0, 5000.0, 7000.0]);
    assert_page_heard(&call.result, WIDE_AGENT_HZ);

    let mut calls = Vec::new();
    assert!(
        wait_until(Duration::from_secs(10), || {
            calls = call.api.json(200, "GET", "/v1/calls", &call.key, None)["items"].as_array().unwrap().clone();
            !calls.is_empty()
        }),
        "the call is recorded"
    );
    assert_eq!((calls[0]["transport"].as_str(), calls[0]["codec"].as_str()), (Some("webrtc"), Some("OPUS")));
}

#[test]
fn a_sip_call_to_an_l16_app_is_upsampled_for_the_agent_and_its_reply_filtered_down_for_the_caller() {
    let agent = Agent::start();
    let server = server("");
    let api = Api(server.http_addr());
    let key = api.tenant("wideco", "pro");
    let app = api.app(&key, json!({"name": "hd", "stream_url": agent.url(), "media_format": "l16_16k"}));
    api.number(&key, "+15550177", &app);
    std::thread::sleep(Duration::from_millis(1200));

    // baresip speaks 1 kHz (G.711, 8 kHz) for 6 s.
    let wav = server.dir().join("caller-1khz-8k.wav");
    write_tone_wav(&wav, CALLER_HZ, 6, 8000);
    let sip = server.sip_addr();
    let phone = std::thread::spawn(move || Baresip::new().source(wav).call(sip, "15550177", Duration::from_secs(20)));

    let conn = agent.wait_for_connection(1, Duration::from_secs(20)).expect("the agent gets the call's stream");
    let start = agent.wait_for_event("start", Duration::from_secs(5)).expect("a start message").msg;
    assert_eq!(
        start.pointer("/start/mediaFormat"),
        Some(&json!({"encoding": "audio/x-l16", "sampleRate": 16000, "channels": 1})),
        "{start}"
    );
    // The agent answers at 16 kHz with 440 Hz plus 6 kHz: the caller must hear the 440 Hz and not the 6 kHz, which
    // an unfiltered decimation would fold down to 2 kHz.
    let mut phase = 0usize;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(15) && agent.events("stop").is_empty() {
        let audio: Vec<u8> = (0..1600)
            .flat_map(|i| {
                let t = (phase + i) as f64 / 16_000.0;
                let s = 7000.0 * (2.0 * std::f64::consts::PI * AGENT_HZ * t).sin()
                    + 7000.0 * (2.0 * std::f64::consts::PI * 6000.0 * t).sin();
                (s as i16).to_le_bytes()
            })
            .collect();
        phase += 1600;
        if !agent.send_to(conn.id, media_message(&agent.stream_sid(Some(conn.id)).unwrap_or_default(), &audio)) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let heard = phone.join().unwrap();
    assert!(heard.established, "call not established:\n{}", heard.log);
    assert!(agent.wait_for_event("stop", Duration::from_secs(5)).is_some(), "{}", agent.dump());

    // The agent got 16 kHz L16 frames of the caller's 1 kHz, with nothing at its 7 kHz image.
    assert_l16_frames(&agent.events("media"));
    let inbound = agent.inbound_audio(conn.id);
    let pcm: Vec<i16> = inbound.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])).collect();
    assert_tone(&pcm, 16_000, CALLER_HZ, &[440.0, 2000.0, 3000.0, 7000.0]);

    // The caller heard 440 Hz, and no 2 kHz alias of the agent's 6 kHz.
    let steady = &heard.heard[heard.heard.len() / 4..heard.heard.len() * 3 / 4];
    assert!(heard.heard.len() >= 8000 * 3, "heard {} samples", heard.heard.len());
    let (tone, alias) = (goertzel(steady, 8000, AGENT_HZ), goertzel(steady, 8000, 2000.0));
    assert!(tone > 20.0 * alias, "440 Hz ({tone:.0}) vs the 2 kHz alias ({alias:.0})");
}

#[test]
fn whip_refuses_bad_offers_bad_keys_other_tenants_apps_and_calls_over_the_cap() {
    let agent = Agent::start();
    // `free` holds one call at a time here (rate high enough not to interfere).
    let server = server("[plans.free]\nmax_concurrent_calls = 1\ncalls_per_second = 100\nburst = 100\n");
    let api = Api(server.http_addr());
    let alpha = api.tenant("alpha", "free");
    let alpha_app = api.app(&alpha, json!({"name": "desk", "stream_url": agent.url()}));
    let bravo = api.tenant("bravo", "pro");
    let bravo_app = api.app(&bravo, json!({"name": "front", "kind": "echo"}));
    std::thread::sleep(Duration::from_millis(1200));
    let offer = native_offer();

    // Bad SDP: 400 with a JSON error; an offer without audio too; a wrong content type is 415.
    let r = api.offer(&alpha_app, &alpha, "v=0\r\nthis is not an offer\r\n");
    assert_eq!((r.status, error_code(&r).as_str()), (400, "bad_sdp"), "{}", r.body);
    let r = api.offer(&alpha_app, &alpha, "");
    assert_eq!(r.status, 400, "{}", r.body);
    let video_only = offer.replace("m=audio", "m=video").replace("opus/48000/2", "VP8/90000");
    let r = api.offer(&alpha_app, &alpha, &video_only);
    assert_eq!(r.status, 400, "{}", r.body);
    let r = api.call("POST", &format!("/whip/{alpha_app}"), &alpha, Some(("application/json", offer.as_bytes())));
    assert_eq!(r.status, 415, "{}", r.body);

    // Credentials: a wrong key 401, the operator token 403 (WHIP takes a tenant's key), a read-only key 403.
    let r = api.offer(&alpha_app, &misspelt(&alpha), &offer);
    assert_eq!(r.status, 401, "{}", r.body);
    let r = api.offer(&alpha_app, ADMIN, &offer);
    assert_eq!(r.status, 403, "{}", r.body);
    let ro = api.json(201, "POST", "/v1/keys", &alpha, Some(json!({"name": "ro", "scopes": ["read"]})));
    let r = api.offer(&alpha_app, ro["key"].as_str().unwrap(), &offer);
    assert_eq!(r.status, 403, "{}", r.body);

    // Another tenant's app, a made-up app id, a malformed one: the same 404.
    for (app, key) in [(&alpha_app, &bravo), (&bravo_app, &alpha)] {
        let r = api.offer(app, key, &offer);
        assert_eq!((r.status, error_code(&r).as_str()), (404, "not_found"), "{app}: {}", r.body);
    }
    let r = api.offer("app_zzzzzzzzzzzzzzzz", &alpha, &offer);
    assert_eq!(r.status, 404, "{}", r.body);
    let r = api.offer("../../v1/tenants", &alpha, &offer);
    assert_eq!(r.status, 404, "{}", r.body);

    // alpha's one call: 201 with an SDP answer and a Location; CORS lets a page read them.
    let first = api.offer(&alpha_app, &alpha, &offer);
    assert_eq!(first.status, 201, "{}", first.body);
    assert_eq!(header(&first, "content-type"), Some("application/sdp"));
    assert!(first.body.contains("a=ice-lite") && first.body.contains("typ host"), "{}", first.body);
    assert_eq!(header(&first, "access-control-allow-origin"), Some("*"));
    let location = header(&first, "location").expect("Location").to_owned();
    assert!(location.starts_with("/whip/sessions/"), "{location}");

    // Over the cap: 429 with Retry-After, counted for alpha.
    let r = api.offer(&alpha_app, &alpha, &offer);
    assert_eq!((r.status, error_code(&r).as_str()), (429, "concurrent_call_limit"), "{}", r.body);
    assert!(header(&r, "retry-after").and_then(|v| v.parse::<u32>().ok()).is_some_and(|s| s >= 1), "{:?}", r.headers);

    // bravo cannot end alpha's session (404), nor trickle to it; alpha can (PATCH is 405: no trickle needed).
    let r = api.call("DELETE", &location, &bravo, None);
    assert_eq!(r.status, 404, "{}", r.body);
    let r = api.call(
        "PATCH",
        &location,
        &alpha,
        Some(("application/trickle-ice-sdpfrag", b"a=candidate:1 1 udp 1 127.0.0.1 9 typ host\r\n")),
    );
    assert_eq!(r.status, 405, "{}", r.body);
    let r = api.call("DELETE", &location, &alpha, None);
    assert_eq!(r.status, 200, "{}", r.body);
    let r = api.call("DELETE", &location, &alpha, None);
    assert!(
        wait_until(Duration::from_secs(5), || api.call("DELETE", &location, &alpha, None).status == 404),
        "gone: {}",
        r.status
    );

    // The slot came back with the hang-up: alpha calls again.
    let mut again = api.offer(&alpha_app, &alpha, &offer);
    let deadline = Instant::now() + Duration::from_secs(5);
    while again.status == 429 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        again = api.offer(&alpha_app, &alpha, &offer);
    }
    assert_eq!(again.status, 201, "{}", again.body);
    let loc = header(&again, "location").unwrap().to_owned();
    assert_eq!(api.call("DELETE", &loc, &alpha, None).status, 200);

    // A CORS preflight from a page on another origin.
    let r = http_call(server.http_addr(), "OPTIONS", &format!("/whip/{alpha_app}"), None, None, Duration::from_secs(5))
        .unwrap();
    assert_eq!(r.status, 204);
    assert!(header(&r, "access-control-allow-headers").is_some_and(|h| h.contains("Authorization")), "{:?}", r.headers);
    assert!(header(&r, "access-control-allow-methods").is_some_and(|h| h.contains("POST")), "{:?}", r.headers);

    // Refusals are counted per tenant and reason, like SIP's.
    let metrics = http_call(server.http_addr(), "GET", "/metrics", Some(ADMIN), None, Duration::from_secs(5)).unwrap();
    let line = |needle: &str| metrics.body.lines().find(|l| l.starts_with(needle)).map(str::to_owned);
    assert_eq!(
        line(r#"fairvox_calls_rejected_total{tenant="alpha",reason="concurrency"}"#).as_deref(),
        Some(r#"fairvox_calls_rejected_total{tenant="alpha",reason="concurrency"} 1"#)
    );
    assert!(line(r#"fairvox_calls_rejected_total{tenant="alpha",reason="bad_sdp"}"#).is_some(), "bad SDP counted");
    // bravo's echo app takes a call, and the server keeps serving after all that.
    let r = api.offer(&bravo_app, &bravo, &offer);
    assert_eq!(r.status, 201, "{}", r.body);
    let loc = header(&r, "location").unwrap().to_owned();
    assert_eq!(api.call("DELETE", &loc, &bravo, None).status, 200);
}

#[test]
fn offboarding_a_tenant_ends_its_webrtc_calls_at_the_grace_and_not_anyone_elses() {
    let agent = Agent::start();
    let server = server("[offboard]\ngrace_secs = 1\n");
    let api = Api(server.http_addr());
    let delta = api.tenant("delta", "pro");
    let delta_app = api.app(&delta, json!({"name": "desk", "stream_url": agent.url()}));
    let echo = api.tenant("echoco", "pro");
    let echo_app = api.app(&echo, json!({"name": "front", "kind": "echo"}));
    std::thread::sleep(Duration::from_millis(1200));
    let offer = native_offer();

    // One call each, both answered.
    let up = api.offer(&delta_app, &delta, &offer);
    assert_eq!(up.status, 201, "{}", up.body);
    agent.wait_for_event("start", Duration::from_secs(10)).expect("delta's agent got the call");
    let bystander = api.offer(&echo_app, &echo, &offer);
    assert_eq!(bystander.status, 201, "{}", bystander.body);
    let bystander_at = header(&bystander, "location").unwrap().to_owned();

    // delta is offboarded: its WebRTC call ends at the end of the grace, and its agent gets `stop`.
    let asked = Instant::now();
    api.json(202, "POST", "/v1/tenants/delta/offboard", ADMIN, Some(json!({})));
    agent.wait_for_event("stop", Duration::from_secs(8)).expect("the agent got stop");
    let took = asked.elapsed();
    assert!(took < Duration::from_secs(6), "ended {took:?} after the request (grace 1 s)");
    let mut job = Value::Null;
    let finished = wait_until(Duration::from_secs(20), || {
        job = api.json(200, "GET", "/v1/tenants/delta/offboard", ADMIN, None);
        job["status"] == "finished"
    });
    assert!(finished, "the offboarding did not finish: {job:#}");
    assert_eq!(job["steps"][1]["detail"]["calls_ended_at_deadline"], true, "{job:#}");

    // Its record says why, and is in the export (the tenant's data is gone after).
    let (status, _, bundle) = http_download(server.http_addr(), "/v1/tenants/delta/offboard/export", ADMIN);
    assert_eq!(status, 200);
    let calls: Value = serde_json::from_str(&untar(&bundle)["delta-export/calls.json"]).unwrap();
    assert_eq!(calls.as_array().map(Vec::len), Some(1), "{calls:#}");
    assert_eq!(calls[0]["end_reason"], "tenant_offboarded", "{calls:#}");
    assert_eq!(calls[0]["transport"], "webrtc", "{calls:#}");

    // The other tenant's WebRTC call is still up: its own DELETE ends it.
    let r = api.call("DELETE", &bystander_at, &echo, None);
    assert_eq!(r.status, 200, "the bystander's call is still live: {}", r.body);
}
