//! Parse errors, what can be salvaged from a malformed message, and the stateless 400/505/513 answer to a
//! malformed request.

use super::grammar::{fnv1a, is_token};
use super::message::{fold_headers, split_head};
use super::uri::{Method, NameAddr};

/// What went wrong. Stable snake_case names for metrics come from [`ParseErrorKind::label`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// Nothing but CRLFs (a keep-alive): ignore, don't count as an error.
    #[error("empty message")]
    Empty,
    /// Over `Limits::max_message_bytes` (answered with 513 Message Too Large).
    #[error("message too large")]
    TooLarge,
    #[error("too many header fields")]
    TooManyHeaders,
    /// Request-Line or Status-Line not of the form the grammar requires (extra or trailing SP, missing parts,
    /// method not a token).
    #[error("malformed start line")]
    BadStartLine,
    /// A SIP version other than 2.0 (answered with 505).
    #[error("unsupported SIP version")]
    BadVersion,
    /// Malformed Request-URI (including `<>` around it and URI headers in it).
    #[error("malformed Request-URI")]
    BadUri,
    /// Status code not three digits in 100..=699.
    #[error("malformed status code")]
    BadStatusCode,
    /// A header line without a colon, a header name that is not a token, or a folded line with nothing to fold
    /// onto.
    #[error("malformed header line")]
    BadHeaderLine,
    /// A header the parser types (Via, From, To, Call-ID, CSeq, Max-Forwards, Content-Length, Content-Type,
    /// Contact, Record-Route) has a malformed value.
    #[error("malformed {0} header")]
    BadHeader(&'static str),
    /// A mandatory header is absent (Via, From, To, Call-ID, CSeq; Content-Length on a stream).
    #[error("missing {0} header")]
    MissingHeader(&'static str),
    /// A single-valued header appears more than once.
    #[error("more than one {0} header")]
    DuplicateHeader(&'static str),
    /// Content-Length announces more bytes than the datagram holds.
    #[error("Content-Length larger than the body")]
    ContentLengthMismatch,
    /// The CSeq method differs from the request method.
    #[error("CSeq method does not match the request method")]
    CSeqMethodMismatch,
}

impl ParseErrorKind {
    /// Stable snake_case label for metrics.
    pub fn label(&self) -> &'static str {
        use ParseErrorKind::*;
        match self {
            Empty => "empty",
            TooLarge => "too_large",
            TooManyHeaders => "too_many_headers",
            BadStartLine => "bad_start_line",
            BadVersion => "bad_version",
            BadUri => "bad_uri",
            BadStatusCode => "bad_status_code",
            BadHeaderLine => "bad_header_line",
            BadHeader(h) => match *h {
                "Via" => "bad_header_via",
                "From" => "bad_header_from",
                "To" => "bad_header_to",
                "Call-ID" => "bad_header_call_id",
                "CSeq" => "bad_header_cseq",
                "Max-Forwards" => "bad_header_max_forwards",
                "Content-Length" => "bad_header_content_length",
                "Content-Type" => "bad_header_content_type",
                "Contact" => "bad_header_contact",
                "Record-Route" => "bad_header_record_route",
                _ => "bad_header_other",
            },
            MissingHeader(h) => match *h {
                "Via" => "missing_header_via",
                "From" => "missing_header_from",
                "To" => "missing_header_to",
                "Call-ID" => "missing_header_call_id",
                "CSeq" => "missing_header_cseq",
                "Content-Length" => "missing_header_content_length",
                _ => "missing_header_other",
            },
            DuplicateHeader(h) => match *h {
                "From" => "duplicate_header_from",
                "To" => "duplicate_header_to",
                "Call-ID" => "duplicate_header_call_id",
                "CSeq" => "duplicate_header_cseq",
                "Max-Forwards" => "duplicate_header_max_forwards",
                "Content-Length" => "duplicate_header_content_length",
                "Content-Type" => "duplicate_header_content_type",
                _ => "duplicate_header_other",
            },
            ContentLengthMismatch => "content_length_mismatch",
            CSeqMethodMismatch => "cseq_method_mismatch",
        }
    }
}

/// What could be salvaged from a malformed message to answer it: raw header values (unfolded, trimmed) of
/// every Via line in order, and the first From, To, Call-ID and CSeq.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ErrorContext {
    pub is_request: bool,
    pub method: Option<Method>,
    pub via: Vec<String>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub call_id: Option<String>,
    pub cseq: Option<String>,
}

/// A message that could not be parsed, with what could be salvaged from it (`None` only for
/// [`ParseErrorKind::Empty`]). The context is boxed to keep `Result<_, ParseError>` small.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("SIP parse error: {kind}")]
pub struct ParseError {
    pub kind: ParseErrorKind,
    pub context: Option<Box<ErrorContext>>,
}

impl ParseError {
    /// 505 for an unsupported SIP version, 513 for an oversized message, 400 otherwise.
    pub fn status(&self) -> u16 {
        match self.kind {
            ParseErrorKind::BadVersion => 505,
            ParseErrorKind::TooLarge => 513,
            _ => 400,
        }
    }

    /// Reason phrase for the answer, e.g. "Bad Request - Missing Call-ID".
    pub fn reason_phrase(&self) -> String {
        use ParseErrorKind::*;
        let detail = match self.kind {
            BadVersion => return "Version Not Supported".to_owned(),
            TooLarge => return "Message Too Large".to_owned(),
            Empty => "Empty Message".to_owned(),
            TooManyHeaders => "Too Many Header Fields".to_owned(),
            BadStartLine => "Malformed Start Line".to_owned(),
            BadUri => "Malformed Request-URI".to_owned(),
            BadStatusCode => "Malformed Status Code".to_owned(),
            BadHeaderLine => "Malformed Header Line".to_owned(),
            BadHeader(h) => format!("Malformed {h}"),
            MissingHeader(h) => format!("Missing {h}"),
            DuplicateHeader(h) => format!("Multiple {h}"),
            ContentLengthMismatch => "Content-Length Exceeds Body".to_owned(),
            CSeqMethodMismatch => "CSeq Method Mismatch".to_owned(),
        };
        format!("Bad Request - {detail}")
    }
}

/// Collects the [`ErrorContext`] from the first `limit` bytes of a message, leniently (never fails).
pub(crate) fn salvage(buf: &[u8], limit: usize) -> ErrorContext {
    let buf = buf.get(..limit.min(buf.len())).unwrap_or(buf);
    let mut ctx = ErrorContext::default();
    let (lines, _) = split_head(buf);
    let Some(start) = lines.first() else {
        return ctx;
    };
    ctx.is_request = !start.starts_with("SIP/");
    if ctx.is_request {
        let m = start.split(' ').next().unwrap_or("");
        if is_token(m) {
            ctx.method = Some(Method::parse(m));
        }
    }
    let headers = fold_headers(lines.get(1..).unwrap_or(&[]), None).unwrap_or_default();
    for h in headers {
        let slot = match h.name.as_str() {
            "Via" => {
                ctx.via.push(h.value);
                continue;
            }
            "From" => &mut ctx.from,
            "To" => &mut ctx.to,
            "Call-ID" => &mut ctx.call_id,
            "CSeq" => &mut ctx.cseq,
            _ => continue,
        };
        if slot.is_none() {
            *slot = Some(h.value);
        }
    }
    ctx
}

/// The stateless answer (400, 505 or 513, RFC 3261 §8.2 / §16.3) to a malformed request, if one can be formed:
/// the request must have at least one Via and a From, To, Call-ID and CSeq that could be salvaged (however
/// malformed). `None` for responses (drop them), for ACK (never answered) and for requests too broken to
/// answer (RFC 4475 insuf: no From, To or Call-ID).
///
/// Via, From, Call-ID and CSeq are echoed as received. A To without a tag gets one, derived from a hash of the
/// request so that a retransmission gets the same tag (RFC 3261 §8.2.6.2); a To too malformed to parse is
/// echoed unchanged.
pub fn error_response(err: &ParseError) -> Option<Vec<u8>> {
    let ctx = err.context.as_ref()?;
    if !ctx.is_request || ctx.method == Some(Method::Ack) || ctx.via.is_empty() {
        return None;
    }
    let (from, to, call_id, cseq) =
        (ctx.from.as_deref()?, ctx.to.as_deref()?, ctx.call_id.as_deref()?, ctx.cseq.as_deref()?);
    if [from, to, call_id, cseq].iter().any(|v| v.is_empty()) || ctx.via.iter().any(String::is_empty) {
        return None;
    }
    let mut out = String::with_capacity(256);
    out.push_str("SIP/2.0 ");
    out.push_str(&err.status().to_string());
    out.push(' ');
    out.push_str(&err.reason_phrase());
    out.push_str("\r\n");
    for v in &ctx.via {
        out.push_str("Via: ");
        out.push_str(&one_line(v));
        out.push_str("\r\n");
    }
    out.push_str("From: ");
    out.push_str(&one_line(from));
    out.push_str("\r\nTo: ");
    out.push_str(&one_line(to));
    if NameAddr::parse(to).is_some_and(|n| n.tag().is_none()) {
        let first_via = ctx.via.first().map_or("", String::as_str);
        let h = fnv1a(&[call_id, from, cseq, first_via]);
        out.push_str(&format!(";tag={h:016x}"));
    }
    out.push_str("\r\nCall-ID: ");
    out.push_str(&one_line(call_id));
    out.push_str("\r\nCSeq: ");
    out.push_str(&one_line(cseq));
    out.push_str("\r\nContent-Length: 0\r\n\r\n");
    Some(out.into_bytes())
}

/// A salvaged value can hold a bare CR (only LF ends a line): never let it split the header we write.
pub(crate) fn one_line(v: &str) -> std::borrow::Cow<'_, str> {
    if v.contains(['\r', '\n']) { v.replace(['\r', '\n'], " ").into() } else { v.into() }
}
