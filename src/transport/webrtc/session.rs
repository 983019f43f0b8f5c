//! One WebRTC call's protocol state: ICE-lite, DTLS-SRTP and RTP through `str0m` (sans-IO), Opus through
//! `codec::opus`, RFC 4733 digits through `proto::dtmf`.
//!
//! Owns a call's [`str0m::Rtc`] and its codecs. Bytes and instants in, [`SessionIo`] calls out: the media worker
//! feeds it the call's datagrams in the call's turn, the call's task feeds it timeouts and the agent's frames, and
//! whoever called gets the datagrams to send and the decoded audio through `SessionIo`. It never touches a socket
//! or a clock, so the scheduler decides when a session's work runs.
//!
//! A panic inside the library ends this session only: every entry point runs it under `catch_unwind`, and a
//! session that panicked is [`SessionState::Failed`] from then on (its call ends; the process and every other
//! call go on).

use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use str0m::change::SdpOffer;
use str0m::format::{Codec, CodecExtra};
use str0m::media::{Frequency, MediaKind, MediaTime, Mid, Pt};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc, RtcConfig};

use crate::codec::opus::{
    ENCODED_FRAME_BYTES, MAX_DECODED_SAMPLES, MAX_PACKET_BYTES, OpusDecoder, OpusEncoder, OpusError, PcmRate,
};
use crate::proto::dtmf::{DtmfDetector, DtmfEvent};

/// The payload type we offer telephone-event at, if the browser offers it (Chromium: 126 at 48 kHz).
const TELEPHONE_EVENT_PT: u8 = 126;
/// Longest we let a session go without a timeout input, whatever str0m asks for: the call's task wakes this often.
pub const MAX_TIMEOUT_WAIT: Duration = Duration::from_millis(50);
/// Reused outbound payload buffers (see [`SessionState`]); str0m drops its reference when it packetizes, which
/// happens in the same `drain`, so two would do; four leave room.
const OUT_BUFFERS: usize = 4;

/// Why an offer was refused (the WHIP answer is `400` for these).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OfferError {
    #[error("the body is not an SDP offer: {0}")]
    Malformed(String),
    #[error("the offer has no audio this server can take (Opus, sendrecv or sendonly)")]
    NoAudio,
    #[error("the WebRTC session could not be set up: {0}")]
    Setup(String),
    #[error(transparent)]
    Codec(#[from] OpusError),
}

/// Where a session stands.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Answered; ICE and DTLS not done yet.
    Connecting,
    /// ICE and DTLS done: media flows.
    Connected,
    /// ICE lost the peer (it may come back; the call's task decides how long to wait).
    Disconnected,
    /// The library panicked or failed: the session is dead.
    Failed,
}

/// What a session hands back to whoever drives it.
pub trait SessionIo {
    /// A datagram to send from the call's socket.
    fn transmit(&mut self, packet: &[u8], to: SocketAddr);
    /// Decoded inbound audio: `pcm` at the session's rate, its first sample's RTP time in samples at that rate.
    fn audio(&mut self, pcm: &[i16], rtp_samples: u32, received: Instant);
    /// A DTMF key the peer pressed (RFC 4733).
    fn digit(&mut self, digit: char);
}

/// Counters of what a session saw, for the call's record and debug logs.
#[derive(Copy, Clone, Debug, Default)]
pub struct SessionCounts {
    pub media_packets_in: u64,
    pub media_packets_out: u64,
    pub decode_errors: u64,
    pub digits: u64,
}

/// One WebRTC call.
pub struct RtcSession {
    rtc: Rtc,
    /// The address our socket is bound to (str0m matches it against the candidate it was given).
    bound: SocketAddr,
    mid: Option<Mid>,
    opus_pt: Option<Pt>,
    rate: PcmRate,
    decoder: OpusDecoder,
    encoder: OpusEncoder,
    dtmf: DtmfDetector,
    state: SessionState,
    next_timeout: Instant,
    /// Every time fed to str0m is at least this: worker turns pass kernel receive times, which may be older than a
    /// timeout the call's task fed a moment before.
    last_now: Instant,
    /// RTP time (48 kHz) of the next outbound frame.
    out_time: u64,
    out: [Arc<[u8]>; OUT_BUFFERS],
    counts: SessionCounts,
}

fn crypto() -> Arc<str0m::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<str0m::crypto::CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(str0m::crypto::from_feature_flags())))
}

impl RtcSession {
    /// Accepts a browser's offer: ICE-lite with one host candidate, `advertised` (the address the peer reaches;
    /// our socket is bound to `bound`), Opus and telephone-event only. Returns the session and the answer's SDP.
    pub fn accept(
        offer: &str,
        advertised: SocketAddr,
        bound: SocketAddr,
        rate: PcmRate,
        now: Instant,
    ) -> Result<(RtcSession, String), OfferError> {
        let offer = SdpOffer::from_sdp_string(offer).map_err(|e| OfferError::Malformed(e.to_string()))?;
        let built = catch_unwind(AssertUnwindSafe(|| -> Result<(Rtc, String), OfferError> {
            let mut config = RtcConfig::new()
                .set_crypto_provider(crypto())
                .set_ice_lite(true)
                .clear_codecs()
                .enable_opus(true, false)
                .set_stats_interval(None);
            add_telephone_event(&mut config);
            let mut rtc = config.build(now);
            let candidate = Candidate::host(advertised, "udp").map_err(|e| OfferError::Setup(e.to_string()))?;
            rtc.add_local_candidate(candidate);
            let answer = rtc.sdp_api().accept_offer(offer).map_err(|e| OfferError::Malformed(e.to_string()))?;
            Ok((rtc, answer.to_sdp_string()))
        }));
        let (rtc, answer) = built.map_err(|_| OfferError::Setup("the WebRTC library panicked".into()))??;
        if !answer_takes_opus(&answer) {
            return Err(OfferError::NoAudio);
        }
        let mut session = RtcSession {
            rtc,
            bound,
            mid: None,
            opus_pt: None,
            rate,
            decoder: OpusDecoder::new(rate)?,
            encoder: OpusEncoder::new(rate)?,
            dtmf: DtmfDetector::new(),
            state: SessionState::Connecting,
            next_timeout: now,
            last_now: now,
            out_time: u64::from(rand::random::<u32>()),
            // Each buffer its own allocation, so that each can be written once str0m has let go of it.
            out: std::array::from_fn(|_| Arc::from([0u8; ENCODED_FRAME_BYTES])),
            counts: SessionCounts::default(),
        };
        // The answer made events (the media added): take them now, so the first turn starts clean.
        session.drain(&mut NoIo);
        Ok((session, answer))
    }

    /// The PCM rate the session decodes to and encodes from.
    pub fn rate(&self) -> PcmRate {
        self.rate
    }

    pub fn state(&self) -> SessionState {
        self.state
    }

    pub fn counts(&self) -> SessionCounts {
        self.counts
    }

    /// When str0m wants [`RtcSession::on_timeout`] next (capped by the caller at [`MAX_TIMEOUT_WAIT`]).
    pub fn next_timeout(&self) -> Instant {
        self.next_timeout
    }

    fn clamp(&mut self, now: Instant) -> Instant {
        if now > self.last_now {
            self.last_now = now;
        }
        self.last_now
    }

    /// One datagram from the call's socket, received (by the kernel) at `received`.
    pub fn on_datagram(&mut self, bytes: &[u8], from: SocketAddr, received: Instant, io: &mut dyn SessionIo) {
        if self.state == SessionState::Failed {
            return;
        }
        let now = self.clamp(received);
        let Ok(contents) = bytes.try_into() else { return };
        let input =
            Input::Receive(now, Receive { proto: Protocol::Udp, source: from, destination: self.bound, contents });
        let rtc = &mut self.rtc;
        match catch_unwind(AssertUnwindSafe(|| rtc.handle_input(input))) {
            Ok(Ok(())) => {}
            // A datagram str0m cannot use (not STUN, DTLS or SRTP of this session) is dropped; the session goes on.
            Ok(Err(e)) => tracing::debug!(error = %e, "WebRTC datagram refused"),
            Err(_) => return self.fail("panicked on a datagram"),
        }
        self.drain(io);
    }

    /// Lets str0m run its timers (ICE consent, DTLS retransmission, RTCP).
    pub fn on_timeout(&mut self, now: Instant, io: &mut dyn SessionIo) {
        if self.state == SessionState::Failed {
            return;
        }
        let now = self.clamp(now);
        let rtc = &mut self.rtc;
        match catch_unwind(AssertUnwindSafe(|| rtc.handle_input(Input::Timeout(now)))) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "WebRTC timeout input failed"),
            Err(_) => return self.fail("panicked on a timeout"),
        }
        self.drain(io);
    }

    /// Sends one 20 ms frame of the agent's audio (PCM at the session's rate), encoded to Opus. `false` when it
    /// was not sent (not connected yet, or the codec refused it).
    pub fn send_frame(&mut self, pcm: &[i16], now: Instant, io: &mut dyn SessionIo) -> bool {
        let (Some(mid), Some(pt), SessionState::Connected) = (self.mid, self.opus_pt, self.state) else {
            return false;
        };
        // A buffer str0m no longer holds: written in place, so a frame allocates nothing of ours.
        let Some(slot) = self.out.iter_mut().position(|b| Arc::get_mut(b).is_some()) else { return false };
        let mut packet = [0u8; MAX_PACKET_BYTES];
        let n = match self.encoder.encode(pcm, &mut packet) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "Opus encode failed");
                return false;
            }
        };
        let payload: Arc<[u8]> = match Arc::get_mut(&mut self.out[slot]) {
            Some(buf) if buf.len() == n => {
                buf.copy_from_slice(&packet[..n]);
                Arc::clone(&self.out[slot])
            }
            // Constant bitrate makes every packet ENCODED_FRAME_BYTES long; anything else is sent as is.
            _ => Arc::from(&packet[..n]),
        };
        let now = self.clamp(now);
        let time = MediaTime::new(self.out_time, Frequency::FORTY_EIGHT_KHZ);
        self.out_time = self.out_time.wrapping_add(u64::from(self.rate.rtp_ticks_per_sample()) * pcm.len() as u64);
        let rtc = &mut self.rtc;
        let written = catch_unwind(AssertUnwindSafe(|| match rtc.writer(mid) {
            Some(writer) => writer.write(pt, now, time, payload).is_ok(),
            None => false,
        }));
        match written {
            Ok(true) => self.counts.media_packets_out += 1,
            Ok(false) => return false,
            Err(_) => {
                self.fail("panicked on a write");
                return false;
            }
        }
        self.drain(io);
        true
    }

    /// Ends the session (the call is over): str0m stops; nothing more is sent.
    pub fn close(&mut self) {
        let rtc = &mut self.rtc;
        let _ = catch_unwind(AssertUnwindSafe(|| rtc.disconnect()));
        if self.state != SessionState::Failed {
            self.state = SessionState::Disconnected;
        }
    }

    fn fail(&mut self, what: &'static str) {
        tracing::warn!(what, "the WebRTC library panicked: ending this session");
        self.state = SessionState::Failed;
    }

    /// Takes everything str0m has for us: datagrams to send, events, the next timeout.
    fn drain(&mut self, io: &mut dyn SessionIo) {
        loop {
            let rtc = &mut self.rtc;
            let output = match catch_unwind(AssertUnwindSafe(|| rtc.poll_output())) {
                Ok(Ok(output)) => output,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "WebRTC session failed");
                    self.state = SessionState::Failed;
                    return;
                }
                Err(_) => return self.fail("panicked polling output"),
            };
            match output {
                Output::Timeout(at) => {
                    self.next_timeout = at;
                    return;
                }
                Output::Transmit(t) => io.transmit(&t.contents, t.destination),
                Output::Event(event) => self.on_event(event, io),
            }
        }
    }

    fn on_event(&mut self, event: Event, io: &mut dyn SessionIo) {
        match event {
            Event::Connected => self.state = SessionState::Connected,
            Event::IceConnectionStateChange(IceConnectionState::Disconnected) => {
                self.state = SessionState::Disconnected
            }
            Event::IceConnectionStateChange(IceConnectionState::Connected | IceConnectionState::Completed)
                if self.state == SessionState::Disconnected =>
            {
                self.state = SessionState::Connected
            }
            Event::MediaAdded(added) if added.kind == MediaKind::Audio && self.mid.is_none() => {
                self.mid = Some(added.mid);
                self.opus_pt = self.rtc.codec_config().find(|p| p.spec().codec == Codec::Opus).map(|p| p.pt());
            }
            Event::MediaData(data) => {
                let received = data.network_time;
                match data.codec_extra {
                    CodecExtra::Tele(ev) => {
                        let event = DtmfEvent {
                            event: ev.event,
                            end: ev.end,
                            volume: ev.volume,
                            duration: (ev.duration.as_micros() * 48 / 1000).min(u128::from(u16::MAX)) as u16,
                        };
                        if let Some(digit) = self.dtmf.on_packet(data.time.numer() as u32, &event) {
                            self.counts.digits += 1;
                            io.digit(digit);
                        }
                    }
                    _ if Some(data.pt) == self.opus_pt => {
                        self.counts.media_packets_in += 1;
                        let mut pcm = [0i16; MAX_DECODED_SAMPLES];
                        match self.decoder.decode(&data.data, &mut pcm) {
                            Ok(n) => {
                                let at = data.time.numer() / u64::from(self.rate.rtp_ticks_per_sample());
                                io.audio(&pcm[..n], at as u32, received);
                            }
                            Err(_) => self.counts.decode_errors += 1,
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
}

/// Whether an answer accepted an audio m-line with Opus (str0m answers a refused line with port 0).
fn answer_takes_opus(answer: &str) -> bool {
    let mut in_audio = false;
    let mut live_audio = false;
    for line in answer.lines() {
        if let Some(m) = line.strip_prefix("m=") {
            in_audio = m.starts_with("audio ") && !m.starts_with("audio 0 ");
        } else if in_audio && line.starts_with("a=rtpmap:") && line.to_ascii_lowercase().contains("opus/48000") {
            live_audio = true;
        }
    }
    live_audio
}

/// For draining where no output is wanted yet (right after the answer: nothing to send until the peer speaks).
struct NoIo;

impl SessionIo for NoIo {
    fn transmit(&mut self, _: &[u8], _: SocketAddr) {}
    fn audio(&mut self, _: &[i16], _: u32, _: Instant) {}
    fn digit(&mut self, _: char) {}
}

/// Offers RFC 4733 `telephone-event` at 48 kHz on [`TELEPHONE_EVENT_PT`] beside Opus (what browsers send DTMF as).
fn add_telephone_event(config: &mut RtcConfig) {
    config.codec_config().add_config(
        Pt::from(TELEPHONE_EVENT_PT),
        None,
        Codec::Tele,
        Frequency::FORTY_EIGHT_KHZ,
        None,
        Default::default(),
    );
}

#[cfg(test)]
mod tests;
