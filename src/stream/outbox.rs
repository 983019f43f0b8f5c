//! The write side of a plain (`ws://`) agent socket: the one owner of every byte written to the agent.
//!
//! Owns a descriptor of the TCP socket of its own (a dup, closed when the outbox goes), the stream's message
//! writer (`sequenceNumber`s), a bounded pending buffer, and the write counters. Whoever has a message for the agent
//! hands it to the outbox, which encodes it, frames it (client frames are masked, RFC 6455 §5.3) and writes it with
//! one non-blocking `send`, under its lock: a media worker in the call's turn (caller audio, DTMF from RTP), the
//! call's task (marks played, DTMF from SIP INFO), and the stream's reader task (the hello, `stop`, and the control
//! frames tungstenite writes: pong, close) through [`AgentIo`](super::provider::AgentIo). One lock, one byte order:
//! frames never interleave.
//!
//! * **Pending**: what a `send` could not take waits in the buffer, in order, and later messages queue behind it
//!   (bounded: [`MAX_PENDING`] bytes of µ-law caller audio, scaled to the same duration for L16, twice that for
//!   control messages; beyond, the message is refused
//!   and the caller counts it as `slow_consumer`). The buffer is flushed on writability: the outbox asks its
//!   [`WriteWaker`] (the media workers' epoll set, once the call is registered with them, so the flush is a turn of
//!   the call's tenant) or, without one, the stream's task ([`Outbox::task_flush_wanted`]).
//! * **Latency** of a media frame is recorded when its last byte is written, as on the task path.
//! * **Failure**: a write error ends writing for good (the reader task sees it and ends the stream); after a close
//!   frame, or once the stream has stopped, data messages are refused.
//! * **No allocation** per message: the JSON goes into a reused `String`, the frame into a reused `Vec`; the pending
//!   buffer grows only while the agent is slow, and keeps its room after.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::Notify;

use super::provider::ProviderStats;
use crate::call::{FRAME_MS, Frame};
use crate::metrics::{Direction as MetricDirection, TenantMetrics};
use crate::proto::media_streams::{MediaFormat, StreamStart, StreamWriter};

/// Bytes of µ-law caller audio that may wait for the agent (about 90 media messages, almost two seconds of audio);
/// an L16 stream may hold the same duration (four times the bytes).
pub const MAX_PENDING: usize = 32 << 10;
/// Room for the JSON of one message (a µ-law media message is about 330 bytes, an L16 one about 1050).
const JSON_BYTES: usize = 1280;

/// Asks for a flush when the socket turns writable (registered by the media workers).
pub trait WriteWaker: Send + Sync {
    fn want_writable(&self);
}

/// Why a message was not taken.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The agent is not reading: the pending buffer is full.
    Full,
    /// The stream has stopped, closed, or failed.
    Closed,
}

/// See the module docs.
pub struct Outbox {
    fd: OwnedFd,
    state: Mutex<State>,
    stats: Arc<ProviderStats>,
    metrics: Option<TenantMetrics>,
    /// Wakes the stream's task to flush when no waker is set.
    task_flush: Notify,
}

struct State {
    /// Bytes of caller audio that may wait: [`MAX_PENDING`] scaled to the stream's format.
    media_limit: usize,
    writer: StreamWriter,
    json: String,
    frame: Vec<u8>,
    /// Bytes not yet written; `pending[start..]` is what is left.
    pending: Vec<u8>,
    start: usize,
    /// Bytes handed to `send` so far, and queued so far (written + pending), for the media latency marks.
    written: u64,
    queued: u64,
    /// (end offset in `queued` terms, ingress instant) of each media frame still pending.
    media: VecDeque<(u64, Instant)>,
    /// No more data messages (stop written, close frame seen, or the stream ended).
    closed: bool,
    failed: Option<io::ErrorKind>,
    /// Since when bytes have been waiting.
    stalled_since: Option<Instant>,
    waker: Option<Arc<dyn WriteWaker>>,
}

impl Outbox {
    /// An outbox writing to `socket`, a connected stream socket after the WebSocket handshake (a dup of it is
    /// kept). `stream_sid` is the stream's id for the messages, `format` what its media messages carry.
    pub fn new(
        socket: RawFd,
        stream_sid: &str,
        format: MediaFormat,
        stats: Arc<ProviderStats>,
        metrics: Option<TenantMetrics>,
    ) -> io::Result<Arc<Outbox>> {
        // SAFETY: `socket` is an open descriptor owned by the caller for the duration of this call; the duplicate
        // is checked and owned at once.
        let fd = unsafe {
            let dup = libc::fcntl(socket, libc::F_DUPFD_CLOEXEC, 0);
            if dup < 0 {
                return Err(io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(dup)
        };
        Ok(Arc::new(Outbox {
            fd,
            state: Mutex::new(State {
                media_limit: MAX_PENDING * format.bytes_per_second() / MediaFormat::Mulaw8k.bytes_per_second(),
                writer: StreamWriter::new(stream_sid),
                json: String::with_capacity(JSON_BYTES),
                frame: Vec::with_capacity(JSON_BYTES + 16),
                pending: Vec::new(),
                start: 0,
                written: 0,
                queued: 0,
                media: VecDeque::new(),
                closed: false,
                failed: None,
                stalled_since: None,
                waker: None,
            }),
            stats,
            metrics,
            task_flush: Notify::new(),
        }))
    }

    /// The outbox's own descriptor of the socket (open as long as the outbox is).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Sets (or, with `None`, removes) who flushes on writability. If bytes are waiting, they are asked for at once.
    pub fn set_waker(&self, waker: Option<Arc<dyn WriteWaker>>) {
        let mut s = self.state.lock();
        s.waker = waker;
        if s.start < s.pending.len() && s.failed.is_none() {
            self.want_writable(&s);
        }
    }

    /// One frame of caller audio (`timestamp` is its media time, `frame.seq * 20` ms).
    pub fn media(&self, frame: &Frame) -> Result<(), Refused> {
        let timestamp_ms = frame.seq.saturating_mul(u64::from(FRAME_MS));
        let mut s = self.state.lock();
        let s = &mut *s;
        // Refused before it is written, so that `sequenceNumber` and `chunk` count only what the agent gets.
        let audio = frame.payload.as_bytes();
        self.admit(s, s.media_limit, s.writer.media_len_hint(audio.len()))?;
        s.writer.media(timestamp_ms, audio, &mut s.json);
        self.send_json(s, Some(frame.t_ingress));
        self.stats.media_out.fetch_add(1, Relaxed);
        Ok(())
    }

    pub fn dtmf(&self, digit: char) -> Result<(), Refused> {
        let mut s = self.state.lock();
        let s = &mut *s;
        self.admit(s, 2 * s.media_limit, 256)?;
        s.writer.dtmf(digit, &mut s.json);
        self.send_json(s, None);
        self.stats.dtmf_out.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Echo of a mark whose audio has played.
    pub fn mark(&self, name: &str) -> Result<(), Refused> {
        let mut s = self.state.lock();
        let s = &mut *s;
        self.admit(s, 2 * s.media_limit, 256 + 6 * name.len())?;
        s.writer.mark(name, &mut s.json);
        self.send_json(s, None);
        self.stats.marks_out.fetch_add(1, Relaxed);
        Ok(())
    }

    /// `connected` and `start`: the first two messages of the stream.
    pub(super) fn hello(&self, start: &StreamStart) -> Result<(), Refused> {
        let mut s = self.state.lock();
        let s = &mut *s;
        self.admit(s, usize::MAX, 0)?;
        s.writer.connected(&mut s.json);
        self.send_json(s, None);
        s.writer.start(start, &mut s.json);
        self.send_json(s, None);
        Ok(())
    }

    /// `stop`, the last data message: nothing but control frames may follow.
    pub(super) fn stop(&self, account_sid: &str, call_sid: &str) -> Result<(), Refused> {
        let mut s = self.state.lock();
        let s = &mut *s;
        self.admit(s, usize::MAX, 0)?;
        s.writer.stop(account_sid, call_sid, &mut s.json);
        self.send_json(s, None);
        s.closed = true;
        Ok(())
    }

    /// Refuses data messages from now on (the stream has ended).
    pub(super) fn close(&self) {
        self.state.lock().closed = true;
    }

    /// Bytes already framed by tungstenite (pong, close, ...). A close frame ends data messages.
    pub(super) fn raw(&self, bytes: &[u8]) -> io::Result<()> {
        let mut s = self.state.lock();
        if let Some(kind) = s.failed {
            return Err(io::Error::from(kind));
        }
        if has_close_frame(bytes) {
            s.closed = true;
        }
        // Control frames are small and rare; a full buffer does not refuse them (the stall limit ends a stream
        // whose agent stopped reading).
        self.write_or_queue(&mut s, bytes, None);
        Ok(())
    }

    /// Writes what is pending, as far as the socket takes it; asks to be woken again if some is left. Returns
    /// whether nothing is left.
    pub fn flush(&self) -> bool {
        let mut s = self.state.lock();
        self.flush_locked(&mut s)
    }

    /// Since when bytes have been waiting for the agent, if they are.
    pub(super) fn stalled_since(&self) -> Option<Instant> {
        self.state.lock().stalled_since
    }

    /// The write error that ended writing, if one did.
    pub(super) fn failed(&self) -> Option<io::ErrorKind> {
        self.state.lock().failed
    }

    /// Resolves when the stream's task should flush (no waker set and bytes are waiting).
    pub(super) fn task_flush_wanted(&self) -> impl Future<Output = ()> + '_ {
        self.task_flush.notified()
    }

    /// Whether a data message of about `len` bytes may be written now: not after the stream's end, and, behind
    /// bytes that wait, only within `limit`. (With nothing waiting a message is written at once.)
    fn admit(&self, s: &State, limit: usize, len: usize) -> Result<(), Refused> {
        if s.closed || s.failed.is_some() {
            return Err(Refused::Closed);
        }
        let waiting = s.pending.len() - s.start;
        if waiting > 0 && waiting.saturating_add(len + 14) > limit {
            return Err(Refused::Full);
        }
        Ok(())
    }

    /// Frames `s.json` as a text message and writes or queues it (admitted already).
    fn send_json(&self, s: &mut State, ingress: Option<Instant>) {
        let mut frame = std::mem::take(&mut s.frame);
        frame.clear();
        encode_text_frame(s.json.as_bytes(), rand::random(), &mut frame);
        self.stats.messages_out.fetch_add(1, Relaxed);
        self.stats.bytes_out.fetch_add(s.json.len() as u64, Relaxed);
        self.write_or_queue(s, &frame, ingress);
        s.frame = frame;
    }

    fn write_or_queue(&self, s: &mut State, bytes: &[u8], ingress: Option<Instant>) {
        s.queued += bytes.len() as u64;
        if s.start < s.pending.len() {
            // Behind what waits, in order.
            if s.start > 0 && s.start >= s.pending.len() / 2 {
                s.pending.drain(..s.start);
                s.start = 0;
            }
            s.pending.extend_from_slice(bytes);
            if let Some(t) = ingress {
                s.media.push_back((s.queued, t));
            }
            return;
        }
        match send(self.fd.as_raw_fd(), bytes) {
            Ok(n) => {
                s.written += n as u64;
                if n == bytes.len() {
                    if let (Some(t), Some(m)) = (ingress, &self.metrics) {
                        m.frame_latency(MetricDirection::Inbound, t.elapsed());
                    }
                    return;
                }
                s.pending.clear();
                s.start = 0;
                s.pending.extend_from_slice(&bytes[n..]);
                if let Some(t) = ingress {
                    s.media.push_back((s.queued, t));
                }
                s.stalled_since = Some(Instant::now());
                self.want_writable(s);
            }
            Err(e) => self.fail(s, e),
        }
    }

    fn flush_locked(&self, s: &mut State) -> bool {
        while s.start < s.pending.len() && s.failed.is_none() {
            match send(self.fd.as_raw_fd(), &s.pending[s.start..]) {
                Ok(0) => break,
                Ok(n) => {
                    s.start += n;
                    s.written += n as u64;
                    let now = Instant::now();
                    while let Some(&(end, t)) = s.media.front() {
                        if end > s.written {
                            break;
                        }
                        s.media.pop_front();
                        if let Some(m) = &self.metrics {
                            m.frame_latency(MetricDirection::Inbound, now.saturating_duration_since(t));
                        }
                    }
                }
                Err(e) => self.fail(s, e),
            }
        }
        if s.start >= s.pending.len() {
            s.pending.clear();
            s.start = 0;
            s.stalled_since = None;
            return true;
        }
        if s.failed.is_none() {
            self.want_writable(s);
        }
        false
    }

    fn want_writable(&self, s: &State) {
        match &s.waker {
            Some(w) => w.want_writable(),
            None => self.task_flush.notify_one(),
        }
    }

    fn fail(&self, s: &mut State, e: io::Error) {
        if e.kind() == io::ErrorKind::WouldBlock {
            return;
        }
        s.failed = Some(e.kind());
        s.closed = true;
        s.pending.clear();
        s.start = 0;
        s.media.clear();
        s.stalled_since = None;
        // The reader task notices on its next check; waking it makes that now.
        self.task_flush.notify_one();
    }
}

/// One non-blocking `send`; `WouldBlock` is `Ok(0)`.
fn send(fd: RawFd, bytes: &[u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `bytes` is a live slice of the stated length; `fd` is the outbox's own open descriptor.
        let n = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::WouldBlock => return Ok(0),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
}

/// A client's text frame (FIN, opcode 1, masked with `mask`) carrying `payload`, appended to `out`.
fn encode_text_frame(payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x81);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if let Ok(len) = u16::try_from(len) {
        out.push(0x80 | 126);
        out.extend_from_slice(&len.to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    let at = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[at..].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Whether `bytes`, whole frames as tungstenite writes them, hold a close frame (opcode 8).
fn has_close_frame(mut bytes: &[u8]) -> bool {
    while bytes.len() >= 2 {
        if bytes[0] & 0x0F == 0x8 {
            return true;
        }
        let (len, mut header) = match bytes[1] & 0x7F {
            126 if bytes.len() >= 4 => (u64::from(u16::from_be_bytes([bytes[2], bytes[3]])), 4),
            127 if bytes.len() >= 10 => {
                let mut b = [0u8; 8];
                b.copy_from_slice(&bytes[2..10]);
                (u64::from_be_bytes(b), 10)
            }
            126 | 127 => return false,
            n => (u64::from(n), 2),
        };
        if bytes[1] & 0x80 != 0 {
            header += 4;
        }
        let Some(total) = usize::try_from(len).ok().and_then(|l| l.checked_add(header)) else { return false };
        if total > bytes.len() {
            return false;
        }
        bytes = &bytes[total..];
    }
    false
}

/// How long bytes may wait for the agent before the stream is ended (as a stalled write on the task path).
pub(super) fn stalled_too_long(since: Option<Instant>, limit: Duration) -> bool {
    since.is_some_and(|t| t.elapsed() > limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_frames_are_masked_and_sized_as_rfc_6455_says() {
        let mut out = Vec::new();
        encode_text_frame(b"hi", [1, 2, 3, 4], &mut out);
        assert_eq!(out, [0x81, 0x82, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2]);
        out.clear();
        let long = [b'a'; 300];
        encode_text_frame(&long, [0, 0, 0, 0], &mut out);
        assert_eq!(&out[..4], &[0x81, 0x80 | 126, 1, 44]);
        assert_eq!(out.len(), 4 + 4 + 300);
        assert!(!has_close_frame(&out));
        // A masked close frame after a text frame is found; a truncated buffer is not misread.
        out.extend_from_slice(&[0x88, 0x82, 9, 9, 9, 9, 0x03 ^ 9, 0xE8 ^ 9]);
        assert!(has_close_frame(&out));
        assert!(!has_close_frame(&out[..100]));
    }
}
