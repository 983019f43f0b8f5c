//! The UAS request checks of RFC 3261 §8.2 that need nothing but the parsed request, and finding the SDP in a
//! request body (plain `application/sdp`, or the SDP part of a `multipart/mixed` body as SIP-T/SIP-I
//! gateways send with ISUP, RFC 3204).

use std::ops::Range;

use bytes::Bytes;

use super::grammar::{find_param, parse_params, trim_ws, unquote};
use super::header::{Header, parse_media_type};
use super::message::{Request, fold_headers, split_head};
use super::outgoing::OutgoingResponse;
use super::uri::{Method, Scheme};

/// Why a request is refused: the status, reason phrase and headers the response must carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: &'static str,
    pub extra_headers: Vec<(&'static str, String)>,
}

impl Rejection {
    /// The response to send (add a To tag with [`OutgoingResponse::to_tag`]). Never send one for an ACK.
    pub fn response(&self, req: &Request) -> OutgoingResponse {
        self.extra_headers
            .iter()
            .fold(OutgoingResponse::for_request(req, self.status, self.reason), |r, (n, v)| r.header(n, v.clone()))
    }
}

/// Methods whose body is an SDP offer or answer.
fn carries_sdp(m: &Method) -> bool {
    matches!(m, Method::Invite | Method::Ack | Method::Update | Method::Prack)
}

/// UAS checks of RFC 3261 §8.2, in this order, returning the response to send for the first that fails:
///
/// 1. Request-URI scheme other than `sip`, `sips` or `tel` → 416 (§8.2.2.1; RFC 4475 unkscm, novelsc).
/// 2. `Require` with any option-tag (we support none) → 420 with `Unsupported` listing them (§8.2.2.3; RFC 4475
///    bext01). Not applied to ACK and CANCEL, whose Require must be ignored. `Proxy-Require` is for proxies and
///    is ignored.
/// 3. A non-empty body the UAS can't use (§8.2.3) → 415: a `Content-Encoding` other than `identity` (with
///    `Accept-Encoding: identity`); or, for INVITE, ACK, UPDATE and PRACK, a body that is not `application/sdp`
///    (with `Accept: application/sdp`; RFC 4475 invut). A `multipart/mixed` body is accepted when it has an
///    `application/sdp` part and no other part marked `handling=required` — carriers' SIP-T/SIP-I gateways
///    send SDP with ISUP this way; [`Request::sdp`] returns the SDP part. Bodies of other methods (INFO,
///    MESSAGE, ...) are left to the code that handles those methods.
/// 4. `Max-Forwards: 0` → 483, except for OPTIONS: RFC 3261 §16.3 step 3 lets the element answer an OPTIONS
///    with Max-Forwards 0 as its final recipient, and RFC 4475 zeromf says an endpoint processes it normally.
///
/// For an ACK a `Rejection` is informational only: an ACK is never answered (a failed SDP answer in an ACK is
/// handled by ending the dialog with BYE).
pub fn check_request(req: &Request) -> Result<(), Rejection> {
    if !matches!(req.uri.scheme, Scheme::Sip | Scheme::Sips | Scheme::Tel) {
        return Err(Rejection { status: 416, reason: "Unsupported URI Scheme", extra_headers: Vec::new() });
    }

    if !matches!(req.method, Method::Ack | Method::Cancel) {
        let tags: Vec<&str> =
            req.headers_named("Require").flat_map(|v| v.split(',')).map(trim_ws).filter(|t| !t.is_empty()).collect();
        if !tags.is_empty() {
            return Err(Rejection {
                status: 420,
                reason: "Bad Extension",
                extra_headers: vec![("Unsupported", tags.join(", "))],
            });
        }
    }

    if !req.body.is_empty() {
        let encoded = req
            .headers_named("Content-Encoding")
            .flat_map(|v| v.split(','))
            .map(trim_ws)
            .any(|e| !e.is_empty() && !e.eq_ignore_ascii_case("identity"));
        if encoded {
            return Err(Rejection {
                status: 415,
                reason: "Unsupported Media Type",
                extra_headers: vec![("Accept-Encoding", "identity".to_owned())],
            });
        }
        if carries_sdp(&req.method) && !sdp_acceptable(req) {
            return Err(Rejection {
                status: 415,
                reason: "Unsupported Media Type",
                extra_headers: vec![("Accept", "application/sdp".to_owned())],
            });
        }
    }

    if req.max_forwards == Some(0) && req.method != Method::Options {
        return Err(Rejection { status: 483, reason: "Too Many Hops", extra_headers: Vec::new() });
    }
    Ok(())
}

fn sdp_acceptable(req: &Request) -> bool {
    match req.content_type.as_deref() {
        Some("application/sdp") => true,
        Some("multipart/mixed") => multipart(req).is_some_and(|parts| {
            let mut has_sdp = false;
            for (headers, _) in &parts {
                let ct = part_header(headers, "Content-Type").and_then(parse_media_type);
                if ct.as_deref() == Some("application/sdp") {
                    has_sdp = true;
                } else if part_header(headers, "Content-Disposition")
                    .and_then(|d| d.split_once(';').map(|(_, p)| format!(";{p}")))
                    .and_then(|p| parse_params(&p))
                    .is_some_and(|p| {
                        find_param(&p, "handling").flatten().is_some_and(|h| h.eq_ignore_ascii_case("required"))
                    })
                {
                    return false;
                }
            }
            has_sdp
        }),
        _ => false,
    }
}

fn part_header<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
    headers.iter().find(|h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value.as_str())
}

/// The `boundary` parameter of the request's Content-Type.
fn boundary(req: &Request) -> Option<String> {
    let ct = req.header("Content-Type")?;
    let (_, params) = ct.split_once(';')?;
    let params = parse_params(&format!(";{params}"))?;
    let b = find_param(&params, "boundary")??;
    let b = if b.starts_with('"') { unquote(b) } else { b.to_owned() };
    (!b.is_empty()).then_some(b)
}

/// Splits a multipart body (RFC 2046 §5.1) into (part headers, content range in the body).
fn multipart(req: &Request) -> Option<Vec<(Vec<Header>, Range<usize>)>> {
    let boundary = boundary(req)?;
    let delim = format!("--{boundary}");
    let body: &[u8] = &req.body;
    let d = delim.as_bytes();
    let mut starts = Vec::new();
    let mut i = 0;
    while let Some(p) = body.get(i..).and_then(|r| r.windows(d.len()).position(|w| w == d)) {
        let at = i + p;
        if at == 0 || body.get(at - 1) == Some(&b'\n') {
            starts.push(at);
        }
        i = at + d.len();
    }
    let mut parts = Vec::new();
    for pair in starts.windows(2) {
        let &[a, b] = pair else { continue };
        let after = a + d.len();
        if body.get(after..after + 2) == Some(b"--") {
            break;
        }
        let line_end = body.get(after..b)?.iter().position(|c| *c == b'\n')? + after + 1;
        let mut end = b;
        if body.get(end.checked_sub(1)?) == Some(&b'\n') {
            end -= 1;
            if body.get(end.checked_sub(1)?) == Some(&b'\r') {
                end -= 1;
            }
        }
        let part = body.get(line_end..end.max(line_end))?;
        let (lines, content) = split_head(part);
        let headers = fold_headers(&lines, None).ok()?;
        parts.push((headers, line_end + content.min(part.len())..end.max(line_end)));
    }
    Some(parts)
}

impl Request {
    /// The SDP carried by the request: the whole body if it is `application/sdp`, or the first
    /// `application/sdp` part of a `multipart/mixed` body. Zero-copy (a slice of `body`).
    pub fn sdp(&self) -> Option<Bytes> {
        if self.body.is_empty() {
            return None;
        }
        match self.content_type.as_deref() {
            Some("application/sdp") => Some(self.body.clone()),
            Some("multipart/mixed") => multipart(self)?.into_iter().find_map(|(h, range)| {
                (part_header(&h, "Content-Type").and_then(parse_media_type).as_deref() == Some("application/sdp"))
                    .then(|| self.body.slice(range))
            }),
            _ => None,
        }
    }
}
