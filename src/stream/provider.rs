//! The WebSocket client to a tenant's agent, speaking the Twilio Media Streams protocol.
//!
//! [`connect`] opens the socket (TCP + WebSocket handshake, within a deadline); [`ProviderSocket::spawn`] hands it
//! to one task per call that reads it. The call driver talks to the stream through the returned
//! [`ProviderHandle`]: its [`AgentSink`] takes caller audio, DTMF and marks whose audio has played; its bounded
//! channels carry [`ToAgent`] in (the same messages, and stop) and [`FromAgent`] out (agent audio, marks, clear, and
//! finally `Closed`).
//!
//! Two ways out to the agent:
//! * **Direct** (`ws://`): the socket's write side is an [`Outbox`] (`stream::outbox`), the one owner of the bytes
//!   sent, which the media worker serving the call writes to in the call's turn (so the write is spent in the fair
//!   scheduler's order, with no task wake-up per frame), as do the call's task (marks) and this task (hello, stop,
//!   and tungstenite's pong and close frames, through [`AgentIo`]). The task only reads.
//! * **Through the task** (`wss://`, and the echo app): messages cross the bounded `ToAgent` channel to the task,
//!   which writes them with tungstenite. TLS records cannot be written by two parties, so TLS keeps this path.
//!
//! The task `select!`s over: room in the `FromAgent` channel for held-back control messages, the `ToAgent`
//! channel, the socket, and (direct) the outbox's health once a second and its requests to flush when no media
//! worker does. Nothing is locked across an `.await`; counters are atomics.
//!
//! Per outgoing message: the JSON is written into one reused `String` by [`StreamWriter`], then copied into a
//! reused `BytesMut` whose frozen slice becomes the tungstenite `Message` (tungstenite's `Message` owns its
//! payload). tungstenite copies the payload into its write buffer and drops it during `feed`, so the next
//! message reclaims the same `BytesMut` allocation: no heap allocation per message in steady state, two memcpys.
//! Per incoming message: tungstenite hands out a slice of its read buffer, the parser borrows from it, and the
//! only allocation is the decoded audio `Vec<u8>` (or mark name) that travels in [`FromAgent`].
//!
//! Slow consumer policy: agent audio that finds the `FromAgent` channel full is dropped and counted
//! (`dropped_slow_consumer`); marks and clears are never dropped for that reason alone: they wait, in order, in
//! a small queue (up to [`MAX_HELD_CONTROL`]) that is drained as the channel frees up, and while any wait, later
//! audio is dropped too, so a clear can't overtake audio or wipe audio that came after it.

use std::collections::VecDeque;
use std::io;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::{TryRecvError, TrySendError};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::http::header::AUTHORIZATION;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{self, Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tracing::{Instrument, debug, info, warn};

use super::outbox::{self, Outbox, Refused};
use crate::call::{FRAME_MS, Frame, FrameAudio};
use crate::metrics::{Direction as MetricDirection, TenantMetrics};
use crate::proto::media_streams::{AgentMessage, AgentMessageError, StreamStart, StreamWriter, parse_agent_message};

/// A single write (or batch of writes) to the agent taking longer than this ends the stream: the agent has
/// stopped reading.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the closing handshake (our `stop` + close frame, their close frame) may take.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the task waits for room to deliver held-back messages and `Closed` once the socket is done.
pub const FINAL_DELIVERY_TIMEOUT: Duration = Duration::from_secs(5);
/// Marks and clears held back while the `FromAgent` channel is full; beyond this they are dropped and counted.
pub const MAX_HELD_CONTROL: usize = 64;
/// Most `ToAgent` messages written before one flush.
const MAX_BATCH: usize = 16;
/// Largest WebSocket message or frame accepted from an agent; a larger one ends the stream (memory bound).
/// Messages between [`crate::proto::media_streams::MAX_AGENT_MESSAGE_BYTES`] and this are counted as `too_large` and ignored.
pub const MAX_WS_MESSAGE_BYTES: usize = 4 << 20;
/// Initial size of the socket's read buffer (agent messages are typically < 1 KiB; it grows for larger ones).
const READ_BUFFER_BYTES: usize = 4 << 10;
/// Initial size of the reused buffer that outgoing message payloads are cut from.
const OUT_BYTES: usize = 2 << 10;
/// Malformed agent messages logged at `warn` per stream; later ones at `debug`.
const MALFORMED_WARNINGS: u64 = 3;

/// What the call driver sends to the stream task.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant, reason = "frames travel inline, not boxed: no allocation per frame")]
pub enum ToAgent {
    /// One frame of caller audio; its `timestamp` is `frame.seq * 20` ms (media time, see [`ProviderSocket::spawn`]).
    Media(Frame),
    Dtmf(char),
    /// A mark whose audio has been played (or cleared): echoed to the agent.
    MarkPlayed(String),
    /// Send `stop`, close the socket, end.
    Stop,
}

/// What the stream task (or the echo app) sends to the call driver.
#[derive(Clone, Debug, PartialEq, Eq)]
#[allow(clippy::large_enum_variant, reason = "frames travel inline, not boxed: no allocation per frame")]
pub enum FromAgent {
    /// Agent audio in the stream's format (µ-law 8 kHz, or L16 16 kHz), any length.
    Media(Vec<u8>),
    /// Exactly one frame of audio (the echo app).
    Frame(FrameAudio),
    Mark(String),
    Clear,
    /// The last message: the stream has ended.
    Closed(CloseReason),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// The agent closed the WebSocket (close frame, or end of stream).
    AgentClosed,
    /// The socket failed (IO, protocol, a write that stalled past [`WRITE_TIMEOUT`]).
    Error(String),
    /// We were told to stop (`ToAgent::Stop` or the `ToAgent` sender dropped).
    Stopped,
}

/// Number of per-kind malformed counters (one per [`AgentMessageError::LABELS`] entry).
pub const MALFORMED_KINDS: usize = AgentMessageError::LABELS.len();

/// Counters of one stream, shared with the driver (read them with `load(Relaxed)`).
#[derive(Debug, Default)]
pub struct ProviderStats {
    /// Messages written to the agent (including `connected`, `start`, `stop`).
    pub messages_out: AtomicU64,
    pub media_out: AtomicU64,
    pub dtmf_out: AtomicU64,
    pub marks_out: AtomicU64,
    /// Bytes of JSON written to the agent.
    pub bytes_out: AtomicU64,
    /// Text and binary messages received from the agent (not pings/pongs/close).
    pub messages_in: AtomicU64,
    pub media_in: AtomicU64,
    /// Decoded µ-law bytes received.
    pub media_in_bytes: AtomicU64,
    pub marks_in: AtomicU64,
    pub clears_in: AtomicU64,
    /// Well-formed messages with events we don't act on.
    pub ignored_in: AtomicU64,
    /// Unusable messages (all text errors, plus binary messages).
    pub malformed_in: AtomicU64,
    /// Text errors by kind, indexed by [`AgentMessageError::index`].
    pub malformed_by_kind: [AtomicU64; MALFORMED_KINDS],
    /// Binary messages (the protocol is text-only; they are ignored).
    pub binary_in: AtomicU64,
    pub pings_in: AtomicU64,
    /// Messages for the driver dropped because its channel was full (or it had gone).
    pub dropped_slow_consumer: AtomicU64,
}

impl ProviderStats {
    /// Malformed-message counts by label.
    pub fn malformed_by_label(&self) -> [(&'static str, u64); MALFORMED_KINDS] {
        std::array::from_fn(|i| (AgentMessageError::LABELS[i], self.malformed_by_kind[i].load(Relaxed)))
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Relaxed);
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// Resolution, TCP connect and handshake together took longer than the deadline.
    #[error("connecting to the agent timed out")]
    Timeout,
    /// No TCP connection: refused, unreachable, reset.
    #[error("cannot connect to the agent: {0}")]
    Refused(String),
    /// TCP connected, but the WebSocket upgrade failed (HTTP status, bad response, connection dropped).
    #[error("WebSocket handshake with the agent failed: {0}")]
    Handshake(String),
    #[error("bad agent URL: {0}")]
    BadUrl(String),
    /// The host name did not resolve.
    #[error("cannot resolve the agent host: {0}")]
    Resolve(String),
    /// The `Authorization` value is not a valid HTTP header value (the value itself is never shown).
    #[error("the Authorization header value is not a valid HTTP header value")]
    BadAuthHeader,
}

impl ConnectError {
    pub fn label(&self) -> &'static str {
        match self {
            ConnectError::Timeout => "timeout",
            ConnectError::Refused(_) => "refused",
            ConnectError::Handshake(_) => "handshake",
            ConnectError::BadUrl(_) => "bad_url",
            ConnectError::Resolve(_) => "resolve",
            ConnectError::BadAuthHeader => "bad_auth_header",
        }
    }
}

/// A connected WebSocket to an agent, not yet streaming.
pub struct ProviderSocket {
    ws: AgentWs,
}

impl std::fmt::Debug for ProviderSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.ws {
            AgentWs::Plain(_) => "ws",
            AgentWs::Tls(_) => "wss",
        };
        f.debug_struct("ProviderSocket").field("kind", &kind).finish()
    }
}

// One per call, moved once into its task: the size difference between the variants costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
enum AgentWs {
    Plain(WebSocketStream<AgentIo>),
    Tls(WebSocketStream<MaybeTlsStream<TcpStream>>),
}

/// The driver's side of one stream.
#[derive(Debug)]
pub struct ProviderHandle {
    /// To the stream's task: stop (and, through the task, any message).
    pub tx: mpsc::Sender<ToAgent>,
    pub rx: mpsc::Receiver<FromAgent>,
    pub stats: Arc<ProviderStats>,
    /// Where caller audio, DTMF and marks go: straight to the socket's outbox, or through `tx`.
    pub sink: AgentSink,
}

/// Where the call's messages to the agent go (see the module docs). Cloned into the media workers.
#[derive(Clone)]
pub enum AgentSink {
    /// Through the stream task's bounded channel.
    Channel(mpsc::Sender<ToAgent>),
    /// Written at once by the caller, through the socket's outbox.
    Direct(Arc<Outbox>),
}

impl std::fmt::Debug for AgentSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AgentSink::Channel(_) => "AgentSink::Channel",
            AgentSink::Direct(_) => "AgentSink::Direct",
        })
    }
}

/// A message the sink did not take (the agent is not keeping up, or the stream has ended): the caller counts it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct NotTaken;

impl AgentSink {
    /// One frame of caller audio; never waits.
    pub fn media(&self, frame: Frame) -> Result<(), NotTaken> {
        match self {
            AgentSink::Channel(tx) => tx.try_send(ToAgent::Media(frame)).map_err(|_| NotTaken),
            AgentSink::Direct(outbox) => outbox.media(&frame).map_err(|_: Refused| NotTaken),
        }
    }

    /// A DTMF digit; never waits.
    pub fn dtmf(&self, digit: char) -> Result<(), NotTaken> {
        match self {
            AgentSink::Channel(tx) => tx.try_send(ToAgent::Dtmf(digit)).map_err(|_| NotTaken),
            AgentSink::Direct(outbox) => outbox.dtmf(digit).map_err(|_| NotTaken),
        }
    }

    /// Echo of a mark whose audio has played; never waits.
    pub fn mark_played(&self, name: String) -> Result<(), NotTaken> {
        match self {
            AgentSink::Channel(tx) => tx.try_send(ToAgent::MarkPlayed(name)).map_err(|_| NotTaken),
            AgentSink::Direct(outbox) => outbox.mark(&name).map_err(|_| NotTaken),
        }
    }

    /// The socket's outbox, when the stream is written directly.
    pub fn outbox(&self) -> Option<&Arc<Outbox>> {
        match self {
            AgentSink::Direct(outbox) => Some(outbox),
            AgentSink::Channel(_) => None,
        }
    }
}

/// The byte stream under a plain (`ws://`) WebSocket: reads come from the TCP socket through tokio; writes go
/// straight to the socket until the stream starts and to its [`Outbox`] after, so that every byte to the agent,
/// tungstenite's pong and close frames included, passes through the one owner of the write side.
pub struct AgentIo {
    tcp: Arc<TcpStream>,
    outbox: Option<Arc<Outbox>>,
}

impl AsyncRead for AgentIo {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            ready!(self.tcp.poll_read_ready(cx))?;
            match self.tcp.try_read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                // try_read cleared the readiness: poll_read_ready registers for the next edge.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for AgentIo {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(outbox) = &self.outbox {
            return Poll::Ready(outbox.raw(buf).map(|()| buf.len()));
        }
        loop {
            ready!(self.tcp.poll_write_ready(cx))?;
            match self.tcp.try_write(buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                other => return Poll::Ready(other),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // Nothing is buffered here: a write went to the socket or to the outbox, which flushes on its own.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // With an outbox, pending bytes must still go out: the connection closes when both descriptors do.
        if self.outbox.is_none() {
            let _ = socket2::SockRef::from(&*self.tcp).shutdown(std::net::Shutdown::Write);
        }
        Poll::Ready(Ok(()))
    }
}

fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(MAX_WS_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_WS_MESSAGE_BYTES))
}

/// rustls needs a process-wide crypto provider; ring is the one built in. Installing twice is harmless.
fn install_tls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Connects to `url` (`ws://` or `wss://host[:port]/path`; TLS by rustls with the webpki roots) and completes the WebSocket handshake within `timeout`.
/// `auth_header`, if set, is sent as the `Authorization` header, the value as given.
pub async fn connect(url: &str, auth_header: Option<&str>, timeout: Duration) -> Result<ProviderSocket, ConnectError> {
    let mut request = url.into_client_request().map_err(|e| ConnectError::BadUrl(e.to_string()))?;
    let uri = request.uri();
    match uri.scheme_str() {
        Some("ws") => {}
        Some("wss") => install_tls_provider(),
        _ => return Err(ConnectError::BadUrl(format!("{url:?} is not a ws:// or wss:// URL"))),
    }
    let host = uri.host().ok_or_else(|| ConnectError::BadUrl(format!("{url:?} has no host")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
    let tls = uri.scheme_str() == Some("wss");
    let default_port = if tls { 443 } else { 80 };
    let port = uri.port_u16().unwrap_or(default_port);
    if let Some(auth) = auth_header {
        let mut value = HeaderValue::from_str(auth).map_err(|_| ConnectError::BadAuthHeader)?;
        value.set_sensitive(true);
        request.headers_mut().insert(AUTHORIZATION, value);
    }
    let attempt = async {
        let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| ConnectError::Resolve(e.to_string()))?
            .collect();
        let mut last_err = None;
        let mut tcp = None;
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let tcp = tcp.ok_or_else(|| {
            ConnectError::Refused(last_err.map_or_else(|| "no address".to_owned(), |e| e.to_string()))
        })?;
        // Frames are small and latency-bound.
        let _ = tcp.set_nodelay(true);
        let handshake_error = |e| match e {
            tungstenite::Error::Http(response) => ConnectError::Handshake(format!("HTTP {}", response.status())),
            other => ConnectError::Handshake(other.to_string()),
        };
        let ws = if tls {
            let (ws, _response) =
                tokio_tungstenite::client_async_tls_with_config(request, tcp, Some(ws_config()), None)
                    .await
                    .map_err(handshake_error)?;
            AgentWs::Tls(ws)
        } else {
            let io = AgentIo { tcp: Arc::new(tcp), outbox: None };
            let (ws, _response) = tokio_tungstenite::client_async_with_config(request, io, Some(ws_config()))
                .await
                .map_err(handshake_error)?;
            AgentWs::Plain(ws)
        };
        Ok(ProviderSocket { ws })
    };
    tokio::time::timeout(timeout, attempt).await.map_err(|_| ConnectError::Timeout)?
}

impl ProviderSocket {
    /// Spawns the stream task: sends `connected` and `start`, then forwards [`ToAgent`] as JSON (media, dtmf,
    /// mark) and agent messages as [`FromAgent`]. On `ToAgent::Stop` (or the `tx` side dropped) it sends `stop`,
    /// closes the WebSocket with a close frame, sends `Closed(Stopped)` and ends; when the agent closes or the
    /// socket fails, it sends `Closed(AgentClosed | Error)` and ends. Both channels hold `capacity` messages; a
    /// full `FromAgent` channel drops agent audio (counted) and never blocks the socket reader.
    ///
    /// Media `timestamp` is the frame's media time, `frame.seq * 20` ms (the first sample's offset from the call's
    /// first frame), not the wall clock: it is monotonic and advances exactly 20 per frame however frames were
    /// jittered on the way in; a gap appears only where frames were lost before this task (then `chunk`, which
    /// counts messages sent, runs on without a gap).
    pub fn spawn(self, start: StreamStart, capacity: usize) -> ProviderHandle {
        self.spawn_metered(start, capacity, None)
    }

    /// [`ProviderSocket::spawn`], recording each media frame's inbound latency (its ingress instant to the flush
    /// of the WebSocket write that carried it) and stream failures in the tenant's metrics.
    ///
    /// A `ws://` stream is written directly ([`AgentSink::Direct`]): `connected` and `start` are in the socket's
    /// outbox before this returns, so whatever the sink is handed next follows them.
    pub fn spawn_metered(self, start: StreamStart, capacity: usize, metrics: Option<TenantMetrics>) -> ProviderHandle {
        let capacity = capacity.max(1);
        let (to_tx, to_rx) = mpsc::channel(capacity);
        let (from_tx, from_rx) = mpsc::channel(capacity);
        let stats = Arc::new(ProviderStats::default());
        let span = tracing::info_span!("provider", stream_sid = %start.stream_sid, call_sid = %start.call_sid);
        let parts = TaskParts { to_rx, from_tx, stats: stats.clone(), metrics };
        let sink = match self.ws {
            AgentWs::Plain(mut ws) => {
                let tcp = Arc::clone(&ws.get_ref().tcp);
                let outbox = Outbox::new(
                    tcp.as_raw_fd(),
                    &start.stream_sid,
                    start.media_format,
                    stats.clone(),
                    parts.metrics.clone(),
                )
                .inspect_err(|e| warn!(error = %e, "no direct writer for the agent socket; writing through the task"))
                .ok()
                .filter(|outbox| outbox.hello(&start).is_ok());
                if let Some(outbox) = &outbox {
                    ws.get_mut().outbox = Some(Arc::clone(outbox));
                }
                let sink = outbox.clone().map_or_else(|| AgentSink::Channel(to_tx.clone()), AgentSink::Direct);
                let task = StreamTask::new(ws, start, parts, outbox, Some(tcp));
                tokio::spawn(task.run().instrument(span));
                sink
            }
            AgentWs::Tls(ws) => {
                let task = StreamTask::new(ws, start, parts, None, None);
                tokio::spawn(task.run().instrument(span));
                AgentSink::Channel(to_tx.clone())
            }
        };
        ProviderHandle { tx: to_tx, rx: from_rx, stats, sink }
    }
}

/// The channels and counters a stream task is built with.
struct TaskParts {
    to_rx: mpsc::Receiver<ToAgent>,
    from_tx: mpsc::Sender<FromAgent>,
    stats: Arc<ProviderStats>,
    metrics: Option<TenantMetrics>,
}

struct StreamTask<S> {
    ws: WebSocketStream<S>,
    writer: StreamWriter,
    /// The JSON of the message being written.
    out: String,
    /// Outgoing payloads are split off this and reclaimed once tungstenite has copied them.
    bytes: BytesMut,
    start: StreamStart,
    to_rx: mpsc::Receiver<ToAgent>,
    from_tx: mpsc::Sender<FromAgent>,
    /// Control messages waiting for room in `from_tx`, in order.
    held: VecDeque<FromAgent>,
    stats: Arc<ProviderStats>,
    metrics: Option<TenantMetrics>,
    /// Direct streams: the socket's write side (every write goes through it).
    outbox: Option<Arc<Outbox>>,
    /// Direct streams: the socket, to wait for writability when no media worker flushes the outbox.
    tcp: Option<Arc<TcpStream>>,
}

/// What woke the loop.
#[allow(clippy::large_enum_variant, reason = "frames travel inline, not boxed: no allocation per frame")]
enum Event {
    Delivered,
    Command(Option<ToAgent>),
    Socket(Option<Result<Message, tungstenite::Error>>),
    /// The outbox has bytes waiting and no media worker to flush them (or a write failed).
    FlushWanted,
    Writable,
    /// Once a second (direct streams): has a write failed, or stalled too long?
    Health,
}

async fn flush_wanted(outbox: Option<&Arc<Outbox>>) {
    match outbox {
        Some(outbox) => outbox.task_flush_wanted().await,
        None => std::future::pending().await,
    }
}

async fn writable(tcp: Option<&Arc<TcpStream>>) -> io::Result<()> {
    match tcp {
        Some(tcp) => tcp.writable().await,
        None => std::future::pending().await,
    }
}

/// Flushes the outbox if the socket takes it, clearing tokio's readiness when it does not (the outbox writes
/// through its own descriptor, so tokio cannot see that the socket is full). `Ok(true)`: nothing left.
fn try_flush(tcp: &TcpStream, outbox: &Outbox) -> io::Result<bool> {
    let flushed = tcp.try_io(tokio::io::Interest::WRITABLE, || {
        if outbox.flush() { Ok(()) } else { Err(io::ErrorKind::WouldBlock.into()) }
    });
    match flushed {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e),
    }
}

/// What the loop does after handling an event.
enum Flow {
    Continue,
    Stop,
    End(CloseReason),
}

fn ws_error_reason(e: tungstenite::Error) -> CloseReason {
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => CloseReason::AgentClosed,
        other => CloseReason::Error(other.to_string()),
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> StreamTask<S> {
    fn new(
        ws: WebSocketStream<S>,
        start: StreamStart,
        parts: TaskParts,
        outbox: Option<Arc<Outbox>>,
        tcp: Option<Arc<TcpStream>>,
    ) -> StreamTask<S> {
        StreamTask {
            ws,
            writer: StreamWriter::new(&start.stream_sid),
            out: String::with_capacity(1024),
            bytes: BytesMut::with_capacity(OUT_BYTES),
            start,
            to_rx: parts.to_rx,
            from_tx: parts.from_tx,
            held: VecDeque::new(),
            stats: parts.stats,
            metrics: parts.metrics,
            outbox,
            tcp,
        }
    }

    async fn run(mut self) {
        debug!("stream started");
        let reason = match self.stream().await {
            Flow::Stop => {
                self.stop().await;
                CloseReason::Stopped
            }
            Flow::End(reason) => reason,
            Flow::Continue => unreachable!("stream() returns only on Stop or End"),
        };
        // Whatever the sink is handed from now on is refused (and counted by the caller), as a closed channel is.
        if let Some(outbox) = &self.outbox {
            outbox.close();
        }
        match &reason {
            CloseReason::Error(e) => {
                if let Some(m) = &self.metrics {
                    m.provider_stream_error("stream_failed");
                }
                warn!(error = %e, "stream failed")
            }
            other => info!(reason = ?other, "stream ended"),
        }
        self.deliver_final(reason).await;
    }

    /// The stream until it must stop or has ended.
    async fn stream(&mut self) -> Flow {
        // A direct stream's hello is in its outbox already.
        if self.outbox.is_none() {
            self.writer.connected(&mut self.out);
            let connected = self.take_message();
            self.writer.start(&self.start, &mut self.out);
            let start = self.take_message();
            let hello = async {
                self.ws.feed(connected).await?;
                self.ws.send(start).await
            };
            match tokio::time::timeout(WRITE_TIMEOUT, hello).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Flow::End(ws_error_reason(e)),
                Err(_) => return Flow::End(CloseReason::Error("write to agent timed out".into())),
            }
        }
        let mut health = tokio::time::interval(Duration::from_secs(1));
        let mut want_flush = false;
        loop {
            // The branches only borrow disjoint fields; the work that needs all of `self` happens after.
            let event = tokio::select! {
                biased;
                permit = self.from_tx.reserve(), if !self.held.is_empty() => {
                    match (permit, self.held.pop_front()) {
                        (Ok(permit), Some(msg)) => permit.send(msg),
                        // The driver dropped its receiver: nothing will be read.
                        (Err(_), _) => {
                            self.stats.dropped_slow_consumer.fetch_add(self.held.len() as u64 + 1, Relaxed);
                            self.held.clear();
                        }
                        (Ok(_), None) => {}
                    }
                    Event::Delivered
                }
                cmd = self.to_rx.recv() => Event::Command(cmd),
                msg = self.ws.next() => Event::Socket(msg),
                () = flush_wanted(self.outbox.as_ref()) => Event::FlushWanted,
                _ = writable(self.tcp.as_ref()), if want_flush => Event::Writable,
                _ = health.tick(), if self.outbox.is_some() => Event::Health,
            };
            let flow = match event {
                Event::Delivered => Flow::Continue,
                Event::Command(Some(cmd)) if self.outbox.is_some() => self.write_direct(cmd),
                Event::Command(Some(cmd)) => match tokio::time::timeout(WRITE_TIMEOUT, self.write_batch(cmd)).await {
                    Ok(Ok(flow)) => flow,
                    Ok(Err(e)) => Flow::End(ws_error_reason(e)),
                    Err(_) => Flow::End(CloseReason::Error("write to agent timed out".into())),
                },
                Event::FlushWanted => {
                    want_flush = true;
                    self.outbox_health()
                }
                Event::Writable => match (self.tcp.as_ref(), self.outbox.as_ref()) {
                    (Some(tcp), Some(outbox)) => match try_flush(tcp, outbox) {
                        Ok(done) => {
                            want_flush = !done;
                            self.outbox_health()
                        }
                        Err(e) => Flow::End(CloseReason::Error(e.to_string())),
                    },
                    _ => {
                        want_flush = false;
                        Flow::Continue
                    }
                },
                Event::Health => self.outbox_health(),
                Event::Command(None) => Flow::Stop,
                Event::Socket(Some(Ok(msg))) => self.on_message(msg).await,
                Event::Socket(Some(Err(e))) => Flow::End(ws_error_reason(e)),
                Event::Socket(None) => Flow::End(CloseReason::AgentClosed),
            };
            match flow {
                Flow::Continue => {}
                other => return other,
            }
        }
    }

    /// A direct stream's write failed or stalled past [`WRITE_TIMEOUT`]: it ends, as a failed or stalled write
    /// ends a stream written by the task.
    fn outbox_health(&self) -> Flow {
        let Some(outbox) = &self.outbox else { return Flow::Continue };
        if let Some(kind) = outbox.failed() {
            return Flow::End(CloseReason::Error(format!("write to agent failed: {}", io::Error::from(kind))));
        }
        if outbox::stalled_too_long(outbox.stalled_since(), WRITE_TIMEOUT) {
            return Flow::End(CloseReason::Error("write to agent timed out".into()));
        }
        Flow::Continue
    }

    /// A message sent through the channel to a direct stream: written through the outbox like the sink's.
    fn write_direct(&mut self, cmd: ToAgent) -> Flow {
        let Some(outbox) = &self.outbox else { return Flow::Continue };
        let taken = match cmd {
            ToAgent::Media(frame) => outbox.media(&frame),
            ToAgent::Dtmf(digit) => outbox.dtmf(digit),
            ToAgent::MarkPlayed(name) => outbox.mark(&name),
            ToAgent::Stop => return Flow::Stop,
        };
        if taken.is_err() {
            bump(&self.stats.dropped_slow_consumer);
        }
        self.outbox_health()
    }

    /// Writes `first` and whatever else is already queued (up to [`MAX_BATCH`]), then flushes once.
    async fn write_batch(&mut self, first: ToAgent) -> Result<Flow, tungstenite::Error> {
        let mut cmd = first;
        let mut flow = Flow::Continue;
        // Ingress instants of the media frames in this batch, for their latency once flushed.
        let mut ingress = [None::<Instant>; MAX_BATCH];
        for slot in ingress.iter_mut() {
            match cmd {
                ToAgent::Stop => {
                    flow = Flow::Stop;
                    break;
                }
                ToAgent::Media(frame) => {
                    let timestamp_ms = frame.seq.saturating_mul(u64::from(FRAME_MS));
                    self.writer.media(timestamp_ms, frame.payload.as_bytes(), &mut self.out);
                    bump(&self.stats.media_out);
                    *slot = Some(frame.t_ingress);
                }
                ToAgent::Dtmf(digit) => {
                    self.writer.dtmf(digit, &mut self.out);
                    bump(&self.stats.dtmf_out);
                }
                ToAgent::MarkPlayed(name) => {
                    self.writer.mark(&name, &mut self.out);
                    bump(&self.stats.marks_out);
                }
            }
            let msg = self.take_message();
            self.ws.feed(msg).await?;
            cmd = match self.to_rx.try_recv() {
                Ok(next) => next,
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    flow = Flow::Stop;
                    break;
                }
            };
        }
        self.ws.flush().await?;
        if let Some(m) = &self.metrics {
            let now = Instant::now();
            for t in ingress.iter().flatten() {
                m.frame_latency(MetricDirection::Inbound, now.saturating_duration_since(*t));
            }
        }
        Ok(flow)
    }

    /// Turns the JSON in `out` into a tungstenite message, cutting it from the reused `bytes` buffer.
    fn take_message(&mut self) -> Message {
        self.stats.messages_out.fetch_add(1, Relaxed);
        self.stats.bytes_out.fetch_add(self.out.len() as u64, Relaxed);
        // Reclaims the buffer's earlier space once the previous message's bytes have been dropped by tungstenite.
        self.bytes.reserve(self.out.len());
        self.bytes.extend_from_slice(self.out.as_bytes());
        let payload = self.bytes.split().freeze();
        let text = Utf8Bytes::try_from(payload).unwrap_or_else(|_| Utf8Bytes::from(self.out.as_str()));
        Message::Text(text)
    }

    async fn on_message(&mut self, msg: Message) -> Flow {
        match msg {
            Message::Text(text) => {
                bump(&self.stats.messages_in);
                match parse_agent_message(text.as_str()) {
                    Ok(AgentMessage::Media(audio)) => {
                        bump(&self.stats.media_in);
                        self.stats.media_in_bytes.fetch_add(audio.len() as u64, Relaxed);
                        self.deliver_media(FromAgent::Media(audio));
                    }
                    Ok(AgentMessage::Mark(name)) => {
                        bump(&self.stats.marks_in);
                        self.deliver_control(FromAgent::Mark(name));
                    }
                    Ok(AgentMessage::Clear) => {
                        bump(&self.stats.clears_in);
                        self.deliver_control(FromAgent::Clear);
                    }
                    Ok(AgentMessage::Ignored) => bump(&self.stats.ignored_in),
                    Err(e) => {
                        bump(&self.stats.malformed_by_kind[e.index()]);
                        self.malformed(e.label());
                    }
                }
            }
            Message::Binary(_) => {
                bump(&self.stats.messages_in);
                bump(&self.stats.binary_in);
                self.malformed("binary");
            }
            // tungstenite queues the pong itself; it goes out with the next read or write.
            Message::Ping(_) => bump(&self.stats.pings_in),
            Message::Pong(_) | Message::Frame(_) => {}
            Message::Close(frame) => {
                debug!(?frame, "agent sent close");
                // Reading on lets tungstenite send the close reply, until the agent drops the connection.
                let drain = async { while let Some(Ok(_)) = self.ws.next().await {} };
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
                return Flow::End(CloseReason::AgentClosed);
            }
        }
        Flow::Continue
    }

    fn malformed(&self, label: &'static str) {
        let n = self.stats.malformed_in.fetch_add(1, Relaxed) + 1;
        if n <= MALFORMED_WARNINGS {
            warn!(kind = label, count = n, "ignoring malformed agent message");
        } else {
            debug!(kind = label, count = n, "ignoring malformed agent message");
        }
    }

    /// Audio: delivered now or dropped (also dropped while control messages are held, to keep the order).
    fn deliver_media(&mut self, msg: FromAgent) {
        if !self.held.is_empty() {
            bump(&self.stats.dropped_slow_consumer);
            return;
        }
        if let Err(TrySendError::Full(_) | TrySendError::Closed(_)) = self.from_tx.try_send(msg) {
            bump(&self.stats.dropped_slow_consumer);
        }
    }

    /// Marks and clears: delivered now, or held in order until there is room.
    fn deliver_control(&mut self, msg: FromAgent) {
        let msg = if self.held.is_empty() {
            match self.from_tx.try_send(msg) {
                Ok(()) => return,
                Err(TrySendError::Full(msg)) => msg,
                Err(TrySendError::Closed(_)) => {
                    bump(&self.stats.dropped_slow_consumer);
                    return;
                }
            }
        } else {
            msg
        };
        if self.held.len() < MAX_HELD_CONTROL {
            self.held.push_back(msg);
        } else {
            bump(&self.stats.dropped_slow_consumer);
        }
    }

    /// `stop`, then the closing handshake, bounded by [`CLOSE_TIMEOUT`]; errors only shorten it.
    async fn stop(&mut self) {
        let stop = match &self.outbox {
            // In order behind whatever audio the outbox holds; no data message after it.
            Some(outbox) => {
                let _ = outbox.stop(&self.start.account_sid, &self.start.call_sid);
                None
            }
            None => {
                self.writer.stop(&self.start.account_sid, &self.start.call_sid, &mut self.out);
                Some(self.take_message())
            }
        };
        let handshake = async {
            if let Some(stop) = stop {
                self.ws.send(stop).await?;
            }
            self.ws.close(Some(CloseFrame { code: CloseCode::Normal, reason: Utf8Bytes::from_static("") })).await?;
            // Without a media worker to flush it (the call has deregistered), the outbox is flushed from here.
            if let (Some(outbox), Some(tcp)) = (&self.outbox, &self.tcp) {
                while !try_flush(tcp, outbox)? {
                    tcp.writable().await?;
                }
            }
            // Wait for the agent's close frame (and the end of the connection); anything else it sends now is moot.
            while let Some(msg) = self.ws.next().await {
                msg?;
            }
            Ok::<(), tungstenite::Error>(())
        };
        match tokio::time::timeout(CLOSE_TIMEOUT, handshake).await {
            Ok(Ok(())) => debug!("closing handshake complete"),
            Ok(Err(e)) => debug!(error = %e, "closing handshake cut short"),
            Err(_) => debug!("agent did not complete the closing handshake in time"),
        }
    }

    /// Held-back control messages, then `Closed`, waiting up to [`FINAL_DELIVERY_TIMEOUT`] for room.
    async fn deliver_final(&mut self, reason: CloseReason) {
        let from_tx = &self.from_tx;
        let mut queue = std::mem::take(&mut self.held);
        queue.push_back(FromAgent::Closed(reason));
        let total = queue.len();
        let mut sent = 0;
        let deliver = async {
            while let Some(msg) = queue.pop_front() {
                if from_tx.send(msg).await.is_err() {
                    break;
                }
                sent += 1;
            }
        };
        let _ = tokio::time::timeout(FINAL_DELIVERY_TIMEOUT, deliver).await;
        if sent < total {
            self.stats.dropped_slow_consumer.fetch_add((total - sent) as u64, Relaxed);
        }
    }
}

#[cfg(test)]
// tungstenite's handshake callback returns `Result<Response, ErrorResponse>`; its size is not ours to choose.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use crate::call::{CallId, FRAME_SAMPLES};
    use crate::proto::media_streams::{self, MediaFormat};
    use crate::tenant::TenantId;
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use serde_json::{Value, json};
    use std::future::Future;
    use std::time::Instant;
    use tokio::net::TcpListener;
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

    const TEST_TIMEOUT: Duration = Duration::from_secs(10);

    type AgentWs = WebSocketStream<TcpStream>;

    /// Runs a scripted agent for one connection on 127.0.0.1; returns its `ws://` URL and the script's result,
    /// with the `Authorization` header it received.
    async fn agent<F, Fut, T>(script: F) -> (String, tokio::task::JoinHandle<(Option<String>, T)>)
    where
        F: FnOnce(AgentWs) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/agent?x=1", listener.local_addr().unwrap());
        let handle = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut auth = None;
            let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                auth = req.headers().get("authorization").map(|v| v.to_str().unwrap().to_owned());
                assert_eq!(req.uri().path(), "/agent");
                Ok(resp)
            };
            let ws = tokio_tungstenite::accept_hdr_async(tcp, callback).await.unwrap();
            let out = script(ws).await;
            (auth, out)
        });
        (url, handle)
    }

    /// The next text message at the agent, as JSON (pings and pongs skipped).
    async fn next_json(ws: &mut AgentWs) -> Value {
        loop {
            match ws.next().await.expect("stream ended").expect("ws error") {
                Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
                Message::Ping(_) | Message::Pong(_) => {}
                other => panic!("expected text, got {other:?}"),
            }
        }
    }

    fn start() -> StreamStart {
        StreamStart {
            account_sid: "acme".into(),
            call_sid: media_streams::call_sid(0xca11),
            stream_sid: media_streams::stream_sid(0x5eed),
            from: "+14155550123".into(),
            to: "+15550100".into(),
            custom_parameters: vec![("campaign".into(), "spring \"sale\"".into())],
            media_format: MediaFormat::Mulaw8k,
        }
    }

    fn frame(seq: u64, fill: u8) -> Frame {
        Frame {
            tenant: TenantId(3),
            call: CallId(9),
            seq,
            ts: (seq as u32) * 160,
            payload: FrameAudio::Mulaw([fill; FRAME_SAMPLES]),
            t_ingress: Instant::now(),
        }
    }

    async fn expect_connected_and_start(ws: &mut AgentWs) -> Value {
        assert_eq!(next_json(ws).await, json!({"event":"connected","protocol":"Call","version":"1.0.0"}));
        let v = next_json(ws).await;
        assert_eq!(v["event"], "start");
        v
    }

    async fn recv(rx: &mut mpsc::Receiver<FromAgent>) -> FromAgent {
        tokio::time::timeout(TEST_TIMEOUT, rx.recv()).await.expect("timed out").expect("channel closed")
    }

    async fn wait_until(what: &str, cond: impl Fn() -> bool) {
        let deadline = Instant::now() + TEST_TIMEOUT;
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    #[tokio::test]
    async fn full_session_in_order_then_stop_and_close() {
        let s = start();
        let (sid, call) = (s.stream_sid.clone(), s.call_sid.clone());
        let (url, agent) = agent(move |mut ws| async move {
            let v = expect_connected_and_start(&mut ws).await;
            assert_eq!(
                v,
                json!({
                    "event": "start", "sequenceNumber": "1", "streamSid": sid,
                    "start": {
                        "accountSid": "acme", "streamSid": sid, "callSid": call,
                        "tracks": ["inbound"],
                        "customParameters": {"campaign": "spring \"sale\"", "from_number": "+14155550123", "to_number": "+15550100"},
                        "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
                    }
                })
            );
            for i in 0..3u64 {
                let v = next_json(&mut ws).await;
                assert_eq!(v["event"], "media");
                assert_eq!(v["sequenceNumber"], (i + 2).to_string());
                assert_eq!(v["streamSid"], sid);
                assert_eq!(v["media"]["track"], "inbound");
                assert_eq!(v["media"]["chunk"], (i + 1).to_string());
                assert_eq!(v["media"]["timestamp"], ((10 + i) * 20).to_string());
                let payload = STANDARD.decode(v["media"]["payload"].as_str().unwrap()).unwrap();
                assert_eq!(payload, vec![i as u8; FRAME_SAMPLES]);
            }
            assert_eq!(
                next_json(&mut ws).await,
                json!({"event":"dtmf","sequenceNumber":"5","streamSid":sid,"dtmf":{"track":"inbound_track","digit":"7"}})
            );
            assert_eq!(
                next_json(&mut ws).await,
                json!({"event":"mark","sequenceNumber":"6","streamSid":sid,"mark":{"name":"m1"}})
            );
            assert_eq!(
                next_json(&mut ws).await,
                json!({"event":"stop","sequenceNumber":"7","streamSid":sid,
                       "stop":{"accountSid":"acme","callSid":call}})
            );
            match ws.next().await {
                Some(Ok(Message::Close(Some(f)))) => assert_eq!(f.code, CloseCode::Normal),
                other => panic!("expected a close frame, got {other:?}"),
            }
            // tungstenite answers the close; then the stream ends.
            assert!(matches!(ws.next().await, None | Some(Err(_))));
        })
        .await;
        let socket = connect(&url, Some("Bearer s3cret"), Duration::from_secs(2)).await.unwrap();
        let mut h = socket.spawn(start(), 8);
        for i in 0..3u64 {
            h.tx.send(ToAgent::Media(frame(10 + i, i as u8))).await.unwrap();
        }
        h.tx.send(ToAgent::Dtmf('7')).await.unwrap();
        h.tx.send(ToAgent::MarkPlayed("m1".into())).await.unwrap();
        h.tx.send(ToAgent::Stop).await.unwrap();
        assert_eq!(recv(&mut h.rx).await, FromAgent::Closed(CloseReason::Stopped));
        assert!(h.rx.recv().await.is_none(), "task ended");
        let (auth, ()) = tokio::time::timeout(TEST_TIMEOUT, agent).await.unwrap().unwrap();
        assert_eq!(auth.as_deref(), Some("Bearer s3cret"));
        assert_eq!(h.stats.messages_out.load(Relaxed), 8);
        assert_eq!(h.stats.media_out.load(Relaxed), 3);
        assert_eq!(h.stats.dtmf_out.load(Relaxed), 1);
        assert_eq!(h.stats.marks_out.load(Relaxed), 1);
    }

    #[tokio::test]
    async fn a_ws_stream_is_written_directly_by_whoever_holds_the_sink_in_order_and_timed() {
        let (url, agent) = agent(|mut ws| async move {
            expect_connected_and_start(&mut ws).await;
            for i in 0..20u64 {
                let v = next_json(&mut ws).await;
                assert_eq!(
                    (v["event"].as_str(), v["sequenceNumber"].as_str()),
                    (Some("media"), Some(&*(i + 2).to_string()))
                );
                assert_eq!(v["media"]["chunk"], (i + 1).to_string());
            }
            let v = next_json(&mut ws).await;
            assert_eq!((v["event"].as_str(), v["mark"]["name"].as_str()), (Some("mark"), Some("m1")));
            assert_eq!(next_json(&mut ws).await["event"], "dtmf");
            assert_eq!(next_json(&mut ws).await["event"], "stop");
            assert!(matches!(ws.next().await, Some(Ok(Message::Close(_)))));
        })
        .await;
        let metrics = crate::metrics::Metrics::new(&crate::metrics::MetricsConfig::default());
        let socket = connect(&url, None, Duration::from_secs(2)).await.unwrap();
        let mut h = socket.spawn_metered(start(), 4, Some(metrics.tenant(TenantId(3), "acme")));
        let AgentSink::Direct(_) = &h.sink else { panic!("a ws:// stream is written directly, got {:?}", h.sink) };
        // Written from a plain thread, as a media worker does: no task takes part (the channel holds 4 at most).
        let sink = h.sink.clone();
        std::thread::spawn(move || {
            for i in 0..20u64 {
                sink.media(frame(i, i as u8)).unwrap();
            }
            sink.mark_played("m1".into()).unwrap();
            sink.dtmf('5').unwrap();
        })
        .join()
        .unwrap();
        h.tx.send(ToAgent::Stop).await.unwrap();
        assert_eq!(recv(&mut h.rx).await, FromAgent::Closed(CloseReason::Stopped));
        tokio::time::timeout(TEST_TIMEOUT, agent).await.unwrap().unwrap();
        assert_eq!(h.stats.media_out.load(Relaxed), 20);
        // After the stream ended the sink refuses, as a closed channel does.
        assert_eq!(h.sink.media(frame(20, 0)), Err(NotTaken));
        let text = metrics.encode();
        let count = text
            .lines()
            .find_map(|l| l.strip_prefix("fairvox_frame_latency_seconds_count{tenant=\"acme\",direction=\"inbound\"} "))
            .unwrap_or_else(|| panic!("no inbound latency count in\n{text}"));
        assert_eq!(count.trim(), "20", "one latency per frame, at its write");
    }

    #[tokio::test]
    async fn a_slow_agent_backs_up_the_outbox_which_refuses_audio_past_its_bound_and_delivers_the_rest_in_order() {
        let (gate_tx, gate_rx) = tokio::sync::oneshot::channel::<()>();
        let (url, agent) = agent(|mut ws| async move {
            // Not reading until told: the socket buffers fill and the outbox holds the rest.
            let _ = gate_rx.await;
            expect_connected_and_start(&mut ws).await;
            let mut chunks = Vec::new();
            loop {
                let v = next_json(&mut ws).await;
                match v["event"].as_str() {
                    Some("media") => chunks.push(v["media"]["chunk"].as_str().unwrap().parse::<u64>().unwrap()),
                    Some("stop") => break,
                    other => panic!("unexpected {other:?}"),
                }
            }
            chunks
        })
        .await;
        let socket = connect(&url, None, Duration::from_secs(2)).await.unwrap();
        let mut h = socket.spawn(start(), 4);
        let sink = h.sink.clone();
        let (mut taken, mut refused) = (0u64, 0u64);
        // Far more than the socket buffers and the outbox's bound hold.
        for i in 0..20_000u64 {
            match sink.media(frame(i, 7)) {
                Ok(()) => taken += 1,
                Err(NotTaken) => refused += 1,
            }
        }
        assert!(refused > 0, "the outbox's bound never refused a frame ({taken} taken)");
        let _ = gate_tx.send(());
        h.tx.send(ToAgent::Stop).await.unwrap();
        assert_eq!(recv(&mut h.rx).await, FromAgent::Closed(CloseReason::Stopped));
        let (_, chunks) = tokio::time::timeout(TEST_TIMEOUT, agent).await.unwrap().unwrap();
        // Every frame taken arrived, in order, numbered without gaps: a refused frame was never written.
        assert_eq!(chunks, (1..=taken).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn agent_messages_become_from_agent_and_garbage_is_counted() {
        let (url, agent) = agent(|mut ws| async move {
            let v = expect_connected_and_start(&mut ws).await;
            let sid = v["streamSid"].as_str().unwrap().to_owned();
            let audio = STANDARD.encode([0x7f_u8; 320]);
            let sends = [
                format!(r#"{{"event": "media", "streamSid": "{sid}", "media": {{"payload": "{audio}"}}}}"#),
                "not json at all".to_owned(),
                format!(r#"{{"event":"mark","streamSid":"{sid}","mark":{{"name":"greeting-done"}}}}"#),
                r#"{"event":"media","streamSid":"x"}"#.to_owned(),
                r#"{"event":"start","start":{"streamSid":"x"}}"#.to_owned(),
                format!(r#"{{"event": "clear", "streamSid": "{sid}"}}"#),
                r#"{"event":"media","media":{"payload":"***"}}"#.to_owned(),
            ];
            for text in sends {
                ws.send(Message::text(text)).await.unwrap();
            }
            ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
            ws.send(Message::Ping(vec![9, 9].into())).await.unwrap();
            // The pong comes back unprompted, and the driver's mark echo once it has seen the ping.
            let (mut pong, mut mark) = (false, false);
            while !(pong && mark) {
                match ws.next().await.unwrap().unwrap() {
                    Message::Pong(p) => {
                        assert_eq!(&p[..], &[9, 9]);
                        pong = true;
                    }
                    Message::Text(t) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap();
                        assert_eq!(v["event"], "mark");
                        assert_eq!(v["mark"]["name"], "greeting-done");
                        mark = true;
                    }
                    other => panic!("expected pong or mark, got {other:?}"),
                }
            }
            ws.close(None).await.unwrap();
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        let mut h = connect(&url, None, Duration::from_secs(2)).await.unwrap().spawn(start(), 8);
        assert_eq!(recv(&mut h.rx).await, FromAgent::Media(vec![0x7f; 320]));
        assert_eq!(recv(&mut h.rx).await, FromAgent::Mark("greeting-done".into()));
        assert_eq!(recv(&mut h.rx).await, FromAgent::Clear);
        let stats = h.stats.clone();
        wait_until("the ping", || stats.pings_in.load(Relaxed) == 1).await;
        h.tx.send(ToAgent::MarkPlayed("greeting-done".into())).await.unwrap();
        assert_eq!(recv(&mut h.rx).await, FromAgent::Closed(CloseReason::AgentClosed));
        let (auth, ()) = tokio::time::timeout(TEST_TIMEOUT, agent).await.unwrap().unwrap();
        assert_eq!(auth, None, "no Authorization header unless configured");
        let s = &h.stats;
        assert_eq!(s.messages_in.load(Relaxed), 8);
        assert_eq!(s.media_in.load(Relaxed), 1);
        assert_eq!(s.media_in_bytes.load(Relaxed), 320);
        assert_eq!(s.marks_in.load(Relaxed), 1);
        assert_eq!(s.clears_in.load(Relaxed), 1);
        assert_eq!(s.ignored_in.load(Relaxed), 1);
        assert_eq!(s.malformed_in.load(Relaxed), 4);
        assert_eq!(s.binary_in.load(Relaxed), 1);
        let by_label = s.malformed_by_label();
        let count = |label: &str| by_label.iter().find(|(l, _)| *l == label).unwrap().1;
        assert_eq!(count("not_json"), 1);
        assert_eq!(count("missing_field"), 1);
        assert_eq!(count("bad_payload"), 1);
        assert_eq!(s.dropped_slow_consumer.load(Relaxed), 0);
    }

    #[tokio::test]
    async fn agent_closing_mid_stream_yields_agent_closed() {
        let (url, agent) = agent(|mut ws| async move {
            expect_connected_and_start(&mut ws).await;
            for _ in 0..5 {
                assert_eq!(next_json(&mut ws).await["event"], "media");
            }
            ws.close(None).await.unwrap();
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        let mut h = connect(&url, None, Duration::from_secs(2)).await.unwrap().spawn(start(), 4);
        let tx = h.tx.clone();
        let feeder = tokio::spawn(async move {
            let mut seq = 0;
            // Streams like a call driver until the stream task goes away.
            while tx.send(ToAgent::Media(frame(seq, 0xff))).await.is_ok() {
                seq += 1;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        assert_eq!(recv(&mut h.rx).await, FromAgent::Closed(CloseReason::AgentClosed));
        drop(h);
        tokio::time::timeout(TEST_TIMEOUT, feeder).await.unwrap().unwrap();
        tokio::time::timeout(TEST_TIMEOUT, agent).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn dropping_tx_stops_and_closes() {
        let (url, agent) = agent(|mut ws| async move {
            expect_connected_and_start(&mut ws).await;
            assert_eq!(next_json(&mut ws).await["event"], "stop");
            assert!(matches!(ws.next().await, Some(Ok(Message::Close(_)))));
        })
        .await;
        let h = connect(&url, None, Duration::from_secs(2)).await.unwrap().spawn(start(), 4);
        let ProviderHandle { tx, mut rx, sink, .. } = h;
        drop((tx, sink));
        assert_eq!(recv(&mut rx).await, FromAgent::Closed(CloseReason::Stopped));
        tokio::time::timeout(TEST_TIMEOUT, agent).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn stop_is_bounded_when_the_agent_never_answers_the_close() {
        let (url, agent) = agent(|mut ws| async move {
            expect_connected_and_start(&mut ws).await;
            assert_eq!(next_json(&mut ws).await["event"], "stop");
            // Stops reading: our close frame is never answered.
            tokio::time::sleep(CLOSE_TIMEOUT + Duration::from_secs(1)).await;
        })
        .await;
        let mut h = connect(&url, None, Duration::from_secs(2)).await.unwrap().spawn(start(), 4);
        let t0 = Instant::now();
        h.tx.send(ToAgent::Stop).await.unwrap();
        assert_eq!(recv(&mut h.rx).await, FromAgent::Closed(CloseReason::Stopped));
        let elapsed = t0.elapsed();
        assert!(elapsed >= CLOSE_TIMEOUT - Duration::from_millis(100), "{elapsed:?}");
        assert!(elapsed < CLOSE_TIMEOUT + Duration::from_secs(1), "{elapsed:?}");
        tokio::time::timeout(TEST_TIMEOUT, agent).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn slow_consumer_drops_audio_but_keeps_marks_and_clear_in_order() {
        let (url, agent) = agent(|mut ws| async move {
            expect_connected_and_start(&mut ws).await;
            let audio = STANDARD.encode([0u8; 160]);
            for _ in 0..10 {
                let text = format!(r#"{{"event":"media","media":{{"payload":"{audio}"}}}}"#);
                ws.send(Message::text(text)).await.unwrap();
            }
            ws.send(Message::text(r#"{"event":"mark","mark":{"name":"a"}}"#)).await.unwrap();
            ws.send(Message::text(r#"{"event":"clear"}"#)).await.unwrap();
            let text = format!(r#"{{"event":"media","media":{{"payload":"{audio}"}}}}"#);
            ws.send(Message::text(text)).await.unwrap();
            ws.send(Message::text(r#"{"event":"mark","mark":{"name":"b"}}"#)).await.unwrap();
            // Stay until the driver stops us.
            while let Some(Ok(_)) = ws.next().await {}
        })
        .await;
        let mut h = connect(&url, None, Duration::from_secs(2)).await.unwrap().spawn(start(), 2);
        let stats = h.stats.clone();
        wait_until("all 14 messages read", || stats.messages_in.load(Relaxed) == 14).await;
        // Two fit; 8 were dropped; the mark, clear and last mark were held; audio after a held message dropped.
        assert_eq!(stats.dropped_slow_consumer.load(Relaxed), 9);
        assert_eq!(recv(&mut h.rx).await, FromAgent::Media(vec![0; 160]));
        assert_eq!(recv(&mut h.rx).await, FromAgent::Media(vec![0; 160]));
        assert_eq!(recv(&mut h.rx).await, FromAgent::Mark("a".into()));
        assert_eq!(recv(&mut h.rx).await, FromAgent::Clear);
        assert_eq!(recv(&mut h.rx).await, FromAgent::Mark("b".into()));
        h.tx.send(ToAgent::Stop).await.unwrap();
        assert_eq!(recv(&mut h.rx).await, FromAgent::Closed(CloseReason::Stopped));
        tokio::time::timeout(TEST_TIMEOUT, agent).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn closed_port_is_refused_quickly() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let t0 = Instant::now();
        let err = connect(&format!("ws://{addr}/"), None, Duration::from_secs(5)).await.unwrap_err();
        assert!(matches!(err, ConnectError::Refused(_)), "{err:?}");
        assert_eq!(err.label(), "refused");
        assert!(t0.elapsed() < Duration::from_secs(1), "{:?}", t0.elapsed());
    }

    #[tokio::test]
    async fn silent_server_times_out_within_the_deadline() {
        // The kernel completes the TCP handshake into the backlog; nobody ever answers the upgrade.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let t0 = Instant::now();
        let err = connect(&format!("ws://{addr}/"), None, Duration::from_millis(300)).await.unwrap_err();
        let elapsed = t0.elapsed();
        assert_eq!(err, ConnectError::Timeout);
        assert!(elapsed >= Duration::from_millis(300) && elapsed < Duration::from_millis(1500), "{elapsed:?}");
        drop(listener);
    }

    #[tokio::test]
    async fn http_rejection_is_a_handshake_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let reject = |_: &Request, _: Response| -> Result<Response, ErrorResponse> {
                let mut resp = ErrorResponse::new(Some("no".into()));
                *resp.status_mut() = tungstenite::http::StatusCode::UNAUTHORIZED;
                Err(resp)
            };
            let _ = tokio_tungstenite::accept_hdr_async(tcp, reject).await;
        });
        let err = connect(&format!("ws://{addr}/"), Some("Bearer wrong"), Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(&err, ConnectError::Handshake(m) if m.contains("401")), "{err:?}");
        server.await.unwrap();
    }

    #[tokio::test]
    async fn wss_speaks_tls_first() {
        // A server that is not TLS: the client's TLS handshake must fail, proving wss:// really does TLS.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut sock, _) = listener.accept().await.unwrap();
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut buf = [0u8; 5];
            let n = sock.read(&mut buf).await.unwrap();
            let _ = sock.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
            buf[..n].to_vec()
        });
        let err = connect(&format!("wss://{addr}/ws"), None, Duration::from_secs(2)).await.unwrap_err();
        assert!(matches!(err, ConnectError::Handshake(_)), "{err:?}");
        let first = server.await.unwrap();
        assert_eq!(first.first(), Some(&0x16), "a TLS ClientHello record starts with 0x16");
    }

    #[tokio::test]
    async fn bad_urls_and_headers() {
        let t = Duration::from_secs(1);
        assert!(matches!(connect("http://127.0.0.1:1/", None, t).await, Err(ConnectError::BadUrl(_))));
        assert!(matches!(connect("not a url", None, t).await, Err(ConnectError::BadUrl(_))));
        // wss:// is attempted: a closed port is refused, and a plain-text server fails the TLS handshake.
        assert!(matches!(connect("wss://127.0.0.1:1/ws", None, t).await, Err(ConnectError::Refused(_))));
        let err = connect("ws://127.0.0.1:1/", Some("Bearer a\r\nX-Evil: 1"), t).await.unwrap_err();
        assert_eq!(err, ConnectError::BadAuthHeader);
        assert!(!err.to_string().contains("Evil"), "the header value is never shown");
    }

    #[tokio::test]
    async fn outgoing_payloads_reuse_one_buffer() {
        let (url, agent) = agent(|mut ws| async move { while let Some(Ok(_)) = ws.next().await {} }).await;
        let socket = connect(&url, None, Duration::from_secs(2)).await.unwrap();
        let super::AgentWs::Plain(ws) = socket.ws else { panic!("a ws:// URL gives a plain socket") };
        let (_to_tx, to_rx) = mpsc::channel(1);
        let (from_tx, _from_rx) = mpsc::channel(1);
        // The task's own write path (the one `wss://` streams use), over the plain socket.
        let parts = TaskParts { to_rx, from_tx, stats: Arc::default(), metrics: None };
        let mut task = StreamTask::new(ws, start(), parts, None, None);
        task.writer = StreamWriter::new("MZ1");
        let base = task.bytes.as_ptr() as usize;
        for i in 0..1000u64 {
            task.writer.media(i * 20, &[0x55; FRAME_SAMPLES], &mut task.out);
            let msg = task.take_message();
            let Message::Text(text) = &msg else { panic!() };
            let at = text.as_ptr() as usize;
            assert!(at >= base && at + text.len() <= base + OUT_BYTES, "message {i} was not cut from the buffer");
            task.ws.feed(msg).await.unwrap();
        }
        task.ws.flush().await.unwrap();
        drop(task);
        tokio::time::timeout(TEST_TIMEOUT, agent).await.unwrap().unwrap();
    }
}
