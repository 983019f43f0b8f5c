//! The Twilio Media Streams JSON protocol, sans-IO: writes server messages into reusable buffers, parses agent messages.
//!
//! Server → agent messages are written by [`StreamWriter`] straight into a caller-owned `String` (cleared first), so a
//! media message costs no allocation once that buffer has grown to fit one: numbers are formatted on the stack,
//! base64 is encoded in place, and strings are JSON-escaped while being copied. The writer keeps the two counters
//! the protocol needs: `sequenceNumber` (every message after `connected`, from 1) and `chunk` (media messages, from 1).
//!
//! Agent → server messages are parsed by [`parse_agent_message`], which borrows from the text it is given (no
//! intermediate `serde_json::Value`) and tolerates anything it does not act on: unknown events and unknown or
//! oddly-typed fields are [`AgentMessage::Ignored`] or skipped, never an error. Only a message that claims to be one
//! of the three events we act on (`media`, `mark`, `clear`) and is unusable, or text that is not a JSON object with
//! a string `event`, is an [`AgentMessageError`].

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use base64::alphabet;
use base64::engine::DecodePaddingMode;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Largest agent message (text, bytes) that [`parse_agent_message`] accepts: 1 MiB of JSON is ~98 s of base64
/// µ-law, far beyond any playout bound. Larger ones are [`AgentMessageError::TooLarge`].
pub const MAX_AGENT_MESSAGE_BYTES: usize = 1 << 20;
/// Longest mark name (bytes) accepted from an agent; marks are stored until played and echoed back.
pub const MAX_MARK_NAME_BYTES: usize = 1024;

/// The audio format of a provider stream, chosen per app: what `start` announces in `mediaFormat`, what `media`
/// payloads carry both ways.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum MediaFormat {
    /// 8 kHz µ-law, one byte per sample: the Twilio format, what every agent that speaks Twilio Media Streams
    /// expects.
    #[default]
    Mulaw8k,
    /// 16 kHz linear PCM, 16-bit signed little-endian (as Vonage's `audio/l16;rate=16000` streams carry it): for
    /// agents that want wideband audio from WebRTC callers without a µ-law round trip.
    L16Wide,
}

impl MediaFormat {
    /// Every format, in the order of [`MediaFormat::NAMES`].
    pub const ALL: [MediaFormat; 2] = [MediaFormat::Mulaw8k, MediaFormat::L16Wide];
    /// The names used in config, the API and the store.
    pub const NAMES: [&'static str; 2] = ["mulaw_8k", "l16_16k"];

    /// The name used in config, the API and the store.
    pub fn name(self) -> &'static str {
        match self {
            MediaFormat::Mulaw8k => Self::NAMES[0],
            MediaFormat::L16Wide => Self::NAMES[1],
        }
    }

    /// The format with this [`name`](MediaFormat::name), if any.
    pub fn from_name(name: &str) -> Option<MediaFormat> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// `mediaFormat.encoding` in `start`.
    pub fn encoding(self) -> &'static str {
        match self {
            MediaFormat::Mulaw8k => "audio/x-mulaw",
            MediaFormat::L16Wide => "audio/x-l16",
        }
    }

    /// Samples per second.
    pub fn sample_rate(self) -> u32 {
        match self {
            MediaFormat::Mulaw8k => 8000,
            MediaFormat::L16Wide => 16000,
        }
    }

    /// Bytes per second of audio.
    pub fn bytes_per_second(self) -> usize {
        match self {
            MediaFormat::Mulaw8k => 8000,
            MediaFormat::L16Wide => 32000,
        }
    }
}

/// What the `start` message announces about one stream.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamStart {
    /// The tenant's public id (`accountSid`).
    pub account_sid: String,
    pub call_sid: String,
    /// Informational: the writer always uses the `stream_sid` it was created with, so all messages agree.
    pub stream_sid: String,
    /// Caller, sent as `customParameters.from_number`.
    pub from: String,
    /// Callee, sent as `customParameters.to_number`.
    pub to: String,
    /// The app's custom parameters, sent in order before `from_number`/`to_number`. Keys `from_number` and
    /// `to_number` and repeated keys are skipped (first one wins) so the JSON object has unique keys.
    pub custom_parameters: Vec<(String, String)>,
    /// What the stream's media messages carry, both ways (`mediaFormat`).
    pub media_format: MediaFormat,
}

/// Writes server→agent messages for one stream into a reusable `String` (cleared first), keeping the
/// `sequenceNumber` and `chunk` counters.
#[derive(Clone, Debug)]
pub struct StreamWriter {
    /// `"streamSid":"MZ…"`, escaped once at construction.
    sid_field: String,
    /// Last `sequenceNumber` written (0: none yet).
    seq: u64,
    /// Last `chunk` written (0: no media yet).
    chunk: u64,
}

impl StreamWriter {
    pub fn new(stream_sid: &str) -> Self {
        let mut sid_field = String::with_capacity(stream_sid.len() + 16);
        sid_field.push_str("\"streamSid\":");
        push_json_str(&mut sid_field, stream_sid);
        StreamWriter { sid_field, seq: 0, chunk: 0 }
    }

    /// `sequenceNumber` of the last message written (0 before `start`).
    pub fn sequence_number(&self) -> u64 {
        self.seq
    }

    /// `chunk` of the last media message written (0 before the first).
    pub fn chunks(&self) -> u64 {
        self.chunk
    }

    /// An upper bound on the length of a media message with `payload_len` bytes of audio: reserve this much in
    /// `out` once and [`StreamWriter::media`] never allocates.
    pub fn media_len_hint(&self, payload_len: usize) -> usize {
        // Fixed text + sid + three u64 counters (20 digits each) + base64.
        96 + self.sid_field.len() + 3 * 20 + payload_len.div_ceil(3) * 4
    }

    /// `{"event":"connected","protocol":"Call","version":"1.0.0"}`; carries no `sequenceNumber`.
    pub fn connected(&mut self, out: &mut String) {
        out.clear();
        out.push_str(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#);
    }

    /// The `start` message: ids, `tracks: ["inbound"]`, custom parameters (the app's, then `from_number` and
    /// `to_number`), and the media format (8 kHz µ-law, or 16 kHz L16; mono).
    pub fn start(&mut self, start: &StreamStart, out: &mut String) {
        self.head("start", out);
        out.push_str(r#","start":{"accountSid":"#);
        push_json_str(out, &start.account_sid);
        out.push(',');
        out.push_str(&self.sid_field);
        out.push_str(r#","callSid":"#);
        push_json_str(out, &start.call_sid);
        out.push_str(r#","tracks":["inbound"],"customParameters":{"#);
        for (i, (key, value)) in start.custom_parameters.iter().enumerate() {
            let reserved = key == "from_number" || key == "to_number";
            let repeated = start.custom_parameters[..i].iter().any(|(k, _)| k == key);
            if reserved || repeated {
                continue;
            }
            push_json_str(out, key);
            out.push(':');
            push_json_str(out, value);
            out.push(',');
        }
        out.push_str(r#""from_number":"#);
        push_json_str(out, &start.from);
        out.push_str(r#","to_number":"#);
        push_json_str(out, &start.to);
        out.push_str(r#"},"mediaFormat":{"encoding":""#);
        out.push_str(start.media_format.encoding());
        out.push_str(r#"","sampleRate":"#);
        push_u64(out, u64::from(start.media_format.sample_rate()));
        out.push_str(r#","channels":1}}}"#);
    }

    /// A media message carrying `payload` (µ-law, normally one 160-byte frame) at `timestamp_ms` (milliseconds of
    /// media time since the stream started). No allocation once `out` has capacity
    /// (see [`StreamWriter::media_len_hint`]).
    pub fn media(&mut self, timestamp_ms: u64, payload: &[u8], out: &mut String) {
        self.head("media", out);
        self.chunk += 1;
        out.push_str(r#","media":{"track":"inbound","chunk":""#);
        push_u64(out, self.chunk);
        out.push_str(r#"","timestamp":""#);
        push_u64(out, timestamp_ms);
        out.push_str(r#"","payload":""#);
        STANDARD.encode_string(payload, out);
        out.push_str("\"}}");
    }

    /// A DTMF digit from the caller (`track` is `inbound_track`, as Twilio sends it).
    pub fn dtmf(&mut self, digit: char, out: &mut String) {
        self.head("dtmf", out);
        out.push_str(r#","dtmf":{"track":"inbound_track","digit":"#);
        let mut utf8 = [0u8; 4];
        push_json_str(out, digit.encode_utf8(&mut utf8));
        out.push_str("}}");
    }

    /// Echo of a mark the agent sent, once the audio queued before it has played (or was cleared).
    pub fn mark(&mut self, name: &str, out: &mut String) {
        self.head("mark", out);
        out.push_str(r#","mark":{"name":"#);
        push_json_str(out, name);
        out.push_str("}}");
    }

    /// The last message of a stream.
    pub fn stop(&mut self, account_sid: &str, call_sid: &str, out: &mut String) {
        self.head("stop", out);
        out.push_str(r#","stop":{"accountSid":"#);
        push_json_str(out, account_sid);
        out.push_str(r#","callSid":"#);
        push_json_str(out, call_sid);
        out.push_str("}}");
    }

    /// Clears `out` and writes `{"event":"<event>","sequenceNumber":"<n>","streamSid":"…"` (object left open).
    fn head(&mut self, event: &'static str, out: &mut String) {
        self.seq += 1;
        out.clear();
        out.push_str(r#"{"event":""#);
        out.push_str(event);
        out.push_str(r#"","sequenceNumber":""#);
        push_u64(out, self.seq);
        out.push_str("\",");
        out.push_str(&self.sid_field);
    }
}

/// Appends the decimal digits of `n` without going through `core::fmt`.
fn push_u64(out: &mut String, mut n: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    out.push_str(std::str::from_utf8(&buf[i..]).unwrap_or_default());
}

/// Appends `s` as a JSON string literal, quotes included: `"` and `\` are backslash-escaped, control characters
/// (below U+0020) use the short escapes or `\u00XX`; everything else (including non-ASCII) is copied as UTF-8.
fn push_json_str(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: &str = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0x08 => "\\b",
            0x0c => "\\f",
            0x00..=0x1f => "",
            _ => continue,
        };
        // `i` is at an ASCII byte, hence a char boundary.
        out.push_str(&s[start..i]);
        if escape.is_empty() {
            out.push_str("\\u00");
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 0xf) as usize] as char);
        } else {
            out.push_str(escape);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// An agent message we act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentMessage {
    /// Decoded µ-law audio, any length (possibly empty).
    Media(Vec<u8>),
    /// Echo this name once the audio queued before it has played.
    Mark(String),
    /// Drop all queued audio now.
    Clear,
    /// A well-formed message with an event we don't act on (`connected`, `start`, `stop`, `dtmf`, anything else).
    Ignored,
}

/// Why an agent message was unusable. Each is counted under its [`label`](AgentMessageError::label) and ignored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AgentMessageError {
    /// Not valid JSON (syntax error, truncated, trailing garbage).
    #[error("not JSON")]
    NotJson,
    /// Valid JSON, but not an object.
    #[error("not a JSON object")]
    NotObject,
    /// An object without a string `event`.
    #[error("no string \"event\" field")]
    MissingEvent,
    /// An event we act on without a field it needs (`media.payload`, `mark.name`) as a string.
    #[error("missing or non-string field {0}")]
    MissingField(&'static str),
    /// `media.payload` is not base64.
    #[error("media payload is not base64")]
    BadPayload,
    /// The message is over [`MAX_AGENT_MESSAGE_BYTES`], or a mark name over [`MAX_MARK_NAME_BYTES`].
    #[error("message or field too large")]
    TooLarge,
}

impl AgentMessageError {
    /// Every label, in [`AgentMessageError::index`] order.
    pub const LABELS: [&'static str; 6] =
        ["not_json", "not_object", "missing_event", "missing_field", "bad_payload", "too_large"];

    /// A short, stable name for metrics and logs.
    pub fn label(&self) -> &'static str {
        Self::LABELS[self.index()]
    }

    /// Position of this error's label in [`AgentMessageError::LABELS`] (for per-kind counter arrays).
    pub fn index(&self) -> usize {
        match self {
            AgentMessageError::NotJson => 0,
            AgentMessageError::NotObject => 1,
            AgentMessageError::MissingEvent => 2,
            AgentMessageError::MissingField(_) => 3,
            AgentMessageError::BadPayload => 4,
            AgentMessageError::TooLarge => 5,
        }
    }
}

/// Decoding agent audio accepts padded and unpadded base64 (standard alphabet).
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

/// Parses one agent→server text message. Accepts Twilio's and Pipecat's shapes (`streamSid` and any other field
/// are not required and not checked); allocates only the decoded audio or the mark name it returns.
pub fn parse_agent_message(text: &str) -> Result<AgentMessage, AgentMessageError> {
    if text.len() > MAX_AGENT_MESSAGE_BYTES {
        return Err(AgentMessageError::TooLarge);
    }
    let top: Top<'_> = serde_json::from_str(text).map_err(|_| AgentMessageError::NotJson)?;
    let Top::Object { event, media, mark } = top else {
        return Err(AgentMessageError::NotObject);
    };
    let Loose::Str(event) = event else {
        return Err(AgentMessageError::MissingEvent);
    };
    match &*event {
        "media" => {
            let Loose::Object { payload: Some(payload), .. } = media else {
                return Err(AgentMessageError::MissingField("media.payload"));
            };
            let mut audio = Vec::with_capacity(payload.len() / 4 * 3 + 3);
            LENIENT_BASE64.decode_vec(payload.as_bytes(), &mut audio).map_err(|_| AgentMessageError::BadPayload)?;
            Ok(AgentMessage::Media(audio))
        }
        "mark" => {
            let Loose::Object { name: Some(name), .. } = mark else {
                return Err(AgentMessageError::MissingField("mark.name"));
            };
            if name.len() > MAX_MARK_NAME_BYTES {
                return Err(AgentMessageError::TooLarge);
            }
            Ok(AgentMessage::Mark(name.into_owned()))
        }
        "clear" => Ok(AgentMessage::Clear),
        _ => Ok(AgentMessage::Ignored),
    }
}

/// The top level of an agent message: only `event`, `media` and `mark` are looked at.
enum Top<'a> {
    Object { event: Loose<'a>, media: Loose<'a>, mark: Loose<'a> },
    NotObject,
}

/// Any JSON value, keeping only what we might use: a string, or an object's string `payload`/`name` fields.
/// Strings are borrowed from the input unless they contain escapes.
#[derive(Default)]
enum Loose<'a> {
    Str(Cow<'a, str>),
    Object {
        payload: Option<Cow<'a, str>>,
        name: Option<Cow<'a, str>>,
    },
    #[default]
    Other,
}

impl<'a> Loose<'a> {
    fn into_str(self) -> Option<Cow<'a, str>> {
        match self {
            Loose::Str(s) => Some(s),
            _ => None,
        }
    }
}

/// An object key we care about, recognised without allocating.
enum Key {
    Event,
    Media,
    Mark,
    Payload,
    Name,
    Other,
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(match v {
                    "event" => Key::Event,
                    "media" => Key::Media,
                    "mark" => Key::Mark,
                    "payload" => Key::Payload,
                    "name" => Key::Name,
                    _ => Key::Other,
                })
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Top<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TopVisitor;
        impl<'de> Visitor<'de> for TopVisitor {
            type Value = Top<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Top<'de>, A::Error> {
                let (mut event, mut media, mut mark) = (Loose::Other, Loose::Other, Loose::Other);
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Event => event = map.next_value()?,
                        Key::Media => media = map.next_value()?,
                        Key::Mark => mark = map.next_value()?,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Top::Object { event, media, mark })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Top<'de>, A::Error> {
                IgnoredAny.visit_seq(seq)?;
                Ok(Top::NotObject)
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Top<'de>, E> {
                Ok(Top::NotObject)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Top<'de>, E> {
                Ok(Top::NotObject)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Top<'de>, E> {
                Ok(Top::NotObject)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Top<'de>, E> {
                Ok(Top::NotObject)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Top<'de>, E> {
                Ok(Top::NotObject)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Top<'de>, E> {
                Ok(Top::NotObject)
            }
        }
        d.deserialize_any(TopVisitor)
    }
}

impl<'de> Deserialize<'de> for Loose<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct LooseVisitor;
        impl<'de> Visitor<'de> for LooseVisitor {
            type Value = Loose<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Loose<'de>, E> {
                Ok(Loose::Str(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Loose<'de>, E> {
                Ok(Loose::Str(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Loose<'de>, E> {
                Ok(Loose::Str(Cow::Owned(v)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Loose<'de>, A::Error> {
                let (mut payload, mut name) = (None, None);
                while let Some(key) = map.next_key::<Key>()? {
                    match key {
                        Key::Payload => payload = map.next_value::<Loose<'de>>()?.into_str(),
                        Key::Name => name = map.next_value::<Loose<'de>>()?.into_str(),
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                        }
                    }
                }
                Ok(Loose::Object { payload, name })
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Loose<'de>, A::Error> {
                IgnoredAny.visit_seq(seq)?;
                Ok(Loose::Other)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Loose<'de>, E> {
                Ok(Loose::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Loose<'de>, E> {
                Ok(Loose::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Loose<'de>, E> {
                Ok(Loose::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Loose<'de>, E> {
                Ok(Loose::Other)
            }
            fn visit_unit<E: de::Error>(self) -> Result<Loose<'de>, E> {
                Ok(Loose::Other)
            }
        }
        d.deserialize_any(LooseVisitor)
    }
}

/// A stream id as Twilio shapes them: `MZ` + 32 lower-case hex digits of `rand` (the caller supplies randomness).
pub fn stream_sid(rand: u128) -> String {
    format!("MZ{rand:032x}")
}

/// A call id as Twilio shapes them: `CA` + 32 lower-case hex digits of `rand` (the caller supplies randomness).
pub fn call_sid(rand: u128) -> String {
    format!("CA{rand:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    const SID: &str = "MZ00000000000000000000000000000001";

    fn parse(out: &str) -> Value {
        serde_json::from_str(out).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
    }

    fn sample_start() -> StreamStart {
        StreamStart {
            account_sid: "acme".into(),
            call_sid: call_sid(7),
            stream_sid: SID.into(),
            from: "+14155550123".into(),
            to: "+15550100".into(),
            custom_parameters: vec![("lang".into(), "en".into())],
            media_format: MediaFormat::Mulaw8k,
        }
    }

    #[test]
    fn media_format_names_round_trip_and_unknown_names_are_refused() {
        for f in MediaFormat::ALL {
            assert_eq!(MediaFormat::from_name(f.name()), Some(f));
        }
        assert_eq!(MediaFormat::from_name("L16_16K"), None);
        assert_eq!(MediaFormat::from_name(""), None);
        assert_eq!(MediaFormat::default(), MediaFormat::Mulaw8k);
    }

    #[test]
    fn connected_is_exact() {
        let mut w = StreamWriter::new(SID);
        let mut out = String::from("stale");
        w.connected(&mut out);
        assert_eq!(parse(&out), json!({"event":"connected","protocol":"Call","version":"1.0.0"}));
        assert_eq!(w.sequence_number(), 0, "connected carries no sequenceNumber");
    }

    #[test]
    fn start_has_exact_fields() {
        let mut w = StreamWriter::new(SID);
        let mut out = String::new();
        w.connected(&mut out);
        w.start(&sample_start(), &mut out);
        assert_eq!(
            parse(&out),
            json!({
                "event": "start",
                "sequenceNumber": "1",
                "streamSid": SID,
                "start": {
                    "accountSid": "acme",
                    "streamSid": SID,
                    "callSid": "CA00000000000000000000000000000007",
                    "tracks": ["inbound"],
                    "customParameters": {"lang": "en", "from_number": "+14155550123", "to_number": "+15550100"},
                    "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
                }
            })
        );
    }

    #[test]
    fn an_l16_stream_announces_16_khz_linear_audio() {
        let mut start = sample_start();
        start.media_format = MediaFormat::L16Wide;
        let mut out = String::new();
        StreamWriter::new(SID).start(&start, &mut out);
        assert_eq!(
            parse(&out)["start"]["mediaFormat"],
            json!({"encoding": "audio/x-l16", "sampleRate": 16000, "channels": 1})
        );
    }

    #[test]
    fn start_params_reserved_and_repeated_keys_skipped() {
        let mut start = sample_start();
        start.custom_parameters = vec![
            ("from_number".into(), "spoof".into()),
            ("a".into(), "1".into()),
            ("a".into(), "2".into()),
            ("to_number".into(), "spoof".into()),
        ];
        let mut out = String::new();
        StreamWriter::new(SID).start(&start, &mut out);
        assert_eq!(out.matches("\"a\"").count(), 1);
        assert_eq!(out.matches("from_number").count(), 1);
        let v = parse(&out);
        assert_eq!(
            v["start"]["customParameters"],
            json!({"a": "1", "from_number": "+14155550123", "to_number": "+15550100"})
        );
    }

    #[test]
    fn media_fields_counters_and_base64_round_trip() {
        let mut w = StreamWriter::new(SID);
        let mut out = String::new();
        w.connected(&mut out);
        w.start(&sample_start(), &mut out);
        for i in 0..3u64 {
            let payload: Vec<u8> = (0..160).map(|b| (b as u8).wrapping_mul(i as u8 + 1)).collect();
            w.media(i * 20, &payload, &mut out);
            let v = parse(&out);
            let expect_payload = STANDARD.encode(&payload);
            assert_eq!(
                v,
                json!({
                    "event": "media",
                    "sequenceNumber": (i + 2).to_string(),
                    "streamSid": SID,
                    "media": {"track": "inbound", "chunk": (i + 1).to_string(), "timestamp": (i * 20).to_string(), "payload": expect_payload}
                })
            );
            let back = STANDARD.decode(v["media"]["payload"].as_str().unwrap()).unwrap();
            assert_eq!(back, payload);
        }
        assert_eq!(w.chunks(), 3);
        w.dtmf('5', &mut out);
        assert_eq!(parse(&out)["sequenceNumber"], "5");
        w.media(60, &[0xff; 160], &mut out);
        let v = parse(&out);
        assert_eq!(v["sequenceNumber"], "6");
        assert_eq!(v["media"]["chunk"], "4", "chunk counts media only");
    }

    #[test]
    fn media_does_not_reallocate_with_capacity() {
        let mut w = StreamWriter::new(SID);
        let mut out = String::with_capacity(w.media_len_hint(160));
        w.media(u64::MAX, &[0x55; 160], &mut out);
        let (ptr, cap) = (out.as_ptr(), out.capacity());
        for i in 0..1000 {
            w.media(i * 20, &[i as u8; 160], &mut out);
            assert!(out.len() <= w.media_len_hint(160));
        }
        assert_eq!((out.as_ptr(), out.capacity()), (ptr, cap));
    }

    #[test]
    fn dtmf_mark_stop_exact() {
        let mut w = StreamWriter::new(SID);
        let mut out = String::new();
        w.start(&sample_start(), &mut out);
        w.dtmf('#', &mut out);
        assert_eq!(
            parse(&out),
            json!({"event":"dtmf","sequenceNumber":"2","streamSid":SID,"dtmf":{"track":"inbound_track","digit":"#"}})
        );
        w.mark("greeting-done", &mut out);
        assert_eq!(
            parse(&out),
            json!({"event":"mark","sequenceNumber":"3","streamSid":SID,"mark":{"name":"greeting-done"}})
        );
        w.stop("acme", "CA1", &mut out);
        assert_eq!(
            parse(&out),
            json!({"event":"stop","sequenceNumber":"4","streamSid":SID,"stop":{"accountSid":"acme","callSid":"CA1"}})
        );
    }

    #[test]
    fn escaping_of_names_and_params() {
        let nasty = "q\"uo\\te\n\r\t\u{8}\u{c}\u{0}\u{1f}\u{7f}é😀</script>";
        let mut w = StreamWriter::new("MZ\"sid\\");
        let mut out = String::new();
        w.mark(nasty, &mut out);
        let v = parse(&out);
        assert_eq!(v["mark"]["name"], nasty);
        assert_eq!(v["streamSid"], "MZ\"sid\\");
        assert!(out.contains("\\u0000") && out.contains("\\u001f"), "{out}");
        let mut start = sample_start();
        start.custom_parameters = vec![(nasty.into(), nasty.into()), ("k".into(), String::new())];
        start.from = nasty.into();
        w.start(&start, &mut out);
        let params = &parse(&out)["start"]["customParameters"];
        assert_eq!(params[nasty], nasty);
        assert_eq!(params["k"], "");
        assert_eq!(params["from_number"], nasty);
        w.dtmf('"', &mut out);
        assert_eq!(parse(&out)["dtmf"]["digit"], "\"");
    }

    #[test]
    fn push_u64_edges() {
        for n in [0, 1, 9, 10, 99, 100, 12345, u64::MAX] {
            let mut s = String::new();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string());
        }
    }

    #[test]
    fn ids_have_twilio_shape() {
        assert_eq!(stream_sid(0), "MZ00000000000000000000000000000000");
        assert_eq!(call_sid(u128::MAX), format!("CA{}", "f".repeat(32)));
        let s = stream_sid(0xDEAD_BEEF);
        assert_eq!(s.len(), 34);
        assert!(s[2..].chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    }

    #[test]
    fn parses_agent_messages() {
        let audio: Vec<u8> = (0..=255u8).collect();
        let b64 = STANDARD.encode(&audio);
        let media = format!(r#"{{"event":"media","streamSid":"{SID}","media":{{"payload":"{b64}"}}}}"#);
        assert_eq!(parse_agent_message(&media), Ok(AgentMessage::Media(audio.clone())));
        assert_eq!(
            parse_agent_message(r#"{"event":"mark","streamSid":"MZ1","mark":{"name":"greeting-done"}}"#),
            Ok(AgentMessage::Mark("greeting-done".into()))
        );
        assert_eq!(parse_agent_message(r#"{"event":"clear","streamSid":"MZ1"}"#), Ok(AgentMessage::Clear));
        // No streamSid, fields in any order, extra fields, whitespace.
        assert_eq!(parse_agent_message(" {\"event\" : \"clear\"} \n"), Ok(AgentMessage::Clear));
        let reordered =
            format!(r#"{{"media":{{"track":"outbound","payload":"{b64}","extra":[1,{{}}]}},"event":"media"}}"#);
        assert_eq!(parse_agent_message(&reordered), Ok(AgentMessage::Media(audio)));
        // Escaped strings are decoded.
        assert_eq!(
            parse_agent_message(r#"{"event":"m\u0061rk","mark":{"name":"a\"b\\c\n"}}"#),
            Ok(AgentMessage::Mark("a\"b\\c\n".into()))
        );
        assert_eq!(
            parse_agent_message(r#"{"event":"media","media":{"payload":"AAE\/"}}"#),
            Ok(AgentMessage::Media(vec![0, 1, 0x3f]))
        );
        // Unpadded base64 and empty payload.
        assert_eq!(
            parse_agent_message(r#"{"event":"media","media":{"payload":"/w"}}"#),
            Ok(AgentMessage::Media(vec![0xff]))
        );
        assert_eq!(parse_agent_message(r#"{"event":"media","media":{"payload":""}}"#), Ok(AgentMessage::Media(vec![])));
    }

    #[test]
    fn parses_pipecat_shapes() {
        // What Pipecat's TwilioFrameSerializer emits with Python's json.dumps (", " and ": " separators).
        let ulaw = vec![0x7f_u8; 320];
        let msg = format!(
            r#"{{"event": "media", "streamSid": "{SID}", "media": {{"payload": "{}"}}}}"#,
            STANDARD.encode(&ulaw)
        );
        assert_eq!(parse_agent_message(&msg), Ok(AgentMessage::Media(ulaw)));
        let clear = format!(r#"{{"event": "clear", "streamSid": "{SID}"}}"#);
        assert_eq!(parse_agent_message(&clear), Ok(AgentMessage::Clear));
        // streamSid may be null before Pipecat saw `start`.
        assert_eq!(parse_agent_message(r#"{"event": "clear", "streamSid": null}"#), Ok(AgentMessage::Clear));
    }

    #[test]
    fn ignores_other_events() {
        for text in [
            r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#,
            r#"{"event":"start","start":{"streamSid":"x"},"media":5}"#,
            r#"{"event":"stop"}"#,
            r#"{"event":"dtmf","dtmf":{"digit":"1"}}"#,
            r#"{"event":"transcript","text":"hi","mark":[1,2]}"#,
            r#"{"event":""}"#,
        ] {
            assert_eq!(parse_agent_message(text), Ok(AgentMessage::Ignored), "{text}");
        }
    }

    #[test]
    fn rejects_garbage_with_the_right_error() {
        use AgentMessageError::*;
        let cases: &[(&str, AgentMessageError)] = &[
            ("", NotJson),
            ("hello", NotJson),
            ("{\"event\":\"clear\"", NotJson),
            ("{\"event\":\"clear\"} x", NotJson),
            ("[1,2]", NotObject),
            ("\"media\"", NotObject),
            ("null", NotObject),
            ("42", NotObject),
            ("{}", MissingEvent),
            ("{\"event\":7}", MissingEvent),
            ("{\"event\":null}", MissingEvent),
            ("{\"event\":\"media\"}", MissingField("media.payload")),
            ("{\"event\":\"media\",\"media\":{}}", MissingField("media.payload")),
            ("{\"event\":\"media\",\"media\":{\"payload\":5}}", MissingField("media.payload")),
            ("{\"event\":\"media\",\"media\":\"AAAA\"}", MissingField("media.payload")),
            ("{\"event\":\"mark\",\"mark\":{}}", MissingField("mark.name")),
            ("{\"event\":\"mark\"}", MissingField("mark.name")),
            ("{\"event\":\"media\",\"media\":{\"payload\":\"!!!!\"}}", BadPayload),
            ("{\"event\":\"media\",\"media\":{\"payload\":\"A\"}}", BadPayload),
        ];
        for (text, err) in cases {
            assert_eq!(parse_agent_message(text).as_ref(), Err(err), "{text:?}");
        }
        assert_eq!(MissingField("x").label(), "missing_field");
        assert_eq!(NotJson.label(), "not_json");
    }

    #[test]
    fn size_limits() {
        let big = format!("{{\"event\":\"clear\",\"pad\":\"{}\"}}", "x".repeat(MAX_AGENT_MESSAGE_BYTES));
        assert_eq!(parse_agent_message(&big), Err(AgentMessageError::TooLarge));
        let name = "n".repeat(MAX_MARK_NAME_BYTES + 1);
        let msg = format!("{{\"event\":\"mark\",\"mark\":{{\"name\":\"{name}\"}}}}");
        assert_eq!(parse_agent_message(&msg), Err(AgentMessageError::TooLarge));
        let name = "n".repeat(MAX_MARK_NAME_BYTES);
        let msg = format!("{{\"event\":\"mark\",\"mark\":{{\"name\":\"{name}\"}}}}");
        assert_eq!(parse_agent_message(&msg), Ok(AgentMessage::Mark(name)));
    }

    #[test]
    fn labels_match_indices() {
        use AgentMessageError::*;
        for e in [NotJson, NotObject, MissingEvent, MissingField("f"), BadPayload, TooLarge] {
            assert_eq!(AgentMessageError::LABELS[e.index()], e.label());
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{{\"event\":\"x\",\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        let r = parse_agent_message(&deep);
        assert!(matches!(r, Ok(AgentMessage::Ignored) | Err(AgentMessageError::NotJson)), "{r:?}");
        let deep_payload =
            format!("{{\"event\":\"media\",\"media\":{}{}}}", "{\"payload\":".repeat(10_000), "}".repeat(10_000));
        assert!(parse_agent_message(&deep_payload).is_err());
        let deep_obj = format!("{}{}", "{\"media\":".repeat(10_000), "}".repeat(10_000));
        assert!(parse_agent_message(&deep_obj).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in ".*") {
            let _ = parse_agent_message(&s);
        }

        #[test]
        fn json_like_text_never_panics(s in r#"[{}\[\]":,a-z0-9 \\]{0,64}"#) {
            let _ = parse_agent_message(&s);
        }

        #[test]
        fn media_payload_round_trips(audio in proptest::collection::vec(proptest::num::u8::ANY, 0..2000)) {
            let mut w = StreamWriter::new(SID);
            let mut out = String::new();
            w.media(0, &audio, &mut out);
            let v: Value = serde_json::from_str(&out).unwrap();
            // The writer's payload, fed back as an agent message, decodes to the same audio.
            let back = format!(r#"{{"event":"media","media":{{"payload":{}}}}}"#, v["media"]["payload"]);
            proptest::prop_assert_eq!(parse_agent_message(&back), Ok(AgentMessage::Media(audio)));
        }

        #[test]
        fn escaped_strings_round_trip(name in "\\PC*|[\\x00-\\x1f\"\\\\]*") {
            let mut w = StreamWriter::new(SID);
            let mut out = String::new();
            w.mark(&name, &mut out);
            let v: Value = serde_json::from_str(&out).unwrap();
            proptest::prop_assert_eq!(v["mark"]["name"].as_str(), Some(name.as_str()));
        }
    }
}
