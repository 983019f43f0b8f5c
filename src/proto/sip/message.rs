//! Whole messages: splitting a datagram into start line, header fields and body; the typed views of the
//! headers every UAS needs; stream framing (RFC 3261 §18.3).

use std::borrow::Cow;

use bytes::Bytes;

use super::error::{ParseError, ParseErrorKind, salvage};
use super::grammar::{is_token, is_ws, split_commas, trim_ws};
use super::header::{CSeq, Header, Via, canonical_name, parse_digits, parse_media_type};
use super::uri::{Method, NameAddr, Uri, is_method_token};

/// Size limits applied before and during parsing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest message (head and body) accepted; default 16384.
    pub max_message_bytes: usize,
    /// Most header lines accepted; default 128.
    pub max_headers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_message_bytes: 16384, max_headers: 128 }
    }
}

/// A parsed request. `headers` holds every header field in received order; the other fields are typed views
/// of the ones a UAS needs, extracted (and validated) during parsing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub uri: Uri,
    pub headers: Vec<Header>,
    pub body: Bytes,
    /// All Via values, top first, comma-separated values split.
    pub via: Vec<Via>,
    pub from: NameAddr,
    pub to: NameAddr,
    pub call_id: String,
    pub cseq: CSeq,
    pub max_forwards: Option<u32>,
    /// Contact values in order (a `Contact: *` is not listed).
    pub contact: Vec<NameAddr>,
    pub record_route: Vec<NameAddr>,
    /// Lower-cased media type without parameters, e.g. "application/sdp".
    pub content_type: Option<String>,
}

/// A parsed response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<Header>,
    pub body: Bytes,
    pub via: Vec<Via>,
    pub from: NameAddr,
    pub to: NameAddr,
    pub call_id: String,
    pub cseq: CSeq,
    pub contact: Vec<NameAddr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Request(Request),
    Response(Response),
}

impl Message {
    pub fn call_id(&self) -> &str {
        match self {
            Message::Request(r) => &r.call_id,
            Message::Response(r) => &r.call_id,
        }
    }

    pub fn cseq(&self) -> &CSeq {
        match self {
            Message::Request(r) => &r.cseq,
            Message::Response(r) => &r.cseq,
        }
    }

    pub fn via(&self) -> &[Via] {
        match self {
            Message::Request(r) => &r.via,
            Message::Response(r) => &r.via,
        }
    }

    pub fn headers(&self) -> &[Header] {
        match self {
            Message::Request(r) => &r.headers,
            Message::Response(r) => &r.headers,
        }
    }
}

fn find_header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    let canon = canonical_name(name);
    headers.iter().find(|h| h.name.eq_ignore_ascii_case(&canon)).map(|h| h.value.as_str())
}

fn headers_named<'a>(headers: &'a [Header], name: &'a str) -> impl Iterator<Item = &'a str> {
    let canon = canonical_name(name);
    headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(&canon)).map(|h| h.value.as_str())
}

impl Request {
    /// Value of the first header named `name` (case-insensitive; compact forms accepted: `header("i")` finds
    /// Call-ID). The whole header line's value: comma-separated values are not split.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Values of every header named `name`, in order (same matching as [`Request::header`]).
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        headers_named(&self.headers, name)
    }
}

impl Response {
    /// See [`Request::header`].
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// See [`Request::headers_named`].
    pub fn headers_named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        headers_named(&self.headers, name)
    }
}

/// Splits the head of a message into lines (lossy UTF-8, line ends removed) and returns the offset of the
/// body. A line ends at LF, with an optional CR before it (bare LF is tolerated). The head ends at the first
/// empty line; a datagram that ends without one (RFC 4475 baddn) ends its head at the end of the data, with
/// an empty body.
pub(crate) fn split_head(buf: &[u8]) -> (Vec<Cow<'_, str>>, usize) {
    let mut lines = Vec::with_capacity(24);
    let mut pos = 0;
    while pos < buf.len() {
        let rest = buf.get(pos..).unwrap_or(&[]);
        let (line, next) = match rest.iter().position(|b| *b == b'\n') {
            Some(i) => (rest.get(..i).unwrap_or(&[]), pos + i + 1),
            None => (rest, buf.len()),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            return (lines, next);
        }
        lines.push(String::from_utf8_lossy(line));
        pos = next;
    }
    (lines, buf.len())
}

/// Joins folded lines and splits each header line into canonical name and trimmed value.
///
/// With `max = Some(n)` (strict) a line without a colon, a name that is not a token, a continuation line with
/// nothing before it, or more than `n` header lines is an error. With `None` (salvage) bad lines are skipped.
pub(crate) fn fold_headers(lines: &[Cow<'_, str>], max: Option<usize>) -> Result<Vec<Header>, ParseErrorKind> {
    let mut out: Vec<Header> = Vec::with_capacity(lines.len());
    let mut last_ok = false;
    for line in lines {
        if line.as_bytes().first().is_some_and(|b| is_ws(*b)) {
            match out.last_mut() {
                Some(h) if last_ok => {
                    let more = trim_ws(line);
                    if !more.is_empty() {
                        if !h.value.is_empty() {
                            h.value.push(' ');
                        }
                        h.value.push_str(more);
                    }
                }
                _ if max.is_some() => return Err(ParseErrorKind::BadHeaderLine),
                _ => {}
            }
            continue;
        }
        let parsed = line.split_once(':').and_then(|(name, value)| {
            let name = name.trim_end_matches([' ', '\t']);
            is_token(name).then(|| Header { name: canonical_name(name).into_owned(), value: trim_ws(value).to_owned() })
        });
        match parsed {
            Some(h) => {
                if let Some(max) = max
                    && out.len() >= max
                {
                    return Err(ParseErrorKind::TooManyHeaders);
                }
                out.push(h);
                last_ok = true;
            }
            None if max.is_some() => return Err(ParseErrorKind::BadHeaderLine),
            None => last_ok = false,
        }
    }
    Ok(out)
}

/// The only value of a single-valued header, if present.
fn single<'a>(headers: &'a [Header], name: &'static str) -> Result<Option<&'a str>, ParseErrorKind> {
    let mut it = headers.iter().filter(|h| h.name == name);
    let first = it.next();
    if it.next().is_some() {
        return Err(ParseErrorKind::DuplicateHeader(name));
    }
    Ok(first.map(|h| h.value.as_str()))
}

fn required<'a>(headers: &'a [Header], name: &'static str) -> Result<&'a str, ParseErrorKind> {
    single(headers, name)?.ok_or(ParseErrorKind::MissingHeader(name))
}

/// Every comma-separated value of every header named `name`, parsed with `parse`.
fn list<T>(
    headers: &[Header],
    name: &'static str,
    parse: impl Fn(&str) -> Option<T>,
    allow_star: bool,
) -> Result<Vec<T>, ParseErrorKind> {
    let mut out = Vec::new();
    for h in headers.iter().filter(|h| h.name == name) {
        if allow_star && h.value == "*" {
            continue;
        }
        for v in split_commas(&h.value).ok_or(ParseErrorKind::BadHeader(name))? {
            out.push(parse(v).ok_or(ParseErrorKind::BadHeader(name))?);
        }
    }
    Ok(out)
}

/// The header fields common to requests and responses.
struct Common {
    via: Vec<Via>,
    from: NameAddr,
    to: NameAddr,
    call_id: String,
    cseq: CSeq,
    contact: Vec<NameAddr>,
    content_length: Option<usize>,
    content_type: Option<String>,
}

/// Extracts and validates the common headers. The order of the checks fixes which error a message with
/// several defects reports: Call-ID, CSeq, From, To, Via, then the rest.
fn common(headers: &[Header]) -> Result<Common, ParseErrorKind> {
    let call_id = required(headers, "Call-ID")?;
    if call_id.is_empty() || call_id.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(ParseErrorKind::BadHeader("Call-ID"));
    }
    let cseq = CSeq::parse(required(headers, "CSeq")?).ok_or(ParseErrorKind::BadHeader("CSeq"))?;
    let from = NameAddr::parse(required(headers, "From")?).ok_or(ParseErrorKind::BadHeader("From"))?;
    let to = NameAddr::parse(required(headers, "To")?).ok_or(ParseErrorKind::BadHeader("To"))?;
    let via = list(headers, "Via", Via::parse, false)?;
    if via.is_empty() {
        return Err(ParseErrorKind::MissingHeader("Via"));
    }
    let content_length = single(headers, "Content-Length")?
        .map(|v| parse_digits::<usize>(v).ok_or(ParseErrorKind::BadHeader("Content-Length")))
        .transpose()?;
    let content_type = single(headers, "Content-Type")?
        .map(|v| parse_media_type(v).ok_or(ParseErrorKind::BadHeader("Content-Type")))
        .transpose()?;
    let contact = list(headers, "Contact", NameAddr::parse, true)?;
    Ok(Common { via, from, to, call_id: call_id.to_owned(), cseq, contact, content_length, content_type })
}

fn body(rest: &[u8], content_length: Option<usize>) -> Result<Bytes, ParseErrorKind> {
    match content_length {
        Some(n) => rest.get(..n).map(Bytes::copy_from_slice).ok_or(ParseErrorKind::ContentLengthMismatch),
        None => Ok(Bytes::copy_from_slice(rest)),
    }
}

fn check_version(v: &str) -> Result<(), ParseErrorKind> {
    if v.eq_ignore_ascii_case("SIP/2.0") {
        return Ok(());
    }
    let looks_like_version = v.get(..4).is_some_and(|p| p.eq_ignore_ascii_case("SIP/"))
        && v.get(4..).is_some_and(|n| {
            n.split_once('.').is_some_and(|(a, b)| {
                !a.is_empty()
                    && !b.is_empty()
                    && a.bytes().all(|c| c.is_ascii_digit())
                    && b.bytes().all(|c| c.is_ascii_digit())
            })
        });
    Err(if looks_like_version { ParseErrorKind::BadVersion } else { ParseErrorKind::BadStartLine })
}

/// Parses one whole UDP datagram (or one message already framed from a TCP stream).
///
/// Leading CRLFs are skipped (a datagram of nothing else is [`ParseErrorKind::Empty`]). The body is exactly
/// Content-Length bytes; without Content-Length (allowed only on UDP) it is the rest of the datagram; a
/// Content-Length larger than the bytes present is an error; bytes after the body are ignored (RFC 3261
/// §18.3, RFC 4475 dblreq).
pub fn parse_message(buf: &[u8], limits: &Limits) -> Result<Message, ParseError> {
    let skip = buf.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
    let data = buf.get(skip..).unwrap_or(&[]);
    if data.is_empty() {
        return Err(ParseError { kind: ParseErrorKind::Empty, context: None });
    }
    parse_inner(data, limits)
        .map_err(|kind| ParseError { kind, context: Some(Box::new(salvage(data, limits.max_message_bytes))) })
}

fn parse_inner(data: &[u8], limits: &Limits) -> Result<Message, ParseErrorKind> {
    if data.len() > limits.max_message_bytes {
        return Err(ParseErrorKind::TooLarge);
    }
    let (lines, body_offset) = split_head(data);
    let start = lines.first().ok_or(ParseErrorKind::Empty)?;
    let headers = fold_headers(lines.get(1..).unwrap_or(&[]), Some(limits.max_headers))?;
    let rest = data.get(body_offset..).unwrap_or(&[]);

    if start.starts_with("SIP/") {
        let mut parts = start.splitn(3, ' ');
        check_version(parts.next().unwrap_or(""))?;
        let code = parts.next().unwrap_or("");
        if code.is_empty() {
            return Err(ParseErrorKind::BadStartLine);
        }
        let status = match code.parse::<u16>() {
            Ok(s) if code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()) && (100..=699).contains(&s) => s,
            _ => return Err(ParseErrorKind::BadStatusCode),
        };
        let reason = parts.next().unwrap_or("").to_owned();
        let c = common(&headers)?;
        let body = body(rest, c.content_length)?;
        return Ok(Message::Response(Response {
            status,
            reason,
            headers,
            body,
            via: c.via,
            from: c.from,
            to: c.to,
            call_id: c.call_id,
            cseq: c.cseq,
            contact: c.contact,
        }));
    }

    let mut parts = start.split(' ');
    let (Some(method), Some(uri), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseErrorKind::BadStartLine);
    };
    if method.is_empty() || uri.is_empty() || version.is_empty() {
        return Err(ParseErrorKind::BadStartLine);
    }
    check_version(version)?;
    if !is_method_token(method) {
        return Err(ParseErrorKind::BadStartLine);
    }
    let method = Method::parse(method);
    let uri = Uri::parse(uri).ok_or(ParseErrorKind::BadUri)?;
    if uri.has_headers() {
        return Err(ParseErrorKind::BadUri);
    }
    let c = common(&headers)?;
    if c.cseq.method != method {
        return Err(ParseErrorKind::CSeqMethodMismatch);
    }
    let max_forwards = single(&headers, "Max-Forwards")?
        .map(|v| parse_digits::<u32>(v).filter(|n| *n <= 255).ok_or(ParseErrorKind::BadHeader("Max-Forwards")))
        .transpose()?;
    let record_route = list(&headers, "Record-Route", NameAddr::parse, false)?;
    let body = body(rest, c.content_length)?;
    Ok(Message::Request(Request {
        method,
        uri,
        headers,
        body,
        via: c.via,
        from: c.from,
        to: c.to,
        call_id: c.call_id,
        cseq: c.cseq,
        max_forwards,
        contact: c.contact,
        record_route,
        content_type: c.content_type,
    }))
}

/// Result of looking for the first message in a stream buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framed {
    /// No complete message yet: read more.
    NeedMore,
    /// Discard this many leading CR/LF bytes (keep-alives, RFC 3261 §7.5, RFC 5626 §4.4.1), then call again.
    Skip(usize),
    /// The first this-many bytes are one complete message (head and body): hand them to [`parse_message`].
    Message(usize),
}

/// Offset just past the empty line that ends the head, if the buffer holds it.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(p) = buf.get(i..).and_then(|r| r.iter().position(|b| *b == b'\n')) {
        let lf = i + p;
        match (buf.get(lf + 1), buf.get(lf + 2)) {
            (Some(b'\n'), _) => return Some(lf + 2),
            (Some(b'\r'), Some(b'\n')) => return Some(lf + 3),
            _ => i = lf + 1,
        }
    }
    None
}

/// TCP/TLS framing (RFC 3261 §18.3): finds the first complete message in `buf`.
///
/// Errors (the connection should be closed after answering, if [`super::error_response`] gives an answer):
/// no Content-Length ([`ParseErrorKind::MissingHeader`]`("Content-Length")`), a malformed or repeated one, or a
/// head or head+body over `max_message_bytes` ([`ParseErrorKind::TooLarge`]).
pub fn frame_stream(buf: &[u8], limits: &Limits) -> Result<Framed, ParseError> {
    let skip = buf.iter().take_while(|b| matches!(b, b'\r' | b'\n')).count();
    if skip > 0 {
        return Ok(Framed::Skip(skip));
    }
    let fail = |kind| ParseError { kind, context: Some(Box::new(salvage(buf, limits.max_message_bytes))) };
    let scan = buf.get(..limits.max_message_bytes.min(buf.len())).unwrap_or(buf);
    let Some(head_len) = head_end(scan) else {
        return if buf.len() >= limits.max_message_bytes {
            Err(fail(ParseErrorKind::TooLarge))
        } else {
            Ok(Framed::NeedMore)
        };
    };
    let (lines, _) = split_head(scan.get(..head_len).unwrap_or(scan));
    let headers = fold_headers(lines.get(1..).unwrap_or(&[]), None).unwrap_or_default();
    let cl = single(&headers, "Content-Length")
        .map_err(fail)?
        .ok_or_else(|| fail(ParseErrorKind::MissingHeader("Content-Length")))?;
    let cl = parse_digits::<usize>(cl).ok_or_else(|| fail(ParseErrorKind::BadHeader("Content-Length")))?;
    match head_len.checked_add(cl) {
        Some(total) if total <= limits.max_message_bytes => {
            if buf.len() < total {
                Ok(Framed::NeedMore)
            } else {
                Ok(Framed::Message(total))
            }
        }
        _ => Err(fail(ParseErrorKind::TooLarge)),
    }
}
