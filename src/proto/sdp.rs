//! SDP offer/answer (RFC 3264/4566) for audio: parse an offer, negotiate a codec, write the answer.
//!
//! Owns the SDP a carrier sends in an INVITE (or re-INVITE) and the answer we return: which audio stream and
//! codec we use, where to send RTP, at what packetization and direction, and the answer text.
//!
//! The line structure and `m=` lines are parsed here; `ezk-sdp-types` parses the `o=`, `c=` and `a=rtpmap`
//! fields. We do not use its whole-session parser (`SessionDescription::parse`) because it gets in the way of
//! RFC 3264: it fails the whole offer on a media type it does not know (`m=image 0 udptl t38`, `m=message`),
//! which carriers do send next to audio, and silently drops non-numeric or out-of-range formats, while the
//! answer must repeat every `m=` line of the offer (rejected ones with port 0) as it was offered. The answer is
//! written as text for the same reason; tests check it with `ezk-sdp-types`' session parser.
//!
//! Parsing is lenient where it costs nothing (unknown lines and attributes, malformed `a=rtpmap` lines are
//! skipped; LF or CRLF line ends) and strict where it matters (`v=0` first, `o=`, `c=` and `m=` well formed).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use ezk_sdp_types::{Connection, Origin, TaggedAddress};

use crate::tenant::Codec;

/// Largest SDP body accepted.
pub const MAX_SDP_LEN: usize = 64 * 1024;
/// Packetization assumed when the offer has no `a=ptime`.
pub const DEFAULT_PTIME_MS: u32 = 20;

/// Media direction attribute (RFC 3264 §5.1, §6.1).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }

    /// The direction an answer gives to a stream offered with `self`.
    pub fn answer(self) -> Direction {
        match self {
            Direction::SendRecv => Direction::SendRecv,
            Direction::SendOnly => Direction::RecvOnly,
            Direction::RecvOnly => Direction::SendOnly,
            Direction::Inactive => Direction::Inactive,
        }
    }

    /// Whether we may send media on a stream we answered with this direction.
    pub fn we_send(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::SendOnly)
    }

    /// Whether the peer may send media on a stream we answered with this direction.
    pub fn we_receive(self) -> bool {
        matches!(self, Direction::SendRecv | Direction::RecvOnly)
    }

    fn parse(s: &str) -> Option<Direction> {
        match s {
            "sendrecv" => Some(Direction::SendRecv),
            "sendonly" => Some(Direction::SendOnly),
            "recvonly" => Some(Direction::RecvOnly),
            "inactive" => Some(Direction::Inactive),
            _ => None,
        }
    }
}

/// A payload format of an audio stream: from `a=rtpmap`, or the RFC 3551 static assignment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtpMap {
    pub pt: u8,
    /// Encoding name, upper-case (`PCMU`, `TELEPHONE-EVENT`).
    pub encoding: String,
    pub clock_rate: u32,
    pub channels: u8,
}

/// One `m=` line as offered, kept verbatim enough to reject it in the answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaLine {
    /// Media type as written (`audio`, `video`, `image`, ...).
    pub media: String,
    pub port: u16,
    pub proto: String,
    /// The format list as written, space separated.
    pub fmts: String,
}

/// An offered audio stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AudioOffer {
    pub port: u16,
    pub proto: String,
    /// In `m=` order; static payload types without `a=rtpmap` resolved per RFC 3551, unknown dynamic ones left out.
    pub formats: Vec<RtpMap>,
    pub ptime: Option<u32>,
    /// Media-level direction attribute, else session-level, else sendrecv.
    pub direction: Direction,
    /// Media-level `c=`, else session-level; `None` when absent or a host name.
    pub connection: Option<IpAddr>,
    /// The host name of a `c=` line that gave one instead of an address (we do not resolve names).
    pub connection_host: Option<String>,
    /// Position of this stream among all `m=` lines.
    pub mline: usize,
}

/// The parts of an offer that negotiation and the answer need.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionOffer {
    pub origin_session_id: String,
    pub origin_session_version: String,
    /// Audio streams in `m=` order.
    pub audio: Vec<AudioOffer>,
    /// Whether any non-audio `m=` line was offered.
    pub has_other_media: bool,
    /// Every `m=` line in order, audio included.
    pub media: Vec<MediaLine>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SdpError {
    #[error("SDP body of {0} bytes is too large")]
    TooLarge(usize),
    #[error("SDP body is not UTF-8")]
    NotUtf8,
    #[error("not an SDP body (no v=0 first)")]
    NotSdp,
    #[error("malformed SDP line {line}")]
    MalformedLine { line: usize },
    #[error("malformed o= line {line}")]
    BadOrigin { line: usize },
    #[error("SDP has no o= line")]
    MissingOrigin,
    #[error("malformed c= line {line}")]
    BadConnection { line: usize },
    #[error("malformed m= line {line}")]
    BadMedia { line: usize },
    #[error("no audio stream offered")]
    NoAudio,
    #[error("no audio stream over RTP/AVP offered")]
    UnsupportedTransport,
    #[error("no codec in common")]
    NoCommonCodec,
    #[error("the audio stream has no connection address")]
    MissingConnection,
    #[error("the audio stream's connection is a host name, not an address")]
    UnresolvedConnection,
}

impl SdpError {
    /// A short, stable name for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            SdpError::TooLarge(_) => "too_large",
            SdpError::NotUtf8 => "not_utf8",
            SdpError::NotSdp => "not_sdp",
            SdpError::MalformedLine { .. } => "malformed_line",
            SdpError::BadOrigin { .. } => "bad_origin",
            SdpError::MissingOrigin => "missing_origin",
            SdpError::BadConnection { .. } => "bad_connection",
            SdpError::BadMedia { .. } => "bad_media",
            SdpError::NoAudio => "no_audio",
            SdpError::UnsupportedTransport => "unsupported_transport",
            SdpError::NoCommonCodec => "no_common_codec",
            SdpError::MissingConnection => "missing_connection",
            SdpError::UnresolvedConnection => "unresolved_connection",
        }
    }
}

/// RFC 3551 Table 4 static audio payload types.
fn static_payload(pt: u8) -> Option<(&'static str, u32, u8)> {
    Some(match pt {
        0 => ("PCMU", 8000, 1),
        3 => ("GSM", 8000, 1),
        4 => ("G723", 8000, 1),
        5 => ("DVI4", 8000, 1),
        6 => ("DVI4", 16000, 1),
        7 => ("LPC", 8000, 1),
        8 => ("PCMA", 8000, 1),
        9 => ("G722", 8000, 1),
        10 => ("L16", 44100, 2),
        11 => ("L16", 44100, 1),
        12 => ("QCELP", 8000, 1),
        13 => ("CN", 8000, 1),
        14 => ("MPA", 90000, 1),
        15 => ("G728", 8000, 1),
        16 => ("DVI4", 11025, 1),
        17 => ("DVI4", 22050, 1),
        18 => ("G729", 8000, 1),
        _ => return None,
    })
}

#[derive(Clone, Copy, Debug)]
enum Conn {
    Ip(IpAddr),
    Host,
}

struct PendingMedia {
    line: MediaLine,
    /// Payload types of an RTP audio line.
    pts: Vec<u8>,
    is_audio: bool,
    conn: Option<(Conn, Option<String>)>,
    direction: Option<Direction>,
    ptime: Option<u32>,
    rtpmaps: Vec<RtpMap>,
}

/// Parses an SDP offer.
pub fn parse_offer(body: &[u8]) -> Result<SessionOffer, SdpError> {
    if body.len() > MAX_SDP_LEN {
        return Err(SdpError::TooLarge(body.len()));
    }
    // One owned copy: ezk-sdp-types' field parsers slice into a `Bytes`.
    let src = Bytes::copy_from_slice(body);
    let text = std::str::from_utf8(&src).map_err(|_| SdpError::NotUtf8)?;

    let mut origin: Option<(String, String)> = None;
    let mut session_conn: Option<(Conn, Option<String>)> = None;
    let mut session_direction: Option<Direction> = None;
    let mut session_ptime: Option<u32> = None;
    let mut media: Vec<PendingMedia> = Vec::new();
    let mut seen_version = false;

    for (idx, raw) in text.split('\n').enumerate() {
        let line_no = idx + 1;
        let line = raw.trim_end_matches(['\r', ' ', '\t']);
        if line.is_empty() {
            continue;
        }
        let bytes = line.as_bytes();
        if bytes.len() < 2 || bytes[1] != b'=' || !bytes[0].is_ascii_lowercase() {
            if !seen_version {
                return Err(SdpError::NotSdp);
            }
            return Err(SdpError::MalformedLine { line: line_no });
        }
        let value = &line[2..];
        if !seen_version {
            if line != "v=0" {
                return Err(SdpError::NotSdp);
            }
            seen_version = true;
            continue;
        }
        match bytes[0] {
            b'o' => {
                let parsed = Origin::parse(&src, value).ok().filter(|(rest, _)| rest.trim().is_empty());
                let (_, o) = parsed.ok_or(SdpError::BadOrigin { line: line_no })?;
                if o.session_id.is_empty() || o.session_version.is_empty() {
                    return Err(SdpError::BadOrigin { line: line_no });
                }
                origin = Some((o.session_id.to_string(), o.session_version.to_string()));
            }
            b'c' => {
                let conn = parse_connection(&src, value).ok_or(SdpError::BadConnection { line: line_no })?;
                match media.last_mut() {
                    Some(m) => m.conn = Some(conn),
                    None => session_conn = Some(conn),
                }
            }
            b'm' => media.push(parse_media(value).ok_or(SdpError::BadMedia { line: line_no })?),
            b'a' => {
                let (name, val) = match value.split_once(':') {
                    Some((n, v)) => (n, Some(v)),
                    None => (value, None),
                };
                match (name, val, media.last_mut()) {
                    (_, None, m) => {
                        if let Some(d) = Direction::parse(name) {
                            match m {
                                Some(m) => m.direction = Some(d),
                                None => session_direction = Some(d),
                            }
                        }
                    }
                    ("ptime", Some(v), m) => {
                        let p = parse_ptime(v);
                        match m {
                            Some(m) => m.ptime = p.or(m.ptime),
                            None => session_ptime = p,
                        }
                    }
                    ("rtpmap", Some(v), Some(m)) => {
                        if let Some(map) = parse_rtpmap(&src, v) {
                            m.rtpmaps.push(map);
                        }
                    }
                    _ => {}
                }
            }
            _ => {}
        }
    }
    if !seen_version {
        return Err(SdpError::NotSdp);
    }
    let (origin_session_id, origin_session_version) = origin.ok_or(SdpError::MissingOrigin)?;

    let mut audio = Vec::new();
    let mut lines = Vec::with_capacity(media.len());
    let mut has_other_media = false;
    for (mline, m) in media.into_iter().enumerate() {
        if m.is_audio {
            let formats = m
                .pts
                .iter()
                .filter_map(|&pt| match m.rtpmaps.iter().find(|r| r.pt == pt) {
                    Some(r) => Some(r.clone()),
                    None => static_payload(pt).map(|(enc, clock_rate, channels)| RtpMap {
                        pt,
                        encoding: enc.to_owned(),
                        clock_rate,
                        channels,
                    }),
                })
                .collect();
            let conn = m.conn.clone().or_else(|| session_conn.clone());
            let (connection, connection_host) = match conn {
                Some((Conn::Ip(ip), _)) => (Some(ip), None),
                Some((Conn::Host, host)) => (None, host),
                None => (None, None),
            };
            audio.push(AudioOffer {
                port: m.line.port,
                proto: m.line.proto.clone(),
                formats,
                ptime: m.ptime.or(session_ptime),
                direction: m.direction.or(session_direction).unwrap_or_default(),
                connection,
                connection_host,
                mline,
            });
        } else {
            has_other_media = true;
        }
        lines.push(m.line);
    }
    Ok(SessionOffer { origin_session_id, origin_session_version, audio, has_other_media, media: lines })
}

fn parse_connection(src: &Bytes, value: &str) -> Option<(Conn, Option<String>)> {
    let (rest, c): (&str, Connection) = Connection::parse(src, value).ok()?;
    if !rest.trim().is_empty() {
        return None;
    }
    Some(match c.address {
        TaggedAddress::IP4(a) => (Conn::Ip(IpAddr::V4(a)), None),
        TaggedAddress::IP6(a) => (Conn::Ip(IpAddr::V6(a)), None),
        TaggedAddress::IP4FQDN(h) | TaggedAddress::IP6FQDN(h) => {
            if h.is_empty() {
                return None;
            }
            (Conn::Host, Some(h.to_string()))
        }
    })
}

fn parse_media(value: &str) -> Option<PendingMedia> {
    let mut tokens = value.split_ascii_whitespace();
    let media = tokens.next()?;
    let port_field = tokens.next()?;
    let proto = tokens.next()?;
    let port_str = port_field.split_once('/').map_or(port_field, |(p, _)| p);
    let port: u16 = port_str.parse().ok()?;
    let fmts: Vec<&str> = tokens.collect();
    if media.is_empty() || !media.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') {
        return None;
    }
    let is_rtp = proto.to_ascii_uppercase().contains("RTP/");
    let is_audio = media == "audio";
    let mut pts = Vec::new();
    if is_audio && is_rtp {
        for f in &fmts {
            let pt: u8 = f.parse().ok().filter(|pt| *pt <= 127)?;
            pts.push(pt);
        }
    }
    Some(PendingMedia {
        line: MediaLine { media: media.to_owned(), port, proto: proto.to_owned(), fmts: fmts.join(" ") },
        pts,
        is_audio,
        conn: None,
        direction: None,
        ptime: None,
        rtpmaps: Vec::new(),
    })
}

fn parse_rtpmap(src: &Bytes, value: &str) -> Option<RtpMap> {
    let (_, r) = ezk_sdp_types::RtpMap::parse(src, value).ok()?;
    if r.payload > 127 || r.encoding.is_empty() || r.clock_rate == 0 {
        return None;
    }
    let channels = match r.params.as_deref() {
        None | Some("") => 1,
        Some(p) => p.trim().parse().ok().filter(|c| *c > 0)?,
    };
    Some(RtpMap { pt: r.payload, encoding: r.encoding.trim().to_ascii_uppercase(), clock_rate: r.clock_rate, channels })
}

/// `a=ptime` value in ms; fractional values (`20.0`) are truncated, absurd ones ignored.
fn parse_ptime(v: &str) -> Option<u32> {
    let v = v.trim();
    let int = v.split_once('.').map_or(v, |(i, _)| i);
    int.parse().ok().filter(|p| (1..=1000).contains(p))
}

/// The outcome of negotiation: what the call uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    pub codec: Codec,
    /// The payload type the offer uses for `codec` (we send with it too).
    pub pt: u8,
    /// The offer's telephone-event/8000 payload type, if any.
    pub telephone_event_pt: Option<u8>,
    /// The offer's ptime, or 20.
    pub ptime_ms: u32,
    /// Where to send RTP; `None` on hold (c=0.0.0.0 or port 0).
    pub remote: Option<SocketAddr>,
    pub answer_direction: Direction,
    /// Index into `SessionOffer::audio` of the stream chosen.
    pub audio_index: usize,
}

/// RTP encoding name of a codec (RFC 3551).
pub fn encoding_name(codec: Codec) -> &'static str {
    match codec {
        Codec::Pcmu => "PCMU",
        Codec::Pcma => "PCMA",
    }
}

/// RFC 3551 static payload type of a codec.
pub fn static_pt(codec: Codec) -> u8 {
    match codec {
        Codec::Pcmu => 0,
        Codec::Pcma => 8,
    }
}

fn codec_matches(codec: Codec, f: &RtpMap) -> bool {
    f.encoding == encoding_name(codec) && f.clock_rate == 8000 && f.channels == 1
}

fn usable_transport(proto: &str) -> bool {
    proto.eq_ignore_ascii_case("RTP/AVP") || proto.eq_ignore_ascii_case("RTP/AVPF")
}

/// Picks the first of `prefs` that the first usable audio `m=` line offers (telephone-event/8000 kept if
/// offered). Usable: RTP/AVP(F) and a codec in common; streams with a non-zero port are preferred over
/// disabled ones. `NoCommonCodec` (and the other errors) -> the caller answers 488. The answer direction
/// mirrors the offer (sendonly -> recvonly, recvonly -> sendonly, inactive -> inactive).
pub fn negotiate(offer: &SessionOffer, prefs: &[Codec]) -> Result<Negotiated, SdpError> {
    if offer.audio.is_empty() {
        return Err(SdpError::NoAudio);
    }
    let candidates = || offer.audio.iter().enumerate().filter(|(_, a)| usable_transport(&a.proto));
    if candidates().next().is_none() {
        return Err(SdpError::UnsupportedTransport);
    }
    let pick =
        |a: &AudioOffer| prefs.iter().find_map(|&c| a.formats.iter().find(|f| codec_matches(c, f)).map(|f| (c, f.pt)));
    let chosen = candidates()
        .filter(|(_, a)| a.port != 0)
        .find_map(|(i, a)| pick(a).map(|c| (i, a, c)))
        .or_else(|| candidates().find_map(|(i, a)| pick(a).map(|c| (i, a, c))));
    let Some((audio_index, a, (codec, pt))) = chosen else {
        return Err(SdpError::NoCommonCodec);
    };
    let telephone_event_pt =
        a.formats.iter().find(|f| f.encoding == "TELEPHONE-EVENT" && f.clock_rate == 8000).map(|f| f.pt);
    let remote = if a.port == 0 {
        None
    } else {
        match (a.connection, &a.connection_host) {
            (Some(ip), _) if ip.is_unspecified() => None,
            (Some(ip), _) => Some(SocketAddr::new(ip, a.port)),
            (None, Some(_)) => return Err(SdpError::UnresolvedConnection),
            (None, None) => return Err(SdpError::MissingConnection),
        }
    };
    Ok(Negotiated {
        codec,
        pt,
        telephone_event_pt,
        ptime_ms: a.ptime.unwrap_or(DEFAULT_PTIME_MS),
        remote,
        answer_direction: a.direction.answer(),
        audio_index,
    })
}

/// Writes the SDP answer (RFC 3264 §6): one `m=` line per offered one, in order; the chosen audio stream with
/// our codec and telephone-event (`a=fmtp:PT 0-16`), `a=ptime` and the direction; every other stream rejected
/// with port 0. `c=` and `o=` carry `local_ip`; the session id and version are ours.
pub fn write_answer(
    neg: &Negotiated,
    offer: &SessionOffer,
    local_ip: IpAddr,
    local_port: u16,
    session_id: u64,
    session_version: u64,
) -> String {
    let ip_kind = if local_ip.is_ipv4() { "IP4" } else { "IP6" };
    let chosen = offer.audio.get(neg.audio_index);
    let mut s = String::with_capacity(320);
    // Writing into a String cannot fail.
    let _ = write!(s, "v=0\r\no=fairvox {session_id} {session_version} IN {ip_kind} {local_ip}\r\ns=fairvox\r\n");
    let _ = write!(s, "c=IN {ip_kind} {local_ip}\r\nt=0 0\r\n");
    for (i, m) in offer.media.iter().enumerate() {
        match chosen {
            Some(a) if a.mline == i => {
                // A stream offered with port 0 stays at port 0 (RFC 3264 §6).
                let port = if a.port == 0 { 0 } else { local_port };
                let _ = write!(s, "m=audio {port} {} {}", a.proto, neg.pt);
                if let Some(te) = neg.telephone_event_pt {
                    let _ = write!(s, " {te}");
                }
                let _ = write!(s, "\r\na=rtpmap:{} {}/8000\r\n", neg.pt, encoding_name(neg.codec));
                if let Some(te) = neg.telephone_event_pt {
                    let _ = write!(s, "a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-16\r\n");
                }
                let _ = write!(s, "a=ptime:{}\r\na={}\r\n", neg.ptime_ms, neg.answer_direction.as_str());
            }
            _ => {
                let fmts = if m.fmts.is_empty() { "0" } else { m.fmts.as_str() };
                let _ = write!(s, "m={} 0 {} {fmts}\r\n", m.media, m.proto);
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn fixture(name: &str) -> Vec<u8> {
        let path = format!("{}/tests/fixtures/sdp/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    const LOCAL: IpAddr = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));

    fn both() -> [Codec; 2] {
        [Codec::Pcmu, Codec::Pcma]
    }

    /// The answer parses with an independent SDP parser and with ours.
    fn check_answer(answer: &str, offer: &SessionOffer) -> SessionOffer {
        let ezk = ezk_sdp_types::SessionDescription::parse(&bytesstr::BytesStr::from(answer.to_owned()));
        if offer.media.iter().all(|m| ["audio", "video", "text", "application"].contains(&m.media.as_str())) {
            let ezk = ezk.unwrap_or_else(|e| panic!("ezk rejects our answer: {e}\n{answer}"));
            assert_eq!(ezk.media_descriptions.len(), offer.media.len());
        }
        let ours = parse_offer(answer.as_bytes()).unwrap();
        assert_eq!(ours.media.len(), offer.media.len(), "same number of m= lines");
        for (a, o) in ours.media.iter().zip(&offer.media) {
            assert_eq!(a.media, o.media);
            assert_eq!(a.proto, o.proto);
        }
        ours
    }

    #[test]
    fn rfc4317_audio_and_video_1() {
        let offer = parse_offer(&fixture("rfc4317_2_1_offer.sdp")).unwrap();
        assert_eq!(offer.origin_session_id, "2890844526");
        assert!(offer.has_other_media);
        assert_eq!(offer.media.len(), 2);
        assert_eq!(
            offer.media[1],
            MediaLine { media: "video".into(), port: 51372, proto: "RTP/AVP".into(), fmts: "31 32".into() }
        );
        let a = &offer.audio[0];
        assert_eq!((a.port, a.proto.as_str(), a.mline), (49170, "RTP/AVP", 0));
        let encodings: Vec<&str> = a.formats.iter().map(|f| f.encoding.as_str()).collect();
        assert_eq!(encodings, ["PCMU", "PCMA", "ILBC"]);
        assert_eq!(a.connection, None);
        assert_eq!(a.connection_host.as_deref(), Some("host.atlanta.example.com"));
        assert_eq!(negotiate(&offer, &both()).unwrap_err(), SdpError::UnresolvedConnection);

        // With the host name replaced by an address, as a carrier would send it.
        let body = String::from_utf8(fixture("rfc4317_2_1_offer.sdp")).unwrap();
        let body = body.replace("host.atlanta.example.com", "192.0.2.101");
        let offer = parse_offer(body.as_bytes()).unwrap();
        let neg = negotiate(&offer, &both()).unwrap();
        assert_eq!(
            neg,
            Negotiated {
                codec: Codec::Pcmu,
                pt: 0,
                telephone_event_pt: None,
                ptime_ms: 20,
                remote: Some("192.0.2.101:49170".parse().unwrap()),
                answer_direction: Direction::SendRecv,
                audio_index: 0,
            }
        );
        let answer = write_answer(&neg, &offer, LOCAL, 49174, 2808844564, 2808844564);
        let parsed = check_answer(&answer, &offer);
        assert_eq!(parsed.audio[0].port, 49174);
        assert_eq!(parsed.media[1].port, 0, "video rejected");
        assert!(answer.contains("m=video 0 RTP/AVP 31 32\r\n"));

        // RFC 4317's own answer parses, and accepts only PCMU for audio.
        let answer = parse_offer(&fixture("rfc4317_2_1_answer.sdp")).unwrap();
        assert_eq!(answer.audio[0].formats.len(), 1);
        assert_eq!(answer.audio[0].port, 49174);
    }

    #[test]
    fn rfc4317_hold() {
        let offer = parse_offer(&fixture("rfc4317_3_1_hold_offer.sdp")).unwrap();
        assert_eq!(offer.audio[0].direction, Direction::SendOnly);
        let body = String::from_utf8(fixture("rfc4317_3_1_hold_offer.sdp")).unwrap();
        let body = body.replace("host.atlanta.example.com", "192.0.2.101");
        let offer = parse_offer(body.as_bytes()).unwrap();
        let neg = negotiate(&offer, &both()).unwrap();
        assert_eq!(neg.answer_direction, Direction::RecvOnly);
        let answer = write_answer(&neg, &offer, LOCAL, 4000, 1, 2);
        assert!(answer.contains("a=recvonly\r\n"));
        check_answer(&answer, &offer);
    }

    #[test]
    fn typical_carrier_offer() {
        let offer = parse_offer(&fixture("carrier_pcmu_pcma_te.sdp")).unwrap();
        assert!(!offer.has_other_media);
        let a = &offer.audio[0];
        assert_eq!(
            a.formats,
            vec![
                RtpMap { pt: 0, encoding: "PCMU".into(), clock_rate: 8000, channels: 1 },
                RtpMap { pt: 8, encoding: "PCMA".into(), clock_rate: 8000, channels: 1 },
                RtpMap { pt: 101, encoding: "TELEPHONE-EVENT".into(), clock_rate: 8000, channels: 1 },
            ]
        );
        assert_eq!(a.ptime, Some(20));
        let neg = negotiate(&offer, &both()).unwrap();
        assert_eq!((neg.codec, neg.pt, neg.telephone_event_pt, neg.ptime_ms), (Codec::Pcmu, 0, Some(101), 20));
        assert_eq!(neg.remote, Some("203.0.113.10:16384".parse().unwrap()));
        // Our preference decides, not the offer's order.
        let neg_a = negotiate(&offer, &[Codec::Pcma, Codec::Pcmu]).unwrap();
        assert_eq!((neg_a.codec, neg_a.pt), (Codec::Pcma, 8));

        let answer = write_answer(&neg, &offer, LOCAL, 30000, 42, 1);
        assert_eq!(
            answer,
            "v=0\r\no=fairvox 42 1 IN IP4 198.51.100.7\r\ns=fairvox\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\n\
             m=audio 30000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
             a=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\n"
        );
        let round = check_answer(&answer, &offer);
        assert_eq!(round.audio[0].connection, Some(LOCAL));
        assert_eq!(round.origin_session_id, "42");
        let neg2 = negotiate(&round, &both()).unwrap();
        assert_eq!(neg2.remote, Some(SocketAddr::new(LOCAL, 30000)));
        assert_eq!((neg2.codec, neg2.telephone_event_pt, neg2.ptime_ms), (Codec::Pcmu, Some(101), 20));
    }

    #[test]
    fn carrier_offer_with_30ms_and_pcma_first() {
        let offer = parse_offer(&fixture("carrier_pcma_30ms.sdp")).unwrap();
        let neg = negotiate(&offer, &[Codec::Pcmu, Codec::Pcma]).unwrap();
        assert_eq!((neg.codec, neg.pt, neg.ptime_ms, neg.telephone_event_pt), (Codec::Pcmu, 0, 30, Some(96)));
        let neg = negotiate(&offer, &[Codec::Pcma]).unwrap();
        assert_eq!(neg.codec, Codec::Pcma);
        let answer = write_answer(&neg, &offer, LOCAL, 30000, 1, 1);
        assert!(answer.contains("m=audio 30000 RTP/AVP 8 96\r\n"));
        assert!(answer.contains("a=ptime:30\r\n"));
        check_answer(&answer, &offer);
    }

    #[test]
    fn sipp_default_offer_without_rtpmap() {
        let offer = parse_offer(&fixture("sipp_default.sdp")).unwrap();
        assert_eq!(
            offer.audio[0].formats,
            vec![RtpMap { pt: 0, encoding: "PCMU".into(), clock_rate: 8000, channels: 1 }]
        );
        let neg = negotiate(&offer, &both()).unwrap();
        assert_eq!((neg.codec, neg.pt, neg.telephone_event_pt), (Codec::Pcmu, 0, None));
        assert_eq!(neg.remote, Some("127.0.0.1:6000".parse().unwrap()));
        let answer = write_answer(&neg, &offer, LOCAL, 7000, 1, 1);
        assert!(!answer.contains("telephone-event"));
        check_answer(&answer, &offer);
        // PCMA only -> no common codec with a PCMA-less preference.
        assert_eq!(negotiate(&offer, &[Codec::Pcma]).unwrap_err(), SdpError::NoCommonCodec);
        assert_eq!(negotiate(&offer, &[]).unwrap_err().label(), "no_common_codec");
    }

    #[test]
    fn hold_offers() {
        let base =
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        let neg = |extra: &str| negotiate(&parse_offer(format!("{base}{extra}").as_bytes()).unwrap(), &both()).unwrap();
        assert_eq!(neg("a=sendonly\r\n").answer_direction, Direction::RecvOnly);
        assert_eq!(neg("a=recvonly\r\n").answer_direction, Direction::SendOnly);
        assert_eq!(neg("a=inactive\r\n").answer_direction, Direction::Inactive);
        assert_eq!(neg("a=sendrecv\r\n").answer_direction, Direction::SendRecv);
        assert!(neg("a=inactive\r\n").remote.is_some());
        // Old-style hold: c=0.0.0.0 (RFC 3264 §8.4).
        let held = neg("c=IN IP4 0.0.0.0\r\n");
        assert_eq!(held.remote, None);
        assert_eq!(held.answer_direction, Direction::SendRecv);
        // Session-level direction applies to the media.
        let body = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\na=sendonly\r\nm=audio 4000 RTP/AVP 0\r\n";
        let offer = parse_offer(body.as_bytes()).unwrap();
        assert_eq!(offer.audio[0].direction, Direction::SendOnly);
        // Fixture: a re-INVITE putting the call on hold with both styles.
        let offer = parse_offer(&fixture("hold_reinvite.sdp")).unwrap();
        let n = negotiate(&offer, &both()).unwrap();
        assert_eq!((n.remote, n.answer_direction), (None, Direction::RecvOnly));
        let answer = write_answer(&n, &offer, LOCAL, 4000, 5, 6);
        assert!(answer.contains("a=recvonly\r\n"));
        check_answer(&answer, &offer);
        // Port 0 audio only: disabled, no remote, answered with port 0.
        let body = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 0 RTP/AVP 0\r\n";
        let offer = parse_offer(body.as_bytes()).unwrap();
        let n = negotiate(&offer, &both()).unwrap();
        assert_eq!(n.remote, None);
        assert!(write_answer(&n, &offer, LOCAL, 4000, 1, 1).contains("m=audio 0 RTP/AVP 0\r\n"));
    }

    #[test]
    fn g729_only_has_no_common_codec() {
        let offer = parse_offer(&fixture("g729_only.sdp")).unwrap();
        assert_eq!(offer.audio[0].formats[0].encoding, "G729");
        let err = negotiate(&offer, &both()).unwrap_err();
        assert_eq!(err, SdpError::NoCommonCodec);
        assert_eq!(err.label(), "no_common_codec");
    }

    #[test]
    fn t38_next_to_audio_is_rejected_not_fatal() {
        let offer = parse_offer(&fixture("audio_and_t38.sdp")).unwrap();
        assert!(offer.has_other_media);
        assert_eq!(offer.media[1].media, "image");
        let neg = negotiate(&offer, &both()).unwrap();
        let answer = write_answer(&neg, &offer, LOCAL, 4000, 1, 1);
        assert!(answer.ends_with("m=image 0 udptl t38\r\n"), "{answer}");
        check_answer(&answer, &offer);
    }

    #[test]
    fn picks_the_first_usable_audio_stream() {
        // SRTP stream first (we have no SRTP), then plain RTP; a disabled stream before an active one.
        let body = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
                    m=audio 5000 RTP/SAVP 0\r\nm=audio 0 RTP/AVP 0\r\nm=audio 6000 RTP/AVP 8 0\r\na=rtpmap:8 PCMA/8000\r\n\
                    m=video 7000 RTP/AVP 96\r\n";
        let offer = parse_offer(body.as_bytes()).unwrap();
        assert_eq!(offer.audio.len(), 3);
        let neg = negotiate(&offer, &both()).unwrap();
        assert_eq!((neg.audio_index, neg.codec, neg.remote.unwrap().port()), (2, Codec::Pcmu, 6000));
        let answer = write_answer(&neg, &offer, LOCAL, 4000, 1, 1);
        let lines: Vec<&str> = answer.lines().filter(|l| l.starts_with("m=")).collect();
        assert_eq!(
            lines,
            ["m=audio 0 RTP/SAVP 0", "m=audio 0 RTP/AVP 0", "m=audio 4000 RTP/AVP 0", "m=video 0 RTP/AVP 96"]
        );
        check_answer(&answer, &offer);
        // Only SRTP offered.
        let body =
            "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 5000 RTP/SAVP 0\r\n";
        assert_eq!(
            negotiate(&parse_offer(body.as_bytes()).unwrap(), &both()).unwrap_err(),
            SdpError::UnsupportedTransport
        );
        // No audio at all.
        let body = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=video 5000 RTP/AVP 31\r\n";
        assert_eq!(negotiate(&parse_offer(body.as_bytes()).unwrap(), &both()).unwrap_err(), SdpError::NoAudio);
    }

    #[test]
    fn media_level_connection_ipv6_and_lf_only() {
        let body =
            "v=0\no=- 7 8 IN IP6 2001:db8::1\ns=-\nt=0 0\nm=audio 4000 RTP/AVP 8\nc=IN IP6 2001:db8::2\na=ptime:20.0\n";
        let offer = parse_offer(body.as_bytes()).unwrap();
        let neg = negotiate(&offer, &both()).unwrap();
        assert_eq!(neg.remote, Some("[2001:db8::2]:4000".parse().unwrap()));
        assert_eq!(neg.ptime_ms, 20);
        let local: IpAddr = "2001:db8::7".parse().unwrap();
        let answer = write_answer(&neg, &offer, local, 4002, 1, 1);
        assert!(answer.contains("c=IN IP6 2001:db8::7\r\n"));
        assert!(answer.contains("o=fairvox 1 1 IN IP6 2001:db8::7\r\n"));
        let round = check_answer(&answer, &offer);
        assert_eq!(round.audio[0].connection, Some(local));
        // Missing c= altogether.
        let body = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        let err = negotiate(&parse_offer(body.as_bytes()).unwrap(), &both()).unwrap_err();
        assert_eq!(err, SdpError::MissingConnection);
    }

    #[test]
    fn dynamic_pcmu_and_odd_rtpmaps() {
        let body = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n\
                    m=audio 4000 RTP/AVP 112 99 0 101\r\na=rtpmap:112 pcmu/8000/1\r\na=rtpmap:99 opus/48000/2\r\n\
                    a=rtpmap:0 PCMU\r\na=rtpmap:101 telephone-event/48000\r\na=ptime:abc\r\n";
        let offer = parse_offer(body.as_bytes()).unwrap();
        let f = &offer.audio[0].formats;
        assert_eq!(f[0], RtpMap { pt: 112, encoding: "PCMU".into(), clock_rate: 8000, channels: 1 });
        assert_eq!(f[1].channels, 2);
        assert_eq!(f[2].encoding, "PCMU", "a malformed rtpmap falls back to the static assignment");
        assert_eq!(offer.audio[0].ptime, None);
        let neg = negotiate(&offer, &both()).unwrap();
        assert_eq!((neg.pt, neg.telephone_event_pt), (112, None), "telephone-event/48000 is not ours");
    }

    #[test]
    fn garbage_is_an_error() {
        let cases: &[(&[u8], &str)] = &[
            (b"", "not_sdp"),
            (b"hello world", "not_sdp"),
            (b"\xff\xfe\x00", "not_utf8"),
            (b"v=1\r\no=- 1 1 IN IP4 1.2.3.4\r\n", "not_sdp"),
            (b"o=- 1 1 IN IP4 1.2.3.4\r\nv=0\r\n", "not_sdp"),
            (b"v=0\r\ns=-\r\nt=0 0\r\n", "missing_origin"),
            (b"v=0\r\no=-\r\n", "bad_origin"),
            (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nthis is not sdp\r\n", "malformed_line"),
            (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nc=IN IP9 x\r\n", "bad_connection"),
            (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 70000 RTP/AVP 0\r\n", "bad_media"),
            (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0 300\r\n", "bad_media"),
            (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio 4000 RTP/AVP 0 x\r\n", "bad_media"),
            (b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=audio\r\n", "bad_media"),
        ];
        for (body, label) in cases {
            let err = parse_offer(body).unwrap_err();
            assert_eq!(err.label(), *label, "{:?}: {err}", String::from_utf8_lossy(body));
        }
        assert_eq!(parse_offer(&vec![b'a'; MAX_SDP_LEN + 1]).unwrap_err().label(), "too_large");
        // Formats of other media are not checked.
        let ok = b"v=0\r\no=- 1 1 IN IP4 1.2.3.4\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n";
        assert_eq!(parse_offer(ok).unwrap().media[0].fmts, "webrtc-datachannel");
    }

    #[test]
    fn answer_for_a_stale_index_rejects_everything() {
        let offer = parse_offer(&fixture("carrier_pcmu_pcma_te.sdp")).unwrap();
        let mut neg = negotiate(&offer, &both()).unwrap();
        neg.audio_index = 9;
        let answer = write_answer(&neg, &offer, LOCAL, 4000, 1, 1);
        assert!(answer.contains("m=audio 0 RTP/AVP 0 8 101\r\n"));
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..400)) {
            if let Ok(offer) = parse_offer(&bytes)
                && let Ok(neg) = negotiate(&offer, &both())
            {
                let _ = write_answer(&neg, &offer, LOCAL, 1, 1, 1);
            }
        }

        #[test]
        fn mutated_carrier_offers_never_panic(edits in proptest::collection::vec((0usize..400, proptest::num::u8::ANY), 1..6)) {
            let mut body = fixture("carrier_pcma_30ms.sdp");
            for (i, b) in edits {
                let n = body.len();
                body[i % n] = b;
            }
            if let Ok(offer) = parse_offer(&body)
                && let Ok(neg) = negotiate(&offer, &both())
            {
                let _ = write_answer(&neg, &offer, LOCAL, 1, 1, 1);
            }
        }

        #[test]
        fn sdp_like_lines_never_panic(lines in proptest::collection::vec(
            ("[vocmats]", "[ -~]{0,40}"), 0..20)
        ) {
            let mut body = String::from("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\n");
            for (k, v) in lines {
                body.push_str(&format!("{k}={v}\r\n"));
            }
            if let Ok(offer) = parse_offer(body.as_bytes())
                && let Ok(neg) = negotiate(&offer, &both())
            {
                let answer = write_answer(&neg, &offer, LOCAL, 1, 1, 1);
                proptest::prop_assert!(parse_offer(answer.as_bytes()).is_ok());
            }
        }
    }
}
