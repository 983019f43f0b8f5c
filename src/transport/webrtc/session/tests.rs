//! A session against a real WebRTC peer (a second `str0m` in the client role) over loopback UDP: ICE, DTLS-SRTP,
//! Opus both ways, RFC 4733 digits. The browser test (`tests/e2e_webrtc.rs`) covers Chromium.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use str0m::media::{Direction, MediaKind, TelephoneEvent};

use super::*;
use crate::codec::goertzel;
use crate::codec::opus::{OpusDecoder, OpusEncoder, PcmRate};

/// What the server side of the test got.
#[derive(Default)]
struct Collected {
    sent: Vec<(Vec<u8>, SocketAddr)>,
    pcm: Vec<i16>,
    digits: Vec<char>,
}

impl SessionIo for Collected {
    fn transmit(&mut self, packet: &[u8], to: SocketAddr) {
        self.sent.push((packet.to_vec(), to));
    }
    fn audio(&mut self, pcm: &[i16], _: u32, _: Instant) {
        self.pcm.extend_from_slice(pcm);
    }
    fn digit(&mut self, digit: char) {
        self.digits.push(digit);
    }
}

fn client_config() -> RtcConfig {
    let mut config = RtcConfig::new().set_crypto_provider(crypto()).clear_codecs().enable_opus(true, false);
    add_telephone_event(&mut config);
    config
}

fn tone(hz: f64, rate: u32, n: usize, from: usize) -> Vec<i16> {
    (0..n)
        .map(|i| (8000.0 * (2.0 * std::f64::consts::PI * hz * (from + i) as f64 / f64::from(rate)).sin()) as i16)
        .collect()
}

#[test]
fn a_malformed_offer_and_an_offer_without_audio_are_refused() {
    let addr: SocketAddr = "127.0.0.1:40000".parse().unwrap();
    let now = Instant::now();
    assert!(matches!(
        RtcSession::accept("this is not SDP", addr, addr, PcmRate::Narrow, now),
        Err(OfferError::Malformed(_))
    ));
    // A real offer with video only: nothing this server takes.
    let mut client = RtcConfig::new().set_crypto_provider(crypto()).clear_codecs().enable_vp8(true).build(now);
    client.add_local_candidate(Candidate::host("127.0.0.1:40002".parse().unwrap(), "udp").unwrap());
    let mut change = client.sdp_api();
    change.add_media(MediaKind::Video, Direction::SendRecv, None, None, None);
    let (offer, _) = change.apply().unwrap();
    let refused = RtcSession::accept(&offer.to_sdp_string(), addr, addr, PcmRate::Narrow, now);
    assert!(matches!(refused, Err(OfferError::NoAudio)), "{:?}", refused.err());
}

#[test]
fn a_webrtc_peer_connects_and_audio_and_digits_flow_both_ways() {
    let server_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    let client_sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    server_sock.set_nonblocking(true).unwrap();
    client_sock.set_nonblocking(true).unwrap();
    let (saddr, caddr) = (server_sock.local_addr().unwrap(), client_sock.local_addr().unwrap());
    let t0 = Instant::now();

    let mut client = client_config().build(t0);
    client.add_local_candidate(Candidate::host(caddr, "udp").unwrap());
    let mut change = client.sdp_api();
    let mid = change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let (offer, pending) = change.apply().unwrap();
    let (mut server, answer) =
        RtcSession::accept(&offer.to_sdp_string(), saddr, saddr, PcmRate::Narrow, t0).expect("offer accepted");
    assert!(answer.contains("a=ice-lite"), "ICE-lite answer:\n{answer}");
    assert!(answer.contains(&format!("{} {} typ host", saddr.ip(), saddr.port())), "host candidate:\n{answer}");
    assert!(answer.contains("opus/48000/2") && answer.contains("telephone-event/48000"), "{answer}");
    client.sdp_api().accept_answer(pending, str0m::change::SdpAnswer::from_sdp_string(&answer).unwrap()).unwrap();
    let client_pt = client.codec_config().find(|p| p.spec().codec == Codec::Opus).map(|p| p.pt()).unwrap();

    let mut got = Collected::default();
    let mut client_connected = false;
    let mut client_pcm: Vec<i16> = Vec::new();
    let mut client_decoder = OpusDecoder::new(PcmRate::Wide).unwrap();
    let mut client_encoder = OpusEncoder::new(PcmRate::Wide).unwrap();
    let mut next_client_timeout = t0;
    let mut buf = vec![0u8; 2000];
    let (mut frames_sent, mut server_frames) = (0usize, 0usize);
    let mut next_frame = t0;
    let mut digit_sent = false;
    let deadline = t0 + Duration::from_secs(10);
    while Instant::now() < deadline && !(got.pcm.len() >= 8000 && client_pcm.len() >= 16000 && !got.digits.is_empty()) {
        let now = Instant::now();
        // Client: timers, then its media once connected (20 ms of a 440 Hz tone at 16 kHz per frame).
        if now >= next_client_timeout {
            client.handle_input(Input::Timeout(now)).unwrap();
        }
        if client_connected && now >= next_frame {
            next_frame = now + Duration::from_millis(20);
            let pcm = tone(440.0, 16000, 320, frames_sent * 320);
            let mut packet = [0u8; MAX_PACKET_BYTES];
            let n = client_encoder.encode(&pcm, &mut packet).unwrap();
            let time = MediaTime::new(frames_sent as u64 * 960, Frequency::FORTY_EIGHT_KHZ);
            let mut writer = client.writer(mid).unwrap();
            if frames_sent == 25 && !digit_sent {
                writer = writer.telephone_event(TelephoneEvent {
                    event: 7,
                    end: true,
                    volume: 10,
                    duration: Duration::from_millis(100),
                });
                digit_sent = true;
            }
            writer.write(client_pt, now, time, packet[..n].to_vec()).unwrap();
            frames_sent += 1;
            // The server answers with its own frames: a 1000 Hz tone, as an agent's audio would come.
            let pcm = tone(1000.0, 8000, 160, server_frames * 160);
            if server.send_frame(&pcm, now, &mut got) {
                server_frames += 1;
            }
        }
        loop {
            match client.poll_output().unwrap() {
                Output::Timeout(t) => {
                    next_client_timeout = t;
                    break;
                }
                Output::Transmit(t) => {
                    client_sock.send_to(&t.contents, t.destination).unwrap();
                }
                Output::Event(Event::Connected) => client_connected = true,
                Output::Event(Event::MediaData(data)) => {
                    let mut pcm = [0i16; MAX_DECODED_SAMPLES];
                    if let Ok(n) = client_decoder.decode(&data.data, &mut pcm) {
                        client_pcm.extend_from_slice(&pcm[..n]);
                    }
                }
                Output::Event(_) => {}
            }
        }
        // Server: its timers, then datagrams from the client.
        if now >= server.next_timeout() {
            server.on_timeout(now, &mut got);
        }
        while let Ok((n, from)) = client_sock.recv_from(&mut buf).map(|(n, _)| (n, caddr)) {
            // The client's socket got something from the server.
            let input = Input::Receive(
                Instant::now(),
                Receive {
                    proto: Protocol::Udp,
                    source: saddr,
                    destination: from,
                    contents: buf[..n].try_into().unwrap(),
                },
            );
            client.handle_input(input).unwrap();
        }
        while let Ok((n, from)) = server_sock.recv_from(&mut buf) {
            server.on_datagram(&buf[..n], from, Instant::now(), &mut got);
        }
        for (packet, to) in got.sent.drain(..) {
            server_sock.send_to(&packet, to).unwrap();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(server.state(), SessionState::Connected, "ICE + DTLS done");
    let counts = server.counts();
    assert!(got.pcm.len() >= 8000, "server decoded {} samples from {frames_sent} frames", got.pcm.len());
    assert!(counts.media_packets_in >= 50 && counts.decode_errors == 0, "{counts:?}");
    let tail = &got.pcm[got.pcm.len() / 2..];
    let (at, off) = (goertzel(tail, 8000, 440.0), goertzel(tail, 8000, 1000.0));
    assert!(at > 1000.0 && at > 10.0 * off, "server hears the client's 440 Hz: {at} vs {off} at 1 kHz");
    assert!(client_pcm.len() >= 16000, "client decoded {} samples of {server_frames} frames", client_pcm.len());
    let tail = &client_pcm[client_pcm.len() / 2..];
    let (at, off) = (goertzel(tail, 16000, 1000.0), goertzel(tail, 16000, 440.0));
    assert!(at > 1000.0 && at > 10.0 * off, "client hears the server's 1000 Hz: {at} vs {off} at 440 Hz");
    assert_eq!(got.digits, vec!['7'], "one key press, reported once");
}

#[test]
fn datagrams_that_are_not_webrtc_do_not_hurt_the_session() {
    let addr: SocketAddr = "127.0.0.1:40010".parse().unwrap();
    let now = Instant::now();
    let mut client = client_config().build(now);
    client.add_local_candidate(Candidate::host("127.0.0.1:40012".parse().unwrap(), "udp").unwrap());
    let mut change = client.sdp_api();
    change.add_media(MediaKind::Audio, Direction::SendRecv, None, None, None);
    let (offer, _) = change.apply().unwrap();
    let (mut session, _) = RtcSession::accept(&offer.to_sdp_string(), addr, addr, PcmRate::Narrow, now).unwrap();
    let mut got = Collected::default();
    let from: SocketAddr = "127.0.0.1:40012".parse().unwrap();
    for garbage in [&[][..], &[0u8; 1][..], &[0x80; 12][..], &[0x16, 0xfe, 0xfd, 0, 0][..], &[0xff; 1500][..]] {
        session.on_datagram(garbage, from, Instant::now(), &mut got);
    }
    assert_ne!(session.state(), SessionState::Failed);
    assert!(got.pcm.is_empty() && got.digits.is_empty());
}
