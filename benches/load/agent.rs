//! The tenant's agent: a WebSocket server speaking the Twilio Media Streams protocol. It decodes every inbound
//! `media` payload to find the frame's marker (hop latency = now − send instant, same process and clock) and, when
//! talk-back is on, returns the same payload as outbound `media` so the server plays it to the caller. A slow agent
//! ([`serve_with`]: a read delay for every K-th call) sleeps before each read once the call's `start` is in, so the
//! server's stream to it backs up.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::rxstamp::RxStamped;
use crate::stats::{PAYLOAD_LEN, Shared};

/// The agent's WebSocket read buffer (see [`connection`]).
const AGENT_READ_BUFFER: usize = 4096;

#[derive(Deserialize)]
struct Inbound<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(rename = "sequenceNumber", borrow, default)]
    sequence_number: Option<Cow<'a, str>>,
    #[serde(rename = "streamSid", borrow, default)]
    stream_sid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    start: Option<Start<'a>>,
    #[serde(borrow, default)]
    media: Option<Media<'a>>,
}

#[derive(Deserialize)]
struct Start<'a> {
    #[serde(rename = "streamSid", borrow, default)]
    stream_sid: Option<Cow<'a, str>>,
    #[serde(rename = "customParameters", borrow, default)]
    custom_parameters: Option<CustomParameters<'a>>,
}

#[derive(Deserialize)]
struct CustomParameters<'a> {
    #[serde(borrow, default)]
    from_number: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Media<'a> {
    #[serde(borrow, default)]
    track: Option<Cow<'a, str>>,
    #[serde(borrow)]
    payload: Cow<'a, str>,
}

/// The caller number for call `idx`, sent as the From user; the agent maps `customParameters.from_number` back.
pub fn from_number(idx: u32) -> String {
    format!("+1999{idx:07}")
}

fn call_of(from: &str) -> Option<u32> {
    from.strip_prefix("+1999")?.parse().ok()
}

/// Accepts agent connections until aborted; each connection runs in `conns`' tasks.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>, talk_back: bool) {
    serve_with(listener, shared, talk_back, Duration::ZERO, 0).await
}

/// [`serve`], where the connection of every `slow_every`-th call (by call index: 0, K, 2K, ...; 0 = none) sleeps
/// `read_delay` before every read after its `start`.
pub async fn serve_with(
    listener: TcpListener,
    shared: Arc<Shared>,
    talk_back: bool,
    read_delay: Duration,
    slow_every: u32,
) {
    let mut conns = JoinSet::new();
    loop {
        match listener.accept().await {
            Ok((tcp, _)) => {
                let _ = tcp.set_nodelay(true);
                shared.agent.lock().connections += 1;
                conns.spawn(connection(tcp, shared.clone(), talk_back, read_delay, slow_every));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
        while conns.try_join_next().is_some() {}
    }
}

async fn connection(tcp: TcpStream, shared: Arc<Shared>, talk_back: bool, read_delay: Duration, slow_every: u32) {
    let Ok((tcp, rx_stamp)) = RxStamped::new(tcp) else {
        shared.agent.lock().handshake_failures += 1;
        return;
    };
    // tungstenite zero-fills its read buffer up to `read_buffer_size` before every read (128 KiB by default): at
    // tens of thousands of messages a second that memset was the generator core's largest single cost. Media
    // Streams messages are under 1 KiB, so 4 KiB (the server's own size) reads several per call.
    let config = WebSocketConfig::default().read_buffer_size(AGENT_READ_BUFFER);
    let mut ws = match tokio_tungstenite::accept_async_with_config(tcp, Some(config)).await {
        Ok(ws) => ws,
        Err(_) => {
            shared.agent.lock().handshake_failures += 1;
            return;
        }
    };
    let mut owner: Option<u32> = None;
    let mut stream_sid = String::new();
    let mut last_seq: Option<u64> = None;
    let mut payload = [0u8; 4 * PAYLOAD_LEN];
    loop {
        if !read_delay.is_zero() && owner.is_some_and(|call| slow_every != 0 && call % slow_every == 0) {
            tokio::time::sleep(read_delay).await;
        }
        let msg = match ws.next().await {
            Some(Ok(m)) => m,
            Some(Err(_)) => {
                shared.agent.lock().errors += 1;
                return;
            }
            None => {
                shared.agent.lock().closes += 1;
                return;
            }
        };
        let text = match &msg {
            Message::Text(t) => t.as_str(),
            Message::Close(_) => {
                shared.agent.lock().closes += 1;
                return;
            }
            _ => continue,
        };
        let now_ns = shared.now_ns();
        let wire_ns = shared.unix_to_bench_ns(rx_stamp.load(Ordering::Relaxed));
        let Ok(m) = serde_json::from_str::<Inbound>(text) else {
            shared.agent.lock().bad_json += 1;
            continue;
        };
        if let Some(n) = m.sequence_number.as_deref().and_then(|s| s.parse::<u64>().ok()) {
            if last_seq.is_some_and(|l| n != l + 1) {
                shared.agent.lock().sequence_gaps += 1;
            }
            last_seq = Some(n);
        }
        match m.event.as_ref() {
            "media" => {
                let Some(media) = m.media else {
                    shared.agent.lock().bad_json += 1;
                    continue;
                };
                if media.track.as_deref().is_some_and(|t| t != "inbound") {
                    shared.agent.lock().other_events += 1;
                    continue;
                }
                let n = match base64::engine::general_purpose::STANDARD
                    .decode_slice(media.payload.as_bytes(), &mut payload)
                {
                    Ok(n) => n,
                    Err(_) => {
                        shared.agent.lock().bad_json += 1;
                        continue;
                    }
                };
                shared.agent.lock().media_events += 1;
                shared.up.lock().on_payload(owner, &payload[..n], now_ns, &shared.window, shared.late_ns);
                if wire_ns > 0 {
                    shared.up_wire.lock().on_payload(owner, &payload[..n], wire_ns, &shared.window, shared.late_ns);
                }
                if talk_back && !stream_sid.is_empty() {
                    let reply = format!(
                        r#"{{"event":"media","streamSid":"{stream_sid}","media":{{"payload":"{}"}}}}"#,
                        media.payload
                    );
                    let in_window = matches!(
                        crate::stats::Marker::read(&payload[..n]),
                        crate::stats::Decoded::Marker(mk) if shared.window.contains(mk.send_ns)
                    );
                    match ws.send(Message::text(reply)).await {
                        Ok(()) => {
                            shared.agent.lock().talkback_sent += 1;
                            if in_window {
                                shared.back.lock().sent += 1;
                            }
                        }
                        Err(_) => shared.agent.lock().talkback_send_errors += 1,
                    }
                }
            }
            "start" => {
                let start = m.start;
                let from =
                    start.as_ref().and_then(|s| s.custom_parameters.as_ref()).and_then(|c| c.from_number.as_deref());
                owner = from.and_then(call_of);
                let sid = m.stream_sid.or_else(|| start.and_then(|s| s.stream_sid));
                stream_sid = sid.map(Cow::into_owned).unwrap_or_default();
                let mut a = shared.agent.lock();
                a.start_events += 1;
                if owner.is_none() {
                    a.unmapped_starts += 1;
                }
            }
            "connected" => shared.agent.lock().connected_events += 1,
            "stop" => shared.agent.lock().stop_events += 1,
            _ => shared.agent.lock().other_events += 1,
        }
    }
}
